/* Q8_0 blocks (ggml's block_q8_0, common.h) to f32, the reference every level matches bit for
 * bit: value = qs[j] * d, the f32 product of the int8 code and the block's f16 scale widened
 * (exact: 8 and 11 significant bits). A NaN scale widens quiet, as F16C makes it. */
#include <string.h>

#include "core/core.h"

static void q8_0_to_f32_scalar(const void *src, void *dst, int64_t n)
{
    const uint8_t *b = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i += SKV_Q8_0_BLOCK, b += SKV_Q8_0_BLOCK_BYTES) {
        uint16_t h;
        memcpy(&h, b, 2);
        const float s = skv_f16_to_f32((h & 0x7c00) == 0x7c00 && (h & 0x3ff) ? (uint16_t)(h | 0x200) : h);
        for (int j = 0; j < SKV_Q8_0_BLOCK; j++)
            d[i + j] = (float)(int8_t)b[2 + j] * s;
    }
}

void skv_q8_init_scalar(skv_kernels *k)
{
    k->q8_0_to_f32 = q8_0_to_f32_scalar;
}
