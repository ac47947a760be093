/* ARM: requests with a bearer token, error bodies as one line, long-running operations. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "azure_int.h"

void az_arm_resp_clear(az_arm_resp *r)
{
    if (!r)
        return;
    json_decref(r->body);
    free(r->async_op);
    free(r->location);
    memset(r, 0, sizeof *r);
    r->retry_after_ms = -1;
}

/* The scope of ARM tokens: the public cloud's, also for emulators on loopback; a sovereign
 * cloud's ARM endpoint is its own audience. */
static char *arm_scope(const az_ctx *az)
{
    const char *a = az->arm;
    if (!strcasecmp(a, AZ_DEFAULT_ARM_ENDPOINT) || !strncmp(a, "https://127.", 12) ||
        !strncasecmp(a, "https://localhost", 17) || !strncmp(a, "https://[::1]", 13))
        return az_strdup(AZ_SCOPE_ARM);
    return az_asprintf("%s/.default", a);
}

/* Whether url is on the ARM endpoint (scheme, host and port): only there goes the token. */
static int on_arm(const az_ctx *az, const char *url)
{
    size_t n = strlen(az->arm);
    return !strncasecmp(url, az->arm, n) && (url[n] == '/' || url[n] == '?' || !url[n]);
}

/* "computes" -> "compute" ... for messages */
static void singular(char *dst, size_t cap, const char *type_last)
{
    size_t n = strlen(type_last);
    if (n > 1 && type_last[n - 1] == 's')
        n--;
    snprintf(dst, cap, "%.*s", (int)n, type_last);
}

/* "compute 'gpu-1' (Microsoft.MachineLearningServices/workspaces/computes)" from a path */
static void describe(const char *path, const char *what, char *out, size_t cap)
{
    const char *p = path;
    if (!strncasecmp(p, "https://", 8)) {
        p = strchr(p + 8, '/');
        if (!p)
            p = "/";
    }
    char *copy = az_strdup(p);
    copy[strcspn(copy, "?")] = '\0';
    az_rid r;
    char *action = NULL;
    int ok = az_rid_parse(copy, &r) == 0;
    if (!ok) {
        char *slash = strrchr(copy, '/');
        if (slash && slash != copy) {
            *slash = '\0';
            action = slash + 1;
            ok = az_rid_parse(copy, &r) == 0;
        }
    }
    if (ok) {
        const char *last = strrchr(r.type, '/');
        char kind[64];
        singular(kind, sizeof kind, last ? last + 1 : r.type);
        if (what)
            snprintf(out, cap, "%s (%s)%s%s", what, r.type, action ? " " : "",
                     action ? action : "");
        else
            snprintf(out, cap, "%s '%s' (%s)%s%s", kind, r.name, r.type, action ? " " : "",
                     action ? action : "");
        az_rid_clear(&r);
    } else if (what) {
        snprintf(out, cap, "%s", what);
    } else {
        snprintf(out, cap, "%s", copy);
    }
    free(copy);
}

static const char *arm_hint(const char *code)
{
    static const struct { const char *code, *hint; } t[] = {
        {"SubscriptionNotFound", "check subscription_id"},
        {"InvalidSubscriptionId", "check subscription_id"},
        {"ResourceGroupNotFound", "check resource_group"},
        {"WorkspaceNotFound", "check workspace_name"},
        {"AuthorizationFailed", "grant the credential a role on the workspace (Contributor "
                                "or AzureML Data Scientist)"},
        {"QuotaExceeded", "request more quota for this VM family or pick another vm_size"},
        {"InvalidApiVersionParameter", "this service does not speak the API version used"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcasecmp(code, t[i].code))
            return t[i].hint;
    return NULL;
}

static ctarget_status status_code(long st, const char *code, int *transient)
{
    *transient = st == 429 || st >= 500;
    if (strstr(code, "Quota"))
        return CTARGET_E_LIMIT;
    switch (st) {
    case 401: case 403:
        return CTARGET_E_AUTH;
    case 404:
        return CTARGET_E_NOT_FOUND;
    case 409:
        return strstr(code, "Exists") || strstr(code, "AlreadyAttached") ? CTARGET_E_EXISTS
                                                                          : CTARGET_E_STATE;
    case 429:
        return CTARGET_E_LIMIT;
    default:
        return CTARGET_E_REMOTE;
    }
}

/* One line from an ARM error response. */
static ctarget_status arm_error(az_ctx *az, const char *method, const char *path,
                                const char *what, long status, const char *body, size_t len,
                                ctarget_error *err)
{
    char who[512];
    describe(path, what, who, sizeof who);
    az_arm_error e;
    int transient;
    if (az_parse_arm_error(body, len, &e) != 0) {
        ctarget_status c = status_code(status, "", &transient);
        AZ_ERR(az, err, c, transient, "%s: %s answered HTTP %ld without an error body", who,
               method, status);
        return c;
    }
    ctarget_status c = status_code(status, e.code, &transient);
    /* a 404 for the workspace itself reads better as WorkspaceNotFound's hint */
    const char *hint = arm_hint(e.code);
    if (!hint && status == 404 && strstr(who, "(Microsoft.MachineLearningServices/workspaces)"))
        hint = "check workspace_name and resource_group";
    AZ_ERR(az, err, c, transient, "%s: %s: %s%s%s", who, e.code[0] ? e.code : "Error",
           e.message[0] ? e.message : "(no message)", hint ? "; " : "", hint ? hint : "");
    return c;
}

static char *build_url(const az_ctx *az, const az_arm_req *req)
{
    const char *p = req->path;
    int abs = !strncasecmp(p, "https://", 8) || !strncasecmp(p, "http://", 7);
    char *base = abs ? az_strdup(p) : az_asprintf("%s%s", az->arm, p);
    int has_q = strchr(base, '?') != NULL;
    char *u = base;
    if (req->api_version && !strstr(base, "api-version=")) {
        u = az_asprintf("%s%capi-version=%s", base, has_q ? '&' : '?', req->api_version);
        free(base);
        has_q = 1;
    }
    if (req->query && *req->query) {
        char *v = az_asprintf("%s%c%s", u, has_q ? '&' : '?', req->query);
        free(u);
        u = v;
    }
    return u;
}

static int token_refused(long status, const char *body, size_t len)
{
    if (status != 401)
        return 0;
    az_arm_error e;
    if (az_parse_arm_error(body, len, &e) != 0)
        return 1;
    return !strcasecmp(e.code, "InvalidAuthenticationToken") ||
           !strcasecmp(e.code, "ExpiredAuthenticationToken") ||
           !strcasecmp(e.code, "InvalidAuthenticationTokenAudience") ||
           !strcasecmp(e.code, "AuthenticationFailed");
}

ctarget_status az_arm_call(az_ctx *az, const az_arm_req *req, unsigned flags,
                           az_arm_resp *out, ctarget_error *err)
{
    const ctarget_host *h = az->h;
    memset(out, 0, sizeof *out);
    out->retry_after_ms = -1;
    char *url = build_url(az, req);
    if (!on_arm(az, url)) {
        char who[512];
        describe(req->path, req->what, who, sizeof who);
        AZ_ERR(az, err, CTARGET_E_REMOTE, 0,
               "%s: the service pointed to a URL outside arm_endpoint %s; not sending the "
               "token there", who, az->arm);
        free(url);
        return CTARGET_E_REMOTE;
    }
    char *body = req->body ? json_dumps(req->body, JSON_COMPACT) : NULL;
    char *scope = arm_scope(az);
    ctarget_status rc = CTARGET_OK;
    for (int round = 0; round < 2; round++) {
        char *tok = NULL;
        if ((rc = az_token_get(az, scope, &tok, err)))
            break;
        char *auth = az_asprintf("Authorization: Bearer %s", tok);
        az_token_free(tok);
        const char *hdr[] = {auth, "Accept: application/json",
                             "Content-Type: application/json", NULL};
        ctarget_http_request rq;
        memset(&rq, 0, sizeof rq);
        rq.struct_size = sizeof rq;
        rq.method = req->method;
        rq.url = url;
        rq.headers = hdr;
        rq.body = body;
        rq.body_len = body ? strlen(body) : 0;
        rq.timeout_ms = req->timeout_ms;
        rq.flags = (flags & AZ_RETRY_SAFE) ? CTARGET_HTTP_RETRY_UNSAFE : 0;
        ctarget_http_response *resp = NULL;
        rc = h->http_request(az->call, &rq, &resp, err);
        az_wipe_free(auth);
        if (rc)
            break;
        if (round == 0 && az->kind != AZ_CRED_TOKEN &&
            token_refused(resp->status, resp->body, resp->body_len)) {
            /* expired or revoked behind the cache's back: one fresh token, once */
            az_token_invalidate(az, scope);
            h->http_response_free(resp);
            continue;
        }
        out->status = resp->status;
        out->attempts = resp->attempts;
        if (resp->body_len)
            out->body = json_loadb(resp->body, resp->body_len, 0, NULL);
        const char *v;
        if ((v = h->http_header_get0(resp, "Azure-AsyncOperation")) && *v)
            out->async_op = az_strdup(v);
        if ((v = h->http_header_get0(resp, "Location")) && *v)
            out->location = az_strdup(v);
        if ((v = h->http_header_get0(resp, "Retry-After")) && *v) {
            char *end;
            long s = strtol(v, &end, 10);
            if (end != v && !*end && s >= 0)
                out->retry_after_ms = (s > 3600 ? 3600 : s) * 1000;
        }
        if (resp->status >= 200 && resp->status < 300) {
            rc = CTARGET_OK;
        } else if (resp->status == 404 && (flags & AZ_OK_404)) {
            rc = CTARGET_OK;
        } else if (resp->status == 401) {
            char who[512];
            describe(req->path, req->what, who, sizeof who);
            az_arm_error e;
            int has = az_parse_arm_error(resp->body, resp->body_len, &e) == 0;
            AZ_ERR(az, err, CTARGET_E_AUTH, 0,
                   "%s: ARM refused the credential, %s (%s%s%s): %s", who,
                   az_credential_desc0(az), has ? e.code : "HTTP 401", has ? ": " : "",
                   has ? e.message : "",
                   az->kind == AZ_CRED_TOKEN ? "the access_token is expired or wrong: get a "
                                               "new one"
                                             : "check tenant_id and that the credential "
                                               "belongs to this subscription's tenant");
            rc = CTARGET_E_AUTH;
        } else {
            rc = arm_error(az, req->method, req->path, req->what, resp->status, resp->body,
                           resp->body_len, err);
        }
        h->http_response_free(resp);
        break;
    }
    free(scope);
    free(body);
    free(url);
    return rc;
}

/* ---- long-running operations ----------------------------------------------------------- */

static long poll_delay(long retry_after_ms, int n)
{
    /* "Retry-After: 0" still gets a tenth of a second: no busy polling */
    if (retry_after_ms >= 0)
        return retry_after_ms > 60000 ? 60000 : retry_after_ms < 100 ? 100 : retry_after_ms;
    long d = 1000L << (n < 4 ? n : 4);     /* 1, 2, 4, 8, 10 s when the service says nothing */
    return d > 10000 ? 10000 : d;
}

ctarget_status az_lro_wait(az_ctx *az, const az_arm_resp *initial, const char *what,
                           long timeout_s, json_t **final, ctarget_error *err)
{
    const ctarget_host *h = az->h;
    if (final)
        *final = NULL;
    const char *url = initial->async_op;
    int by_async = url != NULL;
    if (!url && initial->status == 202)
        url = initial->location;
    if (!url) {
        if (final && initial->body)
            *final = json_incref(initial->body);
        return CTARGET_OK;
    }
    char *poll_url = az_strdup(url);
    long delay = initial->retry_after_ms;
    int64_t deadline = h->monotonic_ns() + (int64_t)(timeout_s > 0 ? timeout_s : 3600) *
                                               1000000000LL;
    int64_t started = h->now_ms();
    ctarget_status rc = CTARGET_OK;
    for (int n = 0;; n++) {
        long d = poll_delay(delay, n);
        if (h->monotonic_ns() + (int64_t)d * 1000000 > deadline) {
            AZ_ERR(az, err, CTARGET_E_TIMEOUT, 1,
                   "%s: still in progress after %ld s: see its state with `ctarget compute "
                   "status`, or try again", what, timeout_s > 0 ? timeout_s : 3600);
            rc = CTARGET_E_TIMEOUT;
            break;
        }
        if ((rc = h->sleep_ms(az->call, d)) != CTARGET_OK) {
            AZ_ERR(az, err, CTARGET_E_CANCELED, 0, "%s: canceled while waiting (the operation "
                   "goes on in Azure)", what);
            rc = CTARGET_E_CANCELED;
            break;
        }
        az_arm_req rq = {.method = "GET", .path = poll_url, .what = what};
        az_arm_resp r;
        if ((rc = az_arm_call(az, &rq, 0, &r, err))) {
            az_arm_resp_clear(&r);
            break;
        }
        delay = r.retry_after_ms;
        if (by_async) {
            az_lro_status st;
            char *text = r.body ? json_dumps(r.body, JSON_COMPACT) : NULL;
            int ok = text && az_parse_lro_status(text, strlen(text), &st) == 0;
            free(text);
            if (!ok) {
                AZ_ERR(az, err, CTARGET_E_REMOTE, 0, "%s: the operation status has no "
                       "\"status\" (HTTP %ld)", what, r.status);
                rc = CTARGET_E_REMOTE;
                az_arm_resp_clear(&r);
                break;
            }
            if (st.state == AZ_LRO_IN_PROGRESS) {
                uint64_t secs = (uint64_t)((h->now_ms() - started) / 1000);
                h->progress(az->call, what, st.percent >= 0 ? (uint64_t)st.percent : secs,
                            st.percent >= 0 ? 100 : 0);
                az_arm_resp_clear(&r);
                continue;
            }
            if (st.state == AZ_LRO_SUCCEEDED) {
                if (final)
                    *final = r.body ? json_incref(r.body) : NULL;
                az_arm_resp_clear(&r);
                break;
            }
            AZ_ERR(az, err, st.state == AZ_LRO_CANCELED ? CTARGET_E_CANCELED : CTARGET_E_REMOTE,
                   0, "%s: operation %s%s%s%s%s", what, st.status, st.has_error ? ": " : "",
                   st.error.code, st.has_error && st.error.message[0] ? ": " : "",
                   st.error.message);
            rc = st.state == AZ_LRO_CANCELED ? CTARGET_E_CANCELED : CTARGET_E_REMOTE;
            az_arm_resp_clear(&r);
            break;
        }
        /* Location: 202 while running; 200/201/204 when done */
        if (r.status == 202) {
            if (r.location && strcmp(r.location, poll_url)) {
                free(poll_url);
                poll_url = az_strdup(r.location);
            }
            h->progress(az->call, what, (uint64_t)((h->now_ms() - started) / 1000), 0);
            az_arm_resp_clear(&r);
            continue;
        }
        if (final)
            *final = r.body ? json_incref(r.body) : NULL;
        az_arm_resp_clear(&r);
        break;
    }
    free(poll_url);
    return rc;
}

static int prov_terminal(const json_t *body, const char **state)
{
    *state = json_string_value(
        json_object_get(json_object_get(body, "properties"), "provisioningState"));
    return !*state || !strcasecmp(*state, "Succeeded") || !strcasecmp(*state, "Failed") ||
           !strcasecmp(*state, "Canceled");
}

ctarget_status az_arm_do(az_ctx *az, const az_arm_req *req, unsigned flags, json_t **result,
                         ctarget_error *err)
{
    if (result)
        *result = NULL;
    az_arm_resp r;
    ctarget_status rc = az_arm_call(az, req, flags, &r, err);
    if (rc || r.status == 404) {
        az_arm_resp_clear(&r);
        return rc;
    }
    char who[512];
    describe(req->path, req->what, who, sizeof who);
    int is_put = !strcmp(req->method, "PUT") || !strcmp(req->method, "PATCH");
    int is_del = !strcmp(req->method, "DELETE");
    if (!(flags & AZ_WAIT)) {
        if (result && r.body)
            *result = json_incref(r.body);
        az_arm_resp_clear(&r);
        return CTARGET_OK;
    }
    json_t *fin = NULL;
    int lro = r.async_op || (r.status == 202 && r.location);
    if (lro && (rc = az_lro_wait(az, &r, who, 0, &fin, err))) {
        az_arm_resp_clear(&r);
        return rc;
    }
    if (is_del) {
        json_decref(fin);
        az_arm_resp_clear(&r);
        return CTARGET_OK;
    }
    if (!is_put) {
        if (result)
            *result = fin ? fin : r.body ? json_incref(r.body) : NULL;
        else
            json_decref(fin);
        az_arm_resp_clear(&r);
        return CTARGET_OK;
    }
    json_decref(fin);
    /* PUT/PATCH: the resource as it is now, followed until provisioningState settles when
     * the service gave no operation to poll */
    json_t *res = lro ? NULL : (r.body ? json_incref(r.body) : NULL);
    az_arm_resp_clear(&r);
    az_arm_req g = {.method = "GET", .path = req->path, .api_version = req->api_version,
                    .what = req->what};
    int64_t deadline = az->h->monotonic_ns() + 3600LL * 1000000000LL;
    for (int n = 0;; n++) {
        const char *st;
        if (res && prov_terminal(res, &st)) {
            if (st && !strcasecmp(st, "Failed")) {
                const json_t *pe = json_array_get(
                    json_object_get(json_object_get(res, "properties"), "provisioningErrors"),
                    0);
                const json_t *e = json_object_get(pe, "error");
                AZ_ERR(az, err, CTARGET_E_REMOTE, 0, "%s: provisioning Failed%s%s%s%s", who,
                       e ? ": " : "", e ? json_string_value(json_object_get(e, "code")) : "",
                       e ? ": " : "",
                       e ? json_string_value(json_object_get(e, "message")) : "");
                json_decref(res);
                return CTARGET_E_REMOTE;
            }
            break;
        }
        if (res) {
            az->h->progress(az->call, who, 0, 0);
            long d = poll_delay(-1, n);
            if (az->h->monotonic_ns() > deadline) {
                AZ_ERR(az, err, CTARGET_E_TIMEOUT, 1, "%s: still %s after an hour", who, st);
                json_decref(res);
                return CTARGET_E_TIMEOUT;
            }
            if (az->h->sleep_ms(az->call, d) != CTARGET_OK) {
                AZ_ERR(az, err, CTARGET_E_CANCELED, 0, "%s: canceled while waiting", who);
                json_decref(res);
                return CTARGET_E_CANCELED;
            }
        }
        json_decref(res);
        res = NULL;
        az_arm_resp gr;
        if ((rc = az_arm_call(az, &g, 0, &gr, err))) {
            az_arm_resp_clear(&gr);
            return rc;
        }
        res = gr.body ? json_incref(gr.body) : NULL;
        az_arm_resp_clear(&gr);
        if (!res)
            break;
    }
    if (result)
        *result = res;
    else
        json_decref(res);
    return CTARGET_OK;
}

ctarget_status az_arm_list(az_ctx *az, const az_arm_req *req,
                           int (*fn)(void *arg, json_t *item), void *arg, ctarget_error *err)
{
    az_arm_req rq = *req;
    rq.method = "GET";
    char *next = NULL;
    ctarget_status rc = CTARGET_OK;
    for (int page = 0; page < 10000; page++) {
        az_arm_resp r;
        if ((rc = az_arm_call(az, &rq, 0, &r, err))) {
            az_arm_resp_clear(&r);
            break;
        }
        json_t *v = json_object_get(r.body, "value");
        size_t i;
        json_t *it;
        int stop = 0;
        json_array_foreach(v, i, it) {
            if (fn(arg, it)) {
                stop = 1;
                break;
            }
        }
        const char *nl = json_string_value(json_object_get(r.body, "nextLink"));
        free(next);
        next = !stop && nl && *nl ? az_strdup(nl) : NULL;
        az_arm_resp_clear(&r);
        if (!next)
            break;
        rq.path = next;
        rq.query = NULL;
        rq.api_version = req->api_version;  /* kept if nextLink lacks it */
    }
    free(next);
    return rc;
}
