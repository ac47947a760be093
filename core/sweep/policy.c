/* Early termination policies, with Azure ML HyperDrive's documented semantics: the SDK v1
 * reference pages of azureml.train.hyperdrive.BanditPolicy, MedianStoppingPolicy and
 * TruncationSelectionPolicy (learn.microsoft.com/python/api/azureml-train-core/
 * azureml.train.hyperdrive.banditpolicy, ...medianstoppingpolicy,
 * ...truncationselectionpolicy) and the R SDK's identical texts with their examples
 * (azure.github.io/azureml-sdk-for-r/reference/truncation_selection_policy.html); SDK v2
 * (azure.ai.ml.sweep) has the same three policies and parameters.  exclude_finished_jobs is
 * not in any of those pages: it is ours (issue 14), defined below.  Quoted below where the
 * wording decides:
 *
 * - An interval is one logged value of the primary metric: value i of a child is its
 *   interval i+1.  "The policy applies every multiple of evaluation_interval that is greater
 *   than or equal to delay_evaluation" (and >= 1).
 * - Only runs that have reached interval N take part in the evaluation at N, each with its
 *   values up to N only ("its performance is only compared with the performance of other
 *   runs up to interval N even if they reported metrics for intervals greater than N").
 * - BanditPolicy: "Any run that doesn't fall within the slack factor or slack amount of the
 *   evaluation metric with respect to the best performing run will be terminated."  With Y
 *   the run's best value up to N and B the best value up to N of any run: maximising, the
 *   run stops when Y * (1 + slack_factor) < B (the documented example: best 0.8, slack 0.1,
 *   stop below 0.8 / 1.1 = 0.727), or Y + slack_amount < B; minimising, when
 *   Y / (1 + slack_factor) > B, or Y - slack_amount > B.
 * - MedianStoppingPolicy: "a run will be canceled at interval N if its best primary metric
 *   reported up to interval N is worse than the median of the running averages for
 *   intervals 1:N across all runs" (the run itself included).
 * - TruncationSelectionPolicy: "cancels a given percentage of lowest performing runs at each
 *   evaluation interval": at N the runs are ranked by their value at interval N and the run
 *   stops when it is among the floor(count * truncation_percentage / 100) lowest (ties go
 *   against the later child).  exclude_finished_jobs (default false) leaves finished runs
 *   out of the ranking, so the running ones compete only with each other. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweep.h"
#include "../util.h"

const char *sw_policy_name(sw_policy_kind k)
{
    switch (k) {
    case SW_POLICY_BANDIT: return "bandit";
    case SW_POLICY_MEDIAN: return "median_stopping";
    case SW_POLICY_TRUNCATION: return "truncation_selection";
    default: return "none";
    }
}

int sw_policy_applies(const sw_policy *p, size_t n)
{
    if (p->kind == SW_POLICY_NONE || n < 1)
        return 0;
    return n % (size_t)p->evaluation_interval == 0 && n >= (size_t)p->delay_evaluation;
}

/* better(a, b): a is strictly better than b under the goal */
static int better(int maximize, double a, double b)
{
    return maximize ? a > b : a < b;
}

static double best_upto(const sw_series *s, size_t n, int maximize)
{
    double b = s->v[0];
    for (size_t i = 1; i < n; i++)
        if (better(maximize, s->v[i], b))
            b = s->v[i];
    return b;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bandit(const sw_policy *p, int maximize, const sw_series *all, size_t n, size_t self,
                  size_t N, char *why, size_t wl)
{
    double y = best_upto(&all[self], N, maximize), b = y;
    for (size_t i = 0; i < n; i++)
        if (all[i].n >= N) {
            double x = best_upto(&all[i], N, maximize);
            if (better(maximize, x, b))
                b = x;
        }
    int stop;
    double limit;
    if (p->slack_factor > 0) {
        stop = maximize ? y * (1 + p->slack_factor) < b : y / (1 + p->slack_factor) > b;
        limit = maximize ? b / (1 + p->slack_factor) : b * (1 + p->slack_factor);
    } else {
        stop = maximize ? y + p->slack_amount < b : y - p->slack_amount > b;
        limit = maximize ? b - p->slack_amount : b + p->slack_amount;
    }
    if (stop)
        snprintf(why, wl, "early termination (bandit policy, slack %s %g) at interval %zu: "
                 "best value %g is %s than %g, the limit from the best run's %g",
                 p->slack_factor > 0 ? "factor" : "amount",
                 p->slack_factor > 0 ? p->slack_factor : p->slack_amount, N, y,
                 maximize ? "lower" : "higher", limit, b);
    return stop;
}

static int median(int maximize, const sw_series *all, size_t n, size_t self, size_t N,
                  char *why, size_t wl)
{
    double *avg = xcalloc(n, sizeof *avg);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (all[i].n >= N) {
            double s = 0;
            for (size_t j = 0; j < N; j++)
                s += all[i].v[j];
            avg[k++] = s / (double)N;
        }
    qsort(avg, k, sizeof *avg, cmp_double);
    double med = k % 2 ? avg[k / 2] : (avg[k / 2 - 1] + avg[k / 2]) / 2;
    free(avg);
    double y = best_upto(&all[self], N, maximize);
    int stop = better(maximize, med, y);
    if (stop)
        snprintf(why, wl, "early termination (median stopping policy) at interval %zu: best "
                 "value %g is worse than %g, the median of the running averages of %zu runs",
                 N, y, med, k);
    return stop;
}

static int truncation(const sw_policy *p, int maximize, const sw_series *all, size_t n,
                      size_t self, size_t N, char *why, size_t wl)
{
    double y = all[self].v[N - 1];
    size_t count = 0, worse_rank = 0;
    for (size_t i = 0; i < n; i++) {
        if (all[i].n < N || (p->exclude_finished && all[i].finished && i != self))
            continue;
        count++;
        double x = all[i].v[N - 1];
        /* how many rank below self: strictly worse, or equal and a later child (the
         * later child loses a tie) */
        if (i != self && (better(maximize, y, x) || (x == y && i > self)))
            worse_rank++;
    }
    size_t cut = count * (size_t)p->truncation_percentage / 100;
    int stop = worse_rank < cut;
    if (stop)
        snprintf(why, wl, "early termination (truncation selection policy, %d%%) at interval "
                 "%zu: value %g is among the lowest %zu of %zu runs", p->truncation_percentage,
                 N, y, cut, count);
    return stop;
}

int sw_policy_stop(const sw_policy *p, int maximize, const sw_series *all, size_t n, size_t self,
                   size_t N, char *why, size_t wl)
{
    why[0] = '\0';
    if (self >= n || all[self].n < N || !sw_policy_applies(p, N))
        return 0;
    switch (p->kind) {
    case SW_POLICY_BANDIT: return bandit(p, maximize, all, n, self, N, why, wl);
    case SW_POLICY_MEDIAN: return median(maximize, all, n, self, N, why, wl);
    case SW_POLICY_TRUNCATION: return truncation(p, maximize, all, n, self, N, why, wl);
    default: return 0;
    }
}

/* ---- configuration ------------------------------------------------------------------------- */

static ctarget_status bad(ctarget_error *err, const char *what, const char *msg)
{
    ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: early_termination: %s", what, msg);
    return CTARGET_E_CONFIG;
}

static int get_int(json_t *o, const char *k, long long dflt, long long *out)
{
    json_t *v = json_object_get(o, k);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v))
        return -1;
    *out = json_integer_value(v);
    return 0;
}

ctarget_status sw_policy_parse(json_t *o, const char *what, sw_policy *p, ctarget_error *err)
{
    memset(p, 0, sizeof *p);
    p->evaluation_interval = 1;
    if (!o || json_is_null(o))
        return CTARGET_OK;
    if (!json_is_object(o))
        return bad(err, what, "expected an object such as {\"policy\": \"bandit\", "
                   "\"slack_factor\": 0.1}");
    static const char *const keys[] = {"policy", "evaluation_interval", "delay_evaluation",
                                       "slack_factor", "slack_amount", "truncation_percentage",
                                       "exclude_finished_jobs"};
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        size_t i = 0;
        while (i < CT_ARRAY_LEN(keys) && strcmp(keys[i], k))
            i++;
        if (i == CT_ARRAY_LEN(keys)) {
            char *m = xasprintf("unknown key '%s' (keys: policy, evaluation_interval, "
                                "delay_evaluation, slack_factor, slack_amount, "
                                "truncation_percentage, exclude_finished_jobs)", k);
            bad(err, what, m);
            free(m);
            return CTARGET_E_CONFIG;
        }
    }
    const char *name = json_string_value(json_object_get(o, "policy"));
    if (!name)
        return bad(err, what, "'policy' must be \"bandit\", \"median_stopping\", "
                   "\"truncation_selection\" or \"none\"");
    if (!strcmp(name, "bandit"))
        p->kind = SW_POLICY_BANDIT;
    else if (!strcmp(name, "median_stopping"))
        p->kind = SW_POLICY_MEDIAN;
    else if (!strcmp(name, "truncation_selection"))
        p->kind = SW_POLICY_TRUNCATION;
    else if (!strcmp(name, "none"))
        p->kind = SW_POLICY_NONE;
    else
        return bad(err, what, "'policy' must be \"bandit\", \"median_stopping\", "
                   "\"truncation_selection\" or \"none\"");
    long long ei, de, tp;
    if (get_int(o, "evaluation_interval", 1, &ei) || ei < 1 || ei > 1000000)
        return bad(err, what, "'evaluation_interval' must be a whole number >= 1");
    if (get_int(o, "delay_evaluation", 0, &de) || de < 0 || de > 1000000)
        return bad(err, what, "'delay_evaluation' must be a whole number >= 0");
    p->evaluation_interval = (int)ei;
    p->delay_evaluation = (int)de;
    json_t *sf = json_object_get(o, "slack_factor"), *sa = json_object_get(o, "slack_amount");
    json_t *tpv = json_object_get(o, "truncation_percentage");
    json_t *ex = json_object_get(o, "exclude_finished_jobs");
    if (p->kind != SW_POLICY_BANDIT && (sf || sa))
        return bad(err, what, "slack_factor and slack_amount belong to the bandit policy");
    if (p->kind != SW_POLICY_TRUNCATION && (tpv || ex))
        return bad(err, what, "truncation_percentage and exclude_finished_jobs belong to the "
                   "truncation_selection policy");
    if (p->kind == SW_POLICY_BANDIT) {
        if ((sf && sa) || (!sf && !sa))
            return bad(err, what, "the bandit policy needs exactly one of slack_factor and "
                       "slack_amount");
        json_t *x = sf ? sf : sa;
        if (!json_is_number(x) || !(json_number_value(x) > 0) || !isfinite(json_number_value(x)))
            return bad(err, what, sf ? "'slack_factor' must be a number > 0 (0.1 allows 10%)"
                                     : "'slack_amount' must be a number > 0");
        (sf ? &p->slack_factor : &p->slack_amount)[0] = json_number_value(x);
    }
    if (p->kind == SW_POLICY_TRUNCATION) {
        if (get_int(o, "truncation_percentage", -1, &tp) || tp < 1 || tp > 99)
            return bad(err, what, "'truncation_percentage' must be a whole number from 1 to 99");
        p->truncation_percentage = (int)tp;
        if (ex && !json_is_boolean(ex))
            return bad(err, what, "'exclude_finished_jobs' must be true or false");
        p->exclude_finished = json_is_true(ex);
    }
    return CTARGET_OK;
}
