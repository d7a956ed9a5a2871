/* test_cpu_kernels.c: checks every CPU kernel table the build has (scalar,
 * avx2, avx512, neon) against double-precision references computed here,
 * over a table of awkward sizes with padded leading dimensions. A table the
 * running CPU cannot execute is reported as skipped, never as a pass. Each
 * test is named <isa>::<kernel>_<case> so a failure can be rerun alone
 * (--filter 'avx2/gemm_nt_M7_N8_K9').
 *
 * Tolerances are worst-case rounding bounds, not tuned constants, so they
 * can neither flake nor hide a missing term:
 *  - a dot product of K terms in fp32, in any summation order and with or
 *    without FMA, is within gamma_K * sum|a_k b_k| of the exact value
 *    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), with
 *    gamma_K ~ K u, u = 2^-24. The checks allow (K + 2) * 2u * sum|terms|
 *    (bias and C's old value counted as terms): twice the bound. A dropped
 *    or doubled term is of size sum|terms| / K on average, far above it.
 *  - exp: 2e-6 relative per element for arguments in [-87, 0] (the
 *    contract in kernels.h is 1e-6 against expf, which is itself within an
 *    ulp), and over the dense sweep of [-87, 0] the measured bound 3e-7;
 *    below -87 the kernels may flush, so only |y - e^x| <= FLT_MIN.
 *    The sum adds n u relative for fp32 accumulation and FLT_MIN for each
 *    flushable term.
 *  - max is exact; scale is one rounding; axpy and scale_add two.
 *  - f16_to_f32 is exact: bit for bit mha_f16_to_f32, for every half. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_features.h"
#include "half.h"
#include "kernels.h"
#include "mha.h"

typedef const mha_cpu_kernels *(*table_getter)(void);

#define UNIT_ROUNDOFF (FLT_EPSILON / 2.0)
#define GUARD 16          /* sentinel floats after every array */
#define SENTINEL 777.25f  /* marks memory a kernel must not write */

/* ---- helpers -------------------------------------------------------------- */

static const mha_cpu_kernels *table_or_skip(table_getter get, const char *isa)
{
    const mha_cpu_kernels *k = get();
    if (!k)
        cr_skip_test("%s kernels are not available on this CPU or build",
                     isa);
    cr_assert_str_eq(k->isa, isa);
    return k;
}

/* xorshift64*: deterministic inputs, state kept by the caller. */
static float rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    uint64_t r = *s * 2685821657736338717ull;
    return (float)((double)(r >> 40) / (double)(1u << 24) * 2.0 - 1.0);
}

/* rows x ld floats plus GUARD, all set to fill. */
static float *alloc_filled(int64_t rows, int64_t ld, float fill)
{
    size_t count = (size_t)(rows * ld) + GUARD;
    float *p = malloc(count * sizeof(float));
    cr_assert_not_null(p);
    for (size_t i = 0; i < count; i++)
        p[i] = fill;
    return p;
}

static void fill_random(float *p, int64_t rows, int64_t cols, int64_t ld,
                        uint64_t *s)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            p[r * ld + c] = rnd(s);
}

/* Every float outside the rows x cols window (row padding and the guard)
 * must still hold SENTINEL. */
static void check_untouched(const float *p, int64_t rows, int64_t cols,
                            int64_t ld, const char *what)
{
    size_t count = (size_t)(rows * ld) + GUARD;
    for (size_t i = 0; i < count; i++) {
        int64_t r = (int64_t)i / ld, c = (int64_t)i % ld;
        if (r < rows && c < cols)
            continue;
        cr_assert(memcmp(&p[i], &(float){SENTINEL}, sizeof(float)) == 0,
                  "%s: float %zu outside the result was written (%g)", what,
                  i, (double)p[i]);
    }
}

/* A vector of n floats that starts one float into its allocation, so SIMD
 * loads are misaligned, with SENTINEL before it and GUARD + 1 after it.
 * Free with free(v - 1). */
static float *alloc_vector(int64_t n)
{
    return alloc_filled(1, n + 2, SENTINEL) + 1;
}

static void check_vector_guards(const float *v, int64_t n, const char *what)
{
    cr_assert(memcmp(&v[-1], &(float){SENTINEL}, sizeof(float)) == 0,
              "%s: the float before the vector was written", what);
    for (int64_t i = n; i < n + 1 + GUARD; i++)
        cr_assert(memcmp(&v[i], &(float){SENTINEL}, sizeof(float)) == 0,
                  "%s: float %lld past the end (n=%lld) was written", what,
                  (long long)(i - n), (long long)n);
}

/* ---- gemm ------------------------------------------------------------------- */

/* What a GEMM test computed: C[m][n] must be init(m, n) + alpha * sum over
 * k0 <= k < K of A[m][k] * B(k, n), where B(k, n) is B[n][k] (bt) or
 * B[k][n], and init is init[m * ldi + n] (ldi 0: a bias row) or 0 when init
 * is NULL. */
typedef struct gemm_check {
    const char *isa, *what;
    int64_t M, N, K, k0;
    const float *A, *B, *init;
    int64_t lda, ldb, ldi;
    int bt;
    double alpha;
} gemm_check;

/* Each element against a double reference within the rounding bound. */
static void check_gemm(const gemm_check *g, const float *C, int64_t ldc)
{
    for (int64_t m = 0; m < g->M; m++) {
        for (int64_t n = 0; n < g->N; n++) {
            double ref = g->init ? g->init[m * g->ldi + n] : 0.0;
            double mag = fabs(ref);
            for (int64_t k = g->k0; k < g->K; k++) {
                double b = g->bt ? g->B[n * g->ldb + k] : g->B[k * g->ldb + n];
                double t = (double)g->A[m * g->lda + k] * g->alpha * b;
                ref += t;
                mag += fabs(t);
            }
            double got = C[m * ldc + n];
            double tol = (double)(g->K + 3) * 2.0 * UNIT_ROUNDOFF * mag;
            cr_assert(fabs(got - ref) <= tol,
                      "%s %s M=%lld N=%lld K=%lld: C[%lld][%lld] = %.9g, "
                      "expected %.9g (tolerance %.3g)",
                      g->isa, g->what, (long long)g->M, (long long)g->N,
                      (long long)g->K, (long long)m, (long long)n, got, ref,
                      tol);
        }
    }
    check_untouched(C, g->M, g->N, ldc, g->what);
}

/* Padding of A and B is NaN: a kernel that reads past a row's K (or N)
 * values into the computation gets NaN and fails. C starts NaN inside the
 * window for gemm_nt (it must overwrite, never read) and SENTINEL outside. */
static void run_gemm_nt(table_getter get, const char *isa, int64_t M,
                        int64_t N, int64_t K, int with_bias)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0x9E3779B97F4A7C15ull ^ (uint64_t)(M * 1000003 + N * 1009 + K);
    const int64_t lda = K + 1 + M % 3, ldb = K + 2, ldc = N + 3;
    float *A = alloc_filled(M, lda, NAN);
    float *B = alloc_filled(N, ldb, NAN);
    float *C = alloc_filled(M, ldc, SENTINEL);
    float *bias = with_bias ? alloc_filled(1, N, NAN) : NULL;
    fill_random(A, M, K, lda, &s);
    fill_random(B, N, K, ldb, &s);
    if (bias)
        fill_random(bias, 1, N, N, &s);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            C[m * ldc + n] = NAN;
    kt->gemm_nt(M, N, K, A, lda, B, ldb, bias, C, ldc);
    gemm_check g = {isa, with_bias ? "gemm_nt bias" : "gemm_nt", M, N, K, 0,
                    A, B, bias, lda, ldb, 0, 1, 1.0};
    check_gemm(&g, C, ldc);
    free(A), free(B), free(C), free(bias);
}

/* C starts random inside the window: gemm_nn_acc must add to it. */
static void run_gemm_nn(table_getter get, const char *isa, int64_t M,
                        int64_t N, int64_t K)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0xD1B54A32D192ED03ull ^ (uint64_t)(M * 1000003 + N * 1009 + K);
    const int64_t lda = K + 2, ldb = N + 1 + K % 3, ldc = N + 3;
    float *A = alloc_filled(M, lda, NAN);
    float *B = alloc_filled(K, ldb, NAN);
    float *C = alloc_filled(M, ldc, SENTINEL);
    float *C0 = alloc_filled(M, ldc, SENTINEL);
    fill_random(A, M, K, lda, &s);
    fill_random(B, K, N, ldb, &s);
    fill_random(C, M, N, ldc, &s);
    memcpy(C0, C, ((size_t)(M * ldc) + GUARD) * sizeof(float));
    kt->gemm_nn_acc(M, N, K, A, lda, B, ldb, C, ldc);
    gemm_check g = {isa, "gemm_nn_acc", M, N, K, 0, A, B, C0, lda, ldb, ldc,
                    0, 1.0};
    check_gemm(&g, C, ldc);
    free(A), free(B), free(C), free(C0);
}

/* ---- packed operands -------------------------------------------------------- */

/* gemm_packed_tn on A^T (stored K x M, padded, NaN past its window) must
 * give gemm_packed's C (C, from g's initial values: the bias when g->bt,
 * else C0) bit for bit. */
static void check_gemm_packed_tn(const mha_cpu_kernels *kt,
                                 const gemm_check *g, const float *P,
                                 const float *C, int64_t ldc)
{
    const int64_t M = g->M, K = g->K, ldat = M + 5;
    float *At = alloc_filled(K, ldat, NAN);
    float *C2 = alloc_filled(M, ldc, SENTINEL);
    for (int64_t k = 0; k < K; k++)
        for (int64_t m = 0; m < M; m++)
            At[k * ldat + m] = g->A[m * g->lda + k];
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < g->N; n++)
            C2[m * ldc + n] = g->bt ? SENTINEL : g->init[m * g->ldi + n];
    kt->gemm_packed_tn(M, g->N, K - g->k0, At + g->k0 * ldat, ldat,
                       P + g->k0 * kt->nr, K, g->bt ? g->init : NULL, !g->bt,
                       C2, ldc);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < g->N; n++)
            cr_assert(!memcmp(&C2[m * ldc + n], &C[m * ldc + n],
                              sizeof(float)),
                      "%s gemm_packed_tn M%lld N%lld K%lld: C[%lld][%lld] = "
                      "%a, gemm_packed gives %a", g->isa, (long long)M,
                      (long long)g->N, (long long)K, (long long)m,
                      (long long)n, C2[m * ldc + n], C[m * ldc + n]);
    check_untouched(C2, M, g->N, ldc, "gemm_packed_tn C");
    free(At), free(C2);
}

/* Packs B (transposed and scaled by alpha when nt, else as is) with the
 * table's packer, checks the packer wrote exactly ceil(N/nr)*nr*K floats,
 * then multiplies rows [k0, K) of the packed block (a K range read at
 * Bp + k0*nr with the packer's ldp = K) by A with gemm_packed: overwrite
 * from the bias for nt, accumulate into C otherwise. */
static void run_gemm_packed(table_getter get, const char *isa, int64_t M,
                            int64_t N, int64_t K, int nt)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0xA0761D6478BD642Full ^ (uint64_t)(M * 1000003 + N * 1009 + K);
    const int64_t k0 = nt ? 0 : K / 3, lda = K + 3, ldb = (nt ? K : N) + 2;
    const int64_t ldc = N + 1, nr = kt->nr;
    const float alpha = nt ? 0.75f : 1.0f;
    const int64_t packed = (N + nr - 1) / nr * nr * K;
    const int64_t pld = packed > 0 ? packed : 1; /* one row of packed floats */
    float *A = alloc_filled(M, lda, NAN);
    float *B = alloc_filled(nt ? N : K, ldb, NAN);
    float *P = alloc_filled(1, pld, SENTINEL);
    float *C = alloc_filled(M, ldc, SENTINEL);
    float *C0 = alloc_filled(M, ldc, SENTINEL);
    float *bias = alloc_filled(1, N, NAN);
    fill_random(A, M, K, lda, &s);
    fill_random(B, nt ? N : K, nt ? K : N, ldb, &s);
    fill_random(bias, 1, N, N, &s);
    fill_random(C, M, N, ldc, &s);
    memcpy(C0, C, ((size_t)(M * ldc) + GUARD) * sizeof(float));
    if (nt)
        kt->pack_nt(N, K, B, ldb, alpha, P);
    else
        kt->pack_nn(K, N, B, ldb, P);
    check_untouched(P, 1, packed, pld, "packed B");
    kt->gemm_packed(M, N, K - k0, A + k0, lda, P + k0 * nr, K,
                    nt ? bias : NULL, !nt, C, ldc);
    gemm_check g = {isa, nt ? "gemm_packed nt" : "gemm_packed nn", M, N, K,
                    k0, A, B, nt ? bias : C0, lda, ldb, nt ? 0 : ldc, nt,
                    alpha};
    check_gemm(&g, C, ldc);
    check_gemm_packed_tn(kt, &g, P, C, ldc);
    free(A), free(B), free(P), free(C), free(C0), free(bias);
}

/* ---- elementwise ------------------------------------------------------------ */

/* EW_SCALE in place, EW_SCALE_TO from x into y. */
enum elementwise { EW_SCALE, EW_SCALE_TO, EW_AXPY, EW_SCALE_ADD };

/* Misaligned vectors with guards that must stay untouched. */
static void run_elementwise(table_getter get, const char *isa,
                            enum elementwise op, int64_t n)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0x2545F4914F6CDD1Dull ^ (uint64_t)(n * 7 + op);
    float *x = alloc_vector(n), *y = alloc_vector(n), *y0 = alloc_vector(n);
    fill_random(x, 1, n, n, &s);
    fill_random(y, 1, n, n, &s);
    memcpy(y0, y, (size_t)n * sizeof(float));
    const float alpha = -1.37f;
    static const char *const names[] = {"scale", "scale_to", "axpy",
                                        "scale_add"};
    if (op == EW_SCALE)
        kt->scale(n, alpha, y, y);
    else if (op == EW_SCALE_TO)
        kt->scale(n, alpha, x, y);
    else if (op == EW_AXPY)
        kt->axpy(n, alpha, x, y);
    else
        kt->scale_add(n, alpha, x, y);
    for (int64_t i = 0; i < n; i++) {
        double yo = y0[i], ref, mag;
        if (op == EW_SCALE)
            ref = alpha * yo, mag = fabs(ref);
        else if (op == EW_SCALE_TO)
            ref = (double)alpha * x[i], mag = fabs(ref);
        else if (op == EW_AXPY)
            ref = yo + (double)alpha * x[i], mag = fabs(yo) + fabs(alpha * x[i]);
        else
            ref = (double)alpha * yo + x[i], mag = fabs(alpha * yo) + fabs(x[i]);
        double tol = 2.0 * 2.0 * UNIT_ROUNDOFF * mag;
        cr_assert(fabs(y[i] - ref) <= tol,
                  "%s %s n=%lld: y[%lld] = %.9g, expected %.9g", isa,
                  names[op], (long long)n, (long long)i, (double)y[i], ref);
    }
    check_vector_guards(y, n, names[op]);
    free(x - 1), free(y - 1), free(y0 - 1);
}

/* ---- max ---------------------------------------------------------------------- */

static float call_max(const mha_cpu_kernels *kt, int64_t n, const float *x)
{
    return kt->max(n, x);
}

/* Random values with the maximum planted at position pos. */
static void run_max(table_getter get, const char *isa, int64_t n)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    if (n == 0) {
        float dummy = 1.0f;
        cr_assert(call_max(kt, 0, &dummy) == -INFINITY);
        return;
    }
    uint64_t s = 0x94D049BB133111EBull ^ (uint64_t)n;
    float *x = alloc_vector(n);
    for (int64_t pos = 0; pos < n; pos += (n > 40 ? 13 : 1)) {
        fill_random(x, 1, n, n, &s);
        x[pos] = 2.5f;
        float got = call_max(kt, n, x);
        cr_assert(got == 2.5f, "%s max n=%lld, max at %lld: got %g", isa,
                  (long long)n, (long long)pos, (double)got);
        x[n - 1] = 3.0f; /* the tail must be looked at too */
        got = call_max(kt, n, x);
        cr_assert(got == 3.0f, "%s max n=%lld, max last: got %g", isa,
                  (long long)n, (double)got);
    }
    free(x - 1);
}

/* NaN is ignored wherever it sits, including beside the maximum and in the
 * tail; rows of only -inf and NaN give -inf; +inf wins. */
static void run_max_special(table_getter get, const char *isa)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    enum { N = 37 };
    float x[N];
    uint64_t s = 42;
    for (int pos = 0; pos < N; pos++) {
        for (int i = 0; i < N; i++)
            x[i] = rnd(&s);
        x[(pos * 7) % N] = 1.5f;
        x[pos] = NAN;
        x[N - 1 - pos] = NAN;
        float want = (pos * 7) % N == pos || (pos * 7) % N == N - 1 - pos
                         ? -2.0f : 1.5f;
        float got = call_max(kt, N, x);
        if (want == -2.0f) /* the planted max was overwritten by NaN */
            cr_assert(got <= 1.0f && !isnan(got));
        else
            cr_assert(got == want, "%s max with NaN at %d: got %g", isa, pos,
                      (double)got);
    }
    for (int i = 0; i < N; i++)
        x[i] = -INFINITY;
    cr_assert(call_max(kt, N, x) == -INFINITY, "all -inf");
    for (int i = 0; i < N; i++)
        x[i] = NAN;
    cr_assert(call_max(kt, N, x) == -INFINITY, "all NaN");
    for (int i = 0; i < N; i++)
        x[i] = (i % 3) ? -INFINITY : NAN;
    cr_assert(call_max(kt, N, x) == -INFINITY, "NaN and -inf");
    x[N - 2] = INFINITY;
    cr_assert(call_max(kt, N, x) == INFINITY, "+inf");
    for (int n = 1; n <= 9; n++) { /* a lone NaN in a short tail */
        for (int i = 0; i < n; i++)
            x[i] = -1.0f - (float)i;
        x[n - 1] = NAN;
        float want = n == 1 ? -INFINITY : -1.0f;
        cr_assert(call_max(kt, n, x) == want, "NaN last of %d", n);
    }
}

/* ---- exp_sum ------------------------------------------------------------------ */

/* Checks y = exp(x0 - m) element by element and the returned sum against
 * double references; the argument is rounded to float first, as the kernel
 * sees it. */
static void check_exp(const char *isa, const char *what, int64_t n, float m,
                      const float *x0, const float *y, float sum)
{
    double ref_sum = 0.0, flushable = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float arg = x0[i] - m;
        double ref = exp((double)arg);
        ref_sum += ref;
        flushable += arg < -87.0f ? FLT_MIN : 0.0;
        if (arg >= -87.0f)
            cr_assert(fabs(y[i] - ref) <= 2e-6 * ref,
                      "%s %s: exp(%.9g) = %.9g, expected %.9g (rel err %.3g)",
                      isa, what, (double)arg, (double)y[i], ref,
                      fabs(y[i] - ref) / ref);
        else
            cr_assert(y[i] >= 0.0f && fabs(y[i] - ref) <= FLT_MIN,
                      "%s %s: exp(%.9g) = %.9g, expected %.9g or 0", isa,
                      what, (double)arg, (double)y[i], ref);
    }
    double tol = (2e-6 + (double)(n + 1) * UNIT_ROUNDOFF) * ref_sum +
                 flushable;
    cr_assert(fabs(sum - ref_sum) <= tol,
              "%s %s n=%lld: sum %.9g, expected %.9g", isa, what,
              (long long)n, (double)sum, ref_sum);
}

static float *copy_of(const float *x, int64_t n)
{
    float *c = malloc(((size_t)n + 1) * sizeof(float));
    cr_assert_not_null(c);
    memcpy(c, x, (size_t)n * sizeof(float));
    return c;
}

/* Random arguments in [-12, 0] at every size, with guards. */
static void run_exp_sum(table_getter get, const char *isa, int64_t n)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0xBF58476D1CE4E5B9ull ^ (uint64_t)n;
    float *x = alloc_vector(n);
    const float m = 0.75f;
    for (int64_t i = 0; i < n; i++)
        x[i] = m + 6.0f * (rnd(&s) - 1.0f);
    float *x0 = copy_of(x, n);
    float sum = kt->exp_sum(n, m, x);
    check_exp(isa, "exp_sum", n, m, x0, x, sum);
    check_vector_guards(x, n, "exp_sum");
    free(x - 1), free(x0);
}

/* The measured bound of the fast exp over the sweep of [-87, 0]: every
 * table's exp (Cephes-style range reduction and degree-6 polynomial) is
 * within EXP_MEASURED_BOUND of the exact exp, about 5 ulp (the SIMD tables
 * measure 8.2e-8, 1.4 ulp, on x86 and under qemu; the scalar table's expf
 * 6e-8), far inside the 2e-6 per-element contract checked above. The
 * sweep's maximum is logged so a change to the polynomial shows its
 * effect. */
#define EXP_MEASURED_BOUND 3e-7

static void check_exp_bound(const char *isa, int64_t n, const float *x0,
                            const float *y)
{
    double worst = 0.0, at = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double ref = exp((double)x0[i]);
        double rel = fabs((double)y[i] - ref) / ref;
        if (rel > worst) {
            worst = rel;
            at = x0[i];
        }
    }
    cr_log_info("%s exp: max relative error %.3g at x = %.6g over [-87, 0]",
                isa, worst, at);
    cr_assert(worst <= EXP_MEASURED_BOUND,
              "%s exp: relative error %.3g at x = %.9g exceeds %.3g", isa,
              worst, at, EXP_MEASURED_BOUND);
}

/* The accuracy contract: a dense sweep of [-87, 0] (2^20 + 1 points, both
 * ends included), then [-120, -87) where flushing to 0 is allowed. */
static void run_exp_accuracy(table_getter get, const char *isa)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    const int64_t n = (1 << 20) + 1;
    float *x = malloc((size_t)n * sizeof(float));
    cr_assert_not_null(x);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(-87.0 * (double)i / (double)(n - 1));
    float *x0 = copy_of(x, n);
    float sum = kt->exp_sum(n, 0.0f, x);
    check_exp(isa, "exp accuracy [-87, 0]", n, 0.0f, x0, x, sum);
    check_exp_bound(isa, n, x0, x);
    for (int64_t i = 0; i < n; i++)
        x0[i] = x[i] = (float)(-87.0 - 33.0 * (double)i / (double)n);
    sum = kt->exp_sum(n, 0.0f, x);
    check_exp(isa, "exp below -87", n, 0.0f, x0, x, sum);
    free(x), free(x0);
}

/* exp(-inf) is exactly 0, NaN propagates to its element and to the sum;
 * with m = +inf, finite arguments give 0 and +inf - +inf gives NaN. */
static void run_exp_special(table_getter get, const char *isa)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    enum { N = 21 };
    float x[N];
    for (int i = 0; i < N; i++)
        x[i] = (i % 4 == 1) ? -INFINITY : -0.5f * (float)i;
    float sum = kt->exp_sum(N, 0.0f, x);
    double ref = 0.0;
    for (int i = 0; i < N; i++) {
        if (i % 4 == 1)
            cr_assert(x[i] == 0.0f, "%s exp(-inf) = %g", isa, (double)x[i]);
        else
            ref += exp(-0.5 * i);
    }
    cr_assert(fabs(sum - ref) <= 1e-5 * ref, "%s sum with -inf", isa);

    for (int pos = 0; pos < N; pos += 5) { /* NaN in body and tail */
        for (int i = 0; i < N; i++)
            x[i] = -0.25f * (float)i;
        x[pos] = NAN;
        sum = kt->exp_sum(N, 0.0f, x);
        cr_assert(isnan(x[pos]), "%s exp(NaN) at %d = %g", isa, pos,
                  (double)x[pos]);
        cr_assert(isnan(sum), "%s NaN must reach the sum", isa);
        cr_assert(x[(pos + 1) % N] > 0.0f && !isnan(x[(pos + 1) % N]));
    }

    for (int i = 0; i < N; i++)
        x[i] = (i == 3 || i == 19) ? INFINITY : (float)i - 10.0f;
    x[7] = -INFINITY;
    sum = kt->exp_sum(N, INFINITY, x);
    for (int i = 0; i < N; i++) {
        if (i == 3 || i == 19)
            cr_assert(isnan(x[i]), "%s exp(inf - inf) = %g", isa, (double)x[i]);
        else
            cr_assert(x[i] == 0.0f, "%s exp(x - inf) = %g", isa, (double)x[i]);
    }
    cr_assert(isnan(sum));

    float dummy = SENTINEL;
    cr_assert(kt->exp_sum(0, 0.0f, &dummy) == 0.0f && dummy == SENTINEL);
}

/* ---- fp16 -> f32 --------------------------------------------------------------- */

/* The scalar routine every table must match, pinned at a few halves: one,
 * the smallest subnormal, -inf, and a signalling NaN made quiet. */
Test(half, scalar_reference_points)
{
    const uint16_t in[4] = {0x3c00u, 0x0001u, 0xfc00u, 0x7c01u};
    const uint32_t want[4] = {0x3f800000u, 0x33800000u, 0xff800000u,
                              0x7fc02000u};
    for (int i = 0; i < 4; i++) {
        float f = mha_f16_to_f32(in[i]);
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        cr_assert_eq(u, want[i], "half %#x -> %#x, want %#x", in[i], u,
                     want[i]);
    }
}

static void check_f16_run(const char *isa, const uint16_t *x, int64_t n,
                          const float *y)
{
    for (int64_t i = 0; i < n; i++) {
        float want = mha_f16_to_f32(x[i]);
        cr_assert(memcmp(&want, &y[i], sizeof want) == 0,
                  "%s: half %#x (element %lld of %lld) -> %a, scalar %a", isa,
                  x[i], (long long)i, (long long)n, (double)y[i],
                  (double)want);
    }
    check_vector_guards(y, n, isa);
}

/* Every half in one call, then calls of every length up to four of the
 * widest vectors (each tail), all from odd addresses: the bits of the
 * scalar routine, and nothing written past n. */
static void run_f16_to_f32(table_getter get, const char *isa)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    enum { HALVES = 0x10000 };
    uint16_t *all = malloc((HALVES + 1) * sizeof *all);
    cr_assert_not_null(all);
    for (uint32_t b = 0; b < HALVES; b++)
        all[b + 1] = (uint16_t)b;
    float *y = alloc_vector(HALVES);
    kt->f16_to_f32(HALVES, all + 1, y);
    check_f16_run(isa, all + 1, HALVES, y);
    free(y - 1);
    for (int64_t n = 0; n <= 64; n++) {
        const uint16_t *x = all + 1 + 0x3bf0 + 7 * n; /* around 1.0 */
        y = alloc_vector(n);
        kt->f16_to_f32(n, x, y);
        check_f16_run(isa, x, n, y);
        free(y - 1);
    }
    free(all);
}

/* ---- decode kernels ----------------------------------------------------------- */

/* K or V as a kernel reads it: rows x cols values at stride ld, f32 or
 * (f16) random fp16 bits of magnitude 2^-4 to 2, padding NaN; wide holds
 * the same values as floats (the fp16 ones widened exactly) for the
 * reference. */
typedef struct kv_rows {
    void *data;
    float *wide;
} kv_rows;

static kv_rows make_kv(int64_t rows, int64_t cols, int64_t ld, int f16,
                       uint64_t *s)
{
    kv_rows m = {NULL, alloc_filled(rows, ld, NAN)};
    fill_random(m.wide, rows, cols, ld, s);
    if (!f16) {
        m.data = m.wide;
        return m;
    }
    size_t count = (size_t)(rows * ld) + GUARD;
    uint16_t *h = malloc(count * sizeof *h);
    cr_assert_not_null(h);
    for (size_t i = 0; i < count; i++) {
        int64_t r = (int64_t)i / ld, c = (int64_t)i % ld;
        /* random sign, exponent 2^-4..2^0 and mantissa; NaN padding */
        h[i] = r < rows && c < cols
                   ? (uint16_t)((uint16_t)(rnd(s) < 0) << 15 |
                                (uint16_t)(11 + (int)(2.5f + 2.49f * rnd(s)))
                                    << 10 |
                                (uint16_t)(512.0f + 511.0f * rnd(s)))
                   : 0x7e00u;
        m.wide[i] = mha_f16_to_f32(h[i]);
    }
    m.data = h;
    return m;
}

static void free_kv(kv_rows *m)
{
    if (m->data != m->wide)
        free(m->data);
    free(m->wide);
}

/* kv_scores: s = scale * q K^T, G query rows against n key rows of d
 * values, padding NaN everywhere, s NaN inside (overwritten, never read)
 * and SENTINEL outside. */
static void run_kv_scores(table_getter get, const char *isa, int64_t G,
                          int64_t n, int64_t d, int f16)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0x2545F4914F6CDD1Dull ^ (uint64_t)(G * 1000003 + n * 1009 + d);
    const int64_t ldq = d + 1 + G % 3, ldk = d + 2 + n % 5, lds = n + 3;
    float *q = alloc_filled(G, ldq, NAN);
    float *out = alloc_filled(G, lds, SENTINEL);
    fill_random(q, G, d, ldq, &s);
    kv_rows K = make_kv(n, d, ldk, f16, &s);
    for (int64_t g = 0; g < G; g++)
        for (int64_t j = 0; j < n; j++)
            out[g * lds + j] = NAN;
    kt->kv_scores(1, G, n, d, q, ldq, K.data, ldk, 0, f16, 0.375f, out, lds);
    gemm_check c = {isa, f16 ? "kv_scores f16" : "kv_scores", G, n, d, 0,
                    q, K.wide, NULL, ldq, ldk, 0, 1, 0.375};
    check_gemm(&c, out, lds);
    free(q), free(out), free_kv(&K);
}

/* kv_values: acc += p V, acc random inside and SENTINEL outside. */
static void run_kv_values(table_getter get, const char *isa, int64_t G,
                          int64_t n, int64_t d, int f16)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0x9FB21C651E98DF25ull ^ (uint64_t)(G * 1000003 + n * 1009 + d);
    const int64_t ldp = n + 1 + G % 3, ldv = d + 2 + n % 5, lda = d + 3;
    float *p = alloc_filled(G, ldp, NAN);
    float *acc = alloc_filled(G, lda, SENTINEL);
    float *acc0 = alloc_filled(G, lda, SENTINEL);
    fill_random(p, G, n, ldp, &s);
    fill_random(acc, G, d, lda, &s);
    memcpy(acc0, acc, ((size_t)(G * lda) + GUARD) * sizeof(float));
    kv_rows V = make_kv(n, d, ldv, f16, &s);
    kt->kv_values(1, G, n, d, p, ldp, V.data, ldv, 0, f16, acc, lda);
    gemm_check c = {isa, f16 ? "kv_values f16" : "kv_values", G, d, n, 0,
                    p, V.wide, acc0, ldp, ldv, lda, 0, 1.0};
    check_gemm(&c, acc, lda);
    free(p), free(acc), free(acc0), free_kv(&V);
}

/* nh kv heads side by side in each row (head h at element h * hs, hs =
 * d + 1): the rows of head h must come out bit for bit as a call for that
 * head alone gives them (checked against the reference above), scores and
 * values alike. */
static void run_kv_heads(table_getter get, const char *isa, int64_t G,
                         int64_t n, int64_t d, int f16)
{
    const mha_cpu_kernels *kt = table_or_skip(get, isa);
    uint64_t s = 0x5851F42D4C957F2Dull ^ (uint64_t)(G * 1000003 + n * 1009 + d);
    const int64_t nh = 3, hs = d + 1, ld = nh * hs + 2, R = nh * G;
    const int64_t ldq = d + 2, lds = n + 1, es = f16 ? 2 : 4;
    float *q = alloc_filled(R, ldq, NAN), *p = alloc_filled(R, lds, NAN);
    float *all = alloc_filled(R, lds, SENTINEL);
    float *one = alloc_filled(R, lds, SENTINEL);
    float *acc = alloc_filled(R, ldq, SENTINEL);
    float *acc1 = alloc_filled(R, ldq, SENTINEL);
    fill_random(q, R, d, ldq, &s);
    fill_random(p, R, n, lds, &s);
    fill_random(acc, R, d, ldq, &s);
    memcpy(acc1, acc, ((size_t)(R * ldq) + GUARD) * sizeof(float));
    kv_rows M = make_kv(n, nh * hs, ld, f16, &s);
    kt->kv_scores(nh, G, n, d, q, ldq, M.data, ld, hs, f16, 0.5f, all, lds);
    kt->kv_values(nh, G, n, d, p, lds, M.data, ld, hs, f16, acc, ldq);
    for (int64_t h = 0; h < nh; h++) {
        const char *mh = (const char *)M.data + h * hs * es;
        kt->kv_scores(1, G, n, d, q + h * G * ldq, ldq, mh, ld, 0, f16, 0.5f,
                      one + h * G * lds, lds);
        kt->kv_values(1, G, n, d, p + h * G * lds, lds, mh, ld, 0, f16,
                      acc1 + h * G * ldq, ldq);
    }
    cr_assert(memcmp(all, one, ((size_t)(R * lds) + GUARD) * sizeof(float)) ==
                  0,
              "%s kv_scores of %lld heads differ from one head at a time", isa,
              (long long)nh);
    cr_assert(memcmp(acc, acc1, ((size_t)(R * ldq) + GUARD) * sizeof(float)) ==
                  0,
              "%s kv_values of %lld heads differ from one head at a time", isa,
              (long long)nh);
    free(q), free(p), free(all), free(one), free(acc), free(acc1);
    free_kv(&M);
}

/* ---- the test table ------------------------------------------------------------ */

#define ISA_LIST(X) X(scalar) X(avx2) X(avx512) X(neon)

/* (M, N, K): empty, single, sizes around every SIMD width (4, 8, 16) and
 * micro-tile (6, 8, 16, 32), K past one cache block (128), and M on both
 * sides of the SIMD tables' switches from dot products or streamed rows
 * to tiles (M < 6 or 8 and M <= 8). */
#define GEMM_CASES(X, isa)                                                  \
    X(isa, 0, 0, 0) X(isa, 0, 5, 3) X(isa, 5, 0, 3) X(isa, 4, 5, 0)        \
    X(isa, 1, 1, 1) X(isa, 1, 1, 257) X(isa, 2, 3, 1) X(isa, 3, 2, 7)      \
    X(isa, 7, 8, 9) X(isa, 8, 7, 16) X(isa, 9, 16, 8) X(isa, 15, 17, 31)   \
    X(isa, 16, 16, 16) X(isa, 17, 15, 33) X(isa, 31, 33, 17)               \
    X(isa, 33, 31, 64) X(isa, 6, 16, 128) X(isa, 12, 32, 256)              \
    X(isa, 64, 64, 64) X(isa, 1, 100, 64) X(isa, 100, 1, 64)               \
    X(isa, 7, 257, 3) X(isa, 257, 7, 100) X(isa, 100, 100, 257)            \
    X(isa, 13, 33, 300) X(isa, 2, 64, 129) X(isa, 64, 2, 1)                \
    X(isa, 23, 40, 129) X(isa, 20, 16, 5) X(isa, 18, 31, 2)

#define VEC_SIZES(X, isa)                                                   \
    X(isa, 0) X(isa, 1) X(isa, 2) X(isa, 3) X(isa, 4) X(isa, 5) X(isa, 7)  \
    X(isa, 8) X(isa, 9) X(isa, 15) X(isa, 16) X(isa, 17) X(isa, 31)        \
    X(isa, 33) X(isa, 64) X(isa, 100) X(isa, 257)

/* (G, n, d) of the decode kernels: G around their row tile (4) and a
 * kv group's sizes (1, 4, 8, 32 = 8 heads x 4 queries), n around their key
 * tiles (2, 3 and 4 keys; values' 8) and a key block (128), d from 1 to
 * 256 with every tail of the 4-, 8- and 16-float vectors and of AVX2's
 * 2-vector value tiles. */
#define KV_CASES(X, isa)                                                    \
    X(isa, 0, 5, 8) X(isa, 3, 0, 8) X(isa, 1, 1, 1) X(isa, 1, 7, 3)        \
    X(isa, 2, 2, 7) X(isa, 3, 3, 9) X(isa, 4, 5, 15) X(isa, 5, 9, 16)      \
    X(isa, 8, 17, 17) X(isa, 7, 4, 31) X(isa, 1, 130, 64)                  \
    X(isa, 4, 128, 128) X(isa, 8, 33, 100) X(isa, 32, 6, 40)               \
    X(isa, 9, 11, 129) X(isa, 6, 3, 256) X(isa, 4, 2, 255)

#define KV_TESTS(isa, G, n, d)                                              \
    Test(isa, kv_scores_G##G##_n##n##_d##d)                                 \
    {                                                                       \
        run_kv_scores(mha_cpu_kernels_##isa, #isa, G, n, d, 0);            \
        run_kv_scores(mha_cpu_kernels_##isa, #isa, G, n, d, 1);            \
    }                                                                       \
    Test(isa, kv_values_G##G##_n##n##_d##d)                                 \
    {                                                                       \
        run_kv_values(mha_cpu_kernels_##isa, #isa, G, n, d, 0);            \
        run_kv_values(mha_cpu_kernels_##isa, #isa, G, n, d, 1);            \
    }                                                                       \
    Test(isa, kv_heads_G##G##_n##n##_d##d)                                  \
    {                                                                       \
        run_kv_heads(mha_cpu_kernels_##isa, #isa, G, n, d, 0);             \
        run_kv_heads(mha_cpu_kernels_##isa, #isa, G, n, d, 1);             \
    }

#define GEMM_TESTS(isa, M, N, K)                                            \
    Test(isa, gemm_nt_M##M##_N##N##_K##K)                                   \
    {                                                                       \
        run_gemm_nt(mha_cpu_kernels_##isa, #isa, M, N, K, 0);              \
    }                                                                       \
    Test(isa, gemm_nt_bias_M##M##_N##N##_K##K)                              \
    {                                                                       \
        run_gemm_nt(mha_cpu_kernels_##isa, #isa, M, N, K, 1);              \
    }                                                                       \
    Test(isa, gemm_nn_acc_M##M##_N##N##_K##K)                               \
    {                                                                       \
        run_gemm_nn(mha_cpu_kernels_##isa, #isa, M, N, K);                 \
    }                                                                       \
    Test(isa, gemm_packed_M##M##_N##N##_K##K) /* pack_nt, then pack_nn */  \
    {                                                                       \
        run_gemm_packed(mha_cpu_kernels_##isa, #isa, M, N, K, 1);          \
        run_gemm_packed(mha_cpu_kernels_##isa, #isa, M, N, K, 0);          \
    }

#define VEC_TESTS(isa, n)                                                   \
    Test(isa, scale_n##n)                                                   \
    {                                                                       \
        run_elementwise(mha_cpu_kernels_##isa, #isa, EW_SCALE, n);         \
    }                                                                       \
    Test(isa, scale_to_n##n)                                                \
    {                                                                       \
        run_elementwise(mha_cpu_kernels_##isa, #isa, EW_SCALE_TO, n);      \
    }                                                                       \
    Test(isa, axpy_n##n)                                                    \
    {                                                                       \
        run_elementwise(mha_cpu_kernels_##isa, #isa, EW_AXPY, n);          \
    }                                                                       \
    Test(isa, scale_add_n##n)                                               \
    {                                                                       \
        run_elementwise(mha_cpu_kernels_##isa, #isa, EW_SCALE_ADD, n);     \
    }                                                                       \
    Test(isa, max_n##n) { run_max(mha_cpu_kernels_##isa, #isa, n); }        \
    Test(isa, exp_sum_n##n) { run_exp_sum(mha_cpu_kernels_##isa, #isa, n); }

#define ISA_TESTS(isa)                                                      \
    GEMM_CASES(GEMM_TESTS, isa)                                             \
    KV_CASES(KV_TESTS, isa)                                                 \
    VEC_SIZES(VEC_TESTS, isa)                                               \
    Test(isa, max_nan_inf) { run_max_special(mha_cpu_kernels_##isa, #isa); } \
    Test(isa, exp_accuracy)                                                 \
    {                                                                       \
        run_exp_accuracy(mha_cpu_kernels_##isa, #isa);                     \
    }                                                                       \
    Test(isa, exp_special) { run_exp_special(mha_cpu_kernels_##isa, #isa); } \
    Test(isa, f16_to_f32_every_half)                                        \
    {                                                                       \
        run_f16_to_f32(mha_cpu_kernels_##isa, #isa);                       \
    }

ISA_LIST(ISA_TESTS)

/* The tables handed out agree with the detected features, and the scalar
 * reference is always there. */
Test(cpu, features_match_tables)
{
    unsigned f = mha_cpu_features();
    cr_assert_not_null(mha_cpu_kernels_scalar());
    cr_assert_geq(mha_cpu_core_count(), 1);
    if (!(f & MHA_FEATURE_AVX2))
        cr_assert_null(mha_cpu_kernels_avx2());
    if (!(f & MHA_FEATURE_AVX512))
        cr_assert_null(mha_cpu_kernels_avx512());
    if (!(f & MHA_FEATURE_NEON))
        cr_assert_null(mha_cpu_kernels_neon());
#if defined(__aarch64__)
    cr_assert(f & MHA_FEATURE_NEON);
#endif
    cr_log_info("cpu features 0x%x: avx2 %s, avx512 %s, neon %s; %d cores", f,
                mha_cpu_kernels_avx2() ? "yes" : "no",
                mha_cpu_kernels_avx512() ? "yes" : "no",
                mha_cpu_kernels_neon() ? "yes" : "no", mha_cpu_core_count());
}
