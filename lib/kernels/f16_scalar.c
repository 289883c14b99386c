/* F16 (IEEE binary16) to f32, the reference every level matches bit for bit: exact widening,
 * and a NaN comes out quiet (quiet bit set, sign and payload kept), as F16C's vcvtph2ps
 * makes it. */
#include "core/core.h"

static void f16_to_f32_scalar(const void *src, void *dst, int64_t n)
{
    const uint16_t *s = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t x = s[i];
        d[i] = (x & 0x7c00) == 0x7c00 && (x & 0x3ff) ? skv_f16_to_f32((uint16_t)(x | 0x200))
                                                    : skv_f16_to_f32(x);
    }
}

void skv_f16_init_scalar(skv_kernels *k)
{
    k->f16_to_f32 = f16_to_f32_scalar;
}
