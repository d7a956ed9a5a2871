#version 450
// affine.comp: the example engine's own compute pass (examples/
// vulkan_engine.c), standing for whatever an engine computes before and
// after libmha: dst[dst_off + i] = src[src_off + i] * scale + shift for
// i < n. Offsets are in elements, so one binding of a whole buffer serves
// every tensor in it.
layout(local_size_x = 64) in;

layout(std430, binding = 0) readonly buffer Src { float src[]; };
layout(std430, binding = 1) writeonly buffer Dst { float dst[]; };

layout(push_constant) uniform Push {
    uint n;
    uint src_off;
    uint dst_off;
    float scale;
    float shift;
} p;

void main()
{
    uint i = gl_GlobalInvocationID.x;
    if (i < p.n)
        dst[p.dst_off + i] = src[p.src_off + i] * p.scale + p.shift;
}
