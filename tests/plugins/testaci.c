/* testaci: create-only (like Azure Container Instances): attach is refused by the core. */
#include <stdio.h>

#include <ctarget/plugin.h>

static const ctarget_host *H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    K(.name = "cpu_cores", .type = CTARGET_KEY_NUMBER, .min = 1, .max = 4,
      .default_value = "1", .help = "cores"),
    K(.name = "memory_gb", .type = CTARGET_KEY_NUMBER, .min = 1, .max = 16,
      .default_value = "1.5", .help = "memory"),
    K(.name = "region", .type = CTARGET_KEY_ENUM, .choices = "eastus|westus|westeurope",
      .flags = CTARGET_KEY_REQUIRED, .help = "region"),
};

static ctarget_status ta_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static ctarget_status ta_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)v, (void)err;
    return CTARGET_OK;
}

static ctarget_status ta_create(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    H->obj_set_str(facts, "region", H->config_get0(t, "region"));
    return CTARGET_OK;
}

static ctarget_status ta_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)details, (void)err;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    return CTARGET_OK;
}

static ctarget_status ta_delete(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)err;
    return CTARGET_OK;
}

static const ctarget_compute_ops ops = {
    .struct_size = sizeof ops,
    .validate = ta_validate,
    .create = ta_create,
    .status = ta_status,
    .delete_ = ta_delete,
};

static const ctarget_plugin desc = {
    .struct_size = sizeof desc,
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .name = "testaci",
    .version = "1.0",
    .description = "create-only target for tests",
    .license = "MIT",
    .capabilities = CTARGET_CAP_CREATE,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = ta_init,
    .compute = &ops,
};

CTARGET_DEFINE_PLUGIN(desc)
