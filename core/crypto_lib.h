/* libcrypto, loaded on first use (crypto_lib.c), not linked: loading and relocating it
 * cost every ctarget process about a millisecond at start-up, and most never hash anything
 * (a warm re-snapshot of an unchanged tree, listing, status, the run monitor).  Only the
 * SHA-256 functions below are used; include this after <openssl/evp.h> and they call
 * through the table.  A missing libcrypto is reported by crypto_load() at the entry points
 * that hash; anything reaching a digest without it stops the process with that message. */
#ifndef CTARGET_CORE_CRYPTO_LIB_H
#define CTARGET_CORE_CRYPTO_LIB_H

#include <openssl/evp.h>

#include <ctarget/plugin.h>

#define CRYPTO_LIB_FUNCS(X)                                                                 \
    X(const EVP_MD *, EVP_sha256, (void))                                                   \
    X(EVP_MD_CTX *, EVP_MD_CTX_new, (void))                                                 \
    X(void, EVP_MD_CTX_free, (EVP_MD_CTX *))                                                \
    X(int, EVP_DigestInit_ex, (EVP_MD_CTX *, const EVP_MD *, ENGINE *))                     \
    X(int, EVP_DigestUpdate, (EVP_MD_CTX *, const void *, size_t))                          \
    X(int, EVP_DigestFinal_ex, (EVP_MD_CTX *, unsigned char *, unsigned int *))             \
    X(int, EVP_Digest, (const void *, size_t, unsigned char *, unsigned int *,              \
                        const EVP_MD *, ENGINE *))

#define CRYPTO_LIB_MEMBER(ret, name, params) ret(*name) params;
struct crypto_lib {
    CRYPTO_LIB_FUNCS(CRYPTO_LIB_MEMBER)
};
#undef CRYPTO_LIB_MEMBER

/* CTARGET_OK once libcrypto is loaded; else CTARGET_E_UNSUPPORTED with one line naming the
 * library and the package. */
ctarget_status crypto_load(ctarget_error *err);
/* The table; loads it first, and ends the process with the reason when that fails. */
const struct crypto_lib *crypto_lib(void);

#ifndef CRYPTO_LIB_IMPL
#define EVP_sha256 (crypto_lib()->EVP_sha256)
#define EVP_MD_CTX_new (crypto_lib()->EVP_MD_CTX_new)
#define EVP_MD_CTX_free (crypto_lib()->EVP_MD_CTX_free)
#define EVP_DigestInit_ex (crypto_lib()->EVP_DigestInit_ex)
#define EVP_DigestUpdate (crypto_lib()->EVP_DigestUpdate)
#define EVP_DigestFinal_ex (crypto_lib()->EVP_DigestFinal_ex)
#define EVP_Digest (crypto_lib()->EVP_Digest)
#endif

#endif
