/* Blob storage client (Azure Storage REST / Azurite): SAS or Shared Key.
 *
 * Shared Key (https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key):
 *   StringToSign = VERB \n Content-Encoding \n Content-Language \n Content-Length (empty when
 *   0) \n Content-MD5 \n Content-Type \n Date \n If-Modified-Since \n If-Match \n
 *   If-None-Match \n If-Unmodified-Since \n Range \n CanonicalizedHeaders
 *   CanonicalizedResource
 *   CanonicalizedHeaders: x-ms-* lowercased, sorted, "name:value\n".
 *   CanonicalizedResource: "/" account + the URI's (encoded) path, then for each query
 *   parameter sorted by name "\nname:value" (decoded).  With Azurite's path-style URLs the
 *   path starts with the account, so the account appears twice.
 * Every header we sign is one we send, and we send every header curl would otherwise add
 * (Content-Type), so what Azure/Azurite recompute matches. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "azure_int.h"

#define BLOCK_SIZE (4u * 1024 * 1024)
#define MAX_TRIES 5

struct az_blob {
    az_ctx *az;
    char *base;          /* https://host[:port][/account]/container (no trailing '/') */
    char *path0;         /* the URL path of base ("/account/container" or "/container") */
    char *sas;           /* query of the SAS, without '?' (secret) */
    char *account;
    unsigned char *key;  /* decoded account key (secret) */
    size_t key_len;
    char *container;
    char *folder;        /* the folder a SAS URL named inside the container, or "" */
    uint64_t requests, bytes_sent;
};

typedef struct qp {
    const char *name, *value;   /* value as is (decoded); escaped in the URL */
} qp;

/* ---- open/close ------------------------------------------------------------------------ */

static az_blob *blob_new(az_ctx *az)
{
    az_blob *b = calloc(1, sizeof *b);
    if (!b)
        abort();
    b->az = az;
    return b;
}

void az_blob_close(az_blob *b)
{
    if (!b)
        return;
    free(b->base);
    free(b->path0);
    az_wipe_free(b->sas);
    free(b->account);
    if (b->key) {
        volatile unsigned char *k = b->key;
        for (size_t i = 0; i < b->key_len; i++)
            k[i] = 0;
        free(b->key);
    }
    free(b->container);
    free(b->folder);
    free(b);
}

static const char *url_path(const char *url)
{
    const char *p = strstr(url, "://");
    p = p ? strchr(p + 3, '/') : NULL;
    return p ? p : "/";
}

/* A SAS URL names a container, or a folder in it (Azure ML's startPendingUpload gives
 * ".../CONTAINER/LocalUpload/HASH?sv=...&sr=c&sig=...").  The container is the first path
 * segment on *.blob.* hosts, the second on path-style hosts (Azurite: /ACCOUNT/CONTAINER). */
ctarget_status az_blob_open_sas(az_ctx *az, const char *url, az_blob **out, ctarget_error *err)
{
    *out = NULL;
    const char *q = strchr(url, '?');
    const char *hs = strstr(url, "://");
    const char *ps = hs ? strchr(hs + 3, '/') : NULL;
    if (az_url_ok(url, 0) != 0 || !q || !strstr(q, "sig=") || !ps || ps > q) {
        AZ_ERR(az, err, CTARGET_E_REMOTE, 0,
               "the blob container URL the service gave is not an https SAS URL");
        return CTARGET_E_REMOTE;
    }
    char *host = az_asprintf("%.*s", (int)(ps - hs - 3), hs + 3);
    int path_style = !strstr(host, ".blob.");
    free(host);
    char *path = az_asprintf("%.*s", (int)(q - ps), ps);   /* "/a/b/c" */
    size_t pl = strlen(path);
    while (pl > 1 && path[pl - 1] == '/')
        path[--pl] = '\0';
    /* end of the container segment */
    const char *p = path;
    for (int seg = 0; seg <= path_style && p; seg++)
        p = strchr(p + 1, '/');
    size_t cont_end = p ? (size_t)(p - path) : pl;
    const char *cstart = path;
    for (int seg = 0; seg < path_style; seg++)
        cstart = strchr(cstart + 1, '/');
    if (!cstart || cont_end <= (size_t)(cstart - path) + 1) {
        free(path);
        AZ_ERR(az, err, CTARGET_E_REMOTE, 0,
               "the blob SAS URL the service gave names no container");
        return CTARGET_E_REMOTE;
    }
    az_blob *b = blob_new(az);
    b->base = az_asprintf("%.*s%.*s", (int)(ps - url), url, (int)cont_end, path);
    b->path0 = az_asprintf("%.*s", (int)cont_end, path);
    b->container = az_asprintf("%.*s", (int)(cont_end - (size_t)(cstart - path) - 1),
                               cstart + 1);
    b->folder = cont_end < pl ? az_url_unescape(path + cont_end + 1) : az_strdup("");
    b->sas = az_strdup(q + 1);
    free(path);
    *out = b;
    return CTARGET_OK;
}

const char *az_blob_folder0(const az_blob *b)
{
    return b->folder ? b->folder : "";
}

const char *az_blob_container0(const az_blob *b)
{
    return b->container;
}

ctarget_status az_blob_open_key(az_ctx *az, const char *endpoint, const char *account,
                                const char *key_b64, const char *container, az_blob **out,
                                ctarget_error *err)
{
    *out = NULL;
    if (az_url_ok(endpoint, 0) != 0 || strchr(endpoint, '?')) {
        AZ_ERR(az, err, CTARGET_E_CONFIG, 0, "blob endpoint %s is not an https URL", endpoint);
        return CTARGET_E_CONFIG;
    }
    size_t kl = 0;
    unsigned char *key = az_unb64(key_b64, &kl);
    if (!key || !kl) {
        free(key);
        AZ_ERR(az, err, CTARGET_E_AUTH, 0,
               "the account key of storage account %s is not base64: check the datastore's "
               "credentials", account);
        return CTARGET_E_AUTH;
    }
    az_blob *b = blob_new(az);
    size_t n = strlen(endpoint);
    while (n > 8 && endpoint[n - 1] == '/')
        n--;
    char *ec = az_url_escape(container, 0);
    b->base = az_asprintf("%.*s/%s", (int)n, endpoint, ec);
    free(ec);
    b->path0 = az_strdup(url_path(b->base));
    b->account = az_strdup(account);
    b->key = key;
    b->key_len = kl;
    b->container = az_strdup(container);
    *out = b;
    return CTARGET_OK;
}

void az_blob_stats(const az_blob *b, uint64_t *requests, uint64_t *bytes_sent)
{
    if (requests)
        *requests = b->requests;
    if (bytes_sent)
        *bytes_sent = b->bytes_sent;
}

/* ---- signing --------------------------------------------------------------------------- */

static int cmp_qp(const void *a, const void *b)
{
    return strcmp(((const qp *)a)->name, ((const qp *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Authorization header for Shared Key; hdrs are the "Name: value" we send. */
static char *shared_key_auth(const az_blob *b, const char *method, const char *path,
                             const qp *q, size_t nq, char **hdrs, size_t nh, size_t body_len)
{
    const char *std[] = {"Content-Encoding", "Content-Language", "Content-Length",
                         "Content-MD5", "Content-Type", "Date", "If-Modified-Since",
                         "If-Match", "If-None-Match", "If-Unmodified-Since", "Range"};
    size_t cap = 4096;
    for (size_t i = 0; i < nh; i++)
        cap += strlen(hdrs[i]) + 2;
    for (size_t i = 0; i < nq; i++)
        cap += strlen(q[i].name) + strlen(q[i].value) + 3;
    cap += strlen(path) + strlen(b->account);
    char *s = malloc(cap), *p = s;
    if (!s)
        abort();
    p += sprintf(p, "%s\n", method);
    for (size_t k = 0; k < sizeof std / sizeof std[0]; k++) {
        const char *v = "";
        char lenbuf[32];
        if (!strcmp(std[k], "Content-Length")) {
            if (body_len) {
                snprintf(lenbuf, sizeof lenbuf, "%zu", body_len);
                v = lenbuf;
            }
        } else {
            size_t l = strlen(std[k]);
            for (size_t i = 0; i < nh; i++)
                if (!strncasecmp(hdrs[i], std[k], l) && hdrs[i][l] == ':') {
                    v = hdrs[i] + l + 1;
                    while (*v == ' ')
                        v++;
                }
        }
        p += sprintf(p, "%s\n", v);
    }
    /* canonicalized headers */
    char **xs = calloc(nh + 1, sizeof *xs);
    size_t nx = 0;
    for (size_t i = 0; i < nh; i++)
        if (!strncasecmp(hdrs[i], "x-ms-", 5)) {
            char *c = az_strdup(hdrs[i]);
            char *colon = strchr(c, ':');
            for (char *t = c; t < colon; t++)
                *t = (char)(*t >= 'A' && *t <= 'Z' ? *t + 32 : *t);
            char *v = colon + 1;
            while (*v == ' ')
                v++;
            memmove(colon + 1, v, strlen(v) + 1);
            xs[nx++] = c;
        }
    qsort(xs, nx, sizeof *xs, cmp_str);
    for (size_t i = 0; i < nx; i++) {
        p += sprintf(p, "%s\n", xs[i]);
        free(xs[i]);
    }
    free(xs);
    /* canonicalized resource */
    p += sprintf(p, "/%s%s", b->account, path);
    qp *sq = malloc((nq + 1) * sizeof *sq);
    if (!sq)
        abort();
    if (nq) {
        memcpy(sq, q, nq * sizeof *q);
        qsort(sq, nq, sizeof *sq, cmp_qp);
    }
    for (size_t i = 0; i < nq; i++) {
        p += sprintf(p, "\n");
        for (const char *c = sq[i].name; *c; c++)
            *p++ = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
        p += sprintf(p, ":%s", sq[i].value);
    }
    free(sq);
    unsigned char mac[32];
    unsigned int ml = sizeof mac;
    HMAC(EVP_sha256(), b->key, (int)b->key_len, (const unsigned char *)s, (size_t)(p - s), mac,
         &ml);
    free(s);
    char *sig = az_b64(mac, ml, 0);
    char *auth = az_asprintf("Authorization: SharedKey %s:%s", b->account, sig);
    free(sig);
    return auth;
}

/* ---- one request ----------------------------------------------------------------------- */

typedef struct breq {
    const char *method;
    const char *name;           /* blob name, or NULL for the container */
    const qp *q;
    size_t nq;
    const char *const *hdrs;    /* extra headers, NULL-terminated */
    const void *body;
    size_t body_len;
    int max_attempts;           /* 0: the host's default */
} breq;

static ctarget_status blob_send(az_blob *b, const breq *r, ctarget_http_response **resp,
                                ctarget_error *err)
{
    const ctarget_host *h = b->az->h;
    char *ename = r->name ? az_url_escape(r->name, 1) : NULL;
    char *path = ename ? az_asprintf("%s/%s", b->path0, ename) : az_strdup(b->path0);
    char *url = ename ? az_asprintf("%s/%s", b->base, ename) : az_strdup(b->base);
    free(ename);
    /* query: ours (escaped), then the SAS as given */
    size_t ul = strlen(url) + 2 + (b->sas ? strlen(b->sas) : 0);
    for (size_t i = 0; i < r->nq; i++)
        ul += 3 * (strlen(r->q[i].name) + strlen(r->q[i].value)) + 2;
    char *full = malloc(ul + 1), *p = full;
    if (!full)
        abort();
    p += sprintf(p, "%s", url);
    char sep = '?';
    for (size_t i = 0; i < r->nq; i++) {
        char *en = az_url_escape(r->q[i].name, 0), *ev = az_url_escape(r->q[i].value, 0);
        p += sprintf(p, "%c%s=%s", sep, en, ev);
        sep = '&';
        free(en);
        free(ev);
    }
    if (b->sas)
        p += sprintf(p, "%c%s", sep, b->sas);
    free(url);

    char date[64];
    time_t now = (time_t)(h->now_ms() / 1000);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "x-ms-date: %a, %d %b %Y %H:%M:%S GMT", &tm);
    char *hv[24];
    size_t nh = 0;
    hv[nh++] = az_strdup(date);
    hv[nh++] = az_strdup("x-ms-version: " AZ_BLOB_API_VERSION);
    int has_ct = 0;
    for (size_t i = 0; r->hdrs && r->hdrs[i] && nh < 20; i++) {
        hv[nh++] = az_strdup(r->hdrs[i]);
        has_ct |= !strncasecmp(r->hdrs[i], "Content-Type:", 13);
    }
    if (!has_ct && (!strcmp(r->method, "PUT") || !strcmp(r->method, "POST")))
        hv[nh++] = az_strdup("Content-Type: application/octet-stream");
    /* no "Expect: 100-continue" round trip (curl's default above 1 MiB; it waits up to 1 s
     * when a proxy does not answer it); not an x-ms- header, so not signed */
    if (r->body_len)
        hv[nh++] = az_strdup("Expect:");
    if (b->key) {
        char *auth = shared_key_auth(b, r->method, path, r->q, r->nq, hv, nh, r->body_len);
        hv[nh++] = auth;
    }
    hv[nh] = NULL;
    ctarget_http_request rq;
    memset(&rq, 0, sizeof rq);
    rq.struct_size = sizeof rq;
    rq.method = r->method;
    rq.url = full;
    rq.headers = (const char *const *)hv;
    rq.body = r->body;
    rq.body_len = r->body_len;
    rq.timeout_ms = 120000;
    rq.max_attempts = r->max_attempts;
    b->requests++;
    b->bytes_sent += r->body_len;
    ctarget_status rc = h->http_request(b->az->call, &rq, resp, err);
    for (size_t i = 0; i < nh; i++)
        az_wipe_free(hv[i]);
    az_wipe_free(full);
    free(path);
    return rc;
}

/* <Code> and the first line of <Message> from a storage error body */
static void xml_text(const char *body, const char *tag, char *out, size_t cap)
{
    out[0] = '\0';
    if (!body)
        return;
    char open[64], close[64];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *a = strstr(body, open), *e;
    if (!a || !(e = strstr(a += strlen(open), close)))
        return;
    size_t n = (size_t)(e - a);
    size_t nl = strcspn(a, "\r\n");
    if (nl < n)
        n = nl;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, a, n);
    out[n] = '\0';
}

static ctarget_status blob_error(az_blob *b, const char *op, const char *name,
                                 const ctarget_http_response *resp, ctarget_error *err)
{
    char code[128], msg[512];
    xml_text(resp->body, "Code", code, sizeof code);
    xml_text(resp->body, "Message", msg, sizeof msg);
    if (!code[0]) {
        const char *ec = b->az->h->http_header_get0(resp, "x-ms-error-code");
        snprintf(code, sizeof code, "%s", ec ? ec : "");
    }
    long st = resp->status;
    ctarget_status c = st == 404 ? CTARGET_E_NOT_FOUND
                       : st == 403 || st == 401 ? CTARGET_E_AUTH
                       : st == 409 ? CTARGET_E_EXISTS
                                   : CTARGET_E_REMOTE;
    const char *hint = c == CTARGET_E_AUTH ? (b->key ? ": check the storage account key"
                                                     : ": the SAS may have expired; ask again")
                                           : "";
    AZ_ERR(b->az, err, c, st == 429 || st >= 500, "%s blob %s%s%s in container %s: HTTP %ld%s%s%s%s%s",
           op, name ? "'" : "", name ? name : "", name ? "'" : "", b->container, st,
           code[0] ? " " : "", code, msg[0] ? ": " : "", msg, hint);
    return c;
}

/* ---- container ------------------------------------------------------------------------- */

ctarget_status az_blob_create_container(az_blob *b, ctarget_error *err)
{
    qp q[] = {{"restype", "container"}};
    breq r = {.method = "PUT", .q = q, .nq = 1};
    ctarget_http_response *resp;
    ctarget_status rc = blob_send(b, &r, &resp, err);
    if (rc)
        return rc;
    if (resp->status != 201 && resp->status != 409)
        rc = blob_error(b, "create container for", NULL, resp, err);
    b->az->h->http_response_free(resp);
    return rc;
}

/* ---- size, get, list, delete ------------------------------------------------------------ */

ctarget_status az_blob_size(az_blob *b, const char *name, uint64_t *size, ctarget_error *err)
{
    breq r = {.method = "HEAD", .name = name};
    ctarget_http_response *resp;
    ctarget_status rc = blob_send(b, &r, &resp, err);
    if (rc)
        return rc;
    if (resp->status == 200) {
        const char *cl = b->az->h->http_header_get0(resp, "Content-Length");
        *size = cl ? strtoull(cl, NULL, 10) : 0;
    } else {
        rc = blob_error(b, "size of", name, resp, err);
    }
    b->az->h->http_response_free(resp);
    return rc;
}

/* Content-MD5 of a blob (base64), "" when it has none; NOT_FOUND when absent. */
static ctarget_status blob_md5(az_blob *b, const char *name, char *md5, size_t cap,
                               uint64_t *size, ctarget_error *err)
{
    breq r = {.method = "HEAD", .name = name};
    ctarget_http_response *resp;
    ctarget_status rc = blob_send(b, &r, &resp, err);
    if (rc)
        return rc;
    if (resp->status == 200) {
        const char *m = b->az->h->http_header_get0(resp, "Content-MD5");
        const char *cl = b->az->h->http_header_get0(resp, "Content-Length");
        snprintf(md5, cap, "%s", m ? m : "");
        *size = cl ? strtoull(cl, NULL, 10) : 0;
    } else {
        rc = blob_error(b, "check of", name, resp, err);
    }
    b->az->h->http_response_free(resp);
    return rc;
}

#define GET_CHUNK (8u * 1024 * 1024)

ctarget_status az_blob_get(az_blob *b, const char *name, uint64_t offset, int64_t length,
                           ctarget_write_fn out, void *out_arg, uint64_t *size,
                           ctarget_error *err)
{
    const ctarget_host *h = b->az->h;
    uint64_t pos = offset;
    uint64_t end = length < 0 ? UINT64_MAX : offset + (uint64_t)length;
    if (size)
        *size = 0;
    while (pos < end) {
        uint64_t last = end - pos > GET_CHUNK ? pos + GET_CHUNK - 1 : end - 1;
        char range[96];
        snprintf(range, sizeof range, "x-ms-range: bytes=%llu-%llu", (unsigned long long)pos,
                 (unsigned long long)last);
        const char *hd[] = {range, NULL};
        breq r = {.method = "GET", .name = name, .hdrs = hd};
        ctarget_http_response *resp;
        ctarget_status rc = blob_send(b, &r, &resp, err);
        if (rc)
            return rc;
        uint64_t total = 0;
        const char *cr = h->http_header_get0(resp, "Content-Range");
        const char *sl = cr ? strrchr(cr, '/') : NULL;
        if (sl)
            total = strtoull(sl + 1, NULL, 10);
        if (resp->status == 416) {
            /* at or past the end: nothing new (an append blob read by offset) */
            if (size)
                *size = total;
            h->http_response_free(resp);
            return CTARGET_OK;
        }
        if (resp->status != 200 && resp->status != 206) {
            rc = blob_error(b, "read of", name, resp, err);
            h->http_response_free(resp);
            return rc;
        }
        if (resp->status == 200) {
            /* the whole blob (a service that ignores ranges on an empty blob) */
            total = resp->body_len;
            if (pos > 0) {
                size_t skip = pos < resp->body_len ? (size_t)pos : resp->body_len;
                memmove(resp->body, resp->body + skip, resp->body_len - skip);
                resp->body_len -= skip;
            }
        }
        if (size)
            *size = total;
        size_t n = resp->body_len;
        if ((uint64_t)n > end - pos)
            n = (size_t)(end - pos);   /* a whole-blob answer to a range request */
        if (n && out(out_arg, resp->body, n)) {
            h->http_response_free(resp);
            AZ_ERR(b->az, err, CTARGET_E_CANCELED, 0, "reading blob '%s' stopped", name);
            return CTARGET_E_CANCELED;
        }
        h->http_response_free(resp);
        pos += n;
        if (!n || pos >= total)
            break;
    }
    return CTARGET_OK;
}

static char *xml_unescape(const char *s, size_t n)
{
    char *o = malloc(n + 1), *p = o;
    if (!o)
        abort();
    for (size_t i = 0; i < n;) {
        if (s[i] == '&') {
            static const struct { const char *e; char c; } ents[] = {
                {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
            int done = 0;
            for (size_t k = 0; k < 5 && !done; k++) {
                size_t l = strlen(ents[k].e);
                if (i + l <= n && !strncmp(s + i, ents[k].e, l)) {
                    *p++ = ents[k].c;
                    i += l;
                    done = 1;
                }
            }
            if (!done && i + 3 < n && s[i + 1] == '#') {
                char *end;
                long c = s[i + 2] == 'x' ? strtol(s + i + 3, &end, 16) : strtol(s + i + 2, &end, 10);
                if (*end == ';' && c > 0 && c < 128) {
                    *p++ = (char)c;
                    i = (size_t)(end - s) + 1;
                    done = 1;
                }
            }
            if (done)
                continue;
        }
        *p++ = s[i++];
    }
    *p = '\0';
    return o;
}

ctarget_status az_blob_list(az_blob *b, const char *prefix,
                            int (*fn)(void *arg, const char *name, uint64_t size), void *arg,
                            ctarget_error *err)
{
    char *marker = NULL;
    ctarget_status rc = CTARGET_OK;
    for (int page = 0; page < 100000; page++) {
        qp q[5];
        size_t nq = 0;
        q[nq++] = (qp){"restype", "container"};
        q[nq++] = (qp){"comp", "list"};
        if (prefix && *prefix)
            q[nq++] = (qp){"prefix", prefix};
        if (marker)
            q[nq++] = (qp){"marker", marker};
        breq r = {.method = "GET", .q = q, .nq = nq};
        ctarget_http_response *resp;
        if ((rc = blob_send(b, &r, &resp, err)))
            break;
        if (resp->status != 200) {
            rc = blob_error(b, "listing", NULL, resp, err);
            b->az->h->http_response_free(resp);
            break;
        }
        int stop = 0;
        for (const char *p = resp->body; p && (p = strstr(p, "<Blob>")) && !stop;) {
            const char *e = strstr(p, "</Blob>");
            if (!e)
                break;
            const char *na = strstr(p, "<Name>"), *ne = na ? strstr(na, "</Name>") : NULL;
            const char *la = strstr(p, "<Content-Length>");
            if (na && ne && ne < e) {
                char *name = xml_unescape(na + 6, (size_t)(ne - na - 6));
                uint64_t sz = la && la < e ? strtoull(la + 16, NULL, 10) : 0;
                stop = fn(arg, name, sz);
                free(name);
            }
            p = e + 7;
        }
        free(marker);
        marker = NULL;
        char nm[1024];
        xml_text(resp->body, "NextMarker", nm, sizeof nm);
        b->az->h->http_response_free(resp);
        if (stop || !nm[0])
            break;
        marker = xml_unescape(nm, strlen(nm));
    }
    free(marker);
    return rc;
}

ctarget_status az_blob_delete(az_blob *b, const char *name, ctarget_error *err)
{
    breq r = {.method = "DELETE", .name = name};
    ctarget_http_response *resp;
    ctarget_status rc = blob_send(b, &r, &resp, err);
    if (rc)
        return rc;
    if (resp->status != 202 && resp->status != 200 && resp->status != 404)
        rc = blob_error(b, "delete of", name, resp, err);
    b->az->h->http_response_free(resp);
    return rc;
}

/* ---- upload ------------------------------------------------------------------------------ */

typedef struct src {
    const unsigned char *mem;   /* or */
    int fd;
    size_t len;
} src;

static ctarget_status src_read(az_blob *b, const src *s, size_t off, unsigned char *buf,
                               size_t n, ctarget_error *err)
{
    if (s->mem) {
        memcpy(buf, s->mem + off, n);
        return CTARGET_OK;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(s->fd, buf + got, n - got, (off_t)(off + got));
        if (r <= 0) {
            b->az->h->error_set(err, CTARGET_E_IO, 0, r < 0 ? errno : 0,
                                "reading the file to upload failed: %s",
                                r < 0 ? strerror(errno) : "it shrank");
            return CTARGET_E_IO;
        }
        got += (size_t)r;
    }
    return CTARGET_OK;
}

static void md5_b64(const void *d, size_t n, char out[32])
{
    unsigned char m[16];
    unsigned int ml = sizeof m;
    EVP_Digest(d, n, m, &ml, EVP_md5(), NULL);
    char *s = az_b64(m, ml, 0);
    snprintf(out, 32, "%s", s);
    free(s);
}

static long backoff(int attempt)
{
    const char *e = getenv("CTARGET_HTTP_BACKOFF_MS");
    long base = e ? strtol(e, NULL, 10) : 500;
    if (base <= 0)
        base = 500;
    long d = base << (attempt < 6 ? attempt : 6);
    return d > 30000 ? 30000 : d;
}

/* Sends one upload request (Put Blob, Put Block or Put Block List) with our own retries:
 * 429/503 were not processed, so they are resent; after a dropped connection or another
 * 5xx, already_there() is asked first, so what arrived is not sent twice. */
typedef int (*there_fn)(az_blob *b, void *arg);

static ctarget_status upload_req(az_blob *b, const breq *r0, const char *name, long want,
                                 there_fn already_there, void *targ, ctarget_error *err)
{
    const ctarget_host *h = b->az->h;
    breq r = *r0;
    r.max_attempts = 1;
    for (int attempt = 0;; attempt++) {
        ctarget_http_response *resp = NULL;
        ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
        ctarget_status rc = blob_send(b, &r, &resp, &e2);
        long delay = -1;
        int unprocessed = 0;
        if (rc == CTARGET_OK) {
            if (resp->status == want) {
                h->http_response_free(resp);
                return CTARGET_OK;
            }
            long st = resp->status;
            if (!(st == 429 || st == 500 || st == 502 || st == 503 || st == 504 || st == 408) ||
                attempt + 1 >= MAX_TRIES) {
                rc = blob_error(b, "upload of", name, resp, err);
                h->http_response_free(resp);
                return rc;
            }
            unprocessed = st == 429 || st == 503;
            const char *ra = h->http_header_get0(resp, "Retry-After");
            if (ra)
                delay = strtol(ra, NULL, 10) * 1000;
            h->http_response_free(resp);
        } else if (!e2.transient || rc == CTARGET_E_CANCELED || attempt + 1 >= MAX_TRIES) {
            h->error_set(err, rc, e2.transient, e2.sys_errno, "%s", e2.message);
            return rc;
        }
        if (delay < 0 || delay > 60000)
            delay = delay > 60000 ? 60000 : backoff(attempt);
        if (h->sleep_ms(b->az->call, delay) != CTARGET_OK) {
            AZ_ERR(b->az, err, CTARGET_E_CANCELED, 0, "upload of blob '%s' canceled", name);
            return CTARGET_E_CANCELED;
        }
        if (!unprocessed && already_there && already_there(b, targ))
            return CTARGET_OK;
        h->log(b->az->call, CTARGET_LOG_INFO, "upload of blob '%s' retried (attempt %d of %d)",
               name, attempt + 2, MAX_TRIES);
    }
}

typedef struct blob_there {
    const char *name;
    const char *md5;
    uint64_t len;
} blob_there;

static int blob_is_there(az_blob *b, void *arg)
{
    blob_there *t = arg;
    char md5[64];
    uint64_t sz = 0;
    ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
    if (blob_md5(b, t->name, md5, sizeof md5, &sz, &e2) != CTARGET_OK)
        return 0;
    return sz == t->len && !strcmp(md5, t->md5);
}

typedef struct block_there {
    const char *name;
    const char *id;
    size_t len;
} block_there;

static int block_is_there(az_blob *b, void *arg)
{
    block_there *t = arg;
    qp q[] = {{"comp", "blocklist"}, {"blocklisttype", "uncommitted"}};
    breq r = {.method = "GET", .name = t->name, .q = q, .nq = 2};
    ctarget_http_response *resp;
    ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
    if (blob_send(b, &r, &resp, &e2) != CTARGET_OK)
        return 0;
    int found = 0;
    if (resp->status == 200 && resp->body) {
        char want[128];
        snprintf(want, sizeof want, "<Name>%s</Name>", t->id);
        const char *p = strstr(resp->body, want);
        const char *sz = p ? strstr(p, "<Size>") : NULL;
        found = sz && strtoull(sz + 6, NULL, 10) == t->len;
    }
    b->az->h->http_response_free(resp);
    return found;
}

static ctarget_status put_src(az_blob *b, const char *name, const src *s,
                              const char *content_type, ctarget_error *err)
{
    const ctarget_host *h = b->az->h;
    char ct[256];
    snprintf(ct, sizeof ct, "Content-Type: %s",
             content_type ? content_type : "application/octet-stream");
    if (s->len <= BLOCK_SIZE) {
        unsigned char *buf = malloc(s->len ? s->len : 1);
        if (!buf)
            abort();
        ctarget_status rc = src_read(b, s, 0, buf, s->len, err);
        if (rc) {
            free(buf);
            return rc;
        }
        char md5[32], mh[64];
        md5_b64(buf, s->len, md5);
        snprintf(mh, sizeof mh, "Content-MD5: %s", md5);
        const char *hd[] = {ct, mh, "x-ms-blob-type: BlockBlob", NULL};
        breq r = {.method = "PUT", .name = name, .hdrs = hd, .body = buf, .body_len = s->len};
        blob_there t = {name, md5, s->len};
        rc = upload_req(b, &r, name, 201, blob_is_there, &t, err);
        if (rc == CTARGET_OK)
            h->progress(b->az->call, "upload", s->len, s->len);
        free(buf);
        return rc;
    }
    /* Put Block for each 4 MiB, then Put Block List with the whole blob's MD5 */
    size_t nblocks = (s->len + BLOCK_SIZE - 1) / BLOCK_SIZE;
    unsigned char *buf = malloc(BLOCK_SIZE);
    EVP_MD_CTX *whole = EVP_MD_CTX_new();
    EVP_DigestInit_ex(whole, EVP_md5(), NULL);
    size_t xml_cap = 64 + nblocks * 64;
    char *xml = malloc(xml_cap), *xp = xml;
    if (!buf || !xml)
        abort();
    xp += sprintf(xp, "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    ctarget_status rc = CTARGET_OK;
    for (size_t i = 0; i < nblocks && rc == CTARGET_OK; i++) {
        size_t off = i * BLOCK_SIZE;
        size_t n = s->len - off < BLOCK_SIZE ? s->len - off : BLOCK_SIZE;
        if ((rc = src_read(b, s, off, buf, n, err)))
            break;
        EVP_DigestUpdate(whole, buf, n);
        char raw[32], md5[32], mh[64];
        snprintf(raw, sizeof raw, "ctarget-block-%08zu", i);   /* ids of one length */
        char *id = az_b64((const unsigned char *)raw, strlen(raw), 0);
        md5_b64(buf, n, md5);
        snprintf(mh, sizeof mh, "Content-MD5: %s", md5);
        const char *hd[] = {ct, mh, NULL};
        qp q[] = {{"comp", "block"}, {"blockid", id}};
        breq r = {.method = "PUT", .name = name, .q = q, .nq = 2, .hdrs = hd, .body = buf,
                  .body_len = n};
        block_there t = {name, id, n};
        rc = upload_req(b, &r, name, 201, block_is_there, &t, err);
        xp += sprintf(xp, "<Latest>%s</Latest>", id);
        free(id);
        if (rc == CTARGET_OK)
            h->progress(b->az->call, "upload", off + n, s->len);
    }
    unsigned char m[16];
    unsigned int ml = sizeof m;
    EVP_DigestFinal_ex(whole, m, &ml);
    EVP_MD_CTX_free(whole);
    if (rc == CTARGET_OK) {
        sprintf(xp, "</BlockList>");
        char *wm = az_b64(m, ml, 0);
        char bm[80], ctb[300];
        snprintf(bm, sizeof bm, "x-ms-blob-content-md5: %s", wm);
        snprintf(ctb, sizeof ctb, "x-ms-blob-content-type: %s",
                 content_type ? content_type : "application/octet-stream");
        const char *hd[] = {"Content-Type: application/xml", bm, ctb, NULL};
        qp q[] = {{"comp", "blocklist"}};
        breq r = {.method = "PUT", .name = name, .q = q, .nq = 1, .hdrs = hd, .body = xml,
                  .body_len = strlen(xml)};
        blob_there t = {name, wm, s->len};
        rc = upload_req(b, &r, name, 201, blob_is_there, &t, err);
        free(wm);
    }
    free(xml);
    free(buf);
    return rc;
}

ctarget_status az_blob_put(az_blob *b, const char *name, const void *data, size_t len,
                           const char *content_type, ctarget_error *err)
{
    static const unsigned char empty[1] = {0};
    src s = {data ? data : empty, -1, len};
    return put_src(b, name, &s, content_type, err);
}

ctarget_status az_blob_put_file(az_blob *b, const char *name, const char *path,
                                const char *content_type, ctarget_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        b->az->h->error_set(err, CTARGET_E_IO, 0, e, "cannot read %s to upload: %s", path,
                            strerror(e));
        return CTARGET_E_IO;
    }
    src s = {NULL, fd, (size_t)st.st_size};
    ctarget_status rc = put_src(b, name, &s, content_type, err);
    close(fd);
    return rc;
}
