/* Internal interfaces of the local plugin.  Nothing here is exported: the plugin's only
 * public symbol is the entry point (see local.c). */
#ifndef CTARGET_PLUGIN_LOCAL_H
#define CTARGET_PLUGIN_LOCAL_H

#include <ctarget/plugin.h>

#include <stddef.h>
#include <sys/types.h>

#define LOCAL_HIDDEN __attribute__((visibility("hidden")))

LOCAL_HIDDEN void local_machine_facts(const ctarget_host *h, ctarget_obj *facts);

/* ---- fsutil.c: small libc helpers (the plugin never links libctarget) ------------------ */

/* Allocation failures abort, as in the core: a monitor out of memory cannot do better. */
LOCAL_HIDDEN char *lp_strdup(const char *s);
LOCAL_HIDDEN char *lp_asprintf(const char *fmt, ...) CTARGET_PRINTF(1, 2);
LOCAL_HIDDEN void *lp_xrealloc(void *p, size_t n);
LOCAL_HIDDEN int lp_mkdir_p(const char *path, mode_t mode);
LOCAL_HIDDEN int lp_rm_rf(const char *path);
LOCAL_HIDDEN int lp_exists(const char *path);
/* Whole file, NUL-terminated (len excludes the NUL); NULL with errno on failure. */
LOCAL_HIDDEN char *lp_read_file(const char *path, size_t *len);
/* Temp file beside path, then rename: readers never see half a file. */
LOCAL_HIDDEN int lp_write_file_atomic(const char *path, const void *data, size_t len);
/* Mirror src into dst: directories created, files hardlinked (copied across devices),
 * existing files replaced, symlinks recreated.  A missing src is an empty tree. */
LOCAL_HIDDEN int lp_copy_tree(const char *src, const char *dst);
/* Absolute path of an executable: `name` itself when it contains '/', else found on PATH. */
LOCAL_HIDDEN char *lp_which(const char *name);
/* FNV-1a 64: names cache directories; not a security boundary. */
LOCAL_HIDDEN unsigned long long lp_fnv1a(const void *data, size_t len, unsigned long long h);

/* /proc/<pid>/stat: start time in clock ticks since boot and the state letter.  Returns 0,
 * or -1 when the process does not exist.  Async-signal-safe (used after fork). */
LOCAL_HIDDEN int lp_proc_stat(pid_t pid, unsigned long long *start, char *state);
/* 1 when pid is a live (not zombie) process that started at `start` (0: any start time). */
LOCAL_HIDDEN int lp_pid_alive(pid_t pid, unsigned long long start);
/* Every process of a process group gone (zombies of our own reaping aside)? */
LOCAL_HIDDEN int lp_pgrp_empty(pid_t pgid);

/* Run argv (own process group, stdin /dev/null, stdout+stderr to out_fd or captured).
 * Stops early when the call is cancelled or timeout_ms passes (0: none).  Returns
 * CTARGET_OK and the wait status in *wstatus, or CANCELED/TIMEOUT/FAILED with err set. */
LOCAL_HIDDEN ctarget_status lp_run_cmd(const ctarget_host *h, ctarget_call *call,
                                       char *const argv[], int out_fd, char **captured,
                                       long timeout_ms, int *wstatus, ctarget_error *err);
/* "exit code 3", "killed by signal 9 (SIGKILL)" */
LOCAL_HIDDEN void lp_describe_status(int wstatus, char *buf, size_t size);

/* ---- paths of one run's work directory ------------------------------------------------- */

typedef struct lrun_paths {
    char *work;      /* run->work_dir */
    char *src;       /* materialized snapshot: the script's cwd */
    char *marker;    /* snapshot id that src holds (written after materialize succeeds) */
    char *outputs;   /* src/outputs */
    char *log;       /* stdout+stderr of the script and environment builds */
    char *metrics;   /* CTARGET_METRICS_FILE */
    char *spec;      /* launch spec: argv, env, cwd (lets any monitor start a queued run) */
    char *pidf;      /* written by the wrapper: pids and start times */
    char *status;    /* written by the wrapper: how the script ended */
    char *cancel;    /* written by cancel(): when cancellation was asked for */
    char *launch_err;/* why the wrapper could not be started */
} lrun_paths;

LOCAL_HIDDEN void lrun_paths_init(lrun_paths *p, const char *work_dir);
LOCAL_HIDDEN void lrun_paths_free(lrun_paths *p);

/* ---- spawn.c: the wrapper -------------------------------------------------------------- */

typedef struct lrun_pids {
    long wrapper_pid;
    unsigned long long wrapper_start;
    long pid;                      /* the script; also its process group id */
    unsigned long long pid_start;
    long long started_ms;          /* wall clock when the script was started */
} lrun_pids;

typedef struct lrun_status {
    int exited;                    /* 1: exit code; 0: signal */
    int code;                      /* exit code or signal number */
    long long end_ms;
} lrun_status;

/* Write the launch spec (argv, envp NULL-terminated; cwd). */
LOCAL_HIDDEN int lspawn_write_spec(const char *path, char *const argv[], char *const envp[],
                                   const char *cwd);
/* Start the wrapper described by the spec in p->spec; returns once the script's process
 * exists and p->pidf is written.  0 on success, -1 with errno. */
LOCAL_HIDDEN int lspawn_launch(const lrun_paths *p, lrun_pids *out);
LOCAL_HIDDEN int lspawn_read_pids(const lrun_paths *p, lrun_pids *out);
LOCAL_HIDDEN int lspawn_read_status(const lrun_paths *p, lrun_status *out);

/* ---- queue.c: max_concurrent_runs across independent monitor processes ------------------ */

/* Queue the run and start as many queued runs as there are free slots. */
LOCAL_HIDDEN ctarget_status lqueue_submit(const ctarget_host *h, ctarget_call *call,
                                          ctarget_target *t, const char *run_id,
                                          const char *work_dir, ctarget_error *err);
/* Start queued runs while slots are free. */
LOCAL_HIDDEN ctarget_status lqueue_admit(const ctarget_host *h, ctarget_call *call,
                                         ctarget_target *t, ctarget_error *err);
/* Is the run still waiting?  Returns 1/0, or -1 when the queue is unusable. */
LOCAL_HIDDEN int lqueue_waiting(const ctarget_host *h, ctarget_target *t, const char *run_id);
/* Does the run hold a slot (started, or being started right now)? */
LOCAL_HIDDEN int lqueue_slot_held(const ctarget_host *h, ctarget_target *t, const char *run_id);
/* Remove the run from the queue (cancel of a queued run).  1 when it was waiting. */
LOCAL_HIDDEN int lqueue_withdraw(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                                 const char *run_id, ctarget_error *err);
/* Forget the run's queue and slot entries (cleanup). */
LOCAL_HIDDEN void lqueue_forget(const ctarget_host *h, ctarget_target *t, const char *run_id);

/* ---- run.c: the run operations ---------------------------------------------------------- */

typedef struct local_ctx {
    const ctarget_host *h;
} local_ctx;

LOCAL_HIDDEN extern const ctarget_run_ops local_run_ops;

LOCAL_HIDDEN const char *lrun_work_dir(const ctarget_host *h, const ctarget_run_info *run);
LOCAL_HIDDEN ctarget_status lrun_paths_for(const ctarget_host *h, const ctarget_run_info *run,
                                           lrun_paths *p, ctarget_error *err);
/* Copy the wrapper's record into run->handle. */
LOCAL_HIDDEN void lrun_handle_pids(const ctarget_host *h, const ctarget_run_info *run,
                                   const lrun_pids *pd);

/* poll.c */
LOCAL_HIDDEN ctarget_status local_poll(void *ctx, ctarget_call *c, ctarget_target *t,
                                       const ctarget_run_info *run, long wait_ms,
                                       ctarget_run_poll *out, ctarget_error *err);
LOCAL_HIDDEN ctarget_status local_cancel(void *ctx, ctarget_call *c, ctarget_target *t,
                                         const ctarget_run_info *run, ctarget_error *err);

/* ---- env.c: environments ----------------------------------------------------------------- */

typedef struct lenv {
    char *python;      /* absolute interpreter path, or the name to run inside a container */
    char *env_dir;     /* venv/conda prefix, or NULL */
    char *engine;      /* docker/podman path when the run uses a container, else NULL */
} lenv;

LOCAL_HIDDEN ctarget_status lenv_prepare(const ctarget_host *h, ctarget_call *call,
                                         ctarget_target *t, const ctarget_run_info *run,
                                         const lrun_paths *p, lenv *out, ctarget_error *err);
LOCAL_HIDDEN void lenv_free(lenv *e);

/* ---- docker.c: the container command line (no shell involved) --------------------------- */

typedef struct ldocker_spec {
    const char *engine;          /* path or name of docker/podman */
    const char *image;
    const char *name;            /* container name */
    const char *work_dir;        /* mounted at the same path inside */
    const char *cwd;             /* the script's working directory */
    const char *python;          /* interpreter inside the image ("python") */
    const char *script;
    const char *const *args;
    size_t n_args;
    const char *const *env;      /* "NAME=value", each passed with -e */
    size_t n_env;
    int gpu;                     /* --gpus all */
    long uid, gid;               /* --user uid:gid when >= 0 (docker: files stay the user's) */
} ldocker_spec;

/* NULL-terminated argv; free with ldocker_argv_free.  NULL if an env entry lacks '='. */
LOCAL_HIDDEN char **ldocker_argv(const ldocker_spec *s);
LOCAL_HIDDEN void ldocker_argv_free(char **argv);
/* "ctarget-<id>" with characters docker refuses replaced. */
LOCAL_HIDDEN char *ldocker_container_name(const char *run_id);

#endif
