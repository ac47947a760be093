/* HTTP for plugins: one place for TLS verification, proxies, timeouts and the retry policy,
 * so backends do not each reinvent them (TARGETS.md: "retry policy in the core"). */
#include "config.h"

/* libcurl is loaded when the first request is made, not linked: it brings some thirty
 * shared libraries, and most ctarget commands (runs on the local target, snapshots) never
 * speak HTTP; linking it cost every process several milliseconds of start-up. */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <dlfcn.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host.h"
#include "http_int.h"
#include "log.h"
#include "util.h"

#define LIBCURL_SONAME "libcurl.so.4"

static struct libcurl {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_perform)(CURL *);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    void (*easy_cleanup)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    time_t (*getdate)(const char *, const time_t *);
    char error[256];    /* why it could not be loaded; "" once loaded */
} lc;

#define curl_global_init lc.global_init
#define curl_easy_init lc.easy_init
#undef curl_easy_setopt
#define curl_easy_setopt lc.easy_setopt
#define curl_easy_perform lc.easy_perform
#undef curl_easy_getinfo
#define curl_easy_getinfo lc.easy_getinfo
#define curl_easy_cleanup lc.easy_cleanup
#define curl_easy_strerror lc.easy_strerror
#define curl_slist_append lc.slist_append
#define curl_slist_free_all lc.slist_free_all
#define curl_getdate lc.getdate

typedef struct http_resp_impl {
    ctarget_http_response pub;   /* first: the plugin sees only this */
    char **headers;              /* "Name: value" of the final response */
    size_t n_headers;
} http_resp_impl;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

/* dlsym returns void *; going through memcpy keeps the conversion to a function pointer
 * within what ISO C allows (POSIX guarantees the representation). */
#define LOAD(field, name)                                                                  \
    do {                                                                                   \
        void *sym = dlsym(dl, name);                                                       \
        if (!sym) {                                                                        \
            snprintf(lc.error, sizeof lc.error, "%s lacks %s", LIBCURL_SONAME, name);      \
            return;                                                                        \
        }                                                                                  \
        memcpy(&lc.field, &sym, sizeof sym);                                               \
    } while (0)

static void curl_setup(void)
{
    void *dl = dlopen(LIBCURL_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        snprintf(lc.error, sizeof lc.error, "cannot load %s (%s): install libcurl4",
                 LIBCURL_SONAME, e ? e : "unknown error");
        return;
    }
    LOAD(global_init, "curl_global_init");
    LOAD(easy_init, "curl_easy_init");
    LOAD(easy_setopt, "curl_easy_setopt");
    LOAD(easy_perform, "curl_easy_perform");
    LOAD(easy_getinfo, "curl_easy_getinfo");
    LOAD(easy_cleanup, "curl_easy_cleanup");
    LOAD(easy_strerror, "curl_easy_strerror");
    LOAD(slist_append, "curl_slist_append");
    LOAD(slist_free_all, "curl_slist_free_all");
    LOAD(getdate, "curl_getdate");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    /* never dlclose: libcurl keeps global state for the life of the process */
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    sb_add(arg, data, size * n);
    return size * n;
}

void http_hdrs_clear(http_hdrs *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->v[i]);
    free(h->v);
    h->v = NULL;
    h->n = 0;
}

void http_hdrs_line(http_hdrs *h, const char *data, size_t len)
{
    /* a new status line (redirect, 100 Continue) starts a new header block */
    if (len >= 5 && !memcmp(data, "HTTP/", 5)) {
        http_hdrs_clear(h);
        return;
    }
    while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        len--;
    if (!len)
        return;
    h->v = xrealloc(h->v, (h->n + 1) * sizeof *h->v);
    h->v[h->n++] = xstrndup(data, len);
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    http_hdrs_line(arg, data, size * n);
    return size * n;
}

static int on_progress(void *arg, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a, (void)b, (void)c, (void)d;
    ctarget_call *call = arg;
    return host_table()->cancelled(call) ? 1 : 0;
}

const char *http_find_header(char **v, size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (!strncasecmp(v[i], name, nl) && v[i][nl] == ':') {
            const char *p = v[i] + nl + 1;
            while (*p == ' ' || *p == '\t')
                p++;
            return p;
        }
    return NULL;
}

const char *http_header_get0(const ctarget_http_response *resp, const char *name)
{
    const http_resp_impl *r = (const http_resp_impl *)resp;
    return r ? http_find_header(r->headers, r->n_headers, name) : NULL;
}

void http_response_free(ctarget_http_response *resp)
{
    http_resp_impl *r = (http_resp_impl *)resp;
    if (!r)
        return;
    for (size_t i = 0; i < r->n_headers; i++)
        free(r->headers[i]);
    free(r->headers);
    free(r->pub.body);
    free(r);
}

long http_retry_after_ms(char **v, size_t n)
{
    const char *ms = http_find_header(v, n, "x-ms-retry-after-ms");
    long long x;
    if (ms && parse_ll(ms, &x) == 0 && x >= 0)
        return (long)(x > 3600000 ? 3600000 : x); /* at most an hour, as for Retry-After */
    const char *ra = http_find_header(v, n, "Retry-After");
    if (!ra)
        return -1;
    if (parse_ll(ra, &x) == 0)
        return x < 0 ? 0 : (long)(x > 3600 ? 3600000 : x * 1000);
    time_t when = curl_getdate(ra, NULL);
    if (when < 0)
        return -1;
    /* capped in seconds, before the product: a date in the year 10^9 overflowed it */
    long long d = (long long)when - (long long)time(NULL);
    return d < 0 ? 0 : (long)(d > 3600 ? 3600000 : d * 1000);
}

int http_curl_available(void)
{
    pthread_once(&curl_once, curl_setup);
    return lc.easy_init && lc.getdate;
}

static int retryable_status(long s)
{
    return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

static long backoff_ms(int attempt)
{
    const char *b = getenv("CTARGET_HTTP_BACKOFF_MS"); /* tests shorten the base delay */
    long long base = 500;
    if (b)
        parse_ll(b, &base);
    long long d = base << (attempt - 1 < 6 ? attempt - 1 : 6);
    if (d > 30000)
        d = 30000;
    /* full jitter in [d/2, d] spreads clients that failed together */
    return (long)(d / 2 + (d > 1 ? rand() % (d / 2 + 1) : 0));
}

/* The URL without its query: SAS tokens and signatures live there and must not be logged. */
static char *url_for_humans(const char *url)
{
    const char *q = strchr(url, '?');
    return q ? xasprintf("%.*s?...", (int)(q - url), url) : xstrdup(url);
}

static int transient_curl(CURLcode cc);

static ctarget_status curl_failure(CURLcode cc, const char *method, const char *shown,
                                   const char *detail, int attempts, ctarget_error *err)
{
    const char *why = detail && *detail ? detail : curl_easy_strerror(cc);
    ctarget_status code;
    switch (cc) {
    case CURLE_ABORTED_BY_CALLBACK:
        ct_err(err, CTARGET_E_CANCELED, "%s %s canceled", method, shown);
        return CTARGET_E_CANCELED;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
        ct_err(err, CTARGET_E_HOSTKEY,
               "%s %s: TLS peer not verified (%s); if this server uses a private CA, point "
               "CTARGET_CA_BUNDLE at its certificate", method, shown, why);
        return CTARGET_E_HOSTKEY;
    case CURLE_OPERATION_TIMEDOUT:
        code = CTARGET_E_TIMEOUT;
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
        code = CTARGET_E_UNREACHABLE;
        break;
    default:
        code = CTARGET_E_FAILED;
        break;
    }
    ct_err(err, code, "%s %s failed after %d attempt%s: %s", method, shown, attempts,
           attempts == 1 ? "" : "s", why);
    /* a malformed URL or an unsupported feature will fail the same way next time */
    err->transient = transient_curl(cc) || code == CTARGET_E_UNREACHABLE;
    return code;
}

static int transient_curl(CURLcode cc)
{
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

ctarget_status http_request(ctarget_call *call, const ctarget_http_request *req,
                            ctarget_http_response **resp, ctarget_error *err)
{
    *resp = NULL;
    if (!req || req->struct_size < offsetof(ctarget_http_request, flags) + sizeof(unsigned) ||
        !req->method || !req->url) {
        ct_err(err, CTARGET_E_USAGE, "http_request: method and url are required");
        return CTARGET_E_USAGE;
    }
    if (strncasecmp(req->url, "https://", 8) && strncasecmp(req->url, "http://", 7)) {
        ct_err(err, CTARGET_E_USAGE, "http_request: only http and https URLs are allowed");
        return CTARGET_E_USAGE;
    }
    if (!http_curl_available()) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "HTTP is not available: %s",
               lc.error[0] ? lc.error : "libcurl did not load");
        return CTARGET_E_UNSUPPORTED;
    }
    const char *m = req->method;
    int idempotent = !strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "PUT") ||
                     !strcmp(m, "DELETE") || !strcmp(m, "OPTIONS") ||
                     (req->flags & CTARGET_HTTP_RETRY_UNSAFE);
    int max = req->max_attempts > 0 ? req->max_attempts : 5;
    long timeout = req->timeout_ms > 0 ? req->timeout_ms : 60000;
    const char *ca = getenv("CTARGET_CA_BUNDLE");
    char *shown = url_for_humans(req->url);
    struct curl_slist *hl = NULL;
    for (size_t i = 0; req->headers && req->headers[i]; i++)
        hl = curl_slist_append(hl, req->headers[i]);
    if (!req->body || !req->body_len)
        hl = curl_slist_append(hl, "Expect:");

    ctarget_status rc = CTARGET_OK;
    for (int attempt = 1;; attempt++) {
        if (host_table()->cancelled(call)) {
            ct_err(err, CTARGET_E_CANCELED, "%s %s canceled", m, shown);
            rc = CTARGET_E_CANCELED;
            break;
        }
        CURL *c = curl_easy_init();
        strbuf body;
        sb_init(&body);
        http_hdrs h = {0};
        char ebuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(c, CURLOPT_URL, req->url);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        if (ca && *ca)
            curl_easy_setopt(c, CURLOPT_CAINFO, ca);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout < 30000 ? timeout : 30000L);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "ctarget/" PACKAGE_VERSION);
        curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, call);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
        if (!strcmp(m, "HEAD"))
            curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        else if (strcmp(m, "GET"))
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
        if (req->body && req->body_len) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        } else if (!strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH")) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        }
        CURLcode cc = curl_easy_perform(c);
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);

        long delay = -1;
        int retry = 0;
        if (cc == CURLE_OK) {
            /* 429 and 503 mean the request was not processed: safe to repeat any method */
            retry = retryable_status(status) &&
                    (idempotent || status == 429 || status == 503) && attempt < max;
            if (retry)
                delay = http_retry_after_ms(h.v, h.n);
            if (!retry) {
                http_resp_impl *r = xcalloc(1, sizeof *r);
                r->pub.struct_size = sizeof r->pub;
                r->pub.status = status;
                r->pub.body_len = body.len;
                r->pub.body = sb_detach(&body);
                r->pub.attempts = attempt;
                r->headers = h.v;
                r->n_headers = h.n;
                *resp = &r->pub;
                break;
            }
            log_msg(CTARGET_LOG_INFO, "%s %s returned HTTP %ld; retrying (attempt %d of %d)",
                    m, shown, status, attempt + 1, max);
        } else {
            retry = transient_curl(cc) && idempotent && attempt < max;
            if (!retry) {
                rc = curl_failure(cc, m, shown, ebuf, attempt, err);
                sb_free(&body);
                http_hdrs_clear(&h);
                break;
            }
            log_msg(CTARGET_LOG_INFO, "%s %s: %s; retrying (attempt %d of %d)", m, shown,
                    ebuf[0] ? ebuf : curl_easy_strerror(cc), attempt + 1, max);
        }
        sb_free(&body);
        http_hdrs_clear(&h);
        if (delay < 0)
            delay = backoff_ms(attempt);
        if (host_table()->sleep_ms(call, delay) != CTARGET_OK) {
            ct_err(err, CTARGET_E_CANCELED, "%s %s canceled", m, shown);
            rc = CTARGET_E_CANCELED;
            break;
        }
    }
    curl_slist_free_all(hl);
    free(shown);
    return rc;
}
