/* The remote agent: agent.py, compiled into the plugin (agent_py.h is generated from it) and
 * installed on the VM as <remote_root>/bin/ctarget_agent_<hash>.py the first time a command
 * finds it missing.  The hash names the version, so plugins of different versions sharing a
 * VM never run each other's agent.
 *
 * Every call is `python3 -S -c BOOT ROOT HASH VERB ARGS...`: BOOT finds the installed agent
 * (exit 99 when absent) and imports it, so Python keeps its bytecode in bin/__pycache__ (no
 * 20 ms compile per start); -S skips site packages the agent does not use (their .pth hooks
 * cost 40 ms here), and bin/ replaces the working directory on sys.path, so no file in the
 * login directory can stand in for a standard module.  All words on that command line are
 * quoted; user data (arguments, environment values, paths) never goes there, it goes on
 * standard input. */
#include "config.h"

#include "remotevm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "agent_py.h"

#define AGENT_MISSING 99

static const char BOOT[] =
    "import os,sys;r=os.path.expanduser(sys.argv[1]);d=r+\"/bin\";"
    "m=\"ctarget_agent_\"+sys.argv[2];f=d+\"/\"+m+\".py\";"
    "os.path.exists(f) or sys.exit(99);sys.argv=[f,r]+sys.argv[2:];"
    "sys.path=[d]+[p for p in sys.path if p];sys.exit(__import__(m).main())";

static const char INSTALL[] =
    "import os,sys;r=os.path.expanduser(sys.argv[1]);d=r+\"/bin\";"
    "os.makedirs(d,0o700,exist_ok=True);os.chmod(r,0o700);"
    "f=d+\"/ctarget_agent_\"+sys.argv[2]+\".py\";t=f+\".tmp%d\"%os.getpid();"
    "o=open(t,\"wb\");o.write(sys.stdin.buffer.read());o.close();os.rename(t,f)";

static const char *agent_hash(void)
{
    static char hex[17];
    if (!*hex) {
        uint64_t h = 1469598103934665603ULL; /* FNV-1a: names a version, not a security check */
        for (const unsigned char *p = (const unsigned char *)rv_agent_src; *p; p++) {
            h ^= *p;
            h *= 1099511628211ULL;
        }
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    }
    return hex;
}

const char *rv_agent_source(void)
{
    return (const char *)rv_agent_src;
}

const char *rv_agent_version(void)
{
    return agent_hash();
}

/* The interpreter that runs the agent: python3 as the login shell finds it, or the absolute
 * path `facts` reported (kept in the target's state directory). */
static char *python_file(const ctarget_host *h, const ctarget_target *t)
{
    const char *dir = h->target_state_dir0 ? h->target_state_dir0(t) : NULL;
    if (!dir)
        return NULL;
    size_t n = strlen(dir) + 16;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/python3", dir);
    return p;
}

void rv_remember_python(const ctarget_host *h, const ctarget_target *t, const char *path)
{
    char *f = python_file(h, t);
    if (!f)
        return;
    if (path && path[0] == '/' && !strchr(path, '\n')) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", f);
        FILE *o = fopen(tmp, "we");
        if (o) {
            int bad = fputs(path, o) < 0;
            bad |= fclose(o) != 0;
            if (bad || rename(tmp, f) != 0)
                remove(tmp);
        }
    } else {
        remove(f);
    }
    free(f);
}

static char *python_of(const ctarget_host *h, const ctarget_target *t)
{
    char *f = python_file(h, t);
    char line[4096] = "";
    FILE *i = f ? fopen(f, "re") : NULL;
    if (i) {
        if (!fgets(line, sizeof line, i))
            line[0] = '\0';
        fclose(i);
    }
    free(f);
    return line[0] == '/' ? rv_shell_quote(line) : strdup("python3");
}

static char *command(const ctarget_host *h, const ctarget_target *t, const char *code,
                     const char *verb, const char *const *args)
{
    const char *root = h->config_get0(t, "remote_root");
    if (!root || !*root)
        root = "~/.ctarget";
    rv_buf b = {0};
    char *q = rv_shell_quote(code);
    char *py = python_of(h, t);
    rv_buf_adds(&b, "exec ");
    rv_buf_adds(&b, py ? py : "python3");
    rv_buf_adds(&b, " -S -c ");
    free(py);
    rv_buf_adds(&b, q);
    free(q);
    rv_buf_adds(&b, " ");
    q = rv_shell_quote(root);
    rv_buf_adds(&b, q);
    free(q);
    rv_buf_adds(&b, " ");
    rv_buf_adds(&b, agent_hash());
    if (verb) {
        rv_buf_adds(&b, " ");
        q = rv_shell_quote(verb);
        rv_buf_adds(&b, q);
        free(q);
    }
    for (size_t i = 0; args && args[i]; i++) {
        q = rv_shell_quote(args[i]);
        rv_buf_adds(&b, " ");
        rv_buf_adds(&b, q);
        free(q);
    }
    return b.data;
}

static ctarget_status run_once(const ctarget_host *h, ctarget_call *c, rv_conn *cn,
                               const char *cmd, rv_producer produce, void *parg,
                               const void *in, size_t in_len, ctarget_write_fn sink,
                               void *sink_arg, int *status, char *tail, size_t tail_len,
                               ctarget_error *err)
{
    rv_exec *ex = NULL;
    ctarget_status rc = rv_exec_open(cn, c, cmd, sink, sink_arg, &ex, err);
    if (rc != CTARGET_OK)
        return rc;
    if (produce)
        rc = produce(parg, ex, err);
    else if (in && in_len)
        rc = rv_exec_write(ex, in, in_len, err);
    if (rc != CTARGET_OK) {
        /* the command may have failed first: its message says more than "stopped reading" */
        if (rc == CTARGET_E_REMOTE &&
            rv_exec_finish(ex, status, tail, tail_len, err) == CTARGET_OK && *status != 0)
            return CTARGET_OK;
        if (rc == CTARGET_E_REMOTE)
            return rc;
        rv_exec_abort(ex);
        return rc;
    }
    (void)h;
    return rv_exec_finish(ex, status, tail, tail_len, err);
}

static int buf_sink(void *arg, const void *data, size_t len);

/* One verb over the connection's `serve` channel (opened on first use): no new process on the
 * machine per call.  On the channel's end before an answer, *status gets its exit status (99:
 * the agent is not installed). */
static ctarget_status serve_once(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                                 rv_conn *cn, const char *verb, const char *const *args,
                                 rv_producer produce, void *parg, const void *in,
                                 size_t in_len, rv_buf *out, int *status, char *tail,
                                 size_t tail_len, ctarget_error *err)
{
    rv_exec **slot = rv_conn_serve(cn);
    rv_buf *sb = rv_conn_serve_buf(cn);
    ctarget_status rc;
    if (!*slot) {
        char *cmd = command(h, t, BOOT, "serve", NULL);
        sb->len = 0;
        rc = rv_exec_open(cn, c, cmd, rv_buf_write, sb, slot, err);
        free(cmd);
        if (rc != CTARGET_OK)
            return rc;
    }
    rv_exec *ex = *slot;
    rv_exec_set_call(ex, c);
    json_t *a = json_array();
    for (size_t i = 0; args && args[i]; i++) {
        json_t *s = json_string(args[i]);
        if (!s) {
            json_decref(a);
            h->error_set(err, CTARGET_E_CONFIG, 0, 0, "'%s' is not valid UTF-8", args[i]);
            return CTARGET_E_CONFIG;
        }
        json_array_append_new(a, s);
    }
    json_t *req = json_pack("{s:s, s:o, s:I}", "verb", verb, "args", a, "len",
                            produce ? (json_int_t)-1 : (json_int_t)in_len);
    char *line = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    rc = rv_exec_write(ex, line, strlen(line), err);
    free(line);
    if (rc == CTARGET_OK)
        rc = rv_exec_write(ex, "\n", 1, err);
    if (rc == CTARGET_OK && produce) {
        rv_exec_set_framed(ex, 1);
        rc = produce(parg, ex, err);
        rv_exec_set_framed(ex, 0);
        if (rc == CTARGET_OK)
            rc = rv_exec_write(ex, "0\n", 2, err);
        /* a stream that stopped half way leaves the agent waiting for the rest: closing
         * the channel ends it (the blobs already stored stay valid) */
    } else if (rc == CTARGET_OK && in_len) {
        rc = rv_exec_write(ex, in, in_len, err);
    }
    while (rc == CTARGET_OK) {
        int got = rv_answer_take(sb, out, status, tail, tail_len);
        if (got < 0) {
            h->error_set(err, CTARGET_E_REMOTE, 1, 0, "the agent's answer is damaged");
            rc = CTARGET_E_REMOTE;
            break;
        }
        if (got > 0)
            return CTARGET_OK;
        int eof = 0;
        rc = rv_exec_pump(ex, &eof, err);
        if (rc == CTARGET_OK && eof) {
            *slot = NULL;
            rc = rv_exec_finish(ex, status, tail, tail_len, err);
            if (rc == CTARGET_OK && *status == 0) {
                h->error_set(err, CTARGET_E_REMOTE, 1, 0, "the agent ended without answering");
                rc = CTARGET_E_REMOTE;
            }
            return rc;
        }
    }
    /* the channel is unusable now */
    if (*slot) {
        rv_exec_abort(*slot);
        *slot = NULL;
    }
    return rc;
}

ctarget_status rv_agent_call(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                             const char *verb, const char *const *args, rv_producer produce,
                             void *parg, const void *in, size_t in_len, ctarget_write_fn sink,
                             void *sink_arg, int *exit_status, ctarget_error *err)
{
    char tail[1024] = "";
    int status = 0;
    ctarget_status rc = CTARGET_OK;
    char *cmd = command(h, t, BOOT, verb, args);
    int installed = 0, retried = 0, forgot = 0;
    char first[CTARGET_ERROR_MSG_MAX] = "";
    int64_t t0 = h->monotonic_ns();
    for (;;) {
        rv_conn *cn = NULL;
        rc = rv_conn_get(h, c, t, &cn, err);
        if (rc != CTARGET_OK)
            break;
        if (sink)
            sink(sink_arg, NULL, 0); /* (re)start: forget what an earlier attempt delivered */
        if (!sink || sink == buf_sink)
            rc = serve_once(h, c, t, cn, verb, args, produce, parg, in, in_len, sink_arg,
                            &status, tail, sizeof tail, err);
        else
            rc = run_once(h, c, cn, cmd, produce, parg, in, in_len, sink, sink_arg, &status,
                          tail, sizeof tail, err);
        if (rc != CTARGET_OK) {
            /* one more try on a fresh connection when the old one dropped (every verb is
             * idempotent); rv_conn_get backs off while the server comes back */
            if (err->transient && !retried) {
                retried = 1;
                snprintf(first, sizeof first, "%s", err->message);
                rv_conn_drop(h, t);
                continue;
            }
            if (retried && *first) {
                /* say what was lost, then why it could not be had again */
                char again[CTARGET_ERROR_MSG_MAX];
                snprintf(again, sizeof again, "%s", err->message);
                h->error_set(err, err->code, err->transient, err->sys_errno,
                             "%.500s; reconnecting failed: %.450s", first, again);
            }
            break;
        }
        if (status == AGENT_MISSING && !installed) {
            installed = 1;
            char *ic = command(h, t, INSTALL, NULL, NULL);
            int is = 0;
            char itail[1024] = "";
            rc = run_once(h, c, cn, ic, NULL, NULL, rv_agent_src, strlen(rv_agent_src), NULL,
                          NULL, &is, itail, sizeof itail, err);
            free(ic);
            if (rc == CTARGET_OK && is != 0) {
                h->error_set(err, is == 127 ? CTARGET_E_UNSUPPORTED : CTARGET_E_REMOTE, 0, 0,
                             is == 127 ? "%s: python3 is not installed; ctarget's remote "
                                         "agent needs it (sudo apt-get install python3)"
                                       : "%s: cannot install ctarget's agent under "
                                         "remote_root: %s",
                             rv_conn_where(cn), itail);
                rc = err->code;
            }
            if (rc != CTARGET_OK)
                break;
            continue;
        }
        if (status == 127 && !forgot) {
            /* the remembered interpreter is gone (upgraded?): ask the login shell again */
            forgot = 1;
            rv_remember_python(h, t, NULL);
            free(cmd);
            cmd = command(h, t, BOOT, verb, args);
            if (*rv_conn_serve(cn)) {
                rv_exec_abort(*rv_conn_serve(cn));
                *rv_conn_serve(cn) = NULL;
            }
            continue;
        }
        if (exit_status)
            *exit_status = status;
        h->log(c, CTARGET_LOG_DEBUG, "agent %s: exit %d after %lld ms", verb, status,
               (long long)((h->monotonic_ns() - t0) / 1000000));
        if (status != 0) {
            const char *m = tail;
            if (!strncmp(m, "ctarget-agent: ", 15))
                m += 15;
            ctarget_status code = status == 127 ? CTARGET_E_UNSUPPORTED
                                  : status == 6 ? CTARGET_E_NOT_FOUND
                                  : status == 5 ? CTARGET_E_UNSUPPORTED
                                                : CTARGET_E_REMOTE;
            if (status == 127)
                h->error_set(err, code, 0, 0,
                             "%s: python3 is not installed; ctarget's remote agent needs it "
                             "(sudo apt-get install python3)", rv_conn_where(cn));
            else
                h->error_set(err, code, 0, 0, "%s: %s", rv_conn_where(cn),
                             *m ? m : status < 0 ? "the agent was killed by a signal"
                                                 : "the agent failed with no message");
            err->sys_errno = 0;
            rc = code;
        }
        break;
    }
    free(cmd);
    return rc;
}

static int buf_sink(void *arg, const void *data, size_t len)
{
    rv_buf *b = arg;
    if (!data) {
        b->len = 0;
        return 0;
    }
    return rv_buf_add(b, data, len);
}

ctarget_status rv_agent(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                        const char *verb, const char *const *args, const void *stdin_data,
                        size_t stdin_len, rv_buf *out, int *exit_status, ctarget_error *err)
{
    return rv_agent_call(h, c, t, verb, args, NULL, NULL, stdin_data, stdin_len,
                         out ? buf_sink : NULL, out, exit_status, err);
}

ctarget_status rv_agent_stream(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                               const char *verb, const char *const *args, rv_producer produce,
                               void *produce_arg, rv_buf *out, int *exit_status,
                               ctarget_error *err)
{
    return rv_agent_call(h, c, t, verb, args, produce, produce_arg, NULL, 0,
                         out ? buf_sink : NULL, out, exit_status, err);
}
