#include "config.h"

#include "loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"
#include "log.h"
#include "util.h"

#ifndef CTARGET_PLUGINDIR
#define CTARGET_PLUGINDIR "/usr/local/lib/ctarget/plugins"
#endif

static pthread_mutex_t loader_mutex = PTHREAD_MUTEX_INITIALIZER;
static plugin **cache;       /* every plugin file examined so far */
static size_t n_cache;
static int scanned_all;

/* Smallest table sizes: the fields every ABI 1.x table has. */
#define DESC_MIN_SIZE (offsetof(ctarget_plugin, run) + sizeof(void *))
#define KEY_MIN_SIZE (offsetof(ctarget_config_key, identity) + sizeof(unsigned))
#define COMPUTE_MIN_SIZE (offsetof(ctarget_compute_ops, status) + sizeof(void *))
#define RUN_MIN_SIZE (offsetof(ctarget_run_ops, read_logs) + sizeof(void *))

static const struct {
    uint64_t bit;
    const char *name;
} cap_table[] = {
    {CTARGET_CAP_GPU, "gpu"},
    {CTARGET_CAP_HYPERPARAMETER_TUNING, "hyperparameter-tuning"},
    {CTARGET_CAP_MODEL_SELECTION, "model-selection"},
    {CTARGET_CAP_PIPELINE_STEP, "pipeline-step"},
    {CTARGET_CAP_PIPELINE_ONLY, "pipeline-only"},
    {CTARGET_CAP_CREATE, "create"},
    {CTARGET_CAP_ATTACH, "attach"},
    {CTARGET_CAP_INFERENCE, "inference"},
    {CTARGET_CAP_CANCEL, "cancel"},
    {CTARGET_CAP_THREAD_SAFE, "thread-safe"},
    {CTARGET_CAP_SCRIPT_RUN, "script-run"},
    {CTARGET_CAP_START_STOP, "start-stop"},
    {CTARGET_CAP_IMPLICIT, "implicit"},
    {CTARGET_CAP_MULTI_NODE, "multi-node"},
    {CTARGET_CAP_UPDATE, "update"},
    {CTARGET_CAP_LIST_NODES, "list-nodes"},
};

const char *const *loader_cap_names(uint64_t bit_out[], size_t *n)
{
    static const char *names[CT_ARRAY_LEN(cap_table)];
    for (size_t i = 0; i < CT_ARRAY_LEN(cap_table); i++) {
        names[i] = cap_table[i].name;
        if (bit_out)
            bit_out[i] = cap_table[i].bit;
    }
    *n = CT_ARRAY_LEN(cap_table);
    return names;
}

const char *loader_key_type_name(ctarget_key_type t)
{
    static const char *const names[] = {"string", "int", "bool", "number", "enum", "path", "list"};
    return (unsigned)t < CT_ARRAY_LEN(names) ? names[t] : "unknown";
}

char **loader_search_dirs(size_t *n)
{
    char **dirs = NULL;
    size_t cnt = 0;
    const char *pp = getenv("CTARGET_PLUGIN_PATH");
    if (pp && *pp) {
        char *copy = xstrdup(pp), *save = NULL;
        for (char *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
            dirs = xrealloc(dirs, (cnt + 2) * sizeof *dirs);
            dirs[cnt++] = xstrdup(tok);
        }
        free(copy);
    }
    const char *pd = getenv("CTARGET_PLUGINDIR");
    dirs = xrealloc(dirs, (cnt + 2) * sizeof *dirs);
    dirs[cnt++] = xstrdup(pd && *pd ? pd : CTARGET_PLUGINDIR);
    dirs[cnt] = NULL;
    *n = cnt;
    return dirs;
}

static void free_dirs(char **dirs)
{
    for (size_t i = 0; dirs && dirs[i]; i++)
        free(dirs[i]);
    free(dirs);
}

static plugin *cache_get(const char *path)
{
    for (size_t i = 0; i < n_cache; i++)
        if (!strcmp(cache[i]->path, path))
            return cache[i];
    return NULL;
}

static void cache_add(plugin *pl)
{
    cache = xrealloc(cache, (n_cache + 1) * sizeof *cache);
    cache[n_cache++] = pl;
}

static int refuse(plugin *pl, const char *fmt, ...) CTARGET_PRINTF(2, 3);
static int refuse(plugin *pl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(pl->reason);
    pl->reason = xvasprintf(fmt, ap);
    va_end(ap);
    return -1;
}

/* The ELF machine of this process, read once from /proc/self/exe. */
static int self_elf(unsigned char *cls, uint16_t *machine)
{
    static int done, ok;
    static unsigned char c;
    static uint16_t m;
    if (!done) {
        done = 1;
        int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            Elf64_Ehdr h;
            if (read(fd, &h, sizeof h) >= (ssize_t)sizeof(Elf32_Ehdr) &&
                !memcmp(h.e_ident, ELFMAG, SELFMAG)) {
                c = h.e_ident[EI_CLASS];
                m = h.e_machine; /* same offset in 32- and 64-bit headers */
                ok = 1;
            }
            close(fd);
        }
    }
    *cls = c;
    *machine = m;
    return ok;
}

static int check_file(plugin *pl, const char *dir)
{
    struct stat ds, fs;
    if (stat(dir, &ds) == 0 && (ds.st_mode & S_IWOTH))
        return refuse(pl, "directory %s is world-writable: anyone could replace the plugin "
                          "(chmod o-w %s)", dir, dir);
    if (stat(pl->path, &fs) != 0)
        return refuse(pl, "cannot stat: %s", strerror(errno));
    if (!S_ISREG(fs.st_mode))
        return refuse(pl, "not a regular file");
    if (fs.st_mode & S_IWOTH)
        return refuse(pl, "file is world-writable: anyone could replace it (chmod o-w %s)",
                      pl->path);
    int fd = open(pl->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return refuse(pl, "cannot open: %s", strerror(errno));
    Elf64_Ehdr h;
    ssize_t n = read(fd, &h, sizeof h);
    close(fd);
    if (n < (ssize_t)sizeof(Elf32_Ehdr) || memcmp(h.e_ident, ELFMAG, SELFMAG) != 0)
        return refuse(pl, "not an ELF shared object");
    if (h.e_type != ET_DYN)
        return refuse(pl, "ELF file is not a shared object (e_type %u)", (unsigned)h.e_type);
    unsigned char cls;
    uint16_t machine;
    if (self_elf(&cls, &machine) && (h.e_ident[EI_CLASS] != cls || h.e_machine != machine))
        return refuse(pl, "built for another architecture (ELF class %u machine %u; this "
                          "process is class %u machine %u)", h.e_ident[EI_CLASS],
                      (unsigned)h.e_machine, cls, (unsigned)machine);
    return 0;
}

static int valid_ident(const char *s, int allow_dash)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              (allow_dash && *s == '-')))
            return 0;
    return 1;
}

static int check_keys(plugin *pl)
{
    const ctarget_plugin *d = &pl->d;
    if (!d->n_config_keys)
        return 0;
    if (!d->config_keys)
        return refuse(pl, "declares %zu config keys but config_keys is NULL", d->n_config_keys);
    if (d->n_config_keys > 1024)
        return refuse(pl, "declares %zu config keys (more than 1024)", d->n_config_keys);
    size_t stride = d->config_keys[0].struct_size;
    if (stride < KEY_MIN_SIZE || stride > 65536)
        return refuse(pl, "config key table has struct_size %zu, expected at least %zu",
                      stride, (size_t)KEY_MIN_SIZE);
    pl->keys = xcalloc(d->n_config_keys, sizeof *pl->keys);
    pl->n_keys = d->n_config_keys;
    for (size_t i = 0; i < d->n_config_keys; i++) {
        const ctarget_config_key *k =
            (const ctarget_config_key *)((const char *)d->config_keys + i * stride);
        if (k->struct_size != stride)
            return refuse(pl, "config key #%zu has struct_size %zu, the first has %zu", i + 1,
                          k->struct_size, stride);
        memcpy(&pl->keys[i], k, stride < sizeof *k ? stride : sizeof *k);
        ctarget_config_key *c = &pl->keys[i];
        if (!valid_ident(c->name, 0))
            return refuse(pl, "config key #%zu has an invalid name (want [a-z0-9_]+)", i + 1);
        if ((unsigned)c->type > CTARGET_KEY_LIST)
            return refuse(pl, "config key %s has unknown type %u", c->name, (unsigned)c->type);
        if (c->type == CTARGET_KEY_ENUM && (!c->choices || !*c->choices))
            return refuse(pl, "config key %s is an enum without choices", c->name);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(pl->keys[j].name, c->name))
                return refuse(pl, "config key %s is declared twice", c->name);
    }
    return 0;
}

/* A capability is a promise that the slots behind it exist. */
#define NEED_SLOT(cond, slot, what, slotname)                                             \
    do {                                                                                  \
        if ((cond) && !(slot))                                                            \
            return refuse(pl, "claims capability %s but has no %s slot", what, slotname); \
    } while (0)

static int check_descriptor(plugin *pl)
{
    const char *base = pl->name;
    void *sym = dlsym(pl->dl, CTARGET_PLUGIN_ENTRY_NAME);
    if (!sym) {
        for (int v = 2; v <= 9; v++) {
            char other[64];
            snprintf(other, sizeof other, "ctarget_plugin_entry_v%d", v);
            if (dlsym(pl->dl, other))
                return refuse(pl, "built for ABI %d (exports %s), this core speaks ABI %d",
                              v, other, CTARGET_ABI_MAJOR);
        }
        return refuse(pl, "no entry symbol %s: not a ctarget plugin, or built for another ABI",
                      CTARGET_PLUGIN_ENTRY_NAME);
    }
    /* dlsym returns an object pointer; going through memcpy avoids a cast between object and
     * function pointer types, which ISO C does not define. */
    ctarget_plugin_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    const ctarget_plugin *d = entry();
    if (!d)
        return refuse(pl, "entry symbol returned no descriptor");
    if (d->struct_size < offsetof(ctarget_plugin, abi_minor) + sizeof(unsigned))
        return refuse(pl, "descriptor struct_size %zu is too small to be a ctarget plugin",
                      d->struct_size);
    if (d->abi_major != CTARGET_ABI_MAJOR)
        return refuse(pl, "built for ABI %u, this core speaks ABI %d", d->abi_major,
                      CTARGET_ABI_MAJOR);
    if (d->struct_size < DESC_MIN_SIZE)
        return refuse(pl, "descriptor struct_size %zu is smaller than ABI %d.0's %zu",
                      d->struct_size, CTARGET_ABI_MAJOR, (size_t)DESC_MIN_SIZE);
    pl->desc = d;
    memcpy(&pl->d, d, d->struct_size < sizeof pl->d ? d->struct_size : sizeof pl->d);
    if (pl->d.min_core_minor > CTARGET_ABI_MINOR)
        return refuse(pl, "needs core ABI %d.%u or newer, this core is %d.%d",
                      CTARGET_ABI_MAJOR, pl->d.min_core_minor, CTARGET_ABI_MAJOR,
                      CTARGET_ABI_MINOR);
    if (!pl->d.name)
        return refuse(pl, "descriptor has no name");
    if (strcmp(pl->d.name, base) != 0)
        return refuse(pl, "declares name '%s' but the file is %s.so: the file must be named "
                          "after the target type", pl->d.name, base);
    if (!valid_ident(pl->d.name, 1))
        return refuse(pl, "name '%s' is not [a-z0-9_-]+", pl->d.name);
    if (!pl->d.version)
        return refuse(pl, "descriptor has no version");
    if (!pl->d.init)
        return refuse(pl, "missing mandatory slot init");
    if (!pl->d.compute)
        return refuse(pl, "missing mandatory slot compute (the compute operations table)");
    size_t cs = pl->d.compute->struct_size;
    if (cs < COMPUTE_MIN_SIZE)
        return refuse(pl, "compute table struct_size %zu is too small (at least %zu)", cs,
                      (size_t)COMPUTE_MIN_SIZE);
    memcpy(&pl->compute, pl->d.compute, cs < sizeof pl->compute ? cs : sizeof pl->compute);
    if (!pl->compute.validate)
        return refuse(pl, "missing mandatory slot compute.validate");
    if (!pl->compute.status)
        return refuse(pl, "missing mandatory slot compute.status");
    if (pl->d.run) {
        size_t rs = pl->d.run->struct_size;
        if (rs < RUN_MIN_SIZE)
            return refuse(pl, "run table struct_size %zu is too small (at least %zu)", rs,
                          (size_t)RUN_MIN_SIZE);
        memcpy(&pl->run, pl->d.run, rs < sizeof pl->run ? rs : sizeof pl->run);
    }
    if (pl->d.name_max_len && (pl->d.name_min_len < 1 || pl->d.name_min_len > pl->d.name_max_len
                               || pl->d.name_max_len > 255))
        return refuse(pl, "invalid name rule: %u-%u characters", pl->d.name_min_len,
                      pl->d.name_max_len);

    uint64_t caps = pl->d.capabilities;
    int runs = (caps & (CTARGET_CAP_SCRIPT_RUN | CTARGET_CAP_PIPELINE_STEP |
                        CTARGET_CAP_HYPERPARAMETER_TUNING | CTARGET_CAP_MODEL_SELECTION)) != 0;
    NEED_SLOT(caps & CTARGET_CAP_CREATE, pl->compute.create, "create", "compute.create");
    NEED_SLOT(caps & CTARGET_CAP_CREATE, pl->compute.delete_, "create", "compute.delete_");
    NEED_SLOT(caps & CTARGET_CAP_ATTACH, pl->compute.attach, "attach", "compute.attach");
    NEED_SLOT(caps & CTARGET_CAP_START_STOP, pl->compute.start, "start-stop", "compute.start");
    NEED_SLOT(caps & CTARGET_CAP_START_STOP, pl->compute.stop, "start-stop", "compute.stop");
    NEED_SLOT(caps & CTARGET_CAP_START_STOP, pl->compute.restart, "start-stop", "compute.restart");
    NEED_SLOT(caps & CTARGET_CAP_UPDATE, pl->compute.update, "update", "compute.update");
    NEED_SLOT(caps & CTARGET_CAP_LIST_NODES, pl->compute.list_nodes, "list-nodes", "compute.list_nodes");
    NEED_SLOT(runs, pl->d.run, "script-run/pipeline-step", "run table");
    NEED_SLOT(runs, pl->run.submit, "script-run/pipeline-step", "run.submit");
    NEED_SLOT(runs, pl->run.poll, "script-run/pipeline-step", "run.poll");
    NEED_SLOT(runs, pl->run.read_logs, "script-run/pipeline-step", "run.read_logs");
    NEED_SLOT(runs, pl->run.reattach, "script-run/pipeline-step", "run.reattach");
    NEED_SLOT(caps & CTARGET_CAP_CANCEL, pl->run.cancel, "cancel", "run.cancel");
    if ((caps & CTARGET_CAP_PIPELINE_ONLY) && !(caps & CTARGET_CAP_PIPELINE_STEP))
        return refuse(pl, "claims capability pipeline-only without pipeline-step");
    return check_keys(pl);
}

static plugin *examine(const char *dir, const char *file)
{
    char *path = path_join(dir, file);
    plugin *pl = cache_get(path);
    if (pl) {
        free(path);
        return pl;
    }
    pl = xcalloc(1, sizeof *pl);
    pl->path = path;
    pl->name = xstrndup(file, strlen(file) - 3);
    pthread_mutex_init(&pl->lock, NULL);
    cache_add(pl);
    if (check_file(pl, dir) != 0)
        return pl;
    dlerror();
    pl->dl = dlopen(pl->path, RTLD_NOW | RTLD_LOCAL);
    if (!pl->dl) {
        const char *e = dlerror();
        refuse(pl, "dlopen failed: %s", e ? e : "unknown error");
        return pl;
    }
    if (check_descriptor(pl) != 0) {
        /* Never dlclose: the library's destructors are plugin code too. */
        pl->desc = NULL;
    }
    return pl;
}

static int is_plugin_file(const char *name)
{
    return name[0] != '.' && str_endswith(name, ".so") && strlen(name) > 3;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The search order: the first file of a name that loads serves the type.  Files before it
 * that were refused say which file is used instead; files after it are shadowed and never
 * opened (their code must not run: nobody asked for them). */
static plugin *shadowed_entry(const char *dir, const char *file, const plugin *winner)
{
    plugin *pl = xcalloc(1, sizeof *pl);
    pl->path = path_join(dir, file);
    pl->name = xstrndup(file, strlen(file) - 3);
    pthread_mutex_init(&pl->lock, NULL);
    pl->shadowed = 1;
    pl->used_instead = winner;
    refuse(pl, "shadowed by %s, found earlier in the search path", winner->path);
    return pl;
}

static void note_winner(plugin **list, size_t n, const plugin *winner)
{
    for (size_t k = 0; k < n; k++)
        if (list[k] != winner && !strcmp(list[k]->name, winner->name) && !list[k]->shadowed)
            list[k]->used_instead = winner;
}

static const plugin *loaded_named(plugin **list, size_t n, const char *name)
{
    for (size_t k = 0; k < n; k++)
        if (!list[k]->reason && !strcmp(list[k]->name, name))
            return list[k];
    return NULL;
}

plugin **loader_all(size_t *n)
{
    pthread_mutex_lock(&loader_mutex);
    static plugin **list;
    static size_t n_list;
    if (!scanned_all) {
        size_t nd;
        char **dirs = loader_search_dirs(&nd);
        for (size_t i = 0; i < nd; i++) {
            DIR *d = opendir(dirs[i]);
            if (!d)
                continue;
            char **names = NULL;
            size_t nn = 0;
            struct dirent *de;
            while ((de = readdir(d)))
                if (is_plugin_file(de->d_name)) {
                    names = xrealloc(names, (nn + 1) * sizeof *names);
                    names[nn++] = xstrdup(de->d_name);
                }
            closedir(d);
            qsort(names, nn, sizeof *names, cmp_str);
            for (size_t j = 0; j < nn; j++) {
                char *base = xstrndup(names[j], strlen(names[j]) - 3);
                const plugin *winner = loaded_named(list, n_list, base);
                free(base);
                plugin *pl = winner ? shadowed_entry(dirs[i], names[j], winner)
                                    : examine(dirs[i], names[j]);
                list = xrealloc(list, (n_list + 1) * sizeof *list);
                list[n_list++] = pl;
                if (!pl->reason)
                    note_winner(list, n_list, pl);
                free(names[j]);
            }
            free(names);
        }
        free_dirs(dirs);
        scanned_all = 1;
    }
    *n = n_list;
    pthread_mutex_unlock(&loader_mutex);
    return list;
}

ctarget_status loader_find(const char *type, plugin **out, ctarget_error *err)
{
    *out = NULL;
    if (!valid_ident(type, 1)) {
        ct_err(err, CTARGET_E_NOT_FOUND, "'%s' is not a valid target type name", type);
        return CTARGET_E_NOT_FOUND;
    }
    pthread_mutex_lock(&loader_mutex);
    size_t nd;
    char **dirs = loader_search_dirs(&nd);
    char *file = xasprintf("%s.so", type);
    plugin *found = NULL, *refused[16];
    size_t n_refused = 0, n_more = 0;
    for (size_t i = 0; i < nd && !found; i++) {
        char *p = path_join(dirs[i], file);
        struct stat sb;
        if (stat(p, &sb) == 0) {
            plugin *pl = examine(dirs[i], file);
            if (!pl->reason)
                found = pl;
            else if (n_refused < CT_ARRAY_LEN(refused))
                refused[n_refused++] = pl;
            else
                n_more++;
        }
        free(p);
    }
    free(file);
    free_dirs(dirs);
    /* said once per process, in the words of `ctarget plugins` */
    for (size_t k = 0; found && k < n_refused; k++)
        if (!refused[k]->used_instead) {
            refused[k]->used_instead = found;
            log_msg(CTARGET_LOG_WARN, "refused %s: %s; using %s", refused[k]->path,
                    refused[k]->reason, found->path);
        }
    pthread_mutex_unlock(&loader_mutex);
    if (found) {
        *out = found;
        return CTARGET_OK;
    }
    if (!n_refused) {
        ct_err(err, CTARGET_E_NOT_FOUND,
               "unknown target type '%s': no plugin %s.so in the plugin path "
               "(see `ctarget plugins` for the available types)", type, type);
        return CTARGET_E_NOT_FOUND;
    }
    if (n_refused + n_more == 1)
        ct_err(err, CTARGET_E_PLUGIN, "target type '%s' is unavailable: plugin %s refused: %s",
               type, refused[0]->path, refused[0]->reason);
    else
        ct_err(err, CTARGET_E_PLUGIN, "target type '%s' is unavailable: plugin %s refused: %s "
               "(and %zu more %s.so refused: see `ctarget plugins`)", type, refused[0]->path,
               refused[0]->reason, n_refused + n_more - 1, type);
    return CTARGET_E_PLUGIN;
}

ctarget_status loader_init_plugin(plugin *pl, ctarget_error *err)
{
    pthread_mutex_lock(&pl->lock);
    ctarget_status rc = CTARGET_OK;
    if (!pl->initialised) {
        ctarget_error perr;
        ctarget_error_init(&perr);
        rc = pl->d.init(host_table(), &pl->ctx, &perr);
        if (rc != CTARGET_OK)
            ct_err(err, rc, "plugin %s failed to initialise: %s", pl->path,
                   perr.message[0] ? perr.message : ctarget_strerror(rc));
        else
            pl->initialised = 1;
    }
    pthread_mutex_unlock(&pl->lock);
    return rc;
}

void plugin_lock(plugin *pl)
{
    if (!(pl->d.capabilities & CTARGET_CAP_THREAD_SAFE))
        pthread_mutex_lock(&pl->lock);
}

void plugin_unlock(plugin *pl)
{
    if (!(pl->d.capabilities & CTARGET_CAP_THREAD_SAFE))
        pthread_mutex_unlock(&pl->lock);
}
