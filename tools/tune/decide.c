/* decide.c: mha-tune's verdict on a variant from paired rounds (decide.h).
 * Medians and quartiles, not means and extremes, so that one wild round
 * (a build on the same cores, a page-cache flush) moves nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decide.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[0..n) in place and returns its median (mean of the middle two
 * for even n). */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Interquartile range of sorted v over its median m: the quartiles are
 * the values a quarter of the way in from each end, so one outlier at
 * either end of five or more rounds is outside them. */
static double rel_iqr(const double *v, int n, double m)
{
    int q = (n - 1) / 4;
    return (v[n - 1 - q] - v[q]) / m;
}

void tune_decide(const double *base_ms, const double *cand_ms, int rounds,
                 tune_verdict *v)
{
    double base[TUNE_MAX_ROUNDS], cand[TUNE_MAX_ROUNDS], ratio[TUNE_MAX_ROUNDS];
    int n = rounds < 0 ? 0 : rounds > TUNE_MAX_ROUNDS ? TUNE_MAX_ROUNDS : rounds;
    memset(v, 0, sizeof *v);
    v->rounds = n;
    for (int i = 0; i < n; i++)
        if (!(base_ms[i] > 0) || !(cand_ms[i] > 0))
            return; /* a failed forward: unusable, ratio 0 */
    if (n < 1)
        return;
    for (int i = 0; i < n; i++) {
        base[i] = base_ms[i];
        cand[i] = cand_ms[i];
        ratio[i] = base[i] / cand[i];
        v->wins += ratio[i] > 1;
    }
    v->ratio = median(ratio, n);
    v->base_ms = median(base, n);
    v->cand_ms = median(cand, n);
    v->spread = rel_iqr(base, n, v->base_ms);
    v->needed = 1 + (v->spread > TUNE_MIN_MARGIN ? v->spread
                                                 : TUNE_MIN_MARGIN);
    v->picked = n >= TUNE_MIN_ROUNDS && v->ratio > v->needed &&
                3 * v->wins > 2 * n;
}

void tune_verdict_text(const tune_verdict *v, char *out, unsigned size)
{
    int noise = (int)(100 * (v->needed - 1) + 0.5); /* the margin used */
    if (v->rounds == 0)
        snprintf(out, size, "not measured (over budget)");
    else if (v->ratio <= 0)
        snprintf(out, size, "failed");
    else if (v->rounds < TUNE_MIN_ROUNDS)
        snprintf(out, size, "%.2fx, too few rounds (%d) to judge", v->ratio,
                 v->rounds);
    else if (v->ratio <= v->needed)
        snprintf(out, size, "%.2fx, within noise %d%% (won %d/%d)",
                 v->ratio, noise, v->wins, v->rounds);
    else if (v->picked)
        snprintf(out, size, "%.2fx, beyond noise %d%% (won %d/%d)",
                 v->ratio, noise, v->wins, v->rounds);
    else
        snprintf(out, size, "%.2fx, beyond noise %d%% but won only %d/%d",
                 v->ratio, noise, v->wins, v->rounds);
}
