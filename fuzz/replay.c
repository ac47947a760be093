/* `make check`'s replay of a fuzz target: every file of fuzz/corpus/<target>/ and
 * fuzz/regressions/<target>/ goes through the target's LLVMFuzzerTestOneInput, built with the
 * normal compiler (and under CI's ASan+UBSan pass with the sanitizers), so a fixed crash
 * stays fixed.  With file arguments, replays just those (to reproduce one input).
 * FUZZ_TARGET and FUZZ_DIR come from the build (mk/fuzz.am). */
#include "config.h"

#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay %s: cannot read %s: %s\n", FUZZ_TARGET, path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *b = realloc(buf, cap *= 2);
            if (!b)
                free(buf);
            buf = b;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "replay %s: out of memory reading %s\n", FUZZ_TARGET, path);
        return -1;
    }
    /* an exact-size copy, so that ASan sees a read one past the input as the fuzzer does */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    printf("replay %s: %s (%zu bytes)\n", FUZZ_TARGET, path, len);
    fflush(stdout);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file of dir, in name order; the count, or -1 on error.  A missing
 * regressions directory counts as empty; a missing corpus is an error (want_dir). */
static int replay_dir(const char *dir, int want_dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (!want_dir && errno == ENOENT)
            return 0;
        fprintf(stderr, "replay %s: cannot list %s: %s\n", FUZZ_TARGET, dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char **v = realloc(names, (n + 1) * sizeof *names);
        if (!v)
            break;
        names = v;
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    int count = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (names[i] && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (replay_file(path) != 0)
                count = -1;
            else if (count >= 0)
                count++;
        }
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            if (replay_file(argv[i]) != 0)
                return 1;
        return 0;
    }
    char corpus[4096], regressions[4096];
    snprintf(corpus, sizeof corpus, "%s/corpus/%s", FUZZ_DIR, FUZZ_TARGET);
    snprintf(regressions, sizeof regressions, "%s/regressions/%s", FUZZ_DIR, FUZZ_TARGET);
    int c = replay_dir(corpus, 1);
    int r = replay_dir(regressions, 0);
    /* a replay that ran nothing checks nothing */
    int ok = c > 0 && r >= 0;
    char line[512];
    snprintf(line, sizeof line, "fuzz_replay_%s: %d passed, %d failed (inputs: %d from the "
             "corpus, %d regressions)\n", FUZZ_TARGET, ok ? c + r : 0, ok ? 0 : 1, c, r);
    fputs(line, stdout);
    if (fcntl(9, F_GETFD) != -1) {
        ssize_t w = write(9, line, strlen(line));
        (void)w;
    }
    return ok ? 0 : 1;
}
