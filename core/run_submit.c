/* Submitting a run: the run configuration (ScriptRunConfig's fields) with command-line
 * overrides, the target's capabilities, the snapshot, the record, the monitor. */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"
#include "loader.h"
#include "log.h"
#include "registry.h"
#include "run.h"
#include "util.h"
#include "ws.h"

/* ---- the run configuration file --------------------------------------------------------- */

typedef enum { CK_STRING, CK_INT, CK_ARGS, CK_ENV, CK_OBJECT, CK_STRMAP, CK_BOOL } ck_type;
typedef struct conf_key {
    const char *name;
    ck_type type;
    const char *what;  /* for the wrong-type message */
} conf_key;

static const conf_key top_keys[] = {
    {"source_directory", CK_STRING, "a directory path"},
    {"script", CK_STRING, "a path relative to source_directory"},
    {"arguments", CK_ARGS, "a list of strings or numbers"},
    {"target", CK_STRING, "a compute target name"},
    {"environment", CK_ENV, "an environment name or an object"},
    {"framework", CK_STRING, "\"python\" or \"pyspark\""},
    {"max_run_duration_seconds", CK_INT, "a whole number of seconds"},
    {"cancel_grace_seconds", CK_INT, "a whole number of seconds"},
    {"experiment", CK_STRING, "an experiment name"},
    {"node_count", CK_INT, "a whole number >= 1"},
    {"options", CK_OBJECT, "an object of target-specific settings"},
};
static const conf_key env_keys[] = {
    {"name", CK_STRING, "a named environment"},
    {"python", CK_STRING, "an interpreter path"},
    {"requirements", CK_STRING, "a requirements file"},
    {"conda", CK_STRING, "a conda dependencies file"},
    {"docker_image", CK_STRING, "an image name"},
    {"docker_gpu", CK_BOOL, "true or false"},
    {"env_vars", CK_STRMAP, "an object of string values"},
};

static const conf_key *find_ck(const conf_key *t, size_t n, const char *k)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, k))
            return &t[i];
    return NULL;
}

static ctarget_status unknown_key(const char *file, const char *where, const char *k,
                                  const conf_key *t, size_t n, ctarget_error *err)
{
    const char *best = t[0].name;
    size_t bd = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        size_t d = str_edit_distance(k, t[i].name);
        if (d < bd) {
            bd = d;
            best = t[i].name;
        }
    }
    ct_err(err, CTARGET_E_CONFIG, "run configuration %s: unknown key '%s%s': did you mean "
           "'%s%s'?", file, where, k, where, best);
    return CTARGET_E_CONFIG;
}

static int type_ok(const conf_key *ck, json_t *v)
{
    size_t i;
    json_t *x;
    const char *k;
    switch (ck->type) {
    case CK_STRING: return json_is_string(v);
    case CK_INT: return json_is_integer(v);
    case CK_BOOL: return json_is_boolean(v);
    case CK_OBJECT: return json_is_object(v);
    case CK_ENV: return json_is_string(v) || json_is_object(v);
    case CK_ARGS:
        if (!json_is_array(v))
            return 0;
        json_array_foreach(v, i, x) if (!json_is_string(x) && !json_is_number(x)) return 0;
        return 1;
    case CK_STRMAP:
        if (!json_is_object(v))
            return 0;
        json_object_foreach(v, k, x) if (!json_is_string(x)) return 0;
        return 1;
    }
    return 0;
}

static ctarget_status check_keys(const char *file, const char *where, json_t *obj,
                                 const conf_key *t, size_t n, ctarget_error *err)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        const conf_key *ck = find_ck(t, n, k);
        if (!ck)
            return unknown_key(file, where, k, t, n, err);
        if (!type_ok(ck, v)) {
            ct_err(err, CTARGET_E_CONFIG, "run configuration %s: '%s%s' must be %s", file,
                   where, k, ck->what);
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

/* Relative paths in a configuration file are relative to the file's directory. */
static void anchor_path(json_t *obj, const char *key, const char *base)
{
    const char *p = json_string_value(json_object_get(obj, key));
    if (p && p[0] != '/' && base) {
        char *full = path_join(base, p);
        json_object_set_new(obj, key, json_string(full));
        free(full);
    }
}

ctarget_status run_config_check(json_t *j, const char *file, const char *base,
                                ctarget_error *err)
{
    ctarget_status rc = CTARGET_OK;
    if (!json_is_object(j)) {
        ct_err(err, CTARGET_E_CONFIG, "run configuration %s: expected a JSON object", file);
        rc = CTARGET_E_CONFIG;
    } else if (!(rc = check_keys(file, "", j, top_keys, CT_ARRAY_LEN(top_keys), err))) {
        json_t *env = json_object_get(j, "environment");
        if (json_is_object(env))
            rc = check_keys(file, "environment.", env, env_keys, CT_ARRAY_LEN(env_keys), err);
    }
    if (rc)
        return rc;
    anchor_path(j, "source_directory", base);
    json_t *env = json_object_get(j, "environment");
    if (json_is_string(env))
        json_object_set_new(j, "environment", json_pack("{s:O}", "name", env));
    else if (json_is_object(env)) {
        anchor_path(env, "requirements", base);
        anchor_path(env, "conda", base);
    }
    return CTARGET_OK;
}

ctarget_status run_config_load(const char *file, json_t **out, ctarget_error *err)
{
    json_error_t je;
    json_t *j = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        ct_err(err, CTARGET_E_CONFIG, "run configuration %s: %s (line %d)", file, je.text,
               je.line);
        return CTARGET_E_CONFIG;
    }
    char *dir = xstrdup(file);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    ctarget_status rc = run_config_check(j, file, slash ? dir : NULL, err);
    free(dir);
    if (rc) {
        json_decref(j);
        return rc;
    }
    *out = j;
    return CTARGET_OK;
}

/* The configuration file, then the options on top. */
static ctarget_status merge_opts(const ctarget_run_opts *o, json_t **out, ctarget_error *err)
{
    json_t *c = NULL;
    ctarget_status rc;
    if (o->config_file && (rc = run_config_load(o->config_file, &c, err)))
        return rc;
    if (!c)
        c = json_object();
    json_t *env = json_object_get(c, "environment");
    if (!env) {
        env = json_object();
        json_object_set_new(c, "environment", env);
    }
#define OVR(obj, key, v) if (v) json_object_set_new(obj, key, json_string(v))
    OVR(c, "target", o->target);
    OVR(c, "source_directory", o->source_dir);
    OVR(c, "script", o->script);
    OVR(c, "experiment", o->experiment);
    OVR(c, "framework", o->framework);
    if (o->environment || o->python || o->requirements || o->conda) {
        /* one way of giving the environment replaces the file's */
        json_object_del(env, "name");
        json_object_del(env, "python");
        json_object_del(env, "requirements");
        json_object_del(env, "conda");
    }
    OVR(env, "name", o->environment);
    OVR(env, "python", o->python);
    OVR(env, "requirements", o->requirements);
    OVR(env, "conda", o->conda);
    OVR(env, "docker_image", o->docker_image);
#undef OVR
    if (o->args_set) {
        json_t *a = json_array();
        for (size_t i = 0; i < o->n_args; i++)
            json_array_append_new(a, json_stringn(o->args[i], strlen(o->args[i])));
        json_object_set_new(c, "arguments", a);
    }
    if (o->timeout_seconds)
        json_object_set_new(c, "max_run_duration_seconds", json_integer(o->timeout_seconds));
    /* (an older caller's shorter struct has no grace field) */
    if (o->struct_size >= offsetof(ctarget_run_opts, cancel_grace_seconds) +
                               sizeof o->cancel_grace_seconds &&
        o->cancel_grace_seconds)
        json_object_set_new(c, "cancel_grace_seconds", json_integer(o->cancel_grace_seconds));
    json_t *vars = json_object_get(env, "env_vars");
    if (!vars) {
        vars = json_object();
        json_object_set_new(env, "env_vars", vars);
    }
    for (size_t i = 0; i < o->n_env_vars; i++) {
        const char *eq = strchr(o->env_vars[i], '=');
        if (!eq || eq == o->env_vars[i]) {
            ct_err(err, CTARGET_E_USAGE, "--env-var needs NAME=VALUE, got '%s'", o->env_vars[i]);
            json_decref(c);
            return CTARGET_E_USAGE;
        }
        char *k = xstrndup(o->env_vars[i], (size_t)(eq - o->env_vars[i]));
        json_object_set_new(vars, k, json_string(eq + 1));
        free(k);
    }
    *out = c;
    return CTARGET_OK;
}

/* ---- checks ---------------------------------------------------------------------------- */

ctarget_status run_config_check_values(json_t *c, ctarget_error *err)
{
    static const char *const required[] = {"target", "source_directory", "script"};
    for (size_t i = 0; i < CT_ARRAY_LEN(required); i++)
        if (!json_string_value(json_object_get(c, required[i]))) {
            ct_err(err, CTARGET_E_USAGE, "a run needs %s (--%s, or '%s' in the run "
                   "configuration)", required[i],
                   i == 1 ? "source" : required[i], required[i]);
            return CTARGET_E_USAGE;
        }
    const char *exp = json_string_value(json_object_get(c, "experiment"));
    if (exp && !run_experiment_name_ok(exp)) {
        ct_err(err, CTARGET_E_CONFIG, "experiment name '%s' is invalid: 3-36 characters, a "
               "letter or digit first, then letters, digits, '_' and '-'", exp);
        return CTARGET_E_CONFIG;
    }
    json_t *t = json_object_get(c, "max_run_duration_seconds");
    if (t && json_integer_value(t) < 0) {
        ct_err(err, CTARGET_E_CONFIG, "max_run_duration_seconds must not be negative");
        return CTARGET_E_CONFIG;
    }
    json_t *g = json_object_get(c, "cancel_grace_seconds");
    if (g && (json_integer_value(g) < 1 || json_integer_value(g) > 3600)) {
        ct_err(err, CTARGET_E_CONFIG, "cancel_grace_seconds must be 1 to 3600");
        return CTARGET_E_CONFIG;
    }
    json_t *nc = json_object_get(c, "node_count");
    if (nc && json_integer_value(nc) < 1) {
        ct_err(err, CTARGET_E_CONFIG, "node_count must be 1 or more");
        return CTARGET_E_CONFIG;
    }
    const char *fw = json_string_value(json_object_get(c, "framework"));
    if (fw && strcmp(fw, "python") && strcmp(fw, "pyspark")) {
        ct_err(err, CTARGET_E_CONFIG, "framework '%s' is unknown: python or pyspark", fw);
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

/* Types whose plugins run scripts, for the refusal message. */
static char *script_types(void)
{
    size_t n;
    plugin **all = loader_all(&n);
    strbuf sb;
    sb_init(&sb);
    for (size_t i = 0; i < n; i++) {
        if (all[i]->reason || !(all[i]->d.capabilities & CTARGET_CAP_SCRIPT_RUN) ||
            (all[i]->d.capabilities & CTARGET_CAP_PIPELINE_ONLY))
            continue;
        sb_addf(&sb, "%s%s", sb.len ? ", " : "", all[i]->name);
    }
    if (!sb.len)
        sb_adds(&sb, "none installed");
    return sb_detach(&sb);
}

/* Types whose plugins declare cap, for the refusal message. */
static char *types_with(uint64_t cap)
{
    size_t n;
    plugin **all = loader_all(&n);
    strbuf sb;
    sb_init(&sb);
    for (size_t i = 0; i < n; i++)
        if (!all[i]->reason && (all[i]->d.capabilities & cap))
            sb_addf(&sb, "%s%s", sb.len ? ", " : "", all[i]->name);
    if (!sb.len)
        sb_adds(&sb, "none installed");
    return sb_detach(&sb);
}

static ctarget_status check_caps(reg_target *rt, json_t *c, const run_sub *x,
                                 ctarget_error *err)
{
    const plugin *pl = rt->pl;
    uint64_t caps = pl->d.capabilities;
    const char *name = rt->t->name;
    if (x && (x->need_caps & CTARGET_CAP_HYPERPARAMETER_TUNING) &&
        !(caps & CTARGET_CAP_HYPERPARAMETER_TUNING)) {
        char *types = types_with(CTARGET_CAP_HYPERPARAMETER_TUNING);
        ct_err(err, CTARGET_E_UNSUPPORTED, "compute target '%s' (%s) cannot run hyperparameter "
               "sweeps: submit the sweep to a target whose type has the hyperparameter-tuning "
               "capability (types that do: %s)", name, pl->name, types);
        free(types);
        return CTARGET_E_UNSUPPORTED;
    }
    int step = x && (x->need_caps & CTARGET_CAP_PIPELINE_STEP);
    const char *stype = x ? x->step_type : NULL;
    if (step && stype && strcmp(stype, "script") && strcmp(stype, pl->name)) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "a %s step runs on a %s target, and compute target "
               "'%s' is %s: attach a %s target and name it as the step's target", stype, stype,
               name, pl->name, stype);
        return CTARGET_E_UNSUPPORTED;
    }
    if (step && stype && !strcmp(stype, "script") && (caps & CTARGET_CAP_PIPELINE_ONLY)) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "compute target '%s' (%s) runs only %s steps, not "
               "script steps: give the step \"type\": \"%s\" (see ctarget(1), PIPELINE FILES)",
               name, pl->name, pl->name, pl->name);
        return CTARGET_E_UNSUPPORTED;
    }
    if (step && (!(caps & CTARGET_CAP_PIPELINE_STEP) || !pl->run.submit)) {
        char *types = types_with(CTARGET_CAP_PIPELINE_STEP);
        ct_err(err, CTARGET_E_UNSUPPORTED, "compute target '%s' (%s) cannot run pipeline steps: "
               "put the step on a target whose type runs them (types that do: %s), or submit "
               "the script as a plain run", name, pl->name, types);
        free(types);
        return CTARGET_E_UNSUPPORTED;
    }
    if (!step && (caps & CTARGET_CAP_PIPELINE_ONLY)) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "compute target '%s' (%s) runs pipeline steps only, "
               "not plain script runs: use it as the target of a pipeline step (ctarget "
               "pipeline submit FILE; see ctarget(1), PIPELINE FILES), or submit the script "
               "to a target that runs scripts", name, pl->name);
        return CTARGET_E_UNSUPPORTED;
    }
    if (!step && (!(caps & CTARGET_CAP_SCRIPT_RUN) || !pl->run.submit)) {
        char *types = script_types();
        ct_err(err, CTARGET_E_UNSUPPORTED, "compute target '%s' (%s) cannot run scripts: "
               "submit to a target whose type runs scripts (types that do: %s)", name,
               pl->name, types);
        free(types);
        return CTARGET_E_UNSUPPORTED;
    }
    json_int_t nodes = json_integer_value(json_object_get(c, "node_count"));
    if (nodes > 1 && !(caps & CTARGET_CAP_MULTI_NODE)) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "compute target '%s' (%s) runs on one node: "
               "node_count %lld needs a multi-node target (a compute cluster)", name,
               pl->name, (long long)nodes);
        return CTARGET_E_UNSUPPORTED;
    }
    json_t *env = json_object_get(c, "environment");
    if (json_is_true(json_object_get(env, "docker_gpu")) && !(caps & CTARGET_CAP_GPU)) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "compute target '%s' (%s) has no GPUs: choose a "
               "GPU target or drop docker_gpu", name, pl->name);
        return CTARGET_E_UNSUPPORTED;
    }
    return CTARGET_OK;
}

/* The source's real path and the script relative to it; the script must be a regular
 * file inside the source directory (symlinks may not lead out of it). */
static ctarget_status check_source(json_t *c, char **src_out, char **script_out,
                                   ctarget_error *err)
{
    const char *src = json_string_value(json_object_get(c, "source_directory"));
    const char *script = json_string_value(json_object_get(c, "script"));
    char rsrc[PATH_MAX], rscript[PATH_MAX];
    struct stat sb;
    if (!realpath(src, rsrc) || stat(rsrc, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        ct_err_errno(err, CTARGET_E_NOT_FOUND, errno, "source directory %s is not a directory",
                     src);
        return CTARGET_E_NOT_FOUND;
    }
    char *joined = script[0] == '/' ? xstrdup(script) : path_join(rsrc, script);
    int ok = realpath(joined, rscript) != NULL;
    free(joined);
    size_t sl = strlen(rsrc);
    if (!ok || stat(rscript, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ct_err(err, CTARGET_E_NOT_FOUND, "script %s is not a file in the source directory %s",
               script, rsrc);
        return CTARGET_E_NOT_FOUND;
    }
    if (strncmp(rscript, rsrc, sl) || (rscript[sl] != '/' && strcmp(rsrc, "/"))) {
        ct_err(err, CTARGET_E_CONFIG, "script %s is outside the source directory %s: only the "
               "source directory is shipped to the target", script, rsrc);
        return CTARGET_E_CONFIG;
    }
    /* keep the name as given (a symlinked script runs under its own name) */
    const char *rel = script;
    if (script[0] == '/')
        rel = rscript + sl + 1;
    while (rel[0] == '.' && rel[1] == '/')
        rel += 2;
    *src_out = xstrdup(rsrc);
    *script_out = xstrdup(rel);
    return CTARGET_OK;
}

/* ---- snapshot, record, monitor ---------------------------------------------------------- */

/* The source snapshot (id and git information).  Limits and ignore rules apply as for
 * `ctarget snapshot create`. */
static ctarget_status snapshot_source(ctarget_ws *ws, const char *dir, char **id, json_t **git,
                                      ctarget_error *err)
{
    *id = NULL;
    *git = json_null();
    char *json = NULL;
    ctarget_status rc = ctarget_snapshot_create(ws, dir, NULL, &json, err);
    if (rc)
        return rc;
    json_t *j = json_loads(json, 0, NULL);
    free(json);
    const char *sid = json_string_value(json_object_get(j, "id"));
    json_t *g = json_object_get(j, "git");
    if (!sid) {
        json_decref(j);
        ct_err(err, CTARGET_E_INTERNAL, "the snapshot of %s has no id", dir);
        return CTARGET_E_INTERNAL;
    }
    *id = xstrdup(sid);
    if (json_is_object(g)) {
        json_decref(*git);
        *git = json_incref(g);
    }
    json_decref(j);
    return CTARGET_OK;
}

ctarget_status run_insert(store *st, const new_run *r, ctarget_error *err)
{
    int64_t now = time_now_ms();
    char *config = json_dumps(r->config, JSON_COMPACT);
    char *git = json_is_null(r->git) ? NULL : json_dumps(r->git, JSON_COMPACT);
    ctarget_status rc = store_begin(st, err);
    if (rc)
        goto out;
    sqlite3_stmt *s = store_prepare(st, "INSERT OR IGNORE INTO experiments(name, created_at)"
                                        " VALUES (?, ?)", err);
    if (!s)
        goto fail;
    store_bind_text(s, 1, r->experiment);
    sqlite3_bind_int64(s, 2, now);
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE) {
        store_fail(st, err, "cannot record the experiment");
        goto fail;
    }
    s = store_prepare(st, "INSERT INTO runs(id, experiment, target, target_type, status,"
                          " snapshot_id, source_dir, git, config, environment, parent, kind,"
                          " created_at, updated_at) VALUES (?,?,?,?,'NotStarted',?,?,?,?,?,?,?,"
                          "?,?)", err);
    if (!s)
        goto fail;
    const char *vals[] = {r->id, r->experiment, r->target, r->type, r->snapshot, r->source,
                          git, config, r->env_name, r->parent, r->kind ? r->kind : "run"};
    for (int i = 0; i < 11; i++)
        store_bind_text(s, i + 1, vals[i]);
    sqlite3_bind_int64(s, 12, now);
    sqlite3_bind_int64(s, 13, now);
    step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE) {
        store_fail(st, err, "cannot record the run");
        goto fail;
    }
    /* the run's first event: its creation (not a transition, so not rs_transition's) */
    s = store_prepare(st, "INSERT INTO run_events(run, from_status, to_status, time, detail)"
                          " VALUES (?, NULL, 'NotStarted', ?, 'submitted')", err);
    if (!s)
        goto fail;
    store_bind_text(s, 1, r->id);
    sqlite3_bind_int64(s, 2, now);
    step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE) {
        store_fail(st, err, "cannot record the run event");
        goto fail;
    }
    rc = store_commit(st, err);
    goto out;
fail:
    rc = err->code ? err->code : CTARGET_E_IO;
    store_rollback(st);
out:
    free(config);
    free(git);
    return rc;
}

/* What the monitor needs besides the columns: the resolved configuration. */
json_t *run_config_stored(json_t *c, const char *script, json_t *env)
{
    json_t *args = json_array();
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(c, "arguments"), i, a) {
        if (json_is_string(a)) {
            json_array_append(args, a);
        } else {
            /* numbers as Python's str() would print them: 3, 0.5 */
            char *t = json_dumps(a, JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
            json_array_append_new(args, json_string(t));
            free(t);
        }
    }
    const char *fw = json_string_value(json_object_get(c, "framework"));
    json_t *nodes = json_object_get(c, "node_count");
    json_t *opts = json_object_get(c, "options");
    json_t *grace = json_object_get(c, "cancel_grace_seconds");
    /* "o" takes the reference: a borrowed options object gets one of its own */
    return json_pack("{s:s, s:o, s:s, s:I, s:I, s:o, s:O, s:I}", "script", script, "arguments",
                     args, "framework", fw ? fw : "python", "timeout_seconds",
                     json_integer_value(json_object_get(c, "max_run_duration_seconds")),
                     "node_count", nodes ? json_integer_value(nodes) : (json_int_t)1,
                     "options", opts ? json_incref(opts) : json_object(), "environment", env,
                     "cancel_grace_seconds",
                     grace ? json_integer_value(grace) : (json_int_t)10);
}

static ctarget_status prepare_run(ctarget_ws *ws, json_t *c, const char *id, new_run *r,
                                  reg_target **rtp, char **src, char **script, char **snap,
                                  const run_sub *x, ctarget_error *err)
{
    ctarget_status rc;
    if ((rc = run_config_check_values(c, err)) ||
        (rc = reg_load(ws, json_string_value(json_object_get(c, "target")), 1, rtp, err)) ||
        (rc = check_caps(*rtp, c, x, err)) || (rc = check_source(c, src, script, err)))
        return rc;
    char *dir = run_dir(ws->dir, id);
    json_t *env = NULL;
    if (mkdir_p(dir, 0700) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s", dir);
        rc = CTARGET_E_IO;
    } else {
        rc = env_resolve(ws, json_object_get(c, "environment"), dir, &env, err);
    }
    free(dir);
    if (rc)
        return rc;
    if (x && x->snapshot) {
        /* the children of a sweep all run the parent's snapshot */
        *snap = xstrdup(x->snapshot);
        r->git = json_is_object(x->git) ? json_incref(x->git) : json_null();
    } else if ((rc = snapshot_source(ws, *src, snap, &r->git, err))) {
        json_decref(env);
        return rc;
    }
    r->env_name = json_string_value(json_object_get(env, "name"));
    r->config = run_config_stored(c, *script, env);
    if (x && x->extra)
        json_object_update(r->config, x->extra);
    json_decref(env); /* run_config_stored holds its own reference */
    return CTARGET_OK;
}

ctarget_status run_check_config(ctarget_ws *ws, json_t *c, const run_sub *x, ctarget_error *err)
{
    reg_target *rt = NULL;
    char *src = NULL, *script = NULL;
    ctarget_status rc;
    if (!(rc = run_config_check_values(c, err)) &&
        !(rc = reg_load(ws, json_string_value(json_object_get(c, "target")), 1, &rt, err)) &&
        !(rc = check_caps(rt, c, x, err)))
        rc = check_source(c, &src, &script, err);
    reg_target_free(rt);
    free(src);
    free(script);
    return rc;
}

ctarget_status ctarget_run_submit(ctarget_ws *ws, const ctarget_run_opts *o, char **json,
                                  ctarget_error *err)
{
    *json = NULL;
    static const ctarget_run_opts none = {.struct_size = sizeof none};
    json_t *c = NULL;
    ctarget_status rc = merge_opts(o ? o : &none, &c, err);
    if (rc)
        return rc;
    rc = run_submit_config(ws, c, NULL, json, err);
    json_decref(c);
    return rc;
}

ctarget_status run_submit_config(ctarget_ws *ws, json_t *c, const run_sub *x, char **json,
                                 ctarget_error *err)
{
    *json = NULL;
    ctarget_status rc;
    if (x && x->id) {
        /* a recorded child that exists already was started: never touch it again */
        json_t *row = run_row(ws->st, x->id);
        if (row) {
            json_decref(row);
            ct_err(err, CTARGET_E_EXISTS, "run %s exists already", x->id);
            return CTARGET_E_EXISTS;
        }
    }
    char *id = x && x->id ? xstrdup(x->id) : run_new_id(), *src = NULL, *script = NULL,
         *snap = NULL;
    reg_target *rt = NULL;
    new_run r = {.id = id, .git = NULL, .parent = x ? x->parent : NULL,
                 .kind = x ? x->kind : NULL};
    if ((rc = prepare_run(ws, c, id, &r, &rt, &src, &script, &snap, x, err)))
        goto fail;
    const char *exp = json_string_value(json_object_get(c, "experiment"));
    r.experiment = exp ? exp : "default";
    r.target = rt->t->name;
    r.type = rt->pl->name;
    r.source = src;
    r.snapshot = snap;
    if ((rc = run_insert(ws->st, &r, err)))
        goto fail;
    ctarget_error serr;
    ctarget_error_init(&serr);
    if (run_spawn_monitor(ws->dir, id, &serr))
        /* recorded but unmonitored: the next command touching the run starts a monitor */
        log_msg(CTARGET_LOG_WARN, "%s; the next command that reads the run retries", serr.message);
    json_t *out = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:n, s:s}", "id", id, "status",
                            "NotStarted", "experiment", r.experiment, "target", r.target,
                            "snapshot_id", snap, "exit_code", "source_dir", src);
    *json = json_out(out);
    json_decref(out);
    goto out;
fail:
    if (rt) { /* the run's directory only exists once the target checks passed */
        char *dir = run_dir(ws->dir, id);
        rm_rf(dir);
        free(dir);
    }
out:
    reg_target_free(rt);
    json_decref(r.git);
    json_decref(r.config);
    free(id);
    free(src);
    free(script);
    free(snap);
    return rc;
}
