/* F16 queries and keys for the indexer: widened exactly to f32 once per call, then the f32
 * path. Simple and exact; F16 kernels of their own would save the copy. */
#include "indexer/run.h"

/* f32 copy of n F16 values, or NULL (NOMEM). */
static float *widen(skv_context *ctx, const void *src, size_t n, size_t *bytes)
{
    *bytes = n * 4;
    float *out = skv_alloc(ctx, *bytes ? *bytes : 4);
    if (out)
        skv_convert(SKV_F32, out, SKV_F16, src, (int64_t)n);
    return out;
}

skv_status skv_indexer_widen_f16(skv_context *ctx, const skv_indexer_query *q,
                                 const skv_key_block *keys, int topk, int32_t k, float *scores,
                                 int32_t *out_idx, float *out_score)
{
    /* the same checks as the f32 call, before anything is read */
    skv_indexer_query q32 = *q;
    skv_key_block k32 = *keys;
    if (q32.dtype == SKV_F16)
        q32.dtype = SKV_F32;
    if (k32.dtype == SKV_F16)
        k32.dtype = SKV_F32;
    SKV_TRY(skv_indexer_check_query(ctx, &q32, k32.head_dim, k32.dtype));
    skv_key_src src;
    SKV_TRY(skv_key_src_from_block(ctx, &k32, &src));

    size_t qb = 0, kb = 0;
    float *qw = NULL, *kw = NULL;
    if (q->dtype == SKV_F16) {
        qw = widen(ctx, q->q, (size_t)q->n_tokens * q->n_heads * q->head_dim, &qb);
        q32.q = qw;
    }
    if (keys->dtype == SKV_F16) {
        kw = widen(ctx, keys->k, (size_t)keys->n_keys * keys->head_dim, &kb);
        k32.k = kw;
    }
    skv_status st = SKV_ERR_NOMEM;
    if ((q->dtype != SKV_F16 || qw) && (keys->dtype != SKV_F16 || kw))
        st = topk ? skv_indexer_topk(ctx, &q32, &k32, k, out_idx, out_score)
                  : skv_indexer_scores(ctx, &q32, &k32, scores);
    if (qw)
        skv_free(ctx, qw, qb ? qb : 4);
    if (kw)
        skv_free(ctx, kw, kb ? kb : 4);
    return st;
}
