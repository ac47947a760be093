/* testrun: a run-capable plugin for tests whose runs are simulated deterministically.
 *
 * A run's behaviour comes from its script arguments of the form key=value (others are
 * echoed only).  Everything is a pure function of the time since submit() (kept in the
 * handle, so a replacement monitor must pass the persisted handle back) and of the cancel
 * request time (a file in work_dir), so logs and metrics can be checked exactly:
 *   queue_ms=N     Queued for N ms first (native PENDING)             default 0
 *   run_ms=N       then Running for N ms (native RUNNING)             default 100
 *   exit=N         then Completed (0) or Failed with exit code N      default 0
 *   signal=S       Failed, killed by signal S
 *   lines=N        log lines spread over the running time             default 3
 *   metrics=N      "loss" metrics spread likewise                     default 0
 *   badmetric=1    a malformed metrics line after the first metric
 *   vanish=1       after the running time, NOT_RESPONDING for good (no exit status)
 *   lost_ms=N      NOT_RESPONDING for the first N ms of the running time, then back
 *   cancel_ms=N    a cancel takes effect N ms after it was asked for  default 0
 *   prepare_fail=1 prepare() fails as a broken environment build would
 * Gates make a state last exactly until the test moves on (no race against a timer): each
 * names a file in work_dir that the test creates; the file's mtime is when the gate opened.
 *   queue_until=F  Queued until F exists (the running time starts then)
 *   lost_until=F   NOT_RESPONDING from the start of the running time until F exists
 *   end_after=F    the script does not end by itself before F exists
 *   cancel_after=F a cancel does not take effect before F exists
 *   curve=V1/V2/..[/+]  the metric "acc" takes these values, one every curve_ms (default
 *                  40) from the start of the running time, which lasts one curve_ms
 *                  more; a final "+" holds the run Running for 10 minutes after the last
 *                  value (a child the test expects a sweep's policy to cancel)
 * The log starts with one line per argument ("arg[i]=<bytes>") and per environment entry
 * ("env NAME=value", plus "env_kind K hash H"); fetch_outputs writes outputs/model.txt.
 * submit() appends to work_dir/submits, so tests can count starts.
 *
 * Built a second time as testpipe, a pipeline-only type (TESTRUN_PIPELINE_ONLY). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctarget/plugin.h>

#ifdef TESTRUN_PIPELINE_ONLY
#define TR_NAME "testpipe"
#define TR_CAPS (CTARGET_CAP_PIPELINE_STEP | CTARGET_CAP_PIPELINE_ONLY | CTARGET_CAP_SCRIPT_RUN)
#else
#define TR_NAME "testrun"
#define TR_CAPS (CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_CANCEL | CTARGET_CAP_HYPERPARAMETER_TUNING)
#endif

static const ctarget_host *H;

typedef struct sim {
    long long queue_ms, run_ms, exit_code, sig, lines, metrics, badmetric, vanish, lost_ms,
        cancel_ms, prepare_fail, curve_ms;
    const char *queue_until, *lost_until, *end_after, *cancel_after; /* gates, or NULL */
    double curve[64];
    int n_curve;
} sim;

static const char *arg_str(const ctarget_run_info *r, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i < r->n_args; i++)
        if (!strncmp(r->args[i], key, kl) && r->args[i][kl] == '=')
            return r->args[i] + kl + 1;
    return NULL;
}

static long long arg_ll(const ctarget_run_info *r, const char *key, long long dflt)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i < r->n_args; i++)
        if (!strncmp(r->args[i], key, kl) && r->args[i][kl] == '=')
            return atoll(r->args[i] + kl + 1);
    return dflt;
}

static void sim_read(const ctarget_run_info *r, sim *s)
{
    s->queue_ms = arg_ll(r, "queue_ms", 0);
    s->run_ms = arg_ll(r, "run_ms", 100);
    s->exit_code = arg_ll(r, "exit", 0);
    s->sig = arg_ll(r, "signal", 0);
    s->lines = arg_ll(r, "lines", 3);
    s->metrics = arg_ll(r, "metrics", 0);
    s->badmetric = arg_ll(r, "badmetric", 0);
    s->vanish = arg_ll(r, "vanish", 0);
    s->lost_ms = arg_ll(r, "lost_ms", 0);
    s->cancel_ms = arg_ll(r, "cancel_ms", 0);
    s->prepare_fail = arg_ll(r, "prepare_fail", 0);
    s->queue_until = arg_str(r, "queue_until");
    s->lost_until = arg_str(r, "lost_until");
    s->end_after = arg_str(r, "end_after");
    s->cancel_after = arg_str(r, "cancel_after");
    s->curve_ms = arg_ll(r, "curve_ms", 40);
    s->n_curve = 0;
    for (size_t i = 0; i < r->n_args; i++) {
        if (strncmp(r->args[i], "curve=", 6))
            continue;
        const char *p = r->args[i] + 6;
        int hold = 0;
        while (*p && s->n_curve < 64) {
            if (*p == '+') {
                hold = 1;
                break;
            }
            char *end;
            double v = strtod(p, &end);
            if (end == p)
                break;
            s->curve[s->n_curve++] = v;
            p = *end == '/' ? end + 1 : end;
        }
        s->run_ms = hold ? 600000 : s->curve_ms * (s->n_curve + 1);
    }
}

static char *wfile(const ctarget_run_info *r, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", r->work_dir, name) < 0)
        abort();
    return p;
}

/* ms since the epoch when cancel() was first called, or -1 */
static long long cancel_time(const ctarget_run_info *r)
{
    char *p = wfile(r, "cancel");
    FILE *f = fopen(p, "r");
    free(p);
    long long t = -1;
    if (f) {
        if (fscanf(f, "%lld", &t) != 1)
            t = -1;
        fclose(f);
    }
    return t;
}

static int start_of(const ctarget_run_info *r, long long *start)
{
    return H->obj_get_int(r->handle, "start_ms", start) ? 0 : -1;
}

/* When gate file `name` in work_dir was created (ms since the epoch), or -1: not yet. */
static long long gate_ms(const ctarget_run_info *r, const char *name)
{
    char *p = wfile(r, name);
    struct stat st;
    int ok = stat(p, &st) == 0;
    free(p);
    return ok ? (long long)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000 : -1;
}

#define NEVER (1LL << 60)

/* The simulated clock: ms since submit (less the time a queue gate held it), frozen when a
 * cancel took effect. */
typedef struct simclock {
    long long t, end;   /* elapsed; when the script ends by itself */
    int canceled;       /* a cancel took effect before the script ended */
    int lost;           /* a lost_until gate is still closed */
} simclock;

static int sim_clock(const ctarget_run_info *r, const sim *s, simclock *c)
{
    long long start;
    if (start_of(r, &start))
        return -1;
    long long now = H->now_ms();
    c->t = now - start;
    c->end = s->queue_ms + s->run_ms;
    c->canceled = 0;
    c->lost = 0;
    if (s->queue_until) {
        long long q = gate_ms(r, s->queue_until);
        if (q < 0) {
            if (c->t > s->queue_ms - 1)
                c->t = s->queue_ms - 1; /* held at the end of the queue */
        } else if (q - start > s->queue_ms) {
            start = q - s->queue_ms; /* the running time starts at the gate */
            c->t = now - start;
        }
    }
    if (s->end_after) {
        long long e = gate_ms(r, s->end_after);
        if (e < 0)
            c->end = NEVER;
        else if (e - start > c->end)
            c->end = e - start;
    }
    if (s->lost_until)
        c->lost = gate_ms(r, s->lost_until) < 0;
    long long ct = cancel_time(r);
    long long effect = ct - start + s->cancel_ms;
    if (ct >= 0 && s->cancel_after) {
        long long g = gate_ms(r, s->cancel_after);
        if (g < 0)
            effect = NEVER;
        else if (g - start > effect)
            effect = g - start;
    }
    if (ct >= 0 && ct - start < c->end && c->t >= effect) {
        c->canceled = 1;
        c->t = effect;
        if (c->t > c->end)
            c->t = c->end;
    }
    return 0;
}

static ctarget_status tr_init(const ctarget_host *host, void **p, ctarget_error *err)
{
    (void)err;
    H = host;
    *p = NULL;
    return CTARGET_OK;
}

static ctarget_status tr_validate(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb v,
                                  ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)v, (void)err;
    return CTARGET_OK;
}

static ctarget_status tr_attach(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                                ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)err;
    H->obj_set_str(facts, "simulator", "deterministic");
    return CTARGET_OK;
}

static ctarget_status tr_status(void *p, ctarget_call *c, ctarget_target *t,
                                ctarget_compute_state *st, ctarget_obj *details,
                                ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)details, (void)err;
    st->provisioning_state = CTARGET_PROV_SUCCEEDED;
    snprintf(st->state, sizeof st->state, "Idle");
    return CTARGET_OK;
}

/* ---- runs ---------------------------------------------------------------------------- */

static ctarget_status tr_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *r, ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    sim s;
    sim_read(r, &s);
    if (s.prepare_fail) {
        H->error_set(err, CTARGET_E_FAILED, 0, 0, "pip install failed: no matching "
                     "distribution found for nosuchpackage==0.0 (install it or fix the file)");
        return CTARGET_E_FAILED;
    }
    H->obj_set_str(r->handle, "prepared", "yes");
    return CTARGET_OK;
}

static ctarget_status tr_submit(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *r, ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    char *path = wfile(r, "submits");
    FILE *f = fopen(path, "a");
    free(path);
    if (!f) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write in %s", r->work_dir);
        return CTARGET_E_IO;
    }
    fprintf(f, "%lld\n", (long long)H->now_ms());
    fclose(f);
    H->obj_set_int(r->handle, "start_ms", H->now_ms());
    return CTARGET_OK;
}

static ctarget_status tr_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *r, ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    long long start;
    if (start_of(r, &start)) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "the run handle has no start_ms: "
                     "the core did not pass the persisted handle back");
        return CTARGET_E_NOT_FOUND;
    }
    return CTARGET_OK;
}

/* The whole log as of the simulated clock (a prefix of the final log). */
static char *log_text(const ctarget_run_info *r, const sim *s, const simclock *c, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (c->t >= s->queue_ms) {
        for (size_t i = 0; i < r->n_args; i++)
            fprintf(f, "arg[%zu]=%s\n", i, r->args[i]);
        for (size_t i = 0; i < r->n_env; i++)
            fprintf(f, "env %s\n", r->env[i]);
        fprintf(f, "env_kind %d hash %s python %s image %s\n", (int)r->env_kind,
                r->env_hash ? r->env_hash : "-", r->python ? r->python : "-",
                r->docker_image ? r->docker_image : "-");
        for (long long k = 1; k <= s->lines; k++)
            if (c->t >= s->queue_ms + s->run_ms * k / (s->lines + 1))
                fprintf(f, "line %lld of %lld\n", k, s->lines);
    }
    if (c->canceled)
        fprintf(f, "canceled\n");
    else if (c->t >= c->end && !s->vanish)
        fprintf(f, "done exit=%lld signal=%lld\n", s->exit_code, s->sig);
    fclose(f);
    return buf;
}

static char *metrics_text(const sim *s, const simclock *c, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    for (int k = 0; k < s->n_curve; k++)
        if (c->t >= s->queue_ms + s->curve_ms * (k + 1))
            fprintf(f, "{\"name\": \"acc\", \"value\": %.17g, \"step\": %d}\n", s->curve[k], k);
    for (long long k = 0; k < s->metrics; k++) {
        if (c->t < s->queue_ms + s->run_ms * (k + 1) / (s->metrics + 1))
            break;
        fprintf(f, "{\"name\": \"loss\", \"value\": %.6f, \"step\": %lld}\n", 1.0 / (double)(k + 1),
                k);
        if (k == 0 && s->badmetric)
            fprintf(f, "this line is not JSON\n");
    }
    fclose(f);
    return buf;
}

static ctarget_status tr_poll(void *p, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *r, long wait_ms, ctarget_run_poll *out,
                              ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)wait_ms;
    sim s;
    simclock k;
    sim_read(r, &s);
    if (sim_clock(r, &s, &k)) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "run handle has no start time");
        return CTARGET_E_NOT_FOUND;
    }
    const char *native;
    if (k.canceled) {
        out->state = CTARGET_RUN_CANCELED, native = "CANCELLED";
    } else if (k.t < s.queue_ms) {
        out->state = CTARGET_RUN_QUEUED, native = "PENDING";
    } else if (k.t < k.end && (s.lost_until ? k.lost : k.t < s.queue_ms + s.lost_ms)) {
        out->state = CTARGET_RUN_NOT_RESPONDING, native = "LOST";
        snprintf(out->reason, sizeof out->reason, "heartbeat lost");
    } else if (k.t < k.end) {
        out->state = CTARGET_RUN_RUNNING, native = "RUNNING";
    } else if (s.vanish) {
        out->state = CTARGET_RUN_NOT_RESPONDING, native = "UNKNOWN";
        snprintf(out->reason, sizeof out->reason,
                 "the simulated process is gone and left no exit status");
    } else if (s.sig) {
        out->state = CTARGET_RUN_FAILED, native = "KILLED";
        out->term_signal = (int)s.sig;
    } else {
        out->state = s.exit_code ? CTARGET_RUN_FAILED : CTARGET_RUN_COMPLETED;
        native = s.exit_code ? "FAILED" : "SUCCEEDED";
        out->has_exit_code = 1;
        out->exit_code = (int)s.exit_code;
    }
    snprintf(out->native_state, sizeof out->native_state, "%s", native);
    return CTARGET_OK;
}

static ctarget_status tr_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *r, ctarget_stream stream,
                                   uint64_t offset, ctarget_write_fn out, void *out_arg,
                                   ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    sim s;
    simclock k;
    sim_read(r, &s);
    if (sim_clock(r, &s, &k)) {
        H->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "run handle has no start time");
        return CTARGET_E_NOT_FOUND;
    }
    size_t len;
    char *text = stream == CTARGET_STREAM_LOG ? log_text(r, &s, &k, &len)
                                              : metrics_text(&s, &k, &len);
    ctarget_status rc = CTARGET_OK;
    if (offset < len && out(out_arg, text + offset, len - offset))
        rc = CTARGET_E_CANCELED;
    free(text);
    return rc;
}

static ctarget_status tr_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *r, ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    /* written aside and linked into place: a monitor killed in the middle (tests do that)
     * must not leave an empty request that every later cancel takes as already made */
    char *path = wfile(r, "cancel"), *tmp;
    if (asprintf(&tmp, "%s.%ld", path, (long)getpid()) < 0)
        abort();
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int ok = fd >= 0 && dprintf(fd, "%lld\n", (long long)H->now_ms()) > 0;
    if (fd >= 0)
        close(fd);
    int linked = ok ? link(tmp, path) : -1, e = errno;
    unlink(tmp);
    free(tmp);
    free(path);
    if (ok && (linked == 0 || e == EEXIST))
        return CTARGET_OK; /* EEXIST: asked before, the first request's time counts */
    H->error_set(err, CTARGET_E_IO, 0, ok ? e : errno, "cannot record the cancel request");
    return CTARGET_E_IO;
}

static ctarget_status tr_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                       const ctarget_run_info *r, const char *dest,
                                       ctarget_error *err)
{
    (void)p, (void)c, (void)t;
    char *dir, *file;
    if (asprintf(&dir, "%s/outputs", dest) < 0 || asprintf(&file, "%s/model.txt", dir) < 0)
        abort();
    mkdir(dir, 0700);
    FILE *f = fopen(file, "w");
    ctarget_status rc = CTARGET_OK;
    if (!f) {
        H->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", file);
        rc = CTARGET_E_IO;
    } else {
        fprintf(f, "model of run %s\n", r->id);
        fclose(f);
    }
    free(dir);
    free(file);
    return rc;
}

static ctarget_status tr_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *r, ctarget_error *err)
{
    (void)p, (void)c, (void)t, (void)err;
    char *path = wfile(r, "cleaned");
    FILE *f = fopen(path, "a");
    free(path);
    if (f) {
        fputs("cleaned\n", f);
        fclose(f);
    }
    return CTARGET_OK;
}

static const ctarget_compute_ops compute_ops = {
    .struct_size = sizeof(ctarget_compute_ops),
    .validate = tr_validate,
    .attach = tr_attach,
    .status = tr_status,
};

static const ctarget_run_ops run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = tr_prepare,
    .submit = tr_submit,
    .poll = tr_poll,
    .read_logs = tr_read_logs,
    .cancel = tr_cancel,
    .fetch_outputs = tr_fetch_outputs,
    .reattach = tr_reattach,
    .cleanup = tr_cleanup,
};

static const ctarget_config_key keys[] = {
    {.struct_size = sizeof(ctarget_config_key), .name = "label", .type = CTARGET_KEY_STRING,
     .help = "free text"},
};

static const ctarget_plugin descriptor = {
    .struct_size = sizeof(ctarget_plugin),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .name = TR_NAME,
    .version = "1.0",
    .description = "simulated runs for tests",
    .license = "MIT",
    .capabilities = TR_CAPS | CTARGET_CAP_ATTACH,
    .config_keys = keys,
    .n_config_keys = 1,
    .init = tr_init,
    .compute = &compute_ops,
    .run = &run_ops,
};

CTARGET_DEFINE_PLUGIN(descriptor)
