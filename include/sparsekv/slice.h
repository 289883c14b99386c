/* sparsekv — slices: the work of one entry point, split for a host's own thread pool.
 *
 * ggml-style engines run an operation by calling one function on each of their nth worker
 * threads with its index ith (ggml_custom_4d's fun(dst, ith, nth, userdata)); OpenMP inside a
 * library would oversubscribe those threads. A slice entry point does worker ith's share of
 * the matching OpenMP entry point on the calling thread only (it starts no threads, whatever
 * the context's n_threads), and the union of the nth slices' outputs is bit for bit that of the
 * OpenMP entry point, for every nth >= 1 (nth above the work items leaves some slices idle).
 *
 * The protocol:
 *  - every worker passes its own context `wctx` (one per worker thread, created once, with the
 *    same cpu_mask as the reference call's context where bit-identical results matter: the
 *    kernel level decides the last bits). A slice uses wctx's workspace and allocator only;
 *    the other objects (key cache, store, selection, page pool) are read, never changed, so
 *    nth slices may read them at once, provided no thread changes them meanwhile;
 *  - each slice writes only its own part of the outputs;
 *  - the indexer top-k needs every worker's partial result: its slices run in two phases. Phase
 *    one (skv_indexer_topk_slice, skv_kcache_topk_slice, skv_paged_topk_slice) writes worker
 *    ith's candidates into its part of a host buffer of skv_topk_part_bytes; after the host's
 *    barrier (every phase-one call returned), phase two (skv_topk_merge_slice) merges the
 *    candidates of its share of the query tokens into the outputs. Both phases use the same
 *    nth;
 *  - MISA on a key cache remembers block means in the cache (skv_kcache_misa_topk): a slice
 *    only reads them. Before its barrier the host runs skv_kcache_misa_prepare on one thread
 *    (it fills them: the cache is changed, so no other thread may use it meanwhile); then
 *    every worker calls skv_kcache_misa_topk_slice. A slice computes a mean missing there
 *    itself, with the same bits: skipping the prepare costs time, never correctness. HISA
 *    keeps no memo: skv_kcache_hisa_topk_slice needs no prepare;
 *  - a slice validates everything it reads before it writes, and returns the status the OpenMP
 *    entry point would return. When any worker's slice fails, the host reports that status and
 *    skips phase two (the outputs are then partly written: only phase two and the single-phase
 *    slices write them).
 * Every slice also returns INVALID_ARG for nth < 1 or ith outside [0, nth). Slices take every
 * query and key dtype their OpenMP entry point takes.
 * Thread safety: as above; a slice is reentrant for distinct wctx. Slices log through wctx,
 * except the key cache's own checks of seq and layer, which log through the cache's context
 * (its log function may then be called from several workers at once). */
#ifndef SPARSEKV_SLICE_H
#define SPARSEKV_SLICE_H

#include "common.h"
#include "indexer.h"
#include "router.h"
#include "store.h"
#include "attention.h"
#include "engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the indexer top-k, in two phases --------------------------------------------------------- */

/* The most workers the two-phase top-k merges (phase two keeps one cursor per worker on its
 * stack); more give INVALID_ARG. */
#define SKV_SLICE_MAX_WORKERS 256

/* Bytes of the host buffer holding the phase-one candidates of nth workers: nth * n_tokens * k
 * (index, score) pairs; 0 when that overflows or an argument is out of range (nth above
 * SKV_SLICE_MAX_WORKERS included). The host owns
 * it; align it to 8 bytes. */
SKV_API size_t skv_topk_part_bytes(int32_t n_tokens, int32_t k, int32_t nth);

/* Phase one of skv_indexer_topk: worker ith takes its range of the keys (ranges of whole
 * groups of 256 keys, so that every key is scored as in the OpenMP call) and writes the top-k
 * of every query token within it to its part of `part`. Errors: as skv_indexer_topk. */
SKV_API skv_status skv_indexer_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                                          const skv_key_block *keys, int32_t k, int32_t ith,
                                          int32_t nth, void *part);

/* Phase one of skv_kcache_topk on the keys of (seq, layer), read in place (ranges of whole
 * pages and groups of 256 keys). The cache is only read. Errors: as skv_kcache_topk. */
SKV_API skv_status skv_kcache_topk_slice(skv_context *wctx, const skv_kcache *c, int32_t seq,
                                         int32_t layer, const skv_indexer_query *q, int32_t k,
                                         int32_t ith, int32_t nth, void *part);

/* Phase one of skv_paged_topk: worker ith takes its range of every sequence's keys (ranges of
 * whole blocks and groups of 256 keys), read in place from the host's pool, and writes its
 * candidates for all q->n_tokens tokens; phase two (skv_topk_merge_slice with q->n_tokens)
 * gives skv_paged_topk's rows. The pool, batch and query are only read.
 * Errors: as skv_paged_topk, INVALID_ARG also for part NULL with tokens, or nth above
 * SKV_SLICE_MAX_WORKERS. */
SKV_API skv_status skv_paged_topk_slice(skv_context *wctx, const skv_paged_keys *keys,
                                        const skv_paged_batch *batch, const skv_indexer_query *q,
                                        int32_t k, int32_t ith, int32_t nth, void *part);

/* Phase two: merges the nth candidate lists of worker ith's share of the n_tokens query tokens
 * into out_idx / out_score [n_tokens][k] (out_score may be NULL): the rows of skv_indexer_topk.
 * Takes no context: it allocates nothing. Errors: INVALID_ARG. */
SKV_API skv_status skv_topk_merge_slice(const void *part, int32_t n_tokens, int32_t k,
                                        int32_t ith, int32_t nth, int32_t *out_idx,
                                        float *out_score);

/* ---- single-phase slices ------------------------------------------------------------------------ */

/* skv_topk_rows for worker ith's share of the rows (a row is one work item: a single row runs
 * on one worker). Errors: as skv_topk_rows. */
SKV_API skv_status skv_topk_rows_slice(skv_context *wctx, const float *x, int64_t n_rows,
                                       int64_t n_cols, int64_t row_stride,
                                       const int64_t *lengths, int32_t k, int32_t ith,
                                       int32_t nth, int32_t *out_idx, float *out_val);

/* skv_misa_topk / skv_hisa_topk for worker ith's share of the query tokens (a token is one
 * work item: a one-token decode step runs on one worker; every worker decides the length gate
 * on the whole batch, as the OpenMP call does). The route statistics count in wctx.
 * Errors: as skv_misa_topk / skv_hisa_topk. */
SKV_API skv_status skv_misa_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                                       const skv_key_block *keys, const skv_pooled_keys *pooled,
                                       const skv_misa_params *p, int32_t k, int32_t ith,
                                       int32_t nth, int32_t *out_idx, float *out_score);
SKV_API skv_status skv_hisa_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                                       const skv_key_block *keys, const skv_pooled_keys *pooled,
                                       const skv_hisa_params *p, int32_t k, int32_t ith,
                                       int32_t nth, int32_t *out_idx, float *out_score);

/* The same on the keys of (seq, layer) in a key cache with pooled chunks: the slices read the
 * cache (its remembered block means included) and change nothing in it; the route statistics
 * count in wctx, not in the cache's context. Errors: as skv_kcache_misa_topk /
 * skv_kcache_hisa_topk. */
SKV_API skv_status skv_kcache_misa_topk_slice(skv_context *wctx, const skv_kcache *c,
                                              int32_t seq, int32_t layer,
                                              const skv_indexer_query *q,
                                              const skv_misa_params *p, int32_t k, int32_t ith,
                                              int32_t nth, int32_t *out_idx, float *out_score);
SKV_API skv_status skv_kcache_hisa_topk_slice(skv_context *wctx, const skv_kcache *c,
                                              int32_t seq, int32_t layer,
                                              const skv_indexer_query *q,
                                              const skv_hisa_params *p, int32_t k, int32_t ith,
                                              int32_t nth, int32_t *out_idx, float *out_score);

/* Before skv_kcache_misa_topk_slice, on one thread, with no other thread using the cache:
 * remembers in the cache the means of the whole blocks of p->block keys that q's tokens see
 * (the most any token sees), so that the slices read them instead of pooling them each. Runs
 * on the calling thread, allocates with the cache's context. Nothing for a router that reads
 * no blocks (SKV_ROUTE_QNORM, SKV_ROUTE_OWN_KEY) or a cache without pooled sums.
 * Errors: INVALID_ARG (as skv_kcache_misa_topk's checks of q and p), NOMEM (the memo keeps what it held). */
SKV_API skv_status skv_kcache_misa_prepare(skv_kcache *c, int32_t seq, int32_t layer,
                                           const skv_indexer_query *q, const skv_misa_params *p);

/* skv_sparse_attention for worker ith's share of the (query token, KV head) lists, written to
 * their rows of out / out_max / out_lse. Errors: as skv_sparse_attention. */
SKV_API skv_status skv_sparse_attention_slice(skv_context *wctx, const skv_attn_batch *b,
                                              int32_t ith, int32_t nth, float *out,
                                              float *out_max, float *out_lse);

/* skv_store_gather for worker ith's share of the KV heads: their rows, list_start and list_len
 * entries (every slice computes the same row layout). The store and selection are only read;
 * the positions order sorts in wctx's workspace. *out_rows (may be NULL) gets the rows of the
 * whole selection. Errors: as skv_store_gather. */
SKV_API skv_status skv_store_gather_slice(skv_context *wctx, const skv_store *s,
                                          const skv_store_sel *sel, const skv_store_gather_out *o,
                                          int32_t ith, int32_t nth, int64_t *out_rows);

#ifdef __cplusplus
}
#endif

#endif
