#include "config.h"

#include "keys.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "loader.h"
#include "util.h"

static const char *verb_doing(ctarget_verb v)
{
    return v == CTARGET_VERB_CREATE ? "creating" : v == CTARGET_VERB_ATTACH ? "attaching"
                                                                             : "updating";
}

const ctarget_config_key *keys_find(const plugin *pl, const char *name)
{
    for (size_t i = 0; i < pl->n_keys; i++)
        if (!strcmp(pl->keys[i].name, name))
            return &pl->keys[i];
    return NULL;
}

static char *key_list(const plugin *pl)
{
    strbuf sb;
    sb_init(&sb);
    for (size_t i = 0; i < pl->n_keys; i++)
        sb_addf(&sb, "%s%s", i ? ", " : "", pl->keys[i].name);
    return sb_detach(&sb);
}

static ctarget_status unknown_key(const plugin *pl, const char *key, ctarget_error *err)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < pl->n_keys; i++) {
        size_t d = str_edit_distance(key, pl->keys[i].name);
        if (d < best_d) {
            best_d = d;
            best = pl->keys[i].name;
        }
    }
    size_t limit = strlen(key) / 3 + 1;
    if (limit < 2)
        limit = 2;
    if (best_d > limit && strlen(key) >= 4) {
        /* a truncated name ("private_key" for "private_key_file") is a slip too: suggest
         * the shortest key it begins */
        for (size_t i = 0; i < pl->n_keys; i++) {
            const char *kn = pl->keys[i].name;
            if (!strncasecmp(kn, key, strlen(key)) &&
                (best_d > limit || strlen(kn) < strlen(best))) {
                best = kn;
                best_d = 0;
            }
        }
    }
    if (!pl->n_keys)
        ct_err(err, CTARGET_E_CONFIG, "unknown setting '%s': target type %s takes no settings",
               key, pl->name);
    else if (best && best_d <= limit)
        ct_err(err, CTARGET_E_CONFIG,
               "unknown setting '%s' for target type %s: did you mean '%s'? "
               "(see `ctarget compute help %s`)", key, pl->name, best, pl->name);
    else {
        char *all = key_list(pl);
        ct_err(err, CTARGET_E_CONFIG,
               "unknown setting '%s' for target type %s; valid settings: %s", key, pl->name,
               all);
        free(all);
    }
    return CTARGET_E_CONFIG;
}

static int valid_env_name(const char *s)
{
    if (!*s || isdigit((unsigned char)*s))
        return 0;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_'))
            return 0;
    return 1;
}

/* Check and normalise one non-secret value.  Returns the stored text or NULL (err set). */
static char *normalise(const plugin *pl, const ctarget_config_key *k, const char *v,
                       ctarget_error *err)
{
    long long ll;
    double d;
    int b;
    switch (k->type) {
    case CTARGET_KEY_INT:
        if (parse_ll(v, &ll) != 0) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s='%s' is not an integer (%s expects a "
                   "whole number for %s)", k->name, v, pl->name, k->name);
            return NULL;
        }
        if (k->min < k->max && (ll < k->min || ll > k->max)) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s=%lld is out of range: %s expects "
                   "%lld to %lld", k->name, ll, pl->name, k->min, k->max);
            return NULL;
        }
        return xasprintf("%lld", ll);
    case CTARGET_KEY_NUMBER:
        if (parse_double(v, &d) != 0) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s='%s' is not a number", k->name, v);
            return NULL;
        }
        if (k->min < k->max && (d < (double)k->min || d > (double)k->max)) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s=%s is out of range: %s expects %lld "
                   "to %lld", k->name, v, pl->name, k->min, k->max);
            return NULL;
        }
        return xstrdup(v);
    case CTARGET_KEY_BOOL:
        if (parse_bool(v, &b) != 0) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s='%s' is not a boolean: use true or "
                   "false", k->name, v);
            return NULL;
        }
        return xstrdup(b ? "true" : "false");
    case CTARGET_KEY_ENUM: {
        char *choices = xstrdup(k->choices), *save = NULL, *out = NULL;
        for (char *c = strtok_r(choices, "|", &save); c; c = strtok_r(NULL, "|", &save))
            if (!str_casecmp_ascii(c, v)) {
                out = xstrdup(c);
                break;
            }
        free(choices);
        if (!out)
            ct_err(err, CTARGET_E_CONFIG, "setting %s='%s' is not one of %s", k->name, v,
                   k->choices);
        return out;
    }
    case CTARGET_KEY_PATH: {
        if (access(v, R_OK) != 0) {
            ct_err_errno(err, CTARGET_E_CONFIG, errno, "setting %s: cannot read %s", k->name,
                         v);
            return NULL;
        }
        /* stored absolute: it is used later from other working directories */
        char *abs = realpath(v, NULL);
        return abs ? abs : xstrdup(v);
    }
    case CTARGET_KEY_LIST: {
        strbuf sb;
        sb_init(&sb);
        char *copy = xstrdup(v), *save = NULL;
        for (char *it = strtok_r(copy, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
            while (isspace((unsigned char)*it))
                it++;
            size_t l = strlen(it);
            while (l && isspace((unsigned char)it[l - 1]))
                l--;
            if (!l)
                continue;
            if (sb.len)
                sb_addc(&sb, ',');
            sb_add(&sb, it, l);
        }
        free(copy);
        return sb_detach(&sb);
    }
    case CTARGET_KEY_STRING:
    default:
        for (const char *p = v; *p; p++)
            if ((unsigned char)*p < 0x20) {
                ct_err(err, CTARGET_E_CONFIG, "setting %s contains a control character",
                       k->name);
                return NULL;
            }
        return xstrdup(v);
    }
}

/* A secret may be given as a reference resolved at use: env:VAR or file:PATH. */
static ctarget_status secret_ref(const ctarget_config_key *k, const char *v, char **ref,
                                 ctarget_error *err)
{
    *ref = NULL;
    if (str_startswith(v, "env:")) {
        if (!valid_env_name(v + 4)) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s: '%s' is not a valid environment "
                   "variable name", k->name, v + 4);
            return CTARGET_E_CONFIG;
        }
        *ref = xstrdup(v);
    } else if (str_startswith(v, "file:")) {
        if (!v[5]) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s: file: needs a path", k->name);
            return CTARGET_E_CONFIG;
        }
        char *abs = realpath(v + 5, NULL);
        if (!abs) {
            ct_err_errno(err, CTARGET_E_CONFIG, errno, "setting %s: cannot resolve %s",
                         k->name, v + 5);
            return CTARGET_E_CONFIG;
        }
        *ref = xasprintf("file:%s", abs);
        free(abs);
    }
    return CTARGET_OK;
}

ctarget_status keys_apply(const plugin *pl, ctarget_verb verb, const char *origin,
                          const ctarget_setting *settings, size_t n, json_t *config,
                          json_t *refs, json_t *pending, ctarget_error *err)
{
    json_t *cfg = json_deep_copy(config), *rf = json_deep_copy(refs), *pd = json_object();
    ctarget_status rc = CTARGET_OK;
    for (size_t i = 0; i < n && rc == CTARGET_OK; i++) {
        const char *key = settings[i].key, *val = settings[i].value ? settings[i].value : "";
        const ctarget_config_key *k = keys_find(pl, key);
        if (!k) {
            rc = unknown_key(pl, key, err);
            break;
        }
        int creating = verb == CTARGET_VERB_CREATE ||
                       (verb == CTARGET_VERB_UPDATE && !strcmp(origin, "created"));
        if ((k->flags & CTARGET_KEY_CREATE_ONLY) && !creating) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s only applies to %s targets that ctarget "
                   "creates, not to attached ones", key, pl->name);
            rc = CTARGET_E_CONFIG;
            break;
        }
        if ((k->flags & CTARGET_KEY_ATTACH_ONLY) && creating) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s only applies when attaching an existing "
                   "%s target, not when creating one", key, pl->name);
            rc = CTARGET_E_CONFIG;
            break;
        }
        if ((k->flags & CTARGET_KEY_IMMUTABLE) && verb == CTARGET_VERB_UPDATE) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s cannot be changed once the target exists: "
                   "delete or detach it and set it again", key);
            rc = CTARGET_E_CONFIG;
            break;
        }
        /* values are stored as JSON strings: one that is not UTF-8 text would be dropped
         * without a word (json_string() refuses it), and a secret's reference would then
         * point at nothing */
        json_t *probe = json_string(val);
        if (!probe) {
            ct_err(err, CTARGET_E_CONFIG, "setting %s: the value is not valid UTF-8 text; "
                   "give it in UTF-8", key);
            rc = CTARGET_E_CONFIG;
            break;
        }
        json_decref(probe);
        if (!*val) { /* unset */
            json_object_del(cfg, key);
            json_object_del(rf, key);
            json_object_del(pd, key);
            continue;
        }
        if (k->flags & CTARGET_KEY_SECRET) {
            char *ref;
            if ((rc = secret_ref(k, val, &ref, err)))
                break;
            json_object_del(pd, key);
            if (ref) {
                /* (a file: reference is resolved: the real path may not be UTF-8) */
                int bad = json_object_set_new(rf, key, json_string(ref)) != 0;
                free(ref);
                if (bad) {
                    ct_err(err, CTARGET_E_CONFIG, "setting %s: the file's real path is not "
                           "valid UTF-8 text; rename it or give a path that is", key);
                    rc = CTARGET_E_CONFIG;
                    break;
                }
            } else {
                json_object_set_new(rf, key, json_string("store"));
                json_object_set_new(pd, key, json_string(val));
            }
            continue;
        }
        char *norm = normalise(pl, k, val, err);
        if (!norm) {
            rc = CTARGET_E_CONFIG;
            break;
        }
        int bad = json_object_set_new(cfg, key, json_string(norm)) != 0;
        free(norm);
        if (bad) { /* a path's real path may not be UTF-8 */
            ct_err(err, CTARGET_E_CONFIG, "setting %s: the resolved value is not valid UTF-8 "
                   "text; rename the file or give a path that is", key);
            rc = CTARGET_E_CONFIG;
            break;
        }
    }
    if (rc == CTARGET_OK) {
        json_object_clear(config);
        json_object_update(config, cfg);
        json_object_clear(refs);
        json_object_update(refs, rf);
        json_object_update(pending, pd);
    }
    json_decref(cfg);
    json_decref(rf);
    json_decref(pd);
    return rc;
}

static int has_value(const ctarget_config_key *k, json_t *config, json_t *refs)
{
    if (k->flags & CTARGET_KEY_SECRET)
        return json_object_get(refs, k->name) != NULL;
    return json_object_get(config, k->name) != NULL || k->default_value;
}

static int required_for(const ctarget_config_key *k, int creating)
{
    return (k->flags & CTARGET_KEY_REQUIRED) ||
           (creating && (k->flags & CTARGET_KEY_REQUIRED_CREATE)) ||
           (!creating && (k->flags & CTARGET_KEY_REQUIRED_ATTACH));
}

ctarget_status keys_check_required(const plugin *pl, ctarget_verb verb, const char *origin,
                                   json_t *config, json_t *refs, json_t *pending,
                                   ctarget_error *err)
{
    (void)pending; /* pending secrets already have a "store" reference in refs */
    int creating = verb == CTARGET_VERB_CREATE ||
                   (verb == CTARGET_VERB_UPDATE && !strcmp(origin, "created"));
    if (!strcmp(origin, "implicit"))
        return CTARGET_OK;
    const char *doing = verb == CTARGET_VERB_UPDATE ? (creating ? "a created" : "an attached")
                                                    : verb_doing(verb);
    for (size_t i = 0; i < pl->n_keys; i++) {
        const ctarget_config_key *k = &pl->keys[i];
        if (k->group) {
            /* a group: checked once, at its first key */
            size_t first = i;
            for (size_t j = 0; j < i; j++)
                if (pl->keys[j].group == k->group) {
                    first = j;
                    break;
                }
            if (first != i)
                continue;
            int req = 0, set = 0, exclusive = 0;
            strbuf names, given;
            sb_init(&names);
            sb_init(&given);
            for (size_t j = i; j < pl->n_keys; j++) {
                const ctarget_config_key *g = &pl->keys[j];
                if (g->group != k->group)
                    continue;
                req |= required_for(g, creating);
                exclusive |= (g->flags & CTARGET_KEY_EXCLUSIVE) != 0;
                sb_addf(&names, "%s%s", names.len ? ", " : "", g->name);
                /* defaults do not count as a choice within a group */
                int explicit_set = (g->flags & CTARGET_KEY_SECRET)
                                       ? json_object_get(refs, g->name) != NULL
                                       : json_object_get(config, g->name) != NULL;
                if (explicit_set) {
                    set++;
                    sb_addf(&given, "%s%s", given.len ? " and " : "", g->name);
                }
            }
            ctarget_status rc = CTARGET_OK;
            if (req && !set) {
                ct_err(err, CTARGET_E_CONFIG, "%s %s target needs one of: %s (add --set "
                       "KEY=VALUE)", doing, pl->name, names.data);
                rc = CTARGET_E_CONFIG;
            } else if (exclusive && set > 1) {
                ct_err(err, CTARGET_E_CONFIG, "settings %s exclude each other: give only one "
                       "(unset one with --set KEY=)", given.data);
                rc = CTARGET_E_CONFIG;
            }
            sb_free(&names);
            sb_free(&given);
            if (rc)
                return rc;
            continue;
        }
        if (required_for(k, creating) && !has_value(k, config, refs)) {
            ct_err(err, CTARGET_E_CONFIG, "missing required setting '%s' for %s %s target: "
                   "add --set %s=VALUE (%s)", k->name, doing, pl->name, k->name,
                   k->help ? k->help : "see `ctarget compute help`");
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

static void name_rule(const plugin *pl, unsigned *min, unsigned *max, unsigned *flags)
{
    if (pl->d.name_max_len) {
        *min = pl->d.name_min_len;
        *max = pl->d.name_max_len;
        *flags = pl->d.name_flags;
    } else {
        *min = 3;
        *max = 24;
        *flags = CTARGET_NAME_START_LETTER | CTARGET_NAME_DASH_THEN_LETTER;
    }
}

char *keys_describe_name_rule(const plugin *pl)
{
    unsigned min, max, flags;
    name_rule(pl, &min, &max, &flags);
    return xasprintf("%u-%u characters of letters, digits and '-'%s%s", min, max,
                     (flags & CTARGET_NAME_START_LETTER) ? ", starting with a letter" : "",
                     (flags & CTARGET_NAME_DASH_THEN_LETTER)
                         ? ", every '-' followed later by a letter" : "");
}

ctarget_status keys_check_name(const plugin *pl, const char *name, ctarget_error *err)
{
    unsigned min, max, flags;
    name_rule(pl, &min, &max, &flags);
    size_t len = strlen(name);
    const char *why = NULL;
    if (len < min || len > max)
        why = "wrong length";
    for (size_t i = 0; !why && i < len; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '-')
            why = "invalid character";
    if (!why && (flags & CTARGET_NAME_START_LETTER) && !isalpha((unsigned char)name[0]))
        why = "must start with a letter";
    if (!why && (flags & CTARGET_NAME_DASH_THEN_LETTER)) {
        const char *dash = strrchr(name, '-');
        if (dash) {
            int letter = 0;
            for (const char *p = dash + 1; *p; p++)
                letter |= isalpha((unsigned char)*p) != 0;
            if (!letter)
                why = "a '-' must be followed later by a letter";
        }
    }
    if (why) {
        char *rule = keys_describe_name_rule(pl);
        ct_err(err, CTARGET_E_CONFIG, "invalid target name '%s' (%s): %s target names are %s",
               name, why, pl->name, rule);
        free(rule);
        return CTARGET_E_CONFIG;
    }
    return CTARGET_OK;
}

json_t *keys_identities(const plugin *pl, json_t *config)
{
    json_t *out = json_array();
    for (size_t i = 0; i < pl->n_keys; i++) {
        unsigned id = pl->keys[i].identity;
        if (!id)
            continue;
        int seen = 0;
        for (size_t j = 0; j < i; j++)
            seen |= pl->keys[j].identity == id;
        if (seen)
            continue;
        strbuf sb;
        sb_init(&sb);
        int complete = 1;
        for (size_t j = i; j < pl->n_keys && complete; j++) {
            const ctarget_config_key *k = &pl->keys[j];
            if (k->identity != id || (k->flags & CTARGET_KEY_SECRET))
                continue;
            const char *v = json_string_value(json_object_get(config, k->name));
            if (!v)
                v = k->default_value;
            if (!v)
                complete = 0;
            else
                sb_addf(&sb, "%s%s=%s", sb.len ? ";" : "", k->name, v);
        }
        if (complete && sb.len) {
            str_lower_ascii(sb.data);
            json_array_append_new(out, json_string(sb.data));
        }
        sb_free(&sb);
    }
    return out;
}
