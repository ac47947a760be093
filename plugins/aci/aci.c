/* aci: Azure Container Instances.  A container group is created for each run and deleted after
 * it; the target itself is only settings (no Azure resource exists between runs).  See
 * README.md beside this file.
 *
 * compute: validate (region offered by ACI, cpu_cores, memory_gb, storage), create (records
 *   the settings after checking the credential and resource group with one ARM GET), status
 *   (the container groups of this target that exist now), delete (deletes leftovers of this
 *   target: groups tagged ctarget-target=NAME).  Attach is refused by the core.
 * run:
 *   prepare   the snapshot as one tar blob (runs/<id>/snapshot.tar) in the storage container,
 *             Shared Key auth from the plugin; skipped when the blob is there already
 *   submit    PUT containerGroups/ctarget-<run id> (api-version 2025-09-01), one container:
 *             the image (run->docker_image or default_image), resources.requests {cpu,
 *             memoryInGB}, restartPolicy Never, command python3 -c <aci_boot.py>, which
 *             downloads the tar with a read SAS, rebuilds the tree, runs the script, and
 *             uploads ./outputs, ./logs, the metrics and result.json with a write SAS (both
 *             SAS URLs are secureValue environment variables: never shown, never stored)
 *   poll      GET the group: provisioningState, containers[0].instanceView.currentState
 *             {state, exitCode, detailStatus}; the container state is the native state.  A
 *             group that is gone is judged by runs/<id>/result.json.
 *   read_logs the container logs API (whole log, returned from the offset on); metrics from
 *             runs/<id>/metrics.jsonl (uploaded by the bootstrap once a second)
 *   cancel    DELETE the group.  cleanup: DELETE the group (always, idempotent).
 *   reattach  nothing to rebuild: everything is in run->handle (group name) and the settings */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "../azure/azure.h"
#include "aci_boot_py.h"

#define ACI_API "2025-09-01"
#define ACI_NS "Microsoft.ContainerInstance"
#define ACI_CONTAINER "ctarget"
#define ACI_DEFAULT_IMAGE "python:3.12-slim"
#define ACI_REGIONS "eastus, westus, westus2, westeurope, northeurope, southeastasia"

static const ctarget_host *H;

static const char *const regions[] = {"eastus", "westus", "westus2", "westeurope",
                                      "northeurope", "southeastasia"};

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    AZ_CONFIG_KEYS,
    K(.name = "region", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_CREATE,
      .help = "Azure region of the container groups (" ACI_REGIONS ")"),
    K(.name = "cpu_cores", .type = CTARGET_KEY_NUMBER, .default_value = "1",
      .help = "CPU cores of each run's container (0.1 to 4)"),
    K(.name = "memory_gb", .type = CTARGET_KEY_NUMBER, .default_value = "1.5",
      .help = "memory of each run's container in GB (0.1 to 16)"),
    K(.name = "default_image", .type = CTARGET_KEY_STRING, .default_value = ACI_DEFAULT_IMAGE,
      .help = "Docker image for runs without a docker image (it needs python3)"),
    K(.name = "storage_endpoint", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_CREATE,
      .help = "blob endpoint the snapshot and outputs go through "
              "(https://ACCOUNT.blob.core.windows.net)"),
    K(.name = "storage_account", .type = CTARGET_KEY_STRING,
      .help = "storage account name (default: from storage_endpoint)"),
    K(.name = "storage_account_key", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_REQUIRED_CREATE,
      .help = "its account key (a secret: prefer env:VAR or file:PATH); runs get SAS URLs only"),
    K(.name = "storage_container", .type = CTARGET_KEY_STRING, .default_value = "ctarget-aci",
      .help = "blob container for snapshots and outputs (created when missing)"),
};

/* ---- small helpers ------------------------------------------------------------------------ */

static char *xfmt(const char *fmt, ...) CTARGET_PRINTF(1, 2);
static char *xfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return s;
}

static const char *cfg(ctarget_target *t, const char *key)
{
    const char *v = H->config_get0(t, key);
    return v && *v ? v : NULL;
}

static void wipe_free(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

static int buf_add(buf *b, const void *d, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return -1;
        b->data = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, d, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static const char *hget(const ctarget_run_info *run, const char *key)
{
    return run->handle ? H->obj_get0_str(run->handle, key) : NULL;
}

static long long hint(const ctarget_run_info *run, const char *key, long long dflt)
{
    long long v;
    return run->handle && H->obj_get_int(run->handle, key, &v) ? v : dflt;
}

/* ctarget-<run id>: lower-case letters, digits, '-'; at most 63; no '-' at either end */
static void group_name(const char *run_id, char *out, size_t len)
{
    size_t n = (size_t)snprintf(out, len, "ctarget-");
    for (const char *p = run_id; *p && n + 1 < len && n < 63; p++)
        out[n++] = isalnum((unsigned char)*p) ? (char)tolower((unsigned char)*p) : '-';
    while (n > 1 && out[n - 1] == '-')
        n--;
    out[n] = '\0';
}

static int region_ok(const char *r)
{
    char norm[64];
    size_t n = 0;
    for (const char *p = r; *p && n + 1 < sizeof norm; p++)
        if (*p != ' ')
            norm[n++] = (char)tolower((unsigned char)*p);
    norm[n] = '\0';
    for (size_t i = 0; i < sizeof regions / sizeof regions[0]; i++)
        if (!strcmp(norm, regions[i]))
            return 1;
    return 0;
}

/* ---- Azure context --------------------------------------------------------------------------- */

static ctarget_status az_open(ctarget_call *c, ctarget_target *t, az_ctx **az,
                              ctarget_error *err)
{
    ctarget_status rc = az_ctx_new(H, c, t, AZ_CTX_NO_WORKSPACE, az, err);
    if (rc)
        return rc;
    if (!az_subscription0(*az) || !az_resource_group0(*az)) {
        const char *what = !az_subscription0(*az) ? "subscription_id" : "resource_group";
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "aci target '%s' has no %s: set it with --set %s=... (the resource group "
                     "the container groups are created in)", H->target_name(t), what, what);
        az_ctx_free(*az);
        *az = NULL;
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

/* "/subscriptions/S/resourceGroups/G/providers/Microsoft.ContainerInstance/containerGroups[/N]" */
static char *groups_path(az_ctx *az, const char *name)
{
    char *rg = az_url_escape(az_resource_group0(az), 0);
    char *nm = name ? az_url_escape(name, 0) : NULL;
    char *p = xfmt("/subscriptions/%s/resourceGroups/%s/providers/" ACI_NS
                   "/containerGroups%s%s", az_subscription0(az), rg, nm ? "/" : "",
                   nm ? nm : "");
    free(rg);
    free(nm);
    return p;
}

/* ---- storage: Shared Key client and service SAS --------------------------------------------- */

typedef struct store {
    char *endpoint;   /* no trailing '/' */
    char *account;
    char *container;
    char *key;        /* base64, secret */
} store;

static void store_clear(store *s)
{
    free(s->endpoint);
    free(s->account);
    free(s->container);
    wipe_free(s->key);
    memset(s, 0, sizeof *s);
}

static ctarget_status store_get(ctarget_target *t, store *s, ctarget_error *err)
{
    memset(s, 0, sizeof *s);
    const char *ep = cfg(t, "storage_endpoint");
    if (!ep) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "aci target '%s' has no storage_endpoint: set it to the blob endpoint of "
                     "a storage account (https://ACCOUNT.blob.core.windows.net)",
                     H->target_name(t));
        return CTARGET_E_CONFIG;
    }
    size_t n = strlen(ep);
    while (n && ep[n - 1] == '/')
        n--;
    s->endpoint = strndup(ep, n);
    const char *acc = cfg(t, "storage_account");
    if (acc) {
        s->account = strdup(acc);
    } else {
        /* https://ACCOUNT.blob...  or path style https://HOST:PORT/ACCOUNT */
        const char *h = strstr(s->endpoint, "://");
        h = h ? h + 3 : s->endpoint;
        const char *slash = strchr(h, '/');
        if (slash && slash[1])
            s->account = strdup(slash + 1);
        else if (strchr(h, '.') && !isdigit((unsigned char)*h))
            s->account = strndup(h, (size_t)(strchr(h, '.') - h));
    }
    if (!s->account || !*s->account || strchr(s->account, '/')) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "storage_endpoint '%s' names no account: set storage_account", ep);
        store_clear(s);
        return CTARGET_E_CONFIG;
    }
    s->container = strdup(cfg(t, "storage_container") ? cfg(t, "storage_container")
                                                        : "ctarget-aci");
    char *key = NULL;
    ctarget_status rc = H->secret_get1(t, "storage_account_key", &key, err);
    if (rc) {
        store_clear(s);
        return rc;
    }
    if (!key || !*key) {
        if (key)
            H->secret_free(key);
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "aci target '%s' has no storage_account_key: set it with --set "
                     "storage_account_key=env:VAR (or file:PATH)", H->target_name(t));
        store_clear(s);
        return CTARGET_E_CONFIG;
    }
    /* a key file's line end (and any blank around the key) is not part of it */
    const char *k0 = key;
    while (isspace((unsigned char)*k0))
        k0++;
    size_t kl = strlen(k0);
    while (kl && isspace((unsigned char)k0[kl - 1]))
        kl--;
    s->key = strndup(k0, kl);
    H->secret_free(key);
    return CTARGET_OK;
}

static ctarget_status store_open(az_ctx *az, const store *s, az_blob **b, ctarget_error *err)
{
    return az_blob_open_key(az, s->endpoint, s->account, s->key, s->container, b, err);
}

static char *pct(const char *s)
{
    return az_url_escape(s, 0);
}

/* A service SAS (version AZ_BLOB_API_VERSION) for the container (blob == NULL, sr=c) or one
 * blob (sr=b), https only, valid until `expiry`.  Returns the query string (a secret). */
static char *sas_query(const store *s, const char *blob, const char *perms, time_t expiry)
{
    char se[32];
    struct tm tm;
    gmtime_r(&expiry, &tm);
    strftime(se, sizeof se, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char *res = blob ? xfmt("/blob/%s/%s/%s", s->account, s->container, blob)
                     : xfmt("/blob/%s/%s", s->account, s->container);
    const char *sr = blob ? "b" : "c";
    /* sp, st, se, canonicalizedResource, si, sip, spr, sv, sr, snapshot, ses, rscc, rscd,
     * rsce, rscl, rsct */
    char *sts = xfmt("%s\n\n%s\n%s\n\n\nhttps\n%s\n%s\n\n\n\n\n\n\n", perms, se, res,
                     AZ_BLOB_API_VERSION, sr);
    free(res);
    unsigned char key[128];
    int kl = EVP_DecodeBlock(key, (const unsigned char *)s->key, (int)strlen(s->key));
    char *q = NULL;
    if (kl > 0 && sts) {
        size_t klen = (size_t)kl;
        size_t sl = strlen(s->key);
        /* EVP_DecodeBlock counts the padding's zero bytes */
        if (sl >= 1 && s->key[sl - 1] == '=')
            klen--;
        if (sl >= 2 && s->key[sl - 2] == '=')
            klen--;
        unsigned char mac[32];
        unsigned int ml = 0;
        HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)sts, strlen(sts), mac, &ml);
        unsigned char b64[64];
        EVP_EncodeBlock(b64, mac, (int)ml);
        char *sig = pct((const char *)b64);
        char *sep = pct(se);
        q = xfmt("sv=%s&sr=%s&sp=%s&se=%s&spr=https&sig=%s", AZ_BLOB_API_VERSION, sr, perms,
                 sep, sig);
        free(sig);
        free(sep);
        OPENSSL_cleanse(mac, sizeof mac);
    }
    OPENSSL_cleanse(key, sizeof key);
    free(sts);
    return q;
}

static char *blob_url(const store *s, const char *blob, const char *query)
{
    char *nm = blob ? az_url_escape(blob, 1) : NULL;
    char *u = xfmt("%s/%s%s%s?%s", s->endpoint, s->container, nm ? "/" : "", nm ? nm : "",
                   query);
    free(nm);
    return u;
}

/* ---- compute operations -------------------------------------------------------------------- */

static ctarget_status aci_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static void aci_fini(void *p)
{
    (void)p;
}

static int number(const char *v, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(d))
        return -1;
    *out = d;
    return 0;
}

static ctarget_status aci_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                   ctarget_error *err)
{
    (void)p, (void)c, (void)v;
    const char *r = cfg(t, "region");
    if (r && !region_ok(r)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "region '%s' is not offered by Azure Container Instances: use one of "
                     ACI_REGIONS, r);
        return CTARGET_E_CONFIG;
    }
    double d;
    const char *cpu = cfg(t, "cpu_cores");
    if (cpu && (number(cpu, &d) || d < 0.1 || d > 4)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "cpu_cores=%s is out of range: a container group has 0.1 to 4 cores", cpu);
        return CTARGET_E_CONFIG;
    }
    const char *mem = cfg(t, "memory_gb");
    if (mem && (number(mem, &d) || d < 0.1 || d > 16)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "memory_gb=%s is out of range: a container group has 0.1 to 16 GB", mem);
        return CTARGET_E_CONFIG;
    }
    const char *ep = cfg(t, "storage_endpoint");
    if (ep && strncmp(ep, "https://", 8)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "storage_endpoint '%s' is not an https URL: use "
                     "https://ACCOUNT.blob.core.windows.net", ep);
        return CTARGET_E_CONFIG;
    }
    const char *sc = cfg(t, "storage_container");
    if (sc) {
        size_t n = strlen(sc);
        int ok = n >= 3 && n <= 63 && sc[0] != '-' && sc[n - 1] != '-';
        for (size_t i = 0; i < n && ok; i++)
            ok = (islower((unsigned char)sc[i]) || isdigit((unsigned char)sc[i]) ||
                  sc[i] == '-') && !(sc[i] == '-' && i && sc[i - 1] == '-');
        if (!ok) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "storage_container '%s' is not a blob container name: 3-63 lower-case "
                         "letters, digits and single '-'", sc);
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

static ctarget_status aci_create(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                 ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    /* the credential and the resource group, checked once: nothing is created */
    char *rg = az_url_escape(az_resource_group0(az), 0);
    char *path = xfmt("/subscriptions/%s/resourceGroups/%s", az_subscription0(az), rg);
    char what[300];
    snprintf(what, sizeof what, "resource group '%s'", az_resource_group0(az));
    az_arm_req rq = {.method = "GET", .path = path, .api_version = "2021-04-01", .what = what};
    json_t *res = NULL;
    rc = az_arm_do(az, &rq, 0, &res, err);
    json_decref(res);
    free(path);
    free(rg);
    if (!rc) {
        H->obj_set_str(facts, "subscription_id", az_subscription0(az));
        H->obj_set_str(facts, "resource_group", az_resource_group0(az));
        H->obj_set_str(facts, "region", cfg(t, "region"));
        H->obj_set_str(facts, "credential", az_credential_desc0(az));
        H->obj_set_str(facts, "container_groups", "created per run, deleted after it");
    }
    az_ctx_free(az);
    return rc;
}

typedef struct lister {
    const char *target;
    char **names;
    size_t n;
} lister;

static int list_cb(void *arg, json_t *item)
{
    lister *l = arg;
    const char *tg = json_string_value(json_object_get(json_object_get(item, "tags"),
                                                       "ctarget-target"));
    const char *nm = json_string_value(json_object_get(item, "name"));
    if (tg && nm && !strcmp(tg, l->target) && l->n < 1000) {
        char **p = realloc(l->names, (l->n + 1) * sizeof *p);
        if (!p)
            return 1;
        l->names = p;
        l->names[l->n++] = strdup(nm);
    }
    return 0;
}

static ctarget_status list_groups(az_ctx *az, ctarget_target *t, lister *l, ctarget_error *err)
{
    memset(l, 0, sizeof *l);
    l->target = H->target_name(t);
    char *path = groups_path(az, NULL);
    az_arm_req rq = {.method = "GET", .path = path, .api_version = ACI_API,
                     .what = "container groups"};
    ctarget_status rc = az_arm_list(az, &rq, list_cb, l, err);
    free(path);
    return rc;
}

static void lister_free(lister *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
}

static ctarget_status aci_status(void *p, ctarget_call *c, ctarget_target *t,
                                 ctarget_compute_state *st, ctarget_obj *details,
                                 ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    lister l;
    rc = list_groups(az, t, &l, err);
    if (!rc) {
        st->provisioning_state = CTARGET_PROV_SUCCEEDED;
        snprintf(st->state, sizeof st->state, "%s", l.n ? "Running" : "Idle");
        H->obj_set_str(details, "region", cfg(t, "region"));
        H->obj_set_str(details, "cpu_cores", cfg(t, "cpu_cores"));
        H->obj_set_str(details, "memory_gb", cfg(t, "memory_gb"));
        H->obj_set_int(details, "container_groups", (long long)l.n);
    }
    lister_free(&l);
    az_ctx_free(az);
    return rc;
}

static ctarget_status delete_group(az_ctx *az, const char *name, ctarget_error *err)
{
    char *path = groups_path(az, name);
    char what[200];
    snprintf(what, sizeof what, "container group '%s'", name);
    az_arm_req rq = {.method = "DELETE", .path = path, .api_version = ACI_API, .what = what};
    ctarget_status rc = az_arm_do(az, &rq, AZ_OK_404 | AZ_WAIT, NULL, err);
    free(path);
    return rc;
}

/* the target is settings only: delete removes leftover groups of this target, if any */
static ctarget_status aci_delete(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    lister l;
    rc = list_groups(az, t, &l, err);
    for (size_t i = 0; !rc && i < l.n; i++) {
        H->progress(c, "deleting leftover container groups", i, l.n);
        rc = delete_group(az, l.names[i], err);
    }
    lister_free(&l);
    az_ctx_free(az);
    return rc;
}

static ctarget_status aci_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)err;
    return CTARGET_OK;
}

/* ---- run: prepare (the snapshot as one tar blob) ------------------------------------------ */

static int fd_write(void *arg, const void *data, size_t len)
{
    int fd = *(int *)arg;
    const char *p = data;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w, len -= (size_t)w;
    }
    return 0;
}

static char *run_prefix(const ctarget_run_info *run)
{
    return xfmt("runs/%s", run->id);
}

static ctarget_status aci_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    if (run->docker_gpu) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "aci targets have no GPUs: run GPU images on amlcompute or remotevm");
        return CTARGET_E_UNSUPPORTED;
    }
    if (run->env_kind != CTARGET_ENV_USER && !run->docker_image) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "aci runs use a Docker image as it is: build the %s environment into an "
                     "image and give it as the run's docker image",
                     run->env_kind == CTARGET_ENV_PIP ? "pip" : "conda");
        return CTARGET_E_UNSUPPORTED;
    }
    if (run->node_count > 1) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "aci runs have one container (node_count %u): use amlcompute for "
                     "multi-node runs", run->node_count);
        return CTARGET_E_UNSUPPORTED;
    }
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    store s = {0};
    az_blob *b = NULL;
    char *prefix = run_prefix(run), *name = xfmt("%s/snapshot.tar", prefix), *tmp = NULL;
    if ((rc = store_get(t, &s, err)))
        goto out;
    if ((rc = store_open(az, &s, &b, err)))
        goto out;
    uint64_t size = 0;
    ctarget_status have = az_blob_size(b, name, &size, err);
    if (have == CTARGET_OK && size > 0) {
        H->obj_set_str(run->handle, "snapshot_blob", name);
        goto out; /* a monitor that died after the upload */
    }
    if ((rc = az_blob_create_container(b, err)))
        goto out;
    tmp = xfmt("%s/snapshot.tar", run->work_dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
        rc = CTARGET_E_IO;
        goto out;
    }
    H->progress(c, "packing the snapshot", 0, 0);
    rc = H->snapshot_write_tar(c, run->snapshot_id, NULL, NULL, 0, fd_write, &fd, err);
    if (close(fd) != 0 && !rc) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
        rc = CTARGET_E_IO;
    }
    if (!rc) {
        H->progress(c, "uploading the snapshot", 0, 0);
        rc = az_blob_put_file(b, name, tmp, "application/x-tar", err);
    }
    unlink(tmp);
    if (!rc)
        H->obj_set_str(run->handle, "snapshot_blob", name);
out:
    if (rc == CTARGET_E_AUTH && s.account)
        H->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "storage account '%s' refused the account key of aci target '%s': check "
                     "storage_account_key (the account's key1 or key2)", s.account,
                     H->target_name(t));
    az_blob_close(b);
    store_clear(&s);
    free(tmp);
    free(name);
    free(prefix);
    az_ctx_free(az);
    return rc;
}

/* ---- run: submit (the container group) ------------------------------------------------------ */

static json_t *env_var(const char *name, const char *value, int secure)
{
    return json_pack("{s:s,s:s}", "name", name, secure ? "secureValue" : "value", value);
}

static json_t *group_body(ctarget_target *t, const ctarget_run_info *run, const store *s,
                          const char *snap_url, const char *out_url)
{
    double cpu = 1, mem = 1.5;
    if (cfg(t, "cpu_cores"))
        number(cfg(t, "cpu_cores"), &cpu);
    if (cfg(t, "memory_gb"))
        number(cfg(t, "memory_gb"), &mem);
    const char *image = run->docker_image && *run->docker_image ? run->docker_image
                        : cfg(t, "default_image") ? cfg(t, "default_image") : ACI_DEFAULT_IMAGE;
    json_t *env = json_array();
    json_t *args = json_array();
    for (size_t i = 0; i < run->n_args; i++)
        json_array_append_new(args, json_string(run->args[i]));
    char *args_text = json_dumps(args, JSON_COMPACT);
    json_decref(args);
    json_array_append_new(env, env_var("CTARGET_RUN_ID", run->id, 0));
    json_array_append_new(env, env_var("CTARGET_ACI_SCRIPT", run->script, 0));
    json_array_append_new(env, env_var("CTARGET_ACI_ARGS", args_text ? args_text : "[]", 0));
    free(args_text);
    json_array_append_new(env, env_var("CTARGET_ACI_SNAPSHOT_URL", snap_url, 1));
    json_array_append_new(env, env_var("CTARGET_ACI_OUTPUT_URL", out_url, 1));
    for (size_t i = 0; i < run->n_env; i++) {
        const char *eq = strchr(run->env[i], '=');
        if (!eq || eq == run->env[i])
            continue;
        char *k = strndup(run->env[i], (size_t)(eq - run->env[i]));
        json_array_append_new(env, env_var(k, eq + 1, 0));
        free(k);
    }
    (void)s;
    json_t *container = json_pack(
        "{s:s, s:{s:s, s:[s,s,s], s:o, s:{s:{s:f, s:f}}}}", "name", ACI_CONTAINER,
        "properties", "image", image, "command", "python3", "-c", aci_boot_src,
        "environmentVariables", env, "resources", "requests", "cpu", cpu, "memoryInGB", mem);
    char region[64];
    size_t n = 0;
    for (const char *p = cfg(t, "region") ? cfg(t, "region") : "eastus"; *p && n + 1 < sizeof region;
         p++)
        if (*p != ' ')
            region[n++] = (char)tolower((unsigned char)*p);
    region[n] = '\0';
    return json_pack("{s:s, s:{s:s, s:s}, s:{s:[o], s:s, s:s}}", "location", region, "tags",
                     "ctarget-run", run->id, "ctarget-target", H->target_name(t),
                     "properties", "containers", container, "osType", "Linux",
                     "restartPolicy", "Never");
}

/* the group named like the run exists: is it ours? */
static int group_is_ours(az_ctx *az, const char *name, const ctarget_run_info *run)
{
    char *path = groups_path(az, name);
    az_arm_req rq = {.method = "GET", .path = path, .api_version = ACI_API};
    json_t *cur = NULL;
    ctarget_error e2;
    memset(&e2, 0, sizeof e2);
    e2.struct_size = sizeof e2;
    int ours = 0;
    if (az_arm_do(az, &rq, AZ_OK_404, &cur, &e2) == CTARGET_OK && cur) {
        const char *r = json_string_value(json_object_get(json_object_get(cur, "tags"),
                                                          "ctarget-run"));
        ours = r && !strcmp(r, run->id);
    }
    json_decref(cur);
    free(path);
    return ours;
}

static ctarget_status aci_submit(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    char name[64];
    group_name(run->id, name, sizeof name);
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    store s;
    if ((rc = store_get(t, &s, err))) {
        az_ctx_free(az);
        return rc;
    }
    /* a monitor that died after its PUT finds its group again */
    if (group_is_ours(az, name, run)) {
        H->obj_set_str(run->handle, "group", name);
        store_clear(&s);
        az_ctx_free(az);
        return CTARGET_OK;
    }
    long long life = run->timeout_seconds > 0 ? run->timeout_seconds + 3600 : 7 * 86400;
    time_t exp = time(NULL) + (time_t)life;
    char *prefix = run_prefix(run), *snap = xfmt("%s/snapshot.tar", prefix);
    char *rq_read = sas_query(&s, snap, "r", exp), *rq_write = sas_query(&s, NULL, "cw", exp);
    char *snap_url = rq_read ? blob_url(&s, snap, rq_read) : NULL;
    char *out_url = rq_write ? blob_url(&s, prefix, rq_write) : NULL;
    wipe_free(rq_read);
    wipe_free(rq_write);
    json_t *body = snap_url && out_url ? group_body(t, run, &s, snap_url, out_url) : NULL;
    wipe_free(snap_url);
    wipe_free(out_url);
    if (!body) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "storage_account_key of aci target '%s' is not a base64 account key",
                     H->target_name(t));
        rc = CTARGET_E_CONFIG;
        goto out;
    }
    char *path = groups_path(az, name);
    char what[200];
    snprintf(what, sizeof what, "container group '%s'", name);
    H->progress(c, "creating the container group", 0, 0);
    for (int attempt = 0; attempt < 8; attempt++) {
        az_arm_req rq = {.method = "PUT", .path = path, .api_version = ACI_API, .body = body,
                         .what = what};
        az_arm_resp rs = {0};
        rc = az_arm_call(az, &rq, 0, &rs, err);
        long st = rs.status;
        long ra = rs.retry_after_ms;
        az_arm_resp_clear(&rs);
        if (rc == CTARGET_OK || st != 409)
            break;
        /* 409: the group is being changed (a PUT or DELETE in flight), or exists already */
        if (group_is_ours(az, name, run)) {
            rc = CTARGET_OK;
            break;
        }
        if (H->sleep_ms(c, ra > 0 && ra < 30000 ? ra : 500 * (attempt + 1)))
            break;
    }
    free(path);
    json_decref(body);
    if (!rc) {
        H->obj_set_str(run->handle, "group", name);
        H->obj_set_int(run->handle, "submitted_ms", H->now_ms());
    }
out:
    free(snap);
    free(prefix);
    store_clear(&s);
    az_ctx_free(az);
    return rc;
}

/* ---- run: poll ------------------------------------------------------------------------------ */

static void set_state(ctarget_run_poll *o, ctarget_run_state s, const char *native)
{
    o->state = s;
    snprintf(o->native_state, sizeof o->native_state, "%s", native ? native : "");
}

typedef struct membuf {
    buf b;
} membuf;

static int mem_write(void *arg, const void *d, size_t n)
{
    return buf_add(arg, d, n);
}

/* runs/<id>/result.json, written by the bootstrap after the outputs: {"exit_code": N} */
static int result_exit(az_ctx *az, ctarget_target *t, const ctarget_run_info *run, int *code)
{
    store s;
    ctarget_error e2;
    memset(&e2, 0, sizeof e2);
    e2.struct_size = sizeof e2;
    if (store_get(t, &s, &e2))
        return 0;
    az_blob *b = NULL;
    int found = 0;
    if (!store_open(az, &s, &b, &e2)) {
        char *name = xfmt("runs/%s/result.json", run->id);
        buf m = {0};
        if (az_blob_get(b, name, 0, -1, mem_write, &m, NULL, &e2) == CTARGET_OK && m.data) {
            json_t *j = json_loads(m.data, 0, NULL);
            if (json_is_integer(json_object_get(j, "exit_code"))) {
                *code = (int)json_integer_value(json_object_get(j, "exit_code"));
                found = 1;
            }
            json_decref(j);
        }
        free(m.data);
        free(name);
        az_blob_close(b);
    }
    store_clear(&s);
    return found;
}

static void failed_exit(ctarget_run_poll *o, int code, const char *detail)
{
    o->has_exit_code = 1;
    o->exit_code = code;
    if (detail && !strcasecmp(detail, "OOMKilled"))
        snprintf(o->reason, sizeof o->reason,
                 "the container ran out of memory (OOMKilled, exit code %d): raise memory_gb",
                 code);
    else
        snprintf(o->reason, sizeof o->reason, "the script exited with code %d%s%s%s", code,
                 detail && *detail ? " (" : "", detail ? detail : "",
                 detail && *detail ? ")" : "");
}

static ctarget_status aci_poll(void *p, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, long wait_ms, ctarget_run_poll *o,
                               ctarget_error *err)
{
    (void)p, (void)wait_ms;
    const char *name = hget(run, "group");
    if (!name) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no container group recorded",
                     run->id);
        return CTARGET_E_STATE;
    }
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    char *path = groups_path(az, name);
    char what[200];
    snprintf(what, sizeof what, "container group '%s'", name);
    az_arm_req rq = {.method = "GET", .path = path, .api_version = ACI_API, .what = what};
    json_t *g = NULL;
    rc = az_arm_do(az, &rq, AZ_OK_404, &g, err);
    free(path);
    if (rc)
        goto out;
    if (!g) {
        int code = 0;
        if (hint(run, "canceled", 0)) {
            set_state(o, CTARGET_RUN_CANCELED, "Deleted");
        } else if (result_exit(az, t, run, &code)) {
            /* deleted after it finished (a cleanup whose monitor died before recording it) */
            if (code == 0) {
                set_state(o, CTARGET_RUN_COMPLETED, "Terminated");
            } else {
                set_state(o, CTARGET_RUN_FAILED, "Terminated");
                failed_exit(o, code, NULL);
            }
        } else {
            set_state(o, CTARGET_RUN_NOT_RESPONDING, "NotFound");
            snprintf(o->reason, sizeof o->reason,
                     "container group '%s' is gone from resource group '%s' and left no result",
                     name, az_resource_group0(az));
        }
        goto out;
    }
    json_t *props = json_object_get(g, "properties");
    const char *prov = json_string_value(json_object_get(props, "provisioningState"));
    json_t *ct = json_object_get(json_array_get(json_object_get(props, "containers"), 0),
                                 "properties");
    json_t *cs = json_object_get(json_object_get(ct, "instanceView"), "currentState");
    const char *state = json_string_value(json_object_get(cs, "state"));
    const char *detail = json_string_value(json_object_get(cs, "detailStatus"));
    if (prov && !strcasecmp(prov, "Failed") && (!state || strcasecmp(state, "Terminated"))) {
        set_state(o, CTARGET_RUN_FAILED, state ? state : "Failed");
        /* the reason: the group's or the container's last warning event */
        const char *msg = NULL;
        json_t *evs[2] = {json_object_get(json_object_get(ct, "instanceView"), "events"),
                          json_object_get(json_object_get(props, "instanceView"), "events")};
        for (int k = 0; k < 2; k++) {
            size_t i;
            json_t *e;
            json_array_foreach(evs[k], i, e) {
                const char *ty = json_string_value(json_object_get(e, "type"));
                if (ty && !strcasecmp(ty, "Warning"))
                    msg = json_string_value(json_object_get(e, "message"));
            }
        }
        snprintf(o->reason, sizeof o->reason, "container group '%s' failed to start: %s", name,
                 msg ? msg : detail && *detail ? detail : "provisioningState Failed");
        goto out;
    }
    if (!state) {
        set_state(o, CTARGET_RUN_PROVISIONING, prov ? prov : "Pending");
        goto out;
    }
    if (!strcasecmp(state, "Waiting")) {
        if (detail && (strstr(detail, "ErrImagePull") || strstr(detail, "ImagePullBackOff") ||
                       strstr(detail, "InvalidImageName"))) {
            const char *image = json_string_value(json_object_get(ct, "image"));
            set_state(o, CTARGET_RUN_FAILED, state);
            snprintf(o->reason, sizeof o->reason,
                     "image '%s' could not be pulled (%s): check the image name and that the "
                     "registry is public", image ? image : "?", detail);
        } else {
            set_state(o, CTARGET_RUN_PREPARING, state);
        }
        goto out;
    }
    if (!strcasecmp(state, "Running")) {
        set_state(o, CTARGET_RUN_RUNNING, state);
        if (!hint(run, "running_ms", 0))
            H->obj_set_int(run->handle, "running_ms", H->now_ms());
        goto out;
    }
    if (!strcasecmp(state, "Terminated")) {
        json_t *ec = json_object_get(cs, "exitCode");
        int code = json_is_integer(ec) ? (int)json_integer_value(ec) : -1;
        if (code == 0) {
            set_state(o, CTARGET_RUN_COMPLETED, state);
        } else {
            set_state(o, CTARGET_RUN_FAILED, state);
            if (code >= 0)
                failed_exit(o, code, detail);
            else
                snprintf(o->reason, sizeof o->reason, "the container ended without an exit "
                         "code (%s)", detail ? detail : "no detail");
        }
        goto out;
    }
    set_state(o, CTARGET_RUN_PREPARING, state);
out:
    json_decref(g);
    az_ctx_free(az);
    return rc;
}

/* ---- run: logs and metrics --------------------------------------------------------------- */

static ctarget_status aci_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                    const ctarget_run_info *run, ctarget_stream stream,
                                    uint64_t offset, ctarget_write_fn out, void *out_arg,
                                    ctarget_error *err)
{
    (void)p;
    const char *name = hget(run, "group");
    if (!name)
        return CTARGET_OK;
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    if (stream == CTARGET_STREAM_METRICS) {
        store s;
        az_blob *b = NULL;
        if (!(rc = store_get(t, &s, err)) && !(rc = store_open(az, &s, &b, err))) {
            char *blob = xfmt("runs/%s/metrics.jsonl", run->id);
            rc = az_blob_get(b, blob, offset, -1, out, out_arg, NULL, err);
            if (rc == CTARGET_E_NOT_FOUND)
                rc = CTARGET_OK;
            free(blob);
        }
        az_blob_close(b);
        store_clear(&s);
        az_ctx_free(az);
        return rc;
    }
    char *gp = groups_path(az, name);
    char *path = xfmt("%s/containers/" ACI_CONTAINER "/logs", gp);
    free(gp);
    char what[200];
    snprintf(what, sizeof what, "logs of container group '%s'", name);
    az_arm_req rq = {.method = "GET", .path = path, .api_version = ACI_API, .what = what};
    az_arm_resp rs = {0};
    rc = az_arm_call(az, &rq, AZ_OK_404, &rs, err);
    if (!rc && rs.status == 200) {
        const char *content = json_string_value(json_object_get(rs.body, "content"));
        size_t n = content ? strlen(content) : 0;
        if (offset < n && out(out_arg, content + offset, n - (size_t)offset))
            rc = CTARGET_E_CANCELED;
    }
    az_arm_resp_clear(&rs);
    free(path);
    az_ctx_free(az);
    return rc;
}

/* ---- run: cancel, cleanup, reattach ------------------------------------------------------ */

static ctarget_status aci_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const char *name = hget(run, "group");
    if (!name)
        return CTARGET_OK;
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    H->obj_set_int(run->handle, "canceled", 1);
    rc = delete_group(az, name, err);
    az_ctx_free(az);
    return rc;
}

static ctarget_status aci_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    char name[64];
    const char *g = hget(run, "group");
    if (!g) {
        group_name(run->id, name, sizeof name); /* a submit whose handle was never saved */
        g = name;
    }
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    rc = delete_group(az, g, err);
    /* the snapshot tar is no longer needed; outputs stay for fetch_outputs */
    store s;
    az_blob *b = NULL;
    ctarget_error e2;
    memset(&e2, 0, sizeof e2);
    e2.struct_size = sizeof e2;
    if (!rc && !store_get(t, &s, &e2)) {
        if (!store_open(az, &s, &b, &e2)) {
            char *snap = xfmt("runs/%s/snapshot.tar", run->id);
            az_blob_delete(b, snap, &e2);
            free(snap);
            az_blob_close(b);
        }
        store_clear(&s);
    }
    az_ctx_free(az);
    return rc;
}

static ctarget_status aci_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    if (!hget(run, "group")) {
        H->error_set(err, CTARGET_E_STATE, 0, 0,
                     "run %s has no container group recorded in its handle", run->id);
        return CTARGET_E_STATE;
    }
    return CTARGET_OK;
}

/* ---- run: outputs ------------------------------------------------------------------------ */

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

static int mkdirs_for(const char *path)
{
    char *d = strdup(path);
    if (!d)
        return -1;
    for (char *s = d + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        struct stat st;
        if ((mkdir(d, 0755) != 0 && errno != EEXIST) || lstat(d, &st) != 0 ||
            !S_ISDIR(st.st_mode)) {
            free(d);
            return -1;
        }
        *s = '/';
    }
    free(d);
    return 0;
}

typedef struct fetch {
    az_blob *b;
    const char *prefix, *dest;
    ctarget_status rc;
    ctarget_error *err;
} fetch;

static int fetch_cb(void *arg, const char *name, uint64_t size)
{
    (void)size;
    fetch *f = arg;
    const char *rel = name + strlen(f->prefix);
    if (!safe_rel(rel))
        return 0;
    char *path = xfmt("%s/%s", f->dest, rel), *tmp = xfmt("%s.ctarget-tmp", path);
    if (!path || !tmp || mkdirs_for(path)) {
        H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot create the directory of %s",
                     path ? path : rel);
        f->rc = CTARGET_E_IO;
    } else {
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0) {
            H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
            f->rc = CTARGET_E_IO;
        } else {
            f->rc = az_blob_get(f->b, name, 0, -1, fd_write, &fd, NULL, f->err);
            if (close(fd) != 0 && !f->rc) {
                H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
                f->rc = CTARGET_E_IO;
            }
            if (!f->rc && rename(tmp, path) != 0) {
                H->error_set(f->err, CTARGET_E_IO, 0, errno, "cannot rename %s", tmp);
                f->rc = CTARGET_E_IO;
            }
            if (f->rc)
                unlink(tmp);
        }
    }
    free(path);
    free(tmp);
    return f->rc ? 1 : 0;
}

static ctarget_status aci_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                        const ctarget_run_info *run, const char *dest_dir,
                                        ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = az_open(c, t, &az, err);
    if (rc)
        return rc;
    store s;
    az_blob *b = NULL;
    if (!(rc = store_get(t, &s, err)) && !(rc = store_open(az, &s, &b, err))) {
        static const char *const what[] = {"outputs", "logs"};
        for (int i = 0; i < 2 && !rc; i++) {
            char *prefix = xfmt("runs/%s/%s/", run->id, what[i]);
            char *dest = xfmt("%s/%s", dest_dir, what[i]);
            mkdir(dest, 0755);
            fetch f = {.b = b, .prefix = prefix, .dest = dest, .err = err};
            H->progress(c, "downloading outputs", 0, 0);
            rc = az_blob_list(b, prefix, fetch_cb, &f, err);
            if (!rc)
                rc = f.rc;
            free(prefix);
            free(dest);
        }
    }
    az_blob_close(b);
    store_clear(&s);
    az_ctx_free(az);
    return rc;
}

/* ---- the descriptor ------------------------------------------------------------------------ */

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = aci_validate,
    .create = aci_create,
    .status = aci_status,
    .detach = aci_detach,
    .delete_ = aci_delete,
};

static const ctarget_run_ops run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = aci_prepare,
    .submit = aci_submit,
    .poll = aci_poll,
    .read_logs = aci_read_logs,
    .cancel = aci_cancel,
    .fetch_outputs = aci_fetch_outputs,
    .reattach = aci_reattach,
    .cleanup = aci_cleanup,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "aci",
    .version = PACKAGE_VERSION,
    .description = "Azure Container Instances: a container group created for each run and "
                   "deleted after it",
    .license = "MIT",
    .capabilities = CTARGET_CAP_CREATE | CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_CANCEL,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = aci_init,
    .fini = aci_fini,
    .compute = &compute_ops,
    .run = &run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
