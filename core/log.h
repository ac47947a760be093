/* Logging, secret redaction, progress and cancellation: process-wide diagnostics state. */
#ifndef CTARGET_CORE_LOG_H
#define CTARGET_CORE_LOG_H

#include <stdarg.h>

#include <ctarget/ctarget.h>

void log_msg(ctarget_log_level level, const char *fmt, ...) CTARGET_PRINTF(2, 3);
void log_vmsg(ctarget_log_level level, const char *prefix, const char *fmt, va_list ap);
int log_enabled(ctarget_log_level level);

/* Register a secret value: from now on it is replaced by "********" wherever the core
 * formats a message, log line or error.  Values shorter than 4 bytes are not registered
 * (they would mangle ordinary text); such secrets are still never printed deliberately. */
void log_register_secret(const char *value);
/* Replace registered secrets in *s (reallocating it). */
void log_redact_inplace(char **s);
int log_has_secrets(void);

void progress_report(const char *phase, uint64_t done, uint64_t total);

#endif
