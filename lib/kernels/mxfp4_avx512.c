/* MXFP4 blocks to f32 or bf16 with AVX-512 (F, BW; kernels.h), for the AVX-512 and AVX-512-BF16
 * levels. A block is one 16-byte load widened to 16 dwords; one shift and mask leave its 32
 * codes as words in order (word 2i: byte i's low nibble, 2i + 1: its high nibble).
 *   f32: the 16-entry E2M1 table is one vpermps (sign included), then the multiply by the
 *        block's scale, as the scalar code does (the same bits).
 *   bf16: the table of the codes' bf16 words is one vpermw; the scale 2^e is then added to the
 *        exponent field of the non-zero codes. That is the f32 product's upper half exactly
 *        while every product is a normal number: magnitudes 0.5 .. 6 times 2^e stay in
 *        [2^-126, 2^128) for scale bytes 2 .. 252. Other bytes (subnormal or infinite products,
 *        byte 255's NaN) take the f32 product and keep its upper half, as the scalar code. */
#include <immintrin.h>

#include "core/core.h"

/* bf16 words of the 16 codes (the upper halves of skv_e2m1_f32_lut), then vpermw's unused
 * upper half. */
static const uint16_t e2m1_bf16[32] __attribute__((aligned(64))) = {
    0x0000, 0x3f00, 0x3f80, 0x3fc0, 0x4000, 0x4040, 0x4080, 0x40c0,
    0x8000, 0xbf00, 0xbf80, 0xbfc0, 0xc000, 0xc040, 0xc080, 0xc0c0};

/* The 32 codes of the block at p as words, in order. */
static inline __attribute__((always_inline)) __m512i codes32(const uint8_t *p)
{
    const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm512_and_si512(_mm512_or_si512(x, _mm512_slli_epi32(x, 12)),
                            _mm512_set1_epi32(0x000f000f));
}

/* The block's 32 values as f32: codes (words) widened to dwords, looked up, scaled. */
static inline __attribute__((always_inline)) void block_f32(__m512i codes, uint8_t sbyte,
                                                            __m512 lut, __m512 *v0, __m512 *v1)
{
    const __m512 s = _mm512_set1_ps(skv_e8m0_f32(sbyte));
    const __m512i c0 = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(codes));
    const __m512i c1 = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(codes, 1));
    *v0 = _mm512_mul_ps(_mm512_permutexvar_ps(c0, lut), s);
    *v1 = _mm512_mul_ps(_mm512_permutexvar_ps(c1, lut), s);
}

static void mxfp4_to_f32_avx512(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    const __m512 lut = _mm512_load_ps(skv_e2m1_f32_lut);
    float *d = dst;
    for (int64_t b = 0; b < n; b++) {
        __m512 v0, v1;
        block_f32(codes32(packed + b * 16), scales[b], lut, &v0, &v1);
        _mm512_storeu_ps(d + b * 32, v0);
        _mm512_storeu_ps(d + b * 32 + 16, v1);
    }
}

static void mxfp4_to_bf16_avx512(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    const __m512i tab = _mm512_load_si512(e2m1_bf16);
    const __m512 lut = _mm512_load_ps(skv_e2m1_f32_lut);
    /* word i of the result: the upper half of f32 lane i (0..15 from the first vector) */
    const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35,
                                         33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    uint16_t *d = dst;
    for (int64_t b = 0; b < n; b++) {
        const __m512i codes = codes32(packed + b * 16);
        const uint8_t sb = scales[b];
        __m512i w;
        if ((uint8_t)(sb - 2) <= 250) { /* every product normal: add e to the exponents */
            const __m512i e = _mm512_set1_epi16((int16_t)(((int)sb - 127) * 128));
            const __mmask32 nz = _mm512_test_epi16_mask(codes, _mm512_set1_epi16(7));
            w = _mm512_permutexvar_epi16(codes, tab);
            w = _mm512_mask_add_epi16(w, nz, w, e);
        } else {
            __m512 v0, v1;
            block_f32(codes, sb, lut, &v0, &v1);
            w = _mm512_permutex2var_epi16(_mm512_castps_si512(v0), odd, _mm512_castps_si512(v1));
        }
        _mm512_storeu_si512(d + b * 32, w);
    }
}

void skv_mxfp4_init_avx512(skv_kernels *k)
{
    k->mxfp4_to_f32 = mxfp4_to_f32_avx512;
    k->mxfp4_to_bf16 = mxfp4_to_bf16_avx512;
}
