/* AVX-512 (F, BW, DQ, VL) attention kernels: 16 floats per vector, 4x4 score tiles and 4-head x
 * 64-column weighted-sum tiles. Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl. */
#include <immintrin.h>

#include "attention/attn.h"
#include "attention/vec_avx512.h"
#include "attention/attn_simd.h"

DEFINE_QK(qk_f32, qk_tile_f32, float)
DEFINE_BLOCK(block_f32, qk_f32, float)

void skv_attn_widen_avx512(const uint16_t *src, float *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
    if (i < n) {
        const __mmask16 m = attn_mask16((int)(n - i));
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
        _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
}

const attn_kernels skv_attn_kernels_avx512 = {block_f32, NULL, skv_attn_widen_avx512, "avx512"};
