/* The AVX-512 vector vocabulary of attn_simd.h, shared by the avx512 and avx512bf16 files. */
#ifndef SKV_ATTN_VEC_AVX512_H
#define SKV_ATTN_VEC_AVX512_H

#include <immintrin.h>

#define VEC __m512
#define LANES 16
#define QK_NH 4
#define PV_NH 4
#define PV_CV 4
#define VZERO() _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VLOADN(p, n) _mm512_maskz_loadu_ps(attn_mask16(n), p)
#define VSTOREN(p, v, n) _mm512_mask_storeu_ps(p, attn_mask16(n), v)
#define VLOADH(p) attn_widen16(_mm256_loadu_si256((const __m256i *)(p)))
#define VLOADHN(p, n) attn_widen16(_mm256_maskz_loadu_epi16(attn_mask16(n), p))
#define VADD(a, b) _mm512_add_ps(a, b)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VMAX(a, b) _mm512_max_ps(a, b)
#define VMIN(a, b) _mm512_min_ps(a, b)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VFIRST(v) _mm512_cvtss_f32(v)
#define VBAD(v)                                                                               \
    (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) |                                                 \
     _mm512_cmp_ps_mask(v, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ))
#define VHMAX(v) _mm512_reduce_max_ps(v)
#define VHSUM(v) _mm512_reduce_add_ps(v)
#define VROUND(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define VPOW2(n)                                                                              \
    _mm512_castsi512_ps(_mm512_slli_epi32(                                                    \
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23))
#define VKEEP_GE(r, x, c) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, c, _CMP_GE_OQ), r)
#define REDUCE4(a0, a1, a2, a3) attn_reduce4_avx512(a0, a1, a2, a3)

static inline __mmask16 attn_mask16(int n) { return (__mmask16)((1u << n) - 1); }

/* 16 bf16 values to f32: the bits move to the high half (exact). */
static inline __m512 attn_widen16(__m256i h)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Four 16-lane sums by one tree each: (l0+l2)+(l1+l3) within each 128-bit quarter, then
 * (q0+q1)+(q2+q3). */
static inline __m128 attn_reduce4_avx512(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
    const __m512 x = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 y = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    /* per quarter: x = [a0 a1 a0 a1] partials, y likewise; pair them into [a0 a1 a2 a3] */
    const __m512 z = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y))));
    const __m512 t = _mm512_add_ps(z, _mm512_shuffle_f32x4(z, z, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m512 u = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm512_castps512_ps128(u);
}

/* bf16 -> f32 by widening the bits (exact). */
void skv_attn_widen_avx512(const uint16_t *src, float *dst, int64_t n);

#endif
