/* databricks: an existing Azure Databricks workspace as a pipeline-step target.
 *
 * Attach only (ARM GET of the Microsoft.Databricks/workspaces resource -> workspaceUrl, then a
 * data-plane call that proves the token).  Steps run as one-time runs of the Jobs API 2.1
 * (runs/submit, runs/get, runs/get-output, runs/cancel); the snapshot travels through DBFS 2.0
 * (/ctarget/runs/<run id>/snapshot/), a python task runs dbx_boot.py (compiled in as
 * dbx_boot_src[]) which materializes it, runs the script and writes its log, metrics, outputs
 * and exit status back to the run's DBFS folder.  See README.md beside this file.
 *
 * Credentials: `access_token` is the Databricks token (a PAT) for the data plane; without it an
 * Entra ID token for the AzureDatabricks resource comes from the Azure credential.  ARM uses
 * libctazure's credentials; its own ready-token setting is called `arm_access_token` here
 * (libctazure reads it as "access_token" through a wrapped host table). */
#include "config.h"

#include <dirent.h>
#include <stddef.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctarget/plugin.h>
#include <jansson.h>

#include "../azure/azure.h"
#include "dbx_boot_py.h"

/* libctazure's base64 (cred.c), linked in with it */
char *az_b64(const unsigned char *d, size_t n, int url);
unsigned char *az_unb64(const char *s, size_t *n);

#define DBX_API_VERSION "2024-05-01"
#define DBX_TYPE "Microsoft.Databricks/workspaces"
#define DBX_SCOPE "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d/.default"
#define DBX_ROOT "/ctarget/runs"
#define DBX_BLOCK (1u << 20) /* DBFS put/add-block/read limit */

static const ctarget_host *H;

/* ---- settings ---------------------------------------------------------------------------- */

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    K(.name = "resource_id", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE | CTARGET_KEY_IMMUTABLE,
      .group = 1, .identity = 1,
      .help = "ARM id of the Microsoft.Databricks/workspaces resource (or resource_group + "
              "workspace_name)"),
    K(.name = "workspace_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE | CTARGET_KEY_IMMUTABLE,
      .group = 1, .identity = 2,
      .help = "name of the Databricks workspace (with resource_group and subscription_id)"),
    K(.name = "resource_group", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_IMMUTABLE,
      .identity = 2, .help = "resource group of the Databricks workspace (with workspace_name)"),
    K(.name = "subscription_id", .type = CTARGET_KEY_STRING,
      .help = "Azure subscription id (GUID) of the workspace (with workspace_name)"),
    K(.name = "access_token", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
      .help = "Databricks personal access token (a secret: prefer env:VAR or file:PATH); "
              "default: an Entra ID token of the Azure credential"),
    K(.name = "workspace_url", .type = CTARGET_KEY_STRING,
      .help = "data-plane URL (https://adb-....azuredatabricks.net); default: the workspace's "
              "workspaceUrl"),
    K(.name = "existing_cluster_id", .type = CTARGET_KEY_STRING,
      .help = "cluster the steps run on unless a step names existing_cluster_id or new_cluster"),
    K(.name = "poll_ms", .type = CTARGET_KEY_INT, .default_value = "2000", .min = 20,
      .max = 600000, .help = "how often a run's state is asked for (milliseconds)"),
    K(.name = "tenant_id", .type = CTARGET_KEY_STRING,
      .help = "Entra ID tenant of the service principal; default: $AZURE_TENANT_ID"),
    K(.name = "client_id", .type = CTARGET_KEY_STRING,
      .help = "application (client) id of the service principal; default: $AZURE_CLIENT_ID"),
    K(.name = "client_secret", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE, .group = AZ_KEY_GROUP_CREDENTIAL,
      .help = "service principal client secret (a secret: prefer env:VAR or file:PATH)"),
    K(.name = "client_certificate_file", .type = CTARGET_KEY_PATH,
      .flags = CTARGET_KEY_EXCLUSIVE, .group = AZ_KEY_GROUP_CREDENTIAL,
      .help = "PEM file with the service principal's certificate and private key"),
    K(.name = "client_certificate_password", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET,
      .help = "password of the private key in client_certificate_file, if encrypted"),
    K(.name = "managed_identity", .type = CTARGET_KEY_BOOL, .flags = CTARGET_KEY_EXCLUSIVE,
      .default_value = "false", .group = AZ_KEY_GROUP_CREDENTIAL,
      .help = "authenticate to Azure as the machine's managed identity (IMDS)"),
    K(.name = "managed_identity_client_id", .type = CTARGET_KEY_STRING,
      .help = "client id of a user-assigned managed identity; default: the system one"),
    K(.name = "arm_access_token", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE, .group = AZ_KEY_GROUP_CREDENTIAL,
      .help = "a ready ARM bearer token, typically env:VAR or file:PATH (not refreshed)"),
    K(.name = "arm_endpoint", .type = CTARGET_KEY_STRING,
      .default_value = AZ_DEFAULT_ARM_ENDPOINT, .help = "Azure Resource Manager endpoint (https)"),
    K(.name = "aad_endpoint", .type = CTARGET_KEY_STRING,
      .default_value = AZ_DEFAULT_AAD_ENDPOINT, .help = "Entra ID (AAD) authority host (https)"),
    K(.name = "imds_endpoint", .type = CTARGET_KEY_STRING,
      .default_value = AZ_DEFAULT_IMDS_ENDPOINT,
      .help = "instance metadata endpoint for managed identity (http only to a loopback or "
              "link-local address)"),
};

/* libctazure reads the ARM credential from "access_token"; ours is arm_access_token, and
 * access_token is the Databricks token.  A host table for libctazure renames the key. */
static ctarget_host AZH;

static const char *az_key(const char *key)
{
    if (!strcmp(key, "access_token"))
        return "arm_access_token";
    if (!strcmp(key, "workspace_name") || !strcmp(key, "resource_group") ||
        !strcmp(key, "workspace_config"))
        return NULL; /* the Databricks workspace is not an Azure ML workspace */
    return key;
}

static const char *azh_config_get0(const ctarget_target *t, const char *key)
{
    const char *k = az_key(key);
    return k ? H->config_get0(t, k) : NULL;
}

static ctarget_status azh_secret_get1(const ctarget_target *t, const char *key, char **value,
                                      ctarget_error *err)
{
    const char *k = az_key(key);
    if (!k) {
        *value = NULL;
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "setting %s is not set", key);
        return CTARGET_E_NOT_FOUND;
    }
    return H->secret_get1(t, k, value, err);
}

static const char *cfg(ctarget_target *t, const char *key)
{
    const char *v = H->config_get0(t, key);
    return v && *v ? v : NULL;
}

static char *xfmt(const char *fmt, ...) CTARGET_PRINTF(1, 2);
static char *xfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d)
        abort();
    return d;
}

/* The workspace's ARM id from the settings (owned), or NULL with err. */
static char *workspace_rid(ctarget_target *t, ctarget_error *err)
{
    const char *rid = cfg(t, "resource_id");
    if (rid) {
        az_rid r;
        if (az_rid_parse(rid, &r) != 0) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "resource_id '%s' is not an ARM id: give /subscriptions/S/"
                         "resourceGroups/G/providers/Microsoft.Databricks/workspaces/NAME", rid);
            return NULL;
        }
        int ok = r.type && !strcasecmp(r.type, DBX_TYPE);
        az_rid_clear(&r);
        if (!ok) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "resource_id '%s' is not a Databricks workspace (%s): give the id of "
                         "a Microsoft.Databricks/workspaces resource", rid, DBX_TYPE);
            return NULL;
        }
        return xstrdup(rid);
    }
    const char *ws = cfg(t, "workspace_name"), *rg = cfg(t, "resource_group");
    const char *sub = cfg(t, "subscription_id");
    if (!ws || !rg || !sub) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "target %s needs resource_id, or workspace_name with resource_group and "
                     "subscription_id: --set resource_id=/subscriptions/.../workspaces/NAME",
                     H->target_name(t));
        return NULL;
    }
    char *e1 = az_url_escape(rg, 0), *e2 = az_url_escape(ws, 0);
    char *id = xfmt("/subscriptions/%s/resourceGroups/%s/providers/" DBX_TYPE "/%s", sub, e1,
                    e2);
    free(e1);
    free(e2);
    return id;
}

static ctarget_status new_az(ctarget_call *c, ctarget_target *t, az_ctx **az,
                             ctarget_error *err)
{
    return az_ctx_new(&AZH, c, t, AZ_CTX_NO_WORKSPACE, az, err);
}

/* ---- the data plane ----------------------------------------------------------------------- */

typedef struct dbx {
    ctarget_call *c;
    ctarget_target *t;
    char *url;      /* https://host[:port], no trailing '/' */
    char *auth;     /* "Authorization: Bearer ..." (a secret: wiped) */
    char *what;     /* "Databricks workspace NAME" */
} dbx;

static void wipe_free(char *s)
{
    if (s) {
        volatile char *p = s;
        while (*p)
            *p++ = 0;
        free(s);
    }
}

static void dbx_close(dbx *d)
{
    free(d->url);
    wipe_free(d->auth);
    free(d->what);
    memset(d, 0, sizeof *d);
}

static char *state_file(ctarget_target *t)
{
    return xfmt("%s/databricks.json", H->target_state_dir0(t));
}

static char *read_small(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = malloc(max + 1);
    if (!b)
        abort();
    size_t n = fread(b, 1, max, f);
    fclose(f);
    b[n] = '\0';
    return b;
}

static int write_atomic(const char *path, const char *text)
{
    char *tmp = xfmt("%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    int rc = -1;
    if (fd >= 0) {
        size_t n = strlen(text);
        rc = write(fd, text, n) == (ssize_t)n ? 0 : -1;
        if (close(fd) != 0)
            rc = -1;
        if (rc == 0 && rename(tmp, path) != 0)
            rc = -1;
        if (rc)
            unlink(tmp);
    }
    free(tmp);
    return rc;
}

static char *norm_url(const char *u)
{
    char *s = strncmp(u, "https://", 8) && strncmp(u, "http://", 7) ? xfmt("https://%s", u)
                                                                     : xstrdup(u);
    size_t n = strlen(s);
    while (n > 8 && s[n - 1] == '/')
        s[--n] = '\0';
    return s;
}

/* ARM GET of the workspace: its body (owned) or NULL with err */
static ctarget_status arm_get_ws(ctarget_call *c, ctarget_target *t, json_t **body,
                                 ctarget_error *err)
{
    *body = NULL;
    char *rid = workspace_rid(t, err);
    if (!rid)
        return CTARGET_E_CONFIG;
    az_ctx *az = NULL;
    ctarget_status rc = new_az(c, t, &az, err);
    if (rc) {
        free(rid);
        return rc;
    }
    char *what = xfmt("Databricks workspace %s", rid);
    az_arm_req rq = {.method = "GET", .path = rid, .api_version = DBX_API_VERSION,
                     .what = what};
    az_arm_resp rs = {0};
    rc = az_arm_call(az, &rq, AZ_OK_404, &rs, err);
    if (rc == CTARGET_OK && rs.status == 404) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "Databricks workspace %s was not found: check resource_id (or "
                     "resource_group and workspace_name) and the subscription", rid);
        rc = CTARGET_E_NOT_FOUND;
    } else if (rc == CTARGET_OK) {
        *body = rs.body;
        rs.body = NULL;
    }
    az_arm_resp_clear(&rs);
    az_ctx_free(az);
    free(what);
    free(rid);
    return rc;
}

/* The data plane's URL: workspace_url, else what attach recorded, else ARM. */
static ctarget_status dbx_url(ctarget_call *c, ctarget_target *t, char **url, ctarget_error *err)
{
    *url = NULL;
    const char *w = cfg(t, "workspace_url");
    if (w) {
        *url = norm_url(w);
        return CTARGET_OK;
    }
    char *sf = state_file(t), *txt = read_small(sf, 65536);
    free(sf);
    json_t *j = txt ? json_loads(txt, 0, NULL) : NULL;
    free(txt);
    const char *u = json_string_value(json_object_get(j, "workspace_url"));
    if (u)
        *url = norm_url(u);
    json_decref(j);
    if (*url)
        return CTARGET_OK;
    json_t *ws = NULL;
    ctarget_status rc = arm_get_ws(c, t, &ws, err);
    if (rc)
        return rc;
    u = json_string_value(json_object_get(json_object_get(ws, "properties"), "workspaceUrl"));
    if (!u || !*u) {
        H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "Databricks workspace %s has no workspaceUrl yet (still provisioning?): "
                     "try again later or --set workspace_url=https://...",
                     H->target_name(t));
        rc = CTARGET_E_REMOTE;
    } else {
        *url = norm_url(u);
    }
    json_decref(ws);
    return rc;
}

static ctarget_status dbx_open(ctarget_call *c, ctarget_target *t, dbx *d, ctarget_error *err)
{
    memset(d, 0, sizeof *d);
    d->c = c;
    d->t = t;
    const char *rid = cfg(t, "resource_id"), *name = cfg(t, "workspace_name");
    const char *tail = rid ? strrchr(rid, '/') : NULL;
    if (!name && tail && tail[1])
        name = tail + 1;
    d->what = xfmt("Databricks workspace %s", name ? name : H->target_name(t));
    ctarget_status rc = dbx_url(c, t, &d->url, err);
    if (rc) {
        dbx_close(d);
        return rc;
    }
    char *tok = NULL;
    ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
    rc = H->secret_get1(t, "access_token", &tok, &e2);
    if (rc == CTARGET_OK) {
        d->auth = xfmt("Authorization: Bearer %s", tok);
        H->secret_free(tok);
        return CTARGET_OK;
    }
    if (rc != CTARGET_E_NOT_FOUND) {
        H->error_set(err, rc, e2.transient, e2.sys_errno, "%s", e2.message);
        dbx_close(d);
        return rc;
    }
    /* no PAT: an Entra ID token for the AzureDatabricks application */
    az_ctx *az = NULL;
    if ((rc = new_az(c, t, &az, err))) {
        dbx_close(d);
        return rc;
    }
    rc = az_token_get(az, DBX_SCOPE, &tok, err);
    az_ctx_free(az);
    if (rc) {
        dbx_close(d);
        return rc;
    }
    d->auth = xfmt("Authorization: Bearer %s", tok);
    az_token_free(tok);
    return CTARGET_OK;
}

#define DBX_RETRY 1u   /* safe to repeat (idempotent by design) */
#define DBX_OK_404 2u  /* RESOURCE_DOES_NOT_EXIST is an answer: *status 404, CTARGET_OK */

/* One data-plane request; *out (may be NULL) gets the JSON answer.  Errors: one line with the
 * workspace, the API and Databricks' error_code: message. */
static ctarget_status dbx_call(dbx *d, const char *method, const char *path, const char *query,
                               json_t *body, unsigned flags, json_t **out, long *status,
                               ctarget_error *err)
{
    if (out)
        *out = NULL;
    if (status)
        *status = 0;
    char *url = xfmt("%s/api/%s%s%s", d->url, path, query ? "?" : "", query ? query : "");
    char *data = body ? json_dumps(body, JSON_COMPACT) : NULL;
    const char *hdrs[] = {d->auth, "Content-Type: application/json", "Accept: application/json",
                          "User-Agent: ctarget-databricks/" PACKAGE_VERSION, NULL};
    ctarget_http_request rq = {.struct_size = sizeof rq, .method = method, .url = url,
                               .headers = hdrs, .body = data, .body_len = data ? strlen(data) : 0,
                               .timeout_ms = 120000,
                               .flags = (flags & DBX_RETRY) ? CTARGET_HTTP_RETRY_UNSAFE : 0};
    ctarget_http_response *rs = NULL;
    ctarget_status rc = H->http_request(d->c, &rq, &rs, err);
    free(data);
    if (rc) {
        free(url);
        return rc;
    }
    long st = rs->status;
    if (status)
        *status = st;
    json_t *j = rs->body_len ? json_loadb(rs->body, rs->body_len, 0, NULL) : NULL;
    if (st >= 200 && st < 300) {
        if (out)
            *out = j ? j : json_object();
        else
            json_decref(j);
        H->http_response_free(rs);
        free(url);
        return CTARGET_OK;
    }
    const char *code = json_string_value(json_object_get(j, "error_code"));
    const char *msg = json_string_value(json_object_get(j, "message"));
    if (!code && json_is_object(json_object_get(j, "error"))) { /* Azure-style (gateways) */
        code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
        msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    }
    if (st == 404 && (flags & DBX_OK_404)) {
        json_decref(j);
        H->http_response_free(rs);
        free(url);
        return CTARGET_OK;
    }
    ctarget_status ec = CTARGET_E_REMOTE;
    int transient = 0;
    if (st == 401 || st == 403)
        ec = CTARGET_E_AUTH;
    else if (st == 404)
        ec = CTARGET_E_NOT_FOUND;
    else if (st == 429)
        ec = CTARGET_E_LIMIT, transient = 1;
    else if (st >= 500)
        transient = 1;
    else if (st == 400 && code && !strcmp(code, "INVALID_PARAMETER_VALUE"))
        ec = CTARGET_E_CONFIG;
    if (ec == CTARGET_E_AUTH)
        H->error_set(err, ec, 0, 0,
                     "the access token was refused by %s (%s: %s): create a new token "
                     "(User Settings > Developer > Access tokens) and set it with --set "
                     "access_token=env:VAR, or give the Azure identity access to the workspace",
                     d->what, code ? code : "HTTP", msg ? msg : "refused");
    else
        H->error_set(err, ec, transient, 0, "%s: %s %s: HTTP %ld %s: %s: %s", d->what, method,
                     path, st, code ? code : "error", msg ? msg : "(no message)",
                     st == 429 ? "the workspace is throttling requests: try again later"
                     : st >= 500 ? "the service failed: try again later"
                     : ec == CTARGET_E_CONFIG ? "fix the step's keys or the target's settings"
                     : ec == CTARGET_E_NOT_FOUND ? "check that it still exists in the workspace"
                                                 : "see Databricks' message");
    json_decref(j);
    H->http_response_free(rs);
    free(url);
    return ec;
}

static char *qpath(const char *p)
{
    char *e = az_url_escape(p, 1);
    char *q = xfmt("path=%s", e);
    free(e);
    return q;
}

/* ---- DBFS --------------------------------------------------------------------------------- */

static ctarget_status dbfs_mkdirs(dbx *d, const char *path, ctarget_error *err)
{
    json_t *b = json_pack("{s:s}", "path", path);
    ctarget_status rc = dbx_call(d, "POST", "2.0/dbfs/mkdirs", NULL, b, DBX_RETRY, NULL, NULL,
                                 err);
    json_decref(b);
    return rc;
}

static ctarget_status dbfs_put_mem(dbx *d, const char *path, const void *data, size_t len,
                                   ctarget_error *err)
{
    if (len <= DBX_BLOCK) {
        char *b64 = az_b64(data, len, 0);
        json_t *b = json_pack("{s:s, s:s, s:b}", "path", path, "contents", b64, "overwrite", 1);
        free(b64);
        ctarget_status rc = dbx_call(d, "POST", "2.0/dbfs/put", NULL, b, DBX_RETRY, NULL, NULL,
                                     err);
        json_decref(b);
        return rc;
    }
    /* streaming upload; add-block is not idempotent: a failure restarts the file */
    ctarget_status rc = CTARGET_OK;
    for (int attempt = 0; attempt < 3; attempt++) {
        json_t *b = json_pack("{s:s, s:b}", "path", path, "overwrite", 1), *r = NULL;
        rc = dbx_call(d, "POST", "2.0/dbfs/create", NULL, b, DBX_RETRY, &r, NULL, err);
        json_decref(b);
        if (rc)
            return rc;
        json_int_t h = json_integer_value(json_object_get(r, "handle"));
        json_decref(r);
        for (size_t off = 0; off < len && !rc; off += DBX_BLOCK) {
            size_t n = len - off < DBX_BLOCK ? len - off : DBX_BLOCK;
            char *b64 = az_b64((const unsigned char *)data + off, n, 0);
            b = json_pack("{s:I, s:s}", "handle", h, "data", b64);
            free(b64);
            rc = dbx_call(d, "POST", "2.0/dbfs/add-block", NULL, b, 0, NULL, NULL, err);
            json_decref(b);
        }
        if (!rc) {
            b = json_pack("{s:I}", "handle", h);
            rc = dbx_call(d, "POST", "2.0/dbfs/close", NULL, b, 0, NULL, NULL, err);
            json_decref(b);
        }
        if (!rc || !err->transient)
            return rc;
    }
    return rc;
}

static ctarget_status dbfs_put_file(dbx *d, const char *path, const char *local,
                                    ctarget_error *err)
{
    int fd = open(local, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot read %s", local);
        if (fd >= 0)
            close(fd);
        return CTARGET_E_IO;
    }
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    ctarget_status rc;
    if (got != len) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot read %s", local);
        rc = CTARGET_E_IO;
    } else {
        rc = dbfs_put_mem(d, path, buf, len, err);
    }
    free(buf);
    return rc;
}

/* Bytes of a DBFS file from offset to its end through out; a missing file writes nothing. */
static ctarget_status dbfs_read(dbx *d, const char *path, uint64_t offset, ctarget_write_fn out,
                                void *arg, int *missing, ctarget_error *err)
{
    if (missing)
        *missing = 0;
    char *qp = qpath(path);
    ctarget_status rc = CTARGET_OK;
    for (int guard = 0; guard < 100000; guard++) {
        char *q = xfmt("%s&offset=%llu&length=%u", qp, (unsigned long long)offset, DBX_BLOCK);
        json_t *r = NULL;
        long st = 0;
        rc = dbx_call(d, "GET", "2.0/dbfs/read", q, NULL, DBX_OK_404, &r, &st, err);
        free(q);
        if (rc)
            break;
        if (st == 404) {
            if (missing)
                *missing = 1;
            break;
        }
        json_int_t n = json_integer_value(json_object_get(r, "bytes_read"));
        const char *b64 = json_string_value(json_object_get(r, "data"));
        if (n <= 0 || !b64) {
            json_decref(r);
            break;
        }
        size_t dl = 0;
        unsigned char *raw = az_unb64(b64, &dl);
        json_decref(r);
        if (!raw || dl != (size_t)n) {
            free(raw);
            H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                         "%s: DBFS read of %s returned malformed data", d->what, path);
            rc = CTARGET_E_REMOTE;
            break;
        }
        int stop = out(arg, raw, dl);
        free(raw);
        if (stop) {
            H->error_set(err, CTARGET_E_CANCELED, 0, 0, "reading %s was stopped", path);
            rc = CTARGET_E_CANCELED;
            break;
        }
        offset += dl;
    }
    free(qp);
    return rc;
}

static ctarget_status dbfs_delete(dbx *d, const char *path, ctarget_error *err)
{
    json_t *b = json_pack("{s:s, s:b}", "path", path, "recursive", 1);
    ctarget_status rc = dbx_call(d, "POST", "2.0/dbfs/delete", NULL, b, DBX_RETRY | DBX_OK_404,
                                 NULL, NULL, err);
    json_decref(b);
    return rc;
}

/* ---- plugin lifecycle, compute operations ------------------------------------------------- */

static ctarget_status dbx_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    AZH = *host;
    AZH.config_get0 = azh_config_get0;
    AZH.secret_get1 = azh_secret_get1;
    *p = NULL;
    return CTARGET_OK;
}

static void dbx_fini(void *p)
{
    (void)p;
}

static ctarget_status dbx_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb verb,
                                   ctarget_error *err)
{
    (void)p;
    (void)c;
    (void)verb;
    char *rid = workspace_rid(t, err);
    if (!rid)
        return CTARGET_E_CONFIG;
    free(rid);
    const char *w = cfg(t, "workspace_url");
    if (w) {
        char *u = norm_url(w);
        int bad = strncmp(u, "https://", 8) != 0 || strchr(u + 8, '/') || strchr(u, '?');
        free(u);
        if (bad) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "workspace_url '%s' is not an https URL of a workspace: give "
                         "https://adb-ID.N.azuredatabricks.net", w);
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static ctarget_status dbx_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                 ctarget_error *err)
{
    (void)p;
    json_t *ws = NULL;
    ctarget_status rc = arm_get_ws(c, t, &ws, err);
    if (rc)
        return rc;
    json_t *props = json_object_get(ws, "properties");
    const char *wurl = json_string_value(json_object_get(props, "workspaceUrl"));
    const char *prov = json_string_value(json_object_get(props, "provisioningState"));
    if (!wurl || !*wurl) {
        H->error_set(err, CTARGET_E_STATE, 0, 0,
                     "Databricks workspace %s has no workspaceUrl (provisioning state %s): "
                     "attach it once it has Succeeded",
                     json_string_value(json_object_get(ws, "name")), prov ? prov : "unknown");
        json_decref(ws);
        return CTARGET_E_STATE;
    }
    char *url = norm_url(wurl);
    json_t *rec = json_pack("{s:s, s:s?}", "workspace_url", url, "resource_id",
                            json_string_value(json_object_get(ws, "id")));
    char *sf = state_file(t), *text = json_dumps(rec, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(rec);
    if (write_atomic(sf, text) != 0) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", sf);
        rc = CTARGET_E_IO;
    }
    free(text);
    free(sf);
    dbx d;
    if (!rc)
        rc = dbx_open(c, t, &d, err);
    if (!rc) {
        json_t *cl = NULL;
        rc = dbx_call(&d, "GET", "2.0/clusters/list", NULL, NULL, 0, &cl, NULL, err);
        const char *want = cfg(t, "existing_cluster_id");
        if (!rc && want) {
            size_t i;
            json_t *x;
            int found = 0;
            json_array_foreach(json_object_get(cl, "clusters"), i, x)
                found |= !strcmp(jstr(x, "cluster_id"), want);
            if (!found) {
                H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                             "existing_cluster_id %s is not a cluster of %s: give the id of one "
                             "(Compute > cluster > Configuration > JSON) or leave it unset",
                             want, d.what);
                rc = CTARGET_E_NOT_FOUND;
            }
        }
        if (!rc) {
            H->obj_set_int(facts, "clusters", (long long)json_array_size(json_object_get(cl, "clusters")));
            H->obj_set_str(facts, "data_plane", d.url);
        }
        json_decref(cl);
        dbx_close(&d);
    }
    if (!rc) {
        H->obj_set_str(facts, "workspace_url", url);
        H->obj_set_str(facts, "resource_id", json_string_value(json_object_get(ws, "id")));
        const char *s;
        if ((s = json_string_value(json_object_get(props, "workspaceId"))))
            H->obj_set_str(facts, "workspace_id", s);
        if ((s = json_string_value(json_object_get(ws, "location"))))
            H->obj_set_str(facts, "location", s);
        if ((s = json_string_value(json_object_get(json_object_get(ws, "sku"), "name"))))
            H->obj_set_str(facts, "sku", s);
    }
    free(url);
    json_decref(ws);
    return rc;
}

static ctarget_status dbx_status(void *p, ctarget_call *c, ctarget_target *t,
                                 ctarget_compute_state *st, ctarget_obj *details,
                                 ctarget_error *err)
{
    (void)p;
    json_t *ws = NULL;
    ctarget_status rc = arm_get_ws(c, t, &ws, err);
    if (rc)
        return rc;
    json_t *props = json_object_get(ws, "properties");
    const char *prov = json_string_value(json_object_get(props, "provisioningState"));
    static const struct { const char *n; ctarget_prov_state s; } map[] = {
        {"Succeeded", CTARGET_PROV_SUCCEEDED}, {"Failed", CTARGET_PROV_FAILED},
        {"Created", CTARGET_PROV_CREATING},    {"Accepted", CTARGET_PROV_CREATING},
        {"Running", CTARGET_PROV_CREATING},    {"Ready", CTARGET_PROV_SUCCEEDED},
        {"Creating", CTARGET_PROV_CREATING},   {"Updating", CTARGET_PROV_UPDATING},
        {"Deleting", CTARGET_PROV_DELETING},   {"Deleted", CTARGET_PROV_DELETING},
        {"Canceled", CTARGET_PROV_CANCELED},   {"Succeeded", CTARGET_PROV_SUCCEEDED}};
    st->provisioning_state = CTARGET_PROV_UNKNOWN;
    for (size_t i = 0; prov && i < sizeof map / sizeof map[0]; i++)
        if (!strcasecmp(prov, map[i].n))
            st->provisioning_state = map[i].s;
    snprintf(st->state, sizeof st->state, "%s",
             st->provisioning_state == CTARGET_PROV_SUCCEEDED ? "Ready" : prov ? prov : "Unknown");
    const char *s = json_string_value(json_object_get(props, "workspaceUrl"));
    if (s)
        H->obj_set_str(details, "workspace_url", s);
    dbx d;
    if (st->provisioning_state == CTARGET_PROV_SUCCEEDED && !(rc = dbx_open(c, t, &d, err))) {
        json_t *cl = NULL;
        rc = dbx_call(&d, "GET", "2.0/clusters/list", NULL, NULL, 0, &cl, NULL, err);
        size_t i;
        json_t *x;
        long long running = 0;
        json_array_foreach(json_object_get(cl, "clusters"), i, x)
        {
            const char *cs = json_string_value(json_object_get(x, "state"));
            running += cs && !strcmp(cs, "RUNNING");
        }
        if (!rc) {
            H->obj_set_int(details, "clusters", (long long)json_array_size(json_object_get(cl, "clusters")));
            H->obj_set_int(details, "clusters_running", running);
        }
        json_decref(cl);
        dbx_close(&d);
    }
    json_decref(ws);
    return rc;
}

static ctarget_status dbx_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    (void)c;
    (void)err;
    char *sf = state_file(t);
    unlink(sf);
    free(sf);
    return CTARGET_OK;
}

/* ---- steps: settings ---------------------------------------------------------------------- */

static const char *hget(const ctarget_run_info *run, const char *k)
{
    return run->handle ? H->obj_get0_str(run->handle, k) : NULL;
}

static long long hint(const ctarget_run_info *run, const char *k)
{
    long long v = 0;
    return run->handle && H->obj_get_int(run->handle, k, &v) ? v : 0;
}

static int has_step_fields(const ctarget_run_info *run)
{
    return run->struct_size >= offsetof(ctarget_run_info, step_json) + sizeof(const char *);
}

static json_t *step_obj(const ctarget_run_info *run)
{
    const char *s = has_step_fields(run) && run->step_json ? run->step_json : "{}";
    json_t *j = json_loads(s, 0, NULL);
    return j ? j : json_object();
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

static ctarget_status bad_key(ctarget_error *err, const char *key, const char *fix)
{
    H->error_set(err, CTARGET_E_CONFIG, 0, 0, "databricks step key '%s' %s", key, fix);
    return CTARGET_E_CONFIG;
}

static int all_strings(json_t *a)
{
    size_t i;
    json_t *x;
    if (!json_is_array(a))
        return 0;
    json_array_foreach(a, i, x) if (!json_is_string(x)) return 0;
    return 1;
}

/* Checks the step's keys; *task gets python|notebook|jar. */
static ctarget_status check_step(ctarget_target *t, const ctarget_run_info *run, json_t *s,
                                 const char **task, ctarget_error *err)
{
    static const char *const known[] = {"task", "num_workers", "existing_cluster_id",
                                        "new_cluster", "parameters", "base_parameters",
                                        "run_name", "main_class_name", "libraries",
                                        "allow_reuse", "timeout_seconds", NULL};
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
    {
        int ok = 0;
        for (size_t i = 0; known[i]; i++)
            ok |= !strcmp(k, known[i]);
        if (!ok) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "unknown databricks step key '%s': the keys are task, num_workers, "
                         "existing_cluster_id, new_cluster, parameters, base_parameters, "
                         "run_name, main_class_name, libraries, allow_reuse, timeout_seconds", k);
            return CTARGET_E_CONFIG;
        }
    }
    json_t *tk = json_object_get(s, "task");
    if (tk && !json_is_string(tk))
        return bad_key(err, "task", "must be a string: python, notebook or jar");
    *task = tk ? json_string_value(tk) : "python";
    if (strcmp(*task, "python") && strcmp(*task, "notebook") && strcmp(*task, "jar"))
        return bad_key(err, "task", "must be python, notebook or jar");
    if ((v = json_object_get(s, "num_workers")) &&
        (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 100000))
        return bad_key(err, "num_workers", "must be an integer >= 0");
    if ((v = json_object_get(s, "existing_cluster_id")) &&
        (!json_is_string(v) || !*json_string_value(v)))
        return bad_key(err, "existing_cluster_id", "must be a cluster id (a string)");
    json_t *nc = json_object_get(s, "new_cluster");
    if (nc) {
        if (!json_is_object(nc))
            return bad_key(err, "new_cluster",
                           "must be an object {spark_version, node_type_id, num_workers, ...}");
        if (!json_is_string(json_object_get(nc, "spark_version")))
            return bad_key(err, "new_cluster",
                           "needs spark_version (a string such as \"13.3.x-scala2.12\")");
        if (!json_is_string(json_object_get(nc, "node_type_id")) &&
            !json_is_string(json_object_get(nc, "instance_pool_id")))
            return bad_key(err, "new_cluster",
                           "needs node_type_id (a string such as \"Standard_DS3_v2\")");
        if ((v = json_object_get(nc, "num_workers")) && !json_is_integer(v))
            return bad_key(err, "new_cluster", "has a num_workers that is not an integer");
        if ((v = json_object_get(nc, "spark_conf")) && !json_is_object(v))
            return bad_key(err, "new_cluster", "has a spark_conf that is not an object");
    }
    int existing = json_object_get(s, "existing_cluster_id") != NULL;
    if (existing && nc) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "databricks step gives both existing_cluster_id and new_cluster: keep one");
        return CTARGET_E_CONFIG;
    }
    if (!existing && !nc && !cfg(t, "existing_cluster_id")) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "databricks step names no cluster: give existing_cluster_id or new_cluster "
                     "in the step, or --set existing_cluster_id=ID on target %s",
                     H->target_name(t));
        return CTARGET_E_CONFIG;
    }
    if (json_object_get(s, "num_workers") && !nc)
        return bad_key(err, "num_workers", "applies only with new_cluster (an existing "
                                           "cluster keeps its size)");
    if ((v = json_object_get(s, "parameters")) && !all_strings(v))
        return bad_key(err, "parameters", "must be a list of strings");
    if ((v = json_object_get(s, "base_parameters"))) {
        const char *bk;
        json_t *bv;
        if (!json_is_object(v))
            return bad_key(err, "base_parameters", "must be an object of strings");
        json_object_foreach(v, bk, bv) if (!json_is_string(bv)) return bad_key(
            err, "base_parameters", "must be an object of strings");
        if (strcmp(*task, "notebook"))
            return bad_key(err, "base_parameters", "applies only to task notebook (use "
                                                   "parameters)");
    }
    if (json_object_get(s, "parameters") && !strcmp(*task, "notebook"))
        return bad_key(err, "parameters", "does not apply to task notebook (use base_parameters)");
    if ((v = json_object_get(s, "run_name")) && !json_is_string(v))
        return bad_key(err, "run_name", "must be a string");
    if ((v = json_object_get(s, "allow_reuse")) && !json_is_boolean(v))
        return bad_key(err, "allow_reuse", "must be true or false");
    if ((v = json_object_get(s, "timeout_seconds")) && !json_is_integer(v))
        return bad_key(err, "timeout_seconds", "must be an integer");
    if ((v = json_object_get(s, "main_class_name")) && !json_is_string(v))
        return bad_key(err, "main_class_name", "must be a string (a class name)");
    if (!strcmp(*task, "jar") && !json_object_get(s, "main_class_name"))
        return bad_key(err, "main_class_name", "is required with task jar (the class whose main "
                                               "method runs)");
    if (strcmp(*task, "jar") && json_object_get(s, "main_class_name"))
        return bad_key(err, "main_class_name", "applies only to task jar");
    if ((v = json_object_get(s, "libraries"))) {
        size_t i;
        json_t *x;
        if (!json_is_array(v))
            return bad_key(err, "libraries", "must be a list of library objects ({\"jar\": "
                                             "\"dbfs:/...\"}, {\"pypi\": {\"package\": ...}})");
        json_array_foreach(v, i, x) if (!json_is_object(x)) return bad_key(
            err, "libraries", "must be a list of library objects");
    }
    if (run->env_kind != CTARGET_ENV_USER || run->docker_image) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "databricks steps run in the cluster's own Python: drop the %s environment "
                     "and give the packages as step libraries, e.g. \"libraries\": "
                     "[{\"pypi\": {\"package\": \"scikit-learn==1.5.0\"}}]",
                     run->docker_image ? "docker" : run->env_kind == CTARGET_ENV_PIP ? "pip"
                                                                                 : "conda");
        return CTARGET_E_UNSUPPORTED;
    }
    const char *script = run->script ? run->script : "";
    if (!strcmp(*task, "python") && !ends_with(script, ".py"))
        return bad_key(err, "task", "python needs a .py script (use task notebook or jar)");
    if (!strcmp(*task, "jar") && !ends_with(script, ".jar"))
        return bad_key(err, "task", "jar needs a .jar file as the script");
    if (!strcmp(*task, "notebook") && !ends_with(script, ".py") && !ends_with(script, ".ipynb"))
        return bad_key(err, "task", "notebook needs a .py source notebook or an .ipynb file");
    return CTARGET_OK;
}

/* ---- steps: prepare (ship the snapshot) --------------------------------------------------- */

static ctarget_status upload_tree(dbx *d, const char *local, const char *remote, int depth,
                                  ctarget_error *err)
{
    if (depth > 64) {
        H->error_set(err, CTARGET_E_LIMIT, 0, 0, "%s: directories nested too deep", local);
        return CTARGET_E_LIMIT;
    }
    DIR *dir = opendir(local);
    if (!dir) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot read the directory %s", local);
        return CTARGET_E_IO;
    }
    ctarget_status rc = dbfs_mkdirs(d, remote, err);
    struct dirent *e;
    while (!rc && (e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *lp = xfmt("%s/%s", local, e->d_name), *rp = xfmt("%s/%s", remote, e->d_name);
        struct stat st;
        if (lstat(lp, &st) != 0) {
            H->error_set(err, CTARGET_E_IO, 0, errno, "cannot stat %s", lp);
            rc = CTARGET_E_IO;
        } else if (S_ISDIR(st.st_mode)) {
            rc = upload_tree(d, lp, rp, depth + 1, err);
        } else if (S_ISREG(st.st_mode)) {
            H->progress(d->c, "uploading to DBFS", 0, 0);
            rc = dbfs_put_file(d, rp, lp, err);
        } else if (S_ISLNK(st.st_mode)) {
            /* DBFS has no links: a link inside the tree travels as a copy of its target */
            struct stat ts;
            if (stat(lp, &ts) == 0 && S_ISREG(ts.st_mode))
                rc = dbfs_put_file(d, rp, lp, err);
        }
        free(lp);
        free(rp);
        H->progress(d->c, "uploading to DBFS", 0, 0);
        if (!rc && H->cancelled(d->c)) {
            H->error_set(err, CTARGET_E_CANCELED, 0, 0, "upload canceled");
            rc = CTARGET_E_CANCELED;
        }
    }
    closedir(dir);
    return rc;
}


static char *run_dir(const ctarget_run_info *run)
{
    return xfmt(DBX_ROOT "/%s", run->id);
}

/* the notebook's workspace path: /Shared/ctarget/<run id>/<script without its extension> */
static char *notebook_path(const ctarget_run_info *run)
{
    const char *b = strrchr(run->script, '/');
    b = b ? b + 1 : run->script;
    size_t n = strlen(b);
    if (ends_with(b, ".ipynb"))
        n -= 6;
    else if (ends_with(b, ".py"))
        n -= 3;
    return xfmt("/Shared/ctarget/%s/%.*s", run->id, (int)n, b);
}

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size > (64 << 20)) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char *b = malloc((size_t)st.st_size + 1);
    if (!b)
        abort();
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    b[got] = '\0';
    *len = got;
    return b;
}

static ctarget_status import_notebook(dbx *d, const ctarget_run_info *run, const char *local,
                                      ctarget_error *err)
{
    char *file = xfmt("%s/%s", local, run->script);
    size_t len = 0;
    char *text = slurp(file, &len);
    if (!text) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot read the notebook %s", file);
        free(file);
        return CTARGET_E_IO;
    }
    free(file);
    char *nb = notebook_path(run), *parent = xstrdup(nb);
    *strrchr(parent, '/') = '\0';
    json_t *b = json_pack("{s:s}", "path", parent);
    ctarget_status rc = dbx_call(d, "POST", "2.0/workspace/mkdirs", NULL, b, DBX_RETRY, NULL,
                                 NULL, err);
    json_decref(b);
    if (!rc) {
        char *b64 = az_b64((const unsigned char *)text, len, 0);
        int ipynb = ends_with(run->script, ".ipynb");
        b = json_pack("{s:s, s:s, s:s, s:s, s:b}", "path", nb, "format",
                      ipynb ? "JUPYTER" : "SOURCE", "language", "PYTHON", "content", b64,
                      "overwrite", 1);
        free(b64);
        rc = dbx_call(d, "POST", "2.0/workspace/import", NULL, b, DBX_RETRY, NULL, NULL, err);
        json_decref(b);
    }
    free(text);
    free(parent);
    free(nb);
    return rc;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 && errno != ENOENT;
}

/* removes a directory tree (never following links); 0 when it is gone */
static int rm_tree(const char *dir)
{
    struct stat st;
    if (lstat(dir, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    return nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

static ctarget_status dbx_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    json_t *s = step_obj(run);
    const char *task = NULL;
    ctarget_status rc = check_step(t, run, s, &task, err);
    if (rc) {
        json_decref(s);
        return rc;
    }
    dbx d;
    if ((rc = dbx_open(c, t, &d, err))) {
        json_decref(s);
        return rc;
    }
    char *dir = run_dir(run), *snap = xfmt("%s/snapshot", dir);
    char *local = xfmt("%s/snapshot", run->work_dir);
    if (rm_tree(local) != 0)
        H->log(c, CTARGET_LOG_DEBUG, "could not clear %s", local);
    rc = dbfs_delete(&d, dir, err); /* a repeated prepare starts clean */
    if (!rc)
        rc = H->snapshot_materialize(c, run->snapshot_id, local, err);
    if (!rc && !strcmp(task, "notebook"))
        rc = import_notebook(&d, run, local, err);
    if (!rc)
        rc = upload_tree(&d, local, snap, 0, err);
    if (!rc) {
        json_t *env = json_array();
        for (size_t i = 0; i < run->n_env; i++)
            json_array_append_new(env, json_string(run->env[i]));
        json_t *rj = json_pack("{s:s, s:s, s:o}", "run_id", run->id, "script", run->script,
                               "env", env);
        char *text = json_dumps(rj, JSON_COMPACT | JSON_SORT_KEYS);
        char *path = xfmt("%s/run.json", dir);
        rc = dbfs_put_mem(&d, path, text, strlen(text), err);
        free(path);
        free(text);
        json_decref(rj);
    }
    if (!rc && !strcmp(task, "python")) {
        char *path = xfmt("%s/ctarget_boot.py", dir);
        rc = dbfs_put_mem(&d, path, dbx_boot_src, sizeof dbx_boot_src - 1, err);
        free(path);
    }
    if (!rc) {
        H->obj_set_str(run->handle, "dbfs_dir", dir);
        H->obj_set_str(run->handle, "task", task);
    }
    json_decref(s);
    free(local);
    free(snap);
    free(dir);
    dbx_close(&d);
    return rc;
}

/* ---- steps: submit, poll, logs, cancel, outputs ------------------------------------------ */

static json_t *submit_body(ctarget_target *t, const ctarget_run_info *run, json_t *s,
                           const char *task)
{
    json_t *tk = json_pack("{s:s}", "task_key", "ctarget");
    json_t *nc = json_object_get(s, "new_cluster");
    if (nc) {
        json_t *c = json_deep_copy(nc);
        json_t *nw = json_object_get(s, "num_workers");
        if (nw)
            json_object_set(c, "num_workers", nw);
        json_object_set_new(tk, "new_cluster", c);
    } else {
        const char *ex = json_string_value(json_object_get(s, "existing_cluster_id"));
        json_object_set_new(tk, "existing_cluster_id",
                            json_string(ex ? ex : cfg(t, "existing_cluster_id")));
    }
    json_t *params = json_array();
    for (size_t i = 0; i < run->n_args; i++)
        json_array_append_new(params, json_string(run->args[i]));
    if (json_object_get(s, "parameters"))
        json_array_extend(params, json_object_get(s, "parameters"));
    char *dir = run_dir(run);
    if (!strcmp(task, "python")) {
        json_t *a = json_pack("[s, s]", dir, "--");
        json_array_extend(a, params);
        char *boot = xfmt("dbfs:%s/ctarget_boot.py", dir);
        json_object_set_new(tk, "spark_python_task",
                            json_pack("{s:s, s:o}", "python_file", boot, "parameters", a));
        free(boot);
    } else if (!strcmp(task, "notebook")) {
        char *nb = notebook_path(run);
        json_t *bp = json_object_get(s, "base_parameters");
        json_t *nt = json_pack("{s:s, s:s}", "notebook_path", nb, "source", "WORKSPACE");
        if (bp)
            json_object_set(nt, "base_parameters", bp);
        json_object_set_new(tk, "notebook_task", nt);
        free(nb);
    } else {
        json_object_set_new(tk, "spark_jar_task",
                            json_pack("{s:O, s:O}", "main_class_name",
                                      json_object_get(s, "main_class_name"), "parameters",
                                      params));
    }
    json_t *libs = json_object_get(s, "libraries") ? json_deep_copy(json_object_get(s, "libraries"))
                                                   : json_array();
    if (!strcmp(task, "jar")) {
        char *jar = xfmt("dbfs:%s/snapshot/%s", dir, run->script);
        json_array_append_new(libs, json_pack("{s:s}", "jar", jar));
        free(jar);
    }
    if (json_array_size(libs))
        json_object_set_new(tk, "libraries", libs);
    else
        json_decref(libs);
    json_t *to = json_object_get(s, "timeout_seconds");
    if (to)
        json_object_set(tk, "timeout_seconds", to);
    else if (run->timeout_seconds > 0 && run->timeout_seconds < 2000000000LL - 300)
        /* the core enforces the run's limit through cancel; this backstop ends the run on the
         * service side too, should no monitor be left to cancel it */
        json_object_set_new(tk, "timeout_seconds",
                            json_integer((json_int_t)(run->timeout_seconds + 300)));
    json_decref(params);
    free(dir);
    const char *rn = json_string_value(json_object_get(s, "run_name"));
    char *name = rn ? xstrdup(rn) : xfmt("ctarget %s", run->id);
    char tok[65];
    snprintf(tok, sizeof tok, "%s", run->id); /* idempotency_token: at most 64 characters */
    json_t *body = json_pack("{s:s, s:s, s:[o]}", "run_name", name, "idempotency_token", tok,
                             "tasks", tk);
    free(name);
    return body;
}

static ctarget_status dbx_submit(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    json_t *s = step_obj(run);
    const char *task = NULL;
    ctarget_status rc = check_step(t, run, s, &task, err);
    if (rc) {
        json_decref(s);
        return rc;
    }
    dbx d;
    if ((rc = dbx_open(c, t, &d, err))) {
        json_decref(s);
        return rc;
    }
    json_t *body = submit_body(t, run, s, task), *r = NULL;
    /* idempotency_token makes a repeated submit return the same run */
    rc = dbx_call(&d, "POST", "2.1/jobs/runs/submit", NULL, body, DBX_RETRY, &r, NULL, err);
    if (!rc) {
        json_t *id = json_object_get(r, "run_id");
        if (!json_is_integer(id)) {
            H->error_set(err, CTARGET_E_REMOTE, 0, 0, "%s: runs/submit answered without a run_id",
                         d.what);
            rc = CTARGET_E_REMOTE;
        } else {
            H->obj_set_int(run->handle, "run_id", (long long)json_integer_value(id));
            H->obj_set_str(run->handle, "task", task);
            char *dir = run_dir(run);
            H->obj_set_str(run->handle, "dbfs_dir", dir);
            free(dir);
            H->log(c, CTARGET_LOG_INFO, "Databricks run %lld submitted",
                   (long long)json_integer_value(id));
        }
    }
    json_decref(r);
    json_decref(body);
    json_decref(s);
    dbx_close(&d);
    return rc;
}

static ctarget_status get_run(dbx *d, long long id, const char *api, json_t **out,
                              ctarget_error *err)
{
    char q[64];
    snprintf(q, sizeof q, "run_id=%lld", id);
    return dbx_call(d, "GET", api, q, NULL, 0, out, NULL, err);
}

/* the task's own run id (get-output wants a task run's id in multi-task runs) */
static long long task_run_id(json_t *run, long long dflt)
{
    json_t *t0 = json_array_get(json_object_get(run, "tasks"), 0);
    json_t *id = json_object_get(t0, "run_id");
    return json_is_integer(id) ? (long long)json_integer_value(id) : dflt;
}

static void one_line(char *dst, size_t n, const char *src)
{
    size_t j = 0;
    for (size_t i = 0; src && src[i] && j + 1 < n; i++)
        dst[j++] = (src[i] == '\n' || src[i] == '\r' || src[i] == '\t') ? ' ' : src[i];
    while (j && dst[j - 1] == ' ')
        j--;
    dst[j] = '\0';
}

static int exit_cb(void *arg, const void *data, size_t len)
{
    char *b = arg;
    size_t have = strlen(b);
    size_t n = len < 31 - have ? len : 31 - have;
    memcpy(b + have, data, n);
    b[have + n] = '\0';
    return 0;
}

static ctarget_status dbx_poll(void *p, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, long wait_ms, ctarget_run_poll *out,
                               ctarget_error *err)
{
    (void)p;
    long long id = hint(run, "run_id");
    if (!id) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no Databricks run id: it was "
                                                 "never submitted", run->id);
        return CTARGET_E_STATE;
    }
    dbx d;
    ctarget_status rc = dbx_open(c, t, &d, err);
    if (rc)
        return rc;
    long step = cfg(t, "poll_ms") ? atol(cfg(t, "poll_ms")) : 2000;
    long long end = H->monotonic_ns() / 1000000 + (wait_ms > 0 ? wait_ms : 0);
    json_t *r = NULL;
    const char *lc = NULL, *res = NULL, *msg = NULL;
    const char *prev = hget(run, "native_state");
    for (;;) {
        json_decref(r);
        r = NULL;
        if ((rc = get_run(&d, id, "2.1/jobs/runs/get", &r, err)))
            break;
        json_t *stj = json_object_get(r, "state");
        lc = json_string_value(json_object_get(stj, "life_cycle_state"));
        res = json_string_value(json_object_get(stj, "result_state"));
        msg = json_string_value(json_object_get(stj, "state_message"));
        char native[64];
        snprintf(native, sizeof native, "%s%s%s", lc ? lc : "UNKNOWN", res ? "/" : "",
                 res ? res : "");
        long long now = H->monotonic_ns() / 1000000;
        if ((prev && strcmp(prev, native)) || !prev || now >= end ||
            (lc && (!strcmp(lc, "TERMINATED") || !strcmp(lc, "INTERNAL_ERROR") ||
                    !strcmp(lc, "SKIPPED"))))
            break;
        long nap = step < end - now ? step : (long)(end - now);
        if (H->sleep_ms(c, nap) != CTARGET_OK)
            break;
    }
    if (rc) {
        json_decref(r);
        dbx_close(&d);
        return rc;
    }
    lc = lc ? lc : "UNKNOWN";
    snprintf(out->native_state, sizeof out->native_state, "%s%s%s", lc, res ? "/" : "",
             res ? res : "");
    H->obj_set_str(run->handle, "native_state", out->native_state);
    if (!strcmp(lc, "PENDING") || !strcmp(lc, "BLOCKED") || !strcmp(lc, "WAITING_FOR_RETRY"))
        out->state = CTARGET_RUN_QUEUED;
    else if (!strcmp(lc, "RUNNING"))
        out->state = CTARGET_RUN_RUNNING;
    else if (!strcmp(lc, "TERMINATING"))
        out->state = CTARGET_RUN_FINALIZING;
    else if (!strcmp(lc, "TERMINATED") && res && !strcmp(res, "SUCCESS"))
        out->state = CTARGET_RUN_COMPLETED;
    else if (!strcmp(lc, "TERMINATED") && res && !strcmp(res, "CANCELED"))
        out->state = CTARGET_RUN_CANCELED;
    else if (!strcmp(lc, "TERMINATED") || !strcmp(lc, "INTERNAL_ERROR") ||
             !strcmp(lc, "SKIPPED")) {
        out->state = CTARGET_RUN_FAILED;
        /* the service's words: state_message, then get-output's error */
        json_t *o = NULL;
        char why[384] = "";
        ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
        if (get_run(&d, task_run_id(r, id), "2.1/jobs/runs/get-output", &o, &e2) == CTARGET_OK)
            one_line(why, sizeof why, json_string_value(json_object_get(o, "error")));
        json_decref(o);
        char sm[256];
        one_line(sm, sizeof sm, msg);
        if (!strcmp(lc, "INTERNAL_ERROR"))
            snprintf(out->reason, sizeof out->reason, "Databricks internal error (cluster "
                     "terminated?): %s%s%s", sm, *why ? ": " : "", why);
        else
            snprintf(out->reason, sizeof out->reason, "Databricks run %s%s%s%s%s",
                     res ? res : lc, *sm ? ": " : "", sm, *why ? ": " : "", why);
        /* the bootstrap records the script's exit status */
        const char *dir = hget(run, "dbfs_dir");
        if (dir && !strcmp(lc, "TERMINATED")) {
            char buf[32] = "";
            char *path = xfmt("%s/exit_code", dir);
            if (dbfs_read(&d, path, 0, exit_cb, buf, NULL, &e2) == CTARGET_OK && *buf) {
                out->has_exit_code = 1;
                out->exit_code = atoi(buf);
            }
            free(path);
        }
    } else {
        out->state = CTARGET_RUN_QUEUED;
    }
    json_decref(r);
    dbx_close(&d);
    return CTARGET_OK;
}

typedef struct slice {
    uint64_t skip;
    ctarget_write_fn out;
    void *arg;
} slice;

static ctarget_status dbx_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                    const ctarget_run_info *run, ctarget_stream stream,
                                    uint64_t offset, ctarget_write_fn out, void *out_arg,
                                    ctarget_error *err)
{
    (void)p;
    const char *dir = hget(run, "dbfs_dir"), *task = hget(run, "task");
    if (!dir || !hint(run, "run_id"))
        return CTARGET_OK;
    dbx d;
    ctarget_status rc = dbx_open(c, t, &d, err);
    if (rc)
        return rc;
    if (task && strcmp(task, "python")) {
        /* notebook and jar tasks have no bootstrap: the task's own output (runs/get-output
         * "logs"), once the run has ended */
        if (stream == CTARGET_STREAM_LOG) {
            json_t *r = NULL, *o = NULL;
            long long id = hint(run, "run_id");
            if (!(rc = get_run(&d, id, "2.1/jobs/runs/get", &r, err))) {
                const char *lc = json_string_value(
                    json_object_get(json_object_get(r, "state"), "life_cycle_state"));
                if (lc && (!strcmp(lc, "TERMINATED") || !strcmp(lc, "INTERNAL_ERROR")) &&
                    !(rc = get_run(&d, task_run_id(r, id), "2.1/jobs/runs/get-output", &o,
                                   err))) {
                    const char *lg = json_string_value(json_object_get(o, "logs"));
                    size_t n = lg ? strlen(lg) : 0;
                    if (offset < n && out(out_arg, lg + offset, n - (size_t)offset))
                        rc = CTARGET_E_CANCELED;
                }
            }
            json_decref(o);
            json_decref(r);
        }
        dbx_close(&d);
        return rc;
    }
    char *path = xfmt("%s/%s", dir, stream == CTARGET_STREAM_LOG ? "std_log.txt"
                                                                  : "metrics.jsonl");
    rc = dbfs_read(&d, path, offset, out, out_arg, NULL, err);
    free(path);
    dbx_close(&d);
    return rc;
}

static ctarget_status dbx_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    long long id = hint(run, "run_id");
    if (!id)
        return CTARGET_OK; /* never submitted: nothing runs */
    dbx d;
    ctarget_status rc = dbx_open(c, t, &d, err);
    if (rc)
        return rc;
    json_t *b = json_pack("{s:I}", "run_id", (json_int_t)id);
    rc = dbx_call(&d, "POST", "2.1/jobs/runs/cancel", NULL, b, DBX_RETRY, NULL, NULL, err);
    json_decref(b);
    dbx_close(&d);
    return rc;
}

/* a relative path safe to create below a directory */
static int safe_rel(const char *r)
{
    if (!*r || *r == '/')
        return 0;
    for (const char *p = r; *p;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (!n || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        p += n + (e ? 1 : 0);
        if (e && !*p)
            return 0;
    }
    return 1;
}

static int fd_write(void *arg, const void *data, size_t len)
{
    int fd = *(int *)arg;
    const char *p = data;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* copies DBFS folder `remote` (below base, rel "" at the top) into local, recursively */
static ctarget_status fetch_tree(dbx *d, const char *base, const char *rel, const char *local,
                                 int depth, size_t *files, ctarget_error *err)
{
    if (depth > 64)
        return CTARGET_OK;
    char *remote = *rel ? xfmt("%s/%s", base, rel) : xstrdup(base);
    char *q = qpath(remote);
    json_t *r = NULL;
    long st = 0;
    ctarget_status rc = dbx_call(d, "GET", "2.0/dbfs/list", q, NULL, DBX_OK_404, &r, &st, err);
    free(q);
    if (rc || st == 404) {
        json_decref(r);
        free(remote);
        return rc;
    }
    char *ldir = *rel ? xfmt("%s/%s", local, rel) : xstrdup(local);
    if (mkdir(ldir, 0755) != 0 && errno != EEXIST) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot create %s", ldir);
        rc = CTARGET_E_IO;
    }
    size_t i;
    json_t *f;
    size_t plen = strlen(remote);
    json_array_foreach(json_object_get(r, "files"), i, f)
    {
        if (rc)
            break;
        const char *path = json_string_value(json_object_get(f, "path"));
        if (!path)
            continue;
        if (!strncmp(path, "dbfs:", 5))
            path += 5;
        if (strncmp(path, remote, plen) || path[plen] != '/')
            continue;
        const char *name = path + plen + 1;
        if (!safe_rel(name) || strchr(name, '/'))
            continue;
        char *crel = *rel ? xfmt("%s/%s", rel, name) : xstrdup(name);
        if (json_is_true(json_object_get(f, "is_dir"))) {
            rc = fetch_tree(d, base, crel, local, depth + 1, files, err);
        } else {
            char *lp = xfmt("%s/%s", local, crel), *tmp = xfmt("%s.ctarget-tmp", lp);
            int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
            if (fd < 0) {
                H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
                rc = CTARGET_E_IO;
            } else {
                rc = dbfs_read(d, path, 0, fd_write, &fd, NULL, err);
                if (close(fd) != 0 && !rc) {
                    H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
                    rc = CTARGET_E_IO;
                }
                if (!rc && rename(tmp, lp) != 0) {
                    H->error_set(err, CTARGET_E_IO, 0, errno, "cannot rename %s", tmp);
                    rc = CTARGET_E_IO;
                }
                if (rc)
                    unlink(tmp);
                else
                    (*files)++;
            }
            free(lp);
            free(tmp);
        }
        free(crel);
    }
    free(ldir);
    json_decref(r);
    free(remote);
    return rc;
}

static ctarget_status dbx_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                        const ctarget_run_info *run, const char *dest_dir,
                                        ctarget_error *err)
{
    (void)p;
    const char *dir = hget(run, "dbfs_dir");
    if (!dir)
        return CTARGET_OK;
    dbx d;
    ctarget_status rc = dbx_open(c, t, &d, err);
    if (rc)
        return rc;
    static const char *const what[] = {"outputs", "logs"};
    size_t files = 0;
    H->progress(c, "downloading outputs", 0, 0);
    for (int i = 0; i < 2 && !rc; i++) {
        char *remote = xfmt("%s/%s", dir, what[i]), *local = xfmt("%s/%s", dest_dir, what[i]);
        rc = fetch_tree(&d, remote, "", local, 0, &files, err);
        free(remote);
        free(local);
    }
    if (!rc)
        H->log(c, CTARGET_LOG_DEBUG, "%zu output files fetched from DBFS", files);
    dbx_close(&d);
    return rc;
}

static ctarget_status dbx_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    long long id = hint(run, "run_id");
    if (!id)
        return CTARGET_OK;
    dbx d;
    ctarget_status rc = dbx_open(c, t, &d, err);
    if (rc)
        return rc;
    json_t *r = NULL;
    rc = get_run(&d, id, "2.1/jobs/runs/get", &r, err);
    json_decref(r);
    dbx_close(&d);
    return rc;
}

static ctarget_status dbx_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const char *dir = hget(run, "dbfs_dir"), *task = hget(run, "task");
    if (!dir)
        return CTARGET_OK;
    dbx d;
    ctarget_status rc = dbx_open(c, t, &d, err);
    if (rc)
        return rc;
    rc = dbfs_delete(&d, dir, err);
    if (!rc && task && !strcmp(task, "notebook")) {
        char *nb = notebook_path(run);
        *strrchr(nb, '/') = '\0';
        json_t *b = json_pack("{s:s, s:b}", "path", nb, "recursive", 1);
        rc = dbx_call(&d, "POST", "2.0/workspace/delete", NULL, b, DBX_RETRY | DBX_OK_404,
                      NULL, NULL, err);
        json_decref(b);
        free(nb);
    }
    dbx_close(&d);
    return rc;
}

/* ---- descriptor --------------------------------------------------------------------------- */

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = dbx_validate,
    .attach = dbx_attach,
    .status = dbx_status,
    .detach = dbx_detach,
};

static const ctarget_run_ops run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = dbx_prepare,
    .submit = dbx_submit,
    .poll = dbx_poll,
    .read_logs = dbx_read_logs,
    .cancel = dbx_cancel,
    .fetch_outputs = dbx_fetch_outputs,
    .reattach = dbx_reattach,
    .cleanup = dbx_cleanup,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "databricks",
    .version = PACKAGE_VERSION,
    .description = "Azure Databricks workspace (attach only): pipeline steps as Jobs API runs",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH | CTARGET_CAP_PIPELINE_STEP | CTARGET_CAP_PIPELINE_ONLY |
                    CTARGET_CAP_CANCEL,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = dbx_init,
    .fini = dbx_fini,
    .compute = &compute_ops,
    .run = &run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
