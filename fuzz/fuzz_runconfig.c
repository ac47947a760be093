/* Fuzz target: run configuration files (`ctarget run submit --config FILE`,
 * core/run_submit.c: run_config_load, run_config_check_values, run_config_stored).
 *
 * Properties: a refusal always says why; an accepted configuration is an object of known
 * keys only, its environment an object (a name string is turned into {"name": ...}) with
 * known keys, relative paths anchored at the file's directory; a configuration whose values
 * pass the checks always yields the record the monitor reads. */
#include "config.h"

#include "fuzz.h"

#include <ctarget/ctarget.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "run.h"

static const char *const top[] = {"source_directory", "script", "arguments", "target",
                                  "environment", "framework", "max_run_duration_seconds",
                                  "cancel_grace_seconds", "experiment", "node_count",
                                  "options"};
static const char *const envk[] = {"name", "python", "requirements", "conda", "docker_image",
                                   "docker_gpu", "env_vars"};

static int known(const char *k, const char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(k, v[i]))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char file[4300], dir[4200];
    snprintf(dir, sizeof dir, "%s/cfg", fz_scratch());
    snprintf(file, sizeof file, "%s/cfg/run.json", fz_scratch());
    fz_wipe(fz_scratch());
    FZ_CHECK(mkdir(dir, 0700) == 0, "cannot create %s", dir);
    fz_write_file(file, data, size);
    ctarget_error err;
    ctarget_error_init(&err);
    json_t *c = NULL;
    if (run_config_load(file, &c, &err) != CTARGET_OK) {
        FZ_CHECK(err.message[0], "refused without a message");
        FZ_CHECK(!c, "refused, yet a configuration came back");
        fz_note("load: %s", err.message);
        return 0;
    }
    FZ_CHECK(json_is_object(c), "accepted a non-object");
    const char *k;
    json_t *v;
    json_object_foreach(c, k, v) FZ_CHECK(known(k, top, sizeof top / sizeof *top),
                                          "unknown key '%s' accepted", k);
    json_t *env = json_object_get(c, "environment");
    if (env) {
        FZ_CHECK(json_is_object(env), "environment is not an object after loading");
        json_object_foreach(env, k, v) FZ_CHECK(known(k, envk, sizeof envk / sizeof *envk),
                                                "unknown environment key '%s'", k);
    }
    const char *src = json_string_value(json_object_get(c, "source_directory"));
    if (src)
        FZ_CHECK(src[0] == '/', "source_directory '%s' left relative", src);
    if (run_config_check_values(c, &err) == CTARGET_OK) {
        json_t *e = env ? env : json_object();
        json_t *rec = run_config_stored(c, "train.py", e);
        FZ_CHECK(rec, "an accepted configuration gave no stored record");
        char *text = json_dumps(rec, JSON_COMPACT);
        FZ_CHECK(text, "the stored record cannot be written");
        fz_note("stored: %s", text);
        free(text);
        json_decref(rec);
        if (!env)
            json_decref(e);
    } else {
        FZ_CHECK(err.message[0], "values refused without a message");
        fz_note("check: %s", err.message);
    }
    json_decref(c);
    return 0;
}
