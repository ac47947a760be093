/* Azure ML specifics on top of plugins/azure: the workspace's location, its datastores' blob
 * containers (account key from listSecrets, held only in memory), SAS URLs of code uploads. */
#include "config.h"

#include "aml.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const ctarget_host *aml_h;

ctarget_status aml_az(ctarget_call *c, ctarget_target *t, az_ctx **az, ctarget_error *err)
{
    return az_ctx_new(aml_h, c, t, 0, az, err);
}

ctarget_status aml_ws_location(az_ctx *az, char **loc, ctarget_error *err)
{
    char *id = az_ws_id(az);
    char what[300];
    snprintf(what, sizeof what, "workspace '%s'", az_workspace0(az));
    az_arm_req rq = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    json_t *res = NULL;
    ctarget_status rc = az_arm_do(az, &rq, 0, &res, err);
    free(id);
    if (rc)
        return rc;
    const char *l = json_string_value(json_object_get(res, "location"));
    *loc = strdup(l && *l ? l : "");
    json_decref(res);
    return CTARGET_OK;
}

/* "127.0.0.1:10000", "localhost:10000", "[::1]:10000": an emulator's path-style endpoint */
static int path_style(const char *host)
{
    return isdigit((unsigned char)host[0]) || host[0] == '[' || !strncmp(host, "localhost", 9);
}

ctarget_status aml_datastore_open(az_ctx *az, ctarget_target *t, const char *datastore,
                                  az_blob **b, ctarget_error *err)
{
    char *id = az_ws_resource_id(az, "datastores", datastore);
    char what[300];
    snprintf(what, sizeof what, "datastore '%s'", datastore);
    az_arm_req rq = {.method = "GET", .path = id, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    json_t *ds = NULL;
    ctarget_status rc = az_arm_do(az, &rq, 0, &ds, err);
    if (rc) {
        free(id);
        return rc;
    }
    json_t *p = json_object_get(ds, "properties");
    const char *account = json_string_value(json_object_get(p, "accountName"));
    const char *container = json_string_value(json_object_get(p, "containerName"));
    const char *endpoint = json_string_value(json_object_get(p, "endpoint"));
    const char *proto = json_string_value(json_object_get(p, "protocol"));
    if (!account || !container) {
        aml_h->error_set(err, CTARGET_E_REMOTE, 0, 0,
                         "datastore '%s' of workspace '%s' is not an Azure Blob datastore "
                         "(no accountName/containerName)", datastore, az_workspace0(az));
        json_decref(ds);
        free(id);
        return CTARGET_E_REMOTE;
    }
    char *secrets_path = NULL;
    size_t n = strlen(id) + 16;
    secrets_path = malloc(n);
    snprintf(secrets_path, n, "%s/listSecrets", id);
    az_arm_req sq = {.method = "POST", .path = secrets_path, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    az_arm_resp sr = {0};
    rc = az_arm_call(az, &sq, AZ_RETRY_SAFE, &sr, err);
    free(secrets_path);
    free(id);
    if (rc) {
        az_arm_resp_clear(&sr);
        json_decref(ds);
        return rc;
    }
    const char *key = json_string_value(json_object_get(sr.body, "key"));
    if (!key) {
        aml_h->error_set(err, CTARGET_E_AUTH, 0, 0,
                         "datastore '%s' has no account key (its secrets are of type '%s'): "
                         "ctarget reads run logs with the account key", datastore,
                         json_string_value(json_object_get(sr.body, "secretsType"))
                             ? json_string_value(json_object_get(sr.body, "secretsType"))
                             : "none");
        az_arm_resp_clear(&sr);
        json_decref(ds);
        return CTARGET_E_AUTH;
    }
    char url[1024];
    const char *ep = endpoint && *endpoint ? endpoint : "core.windows.net";
    const char *over = aml_h->config_get0(t, "storage_endpoint");
    size_t ol = over ? strlen(over) : 0;
    while (ol && over[ol - 1] == '/')
        ol--;
    if (ol)
        snprintf(url, sizeof url, "%.*s", (int)ol, over);
    else if (path_style(ep))
        snprintf(url, sizeof url, "%s://%s/%s", proto && *proto ? proto : "https", ep, account);
    else
        snprintf(url, sizeof url, "%s://%s.blob.%s", proto && *proto ? proto : "https", account,
                 ep);
    rc = az_blob_open_key(az, url, account, key, container, b, err);
    /* the key's copy in the parsed body: wiped before it is freed */
    json_t *k = json_object_get(sr.body, "key");
    if (k) {
        size_t kl = strlen(json_string_value(k));
        char *zero = calloc(1, kl + 1);
        if (zero) {
            memset(zero, 'x', kl);
            json_string_set(k, zero);
            free(zero);
        }
    }
    az_arm_resp_clear(&sr);
    json_decref(ds);
    return rc;
}

int aml_split_sas(const char *sas_uri, char **container_sas, char **folder)
{
    *container_sas = *folder = NULL;
    const char *q = strchr(sas_uri, '?');
    const char *scheme = strstr(sas_uri, "://");
    if (!q || !scheme || scheme > q)
        return -1;
    const char *host = scheme + 3;
    const char *path = strchr(host, '/');
    if (!path || path > q)
        return -1;
    char hostbuf[256];
    snprintf(hostbuf, sizeof hostbuf, "%.*s", (int)(path - host), host);
    /* path style: /ACCOUNT/CONTAINER/folder; else /CONTAINER/folder */
    const char *p = path + 1;
    if (path_style(hostbuf)) {
        p = memchr(p, '/', (size_t)(q - p));
        if (!p)
            return -1;
        p++;
    }
    const char *end = memchr(p, '/', (size_t)(q - p));
    if (!end)
        end = q;
    if (end == p)
        return -1;
    size_t head = (size_t)(end - sas_uri), tail = strlen(q);
    *container_sas = malloc(head + tail + 1);
    if (!*container_sas)
        return -1;
    memcpy(*container_sas, sas_uri, head);
    memcpy(*container_sas + head, q, tail + 1);
    const char *f = end < q ? end + 1 : q;
    size_t fl = (size_t)(q - f);
    *folder = malloc(fl + 2);
    if (!*folder) {
        free(*container_sas);
        *container_sas = NULL;
        return -1;
    }
    memcpy(*folder, f, fl);
    if (fl && f[fl - 1] != '/')
        (*folder)[fl++] = '/';
    (*folder)[fl] = '\0';
    return 0;
}
