/* Scalar dtype conversions and the fp8 quantiser. Narrowing works on the f32 bit pattern with
 * integer rounding, so results do not depend on the floating-point environment. */
#include <math.h>
#include <string.h>

#include "core/core.h"

static inline uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* m >> s rounded to nearest, ties to even (s in 1..31; 0 when s >= 32). */
static inline uint32_t shift_rne(uint32_t m, uint32_t s)
{
    if (s >= 32)
        return 0;
    uint32_t q = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
    return q + (rem > half || (rem == half && (q & 1)));
}

size_t skv_dtype_size(skv_dtype t)
{
    switch (t) {
    case SKV_F32: return 4;
    case SKV_BF16:
    case SKV_F16: return 2;
    case SKV_FP8_E4M3: return 1;
    case SKV_MXFP4_E2M1: /* half a byte: see skv_dtype */
    case SKV_Q8_0: return 0; /* 34 bytes per 32 */
    }
    return 0;
}

float skv_bf16_to_f32(uint16_t x) { return skv_bf16_bits_f32(x); }

uint16_t skv_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet the NaN, keep sign and payload top */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float skv_f16_to_f32(uint16_t x)
{
    const uint32_t sign = (uint32_t)(x & 0x8000) << 16, e = (x >> 10) & 31, m = x & 0x3ff;
    if (e == 0) {
        float v = (float)m * 0x1p-24f; /* exact: m < 2^10 */
        return sign ? -v : v;
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t skv_f32_to_f16(float x)
{
    uint32_t u = f32_bits(x);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u)
        return sign | 0x7e00 | (uint16_t)((u >> 13) & 0x1ff);
    if (u >= 0x477ff000u) /* >= 65520 rounds past 65504 */
        return sign | 0x7c00;
    if (u < 0x38800000u) { /* below 2^-14: an f16 subnormal (or zero) */
        const uint32_t e = u >> 23;
        if (e == 0)
            return sign;
        return sign | (uint16_t)shift_rne((u & 0x7fffff) | 0x800000, 126 - e);
    }
    return sign | (uint16_t)((u - 0x38000000u + 0xfffu + ((u >> 13) & 1)) >> 13);
}

/* bf16 bits of every e4m3 value (exact): normals rebias the exponent by +120, subnormals
 * m * 2^-9 are written out, S.1111.111 is NaN. */
#define FP8_SUB(m) ((m) == 0 ? 0 : (m) == 1 ? 0x3b00 : (m) == 2 ? 0x3b80 : (m) == 3 ? 0x3bc0 : \
                    (m) == 4 ? 0x3c00 : (m) == 5 ? 0x3c20 : (m) == 6 ? 0x3c40 : 0x3c60)
#define FP8_MAG(m) ((m) == 127 ? 0x7fc0 : ((m) >> 3) ? ((((m) >> 3) + 120) << 7) | (((m) & 7) << 4) \
                                                   : FP8_SUB(m))
#define FP8_BF16(x) ((((x) & 0x80) << 8) | FP8_MAG((x) & 0x7f))
#define R8(b) FP8_BF16(b), FP8_BF16(b + 1), FP8_BF16(b + 2), FP8_BF16(b + 3), FP8_BF16(b + 4), \
              FP8_BF16(b + 5), FP8_BF16(b + 6), FP8_BF16(b + 7)
#define R64(b) R8(b), R8(b + 8), R8(b + 16), R8(b + 24), R8(b + 32), R8(b + 40), R8(b + 48), R8(b + 56)
const uint16_t skv_fp8_bf16_lut[256] __attribute__((aligned(64))) = {R64(0), R64(64), R64(128), R64(192)};

float skv_fp8_to_f32(uint8_t x) { return skv_bf16_to_f32(skv_fp8_bf16_lut[x]); }

uint8_t skv_f32_to_fp8(float x)
{
    uint32_t u = f32_bits(x);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u)
        return sign | 0x7f;
    if (u >= 0x43e00000u) /* |x| >= 448 (infinity too): saturate */
        return sign | 0x7e;
    if (u < 0x3c800000u) { /* below 2^-6: subnormal (or zero) */
        const uint32_t e = u >> 23;
        if (e == 0)
            return sign;
        return sign | (uint8_t)shift_rne((u & 0x7fffff) | 0x800000, 141 - e);
    }
    return sign | (uint8_t)(((u + 0x7ffffu + ((u >> 20) & 1)) >> 20) - (120u << 3));
}

static float load_f32(skv_dtype t, const void *src, int64_t i)
{
    switch (t) {
    case SKV_F32: return ((const float *)src)[i];
    case SKV_BF16: return skv_bf16_to_f32(((const uint16_t *)src)[i]);
    case SKV_F16: return skv_f16_to_f32(((const uint16_t *)src)[i]);
    case SKV_FP8_E4M3: return skv_fp8_to_f32(((const uint8_t *)src)[i]);
    case SKV_MXFP4_E2M1:
    case SKV_Q8_0: break; /* refused by skv_convert */
    }
    return 0;
}

static void store_f32(skv_dtype t, void *dst, int64_t i, float v)
{
    switch (t) {
    case SKV_F32: ((float *)dst)[i] = v; break;
    case SKV_BF16: ((uint16_t *)dst)[i] = skv_f32_to_bf16(v); break;
    case SKV_F16: ((uint16_t *)dst)[i] = skv_f32_to_f16(v); break;
    case SKV_FP8_E4M3: ((uint8_t *)dst)[i] = skv_f32_to_fp8(v); break;
    case SKV_MXFP4_E2M1:
    case SKV_Q8_0: break; /* refused by skv_convert */
    }
}

skv_status skv_convert(skv_dtype dst_type, void *dst, skv_dtype src_type, const void *src,
                       int64_t n)
{
    if (n < 0 || skv_dtype_size(dst_type) == 0 || skv_dtype_size(src_type) == 0)
        return SKV_ERR_INVALID_ARG;
    if (n == 0)
        return SKV_OK;
    if (!dst || !src)
        return SKV_ERR_INVALID_ARG;
    if (dst_type == src_type) {
        memcpy(dst, src, (size_t)n * skv_dtype_size(src_type));
        return SKV_OK;
    }
    for (int64_t i = 0; i < n; i++)
        store_f32(dst_type, dst, i, load_f32(src_type, src, i));
    return SKV_OK;
}

/* The scale for one block, as DeepSeek's act_quant computes it (or vLLM, dividing). */
static float fp8_block_scale(float amax, uint32_t flags)
{
    amax = fmaxf(amax, 1e-4f);
    const float s = flags & SKV_QUANT_DIV_SCALE ? amax / 448.0f : amax * (1.0f / 448.0f);
    if (!(flags & SKV_QUANT_POW2_SCALE))
        return s;
    const uint32_t b = f32_bits(s); /* 2^ceil(log2 s); s is normal here */
    const int32_t e = (int32_t)((b >> 23) & 0xff) - 127 + ((b & 0x7fffff) != 0);
    return bits_f32((uint32_t)(e + 127) << 23);
}

skv_status skv_quantize_fp8_blocks(const float *x, int64_t n_rows, int32_t n_cols, int64_t x_stride,
                                   int32_t block, uint32_t flags, uint8_t *out, float *scales)
{
    const uint32_t known = SKV_QUANT_POW2_SCALE | SKV_QUANT_DIV_SCALE;
    if (n_rows < 0 || n_cols < 1 || x_stride < n_cols || block < 1 || (flags & ~known))
        return SKV_ERR_INVALID_ARG;
    if (n_rows == 0)
        return SKV_OK;
    if (!x || !out || !scales)
        return SKV_ERR_INVALID_ARG;
    const int32_t nb = (int32_t)(((int64_t)n_cols + block - 1) / block);
    for (int64_t r = 0; r < n_rows; r++) {
        const float *row = x + r * x_stride;
        for (int32_t b = 0; b < nb; b++) {
            const int32_t c0 = b * block, c1 = n_cols - c0 < block ? n_cols : c0 + block;
            float amax = 0;
            for (int32_t c = c0; c < c1; c++) {
                const float a = fabsf(row[c]);
                if (a > amax && a != INFINITY) /* NaN compares false */
                    amax = a;
            }
            const float s = fp8_block_scale(amax, flags);
            scales[r * nb + b] = s;
            for (int32_t c = c0; c < c1; c++)
                out[r * n_cols + c] = skv_f32_to_fp8(row[c] / s);
        }
    }
    return SKV_OK;
}

skv_status skv_quantize_fp8(const float *x, int64_t n_rows, int32_t n_cols, int64_t x_stride,
                            uint32_t flags, uint8_t *out, float *scales)
{
    return skv_quantize_fp8_blocks(x, n_rows, n_cols, x_stride, n_cols, flags, out, scales);
}
