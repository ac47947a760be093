/* Context: settings, workspace resolution (config.json as Workspace.from_config finds it),
 * the saved workspace record, resource ids. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azure_int.h"

#define WS_RECORD "azure-workspace.json"

char *az_strdup(const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        abort();
    return d;
}

char *az_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    char *s = malloc((size_t)n + 1);
    if (!s)
        abort();
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void az_wipe_free(char *s)
{
    if (!s)
        return;
    volatile char *v = s;
    while (*v)
        *v++ = '\0';
    free(s);
}

static int host_is_local(const char *host, size_t len)
{
    char h[256];
    if (len >= sizeof h)
        return 0;
    memcpy(h, host, len);
    h[len] = '\0';
    return !strcasecmp(h, "localhost") || !strncmp(h, "127.", 4) || !strcmp(h, "[::1]") ||
           !strncmp(h, "169.254.", 8);
}

int az_url_ok(const char *url, int allow_http)
{
    const char *rest;
    if (!strncasecmp(url, "https://", 8))
        rest = url + 8;
    else if (allow_http && !strncasecmp(url, "http://", 7))
        rest = url + 7;
    else
        return -1;
    size_t hl = strcspn(rest, "/?#");
    if (!hl)
        return -1;
    if (memchr(rest, '@', hl))
        return -1;   /* no user info in endpoints */
    if (rest == url + 7) {
        size_t n;
        if (rest[0] == '[') {
            const char *rb = memchr(rest, ']', hl);
            if (!rb)
                return -1;
            n = (size_t)(rb - rest) + 1;
        } else {
            const char *colon = memchr(rest, ':', hl);
            n = colon ? (size_t)(colon - rest) : hl;
        }
        if (!host_is_local(rest, n))
            return -1;
    }
    return 0;
}

/* ---- getters --------------------------------------------------------------------------- */

const ctarget_host *az_host(const az_ctx *az) { return az->h; }
ctarget_call *az_call(const az_ctx *az) { return az->call; }
const char *az_subscription0(const az_ctx *az) { return az->sub; }
const char *az_resource_group0(const az_ctx *az) { return az->rg; }
const char *az_workspace0(const az_ctx *az) { return az->ws; }
const char *az_arm_endpoint0(const az_ctx *az) { return az->arm; }
const char *az_credential_desc0(const az_ctx *az) { return az->desc ? az->desc : "none"; }
const char *az_workspace_origin0(const az_ctx *az)
{
    return az->ws_origin ? az->ws_origin : "settings";
}

/* ---- config.json ----------------------------------------------------------------------- */

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* As azure-ai-ml's MLClient.from_config / Workspace.from_config: for each of .azureml/,
 * aml_config/ and the directory itself, look for config.json in the start directory and up
 * to 20 parents; the first hit wins. */
static char *find_config_json(void)
{
    static const char *const dirs[] = {".azureml/", "aml_config/", ""};
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        char cur[PATH_MAX];
        snprintf(cur, sizeof cur, "%s", cwd);
        for (int level = 0; level <= 20; level++) {
            char *p = az_asprintf("%s%s%sconfig.json", cur, strcmp(cur, "/") ? "/" : "",
                                  dirs[d]);
            if (is_file(p))
                return p;
            free(p);
            char *slash = strrchr(cur, '/');
            if (!slash || !strcmp(cur, "/"))
                break;
            if (slash == cur)
                cur[1] = '\0';
            else
                *slash = '\0';
        }
    }
    return NULL;
}

static void take(char **dst, const char *v)
{
    if (!*dst && v && *v)
        *dst = az_strdup(v);
}

/* Fills what is still unset from a config.json: its keys, or its "Scope" (an ARM id). */
static ctarget_status read_config_json(az_ctx *az, const char *path, ctarget_error *err)
{
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(j)) {
        AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
               "workspace config %s is not a JSON object (%s, line %d): fix it, or set "
               "subscription_id, resource_group and workspace_name", path,
               j ? "not an object" : je.text, j ? 0 : je.line);
        json_decref(j);
        return CTARGET_E_CONFIG;
    }
    const char *scope = json_string_value(json_object_get(j, "Scope"));
    az_rid r = {0};
    if (scope && az_rid_parse(scope, &r) == 0) {
        take(&az->sub, r.subscription);
        take(&az->rg, r.resource_group);
        take(&az->ws, r.name);
    }
    az_rid_clear(&r);
    take(&az->sub, json_string_value(json_object_get(j, "subscription_id")));
    take(&az->rg, json_string_value(json_object_get(j, "resource_group")));
    take(&az->ws, json_string_value(json_object_get(j, "workspace_name")));
    take(&az->tenant, json_string_value(json_object_get(j, "tenant_id")));
    json_decref(j);
    return CTARGET_OK;
}

static char *record_path(const az_ctx *az)
{
    const char *d = az->h->target_state_dir0 ? az->h->target_state_dir0(az->t) : NULL;
    return d ? az_asprintf("%s/%s", d, WS_RECORD) : NULL;
}

static void read_record(az_ctx *az)
{
    char *p = record_path(az);
    if (!p)
        return;
    json_t *j = is_file(p) ? json_load_file(p, 0, NULL) : NULL;
    free(p);
    if (!json_is_object(j)) {
        json_decref(j);
        return;
    }
    int any = !az->sub || !az->rg || !az->ws;
    take(&az->sub, json_string_value(json_object_get(j, "subscription_id")));
    take(&az->rg, json_string_value(json_object_get(j, "resource_group")));
    take(&az->ws, json_string_value(json_object_get(j, "workspace_name")));
    take(&az->tenant, json_string_value(json_object_get(j, "tenant_id")));
    if (any && !az->ws_origin)
        az->ws_origin = az_strdup("saved at create/attach");
    json_decref(j);
}

ctarget_status az_ws_save(az_ctx *az, ctarget_obj *facts, ctarget_error *err)
{
    const ctarget_host *h = az->h;
    if (facts) {
        h->obj_set_str(facts, "subscription_id", az->sub);
        h->obj_set_str(facts, "resource_group", az->rg);
        h->obj_set_str(facts, "workspace_name", az->ws);
        h->obj_set_str(facts, "credential", az_credential_desc0(az));
    }
    char *p = record_path(az);
    if (!p)
        return CTARGET_OK;
    json_t *j = json_pack("{s:s?, s:s?, s:s?, s:s?}", "subscription_id", az->sub,
                          "resource_group", az->rg, "workspace_name", az->ws, "tenant_id",
                          az->tenant);
    char *tmp = az_asprintf("%s.tmp.%ld", p, (long)getpid());
    ctarget_status rc = CTARGET_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    char *text = json_dumps(j, JSON_SORT_KEYS);
    size_t len = text ? strlen(text) : 0;
    if (fd < 0 || !text || write(fd, text, len) != (ssize_t)len || fsync(fd) != 0 ||
        close(fd) != 0 || (fd = -1, rename(tmp, p) != 0)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        h->error_set(err, CTARGET_E_IO, 0, e, "cannot write the workspace record %s: %s", p,
                     strerror(e));
        rc = CTARGET_E_IO;
    }
    free(text);
    free(tmp);
    free(p);
    json_decref(j);
    return rc;
}

/* ---- context --------------------------------------------------------------------------- */

static char *endpoint(az_ctx *az, const char *key, const char *def, int allow_http,
                      ctarget_error *err)
{
    const char *v = az->h->config_get0(az->t, key);
    if (!v || !*v)
        v = def;
    char *s = az_strdup(v);
    size_t n = strlen(s);
    while (n > 8 && s[n - 1] == '/')
        s[--n] = '\0';
    if (az_url_ok(s, allow_http) != 0 || strchr(s, '?') || strchr(s, '#')) {
        AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
               allow_http ? "setting %s=%s is not an https URL, nor http to a loopback or "
                            "link-local address: fix it with --set %s=URL"
                          : "setting %s=%s is not an https URL: fix it with --set %s=https://...",
               key, s, key);
        free(s);
        return NULL;
    }
    return s;
}

static char *setting(az_ctx *az, const char *key)
{
    const char *v = az->h->config_get0(az->t, key);
    return v && *v ? az_strdup(v) : NULL;
}

ctarget_status az_ctx_new(const ctarget_host *host, ctarget_call *call, ctarget_target *t,
                          unsigned flags, az_ctx **out, ctarget_error *err)
{
    *out = NULL;
    az_ctx *az = calloc(1, sizeof *az);
    if (!az)
        abort();
    az->h = host;
    az->call = call;
    az->t = t;
    ctarget_status rc = CTARGET_E_CONFIG;
    if (!(az->arm = endpoint(az, "arm_endpoint", AZ_DEFAULT_ARM_ENDPOINT, 0, err)) ||
        !(az->aad = endpoint(az, "aad_endpoint", AZ_DEFAULT_AAD_ENDPOINT, 0, err)) ||
        !(az->imds = endpoint(az, "imds_endpoint", AZ_DEFAULT_IMDS_ENDPOINT, 1, err)))
        goto fail;
    az->sub = setting(az, "subscription_id");
    az->rg = setting(az, "resource_group");
    az->ws = setting(az, "workspace_name");
    az->tenant = setting(az, "tenant_id");
    az->client_id = setting(az, "client_id");
    az->cert_file = setting(az, "client_certificate_file");
    az->mi_client_id = setting(az, "managed_identity_client_id");

    if (!az->sub || !az->rg || !az->ws)
        read_record(az);
    const char *cfg = host->config_get0(t, "workspace_config");
    char *found = NULL;
    if (!az->sub || !az->rg || !az->ws || !az->tenant) {
        if (cfg && *cfg) {
            found = az_strdup(cfg);
            if (!is_file(found)) {
                AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
                       "workspace_config %s is not a readable file: fix the path with "
                       "--set workspace_config=PATH", cfg);
                free(found);
                goto fail;
            }
        } else if (!az->sub || !az->rg || !az->ws) {
            found = find_config_json();
        }
    }
    if (found) {
        int missing = !az->sub || !az->rg || !az->ws;
        rc = read_config_json(az, found, err);
        if (rc == CTARGET_OK && missing && !az->ws_origin)
            az->ws_origin = az_asprintf("config.json at %s", found);
        free(found);
        if (rc != CTARGET_OK)
            goto fail;
    }
    if (!(flags & AZ_CTX_NO_WORKSPACE) && (!az->sub || !az->rg || !az->ws)) {
        const char *what = !az->sub ? "subscription_id" : !az->rg ? "resource_group"
                                                                   : "workspace_name";
        AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
               "no Azure ML workspace %s: set it with --set %s=..., or put a config.json "
               "(from the Azure portal's workspace page) in ./.azureml/ or set "
               "workspace_config=PATH", what, what);
        rc = CTARGET_E_CONFIG;
        goto fail;
    }
    if ((rc = az_cred_setup(az, err)) != CTARGET_OK)
        goto fail;
    *out = az;
    return CTARGET_OK;
fail:
    az_ctx_free(az);
    return rc ? rc : CTARGET_E_CONFIG;
}

void az_ctx_free(az_ctx *az)
{
    if (!az)
        return;
    free(az->sub);
    free(az->rg);
    free(az->ws);
    free(az->ws_origin);
    free(az->tenant);
    free(az->client_id);
    free(az->cert_file);
    free(az->mi_client_id);
    free(az->arm);
    free(az->aad);
    free(az->imds);
    free(az->desc);
    free(az);
}

/* ---- ids ------------------------------------------------------------------------------- */

char *az_ws_id(const az_ctx *az)
{
    char *s = az_url_escape(az->sub ? az->sub : "", 0);
    char *g = az_url_escape(az->rg ? az->rg : "", 0);
    char *w = az_url_escape(az->ws ? az->ws : "", 0);
    char *id = az_asprintf("/subscriptions/%s/resourceGroups/%s/providers/"
                           "Microsoft.MachineLearningServices/workspaces/%s", s, g, w);
    free(s);
    free(g);
    free(w);
    return id;
}

char *az_ws_resource_id(const az_ctx *az, const char *kind, const char *name)
{
    char *ws = az_ws_id(az);
    char *n = name ? az_url_escape(name, 0) : NULL;
    char *id = n ? az_asprintf("%s/%s/%s", ws, kind, n) : az_asprintf("%s/%s", ws, kind);
    free(ws);
    free(n);
    return id;
}
