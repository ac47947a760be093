/* The host-services table handed to plugins, and the handles behind its opaque types. */
#ifndef CTARGET_CORE_HOST_H
#define CTARGET_CORE_HOST_H

#include <jansson.h>

#include <ctarget/ctarget.h>

struct plugin;
struct store;

struct ctarget_call {
    const char *what;           /* "attach vm1": prefix for log lines */
    int accept_new_host_key;
    int cancelled;              /* set by the core, besides the process-wide flag */
};

struct ctarget_target {
    char *name;
    char *type;
    char *origin;
    json_t *config;             /* non-secret values, all strings */
    json_t *secret_refs;        /* key -> "store" | "env:VAR" | "file:PATH" */
    json_t *pending;            /* key -> literal secret not yet in the store */
    struct store *st;
    struct plugin *pl;
    char *ws_dir;
    char *state_dir;
    void *data;
    void (*release)(void *data);
};

const ctarget_host *host_table(void);

void call_init(ctarget_call *c, const char *what);

ctarget_target *target_new(struct plugin *pl, struct store *st, const char *ws_dir,
                           const char *name, const char *origin);
void target_free(ctarget_target *t);

/* obj <-> json_t: an obj is a jansson object. */
static inline json_t *obj_json(ctarget_obj *o) { return (json_t *)(void *)o; }
static inline ctarget_obj *json_obj(json_t *j) { return (ctarget_obj *)(void *)j; }

/* Secret resolution used by the host table and by the core itself. */
ctarget_status target_secret_get(const ctarget_target *t, const char *key, char **value,
                                 ctarget_error *err);

/* HTTP service (http.c) */
ctarget_status http_request(ctarget_call *call, const ctarget_http_request *req,
                            ctarget_http_response **resp, ctarget_error *err);
void http_response_free(ctarget_http_response *resp);
const char *http_header_get0(const ctarget_http_response *resp, const char *name);

/* Snapshot services (snapshot.c provides them once snapshots exist). */
ctarget_status host_snapshot_materialize(ctarget_call *call, const char *snapshot_id,
                                         const char *dest, ctarget_error *err);
ctarget_status host_snapshot_blobs(ctarget_call *call, const char *snapshot_id,
                                   int (*fn)(void *arg, const char *sha256, uint64_t size),
                                   void *arg, ctarget_error *err);
ctarget_status host_snapshot_write_tar(ctarget_call *call, const char *snapshot_id,
                                       int (*want)(void *arg, const char *sha256),
                                       void *want_arg, unsigned flags, ctarget_write_fn out,
                                       void *out_arg, ctarget_error *err);

/* Where the workspace keeps SSH host keys; set when a workspace opens. */
void host_set_workspace_dir(const char *dir);
/* The directory of the workspace opened last (NULL before any): the snapshot services find
 * the blob store through it, since host calls carry no workspace argument. */
const char *host_workspace_dir0(void);

#endif
