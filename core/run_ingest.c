/* Logs and metrics: appended and ingested by offset, so that a replacement monitor neither
 * loses nor repeats anything.  The log's offset is std_log.txt's size (the file is the
 * truth); the metrics offset is stored in the same transaction as the metric rows. */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"
#include "loader.h"
#include "run_mon.h"
#include "util.h"
#include "ws.h"

static int log_out(void *arg, const void *data, size_t len)
{
    mon *m = arg;
    return fd_write_all(m->log_fd, data, len) != 0;
}

static int buf_out(void *arg, const void *data, size_t len)
{
    sb_add(arg, data, len);
    return 0;
}

static ctarget_status call_read(mon *m, ctarget_stream stream, uint64_t off,
                                ctarget_write_fn fn, void *arg)
{
    plugin *pl = m->rt->pl;
    ctarget_call call;
    call_init(&call, m->id);
    ctarget_error e;
    ctarget_error_init(&e);
    plugin_lock(pl);
    ctarget_status rc = pl->run.read_logs(pl->ctx, &call, m->rt->t, &m->ri, stream, off, fn,
                                          arg, &e);
    plugin_unlock(pl);
    if (rc)
        mon_note(m, "read_logs(%s) failed: %s", stream == CTARGET_STREAM_LOG ? "log" : "metrics",
                 e.message[0] ? e.message : ctarget_strerror(rc));
    return rc;
}

int mon_read_logs(mon *m)
{
    struct stat sb;
    if (m->log_fd < 0 || fstat(m->log_fd, &sb) != 0)
        return -1;
    if (call_read(m, CTARGET_STREAM_LOG, (uint64_t)sb.st_size, log_out, m))
        return -1;
    if (fstat(m->log_fd, &sb) == 0 &&
        sb.st_size != json_integer_value(json_object_get(m->row, "log_offset"))) {
        ctarget_error e;
        ctarget_error_init(&e);
        run_set_int(m->ws->st, m->id, "log_offset", (long long)sb.st_size, &e);
        json_object_set_new(m->row, "log_offset", json_integer(sb.st_size));
    }
    return 0;
}

/* One JSON line {"name": .., "value": .., "step": ..}; 0 when valid. */
static int parse_metric(const char *line, size_t len, char **name, double *value,
                        long long *step, int *has_step)
{
    json_t *j = json_loadb(line, len, 0, NULL);
    json_t *n = json_object_get(j, "name"), *v = json_object_get(j, "value");
    json_t *s = json_object_get(j, "step");
    int ok = json_is_object(j) && json_is_string(n) && *json_string_value(n) &&
             json_is_number(v) && isfinite(json_number_value(v)) && (!s || json_is_integer(s));
    if (ok) {
        *name = xstrdup(json_string_value(n));
        *value = json_number_value(v);
        *has_step = s != NULL;
        *step = s ? json_integer_value(s) : 0;
    }
    json_decref(j);
    return ok ? 0 : -1;
}

static int blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return 0;
    return 1;
}

static ctarget_status insert_metric(mon *m, long long seq, const char *name, double value,
                                    int has_step, long long step, ctarget_error *e)
{
    sqlite3_stmt *s = store_prepare(m->ws->st, "INSERT INTO metrics(run, seq, name, value, step,"
                                               " time) VALUES (?,?,?,?,?,?)", e);
    if (!s)
        return e->code;
    store_bind_text(s, 1, m->id);
    sqlite3_bind_int64(s, 2, seq);
    store_bind_text(s, 3, name);
    sqlite3_bind_double(s, 4, value);
    if (has_step)
        sqlite3_bind_int64(s, 5, step);
    else
        sqlite3_bind_null(s, 5);
    sqlite3_bind_int64(s, 6, time_now_ms());
    ctarget_status rc = CTARGET_OK;
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = store_fail(m->ws->st, e, "cannot record a metric");
    sqlite3_finalize(s);
    return rc;
}

static long long next_seq(mon *m)
{
    sqlite3_stmt *s = store_prepare(m->ws->st, "SELECT COALESCE(MAX(seq), 0) FROM metrics"
                                               " WHERE run=?", NULL);
    long long v = 0;
    if (s) {
        store_bind_text(s, 1, m->id);
        if (sqlite3_step(s) == SQLITE_ROW)
            v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    }
    return v + 1;
}

/* Complete lines of buf into the store with the new offset, in one transaction.  A line
 * still being written (no '\n' yet) waits for the next read. */
static ctarget_status ingest(mon *m, const strbuf *buf, long long off, ctarget_error *e)
{
    size_t used = 0;
    ctarget_status rc = store_begin(m->ws->st, e);
    if (rc)
        return rc;
    long long seq = next_seq(m);
    while (!rc) {
        const char *start = buf->data + used;
        const char *nl = memchr(start, '\n', buf->len - used);
        if (!nl)
            break;
        size_t len = (size_t)(nl - start);
        char *name = NULL;
        double value;
        long long step;
        int has_step;
        if (blank(start, len)) {
        } else if (parse_metric(start, len, &name, &value, &step, &has_step) == 0) {
            rc = insert_metric(m, seq++, name, value, has_step, step, e);
        } else {
            m->bad_metric_lines++;
            mon_note(m, "warning: metrics line at byte %lld skipped: not a JSON object with "
                     "\"name\" (string), \"value\" (number) and optional \"step\" (integer): "
                     "%.*s", off + (long long)used, (int)(len > 200 ? 200 : len), start);
        }
        free(name);
        used += len + 1;
    }
    if (!rc && used)
        rc = run_set_int(m->ws->st, m->id, "metrics_offset", off + (long long)used, e);
    if (rc) {
        store_rollback(m->ws->st);
        return rc;
    }
    if ((rc = store_commit(m->ws->st, e)))
        return rc;
    json_object_set_new(m->row, "metrics_offset", json_integer(off + (long long)used));
    return CTARGET_OK;
}

int mon_read_metrics(mon *m)
{
    long long off = json_integer_value(json_object_get(m->row, "metrics_offset"));
    strbuf buf;
    sb_init(&buf);
    int r = -1;
    if (!call_read(m, CTARGET_STREAM_METRICS, (uint64_t)off, buf_out, &buf)) {
        ctarget_error e;
        ctarget_error_init(&e);
        r = 0;
        /* the run has ended: a last line without its newline is complete */
        if (m->final && buf.len && buf.data[buf.len - 1] != '\n')
            sb_addc(&buf, '\n');
        if (buf.len && ingest(m, &buf, off, &e)) {
            mon_note(m, "cannot record metrics: %s", e.message);
            r = -1;
        }
    }
    sb_free(&buf);
    return r;
}
