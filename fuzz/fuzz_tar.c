/* Fuzz target: safe archive extraction (core/archive*.c): the generic tar extractor and the
 * transport reader (manifest.jsonl, then blobs/<sha256>), whichever the input's first entry
 * selects, as `ctarget snapshot extract` runs them.
 *
 * Each input is written to <scratch>/in.tar and extracted into <scratch>/dest, next to a
 * sentinel directory <scratch>/outside; the scratch directory is wiped per input.  The safety
 * invariant checked after every extraction: nothing was created or changed outside dest
 * (the scratch directory holds exactly in.tar, outside/ and dest/; outside/ holds its one
 * file, unchanged); inside dest there are only files, directories and symlinks, and every
 * symlink stays inside dest however it resolves (lexically and through the links it passes);
 * no staging directory is left; and a refused archive leaves dest empty, as
 * core/tarstream.h promises ("the whole archive is checked before anything is written"). */
#include "config.h"

#include "fuzz.h"

#include <ctarget/ctarget.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tarstream.h"

#define SENTINEL "sentinel: must never change\n"

static char scratch_real[PATH_MAX], dest_real[PATH_MAX];

/* a + "/" + b into out (PATH_MAX); 0 when it does not fit */
static int join(char *out, const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la + 1 + lb >= PATH_MAX)
        return 0;
    memcpy(out, a, la);
    out[la] = '/';
    memcpy(out + la + 1, b, lb + 1);
    return 1;
}

static int inside(const char *real, const char *top)
{
    size_t n = strlen(top);
    return !strncmp(real, top, n) && (real[n] == '/' || real[n] == '\0');
}

/* Resolve a symlink's target the way the kernel would, but without requiring the final
 * object to exist: every existing prefix is resolved by realpath (following links), the
 * rest applied lexically.  Returns 0 when the result stays inside dest. */
static int link_escapes(const char *linkdir, const char *target, int hops)
{
    if (target[0] == '/')
        return 1;
    if (hops > 40)
        return 0; /* a loop: the kernel gives ELOOP, nothing is reached */
    char cur[PATH_MAX];
    snprintf(cur, sizeof cur, "%s", linkdir);
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", target);
    for (char *c = buf, *next; c; c = next) {
        next = strchr(c, '/');
        if (next)
            *next++ = '\0';
        if (!*c || !strcmp(c, "."))
            continue;
        if (!strcmp(c, "..")) {
            char *s = strrchr(cur, '/');
            if (s && s != cur)
                *s = '\0';
            else
                snprintf(cur, sizeof cur, "/");
            if (!inside(cur, dest_real))
                return 1;
            continue;
        }
        char step[PATH_MAX];
        if (!join(step, strcmp(cur, "/") ? cur : "", c))
            return 0; /* too long for the kernel too */
        struct stat st;
        if (lstat(step, &st) == 0 && S_ISLNK(st.st_mode)) {
            char t[PATH_MAX];
            ssize_t n = readlink(step, t, sizeof t - 1);
            if (n < 0)
                return 0;
            t[n] = '\0';
            if (t[0] == '/')
                return 1;
            /* continue from where that link leads */
            if (link_escapes(cur, t, hops + 1))
                return 1;
            char joined[PATH_MAX];
            if (!join(joined, cur, t))
                return 0;
            char r[PATH_MAX];
            if (!realpath(joined, r))
                return 0; /* dangling through a link: nothing reached */
            snprintf(cur, sizeof cur, "%s", r);
        } else {
            memcpy(cur, step, strlen(step) + 1);
        }
        if (!inside(cur, dest_real))
            return 1;
    }
    return !inside(cur, dest_real);
}

static size_t check_tree(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        n++;
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (depth == 0)
            FZ_CHECK(strncmp(e->d_name, ".ctarget-staging-", 17), "staging left: %s", p);
        struct stat st;
        FZ_CHECK(lstat(p, &st) == 0, "lstat %s: %s", p, strerror(errno));
        if (S_ISDIR(st.st_mode)) {
            check_tree(p, depth + 1);
        } else if (S_ISLNK(st.st_mode)) {
            char t[PATH_MAX];
            ssize_t l = readlink(p, t, sizeof t - 1);
            FZ_CHECK(l >= 0, "readlink %s", p);
            t[l] = '\0';
            char dreal[PATH_MAX];
            FZ_CHECK(realpath(dir, dreal), "realpath %s", dir);
            FZ_CHECK(!link_escapes(dreal, t, 0), "symlink %s -> %s leads outside the "
                     "destination", p + strlen(dest_real) + 1, t);
        } else {
            FZ_CHECK(S_ISREG(st.st_mode), "%s is neither file, directory nor symlink (mode "
                     "%o)", p, (unsigned)st.st_mode);
        }
    }
    closedir(d);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = fz_scratch();
    char in[PATH_MAX], dest[PATH_MAX], outside[PATH_MAX], keep[PATH_MAX];
    snprintf(in, sizeof in, "%s/in.tar", s);
    snprintf(dest, sizeof dest, "%s/dest", s);
    snprintf(outside, sizeof outside, "%s/outside", s);
    snprintf(keep, sizeof keep, "%s/outside/keep", s);
    fz_wipe(s);
    FZ_CHECK(realpath(s, scratch_real), "realpath %s", s);
    FZ_CHECK(join(dest_real, scratch_real, "dest"), "scratch path too long");
    fz_write_file(in, data, size);
    mkdir(outside, 0700);
    fz_write_file(keep, SENTINEL, strlen(SENTINEL));

    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = arch_extract_safe(in, dest, NULL, &err);
    if (rc != CTARGET_OK)
        FZ_CHECK(err.message[0], "refused without a message");
    fz_note("extract: %s", rc == CTARGET_OK ? "ok" : err.message);

    /* nothing outside dest */
    DIR *d = opendir(s);
    FZ_CHECK(d, "scratch gone");
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        FZ_CHECK(!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, "in.tar") ||
                     !strcmp(n, "outside") || !strcmp(n, "dest"),
                 "'%s' was created outside the destination", n);
    }
    closedir(d);
    struct stat st;
    FZ_CHECK(lstat(outside, &st) == 0 && S_ISDIR(st.st_mode), "outside/ was replaced");
    FZ_CHECK(lstat(keep, &st) == 0 && S_ISREG(st.st_mode) &&
                 st.st_size == (off_t)strlen(SENTINEL),
             "outside/keep was changed");
    d = opendir(outside);
    size_t count = 0;
    while (d && (e = readdir(d)))
        count += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d)
        closedir(d);
    FZ_CHECK(count == 1, "%zu entries in outside/", count);
    if (lstat(dest, &st) == 0) {
        FZ_CHECK(S_ISDIR(st.st_mode), "dest is not a directory");
        size_t n = check_tree(dest, 0);
        if (rc != CTARGET_OK)
            FZ_CHECK(n == 0, "refused (%s), yet %zu entries were written", err.message, n);
    }
    return 0;
}
