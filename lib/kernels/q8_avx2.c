/* Q8_0 blocks to f32 with AVX2 + F16C: codes sign-extended to int32, converted (exact) and
 * multiplied by the scale widened with vcvtph2ps: the scalar reference's bits. */
#include <immintrin.h>
#include <string.h>

#include "core/core.h"

static void q8_0_to_f32_avx2(const void *src, void *dst, int64_t n)
{
    const uint8_t *b = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i += SKV_Q8_0_BLOCK, b += SKV_Q8_0_BLOCK_BYTES) {
        uint16_t h;
        memcpy(&h, b, 2);
        const __m256 s = _mm256_cvtph_ps(_mm_set1_epi16((short)h));
        const __m128i c0 = _mm_loadu_si128((const __m128i *)(b + 2));
        const __m128i c1 = _mm_loadu_si128((const __m128i *)(b + 18));
        _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c0)), s));
        _mm256_storeu_ps(d + i + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c0, 8))), s));
        _mm256_storeu_ps(d + i + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c1)), s));
        _mm256_storeu_ps(d + i + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c1, 8))), s));
    }
}

void skv_q8_init_avx2(skv_kernels *k)
{
    k->q8_0_to_f32 = q8_0_to_f32_avx2;
}
