/* gemm.cl: one tiled, strided batched matrix product that serves three ops:
 *   C[b,h,m,n] = alpha * sum_k A[b,h,m,k] B[b,h,n,k]
 *                + X1[b,h,m,n]                        (bias)
 *                + X2[b,h,m,n] + X3[b,h,m,n]          (f32 masks, n < add_cols)
 *   causal: n > m and n < add_cols gives -inf.
 * PROJECTION is X W^T + bias, SCORES is scale Q K^T + masks, WEIGHTED_SUM
 * is P V (B's strides swapped by the host). halfmask bits: 0 A, 1 B, 2 C,
 * 3 X1 (masks are always f32). A TS x TS workgroup computes a TM x TM
 * block of C (TM = TS * WPT), each item WPT x WPT outputs held in
 * registers, staging TS-deep slices of A and B in local memory; TS and WPT
 * come from the device's limits. Zero strides broadcast. */
#ifndef TS
#define TS 16
#endif
#ifndef WPT
#define WPT 4
#endif
#define TM (TS * WPT) /* rows and columns of C per workgroup */

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
    /* k-major tiles: As[k][m], Bs[k][n]; +1 staggers the banks. */
    local float As[TS][TM + 1];
    local float Bs[TS][TM + 1];
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int n0 = get_group_id(0) * TM, m0 = get_group_id(1) * TM;
    const int z = get_global_id(2);
    const int b = z / dims.x, h = z % dims.x;
    const int M = dims.y, N = dims.z, K = dims.w;
    const int a_base = AT(a_off, a_st, b, h, 0, 0);
    const int b_base = AT(b_off, b_st, b, h, 0, 0);
    float acc[WPT][WPT];
    for (int i = 0; i < WPT; i++)
        for (int j = 0; j < WPT; j++)
            acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += TS) {
        /* Each item loads WPT rows of each tile at column k0 + lx. */
        const int k = k0 + lx;
        for (int i = 0; i < WPT; i++) {
            const int r = ly + i * TS;
            const int m = m0 + r, n = n0 + r;
            As[lx][r] = (m < M && k < K)
                            ? LD(A, a_base + m * a_st.z + k * a_st.w, 0)
                            : 0.0f;
            Bs[lx][r] = (n < N && k < K)
                            ? LD(B, b_base + n * b_st.z + k * b_st.w, 1)
                            : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int kk = 0; kk < TS; kk++) {
            float av[WPT], bv[WPT];
            for (int i = 0; i < WPT; i++) {
                av[i] = As[kk][ly + i * TS];
                bv[i] = Bs[kk][lx + i * TS];
            }
            for (int i = 0; i < WPT; i++)
                for (int j = 0; j < WPT; j++)
                    acc[i][j] += av[i] * bv[j];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    for (int i = 0; i < WPT; i++) {
        const int m = m0 + ly + i * TS;
        for (int j = 0; j < WPT; j++) {
            const int n = n0 + lx + j * TS;
            if (m >= M || n >= N)
                continue;
            float v = alpha * acc[i][j];
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
