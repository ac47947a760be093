/* The container command line for runs with a docker image.  An argv, never a shell string:
 * arguments and environment values reach the script byte for byte.  Self-contained (libc
 * only) so the unit test can compile it directly. */
#include "config.h"

#include "local.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct argv_b {
    char **v;
    size_t n, cap;
    int failed;
} argv_b;

static void add(argv_b *b, const char *s)
{
    if (b->failed)
        return;
    if (b->n + 2 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 32;
        char **nv = realloc(b->v, cap * sizeof *nv);
        if (!nv) {
            b->failed = 1;
            return;
        }
        b->v = nv;
        b->cap = cap;
    }
    if (!(b->v[b->n] = strdup(s))) {
        b->failed = 1;
        return;
    }
    b->v[++b->n] = NULL;
}

void ldocker_argv_free(char **argv)
{
    if (!argv)
        return;
    for (char **a = argv; *a; a++)
        free(*a);
    free(argv);
}

char **ldocker_argv(const ldocker_spec *s)
{
    argv_b b = {0};
    add(&b, s->engine);
    add(&b, "run");
    add(&b, "--rm");
    add(&b, "--init"); /* an init in the container forwards TERM and reaps the script's
                          children, as our wrapper does outside */
    if (s->name) {
        add(&b, "--name");
        add(&b, s->name);
    }
    if (s->uid >= 0 && s->gid >= 0) {
        char user[64];
        snprintf(user, sizeof user, "%ld:%ld", s->uid, s->gid);
        add(&b, "--user");
        add(&b, user);
    }
    /* mounted at the same path, so CTARGET_OUTPUTS_DIR and CTARGET_METRICS_FILE, which are
     * absolute host paths, mean the same inside */
    char *vol = malloc(2 * strlen(s->work_dir) + 2);
    if (!vol)
        b.failed = 1;
    else {
        sprintf(vol, "%s:%s", s->work_dir, s->work_dir);
        add(&b, "--volume");
        add(&b, vol);
        free(vol);
    }
    add(&b, "--workdir");
    add(&b, s->cwd);
    for (size_t i = 0; i < s->n_env; i++) {
        /* "-e NAME" without '=' would copy the engine's own environment: refuse it */
        if (!strchr(s->env[i], '=') || s->env[i][0] == '=')
            b.failed = 1;
        add(&b, "--env");
        add(&b, s->env[i]);
    }
    if (s->gpu) {
        add(&b, "--gpus");
        add(&b, "all");
    }
    /* options end at the image (docker and podman stop parsing there); an image name that
     * looks like an option would be read as one */
    if (!s->image || s->image[0] == '-' || !s->image[0])
        b.failed = 1;
    add(&b, s->image ? s->image : "");
    add(&b, s->python ? s->python : "python");
    add(&b, s->script);
    for (size_t i = 0; i < s->n_args; i++)
        add(&b, s->args[i]);
    if (b.failed) {
        ldocker_argv_free(b.v);
        return NULL;
    }
    return b.v;
}

char *ldocker_container_name(const char *run_id)
{
    /* docker names: [a-zA-Z0-9][a-zA-Z0-9_.-]* */
    size_t n = strlen(run_id);
    char *s = malloc(n + sizeof "ctarget-");
    if (!s)
        return NULL;
    memcpy(s, "ctarget-", 8);
    for (size_t i = 0; i < n; i++) {
        char c = run_id[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-';
        s[8 + i] = ok ? c : '_';
    }
    s[8 + n] = '\0';
    return s;
}
