/* AVX2 + FMA + F16C store kernels: 8 lanes, the D % 8 tail added in index order after the
 * horizontal sum. Each (row, query) dot product is computed the same way whatever is computed
 * alongside it. */
#include <immintrin.h>

#include "core/core.h"
#include "store/skern.h"

static inline __m256 ld_f32(const void *r, int32_t i) { return _mm256_loadu_ps((const float *)r + i); }
static inline __m256 ld_bf16(const void *r, int32_t i)
{
    const __m128i w = _mm_loadu_si128((const __m128i *)((const uint16_t *)r + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16));
}
static inline __m256 ld_f16(const void *r, int32_t i)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)r + i)));
}
static inline float el_f32(const void *r, int32_t i) { return ((const float *)r)[i]; }
static inline float el_bf16(const void *r, int32_t i) { return skv_bf16_to_f32(((const uint16_t *)r)[i]); }
static inline float el_f16(const void *r, int32_t i) { return skv_f16_to_f32(((const uint16_t *)r)[i]); }

static inline float hsum(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

#define DEFINE_DOTS(NAME, LD, EL)                                                              \
    static void NAME(const float *q, int32_t G, int32_t D, const void *rows, size_t stride,    \
                     int64_t n, float *out)                                                    \
    {                                                                                          \
        const int32_t Dv = D & ~7;                                                             \
        int32_t g0 = 0;                                                                        \
        for (; g0 + 4 <= G; g0 += 4) {                                                         \
            const float *q0 = q + (size_t)g0 * D, *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;    \
            for (int64_t j = 0; j < n; j++) {                                                  \
                const void *r = (const uint8_t *)rows + (size_t)j * stride;                    \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                    \
                for (int32_t i = 0; i < Dv; i += 8) {                                          \
                    const __m256 x = LD(r, i);                                                 \
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + i), x, a0);                      \
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + i), x, a1);                      \
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + i), x, a2);                      \
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + i), x, a3);                      \
                }                                                                              \
                float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);              \
                for (int32_t i = Dv; i < D; i++) {                                             \
                    const float x = EL(r, i);                                                  \
                    s0 += q0[i] * x, s1 += q1[i] * x, s2 += q2[i] * x, s3 += q3[i] * x;        \
                }                                                                              \
                float *o = out + j * G + g0;                                                   \
                o[0] = s0, o[1] = s1, o[2] = s2, o[3] = s3;                                    \
            }                                                                                  \
        }                                                                                      \
        for (; g0 < G; g0++) {                                                                 \
            const float *qg = q + (size_t)g0 * D;                                              \
            int64_t j = 0;                                                                     \
            for (; j + 4 <= n; j += 4) {                                                       \
                const uint8_t *r0 = (const uint8_t *)rows + (size_t)j * stride;                \
                const uint8_t *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;         \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                    \
                for (int32_t i = 0; i < Dv; i += 8) {                                          \
                    const __m256 qv = _mm256_loadu_ps(qg + i);                                 \
                    a0 = _mm256_fmadd_ps(qv, LD(r0, i), a0);                                   \
                    a1 = _mm256_fmadd_ps(qv, LD(r1, i), a1);                                   \
                    a2 = _mm256_fmadd_ps(qv, LD(r2, i), a2);                                   \
                    a3 = _mm256_fmadd_ps(qv, LD(r3, i), a3);                                   \
                }                                                                              \
                float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);              \
                for (int32_t i = Dv; i < D; i++) {                                             \
                    s0 += qg[i] * EL(r0, i), s1 += qg[i] * EL(r1, i);                          \
                    s2 += qg[i] * EL(r2, i), s3 += qg[i] * EL(r3, i);                          \
                }                                                                              \
                out[(j + 0) * G + g0] = s0, out[(j + 1) * G + g0] = s1;                        \
                out[(j + 2) * G + g0] = s2, out[(j + 3) * G + g0] = s3;                        \
            }                                                                                  \
            for (; j < n; j++) {                                                               \
                const uint8_t *r0 = (const uint8_t *)rows + (size_t)j * stride;                \
                __m256 a0 = _mm256_setzero_ps();                                               \
                for (int32_t i = 0; i < Dv; i += 8)                                            \
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + i), LD(r0, i), a0);              \
                float s0 = hsum(a0);                                                           \
                for (int32_t i = Dv; i < D; i++)                                               \
                    s0 += qg[i] * EL(r0, i);                                                   \
                out[j * G + g0] = s0;                                                          \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_DOTS(dots_f32, ld_f32, el_f32)
DEFINE_DOTS(dots_bf16, ld_bf16, el_bf16)
DEFINE_DOTS(dots_f16, ld_f16, el_f16)

static void dots_avx2(const float *q, int32_t G, int32_t D, const void *rows, skv_dtype dt,
                      size_t stride, int64_t n, float *out)
{
    if (dt == SKV_BF16)
        dots_bf16(q, G, D, rows, stride, n, out);
    else if (dt == SKV_F16)
        dots_f16(q, G, D, rows, stride, n, out);
    else
        dots_f32(q, G, D, rows, stride, n, out);
}

static void minmax_avx2(const float *q, int32_t G, int32_t D, const float *lo, const float *hi,
                        float *out)
{
    const int32_t Dv = D & ~7;
    for (int32_t g = 0; g < G; g++) {
        const float *qg = q + (size_t)g * D;
        __m256 acc = _mm256_setzero_ps();
        for (int32_t i = 0; i < Dv; i += 8) {
            const __m256 qv = _mm256_loadu_ps(qg + i);
            const __m256 a = _mm256_mul_ps(qv, _mm256_loadu_ps(lo + i));
            const __m256 b = _mm256_mul_ps(qv, _mm256_loadu_ps(hi + i));
            acc = _mm256_add_ps(acc, _mm256_max_ps(a, b));
        }
        float s = hsum(acc);
        for (int32_t i = Dv; i < D; i++) {
            const float a = qg[i] * lo[i], b = qg[i] * hi[i];
            s += a > b ? a : b;
        }
        out[g] = s;
    }
}

static inline void copy_bytes(uint8_t *d, const uint8_t *s, size_t n)
{
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_loadu_si256((const __m256i *)(s + i)));
    for (; i < n; i++)
        d[i] = s[i];
}

static void split_rows_avx2(uint8_t *dk, uint8_t *dv, const uint8_t *src, size_t stride,
                            size_t kb, size_t vb, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        const uint8_t *r = src + (size_t)i * stride;
        copy_bytes(dk + (size_t)i * kb, r, kb);
        if (vb)
            copy_bytes(dv + (size_t)i * vb, r + kb, vb);
    }
}

void skv_skern_init_avx2(skv_store_kern *k)
{
    k->dots = dots_avx2;
    k->minmax = minmax_avx2;
    k->split_rows = split_rows_avx2;
    k->name = "avx2";
}
