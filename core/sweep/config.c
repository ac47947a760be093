/* The sweep configuration file (JSON):
 *   {"run": {run configuration} | "runconfig.json",
 *    "parameters": {"lr": {"loguniform": [-9.2, -2.3]}, "batch": {"choice": [16, 32]}},
 *    "sampling": "random" | "grid" | "bayesian",  "seed": 42,
 *    "primary_metric": "accuracy", "goal": "maximize" | "minimize",
 *    "early_termination": {"policy": "bandit", "slack_factor": 0.1, ...},
 *    "max_total_runs": 20, "max_concurrent_runs": 4, "max_duration_minutes": 60,
 *    "argument_style": "--name value" | "name=value"}
 * Checked completely before anything is recorded; the stored copy has the seed and limits
 * filled in, so a restarted driver derives exactly the same children. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "sweep.h"
#include "../run.h"
#include "../util.h"

static const char *const top_keys[] = {
    "run", "parameters", "sampling", "seed", "primary_metric", "goal", "early_termination",
    "max_total_runs", "max_concurrent_runs", "max_duration_minutes", "argument_style",
};

const char *sw_sampling_name(sw_sampling s)
{
    return s == SW_GRID ? "grid" : s == SW_BAYESIAN ? "bayesian" : "random";
}

static ctarget_status bad(ctarget_error *err, const char *what, const char *fmt, const char *x)
{
    char *m = xasprintf(fmt, x);
    ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: %s", what, m);
    free(m);
    return CTARGET_E_CONFIG;
}

static ctarget_status check_top(json_t *doc, const char *what, ctarget_error *err)
{
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v) {
        const char *best = top_keys[0];
        size_t bd = (size_t)-1, i;
        for (i = 0; i < CT_ARRAY_LEN(top_keys); i++) {
            if (!strcmp(top_keys[i], k))
                break;
            size_t d = str_edit_distance(k, top_keys[i]);
            if (d < bd)
                bd = d, best = top_keys[i];
        }
        if (i == CT_ARRAY_LEN(top_keys)) {
            ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: unknown key '%s': did you "
                   "mean '%s'?", what, k, best);
            return CTARGET_E_CONFIG;
        }
    }
    return CTARGET_OK;
}

static int get_limit(json_t *doc, const char *k, long long *out)
{
    json_t *v = json_object_get(doc, k);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return -1;
    *out = json_integer_value(v);
    return 1;
}

/* Everything but the run configuration, which the file's loader checks (it needs the
 * file's directory). */
static ctarget_status parse_doc(json_t *doc, const char *what, sw_config *c, ctarget_error *err)
{
    ctarget_status rc;
    if ((rc = check_top(doc, what, err)))
        return rc;
    c->run = json_object_get(doc, "run");
    if (!json_is_object(c->run))
        return bad(err, what, "'run' must be the run configuration of the children (an object "
                   "with source_directory, script, target, ...) or a run configuration file%s",
                   "");
    if ((rc = sw_space_parse(json_object_get(doc, "parameters"), what, &c->space, err)))
        return rc;
    const char *smp = json_string_value(json_object_get(doc, "sampling"));
    json_t *smpv = json_object_get(doc, "sampling");
    if (smpv && !smp)
        return bad(err, what, "'sampling' must be \"grid\", \"random\" or \"bayesian\"%s", "");
    if (!smp || !strcmp(smp, "random"))
        c->sampling = SW_RANDOM;
    else if (!strcmp(smp, "grid"))
        c->sampling = SW_GRID;
    else if (!strcmp(smp, "bayesian"))
        c->sampling = SW_BAYESIAN;
    else
        return bad(err, what, "sampling '%s' is unknown: grid, random or bayesian", smp);
    json_t *seed = json_object_get(doc, "seed");
    if (seed && (!json_is_integer(seed) || json_integer_value(seed) < 0))
        return bad(err, what, "'seed' must be a whole number >= 0%s", "");
    c->seed = seed ? (uint64_t)json_integer_value(seed) : 0;
    c->metric = json_string_value(json_object_get(doc, "primary_metric"));
    if (!c->metric || !*c->metric)
        return bad(err, what, "'primary_metric' must name the metric the script logs (as "
                   "{\"name\": \"accuracy\", \"value\": ...} lines)%s", "");
    const char *goal = json_string_value(json_object_get(doc, "goal"));
    if (!goal || (strcmp(goal, "maximize") && strcmp(goal, "minimize")))
        return bad(err, what, "'goal' must be \"maximize\" or \"minimize\"%s", "");
    c->maximize = !strcmp(goal, "maximize");
    if ((rc = sw_policy_parse(json_object_get(doc, "early_termination"), what, &c->policy, err)))
        return rc;
    const char *style = json_string_value(json_object_get(doc, "argument_style"));
    if (json_object_get(doc, "argument_style") &&
        (!style || (strcmp(style, "--name value") && strcmp(style, "name=value"))))
        return bad(err, what, "'argument_style' must be \"--name value\" or \"name=value\"%s", "");
    c->arg_style = style && !strcmp(style, "name=value");
    if (c->sampling == SW_GRID) {
        for (size_t i = 0; i < c->space.n; i++)
            if (c->space.p[i].dist != SW_CHOICE)
                return bad(err, what, "grid sampling takes choice parameters only: make '%s' a "
                           "choice, or use random or bayesian sampling", c->space.p[i].name);
    }
    if (c->sampling == SW_BAYESIAN && c->policy.kind != SW_POLICY_NONE)
        return bad(err, what, "bayesian sampling learns from finished children and takes no "
                   "early termination policy: drop early_termination or use random%s", "");
    c->max_total = 0;
    int r = get_limit(doc, "max_total_runs", &c->max_total);
    if (r < 0)
        return bad(err, what, "'max_total_runs' must be a whole number >= 1%s", "");
    uint64_t grid = c->sampling == SW_GRID ? sw_grid_size(&c->space) : 0;
    if (!r && c->sampling != SW_GRID)
        return bad(err, what, "'max_total_runs' is required with %s sampling (how many "
                   "children to run)", sw_sampling_name(c->sampling));
    if (c->sampling == SW_GRID && (!r || (uint64_t)c->max_total > grid))
        c->max_total = grid > 100000 ? 100000 : (long long)grid; /* the whole grid */
    if (c->max_total > 100000)
        return bad(err, what, "'max_total_runs' is at most 100000%s", "");
    c->max_concurrent = c->max_total;
    if (get_limit(doc, "max_concurrent_runs", &c->max_concurrent) < 0)
        return bad(err, what, "'max_concurrent_runs' must be a whole number >= 1%s", "");
    c->max_minutes = 10080; /* Azure ML's default: 7 days */
    if (get_limit(doc, "max_duration_minutes", &c->max_minutes) < 0)
        return bad(err, what, "'max_duration_minutes' must be a whole number >= 1%s", "");
    return CTARGET_OK;
}

static void fill_defaults(sw_config *c)
{
    json_t *d = c->doc;
    if (!json_object_get(d, "seed")) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s)
            s = (uint64_t)time_now_ms();
        c->seed = s >> 1; /* JSON integers are signed */
        json_object_set_new(d, "seed", json_integer((json_int_t)c->seed));
    }
    json_object_set_new(d, "sampling", json_string(sw_sampling_name(c->sampling)));
    json_object_set_new(d, "max_total_runs", json_integer(c->max_total));
    json_object_set_new(d, "max_concurrent_runs", json_integer(c->max_concurrent));
    json_object_set_new(d, "max_duration_minutes", json_integer(c->max_minutes));
}

ctarget_status sw_config_load(const char *file, sw_config *c, ctarget_error *err)
{
    memset(c, 0, sizeof *c);
    json_error_t je;
    json_t *doc = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!doc && je.line < 1) { /* not read at all */
        ct_err(err, CTARGET_E_NOT_FOUND, "sweep configuration %s: %s", file, je.text);
        return CTARGET_E_NOT_FOUND;
    }
    if (!doc) {
        ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: %s (line %d)", file, je.text,
               je.line);
        return CTARGET_E_CONFIG;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        return bad(err, file, "expected a JSON object%s", "");
    }
    c->doc = doc;
    char *dir = xstrdup(file);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    const char *base = slash ? dir : NULL;
    ctarget_status rc = CTARGET_OK;
    json_t *run = json_object_get(doc, "run");
    if (json_is_string(run)) {
        /* a run configuration file, relative to this one */
        char *path = base && json_string_value(run)[0] != '/'
                         ? path_join(base, json_string_value(run))
                         : xstrdup(json_string_value(run));
        json_t *rj = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        if (!rj) {
            ct_err(err, CTARGET_E_CONFIG, "run configuration %s (named by sweep configuration "
                   "%s): %s", path, file, je.text);
            rc = CTARGET_E_CONFIG;
        } else {
            char *rdir = xstrdup(path);
            char *rs = strrchr(rdir, '/');
            if (rs)
                *rs = '\0';
            rc = run_config_check(rj, path, rs ? rdir : NULL, err);
            free(rdir);
            json_object_set_new(doc, "run", rj);
        }
        free(path);
    } else if (json_is_object(run)) {
        char *what = xasprintf("%s (its 'run')", file);
        rc = run_config_check(run, what, base, err);
        free(what);
    }
    free(dir);
    if (!rc)
        rc = parse_doc(doc, file, c, err);
    if (!rc)
        fill_defaults(c);
    if (rc)
        sw_config_free(c);
    return rc;
}

ctarget_status sw_config_from_doc(json_t *doc, sw_config *c, ctarget_error *err)
{
    memset(c, 0, sizeof *c);
    c->doc = json_incref(doc);
    ctarget_status rc = parse_doc(doc, "(stored)", c, err);
    if (rc)
        sw_config_free(c);
    return rc;
}

void sw_config_free(sw_config *c)
{
    sw_space_free(&c->space);
    json_decref(c->doc);
    memset(c, 0, sizeof *c);
}
