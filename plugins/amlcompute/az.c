/* Azure ML specifics on top of plugins/azure: the workspace's location, its datastores' blob
 * containers (account key from listSecrets, held only in memory), SAS URLs of code uploads. */
#include "config.h"

#include "aml.h"

#include <ctype.h>
#include <pthread.h>
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

/* What a datastore resolved to, kept for the process: a run monitor reads logs every poll,
 * and the datastore and its key do not change under it.  The key lives only in this memory
 * (wiped when replaced), like the token cache. */
typedef struct ds_cache {
    char *who;      /* arm endpoint + workspace id + datastore */
    char *url, *account, *container, *key;
} ds_cache;
static ds_cache dsc;
static pthread_mutex_t dsc_lock = PTHREAD_MUTEX_INITIALIZER;

static void wipe_free(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

static ctarget_status ds_resolve(az_ctx *az, ctarget_target *t, const char *datastore,
                                 char **url, char **account, char **container, char **key,
                                 ctarget_error *err)
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
    const char *acc = json_string_value(json_object_get(p, "accountName"));
    const char *cont = json_string_value(json_object_get(p, "containerName"));
    const char *endpoint = json_string_value(json_object_get(p, "endpoint"));
    const char *proto = json_string_value(json_object_get(p, "protocol"));
    if (!acc || !cont) {
        aml_h->error_set(err, CTARGET_E_REMOTE, 0, 0,
                         "datastore '%s' of workspace '%s' is not an Azure Blob datastore "
                         "(no accountName/containerName)", datastore, az_workspace0(az));
        json_decref(ds);
        free(id);
        return CTARGET_E_REMOTE;
    }
    size_t n = strlen(id) + 16;
    char *secrets_path = malloc(n);
    snprintf(secrets_path, n, "%s/listSecrets", id);
    az_arm_req sq = {.method = "POST", .path = secrets_path, .api_version = AZ_AML_API_VERSION,
                     .what = what};
    az_arm_resp sr = {0};
    rc = az_arm_call(az, &sq, AZ_RETRY_SAFE, &sr, err);
    free(secrets_path);
    free(id);
    const char *k = rc ? NULL : json_string_value(json_object_get(sr.body, "key"));
    if (!rc && !k) {
        const char *type = json_string_value(json_object_get(sr.body, "secretsType"));
        aml_h->error_set(err, CTARGET_E_AUTH, 0, 0,
                         "datastore '%s' has no account key (its secrets are of type '%s'): "
                         "ctarget reads run logs and outputs with the account key", datastore,
                         type ? type : "none");
        rc = CTARGET_E_AUTH;
    }
    if (!rc) {
        char buf[1024];
        const char *ep = endpoint && *endpoint ? endpoint : "core.windows.net";
        const char *over = aml_h->config_get0(t, "storage_endpoint");
        size_t ol = over ? strlen(over) : 0;
        while (ol && over[ol - 1] == '/')
            ol--;
        if (ol)
            snprintf(buf, sizeof buf, "%.*s", (int)ol, over);
        else if (path_style(ep))
            snprintf(buf, sizeof buf, "%s://%s/%s", proto && *proto ? proto : "https", ep, acc);
        else
            snprintf(buf, sizeof buf, "%s://%s.blob.%s", proto && *proto ? proto : "https", acc,
                     ep);
        *url = strdup(buf);
        *account = strdup(acc);
        *container = strdup(cont);
        *key = strdup(k);
        /* the key's copy in the parsed body: overwritten before it is freed */
        json_t *kj = json_object_get(sr.body, "key");
        size_t kl = strlen(k);
        char *x = malloc(kl + 1);
        if (x) {
            memset(x, 'x', kl);
            x[kl] = '\0';
            json_string_set(kj, x);
            free(x);
        }
    }
    az_arm_resp_clear(&sr);
    json_decref(ds);
    return rc;
}

ctarget_status aml_datastore_open(az_ctx *az, ctarget_target *t, const char *datastore,
                                  az_blob **b, ctarget_error *err)
{
    char *ws = az_ws_id(az);
    const char *over = aml_h->config_get0(t, "storage_endpoint");
    size_t n = strlen(az_arm_endpoint0(az)) + strlen(ws) + strlen(datastore) +
               (over ? strlen(over) : 0) + 4;
    char *who = malloc(n);
    snprintf(who, n, "%s %s %s %s", az_arm_endpoint0(az), ws, datastore, over ? over : "");
    free(ws);
    ctarget_status rc = CTARGET_OK;
    pthread_mutex_lock(&dsc_lock);
    if (!dsc.who || strcmp(dsc.who, who)) {
        char *url = NULL, *account = NULL, *container = NULL, *key = NULL;
        rc = ds_resolve(az, t, datastore, &url, &account, &container, &key, err);
        if (!rc) {
            free(dsc.who);
            free(dsc.url);
            free(dsc.account);
            free(dsc.container);
            wipe_free(dsc.key);
            dsc = (ds_cache){who, url, account, container, key};
            who = NULL;
        }
    }
    if (!rc)
        rc = az_blob_open_key(az, dsc.url, dsc.account, dsc.key, dsc.container, b, err);
    pthread_mutex_unlock(&dsc_lock);
    free(who);
    return rc;
}

void aml_datastore_forget(void)
{
    pthread_mutex_lock(&dsc_lock);
    free(dsc.who);
    free(dsc.url);
    free(dsc.account);
    free(dsc.container);
    wipe_free(dsc.key);
    memset(&dsc, 0, sizeof dsc);
    pthread_mutex_unlock(&dsc_lock);
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
