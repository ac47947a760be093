/* Snapshot transport archives and safe extraction (libarchive).
 *
 * The transport layout is specified in include/ctarget/plugin.h (snapshot_write_tar):
 * manifest.jsonl first, then blobs/<sha256> entries. */
#ifndef CTARGET_CORE_TARSTREAM_H
#define CTARGET_CORE_TARSTREAM_H

#include <ctarget/plugin.h>

typedef struct arch_writer arch_writer;

/* A pax tar stream written through `out`; flags: CTARGET_TAR_ZSTD compresses it. */
ctarget_status arch_writer_open(ctarget_write_fn out, void *out_arg, unsigned flags,
                                arch_writer **w, ctarget_error *err);
/* One regular file entry (mode 0644) from memory. */
ctarget_status arch_write_bytes(arch_writer *w, const char *name, const void *data, size_t len,
                                ctarget_error *err);
/* One regular file entry (mode 0644) streamed from a local file, never held whole in memory. */
ctarget_status arch_write_file(arch_writer *w, const char *name, const char *path,
                               ctarget_error *err);
/* Finish the stream; always frees w. */
ctarget_status arch_writer_close(arch_writer *w, ctarget_error *err);

/* Extract an archive safely into dest (created 0755 when missing).
 *  - A ctarget transport tar (first entry manifest.jsonl with a "ctarget_snapshot" header):
 *    the snapshot tree is rebuilt in dest from the manifest, file contents taken from the
 *    archive's blobs/<sha256> entries, else from the blob store at blob_root (may be NULL);
 *    every blob's sha256 is verified.
 *  - Any other tar (pax, ustar, gnu; gzip, xz, zstd detected automatically): the entries.
 * Refused, with the offending entry named: absolute paths, `..` components, symlinks whose
 * target leaves dest, hardlinks to anything outside dest, device nodes, FIFOs and sockets,
 * and any entry that would be written through a symlink.  The whole archive is checked
 * before anything is written, so a refused, truncated or corrupt archive leaves dest
 * untouched; nothing outside dest is ever created or modified.  A transport archive's files
 * are written only once all its blobs have arrived and been verified (they are staged in
 * dest/.ctarget-staging-PID, removed in any case).  archive_path "-" reads standard input,
 * streamed, never held whole in memory: a generic tar is then checked while extracting, so
 * a refused or damaged one leaves dest with the entries before the bad one, but never a
 * file cut short. */
ctarget_status arch_extract_safe(const char *archive_path, const char *dest,
                                 const char *blob_root, ctarget_error *err);

#endif
