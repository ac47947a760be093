/* Compute-target registry internals shared with the run lifecycle. */
#ifndef CTARGET_CORE_REGISTRY_H
#define CTARGET_CORE_REGISTRY_H

#include <jansson.h>

#include <ctarget/ctarget.h>

struct plugin;

typedef struct reg_target {
    json_t *rec;               /* the stored record (or the implicit one) */
    struct plugin *pl;         /* NULL when the type's plugin is unavailable */
    ctarget_target *t;         /* handle for plugin calls; NULL without plugin */
} reg_target;

const char *prov_state_name(ctarget_prov_state s);

/* Load a target by name; implicit targets too.  need_plugin: fail when its plugin is not
 * available (otherwise rt->pl is NULL and only the record can be shown). */
ctarget_status reg_load(ctarget_ws *ws, const char *name, int need_plugin, reg_target **out,
                        ctarget_error *err);
void reg_target_free(reg_target *rt);
json_t *reg_render(const reg_target *rt);

/* Refuse to detach/delete a target that still has active runs. */
ctarget_status reg_check_idle(ctarget_ws *ws, const char *name, const char *verb,
                              ctarget_error *err);

#endif
