/* attention.cl: fused flash attention, SCORES + SOFTMAX + WEIGHTED_SUM
 * without the L x S' matrix, with the attention core's extensions of
 * core/backend.h (GQA/MQA, bottom-right causal, window, softcap, ALiBi,
 * sinks, per-sequence key lengths). A workgroup of BR work items takes BR
 * query rows of the query heads that share one (batch, kv head); each item
 * keeps its query row and output accumulator in private memory, and the
 * group streams K and V through
 * local memory in tiles of BC rows, keeping a running max and sum (online
 * softmax). The head size is padded with zeros to D_MAX (a power of two),
 * so one build serves every head size of its bucket. BR, BC and D_MAX come
 * from the device's limits (local memory: 2 * BC * D_MAX floats); the key
 * lengths are data (KV_LEN), never build constants, so a decode loop of
 * growing lengths reuses one program.
 * Keys no row of a group can see (past len_b, above the causal diagonal,
 * before the window) are never loaded: they bound the tile loop. Long key
 * ranges with few groups are cut into chunks (flash-decoding): each chunk
 * writes its partial (max, sum, accumulator) and attention_combine merges
 * them in a fixed order, so results do not depend on scheduling.
 * Masks (f32, zero strides broadcast) and the causal and window masks
 * apply to j < mask_cols; a query row whose keys are all masked yields
 * zeros. halfmask: 0 Q, 1 K, 2 V, 3 O (masks, slopes, sinks are f32). */
#ifndef D_MAX
#define D_MAX 64
#endif
#ifndef BR
#define BR 32
#endif
#ifndef BC
#define BC 32
#endif

/* core/backend.h's MHA_CAUSAL_BOTTOM_RIGHT */
#define CAUSAL_BOTTOM_RIGHT 2

/* One query row's view of the keys: its position p and what its scores
 * need besides q.k. */
typedef struct row_ctx {
    int b, h, i, p;
    int causal, mask_cols, window;
    float scale, softcap, slope; /* slope 0: no ALiBi */
} row_ctx;

/* Whether a mask rules key j out of the row (keys past len_b are never
 * visited, see the kernel's key range). */
static int key_masked(const row_ctx *r, int j)
{
    return j < r->mask_cols &&
           ((r->causal && j > r->p) ||
            (r->window > 0 && j <= r->p - r->window));
}

/* The score of key j (tile row krow) in core/backend.h's order: scale,
 * softcap, ALiBi, then the additive masks; -inf when masked. */
static float score(const row_ctx *r, const float *q, local const float *krow,
                   int j, global const float *Mk, int m_off, int4 m_st,
                   global const float *Pk, int p_off, int4 p_st)
{
    if (key_masked(r, j))
        return -INFINITY;
    float dot = 0.0f;
    for (int c = 0; c < D_MAX; c++)
        dot += q[c] * krow[c];
    float v = r->scale * dot;
    if (r->softcap > 0.0f)
        v = r->softcap * tanh(v / r->softcap);
    v += r->slope * (float)(j - r->p);
    if (j < r->mask_cols) {
        if (m_off >= 0)
            v += Mk[AT(m_off, m_st, r->b, r->h, r->i, j)];
        if (p_off >= 0)
            v += Pk[AT(p_off, p_st, r->b, r->h, r->i, j)];
    }
    return v;
}

/* What the accumulator is multiplied by to give the output, from the row's
 * max m and sum l (in the frame of m): the sink logit joins the
 * denominator; a row with nothing attendable yields 0, a NaN propagates. */
static float out_scale(float m, float l, float sink)
{
    if (m == -INFINITY)
        return 0.0f;
    const float mm = mha_nanmax(m, sink);
    const float corr = exp(m - mm);
    return corr / (l * corr + exp(sink - mm));
}

/* Floats of one partial result: max, sum, then d accumulators. */
#define PART_STRIDE(d) ((d) + 2)

/* Grid: (row tiles * BR, B * Hkv, key chunks). The rows of a group are
 * the (query head, query) pairs of one kv head, head-major (row r is query
 * r % L of the kv head's query head r / L), so the query heads that share
 * K and V (GQA/MQA) share each tile load. dims: H, L, S', d; mode:
 * causal, mask_cols, window, kv_group; chunk: keys per chunk (a multiple
 * of BC). With one chunk the output is written, else the partials of
 * (b, h, i), row n = (b * H + h) * L + i, chunk k at Part[(n * chunks + k)
 * * PART_STRIDE(d)]. */
__attribute__((reqd_work_group_size(BR, 1, 1)))
kernel void attention(global const float *Q, int q_off, int4 q_st,
                      global const float *K, int k_off, int4 k_st,
                      global const float *V, int v_off, int4 v_st,
                      global float *O, int o_off, int4 o_st,
                      global const float *Mk, int m_off, int4 m_st,
                      global const float *Pk, int p_off, int4 p_st,
                      global const float *Sk, int s_off, int4 s_st,
                      global const float *Ak, int a_off, int4 a_st,
                      global const int *Nk, int n_off, int4 n_st,
                      global float *Part, int4 dims, int4 mode, float scale,
                      float softcap, int chunk, int halfmask)
{
    local float Ks[BC][D_MAX];
    local float Vs[BC][D_MAX];
    const int H = dims.x, L = dims.y, S = dims.z, d = dims.w;
    const int G = mode.w, Hk = H / G, R = G * L;
    const int lid = get_local_id(0), r0 = get_group_id(0) * BR;
    const int r1 = min(r0 + BR, R) - 1; /* the group's last row */
    const int active = r0 + lid < R, row = min(r0 + lid, R - 1);
    const int z = get_group_id(1), split = get_group_id(2);
    const int chunks = get_num_groups(2);
    const int b = z / Hk, hk = z % Hk;
    const int h = hk * G + row / L, i = row % L;
    const int mask_cols = mode.y, window = mode.z;
    const int len = n_off >= 0 ? Nk[AT(n_off, n_st, 0, 0, 0, b)] : mask_cols;
    const int off = mode.x == CAUSAL_BOTTOM_RIGHT ? len - L : 0;
    const row_ctx r = {b, h, i, i + off, mode.x, mask_cols, window, scale,
                       softcap, a_off >= 0 ? Ak[AT(a_off, a_st, 0, 0, 0, h)]
                                           : 0.0f};
    /* The group's first and last query index (all of them when its rows
     * span two query heads). */
    const int one_head = r0 / L == r1 / L;
    const int ia = one_head ? r0 % L : 0, iz = one_head ? r1 % L : L - 1;
    float q[D_MAX], acc[D_MAX], s[BC];

    for (int c = 0; c < D_MAX; c++) {
        q[c] = (active && c < d) ? LD(Q, AT(q_off, q_st, b, h, i, c), 0) : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;

    /* Keys below mask_cols some row of the group may see: [lo, hi), cut
     * by len_b, the last row's diagonal and the first row's window; then
     * the appended keys [mask_cols, S'), which no mask touches. */
    int hi = min(mask_cols, len);
    if (mode.x)
        hi = min(hi, iz + off + 1);
    const int lo = window > 0 ? max(0, ia + off - window + 1) : 0;
    const int c0 = split * chunk, c1 = min(S, c0 + chunk);
    for (int seg = 0; seg < 2; seg++) {
        const int ja = max(seg ? mask_cols : lo, c0);
        const int je = min(seg ? S : hi, c1);
        for (int j0 = ja; j0 < je; j0 += BC) {
            const int jn = min(BC, je - j0);
            for (int t = lid; t < jn * D_MAX; t += BR) {
                const int jj = t / D_MAX, c = t % D_MAX, j = j0 + jj;
                Ks[jj][c] = c < d ? LD(K, AT(k_off, k_st, b, hk, j, c), 1) : 0.0f;
                Vs[jj][c] = c < d ? LD(V, AT(v_off, v_st, b, hk, j, c), 2) : 0.0f;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            if (active) {
                float tmax = -INFINITY;
                for (int jj = 0; jj < jn; jj++) {
                    s[jj] = score(&r, q, Ks[jj], j0 + jj, Mk, m_off, m_st, Pk,
                                  p_off, p_st);
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
    }
    if (!active)
        return;
    if (chunks > 1) {
        global float *part = Part + (size_t)(((b * H + h) * L + i) * chunks +
                                             split) * PART_STRIDE(d);
        part[0] = m;
        part[1] = l;
        for (int c = 0; c < d; c++)
            part[2 + c] = acc[c];
        return;
    }
    const float sink = s_off >= 0 ? Sk[AT(s_off, s_st, 0, 0, 0, h)] : -INFINITY;
    const float f = out_scale(m, l, sink);
    for (int c = 0; c < d; c++)
        ST(O, AT(o_off, o_st, b, h, i, c), acc[c] * f, 3);
}

/* Merges the chunks' partials of each row into the output, one work item
 * per (column, row), in chunk order. dims: H, L, chunks, d. */
kernel void attention_combine(global const float *Part,
                              global float *O, int o_off, int4 o_st,
                              global const float *Sk, int s_off, int4 s_st,
                              int4 dims, int halfmask)
{
    const int c = get_global_id(0), r = get_global_id(1);
    const int H = dims.x, L = dims.y, chunks = dims.z, d = dims.w;
    if (c >= d)
        return;
    const int z = r / L, i = r % L, b = z / H, h = z % H;
    global const float *part = Part + (size_t)r * chunks * PART_STRIDE(d);
    float m = -INFINITY;
    for (int k = 0; k < chunks; k++)
        m = mha_nanmax(m, part[k * PART_STRIDE(d)]);
    float l = 0.0f, acc = 0.0f;
    for (int k = 0; k < chunks && m != -INFINITY; k++) {
        global const float *pk = part + k * PART_STRIDE(d);
        const float w = exp(pk[0] - m);
        l += w * pk[1];
        acc += w * pk[2 + c];
    }
    const float sink = s_off >= 0 ? Sk[AT(s_off, s_st, 0, 0, 0, h)] : -INFINITY;
    ST(O, AT(o_off, o_st, b, h, i, c), acc * out_scale(m, l, sink), 3);
}
