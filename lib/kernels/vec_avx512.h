/* 16-lane vector operations of the AVX-512 score kernels (see score_simd.h). */
#ifndef SKV_VEC_AVX512_H
#define SKV_VEC_AVX512_H

#include <immintrin.h>
#include <string.h>

#define VEC __m512
#define LANES 16
#define HV_MAX 4
#define G_MAX 16
#define N_FOR_HV(hv) ((hv) == 4 ? 4 : (hv) == 1 ? 16 : 8) /* multiples of 4 (REDUCE4); one head vector needs 16 chains to cover the FMA latency */
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSET1(x) _mm512_set1_ps(x)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VBCASTG(p, g) bcast_g(p, g)
#define VGROUP(x, g) group_sum(x, g)
/* vmaxps returns its second source when either is NaN: max(0, NaN) = NaN. */
#define VRELU(x, v, active, g) _mm512_maskz_max_ps(lead_mask((active) - (v) * LANES, g), _mm512_setzero_ps(), x)
#define VHSUM(v) _mm512_reduce_add_ps(v)

/* The first lane of each group of g among the first n lanes. */
static inline __mmask16 lead_mask(int n, int g)
{
    const __mmask16 leads = g == 1 ? 0xffff : g == 2 ? 0x5555 : g == 4 ? 0x1111 : g == 8 ? 0x0101 : 0x0001;
    return (n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1)) & leads;
}

/* g consecutive floats (32-bit units) of p, repeated. */
static inline __attribute__((always_inline)) __m512 bcast_g(const void *p, int g)
{
    switch (g) {
    case 1: { float x; memcpy(&x, p, 4); return _mm512_set1_ps(x); }
    case 2: { double x; memcpy(&x, p, 8); return _mm512_castpd_ps(_mm512_set1_pd(x)); }
    case 4: return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
    case 8: return _mm512_broadcast_f32x8(_mm256_loadu_ps(p));
    default: return _mm512_loadu_ps(p);
    }
}

/* Every lane: the sum of its group of g lanes (the same tree for every group). */
static inline __attribute__((always_inline)) __m512 group_sum(__m512 x, int g)
{
    if (g >= 2)
        x = _mm512_add_ps(x, _mm512_permute_ps(x, 0xB1));
    if (g >= 4)
        x = _mm512_add_ps(x, _mm512_permute_ps(x, 0x4E));
    if (g >= 8)
        x = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0xB1));
    if (g >= 16)
        x = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0x4E));
    return x;
}

#endif
