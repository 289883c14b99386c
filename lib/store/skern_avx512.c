/* AVX-512 (F, BW, VL) store kernels: 16 lanes, masked tails. Each (row, query) dot product is one
 * FMA chain over 16-lane chunks in index order, then one fixed horizontal sum, so its value does
 * not depend on which rows or queries are computed alongside. */
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

/* Four queries against one row, or one query against four rows: four chains either way. */
#define DEFINE_DOTS(NAME, LD)                                                                  \
    static void NAME(const float *q, int32_t G, int32_t D, const void *rows, size_t stride,    \
                     int64_t n, float *out)                                                    \
    {                                                                                          \
        int32_t g0 = 0;                                                                        \
        for (; g0 + 4 <= G; g0 += 4) {                                                         \
            const float *q0 = q + (size_t)g0 * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;    \
            for (int64_t j = 0; j < n; j++) {                                                  \
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
                o[0] = _mm512_reduce_add_ps(a0);                                               \
                o[1] = _mm512_reduce_add_ps(a1);                                               \
                o[2] = _mm512_reduce_add_ps(a2);                                               \
                o[3] = _mm512_reduce_add_ps(a3);                                               \
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
                out[(j + 0) * G + g0] = _mm512_reduce_add_ps(a0);                              \
                out[(j + 1) * G + g0] = _mm512_reduce_add_ps(a1);                              \
                out[(j + 2) * G + g0] = _mm512_reduce_add_ps(a2);                              \
                out[(j + 3) * G + g0] = _mm512_reduce_add_ps(a3);                              \
            }                                                                                  \
            for (; j < n; j++) {                                                               \
                const uint8_t *r0 = (const uint8_t *)rows + (size_t)j * stride;                \
                __m512 a0 = _mm512_setzero_ps();                                               \
                for (int32_t i = 0; i < D; i += 16) {                                          \
                    const __mmask16 m = tail_mask(D - i);                                      \
                    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qg + i), LD(r0, i, m), a0);  \
                }                                                                              \
                out[j * G + g0] = _mm512_reduce_add_ps(a0);                                    \
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
        out[g] = _mm512_reduce_add_ps(acc);
    }
}

void skv_skern_init_avx512(skv_store_kern *k)
{
    k->dots = dots_avx512;
    k->minmax = minmax_avx512;
    k->name = "avx512";
}
