/* ctarget plugin ABI, version 1.
 *
 * This header is the whole contract between the ctarget core and a compute-target plugin.  It
 * is header-only: a plugin includes it, never links libctarget, and receives every service it
 * needs through the host table handed to its init function (the OpenSSL-provider pattern).
 * ctarget-plugin(7) is the guide; this header is the reference.
 *
 * COMPATIBILITY RULES
 *  - The only exported symbol is CTARGET_PLUGIN_ENTRY (ctarget_plugin_entry_v1).  A future,
 *    incompatible ABI gets a new symbol name and a new major number.
 *  - Every table starts with `struct_size`.  The writer sets it to sizeof() of the struct it was
 *    compiled with; the reader never touches a field at or past struct_size.  Tables only grow
 *    by appending fields, so an old plugin works with a new core (the new slots read as NULL)
 *    and a new plugin works with an old core (the extra slots are never read).
 *  - Enum values and bits are never renumbered.  Unknown capability bits are ignored.
 *  - A NULL optional slot means "not supported"; the core says so to the user.
 *  - A plugin states the ABI minor it was built against and the oldest core minor it accepts
 *    (min_core_minor); the core refuses a plugin whose min_core_minor is newer than its own minor.
 *
 * OWNERSHIP
 *  - Arguments are borrowed for the duration of the call.  Strings returned by host functions
 *    named `get0` are borrowed (valid until the call returns); `get1`/`new` results are owned by
 *    the caller and released with the named partner function.  Whoever allocates frees.
 *  - Descriptor, key tables and ops tables are static const data owned by the plugin; the core
 *    reads them for as long as the plugin is loaded.  Plugins are never unloaded while the
 *    process runs (unloading is not thread-safe, see libvirt).
 *
 * ERRORS
 *  - Every fallible call returns a ctarget_status and, on failure, fills the caller-owned
 *    ctarget_error through host->error_set().  There is no thread-local "last error".  The core
 *    logs an error once, where it is finally handled; plugins should not also log it.
 *  - Messages name the object and the cause ("host 10.0.0.4:22 refused the connection") and
 *    never contain secrets.  The core additionally redacts every secret value it has handed
 *    out from all messages and logs, as a second line of defence.
 *
 * THREADING
 *  - The host table and its functions are thread-safe.
 *  - Without CTARGET_CAP_THREAD_SAFE the core never calls into the plugin from two threads at
 *    once.  With it, calls on different targets may run concurrently; calls on the same target
 *    handle are still serialised.
 *  - A ctarget_call belongs to one operation on one thread.
 *
 * PROCESSES
 *  - Compute operations run in the command the user typed.  Run operations run in the run
 *    monitor, a detached ctarget process per run; it may be killed at any moment and replaced by
 *    a new monitor, which calls reattach() with the handle persisted by submit().  Anything a
 *    plugin needs to find a run again must therefore be written to run->handle.
 */
#ifndef CTARGET_PLUGIN_H
#define CTARGET_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CTARGET_ABI_MAJOR 1
#define CTARGET_ABI_MINOR 0

#define CTARGET_PLUGIN_ENTRY ctarget_plugin_entry_v1
#define CTARGET_PLUGIN_ENTRY_NAME "ctarget_plugin_entry_v1"

#if defined(__GNUC__) || defined(__clang__)
#define CTARGET_PLUGIN_EXPORT __attribute__((visibility("default")))
#define CTARGET_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CTARGET_PLUGIN_EXPORT
#define CTARGET_PRINTF(f, a)
#endif

/* ---------------------------------------------------------------------------------------- */
/* Status codes.  Append only.  The ctarget command uses them as its exit codes.             */

typedef enum ctarget_status {
    CTARGET_OK = 0,
    CTARGET_E_FAILED = 1,         /* the operation failed; the message says why */
    CTARGET_E_USAGE = 2,          /* wrong use of a command or API */
    CTARGET_E_CONFIG = 3,         /* invalid configuration: unknown key, wrong type, missing */
    CTARGET_E_NOT_FOUND = 4,      /* no such target, run, snapshot, file, plugin */
    CTARGET_E_EXISTS = 5,         /* name taken, resource already attached */
    CTARGET_E_UNSUPPORTED = 6,    /* the target type cannot do this (capability or slot) */
    CTARGET_E_AUTH = 7,           /* credentials rejected, expired or unreadable */
    CTARGET_E_UNREACHABLE = 8,    /* host unreachable, connection refused, name not resolved */
    CTARGET_E_HOSTKEY = 9,        /* SSH host key unknown/changed, TLS peer not verified */
    CTARGET_E_TIMEOUT = 10,
    CTARGET_E_CANCELED = 11,
    CTARGET_E_IO = 12,            /* local file system error */
    CTARGET_E_NOMEM = 13,
    CTARGET_E_REMOTE = 14,        /* the remote side reported an error */
    CTARGET_E_STATE = 15,         /* not possible in the current state */
    CTARGET_E_PLUGIN = 16,        /* plugin refused to load or broke its contract */
    CTARGET_E_LIMIT = 17,         /* a size, count or quota limit was exceeded */
    CTARGET_E_INTERNAL = 18
} ctarget_status;

#define CTARGET_ERROR_MSG_MAX 1024

/* Caller-owned error record.  Plugins fill it only through host->error_set(). */
typedef struct ctarget_error {
    size_t struct_size;
    ctarget_status code;
    int transient;      /* nonzero: trying again later may succeed (network drop, 429, 503) */
    int sys_errno;      /* errno behind the failure, or 0 */
    char message[CTARGET_ERROR_MSG_MAX];
} ctarget_error;

/* ---------------------------------------------------------------------------------------- */
/* Capabilities (TARGETS.md's matrix).  Bits are never renumbered; unknown bits are ignored.  */

#define CTARGET_CAP_GPU                   (UINT64_C(1) << 0)  /* can run on GPUs */
#define CTARGET_CAP_HYPERPARAMETER_TUNING (UINT64_C(1) << 1)  /* sweeps; needs run ops */
#define CTARGET_CAP_MODEL_SELECTION       (UINT64_C(1) << 2)  /* automated ML; needs run ops */
#define CTARGET_CAP_PIPELINE_STEP         (UINT64_C(1) << 3)  /* can run pipeline steps */
#define CTARGET_CAP_PIPELINE_ONLY         (UINT64_C(1) << 4)  /* refuses plain script runs */
#define CTARGET_CAP_CREATE                (UINT64_C(1) << 5)  /* `compute create`; needs create+delete */
#define CTARGET_CAP_ATTACH                (UINT64_C(1) << 6)  /* `compute attach`; needs attach */
#define CTARGET_CAP_INFERENCE             (UINT64_C(1) << 7)  /* deployment target (later minor) */
#define CTARGET_CAP_CANCEL                (UINT64_C(1) << 8)  /* runs can be canceled; needs cancel */
#define CTARGET_CAP_THREAD_SAFE           (UINT64_C(1) << 9)  /* see THREADING */
#define CTARGET_CAP_SCRIPT_RUN            (UINT64_C(1) << 10) /* runs scripts; needs run ops */
#define CTARGET_CAP_START_STOP            (UINT64_C(1) << 11) /* needs start, stop, restart */
#define CTARGET_CAP_IMPLICIT              (UINT64_C(1) << 12) /* a target named like the plugin
                                                                 exists in every workspace */
#define CTARGET_CAP_MULTI_NODE            (UINT64_C(1) << 13) /* node_count > 1 (MPI) */
#define CTARGET_CAP_UPDATE                (UINT64_C(1) << 14) /* `compute update`; needs update */
#define CTARGET_CAP_LIST_NODES            (UINT64_C(1) << 15) /* needs list_nodes */

/* ---------------------------------------------------------------------------------------- */
/* Declared configuration keys.  The core validates every setting against these before any   */
/* plugin operation runs, stores them, and prints them in `ctarget compute help TYPE`.        */

typedef enum ctarget_key_type {
    CTARGET_KEY_STRING = 0,
    CTARGET_KEY_INT = 1,       /* decimal integer; range [min, max] when min < max */
    CTARGET_KEY_BOOL = 2,      /* true/false, yes/no, 1/0, on/off */
    CTARGET_KEY_NUMBER = 3,    /* decimal floating point; range as INT */
    CTARGET_KEY_ENUM = 4,      /* one of `choices` ("a|b|c"), case-insensitive */
    CTARGET_KEY_PATH = 5,      /* local file; must exist and be readable when given */
    CTARGET_KEY_LIST = 6       /* comma-separated strings */
} ctarget_key_type;

#define CTARGET_KEY_REQUIRED        (1u << 0)  /* required by create and attach */
#define CTARGET_KEY_REQUIRED_CREATE (1u << 1)
#define CTARGET_KEY_REQUIRED_ATTACH (1u << 2)
#define CTARGET_KEY_SECRET          (1u << 3)  /* stored in the secret store, masked, redacted */
#define CTARGET_KEY_CREATE_ONLY     (1u << 4)  /* refused by attach */
#define CTARGET_KEY_ATTACH_ONLY     (1u << 5)  /* refused by create */
#define CTARGET_KEY_IMMUTABLE       (1u << 6)  /* refused by update */
#define CTARGET_KEY_EXCLUSIVE       (1u << 7)  /* at most one key of its group may be set */

/* Groups: keys that share a nonzero `group` are alternatives.  If any of them carries a
 * REQUIRED flag for the verb, at least one key of the group must be given (for example
 * address|resource_id, or password|private_key_file).  With EXCLUSIVE, at most one may be.
 *
 * Identity: keys that share a nonzero `identity` together identify the underlying resource
 * (resource_id alone; or address + ssh_port).  Whenever every key of a tuple has a value
 * (defaults count), the core refuses a second target with the same tuple, whatever its name:
 * the same machine must not be attached twice.  Values compare case-insensitively. */
typedef struct ctarget_config_key {
    size_t struct_size;
    const char *name;          /* [a-z0-9_]+ */
    ctarget_key_type type;
    unsigned flags;            /* CTARGET_KEY_* */
    const char *default_value; /* text form, or NULL */
    const char *help;          /* one line */
    const char *choices;       /* ENUM: "dedicated|lowpriority" */
    long long min, max;        /* INT/NUMBER range when min < max */
    unsigned group;
    unsigned identity;
} ctarget_config_key;

/* Target name rule.  The core enforces it on create and attach.  All rules allow only ASCII
 * letters, digits and '-'.  A zero max_len selects the default rule: 3-24 characters, starts
 * with a letter, a '-' must be followed later by a letter (Azure ML compute names). */
#define CTARGET_NAME_START_LETTER      (1u << 0)
#define CTARGET_NAME_DASH_THEN_LETTER  (1u << 1)  /* every '-' is followed later by a letter */

/* ---------------------------------------------------------------------------------------- */
/* Opaque handles.  Only host functions look inside them.                                     */

typedef struct ctarget_call ctarget_call;     /* one operation: progress, cancel, logging */
typedef struct ctarget_target ctarget_target; /* a compute target: name, type, config */
typedef struct ctarget_obj ctarget_obj;       /* a JSON-like object the core stores/prints */

/* Receives a chunk of bytes; returns 0 to continue, nonzero to stop (the caller then fails
 * with CTARGET_E_CANCELED or the status the writer recorded). */
typedef int (*ctarget_write_fn)(void *arg, const void *data, size_t len);

typedef enum ctarget_verb {
    CTARGET_VERB_CREATE = 0,
    CTARGET_VERB_ATTACH = 1,
    CTARGET_VERB_UPDATE = 2
} ctarget_verb;

/* Provisioning states: Azure ML's names. */
typedef enum ctarget_prov_state {
    CTARGET_PROV_UNKNOWN = 0,
    CTARGET_PROV_CREATING = 1,
    CTARGET_PROV_SUCCEEDED = 2,
    CTARGET_PROV_FAILED = 3,
    CTARGET_PROV_UPDATING = 4,
    CTARGET_PROV_DELETING = 5,
    CTARGET_PROV_CANCELED = 6
} ctarget_prov_state;

typedef struct ctarget_compute_state {
    size_t struct_size;
    ctarget_prov_state provisioning_state;
    char state[64];      /* runtime state in the backend's words: Running, Stopped, Resizing */
    char errors[1024];   /* provisioning errors when FAILED, one per line */
} ctarget_compute_state;

/* Run states: Azure ML's names; never renumbered.  TARGETS.md describes the machine. */
typedef enum ctarget_run_state {
    CTARGET_RUN_NOT_STARTED = 0,
    CTARGET_RUN_STARTING = 1,
    CTARGET_RUN_PROVISIONING = 2,
    CTARGET_RUN_PREPARING = 3,
    CTARGET_RUN_QUEUED = 4,
    CTARGET_RUN_RUNNING = 5,
    CTARGET_RUN_FINALIZING = 6,
    CTARGET_RUN_COMPLETED = 7,
    CTARGET_RUN_FAILED = 8,
    CTARGET_RUN_CANCEL_REQUESTED = 9,
    CTARGET_RUN_CANCELED = 10,
    CTARGET_RUN_NOT_RESPONDING = 11,
    CTARGET_RUN_FINISHED = 12          /* pipelines' word for Completed */
} ctarget_run_state;

typedef enum ctarget_stream {
    CTARGET_STREAM_LOG = 0,      /* the script's stdout and stderr, interleaved */
    CTARGET_STREAM_METRICS = 1   /* JSON lines written to $CTARGET_METRICS_FILE */
} ctarget_stream;

typedef enum ctarget_env_kind {
    CTARGET_ENV_USER = 0,        /* use `python` (or python3 on PATH) as is */
    CTARGET_ENV_PIP = 1,         /* venv from the requirements file */
    CTARGET_ENV_CONDA = 2        /* conda environment from the conda file */
} ctarget_env_kind;

/* Everything a plugin needs to know about a run.  Filled by the core; borrowed. */
typedef struct ctarget_run_info {
    size_t struct_size;
    const char *id;               /* unique, sorts by submission time */
    const char *experiment;
    const char *snapshot_id;      /* source snapshot; see host->snapshot_* */
    const char *script;           /* path relative to the snapshot root */
    const char *const *args;      /* script arguments, byte for byte */
    size_t n_args;
    const char *const *env;       /* "NAME=value" for the script, besides CTARGET_* */
    size_t n_env;
    const char *framework;        /* "python", "pyspark" */
    long long timeout_seconds;    /* max_run_duration_seconds; 0 = none */
    unsigned node_count;          /* >= 1 */
    int attempt;                  /* 1 for the first try; +1 per restart (preemption) */
    ctarget_env_kind env_kind;
    const char *python;           /* interpreter for USER envs (NULL: python3 on PATH) */
    const char *env_file;         /* local path of the requirements/conda file, or NULL */
    const char *env_hash;         /* content hash that names a cached environment */
    const char *docker_image;     /* non-NULL when the run is to use a container */
    int docker_gpu;               /* the image needs GPUs */
    const char *work_dir;         /* local directory private to this run and plugin */
    ctarget_obj *handle;          /* persisted native handle: written by submit, read by
                                     reattach/poll/cancel; survives monitor restarts */
    const ctarget_obj *options;   /* target-specific run settings (config's section) */
    long long cancel_grace_seconds; /* TERM -> KILL grace for cancel */
    /* appended after 1.0 (read them only when struct_size covers them): a pipeline step's
     * identity, all NULL for a plain run.  A step runs like a script run: its snapshot holds
     * the step's source directory plus its inputs under inputs/<name>/ (run->env has
     * CTARGET_INPUT_<NAME>=inputs/<name>), and the step writes each declared output under
     * ./outputs/<name>/ (CTARGET_OUTPUT_<NAME>=outputs/<name>), fetched as for any run.
     * step_json is the step's type-specific keys as a JSON object's text (a Databricks
     * step's cluster and task, a Batch step's pool and command line; ctarget-plugin(7)). */
    const char *pipeline_id;      /* the pipeline's (parent) run id */
    const char *step_name;
    const char *step_type;        /* "script", "databricks", "adla", "batch" */
    const char *step_json;
} ctarget_run_info;

typedef struct ctarget_run_poll {
    size_t struct_size;
    ctarget_run_state state;
    char native_state[64];   /* the backend's own word: PENDING, Running, Succeeded, ... */
    int has_exit_code;
    int exit_code;
    int term_signal;         /* nonzero when killed by a signal */
    char reason[512];        /* failure reason in words when FAILED */
    /* appended (ABI 1.0 grows by appending; the core zeroes the struct before each poll, so
     * a plugin built without this field reports 0): */
    int restartable;         /* with FAILED: the run was lost through no fault of the script
                                (a low-priority node preempted); the core's retry policy may
                                start it again as a new attempt: submit() once more with
                                run->attempt + 1, then polls as before */
    /* also appended after 1.0 (a plugin writes it only when struct_size covers it): the attempt
     * the backend is on, 1 for the first; a backend that restarts a run itself (a Slurm
     * requeue after preemption or a node failure) reports each restart as the next attempt.
     * 0: not reported (the core keeps its own count). */
    int attempt;
} ctarget_run_poll;

/* ---------------------------------------------------------------------------------------- */
/* HTTP service: libcurl, TLS always verified (CTARGET_CA_BUNDLE may name a CA file), proxy   */
/* from http_proxy/https_proxy/no_proxy, retry with exponential backoff and jitter on         */
/* connection errors, 408, 429, 500, 502, 503, 504, honouring Retry-After.                    */

#define CTARGET_HTTP_RETRY_UNSAFE (1u << 0)  /* also retry POST/PATCH (idempotent by design) */

typedef struct ctarget_http_request {
    size_t struct_size;
    const char *method;           /* "GET", "PUT", ... */
    const char *url;
    const char *const *headers;   /* "Name: value" strings, NULL-terminated, or NULL */
    const void *body;
    size_t body_len;
    long timeout_ms;              /* per attempt; 0 = 60 s */
    int max_attempts;             /* 0 = 5 */
    unsigned flags;
} ctarget_http_request;

typedef struct ctarget_http_response {
    size_t struct_size;
    long status;                  /* HTTP status of the last attempt */
    char *body;                   /* NUL-terminated for convenience; body_len excludes it */
    size_t body_len;
    int attempts;
} ctarget_http_response;

/* ---------------------------------------------------------------------------------------- */
/* Host services: given to init(), valid until fini() returns.                                */

typedef enum ctarget_log_level {
    CTARGET_LOG_ERROR = 0,
    CTARGET_LOG_WARN = 1,
    CTARGET_LOG_INFO = 2,
    CTARGET_LOG_DEBUG = 3
} ctarget_log_level;

typedef struct ctarget_host {
    size_t struct_size;
    unsigned abi_major, abi_minor;       /* what the core speaks */

    /* errors and logging */
    void (*error_set)(ctarget_error *err, ctarget_status code, int transient, int sys_errno,
                      const char *fmt, ...) CTARGET_PRINTF(5, 6);
    void (*log)(ctarget_call *call, ctarget_log_level level, const char *fmt, ...)
        CTARGET_PRINTF(3, 4);

    /* long work: progress (total 0 = unknown) and cooperative cancellation */
    void (*progress)(ctarget_call *call, const char *phase, uint64_t done, uint64_t total);
    int (*cancelled)(ctarget_call *call);

    /* time: wall clock in ms since the epoch, a monotonic clock in ns, and a sleep that
     * returns CTARGET_E_CANCELED early when the call is cancelled */
    int64_t (*now_ms)(void);
    int64_t (*monotonic_ns)(void);
    ctarget_status (*sleep_ms)(ctarget_call *call, long ms);

    /* target configuration: get0 returns the value or its declared default (NULL when unset);
     * secret_get1 resolves a secret (stored value, env:VAR or file:PATH reference) into a new
     * string the caller releases with secret_free, which wipes it. */
    const char *(*target_name)(const ctarget_target *t);
    const char *(*config_get0)(const ctarget_target *t, const char *key);
    ctarget_status (*secret_get1)(const ctarget_target *t, const char *key, char **value,
                                  ctarget_error *err);
    void (*secret_free)(char *value);
    /* per-process plugin data attached to a target (a cached connection, say); `release` is
     * called when the target handle is closed */
    void (*target_data_set)(ctarget_target *t, void *data, void (*release)(void *data));
    void *(*target_data_get0)(const ctarget_target *t);
    /* a directory private to this plugin and target in the workspace (created 0700) */
    const char *(*target_state_dir0)(const ctarget_target *t);

    /* objects: what a plugin reports (facts, status details, nodes, run handles) */
    void (*obj_set_str)(ctarget_obj *o, const char *key, const char *value);
    void (*obj_set_int)(ctarget_obj *o, const char *key, long long value);
    void (*obj_set_num)(ctarget_obj *o, const char *key, double value);
    void (*obj_set_bool)(ctarget_obj *o, const char *key, int value);
    ctarget_obj *(*obj_child0)(ctarget_obj *o, const char *key);    /* object member */
    ctarget_obj *(*obj_append0)(ctarget_obj *o, const char *key);   /* new object in array */
    const char *(*obj_get0_str)(const ctarget_obj *o, const char *key);
    int (*obj_get_int)(const ctarget_obj *o, const char *key, long long *value);

    /* HTTP; the response is released with http_response_free */
    ctarget_status (*http_request)(ctarget_call *call, const ctarget_http_request *req,
                                   ctarget_http_response **resp, ctarget_error *err);
    void (*http_response_free)(ctarget_http_response *resp);
    const char *(*http_header_get0)(const ctarget_http_response *resp, const char *name);

    /* snapshots (content-addressed source trees, see ctarget-plugin(7)):
     *  materialize: write the tree into dest (hardlinks or reflinks from the blob store where
     *               possible), created fresh; never follows links out of dest.
     *  blobs:       calls fn once per distinct content blob (hex sha256, size); fn returns
     *               nonzero to stop.
     *  write_tar:   streams a pax tar (zstd-compressed with CTARGET_TAR_ZSTD) laid out as
     *                 manifest.jsonl       first entry, always present
     *                 blobs/<sha256>       one regular file per blob for which want()
     *                                      returns nonzero (every blob when want is NULL)
     *               manifest.jsonl is UTF-8 JSON, one object per line.  Line 1:
     *                 {"ctarget_snapshot": "<id>", "format": 1, "entries": N}
     *               then N entries sorted by path (byte order):
     *                 {"path": "src/a.py", "type": "file", "mode": 420, "size": 12,
     *                  "sha256": "<hex>"}
     *                 {"path": "src", "type": "dir", "mode": 493}
     *                 {"path": "link", "type": "symlink", "target": "src/a.py"}
     *               Paths are relative, '/'-separated, never empty, absolute, "." or "..".
     *               mode holds the permission bits (0777).  A receiver rebuilds the tree
     *               from the manifest and its blob cache, applying the safe-extraction rules:
     *               nothing may be created or written outside the destination.            */
    ctarget_status (*snapshot_materialize)(ctarget_call *call, const char *snapshot_id,
                                           const char *dest, ctarget_error *err);
    ctarget_status (*snapshot_blobs)(ctarget_call *call, const char *snapshot_id,
                                     int (*fn)(void *arg, const char *sha256, uint64_t size),
                                     void *arg, ctarget_error *err);
    ctarget_status (*snapshot_write_tar)(ctarget_call *call, const char *snapshot_id,
                                         int (*want)(void *arg, const char *sha256),
                                         void *want_arg, unsigned flags,
                                         ctarget_write_fn out, void *out_arg,
                                         ctarget_error *err);
    /* the workspace's trust store for SSH host keys (OpenSSH known_hosts format) */
    const char *(*known_hosts_path0)(void);
    /* whether the user asked to trust a new host key for this operation */
    int (*accept_new_host_key)(ctarget_call *call);
} ctarget_host;

#define CTARGET_TAR_ZSTD (1u << 0)

/* ---------------------------------------------------------------------------------------- */
/* Operations.  `p` is the plugin context returned by init().                                */

typedef struct ctarget_compute_ops {
    size_t struct_size;
    /* mandatory: cross-key checks beyond the declared keys; no network */
    ctarget_status (*validate)(void *p, ctarget_call *c, ctarget_target *t, ctarget_verb verb,
                               ctarget_error *err);
    /* provision a new resource; may return while it is still CREATING (status() follows it);
     * facts worth keeping go into `facts` */
    ctarget_status (*create)(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                             ctarget_error *err);
    /* verify an existing resource (login, OS, versions) and record facts */
    ctarget_status (*attach)(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *facts,
                             ctarget_error *err);
    /* mandatory: live state; details (nodes busy, CPUs, GPUs, ...) go into `details` */
    ctarget_status (*status)(void *p, ctarget_call *c, ctarget_target *t,
                             ctarget_compute_state *st, ctarget_obj *details,
                             ctarget_error *err);
    ctarget_status (*start)(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err);
    ctarget_status (*stop)(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err);
    ctarget_status (*restart)(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err);
    /* apply the new configuration already visible through config_get0 */
    ctarget_status (*update)(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err);
    /* forget local state (cached connections, trust); never destroys the resource */
    ctarget_status (*detach)(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err);
    /* destroy the resource ctarget created */
    ctarget_status (*delete_)(void *p, ctarget_call *c, ctarget_target *t, ctarget_error *err);
    /* one object per node appended to `nodes` under key "nodes" */
    ctarget_status (*list_nodes)(void *p, ctarget_call *c, ctarget_target *t, ctarget_obj *nodes,
                                 ctarget_error *err);
} ctarget_compute_ops;

/* THE RUN CONTRACT (how the core's run monitor drives these operations)
 *
 * A run monitor is a detached ctarget process, one per run.  It calls, in order:
 *     prepare -> submit -> { poll, read_logs(LOG), read_logs(METRICS) }* until a terminal
 *     state -> fetch_outputs -> cleanup
 * and cancel() when the user asks (CancelRequested).  A monitor may be killed at any moment;
 * its replacement calls reattach() and carries on with the poll loop, so every operation must
 * be safe to repeat, and everything needed to find the run again goes into run->handle,
 * which the core persists after prepare, submit, each poll and cancel.
 *
 * Directories (all under the workspace, created by the core before prepare):
 *     run->work_dir = <ws>/runs/<id>/work   private to the run and the plugin; a local-like
 *                                           plugin materializes the snapshot under it and
 *                                           keeps pid/exit-status/log files there
 *     fetch_outputs(dest_dir = <ws>/runs/<id>)  the plugin fills dest_dir/outputs/ and
 *                                           dest_dir/logs/ with the script's ./outputs and
 *                                           ./logs (may be called again: overwrite)
 * The core keeps the captured stdout+stderr in <ws>/runs/<id>/std_log.txt, appending what
 * read_logs(LOG, offset = its current size) returns; metrics likewise by offset.
 *
 * The script's environment: the plugin sets CTARGET_RUN_ID, CTARGET_OUTPUTS_DIR (absolute
 * path of ./outputs in the script's working directory) and CTARGET_METRICS_FILE (JSON lines
 * {"name":..,"value":..,"step":..} that read_logs(METRICS) returns), plus run->env.
 *
 * States poll() reports: QUEUED (waiting for capacity), PREPARING (environment being built,
 * if it happens after submit), RUNNING, then COMPLETED (exit code 0) or FAILED (has_exit_code
 * and exit_code, or term_signal, and `reason` in words), CANCELED after cancel() once no
 * process of the run is left, NOT_RESPONDING when the run's process vanished without a
 * recorded exit status (reason says what was found).  The core, not the plugin, enforces
 * run->timeout_seconds (through cancel()) and turns a lasting NOT_RESPONDING into FAILED.
 * Build output of environments (pip, conda, docker) belongs in the LOG stream.  A plugin
 * that cannot build an environment fails prepare() with a message saying what to install. */
typedef struct ctarget_run_ops {
    size_t struct_size;
    /* ship the snapshot and build the environment (Preparing); idempotent */
    ctarget_status (*prepare)(void *p, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *run, ctarget_error *err);
    /* start the run; write everything needed to find it again into run->handle */
    ctarget_status (*submit)(void *p, ctarget_call *c, ctarget_target *t,
                             const ctarget_run_info *run, ctarget_error *err);
    /* current state; may block up to wait_ms for a change (0: return at once) */
    ctarget_status (*poll)(void *p, ctarget_call *c, ctarget_target *t,
                           const ctarget_run_info *run, long wait_ms, ctarget_run_poll *out,
                           ctarget_error *err);
    /* write the stream's bytes from `offset` to its current end through `out` */
    ctarget_status (*read_logs)(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_stream stream,
                                uint64_t offset, ctarget_write_fn out, void *out_arg,
                                ctarget_error *err);
    /* begin cancellation (TERM, grace, KILL); poll() then reports CANCELED */
    ctarget_status (*cancel)(void *p, ctarget_call *c, ctarget_target *t,
                             const ctarget_run_info *run, ctarget_error *err);
    /* copy the run's ./outputs (and ./logs) into dest_dir */
    ctarget_status (*fetch_outputs)(void *p, ctarget_call *c, ctarget_target *t,
                                    const ctarget_run_info *run, const char *dest_dir,
                                    ctarget_error *err);
    /* rebuild in-process state from run->handle after a monitor restart */
    ctarget_status (*reattach)(void *p, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_error *err);
    /* release what the run left on the target (after outputs are fetched) */
    ctarget_status (*cleanup)(void *p, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *run, ctarget_error *err);
} ctarget_run_ops;

/* ---------------------------------------------------------------------------------------- */
/* The descriptor returned by the entry symbol: static, const, no side effects.              */

typedef struct ctarget_plugin {
    size_t struct_size;
    unsigned abi_major;           /* CTARGET_ABI_MAJOR */
    unsigned abi_minor;           /* CTARGET_ABI_MINOR at build time */
    unsigned min_core_minor;      /* oldest core minor this plugin works with */
    const char *name;             /* the target type; equals the file's basename */
    const char *version;
    const char *description;      /* one line */
    const char *license;
    uint64_t capabilities;        /* CTARGET_CAP_* */
    const ctarget_config_key *config_keys;  /* array; stride = config_keys[0].struct_size */
    size_t n_config_keys;
    unsigned name_min_len, name_max_len, name_flags;  /* CTARGET_NAME_*; 0 = default */
    /* mandatory; called once before the first operation */
    ctarget_status (*init)(const ctarget_host *host, void **p, ctarget_error *err);
    void (*fini)(void *p);
    const ctarget_compute_ops *compute;   /* mandatory */
    const ctarget_run_ops *run;           /* mandatory with SCRIPT_RUN or PIPELINE_STEP */
} ctarget_plugin;

typedef const ctarget_plugin *(*ctarget_plugin_entry_fn)(void);

/* Convenience for plugins: define the entry point.
 *     CTARGET_DEFINE_PLUGIN(my_descriptor)                                          */
#define CTARGET_DEFINE_PLUGIN(desc)                                                   \
    CTARGET_PLUGIN_EXPORT const ctarget_plugin *CTARGET_PLUGIN_ENTRY(void);           \
    CTARGET_PLUGIN_EXPORT const ctarget_plugin *CTARGET_PLUGIN_ENTRY(void) { return &(desc); }

#ifdef __cplusplus
}
#endif

#endif /* CTARGET_PLUGIN_H */
