/* STUB: replaced by the ignore-rules implementation (see ignore.h). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "ignore.h"
#include "util.h"

struct ignore {
    char *name;
};

ctarget_status ignore_open(const char *root, ignore **out, ctarget_error *err)
{
    (void)root, (void)err;
    *out = xcalloc(1, sizeof **out);
    (*out)->name = xstrdup(".gitignore");
    return CTARGET_OK;
}

void ignore_free(ignore *ig)
{
    if (ig)
        free(ig->name);
    free(ig);
}

const char *ignore_file_name(const ignore *ig) { return ig->name; }

ctarget_status ignore_enter(ignore *ig, const char *reldir, ctarget_error *err)
{
    (void)ig, (void)reldir, (void)err;
    return CTARGET_OK;
}

void ignore_leave(ignore *ig) { (void)ig; }

int ignore_is_excluded(const ignore *ig, const char *relpath, int is_dir)
{
    (void)ig;
    const char *base = strrchr(relpath, '/');
    base = base ? base + 1 : relpath;
    return is_dir && !strcmp(base, ".git");
}
