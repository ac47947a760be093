/* aks plugin: internal interfaces (kube.c: kubeconfig + API client; aks.c: the plugin). */
#ifndef CTARGET_AKS_H
#define CTARGET_AKS_H

#include <ctarget/plugin.h>
#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>

typedef struct aks_kube {
    char *server;   /* https://host:port[/prefix], no trailing slash */
    char *context, *user, *ns;
    char *ca;       /* PEM of certificate-authority(-data), or NULL (system CAs) */
    char *token;    /* secret */
    char *cert;     /* client certificate PEM */
    char *key;      /* client key PEM: secret */
} aks_kube;

typedef struct aks_resp {
    long status;
    char *body;
    size_t len;
    json_t *json;   /* the body parsed, when it is JSON */
    int partial;    /* AKS_PARTIAL_OK: the connection dropped mid-body */
} aks_resp;

#define AKS_ANY_STATUS (1u << 0)  /* >= 400 (except 401) is not an error: the caller looks */
#define AKS_PARTIAL_OK (1u << 1)  /* keep what arrived of a dropped answer */
#define AKS_ONCE       (1u << 2)  /* no retries */

char *aks_fmt(const char *f, ...) CTARGET_PRINTF(1, 2);
char *aks_b64enc(const unsigned char *p, size_t n);
int aks_b64dec(const char *s, unsigned char **out, size_t *outlen);

ctarget_status aks_kube_load(const ctarget_host *h, const char *text, const char *context,
                             aks_kube **out, ctarget_error *err);
void aks_kube_free(aks_kube *k);
ctarget_status aks_req(const ctarget_host *h, ctarget_call *call, const aks_kube *k,
                       const char *method, const char *path, const char *body, aks_resp *r,
                       unsigned flags, ctarget_error *err);
void aks_resp_free(aks_resp *r);
unsigned long long aks_request_count(void);

#endif
