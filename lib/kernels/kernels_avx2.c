/* AVX2 + FMA kernels: f32 scoring with 8 heads per vector and the top-k filter. Compiled with
 * -mavx2 -mfma -mf16c. */
#include <immintrin.h>
#include <string.h>

#include "core/core.h"

#define VEC __m256
#define LANES 8
#define HV_MAX 2
#define G_MAX 8
#define N_FOR_HV(hv) ((hv) == 2 ? 6 : 12)
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSET1(x) _mm256_set1_ps(x)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VBCASTG(p, g) bcast_g(p, g)
#define VGROUP(x, g) group_sum(x, g)
/* vmaxps returns its second source when either is NaN: max(0, NaN) = NaN. */
#define VRELU(x, v, active, g) _mm256_and_ps(_mm256_max_ps(_mm256_setzero_ps(), x), lead_mask((active) - (v) * LANES, g))
#define VHSUM(v) hsum256(v)

/* All-ones on the first lane of each group of g among the first n lanes. */
static inline __m256 lead_mask(int n, int g)
{
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), iota);
    const __m256i lead = _mm256_cmpeq_epi32(_mm256_and_si256(iota, _mm256_set1_epi32(g - 1)),
                                            _mm256_setzero_si256());
    return _mm256_castsi256_ps(_mm256_and_si256(in, lead));
}


static inline __attribute__((always_inline)) __m256 bcast_g(const float *p, int g)
{
    switch (g) {
    case 1: return _mm256_broadcast_ss(p);
    case 2: { double x; memcpy(&x, p, 8); return _mm256_castpd_ps(_mm256_set1_pd(x)); }
    case 4: return _mm256_broadcast_ps((const __m128 *)p);
    default: return _mm256_loadu_ps(p);
    }
}

static inline __attribute__((always_inline)) __m256 group_sum(__m256 x, int g)
{
    if (g >= 2)
        x = _mm256_add_ps(x, _mm256_permute_ps(x, 0xB1));
    if (g >= 4)
        x = _mm256_add_ps(x, _mm256_permute_ps(x, 0x4E));
    if (g >= 8)
        x = _mm256_add_ps(x, _mm256_permute2f128_ps(x, x, 0x01));
    return x;
}

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#include "kernels/score_simd.h"

DEFINE_SCORE_KERNEL(score_f32_avx2, tile_f32, float)

static size_t pack_size_avx2(int32_t H, int32_t D)
{
    return skv_qpack_size(H, D, LANES, HV_MAX, SKV_F32);
}

static void pack_avx2(void *dst, const skv_qpack_args *a)
{
    skv_qpack_fill(dst, a, LANES, HV_MAX, SKV_F32);
}

/* Signed compare of (key ^ 0x80000000) orders like the unsigned keys. */
static int32_t filter_avx2(const float *s, int32_t n, int32_t base, uint32_t thr, int all,
                           uint32_t *keys, int32_t *idx)
{
    if (all) { /* before any threshold: every score, in order */
        for (int32_t j = 0; j < n; j++) {
            keys[j] = skv_score_key(s[j]);
            idx[j] = base + j;
        }
        return n;
    }
    const __m256i vthr = _mm256_set1_epi32((int)(thr ^ 0x80000000u));
    int32_t m = 0, j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 v = _mm256_add_ps(_mm256_loadu_ps(s + j), _mm256_setzero_ps());
        const __m256i u = _mm256_castps_si256(v);
        const __m256i skey = _mm256_xor_si256(u, _mm256_srli_epi32(_mm256_srai_epi32(u, 31), 1));
        const __m256 ord = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
        int take = _mm256_movemask_ps(_mm256_and_ps(
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(skey, vthr)), ord));
        while (take) {
            const int b = __builtin_ctz((unsigned)take);
            take &= take - 1;
            keys[m] = skv_score_key(s[j + b]);
            idx[m] = base + j + b;
            m++;
        }
    }
    for (; j < n; j++) {
        const uint32_t key = skv_score_key(s[j]);
        if (key > thr) {
            keys[m] = key;
            idx[m] = base + j;
            m++;
        }
    }
    return m;
}

static void bf16_to_f32_avx2(const void *src, void *dst, int64_t n)
{
    const uint16_t *s = src;
    float *d = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++)
        d[i] = skv_bf16_to_f32(s[i]);
}

/* 8 heads per vector, four vectors per pass; mul then add (not FMA): the scalar kernel's bits. */
static void head_dots_one_avx2(const float *qt, const float *x, int32_t H, int32_t D, float *dots)
{
    int32_t h0 = 0;
    for (; h0 + 32 <= H; h0 += 32) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int32_t d = 0; d < D; d++) {
            const __m256 xd = _mm256_set1_ps(x[d]);
            const float *row = qt + (size_t)d * H + h0;
            for (int v = 0; v < 4; v++)
                acc[v] = _mm256_add_ps(acc[v], _mm256_mul_ps(_mm256_loadu_ps(row + 8 * v), xd));
        }
        for (int v = 0; v < 4; v++)
            _mm256_storeu_ps(dots + h0 + 8 * v, acc[v]);
    }
    for (; h0 + 8 <= H; h0 += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int32_t d = 0; d < D; d++)
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(qt + (size_t)d * H + h0), _mm256_set1_ps(x[d])));
        _mm256_storeu_ps(dots + h0, acc);
    }
    for (; h0 < H; h0++) {
        float acc = 0;
        for (int32_t d = 0; d < D; d++) {
            const float p = qt[(size_t)d * H + h0] * x[d];
            acc += p;
        }
        dots[h0] = acc;
    }
}

static void head_dots_avx2(const float *qt, const float *x, int32_t n, int32_t H, int32_t D,
                           float *dots)
{
    for (int32_t i = 0; i < n; i++)
        head_dots_one_avx2(qt, x + (size_t)i * D, H, D, dots + (size_t)i * H);
}

/* 64 floats at a time in registers over all the rows. */
static void add_rows_avx2(float *acc, const float *const *rows, int32_t n_rows, int64_t n)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m256 a[8];
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++)
            a[v] = _mm256_loadu_ps(acc + i + 8 * v);
        for (int32_t r = 0; r < n_rows; r++)
#pragma GCC unroll 8
            for (int v = 0; v < 8; v++)
                a[v] = _mm256_add_ps(a[v], _mm256_loadu_ps(rows[r] + i + 8 * v));
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++)
            _mm256_storeu_ps(acc + i + 8 * v, a[v]);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(acc + i);
        for (int32_t r = 0; r < n_rows; r++)
            a = _mm256_add_ps(a, _mm256_loadu_ps(rows[r] + i));
        _mm256_storeu_ps(acc + i, a);
    }
    for (; i < n; i++)
        for (int32_t r = 0; r < n_rows; r++)
            acc[i] += rows[r][i];
}

void skv_kernels_init_avx2(skv_kernels *k)
{
    k->score_f32 = (skv_score_kernel){pack_size_avx2, pack_avx2, score_f32_avx2, SKV_F32};
    k->bf16_to_f32 = bf16_to_f32_avx2;
    k->filter = filter_avx2;
    k->head_dots = head_dots_avx2;
    k->add_rows = add_rows_avx2;
}
