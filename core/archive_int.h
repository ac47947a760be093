/* Internals shared by archive.c (writer, generic tars) and archive_transport.c. */
#ifndef CTARGET_CORE_ARCHIVE_INT_H
#define CTARGET_CORE_ARCHIVE_INT_H

#include <archive.h>
#include <archive_entry.h>

#include <ctarget/plugin.h>

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
