/* sum_rows.cl: SUM_ROWS (core/backend.h), Y[b,h,0,n] = sum_m X[b,h,m,n]
 * (+ Y when accumulate): the bias gradients. One work item per output
 * column walks its rows in order (deterministic); consecutive items read
 * consecutive addresses where X's columns are contiguous. ne: X's
 * extents. f32. */
kernel void sum_rows(global const float *X, int x_off, int4 x_st,
                     global float *Y, int y_off, int4 y_st, int4 ne,
                     int accumulate)
{
    const int id = get_global_id(0);
    if (id >= ne.x * ne.y * ne.w)
        return;
    const int n = id % ne.w, r = id / ne.w, h = r % ne.y, b = r / ne.y;
    float acc = 0.0f;
    for (int m = 0; m < ne.z; m++)
        acc += X[AT(x_off, x_st, b, h, m, n)];
    const int o = AT(y_off, y_st, b, h, 0, n);
    Y[o] = accumulate ? Y[o] + acc : acc;
}
