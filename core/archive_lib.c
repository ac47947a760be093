/* libarchive, loaded on first use (see archive_int.h for why it is not linked). */
#include "config.h"

#define ARCH_LIB_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "archive_int.h"
#include "util.h"

#define LIBARCHIVE_SONAME "libarchive.so.13"

/* Each prototype in the table must be exactly the one <archive.h> declares: _Generic on the
 * function's address (not evaluated, so no reference to libarchive is made) fails the build
 * on any difference. */
#define ARCH_LIB_CHECK(ret, name, params)                                                  \
    _Static_assert(_Generic(&name, ret(*) params: 1, default: 0),                         \
                   #name " does not match <archive.h>");
ARCH_LIB_FUNCS(ARCH_LIB_CHECK)

struct arch_lib arch_lib;

static pthread_once_t arch_once = PTHREAD_ONCE_INIT;
static char arch_error[512];   /* why it could not be loaded; "" once loaded */
static int arch_loaded;

static void arch_setup(void)
{
    void *dl = dlopen(LIBARCHIVE_SONAME, RTLD_LAZY | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        snprintf(arch_error, sizeof arch_error, "cannot load %s (%s): install libarchive13",
                 LIBARCHIVE_SONAME, e ? e : "unknown error");
        return;
    }
    struct arch_lib l;
    /* dlsym returns void *; memcpy keeps the conversion to a function pointer within what
     * ISO C allows (POSIX guarantees the representation) */
#define ARCH_LIB_RESOLVE(ret, name, params)                                                 \
    {                                                                                       \
        void *sym = dlsym(dl, #name);                                                       \
        if (!sym) {                                                                         \
            snprintf(arch_error, sizeof arch_error, "%s lacks %s: install libarchive >= 3.4", \
                     LIBARCHIVE_SONAME, #name);                                             \
            return;                                                                         \
        }                                                                                   \
        memcpy(&l.name, &sym, sizeof sym);                                                  \
    }
    ARCH_LIB_FUNCS(ARCH_LIB_RESOLVE)
#undef ARCH_LIB_RESOLVE
    arch_lib = l;
    arch_loaded = 1;
    /* never dlclose: archives may be open for the life of the process */
}

ctarget_status arch_lib_load(ctarget_error *err)
{
    pthread_once(&arch_once, arch_setup);
    if (arch_loaded)
        return CTARGET_OK;
    ct_err(err, CTARGET_E_UNSUPPORTED, "snapshot archives are not available: %s",
           arch_error[0] ? arch_error : "libarchive did not load");
    return CTARGET_E_UNSUPPORTED;
}
