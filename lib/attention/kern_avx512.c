/* AVX-512 (F, BW, DQ, VL) attention kernels: 16 floats per vector, 4x4 score tiles and 4-head x
 * 64-column weighted-sum tiles; bf16 rows widened in registers. Compiled with -mavx512f
 * -mavx512bw -mavx512dq -mavx512vl. */
#include <immintrin.h>

#include "attention/attn.h"
#include "attention/vec_avx512.h"
#include "attention/attn_simd.h"

DEFINE_QK(qk_f32, qk_tile_f32, 0)
DEFINE_BLOCK(block_f32, qk_f32, 0)
DEFINE_QK(qk_bf16, qk_tile_f32, 1)
DEFINE_BLOCK(block_bf16, qk_bf16, 1)

void skv_attn_widen_avx512(const uint16_t *src, float *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, VLOADH(src + i));
    if (i < n)
        VSTOREN(dst + i, VLOADHN(src + i, (int)(n - i)), (int)(n - i));
}

const attn_kernels skv_attn_kernels_avx512 = {block_f32, block_bf16, 0, skv_attn_widen_avx512,
                                              "avx512"};
