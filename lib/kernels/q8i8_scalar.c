/* The int8 path's query pack (shared by every level) and its scalar reference (q8i8.h). */
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "kernels/q8i8.h"

size_t skv_q8i8_pack_size(int32_t H, int32_t D)
{
    const size_t nv = (size_t)(H + 15) / 16, nb = (size_t)D / 32;
    return skv_round_up(sizeof(skv_q8i8_hdr) + nv * nb * (512 + 64) + nv * 64, 64);
}

/* Head h's dequantised f32 values. */
static float q_value(const skv_qpack_args *a, size_t i, int32_t h)
{
    switch (a->q_dtype) {
    case SKV_F32: return ((const float *)a->q)[i];
    case SKV_BF16: return skv_bf16_to_f32(((const uint16_t *)a->q)[i]);
    case SKV_F16: return skv_f16_to_f32(((const uint16_t *)a->q)[i]);
    default: /* FP8 */
        return skv_fp8_to_f32(((const uint8_t *)a->q)[i]) * (a->qscale ? a->qscale[h] : 1.0f);
    }
}

/* Per head: amax over finite values, qs = amax / 127, codes roundf(x / qs) clamped to
 * +-127 (infinities +-127); a NaN makes the head's weight NaN (its term, and so the score,
 * NaN, as on the exact path). */
void skv_q8i8_pack(void *dst, const skv_qpack_args *a)
{
    const int32_t H = a->H, D = a->D, nv = (H + 15) / 16, nb = D / 32;
    skv_q8i8_hdr *hdr = dst;
    memset(hdr, 0, sizeof *hdr);
    hdr->H = H, hdr->D = D, hdr->nv = nv, hdr->nb = nb;
    uint8_t *codes = (uint8_t *)(hdr + 1);
    int32_t *corr = (int32_t *)(codes + (size_t)nv * nb * 512);
    float *wq = (float *)(corr + (size_t)nv * nb * 16);
    memset(codes, 0, (size_t)nv * nb * 512); /* padded heads: code 0 */
    memset(corr, 0, (size_t)nv * nb * 64);
    memset(wq, 0, (size_t)nv * 64);
    float x[4096];
    for (int32_t h = 0; h < H; h++) {
        float amax = 0.0f;
        int nan = 0;
        for (int32_t d = 0; d < D; d++) {
            x[d] = q_value(a, (size_t)h * D + d, h);
            const float m = fabsf(x[d]);
            nan |= m != m;
            if (m > amax && m != INFINITY)
                amax = m;
        }
        const float qs = amax / 127, inv = qs != 0.0f ? 127 / amax : 0.0f;
        const int32_t v = h / 16, l = h % 16;
        for (int32_t d = 0; d < D; d++) {
            float c = x[d] == INFINITY ? 127.0f : x[d] == -INFINITY ? -127.0f : roundf(x[d] * inv);
            c = c != c ? 0.0f : c > 127.0f ? 127.0f : c < -127.0f ? -127.0f : c;
            const int32_t b = d / 32, s = (d % 32) / 4, t = d % 4;
            codes[((size_t)v * nb + b) * 512 + (size_t)s * 64 + (size_t)l * 4 + t] = (uint8_t)(int8_t)c;
            corr[((size_t)v * nb + b) * 16 + l] -= 128 * (int32_t)c;
        }
        wq[v * 16 + l] = nan ? NAN : a->w[h] * qs;
    }
}

static inline float relu_nan(float x) { return x > 0 || x != x ? x : 0.0f; }

/* The scalar reference: exactly q8i8.h's arithmetic. */
static void score_q8i8_scalar(const void *pack, const void *k, size_t kst, const float *ks,
                              int64_t n, float *out)
{
    (void)kst, (void)ks;
    const skv_q8i8_hdr *hdr = pack;
    const int32_t H = hdr->H, nb = hdr->nb;
    const float *wq = skv_q8i8_wq(hdr);
    const size_t rb = (size_t)nb * SKV_Q8_0_BLOCK_BYTES;
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *row = (const uint8_t *)k + (size_t)j * rb;
        float lane[16] = {0};
        for (int32_t h = 0; h < hdr->nv * 16; h++) { /* padded lanes add r = 0 times w = 0 */
            const int32_t v = h / 16, l = h % 16;
            float f = 0.0f;
            for (int32_t b = 0; b < nb && h < H; b++) {
                const uint8_t *blk = row + (size_t)b * SKV_Q8_0_BLOCK_BYTES;
                const uint8_t *qc = skv_q8i8_codes(hdr, v, b);
                int32_t i = 0;
                for (int32_t t = 0; t < 32; t++)
                    i += (int8_t)qc[(t / 4) * 64 + l * 4 + t % 4] * (int8_t)blk[2 + t];
                uint16_t hs;
                memcpy(&hs, blk, 2);
                f = fmaf((float)i, skv_f16_to_f32(hs), f);
            }
            const float r = relu_nan(f);
            lane[l] = v == 0 ? r * wq[h] : fmaf(r, wq[h], lane[l]);
        }
        for (int w = 8; w >= 1; w /= 2)
            for (int l = 0; l < w; l++)
                lane[l] = lane[l] + lane[l + w];
        out[j] = lane[0];
    }
}

void skv_q8i8_init_scalar(skv_kernels *k)
{
    k->score_q8i8 = (skv_score_kernel){skv_q8i8_pack_size, skv_q8i8_pack, score_q8i8_scalar, SKV_Q8_0};
}
