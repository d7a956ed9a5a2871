/* peer_clblast.cl: the two small kernels of mha-bench's CLBlast peer (see
 * bench/peer_clblast.c); CLBlast does every matrix product. */

/* y[(row) * ld + yoff + col] += b[boff + col], global size (cols, rows). */
__kernel void add_bias(__global float *y, const int yoff, const int ld,
                       __global const float *b, const int boff)
{
    size_t col = get_global_id(0), row = get_global_id(1);
    y[row * (size_t)ld + (size_t)yoff + col] += b[(size_t)boff + col];
}

/* Row softmax of the scores s (heads * l rows of n floats), global size
 * heads * l. With causal, row i of a head keeps columns j <= i (and j < n)
 * and zeroes the rest, as the scalar reference masks j > i. */
__kernel void softmax_rows(__global float *s, const int l, const int n,
                           const int causal)
{
    size_t gid = get_global_id(0);
    int i = (int)(gid % (size_t)l);
    __global float *r = s + gid * (size_t)n;
    int m = causal ? min(i + 1, n) : n;
    float mx = -INFINITY;
    for (int j = 0; j < m; j++)
        mx = fmax(mx, r[j]);
    float sum = 0.0f;
    for (int j = 0; j < m; j++) {
        float e = exp(r[j] - mx);
        r[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < m; j++)
        r[j] *= inv;
    for (int j = m; j < n; j++)
        r[j] = 0.0f;
}
