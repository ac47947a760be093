/* The compute-target registry: create, attach, inspect, change and forget targets.
 * Every rule here comes from what plugins declare; no backend is named. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "keys.h"
#include "loader.h"
#include "log.h"
#include "registry.h"
#include "util.h"
#include "ws.h"

static const char *const prov_names[] = {"Unknown",  "Creating", "Succeeded", "Failed",
                                          "Updating", "Deleting", "Canceled"};

const char *prov_state_name(ctarget_prov_state s)
{
    return (unsigned)s < CT_ARRAY_LEN(prov_names) ? prov_names[s] : "Unknown";
}

static int prov_transitional(ctarget_prov_state s)
{
    return s == CTARGET_PROV_CREATING || s == CTARGET_PROV_UPDATING ||
           s == CTARGET_PROV_DELETING;
}

void reg_target_free(reg_target *rt)
{
    if (!rt)
        return;
    target_free(rt->t);
    json_decref(rt->rec);
    free(rt);
}

static json_t *parse_obj(const char *text)
{
    json_t *j = json_loads(text ? text : "{}", 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        j = json_object();
    }
    return j;
}

static ctarget_status not_found(ctarget_ws *ws, const char *name, ctarget_error *err)
{
    /* suggest a close name: typos are the usual reason */
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT name FROM targets", NULL);
    char *best = NULL;
    size_t best_d = 3;
    while (s && sqlite3_step(s) == SQLITE_ROW) {
        const char *n = (const char *)sqlite3_column_text(s, 0);
        size_t d = str_edit_distance(name, n);
        if (d < best_d) {
            best_d = d;
            free(best);
            best = xstrdup(n);
        }
    }
    sqlite3_finalize(s);
    if (best)
        ct_err(err, CTARGET_E_NOT_FOUND, "no compute target named '%s': did you mean '%s'? "
               "(see `ctarget compute list`)", name, best);
    else
        ct_err(err, CTARGET_E_NOT_FOUND, "no compute target named '%s' in workspace %s "
               "(see `ctarget compute list`)", name, ws->dir);
    free(best);
    return CTARGET_E_NOT_FOUND;
}

/* An implicit target (CTARGET_CAP_IMPLICIT): exists in every workspace under its type name. */
static plugin *implicit_plugin(const char *name)
{
    plugin *pl;
    ctarget_error e;
    ctarget_error_init(&e);
    char *lower = xstrdup(name);
    str_lower_ascii(lower);
    ctarget_status rc = loader_find(lower, &pl, &e);
    free(lower);
    if (rc == CTARGET_OK && (pl->d.capabilities & CTARGET_CAP_IMPLICIT))
        return pl;
    return NULL;
}

ctarget_status reg_load(ctarget_ws *ws, const char *name, int need_plugin, reg_target **out,
                        ctarget_error *err)
{
    *out = NULL;
    sqlite3_stmt *s = store_prepare(ws->st,
                                    "SELECT name, type, origin, config, secret_refs, facts,"
                                    " provisioning_state, provisioning_errors, created_at,"
                                    " updated_at FROM targets WHERE name=?", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, name);
    json_t *rec = NULL;
    if (sqlite3_step(s) == SQLITE_ROW) {
        rec = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:s, s:s, s:I, s:I}",
                        "name", (const char *)sqlite3_column_text(s, 0),
                        "type", (const char *)sqlite3_column_text(s, 1),
                        "origin", (const char *)sqlite3_column_text(s, 2),
                        "config", parse_obj((const char *)sqlite3_column_text(s, 3)),
                        "secret_refs", parse_obj((const char *)sqlite3_column_text(s, 4)),
                        "facts", parse_obj((const char *)sqlite3_column_text(s, 5)),
                        "provisioning_state", (const char *)sqlite3_column_text(s, 6),
                        "provisioning_errors", (const char *)sqlite3_column_text(s, 7),
                        "created_at", (json_int_t)sqlite3_column_int64(s, 8),
                        "updated_at", (json_int_t)sqlite3_column_int64(s, 9));
    }
    sqlite3_finalize(s);

    plugin *pl = NULL;
    if (!rec) {
        pl = implicit_plugin(name);
        if (!pl)
            return not_found(ws, name, err);
        rec = json_pack("{s:s, s:s, s:s, s:{}, s:{}, s:{}, s:s, s:s, s:I, s:I}", "name",
                        pl->name, "type", pl->name, "origin", "implicit", "config",
                        "secret_refs", "facts", "provisioning_state", "Succeeded",
                        "provisioning_errors", "", "created_at", (json_int_t)0, "updated_at",
                        (json_int_t)0);
        json_object_set_new(rec, "stored", json_false());
    } else {
        json_object_set_new(rec, "stored", json_true());
        const char *type = json_string_value(json_object_get(rec, "type"));
        ctarget_error e;
        ctarget_error_init(&e);
        if (loader_find(type, &pl, &e) != CTARGET_OK) {
            if (need_plugin) {
                ct_err(err, e.code, "compute target '%s' cannot be used: %s",
                       json_string_value(json_object_get(rec, "name")), e.message);
                json_decref(rec);
                return e.code;
            }
            pl = NULL;
        }
    }
    reg_target *rt = xcalloc(1, sizeof *rt);
    rt->rec = rec;
    rt->pl = pl;
    if (pl) {
        rt->t = target_new(pl, ws->st, ws->dir, json_string_value(json_object_get(rec, "name")),
                           json_string_value(json_object_get(rec, "origin")));
        json_object_update(rt->t->config, json_object_get(rec, "config"));
        json_object_update(rt->t->secret_refs, json_object_get(rec, "secret_refs"));
    }
    *out = rt;
    return CTARGET_OK;
}

/* The target as users see it: secrets masked, references shown (they are not secret). */
json_t *reg_render(const reg_target *rt)
{
    json_t *r = rt->rec;
    /* the handle holds the current settings (new on create/attach, changed by update) */
    json_t *src = rt->t ? rt->t->config : json_object_get(r, "config");
    json_t *refs = rt->t ? rt->t->secret_refs : json_object_get(r, "secret_refs");
    json_t *cfg = src ? json_deep_copy(src) : json_object();
    const char *k;
    json_t *v;
    json_object_foreach(refs, k, v) {
        const char *ref = json_string_value(v);
        json_object_set_new(cfg, k, json_string(ref && strcmp(ref, "store") ? ref : "********"));
    }
    char created[32] = "", updated[32] = "";
    json_int_t c = json_integer_value(json_object_get(r, "created_at"));
    json_int_t u = json_integer_value(json_object_get(r, "updated_at"));
    if (c)
        time_format_iso(c, created);
    if (u)
        time_format_iso(u, updated);
    const char *errs = json_string_value(json_object_get(r, "provisioning_errors"));
    json_t *out = json_pack("{s:O, s:O, s:O, s:O, s:s, s:o, s:O}",
                            "name", json_object_get(r, "name"),
                            "type", json_object_get(r, "type"),
                            "origin", json_object_get(r, "origin"),
                            "provisioning_state", json_object_get(r, "provisioning_state"),
                            "provisioning_errors", errs ? errs : "",
                            "config", cfg,
                            "facts", json_object_get(r, "facts"));
    json_object_set_new(out, "created_at", c ? json_string(created) : json_null());
    json_object_set_new(out, "updated_at", u ? json_string(updated) : json_null());
    json_object_set_new(out, "plugin", json_string(rt->pl ? rt->pl->path : "unavailable"));
    return out;
}

/* ---- writing ---------------------------------------------------------------------------- */

static ctarget_status write_secrets(ctarget_ws *ws, const char *name, json_t *refs,
                                    json_t *pending, ctarget_error *err)
{
    /* drop stored values the target no longer uses (unset, or now a reference) */
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT key FROM sec.secrets WHERE target=?", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, name);
    json_t *stale = json_array();
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(s, 0);
        const char *ref = json_string_value(json_object_get(refs, key));
        if (!ref || strcmp(ref, "store"))
            json_array_append_new(stale, json_string(key));
    }
    sqlite3_finalize(s);
    size_t i;
    json_t *v;
    ctarget_status rc = CTARGET_OK;
    json_array_foreach(stale, i, v) {
        s = store_prepare(ws->st, "DELETE FROM sec.secrets WHERE target=? AND key=?", err);
        if (!s) {
            rc = err->code;
            break;
        }
        store_bind_text(s, 1, name);
        store_bind_text(s, 2, json_string_value(v));
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = store_fail(ws->st, err, "cannot remove a secret");
        sqlite3_finalize(s);
    }
    json_decref(stale);
    const char *k;
    json_object_foreach(pending, k, v) {
        if (rc)
            break;
        s = store_prepare(ws->st, "INSERT OR REPLACE INTO sec.secrets(target, key, value)"
                                  " VALUES (?, ?, ?)", err);
        if (!s)
            return err->code;
        const char *val = json_string_value(v);
        store_bind_text(s, 1, name);
        store_bind_text(s, 2, k);
        sqlite3_bind_blob(s, 3, val, (int)strlen(val), SQLITE_TRANSIENT);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = store_fail(ws->st, err, "cannot store a secret");
        sqlite3_finalize(s);
    }
    return rc;
}

static ctarget_status delete_secrets(ctarget_ws *ws, const char *name, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(ws->st, "DELETE FROM sec.secrets WHERE target=?", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, name);
    ctarget_status rc = CTARGET_OK;
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = store_fail(ws->st, err, "cannot remove secrets");
    sqlite3_finalize(s);
    return rc;
}

/* Which target already holds one of these identities (for a precise message), or NULL. */
static char *identity_owner(ctarget_ws *ws, json_t *ids, const char *self, char **which)
{
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        sqlite3_stmt *s = store_prepare(ws->st,
                                        "SELECT target FROM target_identities WHERE identity=?",
                                        NULL);
        if (!s)
            continue;
        store_bind_text(s, 1, json_string_value(v));
        char *owner = NULL;
        if (sqlite3_step(s) == SQLITE_ROW) {
            const char *o = (const char *)sqlite3_column_text(s, 0);
            if (!self || str_casecmp_ascii(o, self))
                owner = xstrdup(o);
        }
        sqlite3_finalize(s);
        if (owner) {
            *which = xstrdup(json_string_value(v));
            return owner;
        }
    }
    return NULL;
}

static ctarget_status conflict_message(ctarget_ws *ws, const char *name, json_t *ids,
                                       const char *self, ctarget_error *err)
{
    if (!self) {
        reg_target *rt;
        ctarget_error e;
        ctarget_error_init(&e);
        sqlite3_stmt *s = store_prepare(ws->st, "SELECT type, origin FROM targets WHERE name=?",
                                        NULL);
        if (s) {
            store_bind_text(s, 1, name);
            if (sqlite3_step(s) == SQLITE_ROW) {
                ct_err(err, CTARGET_E_EXISTS, "a compute target named '%s' already exists "
                       "(%s, %s): choose another name, or detach/delete it first", name,
                       (const char *)sqlite3_column_text(s, 0),
                       (const char *)sqlite3_column_text(s, 1));
                sqlite3_finalize(s);
                return CTARGET_E_EXISTS;
            }
            sqlite3_finalize(s);
        }
        plugin *ip = implicit_plugin(name);
        if (ip) {
            ct_err(err, CTARGET_E_EXISTS, "the name '%s' belongs to the built-in %s target: "
                   "choose another name", name, ip->name);
            return CTARGET_E_EXISTS;
        }
        (void)rt;
    }
    char *which = NULL;
    char *owner = identity_owner(ws, ids, self, &which);
    if (owner) {
        ct_err(err, CTARGET_E_EXISTS, "the resource %s is already attached as '%s': a resource "
               "is attached once; to change the attachment, `ctarget compute detach %s` first",
               which, owner, owner);
        free(owner);
        free(which);
        return CTARGET_E_EXISTS;
    }
    return CTARGET_OK;
}

static ctarget_status write_identities(ctarget_ws *ws, const char *name, json_t *ids,
                                       ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(ws->st, "DELETE FROM target_identities WHERE target=?",
                                    err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, name);
    sqlite3_step(s);
    sqlite3_finalize(s);
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        s = store_prepare(ws->st, "INSERT INTO target_identities(identity, target) VALUES (?,?)",
                          err);
        if (!s)
            return err->code;
        store_bind_text(s, 1, json_string_value(v));
        store_bind_text(s, 2, name);
        int r = sqlite3_step(s);
        sqlite3_finalize(s);
        if (r != SQLITE_DONE)
            return store_fail(ws->st, err, "cannot record the resource identity");
    }
    return CTARGET_OK;
}

/* Insert or replace the target row with its identities and secrets in one transaction. */
static ctarget_status save(ctarget_ws *ws, reg_target *rt, json_t *pending, int insert,
                           ctarget_error *err)
{
    json_t *r = rt->rec;
    const char *name = json_string_value(json_object_get(r, "name"));
    json_t *ids = keys_identities(rt->pl, rt->t->config);
    char *config = json_dumps(rt->t->config, JSON_COMPACT | JSON_SORT_KEYS);
    char *refs = json_dumps(rt->t->secret_refs, JSON_COMPACT | JSON_SORT_KEYS);
    char *facts = json_dumps(json_object_get(r, "facts"), JSON_COMPACT | JSON_SORT_KEYS);
    int64_t now = time_now_ms();
    if (insert)
        json_object_set_new(r, "created_at", json_integer(now));
    json_object_set_new(r, "updated_at", json_integer(now));

    ctarget_status rc = store_begin(ws->st, err);
    if (rc)
        goto out;
    sqlite3_stmt *s = store_prepare(
        ws->st,
        insert ? "INSERT INTO targets(config, secret_refs, facts, provisioning_state,"
                 " provisioning_errors, updated_at, created_at, name, type, origin)"
                 " VALUES (?,?,?,?,?,?,?,?,?,?)"
               : "UPDATE targets SET config=?, secret_refs=?, facts=?, provisioning_state=?,"
                 " provisioning_errors=?, updated_at=? WHERE name=?",
        err);
    if (!s) {
        rc = err->code;
        store_rollback(ws->st);
        goto out;
    }
    store_bind_text(s, 1, config);
    store_bind_text(s, 2, refs);
    store_bind_text(s, 3, facts);
    store_bind_text(s, 4, json_string_value(json_object_get(r, "provisioning_state")));
    store_bind_text(s, 5, json_string_value(json_object_get(r, "provisioning_errors")));
    sqlite3_bind_int64(s, 6, now);
    if (insert) {
        sqlite3_bind_int64(s, 7, now);
        store_bind_text(s, 8, name);
        store_bind_text(s, 9, json_string_value(json_object_get(r, "type")));
        store_bind_text(s, 10, json_string_value(json_object_get(r, "origin")));
    } else {
        store_bind_text(s, 7, name);
    }
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE)
        rc = store_fail(ws->st, err, "cannot save the target");
    if (!rc)
        rc = write_identities(ws, name, ids, err);
    if (!rc)
        rc = write_secrets(ws, name, rt->t->secret_refs, pending, err);
    if (rc) {
        store_rollback(ws->st);
        if (rc == CTARGET_E_EXISTS) /* lost a race: say exactly what collided */
            conflict_message(ws, name, ids, insert ? NULL : name, err);
        goto out;
    }
    rc = store_commit(ws->st, err);
    if (!rc)
        json_object_set_new(r, "stored", json_true());
out:
    json_decref(ids);
    free(config);
    free(refs);
    free(facts);
    return rc;
}

static ctarget_status set_state(ctarget_ws *ws, reg_target *rt, ctarget_prov_state state,
                                const char *errors, ctarget_error *err)
{
    json_object_set_new(rt->rec, "provisioning_state", json_string(prov_state_name(state)));
    json_object_set_new(rt->rec, "provisioning_errors", json_string(errors ? errors : ""));
    if (!json_is_true(json_object_get(rt->rec, "stored")))
        return CTARGET_OK;
    sqlite3_stmt *s = store_prepare(ws->st, "UPDATE targets SET provisioning_state=?,"
                                    " provisioning_errors=?, facts=?, updated_at=? WHERE name=?",
                                    err);
    if (!s)
        return err->code;
    char *facts = json_dumps(json_object_get(rt->rec, "facts"), JSON_COMPACT | JSON_SORT_KEYS);
    store_bind_text(s, 1, prov_state_name(state));
    store_bind_text(s, 2, errors ? errors : "");
    store_bind_text(s, 3, facts);
    sqlite3_bind_int64(s, 4, time_now_ms());
    store_bind_text(s, 5, json_string_value(json_object_get(rt->rec, "name")));
    ctarget_status rc = sqlite3_step(s) == SQLITE_DONE ? CTARGET_OK
                                                       : store_fail(ws->st, err, "cannot save state");
    sqlite3_finalize(s);
    free(facts);
    return rc;
}

static ctarget_status remove_target(ctarget_ws *ws, const char *name, ctarget_error *err)
{
    ctarget_status rc = store_begin(ws->st, err);
    if (rc)
        return rc;
    sqlite3_stmt *s = store_prepare(ws->st, "DELETE FROM targets WHERE name=?", err);
    if (!s) {
        store_rollback(ws->st);
        return err->code;
    }
    store_bind_text(s, 1, name);
    int step = sqlite3_step(s);
    sqlite3_finalize(s);
    if (step != SQLITE_DONE)
        rc = store_fail(ws->st, err, "cannot remove the target");
    if (!rc)
        rc = delete_secrets(ws, name, err);
    if (rc) {
        store_rollback(ws->st);
        return rc;
    }
    return store_commit(ws->st, err);
}

/* ---- plugin calls ----------------------------------------------------------------------- */

static ctarget_status live_status(reg_target *rt, ctarget_call *call, ctarget_compute_state *st,
                                  json_t *details, ctarget_error *err)
{
    memset(st, 0, sizeof *st);
    st->struct_size = sizeof *st;
    ctarget_error perr;
    ctarget_error_init(&perr);
    plugin_lock(rt->pl);
    ctarget_status rc = rt->pl->compute.status(rt->pl->ctx, call, rt->t, st, json_obj(details),
                                               &perr);
    plugin_unlock(rt->pl);
    st->state[sizeof st->state - 1] = '\0';
    st->errors[sizeof st->errors - 1] = '\0';
    return plugin_failure(rt->pl->name, "status", rc, &perr, err);
}

static long poll_interval_ms(void)
{
    const char *e = getenv("CTARGET_POLL_INTERVAL_MS");
    long long v;
    if (e && parse_ll(e, &v) == 0 && v > 0 && v < 600000)
        return (long)v;
    return 2000;
}

/* Follow provisioning until it settles; progress at every change of state. */
static ctarget_status wait_settled(ctarget_ws *ws, reg_target *rt, ctarget_call *call,
                                   long timeout_s, ctarget_error *err)
{
    const char *name = rt->t->name;
    int64_t deadline = time_mono_ns() + (int64_t)(timeout_s > 0 ? timeout_s : 3600) * 1000000000;
    char last[128] = "";
    for (uint64_t polls = 1;; polls++) {
        ctarget_compute_state st;
        json_t *details = json_object();
        ctarget_status rc = live_status(rt, call, &st, details, err);
        json_decref(details);
        if (rc)
            return rc;
        char now[128];
        snprintf(now, sizeof now, "%s%s%s", prov_state_name(st.provisioning_state),
                 st.state[0] ? ", " : "", st.state);
        if (strcmp(now, last)) {
            char *phase = xasprintf("%s: %s", name, now);
            progress_report(phase, 0, 0);
            free(phase);
            snprintf(last, sizeof last, "%s", now);
            if ((rc = set_state(ws, rt, st.provisioning_state, st.errors, err)))
                return rc;
        }
        if (!prov_transitional(st.provisioning_state)) {
            if (st.provisioning_state == CTARGET_PROV_FAILED) {
                ct_err(err, CTARGET_E_FAILED, "provisioning of %s failed: %s", name,
                       st.errors[0] ? st.errors : "the backend gave no reason");
                return CTARGET_E_FAILED;
            }
            if (st.provisioning_state == CTARGET_PROV_CANCELED) {
                ct_err(err, CTARGET_E_CANCELED, "provisioning of %s was canceled", name);
                return CTARGET_E_CANCELED;
            }
            return CTARGET_OK;
        }
        if (time_mono_ns() > deadline) {
            ct_err(err, CTARGET_E_TIMEOUT, "%s is still %s after %ld s; it goes on in the "
                   "background: follow it with `ctarget compute status %s --wait`", name,
                   prov_state_name(st.provisioning_state), timeout_s > 0 ? timeout_s : 3600,
                   name);
            return CTARGET_E_TIMEOUT;
        }
        if (host_table()->sleep_ms(call, poll_interval_ms()) != CTARGET_OK) {
            ct_err(err, CTARGET_E_CANCELED, "stopped waiting; %s goes on provisioning: follow "
                   "it with `ctarget compute status %s --wait`", name, name);
            return CTARGET_E_CANCELED;
        }
    }
}

/* ---- public API ------------------------------------------------------------------------- */

static const ctarget_compute_opts no_opts = {sizeof(ctarget_compute_opts), NULL, 0, 0, 0, 0};

static const ctarget_compute_opts *opts_or_default(const ctarget_compute_opts *o)
{
    return o && o->struct_size >= sizeof(ctarget_compute_opts) ? o : &no_opts;
}

static ctarget_status refuse_verb(plugin *pl, ctarget_verb verb, ctarget_error *err)
{
    uint64_t caps = pl->d.capabilities;
    if (verb == CTARGET_VERB_CREATE && !(caps & CTARGET_CAP_CREATE)) {
        if (caps & CTARGET_CAP_ATTACH)
            ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets cannot be created by ctarget: attach "
                   "an existing one with `ctarget compute attach NAME --type %s ...`",
                   pl->name, pl->name);
        else if (caps & CTARGET_CAP_IMPLICIT)
            ct_err(err, CTARGET_E_UNSUPPORTED, "the %s target is built in and always present: "
                   "use it as --target %s", pl->name, pl->name);
        else
            ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets are neither created nor attached: "
                   "they are set up by each run (see `ctarget compute help %s`)", pl->name,
                   pl->name);
        return CTARGET_E_UNSUPPORTED;
    }
    if (verb == CTARGET_VERB_ATTACH && !(caps & CTARGET_CAP_ATTACH)) {
        if (caps & CTARGET_CAP_CREATE)
            ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets cannot be attached: ctarget creates "
                   "what they run on itself (there is nothing existing to attach); create one "
                   "with `ctarget compute create NAME --type %s ...`", pl->name, pl->name);
        else if (caps & CTARGET_CAP_IMPLICIT)
            ct_err(err, CTARGET_E_UNSUPPORTED, "the %s target is built in and always present: "
                   "use it as --target %s", pl->name, pl->name);
        else
            ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets cannot be attached: they are set up "
                   "by each run (see `ctarget compute help %s`)", pl->name, pl->name);
        return CTARGET_E_UNSUPPORTED;
    }
    return CTARGET_OK;
}

static ctarget_status add_target(ctarget_ws *ws, const char *name, const char *type,
                                 ctarget_verb verb, const ctarget_compute_opts *opts,
                                 char **json, ctarget_error *err)
{
    opts = opts_or_default(opts);
    if (json)
        *json = NULL;
    if (!name || !type) {
        ct_err(err, CTARGET_E_USAGE, "a target needs a name and a --type");
        return CTARGET_E_USAGE;
    }
    plugin *pl;
    ctarget_status rc = loader_find(type, &pl, err);
    if (rc)
        return rc;
    if ((rc = refuse_verb(pl, verb, err)) || (rc = keys_check_name(pl, name, err)))
        return rc;
    const char *origin = verb == CTARGET_VERB_CREATE ? "created" : "attached";
    json_t *pending = json_object();
    reg_target *rt = xcalloc(1, sizeof *rt);
    rt->pl = pl;
    rt->t = target_new(pl, ws->st, ws->dir, name, origin);
    rt->rec = json_pack("{s:s, s:s, s:s, s:{}, s:s, s:s, s:b}", "name", name, "type", pl->name,
                        "origin", origin, "facts", "provisioning_state",
                        verb == CTARGET_VERB_CREATE ? "Creating" : "Succeeded",
                        "provisioning_errors", "", "stored", 0);
    json_t *ids = NULL;
    if ((rc = keys_apply(pl, verb, origin, opts->settings, opts->n_settings, rt->t->config,
                         rt->t->secret_refs, pending, err)) ||
        (rc = keys_check_required(pl, verb, origin, rt->t->config, rt->t->secret_refs, pending,
                                  err)))
        goto out;
    json_object_update(rt->t->pending, pending);
    if ((rc = loader_init_plugin(pl, err)))
        goto out;
    char what[160];
    snprintf(what, sizeof what, "%s %s", pl->name, name);
    ctarget_call call;
    call_init(&call, what);
    call.accept_new_host_key = opts->accept_new_host_key;
    ctarget_error perr;
    ctarget_error_init(&perr);
    plugin_lock(pl);
    rc = pl->compute.validate(pl->ctx, &call, rt->t, verb, &perr);
    plugin_unlock(pl);
    if ((rc = plugin_failure(pl->name, "validate", rc, &perr, err)))
        goto out;
    ids = keys_identities(pl, rt->t->config);
    if ((rc = conflict_message(ws, name, ids, NULL, err)))
        goto out;

    json_t *facts = json_object_get(rt->rec, "facts");
    if (verb == CTARGET_VERB_ATTACH) {
        /* verify first: a target that cannot be reached is never recorded */
        ctarget_error_init(&perr);
        plugin_lock(pl);
        rc = pl->compute.attach(pl->ctx, &call, rt->t, json_obj(facts), &perr);
        plugin_unlock(pl);
        if ((rc = plugin_failure(pl->name, "attach", rc, &perr, err)))
            goto out;
        rc = save(ws, rt, pending, 1, err);
        goto out;
    }
    /* create: record first, so a resource that comes into existence is never untracked */
    if ((rc = save(ws, rt, pending, 1, err)))
        goto out;
    ctarget_error_init(&perr);
    plugin_lock(pl);
    rc = pl->compute.create(pl->ctx, &call, rt->t, json_obj(facts), &perr);
    plugin_unlock(pl);
    if (rc) {
        plugin_failure(pl->name, "create", rc, &perr, err);
        ctarget_error e2;
        ctarget_error_init(&e2);
        remove_target(ws, name, &e2); /* the plugin contract: a failed create left nothing */
        goto out;
    }
    /* learn the state create left behind, then follow it if asked */
    ctarget_compute_state st;
    json_t *details = json_object();
    rc = live_status(rt, &call, &st, details, err);
    json_decref(details);
    if (!rc)
        rc = set_state(ws, rt, st.provisioning_state, st.errors, err);
    if (!rc && opts->wait)
        rc = wait_settled(ws, rt, &call, opts->wait_timeout_s, err);
    else if (!rc && st.provisioning_state == CTARGET_PROV_FAILED) {
        ct_err(err, CTARGET_E_FAILED, "provisioning of %s failed: %s", name,
               st.errors[0] ? st.errors : "the backend gave no reason");
        rc = CTARGET_E_FAILED;
    }
out:
    if (json && (rc == CTARGET_OK || json_is_true(json_object_get(rt->rec, "stored")))) {
        json_t *j = reg_render(rt);
        *json = json_out(j);
        json_decref(j);
    }
    json_decref(ids);
    json_decref(pending);
    reg_target_free(rt);
    return rc;
}

ctarget_status ctarget_compute_create(ctarget_ws *ws, const char *name, const char *type,
                                      const ctarget_compute_opts *opts, char **json,
                                      ctarget_error *err)
{
    return add_target(ws, name, type, CTARGET_VERB_CREATE, opts, json, err);
}

ctarget_status ctarget_compute_attach(ctarget_ws *ws, const char *name, const char *type,
                                      const ctarget_compute_opts *opts, char **json,
                                      ctarget_error *err)
{
    return add_target(ws, name, type, CTARGET_VERB_ATTACH, opts, json, err);
}

ctarget_status ctarget_compute_list(ctarget_ws *ws, char **json, ctarget_error *err)
{
    *json = NULL;
    json_t *arr = json_array();
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT name FROM targets", err);
    if (!s) {
        json_decref(arr);
        return err->code;
    }
    json_t *names = json_array();
    while (sqlite3_step(s) == SQLITE_ROW)
        json_array_append_new(names, json_string((const char *)sqlite3_column_text(s, 0)));
    sqlite3_finalize(s);
    /* implicit targets that have no row yet */
    size_t n;
    plugin **all = loader_all(&n);
    for (size_t i = 0; i < n; i++) {
        if (all[i]->reason || !(all[i]->d.capabilities & CTARGET_CAP_IMPLICIT))
            continue;
        int have = 0;
        size_t j;
        json_t *v;
        json_array_foreach(names, j, v) have |= !str_casecmp_ascii(json_string_value(v),
                                                                    all[i]->name);
        if (!have)
            json_array_append_new(names, json_string(all[i]->name));
    }
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v) {
        reg_target *rt;
        ctarget_error e;
        ctarget_error_init(&e);
        if (reg_load(ws, json_string_value(v), 0, &rt, &e) != CTARGET_OK)
            continue;
        json_t *full = reg_render(rt);
        json_t *row = json_pack("{s:O, s:O, s:O, s:O, s:O}", "name", json_object_get(full, "name"),
                                "type", json_object_get(full, "type"), "origin",
                                json_object_get(full, "origin"), "provisioning_state",
                                json_object_get(full, "provisioning_state"), "created_at",
                                json_object_get(full, "created_at"));
        json_object_set_new(row, "available", json_boolean(rt->pl != NULL));
        json_array_append_new(arr, row);
        json_decref(full);
        reg_target_free(rt);
    }
    json_decref(names);
    /* sorted by name, case-insensitively */
    size_t cnt = json_array_size(arr);
    for (size_t a = 1; a < cnt; a++)
        for (size_t b = a; b > 0; b--) {
            json_t *x = json_array_get(arr, b - 1), *y = json_array_get(arr, b);
            if (str_casecmp_ascii(json_string_value(json_object_get(x, "name")),
                                  json_string_value(json_object_get(y, "name"))) <= 0)
                break;
            json_incref(x);
            json_array_set(arr, b - 1, y);
            json_array_set_new(arr, b, x);
        }
    *json = json_out(arr);
    json_decref(arr);
    return CTARGET_OK;
}

/* Load a target whose plugin must be present and initialised. */
static ctarget_status load_ready(ctarget_ws *ws, const char *name, reg_target **rt,
                                 ctarget_error *err)
{
    ctarget_status rc = reg_load(ws, name, 1, rt, err);
    if (rc)
        return rc;
    if ((rc = loader_init_plugin((*rt)->pl, err))) {
        reg_target_free(*rt);
        *rt = NULL;
    }
    return rc;
}

ctarget_status ctarget_compute_show(ctarget_ws *ws, const char *name, char **json,
                                    ctarget_error *err)
{
    *json = NULL;
    reg_target *rt;
    ctarget_status rc = reg_load(ws, name, 0, &rt, err);
    if (rc)
        return rc;
    /* an implicit target has nothing stored to show: ask the plugin about the machine */
    if (!strcmp(json_string_value(json_object_get(rt->rec, "origin")), "implicit") &&
        loader_init_plugin(rt->pl, err) == CTARGET_OK) {
        ctarget_call call;
        call_init(&call, rt->pl->name);
        ctarget_compute_state st;
        json_t *facts = json_object_get(rt->rec, "facts");
        if ((rc = live_status(rt, &call, &st, facts, err))) {
            reg_target_free(rt);
            return rc;
        }
    }
    json_t *j = reg_render(rt);
    *json = json_out(j);
    json_decref(j);
    reg_target_free(rt);
    return CTARGET_OK;
}

ctarget_status ctarget_compute_status(ctarget_ws *ws, const char *name, char **json,
                                      ctarget_error *err)
{
    return ctarget_compute_status_wait(ws, name, NULL, json, err);
}

ctarget_status ctarget_compute_status_wait(ctarget_ws *ws, const char *name,
                                           const ctarget_compute_opts *opts, char **json,
                                           ctarget_error *err)
{
    opts = opts_or_default(opts);
    *json = NULL;
    reg_target *rt;
    ctarget_status rc = load_ready(ws, name, &rt, err);
    if (rc)
        return rc;
    char what[160];
    snprintf(what, sizeof what, "%s %s", rt->pl->name, rt->t->name);
    ctarget_call call;
    call_init(&call, what);
    if (opts->wait && (rc = wait_settled(ws, rt, &call, opts->wait_timeout_s, err)) &&
        rc != CTARGET_E_FAILED) {
        reg_target_free(rt);
        return rc;
    }
    ctarget_status waited = rc;
    ctarget_compute_state st;
    json_t *details = json_object();
    rc = live_status(rt, &call, &st, details, err);
    if (rc) {
        json_decref(details);
        reg_target_free(rt);
        return rc;
    }
    if (json_is_true(json_object_get(rt->rec, "stored")) &&
        strcmp(prov_state_name(st.provisioning_state),
               json_string_value(json_object_get(rt->rec, "provisioning_state"))))
        set_state(ws, rt, st.provisioning_state, st.errors, err);
    json_t *j = reg_render(rt);
    json_object_set_new(j, "live",
                        json_pack("{s:s, s:s, s:s, s:o}", "provisioning_state",
                                  prov_state_name(st.provisioning_state), "state", st.state,
                                  "errors", st.errors, "details", details));
    *json = json_out(j);
    json_decref(j);
    reg_target_free(rt);
    if (waited == CTARGET_E_FAILED) {
        ct_err(err, CTARGET_E_FAILED, "provisioning of %s failed: %s", name,
               st.errors[0] ? st.errors : "the backend gave no reason");
        return CTARGET_E_FAILED;
    }
    return CTARGET_OK;
}

ctarget_status ctarget_compute_update(ctarget_ws *ws, const char *name,
                                      const ctarget_compute_opts *opts, char **json,
                                      ctarget_error *err)
{
    opts = opts_or_default(opts);
    *json = NULL;
    reg_target *rt;
    ctarget_status rc = load_ready(ws, name, &rt, err);
    if (rc)
        return rc;
    plugin *pl = rt->pl;
    const char *origin = json_string_value(json_object_get(rt->rec, "origin"));
    json_t *pending = json_object();
    if (!opts->n_settings) {
        ct_err(err, CTARGET_E_USAGE, "nothing to update: give --set KEY=VALUE");
        rc = CTARGET_E_USAGE;
        goto out;
    }
    if (!pl->compute.update) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets cannot be updated in place: detach or "
               "delete %s and add it again with the new settings", pl->name, rt->t->name);
        rc = CTARGET_E_UNSUPPORTED;
        goto out;
    }
    if ((rc = keys_apply(pl, CTARGET_VERB_UPDATE, origin, opts->settings, opts->n_settings,
                         rt->t->config, rt->t->secret_refs, pending, err)) ||
        (rc = keys_check_required(pl, CTARGET_VERB_UPDATE, origin, rt->t->config,
                                  rt->t->secret_refs, pending, err)))
        goto out;
    json_object_update(rt->t->pending, pending);
    char what[160];
    snprintf(what, sizeof what, "%s %s", pl->name, rt->t->name);
    ctarget_call call;
    call_init(&call, what);
    call.accept_new_host_key = opts->accept_new_host_key;
    ctarget_error perr;
    ctarget_error_init(&perr);
    plugin_lock(pl);
    rc = pl->compute.validate(pl->ctx, &call, rt->t, CTARGET_VERB_UPDATE, &perr);
    plugin_unlock(pl);
    if ((rc = plugin_failure(pl->name, "validate", rc, &perr, err)))
        goto out;
    json_t *ids = keys_identities(pl, rt->t->config);
    rc = conflict_message(ws, rt->t->name, ids, rt->t->name, err);
    json_decref(ids);
    if (rc)
        goto out;
    ctarget_error_init(&perr);
    plugin_lock(pl);
    rc = pl->compute.update(pl->ctx, &call, rt->t, &perr);
    plugin_unlock(pl);
    if ((rc = plugin_failure(pl->name, "update", rc, &perr, err)))
        goto out;
    int insert = !json_is_true(json_object_get(rt->rec, "stored"));
    if ((rc = save(ws, rt, pending, insert, err)))
        goto out;
    json_t *j = reg_render(rt);
    *json = json_out(j);
    json_decref(j);
out:
    json_decref(pending);
    reg_target_free(rt);
    return rc;
}

ctarget_status ctarget_compute_power(ctarget_ws *ws, const char *name,
                                     ctarget_power_action action,
                                     const ctarget_compute_opts *opts, char **json,
                                     ctarget_error *err)
{
    (void)opts;
    *json = NULL;
    static const char *const verbs[] = {"start", "stop", "restart"};
    if ((unsigned)action > CTARGET_POWER_RESTART) {
        ct_err(err, CTARGET_E_USAGE, "unknown power action %d", (int)action);
        return CTARGET_E_USAGE;
    }
    reg_target *rt;
    ctarget_status rc = load_ready(ws, name, &rt, err);
    if (rc)
        return rc;
    plugin *pl = rt->pl;
    ctarget_status (*op)(void *, ctarget_call *, ctarget_target *, ctarget_error *) =
        action == CTARGET_POWER_START ? pl->compute.start
        : action == CTARGET_POWER_STOP ? pl->compute.stop : pl->compute.restart;
    if (!op) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets cannot be %sed: %s has no power "
               "control (compute instances do; clusters scale by themselves)", pl->name,
               action == CTARGET_POWER_STOP ? "stopp" : verbs[action], rt->t->name);
        reg_target_free(rt);
        return CTARGET_E_UNSUPPORTED;
    }
    char what[160];
    snprintf(what, sizeof what, "%s %s", pl->name, rt->t->name);
    ctarget_call call;
    call_init(&call, what);
    ctarget_error perr;
    ctarget_error_init(&perr);
    plugin_lock(pl);
    rc = op(pl->ctx, &call, rt->t, &perr);
    plugin_unlock(pl);
    if (!(rc = plugin_failure(pl->name, verbs[action], rc, &perr, err))) {
        ctarget_compute_state st;
        json_t *details = json_object();
        if (!(rc = live_status(rt, &call, &st, details, err))) {
            set_state(ws, rt, st.provisioning_state, st.errors, err);
            json_t *j = reg_render(rt);
            json_object_set_new(j, "live", json_pack("{s:s, s:s, s:O}", "provisioning_state",
                                                     prov_state_name(st.provisioning_state),
                                                     "state", st.state, "details", details));
            *json = json_out(j);
            json_decref(j);
        }
        json_decref(details);
    }
    reg_target_free(rt);
    return rc;
}

ctarget_status ctarget_compute_nodes(ctarget_ws *ws, const char *name, char **json,
                                     ctarget_error *err)
{
    *json = NULL;
    reg_target *rt;
    ctarget_status rc = load_ready(ws, name, &rt, err);
    if (rc)
        return rc;
    plugin *pl = rt->pl;
    if (!pl->compute.list_nodes) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "%s targets do not report nodes", pl->name);
        reg_target_free(rt);
        return CTARGET_E_UNSUPPORTED;
    }
    char what[160];
    snprintf(what, sizeof what, "%s %s", pl->name, rt->t->name);
    ctarget_call call;
    call_init(&call, what);
    json_t *out = json_object();
    json_object_set_new(out, "nodes", json_array());
    ctarget_error perr;
    ctarget_error_init(&perr);
    plugin_lock(pl);
    rc = pl->compute.list_nodes(pl->ctx, &call, rt->t, json_obj(out), &perr);
    plugin_unlock(pl);
    if (!(rc = plugin_failure(pl->name, "list_nodes", rc, &perr, err)))
        *json = json_out(json_object_get(out, "nodes"));
    json_decref(out);
    reg_target_free(rt);
    return rc;
}

static ctarget_status forget(ctarget_ws *ws, reg_target *rt, ctarget_error *err)
{
    ctarget_status rc = remove_target(ws, rt->t->name, err);
    if (!rc) {
        char *dir = xasprintf("%s/plugins/%s/%s", ws->dir, rt->pl->name, rt->t->name);
        rm_rf(dir);
        free(dir);
    }
    return rc;
}

ctarget_status ctarget_compute_detach(ctarget_ws *ws, const char *name, ctarget_error *err)
{
    reg_target *rt;
    ctarget_status rc = load_ready(ws, name, &rt, err);
    if (rc)
        return rc;
    const char *origin = json_string_value(json_object_get(rt->rec, "origin"));
    if (!strcmp(origin, "implicit")) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "the %s target is built in and cannot be detached",
               rt->t->name);
        reg_target_free(rt);
        return CTARGET_E_UNSUPPORTED;
    }
    if ((rc = reg_check_idle(ws, rt->t->name, "detach", err))) {
        reg_target_free(rt);
        return rc;
    }
    if (!strcmp(origin, "created"))
        log_msg(CTARGET_LOG_WARN, "%s was created by ctarget; detaching forgets it but leaves "
                "the resource running (and billing): `ctarget compute delete` destroys it",
                rt->t->name);
    if (rt->pl->compute.detach) {
        char what[160];
        snprintf(what, sizeof what, "%s %s", rt->pl->name, rt->t->name);
        ctarget_call call;
        call_init(&call, what);
        ctarget_error perr;
        ctarget_error_init(&perr);
        plugin_lock(rt->pl);
        rc = rt->pl->compute.detach(rt->pl->ctx, &call, rt->t, &perr);
        plugin_unlock(rt->pl);
        if ((rc = plugin_failure(rt->pl->name, "detach", rc, &perr, err))) {
            reg_target_free(rt);
            return rc;
        }
    }
    rc = forget(ws, rt, err);
    reg_target_free(rt);
    return rc;
}

ctarget_status ctarget_compute_delete(ctarget_ws *ws, const char *name,
                                      const ctarget_compute_opts *opts, ctarget_error *err)
{
    (void)opts;
    reg_target *rt;
    ctarget_status rc = load_ready(ws, name, &rt, err);
    if (rc)
        return rc;
    const char *origin = json_string_value(json_object_get(rt->rec, "origin"));
    if (!strcmp(origin, "implicit")) {
        ct_err(err, CTARGET_E_UNSUPPORTED, "the %s target is built in and cannot be deleted",
               rt->t->name);
        rc = CTARGET_E_UNSUPPORTED;
    } else if (!strcmp(origin, "attached")) {
        ct_err(err, CTARGET_E_STATE, "%s was attached, not created by ctarget, so ctarget will "
               "not destroy it: `ctarget compute detach %s` forgets it and leaves the machine "
               "alone", rt->t->name, rt->t->name);
        rc = CTARGET_E_STATE;
    } else {
        rc = reg_check_idle(ws, rt->t->name, "delete", err);
    }
    if (rc) {
        reg_target_free(rt);
        return rc;
    }
    char *prev = xstrdup(json_string_value(json_object_get(rt->rec, "provisioning_state")));
    char what[160];
    snprintf(what, sizeof what, "%s %s", rt->pl->name, rt->t->name);
    ctarget_call call;
    call_init(&call, what);
    if (!(rc = set_state(ws, rt, CTARGET_PROV_DELETING, NULL, err))) {
        ctarget_error perr;
        ctarget_error_init(&perr);
        plugin_lock(rt->pl);
        rc = rt->pl->compute.delete_(rt->pl->ctx, &call, rt->t, &perr);
        plugin_unlock(rt->pl);
        if ((rc = plugin_failure(rt->pl->name, "delete", rc, &perr, err))) {
            /* still there: put the record back as it was */
            ctarget_error e2;
            ctarget_error_init(&e2);
            json_object_set_new(rt->rec, "provisioning_state", json_string(prev));
            sqlite3_stmt *s = store_prepare(ws->st, "UPDATE targets SET provisioning_state=?"
                                            " WHERE name=?", &e2);
            if (s) {
                store_bind_text(s, 1, prev);
                store_bind_text(s, 2, rt->t->name);
                sqlite3_step(s);
                sqlite3_finalize(s);
            }
        } else {
            rc = forget(ws, rt, err);
        }
    }
    free(prev);
    reg_target_free(rt);
    return rc;
}

ctarget_status reg_check_idle(ctarget_ws *ws, const char *name, const char *verb,
                              ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT id, status FROM runs WHERE target=? AND"
                                            " status NOT IN ('Completed', 'Failed', 'Canceled',"
                                            " 'Finished') ORDER BY id LIMIT 1", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, name);
    ctarget_status rc = CTARGET_OK;
    if (sqlite3_step(s) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 0);
        ct_err(err, CTARGET_E_STATE, "cannot %s %s: run %s is %s on it (wait for it to end, or "
               "`ctarget run cancel %s`)", verb, name, id,
               (const char *)sqlite3_column_text(s, 1), id);
        rc = CTARGET_E_STATE;
    }
    sqlite3_finalize(s);
    return rc;
}
