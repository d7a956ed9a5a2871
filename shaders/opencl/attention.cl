/* attention.cl: fused flash attention, SCORES + SOFTMAX + WEIGHTED_SUM
 * without the L x S' matrix, with the attention core's extensions of
 * core/backend.h (GQA/MQA, bottom-right causal, window, softcap, ALiBi,
 * sinks, per-sequence key lengths). A workgroup takes BR query rows of the
 * query heads that share one (batch, kv head), DL = D_MAX / CW work items
 * a row: item (r, t) owns output columns CW t.. as one vector (float4 on
 * GPUs, float16 on a CPU runtime), so no work item holds an array sized by
 * the head size or the key tile (those spill on mobile GPUs). The group
 * streams K and V through local memory in tiles of BC keys; item (r, t)
 * scores keys t, t + DL, ... of the tile for row r and keeps their max,
 * the row's items combine their DL maxima, turn their own scores into
 * probabilities (one exp per score) and sums, and each adds p * V[key]
 * over its columns to its accumulator: a running max and sum (online
 * softmax). The head size is padded with zeros to D_MAX (a power of two
 * >= 4), so one build serves every head size of its bucket. BR, BC and CW
 * come from the device's limits (program.c); the key lengths are data
 * (KV_LEN), never build constants, so a decode loop of growing lengths
 * reuses one program.
 * Keys no row of a group can see (past len_b, above the causal diagonal,
 * before the window) are never loaded: they bound the tile loop. Long key
 * ranges with few groups are cut into chunks (flash-decoding): each chunk
 * writes its partial (max, sum, accumulator) and attention_combine merges
 * them in a fixed order, so results do not depend on scheduling.
 * Masks (f32, zero strides broadcast) and the causal and window masks
 * apply to j < mask_cols; a query row whose keys are all masked yields
 * zeros. halfmask: 0 Q, 1 K, 2 V, 3 O (masks, slopes, sinks are f32).
 * A training forward also writes each row's log-sum-exp (Lse, f32, absent:
 * lse_off < 0), what the backward recomputes the probabilities from. */
#ifndef D_MAX
#define D_MAX 64
#endif
#ifndef BR
#define BR 4
#endif
#ifndef BC
#define BC 64
#endif
#ifndef CW
#define CW 4 /* columns a work item owns: 4, 8 or 16, at most D_MAX */
#endif
#define DL (D_MAX / CW) /* work items of one row */

/* floatCW's half loads (vecw: common.cl). */
#define VLOAD_HALFW CAT(vload_half, CW)

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

/* The score of key j from its dot product with the query, in
 * core/backend.h's order: scale, softcap, ALiBi, then the additive masks;
 * -inf when masked. */
static float score(const row_ctx *r, float dot, int j, global const float *Mk,
                   int m_off, int4 m_st, global const float *Pk, int p_off,
                   int4 p_st)
{
    if (key_masked(r, j))
        return -INFINITY;
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

/* Element i of a tensor stored as f32 or (f16 != 0) f16. */
static float load1(global const float *p, int i, int f16)
{
    return f16 ? vload_half(i, (global const half *)p) : p[i];
}

/* Columns c..c+3 of the row at element offset base (last stride w, d
 * columns; f16: stored as halves), zeros past d. */
static float4 load4(global const float *p, int base, int w, int c, int d,
                    int f16)
{
    if (w == 1 && c + 4 <= d)
        return f16 ? vload_half4(0, (global const half *)p + base + c)
                   : vload4(0, p + base + c);
    float4 v = 0.0f;
    if (c < d)
        v.x = load1(p, base + c * w, f16);
    if (c + 1 < d)
        v.y = load1(p, base + (c + 1) * w, f16);
    if (c + 2 < d)
        v.z = load1(p, base + (c + 2) * w, f16);
    if (c + 3 < d)
        v.w = load1(p, base + (c + 3) * w, f16);
    return v;
}

/* Columns c..c+CW-1 likewise: one vector load where the row is contiguous
 * and the columns exist. */
static vecw loadw(global const float *p, int base, int w, int c, int d,
                  int f16)
{
    if (w == 1 && c + CW <= d)
        return f16 ? VLOAD_HALFW(0, (global const half *)p + base + c)
                   : VLOADW(0, p + base + c);
#if CW == 4
    return load4(p, base, w, c, d, f16);
#elif CW == 8
    return (float8)(load4(p, base, w, c, d, f16),
                    load4(p, base, w, c + 4, d, f16));
#else
    return (float16)(load4(p, base, w, c, d, f16),
                     load4(p, base, w, c + 4, d, f16),
                     load4(p, base, w, c + 8, d, f16),
                     load4(p, base, w, c + 12, d, f16));
#endif
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

/* The row's log-sum-exp from its max m and sum l (in the frame of m), the
 * sink in the sum; -inf for a row with nothing attendable. */
static float row_lse(float m, float l, float sink)
{
    if (m == -INFINITY)
        return -INFINITY;
    const float mm = mha_nanmax(m, sink);
    return mm + log(l * exp(m - mm) + exp(sink - mm));
}

/* Floats of one partial result: max, sum, then d accumulators. */
#define PART_STRIDE(d) ((d) + 2)

/* Grid: (row tiles * BR * DL, B * Hkv, key chunks). The rows of a group
 * are the (query head, query) pairs of one kv head, head-major (row r is
 * query r % L of the kv head's query head r / L), so the query heads that
 * share K and V (GQA/MQA) share each tile load. dims: H, L, S', d; mode:
 * causal, mask_cols, window, kv_group; chunk: keys per chunk (a multiple
 * of BC). With one chunk the output is written, else the partials of
 * (b, h, i), row n = (b * H + h) * L + i, chunk k at Part[(n * chunks + k)
 * * PART_STRIDE(d)]. Visits, when not NULL, counts the key tiles the
 * groups load (a test hook: causal attention loads about half).
 * Local memory: Qs rows are read by all DL items of a row at once (one
 * address: a broadcast); Ks rows are read by the DL items at DL different
 * keys, so each row is padded by one float4, which puts consecutive keys'
 * float4 four banks apart (no conflict within a quarter of a 32-lane
 * subgroup, the unit of a 128-bit access); Vs, Ss, Ms and Ls are read at
 * consecutive addresses or broadcast. */
__attribute__((reqd_work_group_size(BR * DL, 1, 1)))
kernel void attention(global const float *Q, int q_off, int4 q_st,
                      global const float *K, int k_off, int4 k_st,
                      global const float *V, int v_off, int4 v_st,
                      global float *O, int o_off, int4 o_st,
                      global const float *Mk, int m_off, int4 m_st,
                      global const float *Pk, int p_off, int4 p_st,
                      global const float *Sk, int s_off, int4 s_st,
                      global const float *Ak, int a_off, int4 a_st,
                      global const int *Nk, int n_off, int4 n_st,
                      global float *Lse, int lse_off, int4 lse_st,
                      global float *Part, global int *Visits, int4 dims,
                      int4 mode, float scale, float softcap, int chunk,
                      int halfmask)
{
    local vecw Qs[BR][DL];
    local vecw Ks[BC][DL + 1];
    local vecw Vs[BC][DL];
    local float Ss[BR][BC];         /* scores, then probabilities */
    local float Ms[BR][DL], Ls[BR][DL]; /* each item's max and sum */
    const int H = dims.x, L = dims.y, S = dims.z, d = dims.w;
    const int G = mode.w, Hk = H / G, R = G * L;
    const int lid = get_local_id(0), lr = lid / DL, t = lid % DL;
    const int r0 = get_group_id(0) * BR;
    const int r1 = min(r0 + BR, R) - 1; /* the group's last row */
    const int active = r0 + lr < R, row = min(r0 + lr, R - 1);
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
    const int c = CW * t; /* this item's first column */

    Qs[lr][t] = active ? loadw(Q, AT(q_off, q_st, b, h, i, 0), q_st.w, c, d,
                               IS_HALF(0))
                       : 0.0f;
    vecw acc = 0.0f;
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
            if (Visits && lid == 0) /* tests count the tiles loaded */
                atomic_inc(Visits);
            for (int e = lid; e < jn * DL; e += BR * DL) {
                const int jj = e / DL, ce = CW * (e % DL), j = j0 + jj;
                Ks[jj][e % DL] = loadw(K, AT(k_off, k_st, b, hk, j, 0),
                                       k_st.w, ce, d, IS_HALF(1));
                Vs[jj][e % DL] = loadw(V, AT(v_off, v_st, b, hk, j, 0),
                                       v_st.w, ce, d, IS_HALF(2));
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* Item t scores keys t, t + DL, ... of the tile for its row
             * and keeps their max. */
            float pm = -INFINITY;
            for (int jj = t; jj < jn; jj += DL) {
                vecw dotw = 0.0f;
                for (int k = 0; k < DL; k++)
                    dotw = fma(Qs[lr][k], Ks[jj][k], dotw);
                const float sc = score(&r, hsumw(dotw), j0 + jj, Mk, m_off,
                                       m_st, Pk, p_off, p_st);
                Ss[lr][jj] = sc;
                pm = mha_nanmax(pm, sc);
            }
            Ms[lr][t] = pm;
            barrier(CLK_LOCAL_MEM_FENCE);
            /* The row's max from its items' maxima; each item turns its
             * own scores into probabilities (in place) and sums them. */
            float mnew = m;
            for (int k = 0; k < DL; k++)
                mnew = mha_nanmax(mnew, Ms[lr][k]);
            float ps = 0.0f;
            for (int jj = t; jj < jn; jj += DL) { /* unread if mnew is -inf */
                const float p = exp(Ss[lr][jj] - mnew);
                Ss[lr][jj] = p;
                ps += p;
            }
            Ls[lr][t] = ps;
            barrier(CLK_LOCAL_MEM_FENCE);
            if (mnew != -INFINITY) { /* else every key so far is masked */
                const float corr = exp(m - mnew);
                float lt = 0.0f;
                for (int k = 0; k < DL; k++)
                    lt += Ls[lr][k];
                l = l * corr + lt;
                /* Two accumulators: two independent FMA chains. */
                vecw acc1 = 0.0f;
                acc *= corr;
                int jj = 0;
                for (; jj + 1 < jn; jj += 2) {
                    acc = fma((vecw)Ss[lr][jj], Vs[jj][t], acc);
                    acc1 = fma((vecw)Ss[lr][jj + 1], Vs[jj + 1][t], acc1);
                }
                if (jj < jn)
                    acc = fma((vecw)Ss[lr][jj], Vs[jj][t], acc);
                acc += acc1;
                m = mnew;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    }
    if (!active || c >= d)
        return;
    const int cn = min(CW, d - c);
    float aw[CW];
    VSTOREW(acc, 0, aw);
    if (chunks > 1) {
        global float *part = Part + (size_t)(((b * H + h) * L + i) * chunks +
                                             split) * PART_STRIDE(d);
        if (t == 0) {
            part[0] = m;
            part[1] = l;
        }
        for (int k = 0; k < cn; k++)
            part[2 + c + k] = aw[k];
        return;
    }
    const float sink = s_off >= 0 ? Sk[AT(s_off, s_st, 0, 0, 0, h)] : -INFINITY;
    if (lse_off >= 0 && t == 0)
        Lse[AT(lse_off, lse_st, b, h, 0, i)] = row_lse(m, l, sink);
    const float f = out_scale(m, l, sink);
    for (int k = 0; k < cn; k++)
        ST(O, AT(o_off, o_st, b, h, i, c + k), aw[k] * f, 3);
}

/* Merges the chunks' partials of each row into the output, one work item
 * per (column, row), in chunk order. dims: H, L, chunks, d. */
kernel void attention_combine(global const float *Part,
                              global float *O, int o_off, int4 o_st,
                              global const float *Sk, int s_off, int4 s_st,
                              global float *Lse, int lse_off, int4 lse_st,
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
    if (lse_off >= 0 && c == 0)
        Lse[AT(lse_off, lse_st, b, h, 0, i)] = row_lse(m, l, sink);
    ST(O, AT(o_off, o_st, b, h, i, c), acc * out_scale(m, l, sink), 3);
}
