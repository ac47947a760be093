/* The local target: this machine.  Always present (CTARGET_CAP_IMPLICIT). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "local.h"

static const ctarget_host *H; /* compute ops; the run ops use their context */

static const ctarget_config_key keys[] = {
    {.struct_size = sizeof(ctarget_config_key), .name = "max_concurrent_runs",
     .type = CTARGET_KEY_INT, .min = 1, .max = 4096,
     .help = "runs executing at once; more wait as Queued (default: number of CPUs)"},
};

static ctarget_status l_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    local_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        host->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    H = host;
    ctx->h = host;
    *p = ctx;
    return CTARGET_OK;
}

static void l_fini(void *p)
{
    free(p);
}

static ctarget_status l_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                 ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)v, (void)err;
    return CTARGET_OK;
}

static ctarget_status l_status(void *p, ctarget_call *c, ctarget_target *t,
                               ctarget_compute_state *st, ctarget_obj *details,
                               ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    snprintf(st->state, sizeof st->state, "Running");
    local_machine_facts(H, details);
    const char *m = H->config_get0(t, "max_concurrent_runs");
    if (m)
        H->obj_set_int(details, "max_concurrent_runs", atoll(m));
    else
        H->obj_set_int(details, "max_concurrent_runs", sysconf(_SC_NPROCESSORS_ONLN));
    return CTARGET_OK;
}

static ctarget_status l_update(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)err;
    return CTARGET_OK; /* settings are read at each use */
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = l_validate,
    .status = l_status,
    .update = l_update,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "local",
    .version = PACKAGE_VERSION,
    .description = "this machine: runs scripts as local processes",
    .license = "MIT",
    /* never PIPELINE_STEP: the local target cannot run pipeline steps (TARGETS.md) */
    .capabilities = CTARGET_CAP_IMPLICIT | CTARGET_CAP_GPU | CTARGET_CAP_UPDATE |
                    CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_CANCEL | CTARGET_CAP_MODEL_SELECTION,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = l_init,
    .fini = l_fini,
    .compute = &compute_ops,
    .run = &local_run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
