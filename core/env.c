/* Environments: named ones in the store, and resolving a run's environment into what
 * ctarget_run_info carries (kind, interpreter, dependency file, its hash, container image).
 * A dependency file's content is copied into the store (named environments) or the run's
 * directory (runs), so later edits of the user's file cannot change a recorded run. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto_lib.h"

#include "run.h"
#include "util.h"
#include "ws.h"

void env_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(data, len, md, &n, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int env_name_ok(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len < 1 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && (i == 0 || (c != '_' && c != '-' && c != '.')))
            return 0;
    }
    return 1;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Read a dependency file into spec-like fields of out. */
static ctarget_status load_dep_file(const char *path, const char *kind, json_t *out,
                                    ctarget_error *err)
{
    size_t len;
    char *data = file_read_all(path, &len);
    if (!data) {
        ct_err_errno(err, CTARGET_E_CONFIG, errno, "cannot read the %s file %s",
                     !strcmp(kind, "pip") ? "requirements" : "conda", path);
        return CTARGET_E_CONFIG;
    }
    char hash[65];
    env_sha256_hex(data, len, hash);
    json_object_set_new(out, "kind", json_string(kind));
    json_object_set_new(out, "file_name", json_string(base_name(path)));
    json_object_set_new(out, "content", json_stringn(data, len));
    json_object_set_new(out, "hash", json_string(hash));
    free(data);
    if (!json_string_value(json_object_get(out, "content"))) {
        ct_err(err, CTARGET_E_CONFIG, "the dependency file %s is not UTF-8 text", path);
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

static json_t *load_named(ctarget_ws *ws, const char *name)
{
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT name, kind, python, file_name, file_content,"
                                            " file_hash, docker_image, env_vars, created_at"
                                            " FROM environments WHERE name=?", NULL);
    if (!s)
        return NULL;
    store_bind_text(s, 1, name);
    json_t *e = NULL;
    if (sqlite3_step(s) == SQLITE_ROW) {
        e = json_object();
        static const char *const cols[] = {"name", "kind", "python", "file_name", "content",
                                           "hash", "docker_image"};
        for (int i = 0; i < 7; i++) {
            const char *v = (const char *)sqlite3_column_text(s, i);
            json_object_set_new(e, cols[i], v ? json_string(v) : json_null());
        }
        json_t *vars = json_loads((const char *)sqlite3_column_text(s, 7), 0, NULL);
        json_object_set_new(e, "env_vars", json_is_object(vars) ? vars : json_object());
        if (!json_is_object(vars))
            json_decref(vars);
        char iso[32];
        time_format_iso(sqlite3_column_int64(s, 8), iso);
        json_object_set_new(e, "created_at", json_string(iso));
    }
    sqlite3_finalize(s);
    return e;
}

static ctarget_status write_env_file(const char *run_dir_path, json_t *out, ctarget_error *err)
{
    const char *content = json_string_value(json_object_get(out, "content"));
    const char *fname = json_string_value(json_object_get(out, "file_name"));
    if (!content || !fname)
        return CTARGET_OK;
    char *dir = path_join(run_dir_path, "environment");
    char *path = path_join(dir, fname);
    ctarget_status rc = CTARGET_OK;
    if (mkdir_p(dir, 0700) != 0 ||
        file_write_atomic(path, content, strlen(content), 0600) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot write %s", path);
        rc = CTARGET_E_IO;
    } else {
        json_object_set_new(out, "file", json_string(path));
    }
    free(dir);
    free(path);
    json_object_del(out, "content");
    return rc;
}

ctarget_status env_resolve(ctarget_ws *ws, json_t *spec, const char *run_dir_path, json_t **out,
                           ctarget_error *err)
{
    *out = NULL;
    const char *name = json_string_value(json_object_get(spec, "name"));
    const char *python = json_string_value(json_object_get(spec, "python"));
    const char *req = json_string_value(json_object_get(spec, "requirements"));
    const char *conda = json_string_value(json_object_get(spec, "conda"));
    if ((name != NULL) + (python != NULL) + (req != NULL) + (conda != NULL) > 1) {
        ct_err(err, CTARGET_E_USAGE, "give one of environment name, python, requirements "
               "and conda: a named environment already says how to build itself");
        return CTARGET_E_USAGE;
    }
    json_t *e;
    ctarget_status rc = CTARGET_OK;
    if (name) {
        if (!(e = load_named(ws, name))) {
            ct_err(err, CTARGET_E_NOT_FOUND, "no environment named '%s' (see `ctarget env "
                   "list`, or create it with `ctarget env create`)", name);
            return CTARGET_E_NOT_FOUND;
        }
        json_object_del(e, "created_at");
    } else {
        e = json_pack("{s:s, s:n}", "kind", "user", "name");
        if (python)
            json_object_set_new(e, "python", json_string(python));
        if (req)
            rc = load_dep_file(req, "pip", e, err);
        else if (conda)
            rc = load_dep_file(conda, "conda", e, err);
        json_object_set_new(e, "env_vars", json_object());
    }
    const char *img = json_string_value(json_object_get(spec, "docker_image"));
    if (img)
        json_object_set_new(e, "docker_image", json_string(img));
    json_object_set(e, "docker_gpu", json_is_true(json_object_get(spec, "docker_gpu"))
                                         ? json_true() : json_false());
    json_object_update(json_object_get(e, "env_vars"), json_object_get(spec, "env_vars"));
    if (!rc && run_dir_path)
        rc = write_env_file(run_dir_path, e, err);
    if (rc) {
        json_decref(e);
        return rc;
    }
    *out = e;
    return CTARGET_OK;
}

/* ---- named environments ---------------------------------------------------------------- */

static ctarget_status parse_env_vars(const char *const *vars, size_t n, json_t *into,
                                     ctarget_error *err)
{
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(vars[i], '=');
        if (!eq || eq == vars[i]) {
            ct_err(err, CTARGET_E_USAGE, "--env-var needs NAME=VALUE, got '%s'", vars[i]);
            return CTARGET_E_USAGE;
        }
        char *k = xstrndup(vars[i], (size_t)(eq - vars[i]));
        json_object_set_new(into, k, json_string(eq + 1));
        free(k);
    }
    return CTARGET_OK;
}

ctarget_status ctarget_env_create(ctarget_ws *ws, const char *name, const ctarget_env_opts *o,
                                  char **json, ctarget_error *err)
{
    *json = NULL;
    if (!env_name_ok(name)) {
        ct_err(err, CTARGET_E_CONFIG, "environment name '%s' is invalid: 1-64 letters, digits, "
               "'_', '-' and '.', starting with a letter or digit", name ? name : "");
        return CTARGET_E_CONFIG;
    }
    if (!o || (!o->python && !o->requirements && !o->conda)) {
        ct_err(err, CTARGET_E_USAGE, "an environment needs one of --requirements FILE, "
               "--conda FILE or --python PATH");
        return CTARGET_E_USAGE;
    }
    json_t *spec = json_object();
    json_t *vars = json_object();
    if (o->python)
        json_object_set_new(spec, "python", json_string(o->python));
    if (o->requirements)
        json_object_set_new(spec, "requirements", json_string(o->requirements));
    if (o->conda)
        json_object_set_new(spec, "conda", json_string(o->conda));
    if (o->docker_image)
        json_object_set_new(spec, "docker_image", json_string(o->docker_image));
    ctarget_status rc = parse_env_vars(o->env_vars, o->n_env_vars, vars, err);
    json_object_set_new(spec, "env_vars", vars);
    json_t *e = NULL;
    if (!rc)
        rc = env_resolve(ws, spec, NULL, &e, err);
    json_decref(spec);
    if (rc)
        return rc;
    char *vtext = json_dumps(json_object_get(e, "env_vars"), JSON_COMPACT | JSON_SORT_KEYS);
    sqlite3_stmt *s = store_prepare(ws->st, "INSERT INTO environments(name, kind, python,"
                                            " file_name, file_content, file_hash, docker_image,"
                                            " env_vars, created_at, updated_at)"
                                            " VALUES (?,?,?,?,?,?,?,?,?,?)", err);
    if (s) {
        int64_t now = time_now_ms();
        store_bind_text(s, 1, name);
        store_bind_text(s, 2, json_string_value(json_object_get(e, "kind")));
        store_bind_text(s, 3, json_string_value(json_object_get(e, "python")));
        store_bind_text(s, 4, json_string_value(json_object_get(e, "file_name")));
        store_bind_text(s, 5, json_string_value(json_object_get(e, "content")));
        store_bind_text(s, 6, json_string_value(json_object_get(e, "hash")));
        store_bind_text(s, 7, json_string_value(json_object_get(e, "docker_image")));
        store_bind_text(s, 8, vtext);
        sqlite3_bind_int64(s, 9, now);
        sqlite3_bind_int64(s, 10, now);
        if (sqlite3_step(s) != SQLITE_DONE) {
            rc = store_fail(ws->st, err, "cannot store the environment");
            if (rc == CTARGET_E_EXISTS)
                ct_err(err, rc, "an environment named '%s' already exists: `ctarget env "
                       "delete %s` first, or choose another name", name, name);
        }
        sqlite3_finalize(s);
    } else {
        rc = err->code;
    }
    free(vtext);
    json_decref(e);
    if (!rc)
        rc = ctarget_env_show(ws, name, json, err);
    return rc;
}

ctarget_status ctarget_env_show(ctarget_ws *ws, const char *name, char **json,
                                ctarget_error *err)
{
    *json = NULL;
    json_t *e = load_named(ws, name);
    if (!e) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no environment named '%s' (see `ctarget env list`)",
               name);
        return CTARGET_E_NOT_FOUND;
    }
    /* the dependency file is shown in full: it is what the environment is built from */
    *json = json_out(e);
    json_decref(e);
    return CTARGET_OK;
}

ctarget_status ctarget_env_list(ctarget_ws *ws, char **json, ctarget_error *err)
{
    *json = NULL;
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT name FROM environments ORDER BY name", err);
    if (!s)
        return err->code;
    json_t *arr = json_array();
    while (sqlite3_step(s) == SQLITE_ROW) {
        json_t *e = load_named(ws, (const char *)sqlite3_column_text(s, 0));
        if (!e)
            continue;
        json_object_del(e, "content");
        json_array_append_new(arr, e);
    }
    sqlite3_finalize(s);
    *json = json_out(arr);
    json_decref(arr);
    return CTARGET_OK;
}

ctarget_status ctarget_env_delete(ctarget_ws *ws, const char *name, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(ws->st, "DELETE FROM environments WHERE name=?", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, name);
    ctarget_status rc = CTARGET_OK;
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = store_fail(ws->st, err, "cannot delete the environment");
    else if (sqlite3_changes(ws->st->db) == 0) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no environment named '%s' (see `ctarget env list`)",
               name);
        rc = CTARGET_E_NOT_FOUND;
    }
    sqlite3_finalize(s);
    return rc;
}
