/* Target configuration checked against what the plugin declares: keys, types, required and
 * exclusive groups, name rules, resource identity.  No plugin code runs here. */
#ifndef CTARGET_CORE_KEYS_H
#define CTARGET_CORE_KEYS_H

#include <jansson.h>

#include <ctarget/ctarget.h>

struct plugin;

/* Apply settings on top of `config` (non-secret values) and `refs` (secret references);
 * literal secrets go to `pending`.  An empty value unsets a key.  On error nothing the
 * caller owns is half-changed: work on copies and swap on success. */
ctarget_status keys_apply(const struct plugin *pl, ctarget_verb verb, const char *origin,
                            const ctarget_setting *settings, size_t n, json_t *config,
                            json_t *refs, json_t *pending, ctarget_error *err);

/* Required keys and groups for the verb (origin decides for UPDATE). */
ctarget_status keys_check_required(const struct plugin *pl, ctarget_verb verb,
                                     const char *origin, json_t *config, json_t *refs,
                                     json_t *pending, ctarget_error *err);

ctarget_status keys_check_name(const struct plugin *pl, const char *name,
                                 ctarget_error *err);
/* "3-24 characters of letters, digits and '-', ..." for help output */
char *keys_describe_name_rule(const struct plugin *pl);

/* The identity tuples that are complete in config: array of strings. */
json_t *keys_identities(const struct plugin *pl, json_t *config);

const struct ctarget_config_key *keys_find(const struct plugin *pl, const char *name);

#endif
