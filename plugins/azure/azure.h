/* libctazure: what every Azure plugin shares (workspace, credentials, ARM, LROs, blobs).
 *
 * A convenience library linked into each Azure plugin (amlcompute, computeinstance, ...), never
 * into the core.  It speaks HTTP only through host->http_request (TLS verified, proxies, the
 * retry policy on 429/5xx/dropped connections), links jansson and libcrypto, and exports
 * nothing (-fvisibility=hidden): each plugin gets its own copy, and so its own token cache.
 *
 * USE
 *     static const ctarget_config_key my_keys[] = {
 *         AZ_CONFIG_KEYS,                                  // the common Azure settings
 *         { sizeof(ctarget_config_key), "vm_size", CTARGET_KEY_STRING, ... },
 *     };
 *     az_ctx *az;
 *     if (az_ctx_new(host, call, target, 0, &az, err) != CTARGET_OK) return err->code;
 *     char *id = az_ws_resource_id(az, "computes", name);   // ".../workspaces/W/computes/N"
 *     json_t *res = NULL;
 *     az_arm_req rq = { .method = "PUT", .path = id, .api_version = AZ_AML_API_VERSION,
 *                       .body = body, .what = "compute 'gpu-cluster'" };
 *     rc = az_arm_do(az, &rq, AZ_WAIT, &res, err);         // PUT + LRO wait + final GET
 *     ...
 *     json_decref(res); free(id); az_ctx_free(az);
 *
 * An az_ctx belongs to one operation (one ctarget_call) on one thread; it is cheap to make.
 * The token cache behind it is per process and thread-safe.
 *
 * ERRORS: every function returning ctarget_status fills `err` through host->error_set with one
 * line naming the thing and the fix.  Secrets (client secret, certificate password, tokens,
 * SAS signatures, account keys) never appear in a message, a log line or a file.
 */
#ifndef CTARGET_AZURE_H
#define CTARGET_AZURE_H

#include <ctarget/plugin.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Azure ML's ARM API version (Microsoft.MachineLearningServices). */
#define AZ_AML_API_VERSION "2025-12-01"
/* Azure Storage REST version the blob client sends (Azurite supports it). */
#define AZ_BLOB_API_VERSION "2021-08-06"

#define AZ_DEFAULT_ARM_ENDPOINT "https://management.azure.com"
#define AZ_DEFAULT_AAD_ENDPOINT "https://login.microsoftonline.com"
#define AZ_DEFAULT_IMDS_ENDPOINT "http://169.254.169.254"
/* scopes (AAD v2) / resources (IMDS) */
#define AZ_SCOPE_ARM "https://management.azure.com/.default"
#define AZ_SCOPE_STORAGE "https://storage.azure.com/.default"

/* ---------------------------------------------------------------------------------------- */
/* Settings.  Put AZ_CONFIG_KEYS first in a plugin's key table; plugins add their own keys.   */
/* Group 90 (credentials: client_secret | client_certificate_file | managed_identity |        */
/* access_token) is EXCLUSIVE: at most one credential kind per target.  Nothing is required:  */
/* the workspace may come from config.json.  plugins/azure/README.md documents each key.      */

#define AZ_KEY_GROUP_CREDENTIAL 90u

#define AZ_KEY_(name, type, flags, def, help)                                               \
    { sizeof(ctarget_config_key), name, type, flags, def, help, NULL, 0, 0, 0u, 0u }
#define AZ_KEY_G_(name, type, flags, def, help, group)                                      \
    { sizeof(ctarget_config_key), name, type, flags, def, help, NULL, 0, 0, group, 0u }

#define AZ_CONFIG_KEYS                                                                      \
    AZ_KEY_("subscription_id", CTARGET_KEY_STRING, 0, NULL,                                 \
            "Azure subscription id (GUID); default: from the workspace config.json"),       \
    AZ_KEY_("resource_group", CTARGET_KEY_STRING, 0, NULL,                                  \
            "resource group of the Azure ML workspace; default: from config.json"),         \
    AZ_KEY_("workspace_name", CTARGET_KEY_STRING, 0, NULL,                                  \
            "Azure ML workspace name; default: from config.json"),                          \
    AZ_KEY_("workspace_config", CTARGET_KEY_PATH, 0, NULL,                                  \
            "workspace config.json; default: ./config.json, ./.azureml/config.json, "       \
            "then the same in each parent directory"),                                      \
    AZ_KEY_("tenant_id", CTARGET_KEY_STRING, 0, NULL,                                       \
            "Entra ID tenant (GUID or domain) of the service principal; default: "          \
            "config.json's tenant_id, $AZURE_TENANT_ID"),                                   \
    AZ_KEY_("client_id", CTARGET_KEY_STRING, 0, NULL,                                       \
            "application (client) id of the service principal; default: $AZURE_CLIENT_ID"), \
    AZ_KEY_G_("client_secret", CTARGET_KEY_STRING,                                          \
              CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE, NULL,                             \
              "service principal client secret (a secret: prefer env:VAR or file:PATH)",    \
              AZ_KEY_GROUP_CREDENTIAL),                                                     \
    AZ_KEY_G_("client_certificate_file", CTARGET_KEY_PATH, CTARGET_KEY_EXCLUSIVE, NULL,     \
              "PEM file with the service principal's certificate and private key",          \
              AZ_KEY_GROUP_CREDENTIAL),                                                     \
    AZ_KEY_("client_certificate_password", CTARGET_KEY_STRING, CTARGET_KEY_SECRET, NULL,    \
            "password of the private key in client_certificate_file, if encrypted"),        \
    AZ_KEY_G_("managed_identity", CTARGET_KEY_BOOL, CTARGET_KEY_EXCLUSIVE, "false",         \
              "authenticate as the machine's managed identity (IMDS)",                      \
              AZ_KEY_GROUP_CREDENTIAL),                                                     \
    AZ_KEY_("managed_identity_client_id", CTARGET_KEY_STRING, 0, NULL,                      \
            "client id of a user-assigned managed identity; default: the system one"),      \
    AZ_KEY_G_("access_token", CTARGET_KEY_STRING,                                           \
              CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE, NULL,                             \
              "a ready ARM bearer token, typically env:VAR or file:PATH (not refreshed)",   \
              AZ_KEY_GROUP_CREDENTIAL),                                                     \
    AZ_KEY_("arm_endpoint", CTARGET_KEY_STRING, 0, AZ_DEFAULT_ARM_ENDPOINT,                 \
            "Azure Resource Manager endpoint (https)"),                                     \
    AZ_KEY_("aad_endpoint", CTARGET_KEY_STRING, 0, AZ_DEFAULT_AAD_ENDPOINT,                 \
            "Entra ID (AAD) authority host (https)"),                                       \
    AZ_KEY_("imds_endpoint", CTARGET_KEY_STRING, 0, AZ_DEFAULT_IMDS_ENDPOINT,               \
            "instance metadata endpoint for managed identity (http only to a loopback or "  \
            "link-local address)")

/* Number of keys AZ_CONFIG_KEYS expands to. */
#define AZ_N_CONFIG_KEYS 15

/* ---------------------------------------------------------------------------------------- */
/* Context                                                                                   */

typedef struct az_ctx az_ctx;

/* Flags for az_ctx_new */
#define AZ_CTX_NO_WORKSPACE (1u << 0)  /* do not require subscription/group/workspace */

/* Reads the settings of `t`, resolves the workspace and picks the credential; no network.
 * Workspace resolution, each value on its own: the target's setting; else the record saved by
 * az_ws_save() in the target's state dir (what create/attach resolved, so a run monitor
 * elsewhere uses the same); else `workspace_config`; else config.json found as
 * Workspace.from_config() finds it (./config.json, ./.azureml/config.json, then parents).
 * Fails with CTARGET_E_CONFIG naming the missing value and where to set it. */
ctarget_status az_ctx_new(const ctarget_host *host, ctarget_call *call, ctarget_target *t,
                          unsigned flags, az_ctx **out, ctarget_error *err);
void az_ctx_free(az_ctx *az);

const ctarget_host *az_host(const az_ctx *az);
ctarget_call *az_call(const az_ctx *az);
const char *az_subscription0(const az_ctx *az);
const char *az_resource_group0(const az_ctx *az);
const char *az_workspace0(const az_ctx *az);
const char *az_arm_endpoint0(const az_ctx *az);      /* no trailing '/' */
/* "service principal <client id> (secret)", "managed identity", ...: for messages and facts */
const char *az_credential_desc0(const az_ctx *az);
/* where the workspace values came from: "settings", "config.json at PATH", "saved" */
const char *az_workspace_origin0(const az_ctx *az);

/* Records the resolved workspace (subscription, group, workspace; no secrets) into `facts`
 * (may be NULL) and into <target state dir>/azure-workspace.json (mode 0600, written
 * atomically).  Call it from create and attach. */
ctarget_status az_ws_save(az_ctx *az, ctarget_obj *facts, ctarget_error *err);

/* ---------------------------------------------------------------------------------------- */
/* Resource ids and URL helpers (all results are malloc'ed; free()).                          */

/* "/subscriptions/S/resourceGroups/G/providers/Microsoft.MachineLearningServices/workspaces/W" */
char *az_ws_id(const az_ctx *az);
/* az_ws_id + "/" + kind + "/" + escaped name, e.g. ("computes", "gpu-1"); name may be NULL */
char *az_ws_resource_id(const az_ctx *az, const char *kind, const char *name);
/* Percent-encode everything but unreserved characters (RFC 3986); keep_slash keeps '/'. */
char *az_url_escape(const char *s, int keep_slash);
/* Splits an ARM resource id into its parts (borrowed pointers into a copy stored in `out`).
 * Returns 0 when id is well formed ("/subscriptions/x/resourceGroups/y/providers/NS/type/name
 * [/type/name]...").  type is "NS/type[/type...]"; name is the last segment. */
typedef struct az_rid {
    char *buf;                   /* owns the strings below; az_rid_clear frees */
    const char *subscription, *resource_group, *provider;
    const char *type;            /* "Microsoft.MachineLearningServices/workspaces/computes" */
    const char *name;            /* "gpu-1" */
    const char *parent_name;     /* "ws-ctarget" (name one level up) or NULL */
} az_rid;
int az_rid_parse(const char *id, az_rid *out);
void az_rid_clear(az_rid *r);

/* ---------------------------------------------------------------------------------------- */
/* Credentials.  Order (first that is configured wins; explicit settings only):              */
/*   access_token -> client_certificate_file (+ tenant_id, client_id) -> client_secret        */
/*   (+ tenant_id, client_id) -> managed_identity -> the environment: AZURE_CLIENT_ID +        */
/*   AZURE_TENANT_ID + AZURE_CLIENT_SECRET | AZURE_CLIENT_CERTIFICATE_PATH.                    */
/* Tokens are cached in memory per process, per (authority, tenant, client, credential, scope) */
/* until 5 minutes before expiry, wiped when dropped, never written anywhere.                  */

/* A bearer token for `scope` (AZ_SCOPE_ARM, AZ_SCOPE_STORAGE): new string, release with
 * az_token_free (wipes).  AAD/IMDS refusals -> CTARGET_E_AUTH with one line naming tenant and
 * client id and the fix, never the secret. */
ctarget_status az_token_get(az_ctx *az, const char *scope, char **token, ctarget_error *err);
void az_token_free(char *token);
/* Drops the cached token of `scope` for this context's credential (after a 401). */
void az_token_invalidate(az_ctx *az, const char *scope);

/* ---------------------------------------------------------------------------------------- */
/* ARM                                                                                       */

#define AZ_RETRY_SAFE (1u << 0)   /* POST/PATCH safe to repeat (listKeys, cancel, start) */
#define AZ_OK_404     (1u << 1)   /* 404 is an answer: return CTARGET_OK with status 404 */
#define AZ_WAIT       (1u << 2)   /* az_arm_do: wait for the LRO, then GET the resource */

typedef struct az_arm_req {
    const char *method;          /* GET PUT PATCH POST DELETE */
    const char *path;            /* "/subscriptions/..." (relative to arm_endpoint) or an
                                    absolute https URL on the ARM host (nextLink, LRO urls) */
    const char *api_version;     /* appended as ?api-version= unless path has one; NULL: none */
    const char *query;           /* extra query "a=b&c=d" (escaped by the caller), or NULL */
    const json_t *body;          /* sent as application/json, or NULL */
    const char *what;            /* "compute 'gpu-1'" for messages; NULL: from the path */
    long timeout_ms;             /* per attempt; 0 = 60 s */
} az_arm_req;

typedef struct az_arm_resp {
    long status;
    json_t *body;                /* parsed JSON body, or NULL (empty or not JSON) */
    char *async_op;              /* Azure-AsyncOperation header, or NULL */
    char *location;              /* Location header, or NULL */
    long retry_after_ms;         /* Retry-After, or -1 */
    int attempts;                /* HTTP attempts the host made (retries included) */
} az_arm_resp;
void az_arm_resp_clear(az_arm_resp *r);

/* One ARM request with a bearer token for ARM.  2xx -> CTARGET_OK.  A 401 with
 * InvalidAuthenticationToken/ExpiredAuthenticationToken drops the cached token and repeats the
 * request once with a new one; a second refusal -> CTARGET_E_AUTH.  Other errors -> the ARM
 * error body as one line: "compute 'gpu-1' (Microsoft.MachineLearningServices/workspaces/
 * computes): QuotaExceeded: <message>", with a status mapped from the HTTP status and code
 * (404 NOT_FOUND, 409 EXISTS/STATE, 400 CONFIG/REMOTE, 403 AUTH, 429 LIMIT ...).  `out` is
 * filled (status and body) on success and on HTTP errors; clear it in both cases. */
ctarget_status az_arm_call(az_ctx *az, const az_arm_req *req, unsigned flags,
                           az_arm_resp *out, ctarget_error *err);

/* Waits for a long-running operation started by `initial` (its 200/201/202 response):
 * polls Azure-AsyncOperation until Succeeded/Failed/Canceled (its error in the message), else
 * Location until it stops answering 202, honouring Retry-After (default 2 s, at most 60 s),
 * reporting progress as phase `what`, stopping early when the call is cancelled
 * (CTARGET_E_CANCELED) or after timeout_s (0 = 3600) with CTARGET_E_TIMEOUT.  On success
 * *final (may be NULL) receives the last body (the operation's or Location's), or NULL. */
ctarget_status az_lro_wait(az_ctx *az, const az_arm_resp *initial, const char *what,
                           long timeout_s, json_t **final, ctarget_error *err);

/* az_arm_call, then with AZ_WAIT the LRO (if the response started one) and, for PUT/PATCH,
 * a GET of the resource; *result (may be NULL) receives the resource body (NULL after
 * DELETE).  AZ_OK_404 applies to the first call: a 404 returns CTARGET_OK, *result NULL. */
ctarget_status az_arm_do(az_ctx *az, const az_arm_req *req, unsigned flags, json_t **result,
                         ctarget_error *err);

/* GET with ARM paging: calls fn for every element of "value" across nextLink pages; fn
 * returns nonzero to stop. */
ctarget_status az_arm_list(az_ctx *az, const az_arm_req *req,
                           int (*fn)(void *arg, json_t *item), void *arg, ctarget_error *err);

/* ---------------------------------------------------------------------------------------- */
/* Blob storage (Azure Storage REST / Azurite).                                               */
/* URLs: https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB, or Azurite's path style        */
/* http(s)://HOST:PORT/ACCOUNT/CONTAINER/BLOB.  Blob names are '/'-separated, escaped here.    */

typedef struct az_blob az_blob;

/* Container opened through a SAS URL ("https://.../CONTAINER[/FOLDER]?sv=...&sig=..."; Azure
 * ML's startPendingUpload gives one naming a folder, "LocalUpload/<id>").  Blob names given to
 * the functions below are relative to the container, not the folder: prefix them with
 * az_blob_folder0().  The SAS is a secret: it is never printed. */
ctarget_status az_blob_open_sas(az_ctx *az, const char *container_sas_url, az_blob **out,
                                ctarget_error *err);
/* Container opened with Shared Key auth.  endpoint is the account's blob endpoint
 * ("https://acct.blob.core.windows.net" or "https://127.0.0.1:10000/devstoreaccount1");
 * key_b64 is the base64 account key (a secret; copied and wiped on close). */
ctarget_status az_blob_open_key(az_ctx *az, const char *endpoint, const char *account,
                                const char *key_b64, const char *container, az_blob **out,
                                ctarget_error *err);
void az_blob_close(az_blob *b);
/* The folder a SAS URL named ("LocalUpload/abc", unescaped), or "". */
const char *az_blob_folder0(const az_blob *b);
const char *az_blob_container0(const az_blob *b);

/* Creates the container (201, or 409 ContainerAlreadyExists -> OK). */
ctarget_status az_blob_create_container(az_blob *b, ctarget_error *err);

/* Put Blob (block blob) from memory.  Content above 4 MiB goes as Put Block + Put Block List
 * with deterministic block ids.  Each request is retried on drops/429/5xx; before repeating a
 * request whose connection dropped, the blob (or block list) is checked, so nothing that
 * arrived is sent twice.  Progress under phase "upload". */
ctarget_status az_blob_put(az_blob *b, const char *name, const void *data, size_t len,
                           const char *content_type, ctarget_error *err);
/* Same from a local file (read in blocks, not loaded whole). */
ctarget_status az_blob_put_file(az_blob *b, const char *name, const char *path,
                                const char *content_type, ctarget_error *err);

/* Bytes [offset, offset+length) of a blob (length < 0: to its end) written through `out`.
 * *size (may be NULL) receives the blob's total size.  An offset at or past the end writes
 * nothing and returns OK (append blobs read by offset).  404 -> CTARGET_E_NOT_FOUND. */
ctarget_status az_blob_get(az_blob *b, const char *name, uint64_t offset, int64_t length,
                           ctarget_write_fn out, void *out_arg, uint64_t *size,
                           ctarget_error *err);
/* Size of a blob: OK with *size, or CTARGET_E_NOT_FOUND. */
ctarget_status az_blob_size(az_blob *b, const char *name, uint64_t *size, ctarget_error *err);

/* Lists blobs whose names start with prefix (NULL: all), following NextMarker; fn gets each
 * name and size and returns nonzero to stop. */
ctarget_status az_blob_list(az_blob *b, const char *prefix,
                            int (*fn)(void *arg, const char *name, uint64_t size), void *arg,
                            ctarget_error *err);

ctarget_status az_blob_delete(az_blob *b, const char *name, ctarget_error *err);

/* Counters since open (for benchmarks and tests): requests sent, body bytes sent. */
void az_blob_stats(const az_blob *b, uint64_t *requests, uint64_t *bytes_sent);

#endif /* CTARGET_AZURE_H */
