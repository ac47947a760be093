/* libctazure internals shared by its source files (not for plugins). */
#ifndef CTARGET_AZURE_INT_H
#define CTARGET_AZURE_INT_H

#include <strings.h>

#include "azure.h"
#include "azure_parse.h"

typedef enum az_cred_kind {
    AZ_CRED_NONE = 0,
    AZ_CRED_TOKEN,         /* access_token setting (env:/file:/stored) */
    AZ_CRED_CERT,          /* service principal, certificate (JWT client assertion) */
    AZ_CRED_SECRET,        /* service principal, client secret */
    AZ_CRED_MI             /* managed identity through IMDS */
} az_cred_kind;

struct az_ctx {
    const ctarget_host *h;
    ctarget_call *call;
    ctarget_target *t;
    char *sub, *rg, *ws;
    char *ws_origin;
    char *tenant, *client_id;
    char *cert_file;
    int cert_has_password;     /* client_certificate_password is set */
    char *mi_client_id;
    char *arm, *aad, *imds;    /* no trailing '/' */
    az_cred_kind kind;
    int from_env;              /* credential from AZURE_* variables, not settings */
    char *desc;
};

/* host->error_set with the context's host */
#define AZ_ERR(az, err, code, transient, ...) \
    ((az)->h->error_set((err), (code), (transient), 0, __VA_ARGS__))

char *az_strdup(const char *s);
char *az_url_unescape(const char *s);
char *az_asprintf(const char *fmt, ...) CTARGET_PRINTF(1, 2);
void az_wipe_free(char *s);
/* http/https URL check: https always; http only when allow_http and the host is loopback or
 * link-local.  Returns 0 when acceptable. */
int az_url_ok(const char *url, int allow_http);

/* credentials (cred.c) */
ctarget_status az_cred_setup(az_ctx *az, ctarget_error *err);

/* base64 (blob.c / cred.c) */
char *az_b64(const unsigned char *d, size_t n, int url);
unsigned char *az_unb64(const char *s, size_t *n);

#endif
