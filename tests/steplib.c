#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "run.h"
#include "steplib.h"
#include "testlib.h"
#include "ws.h"

char *sl_step_submit(const char *ws_dir, const char *target, const char *src,
                     const char *script, const char *const args[], const char *const env[],
                     const char *step_type, const char *step_json, char *errbuf,
                     size_t errlen)
{
    errbuf[0] = '\0';
    setenv("CTARGET_MONITOR_PROGRAM", tl_ctarget(), 1);
    ctarget_ws *ws = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    if (ctarget_ws_open(ws_dir, &ws, &err)) {
        snprintf(errbuf, errlen, "%s", err.message);
        return NULL;
    }
    json_t *a = json_array(), *vars = json_object();
    for (size_t i = 0; args && args[i]; i++)
        json_array_append_new(a, json_string(args[i]));
    for (size_t i = 0; env && env[i]; i++) {
        const char *eq = strchr(env[i], '=');
        if (eq) {
            char *k = strndup(env[i], (size_t)(eq - env[i]));
            json_object_set_new(vars, k, json_string(eq + 1));
            free(k);
        }
    }
    json_t *c = json_pack("{s:s, s:s, s:s, s:o, s:{s:o}, s:s}", "target", target,
                          "source_directory", src, "script", script, "arguments", a,
                          "environment", "env_vars", vars, "experiment", "steps");
    json_t *sj = step_json ? json_loads(step_json, 0, NULL) : json_object();
    json_t *extra = json_pack("{s:{s:s, s:s, s:s, s:o}}", "pipeline_step", "pipeline_id",
                              "steplib", "step_name", "step", "step_type", step_type, "step",
                              sj ? sj : json_object());
    run_sub x = {.need_caps = CTARGET_CAP_PIPELINE_STEP, .extra = extra};
    char *out = NULL, *id = NULL;
    if (run_submit_config(ws, c, &x, &out, &err)) {
        snprintf(errbuf, errlen, "%s", err.message);
    } else {
        json_t *j = json_loads(out, 0, NULL);
        const char *s = json_string_value(json_object_get(j, "id"));
        id = s ? strdup(s) : NULL;
        json_decref(j);
    }
    free(out);
    json_decref(extra);
    json_decref(c);
    ctarget_ws_close(ws);
    return id;
}
