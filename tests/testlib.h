/* Test support: CUnit driver, scratch directories, running the real ctarget command.
 *
 * Every test program is `int main(...) { return tl_main(argc, argv, "name", add_tests); }`.
 * The environment comes from tests/Makefile.inc (AM_TESTS_ENVIRONMENT):
 *   CTARGET_BIN            the ctarget command in the build tree
 *   CTARGET_TEST_SRCDIR    top source directory;  CTARGET_TEST_BUILDDIR  top build directory
 *   CTARGET_PLUGIN_PATH    build-tree plugins and test plugins; CTARGET_PLUGINDIR points nowhere
 */
#ifndef CTARGET_TESTLIB_H
#define CTARGET_TESTLIB_H

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stddef.h>

typedef struct tl_result {
    int status;      /* exit code, or 128+signal */
    char *out;       /* captured stdout, NUL-terminated */
    char *err;       /* captured stderr */
} tl_result;

/* Run the CUnit suite; prints "<name>: N passed, M failed" on the terminal (fd 9). */
int tl_main(int argc, char **argv, const char *name, void (*add_tests)(CU_pSuite suite));
#define TL_ADD(suite, fn) CU_add_test(suite, #fn, fn)

const char *tl_srcdir(void);
const char *tl_builddir(void);
const char *tl_ctarget(void);

/* A fresh directory, removed when the program exits (kept with CTARGET_TEST_KEEP=1). */
char *tl_tmpdir(const char *tag);

/* Run a program with argv (NULL-terminated).  stdin_data may be NULL (stdin is /dev/null).
 * env_extra: "NAME=value" strings added to the environment ("NAME=" with nothing after the
 * '=' removes NAME), NULL-terminated or NULL.  Output is captured completely. */
tl_result tl_exec(const char *const argv[], const char *stdin_data, const char *const env_extra[]);
/* ctarget --workspace WS ARGS... (ws NULL: no --workspace). */
tl_result tl_ctarget_run(const char *ws, const char *stdin_data, const char *const env_extra[],
                         const char *const args[]);
#define TL_CT(ws, ...) tl_ctarget_run((ws), NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})
void tl_result_free(tl_result *r);
/* Parse stdout as JSON (NULL on failure, with a CUnit failure recorded). */
json_t *tl_json(const tl_result *r);

/* Print a result's captured output when an assertion is about to fail. */
void tl_dump(const char *what, const tl_result *r);
#define TL_ASSERT_EXIT(r, code)                                                          \
    do {                                                                                 \
        if ((r).status != (code))                                                        \
            tl_dump("unexpected exit status", &(r));                                     \
        CU_ASSERT_EQUAL((r).status, (code));                                             \
    } while (0)

/* Files */
int tl_write_file(const char *path, const char *content);
char *tl_read_file(const char *path);
int tl_contains(const char *haystack, const char *needle);
/* First regular file under dir whose bytes contain needle, or NULL (owned). */
char *tl_tree_grep(const char *dir, const char *needle, size_t needle_len);
char *tl_path(const char *dir, const char *name);

/* Time in milliseconds, monotonic. */
long long tl_now_ms(void);

#endif
