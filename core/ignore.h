/* Ignore rules for snapshots, with git's exact semantics.
 *
 * The rules come from `.amlignore` when the source root has one, else from `.gitignore`; the
 * chosen file name is then read in every directory (nested files).  `.git` is always
 * excluded.  Patterns follow gitignore(5): `!` negation, leading `/` anchoring, trailing `/`
 * directory-only, `*`, `?`, `[...]`, `**` forms, backslash escapes, trailing spaces, comments.
 *
 * Walk protocol: ignore_enter() when starting to list a directory ("" is the root; it reads
 * that directory's ignore file), ignore_is_excluded() for each entry of that directory,
 * ignore_leave() when done.  Directories nest depth-first.  The caller never descends into an
 * excluded directory: as in git, a file inside an excluded directory cannot be re-included. */
#ifndef CTARGET_CORE_IGNORE_H
#define CTARGET_CORE_IGNORE_H

#include <ctarget/plugin.h>

typedef struct ignore ignore;

ctarget_status ignore_open(const char *root, ignore **out, ctarget_error *err);
void ignore_free(ignore *ig);
/* ".amlignore" or ".gitignore" */
const char *ignore_file_name(const ignore *ig);

/* reldir: '/'-separated, relative to root, "" for the root itself. */
ctarget_status ignore_enter(ignore *ig, const char *reldir, ctarget_error *err);
void ignore_leave(ignore *ig);

/* relpath: '/'-separated, relative to root, no trailing '/'; its parent is the directory
 * most recently entered.  Returns nonzero when excluded. */
int ignore_is_excluded(const ignore *ig, const char *relpath, int is_dir);

#endif
