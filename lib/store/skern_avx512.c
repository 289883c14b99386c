/* AVX-512 (F, BW, DQ, VL) store kernels: 16 lanes, masked tails. Each (row, query) dot product is
 * one FMA chain over 16-lane chunks in index order, then one fixed horizontal sum, so its value
 * does not depend on which rows or queries are computed alongside. */
#include <immintrin.h>

#include "core/core.h"
#include "store/skern.h"

static inline __mmask16 tail_mask(int32_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

static inline __m512 ld_f32(const void *r, int32_t i, __mmask16 m)
{
    return _mm512_maskz_loadu_ps(m, (const float *)r + i);
}
static inline __m512 ld_bf16(const void *r, int32_t i, __mmask16 m)
{
    const __m256i w = _mm256_maskz_loadu_epi16(m, (const uint16_t *)r + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(w), 16));
}
static inline __m512 ld_f16(const void *r, int32_t i, __mmask16 m)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)r + i));
}

/* One fixed summation tree for the 16 lanes (halves, then quarters, then pairs), written out so
 * that hsum4 — four sums at once with shuffles — performs exactly the same additions: a sum does
 * not depend on whether it was reduced alone or with three others. */
static inline float hsum(__m512 v)
{
    const __m256 x = _mm256_add_ps(_mm512_castps512_ps256(v),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 y = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    y = _mm_add_ps(y, _mm_permute_ps(y, _MM_SHUFFLE(1, 0, 3, 2)));
    y = _mm_add_ps(y, _mm_permute_ps(y, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(y);
}

static inline void hsum4(__m512 a, __m512 b, __m512 c, __m512 d, float *o0, float *o1, float *o2,
                         float *o3)
{
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(1, 0, 3, 2)));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(2, 3, 0, 1)));
    *o0 = _mm_cvtss_f32(_mm512_castps512_ps128(t));
    *o1 = _mm_cvtss_f32(_mm512_extractf32x4_ps(t, 1));
    *o2 = _mm_cvtss_f32(_mm512_extractf32x4_ps(t, 2));
    *o3 = _mm_cvtss_f32(_mm512_extractf32x4_ps(t, 3));
}

/* Four queries against two rows (eight chains), or one query against four rows. */
#define DEFINE_DOTS(NAME, LD)                                                                  \
    static void NAME(const float *q, int32_t G, int32_t D, const void *rows, size_t stride,    \
                     int64_t n, float *out)                                                    \
    {                                                                                          \
        int32_t g0 = 0;                                                                        \
        for (; g0 + 4 <= G; g0 += 4) {                                                         \
            const float *q0 = q + (size_t)g0 * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;    \
            int64_t j = 0;                                                                     \
            for (; j + 2 <= n; j += 2) {                                                       \
                const uint8_t *r = (const uint8_t *)rows + (size_t)j * stride, *r1 = r + stride; \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                    \
                __m512 b0 = a0, b1 = a0, b2 = a0, b3 = a0;                                     \
                for (int32_t i = 0; i < D; i += 16) {                                          \
                    const __mmask16 m = tail_mask(D - i);                                      \
                    const __m512 x = LD(r, i, m), y = LD(r1, i, m);                            \
                    const __m512 v0 = _mm512_maskz_loadu_ps(m, q0 + i);                        \
                    const __m512 v1 = _mm512_maskz_loadu_ps(m, q1 + i);                        \
                    const __m512 v2 = _mm512_maskz_loadu_ps(m, q2 + i);                        \
                    const __m512 v3 = _mm512_maskz_loadu_ps(m, q3 + i);                        \
                    a0 = _mm512_fmadd_ps(v0, x, a0), b0 = _mm512_fmadd_ps(v0, y, b0);          \
                    a1 = _mm512_fmadd_ps(v1, x, a1), b1 = _mm512_fmadd_ps(v1, y, b1);          \
                    a2 = _mm512_fmadd_ps(v2, x, a2), b2 = _mm512_fmadd_ps(v2, y, b2);          \
                    a3 = _mm512_fmadd_ps(v3, x, a3), b3 = _mm512_fmadd_ps(v3, y, b3);          \
                }                                                                              \
                float *o = out + j * G + g0;                                                   \
                hsum4(a0, a1, a2, a3, o, o + 1, o + 2, o + 3);                                 \
                o += G;                                                                        \
                hsum4(b0, b1, b2, b3, o, o + 1, o + 2, o + 3);                                 \
            }                                                                                  \
            for (; j < n; j++) {                                                               \
                const void *r = (const uint8_t *)rows + (size_t)j * stride;                    \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                    \
                for (int32_t i = 0; i < D; i += 16) {                                          \
                    const __mmask16 m = tail_mask(D - i);                                      \
                    const __m512 x = LD(r, i, m);                                              \
                    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q0 + i), x, a0);             \
                    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q1 + i), x, a1);             \
                    a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q2 + i), x, a2);             \
                    a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q3 + i), x, a3);             \
                }                                                                              \
                float *o = out + j * G + g0;                                                   \
                hsum4(a0, a1, a2, a3, o, o + 1, o + 2, o + 3);                                 \
            }                                                                                  \
        }                                                                                      \
        for (; g0 < G; g0++) {                                                                 \
            const float *qg = q + (size_t)g0 * D;                                              \
            int64_t j = 0;                                                                     \
            for (; j + 4 <= n; j += 4) {                                                       \
                const uint8_t *r0 = (const uint8_t *)rows + (size_t)j * stride;                \
                const uint8_t *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;         \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                    \
                for (int32_t i = 0; i < D; i += 16) {                                          \
                    const __mmask16 m = tail_mask(D - i);                                      \
                    const __m512 qv = _mm512_maskz_loadu_ps(m, qg + i);                        \
                    a0 = _mm512_fmadd_ps(qv, LD(r0, i, m), a0);                                \
                    a1 = _mm512_fmadd_ps(qv, LD(r1, i, m), a1);                                \
                    a2 = _mm512_fmadd_ps(qv, LD(r2, i, m), a2);                                \
                    a3 = _mm512_fmadd_ps(qv, LD(r3, i, m), a3);                                \
                }                                                                              \
                hsum4(a0, a1, a2, a3, out + (j + 0) * G + g0, out + (j + 1) * G + g0,          \
                      out + (j + 2) * G + g0, out + (j + 3) * G + g0);                         \
            }                                                                                  \
            for (; j < n; j++) {                                                               \
                const uint8_t *r0 = (const uint8_t *)rows + (size_t)j * stride;                \
                __m512 a0 = _mm512_setzero_ps();                                               \
                for (int32_t i = 0; i < D; i += 16) {                                          \
                    const __mmask16 m = tail_mask(D - i);                                      \
                    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qg + i), LD(r0, i, m), a0);  \
                }                                                                              \
                out[j * G + g0] = hsum(a0);                                                    \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_DOTS(dots_f32, ld_f32)
DEFINE_DOTS(dots_bf16, ld_bf16)
DEFINE_DOTS(dots_f16, ld_f16)

static void dots_avx512(const float *q, int32_t G, int32_t D, const void *rows, skv_dtype dt,
                        size_t stride, int64_t n, float *out)
{
    if (dt == SKV_BF16)
        dots_bf16(q, G, D, rows, stride, n, out);
    else if (dt == SKV_F16)
        dots_f16(q, G, D, rows, stride, n, out);
    else
        dots_f32(q, G, D, rows, stride, n, out);
}

static void minmax_avx512(const float *q, int32_t G, int32_t D, const float *lo, const float *hi,
                          float *out)
{
    for (int32_t g = 0; g < G; g++) {
        const float *qg = q + (size_t)g * D;
        __m512 acc = _mm512_setzero_ps();
        for (int32_t i = 0; i < D; i += 16) {
            const __mmask16 m = tail_mask(D - i);
            const __m512 qv = _mm512_maskz_loadu_ps(m, qg + i);
            const __m512 a = _mm512_mul_ps(qv, _mm512_maskz_loadu_ps(m, lo + i));
            const __m512 b = _mm512_mul_ps(qv, _mm512_maskz_loadu_ps(m, hi + i));
            acc = _mm512_add_ps(acc, _mm512_max_ps(a, b));
        }
        out[g] = hsum(acc);
    }
}

/* bytes from s to d in 64-byte vectors, the tail masked */
static inline void copy_bytes(uint8_t *d, const uint8_t *s, size_t n)
{
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        _mm512_storeu_si512(d + i, _mm512_loadu_si512(s + i));
    if (i < n) {
        const __mmask64 m = _cvtu64_mask64(~0ull >> (64 - (n - i)));
        _mm512_mask_storeu_epi8(d + i, m, _mm512_maskz_loadu_epi8(m, s + i));
    }
}

static void split_rows_avx512(uint8_t *dk, uint8_t *dv, const uint8_t *src, size_t stride,
                              size_t kb, size_t vb, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        const uint8_t *r = src + (size_t)i * stride;
        copy_bytes(dk + (size_t)i * kb, r, kb);
        if (vb)
            copy_bytes(dv + (size_t)i * vb, r + kb, vb);
    }
}

void skv_skern_init_avx512(skv_store_kern *k)
{
    k->dots = dots_avx512;
    k->minmax = minmax_avx512;
    k->split_rows = split_rows_avx512;
    k->name = "avx512";
}
