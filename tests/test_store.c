/* The workspace store (core/store.c), white-box: WAL mode, private permissions whatever the
 * umask, schema versioning with forward migrations that keep data, refusal of a newer
 * schema without damage, concurrent writers in processes and threads that never see
 * "database is locked", secrets kept out of workspace.db, and clear errors naming the path. */
#define _GNU_SOURCE
#include "testlib.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include <ctarget/ctarget.h>

#include "store.h"

static char *ws_path(const char *tag)
{
    char *d = tl_tmpdir(tag);
    char *w = tl_path(d, "ws");
    free(d);
    return w;
}

static store *open_ok(const char *dir)
{
    store *st = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = store_open(dir, &st, &err);
    if (rc != CTARGET_OK)
        fprintf(stdout, "store_open(%s): %s\n", dir, err.message);
    CU_ASSERT_EQUAL_FATAL(rc, CTARGET_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    return st;
}

static char *query_text(store *st, const char *sql)
{
    sqlite3_stmt *s = store_prepare(st, sql, NULL);
    char *out = NULL;
    if (s && sqlite3_step(s) == SQLITE_ROW)
        out = store_col_text(s, 0);
    sqlite3_finalize(s);
    return out ? out : strdup("(no row)");
}

static long long query_int(store *st, const char *sql)
{
    sqlite3_stmt *s = store_prepare(st, sql, NULL);
    long long v = -1;
    if (s && sqlite3_step(s) == SQLITE_ROW)
        v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

static int mode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

static int insert_experiment(store *st, const char *name, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO experiments(name, created_at) VALUES (?, 1)",
                                    err);
    if (!s)
        return -1;
    store_bind_text(s, 1, name);
    int r = sqlite3_step(s);
    sqlite3_finalize(s);
    if (r != SQLITE_DONE) {
        store_fail(st, err, "insert");
        return -1;
    }
    return 0;
}

/* ---- format and permissions ------------------------------------------------------------- */

static void t_wal_mode_on(void)
{
    char *ws = ws_path("wal");
    store *st = open_ok(ws);
    char *mode = query_text(st, "PRAGMA journal_mode");
    CU_ASSERT_STRING_EQUAL(mode, "wal");
    free(mode);
    /* the secret store keeps a rollback journal: no WAL copy of a secret lingers */
    mode = query_text(st, "PRAGMA sec.journal_mode");
    CU_ASSERT_STRING_EQUAL(mode, "delete");
    free(mode);
    CU_ASSERT_EQUAL(query_int(st, "PRAGMA sec.secure_delete"), 1);
    store_close(st);
    /* persistent: a plain SQLite connection sees WAL too */
    char *db = tl_path(ws, "workspace.db");
    sqlite3 *raw;
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db, &raw), SQLITE_OK);
    sqlite3_stmt *s;
    sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &s, NULL);
    CU_ASSERT_EQUAL(sqlite3_step(s), SQLITE_ROW);
    CU_ASSERT_STRING_EQUAL((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    sqlite3_close(raw);
    free(db);
    free(ws);
}

static void check_private(const char *ws)
{
    const char *files[] = {"workspace.db", "workspace.db-wal", "workspace.db-shm", "secrets.db"};
    CU_ASSERT_EQUAL(mode_of(ws), 0700);
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *p = tl_path(ws, files[i]);
        int m = mode_of(p);
        if (m != 0600)
            fprintf(stdout, "%s: mode %o, want 600\n", p, (unsigned)m);
        CU_ASSERT_EQUAL(m, 0600);
        free(p);
    }
}

static void t_directory_0700_files_0600_even_with_umask_000(void)
{
    mode_t old = umask(0);
    char *ws = ws_path("perm");
    store *st = open_ok(ws);
    ctarget_error err;
    ctarget_error_init(&err);
    /* write through both databases so every file exists (the WAL and its index stay while
     * the connection is open) */
    CU_ASSERT_EQUAL(store_begin(st, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(insert_experiment(st, "e1", &err), 0);
    CU_ASSERT_EQUAL(store_exec(st, "INSERT INTO sec.secrets(target, key, value)"
                                   " VALUES ('t', 'k', 'v')", &err), CTARGET_OK);
    CU_ASSERT_EQUAL(store_commit(st, &err), CTARGET_OK);
    check_private(ws);
    store_close(st);
    /* loose permissions left by someone else are tightened on the next open */
    char *db = tl_path(ws, "workspace.db"), *sec = tl_path(ws, "secrets.db");
    chmod(ws, 0777);
    chmod(db, 0666);
    chmod(sec, 0644);
    st = open_ok(ws);
    CU_ASSERT_EQUAL(store_begin(st, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(insert_experiment(st, "e2", &err), 0);
    CU_ASSERT_EQUAL(store_commit(st, &err), CTARGET_OK);
    check_private(ws);
    store_close(st);
    umask(old);
    free(db);
    free(sec);
    free(ws);
}

/* ---- schema ----------------------------------------------------------------------------- */

static void t_schema_version_recorded_and_latest(void)
{
    char *ws = ws_path("schema");
    CU_ASSERT(store_latest_schema() >= 1);
    store *st = open_ok(ws);
    CU_ASSERT_EQUAL(st->schema_version, store_latest_schema());
    CU_ASSERT_EQUAL(query_int(st, "PRAGMA user_version"), store_latest_schema());
    store_close(st);
    st = open_ok(ws); /* reopening changes nothing */
    CU_ASSERT_EQUAL(st->schema_version, store_latest_schema());
    store_close(st);
    free(ws);
}

static void t_forward_migration_from_every_version_keeps_data(void)
{
    int latest = store_latest_schema();
    for (int v = 1; v < latest; v++) {
        char *ws = ws_path("migr");
        store *st = NULL;
        ctarget_error err;
        ctarget_error_init(&err);
        CU_ASSERT_EQUAL_FATAL(store_open_at_version(ws, v, &st, &err), CTARGET_OK);
        CU_ASSERT_EQUAL(st->schema_version, v);
        /* version 1 has targets; later tables do not exist yet */
        CU_ASSERT_EQUAL(store_exec(st, "INSERT INTO targets(name, type, origin, config,"
                                       " provisioning_state, created_at, updated_at) VALUES"
                                       " ('kept-target', 'testcloud', 'created', '{\"a\":\"1\"}',"
                                       " 'Succeeded', 1, 2)", &err), CTARGET_OK);
        if (v < 3)
            CU_ASSERT_EQUAL(query_int(st, "SELECT count(*) FROM sqlite_master WHERE"
                                          " name='runs'"), 0);
        store_close(st);
        /* an old build's workspace opened by this one: migrated, data intact */
        st = open_ok(ws);
        CU_ASSERT_EQUAL(st->schema_version, latest);
        CU_ASSERT_EQUAL(query_int(st, "PRAGMA user_version"), latest);
        char *cfg = query_text(st, "SELECT config FROM targets WHERE name='kept-target'");
        CU_ASSERT_STRING_EQUAL(cfg, "{\"a\":\"1\"}");
        free(cfg);
        CU_ASSERT_EQUAL(query_int(st, "SELECT count(*) FROM sqlite_master WHERE name IN"
                                      " ('targets', 'snapshots', 'runs', 'run_events')"), 4);
        /* and usable at the new version */
        ctarget_error_init(&err);
        CU_ASSERT_EQUAL(insert_experiment(st, "after-migration", &err), 0);
        store_close(st);
        free(ws);
    }
    /* versions outside the known range are a usage error, not a corrupted workspace */
    char *ws = ws_path("migr-bad");
    store *st = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(store_open_at_version(ws, latest + 1, &st, &err), CTARGET_E_USAGE);
    CU_ASSERT_PTR_NULL(st);
    free(ws);
}

static void t_newer_schema_refused_clearly_and_left_intact(void)
{
    char *ws = ws_path("newer");
    store *st = open_ok(ws);
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(insert_experiment(st, "from-the-future", &err), 0);
    store_close(st);
    /* a later ctarget wrote this workspace */
    char *db = tl_path(ws, "workspace.db");
    sqlite3 *raw;
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db, &raw), SQLITE_OK);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version=%d", store_latest_schema() + 1);
    CU_ASSERT_EQUAL(sqlite3_exec(raw, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(raw);
    char *before = tl_read_file(db);
    struct stat sb_before;
    stat(db, &sb_before);

    for (int attempt = 0; attempt < 2; attempt++) {
        st = NULL;
        ctarget_error_init(&err);
        ctarget_status rc = store_open(ws, &st, &err);
        CU_ASSERT_EQUAL(rc, CTARGET_E_STATE);
        CU_ASSERT_PTR_NULL(st);
        if (!strstr(err.message, "newer"))
            fprintf(stdout, "message: %s\n", err.message);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "newer"));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.message, ws));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "upgrade"));
        if (st)
            store_close(st);
    }
    /* untouched: same bytes, same version, data still there */
    char *after = tl_read_file(db);
    struct stat sb_after;
    stat(db, &sb_after);
    CU_ASSERT_EQUAL(sb_before.st_size, sb_after.st_size);
    CU_ASSERT(before && after && sb_before.st_size == sb_after.st_size &&
              memcmp(before, after, (size_t)sb_after.st_size) == 0);
    free(before);
    free(after);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(db, &raw), SQLITE_OK);
    sqlite3_stmt *s;
    sqlite3_prepare_v2(raw, "PRAGMA user_version", -1, &s, NULL);
    sqlite3_step(s);
    CU_ASSERT_EQUAL(sqlite3_column_int(s, 0), store_latest_schema() + 1);
    sqlite3_finalize(s);
    sqlite3_prepare_v2(raw, "SELECT count(*) FROM experiments WHERE name='from-the-future'", -1,
                       &s, NULL);
    sqlite3_step(s);
    CU_ASSERT_EQUAL(sqlite3_column_int(s, 0), 1);
    sqlite3_finalize(s);
    sqlite3_close(raw);
    free(db);
    free(ws);
}

/* ---- errors ----------------------------------------------------------------------------- */

static void expect_open_error(const char *dir, const char *needle)
{
    store *st = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = store_open(dir, &st, &err);
    CU_ASSERT_NOT_EQUAL(rc, CTARGET_OK);
    CU_ASSERT_PTR_NULL(st);
    if (!strstr(err.message, dir) || (needle && !strstr(err.message, needle)))
        fprintf(stdout, "open %s: message '%s' (want the path and '%s')\n", dir, err.message,
                needle ? needle : "");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, dir));
    if (needle)
        CU_ASSERT_PTR_NOT_NULL(strstr(err.message, needle));
    CU_ASSERT_PTR_NULL(strchr(err.message, '\n'));
    if (st)
        store_close(st);
}

static void t_open_errors_name_the_path(void)
{
    char *d = tl_tmpdir("openerr");
    /* parent is a regular file */
    char *file = tl_path(d, "plainfile");
    tl_write_file(file, "x");
    char *under = tl_path(file, "ws");
    expect_open_error(under, "Not a directory");
    /* parent cannot be created (not even by root) */
    expect_open_error("/proc/ctarget-no-such-dir/ws", NULL);
    /* the workspace exists but its database is not a database */
    char *junk = tl_path(d, "junk");
    mkdir(junk, 0700);
    char *junkdb = tl_path(junk, "workspace.db");
    tl_write_file(junkdb, "this is not an SQLite database, it is just text......................"
                          "..........................................................\n");
    expect_open_error(junk, NULL);
    char *still = tl_read_file(junkdb);
    CU_ASSERT(still && !strncmp(still, "this is not an SQLite", 21)); /* not overwritten */
    free(still);
    /* the workspace path itself is a regular file */
    char *wsfile = tl_path(d, "wsfile");
    tl_write_file(wsfile, "x");
    expect_open_error(wsfile, NULL);
    char *wsfile_still = tl_read_file(wsfile);
    CU_ASSERT(wsfile_still && !strcmp(wsfile_still, "x"));
    free(wsfile_still);
    free(wsfile);
    /* a directory where the database file should be */
    char *dirdb = tl_path(d, "dirdb");
    char *dirdb_db = tl_path(dirdb, "workspace.db");
    mkdir(dirdb, 0700);
    mkdir(dirdb_db, 0700);
    expect_open_error(dirdb, NULL);
    /* unwritable directory: only meaningful when not root */
    if (geteuid() != 0) {
        char *ro = tl_path(d, "readonly");
        mkdir(ro, 0500);
        char *inside = tl_path(ro, "ws");
        expect_open_error(inside, NULL);
        chmod(ro, 0700);
        free(inside);
        free(ro);
    }
    free(dirdb_db);
    free(dirdb);
    free(junkdb);
    free(junk);
    free(under);
    free(file);
    free(d);
}

/* ---- secrets stay in their own file ----------------------------------------------------- */

static void t_secret_rows_never_reach_workspace_db_or_wal(void)
{
    static const char secret[] = "Store-Secret-3e9d1";
    char *ws = ws_path("secsplit");
    store *st = open_ok(ws);
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(store_begin(st, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(store_exec(st, "INSERT INTO targets(name, type, origin, config,"
                                   " provisioning_state, created_at, updated_at) VALUES"
                                   " ('t1', 'x', 'attached', '{}', 'Succeeded', 1, 1)", &err),
                    CTARGET_OK);
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO sec.secrets(target, key, value)"
                                        " VALUES ('t1', 'password', ?)", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    sqlite3_bind_blob(s, 1, secret, (int)strlen(secret), SQLITE_STATIC);
    CU_ASSERT_EQUAL(sqlite3_step(s), SQLITE_DONE);
    sqlite3_finalize(s);
    CU_ASSERT_EQUAL(store_commit(st, &err), CTARGET_OK);
    /* while open (WAL and index present) and after close */
    for (int pass = 0; pass < 2; pass++) {
        const char *files[] = {"workspace.db", "workspace.db-wal", "workspace.db-shm"};
        for (size_t i = 0; i < 3; i++) {
            char *p = tl_path(ws, files[i]);
            char *c = NULL;
            struct stat sb;
            if (stat(p, &sb) == 0 && sb.st_size > 0) {
                c = tl_read_file(p);
                CU_ASSERT_PTR_NULL(memmem(c, (size_t)sb.st_size, secret, strlen(secret)));
            }
            free(c);
            free(p);
        }
        char *sec = tl_path(ws, "secrets.db");
        char *hit = tl_tree_grep(ws, secret, strlen(secret));
        CU_ASSERT_PTR_NOT_NULL(hit);
        if (hit)
            CU_ASSERT_STRING_EQUAL(hit, sec);
        free(hit);
        free(sec);
        if (pass == 0) {
            store_close(st);
            st = open_ok(ws);
        }
    }
    /* deleting the row wipes the value from the file (secure_delete) */
    CU_ASSERT_EQUAL(store_exec(st, "DELETE FROM sec.secrets WHERE target='t1'", &err),
                    CTARGET_OK);
    store_close(st);
    char *hit = tl_tree_grep(ws, secret, strlen(secret));
    if (hit)
        fprintf(stdout, "deleted secret still in %s\n", hit);
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
    free(ws);
}

/* ---- concurrency ------------------------------------------------------------------------ */

enum { N_PROCS = 6, N_THREADS = 4, N_ITERS = 40 };
static int n_threads = N_THREADS; /* per process, besides the process itself */

/* One writer: short IMMEDIATE transactions, some read-then-write (the pattern that fails
 * with "database is locked" under deferred transactions), reopening now and then like
 * separate ctarget commands do.  Returns the number of failures; prints the first. */
static int writer(const char *ws, const char *who)
{
    store *st = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    int failures = 0;
    for (int i = 0; i < N_ITERS && failures == 0; i++) {
        if (!st && store_open(ws, &st, &err) != CTARGET_OK) {
            fprintf(stdout, "%s: open: %s\n", who, err.message);
            failures++;
            break;
        }
        if (store_begin(st, &err) != CTARGET_OK) {
            fprintf(stdout, "%s: begin: %s\n", who, err.message);
            failures++;
            break;
        }
        /* read, then write based on it */
        sqlite3_stmt *s = store_prepare(st, "SELECT count(*) FROM experiments", &err);
        if (!s || sqlite3_step(s) != SQLITE_ROW) {
            fprintf(stdout, "%s: read: %s\n", who, sqlite3_errmsg(st->db));
            failures++;
        }
        long long n = s ? sqlite3_column_int64(s, 0) : 0;
        sqlite3_finalize(s);
        char name[96];
        snprintf(name, sizeof name, "%s-%d-%lld", who, i, n);
        if (!failures && insert_experiment(st, name, &err) != 0) {
            fprintf(stdout, "%s: insert: %s\n", who, err.message);
            failures++;
        }
        if (failures) {
            store_rollback(st);
            break;
        }
        if (store_commit(st, &err) != CTARGET_OK) {
            fprintf(stdout, "%s: commit: %s\n", who, err.message);
            failures++;
            break;
        }
        /* plain autocommit reads interleaved */
        if (query_int(st, "SELECT count(*) FROM experiments") < 1) {
            fprintf(stdout, "%s: autocommit read failed: %s\n", who, sqlite3_errmsg(st->db));
            failures++;
        }
        if (i % 10 == 9) {
            store_close(st);
            st = NULL;
        }
    }
    if (st)
        store_close(st);
    return failures;
}

typedef struct thread_arg {
    const char *ws;
    char who[32];
    int failures;
} thread_arg;

static void *thread_main(void *p)
{
    thread_arg *a = p;
    a->failures = writer(a->ws, a->who);
    return NULL;
}

static void t_concurrent_writers_never_see_busy(void)
{
    char *ws = ws_path("conc"); /* fresh: the writers also race to create and migrate it */
    int gate[2];
    CU_ASSERT_EQUAL_FATAL(pipe(gate), 0);
    pid_t pids[N_PROCS];
    for (int i = 0; i < N_PROCS; i++) {
        fflush(stdout);
        pids[i] = fork();
        if (pids[i] == 0) {
            close(gate[1]);
            char c;
            /* all start together when the gate closes */
            while (read(gate[0], &c, 1) > 0)
                ;
            char who[32];
            snprintf(who, sizeof who, "proc%d", i);
            int f = writer(ws, who);
            /* threads inside one process as well: each with its own connection */
            thread_arg ta[N_THREADS];
            pthread_t th[N_THREADS];
            for (int t = 0; t < n_threads; t++) {
                ta[t].ws = ws;
                snprintf(ta[t].who, sizeof ta[t].who, "proc%d-thr%d", i, t);
                ta[t].failures = 0;
                pthread_create(&th[t], NULL, thread_main, &ta[t]);
            }
            for (int t = 0; t < n_threads; t++) {
                pthread_join(th[t], NULL);
                f += ta[t].failures;
            }
            fflush(stdout);
            _exit(f ? 1 : 0);
        }
        CU_ASSERT_FATAL(pids[i] > 0);
    }
    close(gate[0]);
    close(gate[1]); /* open the gate */
    long long deadline = tl_now_ms() + 90000;
    int ok = 0;
    for (int i = 0; i < N_PROCS; i++) {
        int st = -1;
        for (;;) {
            pid_t w = waitpid(pids[i], &st, WNOHANG);
            if (w == pids[i])
                break;
            if (tl_now_ms() > deadline) {
                kill(pids[i], SIGKILL);
                waitpid(pids[i], &st, 0);
                CU_FAIL("a writer did not finish within 90 s");
                break;
            }
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    CU_ASSERT_EQUAL(ok, N_PROCS);
    store *st = open_ok(ws);
    CU_ASSERT_EQUAL(query_int(st, "SELECT count(*) FROM experiments"),
                    (long long)N_PROCS * (1 + n_threads) * N_ITERS);
    CU_ASSERT_EQUAL(st->schema_version, store_latest_schema());
    store_close(st);
    free(ws);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_wal_mode_on);
    TL_ADD(s, t_directory_0700_files_0600_even_with_umask_000);
    TL_ADD(s, t_schema_version_recorded_and_latest);
    TL_ADD(s, t_forward_migration_from_every_version_keeps_data);
    TL_ADD(s, t_newer_schema_refused_clearly_and_left_intact);
    TL_ADD(s, t_open_errors_name_the_path);
    TL_ADD(s, t_secret_rows_never_reach_workspace_db_or_wal);
    TL_ADD(s, t_concurrent_writers_never_see_busy);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "store", add);
}
