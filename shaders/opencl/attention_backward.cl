/* attention_backward.cl: ATTENTION_BACKWARD (core/backend.h),
 * FlashAttention-2's backward of the fused attention for the nn.MHA subset
 * with window, softcap and ALiBi, in three launches. attention_backward_pre writes each query row's
 * (LSE_i, D_i = dO_i . O_i) to a scratch buffer [B,H,L,2]. Then
 * attention_backward runs twice: mode 0 gives dK and dV, a workgroup
 * owning BR keys and streaming the query rows past them in tiles of BC;
 * mode 1 gives dQ, a workgroup owning BR query rows and streaming the
 * keys. dQ is a second pass that recomputes the probabilities rather than
 * partial sums per key block reduced afterwards: no float atomics (OpenCL
 * 1.2 has none), no O(L d S / BR) scratch, and a fixed order of summation
 * (deterministic). No L x S' matrix exists: a tile's
 * p_ij = exp(s_ij - LSE_i) and dS_ij = p_ij (dO_i . V_j - D_i) live in
 * local memory.
 * The own rows (K and V, or Q and dO) and the streamed tile (Q and dO, or
 * K and V) are staged in local memory as DL vectors of CW floats (the head
 * padded with zeros to D_MAX); own rows are padded by one vector, as
 * attention.cl's Ks, since a row of pairs reads DL different ones. Phase
 * A spreads the tile's BC x BR pairs over the group: q.k and dO.v over
 * the head (the streamed row is a broadcast). Phase B: item (r, t) holds
 * the CW columns t of own row r's accumulators (dK and dV, or dQ) as
 * vectors and adds dS * (Q or K) and p * dO over the tile: two broadcast
 * scalars and one vector load per CW FMAs of each accumulator, and no
 * array sized by the head in a work item.
 * Causal skips whole tiles: a key block sees no query row before its
 * first key, a query block no key past its last row; the window likewise
 * (no query row W or more past a key block's last key, no key W or more
 * before a query block's first row), for keys below mask_cols (the
 * appended keys past it are visible to all). A fully
 * masked row (LSE -inf) gets p = 0 and so zero gradients. f32 only. */
#ifndef D_MAX
#define D_MAX 64
#endif
#ifndef BR
#define BR 16 /* own rows per workgroup */
#endif
#ifndef BC
#define BC 16 /* streamed rows per tile */
#endif
#ifndef CW
#define CW 4 /* columns of a work item: 4, 8 or 16, at most D_MAX */
#endif
#define DL (D_MAX / CW) /* work items of one own row */

/* Columns c..c+CW-1 of the row at p + base (unit stride), zeros past d. */
static vecw row_cols(global const float *p, int base, int c, int d)
{
    if (c + CW <= d)
        return VLOADW(0, p + base + c);
    float v[CW];
    for (int k = 0; k < CW; k++)
        v[k] = c + k < d ? p[base + c + k] : 0.0f;
    return VLOADW(0, v);
}

/* Grid: B * H * L items. */
kernel void attention_backward_pre(global const float *O, int o_off,
                                   int4 o_st, global const float *dO,
                                   int do_off, int4 do_st,
                                   global const float *Lse, int l_off,
                                   int4 l_st, global float *LD, int4 dims)
{
    const int row = get_global_id(0);
    const int H = dims.x, L = dims.y, d = dims.w;
    if (row >= dims.z)
        return;
    const int i = row % L, z = row / L, h = z % H, b = z / H;
    const int ob = AT(o_off, o_st, b, h, i, 0);
    const int db = AT(do_off, do_st, b, h, i, 0);
    float dd = 0.0f;
    for (int c = 0; c < d; c++)
        dd = fma(dO[db + c], O[ob + c], dd);
    LD[2 * row] = Lse[AT(l_off, l_st, b, h, 0, i)];
    LD[2 * row + 1] = dd;
}

/* One side of the pairs: the two tensors of the own or streamed rows. */
typedef struct side {
    global const float *a, *b;
    int a_off, b_off;
    int4 a_st, b_st;
} side;

/* Rows r0.. (n of them, zeros up to rows) of s's tensors in head (bz, h)
 * into Ta and Tb (row stride rs vectors). */
static void stage(local vecw *Ta, local vecw *Tb, int rs, const side *s,
                  int bz, int h, int r0, int n, int rows, int d)
{
    for (int e = get_local_id(0); e < rows * DL; e += BR * DL) {
        const int r = e / DL, c = CW * (e % DL);
        vecw xa = 0.0f, xb = 0.0f;
        if (r < n) {
            xa = row_cols(s->a, AT(s->a_off, s->a_st, bz, h, r0 + r, 0), c, d);
            xb = row_cols(s->b, AT(s->b_off, s->b_st, bz, h, r0 + r, 0), c, d);
        }
        Ta[r * rs + e % DL] = xa;
        Tb[r * rs + e % DL] = xb;
    }
}

/* LSE and D of query rows r0.. (n of them) into Lq, Dq; -inf / 0 past n. */
static void stage_ld(local float *Lq, local float *Dq,
                     global const float *LD, int row0, int n, int rows)
{
    for (int r = get_local_id(0); r < rows; r += BR * DL) {
        float lse = -INFINITY, dd = 0.0f;
        if (r < n) {
            lse = LD[2 * (row0 + r)];
            dd = LD[2 * (row0 + r) + 1];
        }
        Lq[r] = lse;
        Dq[r] = dd;
    }
}

/* Grid: (ceil(own rows / BR) * BR * DL, H, B). dims: H, L, S', d; mode:
 * 0 (out dK, out2 dV) or 1 (out dQ), causal, mask_cols. */
__attribute__((reqd_work_group_size(BR * DL, 1, 1)))
kernel void attention_backward(global const float *Q, int q_off, int4 q_st,
                               global const float *K, int k_off, int4 k_st,
                               global const float *V, int v_off, int4 v_st,
                               global const float *dO, int do_off,
                               int4 do_st, global const float *Mk,
                               int m_off, int4 m_st, global const float *Pk,
                               int p_off, int4 p_st, global const float *LD,
                               global float *Out, int out_off, int4 out_st,
                               global float *Out2, int out2_off, int4 out2_st,
                               global const float *Al, int al_off, int4 al_st,
                               int4 dims, int4 mode, float scale,
                               float softcap)
{
    local vecw X1[BR * (DL + 1)], X2[BR * (DL + 1)]; /* own rows */
    local vecw Y1[BC * DL], Y2[BC * DL];             /* streamed rows */
    local float Ps[BC * BR], Ds[BC * BR];            /* [s][o] */
    local float Lq[BC + BR], Dq[BC + BR];            /* query rows' LSE, D */
    const int H = dims.x, L = dims.y, S = dims.z, d = dims.w;
    const int md = mode.x, causal = mode.y, mask_cols = mode.z;
    const int window = mode.w;
    const int lid = get_local_id(0), o = lid / DL, t = lid % DL;
    const int h = get_group_id(1), bz = get_group_id(2);
    const int o0 = get_group_id(0) * BR;
    const float slope = al_off >= 0 ? Al[AT(al_off, al_st, 0, 0, 0, h)] : 0.0f;
    const int nown = md ? L : S, nstr = md ? S : L;
    const int no = min(BR, nown - o0);
    const side qs = {Q, dO, q_off, do_off, q_st, do_st};
    const side ks = {K, V, k_off, v_off, k_st, v_st};
    const int ld0 = (bz * H + h) * L; /* the head's first query row */
    stage(X1, X2, DL + 1, md ? &qs : &ks, bz, h, o0, no, BR, d);
    if (md)
        stage_ld(Lq + BC, Dq + BC, LD, ld0 + o0, no, BR);

    vecw acc1 = 0.0f, acc2 = 0.0f;
    /* The streamed rows that can see an own row: segments [sa, se) of the
     * keys below mask_cols (cut by causal and the window: query i sees
     * keys j > i - W), then the appended ones. */
    const int mc = min(mask_cols, S), o1 = o0 + no;
    int seg_a[2], seg_e[2];
    if (md == 0) {
        seg_a[0] = causal && o1 <= mc ? min(o0, nstr) : 0;
        const int wend = o1 - 1 + min(window, nstr); /* past the window */
        seg_e[0] = window > 0 && o1 <= mc ? min(wend, nstr) : nstr;
        seg_a[1] = seg_e[1] = 0;
    } else {
        seg_a[0] = window > 0 ? max(o0 + 1 - window, 0) : 0;
        seg_e[0] = causal ? min(mc, o1) : mc;
        seg_a[1] = mc;
        seg_e[1] = nstr;
    }
    for (int g = 0; g < 2; g++)
        for (int s0 = seg_a[g]; s0 < seg_e[g]; s0 += BC) {
            const int n = min(BC, seg_e[g] - s0);
            barrier(CLK_LOCAL_MEM_FENCE); /* the last tile's readers */
            stage(Y1, Y2, DL, md ? &ks : &qs, bz, h, s0, n, BC, d);
            if (!md)
                stage_ld(Lq, Dq, LD, ld0 + s0, n, BC);
            barrier(CLK_LOCAL_MEM_FENCE);
            /* Phase A: p and dS of the tile's pairs. */
            for (int e = lid; e < BC * BR; e += BR * DL) {
                const int s = e / BR, r = e % BR;
                float pij = 0.0f, dsij = 0.0f;
                if (s < n && r < no) {
                    vecw d1 = 0.0f, d2 = 0.0f;
                    for (int k = 0; k < DL; k++) {
                        d1 = fma(X1[r * (DL + 1) + k], Y1[s * DL + k], d1);
                        d2 = fma(X2[r * (DL + 1) + k], Y2[s * DL + k], d2);
                    }
                    const int qi = md ? BC + r : s; /* the query's slot */
                    const int i = md ? o0 + r : s0 + s;
                    const int j = md ? s0 + s : o0 + r;
                    /* softcap (its slope dcap scales dS), ALiBi, masks */
                    float sc = scale * hsumw(d1), dcap = 1.0f;
                    if (softcap > 0.0f) {
                        const float th = tanh(sc / softcap);
                        sc = softcap * th;
                        dcap = 1.0f - th * th;
                    }
                    sc += slope * (float)(j - i);
                    if (j < mask_cols) {
                        if (m_off >= 0)
                            sc += Mk[AT(m_off, m_st, bz, h, i, j)];
                        if (p_off >= 0)
                            sc += Pk[AT(p_off, p_st, bz, h, i, j)];
                        if ((causal && j > i) ||
                            (window > 0 && j <= i - window))
                            sc = -INFINITY;
                    }
                    const float lse = Lq[qi];
                    if (lse != -INFINITY && sc != -INFINITY) {
                        pij = exp(sc - lse);
                        dsij = pij * (hsumw(d2) - Dq[qi]) * dcap;
                    }
                }
                Ps[e] = pij;
                Ds[e] = dsij;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            /* Phase B: this item's columns of its own row. */
            for (int s = 0; s < n; s++) {
                acc1 = fma((vecw)Ds[s * BR + o], Y1[s * DL + t], acc1);
                if (!md)
                    acc2 = fma((vecw)Ps[s * BR + o], Y2[s * DL + t], acc2);
            }
        }
    if (o >= no)
        return;
    float a1[CW], a2[CW];
    VSTOREW(acc1, 0, a1);
    VSTOREW(acc2, 0, a2);
    const int b1 = AT(out_off, out_st, bz, h, o0 + o, 0);
    const int b2 = AT(out2_off, out2_st, bz, h, o0 + o, 0);
    for (int k = 0; k < CW && CW * t + k < d; k++) {
        Out[b1 + CW * t + k] = scale * a1[k];
        if (!md)
            Out2[b2 + CW * t + k] = a2[k];
    }
}
