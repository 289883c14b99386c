/* sparsekv — the engines' own layouts and conventions, read where they lie:
 *   - indexer keys in a host's page pool with its block tables (vLLM, SGLang, DeepGEMM's
 *     fp8_paged_mqa_logits / fp8_fp4_paged_mqa_logits), zero copy;
 *   - ragged batches: many sequences' query tokens in one call, each token with its key range
 *     [ks, ke) of one buffer (DeepGEMM's fp8_mqa_logits);
 *   - DeepSeek-V4's compressed indexer entries (one per `ratio` tokens).
 * docs/indexer.md maps each engine's convention onto these. Thread safety: as common.h. */
#ifndef SPARSEKV_ENGINE_H
#define SPARSEKV_ENGINE_H

#include "indexer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- keys in a host's page pool --------------------------------------------------------------
 * Block b of the pool starts at pool + b * block_bytes and holds block_tokens keys: their
 * values, [block_tokens][head_dim] elements (MXFP4: [block_tokens][head_dim / 2] bytes), from
 * the block's start, then for FP8 block_tokens f32 scales and for MXFP4 [block_tokens][head_dim
 * / 32] UE8M0 bytes, at scale_offset (Q8_0 rows carry their scales: no scale area). DeepGEMM's FP8 block (64 tokens, head_dim 128: 132 bytes
 * a token) is block_tokens = 64, scale_offset = 64 * 128, block_bytes = 64 * 132; the fp4 one
 * (68 bytes a token) scale_offset = 64 * 64, block_bytes = 64 * 68. skv_kcache with n_layers = 1
 * stores its pages in this same layout. */
typedef struct skv_paged_keys {
    int32_t head_dim;      /* 1..4096 (MXFP4, Q8_0: a multiple of 32) */
    skv_dtype dtype;       /* F32, BF16, F16, FP8_E4M3, MXFP4_E2M1 or Q8_0 (scales in its rows) */
    int32_t block_tokens;  /* tokens per block, >= 1 */
    const void *pool;      /* the blocks (F32/BF16/F16/FP8: aligned to the element or the f32
                              scale) */
    int64_t n_blocks;      /* 0..INT32_MAX; valid ids: 0 .. n_blocks - 1 */
    size_t block_bytes;    /* from one block to the next: at least scale_offset + the scales */
    size_t scale_offset;   /* FP8/MXFP4: from a block's start to its scales, at least the values'
                              bytes (FP8: a multiple of 4); ignored for the others */
} skv_paged_keys;

/* A batch of sequences over the pool. Sequence i has context_lens[i] keys, key s in block
 * block_table[i * table_stride + s / block_tokens], row s % block_tokens; its query tokens are
 * q tokens q_start[i] .. q_start[i + 1] - 1 (next_n >= 1 for MTP; NULL q_start: one token each,
 * token i). Without q->positions, token j of a sequence's n sees its first len - n + j + 1 keys
 * (DeepGEMM's rule: the last token sees them all); with them, key s is visible to token t iff
 * s <= positions[t], as everywhere. Blocks may be shared between sequences and come in any
 * order; a last block may be partly filled. */
typedef struct skv_paged_batch {
    int32_t n_seqs;              /* sequences, >= 0 */
    const int32_t *block_table;  /* [n_seqs][table_stride] */
    int64_t table_stride;        /* >= the blocks of the longest sequence (any, with one) */
    const int32_t *context_lens; /* [n_seqs], >= 0 */
    const int32_t *q_start;      /* [n_seqs + 1], q_start[0] = 0, non-decreasing, last =
                                    q->n_tokens; or NULL */
} skv_paged_batch;

/* skv_indexer_topk of every query token over its sequence's keys, read in place: out_idx
 * [n_tokens][k] key positions within the sequence. The result equals skv_kcache_topk's on the
 * same keys bit for bit (and skv_indexer_topk's on them gathered). Errors: those of
 * skv_indexer_topk, and INVALID_ARG for a block id outside the pool, a misplaced or missing
 * scale area, misaligned FP8/F32/BF16/F16 blocks, a bad q_start or length. Arguments are checked
 * before anything is written; only an allocation failure part way (NOMEM) leaves the earlier
 * sequences' outputs written. */
SKV_API skv_status skv_paged_topk(skv_context *ctx, const skv_paged_keys *keys,
                                  const skv_paged_batch *batch, const skv_indexer_query *q,
                                  int32_t k, int32_t *out_idx, float *out_score);

/* The scores alone (DeepGEMM's fp8_paged_mqa_logits / fp8_fp4_paged_mqa_logits): query token
 * t's score for key s of its sequence at out[t * out_stride + s], the formula and bits of
 * skv_indexer_scores on the same keys; -inf for the keys the token does not see, and for the
 * columns from its sequence's length up to out_stride (every column is written). out_stride
 * >= every context_lens[i] (DeepGEMM's max_context_len). n_sink / n_window play no part.
 * Errors: those of skv_paged_topk, and INVALID_ARG for out NULL with tokens, out_stride < 0 or
 * below a length. Arguments are checked before anything is written; only an allocation
 * failure part way (NOMEM) leaves the earlier sequences' rows written. */
SKV_API skv_status skv_paged_scores(skv_context *ctx, const skv_paged_keys *keys,
                                    const skv_paged_batch *batch, const skv_indexer_query *q,
                                    float *out, int64_t out_stride);

/* ---- ragged batches on one key buffer ---------------------------------------------------------
 * Query token t sees keys [ks[t], ke[t]) of `keys` (DeepGEMM fp8_mqa_logits' cu_seqlen_ks /
 * cu_seqlen_ke); q->positions must be NULL. Tokens with one ks form one sequence (one driver
 * call each, as separate calls would be). out_idx holds absolute key indices, or indices
 * relative to ks[t] with SKV_RAGGED_RELATIVE (-1 padding either way); forced keys (n_sink,
 * n_window) count from each token's ks. The results equal those of skv_indexer_topk on each
 * sequence's keys. Errors: as skv_indexer_topk, INVALID_ARG for ks > ke, ks < 0, ke > n_keys,
 * positions given, unknown flags. */
enum { SKV_RAGGED_RELATIVE = 1 };
/* The ragged top-k above. Thread safety: as the context. */
SKV_API skv_status skv_indexer_topk_ragged(skv_context *ctx, const skv_indexer_query *q,
                                           const skv_key_block *keys, const int32_t *ks,
                                           const int32_t *ke, int32_t k, uint32_t flags,
                                           int32_t *out_idx, float *out_score);

/* ---- compressed indexer entries (DeepSeek-V4) --------------------------------------------------
 * V4's compressor emits one indexer key per `ratio` tokens (4 for the indexer's layers): entry
 * i summarises tokens [i * ratio, (i + 1) * ratio) and exists once the last of them has been
 * seen. A host keeps the entries as keys of their own (a key block, a key-cache layer or host
 * pages: entry i is key i), appending one whenever skv_compressed_count grows. The reference's
 * causal rule: a query token at position p sees entries i < (p + 1) / ratio (floor), i.e. the
 * entries whose tokens are all at or before p. */

/* Entries that exist after n_tokens tokens: n_tokens / ratio. */
SKV_API int64_t skv_compressed_count(int64_t n_tokens, int32_t ratio);

/* Appends to (seq, layer) of a key cache the entries the host's compressor emitted as the
 * sequence grew to n_tokens tokens: afterwards the layer holds skv_compressed_count(n_tokens,
 * ratio) entries, entry i at key i. entries->n_keys must be that count minus the entries
 * already stored: on a decode step 1 when the step completed a group of `ratio` tokens and 0
 * otherwise (a no-op), for a prefill chunk every group it completed. entries are in the
 * cache's dtype or F32 (quantised, as skv_kcache_append). The layer must hold entries only.
 * Errors: INVALID_ARG (ratio < 1, n_tokens < 0 or past INT32_MAX, an entry count that is not
 * the one the token count implies: entries missing, extra, or n_tokens behind the stored
 * ones), and those of skv_kcache_append; on error nothing changed. Thread safety: as
 * skv_kcache_append. */
SKV_API skv_status skv_kcache_append_compressed(skv_kcache *c, int32_t seq, int32_t layer,
                                                int64_t n_tokens, int32_t ratio,
                                                const skv_key_block *entries);

/* Token positions to entry positions for skv_indexer_query.positions: out[t] = (p + 1) /
 * ratio - 1 (floor), the last entry token t may see (-1: none). out may be positions.
 * Errors: INVALID_ARG (ratio < 1, NULL with n > 0). */
SKV_API skv_status skv_compressed_positions(const int32_t *positions, int32_t n, int32_t ratio,
                                            int32_t *out);

/* Selected entries to the token positions they cover, for sparse attention: out [n][ratio],
 * entry e -> e * ratio .. e * ratio + ratio - 1, -1 padding -> ratio -1s. Errors: INVALID_ARG
 * (ratio < 1, an entry past INT32_MAX / ratio, NULL with n > 0). */
SKV_API skv_status skv_compressed_expand(const int32_t *entries, int64_t n, int32_t ratio,
                                         int32_t *out);

/* The distinct pages of page_tokens tokens that the selected entries' tokens lie on, ascending:
 * out_pages (room for n * (ratio / page_tokens + 2)) gets *n_out logical page numbers (a
 * sequence's block-table slots). -1 entries are skipped. Errors: INVALID_ARG. */
SKV_API skv_status skv_compressed_pages(const int32_t *entries, int64_t n, int32_t ratio,
                                        int32_t page_tokens, int32_t *out_pages, int64_t *n_out);

#ifdef __cplusplus
}
#endif

#endif
