/* mode=livy: runs and steps as Apache Livy batches (POST /batches, GET /batches/{id},
 * GET /batches/{id}/log, DELETE /batches/{id}; Livy's REST API, /work/shared/specs/livy).
 *
 * The files still travel over SSH: prepare ships and materializes the snapshot in
 * remote_root/runs/RUN_ID/src on the head node exactly as in ssh mode, and the batch's `file`
 * and `pyFiles` are those absolute paths (Livy reads local files from the directories in its
 * livy.file.local-dir-whitelist; HDInsight's default accepts wasbs:// and abfs:// only, so
 * add remote_root's runs directory there).  The run's environment goes through Spark's own
 * spark.yarn.appMasterEnv.NAME properties (the driver's environment in YARN cluster mode),
 * so CTARGET_OUTPUTS_DIR and CTARGET_METRICS_FILE name the run's directory on the head node:
 * outputs and metrics are found there by remotevm's agent, as in ssh mode, when the driver
 * runs where it can write that directory (a shared file system or a single-node cluster).
 *
 * Basic authentication (livy_username, livy_password: HDInsight's cluster login) and Livy's
 * CSRF header X-Requested-By on every request; TLS verified by the core's HTTP client. */
#include "config.h"

#include "hdinsight.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

int hdi_livy_mode(const ctarget_target *t)
{
    const char *m = HDI_H->config_get0(t, "mode");
    return m && !strcasecmp(m, "livy");
}

static char *b64(const char *s)
{
    static const char T[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(s), o = 0;
    char *r = malloc(4 * ((n + 2) / 3) + 1);
    if (!r)
        return NULL;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        r[o++] = T[v >> 18 & 63];
        r[o++] = T[v >> 12 & 63];
        r[o++] = i + 1 < n ? T[v >> 6 & 63] : '=';
        r[o++] = i + 2 < n ? T[v & 63] : '=';
    }
    r[o] = '\0';
    return r;
}

static void wipe_free(char *s)
{
    if (s) {
        volatile char *v = s;
        while (*v)
            *v++ = 0;
        free(s);
    }
}

/* One request to Livy: the parsed JSON answer of a 2xx (may be NULL for an empty one) in *out,
 * *status the HTTP status.  Errors: transport (the core's message), 401/403 (E_AUTH), other
 * >= 400 unless the caller accepts it (accept_404). */
static ctarget_status livy(ctarget_call *c, const ctarget_target *t, const char *method,
                           const char *path, json_t *body, int accept_404, json_t **out,
                           long *status, char **raw, ctarget_error *err)
{
    const ctarget_host *h = HDI_H;
    const char *base = h->config_get0(t, "livy_url");
    const char *user = h->config_get0(t, "livy_username");
    if (!base || !*base) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                     "mode=livy and no livy_url (the cluster lists no HTTPS endpoint): add --set "
                     "livy_url=https://CLUSTER.azurehdinsight.net/livy");
        return CTARGET_E_CONFIG;
    }
    char *pw = NULL;
    ctarget_status rc = h->secret_get1(t, "livy_password", &pw, err);
    if (rc != CTARGET_OK)
        return rc;
    size_t ul = strlen(user ? user : "") + strlen(pw ? pw : "") + 2;
    char *up = malloc(ul);
    if (!up) {
        h->secret_free(pw);
        h->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    snprintf(up, ul, "%s:%s", user ? user : "", pw ? pw : "");
    if (pw)
        h->secret_free(pw);
    char *enc = b64(up);
    wipe_free(up);
    char *auth = NULL;
    if (!enc || asprintf(&auth, "Authorization: Basic %s", enc) < 0)
        auth = NULL;
    wipe_free(enc);
    char *url = NULL;
    size_t bl = strlen(base);
    while (bl && base[bl - 1] == '/')
        bl--;
    if (!auth || asprintf(&url, "%.*s%s", (int)bl, base, path) < 0) {
        wipe_free(auth);
        h->error_set(err, CTARGET_E_NOMEM, 0, 0, "out of memory");
        return CTARGET_E_NOMEM;
    }
    const char *headers[] = {auth, "X-Requested-By: ctarget", "Accept: application/json",
                             body ? "Content-Type: application/json" : NULL, NULL};
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    ctarget_http_request req = {.struct_size = sizeof req, .method = method, .url = url,
                                .headers = headers, .body = text,
                                .body_len = text ? strlen(text) : 0, .timeout_ms = 30000};
    ctarget_http_response *resp = NULL;
    rc = h->http_request(c, &req, &resp, err);
    wipe_free(auth);
    free(text);
    if (rc != CTARGET_OK) {
        free(url);
        return rc;
    }
    *status = resp->status;
    if (resp->status == 401 || resp->status == 403) {
        h->error_set(err, CTARGET_E_AUTH, 0, 0,
                     "Livy at %.*s refused livy_username '%s' (HTTP %ld): check livy_username "
                     "and livy_password (the cluster login)", (int)bl, base, user ? user : "",
                     resp->status);
        rc = CTARGET_E_AUTH;
    } else if (resp->status == 404 && accept_404) {
        rc = CTARGET_OK;
    } else if (resp->status >= 400) {
        /* Livy answers {"msg": "..."} */
        json_t *j = json_loadb(resp->body ? resp->body : "", resp->body_len, 0, NULL);
        const char *msg = json_string_value(json_object_get(j, "msg"));
        h->error_set(err, resp->status == 404 ? CTARGET_E_NOT_FOUND : CTARGET_E_REMOTE,
                     resp->status >= 500 || resp->status == 429, 0,
                     "Livy %s %s: HTTP %ld: %.300s", method, url, resp->status,
                     msg ? msg : resp->body_len ? resp->body : "(no message)");
        json_decref(j);
        rc = err->code;
    } else {
        if (out)
            *out = resp->body_len ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
        if (raw)
            *raw = strdup(resp->body ? resp->body : "");
    }
    free(url);
    h->http_response_free(resp);
    return rc;
}

ctarget_status hdi_livy_check(ctarget_call *c, const ctarget_target *t, ctarget_obj *facts,
                              ctarget_error *err)
{
    json_t *j = NULL;
    long st = 0;
    ctarget_status rc = livy(c, t, "GET", "/batches?from=0&size=1", NULL, 0, &j, &st, NULL, err);
    if (rc == CTARGET_OK && !json_is_object(j)) {
        HDI_H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                         "%s does not answer like Livy (GET /batches): check livy_url "
                         "(https://CLUSTER.azurehdinsight.net/livy)",
                         HDI_H->config_get0(t, "livy_url"));
        rc = CTARGET_E_REMOTE;
    }
    if (rc == CTARGET_OK && facts)
        HDI_H->obj_set_int(facts, "livy_batches", json_integer_value(json_object_get(j, "total")));
    json_decref(j);
    return rc;
}

static char *dup_cat(const char *a, const char *b, const char *c2)
{
    char *s = NULL;
    if (asprintf(&s, "%s%s%s", a, b, c2) < 0)
        return NULL;
    return s;
}

/* remotevm's agent knows remote_root expanded ("root" in its facts) */
static char *remote_root(ctarget_call *c, ctarget_target *t, ctarget_error *err)
{
    const char *args[] = {"docker", NULL};
    rv_buf b = {0};
    if (rv_agent(HDI_H, c, t, "facts", args, NULL, 0, &b, NULL, err) != CTARGET_OK) {
        rv_buf_free(&b);
        return NULL;
    }
    json_t *j = json_loadb(b.data ? b.data : "", b.len, 0, NULL);
    rv_buf_free(&b);
    const char *r = json_string_value(json_object_get(j, "root"));
    char *out = r && r[0] == '/' ? strdup(r) : NULL;
    json_decref(j);
    if (!out)
        HDI_H->error_set(err, CTARGET_E_REMOTE, 0, 0,
                         "the head node's agent did not say where remote_root is");
    return out;
}

/* the batch Livy holds under this name (a new reference), or NULL */
static json_t *find_batch(ctarget_call *c, const ctarget_target *t, const char *name)
{
    ctarget_error e;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    json_t *found = NULL;
    for (long from = 0; name && !found && from < 100000;) {
        char path[80];
        snprintf(path, sizeof path, "/batches?from=%ld&size=200", from);
        json_t *j = NULL;
        long st = 0;
        if (livy(c, t, "GET", path, NULL, 0, &j, &st, NULL, &e) != CTARGET_OK)
            return NULL;
        json_t *ss = json_object_get(j, "sessions");
        size_t i;
        json_t *b;
        json_array_foreach(ss, i, b) {
            const char *n = json_string_value(json_object_get(b, "name"));
            if (n && !strcmp(n, name) && json_is_integer(json_object_get(b, "id"))) {
                found = json_incref(b);
                break;
            }
        }
        size_t got = json_array_size(ss);
        json_decref(j);
        if (!got)
            break;
        from += (long)got;
    }
    return found;
}

ctarget_status hdi_livy_submit(void *ctx, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    long long have;
    if (run->handle && h->obj_get_int(run->handle, "livy_batch_id", &have))
        return CTARGET_OK; /* submitted already (a monitor restarted after the POST) */
    if (run->handle && h->obj_get_int(run->handle, "livy_canceled", &have) && have)
        return CTARGET_OK; /* canceled first: poll says Canceled */
    json_t *words = hdi_spark_words(t, run, err);
    if (!words)
        return err->code;
    char *root = remote_root(c, t, err);
    if (!root) {
        json_decref(words);
        return err->code;
    }
    char *rd = dup_cat(root, "/runs/", run->id);
    char *src = rd ? dup_cat(rd, "/src", "") : NULL;
    free(root);
    /* the outputs and logs directories, as the agent's start makes them in ssh mode */
    ctarget_status rc = CTARGET_OK;
    {
        rv_buf cmd = {0};
        char *q1 = dup_cat(src ? src : "", "/outputs", ""), *q2 = dup_cat(src ? src : "", "/logs", "");
        char *a = q1 ? rv_shell_quote(q1) : NULL, *b = q2 ? rv_shell_quote(q2) : NULL;
        rv_buf_adds(&cmd, "mkdir -p -- ");
        rv_buf_adds(&cmd, a ? a : "''");
        rv_buf_adds(&cmd, " ");
        rv_buf_adds(&cmd, b ? b : "''");
        rv_buf_add(&cmd, "", 1);
        free(a), free(b), free(q1), free(q2);
        rv_conn *cn = NULL;
        rc = rv_conn_get(h, c, t, &cn, err);
        rv_exec *ex = NULL;
        if (rc == CTARGET_OK)
            rc = rv_exec_open(cn, c, cmd.data, NULL, NULL, &ex, err);
        int status = 0;
        char tail[256] = "";
        if (rc == CTARGET_OK)
            rc = rv_exec_finish(ex, &status, tail, sizeof tail, err);
        if (rc == CTARGET_OK && status != 0) {
            h->error_set(err, CTARGET_E_REMOTE, 0, 0, "cannot create the run's outputs "
                                                      "directory on the head node: %s", tail);
            rc = CTARGET_E_REMOTE;
        }
        rv_buf_free(&cmd);
    }
    if (rc != CTARGET_OK || !src) {
        free(rd), free(src);
        json_decref(words);
        return rc != CTARGET_OK ? rc : CTARGET_E_NOMEM;
    }
    /* spark-submit's words become the batch's fields */
    json_t *body = json_object(), *conf = json_object(), *pyf = json_array();
    size_t n = json_array_size(words);
    for (size_t i = 1; i + 1 < n; i += 2) {
        const char *k = json_string_value(json_array_get(words, i));
        const char *v = json_string_value(json_array_get(words, i + 1));
        if (!strcmp(k, "--name")) {
            json_object_set_new(body, "name", json_string(v));
        } else if (!strcmp(k, "--conf")) {
            const char *eq = strchr(v, '=');
            char *key = eq ? strndup(v, (size_t)(eq - v)) : NULL;
            if (key)
                json_object_set_new(conf, key, json_string(eq + 1));
            free(key);
        } else if (!strcmp(k, "--py-files")) {
            char *list = strdup(v), *save = NULL;
            for (char *f = list ? strtok_r(list, ",", &save) : NULL; f;
                 f = strtok_r(NULL, ",", &save)) {
                char *abs = dup_cat(src, "/", f);
                json_array_append_new(pyf, json_string(abs ? abs : f));
                free(abs);
            }
            free(list);
        } else if (!strcmp(k, "--master")) {
            json_object_set_new(conf, "spark.master", json_string(v));
        }
        /* --deploy-mode: Livy's own (livy.spark.deploy-mode) */
    }
    json_decref(words);
    char *file = dup_cat(src, "/", run->script);
    json_object_set_new(body, "file", json_string(file ? file : run->script));
    free(file);
    json_t *args = json_array();
    for (size_t i = 0; i < run->n_args; i++) {
        json_t *s = json_string(run->args[i]);
        if (!s) {
            h->error_set(err, CTARGET_E_CONFIG, 0, 0,
                         "argument %zu is not UTF-8: Livy's JSON cannot carry it (use ssh mode)",
                         i + 1);
            json_decref(args), json_decref(body), json_decref(conf), json_decref(pyf);
            free(rd), free(src);
            return CTARGET_E_CONFIG;
        }
        json_array_append_new(args, s);
    }
    json_object_set_new(body, "args", args);
    /* the run's environment: the driver's, through YARN's application-master environment */
    char *outdir = dup_cat(src, "/outputs", ""), *met = dup_cat(rd, "/metrics.jsonl", "");
    json_object_set_new(conf, "spark.yarn.appMasterEnv.CTARGET_RUN_ID", json_string(run->id));
    json_object_set_new(conf, "spark.yarn.appMasterEnv.CTARGET_OUTPUTS_DIR", json_string(outdir));
    json_object_set_new(conf, "spark.yarn.appMasterEnv.CTARGET_METRICS_FILE", json_string(met));
    free(outdir), free(met);
    for (size_t i = 0; i < run->n_env; i++) {
        const char *eq = strchr(run->env[i], '=');
        if (!eq)
            continue;
        char *k = NULL;
        if (asprintf(&k, "spark.yarn.appMasterEnv.%.*s", (int)(eq - run->env[i]), run->env[i]) < 0)
            continue;
        /* a step's inputs/<name> and outputs/<name> are relative to the snapshot root, which
         * is not the driver's working directory under YARN: pass them as absolute paths */
        char *absv = NULL;
        if ((!strncmp(run->env[i], "CTARGET_INPUT_", 14) ||
             !strncmp(run->env[i], "CTARGET_OUTPUT_", 15)) && eq[1] && eq[1] != '/')
            absv = dup_cat(src, "/", eq + 1);
        json_t *v = json_string(absv ? absv : eq + 1);
        free(absv);
        if (v)
            json_object_set_new(conf, k, v);
        free(k);
    }
    json_object_set_new(body, "conf", conf);
    if (json_array_size(pyf))
        json_object_set_new(body, "pyFiles", pyf);
    else
        json_decref(pyf);
    json_t *ans = NULL;
    long st = 0;
    /* POST is not idempotent: a batch of this run's name that Livy already has (a monitor
     * that died after its POST, or a POST whose answer was lost) is adopted, not doubled */
    const char *bname = json_string_value(json_object_get(body, "name"));
    ans = find_batch(c, t, bname);
    for (int attempt = 1; !ans; attempt++) {
        rc = livy(c, t, "POST", "/batches", body, 0, &ans, &st, NULL, err);
        if (rc == CTARGET_OK || !err->transient || attempt == 4)
            break;
        /* 429/5xx: was it created all the same?  If not, POST again after a pause */
        ans = find_batch(c, t, bname);
        if (ans) {
            rc = CTARGET_OK;
            break;
        }
        if (h->sleep_ms(c, 250L * attempt) != CTARGET_OK)
            break;
    }
    json_decref(body);
    free(rd), free(src);
    if (rc != CTARGET_OK)
        return rc;
    json_t *id = json_object_get(ans, "id");
    if (!json_is_integer(id)) {
        json_decref(ans);
        h->error_set(err, CTARGET_E_REMOTE, 0, 0, "Livy answered POST /batches without an id");
        return CTARGET_E_REMOTE;
    }
    if (run->handle) {
        h->obj_set_int(run->handle, "livy_batch_id", json_integer_value(id));
        h->obj_set_str(run->handle, "mode", "livy");
    }
    h->log(c, CTARGET_LOG_INFO, "Livy batch %lld submitted", (long long)json_integer_value(id));
    json_decref(ans);
    return CTARGET_OK;
}

static long long batch_of(const ctarget_run_info *run)
{
    long long id = -1;
    if (!run->handle || !HDI_H->obj_get_int(run->handle, "livy_batch_id", &id))
        return -1;
    return id;
}

/* every log line of the batch, joined by '\n' */
static ctarget_status batch_log(ctarget_call *c, const ctarget_target *t, long long id,
                                rv_buf *out, ctarget_error *err)
{
    long from = 0;
    for (int page = 0; page < 1000; page++) {
        char path[96];
        snprintf(path, sizeof path, "/batches/%lld/log?from=%ld&size=1000", id, from);
        json_t *j = NULL;
        long st = 0;
        ctarget_status rc = livy(c, t, "GET", path, NULL, 1, &j, &st, NULL, err);
        if (rc != CTARGET_OK)
            return rc;
        if (st == 404) {
            json_decref(j);
            return CTARGET_OK;
        }
        json_t *lines = json_object_get(j, "log");
        size_t i;
        json_t *l;
        json_array_foreach(lines, i, l) {
            rv_buf_adds(out, json_string_value(l) ? json_string_value(l) : "");
            rv_buf_add(out, "\n", 1);
        }
        long got = (long)json_array_size(lines);
        /* Livy's server says "total"; its rest-api.md calls it "size" */
        json_t *tj = json_object_get(j, "total");
        long total = (long)json_integer_value(tj ? tj : json_object_get(j, "size"));
        json_decref(j);
        from += got;
        if (!got || from >= total)
            return CTARGET_OK;
    }
    return CTARGET_OK;
}

ctarget_status hdi_livy_poll(void *ctx, ctarget_call *c, ctarget_target *t,
                             const ctarget_run_info *run, long wait_ms, ctarget_run_poll *o,
                             ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    (void)wait_ms;
    long long id = batch_of(run), early = 0;
    if (id < 0) {
        /* canceled before any batch existed: nothing runs */
        if (run->handle && h->obj_get_int(run->handle, "livy_canceled", &early) && early) {
            o->state = CTARGET_RUN_CANCELED;
            snprintf(o->native_state, sizeof o->native_state, "not_submitted");
            return CTARGET_OK;
        }
        o->state = CTARGET_RUN_QUEUED;
        snprintf(o->native_state, sizeof o->native_state, "not_submitted");
        return CTARGET_OK;
    }
    char path[64];
    snprintf(path, sizeof path, "/batches/%lld", id);
    json_t *j = NULL;
    long st = 0;
    ctarget_status rc = livy(c, t, "GET", path, NULL, 1, &j, &st, NULL, err);
    if (rc != CTARGET_OK)
        return rc;
    long long canceled = 0;
    h->obj_get_int(run->handle, "livy_canceled", &canceled);
    if (st == 404) {
        /* Livy forgets a batch once it is deleted */
        if (canceled) {
            o->state = CTARGET_RUN_CANCELED;
            snprintf(o->native_state, sizeof o->native_state, "deleted");
        } else {
            o->state = CTARGET_RUN_NOT_RESPONDING;
            snprintf(o->native_state, sizeof o->native_state, "unknown");
            snprintf(o->reason, sizeof o->reason,
                     "Livy no longer knows batch %lld (the Livy server restarted?)", id);
        }
        json_decref(j);
        return CTARGET_OK;
    }
    const char *s = json_string_value(json_object_get(j, "state"));
    if (!s)
        s = "";
    snprintf(o->native_state, sizeof o->native_state, "%s", s);
    const char *app = json_string_value(json_object_get(j, "appId"));
    if (app && run->handle)
        h->obj_set_str(run->handle, "livy_app_id", app);
    if (!strcmp(s, "not_started")) {
        o->state = CTARGET_RUN_QUEUED;
    } else if (!strcmp(s, "starting")) {
        o->state = CTARGET_RUN_PREPARING;
    } else if (!strcmp(s, "running") || !strcmp(s, "idle") || !strcmp(s, "busy") ||
               !strcmp(s, "shutting_down")) {
        o->state = canceled ? CTARGET_RUN_CANCEL_REQUESTED : CTARGET_RUN_RUNNING;
    } else if (!strcmp(s, "success")) {
        o->state = CTARGET_RUN_COMPLETED;
    } else if (!strcmp(s, "killed") && canceled) {
        o->state = CTARGET_RUN_CANCELED;
    } else if (!strcmp(s, "dead") || !strcmp(s, "error") || !strcmp(s, "killed")) {
        o->state = CTARGET_RUN_FAILED;
        /* the service's own words: the last line of the batch's log that says what broke */
        rv_buf lg = {0};
        char last[400] = "";
        if (batch_log(c, t, id, &lg, err) == CTARGET_OK && lg.len) {
            rv_buf_add(&lg, "", 1);
            char *save = NULL;
            for (char *l = strtok_r(lg.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
                if (strstr(l, "Error") || strstr(l, "Exception") || strstr(l, "killed") ||
                    strstr(l, "Killed"))
                    snprintf(last, sizeof last, "%s", l);
        }
        rv_buf_free(&lg);
        snprintf(o->reason, sizeof o->reason, "Livy batch %lld is %s%s%s", id, s,
                 *last ? ": " : "", last);
    } else {
        json_decref(j);
        h->error_set(err, CTARGET_E_REMOTE, 0, 0, "Livy reported an unknown batch state '%s'", s);
        return CTARGET_E_REMOTE;
    }
    json_decref(j);
    return CTARGET_OK;
}

ctarget_status hdi_livy_read_log(void *ctx, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, uint64_t offset,
                                 ctarget_write_fn out, void *out_arg, ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    long long id = batch_of(run);
    if (id < 0)
        return CTARGET_OK;
    rv_buf lg = {0};
    ctarget_status rc = batch_log(c, t, id, &lg, err);
    if (rc == CTARGET_OK && lg.len > offset &&
        out(out_arg, lg.data + offset, lg.len - (size_t)offset) != 0) {
        h->error_set(err, CTARGET_E_CANCELED, 0, 0, "stopped by the reader");
        rc = CTARGET_E_CANCELED;
    }
    rv_buf_free(&lg);
    return rc;
}

ctarget_status hdi_livy_cancel(void *ctx, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((rv_ctx *)ctx)->h;
    long long id = batch_of(run);
    if (run->handle)
        h->obj_set_int(run->handle, "livy_canceled", 1);
    if (id < 0)
        return CTARGET_OK;
    char path[64];
    snprintf(path, sizeof path, "/batches/%lld", id);
    long st = 0;
    return livy(c, t, "DELETE", path, NULL, 1, NULL, &st, NULL, err);
}
