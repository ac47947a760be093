/* The host HTTP service (core/http.c) against a real server on 127.0.0.1
 * (tests/servers/httpd.py): retries, Retry-After, methods that must not be repeated, TLS
 * verification, timeouts, proxies from the environment. */
#define _GNU_SOURCE
#include "testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ctarget/ctarget.h>

#include "host.h"

typedef struct server {
    pid_t pid;
    int port;
    char *dir;
} server;

static server start_server(int tls)
{
    server s = {0};
    s.dir = tl_tmpdir("httpd");
    char *portfile = tl_path(s.dir, "port");
    char *script = tl_path(tl_srcdir(), "tests/servers/httpd.py");
    char *cert = tl_path(s.dir, "cert.pem"), *key = tl_path(s.dir, "key.pem");
    if (tls) {
        const char *gen[] = {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                             "-keyout", key, "-out", cert, "-days", "1", "-subj",
                             "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", NULL};
        tl_result r = tl_exec(gen, NULL, NULL);
        TL_ASSERT_EXIT(r, 0);
        tl_result_free(&r);
    }
    s.pid = fork();
    CU_ASSERT_FATAL(s.pid >= 0);
    if (s.pid == 0) {
        if (tls)
            execlp("python3", "python3", script, portfile, cert, key, (char *)NULL);
        else
            execlp("python3", "python3", script, portfile, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && !s.port; i++) { /* at most 10 s */
        char *p = tl_read_file(portfile);
        if (p)
            s.port = atoi(p);
        free(p);
        if (!s.port)
            usleep(50000);
    }
    CU_ASSERT_FATAL(s.port > 0);
    free(portfile), free(script), free(cert), free(key);
    return s;
}

static void stop_server(server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, NULL, 0);
    }
    free(s->dir);
}

typedef struct res {
    ctarget_status rc;
    ctarget_error err;
    ctarget_http_response *resp;
    long long ms;
} res;

static res request_in(ctarget_call *call, const char *method, const char *url,
                      const char *body, unsigned flags, int max_attempts, long timeout_ms)
{
    res r;
    ctarget_error_init(&r.err);
    r.resp = NULL;
    const char *headers[] = {"X-Test: hello", NULL};
    ctarget_http_request req = {.struct_size = sizeof req, .method = method, .url = url,
                                .headers = headers, .body = body,
                                .body_len = body ? strlen(body) : 0, .flags = flags,
                                .max_attempts = max_attempts, .timeout_ms = timeout_ms};
    long long t0 = tl_now_ms();
    r.rc = http_request(call, &req, &r.resp, &r.err);
    r.ms = tl_now_ms() - t0;
    return r;
}

static res request(const char *method, const char *url, const char *body, unsigned flags,
                   int max_attempts, long timeout_ms)
{
    ctarget_call call;
    call_init(&call, "test");
    return request_in(&call, method, url, body, flags, max_attempts, timeout_ms);
}

static void res_free(res *r)
{
    http_response_free(r->resp);
}

static char *url(const server *s, const char *scheme, const char *path)
{
    char *u = NULL;
    if (asprintf(&u, "%s://127.0.0.1:%d%s", scheme, s->port, path) < 0)
        abort();
    return u;
}

static int count(const server *s, const char *key)
{
    char *path = NULL;
    if (asprintf(&path, "/count/%s", key) < 0)
        abort();
    char *u = url(s, "http", path);
    res r = request("GET", u, NULL, 0, 1, 0);
    int n = r.resp ? atoi(r.resp->body) : -1;
    res_free(&r);
    free(u);
    free(path);
    return n;
}

/* One plain server for the whole program, started by the first test and stopped by PID
 * when the program exits. */
static server srv;

static void stop_main_server(void)
{
    stop_server(&srv);
}

static void need_server(void)
{
    if (srv.port)
        return;
    unsetenv("http_proxy");
    unsetenv("https_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("HTTPS_PROXY");
    srv = start_server(0);
    atexit(stop_main_server);
}

static void t_get_and_put_with_headers_and_body(void)
{
    need_server();
    char *u = url(&srv, "http", "/echo");
    res r = request("GET", u, NULL, 0, 0, 0);
    CU_ASSERT_EQUAL_FATAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp->status, 200);
    CU_ASSERT(tl_contains(r.resp->body, "\"x_test\": \"hello\""));
    CU_ASSERT_EQUAL(r.resp->attempts, 1);
    res_free(&r);
    r = request("PUT", u, "payload-123", 0, 0, 0);
    CU_ASSERT_EQUAL_FATAL(r.rc, CTARGET_OK);
    CU_ASSERT(tl_contains(r.resp->body, "\"method\": \"PUT\""));
    CU_ASSERT(tl_contains(r.resp->body, "payload-123"));
    CU_ASSERT_PTR_NOT_NULL(http_header_get0(r.resp, "content-length"));
    res_free(&r);
    free(u);
}

static void t_retries_5xx_and_429_then_succeeds(void)
{
    need_server();
    const char *cases[][2] = {{"/fail/a503/2/503", "a503"}, {"/fail/a500/2/500", "a500"},
                              {"/fail/a429/2/429", "a429"}, {"/fail/a408/2/408", "a408"},
                              {"/fail/a502/2/502", "a502"}, {"/fail/a504/2/504", "a504"}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *u = url(&srv, "http", cases[i][0]);
        res r = request("GET", u, NULL, 0, 5, 0);
        CU_ASSERT_EQUAL_FATAL(r.rc, CTARGET_OK);
        CU_ASSERT_EQUAL(r.resp->status, 200);
        CU_ASSERT_EQUAL(r.resp->attempts, 3);
        CU_ASSERT_EQUAL(count(&srv, cases[i][1]), 3);
        /* backoff only (20 ms base in tests), never a Retry-After-sized wait: a guard far
         * above the backoff, far below the 30 s cap */
        CU_ASSERT(r.ms < 20000);
        res_free(&r);
        free(u);
    }
}

static void t_retry_after_is_honoured(void)
{
    need_server();
    char *u = url(&srv, "http", "/fail/ra/1/503?ra=1");
    res r = request("GET", u, NULL, 0, 3, 0);
    CU_ASSERT_EQUAL_FATAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp->status, 200);
    CU_ASSERT_EQUAL(r.resp->attempts, 2);
    /* the base backoff is 20 ms in tests: only Retry-After explains a wait of a second */
    CU_ASSERT(r.ms >= 950);
    res_free(&r);
    free(u);
}

static void t_client_errors_not_retried(void)
{
    need_server();
    char *u = url(&srv, "http", "/fail/c404/5/404");
    res r = request("GET", u, NULL, 0, 5, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp->status, 404);
    CU_ASSERT_EQUAL(r.resp->attempts, 1);
    CU_ASSERT_EQUAL(count(&srv, "c404"), 1);
    res_free(&r);
    free(u);
}

static void t_post_repeated_only_when_allowed(void)
{
    need_server();
    char *u = url(&srv, "http", "/fail/p500/1/500");
    res r = request("POST", u, "x", 0, 5, 0);
    CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 500);
    CU_ASSERT_EQUAL(count(&srv, "p500"), 1);
    res_free(&r);
    free(u);
    u = url(&srv, "http", "/fail/q500/1/500");
    r = request("POST", u, "x", CTARGET_HTTP_RETRY_UNSAFE, 5, 0);
    CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 200);
    CU_ASSERT_EQUAL(count(&srv, "q500"), 2);
    res_free(&r);
    free(u);
}

static void t_max_attempts_respected(void)
{
    need_server();
    char *u = url(&srv, "http", "/fail/m/100/503");
    res r = request("GET", u, NULL, 0, 3, 0);
    CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 503);
    CU_ASSERT_EQUAL(r.resp ? r.resp->attempts : 0, 3);
    CU_ASSERT_EQUAL(count(&srv, "m"), 3);
    res_free(&r);
    free(u);
}

/* A port on 127.0.0.1 that refuses connections for as long as *fd stays open: bound, never
 * listened on, so no other process can take it meanwhile (closing a server's port and
 * hoping nobody binds it before the request is a race on a shared machine). */
static int refusing_port(int *fd)
{
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    CU_ASSERT_FATAL(*fd >= 0 && bind(*fd, (struct sockaddr *)&a, sizeof a) == 0 &&
                    getsockname(*fd, (struct sockaddr *)&a, &len) == 0);
    return ntohs(a.sin_port);
}

static void t_connection_refused_is_unreachable_and_transient(void)
{
    int fd;
    int port = refusing_port(&fd);
    char *u = NULL;
    if (asprintf(&u, "http://127.0.0.1:%d/echo", port) < 0)
        abort();
    res r = request("GET", u, NULL, 0, 2, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_UNREACHABLE);
    CU_ASSERT(r.err.transient);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "2 attempts"));
    res_free(&r);
    free(u);
    close(fd);
}

static void t_timeout_per_attempt(void)
{
    need_server();
    char *u = url(&srv, "http", "/stall");
    res r = request("GET", u, NULL, 0, 1, 300);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_TIMEOUT);
    CU_ASSERT(r.err.transient);
    CU_ASSERT(r.ms >= 250 && r.ms < 60000); /* far below the 300 s stall */
    res_free(&r);
    /* every attempt gets its own timeout */
    r = request("GET", u, NULL, 0, 2, 300);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_TIMEOUT);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "2 attempts"));
    CU_ASSERT(r.ms >= 550 && r.ms < 60000);
    res_free(&r);
    free(u);
}

static void t_tls_verified_and_private_ca_accepted(void)
{
    server tls = start_server(1);
    char *u = url(&tls, "https", "/echo");
    res r = request("GET", u, NULL, 0, 1, 5000);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_HOSTKEY);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "CTARGET_CA_BUNDLE"));
    res_free(&r);
    char *cert = tl_path(tls.dir, "cert.pem");
    setenv("CTARGET_CA_BUNDLE", cert, 1);
    r = request("GET", u, NULL, 0, 1, 5000);
    unsetenv("CTARGET_CA_BUNDLE");
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 200);
    res_free(&r);
    free(cert);
    free(u);
    stop_server(&tls);
}

static void t_proxy_from_environment(void)
{
    need_server();
    char *proxy = url(&srv, "http", "");
    setenv("http_proxy", proxy, 1);
    unsetenv("no_proxy");
    unsetenv("NO_PROXY");
    /* a name that does not resolve here: only the proxy can answer */
    res r = request("GET", "http://models.example.invalid/x", NULL, 0, 1, 5000);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT(r.resp && tl_contains(r.resp->body, "proxied http://models.example.invalid/x"));
    res_free(&r);
    setenv("no_proxy", "example.invalid", 1);
    r = request("GET", "http://models.example.invalid/x", NULL, 0, 1, 5000);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_UNREACHABLE);
    res_free(&r);
    unsetenv("http_proxy");
    unsetenv("no_proxy");
    free(proxy);
}

static void t_only_http_urls(void)
{
    res r = request("GET", "file:///etc/passwd", NULL, 0, 1, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_USAGE);
    res_free(&r);
}

static void t_retry_after_date_and_azure_ms_forms(void)
{
    need_server();
    char *u = url(&srv, "http", "/fail/rd/1/503?rad=2");
    res r = request("GET", u, NULL, 0, 3, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp ? r.resp->attempts : 0, 2);
    CU_ASSERT(r.ms >= 950 && r.ms < 60000); /* a date 2 s ahead, to the second */
    res_free(&r);
    free(u);
    u = url(&srv, "http", "/fail/rms/1/429?rams=600");
    r = request("GET", u, NULL, 0, 3, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp ? r.resp->attempts : 0, 2);
    CU_ASSERT(r.ms >= 570 && r.ms < 60000);
    res_free(&r);
    free(u);
}

static void t_default_is_five_attempts(void)
{
    need_server();
    char *u = url(&srv, "http", "/fail/five/100/503");
    res r = request("GET", u, NULL, 0, 0, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 503);
    CU_ASSERT_EQUAL(r.resp ? r.resp->attempts : 0, 5);
    CU_ASSERT_EQUAL(count(&srv, "five"), 5);
    res_free(&r);
    free(u);
}

static void t_dropped_connection_retried_only_when_safe(void)
{
    need_server();
    char *u = url(&srv, "http", "/drop/dg/2");
    res r = request("GET", u, NULL, 0, 5, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 200);
    CU_ASSERT_EQUAL(r.resp ? r.resp->attempts : 0, 3);
    CU_ASSERT_EQUAL(count(&srv, "dg"), 3);
    res_free(&r);
    free(u);
    /* a POST may have been processed before the connection dropped: not repeated */
    u = url(&srv, "http", "/drop/dp/1");
    r = request("POST", u, "order=1", 0, 5, 0);
    CU_ASSERT_NOT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_PTR_NULL(r.resp);
    CU_ASSERT(r.err.transient);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "1 attempt"));
    CU_ASSERT_EQUAL(count(&srv, "dp"), 1);
    res_free(&r);
    free(u);
}

static void t_post_repeated_after_429_and_503(void)
{
    /* 429 and 503 say the request was not processed: repeating a POST is safe */
    need_server();
    const char *cases[][2] = {{"/fail/pp503/1/503", "pp503"}, {"/fail/pp429/1/429", "pp429"}};
    for (size_t i = 0; i < 2; i++) {
        char *u = url(&srv, "http", cases[i][0]);
        res r = request("POST", u, "x", 0, 5, 0);
        CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
        CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 200);
        CU_ASSERT_EQUAL(count(&srv, cases[i][1]), 2);
        res_free(&r);
        free(u);
    }
}

static void t_no_proxy_bypasses_the_proxy(void)
{
    need_server();
    /* a proxy that refuses connections: any request through it fails */
    server dead = start_server(0);
    char *proxy = url(&dead, "http", "");
    stop_server(&dead);
    char *u = url(&srv, "http", "/echo");
    setenv("http_proxy", proxy, 1);
    unsetenv("NO_PROXY");
    unsetenv("no_proxy");
    res r = request("GET", u, NULL, 0, 1, 5000);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_UNREACHABLE);
    res_free(&r);
    setenv("no_proxy", "localhost,127.0.0.1", 1);
    r = request("GET", u, NULL, 0, 1, 5000);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT(r.resp && tl_contains(r.resp->body, "\"path\": \"/echo\""));
    res_free(&r);
    unsetenv("http_proxy");
    unsetenv("no_proxy");
    free(u);
    free(proxy);
}

static void t_proxy_gets_method_and_body(void)
{
    need_server();
    char *proxy = url(&srv, "http", "");
    setenv("http_proxy", proxy, 1);
    unsetenv("no_proxy");
    unsetenv("NO_PROXY");
    res r = request("PUT", "http://store.example.invalid/blob?sig=abc", "data", 0, 1, 5000);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT(r.resp &&
              tl_contains(r.resp->body, "proxied http://store.example.invalid/blob?sig=abc"));
    res_free(&r);
    unsetenv("http_proxy");
    free(proxy);
}

static void t_errors_hide_the_query_and_say_if_transient(void)
{
    int fd;
    int port = refusing_port(&fd);
    char *u = NULL;
    if (asprintf(&u, "http://127.0.0.1:%d/c?sv=2024&sig=TOPSECRETSIG", port) < 0)
        abort();
    res r = request("PUT", u, "x", 0, 1, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_UNREACHABLE);
    CU_ASSERT_PTR_NULL(strstr(r.err.message, "TOPSECRETSIG"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "/c?"));
    res_free(&r);
    free(u);
    close(fd);
    /* a URL curl cannot use fails the same way every time: not transient, not repeated */
    r = request("GET", "http://127.0.0.1:99999/x", NULL, 0, 5, 0);
    CU_ASSERT_NOT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT(!r.err.transient);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err.message, "1 attempt"));
    res_free(&r);
}

static void t_headers_case_insensitive_and_head(void)
{
    need_server();
    char *u = url(&srv, "http", "/status/204");
    res r = request("HEAD", u, NULL, 0, 1, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_OK);
    CU_ASSERT_EQUAL(r.resp ? r.resp->status : 0, 204);
    CU_ASSERT_EQUAL(r.resp ? r.resp->body_len : 99, 0);
    res_free(&r);
    free(u);
    u = url(&srv, "http", "/echo");
    r = request("GET", u, NULL, 0, 1, 0);
    CU_ASSERT_EQUAL_FATAL(r.rc, CTARGET_OK);
    const char *a = http_header_get0(r.resp, "CONTENT-LENGTH");
    const char *b = http_header_get0(r.resp, "content-length");
    CU_ASSERT(a && b && !strcmp(a, b));
    CU_ASSERT_EQUAL(a ? (size_t)atol(a) : 0, r.resp->body_len);
    CU_ASSERT_PTR_NULL(http_header_get0(r.resp, "X-Not-There"));
    res_free(&r);
    free(u);
}

static void on_alarm(int sig)
{
    (void)sig;
    ctarget_cancel_request();
}

/* Runs last: the process-wide cancellation flag cannot be cleared. */
static void t_cancel_stops_before_and_during_waits(void)
{
    need_server();
    ctarget_call call;
    call_init(&call, "test");
    call.cancelled = 1;
    char *u = url(&srv, "http", "/fail/cx/1/503");
    res r = request_in(&call, "GET", u, NULL, 0, 3, 0);
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_CANCELED);
    CU_ASSERT_PTR_NULL(r.resp);
    CU_ASSERT_EQUAL(count(&srv, "cx"), 0);
    res_free(&r);
    free(u);
    /* a cancel (here: SIGALRM, as a user's ^C) during an hour's Retry-After wait */
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    CU_ASSERT_EQUAL_FATAL(sigaction(SIGALRM, &sa, NULL), 0);
    u = url(&srv, "http", "/fail/cy/5/503?ra=3600");
    alarm(1);
    r = request("GET", u, NULL, 0, 3, 0);
    signal(SIGALRM, SIG_DFL);
    alarm(600); /* the program's guard again (tl_main) */
    CU_ASSERT_EQUAL(r.rc, CTARGET_E_CANCELED);
    CU_ASSERT(r.ms >= 900 && r.ms < 60000);
    res_free(&r);
    free(u);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_get_and_put_with_headers_and_body);
    TL_ADD(s, t_retries_5xx_and_429_then_succeeds);
    TL_ADD(s, t_retry_after_is_honoured);
    TL_ADD(s, t_client_errors_not_retried);
    TL_ADD(s, t_post_repeated_only_when_allowed);
    TL_ADD(s, t_max_attempts_respected);
    TL_ADD(s, t_connection_refused_is_unreachable_and_transient);
    TL_ADD(s, t_timeout_per_attempt);
    TL_ADD(s, t_tls_verified_and_private_ca_accepted);
    TL_ADD(s, t_proxy_from_environment);
    TL_ADD(s, t_only_http_urls);
    TL_ADD(s, t_retry_after_date_and_azure_ms_forms);
    TL_ADD(s, t_default_is_five_attempts);
    TL_ADD(s, t_dropped_connection_retried_only_when_safe);
    TL_ADD(s, t_post_repeated_after_429_and_503);
    TL_ADD(s, t_no_proxy_bypasses_the_proxy);
    TL_ADD(s, t_proxy_gets_method_and_body);
    TL_ADD(s, t_errors_hide_the_query_and_say_if_transient);
    TL_ADD(s, t_headers_case_insensitive_and_head);
    TL_ADD(s, t_cancel_stops_before_and_during_waits); /* last */
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "http", add);
}
