/* Fuzz target: the remotevm plugin's parsers of what the machine sends back
 * (plugins/remotevm/proto.c): answers on the agent's serve channel, the poll answer, and the
 * outputs stream of `pack`, which writes files locally.  A compromised or broken VM controls
 * all of these bytes.
 *
 * Input: byte 0 picks the parser (and, for the outputs stream, how the bytes are cut into
 * writes: a channel delivers them in pieces of any size); the rest is the remote's bytes.
 * Properties: answers are taken whole or not at all, never past the buffer; the poll
 * answer's parts lie inside it; the outputs stream creates only regular files and
 * directories, only <dest>/outputs and <dest>/logs and what is below them (either may be a
 * file: the agent sends what the run left, and a run may leave a file named logs), nothing
 * outside <dest>. */
#include "config.h"

#include "fuzz.h"

#include <ctarget/ctarget.h>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"
#include "remotevm.h"

static void answers(const uint8_t *data, size_t size)
{
    rv_buf sb = {0}, out = {0};
    /* the bytes arrive in two pieces, as from two reads of the channel */
    size_t cut = size ? data[0] % (size + 1) : 0;
    rv_buf_add(&sb, data, cut);
    for (int round = 0; round < 2; round++) {
        for (;;) {
            size_t before = sb.len;
            int status = 0;
            char tail[64];
            out.len = 0;
            int got = rv_answer_take(&sb, &out, &status, tail, sizeof tail);
            FZ_CHECK(got >= -1 && got <= 1, "answer %d", got);
            fz_note("answer: %d", got);
            if (got <= 0) {
                FZ_CHECK(sb.len == before, "a partial answer consumed bytes");
                break;
            }
            FZ_CHECK(sb.len < before && before - sb.len > out.len, "an answer of %zu bytes "
                     "consumed %zu", out.len, before - sb.len);
            FZ_CHECK(strlen(tail) < sizeof tail, "tail overflow");
        }
        if (round == 0)
            rv_buf_add(&sb, data + cut, size - cut);
    }
    rv_buf_free(&sb);
    rv_buf_free(&out);
}

static void poll_answer(const uint8_t *data, size_t size)
{
    /* exactly the answer's bytes, in a buffer of their own */
    char *copy = malloc(size ? size : 1);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    const char *body = NULL;
    size_t ll = 0, ml = 0;
    json_t *j = rv_poll_split(size ? copy : NULL, size, &body, &ll, &ml);
    fz_note("poll: %s", j ? "split" : "refused");
    if (j) {
        FZ_CHECK(json_is_object(j), "poll header is not an object");
        FZ_CHECK(body > copy && body <= copy + size, "body outside the answer");
        FZ_CHECK(ll <= size && ml <= size - ll &&
                     (size_t)(body - copy) + ll + ml == size,
                 "log %zu + metrics %zu bytes do not fill the %zu-byte answer", ll, ml, size);
        json_decref(j);
    }
    free(copy);
}

static char dest_real[PATH_MAX];

static void check_outputs(const char *dir, int depth)
{
    DIR *d = opendir(dir);
    FZ_CHECK(d, "cannot list %s", dir);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (depth == 0)
            FZ_CHECK(!strcmp(e->d_name, "outputs") || !strcmp(e->d_name, "logs"),
                     "'%s' created outside outputs/ and logs/", e->d_name);
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        FZ_CHECK(lstat(p, &st) == 0, "lstat %s", p);
        FZ_CHECK(S_ISDIR(st.st_mode) || S_ISREG(st.st_mode), "%s: mode %o", p,
                 (unsigned)st.st_mode);
        if (S_ISDIR(st.st_mode))
            check_outputs(p, depth + 1);
    }
    closedir(d);
}

static void outputs(const uint8_t *data, size_t size, unsigned piece)
{
    const char *s = fz_scratch();
    char dest[PATH_MAX], outside[PATH_MAX];
    snprintf(dest, sizeof dest, "%s/dest", s);
    snprintf(outside, sizeof outside, "%s/outside", s);
    fz_wipe(s);
    FZ_CHECK(mkdir(dest, 0700) == 0 && mkdir(outside, 0700) == 0, "scratch directories");
    FZ_CHECK(realpath(dest, dest_real), "realpath %s", dest);
    int dfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    FZ_CHECK(dfd >= 0, "open %s", dest);
    ctarget_error err;
    ctarget_error_init(&err);
    rv_unpack u;
    rv_unpack_init(&u, host_table(), dfd, &err);
    /* pieces of 1..256 bytes, or the whole stream at once */
    size_t step = piece ? piece : size;
    int stopped = 0;
    for (size_t off = 0; off < size && !stopped;) {
        size_t k = size - off < step ? size - off : step;
        /* each write's bytes in a buffer of their own */
        char *chunk = malloc(k);
        if (!chunk)
            abort();
        memcpy(chunk, data + off, k);
        stopped = rv_unpack_write(&u, chunk, k) != 0;
        free(chunk);
        off += k;
    }
    if (stopped)
        FZ_CHECK(u.rc != CTARGET_OK && err.message[0], "stopped without saying why");
    fz_note("outputs: %llu files, %llu bytes, state %d: %s", (unsigned long long)u.files,
            (unsigned long long)u.bytes, u.state, stopped ? err.message : "ok");
    rv_unpack_done(&u);
    close(dfd);
    check_outputs(dest, 0);
    DIR *d = opendir(s);
    struct dirent *e;
    while (d && (e = readdir(d)))
        FZ_CHECK(!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
                     !strcmp(e->d_name, "dest") || !strcmp(e->d_name, "outside"),
                 "'%s' created outside the destination", e->d_name);
    if (d)
        closedir(d);
    d = opendir(outside);
    while (d && (e = readdir(d)))
        FZ_CHECK(!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."),
                 "'%s' created in the sentinel directory", e->d_name);
    if (d)
        closedir(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size)
        return 0;
    unsigned sel = data[0];
    data++;
    size--;
    switch (sel % 4) {
    case 0:
        answers(data, size);
        break;
    case 1:
        poll_answer(data, size);
        break;
    default: /* 2, 3: the outputs stream, whole or in pieces */
        outputs(data, size, sel % 4 == 2 ? 0 : (sel >> 2) + 1);
        break;
    }
    return 0;
}
