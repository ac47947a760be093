/* What a run becomes for Slurm: sbatch's options (from the settings, through an allow-list)
 * and the batch script.
 *
 * The script is generated text, so every piece of user data in it (interpreter, script path,
 * arguments, environment values) is single-quoted byte for byte; names of environment
 * variables are checked instead (a name is never quoted).  sbatch reads the script on its
 * standard input, so nothing of it appears on any command line.  The job's working
 * directory is the run directory (sbatch runs there), which holds std_log.txt (the job's
 * --output, opened for appending so a requeued job's second attempt adds to the first),
 * metrics.jsonl and src/, the snapshot, where the script runs. */
#include "config.h"

#include "slurm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sl_strv_add(sl_strv *s, const char *str)
{
    if (s->n + 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        char **v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    if (!(s->v[s->n] = strdup(str)))
        return -1;
    s->v[++s->n] = NULL;
    return 0;
}

void sl_strv_free(sl_strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* Slurm's words for partitions, accounts, QOS, GRES, times and sizes: no spaces, quotes,
 * shell metacharacters or leading '-' */
static int plain_word(const char *s)
{
    if (!s || !*s || *s == '-' || strlen(s) > 256)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("_.,:=+@%/-[]", *s)))
            return 0;
    return 1;
}

/* The extra sbatch options a setting may add: each is harmless to the run's contract (its
 * output, working directory, environment and script stay ctarget's).  "=" means the option
 * takes a value. */
static const char *const allowed[] = {
    "--exclusive", "--constraint=", "--mem=", "--mem-per-cpu=", "--mem-per-gpu=",
    "--reservation=", "--nodelist=", "--exclude=", "--requeue", "--no-requeue",
    "--signal=", "--begin=", "--deadline=", "--priority=", "--nice=", "--licenses=",
    "--gpus=", "--gpus-per-node=", "--gpus-per-task=", "--cpus-per-gpu=", "--tmp=",
    "--hint=", "--switches=", "--wckey=", "--comment=", "--spread-job", "--contiguous",
    "--overcommit", "--oversubscribe", "--threads-per-core=", "--sockets-per-node=",
    "--cores-per-socket=", "--distribution=", "--mincpus=", "--time-min=", "--clusters=",
    "--cluster-constraint=", "--dependency=", "--kill-on-invalid-dep=", "--thread-spec=",
    "--core-spec=", "--network=", "--mcs-label=", "--prefer=",
};

static int option_allowed(const char *opt)
{
    const char *eq = strchr(opt, '=');
    size_t n = eq ? (size_t)(eq - opt) : strlen(opt);
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) {
        const char *a = allowed[i];
        size_t an = strcspn(a, "=");
        int takes = a[an] == '=';
        if (an == n && !strncmp(a, opt, n))
            return takes ? (eq && plain_word(eq + 1)) : !eq;
    }
    return 0;
}

static ctarget_status bad_setting(ctarget_error *err, const char *key, const char *value,
                                  const char *what)
{
    SL_H->error_set(err, CTARGET_E_CONFIG, 0, 0, "%s '%s' is not %s: fix it with compute "
                    "update --set %s=VALUE", key, value, what, key);
    return CTARGET_E_CONFIG;
}

ctarget_status sl_check_options(ctarget_target *t, ctarget_error *err)
{
    static const char *const words[] = {"partition", "account", "qos", "time_limit", "gres",
                                         "mem"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        const char *v = SL_H->config_get0(t, words[i]);
        if (v && *v && !plain_word(v))
            return bad_setting(err, words[i], v, "a Slurm name or value (letters, digits, "
                                                 "_.,:=+@%/-; no spaces)");
    }
    const char *extra = SL_H->config_get0(t, "sbatch_options");
    if (extra && *extra) {
        char *copy = strdup(extra);
        ctarget_status rc = CTARGET_OK;
        for (char *save = NULL, *o = strtok_r(copy, ",", &save); o && rc == CTARGET_OK;
             o = strtok_r(NULL, ",", &save)) {
            while (*o == ' ')
                o++;
            if (*o && !option_allowed(o)) {
                SL_H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                                "sbatch option '%s' is not allowed in sbatch_options: use the "
                                "settings partition, account, qos, time_limit, gpus, gres, "
                                "nodes, ntasks_per_node, cpus_per_task, mem, or one of the "
                                "allowed options (see `ctarget compute help slurm`)", o);
                rc = CTARGET_E_CONFIG;
            }
        }
        free(copy);
        if (rc != CTARGET_OK)
            return rc;
    }
    return CTARGET_OK;
}

static int add_opt(sl_strv *v, const char *opt, const char *value)
{
    if (!value || !*value)
        return 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s=%s", opt, value);
    return sl_strv_add(v, buf);
}

ctarget_status sl_sbatch_options(ctarget_target *t, const ctarget_run_info *run, sl_strv *v,
                                 ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    ctarget_status rc = sl_check_options(t, err);
    if (rc != CTARGET_OK)
        return rc;
    char name[160];
    snprintf(name, sizeof name, "ctarget-%s", run->id);
    int bad = add_opt(v, "--job-name", name);
    bad |= sl_strv_add(v, "--output=std_log.txt");
    bad |= sl_strv_add(v, "--open-mode=append");
    bad |= add_opt(v, "--partition", h->config_get0(t, "partition"));
    bad |= add_opt(v, "--account", h->config_get0(t, "account"));
    bad |= add_opt(v, "--qos", h->config_get0(t, "qos"));
    bad |= add_opt(v, "--time", h->config_get0(t, "time_limit"));
    bad |= add_opt(v, "--mem", h->config_get0(t, "mem"));
    const char *gres = h->config_get0(t, "gres");
    const char *gpus = h->config_get0(t, "gpus");
    char g[300];
    if (gpus && *gpus && strcmp(gpus, "0")) {
        snprintf(g, sizeof g, "gpu:%s%s%s", gpus, gres && *gres ? "," : "",
                 gres && *gres ? gres : "");
        bad |= add_opt(v, "--gres", g);
    } else {
        bad |= add_opt(v, "--gres", gres);
    }
    const char *nodes = h->config_get0(t, "nodes");
    char nb[32];
    if (run->node_count > 1) {
        snprintf(nb, sizeof nb, "%u", run->node_count);
        nodes = nb;
    }
    bad |= add_opt(v, "--nodes", nodes);
    bad |= add_opt(v, "--ntasks-per-node", h->config_get0(t, "ntasks_per_node"));
    bad |= add_opt(v, "--cpus-per-task", h->config_get0(t, "cpus_per_task"));
    const char *extra = h->config_get0(t, "sbatch_options");
    if (extra && *extra) {
        char *copy = strdup(extra);
        for (char *save = NULL, *o = copy ? strtok_r(copy, ",", &save) : NULL; o;
             o = strtok_r(NULL, ",", &save)) {
            while (*o == ' ')
                o++;
            if (*o)
                bad |= sl_strv_add(v, o);
        }
        free(copy);
    }
    if (bad) {
        h->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    return CTARGET_OK;
}

static int env_name_ok(const char *s, size_t n)
{
    if (!n || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* one-node runs start the script directly; multi-node runs through srun, once per task */
static int multi_node(ctarget_target *t, const ctarget_run_info *run)
{
    const char *nodes = SL_H->config_get0(t, "nodes");
    const char *tasks = SL_H->config_get0(t, "ntasks_per_node");
    return run->node_count > 1 || (nodes && atoi(nodes) > 1) || (tasks && atoi(tasks) > 1);
}

char *sl_script(ctarget_target *t, const ctarget_run_info *run, const char *python,
                ctarget_error *err)
{
    rv_buf b = {0};
    rv_buf_adds(&b, "#!/bin/sh\n"
                    "# generated by ctarget for run ");
    rv_buf_adds(&b, run->id);
    rv_buf_adds(&b, ": every argument below is quoted byte for byte\n"
                    "R=$(pwd -P) || exit 96\n"
                    "cd src || exit 96\n"
                    "CTARGET_RUN_ID=");
    sl_quote(&b, run->id);
    rv_buf_adds(&b, "; export CTARGET_RUN_ID\n"
                    "CTARGET_OUTPUTS_DIR=\"$R/src/outputs\"; export CTARGET_OUTPUTS_DIR\n"
                    "CTARGET_METRICS_FILE=\"$R/metrics.jsonl\"; export CTARGET_METRICS_FILE\n"
                    "CTARGET_ATTEMPT=$((${SLURM_RESTART_COUNT:-0} + 1)); export "
                    "CTARGET_ATTEMPT\n");
    for (size_t i = 0; i < run->n_env; i++) {
        const char *e = run->env[i];
        const char *eq = strchr(e, '=');
        if (!eq || !env_name_ok(e, (size_t)(eq - e))) {
            rv_buf_free(&b);
            SL_H->error_set(err, CTARGET_E_CONFIG, 0, 0,
                            "environment variable '%.*s' has a name sh cannot export "
                            "(letters, digits and _ only, not starting with a digit)",
                            (int)(eq ? eq - e : (long)strlen(e)), e);
            return NULL;
        }
        rv_buf_add(&b, e, (size_t)(eq - e) + 1);
        sl_quote(&b, eq + 1);
        rv_buf_adds(&b, "; export ");
        rv_buf_add(&b, e, (size_t)(eq - e));
        rv_buf_adds(&b, "\n");
    }
    rv_buf_adds(&b, "mkdir -p outputs\n");
    if (multi_node(t, run))
        rv_buf_adds(&b, "srun --kill-on-bad-exit=1 ");
    sl_quote(&b, python);
    rv_buf_adds(&b, " ");
    sl_quote(&b, run->script);
    for (size_t i = 0; i < run->n_args; i++) {
        rv_buf_adds(&b, " ");
        sl_quote(&b, run->args[i]);
    }
    rv_buf_adds(&b, " </dev/null\n"
                    "rc=$?\n"
                    "printf '%s %s %s\\n' \"${SLURM_JOB_ID:-0}\" \"${SLURM_RESTART_COUNT:-0}\" "
                    "\"$rc\" > \"$R/slurm_exit.tmp\" && mv -f \"$R/slurm_exit.tmp\" "
                    "\"$R/slurm_exit\"\n"
                    "exit $rc\n");
    if (rv_buf_add(&b, "", 1)) {
        rv_buf_free(&b);
        SL_H->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return NULL;
    }
    return b.data;
}
