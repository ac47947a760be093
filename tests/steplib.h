/* Test support: submit one pipeline step directly, through the core's step path (the same
 * run_submit_config call the pipeline driver makes), so a plugin's step support can be tested
 * on its own.  White-box: link TEST_CORE_LDADD. */
#ifndef CTARGET_TESTS_STEPLIB_H
#define CTARGET_TESTS_STEPLIB_H

#include <stddef.h>

/* A step of type step_type ("script", "databricks", ...) with the type's keys step_json
 * (JSON object text, or NULL for {}) on `target` in the workspace ws_dir: source directory
 * src, script (relative to src), args and env ("NAME=value", for the step's environment)
 * NULL-terminated or NULL.  The run's monitor is the built ctarget.  Returns the run id
 * (owned; wait for it with `ctarget run wait`), or NULL with the core's message in errbuf. */
char *sl_step_submit(const char *ws_dir, const char *target, const char *src,
                     const char *script, const char *const args[], const char *const env[],
                     const char *step_type, const char *step_json, char *errbuf,
                     size_t errlen);

#endif
