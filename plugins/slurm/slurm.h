/* The slurm target: a Slurm cluster, driven with its own commands (sbatch, squeue, scontrol,
 * sacct, scancel, sinfo) either on this machine or on a login node over SSH.
 *
 * slurm.c   descriptor, settings, compute operations (attach checks the cluster and the
 *           partition; status reports the partitions and nodes).
 * cmd.c     running a Slurm command: locally (fork/exec, no shell) or over the remotevm
 *           plugin's SSH transport (every word quoted), the same way for both.
 * script.c  the sbatch options from the settings (an allow-list) and the generated batch
 *           script (every argument and value quoted byte for byte).
 * job.c     run operations: the run directory, sbatch, states from scontrol/sacct, logs,
 *           scancel, outputs, reattach.
 * files.c   local mode's side of a run directory: materialize, read logs, copy outputs.
 *
 * Login-node mode reuses the remotevm plugin's sources (compiled into slurm.so, see
 * mk/slurm.am): its SSH connections (host keys, keys, agent, password), and its agent, which
 * ships snapshots incrementally into a content-addressed cache and lays out the run
 * directory <remote_root>/runs/<id>/ {src/, std_log.txt, metrics.jsonl}.  Local mode lays
 * out the same directory itself.  Either way the directory must be on a file system the
 * compute nodes see (the home directory, usually). */
#ifndef CTARGET_SLURM_H
#define CTARGET_SLURM_H

#include <stddef.h>
#include <stdint.h>

#include <ctarget/plugin.h>

#include "remotevm.h"

/* The plugin context is remotevm's rv_ctx: its run operations are called with it. */
extern const ctarget_host *SL_H;

/* login-node mode: the target has an address */
int sl_remote(const ctarget_target *t);

/* ---- cmd.c ---------------------------------------------------------------------------------- */

typedef struct sl_out {
    int status;        /* exit status (128+signal when killed) */
    rv_buf out;        /* standard output */
    char err[1024];    /* standard error (its first kilobyte, NUL-terminated) */
} sl_out;
void sl_out_free(sl_out *o);

/* Run argv[0] (a Slurm command, found in slurm_bin_dir or on PATH) with argv, in directory
 * cwd (may be NULL; "~/..." is the user's home), standard input from in/in_len.  A nonzero
 * exit is not an error here: the caller reads o->status and o->err.  Errors: the command
 * could not be started (CTARGET_E_NOT_FOUND when it does not exist), or the connection. */
ctarget_status sl_cmd(ctarget_call *c, ctarget_target *t, const char *const *argv,
                      const char *cwd, const void *in, size_t in_len, sl_out *o,
                      ctarget_error *err);
/* 'single-quoted' for sh, byte for byte (no ~ expansion) */
int sl_quote(rv_buf *b, const char *s);
/* where the commands run, for messages: "this machine" or "user@host:port" */
const char *sl_where(ctarget_target *t, char *buf, size_t len);
/* the first line of text (no trailing newline), for one-line messages */
void sl_first_line(const char *s, char *dst, size_t len);

/* ---- script.c ------------------------------------------------------------------------------- */

/* sbatch's options from the settings and the run: appended to argv (strings owned by *own,
 * released with sl_strv_free).  Bad values fail with CTARGET_E_CONFIG naming the setting. */
typedef struct sl_strv {
    char **v;
    size_t n, cap;
} sl_strv;
int sl_strv_add(sl_strv *s, const char *str);
void sl_strv_free(sl_strv *s);
ctarget_status sl_sbatch_options(ctarget_target *t, const ctarget_run_info *run, sl_strv *argv,
                                 ctarget_error *err);
/* The batch script for the run (owned). */
char *sl_script(ctarget_target *t, const ctarget_run_info *run, const char *python,
                ctarget_error *err);
/* Check every setting that turns into an sbatch option (validate()). */
ctarget_status sl_check_options(ctarget_target *t, ctarget_error *err);

/* ---- files.c -------------------------------------------------------------------------------- */

/* <remote_root>/runs/<id> on this machine, "~/" expanded (owned) */
char *sl_local_run_dir(ctarget_target *t, const char *run_id);
ctarget_status sl_local_prepare(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                                ctarget_error *err);
ctarget_status sl_local_read(ctarget_target *t, const ctarget_run_info *run,
                             ctarget_stream stream, uint64_t offset, ctarget_write_fn out,
                             void *out_arg, ctarget_error *err);
ctarget_status sl_local_outputs(ctarget_target *t, const ctarget_run_info *run,
                                const char *dest_dir, ctarget_error *err);
ctarget_status sl_local_cleanup(ctarget_target *t, const ctarget_run_info *run,
                                ctarget_error *err);
/* a pip or conda environment built by remotevm's agent run as a local process (cached in
 * <remote_root>/envs/<hash>); its interpreter goes into the handle as "python" */
ctarget_status sl_local_env(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                            const char *python, ctarget_error *err);
/* the exit status the batch script recorded ("JOBID RESTARTS CODE"); 0 when found */
int sl_local_exit_file(ctarget_target *t, const char *run_id, char *buf, size_t len);

/* ---- job.c ---------------------------------------------------------------------------------- */
extern const ctarget_run_ops sl_run_ops;

#endif
