/* libctarget: the library behind the ctarget command.
 *
 * Read operations return JSON documents (UTF-8, owned by the caller, released with
 * ctarget_free) so programs in any language can use the results without a C object model;
 * the ctarget command prints them as tables or passes them through with --output json.
 *
 * Every fallible function returns a ctarget_status and fills a caller-owned ctarget_error
 * (see plugin.h); initialise it with ctarget_error_init().  Messages are one line, name the
 * object and the cause, and never contain secrets.
 */
#ifndef CTARGET_CTARGET_H
#define CTARGET_CTARGET_H

#include <ctarget/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CTARGET_API __attribute__((visibility("default")))
#else
#define CTARGET_API
#endif

CTARGET_API const char *ctarget_version(void);
CTARGET_API const char *ctarget_strerror(ctarget_status status);
CTARGET_API void ctarget_error_init(ctarget_error *err);
CTARGET_API void ctarget_free(void *p);

/* ---- diagnostics ------------------------------------------------------------------------ */
/* Messages at or below max_level go to fn (default: stderr, WARN).  Secrets are redacted
 * before fn sees them. */
typedef void (*ctarget_log_fn)(void *arg, ctarget_log_level level, const char *msg);
CTARGET_API void ctarget_set_log_handler(ctarget_log_fn fn, void *arg, ctarget_log_level max_level);

/* Progress of long work (provisioning, snapshots, uploads, environment builds). */
typedef void (*ctarget_progress_fn)(void *arg, const char *phase, uint64_t done, uint64_t total);
CTARGET_API void ctarget_set_progress_handler(ctarget_progress_fn fn, void *arg);

/* Ask every running operation to stop at its next cancellation point.  Async-signal-safe. */
CTARGET_API void ctarget_cancel_request(void);
CTARGET_API int ctarget_cancel_requested(void);

/* ---- plugins ---------------------------------------------------------------------------- */
/* JSON array: one object per plugin file found, loaded or refused:
 *   name, version, abi, path, status ("loaded"|"refused"), reason, capabilities[], ... */
CTARGET_API ctarget_status ctarget_plugins_list(char **json, ctarget_error *err);
/* JSON object describing one target type: capabilities, name rule, config keys. */
CTARGET_API ctarget_status ctarget_plugin_describe(const char *type, char **json, ctarget_error *err);

/* ---- workspace -------------------------------------------------------------------------- */
typedef struct ctarget_ws ctarget_ws;

/* dir NULL: $CTARGET_WORKSPACE, else $XDG_DATA_HOME/ctarget, else ~/.local/share/ctarget.
 * Created 0700 on first use; the store is migrated forward to the current schema. */
CTARGET_API ctarget_status ctarget_ws_open(const char *dir, ctarget_ws **ws, ctarget_error *err);
CTARGET_API void ctarget_ws_close(ctarget_ws *ws);
CTARGET_API const char *ctarget_ws_dir(const ctarget_ws *ws);
CTARGET_API int ctarget_ws_schema_version(const ctarget_ws *ws);

/* ---- compute targets -------------------------------------------------------------------- */
typedef struct ctarget_setting {
    const char *key;
    const char *value;   /* literal, or a reference "env:VAR" / "file:PATH" for secrets */
} ctarget_setting;

typedef struct ctarget_compute_opts {
    size_t struct_size;
    const ctarget_setting *settings;
    size_t n_settings;
    int wait;                 /* follow provisioning until it settles */
    long wait_timeout_s;      /* 0 = 3600 */
    int accept_new_host_key;  /* trust an unknown SSH host key (like accept-new) */
} ctarget_compute_opts;

typedef enum ctarget_power_action {
    CTARGET_POWER_START = 0,
    CTARGET_POWER_STOP = 1,
    CTARGET_POWER_RESTART = 2
} ctarget_power_action;

/* create/attach/show/status/update/power return the target as a JSON object:
 *   name, type, origin ("created"|"attached"|"implicit"), provisioning_state,
 *   provisioning_errors, config{} (secrets masked as "********" or shown as their
 *   env:/file: reference), facts{}, created_at, updated_at; status adds live{}. */
CTARGET_API ctarget_status ctarget_compute_create(ctarget_ws *ws, const char *name, const char *type,
                                      const ctarget_compute_opts *opts, char **json,
                                      ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_attach(ctarget_ws *ws, const char *name, const char *type,
                                      const ctarget_compute_opts *opts, char **json,
                                      ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_list(ctarget_ws *ws, char **json, ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_show(ctarget_ws *ws, const char *name, char **json,
                                    ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_status(ctarget_ws *ws, const char *name, char **json,
                                      ctarget_error *err);
/* status with opts->wait: follow provisioning until it settles first */
CTARGET_API ctarget_status ctarget_compute_status_wait(ctarget_ws *ws, const char *name,
                                           const ctarget_compute_opts *opts, char **json,
                                           ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_update(ctarget_ws *ws, const char *name,
                                      const ctarget_compute_opts *opts, char **json,
                                      ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_power(ctarget_ws *ws, const char *name,
                                     ctarget_power_action action,
                                     const ctarget_compute_opts *opts, char **json,
                                     ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_nodes(ctarget_ws *ws, const char *name, char **json,
                                     ctarget_error *err);
/* detach: forget the target, never destroy it.  delete: destroy what ctarget created
 * (attached targets are refused: detach them). */
CTARGET_API ctarget_status ctarget_compute_detach(ctarget_ws *ws, const char *name, ctarget_error *err);
CTARGET_API ctarget_status ctarget_compute_delete(ctarget_ws *ws, const char *name,
                                      const ctarget_compute_opts *opts, ctarget_error *err);

/* ---- runs ------------------------------------------------------------------------------- */
/* A run executes a script from a source directory on a compute target.  Submitting checks
 * the target's capabilities, snapshots the source, records the run (NotStarted) and starts
 * its run monitor, a detached process that drives the plugin to a terminal state and
 * records every transition; it returns at once.  See the Run states in ctarget(1).
 *
 * A run as JSON (ctarget_run_show): id, experiment, target, target_type, status,
 * native_state, attempt, created_at, started_at, ended_at, duration_seconds, exit_code,
 * term_signal, reason, snapshot_id, source_dir, git, script, arguments[], framework,
 * timeout_seconds, environment{kind, name, python, file_name, hash, docker_image,
 * env_var_names[]}, monitor{pid, alive, starts}, events[{from, to, time, native_state,
 * detail}], metrics{NAME: {value, step, time, count}}, outputs[{path, size}], logs (path of
 * std_log.txt), work_dir.  ctarget_run_list returns a subset per run: id, experiment,
 * target, status, exit_code, reason, created_at, duration_seconds. */
typedef struct ctarget_run_opts {
    size_t struct_size;
    const char *config_file;      /* run configuration JSON (ScriptRunConfig fields), or NULL */
    const char *target;           /* the fields below override the configuration file */
    const char *source_dir;
    const char *script;
    const char *const *args;      /* used when args_set (an empty list overrides too) */
    size_t n_args;
    int args_set;
    const char *experiment;       /* NULL: config's, else "default" */
    const char *environment;      /* named environment; or one of: */
    const char *python;           /*   interpreter used as is */
    const char *requirements;     /*   pip requirements file */
    const char *conda;            /*   conda dependencies file */
    const char *docker_image;
    const char *const *env_vars;  /* "NAME=VALUE" */
    size_t n_env_vars;
    long long timeout_seconds;    /* max_run_duration_seconds; 0: the config's, else none */
    const char *framework;
    long long cancel_grace_seconds; /* TERM -> KILL on cancel; 0: the config's, else 10 */
} ctarget_run_opts;

/* JSON {id, status, experiment, target, snapshot_id, exit_code (null)}.  A bad
 * configuration fails with CTARGET_E_CONFIG naming the key (and the closest valid one). */
CTARGET_API ctarget_status ctarget_run_submit(ctarget_ws *ws, const ctarget_run_opts *opts,
                                              char **json, ctarget_error *err);

typedef struct ctarget_run_filter {
    size_t struct_size;
    const char *experiment, *status, *target;   /* NULL: any */
    size_t limit;                                /* 0: all */
    const char *parent;   /* appended: only the children of this sweep or pipeline (an id or
                           * a unique prefix), or NULL */
} ctarget_run_filter;
/* Newest first. */
CTARGET_API ctarget_status ctarget_run_list(ctarget_ws *ws, const ctarget_run_filter *f,
                                            char **json, ctarget_error *err);
/* id may be a unique prefix of a run id, in every run function. */
CTARGET_API ctarget_status ctarget_run_show(ctarget_ws *ws, const char *id, char **json,
                                            ctarget_error *err);
/* Block until the run ends (timeout_ms 0: no limit; then CTARGET_E_TIMEOUT); JSON as show.
 * Restarts a dead monitor, as every function that reads a run does. */
CTARGET_API ctarget_status ctarget_run_wait(ctarget_ws *ws, const char *id, long timeout_ms,
                                            char **json, ctarget_error *err);
/* Copy std_log.txt through out from the start; with follow, keep going until the run has
 * ended and its log is complete.  *json (may be NULL): the run as show, at the end. */
CTARGET_API ctarget_status ctarget_run_logs(ctarget_ws *ws, const char *id, int follow,
                                            ctarget_write_fn out, void *out_arg, char **json,
                                            ctarget_error *err);
/* Ask for cancellation (CancelRequested); the monitor cancels through the plugin.
 * CTARGET_E_STATE when the run has already ended.  JSON as show. */
CTARGET_API ctarget_status ctarget_run_cancel(ctarget_ws *ws, const char *id, char **json,
                                              ctarget_error *err);
/* JSON [{path, size}] of the run's outputs; with dest_dir, also copy them there. */
CTARGET_API ctarget_status ctarget_run_outputs(ctarget_ws *ws, const char *id,
                                               const char *dest_dir, char **json,
                                               ctarget_error *err);
/* JSON [{name, value, step, time}] in the order the script logged them. */
CTARGET_API ctarget_status ctarget_run_metrics(ctarget_ws *ws, const char *id, char **json,
                                               ctarget_error *err);
/* Remove an ended run with its files (CTARGET_E_STATE while it is active). */
CTARGET_API ctarget_status ctarget_run_delete(ctarget_ws *ws, const char *id,
                                              ctarget_error *err);
/* Be the run's monitor in this process, until the run ends (what the detached monitor
 * process runs).  CTARGET_E_EXISTS when another monitor holds the run. */
CTARGET_API ctarget_status ctarget_run_monitor(ctarget_ws *ws, const char *id,
                                               ctarget_error *err);
/* Program that run monitors are started as: `PROGRAM --workspace WS run __monitor ID`.
 * NULL (the default): $CTARGET_MONITOR_PROGRAM, else the installed ctarget command. */
CTARGET_API void ctarget_set_monitor_program(const char *path);

/* ---- hyperparameter sweeps --------------------------------------------------------------- */
/* A sweep runs many child runs of one script with arguments drawn from a parameter space
 * (grid, seeded random or TPE "bayesian" sampling), reads each child's primary metric and
 * stops children early by a termination policy (bandit, median stopping, truncation
 * selection, with Azure ML HyperDrive's semantics).  It is a run of kind "sweep" whose
 * monitor is the sweep driver; its children are runs whose parent is the sweep.  Only on
 * targets whose plugin declares CTARGET_CAP_HYPERPARAMETER_TUNING.  The configuration file
 * format is in ctarget(1) and examples/sweep.json. */
typedef struct ctarget_sweep_opts {
    size_t struct_size;
    const char *config_file;  /* the sweep configuration (JSON) */
    const char *experiment;   /* overrides the run configuration's, or NULL */
    const char *target;       /* overrides the run configuration's, or NULL */
} ctarget_sweep_opts;
/* JSON {id, status, experiment, target, snapshot_id, sampling, seed, max_total_runs,
 * max_concurrent_runs}; id is the parent run's id (every ctarget_run_* function takes it). */
CTARGET_API ctarget_status ctarget_sweep_submit(ctarget_ws *ws, const ctarget_sweep_opts *opts,
                                                char **json, ctarget_error *err);
/* JSON: id, experiment, target, status, reason, summary (the latest transition's detail,
 * e.g. how many children completed), times, sampling, seed, primary_metric, goal,
 * early_termination, parameters, max_*, children_started, children_by_status{},
 * stopped_early, best {index, id, value, params, arguments} (or null), children[] ranked
 * by the last value of the primary metric (best first; those without a value last):
 * {rank, index, id, status, reason, value, intervals, params{}, arguments[], stopped_early}.
 * Restarts a dead driver, as reading any run does. */
CTARGET_API ctarget_status ctarget_sweep_show(ctarget_ws *ws, const char *id, char **json,
                                              ctarget_error *err);
/* Newest first: {id, experiment, target, status, sampling, primary_metric,
 * children_started, max_total_runs, stopped_early, best_value, created_at}. */
CTARGET_API ctarget_status ctarget_sweep_list(ctarget_ws *ws, char **json, ctarget_error *err);
/* Until the sweep ends (timeout_ms 0: no limit); JSON as show. */
CTARGET_API ctarget_status ctarget_sweep_wait(ctarget_ws *ws, const char *id, long timeout_ms,
                                              char **json, ctarget_error *err);
/* Cancel the sweep: no new children, the running ones canceled; JSON as show. */
CTARGET_API ctarget_status ctarget_sweep_cancel(ctarget_ws *ws, const char *id, char **json,
                                                ctarget_error *err);

/* ---- pipelines ---------------------------------------------------------------------------- */
/* A pipeline is a DAG of steps, each a run on a compute target (a script step on any target
 * whose plugin declares CTARGET_CAP_PIPELINE_STEP, or a step of a target type's own kind:
 * databricks, adla, batch), joined by data: a step's named outputs are later steps' inputs.
 * Independent steps run in parallel up to max_parallel; a step whose code, arguments,
 * environment and inputs are unchanged is reused (allow_reuse) instead of run again.  It is
 * a run of kind "pipeline" (target "pipeline") whose monitor is the pipeline driver; its
 * steps are child runs.  The file format (JSON or YAML) is in ctarget(1), PIPELINE FILES. */
typedef struct ctarget_pipeline_opts {
    size_t struct_size;
    const char *file;         /* the pipeline file */
    const char *experiment;   /* overrides the file's, or NULL */
} ctarget_pipeline_opts;
/* Check the file and every step's target, capability, source and script; nothing runs.
 * JSON {name, experiment, steps: [{name, type, target, inputs, outputs, depends_on}]}. */
CTARGET_API ctarget_status ctarget_pipeline_validate(ctarget_ws *ws,
                                                     const ctarget_pipeline_opts *opts,
                                                     char **json, ctarget_error *err);
/* Validate as above, then start the pipeline; JSON {id, status, name, experiment, steps}. */
CTARGET_API ctarget_status ctarget_pipeline_submit(ctarget_ws *ws,
                                                   const ctarget_pipeline_opts *opts,
                                                   char **json, ctarget_error *err);
/* JSON: the parent run as ctarget_run_show has it (id, status, reason, times, events),
 * plus name, summary, steps_by_status{}, reused (count) and steps[] in file order: {name,
 * type, target, status, run, reused_from, reason, inputs{}, outputs[], depends_on[],
 * started_at, ended_at, duration_seconds}.  A step's status is its run's, or Reused,
 * Skipped, Canceled (never started), Failed (could not start, or an output missing),
 * NotStarted.  Restarts a dead driver, as reading any run does. */
CTARGET_API ctarget_status ctarget_pipeline_show(ctarget_ws *ws, const char *id, char **json,
                                                 ctarget_error *err);
/* Newest first: {id, name, experiment, status, steps, reused, created_at,
 * duration_seconds}. */
CTARGET_API ctarget_status ctarget_pipeline_list(ctarget_ws *ws, char **json,
                                                 ctarget_error *err);
/* Until the pipeline ends (timeout_ms 0: no limit); JSON as show. */
CTARGET_API ctarget_status ctarget_pipeline_wait(ctarget_ws *ws, const char *id,
                                                 long timeout_ms, char **json,
                                                 ctarget_error *err);
/* Cancel: no new steps, every running step canceled; JSON as show. */
CTARGET_API ctarget_status ctarget_pipeline_cancel(ctarget_ws *ws, const char *id,
                                                   char **json, ctarget_error *err);

/* ---- environments ----------------------------------------------------------------------- */
typedef struct ctarget_env_opts {
    size_t struct_size;
    const char *python;           /* one of these three */
    const char *requirements;
    const char *conda;
    const char *docker_image;     /* optional */
    const char *const *env_vars;  /* "NAME=VALUE" */
    size_t n_env_vars;
} ctarget_env_opts;
/* JSON {name, kind ("user"|"pip"|"conda"), python, file_name, content, hash (sha256 of the
 * dependency file), docker_image, env_vars{}, created_at}.  The file's content is kept. */
CTARGET_API ctarget_status ctarget_env_create(ctarget_ws *ws, const char *name,
                                              const ctarget_env_opts *opts, char **json,
                                              ctarget_error *err);
CTARGET_API ctarget_status ctarget_env_list(ctarget_ws *ws, char **json, ctarget_error *err);
CTARGET_API ctarget_status ctarget_env_show(ctarget_ws *ws, const char *name, char **json,
                                            ctarget_error *err);
CTARGET_API ctarget_status ctarget_env_delete(ctarget_ws *ws, const char *name,
                                              ctarget_error *err);
/* ---- snapshots --------------------------------------------------------------------------- */
/* A snapshot is a source directory's content at one moment: a sorted manifest (path, type,
 * mode, size, sha256, link target) whose SHA-256 is the snapshot id, with file contents in
 * the workspace's content-addressed blob store.  The same tree always gets the same id.
 * Ignore rules come from .amlignore, else .gitignore (git's semantics); .git is excluded. */
typedef struct ctarget_snapshot_opts {
    size_t struct_size;
    uint64_t max_bytes;   /* 0: $CTARGET_SNAPSHOT_MAX_BYTES, else 300 MB */
    uint64_t max_files;   /* 0: $CTARGET_SNAPSHOT_MAX_FILES, else 2000 (files + symlinks) */
} ctarget_snapshot_opts;

/* Snapshot dir (opts may be NULL).  Exceeding a limit fails with CTARGET_E_LIMIT before any
 * content is read, naming the largest files and directories.  JSON object:
 *   id, source_dir (realpath), parent (previous snapshot of the same directory, or null),
 *   created_at, files (regular files + symlinks), dirs, bytes (file contents),
 *   new_bytes (content bytes this call added to the blob store), new_blobs,
 *   hashed_files / hashed_bytes (contents read; files unchanged since the last snapshot per
 *   the stat cache are not read), manifest_bytes,
 *   git: {repository (credentials stripped), branch, commit, dirty} or null. */
CTARGET_API ctarget_status ctarget_snapshot_create(ctarget_ws *ws, const char *dir,
                                                   const ctarget_snapshot_opts *opts,
                                                   char **json, ctarget_error *err);
/* JSON array of snapshot records (id, source_dir, parent, created_at, files, bytes,
 * new_bytes, git), oldest first. */
CTARGET_API ctarget_status ctarget_snapshot_list(ctarget_ws *ws, char **json,
                                                 ctarget_error *err);
/* id may be a unique prefix.  The record, with its file count renamed "file_count", plus
 * "entries" (manifest size) and "files": one object per entry {path, type ("file"|"dir"|"symlink"), mode, size, sha256 (files; else
 * null), target (symlinks)}. */
CTARGET_API ctarget_status ctarget_snapshot_show(ctarget_ws *ws, const char *id, char **json,
                                                 ctarget_error *err);
/* {"from", "to", "added": [paths], "modified": [paths], "deleted": [paths]}: what changed
 * from snapshot a to b (type, mode, content or link target). */
CTARGET_API ctarget_status ctarget_snapshot_diff(ctarget_ws *ws, const char *a, const char *b,
                                                 char **json, ctarget_error *err);
/* Write the transport archive (plugin.h, snapshot_write_tar) of snapshot id to path ("-":
 * standard output); flags CTARGET_TAR_ZSTD.  since (or NULL): leave out the blobs snapshot
 * `since` already has.  JSON {id, since, path, blobs, blob_bytes}. */
CTARGET_API ctarget_status ctarget_snapshot_export(ctarget_ws *ws, const char *id,
                                                   const char *since, unsigned flags,
                                                   const char *path, char **json,
                                                   ctarget_error *err);
/* Safely extract an archive (a transport archive or a plain tar) into dest; blobs the
 * archive lacks come from this workspace's blob store. */
CTARGET_API ctarget_status ctarget_snapshot_extract(ctarget_ws *ws, const char *archive,
                                                    const char *dest, ctarget_error *err);
/* Delete every blob no snapshot references.  JSON {removed_blobs, freed_bytes, kept_blobs,
 * kept_bytes, removed_temp_files}. */
CTARGET_API ctarget_status ctarget_snapshot_gc(ctarget_ws *ws, char **json, ctarget_error *err);

#ifdef __cplusplus
}
#endif

#endif /* CTARGET_CTARGET_H */
