/* gemm.cl: one tiled, strided batched matrix product that serves three ops:
 *   C[b,h,m,n] = alpha * sum_k A[b,h,m,k] B[b,h,n,k]
 *                + X1[b,h,m,n]                        (bias)
 *                + X2[b,h,m,n] + X3[b,h,m,n]          (f32 masks, n < add_cols)
 *   causal: n > m and n < add_cols gives -inf.
 * PROJECTION is X W^T + bias, SCORES is scale Q K^T + masks, WEIGHTED_SUM
 * is P V (B's strides swapped by the host). halfmask bits: 0 A, 1 B, 2 C,
 * 3 X1 (masks are always f32). A TS x TS workgroup computes a TM x TM
 * block of C (TM = TS * WPT); item (x, y) holds the WPT x WPT outputs of
 * rows y * WPT.. and columns x * WPT.. as WPT vectors of WPT floats, and
 * the group stages BK-deep slices of A and B in local memory, k-major, so
 * that an item reads its WPT rows and WPT columns of one k as two vector
 * loads (2 loads per WPT * WPT FMAs). A slice is read from global memory
 * along whichever of its dims is contiguous (k for X and W, n for V in
 * the weighted sum), four elements at a time (VW 2: as two float2s, VW 1:
 * as scalars). DIRECT 1 stages nothing: each item reads its WPT rows of
 * A and WPT columns of B four k at a time straight from global memory,
 * with no local memory and no barrier, for devices where local memory is
 * the same cached DRAM and barriers split the workgroup's loops (CPU
 * runtimes; on PoCL it measured no faster than the tiles, see
 * backends/opencl/tune.c). TS, WPT, BK, DIRECT and VW come from the
 * device's limits or a variant (tune.c); zero strides broadcast. */
#ifndef TS
#define TS 16
#endif
#ifndef WPT
#define WPT 4 /* 4, 8 or 16: a vector width */
#endif
#ifndef BK
#define BK 16
#endif
#ifndef DIRECT
#define DIRECT 0
#endif
#ifndef VW
#define VW 4 /* widest global load: 4, 2 or 1 floats */
#endif
#define TM (TS * WPT) /* rows and columns of C per workgroup */
/* Local rows are TM + 4 floats: a slice written k-major from k-contiguous
 * rows then lands on different banks for the four k of one load, and
 * vector reads stay 16-byte aligned. */
#define TP (TM + 4)

#define GCAT_(a, b) a##b
#define GCAT(a, b) GCAT_(a, b)
typedef GCAT(float, WPT) gvec;
#define GVLOAD GCAT(vload, WPT)
#define GVSTORE GCAT(vstore, WPT)

/* Element i of a tensor stored as f32 or (f16 != 0) f16. */
static float gload1(global const float *p, int i, int f16)
{
    return f16 ? vload_half(i, (global const half *)p) : p[i];
}

/* Four elements at base, base + st, ... (the first n of them; zeros after):
 * one vector load where they are contiguous. */
static float4 gload4(global const float *p, int base, int st, int n, int f16)
{
#if VW == 4
    if (st == 1 && n >= 4)
        return f16 ? vload_half4(0, (global const half *)p + base)
                   : vload4(0, p + base);
#elif VW == 2
    if (st == 1 && n >= 4)
        return f16 ? (float4)(vload_half2(0, (global const half *)p + base),
                              vload_half2(1, (global const half *)p + base))
                   : (float4)(vload2(0, p + base), vload2(1, p + base));
#endif
    float4 v = 0.0f;
    if (n > 0)
        v.x = gload1(p, base, f16);
    if (n > 1)
        v.y = gload1(p, base + st, f16);
    if (n > 2)
        v.z = gload1(p, base + 2 * st, f16);
    if (n > 3)
        v.w = gload1(p, base + 3 * st, f16);
    return v;
}

/* Stages rows r0.. (rows of them exist) and k k0.. (K exist) of a matrix
 * with row stride sr and k stride sk into T[k][row], zeros outside. */
static void stage(local float *T, global const float *p, int base, int sr,
                  int sk, int r0, int rows, int k0, int K, int f16)
{
    const int lid = get_local_id(1) * TS + get_local_id(0);
    if (sk == 1 || sr != 1) { /* along k: four k of one row per load */
        for (int e = lid; e < TM * BK / 4; e += TS * TS) {
            const int r = e / (BK / 4), k = 4 * (e % (BK / 4));
            const int n = r0 + r < rows ? K - (k0 + k) : 0;
            const float4 v =
                gload4(p, base + (r0 + r) * sr + (k0 + k) * sk, sk, n, f16);
            T[k * TP + r] = v.x;
            T[(k + 1) * TP + r] = v.y;
            T[(k + 2) * TP + r] = v.z;
            T[(k + 3) * TP + r] = v.w;
        }
    } else { /* along the rows: four rows of one k per load */
        for (int e = lid; e < TM * BK / 4; e += TS * TS) {
            const int k = e / (TM / 4), r = 4 * (e % (TM / 4));
            const int n = k0 + k < K ? rows - (r0 + r) : 0;
            vstore4(gload4(p, base + (r0 + r) * sr + (k0 + k) * sk, sr, n,
                           f16),
                    0, T + k * TP + r);
        }
    }
}

#if DIRECT
/* Adds k0 .. k0 + 3 of the item's WPT x WPT block: A's rows m0.. (of M)
 * read along k, B's columns n0.. (of N) along k, or (sr == 1, the
 * weighted sum's V) four columns of one k per load. */
static void direct_step(gvec *acc, global const float *A, int a_base,
                        int4 a_st, int m0, int M, global const float *B,
                        int b_base, int4 b_st, int n0, int N, int k0, int K,
                        int halfmask)
{
    float a[WPT][4], b[4][WPT];
    for (int i = 0; i < WPT; i++)
        vstore4(gload4(A, a_base + (m0 + i) * a_st.z + k0 * a_st.w, a_st.w,
                       m0 + i < M ? K - k0 : 0, IS_HALF(0)),
                0, a[i]);
    if (b_st.w == 1 || b_st.z != 1) {
        for (int j = 0; j < WPT; j++) {
            const float4 v =
                gload4(B, b_base + (n0 + j) * b_st.z + k0 * b_st.w, b_st.w,
                       n0 + j < N ? K - k0 : 0, IS_HALF(1));
            b[0][j] = v.x;
            b[1][j] = v.y;
            b[2][j] = v.z;
            b[3][j] = v.w;
        }
    } else {
        for (int kk = 0; kk < 4; kk++)
            for (int j = 0; j < WPT; j += 4)
                vstore4(gload4(B, b_base + (n0 + j) + (k0 + kk) * b_st.w, 1,
                               k0 + kk < K ? N - (n0 + j) : 0, IS_HALF(1)),
                        0, b[kk] + j);
    }
    for (int kk = 0; kk < 4; kk++) {
        const gvec bv = GVLOAD(0, b[kk]);
        for (int i = 0; i < WPT; i++)
            acc[i] = fma((gvec)a[i][kk], bv, acc[i]);
    }
}
#endif

__attribute__((reqd_work_group_size(TS, TS, 1)))
kernel void gemm(global const float *A, int a_off, int4 a_st,
                 global const float *B, int b_off, int4 b_st,
                 global float *C, int c_off, int4 c_st,
                 global const float *X1, int x1_off, int4 x1_st,
                 global const float *X2, int x2_off, int4 x2_st,
                 global const float *X3, int x3_off, int4 x3_st,
                 int4 dims, /* H, M, N, K */
                 float alpha, int causal, int add_cols, int halfmask)
{
#if !DIRECT
    local float As[BK * TP];
    local float Bs[BK * TP];
#endif
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int n0 = get_group_id(0) * TM, m0 = get_group_id(1) * TM;
    const int z = get_global_id(2);
    const int b = z / dims.x, h = z % dims.x;
    const int M = dims.y, N = dims.z, K = dims.w;
    const int a_base = AT(a_off, a_st, b, h, 0, 0);
    const int b_base = AT(b_off, b_st, b, h, 0, 0);
    gvec acc[WPT];
    for (int i = 0; i < WPT; i++)
        acc[i] = 0.0f;

#if DIRECT
    for (int k0 = 0; k0 < K; k0 += 4)
        direct_step(acc, A, a_base, a_st, m0 + ly * WPT, M, B, b_base, b_st,
                    n0 + lx * WPT, N, k0, K, halfmask);
#else
    for (int k0 = 0; k0 < K; k0 += BK) {
        stage(As, A, a_base, a_st.z, a_st.w, m0, M, k0, K, IS_HALF(0));
        stage(Bs, B, b_base, b_st.z, b_st.w, n0, N, k0, K, IS_HALF(1));
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < BK; kk++) {
            float av[WPT];
            GVSTORE(GVLOAD(0, As + kk * TP + ly * WPT), 0, av);
            const gvec bv = GVLOAD(0, Bs + kk * TP + lx * WPT);
            for (int i = 0; i < WPT; i++)
                acc[i] = fma((gvec)av[i], bv, acc[i]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#endif

    for (int i = 0; i < WPT; i++) {
        const int m = m0 + ly * WPT + i;
        float cv[WPT];
        GVSTORE(acc[i], 0, cv);
        for (int j = 0; j < WPT; j++) {
            const int n = n0 + lx * WPT + j;
            if (m >= M || n >= N)
                continue;
            float v = alpha * cv[j];
            if (x1_off >= 0)
                v += LD(X1, AT(x1_off, x1_st, b, h, m, n), 3);
            if (n < add_cols) {
                if (x2_off >= 0)
                    v += X2[AT(x2_off, x2_st, b, h, m, n)];
                if (x3_off >= 0)
                    v += X3[AT(x3_off, x3_st, b, h, m, n)];
                if (causal && n > m)
                    v = -INFINITY;
            }
            ST(C, AT(c_off, c_st, b, h, m, n), v, 2);
        }
    }
}
