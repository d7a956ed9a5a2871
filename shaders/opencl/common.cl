/* common.cl: the prelude of every libmha OpenCL program: load/store macros
 * for f32 or f16 storage (fp32 arithmetic) and helpers shared by the
 * kernels. OpenCL C 1.2.
 *
 * Every tensor argument is a triple (pointer, element offset, int4 strides
 * in elements, outermost first); an offset below 0 marks an absent
 * optional tensor. Indices are 32-bit: the host declines larger tensors. */
#ifdef MHA_FORCE_BUILD_ERROR
#error "build failure requested with -D MHA_FORCE_BUILD_ERROR (test hook)"
#endif

/* Tensors are f32 or f16 each on its own (an f16 layer reads f32 inputs
 * and writes f32 scores); bit n of a kernel's halfmask says tensor
 * argument n holds halves. Pointers are declared float and read through
 * vload_half/vstore_half when the bit is set: those are core OpenCL C 1.2,
 * half is only a storage type here and arithmetic stays fp32. The branch
 * is uniform over the whole launch. */
#define IS_HALF(n) ((halfmask >> (n)) & 1)
#define LD(p, i, n) \
    (IS_HALF(n) ? vload_half((i), (global const half *)(p)) : (p)[i])
#define ST(p, i, v, n)                                  \
    do {                                                \
        if (IS_HALF(n))                                 \
            vstore_half((v), (i), (global half *)(p));  \
        else                                            \
            (p)[i] = (v);                               \
    } while (0)

/* Element offset of (i0, i1, i2, i3) in a tensor with offset off. */
#define AT(off, st, i0, i1, i2, i3) \
    ((off) + (i0) * (st).x + (i1) * (st).y + (i2) * (st).z + (i3) * (st).w)

/* max that lets NaN win, so NaN propagates through softmax as in PyTorch
 * (fmax would drop it). */
static inline float mha_nanmax(float a, float b)
{
    return (b > a || isnan(b)) ? b : a;
}

#ifdef CW
/* The attention kernels' vectors of CW floats (the columns a work item
 * owns; their programs' build options set CW), their loads and stores,
 * and the pairwise sum of their lanes. */
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
typedef CAT(float, CW) vecw;
#define VLOADW CAT(vload, CW)
#define VSTOREW CAT(vstore, CW)

static float hsum4(float4 v)
{
    return (v.x + v.y) + (v.z + v.w);
}

static float hsumw(vecw v)
{
#if CW == 4
    return hsum4(v);
#elif CW == 8
    return hsum4(v.lo + v.hi);
#else
    return hsum4((v.lo + v.hi).lo + (v.lo + v.hi).hi);
#endif
}
#endif
