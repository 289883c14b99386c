/* Horizontal sums of four 16-lane vectors at once, for the AVX-512 score kernels. Every
 * vector's lanes are added in the same tree whichever of the four slots it occupies:
 * ((l[i] + l[i+8]) + (l[i+4] + l[i+12])) for i < 4, then (s0 + s1) + (s2 + s3). */
#ifndef SKV_REDUCE4_AVX512_H
#define SKV_REDUCE4_AVX512_H

#include <immintrin.h>

/* out[0..n) (n < 4: the rest untouched) = sums * mul (mul NULL: 1), added to out[] when
 * accumulate. */
static inline __attribute__((always_inline)) void reduce4_avx512(const __m512 v[4],
                                                                 const float *mul,
                                                                 int accumulate, float *out,
                                                                 int64_t n)
{
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(v[0], v[1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(v[2], v[3], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(2, 3, 0, 1)));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(1, 0, 3, 2)));
    __m128 r = _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), t));
    const __mmask8 m = n >= 4 ? (__mmask8)0xf : (__mmask8)((1u << n) - 1);
    if (mul)
        r = _mm_mul_ps(r, _mm_maskz_loadu_ps(m, mul));
    if (accumulate)
        r = _mm_add_ps(r, _mm_maskz_loadu_ps(m, out));
    _mm_mask_storeu_ps(out, m, r);
}

#define REDUCE4 reduce4_avx512

#endif
