/* testssh: an attach-only plugin shaped like an SSH host (remotevm, hdinsight) for registry
 * tests: address|resource_id alternatives, host+port identity, password|key exclusive
 * secrets, AKS-like 2-16 character names.  attach() "logs in" by comparing the password
 * with expected_password, and on failure quotes the password back in its error message on
 * purpose: the core must redact it.  status() logs in again and reports details.login
 * (accepted/rejected), so a secret reference is seen resolved at each use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ctarget/plugin.h>

static const ctarget_host *H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    K(.name = "address", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .group = 1, .identity = 1, .help = "host name or IP"),
    K(.name = "resource_id", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED_ATTACH,
      .group = 1, .identity = 2, .help = "resource id of the VM"),
    K(.name = "ssh_port", .type = CTARGET_KEY_INT, .min = 1, .max = 65535,
      .default_value = "22", .identity = 1, .help = "SSH port"),
    K(.name = "username", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED,
      .help = "login user"),
    K(.name = "password", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE,
      .group = 2, .help = "login password"),
    K(.name = "private_key_file", .type = CTARGET_KEY_PATH,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "SSH private key"),
    K(.name = "private_key_passphrase", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
      .help = "passphrase of the key"),
    K(.name = "expected_password", .type = CTARGET_KEY_STRING,
      .help = "the password the simulated host accepts"),
    K(.name = "delay_ms", .type = CTARGET_KEY_INT, .min = 0, .max = 10000,
      .default_value = "0", .help = "time the simulated login takes"),
};

static ctarget_status ts_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static ctarget_status ts_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)v, (void)err;
    return CTARGET_OK;
}

static ctarget_status ts_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                ctarget_error *err)
{
    (void)p;
    long delay = atol(H->config_get0(t, "delay_ms"));
    if (delay && H->sleep_ms(c, delay) != CTARGET_OK) {
        H->error_set(err, CTARGET_E_CANCELED, 0, 0, "attach canceled");
        return CTARGET_E_CANCELED;
    }
    const char *addr = H->config_get0(t, "address");
    if (addr && strstr(addr, ".invalid")) {
        H->error_set(err, CTARGET_E_UNREACHABLE, 1, 0, "cannot resolve host %s", addr);
        return CTARGET_E_UNREACHABLE;
    }
    char *pw = NULL;
    ctarget_status rc = H->secret_get1(t, "password", &pw, err);
    if (rc == CTARGET_OK) {
        const char *want = H->config_get0(t, "expected_password");
        if (want && strcmp(want, pw)) {
            /* a careless backend quoting the server: the core must redact this */
            H->error_set(err, CTARGET_E_AUTH, 0, 0, "login as %s failed: server said "
                         "'password %s rejected'", H->config_get0(t, "username"), pw);
            H->log(c, CTARGET_LOG_WARN, "rejected password was %s", pw);
            H->secret_free(pw);
            return CTARGET_E_AUTH;
        }
        H->secret_free(pw);
    } else if (rc != CTARGET_E_NOT_FOUND) {
        return rc;
    }
    H->obj_set_str(facts, "os", "Ubuntu 22.04 (simulated)");
    H->obj_set_str(facts, "python", "3.10.12");
    return CTARGET_OK;
}

static ctarget_status ts_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    snprintf(st->state, sizeof st->state, "Reachable");
    H->obj_set_str(details, "address", H->config_get0(t, "address"));
    /* "logs in" again, so tests can see a secret reference resolved at each use */
    const char *want = H->config_get0(t, "expected_password");
    if (want) {
        char *pw = NULL;
        ctarget_error e = {.struct_size = sizeof e};
        const char *login = "no password";
        if (H->secret_get1(t, "password", &pw, &e) == CTARGET_OK)
            login = strcmp(want, pw) ? "rejected" : "accepted";
        else if (e.code != CTARGET_E_NOT_FOUND)
            login = "password unavailable";
        H->secret_free(pw);
        H->obj_set_str(details, "login", login);
    }
    return CTARGET_OK;
}

static const ctarget_compute_ops ops = {
    .struct_size = sizeof ops,
    .validate = ts_validate,
    .attach = ts_attach,
    .status = ts_status,
};

static const ctarget_plugin desc = {
    .struct_size = sizeof desc,
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .name = "testssh",
    .version = "1.0",
    .description = "simulated SSH host for tests",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .name_min_len = 2,
    .name_max_len = 16,
    .name_flags = CTARGET_NAME_START_LETTER | CTARGET_NAME_DASH_THEN_LETTER,
    .init = ts_init,
    .compute = &ops,
};

CTARGET_DEFINE_PLUGIN(desc)
