/* cpu_features.c: run-time CPU feature detection for the CPU backend, so
 * one build picks the best kernel table on each machine. Compiled with the
 * baseline flags of the target (never with -mavx2 and friends): it must run
 * on CPUs that lack every optional ISA. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* sysconf */
#endif

#include "cpu_features.h"

#include <stdint.h>

#include "mha.h"

#if defined(_WIN32)
#include <windows.h>
#else
#include <unistd.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>

/* CPUID.1:ECX and CPUID.7.0:EBX bits (Intel SDM vol. 2A, CPUID). */
#define LEAF1_ECX_FMA (1u << 12)
#define LEAF1_ECX_OSXSAVE (1u << 27)
#define LEAF1_ECX_AVX (1u << 28)
#define LEAF1_ECX_F16C (1u << 29)
#define LEAF7_EBX_AVX2 (1u << 5)
#define LEAF7_EBX_AVX512F (1u << 16)

/* XCR0 state components the OS must enable: SSE (1) and AVX (2) for YMM;
 * additionally opmask (5), ZMM_Hi256 (6) and Hi16_ZMM (7) for AVX-512. */
#define XCR0_YMM 0x06u
#define XCR0_ZMM 0xE0u

/* XCR0 via XGETBV; only valid once CPUID reported OSXSAVE. Inline asm
 * rather than _xgetbv so this file needs no -mxsave. */
static uint64_t read_xcr0(void)
{
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static unsigned x86_features(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d))
        return 0;
    /* F16C (fp16 K/V conversion) comes with every AVX2 CPU made; one
     * without it gets the scalar table, not a table missing a kernel. */
    const unsigned need1 = LEAF1_ECX_FMA | LEAF1_ECX_OSXSAVE | LEAF1_ECX_AVX |
                           LEAF1_ECX_F16C;
    if ((c & need1) != need1)
        return 0;
    uint64_t xcr0 = read_xcr0();
    if ((xcr0 & XCR0_YMM) != XCR0_YMM)
        return 0; /* the OS does not save YMM registers on context switch */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0; /* leaf 7 absent: no AVX2 */
    if (!(b & LEAF7_EBX_AVX2))
        return 0;
    unsigned features = MHA_FEATURE_AVX2;
    if ((b & LEAF7_EBX_AVX512F) && (xcr0 & XCR0_ZMM) == XCR0_ZMM)
        features |= MHA_FEATURE_AVX512;
    return features;
}
#endif

unsigned mha_cpu_features(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    return x86_features();
#elif defined(__aarch64__)
    return MHA_FEATURE_NEON;
#else
    return 0;
#endif
}

int mha_cpu_core_count(void)
{
#if defined(_WIN32)
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    long n = (long)info.dwNumberOfProcessors;
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
    if (n < 1)
        return 1;
    if (n > INT32_MAX)
        return INT32_MAX;
    return (int)n;
}
