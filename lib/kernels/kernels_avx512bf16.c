/* AVX-512-BF16 kernels: bf16 dot-product scoring (vdpbf16ps: 16 lanes x pairs of dims) and
 * fp8-e4m3 -> bf16 conversion with byte permutes (VBMI). fp8 values are exact in bf16 and the
 * product of two bf16 values is exact in f32, so only the f32 sums round. Compiled with
 * -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx512bf16 -mavx512vbmi. */
#include <immintrin.h>
#include <string.h>

#include "core/core.h"

#include "kernels/vec_avx512.h"

#include "kernels/reduce4_avx512.h"
#include "kernels/score_simd.h"

/* bf16 keys: (D / 2) / g steps, each a broadcast of g pairs of dims per key; with g = 1 an odd
 * D ends with a single dim (lane groups need even D). */
SKV_ALWAYS_INLINE void tile_bf16(const skv_qchunk *c, int32_t D, int hv, int g, int N,
                                 const uint16_t *k, size_t kst, const float *ks, int64_t n_valid,
                                 int scaled, int accumulate, float *out)
{
    VEC acc[HV_MAX][16];
    TILE_ROWS(uint16_t, row, k, kst, N, n_valid);
#pragma GCC unroll 16
    for (int v = 0; v < hv; v++)
#pragma GCC unroll 16
        for (int j = 0; j < N; j++)
            acc[v][j] = VZERO();

    const uint16_t *q = c->q;
    const int32_t D2 = D / 2, steps = D2 / g;
    for (int32_t d2 = 0; d2 < steps; d2++) {
        __m512bh qv[HV_MAX];
#pragma GCC unroll 16
        for (int v = 0; v < hv; v++)
            qv[v] = (__m512bh)_mm512_loadu_si512(q + ((size_t)d2 * hv + v) * 2 * LANES);
#pragma GCC unroll 16
        for (int j = 0; j < N; j++) {
            const __m512bh b = (__m512bh)_mm512_castps_si512(bcast_g(row[j] + 2 * (size_t)d2 * g, g));
#pragma GCC unroll 16
            for (int v = 0; v < hv; v++)
                acc[v][j] = _mm512_dpbf16_ps(acc[v][j], qv[v], b);
        }
    }
    if (g == 1 && (D & 1)) { /* last dim pairs with zero: q's pad is 0, the key's too */
        __m512bh qv[HV_MAX];
#pragma GCC unroll 16
        for (int v = 0; v < hv; v++)
            qv[v] = (__m512bh)_mm512_loadu_si512(q + ((size_t)D2 * hv + v) * 2 * LANES);
#pragma GCC unroll 16
        for (int j = 0; j < N; j++) {
            const __m512bh b = (__m512bh)_mm512_set1_epi32((int)row[j][D - 1]);
#pragma GCC unroll 16
            for (int v = 0; v < hv; v++)
                acc[v][j] = _mm512_dpbf16_ps(acc[v][j], qv[v], b);
        }
    }
    tile_epilogue(c, hv, g, N, acc, ks, n_valid, scaled, accumulate, out);
}

DEFINE_SCORE_KERNEL(score_bf16_avx512, tile_bf16, uint16_t)

#include "kernels/lanes_bf16.h"

static size_t pack_size_bf16(int32_t H, int32_t D)
{
    return skv_qpack_size(H, D, LANES, HV_MAX, SKV_BF16);
}

static void pack_bf16(void *dst, const skv_qpack_args *a)
{
    skv_qpack_fill(dst, a, LANES, HV_MAX, SKV_BF16);
}

/* fp8 -> bf16 by byte lookups: two 128-entry tables give the bf16 high and low bytes of the
 * magnitude (the index's top bit is ignored; the table's first half is the positive values),
 * the sign is OR-ed in, and two byte permutes interleave low/high bytes into words in the
 * original order. */
typedef struct fp8_lut { __m512i lo[2], hi[2], ix0, ix1, ixp0, ixp1; } fp8_lut;

static void fp8_lut_init(fp8_lut *t)
{
    for (int i = 0; i < 2; i++) {
        const __m512i w0 = _mm512_load_si512(skv_fp8_bf16_lut + 64 * i);
        const __m512i w1 = _mm512_load_si512(skv_fp8_bf16_lut + 64 * i + 32);
        t->lo[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(w0)),
                                      _mm512_cvtepi16_epi8(w1), 1);
        t->hi[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(_mm512_srli_epi16(w0, 8))),
                                      _mm512_cvtepi16_epi8(_mm512_srli_epi16(w1, 8)), 1);
    }
    uint8_t il0[64], il1[64];
    for (int i = 0; i < 32; i++) {
        il0[2 * i] = (uint8_t)i;
        il0[2 * i + 1] = (uint8_t)(64 + i);
        il1[2 * i] = (uint8_t)(32 + i);
        il1[2 * i + 1] = (uint8_t)(96 + i);
    }
    t->ix0 = _mm512_loadu_si512(il0);
    t->ix1 = _mm512_loadu_si512(il1);
    /* the same 64 values as two keys of 32 dims, their dim pairs interleaved as transpose16's
       first step would: dword q of 128-bit lane L holds pair 4L + q / 2 (+ 2 in the high
       half) of key q % 2 (low and high bytes of each of its two words) */
    uint8_t ip[2][64];
    for (int half = 0; half < 2; half++)
        for (int p = 0; p < 16; p++) {
            const int L = p / 4, q = p % 4, key = (q % 2) * 32, u = 4 * L + 2 * half + q / 2;
            for (int w = 0; w < 2; w++) {
                ip[half][4 * p + 2 * w] = (uint8_t)(key + 2 * u + w);
                ip[half][4 * p + 2 * w + 1] = (uint8_t)(64 + key + 2 * u + w);
            }
        }
    t->ixp0 = _mm512_loadu_si512(ip[0]);
    t->ixp1 = _mm512_loadu_si512(ip[1]);
}

/* The bf16 low and high bytes of 64 fp8 values, in their places. */
static inline __attribute__((always_inline)) void fp8x64_bytes(const fp8_lut *t, __m512i x, __m512i *lo,
                                                                __m512i *hi)
{
    *lo = _mm512_permutex2var_epi8(t->lo[0], x, t->lo[1]);
    *hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi[0], x, t->hi[1]), x,
                                    _mm512_set1_epi8((char)0x80), 0xf8); /* a | (b & c) */
}

/* 64 fp8 values to bf16 words, laid out by the byte indices i0 and i1 (ix0 / ix1: the first 32
 * in *w0, the last 32 in *w1). */
static inline __attribute__((always_inline)) void fp8x64_to_bf16(const fp8_lut *t, __m512i x,
                                                                  __m512i i0, __m512i i1,
                                                                  __m512i *w0, __m512i *w1)
{
    __m512i lo, hi;
    fp8x64_bytes(t, x, &lo, &hi);
    *w0 = _mm512_permutex2var_epi8(lo, i0, hi);
    *w1 = _mm512_permutex2var_epi8(lo, i1, hi);
}

static void fp8_to_bf16_vbmi(const void *src, void *dst, int64_t n)
{
    const uint8_t *s = src;
    uint16_t *d = dst;
    fp8_lut t;
    fp8_lut_init(&t);
    for (int64_t i = 0; i < n; i += 64) {
        const int64_t left = n - i;
        const __mmask64 m = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        __m512i w0, w1;
        fp8x64_to_bf16(&t, _mm512_maskz_loadu_epi8(m, s + i), t.ix0, t.ix1, &w0, &w1);
        if (left >= 64) {
            _mm512_storeu_si512(d + i, w0);
            _mm512_storeu_si512(d + i + 32, w1);
        } else {
            const __mmask32 m0 = left >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << left) - 1);
            const __mmask32 m1 = left <= 32 ? 0 : (((__mmask32)1 << (left - 32)) - 1);
            _mm512_mask_storeu_epi16(d + i, m0, w0);
            _mm512_mask_storeu_epi16(d + i + 32, m1, w1);
        }
    }
}

/* fp8 rows (one pointer per key) straight into the lanes layout: 32 dims of two keys converted
 * in one step, whose last byte permute also does the transposition's first step; then the
 * rest of the transposition of 16 keys, no bf16 rows in between. */
static void fp8_to_lanes_avx512(const void *const *rows, int32_t D, int64_t n, uint32_t *out)
{
    fp8_lut t;
    fp8_lut_init(&t);
    const int32_t units = D / 2;
    for (int64_t t0 = 0; t0 < n; t0 += 16) {
        uint32_t *tile = out + (size_t)(t0 / 16) * (size_t)units * 16;
        const void *row[16];
        tile_rows(rows, t0, n, (size_t)D, row);
        for (int32_t u0 = 0; u0 < units; u0 += 16) {
            __m512i p[16], r[16];
#pragma GCC unroll 8
            for (int i = 0; i < 16; i += 2) { /* the permute that makes words also pairs keys */
                const __m256i a = _mm256_loadu_si256((const __m256i *)((const uint8_t *)row[i] + 2 * u0));
                const __m256i b = _mm256_loadu_si256((const __m256i *)((const uint8_t *)row[i + 1] + 2 * u0));
                const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
                fp8x64_to_bf16(&t, x, t.ixp0, t.ixp1, &p[i], &p[i + 1]);
            }
            transpose16_paired(p, r);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                _mm512_storeu_si512(tile + (size_t)(u0 + j) * 16, r[j]);
        }
    }
}

#include "kernels/lanes_fp8.h"

void skv_kernels_init_avx512bf16(skv_kernels *k)
{
    k->score_bf16 = (skv_score_kernel){pack_size_bf16, pack_bf16, score_bf16_avx512, SKV_BF16};
    k->fp8_to_bf16 = fp8_to_bf16_vbmi;
    k->lanes = (skv_lanes_kernel){to_lanes_avx512, fp8_to_lanes_avx512, score_lanes_avx512,
                                  score_fp8_avx512, score_fp8_tiles_avx512};
}
