/* MISA and HISA slices for a host's thread pool: worker ith selects for its share of the query
 * tokens. A token's selection depends only on that token, except for the length gate, which
 * the whole batch decides: every slice decides it on the whole batch and passes the decision
 * down as min_length (0: never gated; INT64_MAX: always). On a key cache the slices read the
 * cache's remembered block means and never change them (skv_kcache_misa_prepare fills them
 * first); a mean missing there is computed by the worker, with the same bits. */
#include "router/router_impl.h"
#include "sparsekv/slice.h"

/* The parameters of one method. */
typedef struct routed {
    int hisa;
    skv_misa_params mp;
    skv_hisa_params hp;
} routed;

/* Worker ith's tokens of q on the keys (a block with its pooled sums, or the cache's keys of
 * (seq, layer) with the memo frozen), with the whole batch's gate decision. */
static skv_status routed_slice(skv_context *wctx, const skv_key_block *keys,
                               const skv_pooled_keys *pooled, const skv_kcache *c, int32_t seq,
                               int32_t layer, const skv_indexer_query *q, routed r, int32_t k,
                               int32_t ith, int32_t nth, int32_t *out_idx, float *out_score)
{
    if (!wctx || nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(wctx, (r.hisa ? r.hp.min_length : r.mp.min_length) >= -1);
    skv_key_src src;
    if (c) {
        SKV_TRY(skv_kcache_src(c, seq, layer, &src));
        src.memo_frozen = 1;
    } else {
        SKV_TRY(skv_src_with_pool(wctx, keys, pooled, &src));
    }
    SKV_TRY(skv_indexer_check_query(wctx, q, src.head_dim, src.dtype));
    const int32_t t0 = (int32_t)((int64_t)q->n_tokens * ith / nth);
    const int32_t t1 = (int32_t)((int64_t)q->n_tokens * (ith + 1) / nth);
    const int64_t gate = r.hisa ? skv_hisa_gate(&r.hp) : skv_misa_gate(&r.mp);
    r.mp.min_length = r.hp.min_length = skv_max_visible(q, src.n_keys) < gate ? INT64_MAX : 0;
    skv_indexer_query sq = skv_query_from(q, t0);
    sq.n_tokens = t1 - t0;
    sq.positions = q->positions ? q->positions + t0 : NULL;
    int32_t *oi = out_idx ? out_idx + (size_t)t0 * k : NULL;
    float *os = out_score ? out_score + (size_t)t0 * k : NULL;
    const int saved = wctx->n_threads;
    wctx->n_threads = 1;
    const skv_status st = r.hisa ? skv_hisa_src(wctx, &sq, &src, &r.hp, k, oi, os)
                                 : skv_misa_src(wctx, &sq, &src, &r.mp, k, oi, os);
    wctx->n_threads = saved;
    return st;
}

#define AS_MISA(p) (routed){.hisa = 0, .mp = *(p)}
#define AS_HISA(p) (routed){.hisa = 1, .hp = *(p)}

skv_status skv_misa_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                               const skv_key_block *keys, const skv_pooled_keys *pooled,
                               const skv_misa_params *p, int32_t k, int32_t ith, int32_t nth,
                               int32_t *out_idx, float *out_score)
{
    if (!p || p->struct_size != sizeof *p)
        return SKV_ERR_INVALID_ARG;
    return routed_slice(wctx, keys, pooled, NULL, 0, 0, q, AS_MISA(p), k, ith, nth, out_idx, out_score);
}

skv_status skv_hisa_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                               const skv_key_block *keys, const skv_pooled_keys *pooled,
                               const skv_hisa_params *p, int32_t k, int32_t ith, int32_t nth,
                               int32_t *out_idx, float *out_score)
{
    if (!p || p->struct_size != sizeof *p)
        return SKV_ERR_INVALID_ARG;
    return routed_slice(wctx, keys, pooled, NULL, 0, 0, q, AS_HISA(p), k, ith, nth, out_idx, out_score);
}

skv_status skv_kcache_misa_topk_slice(skv_context *wctx, const skv_kcache *c, int32_t seq,
                                      int32_t layer, const skv_indexer_query *q,
                                      const skv_misa_params *p, int32_t k, int32_t ith,
                                      int32_t nth, int32_t *out_idx, float *out_score)
{
    if (!c || !p || p->struct_size != sizeof *p)
        return SKV_ERR_INVALID_ARG;
    return routed_slice(wctx, NULL, NULL, c, seq, layer, q, AS_MISA(p), k, ith, nth, out_idx, out_score);
}

skv_status skv_kcache_hisa_topk_slice(skv_context *wctx, const skv_kcache *c, int32_t seq,
                                      int32_t layer, const skv_indexer_query *q,
                                      const skv_hisa_params *p, int32_t k, int32_t ith,
                                      int32_t nth, int32_t *out_idx, float *out_score)
{
    if (!c || !p || p->struct_size != sizeof *p)
        return SKV_ERR_INVALID_ARG;
    return routed_slice(wctx, NULL, NULL, c, seq, layer, q, AS_HISA(p), k, ith, nth, out_idx, out_score);
}

skv_status skv_kcache_misa_prepare(skv_kcache *c, int32_t seq, int32_t layer,
                                   const skv_indexer_query *q, const skv_misa_params *p)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_kcache_src(c, seq, layer, &src));
    skv_context *ctx = skv_kcache_context(c);
    SKV_TRY(skv_misa_check(ctx, q, &src, p));
    return skv_route_memo_fill(ctx, q, &src, p);
}
