/* cpu_features.h: what the running CPU can execute (AVX2+FMA+F16C, AVX-512F,
 * NEON) and how many cores it has. Kept apart from the ISA kernel files so
 * that detection is compiled without ISA flags and is safe to run on any
 * CPU of the target architecture. */
#ifndef MHA_CPU_FEATURES_H
#define MHA_CPU_FEATURES_H

/* MHA_FEATURE_AVX2, MHA_FEATURE_AVX512 and MHA_FEATURE_NEON bits (mha.h)
 * the running CPU and operating system support: an x86 bit is set only when
 * the CPU has the instructions (CPUID) and the OS saves the registers they
 * use (XGETBV). AVX2 also needs F16C (fp16 rows convert with VCVTPH2PS;
 * every AVX2 CPU made has it). AVX512 is set only together with AVX2,
 * since the AVX-512 kernels may use 256-bit AVX2/FMA instructions as
 * well. NEON is always set on AArch64, where it is mandatory. Cheap enough
 * to call per table lookup; keeps no state. */
unsigned mha_cpu_features(void);

/* Online logical processors, at least 1. */
int mha_cpu_core_count(void);

#endif /* MHA_CPU_FEATURES_H */
