/* Fuzz target: ignore rules (core/ignore.c), parsing and matching, both from the input.
 *
 * Input: the root's .gitignore, a NUL byte, sub/.gitignore, a NUL byte, then one path per
 * line ("dir/" for a directory).  The paths are matched as the snapshot walker does: every
 * directory on the way is entered (reading its ignore file) and checked first, and nothing
 * below an excluded directory is matched.  Properties: ".git" is always excluded; with no
 * rule on the stack nothing else is; a path's answer does not change when asked twice. */
#include "config.h"

#include "fuzz.h"

#include <ctarget/ctarget.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ignore.h"

static const char *part(const uint8_t *data, size_t size, size_t *off, size_t *len)
{
    const uint8_t *p = data + *off;
    const uint8_t *z = *off < size ? memchr(p, 0, size - *off) : NULL;
    *len = z ? (size_t)(z - p) : size - *off;
    *off += *len + (z ? 1 : 0);
    return (const char *)p;
}

/* A name the walker could produce: non-empty components, no "." or "..". */
static int walkable(const char *p)
{
    if (!*p)
        return 0;
    for (const char *c = p; c;) {
        const char *s = strchr(c, '/');
        size_t n = s ? (size_t)(s - c) : strlen(c);
        if (!n || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c = s ? s + 1 : NULL;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char root[4200], sub[4300], file[4400];
    snprintf(root, sizeof root, "%s/tree", fz_scratch());
    fz_wipe(fz_scratch());
    mkdir(root, 0700);
    snprintf(sub, sizeof sub, "%s/sub", root);
    mkdir(sub, 0700);
    size_t off = 0, len;
    const char *p = part(data, size, &off, &len);
    snprintf(file, sizeof file, "%s/.gitignore", root);
    fz_write_file(file, p, len);
    int root_rules = len > 0;
    p = part(data, size, &off, &len);
    snprintf(file, sizeof file, "%s/.gitignore", sub);
    fz_write_file(file, p, len);
    int sub_rules = len > 0;
    char *paths = fz_strndup(data + off, off < size ? size - off : 0);

    ignore *ig = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    FZ_CHECK(ignore_open(root, &ig, &err) == CTARGET_OK, "ignore_open: %s", err.message);
    FZ_CHECK(ignore_enter(ig, "", &err) == CTARGET_OK, "enter root: %s", err.message);
    /* the directories entered below the root, as a stack of prefixes of one path */
    char entered[4096] = "";
    size_t depth = 0;
    for (char *line = paths, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        size_t l = strlen(line);
        int is_dir = l && line[l - 1] == '/';
        if (is_dir)
            line[--l] = '\0';
        if (!walkable(line) || l >= sizeof entered)
            continue;
        /* leave directories that are not a prefix of this path's directory */
        const char *slash = strrchr(line, '/');
        size_t dl = slash ? (size_t)(slash - line) : 0;
        while (depth && !(strlen(entered) <= dl && !strncmp(line, entered, strlen(entered)) &&
                          line[strlen(entered)] == '/')) {
            ignore_leave(ig);
            depth--;
            char *cut = strrchr(entered, '/');
            if (cut)
                *cut = '\0';
            else
                entered[0] = '\0';
        }
        /* enter the rest of the way, each directory checked as the walker would */
        int skipped = 0;
        while (strlen(entered) < dl) {
            size_t el = strlen(entered);
            const char *from = line + (el ? el + 1 : 0);
            const char *to = strchr(from, '/');
            char dir[4096];
            snprintf(dir, sizeof dir, "%.*s", (int)(to - line), line);
            if (ignore_is_excluded(ig, dir, 1)) {
                skipped = 1;
                break;
            }
            FZ_CHECK(ignore_enter(ig, dir, &err) == CTARGET_OK, "enter %s: %s", dir,
                     err.message);
            depth++;
            snprintf(entered, sizeof entered, "%s", dir);
        }
        if (skipped)
            continue;
        int ex = ignore_is_excluded(ig, line, is_dir);
        FZ_CHECK(ex == 0 || ex == 1, "answer %d for %s", ex, line);
        FZ_CHECK(ex == ignore_is_excluded(ig, line, is_dir), "unstable answer for %s", line);
        const char *base = slash ? slash + 1 : line;
        if (!strcmp(base, ".git"))
            FZ_CHECK(ex, ".git not excluded: %s", line);
        int in_sub = !strncmp(entered, "sub", 3) && (entered[3] == '\0' || entered[3] == '/');
        if (!root_rules && !(sub_rules && in_sub) && strcmp(base, ".git"))
            FZ_CHECK(!ex, "%s excluded with no rules", line);
    }
    while (depth--)
        ignore_leave(ig);
    ignore_leave(ig);
    ignore_free(ig);
    free(paths);
    return 0;
}
