/* Run records in the workspace store and the run's directory. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "run.h"
#include "util.h"

char *run_dir(const char *ws_dir, const char *id)
{
    return xasprintf("%s/runs/%s", ws_dir, id);
}

char *run_file(const char *ws_dir, const char *id, const char *name)
{
    return xasprintf("%s/runs/%s/%s", ws_dir, id, name);
}

static int id_chars_ok(const char *s)
{
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z')
              || *s == '.' || *s == '-'))
            return 0;
    return 1;
}

ctarget_status run_resolve(store *st, const char *prefix, char **id, ctarget_error *err)
{
    *id = NULL;
    /* ids name directories: never let one carry '/' or ".." into a path */
    if (!prefix || !*prefix || !id_chars_ok(prefix)) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no run '%s' (see `ctarget run list`)",
               prefix ? prefix : "");
        return CTARGET_E_NOT_FOUND;
    }
    sqlite3_stmt *s = store_prepare(st, "SELECT id FROM runs WHERE id >= ?1 AND"
                                        " substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT 2",
                                    err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, prefix);
    char *found[2] = {NULL, NULL};
    int n = 0;
    while (n < 2 && sqlite3_step(s) == SQLITE_ROW)
        found[n++] = store_col_text(s, 0);
    sqlite3_finalize(s);
    /* an exact id wins over longer ids it prefixes */
    if (n == 2 && !strcmp(found[0], prefix)) {
        free(found[1]);
        n = 1;
    }
    if (n == 0) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no run '%s' (see `ctarget run list`)", prefix);
        return CTARGET_E_NOT_FOUND;
    }
    if (n == 2) {
        ct_err(err, CTARGET_E_USAGE, "'%s' matches several runs (%s, %s, ...): give more of "
               "the id", prefix, found[0], found[1]);
        free(found[0]);
        free(found[1]);
        return CTARGET_E_USAGE;
    }
    *id = found[0];
    return CTARGET_OK;
}

static json_t *parse_json_col(sqlite3_stmt *s, int i, int object)
{
    const char *t = (const char *)sqlite3_column_text(s, i);
    if (!t)
        return json_null();
    json_t *j = json_loads(t, JSON_DECODE_ANY, NULL);
    if (!j || (object && !json_is_object(j))) {
        json_decref(j);
        return object ? json_object() : json_null();
    }
    return j;
}

json_t *run_row(store *st, const char *id)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT * FROM runs WHERE id=?", NULL);
    if (!s)
        return NULL;
    store_bind_text(s, 1, id);
    json_t *row = NULL;
    if (sqlite3_step(s) == SQLITE_ROW) {
        row = json_object();
        int n = sqlite3_column_count(s);
        for (int i = 0; i < n; i++) {
            const char *col = sqlite3_column_name(s, i);
            json_t *v;
            if (!strcmp(col, "config") || !strcmp(col, "handle"))
                v = parse_json_col(s, i, 1);
            else if (!strcmp(col, "git"))
                v = parse_json_col(s, i, 0);
            else if (sqlite3_column_type(s, i) == SQLITE_INTEGER)
                v = json_integer(sqlite3_column_int64(s, i));
            else if (sqlite3_column_type(s, i) == SQLITE_NULL)
                v = json_null();
            else
                v = json_string((const char *)sqlite3_column_text(s, i));
            json_object_set_new(row, col, v ? v : json_null());
        }
    }
    sqlite3_finalize(s);
    return row;
}

ctarget_run_state run_row_state(json_t *row)
{
    int s = rs_parse(json_string_value(json_object_get(row, "status")));
    return s < 0 ? CTARGET_RUN_FAILED : (ctarget_run_state)s;
}

static ctarget_status set_col(store *st, const char *id, const char *col, int is_int,
                              long long iv, const char *tv, ctarget_error *err)
{
    /* column names come from the core's own literals, never from input */
    char *sql = xasprintf("UPDATE runs SET %s=?, updated_at=? WHERE id=?", col);
    sqlite3_stmt *s = store_prepare(st, sql, err);
    free(sql);
    if (!s)
        return err->code;
    if (is_int)
        sqlite3_bind_int64(s, 1, iv);
    else
        store_bind_text(s, 1, tv);
    sqlite3_bind_int64(s, 2, time_now_ms());
    store_bind_text(s, 3, id);
    ctarget_status rc = CTARGET_OK;
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = store_fail(st, err, "cannot update the run");
    sqlite3_finalize(s);
    return rc;
}

ctarget_status run_set_int(store *st, const char *id, const char *col, long long v,
                           ctarget_error *err)
{
    return set_col(st, id, col, 1, v, NULL, err);
}

ctarget_status run_set_text(store *st, const char *id, const char *col, const char *v,
                            ctarget_error *err)
{
    return set_col(st, id, col, 0, 0, v, err);
}

char *run_new_id(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    time_t t = ts.tv_sec;
    gmtime_r(&t, &tm);
    char date[32];
    strftime(date, sizeof date, "%Y%m%dT%H%M%S", &tm);
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd = (uint32_t)ts.tv_nsec ^ ((uint32_t)getpid() << 16);
    return xasprintf("%s.%06ldZ-%08x", date, ts.tv_nsec / 1000, (unsigned)rnd);
}

/* Azure ML's rule: 3-36 characters, a letter or digit first, then letters, digits, '_', '-'. */
int run_experiment_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 3 || n > 36)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && (i == 0 || (c != '_' && c != '-')))
            return 0;
    }
    return 1;
}
