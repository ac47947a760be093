/* batch: Azure Batch as a pipeline-step target (attach only, steps only).  See README.md.
 *
 * attach   ARM GET Microsoft.Batch/batchAccounts/{account_name} (2025-06-01) gives the
 *          accountEndpoint; the data plane is then called with an Entra ID token for
 *          https://batch.core.windows.net/.default (libctazure's credentials: no account key
 *          ever leaves Azure), and GET /pools proves access.
 * prepare  validates the step's keys; the snapshot (step source + inputs/) is materialized in
 *          the run's work dir and each file's content goes to the storage container as
 *          ctarget-blobs/<sha256> (HEAD first: only missing ones are uploaded); the pool is
 *          checked (or created with create_pool and followed until its allocation is steady).
 * submit   POST /jobs {id, poolInfo} and POST /jobs/{id}/tasks with one resource file per
 *          snapshot file (httpUrl with a read-only container SAS, filePath, fileMode), the
 *          CTARGET_* and step variables as environmentSettings, commandLine /bin/sh -c '...'.
 * poll     GET /jobs/{j}/tasks/{t}: active/preparing/running/completed, executionInfo.
 * logs     stdout.txt by offset (ocp-range), stderr joined into it by the command line;
 *          metrics from wd/outputs/.ctarget_metrics.jsonl.
 * outputs  GET .../files?recursive=true&$filter=startswith(name,'wd/outputs') and each file.
 * cancel   POST .../terminate.  cleanup: DELETE the job (delete_job_after_finish; else POST
 *          /jobs/{j}/terminate) and a pool the step created (delete_pool_after_finish).
 * The handle holds account_url, job_id, task_id, pool_id and what cleanup must do. */
#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <ctarget/plugin.h>
#include <jansson.h>

#include "azure.h"

#define BATCH_API "2025-06-01"
#define BATCH_SCOPE "https://batch.core.windows.net/.default"
#define BATCH_DEFAULT_CONTAINER "ctarget"

static const ctarget_host *H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    K(.name = "account_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED | CTARGET_KEY_IMMUTABLE, .identity = 1,
      .help = "name of the Azure Batch account"),
    K(.name = "resource_group", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED | CTARGET_KEY_IMMUTABLE, .identity = 1,
      .help = "resource group of the Batch account"),
    AZ_KEY_("subscription_id", CTARGET_KEY_STRING, 0, NULL,
            "Azure subscription id (GUID) of the Batch account; default: config.json's"),
    AZ_KEY_("tenant_id", CTARGET_KEY_STRING, 0, NULL,
            "Entra ID tenant (GUID or domain) of the service principal; default: "
            "config.json's tenant_id, $AZURE_TENANT_ID"),
    AZ_KEY_("client_id", CTARGET_KEY_STRING, 0, NULL,
            "application (client) id of the service principal; default: $AZURE_CLIENT_ID"),
    AZ_KEY_G_("client_secret", CTARGET_KEY_STRING, CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE,
              NULL, "service principal client secret (a secret: prefer env:VAR or file:PATH)",
              AZ_KEY_GROUP_CREDENTIAL),
    AZ_KEY_G_("client_certificate_file", CTARGET_KEY_PATH, CTARGET_KEY_EXCLUSIVE, NULL,
              "PEM file with the service principal's certificate and private key",
              AZ_KEY_GROUP_CREDENTIAL),
    AZ_KEY_("client_certificate_password", CTARGET_KEY_STRING, CTARGET_KEY_SECRET, NULL,
            "password of the private key in client_certificate_file, if encrypted"),
    AZ_KEY_G_("managed_identity", CTARGET_KEY_BOOL, CTARGET_KEY_EXCLUSIVE, "false",
              "authenticate as the machine's managed identity (IMDS)", AZ_KEY_GROUP_CREDENTIAL),
    AZ_KEY_("managed_identity_client_id", CTARGET_KEY_STRING, 0, NULL,
            "client id of a user-assigned managed identity; default: the system one"),
    AZ_KEY_("arm_endpoint", CTARGET_KEY_STRING, 0, AZ_DEFAULT_ARM_ENDPOINT,
            "Azure Resource Manager endpoint (https)"),
    AZ_KEY_("aad_endpoint", CTARGET_KEY_STRING, 0, AZ_DEFAULT_AAD_ENDPOINT,
            "Entra ID (AAD) authority host (https)"),
    AZ_KEY_("imds_endpoint", CTARGET_KEY_STRING, 0, AZ_DEFAULT_IMDS_ENDPOINT,
            "instance metadata endpoint for managed identity (http only to a loopback or "
            "link-local address)"),
    K(.name = "account_url", .type = CTARGET_KEY_STRING,
      .help = "Batch data-plane URL (https://ACCOUNT.REGION.batch.azure.com); default: the "
              "account's accountEndpoint from ARM"),
    K(.name = "pool_id", .type = CTARGET_KEY_STRING,
      .help = "pool that steps run on unless the step names pool_id or create_pool"),
    K(.name = "storage_account", .type = CTARGET_KEY_STRING,
      .help = "storage account for the steps' files (resource files: the snapshot); default: "
              "the Batch account's auto-storage account (its key through ARM listKeys)"),
    K(.name = "storage_endpoint", .type = CTARGET_KEY_STRING,
      .help = "its blob endpoint; default: https://STORAGE_ACCOUNT.blob.core.windows.net"),
    K(.name = "storage_container", .type = CTARGET_KEY_STRING,
      .default_value = BATCH_DEFAULT_CONTAINER,
      .help = "container holding the content blobs (ctarget-blobs/<sha256>)"),
    K(.name = "storage_key", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "storage account key (a secret: env:VAR or file:PATH); read SAS URLs for the "
              "tasks are derived from it"),
    K(.name = "storage_sas", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "a SAS token of storage_container with read, create, write, list rights (a "
              "secret), instead of storage_key"),
};

/* ---- small helpers ------------------------------------------------------------------------ */

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

static void wipe_free(char *s)
{
    if (s) {
        volatile char *p = s;
        while (*p)
            *p++ = 0;
        free(s);
    }
}

static const char *cfg(ctarget_target *t, const char *key)
{
    const char *v = H->config_get0(t, key);
    return v && *v ? v : NULL;
}

static const char *hget(const ctarget_run_info *run, const char *key)
{
    return run->handle ? H->obj_get0_str(run->handle, key) : NULL;
}

static const char *hgets(const ctarget_run_info *run, const char *key)
{
    const char *v = hget(run, key);
    return v ? v : "?";
}

static long long hint(const ctarget_run_info *run, const char *key, long long dflt)
{
    long long v;
    return run->handle && H->obj_get_int(run->handle, key, &v) ? v : dflt;
}

static void hset(const ctarget_run_info *run, const char *key, const char *v)
{
    if (run->handle)
        H->obj_set_str(run->handle, key, v);
}

static void hseti(const ctarget_run_info *run, const char *key, long long v)
{
    if (run->handle)
        H->obj_set_int(run->handle, key, v);
}

/* ids: letters, digits, '-', '_' (Batch allows up to 64) */
static void batch_id(const char *prefix, const char *s, int attempt, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "%s", prefix);
    for (const char *p = s; *p && n + 1 < len && n < 56; p++)
        buf[n++] = isalnum((unsigned char)*p) || *p == '-' || *p == '_'
                       ? (char)tolower((unsigned char)*p) : '-';
    buf[n] = '\0';
    if (attempt > 1 && n + 6 < len)
        snprintf(buf + n, len - n, "-a%d", attempt);
}

static char *sh_quote(const char *s)
{
    size_t n = 3;
    for (const char *p = s; *p; p++)
        n += *p == '\'' ? 4 : 1;
    char *o = malloc(n), *q = o;
    *q++ = '\'';
    for (const char *p = s; *p; p++) {
        if (*p == '\'') {
            memcpy(q, "'\\''", 4);
            q += 4;
        } else {
            *q++ = *p;
        }
    }
    *q++ = '\'';
    *q = '\0';
    return o;
}

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

static int buf_add(buf *b, const void *d, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return -1;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, d, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

/* ---- the Batch account: ARM and the data plane -------------------------------------------- */

typedef struct bt {
    az_ctx *az;
    ctarget_call *c;
    ctarget_target *t;
    char *url;      /* https://ACCOUNT.REGION.batch.azure.com (no trailing '/') */
    char *account;
} bt;

static void bt_free(bt *b)
{
    az_ctx_free(b->az);
    free(b->url);
    memset(b, 0, sizeof *b);
}

static char *account_id(bt *b)
{
    char *acc = az_url_escape(cfg(b->t, "account_name"), 0);
    char *rg = az_url_escape(cfg(b->t, "resource_group"), 0);
    char *id = xfmt("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Batch/batchAccounts/%s",
                    az_subscription0(b->az), rg, acc);
    free(acc);
    free(rg);
    return id;
}

static ctarget_status arm_account(bt *b, json_t **out, ctarget_error *err)
{
    char *id = account_id(b);
    char what[300];
    snprintf(what, sizeof what, "Batch account '%s' (resource group %s)", b->account,
             cfg(b->t, "resource_group"));
    az_arm_req rq = {.method = "GET", .path = id, .api_version = BATCH_API, .what = what};
    ctarget_status rc = az_arm_do(b->az, &rq, 0, out, err);
    free(id);
    return rc;
}

static char *url_of_endpoint(const char *ep)
{
    size_t l = strlen(ep);
    while (l && ep[l - 1] == '/')
        l--;
    if (!strncmp(ep, "https://", 8))
        return xfmt("%.*s", (int)l, ep);
    return xfmt("https://%.*s", (int)l, ep);
}

static char *state_file(ctarget_target *t)
{
    const char *d = H->target_state_dir0(t);
    return d ? xfmt("%s/batch-account.json", d) : NULL;
}

/* A context for this call.  The data-plane URL: account_url, else `known` (the run's handle),
 * else what attach recorded, else ARM. */
static ctarget_status bt_open(ctarget_call *c, ctarget_target *t, const char *known, bt *b,
                              ctarget_error *err)
{
    memset(b, 0, sizeof *b);
    b->c = c;
    b->t = t;
    b->account = (char *)cfg(t, "account_name");
    ctarget_status rc = az_ctx_new(H, c, t, AZ_CTX_NO_WORKSPACE, &b->az, err);
    if (rc)
        return rc;
    if (!az_subscription0(b->az)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "batch target '%s' has no subscription: set it with --set subscription_id=GUID",
                     H->target_name(t));
        bt_free(b);
        return CTARGET_E_CONFIG;
    }
    const char *over = cfg(t, "account_url");
    if (over) {
        if (strncmp(over, "https://", 8)) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "account_url %s is not an https URL: set it to https://ACCOUNT.REGION."
                         "batch.azure.com", over);
            bt_free(b);
            return CTARGET_E_CONFIG;
        }
        b->url = url_of_endpoint(over);
        return CTARGET_OK;
    }
    if (known && *known) {
        b->url = strdup(known);
        return CTARGET_OK;
    }
    char *sf = state_file(t);
    json_t *j = sf ? json_load_file(sf, 0, NULL) : NULL;
    free(sf);
    const char *u = json_string_value(json_object_get(j, "account_url"));
    if (u) {
        b->url = strdup(u);
        json_decref(j);
        return CTARGET_OK;
    }
    json_decref(j);
    json_t *acc = NULL;
    if ((rc = arm_account(b, &acc, err))) {
        bt_free(b);
        return rc;
    }
    const char *ep =
        json_string_value(json_object_get(json_object_get(acc, "properties"), "accountEndpoint"));
    if (!ep || !*ep) {
        H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "Batch account '%s' has no accountEndpoint: set account_url", b->account);
        json_decref(acc);
        bt_free(b);
        return CTARGET_E_REMOTE;
    }
    b->url = url_of_endpoint(ep);
    json_decref(acc);
    return CTARGET_OK;
}

static ctarget_status map_status(long st)
{
    switch (st) {
    case 400: return CTARGET_E_CONFIG;
    case 401:
    case 403: return CTARGET_E_AUTH;
    case 404: return CTARGET_E_NOT_FOUND;
    case 409: return CTARGET_E_EXISTS;
    case 429: return CTARGET_E_LIMIT;
    default: return CTARGET_E_REMOTE;
    }
}

/* Batch's error body (OData: code, message.value, values[]) or an ARM-style one, as one line */
static void batch_error_text(const char *body, char *code, size_t cl, char *msg, size_t ml)
{
    code[0] = msg[0] = '\0';
    json_t *j = body ? json_loads(body, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    json_t *src = json_is_object(e) ? e : j;
    const char *c = json_string_value(json_object_get(src, "code"));
    json_t *m = json_object_get(src, "message");
    const char *mv = json_is_string(m) ? json_string_value(m)
                                       : json_string_value(json_object_get(m, "value"));
    snprintf(code, cl, "%s", c ? c : "");
    snprintf(msg, ml, "%s", mv ? mv : "");
    msg[strcspn(msg, "\r\n")] = '\0';   /* RequestId/Time lines */
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(j, "values"), i, v) {
        const char *k = json_string_value(json_object_get(v, "key"));
        const char *val = json_string_value(json_object_get(v, "value"));
        if (k && val && (!strcmp(k, "Reason") || !strcmp(k, "AuthenticationErrorDetail"))) {
            size_t n = strlen(msg);
            snprintf(msg + n, ml - n, " (%s)", val);
        }
    }
    json_decref(j);
}

typedef struct bt_resp {
    long status;
    json_t *body;
    ctarget_http_response *raw;
} bt_resp;

static void bt_resp_clear(bt_resp *r)
{
    json_decref(r->body);
    if (r->raw)
        H->http_response_free(r->raw);
    memset(r, 0, sizeof *r);
}

#define BT_OK_404 (1u << 0)
#define BT_OK_409 (1u << 1)
#define BT_RAW    (1u << 2)   /* keep the raw response (files) */
#define BT_OK_416 (1u << 3)
#define BT_ABS    (1u << 4)   /* path is a whole URL on the account (an odata.nextLink) */

/* One data-plane request: path below the account URL, query without api-version. */
static ctarget_status bt_call(bt *b, const char *method, const char *path, const char *query,
                              const json_t *body, const char *range, unsigned flags,
                              const char *what, bt_resp *out, ctarget_error *err)
{
    memset(out, 0, sizeof *out);
    char *url;
    if (flags & BT_ABS) {
        /* a next link: only ever on this account (the token goes with it) */
        size_t ul = strlen(b->url);
        if (strncmp(path, b->url, ul) || path[ul] != '/') {
            H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                         "%s in Batch account '%s': the service's next link leaves the account "
                         "URL: refused", what, b->account);
            return CTARGET_E_REMOTE;
        }
        url = strstr(path, "api-version=") ? strdup(path)
                                            : xfmt("%s%sapi-version=%s", path,
                                                   strchr(path, '?') ? "&" : "?", BATCH_API);
    } else {
        url = xfmt("%s%s?api-version=%s%s%s", b->url, path, BATCH_API, query ? "&" : "",
                   query ? query : "");
    }
    char *data = body ? json_dumps(body, JSON_COMPACT) : NULL;
    ctarget_status rc = CTARGET_OK;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *tok = NULL;
        if ((rc = az_token_get(b->az, BATCH_SCOPE, &tok, err)))
            break;
        char *auth = xfmt("Authorization: Bearer %s", tok);
        az_token_free(tok);
        char *rh = range ? xfmt("ocp-range: bytes=%s", range) : NULL;
        char date[64];
        time_t now = (time_t)(H->now_ms() / 1000);
        struct tm tmv;
        gmtime_r(&now, &tmv);
        strftime(date, sizeof date, "ocp-date: %a, %d %b %Y %H:%M:%S GMT", &tmv);
        const char *hdrs[8];
        size_t n = 0;
        hdrs[n++] = auth;
        hdrs[n++] = date;
        hdrs[n++] = "Accept: application/json";
        if (data)
            hdrs[n++] = "Content-Type: application/json; odata=minimalmetadata";
        if (rh)
            hdrs[n++] = rh;
        hdrs[n] = NULL;
        ctarget_http_request rq = {.struct_size = sizeof rq, .method = method, .url = url,
                                   .headers = hdrs, .body = data, .body_len = data ? strlen(data) : 0,
                                   /* POSTs here are safe to repeat: a repeated add answers
                                    * 409 Exists, which the callers take as done */
                                   .flags = CTARGET_HTTP_RETRY_UNSAFE};
        ctarget_http_response *resp = NULL;
        rc = H->http_request(b->c, &rq, &resp, err);
        wipe_free(auth);
        free(rh);
        if (rc) {
            if (resp)
                H->http_response_free(resp);
            break;
        }
        long st = resp->status;
        if (st == 401 && attempt == 0) {
            H->http_response_free(resp);
            az_token_invalidate(b->az, BATCH_SCOPE);
            continue;
        }
        out->status = st;
        if ((st >= 200 && st < 300) || (st == 404 && (flags & BT_OK_404)) ||
            (st == 409 && (flags & BT_OK_409)) || (st == 416 && (flags & BT_OK_416))) {
            if (flags & BT_RAW)
                out->raw = resp;
            else {
                if (resp->body_len)
                    out->body = json_loads(resp->body, 0, NULL);
                H->http_response_free(resp);
            }
            rc = CTARGET_OK;
            break;
        }
        char code[128], msg[700];
        batch_error_text(resp->body, code, sizeof code, msg, sizeof msg);
        rc = map_status(st);
        H->error_set(err, rc, st == 429 || st >= 500, 0,
                     "%s in Batch account '%s': HTTP %ld %s%s%s%s", what, b->account, st,
                     code, *msg ? ": " : "", msg,
                     st == 401 || st == 403 ? " (check the credential's access to the account: "
                                              "the Contributor role or a Batch data role)" : "");
        H->http_response_free(resp);
        break;
    }
    free(data);
    free(url);
    return rc;
}

/* A list across its pages (odata.nextLink, bounded): fn gets every element of "value" and
 * returns nonzero to stop. */
static ctarget_status bt_list(bt *b, const char *path, const char *query, unsigned flags,
                              const char *what, int (*fn)(void *arg, json_t *item), void *arg,
                              long *status, ctarget_error *err)
{
    char *next = NULL;
    ctarget_status rc = CTARGET_OK;
    if (status)
        *status = 0;
    for (int pg = 0; pg < 10000; pg++) {
        bt_resp r;
        rc = next ? bt_call(b, "GET", next, NULL, NULL, NULL, BT_ABS, what, &r, err)
                  : bt_call(b, "GET", path, query, NULL, NULL, flags, what, &r, err);
        free(next);
        next = NULL;
        if (rc) {
            bt_resp_clear(&r);
            break;
        }
        if (status && pg == 0)
            *status = r.status;
        size_t i;
        json_t *v;
        int stop = 0;
        json_array_foreach(json_object_get(r.body, "value"), i, v) {
            if ((stop = fn(arg, v)))
                break;
        }
        const char *nl = json_string_value(json_object_get(r.body, "odata.nextLink"));
        if (!stop && nl && *nl)
            next = strdup(nl);
        bt_resp_clear(&r);
        if (!next)
            break;
    }
    free(next);
    return rc;
}

static int collect(void *arg, json_t *item)
{
    json_array_append(arg, item);
    return 0;
}

/* ---- compute operations ------------------------------------------------------------------- */

static ctarget_status bt_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c, (void)v;
    const char *acc = cfg(t, "account_name");
    if (acc) {
        size_t n = strlen(acc);
        int ok = n >= 3 && n <= 24;
        for (size_t i = 0; ok && i < n; i++)
            ok = islower((unsigned char)acc[i]) || isdigit((unsigned char)acc[i]);
        if (!ok) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "account_name '%s' is not a Batch account name: 3-24 lower-case letters "
                         "and digits", acc);
            return CTARGET_E_CONFIG;
        }
    }
    if (cfg(t, "account_url") && strncmp(cfg(t, "account_url"), "https://", 8)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "account_url %s is not an https URL: set it to https://ACCOUNT.REGION."
                     "batch.azure.com (the account's accountEndpoint)", cfg(t, "account_url"));
        return CTARGET_E_CONFIG;
    }
    if (cfg(t, "storage_endpoint") && strncmp(cfg(t, "storage_endpoint"), "https://", 8)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "storage_endpoint %s is not an https URL", cfg(t, "storage_endpoint"));
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status bt_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                ctarget_error *err)
{
    (void)p;
    bt b;
    ctarget_status rc;
    memset(&b, 0, sizeof b);
    b.c = c;
    b.t = t;
    b.account = (char *)cfg(t, "account_name");
    if ((rc = az_ctx_new(H, c, t, AZ_CTX_NO_WORKSPACE, &b.az, err)))
        return rc;
    if (!az_subscription0(b.az)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "batch target '%s' has no subscription: set it with --set subscription_id=GUID",
                     H->target_name(t));
        bt_free(&b);
        return CTARGET_E_CONFIG;
    }
    H->progress(c, "reading the Batch account", 0, 0);
    json_t *acc = NULL;
    if ((rc = arm_account(&b, &acc, err))) {
        bt_free(&b);
        return rc;
    }
    json_t *pr = json_object_get(acc, "properties");
    const char *ep = json_string_value(json_object_get(pr, "accountEndpoint"));
    const char *over = cfg(t, "account_url");
    if (!over && (!ep || !*ep)) {
        H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "Batch account '%s' has no accountEndpoint: set account_url", b.account);
        json_decref(acc);
        bt_free(&b);
        return CTARGET_E_REMOTE;
    }
    b.url = url_of_endpoint(over ? over : ep);
    H->obj_set_str(facts, "subscription_id", az_subscription0(b.az));
    H->obj_set_str(facts, "account_url", b.url);
    const char *s;
    if ((s = json_string_value(json_object_get(acc, "location"))))
        H->obj_set_str(facts, "location", s);
    if ((s = json_string_value(json_object_get(pr, "poolAllocationMode"))))
        H->obj_set_str(facts, "pool_allocation_mode", s);
    if ((s = json_string_value(json_object_get(json_object_get(pr, "autoStorage"),
                                               "storageAccountId"))))
        H->obj_set_str(facts, "auto_storage_account_id", s);
    json_t *q = json_object_get(pr, "dedicatedCoreQuota");
    if (json_is_integer(q))
        H->obj_set_int(facts, "dedicated_core_quota", json_integer_value(q));
    H->obj_set_str(facts, "credential", az_credential_desc0(b.az));
    json_decref(acc);
    /* the data plane answers with this credential */
    H->progress(c, "listing the account's pools", 0, 0);
    json_t *pools = json_array();
    rc = bt_list(&b, "/pools", "maxresults=1000", 0, "listing pools", collect, pools, NULL, err);
    if (!rc) {
        H->obj_set_int(facts, "pools", (long long)json_array_size(pools));
        const char *pid = cfg(t, "pool_id");
        if (pid) {
            int found = 0;
            size_t i;
            json_t *pl;
            json_array_foreach(pools, i, pl) {
                const char *id = json_string_value(json_object_get(pl, "id"));
                found |= id && !strcasecmp(id, pid);
            }
            if (!found)
                H->log(c, CTARGET_LOG_WARN, "pool '%s' does not exist (yet) in Batch account '%s'",
                       pid, b.account);
        }
    }
    json_decref(pools);
    if (!rc) {
        char *sf = state_file(t);
        json_t *j = json_pack("{s:s, s:s}", "account_url", b.url, "subscription_id",
                              az_subscription0(b.az));
        if (sf) {
            char *tmp = xfmt("%s.tmp", sf);
            if (json_dump_file(j, tmp, JSON_COMPACT) == 0)
                rename(tmp, sf);
            free(tmp);
        }
        json_decref(j);
        free(sf);
    }
    bt_free(&b);
    return rc;
}

static ctarget_status bt_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p;
    bt b;
    ctarget_status rc = bt_open(c, t, NULL, &b, err);
    if (rc)
        return rc;
    json_t *acc = NULL;
    if ((rc = arm_account(&b, &acc, err))) {
        bt_free(&b);
        return rc;
    }
    const char *ps = json_string_value(
        json_object_get(json_object_get(acc, "properties"), "provisioningState"));
    st->provisioning_state = !ps ? CTARGET_PROV_UNKNOWN
                             : !strcasecmp(ps, "Succeeded") ? CTARGET_PROV_SUCCEEDED
                             : !strcasecmp(ps, "Failed") ? CTARGET_PROV_FAILED
                             : !strcasecmp(ps, "Creating") ? CTARGET_PROV_CREATING
                             : !strcasecmp(ps, "Deleting") ? CTARGET_PROV_DELETING
                             : !strcasecmp(ps, "Cancelled") ? CTARGET_PROV_CANCELED
                                                            : CTARGET_PROV_UNKNOWN;
    json_decref(acc);
    json_t *pools = json_array();
    rc = bt_list(&b, "/pools", "maxresults=1000", 0, "listing pools", collect, pools, NULL, err);
    if (!rc) {
        size_t i, nodes = 0;
        json_t *pl;
        json_array_foreach(pools, i, pl) {
            ctarget_obj *o = H->obj_append0(details, "pools");
            const char *s;
            if ((s = json_string_value(json_object_get(pl, "id"))))
                H->obj_set_str(o, "id", s);
            if ((s = json_string_value(json_object_get(pl, "vmSize"))))
                H->obj_set_str(o, "vm_size", s);
            if ((s = json_string_value(json_object_get(pl, "state"))))
                H->obj_set_str(o, "state", s);
            if ((s = json_string_value(json_object_get(pl, "allocationState"))))
                H->obj_set_str(o, "allocation_state", s);
            long long dn = json_integer_value(json_object_get(pl, "currentDedicatedNodes"));
            long long ln = json_integer_value(json_object_get(pl, "currentLowPriorityNodes"));
            H->obj_set_int(o, "dedicated_nodes", dn);
            H->obj_set_int(o, "low_priority_nodes", ln);
            nodes += (size_t)(dn + ln);
        }
        H->obj_set_int(details, "nodes", (long long)nodes);
        snprintf(st->state, sizeof st->state, "%s", json_array_size(pools) ? "Active" : "NoPools");
    }
    json_decref(pools);
    bt_free(&b);
    return rc;
}

static ctarget_status bt_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    char *sf = state_file(t);
    if (sf)
        unlink(sf);
    free(sf);
    return CTARGET_OK;
}

/* ---- step settings ------------------------------------------------------------------------ */

typedef struct step {
    json_t *j;                 /* the parsed step_json (owned) */
    const char *pool_id;       /* step's or the target's */
    json_t *create_pool;       /* borrowed from j */
    int delete_job, delete_pool;
    const char *kind;          /* auto|python|binary */
} step;

static int has_step_fields(const ctarget_run_info *run)
{
    return run->struct_size >= offsetof(ctarget_run_info, step_json) + sizeof(const char *);
}

static ctarget_status bad_key(ctarget_error *err, const char *key, const char *fix)
{
    H->error_set(err, CTARGET_E_CONFIG, 0, 0, "batch step key '%s' %s", key, fix);
    return CTARGET_E_CONFIG;
}

static ctarget_status step_parse(ctarget_target *t, const ctarget_run_info *run, step *s,
                                 ctarget_error *err)
{
    memset(s, 0, sizeof *s);
    s->delete_job = 1;
    s->kind = "auto";
    const char *text = has_step_fields(run) ? run->step_json : NULL;
    json_error_t je;
    s->j = text && *text ? json_loads(text, 0, &je) : json_object();
    if (!json_is_object(s->j)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "the batch step's settings are not a JSON object: fix the step's keys");
        json_decref(s->j);
        s->j = NULL;
        return CTARGET_E_CONFIG;
    }
    const char *k;
    json_t *v;
    json_object_foreach(s->j, k, v) {
        if (!strcmp(k, "pool_id")) {
            if (!json_is_string(v) || !*json_string_value(v))
                return bad_key(err, k, "must be a pool id (a string)");
            s->pool_id = json_string_value(v);
        } else if (!strcmp(k, "create_pool")) {
            if (!json_is_object(v))
                return bad_key(err, k, "must be an object {vm_size, image {publisher, offer, "
                                       "sku, version}, node_agent_sku_id, "
                                       "target_dedicated_nodes}");
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv) {
                char name[160];
                snprintf(name, sizeof name, "create_pool.%s", pk);
                if (!strcmp(pk, "vm_size") || !strcmp(pk, "node_agent_sku_id")) {
                    if (!json_is_string(pv))
                        return bad_key(err, name, "must be a string");
                } else if (!strcmp(pk, "target_dedicated_nodes")) {
                    if (!json_is_integer(pv) || json_integer_value(pv) < 1 ||
                        json_integer_value(pv) > 1000)
                        return bad_key(err, name, "must be an integer from 1 to 1000");
                } else if (!strcmp(pk, "image")) {
                    if (!json_is_object(pv))
                        return bad_key(err, name, "must be an object {publisher, offer, sku, "
                                                  "version}");
                    const char *ik;
                    json_t *iv;
                    json_object_foreach(pv, ik, iv) {
                        char in[200];
                        snprintf(in, sizeof in, "create_pool.image.%s", ik);
                        if (strcmp(ik, "publisher") && strcmp(ik, "offer") && strcmp(ik, "sku") &&
                            strcmp(ik, "version"))
                            return bad_key(err, in, "is unknown: use publisher, offer, sku, "
                                                    "version");
                        if (!json_is_string(iv))
                            return bad_key(err, in, "must be a string");
                    }
                    if (!json_object_get(pv, "publisher") || !json_object_get(pv, "offer") ||
                        !json_object_get(pv, "sku"))
                        return bad_key(err, name, "needs publisher, offer and sku");
                } else {
                    return bad_key(err, name, "is unknown: use vm_size, image, "
                                              "node_agent_sku_id, target_dedicated_nodes");
                }
            }
            if (!json_object_get(v, "vm_size") || !json_object_get(v, "image") ||
                !json_object_get(v, "node_agent_sku_id"))
                return bad_key(err, k, "needs vm_size, image and node_agent_sku_id");
            s->create_pool = v;
        } else if (!strcmp(k, "delete_job_after_finish") ||
                   !strcmp(k, "delete_pool_after_finish")) {
            if (!json_is_boolean(v))
                return bad_key(err, k, "must be true or false");
            if (k[7] == 'j')
                s->delete_job = json_is_true(v);
            else
                s->delete_pool = json_is_true(v);
        } else if (!strcmp(k, "executable_kind")) {
            const char *e = json_string_value(v);
            if (!e || (strcmp(e, "auto") && strcmp(e, "python") && strcmp(e, "binary")))
                return bad_key(err, k, "must be auto, python or binary");
            s->kind = e;
        } else {
            return bad_key(err, k, "is unknown: use pool_id, create_pool, "
                                   "delete_job_after_finish, delete_pool_after_finish, "
                                   "executable_kind");
        }
    }
    if (s->pool_id && s->create_pool)
        return bad_key(err, "pool_id", "and create_pool exclude each other: use one");
    if (s->delete_pool && !s->create_pool)
        return bad_key(err, "delete_pool_after_finish", "only applies to a pool the step "
                                                        "creates (create_pool)");
    if (!s->pool_id && !s->create_pool)
        s->pool_id = cfg(t, "pool_id");
    if (!s->pool_id && !s->create_pool) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "the batch step names no pool: give the step pool_id or create_pool, or set "
                     "the target's pool_id (ctarget compute update %s --set pool_id=POOL)",
                     H->target_name(t));
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

/* ---- storage ------------------------------------------------------------------------------ */

static int b64dec(const char *in, unsigned char **out, size_t *len)
{
    size_t n = strlen(in);
    *out = malloc(n + 4);
    int l = EVP_DecodeBlock(*out, (const unsigned char *)in, (int)n);
    if (l < 0) {
        free(*out);
        *out = NULL;
        return -1;
    }
    while (n && in[n - 1] == '=') {
        n--;
        l--;
    }
    *len = (size_t)l;
    return 0;
}

/* a read-only service SAS of the container, valid 7 days (sv 2021-08-06, sr=c) */
static char *container_sas(const char *account, const char *container, const char *key)
{
    unsigned char *k = NULL;
    size_t kl = 0;
    if (b64dec(key, &k, &kl))
        return NULL;
    time_t now = (time_t)(H->now_ms() / 1000);
    time_t exp = now + 7 * 86400;
    struct tm a, b;
    gmtime_r(&now, &a);
    gmtime_r(&exp, &b);
    char st[32], se[32];
    a.tm_min = a.tm_min >= 15 ? a.tm_min - 15 : 0; /* clock skew */
    strftime(st, sizeof st, "%Y-%m-%dT%H:%M:%SZ", &a);
    strftime(se, sizeof se, "%Y-%m-%dT%H:%M:%SZ", &b);
    char *sts = xfmt("r\n%s\n%s\n/blob/%s/%s\n\n\nhttps\n2021-08-06\nc\n\n\n\n\n\n\n", st, se,
                     account, container);
    unsigned char mac[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), k, (int)kl, (const unsigned char *)sts, strlen(sts), mac, &ml);
    memset(k, 0, kl);
    free(k);
    free(sts);
    char sig[64];
    EVP_EncodeBlock((unsigned char *)sig, mac, (int)ml);
    char *esig = az_url_escape(sig, 0);
    char *q = xfmt("sv=2021-08-06&spr=https&st=%s&se=%s&sr=c&sp=r&sig=%s", st, se, esig);
    memset(sig, 0, sizeof sig);
    wipe_free(esig);
    return q;
}

typedef struct store {
    az_blob *blob;
    char *base;   /* endpoint/container */
    char *sas;    /* read SAS query for the tasks (secret) */
} store;

static void store_close(store *s)
{
    if (s->blob)
        az_blob_close(s->blob);
    free(s->base);
    wipe_free(s->sas);
    memset(s, 0, sizeof *s);
}

#define STORAGE_API "2023-05-01"

/* The Batch account's auto-storage account: its name and a key (listKeys through ARM; the key
 * is held in memory only).  CTARGET_E_NOT_FOUND when the account has none. */
static ctarget_status auto_storage(bt *b, char **account, char **key, ctarget_error *err)
{
    *account = *key = NULL;
    json_t *acc = NULL;
    ctarget_status rc = arm_account(b, &acc, err);
    if (rc)
        return rc;
    const char *sid = json_string_value(json_object_get(
        json_object_get(json_object_get(acc, "properties"), "autoStorage"), "storageAccountId"));
    az_rid rid;
    memset(&rid, 0, sizeof rid);
    if (!sid || az_rid_parse(sid, &rid)) {
        json_decref(acc);
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "batch target '%s' has no storage for the step's files and Batch account "
                     "'%s' has no auto-storage account: set storage_account and storage_key or "
                     "storage_sas (ctarget compute update %s --set ...)",
                     H->target_name(b->t), b->account, H->target_name(b->t));
        return CTARGET_E_NOT_FOUND;
    }
    char *path = xfmt("%s/listKeys", sid);
    char what[300];
    snprintf(what, sizeof what, "storage account '%s' (the Batch account's auto-storage)",
             rid.name);
    az_arm_req rq = {.method = "POST", .path = path, .api_version = STORAGE_API, .what = what};
    az_arm_resp rs;
    memset(&rs, 0, sizeof rs);
    rc = az_arm_call(b->az, &rq, AZ_RETRY_SAFE, &rs, err);
    free(path);
    json_t *k0 = json_array_get(json_object_get(rs.body, "keys"), 0);
    const char *kv = json_string_value(json_object_get(k0, "value"));
    if (!rc && !kv) {
        H->error_set(err, CTARGET_E_AUTH, 0, 0, "%s answered listKeys without a key: set "
                     "storage_key or storage_sas", what);
        rc = CTARGET_E_AUTH;
    }
    if (!rc) {
        *account = strdup(rid.name);
        *key = strdup(kv);
        /* the parsed body's copy of the key: overwritten before it is freed */
        size_t kl = strlen(kv);
        char *x = malloc(kl + 1);
        memset(x, 'x', kl);
        x[kl] = '\0';
        json_string_set(json_object_get(k0, "value"), x);
        free(x);
    }
    az_arm_resp_clear(&rs);
    az_rid_clear(&rid);
    json_decref(acc);
    return rc;
}

static ctarget_status store_open(bt *b, store *s, ctarget_error *err)
{
    memset(s, 0, sizeof *s);
    ctarget_target *t = b->t;
    const char *acc = cfg(t, "storage_account"), *ep = cfg(t, "storage_endpoint");
    const char *cont = cfg(t, "storage_container");
    if (!cont)
        cont = BATCH_DEFAULT_CONTAINER;
    char *key = NULL, *sas = NULL, *auto_acc = NULL;
    ctarget_status rc;
    if (!acc) {
        ctarget_error e0;
        memset(&e0, 0, sizeof e0);
        e0.struct_size = sizeof e0;
        char *probe = NULL;
        int have = H->secret_get1(t, "storage_key", &probe, &e0) != CTARGET_E_NOT_FOUND ||
                   H->secret_get1(t, "storage_sas", &probe, &e0) != CTARGET_E_NOT_FOUND;
        if (probe)
            H->secret_free(probe);
        if (have) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "batch target '%s' has storage_key or storage_sas but no "
                         "storage_account: set storage_account", H->target_name(t));
            return CTARGET_E_CONFIG;
        }
        /* no storage of its own: the Batch account's auto-storage */
        if ((rc = auto_storage(b, &auto_acc, &key, err)))
            return rc;
        acc = auto_acc;
    }
    char *endpoint = ep ? url_of_endpoint(ep) : xfmt("https://%s.blob.core.windows.net", acc);
    s->base = xfmt("%s/%s", endpoint, cont);
    ctarget_error e2;
    memset(&e2, 0, sizeof e2);
    e2.struct_size = sizeof e2;
    rc = key ? CTARGET_OK : H->secret_get1(t, "storage_key", &key, &e2);
    if (rc == CTARGET_E_NOT_FOUND) {
        rc = H->secret_get1(t, "storage_sas", &sas, &e2);
        if (rc == CTARGET_E_NOT_FOUND) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "batch target '%s' has no storage credential: set storage_key or "
                         "storage_sas (a secret: env:VAR or file:PATH)", H->target_name(t));
            free(endpoint);
            free(auto_acc);
            return CTARGET_E_CONFIG;
        }
    }
    if (rc) {
        H->error_set(err, rc, 0, 0, "%s", e2.message);
        free(endpoint);
        free(auto_acc);
        return rc;
    }
    if (key) {
        rc = az_blob_open_key(b->az, endpoint, acc, key, cont, &s->blob, err);
        if (!rc) {
            s->sas = container_sas(acc, cont, key);
            if (!s->sas) {
                H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "storage_key of batch target '%s' is not base64: set the account "
                             "key as the portal shows it", H->target_name(t));
                rc = CTARGET_E_CONFIG;
            }
        }
        if (!rc)
            rc = az_blob_create_container(s->blob, err);
        if (auto_acc)
            wipe_free(key);
        else
            H->secret_free(key);
    } else {
        const char *q = sas[0] == '?' ? sas + 1 : sas;
        char *url = xfmt("%s?%s", s->base, q);
        rc = az_blob_open_sas(b->az, url, &s->blob, err);
        s->sas = strdup(q);
        wipe_free(url);
        H->secret_free(sas);
    }
    free(endpoint);
    free(auto_acc);
    if (rc)
        store_close(s);
    return rc;
}

/* ---- the snapshot: files, content hashes, upload ------------------------------------------ */

static int rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st))
        return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d)
            return -1;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char *p = xfmt("%s/%s", path, e->d_name);
            rm_tree(p);
            free(p);
        }
        closedir(d);
        return rmdir(path);
    }
    return unlink(path);
}

static int sha256_file(const char *path, char hex[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    unsigned char b[65536];
    ssize_t n;
    while ((n = read(fd, b, sizeof b)) > 0)
        EVP_DigestUpdate(m, b, (size_t)n);
    close(fd);
    unsigned char md[32];
    unsigned int ml = 0;
    EVP_DigestFinal_ex(m, md, &ml);
    EVP_MD_CTX_free(m);
    if (n < 0)
        return -1;
    for (unsigned i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}

typedef struct walk {
    json_t *files;        /* [{path, sha256, mode, size}] */
    int bad;
} walk;

static void walk_dir(walk *w, const char *root, const char *rel)
{
    char *dir = *rel ? xfmt("%s/%s", root, rel) : strdup(root);
    DIR *d = opendir(dir);
    if (!d) {
        w->bad = 1;
        free(dir);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *r = *rel ? xfmt("%s/%s", rel, e->d_name) : strdup(e->d_name);
        char *p = xfmt("%s/%s", root, r);
        struct stat st;
        if (lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                walk_dir(w, root, r);
            } else if (S_ISREG(st.st_mode)) {
                char hex[65];
                if (sha256_file(p, hex))
                    w->bad = 1;
                else
                    json_array_append_new(w->files,
                                          json_pack("{s:s, s:s, s:i, s:I}", "path", r, "sha256",
                                                    hex, "mode", (int)(st.st_mode & 0777), "size",
                                                    (json_int_t)st.st_size));
            }
            /* symbolic links are not resource files: Batch downloads regular files only */
        }
        free(p);
        free(r);
    }
    closedir(d);
    free(dir);
}

static char *files_path(const ctarget_run_info *run)
{
    return xfmt("%s/batch-files.json", run->work_dir);
}

static ctarget_status upload_snapshot(bt *b, store *s, const ctarget_run_info *run,
                                      ctarget_error *err)
{
    char *snap = xfmt("%s/batch-snapshot", run->work_dir);
    rm_tree(snap);
    H->progress(b->c, "materializing the snapshot", 0, 0);
    ctarget_status rc = H->snapshot_materialize(b->c, run->snapshot_id, snap, err);
    if (rc) {
        free(snap);
        return rc;
    }
    walk w = {.files = json_array()};
    walk_dir(&w, snap, "");
    if (w.bad) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot read the materialized snapshot in %s",
                     snap);
        rc = CTARGET_E_IO;
    }
    uint64_t total = 0, done = 0, sent = 0, nsent = 0;
    size_t i;
    json_t *f;
    json_array_foreach(w.files, i, f) total += (uint64_t)json_integer_value(json_object_get(f, "size"));
    json_t *seen = json_object(); /* one HEAD (and upload) per distinct content */
    json_array_foreach(w.files, i, f) {
        if (rc)
            break;
        const char *sha = json_string_value(json_object_get(f, "sha256"));
        uint64_t sz = (uint64_t)json_integer_value(json_object_get(f, "size"));
        if (json_object_get(seen, sha)) {
            done += sz;
            continue;
        }
        json_object_set_new(seen, sha, json_true());
        char *bn = xfmt("ctarget-blobs/%s", sha);
        uint64_t have = 0;
        ctarget_error e2;
        memset(&e2, 0, sizeof e2);
        e2.struct_size = sizeof e2;
        ctarget_status hs = az_blob_size(s->blob, bn, &have, &e2);
        if (hs == CTARGET_E_NOT_FOUND || (hs == CTARGET_OK && have != sz)) {
            char *lp = xfmt("%s/%s", snap, json_string_value(json_object_get(f, "path")));
            rc = az_blob_put_file(s->blob, bn, lp, "application/octet-stream", err);
            free(lp);
            sent += sz;
            nsent++;
        } else if (hs) {
            H->error_set(err, hs, e2.transient, 0, "%s", e2.message);
            rc = hs;
        }
        free(bn);
        done += sz;
        H->progress(b->c, "uploading the snapshot", done, total);
    }
    json_decref(seen);
    if (!rc) {
        char *fp = files_path(run);
        char *tmp = xfmt("%s.tmp", fp);
        if (json_dump_file(w.files, tmp, JSON_COMPACT) || rename(tmp, fp)) {
            H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", fp);
            rc = CTARGET_E_IO;
        }
        free(tmp);
        free(fp);
    }
    if (rc == CTARGET_E_AUTH) {
        char was[CTARGET_ERROR_MSG_MAX];
        snprintf(was, sizeof was, "%s", err->message);
        char *cut = strstr(was, ": the SAS may have expired");
        if (cut)
            *cut = '\0';
        H->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "%s: the storage of batch target '%s' refused the step's files: check "
                     "storage_key, or that storage_sas grants racwl on container %s and has not "
                     "expired", was, H->target_name(b->t), az_blob_container0(s->blob));
    }
    hseti(run, "snapshot_files", (long long)json_array_size(w.files));
    hseti(run, "uploaded_blobs", (long long)nsent);
    hseti(run, "uploaded_bytes", (long long)sent);
    if (!rc)
        H->log(b->c, CTARGET_LOG_INFO, "uploaded %llu of %zu files (%llu bytes)",
               (unsigned long long)nsent, json_array_size(w.files), (unsigned long long)sent);
    json_decref(w.files);
    rm_tree(snap);
    free(snap);
    return rc;
}

/* ---- pools -------------------------------------------------------------------------------- */

static ctarget_status pool_path(const char *id, char **out)
{
    char *e = az_url_escape(id, 0);
    *out = xfmt("/pools/%s", e);
    free(e);
    return CTARGET_OK;
}

/* Waits until the pool's allocation is steady with nodes (bounded by 30 min and the call's
 * cancellation); its resize errors fail it. */
static ctarget_status pool_wait(bt *b, const char *id, ctarget_error *err)
{
    char *path;
    pool_path(id, &path);
    char what[200];
    snprintf(what, sizeof what, "pool '%s'", id);
    ctarget_status rc = CTARGET_OK;
    int64_t end = H->monotonic_ns() + (int64_t)1800 * 1000000000;
    long delay = 100;
    for (;;) {
        bt_resp r;
        if ((rc = bt_call(b, "GET", path, NULL, NULL, NULL, 0, what, &r, err)))
            break;
        const char *state = json_string_value(json_object_get(r.body, "state"));
        const char *alloc = json_string_value(json_object_get(r.body, "allocationState"));
        json_t *re = json_array_get(json_object_get(r.body, "resizeErrors"), 0);
        long long nodes = json_integer_value(json_object_get(r.body, "currentDedicatedNodes")) +
                          json_integer_value(json_object_get(r.body, "currentLowPriorityNodes"));
        if (state && strcmp(state, "active")) {
            H->error_set(err, CTARGET_E_STATE, 0, 0,
                         "pool '%s' of Batch account '%s' is %s: use another pool", id,
                         b->account, state);
            rc = CTARGET_E_STATE;
        } else if (alloc && !strcmp(alloc, "steady") && re) {
            H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                         "pool '%s' of Batch account '%s' could not get its nodes: %s: %s", id,
                         b->account, json_string_value(json_object_get(re, "code")),
                         json_string_value(json_object_get(re, "message")));
            rc = CTARGET_E_REMOTE;
        } else if (alloc && !strcmp(alloc, "steady") && nodes > 0) {
            rc = CTARGET_OK;
            bt_resp_clear(&r);
            break;
        }
        bt_resp_clear(&r);
        if (rc)
            break;
        if (H->monotonic_ns() > end) {
            H->error_set(err, CTARGET_E_TIMEOUT, 1, 0,
                         "pool '%s' of Batch account '%s' got no nodes in 30 minutes", id,
                         b->account);
            rc = CTARGET_E_TIMEOUT;
            break;
        }
        H->progress(b->c, "waiting for the pool's nodes", 0, 0);
        if ((rc = H->sleep_ms(b->c, delay))) {
            H->error_set(err, rc, 0, 0, "cancelled while waiting for pool '%s'", id);
            break;
        }
        if (delay < 2000)
            delay *= 2;
    }
    free(path);
    return rc;
}

static ctarget_status pool_create(bt *b, const char *id, json_t *cp, ctarget_error *err)
{
    json_t *img = json_object_get(cp, "image");
    json_t *ir = json_pack("{s:s, s:s, s:s}", "publisher",
                           json_string_value(json_object_get(img, "publisher")), "offer",
                           json_string_value(json_object_get(img, "offer")), "sku",
                           json_string_value(json_object_get(img, "sku")));
    const char *ver = json_string_value(json_object_get(img, "version"));
    json_object_set_new(ir, "version", json_string(ver ? ver : "latest"));
    json_t *n = json_object_get(cp, "target_dedicated_nodes");
    json_t *body = json_pack(
        "{s:s, s:s, s:{s:o, s:s}, s:I, s:s}", "id", id, "vmSize",
        json_string_value(json_object_get(cp, "vm_size")), "virtualMachineConfiguration",
        "imageReference", ir, "nodeAgentSKUId",
        json_string_value(json_object_get(cp, "node_agent_sku_id")), "targetDedicatedNodes",
        (json_int_t)(n ? json_integer_value(n) : 1), "resizeTimeout", "PT15M");
    char what[200];
    snprintf(what, sizeof what, "creating pool '%s'", id);
    bt_resp r;
    ctarget_status rc = bt_call(b, "POST", "/pools", NULL, body, NULL, BT_OK_409, what, &r, err);
    bt_resp_clear(&r);
    json_decref(body);
    return rc;
}

/* ---- run operations ----------------------------------------------------------------------- */

static ctarget_status bt_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    step s;
    ctarget_status rc = step_parse(t, run, &s, err);
    if (rc) {
        json_decref(s.j);
        return rc;
    }
    if (run->env_kind != CTARGET_ENV_USER || run->docker_image) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "batch steps run with the pool nodes' own python3 and packages: a %s "
                     "environment cannot be built there; install what the step needs on the "
                     "pool (a custom image or a start task) and drop the environment from the "
                     "step", run->docker_image ? "docker" : run->env_kind == CTARGET_ENV_PIP
                                                                ? "pip" : "conda");
        json_decref(s.j);
        return CTARGET_E_UNSUPPORTED;
    }
    bt b;
    if ((rc = bt_open(c, t, NULL, &b, err))) {
        json_decref(s.j);
        return rc;
    }
    char job[80], pool[80];
    batch_id("ctarget-", run->id, 1, job, sizeof job);
    if (s.create_pool)
        batch_id("ctarget-pool-", run->id, 1, pool, sizeof pool);
    else
        snprintf(pool, sizeof pool, "%s", s.pool_id);
    hset(run, "account_url", b.url);
    hset(run, "job_id", job);
    hset(run, "pool_id", pool);
    hseti(run, "created_pool", s.create_pool != NULL);
    hseti(run, "delete_job", s.delete_job);
    hseti(run, "delete_pool", s.delete_pool);
    hset(run, "executable_kind", s.kind);
    store st;
    if (!(rc = store_open(&b, &st, err))) {
        rc = upload_snapshot(&b, &st, run, err);
        store_close(&st);
    }
    if (!rc && s.create_pool) {
        H->progress(c, "creating the pool", 0, 0);
        rc = pool_create(&b, pool, s.create_pool, err);
    }
    if (!rc) {
        char *pp;
        pool_path(pool, &pp);
        bt_resp r;
        char what[200];
        snprintf(what, sizeof what, "pool '%s'", pool);
        rc = bt_call(&b, "GET", pp, NULL, NULL, NULL, BT_OK_404, what, &r, err);
        if (!rc && r.status == 404) {
            H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                         "pool '%s' does not exist in Batch account '%s': create it, name another "
                         "(pool_id) or let the step create one (create_pool)", pool, b.account);
            rc = CTARGET_E_NOT_FOUND;
        }
        bt_resp_clear(&r);
        free(pp);
    }
    if (!rc && s.create_pool) {
        rc = pool_wait(&b, pool, err);
        if (rc && rc != CTARGET_E_CANCELED && s.delete_pool) {
            /* a pool that got no nodes is of no use to anyone: do not leave it behind */
            char *pp;
            pool_path(pool, &pp);
            ctarget_error e2;
            memset(&e2, 0, sizeof e2);
            e2.struct_size = sizeof e2;
            bt_resp r;
            bt_call(&b, "DELETE", pp, NULL, NULL, NULL, BT_OK_404, "deleting the pool", &r, &e2);
            bt_resp_clear(&r);
            free(pp);
        }
    }
    bt_free(&b);
    json_decref(s.j);
    return rc;
}

static int attempt_of(const ctarget_run_info *run)
{
    return run->attempt > 1 ? run->attempt : 1;
}

/* the script's command, run by /bin/sh in the task's working directory (the snapshot root) */
static char *task_command(const ctarget_run_info *run, const char *kind)
{
    buf cmd = {0};
    const char *pre = "mkdir -p outputs logs && export CTARGET_OUTPUTS_DIR=\"$PWD/outputs\" "
                      "CTARGET_METRICS_FILE=\"$PWD/outputs/.ctarget_metrics.jsonl\" && exec ";
    buf_add(&cmd, pre, strlen(pre));
    size_t sl = strlen(run->script);
    int py = !strcmp(kind, "python") ||
             (!strcmp(kind, "auto") && sl > 3 && !strcmp(run->script + sl - 3, ".py"));
    char *q;
    if (py) {
        const char *interp = run->python && *run->python ? run->python : "python3";
        q = sh_quote(interp);
        buf_add(&cmd, q, strlen(q));
        free(q);
        buf_add(&cmd, " -u ", 4);
        q = sh_quote(run->script);
    } else {
        char *rel = run->script[0] == '/' ? strdup(run->script) : xfmt("./%s", run->script);
        q = sh_quote(rel);
        free(rel);
    }
    buf_add(&cmd, q, strlen(q));
    free(q);
    for (size_t i = 0; i < run->n_args; i++) {
        q = sh_quote(run->args[i]);
        buf_add(&cmd, " ", 1);
        buf_add(&cmd, q, strlen(q));
        free(q);
    }
    buf_add(&cmd, " 2>&1", 5);
    /* the task's commandLine is not run by a shell: /bin/sh -c with the whole as one word */
    q = sh_quote(cmd.data);
    char *line = xfmt("/bin/sh -c %s", q);
    free(q);
    free(cmd.data);
    return line;
}

static json_t *env_setting(const char *name, const char *value)
{
    return json_pack("{s:s, s:s}", "name", name, "value", value);
}

static ctarget_status bt_submit(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const char *job = hget(run, "job_id"), *pool = hget(run, "pool_id");
    if (!job || !pool) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s was not prepared for Batch", run->id);
        return CTARGET_E_STATE;
    }
    bt b;
    ctarget_status rc = bt_open(c, t, hget(run, "account_url"), &b, err);
    if (rc)
        return rc;
    char task[80];
    batch_id("", "main", attempt_of(run), task, sizeof task);
    hset(run, "task_id", task);
    if (attempt_of(run) > 1 && hint(run, "base_attempt", 1) != attempt_of(run)) {
        hseti(run, "base_attempt", attempt_of(run));
        hseti(run, "log_base", hint(run, "log_seen", hint(run, "log_base", 0)));
        hseti(run, "metrics_base", hint(run, "metrics_seen", hint(run, "metrics_base", 0)));
    }
    /* the job (an earlier attempt or monitor may have made it: 409 is ours) */
    json_t *jb = json_pack("{s:s, s:{s:s}, s:s}", "id", job, "poolInfo", "poolId", pool,
                           "displayName", run->id);
    bt_resp r;
    char what[200];
    snprintf(what, sizeof what, "adding job '%s'", job);
    rc = bt_call(&b, "POST", "/jobs", NULL, jb, NULL, BT_OK_409, what, &r, err);
    bt_resp_clear(&r);
    json_decref(jb);
    store st;
    memset(&st, 0, sizeof st);
    json_t *files = NULL;
    if (!rc)
        rc = store_open(&b, &st, err);
    if (!rc) {
        char *fp = files_path(run);
        files = json_load_file(fp, 0, NULL);
        if (!json_is_array(files)) {
            H->error_set(err, CTARGET_E_STATE, 0, 0,
                         "run %s: the prepared file list %s is missing: prepare the run again",
                         run->id, fp);
            rc = CTARGET_E_STATE;
        }
        free(fp);
    }
    json_t *body = NULL;
    if (!rc) {
        json_t *rf = json_array();
        size_t i;
        json_t *f;
        json_array_foreach(files, i, f) {
            char *url = xfmt("%s/ctarget-blobs/%s?%s", st.base,
                             json_string_value(json_object_get(f, "sha256")), st.sas);
            char mode[8];
            snprintf(mode, sizeof mode, "0%o",
                     (unsigned)json_integer_value(json_object_get(f, "mode")) & 0777);
            json_array_append_new(rf, json_pack("{s:s, s:s, s:s}", "httpUrl", url, "filePath",
                                                json_string_value(json_object_get(f, "path")),
                                                "fileMode", mode));
            wipe_free(url);
        }
        json_t *env = json_array();
        json_array_append_new(env, env_setting("CTARGET_RUN_ID", run->id));
        if (has_step_fields(run) && run->step_name)
            json_array_append_new(env, env_setting("CTARGET_STEP_NAME", run->step_name));
        for (size_t k = 0; k < run->n_env; k++) {
            const char *eq = strchr(run->env[k], '=');
            if (!eq || eq == run->env[k])
                continue;
            char *n = strndup(run->env[k], (size_t)(eq - run->env[k]));
            json_array_append_new(env, env_setting(n, eq + 1));
            free(n);
        }
        const char *kind = hget(run, "executable_kind");
        char *cmd = task_command(run, kind ? kind : "auto");
        body = json_pack("{s:s, s:s, s:s, s:o, s:o}", "id", task, "displayName", run->id,
                         "commandLine", cmd, "resourceFiles", rf, "environmentSettings", env);
        free(cmd);
        if (run->timeout_seconds > 0) {
            char d[64];
            snprintf(d, sizeof d, "PT%lldS", run->timeout_seconds);
            json_object_set_new(body, "constraints", json_pack("{s:s, s:i}", "maxWallClockTime",
                                                               d, "maxTaskRetryCount", 0));
        }
        char *jp = az_url_escape(job, 0);
        char *path = xfmt("/jobs/%s/tasks", jp);
        snprintf(what, sizeof what, "adding task '%s' to job '%s'", task, job);
        /* Batch refuses request bodies over 1 MB (RequestBodyTooLarge) */
        char *probe = json_dumps(body, JSON_COMPACT);
        size_t blen = probe ? strlen(probe) : 0;
        if (probe) {
            memset(probe, 0, blen);
            free(probe);
        }
        if (blen > 1000000) {
            H->error_set(err, CTARGET_E_LIMIT, 0, 0,
                         "the step's snapshot has %zu files: as resource files of one Batch task "
                         "that is a %zu-byte request and Batch takes at most 1 MB; ship fewer, "
                         "larger files (an archive the step unpacks) or leave files out with "
                         ".amlignore", json_array_size(files), blen);
            rc = CTARGET_E_LIMIT;
        } else {
            rc = bt_call(&b, "POST", path, NULL, body, NULL, BT_OK_409, what, &r, err);
        }
        bt_resp_clear(&r);
        free(path);
        free(jp);
        /* the body holds the SAS: overwritten before it is freed */
        json_array_foreach(json_object_get(body, "resourceFiles"), i, f)
            json_object_set_new(f, "httpUrl", json_string(""));
        json_decref(body);
    }
    json_decref(files);
    store_close(&st);
    bt_free(&b);
    return rc;
}

static char *task_path(const ctarget_run_info *run, const char *tail)
{
    char *j = az_url_escape(hget(run, "job_id"), 0), *t = az_url_escape(hget(run, "task_id"), 0);
    char *p = xfmt("/jobs/%s/tasks/%s%s", j, t, tail ? tail : "");
    free(j);
    free(t);
    return p;
}

static void set_state(ctarget_run_poll *o, ctarget_run_state s, const char *native)
{
    o->state = s;
    snprintf(o->native_state, sizeof o->native_state, "%s", native ? native : "");
}

static ctarget_status bt_poll(void *p, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *run, long wait_ms, ctarget_run_poll *o,
                              ctarget_error *err)
{
    (void)p, (void)wait_ms;
    if (!hget(run, "task_id")) {
        set_state(o, CTARGET_RUN_QUEUED, "not submitted");
        return CTARGET_OK;
    }
    bt b;
    ctarget_status rc = bt_open(c, t, hget(run, "account_url"), &b, err);
    if (rc)
        return rc;
    char *path = task_path(run, NULL);
    bt_resp r;
    char what[200];
    snprintf(what, sizeof what, "task '%s' of job '%s'", hgets(run, "task_id"), hgets(run, "job_id"));
    rc = bt_call(&b, "GET", path, NULL, NULL, NULL, BT_OK_404, what, &r, err);
    free(path);
    int cancel = hint(run, "cancel_requested", 0) != 0;
    if (!rc && r.status == 404) {
        if (cancel)
            set_state(o, CTARGET_RUN_CANCELED, "deleted");
        else {
            set_state(o, CTARGET_RUN_NOT_RESPONDING, "not found");
            snprintf(o->reason, sizeof o->reason, "task '%s' of job '%s' no longer exists in "
                     "Batch account '%s'", hgets(run, "task_id"), hgets(run, "job_id"), b.account);
        }
    } else if (!rc) {
        const char *state = json_string_value(json_object_get(r.body, "state"));
        json_t *ex = json_object_get(r.body, "executionInfo");
        if (!state)
            state = "";
        if (!strcmp(state, "active"))
            set_state(o, CTARGET_RUN_QUEUED, state);
        else if (!strcmp(state, "preparing"))
            set_state(o, CTARGET_RUN_PREPARING, state);
        else if (!strcmp(state, "running"))
            set_state(o, CTARGET_RUN_RUNNING, state);
        else if (!strcmp(state, "completed")) {
            json_t *ec = json_object_get(ex, "exitCode");
            json_t *fi = json_object_get(ex, "failureInfo");
            const char *res = json_string_value(json_object_get(ex, "result"));
            const char *fcode = json_string_value(json_object_get(fi, "code"));
            const char *fmsg = json_string_value(json_object_get(fi, "message"));
            if (json_is_integer(ec)) {
                o->has_exit_code = 1;
                o->exit_code = (int)json_integer_value(ec);
            }
            if (cancel) {
                set_state(o, CTARGET_RUN_CANCELED, state);
            } else if ((!res || !strcmp(res, "success")) && !fi &&
                       (!json_is_integer(ec) || json_integer_value(ec) == 0)) {
                set_state(o, CTARGET_RUN_COMPLETED, state);
            } else {
                set_state(o, CTARGET_RUN_FAILED, state);
                if (fcode && !strcmp(fcode, "FailureExitCode") && o->has_exit_code)
                    snprintf(o->reason, sizeof o->reason, "the step's process exited with code "
                             "%d (Batch task '%s')", o->exit_code, hgets(run, "task_id"));
                else
                    snprintf(o->reason, sizeof o->reason, "Batch failed task '%s': %s: %s",
                             hgets(run, "task_id"), fcode ? fcode : "failure",
                             fmsg ? fmsg : "no message");
                if (fcode && (!strcmp(fcode, "NodePreempted") || !strcmp(fcode, "TaskPreempted")))
                    o->restartable = 1;
            }
        } else {
            set_state(o, CTARGET_RUN_QUEUED, state);
        }
    }
    bt_resp_clear(&r);
    bt_free(&b);
    return rc;
}

static ctarget_status file_read(bt *b, const ctarget_run_info *run, const char *name,
                                uint64_t offset, ctarget_write_fn out, void *arg,
                                uint64_t *got, ctarget_error *err)
{
    char *esc = az_url_escape(name, 1);
    char *tail = xfmt("/files/%s", esc);
    free(esc);
    char *path = task_path(run, tail);
    free(tail);
    char range[32];
    snprintf(range, sizeof range, "%llu-", (unsigned long long)offset);
    bt_resp r;
    char what[300];
    snprintf(what, sizeof what, "file %s of task '%s'", name, hgets(run, "task_id"));
    ctarget_status rc = bt_call(b, "GET", path, NULL, NULL, offset ? range : NULL,
                                BT_RAW | BT_OK_404 | BT_OK_416, what, &r, err);
    free(path);
    if (got)
        *got = 0;
    if (!rc && r.status < 300 && r.raw && r.raw->body_len) {
        if (out(arg, r.raw->body, r.raw->body_len)) {
            H->error_set(err, CTARGET_E_CANCELED, 0, 0, "the writer stopped");
            rc = CTARGET_E_CANCELED;
        }
        if (got)
            *got = r.raw->body_len;
    }
    bt_resp_clear(&r);
    return rc;
}

static ctarget_status bt_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_stream stream,
                                   uint64_t offset, ctarget_write_fn out, void *arg,
                                   ctarget_error *err)
{
    (void)p;
    if (!hget(run, "task_id"))
        return CTARGET_OK;
    bt b;
    ctarget_status rc = bt_open(c, t, hget(run, "account_url"), &b, err);
    if (rc)
        return rc;
    /* the stream runs on across attempts: an attempt's task starts at log_base */
    int log = stream == CTARGET_STREAM_LOG;
    uint64_t base = (uint64_t)hint(run, log ? "log_base" : "metrics_base", 0), got = 0;
    uint64_t off = offset > base ? offset - base : 0;
    rc = file_read(&b, run, log ? "stdout.txt" : "wd/outputs/.ctarget_metrics.jsonl", off, out,
                   arg, &got, err);
    if (!rc)
        hseti(run, log ? "log_seen" : "metrics_seen", (long long)(base + off + got));
    bt_free(&b);
    return rc;
}

static ctarget_status bt_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    hseti(run, "cancel_requested", 1);
    if (!hget(run, "task_id"))
        return CTARGET_OK;
    bt b;
    ctarget_status rc = bt_open(c, t, hget(run, "account_url"), &b, err);
    if (rc)
        return rc;
    char *path = task_path(run, "/terminate");
    bt_resp r;
    char what[200];
    snprintf(what, sizeof what, "terminating task '%s'", hgets(run, "task_id"));
    rc = bt_call(&b, "POST", path, NULL, NULL, NULL, BT_OK_404 | BT_OK_409, what, &r, err);
    bt_resp_clear(&r);
    free(path);
    bt_free(&b);
    return rc;
}

static int safe_rel(const char *r)
{
    if (!*r || r[0] == '/')
        return 0;
    for (const char *p = r; *p;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        p += n + (e ? 1 : 0);
    }
    return 1;
}

static int mkdirs_for(const char *path)
{
    char *d = strdup(path);
    for (char *q = d + 1; *q; q++) {
        if (*q == '/') {
            *q = '\0';
            if (mkdir(d, 0755) && errno != EEXIST) {
                free(d);
                return -1;
            }
            *q = '/';
        }
    }
    free(d);
    return 0;
}

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

static ctarget_status fetch_prefix(bt *b, const ctarget_run_info *run, const char *remote,
                                   const char *dest_dir, const char *local, ctarget_error *err)
{
    char *path = task_path(run, "/files");
    char *q = xfmt("recursive=true&maxresults=1000&"
                   "%%24filter=startswith%%28name%%2C%%27%s%%27%%29", remote);
    char what[200];
    snprintf(what, sizeof what, "listing the files of task '%s'", hgets(run, "task_id"));
    json_t *all = json_array();
    ctarget_status rc = bt_list(b, path, q, BT_OK_404, what, collect, all, NULL, err);
    free(q);
    free(path);
    size_t pl = strlen(remote);
    size_t i;
    json_t *f;
    json_array_foreach(all, i, f) {
        if (rc)
            break;
        const char *name = json_string_value(json_object_get(f, "name"));
        if (!name || json_is_true(json_object_get(f, "isDirectory")))
            continue;
        char nm[1024];
        snprintf(nm, sizeof nm, "%s", name);
        for (char *x = nm; *x; x++)
            if (*x == '\\')
                *x = '/';
        if (strncmp(nm, remote, pl) || nm[pl] != '/' || !safe_rel(nm + pl + 1))
            continue;
        char *lp = xfmt("%s/%s/%s", dest_dir, local, nm + pl + 1);
        if (mkdirs_for(lp)) {
            H->error_set(err, CTARGET_E_IO, 0, errno, "cannot create the directory of %s", lp);
            rc = CTARGET_E_IO;
            free(lp);
            break;
        }
        char *tmp = xfmt("%s.part", lp);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) {
            H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
            rc = CTARGET_E_IO;
        } else {
            rc = file_read(b, run, nm, 0, fd_write, &fd, NULL, err);
            if (close(fd) && !rc) {
                H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
                rc = CTARGET_E_IO;
            }
            if (!rc && rename(tmp, lp)) {
                H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", lp);
                rc = CTARGET_E_IO;
            }
            if (rc)
                unlink(tmp);
        }
        free(tmp);
        free(lp);
    }
    json_decref(all);
    return rc;
}

static ctarget_status bt_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                       const ctarget_run_info *run, const char *dest_dir,
                                       ctarget_error *err)
{
    (void)p;
    if (!hget(run, "task_id"))
        return CTARGET_OK;
    bt b;
    ctarget_status rc = bt_open(c, t, hget(run, "account_url"), &b, err);
    if (rc)
        return rc;
    H->progress(c, "fetching outputs", 0, 0);
    rc = fetch_prefix(&b, run, "wd/outputs", dest_dir, "outputs", err);
    if (!rc)
        rc = fetch_prefix(&b, run, "wd/logs", dest_dir, "logs", err);
    bt_free(&b);
    return rc;
}

static ctarget_status bt_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    if (!hget(run, "job_id")) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no Batch job in its handle",
                     run->id);
        return CTARGET_E_STATE;
    }
    return CTARGET_OK;
}

static ctarget_status bt_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const char *job = hget(run, "job_id");
    if (!job)
        return CTARGET_OK;
    bt b;
    ctarget_status rc = bt_open(c, t, hget(run, "account_url"), &b, err);
    if (rc)
        return rc;
    bt_resp r;
    char what[200];
    char *e = az_url_escape(job, 0);
    if (hint(run, "delete_job", 1)) {
        char *path = xfmt("/jobs/%s", e);
        snprintf(what, sizeof what, "deleting job '%s'", job);
        rc = bt_call(&b, "DELETE", path, NULL, NULL, NULL, BT_OK_404, what, &r, err);
        bt_resp_clear(&r);
        free(path);
    } else {
        /* kept for inspection, but terminated: an active job counts against the account's
         * job quota (409: it is completed already) */
        char *path = xfmt("/jobs/%s/terminate", e);
        snprintf(what, sizeof what, "terminating job '%s'", job);
        rc = bt_call(&b, "POST", path, NULL, NULL, NULL, BT_OK_404 | BT_OK_409, what, &r, err);
        bt_resp_clear(&r);
        free(path);
    }
    free(e);
    const char *pool = hget(run, "pool_id");
    if (!rc && pool && hint(run, "created_pool", 0) && hint(run, "delete_pool", 0)) {
        char *path;
        pool_path(pool, &path);
        snprintf(what, sizeof what, "deleting pool '%s'", pool);
        rc = bt_call(&b, "DELETE", path, NULL, NULL, NULL, BT_OK_404, what, &r, err);
        bt_resp_clear(&r);
        free(path);
    }
    bt_free(&b);
    return rc;
}

/* ---- descriptor --------------------------------------------------------------------------- */

static ctarget_status bt_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static void bt_fini(void *p)
{
    (void)p;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = bt_validate,
    .attach = bt_attach,
    .status = bt_status,
    .detach = bt_detach,
};

static const ctarget_run_ops run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = bt_prepare,
    .submit = bt_submit,
    .poll = bt_poll,
    .read_logs = bt_read_logs,
    .cancel = bt_cancel,
    .fetch_outputs = bt_fetch_outputs,
    .reattach = bt_reattach,
    .cleanup = bt_cleanup,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "batch",
    .version = PACKAGE_VERSION,
    .description = "Azure Batch account (attach): pipeline steps as Batch jobs and tasks on a pool",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH | CTARGET_CAP_PIPELINE_STEP | CTARGET_CAP_PIPELINE_ONLY |
                    CTARGET_CAP_CANCEL,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = bt_init,
    .fini = bt_fini,
    .compute = &compute_ops,
    .run = &run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
