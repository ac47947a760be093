/* resource_id: the cluster's endpoints from ARM (Microsoft.HDInsight/clusters, api-version
 * 2021-06-01, Clusters_Get: properties.connectivityEndpoints SSH and HTTPS), through
 * libctazure's credentials and ARM client.
 *
 * attach resolves them once and keeps them in the target's state directory (endpoint.json:
 * address, ssh_port, livy_url), so every later operation (and a run monitor, which may run
 * anywhere the workspace is) connects without asking ARM again.  remotevm's SSH transport
 * reads `address` and `ssh_port` through the host table's config_get0: the plugin hands it
 * (and itself) a copy of the host table whose config_get0 answers those from endpoint.json
 * when the target has no address of its own. */
#include "config.h"

#include "hdinsight.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "azure.h"

#define HDI_API_VERSION "2021-06-01"

static const ctarget_host *REAL;
static ctarget_host WRAPPED;

static char *endpoint_file(const ctarget_target *t)
{
    const char *d = REAL->target_state_dir0 ? REAL->target_state_dir0(t) : NULL;
    char *p = NULL;
    if (!d || asprintf(&p, "%s/endpoint.json", d) < 0)
        return NULL;
    return p;
}

/* values read from endpoint.json: borrowed until the next read of the same key */
static char ep_address[256], ep_port[16], ep_livy[512];

static const char *wrapped_get0(const ctarget_target *t, const char *key)
{
    const char *v = REAL->config_get0(t, key);
    if (strcmp(key, "address") && strcmp(key, "ssh_port") && strcmp(key, "livy_url"))
        return v;
    const char *own = REAL->config_get0(t, "address");
    if (strcmp(key, "livy_url") ? own && *own : v && *v)
        return v;
    char *f = endpoint_file(t);
    json_t *j = f ? json_load_file(f, 0, NULL) : NULL;
    free(f);
    const char *s = json_string_value(json_object_get(j, key));
    const char *out = v;
    if (s && *s) {
        char *buf = !strcmp(key, "address") ? ep_address : !strcmp(key, "ssh_port") ? ep_port
                                                                                    : ep_livy;
        size_t cap = !strcmp(key, "address") ? sizeof ep_address
                     : !strcmp(key, "ssh_port") ? sizeof ep_port : sizeof ep_livy;
        snprintf(buf, cap, "%s", s);
        out = buf;
    }
    json_decref(j);
    return out;
}

const ctarget_host *hdi_wrap_host(const ctarget_host *real)
{
    REAL = real;
    size_t n = real->struct_size < sizeof WRAPPED ? real->struct_size : sizeof WRAPPED;
    memset(&WRAPPED, 0, sizeof WRAPPED);
    memcpy(&WRAPPED, real, n);
    WRAPPED.config_get0 = wrapped_get0;
    return &WRAPPED;
}

int hdi_needs_resolving(const ctarget_target *t)
{
    const char *a = REAL->config_get0(t, "address");
    const char *r = REAL->config_get0(t, "resource_id");
    return (!a || !*a) && r && *r;
}

ctarget_status hdi_resolve(ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                           ctarget_error *err)
{
    const ctarget_host *h = REAL;
    const char *rid = h->config_get0(t, "resource_id");
    az_ctx *az = NULL;
    ctarget_status rc = az_ctx_new(h, c, t, AZ_CTX_NO_WORKSPACE, &az, err);
    if (rc != CTARGET_OK)
        return rc;
    const char *slash = strrchr(rid, '/');
    char what[256];
    snprintf(what, sizeof what, "HDInsight cluster '%s'", slash ? slash + 1 : rid);
    az_arm_req rq = {.method = "GET", .path = rid, .api_version = HDI_API_VERSION,
                     .what = what};
    json_t *res = NULL;
    h->progress(c, "asking Azure for the cluster's endpoints", 0, 0);
    rc = az_arm_do(az, &rq, 0, &res, err);
    az_ctx_free(az);
    if (rc != CTARGET_OK)
        return rc;
    json_t *pr = json_object_get(res, "properties");
    const char *kind =
        json_string_value(json_object_get(json_object_get(pr, "clusterDefinition"), "kind"));
    const char *state = json_string_value(json_object_get(pr, "clusterState"));
    if (!kind || strcasecmp(kind, "spark")) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "%s is a %s cluster: hdinsight targets run Spark, attach a Spark cluster",
                     what, kind ? kind : "kind-less");
        json_decref(res);
        return CTARGET_E_UNSUPPORTED;
    }
    if (!state || strcasecmp(state, "Running")) {
        h->error_set(err, CTARGET_E_STATE, 1, 0, "%s is %s, not Running: attach it once it runs",
                     what, state ? state : "in an unknown state");
        json_decref(res);
        return CTARGET_E_STATE;
    }
    const char *ssh = NULL, *https = NULL;
    long long ssh_port = 22, https_port = 443;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(pr, "connectivityEndpoints"), i, e) {
        const char *n = json_string_value(json_object_get(e, "name"));
        const char *loc = json_string_value(json_object_get(e, "location"));
        json_t *port = json_object_get(e, "port");
        if (!n || !loc)
            continue;
        if (!strcasecmp(n, "SSH")) {
            ssh = loc;
            if (json_is_integer(port))
                ssh_port = json_integer_value(port);
        } else if (!strcasecmp(n, "HTTPS")) {
            https = loc;
            if (json_is_integer(port))
                https_port = json_integer_value(port);
        }
    }
    if (!ssh || strchr(ssh, '/') || strchr(ssh, ' ') || ssh_port < 1 || ssh_port > 65535) {
        h->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "%s lists no usable SSH endpoint (connectivityEndpoints): give --set "
                     "address=HOST", what);
        json_decref(res);
        return CTARGET_E_REMOTE;
    }
    json_t *ep = json_object();
    char port[16];
    snprintf(port, sizeof port, "%lld", ssh_port);
    json_object_set_new(ep, "address", json_string(ssh));
    json_object_set_new(ep, "ssh_port", json_string(port));
    if (https) {
        char *url = NULL;
        if (https_port == 443 ? asprintf(&url, "https://%s/livy", https) >= 0
                              : asprintf(&url, "https://%s:%lld/livy", https, https_port) >= 0) {
            json_object_set_new(ep, "livy_url", json_string(url));
            free(url);
        }
    }
    char *f = endpoint_file(t);
    char *tmp = NULL;
    if (!f || asprintf(&tmp, "%s.tmp", f) < 0 || json_dump_file(ep, tmp, JSON_INDENT(1)) != 0 ||
        rename(tmp, f) != 0) {
        h->error_set(err, CTARGET_E_IO, 0, 0, "cannot record the cluster's endpoints in %s",
                     f ? f : "the target's state directory");
        rc = CTARGET_E_IO;
    }
    free(tmp), free(f);
    if (rc == CTARGET_OK && facts) {
        h->obj_set_str(facts, "cluster_kind", kind);
        const char *ver = json_string_value(json_object_get(pr, "clusterVersion"));
        if (ver)
            h->obj_set_str(facts, "cluster_version", ver);
        h->obj_set_str(facts, "ssh_endpoint", ssh);
        h->obj_set_int(facts, "ssh_endpoint_port", ssh_port);
        const char *lu = json_string_value(json_object_get(ep, "livy_url"));
        if (lu)
            h->obj_set_str(facts, "livy_endpoint", lu);
    }
    json_decref(ep);
    json_decref(res);
    return rc;
}
