/* Snapshot trees and their manifest lines (format in snapshot.h and plugin.h). */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blobstore.h"
#include "crypto_lib.h"
#include "snapshot.h"
#include "util.h"

void snap_tree_free(snap_tree *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].path);
        free(t->v[i].target);
    }
    free(t->v);
    memset(t, 0, sizeof *t);
}

snap_entry *snap_tree_add_owned(snap_tree *t, char *path, snap_type type)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->v = xrealloc(t->v, t->cap * sizeof *t->v);
    }
    snap_entry *e = &t->v[t->n++];
    memset(e, 0, sizeof *e);
    e->path = path;
    e->type = type;
    return e;
}

snap_entry *snap_tree_add(snap_tree *t, const char *path, snap_type type)
{
    return snap_tree_add_owned(t, xstrdup(path), type);
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const snap_entry *)a)->path, ((const snap_entry *)b)->path);
}

void snap_tree_sort(snap_tree *t)
{
    if (t->n)
        qsort(t->v, t->n, sizeof *t->v, cmp_entry);
}

const snap_entry *snap_tree_find(const snap_tree *t, const char *path)
{
    snap_entry key = {.path = (char *)path};
    return t->n ? bsearch(&key, t->v, t->n, sizeof *t->v, cmp_entry) : NULL;
}

const char *snap_type_name(snap_type type)
{
    return type == SNAP_DIR ? "dir" : type == SNAP_LINK ? "symlink" : "file";
}

/* JSON string with the minimal, fixed escaping the id depends on.  Runs of plain bytes are
 * copied at once: this runs for every entry of every snapshot. */
static void add_json_str(strbuf *sb, const char *s)
{
    sb_addc(sb, '"');
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p != '"' && *p != '\\')
            p++;
        if (p > run)
            sb_add(sb, run, (size_t)(p - run));
        if (!*p)
            break;
        switch (*p) {
        case '"': sb_adds(sb, "\\\""); break;
        case '\\': sb_adds(sb, "\\\\"); break;
        case '\b': sb_adds(sb, "\\b"); break;
        case '\f': sb_adds(sb, "\\f"); break;
        case '\n': sb_adds(sb, "\\n"); break;
        case '\r': sb_adds(sb, "\\r"); break;
        case '\t': sb_adds(sb, "\\t"); break;
        default: sb_addf(sb, "\\u%04x", *p);
        }
        p++;
    }
    sb_addc(sb, '"');
}

/* Decimal digits of v at the end of buf[24]; returns where they start. */
static char *fmt_u64(uint64_t v, char buf[24])
{
    char *p = buf + 24;
    do
        *--p = (char)('0' + v % 10);
    while ((v /= 10));
    return p;
}

static void add_u64(strbuf *sb, uint64_t v)
{
    char buf[24];
    char *p = fmt_u64(v, buf);
    sb_add(sb, p, (size_t)(buf + 24 - p));
}

/* Written piece by piece rather than with printf: this runs for every entry of every
 * snapshot, and a warm snapshot is little else. */
void snap_manifest_lines(const snap_tree *t, strbuf *sb)
{
    size_t guess = sb->len;
    for (size_t i = 0; i < t->n; i++)
        guess += 140 + strlen(t->v[i].path);
    sb_reserve(sb, guess);
    for (size_t i = 0; i < t->n; i++) {
        const snap_entry *e = &t->v[i];
        sb_adds(sb, "{\"path\": ");
        add_json_str(sb, e->path);
        sb_adds(sb, ", \"type\": \"");
        sb_adds(sb, snap_type_name(e->type));
        sb_addc(sb, '"');
        if (e->type == SNAP_LINK) {
            sb_adds(sb, ", \"target\": ");
            add_json_str(sb, e->target);
        } else {
            sb_adds(sb, ", \"mode\": ");
            add_u64(sb, e->mode & 0777);
        }
        if (e->type == SNAP_FILE) {
            sb_adds(sb, ", \"size\": ");
            add_u64(sb, e->size);
            sb_adds(sb, ", \"sha256\": \"");
            sb_add(sb, e->sha, strlen(e->sha));
            sb_addc(sb, '"');
        }
        sb_adds(sb, "}\n");
    }
}

char *snap_manifest_header(const char *id, size_t n)
{
    return xasprintf("{\"ctarget_snapshot\": \"%s\", \"format\": 1, \"entries\": %zu}\n", id, n);
}

/* Relative, '/'-separated, no empty, "." or ".." component. */
static int safe_relpath(const char *p)
{
    if (!*p || *p == '/')
        return 0;
    for (const char *c = p; c;) {
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        c = slash ? slash + 1 : NULL;
    }
    return 1;
}

static ctarget_status parse_line(json_t *j, snap_tree *t, size_t lineno, ctarget_error *err)
{
    const char *path = json_string_value(json_object_get(j, "path"));
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!path || !type || !safe_relpath(path))
        goto bad;
    json_t *mode = json_object_get(j, "mode");
    if (!strcmp(type, "symlink")) {
        const char *target = json_string_value(json_object_get(j, "target"));
        if (!target || !*target)
            goto bad;
        snap_tree_add(t, path, SNAP_LINK)->target = xstrdup(target);
        t->files++;
        return CTARGET_OK;
    }
    if (!json_is_integer(mode) || json_integer_value(mode) < 0 || json_integer_value(mode) > 0777)
        goto bad;
    if (!strcmp(type, "dir")) {
        snap_tree_add(t, path, SNAP_DIR)->mode = (unsigned)json_integer_value(mode);
        return CTARGET_OK;
    }
    json_t *size = json_object_get(j, "size");
    const char *sha = json_string_value(json_object_get(j, "sha256"));
    if (strcmp(type, "file") || !json_is_integer(size) || json_integer_value(size) < 0 || !sha ||
        !blob_valid_sha(sha))
        goto bad;
    snap_entry *e = snap_tree_add(t, path, SNAP_FILE);
    e->mode = (unsigned)json_integer_value(mode);
    e->size = (uint64_t)json_integer_value(size);
    memcpy(e->sha, sha, 65);
    t->files++;
    t->bytes += e->size;
    return CTARGET_OK;
bad:
    ct_err(err, CTARGET_E_FAILED, "snapshot manifest: entry %zu is malformed", lineno);
    return CTARGET_E_FAILED;
}

/* Sorted, unique, and every entry's parent is a directory entry: nothing in the manifest
 * can make a receiver write through a symlink. */
static ctarget_status check_structure(const snap_tree *t, ctarget_error *err)
{
    for (size_t i = 0; i < t->n; i++) {
        const char *p = t->v[i].path;
        if (i && strcmp(t->v[i - 1].path, p) >= 0) {
            ct_err(err, CTARGET_E_FAILED, "snapshot manifest: '%s' is out of order", p);
            return CTARGET_E_FAILED;
        }
        const char *slash = strrchr(p, '/');
        if (!slash)
            continue;
        char *parent = xstrndup(p, (size_t)(slash - p));
        const snap_entry *pe = snap_tree_find(t, parent);
        free(parent);
        if (!pe || pe->type != SNAP_DIR) {
            ct_err(err, CTARGET_E_FAILED, "snapshot manifest: parent of '%s' is not a directory",
                   p);
            return CTARGET_E_FAILED;
        }
    }
    return CTARGET_OK;
}

ctarget_status snap_manifest_parse(const char *text, size_t len, snap_tree *t,
                                   ctarget_error *err)
{
    memset(t, 0, sizeof *t);
    const char *p = text, *end = text + len;
    size_t lineno = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
        lineno++;
        json_error_t je;
        json_t *j = json_loadb(p, l, 0, &je);
        ctarget_status rc = j ? parse_line(j, t, lineno, err) : CTARGET_E_FAILED;
        if (!j)
            ct_err(err, rc, "snapshot manifest: entry %zu: %s", lineno, je.text);
        json_decref(j);
        if (rc) {
            snap_tree_free(t);
            return rc;
        }
        p += l + 1;
    }
    ctarget_status rc = check_structure(t, err);
    if (rc)
        snap_tree_free(t);
    return rc;
}

ctarget_status snap_manifest_read(const char *blob_root, const char *id, char **text,
                                  size_t *len, ctarget_error *err)
{
    *text = NULL;
    *len = 0;
    if (!blob_valid_sha(id)) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no snapshot '%.80s'", id);
        return CTARGET_E_NOT_FOUND;
    }
    ctarget_status rc = crypto_load(err); /* the manifest is checked against its id */
    if (rc)
        return rc;
    char *p = blob_path(blob_root, id);
    char *data = file_read_all(p, len);
    int e = errno;
    free(p);
    if (!data) {
        ct_err_errno(err, e == ENOENT ? CTARGET_E_NOT_FOUND : CTARGET_E_IO, e,
                     "cannot read the manifest of snapshot %s from %s", id, blob_root);
        return e == ENOENT ? CTARGET_E_NOT_FOUND : CTARGET_E_IO;
    }
    char check[65];
    blob_sha256_hex(data, *len, check);
    if (strcmp(check, id)) {
        ct_err(err, CTARGET_E_FAILED, "the manifest of snapshot %s is corrupt (its sha256 is %s)",
               id, check);
        free(data);
        return CTARGET_E_FAILED;
    }
    *text = data;
    return CTARGET_OK;
}

ctarget_status snap_manifest_load(const char *blob_root, const char *id, snap_tree *t,
                                  ctarget_error *err)
{
    memset(t, 0, sizeof *t);
    char *text;
    size_t len;
    ctarget_status rc = snap_manifest_read(blob_root, id, &text, &len, err);
    if (!rc)
        rc = snap_manifest_parse(text, len, t, err);
    free(text);
    return rc;
}

static int cmp_blob_ref(const void *a, const void *b)
{
    return strcmp((*(const snap_entry *const *)a)->sha, (*(const snap_entry *const *)b)->sha);
}

size_t snap_tree_blobs(const snap_tree *t, const snap_entry ***out)
{
    const snap_entry **v = xcalloc(t->n + 1, sizeof *v);
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].type == SNAP_FILE)
            v[n++] = &t->v[i];
    if (n)
        qsort(v, n, sizeof *v, cmp_blob_ref);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!k || strcmp(v[k - 1]->sha, v[i]->sha))
            v[k++] = v[i];
    *out = v;
    return k;
}
