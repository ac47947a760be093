/* The parameter space and its sampling: grid, seeded random, and TPE ("bayesian").
 *
 * The distributions follow Azure ML HyperDrive's parameter expressions
 * (azureml.train.hyperdrive.parameter_expressions): choice(values), randint(upper) in
 * [0, upper), uniform(low, high), quniform(low, high, q) = round(uniform(low, high) / q) * q,
 * loguniform(low, high) = exp(uniform(low, high)), qloguniform(low, high, q) =
 * round(exp(uniform(low, high)) / q) * q, normal(mu, sigma), lognormal(mu, sigma) =
 * exp(normal(mu, sigma)). */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweep.h"
#include "../util.h"

/* ---- PRNG --------------------------------------------------------------------------------- */

uint64_t sw_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void sw_rng_seed(sw_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = sw_splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sw_rng_next(sw_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double sw_rng_unit(sw_rng *r)
{
    return (double)(sw_rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t sw_rng_below(sw_rng *r, uint64_t n)
{
    /* rejection of the top partial block: every value equally likely */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = sw_rng_next(r);
    while (x >= limit);
    return x % n;
}

double sw_rng_normal(sw_rng *r)
{
    /* Box-Muller; 1 - u is in (0, 1], so the log is finite */
    double u = 1.0 - sw_rng_unit(r), v = sw_rng_unit(r);
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

/* Child idx's own generator: the sequence for a child does not depend on how many numbers
 * earlier children drew, so a restarted driver re-derives exactly the same child. */
static void child_rng(sw_rng *r, uint64_t seed, uint64_t idx)
{
    uint64_t s = seed;
    uint64_t a = sw_splitmix64(&s);
    sw_rng_seed(r, a ^ (idx * UINT64_C(0xD1B54A32D192ED03)));
}

/* ---- parsing --------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    sw_dist dist;
    int nargs;
    const char *form;
} dists[] = {
    {"choice", SW_CHOICE, -1, "{\"choice\": [v1, v2, ...]}"},
    {"randint", SW_RANDINT, 1, "{\"randint\": [upper]} (0 <= value < upper)"},
    {"uniform", SW_UNIFORM, 2, "{\"uniform\": [low, high]}"},
    {"quniform", SW_QUNIFORM, 3, "{\"quniform\": [low, high, q]}"},
    {"loguniform", SW_LOGUNIFORM, 2, "{\"loguniform\": [low, high]} (exponents: exp(uniform))"},
    {"qloguniform", SW_QLOGUNIFORM, 3, "{\"qloguniform\": [low, high, q]}"},
    {"normal", SW_NORMAL, 2, "{\"normal\": [mu, sigma]}"},
    {"lognormal", SW_LOGNORMAL, 2, "{\"lognormal\": [mu, sigma]}"},
};

static ctarget_status bad_param(ctarget_error *err, const char *what, const char *name,
                                const char *fmt, const char *form)
{
    char *msg = xasprintf(fmt, form);
    ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: parameter '%s': %s", what, name, msg);
    free(msg);
    return CTARGET_E_CONFIG;
}

static ctarget_status parse_one(const char *what, const char *name, json_t *spec, sw_param *p,
                                ctarget_error *err)
{
    if (!json_is_object(spec) || json_object_size(spec) != 1)
        return bad_param(err, what, name, "expected an object with one distribution (choice, "
                         "randint, uniform, quniform, loguniform, qloguniform, normal or "
                         "lognormal), as %s", "{\"uniform\": [0, 1]}");
    const char *k = json_object_iter_key(json_object_iter(spec));
    json_t *args = json_object_iter_value(json_object_iter(spec));
    size_t d = 0;
    while (d < CT_ARRAY_LEN(dists) && strcmp(dists[d].name, k))
        d++;
    if (d == CT_ARRAY_LEN(dists)) {
        ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: parameter '%s': unknown "
               "distribution '%s': one of choice, randint, uniform, quniform, loguniform, "
               "qloguniform, normal, lognormal", what, name, k);
        return CTARGET_E_CONFIG;
    }
    p->name = xstrdup(name);
    p->dist = dists[d].dist;
    if (!json_is_array(args))
        return bad_param(err, what, name, "expected %s", dists[d].form);
    if (p->dist == SW_CHOICE) {
        size_t i;
        json_t *v;
        if (!json_array_size(args))
            return bad_param(err, what, name, "choice needs at least one value: %s",
                             dists[d].form);
        json_array_foreach(args, i, v) if (!json_is_number(v) && !json_is_string(v))
            return bad_param(err, what, name, "choice values must be numbers or strings: %s",
                             dists[d].form);
        p->values = json_incref(args);
        return CTARGET_OK;
    }
    if ((int)json_array_size(args) != dists[d].nargs)
        return bad_param(err, what, name, "expected %s", dists[d].form);
    double x[3] = {0, 0, 0};
    for (int i = 0; i < dists[d].nargs; i++) {
        json_t *v = json_array_get(args, (size_t)i);
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return bad_param(err, what, name, "the bounds must be numbers: %s", dists[d].form);
        x[i] = json_number_value(v);
    }
    p->a = x[0], p->b = x[1], p->q = x[2];
    switch (p->dist) {
    case SW_RANDINT:
        if (p->a < 1 || p->a != floor(p->a) || p->a > 9007199254740992.0)
            return bad_param(err, what, name, "upper must be a whole number >= 1: %s",
                             dists[d].form);
        break;
    case SW_NORMAL:
    case SW_LOGNORMAL:
        if (p->b <= 0)
            return bad_param(err, what, name, "sigma must be > 0: %s", dists[d].form);
        break;
    default:
        if (p->a >= p->b)
            return bad_param(err, what, name, "low must be below high: %s", dists[d].form);
        if ((p->dist == SW_QUNIFORM || p->dist == SW_QLOGUNIFORM) && p->q <= 0)
            return bad_param(err, what, name, "q must be > 0: %s", dists[d].form);
        if ((p->dist == SW_LOGUNIFORM || p->dist == SW_QLOGUNIFORM) &&
            (p->a < -700 || p->b > 700))
            return bad_param(err, what, name, "low and high are exponents (the value is "
                             "exp(uniform(low, high))): keep them within -700..700, e.g. "
                             "[-9.2, -2.3] for 1e-4..1e-1 (%s)", dists[d].form);
        break;
    }
    return CTARGET_OK;
}

ctarget_status sw_space_parse(json_t *obj, const char *what, sw_space *sp, ctarget_error *err)
{
    memset(sp, 0, sizeof *sp);
    if (!json_is_object(obj) || !json_object_size(obj)) {
        ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: 'parameters' must be an object "
               "with at least one parameter, as {\"learning_rate\": {\"uniform\": [0.001, "
               "0.1]}}", what);
        return CTARGET_E_CONFIG;
    }
    sp->p = xcalloc(json_object_size(obj), sizeof *sp->p);
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        int ok = *k != '\0' && k[0] != '-';
        for (const char *c = k; *c; c++)
            ok &= (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' || *c == '.';
        if (!ok) {
            ct_err(err, CTARGET_E_CONFIG, "sweep configuration %s: parameter name '%s' must be "
                   "letters, digits, '_', '-' and '.' (the argument is --NAME VALUE)", what, k);
            sw_space_free(sp);
            return CTARGET_E_CONFIG;
        }
        ctarget_status rc = parse_one(what, k, v, &sp->p[sp->n++], err);
        if (rc) {
            sw_space_free(sp);
            return rc;
        }
    }
    return CTARGET_OK;
}

void sw_space_free(sw_space *sp)
{
    for (size_t i = 0; i < sp->n; i++) {
        free(sp->p[i].name);
        json_decref(sp->p[i].values);
    }
    free(sp->p);
    memset(sp, 0, sizeof *sp);
}

/* ---- grid and random -------------------------------------------------------------------------- */

uint64_t sw_grid_size(const sw_space *sp)
{
    uint64_t n = 1;
    for (size_t i = 0; i < sp->n; i++) {
        if (sp->p[i].dist != SW_CHOICE)
            return 0;
        uint64_t k = json_array_size(sp->p[i].values);
        if (n > UINT64_MAX / k)
            return UINT64_MAX;
        n *= k;
    }
    return n;
}

json_t *sw_grid_point(const sw_space *sp, uint64_t idx)
{
    json_t *o = json_object();
    for (size_t i = sp->n; i-- > 0;) {
        uint64_t k = json_array_size(sp->p[i].values);
        json_object_set(o, sp->p[i].name, json_array_get(sp->p[i].values, (size_t)(idx % k)));
        idx /= k;
    }
    /* back in declaration order */
    json_t *ordered = json_object();
    for (size_t i = 0; i < sp->n; i++)
        json_object_set(ordered, sp->p[i].name, json_object_get(o, sp->p[i].name));
    json_decref(o);
    return ordered;
}

static double quantize(double x, double q)
{
    return round(x / q) * q;
}

static json_t *num(const sw_param *p, double x)
{
    /* integers stay integers: randint, and q-distributions with a whole q */
    int whole = p->dist == SW_RANDINT ||
                ((p->dist == SW_QUNIFORM || p->dist == SW_QLOGUNIFORM) && p->q == floor(p->q));
    if (whole && fabs(x) < 9007199254740992.0)
        return json_integer((json_int_t)x);
    return json_real(x);
}

/* A value from the internal coordinate x (what TPE models): for the log distributions the
 * exponent, for choice the index, else the value itself. */
static json_t *from_internal(const sw_param *p, double x)
{
    switch (p->dist) {
    case SW_CHOICE: {
        size_t k = json_array_size(p->values), i = x < 0 ? 0 : (size_t)x;
        return json_incref(json_array_get(p->values, i < k ? i : k - 1));
    }
    case SW_RANDINT: return num(p, floor(x));
    case SW_UNIFORM: case SW_NORMAL: return num(p, x);
    case SW_QUNIFORM: return num(p, quantize(x, p->q));
    case SW_LOGUNIFORM: case SW_LOGNORMAL: return num(p, exp(x));
    case SW_QLOGUNIFORM: return num(p, quantize(exp(x), p->q));
    }
    return json_null();
}

static double draw_internal(const sw_param *p, sw_rng *r)
{
    switch (p->dist) {
    case SW_CHOICE: return (double)sw_rng_below(r, json_array_size(p->values));
    case SW_RANDINT: return (double)sw_rng_below(r, (uint64_t)p->a);
    case SW_NORMAL: case SW_LOGNORMAL: return p->a + p->b * sw_rng_normal(r);
    default: return p->a + (p->b - p->a) * sw_rng_unit(r);
    }
}

json_t *sw_random_point(const sw_space *sp, uint64_t seed, uint64_t idx)
{
    sw_rng r;
    child_rng(&r, seed, idx);
    json_t *o = json_object();
    for (size_t i = 0; i < sp->n; i++)
        json_object_set_new(o, sp->p[i].name, from_internal(&sp->p[i], draw_internal(&sp->p[i], &r)));
    return o;
}

/* ---- TPE -------------------------------------------------------------------------------------- */
/* Tree-structured Parzen estimator (Bergstra et al., "Algorithms for Hyper-Parameter
 * Optimization", 2011), per parameter: trials are split into the best quarter (l) and the
 * rest (g); each side is a Parzen mixture (Gaussian kernels on the internal coordinate, or
 * smoothed counts for choices) plus a prior; candidates are drawn from l and the one with
 * the largest l(x)/g(x) is taken. */

#define TPE_CANDIDATES 24

static double to_internal(const sw_param *p, json_t *v)
{
    if (p->dist == SW_CHOICE) {
        size_t i;
        json_t *x;
        json_array_foreach(p->values, i, x) if (json_equal(x, v)) return (double)i;
        return 0;
    }
    double x = json_number_value(v);
    if (p->dist == SW_LOGUNIFORM || p->dist == SW_QLOGUNIFORM || p->dist == SW_LOGNORMAL)
        return x > 0 ? log(x) : p->a;
    return x;
}

static void prior_range(const sw_param *p, double *lo, double *hi)
{
    switch (p->dist) {
    case SW_RANDINT: *lo = 0, *hi = p->a; break;
    case SW_NORMAL: case SW_LOGNORMAL: *lo = p->a - 4 * p->b, *hi = p->a + 4 * p->b; break;
    default: *lo = p->a, *hi = p->b; break;
    }
}

static double parzen(const double *pts, size_t n, double x, double bw, double lo, double hi)
{
    /* the prior: uniform over the range, weighted like one more point */
    double dens = 1.0 / (hi - lo);
    for (size_t i = 0; i < n; i++) {
        double z = (x - pts[i]) / bw;
        dens += exp(-0.5 * z * z) / (bw * sqrt(2 * M_PI));
    }
    return dens / (double)(n + 1);
}

static double tpe_numeric(const sw_param *p, const double *good, size_t ng, const double *bad,
                          size_t nb, sw_rng *r)
{
    double lo, hi;
    prior_range(p, &lo, &hi);
    double bw_l = (hi - lo) / pow((double)ng + 1.0, 0.2) / 4.0;
    double bw_g = (hi - lo) / pow((double)nb + 1.0, 0.2) / 4.0;
    double best = draw_internal(p, r), best_score = -INFINITY;
    for (int c = 0; c < TPE_CANDIDATES; c++) {
        double x;
        uint64_t pick = sw_rng_below(r, ng + 1);
        if (pick == ng) /* the prior component */
            x = lo + (hi - lo) * sw_rng_unit(r);
        else
            x = good[pick] + bw_l * sw_rng_normal(r);
        if (x < lo)
            x = lo;
        if (x > hi)
            x = p->dist == SW_RANDINT ? hi - 0.5 : hi;
        double score = log(parzen(good, ng, x, bw_l, lo, hi)) - log(parzen(bad, nb, x, bw_g, lo, hi));
        if (score > best_score)
            best_score = score, best = x;
    }
    return best;
}

static double tpe_choice(const sw_param *p, const double *good, size_t ng, const double *bad,
                         size_t nb, sw_rng *r)
{
    size_t k = json_array_size(p->values);
    double *wl = xcalloc(k, sizeof *wl), *wg = xcalloc(k, sizeof *wg);
    for (size_t i = 0; i < k; i++)
        wl[i] = wg[i] = 1.0;
    for (size_t i = 0; i < ng; i++)
        wl[(size_t)good[i]] += 1.0;
    for (size_t i = 0; i < nb; i++)
        wg[(size_t)bad[i]] += 1.0;
    double sl = (double)(ng + k), sg = (double)(nb + k), best = 0, best_score = -INFINITY;
    for (int c = 0; c < TPE_CANDIDATES; c++) {
        double u = sw_rng_unit(r) * sl, acc = 0;
        size_t x = 0;
        while (x + 1 < k && (acc += wl[x]) <= u)
            x++;
        double score = log(wl[x] / sl) - log(wg[x] / sg);
        if (score > best_score)
            best_score = score, best = (double)x;
    }
    free(wl);
    free(wg);
    return best;
}

static int cmp_trial_max(const void *a, const void *b)
{
    double x = ((const sw_trial *)a)->value, y = ((const sw_trial *)b)->value;
    return x > y ? -1 : x < y ? 1 : 0;
}

json_t *sw_tpe_point(const sw_space *sp, uint64_t seed, uint64_t idx, const sw_trial *trials,
                     size_t n, int maximize)
{
    if (n < SW_TPE_STARTUP)
        return sw_random_point(sp, seed, idx);
    sw_rng r;
    child_rng(&r, seed, idx);
    sw_trial *t = xcalloc(n, sizeof *t);
    for (size_t i = 0; i < n; i++) {
        t[i] = trials[i];
        if (!maximize)
            t[i].value = -t[i].value;
    }
    qsort(t, n, sizeof *t, cmp_trial_max); /* best first */
    size_t ng = (n + 3) / 4, nb = n - ng;
    double *good = xcalloc(ng, sizeof *good), *bad = xcalloc(nb + 1, sizeof *bad);
    json_t *o = json_object();
    for (size_t i = 0; i < sp->n; i++) {
        const sw_param *p = &sp->p[i];
        for (size_t j = 0; j < n; j++) {
            double x = to_internal(p, json_object_get(t[j].params, p->name));
            if (j < ng)
                good[j] = x;
            else
                bad[j - ng] = x;
        }
        double x = p->dist == SW_CHOICE ? tpe_choice(p, good, ng, bad, nb, &r)
                                        : tpe_numeric(p, good, ng, bad, nb, &r);
        json_object_set_new(o, p->name, from_internal(p, x));
    }
    free(good);
    free(bad);
    free(t);
    return o;
}

/* ---- arguments -------------------------------------------------------------------------------- */

char *sw_value_text(json_t *v)
{
    if (json_is_string(v))
        return xstrdup(json_string_value(v));
    if (json_is_integer(v))
        return xasprintf("%lld", (long long)json_integer_value(v));
    double x = json_number_value(v);
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    /* a real stays recognisably real: 2.0, not 2 */
    if (!strpbrk(buf, ".eEn"))
        strcat(buf, ".0");
    return xstrdup(buf);
}

json_t *sw_arguments(const sw_space *sp, json_t *params, int style)
{
    json_t *a = json_array();
    for (size_t i = 0; i < sp->n; i++) {
        char *v = sw_value_text(json_object_get(params, sp->p[i].name));
        if (style == 1) {
            json_array_append_new(a, json_sprintf("%s=%s", sp->p[i].name, v));
        } else {
            json_array_append_new(a, json_sprintf("--%s", sp->p[i].name));
            json_array_append_new(a, json_string(v));
        }
        free(v);
    }
    return a;
}
