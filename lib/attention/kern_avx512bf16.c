/* AVX-512-BF16 attention kernels: bf16 scores with vdpbf16ps (32 dims per instruction; the
 * products of bf16 values are exact in f32, only the sums round; the instruction reads bf16
 * subnormals as zero and flushes subnormal sums to zero), the weights and weighted sums
 * in f32 as on AVX-512 (V widened in registers). Compiled with the AVX-512 flags plus
 * -mavx512bf16 -mavx512vbmi. */
#include <immintrin.h>

#include "attention/attn.h"
#include "attention/vec_avx512.h"
#include "attention/attn_simd.h"

static inline __mmask32 mask32(int n) { return n >= 32 ? ~(__mmask32)0 : ((__mmask32)1 << n) - 1; }

/* As qk_tile_f32, on bf16 q and K rows; a partial last step reads zeros past D. */
SKV_ALWAYS_INLINE void qk_tile_bf16(const attn_state *st, int NH, int h0, const void *const *k4,
                                    float *s, int B16)
{
    (void)B16;
    const int32_t D = st->k_dim;
    const uint16_t *q[QK_NH];
    VEC acc[QK_NH][4];
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++) {
        q[h] = st->qb + (size_t)(h0 + h) * D;
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            acc[h][r] = VZERO();
    }
    for (int32_t d = 0; d < D; d += 32) {
        const __mmask32 m = mask32(D - d);
        __m512bh kv[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            kv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)k4[r] + d);
#pragma GCC unroll 4
        for (int h = 0; h < NH; h++) {
            const __m512bh qv = (__m512bh)_mm512_maskz_loadu_epi16(m, q[h] + d);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[h][r] = _mm512_dpbf16_ps(acc[h][r], qv, kv[r]);
        }
    }
    const __m128 sc = _mm_set1_ps(st->scale);
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++)
        _mm_storeu_ps(s + (size_t)h * ATTN_BR,
                      _mm_mul_ps(REDUCE4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]), sc));
}

DEFINE_QK(qk_f32, qk_tile_f32, 0)
DEFINE_BLOCK(block_f32, qk_f32, 0)
DEFINE_QK(qk_bf16, qk_tile_bf16, 1)
DEFINE_BLOCK(block_bf16, qk_bf16, 1)

const attn_kernels skv_attn_kernels_avx512bf16 = {block_f32, block_bf16, 1, skv_attn_widen_avx512,
                                                  "avx512bf16"};
