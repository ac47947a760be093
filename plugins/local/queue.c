/* max_concurrent_runs across independent run monitors.
 *
 * Every run has its own monitor process, so the queue lives in the file system, in the
 * target's state directory, guarded by one flock'd lock file:
 *     queue/<run id>     waiting runs (content: the run's work_dir)
 *     running/<run id>   runs holding a slot
 * Run ids sort by submission time, so the smallest name in queue/ is the next to start.
 * Whoever holds the lock may start any waiting run: the run's launch spec in its work_dir
 * holds everything needed, so a queued run whose own monitor is gone still starts in turn.
 * Slots free themselves: a running/ entry whose run has an exit status, or whose wrapper is
 * gone, is stale and removed the next time anyone counts. */
#include "config.h"

#include "local.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* An entry older than this without a pid file belongs to an admitter that died mid-launch. */
#define LAUNCH_STALE_MS 60000

typedef struct lq {
    char *dir;       /* target state dir */
    char *queue;
    char *running;
    int lock_fd;
} lq;

static int lq_open(const ctarget_host *h, ctarget_target *t, lq *q)
{
    memset(q, 0, sizeof *q);
    q->lock_fd = -1;
    const char *sd = h->target_state_dir0(t);
    if (!sd)
        return -1;
    q->dir = lp_strdup(sd);
    q->queue = lp_asprintf("%s/queue", sd);
    q->running = lp_asprintf("%s/running", sd);
    if (lp_mkdir_p(q->queue, 0700) != 0 || lp_mkdir_p(q->running, 0700) != 0)
        return -1;
    return 0;
}

static void lq_close(lq *q)
{
    if (q->lock_fd >= 0)
        close(q->lock_fd); /* releases the flock */
    free(q->dir);
    free(q->queue);
    free(q->running);
    memset(q, 0, sizeof *q);
    q->lock_fd = -1;
}

/* The lock is held only for admission (a fork or two per run), so waits are short; still,
 * bounded: 30 s, then a transient error the monitor retries. */
static ctarget_status lq_lock(const ctarget_host *h, ctarget_call *call, lq *q,
                              ctarget_error *err)
{
    char *path = lp_asprintf("%s/queue.lock", q->dir);
    q->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (q->lock_fd < 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot open the run queue lock in %s: %s",
                     q->dir, strerror(errno));
        return CTARGET_E_IO;
    }
    for (int i = 0; i < 3000; i++) {
        if (flock(q->lock_fd, LOCK_EX | LOCK_NB) == 0)
            return CTARGET_OK;
        if (errno != EWOULDBLOCK && errno != EINTR)
            break;
        if (h->sleep_ms(call, 10) != CTARGET_OK)
            break;
    }
    h->error_set(err, CTARGET_E_TIMEOUT, 1, errno, "the run queue in %s stayed locked", q->dir);
    return CTARGET_E_TIMEOUT;
}

/* Run ids become file names: anything but [A-Za-z0-9._-] turns into '_' (order is kept
 * for the ids the core makes, which use only those characters). */
static char *entry_name(const char *run_id)
{
    char *s = lp_strdup(run_id);
    for (char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9') || *c == '.' || *c == '-' || *c == '_'))
            *c = '_';
    if (s[0] == '.' || !s[0]) {
        char *t = lp_asprintf("_%s", s);
        free(s);
        s = t;
    }
    return s;
}

static char *entry_work_dir(const char *dir, const char *name)
{
    char *path = lp_asprintf("%s/%s", dir, name);
    char *wd = lp_read_file(path, NULL);
    free(path);
    return wd;
}

static int slot_is_live(const char *dir, const char *name)
{
    char *wd = entry_work_dir(dir, name);
    if (!wd)
        return 0;
    lrun_paths p;
    lrun_paths_init(&p, wd);
    free(wd);
    int live = 0;
    lrun_pids pids;
    if (lp_exists(p.status) || !lp_exists(p.work)) {
        live = 0;
    } else if (lspawn_read_pids(&p, &pids) == 0) {
        live = lp_pid_alive((pid_t)pids.wrapper_pid, pids.wrapper_start);
    } else {
        /* being launched right now, or the launcher died: judge by age */
        char *path = lp_asprintf("%s/%s", dir, name);
        struct stat st;
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        live = stat(path, &st) == 0 && now.tv_sec - st.st_mtim.tv_sec < LAUNCH_STALE_MS / 1000;
        free(path);
    }
    lrun_paths_free(&p);
    return live;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Entry names of a directory, sorted. */
static char **list_dir(const char *dir, size_t *n)
{
    *n = 0;
    char **v = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || strstr(de->d_name, ".tmp."))
            continue;
        v = lp_xrealloc(v, (*n + 1) * sizeof *v);
        v[(*n)++] = lp_strdup(de->d_name);
    }
    closedir(d);
    if (*n)
        qsort(v, *n, sizeof *v, name_cmp);
    return v;
}

static void free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static long slot_limit(const ctarget_host *h, ctarget_target *t)
{
    const char *m = h->config_get0(t, "max_concurrent_runs");
    long v = m ? strtol(m, NULL, 10) : 0;
    if (v < 1)
        v = sysconf(_SC_NPROCESSORS_ONLN);
    return v < 1 ? 1 : v;
}

static long count_running(lq *q)
{
    size_t n;
    char **names = list_dir(q->running, &n);
    long live = 0;
    for (size_t i = 0; i < n; i++) {
        if (slot_is_live(q->running, names[i])) {
            live++;
        } else {
            char *path = lp_asprintf("%s/%s", q->running, names[i]);
            unlink(path);
            free(path);
        }
    }
    free_list(names, n);
    return live;
}

/* Start one queued run: its entry moves to running/ first, so a crash mid-launch is
 * visible (and ages out) instead of starting the run twice. */
static void start_one(lq *q, const char *name)
{
    char *from = lp_asprintf("%s/%s", q->queue, name);
    char *to = lp_asprintf("%s/%s", q->running, name);
    char *wd = entry_work_dir(q->queue, name);
    lrun_paths p = {0};
    if (wd)
        lrun_paths_init(&p, wd);
    if (!wd || !lp_exists(p.work) || lp_exists(p.cancel) || lp_exists(p.pidf)) {
        unlink(from); /* deleted, cancelled while waiting, or started already */
    } else if (rename(from, to) == 0) {
        lrun_pids pids;
        if (lspawn_launch(&p, &pids) != 0) {
            char *msg = lp_asprintf("could not start the script's wrapper process: %s\n",
                                    strerror(errno));
            lp_write_file_atomic(p.launch_err, msg, strlen(msg));
            free(msg);
            unlink(to);
        }
    }
    if (wd)
        lrun_paths_free(&p);
    free(wd);
    free(from);
    free(to);
}

static void admit_locked(const ctarget_host *h, ctarget_target *t, lq *q)
{
    long free_slots = slot_limit(h, t) - count_running(q);
    size_t n;
    char **names = list_dir(q->queue, &n);
    for (size_t i = 0; i < n && free_slots > 0; i++) {
        char *to = lp_asprintf("%s/%s", q->running, names[i]);
        start_one(q, names[i]);
        if (lp_exists(to))
            free_slots--;
        free(to);
    }
    free_list(names, n);
}

static ctarget_status queue_unusable(const ctarget_host *h, lq *q, ctarget_error *err)
{
    h->error_set(err, CTARGET_E_IO, 0, errno, "the run queue of this target (%s) cannot be "
                 "used: %s", q->dir ? q->dir : "no state directory", strerror(errno));
    lq_close(q);
    return CTARGET_E_IO;
}

ctarget_status lqueue_submit(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                             const char *run_id, const char *work_dir, ctarget_error *err)
{
    lq q;
    if (lq_open(h, t, &q) != 0)
        return queue_unusable(h, &q, err);
    ctarget_status rc = lq_lock(h, call, &q, err);
    if (rc != CTARGET_OK) {
        lq_close(&q);
        return rc;
    }
    char *name = entry_name(run_id);
    char *qpath = lp_asprintf("%s/%s", q.queue, name);
    char *rpath = lp_asprintf("%s/%s", q.running, name);
    lrun_paths p;
    lrun_paths_init(&p, work_dir);
    /* idempotent: a repeated submit neither queues nor starts the run twice */
    if (!lp_exists(p.pidf) && !lp_exists(rpath) && !lp_exists(qpath) &&
        lp_write_file_atomic(qpath, work_dir, strlen(work_dir)) != 0)
        rc = queue_unusable(h, &q, err);
    else
        admit_locked(h, t, &q);
    lrun_paths_free(&p);
    free(name);
    free(qpath);
    free(rpath);
    lq_close(&q);
    return rc;
}

ctarget_status lqueue_admit(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                            ctarget_error *err)
{
    lq q;
    if (lq_open(h, t, &q) != 0)
        return queue_unusable(h, &q, err);
    ctarget_status rc = lq_lock(h, call, &q, err);
    if (rc == CTARGET_OK)
        admit_locked(h, t, &q);
    lq_close(&q);
    return rc;
}

int lqueue_waiting(const ctarget_host *h, ctarget_target *t, const char *run_id)
{
    const char *sd = h->target_state_dir0(t);
    if (!sd)
        return -1;
    char *name = entry_name(run_id);
    char *path = lp_asprintf("%s/queue/%s", sd, name);
    int w = lp_exists(path);
    free(name);
    free(path);
    return w;
}

int lqueue_withdraw(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                    const char *run_id, ctarget_error *err)
{
    lq q;
    if (lq_open(h, t, &q) != 0) {
        queue_unusable(h, &q, err);
        return -1;
    }
    if (lq_lock(h, call, &q, err) != CTARGET_OK) {
        lq_close(&q);
        return -1;
    }
    char *name = entry_name(run_id);
    char *qpath = lp_asprintf("%s/%s", q.queue, name);
    int was = unlink(qpath) == 0;
    free(name);
    free(qpath);
    lq_close(&q);
    return was;
}

void lqueue_forget(const ctarget_host *h, ctarget_target *t, const char *run_id)
{
    const char *sd = h->target_state_dir0(t);
    if (!sd)
        return;
    char *name = entry_name(run_id);
    const char *subs[] = {"queue", "running"};
    for (size_t i = 0; i < 2; i++) {
        char *path = lp_asprintf("%s/%s/%s", sd, subs[i], name);
        unlink(path);
        free(path);
    }
    free(name);
}

int lqueue_slot_held(const ctarget_host *h, ctarget_target *t, const char *run_id)
{
    const char *sd = h->target_state_dir0(t);
    if (!sd)
        return 0;
    char *name = entry_name(run_id);
    char *path = lp_asprintf("%s/running/%s", sd, name);
    int held = lp_exists(path);
    free(name);
    free(path);
    return held;
}
