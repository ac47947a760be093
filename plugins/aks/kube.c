/* aks: the Kubernetes API client.  A kubeconfig (YAML, read with libyaml) gives the server,
 * its CA and the user's credentials; requests go through libcurl directly, so that TLS is
 * verified with the kubeconfig's own certificate-authority-data (a per-cluster CA, which the
 * host's http_request, tied to one process-wide CTARGET_CA_BUNDLE, cannot take).  Retries
 * 429/500/502/503/504 (Retry-After honoured) and dropped connections, bounded. */
#include "config.h"

#include "aks.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* ---- small helpers ------------------------------------------------------------------------ */

char *aks_fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        s = NULL;
    va_end(ap);
    if (!s)
        abort();
    return s;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *aks_b64enc(const unsigned char *p, size_t n)
{
    char *o = malloc(4 * ((n + 2) / 3) + 1), *q = o;
    if (!o)
        abort();
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *q++ = B64[v >> 18 & 63];
        *q++ = B64[v >> 12 & 63];
        *q++ = i + 1 < n ? B64[v >> 6 & 63] : '=';
        *q++ = i + 2 < n ? B64[v & 63] : '=';
    }
    *q = 0;
    return o;
}

int aks_b64dec(const char *s, unsigned char **out, size_t *outlen)
{
    size_t n = strlen(s);
    unsigned char *o = malloc(n / 4 * 3 + 4);
    if (!o)
        abort();
    size_t k = 0;
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '=' || c == '\n' || c == '\r' || c == ' ')
            continue;
        const char *pos = strchr(B64, c);
        if (!pos || !c) {
            free(o);
            return -1;
        }
        v = v << 6 | (unsigned)(pos - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (unsigned char)(v >> bits & 0xff);
        }
    }
    o[k] = 0;
    *out = o;
    *outlen = k;
    return 0;
}

static char *read_text_file(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max, f) : 0;
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = 0;
    return buf;
}

/* ---- YAML -> jansson ------------------------------------------------------------------------ */

static json_t *yaml_node_json(yaml_document_t *doc, yaml_node_t *n, int depth)
{
    if (!n || depth > 32)
        return json_null();
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return json_stringn((const char *)n->data.scalar.value, n->data.scalar.length);
    case YAML_SEQUENCE_NODE: {
        json_t *a = json_array();
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
             it++)
            json_array_append_new(a, yaml_node_json(doc, yaml_document_get_node(doc, *it),
                                                    depth + 1));
        return a;
    }
    case YAML_MAPPING_NODE: {
        json_t *o = json_object();
        for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top;
             pr++) {
            yaml_node_t *k = yaml_document_get_node(doc, pr->key);
            if (!k || k->type != YAML_SCALAR_NODE)
                continue;
            char *key = strndup((const char *)k->data.scalar.value, k->data.scalar.length);
            json_object_set_new(o, key, yaml_node_json(doc, yaml_document_get_node(doc, pr->value),
                                                       depth + 1));
            free(key);
        }
        return o;
    }
    default:
        return json_null();
    }
}

static json_t *yaml_parse_text(const char *text, char *why, size_t whylen)
{
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p))
        abort();
    yaml_parser_set_input_string(&p, (const unsigned char *)text, strlen(text));
    json_t *out = NULL;
    if (!yaml_parser_load(&p, &doc)) {
        snprintf(why, whylen, "line %lu: %s", (unsigned long)p.problem_mark.line + 1,
                 p.problem ? p.problem : "syntax error");
    } else {
        out = yaml_node_json(&doc, yaml_document_get_root_node(&doc), 0);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&p);
    return out;
}

/* ---- kubeconfig ---------------------------------------------------------------------------- */

static json_t *named(json_t *root, const char *list, const char *inner, const char *name)
{
    json_t *a = json_object_get(root, list), *v;
    size_t i;
    json_array_foreach(a, i, v)
    {
        const char *n = json_string_value(json_object_get(v, "name"));
        if (n && !strcmp(n, name))
            return json_object_get(v, inner);
    }
    return NULL;
}

static const char *js(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* "-data" (base64) or a file path; NULL when neither */
static ctarget_status pem_field(const ctarget_host *h, json_t *o, const char *key,
                                const char *what, char **pem, ctarget_error *err)
{
    char *dk = aks_fmt("%s-data", key);
    const char *data = js(o, dk), *file = js(o, key);
    free(dk);
    *pem = NULL;
    if (data) {
        unsigned char *b;
        size_t n;
        if (aks_b64dec(data, &b, &n) || !n) {
            h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "kubeconfig: %s-data is not base64: paste the PEM's base64 text", key);
            return CTARGET_E_CONFIG;
        }
        *pem = (char *)b;
    } else if (file) {
        if (!(*pem = read_text_file(file, 1 << 20))) {
            h->error_set(err, CTARGET_E_CONFIG, 0, errno,
                         "kubeconfig: cannot read the %s file %s: %s", what, file, strerror(errno));
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

void aks_kube_free(aks_kube *k)
{
    if (!k)
        return;
    free(k->server);
    free(k->context);
    free(k->user);
    free(k->ns);
    free(k->ca);
    if (k->token) {
        memset(k->token, 0, strlen(k->token));
        free(k->token);
    }
    free(k->cert);
    if (k->key) {
        memset(k->key, 0, strlen(k->key));
        free(k->key);
    }
    free(k);
}

ctarget_status aks_kube_load(const ctarget_host *h, const char *text, const char *context,
                             aks_kube **out, ctarget_error *err)
{
    char why[256] = "";
    json_t *root = yaml_parse_text(text, why, sizeof why);
    *out = NULL;
    if (!root || !json_is_object(root)) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "kubeconfig is not a kubeconfig (YAML mapping with clusters, users, "
                     "contexts)%s%s: give the file kubectl uses (kubeconfig=file:PATH)",
                     why[0] ? ": " : "", why);
        json_decref(root);
        return CTARGET_E_CONFIG;
    }
    ctarget_status rc = CTARGET_E_CONFIG;
    aks_kube *k = calloc(1, sizeof *k);
    if (!k)
        abort();
    const char *ctxname = context && *context ? context : js(root, "current-context");
    json_t *ctx = ctxname ? named(root, "contexts", "context", ctxname) : NULL;
    if (!ctxname || !*ctxname) {
        h->error_set(err, rc, 0, 0, "kubeconfig has no current-context: set context=NAME");
        goto out;
    }
    if (!ctx) {
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "kubeconfig has no context '%s': set context to one it defines "
                     "(kubectl config get-contexts)", ctxname);
        rc = CTARGET_E_NOT_FOUND;
        goto out;
    }
    k->context = strdup(ctxname);
    const char *cname = js(ctx, "cluster"), *uname = js(ctx, "user");
    json_t *cl = cname ? named(root, "clusters", "cluster", cname) : NULL;
    json_t *us = uname ? named(root, "users", "user", uname) : NULL;
    if (!cl || !js(cl, "server")) {
        h->error_set(err, rc, 0, 0, "kubeconfig context '%s' names cluster '%s', which has no "
                     "server: fix the kubeconfig", ctxname, cname ? cname : "");
        goto out;
    }
    k->server = strdup(js(cl, "server"));
    size_t sl = strlen(k->server);
    while (sl && k->server[sl - 1] == '/')
        k->server[--sl] = 0;
    if (strncmp(k->server, "https://", 8)) {
        h->error_set(err, rc, 0, 0, "kubeconfig cluster '%s': server %s is not https: ctarget "
                     "talks to API servers over verified TLS only", cname, k->server);
        goto out;
    }
    const char *insecure = js(cl, "insecure-skip-tls-verify");
    if (insecure && !strcmp(insecure, "true")) {
        h->error_set(err, CTARGET_E_HOSTKEY, 0, 0, "kubeconfig cluster '%s' sets "
                     "insecure-skip-tls-verify, which ctarget refuses: give its "
                     "certificate-authority-data", cname);
        rc = CTARGET_E_HOSTKEY;
        goto out;
    }
    if ((rc = pem_field(h, cl, "certificate-authority", "CA", &k->ca, err)))
        goto out;
    rc = CTARGET_E_CONFIG;
    k->ns = strdup(js(ctx, "namespace") ? js(ctx, "namespace") : "default");
    k->user = strdup(uname ? uname : "");
    if (!us) {
        h->error_set(err, rc, 0, 0, "kubeconfig context '%s' names user '%s', which it does not "
                     "define: fix the kubeconfig", ctxname, uname ? uname : "");
        goto out;
    }
    if (json_object_get(us, "exec") || json_object_get(us, "auth-provider")) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "kubeconfig user '%s' gets its credentials from an exec/auth-provider "
                     "plugin, which ctarget does not run: give a token or a client certificate "
                     "(for AKS: az aks get-credentials --admin, or a service account token)",
                     uname);
        rc = CTARGET_E_UNSUPPORTED;
        goto out;
    }
    if (js(us, "token"))
        k->token = strdup(js(us, "token"));
    else if (js(us, "tokenFile")) {
        k->token = read_text_file(js(us, "tokenFile"), 65536);
        if (k->token)
            k->token[strcspn(k->token, "\r\n")] = 0;
    }
    if ((rc = pem_field(h, us, "client-certificate", "client certificate", &k->cert, err)) ||
        (rc = pem_field(h, us, "client-key", "client key", &k->key, err)))
        goto out;
    rc = CTARGET_E_CONFIG;
    if (!k->token && !(k->cert && k->key)) {
        h->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "kubeconfig user '%s' has neither a token nor a client certificate and "
                     "key: give one of them", uname);
        rc = CTARGET_E_AUTH;
        goto out;
    }
    rc = CTARGET_OK;
out:
    json_decref(root);
    if (rc)
        aks_kube_free(k);
    else
        *out = k;
    return rc;
}

/* ---- requests ------------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap, max;
} buf_t;

static size_t on_data(char *d, size_t sz, size_t nm, void *arg)
{
    buf_t *b = arg;
    size_t n = sz * nm;
    if (b->n + n > b->max)
        return 0;
    if (b->n + n + 1 > b->cap) {
        b->cap = (b->n + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0;
    return n;
}

static long retry_after_ms;
static size_t on_header(char *d, size_t sz, size_t nm, void *arg)
{
    (void)arg;
    size_t n = sz * nm;
    if (n > 12 && !strncasecmp(d, "Retry-After:", 12))
        retry_after_ms = atol(d + 12) * 1000;
    return n;
}

void aks_resp_free(aks_resp *r)
{
    if (!r)
        return;
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

static unsigned long long g_requests;
unsigned long long aks_request_count(void)
{
    return g_requests;
}

/* The Status message of an error answer, or the body's start. */
static void status_msg(const aks_resp *r, char *out, size_t len)
{
    const char *m = js(r->json, "message");
    if (!m && r->json)
        m = js(json_object_get(r->json, "error"), "message");
    snprintf(out, len, "%s", m ? m : (r->body && *r->body ? r->body : "no message"));
    out[strcspn(out, "\r\n")] = 0;
}

ctarget_status aks_req(const ctarget_host *h, ctarget_call *call, const aks_kube *k,
                       const char *method, const char *path, const char *body, aks_resp *r,
                       unsigned flags, ctarget_error *err)
{
    memset(r, 0, sizeof *r);
    char *url = aks_fmt("%s%s", k->server, path);
    char *auth = k->token ? aks_fmt("Authorization: Bearer %s", k->token) : NULL;
    struct curl_slist *hd = NULL;
    hd = curl_slist_append(hd, "Accept: application/json, */*");
    if (body)
        hd = curl_slist_append(hd, "Content-Type: application/json");
    if (auth)
        hd = curl_slist_append(hd, auth);
    ctarget_status rc = CTARGET_OK;
    int attempts = flags & AKS_ONCE ? 1 : 6;
    for (int a = 0; a < attempts; a++) {
        CURL *c = curl_easy_init();
        if (!c)
            abort();
        buf_t b = {NULL, 0, 0, (size_t)64 << 20};
        char ebuf[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
        if (k->ca) {
            struct curl_blob cb = {k->ca, strlen(k->ca), CURL_BLOB_COPY};
            curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &cb);
            curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
        }
        if (k->cert && k->key) {
            struct curl_blob cb = {k->cert, strlen(k->cert), CURL_BLOB_COPY};
            struct curl_blob kb = {k->key, strlen(k->key), CURL_BLOB_COPY};
            curl_easy_setopt(c, CURLOPT_SSLCERT_BLOB, &cb);
            curl_easy_setopt(c, CURLOPT_SSLKEY_BLOB, &kb);
            curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
            curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
        }
        if (body) {
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        }
        retry_after_ms = -1;
        g_requests++;
        CURLcode cc = curl_easy_perform(c);
        long st = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &st);
        curl_easy_cleanup(c);
        long wait = 250L << a;
        if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE ||
            cc == CURLE_SSL_CONNECT_ERROR) {
            free(b.p);
            h->error_set(err, CTARGET_E_HOSTKEY, 0, 0,
                         "Kubernetes API server %s (context %s) failed TLS verification with "
                         "the kubeconfig's certificate-authority-data: %s: fix the CA in the "
                         "kubeconfig", k->server, k->context, ebuf[0] ? ebuf : "not trusted");
            rc = CTARGET_E_HOSTKEY;
            break;
        }
        if (cc == CURLE_PARTIAL_FILE || cc == CURLE_RECV_ERROR || cc == CURLE_GOT_NOTHING) {
            /* a dropped answer: the caller may keep what arrived (log lines) */
            if (flags & AKS_PARTIAL_OK && b.n) {
                r->status = st ? st : 200;
                r->body = b.p;
                r->len = b.n;
                r->partial = 1;
                rc = CTARGET_OK;
                break;
            }
            free(b.p);
            rc = CTARGET_E_UNREACHABLE;
            h->error_set(err, rc, 1, 0, "Kubernetes API server %s dropped the connection "
                         "(%s %s): %s", k->server, method, path, ebuf);
            if (h->sleep_ms(call, wait) == CTARGET_E_CANCELED)
                break;
            continue;
        }
        if (cc != CURLE_OK) {
            free(b.p);
            rc = CTARGET_E_UNREACHABLE;
            h->error_set(err, rc, 1, 0, "Kubernetes API server %s (context %s) is unreachable: "
                         "%s: check the server in the kubeconfig and the network", k->server,
                         k->context, ebuf[0] ? ebuf : curl_easy_strerror(cc));
            if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST || a >= 2)
                break;
            if (h->sleep_ms(call, wait) == CTARGET_E_CANCELED)
                break;
            continue;
        }
        r->status = st;
        r->body = b.p ? b.p : strdup("");
        r->len = b.n;
        json_error_t je;
        r->json = r->len ? json_loadb(r->body, r->len, 0, &je) : NULL;
        if ((st == 429 || st == 500 || st == 502 || st == 503 || st == 504) && a + 1 < attempts) {
            if (retry_after_ms >= 0)
                wait = retry_after_ms > 10000 ? 10000 : retry_after_ms;
            aks_resp_free(r);
            h->log(call, CTARGET_LOG_DEBUG, "aks: %s %s: %ld, retrying in %ld ms", method, path,
                   st, wait);
            if ((rc = h->sleep_ms(call, wait)) == CTARGET_E_CANCELED) {
                h->error_set(err, rc, 0, 0, "canceled");
                break;
            }
            continue;
        }
        rc = CTARGET_OK;
        if (st == 401) {
            rc = CTARGET_E_AUTH;
            h->error_set(err, rc, 0, 0, "Kubernetes API server %s rejected the credentials of "
                         "kubeconfig user '%s' (context %s): renew its token or certificate",
                         k->server, k->user, k->context);
        } else if (st >= 400 && !(flags & AKS_ANY_STATUS)) {
            char m[400];
            status_msg(r, m, sizeof m);
            rc = st == 403 ? CTARGET_E_AUTH : st == 404 ? CTARGET_E_NOT_FOUND
                 : st == 409 ? CTARGET_E_EXISTS : st == 429 ? CTARGET_E_LIMIT : CTARGET_E_REMOTE;
            h->error_set(err, rc, st == 429 || st >= 500, 0, "Kubernetes API %s %s: %ld %s",
                         method, path, st, m);
        }
        break;
    }
    curl_slist_free_all(hd);
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    free(url);
    if (rc)
        aks_resp_free(r);
    return rc;
}
