/* rope.cl: ROPE (core/backend.h): rotary position embedding of a
 * [B,H,T,d] strided tensor, NeoX (rotate_half) or GPT-J (interleaved)
 * pairs over the first rope_dims features, the rest copied; rope_dims 0 is
 * the KV cache's dtype-converting copy. One work item per unit of a row:
 * units [0, r/2) rotate one pair, the others copy one feature c >= r. Y may
 * be X (in place): a work item reads its pair before writing it.
 * halfmask: 0 X, 1 Y. P holds the positions (int), p_st = (batch stride,
 * token stride). */
#ifndef ROW_WG
#define ROW_WG 64
#endif

__attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
kernel void rope(global const float *X, int x_off, int4 x_st,
                 global float *Y, int y_off, int4 y_st,
                 global const int *P, int p_off, int2 p_st,
                 int4 ne, int rope_dims, int gptj, float log2_theta,
                 float pos_scale, int total, int halfmask)
{
    const int g = get_global_id(0);
    if (g >= total)
        return;
    const int half_r = rope_dims / 2;
    const int units = half_r + ne.w - rope_dims;
    const int u = g % units;
    int r = g / units;
    const int t = r % ne.z;
    r /= ne.z;
    const int h = r % ne.y, b = r / ne.y;
    if (u >= half_r) {
        const int c = rope_dims + (u - half_r);
        ST(Y, AT(y_off, y_st, b, h, t, c),
           LD(X, AT(x_off, x_st, b, h, t, c), 0), 1);
        return;
    }
    const int c0 = gptj ? 2 * u : u, c1 = gptj ? 2 * u + 1 : u + half_r;
    const float pos = (float)P[p_off + b * p_st.x + t * p_st.y] * pos_scale;
    const float a =
        pos * exp2(-(float)(2 * u) / (float)rope_dims * log2_theta);
    const float cs = cos(a), sn = sin(a);
    const float x = LD(X, AT(x_off, x_st, b, h, t, c0), 0);
    const float y = LD(X, AT(x_off, x_st, b, h, t, c1), 0);
    ST(Y, AT(y_off, y_st, b, h, t, c0), x * cs - y * sn, 1);
    ST(Y, AT(y_off, y_st, b, h, t, c1), y * cs + x * sn, 1);
}
