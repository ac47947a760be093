/* remotevm: a Linux VM or on-prem server over SSH.  Descriptor, settings and compute
 * operations; the run operations are in run.c.  See README.md beside this file. */
#include "config.h"

#include "remotevm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static const ctarget_host *H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    K(.name = "address", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .group = 1, .identity = 1, .help = "host name (FQDN) or IP address of the machine"),
    K(.name = "resource_id", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .group = 1, .identity = 2,
      .help = "Azure resource id of the VM (recorded; give address too to connect)"),
    K(.name = "ssh_port", .type = CTARGET_KEY_INT, .min = 1, .max = 65535,
      .default_value = "22", .identity = 1, .help = "SSH port"),
    K(.name = "username", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .help = "login user"),
    K(.name = "password", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE,
      .group = 2, .help = "login password (prefer --password-stdin; keys are safer)"),
    K(.name = "private_key_file", .type = CTARGET_KEY_PATH,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "OpenSSH private key (ed25519, ecdsa or rsa) whose public key the user trusts"),
    K(.name = "ssh_agent", .type = CTARGET_KEY_BOOL,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "log in with the keys of the ssh-agent at $SSH_AUTH_SOCK"),
    K(.name = "private_key_passphrase", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
      .help = "passphrase of private_key_file"),
    K(.name = "remote_root", .type = CTARGET_KEY_STRING, .default_value = "~/.ctarget",
      .help = "directory on the machine for ctarget's blob cache, environments and runs"),
    K(.name = "python", .type = CTARGET_KEY_STRING,
      .help = "interpreter on the machine for user-managed environments (default python3)"),
    K(.name = "docker_engine", .type = CTARGET_KEY_STRING, .default_value = "docker",
      .help = "container engine command on the machine for docker runs (docker or podman)"),
    K(.name = "connect_timeout_seconds", .type = CTARGET_KEY_INT, .min = 1, .max = 600,
      .default_value = "10", .help = "how long to wait for the machine to answer"),
};

static ctarget_status rv_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    rv_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        host->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    H = host;
    ctx->h = host;
    *p = ctx;
    return CTARGET_OK;
}

static void rv_fini(void *p)
{
    free(p);
}

static ctarget_status rv_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c, (void)v;
    const char *addr = H->config_get0(t, "address");
    if (!addr || !*addr) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "resource_id alone cannot be reached: resolving it to an address needs "
                     "Azure credentials, which the remotevm plugin does not use; add --set "
                     "address=HOST (the VM's public IP or FQDN)");
        return CTARGET_E_CONFIG;
    }
    if (strchr(addr, ' ') || strchr(addr, '/') || addr[0] == '-') {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "address '%s' is not a host name or IP address", addr);
        return CTARGET_E_CONFIG;
    }
    const char *root = H->config_get0(t, "remote_root");
    if (root && (!*root || strchr(root, '\n'))) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "remote_root must be a directory path");
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static void put_json(ctarget_obj *o, const char *key, json_t *v)
{
    if (json_is_string(v))
        H->obj_set_str(o, key, json_string_value(v));
    else if (json_is_integer(v))
        H->obj_set_int(o, key, json_integer_value(v));
    else if (json_is_real(v))
        H->obj_set_num(o, key, json_real_value(v));
    else if (json_is_boolean(v))
        H->obj_set_bool(o, key, json_is_true(v));
    else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_object(e))
                continue;
            ctarget_obj *child = H->obj_append0(o, key);
            const char *k;
            json_t *x;
            json_object_foreach(e, k, x) put_json(child, k, x);
        }
    }
}

/* Ask the machine what it is; refuse what cannot run ctarget's runs. */
static ctarget_status facts(ctarget_call *c, ctarget_target *t, ctarget_obj *out, int attaching,
                            ctarget_error *err)
{
    const char *engine = H->config_get0(t, "docker_engine");
    const char *args[] = {engine ? engine : "docker", NULL};
    rv_buf b = {0};
    ctarget_status rc = rv_agent(H, c, t, "facts", args, NULL, 0, &b, NULL, err);
    if (rc != CTARGET_OK) {
        rv_buf_free(&b);
        return rc;
    }
    json_error_t je;
    json_t *j = json_loadb(b.data ? b.data : "", b.len, 0, &je);
    rv_buf_free(&b);
    if (!json_is_object(j)) {
        json_decref(j);
        H->error_set(err, CTARGET_E_REMOTE, 0, 0, "the machine's agent answered garbage to "
                                                  "'facts': %s", je.text);
        return CTARGET_E_REMOTE;
    }
    const char *sys = json_string_value(json_object_get(j, "system"));
    const char *os_id = json_string_value(json_object_get(j, "os_id"));
    const char *os_name = json_string_value(json_object_get(j, "os_name"));
    if (!sys || strcmp(sys, "Linux")) {
        H->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "the machine runs %s, not Linux: remotevm targets must be Linux "
                     "(Ubuntu is the supported distribution)", sys ? sys : "an unknown system");
        json_decref(j);
        return CTARGET_E_UNSUPPORTED;
    }
    if (attaching && (!os_id || strcmp(os_id, "ubuntu")))
        H->log(c, CTARGET_LOG_WARN,
               "the machine runs %s: Ubuntu is the supported distribution; other Linux "
               "systems work when they have python3 (and python3-venv, conda or docker for "
               "managed environments)", os_name ? os_name : "an unknown Linux");
    /* the interpreter's real path: later connections start the agent without a wrapper
     * script or version-manager shim in between (pyenv's costs 100+ ms per start) */
    rv_remember_python(H, t, json_string_value(json_object_get(j, "python3_path")));
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) put_json(out, k, v);
    json_decref(j);
    return CTARGET_OK;
}

static ctarget_status rv_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                                ctarget_error *err)
{
    (void)p;
    H->progress(c, "connecting", 0, 0);
    return facts(c, t, f, 1, err);
}

static ctarget_status rv_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    ctarget_status rc = facts(c, t, details, 0, err);
    if (rc == CTARGET_OK) {
        snprintf(st->state, sizeof st->state, "Running");
        return CTARGET_OK;
    }
    /* an unreachable machine is a state to show, not a failure of `compute status` */
    if (rc == CTARGET_E_UNREACHABLE || rc == CTARGET_E_TIMEOUT) {
        snprintf(st->state, sizeof st->state, "Unreachable");
        H->obj_set_str(details, "error", err->message);
        return CTARGET_OK;
    }
    return rc;
}

static ctarget_status rv_update(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    rv_conn_drop(H, t); /* the next operation connects with the new settings */
    return CTARGET_OK;
}

static ctarget_status rv_detach(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    rv_conn_drop(H, t);
    return CTARGET_OK;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = rv_validate,
    .attach = rv_attach,
    .status = rv_status,
    .update = rv_update,
    .detach = rv_detach,
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "remotevm",
    .version = PACKAGE_VERSION,
    .description = "a Linux VM or on-prem server over SSH (libssh2)",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH | CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_CANCEL |
                    CTARGET_CAP_GPU | CTARGET_CAP_UPDATE | CTARGET_CAP_HYPERPARAMETER_TUNING |
                    CTARGET_CAP_MODEL_SELECTION | CTARGET_CAP_PIPELINE_STEP,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = rv_init,
    .fini = rv_fini,
    .compute = &compute_ops,
    .run = &rv_run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
