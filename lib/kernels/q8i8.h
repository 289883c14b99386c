/* The opt-in int8 path (skv_context_set_int8_queries): queries quantised per (token, head) to
 * int8 inside the call, scored against Q8_0 keys with integer dot products per 32-value block.
 *
 * For head h with int8 query codes q (scale qs_h = amax_h / 127 of its f32 values) and key j
 * with blocks (d_b, k_b):
 *   i_b = sum_t q[32b + t] * k_b[t]                 (exact, int32)
 *   f_h = fma(i_b, d_b, f_h) over b in order         (f32, from 0; i_b exact in f32)
 *   score = sum_h (w_h * qs_h) * relu(f_h)           (relu keeps NaN)
 * The head sum runs in 16 lanes, lane l holding heads l, 16 + l, 32 + l, ... (the first a
 * product, the others fused multiply-adds, in order), then the lanes add as a tree: l + 8,
 * then + 4, + 2, + 1. Every level computes exactly this, so every level selects the same keys
 * with the same scores as the scalar reference, bit for bit.
 *
 * The pack (per token): a header, then for each head vector v (16 heads) and block b the query
 * codes (int8) as bytes [8 steps][16 lanes][4 dims] (512 bytes: one vpdpbusd operand a step, the
 * signed one; the key codes plus 128 are the unsigned one), then [nv][nb][16] int32
 * -128 * sum(q codes of the block) (what the keys' +128 adds, taken off), then [nv][16] f32
 * weights w_h * qs_h (0 on padded lanes). */
#ifndef SKV_Q8I8_H
#define SKV_Q8I8_H

#include "kernels/kernels.h"

typedef struct skv_q8i8_hdr {
    int32_t H, D, nv, nb;
    int32_t pad[12];
} skv_q8i8_hdr;

static inline const uint8_t *skv_q8i8_codes(const skv_q8i8_hdr *h, int32_t v, int32_t b)
{
    return (const uint8_t *)(h + 1) + ((size_t)v * h->nb + b) * 512;
}
static inline const int32_t *skv_q8i8_corr(const skv_q8i8_hdr *h, int32_t v, int32_t b)
{
    return (const int32_t *)((const uint8_t *)(h + 1) + (size_t)h->nv * h->nb * 512) +
           ((size_t)v * h->nb + b) * 16;
}
static inline const float *skv_q8i8_wq(const skv_q8i8_hdr *h)
{
    return (const float *)((const uint8_t *)(h + 1) + (size_t)h->nv * h->nb * (512 + 64));
}

size_t skv_q8i8_pack_size(int32_t H, int32_t D);
void skv_q8i8_pack(void *dst, const skv_qpack_args *a);

#endif
