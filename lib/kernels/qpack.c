/* Query packing shared by every score kernel (layout in kernels.h). Plain C: it runs once per
 * query token and costs H*D element moves, against H*D*n_keys multiply-adds of scoring. */
#include <string.h>

#include "core/core.h"

static size_t q_bytes(int32_t D, int hv, int lanes, skv_dtype compute)
{
    const size_t per_dim = (size_t)hv * (size_t)lanes * 4; /* f32, or a bf16 pair */
    const size_t dims = compute == SKV_BF16 ? (size_t)(D + 1) / 2 : (size_t)D;
    return skv_round_up(dims * per_dim, SKV_ALIGN);
}

static size_t chunk_bytes(int32_t D, int hv, int lanes, skv_dtype compute)
{
    return q_bytes(D, hv, lanes, compute) + 3 * skv_round_up((size_t)hv * lanes * 4, SKV_ALIGN);
}

size_t skv_qpack_size(int32_t H, int32_t D, int lanes, int hv_max, skv_dtype compute)
{
    const int32_t per_chunk = hv_max * lanes;
    const int32_t n_chunks = (H + per_chunk - 1) / per_chunk;
    return SKV_QPACK_HDR_BYTES + (size_t)n_chunks * chunk_bytes(D, hv_max, lanes, compute);
}

skv_qchunk skv_qpack_chunk(const skv_qpack_hdr *h, int32_t c)
{
    const int32_t per_chunk = h->hv_max * h->lanes;
    const int32_t heads = h->H - c * per_chunk < per_chunk ? h->H - c * per_chunk : per_chunk;
    const int32_t hv = (heads + h->lanes - 1) / h->lanes;
    const char *base = (const char *)h + SKV_QPACK_HDR_BYTES + (size_t)c * h->chunk_bytes;
    const size_t qb = q_bytes(h->D, hv, h->lanes, h->compute);
    const size_t vb = skv_round_up((size_t)hv * h->lanes * 4, SKV_ALIGN);
    skv_qchunk r = {base, (const float *)(base + qb), (const float *)(base + qb + vb),
                    (const float *)(base + qb + 2 * vb), hv, heads};
    return r;
}

/* Head h of the token as compute-dtype bits: f32 values, or bf16 bits (exact: only BF16
 * and FP8 queries are packed for bf16). */
static void q_row_f32(const skv_qpack_args *a, int32_t h, float *out)
{
    const size_t i0 = (size_t)h * a->D;
    for (int32_t d = 0; d < a->D; d++)
        out[d] = a->q_dtype == SKV_F32    ? ((const float *)a->q)[i0 + d]
                 : a->q_dtype == SKV_BF16 ? skv_bf16_to_f32(((const uint16_t *)a->q)[i0 + d])
                                          : skv_fp8_to_f32(((const uint8_t *)a->q)[i0 + d]);
}

static void q_row_bf16(const skv_qpack_args *a, int32_t h, uint16_t *out)
{
    const size_t i0 = (size_t)h * a->D;
    for (int32_t d = 0; d < a->D; d++)
        out[d] = a->q_dtype == SKV_BF16 ? ((const uint16_t *)a->q)[i0 + d]
                                        : skv_fp8_bf16_lut[((const uint8_t *)a->q)[i0 + d]];
}

void skv_qpack_fill(void *dst, const skv_qpack_args *a, int lanes, int hv_max, skv_dtype compute)
{
    float scratch[4096]; /* one head row; head_dim <= 4096 */
    skv_qpack_hdr *h = dst;
    memset(h, 0, SKV_QPACK_HDR_BYTES);
    h->H = a->H;
    h->D = a->D;
    h->scaled = a->scaled;
    if (a->scaled && a->qscale) { /* fold when every q scale is positive and finite */
        int fold = 1;
        for (int32_t i = 0; i < a->H; i++)
            fold &= a->qscale[i] > 0 && a->qscale[i] <= 3.4028235e38f;
        h->scaled = fold ? 2 : 1;
    } else if (a->scaled) {
        h->scaled = 2; /* no q scales (1 each): folding is the identity */
    }
    h->lanes = lanes;
    h->hv_max = hv_max;
    h->n_chunks = (a->H + hv_max * lanes - 1) / (hv_max * lanes);
    h->compute = compute;
    h->chunk_bytes = chunk_bytes(a->D, hv_max, lanes, compute);
    for (int32_t c = 0; c < h->n_chunks; c++) {
        skv_qchunk ch = skv_qpack_chunk(h, c);
        const int32_t h0 = c * hv_max * lanes, width = ch.hv * lanes;
        float *w = (float *)ch.w, *s = (float *)ch.s, *wf = (float *)ch.wf;
        for (int32_t l = 0; l < width; l++) {
            const int real = l < ch.heads;
            w[l] = real ? a->w[h0 + l] : 0.0f;
            s[l] = real && a->qscale ? a->qscale[h0 + l] : 1.0f;
            wf[l] = w[l] * s[l];
        }
        /* Zero first: padded lanes, and the odd-D pad of the last bf16 pair. */
        const int32_t dims = compute == SKV_BF16 ? (a->D + 1) / 2 * 2 : a->D;
        const size_t esize = compute == SKV_BF16 ? 2 : 4;
        memset((void *)ch.q, 0, (size_t)dims * width * esize);
        for (int32_t l = 0; l < ch.heads; l++) {
            if (compute == SKV_BF16) {
                uint16_t *q = (uint16_t *)ch.q, *row = (uint16_t *)scratch;
                q_row_bf16(a, h0 + l, row);
                for (int32_t d = 0; d < a->D; d++) /* [d/2][lane][d%2] */
                    q[((size_t)(d >> 1) * width + l) * 2 + (d & 1)] = row[d];
            } else {
                float *q = (float *)ch.q, *row = (float *)scratch;
                q_row_f32(a, h0 + l, row);
                for (int32_t d = 0; d < a->D; d++)
                    q[(size_t)d * width + l] = row[d];
            }
        }
    }
}
