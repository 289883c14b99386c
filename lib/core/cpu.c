/* CPU feature detection: CPUID for the instruction sets, XGETBV for the OS saving the
 * register state they need. */
#include "sparsekv/common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint32_t detect(void)
{
    uint32_t a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1,
              avx = (c >> 28) & 1;
    if (!osxsave || !avx)
        return 0;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) /* XMM and YMM state */
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1,
              avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1, vbmi = (c >> 1) & 1;
    uint32_t eax1, ebx1, ecx1, edx1;
    __cpuid_count(7, 1, eax1, ebx1, ecx1, edx1);
    (void)ebx1;
    (void)ecx1;
    (void)edx1;
    const int bf16 = (eax1 >> 5) & 1;

    uint32_t flags = 0;
    if (avx2 && fma && f16c)
        flags |= SKV_CPU_AVX2;
    else
        return flags;
    if (avx512f && avx512dq && avx512bw && avx512vl && (xcr0 & 0xe6) == 0xe6)
        flags |= SKV_CPU_AVX512;
    else
        return flags;
    if (bf16 && vbmi)
        flags |= SKV_CPU_AVX512BF16;
    return flags;
}
#elif defined(__aarch64__)
/* Advanced SIMD is part of the AArch64 base ISA. */
static uint32_t detect(void) { return SKV_CPU_NEON; }
#else
static uint32_t detect(void) { return 0; }
#endif

uint32_t skv_cpu_flags(void)
{
    static uint32_t cached;
    static int done;
    if (!__atomic_load_n(&done, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&cached, detect(), __ATOMIC_RELAXED);
        __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&cached, __ATOMIC_RELAXED);
}

const char *skv_cpu_level_name(uint32_t flags)
{
    if (flags & SKV_CPU_NEON)
        return "neon";
    if (flags & SKV_CPU_AVX512BF16)
        return "avx512bf16";
    if (flags & SKV_CPU_AVX512)
        return "avx512";
    if (flags & SKV_CPU_AVX2)
        return "avx2";
    return "scalar";
}
