/* The remotevm target: a Linux VM or on-prem server reached over SSH (libssh2).
 *
 * ssh.c     connections: TCP connect with a timeout, host-key check against ~/.ssh/known_hosts
 *           and the workspace's known_hosts, authentication (key, passphrase, agent,
 *           password), and exec channels pumped in non-blocking mode.
 * agent.c   the remote agent (agent.py, compiled in): installing it and calling its verbs.
 * remotevm.c  descriptor, settings, compute operations (attach, status, update, detach).
 * run.c     run operations: ship the snapshot incrementally, environments, start, poll, logs,
 *           cancel, outputs, cleanup.
 * ship.c    the upload stream: the core's transport tar with its full manifest replaced by a
 *           delta against a snapshot the VM already has.
 * proto.c   the agent's wire formats as read here (answers, poll, outputs stream): bytes the
 *           machine controls, fuzzed by fuzz/fuzz_remotevm.c. */
#ifndef CTARGET_REMOTEVM_H
#define CTARGET_REMOTEVM_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <ctarget/plugin.h>

typedef struct rv_conn rv_conn;

typedef struct rv_ctx {
    const ctarget_host *h;
} rv_ctx;

/* A byte buffer. */
typedef struct rv_buf {
    char *data;
    size_t len, cap;
} rv_buf;
int rv_buf_add(rv_buf *b, const void *data, size_t len);
int rv_buf_adds(rv_buf *b, const char *s);
void rv_buf_free(rv_buf *b);
int rv_buf_write(void *arg, const void *data, size_t len); /* ctarget_write_fn into rv_buf */

/* ---- ssh.c ---------------------------------------------------------------------------------- */

/* The connection cached on the target for this process (connects on first use, reconnects
 * with backoff when the previous one dropped).  `verb_attach`: accept a new host key if the
 * user said so, and say how when not. */
ctarget_status rv_conn_get(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                           rv_conn **out, ctarget_error *err);
/* Drop the cached connection (after a broken channel). */
void rv_conn_drop(const ctarget_host *h, ctarget_target *t);
const char *rv_conn_where(const rv_conn *cn); /* "user@host:port" */

typedef struct rv_exec rv_exec;
/* Open a channel and exec `cmd` (a shell command line for the remote login shell).
 * Standard output goes to out (may be NULL: discarded); standard error is kept (its tail)
 * for the error message. */
ctarget_status rv_exec_open(rv_conn *cn, ctarget_call *c, const char *cmd, ctarget_write_fn out,
                            void *out_arg, rv_exec **ex, ctarget_error *err);
/* Write all of data to the command's standard input. */
ctarget_status rv_exec_write(rv_exec *ex, const void *data, size_t len, ctarget_error *err);
/* Close standard input, read everything to the end, and free ex.  exit_status: the
 * command's exit status (-1 if killed by a signal); stderr_tail: its last line(s). */
ctarget_status rv_exec_finish(rv_exec *ex, int *exit_status, char *stderr_tail,
                              size_t tail_len, ctarget_error *err);
void rv_exec_abort(rv_exec *ex);
/* Read what arrives (waiting for it); *eof once the command's output ended. */
ctarget_status rv_exec_pump(rv_exec *ex, int *eof, ctarget_error *err);
void rv_exec_set_call(rv_exec *ex, ctarget_call *c);
/* Frame every write as "<hex length>\n<bytes>" (a streamed input over the serve channel). */
void rv_exec_set_framed(rv_exec *ex, int on);
/* The connection's long-lived agent channel (`serve`) and its unread output. */
rv_exec **rv_conn_serve(rv_conn *cn);
rv_buf *rv_conn_serve_buf(rv_conn *cn);
/* Bytes written to standard input over the connection's life (for "shipped N bytes"). */
uint64_t rv_conn_bytes_out(const rv_conn *cn);

/* Shell quoting for the remote command line: 'it'\''s'.  A leading "~/" is kept outside
 * the quotes as "$HOME"/ so the remote shell expands it. */
char *rv_shell_quote(const char *s);

/* ---- agent.c -------------------------------------------------------------------------------- */

/* Run an agent verb: `python3 -c BOOT ROOT HASH VERB ARGS...`; installs the agent first if
 * the VM does not have this version.  stdin_data may be NULL.  On a nonzero exit the error
 * carries the agent's message; *exit_status (may be NULL) gets the code. */
ctarget_status rv_agent(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                        const char *verb, const char *const *args, const void *stdin_data,
                        size_t stdin_len, rv_buf *out, int *exit_status, ctarget_error *err);
/* The same with a streamed standard input: produce() is called once with a writer. */
typedef ctarget_status (*rv_producer)(void *arg, rv_exec *ex, ctarget_error *err);
ctarget_status rv_agent_stream(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                               const char *verb, const char *const *args, rv_producer produce,
                               void *produce_arg, rv_buf *out, int *exit_status,
                               ctarget_error *err);

/* The agent's source text and the hash that names its version (the slurm plugin, which
 * compiles these sources in, runs the agent as a local process in its local mode). */
const char *rv_agent_source(void);
const char *rv_agent_version(void);

/* Remember the machine's python3 (an absolute path from `facts`) for this target. */
void rv_remember_python(const ctarget_host *h, const ctarget_target *t, const char *path);

/* The general form: standard output to sink (called with data NULL before each attempt, to
 * start over), standard input from produce or in/in_len. */
ctarget_status rv_agent_call(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                             const char *verb, const char *const *args, rv_producer produce,
                             void *parg, const void *in, size_t in_len, ctarget_write_fn sink,
                             void *sink_arg, int *exit_status, ctarget_error *err);

/* ---- ship.c --------------------------------------------------------------------------------- */

typedef struct rv_ship_stats {
    uint64_t blobs, blob_bytes, stream_bytes, manifest_bytes;
    int delta; /* the manifest went as a delta against a snapshot the VM had */
} rv_ship_stats;
/* Make snapshot_id present on the VM, shipping only what is missing.  With run_id, what is
 * shipped goes straight into that run's tree (the agent adopts it into its cache when the
 * run is cleaned up); otherwise into the cache. */
ctarget_status rv_ship_snapshot(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                                const char *snapshot_id, const char *run_id,
                                rv_ship_stats *st, ctarget_error *err);

/* ---- run.c ---------------------------------------------------------------------------------- */
extern const ctarget_run_ops rv_run_ops;

/* hex encoding of bytes (for the agent's JSON) */
char *rv_hex(const void *data, size_t len);
/* JSON string literal of s (bytes >= 0x80 copied as they are) */
int rv_json_str(rv_buf *b, const char *s);

/* ---- proto.c -------------------------------------------------------------------------------- */

/* One answer on the serve channel, "<JSON header>\n<len bytes>", taken from the front of sb:
 * 1 when complete (the body appended to out when out is not NULL, *status and tail from the
 * header's "exit" and "err", the answer removed from sb), 0 when more bytes are needed, -1 when
 * the header is damaged. */
int rv_answer_take(rv_buf *sb, rv_buf *out, int *status, char *tail, size_t tail_len);

/* The poll answer, a JSON header line then log_len + metrics_len bytes: the header (the
 * caller decrefs it) and where the bytes are, or NULL when the answer does not add up. */
json_t *rv_poll_split(const char *data, size_t len, const char **body, size_t *log_len,
                      size_t *met_len);

/* The outputs stream of `pack`, written under dfd: "D mode len\npath", "F mode size
 * len\npath<bytes>", "E\n".  Every path is checked (relative, no "." or ".." component, under
 * outputs/ or logs/) and written with O_NOFOLLOW; nothing is ever created outside dfd. */
typedef struct rv_unpack {
    const ctarget_host *h;
    int dfd;
    char line[256];
    size_t llen;
    int state;          /* 0 header line, 1 path, 2 file data, 3 ended */
    char type;
    unsigned mode;
    uint64_t size, left;
    size_t plen;
    rv_buf path;
    int fd;
    ctarget_error *err;
    ctarget_status rc;
    uint64_t files, bytes;
} rv_unpack;
void rv_unpack_init(rv_unpack *u, const ctarget_host *h, int dfd, ctarget_error *err);
/* a ctarget_write_fn; data NULL restarts (a new attempt) */
int rv_unpack_write(void *arg, const void *data, size_t len);
/* closes a file left open; dfd stays the caller's */
void rv_unpack_done(rv_unpack *u);

#endif
