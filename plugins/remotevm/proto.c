/* The agent's wire formats as the plugin reads them: everything here parses bytes that came
 * from the remote side, which a compromised or broken machine controls.  Kept apart from the
 * SSH and run code (and free of libssh2) so that fuzz/fuzz_remotevm.c drives exactly these
 * functions with hostile input. */
#include "config.h"

#include "remotevm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

/* ---- small buffers ---------------------------------------------------------------------- */

int rv_buf_add(rv_buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return -1;
        b->data = p;
        b->cap = cap;
    }
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int rv_buf_adds(rv_buf *b, const char *s)
{
    return rv_buf_add(b, s, strlen(s));
}

void rv_buf_free(rv_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int rv_buf_write(void *arg, const void *data, size_t len)
{
    return rv_buf_add(arg, data, len);
}

/* ---- answers on the serve channel ------------------------------------------------------- */

int rv_answer_take(rv_buf *sb, rv_buf *out, int *status, char *tail, size_t tail_len)
{
    char *nl = sb->len ? memchr(sb->data, '\n', sb->len) : NULL;
    if (!nl)
        return 0;
    size_t hl = (size_t)(nl - sb->data) + 1;
    json_t *hd = json_loadb(sb->data, hl - 1, 0, NULL);
    json_int_t n = json_integer_value(json_object_get(hd, "len"));
    if (!json_is_object(hd) || n < 0) {
        json_decref(hd);
        return -1;
    }
    if (sb->len < hl + (size_t)n) {
        json_decref(hd);
        return 0;
    }
    if (out)
        rv_buf_add(out, sb->data + hl, (size_t)n);
    *status = (int)json_integer_value(json_object_get(hd, "exit"));
    snprintf(tail, tail_len, "%s",
             json_string_value(json_object_get(hd, "err")) ?
                 json_string_value(json_object_get(hd, "err")) : "");
    memmove(sb->data, sb->data + hl + n, sb->len - hl - (size_t)n);
    sb->len -= hl + (size_t)n;
    json_decref(hd);
    return 1;
}

/* ---- the poll answer -------------------------------------------------------------------- */

json_t *rv_poll_split(const char *data, size_t len, const char **body, size_t *log_len,
                      size_t *met_len)
{
    const char *nl = data ? memchr(data, '\n', len) : NULL;
    json_t *j = nl ? json_loadb(data, (size_t)(nl - data), 0, NULL) : NULL;
    json_int_t ll = j ? json_integer_value(json_object_get(j, "log_len")) : 0;
    json_int_t ml = j ? json_integer_value(json_object_get(j, "metrics_len")) : 0;
    size_t rest = nl ? len - (size_t)(nl + 1 - data) : 0;
    /* (the lengths are the machine's word: added as they came, two large ones overflowed) */
    if (!json_is_object(j) || ll < 0 || ml < 0 || (size_t)ll > rest ||
        (size_t)ml != rest - (size_t)ll) {
        json_decref(j);
        return NULL;
    }
    *body = nl + 1;
    *log_len = (size_t)ll;
    *met_len = (size_t)ml;
    return j;
}

/* ---- the outputs stream ----------------------------------------------------------------- */

void rv_unpack_init(rv_unpack *u, const ctarget_host *h, int dfd, ctarget_error *err)
{
    memset(u, 0, sizeof *u);
    u->h = h;
    u->dfd = dfd;
    u->fd = -1;
    u->err = err;
    u->rc = CTARGET_OK;
}

void rv_unpack_done(rv_unpack *u)
{
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
    rv_buf_free(&u->path);
}

static int bad(rv_unpack *u, ctarget_status code, const char *fmt, const char *what)
{
    if (u->rc == CTARGET_OK) {
        u->h->error_set(u->err, code, 0, errno, fmt, what);
        u->rc = code;
    }
    return 1;
}

static int safe_path(const char *p)
{
    if (!*p || *p == '/' || (strncmp(p, "outputs", 7) && strncmp(p, "logs", 4)))
        return 0;
    if (strncmp(p, "outputs/", 8) && strcmp(p, "outputs") && strncmp(p, "logs/", 5) &&
        strcmp(p, "logs"))
        return 0;
    for (const char *s = p; *s;) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        s += n + (e ? 1 : 0);
        if (e && !*s)
            return 0;
    }
    return 1;
}

/* mkdir -p of the path's directories under dfd, refusing anything that is not a directory */
static int make_dirs(rv_unpack *u, const char *p, int include_last)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", p);
    char *s = buf;
    for (;;) {
        char *e = strchr(s, '/');
        if (!e && !include_last)
            return 0;
        if (e)
            *e = '\0';
        if (mkdirat(u->dfd, buf, 0755) != 0 && errno != EEXIST)
            return bad(u, CTARGET_E_IO, "cannot create %s", buf);
        struct stat st;
        if (fstatat(u->dfd, buf, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
            return bad(u, CTARGET_E_IO, "%s exists and is not a directory", buf);
        if (!e)
            return 0;
        *e = '/';
        s = e + 1;
    }
}

int rv_unpack_write(void *arg, const void *data, size_t len)
{
    rv_unpack *u = arg;
    const char *p = data;
    if (!data) { /* a new attempt starts from the beginning */
        if (u->fd >= 0)
            close(u->fd);
        u->fd = -1;
        u->state = 0;
        u->llen = 0;
        u->rc = CTARGET_OK;
        return 0;
    }
    while (len && u->rc == CTARGET_OK) {
        if (u->state == 0) {
            const char *nl = memchr(p, '\n', len);
            size_t k = nl ? (size_t)(nl - p) + 1 : len;
            if (u->llen + k >= sizeof u->line)
                return bad(u, CTARGET_E_REMOTE, "%s", "the outputs stream is damaged");
            memcpy(u->line + u->llen, p, k);
            u->llen += k;
            p += k;
            len -= k;
            if (!nl)
                continue;
            u->line[u->llen - 1] = '\0';
            u->llen = 0;
            unsigned long long size = 0, plen = 0;
            unsigned mode = 0;
            if (u->line[0] == 'E') {
                u->state = 3;
                continue;
            } else if (u->line[0] == 'D' && sscanf(u->line, "D %o %llu", &mode, &plen) == 2) {
                u->type = 'D';
            } else if (u->line[0] == 'F' &&
                       sscanf(u->line, "F %o %llu %llu", &mode, &size, &plen) == 3) {
                u->type = 'F';
            } else {
                return bad(u, CTARGET_E_REMOTE, "%s", "the outputs stream is damaged");
            }
            if (plen == 0 || plen > 4000)
                return bad(u, CTARGET_E_REMOTE, "%s", "the outputs stream names a bad path");
            u->mode = mode & 0777;
            u->size = u->left = size;
            u->plen = (size_t)plen;
            u->path.len = 0;
            u->state = 1;
        } else if (u->state == 1) {
            size_t k = u->plen - u->path.len < len ? u->plen - u->path.len : len;
            rv_buf_add(&u->path, p, k);
            p += k;
            len -= k;
            if (u->path.len < u->plen)
                continue;
            if (memchr(u->path.data, '\0', u->path.len) || !safe_path(u->path.data))
                return bad(u, CTARGET_E_REMOTE, "refused the output path '%s' (outside "
                                                "outputs/ or logs/)", u->path.data);
            if (u->type == 'D') {
                if (make_dirs(u, u->path.data, 1))
                    return 1;
                u->state = 0;
                continue;
            }
            if (make_dirs(u, u->path.data, 0))
                return 1;
            u->fd = openat(u->dfd, u->path.data,
                           O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                           u->mode | 0600);
            if (u->fd < 0)
                return bad(u, CTARGET_E_IO, "cannot write %s", u->path.data);
            u->files++;
            u->state = 2;
            if (!u->left) {
                close(u->fd);
                u->fd = -1;
                u->state = 0;
            }
        } else if (u->state == 2) {
            size_t k = u->left < len ? (size_t)u->left : len;
            for (size_t w = 0; w < k;) {
                ssize_t n = write(u->fd, p + w, k - w);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    return bad(u, CTARGET_E_IO, "cannot write %s", u->path.data);
                w += (size_t)n;
            }
            u->bytes += k;
            p += k;
            len -= k;
            u->left -= k;
            if (!u->left) {
                close(u->fd);
                u->fd = -1;
                u->state = 0;
            }
        } else {
            return bad(u, CTARGET_E_REMOTE, "%s", "the outputs stream has bytes after its end");
        }
    }
    return u->rc != CTARGET_OK;
}
