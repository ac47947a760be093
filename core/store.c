#include "config.h"

#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

/* Forward migrations.  Entry i moves the schema from version i to i+1.  Never edit a
 * published entry: append a new one. */
static const char *const migrations[] = {
    /* 0 -> 1: compute targets */
    "CREATE TABLE targets("
    "  name TEXT PRIMARY KEY COLLATE NOCASE,"
    "  type TEXT NOT NULL,"
    "  origin TEXT NOT NULL CHECK(origin IN ('created','attached','implicit')),"
    "  config TEXT NOT NULL,"
    "  secret_refs TEXT NOT NULL DEFAULT '{}',"
    "  facts TEXT NOT NULL DEFAULT '{}',"
    "  provisioning_state TEXT NOT NULL,"
    "  provisioning_errors TEXT NOT NULL DEFAULT '',"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL);"
    "CREATE TABLE target_identities("
    "  identity TEXT PRIMARY KEY COLLATE NOCASE,"
    "  target TEXT NOT NULL COLLATE NOCASE REFERENCES targets(name) ON DELETE CASCADE);"
    "CREATE INDEX target_identities_target ON target_identities(target);",
    /* 1 -> 2: snapshots (core/snapshot.h).  The manifest itself is the blob named by the id;
     * snapshot_sources remembers each source directory's latest snapshot (the next one's
     * parent); stat_cache is the git-index-like cache of file hashes per source directory. */
    "CREATE TABLE snapshots("
    "  id TEXT PRIMARY KEY,"
    "  source_dir TEXT NOT NULL,"
    "  parent TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  files INTEGER NOT NULL,"
    "  bytes INTEGER NOT NULL,"
    "  new_bytes INTEGER NOT NULL,"
    "  git TEXT,"
    "  manifest_blob TEXT NOT NULL);"
    "CREATE INDEX snapshots_source ON snapshots(source_dir, created_at);"
    "CREATE TABLE snapshot_sources("
    "  source_dir TEXT PRIMARY KEY,"
    "  last_snapshot TEXT NOT NULL,"
    "  updated_at INTEGER NOT NULL);"
    "CREATE TABLE stat_cache("
    "  source_dir TEXT NOT NULL,"
    "  path TEXT NOT NULL,"
    "  size INTEGER NOT NULL,"
    "  mtime_ns INTEGER NOT NULL,"
    "  ctime_ns INTEGER NOT NULL,"
    "  inode INTEGER NOT NULL,"
    "  dev INTEGER NOT NULL,"
    "  sha256 TEXT NOT NULL,"
    "  PRIMARY KEY(source_dir, path)) WITHOUT ROWID;",
    /* 2 -> 3: the run lifecycle (core/run.h).
     * runs.status is only ever written by runstate.c's rs_transition(), which records every
     * change in run_events in the same transaction.  phase is the monitor's own progress
     * through the run contract (new, submitted, fetched, done) so a replacement monitor
     * knows whether to submit or reattach. */
    "CREATE TABLE experiments("
    "  name TEXT PRIMARY KEY COLLATE NOCASE,"
    "  created_at INTEGER NOT NULL);"
    "CREATE TABLE environments("
    "  name TEXT PRIMARY KEY COLLATE NOCASE,"
    "  kind TEXT NOT NULL CHECK(kind IN ('user','pip','conda')),"
    "  python TEXT,"
    "  file_name TEXT,"
    "  file_content BLOB,"
    "  file_hash TEXT,"
    "  docker_image TEXT,"
    "  env_vars TEXT NOT NULL DEFAULT '{}',"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL);"
    "CREATE TABLE runs("
    "  id TEXT PRIMARY KEY,"
    "  experiment TEXT NOT NULL COLLATE NOCASE REFERENCES experiments(name),"
    "  target TEXT NOT NULL COLLATE NOCASE,"
    "  target_type TEXT NOT NULL,"
    "  status TEXT NOT NULL,"
    "  native_state TEXT NOT NULL DEFAULT '',"
    "  phase TEXT NOT NULL DEFAULT 'new',"
    "  snapshot_id TEXT,"
    "  source_dir TEXT,"
    "  git TEXT,"
    "  config TEXT NOT NULL,"
    "  environment TEXT,"
    "  exit_code INTEGER,"
    "  term_signal INTEGER,"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  attempt INTEGER NOT NULL DEFAULT 1,"
    "  created_at INTEGER NOT NULL,"
    "  started_at INTEGER,"
    "  ended_at INTEGER,"
    "  updated_at INTEGER NOT NULL,"
    "  handle TEXT NOT NULL DEFAULT '{}',"
    "  log_offset INTEGER NOT NULL DEFAULT 0,"
    "  metrics_offset INTEGER NOT NULL DEFAULT 0,"
    "  cancel_cause TEXT,"
    "  not_responding_since INTEGER,"
    "  monitor_pid INTEGER,"
    "  monitor_start INTEGER,"
    "  monitor_starts INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX runs_experiment ON runs(experiment, id);"
    "CREATE INDEX runs_status ON runs(status);"
    "CREATE INDEX runs_target ON runs(target);"
    "CREATE TABLE run_events("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  from_status TEXT,"
    "  to_status TEXT NOT NULL,"
    "  native_state TEXT NOT NULL DEFAULT '',"
    "  time INTEGER NOT NULL,"
    "  detail TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX run_events_run ON run_events(run, seq);"
    "CREATE TABLE metrics("
    "  run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  seq INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  value REAL,"
    "  step INTEGER,"
    "  time INTEGER NOT NULL,"
    "  PRIMARY KEY(run, seq));"
    "CREATE INDEX metrics_name ON metrics(run, name, seq);",
    /* 3 -> 4: the stat cache moves out of the store into one file per source directory,
     * read in one go (core/snap_db.c); the old rows were only a cache. */
    "DROP TABLE stat_cache;",
    /* 4 -> 5: sweeps (core/sweep/).  A sweep is a run of kind 'sweep' whose monitor is the
     * sweep driver; its children are runs with parent = the sweep's id.  sweep_children
     * records each child (index, id, parameters, arguments) before the child is submitted,
     * so a restarted driver neither loses one nor starts one twice; evaluated is the last
     * interval the termination policy has judged; error, why the child could not be submitted. */
    "ALTER TABLE runs ADD COLUMN parent TEXT;"
    "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'run';"
    "CREATE INDEX runs_parent ON runs(parent);"
    "CREATE TABLE sweep_children("
    "  sweep TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL,"
    "  run TEXT NOT NULL UNIQUE,"
    "  params TEXT NOT NULL,"
    "  arguments TEXT NOT NULL,"
    "  evaluated INTEGER NOT NULL DEFAULT 0,"
    "  error TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY(sweep, idx));",
    /* 5 -> 6: pipelines (core/pipeline/).  A pipeline is a run of kind 'pipeline' whose
     * monitor is the pipeline driver; each step is a row here from submission on.  run: the
     * step's child run, recorded before it is submitted (NULL until the step starts, and
     * for steps that reuse an earlier one or copy data); status: the step's own outcome
     * when it is not its run's (Reused, Completed for a data transfer, Failed when it could
     * not start or left a declared output out, Canceled/Skipped when it never ran), NULL
     * while its run decides; reuse_key: the SHA-256 of its code, inputs, arguments and
     * environment; reused_from: the run whose outputs it used; outputs_dir: where its
     * outputs are; checked: its declared outputs were found. */
    "CREATE TABLE pipeline_steps("
    "  pipeline TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  type TEXT NOT NULL,"
    "  target TEXT,"
    "  run TEXT UNIQUE,"
    "  status TEXT,"
    "  reason TEXT,"
    "  reuse_key TEXT,"
    "  reused_from TEXT,"
    "  outputs_dir TEXT,"
    "  checked INTEGER NOT NULL DEFAULT 0,"
    "  started_at INTEGER,"
    "  ended_at INTEGER,"
    "  PRIMARY KEY(pipeline, idx));"
    "CREATE INDEX pipeline_steps_reuse ON pipeline_steps(reuse_key);",
};

/* Checkpoint the WAL into the database every this many pages (see store_open). */
#define WAL_PAGES 100

int store_latest_schema(void)
{
    return (int)CT_ARRAY_LEN(migrations);
}

ctarget_status store_fail(store *st, ctarget_error *err, const char *what)
{
    int rc = sqlite3_extended_errcode(st->db);
    ctarget_status code = CTARGET_E_IO;
    if ((rc & 0xff) == SQLITE_CONSTRAINT)
        code = CTARGET_E_EXISTS;
    else if ((rc & 0xff) == SQLITE_NOMEM)
        code = CTARGET_E_NOMEM;
    ct_err(err, code, "workspace %s: %s: %s", st->dir, what, sqlite3_errmsg(st->db));
    return code;
}

ctarget_status store_exec(store *st, const char *sql, ctarget_error *err)
{
    if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return store_fail(st, err, "statement failed");
    return CTARGET_OK;
}

sqlite3_stmt *store_prepare(store *st, const char *sql, ctarget_error *err)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK) {
        store_fail(st, err, "cannot prepare a statement");
        return NULL;
    }
    return s;
}

void store_bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, i);
}

char *store_col_text(sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    return xstrdup(t ? (const char *)t : "");
}

ctarget_status store_begin(store *st, ctarget_error *err)
{
    ctarget_status rc = store_exec(st, "BEGIN IMMEDIATE", err);
    if (rc == CTARGET_OK)
        st->in_txn = 1;
    return rc;
}

ctarget_status store_commit(store *st, ctarget_error *err)
{
    ctarget_status rc = store_exec(st, "COMMIT", err);
    if (rc != CTARGET_OK)
        store_rollback(st);
    st->in_txn = 0;
    return rc;
}

void store_rollback(store *st)
{
    if (st->in_txn)
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    st->in_txn = 0;
}

/* Create a file 0600 (or tighten an existing one) before SQLite opens it: SQLite gives its
 * -wal, -shm and -journal files the permissions of the database file.
 * The real path is never open()ed here: closing any descriptor of a database file drops the
 * POSIX locks that every SQLite connection of this process holds on it, so a thread opening
 * the workspace while another thread uses it would corrupt the database.  A new file is made
 * under a temporary name and linked into place. */
static int ensure_private_file(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode)) {
            errno = S_ISDIR(sb.st_mode) ? EISDIR : S_ISLNK(sb.st_mode) ? ELOOP : EINVAL;
            return -1;
        }
        if (sb.st_mode & 077)
            chmod(path, 0600);
        return 0;
    }
    if (errno != ENOENT)
        return -1;
    char *tmp = xasprintf("%s.new-XXXXXX", path);
    int fd = mkstemp(tmp); /* 0600 whatever the umask */
    if (fd < 0) {
        free(tmp);
        return -1;
    }
    close(fd);
    int rc = link(tmp, path), e = errno;
    unlink(tmp);
    free(tmp);
    if (rc != 0 && e != EEXIST) { /* EEXIST: another process made it meanwhile */
        errno = e;
        return -1;
    }
    return 0;
}

static int is_busy(int rc)
{
    return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

static void nap(void)
{
    struct timespec ts = {0, 5 * 1000000};
    nanosleep(&ts, NULL);
}

#define OPEN_BUSY_NS (INT64_C(60) * 1000000000)

/* For the statements run while opening.  Some of them return SQLITE_BUSY without consulting
 * the busy handler: journal_mode=WAL while another process converts a fresh workspace, and
 * the rollback-journal secret store when two connections would deadlock upgrading their
 * locks.  Retry those for as long as the busy timeout would have waited. */
static ctarget_status exec_patiently(store *st, const char *sql, ctarget_error *err)
{
    int64_t deadline = time_mono_ns() + OPEN_BUSY_NS;
    for (;;) {
        int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
        if (rc == SQLITE_OK)
            return CTARGET_OK;
        if (!is_busy(rc) || time_mono_ns() > deadline)
            return store_fail(st, err, "statement failed");
        nap();
    }
}

static int read_user_version(sqlite3 *db)
{
    int64_t deadline = time_mono_ns() + OPEN_BUSY_NS;
    for (;;) {
        sqlite3_stmt *s;
        int v = -1, rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL);
        if (rc == SQLITE_OK) {
            if ((rc = sqlite3_step(s)) == SQLITE_ROW)
                v = sqlite3_column_int(s, 0);
            sqlite3_finalize(s);
        }
        if (v >= 0 || !is_busy(rc) || time_mono_ns() > deadline)
            return v;
        nap();
    }
}

static ctarget_status migrate(store *st, int target, ctarget_error *err)
{
    int v = read_user_version(st->db);
    if (v > store_latest_schema()) {
        ct_err(err, CTARGET_E_STATE,
               "workspace %s has schema version %d, newer than this ctarget understands (%d): "
               "upgrade ctarget or use another --workspace", st->dir, v, store_latest_schema());
        return CTARGET_E_STATE;
    }
    if (v >= target)
        return CTARGET_OK; /* fast path: no write lock when nothing to do */
    ctarget_status rc = store_begin(st, err);
    if (rc)
        return rc;
    /* re-read under the write lock: another process may have migrated meanwhile */
    v = read_user_version(st->db);
    for (; v < target; v++) {
        if (sqlite3_exec(st->db, migrations[v], NULL, NULL, NULL) != SQLITE_OK) {
            char what[64];
            snprintf(what, sizeof what, "migration to schema %d failed", v + 1);
            rc = store_fail(st, err, what);
            store_rollback(st);
            return rc;
        }
        char *sql = xasprintf("PRAGMA user_version=%d", v + 1);
        sqlite3_exec(st->db, sql, NULL, NULL, NULL);
        free(sql);
    }
    return store_commit(st, err);
}

static ctarget_status open_impl(const char *dir, int version, store **out, ctarget_error *err)
{
    if (mkdir_p(dir, 0700) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create workspace directory %s", dir);
        return CTARGET_E_IO;
    }
    struct stat sb;
    if (stat(dir, &sb) == 0 && sb.st_uid == getuid() && (sb.st_mode & 077))
        chmod(dir, 0700);
    if (access(dir, W_OK) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "workspace directory %s is not writable", dir);
        return CTARGET_E_IO;
    }

    char *dbpath = path_join(dir, "workspace.db");
    char *secpath = path_join(dir, "secrets.db");
    store *st = xcalloc(1, sizeof *st);
    st->dir = xstrdup(dir);
    ctarget_status rc = CTARGET_OK;

    if (ensure_private_file(dbpath) != 0 || ensure_private_file(secpath) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create the store in workspace %s", dir);
        rc = CTARGET_E_IO;
        goto out;
    }
    if (sqlite3_open_v2(dbpath, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL)
        != SQLITE_OK) {
        rc = store_fail(st, err, "cannot open workspace.db");
        goto out;
    }
    sqlite3_busy_timeout(st->db, 60000);
    sqlite3_extended_result_codes(st->db, 1);
    /* The last connection to close would checkpoint the WAL into the database, fsync both
     * and delete the WAL, and the next process (every command is a short process) would
     * create it again and fsync its header and the directory: four syncs per command.  The
     * WAL stays instead.  But the first process to open the workspace rebuilds the WAL
     * index by reading every frame since the last checkpoint (with SQLite's default of
     * 1000 pages that was 4 MB and 3.5 ms per command after 25 submits), so checkpoints
     * come every WAL_PAGES pages: a rebuild reads at most that, and one checkpoint's two
     * syncs are shared by several commands.  Durability is that of synchronous=NORMAL
     * either way. */
    sqlite3_db_config(st->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)NULL);
    sqlite3_wal_autocheckpoint(st->db, WAL_PAGES);
    /* journal_mode=WAL needs a brief exclusive lock the first time; the busy timeout covers
     * processes that race to open a fresh workspace. */
    if ((rc = exec_patiently(st, "PRAGMA journal_mode=WAL", err)) ||
        (rc = exec_patiently(st, "PRAGMA synchronous=NORMAL", err)) ||
        (rc = exec_patiently(st, "PRAGMA foreign_keys=ON", err)) ||
        (rc = exec_patiently(st, "PRAGMA temp_store=MEMORY", err)))
        goto out;
    {
        char *sql = sqlite3_mprintf("ATTACH DATABASE %Q AS sec", secpath);
        rc = exec_patiently(st, sql, err);
        sqlite3_free(sql);
        if (rc)
            goto out;
    }
    if ((rc = exec_patiently(st, "PRAGMA sec.journal_mode=DELETE", err)) ||
        (rc = exec_patiently(st, "PRAGMA sec.secure_delete=ON", err)) ||
        (rc = exec_patiently(st, "PRAGMA sec.synchronous=FULL", err)))
        goto out;
    if (read_user_version(st->db) < 0) {
        rc = store_fail(st, err, "workspace.db is not a readable SQLite database");
        goto out;
    }
    /* the secret table is not versioned with the main schema: it never changes shape */
    if ((rc = exec_patiently(st,
                         "CREATE TABLE IF NOT EXISTS sec.secrets("
                         " target TEXT NOT NULL COLLATE NOCASE, key TEXT NOT NULL,"
                         " value BLOB NOT NULL, PRIMARY KEY(target, key))",
                         err)))
        goto out;
    if ((rc = migrate(st, version, err)))
        goto out;
    st->schema_version = read_user_version(st->db);
out:
    free(dbpath);
    free(secpath);
    if (rc) {
        store_close(st);
        st = NULL;
    }
    *out = st;
    return rc;
}

ctarget_status store_open(const char *dir, store **out, ctarget_error *err)
{
    return open_impl(dir, store_latest_schema(), out, err);
}

ctarget_status store_open_at_version(const char *dir, int version, store **out,
                                     ctarget_error *err)
{
    if (version < 0 || version > store_latest_schema()) {
        ct_err(err, CTARGET_E_USAGE, "no schema version %d", version);
        return CTARGET_E_USAGE;
    }
    return open_impl(dir, version, out, err);
}

void store_close(store *st)
{
    if (!st)
        return;
    if (st->db)
        sqlite3_close_v2(st->db);
    free(st->dir);
    free(st);
}
