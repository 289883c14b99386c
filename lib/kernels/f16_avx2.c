/* F16 to f32 with F16C (vcvtph2ps, exact), eight values a step. Compiled with -mf16c. */
#include <immintrin.h>
#include <string.h>

#include "core/core.h"

static void f16_to_f32_f16c(const void *src, void *dst, int64_t n)
{
    const uint16_t *s = src;
    float *d = dst;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
        _mm256_storeu_ps(d + i + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i + 8))));
    }
    if (i < n) { /* the tail through a zeroed buffer: the same instruction, the same bits */
        uint16_t t[16] = {0};
        float o[16];
        memcpy(t, s + i, (size_t)(n - i) * 2);
        _mm256_storeu_ps(o, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)t)));
        _mm256_storeu_ps(o + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(t + 8))));
        memcpy(d + i, o, (size_t)(n - i) * 4);
    }
}

void skv_f16_init_avx2(skv_kernels *k)
{
    k->f16_to_f32 = f16_to_f32_f16c;
}
