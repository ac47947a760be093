/* Hashing file contents into the blob store on every core.
 *
 * Each worker takes the next file from a shared index, reads it in 1 MiB chunks through
 * SHA-256 and, for files larger than one chunk, into a temporary blob file at the same time
 * (one read of the source, never the whole file in memory).  Files that fit in one chunk are
 * hashed from memory and written only when the store lacks the blob, so re-snapshotting
 * touched-but-unchanged files costs no writes.  A file is read again when fstat before and
 * after the read disagree (size, mtime, ctime) or the bytes read differ from its size: a
 * torn copy is never stored. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto_lib.h"

#include "blobstore.h"
#include "log.h"
#include "snapshot.h"
#include "testhook.h"
#include "util.h"

#define HASH_CHUNK (1u << 20)
#define HASH_MAX_THREADS 16
#define HASH_MAX_ATTEMPTS 4
#define PROGRESS_EVERY_NS 100000000LL
#define PROGRESS_AFTER_NS 500000000LL     /* short snapshots stay quiet */

typedef struct pool {
    const char *root, *blob_root;
    snap_tree *t;
    size_t *todo, n_todo, next;
    uint64_t total_bytes;
    atomic_uint_fast64_t done_bytes;
    atomic_int failed;
    pthread_mutex_t mu;
    ctarget_status rc;        /* first failure, with its error */
    ctarget_error err;
    snap_hash_stats stats;
} pool;

typedef struct worker {
    pool *p;
    int reporter;             /* the one thread that calls progress_report */
    int64_t last_report;      /* starts as the pool's start time */
    int reported;
    unsigned char *buf;
    EVP_MD_CTX *md;
    snap_hash_stats stats;
} worker;

static void fail(pool *p, ctarget_status rc, const ctarget_error *err)
{
    pthread_mutex_lock(&p->mu);
    if (!p->rc) {
        p->rc = rc;
        p->err = *err;
    }
    pthread_mutex_unlock(&p->mu);
    atomic_store(&p->failed, 1);
}

static void progress(worker *w, uint64_t n)
{
    atomic_fetch_add(&w->p->done_bytes, n);
    if (!w->reporter)
        return;
    int64_t now = time_mono_ns();
    if (now - w->last_report < (w->reported ? PROGRESS_EVERY_NS : PROGRESS_AFTER_NS))
        return;
    w->last_report = now;
    w->reported = 1;
    progress_report("snapshot: hashing", atomic_load(&w->p->done_bytes), w->p->total_bytes);
}

static ssize_t read_full(int fd, unsigned char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static int same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec && a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
           a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

typedef struct read_state {
    uint64_t total;
    blob_tmp tmp;             /* streamed copy for files over one chunk (fd -1: none) */
    size_t in_buf;            /* bytes of a small file held in w->buf */
} read_state;

/* Stream the rest of a big file into the hash and a temporary blob. */
static ctarget_status stream_rest(worker *w, int fd, const char *abs, read_state *rs,
                                  ctarget_error *err)
{
    if (blob_tmp_open(w->p->blob_root, &rs->tmp) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "blob store %s: cannot create a temporary file",
                     w->p->blob_root);
        return CTARGET_E_IO;
    }
    ssize_t n = HASH_CHUNK;
    for (;;) {
        if (fd_write_all(rs->tmp.fd, w->buf, (size_t)n) != 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "blob store %s: cannot write a blob",
                         w->p->blob_root);
            return CTARGET_E_IO;
        }
        if (atomic_load(&w->p->failed) || ctarget_cancel_requested()) {
            ct_err(err, CTARGET_E_CANCELED, "snapshot canceled");
            return CTARGET_E_CANCELED;
        }
        if ((n = read_full(fd, w->buf, HASH_CHUNK)) < 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot read %s", abs);
            return CTARGET_E_IO;
        }
        if (n == 0)
            return CTARGET_OK;
        EVP_DigestUpdate(w->md, w->buf, (size_t)n);
        rs->total += (uint64_t)n;
        progress(w, (uint64_t)n);
    }
}

/* Read fd once through the hash; *torn when the file changed meanwhile. */
static ctarget_status read_once(worker *w, int fd, const char *abs, const struct stat *before,
                                read_state *rs, int *torn, ctarget_error *err)
{
    EVP_DigestInit_ex(w->md, EVP_sha256(), NULL);
    ssize_t n = read_full(fd, w->buf, HASH_CHUNK);
    if (n < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot read %s", abs);
        return CTARGET_E_IO;
    }
    EVP_DigestUpdate(w->md, w->buf, (size_t)n);
    rs->total = (uint64_t)n;
    progress(w, (uint64_t)n);
    ctarget_status rc = CTARGET_OK;
    if (n < (ssize_t)HASH_CHUNK)
        rs->in_buf = (size_t)n;
    else
        rc = stream_rest(w, fd, abs, rs, err);
    struct stat after;
    if (!rc && fstat(fd, &after) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot stat %s", abs);
        rc = CTARGET_E_IO;
    }
    *torn = !rc && (!same_stat(before, &after) || rs->total != (uint64_t)before->st_size);
    return rc;
}

static void rs_discard(read_state *rs)
{
    blob_tmp_discard(&rs->tmp);
    rs->total = 0;
    rs->in_buf = 0;
}

static ctarget_status store_blob(worker *w, snap_entry *e, read_state *rs, ctarget_error *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(w->md, md, &mdlen);
    for (unsigned i = 0; i < 32; i++) {
        static const char hex[] = "0123456789abcdef";
        e->sha[2 * i] = hex[md[i] >> 4];
        e->sha[2 * i + 1] = hex[md[i] & 15];
    }
    e->sha[64] = '\0';
    int added = 0;
    ctarget_status rc;
    if (rs->tmp.fd >= 0) {
        rc = blob_tmp_commit(w->p->blob_root, e->sha, &rs->tmp, &added, err);
    } else {
        rc = blob_put_mem(w->p->blob_root, e->sha, w->buf, rs->in_buf, &added, err);
    }
    w->stats.hashed_files++;
    w->stats.hashed_bytes += rs->total;
    if (added) {
        w->stats.new_blobs++;
        w->stats.new_bytes += rs->total;
    }
    return rc;
}

static void take_stat(snap_entry *e, const struct stat *st)
{
    e->size = (uint64_t)st->st_size;
    e->mode = st->st_mode & 0777;
    e->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    e->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
    e->ino = (uint64_t)st->st_ino;
    e->dev = (uint64_t)st->st_dev;
}

static ctarget_status hash_entry(worker *w, snap_entry *e, ctarget_error *err)
{
    char *abs = path_join(w->p->root, e->path);
    ctarget_status rc = CTARGET_OK;
    int torn = 1;
    for (int attempt = 0; attempt < HASH_MAX_ATTEMPTS && torn && !rc; attempt++) {
        /* O_NONBLOCK: a file replaced by a FIFO must not hang the open */
        int fd = open(abs, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        struct stat before;
        if (fd < 0 || fstat(fd, &before) != 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot read %s", abs);
            rc = CTARGET_E_IO;
        } else if (!S_ISREG(before.st_mode)) {
            ct_err(err, CTARGET_E_FAILED, "%s stopped being a regular file during the snapshot",
                   abs);
            rc = CTARGET_E_FAILED;
        } else {
            read_state rs = {.tmp = {.fd = -1}};
            testhook_run("hash-read", abs); /* tests change the file here, every time */
            rc = read_once(w, fd, abs, &before, &rs, &torn, err);
            if (!rc && !torn) {
                take_stat(e, &before);
                rc = store_blob(w, e, &rs, err);
            } else if (torn) {
                log_msg(CTARGET_LOG_INFO, "%s changed while it was read; reading it again", abs);
            }
            rs_discard(&rs);
        }
        if (fd >= 0)
            close(fd);
    }
    if (!rc && torn) {
        ct_err(err, CTARGET_E_FAILED, "%s kept changing while it was read (%d attempts): stop "
               "what writes to it, or leave it out with an ignore rule", abs, HASH_MAX_ATTEMPTS);
        rc = CTARGET_E_FAILED;
    }
    free(abs);
    return rc;
}

static void *work(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    ctarget_error err;
    ctarget_error_init(&err);
    while (!atomic_load(&p->failed)) {
        pthread_mutex_lock(&p->mu);
        size_t i = p->next < p->n_todo ? p->next++ : SIZE_MAX;
        pthread_mutex_unlock(&p->mu);
        if (i == SIZE_MAX)
            break;
        ctarget_status rc = hash_entry(w, &p->t->v[p->todo[i]], &err);
        if (rc)
            fail(p, rc, &err);
    }
    pthread_mutex_lock(&p->mu);
    p->stats.hashed_files += w->stats.hashed_files;
    p->stats.hashed_bytes += w->stats.hashed_bytes;
    p->stats.new_blobs += w->stats.new_blobs;
    p->stats.new_bytes += w->stats.new_bytes;
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static unsigned thread_count(size_t n_todo)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = cpus > 0 ? (size_t)cpus : 1;
    if (n > HASH_MAX_THREADS)
        n = HASH_MAX_THREADS;
    return (unsigned)(n < n_todo ? n : n_todo);
}

static ctarget_status run_pool(pool *p, ctarget_error *err)
{
    unsigned n = thread_count(p->n_todo);
    worker *ws = xcalloc(n, sizeof *ws);
    pthread_t *tids = xcalloc(n, sizeof *tids);
    unsigned started = 1;
    for (unsigned i = 0; i < n; i++) {
        ws[i] = (worker){.p = p, .reporter = i == 0, .last_report = time_mono_ns(),
                         .buf = xmalloc(HASH_CHUNK), .md = EVP_MD_CTX_new()};
        if (!ws[i].md)
            abort();
    }
    /* the calling thread is worker 0: it alone reports progress */
    for (unsigned i = 1; i < n; i++, started++)
        if (pthread_create(&tids[i], NULL, work, &ws[i]) != 0)
            break;
    work(&ws[0]);
    for (unsigned i = 1; i < started; i++)
        pthread_join(tids[i], NULL);
    if (ws[0].reported)
        progress_report("snapshot: hashing", p->total_bytes, p->total_bytes);
    for (unsigned i = 0; i < n; i++) {
        free(ws[i].buf);
        EVP_MD_CTX_free(ws[i].md);
    }
    free(ws);
    free(tids);
    if (p->rc && err)
        *err = p->err;
    return p->rc;
}

ctarget_status snap_hash_files(const char *root, const char *blob_root, snap_tree *t,
                               snap_hash_stats *stats, ctarget_error *err)
{
    memset(stats, 0, sizeof *stats);
    pool p = {.root = root, .blob_root = blob_root, .t = t};
    p.todo = xcalloc(t->n + 1, sizeof *p.todo);
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].type == SNAP_FILE && !t->v[i].sha[0]) {
            p.todo[p.n_todo++] = i;
            p.total_bytes += t->v[i].size;
        }
    ctarget_status rc = CTARGET_OK;
    if (p.n_todo) {
        pthread_mutex_init(&p.mu, NULL);
        atomic_init(&p.done_bytes, 0);
        atomic_init(&p.failed, 0);
        rc = run_pool(&p, err);
        pthread_mutex_destroy(&p.mu);
    }
    *stats = p.stats;
    free(p.todo);
    return rc;
}
