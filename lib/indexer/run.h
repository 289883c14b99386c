/* The indexer driver shared by contiguous keys and the paged key cache. */
#ifndef SKV_INDEXER_RUN_H
#define SKV_INDEXER_RUN_H

#include "core/core.h"
#include "sparsekv/engine.h"
#include "sparsekv/indexer.h"

/* The means of whole pooled blocks of `block` tokens that a key cache keeps for the router
 * across calls (a sequence's keys only grow at the end: decode computes just the blocks it
 * completed): block b's mean at mean + b * head_dim for b < valid, room for cap. */
typedef struct skv_block_memo {
    float *mean;
    int64_t valid, cap;
    int32_t block;
} skv_block_memo;

/* Room for n means of blocks of `block` tokens (another block size's are forgotten); 0 when
 * it cannot grow (what it holds stays valid). */
int skv_block_memo_reserve(skv_context *ctx, skv_block_memo *m, int64_t n, int32_t block,
                           int32_t head_dim);
/* Forgets the means of key's block and after (the keys from there on changed). */
void skv_block_memo_forget(skv_block_memo *m, int64_t key);
void skv_block_memo_free(skv_context *ctx, skv_block_memo *m, int32_t head_dim);

/* Where the keys are: contiguous rows, or pages through a block table. */
typedef struct skv_key_src {
    int64_t n_keys;
    int32_t head_dim;
    skv_dtype dtype;
    size_t row_bytes;
    /* contiguous */
    const uint8_t *base;
    const float *scale; /* FP8 only */
    const uint8_t *mx_scale; /* MXFP4 only: [n_keys][head_dim / 32] */
    /* paged, when table != NULL: key s is row s % page_tokens of page table[s / page_tokens];
       that page's slot starts at pages[id] + slot_offset, its scales at + scale_offset
       (page_tokens f32 for FP8, page_tokens * head_dim / 32 bytes for MXFP4) */
    const int32_t *table;
    uint8_t *const *pages;
    size_t slot_offset, scale_offset;
    int32_t page_tokens;
    /* pooled chunk sums (router.h), when pool_chunk > 0: contiguous at pool_sums
       [n_chunks][head_dim], or paged: chunk c of a page at page + pool_offset + c * head_dim */
    int32_t pool_chunk;
    const float *pool_sums;
    size_t pool_offset;
    /* paged FP8 keys with a lane copy (skv_kcache_params.lane_copy) when lane_offset > 0: the
       fp8 tile of keys 16i..16i+15 of a page at page + lane_offset + i * 16 * head_dim */
    size_t lane_offset;
    /* the key cache's block means for (seq, layer), when it keeps pooled sums; else NULL */
    skv_block_memo *memo;
    /* a slice's source: the memo is read when it holds every block wanted, never changed
       (other workers read it at once) */
    int memo_frozen;
    /* per-token key lists (top-k only): token t sees exactly keys lists[t * list_stride + i],
       i < list_len[t], ascending; positions are ignored and results are keys of src */
    const int32_t *lists, *list_len;
    int64_t list_stride;
} skv_key_src;

/* Key s as stored (row_bytes bytes) and, for FP8, its scale. */
const uint8_t *skv_key_row(const skv_key_src *src, int64_t s, const float **scale);
/* Key s as f32 (dequantised; the same values at every kernel level). */
void skv_key_row_f32(const skv_kernels *kern, const skv_key_src *src, int64_t s, float *out);
/* The pooled sum of chunk i (keys [i * pool_chunk, ...)); src->pool_chunk must be > 0. */
const float *skv_key_chunk_sum(const skv_key_src *src, int64_t i);

/* A contiguous key block as a source, validated (pointers, sizes, dtype, scales). */
skv_status skv_key_src_from_block(skv_context *ctx, const skv_key_block *keys, skv_key_src *out);

/* The keys of (seq, layer) in a key cache as a source, and the cache's context. */
skv_status skv_kcache_src(const skv_kcache *c, int32_t seq, int32_t layer, skv_key_src *out);
skv_context *skv_kcache_context(const skv_kcache *c);

/* Validates the query against the keys (dims, dtypes, pointers). */
skv_status skv_indexer_check_query(skv_context *ctx, const skv_indexer_query *q,
                                   int32_t head_dim, skv_dtype key_dtype);

/* Token t's weights as f32: q->weights' row, or its bf16 row widened into tmp [n_heads]. */
static inline const float *skv_query_weights(const skv_indexer_query *q, int32_t t, float *tmp)
{
    if (q->weights)
        return q->weights + (size_t)t * q->n_heads;
    for (int32_t h = 0; h < q->n_heads; h++)
        tmp[h] = skv_bf16_bits_f32(q->weights_bf16[(size_t)t * q->n_heads + h]);
    return tmp;
}

/* The query of tokens t0.. of q: its pointers moved to token t0 (n_tokens and positions are the
 * caller's). */
static inline skv_indexer_query skv_query_from(const skv_indexer_query *q, int32_t t0)
{
    const size_t hd = (size_t)q->n_heads * (size_t)q->head_dim;
    skv_indexer_query s = *q;
    s.q = (const uint8_t *)q->q + (size_t)t0 * hd * skv_dtype_size(q->dtype);
    s.q_scale = q->q_scale ? q->q_scale + (size_t)t0 * q->n_heads : NULL;
    s.weights = q->weights ? q->weights + (size_t)t0 * q->n_heads : NULL;
    s.weights_bf16 = q->weights_bf16 ? q->weights_bf16 + (size_t)t0 * q->n_heads : NULL;
    return s;
}

/* Token t's visible keys v (returned), and its forced ones: sinks [0, sink_end) and window
 * [window_start, v) (see skv_indexer_query). */
int64_t skv_forced_bounds(const skv_indexer_query *q, int32_t t, int64_t n_keys, int64_t *sink_end,
                          int64_t *window_start);
/* Puts each token's forced keys first in its ranked top-k (out_score +INFINITY), keeping the
 * best k - f others in rank order; nothing when q has none. */
void skv_forced_apply(const skv_indexer_query *q, int64_t n_keys, int32_t k, int32_t *out_idx,
                      float *out_score);

/* Scores (scores != NULL) or top-k (out_idx != NULL) of every query token. */
skv_status skv_indexer_run(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                           int32_t k, float *scores, int32_t *out_idx, float *out_score);
/* Scores only, token t's row at scores + t * stride (stride >= n_keys): its columns from the
 * token's visible keys up to stride are -inf (host page logits, whose rows are as long as the
 * longest sequence). */
skv_status skv_indexer_run_scores(skv_context *ctx, const skv_indexer_query *q,
                                  const skv_key_src *src, float *scores, int64_t stride);
/* The same top-k of every token as a set: its indices in ascending order, padded with -1
 * (candidate lists, where ranking them would be wasted). */
skv_status skv_indexer_run_set(skv_context *ctx, const skv_indexer_query *q,
                               const skv_key_src *src, int32_t k, int32_t *out_idx);


/* ---- host-owned pages (host.c), shared by skv_paged_topk and its slice ---- */

/* Validates keys, batch and query, k (with the forced keys within it) and the output. */
skv_status skv_paged_check(skv_context *ctx, const skv_paged_keys *keys, const skv_paged_batch *b,
                           const skv_indexer_query *q, int32_t k, const void *out);

/* Room for one sequence at a time: its page pointers, an identity table over them, its
 * tokens' positions (in ctx's auxiliary workspace slot). */
typedef struct skv_paged_seqs {
    uint8_t **pages;
    int32_t *table, *pos;
} skv_paged_seqs;
skv_status skv_paged_scratch(skv_context *ctx, const skv_paged_keys *keys, const skv_paged_batch *b,
                             int slot, skv_paged_seqs *out);

/* Sequence i as a source over w (its pages filled) and its tokens as a query of their own,
 * the first of them token *t0 of q (n_tokens 0: none; src->n_keys 0: they see nothing). */
skv_indexer_query skv_paged_seq(const skv_paged_keys *keys, const skv_paged_batch *b,
                                const skv_indexer_query *q, int32_t i, const skv_paged_seqs *w,
                                skv_key_src *src, int32_t *t0);
#endif
