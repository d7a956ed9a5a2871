/* adamw.cl: ADAMW (core/backend.h), one torch.optim.AdamW step over n
 * contiguous f32 parameters in place, one work item per parameter, in
 * torch's order of operations: decoupled weight decay, the moments, then
 * the bias-corrected step with eps added to sqrt(v) / sqrt(bc2).
 * hyper: lr, beta1, beta2, eps; decay: weight decay, bc1, bc2. */
kernel void adamw(global float *P, int p_off, global const float *G,
                  int g_off, global float *M, int m_off, global float *V,
                  int v_off, int n, float4 hyper, float4 decay)
{
    const int i = get_global_id(0);
    if (i >= n)
        return;
    const float lr = hyper.x, b1 = hyper.y, b2 = hyper.z, eps = hyper.w;
    const float g = G[g_off + i];
    const float m = b1 * M[m_off + i] + (1.0f - b1) * g;
    const float v = b2 * V[v_off + i] + (1.0f - b2) * g * g;
    M[m_off + i] = m;
    V[v_off + i] = v;
    const float w = P[p_off + i] * (1.0f - lr * decay.x);
    P[p_off + i] = w - (lr / decay.y) * (m / (sqrt(v) / sqrt(decay.z) + eps));
}
