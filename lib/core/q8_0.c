/* ggml's Q8_0 (common.h): the quantiser with ggml's rounding (quantize_row_q8_0_ref in
 * ggml/src/ggml-quants.c), and the exact dequantisation. */
#include <math.h>
#include <string.h>

#include "core/core.h"

/* One block of 32 values. For finite values this is ggml's arithmetic step for step:
 * amax = max |x|; d = amax / 127 (f32); id = d ? 1 / d : 0; the scale is d rounded to f16
 * (nearest, ties to even); code = roundf(x * id) (half away from zero), from the f32 d, not
 * the rounded scale. What ggml leaves undefined (a float outside int8 converted) is pinned:
 * codes clamp to +-127 (only reachable when 1 / d overflows, amax below ~3.7e-37), infinities
 * take +-127 and do not enter amax, and a NaN makes the scale NaN and the codes 0. */
static void q8_0_block(const float *x, uint8_t *out)
{
    float amax = 0.0f;
    int nan = 0;
    for (int j = 0; j < SKV_Q8_0_BLOCK; j++) {
        const float a = fabsf(x[j]);
        nan |= a != a;
        if (a > amax && a != INFINITY)
            amax = a;
    }
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t h = nan ? 0x7e00 : skv_f32_to_f16(d);
    memcpy(out, &h, 2);
    for (int j = 0; j < SKV_Q8_0_BLOCK; j++) {
        float c = x[j] == INFINITY ? 127.0f : x[j] == -INFINITY ? -127.0f : roundf(x[j] * id);
        if (nan || c != c)
            c = 0.0f;
        c = c > 127.0f ? 127.0f : c < -127.0f ? -127.0f : c;
        out[2 + j] = (uint8_t)(int8_t)c;
    }
}

skv_status skv_quantize_q8_0(const float *x, int64_t n_rows, int32_t n_cols, int64_t x_stride,
                             void *out)
{
    if (n_rows < 0 || n_cols < SKV_Q8_0_BLOCK || n_cols % SKV_Q8_0_BLOCK || x_stride < n_cols)
        return SKV_ERR_INVALID_ARG;
    if (n_rows == 0)
        return SKV_OK;
    if (!x || !out)
        return SKV_ERR_INVALID_ARG;
    const int32_t nb = n_cols / SKV_Q8_0_BLOCK;
    uint8_t *o = out;
    for (int64_t r = 0; r < n_rows; r++)
        for (int32_t b = 0; b < nb; b++)
            q8_0_block(x + r * x_stride + (int64_t)b * SKV_Q8_0_BLOCK,
                       o + ((size_t)r * (size_t)nb + (size_t)b) * SKV_Q8_0_BLOCK_BYTES);
    return SKV_OK;
}

void skv_q8_0_row_f32(const void *row, int32_t D, float *out)
{
    const uint8_t *b = row;
    for (int32_t i = 0; i < D; i += SKV_Q8_0_BLOCK, b += SKV_Q8_0_BLOCK_BYTES) {
        uint16_t h;
        memcpy(&h, b, 2);
        const float s = skv_f16_to_f32(h);
        for (int j = 0; j < SKV_Q8_0_BLOCK; j++)
            out[i + j] = (float)(int8_t)b[2 + j] * s;
    }
}

skv_status skv_dequantize_q8_0(const void *blocks, int64_t n_rows, int32_t n_cols, float *out)
{
    if (n_rows < 0 || n_cols < SKV_Q8_0_BLOCK || n_cols % SKV_Q8_0_BLOCK)
        return SKV_ERR_INVALID_ARG;
    if (n_rows == 0)
        return SKV_OK;
    if (!blocks || !out)
        return SKV_ERR_INVALID_ARG;
    const size_t rb = (size_t)(n_cols / SKV_Q8_0_BLOCK) * SKV_Q8_0_BLOCK_BYTES;
    for (int64_t r = 0; r < n_rows; r++)
        skv_q8_0_row_f32((const uint8_t *)blocks + (size_t)r * rb, n_cols, out + (size_t)r * (size_t)n_cols);
    return SKV_OK;
}
