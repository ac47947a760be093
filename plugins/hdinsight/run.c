/* Run operations of the hdinsight target: remotevm's (plugins/remotevm/run.c, compiled in),
 * except that
 *   prepare  refuses what a Spark cluster's launcher cannot do (a plain run whose framework
 *            is not pyspark, a container image, a managed environment), checks a step's keys
 *            (step_json), then ships and materializes the snapshot as remotevm does;
 *   submit   starts `spark-submit --deploy-mode client --name ctarget-<id> [--master M]
 *            [--conf K=V]... [--py-files a,b] SCRIPT ARGS...` through the agent's detached
 *            wrapper, in the run's snapshot root (so ./outputs and ./logs are the run's, and
 *            the driver's stdout/stderr are its log).  Client mode keeps the driver on the
 *            head node: that is what makes the snapshot its working directory.
 * poll, logs, cancel (TERM to the launcher's process group, grace, KILL), outputs, reattach
 * and cleanup are remotevm's unchanged. */
#include "config.h"

#include "hdinsight.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static int is_step(const ctarget_run_info *run)
{
    return run->struct_size > offsetof(ctarget_run_info, step_type) && run->step_type;
}

static const char *step_json_of(const ctarget_run_info *run)
{
    return run->struct_size > offsetof(ctarget_run_info, step_json) ? run->step_json : NULL;
}

static int bad_word(const char *s)
{
    return !*s || strchr(s, '\n') || strchr(s, '\r') || s[0] == '-';
}

/* a path inside the snapshot: relative, no "..", no comma (spark-submit's list separator) */
static int bad_rel(const char *s)
{
    if (!*s || s[0] == '/' || strchr(s, ',') || strchr(s, '\n'))
        return 1;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        p += n;
        if (*p == '/')
            p++;
    }
    return 0;
}

json_t *hdi_spark_words(const ctarget_target *t, const ctarget_run_info *run,
                        ctarget_error *err)
{
    const ctarget_host *h = HDI_H;
    const char *ss = h->config_get0(t, "spark_submit");
    const char *master = h->config_get0(t, "master");
    json_t *conf = NULL, *pyf = NULL, *sj = NULL;
    const char *sjt = step_json_of(run);
    const char *who = is_step(run) ? "the step" : "the run";
    if (is_step(run) && sjt && *sjt) {
        json_error_t je;
        sj = json_loads(sjt, 0, &je);
        if (!json_is_object(sj)) {
            json_decref(sj);
            h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "step '%s': its hdinsight keys are not a JSON object (%s)",
                         run->step_name ? run->step_name : "?", je.text);
            return NULL;
        }
        const char *k;
        json_t *v;
        json_object_foreach(sj, k, v) {
            const char *want = NULL;
            if (!strcmp(k, "master")) {
                if (!json_is_string(v) || bad_word(json_string_value(v)))
                    want = "a Spark master URL string (yarn, local[N], spark://HOST:PORT)";
                else
                    master = json_string_value(v);
            } else if (!strcmp(k, "conf")) {
                if (!json_is_object(v))
                    want = "an object of Spark properties, {\"spark.executor.memory\": \"2g\"}";
                conf = v;
            } else if (!strcmp(k, "py_files")) {
                if (!json_is_array(v))
                    want = "a list of .py/.zip/.egg files in the step's source directory";
                pyf = v;
            } else {
                h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "step '%s': unknown hdinsight key '%s': the keys are master, conf "
                             "and py_files", run->step_name ? run->step_name : "?", k);
                json_decref(sj);
                return NULL;
            }
            if (want) {
                h->error_set(err, CTARGET_E_CONFIG, 0, 0, "step '%s': %s must be %s",
                             run->step_name ? run->step_name : "?", k, want);
                json_decref(sj);
                return NULL;
            }
        }
    }
    json_t *w = json_array();
    json_array_append_new(w, json_string(ss && *ss ? ss : "spark-submit"));
    json_array_append_new(w, json_string("--deploy-mode"));
    json_array_append_new(w, json_string("client"));
    char name[200];
    snprintf(name, sizeof name, "ctarget-%s", run->id);
    json_array_append_new(w, json_string("--name"));
    json_array_append_new(w, json_string(name));
    if (master && *master) {
        json_array_append_new(w, json_string("--master"));
        json_array_append_new(w, json_string(master));
    }
    const char *k;
    json_t *v;
    json_object_foreach(conf, k, v) {
        char num[64];
        const char *val = json_string_value(v);
        if (json_is_integer(v)) {
            snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
            val = num;
        } else if (json_is_real(v)) {
            snprintf(num, sizeof num, "%g", json_real_value(v));
            val = num;
        } else if (json_is_boolean(v)) {
            val = json_is_true(v) ? "true" : "false";
        }
        if (!val || !*k || strchr(k, '=') || strchr(k, '\n') || strchr(val, '\n')) {
            h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "%s's conf '%s': Spark properties are NAME: \"value\" (a string, "
                         "number or boolean, one line, no '=' in the name)", who, k);
            json_decref(w);
            json_decref(sj);
            return NULL;
        }
        char *kv = NULL;
        if (asprintf(&kv, "%s=%s", k, val) < 0) {
            json_decref(w);
            json_decref(sj);
            h->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
            return NULL;
        }
        json_array_append_new(w, json_string("--conf"));
        json_array_append_new(w, json_string(kv));
        free(kv);
    }
    if (json_array_size(pyf)) {
        rv_buf list = {0};
        size_t i;
        json_array_foreach(pyf, i, v) {
            const char *f = json_string_value(v);
            if (!f || bad_rel(f)) {
                h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                             "%s's py_files entry %zu: give a path relative to the source "
                             "directory (no '..', no ',')", who, i + 1);
                rv_buf_free(&list);
                json_decref(w);
                json_decref(sj);
                return NULL;
            }
            if (i)
                rv_buf_adds(&list, ",");
            rv_buf_adds(&list, f);
        }
        rv_buf_add(&list, "", 1);
        json_array_append_new(w, json_string("--py-files"));
        json_array_append_new(w, json_string(list.data));
        rv_buf_free(&list);
    }
    json_decref(sj);
    return w;
}

static ctarget_status hdi_prepare(void *ctx, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    if (is_step(run)) {
        static const char *const ok[] = {"script", "spark", "pyspark", "hdinsight"};
        int found = 0;
        for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
            found |= !strcmp(run->step_type, ok[i]);
        if (!found) {
            h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                         "step '%s' is a %s step: an hdinsight target runs script (spark) "
                         "steps; give it a %s target", run->step_name ? run->step_name : "?",
                         run->step_type, run->step_type);
            return CTARGET_E_UNSUPPORTED;
        }
    } else if (!run->framework || strcmp(run->framework, "pyspark")) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "hdinsight runs use framework pyspark (this run's is %s): put "
                     "\"framework\": \"pyspark\" in the run configuration (--config FILE)",
                     run->framework ? run->framework : "unset");
        return CTARGET_E_CONFIG;
    }
    if (run->docker_image) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "hdinsight runs use the cluster's Spark, not a container: drop the "
                     "docker image");
        return CTARGET_E_UNSUPPORTED;
    }
    if (run->env_kind != CTARGET_ENV_USER) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "hdinsight runs use the cluster's Python (its Spark executors must have "
                     "the same packages): drop --requirements/--conda and install them with a "
                     "script action on the cluster");
        return CTARGET_E_UNSUPPORTED;
    }
    json_t *w = hdi_spark_words(t, run, err);
    if (!w)
        return err->code;
    json_decref(w);
    return rv_run_ops.prepare(ctx, c, t, run, err);
}

static json_t *hexstr(const char *s)
{
    char *x = rv_hex(s, strlen(s));
    json_t *j = json_string(x ? x : "");
    free(x);
    return j;
}

static ctarget_status hdi_submit(void *ctx, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    if (hdi_livy_mode(t))
        return hdi_livy_submit(ctx, c, t, run, err);
    json_t *words = hdi_spark_words(t, run, err);
    if (!words)
        return err->code;
    json_t *argv = json_array();
    rv_buf shown = {0};
    size_t i;
    json_t *v;
    json_array_foreach(words, i, v) {
        json_array_append_new(argv, hexstr(json_string_value(v)));
        rv_buf_adds(&shown, json_string_value(v));
        rv_buf_adds(&shown, " ");
    }
    json_decref(words);
    json_array_append_new(argv, hexstr(run->script));
    rv_buf_adds(&shown, run->script);
    rv_buf_add(&shown, "", 1);
    for (size_t k = 0; k < run->n_args; k++)
        json_array_append_new(argv, hexstr(run->args[k]));
    json_t *env = json_array();
    for (size_t k = 0; k < run->n_env; k++)
        json_array_append_new(env, hexstr(run->env[k]));
    json_t *spec = json_object();
    json_object_set_new(spec, "argv", argv);
    json_object_set_new(spec, "env", env);
    json_object_set_new(spec, "grace", json_integer(run->cancel_grace_seconds > 0
                                                        ? run->cancel_grace_seconds
                                                        : 10));
    json_object_set_new(spec, "docker", json_null());
    char *text = json_dumps(spec, JSON_COMPACT);
    json_decref(spec);
    const char *args[] = {run->id, NULL};
    rv_buf out = {0};
    ctarget_status rc = text ? rv_agent(h, c, t, "start", args, text, strlen(text), &out, NULL,
                                        err)
                             : CTARGET_E_NOMEM;
    if (!text)
        h->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
    free(text);
    if (rc == CTARGET_OK && run->handle) {
        json_t *j = json_loadb(out.data ? out.data : "", out.len, 0, NULL);
        json_t *pid = json_object_get(j, "pid");
        if (json_is_integer(pid))
            h->obj_set_int(run->handle, "pid", json_integer_value(pid));
        json_t *sm = json_object_get(j, "started_ms");
        if (json_is_integer(sm))
            h->obj_set_int(run->handle, "started_ms", json_integer_value(sm));
        h->obj_set_str(run->handle, "spark_command", shown.data);
        json_decref(j);
    }
    h->log(c, CTARGET_LOG_INFO, "started %s", shown.data ? shown.data : "spark-submit");
    rv_buf_free(&shown);
    rv_buf_free(&out);
    return rc;
}

/* remotevm's, unchanged (a static initializer cannot copy another table's slots) */
static ctarget_status hdi_poll(void *ctx, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, long wait_ms, ctarget_run_poll *out,
                               ctarget_error *err)
{
    if (hdi_livy_mode(t))
        return hdi_livy_poll(ctx, c, t, run, wait_ms, out, err);
    return rv_run_ops.poll(ctx, c, t, run, wait_ms, out, err);
}

static ctarget_status hdi_read_logs(void *ctx, ctarget_call *c, ctarget_target *t,
                                    const ctarget_run_info *run, ctarget_stream stream,
                                    uint64_t offset, ctarget_write_fn out, void *out_arg,
                                    ctarget_error *err)
{
    if (hdi_livy_mode(t) && stream == CTARGET_STREAM_LOG)
        return hdi_livy_read_log(ctx, c, t, run, offset, out, out_arg, err);
    /* metrics: the file on the head node, through the agent, in both modes */
    return rv_run_ops.read_logs(ctx, c, t, run, stream, offset, out, out_arg, err);
}

static ctarget_status hdi_cancel(void *ctx, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    if (hdi_livy_mode(t))
        return hdi_livy_cancel(ctx, c, t, run, err);
    return rv_run_ops.cancel(ctx, c, t, run, err);
}

static ctarget_status hdi_fetch_outputs(void *ctx, ctarget_call *c, ctarget_target *t,
                                        const ctarget_run_info *run, const char *dest_dir,
                                        ctarget_error *err)
{
    return rv_run_ops.fetch_outputs(ctx, c, t, run, dest_dir, err);
}

static ctarget_status hdi_reattach(void *ctx, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_error *err)
{
    return rv_run_ops.reattach(ctx, c, t, run, err);
}

static ctarget_status hdi_cleanup(void *ctx, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    return rv_run_ops.cleanup(ctx, c, t, run, err);
}

const ctarget_run_ops hdi_run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = hdi_prepare,
    .submit = hdi_submit,
    .poll = hdi_poll,
    .read_logs = hdi_read_logs,
    .cancel = hdi_cancel,
    .fetch_outputs = hdi_fetch_outputs,
    .reattach = hdi_reattach,
    .cleanup = hdi_cleanup,
};
