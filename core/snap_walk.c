/* Walking a source directory into a snapshot tree: ignore rules, odd files, limits. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ignore.h"
#include "log.h"
#include "snapshot.h"
#include "testhook.h"
#include "util.h"

/* Directory nesting we accept; deeper trees are almost surely a link loop made of bind
 * mounts, and recursion must stay bounded. */
#define WALK_MAX_DEPTH 256
/* Entries kept while walking a tree that is already over its limits: enough to name the
 * biggest offenders without holding a whole home directory in memory. */
#define WALK_OVER_LIMIT_CAP 200000
/* Short snapshots stay quiet: progress only once one has taken this long. */
#define PROGRESS_AFTER_NS 500000000LL

/* ---- limits ------------------------------------------------------------------------------ */

int snap_parse_size(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    uint64_t mult = 1;
    if (*end) {
        int shift = (*end == 'K' || *end == 'k') ? 10 : (*end == 'M' || *end == 'm') ? 20
                    : (*end == 'G' || *end == 'g') ? 30 : -1;
        if (shift < 0 || (end[1] && strcmp(end + 1, "B") && strcmp(end + 1, "iB")))
            return -1;
        mult = UINT64_C(1) << shift;
    }
    if (v > UINT64_MAX / mult)
        return -1;
    *out = (uint64_t)v * mult;
    return 0;
}

static int parse_count(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* An explicit option wins over the environment, which wins over the default. */
static ctarget_status limit_from_env(const char *var, uint64_t opt, uint64_t def, int is_size,
                                     uint64_t *out, ctarget_error *err)
{
    const char *v = getenv(var);
    *out = opt ? opt : def;
    if (opt || !v || !*v)
        return CTARGET_OK;
    uint64_t n = 0;
    if ((is_size ? snap_parse_size(v, &n) : parse_count(v, &n)) != 0 || n == 0) {
        ct_err(err, CTARGET_E_CONFIG, "%s='%.40s' is not valid: use a positive %s", var, v,
               is_size ? "number of bytes, optionally with K, M or G (e.g. 500M)"
                       : "number of files");
        return CTARGET_E_CONFIG;
    }
    *out = n;
    return CTARGET_OK;
}

ctarget_status snap_limits_resolve(uint64_t opt_bytes, uint64_t opt_files, snap_limits *lim,
                                   ctarget_error *err)
{
    ctarget_status rc = limit_from_env("CTARGET_SNAPSHOT_MAX_BYTES", opt_bytes,
                                       SNAP_DEFAULT_MAX_BYTES, 1, &lim->max_bytes, err);
    if (!rc)
        rc = limit_from_env("CTARGET_SNAPSHOT_MAX_FILES", opt_files, SNAP_DEFAULT_MAX_FILES, 0,
                            &lim->max_files, err);
    return rc;
}

static void fmt_size(uint64_t n, char out[32])
{
    if (n < 1024)
        snprintf(out, 32, "%llu B", (unsigned long long)n);
    else if (n < 1024 * 1024)
        snprintf(out, 32, "%.1f KB", n / 1024.0);
    else if (n < UINT64_C(1024) * 1024 * 1024)
        snprintf(out, 32, "%.1f MB", n / (1024.0 * 1024));
    else
        snprintf(out, 32, "%.2f GB", n / (1024.0 * 1024 * 1024));
}

/* ---- the limit report -------------------------------------------------------------------- */

typedef struct ranked {
    size_t idx;
    uint64_t bytes, files;
} ranked;

static int rank_by_bytes(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0;
}

static int rank_by_files(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    return x->files < y->files ? 1 : x->files > y->files ? -1 : rank_by_bytes(a, b);
}

/* First index whose path is >= key (t sorted). */
static size_t lower_bound(const snap_tree *t, const char *key)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(t->v[mid].path, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Totals of every directory from prefix sums: a directory's descendants are the contiguous
 * run of paths in [dir "/", dir "0") because '0' follows '/' in byte order. */
static size_t rank_dirs(const snap_tree *t, ranked *out)
{
    uint64_t *pb = xcalloc(t->n + 1, sizeof *pb), *pf = xcalloc(t->n + 1, sizeof *pf);
    for (size_t i = 0; i < t->n; i++) {
        pb[i + 1] = pb[i] + (t->v[i].type == SNAP_FILE ? t->v[i].size : 0);
        pf[i + 1] = pf[i] + (t->v[i].type != SNAP_DIR);
    }
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i].type != SNAP_DIR)
            continue;
        char *k = xasprintf("%s/", t->v[i].path);
        size_t lo = lower_bound(t, k);
        k[strlen(k) - 1] = '0';
        size_t hi = lower_bound(t, k);
        free(k);
        out[n++] = (ranked){i, pb[hi] - pb[lo], pf[hi] - pf[lo]};
    }
    free(pb);
    free(pf);
    return n;
}

static const char *short_path(const char *p)
{
    size_t len = strlen(p);
    return len > 60 ? p + len - 57 : p;
}

static void limit_message(const char *root, const snap_tree *t, const snap_limits *lim,
                          const char *ignore_name, int truncated, ctarget_error *err)
{
    int by_files = t->files > lim->max_files;
    char a[32], b[32];
    strbuf sb;
    sb_init(&sb);
    sb_addf(&sb, "snapshot of %s is too large:", root);
    if (by_files)
        sb_addf(&sb, " %s%llu files (limit %llu)", truncated ? "over " : "",
                (unsigned long long)t->files, (unsigned long long)lim->max_files);
    if (t->bytes > lim->max_bytes) {
        fmt_size(t->bytes, a);
        fmt_size(lim->max_bytes, b);
        sb_addf(&sb, "%s %s%s (limit %s)", by_files ? "," : "", truncated ? "over " : "", a, b);
    }
    ranked *r = xcalloc(t->n + 1, sizeof *r);
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].type == SNAP_FILE)
            r[n++] = (ranked){i, t->v[i].size, 1};
    qsort(r, n, sizeof *r, rank_by_bytes);
    sb_adds(&sb, ". Largest files:");
    for (size_t i = 0; i < n && i < 3; i++) {
        fmt_size(r[i].bytes, a);
        sb_addf(&sb, "%s %s (%s)", i ? "," : "", short_path(t->v[r[i].idx].path), a);
    }
    n = rank_dirs(t, r);
    qsort(r, n, sizeof *r, by_files ? rank_by_files : rank_by_bytes);
    sb_adds(&sb, n ? ". Largest directories:" : "");
    for (size_t i = 0; i < n && i < 3; i++) {
        fmt_size(r[i].bytes, a);
        sb_addf(&sb, "%s %s/ (%s in %llu files)", i ? "," : "",
                short_path(t->v[r[i].idx].path), a, (unsigned long long)r[i].files);
    }
    sb_addf(&sb, ". Leave them out with lines like `%s/` in %s/%s, or raise the limit with "
            "%s (or --%s)", n ? short_path(t->v[r[0].idx].path) : "dir", root, ignore_name,
            by_files ? "CTARGET_SNAPSHOT_MAX_FILES" : "CTARGET_SNAPSHOT_MAX_BYTES",
            by_files ? "max-files" : "max-bytes");
    free(r);
    ct_err(err, CTARGET_E_LIMIT, "%s", sb.data);
    sb_free(&sb);
}

/* ---- walking ----------------------------------------------------------------------------- */

/* ---- stat'ing regular files off the walk ---------------------------------------------------
 *
 * lstat is most of a warm snapshot's cost (the stat cache then vouches for every file), and
 * the walk itself (readdir, ignore rules) needs no stat for names whose d_type says they are
 * regular files.  So the walk hands each directory's regular files to helper threads as one
 * job (a descriptor of the directory and the names) and goes on; finished jobs are applied
 * to the tree by the walking thread only, which then stats what is left itself.  Files are
 * still stat'ed relative to their directory's descriptor, never by a path. */
#define STAT_MAX_THREADS 4
#define STAT_MAX_QUEUED 64      /* jobs waiting; beyond that the walk stats them itself */

typedef struct stat_res {
    int err;                    /* errno of fstatat, 0 when it worked */
    struct stat st;
} stat_res;

typedef struct stat_job {
    struct stat_job *next;
    int dirfd;                  /* a duplicate, owned */
    size_t n;
    char **names;               /* into pool */
    char *pool;                 /* the names, one allocation */
    size_t pool_len;
    size_t *idx;                /* their entries in the tree */
    stat_res *res;
} stat_job;

typedef struct stat_pool {
    pthread_mutex_t mu;
    pthread_cond_t more, idle;
    stat_job *todo, *todo_tail, *done;
    size_t queued, busy;
    int stop;
    size_t n_threads;
    pthread_t tid[STAT_MAX_THREADS];
} stat_pool;

static void job_run(stat_job *j)
{
    for (size_t i = 0; i < j->n; i++)
        j->res[i].err = fstatat(j->dirfd, j->names[i], &j->res[i].st, AT_SYMLINK_NOFOLLOW) != 0
                        ? errno : 0;
}

static void job_free(stat_job *j)
{
    free(j->pool);
    free(j->names);
    free(j->idx);
    free(j->res);
    if (j->dirfd >= 0)
        close(j->dirfd);
    free(j);
}

static void *stat_worker(void *arg)
{
    stat_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->todo && !p->stop)
            pthread_cond_wait(&p->more, &p->mu);
        if (!p->todo)
            break;
        stat_job *j = p->todo;
        p->todo = j->next;
        p->queued--;
        p->busy++;
        pthread_mutex_unlock(&p->mu);
        job_run(j);
        pthread_mutex_lock(&p->mu);
        j->next = p->done;
        p->done = j;
        p->busy--;
        pthread_cond_signal(&p->idle);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void pool_start(stat_pool *p)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->more, NULL);
    pthread_cond_init(&p->idle, NULL);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    /* one helper per core besides the walking thread: while the walker reads a directory
     * or waits, both cores still stat */
    size_t want = cpus > 1 ? (size_t)cpus : 0;
    if (want > STAT_MAX_THREADS)
        want = STAT_MAX_THREADS;
    for (size_t i = 0; i < want; i++)
        if (pthread_create(&p->tid[p->n_threads], NULL, stat_worker, p) == 0)
            p->n_threads++;
}

static void pool_stop(stat_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->more);
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < p->n_threads; i++)
        pthread_join(p->tid[i], NULL);
    /* jobs left after a failure */
    for (stat_job *j = p->todo, *next; j; j = next) {
        next = j->next;
        job_free(j);
    }
    for (stat_job *j = p->done, *next; j; j = next) {
        next = j->next;
        job_free(j);
    }
    pthread_cond_destroy(&p->more);
    pthread_cond_destroy(&p->idle);
    pthread_mutex_destroy(&p->mu);
}

typedef struct walk {
    const char *root;
    stat_pool pool;
    size_t vanished;           /* entries whose file went away before its stat */
    ignore *ig;
    snap_tree *t;
    const snap_limits *lim;
    int truncated;
    int64_t start_ns;      /* monotonic */
    const snap_dirs *hints; /* the listing cache as recorded (or NULL) */
    snap_dirs_out *dout;   /* listings found this time (NULL: no listing cache) */
    int has_skip;          /* the workspace, when it lies inside the tree */
    dev_t skip_dev;
    ino_t skip_ino;
} walk;

static int utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2
                : (*p & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0 || (n == 1 && *p < 0xc2))
            return 0;
        for (int i = 1; i <= n; i++)
            if ((p[i] & 0xc0) != 0x80)
                return 0;
        p += n + 1;
    }
    return 1;
}

/* Whether a link target, taken relative to the link's directory, leaves the tree at any
 * step (the receiver resolves it the same way). */
static int link_escapes(const char *reldir, const char *target)
{
    if (target[0] == '/')
        return 1;
    long depth = 0;
    for (const char *c = reldir; *c; c++)
        depth += (c == reldir || c[-1] == '/');
    for (const char *c = target; c;) {
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        if (len == 2 && c[0] == '.' && c[1] == '.') {
            if (--depth < 0)
                return 1;
        } else if (len && !(len == 1 && c[0] == '.')) {
            depth++;
        }
        c = slash ? slash + 1 : NULL;
    }
    return 0;
}

static int64_t ts_ns(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* What one name in a directory turned out to be. */
typedef enum item_kind {
    IT_NONE,          /* left out (ignored, vanished, not snapshotted) */
    IT_DIR,
    IT_FILE,          /* stat'ed here */
    IT_DEFERRED,      /* a regular file by its d_type, stat'ed by a job */
    IT_LINK
} item_kind;

typedef struct item {
    item_kind kind;
    char *rel;        /* owned until it moves into the tree */
    const char *path; /* the same string once in the tree (borrowed from there) */
    struct stat st;   /* IT_DIR, IT_FILE */
    char *target;     /* IT_LINK, owned until it moves into the tree */
} item;

/* A symlink's target into it->target, or IT_NONE with a warning when it cannot be kept. */
static ctarget_status read_link(walk *w, int dirfd, const char *name, const char *reldir,
                                item *it, ctarget_error *err)
{
    char buf[4096];
    ssize_t n = readlinkat(dirfd, name, buf, sizeof buf - 1);
    if (n < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot read symlink %s/%s", w->root, it->rel);
        return CTARGET_E_IO;
    }
    buf[n] = '\0';
    if (!n || !utf8_valid(buf)) {
        log_msg(CTARGET_LOG_WARN, "skipping symlink %s: its target is empty or not UTF-8",
                it->rel);
        return CTARGET_OK;
    }
    if (link_escapes(reldir, buf))
        log_msg(CTARGET_LOG_WARN,
                "symlink %s points outside the source directory (%s): kept as a link, which "
                "will not resolve to the same file on a target", it->rel, buf);
    it->kind = IT_LINK;
    it->target = xstrdup(buf);
    return CTARGET_OK;
}

static void set_file_stat(snap_entry *e, const struct stat *st)
{
    e->mode = st->st_mode & 0777;
    e->size = (uint64_t)st->st_size;
    e->mtime_ns = ts_ns(st->st_mtim);
    e->ctime_ns = ts_ns(st->st_ctim);
    e->ino = (uint64_t)st->st_ino;
    e->dev = (uint64_t)st->st_dev;
}

/* A finished job into the tree (walking thread only). */
static ctarget_status job_apply(walk *w, stat_job *j, ctarget_error *err)
{
    ctarget_status rc = CTARGET_OK;
    for (size_t i = 0; i < j->n && !rc; i++) {
        snap_entry *e = &w->t->v[j->idx[i]];
        const struct stat *st = &j->res[i].st;
        if (j->res[i].err == ENOENT) {
            /* vanished since readdir: nothing to snapshot */
            free(e->path);
            e->path = NULL;
            w->vanished++;
            w->t->files--;
        } else if (j->res[i].err) {
            ct_err_errno(err, CTARGET_E_IO, j->res[i].err, "cannot stat %s/%s", w->root,
                         e->path);
            rc = CTARGET_E_IO;
        } else if (!S_ISREG(st->st_mode)) {
            ct_err(err, CTARGET_E_FAILED, "%s/%s stopped being a regular file during the "
                   "snapshot; take it again", w->root, e->path);
            rc = CTARGET_E_FAILED;
        } else {
            e->mode = st->st_mode & 0777;
            e->size = (uint64_t)st->st_size;
            e->mtime_ns = ts_ns(st->st_mtim);
            e->ctime_ns = ts_ns(st->st_ctim);
            e->ino = (uint64_t)st->st_ino;
            e->dev = (uint64_t)st->st_dev;
            w->t->bytes += e->size;
        }
    }
    job_free(j);
    return rc;
}

/* Apply the jobs finished so far; with wait, first finish all of them (helping). */
static ctarget_status jobs_collect(walk *w, int wait, ctarget_error *err)
{
    stat_pool *p = &w->pool;
    pthread_mutex_lock(&p->mu);
    while (wait && p->todo) {
        stat_job *j = p->todo;
        p->todo = j->next;
        p->queued--;
        pthread_mutex_unlock(&p->mu);
        job_run(j);
        pthread_mutex_lock(&p->mu);
        j->next = p->done;
        p->done = j;
    }
    while (wait && p->busy)
        pthread_cond_wait(&p->idle, &p->mu);
    stat_job *done = p->done;
    p->done = NULL;
    pthread_mutex_unlock(&p->mu);
    ctarget_status rc = CTARGET_OK;
    for (stat_job *j = done, *next; j; j = next) {
        next = j->next;
        if (rc)
            job_free(j);
        else
            rc = job_apply(w, j, err);
    }
    return rc;
}

/* Hand a directory's regular files to the helpers, or stat them here when there are none
 * or enough is queued already. */
static ctarget_status jobs_submit(walk *w, stat_job *j, ctarget_error *err)
{
    stat_pool *p = &w->pool;
    j->res = xcalloc(j->n, sizeof *j->res);
    if (p->n_threads) {
        pthread_mutex_lock(&p->mu);
        if (p->queued < STAT_MAX_QUEUED) {
            j->next = NULL;
            if (p->todo)
                p->todo_tail->next = j;
            else
                p->todo = j;
            p->todo_tail = j;
            p->queued++;
            pthread_cond_signal(&p->more);
            pthread_mutex_unlock(&p->mu);
            return CTARGET_OK;
        }
        pthread_mutex_unlock(&p->mu);
    }
    job_run(j);
    return job_apply(w, j, err);
}

static ctarget_status not_utf8(walk *w, const char *rel, ctarget_error *err)
{
    ct_err(err, CTARGET_E_FAILED, "%s/%s: the name is not valid UTF-8; rename it or add it to "
           "%s", w->root, rel, ignore_file_name(w->ig));
    return CTARGET_E_FAILED;
}

/* Submit the regular files of the directory at dirfd (job freed on failure). */
static ctarget_status job_submit_dir(walk *w, int dirfd, const char *reldir, stat_job *job,
                                     ctarget_error *err)
{
    if ((job->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0)) < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot read directory %s/%s", w->root, reldir);
        job_free(job);
        return CTARGET_E_IO;
    }
    return jobs_submit(w, job, err);
}

/* Classify one directory entry (stat relative to its directory: no path walk per file).  A
 * name whose d_type says "regular file" needs no stat to be kept or left out: the ignore
 * rules only ask whether it is a directory; its stat is deferred to a job.  The names of
 * the directories above were checked when they were kept, so only `name` needs checking. */
static ctarget_status classify(walk *w, int dirfd, const char *name, unsigned char d_type,
                               const char *reldir, item *it, ctarget_error *err)
{
    it->kind = IT_NONE;
    if (d_type == DT_REG) {
        if (ignore_is_excluded(w->ig, it->rel, 0))
            return CTARGET_OK;
        if (!utf8_valid(name))
            return not_utf8(w, it->rel, err);
        it->kind = IT_DEFERRED;
        return CTARGET_OK;
    }
    struct stat *st = &it->st;
    if (fstatat(dirfd, name, st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) /* vanished since readdir: nothing to snapshot */
            return CTARGET_OK;
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot stat %s/%s", w->root, it->rel);
        return CTARGET_E_IO;
    }
    if (ignore_is_excluded(w->ig, it->rel, S_ISDIR(st->st_mode)))
        return CTARGET_OK; /* left out, and never descended into */
    if (!utf8_valid(name))
        return not_utf8(w, it->rel, err);
    if (S_ISDIR(st->st_mode) && w->has_skip && st->st_dev == w->skip_dev &&
        st->st_ino == w->skip_ino) {
        /* snapshotting the blob store into itself would grow it without end */
        log_msg(CTARGET_LOG_INFO, "leaving out %s: it is the workspace", it->rel);
    } else if (S_ISDIR(st->st_mode)) {
        it->kind = IT_DIR;
    } else if (S_ISREG(st->st_mode)) {
        it->kind = IT_FILE;
    } else if (S_ISLNK(st->st_mode)) {
        return read_link(w, dirfd, name, reldir, it, err);
    } else {
        log_msg(CTARGET_LOG_WARN, "skipping %s: a %s is not snapshotted", it->rel,
                S_ISFIFO(st->st_mode) ? "FIFO" : S_ISSOCK(st->st_mode) ? "socket" : "device");
    }
    return CTARGET_OK;
}

/* The order entries are added in: a directory's names, with each kept subdirectory's
 * contents ("name/...") where "name/" sorts among them.  That is byte order of the whole
 * paths, so the tree comes out sorted without sorting it. */
typedef struct key {
    size_t idx;
    int block;        /* 1: the contents of subdirectory idx, i.e. "name/" */
} key;

/* Whether "block/" sorts before name (byte order; a name never contains '/'). */
static int block_before(const char *block, const char *name)
{
    const unsigned char *p = (const unsigned char *)block, *q = (const unsigned char *)name;
    while (*p && *p == *q)
        p++, q++;
    /* where block ends it goes on with '/'; a name never contains '/', so no tie */
    int cp = *p ? *p : '/';
    return cp < *q;
}

typedef struct dent {
    char *name;                /* into the directory's name pool */
    unsigned char type;        /* d_type: DT_UNKNOWN when the file system does not say */
} dent;

typedef struct dir_list {
    dent *v;
    size_t n;
    char *pool;                /* every name, NUL-terminated, one allocation */
    size_t pool_len;
} dir_list;

static int cmp_dent(const void *a, const void *b)
{
    return strcmp(((const dent *)a)->name, ((const dent *)b)->name);
}

/* The recorded listing into l: the names block copied as the pool (each name follows its
 * type byte and ends in a NUL). */
static void cached_list(const snap_dir_names *c, dir_list *l)
{
    l->pool = xmalloc(c->len ? c->len : 1);
    memcpy(l->pool, c->names, c->len);
    l->pool_len = c->len;
    l->v = xcalloc(c->n ? c->n : 1, sizeof *l->v);
    size_t off = 0;
    for (size_t i = 0; i < c->n; i++) {
        l->v[i].type = (unsigned char)l->pool[off];
        l->v[i].name = l->pool + off + 1;
        off += strlen(l->v[i].name) + 2;
    }
    l->n = c->n;
}

/* Names in a directory, sorted so that walks (and warnings) are deterministic: from the
 * listing cache when the directory is as recorded there, else read (and recorded). */
static ctarget_status list_dir(walk *w, int dirfd, const char *reldir, dir_list *l,
                               ctarget_error *err)
{
    memset(l, 0, sizeof *l);
    /* stat'ed before it is read: a name added after this changes the stamp */
    struct stat ds;
    int stamped = w->dout && fstat(dirfd, &ds) == 0;
    snap_dir_names cached;
    if (stamped && snap_dirs_get(w->hints, reldir, &ds, &cached)) {
        cached_list(&cached, l);
        snap_dirs_out_add(w->dout, reldir, &ds, 1, &cached);
        return CTARGET_OK;
    }
    int fd = dup(dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot read directory %s%s%s", w->root,
                     *reldir ? "/" : "", reldir);
        if (fd >= 0)
            close(fd);
        return CTARGET_E_IO;
    }
    size_t cap = 0, pool_cap = 0;
    size_t *off = NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (l->n == cap) {
            cap = cap ? cap * 2 : 16;
            l->v = xrealloc(l->v, cap * sizeof *l->v);
            off = xrealloc(off, cap * sizeof *off);
        }
        size_t len = strlen(de->d_name) + 1;
        if (l->pool_len + len > pool_cap) {
            while (l->pool_len + len > pool_cap)
                pool_cap = pool_cap ? pool_cap * 2 : 1024;
            l->pool = xrealloc(l->pool, pool_cap);
        }
        memcpy(l->pool + l->pool_len, de->d_name, len);
        off[l->n] = l->pool_len;
        l->pool_len += len;
        l->v[l->n++].type = de->d_type;
    }
    closedir(d);
    for (size_t i = 0; i < l->n; i++)
        l->v[i].name = l->pool + off[i];
    free(off);
    if (l->n)
        qsort(l->v, l->n, sizeof *l->v, cmp_dent);
    if (stamped) {
        strbuf b;
        sb_init(&b);
        sb_reserve(&b, l->pool_len + l->n);
        for (size_t i = 0; i < l->n; i++) {
            sb_add(&b, &l->v[i].type, 1);
            sb_add(&b, l->v[i].name, strlen(l->v[i].name) + 1);
        }
        snap_dir_names found = {(const unsigned char *)b.data, b.len, l->n};
        snap_dirs_out_add(w->dout, reldir, &ds, 0, &found);
        sb_free(&b);
    }
    return CTARGET_OK;
}

static int over_cap(const walk *w)
{
    const snap_tree *t = w->t;
    return (t->files > w->lim->max_files || t->bytes > w->lim->max_bytes) &&
           t->n >= WALK_OVER_LIMIT_CAP;
}

static void free_dir_list(dir_list *l)
{
    free(l->v);
    free(l->pool);
}

/* "reldir/name", or name at the root. */
static char *rel_join(const char *reldir, const char *name)
{
    size_t dl = strlen(reldir), nl = strlen(name);
    char *r = xmalloc(dl + nl + 2);
    if (dl) {
        memcpy(r, reldir, dl);
        r[dl++] = '/';
    }
    memcpy(r + dl, name, nl + 1);
    return r;
}

static ctarget_status walk_dir(walk *w, int dirfd, const char *reldir, int depth,
                               ctarget_error *err);

/* Open a kept subdirectory (never through a symlink swapped in meanwhile) and walk it. */
static ctarget_status descend(walk *w, int dirfd, const char *name, const char *rel, int depth,
                              ctarget_error *err)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot read directory %s/%s", w->root, rel);
        return CTARGET_E_IO;
    }
    ctarget_status rc = walk_dir(w, fd, rel, depth, err);
    close(fd);
    return rc;
}

static ctarget_status walk_dir(walk *w, int dirfd, const char *reldir, int depth,
                               ctarget_error *err)
{
    if (ctarget_cancel_requested()) {
        ct_err(err, CTARGET_E_CANCELED, "snapshot of %s canceled", w->root);
        return CTARGET_E_CANCELED;
    }
    if (depth > WALK_MAX_DEPTH) {
        ct_err(err, CTARGET_E_LIMIT, "%s/%s: directories nested deeper than %d levels", w->root,
               reldir, WALK_MAX_DEPTH);
        return CTARGET_E_LIMIT;
    }
    dir_list l;
    ctarget_status rc = list_dir(w, dirfd, reldir, &l, err);
    if (rc)
        return rc;
    dent *names = l.v;
    size_t n = l.n;
    if ((rc = ignore_enter(w->ig, reldir, err))) {
        free_dir_list(&l);
        return rc;
    }
    /* classify every entry while this directory's rules are on top */
    item *items = xcalloc(n + 1, sizeof *items);
    key *keys = xcalloc(2 * n + 1, sizeof *keys);
    size_t *pending = xcalloc(n + 1, sizeof *pending);
    size_t nk = 0, np = 0, before = w->t->n;
    for (size_t i = 0; i < n && !rc; i++) {
        items[i].rel = rel_join(reldir, names[i].name);
        rc = classify(w, dirfd, names[i].name, names[i].type, reldir, &items[i], err);
        if (items[i].kind == IT_NONE)
            continue;
        /* names come sorted: a subdirectory's block goes before the first later name it
         * sorts before; the pending ones nest, the latest being the smallest */
        while (np && block_before(names[pending[np - 1]].name, names[i].name))
            keys[nk++] = (key){pending[--np], 1};
        keys[nk++] = (key){i, 0};
        if (items[i].kind == IT_DIR)
            pending[np++] = i;
    }
    while (np)
        keys[nk++] = (key){pending[--np], 1};
    free(pending);
    /* add them in path order, descending where a subdirectory's contents belong; the
     * regular files added so far go to the stat helpers before each descent */
    stat_job *job = NULL;
    for (size_t k = 0; k < nk && !rc; k++) {
        item *it = &items[keys[k].idx];
        if (keys[k].block) {
            /* the directory's own entry came first ("name" < "name/"): it->path is set */
            if (job)
                rc = job_submit_dir(w, dirfd, reldir, job, err);
            job = NULL;
            if (!rc)
                rc = jobs_collect(w, 0, err);
            if (rc)
                break;
            if (over_cap(w)) {
                w->truncated = 1;
                break;
            }
            rc = descend(w, dirfd, names[keys[k].idx].name, it->path, depth + 1, err);
            continue;
        }
        snap_type type = it->kind == IT_DIR ? SNAP_DIR : it->kind == IT_LINK ? SNAP_LINK
                                                                             : SNAP_FILE;
        char *rel = it->rel;
        snap_entry *e = snap_tree_add_owned(w->t, rel, type);
        if (it->kind == IT_DIR) {
            e->mode = it->st.st_mode & 0777;
        } else if (it->kind == IT_LINK) {
            e->target = it->target;
            it->target = NULL;
            w->t->files++;
        } else if (it->kind == IT_FILE) {
            set_file_stat(e, &it->st);
            w->t->files++;
            w->t->bytes += e->size;
        } else {
            if (!job) {
                job = xcalloc(1, sizeof *job);
                job->dirfd = -1;
                job->names = xcalloc(n, sizeof *job->names);
                job->idx = xcalloc(n, sizeof *job->idx);
                job->pool = xmalloc(l.pool_len);
            }
            w->t->files++;
            const char *name = names[keys[k].idx].name;
            size_t len = strlen(name) + 1;
            memcpy(job->pool + job->pool_len, name, len);
            job->idx[job->n] = w->t->n - 1;
            job->names[job->n++] = job->pool + job->pool_len;
            job->pool_len += len;
        }
        it->rel = NULL; /* rel and target now belong to the tree */
        it->path = rel;
    }
    if (job && !rc)
        rc = job_submit_dir(w, dirfd, reldir, job, err);
    else if (job)
        job_free(job);
    if (!rc)
        rc = jobs_collect(w, 0, err);
    if (w->t->n / 1024 != before / 1024 && time_mono_ns() - w->start_ns > PROGRESS_AFTER_NS)
        progress_report("snapshot: scanning", w->t->n, 0);
    ignore_leave(w->ig);
    for (size_t i = 0; i < n; i++) {
        free(items[i].rel);
        free(items[i].target);
    }
    free(items);
    free(keys);
    free_dir_list(&l);
    return rc;
}

/* Drop the entries of files that vanished before their stat. */
static void compact(snap_tree *t)
{
    size_t k = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].path)
            t->v[k++] = t->v[i];
    t->n = k;
}

ctarget_status snap_walk(const char *root, const snap_limits *lim, const char *skip_dir,
                         const char *cache_dir, snap_tree *t, ctarget_error *err)
{
    memset(t, 0, sizeof *t);
    walk w = {.root = root, .t = t, .lim = lim, .start_ns = time_mono_ns()};
    snap_dirs_out dout;
    snap_dirs_out_init(&dout, testhook_wall_ns());
    snap_dirs *hints = cache_dir ? snap_dirs_load(cache_dir, root) : NULL;
    w.hints = hints;
    w.dout = cache_dir ? &dout : NULL;
    struct stat sk;
    if (skip_dir && stat(skip_dir, &sk) == 0) {
        w.has_skip = 1;
        w.skip_dev = sk.st_dev;
        w.skip_ino = sk.st_ino;
    }
    ctarget_status rc = ignore_open(root, &w.ig, err);
    if (rc) {
        snap_dirs_free(hints);
        snap_dirs_out_free(&dout);
        return rc;
    }
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    pool_start(&w.pool);
    if (fd < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot read directory %s", root);
        rc = CTARGET_E_IO;
    } else {
        rc = walk_dir(&w, fd, "", 0, err);
        close(fd);
    }
    ctarget_error cerr;
    ctarget_error_init(&cerr);
    ctarget_status crc = jobs_collect(&w, 1, &cerr);
    if (!rc && crc) {
        rc = crc;
        *err = cerr;
    }
    pool_stop(&w.pool);
    if (w.vanished)
        compact(t);
    if (!rc) {
        /* added in path order already (cmp_key); sorting is only a safety net */
        for (size_t i = 1; i < t->n; i++)
            if (strcmp(t->v[i - 1].path, t->v[i].path) >= 0) {
                log_msg(CTARGET_LOG_DEBUG, "snapshot walk: %s came after %s; sorting",
                        t->v[i].path, t->v[i - 1].path);
                snap_tree_sort(t);
                break;
            }
        if (t->files > lim->max_files || t->bytes > lim->max_bytes) {
            limit_message(root, t, lim, ignore_file_name(w.ig), w.truncated, err);
            rc = CTARGET_E_LIMIT;
        }
    }
    ignore_free(w.ig);
    if (rc)
        snap_tree_free(t);
    else if (cache_dir)
        snap_dirs_write(cache_dir, root, &dout);
    log_msg(CTARGET_LOG_DEBUG, "snapshot walk: %zu directories read, %zu from the listing "
            "cache", dout.listed, dout.reused);
    snap_dirs_out_free(&dout);
    snap_dirs_free(hints);
    return rc;
}
