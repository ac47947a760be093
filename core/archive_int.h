/* Internals shared by archive.c (writer, generic tars) and archive_transport.c. */
#ifndef CTARGET_CORE_ARCHIVE_INT_H
#define CTARGET_CORE_ARCHIVE_INT_H

#include <archive.h>
#include <archive_entry.h>

#include <ctarget/plugin.h>

/* libarchive is loaded on first use (archive_lib.c), not linked: it brings ICU, libxml2 and
 * libstdc++ with it, some fourteen shared libraries that every ctarget process paid for at
 * start-up although only snapshot export/extract use them.  Every libarchive function the
 * core calls is listed here once: archive_lib.c checks each prototype against <archive.h> at
 * compile time and resolves it with dlsym; elsewhere the names below call through the table.
 * Call arch_lib_load() at every entry point before the first libarchive call. */
#define ARCH_LIB_FUNCS(X)                                                                   \
    X(mode_t, archive_entry_filetype, (struct archive_entry *))                                 \
    X(void, archive_entry_free, (struct archive_entry *))                                       \
    X(const char *, archive_entry_hardlink, (struct archive_entry *))                           \
    X(const char *, archive_entry_hardlink_utf8, (struct archive_entry *))                      \
    X(struct archive_entry *, archive_entry_new, (void))                                        \
    X(const char *, archive_entry_pathname, (struct archive_entry *))                           \
    X(const char *, archive_entry_pathname_utf8, (struct archive_entry *))                      \
    X(mode_t, archive_entry_perm, (struct archive_entry *))                                     \
    X(void, archive_entry_set_filetype, (struct archive_entry *, unsigned int))                 \
    X(void, archive_entry_set_gid, (struct archive_entry *, la_int64_t))                        \
    X(void, archive_entry_set_mtime, (struct archive_entry *, time_t, long))                    \
    X(void, archive_entry_set_pathname_utf8, (struct archive_entry *, const char *))            \
    X(void, archive_entry_set_perm, (struct archive_entry *, mode_t))                           \
    X(void, archive_entry_set_size, (struct archive_entry *, la_int64_t))                       \
    X(void, archive_entry_set_uid, (struct archive_entry *, la_int64_t))                        \
    X(const char *, archive_entry_symlink, (struct archive_entry *))                            \
    X(const char *, archive_entry_symlink_utf8, (struct archive_entry *))                       \
    X(const char *, archive_error_string, (struct archive *))                                   \
    X(la_ssize_t, archive_read_data, (struct archive *, void *, size_t))                        \
    X(int, archive_read_data_block, (struct archive *, const void **, size_t *, la_int64_t *))  \
    X(int, archive_read_free, (struct archive *))                                               \
    X(struct archive *, archive_read_new, (void))                                               \
    X(int, archive_read_next_header, (struct archive *, struct archive_entry **))               \
    X(int, archive_read_open_fd, (struct archive *, int, size_t))                               \
    X(int, archive_read_open_filename, (struct archive *, const char *, size_t))                \
    X(int, archive_read_support_filter_all, (struct archive *))                                 \
    X(int, archive_read_support_format_gnutar, (struct archive *))                              \
    X(int, archive_read_support_format_tar, (struct archive *))                                 \
    X(void, archive_set_error, (struct archive *, int, const char *, ...))                      \
    X(int, archive_write_add_filter_zstd, (struct archive *))                                   \
    X(int, archive_write_close, (struct archive *))                                             \
    X(la_ssize_t, archive_write_data, (struct archive *, const void *, size_t))                 \
    X(int, archive_write_free, (struct archive *))                                              \
    X(int, archive_write_header, (struct archive *, struct archive_entry *))                    \
    X(struct archive *, archive_write_new, (void))                                              \
    X(int, archive_write_open, (struct archive *, void *, archive_open_callback *,               \
                                archive_write_callback *, archive_close_callback *))            \
    X(int, archive_write_set_bytes_in_last_block, (struct archive *, int))                      \
    X(int, archive_write_set_format_pax_restricted, (struct archive *))

#define ARCH_LIB_MEMBER(ret, name, params) ret(*name) params;
extern struct arch_lib {
    ARCH_LIB_FUNCS(ARCH_LIB_MEMBER)
} arch_lib;
#undef ARCH_LIB_MEMBER

/* CTARGET_OK once libarchive is loaded; else CTARGET_E_UNSUPPORTED with one line saying
 * which library is missing and which package provides it. */
ctarget_status arch_lib_load(ctarget_error *err);

#ifndef ARCH_LIB_IMPL
#define archive_entry_filetype (arch_lib.archive_entry_filetype)
#define archive_entry_free (arch_lib.archive_entry_free)
#define archive_entry_hardlink (arch_lib.archive_entry_hardlink)
#define archive_entry_hardlink_utf8 (arch_lib.archive_entry_hardlink_utf8)
#define archive_entry_new (arch_lib.archive_entry_new)
#define archive_entry_pathname (arch_lib.archive_entry_pathname)
#define archive_entry_pathname_utf8 (arch_lib.archive_entry_pathname_utf8)
#define archive_entry_perm (arch_lib.archive_entry_perm)
#define archive_entry_set_filetype (arch_lib.archive_entry_set_filetype)
#define archive_entry_set_gid (arch_lib.archive_entry_set_gid)
#define archive_entry_set_mtime (arch_lib.archive_entry_set_mtime)
#define archive_entry_set_pathname_utf8 (arch_lib.archive_entry_set_pathname_utf8)
#define archive_entry_set_perm (arch_lib.archive_entry_set_perm)
#define archive_entry_set_size (arch_lib.archive_entry_set_size)
#define archive_entry_set_uid (arch_lib.archive_entry_set_uid)
#define archive_entry_symlink (arch_lib.archive_entry_symlink)
#define archive_entry_symlink_utf8 (arch_lib.archive_entry_symlink_utf8)
#define archive_error_string (arch_lib.archive_error_string)
#define archive_read_data (arch_lib.archive_read_data)
#define archive_read_data_block (arch_lib.archive_read_data_block)
#define archive_read_free (arch_lib.archive_read_free)
#define archive_read_new (arch_lib.archive_read_new)
#define archive_read_next_header (arch_lib.archive_read_next_header)
#define archive_read_open_fd (arch_lib.archive_read_open_fd)
#define archive_read_open_filename (arch_lib.archive_read_open_filename)
#define archive_read_support_filter_all (arch_lib.archive_read_support_filter_all)
#define archive_read_support_format_gnutar (arch_lib.archive_read_support_format_gnutar)
#define archive_read_support_format_tar (arch_lib.archive_read_support_format_tar)
#define archive_set_error (arch_lib.archive_set_error)
#define archive_write_add_filter_zstd (arch_lib.archive_write_add_filter_zstd)
#define archive_write_close (arch_lib.archive_write_close)
#define archive_write_data (arch_lib.archive_write_data)
#define archive_write_free (arch_lib.archive_write_free)
#define archive_write_header (arch_lib.archive_write_header)
#define archive_write_new (arch_lib.archive_write_new)
#define archive_write_open (arch_lib.archive_write_open)
#define archive_write_set_bytes_in_last_block (arch_lib.archive_write_set_bytes_in_last_block)
#define archive_write_set_format_pax_restricted (arch_lib.archive_write_set_format_pax_restricted)
#endif

typedef struct names {
    char **v;
    size_t n;
} names;
void names_add(names *s, const char *p);
int names_has(const names *s, const char *p);
void names_free(names *s);

/* "./a/b/" -> "a/b"; NULL with *why for absolute, '..', '.', empty components. */
char *clean_name(const char *raw, const char **why);
/* A symlink at path pointing to target stays inside the tree (lexically). */
int link_target_inside(const char *path, const char *target);
/* The earlier symlink that path is at or below, or NULL. */
const char *through_link(const names *links, const char *path);
/* "refused archive entry 'E': WHY ..." */
ctarget_status refuse(ctarget_error *err, const char *entry, const char *why);
/* Parent directory of rel below dirfd, created as needed, never through a symlink. */
int open_parent(int dirfd, const char *rel, const char **base);
ctarget_status io_fail(ctarget_error *err, const char *rel, const char *what);

const char *arch_entry_name(struct archive_entry *e);
const char *arch_entry_symlink(struct archive_entry *e);
const char *arch_entry_hardlink(struct archive_entry *e);
struct archive *arch_open_reader(const char *path, ctarget_error *err);
ctarget_status arch_generic_stream(struct archive *a, struct archive_entry *first, int dfd,
                                   const char *src, ctarget_error *err);
ctarget_status arch_transport_extract(struct archive *a, const char *src, int dfd,
                                      const char *blob_root, ctarget_error *err);

#endif
