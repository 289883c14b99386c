/* MXFP4 (OCP Microscaling, E2M1 values with one UE8M0 scale per 32): the element table, the
 * quantiser and dequantiser. Packing follows the engines' fp4 indexer caches (vLLM, SGLang,
 * DeepGEMM): value 2i in the low nibble of byte i, 2i + 1 in the high nibble. */
#include <math.h>
#include <string.h>

#include "core/core.h"

/* E2M1: bit 3 the sign, then two exponent bits and one mantissa bit (bias 1, no inf/NaN). */
const float skv_e2m1_f32_lut[16] __attribute__((aligned(64))) = {
    0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float skv_e2m1_to_f32(uint8_t code) { return skv_e2m1_f32_lut[code & 15]; }

/* Round to nearest on the E2M1 grid, ties to the even code, saturating at 6; |x| in units of
 * the block scale. Crossing into an odd code needs more than the midpoint, into an even code
 * the midpoint itself. */
static uint8_t e2m1_code(float x)
{
    const float a = fabsf(x);
    const uint8_t sign = signbit(x) ? 8 : 0;
    uint8_t m = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) +
                (a >= 3.5f) + (a > 5.0f);
    return sign | m;
}

uint8_t skv_f32_to_e2m1(float x) { return x != x ? 0 : e2m1_code(x); }

/* The block's scale exponent: ceil(log2(amax / 6)) of the f32 quotient, in [-127, 127]
 * (biased: 0..254). amax 0 gives the smallest scale. */
static uint8_t mx_scale_byte(float amax)
{
    const float s = amax / 6.0f;
    uint32_t b;
    memcpy(&b, &s, 4);
    const int32_t be = (int32_t)(b >> 23), mant = (int32_t)(b & 0x7fffff);
    int32_t e; /* unbiased ceil(log2 s) */
    if (be == 0) /* zero or subnormal: at most 2^-126, rounded up */
        e = mant > 0x400000 ? -126 : -127; /* above 2^-127 */
    else
        e = be - 127 + (mant != 0);
    e = e < -127 ? -127 : e > 127 ? 127 : e;
    return (uint8_t)(e + 127);
}

skv_status skv_quantize_mxfp4(const float *x, int64_t n_rows, int32_t n_cols, int64_t x_stride,
                              uint8_t *out, uint8_t *scales)
{
    if (n_rows < 0 || n_cols < 32 || n_cols % 32 || x_stride < n_cols)
        return SKV_ERR_INVALID_ARG;
    if (n_rows == 0)
        return SKV_OK;
    if (!x || !out || !scales)
        return SKV_ERR_INVALID_ARG;
    const int32_t nb = n_cols / 32;
    for (int64_t r = 0; r < n_rows; r++) {
        const float *row = x + r * x_stride;
        uint8_t *o = out + (size_t)r * (size_t)(n_cols / 2);
        for (int32_t b = 0; b < nb; b++) {
            const float *v = row + b * 32;
            float amax = 0;
            int nan = 0;
            for (int32_t i = 0; i < 32; i++) {
                const float a = fabsf(v[i]);
                nan |= a != a;
                if (a > amax && a != INFINITY)
                    amax = a;
            }
            const uint8_t sb = nan ? 255 : mx_scale_byte(amax);
            scales[r * nb + b] = sb;
            /* x * 2^-e is exact (a power of two; e >= -127 keeps 2^-e finite) */
            const float inv = nan ? 0.0f : ldexpf(1.0f, 127 - (int32_t)sb);
            for (int32_t i = 0; i < 32; i += 2) {
                const uint8_t lo = nan ? 0 : e2m1_code(v[i] * inv);
                const uint8_t hi = nan ? 0 : e2m1_code(v[i + 1] * inv);
                o[b * 16 + i / 2] = (uint8_t)(lo | hi << 4);
            }
        }
    }
    return SKV_OK;
}

skv_status skv_dequantize_mxfp4(const uint8_t *packed, const uint8_t *scales, int64_t n_rows,
                                int32_t n_cols, float *out)
{
    if (n_rows < 0 || n_cols < 32 || n_cols % 32)
        return SKV_ERR_INVALID_ARG;
    if (n_rows == 0)
        return SKV_OK;
    if (!packed || !scales || !out)
        return SKV_ERR_INVALID_ARG;
    for (int64_t r = 0; r < n_rows; r++)
        skv_mxfp4_row_f32(packed + (size_t)r * (size_t)(n_cols / 2),
                          scales + (size_t)r * (size_t)(n_cols / 32), n_cols,
                          out + (size_t)r * (size_t)n_cols);
    return SKV_OK;
}

void skv_mxfp4_row_f32(const uint8_t *packed, const uint8_t *scales, int32_t D, float *out)
{
    for (int32_t b = 0; b < D / 32; b++) {
        const float s = skv_e8m0_f32(scales[b]);
        for (int32_t i = 0; i < 16; i++) {
            const uint8_t byte = packed[b * 16 + i];
            out[b * 32 + 2 * i] = skv_e2m1_f32_lut[byte & 15] * s;
            out[b * 32 + 2 * i + 1] = skv_e2m1_f32_lut[byte >> 4] * s;
        }
    }
}
