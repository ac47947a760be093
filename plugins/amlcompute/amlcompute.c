/* amlcompute: Azure ML compute clusters (AmlCompute).  Descriptor, settings, validate,
 * update (scale settings, identity) and nodes; the rest is shared with computeinstance
 * (compute.c, run.c).  See README.md beside this file. */
#include "config.h"

#include "aml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    AZ_CONFIG_KEYS,
    AML_STORAGE_KEY,
    K(.name = "vm_size", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_CREATE | CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "VM size of the nodes (STANDARD_D2_V2, STANDARD_NC6, ...)"),
    K(.name = "max_nodes", .type = CTARGET_KEY_INT, .flags = CTARGET_KEY_REQUIRED_CREATE,
      .min = 1, .max = 10000, .help = "most nodes the cluster scales up to"),
    K(.name = "min_nodes", .type = CTARGET_KEY_INT, .default_value = "0", .min = 0,
      .max = 10000, .help = "nodes kept when idle (0: scale to zero, no cost when idle)"),
    K(.name = "vm_priority", .type = CTARGET_KEY_ENUM,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE, .default_value = "dedicated",
      .choices = "dedicated|lowpriority",
      .help = "lowpriority is cheaper but may be preempted (the run is restarted)"),
    K(.name = "idle_seconds_before_scaledown", .type = CTARGET_KEY_INT, .default_value = "120",
      .min = 0, .max = 31536000, .help = "idle time before a node is released"),
    K(.name = "admin_username", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "administrator account created on every node (for SSH)"),
    K(.name = "admin_user_password", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "its password (a secret: prefer admin_user_ssh_key)"),
    K(.name = "admin_user_ssh_key", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "its SSH public key (the text of id_ed25519.pub or id_rsa.pub)"),
    K(.name = "vnet_resourcegroup_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "resource group of the virtual network (default: the workspace's)"),
    K(.name = "vnet_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "virtual network the nodes join"),
    K(.name = "subnet_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "subnet of vnet_name the nodes join"),
    K(.name = "identity_type", .type = CTARGET_KEY_ENUM,
      .choices = "systemassigned|userassigned|systemassigned,userassigned|none",
      .help = "managed identity of the cluster (can be added to an existing one)"),
    K(.name = "identity_id", .type = CTARGET_KEY_LIST,
      .help = "resource ids of user-assigned identities (with identity_type userassigned)"),
    K(.name = "remote_login_port_public_access", .type = CTARGET_KEY_ENUM,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE, .default_value = "notspecified",
      .choices = "enabled|disabled|notspecified",
      .help = "public SSH port of the nodes (notspecified: open only with an admin user)"),
    K(.name = "resource_id", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_ATTACH_ONLY | CTARGET_KEY_IMMUTABLE, .identity = 1,
      .help = "ARM id of an existing cluster (attach; default: the cluster named like the "
              "target in the workspace)"),
    K(.name = "location", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "Azure region of the cluster (default: the workspace's)"),
};

static ctarget_status ac_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    aml_h = host;
    *p = NULL;
    return CTARGET_OK;
}

static void ac_fini(void *p)
{
    (void)p;
}

static const char *cfg(ctarget_target *t, const char *key)
{
    const char *v = aml_h->config_get0(t, key);
    return v && *v ? v : NULL;
}

static ctarget_status ac_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c;
    ctarget_status rc = aml_validate_common(AML_CLUSTER, t, v, err);
    if (rc)
        return rc;
    if (v != CTARGET_VERB_ATTACH || cfg(t, "max_nodes")) {
        const char *mx = cfg(t, "max_nodes"), *mn = cfg(t, "min_nodes");
        long long a = mn ? strtoll(mn, NULL, 10) : 0, b = mx ? strtoll(mx, NULL, 10) : 0;
        if (mx && a > b) {
            aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "min_nodes (%lld) is more than max_nodes (%lld): lower min_nodes "
                             "or raise max_nodes", a, b);
            return CTARGET_E_CONFIG;
        }
    }
    const char *it = cfg(t, "identity_type"), *ids = cfg(t, "identity_id");
    int wants_ids = it && strstr(it, "userassigned") != NULL;
    if (wants_ids && !ids) {
        aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "identity_type %s needs identity_id: the resource id(s) of the "
                         "user-assigned identities", it);
        return CTARGET_E_CONFIG;
    }
    if (ids && !wants_ids) {
        aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "identity_id is only used with identity_type userassigned (or "
                         "systemassigned,userassigned)");
        return CTARGET_E_CONFIG;
    }
    if (cfg(t, "admin_user_password") || cfg(t, "admin_user_ssh_key")) {
        if (!cfg(t, "admin_username")) {
            aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "admin_user_password and admin_user_ssh_key need admin_username");
            return CTARGET_E_CONFIG;
        }
    }
    const char *key = cfg(t, "admin_user_ssh_key");
    if (key && strncmp(key, "ssh-", 4) && strncmp(key, "ecdsa-", 6)) {
        aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "admin_user_ssh_key must be an OpenSSH public key line (ssh-ed25519 "
                         "AAAA..., ssh-rsa AAAA...), not a file name or a private key");
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status ac_create(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                                ctarget_error *err)
{
    (void)p;
    return aml_create(AML_CLUSTER, c, t, f, err);
}

static ctarget_status ac_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                                ctarget_error *err)
{
    (void)p;
    return aml_attach(AML_CLUSTER, c, t, f, err);
}

static ctarget_status ac_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *d, ctarget_error *err)
{
    (void)p;
    return aml_status(AML_CLUSTER, c, t, st, d, err);
}

/* scale settings (and the identity, when set) through PATCH, followed to its end */
static ctarget_status ac_update(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    json_t *cur = NULL;
    if ((rc = aml_compute_get(az, t, &cur, err)))
        goto out;
    if (!cur) {
        aml_h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                         "compute '%s' no longer exists in workspace '%s'", aml_compute_name(t),
                         az_workspace0(az));
        rc = CTARGET_E_NOT_FOUND;
        goto out;
    }
    json_t *body = json_object();
    if (cfg(t, "max_nodes")) {
        json_decref(body);
        body = aml_cluster_patch_body(t);
    } else {
        /* an attached cluster whose max_nodes ctarget never knew: keep the service's */
        json_t *ss = json_object_get(
            json_object_get(json_object_get(cur, "properties"), "properties"), "scaleSettings");
        if (json_is_object(ss)) {
            json_t *n = json_deep_copy(ss);
            const char *mn = cfg(t, "min_nodes"), *idle = cfg(t, "idle_seconds_before_scaledown");
            if (mn)
                json_object_set_new(n, "minNodeCount", json_integer(strtoll(mn, NULL, 10)));
            if (idle) {
                char d[64];
                aml_duration(d, sizeof d, strtoll(idle, NULL, 10));
                json_object_set_new(n, "nodeIdleTimeBeforeScaleDown", json_string(d));
            }
            json_object_set_new(body, "properties",
                                json_pack("{s:{s:o}}", "properties", "scaleSettings", n));
        }
    }
    json_t *id = aml_identity_body(t);
    if (id)
        json_object_set_new(body, "identity", id);
    char what[200];
    snprintf(what, sizeof what, "compute '%s'", aml_compute_name(t));
    char *rid = aml_compute_id(az, t);
    az_arm_req rq = {.method = "PATCH", .path = rid, .api_version = AZ_AML_API_VERSION,
                     .body = body, .what = what};
    aml_h->progress(c, "updating", 0, 0);
    rc = az_arm_do(az, &rq, AZ_WAIT, NULL, err);
    free(rid);
    json_decref(body);
out:
    json_decref(cur);
    az_ctx_free(az);
    return rc;
}

static ctarget_status ac_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    return aml_detach(c, t, err);
}

static ctarget_status ac_delete(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    return aml_delete(AML_CLUSTER, c, t, err);
}

static void put_str(ctarget_obj *o, const char *key, json_t *v)
{
    if (json_is_string(v))
        aml_h->obj_set_str(o, key, json_string_value(v));
    else if (json_is_integer(v))
        aml_h->obj_set_int(o, key, json_integer_value(v));
}

static ctarget_status ac_list_nodes(void *p, ctarget_call *c, ctarget_target *t,
                                    ctarget_obj *nodes, ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    char what[200];
    snprintf(what, sizeof what, "compute '%s'", aml_compute_name(t));
    char *id = aml_compute_id(az, t);
    size_t n = strlen(id) + 16;
    char *path = malloc(n);
    snprintf(path, n, "%s/listNodes", id);
    /* listNodes pages through nextLink like a list */
    for (int page = 0; page < 1000 && path; page++) {
        az_arm_req rq = {.method = "POST", .path = path, .api_version = AZ_AML_API_VERSION,
                         .what = what};
        az_arm_resp rs = {0};
        rc = az_arm_call(az, &rq, AZ_RETRY_SAFE, &rs, err);
        if (rc) {
            az_arm_resp_clear(&rs);
            break;
        }
        size_t i;
        json_t *nd;
        json_array_foreach(json_object_get(rs.body, "nodes"), i, nd) {
            ctarget_obj *o = aml_h->obj_append0(nodes, "nodes");
            put_str(o, "id", json_object_get(nd, "nodeId"));
            put_str(o, "state", json_object_get(nd, "nodeState"));
            put_str(o, "private_ip", json_object_get(nd, "privateIpAddress"));
            put_str(o, "public_ip", json_object_get(nd, "publicIpAddress"));
            put_str(o, "port", json_object_get(nd, "port"));
            put_str(o, "run_id", json_object_get(nd, "runId"));
        }
        const char *next = json_string_value(json_object_get(rs.body, "nextLink"));
        free(path);
        path = next && !strncmp(next, "https://", 8) ? strdup(next) : NULL;
        az_arm_resp_clear(&rs);
    }
    free(path);
    free(id);
    az_ctx_free(az);
    return rc;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = ac_validate,
    .create = ac_create,
    .attach = ac_attach,
    .status = ac_status,
    .update = ac_update,
    .detach = ac_detach,
    .delete_ = ac_delete,
    .list_nodes = ac_list_nodes,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "amlcompute",
    .version = PACKAGE_VERSION,
    .description = "Azure ML compute cluster (AmlCompute): autoscaling nodes, runs as jobs",
    .license = "MIT",
    .capabilities = CTARGET_CAP_CREATE | CTARGET_CAP_ATTACH | CTARGET_CAP_SCRIPT_RUN |
                    CTARGET_CAP_CANCEL | CTARGET_CAP_GPU | CTARGET_CAP_UPDATE |
                    CTARGET_CAP_LIST_NODES | CTARGET_CAP_MULTI_NODE |
                    CTARGET_CAP_HYPERPARAMETER_TUNING | CTARGET_CAP_MODEL_SELECTION |
                    CTARGET_CAP_PIPELINE_STEP,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = ac_init,
    .fini = ac_fini,
    .compute = &compute_ops,
    .run = &aml_run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
