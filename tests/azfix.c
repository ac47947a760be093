/* The Azure emulators from C: see azfix.h and tests/emulators/README.md. */
#define _GNU_SOURCE
#include "azfix.h"

#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

#define AZ_SP_CLIENT_ID "00000000-0000-0000-0000-0000000000c1"
#define AZ_SP_SECRET "ctarget-test-secret-Zq8u3"
#define AZ_CERT_PW "ctarget-test-certpw"
#define AZ_MI_CLIENT_ID "00000000-0000-0000-0000-0000000000d1"

static azfix **fixtures;
static size_t n_fixtures;
static int registered;

static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static void stop_all(void)
{
    while (n_fixtures)
        azfix_stop(fixtures[n_fixtures - 1]);
    free(fixtures);
    fixtures = NULL;
    n_fixtures = 0;
}

const char *azfix_node_modules(void)
{
    static char found[4096];
    if (found[0])
        return found;
    const char *env = getenv("AZFIX_NODE_MODULES");
    char *cands[3] = {env && *env ? strdup(env) : NULL,
                      tl_path(tl_builddir(), "tests/emulators/node_modules"),
                      tl_path(tl_srcdir(), "tests/emulators/node_modules")};
    for (int i = 0; i < 3; i++) {
        if (!found[0] && cands[i]) {
            char *bin = tl_path(cands[i], ".bin/azurite-blob");
            if (access(bin, X_OK) == 0)
                snprintf(found, sizeof found, "%s", cands[i]);
            free(bin);
        }
        free(cands[i]);
    }
    return found[0] ? found : NULL;
}

/* Fork + exec argv with stdout and stderr appended to log; the child gets its own process
 * group so a test's ^C does not reach it before we stop it. */
static pid_t spawn(const char *const argv[], const char *log, const char *const env[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        int nul = open("/dev/null", O_RDONLY);
        if (fd < 0 || nul < 0)
            _exit(126);
        dup2(nul, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        setpgid(0, 0);
        /* a test that dies without its at-exit handlers (an abort, a sanitizer stop) must not
         * leave the emulator or Azurite running: they get TERM when the test goes away */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() == 1)
            _exit(125);
        for (size_t i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "azfix: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

static int alive(pid_t pid)
{
    int st;
    return pid > 0 && waitpid(pid, &st, WNOHANG) == 0;
}

static void stop_pid(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    long long until = tl_now_ms() + 5000;
    int st;
    while (waitpid(*pid, &st, WNOHANG) == 0) {
        if (tl_now_ms() > until) {
            kill(*pid, SIGKILL);
            waitpid(*pid, &st, 0);
            break;
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    *pid = 0;
}

static void dump_log(const char *dir, const char *name)
{
    char *p = tl_path(dir, name);
    char *t = tl_read_file(p);
    fprintf(stderr, "---- %s ----\n%s\n----\n", p, t ? t : "(none)");
    free(t);
    free(p);
}

/* Wait (bounded) for DIR/name to hold a positive number. */
static int wait_port_file(const char *dir, const char *name, pid_t pid, int timeout_ms)
{
    char *p = tl_path(dir, name);
    long long until = tl_now_ms() + timeout_ms;
    int port = 0;
    while (tl_now_ms() < until && alive(pid)) {
        char *t = tl_read_file(p);
        port = t ? atoi(t) : 0;
        free(t);
        if (port > 0)
            break;
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    free(p);
    return port;
}

/* Azurite says "... successfully listens on https://127.0.0.1:PORT" once ready. */
static int wait_azurite(const char *log, pid_t pid, int timeout_ms)
{
    long long until = tl_now_ms() + timeout_ms;
    while (tl_now_ms() < until && alive(pid)) {
        char *t = tl_read_file(log);
        const char *m = t ? strstr(t, "successfully listens on https://127.0.0.1:") : NULL;
        int port = m ? atoi(m + strlen("successfully listens on https://127.0.0.1:")) : 0;
        free(t);
        if (port > 0)
            return port;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static char *script(const char *name)
{
    char *rel = xasprintf("tests/emulators/%s", name);
    char *p = tl_path(tl_srcdir(), rel);
    free(rel);
    return p;
}

static void fill_env(azfix *fx)
{
    const char *nm = azfix_node_modules();
    char **e = calloc(24, sizeof *e);
    size_t n = 0;
    e[n++] = xasprintf("CTARGET_CA_BUNDLE=%s", fx->ca_bundle);
    e[n++] = xasprintf("NODE_EXTRA_CA_CERTS=%s", fx->ca_bundle);
    e[n++] = xasprintf("AZFIX_DIR=%s", fx->dir);
    e[n++] = xasprintf("AZFIX_ARM=%s", fx->arm);
    e[n++] = xasprintf("AZFIX_AAD=%s", fx->aad);
    e[n++] = xasprintf("AZFIX_IMDS=%s", fx->imds);
    e[n++] = xasprintf("AZFIX_BLOB=%s", fx->blob ? fx->blob : "");
    e[n++] = xasprintf("AZFIX_BLOB_PROXY=%s", fx->blob_proxy ? fx->blob_proxy : "");
    e[n++] = xasprintf("AZFIX_TENANT=%s", fx->tenant_id);
    e[n++] = xasprintf("AZFIX_CLIENT_ID=%s", fx->client_id);
    e[n++] = xasprintf("AZFIX_CLIENT_SECRET=%s", fx->client_secret);
    e[n++] = xasprintf("AZFIX_SUBSCRIPTION=%s", fx->subscription_id);
    e[n++] = xasprintf("AZFIX_RESOURCE_GROUP=%s", fx->resource_group);
    e[n++] = xasprintf("AZFIX_WORKSPACE=%s", fx->workspace_name);
    e[n++] = xasprintf("AZFIX_LOCATION=%s", fx->location);
    e[n++] = xasprintf("AZFIX_NODE_MODULES=%s", nm ? nm : "");
    e[n] = NULL;
    fx->env = e;
}

static int write_config(azfix *fx)
{
    char *j = xasprintf("{\n  \"subscription_id\": \"%s\",\n  \"resource_group\": \"%s\",\n"
                        "  \"workspace_name\": \"%s\"\n}\n",
                        fx->subscription_id, fx->resource_group, fx->workspace_name);
    fx->config_json = tl_path(fx->dir, "config.json");
    char *d = tl_path(fx->dir, ".azureml");
    mkdir(d, 0700);
    char *p2 = tl_path(d, "config.json");
    int rc = tl_write_file(fx->config_json, j) | tl_write_file(p2, j);
    free(p2);
    free(d);
    free(j);
    return rc;
}

int azfix_start(azfix *fx, const azfix_opts *opts)
{
    azfix_opts none = {0};
    if (!opts)
        opts = &none;
    memset(fx, 0, sizeof *fx);
    if (!registered) {
        atexit(stop_all); /* runs before testlib removes the directories */
        registered = 1;
    }
    fixtures = realloc(fixtures, (n_fixtures + 1) * sizeof *fixtures);
    fixtures[n_fixtures++] = fx;

    fx->dir = opts->dir ? strdup(opts->dir) : tl_tmpdir("azfix");
    mkdir(fx->dir, 0700);
    char *emu = script("azure_emulator.py");
    char *log = tl_path(fx->dir, "emulator.log");
    char *seed = NULL;
    char lro[32], phase[32];
    snprintf(lro, sizeof lro, "%d", opts->lro_ms > 0 ? opts->lro_ms : 300);
    snprintf(phase, sizeof phase, "%d", opts->job_phase_ms > 0 ? opts->job_phase_ms : 100);
    const char *argv[12] = {"python3", emu, "--dir", fx->dir, "--lro-ms", lro, "--job-phase-ms", phase};
    size_t ac = 8;
    if (opts->seed) {
        seed = tl_path(fx->dir, "seed.json");
        tl_write_file(seed, opts->seed);
        argv[ac++] = "--seed";
        argv[ac++] = seed;
    }
    argv[ac] = NULL;
    fx->emu_pid = spawn(argv, log, NULL);
    fx->running = 1;
    fx->port = wait_port_file(fx->dir, "port", fx->emu_pid, 30000);
    fx->imds_port = fx->port > 0 ? wait_port_file(fx->dir, "imds_port", fx->emu_pid, 5000) : 0;
    free(emu);
    free(seed);
    if (fx->port <= 0 || fx->imds_port <= 0) {
        fprintf(stderr, "azfix: the emulator did not start (bounded wait: 30 s)\n");
        dump_log(fx->dir, "emulator.log");
        free(log);
        azfix_stop(fx);
        return -1;
    }
    free(log);
    fx->ca_bundle = tl_path(fx->dir, "ca.pem");
    fx->arm = xasprintf("https://127.0.0.1:%d", fx->port);
    fx->aad = xasprintf("https://127.0.0.1:%d", fx->port);
    fx->imds = xasprintf("http://127.0.0.1:%d", fx->imds_port);
    fx->tenant_id = strdup("00000000-0000-0000-0000-0000000000aa");
    fx->client_id = strdup(AZ_SP_CLIENT_ID);
    fx->client_secret = strdup(AZ_SP_SECRET);
    fx->client_cert = tl_path(fx->dir, "sp-cert.pem");
    fx->client_cert_p = tl_path(fx->dir, "sp-cert-enc.pem");
    fx->client_cert_password = strdup(AZ_CERT_PW);
    fx->mi_client_id = strdup(AZ_MI_CLIENT_ID);
    fx->subscription_id = strdup("00000000-0000-0000-0000-000000000001");
    fx->resource_group = strdup("rg-ctarget");
    fx->workspace_name = strdup("ws-ctarget");
    fx->location = strdup("westeurope");
    if (opts->seed) { /* the seed may rename them: ask the emulator */
        json_t *st = azfix_admin(fx, "GET", "/_emulator/seed", NULL, NULL);
        const char *keys[] = {"tenant_id", "subscription_id", "resource_group", "workspace_name", "location"};
        char **dst[] = {&fx->tenant_id, &fx->subscription_id, &fx->resource_group, &fx->workspace_name,
                        &fx->location};
        for (size_t i = 0; st && i < 5; i++) {
            const char *v = json_string_value(json_object_get(st, keys[i]));
            if (v) {
                free(*dst[i]);
                *dst[i] = strdup(v);
            }
        }
        json_decref(st);
    }
    fx->workspace_id = xasprintf("/subscriptions/%s/resourceGroups/%s/providers/"
                                 "Microsoft.MachineLearningServices/workspaces/%s",
                                 fx->subscription_id, fx->resource_group, fx->workspace_name);

    if (!opts->no_azurite) {
        const char *nm = azfix_node_modules();
        if (!nm) {
            fprintf(stderr, "azfix: no node_modules with azurite (set AZFIX_NODE_MODULES, or run "
                            "`npm ci` in tests/emulators; see tests/emulators/README.md)\n");
            azfix_stop(fx);
            return -1;
        }
        char *bin = tl_path(nm, ".bin/azurite-blob");
        char *loc = tl_path(fx->dir, "azurite");
        char *alog = tl_path(fx->dir, "azurite.log");
        char *cert = tl_path(fx->dir, "server.pem");
        char *key = tl_path(fx->dir, "server.key");
        mkdir(loc, 0700);
        const char *aargv[] = {bin, "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", loc,
                               "--cert", cert, "--key", key, "--skipApiVersionCheck", "--loose",
                               "--silent", NULL};
        fx->azurite_pid = spawn(aargv, alog, NULL);
        fx->blob_port = wait_azurite(alog, fx->azurite_pid, 60000);
        free(bin);
        free(loc);
        free(cert);
        free(key);
        if (fx->blob_port <= 0) {
            fprintf(stderr, "azfix: Azurite did not start (bounded wait: 60 s)\n");
            dump_log(fx->dir, "azurite.log");
            free(alog);
            azfix_stop(fx);
            return -1;
        }
        free(alog);
        fx->blob = xasprintf("https://127.0.0.1:%d/devstoreaccount1", fx->blob_port);
        char *cfg = xasprintf("{\"blob_endpoint\":\"%s\"}", fx->blob);
        int rc = azfix_config(fx, cfg);
        free(cfg);
        /* the emulator's proxy in front of Azurite (faults and counts for blob traffic) */
        fx->blob_proxy_port = rc == 0 ? wait_port_file(fx->dir, "blob_port", fx->emu_pid, 5000) : 0;
        if (fx->blob_proxy_port <= 0) {
            fprintf(stderr, "azfix: the emulator did not take Azurite's endpoint\n");
            dump_log(fx->dir, "emulator.log");
            azfix_stop(fx);
            return -1;
        }
        fx->blob_proxy = xasprintf("https://127.0.0.1:%d/devstoreaccount1", fx->blob_proxy_port);
    }
    fill_env(fx);
    if (write_config(fx) != 0) {
        azfix_stop(fx);
        return -1;
    }
    return 0;
}

void azfix_stop(azfix *fx)
{
    /* a stopped fixture leaves the at-exit list: it may live in a test function's frame,
     * which is gone by the time stop_all runs */
    for (size_t i = 0; i < n_fixtures; i++)
        if (fixtures[i] == fx) {
            fixtures[i] = fixtures[--n_fixtures];
            break;
        }
    if (!fx->running)
        return;
    stop_pid(&fx->emu_pid);
    stop_pid(&fx->azurite_pid);
    fx->running = 0;
    free(fx->arm);
    free(fx->aad);
    free(fx->imds);
    free(fx->blob);
    free(fx->blob_proxy);
    free(fx->ca_bundle);
    free(fx->tenant_id);
    free(fx->client_id);
    free(fx->client_secret);
    free(fx->client_cert);
    free(fx->client_cert_p);
    free(fx->client_cert_password);
    free(fx->mi_client_id);
    free(fx->subscription_id);
    free(fx->resource_group);
    free(fx->workspace_name);
    free(fx->location);
    free(fx->workspace_id);
    free(fx->config_json);
    for (size_t i = 0; fx->env && fx->env[i]; i++)
        free(fx->env[i]);
    free(fx->env);
    char *dir = fx->dir;
    memset(fx, 0, sizeof *fx);
    fx->dir = dir; /* still names the directory (logs) for a failing test to print */
}

static tl_result emuctl(azfix *fx, const char *out, const char *method, const char *path, const char *body)
{
    char *ctl = script("emuctl.py");
    const char *argv[10] = {"python3", ctl, "--dir", fx->dir};
    size_t n = 4;
    if (out) {
        argv[n++] = "--out";
        argv[n++] = out;
    }
    argv[n++] = method;
    argv[n++] = path;
    if (body)
        argv[n++] = body;
    argv[n] = NULL;
    tl_result r = tl_exec(argv, NULL, NULL);
    free(ctl);
    return r;
}

json_t *azfix_admin(azfix *fx, const char *method, const char *path, const char *body, int *status)
{
    tl_result r = emuctl(fx, NULL, method, path, body);
    const char *h = r.err ? strstr(r.err, "HTTP ") : NULL;
    int st = h ? atoi(h + 5) : 0;
    if (status)
        *status = st;
    json_t *j = NULL;
    if (st > 0 && st < 400) {
        json_error_t e;
        j = r.out && *r.out ? json_loads(r.out, JSON_DECODE_ANY, &e) : json_null();
        if (!j)
            fprintf(stderr, "azfix: %s %s: unparsable answer: %.300s\n", method, path, r.out);
    } else {
        fprintf(stderr, "azfix: %s %s: %s %.500s\n", method, path, r.err ? r.err : "", r.out ? r.out : "");
    }
    tl_result_free(&r);
    return j;
}

int azfix_fault(azfix *fx, const char *json)
{
    json_t *j = azfix_admin(fx, "POST", "/_emulator/faults", json, NULL);
    int ok = j && json_is_object(j);
    json_decref(j);
    return ok ? 0 : -1;
}

json_t *azfix_requests(azfix *fx)
{
    json_t *j = azfix_admin(fx, "GET", "/_emulator/requests", NULL, NULL);
    if (j && !json_is_array(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

json_t *azfix_blob_requests(azfix *fx)
{
    json_t *j = azfix_admin(fx, "GET", "/_emulator/blob_requests", NULL, NULL);
    if (j && !json_is_array(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

int azfix_count(azfix *fx, const char *method, const char *path_regex)
{
    json_t *a = azfix_requests(fx);
    if (!a)
        return -1;
    regex_t rx;
    if (path_regex && regcomp(&rx, path_regex, REG_EXTENDED | REG_NOSUB) != 0) {
        json_decref(a);
        return -1;
    }
    int n = 0;
    size_t i;
    json_t *r;
    json_array_foreach(a, i, r) {
        const char *m = json_string_value(json_object_get(r, "method"));
        const char *p = json_string_value(json_object_get(r, "path"));
        if (method && (!m || strcmp(m, method)))
            continue;
        if (path_regex && (!p || regexec(&rx, p, 0, NULL, 0) != 0))
            continue;
        n++;
    }
    if (path_regex)
        regfree(&rx);
    json_decref(a);
    return n;
}

static int admin_ok(azfix *fx, const char *method, const char *path, const char *body)
{
    json_t *j = azfix_admin(fx, method, path, body, NULL);
    int ok = j != NULL;
    json_decref(j);
    return ok ? 0 : -1;
}

int azfix_reset(azfix *fx)
{
    return admin_ok(fx, "POST", "/_emulator/reset", NULL);
}

int azfix_config(azfix *fx, const char *json)
{
    return admin_ok(fx, "POST", "/_emulator/config", json);
}

json_t *azfix_state(azfix *fx)
{
    return azfix_admin(fx, "GET", "/_emulator/state", NULL, NULL);
}

char *azfix_blob_get(azfix *fx, const char *container, const char *name, size_t *len)
{
    char *path = xasprintf("/_emulator/blob/%s/%s", container, name);
    char *out = tl_path(fx->dir, "blob-get.tmp");
    tl_result r = emuctl(fx, out, "GET", path, NULL);
    int ok = r.status == 0;
    tl_result_free(&r);
    free(path);
    char *data = NULL;
    if (ok) {
        FILE *f = fopen(out, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            long n = ftell(f);
            fseek(f, 0, SEEK_SET);
            data = malloc((size_t)n + 1);
            if (fread(data, 1, (size_t)n, f) != (size_t)n) {
                free(data);
                data = NULL;
            } else {
                data[n] = '\0';
                if (len)
                    *len = (size_t)n;
            }
            fclose(f);
        }
    }
    unlink(out);
    free(out);
    return data;
}

int azfix_service_port(azfix *fx, const char *name)
{
    /* services start their planes before the emulator writes DIR/port, so the file is there */
    char *file = xasprintf("%s_port", name);
    char *p = tl_path(fx->dir, file);
    char *t = tl_read_file(p);
    int port = t ? atoi(t) : 0;
    free(t);
    free(p);
    free(file);
    return port > 0 ? port : -1;
}
