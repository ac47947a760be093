/* Purpose-built bad plugins: compiled once per defect (BAD_*), each into the .so named after
 * it, to pin down every refusal of the loader. */
#include <stddef.h>
#include <stdio.h>

#include <ctarget/plugin.h>

#ifndef BAD_NAME_STR
#define BAD_NAME_STR "x"
#endif

static ctarget_status b_init(const ctarget_host *h, void **p, ctarget_error *e)
{
    (void)h, (void)e;
    *p = NULL;
#ifdef BAD_INIT
    h->error_set(e, CTARGET_E_FAILED, 0, 0, "the vendor library is not licensed on this host");
    return CTARGET_E_FAILED;
#else
    return CTARGET_OK;
#endif
}

static ctarget_status b_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                 ctarget_error *e)
{
    (void)p, (void)c, (void)t, (void)v, (void)e;
    return CTARGET_OK;
}

#ifndef BAD_SLOT
static ctarget_status b_status(void *p, ctarget_call *c, ctarget_target *t,
                               ctarget_compute_state *st, ctarget_obj *d, ctarget_error *e)
{
    (void)p, (void)c, (void)t, (void)d, (void)e;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    return CTARGET_OK;
}
#endif

static ctarget_status b_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                               ctarget_error *e)
{
    (void)p, (void)c, (void)t, (void)f, (void)e;
    return CTARGET_OK;
}

static const ctarget_compute_ops ops = {
    .struct_size = sizeof ops,
    .validate = b_validate,
#ifndef BAD_SLOT
    .status = b_status,
#endif
    .attach = b_attach,
};

static const ctarget_plugin desc = {
    .struct_size = sizeof desc,
#ifdef BAD_MAJOR
    .abi_major = 2,
#else
    .abi_major = CTARGET_ABI_MAJOR,
#endif
    .abi_minor = CTARGET_ABI_MINOR,
#ifdef BAD_MINOR
    .min_core_minor = CTARGET_ABI_MINOR + 1,
#endif
    .name = BAD_NAME_STR,
    .version = "1.0",
    .description = "deliberately broken",
#ifdef BAD_CAP
    .capabilities = CTARGET_CAP_ATTACH | CTARGET_CAP_CREATE,
#else
    .capabilities = CTARGET_CAP_ATTACH,
#endif
    .init = b_init,
    .compute = &ops,
};

#if defined(BAD_NOSYM)
CTARGET_PLUGIN_EXPORT const ctarget_plugin *not_the_entry(void);
CTARGET_PLUGIN_EXPORT const ctarget_plugin *not_the_entry(void) { return &desc; }
#elif defined(BAD_ABI2)
CTARGET_PLUGIN_EXPORT const ctarget_plugin *ctarget_plugin_entry_v2(void);
CTARGET_PLUGIN_EXPORT const ctarget_plugin *ctarget_plugin_entry_v2(void) { return &desc; }
#elif defined(BAD_NULL)
CTARGET_PLUGIN_EXPORT const ctarget_plugin *CTARGET_PLUGIN_ENTRY(void);
CTARGET_PLUGIN_EXPORT const ctarget_plugin *CTARGET_PLUGIN_ENTRY(void) { return NULL; }
#else
CTARGET_DEFINE_PLUGIN(desc)
#endif

#ifdef BAD_CTOR
/* A valid plugin whose constructor leaves a mark: the loader must not dlopen a file it
 * refuses on its permissions, so a refused copy leaves no mark. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void b_mark(void)
{
    const char *m = getenv("CTARGET_TEST_CTOR_MARK");
    int fd = m ? open(m, O_WRONLY | O_CREAT | O_APPEND, 0600) : -1;
    if (fd >= 0) {
        ssize_t w = write(fd, "loaded\n", 7);
        (void)w;
        close(fd);
    }
}
#endif

#ifdef BAD_DEP
/* needs a symbol from a library that is not installed anywhere */
extern int ctmissing_symbol(void);
int bad_use_dep(void);
int bad_use_dep(void) { return ctmissing_symbol(); }
#endif
