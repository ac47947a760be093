/* aks: Kubernetes clusters (AKS or any other, on-prem included) attached by kubeconfig; a run
 * is a batch/v1 Job.  See README.md beside this file.
 *
 * A run: the snapshot (ctarget's snapshot tar, uncompressed, at most AKS_SNAPSHOT_MAX bytes)
 * travels inline, base64 in the init container's environment (CTARGET_SNAPSHOT_0..N, each
 * below Linux's 128 KiB limit on one environment string); the init container (aks_boot.py
 * extract) rebuilds it in an emptyDir volume, the main container (aks_boot.py run) runs the
 * script there.  No ConfigMap, no storage account, nothing served by ctarget: the cluster's
 * own API carries everything, so any cluster the kubeconfig reaches works.  What comes back
 * (metrics, ./outputs, ./logs) comes through the pod's log as lines marked \x1ectarget:,
 * which read_logs strips from the run's log.
 *
 * Logs: GET pods/{pod}/log?timestamps=true&sinceTime=T, T the last timestamp kept; the lines
 * at or before what is kept already are skipped, so a dropped stream (or a killed monitor)
 * resumes without duplicate lines.  The raw lines are kept in work_dir/pod0.raw (the truth);
 * log.txt, metrics.jsonl and files.jsonl are derived from it and rebuilt when they disagree. */
#include "config.h"

#include "aks.h"
#include "aks_boot_py.h"
#include "azure.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define AKS_SNAPSHOT_MAX (512u * 1024u)
#define AKS_ENV_CHUNK 98304u
#define MARK "\x1e" "ctarget:"

static const ctarget_host *H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
#define AKS_GROUP_SOURCE 7u
static const ctarget_config_key keys[] = {
    K(.name = "kubeconfig", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE |
               CTARGET_KEY_ATTACH_ONLY,
      .group = AKS_GROUP_SOURCE,
      .help = "the kubeconfig (a secret: give file:PATH to reference kubectl's file, or its "
              "text to keep it in the secret store)"),
    K(.name = "resource_id", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_ATTACH_ONLY | CTARGET_KEY_IMMUTABLE |
               CTARGET_KEY_EXCLUSIVE,
      .group = AKS_GROUP_SOURCE, .identity = 1,
      .help = "ARM id of an AKS cluster (Microsoft.ContainerService/managedClusters/NAME): "
              "attached to the Azure ML workspace, its user kubeconfig fetched at each use"),
    K(.name = "agent_count", .type = CTARGET_KEY_INT, .default_value = "3", .min = 1,
      .max = 1000, .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "create: nodes of the new AKS cluster (agent_count x vCPUs >= 12 for production)"),
    K(.name = "vm_size", .type = CTARGET_KEY_STRING, .default_value = "Standard_D3_v2",
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "create: VM size of its nodes (Standard_D3_v2: 4 vCPUs)"),
    K(.name = "cluster_purpose", .type = CTARGET_KEY_ENUM, .default_value = "production",
      .choices = "production|dev-test", .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "create: production (FastProd: at least 12 vCPUs) or dev-test (any size)"),
    K(.name = "location", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "create: Azure region of the cluster (default: the workspace's)"),
    AZ_CONFIG_KEYS,
    K(.name = "context", .type = CTARGET_KEY_STRING,
      .help = "kubeconfig context to use (default: its current-context)"),
    K(.name = "namespace", .type = CTARGET_KEY_STRING,
      .help = "namespace of the runs' Jobs (default: the context's, else default)"),
    K(.name = "image", .type = CTARGET_KEY_STRING, .default_value = "python:3.11-slim",
      .help = "container image of the runs (needs python3); a run's docker image wins"),
    K(.name = "gpus_per_node", .type = CTARGET_KEY_INT, .default_value = "0", .min = 0,
      .max = 64, .help = "nvidia.com/gpu requested by each pod"),
    K(.name = "cpu", .type = CTARGET_KEY_STRING,
      .help = "CPU request of each pod (Kubernetes quantity: 500m, 2)"),
    K(.name = "memory", .type = CTARGET_KEY_STRING,
      .help = "memory request and limit of each pod (Kubernetes quantity: 512Mi, 4Gi)"),
    K(.name = "ttl_seconds_after_finished", .type = CTARGET_KEY_INT, .default_value = "86400",
      .min = 0, .max = 31536000,
      .help = "the cluster deletes a finished Job after this long (ctarget deletes it sooner)"),
};

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *hget(const ctarget_run_info *run, const char *k)
{
    return run->handle ? H->obj_get0_str(run->handle, k) : NULL;
}

static long long hint(const ctarget_run_info *run, const char *k, long long d)
{
    long long v;
    return run->handle && H->obj_get_int(run->handle, k, &v) ? v : d;
}

static int ns_ok(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 63 || s[0] == '-' || s[n - 1] == '-')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-'))
            return 0;
    return 1;
}

static void kube_release(void *p)
{
    aks_kube_free(p);
}

#define CS_API "2025-10-01"
#define ML_API "2025-12-01"

static char *created_marker(ctarget_target *t)
{
    return aks_fmt("%s/aks-created", H->target_state_dir0(t));
}

/* ctarget created this cluster (through the Azure ML compute API) */
static int was_created(ctarget_target *t)
{
    char *m = created_marker(t);
    int yes = access(m, F_OK) == 0;
    free(m);
    return yes;
}

static char *created_rid; /* the managed cluster behind a created compute (per process) */

static const char *rid_of(ctarget_target *t)
{
    const char *r = H->config_get0(t, "resource_id");
    if (r && *r)
        return r;
    return was_created(t) ? created_rid : NULL;
}

/* GET the workspace's compute named like the target: its body (owned) or an error */
static ctarget_status compute_get(ctarget_call *c, ctarget_target *t, json_t **out,
                                  ctarget_error *err)
{
    az_ctx *az;
    ctarget_status rc = az_ctx_new(H, c, t, 0, &az, err);
    if (rc)
        return rc;
    char *path = az_ws_resource_id(az, "computes", H->target_name(t));
    char *what = aks_fmt("compute '%s'", H->target_name(t));
    az_arm_req req = {.method = "GET", .path = path, .api_version = "2025-12-01", .what = what};
    rc = az_arm_do(az, &req, 0, out, err);
    free(path);
    free(what);
    az_ctx_free(az);
    return rc;
}

/* For a created compute: the managed cluster's id, once provisioning gave it one. */
static ctarget_status created_cluster(ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    if (created_rid)
        return CTARGET_OK;
    json_t *body = NULL;
    ctarget_status rc = compute_get(c, t, &body, err);
    if (rc)
        return rc;
    const char *r = json_string_value(json_object_get(json_object_get(body, "properties"),
                                                      "resourceId"));
    if (r && *r)
        created_rid = strdup(r);
    else {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "AKS compute '%s' has no cluster yet (no "
                     "resourceId): wait until `ctarget compute status %s` says Succeeded",
                     H->target_name(t), H->target_name(t));
        rc = CTARGET_E_STATE;
    }
    json_decref(body);
    return rc;
}

/* An AKS cluster's user kubeconfig: ARM listClusterUserCredentials (never stored). */
static ctarget_status aks_user_kubeconfig(ctarget_call *c, ctarget_target *t, char **text,
                                          ctarget_error *err)
{
    const char *rid = rid_of(t);
    az_rid r;
    if (az_rid_parse(rid, &r) || !r.type ||
        strcasecmp(r.type, "Microsoft.ContainerService/managedClusters")) {
        az_rid_clear(&r);
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "resource_id '%s' is not an AKS cluster id: give "
                     "/subscriptions/S/resourceGroups/G/providers/Microsoft.ContainerService/"
                     "managedClusters/NAME", rid);
        return CTARGET_E_CONFIG;
    }
    az_rid_clear(&r);
    az_ctx *az;
    ctarget_status rc = az_ctx_new(H, c, t, 0, &az, err);
    if (rc)
        return rc;
    char *path = aks_fmt("%s/listClusterUserCredentials", rid);
    char *what = aks_fmt("AKS cluster %s", rid);
    az_arm_req req = {.method = "POST", .path = path, .api_version = CS_API, .what = what};
    az_arm_resp resp = {0};
    rc = az_arm_call(az, &req, AZ_RETRY_SAFE, &resp, err);
    *text = NULL;
    if (!rc) {
        const char *v = json_string_value(json_object_get(
            json_array_get(json_object_get(resp.body, "kubeconfigs"), 0), "value"));
        unsigned char *b = NULL;
        size_t n = 0;
        if (!v || aks_b64dec(v, &b, &n) || !n) {
            free(b);
            H->error_set(err, CTARGET_E_REMOTE, 0, 0, "AKS cluster %s returned no user "
                         "kubeconfig (listClusterUserCredentials)", rid);
            rc = CTARGET_E_REMOTE;
        } else
            *text = (char *)b;
    }
    az_arm_resp_clear(&resp);
    az_ctx_free(az);
    free(path);
    free(what);
    return rc;
}

/* The target's kubeconfig, parsed once per process. */
static ctarget_status kube_get(ctarget_call *c, ctarget_target *t, aks_kube **out,
                               ctarget_error *err)
{
    aks_kube *k = H->target_data_get0(t);
    if (k) {
        *out = k;
        return CTARGET_OK;
    }
    char *text = NULL;
    ctarget_status rc;
    if (was_created(t) && (rc = created_cluster(c, t, err)))
        return rc;
    if (rid_of(t)) {
        if ((rc = aks_user_kubeconfig(c, t, &text, err)))
            return rc;
        rc = aks_kube_load(H, text, H->config_get0(t, "context"), &k, err);
        memset(text, 0, strlen(text));
        free(text);
        if (rc)
            return rc;
        goto loaded;
    }
    rc = H->secret_get1(t, "kubeconfig", &text, err);
    if (rc)
        return rc;
    if (!text || !*text) {
        H->secret_free(text);
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "target %s has no kubeconfig: set kubeconfig=file:PATH", H->target_name(t));
        return CTARGET_E_CONFIG;
    }
    rc = aks_kube_load(H, text, H->config_get0(t, "context"), &k, err);
    H->secret_free(text);
    if (rc)
        return rc;
loaded:;
    const char *ns = H->config_get0(t, "namespace");
    if (ns && *ns) {
        free(k->ns);
        k->ns = strdup(ns);
    }
    H->target_data_set(t, k, kube_release);
    *out = k;
    return CTARGET_OK;
}

static ctarget_status check_namespace(ctarget_call *c, aks_kube *k, ctarget_error *err)
{
    char *path = aks_fmt("/api/v1/namespaces/%s", k->ns);
    aks_resp r;
    ctarget_status rc = aks_req(H, c, k, "GET", path, NULL, &r, 0, err);
    free(path);
    if (rc == CTARGET_E_NOT_FOUND)
        H->error_set(err, rc, 0, 0, "namespace %s does not exist in cluster %s (context %s): "
                     "create it (kubectl create namespace %s) or set namespace", k->ns,
                     k->server, k->context, k->ns);
    aks_resp_free(&r);
    return rc;
}

/* ---- compute ops -------------------------------------------------------------------------- */

/* vCPUs of the VM sizes an AKS cluster can be created with (Azure's published sizes) */
static const struct {
    const char *name;
    int vcpus;
} VM_SIZES[] = {
    {"Standard_B2s", 2},    {"Standard_B4ms", 4},   {"Standard_D2_v2", 2},
    {"Standard_D3_v2", 4},  {"Standard_D4_v2", 8},  {"Standard_D5_v2", 16},
    {"Standard_DS2_v2", 2}, {"Standard_DS3_v2", 4}, {"Standard_DS4_v2", 8},
    {"Standard_DS5_v2", 16}, {"Standard_D2s_v3", 2}, {"Standard_D4s_v3", 4},
    {"Standard_D8s_v3", 8}, {"Standard_D16s_v3", 16}, {"Standard_D32s_v3", 32},
    {"Standard_F4s_v2", 4}, {"Standard_F8s_v2", 8}, {"Standard_NC6", 6},
    {"Standard_NC12", 12},  {"Standard_NC24", 24},  {"Standard_NC6s_v3", 6},
    {"Standard_NC12s_v3", 12}, {"Standard_NC24s_v3", 24},
};

static int vm_vcpus(const char *size)
{
    for (size_t i = 0; i < sizeof VM_SIZES / sizeof VM_SIZES[0]; i++)
        if (!strcasecmp(VM_SIZES[i].name, size))
            return VM_SIZES[i].vcpus;
    return 0;
}

static ctarget_status create_rule(ctarget_target *t, ctarget_error *err)
{
    const char *vm = H->config_get0(t, "vm_size");
    long long n = atoll(H->config_get0(t, "agent_count") ? H->config_get0(t, "agent_count") : "3");
    int v = vm_vcpus(vm ? vm : "");
    if (!v) {
        char known[1024] = "";
        for (size_t i = 0; i < sizeof VM_SIZES / sizeof VM_SIZES[0]; i++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                     VM_SIZES[i].name);
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "vm_size '%s' is not a size ctarget knows the "
                     "vCPUs of: use one of %s", vm ? vm : "", known);
        return CTARGET_E_CONFIG;
    }
    const char *purpose = H->config_get0(t, "cluster_purpose");
    if ((!purpose || !strcasecmp(purpose, "production")) && n * v < 12) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "a production AKS cluster needs agent_count x "
                     "vCPUs >= 12, and %lld x %d (%s) = %lld: raise agent_count to %lld, pick a "
                     "larger vm_size, or set cluster_purpose=dev-test", n, v, vm, n * v,
                     (long long)((12 + v - 1) / v));
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status aks_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb verb,
                                   ctarget_error *err)
{
    (void)p;
    (void)c;
    if (verb == CTARGET_VERB_CREATE) {
        ctarget_status rc = create_rule(t, err);
        if (rc)
            return rc;
    }
    const char *ns = H->config_get0(t, "namespace");
    if (ns && *ns && !ns_ok(ns)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "namespace '%s' is not a Kubernetes namespace "
                     "name: lower-case letters, digits and '-', at most 63", ns);
        return CTARGET_E_CONFIG;
    }
    const char *img = H->config_get0(t, "image");
    if (img && (!*img || strpbrk(img, " \t\n"))) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "image '%s' is not an image reference: give e.g. python:3.11-slim", img);
        return CTARGET_E_CONFIG;
    }
    static const char *const qk[] = {"cpu", "memory"};
    for (size_t i = 0; i < 2; i++) {
        const char *q = H->config_get0(t, qk[i]);
        if (q && (!*q || !isdigit((unsigned char)q[0]) ||
                  strspn(q, "0123456789.mkMGTPEi") != strlen(q))) {
            H->error_set(err, CTARGET_E_CONFIG, 0, 0, "%s '%s' is not a Kubernetes quantity: "
                         "give e.g. %s", qk[i], q, i ? "512Mi" : "500m");
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

static ctarget_status aks_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                 ctarget_error *err)
{
    (void)p;
    aks_kube *k;
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc || (rc = check_namespace(c, k, err)))
        return rc;
    H->obj_set_str(facts, "server", k->server);
    H->obj_set_str(facts, "context", k->context);
    H->obj_set_str(facts, "namespace", k->ns);
    H->obj_set_str(facts, "auth", k->token ? "token" : "client-certificate");
    if (!rid_of(t))
        return CTARGET_OK;
    /* an AKS cluster: attached to the Azure ML workspace as a Kubernetes compute */
    az_ctx *az;
    if ((rc = az_ctx_new(H, c, t, 0, &az, err)))
        return rc;
    char *path = az_ws_resource_id(az, "computes", H->target_name(t));
    char *what = aks_fmt("compute '%s'", H->target_name(t));
    json_t *body = json_pack("{s:{s:s, s:s, s:s, s:{s:s}}}", "properties", "computeType",
                             "Kubernetes", "resourceId", rid_of(t), "description",
                             "attached by ctarget", "properties", "namespace", k->ns);
    az_arm_req req = {.method = "PUT", .path = path, .api_version = ML_API, .body = body,
                      .what = what};
    json_t *res = NULL;
    rc = az_arm_do(az, &req, AZ_WAIT, &res, err);
    if (!rc) {
        H->obj_set_str(facts, "compute_type", "Kubernetes");
        rc = az_ws_save(az, facts, err);
    }
    json_decref(res);
    json_decref(body);
    free(path);
    free(what);
    az_ctx_free(az);
    return rc;
}

static ctarget_status aks_create(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                 ctarget_error *err)
{
    (void)p;
    ctarget_status rc = create_rule(t, err);
    if (rc)
        return rc;
    az_ctx *az;
    if ((rc = az_ctx_new(H, c, t, 0, &az, err)))
        return rc;
    const char *purpose = H->config_get0(t, "cluster_purpose");
    const char *loc = H->config_get0(t, "location");
    json_t *inner = json_pack("{s:I, s:s, s:s}", "agentCount",
                              (json_int_t)atoll(H->config_get0(t, "agent_count")), "agentVmSize",
                              H->config_get0(t, "vm_size"), "clusterPurpose",
                              purpose && !strcasecmp(purpose, "dev-test") ? "DevTest"
                                                                          : "FastProd");
    json_t *props = json_pack("{s:s, s:s, s:o}", "computeType", "AKS", "description",
                              "created by ctarget", "properties", inner);
    if (loc && *loc)
        json_object_set_new(props, "computeLocation", json_string(loc));
    json_t *body = json_pack("{s:o}", "properties", props);
    if (loc && *loc)
        json_object_set_new(body, "location", json_string(loc));
    char *path = az_ws_resource_id(az, "computes", H->target_name(t));
    char *what = aks_fmt("compute '%s'", H->target_name(t));
    az_arm_req req = {.method = "PUT", .path = path, .api_version = ML_API, .body = body,
                      .what = what};
    az_arm_resp resp = {0};
    rc = az_arm_call(az, &req, 0, &resp, err);
    if (!rc) {
        char *m = created_marker(t);
        FILE *f = fopen(m, "w");
        if (f)
            fclose(f);
        free(m);
        H->obj_set_str(facts, "compute_type", "AKS");
        H->obj_set_str(facts, "cluster_purpose", purpose ? purpose : "production");
        rc = az_ws_save(az, facts, err);
    }
    az_arm_resp_clear(&resp);
    json_decref(body);
    free(path);
    free(what);
    az_ctx_free(az);
    return rc; /* CREATING: status() follows the provisioning */
}

static ctarget_status aks_delete(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = az_ctx_new(H, c, t, 0, &az, err);
    if (rc)
        return rc;
    char *path = az_ws_resource_id(az, "computes", H->target_name(t));
    az_arm_req req = {.method = "DELETE", .path = path, .api_version = ML_API,
                      .query = "underlyingResourceAction=Delete"};
    rc = az_arm_do(az, &req, AZ_WAIT | AZ_OK_404, NULL, err);
    free(path);
    az_ctx_free(az);
    return rc;
}

static ctarget_prov_state prov_of(const char *s)
{
    if (!s)
        return CTARGET_PROV_UNKNOWN;
    if (!strcasecmp(s, "Succeeded"))
        return CTARGET_PROV_SUCCEEDED;
    if (!strcasecmp(s, "Creating"))
        return CTARGET_PROV_CREATING;
    if (!strcasecmp(s, "Failed"))
        return CTARGET_PROV_FAILED;
    if (!strcasecmp(s, "Updating"))
        return CTARGET_PROV_UPDATING;
    if (!strcasecmp(s, "Deleting"))
        return CTARGET_PROV_DELETING;
    if (!strcasecmp(s, "Canceled"))
        return CTARGET_PROV_CANCELED;
    return CTARGET_PROV_UNKNOWN;
}

static ctarget_status aks_status(void *p, ctarget_call *c, ctarget_target *t,
                                 ctarget_compute_state *st, ctarget_obj *details,
                                 ctarget_error *err)
{
    (void)p;
    if (was_created(t)) {
        json_t *body = NULL;
        ctarget_status rc = compute_get(c, t, &body, err);
        if (rc)
            return rc;
        json_t *pr = json_object_get(body, "properties");
        const char *ps = json_string_value(json_object_get(pr, "provisioningState"));
        st->provisioning_state = prov_of(ps);
        snprintf(st->state, sizeof st->state, "%s", ps ? ps : "Unknown");
        json_t *e, *errs = json_object_get(pr, "provisioningErrors");
        size_t i;
        json_array_foreach(errs, i, e)
        {
            const char *m = json_string_value(json_object_get(json_object_get(e, "error"),
                                                              "message"));
            if (m)
                snprintf(st->errors + strlen(st->errors), sizeof st->errors - strlen(st->errors),
                         "%s\n", m);
        }
        const char *r = json_string_value(json_object_get(pr, "resourceId"));
        if (r)
            H->obj_set_str(details, "resource_id", r);
        json_decref(body);
        return CTARGET_OK;
    }
    aks_kube *k;
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc || (rc = check_namespace(c, k, err)))
        return rc;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    snprintf(st->state, sizeof st->state, "Active");
    H->obj_set_str(details, "server", k->server);
    H->obj_set_str(details, "namespace", k->ns);
    return CTARGET_OK;
}

/* kubeconfig targets keep nothing but their settings, which the core forgets; an AKS
 * cluster is detached from the Azure ML workspace (never deleted) */
static ctarget_status aks_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    if (!rid_of(t))
        return CTARGET_OK;
    az_ctx *az;
    ctarget_status rc = az_ctx_new(H, c, t, 0, &az, err);
    if (rc)
        return rc;
    char *path = az_ws_resource_id(az, "computes", H->target_name(t));
    az_arm_req req = {.method = "DELETE", .path = path, .api_version = ML_API,
                      .query = "underlyingResourceAction=Detach"};
    rc = az_arm_do(az, &req, AZ_WAIT | AZ_OK_404, NULL, err);
    free(path);
    az_ctx_free(az);
    return rc;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = aks_validate,
    .create = aks_create,
    .delete_ = aks_delete,
    .attach = aks_attach,
    .status = aks_status,
    .detach = aks_detach,
};

/* ---- the Job ------------------------------------------------------------------------------ */

static char *job_name(const ctarget_run_info *run)
{
    char *s = aks_fmt("ctarget-%s", run->id);
    size_t j = 0;
    for (size_t i = 0; s[i] && j < 52; i++) {
        char ch = (char)tolower((unsigned char)s[i]);
        s[j++] = isalnum((unsigned char)ch) ? ch : '-';
    }
    while (j && s[j - 1] == '-')
        j--;
    s[j] = 0;
    if (run->attempt > 1) {
        char *o = aks_fmt("%s-a%d", s, run->attempt);
        free(s);
        s = o;
    }
    return s;
}

typedef struct {
    unsigned char *p;
    size_t n, cap;
    int over;
} mem_t;

static int mem_write(void *arg, const void *d, size_t n)
{
    mem_t *m = arg;
    if (m->n + n > AKS_SNAPSHOT_MAX) {
        m->over = 1;
        return -1;
    }
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->p = realloc(m->p, m->cap);
        if (!m->p)
            abort();
    }
    memcpy(m->p + m->n, d, n);
    m->n += n;
    return 0;
}

static json_t *env_var(const char *name, const char *value)
{
    return json_pack("{s:s, s:s}", "name", name, "value", value);
}

static ctarget_status build_job(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                                const char *name, char **out, ctarget_error *err)
{
    mem_t m = {0};
    ctarget_status rc = H->snapshot_write_tar(c, run->snapshot_id, NULL, NULL, 0, mem_write, &m,
                                              err);
    if (m.over) {
        free(m.p);
        H->error_set(err, CTARGET_E_LIMIT, 0, 0, "snapshot %s is larger than the %u KiB a "
                     "Kubernetes Job can carry inline: leave data out of the source directory "
                     "(.amlignore) and read it from storage in the script", run->snapshot_id,
                     AKS_SNAPSHOT_MAX / 1024);
        return CTARGET_E_LIMIT;
    }
    if (rc) {
        free(m.p);
        return rc;
    }
    char *b64 = aks_b64enc(m.p, m.n);
    free(m.p);
    json_t *init_env = json_array();
    size_t len = strlen(b64);
    for (size_t off = 0, i = 0; off < len; off += AKS_ENV_CHUNK, i++) {
        char nm[48];
        snprintf(nm, sizeof nm, "CTARGET_SNAPSHOT_%zu", i);
        char save = 0;
        size_t end = off + AKS_ENV_CHUNK < len ? off + AKS_ENV_CHUNK : len;
        save = b64[end];
        b64[end] = 0;
        json_array_append_new(init_env, env_var(nm, b64 + off));
        b64[end] = save;
    }
    free(b64);

    json_t *args = json_array();
    for (size_t i = 0; i < run->n_args; i++)
        json_array_append_new(args, json_string(run->args[i]));
    char *args_text = json_dumps(args, JSON_COMPACT);
    json_decref(args);
    char nodes[16];
    snprintf(nodes, sizeof nodes, "%u", run->node_count ? run->node_count : 1);
    json_t *env = json_array();
    json_array_append_new(env, env_var("CTARGET_RUN_ID", run->id));
    json_array_append_new(env, env_var("CTARGET_SCRIPT", run->script));
    json_array_append_new(env, env_var("CTARGET_ARGS", args_text));
    json_array_append_new(env, env_var("CTARGET_NODE_COUNT", nodes));
    free(args_text);
    for (size_t i = 0; i < run->n_env; i++) {
        const char *eq = strchr(run->env[i], '=');
        if (!eq || eq == run->env[i])
            continue;
        char *k = strndup(run->env[i], (size_t)(eq - run->env[i]));
        json_array_append_new(env, env_var(k, eq + 1));
        free(k);
    }
    const char *image = run->docker_image && *run->docker_image ? run->docker_image
                                                                 : H->config_get0(t, "image");
    long long gpus = atoll(H->config_get0(t, "gpus_per_node") ? H->config_get0(t, "gpus_per_node")
                                                              : "0");
    if (!gpus && run->docker_gpu)
        gpus = 1;
    json_t *res = json_object(), *lim = json_object(), *req = json_object();
    if (gpus) {
        char g[24];
        snprintf(g, sizeof g, "%lld", gpus);
        json_object_set_new(lim, "nvidia.com/gpu", json_string(g));
    }
    if (H->config_get0(t, "cpu"))
        json_object_set_new(req, "cpu", json_string(H->config_get0(t, "cpu")));
    if (H->config_get0(t, "memory")) {
        json_object_set_new(req, "memory", json_string(H->config_get0(t, "memory")));
        json_object_set_new(lim, "memory", json_string(H->config_get0(t, "memory")));
    }
    if (json_object_size(lim))
        json_object_set(res, "limits", lim);
    if (json_object_size(req))
        json_object_set(res, "requests", req);
    json_decref(lim);
    json_decref(req);
    json_t *mounts = json_pack("[{s:s, s:s}]", "name", "ctarget-work", "mountPath", "/ctarget");
    json_t *initc = json_pack("{s:s, s:s, s:[s,s,s,s], s:s, s:O, s:o}", "name", "ctarget-snapshot",
                              "image", image, "command", "python3", "-c", aks_boot_src, "extract",
                              "workingDir", "/ctarget", "volumeMounts", mounts, "env", init_env);
    json_t *mainc = json_pack("{s:s, s:s, s:[s,s,s,s], s:s, s:O, s:o, s:o}", "name", "main",
                              "image", image, "command", "python3", "-c", aks_boot_src, "run",
                              "workingDir", "/ctarget", "volumeMounts", mounts, "env", env,
                              "resources", res);
    json_decref(mounts);
    json_t *labels = json_pack("{s:s, s:s}", "ctarget-run", name + strlen("ctarget-"),
                               "app.kubernetes.io/managed-by", "ctarget");
    long long ttl = atoll(H->config_get0(t, "ttl_seconds_after_finished")
                              ? H->config_get0(t, "ttl_seconds_after_finished") : "86400");
    unsigned n = run->node_count ? run->node_count : 1;
    json_t *spec = json_pack(
        "{s:i, s:i, s:i, s:s, s:I, s:{s:{s:O}, s:{s:s, s:b, s:[o], s:[o], s:[{s:s, s:{}}]}}}",
        "backoffLimit", 0, "parallelism", (int)n, "completions", (int)n, "completionMode",
        "Indexed", "ttlSecondsAfterFinished", ttl, "template", "metadata", "labels", labels,
        "spec", "restartPolicy", "Never", "automountServiceAccountToken", 0, "initContainers",
        initc, "containers", mainc, "volumes", "name", "ctarget-work", "emptyDir");
    if (run->timeout_seconds > 0)
        json_object_set_new(spec, "activeDeadlineSeconds",
                            json_integer(run->timeout_seconds + 60));
    json_t *job = json_pack("{s:s, s:s, s:{s:s, s:O, s:{s:s}}, s:o}", "apiVersion", "batch/v1",
                            "kind", "Job", "metadata", "name", name, "labels", labels,
                            "annotations", "ctarget.io/run-id", run->id, "spec", spec);
    json_decref(labels);
    if (!job) {
        H->error_set(err, CTARGET_E_INTERNAL, 0, 0, "aks: building the Job body failed");
        return CTARGET_E_INTERNAL;
    }
    *out = json_dumps(job, JSON_COMPACT);
    json_decref(job);
    return CTARGET_OK;
}

/* ---- run ops ------------------------------------------------------------------------------ */

static ctarget_status aks_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    (void)run;
    aks_kube *k;
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc)
        return rc;
    return check_namespace(c, k, err);
}

static ctarget_status aks_submit(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    aks_kube *k;
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc)
        return rc;
    char *name = job_name(run), *body = NULL;
    if ((rc = build_job(c, t, run, name, &body, err))) {
        free(name);
        return rc;
    }
    char *path = aks_fmt("/apis/batch/v1/namespaces/%s/jobs", k->ns);
    aks_resp r;
    rc = aks_req(H, c, k, "POST", path, body, &r, 0, err);
    if (rc == CTARGET_E_EXISTS) {
        /* ours from an earlier try of this submit (a 409 after a lost answer), or a clash */
        char *gp = aks_fmt("%s/%s", path, name);
        aks_resp g;
        rc = aks_req(H, c, k, "GET", gp, NULL, &g, 0, err);
        free(gp);
        if (!rc) {
            const char *id = json_string_value(json_object_get(
                json_object_get(json_object_get(g.json, "metadata"), "annotations"),
                "ctarget.io/run-id"));
            if (!id || strcmp(id, run->id)) {
                H->error_set(err, CTARGET_E_EXISTS, 0, 0, "Job %s already exists in namespace "
                             "%s and is not this run's: delete it (kubectl delete job %s)",
                             name, k->ns, name);
                rc = CTARGET_E_EXISTS;
            }
        }
        aks_resp_free(&g);
    }
    aks_resp_free(&r);
    free(path);
    free(body);
    if (!rc) {
        H->obj_set_str(run->handle, "job", name);
        H->obj_set_str(run->handle, "namespace", k->ns);
        H->obj_set_int(run->handle, "submitted_ms", H->now_ms());
    }
    free(name);
    return rc;
}

static const char *waiting_reason(json_t *cs, const char **msg, const char **image)
{
    size_t i;
    json_t *v;
    json_array_foreach(cs, i, v)
    {
        json_t *w = json_object_get(json_object_get(v, "state"), "waiting");
        const char *r = json_string_value(json_object_get(w, "reason"));
        if (r && (!strcmp(r, "ErrImagePull") || !strcmp(r, "ImagePullBackOff") ||
                  !strcmp(r, "InvalidImageName") || !strcmp(r, "CreateContainerConfigError") ||
                  !strcmp(r, "CreateContainerError"))) {
            *msg = json_string_value(json_object_get(w, "message"));
            *image = json_string_value(json_object_get(v, "image"));
            return r;
        }
    }
    return NULL;
}

static json_t *terminated_of(json_t *cs, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(cs, i, v)
    {
        const char *n = json_string_value(json_object_get(v, "name"));
        json_t *term = json_object_get(json_object_get(v, "state"), "terminated");
        if (term && (!name || (n && !strcmp(n, name))))
            return term;
    }
    return NULL;
}

static ctarget_status list_pods(ctarget_call *c, aks_kube *k, const char *ns, const char *job,
                                aks_resp *r, ctarget_error *err)
{
    char *path = aks_fmt("/api/v1/namespaces/%s/pods?labelSelector=ctarget-run%%3D%s", ns,
                         job + strlen("ctarget-"));
    ctarget_status rc = aks_req(H, c, k, "GET", path, NULL, r, 0, err);
    free(path);
    return rc;
}

static ctarget_status aks_poll(void *p, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, long wait_ms, ctarget_run_poll *out,
                               ctarget_error *err)
{
    (void)p;
    const char *job = hget(run, "job"), *ns = hget(run, "namespace");
    if (!job || !ns) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no Job recorded in its handle",
                     run->id);
        return CTARGET_E_STATE;
    }
    if (wait_ms > 0)
        H->sleep_ms(c, wait_ms > 500 ? 500 : wait_ms);
    aks_kube *k;
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc)
        return rc;
    char *path = aks_fmt("/apis/batch/v1/namespaces/%s/jobs/%s", ns, job);
    aks_resp jr, pr;
    rc = aks_req(H, c, k, "GET", path, NULL, &jr, AKS_ANY_STATUS, err);
    free(path);
    if (rc)
        return rc;
    if ((rc = list_pods(c, k, ns, job, &pr, err))) {
        aks_resp_free(&jr);
        return rc;
    }
    int canceled = hint(run, "canceled", 0) != 0;
    json_t *items = json_object_get(pr.json, "items");
    size_t npods = json_array_size(items);
    if (jr.status == 404) {
        if (canceled) {
            out->state = npods ? CTARGET_RUN_RUNNING : CTARGET_RUN_CANCELED;
            snprintf(out->native_state, sizeof out->native_state, npods ? "Terminating"
                                                                        : "Deleted");
        } else {
            out->state = CTARGET_RUN_NOT_RESPONDING;
            snprintf(out->native_state, sizeof out->native_state, "NotFound");
            snprintf(out->reason, sizeof out->reason, "Job %s no longer exists in namespace %s "
                     "(deleted outside ctarget?)", job, ns);
        }
        goto done;
    }
    if (jr.status >= 400) {
        rc = CTARGET_E_REMOTE;
        H->error_set(err, rc, jr.status >= 500, 0, "Kubernetes API GET job %s: %ld", job,
                     jr.status);
        goto done;
    }
    /* the pods: phase is the native state (index 0's), failures named by their reason */
    const char *phase0 = NULL;
    int any_running = 0, any_init = 0, failed = 0;
    size_t i;
    json_t *pod;
    json_array_foreach(items, i, pod)
    {
        json_t *st = json_object_get(pod, "status");
        const char *ph = json_string_value(json_object_get(st, "phase"));
        const char *pname = json_string_value(json_object_get(json_object_get(pod, "metadata"),
                                                              "name"));
        const char *idx = json_string_value(json_object_get(
            json_object_get(json_object_get(pod, "metadata"), "annotations"),
            "batch.kubernetes.io/job-completion-index"));
        if (!phase0 || (idx && !strcmp(idx, "0")))
            phase0 = ph;
        const char *msg = NULL, *img = NULL;
        const char *why = waiting_reason(json_object_get(st, "containerStatuses"), &msg, &img);
        if (!why)
            why = waiting_reason(json_object_get(st, "initContainerStatuses"), &msg, &img);
        if (why && !failed) {
            failed = 1;
            out->state = CTARGET_RUN_FAILED;
            if (strstr(why, "Image"))
                snprintf(out->reason, sizeof out->reason, "pod %s: image %s could not be pulled "
                         "(%s): %s: set image to one the cluster can pull", pname ? pname : "?",
                         img ? img : "?", why, msg ? msg : "no detail");
            else
                snprintf(out->reason, sizeof out->reason, "pod %s: %s: %s", pname ? pname : "?",
                         why, msg ? msg : "the container could not be created");
            continue;
        }
        if (ph && !strcmp(ph, "Failed") && !failed) {
            const char *preason = json_string_value(json_object_get(st, "reason"));
            json_t *term = terminated_of(json_object_get(st, "containerStatuses"), "main");
            json_t *iterm = terminated_of(json_object_get(st, "initContainerStatuses"), NULL);
            const char *treason = json_string_value(json_object_get(term, "reason"));
            if (preason && !strcmp(preason, "Evicted")) {
                failed = 1;
                out->state = CTARGET_RUN_FAILED;
                snprintf(out->reason, sizeof out->reason, "pod %s was evicted: %s", pname,
                         json_string_value(json_object_get(st, "message"))
                             ? json_string_value(json_object_get(st, "message")) : "Evicted");
            } else if (treason && !strcmp(treason, "OOMKilled")) {
                failed = 1;
                out->state = CTARGET_RUN_FAILED;
                out->has_exit_code = 1;
                out->exit_code = (int)json_integer_value(json_object_get(term, "exitCode"));
                snprintf(out->reason, sizeof out->reason, "pod %s: container main was "
                         "OOMKilled (exit code %d): raise the memory setting", pname,
                         out->exit_code);
            } else if (term) {
                failed = 1;
                out->state = CTARGET_RUN_FAILED;
                out->has_exit_code = 1;
                out->exit_code = (int)json_integer_value(json_object_get(term, "exitCode"));
                snprintf(out->reason, sizeof out->reason, "pod %s: the script exited with "
                         "code %d", pname, out->exit_code);
            } else if (iterm && json_integer_value(json_object_get(iterm, "exitCode"))) {
                failed = 1;
                out->state = CTARGET_RUN_FAILED;
                snprintf(out->reason, sizeof out->reason, "pod %s: the snapshot could not be "
                         "unpacked (init container exit code %d)", pname,
                         (int)json_integer_value(json_object_get(iterm, "exitCode")));
            }
        }
        if (ph && !strcmp(ph, "Running"))
            any_running = 1;
        json_t *ics = json_object_get(st, "initContainerStatuses");
        size_t j;
        json_t *cs;
        json_array_foreach(ics, j, cs)
        if (json_object_get(json_object_get(cs, "state"), "running"))
            any_init = 1;
    }
    snprintf(out->native_state, sizeof out->native_state, "%s", phase0 ? phase0 : "Pending");
    if (canceled) {
        out->state = CTARGET_RUN_RUNNING;
        snprintf(out->native_state, sizeof out->native_state, "Terminating");
        goto done;
    }
    if (failed)
        goto done;
    json_t *conds = json_object_get(json_object_get(jr.json, "status"), "conditions"), *cd;
    json_array_foreach(conds, i, cd)
    {
        const char *ty = json_string_value(json_object_get(cd, "type"));
        const char *s = json_string_value(json_object_get(cd, "status"));
        if (!ty || !s || strcmp(s, "True"))
            continue;
        if (!strcmp(ty, "Complete")) {
            out->state = CTARGET_RUN_COMPLETED;
            out->has_exit_code = 1;
            out->exit_code = 0;
            goto done;
        }
        if (!strcmp(ty, "Failed")) {
            out->state = CTARGET_RUN_FAILED;
            const char *m = json_string_value(json_object_get(cd, "message"));
            snprintf(out->reason, sizeof out->reason, "Job %s failed: %s", job,
                     m ? m : "BackoffLimitExceeded");
            goto done;
        }
    }
    out->state = any_running ? CTARGET_RUN_RUNNING : any_init ? CTARGET_RUN_PREPARING
                                                              : CTARGET_RUN_QUEUED;
done:
    /* first seen Running (or past it): submit-to-Running, bounded by the poll interval */
    if ((out->state == CTARGET_RUN_RUNNING || out->state == CTARGET_RUN_COMPLETED ||
         (out->state == CTARGET_RUN_FAILED && out->has_exit_code)) && !canceled &&
        !hint(run, "running_ms", 0))
        H->obj_set_int(run->handle, "running_ms", H->now_ms());
    aks_resp_free(&jr);
    aks_resp_free(&pr);
    return rc;
}

/* ---- logs --------------------------------------------------------------------------------- */

static char *wpath(const ctarget_run_info *run, const char *name)
{
    return aks_fmt("%s/%s", run->work_dir, name);
}

static int append_file(const char *path, const char *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    return close(fd);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    *len = 0;
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
    if (!b)
        abort();
    *len = fread(b, 1, (size_t)(n > 0 ? n : 0), f);
    b[*len] = 0;
    fclose(f);
    return b;
}

/* One raw line ("TS text\n") into the derived files. */
static void derive_line(const ctarget_run_info *run, const char *line, size_t n)
{
    const char *sp = memchr(line, ' ', n);
    const char *txt = sp ? sp + 1 : line;
    size_t tn = n - (size_t)(txt - line);
    size_t ml = strlen(MARK);
    char *f;
    if (tn >= ml && !memcmp(txt, MARK, ml)) {
        txt += ml;
        tn -= ml;
        if (tn > 7 && !memcmp(txt, "metric ", 7)) {
            append_file(f = wpath(run, "metrics.jsonl"), txt + 7, tn - 7);
        } else if (tn > 5 && !memcmp(txt, "file ", 5)) {
            append_file(f = wpath(run, "files.jsonl"), txt + 5, tn - 5);
        } else if (tn > 4 && !memcmp(txt, "end ", 4)) {
            append_file(f = wpath(run, "end.json"), txt + 4, tn - 4);
        } else
            return;
    } else
        append_file(f = wpath(run, "log.txt"), txt, tn);
    free(f);
}

static void rebuild_derived(const ctarget_run_info *run, const char *raw, size_t n)
{
    static const char *const d[] = {"log.txt", "metrics.jsonl", "files.jsonl", "end.json"};
    for (size_t i = 0; i < 4; i++) {
        char *f = wpath(run, d[i]);
        unlink(f);
        free(f);
    }
    size_t s = 0;
    for (size_t i = 0; i < n; i++)
        if (raw[i] == '\n') {
            derive_line(run, raw + s, i + 1 - s);
            s = i + 1;
        }
}

/* One fetch of pod 0's log into work_dir; *partial when the answer was cut short. */
static ctarget_status sync_once(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                                int *partial, ctarget_error *err)
{
    *partial = 0;
    const char *job = hget(run, "job"), *ns = hget(run, "namespace");
    if (!job || !ns)
        return CTARGET_OK;
    char *rawp = wpath(run, "pod0.raw"), *statep = wpath(run, "pod0.state");
    size_t rawn = 0, stn = 0;
    char *raw = slurp(rawp, &rawn), *st = slurp(statep, &stn);
    /* only complete lines count; a torn tail (a crash mid-append) is cut */
    size_t good = rawn;
    while (good && raw[good - 1] != '\n')
        good--;
    if (good != rawn && truncate(rawp, (off_t)good) == 0)
        rawn = good;
    if (!st || (size_t)atoll(st) != rawn)
        rebuild_derived(run, raw ? raw : "", rawn);
    /* the last timestamp kept and how many lines carry it */
    char last[64] = "";
    long same = 0;
    if (rawn) {
        size_t e = rawn - 1, b = e;
        while (b && raw[b - 1] != '\n')
            b--;
        size_t sl = strcspn(raw + b, " \n");
        snprintf(last, sizeof last, "%.*s", (int)(sl < 63 ? sl : 63), raw + b);
        size_t s = 0;
        for (size_t i = 0; i < rawn; i++)
            if (raw[i] == '\n') {
                if (!strncmp(raw + s, last, strlen(last)) && raw[s + strlen(last)] == ' ')
                    same++;
                s = i + 1;
            }
    }
    free(raw);
    free(st);
    aks_kube *k;
    aks_resp pr = {0}, lr = {0};
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc || (rc = list_pods(c, k, ns, job, &pr, err)))
        goto out;
    const char *pod = NULL;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(pr.json, "items"), i, v)
    {
        json_t *md = json_object_get(v, "metadata");
        const char *idx = json_string_value(json_object_get(
            json_object_get(md, "annotations"), "batch.kubernetes.io/job-completion-index"));
        if (!pod || (idx && !strcmp(idx, "0")))
            pod = json_string_value(json_object_get(md, "name"));
    }
    if (!pod)
        goto out;
    char *path;
    if (last[0]) {
        char since[32];
        snprintf(since, sizeof since, "%.19sZ", last); /* metav1.Time: second precision */
        path = aks_fmt("/api/v1/namespaces/%s/pods/%s/log?container=main&timestamps=true"
                       "&sinceTime=%s", ns, pod, since);
    } else
        path = aks_fmt("/api/v1/namespaces/%s/pods/%s/log?container=main&timestamps=true", ns,
                       pod);
    rc = aks_req(H, c, k, "GET", path, NULL, &lr, AKS_ANY_STATUS | AKS_PARTIAL_OK, err);
    free(path);
    if (rc || lr.status != 200) /* 400: waiting to start; 404: gone */
        goto out;
    *partial = lr.partial;
    size_t s = 0, kept = 0;
    long skipped = 0;
    int appended = 0;
    for (size_t j = 0; j < lr.len; j++) {
        if (lr.body[j] != '\n')
            continue;
        const char *line = lr.body + s;
        size_t n = j + 1 - s;
        s = j + 1;
        size_t tl = strcspn(line, " \n");
        char ts[64];
        snprintf(ts, sizeof ts, "%.*s", (int)(tl < 63 ? tl : 63), line);
        if (last[0]) {
            int cmp = strcmp(ts, last);
            if (cmp < 0)
                continue;
            if (cmp == 0 && skipped < same) {
                skipped++;
                continue;
            }
        }
        if (append_file(rawp, line, n) == 0) {
            derive_line(run, line, n);
            kept += n;
            appended = 1;
        }
    }
    if (appended || !stn) {
        size_t nn = 0;
        char *again = slurp(rawp, &nn);
        free(again);
        char num[32];
        int len = snprintf(num, sizeof num, "%zu\n", nn);
        char *tmp = aks_fmt("%s.tmp", statep);
        unlink(tmp);
        if (append_file(tmp, num, (size_t)len) == 0)
            rename(tmp, statep);
        free(tmp);
    }
    (void)kept;
out:
    aks_resp_free(&pr);
    aks_resp_free(&lr);
    free(rawp);
    free(statep);
    return rc;
}

/* Pod 0's log brought in; a stream dropped mid-answer is resumed at once (bounded), from
 * the last line kept, so nothing is lost at the end of a run and nothing is repeated. */
static ctarget_status sync_log(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                               ctarget_error *err)
{
    ctarget_status rc = CTARGET_OK;
    int partial = 1;
    for (int i = 0; i < 8 && partial && !rc; i++)
        rc = sync_once(c, t, run, &partial, err);
    return rc;
}

static ctarget_status aks_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                    const ctarget_run_info *run, ctarget_stream stream,
                                    uint64_t offset, ctarget_write_fn out, void *out_arg,
                                    ctarget_error *err)
{
    (void)p;
    if (stream == CTARGET_STREAM_LOG) {
        ctarget_status rc = sync_log(c, t, run, err);
        if (rc)
            return rc;
    }
    char *f = wpath(run, stream == CTARGET_STREAM_LOG ? "log.txt" : "metrics.jsonl");
    size_t n;
    char *b = slurp(f, &n);
    free(f);
    if (b && offset < n)
        out(out_arg, b + offset, n - offset);
    free(b);
    return CTARGET_OK;
}

/* ---- cancel, outputs, cleanup ------------------------------------------------------------ */

static ctarget_status delete_job(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                                 const char *policy, ctarget_error *err)
{
    const char *job = hget(run, "job"), *ns = hget(run, "namespace");
    if (!job || !ns)
        return CTARGET_OK;
    aks_kube *k;
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc)
        return rc;
    char *path = aks_fmt("/apis/batch/v1/namespaces/%s/jobs/%s", ns, job);
    char *body = aks_fmt("{\"apiVersion\":\"v1\",\"kind\":\"DeleteOptions\","
                         "\"propagationPolicy\":\"%s\",\"gracePeriodSeconds\":%lld}", policy,
                         run->cancel_grace_seconds > 0 ? run->cancel_grace_seconds : 10);
    aks_resp r;
    rc = aks_req(H, c, k, "DELETE", path, body, &r, 0, err);
    if (rc == CTARGET_E_NOT_FOUND)
        rc = CTARGET_OK;
    aks_resp_free(&r);
    free(path);
    free(body);
    return rc;
}

static ctarget_status aks_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    H->obj_set_int(run->handle, "canceled", 1);
    return delete_job(c, t, run, "Foreground", err);
}

static ctarget_status aks_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    return delete_job(c, t, run, "Background", err);
}

static int rel_ok(const char *r)
{
    if (strncmp(r, "outputs/", 8) && strncmp(r, "logs/", 5))
        return 0;
    if (strstr(r, "//") || r[strlen(r) - 1] == '/')
        return 0;
    for (const char *s = r; *s;) {
        size_t n = strcspn(s, "/");
        if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        s += n;
        if (*s)
            s++;
    }
    return 1;
}

/* mkdir -p of rel's parent under dest, refusing symlinks on the way */
static int make_parents(const char *dest, const char *rel)
{
    char *p = aks_fmt("%s/%s", dest, rel);
    size_t base = strlen(dest) + 1;
    for (char *s = p + base; (s = strchr(s, '/')); s++) {
        *s = 0;
        struct stat sb;
        if (lstat(p, &sb) == 0) {
            if (!S_ISDIR(sb.st_mode)) {
                free(p);
                return -1;
            }
        } else if (mkdir(p, 0755) && errno != EEXIST) {
            free(p);
            return -1;
        }
        *s = '/';
    }
    free(p);
    return 0;
}

/* Multi-node runs: the output of the pods other than index 0 into dest_dir/logs/node-N.log
 * (the run's log is node 0's), marker lines left out. */
static ctarget_status other_nodes(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                                  const char *dest_dir, ctarget_error *err)
{
    const char *job = hget(run, "job"), *ns = hget(run, "namespace");
    if (!job || !ns || run->node_count < 2)
        return CTARGET_OK;
    aks_kube *k;
    aks_resp pr;
    ctarget_status rc = kube_get(c, t, &k, err);
    if (rc || (rc = list_pods(c, k, ns, job, &pr, err)))
        return rc;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(pr.json, "items"), i, v)
    {
        json_t *md = json_object_get(v, "metadata");
        const char *idx = json_string_value(json_object_get(
            json_object_get(md, "annotations"), "batch.kubernetes.io/job-completion-index"));
        const char *pod = json_string_value(json_object_get(md, "name"));
        if (!idx || !pod || !strcmp(idx, "0") || strspn(idx, "0123456789") != strlen(idx))
            continue;
        char *path = aks_fmt("/api/v1/namespaces/%s/pods/%s/log?container=main", ns, pod);
        aks_resp lr;
        ctarget_status r2 = aks_req(H, c, k, "GET", path, NULL, &lr, AKS_ANY_STATUS, err);
        free(path);
        if (r2 || lr.status != 200) {
            aks_resp_free(&lr);
            continue; /* best effort: node 0's log is the run's */
        }
        char *rel = aks_fmt("logs/node-%s.log", idx), *out = aks_fmt("%s/%s", dest_dir, rel);
        if (make_parents(dest_dir, rel) == 0) {
            unlink(out);
            size_t st = 0, ml = strlen(MARK);
            for (size_t j = 0; j < lr.len; j++)
                if (lr.body[j] == '\n') {
                    if (j + 1 - st < ml || memcmp(lr.body + st, MARK, ml))
                        append_file(out, lr.body + st, j + 1 - st);
                    st = j + 1;
                }
        }
        free(rel);
        free(out);
        aks_resp_free(&lr);
    }
    aks_resp_free(&pr);
    return CTARGET_OK;
}

static ctarget_status aks_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                        const ctarget_run_info *run, const char *dest_dir,
                                        ctarget_error *err)
{
    (void)p;
    ctarget_status rc = sync_log(c, t, run, err);
    if (rc || (rc = other_nodes(c, t, run, dest_dir, err)))
        return rc;
    char *f = wpath(run, "files.jsonl");
    size_t n;
    char *b = slurp(f, &n);
    free(f);
    if (!b)
        return CTARGET_OK;
    size_t s = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        if (b[i] != '\n')
            continue;
        b[i] = 0;
        json_error_t je;
        json_t *o = json_loads(b + s, 0, &je);
        s = i + 1;
        const char *rel = json_string_value(json_object_get(o, "p"));
        const char *d = json_string_value(json_object_get(o, "d"));
        json_int_t off = json_integer_value(json_object_get(o, "o"));
        if (!rel || !d || off < 0 || !rel_ok(rel)) {
            H->error_set(err, CTARGET_E_REMOTE, 0, 0, "run %s: the pod reported an output file "
                         "outside ./outputs and ./logs (%s): refused", run->id, rel ? rel : "?");
            rc = CTARGET_E_REMOTE;
            json_decref(o);
            break;
        }
        unsigned char *data;
        size_t dl;
        if (aks_b64dec(d, &data, &dl) == 0) {
            char *path = aks_fmt("%s/%s", dest_dir, rel);
            int fd = -1;
            if (make_parents(dest_dir, rel) == 0)
                fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (off ? 0 : O_TRUNC),
                          0644);
            if (fd < 0 || pwrite(fd, data, dl, (off_t)off) != (ssize_t)dl) {
                H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s: %s", path,
                             strerror(errno));
                rc = CTARGET_E_IO;
            }
            if (fd >= 0)
                close(fd);
            free(path);
            free(data);
        }
        json_decref(o);
    }
    free(b);
    return rc;
}

static ctarget_status aks_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    (void)c;
    aks_kube *k;
    if (!hget(run, "job")) {
        H->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no Job recorded in its handle",
                     run->id);
        return CTARGET_E_STATE;
    }
    return kube_get(c, t, &k, err);
}

static const ctarget_run_ops run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = aks_prepare,
    .submit = aks_submit,
    .poll = aks_poll,
    .read_logs = aks_read_logs,
    .cancel = aks_cancel,
    .fetch_outputs = aks_fetch_outputs,
    .reattach = aks_reattach,
    .cleanup = aks_cleanup,
};

/* ---- descriptor --------------------------------------------------------------------------- */

static ctarget_status aks_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static void aks_fini(void *p)
{
    (void)p;
}

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "aks",
    .version = PACKAGE_VERSION,
    .description = "Kubernetes cluster (AKS or any, by kubeconfig): runs as batch/v1 Jobs",
    .license = "MIT",
    .capabilities = CTARGET_CAP_CREATE | CTARGET_CAP_ATTACH | CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_CANCEL |
                    CTARGET_CAP_GPU | CTARGET_CAP_MULTI_NODE,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .name_min_len = 2,
    .name_max_len = 16,
    .name_flags = CTARGET_NAME_START_LETTER | CTARGET_NAME_DASH_THEN_LETTER,
    .init = aks_init,
    .fini = aks_fini,
    .compute = &compute_ops,
    .run = &run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
