/* Q8_0 blocks to f32 with AVX-512: a block is two 16-lane vectors; the scalar reference's
 * bits (exact int8 -> f32, the f16 scale widened by vcvtph2ps, one multiply). */
#include <immintrin.h>
#include <string.h>

#include "core/core.h"

static void q8_0_to_f32_avx512(const void *src, void *dst, int64_t n)
{
    const uint8_t *b = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i += SKV_Q8_0_BLOCK, b += SKV_Q8_0_BLOCK_BYTES) {
        uint16_t h;
        memcpy(&h, b, 2);
        const __m512 s = _mm512_cvtph_ps(_mm256_set1_epi16((short)h));
        const __m512i c0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)));
        const __m512i c1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 18)));
        _mm512_storeu_ps(d + i, _mm512_mul_ps(_mm512_cvtepi32_ps(c0), s));
        _mm512_storeu_ps(d + i + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(c1), s));
    }
}

void skv_q8_init_avx512(skv_kernels *k)
{
    k->q8_0_to_f32 = q8_0_to_f32_avx512;
}
