/* AVX-512 (F, BW, DQ, VL) kernels: f32 scoring with 16 heads per vector, the top-k filter,
 * and widening conversions. Compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl. */
#include <immintrin.h>
#include <string.h>

#include "core/core.h"

#include "kernels/vec_avx512.h"

static inline __mmask16 lane_mask(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

#include "kernels/reduce4_avx512.h"
#include "kernels/score_simd.h"

DEFINE_SCORE_KERNEL(score_f32_avx512, tile_f32, float)

static size_t pack_size_avx512(int32_t H, int32_t D)
{
    return skv_qpack_size(H, D, LANES, HV_MAX, SKV_F32);
}

static void pack_avx512(void *dst, const skv_qpack_args *a)
{
    skv_qpack_fill(dst, a, LANES, HV_MAX, SKV_F32);
}

/* Monotone u32 keys of 16 scores (see skv_score_key); NaN lanes reported in *nan. */
static inline __m512i score_keys(__m512 s, __mmask16 *nan)
{
    s = _mm512_add_ps(s, _mm512_setzero_ps()); /* -0 -> +0 */
    *nan = _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q);
    const __m512i u = _mm512_castps_si512(s);
    return _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi32(u, 31),
                                               _mm512_set1_epi32((int)0x80000000u)));
}

/* Appends with full-vector stores (callers leave 16 slots of slack): vpcompressd to memory
 * is microcoded on some cores, the register form is not. */
static int32_t filter_avx512(const float *s, int32_t n, int32_t base, uint32_t thr, int all,
                             uint32_t *keys, int32_t *idx)
{
    const __m512i vthr = _mm512_set1_epi32((int)thr);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int32_t m = 0;
    for (int32_t j = 0; j < n; j += 16) {
        const __mmask16 valid = n - j >= 16 ? (__mmask16)0xffff : lane_mask(n - j);
        __mmask16 nan;
        __m512i key = score_keys(_mm512_maskz_loadu_ps(valid, s + j), &nan);
        key = _mm512_maskz_mov_epi32(~nan, key); /* NaN ranks lowest: key 0 */
        const __mmask16 take = all ? valid : _mm512_mask_cmpgt_epu32_mask(valid, key, vthr);
        if (take) {
            const __m512i ix = _mm512_add_epi32(iota, _mm512_set1_epi32(base + j));
            _mm512_storeu_si512(keys + m, _mm512_maskz_compress_epi32(take, key));
            _mm512_storeu_si512(idx + m, _mm512_maskz_compress_epi32(take, ix));
            m += __builtin_popcount(take);
        }
    }
    return m;
}

static void key_range_avx512(const uint32_t *key, int32_t n, uint32_t *lo, uint32_t *hi)
{
    __m512i a = _mm512_set1_epi32(-1), b = _mm512_setzero_si512();
    for (int32_t i = 0; i < n; i += 16) {
        const __mmask16 valid = n - i >= 16 ? (__mmask16)0xffff : lane_mask(n - i);
        const __m512i k = _mm512_maskz_loadu_epi32(valid, key + i);
        a = _mm512_mask_min_epu32(a, valid, a, k);
        b = _mm512_max_epu32(b, k); /* masked-off lanes load 0 */
    }
    *lo = _mm512_reduce_min_epu32(a);
    *hi = _mm512_reduce_max_epu32(b);
}

static int32_t in_range_avx512(const uint32_t *key, int32_t n, uint32_t lo, uint32_t span,
                               uint32_t *out, int32_t cap)
{
    const __m512i vlo = _mm512_set1_epi32((int)lo), vspan = _mm512_set1_epi32((int)span);
    int32_t m = 0;
    for (int32_t i = 0; i < n && m < cap; i += 16) {
        const __mmask16 valid = n - i >= 16 ? (__mmask16)0xffff : lane_mask(n - i);
        const __m512i k = _mm512_maskz_loadu_epi32(valid, key + i);
        const __mmask16 in = _mm512_mask_cmple_epu32_mask(valid, _mm512_sub_epi32(k, vlo), vspan);
        _mm512_storeu_si512(out + m, _mm512_maskz_compress_epi32(in, k)); /* m < cap: fits */
        m += __builtin_popcount(in);
    }
    return m;
}

/* In place: the compressed vector lands at or before the one just read, and a masked store
 * writes only the kept lanes, so nothing unread and nothing past n is touched. */
static int32_t keep_avx512(uint32_t *key, int32_t *idx, int32_t n, uint32_t kth, int64_t need)
{
    const __m512i vk = _mm512_set1_epi32((int)kth);
    int32_t out = 0;
    for (int32_t i = 0; i < n; i += 16) {
        const __mmask16 valid = n - i >= 16 ? (__mmask16)0xffff : lane_mask(n - i);
        const __m512i k = _mm512_maskz_loadu_epi32(valid, key + i);
        const __m512i ix = _mm512_maskz_loadu_epi32(valid, idx + i);
        __mmask16 eq = _mm512_mask_cmpeq_epu32_mask(valid, k, vk);
        const int n_eq = __builtin_popcount(eq);
        if (n_eq > need) { /* the last ties kept: only the first `need` of these */
            unsigned late = eq;
            for (int64_t c = need > 0 ? need : 0; c > 0; c--)
                late &= late - 1;
            eq = (__mmask16)(eq & ~late);
        }
        need -= n_eq;
        const __mmask16 take = _mm512_mask_cmpgt_epu32_mask(valid, k, vk) | eq;
        const __mmask16 to = lane_mask(__builtin_popcount(take));
        _mm512_mask_storeu_epi32(key + out, to, _mm512_maskz_compress_epi32(take, k));
        _mm512_mask_storeu_epi32(idx + out, to, _mm512_maskz_compress_epi32(take, ix));
        out += __builtin_popcount(take);
    }
    return out;
}

static void bf16_to_f32_avx512(const void *src, void *dst, int64_t n)
{
    const uint16_t *s = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : lane_mask((int)(n - i));
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + i));
        _mm512_mask_storeu_ps(d + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
}

/* e4m3: normals by moving the bits into f32 position and rebiasing the exponent (+120),
 * subnormals as m * 2^-9, and S.1111.111 as NaN. */
static void fp8_to_f32_avx512(const void *src, void *dst, int64_t n)
{
    const uint8_t *s = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : lane_mask((int)(n - i));
        const __m512i x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, s + i));
        const __m512i mag = _mm512_and_si512(x, _mm512_set1_epi32(0x7f));
        __m512i bits = _mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23));
        const __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(mag), _mm512_set1_ps(0x1p-9f));
        bits = _mm512_mask_mov_epi32(bits, _mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(8)),
                                     _mm512_castps_si512(sub));
        bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f)),
                                     _mm512_set1_epi32(0x7fc00000));
        bits = _mm512_or_si512(bits, _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24));
        _mm512_mask_storeu_ps(d + i, m, _mm512_castsi512_ps(bits));
    }
}

/* 16 heads per vector; mul then add (not FMA) to give the scalar kernel's bits. Four head
 * vectors times NX key vectors per pass: each row of qt loaded once for the NX vectors, and
 * 4 * NX independent sums in flight (one vector's four chains wait on the add's latency). */
static inline __attribute__((always_inline)) void head_dots_nx(const float *qt, const float *x,
                                                               int NX, int32_t H, int32_t D,
                                                               float *dots)
{
    for (int32_t h0 = 0; h0 < H; h0 += 64) {
        __m512 acc[4][4];
        __mmask16 m[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            const int32_t left = H - h0 - 16 * v;
            m[v] = left >= 16 ? (__mmask16)0xffff : left > 0 ? lane_mask(left) : 0;
#pragma GCC unroll 4
            for (int j = 0; j < NX; j++)
                acc[j][v] = _mm512_setzero_ps();
        }
        for (int32_t d = 0; d < D; d++) {
            const float *row = qt + (size_t)d * H + h0;
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m512 qv = _mm512_maskz_loadu_ps(m[v], row + 16 * v);
#pragma GCC unroll 4
                for (int j = 0; j < NX; j++)
                    acc[j][v] = _mm512_add_ps(acc[j][v], _mm512_mul_ps(qv, _mm512_set1_ps(x[(size_t)j * D + d])));
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < NX; j++)
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                _mm512_mask_storeu_ps(dots + (size_t)j * H + h0 + 16 * v, m[v], acc[j][v]);
    }
}

static void head_dots_avx512(const float *qt, const float *x, int32_t n, int32_t H, int32_t D,
                             float *dots)
{
    int32_t i = 0;
    for (; i + 4 <= n; i += 4)
        head_dots_nx(qt, x + (size_t)i * D, 4, H, D, dots + (size_t)i * H);
    for (; i + 2 <= n; i += 2)
        head_dots_nx(qt, x + (size_t)i * D, 2, H, D, dots + (size_t)i * H);
    for (; i < n; i++)
        head_dots_nx(qt, x + (size_t)i * D, 1, H, D, dots + (size_t)i * H);
}

/* 128 floats at a time in registers over all the rows, then a vector at a time (masked last). */
static void add_rows_avx512(float *acc, const float *const *rows, int32_t n_rows, int64_t n)
{
    int64_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m512 a[8];
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++)
            a[v] = _mm512_loadu_ps(acc + i + 16 * v);
        for (int32_t r = 0; r < n_rows; r++)
#pragma GCC unroll 8
            for (int v = 0; v < 8; v++)
                a[v] = _mm512_add_ps(a[v], _mm512_loadu_ps(rows[r] + i + 16 * v));
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++)
            _mm512_storeu_ps(acc + i + 16 * v, a[v]);
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : lane_mask((int)(n - i));
        __m512 a = _mm512_maskz_loadu_ps(m, acc + i);
        for (int32_t r = 0; r < n_rows; r++)
            a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, rows[r] + i));
        _mm512_mask_storeu_ps(acc + i, m, a);
    }
}

/* 16 columns of up to 16 rows a pass, transposed in registers: pairs of rows interleaved
 * (unpack ps), then pairs of pairs (unpack pd), which leaves 128-bit lanes of four rows of one
 * column; two rounds of lane shuffles gather a column's four lanes. Missing rows load as zero
 * and are masked off the stores; missing columns are not stored. */
static void cols16_avx512(const float *src, int32_t rows, int32_t cols, float *dst,
                          int64_t dst_stride)
{
    const __mmask16 rmask = lane_mask(rows);
    for (int32_t c0 = 0; c0 < cols; c0 += 16) {
        const int32_t nc = cols - c0 < 16 ? cols - c0 : 16;
        const __mmask16 cmask = lane_mask(nc);
        __m512 r[16], t[16], u[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(cmask, src + (size_t)i * cols + c0) : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        /* u[4j + c], lane L: rows 4j..4j+3 of column 4L + c */
#pragma GCC unroll 4
        for (int j = 0; j < 16; j += 4) {
            const __m512d a = _mm512_castps_pd(t[j]), b = _mm512_castps_pd(t[j + 1]);
            const __m512d c = _mm512_castps_pd(t[j + 2]), d = _mm512_castps_pd(t[j + 3]);
            u[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            u[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            u[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            u[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
            const __m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
            const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
            const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
            const __m512 col[4] = {_mm512_shuffle_f32x4(v0, v2, 0x88), _mm512_shuffle_f32x4(v1, v3, 0x88),
                                   _mm512_shuffle_f32x4(v0, v2, 0xdd), _mm512_shuffle_f32x4(v1, v3, 0xdd)};
#pragma GCC unroll 4
            for (int L = 0; L < 4; L++)
                if (4 * L + c < nc)
                    _mm512_mask_storeu_ps(dst + (c0 + 4 * L + c) * dst_stride, rmask, col[L]);
        }
    }
}

void skv_kernels_init_avx512(skv_kernels *k)
{
    k->score_f32 = (skv_score_kernel){pack_size_avx512, pack_avx512, score_f32_avx512, SKV_F32};
    k->bf16_to_f32 = bf16_to_f32_avx512;
    k->fp8_to_f32 = fp8_to_f32_avx512;
    k->filter = filter_avx512;
    k->key_range = key_range_avx512;
    k->in_range = in_range_avx512;
    k->keep = keep_avx512;
    k->head_dots = head_dots_avx512;
    k->cols16 = cols16_avx512;
    k->add_rows = add_rows_avx512;
}
