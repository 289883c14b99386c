/* Picks the attention kernel table for a context's CPU flags: the highest level whose flags
 * (and those of every level below it) are all set. */
#include "attention/attn.h"

const attn_kernels *skv_attn_kernels(uint32_t flags)
{
#ifdef SKV_HAVE_X86
    if (!(flags & SKV_CPU_AVX2))
        return &skv_attn_kernels_scalar;
    if (!(flags & SKV_CPU_AVX512))
        return &skv_attn_kernels_avx2;
    if (!(flags & SKV_CPU_AVX512BF16))
        return &skv_attn_kernels_avx512;
    return &skv_attn_kernels_avx512bf16;
#else
    (void)flags;
    return &skv_attn_kernels_scalar;
#endif
}
