/* Local mode's side of a run directory, <remote_root>/runs/<id>/ on this machine (the same
 * layout remotevm's agent makes on a login node): the snapshot materialized into src/, the
 * job's std_log.txt and metrics.jsonl read from an offset, src/outputs and src/logs copied
 * into the workspace (regular files and directories only, never following a link). */
#define _GNU_SOURCE
#include "config.h"

#include "slurm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *sl_local_run_dir(ctarget_target *t, const char *run_id)
{
    const char *root = SL_H->config_get0(t, "remote_root");
    if (!root || !*root)
        root = "~/.ctarget";
    const char *home = "";
    if (!strncmp(root, "~/", 2)) {
        home = getenv("HOME");
        if (!home || !*home)
            home = "/";
        root++;
    }
    char *p = NULL;
    if (asprintf(&p, "%s%s/runs/%s", home, root, run_id) < 0)
        return NULL;
    return p;
}

static int mkdirs(const char *path, mode_t mode)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *s = buf + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    return mkdir(buf, mode) != 0 && errno != EEXIST ? -1 : 0;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    remove(p);
    return 0;
}

static void rm_rf(const char *p)
{
    nftw(p, rm_one, 32, FTW_DEPTH | FTW_PHYS);
}

ctarget_status sl_local_prepare(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                                ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    char *rd = sl_local_run_dir(t, run->id);
    char *src = NULL, *mark = NULL;
    if (!rd || asprintf(&src, "%s/src", rd) < 0 || asprintf(&mark, "%s/src.snapshot", rd) < 0) {
        free(rd);
        h->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    ctarget_status rc = CTARGET_OK;
    char have[200] = "";
    FILE *f = fopen(mark, "re");
    if (f) {
        if (!fgets(have, sizeof have, f))
            have[0] = '\0';
        fclose(f);
    }
    if (strcmp(have, run->snapshot_id)) { /* a repeated prepare keeps a finished tree */
        if (mkdirs(rd, 0700) != 0) {
            h->error_set(err, CTARGET_E_IO, 0, errno, "cannot create the run directory %s: %s "
                         "(remote_root must be a directory the compute nodes see)", rd,
                         strerror(errno));
            rc = CTARGET_E_IO;
        } else {
            unlink(mark);
            rm_rf(src);
            h->progress(c, "materializing", 0, 0);
            rc = h->snapshot_materialize(c, run->snapshot_id, src, err);
            f = rc == CTARGET_OK ? fopen(mark, "we") : NULL;
            if (rc == CTARGET_OK && (!f || fputs(run->snapshot_id, f) < 0)) {
                h->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", mark);
                rc = CTARGET_E_IO;
            }
            if (f && fclose(f) != 0 && rc == CTARGET_OK) {
                h->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s", mark);
                rc = CTARGET_E_IO;
            }
        }
    }
    if (rc == CTARGET_OK && run->handle)
        h->obj_set_str(run->handle, "run_dir", rd);
    free(rd);
    free(src);
    free(mark);
    return rc;
}

ctarget_status sl_local_read(ctarget_target *t, const ctarget_run_info *run,
                             ctarget_stream stream, uint64_t offset, ctarget_write_fn out,
                             void *out_arg, ctarget_error *err)
{
    char *rd = sl_local_run_dir(t, run->id);
    char *p = NULL;
    if (!rd || asprintf(&p, "%s/%s", rd,
                        stream == CTARGET_STREAM_METRICS ? "metrics.jsonl" : "std_log.txt") < 0) {
        free(rd);
        SL_H->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    free(rd);
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    free(p);
    if (fd < 0)
        return CTARGET_OK; /* nothing written yet */
    /* at most 4 MB per call (the core reads again from where this ends) */
    rv_buf b = {0};
    char tmp[65536];
    while (b.len < (4u << 20)) {
        ssize_t n = pread(fd, tmp, sizeof tmp, (off_t)(offset + b.len));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || rv_buf_add(&b, tmp, (size_t)n))
            break;
    }
    close(fd);
    size_t give = b.len;
    if (stream == CTARGET_STREAM_METRICS) /* whole lines only; the rest comes next time */
        while (give && b.data[give - 1] != '\n')
            give--;
    ctarget_status rc = CTARGET_OK;
    if (give && out(out_arg, b.data, give) != 0) {
        SL_H->error_set(err, CTARGET_E_CANCELED, 0, 0, "stopped by the reader");
        rc = CTARGET_E_CANCELED;
    }
    rv_buf_free(&b);
    return rc;
}

/* copy directory sfd/name into dfd/name: directories and regular files, links skipped */
static int copy_tree(int sfd, int dfd, const char *name)
{
    int s = openat(sfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (s < 0)
        return errno == ENOENT || errno == ELOOP ? 0 : -1;
    struct stat st;
    if (fstat(s, &st) != 0) {
        close(s);
        return -1;
    }
    int rc = 0;
    if (S_ISDIR(st.st_mode)) {
        if (mkdirat(dfd, name, 0755) != 0 && errno != EEXIST) {
            close(s);
            return -1;
        }
        int d = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        DIR *dir = d >= 0 ? fdopendir(dup(s)) : NULL;
        if (!dir) {
            if (d >= 0)
                close(d);
            close(s);
            return -1;
        }
        struct dirent *e;
        while (rc == 0 && (e = readdir(dir)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                rc = copy_tree(s, d, e->d_name);
        closedir(dir);
        close(d);
    } else if (S_ISREG(st.st_mode)) {
        int o = openat(dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                       (st.st_mode & 0777) | 0600);
        if (o < 0) {
            close(s);
            return -1;
        }
        char buf[65536];
        ssize_t n;
        while (rc == 0 && (n = read(s, buf, sizeof buf)) != 0) {
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                rc = -1;
                break;
            }
            for (ssize_t w = 0; w < n && rc == 0;) {
                ssize_t k = write(o, buf + w, (size_t)(n - w));
                if (k < 0 && errno == EINTR)
                    continue;
                if (k <= 0)
                    rc = -1;
                else
                    w += k;
            }
        }
        if (close(o) != 0)
            rc = -1;
    }
    close(s);
    return rc;
}

ctarget_status sl_local_outputs(ctarget_target *t, const ctarget_run_info *run,
                                const char *dest_dir, ctarget_error *err)
{
    char *rd = sl_local_run_dir(t, run->id);
    char *src = NULL;
    if (!rd || asprintf(&src, "%s/src", rd) < 0) {
        free(rd);
        SL_H->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    free(rd);
    int sfd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int dfd = open(dest_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ctarget_status rc = CTARGET_OK;
    if (dfd < 0) {
        SL_H->error_set(err, CTARGET_E_IO, 0, errno, "cannot open %s: %s", dest_dir,
                        strerror(errno));
        rc = CTARGET_E_IO;
    } else if (sfd >= 0 && (copy_tree(sfd, dfd, "outputs") || copy_tree(sfd, dfd, "logs"))) {
        SL_H->error_set(err, CTARGET_E_IO, 0, errno, "cannot copy the outputs of run %s from "
                        "%s: %s", run->id, src, strerror(errno));
        rc = CTARGET_E_IO;
    }
    if (sfd >= 0)
        close(sfd);
    if (dfd >= 0)
        close(dfd);
    free(src);
    return rc;
}

ctarget_status sl_local_cleanup(ctarget_target *t, const ctarget_run_info *run,
                                ctarget_error *err)
{
    (void)err;
    char *rd = sl_local_run_dir(t, run->id);
    char *src = NULL, *mark = NULL;
    if (rd && asprintf(&src, "%s/src", rd) >= 0 && asprintf(&mark, "%s/src.snapshot", rd) >= 0) {
        unlink(mark);
        rm_rf(src);
    }
    free(rd);
    free(src);
    free(mark);
    return CTARGET_OK;
}

int sl_local_exit_file(ctarget_target *t, const char *run_id, char *buf, size_t len)
{
    char *rd = sl_local_run_dir(t, run_id);
    char *p = NULL;
    if (!rd || asprintf(&p, "%s/slurm_exit", rd) < 0) {
        free(rd);
        return -1;
    }
    free(rd);
    FILE *f = fopen(p, "re");
    free(p);
    if (!f)
        return -1;
    int ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    return ok ? 0 : -1;
}

/* ---- environments: remotevm's agent as a local process ------------------------------------ */

static char *local_root(ctarget_target *t)
{
    const char *root = SL_H->config_get0(t, "remote_root");
    if (!root || !*root)
        root = "~/.ctarget";
    const char *home = "";
    if (!strncmp(root, "~/", 2)) {
        home = getenv("HOME");
        if (!home || !*home)
            home = "/";
        root++;
    }
    char *p = NULL;
    return asprintf(&p, "%s%s", home, root) < 0 ? NULL : p;
}

/* <root>/bin/ctarget_agent_<hash>.py, written once per agent version (tmp + rename) */
static char *install_agent(const char *root, ctarget_error *err)
{
    char *bin = NULL, *path = NULL, *tmp = NULL;
    if (asprintf(&bin, "%s/bin", root) < 0 ||
        asprintf(&path, "%s/ctarget_agent_%s.py", bin, rv_agent_version()) < 0 ||
        asprintf(&tmp, "%s.tmp%d", path, (int)getpid()) < 0) {
        free(bin);
        free(path);
        SL_H->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return NULL;
    }
    if (access(path, R_OK) != 0) {
        const char *src = rv_agent_source();
        FILE *f = mkdirs(bin, 0700) == 0 ? fopen(tmp, "we") : NULL;
        int bad = !f || fputs(src, f) < 0;
        if (f)
            bad |= fclose(f) != 0;
        if (bad || rename(tmp, path) != 0) {
            SL_H->error_set(err, CTARGET_E_IO, 0, errno, "cannot install ctarget's agent as "
                            "%s: %s", path, strerror(errno));
            remove(tmp);
            free(path);
            path = NULL;
        }
    }
    free(bin);
    free(tmp);
    return path;
}

ctarget_status sl_local_env(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                            const char *python, ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    rv_buf text = {0};
    FILE *f = run->env_file ? fopen(run->env_file, "re") : NULL;
    if (!f) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot read the environment file %s",
                     run->env_file ? run->env_file : "(none given)");
        return CTARGET_E_IO;
    }
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        rv_buf_add(&text, buf, n);
    fclose(f);
    char *root = local_root(t);
    char *agent = root ? install_agent(root, err) : NULL;
    if (!agent) {
        free(root);
        rv_buf_free(&text);
        return root ? err->code : CTARGET_E_NOMEM;
    }
    h->progress(c, "building the environment", 0, 0);
    const char *argv[] = {"python3", "-S", agent, root, rv_agent_version(), "env", run->id,
                          run->env_kind == CTARGET_ENV_PIP ? "pip" : "conda",
                          run->env_hash ? run->env_hash : "nohash", python, NULL};
    sl_out o;
    ctarget_status rc = sl_cmd(c, t, argv, NULL, text.data ? text.data : "", text.len, &o, err);
    rv_buf_free(&text);
    if (rc == CTARGET_OK && o.status != 0) {
        char line[600];
        sl_first_line(o.err, line, sizeof line);
        h->error_set(err, CTARGET_E_FAILED, 0, 0, "%s", line[0] ? line : "the agent failed");
        rc = CTARGET_E_FAILED;
    }
    /* {"python": "<root>/envs/<hash>/bin/python"} */
    const char *key = "\"python\": \"";
    const char *p = rc == CTARGET_OK && o.out.data ? strstr(o.out.data, key) : NULL;
    if (rc == CTARGET_OK) {
        char py[4096] = "";
        if (p) {
            p += strlen(key);
            size_t k = strcspn(p, "\"\\");
            if (k < sizeof py && p[k] == '"') {
                memcpy(py, p, k);
                py[k] = '\0';
            }
        }
        if (!py[0]) {
            h->error_set(err, CTARGET_E_FAILED, 0, 0, "the agent built no environment");
            rc = CTARGET_E_FAILED;
        } else if (run->handle) {
            h->obj_set_str(run->handle, "python", py);
        }
    }
    sl_out_free(&o);
    free(agent);
    free(root);
    return rc;
}
