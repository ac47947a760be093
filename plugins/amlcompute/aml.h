/* Azure ML compute targets: what amlcompute and computeinstance share.
 *
 * amlcompute.c      the amlcompute descriptor, settings, validate, update, nodes
 * ../computeinstance/computeinstance.c   the computeinstance descriptor, settings, power
 * compute.c         compute operations both use: create (PUT), attach (GET by name or resource
 *                   id), status (provisioning state and errors), detach, delete (LRO)
 * body.c            the JSON request bodies (jansson): compute PUT/PATCH, code version,
 *                   environment version, CommandJob
 * run.c             run operations: the snapshot as a code version (only missing blobs
 *                   uploaded), CommandJob PUT named after the run, poll, logs by range reads of
 *                   std_log.txt, cancel, outputs, reattach
 * az.c              Azure ML specifics on top of plugins/azure: location, datastores, SAS
 * ctarget_boot.py   uploaded with each code version: rebuilds the tree from manifest.jsonl and
 *                   the blob folder, then runs the script (compiled in as aml_boot_src[]) */
#ifndef CTARGET_AML_H
#define CTARGET_AML_H

#include <stddef.h>
#include <stdint.h>

#include <ctarget/plugin.h>
#include <jansson.h>

#include "../azure/azure.h"

/* Which kind of Azure ML compute a plugin manages. */
typedef enum aml_kind { AML_CLUSTER = 0, AML_INSTANCE = 1 } aml_kind;

extern const ctarget_host *aml_h; /* set by init */

/* computeType in the ARM body, and the plugin's name */
const char *aml_compute_type(aml_kind k);
const char *aml_plugin_name(aml_kind k);

/* ---- az.c: Azure plumbing on top of plugins/azure ------------------------------------------ */

/* a context for this call (az_ctx_new with the host), CTARGET_OK or err filled */
ctarget_status aml_az(ctarget_call *c, ctarget_target *t, az_ctx **az, ctarget_error *err);
/* the workspace's location (GET workspace) */
ctarget_status aml_ws_location(az_ctx *az, char **loc, ctarget_error *err);
/* A container of the workspace's datastore `datastore` ("workspaceblobstore",
 * "workspaceartifactstore") opened with the account key from listSecrets (never shown). */
ctarget_status aml_datastore_open(az_ctx *az, ctarget_target *t, const char *datastore,
                                  az_blob **b, ctarget_error *err);

/* Forget the cached datastore (its key was refused: rotated) */
void aml_datastore_forget(void);

/* The storage endpoint setting both plugins declare (after AZ_CONFIG_KEYS). */
#define AML_STORAGE_KEY                                                                     \
    {sizeof(ctarget_config_key), "storage_endpoint", CTARGET_KEY_STRING, 0, NULL,           \
     "blob endpoint of the workspace's storage account (default: "                         \
     "https://ACCOUNT.blob.core.windows.net, from the datastore)", NULL, 0, 0, 0u, 0u}
/* Container URL + SAS from a startPendingUpload sasUri that points into a folder:
 * *container_sas gets ".../CONTAINER?SAS" and *folder the folder's blob-name prefix
 * ("LocalUpload/abc/"). */
int aml_split_sas(const char *sas_uri, char **container_sas, char **folder);

/* ---- body.c -------------------------------------------------------------------------------- */

/* ISO 8601 duration of seconds: PT120S */
void aml_duration(char *buf, size_t len, long long seconds);
/* The compute PUT body from the target's settings; subscription and group are the
 * workspace's (the subnet's defaults), location filled in by the caller. */
ctarget_status aml_compute_body(aml_kind k, ctarget_target *t, const char *subscription,
                                const char *group, const char *location, json_t **body,
                                ctarget_error *err);
/* The AmlCompute PATCH body (scale settings) */
json_t *aml_cluster_patch_body(ctarget_target *t);
/* identity object for the settings, or NULL when identity_type is unset */
json_t *aml_identity_body(ctarget_target *t);
json_t *aml_code_version_body(const char *code_uri, const char *snapshot_id);
json_t *aml_environment_body(const ctarget_run_info *run, const char *conda_yaml);
/* The CommandJob body; compute_id and code_id are ARM ids; env_id an environment version id */
json_t *aml_command_job_body(const ctarget_run_info *run, const char *compute_id,
                             const char *code_id, const char *env_id, const char *blob_input_uri);
/* The job's shell command (quoted for /bin/sh) */
char *aml_job_command(const ctarget_run_info *run);
/* 'quoted' for /bin/sh */
char *aml_sh_quote(const char *s);

/* ---- compute.c ----------------------------------------------------------------------------- */

/* The compute name of t in its workspace (the target name, or the last part of resource_id) */
const char *aml_compute_name(ctarget_target *t);
/* GET the compute: *out its JSON, or NULL when there is none (404) */
ctarget_status aml_compute_get(az_ctx *az, ctarget_target *t, json_t **out, ctarget_error *err);
ctarget_status aml_validate_common(aml_kind k, ctarget_target *t, ctarget_verb verb,
                                   ctarget_error *err);
ctarget_status aml_create(aml_kind k, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                          ctarget_error *err);
ctarget_status aml_attach(aml_kind k, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                          ctarget_error *err);
ctarget_status aml_status(aml_kind k, ctarget_call *c, ctarget_target *t,
                          ctarget_compute_state *st, ctarget_obj *details, ctarget_error *err);
ctarget_status aml_delete(aml_kind k, ctarget_call *c, ctarget_target *t, ctarget_error *err);
ctarget_status aml_detach(ctarget_call *c, ctarget_target *t, ctarget_error *err);
/* POST .../computes/NAME/<action> and follow its LRO (start, stop, restart) */
ctarget_status aml_power(ctarget_call *c, ctarget_target *t, const char *action,
                         ctarget_error *err);
/* the ARM id of the target's compute */
char *aml_compute_id(az_ctx *az, ctarget_target *t);

/* ---- run.c --------------------------------------------------------------------------------- */
extern const ctarget_run_ops aml_run_ops;

/* a growable byte buffer */
typedef struct aml_buf {
    char *data;
    size_t len, cap;
} aml_buf;
int aml_buf_add(aml_buf *b, const void *data, size_t len);
void aml_buf_free(aml_buf *b);
int aml_buf_write(void *arg, const void *data, size_t len); /* ctarget_write_fn */

#endif
