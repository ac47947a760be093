/* libcrypto, loaded on first use (see crypto_lib.h for why it is not linked). */
#include "config.h"

#define CRYPTO_LIB_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/opensslv.h>

#include "crypto_lib.h"
#include "util.h"

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#define LIBCRYPTO_SONAME "libcrypto.so.3"
#else
#define LIBCRYPTO_SONAME "libcrypto.so.1.1"
#endif

/* Each prototype must be exactly the one <openssl/evp.h> declares (checked without
 * referencing the function). */
#define CRYPTO_LIB_CHECK(ret, name, params)                                               \
    _Static_assert(_Generic(&name, ret(*) params: 1, default: 0),                      \
                   #name " does not match <openssl/evp.h>");
CRYPTO_LIB_FUNCS(CRYPTO_LIB_CHECK)

static struct crypto_lib lib;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char why[512];    /* why it could not be loaded */
static int loaded;

static void setup(void)
{
    void *dl = dlopen(LIBCRYPTO_SONAME, RTLD_LAZY | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        snprintf(why, sizeof why, "cannot load %s (%s): install OpenSSL's libcrypto "
                 "(Debian/Ubuntu: libssl3)", LIBCRYPTO_SONAME, e ? e : "unknown error");
        return;
    }
    struct crypto_lib l;
    /* dlsym returns void *; memcpy keeps the conversion to a function pointer within what
     * ISO C allows (POSIX guarantees the representation) */
#define CRYPTO_LIB_RESOLVE(ret, name, params)                                              \
    {                                                                                      \
        void *sym = dlsym(dl, #name);                                                      \
        if (!sym) {                                                                        \
            snprintf(why, sizeof why, "%s lacks %s", LIBCRYPTO_SONAME, #name);            \
            return;                                                                        \
        }                                                                                  \
        memcpy(&l.name, &sym, sizeof sym);                                                 \
    }
    CRYPTO_LIB_FUNCS(CRYPTO_LIB_RESOLVE)
#undef CRYPTO_LIB_RESOLVE
    lib = l;
    loaded = 1;
    /* never dlclose: digests may be in use for the life of the process */
}

ctarget_status crypto_load(ctarget_error *err)
{
    pthread_once(&once, setup);
    if (loaded)
        return CTARGET_OK;
    ct_err(err, CTARGET_E_UNSUPPORTED, "SHA-256 is not available: %s", why);
    return CTARGET_E_UNSUPPORTED;
}

const struct crypto_lib *crypto_lib(void)
{
    pthread_once(&once, setup);
    if (!loaded) {
        /* an entry point should have reported this with crypto_load(); a digest cannot be
         * skipped, and a wrong one would be worse than stopping */
        fprintf(stderr, "ctarget: fatal: SHA-256 is not available: %s\n", why);
        abort();
    }
    return &lib;
}
