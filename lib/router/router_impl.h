/* Internal: pooled sums, gathering and re-ranking shared by the router, MISA and HISA. */
#ifndef SKV_ROUTER_IMPL_H
#define SKV_ROUTER_IMPL_H

#include "indexer/run.h"
#include "sparsekv/router.h"

/* sum[D] = the f32 sum of keys [b0, end), b0 a multiple of the pooled chunk: whole chunks from
 * their pooled sums, the rest from the keys, always in position order (so the same value
 * whichever way it is built). tmp: D floats. */
void skv_pool_range_sum(const skv_kernels *kern, const skv_key_src *src, int64_t b0, int64_t end,
                        float *sum, float *tmp);

/* mean[D] = the mean of keys [b0, end) (end > b0), from skv_pool_range_sum divided by the
 * count. tmp: D floats. */
void skv_pool_mean(const skv_kernels *kern, const skv_key_src *src, int64_t b0, int64_t end,
                   float *mean, float *tmp);

/* The source with contiguous pooled sums attached (pooled may be NULL: none). */
skv_status skv_src_with_pool(skv_context *ctx, const skv_key_block *keys,
                             const skv_pooled_keys *pooled, skv_key_src *out);

/* Top-k of every token t over its listed keys only (lists + t * stride, list_len[t] ascending
 * indices into src), ranked by the dense score: the dense driver run over the listed keys, so
 * a list of every visible key gives skv_indexer_topk's result. */
skv_status skv_rerank(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                      const int32_t *lists, const int32_t *list_len, int64_t stride, int32_t k,
                      int32_t *out_idx, float *out_score);

/* Keys visible to token t. */
static inline int64_t skv_visible(const skv_indexer_query *q, int32_t t, int64_t n_keys)
{
    if (!q->positions)
        return n_keys;
    const int64_t v = (int64_t)q->positions[t] + 1;
    return v < 0 ? 0 : v > n_keys ? n_keys : v;
}

/* The most keys any query token sees. */
int64_t skv_max_visible(const skv_indexer_query *q, int64_t n_keys);

/* The length gates of MISA (-dagger) and HISA: min_length, or the measured crossover. */
static inline int64_t skv_misa_gate(const skv_misa_params *p)
{
    return p->min_length >= 0 ? p->min_length
           : p->candidates    ? SKV_MISA_DAGGER_MIN_LENGTH
                              : SKV_MISA_MIN_LENGTH;
}
static inline int64_t skv_hisa_gate(const skv_hisa_params *p)
{
    return p->min_length >= 0 ? p->min_length : SKV_HISA_MIN_LENGTH;
}

/* Validates MISA parameters against the query and keys. */
skv_status skv_misa_check(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                          const skv_misa_params *p);
/* The routed heads of every token on a source (STATE when the pooled router has no sums). */
skv_status skv_route_src(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                         const skv_misa_params *p, int32_t *out_heads, float *out_scores);

/* Fills src's memo (the key cache's remembered block means) with the means of the whole
 * blocks the token of q that sees the most keys sees, on the calling thread: afterwards a
 * slice (src->memo_frozen) finds every block it shares in the memo. Nothing without a memo or
 * for a router that reads no blocks. Errors: NOMEM. */
skv_status skv_route_memo_fill(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                               const skv_misa_params *p);

/* MISA / HISA top-k on a source: the entry points' work after their source is built (counted
 * in ctx's route statistics). */
skv_status skv_misa_src(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                        const skv_misa_params *p, int32_t k, int32_t *out_idx, float *out_score);
skv_status skv_hisa_src(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                        const skv_hisa_params *p, int32_t k, int32_t *out_idx, float *out_score);

/* Counts a finished MISA/HISA call's path in ctx (skv_route_stats) and logs it at DEBUG;
 * passes st through. */
skv_status skv_route_note(skv_context *ctx, const char *method, skv_route_path path,
                          int64_t visible, int64_t gate, skv_status st);
#endif
