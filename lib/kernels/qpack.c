/* Query packing shared by every score kernel (layout in kernels.h). Plain C: it runs once per
 * query token and costs H*D element moves, against H*D*n_keys multiply-adds of scoring. */
#include <string.h>

#include "core/core.h"

/* Units: dims (F32) or pairs of dims (BF16, odd D padded). */
static int32_t units_of(int32_t D, skv_dtype compute)
{
    return compute == SKV_BF16 ? (D + 1) / 2 : D;
}

/* The lane group for H heads: the largest power of two g with H * g <= lanes that divides the
 * units (bf16 with odd D: 1, the last pair is padded). */
static int group_of(int32_t H, int32_t D, int lanes, skv_dtype compute)
{
    const int32_t units = units_of(D, compute);
    int g = 1;
    if (compute == SKV_BF16 && D % 2)
        return 1;
    while ((int64_t)H * g * 2 <= lanes && units % (g * 2) == 0)
        g *= 2;
    return g;
}

static size_t q_bytes(int32_t D, int width, int g, skv_dtype compute)
{
    return skv_round_up((size_t)(units_of(D, compute) / g) * (size_t)width * 4, SKV_ALIGN);
}

static size_t chunk_bytes(int32_t D, int width, int g, skv_dtype compute)
{
    return q_bytes(D, width, g, compute) + 3 * skv_round_up((size_t)width * 4, SKV_ALIGN);
}

size_t skv_qpack_size(int32_t H, int32_t D, int lanes, int hv_max, skv_dtype compute)
{
    const int g = group_of(H, D, lanes, compute);
    const int32_t per_chunk = hv_max * lanes / g;
    const int32_t n_chunks = (H + per_chunk - 1) / per_chunk;
    return SKV_QPACK_HDR_BYTES + (size_t)n_chunks * chunk_bytes(D, hv_max * lanes, g, compute);
}

skv_qchunk skv_qpack_chunk(const skv_qpack_hdr *h, int32_t c)
{
    const int32_t per_chunk = h->hv_max * h->lanes / h->g;
    const int32_t heads = h->H - c * per_chunk < per_chunk ? h->H - c * per_chunk : per_chunk;
    const int32_t hv = (heads * h->g + h->lanes - 1) / h->lanes, width = hv * h->lanes;
    const char *base = (const char *)h + SKV_QPACK_HDR_BYTES + (size_t)c * h->chunk_bytes;
    const size_t qb = q_bytes(h->D, width, h->g, h->compute);
    const size_t vb = skv_round_up((size_t)width * 4, SKV_ALIGN);
    skv_qchunk r = {base, (const float *)(base + qb), (const float *)(base + qb + vb),
                    (const float *)(base + qb + 2 * vb), hv, heads, h->g, heads * h->g};
    return r;
}

/* Head h of the token as f32 values. */
static void q_row_f32(const skv_qpack_args *a, int32_t h, float *out)
{
    const size_t i0 = (size_t)h * a->D;
    for (int32_t d = 0; d < a->D; d++)
        out[d] = a->q_dtype == SKV_F32    ? ((const float *)a->q)[i0 + d]
                 : a->q_dtype == SKV_BF16 ? skv_bf16_bits_f32(((const uint16_t *)a->q)[i0 + d])
                 : a->q_dtype == SKV_F16  ? skv_f16_to_f32(((const uint16_t *)a->q)[i0 + d])
                                          : skv_bf16_bits_f32(skv_fp8_bf16_lut[((const uint8_t *)a->q)[i0 + d]]);
}

/* Dims 2u and 2u + 1 of head h as a pair of bf16 bits (low half first; an odd D's last pair
 * ends with 0). */
static inline uint32_t q_pair_bf16(const skv_qpack_args *a, int32_t h, int32_t u)
{
    const size_t i = (size_t)h * a->D + 2 * (size_t)u;
    const int two = 2 * u + 1 < a->D;
    if (a->q_dtype == SKV_BF16) {
        const uint16_t *q = (const uint16_t *)a->q + i;
        return q[0] | (two ? (uint32_t)q[1] << 16 : 0);
    }
    const uint8_t *q = (const uint8_t *)a->q + i;
    return skv_fp8_bf16_lut[q[0]] | (two ? (uint32_t)skv_fp8_bf16_lut[q[1]] << 16 : 0);
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
    h->g = group_of(a->H, a->D, lanes, compute);
    const int32_t per_chunk = hv_max * lanes / h->g;
    h->n_chunks = (a->H + per_chunk - 1) / per_chunk;
    h->compute = compute;
    h->chunk_bytes = chunk_bytes(a->D, hv_max * lanes, h->g, compute);
    const int g = h->g, lg = __builtin_ctz((unsigned)g); /* g is a power of two: shifts, not
                                                            divisions, in the loops below */
    for (int32_t c = 0; c < h->n_chunks; c++) {
        skv_qchunk ch = skv_qpack_chunk(h, c);
        const int32_t h0 = c * per_chunk, width = ch.hv * lanes;
        float *w = (float *)ch.w, *s = (float *)ch.s, *wf = (float *)ch.wf;
        for (int32_t l = 0; l < width; l++) {
            const int32_t hh = h0 + (l >> lg);
            const int real = l < ch.active, leader = real && (l & (g - 1)) == 0;
            w[l] = leader ? a->w[hh] : 0.0f;
            s[l] = real && a->qscale ? a->qscale[hh] : 1.0f;
            wf[l] = leader ? a->w[hh] * s[l] : 0.0f;
        }
        /* Zero first: padded lanes, and the odd-D pad of the last bf16 pair. */
        const int32_t units = units_of(a->D, compute);
        memset((void *)ch.q, 0, (size_t)(units / g) * width * 4);
        if (compute == SKV_BF16) {
            /* unit u (dims 2u, 2u + 1) of head hl at [u / g][hl * g + u % g]; the heads run
               innermost so that the stores are consecutive */
            uint32_t *q = (uint32_t *)ch.q;
            for (int32_t u = 0; u < units; u++) {
                uint32_t *qu = q + (size_t)(u >> lg) * width + (u & (g - 1));
                for (int32_t hl = 0; hl < ch.heads; hl++)
                    qu[hl * g] = q_pair_bf16(a, h0 + hl, u);
            }
            continue;
        }
        float *q = (float *)ch.q, *row = scratch;
        for (int32_t hl = 0; hl < ch.heads; hl++) {
            q_row_f32(a, h0 + hl, row);
            for (int32_t d = 0; d < a->D; d++)
                q[(size_t)(d >> lg) * width + hl * g + (d & (g - 1))] = row[d];
        }
    }
}
