/* Shared by the fuzz targets (fuzz_<target>.c), the libFuzzer builds and the replay programs
 * of `make check` (replay.c).  See fuzz/README.md. */
#ifndef CTARGET_FUZZ_H
#define CTARGET_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* Every target defines this (libFuzzer's entry point; replay.c calls it too).  Returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property of the code under test that must hold for every input: on failure, print
 * what broke (and where) and abort, which libFuzzer reports as a crash with its input saved
 * and the replay test reports as a failure. */
#define FZ_CHECK(cond, ...)                                                                \
    do {                                                                                   \
        if (!(cond))                                                                       \
            fz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                               \
    } while (0)
_Noreturn void fz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* This process's scratch directory (created on first use, under $TMPDIR or /tmp; removed at
 * exit).  Targets that touch the file system work only below it. */
const char *fz_scratch(void);
/* Remove everything below dir (dir itself stays); symlinks are removed, never followed. */
void fz_wipe(const char *dir);
/* Write bytes to path (created 0600); aborts on failure. */
void fz_write_file(const char *path, const void *data, size_t len);
/* With FUZZ_VERBOSE set in the environment, one line on standard error about what an input
 * did (accepted, or the refusal), to check what a seed exercises; else nothing. */
void fz_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A NUL-terminated copy of the input (malloc'd). */
char *fz_strndup(const uint8_t *data, size_t size);

#endif
