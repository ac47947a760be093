/* `ctarget plugins` and `ctarget compute help TYPE`: what the loader found, read from the
 * descriptors only (no plugin is initialised to list it). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "loader.h"
#include "util.h"
#include "ws.h"

static json_t *caps_json(uint64_t caps)
{
    json_t *a = json_array();
    size_t n;
    uint64_t bits[64];
    const char *const *names = loader_cap_names(bits, &n);
    for (size_t i = 0; i < n; i++)
        if (caps & bits[i])
            json_array_append_new(a, json_string(names[i]));
    return a;
}

static json_t *plugin_json(const plugin *pl)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(pl->name));
    json_object_set_new(o, "path", json_string(pl->path));
    if (pl->reason) {
        json_object_set_new(o, "status", json_string(pl->shadowed ? "shadowed" : "refused"));
        json_object_set_new(o, "reason", json_string(pl->reason));
    } else {
        json_object_set_new(o, "status", json_string("loaded"));
        json_object_set_new(o, "reason", json_null());
    }
    /* refused or shadowed: the file that serves this type instead, if any */
    json_object_set_new(o, "used_instead",
                        pl->used_instead ? json_string(pl->used_instead->path) : json_null());
    if (pl->desc) {
        char abi[32];
        snprintf(abi, sizeof abi, "%u.%u", pl->d.abi_major, pl->d.abi_minor);
        json_object_set_new(o, "version", json_string(pl->d.version));
        json_object_set_new(o, "abi", json_string(abi));
        json_object_set_new(o, "description",
                            pl->d.description ? json_string(pl->d.description) : json_null());
        json_object_set_new(o, "license",
                            pl->d.license ? json_string(pl->d.license) : json_null());
        json_object_set_new(o, "capabilities", caps_json(pl->d.capabilities));
    } else {
        json_object_set_new(o, "version", json_null());
        json_object_set_new(o, "abi", json_null());
        json_object_set_new(o, "description", json_null());
        json_object_set_new(o, "license", json_null());
        json_object_set_new(o, "capabilities", json_array());
    }
    return o;
}

ctarget_status ctarget_plugins_list(char **json, ctarget_error *err)
{
    (void)err;
    size_t n;
    plugin **all = loader_all(&n);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, plugin_json(all[i]));
    *json = json_out(a);
    json_decref(a);
    return CTARGET_OK;
}

static const char *required_word(unsigned f)
{
    if (f & CTARGET_KEY_REQUIRED)
        return "always";
    if ((f & CTARGET_KEY_REQUIRED_CREATE) && (f & CTARGET_KEY_REQUIRED_ATTACH))
        return "always";
    if (f & CTARGET_KEY_REQUIRED_CREATE)
        return "create";
    if (f & CTARGET_KEY_REQUIRED_ATTACH)
        return "attach";
    return "no";
}

ctarget_status ctarget_plugin_describe(const char *type, char **json, ctarget_error *err)
{
    *json = NULL;
    plugin *pl;
    ctarget_status rc = loader_find(type, &pl, err);
    if (rc)
        return rc;
    json_t *o = plugin_json(pl);
    char *rule = keys_describe_name_rule(pl);
    json_object_set_new(o, "name_rule", json_string(rule));
    free(rule);
    json_t *keys = json_array();
    for (size_t i = 0; i < pl->n_keys; i++) {
        const ctarget_config_key *k = &pl->keys[i];
        json_t *kj = json_pack("{s:s, s:s, s:s, s:b}", "name", k->name, "type",
                               loader_key_type_name(k->type), "required",
                               required_word(k->flags), "secret",
                               (k->flags & CTARGET_KEY_SECRET) != 0);
        json_object_set_new(kj, "default", k->default_value ? json_string(k->default_value)
                                                            : json_null());
        json_object_set_new(kj, "help", json_string(k->help ? k->help : ""));
        if (k->choices)
            json_object_set_new(kj, "choices", json_string(k->choices));
        if (k->min < k->max) {
            json_object_set_new(kj, "min", json_integer(k->min));
            json_object_set_new(kj, "max", json_integer(k->max));
        }
        if (k->group)
            json_object_set_new(kj, "group", json_integer(k->group));
        if (k->identity)
            json_object_set_new(kj, "identity", json_integer(k->identity));
        json_t *flags = json_array();
        if (k->flags & CTARGET_KEY_CREATE_ONLY)
            json_array_append_new(flags, json_string("create-only"));
        if (k->flags & CTARGET_KEY_ATTACH_ONLY)
            json_array_append_new(flags, json_string("attach-only"));
        if (k->flags & CTARGET_KEY_IMMUTABLE)
            json_array_append_new(flags, json_string("immutable"));
        if (k->flags & CTARGET_KEY_EXCLUSIVE)
            json_array_append_new(flags, json_string("exclusive"));
        json_object_set_new(kj, "flags", flags);
        json_array_append_new(keys, kj);
    }
    json_object_set_new(o, "config_keys", keys);
    *json = json_out(o);
    json_decref(o);
    return CTARGET_OK;
}
