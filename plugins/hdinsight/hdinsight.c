/* hdinsight: an existing Spark cluster (Azure HDInsight) over SSH to its head node.
 * Descriptor, settings and compute operations; the run operations are in run.c.  See
 * README.md beside this file. */
#include "config.h"

#include "hdinsight.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "azure.h"

const ctarget_host *HDI_H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    AZ_CONFIG_KEYS, /* for resource_id: the credentials and endpoints of ARM */
    K(.name = "address", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .group = 1, .identity = 1,
      .help = "SSH endpoint of the cluster's head node: <cluster>-ssh.azurehdinsight.net or "
              "an IP address"),
    K(.name = "resource_id", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .group = 1, .identity = 2,
      .help = "ARM id of the Microsoft.HDInsight/clusters resource: attach asks ARM for its "
              "SSH and HTTPS endpoints (needs Azure credentials)"),
    K(.name = "ssh_port", .type = CTARGET_KEY_INT, .min = 1, .max = 65535,
      .default_value = "22", .identity = 1, .help = "SSH port of the head node"),
    K(.name = "username", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .help = "SSH user of the cluster (HDInsight's default is sshuser)"),
    K(.name = "password", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE,
      .group = 2, .help = "SSH password (prefer --password-stdin; keys are safer)"),
    K(.name = "private_key_file", .type = CTARGET_KEY_PATH,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "OpenSSH private key (ed25519, ecdsa) whose public key the cluster trusts"),
    K(.name = "ssh_agent", .type = CTARGET_KEY_BOOL,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "log in with the keys of the ssh-agent at $SSH_AUTH_SOCK"),
    K(.name = "private_key_passphrase", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
      .help = "passphrase of private_key_file"),
    K(.name = "spark_submit", .type = CTARGET_KEY_STRING, .default_value = "spark-submit",
      .help = "spark-submit on the head node: a command on the login PATH or an absolute path"),
    K(.name = "master", .type = CTARGET_KEY_STRING,
      .help = "--master for every run (yarn, local[4], spark://...; default: the cluster's)"),
    K(.name = "mode", .type = CTARGET_KEY_ENUM, .choices = "ssh|livy", .default_value = "ssh",
      .help = "how runs start: ssh (spark-submit on the head node) or livy (Livy batches; "
              "files still go over SSH)"),
    K(.name = "livy_url", .type = CTARGET_KEY_STRING,
      .help = "Livy's endpoint for mode=livy: https://CLUSTER.azurehdinsight.net/livy"),
    K(.name = "livy_username", .type = CTARGET_KEY_STRING, .default_value = "admin",
      .help = "Livy (cluster login) user for mode=livy"),
    K(.name = "livy_password", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
      .help = "Livy (cluster login) password for mode=livy (env:VAR or file:PATH)"),
    K(.name = "remote_root", .type = CTARGET_KEY_STRING, .default_value = "~/.ctarget",
      .help = "directory on the head node for ctarget's blob cache and run directories"),
    K(.name = "connect_timeout_seconds", .type = CTARGET_KEY_INT, .min = 1, .max = 600,
      .default_value = "10", .help = "how long to wait for the head node to answer"),
};

static ctarget_status hdi_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    rv_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        host->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    HDI_H = hdi_wrap_host(host);
    ctx->h = HDI_H;
    *p = ctx;
    return CTARGET_OK;
}

static void hdi_fini(void *p)
{
    free(p);
}

static ctarget_status hdi_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                   ctarget_error *err)
{
    (void)p, (void)c, (void)v;
    const ctarget_host *h = HDI_H;
    const char *addr = h->config_get0(t, "address");
    const char *rid0 = h->config_get0(t, "resource_id");
    if ((!addr || !*addr) && (!rid0 || !*rid0)) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "an hdinsight target needs --set address=<cluster>-ssh.azurehdinsight.net "
                     "or --set resource_id=/subscriptions/.../clusters/NAME");
        return CTARGET_E_CONFIG;
    }
    if (addr && *addr && (strchr(addr, ' ') || strchr(addr, '/') || addr[0] == '-')) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "address '%s' is not a host name or IP address", addr);
        return CTARGET_E_CONFIG;
    }
    const char *rid = h->config_get0(t, "resource_id");
    if (rid && *rid && !strstr(rid, "/providers/Microsoft.HDInsight/clusters/")) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "resource_id '%s' is not an HDInsight cluster: it must look like "
                     "/subscriptions/S/resourceGroups/G/providers/Microsoft.HDInsight/"
                     "clusters/NAME", rid);
        return CTARGET_E_CONFIG;
    }
    const char *root = h->config_get0(t, "remote_root");
    if (root && (!*root || strchr(root, '\n'))) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0, "remote_root must be a directory path");
        return CTARGET_E_CONFIG;
    }
    const char *ss = h->config_get0(t, "spark_submit");
    if (ss && (!*ss || strchr(ss, '\n') || ss[0] == '-')) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "spark_submit '%s' must be a command name or a path", ss);
        return CTARGET_E_CONFIG;
    }
    const char *m = h->config_get0(t, "master");
    if (m && (!*m || strchr(m, '\n') || m[0] == '-')) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "master '%s' is not a Spark master URL (yarn, local[N], spark://HOST:PORT)",
                     m);
        return CTARGET_E_CONFIG;
    }
    const char *lu = h->config_get0(t, "livy_url");
    if (hdi_livy_mode(t) && (!lu || !*lu) && !hdi_needs_resolving(t)) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "mode=livy needs livy_url: add --set "
                     "livy_url=https://CLUSTER.azurehdinsight.net/livy");
        return CTARGET_E_CONFIG;
    }
    if (lu && *lu && (strncmp(lu, "https://", 8) || strchr(lu, '?') || strchr(lu, ' '))) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "livy_url '%s' must be an https:// URL without a query", lu);
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static void put_json(ctarget_obj *o, const char *key, json_t *v)
{
    const ctarget_host *h = HDI_H;
    if (json_is_string(v))
        h->obj_set_str(o, key, json_string_value(v));
    else if (json_is_integer(v))
        h->obj_set_int(o, key, json_integer_value(v));
    else if (json_is_real(v))
        h->obj_set_num(o, key, json_real_value(v));
    else if (json_is_boolean(v))
        h->obj_set_bool(o, key, json_is_true(v));
}

/* The head node's facts (through the agent): Linux, python3 for the agent. */
static ctarget_status facts(ctarget_call *c, ctarget_target *t, ctarget_obj *out,
                            ctarget_error *err)
{
    const ctarget_host *h = HDI_H;
    const char *args[] = {"docker", NULL};
    rv_buf b = {0};
    ctarget_status rc = rv_agent(h, c, t, "facts", args, NULL, 0, &b, NULL, err);
    if (rc != CTARGET_OK) {
        rv_buf_free(&b);
        return rc;
    }
    json_error_t je;
    json_t *j = json_loadb(b.data ? b.data : "", b.len, 0, &je);
    rv_buf_free(&b);
    if (!json_is_object(j)) {
        json_decref(j);
        h->error_set(err, CTARGET_E_REMOTE, 0, 0,
                     "the head node's agent answered garbage to 'facts': %s", je.text);
        return CTARGET_E_REMOTE;
    }
    const char *sys = json_string_value(json_object_get(j, "system"));
    if (!sys || strcmp(sys, "Linux")) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "the head node runs %s, not Linux: hdinsight targets are Linux Spark "
                     "clusters", sys ? sys : "an unknown system");
        json_decref(j);
        return CTARGET_E_UNSUPPORTED;
    }
    rv_remember_python(h, t, json_string_value(json_object_get(j, "python3_path")));
    static const char *const keep[] = {"system", "os_id", "os_name", "os_version", "kernel",
                                       "arch", "cpus", "memory_bytes", "python3_version",
                                       "python3_path"};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        json_t *v = json_object_get(j, keep[i]);
        if (v)
            put_json(out, keep[i], v);
    }
    json_decref(j);
    return CTARGET_OK;
}

/* `spark-submit --version`: exit 0, and its banner's "version X" into facts. */
static ctarget_status spark_check(ctarget_call *c, ctarget_target *t, ctarget_obj *out,
                                  ctarget_error *err)
{
    const ctarget_host *h = HDI_H;
    const char *ss = h->config_get0(t, "spark_submit");
    if (!ss || !*ss)
        ss = "spark-submit";
    char *q = rv_shell_quote(ss);
    rv_buf cmd = {0}, text = {0};
    rv_buf_adds(&cmd, "exec ");
    rv_buf_adds(&cmd, q ? q : "spark-submit");
    rv_buf_adds(&cmd, " --version 2>&1 </dev/null");
    rv_buf_add(&cmd, "", 1);
    free(q);
    ctarget_status rc = CTARGET_OK;
    int status = -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        rv_conn *cn = NULL;
        rc = rv_conn_get(h, c, t, &cn, err);
        if (rc != CTARGET_OK)
            break;
        rv_exec *ex = NULL;
        text.len = 0;
        rc = rv_exec_open(cn, c, cmd.data, rv_buf_write, &text, &ex, err);
        if (rc == CTARGET_OK) {
            char tail[512] = "";
            rc = rv_exec_finish(ex, &status, tail, sizeof tail, err);
        }
        if (rc == CTARGET_OK || !err->transient)
            break;
        rv_conn_drop(h, t);
    }
    rv_buf_free(&cmd);
    if (rc != CTARGET_OK) {
        rv_buf_free(&text);
        return rc;
    }
    if (status != 0) {
        rv_buf_free(&text);
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "no spark-submit on the cluster ('%s --version' exited with %d): set "
                     "spark_submit to its path", ss, status);
        return CTARGET_E_NOT_FOUND;
    }
    rv_buf_add(&text, "", 1);
    /* Spark's banner: "   /___/ .__/\_,_/_/ /_/\_\   version 3.3.0" */
    const char *v = strstr(text.data, "version ");
    if (v) {
        v += 8;
        char ver[64];
        size_t n = 0;
        while (v[n] && v[n] != '\n' && v[n] != ' ' && n < sizeof ver - 1)
            n++;
        memcpy(ver, v, n);
        ver[n] = '\0';
        if (n)
            h->obj_set_str(out, "spark_version", ver);
    }
    h->obj_set_str(out, "spark_submit", ss);
    rv_buf_free(&text);
    return CTARGET_OK;
}

static ctarget_status hdi_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                                 ctarget_error *err)
{
    (void)p;
    ctarget_status rc = CTARGET_OK;
    if (hdi_needs_resolving(t)) {
        rc = hdi_resolve(c, t, f, err);
        if (rc != CTARGET_OK)
            return rc;
    }
    HDI_H->progress(c, "connecting", 0, 0);
    rc = facts(c, t, f, err);
    if (rc == CTARGET_OK) {
        HDI_H->progress(c, "checking spark-submit", 0, 0);
        rc = spark_check(c, t, f, err);
    }
    if (rc == CTARGET_OK && hdi_livy_mode(t)) {
        HDI_H->progress(c, "checking Livy", 0, 0);
        rc = hdi_livy_check(c, t, f, err);
    }
    return rc;
}

static ctarget_status hdi_status(void *p, ctarget_call *c, ctarget_target *t,
                                 ctarget_compute_state *st, ctarget_obj *details,
                                 ctarget_error *err)
{
    (void)p;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    ctarget_status rc = facts(c, t, details, err);
    if (rc == CTARGET_OK)
        rc = spark_check(c, t, details, err);
    if (rc == CTARGET_OK && hdi_livy_mode(t))
        rc = hdi_livy_check(c, t, details, err);
    if (rc == CTARGET_OK) {
        snprintf(st->state, sizeof st->state, "Running");
        return CTARGET_OK;
    }
    if (rc == CTARGET_E_UNREACHABLE || rc == CTARGET_E_TIMEOUT) {
        snprintf(st->state, sizeof st->state, "Unreachable");
        HDI_H->obj_set_str(details, "error", err->message);
        return CTARGET_OK;
    }
    return rc;
}

static ctarget_status hdi_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    rv_conn_drop(HDI_H, t);
    return CTARGET_OK;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = hdi_validate,
    .attach = hdi_attach,
    .status = hdi_status,
    .detach = hdi_detach,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "hdinsight",
    .version = PACKAGE_VERSION,
    .description = "an existing Spark cluster (Azure HDInsight): spark-submit on its head node "
                   "over SSH, or Livy batches",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH | CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_PIPELINE_STEP |
                    CTARGET_CAP_CANCEL,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = hdi_init,
    .fini = hdi_fini,
    .compute = &compute_ops,
    .run = &hdi_run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
