/* oldabi: a plugin as an older build would have made it, with a compute table that ends
 * after `attach`.  The table sits inside a container whose next field is a trap function:
 * a core that read past struct_size would call it and abort. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <ctarget/plugin.h>

static const ctarget_host *H;

/* The first slots of ctarget_compute_ops, exactly as laid out in the current header. */
typedef struct old_compute_ops {
    size_t struct_size;
    ctarget_status (*validate)(void *, ctarget_call *, ctarget_target *, ctarget_verb,
                               ctarget_error *);
    ctarget_status (*create)(void *, ctarget_call *, ctarget_target *, ctarget_obj *,
                             ctarget_error *);
    ctarget_status (*attach)(void *, ctarget_call *, ctarget_target *, ctarget_obj *,
                             ctarget_error *);
    ctarget_status (*status)(void *, ctarget_call *, ctarget_target *, ctarget_compute_state *,
                             ctarget_obj *, ctarget_error *);
} old_compute_ops;

static ctarget_status trap(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *e)
{
    (void)p, (void)c, (void)t, (void)e;
    static const char msg[] = "oldabi: the core read a slot past struct_size\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    abort();
}

static ctarget_status o_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static ctarget_status o_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                 ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)v, (void)err;
    return CTARGET_OK;
}

static ctarget_status o_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                               ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)err;
    H->obj_set_str(facts, "built_with", "old table");
    return CTARGET_OK;
}

static ctarget_status o_status(void *p, ctarget_call *c, ctarget_target *t,
                               ctarget_compute_state *st, ctarget_obj *d, ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)d, (void)err;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    return CTARGET_OK;
}

static const struct {
    old_compute_ops ops;
    ctarget_status (*after[8])(void *, ctarget_call *, ctarget_target *, ctarget_error *);
} table = {
    .ops = {.struct_size = sizeof(old_compute_ops), .validate = o_validate, .attach = o_attach,
            .status = o_status},
    .after = {trap, trap, trap, trap, trap, trap, trap, trap},
};

static const ctarget_plugin desc = {
    .struct_size = sizeof desc,
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = 0,
    .name = "oldabi",
    .version = "0.9",
    .description = "built against a shorter compute table",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH,
    .init = o_init,
    .compute = (const ctarget_compute_ops *)(const void *)&table.ops,
};

CTARGET_DEFINE_PLUGIN(desc)
