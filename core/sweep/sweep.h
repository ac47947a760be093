/* Hyperparameter sweeps (HyperDrive-like): a parent run whose driver starts child runs of
 * one script with arguments drawn from a parameter space, reads each child's primary metric
 * and stops children early by a termination policy.
 *
 *   space.c    parameter space, the PRNG, grid / random / TPE ("bayesian") sampling
 *   policy.c   early termination policies (bandit, median stopping, truncation selection)
 *   config.c   the sweep configuration file
 *   driver.c   the driver: the parent run's monitor process
 *   api.c      submit, show, list
 *
 * space.c and policy.c are pure functions of their inputs: no store, no clock, no libc PRNG
 * (the generator is ours, so a seed gives the same children on every platform). */
#ifndef CTARGET_CORE_SWEEP_H
#define CTARGET_CORE_SWEEP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <ctarget/ctarget.h>

/* ---- the PRNG: xoshiro256** seeded through splitmix64 --------------------------------------- */

typedef struct sw_rng {
    uint64_t s[4];
} sw_rng;

uint64_t sw_splitmix64(uint64_t *state);
void sw_rng_seed(sw_rng *r, uint64_t seed);
uint64_t sw_rng_next(sw_rng *r);
/* [0, 1) with 53 random bits */
double sw_rng_unit(sw_rng *r);
/* [0, n) without modulo bias; n > 0 */
uint64_t sw_rng_below(sw_rng *r, uint64_t n);
double sw_rng_normal(sw_rng *r);

/* ---- parameter space -------------------------------------------------------------------------- */

typedef enum sw_dist {
    SW_CHOICE, SW_RANDINT, SW_UNIFORM, SW_QUNIFORM, SW_LOGUNIFORM, SW_QLOGUNIFORM, SW_NORMAL,
    SW_LOGNORMAL
} sw_dist;

typedef struct sw_param {
    char *name;
    sw_dist dist;
    json_t *values;        /* choice: the array of values */
    double a, b, q;        /* randint: a = upper; uniform-like: a, b = low, high (for the log
                            * distributions: of the exponent); normal-like: a = mu, b = sigma;
                            * q for the q- distributions */
} sw_param;

typedef struct sw_space {
    sw_param *p;
    size_t n;
} sw_space;

/* Parse {"name": {"choice": [..]} | {"uniform": [low, high]} | ...}; what names the file for
 * messages.  On failure err says which parameter and how to fix it. */
ctarget_status sw_space_parse(json_t *obj, const char *what, sw_space *sp, ctarget_error *err);
void sw_space_free(sw_space *sp);
/* Number of grid points (product of choice sizes); 0 when a parameter is not a choice. */
uint64_t sw_grid_size(const sw_space *sp);
/* The params {name: value} of grid point idx (last parameter varies fastest). */
json_t *sw_grid_point(const sw_space *sp, uint64_t idx);
/* Random sample number idx of the seeded sequence: a pure function of (space, seed, idx). */
json_t *sw_random_point(const sw_space *sp, uint64_t seed, uint64_t idx);

/* One finished trial for TPE: its params and its primary metric value. */
typedef struct sw_trial {
    json_t *params;
    double value;
} sw_trial;
#define SW_TPE_STARTUP 5
/* TPE: random for the first SW_TPE_STARTUP trials, then the candidate maximising l(x)/g(x)
 * (good = best quarter of the trials by goal).  maximize: 1 or 0. */
json_t *sw_tpe_point(const sw_space *sp, uint64_t seed, uint64_t idx, const sw_trial *trials,
                     size_t n_trials, int maximize);

/* The value as the script sees it: integers without a decimal point, reals in the shortest
 * form that reads back to the same double, strings as they are (owned). */
char *sw_value_text(json_t *v);
/* Script arguments for params: "--name value" pairs (style 0) or "name=value" (style 1). */
json_t *sw_arguments(const sw_space *sp, json_t *params, int style);

/* ---- early termination ------------------------------------------------------------------------ */

typedef enum sw_policy_kind { SW_POLICY_NONE, SW_POLICY_BANDIT, SW_POLICY_MEDIAN,
                              SW_POLICY_TRUNCATION } sw_policy_kind;

typedef struct sw_policy {
    sw_policy_kind kind;
    int evaluation_interval;      /* >= 1 */
    int delay_evaluation;         /* >= 0 */
    double slack_factor;          /* bandit: one of these two is > 0 */
    double slack_amount;
    int truncation_percentage;    /* 1..99 */
    int exclude_finished;         /* truncation: leave finished runs out of the ranking */
} sw_policy;

/* What the policies see of one child: the primary metric values in the order logged (value
 * i is interval i+1) and whether the child has finished. */
typedef struct sw_series {
    const double *v;
    size_t n;
    int finished;
} sw_series;

/* Is interval (1-based) one at which the policy is applied? */
int sw_policy_applies(const sw_policy *p, size_t interval);
/* Should child `self` of all[0..n) be stopped at interval (1-based; the child has reached
 * it)?  1 with why (a sentence for the Canceled run's reason) filled, else 0. */
int sw_policy_stop(const sw_policy *p, int maximize, const sw_series *all, size_t n, size_t self,
                   size_t interval, char *why, size_t why_len);
/* Parse {"policy": "bandit"|"median_stopping"|"truncation_selection", ...}. */
ctarget_status sw_policy_parse(json_t *obj, const char *what, sw_policy *p, ctarget_error *err);
const char *sw_policy_name(sw_policy_kind k);

/* ---- configuration (config.c) ----------------------------------------------------------------- */

typedef enum sw_sampling { SW_GRID, SW_RANDOM, SW_BAYESIAN } sw_sampling;

typedef struct sw_config {
    json_t *doc;          /* the validated file, relative paths anchored (owned) */
    json_t *run;          /* borrowed from doc: the run configuration of every child */
    sw_space space;
    sw_sampling sampling;
    uint64_t seed;
    const char *metric;   /* borrowed from doc */
    int maximize;
    sw_policy policy;
    long long max_total, max_concurrent, max_minutes;
    int arg_style;        /* 0: --name value; 1: name=value */
} sw_config;

/* Read and check a sweep configuration file (JSON); nothing is written. */
ctarget_status sw_config_load(const char *file, sw_config *c, ctarget_error *err);
/* From the stored document (already checked) back to the structure. */
ctarget_status sw_config_from_doc(json_t *doc, sw_config *c, ctarget_error *err);
void sw_config_free(sw_config *c);
const char *sw_sampling_name(sw_sampling s);

/* ---- the driver (driver.c) --------------------------------------------------------------------- */

/* Be the driver of sweep `id` (its parent run) until it ends; the caller holds the parent
 * run's monitor lock. */
void sw_drive(ctarget_ws *ws, const char *id);

#endif
