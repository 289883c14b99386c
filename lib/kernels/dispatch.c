/* Fills the kernel tables: scalar first, then each level in turn while the flags allow. */
#include "core/core.h"

void skv_kernels_init(skv_kernels *k, uint32_t flags)
{
    skv_kernels_init_scalar(k);
    skv_f16_init_scalar(k);
    skv_q8_init_scalar(k);
    skv_q8i8_init_scalar(k);
    k->flags = 0;
#ifdef SKV_HAVE_X86
    if (!(flags & SKV_CPU_AVX2))
        return;
    skv_kernels_init_avx2(k);
    skv_mxfp4_init_avx2(k);
    skv_f16_init_avx2(k);
    skv_q8_init_avx2(k);
    skv_q8i8_init_avxvnni(k);
    k->flags |= SKV_CPU_AVX2;
    if (!(flags & SKV_CPU_AVX512))
        return;
    skv_kernels_init_avx512(k);
    skv_mxfp4_init_avx512(k);
    skv_f16_init_avx512(k);
    skv_q8_init_avx512(k);
    skv_q8i8_init_avx512vnni(k);
    k->flags |= SKV_CPU_AVX512;
    if (!(flags & SKV_CPU_AVX512BF16))
        return;
    skv_kernels_init_avx512bf16(k);
    k->flags |= SKV_CPU_AVX512BF16;
#elif defined(SKV_HAVE_NEON)
    if (!(flags & SKV_CPU_NEON))
        return;
    skv_kernels_init_neon(k);
    k->flags |= SKV_CPU_NEON;
#else
    (void)flags;
#endif
}
