/* The run lifecycle: the state machine, run records, submission, the run monitor.
 *
 * Files of a run live in <ws>/runs/<id>/:
 *     std_log.txt     the script's stdout+stderr as read_logs(LOG) returned it, appended
 *     monitor.log     what the monitor itself reports (warnings, plugin errors)
 *     monitor.lock    a POSIX record lock held by the live monitor for its whole life
 *     environment/    the dependency file copied at submission (it must not change later)
 *     work/           run->work_dir, private to the plugin
 *     outputs/ logs/  filled by fetch_outputs()
 */
#ifndef CTARGET_CORE_RUN_H
#define CTARGET_CORE_RUN_H

#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include <ctarget/ctarget.h>

#include "store.h"

/* ---- runstate.c: the one state machine --------------------------------------------------- */

const char *rs_name(ctarget_run_state s);
/* -1 when the name is unknown (case-insensitive). */
int rs_parse(const char *name);
int rs_terminal(ctarget_run_state s);
/* Is from -> to allowed?  (the table; self-transitions are not transitions) */
int rs_allowed(ctarget_run_state from, ctarget_run_state to);

/* Everything a transition may set besides the status.  Unset fields stay unchanged. */
typedef struct rs_change {
    const char *native_state;   /* NULL: unchanged */
    const char *detail;         /* event detail, also the reason for Failed/Canceled */
    int has_exit_code, exit_code;
    int term_signal;            /* nonzero: set */
    const char *cancel_cause;   /* "user" | "timeout": set */
} rs_change;

/* THE place runs.status changes.  In one BEGIN IMMEDIATE transaction: read the current
 * status, refuse (CTARGET_E_STATE, nothing written) unless the table allows the move, update
 * the row (timestamps: started_at on the first Running, ended_at on a terminal state) and
 * append the run_events row.  *from (may be NULL) receives the status found. */
ctarget_status rs_transition(store *st, const char *id, ctarget_run_state to,
                             const rs_change *ch, ctarget_run_state *from, ctarget_error *err);

/* ---- run_store.c: records ----------------------------------------------------------------- */

/* Resolve an id or unique id prefix; *id owned. */
ctarget_status run_resolve(store *st, const char *id_or_prefix, char **id, ctarget_error *err);
/* The row as a JSON object (columns by name, config/handle/git parsed); NULL when absent. */
json_t *run_row(store *st, const char *id);
ctarget_run_state run_row_state(json_t *row);
/* UPDATE runs SET <col>=? for one integer/text column (not status: see rs_transition). */
ctarget_status run_set_int(store *st, const char *id, const char *col, long long v,
                           ctarget_error *err);
ctarget_status run_set_text(store *st, const char *id, const char *col, const char *v,
                            ctarget_error *err);
char *run_dir(const char *ws_dir, const char *id);
char *run_file(const char *ws_dir, const char *id, const char *name);
/* New run id: UTC submission time to the microsecond, then 32 random bits.  Ids of runs
 * submitted in different microseconds sort by submission time as plain strings. */
char *run_new_id(void);
int run_experiment_name_ok(const char *name);

/* ---- run_submit.c: the run configuration ------------------------------------------------ */

/* A run configuration file (JSON object; keys and types checked, relative paths anchored at
 * the file's directory, a string environment turned into {"name": ...}). */
ctarget_status run_config_load(const char *file, json_t **out, ctarget_error *err);
/* The merged configuration's values: required keys, ranges, names. */
ctarget_status run_config_check_values(json_t *c, ctarget_error *err);
/* What the monitor needs besides the columns (a new reference; env is borrowed). */
json_t *run_config_stored(json_t *c, const char *script, json_t *env);

/* ---- run_submit.c: submitting from a configuration object (sweeps submit their children
 * this way) ------------------------------------------------------------------------------ */

typedef struct run_sub {
    const char *id;       /* NULL: a new id; else this one (CTARGET_E_EXISTS if it is taken) */
    const char *parent;   /* the parent run (a sweep), or NULL */
    const char *kind;     /* "run" (NULL) or "sweep" */
    const char *snapshot; /* NULL: snapshot the source now; else run this snapshot */
    json_t *git;          /* with snapshot: its git information (borrowed) */
    json_t *extra;        /* merged into the stored configuration (borrowed), or NULL */
    uint64_t need_caps;   /* capabilities the target must declare beyond running scripts */
    const char *step_type; /* with CTARGET_CAP_PIPELINE_STEP: "script", or the plugin type
                            * the step needs ("databricks", ...) */
} run_sub;
/* The checks submission makes (values, target, capabilities, source and script), with
 * nothing written: a pipeline checks every step before it starts any. */
ctarget_status run_check_config(struct ctarget_ws *ws, json_t *c, const run_sub *x,
                                ctarget_error *err);
/* A new runs row (NotStarted) with its first event, in one transaction. */
typedef struct new_run {
    const char *id, *experiment, *target, *type, *source, *snapshot;
    json_t *git, *config;
    const char *env_name;
    const char *parent, *kind;
} new_run;
ctarget_status run_insert(store *st, const new_run *r, ctarget_error *err);

/* Check an inline run configuration as a configuration file is checked (keys, types;
 * file names it in messages) and anchor its relative paths at base (NULL: as they are). */
ctarget_status run_config_check(json_t *obj, const char *file, const char *base,
                                ctarget_error *err);
/* Submit the (checked) configuration c; *json as ctarget_run_submit's. */
ctarget_status run_submit_config(struct ctarget_ws *ws, json_t *c, const run_sub *x,
                                 char **json, ctarget_error *err);

/* ---- run_monitor.c ------------------------------------------------------------------------ */

/* Is a monitor holding the run's lock?  Returns its pid, 0 when none, -1 on error. */
pid_t run_monitor_holder(const char *ws_dir, const char *id);
/* Start a detached monitor (double fork + setsid); returns once it is forked. */
ctarget_status run_spawn_monitor(const char *ws_dir, const char *id, ctarget_error *err);
/* Recovery: a run that is not finished and has no live monitor gets a new one.  Returns
 * 1 when a monitor was started. */
int run_ensure_monitor(struct ctarget_ws *ws, json_t *row);

/* ---- env.c -------------------------------------------------------------------------------- */

/* The environment part of a run configuration: resolve a named environment and/or the
 * options into the stored form {kind, name, python, file, file_name, hash, docker_image,
 * env_vars{}} with the dependency file content copied to <run dir>/environment/. */
ctarget_status env_resolve(struct ctarget_ws *ws, json_t *spec, const char *run_dir_path,
                           json_t **out, ctarget_error *err);
/* hex sha256 of bytes (65 bytes out) */
void env_sha256_hex(const void *data, size_t len, char out[65]);

#endif
