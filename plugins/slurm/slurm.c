/* slurm: a Slurm cluster, through its commands on this machine or on a login node over SSH.
 * Descriptor, settings and compute operations; the run operations are in job.c.  See
 * README.md beside this file. */
#include "config.h"

#include "slurm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const ctarget_host *SL_H;

#define K(...) {.struct_size = sizeof(ctarget_config_key), __VA_ARGS__}
static const ctarget_config_key keys[] = {
    /* where the commands run */
    K(.name = "address", .type = CTARGET_KEY_STRING, .identity = 1,
      .help = "login node (host name or IP) to reach the cluster over SSH; unset: Slurm's "
              "commands on this machine"),
    K(.name = "ssh_port", .type = CTARGET_KEY_INT, .min = 1, .max = 65535,
      .default_value = "22", .identity = 1, .help = "SSH port of the login node"),
    K(.name = "username", .type = CTARGET_KEY_STRING, .help = "login user on the login node"),
    K(.name = "password", .type = CTARGET_KEY_STRING,
      .flags = CTARGET_KEY_SECRET | CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "login password (prefer --password-stdin; keys are safer)"),
    K(.name = "private_key_file", .type = CTARGET_KEY_PATH, .flags = CTARGET_KEY_EXCLUSIVE,
      .group = 2, .help = "OpenSSH private key (ed25519, ecdsa) the login node trusts"),
    K(.name = "ssh_agent", .type = CTARGET_KEY_BOOL, .flags = CTARGET_KEY_EXCLUSIVE, .group = 2,
      .help = "log in with the keys of the ssh-agent at $SSH_AUTH_SOCK"),
    K(.name = "private_key_passphrase", .type = CTARGET_KEY_STRING, .flags = CTARGET_KEY_SECRET,
      .help = "passphrase of private_key_file"),
    K(.name = "connect_timeout_seconds", .type = CTARGET_KEY_INT, .min = 1, .max = 600,
      .default_value = "10", .help = "how long to wait for the login node to answer"),
    K(.name = "remote_root", .type = CTARGET_KEY_STRING, .default_value = "~/.ctarget",
      .help = "directory for run directories (and over SSH the blob cache); the compute "
              "nodes must see it"),
    K(.name = "slurm_bin_dir", .type = CTARGET_KEY_STRING,
      .help = "directory of sbatch, squeue, scontrol, sacct, scancel, sinfo (default: PATH)"),
    K(.name = "python", .type = CTARGET_KEY_STRING,
      .help = "interpreter on the compute nodes for user-managed environments (python3)"),
    /* what every job asks for */
    K(.name = "partition", .type = CTARGET_KEY_STRING,
      .help = "partition for the jobs (--partition; default: the cluster's default)"),
    K(.name = "account", .type = CTARGET_KEY_STRING, .help = "account to charge (--account)"),
    K(.name = "qos", .type = CTARGET_KEY_STRING, .help = "quality of service (--qos)"),
    K(.name = "time_limit", .type = CTARGET_KEY_STRING,
      .help = "job time limit in Slurm's form: minutes, MM:SS, HH:MM:SS, D-HH (--time)"),
    K(.name = "gpus", .type = CTARGET_KEY_INT, .min = 0, .max = 1024,
      .help = "GPUs per node (--gres=gpu:N)"),
    K(.name = "gres", .type = CTARGET_KEY_STRING,
      .help = "other generic resources, Slurm's form (--gres), for example gpu:a100:2"),
    K(.name = "nodes", .type = CTARGET_KEY_INT, .min = 1, .max = 100000,
      .help = "nodes per job (--nodes; a run's node_count overrides it); >1 starts the "
              "script with srun"),
    K(.name = "ntasks_per_node", .type = CTARGET_KEY_INT, .min = 1, .max = 4096,
      .help = "tasks per node (--ntasks-per-node); >1 starts the script with srun"),
    K(.name = "cpus_per_task", .type = CTARGET_KEY_INT, .min = 1, .max = 4096,
      .help = "CPUs per task (--cpus-per-task)"),
    K(.name = "mem", .type = CTARGET_KEY_STRING,
      .help = "memory per node, Slurm's form (--mem), for example 16G"),
    K(.name = "sbatch_options", .type = CTARGET_KEY_LIST,
      .help = "more sbatch options from an allow-list (--constraint=X, --exclusive, "
              "--reservation=R, --mem-per-gpu=..., ...), comma-separated"),
};

int sl_remote(const ctarget_target *t)
{
    const char *a = SL_H->config_get0(t, "address");
    return a && *a;
}

static ctarget_status sl_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    rv_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        host->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    SL_H = host;
    ctx->h = host;
    *p = ctx;
    return CTARGET_OK;
}

static void sl_fini(void *p)
{
    free(p);
}

static ctarget_status sl_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c, (void)v;
    const ctarget_host *h = SL_H;
    if (sl_remote(t)) {
        const char *addr = h->config_get0(t, "address");
        if (strchr(addr, ' ') || strchr(addr, '/') || addr[0] == '-') {
            h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "address '%s' is not a host name or IP address", addr);
            return CTARGET_E_CONFIG;
        }
        const char *u = h->config_get0(t, "username");
        if (!u || !*u) {
            h->error_set(err, CTARGET_E_CONFIG, 0, 0, "a login node needs a user: add --set "
                                                      "username=USER");
            return CTARGET_E_CONFIG;
        }
        const char *k = h->config_get0(t, "private_key_file");
        const char *a = h->config_get0(t, "ssh_agent");
        const char *pw = h->config_get0(t, "password");
        if ((!k || !*k) && (!a || !*a) && (!pw || !*pw)) {
            h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "a login node needs a way to log in: --set private_key_file=PATH, "
                         "--set ssh_agent=true or --password-stdin");
            return CTARGET_E_CONFIG;
        }
    } else {
        static const char *const ssh_only[] = {"username", "password", "private_key_file",
                                               "ssh_agent", "private_key_passphrase"};
        for (size_t i = 0; i < sizeof ssh_only / sizeof ssh_only[0]; i++) {
            const char *s = h->config_get0(t, ssh_only[i]);
            if (s && *s) {
                h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "%s is for a login node, and no address is set: add --set "
                             "address=HOST, or drop %s to use Slurm on this machine",
                             ssh_only[i], ssh_only[i]);
                return CTARGET_E_CONFIG;
            }
        }
    }
    const char *root = h->config_get0(t, "remote_root");
    if (root && (!*root || strchr(root, '\n'))) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0, "remote_root must be a directory path");
        return CTARGET_E_CONFIG;
    }
    const char *bin = h->config_get0(t, "slurm_bin_dir");
    if (bin && (strchr(bin, '\n') || (*bin && *bin != '/'))) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "slurm_bin_dir '%s' must be an absolute directory path", bin);
        return CTARGET_E_CONFIG;
    }
    return sl_check_options(t, err);
}

/* sinfo's view: version, partitions (name, availability, nodes, state); the partition setting
 * must name one of them. */
static ctarget_status cluster_facts(ctarget_call *c, ctarget_target *t, ctarget_obj *out,
                                    ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    /* every command the runs need, sbatch first (sinfo alone would prove little) */
    static const char *const needed[] = {"sbatch", "squeue", "scontrol", "scancel", "sinfo"};
    char version[128] = "";
    sl_out o;
    ctarget_status rc = CTARGET_OK;
    for (size_t i = 0; i < sizeof needed / sizeof needed[0] && rc == CTARGET_OK; i++) {
        const char *a[] = {needed[i], "--version", NULL};
        rc = sl_cmd(c, t, a, NULL, NULL, 0, &o, err);
        if (rc == CTARGET_OK && o.status != 0) {
            char where[256], line[512];
            sl_first_line(o.err, line, sizeof line);
            h->error_set(err, CTARGET_E_REMOTE, 0, 0, "%s --version failed on %s: %s",
                         needed[i], sl_where(t, where, sizeof where), line);
            rc = CTARGET_E_REMOTE;
        }
        if (rc == CTARGET_OK && !i)
            sl_first_line(o.out.data ? o.out.data : "", version, sizeof version);
        sl_out_free(&o);
    }
    if (rc != CTARGET_OK)
        return rc;
    const char *pargv[] = {"sinfo", "-h", "-o", "%P|%a|%D|%T|%l", NULL};
    rc = sl_cmd(c, t, pargv, NULL, NULL, 0, &o, err);
    if (rc == CTARGET_OK && o.status != 0) {
        char where[256], line[512];
        sl_first_line(o.err, line, sizeof line);
        h->error_set(err, CTARGET_E_UNREACHABLE, 1, 0, "the Slurm controller did not answer "
                     "sinfo on %s: %s", sl_where(t, where, sizeof where), line);
        rc = CTARGET_E_UNREACHABLE;
    }
    if (rc != CTARGET_OK) {
        sl_out_free(&o);
        return rc;
    }
    const char *want = h->config_get0(t, "partition");
    int found = !want || !*want;
    char names[1024] = "";
    if (out) {
        h->obj_set_str(out, "slurm_version", version);
        h->obj_set_str(out, "mode", sl_remote(t) ? "login-node" : "local");
    }
    for (char *save = NULL, *line = strtok_r(o.out.data ? o.out.data : (char[]){""}, "\n",
                                                   &save);
         line; line = strtok_r(NULL, "\n", &save)) {
        char *f[5] = {0};
        char *s = line;
        for (int i = 0; i < 5; i++) {
            f[i] = s;
            char *bar = s ? strchr(s, '|') : NULL;
            if (bar)
                *bar = '\0';
            s = bar ? bar + 1 : NULL;
        }
        if (!f[0] || !*f[0])
            continue;
        size_t n = strlen(f[0]);
        int dflt = f[0][n - 1] == '*';
        if (dflt)
            f[0][n - 1] = '\0';
        if (want && !strcmp(want, f[0]))
            found = 1;
        if (!strstr(names, f[0]) && strlen(names) + strlen(f[0]) + 3 < sizeof names) {
            if (*names)
                strcat(names, ", ");
            strcat(names, f[0]);
        }
        if (out) {
            ctarget_obj *p = h->obj_append0(out, "partitions");
            h->obj_set_str(p, "name", f[0]);
            h->obj_set_bool(p, "default", dflt);
            if (f[1]) h->obj_set_str(p, "avail", f[1]);
            if (f[2]) h->obj_set_int(p, "nodes", atoll(f[2]));
            if (f[3]) h->obj_set_str(p, "state", f[3]);
            if (f[4]) h->obj_set_str(p, "time_limit", f[4]);
            if (dflt)
                h->obj_set_str(out, "default_partition", f[0]);
        }
    }
    sl_out_free(&o);
    if (!found) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "partition '%s' does not exist on the cluster (it has: %s): fix it with "
                     "--set partition=NAME", want, *names ? names : "none");
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static ctarget_status sl_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *f,
                                ctarget_error *err)
{
    (void)p;
    SL_H->progress(c, sl_remote(t) ? "connecting to the login node" : "asking Slurm", 0, 0);
    return cluster_facts(c, t, f, err);
}

static ctarget_status sl_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    ctarget_status rc = cluster_facts(c, t, details, err);
    if (rc == CTARGET_OK) {
        snprintf(st->state, sizeof st->state, "Running");
        return CTARGET_OK;
    }
    /* an unreachable cluster is a state to show, not a failure of `compute status` */
    if (rc == CTARGET_E_UNREACHABLE || rc == CTARGET_E_TIMEOUT) {
        snprintf(st->state, sizeof st->state, "Unreachable");
        SL_H->obj_set_str(details, "error", err->message);
        return CTARGET_OK;
    }
    return rc;
}

static ctarget_status sl_update(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    (void)p, (void)c, (void)err;
    if (sl_remote(t) || SL_H->target_data_get0(t))
        rv_conn_drop(SL_H, t); /* the next operation connects with the new settings */
    return CTARGET_OK;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = sl_validate,
    .attach = sl_attach,
    .status = sl_status,
    .update = sl_update,
    .detach = sl_update,
};

/* Capabilities: GPUs through --gres; multi-node jobs through --nodes and srun.  Sweeps and
 * pipeline steps are not declared: the core has neither yet, and their tests would be
 * needed before this target claims them. */
static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .min_core_minor = 0,
    .name = "slurm",
    .version = PACKAGE_VERSION,
    .description = "a Slurm cluster, on this machine or through a login node over SSH",
    .license = "MIT",
    .capabilities = CTARGET_CAP_ATTACH | CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_CANCEL |
                    CTARGET_CAP_GPU | CTARGET_CAP_UPDATE | CTARGET_CAP_MULTI_NODE,
    .config_keys = keys,
    .n_config_keys = sizeof keys / sizeof keys[0],
    .init = sl_init,
    .fini = sl_fini,
    .compute = &compute_ops,
    .run = &sl_run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
