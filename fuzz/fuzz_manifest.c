/* Fuzz target: snapshot manifest parsing (core/snap_manifest.c, the manifest.jsonl format
 * of include/ctarget/plugin.h).  Properties of an accepted manifest: paths sorted and
 * unique, relative, without "." or ".." components, every parent a directory entry; and it
 * survives a round trip (written back by snap_manifest_lines, parsed again: the same tree). */
#include "config.h"

#include "fuzz.h"

#include <ctarget/ctarget.h>

#include <string.h>

#include "snapshot.h"
#include "util.h"

static int clean_path(const char *p)
{
    if (!*p || *p == '/')
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
    snap_tree t;
    ctarget_error err;
    ctarget_error_init(&err);
    if (snap_manifest_parse((const char *)data, size, &t, &err) != CTARGET_OK) {
        FZ_CHECK(err.message[0], "refused without a message");
        fz_note("manifest: %s", err.message);
        return 0;
    }
    for (size_t i = 0; i < t.n; i++) {
        const snap_entry *e = &t.v[i];
        FZ_CHECK(clean_path(e->path), "accepted path '%s'", e->path);
        if (i)
            FZ_CHECK(strcmp(t.v[i - 1].path, e->path) < 0, "'%s' after '%s'", e->path,
                     t.v[i - 1].path);
        FZ_CHECK(snap_tree_find(&t, e->path) == e, "find('%s') is another entry", e->path);
        const char *slash = strrchr(e->path, '/');
        if (slash) {
            char *parent = xstrndup(e->path, (size_t)(slash - e->path));
            const snap_entry *pe = snap_tree_find(&t, parent);
            FZ_CHECK(pe && pe->type == SNAP_DIR, "parent of '%s' is no directory", e->path);
            free(parent);
        }
        if (e->type == SNAP_LINK)
            FZ_CHECK(e->target && *e->target, "symlink '%s' without a target", e->path);
        else
            FZ_CHECK(e->mode <= 0777, "mode %o of '%s'", e->mode, e->path);
    }
    fz_note("manifest: %zu entries", t.n);
    strbuf sb;
    sb_init(&sb);
    snap_manifest_lines(&t, &sb);
    snap_tree t2;
    FZ_CHECK(snap_manifest_parse(sb.data ? sb.data : "", sb.len, &t2, &err) == CTARGET_OK,
             "own output refused: %s", err.message);
    FZ_CHECK(t2.n == t.n && t2.files == t.files && t2.bytes == t.bytes,
             "round trip: %zu entries, now %zu", t.n, t2.n);
    for (size_t i = 0; i < t.n; i++) {
        const snap_entry *a = &t.v[i], *b = &t2.v[i];
        FZ_CHECK(!strcmp(a->path, b->path) && a->type == b->type, "round trip of '%s'",
                 a->path);
        if (a->type == SNAP_LINK)
            FZ_CHECK(!strcmp(a->target, b->target), "target of '%s'", a->path);
        else
            FZ_CHECK(a->mode == b->mode, "mode of '%s'", a->path);
        if (a->type == SNAP_FILE)
            FZ_CHECK(a->size == b->size && !strcmp(a->sha, b->sha), "file '%s'", a->path);
    }
    const snap_entry **blobs = NULL;
    size_t nb = snap_tree_blobs(&t, &blobs);
    FZ_CHECK(nb <= t.files, "%zu blobs for %zu files", nb, (size_t)t.files);
    free(blobs);
    sb_free(&sb);
    snap_tree_free(&t2);
    snap_tree_free(&t);
    return 0;
}
