/* F16 to f32 with AVX-512 (vcvtph2ps on 16 lanes, masked tail; exact). */
#include <immintrin.h>

#include "core/core.h"

static void f16_to_f32_avx512(const void *src, void *dst, int64_t n)
{
    const uint16_t *s = src;
    float *d = dst;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm512_storeu_ps(d + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
        _mm512_storeu_ps(d + i + 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i + 16))));
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(d + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + i)));
    }
}

void skv_f16_init_avx512(skv_kernels *k)
{
    k->f16_to_f32 = f16_to_f32_avx512;
}
