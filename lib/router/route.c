/* The MISA router: a score per indexer head for each query token (pooled block keys, query
 * norm, or the token's own key), and the top-h heads. Its cost is H * D per block per token
 * (the kernel table's head_dots), against H * D per key for the indexer it steers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "router/router_impl.h"

void skv_misa_params_init(skv_misa_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->route = SKV_ROUTE_POOLED;
    p->heads = 8;
    p->block = 1024;
    p->candidates = 0;
    p->min_length = -1;
}

/* Dequantised q of token t, heads [h0, h1), transposed: out[d * H + h] (so that the dot
 * products of every head with one vector run as independent sums over the heads, which
 * vectorise). Dims outermost: each store lands next to the last, the strided reads stay in L1. */
static void q_rows_t(const skv_indexer_query *q, int32_t t, int32_t h0, int32_t h1, float *out)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    const size_t i0 = (size_t)t * H * D;
    for (int32_t d = 0; d < D; d++) {
        float *o = out + (size_t)d * H;
        if (q->dtype == SKV_F32) {
            const float *x = (const float *)q->q + i0 + d;
            for (int32_t h = h0; h < h1; h++)
                o[h] = x[(size_t)h * D];
        } else if (q->dtype == SKV_BF16) {
            const uint16_t *x = (const uint16_t *)q->q + i0 + d;
            for (int32_t h = h0; h < h1; h++)
                o[h] = skv_bf16_bits_f32(x[(size_t)h * D]);
        } else {
            const uint8_t *x = (const uint8_t *)q->q + i0 + d;
            const float *s = q->q_scale + (size_t)t * H;
            for (int32_t h = h0; h < h1; h++)
                o[h] = skv_bf16_bits_f32(skv_fp8_bf16_lut[x[(size_t)h * D]]) * s[h];
        }
    }
}

static float relu(float x) { return x > 0 || x != x ? x : 0.0f; }

/* The pooled router's terms of block b for token t: out[h] = |w[h]| * relu(q_h . mean_b), the
 * block's mean over the keys token t sees. tmp: 2 * head_dim floats. */
static void block_terms(const skv_kernels *kern, const skv_indexer_query *q, int32_t t,
                        const skv_key_src *src, int32_t block, int64_t b, const float *qt,
                        float *tmp, float *out)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    const int64_t vis = skv_visible(q, t, src->n_keys), b0 = b * block;
    const int64_t end = b0 + block < vis ? b0 + block : vis;
    const float *w = q->weights + (size_t)t * H;
    float *mean = tmp, *scratch = tmp + D;
    skv_pool_mean(kern, src, b0, end, mean, scratch);
    kern->head_dots(qt, mean, H, D, out);
    for (int32_t h = 0; h < H; h++)
        out[h] = fabsf(w[h]) * relu(out[h]);
}

/* Router scores E[h] of token t. qbuf: n_heads * head_dim floats; tmp: 2 * head_dim + n_heads. */
static void route_scores(const skv_kernels *kern, const skv_indexer_query *q, int32_t t,
                         const skv_key_src *src, skv_route_mode mode, int32_t block, float *qbuf,
                         float *tmp, float *E)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    q_rows_t(q, t, 0, H, qbuf);
    const float *w = q->weights + (size_t)t * H;
    float *dots = tmp + 2 * (size_t)D;
    if (mode == SKV_ROUTE_QNORM) {
        memset(E, 0, (size_t)H * 4);
        for (int32_t d = 0; d < D; d++)
            for (int32_t h = 0; h < H; h++)
                E[h] += qbuf[(size_t)d * H + h] * qbuf[(size_t)d * H + h];
        for (int32_t h = 0; h < H; h++)
            E[h] = sqrtf(E[h]);
        return;
    }
    memset(E, 0, (size_t)H * 4);
    if (mode == SKV_ROUTE_OWN_KEY) {
        const int64_t p = q->positions ? q->positions[t] : src->n_keys - 1;
        if (p < 0 || p >= src->n_keys)
            return;
        skv_key_row_f32(kern, src, p, tmp);
        kern->head_dots(qbuf, tmp, H, D, dots);
        for (int32_t h = 0; h < H; h++)
            E[h] = w[h] * relu(dots[h]);
        return;
    }
    const int64_t vis = skv_visible(q, t, src->n_keys);
    for (int64_t b0 = 0; b0 < vis; b0 += block) {
        block_terms(kern, q, t, src, block, b0 / block, qbuf, tmp, dots);
        for (int32_t h = 0; h < H; h++)
            E[h] += dots[h];
    }
}

typedef struct ranked_head { uint32_t key; int32_t h; } ranked_head;

static int head_cmp(const void *a, const void *b)
{
    const ranked_head *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->h < y->h ? -1 : x->h > y->h;
}

/* The top h of E[0..H) (descending, ties to the lower head, NaN last) into heads. */
static void top_heads(const float *E, int32_t H, int32_t h, ranked_head *tmp, int32_t *heads)
{
    for (int32_t i = 0; i < H; i++)
        tmp[i] = (ranked_head){skv_score_key(E[i]), i};
    qsort(tmp, (size_t)H, sizeof *tmp, head_cmp);
    for (int32_t i = 0; i < h; i++)
        heads[i] = tmp[i].h;
}

/* The pooled router for fewer tokens than threads (decode): each token's blocks are spread over
 * the threads, their terms summed afterwards in block order, so the scores are those of the
 * token-parallel path for any thread count. */
static skv_status route_by_blocks(skv_context *ctx, const skv_indexer_query *q,
                                  const skv_key_src *src, const skv_misa_params *p, uint8_t *ws,
                                  size_t per_thread, int32_t *out_heads, float *out_scores)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    const int nth = skv_threads(ctx);
    float *terms = (float *)(ws + per_thread * (size_t)nth); /* [blocks][H], sized by the caller */
    /* thread 0's area as in skv_route_src: q | tmp (2D + H) | E (H) | ranks (H) */
    float *qt = (float *)ws, *E = qt + (size_t)H * D + 2 * (size_t)D + H;
    ranked_head *rk = (ranked_head *)(E + H);
    for (int32_t t = 0; t < q->n_tokens; t++) {
        const int64_t vis = skv_visible(q, t, src->n_keys), nb = (vis + p->block - 1) / p->block;
#pragma omp parallel num_threads(nth) if (nth > 1 && nb > 1)
        {
#ifdef _OPENMP
            float *tmp = (float *)(ws + per_thread * (size_t)omp_get_thread_num()) + (size_t)H * D;
#else
            float *tmp = (float *)ws + (size_t)H * D;
#endif
            /* the query's heads are dequantised in parallel too: at decode they cost as much
               as a few blocks (16 heads a share: whole cache lines of each row of qt) */
#pragma omp for schedule(static)
            for (int32_t h = 0; h < H; h += 16)
                q_rows_t(q, t, h, h + 16 < H ? h + 16 : H, qt);
#pragma omp for schedule(static)
            for (int64_t b = 0; b < nb; b++)
                block_terms(&ctx->kern, q, t, src, p->block, b, qt, tmp, terms + (size_t)b * H);
        }
        memset(E, 0, (size_t)H * 4);
        for (int64_t b = 0; b < nb; b++)
            for (int32_t h = 0; h < H; h++)
                E[h] += terms[(size_t)b * H + h];
        if (out_scores)
            memcpy(out_scores + (size_t)t * H, E, (size_t)H * 4);
        top_heads(E, H, p->heads, rk, out_heads + (size_t)t * p->heads);
    }
    return SKV_OK;
}

skv_status skv_route_src(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                         const skv_misa_params *p, int32_t *out_heads, float *out_scores)
{
    const int32_t T = q->n_tokens, H = q->n_heads, D = q->head_dim, h = p->heads;
    if (p->route == SKV_ROUTE_POOLED && src->pool_chunk < 1)
        return SKV_ERR_STATE;
    const int nth = skv_threads(ctx);
    const size_t per_thread = ((size_t)H * D + 2 * (size_t)D + 2 * (size_t)H) * 4 + (size_t)H * sizeof(ranked_head);
    const int by_blocks = p->route == SKV_ROUTE_POOLED && T < nth;
    const size_t terms = by_blocks ? (size_t)((src->n_keys + p->block - 1) / p->block) * H * 4 : 0;
    uint8_t *ws = skv_workspace_aux(ctx, 0, per_thread * (size_t)nth + terms);
    if (!ws)
        return SKV_ERR_NOMEM;
    if (by_blocks)
        return route_by_blocks(ctx, q, src, p, ws, per_thread, out_heads, out_scores);
#pragma omp parallel num_threads(nth) if (nth > 1 && T > 1)
    {
#ifdef _OPENMP
        uint8_t *mine = ws + per_thread * (size_t)omp_get_thread_num();
#else
        uint8_t *mine = ws;
#endif
        float *qbuf = (float *)mine, *tmp = qbuf + (size_t)H * D, *E = tmp + 2 * (size_t)D + H;
        ranked_head *rk = (ranked_head *)(E + H);
#pragma omp for schedule(dynamic, 1)
        for (int32_t t = 0; t < T; t++) {
            route_scores(&ctx->kern, q, t, src, p->route, p->block, qbuf, tmp, E);
            if (out_scores)
                memcpy(out_scores + (size_t)t * H, E, (size_t)H * 4);
            top_heads(E, H, h, rk, out_heads + (size_t)t * h);
        }
    }
    return SKV_OK;
}

skv_status skv_misa_check(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                          const skv_misa_params *p)
{
    SKV_CHECK(ctx, p != NULL && p->struct_size == sizeof *p);
    SKV_TRY(skv_indexer_check_query(ctx, q, src->head_dim, src->dtype));
    SKV_CHECK(ctx, p->heads >= 1 && p->heads <= q->n_heads);
    SKV_CHECK(ctx, p->route == SKV_ROUTE_POOLED || p->route == SKV_ROUTE_QNORM ||
                       p->route == SKV_ROUTE_OWN_KEY);
    SKV_CHECK(ctx, p->block >= 1 && p->candidates >= SKV_MISA_DAGGER_4K && p->min_length >= -1);
    if (p->route == SKV_ROUTE_POOLED && src->pool_chunk >= 1)
        SKV_CHECK(ctx, p->block % src->pool_chunk == 0);
    return SKV_OK;
}

skv_status skv_route_heads(skv_context *ctx, const skv_indexer_query *q,
                           const skv_key_block *keys, const skv_pooled_keys *pooled,
                           const skv_misa_params *p, int32_t *out_heads, float *out_scores)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_src_with_pool(ctx, keys, pooled, &src));
    SKV_TRY(skv_misa_check(ctx, q, &src, p));
    SKV_CHECK(ctx, p->route != SKV_ROUTE_POOLED || pooled != NULL);
    SKV_CHECK(ctx, out_heads != NULL || q->n_tokens == 0);
    return skv_route_src(ctx, q, &src, p, out_heads, out_scores);
}
