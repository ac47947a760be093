/* libctazure (plugins/azure) against the Azure emulator (AAD, IMDS, ARM + Azure ML) and the
 * real Azurite, through tests/azfix.  White-box: the library is linked directly and given the
 * core's real host table (real HTTP with TLS verification against the fixture's CA, real
 * secret resolution), except that error_set, log and progress are wrapped so every message
 * the library produces is recorded unredacted: the final test greps them for secrets.
 *
 * Blob uploads whose connection drops are tested through a TCP relay in front of Azurite that
 * cuts the first connection carrying a large upload after forwarding it (TLS passes through
 * untouched), and counts the bytes that reached Azurite. */
#include "config.h"

#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "azure.h"
#include "azure_parse.h"
#include "host.h"
#include "loader.h"

static azfix FX;
static int FX_OK;
static char *WS;
static ctarget_host H;          /* the core's host table, with recording wrappers */
static ctarget_call CALL;

/* ---- recording host -------------------------------------------------------------------- */

static char *REC;               /* every error, log line and progress phase, one per line */
static size_t REC_LEN;
static pthread_mutex_t REC_LOCK = PTHREAD_MUTEX_INITIALIZER;
static int PROGRESS_CALLS;

static void rec_add(const char *s)
{
    pthread_mutex_lock(&REC_LOCK);
    size_t l = strlen(s);
    REC = realloc(REC, REC_LEN + l + 2);
    memcpy(REC + REC_LEN, s, l);
    REC_LEN += l;
    REC[REC_LEN++] = '\n';
    REC[REC_LEN] = '\0';
    pthread_mutex_unlock(&REC_LOCK);
}

static void w_error_set(ctarget_error *err, ctarget_status code, int transient, int sys_errno,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err->struct_size = sizeof *err;
    err->code = code;
    err->transient = transient;
    err->sys_errno = sys_errno;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    rec_add(err->message);
}

static void w_log(ctarget_call *call, ctarget_log_level level, const char *fmt, ...)
{
    (void)call, (void)level;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    rec_add(buf);
}

static void w_progress(ctarget_call *call, const char *phase, uint64_t done, uint64_t total)
{
    (void)call, (void)done, (void)total;
    PROGRESS_CALLS++;
    rec_add(phase);
}

/* a plugin record whose key table is the shared Azure keys */
static const ctarget_config_key KEYS[] = {AZ_CONFIG_KEYS};
static plugin PL;

static ctarget_target *new_target(const char *name)
{
    ctarget_target *t = target_new(&PL, NULL, WS, name, "test");
    return t;
}

static void set(ctarget_target *t, const char *k, const char *v)
{
    json_object_set_new(t->config, k, json_string(v));
}

static void set_secret(ctarget_target *t, const char *k, const char *v)
{
    json_object_set_new(t->pending, k, json_string(v));
}

/* a target on the fixture's workspace with the given credential kind */
static ctarget_target *fx_target(const char *name, const char *cred)
{
    ctarget_target *t = new_target(name);
    set(t, "subscription_id", FX.subscription_id);
    set(t, "resource_group", FX.resource_group);
    set(t, "workspace_name", FX.workspace_name);
    set(t, "arm_endpoint", FX.arm);
    set(t, "aad_endpoint", FX.aad);
    set(t, "imds_endpoint", FX.imds);
    set(t, "tenant_id", FX.tenant_id);
    if (!strcmp(cred, "secret")) {
        set(t, "client_id", FX.client_id);
        set_secret(t, "client_secret", FX.client_secret);
    } else if (!strcmp(cred, "cert")) {
        set(t, "client_id", FX.client_id);
        set(t, "client_certificate_file", FX.client_cert);
    } else if (!strcmp(cred, "cert-enc")) {
        set(t, "client_id", FX.client_id);
        set(t, "client_certificate_file", FX.client_cert_p);
        set_secret(t, "client_certificate_password", FX.client_cert_password);
    } else if (!strcmp(cred, "mi")) {
        set(t, "managed_identity", "true");
        set(t, "managed_identity_client_id", FX.mi_client_id);
    }
    return t;
}

static ctarget_error new_err(void)
{
    ctarget_error e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    return e;
}

static az_ctx *ctx_for(ctarget_target *t)
{
    ctarget_error err = new_err();
    az_ctx *az = NULL;
    ctarget_status rc = az_ctx_new(&H, &CALL, t, 0, &az, &err);
    if (rc != CTARGET_OK)
        fprintf(stderr, "az_ctx_new: %s\n", err.message);
    CU_ASSERT_EQUAL_FATAL(rc, CTARGET_OK);
    return az;
}

/* GET the workspace: the smallest authenticated ARM call */
static ctarget_status get_ws(az_ctx *az, json_t **out, ctarget_error *err)
{
    char *id = az_ws_id(az);
    az_arm_req rq = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION};
    ctarget_status rc = az_arm_do(az, &rq, 0, out, err);
    free(id);
    return rc;
}

static int fx_up(void);
#define NEED_FX()                                                                        \
    do {                                                                                 \
        if (!fx_up()) {                                                                  \
            CU_FAIL("the Azure emulator fixture did not start");                         \
            return;                                                                      \
        }                                                                                \
    } while (0)

/* ---- fixture --------------------------------------------------------------------------- */

static int setup(void)
{
    if (WS)
        return 1;
    WS = tl_tmpdir("azure");
    H = *host_table();
    H.error_set = w_error_set;
    H.log = w_log;
    H.progress = w_progress;
    call_init(&CALL, "test_azure");
    PL.name = "aztest";
    PL.keys = (ctarget_config_key *)KEYS;
    PL.n_keys = sizeof KEYS / sizeof KEYS[0];
    return 1;
}

/* the emulator and Azurite, started by the first test that needs them */
static int fx_up(void)
{
    static int tried;
    if (!tried) {
        tried = 1;
        azfix_opts o = {.lro_ms = 300, .job_phase_ms = 50};
        FX_OK = azfix_start(&FX, &o) == 0;
        if (FX_OK)
            setenv("CTARGET_CA_BUNDLE", FX.ca_bundle, 1);
    }
    return FX_OK;
}

/* ---- pure parsers ---------------------------------------------------------------------- */

static void t_parse_arm_error(void)
{
    az_arm_error e;
    const char *b1 = "{\"error\":{\"code\":\"BadRequest\",\"message\":\"The request is invalid.\","
                     "\"details\":[{\"code\":\"QuotaExceeded\",\"message\":\"Operation could "
                     "not be completed as it results in exceeding approved standardDFamily "
                     "Cores quota.\\nAdditional details\"}]}}";
    CU_ASSERT_EQUAL(az_parse_arm_error(b1, strlen(b1), &e), 0);
    CU_ASSERT_STRING_EQUAL(e.code, "QuotaExceeded");
    CU_ASSERT(tl_contains(e.message, "The request is invalid. (Operation could not"));
    CU_ASSERT(!strchr(e.message, '\n'));
    const char *b2 = "{\"code\":\"ResourceNotFound\",\"message\":\"gone\"}";
    CU_ASSERT_EQUAL(az_parse_arm_error(b2, strlen(b2), &e), 0);
    CU_ASSERT_STRING_EQUAL(e.code, "ResourceNotFound");
    CU_ASSERT_STRING_EQUAL(e.message, "gone");
    /* not JSON, not an error, truncated: refused without crashing */
    const char *bad[] = {"", "<html>", "{\"error\":5}", "{\"error\":{\"code\":\"X\"", "[1,2]",
                         "{\"value\":[]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CU_ASSERT_EQUAL(az_parse_arm_error(bad[i], strlen(bad[i]), &e), -1);
    /* len is honoured: no NUL needed */
    char nn[] = {'{', '"', 'c', 'o', 'd', 'e', '"', ':', '"', 'A', '"', '}', 'x', 'x'};
    CU_ASSERT_EQUAL(az_parse_arm_error(nn, 12, &e), 0);
    CU_ASSERT_STRING_EQUAL(e.code, "A");
}

static void t_parse_aad_lro_token(void)
{
    az_aad_error a;
    const char *b = "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: "
                    "Invalid client secret provided.\\r\\nTrace ID: 1\\r\\nCorrelation ID: 2\","
                    "\"error_codes\":[7000215]}";
    CU_ASSERT_EQUAL(az_parse_aad_error(b, strlen(b), &a), 0);
    CU_ASSERT_STRING_EQUAL(a.error, "invalid_client");
    CU_ASSERT_STRING_EQUAL(a.description, "AADSTS7000215: Invalid client secret provided.");
    CU_ASSERT_EQUAL(a.aadsts, 7000215);

    az_lro_status s;
    const char *l1 = "{\"status\":\"InProgress\",\"percentComplete\":40}";
    CU_ASSERT_EQUAL(az_parse_lro_status(l1, strlen(l1), &s), 0);
    CU_ASSERT_EQUAL(s.state, AZ_LRO_IN_PROGRESS);
    CU_ASSERT_EQUAL(s.percent, 40);
    const char *l2 = "{\"status\":\"Failed\",\"error\":{\"code\":\"ComputeFailed\","
                     "\"message\":\"no\"}}";
    CU_ASSERT_EQUAL(az_parse_lro_status(l2, strlen(l2), &s), 0);
    CU_ASSERT_EQUAL(s.state, AZ_LRO_FAILED);
    CU_ASSERT(s.has_error);
    CU_ASSERT_STRING_EQUAL(s.error.code, "ComputeFailed");
    const char *l3 = "{\"properties\":{\"provisioningState\":\"Canceled\"}}";
    CU_ASSERT_EQUAL(az_parse_lro_status(l3, strlen(l3), &s), 0);
    CU_ASSERT_EQUAL(s.state, AZ_LRO_CANCELED);
    CU_ASSERT_EQUAL(az_parse_lro_status("{}", 2, &s), -1);

    char *tok;
    long long in;
    const char *t1 = "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"abc\"}";
    CU_ASSERT_EQUAL(az_parse_token(t1, strlen(t1), 1000, &tok, &in), 0);
    CU_ASSERT_STRING_EQUAL(tok, "abc");
    CU_ASSERT_EQUAL(in, 3599);
    free(tok);
    /* IMDS: strings, expires_on wins */
    const char *t2 = "{\"access_token\":\"x.y\",\"expires_in\":\"3599\",\"expires_on\":\"1600\","
                     "\"token_type\":\"Bearer\"}";
    CU_ASSERT_EQUAL(az_parse_token(t2, strlen(t2), 1000, &tok, &in), 0);
    CU_ASSERT_EQUAL(in, 600);
    free(tok);
    const char *t3 = "{\"access_token\":\"a b\",\"expires_in\":10}";   /* header injection */
    CU_ASSERT_EQUAL(az_parse_token(t3, strlen(t3), 0, &tok, &in), -1);
    CU_ASSERT_PTR_NULL(tok);
    const char *t4 = "{\"access_token\":\"ab\",\"expires_in\":0}";
    CU_ASSERT_EQUAL(az_parse_token(t4, strlen(t4), 0, &tok, &in), -1);
}

static void t_ids(void)
{
    CU_ASSERT_EQUAL(sizeof KEYS / sizeof KEYS[0], AZ_N_CONFIG_KEYS);
    az_rid r;
    CU_ASSERT_EQUAL(az_rid_parse("/subscriptions/s1/resourceGroups/g1/providers/"
                                 "Microsoft.MachineLearningServices/workspaces/w1/computes/c1",
                                 &r), 0);
    CU_ASSERT_STRING_EQUAL(r.subscription, "s1");
    CU_ASSERT_STRING_EQUAL(r.resource_group, "g1");
    CU_ASSERT_STRING_EQUAL(r.type, "Microsoft.MachineLearningServices/workspaces/computes");
    CU_ASSERT_STRING_EQUAL(r.name, "c1");
    CU_ASSERT_STRING_EQUAL(r.parent_name, "w1");
    az_rid_clear(&r);
    CU_ASSERT_EQUAL(az_rid_parse("/subscriptions/s1/resourceGroups/g1", &r), -1);
    CU_ASSERT_EQUAL(az_rid_parse("/subscriptions/s1/resourceGroups/g1/providers/NS/t//x", &r),
                    -1);
    CU_ASSERT_EQUAL(az_rid_parse("subscriptions/s1", &r), -1);
    char *e = az_url_escape("a b/c?d&e=é", 0);
    CU_ASSERT_STRING_EQUAL(e, "a%20b%2Fc%3Fd%26e%3D%C3%A9");
    free(e);
    e = az_url_escape("dir/f.txt", 1);
    CU_ASSERT_STRING_EQUAL(e, "dir/f.txt");
    free(e);
}

/* ---- workspace resolution ---------------------------------------------------------------- */

static void t_workspace_config(void)
{
    /* config.json two levels up, in .azureml/, found from a subdirectory */
    char *root = tl_path(WS, "proj");
    char *azd = tl_path(root, ".azureml");
    char *sub = tl_path(root, "src/deep");
    mkdir(root, 0700);
    mkdir(azd, 0700);
    char *src = tl_path(root, "src");
    mkdir(src, 0700);
    mkdir(sub, 0700);
    char *cfg = tl_path(azd, "config.json");
    tl_write_file(cfg, "{\"subscription_id\":\"sub-from-file\",\"resource_group\":\"rg-file\","
                       "\"workspace_name\":\"ws-file\"}");
    char old[4096];
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(old, sizeof old));
    CU_ASSERT_EQUAL_FATAL(chdir(sub), 0);
    ctarget_target *t = new_target("wscfg");
    set(t, "resource_group", "rg-setting");        /* a setting wins over the file */
    ctarget_error err = new_err();
    az_ctx *az = NULL;
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t, 0, &az, &err), CTARGET_OK);
    if (az) {
        CU_ASSERT_STRING_EQUAL(az_subscription0(az), "sub-from-file");
        CU_ASSERT_STRING_EQUAL(az_resource_group0(az), "rg-setting");
        CU_ASSERT_STRING_EQUAL(az_workspace0(az), "ws-file");
        CU_ASSERT(tl_contains(az_workspace_origin0(az), "config.json"));
        char *id = az_ws_resource_id(az, "computes", "gpu 1");
        CU_ASSERT_STRING_EQUAL(id, "/subscriptions/sub-from-file/resourceGroups/rg-setting/"
                                   "providers/Microsoft.MachineLearningServices/workspaces/"
                                   "ws-file/computes/gpu%201");
        free(id);
        /* saved at create: a monitor elsewhere (no config.json) gets the same values */
        CU_ASSERT_EQUAL(az_ws_save(az, NULL, &err), CTARGET_OK);
        az_ctx_free(az);
    }
    CU_ASSERT_EQUAL(chdir(WS), 0);
    ctarget_target *t2 = new_target("wscfg");     /* same name: same state dir */
    az = NULL;
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t2, 0, &az, &err), CTARGET_OK);
    if (az) {
        CU_ASSERT_STRING_EQUAL(az_subscription0(az), "sub-from-file");
        CU_ASSERT_STRING_EQUAL(az_resource_group0(az), "rg-setting");
        CU_ASSERT(tl_contains(az_workspace_origin0(az), "saved"));
        az_ctx_free(az);
    }
    /* nothing anywhere: one line naming the setting and the fix */
    ctarget_target *t3 = new_target("nows");
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t3, 0, &az, &err), CTARGET_E_CONFIG);
    CU_ASSERT(tl_contains(err.message, "subscription_id"));
    CU_ASSERT(tl_contains(err.message, "config.json"));
    CU_ASSERT(!strchr(err.message, '\n'));
    /* a broken config.json named by the setting */
    char *bad = tl_path(WS, "bad.json");
    tl_write_file(bad, "{nope");
    ctarget_target *t4 = new_target("badcfg");
    set(t4, "workspace_config", bad);
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t4, 0, &az, &err), CTARGET_E_CONFIG);
    CU_ASSERT(tl_contains(err.message, bad));
    /* "Scope" form */
    tl_write_file(bad, "{\"Scope\":\"/subscriptions/s9/resourceGroups/g9/providers/"
                       "Microsoft.MachineLearningServices/workspaces/w9\"}");
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t4, 0, &az, &err), CTARGET_OK);
    if (az) {
        CU_ASSERT_STRING_EQUAL(az_workspace0(az), "w9");
        az_ctx_free(az);
    }
    /* endpoints: https only; http only for IMDS on loopback/link-local */
    ctarget_target *t5 = new_target("badep");
    set(t5, "subscription_id", "s");
    set(t5, "resource_group", "g");
    set(t5, "workspace_name", "w");
    set(t5, "arm_endpoint", "http://management.azure.com");
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t5, 0, &az, &err), CTARGET_E_CONFIG);
    CU_ASSERT(tl_contains(err.message, "arm_endpoint"));
    set(t5, "arm_endpoint", "https://127.0.0.1:1");
    set(t5, "imds_endpoint", "http://10.0.0.1");
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t5, 0, &az, &err), CTARGET_E_CONFIG);
    CU_ASSERT(tl_contains(err.message, "imds_endpoint"));
    set(t5, "imds_endpoint", "http://169.254.169.254");
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t5, 0, &az, &err), CTARGET_OK);
    az_ctx_free(az);
    CU_ASSERT_EQUAL(chdir(old), 0);
    target_free(t);
    target_free(t2);
    target_free(t3);
    target_free(t4);
    target_free(t5);
    free(bad);
    free(cfg);
    free(src);
    free(sub);
    free(azd);
    free(root);
}

/* ---- credentials and the token cache ------------------------------------------------------ */

static void t_token_cache(void)
{
    NEED_FX();
    azfix_reset(&FX);
    ctarget_target *t = fx_target("cache", "secret");
    long long t0 = tl_now_ms();
    for (int i = 0; i < 5; i++) {
        az_ctx *az = ctx_for(t);           /* a fresh context each time: the cache is global */
        ctarget_error err = new_err();
        json_t *ws = NULL;
        CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_OK);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ws, "name")),
                               FX.workspace_name);
        json_decref(ws);
        az_ctx_free(az);
    }
    fprintf(stderr, "figure: 5 workspace GETs with one token request: %lld ms\n",
            tl_now_ms() - t0);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/oauth2/v2.0/token$"), 1);
    CU_ASSERT_EQUAL(azfix_count(&FX, "GET", "/workspaces/[^/]+$"), 5);
    /* a storage token is another scope: one more token request, then cached too */
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    char *tok1 = NULL, *tok2 = NULL;
    CU_ASSERT_EQUAL(az_token_get(az, AZ_SCOPE_STORAGE, &tok1, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(az_token_get(az, AZ_SCOPE_STORAGE, &tok2, &err), CTARGET_OK);
    CU_ASSERT(tok1 && tok2 && !strcmp(tok1, tok2));
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/oauth2/v2.0/token$"), 2);
    if (tok1)
        rec_add("TOKEN-CHECK");    /* the token itself must appear in no message: see t_zz */
    setenv("AZT_TOKEN_SEEN", tok1 ? tok1 : "", 1);
    az_token_free(tok1);
    az_token_free(tok2);
    az_ctx_free(az);
    target_free(t);
}

static void t_certificate(void)
{
    NEED_FX();
    const char *kinds[] = {"cert", "cert-enc"};
    for (size_t i = 0; i < 2; i++) {
        azfix_reset(&FX);
        ctarget_target *t = fx_target(i ? "certenc" : "cert", kinds[i]);
        az_ctx *az = ctx_for(t);
        CU_ASSERT(tl_contains(az_credential_desc0(az), "certificate"));
        ctarget_error err = new_err();
        json_t *ws = NULL;
        ctarget_status rc = get_ws(az, &ws, &err);
        if (rc)
            fprintf(stderr, "certificate (%s): %s\n", kinds[i], err.message);
        CU_ASSERT_EQUAL(rc, CTARGET_OK);
        CU_ASSERT_PTR_NOT_NULL(ws);
        json_decref(ws);
        CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/oauth2/v2.0/token$"), 1);
        az_ctx_free(az);
        target_free(t);
    }
    /* a wrong password: one line, AUTH, naming the file, not the password */
    ctarget_target *t = fx_target("certbad", "cert-enc");
    set_secret(t, "client_certificate_password", "wrong-password-123");
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    json_t *ws = NULL;
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_AUTH);
    CU_ASSERT(tl_contains(err.message, FX.client_cert_p));
    CU_ASSERT(!tl_contains(err.message, "wrong-password-123"));
    az_ctx_free(az);
    target_free(t);
}

typedef struct tok_thread {
    ctarget_target *t;
    ctarget_status rc;
    char *tok;
} tok_thread;

static void *get_storage_token(void *arg)
{
    tok_thread *tt = arg;
    ctarget_error err = new_err();
    az_ctx *az = NULL;
    tt->rc = az_ctx_new(&H, &CALL, tt->t, 0, &az, &err);
    if (tt->rc == CTARGET_OK)
        tt->rc = az_token_get(az, AZ_SCOPE_STORAGE, &tt->tok, &err);
    az_ctx_free(az);
    return NULL;
}

/* four threads wanting the same missing token make one token request */
static void t_token_threads(void)
{
    NEED_FX();
    ctarget_target *t = fx_target("threads", "secret");
    az_ctx *az = ctx_for(t);
    az_token_invalidate(az, AZ_SCOPE_STORAGE);
    az_ctx_free(az);
    azfix_reset(&FX);
    tok_thread tt[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        tt[i] = (tok_thread){t, CTARGET_E_INTERNAL, NULL};
        CU_ASSERT_EQUAL(pthread_create(&th[i], NULL, get_storage_token, &tt[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(tt[i].rc, CTARGET_OK);
        CU_ASSERT(tt[i].tok && tt[0].tok && !strcmp(tt[i].tok, tt[0].tok));
    }
    for (int i = 0; i < 4; i++)
        az_token_free(tt[i].tok);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/oauth2/v2.0/token$"), 1);
    target_free(t);
}

/* no credential settings: azure-identity's environment variables */
static void t_env_credential(void)
{
    NEED_FX();
    azfix_reset(&FX);
    ctarget_target *t = fx_target("envcred", "none");
    json_object_del(t->config, "tenant_id");
    setenv("AZURE_CLIENT_ID", FX.client_id, 1);
    setenv("AZURE_TENANT_ID", FX.tenant_id, 1);
    setenv("AZURE_CLIENT_SECRET", FX.client_secret, 1);
    az_ctx *az = ctx_for(t);
    CU_ASSERT(tl_contains(az_credential_desc0(az), "environment"));
    ctarget_error err = new_err();
    json_t *ws = NULL;
    ctarget_status rc = get_ws(az, &ws, &err);
    if (rc)
        fprintf(stderr, "environment credential: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    json_decref(ws);
    /* the same service principal as the settings' one: its cached token may serve */
    CU_ASSERT(azfix_count(&FX, "POST", "/oauth2/v2.0/token$") <= 1);
    CU_ASSERT_EQUAL(azfix_count(&FX, "GET", "/workspaces/[^/]+$"), 1);
    az_ctx_free(az);
    unsetenv("AZURE_CLIENT_ID");
    unsetenv("AZURE_TENANT_ID");
    unsetenv("AZURE_CLIENT_SECRET");
    target_free(t);
}

static void t_managed_identity(void)
{
    NEED_FX();
    azfix_reset(&FX);
    ctarget_target *t = fx_target("mi", "mi");
    az_ctx *az = ctx_for(t);
    CU_ASSERT(tl_contains(az_credential_desc0(az), "managed identity"));
    ctarget_error err = new_err();
    json_t *ws = NULL;
    ctarget_status rc = get_ws(az, &ws, &err);
    if (rc)
        fprintf(stderr, "managed identity: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    json_decref(ws);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/oauth2/v2.0/token$"), 0);
    az_ctx_free(az);
    /* an identity this machine does not have: AUTH, one line */
    set(t, "managed_identity_client_id", "00000000-0000-0000-0000-00000000dead");
    az = ctx_for(t);
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_AUTH);
    CU_ASSERT(tl_contains(err.message, "managed identity"));
    CU_ASSERT(!strchr(err.message, '\n'));
    az_ctx_free(az);
    target_free(t);
}

static void t_wrong_secret(void)
{
    NEED_FX();
    const char *wrong = "not-the-secret-Xy9w2";
    ctarget_target *t = fx_target("wrongsecret", "secret");
    set_secret(t, "client_secret", wrong);
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    json_t *ws = NULL;
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_AUTH);
    CU_ASSERT(tl_contains(err.message, FX.client_id));
    CU_ASSERT(tl_contains(err.message, FX.tenant_id));
    CU_ASSERT(tl_contains(err.message, "AADSTS7000215"));
    CU_ASSERT(tl_contains(err.message, "client_secret"));
    CU_ASSERT(!tl_contains(err.message, wrong));
    CU_ASSERT(!strchr(err.message, '\n'));
    az_ctx_free(az);
    /* unknown tenant */
    set(t, "tenant_id", "00000000-0000-0000-0000-0000000000ff");
    az = ctx_for(t);
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_AUTH);
    CU_ASSERT(tl_contains(err.message, "tenant"));
    az_ctx_free(az);
    /* no credential at all */
    ctarget_target *t2 = fx_target("nocred", "none");
    unsetenv("AZURE_CLIENT_ID");
    az = ctx_for(t2);
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_CONFIG);
    CU_ASSERT(tl_contains(err.message, "client_secret"));
    CU_ASSERT(tl_contains(err.message, "managed_identity"));
    az_ctx_free(az);
    /* an SP secret without client_id: refused before any request */
    ctarget_target *t3 = fx_target("noclient", "none");
    set_secret(t3, "client_secret", wrong);
    ctarget_error e3 = new_err();
    az = NULL;
    CU_ASSERT_EQUAL(az_ctx_new(&H, &CALL, t3, 0, &az, &e3), CTARGET_E_CONFIG);
    CU_ASSERT(tl_contains(e3.message, "client_id"));
    target_free(t);
    target_free(t2);
    target_free(t3);
}

static void t_expired_token(void)
{
    NEED_FX();
    ctarget_target *t = fx_target("expire", "secret");
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    json_t *ws = NULL;
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_OK);   /* cached token */
    json_decref(ws);
    azfix_reset(&FX);
    json_t *ex = azfix_admin(&FX, "POST", "/_emulator/tokens/expire", "{}", NULL);
    CU_ASSERT_PTR_NOT_NULL(ex);
    json_decref(ex);
    /* the cache still thinks it fresh: ARM says expired, one refresh, then it works */
    ws = NULL;
    ctarget_status rc = get_ws(az, &ws, &err);
    if (rc)
        fprintf(stderr, "after expiry: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    json_decref(ws);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/oauth2/v2.0/token$"), 1);
    CU_ASSERT_EQUAL(azfix_count(&FX, "GET", "/workspaces/[^/]+$"), 2);
    az_ctx_free(az);

    /* a given access_token that expired: no refresh possible, one AUTH line */
    char *tok = NULL;
    az = ctx_for(t);
    CU_ASSERT_EQUAL(az_token_get(az, AZ_SCOPE_ARM, &tok, &err), CTARGET_OK);
    az_ctx_free(az);
    ctarget_target *t2 = fx_target("given", "none");
    setenv("AZT_ACCESS_TOKEN", tok ? tok : "", 1);
    json_object_set_new(t2->secret_refs, "access_token", json_string("env:AZT_ACCESS_TOKEN"));
    az = ctx_for(t2);
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_OK);
    json_decref(ws);
    ex = azfix_admin(&FX, "POST", "/_emulator/tokens/expire", "{}", NULL);
    CU_ASSERT_PTR_NOT_NULL(ex);
    json_decref(ex);
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_AUTH);
    CU_ASSERT(tl_contains(err.message, "access_token"));
    CU_ASSERT(tl_contains(err.message, "ExpiredAuthenticationToken") ||
              tl_contains(err.message, "InvalidAuthenticationToken"));
    CU_ASSERT(tok && !tl_contains(err.message, tok));
    az_ctx_free(az);
    az_token_free(tok);
    unsetenv("AZT_ACCESS_TOKEN");
    target_free(t);
    target_free(t2);
}

/* ---- ARM errors and LROs ---------------------------------------------------------------- */

static json_t *compute_body(const char *vm)
{
    return json_pack("{s:s, s:{s:s, s:{s:s, s:s, s:{s:i, s:i, s:s}}}}", "location", FX.location,
                     "properties", "computeType", "AmlCompute", "properties", "vmSize", vm,
                     "vmPriority", "Dedicated", "scaleSettings", "minNodeCount", 0,
                     "maxNodeCount", 2, "nodeIdleTimeBeforeScaleDown", "PT120S");
}

static void t_arm_errors(void)
{
    NEED_FX();
    ctarget_target *t = fx_target("armerr", "secret");
    set(t, "subscription_id", "00000000-0000-0000-0000-00000000beef");
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    json_t *ws = NULL;
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_NOT_FOUND);
    CU_ASSERT(tl_contains(err.message, "SubscriptionNotFound"));
    CU_ASSERT(tl_contains(err.message, "subscription_id"));
    CU_ASSERT(!strchr(err.message, '\n'));
    az_ctx_free(az);
    set(t, "subscription_id", FX.subscription_id);
    set(t, "workspace_name", "no-such-ws");
    az = ctx_for(t);
    CU_ASSERT_EQUAL(get_ws(az, &ws, &err), CTARGET_E_NOT_FOUND);
    CU_ASSERT(tl_contains(err.message, "workspace 'no-such-ws'"));
    CU_ASSERT(tl_contains(err.message, "workspace_name"));
    az_ctx_free(az);
    set(t, "workspace_name", FX.workspace_name);
    az = ctx_for(t);
    /* a vm size the service refuses: "compute 'NAME' (TYPE): CODE: message" */
    char *id = az_ws_resource_id(az, "computes", "badsize");
    json_t *body = compute_body("STANDARD_NOPE_V9");
    az_arm_req rq = {.method = "PUT", .path = id, .api_version = AZ_AML_API_VERSION,
                     .body = body};
    CU_ASSERT_NOT_EQUAL(az_arm_do(az, &rq, AZ_WAIT, NULL, &err), CTARGET_OK);
    CU_ASSERT(tl_contains(err.message, "compute 'badsize' (Microsoft.MachineLearningServices/"
                                       "workspaces/computes): "));
    fprintf(stderr, "vm size refusal: %s\n", err.message);
    json_decref(body);
    free(id);
    /* quota: LIMIT */
    azfix_config(&FX, "{\"core_quota\":4}");
    id = az_ws_resource_id(az, "computes", "toobig");
    body = json_pack("{s:s, s:{s:s, s:{s:s, s:{s:i, s:i}}}}", "location", FX.location,
                     "properties", "computeType", "AmlCompute", "properties", "vmSize",
                     "STANDARD_NC6", "scaleSettings", "minNodeCount", 0, "maxNodeCount", 4);
    rq.path = id;
    rq.body = body;
    CU_ASSERT_EQUAL(az_arm_do(az, &rq, AZ_WAIT, NULL, &err), CTARGET_E_LIMIT);
    CU_ASSERT(tl_contains(err.message, "QuotaExceeded"));
    CU_ASSERT(tl_contains(err.message, "compute 'toobig'"));
    azfix_config(&FX, "{\"core_quota\":24}");
    json_decref(body);
    free(id);
    /* a 404 that is an answer */
    id = az_ws_resource_id(az, "computes", "absent");
    az_arm_req g = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION};
    json_t *res = (json_t *)1;
    CU_ASSERT_EQUAL(az_arm_do(az, &g, AZ_OK_404, &res, &err), CTARGET_OK);
    CU_ASSERT_PTR_NULL(res);
    CU_ASSERT_EQUAL(az_arm_do(az, &g, 0, &res, &err), CTARGET_E_NOT_FOUND);
    CU_ASSERT(tl_contains(err.message, "compute 'absent'"));
    free(id);
    az_ctx_free(az);
    target_free(t);
}

static void t_lro(void)
{
    NEED_FX();
    azfix_reset(&FX);
    azfix_config(&FX, "{\"lro_ms\":1500,\"retry_after\":1}");
    ctarget_target *t = fx_target("lro", "secret");
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    char *id = az_ws_resource_id(az, "computes", "cpu-lro");
    json_t *body = compute_body("STANDARD_D2_V2");
    az_arm_req rq = {.method = "PUT", .path = id, .api_version = AZ_AML_API_VERSION,
                     .body = body};
    json_t *res = NULL;
    int before = PROGRESS_CALLS;
    long long t0 = tl_now_ms();
    ctarget_status rc = az_arm_do(az, &rq, AZ_WAIT, &res, &err);
    long long took = tl_now_ms() - t0;
    if (rc)
        fprintf(stderr, "LRO: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(res, "properties"),
                                                             "provisioningState")),
                           "Succeeded");
    json_decref(res);
    /* Retry-After: 1 honoured: at most one poll a second over 1.5 s, so 1-3 polls, and the
     * wait took at least the LRO's time */
    int polls = azfix_count(&FX, "GET", "computeOperationsStatus");
    CU_ASSERT(polls >= 1 && polls <= 3);
    CU_ASSERT(took >= 1000);
    CU_ASSERT(PROGRESS_CALLS > before);
    CU_ASSERT_EQUAL(azfix_count(&FX, "PUT", "/computes/cpu-lro$"), 1);

    /* an LRO that fails: its error in the line, nothing reported as Succeeded */
    azfix_config(&FX, "{\"lro_ms\":200,\"retry_after\":0}");
    azfix_fault(&FX, "{\"action\":\"fail_provisioning\",\"path\":\"/computes/cpu-fail\","
                     "\"code\":\"AllocationFailed\",\"message\":\"no capacity in westeurope\"}");
    char *id2 = az_ws_resource_id(az, "computes", "cpu-fail");
    rq.path = id2;
    res = NULL;
    rc = az_arm_do(az, &rq, AZ_WAIT, &res, &err);
    CU_ASSERT_EQUAL(rc, CTARGET_E_REMOTE);
    CU_ASSERT_PTR_NULL(res);
    CU_ASSERT(tl_contains(err.message, "AllocationFailed"));
    CU_ASSERT(tl_contains(err.message, "compute 'cpu-fail'"));
    CU_ASSERT(!tl_contains(err.message, "Succeeded"));
    fprintf(stderr, "failed LRO: %s\n", err.message);

    /* DELETE: 202 + Location until gone */
    az_arm_req del = {.method = "DELETE", .path = id, .api_version = AZ_AML_API_VERSION,
                      .query = "underlyingResourceAction=Delete"};
    rc = az_arm_do(az, &del, AZ_WAIT, NULL, &err);
    if (rc)
        fprintf(stderr, "delete: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    az_arm_req g = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION};
    res = NULL;
    CU_ASSERT_EQUAL(az_arm_do(az, &g, AZ_OK_404, &res, &err), CTARGET_OK);
    CU_ASSERT_PTR_NULL(res);

    /* cancellation while waiting */
    azfix_config(&FX, "{\"lro_ms\":60000,\"retry_after\":1}");
    char *id3 = az_ws_resource_id(az, "computes", "cpu-slow");
    rq.path = id3;
    CALL.cancelled = 0;
    az_arm_resp r;
    CU_ASSERT_EQUAL(az_arm_call(az, &rq, 0, &r, &err), CTARGET_OK);
    CALL.cancelled = 1;
    t0 = tl_now_ms();
    CU_ASSERT_EQUAL(az_lro_wait(az, &r, "compute 'cpu-slow'", 0, NULL, &err),
                    CTARGET_E_CANCELED);
    CU_ASSERT(tl_now_ms() - t0 < 5000);
    CALL.cancelled = 0;
    az_arm_resp_clear(&r);
    azfix_config(&FX, "{\"lro_ms\":300,\"retry_after\":0}");
    free(id);
    free(id2);
    free(id3);
    json_decref(body);
    az_ctx_free(az);
    target_free(t);
}

static int count_item(void *arg, json_t *item)
{
    (void)item;
    (*(int *)arg)++;
    return 0;
}

static void t_retry_429(void)
{
    NEED_FX();
    azfix_reset(&FX);
    ctarget_target *t = fx_target("storm", "secret");
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    /* a 429 storm on the create: retried after Retry-After, one compute, one PUT through */
    azfix_fault(&FX, "{\"method\":\"PUT\",\"path\":\"/computes/cpu-storm$\",\"status\":429,"
                     "\"retry_after\":0,\"count\":3}");
    char *id = az_ws_resource_id(az, "computes", "cpu-storm");
    json_t *body = compute_body("STANDARD_D2_V2");
    az_arm_req rq = {.method = "PUT", .path = id, .api_version = AZ_AML_API_VERSION,
                     .body = body};
    ctarget_status rc = az_arm_do(az, &rq, AZ_WAIT, NULL, &err);
    if (rc)
        fprintf(stderr, "429 storm: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_EQUAL(azfix_count(&FX, "PUT", "/computes/cpu-storm$"), 4);
    int n = 0;
    char *list = az_ws_resource_id(az, "computes", NULL);
    az_arm_req lr = {.path = list, .api_version = AZ_AML_API_VERSION};
    CU_ASSERT_EQUAL(az_arm_list(az, &lr, count_item, &n, &err), CTARGET_OK);
    CU_ASSERT(n >= 1);
    json_t *st = azfix_state(&FX);
    json_t *computes = json_object_get(st, "computes");
    size_t same = 0;
    if (json_is_object(computes)) {
        const char *k;
        json_t *v;
        json_object_foreach(computes, k, v) same += !strcasecmp(k, "cpu-storm");
    } else if (json_is_array(computes)) {
        size_t i;
        json_t *v;
        json_array_foreach(computes, i, v) same += !strcasecmp(
            json_string_value(json_object_get(v, "name")) ? json_string_value(
                json_object_get(v, "name")) : "", "cpu-storm");
    }
    CU_ASSERT_EQUAL(same, 1);
    json_decref(st);
    /* more 429s than the budget: a bounded failure, LIMIT, transient */
    azfix_reset(&FX);
    azfix_fault(&FX, "{\"method\":\"GET\",\"path\":\"/computes/cpu-storm$\",\"status\":429,"
                     "\"retry_after\":0,\"count\":20}");
    az_arm_req g = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION};
    rc = az_arm_do(az, &g, 0, NULL, &err);
    CU_ASSERT_EQUAL(rc, CTARGET_E_LIMIT);
    CU_ASSERT(err.transient);
    CU_ASSERT(azfix_count(&FX, "GET", "/computes/cpu-storm$") <= 5);
    azfix_reset(&FX);
    /* a dropped connection on a GET: retried */
    azfix_fault(&FX, "{\"method\":\"GET\",\"path\":\"/computes/cpu-storm$\",\"action\":\"drop\","
                     "\"count\":1}");
    json_t *res = NULL;
    CU_ASSERT_EQUAL(az_arm_do(az, &g, 0, &res, &err), CTARGET_OK);
    CU_ASSERT_PTR_NOT_NULL(res);
    json_decref(res);
    /* a POST is repeated after a drop only when the caller says it is safe */
    char nodes[1024];
    snprintf(nodes, sizeof nodes, "%s/listNodes", id);
    az_arm_req pn = {.method = "POST", .path = nodes, .api_version = AZ_AML_API_VERSION};
    azfix_reset(&FX);
    azfix_fault(&FX, "{\"method\":\"POST\",\"path\":\"/listNodes$\",\"action\":\"drop\","
                     "\"count\":1}");
    CU_ASSERT_NOT_EQUAL(az_arm_do(az, &pn, 0, NULL, &err), CTARGET_OK);
    CU_ASSERT(err.transient);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/listNodes$"), 1);
    azfix_reset(&FX);
    azfix_fault(&FX, "{\"method\":\"POST\",\"path\":\"/listNodes$\",\"action\":\"drop\","
                     "\"count\":1}");
    rc = az_arm_do(az, &pn, AZ_RETRY_SAFE, NULL, &err);
    if (rc)
        fprintf(stderr, "listNodes: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/listNodes$"), 2);
    free(list);
    free(id);
    json_decref(body);
    az_ctx_free(az);
    target_free(t);
}

/* ---- blob storage ------------------------------------------------------------------------- */

/* the TCP relay in front of Azurite */
typedef struct relay {
    int lfd, port, up_port;
    volatile int stop;
    int accepted;                 /* connections so far */
    int cut_conn;                 /* this connection (1-based) has its answer cut ... */
    long long threshold;          /* ... after it sent this many bytes up, and ... */
    int (*landed)(void);          /* ... once this says the upload reached Azurite */
    volatile int drops_done;
    long long up_total;           /* bytes that reached Azurite */
    pthread_mutex_t lock;
    pthread_t th;
} relay;

typedef struct conn {
    relay *r;
    int cfd;
    int index;
} conn;

static void *relay_conn(void *arg)
{
    conn *c = arg;
    relay *r = c->r;
    int ufd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->up_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(ufd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(ufd);
        close(c->cfd);
        free(c);
        return NULL;
    }
    long long up = 0;
    char buf[65536];
    for (int rounds = 0; rounds < 1000000 && !r->stop; rounds++) {
        struct pollfd p[2] = {{c->cfd, POLLIN, 0}, {ufd, POLLIN, 0}};
        if (poll(p, 2, 200) < 0)
            break;
        if (p[0].revents) {
            ssize_t n = read(c->cfd, buf, sizeof buf);
            if (n <= 0 || write(ufd, buf, (size_t)n) != n)
                break;
            up += n;
            pthread_mutex_lock(&r->lock);
            r->up_total += n;
            pthread_mutex_unlock(&r->lock);
        }
        if (p[1].revents) {
            pthread_mutex_lock(&r->lock);
            int cut = c->index == r->cut_conn && r->landed && up >= r->threshold;
            pthread_mutex_unlock(&r->lock);
            if (cut) {
                /* cut only once the upload is in Azurite (TLS session tickets come down
                 * before the answer): deterministic, whatever the load */
                int ok = 0;
                for (int i = 0; i < 500 && !(ok = r->landed()); i++)
                    usleep(20 * 1000);
                if (!ok)
                    fprintf(stderr, "relay: the upload did not land in 10 s\n");
                if (getenv("AZT_RELAY_DEBUG"))
                    fprintf(stderr, "relay: cut %d after %lld bytes up: %d\n", c->index, up, ok);
                pthread_mutex_lock(&r->lock);
                r->drops_done += ok;
                pthread_mutex_unlock(&r->lock);
                if (ok)
                    break;             /* Azurite answered; the client never hears it */
            }
            ssize_t n = read(ufd, buf, sizeof buf);
            if (n <= 0 || write(c->cfd, buf, (size_t)n) != n)
                break;
        }
    }
    close(ufd);
    close(c->cfd);
    free(c);
    return NULL;
}

static void *relay_main(void *arg)
{
    relay *r = arg;
    while (!r->stop) {
        struct pollfd p = {r->lfd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int cfd = accept(r->lfd, NULL, NULL);
        if (cfd < 0)
            continue;
        conn *c = malloc(sizeof *c);
        c->r = r;
        c->cfd = cfd;
        pthread_mutex_lock(&r->lock);
        c->index = ++r->accepted;
        if (getenv("AZT_RELAY_DEBUG"))
            fprintf(stderr, "relay: connection %d (cut %d)\n", c->index, r->cut_conn);
        pthread_mutex_unlock(&r->lock);
        pthread_t th;
        if (pthread_create(&th, NULL, relay_conn, c) == 0)
            pthread_detach(th);
    }
    return NULL;
}

static int relay_start(relay *r, int up_port)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    r->up_port = up_port;
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(r->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(r->lfd, 16) != 0 ||
        getsockname(r->lfd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    r->port = ntohs(a.sin_port);
    return pthread_create(&r->th, NULL, relay_main, r);
}

static void relay_stop(relay *r)
{
    r->stop = 1;
    pthread_join(r->th, NULL);
    close(r->lfd);
    usleep(300 * 1000);   /* connection threads notice `stop` within one poll */
}

/* the workspace blob store's account key, as a plugin gets it: datastore listSecrets */
static char *account_key(az_ctx *az, char **container)
{
    ctarget_error err = new_err();
    char *ds = az_ws_resource_id(az, "datastores", "workspaceblobstore");
    az_arm_req g = {.method = "GET", .path = ds, .api_version = AZ_AML_API_VERSION};
    json_t *d = NULL;
    CU_ASSERT_EQUAL(az_arm_do(az, &g, 0, &d, &err), CTARGET_OK);
    const char *cn = json_string_value(json_object_get(json_object_get(d, "properties"),
                                                       "containerName"));
    *container = strdup(cn ? cn : "");
    json_decref(d);
    char path[1024];
    snprintf(path, sizeof path, "%s/listSecrets", ds);
    az_arm_req p = {.method = "POST", .path = path, .api_version = AZ_AML_API_VERSION};
    json_t *s = NULL;
    CU_ASSERT_EQUAL(az_arm_do(az, &p, AZ_RETRY_SAFE, &s, &err), CTARGET_OK);
    const char *k = json_string_value(json_object_get(s, "key"));
    char *key = strdup(k ? k : "");
    setenv("AZT_ACCOUNT_KEY", key, 1);
    json_decref(s);
    free(ds);
    return key;
}

typedef struct sink {
    char *data;
    size_t len;
} sink;

static int to_sink(void *arg, const void *d, size_t n)
{
    sink *s = arg;
    s->data = realloc(s->data, s->len + n + 1);
    memcpy(s->data + s->len, d, n);
    s->len += n;
    s->data[s->len] = '\0';
    return 0;
}

typedef struct listed {
    int n;
    uint64_t total;
    int saw_big;
} listed;

static int on_blob(void *arg, const char *name, uint64_t size)
{
    listed *l = arg;
    l->n++;
    l->total += size;
    l->saw_big |= !strcmp(name, "t/dir/big.bin");
    return 0;
}

static unsigned char *pattern(size_t n, unsigned seed)
{
    unsigned char *b = malloc(n);
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i] = (unsigned char)(seed >> 16);
    }
    return b;
}

static void t_blob_shared_key(void)
{
    NEED_FX();
    if (!FX.blob) {
        CU_FAIL("Azurite did not start");
        return;
    }
    ctarget_target *t = fx_target("blob", "secret");
    az_ctx *az = ctx_for(t);
    char *container = NULL;
    char *key = account_key(az, &container);
    ctarget_error err = new_err();
    az_blob *b = NULL;
    CU_ASSERT_EQUAL_FATAL(az_blob_open_key(az, FX.blob, "devstoreaccount1", key, "ctarget-test",
                                           &b, &err), CTARGET_OK);
    ctarget_status rc = az_blob_create_container(b, &err);
    if (rc)
        fprintf(stderr, "create container: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_EQUAL(az_blob_create_container(b, &err), CTARGET_OK);   /* exists: fine */
    const char *small = "hello, blob\n";
    CU_ASSERT_EQUAL(az_blob_put(b, "t/hello.txt", small, strlen(small), "text/plain", &err),
                    CTARGET_OK);
    /* 9 MiB + 3: three blocks and a block list */
    size_t bigl = 9u * 1024 * 1024 + 3;
    unsigned char *big = pattern(bigl, 7);
    uint64_t req0, sent0, req1, sent1;
    az_blob_stats(b, &req0, &sent0);
    long long t0 = tl_now_ms();
    rc = az_blob_put(b, "t/dir/big.bin", big, bigl, NULL, &err);
    az_blob_stats(b, &req1, &sent1);
    fprintf(stderr, "figure: 9 MiB put: %llu requests, %llu body bytes, %lld ms\n",
            (unsigned long long)(req1 - req0), (unsigned long long)(sent1 - sent0),
            tl_now_ms() - t0);
    CU_ASSERT_EQUAL(req1 - req0, 4);                  /* three blocks and the list */
    CU_ASSERT(sent1 - sent0 >= bigl && sent1 - sent0 < bigl + 1024);
    if (rc)
        fprintf(stderr, "big put: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    /* a name that needs escaping */
    CU_ASSERT_EQUAL(az_blob_put(b, "t/sp ace+plus%.txt", "x", 1, NULL, &err), CTARGET_OK);
    sink s = {0};
    uint64_t size = 0;
    CU_ASSERT_EQUAL(az_blob_get(b, "t/hello.txt", 0, -1, to_sink, &s, &size, &err), CTARGET_OK);
    CU_ASSERT(s.data && !strcmp(s.data, small));
    CU_ASSERT_EQUAL(size, strlen(small));
    free(s.data);
    s = (sink){0};
    CU_ASSERT_EQUAL(az_blob_get(b, "t/dir/big.bin", 0, -1, to_sink, &s, &size, &err),
                    CTARGET_OK);
    CU_ASSERT_EQUAL(s.len, bigl);
    CU_ASSERT(s.len == bigl && !memcmp(s.data, big, bigl));
    free(s.data);
    /* a range in the middle, across the 8 MiB read chunk */
    s = (sink){0};
    uint64_t off = 8u * 1024 * 1024 - 10;
    CU_ASSERT_EQUAL(az_blob_get(b, "t/dir/big.bin", off, 100, to_sink, &s, &size, &err),
                    CTARGET_OK);
    CU_ASSERT_EQUAL(s.len, 100);
    CU_ASSERT(s.len == 100 && !memcmp(s.data, big + off, 100));
    free(s.data);
    /* from an offset to the end (log tailing), and at the end: nothing, OK */
    s = (sink){0};
    CU_ASSERT_EQUAL(az_blob_get(b, "t/hello.txt", 7, -1, to_sink, &s, &size, &err), CTARGET_OK);
    CU_ASSERT(s.data && !strcmp(s.data, "blob\n"));
    free(s.data);
    s = (sink){0};
    CU_ASSERT_EQUAL(az_blob_get(b, "t/hello.txt", strlen(small), -1, to_sink, &s, &size, &err),
                    CTARGET_OK);
    CU_ASSERT_EQUAL(s.len, 0);
    CU_ASSERT_EQUAL(size, strlen(small));
    free(s.data);
    s = (sink){0};
    CU_ASSERT_EQUAL(az_blob_get(b, "t/sp ace+plus%.txt", 0, -1, to_sink, &s, NULL, &err),
                    CTARGET_OK);
    CU_ASSERT(s.data && !strcmp(s.data, "x"));
    free(s.data);
    CU_ASSERT_EQUAL(az_blob_get(b, "t/absent", 0, -1, to_sink, &s, NULL, &err),
                    CTARGET_E_NOT_FOUND);
    CU_ASSERT(tl_contains(err.message, "t/absent"));
    CU_ASSERT_EQUAL(az_blob_size(b, "t/dir/big.bin", &size, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(size, bigl);
    listed l = {0};
    CU_ASSERT_EQUAL(az_blob_list(b, "t/", on_blob, &l, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(l.n, 3);
    CU_ASSERT(l.saw_big);
    l = (listed){0};
    CU_ASSERT_EQUAL(az_blob_list(b, "t/dir/", on_blob, &l, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(l.n, 1);
    CU_ASSERT_EQUAL(az_blob_delete(b, "t/hello.txt", &err), CTARGET_OK);
    CU_ASSERT_EQUAL(az_blob_size(b, "t/hello.txt", &size, &err), CTARGET_E_NOT_FOUND);
    /* what Azurite holds, read independently (the emulator's own client) */
    size_t got = 0;
    char *raw = azfix_blob_get(&FX, "ctarget-test", "t/dir/big.bin", &got);
    CU_ASSERT(raw && got == bigl && !memcmp(raw, big, bigl));
    free(raw);
    az_blob_close(b);
    /* a wrong key: AUTH, one line, no key */
    CU_ASSERT_EQUAL(az_blob_open_key(az, FX.blob, "devstoreaccount1",
                                     "d3Jvbmcta2V5LXdyb25nLWtleQ==", "ctarget-test", &b, &err),
                    CTARGET_OK);
    CU_ASSERT_EQUAL(az_blob_put(b, "t/x", "x", 1, NULL, &err), CTARGET_E_AUTH);
    CU_ASSERT(tl_contains(err.message, "account key"));
    az_blob_close(b);
    free(big);
    free(key);
    free(container);
    az_ctx_free(az);
    target_free(t);
}

static void t_blob_sas(void)
{
    NEED_FX();
    if (!FX.blob) {
        CU_FAIL("Azurite did not start");
        return;
    }
    ctarget_target *t = fx_target("sas", "secret");
    az_ctx *az = ctx_for(t);
    ctarget_error err = new_err();
    char *code = az_ws_resource_id(az, "codes", "ctarget-0123456789abcdef");
    char path[1024];
    snprintf(path, sizeof path, "%s/versions/1/startPendingUpload", code);
    json_t *body = json_pack("{s:s}", "pendingUploadType", "TemporaryBlobReference");
    az_arm_req p = {.method = "POST", .path = path, .api_version = AZ_AML_API_VERSION,
                    .body = body};
    json_t *res = NULL;
    ctarget_status rc = az_arm_do(az, &p, AZ_RETRY_SAFE, &res, &err);
    if (rc)
        fprintf(stderr, "startPendingUpload: %s\n", err.message);
    CU_ASSERT_EQUAL_FATAL(rc, CTARGET_OK);
    const char *sas = json_string_value(json_object_get(
        json_object_get(json_object_get(res, "blobReferenceForConsumption"), "credential"),
        "sasUri"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(sas);
    setenv("AZT_SAS", strchr(sas, '?') ? strchr(sas, '?') + 1 : sas, 1);
    az_blob *b = NULL;
    CU_ASSERT_EQUAL_FATAL(az_blob_open_sas(az, sas, &b, &err), CTARGET_OK);
    CU_ASSERT(strlen(az_blob_folder0(b)) > 0);
    CU_ASSERT(tl_contains(az_blob_container0(b), "azureml-blobstore-"));
    char name[512];
    snprintf(name, sizeof name, "%s/manifest.jsonl", az_blob_folder0(b));
    const char *m = "{\"ctarget_snapshot\":\"x\",\"format\":1,\"entries\":0}\n";
    rc = az_blob_put(b, name, m, strlen(m), "application/json", &err);
    if (rc)
        fprintf(stderr, "SAS put: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_EQUAL(az_blob_put(b, "ctarget-blobs/abc", "abc", 3, NULL, &err), CTARGET_OK);
    sink s = {0};
    CU_ASSERT_EQUAL(az_blob_get(b, name, 0, -1, to_sink, &s, NULL, &err), CTARGET_OK);
    CU_ASSERT(s.data && !strcmp(s.data, m));
    free(s.data);
    listed l = {0};
    CU_ASSERT_EQUAL(az_blob_list(b, "ctarget-blobs/", on_blob, &l, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(l.n, 1);
    az_blob_close(b);
    json_decref(res);
    json_decref(body);
    free(code);
    az_ctx_free(az);
    target_free(t);
}

static size_t LANDED_LEN;
static int landed(const char *name)
{
    size_t got = 0;
    char *raw = azfix_blob_get(&FX, "ctarget-test", name, &got);
    free(raw);
    return raw && got == LANDED_LEN;
}
static int one_landed(void) { LANDED_LEN = 1u << 20; return landed("drop/one.bin"); }
static int blocks_landed(void) { LANDED_LEN = 9u << 20; return landed("drop/blocks.bin"); }

static void t_blob_drop(void)
{
    NEED_FX();
    if (!FX.blob) {
        CU_FAIL("Azurite did not start");
        return;
    }
    relay r;
    CU_ASSERT_EQUAL_FATAL(relay_start(&r, FX.blob_port), 0);
    ctarget_target *t = fx_target("drop", "secret");
    az_ctx *az = ctx_for(t);
    char *container = NULL;
    char *key = account_key(az, &container);
    char ep[256];
    snprintf(ep, sizeof ep, "https://127.0.0.1:%d/devstoreaccount1", r.port);
    ctarget_error err = new_err();
    az_blob *b = NULL;
    CU_ASSERT_EQUAL_FATAL(az_blob_open_key(az, ep, "devstoreaccount1", key, "ctarget-test", &b,
                                           &err), CTARGET_OK);
    CU_ASSERT_EQUAL(az_blob_create_container(b, &err), CTARGET_OK);
    /* one blob of 1 MiB: its PUT reaches Azurite, the answer is cut */
    size_t n = 1u << 20;
    unsigned char *d = pattern(n, 3);
    pthread_mutex_lock(&r.lock);
    r.up_total = 0;
    r.cut_conn = r.accepted + 1;
    r.threshold = (long long)n;
    r.landed = one_landed;
    pthread_mutex_unlock(&r.lock);
    ctarget_status rc = az_blob_put(b, "drop/one.bin", d, n, NULL, &err);
    if (rc)
        fprintf(stderr, "put through a drop: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.drops_done, 1);
    /* sent once: the bytes that reached Azurite are the body plus headers and one check */
    CU_ASSERT(r.up_total >= (long long)n && r.up_total < (long long)n + (long long)n / 10);
    fprintf(stderr, "dropped upload: %lld bytes reached Azurite for a %zu-byte blob\n",
            r.up_total, n);
    /* 9 MiB in three blocks, the block list's answer cut: each block sent once */
    size_t bn = 9u * 1024 * 1024;
    unsigned char *bd = pattern(bn, 5);
    pthread_mutex_lock(&r.lock);
    r.up_total = 0;
    r.cut_conn = r.accepted + 4;
    r.threshold = 900;            /* past the TLS handshake (ClientHello ~520): the request */
    r.landed = blocks_landed;
    pthread_mutex_unlock(&r.lock);
    rc = az_blob_put(b, "drop/blocks.bin", bd, bn, NULL, &err);
    if (rc)
        fprintf(stderr, "blocks through a drop: %s\n", err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.drops_done, 2);
    CU_ASSERT(r.up_total >= (long long)bn && r.up_total < (long long)bn + (long long)bn / 10);
    size_t got = 0;
    char *raw = azfix_blob_get(&FX, "ctarget-test", "drop/blocks.bin", &got);
    CU_ASSERT(raw && got == bn && !memcmp(raw, bd, bn));
    free(raw);
    raw = azfix_blob_get(&FX, "ctarget-test", "drop/one.bin", &got);
    CU_ASSERT(raw && got == n && !memcmp(raw, d, n));
    free(raw);
    az_blob_close(b);
    relay_stop(&r);
    free(d);
    free(bd);
    free(key);
    free(container);
    az_ctx_free(az);
    target_free(t);
}

/* ---- secrets ----------------------------------------------------------------------------- */

static void t_zz_no_secrets(void)
{
    NEED_FX();
    CU_ASSERT(REC_LEN > 0);     /* the tests above did produce messages */
    const char *secrets[] = {FX.client_secret, FX.client_cert_password,
                             getenv("AZT_TOKEN_SEEN"), getenv("AZT_ACCOUNT_KEY"),
                             getenv("AZT_SAS"), "not-the-secret-Xy9w2", "wrong-password-123"};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
        const char *s = secrets[i];
        if (!s || strlen(s) < 8)
            continue;
        if (tl_contains(REC, s))
            fprintf(stderr, "secret #%zu found in a message\n", i);
        CU_ASSERT(!tl_contains(REC, s));
        /* nor in any file the library wrote in the workspace */
        char *hit = tl_tree_grep(WS, s, strlen(s));
        if (hit)
            fprintf(stderr, "secret #%zu found in %s\n", i, hit);
        CU_ASSERT_PTR_NULL(hit);
        free(hit);
    }
    /* the SAS signature in particular */
    const char *sas = getenv("AZT_SAS");
    const char *sig = sas ? strstr(sas, "sig=") : NULL;
    if (sig) {
        char v[256];
        snprintf(v, sizeof v, "%.*s", (int)strcspn(sig + 4, "&"), sig + 4);
        CU_ASSERT(!tl_contains(REC, v));
    }
}

static void add_tests(CU_pSuite s)
{
    setup();
    TL_ADD(s, t_parse_arm_error);
    TL_ADD(s, t_parse_aad_lro_token);
    TL_ADD(s, t_ids);
    TL_ADD(s, t_workspace_config);
    TL_ADD(s, t_token_cache);
    TL_ADD(s, t_token_threads);
    TL_ADD(s, t_env_credential);
    TL_ADD(s, t_certificate);
    TL_ADD(s, t_managed_identity);
    TL_ADD(s, t_wrong_secret);
    TL_ADD(s, t_expired_token);
    TL_ADD(s, t_arm_errors);
    TL_ADD(s, t_lro);
    TL_ADD(s, t_retry_429);
    TL_ADD(s, t_blob_shared_key);
    TL_ADD(s, t_blob_sas);
    TL_ADD(s, t_blob_drop);
    TL_ADD(s, t_zz_no_secrets);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_azure", add_tests);
}
