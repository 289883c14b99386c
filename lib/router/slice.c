/* MISA and HISA slices for a host's thread pool: worker ith selects for its share of the query
 * tokens. A token's selection depends only on that token, except for the length gate, which
 * the whole batch decides: every slice decides it on the whole batch and passes the decision
 * down as min_length (0: never gated; INT64_MAX: always). */
#include "router/router_impl.h"
#include "sparsekv/slice.h"

/* The tokens [t0, t1) of q. */
static skv_indexer_query token_range(const skv_indexer_query *q, int32_t t0, int32_t t1)
{
    skv_indexer_query s = *q;
    const size_t H = (size_t)q->n_heads;
    s.n_tokens = t1 - t0;
    if (t1 > t0) {
        s.q = (const uint8_t *)q->q + (size_t)t0 * H * q->head_dim * skv_dtype_size(q->dtype);
        s.q_scale = q->q_scale ? q->q_scale + (size_t)t0 * H : NULL;
        s.weights = q->weights + (size_t)t0 * H;
        s.positions = q->positions ? q->positions + t0 : NULL;
    }
    return s;
}

/* A MISA or HISA call on a sub-batch; params point at its (copied) parameters. */
typedef skv_status (*routed_fn)(skv_context *ctx, const skv_indexer_query *q,
                                const skv_key_block *keys, const skv_pooled_keys *pooled,
                                const void *params, int32_t k, int32_t *out_idx, float *out_score);

static skv_status misa_call(skv_context *ctx, const skv_indexer_query *q, const skv_key_block *keys,
                            const skv_pooled_keys *pooled, const void *params, int32_t k,
                            int32_t *out_idx, float *out_score)
{
    return skv_misa_topk(ctx, q, keys, pooled, params, k, out_idx, out_score);
}

static skv_status hisa_call(skv_context *ctx, const skv_indexer_query *q, const skv_key_block *keys,
                            const skv_pooled_keys *pooled, const void *params, int32_t k,
                            int32_t *out_idx, float *out_score)
{
    return skv_hisa_topk(ctx, q, keys, pooled, params, k, out_idx, out_score);
}

/* Worker ith's tokens through fn, with *min_length (inside params) set from the whole batch's
 * gate decision. */
static skv_status routed_slice(skv_context *wctx, const skv_indexer_query *q,
                               const skv_key_block *keys, const skv_pooled_keys *pooled,
                               routed_fn fn, void *params, int64_t *min_length, int64_t gate,
                               int32_t k, int32_t ith, int32_t nth, int32_t *out_idx,
                               float *out_score)
{
    if (nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(wctx, keys != NULL && keys->n_keys >= 0);
    SKV_TRY(skv_indexer_check_query(wctx, q, keys->head_dim, keys->dtype));
    const int32_t t0 = (int32_t)((int64_t)q->n_tokens * ith / nth);
    const int32_t t1 = (int32_t)((int64_t)q->n_tokens * (ith + 1) / nth);
    *min_length = skv_max_visible(q, keys->n_keys) < gate ? INT64_MAX : 0;
    const skv_indexer_query sq = token_range(q, t0, t1);
    const int saved = wctx->n_threads;
    wctx->n_threads = 1;
    const skv_status st = fn(wctx, &sq, keys, pooled, params, k,
                             out_idx ? out_idx + (size_t)t0 * k : NULL,
                             out_score ? out_score + (size_t)t0 * k : NULL);
    wctx->n_threads = saved;
    return st;
}

skv_status skv_misa_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                               const skv_key_block *keys, const skv_pooled_keys *pooled,
                               const skv_misa_params *p, int32_t k, int32_t ith, int32_t nth,
                               int32_t *out_idx, float *out_score)
{
    if (!wctx || !p || p->struct_size != sizeof *p || p->min_length < -1)
        return SKV_ERR_INVALID_ARG;
    skv_misa_params mp = *p;
    return routed_slice(wctx, q, keys, pooled, misa_call, &mp, &mp.min_length, skv_misa_gate(p), k,
                        ith, nth, out_idx, out_score);
}

skv_status skv_hisa_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                               const skv_key_block *keys, const skv_pooled_keys *pooled,
                               const skv_hisa_params *p, int32_t k, int32_t ith, int32_t nth,
                               int32_t *out_idx, float *out_score)
{
    if (!wctx || !p || p->struct_size != sizeof *p || p->min_length < -1)
        return SKV_ERR_INVALID_ARG;
    skv_hisa_params hp = *p;
    return routed_slice(wctx, q, keys, pooled, hisa_call, &hp, &hp.min_length, skv_hisa_gate(p), k,
                        ith, nth, out_idx, out_score);
}
