/* Fuzz target: compute settings (`--set KEY=VALUE`, `--config`), validated against the keys
 * a plugin declares (core/keys.c: keys_apply, keys_check_required, keys_check_name,
 * keys_identities).  The plugin here is a table only (no plugin code runs in keys.c); its
 * keys cover every type, flag, group and identity the ABI has.
 *
 * Input: byte 0 picks the verb (create, attach, update of a created or an attached target),
 * line 1 (after it) is the target name, every further line is KEY=VALUE; then a second round
 * of the same lines as an update.  Properties: a refusal says why and changes nothing the
 * caller owns; an accepted round stores every non-empty value it was given (the last one per
 * key) as a string under a declared key, secrets only as references (never in config),
 * integers in their declared range, enums as one of their choices. */
#include "config.h"

#include "fuzz.h"

#include <ctarget/ctarget.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keys.h"
#include "loader.h"

#define K(name, type, flags, def, choices, min, max, group, identity)                        \
    {sizeof(ctarget_config_key), name, type, flags, def, "help", choices, min, max, group,   \
     identity}
static ctarget_config_key keys[] = {
    K("address", CTARGET_KEY_STRING, CTARGET_KEY_REQUIRED | CTARGET_KEY_EXCLUSIVE, NULL, NULL,
      0, 0, 1, 1),
    K("resource_id", CTARGET_KEY_STRING, CTARGET_KEY_EXCLUSIVE, NULL, NULL, 0, 0, 1, 2),
    K("ssh_port", CTARGET_KEY_INT, 0, "22", NULL, 1, 65535, 0, 1),
    K("max_nodes", CTARGET_KEY_INT, CTARGET_KEY_REQUIRED_CREATE, NULL, NULL, 0, 0, 0, 0),
    K("low_priority", CTARGET_KEY_BOOL, 0, "false", NULL, 0, 0, 0, 0),
    K("vm_priority", CTARGET_KEY_ENUM, CTARGET_KEY_CREATE_ONLY, "dedicated",
      "dedicated|lowpriority", 0, 0, 0, 0),
    K("price", CTARGET_KEY_NUMBER, 0, NULL, NULL, 0, 100, 0, 0),
    K("private_key_file", CTARGET_KEY_PATH, 0, NULL, NULL, 0, 0, 2, 0),
    K("password", CTARGET_KEY_STRING, CTARGET_KEY_SECRET | CTARGET_KEY_REQUIRED_ATTACH, NULL,
      NULL, 0, 0, 2, 0),
    K("tags", CTARGET_KEY_LIST, 0, NULL, NULL, 0, 0, 0, 0),
    K("location", CTARGET_KEY_STRING, CTARGET_KEY_IMMUTABLE, NULL, NULL, 0, 0, 0, 0),
    K("pool", CTARGET_KEY_STRING, CTARGET_KEY_ATTACH_ONLY, NULL, NULL, 0, 0, 0, 0),
};

static const ctarget_config_key *declared(const char *k)
{
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!strcmp(keys[i].name, k))
            return &keys[i];
    return NULL;
}

/* Properties of config/refs/pending after an accepted round. */
static void check_state(json_t *config, json_t *refs, json_t *pending,
                        const ctarget_setting *s, size_t n)
{
    const char *k;
    json_t *v;
    json_object_foreach(config, k, v) {
        const ctarget_config_key *d = declared(k);
        FZ_CHECK(d, "undeclared key '%s' stored", k);
        FZ_CHECK(!(d->flags & CTARGET_KEY_SECRET), "secret '%s' stored in config", k);
        FZ_CHECK(json_is_string(v), "'%s' stored as a non-string", k);
        const char *text = json_string_value(v);
        if (d->type == CTARGET_KEY_INT && d->min < d->max) {
            long long x = strtoll(text, NULL, 10);
            FZ_CHECK(x >= d->min && x <= d->max, "%s=%s outside [%lld, %lld]", k, text,
                     d->min, d->max);
        }
        if (d->type == CTARGET_KEY_ENUM)
            FZ_CHECK(!strcmp(text, "dedicated") || !strcmp(text, "lowpriority"),
                     "%s=%s is no choice", k, text);
        if (d->type == CTARGET_KEY_BOOL)
            FZ_CHECK(!strcmp(text, "true") || !strcmp(text, "false"), "%s=%s", k, text);
    }
    json_object_foreach(refs, k, v) {
        const ctarget_config_key *d = declared(k);
        FZ_CHECK(d && (d->flags & CTARGET_KEY_SECRET), "reference for non-secret '%s'", k);
        const char *r = json_string_value(v);
        FZ_CHECK(r && (!strcmp(r, "store") || !strncmp(r, "env:", 4) ||
                       !strncmp(r, "file:", 5)), "reference '%s' of %s", r ? r : "?", k);
    }
    json_object_foreach(pending, k, v) {
        const ctarget_config_key *d = declared(k);
        FZ_CHECK(d && (d->flags & CTARGET_KEY_SECRET), "pending non-secret '%s'", k);
    }
    /* every non-empty value given (the last per key) was stored, none silently dropped */
    for (size_t i = 0; i < n; i++) {
        int last = 1;
        for (size_t j = i + 1; j < n; j++)
            last &= strcmp(s[i].key, s[j].key) != 0;
        if (!last || !s[i].value || !*s[i].value)
            continue;
        const ctarget_config_key *d = declared(s[i].key);
        if (d->flags & CTARGET_KEY_SECRET) {
            const char *r = json_string_value(json_object_get(refs, s[i].key));
            FZ_CHECK(r, "secret %s accepted but not recorded", s[i].key);
            if (!strcmp(r, "store"))
                FZ_CHECK(json_object_get(pending, s[i].key),
                         "secret %s accepted for the store, but its value was dropped",
                         s[i].key);
        } else if (d->type != CTARGET_KEY_LIST) { /* a list of only commas is empty */
            FZ_CHECK(json_object_get(config, s[i].key), "setting %s=%s accepted but not "
                     "stored", s[i].key, s[i].value);
        }
    }
}

static void round_of(plugin *pl, ctarget_verb verb, const char *origin, ctarget_setting *s,
                     size_t n, json_t *config, json_t *refs, json_t *pending)
{
    ctarget_error err;
    ctarget_error_init(&err);
    json_t *c0 = json_deep_copy(config), *r0 = json_deep_copy(refs),
           *p0 = json_deep_copy(pending);
    if (keys_apply(pl, verb, origin, s, n, config, refs, pending, &err) != CTARGET_OK) {
        FZ_CHECK(err.message[0], "refused without a message");
        fz_note("apply: %s", err.message);
        FZ_CHECK(json_equal(c0, config) && json_equal(r0, refs) && json_equal(p0, pending),
                 "a refused round changed the target (%s)", err.message);
    } else {
        check_state(config, refs, pending, s, n);
        char *cj = json_dumps(config, JSON_COMPACT | JSON_SORT_KEYS);
        char *rj = json_dumps(refs, JSON_COMPACT | JSON_SORT_KEYS);
        fz_note("apply: config %s, refs %s", cj, rj);
        free(cj);
        free(rj);
        ctarget_error_init(&err);
        if (keys_check_required(pl, verb, origin, config, refs, pending, &err) != CTARGET_OK)
            FZ_CHECK(err.message[0], "required keys refused without a message");
        json_t *ids = keys_identities(pl, config);
        size_t i;
        json_t *id;
        json_array_foreach(ids, i, id) FZ_CHECK(json_is_string(id), "identity %zu", i);
        json_decref(ids);
    }
    json_decref(c0);
    json_decref(r0);
    json_decref(p0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    static const ctarget_verb verbs[] = {CTARGET_VERB_CREATE, CTARGET_VERB_ATTACH,
                                         CTARGET_VERB_UPDATE, CTARGET_VERB_UPDATE};
    static const char *const origins[] = {"created", "attached", "created", "attached"};
    ctarget_verb verb = verbs[data[0] & 3];
    const char *origin = origins[data[0] & 3];
    plugin pl;
    memset(&pl, 0, sizeof pl);
    pl.name = (char *)"fuzzvm";
    pl.keys = keys;
    pl.n_keys = sizeof keys / sizeof *keys;
    pl.d.name_min_len = (data[0] & 4) ? 1 : 0;
    pl.d.name_max_len = (data[0] & 4) ? 64 : 0;
    pl.d.name_flags = (data[0] >> 3) & 3;

    char *text = fz_strndup(data + 1, size - 1);
    char *name = text, *rest = strchr(text, '\n');
    if (rest)
        *rest++ = '\0';
    ctarget_error err;
    ctarget_error_init(&err);
    if (keys_check_name(&pl, name, &err) != CTARGET_OK)
        FZ_CHECK(err.message[0], "name refused without a message");
    char *rule = keys_describe_name_rule(&pl);
    FZ_CHECK(rule && *rule, "no name rule");
    free(rule);

    ctarget_setting *s = NULL;
    size_t n = 0;
    for (char *line = rest, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *eq = strchr(line, '=');
        if (!eq)
            continue; /* the command line refuses it before the core sees it */
        *eq = '\0';
        s = realloc(s, (n + 1) * sizeof *s);
        if (!s)
            abort();
        s[n].key = line;
        s[n].value = eq + 1;
        n++;
    }
    json_t *config = json_object(), *refs = json_object(), *pending = json_object();
    round_of(&pl, verb, origin, s, n, config, refs, pending);
    round_of(&pl, CTARGET_VERB_UPDATE, origin, s, n, config, refs, pending);
    json_decref(config);
    json_decref(refs);
    json_decref(pending);
    free(s);
    free(text);
    return 0;
}
