#include "config.h"

#include "host.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "loader.h"
#include "log.h"
#include "store.h"
#include "util.h"

static char *workspace_dir;
static char *known_hosts;

void host_set_workspace_dir(const char *dir)
{
    free(workspace_dir);
    free(known_hosts);
    workspace_dir = xstrdup(dir);
    known_hosts = path_join(dir, "known_hosts");
}

const char *host_workspace_dir0(void)
{
    return workspace_dir;
}

void call_init(ctarget_call *c, const char *what)
{
    memset(c, 0, sizeof *c);
    c->what = what;
}

/* ---- errors, logging, progress, time ----------------------------------------------------- */

static void h_error_set(ctarget_error *err, ctarget_status code, int transient, int sys_errno,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ct_verr(err, code, transient, sys_errno, fmt, ap);
    va_end(ap);
}

static void h_log(ctarget_call *call, ctarget_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, call ? call->what : NULL, fmt, ap);
    va_end(ap);
}

static void h_progress(ctarget_call *call, const char *phase, uint64_t done, uint64_t total)
{
    (void)call;
    progress_report(phase, done, total);
}

static int h_cancelled(ctarget_call *call)
{
    return ctarget_cancel_requested() || (call && call->cancelled);
}

static int64_t h_now_ms(void)
{
    return time_now_ms();
}

static int64_t h_mono_ns(void)
{
    return time_mono_ns();
}

static ctarget_status h_sleep_ms(ctarget_call *call, long ms)
{
    int64_t end = time_mono_ns() + (int64_t)ms * 1000000;
    for (;;) {
        if (h_cancelled(call))
            return CTARGET_E_CANCELED;
        int64_t left = end - time_mono_ns();
        if (left <= 0)
            return CTARGET_OK;
        if (left > 50000000)
            left = 50000000; /* wake every 50 ms to notice cancellation */
        struct timespec ts = {0, (long)left};
        nanosleep(&ts, NULL);
    }
}

/* ---- targets ---------------------------------------------------------------------------- */

ctarget_target *target_new(plugin *pl, store *st, const char *ws_dir, const char *name,
                           const char *origin)
{
    ctarget_target *t = xcalloc(1, sizeof *t);
    t->name = xstrdup(name);
    t->type = xstrdup(pl->name);
    t->origin = xstrdup(origin);
    t->config = json_object();
    t->secret_refs = json_object();
    t->pending = json_object();
    t->st = st;
    t->pl = pl;
    t->ws_dir = ws_dir ? xstrdup(ws_dir) : NULL;
    return t;
}

void target_free(ctarget_target *t)
{
    if (!t)
        return;
    if (t->release)
        t->release(t->data);
    /* wipe pending secrets before releasing them */
    const char *k;
    json_t *v;
    json_object_foreach(t->pending, k, v) {
        char *s = (char *)json_string_value(v);
        if (s)
            memset(s, 0, strlen(s));
    }
    json_decref(t->pending);
    json_decref(t->config);
    json_decref(t->secret_refs);
    free(t->name);
    free(t->type);
    free(t->origin);
    free(t->ws_dir);
    free(t->state_dir);
    free(t);
}

static const char *h_target_name(const ctarget_target *t)
{
    return t->name;
}

static const ctarget_config_key *find_key(const plugin *pl, const char *key)
{
    for (size_t i = 0; i < pl->n_keys; i++)
        if (!strcmp(pl->keys[i].name, key))
            return &pl->keys[i];
    return NULL;
}

static const char *h_config_get0(const ctarget_target *t, const char *key)
{
    const ctarget_config_key *k = find_key(t->pl, key);
    if (k && (k->flags & CTARGET_KEY_SECRET))
        return NULL; /* secrets only through secret_get1 */
    const char *v = json_string_value(json_object_get(t->config, key));
    if (v)
        return v;
    return k ? k->default_value : NULL;
}

static char *read_secret_file(const char *path, ctarget_error *err, const char *what)
{
    size_t len;
    char *s = file_read_all(path, &len);
    if (!s) {
        ct_err_errno(err, CTARGET_E_AUTH, errno, "%s refers to file %s, which cannot be read",
                     what, path);
        return NULL;
    }
    /* one trailing newline is an artefact of `echo secret > file` */
    if (len && s[len - 1] == '\n')
        s[--len] = '\0';
    if (len && s[len - 1] == '\r')
        s[--len] = '\0';
    if (strlen(s) != len) {
        memset(s, 0, len);
        free(s);
        ct_err(err, CTARGET_E_AUTH, "%s: file %s contains a NUL byte", what, path);
        return NULL;
    }
    return s;
}

ctarget_status target_secret_get(const ctarget_target *t, const char *key, char **value,
                                 ctarget_error *err)
{
    *value = NULL;
    char what[256];
    snprintf(what, sizeof what, "secret %s of target %s", key, t->name);
    const char *pending = json_string_value(json_object_get(t->pending, key));
    const char *ref = json_string_value(json_object_get(t->secret_refs, key));
    char *v = NULL;
    if (pending) {
        v = xstrdup(pending);
    } else if (!ref) {
        ct_err(err, CTARGET_E_NOT_FOUND, "%s is not set", what);
        return CTARGET_E_NOT_FOUND;
    } else if (str_startswith(ref, "env:")) {
        const char *e = getenv(ref + 4);
        if (!e) {
            ct_err(err, CTARGET_E_AUTH,
                   "%s refers to environment variable %s, which is not set: export it or "
                   "`ctarget compute update %s --set %s=...`", what, ref + 4, t->name, key);
            return CTARGET_E_AUTH;
        }
        v = xstrdup(e);
    } else if (str_startswith(ref, "file:")) {
        if (!(v = read_secret_file(ref + 5, err, what)))
            return CTARGET_E_AUTH;
    } else {
        if (!t->st) {
            ct_err(err, CTARGET_E_INTERNAL, "%s: no workspace store", what);
            return CTARGET_E_INTERNAL;
        }
        sqlite3_stmt *s = store_prepare(t->st,
                                        "SELECT value FROM sec.secrets WHERE target=? AND key=?",
                                        err);
        if (!s)
            return err->code;
        store_bind_text(s, 1, t->name);
        store_bind_text(s, 2, key);
        if (sqlite3_step(s) == SQLITE_ROW) {
            const void *b = sqlite3_column_blob(s, 0);
            v = xstrndup(b ? b : "", (size_t)sqlite3_column_bytes(s, 0));
        }
        sqlite3_finalize(s);
        if (!v) {
            ct_err(err, CTARGET_E_AUTH, "%s is missing from the secret store: set it again "
                   "with `ctarget compute update %s --set %s=...`", what, t->name, key);
            return CTARGET_E_AUTH;
        }
    }
    log_register_secret(v);
    *value = v;
    return CTARGET_OK;
}

static ctarget_status h_secret_get1(const ctarget_target *t, const char *key, char **value,
                                    ctarget_error *err)
{
    return target_secret_get(t, key, value, err);
}

static void h_secret_free(char *value)
{
    if (!value)
        return;
    volatile char *p = value;
    while (*p)
        *p++ = 0;
    free(value);
}

static void h_target_data_set(ctarget_target *t, void *data, void (*release)(void *))
{
    if (t->release && t->data != data)
        t->release(t->data);
    t->data = data;
    t->release = release;
}

static void *h_target_data_get0(const ctarget_target *t)
{
    return t->data;
}

static const char *h_target_state_dir0(const ctarget_target *t)
{
    ctarget_target *m = (ctarget_target *)t;
    if (!m->state_dir && m->ws_dir) {
        char *dir = xasprintf("%s/plugins/%s/%s", m->ws_dir, m->type, m->name);
        if (mkdir_p(dir, 0700) == 0)
            m->state_dir = dir;
        else
            free(dir);
    }
    return m->state_dir;
}

/* ---- objects ---------------------------------------------------------------------------- */

static void obj_set(ctarget_obj *o, const char *key, json_t *v)
{
    if (o && key && json_is_object(obj_json(o)))
        json_object_set_new(obj_json(o), key, v);
    else
        json_decref(v);
}

static void h_obj_set_str(ctarget_obj *o, const char *key, const char *value)
{
    obj_set(o, key, value ? json_string(value) : json_null());
}

static void h_obj_set_int(ctarget_obj *o, const char *key, long long value)
{
    obj_set(o, key, json_integer(value));
}

static void h_obj_set_num(ctarget_obj *o, const char *key, double value)
{
    obj_set(o, key, json_real(value));
}

static void h_obj_set_bool(ctarget_obj *o, const char *key, int value)
{
    obj_set(o, key, json_boolean(value));
}

static ctarget_obj *h_obj_child0(ctarget_obj *o, const char *key)
{
    json_t *j = obj_json(o);
    if (!j || !json_is_object(j))
        return NULL;
    json_t *c = json_object_get(j, key);
    if (!json_is_object(c)) {
        c = json_object();
        json_object_set_new(j, key, c);
    }
    return json_obj(c);
}

static ctarget_obj *h_obj_append0(ctarget_obj *o, const char *key)
{
    json_t *j = obj_json(o);
    if (!j || !json_is_object(j))
        return NULL;
    json_t *a = json_object_get(j, key);
    if (!json_is_array(a)) {
        a = json_array();
        json_object_set_new(j, key, a);
    }
    json_t *c = json_object();
    json_array_append_new(a, c);
    return json_obj(c);
}

static const char *h_obj_get0_str(const ctarget_obj *o, const char *key)
{
    const json_t *j = (const json_t *)(const void *)o;
    return j ? json_string_value(json_object_get(j, key)) : NULL;
}

static int h_obj_get_int(const ctarget_obj *o, const char *key, long long *value)
{
    const json_t *j = (const json_t *)(const void *)o;
    json_t *v = j ? json_object_get(j, key) : NULL;
    if (!json_is_integer(v))
        return 0;
    *value = json_integer_value(v);
    return 1;
}

static const char *h_known_hosts_path0(void)
{
    return known_hosts;
}

static int h_accept_new_host_key(ctarget_call *call)
{
    return call && call->accept_new_host_key;
}

static const ctarget_host the_host = {
    .struct_size = sizeof(ctarget_host),
    .abi_major = CTARGET_ABI_MAJOR,
    .abi_minor = CTARGET_ABI_MINOR,
    .error_set = h_error_set,
    .log = h_log,
    .progress = h_progress,
    .cancelled = h_cancelled,
    .now_ms = h_now_ms,
    .monotonic_ns = h_mono_ns,
    .sleep_ms = h_sleep_ms,
    .target_name = h_target_name,
    .config_get0 = h_config_get0,
    .secret_get1 = h_secret_get1,
    .secret_free = h_secret_free,
    .target_data_set = h_target_data_set,
    .target_data_get0 = h_target_data_get0,
    .target_state_dir0 = h_target_state_dir0,
    .obj_set_str = h_obj_set_str,
    .obj_set_int = h_obj_set_int,
    .obj_set_num = h_obj_set_num,
    .obj_set_bool = h_obj_set_bool,
    .obj_child0 = h_obj_child0,
    .obj_append0 = h_obj_append0,
    .obj_get0_str = h_obj_get0_str,
    .obj_get_int = h_obj_get_int,
    .http_request = http_request,
    .http_response_free = http_response_free,
    .http_header_get0 = http_header_get0,
    .snapshot_materialize = host_snapshot_materialize,
    .snapshot_blobs = host_snapshot_blobs,
    .snapshot_write_tar = host_snapshot_write_tar,
    .known_hosts_path0 = h_known_hosts_path0,
    .accept_new_host_key = h_accept_new_host_key,
};

const ctarget_host *host_table(void)
{
    return &the_host;
}
