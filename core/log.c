#include "config.h"

#include "log.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static ctarget_log_fn log_fn;
static void *log_arg;
static ctarget_log_level log_max = CTARGET_LOG_WARN;

static char **secrets;
static size_t n_secrets;

static ctarget_progress_fn prog_fn;
static void *prog_arg;

static volatile sig_atomic_t cancel_flag;

void ctarget_set_log_handler(ctarget_log_fn fn, void *arg, ctarget_log_level max_level)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_arg = arg;
    log_max = max_level;
    pthread_mutex_unlock(&log_lock);
}

void ctarget_set_progress_handler(ctarget_progress_fn fn, void *arg)
{
    pthread_mutex_lock(&log_lock);
    prog_fn = fn;
    prog_arg = arg;
    pthread_mutex_unlock(&log_lock);
}

void ctarget_cancel_request(void)
{
    cancel_flag = 1;
}

int ctarget_cancel_requested(void)
{
    return cancel_flag != 0;
}

int log_enabled(ctarget_log_level level)
{
    return level <= log_max;
}

void log_register_secret(const char *value)
{
    if (!value || strlen(value) < 4)
        return;
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < n_secrets; i++)
        if (!strcmp(secrets[i], value)) {
            pthread_mutex_unlock(&log_lock);
            return;
        }
    secrets = xrealloc(secrets, (n_secrets + 1) * sizeof *secrets);
    secrets[n_secrets++] = xstrdup(value);
    pthread_mutex_unlock(&log_lock);
}

int log_has_secrets(void)
{
    return n_secrets != 0;
}

void log_redact_inplace(char **s)
{
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < n_secrets && *s; i++) {
        const char *hit = strstr(*s, secrets[i]);
        if (!hit)
            continue;
        strbuf sb;
        sb_init(&sb);
        const char *p = *s;
        size_t sl = strlen(secrets[i]);
        while ((hit = strstr(p, secrets[i]))) {
            sb_add(&sb, p, (size_t)(hit - p));
            sb_adds(&sb, "********");
            p = hit + sl;
        }
        sb_adds(&sb, p);
        free(*s);
        *s = sb_detach(&sb);
    }
    pthread_mutex_unlock(&log_lock);
}

static const char *level_name(ctarget_log_level l)
{
    switch (l) {
    case CTARGET_LOG_ERROR: return "error";
    case CTARGET_LOG_WARN: return "warning";
    case CTARGET_LOG_INFO: return "info";
    default: return "debug";
    }
}

void log_vmsg(ctarget_log_level level, const char *prefix, const char *fmt, va_list ap)
{
    if (!log_enabled(level))
        return;
    char *body = xvasprintf(fmt, ap);
    char *msg = prefix ? xasprintf("%s: %s", prefix, body) : xstrdup(body);
    free(body);
    log_redact_inplace(&msg);
    pthread_mutex_lock(&log_lock);
    ctarget_log_fn fn = log_fn;
    void *arg = log_arg;
    pthread_mutex_unlock(&log_lock);
    if (fn)
        fn(arg, level, msg);
    else
        fprintf(stderr, "ctarget: %s: %s\n", level_name(level), msg);
    free(msg);
}

void log_msg(ctarget_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, NULL, fmt, ap);
    va_end(ap);
}

void progress_report(const char *phase, uint64_t done, uint64_t total)
{
    pthread_mutex_lock(&log_lock);
    ctarget_progress_fn fn = prog_fn;
    void *arg = prog_arg;
    pthread_mutex_unlock(&log_lock);
    if (fn)
        fn(arg, phase, done, total);
}
