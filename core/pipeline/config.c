/* The pipeline file: JSON or YAML, checked completely before anything runs.
 *
 *   name: train-and-score            # optional; also the default experiment
 *   experiment: pipelines            # optional
 *   max_parallel: 4                  # steps running at once (1-64, default 4)
 *   continue_on_step_failure: false  # keep running independent steps after a failure
 *   allow_reuse: true                # the default for every step
 *   steps:
 *     - name: prep
 *       target: vm                   # type "script" (the default): any pipeline-capable target
 *       source_directory: prep
 *       script: prep.py
 *       arguments: [--rows, 1000]
 *       outputs: [features]
 *     - name: train
 *       type: databricks             # a databricks target; the other keys are the type's own
 *       target: dbx
 *       source_directory: train
 *       script: train.py
 *       inputs: {features: prep.features}
 *       outputs: [model]
 *       new_cluster: {spark_version: 13.3.x-scala2.12, node_type_id: Standard_DS3_v2}
 *
 * Relative paths are anchored at the file's directory. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "pipeline.h"
#include "../run.h"
#include "../util.h"

/* Keys a step takes besides its type's own: where they go. */
typedef enum { K_STEP, K_RUN } key_home;
static const struct {
    const char *name;
    key_home home;
} common_keys[] = {
    {"name", K_STEP}, {"type", K_STEP}, {"inputs", K_STEP}, {"outputs", K_STEP},
    {"allow_reuse", K_STEP}, {"source", K_STEP},
    {"target", K_RUN}, {"source_directory", K_RUN}, {"script", K_RUN}, {"arguments", K_RUN},
    {"environment", K_RUN}, {"framework", K_RUN}, {"max_run_duration_seconds", K_RUN},
    {"cancel_grace_seconds", K_RUN}, {"node_count", K_RUN}, {"options", K_RUN},
};
static const char *const top_keys[] = {"name", "experiment", "max_parallel",
                                       "continue_on_step_failure", "allow_reuse", "steps",
                                       "description"};

static int common_key(const char *k, key_home *home)
{
    for (size_t i = 0; i < CT_ARRAY_LEN(common_keys); i++)
        if (!strcmp(common_keys[i].name, k)) {
            if (home)
                *home = common_keys[i].home;
            return 1;
        }
    return 0;
}

static const char *closest(const char *k, const char *const *names, size_t n)
{
    const char *best = n ? names[0] : "";
    size_t bd = (size_t)-1;
    for (size_t i = 0; i < n; i++) {
        size_t d = str_edit_distance(k, names[i]);
        if (d < bd) {
            bd = d;
            best = names[i];
        }
    }
    return best;
}

/* Names: steps [A-Za-z0-9_-], 1-64, a letter or digit first; data names [A-Za-z0-9_]
 * (they become CTARGET_INPUT_<NAME> / CTARGET_OUTPUT_<NAME> and directory names). */
static int name_ok(const char *s, int dash)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64 || !isalnum((unsigned char)s[0]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && !(dash && s[i] == '-'))
            return 0;
    return 1;
}

int pl_split_ref(const char *ref, char **step, char **out)
{
    const char *dot = ref ? strrchr(ref, '.') : NULL;
    if (!dot || dot == ref || !dot[1])
        return -1;
    *step = xstrndup(ref, (size_t)(dot - ref));
    *out = xstrdup(dot + 1);
    return 0;
}

long pl_step_index(const pl_config *c, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->steps[i].name, name))
            return (long)i;
    return -1;
}

/* ---- YAML ---------------------------------------------------------------------------------- */

#define YAML_MAX_NODES 100000

typedef struct yconv {
    yaml_document_t *doc;
    size_t nodes;
    const char *what;
    ctarget_error *err;
    int depth;
} yconv;

static json_t *yaml_scalar(const yaml_node_t *n)
{
    const char *v = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return json_stringn(v, len);
    if (!len || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") ||
        !strcmp(v, "NULL"))
        return json_null();
    if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "TRUE"))
        return json_true();
    if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "FALSE"))
        return json_false();
    long long ll;
    if (parse_ll(v, &ll) == 0)
        return json_integer((json_int_t)ll);
    double d;
    const char *p = v + (*v == '-' || *v == '+');
    if ((isdigit((unsigned char)*p) || (*p == '.' && isdigit((unsigned char)p[1]))) &&
        parse_double(v, &d) == 0)
        return json_real(d);
    return json_stringn(v, len);
}

static json_t *yaml_node(yconv *y, yaml_node_t *n)
{
    if (!n)
        return json_null();
    if (++y->nodes > YAML_MAX_NODES || y->depth > 64) {
        ct_err(y->err, CTARGET_E_LIMIT, "pipeline %s: the YAML expands to more than %d nodes "
               "or nests deeper than 64 (anchors used as a bomb?)", y->what, YAML_MAX_NODES);
        return NULL;
    }
    json_t *out = NULL;
    y->depth++;
    switch (n->type) {
    case YAML_SCALAR_NODE:
        out = yaml_scalar(n);
        break;
    case YAML_SEQUENCE_NODE:
        out = json_array();
        for (yaml_node_item_t *it = n->data.sequence.items.start;
             it < n->data.sequence.items.top; it++) {
            json_t *v = yaml_node(y, yaml_document_get_node(y->doc, *it));
            if (!v) {
                json_decref(out);
                out = NULL;
                break;
            }
            json_array_append_new(out, v);
        }
        break;
    case YAML_MAPPING_NODE:
        out = json_object();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top;
             p++) {
            yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
            if (!k || k->type != YAML_SCALAR_NODE) {
                ct_err(y->err, CTARGET_E_CONFIG, "pipeline %s: line %zu: a mapping key must "
                       "be a plain string", y->what, k ? k->start_mark.line + 1 : 0);
                json_decref(out);
                out = NULL;
                break;
            }
            const char *key = (const char *)k->data.scalar.value;
            if (json_object_get(out, key)) {
                ct_err(y->err, CTARGET_E_CONFIG, "pipeline %s: line %zu: key '%s' appears "
                       "twice", y->what, k->start_mark.line + 1, key);
                json_decref(out);
                out = NULL;
                break;
            }
            json_t *v = yaml_node(y, yaml_document_get_node(y->doc, p->value));
            if (!v) {
                json_decref(out);
                out = NULL;
                break;
            }
            json_object_set_new(out, key, v);
        }
        break;
    default:
        out = json_null();
    }
    y->depth--;
    return out;
}

json_t *pl_yaml_load(const char *text, size_t len, const char *what, ctarget_error *err)
{
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) {
        ct_err(err, CTARGET_E_NOMEM, "cannot start the YAML parser");
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    if (!yaml_parser_load(&p, &doc)) {
        ct_err(err, CTARGET_E_CONFIG, "pipeline %s: line %zu column %zu: %s%s%s", what,
               p.problem_mark.line + 1, p.problem_mark.column + 1,
               p.problem ? p.problem : "malformed YAML", p.context ? " " : "",
               p.context ? p.context : "");
        yaml_parser_delete(&p);
        return NULL;
    }
    yconv y = {.doc = &doc, .what = what, .err = err};
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    json_t *j = root ? yaml_node(&y, root) : NULL;
    if (!root)
        ct_err(err, CTARGET_E_CONFIG, "pipeline %s: the file is empty", what);
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    return j;
}

/* ---- checking -------------------------------------------------------------------------------- */

static ctarget_status bad(ctarget_error *err, const char *fmt, ...) CTARGET_PRINTF(2, 3);
static ctarget_status bad(ctarget_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = xvasprintf(fmt, ap);
    va_end(ap);
    ct_err(err, CTARGET_E_CONFIG, "%s", m);
    free(m);
    return CTARGET_E_CONFIG;
}

static char *anchored(const char *base, const char *p)
{
    return p[0] == '/' || !base ? xstrdup(p) : path_join(base, p);
}

/* One step of the file into its normalized form. */
static ctarget_status norm_step(const char *file, const char *base, json_t *s, size_t idx,
                                int reuse_default, json_t **out, ctarget_error *err)
{
    if (!json_is_object(s))
        return bad(err, "pipeline %s: steps[%zu] must be an object (name, target, script, ...)",
                   file, idx);
    const char *name = json_string_value(json_object_get(s, "name"));
    if (!name)
        return bad(err, "pipeline %s: steps[%zu] needs a name", file, idx);
    if (!name_ok(name, 1))
        return bad(err, "pipeline %s: step name '%s' is invalid: 1-64 letters, digits, '_' "
                   "and '-', a letter or digit first", file, name);
    json_t *tv = json_object_get(s, "type");
    if (tv && !json_is_string(tv))
        return bad(err, "pipeline %s: step '%s': type must be a string (script, "
                   "data_transfer, or the type of a target that runs its own kind of steps; "
                   "see ctarget plugins)", file, name);
    const char *type = tv ? json_string_value(tv) : "script";
    if (!name_ok(type, 0))
        return bad(err, "pipeline %s: step '%s': type '%s' is invalid", file, name, type);
    int transfer = !strcmp(type, "data_transfer"), script = !strcmp(type, "script");
    json_t *run = json_object(), *keys = json_object();
    json_t *n = json_pack("{s:s, s:s}", "name", name, "type", type);
    const char *k;
    json_t *v;
    ctarget_status rc = CTARGET_OK;
    json_object_foreach(s, k, v) {
        key_home home;
        if (!common_key(k, &home)) {
            if (script || transfer) {
                const char *names[CT_ARRAY_LEN(common_keys)];
                for (size_t i = 0; i < CT_ARRAY_LEN(common_keys); i++)
                    names[i] = common_keys[i].name;
                rc = bad(err, "pipeline %s: step '%s': unknown key '%s': did you mean '%s'? "
                         "(a %s step takes only the common keys)", file, name, k,
                         closest(k, names, CT_ARRAY_LEN(names)), type);
                break;
            }
            json_object_set(keys, k, v);
        } else if (home == K_RUN) {
            json_object_set(run, k, v);
        }
    }
    /* inputs: {local: "step.output"} */
    json_t *in = json_object_get(s, "inputs");
    if (!rc && in && !json_is_object(in))
        rc = bad(err, "pipeline %s: step '%s': inputs must be an object {name: "
                 "\"step.output\"}", file, name);
    json_object_foreach(rc ? NULL : in, k, v) {
        char *a = NULL, *b = NULL;
        if (!name_ok(k, 0))
            rc = bad(err, "pipeline %s: step '%s': input name '%s' is invalid: letters, "
                     "digits and '_' (it becomes CTARGET_INPUT_%s)", file, name, k, k);
        else if (!json_is_string(v) || pl_split_ref(json_string_value(v), &a, &b))
            rc = bad(err, "pipeline %s: step '%s': input '%s' must name an output as "
                     "\"step.output\"", file, name, k);
        free(a);
        free(b);
        if (rc)
            break;
    }
    json_t *outs = json_object_get(s, "outputs");
    size_t i;
    if (!rc && outs && !json_is_array(outs))
        rc = bad(err, "pipeline %s: step '%s': outputs must be a list of names", file, name);
    json_array_foreach(rc ? NULL : outs, i, v) {
        const char *o = json_string_value(v);
        if (!o || !name_ok(o, 0)) {
            rc = bad(err, "pipeline %s: step '%s': output %s is invalid: letters, digits "
                     "and '_'", file, name, o ? o : "(not a string)");
            break;
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(o, json_string_value(json_array_get(outs, j))))
                rc = bad(err, "pipeline %s: step '%s': output '%s' is listed twice", file,
                         name, o);
        if (!rc && json_object_get(in, o))
            rc = bad(err, "pipeline %s: step '%s': '%s' is both an input and an output", file,
                     name, o);
        if (rc)
            break;
    }
    json_t *ar = json_object_get(s, "allow_reuse");
    if (!rc && ar && !json_is_boolean(ar))
        rc = bad(err, "pipeline %s: step '%s': allow_reuse must be true or false", file, name);
    if (!rc && transfer) {
        const char *src = json_string_value(json_object_get(s, "source"));
        if (json_object_size(run))
            rc = bad(err, "pipeline %s: step '%s': a data_transfer step copies `source` into "
                     "its one output and runs nowhere: drop target, script and the other "
                     "run keys", file, name);
        else if (!src)
            rc = bad(err, "pipeline %s: step '%s': a data_transfer step needs source (a path, "
                     "or \"step.output\")", file, name);
        else if (json_array_size(outs) != 1)
            rc = bad(err, "pipeline %s: step '%s': a data_transfer step has exactly one "
                     "output", file, name);
        if (!rc) {
            char *a = NULL, *b = NULL;
            int ref = strchr(src, '/') == NULL && pl_split_ref(src, &a, &b) == 0;
            free(a);
            free(b);
            char *p = ref ? xstrdup(src) : anchored(base, src);
            json_object_set_new(n, "source", json_string(p));
            json_object_set_new(n, "source_is_output", json_boolean(ref));
            free(p);
        }
    } else if (!rc) {
        if (json_object_get(s, "source"))
            rc = bad(err, "pipeline %s: step '%s': source belongs to data_transfer steps; "
                     "a %s step has source_directory", file, name, type);
        else {
            char *what = xasprintf("%s step '%s'", file, name);
            rc = run_config_check(run, what, base, err);
            free(what);
        }
        if (!rc)
            for (size_t r = 0; r < 3 && !rc; r++) {
                const char *req[] = {"target", "source_directory", "script"};
                if (!json_string_value(json_object_get(run, req[r])))
                    rc = bad(err, "pipeline %s: step '%s' needs %s", file, name, req[r]);
            }
        if (!rc && json_object_get(run, "experiment"))
            rc = bad(err, "pipeline %s: step '%s': the experiment is the pipeline's", file,
                     name);
        if (!rc)
            json_object_set(n, "run", run);
    }
    if (rc) {
        json_decref(run);
        json_decref(keys);
        json_decref(n);
        return rc;
    }
    json_object_set_new(n, "keys", keys);
    json_object_set_new(n, "inputs", in ? json_deep_copy(in) : json_object());
    json_object_set_new(n, "outputs", outs ? json_deep_copy(outs) : json_array());
    json_object_set_new(n, "allow_reuse", json_boolean(ar ? json_is_true(ar) : reuse_default));
    json_decref(run);
    *out = n;
    return CTARGET_OK;
}

static ctarget_status normalize(json_t *j, const char *file, json_t **out, ctarget_error *err)
{
    if (!json_is_object(j))
        return bad(err, "pipeline %s: expected an object with steps (see ctarget(1), PIPELINE "
                   "FILES)", file);
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
        size_t i = 0;
        while (i < CT_ARRAY_LEN(top_keys) && strcmp(top_keys[i], k))
            i++;
        if (i == CT_ARRAY_LEN(top_keys))
            return bad(err, "pipeline %s: unknown key '%s': did you mean '%s'?", file, k,
                       closest(k, top_keys, CT_ARRAY_LEN(top_keys)));
    }
    json_t *name = json_object_get(j, "name"), *exp = json_object_get(j, "experiment");
    json_t *mp = json_object_get(j, "max_parallel"), *cf =
        json_object_get(j, "continue_on_step_failure");
    json_t *ar = json_object_get(j, "allow_reuse"), *steps = json_object_get(j, "steps");
    if (name && !json_is_string(name))
        return bad(err, "pipeline %s: name must be a string", file);
    if (exp && (!json_is_string(exp) || !run_experiment_name_ok(json_string_value(exp))))
        return bad(err, "pipeline %s: experiment must be a name of 3-36 letters, digits, '_' "
                   "and '-', a letter or digit first", file);
    if (mp && (!json_is_integer(mp) || json_integer_value(mp) < 1 ||
               json_integer_value(mp) > 64))
        return bad(err, "pipeline %s: max_parallel must be a whole number from 1 to 64", file);
    if (cf && !json_is_boolean(cf))
        return bad(err, "pipeline %s: continue_on_step_failure must be true or false", file);
    if (ar && !json_is_boolean(ar))
        return bad(err, "pipeline %s: allow_reuse must be true or false", file);
    if (!json_is_array(steps) || !json_array_size(steps))
        return bad(err, "pipeline %s: steps must be a non-empty list of steps", file);
    if (json_array_size(steps) > PL_MAX_STEPS)
        return bad(err, "pipeline %s: %zu steps; at most %d", file, json_array_size(steps),
                   PL_MAX_STEPS);
    const char *nm = name ? json_string_value(name) : NULL;
    const char *ex = exp ? json_string_value(exp) : nm && run_experiment_name_ok(nm) ? nm
                                                                                     : "pipelines";
    char *base = xstrdup(file), *slash = strrchr(base, '/');
    if (slash)
        *slash = '\0';
    json_t *ns = json_array();
    size_t i;
    ctarget_status rc = CTARGET_OK;
    json_array_foreach(steps, i, v) {
        json_t *s = NULL;
        if ((rc = norm_step(file, slash ? base : NULL, v, i, ar ? json_is_true(ar) : 1, &s,
                            err)))
            break;
        json_array_append_new(ns, s);
    }
    free(base);
    if (rc) {
        json_decref(ns);
        return rc;
    }
    *out = json_pack("{s:s?, s:s, s:I, s:b, s:o}", "name", nm, "experiment", ex,
                     "max_parallel", mp ? json_integer_value(mp) : (json_int_t)4,
                     "continue_on_step_failure", cf ? json_is_true(cf) : 0, "steps", ns);
    return CTARGET_OK;
}

void pl_config_free(pl_config *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->steps[i].deps);
    free(c->steps);
    json_decref(c->doc);
    memset(c, 0, sizeof *c);
}

/* Depth-first search for a cycle; on one, the path in words. */
static int cycle_from(const pl_config *c, size_t i, int *mark, size_t *stack, size_t depth,
                      strbuf *why)
{
    mark[i] = 1;
    stack[depth] = i;
    for (size_t d = 0; d < c->steps[i].n_deps; d++) {
        size_t j = c->steps[i].deps[d];
        if (mark[j] == 1) {
            size_t from = 0;
            while (stack[from] != j)
                from++;
            for (size_t k = from; k <= depth; k++)
                sb_addf(why, "%s <- ", c->steps[stack[k]].name);
            sb_adds(why, c->steps[j].name);
            return 1;
        }
        if (!mark[j] && cycle_from(c, j, mark, stack, depth + 1, why))
            return 1;
    }
    mark[i] = 2;
    return 0;
}

static ctarget_status add_dep(pl_config *c, size_t i, const char *ref, const char *what,
                              ctarget_error *err)
{
    pl_step *s = &c->steps[i];
    char *st = NULL, *out = NULL;
    pl_split_ref(ref, &st, &out);
    long j = pl_step_index(c, st);
    ctarget_status rc = CTARGET_OK;
    if (j < 0) {
        const char **names = xcalloc(c->n, sizeof *names);
        for (size_t k = 0; k < c->n; k++)
            names[k] = c->steps[k].name;
        rc = bad(err, "pipeline: step '%s': %s '%s' names step '%s', which does not exist "
                 "(did you mean '%s'?)", s->name, what, ref, st, closest(st, names, c->n));
        free(names);
    } else if ((size_t)j == i) {
        rc = bad(err, "pipeline: step '%s': %s '%s' is the step's own output", s->name, what,
                 ref);
    } else {
        json_t *outs = c->steps[j].outputs;
        size_t k;
        json_t *o;
        int found = 0;
        json_array_foreach(outs, k, o) found |= !strcmp(json_string_value(o), out);
        if (!found) {
            char *list = NULL;
            strbuf sb;
            sb_init(&sb);
            json_array_foreach(outs, k, o) sb_addf(&sb, "%s%s", k ? ", " : "",
                                                   json_string_value(o));
            list = sb_detach(&sb);
            rc = bad(err, "pipeline: step '%s': %s '%s': step '%s' has no output '%s' (its "
                     "outputs: %s)", s->name, what, ref, st, out, *list ? list : "none");
            free(list);
        } else {
            int dup = 0;
            for (size_t d = 0; d < s->n_deps; d++)
                dup |= s->deps[d] == (size_t)j;
            if (!dup) {
                s->deps = xrealloc(s->deps, (s->n_deps + 1) * sizeof *s->deps);
                s->deps[s->n_deps++] = (size_t)j;
            }
        }
    }
    free(st);
    free(out);
    return rc;
}

ctarget_status pl_config_from_doc(json_t *doc, pl_config *c, ctarget_error *err)
{
    memset(c, 0, sizeof *c);
    c->doc = json_incref(doc);
    c->name = json_string_value(json_object_get(doc, "name"));
    c->experiment = json_string_value(json_object_get(doc, "experiment"));
    c->max_parallel = json_integer_value(json_object_get(doc, "max_parallel"));
    if (c->max_parallel < 1)
        c->max_parallel = 4;
    c->continue_on_failure = json_is_true(json_object_get(doc, "continue_on_step_failure"));
    json_t *steps = json_object_get(doc, "steps");
    c->n = json_array_size(steps);
    c->steps = xcalloc(c->n + 1, sizeof *c->steps);
    for (size_t i = 0; i < c->n; i++) {
        json_t *s = json_array_get(steps, i);
        pl_step *p = &c->steps[i];
        p->name = json_string_value(json_object_get(s, "name"));
        p->type = json_string_value(json_object_get(s, "type"));
        p->run = json_object_get(s, "run");
        p->keys = json_object_get(s, "keys");
        p->inputs = json_object_get(s, "inputs");
        p->outputs = json_object_get(s, "outputs");
        p->source = json_string_value(json_object_get(s, "source"));
        p->allow_reuse = json_is_true(json_object_get(s, "allow_reuse"));
        p->source_is_output = json_is_true(json_object_get(s, "source_is_output"));
        if (!p->name || !p->type) {
            pl_config_free(c);
            return bad(err, "the stored pipeline document is damaged (step %zu)", i);
        }
        for (size_t j = 0; j < i; j++)
            if (!strcmp(c->steps[j].name, p->name)) {
                ct_err(err, CTARGET_E_CONFIG, "pipeline: two steps are named '%s': step names "
                       "are unique", p->name);
                pl_config_free(c);
                return CTARGET_E_CONFIG;
            }
    }
    ctarget_status rc = CTARGET_OK;
    for (size_t i = 0; i < c->n && !rc; i++) {
        const char *k;
        json_t *v;
        json_object_foreach(c->steps[i].inputs, k, v) {
            char *what = xasprintf("input '%s' =", k);
            rc = add_dep(c, i, json_string_value(v), what, err);
            free(what);
            if (rc)
                break;
        }
        if (!rc && c->steps[i].source_is_output)
            rc = add_dep(c, i, c->steps[i].source, "source", err);
    }
    if (!rc) {
        int *mark = xcalloc(c->n, sizeof *mark);
        size_t *stack = xcalloc(c->n + 1, sizeof *stack);
        strbuf why;
        sb_init(&why);
        for (size_t i = 0; i < c->n && !rc; i++)
            if (!mark[i] && cycle_from(c, i, mark, stack, 0, &why))
                rc = bad(err, "pipeline: the steps' data form a cycle (%s): a step can only "
                         "use outputs of steps that do not depend on it", why.data);
        sb_free(&why);
        free(mark);
        free(stack);
    }
    if (rc)
        pl_config_free(c);
    return rc;
}

ctarget_status pl_config_load(const char *file, pl_config *c, ctarget_error *err)
{
    memset(c, 0, sizeof *c);
    size_t len = 0;
    char *text = file_read_all(file, &len);
    if (!text) {
        ct_err_errno(err, CTARGET_E_NOT_FOUND, errno, "cannot read pipeline file %s", file);
        return CTARGET_E_NOT_FOUND;
    }
    if (len > 4 * 1024 * 1024) {
        free(text);
        ct_err(err, CTARGET_E_LIMIT, "pipeline file %s is larger than 4 MB", file);
        return CTARGET_E_LIMIT;
    }
    size_t i = 0;
    while (i < len && isspace((unsigned char)text[i]))
        i++;
    json_t *j;
    if (i < len && text[i] == '{') {
        json_error_t je;
        j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
        if (!j)
            ct_err(err, CTARGET_E_CONFIG, "pipeline %s: line %d: %s", file, je.line, je.text);
    } else {
        j = pl_yaml_load(text, len, file, err);
    }
    free(text);
    if (!j)
        return err->code ? err->code : CTARGET_E_CONFIG;
    json_t *doc = NULL;
    ctarget_status rc = normalize(j, file, &doc, err);
    json_decref(j);
    if (rc)
        return rc;
    rc = pl_config_from_doc(doc, c, err);
    json_decref(doc);
    if (rc && !strncmp(err->message, "pipeline: ", 10)) {
        /* name the file in graph errors too */
        char *m = xasprintf("pipeline %s: %s", file, err->message + 10);
        ct_err(err, rc, "%s", m);
        free(m);
    }
    return rc;
}
