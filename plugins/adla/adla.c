/* adla: Azure Data Lake Analytics accounts as pipeline-only, attach-only targets.  A step runs
 * a U-SQL script as an ADLA job (TARGETS.md: AdlaStep; "works only with data in the
 * account's default store").  README.md next to this file is the guide.
 *
 * Attach: ARM GET Microsoft.DataLakeAnalytics/accounts/NAME (2016-11-01) for the job endpoint
 * and the default Data Lake Store, then GET /Jobs?$top=1 on the job plane with a token for
 * https://datalake.azure.net to prove access.  What it resolved is saved in the target's state
 * dir (account.json), so the run monitor uses the same endpoints.
 *
 * A step: prepare() materializes the snapshot in the run's work dir and uploads every file but
 * the script (the step's inputs/ and other data files) to the default store under
 * /ctarget/runs/<run id>/ (WebHDFS CREATE, overwrite: repeatable).  submit() PUTs the job
 * /Jobs/<guid> (the guid derived from the run id and attempt, so a repeated submit finds its
 * job: 409 -> the job exists) with the script prefixed by one line of DECLAREs
 * (@CTARGET_RUN_DIR, @CTARGET_RUN_ID, @CTARGET_OUTPUTS_DIR, @CTARGET_INPUT_<NAME>,
 * @CTARGET_OUTPUT_<NAME>, then script_parameters); the script itself is not rewritten.
 * poll() GETs the job; its stateAuditRecords become log lines, and at the end its
 * errorMessage[] (line numbers given back in the user's script) and the interpreter output the
 * job's debugData names.  fetch_outputs() lists and downloads /ctarget/runs/<id>/outputs/ (and
 * logs/) into dest_dir; cleanup() deletes /ctarget/runs/<id>/ from the store.
 */
#define _GNU_SOURCE
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctarget/plugin.h>
#include <jansson.h>

#include "../azure/azure.h"

#define ADLA_API "2016-11-01"
#define ADLA_SCOPE "https://datalake.azure.net/.default"
#define ADLA_NS_TYPE "Microsoft.DataLakeAnalytics/accounts"
#define STORE_ROOT "/ctarget/runs/"
#define SCRIPT_MAX (3u * 1024u * 1024u)
#define UPLOAD_CHUNK ((size_t)4 * 1024 * 1024) /* bytes per CREATE/APPEND request */

static const ctarget_host *H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    AZ_CONFIG_KEYS,
    K(.name = "resource_id", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE | CTARGET_KEY_IMMUTABLE,
      .group = 1, .identity = 1,
      .help = "ARM id of the Data Lake Analytics account (/subscriptions/S/resourceGroups/G/"
              "providers/Microsoft.DataLakeAnalytics/accounts/NAME); or account_name"),
    K(.name = "account_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE | CTARGET_KEY_IMMUTABLE,
      .group = 1, .identity = 2,
      .help = "name of the Data Lake Analytics account (with resource_group); or resource_id"),
    K(.name = "job_endpoint", .type = CTARGET_KEY_STRING,
      .help = "job service URL (default: https:// + the account's endpoint, "
              "NAME.azuredatalakeanalytics.net)"),
    K(.name = "store_endpoint", .type = CTARGET_KEY_STRING,
      .help = "WebHDFS URL of the account's default Data Lake Store (default: "
              "https://STORE.azuredatalakestore.net)"),
    K(.name = "degree_of_parallelism", .type = CTARGET_KEY_INT, .default_value = "1", .min = 1,
      .max = 10000, .help = "AUs a job gets unless its step sets degree_of_parallelism"),
    K(.name = "priority", .type = CTARGET_KEY_INT, .default_value = "1000", .min = 1,
      .max = 1000000, .help = "job priority unless the step sets one (lower runs first)"),
};
#define N_KEYS (sizeof keys / sizeof keys[0])

static const char *cfg(ctarget_target *t, const char *key)
{
    const char *v = H->config_get0(t, key);
    return v && *v ? v : NULL;
}

static char *xasprintf(const char *fmt, ...) CTARGET_PRINTF(1, 2);
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (!s)
        abort();
    return s;
}

/* ---- the account ---------------------------------------------------------------------------- */

typedef struct ad_acct {
    char *sub, *rg, *name, *rid;  /* ARM */
    char *job_ep, *store_ep;      /* no trailing '/' */
    char *store_name;
    long long max_dop;            /* the account's maxDegreeOfParallelism, 0: unknown */
} ad_acct;

static void acct_clear(ad_acct *a)
{
    free(a->sub), free(a->rg), free(a->name), free(a->rid);
    free(a->job_ep), free(a->store_ep), free(a->store_name);
    memset(a, 0, sizeof *a);
}

static char *trim_slash(const char *s)
{
    char *d = strdup(s);
    size_t n = strlen(d);
    while (n > 0 && d[n - 1] == '/')
        d[--n] = '\0';
    return d;
}

/* ids from the settings (no network) */
static ctarget_status acct_ids(az_ctx *az, ctarget_target *t, ad_acct *a, ctarget_error *err)
{
    const char *rid = cfg(t, "resource_id"), *name = cfg(t, "account_name");
    if (rid) {
        az_rid r;
        if (az_rid_parse(rid, &r) || strcasecmp(r.type, ADLA_NS_TYPE)) {
            if (r.buf)
                az_rid_clear(&r);
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "resource_id '%s' is not a Data Lake Analytics account id: use "
                         "/subscriptions/S/resourceGroups/G/providers/%s/NAME",
                         rid, ADLA_NS_TYPE);
            return CTARGET_E_CONFIG;
        }
        a->sub = strdup(r.subscription);
        a->rg = strdup(r.resource_group);
        a->name = strdup(r.name);
        az_rid_clear(&r);
    } else if (name) {
        const char *sub = az_subscription0(az), *rg = az_resource_group0(az);
        if (!rg || !sub) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "account_name '%s' needs %s: set it with --set %s=..., or give "
                         "resource_id instead", name, rg ? "subscription_id" : "resource_group",
                         rg ? "subscription_id" : "resource_group");
            return CTARGET_E_CONFIG;
        }
        a->sub = strdup(sub);
        a->rg = strdup(rg);
        a->name = strdup(name);
    } else {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "no Data Lake Analytics account: set resource_id, or account_name with "
                     "resource_group");
        return CTARGET_E_CONFIG;
    }
    a->rid = xasprintf("/subscriptions/%s/resourceGroups/%s/providers/%s/%s", a->sub, a->rg,
                       ADLA_NS_TYPE, a->name);
    return CTARGET_OK;
}

static char *state_path(ctarget_target *t, const char *name)
{
    const char *d = H->target_state_dir0(t);
    return d ? xasprintf("%s/%s", d, name) : NULL;
}

static int write_file(const char *path, const char *data, size_t len, int mode)
{
    char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    int ok = fd >= 0;
    size_t off = 0;
    while (ok && off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            ok = 0;
        else
            off += (size_t)w;
    }
    if (fd >= 0 && close(fd) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok)
        unlink(tmp);
    free(tmp);
    return ok ? 0 : -1;
}

/* ARM GET of the account: endpoints; *found 0 on 404 */
static ctarget_status acct_get(az_ctx *az, ad_acct *a, json_t **res, ctarget_error *err)
{
    char what[300];
    snprintf(what, sizeof what, "Data Lake Analytics account '%s'", a->name);
    az_arm_req rq = {.method = "GET", .path = a->rid, .api_version = ADLA_API, .what = what};
    az_arm_resp rs = {0};
    ctarget_status rc = az_arm_call(az, &rq, AZ_OK_404, &rs, err);
    if (rc == CTARGET_OK && rs.status == 404) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "no Data Lake Analytics account '%s' in resource group '%s' of "
                     "subscription %s: check account_name/resource_id", a->name, a->rg, a->sub);
        rc = CTARGET_E_NOT_FOUND;
    }
    if (rc == CTARGET_OK) {
        *res = rs.body;
        rs.body = NULL;
    }
    az_arm_resp_clear(&rs);
    return rc;
}

static void acct_endpoints_from(ctarget_target *t, ad_acct *a, json_t *res)
{
    json_t *p = json_object_get(res, "properties");
    json_t *md = json_object_get(p, "maxDegreeOfParallelism");
    a->max_dop = json_is_integer(md) ? (long long)json_integer_value(md) : 0;
    const char *ep = json_string_value(json_object_get(p, "endpoint"));
    const char *st = json_string_value(json_object_get(p, "defaultDataLakeStoreAccount"));
    free(a->store_name);
    a->store_name = st ? strdup(st) : NULL;
    free(a->job_ep);
    free(a->store_ep);
    a->job_ep = cfg(t, "job_endpoint") ? trim_slash(cfg(t, "job_endpoint"))
                : ep ? xasprintf("https://%s", ep) : NULL;
    a->store_ep = cfg(t, "store_endpoint") ? trim_slash(cfg(t, "store_endpoint"))
                  : st ? xasprintf("https://%s.azuredatalakestore.net", st) : NULL;
}

/* the account for a run: the ids, the endpoints saved by attach (or the settings, or ARM) */
static ctarget_status acct_for_run(az_ctx *az, ctarget_target *t, ad_acct *a, ctarget_error *err)
{
    ctarget_status rc = acct_ids(az, t, a, err);
    if (rc)
        return rc;
    char *p = state_path(t, "account.json");
    json_t *j = p ? json_load_file(p, 0, NULL) : NULL;
    free(p);
    const char *je = json_string_value(json_object_get(j, "job_endpoint"));
    const char *se = json_string_value(json_object_get(j, "store_endpoint"));
    const char *sn = json_string_value(json_object_get(j, "default_store"));
    a->job_ep = cfg(t, "job_endpoint") ? trim_slash(cfg(t, "job_endpoint")) : je ? strdup(je) : NULL;
    a->store_ep = cfg(t, "store_endpoint") ? trim_slash(cfg(t, "store_endpoint"))
                  : se ? strdup(se) : NULL;
    a->store_name = sn ? strdup(sn) : NULL;
    json_t *md = json_object_get(j, "max_degree_of_parallelism");
    a->max_dop = json_is_integer(md) ? (long long)json_integer_value(md) : 0;
    json_decref(j);
    if (a->job_ep && a->store_ep)
        return CTARGET_OK;
    json_t *res = NULL;
    if ((rc = acct_get(az, a, &res, err)))
        return rc;
    acct_endpoints_from(t, a, res);
    json_decref(res);
    if (!a->job_ep || !a->store_ep) {
        H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "Data Lake Analytics account '%s' names no %s: set %s", a->name,
                     a->job_ep ? "default Data Lake Store" : "job endpoint",
                     a->job_ep ? "store_endpoint" : "job_endpoint");
        return CTARGET_E_REMOTE;
    }
    return CTARGET_OK;
}

/* ---- data-plane HTTP ------------------------------------------------------------------------ */

typedef struct dl {
    az_ctx *az;
    ad_acct a;
    char *token;
    ctarget_call *c;
} dl;

static void dl_close(dl *d)
{
    if (d->token)
        az_token_free(d->token);
    acct_clear(&d->a);
    az_ctx_free(d->az);
    memset(d, 0, sizeof *d);
}

static ctarget_status dl_open(ctarget_call *c, ctarget_target *t, dl *d, int for_run,
                              ctarget_error *err)
{
    memset(d, 0, sizeof *d);
    d->c = c;
    ctarget_status rc = az_ctx_new(H, c, t, AZ_CTX_NO_WORKSPACE, &d->az, err);
    if (rc)
        return rc;
    if (for_run && (rc = acct_for_run(d->az, t, &d->a, err))) {
        dl_close(d);
        return rc;
    }
    return CTARGET_OK;
}

/* One request on the job plane or the store with a Data Lake token; a 401 drops the token
 * and repeats once.  Returns OK with *resp for any HTTP status (the caller judges it). */
static ctarget_status dl_http(dl *d, const char *method, const char *url, const char *ctype,
                              const void *body, size_t len, unsigned flags,
                              ctarget_http_response **resp, ctarget_error *err)
{
    for (int round = 0; round < 2; round++) {
        if (!d->token) {
            ctarget_status rc = az_token_get(d->az, ADLA_SCOPE, &d->token, err);
            if (rc)
                return rc;
        }
        char *auth = xasprintf("Authorization: Bearer %s", d->token);
        char *ct = ctype ? xasprintf("Content-Type: %s", ctype) : NULL;
        const char *hdr[4] = {auth, "Accept: application/json", ct, NULL};
        ctarget_http_request rq = {.struct_size = sizeof rq, .method = method, .url = url,
                                   .headers = hdr, .body = body, .body_len = len,
                                   .flags = flags};
        ctarget_http_response *r = NULL;
        ctarget_status rc = H->http_request(d->c, &rq, &r, err);
        explicit_bzero(auth, strlen(auth));
        free(auth);
        free(ct);
        if (rc)
            return rc;
        if (r->status == 401 && round == 0) {
            H->http_response_free(r);
            az_token_free(d->token);
            d->token = NULL;
            az_token_invalidate(d->az, ADLA_SCOPE);
            continue;
        }
        *resp = r;
        return CTARGET_OK;
    }
    return CTARGET_E_INTERNAL;
}

/* "code: message" of a job-plane error body or a WebHDFS RemoteException */
static void remote_msg(const ctarget_http_response *r, char *buf, size_t len)
{
    json_t *j = r->body ? json_loads(r->body, 0, NULL) : NULL;
    json_t *e = json_object_get(j, "error");
    json_t *x = json_object_get(j, "RemoteException");
    const char *code = NULL, *msg = NULL;
    if (e) {
        code = json_string_value(json_object_get(e, "code"));
        msg = json_string_value(json_object_get(e, "message"));
    } else if (x) {
        code = json_string_value(json_object_get(x, "exception"));
        msg = json_string_value(json_object_get(x, "message"));
    }
    if (code || msg)
        snprintf(buf, len, "%s: %s", code ? code : "error", msg ? msg : "");
    else
        snprintf(buf, len, "HTTP %ld", r->status);
    json_decref(j);
}

static ctarget_status http_fail(const ctarget_http_response *r, const char *what,
                                ctarget_error *err)
{
    char m[600];
    remote_msg(r, m, sizeof m);
    long s = r->status;
    ctarget_status code = s == 401 || s == 403 ? CTARGET_E_AUTH
                          : s == 404             ? CTARGET_E_NOT_FOUND
                          : s == 409             ? CTARGET_E_EXISTS
                          : s == 429             ? CTARGET_E_LIMIT
                          : s == 400             ? CTARGET_E_CONFIG
                                                 : CTARGET_E_REMOTE;
    int transient = s == 429 || s >= 500;
    const char *fix = code == CTARGET_E_AUTH
                          ? ": give the credential the Data Lake Analytics Developer role on "
                            "the account and access to its default store"
                      : transient ? " (after retries): try again later" : "";
    H->error_set(err, code, transient, 0, "%s: %s (HTTP %ld, %d attempt%s)%s", what, m, s,
                 r->attempts, r->attempts == 1 ? "" : "s", fix);
    return code;
}

static char *job_url(dl *d, const char *path_and_query)
{
    return xasprintf("%s%s", d->a.job_ep, path_and_query);
}

/* a store URL for path (absolute, '/'-separated) and "op=...&..." */
static char *store_url(dl *d, const char *path, const char *query)
{
    char *e = az_url_escape(path, 1);
    char *u = xasprintf("%s/webhdfs/v1%s?%s", d->a.store_ep, e, query);
    free(e);
    return u;
}

/* ---- settings checks ------------------------------------------------------------------------ */

static ctarget_status check_https(ctarget_target *t, const char *key, ctarget_error *err)
{
    const char *v = cfg(t, key);
    if (v && strncasecmp(v, "https://", 8)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "%s '%s' must be an https:// URL (TLS is always verified)", key, v);
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status ad_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb verb,
                                  ctarget_error *err)
{
    (void)p, (void)c;
    if (verb == CTARGET_VERB_CREATE) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "adla targets cannot be created by ctarget: attach an existing Data Lake "
                     "Analytics account (resource_id, or account_name + resource_group)");
        return CTARGET_E_UNSUPPORTED;
    }
    ctarget_status rc = check_https(t, "job_endpoint", err);
    if (!rc)
        rc = check_https(t, "store_endpoint", err);
    if (rc)
        return rc;
    const char *rid = cfg(t, "resource_id");
    if (rid) {
        az_rid r;
        int bad = az_rid_parse(rid, &r) || strcasecmp(r.type, ADLA_NS_TYPE);
        if (!bad || r.buf)
            az_rid_clear(&r);
        if (bad) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "resource_id '%s' is not a Data Lake Analytics account id: use "
                         "/subscriptions/S/resourceGroups/G/providers/%s/NAME",
                         rid, ADLA_NS_TYPE);
            return CTARGET_E_CONFIG;
        }
    }
    const char *name = cfg(t, "account_name");
    if (name) {
        size_t n = strlen(name);
        int ok = n >= 3 && n <= 24;
        for (size_t i = 0; ok && i < n; i++)
            ok = (name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9');
        if (!ok) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "account_name '%s' is not a Data Lake Analytics account name: 3-24 "
                         "lower-case letters and digits", name);
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

/* another target of this workspace already holds the account (by either form of its id) */
static int account_taken(ctarget_target *t, const char *account, char *other, size_t len)
{
    const char *d = H->target_state_dir0(t);
    const char *me = H->target_name(t);
    if (!d)
        return 0;
    char *parent = strdup(d), *slash = strrchr(parent, '/');
    int hit = 0;
    DIR *dir = slash ? (*slash = '\0', opendir(parent)) : NULL;
    struct dirent *e;
    while (dir && !hit && (e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.' || !strcasecmp(e->d_name, me))
            continue;
        char *path = xasprintf("%s/%s/account.json", parent, e->d_name);
        json_t *j = json_load_file(path, 0, NULL);
        free(path);
        const char *n = json_string_value(json_object_get(j, "account"));
        if (n && !strcasecmp(n, account)) {
            hit = 1;
            snprintf(other, len, "%s", e->d_name);
        }
        json_decref(j);
    }
    if (dir)
        closedir(dir);
    free(parent);
    return hit;
}

/* ---- compute ops ---------------------------------------------------------------------------- */

static ctarget_status ad_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                ctarget_error *err)
{
    (void)p;
    dl d;
    ctarget_status rc = dl_open(c, t, &d, 0, err);
    if (rc)
        return rc;
    json_t *res = NULL;
    ctarget_http_response *r = NULL;
    if ((rc = acct_ids(d.az, t, &d.a, err)))
        goto out;
    char other[256];
    if (account_taken(t, d.a.name, other, sizeof other)) {
        H->error_set(err, CTARGET_E_EXISTS, 0, 0,
                     "Data Lake Analytics account '%s' is already a target here, named '%s': "
                     "use that one, or detach it first", d.a.name, other);
        rc = CTARGET_E_EXISTS;
        goto out;
    }
    H->progress(c, "looking up the account", 0, 0);
    if ((rc = acct_get(d.az, &d.a, &res, err)))
        goto out;
    acct_endpoints_from(t, &d.a, res);
    if (!d.a.job_ep || !d.a.store_ep) {
        H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "Data Lake Analytics account '%s' names no %s: set %s", d.a.name,
                     d.a.job_ep ? "default Data Lake Store" : "job endpoint",
                     d.a.job_ep ? "store_endpoint" : "job_endpoint");
        rc = CTARGET_E_REMOTE;
        goto out;
    }
    /* access to the job service, with the Data Lake token */
    H->progress(c, "checking access to the job service", 0, 0);
    char *u = job_url(&d, "/Jobs?api-version=" ADLA_API "&%24top=1");
    rc = dl_http(&d, "GET", u, NULL, NULL, 0, 0, &r, err);
    free(u);
    if (rc)
        goto out;
    if (r->status != 200) {
        char what[300];
        snprintf(what, sizeof what, "job service of Data Lake Analytics account '%s' (%s)",
                 d.a.name, d.a.job_ep);
        rc = http_fail(r, what, err);
        goto out;
    }
    json_t *p_ = json_object_get(res, "properties");
    json_t *saved = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:I}", "account", d.a.name,
                              "resource_id", d.a.rid, "job_endpoint", d.a.job_ep,
                              "store_endpoint", d.a.store_ep, "default_store", d.a.store_name,
                              "max_degree_of_parallelism", (json_int_t)d.a.max_dop);
    char *text = json_dumps(saved, JSON_SORT_KEYS);
    char *path = state_path(t, "account.json");
    if (!path || !text || write_file(path, text, strlen(text), 0600)) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot save the account record %s",
                     path ? path : "(no state dir)");
        rc = CTARGET_E_IO;
    }
    free(path);
    free(text);
    json_decref(saved);
    if (rc)
        goto out;
    H->obj_set_str(facts, "account", d.a.name);
    H->obj_set_str(facts, "resource_id", d.a.rid);
    H->obj_set_str(facts, "job_endpoint", d.a.job_ep);
    H->obj_set_str(facts, "store_endpoint", d.a.store_ep);
    if (d.a.store_name)
        H->obj_set_str(facts, "default_store", d.a.store_name);
    const char *loc = json_string_value(json_object_get(res, "location"));
    if (loc)
        H->obj_set_str(facts, "location", loc);
    const char *st = json_string_value(json_object_get(p_, "state"));
    if (st)
        H->obj_set_str(facts, "state", st);
    H->obj_set_str(facts, "credential", az_credential_desc0(d.az));
out:
    if (r)
        H->http_response_free(r);
    json_decref(res);
    dl_close(&d);
    return rc;
}

static ctarget_status ad_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p;
    dl d;
    ctarget_status rc = dl_open(c, t, &d, 0, err);
    if (rc)
        return rc;
    json_t *res = NULL;
    if ((rc = acct_ids(d.az, t, &d.a, err)) || (rc = acct_get(d.az, &d.a, &res, err)))
        goto out;
    json_t *pr = json_object_get(res, "properties");
    const char *ps = json_string_value(json_object_get(pr, "provisioningState"));
    const char *s = json_string_value(json_object_get(pr, "state"));
    static const struct { const char *n; ctarget_prov_state v; } m[] = {
        {"Succeeded", CTARGET_PROV_SUCCEEDED}, {"Failed", CTARGET_PROV_FAILED},
        {"Creating", CTARGET_PROV_CREATING},   {"Running", CTARGET_PROV_CREATING},
        {"Patching", CTARGET_PROV_UPDATING},   {"Resuming", CTARGET_PROV_UPDATING},
        {"Suspending", CTARGET_PROV_UPDATING}, {"Deleting", CTARGET_PROV_DELETING},
        {"Canceled", CTARGET_PROV_CANCELED},   {"Deleted", CTARGET_PROV_DELETING},
    };
    st->provisioning_state = CTARGET_PROV_UNKNOWN;
    for (size_t i = 0; ps && i < sizeof m / sizeof m[0]; i++)
        if (!strcasecmp(ps, m[i].n))
            st->provisioning_state = m[i].v;
    snprintf(st->state, sizeof st->state, "%s", s ? s : "Unknown");
    if (st->provisioning_state == CTARGET_PROV_FAILED)
        snprintf(st->errors, sizeof st->errors, "account provisioning failed");
    const char *ep = json_string_value(json_object_get(pr, "endpoint"));
    const char *ds = json_string_value(json_object_get(pr, "defaultDataLakeStoreAccount"));
    if (ep)
        H->obj_set_str(details, "endpoint", ep);
    if (ds)
        H->obj_set_str(details, "default_store", ds);
    json_t *mx = json_object_get(pr, "maxDegreeOfParallelism");
    if (json_is_integer(mx))
        H->obj_set_int(details, "max_degree_of_parallelism", json_integer_value(mx));
    json_t *mj = json_object_get(pr, "maxJobCount");
    if (json_is_integer(mj))
        H->obj_set_int(details, "max_job_count", json_integer_value(mj));
out:
    json_decref(res);
    dl_close(&d);
    return rc;
}

static ctarget_status ad_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    /* forget only: the account and its jobs stay */
    (void)p, (void)c, (void)err;
    char *path = state_path(t, "account.json");
    if (path)
        unlink(path);
    free(path);
    return CTARGET_OK;
}

/* ---- step settings -------------------------------------------------------------------------- */

typedef struct step_cfg {
    long long dop, priority;
    const char *runtime;     /* borrowed from j */
    json_t *params;          /* borrowed from j: object or NULL */
    json_t *j;
} step_cfg;

static ctarget_status step_parse(ctarget_target *t, const ctarget_run_info *run, step_cfg *s,
                                 ctarget_error *err)
{
    memset(s, 0, sizeof *s);
    s->dop = strtoll(cfg(t, "degree_of_parallelism") ? cfg(t, "degree_of_parallelism") : "1",
                     NULL, 10);
    s->priority = strtoll(cfg(t, "priority") ? cfg(t, "priority") : "1000", NULL, 10);
    const char *text = run->struct_size > offsetof(ctarget_run_info, step_json) && run->step_json
                           ? run->step_json
                           : "{}";
    json_error_t je;
    s->j = json_loads(text, 0, &je);
    if (!json_is_object(s->j)) {
        json_decref(s->j);
        s->j = NULL;
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "the adla step's settings are not a JSON object: give degree_of_parallelism, "
                     "priority, runtime_version, script_parameters");
        return CTARGET_E_CONFIG;
    }
    const char *k;
    json_t *v;
    json_object_foreach(s->j, k, v) {
        if (!strcmp(k, "degree_of_parallelism") || !strcmp(k, "priority")) {
            long long mx = !strcmp(k, "priority") ? 1000000 : 10000;
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > mx) {
                H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "adla step key '%s' must be an integer from 1 to %lld", k, mx);
                return CTARGET_E_CONFIG;
            }
            if (!strcmp(k, "priority"))
                s->priority = json_integer_value(v);
            else
                s->dop = json_integer_value(v);
        } else if (!strcmp(k, "runtime_version")) {
            if (!json_is_string(v) || !*json_string_value(v)) {
                H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "adla step key 'runtime_version' must be a non-empty string (a "
                             "U-SQL runtime name, or leave it out for the account's default)");
                return CTARGET_E_CONFIG;
            }
            s->runtime = json_string_value(v);
        } else if (!strcmp(k, "script_parameters")) {
            if (!json_is_object(v)) {
                H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "adla step key 'script_parameters' must be an object of name: "
                             "value (string, integer, number or boolean)");
                return CTARGET_E_CONFIG;
            }
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv) {
                int ok = *pk && !(pk[0] >= '0' && pk[0] <= '9');
                for (const char *q = pk; ok && *q; q++)
                    ok = (*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') ||
                         (*q >= '0' && *q <= '9') || *q == '_';
                if (!ok) {
                    H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                                 "adla script_parameters name '%s' is not a U-SQL variable name: "
                                 "letters, digits and _, not starting with a digit (no @)", pk);
                    return CTARGET_E_CONFIG;
                }
                if (!strncmp(pk, "CTARGET_", 8)) {
                    H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                                 "adla script_parameters name '%s' is reserved: ctarget declares "
                                 "@CTARGET_* itself; rename the parameter", pk);
                    return CTARGET_E_CONFIG;
                }
                if (!json_is_string(pv) && !json_is_integer(pv) && !json_is_real(pv) &&
                    !json_is_boolean(pv)) {
                    H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                                 "adla script_parameters '%s' must be a string, integer, number "
                                 "or boolean", pk);
                    return CTARGET_E_CONFIG;
                }
            }
            s->params = v;
        } else {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "unknown adla step key '%s': the keys are degree_of_parallelism, "
                         "priority, runtime_version, script_parameters", k);
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

/* ---- run helpers ---------------------------------------------------------------------------- */

static const char *hget(const ctarget_run_info *run, const char *key)
{
    return run->handle ? H->obj_get0_str(run->handle, key) : NULL;
}

static long long hint(const ctarget_run_info *run, const char *key, long long dflt)
{
    long long v;
    return run->handle && H->obj_get_int(run->handle, key, &v) ? v : dflt;
}

static int is_step(const ctarget_run_info *run)
{
    return run->struct_size > offsetof(ctarget_run_info, step_type) && run->step_type;
}

static char *run_dir(const ctarget_run_info *run)
{
    return xasprintf(STORE_ROOT "%s/", run->id);
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    (void)sb, (void)flag, (void)f;
    return remove(p);
}

static void rm_rf(const char *p)
{
    nftw(p, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static int mkdirs(const char *path, mode_t mode)
{
    char *p = strdup(path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, mode) && errno != EEXIST) {
                free(p);
                return -1;
            }
            *s = '/';
        }
    int r = mkdir(p, mode) && errno != EEXIST ? -1 : 0;
    free(p);
    return r;
}

static char *read_all(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rbe");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap >= max + 1) {
                break;
            }
            cap *= 2;
            b = realloc(b, cap + 1);
        }
        size_t r = fread(b + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    b[n] = '\0';
    *len = n;
    return b;
}

static void log_append(const ctarget_run_info *run, const char *fmt, ...) CTARGET_PRINTF(2, 3);
static void log_append(const ctarget_run_info *run, const char *fmt, ...)
{
    char *p = xasprintf("%s/adla.log", run->work_dir);
    FILE *f = fopen(p, "ae");
    free(p);
    if (!f)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

/* a store request that must answer one of the ok statuses */
static ctarget_status store_do(dl *d, const char *method, const char *path, const char *query,
                               const void *body, size_t len, long ok1, long ok2,
                               ctarget_http_response **out, ctarget_error *err)
{
    char *u = store_url(d, path, query);
    ctarget_http_response *r = NULL;
    ctarget_status rc = dl_http(d, method, u, body ? "application/octet-stream" : NULL, body, len,
                                0, &r, err);
    free(u);
    if (rc)
        return rc;
    if (r->status != ok1 && r->status != ok2) {
        char what[1200];
        snprintf(what, sizeof what, "%s %s on Data Lake Store %s", method, path, d->a.store_ep);
        rc = http_fail(r, what, err);
        H->http_response_free(r);
        return rc;
    }
    if (out)
        *out = r;
    else
        H->http_response_free(r);
    return CTARGET_OK;
}

typedef struct up_ctx {
    dl *d;
    const char *base;        /* local snapshot dir */
    const char *dst;         /* store run dir, ends with '/' */
    const char *skip;        /* the script (relative) */
    ctarget_error *err;
    ctarget_status rc;
    int files;
    unsigned long long bytes;
} up_ctx;

/* the store's length of path, or -1 */
static long long store_length(dl *d, const char *path)
{
    ctarget_http_response *r = NULL;
    ctarget_error e2 = {.struct_size = sizeof e2};
    if (store_do(d, "GET", path, "op=GETFILESTATUS", NULL, 0, 200, 200, &r, &e2))
        return -1;
    json_t *j = json_loads(r->body, 0, NULL);
    json_t *len = json_object_get(json_object_get(j, "FileStatus"), "length");
    long long n = json_is_integer(len) ? (long long)json_integer_value(len) : -1;
    json_decref(j);
    H->http_response_free(r);
    return n;
}

/* One file: CREATE (overwrite) with its first chunk, then APPEND at explicit offsets (the
 * store refuses an offset that is not its length, so a repeated append cannot duplicate
 * data: a refused one is checked against the file's length). */
static ctarget_status upload_file(up_ctx *u, const char *full, const char *dst)
{
    int fd = open(full, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        H->error_set(u->err, CTARGET_E_IO, 0, errno, "cannot read %s", full);
        return CTARGET_E_IO;
    }
    char *buf = malloc(UPLOAD_CHUNK);
    ctarget_status rc = CTARGET_OK;
    unsigned long long off = 0;
    for (int first = 1;; first = 0) {
        size_t n = 0;
        while (n < UPLOAD_CHUNK) {
            ssize_t got = read(fd, buf + n, UPLOAD_CHUNK - n);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0) {
                H->error_set(u->err, CTARGET_E_IO, 0, errno, "cannot read %s", full);
                rc = CTARGET_E_IO;
                break;
            }
            if (got == 0)
                break;
            n += (size_t)got;
        }
        if (rc || (!first && n == 0))
            break;
        if (first) {
            rc = store_do(u->d, "PUT", dst, "op=CREATE&overwrite=true&write=true", buf, n, 201,
                          200, NULL, u->err);
        } else {
            char q[96];
            snprintf(q, sizeof q, "op=APPEND&append=true&offset=%llu", off);
            char *url = store_url(u->d, dst, q);
            ctarget_http_response *r = NULL;
            rc = dl_http(u->d, "POST", url, "application/octet-stream", buf, n,
                         CTARGET_HTTP_RETRY_UNSAFE, &r, u->err);
            free(url);
            if (!rc && r->status != 200) {
                /* an append that arrived before its answer was lost: the length tells */
                if (r->status == 400 && store_length(u->d, dst) == (long long)(off + n)) {
                    rc = CTARGET_OK;
                } else {
                    char what[1200];
                    snprintf(what, sizeof what, "APPEND %s at %llu on Data Lake Store %s", dst,
                             off, u->d->a.store_ep);
                    rc = http_fail(r, what, u->err);
                }
            }
            if (r)
                H->http_response_free(r);
        }
        if (rc)
            break;
        off += n;
        u->bytes += n;
        if (n < UPLOAD_CHUNK)
            break;
    }
    free(buf);
    close(fd);
    return rc;
}

static ctarget_status upload_tree(up_ctx *u, const char *rel)
{
    char *dir = *rel ? xasprintf("%s/%s", u->base, rel) : strdup(u->base);
    DIR *dp = opendir(dir);
    if (!dp) {
        H->error_set(u->err, CTARGET_E_IO, 0, errno, "cannot read %s", dir);
        free(dir);
        return CTARGET_E_IO;
    }
    struct dirent *e;
    ctarget_status rc = CTARGET_OK;
    while (!rc && (e = readdir(dp)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *r = *rel ? xasprintf("%s/%s", rel, e->d_name) : strdup(e->d_name);
        char *full = xasprintf("%s/%s", u->base, r);
        struct stat st;
        if (lstat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
            rc = upload_tree(u, r);
        } else if (lstat(full, &st) == 0 && S_ISREG(st.st_mode) && strcmp(r, u->skip)) {
            char *dst = xasprintf("%s%s", u->dst, r);
            H->progress(u->d->c, "uploading to the default store", (uint64_t)u->files, 0);
            rc = upload_file(u, full, dst);
            free(dst);
            u->files++;
        }
        free(full);
        free(r);
    }
    closedir(dp);
    free(dir);
    return rc;
}

/* ---- run ops -------------------------------------------------------------------------------- */

static ctarget_status ad_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    if (!is_step(run)) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "adla targets run pipeline steps only (a U-SQL script as an adla step)");
        return CTARGET_E_UNSUPPORTED;
    }
    step_cfg s;
    ctarget_status rc = step_parse(t, run, &s, err);
    json_decref(s.j);
    if (rc)
        return rc;
    long long dop = s.dop;
    size_t sl = strlen(run->script);
    if (sl < 5 || strcasecmp(run->script + sl - 5, ".usql")) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "adla steps run U-SQL scripts: '%s' is not a .usql file", run->script);
        return CTARGET_E_CONFIG;
    }
    char *snap = xasprintf("%s/snapshot", run->work_dir);
    char *tmp = xasprintf("%s/snapshot.tmp", run->work_dir);
    struct stat st;
    if (stat(snap, &st) != 0) {
        rm_rf(tmp);
        rc = H->snapshot_materialize(c, run->snapshot_id, tmp, err);
        if (!rc && rename(tmp, snap) != 0) {
            H->error_set(err, CTARGET_E_IO, 0, errno, "cannot rename %s", tmp);
            rc = CTARGET_E_IO;
        }
        if (rc)
            goto out;
    }
    char *script = xasprintf("%s/%s", snap, run->script);
    int ok = stat(script, &st) == 0 && S_ISREG(st.st_mode);
    free(script);
    if (!ok) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "the step's script '%s' is not a file of its source directory",
                     run->script);
        rc = CTARGET_E_NOT_FOUND;
        goto out;
    }
    if ((unsigned long long)st.st_size > SCRIPT_MAX) {
        H->error_set(err, CTARGET_E_LIMIT, 0, 0,
                     "U-SQL script '%s' is %lld bytes: Data Lake Analytics takes at most 3 MB",
                     run->script, (long long)st.st_size);
        rc = CTARGET_E_LIMIT;
        goto out;
    }
    dl d;
    if ((rc = dl_open(c, t, &d, 1, err)))
        goto out;
    if (d.a.max_dop > 0 && dop > d.a.max_dop) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "degree_of_parallelism %lld is more than account '%s' allows (%lld): lower "
                     "the step's or the target's degree_of_parallelism", dop, d.a.name,
                     d.a.max_dop);
        dl_close(&d);
        rc = CTARGET_E_CONFIG;
        goto out;
    }
    char *dst = run_dir(run);
    up_ctx u = {.d = &d, .base = snap, .dst = dst, .skip = run->script, .err = err};
    rc = upload_tree(&u, "");
    if (!rc) {
        char *od = xasprintf("%soutputs", dst);
        rc = store_do(&d, "PUT", od, "op=MKDIRS", NULL, 0, 200, 201, NULL, err);
        free(od);
    }
    if (!rc) {
        log_append(run, "ctarget: uploaded %d file%s (%llu bytes) of the snapshot to %s on the "
                   "default store (%s)\n", u.files, u.files == 1 ? "" : "s", u.bytes, dst,
                   d.a.store_name ? d.a.store_name : d.a.store_ep);
        H->obj_set_str(run->handle, "store_dir", dst);
    }
    free(dst);
    dl_close(&d);
out:
    free(tmp);
    free(snap);
    return rc;
}

/* FNV-1a 64 */
static uint64_t fnv(const char *s, uint64_t h)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static void job_guid(const ctarget_run_info *run, char *out, size_t len)
{
    char *k = xasprintf("ctarget-adla:%s:%d", run->id, run->attempt);
    uint64_t a = fnv(k, UINT64_C(0xcbf29ce484222325)), b = fnv(k, UINT64_C(0x84222325cbf29ce4));
    free(k);
    /* RFC 4122 layout, version 5-like (name-based) */
    snprintf(out, len, "%08x-%04x-5%03x-%04x-%012llx", (unsigned)(a >> 32),
             (unsigned)((a >> 16) & 0xffff), (unsigned)(a & 0xfff),
             (unsigned)(0x8000 | ((b >> 48) & 0x3fff)),
             (unsigned long long)(b & UINT64_C(0xffffffffffff)));
}

/* a U-SQL string literal */
static void usql_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f), fputc(*s, f);
        else if (*s == '\n')
            fputs("\\n", f);
        else if (*s == '\t')
            fputs("\\t", f);
        else if (*s != '\r')
            fputc(*s, f);
    }
    fputc('"', f);
}

/* The script as submitted: one line of DECLAREs, then the user's script unchanged. */
static char *build_script(const ctarget_run_info *run, const step_cfg *s, const char *user,
                          const char *dir)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    fputs("DECLARE @CTARGET_RUN_DIR string = ", f);
    usql_str(f, dir);
    fputs("; DECLARE @CTARGET_RUN_ID string = ", f);
    usql_str(f, run->id);
    fputs("; DECLARE @CTARGET_OUTPUTS_DIR string = ", f);
    char *od = xasprintf("%soutputs/", dir);
    usql_str(f, od);
    free(od);
    fputs(";", f);
    for (size_t i = 0; i < run->n_env; i++) {
        const char *e = run->env[i], *eq = strchr(e, '=');
        if (!eq || (strncmp(e, "CTARGET_INPUT_", 14) && strncmp(e, "CTARGET_OUTPUT_", 15)))
            continue;
        int ok = 1;
        for (const char *q = e; q < eq && ok; q++)
            ok = (*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z') ||
                 (*q >= '0' && *q <= '9') || *q == '_';
        if (!ok)
            continue;
        fprintf(f, " DECLARE @%.*s string = ", (int)(eq - e), e);
        char *v = xasprintf("%s%s", dir, eq + 1);
        usql_str(f, v);
        free(v);
        fputc(';', f);
    }
    const char *k;
    json_t *v;
    json_object_foreach(s->params, k, v) {
        if (json_is_string(v)) {
            fprintf(f, " DECLARE @%s string = ", k);
            usql_str(f, json_string_value(v));
        } else if (json_is_integer(v)) {
            long long x = json_integer_value(v);
            fprintf(f, " DECLARE @%s %s = %lld", k,
                    x > 2147483647LL || x < -2147483648LL ? "long" : "int", x);
        } else if (json_is_real(v)) {
            fprintf(f, " DECLARE @%s double = %.17g", k, json_real_value(v));
        } else {
            fprintf(f, " DECLARE @%s bool = %s", k, json_is_true(v) ? "true" : "false");
        }
        fputc(';', f);
    }
    fputc('\n', f);
    fputs(user, f);
    fclose(f);
    return buf;
}

static ctarget_status job_get(dl *d, const char *jid, json_t **out, long *status,
                              ctarget_error *err)
{
    char *path = xasprintf("/Jobs/%s?api-version=" ADLA_API, jid);
    char *u = job_url(d, path);
    free(path);
    ctarget_http_response *r = NULL;
    ctarget_status rc = dl_http(d, "GET", u, NULL, NULL, 0, 0, &r, err);
    free(u);
    if (rc)
        return rc;
    *status = r->status;
    if (r->status != 200) {
        char what[300];
        snprintf(what, sizeof what, "U-SQL job %s of account '%s'", jid, d->a.name);
        rc = http_fail(r, what, err);
    } else if (!(*out = json_loads(r->body, 0, NULL))) {
        H->error_set(err, CTARGET_E_REMOTE, 1, 0, "U-SQL job %s: the job service answered no "
                     "JSON", jid);
        rc = CTARGET_E_REMOTE;
    }
    H->http_response_free(r);
    return rc;
}

static ctarget_status ad_submit(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    step_cfg s;
    ctarget_status rc = step_parse(t, run, &s, err);
    if (rc) {
        json_decref(s.j);
        return rc;
    }
    char *path = xasprintf("%s/snapshot/%s", run->work_dir, run->script);
    size_t n = 0;
    char *user = read_all(path, SCRIPT_MAX, &n);
    free(path);
    if (!user) {
        json_decref(s.j);
        H->error_set(err, CTARGET_E_STATE, 0, errno, "the step's script '%s' was not prepared "
                     "(no snapshot in %s)", run->script, run->work_dir);
        return CTARGET_E_STATE;
    }
    char *dir = run_dir(run);
    char *script = build_script(run, &s, user, dir);
    free(user);
    char jid[64];
    job_guid(run, jid, sizeof jid);
    char *name = xasprintf("ctarget %s%s%s", run->id, run->step_name ? " " : "",
                           run->step_name ? run->step_name : "");
    json_t *props = json_pack("{s:s, s:s}", "type", "USql", "script", script);
    if (s.runtime)
        json_object_set_new(props, "runtimeVersion", json_string(s.runtime));
    json_t *body = json_pack("{s:s, s:s, s:I, s:I, s:o}", "name", name, "type", "USql",
                             "degreeOfParallelism", (json_int_t)s.dop, "priority",
                             (json_int_t)s.priority, "properties", props);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    free(script);
    free(name);
    dl d;
    if ((rc = dl_open(c, t, &d, 1, err)))
        goto out;
    char *jp = xasprintf("/Jobs/%s?api-version=" ADLA_API, jid);
    char *u = job_url(&d, jp);
    free(jp);
    ctarget_http_response *r = NULL;
    /* a PUT with a fixed id is safe to repeat: a job that arrived answers 409 */
    rc = dl_http(&d, "PUT", u, "application/json", text, strlen(text), 0, &r, err);
    free(u);
    if (!rc) {
        if (r->status == 200 || r->status == 201 || r->status == 409) {
            H->obj_set_str(run->handle, "job_id", jid);
            H->obj_set_str(run->handle, "account", d.a.name);
            H->obj_set_int(run->handle, "audit_logged", 0);
            H->obj_set_int(run->handle, "end_logged", 0);
            log_append(run, "ctarget: submitted U-SQL job %s to Data Lake Analytics account '%s'"
                       " (degree of parallelism %lld, priority %lld%s%s)%s\n", jid, d.a.name,
                       s.dop, s.priority, s.runtime ? ", runtime " : "", s.runtime ? s.runtime : "",
                       r->status == 409 ? ": it was already there" : "");
        } else {
            char what[300];
            snprintf(what, sizeof what, "submitting U-SQL job %s to account '%s'", jid,
                     d.a.name);
            rc = http_fail(r, what, err);
        }
        H->http_response_free(r);
    }
    dl_close(&d);
out:
    free(text);
    free(dir);
    json_decref(s.j);
    return rc;
}

static ctarget_run_state map_state(const char *state, const char *result)
{
    if (!state)
        return CTARGET_RUN_QUEUED;
    if (!strcmp(state, "Ended")) {
        if (result && !strcmp(result, "Succeeded"))
            return CTARGET_RUN_COMPLETED;
        if (result && !strcmp(result, "Cancelled"))
            return CTARGET_RUN_CANCELED;
        return CTARGET_RUN_FAILED;
    }
    if (!strcmp(state, "Running"))
        return CTARGET_RUN_RUNNING;
    if (!strcmp(state, "Compiling") || !strcmp(state, "Starting") || !strcmp(state, "Scheduling"))
        return CTARGET_RUN_PREPARING;
    return CTARGET_RUN_QUEUED; /* New, Accepted, Queued, WaitingForCapacity, Paused */
}

/* line numbers in the user's script: the submitted one has one line of DECLAREs first */
static long user_line(json_t *e)
{
    json_t *ln = json_object_get(e, "lineNumber");
    return json_is_integer(ln) ? (long)json_integer_value(ln) - 1 : 0;
}

/* the interpreter output / debug data the job names: appended once to the log */
static void log_debug_data(dl *d, const ctarget_run_info *run, json_t *job)
{
    json_t *paths = json_object_get(
        json_object_get(json_object_get(job, "properties"), "debugData"), "paths");
    size_t i;
    json_t *v;
    json_array_foreach(paths, i, v) {
        const char *uri = json_string_value(v);
        if (!uri)
            continue;
        const char *path = uri;
        if (!strncmp(uri, "adl://", 6)) {
            path = strchr(uri + 6, '/');
            if (!path)
                continue;
        }
        ctarget_http_response *r = NULL;
        ctarget_error e2 = {.struct_size = sizeof e2};
        if (store_do(d, "GET", path, "op=OPEN&read=true", NULL, 0, 200, 200, &r, &e2))
            continue;
        log_append(run, "---- job debug data %s (its line numbers count the line of DECLAREs "
                   "ctarget puts first: line N+1 is line N of %s) ----\n%s%s", path,
                   run->script, r->body,
                   r->body_len && r->body[r->body_len - 1] != '\n' ? "\n" : "");
        H->http_response_free(r);
    }
}

static ctarget_status ad_poll(void *p, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *run, long wait_ms, ctarget_run_poll *out,
                              ctarget_error *err)
{
    (void)p;
    const char *jid = hget(run, "job_id");
    if (!jid) {
        /* cancelled before a job existed: nothing runs anywhere */
        out->state = hint(run, "cancelled", 0) ? CTARGET_RUN_CANCELED : CTARGET_RUN_QUEUED;
        snprintf(out->native_state, sizeof out->native_state, "NotSubmitted");
        return CTARGET_OK;
    }
    char jidc[64];
    snprintf(jidc, sizeof jidc, "%s", jid);
    dl d;
    ctarget_status rc = dl_open(c, t, &d, 1, err);
    if (rc)
        return rc;
    int64_t until = H->monotonic_ns() + (int64_t)(wait_ms > 0 ? wait_ms : 0) * 1000000;
    json_t *job = NULL;
    const char *state = NULL, *result = NULL;
    long long seen = hint(run, "audit_logged", 0);
    for (int round = 0;; round++) {
        long status = 0;
        json_decref(job);
        job = NULL;
        if ((rc = job_get(&d, jidc, &job, &status, err))) {
            if (status == 404)
                H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                             "U-SQL job %s is gone from account '%s' (deleted, or past the "
                             "account's job history)", jidc, d.a.name);
            goto out;
        }
        state = json_string_value(json_object_get(job, "state"));
        result = json_string_value(json_object_get(job, "result"));
        json_t *audit = json_object_get(job, "stateAuditRecords");
        size_t na = json_array_size(audit);
        int changed = (long long)na != seen;
        for (size_t i = (size_t)seen; i < na; i++) {
            json_t *a = json_array_get(audit, i);
            const char *ns = json_string_value(json_object_get(a, "newState"));
            const char *ts = json_string_value(json_object_get(a, "timeStamp"));
            const char *det = json_string_value(json_object_get(a, "details"));
            log_append(run, "%s job %s: %s%s%s\n", ts ? ts : "-", jidc, ns ? ns : "?",
                       det ? " " : "", det ? det : "");
        }
        seen = (long long)na;
        H->obj_set_int(run->handle, "audit_logged", seen);
        if ((state && !strcmp(state, "Ended")) || changed || H->monotonic_ns() >= until)
            break;
        if ((rc = H->sleep_ms(c, 300)))
            goto out;
    }
    out->state = map_state(state, result);
    snprintf(out->native_state, sizeof out->native_state, "%s%s%s", state ? state : "?",
             state && !strcmp(state, "Ended") ? "/" : "",
             state && !strcmp(state, "Ended") && result ? result : "");
    json_t *errs = json_object_get(job, "errorMessage");
    if (out->state == CTARGET_RUN_FAILED) {
        out->has_exit_code = 1;
        out->exit_code = 1;
        json_t *e0 = json_array_get(errs, 0);
        const char *id = json_string_value(json_object_get(e0, "errorId"));
        const char *msg = json_string_value(json_object_get(e0, "message"));
        long ln = user_line(e0);
        char where[600] = "";
        if (ln > 0)
            snprintf(where, sizeof where, " (line %ld of %s)", ln, run->script);
        size_t ne = json_array_size(errs);
        char more[64] = "";
        if (ne > 1)
            snprintf(more, sizeof more, " (and %zu more error%s)", ne - 1, ne > 2 ? "s" : "");
        if (e0)
            snprintf(out->reason, sizeof out->reason, "U-SQL job %s failed: %s: %s%s%s", jidc,
                     id ? id : "error", msg ? msg : "", where, more);
        else
            snprintf(out->reason, sizeof out->reason, "U-SQL job %s ended with result %s and "
                     "no error message", jidc, result ? result : "?");
    } else if (out->state == CTARGET_RUN_COMPLETED) {
        out->has_exit_code = 1;
        out->exit_code = 0;
    }
    if (state && !strcmp(state, "Ended") && !hint(run, "end_logged", 0)) {
        size_t i;
        json_t *e;
        json_array_foreach(errs, i, e) {
            const char *id = json_string_value(json_object_get(e, "errorId"));
            const char *msg = json_string_value(json_object_get(e, "message"));
            const char *sev = json_string_value(json_object_get(e, "severity"));
            long ln = user_line(e);
            char where[64] = "";
            if (ln > 0)
                snprintf(where, sizeof where, " at line %ld", ln);
            log_append(run, "%s %s%s: %s\n", sev ? sev : "Error", id ? id : "?", where,
                       msg ? msg : "");
        }
        log_debug_data(&d, run, job);
        log_append(run, "ctarget: U-SQL job %s ended: %s\n", jidc, result ? result : "?");
        H->obj_set_int(run->handle, "end_logged", 1);
    }
out:
    json_decref(job);
    dl_close(&d);
    return rc;
}

static ctarget_status ad_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_stream stream,
                                   uint64_t offset, ctarget_write_fn out, void *out_arg,
                                   ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    if (stream != CTARGET_STREAM_LOG)
        return CTARGET_OK; /* U-SQL has no metrics stream */
    char *path = xasprintf("%s/adla.log", run->work_dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return CTARGET_OK;
    ctarget_status rc = CTARGET_OK;
    char buf[16384];
    if (lseek(fd, (off_t)offset, SEEK_SET) < 0) {
        close(fd);
        return CTARGET_OK;
    }
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (out(out_arg, buf, (size_t)r)) {
            H->error_set(err, CTARGET_E_CANCELED, 0, 0, "log reader stopped");
            rc = CTARGET_E_CANCELED;
            break;
        }
    }
    close(fd);
    return rc;
}

static ctarget_status ad_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const char *jid = hget(run, "job_id");
    if (!jid) {
        /* nothing submitted: poll reports it canceled */
        H->obj_set_int(run->handle, "cancelled", 1);
        return CTARGET_OK;
    }
    char jidc[64];
    snprintf(jidc, sizeof jidc, "%s", jid);
    dl d;
    ctarget_status rc = dl_open(c, t, &d, 1, err);
    if (rc)
        return rc;
    char *jp = xasprintf("/Jobs/%s/CancelJob?api-version=" ADLA_API, jidc);
    char *u = job_url(&d, jp);
    free(jp);
    ctarget_http_response *r = NULL;
    rc = dl_http(&d, "POST", u, NULL, NULL, 0, CTARGET_HTTP_RETRY_UNSAFE, &r, err);
    free(u);
    if (!rc) {
        if (r->status == 200 || r->status == 202 || r->status == 204)
            log_append(run, "ctarget: cancel requested for U-SQL job %s\n", jidc);
        else {
            char what[300];
            snprintf(what, sizeof what, "cancelling U-SQL job %s of account '%s'", jidc,
                     d.a.name);
            rc = http_fail(r, what, err);
        }
        H->http_response_free(r);
    }
    dl_close(&d);
    return rc;
}

/* one file of the store into dst (written to a temporary name, renamed when complete), in
 * ranged OPENs of UPLOAD_CHUNK bytes; total is the listed length (-1: unknown, read until a
 * short answer) */
static ctarget_status download_file(dl *d, const char *src, const char *dst, long long total,
                                    ctarget_error *err)
{
    char *tmp = xasprintf("%s.part", dst);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
        free(tmp);
        return CTARGET_E_IO;
    }
    ctarget_status rc = CTARGET_OK;
    unsigned long long off = 0;
    while (total < 0 || off < (unsigned long long)total) {
        char q[128];
        snprintf(q, sizeof q, "op=OPEN&read=true&offset=%llu&length=%zu", off, UPLOAD_CHUNK);
        ctarget_http_response *f = NULL;
        if ((rc = store_do(d, "GET", src, q, NULL, 0, 200, 200, &f, err)))
            break;
        size_t w = 0;
        while (w < f->body_len) {
            ssize_t n = write(fd, f->body + w, f->body_len - w);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
                rc = CTARGET_E_IO;
                break;
            }
            w += (size_t)n;
        }
        size_t got = f->body_len;
        H->http_response_free(f);
        off += got;
        if (rc || got < UPLOAD_CHUNK)
            break;
    }
    if (close(fd) != 0 && !rc) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", tmp);
        rc = CTARGET_E_IO;
    }
    if (!rc && total >= 0 && off != (unsigned long long)total) {
        H->error_set(err, CTARGET_E_REMOTE, 1, 0, "%s on Data Lake Store %s: got %llu of its "
                     "%lld bytes (it changed while read?): fetch the outputs again", src,
                     d->a.store_ep, off, total);
        rc = CTARGET_E_REMOTE;
    }
    if (!rc && rename(tmp, dst) != 0) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot rename %s", tmp);
        rc = CTARGET_E_IO;
    }
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}

/* downloads the store folder src (ends with '/') into the local dir dst, recursively */
static ctarget_status download_tree(dl *d, const char *src, const char *dst, int depth,
                                    int *files, ctarget_error *err)
{
    if (depth > 32) {
        H->error_set(err, CTARGET_E_LIMIT, 0, 0, "%s: more than 32 levels of folders", src);
        return CTARGET_E_LIMIT;
    }
    ctarget_http_response *r = NULL;
    char *u = store_url(d, src, "op=LISTSTATUS");
    ctarget_status rc = dl_http(d, "GET", u, NULL, NULL, 0, 0, &r, err);
    free(u);
    if (rc)
        return rc;
    if (r->status == 404) {
        H->http_response_free(r);
        return CTARGET_OK; /* nothing written there */
    }
    if (r->status != 200) {
        char what[1200];
        snprintf(what, sizeof what, "listing %s on Data Lake Store %s", src, d->a.store_ep);
        rc = http_fail(r, what, err);
        H->http_response_free(r);
        return rc;
    }
    json_t *j = json_loads(r->body, 0, NULL);
    H->http_response_free(r);
    json_t *list = json_object_get(json_object_get(j, "FileStatuses"), "FileStatus");
    if (mkdirs(dst, 0755)) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot create %s", dst);
        json_decref(j);
        return CTARGET_E_IO;
    }
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        const char *name = json_string_value(json_object_get(e, "pathSuffix"));
        const char *type = json_string_value(json_object_get(e, "type"));
        if (!name || !*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) {
            H->error_set(err, CTARGET_E_REMOTE, 0, 0, "%s lists an unsafe name: refused", src);
            rc = CTARGET_E_REMOTE;
            break;
        }
        char *s2 = xasprintf("%s%s", src, name);
        char *d2 = xasprintf("%s/%s", dst, name);
        if (type && !strcmp(type, "DIRECTORY")) {
            char *s3 = xasprintf("%s/", s2);
            rc = download_tree(d, s3, d2, depth + 1, files, err);
            free(s3);
        } else {
            json_t *jl = json_object_get(e, "length");
            long long total = json_is_integer(jl) ? (long long)json_integer_value(jl) : -1;
            rc = download_file(d, s2, d2, total, err);
            if (!rc)
                (*files)++;
        }
        free(s2);
        free(d2);
        if (rc)
            break;
    }
    json_decref(j);
    return rc;
}

static ctarget_status ad_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                       const ctarget_run_info *run, const char *dest_dir,
                                       ctarget_error *err)
{
    (void)p;
    dl d;
    ctarget_status rc = dl_open(c, t, &d, 1, err);
    if (rc)
        return rc;
    char *dir = run_dir(run);
    int files = 0;
    const char *sub[] = {"outputs", "logs"};
    for (size_t i = 0; i < 2 && !rc; i++) {
        char *src = xasprintf("%s%s/", dir, sub[i]);
        char *dst = xasprintf("%s/%s", dest_dir, sub[i]);
        H->progress(c, "downloading outputs", (uint64_t)files, 0);
        rc = download_tree(&d, src, dst, 0, &files, err);
        free(src);
        free(dst);
    }
    free(dir);
    dl_close(&d);
    return rc;
}

static ctarget_status ad_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    if (!hget(run, "job_id") && !hget(run, "store_dir")) {
        H->error_set(err, CTARGET_E_STATE, 0, 0,
                     "run %s has no U-SQL job recorded in its handle: submit it again", run->id);
        return CTARGET_E_STATE;
    }
    return CTARGET_OK;
}

static ctarget_status ad_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    dl d;
    ctarget_status rc = dl_open(c, t, &d, 1, err);
    if (rc)
        return rc;
    char *dir = run_dir(run);
    dir[strlen(dir) - 1] = '\0';
    rc = store_do(&d, "DELETE", dir, "op=DELETE&recursive=true", NULL, 0, 200, 200, NULL, err);
    free(dir);
    dl_close(&d);
    char *snap = xasprintf("%s/snapshot", run->work_dir);
    rm_rf(snap);
    free(snap);
    return rc;
}

/* ---- descriptor ----------------------------------------------------------------------------- */

static ctarget_status ad_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static void ad_fini(void *p)
{
    (void)p;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = ad_validate,
    .attach = ad_attach,
    .status = ad_status,
    .detach = ad_detach,
};

static const ctarget_run_ops run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = ad_prepare,
    .submit = ad_submit,
    .poll = ad_poll,
    .read_logs = ad_read_logs,
    .cancel = ad_cancel,
    .fetch_outputs = ad_fetch_outputs,
    .reattach = ad_reattach,
    .cleanup = ad_cleanup,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "adla",
    .version = PACKAGE_VERSION,
    .description = "Azure Data Lake Analytics accounts: U-SQL pipeline steps (attach only)",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH | CTARGET_CAP_PIPELINE_STEP | CTARGET_CAP_PIPELINE_ONLY |
                    CTARGET_CAP_CANCEL,
    .config_keys = keys,
    .n_config_keys = N_KEYS,
    .init = ad_init,
    .fini = ad_fini,
    .compute = &compute_ops,
    .run = &run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
