/* The workspace store (core/store.c), white-box: WAL, permissions, forward migrations,
 * refusal of newer schemas, and many writers at once without "database is locked". */
#define _GNU_SOURCE
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ctarget/ctarget.h>

#include "store.h"

static store *open_ok(const char *dir)
{
    store *st = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = store_open(dir, &st, &err);
    if (rc)
        fprintf(stderr, "store_open: %s\n", err.message);
    CU_ASSERT_EQUAL_FATAL(rc, CTARGET_OK);
    return st;
}

static char *pragma_text(store *st, const char *sql)
{
    sqlite3_stmt *s = store_prepare(st, sql, NULL);
    char *v = NULL;
    if (s && sqlite3_step(s) == SQLITE_ROW)
        v = store_col_text(s, 0);
    sqlite3_finalize(s);
    return v;
}

static void t_wal_and_latest_schema(void)
{
    char *ws = tl_tmpdir("ws");
    store *st = open_ok(ws);
    char *mode = pragma_text(st, "PRAGMA journal_mode");
    CU_ASSERT_STRING_EQUAL(mode ? mode : "", "wal");
    free(mode);
    char *v = pragma_text(st, "PRAGMA user_version");
    CU_ASSERT_EQUAL(atoi(v ? v : "-1"), store_latest_schema());
    CU_ASSERT_EQUAL(st->schema_version, store_latest_schema());
    free(v);
    CU_ASSERT(store_latest_schema() >= 3); /* targets, snapshots, runs */
    store_close(st);
    free(ws);
}

static void t_private_permissions_even_with_umask_zero(void)
{
    char *top = tl_tmpdir("top");
    char *ws = tl_path(top, "deep/er/ws");
    mode_t old = umask(0);
    store *st = open_ok(ws);
    /* a write creates the -wal and -shm files */
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(store_exec(st, "CREATE TABLE t_perm(x)", &err), CTARGET_OK);
    umask(old);
    struct stat s;
    CU_ASSERT_EQUAL(stat(ws, &s), 0);
    CU_ASSERT_EQUAL(s.st_mode & 0777, 0700);
    const char *files[] = {"workspace.db", "workspace.db-wal", "workspace.db-shm",
                           "secrets.db"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *p = tl_path(ws, files[i]);
        if (stat(p, &s) == 0) {
            if ((s.st_mode & 0777) != 0600)
                fprintf(stderr, "%s has mode %o\n", files[i], s.st_mode & 0777);
            CU_ASSERT_EQUAL(s.st_mode & 0777, 0600);
        } else {
            CU_ASSERT(i == 1 || i == 2); /* only WAL companions may be absent */
        }
        free(p);
    }
    store_close(st);
    free(ws);
    free(top);
}

static void t_forward_migration_keeps_data(void)
{
    char *ws = tl_tmpdir("ws");
    store *st = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(store_open_at_version(ws, 1, &st, &err), CTARGET_OK);
    char *v = pragma_text(st, "PRAGMA user_version");
    CU_ASSERT_STRING_EQUAL(v ? v : "", "1");
    free(v);
    CU_ASSERT_EQUAL(store_exec(st, "INSERT INTO targets(name, type, origin, config, "
                               "provisioning_state, created_at, updated_at) VALUES('keep-me', "
                               "'testssh', 'attached', '{}', 'Succeeded', 1, 1)", &err),
                    CTARGET_OK);
    store_close(st);
    st = open_ok(ws);
    CU_ASSERT_EQUAL(st->schema_version, store_latest_schema());
    char *name = pragma_text(st, "SELECT name FROM targets");
    CU_ASSERT_STRING_EQUAL(name ? name : "", "keep-me");
    free(name);
    /* tables of later migrations exist */
    char *n = pragma_text(st, "SELECT count(*) FROM sqlite_master WHERE name='runs'");
    CU_ASSERT_STRING_EQUAL(n ? n : "", "1");
    free(n);
    store_close(st);
    free(ws);
}

static void t_newer_schema_refused_untouched(void)
{
    char *ws = tl_tmpdir("ws");
    store *st = open_ok(ws);
    ctarget_error err;
    ctarget_error_init(&err);
    char *sql = NULL;
    if (asprintf(&sql, "PRAGMA user_version=%d", store_latest_schema() + 5) < 0)
        abort();
    CU_ASSERT_EQUAL(store_exec(st, sql, &err), CTARGET_OK);
    store_close(st);
    st = NULL;
    ctarget_error_init(&err);
    CU_ASSERT_NOT_EQUAL(store_open(ws, &st, &err), CTARGET_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "newer"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, ws));
    /* the command says the same, and the version stays */
    tl_result r = TL_CT(ws, "compute", "list");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "newer"));
    tl_result_free(&r);
    sqlite3 *db;
    char *path = tl_path(ws, "workspace.db");
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL);
    CU_ASSERT_EQUAL(sqlite3_step(q), SQLITE_ROW);
    CU_ASSERT_EQUAL(sqlite3_column_int(q, 0), store_latest_schema() + 5);
    sqlite3_finalize(q);
    sqlite3_close(db);
    free(path);
    free(sql);
    free(ws);
}

static void t_unusable_path_named_in_the_error(void)
{
    char *top = tl_tmpdir("top");
    char *file = tl_path(top, "plain-file");
    tl_write_file(file, "x");
    char *ws = tl_path(file, "ws");
    store *st = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_NOT_EQUAL(store_open(ws, &st, &err), CTARGET_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "plain-file"));
    CU_ASSERT_PTR_NULL(st);
    free(ws);
    free(file);
    free(top);
}

/* Several processes, each many short write transactions: none may fail with busy. */
static void t_concurrent_writers_never_see_locked(void)
{
    char *ws = tl_tmpdir("ws");
    store *st = open_ok(ws);
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(store_exec(st, "CREATE TABLE t_conc(p INTEGER, i INTEGER)", &err),
                    CTARGET_OK);
    store_close(st);
    enum { PROCS = 8, EACH = 60 };
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        CU_ASSERT_FATAL(pids[p] >= 0);
        if (pids[p] == 0) {
            store *s = NULL;
            ctarget_error e;
            ctarget_error_init(&e);
            if (store_open(ws, &s, &e))
                _exit(2);
            for (int i = 0; i < EACH; i++) {
                char sql[96];
                snprintf(sql, sizeof sql, "INSERT INTO t_conc VALUES(%d, %d)", p, i);
                if (store_begin(s, &e) || store_exec(s, sql, &e) || store_commit(s, &e)) {
                    fprintf(stderr, "writer %d: %s\n", p, e.message);
                    _exit(1);
                }
            }
            store_close(s);
            _exit(0);
        }
    }
    int ok = 0;
    for (int p = 0; p < PROCS; p++) {
        int status;
        waitpid(pids[p], &status, 0);
        ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    CU_ASSERT_EQUAL(ok, PROCS);
    st = open_ok(ws);
    char *n = pragma_text(st, "SELECT count(*) FROM t_conc");
    CU_ASSERT_EQUAL(atoi(n ? n : "0"), PROCS * EACH);
    free(n);
    store_close(st);
    free(ws);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_wal_and_latest_schema);
    TL_ADD(s, t_private_permissions_even_with_umask_zero);
    TL_ADD(s, t_forward_migration_keeps_data);
    TL_ADD(s, t_newer_schema_refused_untouched);
    TL_ADD(s, t_unusable_path_named_in_the_error);
    TL_ADD(s, t_concurrent_writers_never_see_locked);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "store", add);
}
