/* Running the Slurm commands, locally or on the login node, one way for both.
 *
 * Locally: fork and exec, no shell, so no word is ever interpreted.  On a login node: one
 * exec channel on the target's cached SSH connection (remotevm's ssh.c: host key checked
 * before any authentication), the command line built from the same argv with every word
 * single-quoted, so it arrives byte for byte.  Standard input carries what is too long or
 * too sensitive for a command line (the batch script). */
#include "config.h"

#include "slurm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

void sl_out_free(sl_out *o)
{
    rv_buf_free(&o->out);
}

int sl_quote(rv_buf *b, const char *s)
{
    int bad = rv_buf_add(b, "'", 1);
    for (; *s && !bad; s++)
        bad = *s == '\'' ? rv_buf_adds(b, "'\\''") : rv_buf_add(b, s, 1);
    return bad || rv_buf_add(b, "'", 1);
}

void sl_first_line(const char *s, char *dst, size_t len)
{
    while (*s == '\n' || *s == ' ')
        s++;
    size_t n = strcspn(s, "\n");
    while (n && (s[n - 1] == '\r' || s[n - 1] == ' '))
        n--;
    if (n >= len)
        n = len - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

const char *sl_where(ctarget_target *t, char *buf, size_t len)
{
    if (!sl_remote(t))
        return "this machine";
    const char *u = SL_H->config_get0(t, "username");
    const char *p = SL_H->config_get0(t, "ssh_port");
    snprintf(buf, len, "%s@%s:%s", u ? u : "?", SL_H->config_get0(t, "address"), p ? p : "22");
    return buf;
}

/* ---- local ------------------------------------------------------------------------------- */

/* slurm_bin_dir applies to Slurm's own commands */
static int slurm_command(const char *p)
{
    static const char *const names[] = {"sbatch", "squeue", "scontrol", "sacct", "scancel",
                                        "sinfo", "srun"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(p, names[i]))
            return 1;
    return 0;
}

static char *local_path(ctarget_target *t, const char *prog)
{
    const char *dir = SL_H->config_get0(t, "slurm_bin_dir");
    if (!dir || !*dir || !slurm_command(prog))
        return strdup(prog);
    size_t n = strlen(dir) + strlen(prog) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, prog);
    return p;
}

static char *expand_home(const char *dir)
{
    if (strncmp(dir, "~/", 2) && strcmp(dir, "~"))
        return strdup(dir);
    const char *home = getenv("HOME");
    if (!home || !*home)
        home = "/";
    size_t n = strlen(home) + strlen(dir) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s%s", home, dir + 1);
    return p;
}

static ctarget_status local_cmd(ctarget_call *c, ctarget_target *t, const char *const *argv,
                                const char *cwd, const void *in, size_t in_len, sl_out *o,
                                ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    char *prog = local_path(t, argv[0]);
    char *dir = cwd ? expand_home(cwd) : NULL;
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, pex[2] = {-1, -1};
    if (!prog || (cwd && !dir) || pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) ||
        pipe2(perr, O_CLOEXEC) || pipe2(pex, O_CLOEXEC)) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (pin[i] >= 0) close(pin[i]);
            if (pout[i] >= 0) close(pout[i]);
            if (perr[i] >= 0) close(perr[i]);
            if (pex[i] >= 0) close(pex[i]);
        }
        free(prog);
        free(dir);
        h->error_set(err, CTARGET_E_IO, 0, e, "cannot run %s: %s", argv[0], strerror(e));
        return CTARGET_E_IO;
    }
    pid_t pid = fork();
    if (pid == 0) {
        /* the child: stdin/stdout/stderr onto the pipes; exec errors go back through pex */
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        signal(SIGPIPE, SIG_DFL);
        int e = 0;
        if (dir && chdir(dir) != 0)
            e = errno ? errno : EIO;
        if (!e) {
            if (strchr(prog, '/'))
                execv(prog, (char *const *)argv);
            else
                execvp(prog, (char *const *)argv);
            e = errno;
        }
        char tag = dir && e && access(dir, X_OK) != 0 ? 'd' : 'x';
        char msg[8] = {tag, (char)(e & 0x7f), (char)((e >> 7) & 0x7f)};
        if (write(pex[1], msg, 3) < 0)
            _exit(127);
        _exit(127);
    }
    int fork_errno = errno;
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    close(pex[1]);
    if (pid < 0) {
        close(pin[1]);
        close(pout[0]);
        close(perr[0]);
        close(pex[0]);
        free(prog);
        free(dir);
        h->error_set(err, CTARGET_E_IO, 0, fork_errno, "cannot start %s: %s", argv[0],
                     strerror(fork_errno));
        return CTARGET_E_IO;
    }
    fcntl(pin[1], F_SETFL, O_NONBLOCK);
    size_t sent = 0, elen = 0;
    if (!in_len) {
        close(pin[1]);
        pin[1] = -1;
    }
    int open_out = 1, open_err = 1;
    char buf[16384];
    while (open_out || open_err) {
        struct pollfd pf[3];
        int n = 0, io = -1, ie = -1, ii = -1;
        if (open_out) pf[io = n++] = (struct pollfd){.fd = pout[0], .events = POLLIN};
        if (open_err) pf[ie = n++] = (struct pollfd){.fd = perr[0], .events = POLLIN};
        if (pin[1] >= 0) pf[ii = n++] = (struct pollfd){.fd = pin[1], .events = POLLOUT};
        if (poll(pf, (nfds_t)n, 1000) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (ii >= 0 && pf[ii].revents) {
            ssize_t w = write(pin[1], (const char *)in + sent, in_len - sent);
            if (w > 0)
                sent += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || sent == in_len) {
                close(pin[1]);
                pin[1] = -1;
            }
        }
        if (io >= 0 && pf[io].revents) {
            ssize_t r = read(pout[0], buf, sizeof buf);
            if (r > 0)
                rv_buf_add(&o->out, buf, (size_t)r);
            else if (r == 0 || (errno != EINTR && errno != EAGAIN))
                open_out = 0;
        }
        if (ie >= 0 && pf[ie].revents) {
            ssize_t r = read(perr[0], buf, sizeof buf);
            if (r > 0) {
                size_t k = (size_t)r < sizeof o->err - 1 - elen ? (size_t)r
                                                               : sizeof o->err - 1 - elen;
                memcpy(o->err + elen, buf, k);
                elen += k;
                o->err[elen] = '\0';
            } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                open_err = 0;
            }
        }
        if (h->cancelled && h->cancelled(c)) {
            kill(pid, SIGTERM);
            break;
        }
    }
    if (pin[1] >= 0)
        close(pin[1]);
    close(pout[0]);
    close(perr[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    char msg[3];
    ssize_t got = read(pex[0], msg, sizeof msg);
    close(pex[0]);
    o->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    ctarget_status rc = CTARGET_OK;
    if (got == 3) {
        int e = msg[1] | (msg[2] << 7);
        if (msg[0] == 'd') {
            h->error_set(err, CTARGET_E_IO, 0, e, "cannot enter %s: %s", dir, strerror(e));
            rc = CTARGET_E_IO;
        } else if (e == ENOENT) {
            const char *bin = h->config_get0(t, "slurm_bin_dir");
            if (bin && *bin)
                h->error_set(err, CTARGET_E_NOT_FOUND, 0, e,
                             "%s not found in %s (slurm_bin_dir): set slurm_bin_dir to the "
                             "directory holding Slurm's commands", argv[0], bin);
            else
                h->error_set(err, CTARGET_E_NOT_FOUND, 0, e,
                             "%s not found on PATH: install Slurm's commands (Debian: "
                             "slurm-client), set slurm_bin_dir, or attach through a login "
                             "node with --set address=HOST", argv[0]);
            rc = CTARGET_E_NOT_FOUND;
        } else {
            h->error_set(err, CTARGET_E_IO, 0, e, "cannot run %s: %s", prog, strerror(e));
            rc = CTARGET_E_IO;
        }
    }
    free(prog);
    free(dir);
    return rc;
}

/* ---- over SSH ------------------------------------------------------------------------------ */

static ctarget_status ssh_cmd(ctarget_call *c, ctarget_target *t, const char *const *argv,
                              const char *cwd, const void *in, size_t in_len, sl_out *o,
                              ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    rv_buf line = {0};
    /* the login shell finds the commands on its PATH, unless slurm_bin_dir says where; 127
     * from the shell means "not found" */
    if (cwd) {
        char *q = rv_shell_quote(cwd); /* "~/x" becomes "$HOME"/'x' */
        rv_buf_adds(&line, "cd ");
        rv_buf_adds(&line, q ? q : "''");
        rv_buf_adds(&line, " && ");
        free(q);
    }
    rv_buf_adds(&line, "exec ");
    const char *bin = h->config_get0(t, "slurm_bin_dir");
    for (size_t i = 0; argv[i]; i++) {
        if (i)
            rv_buf_add(&line, " ", 1);
        if (!i && bin && *bin && slurm_command(argv[0])) {
            rv_buf b = {0};
            rv_buf_adds(&b, bin);
            rv_buf_adds(&b, "/");
            rv_buf_adds(&b, argv[0]);
            rv_buf_add(&b, "", 1);
            sl_quote(&line, b.data);
            rv_buf_free(&b);
        } else {
            sl_quote(&line, argv[i]);
        }
    }
    rv_buf_add(&line, "", 1);
    ctarget_status rc = CTARGET_OK;
    for (int attempt = 0; attempt < 2; attempt++) {
        rv_conn *cn = NULL;
        rc = rv_conn_get(h, c, t, &cn, err);
        if (rc != CTARGET_OK)
            break;
        rv_exec *ex = NULL;
        o->out.len = 0;
        rc = rv_exec_open(cn, c, line.data, rv_buf_write, &o->out, &ex, err);
        if (rc == CTARGET_OK && in_len)
            rc = rv_exec_write(ex, in, in_len, err);
        if (rc == CTARGET_OK) {
            char tail[sizeof o->err];
            tail[0] = '\0';
            rc = rv_exec_finish(ex, &o->status, tail, sizeof tail, err);
            snprintf(o->err, sizeof o->err, "%s", tail);
            if (o->status < 0)
                o->status = 128 + SIGKILL;
        } else if (ex) {
            rv_exec_abort(ex);
        }
        /* a channel that broke on a connection the server dropped: once more on a new one;
         * never sbatch, which may have submitted the job before the connection broke (the
         * run's next submit finds that job by its name instead of starting another) */
        if (rc == CTARGET_OK || !err->transient || !strcmp(argv[0], "sbatch"))
            break;
        rv_conn_drop(h, t);
    }
    rv_buf_free(&line);
    if (rc == CTARGET_OK && o->status == 127) {
        char where[256];
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "%s not found on %s (the login shell's PATH%s%s): install Slurm's "
                     "commands there or set slurm_bin_dir", argv[0], sl_where(t, where,
                     sizeof where), bin && *bin ? ", slurm_bin_dir " : "", bin ? bin : "");
        return CTARGET_E_NOT_FOUND;
    }
    return rc;
}

ctarget_status sl_cmd(ctarget_call *c, ctarget_target *t, const char *const *argv,
                      const char *cwd, const void *in, size_t in_len, sl_out *o,
                      ctarget_error *err)
{
    memset(o, 0, sizeof *o);
    return sl_remote(t) ? ssh_cmd(c, t, argv, cwd, in, in_len, o, err)
                        : local_cmd(c, t, argv, cwd, in, in_len, o, err);
}
