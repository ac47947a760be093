/* computeinstance: an Azure ML compute instance (one VM, not autoscaled, stopped to stop
 * billing).  Descriptor, settings, validate and power actions; compute and run operations are
 * shared with amlcompute (plugins/amlcompute/compute.c and run.c, compiled into both).
 * ssh_public_access cannot change after creation: the key is IMMUTABLE, so the core refuses
 * `compute update --set ssh_public_access=...` before the plugin is asked. */
#include "config.h"

#include "../amlcompute/aml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    AZ_CONFIG_KEYS,
    AML_STORAGE_KEY,
    K(.name = "vm_size", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_CREATE | CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "VM size of the instance (STANDARD_DS3_V2, ...)"),
    K(.name = "ssh_public_access", .type = CTARGET_KEY_BOOL, .default_value = "false",
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "open the instance's public SSH port (fixed at creation)"),
    K(.name = "admin_user_ssh_public_key", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "SSH public key of the azureuser account (with ssh_public_access)"),
    K(.name = "vnet_resourcegroup_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "resource group of the virtual network (default: the workspace's)"),
    K(.name = "vnet_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "virtual network the instance joins"),
    K(.name = "subnet_name", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "subnet of vnet_name the instance joins"),
    K(.name = "resource_id", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_ATTACH_ONLY | CTARGET_KEY_IMMUTABLE, .identity = 1,
      .help = "ARM id of an existing compute instance (attach; default: the one named like "
              "the target)"),
    K(.name = "location", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_CREATE_ONLY | CTARGET_KEY_IMMUTABLE,
      .help = "Azure region of the instance (default: the workspace's)"),
};

static ctarget_status ci_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    aml_h = host;
    *p = NULL;
    return CTARGET_OK;
}

static void ci_fini(void *p)
{
    (void)p;
}

static ctarget_status ci_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c;
    ctarget_status rc = aml_validate_common(AML_INSTANCE, t, v, err);
    if (rc)
        return rc;
    const char *key = aml_h->config_get0(t, "admin_user_ssh_public_key");
    if (key && *key && strncmp(key, "ssh-", 4) && strncmp(key, "ecdsa-", 6)) {
        aml_h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "admin_user_ssh_public_key must be an OpenSSH public key line "
                         "(ssh-rsa AAAA..., ssh-ed25519 AAAA...), not a file name");
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status ci_create(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                                ctarget_error *err)
{
    (void)p;
    return aml_create(AML_INSTANCE, c, t, f, err);
}

static ctarget_status ci_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                                ctarget_error *err)
{
    (void)p;
    return aml_attach(AML_INSTANCE, c, t, f, err);
}

static ctarget_status ci_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *d, ctarget_error *err)
{
    (void)p;
    return aml_status(AML_INSTANCE, c, t, st, d, err);
}

static ctarget_status ci_start(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    return aml_power(c, t, "start", err);
}

static ctarget_status ci_stop(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    return aml_power(c, t, "stop", err);
}

static ctarget_status ci_restart(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    return aml_power(c, t, "restart", err);
}

/* Only the shared Azure settings (credentials, endpoints) can change: check that the
 * instance answers with them.  Everything about the VM itself is fixed at creation. */
static ctarget_status ci_update(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    az_ctx *az;
    ctarget_status rc = aml_az(c, t, &az, err);
    if (rc)
        return rc;
    json_t *cur = NULL;
    rc = aml_compute_get(az, t, &cur, err);
    if (!rc && !cur) {
        aml_h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                         "compute instance '%s' no longer exists in workspace '%s'",
                         aml_compute_name(t), az_workspace0(az));
        rc = CTARGET_E_NOT_FOUND;
    }
    json_decref(cur);
    az_ctx_free(az);
    return rc;
}

static ctarget_status ci_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    return aml_detach(c, t, err);
}

static ctarget_status ci_delete(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p;
    return aml_delete(AML_INSTANCE, c, t, err);
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = ci_validate,
    .create = ci_create,
    .attach = ci_attach,
    .status = ci_status,
    .start = ci_start,
    .stop = ci_stop,
    .restart = ci_restart,
    .update = ci_update,
    .detach = ci_detach,
    .delete_ = ci_delete,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "computeinstance",
    .version = PACKAGE_VERSION,
    .description = "Azure ML compute instance: one VM, started and stopped by you",
    .license = "MIT",
    .capabilities = CTARGET_CAP_CREATE | CTARGET_CAP_ATTACH | CTARGET_CAP_SCRIPT_RUN |
                    CTARGET_CAP_CANCEL | CTARGET_CAP_GPU | CTARGET_CAP_START_STOP | CTARGET_CAP_UPDATE |
                    CTARGET_CAP_HYPERPARAMETER_TUNING | CTARGET_CAP_MODEL_SELECTION |
                    CTARGET_CAP_PIPELINE_STEP,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = ci_init,
    .fini = ci_fini,
    .compute = &compute_ops,
    .run = &aml_run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
