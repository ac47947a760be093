/* Extraction of ctarget transport tars: manifest.jsonl, then blobs/<sha256>.
 *
 * Order of work, so that a hostile or damaged archive changes nothing but a staging
 * directory that is removed again: (1) read and check the whole manifest, (2) stream every
 * blob into the staging directory inside dest, verifying its sha256 against its name,
 * (3) check that every file's blob is present (archive or local blob store), and only then
 * (4) build the tree. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include "crypto_lib.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tarstream.h"
#include "archive_int.h"
#include "blobstore.h"
#include "util.h"

#define MANIFEST_MAX (256u * 1024 * 1024)
#define CHUNK (256 * 1024)

typedef struct mentry {
    char *path, *type, *sha, *target;
    mode_t mode;
    long long size;
} mentry;

typedef struct manifest {
    mentry *e;
    size_t n;
} manifest;

static void manifest_free(manifest *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->e[i].path);
        free(m->e[i].type);
        free(m->e[i].sha);
        free(m->e[i].target);
    }
    free(m->e);
}

static int valid_sha(const char *s)
{
    if (!s || strlen(s) != 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return 0;
    return 1;
}

/* One manifest line into an entry, with every path rule applied. */
static ctarget_status parse_entry(const char *line, mentry *me, const names *links,
                                  const char *prev, ctarget_error *err)
{
    json_t *j = json_loads(line, 0, NULL);
    const char *path = json_string_value(json_object_get(j, "path"));
    const char *type = json_string_value(json_object_get(j, "type"));
    ctarget_status rc = CTARGET_OK;
    const char *why = NULL;
    char *clean = path ? clean_name(path, &why) : NULL;
    if (!j || !path || !type) {
        rc = refuse(err, line, "not a manifest entry");
    } else if (!clean || strcmp(clean, path)) {
        rc = refuse(err, path, why ? why : "path is not in canonical form");
    } else if (prev && strcmp(prev, path) >= 0) {
        rc = refuse(err, path, "manifest entries are not sorted or repeat a path");
    } else if (through_link(links, path)) {
        rc = refuse(err, path, "it would be written through a symlink in the snapshot");
    } else {
        me->path = xstrdup(path);
        me->type = xstrdup(type);
        json_int_t mode = json_integer_value(json_object_get(j, "mode"));
        me->mode = (mode_t)(mode & 0777);
        me->size = json_integer_value(json_object_get(j, "size"));
        const char *sha = json_string_value(json_object_get(j, "sha256"));
        const char *target = json_string_value(json_object_get(j, "target"));
        if (!strcmp(type, "file")) {
            if (!valid_sha(sha) || me->size < 0)
                rc = refuse(err, path, "file entry without a valid sha256 and size");
            else
                me->sha = xstrdup(sha);
        } else if (!strcmp(type, "symlink")) {
            if (!target || !link_target_inside(path, target))
                rc = refuse(err, path, "symlink pointing outside the destination (or "
                            "using '..' after a name, which could lead out through "
                            "another link)");
            else
                me->target = xstrdup(target);
        } else if (strcmp(type, "dir")) {
            rc = refuse(err, path, "unknown entry type (only file, dir and symlink)");
        }
    }
    if (rc) { /* a refused entry is not counted in the manifest: free what it had */
        free(me->path);
        free(me->type);
        free(me->sha);
        free(me->target);
        memset(me, 0, sizeof *me);
    }
    free(clean);
    json_decref(j);
    return rc;
}

/* Whether the entry's parent directory is a "dir" entry among the n before it (sorted). */
static int parent_is_dir(const manifest *m, size_t n, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return 1;
    size_t pl = (size_t)(slash - path), lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *q = m->e[mid].path;
        int c = strncmp(q, path, pl);
        if (!c)
            c = q[pl] ? 1 : 0;
        if (!c)
            return !strcmp(m->e[mid].type, "dir");
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static ctarget_status parse_manifest(char *text, manifest *m, ctarget_error *err)
{
    char *nl = strchr(text, '\n');
    if (nl)
        *nl = '\0';
    json_t *h = json_loads(text, 0, NULL);
    json_int_t fmt = json_integer_value(json_object_get(h, "format"));
    json_int_t n = json_integer_value(json_object_get(h, "entries"));
    int ok = json_is_string(json_object_get(h, "ctarget_snapshot")) && fmt == 1 && n >= 0;
    json_decref(h);
    if (!ok)
        return refuse(err, "manifest.jsonl", "not a ctarget snapshot manifest of format 1");
    /* grown as entries come: the header's count is the archive's word, and a count of
     * 10^18 must not be an allocation (it made extraction die "out of memory") */
    size_t cap = 16;
    m->e = xcalloc(cap, sizeof *m->e);
    names links = {0};
    ctarget_status rc = CTARGET_OK;
    char *line = nl ? nl + 1 : NULL;
    while (!rc && line && *line) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        if ((json_int_t)m->n >= n) {
            rc = refuse(err, "manifest.jsonl", "more entries than its header declares");
            break;
        }
        if (m->n + 1 >= cap) {
            m->e = xrealloc(m->e, (cap *= 2) * sizeof *m->e);
            memset(m->e + m->n, 0, (cap - m->n) * sizeof *m->e);
        }
        rc = parse_entry(line, &m->e[m->n], &links, m->n ? m->e[m->n - 1].path : NULL, err);
        /* as in a snapshot's own manifest (snap_manifest.c): a file under a file would be
         * refused only while the tree is built, after the entries before it were written */
        if (!rc && !parent_is_dir(m, m->n, m->e[m->n].path)) {
            rc = refuse(err, m->e[m->n].path, "its parent is not a directory of the snapshot");
            free(m->e[m->n].path);
            free(m->e[m->n].type);
            free(m->e[m->n].sha);
            free(m->e[m->n].target);
            memset(&m->e[m->n], 0, sizeof m->e[m->n]);
        }
        if (!rc) {
            if (m->e[m->n].target)
                names_add(&links, m->e[m->n].path);
            m->n++;
        }
        line = end ? end + 1 : NULL;
    }
    if (!rc && (json_int_t)m->n != n)
        rc = refuse(err, "manifest.jsonl", "fewer entries than its header declares");
    names_free(&links);
    return rc;
}

static ctarget_status read_manifest(struct archive *a, manifest *m, ctarget_error *err)
{
    strbuf sb;
    sb_init(&sb);
    char buf[65536];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0) {
        if (sb.len + (size_t)n > MANIFEST_MAX) {
            sb_free(&sb);
            return refuse(err, "manifest.jsonl", "larger than 256 MB");
        }
        sb_add(&sb, buf, (size_t)n);
    }
    if (n < 0) {
        sb_free(&sb);
        ct_err(err, CTARGET_E_IO, "archive is damaged in manifest.jsonl: %s",
               archive_error_string(a));
        return CTARGET_E_IO;
    }
    ctarget_status rc = parse_manifest(sb.data ? sb.data : (char *)"", m, err);
    sb_free(&sb);
    return rc;
}

/* ---- blobs ---------------------------------------------------------------------------------- */

static void hex(const unsigned char *d, char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Stream the current entry into stage/<sha>, checking the content against the name. */
static ctarget_status stage_blob(struct archive *a, int sfd, const char *sha,
                                 ctarget_error *err)
{
    char *name = xasprintf("blobs/%s", sha);
    int fd = openat(sfd, sha, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        ctarget_status rc = io_fail(err, name, "stage");
        free(name);
        return rc;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    char *buf = xmalloc(CHUNK);
    ctarget_status rc = CTARGET_OK;
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, CHUNK)) > 0) {
        EVP_DigestUpdate(ctx, buf, (size_t)n);
        if (write(fd, buf, (size_t)n) != n) {
            rc = io_fail(err, name, "stage");
            break;
        }
    }
    if (!rc && n < 0) {
        ct_err(err, CTARGET_E_IO, "archive is damaged at %s: %s", name,
               archive_error_string(a));
        rc = CTARGET_E_IO;
    }
    unsigned char d[32];
    char got[65];
    EVP_DigestFinal_ex(ctx, d, NULL);
    hex(d, got);
    if (!rc && strcmp(got, sha))
        rc = refuse(err, name, "its content does not match its sha256");
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
    if (rc)
        unlinkat(sfd, sha, 0);
    free(name);
    return rc;
}

static ctarget_status stage_all(struct archive *a, int sfd, names *staged, const char *src,
                                ctarget_error *err)
{
    struct archive_entry *e;
    int r;
    ctarget_status rc = CTARGET_OK;
    while (!rc && (r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *p = arch_entry_name(e);
        if (strncmp(p, "blobs/", 6) || !valid_sha(p + 6) ||
            archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e))
            return refuse(err, p, "not part of a ctarget snapshot archive (only "
                          "manifest.jsonl and blobs/<sha256>)");
        if ((rc = stage_blob(a, sfd, p + 6, err)) == CTARGET_OK)
            names_add(staged, p + 6);
    }
    if (!rc && r != ARCHIVE_EOF) {
        ct_err(err, CTARGET_E_IO, "%s is damaged: %s", src, archive_error_string(a));
        rc = CTARGET_E_IO;
    }
    return rc;
}

/* Copy src (sha-verified when `verify`) into a new file rel below dfd. */
static ctarget_status place_file(int from, int dfd, const mentry *me, int verify,
                                 ctarget_error *err)
{
    const char *base;
    int pfd = open_parent(dfd, me->path, &base);
    if (pfd < 0)
        return io_fail(err, me->path, "create the directory of");
    int fd = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    close(pfd);
    if (fd < 0)
        return io_fail(err, me->path, "create");
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    char *buf = xmalloc(CHUNK);
    ctarget_status rc = CTARGET_OK;
    long long total = 0;
    ssize_t n;
    while ((n = read(from, buf, CHUNK)) > 0) {
        EVP_DigestUpdate(ctx, buf, (size_t)n);
        total += n;
        if (write(fd, buf, (size_t)n) != n) {
            rc = io_fail(err, me->path, "write");
            break;
        }
    }
    if (!rc && n < 0)
        rc = io_fail(err, me->path, "read the blob of");
    unsigned char d[32];
    char got[65];
    EVP_DigestFinal_ex(ctx, d, NULL);
    hex(d, got);
    if (!rc && (total != me->size || (verify && strcmp(got, me->sha)))) {
        ct_err(err, CTARGET_E_IO, "blob %s for '%s' is damaged in the local blob store",
               me->sha, me->path);
        rc = CTARGET_E_IO;
    }
    if (!rc && fchmod(fd, me->mode) != 0)
        rc = io_fail(err, me->path, "set the mode of");
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
    return rc;
}

static int open_blob(int sfd, const names *staged, const char *blob_root, const char *sha,
                     int *verify)
{
    if (names_has(staged, sha)) {
        *verify = 0; /* checked while staging */
        return openat(sfd, sha, O_RDONLY | O_CLOEXEC);
    }
    if (!blob_root)
        return -1;
    char *p = blob_path(blob_root, sha);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    free(p);
    *verify = 1;
    return fd;
}

static ctarget_status build_tree(int dfd, int sfd, const manifest *m, const names *staged,
                                 const char *blob_root, ctarget_error *err)
{
    /* every blob must be there, and of the size the manifest says, before the first file is
     * written: a staged blob's content is verified already, so a refused archive leaves
     * dest untouched (a size that disagrees used to be noticed only when that file was
     * written, after the files before it) */
    for (size_t i = 0; i < m->n; i++) {
        int v;
        if (!m->e[i].sha)
            continue;
        int fd = open_blob(sfd, staged, blob_root, m->e[i].sha, &v);
        if (fd < 0) {
            ct_err(err, CTARGET_E_NOT_FOUND, "blob %s for '%s' is neither in the archive nor "
                   "in the local blob store", m->e[i].sha, m->e[i].path);
            return CTARGET_E_NOT_FOUND;
        }
        struct stat st;
        int same = fstat(fd, &st) == 0 && (long long)st.st_size == m->e[i].size;
        close(fd);
        if (!same) {
            ct_err(err, CTARGET_E_FAILED, "refused archive entry '%s': its blob %s %s does "
                   "not have the %lld bytes the manifest says; nothing was extracted",
                   m->e[i].path, m->e[i].sha, v ? "in the local blob store" : "in the archive",
                   m->e[i].size);
            return CTARGET_E_FAILED;
        }
    }
    for (size_t i = 0; i < m->n; i++) {
        const mentry *me = &m->e[i];
        const char *base;
        ctarget_status rc = CTARGET_OK;
        if (me->sha) {
            int v;
            int fd = open_blob(sfd, staged, blob_root, me->sha, &v);
            rc = fd < 0 ? io_fail(err, me->path, "read the blob of")
                        : place_file(fd, dfd, me, v, err);
            if (fd >= 0)
                close(fd);
        } else {
            int pfd = open_parent(dfd, me->path, &base);
            if (pfd < 0)
                return io_fail(err, me->path, "create the directory of");
            if (me->target ? symlinkat(me->target, pfd, base) != 0
                           : mkdirat(pfd, base, me->mode | 0700) != 0 && errno != EEXIST)
                rc = io_fail(err, me->path, "create");
            else if (!me->target && fchmodat(pfd, base, me->mode | 0700, 0) != 0)
                rc = io_fail(err, me->path, "set the mode of");
            close(pfd);
        }
        if (rc)
            return rc;
    }
    return CTARGET_OK;
}

static void remove_stage(int dfd, const char *stage, int sfd, const names *staged)
{
    for (size_t i = 0; i < staged->n; i++)
        unlinkat(sfd, staged->v[i], 0);
    close(sfd);
    unlinkat(dfd, stage, AT_REMOVEDIR);
}

ctarget_status arch_transport_extract(struct archive *a, const char *src, int dfd,
                                      const char *blob_root, ctarget_error *err)
{
    struct archive_entry *e;
    int r = archive_read_next_header(a, &e);
    if (r == ARCHIVE_EOF) {
        ct_err(err, CTARGET_E_FAILED, "%s is an empty archive", src);
        return CTARGET_E_FAILED;
    }
    if (r != ARCHIVE_OK) {
        ct_err(err, CTARGET_E_IO, "%s is not a readable tar archive: %s", src,
               archive_error_string(a));
        return CTARGET_E_IO;
    }
    if (strcmp(arch_entry_name(e), "manifest.jsonl"))
        return arch_generic_stream(a, e, dfd, src, err); /* a plain tar from stdin */
    manifest m = {0};
    ctarget_status rc = read_manifest(a, &m, err);
    if (rc) {
        manifest_free(&m);
        return rc;
    }
    char stage[64];
    snprintf(stage, sizeof stage, ".ctarget-staging-%ld", (long)getpid());
    int sfd = -1;
    if (mkdirat(dfd, stage, 0700) != 0 ||
        (sfd = openat(dfd, stage, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        rc = io_fail(err, stage, "create");
        manifest_free(&m);
        return rc;
    }
    names staged = {0};
    rc = stage_all(a, sfd, &staged, src, err);
    if (!rc)
        rc = build_tree(dfd, sfd, &m, &staged, blob_root, err);
    remove_stage(dfd, stage, sfd, &staged);
    names_free(&staged);
    manifest_free(&m);
    return rc;
}
