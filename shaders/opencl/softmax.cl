/* softmax.cl: row softmax of [B,H,L,S'] (strided, in place allowed), one
 * ROW_WG-wide workgroup per row: max and sum are reduced in local memory.
 * The row maximum is subtracted; a row that is all -inf becomes all 0
 * (libmha's documented choice); NaN propagates. halfmask: 0 X, 1 Y. */
#ifndef ROW_WG
#define ROW_WG 64
#endif

/* Tree reduction of red[0..ROW_WG) into red[0]; op 0 = NaN-aware max,
 * 1 = sum. Returns red[0]; the caller barriers before reusing red. */
static float reduce_row(local float *red, int lid, float v, int op)
{
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ROW_WG / 2; s > 0; s >>= 1) {
        if (lid < s)
            red[lid] = op == 0 ? mha_nanmax(red[lid], red[lid + s])
                               : red[lid] + red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

__attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
kernel void softmax(global const float *X, int x_off, int4 x_st,
                    global float *Y, int y_off, int4 y_st,
                    int4 dims /* H, L, S', unused */, int halfmask)
{
    local float red[ROW_WG];
    const int lid = get_local_id(0);
    const int i = get_group_id(1), z = get_group_id(2);
    const int b = z / dims.x, h = z % dims.x, S = dims.z;
    const int xb = AT(x_off, x_st, b, h, i, 0);
    const int yb = AT(y_off, y_st, b, h, i, 0);

    float m = -INFINITY;
    for (int j = lid; j < S; j += ROW_WG)
        m = mha_nanmax(m, LD(X, xb + j * x_st.w, 0));
    m = reduce_row(red, lid, m, 0);

    float sum = 0.0f;
    if (m != -INFINITY)
        for (int j = lid; j < S; j += ROW_WG)
            sum += exp(LD(X, xb + j * x_st.w, 0) - m);
    sum = reduce_row(red, lid, sum, 1);

    const float inv = m == -INFINITY ? 0.0f : 1.0f / sum;
    for (int j = lid; j < S; j += ROW_WG) {
        const float x = LD(X, xb + j * x_st.w, 0);
        const float p = m == -INFINITY ? 0.0f : exp(x - m) * inv;
        ST(Y, yb + j * y_st.w, p, 1);
    }
}
