/* acmehpc: a vendor's private on-prem target, built out of tree.
 *
 * This file is the proof that a vendor needs nothing but the installed headers and
 * ctarget-plugin.pc: `make installcheck` (and so `make distcheck`) compiles it with
 *     cc -shared -fPIC $(pkg-config --cflags ctarget-plugin) -o acmehpc.so acmehpc.c
 * against the *installed* tree, then drives the installed ctarget with it.  It includes only
 * <ctarget/plugin.h> and links nothing. */
#include <stdio.h>
#include <string.h>

#include <ctarget/plugin.h>

static const ctarget_host *H;

#define KEY(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    KEY(.name = "head_node", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
        .identity = 1, .help = "scheduler head node (host name)"),
    KEY(.name = "queue", .type = CTARGET_KEY_ENUM, .choices = "batch|gpu|debug",
        .default_value = "batch", .help = "scheduler queue"),
    KEY(.name = "api_token", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
        .help = "token for the scheduler's API"),
};

static ctarget_status a_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    if (host->struct_size < sizeof *host || host->abi_major != CTARGET_ABI_MAJOR)
        return CTARGET_E_PLUGIN;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static ctarget_status a_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                 ctarget_error *err)
{
    (void)p, (void)c, (void)v;
    const char *head = H->config_get0(t, "head_node");
    if (head && strchr(head, '/')) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "head_node '%s' must be a host name", head);
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status a_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                               ctarget_error *err)
{
    (void)p, (void)err;
    H->progress(c, "contacting head node", 0, 0);
    H->obj_set_str(facts, "scheduler", "acme-sched 4.2");
    H->obj_set_str(facts, "queue", H->config_get0(t, "queue"));
    return CTARGET_OK;
}

static ctarget_status a_status(void *p, ctarget_call *c, ctarget_target *t,
                               ctarget_compute_state *st, ctarget_obj *details,
                               ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    snprintf(st->state, sizeof st->state, "Idle");
    H->obj_set_str(details, "head_node", H->config_get0(t, "head_node"));
    return CTARGET_OK;
}

static const ctarget_compute_ops ops = {
    .struct_size = sizeof ops,
    .validate = a_validate,
    .attach = a_attach,
    .status = a_status,
};

static const ctarget_plugin desc = {
    .struct_size = sizeof desc,
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "acmehpc",
    .version = "4.2.0",
    .description = "ACME on-prem HPC scheduler (out-of-tree vendor plugin)",
    .license = "proprietary",
    .capabilities = CTARGET_CAP_ATTACH,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = a_init,
    .compute = &ops,
};

CTARGET_DEFINE_PLUGIN(desc)
