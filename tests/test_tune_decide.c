/* test_tune_decide.c: mha-tune's verdict on a kernel variant
 * (tools/tune/decide.c), fed synthetic paired timings, since real ones on
 * a loaded machine are the noise it must see through: a candidate within
 * the default's spread (or the 5% floor) is not picked, a clearly faster
 * one is, ties and all-equal rounds keep the default, one wild round
 * flips nothing, a faster median needs a clear majority of rounds, and
 * too few or failed rounds prove nothing. */
#include <criterion/criterion.h>
#include <string.h>

#include "decide.h"

#define N 5

/* Each round's candidate time: the default's over ratio. */
static void scaled(const double *base, double ratio, double *cand, int n)
{
    for (int i = 0; i < n; i++)
        cand[i] = base[i] / ratio;
}

static tune_verdict decide(const double *base, const double *cand, int n)
{
    tune_verdict v;
    tune_decide(base, cand, n, &v);
    return v;
}

/* The verdict in words is want. */
static void expect_text(const tune_verdict *v, const char *want)
{
    char text[96];
    tune_verdict_text(v, text, sizeof text);
    cr_expect_str_eq(text, want);
}

/* A default with a 6% spread: interquartile range 97..103 over 100. */
static const double noisy[N] = {94, 97, 100, 103, 106};

Test(tune_decide, a_candidate_within_the_noise_is_not_picked)
{
    double cand[N];
    scaled(noisy, 1.04, cand, N); /* wins every round, by less than 6% */
    tune_verdict v = decide(noisy, cand, N);
    cr_expect_float_eq(v.spread, 0.06, 1e-9);
    cr_expect_float_eq(v.needed, 1.06, 1e-9);
    cr_expect_float_eq(v.ratio, 1.04, 1e-9);
    cr_expect_eq(v.wins, N);
    cr_expect_not(v.picked, "a 1.04x candidate beat 6%% noise");
    expect_text(&v, "1.04x, within noise 6% (won 5/5)");
}

Test(tune_decide, a_clearly_faster_candidate_is_picked)
{
    double cand[N];
    scaled(noisy, 1.5, cand, N);
    tune_verdict v = decide(noisy, cand, N);
    cr_expect_float_eq(v.ratio, 1.5, 1e-9);
    cr_expect_float_eq(v.base_ms, 100, 1e-9);
    cr_expect_float_eq(v.cand_ms, 100 / 1.5, 1e-9);
    cr_expect(v.picked, "a 1.5x candidate in every round was not picked");
    expect_text(&v, "1.50x, beyond noise 6% (won 5/5)");
}

Test(tune_decide, the_default_s_spread_raises_the_bar)
{
    static const double wide[N] = {80, 90, 100, 110, 120}; /* 20% */
    double cand[N];
    scaled(wide, 1.15, cand, N);
    tune_verdict v = decide(wide, cand, N);
    cr_expect_float_eq(v.needed, 1.2, 1e-9);
    cr_expect_not(v.picked, "1.15x beat 20%% noise");
    scaled(wide, 1.3, cand, N);
    v = decide(wide, cand, N);
    cr_expect(v.picked, "1.3x did not beat 20%% noise");
}

Test(tune_decide, ties_keep_the_default)
{
    tune_verdict v = decide(noisy, noisy, N);
    cr_expect_float_eq(v.ratio, 1, 1e-12);
    cr_expect_eq(v.wins, 0, "a tied round counted as a win");
    cr_expect_not(v.picked);
}

Test(tune_decide, all_equal_rounds_use_the_5_percent_floor)
{
    static const double flat[N] = {100, 100, 100, 100, 100};
    double cand[N];
    tune_verdict v = decide(flat, flat, N);
    cr_expect_float_eq(v.spread, 0, 1e-12);
    cr_expect_float_eq(v.needed, 1 + TUNE_MIN_MARGIN, 1e-12);
    cr_expect_not(v.picked, "all-equal rounds picked the candidate");
    scaled(flat, 1.04, cand, N);
    cr_expect_not(decide(flat, cand, N).picked, "4%% beat the 5%% floor");
    scaled(flat, 1.1, cand, N);
    cr_expect(decide(flat, cand, N).picked, "10%% did not beat the floor");
}

Test(tune_decide, one_wild_round_flips_nothing)
{
    double base[N], cand[N];
    /* within noise; in one round the default was stalled 10x */
    memcpy(base, noisy, sizeof base);
    scaled(noisy, 1.02, cand, N);
    base[2] *= 10;
    tune_verdict v = decide(base, cand, N);
    cr_expect_float_eq(v.ratio, 1.02, 1e-9);
    cr_expect_not(v.picked, "one stalled default round picked a tie");
    /* clearly faster; in one round the candidate was stalled 10x */
    scaled(noisy, 1.4, cand, N);
    cand[1] *= 10;
    v = decide(noisy, cand, N);
    cr_expect(v.picked, "one stalled candidate round dropped a 1.4x win");
    /* clearly faster; in one round the default was stalled 10x: the
     * spread must not take the outlier in */
    memcpy(base, noisy, sizeof base);
    scaled(noisy, 1.4, cand, N);
    base[4] *= 10;
    v = decide(base, cand, N);
    cr_expect_leq(v.spread, 0.07, "one wild round set the noise: %g",
                  v.spread);
    cr_expect(v.picked, "one stalled default round hid a 1.4x win");
}

Test(tune_decide, a_faster_median_needs_a_clear_majority)
{
    static const double flat[N] = {100, 100, 100, 100, 100};
    double cand[N] = {70, 70, 70, 110, 110}; /* 1.43x, but 3 of 5 */
    tune_verdict v = decide(flat, cand, N);
    cr_expect_gt(v.ratio, v.needed);
    cr_expect_eq(v.wins, 3);
    cr_expect_not(v.picked, "3 wins of 5 picked the candidate");
    expect_text(&v, "1.43x, beyond noise 5% but won only 3/5");
    /* tied rounds are no wins */
    double tied[N] = {70, 70, 70, 100, 100};
    cr_expect_not(decide(flat, tied, N).picked, "ties made a majority");
    double four[N] = {70, 70, 70, 70, 110};
    cr_expect(decide(flat, four, N).picked, "4 wins of 5 were not enough");
}

Test(tune_decide, too_few_rounds_prove_nothing)
{
    static const double base[3] = {100, 100, 100};
    double cand[3] = {50, 50, 50};
    tune_verdict v = decide(base, cand, 2);
    cr_expect_float_eq(v.ratio, 2, 1e-12);
    cr_expect_not(v.picked, "2 rounds picked a candidate");
    cr_expect(decide(base, cand, 3).picked, "3 rounds of 2x were not enough");
    v = decide(base, cand, 0);
    cr_expect_not(v.picked);
    expect_text(&v, "not measured (over budget)");
}

Test(tune_decide, a_failed_forward_makes_the_verdict_unusable)
{
    double cand[N];
    scaled(noisy, 2, cand, N);
    cand[3] = -1;
    tune_verdict v = decide(noisy, cand, N);
    cr_expect_eq(v.ratio, 0);
    cr_expect_not(v.picked, "a candidate with a failed forward was picked");
    expect_text(&v, "failed");
}
