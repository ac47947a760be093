/* Workspace store: SQLite in WAL mode, schema migrated forward, safe across processes.
 * Secrets live in their own database file (secrets.db, attached as "sec"), so no secret
 * value is ever written to workspace.db or its WAL. */
#ifndef CTARGET_CORE_STORE_H
#define CTARGET_CORE_STORE_H

#include <sqlite3.h>

#include <ctarget/plugin.h>

typedef struct store {
    sqlite3 *db;
    char *dir;
    int schema_version;
    int in_txn;
} store;

/* The newest schema this build writes. */
int store_latest_schema(void);

ctarget_status store_open(const char *dir, store **out, ctarget_error *err);
void store_close(store *st);

/* Write transactions are always BEGIN IMMEDIATE: in WAL mode a deferred transaction that
 * later writes fails with SQLITE_BUSY without waiting, which is exactly the "database is
 * locked" failure concurrent ctarget processes must never see. */
ctarget_status store_begin(store *st, ctarget_error *err);
ctarget_status store_commit(store *st, ctarget_error *err);
void store_rollback(store *st);

ctarget_status store_exec(store *st, const char *sql, ctarget_error *err);
/* Prepared statement or NULL with err filled. */
sqlite3_stmt *store_prepare(store *st, const char *sql, ctarget_error *err);
/* Fill err from the connection's last error; returns the status it set. */
ctarget_status store_fail(store *st, ctarget_error *err, const char *what);

/* Bind helpers: NULL text binds SQL NULL. */
void store_bind_text(sqlite3_stmt *s, int i, const char *v);
char *store_col_text(sqlite3_stmt *s, int i); /* owned copy, "" for NULL */

/* For tests of migrations: open applying migrations only up to `version`. */
ctarget_status store_open_at_version(const char *dir, int version, store **out,
                                     ctarget_error *err);

#endif
