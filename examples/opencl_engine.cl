/* opencl_engine.cl: the example engine's own kernels (examples/opencl_engine.c
 * builds them in its own context at run time): one pass that writes
 * libmha's input, one that reads libmha's output. */

/* x[r, e] = table[tokens[r], e] * scale: token embeddings for one frame,
 * rows r in (L, N) order, E features each. One work item per element. */
__kernel void embed_tokens(__global const int *tokens,
                           __global const float *table,
                           __global float *x, int rows, int E, float scale)
{
    int i = get_global_id(0);
    if (i >= rows * E)
        return;
    int r = i / E, e = i - r * E;
    x[i] = table[tokens[r] * E + e] * scale;
}

/* pooled[frame, e] = mean over rows of y[r, e]: what the engine keeps of
 * a frame. One work item per feature. */
__kernel void mean_rows(__global const float *y, __global float *pooled,
                        int rows, int E, int frame)
{
    int e = get_global_id(0);
    if (e >= E)
        return;
    float sum = 0.0f;
    for (int r = 0; r < rows; r++)
        sum += y[r * E + e];
    pooled[frame * E + e] = sum / (float)rows;
}
