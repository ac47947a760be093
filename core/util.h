/* Small helpers shared by the core: memory, strings, paths, files, time. */
#ifndef CTARGET_CORE_UTIL_H
#define CTARGET_CORE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <ctarget/plugin.h>

#define CT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define CT_INTERNAL __attribute__((visibility("hidden")))

/* Memory: the library aborts on allocation failure, as glib does; callers stay simple. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) CTARGET_PRINTF(1, 2);
char *xvasprintf(const char *fmt, va_list ap);

/* Growable byte buffer, always NUL-terminated. */
typedef struct strbuf {
    char *data;
    size_t len, cap;
} strbuf;
void sb_init(strbuf *sb);
void sb_free(strbuf *sb);
/* Room for at least total bytes (and the NUL) without further reallocation. */
void sb_reserve(strbuf *sb, size_t total);
void sb_add(strbuf *sb, const void *data, size_t len);
void sb_adds(strbuf *sb, const char *s);
void sb_addc(strbuf *sb, char c);
void sb_addf(strbuf *sb, const char *fmt, ...) CTARGET_PRINTF(2, 3);
char *sb_detach(strbuf *sb);

/* Errors */
void ct_err(ctarget_error *err, ctarget_status code, const char *fmt, ...) CTARGET_PRINTF(3, 4);
void ct_err_errno(ctarget_error *err, ctarget_status code, int errnum, const char *fmt, ...)
    CTARGET_PRINTF(4, 5);
void ct_verr(ctarget_error *err, ctarget_status code, int transient, int errnum,
             const char *fmt, va_list ap);

/* Strings */
int str_startswith(const char *s, const char *prefix);
int str_endswith(const char *s, const char *suffix);
size_t str_edit_distance(const char *a, const char *b);
int str_casecmp_ascii(const char *a, const char *b);
void str_lower_ascii(char *s);
/* "a, b and c" */
char *str_join(const char *const *items, size_t n, const char *sep);

/* Paths and files */
char *path_join(const char *a, const char *b);
/* Create dir and parents with mode; existing dirs are fine. */
int mkdir_p(const char *path, mode_t mode);
/* Read a whole (small) file; NULL with errno on failure. */
char *file_read_all(const char *path, size_t *len);
/* Write a file atomically: temp file in the same directory, fsync, rename. */
int file_write_atomic(const char *path, const void *data, size_t len, mode_t mode);
/* write() until done, retrying EINTR; 0, or -1 with errno. */
int fd_write_all(int fd, const void *data, size_t len);
int rm_rf(const char *path);
/* Home directory of the calling user. */
const char *home_dir(void);

/* Time */
int64_t time_now_ms(void);
int64_t time_mono_ns(void);
void time_format_iso(int64_t ms, char out[32]);

/* Parse */
int parse_ll(const char *s, long long *out);
int parse_double(const char *s, double *out);
int parse_bool(const char *s, int *out);

#endif
