// dtype.glsl: per-binding element types for the kernels that take fp16
// tensors. Each kernel is compiled twice: MHA_F16 == 0 (fp32 only, runs on
// every device) and MHA_F16 == 1 (needs storageBuffer16BitAccess), where
// each binding is also declared as float16_t[] (descriptor aliasing) and the
// push-constant word FLAGS says, one bit per binding (DT_F16(b), push.h),
// whether that operand is stored as fp16. Arithmetic is fp32 in both variants:
// values are widened on load and rounded to fp16 only on store.
#ifndef MHA_F16
#define MHA_F16 0
#endif

#extension GL_GOOGLE_include_directive : require
#include "push.h"

#if MHA_F16
#extension GL_EXT_shader_16bit_storage : require
#define IN_BUFFER(b, name)                                                 \
    layout(std430, binding = b) readonly buffer name##_f32 {               \
        float name[];                                                      \
    };                                                                     \
    layout(std430, binding = b) readonly buffer name##_f16 {               \
        float16_t name##16[];                                              \
    };
#define OUT_BUFFER(b, name)                                                \
    layout(std430, binding = b) writeonly buffer name##_f32 {              \
        float name[];                                                      \
    };                                                                     \
    layout(std430, binding = b) writeonly buffer name##_f16 {              \
        float16_t name##16[];                                              \
    };
#define LOAD(b, name, i)                                                     \
    ((FLAGS & DT_F16(b)) != 0u ? float(name##16[i]) : name[i])
#define STORE(b, name, i, v)                                                 \
    if ((FLAGS & DT_F16(b)) != 0u) name##16[i] = float16_t(v);               \
    else name[i] = (v)
#else
#define IN_BUFFER(b, name)                                                   \
    layout(std430, binding = b) readonly buffer name##_f32 { float name[]; };
#define OUT_BUFFER(b, name)                                                  \
    layout(std430, binding = b) writeonly buffer name##_f32 { float name[]; };
#define LOAD(b, name, i) name[i]
#define STORE(b, name, i, v) name[i] = (v)
#endif
