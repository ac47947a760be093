/* Snapshot services for plugins (host table) and for the core: materialize a snapshot into
 * a directory, list its blobs, stream its transport archive.
 *
 * Materialized files are never hard links to blobs: a run owns its tree and may rewrite a
 * file in place (or chmod it first), which through a hard link would corrupt the blob for
 * every snapshot sharing it.  Files are reflinked (FICLONE: copy-on-write, no extra space
 * on btrfs/XFS) where the file system can, else copied. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/fs.h>
#endif

#include "tarstream.h"
#include "blobstore.h"
#include "host.h"
#include "snapshot.h"
#include "util.h"

/* ---- materialize ------------------------------------------------------------------------- */

static int copy_fd(int src, int dst)
{
#ifdef FICLONE
    if (ioctl(dst, FICLONE, src) == 0)
        return 0;
#endif
    enum { BUF = 1 << 16 };
    char *buf = xmalloc(BUF);
    int rc = 0;
    for (;;) {
        ssize_t n = read(src, buf, BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || fd_write_all(dst, buf, (size_t)n) != 0) {
            rc = n == 0 ? 0 : -1;
            break;
        }
    }
    free(buf);
    return rc;
}

static ctarget_status put_file(int dirfd, const char *blob_root, const snap_entry *e,
                               ctarget_error *err)
{
    char *bp = blob_path(blob_root, e->sha);
    int src = open(bp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    ctarget_status rc = CTARGET_OK;
    if (src < 0 || fstat(src, &st) != 0 || (uint64_t)st.st_size != e->size) {
        ct_err_errno(err, CTARGET_E_IO, src < 0 ? errno : 0, "blob %s of %s is missing or "
                     "damaged in %s", e->sha, e->path, blob_root);
        rc = CTARGET_E_IO;
    } else {
        int dst = openat(dirfd, e->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         0600);
        if (dst < 0 || copy_fd(src, dst) != 0 || fchmod(dst, e->mode) != 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot write %s", e->path);
            rc = CTARGET_E_IO;
        }
        if (dst >= 0 && close(dst) != 0 && !rc) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot write %s", e->path);
            rc = CTARGET_E_IO;
        }
    }
    if (src >= 0)
        close(src);
    free(bp);
    return rc;
}

/* dest must be new or an empty directory (not a symlink to one). */
static int open_dest(const char *dest, ctarget_error *err)
{
    if (mkdir(dest, 0700) != 0 && errno != EEXIST) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s", dest);
        return -1;
    }
    int fd = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot open %s", dest);
        return -1;
    }
    int dup_fd = dup(fd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    int nonempty = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        nonempty |= strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    if (nonempty) {
        ct_err(err, CTARGET_E_EXISTS, "%s is not empty: a snapshot is materialized into a "
               "new or empty directory", dest);
        close(fd);
        return -1;
    }
    return fd;
}

ctarget_status snap_materialize(const char *blob_root, const char *id, const char *dest,
                                ctarget_error *err)
{
    snap_tree t;
    /* the manifest is validated: safe relative paths whose parents are directory entries,
     * created first (sorted order), so nothing is ever written through a symlink */
    ctarget_status rc = snap_manifest_load(blob_root, id, &t, err);
    if (rc)
        return rc;
    int dirfd = open_dest(dest, err);
    if (dirfd < 0) {
        snap_tree_free(&t);
        return err && err->code ? err->code : CTARGET_E_IO;
    }
    for (size_t i = 0; i < t.n && !rc; i++) {
        const snap_entry *e = &t.v[i];
        int r = 0;
        if (e->type == SNAP_DIR)
            r = mkdirat(dirfd, e->path, 0700);
        else if (e->type == SNAP_LINK)
            r = symlinkat(e->target, dirfd, e->path);
        else
            rc = put_file(dirfd, blob_root, e, err);
        if (r != 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s/%s", dest, e->path);
            rc = CTARGET_E_IO;
        }
    }
    /* directory modes last, deepest first, so read-only directories can still be filled */
    for (size_t i = t.n; i-- > 0 && !rc;)
        if (t.v[i].type == SNAP_DIR && fchmodat(dirfd, t.v[i].path, t.v[i].mode, 0) != 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot chmod %s/%s", dest, t.v[i].path);
            rc = CTARGET_E_IO;
        }
    close(dirfd);
    snap_tree_free(&t);
    return rc;
}

/* ---- transport archive ------------------------------------------------------------------- */

ctarget_status snap_write_tar(const char *blob_root, const char *id,
                              int (*want)(void *arg, const char *sha256), void *want_arg,
                              unsigned flags, ctarget_write_fn out, void *out_arg,
                              ctarget_error *err)
{
    char *text;
    size_t len;
    snap_tree t;
    ctarget_status rc = snap_manifest_read(blob_root, id, &text, &len, err);
    if (rc)
        return rc;
    if ((rc = snap_manifest_parse(text, len, &t, err))) {
        free(text);
        return rc;
    }
    strbuf m;
    sb_init(&m);
    char *header = snap_manifest_header(id, t.n);
    sb_adds(&m, header);
    sb_add(&m, text, len);
    free(header);
    free(text);
    arch_writer *w = NULL;
    rc = arch_writer_open(out, out_arg, flags, &w, err);
    if (!rc)
        rc = arch_write_bytes(w, "manifest.jsonl", m.data, m.len, err);
    sb_free(&m);
    const snap_entry **blobs;
    size_t nb = snap_tree_blobs(&t, &blobs);
    for (size_t i = 0; i < nb && !rc; i++) {
        if (want && !want(want_arg, blobs[i]->sha))
            continue;
        char name[80];
        snprintf(name, sizeof name, "blobs/%s", blobs[i]->sha);
        char *p = blob_path(blob_root, blobs[i]->sha);
        rc = arch_write_file(w, name, p, err);
        free(p);
    }
    free(blobs);
    if (w) {
        ctarget_error cerr;
        ctarget_error_init(&cerr);
        ctarget_status crc = arch_writer_close(w, rc ? &cerr : err);
        rc = rc ? rc : crc;
    }
    snap_tree_free(&t);
    return rc;
}

/* ---- host services ----------------------------------------------------------------------- */

static char *host_blob_root(ctarget_error *err)
{
    const char *ws = host_workspace_dir0();
    if (!ws) {
        ct_err(err, CTARGET_E_STATE, "snapshot services need an open workspace");
        return NULL;
    }
    return blob_root_for_ws(ws);
}

ctarget_status host_snapshot_materialize(ctarget_call *call, const char *snapshot_id,
                                         const char *dest, ctarget_error *err)
{
    (void)call;
    char *root = host_blob_root(err);
    if (!root)
        return CTARGET_E_STATE;
    int lock = blob_lock(root, 0, err);
    ctarget_status rc = lock < 0 ? CTARGET_E_IO : snap_materialize(root, snapshot_id, dest, err);
    blob_unlock(lock);
    free(root);
    return rc;
}

ctarget_status host_snapshot_blobs(ctarget_call *call, const char *snapshot_id,
                                   int (*fn)(void *arg, const char *sha256, uint64_t size),
                                   void *arg, ctarget_error *err)
{
    (void)call;
    char *root = host_blob_root(err);
    if (!root)
        return CTARGET_E_STATE;
    snap_tree t;
    ctarget_status rc = snap_manifest_load(root, snapshot_id, &t, err);
    free(root);
    if (rc)
        return rc;
    const snap_entry **blobs;
    size_t n = snap_tree_blobs(&t, &blobs);
    for (size_t i = 0; i < n; i++)
        if (fn(arg, blobs[i]->sha, blobs[i]->size))
            break;
    free(blobs);
    snap_tree_free(&t);
    return CTARGET_OK;
}

ctarget_status host_snapshot_write_tar(ctarget_call *call, const char *snapshot_id,
                                       int (*want)(void *arg, const char *sha256),
                                       void *want_arg, unsigned flags, ctarget_write_fn out,
                                       void *out_arg, ctarget_error *err)
{
    (void)call;
    char *root = host_blob_root(err);
    if (!root)
        return CTARGET_E_STATE;
    int lock = blob_lock(root, 0, err);
    ctarget_status rc = lock < 0 ? CTARGET_E_IO
                        : snap_write_tar(root, snapshot_id, want, want_arg, flags, out, out_arg,
                                         err);
    blob_unlock(lock);
    free(root);
    return rc;
}
