/* Waiting for, following, canceling, collecting and deleting runs. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loader.h"
#include "run.h"
#include "run_api.h"
#include "util.h"
#include "ws.h"

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waiting polls the store: short naps first (a quick run ends within milliseconds and
 * `submit --wait` should not add much to it), longer ones for long runs. */
static long wait_step(int64_t waited_ms)
{
    return waited_ms < 300 ? 3 : waited_ms < 5000 ? 25 : 200;
}

typedef struct follower {
    int fd;                 /* std_log.txt, or -1 until it exists */
    char *path;
    ctarget_write_fn out;
    void *arg;
} follower;

/* Copy what the log has gained; -1 when the reader stopped us. */
static int follow_step(follower *f)
{
    if (!f->out)
        return 0;
    if (f->fd < 0)
        f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0)
        return 0;
    char buf[65536];
    for (int i = 0; i < 4096; i++) { /* at most 256 MB per step: stay responsive */
        ssize_t n = read(f->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        if (f->out(f->arg, buf, (size_t)n))
            return -1;
    }
    return 0;
}

/* Until the run has ended (or timeout/interrupt), copying the log when f is given. */
static ctarget_status wait_end(ctarget_ws *ws, const char *id_in, long timeout_ms, follower *f,
                               char **json, ctarget_error *err)
{
    json_t *row;
    ctarget_status rc = run_load(ws, id_in, 1, &row, err);
    if (rc)
        return rc;
    char *id = xstrdup(json_string_value(json_object_get(row, "id")));
    if (f)
        f->path = run_file(ws->dir, id, "std_log.txt");
    int64_t t0 = time_mono_ns() / 1000000, last_check = t0;
    for (;;) {
        int ended = rs_terminal(run_row_state(row));
        if (f && follow_step(f) != 0) {
            rc = CTARGET_E_CANCELED;
            ct_err(err, rc, "stopped following run %s (the output was closed)", id);
            break;
        }
        if (ended)
            break; /* the monitor drains the logs before it records the ending */
        int64_t now = time_mono_ns() / 1000000;
        if (ctarget_cancel_requested()) {
            ct_err(err, CTARGET_E_CANCELED, "stopped waiting; run %s goes on (`ctarget run "
                   "cancel %s` stops it)", id, id);
            rc = CTARGET_E_CANCELED;
            break;
        }
        if (timeout_ms > 0 && now - t0 >= timeout_ms) {
            ct_err(err, CTARGET_E_TIMEOUT, "run %s is still %s after %ld ms", id,
                   json_string_value(json_object_get(row, "status")), timeout_ms);
            rc = CTARGET_E_TIMEOUT;
            break;
        }
        /* a monitor that died is replaced; checked now and then, not at every nap */
        if (now - last_check >= 1000) {
            run_ensure_monitor(ws, row);
            last_check = now;
        }
        nap(wait_step(now - t0));
        json_t *fresh = run_row(ws->st, id);
        if (fresh) {
            json_decref(row);
            row = fresh;
        }
    }
    if (json) {
        json_t *o = run_render(ws, row);
        *json = json_out(o);
        json_decref(o);
    }
    if (f) {
        if (f->fd >= 0)
            close(f->fd);
        free(f->path);
    }
    json_decref(row);
    free(id);
    return rc;
}

ctarget_status ctarget_run_wait(ctarget_ws *ws, const char *id, long timeout_ms, char **json,
                                ctarget_error *err)
{
    if (json)
        *json = NULL;
    return wait_end(ws, id, timeout_ms, NULL, json, err);
}

ctarget_status ctarget_run_logs(ctarget_ws *ws, const char *id, int follow,
                                ctarget_write_fn out, void *out_arg, char **json,
                                ctarget_error *err)
{
    if (json)
        *json = NULL;
    follower f = {.fd = -1, .out = out, .arg = out_arg};
    if (follow)
        return wait_end(ws, id, 0, &f, json, err);
    json_t *row;
    ctarget_status rc = run_load(ws, id, 1, &row, err);
    if (rc)
        return rc;
    f.path = run_file(ws->dir, json_string_value(json_object_get(row, "id")), "std_log.txt");
    if (follow_step(&f) != 0) {
        ct_err(err, CTARGET_E_CANCELED, "the output was closed");
        rc = CTARGET_E_CANCELED;
    }
    if (json) {
        json_t *o = run_render(ws, row);
        *json = json_out(o);
        json_decref(o);
    }
    if (f.fd >= 0)
        close(f.fd);
    free(f.path);
    json_decref(row);
    return rc;
}

ctarget_status ctarget_run_cancel(ctarget_ws *ws, const char *id_in, char **json,
                                  ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    ctarget_status rc = run_load(ws, id_in, 0, &row, err);
    if (rc)
        return rc;
    const char *id = json_string_value(json_object_get(row, "id"));
    ctarget_run_state cur = run_row_state(row);
    plugin *pl = NULL;
    ctarget_error e2;
    ctarget_error_init(&e2);
    const char *phase = json_string_value(json_object_get(row, "phase"));
    if (rs_terminal(cur)) {
        ct_err(err, CTARGET_E_STATE, "run %s has already ended: %s", id, rs_name(cur));
        rc = CTARGET_E_STATE;
    } else if (cur == CTARGET_RUN_CANCEL_REQUESTED) {
        rc = CTARGET_OK; /* asking twice is fine */
    } else if (strcmp(phase, "new") &&
               loader_find(json_string_value(json_object_get(row, "target_type")), &pl, &e2)
                   == CTARGET_OK && !pl->run.cancel) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets cannot cancel runs: run %s goes on "
               "until it ends", pl->name, id);
        rc = CTARGET_E_UNSUPPORTED;
    } else {
        rs_change ch = {.detail = "canceled by the user", .cancel_cause = "user"};
        rc = rs_transition(ws->st, id, CTARGET_RUN_CANCEL_REQUESTED, &ch, &cur, err);
        if (rc == CTARGET_E_STATE && rs_terminal(cur))
            ct_err(err, CTARGET_E_STATE, "run %s has already ended: %s", id, rs_name(cur));
    }
    if (!rc) {
        json_t *fresh = run_row(ws->st, id);
        if (fresh) {
            json_decref(row);
            row = fresh;
        }
        run_ensure_monitor(ws, row);
        json_t *o = run_render(ws, row);
        *json = json_out(o);
        json_decref(o);
    }
    json_decref(row);
    return rc;
}

static int copy_file(const char *src, const char *dst)
{
    size_t len;
    char *data = file_read_all(src, &len);
    if (!data)
        return -1;
    int r = file_write_atomic(dst, data, len, 0644);
    free(data);
    return r;
}

ctarget_status ctarget_run_outputs(ctarget_ws *ws, const char *id, const char *dest,
                                   char **json, ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    ctarget_status rc = run_load(ws, id, 1, &row, err);
    if (rc)
        return rc;
    const char *rid = json_string_value(json_object_get(row, "id"));
    json_t *list = run_outputs_list(ws->dir, rid);
    char *root = run_file(ws->dir, rid, "outputs");
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        if (!dest || rc)
            break;
        const char *rel = json_string_value(json_object_get(v, "path"));
        char *src = path_join(root, rel), *dst = path_join(dest, rel);
        char *slash = strrchr(dst, '/');
        *slash = '\0';
        int bad = mkdir_p(dst, 0755) != 0;
        *slash = '/';
        struct stat sb;
        if (!bad && lstat(src, &sb) == 0 && S_ISREG(sb.st_mode))
            bad = copy_file(src, dst) != 0;
        if (bad) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot copy output %s to %s", rel, dst);
            rc = CTARGET_E_IO;
        }
        free(src);
        free(dst);
    }
    if (!rc)
        *json = json_out(list);
    free(root);
    json_decref(list);
    json_decref(row);
    return rc;
}

ctarget_status ctarget_run_delete(ctarget_ws *ws, const char *id_in, ctarget_error *err)
{
    json_t *row;
    ctarget_status rc = run_load(ws, id_in, 0, &row, err);
    if (rc)
        return rc;
    const char *id = json_string_value(json_object_get(row, "id"));
    ctarget_run_state cur = run_row_state(row);
    if (!rs_terminal(cur) || run_monitor_holder(ws->dir, id) > 0) {
        ct_err(err, CTARGET_E_STATE, "run %s is %s: cancel it first (`ctarget run cancel %s`) "
               "and delete it once it has ended", id, rs_name(cur), id);
        json_decref(row);
        return CTARGET_E_STATE;
    }
    sqlite3_stmt *s = store_prepare(ws->st, "DELETE FROM runs WHERE id=?", err);
    if (s) {
        store_bind_text(s, 1, id);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = store_fail(ws->st, err, "cannot delete the run");
        sqlite3_finalize(s);
    } else {
        rc = err->code;
    }
    if (!rc) {
        char *dir = run_dir(ws->dir, id);
        rm_rf(dir);
        free(dir);
    }
    json_decref(row);
    return rc;
}
