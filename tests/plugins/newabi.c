/* newabi: a plugin from a future minor version: every table carries extra trailing fields,
 * config keys have a larger stride, and an unknown capability bit is set.  An older core
 * must ignore all of it and work. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <ctarget/plugin.h>

static const ctarget_host *H;

static ctarget_status trap(void)
{
    static const char msg[] = "newabi: the core called a slot it cannot know\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    abort();
}

typedef struct future_key {
    ctarget_config_key k;
    const char *future_field;
    long long more[3];
} future_key;

static const future_key keys[] = {
    {.k = {.struct_size = sizeof(future_key), .name = "endpoint", .type = CTARGET_KEY_STRING,
           .flags = CTARGET_KEY_REQUIRED, .identity = 1, .help = "service endpoint"},
     .future_field = "ignored"},
    {.k = {.struct_size = sizeof(future_key), .name = "replicas", .type = CTARGET_KEY_INT,
           .min = 1, .max = 9, .default_value = "3", .help = "replica count"},
     .future_field = "ignored"},
};

static ctarget_status n_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static ctarget_status n_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                 ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)v, (void)err;
    return CTARGET_OK;
}

static ctarget_status n_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                               ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    H->obj_set_str(facts, "replicas_seen", H->config_get0(t, "replicas"));
    return CTARGET_OK;
}

static ctarget_status n_status(void *p, ctarget_call *c, ctarget_target *t,
                               ctarget_compute_state *st, ctarget_obj *d, ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)d, (void)err;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    return CTARGET_OK;
}

static const struct {
    ctarget_compute_ops ops;
    ctarget_status (*future[4])(void);
} compute = {
    .ops = {.struct_size = sizeof compute, .validate = n_validate, .attach = n_attach,
            .status = n_status},
    .future = {trap, trap, trap, trap},
};

static const struct {
    ctarget_plugin d;
    const void *future_slots[6];
} desc = {
    .d = {.struct_size = sizeof desc,
          .abi_major = CTARGET_ABI_MAJOR,
          .abi_minor = CTARGET_ABI_MINOR + 1,
          .min_core_minor = CTARGET_ABI_MINOR,
          .name = "newabi",
          .version = "2.0",
          .description = "built against a newer minor ABI",
          .license = "MIT",
          .capabilities = CTARGET_CAP_ATTACH | (UINT64_C(1) << 60),
          .config_keys = &keys[0].k,
          .n_config_keys = 2,
          .init = n_init,
          .compute = &compute.ops},
    .future_slots = {"x", "y", "z", NULL, NULL, NULL},
};

CTARGET_PLUGIN_EXPORT const ctarget_plugin *CTARGET_PLUGIN_ENTRY(void);
CTARGET_PLUGIN_EXPORT const ctarget_plugin *CTARGET_PLUGIN_ENTRY(void)
{
    return &desc.d;
}
