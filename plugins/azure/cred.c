/* Credentials and the token cache.
 *
 * Order (the first configured wins): access_token; client_certificate_file; client_secret;
 * managed_identity; then the environment (AZURE_CLIENT_ID + AZURE_TENANT_ID +
 * AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH).  Tokens live in memory only, per
 * process, keyed by a hash of (kind, authority, tenant, client, certificate, secret, scope),
 * until 5 minutes before expiry (tokens living under 10 minutes: half their lifetime). */
#include "config.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "azure_int.h"

/* ---- base64 ---------------------------------------------------------------------------- */

char *az_b64(const unsigned char *d, size_t n, int url)
{
    char *o = malloc(4 * ((n + 2) / 3) + 1);
    if (!o)
        abort();
    int len = EVP_EncodeBlock((unsigned char *)o, d, (int)n);
    o[len] = '\0';
    if (url) {
        for (char *p = o; *p; p++)
            *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
        while (len && o[len - 1] == '=')
            o[--len] = '\0';
    }
    return o;
}

unsigned char *az_unb64(const char *s, size_t *n)
{
    size_t l = strlen(s);
    *n = 0;
    if (l % 4)
        return NULL;
    unsigned char *o = malloc(l / 4 * 3 + 1);
    if (!o)
        abort();
    int r = EVP_DecodeBlock(o, (const unsigned char *)s, (int)l);
    if (r < 0) {
        free(o);
        return NULL;
    }
    size_t len = (size_t)r;
    if (l && s[l - 1] == '=')
        len--;
    if (l > 1 && s[l - 2] == '=')
        len--;
    *n = len;
    return o;
}

/* ---- the cache ------------------------------------------------------------------------- */

typedef struct tok {
    struct tok *next;
    unsigned char key[32];
    char *token;
    int64_t fresh_until_ms;   /* wall clock: refresh after this */
} tok;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static tok *cache;

static void tok_free(tok *t)
{
    az_wipe_free(t->token);
    free(t);
}

static tok *cache_find(const unsigned char key[32])
{
    for (tok *t = cache; t; t = t->next)
        if (!memcmp(t->key, key, 32))
            return t;
    return NULL;
}

static void cache_drop(const unsigned char key[32])
{
    for (tok **pp = &cache; *pp; pp = &(*pp)->next)
        if (!memcmp((*pp)->key, key, 32)) {
            tok *t = *pp;
            *pp = t->next;
            tok_free(t);
            return;
        }
}

/* ---- setup ----------------------------------------------------------------------------- */

static int secret_is_set(az_ctx *az, const char *key, ctarget_status *rc, ctarget_error *err)
{
    char *v = NULL;
    ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
    *rc = az->h->secret_get1(az->t, key, &v, &e2);
    if (*rc == CTARGET_OK) {
        az->h->secret_free(v);
        return 1;
    }
    if (*rc == CTARGET_E_NOT_FOUND) {
        *rc = CTARGET_OK;
        return 0;
    }
    /* set but unreadable (env:VAR unset, file missing): say so now */
    az->h->error_set(err, *rc, e2.transient, e2.sys_errno, "%s", e2.message);
    return 1;
}

static int truthy(const char *v)
{
    return v && (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcmp(v, "1") ||
                 !strcasecmp(v, "on"));
}

static ctarget_status need_sp_ids(az_ctx *az, const char *what, ctarget_error *err)
{
    if (!az->tenant || !*az->tenant) {
        AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
               "%s needs tenant_id (the Entra ID tenant of the service principal): "
               "--set tenant_id=GUID", what);
        return CTARGET_E_CONFIG;
    }
    if (!az->client_id || !*az->client_id) {
        AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
               "%s needs client_id (the application id of the service principal): "
               "--set client_id=GUID", what);
        return CTARGET_E_CONFIG;
    }
    for (const char *p = az->tenant; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.')) {
            AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
                   "tenant_id '%s' is neither a GUID nor a domain name: fix it with "
                   "--set tenant_id=...", az->tenant);
            return CTARGET_E_CONFIG;
        }
    return CTARGET_OK;
}

ctarget_status az_cred_setup(az_ctx *az, ctarget_error *err)
{
    ctarget_status rc;
    if (secret_is_set(az, "access_token", &rc, err)) {
        if (rc)
            return rc;
        az->kind = AZ_CRED_TOKEN;
        az->desc = az_strdup("access token (access_token setting)");
        return CTARGET_OK;
    }
    if (az->cert_file) {
        az->kind = AZ_CRED_CERT;
        if (secret_is_set(az, "client_certificate_password", &rc, err)) {
            if (rc)
                return rc;
            az->cert_has_password = 1;
        }
        if ((rc = need_sp_ids(az, "client_certificate_file", err)))
            return rc;
        az->desc = az_asprintf("service principal %s (certificate)", az->client_id);
        return CTARGET_OK;
    }
    if (secret_is_set(az, "client_secret", &rc, err)) {
        if (rc)
            return rc;
        az->kind = AZ_CRED_SECRET;
        if ((rc = need_sp_ids(az, "client_secret", err)))
            return rc;
        az->desc = az_asprintf("service principal %s (secret)", az->client_id);
        return CTARGET_OK;
    }
    if (truthy(az->h->config_get0(az->t, "managed_identity"))) {
        az->kind = AZ_CRED_MI;
        az->desc = az->mi_client_id
                       ? az_asprintf("managed identity %s", az->mi_client_id)
                       : az_strdup("managed identity (system-assigned)");
        return CTARGET_OK;
    }
    const char *ecid = getenv("AZURE_CLIENT_ID"), *eten = getenv("AZURE_TENANT_ID");
    const char *esec = getenv("AZURE_CLIENT_SECRET");
    const char *ecert = getenv("AZURE_CLIENT_CERTIFICATE_PATH");
    if (ecid && *ecid && eten && *eten && ((esec && *esec) || (ecert && *ecert))) {
        az->from_env = 1;
        if (!az->client_id)
            az->client_id = az_strdup(ecid);
        if (!az->tenant)
            az->tenant = az_strdup(eten);
        if (ecert && *ecert) {
            az->kind = AZ_CRED_CERT;
            az->cert_file = az_strdup(ecert);
            az->cert_has_password = getenv("AZURE_CLIENT_CERTIFICATE_PASSWORD") != NULL;
        } else {
            az->kind = AZ_CRED_SECRET;
        }
        if ((rc = need_sp_ids(az, "the AZURE_* environment credential", err)))
            return rc;
        az->desc = az_asprintf("service principal %s (%s from the environment)", az->client_id,
                               az->kind == AZ_CRED_CERT ? "certificate" : "secret");
        return CTARGET_OK;
    }
    az->kind = AZ_CRED_NONE;
    return CTARGET_OK;
}

/* ---- secrets of the chosen credential -------------------------------------------------- */

static ctarget_status get_secret(az_ctx *az, const char *key, const char *envname, char **v,
                                 ctarget_error *err)
{
    *v = NULL;
    if (az->from_env) {
        const char *e = getenv(envname);
        *v = az_strdup(e ? e : "");
        return CTARGET_OK;
    }
    char *s = NULL;
    ctarget_status rc = az->h->secret_get1(az->t, key, &s, err);
    if (rc)
        return rc;
    *v = az_strdup(s);
    az->h->secret_free(s);
    return CTARGET_OK;
}

/* ---- cache key ------------------------------------------------------------------------- */

static void key_of(az_ctx *az, const char *scope, const char *secret, unsigned char out[32])
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned int n = 32;
    char kind = (char)('0' + az->kind);
    const char *parts[] = {&kind, az->kind == AZ_CRED_MI ? az->imds : az->aad,
                           az->tenant, az->client_id, az->cert_file, az->mi_client_id,
                           secret, scope};
    EVP_DigestInit_ex(m, EVP_sha256(), NULL);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        const char *p = parts[i] ? parts[i] : "";
        size_t l = i == 0 ? 1 : strlen(p);
        EVP_DigestUpdate(m, p, l);
        EVP_DigestUpdate(m, "\0", 1);
    }
    EVP_DigestFinal_ex(m, out, &n);
    EVP_MD_CTX_free(m);
}

/* ---- HTTP to AAD / IMDS ---------------------------------------------------------------- */

static void form_add(char **form, const char *k, const char *v)
{
    char *ev = az_url_escape(v, 0);
    char *n = az_asprintf("%s%s%s=%s", *form ? *form : "", *form ? "&" : "", k, ev);
    az_wipe_free(ev);
    az_wipe_free(*form);
    *form = n;
}

/* The fix for an AAD error, by AADSTS code. */
static const char *aad_hint(long code, az_cred_kind kind)
{
    switch (code) {
    case 7000215: case 7000222:
        return "the client secret is wrong or expired: create a new one under the app "
               "registration's Certificates & secrets and set client_secret";
    case 700016:
        return "no such application in this tenant: check client_id and tenant_id";
    case 90002: case 900023:
        return "no such tenant: check tenant_id";
    case 700027: case 700024: case 7000274:
        return "the certificate assertion was refused: upload this certificate to the app "
               "registration, or check client_certificate_file";
    case 70011:
        return "the scope was refused: check arm_endpoint";
    case 700021: case 700023:
        return "check client_id and the certificate";
    default:
        return kind == AZ_CRED_CERT ? "check tenant_id, client_id and client_certificate_file"
                                    : "check tenant_id, client_id and client_secret";
    }
}

/* Replaces every occurrence of secret in msg (belt and braces: AAD never echoes it). */
static void scrub(char *msg, const char *secret)
{
    size_t sl = secret ? strlen(secret) : 0;
    if (sl < 4)
        return;
    char *p;
    while ((p = strstr(msg, secret))) {
        memset(p, '*', sl);
    }
}

static ctarget_status token_http(az_ctx *az, const char *method, const char *url,
                                 const char *const *headers, const char *body,
                                 const char *who, const char *secret, long long *exp_s,
                                 char **token, ctarget_error *err)
{
    const ctarget_host *h = az->h;
    ctarget_http_request rq;
    memset(&rq, 0, sizeof rq);
    rq.struct_size = sizeof rq;
    rq.method = method;
    rq.url = url;
    rq.headers = headers;
    rq.body = body;
    rq.body_len = body ? strlen(body) : 0;
    rq.timeout_ms = 30000;
    rq.flags = CTARGET_HTTP_RETRY_UNSAFE;   /* asking for a token has no side effect */
    ctarget_http_response *resp = NULL;
    ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
    ctarget_status rc = h->http_request(az->call, &rq, &resp, &e2);
    if (rc) {
        scrub(e2.message, secret);
        h->error_set(err, rc, e2.transient, e2.sys_errno, "getting a token for %s: %s", who,
                     e2.message);
        return rc;
    }
    long now_s = (long)(h->now_ms() / 1000);
    if (resp->status == 200 &&
        az_parse_token(resp->body, resp->body_len, now_s, token, exp_s) == 0) {
        memset(resp->body, 0, resp->body_len);
        h->http_response_free(resp);
        return CTARGET_OK;
    }
    az_aad_error ae;
    char msg[CTARGET_ERROR_MSG_MAX];
    if (az_parse_aad_error(resp->body, resp->body_len, &ae) == 0) {
        if (az->kind == AZ_CRED_MI)
            snprintf(msg, sizeof msg, "%s: IMDS refused the token request (HTTP %ld %s: %s): "
                     "check that this machine has that managed identity assigned, or "
                     "managed_identity_client_id", who, resp->status, ae.error,
                     ae.description[0] ? ae.description : "no description");
        else
            snprintf(msg, sizeof msg, "%s in tenant %s: Entra ID refused the credential "
                     "(%s: %s): %s", who, az->tenant, ae.error,
                     ae.description[0] ? ae.description : "no description",
                     aad_hint(ae.aadsts, az->kind));
    } else if (resp->status == 200) {
        snprintf(msg, sizeof msg, "%s: the token endpoint %s answered without a usable "
                 "access_token: check %s", who, az->kind == AZ_CRED_MI ? az->imds : az->aad,
                 az->kind == AZ_CRED_MI ? "imds_endpoint" : "aad_endpoint");
    } else {
        snprintf(msg, sizeof msg, "%s: the token endpoint %s answered HTTP %ld: check %s", who,
                 az->kind == AZ_CRED_MI ? az->imds : az->aad, resp->status,
                 az->kind == AZ_CRED_MI ? "imds_endpoint and managed_identity_client_id"
                                        : "aad_endpoint and tenant_id");
    }
    scrub(msg, secret);
    int transient = resp->status == 429 || resp->status >= 500;
    memset(resp->body, 0, resp->body_len);
    h->http_response_free(resp);
    h->error_set(err, transient ? CTARGET_E_REMOTE : CTARGET_E_AUTH, transient, 0, "%s", msg);
    return transient ? CTARGET_E_REMOTE : CTARGET_E_AUTH;
}

/* ---- certificate: RS256 JWT client assertion ------------------------------------------- */

static int pem_pw(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *pw = u;
    if (!pw)
        return 0;
    int n = (int)strlen(pw);
    if (n > size)
        n = size;
    memcpy(buf, pw, (size_t)n);
    return n;
}

static char *json_b64(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    char *b = az_b64((const unsigned char *)s, strlen(s), 1);
    free(s);
    return b;
}

static ctarget_status make_assertion(az_ctx *az, const char *aud, const char *password,
                                     char **out, ctarget_error *err)
{
    *out = NULL;
    BIO *bio = BIO_new_file(az->cert_file, "r");
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    bio = BIO_new_file(az->cert_file, "r");
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, pem_pw, (void *)password) : NULL;
    BIO_free(bio);
    ctarget_status rc = CTARGET_E_AUTH;
    if (!x || !pk) {
        AZ_ERR(az, err, CTARGET_E_AUTH, 0,
               "client_certificate_file %s: %s: it must be a PEM file holding the certificate "
               "and its private key%s", az->cert_file,
               !x ? "no certificate found" : "the private key cannot be read",
               !x ? "" : az->cert_has_password ? " (is client_certificate_password right?)"
                                               : " (encrypted? set client_certificate_password)");
        goto out;
    }
    if (EVP_PKEY_base_id(pk) != EVP_PKEY_RSA) {
        AZ_ERR(az, err, CTARGET_E_AUTH, 0,
               "client_certificate_file %s: the key is not RSA (Entra ID takes RS256 "
               "assertions): use an RSA certificate", az->cert_file);
        goto out;
    }
    unsigned char sha1[20], sha256[32];
    unsigned int l1 = sizeof sha1, l2 = sizeof sha256;
    X509_digest(x, EVP_sha1(), sha1, &l1);
    X509_digest(x, EVP_sha256(), sha256, &l2);
    char *t1 = az_b64(sha1, l1, 1), *t2 = az_b64(sha256, l2, 1);
    unsigned char rnd[16];
    RAND_bytes(rnd, sizeof rnd);
    rnd[6] = (unsigned char)((rnd[6] & 0x0f) | 0x40);
    rnd[8] = (unsigned char)((rnd[8] & 0x3f) | 0x80);
    char jti[40];
    snprintf(jti, sizeof jti,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7], rnd[8], rnd[9], rnd[10],
             rnd[11], rnd[12], rnd[13], rnd[14], rnd[15]);
    long long now = az->h->now_ms() / 1000;
    json_t *hdr = json_pack("{s:s, s:s, s:s, s:s}", "alg", "RS256", "typ", "JWT", "x5t", t1,
                            "x5t#S256", t2);
    json_t *pl = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", aud, "iss",
                           az->client_id, "sub", az->client_id, "jti", jti, "nbf",
                           (json_int_t)now, "iat", (json_int_t)now, "exp",
                           (json_int_t)(now + 600));
    free(t1);
    free(t2);
    char *h64 = json_b64(hdr), *p64 = json_b64(pl);
    json_decref(hdr);
    json_decref(pl);
    char *input = az_asprintf("%s.%s", h64, p64);
    free(h64);
    free(p64);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    size_t siglen = 0;
    unsigned char *sig = NULL;
    if (EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, pk) == 1 &&
        EVP_DigestSign(m, NULL, &siglen, (const unsigned char *)input, strlen(input)) == 1 &&
        (sig = malloc(siglen)) &&
        EVP_DigestSign(m, sig, &siglen, (const unsigned char *)input, strlen(input)) == 1) {
        char *s64 = az_b64(sig, siglen, 1);
        *out = az_asprintf("%s.%s", input, s64);
        free(s64);
        rc = CTARGET_OK;
    } else {
        AZ_ERR(az, err, CTARGET_E_AUTH, 0,
               "client_certificate_file %s: signing the client assertion failed",
               az->cert_file);
    }
    free(sig);
    free(input);
    EVP_MD_CTX_free(m);
out:
    X509_free(x);
    EVP_PKEY_free(pk);
    return rc;
}

/* ---- fetch ----------------------------------------------------------------------------- */

/* "https://management.azure.com/.default" -> IMDS resource "https://management.azure.com/" */
static char *scope_to_resource(const char *scope)
{
    size_t n = strlen(scope);
    const char *suffix = "/.default";
    size_t sl = strlen(suffix);
    if (n > sl && !strcmp(scope + n - sl, suffix))
        n -= sl;
    while (n && scope[n - 1] == '/')
        n--;
    return az_asprintf("%.*s/", (int)n, scope);
}

static ctarget_status fetch(az_ctx *az, const char *scope, const char *secret,
                            char **token, long long *exp_s, ctarget_error *err)
{
    const char *form_hdr[] = {"Content-Type: application/x-www-form-urlencoded",
                              "Accept: application/json", NULL};
    char who[256];
    if (az->kind == AZ_CRED_MI) {
        snprintf(who, sizeof who, "%s", az->desc);
        char *res = scope_to_resource(scope);
        char *eres = az_url_escape(res, 0);
        char *ecid = az->mi_client_id ? az_url_escape(az->mi_client_id, 0) : NULL;
        char *url = az_asprintf("%s/metadata/identity/oauth2/token?api-version=2018-02-01"
                                "&resource=%s%s%s", az->imds, eres, ecid ? "&client_id=" : "",
                                ecid ? ecid : "");
        const char *hdr[] = {"Metadata: true", "Accept: application/json", NULL};
        ctarget_status rc = token_http(az, "GET", url, hdr, NULL, who, NULL, exp_s, token, err);
        free(url);
        free(res);
        free(eres);
        free(ecid);
        return rc;
    }
    snprintf(who, sizeof who, "service principal %s", az->client_id);
    char *etenant = az_url_escape(az->tenant, 0);
    char *url = az_asprintf("%s/%s/oauth2/v2.0/token", az->aad, etenant);
    free(etenant);
    char *form = NULL;
    form_add(&form, "grant_type", "client_credentials");
    form_add(&form, "client_id", az->client_id);
    form_add(&form, "scope", scope);
    ctarget_status rc = CTARGET_OK;
    if (az->kind == AZ_CRED_CERT) {
        char *jwt = NULL;
        if ((rc = make_assertion(az, url, secret, &jwt, err)) == CTARGET_OK) {
            form_add(&form, "client_assertion_type",
                     "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
            form_add(&form, "client_assertion", jwt);
        }
        az_wipe_free(jwt);
    } else {
        form_add(&form, "client_secret", secret);
    }
    if (rc == CTARGET_OK)
        rc = token_http(az, "POST", url, form_hdr, form, who, secret, exp_s, token, err);
    az_wipe_free(form);
    free(url);
    return rc;
}

ctarget_status az_token_get(az_ctx *az, const char *scope, char **token, ctarget_error *err)
{
    *token = NULL;
    ctarget_status rc;
    switch (az->kind) {
    case AZ_CRED_NONE:
        AZ_ERR(az, err, CTARGET_E_CONFIG, 0,
               "target %s has no Azure credential: set client_secret (with tenant_id and "
               "client_id), client_certificate_file, managed_identity=true or access_token",
               az->h->target_name(az->t));
        return CTARGET_E_CONFIG;
    case AZ_CRED_TOKEN: {
        char *s = NULL;
        if ((rc = az->h->secret_get1(az->t, "access_token", &s, err)))
            return rc;
        *token = az_strdup(s);
        az->h->secret_free(s);
        return CTARGET_OK;
    }
    default:
        break;
    }
    char *secret = NULL;
    if (az->kind == AZ_CRED_SECRET) {
        if ((rc = get_secret(az, "client_secret", "AZURE_CLIENT_SECRET", &secret, err)))
            return rc;
    } else if (az->kind == AZ_CRED_CERT && az->cert_has_password) {
        if ((rc = get_secret(az, "client_certificate_password",
                             "AZURE_CLIENT_CERTIFICATE_PASSWORD", &secret, err)))
            return rc;
    }
    unsigned char key[32];
    key_of(az, scope, secret, key);
    int64_t now = az->h->now_ms();
    pthread_mutex_lock(&cache_lock);
    tok *t = cache_find(key);
    if (t && now < t->fresh_until_ms) {
        *token = az_strdup(t->token);
        pthread_mutex_unlock(&cache_lock);
        az_wipe_free(secret);
        return CTARGET_OK;
    }
    if (t)
        cache_drop(key);
    /* fetched under the lock: N threads wanting the same token make one request */
    long long exp_s = 0;
    char *fresh = NULL;
    rc = fetch(az, scope, secret, &fresh, &exp_s, err);
    if (rc == CTARGET_OK) {
        long long margin = exp_s >= 600 ? 300 : exp_s / 2;
        t = calloc(1, sizeof *t);
        if (!t)
            abort();
        memcpy(t->key, key, 32);
        t->token = fresh;
        t->fresh_until_ms = now + (exp_s - margin) * 1000;
        t->next = cache;
        cache = t;
        *token = az_strdup(fresh);
    }
    pthread_mutex_unlock(&cache_lock);
    az_wipe_free(secret);
    return rc;
}

void az_token_free(char *token)
{
    az_wipe_free(token);
}

void az_token_invalidate(az_ctx *az, const char *scope)
{
    if (az->kind == AZ_CRED_NONE || az->kind == AZ_CRED_TOKEN)
        return;
    char *secret = NULL;
    ctarget_error e2 = {sizeof e2, CTARGET_OK, 0, 0, ""};
    if (az->kind == AZ_CRED_SECRET)
        get_secret(az, "client_secret", "AZURE_CLIENT_SECRET", &secret, &e2);
    else if (az->kind == AZ_CRED_CERT && az->cert_has_password)
        get_secret(az, "client_certificate_password", "AZURE_CLIENT_CERTIFICATE_PASSWORD",
                   &secret, &e2);
    unsigned char key[32];
    key_of(az, scope, secret, key);
    az_wipe_free(secret);
    pthread_mutex_lock(&cache_lock);
    cache_drop(key);
    pthread_mutex_unlock(&cache_lock);
}
