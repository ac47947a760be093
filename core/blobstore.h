/* The workspace's content-addressed blob store: <ws>/blobs/sha256/ab/cdef...  (the first two
 * hex digits of the sha256 name a directory, the other 62 the file).  Blobs are immutable:
 * written to a temporary file on the same file system and linked into place,
 * files 0600 and directories 0700.  Nobody ever writes to a published blob. */
#ifndef CTARGET_CORE_BLOBSTORE_H
#define CTARGET_CORE_BLOBSTORE_H

#include <stddef.h>
#include <stdint.h>

#include <ctarget/plugin.h>

/* blob_root: <ws>/blobs/sha256.  Returns an owned path. */
char *blob_path(const char *blob_root, const char *sha256_hex);

/* <ws>/blobs/sha256 for a workspace directory (owned). */
char *blob_root_for_ws(const char *ws_dir);

/* Whether sha256_hex is 64 lowercase hex digits. */
int blob_valid_sha(const char *sha256_hex);

/* Nonzero when the blob is present (its size in *size when size is not NULL). */
int blob_exists(const char *blob_root, const char *sha256_hex, uint64_t *size);

/* Existence checks for many blobs at once (the stat cache vouches for thousands of files):
 * each fan-out directory is opened once and blobs are looked up relative to it, one path
 * component per lookup instead of the whole path.  The blob store must not gain fan-out
 * directories meanwhile (the caller holds the gc lock and writes no blobs yet). */
typedef struct blob_dirs {
    const char *root;
    int fd[256];            /* -2: missing */
} blob_dirs;
void blob_dirs_init(blob_dirs *bd, const char *blob_root);
/* Thread-safe once initialised. */
int blob_dirs_exists(const blob_dirs *bd, const char *sha256_hex, uint64_t *size);
void blob_dirs_close(blob_dirs *bd);

/* A blob being written whose name is not known yet (its content is still being hashed):
 * an unnamed O_TMPFILE inode where the file system has them (nothing to clean up after a
 * crash, no directory entry to create and remove), else <root>/tmp/blob-XXXXXX, 0600. */
typedef struct blob_tmp {
    int fd;
    char *path;       /* NULL for an unnamed temporary */
} blob_tmp;
int blob_tmp_open(const char *blob_root, blob_tmp *t);   /* 0, or -1 with errno */
/* Publish the temporary as blob sha256_hex and release it (fd closed, temp removed).  The
 * link decides who stored it: exactly one of several concurrent writers of the same blob
 * gets *added = 1, so "bytes newly stored" is exact. */
ctarget_status blob_tmp_commit(const char *blob_root, const char *sha256_hex, blob_tmp *t,
                               int *added, ctarget_error *err);
void blob_tmp_discard(blob_tmp *t);

/* Store bytes already in memory (nothing is written when the blob exists). */
ctarget_status blob_put_mem(const char *blob_root, const char *sha256_hex, const void *data,
                            size_t len, int *added, ctarget_error *err);

/* The lock between writers/readers (shared) and `snapshot gc` (exclusive): gc must never
 * delete a blob that a snapshot being created has stored but not yet recorded.  Returns an
 * fd to pass to blob_unlock, or -1 with err filled. */
int blob_lock(const char *blob_root, int exclusive, ctarget_error *err);
void blob_unlock(int fd);

/* Call fn for every blob file (name, size, path); fn returns nonzero to stop.  Leftover
 * temporary files are reported with sha256_hex NULL. */
ctarget_status blob_foreach(const char *blob_root,
                            int (*fn)(void *arg, const char *sha256_hex, uint64_t size,
                                      const char *path),
                            void *arg, ctarget_error *err);

/* SHA-256 of a buffer as 64 hex digits + NUL. */
void blob_sha256_hex(const void *data, size_t len, char out[65]);

#endif
