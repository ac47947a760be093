/* Run operations of the remotevm target.
 *
 * Everything about a run lives on the VM in <remote_root>/runs/<run id>/ (the agent's layout),
 * so a new monitor finds it from the run id alone; run->handle records what was decided
 * (interpreter, engine, image) and what was shipped, for `run show`.
 *
 * The script runs there under the agent's detached wrapper (setsid, own process group), which
 * records pid, start time and exit status in files: the run survives dropped connections, sshd
 * restarts and the monitor dying.  poll() asks the agent for the state and the new log and
 * metric bytes in one round trip, and read_logs() serves them from that answer. */
#include "config.h"

#include "remotevm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

char *rv_hex(const void *data, size_t len)
{
    static const char X[] = "0123456789abcdef";
    const unsigned char *p = data;
    char *s = malloc(len * 2 + 1);
    if (!s)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        s[2 * i] = X[p[i] >> 4];
        s[2 * i + 1] = X[p[i] & 15];
    }
    s[2 * len] = '\0';
    return s;
}

static json_t *hexstr(const char *s)
{
    char *h = rv_hex(s, strlen(s));
    json_t *j = json_string(h ? h : "");
    free(h);
    return j;
}

/* ---- the poll answer cache --------------------------------------------------------------- */

typedef struct polled {
    char run[128];
    uint64_t off[2];   /* offsets the bytes below start at */
    rv_buf data[2];    /* LOG, METRICS */
} polled;

static polled cache; /* one monitor process drives one run */

static void cache_reset(const char *run)
{
    for (int i = 0; i < 2; i++) {
        rv_buf_free(&cache.data[i]);
        cache.off[i] = 0;
    }
    snprintf(cache.run, sizeof cache.run, "%s", run);
}

static const ctarget_host *HH;

static void set_state(ctarget_run_poll *o, ctarget_run_state s, const char *native)
{
    o->state = s;
    snprintf(o->native_state, sizeof o->native_state, "%s", native);
}

/* One `poll` round trip: the state into o (may be NULL), and bytes from the offsets into the
 * cache. */
static ctarget_status agent_poll(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, uint64_t log_off,
                                 uint64_t met_off, long wait_ms, ctarget_run_poll *o,
                                 ctarget_error *err)
{
    char a1[32], a2[32], a3[32];
    snprintf(a1, sizeof a1, "%llu", (unsigned long long)log_off);
    snprintf(a2, sizeof a2, "%llu", (unsigned long long)met_off);
    snprintf(a3, sizeof a3, "%ld", wait_ms < 0 ? 0 : wait_ms > 10000 ? 10000 : wait_ms);
    const char *args[] = {run->id, a1, a2, a3, NULL};
    rv_buf out = {0};
    ctarget_status rc = rv_agent(h, c, t, "poll", args, NULL, 0, &out, NULL, err);
    if (rc != CTARGET_OK) {
        rv_buf_free(&out);
        return rc;
    }
    const char *body = NULL;
    size_t ll = 0, ml = 0;
    json_t *j = rv_poll_split(out.data, out.len, &body, &ll, &ml);
    if (!j) {
        rv_buf_free(&out);
        h->error_set(err, CTARGET_E_REMOTE, 1, 0, "the agent's answer to 'poll' was cut short");
        return CTARGET_E_REMOTE;
    }
    cache_reset(run->id);
    cache.off[0] = log_off;
    cache.off[1] = met_off;
    rv_buf_add(&cache.data[0], body, ll);
    rv_buf_add(&cache.data[1], body + ll, ml);
    if (o) {
        const char *st = json_string_value(json_object_get(j, "state"));
        const char *reason = json_string_value(json_object_get(j, "reason"));
        json_t *code = json_object_get(j, "exit_code");
        json_int_t sig = json_integer_value(json_object_get(j, "signal"));
        int canceled = json_is_true(json_object_get(j, "canceled"));
        if (!st)
            st = "";
        if (!strcmp(st, "running")) {
            set_state(o, CTARGET_RUN_RUNNING, "running");
        } else if (!strcmp(st, "not_started")) {
            set_state(o, CTARGET_RUN_QUEUED, "starting");
        } else if (!strcmp(st, "exited")) {
            o->has_exit_code = json_is_integer(code);
            o->exit_code = (int)json_integer_value(code);
            o->term_signal = (int)sig;
            char how[128];
            if (json_is_integer(code))
                snprintf(how, sizeof how, "exit code %d", o->exit_code);
            else
                snprintf(how, sizeof how, "killed by signal %d (%s)", (int)sig,
                         strsignal((int)sig));
            if (canceled) {
                set_state(o, CTARGET_RUN_CANCELED, "canceled");
                snprintf(o->reason, sizeof o->reason, "canceled (the script %s %s)",
                         json_is_integer(code) ? "then ended with" : "was", how);
            } else if (json_is_integer(code) && o->exit_code == 0) {
                set_state(o, CTARGET_RUN_COMPLETED, "exited");
            } else {
                set_state(o, CTARGET_RUN_FAILED, json_is_integer(code) ? "exited" : "signaled");
                snprintf(o->reason, sizeof o->reason, "%s", how);
            }
        } else if (!strcmp(st, "vanished")) {
            if (canceled) {
                set_state(o, CTARGET_RUN_CANCELED, "canceled");
                snprintf(o->reason, sizeof o->reason, "canceled; no exit status was recorded");
            } else {
                set_state(o, CTARGET_RUN_NOT_RESPONDING, "vanished");
                snprintf(o->reason, sizeof o->reason, "on %s: %s", h->config_get0(t, "address"),
                         reason ? reason : "the run's process vanished without an exit status");
            }
        } else {
            json_decref(j);
            rv_buf_free(&out);
            h->error_set(err, CTARGET_E_REMOTE, 0, 0, "the agent reported an unknown state '%s'",
                         st);
            return CTARGET_E_REMOTE;
        }
    }
    json_decref(j);
    rv_buf_free(&out);
    return CTARGET_OK;
}

/* ---- prepare ------------------------------------------------------------------------------ */

static char *read_local(const char *path, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    rv_buf b = {0};
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        rv_buf_add(&b, tmp, n);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        rv_buf_free(&b);
        return NULL;
    }
    if (!b.data)
        rv_buf_add(&b, "", 0);
    *len = b.len;
    return b.data;
}

static ctarget_status rv_prepare(void *ctx, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    HH = h;
    rv_ship_stats st;
    h->progress(c, "shipping the snapshot", 0, 0);
    ctarget_status rc = rv_ship_snapshot(h, c, t, run->snapshot_id, run->id, &st, err);
    if (rc != CTARGET_OK)
        return rc;
    if (run->handle) {
        ctarget_obj *o = run->handle;
        /* a monitor that restarts in prepare ships nothing the second time: keep the first
         * figures */
        long long prev;
        if (!h->obj_get_int(o, "shipped_bytes", &prev) || st.stream_bytes) {
            h->obj_set_int(o, "shipped_bytes", (long long)st.stream_bytes);
            h->obj_set_int(o, "shipped_blobs", (long long)st.blobs);
            h->obj_set_int(o, "shipped_blob_bytes", (long long)st.blob_bytes);
            h->obj_set_int(o, "shipped_manifest_bytes", (long long)st.manifest_bytes);
            h->obj_set_bool(o, "shipped_manifest_delta", st.delta);
        }
        h->obj_set_str(o, "remote_root", h->config_get0(t, "remote_root"));
    }
    h->log(c, CTARGET_LOG_INFO, "shipped %llu bytes (%llu new blobs, %llu bytes of them; "
                                "manifest %llu bytes%s)",
           (unsigned long long)st.stream_bytes, (unsigned long long)st.blobs,
           (unsigned long long)st.blob_bytes, (unsigned long long)st.manifest_bytes,
           st.delta ? " as a delta" : "");
    const char *margs[] = {run->id, run->snapshot_id, NULL};
    h->progress(c, "materializing", 0, 0);
    int status = 0;
    rc = rv_agent(h, c, t, "materialize", margs, NULL, 0, NULL, &status, err);
    if (rc != CTARGET_OK && status == 4) {
        /* the machine's cache lost a blob (it dropped the snapshot record): ship again */
        h->log(c, CTARGET_LOG_WARN, "%s; shipping the snapshot again", err->message);
        rc = rv_ship_snapshot(h, c, t, run->snapshot_id, run->id, &st, err);
        if (rc == CTARGET_OK)
            rc = rv_agent(h, c, t, "materialize", margs, NULL, 0, NULL, NULL, err);
    }
    if (rc != CTARGET_OK)
        return rc;
    const char *python = run->python && *run->python ? run->python : h->config_get0(t, "python");
    if (!python || !*python)
        python = "python3";
    if (run->env_kind != CTARGET_ENV_USER && !run->docker_image) {
        size_t len = 0;
        char *text = run->env_file ? read_local(run->env_file, &len) : NULL;
        if (!text) {
            h->error_set(err, CTARGET_E_IO, 0, errno, "cannot read the environment file %s",
                         run->env_file ? run->env_file : "(none given)");
            return CTARGET_E_IO;
        }
        const char *eargs[] = {run->id, run->env_kind == CTARGET_ENV_PIP ? "pip" : "conda",
                               run->env_hash ? run->env_hash : "nohash", python, NULL};
        rv_buf out = {0};
        h->progress(c, "building the environment", 0, 0);
        rc = rv_agent(h, c, t, "env", eargs, text, len, &out, NULL, err);
        free(text);
        json_t *j = rc == CTARGET_OK ? json_loadb(out.data ? out.data : "", out.len, 0, NULL)
                                     : NULL;
        rv_buf_free(&out);
        const char *py = json_string_value(json_object_get(j, "python"));
        if (rc == CTARGET_OK && !py) {
            h->error_set(err, CTARGET_E_REMOTE, 0, 0, "the agent built no environment");
            rc = CTARGET_E_REMOTE;
        }
        if (rc == CTARGET_OK && run->handle)
            h->obj_set_str(run->handle, "python", py);
        json_decref(j);
        if (rc != CTARGET_OK)
            return rc;
    } else if (run->handle) {
        h->obj_set_str(run->handle, "python", python);
    }
    if (run->docker_image && run->handle) {
        const char *engine = h->config_get0(t, "docker_engine");
        h->obj_set_str(run->handle, "engine", engine ? engine : "docker");
        h->obj_set_str(run->handle, "image", run->docker_image);
    }
    return CTARGET_OK;
}

/* ---- submit ------------------------------------------------------------------------------- */

static ctarget_status rv_submit(void *ctx, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    const char *python = run->handle ? h->obj_get0_str(run->handle, "python") : NULL;
    if (!python)
        python = run->python && *run->python ? run->python : "python3";
    if (run->docker_image)
        python = run->python && *run->python ? run->python : "python";
    json_t *spec = json_object();
    json_t *argv = json_array();
    json_array_append_new(argv, hexstr(python));
    json_array_append_new(argv, hexstr(run->script));
    for (size_t i = 0; i < run->n_args; i++)
        json_array_append_new(argv, hexstr(run->args[i]));
    json_object_set_new(spec, "argv", argv);
    json_t *env = json_array();
    for (size_t i = 0; i < run->n_env; i++)
        json_array_append_new(env, hexstr(run->env[i]));
    json_object_set_new(spec, "env", env);
    json_object_set_new(spec, "grace",
                        json_integer(run->cancel_grace_seconds > 0 ? run->cancel_grace_seconds
                                                                   : 10));
    if (run->docker_image) {
        const char *engine = h->config_get0(t, "docker_engine");
        json_object_set_new(spec, "docker",
                            json_pack("{s:s, s:s, s:b}", "engine", engine ? engine : "docker",
                                      "image", run->docker_image, "gpu", run->docker_gpu));
    } else {
        json_object_set_new(spec, "docker", json_null());
    }
    char *text = json_dumps(spec, JSON_COMPACT);
    json_decref(spec);
    const char *args[] = {run->id, NULL};
    rv_buf out = {0};
    ctarget_status rc = rv_agent(h, c, t, "start", args, text, strlen(text), &out, NULL, err);
    free(text);
    if (rc == CTARGET_OK && run->handle) {
        json_t *j = json_loadb(out.data ? out.data : "", out.len, 0, NULL);
        json_t *pid = json_object_get(j, "pid");
        if (json_is_integer(pid))
            h->obj_set_int(run->handle, "pid", json_integer_value(pid));
        json_t *sm = json_object_get(j, "started_ms");
        if (json_is_integer(sm))
            h->obj_set_int(run->handle, "started_ms", json_integer_value(sm));
        json_decref(j);
    }
    rv_buf_free(&out);
    return rc;
}

/* ---- poll, logs --------------------------------------------------------------------------- */

static ctarget_status rv_poll(void *ctx, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *run, long wait_ms, ctarget_run_poll *out,
                              ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    /* ask for the bytes after what the core read last */
    uint64_t lo = 0, mo = 0;
    if (!strcmp(cache.run, run->id)) {
        lo = cache.off[0] + cache.data[0].len;
        mo = cache.off[1] + cache.data[1].len;
    }
    return agent_poll(h, c, t, run, lo, mo, wait_ms, out, err);
}

static ctarget_status rv_read_logs(void *ctx, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_stream stream,
                                   uint64_t offset, ctarget_write_fn out, void *out_arg,
                                   ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    int k = stream == CTARGET_STREAM_METRICS ? 1 : 0;
    int hit = !strcmp(cache.run, run->id) && offset >= cache.off[k] &&
              offset <= cache.off[k] + cache.data[k].len;
    if (!hit) {
        uint64_t lo = k == 0 ? offset : cache.off[0] + cache.data[0].len;
        uint64_t mo = k == 1 ? offset : cache.off[1] + cache.data[1].len;
        if (strcmp(cache.run, run->id))
            lo = k == 0 ? offset : 0, mo = k == 1 ? offset : 0;
        ctarget_status rc = agent_poll(h, c, t, run, lo, mo, 0, NULL, err);
        if (rc != CTARGET_OK)
            return rc;
    }
    size_t skip = (size_t)(offset - cache.off[k]);
    size_t n = cache.data[k].len - skip;
    if (n && out(out_arg, cache.data[k].data + skip, n) != 0) {
        h->error_set(err, CTARGET_E_CANCELED, 0, 0, "stopped by the reader");
        return CTARGET_E_CANCELED;
    }
    /* keep the bytes: the next poll asks from their end */
    return CTARGET_OK;
}

/* ---- cancel, reattach, cleanup ------------------------------------------------------------ */

static ctarget_status simple_verb(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                                  const char *verb, const ctarget_run_info *run,
                                  ctarget_error *err)
{
    const char *args[] = {run->id, NULL};
    return rv_agent(h, c, t, verb, args, NULL, 0, NULL, NULL, err);
}

static ctarget_status rv_cancel(void *ctx, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    return simple_verb(((rv_ctx *)ctx)->h, c, t, "cancel", run, err);
}

static ctarget_status rv_reattach(void *ctx, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    (void)ctx, (void)c, (void)t, (void)run, (void)err;
    cache_reset(""); /* the core tells us its offsets with the next read_logs */
    return CTARGET_OK;
}

static ctarget_status rv_cleanup(void *ctx, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    return simple_verb(((rv_ctx *)ctx)->h, c, t, "cleanup", run, err);
}

/* ---- outputs ------------------------------------------------------------------------------ */

/* The agent's framed stream, unpacked under dest by proto.c (rv_unpack_write). */
static ctarget_status rv_fetch_outputs(void *ctx, ctarget_call *c, ctarget_target *t,
                                       const ctarget_run_info *run, const char *dest_dir,
                                       ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    rv_unpack u;
    rv_unpack_init(&u, h, open(dest_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err);
    if (u.dfd < 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot open %s: %s", dest_dir,
                     strerror(errno));
        return CTARGET_E_IO;
    }
    /* streamed straight into files: outputs may be large */
    const char *args[] = {run->id, NULL};
    ctarget_status rc = rv_agent_call(h, c, t, "pack", args, NULL, NULL, NULL, 0, rv_unpack_write,
                                      &u, NULL, err);
    if (rc == CTARGET_OK && u.rc != CTARGET_OK)
        rc = u.rc;
    if (rc == CTARGET_OK && u.state != 3) {
        h->error_set(err, CTARGET_E_REMOTE, 1, 0, "the outputs stream of run %s ended early",
                     run->id);
        rc = CTARGET_E_REMOTE;
    }
    rv_unpack_done(&u);
    close(u.dfd);
    return rc;
}

const ctarget_run_ops rv_run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = rv_prepare,
    .submit = rv_submit,
    .poll = rv_poll,
    .read_logs = rv_read_logs,
    .cancel = rv_cancel,
    .fetch_outputs = rv_fetch_outputs,
    .reattach = rv_reattach,
    .cleanup = rv_cleanup,
};
