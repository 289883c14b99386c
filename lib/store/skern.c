/* Store kernels: the scalar reference (plain loops in index order, f32 accumulation) and the
 * dispatch that upgrades it level by level. */
#include <string.h>

#include "core/core.h"
#include "store/skern.h"

static inline float widen(skv_dtype dt, const void *row, int32_t i)
{
    switch (dt) {
    case SKV_BF16: return skv_bf16_to_f32(((const uint16_t *)row)[i]);
    case SKV_F16: return skv_f16_to_f32(((const uint16_t *)row)[i]);
    default: return ((const float *)row)[i];
    }
}

static void dots_scalar(const float *q, int32_t G, int32_t D, const void *rows, skv_dtype dt,
                        size_t stride, int64_t n, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const void *row = (const uint8_t *)rows + (size_t)j * stride;
        for (int32_t g = 0; g < G; g++) {
            const float *qg = q + (size_t)g * D;
            float acc = 0;
            for (int32_t i = 0; i < D; i++)
                acc += qg[i] * widen(dt, row, i);
            out[j * G + g] = acc;
        }
    }
}

static void minmax_scalar(const float *q, int32_t G, int32_t D, const float *lo, const float *hi,
                          float *out)
{
    for (int32_t g = 0; g < G; g++) {
        const float *qg = q + (size_t)g * D;
        float acc = 0;
        for (int32_t i = 0; i < D; i++) {
            const float a = qg[i] * lo[i], b = qg[i] * hi[i];
            acc += a > b ? a : b;
        }
        out[g] = acc;
    }
}

static void split_rows_scalar(uint8_t *dk, uint8_t *dv, const uint8_t *src, size_t stride,
                              size_t kb, size_t vb, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        memcpy(dk + (size_t)i * kb, src + (size_t)i * stride, kb);
        if (vb)
            memcpy(dv + (size_t)i * vb, src + (size_t)i * stride + kb, vb);
    }
}

void skv_skern_init_scalar(skv_store_kern *k)
{
    k->dots = dots_scalar;
    k->minmax = minmax_scalar;
    k->split_rows = split_rows_scalar;
    k->name = "scalar";
}

void skv_skern_init(skv_store_kern *k, uint32_t flags)
{
    skv_skern_init_scalar(k);
#ifdef SKV_HAVE_X86
    if (!(flags & SKV_CPU_AVX2))
        return;
    skv_skern_init_avx2(k);
    if (!(flags & SKV_CPU_AVX512))
        return;
    skv_skern_init_avx512(k);
#else
    (void)flags;
#endif
}
