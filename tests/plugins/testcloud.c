/* testcloud: a plugin for tests that provisions "resources" in a simulated cloud, a
 * directory (cloud_dir) holding one file per resource.  Creation is asynchronous: status()
 * reports Creating for `provision_polls` polls, then Succeeded (or Failed with errors when
 * fail_provisioning is set).  Detach leaves the file; delete removes it, so tests can see
 * what was destroyed. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ctarget/plugin.h>

static const ctarget_host *H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    K(.name = "cloud_dir", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_REQUIRED,
      .help = "directory of the simulated cloud"),
    K(.name = "vm_size", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_CREATE | CTARGET_KEY_CREATE_ONLY, .help = "VM size"),
    K(.name = "max_nodes", .type = CTARGET_KEY_INT, .min = 1, .max = 100,
      .flags = CTARGET_KEY_REQUIRED_CREATE | CTARGET_KEY_CREATE_ONLY, .help = "most nodes"),
    K(.name = "min_nodes", .type = CTARGET_KEY_INT, .min = 0, .max = 100, .default_value = "0",
      .help = "fewest nodes"),
    K(.name = "vm_priority", .type = CTARGET_KEY_ENUM, .choices = "dedicated|lowpriority",
      .default_value = "dedicated", .help = "priority"),
    K(.name = "resource_id", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_REQUIRED_ATTACH | CTARGET_KEY_ATTACH_ONLY, .identity = 1,
      .help = "resource to attach"),
    K(.name = "admin_password", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
      .help = "administrator password"),
    K(.name = "ssh_public_access", .type = CTARGET_KEY_BOOL, .flags = CTARGET_KEY_IMMUTABLE,
      .default_value = "false", .help = "open SSH to the internet"),
    K(.name = "provision_polls", .type = CTARGET_KEY_INT, .min = 0, .max = 1000,
      .default_value = "2", .help = "status polls until provisioning settles"),
    K(.name = "fail_provisioning", .type = CTARGET_KEY_BOOL, .default_value = "false",
      .help = "provisioning ends Failed"),
    K(.name = "low_priority_ratio", .type = CTARGET_KEY_NUMBER, .min = 0, .max = 1,
      .help = "share of low-priority nodes"),
    K(.name = "tags", .type = CTARGET_KEY_LIST, .help = "labels"),
};

static ctarget_status tc_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static char *res_path(ctarget_target *t, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s.res", H->config_get0(t, "cloud_dir"), name) < 0)
        abort();
    return p;
}

/* resource file: "state polls power min max" */
typedef struct res {
    char state[32];
    int polls;
    char power[16];
    int min, max;
} res;

static int res_read(const char *path, res *r)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int n = fscanf(f, "%31s %d %15s %d %d", r->state, &r->polls, r->power, &r->min, &r->max);
    fclose(f);
    return n == 5 ? 0 : -1;
}

static int res_write(const char *path, const res *r)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "%s %d %s %d %d\n", r->state, r->polls, r->power, r->min, r->max);
    return fclose(f);
}

static ctarget_status tc_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c, (void)v;
    const char *mn = H->config_get0(t, "min_nodes"), *mx = H->config_get0(t, "max_nodes");
    if (mn && mx && atoi(mn) > atoi(mx)) {
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "min_nodes (%s) is larger than max_nodes (%s)",
                     mn, mx);
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status tc_create(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                ctarget_error *err)
{
    (void)p, (void)c;
    char *pw = NULL;
    ctarget_status rc = H->secret_get1(t, "admin_password", &pw, err);
    if (rc == CTARGET_OK && strlen(pw) < 8) {
        H->secret_free(pw);
        H->error_set(err, CTARGET_E_CONFIG, 0, 0, "admin_password must be 8 characters or more");
        return CTARGET_E_CONFIG;
    }
    if (rc != CTARGET_OK && rc != CTARGET_E_NOT_FOUND)
        return rc;
    H->secret_free(pw);
    char *path = res_path(t, H->target_name(t));
    if (access(path, F_OK) == 0) {
        H->error_set(err, CTARGET_E_EXISTS, 0, 0, "the cloud already has a resource named %s",
                     H->target_name(t));
        free(path);
        return CTARGET_E_EXISTS;
    }
    res r = {"Creating", atoi(H->config_get0(t, "provision_polls")), "Running",
             atoi(H->config_get0(t, "min_nodes")), atoi(H->config_get0(t, "max_nodes"))};
    if (res_write(path, &r) != 0) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", path);
        free(path);
        return CTARGET_E_IO;
    }
    H->obj_set_str(facts, "cloud_resource", path);
    free(path);
    return CTARGET_OK;
}

static ctarget_status tc_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                ctarget_error *err)
{
    (void)p, (void)c;
    const char *id = H->config_get0(t, "resource_id");
    const char *base = strrchr(id, '/');
    char *path = res_path(t, base ? base + 1 : id);
    res r;
    if (res_read(path, &r) != 0) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "no resource %s in the cloud", id);
        free(path);
        return CTARGET_E_NOT_FOUND;
    }
    H->obj_set_str(facts, "cloud_resource", path);
    H->obj_set_int(facts, "max_nodes", r.max);
    free(path);
    return CTARGET_OK;
}

static char *own_path(ctarget_target *t)
{
    const char *id = H->config_get0(t, "resource_id");
    if (id) {
        const char *base = strrchr(id, '/');
        return res_path(t, base ? base + 1 : id);
    }
    return res_path(t, H->target_name(t));
}

static ctarget_status tc_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p, (void)c;
    char *path = own_path(t);
    res r;
    if (res_read(path, &r) != 0) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "the cloud has no resource for %s",
                     H->target_name(t));
        free(path);
        return CTARGET_E_NOT_FOUND;
    }
    if (!strcmp(r.state, "Creating")) {
        if (r.polls > 0)
            r.polls--;
        if (r.polls == 0) {
            const char *fail = H->config_get0(t, "fail_provisioning");
            snprintf(r.state, sizeof r.state, "%s", fail && !strcmp(fail, "true") ? "Failed"
                                                                                  : "Succeeded");
        }
        res_write(path, &r);
    }
    st->provisioning_state = !strcmp(r.state, "Creating")    ? CTARGET_PROV_CREATING
                             : !strcmp(r.state, "Succeeded") ? CTARGET_PROV_SUCCEEDED
                                                             : CTARGET_PROV_FAILED;
    if (st->provisioning_state == CTARGET_PROV_FAILED)
        snprintf(st->errors, sizeof st->errors,
                 "QuotaExceeded: the subscription has no quota left for %s",
                 H->config_get0(t, "vm_size") ? H->config_get0(t, "vm_size") : "this size");
    snprintf(st->state, sizeof st->state, "%s", r.power);
    H->obj_set_int(details, "min_nodes", r.min);
    H->obj_set_int(details, "max_nodes", r.max);
    free(path);
    return CTARGET_OK;
}

static ctarget_status set_power(ctarget_target *t, const char *power, ctarget_error *err)
{
    char *path = own_path(t);
    res r;
    ctarget_status rc = CTARGET_OK;
    if (res_read(path, &r) != 0) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "the cloud has no resource for %s",
                     H->target_name(t));
        rc = CTARGET_E_NOT_FOUND;
    } else {
        snprintf(r.power, sizeof r.power, "%s", power);
        res_write(path, &r);
    }
    free(path);
    return rc;
}

static ctarget_status tc_start(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c;
    return set_power(t, "Running", err);
}

static ctarget_status tc_stop(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c;
    return set_power(t, "Stopped", err);
}

static ctarget_status tc_update(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c;
    char *path = own_path(t);
    res r;
    ctarget_status rc = CTARGET_OK;
    if (res_read(path, &r) == 0) {
        r.min = atoi(H->config_get0(t, "min_nodes"));
        if (H->config_get0(t, "max_nodes"))
            r.max = atoi(H->config_get0(t, "max_nodes"));
        res_write(path, &r);
    } else {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "the cloud has no resource for %s",
                     H->target_name(t));
        rc = CTARGET_E_NOT_FOUND;
    }
    free(path);
    return rc;
}

static ctarget_status tc_delete(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c;
    char *path = res_path(t, H->target_name(t));
    ctarget_status rc = CTARGET_OK;
    if (unlink(path) != 0 && errno != ENOENT) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot delete %s", path);
        rc = CTARGET_E_IO;
    }
    free(path);
    return rc;
}

static ctarget_status tc_nodes(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *nodes,
                               ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    const char *mn = H->config_get0(t, "min_nodes");
    for (int i = 0; i < atoi(mn); i++) {
        ctarget_obj *n = H->obj_append0(nodes, "nodes");
        char id[32];
        snprintf(id, sizeof id, "node-%d", i);
        H->obj_set_str(n, "id", id);
        H->obj_set_str(n, "state", "idle");
    }
    return CTARGET_OK;
}

static const ctarget_compute_ops ops = {
    .struct_size = sizeof ops,
    .validate = tc_validate,
    .create = tc_create,
    .attach = tc_attach,
    .status = tc_status,
    .start = tc_start,
    .stop = tc_stop,
    .restart = tc_start,
    .update = tc_update,
    .delete_ = tc_delete,
    .list_nodes = tc_nodes,
};

static const ctarget_plugin desc = {
    .struct_size = sizeof desc,
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .name = "testcloud",
    .version = "1.0",
    .description = "simulated cloud for tests",
    .license = "MIT",
    .capabilities = CTARGET_CAP_CREATE | CTARGET_CAP_ATTACH | CTARGET_CAP_START_STOP |
                    CTARGET_CAP_UPDATE | CTARGET_CAP_LIST_NODES | CTARGET_CAP_GPU,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = tc_init,
    .compute = &ops,
};

CTARGET_DEFINE_PLUGIN(desc)
