/* Snapshot transport archives and safe extraction, on libarchive.
 *
 * Safety does not rest on checking names alone: every file is created through openat()
 * relative to a directory descriptor opened with O_NOFOLLOW at each step, so even a race
 * with another process cannot make a write land outside the destination. */
#include "config.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctarget/ctarget.h>

#include "tarstream.h"
#include "archive_int.h"
#include "blobstore.h"
#include "crypto_lib.h"
#include "util.h"

#define CHUNK (256 * 1024)

/* ---- writer ------------------------------------------------------------------------------- */

struct arch_writer {
    struct archive *a;
    ctarget_write_fn out;
    void *out_arg;
    int stopped;
};

static la_ssize_t write_cb(struct archive *a, void *cd, const void *buf, size_t n)
{
    arch_writer *w = cd;
    if (w->out(w->out_arg, buf, n)) {
        w->stopped = 1;
        archive_set_error(a, ECANCELED, "the receiver stopped the stream");
        return -1;
    }
    return (la_ssize_t)n;
}

static ctarget_status arch_fail(arch_writer *w, const char *what, ctarget_error *err)
{
    if (w->stopped)
        ct_err(err, CTARGET_E_CANCELED, "%s: the receiver stopped the stream", what);
    else
        ct_err(err, CTARGET_E_IO, "%s: %s", what, archive_error_string(w->a));
    return err->code;
}

ctarget_status arch_writer_open(ctarget_write_fn out, void *out_arg, unsigned flags,
                                arch_writer **wp, ctarget_error *err)
{
    *wp = NULL;
    ctarget_status lrc = arch_lib_load(err);
    if (lrc)
        return lrc;
    arch_writer *w = xcalloc(1, sizeof *w);
    w->out = out;
    w->out_arg = out_arg;
    w->a = archive_write_new();
    /* restricted pax: plain ustar headers unless a name needs more, so the same input
     * always gives the same bytes */
    if (archive_write_set_format_pax_restricted(w->a) != ARCHIVE_OK ||
        ((flags & CTARGET_TAR_ZSTD) && archive_write_add_filter_zstd(w->a) != ARCHIVE_OK) ||
        /* no zero padding after the last block: it would corrupt a compressed stream */
        archive_write_set_bytes_in_last_block(w->a, 1) != ARCHIVE_OK ||
        archive_write_open(w->a, w, NULL, write_cb, NULL) != ARCHIVE_OK) {
        ctarget_status rc = arch_fail(w, "cannot start the archive", err);
        archive_write_free(w->a);
        free(w);
        *wp = NULL;
        return rc;
    }
    *wp = w;
    return CTARGET_OK;
}

static struct archive_entry *file_entry(const char *name, int64_t size)
{
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname_utf8(e, name);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, size);
    archive_entry_set_mtime(e, 0, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    return e;
}

ctarget_status arch_write_bytes(arch_writer *w, const char *name, const void *data, size_t len,
                                ctarget_error *err)
{
    struct archive_entry *e = file_entry(name, (int64_t)len);
    int r = archive_write_header(w->a, e);
    archive_entry_free(e);
    if (r != ARCHIVE_OK || (len && archive_write_data(w->a, data, len) != (la_ssize_t)len))
        return arch_fail(w, name, err);
    return CTARGET_OK;
}

ctarget_status arch_write_file(arch_writer *w, const char *name, const char *path,
                               ctarget_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot read %s", path);
        if (fd >= 0)
            close(fd);
        return CTARGET_E_IO;
    }
    struct archive_entry *e = file_entry(name, (int64_t)st.st_size);
    int r = archive_write_header(w->a, e);
    archive_entry_free(e);
    ctarget_status rc = r == ARCHIVE_OK ? CTARGET_OK : arch_fail(w, name, err);
    char *buf = rc ? NULL : xmalloc(CHUNK);
    off_t left = st.st_size;
    while (!rc && left > 0) {
        ssize_t n = read(fd, buf, CHUNK < left ? CHUNK : (size_t)left);
        if (n <= 0) {
            /* a blob that shrank: the header promised more bytes than exist */
            ct_err_errno(err, CTARGET_E_IO, n < 0 ? errno : 0, "%s changed while being "
                         "archived", path);
            rc = CTARGET_E_IO;
        } else if (archive_write_data(w->a, buf, (size_t)n) != n) {
            rc = arch_fail(w, name, err);
        } else {
            left -= n;
        }
    }
    free(buf);
    close(fd);
    return rc;
}

ctarget_status arch_writer_close(arch_writer *w, ctarget_error *err)
{
    if (!w)
        return CTARGET_OK;
    ctarget_status rc = CTARGET_OK;
    if (archive_write_close(w->a) != ARCHIVE_OK)
        rc = arch_fail(w, "cannot finish the archive", err);
    archive_write_free(w->a);
    free(w);
    return rc;
}

/* Names are UTF-8 whatever the process locale (a library must not depend on setlocale). */
const char *arch_entry_name(struct archive_entry *e)
{
    const char *s = archive_entry_pathname_utf8(e);
    return s ? s : archive_entry_pathname(e);
}

const char *arch_entry_symlink(struct archive_entry *e)
{
    const char *s = archive_entry_symlink_utf8(e);
    return s ? s : archive_entry_symlink(e);
}

const char *arch_entry_hardlink(struct archive_entry *e)
{
    const char *s = archive_entry_hardlink_utf8(e);
    return s ? s : archive_entry_hardlink(e);
}

/* ---- path rules ----------------------------------------------------------------------------- */

/* Normalise an entry name ("./a/b/" -> "a/b") into an owned string, or NULL with a reason. */
char *clean_name(const char *raw, const char **why)
{
    if (!raw || !*raw) {
        *why = "empty name";
        return NULL;
    }
    if (raw[0] == '/') {
        *why = "absolute path";
        return NULL;
    }
    while (raw[0] == '.' && raw[1] == '/')
        raw += 2;
    char *s = xstrdup(raw);
    size_t n = strlen(s);
    while (n && s[n - 1] == '/')
        s[--n] = '\0';
    if (!n || !strcmp(s, ".")) {
        free(s);
        *why = "names the destination itself";
        return NULL;
    }
    for (char *c = s; c;) {
        char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.')) {
            *why = len == 2 ? "path leaves the destination ('..')" : "empty or '.' component";
            free(s);
            return NULL;
        }
        c = slash ? slash + 1 : NULL;
    }
    return s;
}

/* A symlink at `path` pointing to `target` must resolve inside the tree.  Lexically, and
 * also through other links: a ".." after a name ("s/..") is refused, since that name may be
 * a symlink of the archive (s -> "." makes "s/.." the destination's parent).  Leading ".."
 * components climb only the link's own directories, which are real (nothing is written
 * through a symlink), and every link a name resolves to is itself checked by this rule. */
int link_target_inside(const char *path, const char *target)
{
    if (!*target || target[0] == '/')
        return 0;
    int depth = 0, named = 0;
    for (const char *c = path; *c; c++)
        depth += *c == '/';           /* directories above the link inside the tree */
    for (const char *c = target; c && *c;) {
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        if (len == 2 && c[0] == '.' && c[1] == '.') {
            if (named || --depth < 0)
                return 0;
        } else if (len && !(len == 1 && c[0] == '.')) {
            named = 1;
        }
        c = slash ? slash + 1 : NULL;
    }
    return 1;
}

void names_add(names *s, const char *p)
{
    s->v = xrealloc(s->v, (s->n + 1) * sizeof *s->v);
    s->v[s->n++] = xstrdup(p);
}

int names_has(const names *s, const char *p)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->v[i], p))
            return 1;
    return 0;
}

void names_free(names *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

/* Whether a path (or a parent of it) is a symlink declared earlier: writing it would go
 * through the link. */
const char *through_link(const names *links, const char *path)
{
    for (size_t i = 0; i < links->n; i++) {
        size_t l = strlen(links->v[i]);
        if (!strncmp(path, links->v[i], l) && (path[l] == '/' || path[l] == '\0'))
            return links->v[i];
    }
    return NULL;
}

ctarget_status refuse(ctarget_error *err, const char *entry, const char *why)
{
    ct_err(err, CTARGET_E_FAILED, "refused archive entry '%s': %s; nothing was extracted "
           "outside the destination", entry, why);
    return CTARGET_E_FAILED;
}

/* ---- safe creation below a directory descriptor --------------------------------------------- */

/* Open (creating as needed) the parent directory of rel under dirfd, never following a
 * symlink; *base points at the last component. */
int open_parent(int dirfd, const char *rel, const char **base)
{
    int fd = dup(dirfd);
    const char *c = rel;
    for (const char *slash; fd >= 0 && (slash = strchr(c, '/'));) {
        char *comp = xstrndup(c, (size_t)(slash - c));
        if (mkdirat(fd, comp, 0755) != 0 && errno != EEXIST) {
            free(comp);
            close(fd);
            return -1;
        }
        int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        free(comp);
        close(fd);
        fd = next;
        c = slash + 1;
    }
    *base = c;
    return fd;
}

ctarget_status io_fail(ctarget_error *err, const char *rel, const char *what)
{
    int e = errno;
    if (e == ELOOP || e == ENOTDIR)
        return refuse(err, rel, "it would be written through a symlink");
    ct_err_errno(err, CTARGET_E_IO, e, "cannot %s %s", what, rel);
    return CTARGET_E_IO;
}

/* ---- generic tars --------------------------------------------------------------------------- */

struct archive *arch_open_reader(const char *path, ctarget_error *err)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    int r = !strcmp(path, "-") ? archive_read_open_fd(a, 0, 64 * 1024)
                               : archive_read_open_filename(a, path, 64 * 1024);
    if (r != ARCHIVE_OK) {
        ct_err(err, CTARGET_E_IO, "cannot read archive %s: %s", path,
               archive_error_string(a) ? archive_error_string(a) : "unknown error");
        archive_read_free(a);
        return NULL;
    }
    return a;
}

typedef struct checker {
    names files;   /* regular files so far: the only hardlink targets allowed */
    names links;   /* symlinks so far */
} checker;

/* One entry's checks; fills *clean with the normalised name. */
static ctarget_status check_entry(checker *ck, struct archive_entry *e, char **clean,
                                  ctarget_error *err)
{
    const char *why = NULL, *raw = arch_entry_name(e);
    *clean = clean_name(raw, &why);
    if (!*clean)
        return refuse(err, raw ? raw : "", why);
    const char *via = through_link(&ck->links, *clean);
    if (via)
        return refuse(err, *clean, "it would be written through the symlink in the archive");
    const char *hl = arch_entry_hardlink(e);
    if (hl) {
        char *t = clean_name(hl, &why);
        int ok = t && names_has(&ck->files, t);
        free(t);
        if (!ok)
            return refuse(err, *clean, "hardlink to a file outside the extracted tree");
        names_add(&ck->files, *clean);
        return CTARGET_OK;
    }
    switch (archive_entry_filetype(e)) {
    case AE_IFREG:
        names_add(&ck->files, *clean);
        return CTARGET_OK;
    case AE_IFDIR:
        return CTARGET_OK;
    case AE_IFLNK: {
        const char *t = arch_entry_symlink(e);
        if (!t || !link_target_inside(*clean, t))
            return refuse(err, *clean, "symlink pointing outside the destination (or "
                          "using '..' after a name, which could lead out through "
                          "another link)");
        names_add(&ck->links, *clean);
        return CTARGET_OK;
    }
    default:
        return refuse(err, *clean, "device nodes, FIFOs and sockets are never extracted");
    }
}

static ctarget_status write_entry(struct archive *a, struct archive_entry *e, int dfd,
                                  const char *rel, ctarget_error *err)
{
    const char *base;
    int pfd = open_parent(dfd, rel, &base);
    if (pfd < 0)
        return io_fail(err, rel, "create the directory of");
    ctarget_status rc = CTARGET_OK;
    const char *hl = arch_entry_hardlink(e);
    mode_t mode = archive_entry_perm(e) & 0777;
    if (hl) {
        const char *why, *tbase;
        char *t = clean_name(hl, &why);
        int tfd = t ? open_parent(dfd, t, &tbase) : -1;
        if (tfd < 0 || linkat(tfd, tbase, pfd, base, 0) != 0)
            rc = io_fail(err, rel, "link");
        if (tfd >= 0)
            close(tfd);
        free(t);
    } else if (archive_entry_filetype(e) == AE_IFDIR) {
        if (mkdirat(pfd, base, mode | 0700) != 0 && errno != EEXIST)
            rc = io_fail(err, rel, "create directory");
    } else if (archive_entry_filetype(e) == AE_IFLNK) {
        if (symlinkat(arch_entry_symlink(e), pfd, base) != 0)
            rc = io_fail(err, rel, "create symlink");
    } else {
        int fd = openat(pfd, base, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                        0600);
        if (fd < 0) {
            rc = io_fail(err, rel, "create");
        } else {
            const void *buf;
            size_t len;
            la_int64_t off;
            int r;
            while ((r = archive_read_data_block(a, &buf, &len, &off)) == ARCHIVE_OK)
                if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len) {
                    rc = io_fail(err, rel, "write");
                    break;
                }
            if (!rc && r != ARCHIVE_EOF) {
                ct_err(err, CTARGET_E_IO, "archive is damaged at '%s': %s", rel,
                       archive_error_string(a));
                rc = CTARGET_E_IO;
            }
            if (!rc && fchmod(fd, mode) != 0)
                rc = io_fail(err, rel, "set the mode of");
            close(fd);
            /* a file cut short by damage (only possible from standard input: a file is
             * read whole before anything is written) is not left behind half-written */
            if (rc)
                unlinkat(pfd, base, 0);
        }
    }
    close(pfd);
    return rc;
}

/* Check every entry from `first` (already read, or NULL) on, and extract it too when
 * dfd >= 0. */
ctarget_status arch_generic_stream(struct archive *a, struct archive_entry *first, int dfd,
                                   const char *src, ctarget_error *err)
{
    checker ck = {{0}, {0}};
    ctarget_status rc = CTARGET_OK;
    struct archive_entry *e = first;
    int r = ARCHIVE_OK;
    while (!rc && (e || (r = archive_read_next_header(a, &e)) == ARCHIVE_OK)) {
        char *rel = NULL;
        rc = check_entry(&ck, e, &rel, err);
        if (!rc && dfd >= 0)
            rc = write_entry(a, e, dfd, rel, err);
        free(rel);
        e = NULL;
    }
    if (!rc && r != ARCHIVE_EOF) {
        ct_err(err, CTARGET_E_IO, "%s is not a readable tar archive: %s", src,
               archive_error_string(a));
        rc = CTARGET_E_IO;
    }
    names_free(&ck.files);
    names_free(&ck.links);
    return rc;
}

static ctarget_status generic_pass(const char *path, int dfd, ctarget_error *err)
{
    struct archive *a = arch_open_reader(path, err);
    if (!a)
        return err->code;
    ctarget_status rc = arch_generic_stream(a, NULL, dfd, path, err);
    archive_read_free(a);
    return rc;
}

/* ---- entry point ---------------------------------------------------------------------------- */

static int first_is_manifest(const char *path)
{
    if (!strcmp(path, "-"))
        return -1; /* cannot peek at stdin: decided while streaming */
    ctarget_error e;
    ctarget_error_init(&e);
    struct archive *a = arch_open_reader(path, &e);
    if (!a)
        return 0;
    struct archive_entry *ent;
    int yes = archive_read_next_header(a, &ent) == ARCHIVE_OK &&
              !strcmp(arch_entry_name(ent), "manifest.jsonl");
    archive_read_free(a);
    return yes;
}

ctarget_status arch_extract_safe(const char *archive_path, const char *dest,
                                 const char *blob_root, ctarget_error *err)
{
    ctarget_status lrc = arch_lib_load(err);
    if (!lrc)
        lrc = crypto_load(err);
    if (lrc)
        return lrc;
    if (strcmp(archive_path, "-") && access(archive_path, R_OK) != 0) {
        ct_err_errno(err, CTARGET_E_NOT_FOUND, errno, "cannot read archive %s", archive_path);
        return CTARGET_E_NOT_FOUND;
    }
    int transport = first_is_manifest(archive_path);
    /* a whole generic tar is checked before anything is written */
    if (transport == 0) {
        ctarget_status rc = generic_pass(archive_path, -1, err);
        if (rc)
            return rc;
    }
    if (mkdir_p(dest, 0755) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s", dest);
        return CTARGET_E_IO;
    }
    int dfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot open %s", dest);
        return CTARGET_E_IO;
    }
    ctarget_status rc;
    if (transport == 0) {
        rc = generic_pass(archive_path, dfd, err);
    } else {
        struct archive *a = arch_open_reader(archive_path, err);
        rc = a ? arch_transport_extract(a, archive_path, dfd, blob_root, err) : err->code;
        if (a)
            archive_read_free(a);
    }
    close(dfd);
    return rc;
}
