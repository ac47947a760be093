/* Test support: the Azure emulators (tests/emulators/azure_emulator.py: AAD, IMDS, ARM +
 * Azure ML, admin API) and Azurite (real blob storage from npm), driven from C.
 *
 * azfix_start() starts Azurite (TLS, 127.0.0.1, a free port, scratch dir) and the emulator
 * (HTTPS on a free port for AAD + ARM + /_emulator/, plain HTTP on a second port for IMDS),
 * waits for both (bounded polling), and fills the struct.  Both are stopped by their PID at
 * azfix_stop() or when the program exits (atexit, before testlib removes the directories):
 * call azfix_start only after tl_main has started.  See tests/emulators/README.md.
 *
 * Every string is owned by the fixture and valid until azfix_stop(). */
#ifndef CTARGET_TESTS_AZFIX_H
#define CTARGET_TESTS_AZFIX_H

#include <jansson.h>
#include <sys/types.h>

typedef struct azfix_opts {
    const char *dir;        /* fixture directory (NULL: a fresh tl_tmpdir) */
    const char *seed;       /* seed JSON text (NULL: the defaults; see README "Seed") */
    int lro_ms;             /* time an LRO stays InProgress (0: emulator default 300 ms) */
    int job_phase_ms;       /* time each job state before Running lasts (0: default 100 ms) */
    int no_azurite;         /* 1: do not start Azurite (AAD/ARM-only tests; blob = NULL) */
} azfix_opts;

typedef struct azfix {
    char *dir;              /* DIR: ca.pem, port, imds_port, config.json, logs, jobs/ */
    int port;               /* emulator HTTPS port (AAD, ARM, admin) */
    int imds_port;          /* emulator plain-HTTP IMDS port */
    int blob_port;          /* Azurite's blob port (HTTPS), 0 without Azurite */

    /* endpoints, as the product's settings take them (no trailing slash) */
    char *arm;              /* arm_endpoint:  https://127.0.0.1:PORT */
    char *aad;              /* aad_endpoint:  https://127.0.0.1:PORT (token at /TENANT/oauth2/v2.0/token) */
    char *imds;             /* imds_endpoint: http://127.0.0.1:IMDS_PORT */
    char *blob;             /* https://127.0.0.1:BLOB_PORT/devstoreaccount1 (NULL without Azurite) */
    char *blob_proxy;       /* the same account through the emulator's proxy in front of Azurite:
                             * blob traffic counted (azfix_blob_requests) and faulted ("target":
                             * "blob").  SAS URLs of startPendingUpload name it after
                             * azfix_config(fx, "{\"blob_via_proxy\":true}"), Azurite otherwise. */
    int blob_proxy_port;
    char *ca_bundle;        /* DIR/ca.pem: the throwaway CA (CTARGET_CA_BUNDLE, NODE_EXTRA_CA_CERTS) */

    /* identities (seed values) */
    char *tenant_id;
    char *client_id;        /* the service principal */
    char *client_secret;    /* its secret (a test secret: grep outputs for it) */
    char *client_cert;      /* DIR/sp-cert.pem: the SP's certificate + unencrypted key (PEM) */
    char *client_cert_p;    /* DIR/sp-cert-enc.pem: the same, key encrypted with ... */
    char *client_cert_password; /* ... this password */
    char *mi_client_id;     /* the managed identity's client id (IMDS) */

    /* the workspace */
    char *subscription_id;
    char *resource_group;
    char *workspace_name;
    char *location;
    char *workspace_id;     /* /subscriptions/S/resourceGroups/RG/providers/Microsoft.MachineLearningServices/workspaces/WS */
    char *config_json;      /* DIR/config.json (also DIR/.azureml/config.json), Workspace.from_config() style */

    /* "NAME=value" strings for tl_exec's env_extra, NULL-terminated: CTARGET_CA_BUNDLE,
     * NODE_EXTRA_CA_CERTS, AZFIX_ARM, AZFIX_AAD, AZFIX_IMDS, AZFIX_BLOB, AZFIX_TENANT ... */
    char **env;

    pid_t emu_pid;
    pid_t azurite_pid;
    int running;
} azfix;

/* Start both (opts may be NULL).  0 on success; on failure -1 with the logs printed and
 * nothing left running. */
int azfix_start(azfix *fx, const azfix_opts *opts);
/* Stop both by PID (TERM, then KILL after 5 s), wait for them.  Idempotent. */
void azfix_stop(azfix *fx);

/* Admin API, HTTPS with the fixture's CA.  method "GET"/"POST"/"DELETE", path below the
 * emulator root (e.g. "/_emulator/requests"), body JSON text or NULL.  Returns the parsed
 * JSON answer (owned; json_null() for an empty one) or NULL on a transport error or a
 * status >= 400 (printed).  *status gets the HTTP status when not NULL. */
json_t *azfix_admin(azfix *fx, const char *method, const char *path, const char *body, int *status);

/* POST /_emulator/faults with a fault spec, e.g.
 *   {"method":"PUT","path":"/jobs/","status":429,"retry_after":1,"count":5}
 *   {"method":"PUT","path":"blob-name","action":"drop","count":1}
 *   {"action":"slow_lro","lro_ms":3000,"count":1}
 *   {"action":"fail_provisioning","path":"/computes/bad","code":"...","message":"..."}
 *   {"action":"preempt","job":"JOBNAME"}
 * 0 on success. */
int azfix_fault(azfix *fx, const char *json);
/* GET /_emulator/requests: a JSON array (owned) of {"seq","method","path","query","status",
 * "body_size","api_version","invalid"?}; never an auth header or a body. */
json_t *azfix_requests(azfix *fx);
/* GET /_emulator/blob_requests: what went through the blob proxy, a JSON array (owned) of
 * {"seq","method","path","query" (sig redacted),"status" (0: dropped),"body_size",
 * "body_received" (dropped uploads),"response_size","fault"?}.  Blob faults are the same specs
 * with "target":"blob", e.g. {"target":"blob","method":"PUT","path":"ctarget-blobs/",
 * "action":"drop","after_bytes":1000} drops the connection mid-upload. */
json_t *azfix_blob_requests(azfix *fx);
/* How many recorded requests match method (NULL: any) and a POSIX extended regex on the
 * path (NULL: any). */
int azfix_count(azfix *fx, const char *method, const char *path_regex);
/* POST /_emulator/reset: forget faults and the request log (state stays).  0 on success. */
int azfix_reset(azfix *fx);
/* POST /_emulator/config with e.g. {"lro_ms":200,"token_lifetime_s":2,"job_phase_ms":50}. */
int azfix_config(azfix *fx, const char *json);
/* GET /_emulator/state: computes, jobs (with status, pid, workdir), codes, tokens. */
json_t *azfix_state(azfix *fx);

/* A blob's bytes from Azurite (container/name), through the emulator's admin API
 * (GET /_emulator/blob/CONTAINER/NAME); NULL when absent.  *len gets the size. */
char *azfix_blob_get(azfix *fx, const char *container, const char *name, size_t *len);

/* The HTTPS port of a further service's data plane (tests/emulators/emu_svc_NAME.py, README
 * "Further services"), read from DIR/<name>_port; -1 when that service serves none. */
int azfix_service_port(azfix *fx, const char *name);

/* The node_modules directory holding azurite and the official SDK (see README), or NULL. */
const char *azfix_node_modules(void);

#endif
