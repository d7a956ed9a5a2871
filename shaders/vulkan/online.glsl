// online.glsl: the row statistics of an online softmax, shared by the fused
// attention and the combine pass of its split-K variant, so both treat NaN,
// -inf and sinks alike.
#ifndef MHA_VK_ONLINE_GLSL
#define MHA_VK_ONLINE_GLSL

#define NEG_INF uintBitsToFloat(0xff800000u)

// max that propagates NaN: a NaN score makes its row NaN, as in SOFTMAX
float nmax(float a, float b)
{
    return isnan(a) ? a : isnan(b) ? b : (a > b ? a : b);
}

// Folds a sink logit sk into a row of maximum m (not -inf) and sum l, in
// the frame of the larger of the two (core/backend.h: the sink joins the
// denominator and carries no value). Returns the factor the row's
// accumulated output is to be scaled by.
float fold_sink(float m, inout float l, float sk)
{
    float mx = nmax(m, sk);
    float alpha = exp(m - mx);
    l = l * alpha + exp(sk - mx);
    return alpha;
}

#endif
