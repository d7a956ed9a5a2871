/* head_stats.cl: HEAD_STATS (core/backend.h): for batch b, head h and
 * column c of Y, the sum over query rows i of one statistic of the
 * attention probabilities X [B,H,L,S']: entropy, maximum, distance,
 * first-key weight, previous-token weight (c < 5) or the Jensen-Shannon
 * divergence against head c - 5. One ROW_WG-wide workgroup per (c, b*H+h);
 * its work items take rows in turn and a tree in local memory sums them,
 * so every run gives the same bits. X and Y are f32. */
#ifndef ROW_WG
#define ROW_WG 64
#endif

/* x ln(x / m), with 0 ln 0 = 0 */
static float hs_xlog(float x, float m) { return x > 0.0f ? x * log(x / m) : 0.0f; }

/* Statistic c of row i of head h (c >= 5: JS against head c - 5); dims
 * is (H, L, S', unused). */
static float hs_row(global const float *X, int x_off, int4 x_st, int4 dims,
                    int b, int h, int i, int c)
{
    const int S = dims.z;
    const int row = AT(x_off, x_st, b, h, i, 0);
    if (c == 3)
        return X[row];
    if (c == 4)
        return i >= 1 && i - 1 < S ? X[row + i - 1] : 0.0f;
    const int other = c >= 5 ? AT(x_off, x_st, b, c - 5, i, 0) : row;
    float s = 0.0f;
    for (int j = 0; j < S; j++) {
        const float w = X[row + j];
        if (c == 0)
            s -= hs_xlog(w, 1.0f);
        else if (c == 1)
            s = fmax(s, w);
        else if (c == 2)
            s += w * (float)abs(i - j);
        else {
            const float q = X[other + j], m = 0.5f * (w + q);
            s += 0.5f * (hs_xlog(w, m) + hs_xlog(q, m));
        }
    }
    return s;
}

__attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
kernel void head_stats(global const float *X, int x_off, int4 x_st,
                       global float *Y, int y_off, int4 y_st, int4 dims)
{
    local float red[ROW_WG];
    const int lid = get_local_id(0), c = get_group_id(1);
    const int z = get_group_id(2), b = z / dims.x, h = z % dims.x;
    float acc = 0.0f;
    for (int i = lid; i < dims.y; i += ROW_WG)
        acc += hs_row(X, x_off, x_st, dims, b, h, i, c);
    red[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = ROW_WG / 2; s > 0; s >>= 1) {
        if (lid < s)
            red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        Y[AT(y_off, y_st, b, h, 0, c)] = red[0];
}
