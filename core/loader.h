/* Plugin discovery and validation.  Nothing of a plugin runs before its file passed the
 * permission and ELF checks; nothing but its side-effect-free entry function runs before its
 * descriptor passed validation; init() runs only when an operation needs the plugin. */
#ifndef CTARGET_CORE_LOADER_H
#define CTARGET_CORE_LOADER_H

#include <pthread.h>

#include <ctarget/plugin.h>

typedef struct plugin {
    char *path;
    char *name;              /* file basename without .so */
    char *reason;            /* refusal reason, NULL when loaded */
    int shadowed;            /* a loadable file of this name came earlier: never opened */
    const struct plugin *used_instead; /* refused or shadowed: the file that serves the type */
    void *dl;
    const ctarget_plugin *desc;
    /* Normalised copies: every slot past the plugin's struct_size reads as zero/NULL. */
    ctarget_plugin d;
    ctarget_compute_ops compute;
    ctarget_run_ops run;
    ctarget_config_key *keys;
    size_t n_keys;
    /* runtime */
    pthread_mutex_t lock;    /* serialises calls unless CTARGET_CAP_THREAD_SAFE */
    int initialised;
    void *ctx;
} plugin;

/* The plugin directories in search order: $CTARGET_PLUGIN_PATH entries, then
 * $CTARGET_PLUGINDIR or the configured plugindir. */
char **loader_search_dirs(size_t *n);

/* Every *.so in the search directories, loaded, refused or shadowed, in search order.  The
 * list is owned by the loader and lives until the process exits. */
plugin **loader_all(size_t *n);

/* The plugin for a target type: the first <type>.so in search order that loads (as PATH
 * lookup skips files it cannot execute): a refused file does not hide a good one later in
 * the path, and is named in a warning.  NOT_FOUND when there is no file; PLUGIN when every
 * file was refused (err names the first and its reason). */
ctarget_status loader_find(const char *type, plugin **out, ctarget_error *err);

/* Run init() once. */
ctarget_status loader_init_plugin(plugin *pl, ctarget_error *err);

void plugin_lock(plugin *pl);
void plugin_unlock(plugin *pl);

const char *const *loader_cap_names(uint64_t bit_out[], size_t *n);
const char *loader_key_type_name(ctarget_key_type t);

#endif
