/* attention.cl: fused flash attention, SCORES + SOFTMAX + WEIGHTED_SUM
 * without the L x S' matrix. A workgroup of BR work items takes BR query
 * rows of one (batch, head); each item keeps its query row and output
 * accumulator in private memory, and the group streams K and V through
 * local memory in tiles of BC rows, keeping a running max and sum (online
 * softmax). The head size is padded with zeros to D_MAX (a power of two),
 * so one build serves every head size of its bucket. BR, BC and D_MAX come
 * from the device's limits (local memory: 2 * BC * D_MAX floats).
 * Masks (f32, zero strides broadcast) and causal apply to j < mask_cols; a
 * query row whose keys are all masked yields zeros. halfmask: 0 Q, 1 K,
 * 2 V, 3 O (masks are f32). */
#ifndef D_MAX
#define D_MAX 64
#endif
#ifndef BR
#define BR 32
#endif
#ifndef BC
#define BC 32
#endif

/* scale q.k + masks for key j of tile row jj. */
static float score(const float *q, local const float *krow, float scale,
                   int i, int j, int b, int h, int causal, int mask_cols,
                   global const float *Mk, int m_off, int4 m_st,
                   global const float *Pk, int p_off, int4 p_st)
{
    float dot = 0.0f;
    for (int c = 0; c < D_MAX; c++)
        dot += q[c] * krow[c];
    float v = scale * dot;
    if (j < mask_cols) {
        if (m_off >= 0)
            v += Mk[AT(m_off, m_st, b, h, i, j)];
        if (p_off >= 0)
            v += Pk[AT(p_off, p_st, b, h, i, j)];
        if (causal && j > i)
            v = -INFINITY;
    }
    return v;
}

__attribute__((reqd_work_group_size(BR, 1, 1)))
kernel void attention(global const float *Q, int q_off, int4 q_st,
                      global const float *K, int k_off, int4 k_st,
                      global const float *V, int v_off, int4 v_st,
                      global float *O, int o_off, int4 o_st,
                      global const float *Mk, int m_off, int4 m_st,
                      global const float *Pk, int p_off, int4 p_st,
                      int4 dims, /* H, L, S', d */
                      float scale, int causal, int mask_cols, int halfmask)
{
    local float Ks[BC][D_MAX];
    local float Vs[BC][D_MAX];
    const int lid = get_local_id(0);
    const int i = get_group_id(0) * BR + lid;
    const int z = get_group_id(1);
    const int b = z / dims.x, h = z % dims.x;
    const int L = dims.y, S = dims.z, d = dims.w;
    const int active = i < L;
    float q[D_MAX], acc[D_MAX], s[BC];

    for (int c = 0; c < D_MAX; c++) {
        q[c] = (active && c < d) ? LD(Q, AT(q_off, q_st, b, h, i, c), 0) : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;

    for (int j0 = 0; j0 < S; j0 += BC) {
        for (int t = lid; t < BC * D_MAX; t += BR) {
            const int jj = t / D_MAX, c = t % D_MAX, j = j0 + jj;
            const int ok = j < S && c < d;
            Ks[jj][c] = ok ? LD(K, AT(k_off, k_st, b, h, j, c), 1) : 0.0f;
            Vs[jj][c] = ok ? LD(V, AT(v_off, v_st, b, h, j, c), 2) : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (active) {
            const int jn = min(BC, S - j0);
            float tmax = -INFINITY;
            for (int jj = 0; jj < BC; jj++) {
                s[jj] = -INFINITY;
                if (jj < jn)
                    s[jj] = score(q, Ks[jj], scale, i, j0 + jj, b, h, causal,
                                  mask_cols, Mk, m_off, m_st, Pk, p_off, p_st);
                tmax = mha_nanmax(tmax, s[jj]);
            }
            const float mnew = mha_nanmax(m, tmax);
            if (mnew != -INFINITY) { /* else every key so far is masked */
                const float corr = exp(m - mnew);
                l *= corr;
                for (int c = 0; c < D_MAX; c++)
                    acc[c] *= corr;
                for (int jj = 0; jj < jn; jj++) {
                    const float p = exp(s[jj] - mnew);
                    l += p;
                    for (int c = 0; c < D_MAX; c++)
                        acc[c] += p * Vs[jj][c];
                }
                m = mnew;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (!active)
        return;
    const float inv = l == 0.0f ? 0.0f : 1.0f / l;
    for (int c = 0; c < d; c++)
        ST(O, AT(o_off, o_st, b, h, i, c), acc[c] * inv, 3);
}
