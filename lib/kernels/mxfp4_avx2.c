/* MXFP4 blocks to f32 or bf16 with AVX2 (kernels.h): the 16-entry E2M1 table is a permute of
 * the eight magnitudes plus the sign bit, then one multiply by the block's scale, as the scalar
 * code does (the same bits). The AVX-512 levels have their own (mxfp4_avx512.c). */
#include <immintrin.h>

#include "core/core.h"

static const float mag8[8] __attribute__((aligned(32))) = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};

/* Values 8i .. 8i + 7 of the block whose codes (one a byte, in order) are in `codes`. */
static inline __m256 eight(__m128i codes, __m256 mag, __m256 scale)
{
    const __m256i c = _mm256_cvtepu8_epi32(codes);
    const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(8)), 28);
    const __m256 v = _mm256_xor_ps(_mm256_permutevar8x32_ps(mag, c), _mm256_castsi256_ps(sign));
    return _mm256_mul_ps(v, scale);
}

/* The 32 values of block b as four vectors. */
static inline void block32(const uint8_t *packed, uint8_t sbyte, __m256 mag, __m256 out[4])
{
    const __m128i b = _mm_loadu_si128((const __m128i *)packed), m = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    const __m128i c0 = _mm_unpacklo_epi8(lo, hi), c1 = _mm_unpackhi_epi8(lo, hi); /* in order */
    const __m256 s = _mm256_set1_ps(skv_e8m0_f32(sbyte));
    out[0] = eight(c0, mag, s);
    out[1] = eight(_mm_srli_si128(c0, 8), mag, s);
    out[2] = eight(c1, mag, s);
    out[3] = eight(_mm_srli_si128(c1, 8), mag, s);
}

static void mxfp4_to_f32_avx2(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    const __m256 mag = _mm256_load_ps(mag8);
    float *d = dst;
    for (int64_t b = 0; b < n; b++) {
        __m256 v[4];
        block32(packed + b * 16, scales[b], mag, v);
        for (int i = 0; i < 4; i++)
            _mm256_storeu_ps(d + b * 32 + i * 8, v[i]);
    }
}

/* bf16: the upper halves (exact, kernels.h), packed in order. */
static inline __m256i bf16x16(__m256 a, __m256 b)
{
    const __m256i p = _mm256_packus_epi32(_mm256_srli_epi32(_mm256_castps_si256(a), 16),
                                          _mm256_srli_epi32(_mm256_castps_si256(b), 16));
    return _mm256_permute4x64_epi64(p, 0xd8);
}

static void mxfp4_to_bf16_avx2(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    const __m256 mag = _mm256_load_ps(mag8);
    uint16_t *d = dst;
    for (int64_t b = 0; b < n; b++) {
        __m256 v[4];
        block32(packed + b * 16, scales[b], mag, v);
        _mm256_storeu_si256((__m256i *)(d + b * 32), bf16x16(v[0], v[1]));
        _mm256_storeu_si256((__m256i *)(d + b * 32 + 16), bf16x16(v[2], v[3]));
    }
}

void skv_mxfp4_init_avx2(skv_kernels *k)
{
    k->mxfp4_to_f32 = mxfp4_to_f32_avx2;
    k->mxfp4_to_bf16 = mxfp4_to_bf16_avx2;
}
