/* AVX2 + FMA attention kernels: 8 floats per vector, 2-head x 4-row score tiles and 4-head x
 * 16-column weighted-sum tiles (16 ymm registers); bf16 rows widened in registers. Compiled
 * with -mavx2 -mfma -mf16c. */
#include <immintrin.h>
#include <string.h>

#include "attention/attn.h"

#define VEC __m256
#define LANES 8
#define QK_NH 2
#define PV_NH 4
#define PV_CV 2
#define VZERO() _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VLOADN(p, n) _mm256_maskload_ps(p, lane_mask(n))
#define VSTOREN(p, v, n) _mm256_maskstore_ps(p, lane_mask(n), v)
#define VLOADH(p) widen8(_mm_loadu_si128((const __m128i *)(p)))
#define VLOADHN(p, n) loadh_n(p, n)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VSUB(a, b) _mm256_sub_ps(a, b)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VMAX(a, b) _mm256_max_ps(a, b)
#define VMIN(a, b) _mm256_min_ps(a, b)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VFIRST(v) _mm256_cvtss_f32(v)
#define VBAD(v)                                                                               \
    _mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q),                        \
                                    _mm256_cmp_ps(v, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ)))
#define VHMAX(v) hmax256(v)
#define VHSUM(v) hsum256(v)
#define VROUND(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define VPOW2(n)                                                                              \
    _mm256_castsi256_ps(_mm256_slli_epi32(                                                    \
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23))
#define VKEEP_GE(r, x, c) _mm256_and_ps(r, _mm256_cmp_ps(x, c, _CMP_GE_OQ))
#define REDUCE4(a0, a1, a2, a3) reduce4(a0, a1, a2, a3)

static inline __m256i lane_mask(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256 widen8(__m128i h)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* n < 8 bf16 values (no 16-bit masked load in AVX2): through a zeroed copy. */
static inline __m256 loadh_n(const uint16_t *p, int n)
{
    uint16_t tmp[8] = {0};
    memcpy(tmp, p, (size_t)n * sizeof *p);
    return widen8(_mm_loadu_si128((const __m128i *)tmp));
}

static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Four 8-lane sums by one tree each: ((l0+l1)+(l2+l3)) in each half, then low + high. */
static inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    const __m256 g = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(g), _mm256_extractf128_ps(g, 1));
}

#include "attention/attn_simd.h"

DEFINE_QK(qk_f32, qk_tile_f32, 0)
DEFINE_BLOCK(block_f32, qk_f32, 0)
DEFINE_QK(qk_bf16, qk_tile_f32, 1)
DEFINE_BLOCK(block_bf16, qk_bf16, 1)

static void widen_avx2(const uint16_t *src, float *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, VLOADH(src + i));
    for (; i < n; i++)
        dst[i] = skv_bf16_to_f32(src[i]);
}

const attn_kernels skv_attn_kernels_avx2 = {block_f32, block_bf16, 0, widen_avx2, "avx2"};
