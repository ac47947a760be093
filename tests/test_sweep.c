/* Hyperparameter sweeps: the pure parts (PRNG, parameter space, sampling, termination
 * policies on scripted metric streams) as unit tests, then whole sweeps through the real
 * ctarget command on the testrun plugin (simulated children with scripted metric curves)
 * and on remotevm against the real sshd fixture. */
#define _GNU_SOURCE
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runlib.h"
#include "sshfix.h"
#include "sweep/sweep.h"

static sf_sshd S;
static int S_ok;

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j)
        printf("bad JSON in a test: %s: %s\n", e.text, text);
    return j;
}

/* ---- PRNG ------------------------------------------------------------------------------------ */

/* The published reference outputs of splitmix64 (seed 0) and xoshiro256** (state 1,2,3,4):
 * our generator is the reference one, so a seed means the same children everywhere. */
static void t_prng_matches_reference_outputs(void)
{
    uint64_t st = 0;
    CU_ASSERT_EQUAL(sw_splitmix64(&st), UINT64_C(0xe220a8397b1dcdaf));
    CU_ASSERT_EQUAL(sw_splitmix64(&st), UINT64_C(0x6e789e6aa1b965f4));
    CU_ASSERT_EQUAL(sw_splitmix64(&st), UINT64_C(0x06c45d188009454f));
    sw_rng r = {{1, 2, 3, 4}};
    CU_ASSERT_EQUAL(sw_rng_next(&r), UINT64_C(11520));
    CU_ASSERT_EQUAL(sw_rng_next(&r), UINT64_C(0));
    CU_ASSERT_EQUAL(sw_rng_next(&r), UINT64_C(1509978240));
    CU_ASSERT_EQUAL(sw_rng_next(&r), UINT64_C(1215971899390074240));
    sw_rng_seed(&r, 7);
    for (int i = 0; i < 10000; i++) {
        double u = sw_rng_unit(&r);
        CU_ASSERT(u >= 0 && u < 1);
        CU_ASSERT(sw_rng_below(&r, 3) < 3);
    }
}

/* ---- space and sampling ----------------------------------------------------------------------- */

static sw_space space_of(const char *text)
{
    json_t *j = parse(text);
    sw_space sp;
    ctarget_error e;
    ctarget_error_init(&e);
    if (sw_space_parse(j, "test", &sp, &e))
        printf("space: %s\n", e.message);
    json_decref(j);
    return sp;
}

static char *args_text(const sw_space *sp, json_t *params, int style)
{
    json_t *a = sw_arguments(sp, params, style);
    char *s = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    return s;
}

static void t_grid_gives_the_cartesian_product_in_order(void)
{
    sw_space sp = space_of("{\"a\": {\"choice\": [1, 2]}, \"b\": {\"choice\": [\"x\", \"y\", \"z\"]}}");
    CU_ASSERT_EQUAL(sw_grid_size(&sp), 6);
    static const char *const want[] = {
        "[\"--a\",\"1\",\"--b\",\"x\"]", "[\"--a\",\"1\",\"--b\",\"y\"]",
        "[\"--a\",\"1\",\"--b\",\"z\"]", "[\"--a\",\"2\",\"--b\",\"x\"]",
        "[\"--a\",\"2\",\"--b\",\"y\"]", "[\"--a\",\"2\",\"--b\",\"z\"]"};
    for (uint64_t i = 0; i < 6; i++) {
        json_t *p = sw_grid_point(&sp, i);
        char *a = args_text(&sp, p, 0);
        CU_ASSERT_STRING_EQUAL(a, want[i]);
        free(a);
        json_decref(p);
    }
    json_t *p = sw_grid_point(&sp, 4);
    char *a = args_text(&sp, p, 1);
    CU_ASSERT_STRING_EQUAL(a, "[\"a=2\",\"b=y\"]");
    free(a);
    json_decref(p);
    sw_space_free(&sp);
    sp = space_of("{\"a\": {\"choice\": [1, 2]}, \"lr\": {\"uniform\": [0, 1]}}");
    CU_ASSERT_EQUAL(sw_grid_size(&sp), 0); /* not a grid: a continuous parameter */
    sw_space_free(&sp);
}

static const char ALL[] =
    "{\"c\": {\"choice\": [\"relu\", \"tanh\", 3]}, \"ri\": {\"randint\": [5]},"
    " \"u\": {\"uniform\": [-1, 2]}, \"qu\": {\"quniform\": [0, 100, 10]},"
    " \"lu\": {\"loguniform\": [-6.9, -2.3]}, \"qlu\": {\"qloguniform\": [0, 4.6, 0.5]},"
    " \"n\": {\"normal\": [10, 2]}, \"ln\": {\"lognormal\": [0, 0.5]}}";

static void t_random_is_seeded_per_child_and_in_range(void)
{
    sw_space sp = space_of(ALL);
    CU_ASSERT_EQUAL_FATAL(sp.n, 8);
    /* the same seed and index: the same child, however many were drawn before */
    json_t *a = sw_random_point(&sp, 42, 17);
    for (int i = 0; i < 5; i++)
        json_decref(sw_random_point(&sp, 42, (uint64_t)i));
    json_t *b = sw_random_point(&sp, 42, 17), *c = sw_random_point(&sp, 43, 17);
    CU_ASSERT(json_equal(a, b));
    CU_ASSERT(!json_equal(a, c));
    json_decref(a);
    json_decref(b);
    json_decref(c);
    double sum_u = 0, sum_n = 0;
    int seen_ri[5] = {0}, seen_c[3] = {0};
    const int N = 4000;
    for (int i = 0; i < N; i++) {
        json_t *p = sw_random_point(&sp, 42, (uint64_t)i);
        json_t *cv = json_object_get(p, "c");
        seen_c[json_is_integer(cv) ? 2 : !strcmp(json_string_value(cv), "tanh")]++;
        json_t *ri = json_object_get(p, "ri");
        CU_ASSERT(json_is_integer(ri) && json_integer_value(ri) >= 0 && json_integer_value(ri) < 5);
        if (json_is_integer(ri) && json_integer_value(ri) >= 0 && json_integer_value(ri) < 5)
            seen_ri[json_integer_value(ri)]++;
        double u = json_number_value(json_object_get(p, "u"));
        CU_ASSERT(u >= -1 && u < 2);
        sum_u += u;
        json_t *qu = json_object_get(p, "qu");
        CU_ASSERT(json_is_integer(qu) && json_integer_value(qu) % 10 == 0 &&
                  json_integer_value(qu) >= 0 && json_integer_value(qu) <= 100);
        double lu = json_number_value(json_object_get(p, "lu"));
        CU_ASSERT(lu >= exp(-6.9) * 0.999999 && lu <= exp(-2.3) * 1.000001);
        double qlu = json_number_value(json_object_get(p, "qlu"));
        CU_ASSERT(fabs(qlu / 0.5 - round(qlu / 0.5)) < 1e-9 && qlu <= 100.5);
        sum_n += json_number_value(json_object_get(p, "n"));
        CU_ASSERT(json_number_value(json_object_get(p, "ln")) > 0);
        json_decref(p);
    }
    /* a fixed seed: these are exact properties of one sequence, not chance */
    CU_ASSERT(fabs(sum_u / N - 0.5) < 0.05);
    CU_ASSERT(fabs(sum_n / N - 10) < 0.15);
    for (int i = 0; i < 5; i++)
        CU_ASSERT(seen_ri[i] > N / 5 - N / 20);
    for (int i = 0; i < 3; i++)
        CU_ASSERT(seen_c[i] > N / 3 - N / 20);
    sw_space_free(&sp);
}

static void t_values_print_as_the_script_reads_them(void)
{
    json_t *v[] = {json_real(0.1), json_real(2.0), json_real(1e-5), json_integer(32),
                   json_string("adam"), json_real(0.30000000000000004)};
    const char *want[] = {"0.1", "2.0", "1e-05", "32", "adam", "0.30000000000000004"};
    for (size_t i = 0; i < 6; i++) {
        char *t = sw_value_text(v[i]);
        CU_ASSERT_STRING_EQUAL(t, want[i]);
        free(t);
        json_decref(v[i]);
    }
}

static void t_bad_spaces_name_the_parameter(void)
{
    static const char *const bad[][2] = {
        {"{\"lr\": {\"uniform\": [1, 0]}}", "'lr': low must be below high"},
        {"{\"lr\": {\"unifrom\": [0, 1]}}", "unknown distribution 'unifrom'"},
        {"{\"bs\": {\"choice\": []}}", "'bs': choice needs at least one value"},
        {"{\"k\": {\"randint\": [0]}}", "'k': upper must be a whole number >= 1"},
        {"{\"q\": {\"quniform\": [0, 1]}}", "'q': expected {\"quniform\": [low, high, q]}"},
        {"{\"s\": {\"normal\": [0, -1]}}", "'s': sigma must be > 0"},
        {"{\"x y\": {\"choice\": [1]}}", "parameter name 'x y'"},
        {"{}", "at least one parameter"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *j = parse(bad[i][0]);
        sw_space sp;
        ctarget_error e;
        ctarget_error_init(&e);
        CU_ASSERT_EQUAL(sw_space_parse(j, "f.json", &sp, &e), CTARGET_E_CONFIG);
        if (!strstr(e.message, bad[i][1]))
            printf("message for %s: %s\n", bad[i][0], e.message);
        CU_ASSERT_PTR_NOT_NULL(strstr(e.message, bad[i][1]));
        json_decref(j);
    }
}

/* TPE proposals after n trials of the seeded random sequence scored by score(). */
static void tpe_run(const char *space, double (*score)(json_t *), int *hits,
                    int (*hit)(json_t *), int maximize)
{
    sw_space sp = space_of(space);
    sw_trial t[20];
    for (uint64_t i = 0; i < 20; i++) {
        t[i].params = sw_random_point(&sp, 5, i);
        t[i].value = score(t[i].params);
    }
    *hits = 0;
    for (uint64_t i = 20; i < 60; i++) {
        json_t *p = sw_tpe_point(&sp, 5, i, t, 20, maximize);
        *hits += hit(p);
        json_decref(p);
    }
    /* the startup trials are plain random ones */
    json_t *p = sw_tpe_point(&sp, 5, 3, t, SW_TPE_STARTUP - 1, maximize);
    json_t *q = sw_random_point(&sp, 5, 3);
    CU_ASSERT(json_equal(p, q));
    json_decref(p);
    json_decref(q);
    for (size_t i = 0; i < 20; i++)
        json_decref(t[i].params);
    sw_space_free(&sp);
}

static double x_score(json_t *p)
{
    return fabs(json_number_value(json_object_get(p, "x")) - 0.1); /* a loss: minimize */
}

static int x_near(json_t *p)
{
    double x = json_number_value(json_object_get(p, "x"));
    CU_ASSERT(x >= 0 && x <= 1);
    return fabs(x - 0.1) < 0.15;
}

static double k_score(json_t *p)
{
    return !strcmp(json_string_value(json_object_get(p, "k")), "b");
}

static int k_hit(json_t *p)
{
    return k_score(p) > 0;
}

/* TPE: proposals cluster where the good trials are, far more than random sampling would
 * (12 of 40 within 0.15 of 0.1; 10 of 40 on one of four choices). */
static void t_tpe_proposes_near_the_good_trials(void)
{
    int hits;
    tpe_run("{\"x\": {\"uniform\": [0, 1]}}", x_score, &hits, x_near, 0);
    CU_ASSERT(hits >= 25);
    tpe_run("{\"k\": {\"choice\": [\"a\", \"b\", \"c\", \"d\"]}}", k_score, &hits, k_hit, 1);
    CU_ASSERT(hits >= 25);
}

/* ---- policies on scripted metric streams ------------------------------------------------------ */

static sw_policy policy_of(const char *text)
{
    json_t *j = parse(text);
    sw_policy p;
    ctarget_error e;
    ctarget_error_init(&e);
    if (sw_policy_parse(j, "test", &p, &e))
        printf("policy: %s\n", e.message);
    json_decref(j);
    return p;
}

/* Which children stop, and at which interval: "i@N" for each stopped child, in order.
 * Children are judged interval by interval as they would be live, each against all
 * others' values up to that interval. */
static char *stops(const sw_policy *p, int maximize, const sw_series *all, size_t n)
{
    char buf[256] = "";
    char why[400];
    for (size_t i = 0; i < n; i++)
        for (size_t N = 1; N <= all[i].n; N++)
            if (sw_policy_stop(p, maximize, all, n, i, N, why, sizeof why)) {
                snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%zu@%zu",
                         *buf ? " " : "", i, N);
                break;
            }
    return strdup(buf);
}

#define SERIES(...) {(const double[]){__VA_ARGS__}, sizeof((const double[]){__VA_ARGS__}) / sizeof(double), 0}

static void t_policy_intervals_follow_delay_and_frequency(void)
{
    sw_policy p = policy_of("{\"policy\": \"bandit\", \"slack_factor\": 0.1,"
                            " \"evaluation_interval\": 2, \"delay_evaluation\": 3}");
    int want[] = {0, 0, 0, 1, 0, 1, 0, 1};
    for (size_t n = 1; n <= 8; n++)
        CU_ASSERT_EQUAL(sw_policy_applies(&p, n), want[n - 1]);
    p = policy_of("{\"policy\": \"median_stopping\"}");
    CU_ASSERT(sw_policy_applies(&p, 1) && sw_policy_applies(&p, 2));
}

static void t_bandit_stops_exactly_outside_the_slack(void)
{
    sw_series s[] = {SERIES(0.80, 0.85, 0.90), SERIES(0.70, 0.75, 0.88), SERIES(0.74, 0.60),
                     SERIES(0.50)};
    /* factor 0.1: at 1 the best is 0.80, limit 0.727: child 1 (0.70) and 3 stop; child 2
     * (0.74) survives 1 but at 2 its best 0.74 * 1.1 = 0.814 < 0.85 */
    sw_policy p = policy_of("{\"policy\": \"bandit\", \"slack_factor\": 0.1}");
    char *got = stops(&p, 1, s, 4);
    CU_ASSERT_STRING_EQUAL(got, "1@1 2@2 3@1");
    free(got);
    /* amount 0.15: limit 0.65 at 1, 0.70 at 2: only child 3 */
    p = policy_of("{\"policy\": \"bandit\", \"slack_amount\": 0.15}");
    got = stops(&p, 1, s, 4);
    CU_ASSERT_STRING_EQUAL(got, "3@1");
    free(got);
    /* delay 2: nothing is judged at interval 1 any more */
    p = policy_of("{\"policy\": \"bandit\", \"slack_factor\": 0.1, \"delay_evaluation\": 2}");
    got = stops(&p, 1, s, 4);
    CU_ASSERT_STRING_EQUAL(got, "1@2 2@2");
    free(got);
    /* minimizing a loss: the best is the lowest; factor 0.2 allows up to best * 1.2 */
    sw_series l[] = {SERIES(1.0, 0.8), SERIES(1.25, 0.9), SERIES(1.1, 1.0)};
    p = policy_of("{\"policy\": \"bandit\", \"slack_factor\": 0.2}");
    got = stops(&p, 0, l, 3);
    CU_ASSERT_STRING_EQUAL(got, "1@1 2@2");
    free(got);
}

static void t_median_stops_below_the_median_of_running_averages(void)
{
    /* running averages at 1: 0.5 0.6 0.4 0.9 -> median 0.55; at 2: 0.55 0.65 0.45 0.9 ->
     * 0.6.  Child 0's best 0.5 < 0.55 stops at 1; child 2 (0.4) at 1; child 1's best at 1
     * is 0.6 >= 0.55, at 2 it is 0.7 >= 0.6 */
    sw_series s[] = {SERIES(0.5, 0.6), SERIES(0.6, 0.7), SERIES(0.4, 0.5), SERIES(0.9, 0.9)};
    sw_policy p = policy_of("{\"policy\": \"median_stopping\"}");
    char *got = stops(&p, 1, s, 4);
    CU_ASSERT_STRING_EQUAL(got, "0@1 2@1");
    free(got);
    /* the best so far counts, not the last value: child 0 peaks at 0.9 then falls */
    sw_series t[] = {SERIES(0.9, 0.1, 0.1), SERIES(0.5, 0.5, 0.5), SERIES(0.6, 0.6, 0.6)};
    p = policy_of("{\"policy\": \"median_stopping\", \"delay_evaluation\": 3}");
    got = stops(&p, 1, t, 3);
    /* at 3 the averages 0.367 0.5 0.6 have median 0.5: child 0's best 0.9 is above it
     * (its last value 0.1 is not what counts), child 1's 0.5 is not worse: none stops */
    CU_ASSERT_STRING_EQUAL(got, "");
    free(got);
}

static void t_truncation_cancels_the_lowest_percentage(void)
{
    /* five runs at interval 1: 20% is floor(5 * 20 / 100) = 1 run, the worst (0.1) */
    sw_series s[] = {SERIES(0.5), SERIES(0.1), SERIES(0.9), SERIES(0.3), SERIES(0.7)};
    sw_policy p = policy_of("{\"policy\": \"truncation_selection\", \"truncation_percentage\": 20}");
    char *got = stops(&p, 1, s, 5);
    CU_ASSERT_STRING_EQUAL(got, "1@1");
    free(got);
    p = policy_of("{\"policy\": \"truncation_selection\", \"truncation_percentage\": 40}");
    got = stops(&p, 1, s, 5);
    CU_ASSERT_STRING_EQUAL(got, "1@1 3@1");
    free(got);
    /* minimizing, the highest are the lowest performers */
    got = stops(&p, 0, s, 5);
    CU_ASSERT_STRING_EQUAL(got, "2@1 4@1");
    free(got);
    /* exclude_finished_jobs: finished runs leave the ranking, so with 0.1 and 0.3 finished
     * the running 0.5 is the worst of three, and 40% of 3 is 1 */
    s[1].finished = s[3].finished = 1;
    p = policy_of("{\"policy\": \"truncation_selection\", \"truncation_percentage\": 40,"
                  " \"exclude_finished_jobs\": true}");
    sw_series running[] = {s[0], s[1], s[2], s[3], s[4]};
    char why[400];
    CU_ASSERT_EQUAL(sw_policy_stop(&p, 1, running, 5, 0, 1, why, sizeof why), 1);
    CU_ASSERT_EQUAL(sw_policy_stop(&p, 1, running, 5, 4, 1, why, sizeof why), 0);
    /* ties go against the later child */
    sw_series tie[] = {SERIES(0.5), SERIES(0.5), SERIES(0.9), SERIES(0.9), SERIES(0.9)};
    p = policy_of("{\"policy\": \"truncation_selection\", \"truncation_percentage\": 20}");
    got = stops(&p, 1, tie, 5);
    CU_ASSERT_STRING_EQUAL(got, "1@1");
    free(got);
}

static void t_policy_configuration_errors(void)
{
    static const char *const bad[][2] = {
        {"{\"policy\": \"bandit\"}", "exactly one of slack_factor and slack_amount"},
        {"{\"policy\": \"bandit\", \"slack_factor\": 0.1, \"slack_amount\": 1}", "exactly one"},
        {"{\"policy\": \"bandit\", \"slack_factor\": -1}", "'slack_factor' must be a number > 0"},
        {"{\"policy\": \"median\"}", "'policy' must be"},
        {"{\"policy\": \"truncation_selection\"}", "'truncation_percentage' must be"},
        {"{\"policy\": \"truncation_selection\", \"truncation_percentage\": 100}",
         "from 1 to 99"},
        {"{\"policy\": \"median_stopping\", \"slack_factor\": 0.1}", "belong to the bandit"},
        {"{\"policy\": \"bandit\", \"slack_factor\": 0.1, \"evaluation_interval\": 0}",
         "'evaluation_interval' must be"},
        {"{\"policy\": \"bandit\", \"slack_factr\": 0.1}", "unknown key 'slack_factr'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *j = parse(bad[i][0]);
        sw_policy p;
        ctarget_error e;
        ctarget_error_init(&e);
        CU_ASSERT_EQUAL(sw_policy_parse(j, "f.json", &p, &e), CTARGET_E_CONFIG);
        if (!strstr(e.message, bad[i][1]))
            printf("message for %s: %s\n", bad[i][0], e.message);
        CU_ASSERT_PTR_NOT_NULL(strstr(e.message, bad[i][1]));
        json_decref(j);
    }
}

/* ---- whole sweeps on the testrun plugin -------------------------------------------------------- */

/* A source directory with train.py and sweep.json: the run part on target (with run_extra
 * appended inside it, e.g. ", \"arguments\": [..]"), then body. */
static char *sweep_file_x(const char *target, const char *run_extra, const char *body)
{
    char *src = rl_source();
    char *json = fmt("{\"run\": {\"target\": \"%s\", \"source_directory\": \".\", \"script\": "
                     "\"train.py\"%s}, %s}", target, run_extra, body);
    char *p = tl_path(src, "sweep.json");
    tl_write_file(p, json);
    free(json);
    free(src);
    return p;
}

static char *sweep_file(const char *target, const char *body)
{
    return sweep_file_x(target, "", body);
}

/* runlib's sweep helpers, under the names these tests use */
#define submit_sweep rl_sweep_submit
#define wait_sweep(ws, id, expect_exit) rl_sweep_wait(ws, id, expect_exit, NULL)

/* The child with this index in a sweep's show output. */
static json_t *child_at(json_t *sweep, long long idx)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(sweep, "children"), i, c) if (
        json_integer_value(json_object_get(c, "index")) == idx) return c;
    return NULL;
}

/* "i" for each child stopped early, by index. */
static char *stopped_list(json_t *sweep)
{
    char buf[256] = "";
    for (long long i = 0; i < 64; i++) {
        json_t *c = child_at(sweep, i);
        if (c && json_is_true(json_object_get(c, "stopped_early")))
            snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%lld", *buf ? " " : "", i);
    }
    return strdup(buf);
}

static void t_local_target_refuses_sweeps(void)
{
    char *ws = rl_workspace();
    char *f = sweep_file("local", "\"parameters\": {\"lr\": {\"uniform\": [0, 1]}},"
                         " \"primary_metric\": \"acc\", \"goal\": \"maximize\","
                         " \"max_total_runs\": 2");
    tl_result r = TL_CT(ws, "sweep", "submit", "--config", f);
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(tl_contains(r.err, "compute target 'local' (local) cannot run hyperparameter "
                                 "sweeps"));
    CU_ASSERT(tl_contains(r.err, "types that do: ") && tl_contains(r.err, "testrun"));
    CU_ASSERT(!tl_contains(r.err, "local,") && !tl_contains(r.err, ", local"));
    tl_result_free(&r);
    /* nothing recorded */
    r = TL_CT(ws, "run", "list", "-o", "json");
    CU_ASSERT(tl_contains(r.out, "[]"));
    tl_result_free(&r);
    free(f);
    free(ws);
}

static void t_bad_configuration_is_refused_whole(void)
{
    char *ws = rl_workspace();
    static const char *const bad[][2] = {
        {"\"parameters\": {\"lr\": {\"uniform\": [0, 1]}}, \"primary_metric\": \"acc\","
         " \"goal\": \"maximize\", \"max_total_run\": 2", "unknown key 'max_total_run': did you "
         "mean 'max_total_runs'?"},
        {"\"parameters\": {\"lr\": {\"uniform\": [0, 1]}}, \"primary_metric\": \"acc\","
         " \"goal\": \"maximise\", \"max_total_runs\": 2", "'goal' must be"},
        {"\"parameters\": {\"lr\": {\"uniform\": [0, 1]}}, \"primary_metric\": \"acc\","
         " \"goal\": \"maximize\"", "'max_total_runs' is required with random sampling"},
        {"\"parameters\": {\"lr\": {\"uniform\": [0, 1]}}, \"sampling\": \"grid\","
         " \"primary_metric\": \"acc\", \"goal\": \"maximize\"",
         "grid sampling takes choice parameters only: make 'lr' a choice"},
        {"\"parameters\": {\"lr\": {\"uniform\": [0, 1]}}, \"sampling\": \"bayesian\","
         " \"primary_metric\": \"acc\", \"goal\": \"maximize\", \"max_total_runs\": 3,"
         " \"early_termination\": {\"policy\": \"median_stopping\"}", "takes no early termination"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *f = sweep_file("sim", bad[i][0]);
        tl_result r = TL_CT(ws, "sweep", "submit", "--config", f);
        TL_ASSERT_EXIT(r, 3);
        if (!tl_contains(r.err, bad[i][1]))
            tl_dump("message", &r);
        CU_ASSERT(tl_contains(r.err, bad[i][1]));
        CU_ASSERT(tl_contains(r.err, f)); /* names the file */
        tl_result_free(&r);
        free(f);
    }
    /* a file that is not there, or not JSON */
    tl_result m = TL_CT(ws, "sweep", "submit", "--config", "/nonexistent/sweep.json");
    TL_ASSERT_EXIT(m, 4);
    CU_ASSERT(tl_contains(m.err, "sweep configuration /nonexistent/sweep.json: unable to open"));
    tl_result_free(&m);
    char *src0 = rl_source();
    char *p0 = tl_path(src0, "sweep.json");
    tl_write_file(p0, "{\"run\": {\n");
    m = TL_CT(ws, "sweep", "submit", "--config", p0);
    TL_ASSERT_EXIT(m, 3);
    CU_ASSERT(tl_contains(m.err, "(line 2)"));
    tl_result_free(&m);
    free(p0);
    free(src0);
    /* the run part is checked like a run configuration */
    char *src = rl_source();
    char *p = tl_path(src, "sweep.json");
    tl_write_file(p, "{\"run\": {\"target\": \"sim\", \"source_dir\": \".\"},"
                     " \"parameters\": {\"a\": {\"choice\": [1]}}, \"sampling\": \"grid\","
                     " \"primary_metric\": \"acc\", \"goal\": \"maximize\"}");
    tl_result r = TL_CT(ws, "sweep", "submit", "--config", p);
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "unknown key 'source_dir': did you mean 'source_directory'?"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "list", "-o", "json");
    CU_ASSERT(tl_contains(r.out, "[]"));
    tl_result_free(&r);
    free(p);
    free(src);
    free(ws);
}

/* One child at a time, so each child is judged against the complete curves of the ones
 * before it: the outcome is exact.  A child expected to be stopped holds ("+") until it is
 * canceled; the others end right after their last value. */
static json_t *policy_sweep(const char *ws, const char *curves, const char *policy)
{
    char *body = fmt("\"parameters\": {\"curve\": {\"choice\": [%s]}}, \"sampling\": \"grid\","
                     " \"argument_style\": \"name=value\", \"primary_metric\": \"acc\","
                     " \"goal\": \"maximize\", \"max_concurrent_runs\": 1,"
                     " \"early_termination\": %s", curves, policy);
    char *f = sweep_file("sim", body);
    char *id = submit_sweep(ws, f, NULL);
    json_t *s = id ? wait_sweep(ws, id, 0) : NULL;
    free(id);
    free(f);
    free(body);
    return s;
}

static void t_bandit_sweep_cancels_exactly_the_children_outside_the_slack(void)
{
    char *ws = rl_workspace();
    /* child 1 falls outside 10% of child 0's 0.8 at interval 1; child 3 at interval 2
     * (0.75 * 1.1 < 0.85); child 2 stays within */
    json_t *s = policy_sweep(ws, "\"0.8/0.85/0.9\", \"0.5/+\", \"0.78/0.8/0.82\","
                             " \"0.75/0.7/+\"", "{\"policy\": \"bandit\", \"slack_factor\": 0.1}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    char *got = stopped_list(s);
    CU_ASSERT_STRING_EQUAL(got, "1 3");
    free(got);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(s, "status")), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(s, "stopped_early")), 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(s, "summary")),
                           "4 children: 2 completed, 0 failed, 2 canceled");
    json_t *c1 = child_at(s, 1), *c3 = child_at(s, 3);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c1, "status")), "Canceled");
    CU_ASSERT(tl_contains(json_string_value(json_object_get(c1, "reason")),
                          "early termination (bandit policy, slack factor 0.1) at interval 1"));
    CU_ASSERT(tl_contains(json_string_value(json_object_get(c3, "reason")), "at interval 2"));
    /* ranked by the last value: child 0 (0.9), child 2 (0.82), child 3 (0.7), child 1 */
    json_t *ch = json_object_get(s, "children");
    long long order[4];
    for (size_t i = 0; i < 4; i++)
        order[i] = json_integer_value(json_object_get(json_array_get(ch, i), "index"));
    CU_ASSERT(order[0] == 0 && order[1] == 2 && order[2] == 3 && order[3] == 1);
    json_t *best = json_object_get(s, "best");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(best, "index")), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(best, "arguments"), 0)),
                           "curve=0.8/0.85/0.9");
    /* the canceled run's own record carries the reason and its parent */
    json_t *run = rl_show(ws, json_string_value(json_object_get(c1, "id")));
    CU_ASSERT(tl_contains(json_string_value(json_object_get(run, "reason")), "bandit policy"));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(run, "parent")),
                           json_string_value(json_object_get(s, "id")));
    json_decref(run);
    /* the human view names the best child and its arguments */
    tl_result r = TL_CT(ws, "sweep", "show", json_string_value(json_object_get(s, "id")));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "best: child 0, run "));
    CU_ASSERT(tl_contains(r.out, "acc = 0.9, arguments: curve=0.8/0.85/0.9"));
    tl_result_free(&r);
    json_decref(s);
    free(ws);
}

static void t_median_sweep_cancels_exactly_the_children_below_the_median(void)
{
    char *ws = rl_workspace();
    /* at interval 1 with children 0..1: averages 0.6, 0.7 -> child 1 fine; child 2 (0.3):
     * averages 0.6 0.7 0.3 -> median 0.6 > 0.3: stopped; child 3 (0.65, 0.5): at 1 the
     * averages 0.6 0.7 0.3 0.65 have median 0.625 <= 0.65; at 2: 0.65 0.75 0.575 -> 0.65,
     * its best 0.65 is not worse; child 4 (0.62, 0.4): at 2, averages 0.65 0.75 0.575
     * 0.51 -> 0.6125 > 0.62? no; at 3 (only 0, 1 and 4 reached it): 0.633 0.767 0.473 ->
     * 0.633 > best 0.62: stopped */
    json_t *s = policy_sweep(ws, "\"0.6/0.7/0.6\", \"0.7/0.8/0.8\", \"0.3/+\", \"0.65/0.5\","
                             " \"0.62/0.4/0.4/+\"", "{\"policy\": \"median_stopping\"}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    char *got = stopped_list(s);
    CU_ASSERT_STRING_EQUAL(got, "2 4");
    free(got);
    CU_ASSERT(tl_contains(json_string_value(json_object_get(child_at(s, 4), "reason")),
                          "early termination (median stopping policy) at interval 3"));
    json_decref(s);
    free(ws);
}

static void t_truncation_sweep_cancels_exactly_the_lowest(void)
{
    char *ws = rl_workspace();
    /* 25%, delay 1: child 0 alone (floor(1/4) = 0), children 1..2 likewise (floor(3/4) =
     * 0); child 3 (0.1) is the worst of four at interval 1: stopped; child 4 (0.35 then
     * 0.2) is second worst of five at 1 (cut 1: fine) and at 2 the worst of the four
     * that reached it (cut 1): stopped */
    json_t *s = policy_sweep(ws, "\"0.5/0.6\", \"0.4/0.5\", \"0.7/0.8\", \"0.1/+\","
                             " \"0.35/0.2/+\"", "{\"policy\": \"truncation_selection\","
                             " \"truncation_percentage\": 25}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    char *got = stopped_list(s);
    CU_ASSERT_STRING_EQUAL(got, "3 4");
    free(got);
    json_decref(s);
    free(ws);
}

/* Every child as [created_at, ended_at] in ms, from the records: the most at once. */
static int max_overlap(const char *ws, json_t *sweep)
{
    long long t[128][2];
    size_t n = 0, i;
    json_t *c;
    json_array_foreach(json_object_get(sweep, "children"), i, c) {
        if (n == 128)
            break;
        json_t *run = rl_show(ws, json_string_value(json_object_get(c, "id")));
        json_t *ev = json_object_get(run, "events");
        /* times are ISO strings with milliseconds; compare them as such */
        const char *a = json_string_value(json_object_get(json_array_get(ev, 0), "time"));
        const char *b = json_string_value(
            json_object_get(json_array_get(ev, json_array_size(ev) - 1), "time"));
        int h, m, s2, ms, h2, m2, s3, ms2;
        if (a && b && sscanf(a + 11, "%d:%d:%d.%d", &h, &m, &s2, &ms) == 4 &&
            sscanf(b + 11, "%d:%d:%d.%d", &h2, &m2, &s3, &ms2) == 4) {
            t[n][0] = ((h * 60LL + m) * 60 + s2) * 1000 + ms;
            t[n][1] = ((h2 * 60LL + m2) * 60 + s3) * 1000 + ms2;
            n++;
        }
        json_decref(run);
    }
    int most = 0;
    for (size_t k = 0; k < n; k++) {
        int at = 0; /* runs alive at the moment run k was created */
        for (size_t j = 0; j < n; j++)
            at += t[j][0] <= t[k][0] && t[k][0] < t[j][1] + (j == k);
        if (at > most)
            most = at;
    }
    return most;
}

static void t_random_sweep_reproducible_and_max_concurrent_kept(void)
{
    char *ws = rl_workspace();
    /* the children's own arguments first (the simulated run's timing), then the sampled */
    char *f = sweep_file_x("sim", ", \"arguments\": [\"run_ms=250\", \"metrics=2\"]",
                           "\"parameters\": {\"lr\": {\"loguniform\": [-9, -2]},"
                           " \"units\": {\"randint\": [64]}}, \"sampling\": \"random\","
                           " \"seed\": 11, \"primary_metric\": \"loss\", \"goal\": \"minimize\","
                           " \"max_total_runs\": 6, \"max_concurrent_runs\": 2");
    char *id = submit_sweep(ws, f, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    /* sampled while it runs: never more than 2 children unfinished */
    int most_live = 0;
    for (int i = 0; i < 400; i++) {
        tl_result r = TL_CT(ws, "sweep", "show", id, "-o", "json");
        json_t *s = r.status == 0 ? tl_json(&r) : NULL;
        tl_result_free(&r);
        int live = 0;
        size_t k;
        json_t *c;
        json_array_foreach(json_object_get(s, "children"), k, c) {
            const char *st = json_string_value(json_object_get(c, "status"));
            live += strcmp(st, "Completed") && strcmp(st, "Failed") && strcmp(st, "Canceled");
        }
        if (live > most_live)
            most_live = live;
        int done = s && !strcmp(json_string_value(json_object_get(s, "status")), "Completed");
        json_decref(s);
        if (done)
            break;
        rl_sleep_ms(20);
    }
    CU_ASSERT(most_live <= 2);
    json_t *s = wait_sweep(ws, id, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(s, "children_started")), 6);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(s, "children_by_status"),
                                                       "Completed")), 6);
    CU_ASSERT(max_overlap(ws, s) <= 2);
    /* the arguments are the seeded sequence's, child by child */
    json_t *doc = parse("{\"lr\": {\"loguniform\": [-9, -2]}, \"units\": {\"randint\": [64]}}");
    sw_space sp;
    ctarget_error e;
    ctarget_error_init(&e);
    CU_ASSERT_EQUAL_FATAL(sw_space_parse(doc, "t", &sp, &e), 0);
    for (long long i = 0; i < 6; i++) {
        json_t *p = sw_random_point(&sp, 11, (uint64_t)i);
        json_t *want = sw_arguments(&sp, p, 0);
        json_t *c = child_at(s, i);
        CU_ASSERT(json_equal(json_object_get(c, "arguments"), want));
        CU_ASSERT(json_equal(json_object_get(c, "params"), p));
        /* the run got the base arguments, then the sampled ones */
        json_t *run = rl_show(ws, json_string_value(json_object_get(c, "id")));
        json_t *ra = json_object_get(run, "arguments");
        CU_ASSERT_EQUAL(json_array_size(ra), 6);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(ra, 0)), "run_ms=250");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(ra, 2)), "--lr");
        json_decref(run);
        json_decref(want);
        json_decref(p);
    }
    /* minimizing loss: the testrun curve ends at 0.5 for everyone; ties by index */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(s, "best"), "index")), 0);
    sw_space_free(&sp);
    json_decref(doc);
    json_decref(s);
    free(id);
    free(f);
    free(ws);
}

/* Every child's run was submitted to the target exactly once (testrun's submit appends a
 * line to work_dir/submits), and the children are indices 0..n-1 with distinct runs. */
static void check_each_child_once(const char *ws, json_t *s, long long n)
{
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(s, "children_started")), n);
    for (long long i = 0; i < n; i++) {
        json_t *c = child_at(s, i);
        CU_ASSERT_PTR_NOT_NULL(c);
        if (!c)
            continue;
        char *p = rl_run_file(ws, json_string_value(json_object_get(c, "id")), "work/submits");
        int lines = rl_count_lines(p);
        if (lines != 1)
            printf("child %lld was submitted %d times\n", i, lines);
        CU_ASSERT_EQUAL(lines, 1);
        free(p);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "status")), "Completed");
    }
    tl_result r = TL_CT(ws, "run", "list", "-o", "json");
    json_t *runs = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(runs), (size_t)n + 1); /* the children and the parent */
    json_decref(runs);
    tl_result_free(&r);
}

static const char RECOVERY_SWEEP[] =
    "\"parameters\": {\"run_ms\": {\"choice\": [1000, 1200, 1400, 1600, 1800]}},"
    " \"sampling\": \"grid\", \"argument_style\": \"name=value\","
    " \"primary_metric\": \"loss\", \"goal\": \"minimize\", \"max_concurrent_runs\": 2";

/* The driver dies between recording child 2 and submitting it: the driver started by the
 * next command submits it once, and starts no other child twice. */
static void t_driver_dying_between_record_and_submit_loses_nothing(void)
{
    char *ws = rl_workspace();
    char *f = sweep_file("sim", RECOVERY_SWEEP);
    char *id = submit_sweep(ws, f, (const char *const[]){"CTARGET_SWEEP_TEST_DIE=record:2", NULL});
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    char *mark = rl_run_file(ws, id, "test-died");
    for (int i = 0; i < 500 && access(mark, F_OK) != 0; i++)
        rl_sleep_ms(20);
    CU_ASSERT_EQUAL(access(mark, F_OK), 0);
    json_t *s = wait_sweep(ws, id, 0); /* touching the sweep restarts its driver */
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    check_each_child_once(ws, s, 5);
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(s, "monitor"), "starts")) >= 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(s, "status")), "Completed");
    json_decref(s);
    free(mark);
    free(id);
    free(f);
    free(ws);
}

/* kill -9 of the driver while children run. */
static void t_driver_killed_mid_sweep_is_restarted_and_continues(void)
{
    char *ws = rl_workspace();
    char *f = sweep_file("sim", RECOVERY_SWEEP);
    char *id = submit_sweep(ws, f, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    long long pid = 0;
    for (int i = 0; i < 500; i++) {
        json_t *s = rl_show(ws, id);
        json_t *c = json_object_get(s, "monitor");
        size_t children = 0;
        tl_result r = TL_CT(ws, "sweep", "show", id, "-o", "json");
        json_t *sw = r.status == 0 ? tl_json(&r) : NULL;
        children = json_array_size(json_object_get(sw, "children"));
        json_decref(sw);
        tl_result_free(&r);
        if (children >= 2 && json_is_true(json_object_get(c, "alive")))
            pid = json_integer_value(json_object_get(c, "pid"));
        json_decref(s);
        if (pid)
            break;
        rl_sleep_ms(10);
    }
    CU_ASSERT_FATAL(pid > 0);
    CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
    json_t *s = wait_sweep(ws, id, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    check_each_child_once(ws, s, 5);
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(s, "monitor"), "starts")) >= 2);
    json_decref(s);
    free(id);
    free(f);
    free(ws);
}

static void t_canceling_a_sweep_cancels_its_children(void)
{
    char *ws = rl_workspace();
    char *f = sweep_file("sim", "\"parameters\": {\"curve\": {\"choice\": [\"0.5/+\", \"0.6/+\","
                         " \"0.7/+\"]}}, \"sampling\": \"grid\", \"argument_style\":"
                         " \"name=value\", \"primary_metric\": \"acc\", \"goal\": \"maximize\"");
    char *id = submit_sweep(ws, f, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    /* all three hold Running until canceled */
    int running = 0;
    for (int i = 0; i < 500 && running < 3; i++) {
        tl_result r = TL_CT(ws, "sweep", "show", id, "-o", "json");
        json_t *s = r.status == 0 ? tl_json(&r) : NULL;
        running = (int)json_integer_value(
            json_object_get(json_object_get(s, "children_by_status"), "Running"));
        json_decref(s);
        tl_result_free(&r);
        rl_sleep_ms(10);
    }
    CU_ASSERT_EQUAL(running, 3);
    tl_result r = TL_CT(ws, "sweep", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *s = wait_sweep(ws, id, 130);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(s, "status")), "Canceled");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(s, "children_by_status"),
                                                       "Canceled")), 3);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(s, "stopped_early")), 0);
    CU_ASSERT(tl_contains(json_string_value(json_object_get(child_at(s, 0), "reason")),
                          "the sweep was canceled"));
    json_decref(s);
    /* a sweep is listed (as a table too); a plain run is not a sweep */
    r = TL_CT(ws, "sweep", "list", "-o", "json");
    CU_ASSERT(tl_contains(r.out, id));
    tl_result_free(&r);
    r = TL_CT(ws, "sweep", "list");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "SAMPLING") && tl_contains(r.out, id) &&
              tl_contains(r.out, "Canceled"));
    tl_result_free(&r);
    /* the sweep is a parent run: run show knows it */
    json_t *parent = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(parent, "kind")), "sweep");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(parent, "status")), "Canceled");
    json_decref(parent);
    r = TL_CT(ws, "sweep", "--help");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "distributions: choice, randint") &&
              tl_contains(r.out, "examples:"));
    tl_result_free(&r);
    char *src = rl_source();
    char *rid = rl_submit(ws, src, NULL, NULL);
    r = TL_CT(ws, "sweep", "show", rid);
    TL_ASSERT_EXIT(r, 4);
    CU_ASSERT(tl_contains(r.err, "is not a sweep"));
    tl_result_free(&r);
    rl_wait(ws, rid);
    free(rid);
    free(src);
    free(id);
    free(f);
    free(ws);
}

/* max_duration_minutes, with the driver's minute shortened to 1.5 s: the children (which
 * would run for 10 minutes) are canceled with the reason and the sweep ends Canceled. */
static void t_max_duration_cancels_the_running_children(void)
{
    char *ws = rl_workspace();
    char *f = sweep_file("sim", "\"parameters\": {\"curve\": {\"choice\": [\"0.5/+\", \"0.6/+\","
                         " \"0.7/+\"]}}, \"sampling\": \"grid\", \"argument_style\":"
                         " \"name=value\", \"primary_metric\": \"acc\", \"goal\": \"maximize\","
                         " \"max_concurrent_runs\": 2, \"max_duration_minutes\": 1");
    char *id = submit_sweep(ws, f, (const char *const[]){"CTARGET_SWEEP_TEST_MINUTE_MS=1500", NULL});
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    json_t *s = wait_sweep(ws, id, 130);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(s, "status")), "Canceled");
    CU_ASSERT(tl_contains(json_string_value(json_object_get(s, "reason")),
                          "max_duration_minutes (1) reached"));
    /* two ran and were canceled; the third was never started */
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(s, "children_started")), 2);
    for (long long i = 0; i < 2; i++) {
        json_t *c = child_at(s, i);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "status")), "Canceled");
        CU_ASSERT(tl_contains(json_string_value(json_object_get(c, "reason")),
                              "max_duration_minutes (1) reached"));
    }
    json_decref(s);
    free(id);
    free(f);
    free(ws);
}

static void t_bayesian_sweep_runs_to_the_end(void)
{
    char *ws = rl_workspace();
    char *f = sweep_file("sim", "\"parameters\": {\"run_ms\": {\"quniform\": [20, 120, 10]}},"
                         " \"sampling\": \"bayesian\", \"seed\": 3, \"argument_style\":"
                         " \"name=value\", \"primary_metric\": \"loss\", \"goal\": \"minimize\","
                         " \"max_total_runs\": 8, \"max_concurrent_runs\": 2");
    char *id = submit_sweep(ws, f, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    json_t *s = wait_sweep(ws, id, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(s, "children_started")), 8);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(s, "sampling")), "bayesian");
    /* the startup children are the seeded random ones */
    json_t *doc = parse("{\"run_ms\": {\"quniform\": [20, 120, 10]}}");
    sw_space sp;
    ctarget_error e;
    ctarget_error_init(&e);
    CU_ASSERT_EQUAL_FATAL(sw_space_parse(doc, "t", &sp, &e), 0);
    for (long long i = 0; i < SW_TPE_STARTUP; i++) {
        json_t *p = sw_random_point(&sp, 3, (uint64_t)i);
        CU_ASSERT(json_equal(json_object_get(child_at(s, i), "params"), p));
        json_decref(p);
    }
    sw_space_free(&sp);
    json_decref(doc);
    json_decref(s);
    free(id);
    free(f);
    free(ws);
}

/* ---- remotevm: a real sshd; concurrency sampled on the machine itself -------------------------- */

#ifdef SWEEP_TEST_REMOTEVM
static void t_remotevm_sweep_keeps_max_concurrent_on_the_machine(void)
{
    if (!S_ok) {
        CU_FAIL("the sshd fixture did not start");
        return;
    }
    char *ws = rl_workspace();
    char *root = tl_tmpdir("sweeproot");
    char *key = sf_file(&S, "id_ed25519");
    char *port = fmt("ssh_port=%d", S.port), *kf = fmt("private_key_file=%s", key);
    char *rr = fmt("remote_root=%s", root);
    tl_result r = TL_CT(ws, "compute", "attach", "vmbox", "--type", "remotevm", "--set",
                        "address=127.0.0.1", "--set", port, "--set", "username=root", "--set",
                        kf, "--set", rr, "--accept-new-host-key");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    rl_sweep_concurrency_on(ws, "vmbox", NULL);
    free(rr);
    free(kf);
    free(port);
    free(key);
    free(root);
    free(ws);
}
#endif

static void add(CU_pSuite s)
{
    TL_ADD(s, t_prng_matches_reference_outputs);
    TL_ADD(s, t_grid_gives_the_cartesian_product_in_order);
    TL_ADD(s, t_random_is_seeded_per_child_and_in_range);
    TL_ADD(s, t_values_print_as_the_script_reads_them);
    TL_ADD(s, t_bad_spaces_name_the_parameter);
    TL_ADD(s, t_tpe_proposes_near_the_good_trials);
    TL_ADD(s, t_policy_intervals_follow_delay_and_frequency);
    TL_ADD(s, t_bandit_stops_exactly_outside_the_slack);
    TL_ADD(s, t_median_stops_below_the_median_of_running_averages);
    TL_ADD(s, t_truncation_cancels_the_lowest_percentage);
    TL_ADD(s, t_policy_configuration_errors);
    TL_ADD(s, t_local_target_refuses_sweeps);
    TL_ADD(s, t_bad_configuration_is_refused_whole);
    TL_ADD(s, t_bandit_sweep_cancels_exactly_the_children_outside_the_slack);
    TL_ADD(s, t_median_sweep_cancels_exactly_the_children_below_the_median);
    TL_ADD(s, t_truncation_sweep_cancels_exactly_the_lowest);
    TL_ADD(s, t_random_sweep_reproducible_and_max_concurrent_kept);
    TL_ADD(s, t_driver_dying_between_record_and_submit_loses_nothing);
    TL_ADD(s, t_driver_killed_mid_sweep_is_restarted_and_continues);
    TL_ADD(s, t_canceling_a_sweep_cancels_its_children);
    TL_ADD(s, t_max_duration_cancels_the_running_children);
    TL_ADD(s, t_bayesian_sweep_runs_to_the_end);
#ifdef SWEEP_TEST_REMOTEVM
    TL_ADD(s, t_remotevm_sweep_keeps_max_concurrent_on_the_machine);
#endif
}

static void setup(CU_pSuite s)
{
    char *home = tl_tmpdir("sweephome");
    setenv("HOME", home, 1); /* an empty ~/.ssh/known_hosts */
    free(home);
    const char *pp = getenv("CTARGET_PLUGIN_PATH");
    char *path = fmt("%s/plugins/remotevm/.libs%s%s", tl_builddir(), pp && *pp ? ":" : "",
                     pp ? pp : "");
    setenv("CTARGET_PLUGIN_PATH", path, 1);
    free(path);
    char *dir = tl_tmpdir("sweepsshd");
    S_ok = sf_start(&S, dir, 0) == 0;
    free(dir);
    add(s);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "sweep", setup);
}
