#include "config.h"

#include "blobstore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/fs.h>

#include "crypto_lib.h"

#include "util.h"

/* The store's root, made the top of a directory hierarchy (chattr +T) when it is created.
 * ext4's allocator then spreads its subdirectories over the block groups instead of
 * keeping them beside the root, and a new blob's inode comes from its directory's group
 * (tmp/ for the temporaries that become blobs).  Where many files were deleted moments
 * before, as in a scratch directory, every new inode of that group is found only after
 * walking past the recently freed ones (ext4 without a journal skips them for a minute or
 * more): a cold snapshot of 10,000 files took 1.4-1.8 s there, 0.65-0.8 s in a group of
 * its own.  Other file systems refuse the flag, which changes nothing. */
static int make_root(const char *root)
{
    struct stat st;
    if (stat(root, &st) == 0)
        return 0;
    if (mkdir_p(root, 0700) != 0)
        return -1;
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        int flags = 0;
        /* a file system without the flag refuses it: nothing to do then */
        if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0 && !(flags & FS_TOPDIR_FL)) {
            flags |= FS_TOPDIR_FL;
            (void)ioctl(fd, FS_IOC_SETFLAGS, &flags);
        }
        close(fd);
    }
    return 0;
}

char *blob_path(const char *blob_root, const char *sha256_hex)
{
    return xasprintf("%s/%.2s/%s", blob_root, sha256_hex, sha256_hex + 2);
}

char *blob_root_for_ws(const char *ws_dir)
{
    return path_join(ws_dir, "blobs/sha256");
}

int blob_valid_sha(const char *s)
{
    size_t i;
    for (i = 0; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return i == 64;
}

void blob_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

int blob_exists(const char *root, const char *sha, uint64_t *size)
{
    char *p = blob_path(root, sha);
    struct stat st;
    int ok = lstat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    if (ok && size)
        *size = (uint64_t)st.st_size;
    return ok;
}

void blob_dirs_init(blob_dirs *bd, const char *root)
{
    bd->root = root;
    /* all opened now, so that lookups from several threads only read fd[] */
    int dfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (size_t i = 0; i < 256; i++) {
        char name[3];
        snprintf(name, sizeof name, "%02zx", i);
        bd->fd[i] = dfd < 0 ? -2 : openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (bd->fd[i] < 0)
            bd->fd[i] = -2;
    }
    if (dfd >= 0)
        close(dfd);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int blob_dirs_exists(const blob_dirs *bd, const char *sha, uint64_t *size)
{
    int hi = hexval(sha[0]), lo = hi < 0 ? -1 : hexval(sha[1]);
    if (lo < 0)
        return 0;
    int fd = bd->fd[hi * 16 + lo];
    struct stat st;
    if (fd < 0 || fstatat(fd, sha + 2, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
        return 0;
    if (size)
        *size = (uint64_t)st.st_size;
    return 1;
}

void blob_dirs_close(blob_dirs *bd)
{
    for (size_t i = 0; i < 256; i++) {
        if (bd->fd[i] >= 0)
            close(bd->fd[i]);
        bd->fd[i] = -1;
    }
}

/* Unnamed temporaries are published through /proc/self/fd (linkat with AT_EMPTY_PATH needs
 * CAP_DAC_READ_SEARCH); without /proc, named temporaries are used. */
static int have_proc_fd(void)
{
    static int cached = -1;
    if (cached < 0)
        cached = access("/proc/self/fd", X_OK) == 0;
    return cached;
}

static int open_tmp(const char *dir_, blob_tmp *t)
{
    char *dir = xstrdup(dir_);
#ifdef O_TMPFILE
    if (have_proc_fd()) {
        t->fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
        if (t->fd >= 0 || errno == ENOENT) {
            free(dir);
            return t->fd;
        }
    }
#endif
    t->path = path_join(dir, "blob-XXXXXX");
    free(dir);
    t->fd = mkostemp(t->path, O_CLOEXEC);
    if (t->fd < 0) {
        int e = errno;
        free(t->path);
        t->path = NULL;
        errno = e;
    }
    return t->fd;
}

/* A temporary in dir (under root), made only when missing (this runs once per file
 * hashed). */
static int tmp_open_in(const char *root, const char *dir, blob_tmp *t)
{
    t->fd = -1;
    t->path = NULL;
    if (open_tmp(dir, t) >= 0)
        return 0;
    if (errno != ENOENT)
        return -1;
    return make_root(root) == 0 && mkdir_p(dir, 0700) == 0 && open_tmp(dir, t) >= 0 ? 0 : -1;
}

int blob_tmp_open(const char *root, blob_tmp *t)
{
    char *dir = path_join(root, "tmp");
    int r = tmp_open_in(root, dir, t);
    int e = errno;
    free(dir);
    errno = e;
    return r;
}

void blob_tmp_discard(blob_tmp *t)
{
    if (t->fd >= 0)
        close(t->fd);
    if (t->path) {
        unlink(t->path);
        free(t->path);
    }
    t->fd = -1;
    t->path = NULL;
}

static int link_tmp(const blob_tmp *t, const char *final)
{
    if (t->path)
        return link(t->path, final);
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", t->fd);
    return linkat(AT_FDCWD, proc, AT_FDCWD, final, AT_SYMLINK_FOLLOW);
}

/* Link the temporary to final, creating final's directory when missing: 0 linked, 1 the
 * blob already exists, -1 error (errno). */
static int link_into_place(const char *root, const blob_tmp *t, const char *final)
{
    if (link_tmp(t, final) == 0)
        return 0;
    if (errno != ENOENT)
        return errno == EEXIST ? 1 : -1;
    char *dir = xstrndup(final, strlen(root) + 3);
    int made = mkdir_p(dir, 0700);
    free(dir);
    if (made != 0)
        return -1;
    if (link_tmp(t, final) == 0)
        return 0;
    return errno == EEXIST ? 1 : -1;
}

ctarget_status blob_tmp_commit(const char *root, const char *sha, blob_tmp *t, int *added,
                               ctarget_error *err)
{
    *added = 0;
    char *final = blob_path(root, sha);
    ctarget_status rc = CTARGET_OK;
    int r = link_into_place(root, t, final);
    if (r == 0) {
        *added = 1;
    } else if (r < 0 && t->path) {
        /* file systems without hard links: rename is still atomic, only the count may be
         * off by a concurrent writer of the very same blob */
        int had = access(final, F_OK) == 0;
        if (rename(t->path, final) == 0)
            *added = !had;
        else
            r = -2;
    }
    if (r < -1 || (r == -1 && !t->path)) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store: cannot store %s", final);
        rc = CTARGET_E_IO;
    }
    /* a write error surfacing at close must not leave a bad blob published */
    if (close(t->fd) != 0 && *added) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store: cannot write %s", final);
        unlink(final);
        *added = 0;
        rc = CTARGET_E_IO;
    }
    t->fd = -1;
    blob_tmp_discard(t);
    free(final);
    return rc;
}

ctarget_status blob_put_mem(const char *root, const char *sha, const void *data, size_t len,
                            int *added, ctarget_error *err)
{
    *added = 0;
    if (blob_exists(root, sha, NULL))
        return CTARGET_OK;
    /* the name is known: create the temporary beside its final place, which spreads inode
     * allocation over the fan-out directories instead of contending on one */
    blob_tmp t;
    char *final = blob_path(root, sha);
    final[strlen(root) + 3] = '\0';
    int r = tmp_open_in(root, final, &t);
    free(final);
    if (r != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store %s: cannot create a temporary file",
                     root);
        return CTARGET_E_IO;
    }
    if (fd_write_all(t.fd, data, len) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store %s: cannot write a blob", root);
        blob_tmp_discard(&t);
        return CTARGET_E_IO;
    }
    return blob_tmp_commit(root, sha, &t, added, err);
}

int blob_lock(const char *root, int exclusive, ctarget_error *err)
{
    if (make_root(root) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store: cannot create %s", root);
        return -1;
    }
    char *p = path_join(root, "../lock");
    int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store: cannot open %s", p);
        free(p);
        return -1;
    }
    int r;
    do
        r = flock(fd, exclusive ? LOCK_EX : LOCK_SH);
    while (r != 0 && errno == EINTR);
    if (r != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store: cannot lock %s", p);
        close(fd);
        fd = -1;
    }
    free(p);
    return fd;
}

void blob_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

static int is_hex2(const char *s)
{
    return strlen(s) == 2 && strspn(s, "0123456789abcdef") == 2;
}

/* One <root>/ab directory, or <root>/tmp (prefix NULL: leftovers). */
static ctarget_status foreach_dir(const char *dir, const char *prefix,
                                  int (*fn)(void *, const char *, uint64_t, const char *),
                                  void *arg, int *stop, ctarget_error *err)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return CTARGET_OK;
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store: cannot read %s", dir);
        return CTARGET_E_IO;
    }
    struct dirent *de;
    while (!*stop && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char *p = path_join(dir, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode)) {
            char *sha = xasprintf("%s%s", prefix ? prefix : "", de->d_name);
            int valid = prefix && blob_valid_sha(sha);
            /* named temporaries (no O_TMPFILE) live in tmp/ and beside blobs */
            if (valid || !prefix || str_startswith(de->d_name, "blob-"))
                *stop = fn(arg, valid ? sha : NULL, (uint64_t)st.st_size, p);
            free(sha);
        }
        free(p);
    }
    closedir(d);
    return CTARGET_OK;
}

ctarget_status blob_foreach(const char *root,
                            int (*fn)(void *, const char *, uint64_t, const char *), void *arg,
                            ctarget_error *err)
{
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT)
            return CTARGET_OK;
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store: cannot read %s", root);
        return CTARGET_E_IO;
    }
    ctarget_status rc = CTARGET_OK;
    int stop = 0;
    struct dirent *de;
    while (!rc && !stop && (de = readdir(d))) {
        int hex = is_hex2(de->d_name);
        if (!hex && strcmp(de->d_name, "tmp"))
            continue;
        char *sub = path_join(root, de->d_name);
        rc = foreach_dir(sub, hex ? de->d_name : NULL, fn, arg, &stop, err);
        free(sub);
    }
    closedir(d);
    return rc;
}
