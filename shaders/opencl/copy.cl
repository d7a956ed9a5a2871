/* copy.cl: element-wise kernels over strided 4-D tensors: copy4d serves
 * FILL_ROWS (a broadcast source with zero strides, or zeros when the source
 * is absent); mul4d is MUL (the head gates: F broadcast by zero strides);
 * mean_heads averages attention weights over heads. One work item per
 * output element, ROW_WG per workgroup. halfmask: 0 X, 1 Y. */
#ifndef ROW_WG
#define ROW_WG 64
#endif

/* The (i0, i1, i2, i3) of element g of a 4-D tensor of extents ne. */
static inline int4 index4(int g, int4 ne)
{
    const int i3 = g % ne.w;
    int r = g / ne.w;
    const int i2 = r % ne.z;
    r /= ne.z;
    return (int4)(r / ne.y, r % ne.y, i2, i3);
}

__attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
kernel void copy4d(global const float *X, int x_off, int4 x_st,
                   global float *Y, int y_off, int4 y_st,
                   int4 ne, int total, int halfmask)
{
    const int g = get_global_id(0);
    if (g >= total)
        return;
    const int4 i = index4(g, ne);
    const float v =
        x_off >= 0 ? LD(X, AT(x_off, x_st, i.x, i.y, i.z, i.w), 0) : 0.0f;
    ST(Y, AT(y_off, y_st, i.x, i.y, i.z, i.w), v, 1);
}

/* Y[b,0,i,j] = mean over h of X[b,h,i,j]; ne = (B, H, L, S'). */
__attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
kernel void mean_heads(global const float *X, int x_off, int4 x_st,
                       global float *Y, int y_off, int4 y_st,
                       int4 ne, int total, int halfmask)
{
    const int g = get_global_id(0);
    if (g >= total)
        return;
    const int j = g % ne.w;
    const int r = g / ne.w;
    const int i = r % ne.z, b = r / ne.z;
    float sum = 0.0f;
    for (int h = 0; h < ne.y; h++)
        sum += LD(X, AT(x_off, x_st, b, h, i, j), 0);
    ST(Y, AT(y_off, y_st, b, 0, i, j), sum / (float)ne.y, 1);
}

/* Y = X * F over ne; F is f32 (halfmask: 0 X, 1 Y). */
__attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
kernel void mul4d(global const float *X, int x_off, int4 x_st,
                  global float *Y, int y_off, int4 y_st,
                  global const float *F, int f_off, int4 f_st,
                  int4 ne, int total, int halfmask)
{
    const int g = get_global_id(0);
    if (g >= total)
        return;
    const int4 i = index4(g, ne);
    const float v = LD(X, AT(x_off, x_st, i.x, i.y, i.z, i.w), 0) *
                    F[AT(f_off, f_st, i.x, i.y, i.z, i.w)];
    ST(Y, AT(y_off, y_st, i.x, i.y, i.z, i.w), v, 1);
}
