/* The workspace's content-addressed blob store: <ws>/blobs/sha256/ab/cdef...  (the first two
 * hex digits of the sha256 name a directory, the other 62 the file).  Blobs are immutable,
 * written to a temporary file in the same directory and renamed into place. */
#ifndef CTARGET_CORE_BLOBSTORE_H
#define CTARGET_CORE_BLOBSTORE_H

/* blob_root: <ws>/blobs/sha256.  Returns an owned path. */
char *blob_path(const char *blob_root, const char *sha256_hex);

#endif
