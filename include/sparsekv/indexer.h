/* sparsekv — the lightning indexer (DeepSeek Sparse Attention), top-k selection, and the paged
 * indexer key cache.
 *
 *   I[t][s] = sum_h w[t][h] * max(0, q[t][h] . k[s])      (s visible to t)
 *
 * Kernels borrow the caller's pointers for the duration of the call only. Thread safety: see
 * common.h (one context per thread). */
#ifndef SPARSEKV_INDEXER_H
#define SPARSEKV_INDEXER_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Query side of the indexer for n_tokens tokens. */
typedef struct skv_indexer_query {
    int32_t n_tokens;         /* query tokens, >= 0 */
    int32_t n_heads;          /* indexer heads, 1..4096 */
    int32_t head_dim;         /* 1..4096, the keys' */
    skv_dtype dtype;          /* F32, BF16, F16 or FP8_E4M3 */
    const void *q;            /* [n_tokens][n_heads][head_dim], contiguous */
    const float *q_scale;     /* FP8 only: [n_tokens][n_heads], or NULL for scales of 1 (DeepGEMM
                                 and vLLM fold the q scale into the weights); else NULL */
    const float *weights;     /* [n_tokens][n_heads] */
    const int32_t *positions; /* [n_tokens]; key s visible to token t iff s <= positions[t];
                                 NULL = every key visible */
    /* Forced keys, top-k only (0 = off, the default): the first n_sink and the last n_window
       keys visible to a token are always selected, counted within k (n_sink + n_window <= k).
       They come first in out_idx, in ascending order, with out_score +INFINITY; the other
       k - (their count) places hold the best of the remaining keys as usual. Every top-k path
       (contiguous, key cache, MISA/HISA, IndexCache) honours them; scores ignore them. */
    int32_t n_sink;           /* the first n_sink visible keys, >= 0 */
    int32_t n_window;         /* the last n_window visible keys, >= 0 */
    const uint16_t *weights_bf16; /* the weights as bf16 [n_tokens][n_heads] instead (engines that
                                     keep the gates in bf16); then weights is NULL. Widened exactly */
} skv_indexer_query;

/* The largest k of any top-k, and of any candidate count that becomes one (MISA-dagger's C,
 * HISA's 4k): each thread keeps 3k candidates of 8 bytes while it selects, so 2^26 keeps that
 * state within 1.5 GiB and every count within int32. Larger k is refused (INVALID_ARG). */
#define SKV_TOPK_MAX_K (1 << 26)

/* Indexer keys, one per token, shared by all heads. n_keys <= INT32_MAX. */
typedef struct skv_key_block {
    int64_t n_keys;       /* 0..INT32_MAX */
    int32_t head_dim;     /* 1..4096 (MXFP4, Q8_0: a multiple of 32) */
    skv_dtype dtype;      /* F32, BF16, F16, FP8_E4M3, MXFP4_E2M1 or Q8_0 */
    const void *k;        /* [n_keys][head_dim] elements, contiguous (MXFP4: [n_keys][head_dim
                             / 2] bytes, packed as skv_dtype says; Q8_0: [n_keys][head_dim / 32]
                             blocks of 34 bytes, ggml's block_q8_0, scales inside) */
    const float *k_scale; /* FP8 only: [n_keys]; else NULL */
    const uint8_t *k_mx_scale; /* MXFP4 only: [n_keys][head_dim / 32] UE8M0 bytes; else NULL */
} skv_key_block;

/* Query and key dtypes may differ (MXFP4 and Q8_0 are key dtypes only). F16 (on either side)
 * and Q8_0 keys are widened exactly to f32 in the kernels (F16C / AVX-512 vcvtph2ps, a step of
 * 32 keys at a time into L1) and scored with f32 arithmetic: the result is that of the same call
 * on f32 values equal to the dequantised ones, bit for bit. With AVX-512-BF16, BF16/FP8
 * queries against BF16/FP8/MXFP4 keys use bf16 dot products (fp8 -> bf16 and mxfp4 -> bf16 are
 * exact; products are exact in f32, sums are f32; bf16
 * subnormals, below 2^-126, count as zero there, as vdpbf16ps flushes them); otherwise
 * everything is widened exactly to f32. Scores are deterministic for a given CPU level and
 * independent of the thread count; levels may differ in the last bits (summation order).
 * Limits: 1 <= n_heads <= 4096, 1 <= head_dim <= 4096, n_tokens >= 0 (0 is a no-op). */

/* The opt-in int8 path (default off): with on = 1, every indexer call of this context on Q8_0
 * keys (contiguous, key cache, host pages, MISA/HISA's exact passes) quantises each (token,
 * head) query to int8 inside the call (scale amax / 127 of its dequantised values, codes
 * roundf(x / scale), infinities +-127; a NaN makes that head's term NaN) and scores with
 * integer dot products per 32-value block (AVX512-VNNI or AVX-VNNI vpdpbusd where the CPU has
 * them, else a scalar reference):
 *   score = sum_h (w[h] * scale[h]) * relu(sum_b d_b * sum_t q8[h][32b + t] * k_b[t])
 * in an order fixed in lib/kernels/q8i8.h, so every level gives the scalar reference's scores
 * and selection bit for bit. The query's rounding changes the scores: an approximation the host
 * opts into (its top-k overlap with the exact path: docs/indexer.md). Other key dtypes are not
 * affected. Errors: INVALID_ARG (NULL context, on not 0 or 1). */
SKV_API skv_status skv_context_set_int8_queries(skv_context *ctx, int on);

/* out[t][s] = sum_h w[t][h] * max(0, q[t][h] . k[s]); -INFINITY where s is not visible.
 * For FP8, q and k are the dequantised values (value * scale); for Q8_0 keys, qs * d.
 * out: [n_tokens][n_keys].
 * Errors: INVALID_ARG (NULL pointers, sizes out of range, head_dim mismatch, scale pointer
 * missing for FP8 or MXFP4 or present otherwise, MXFP4 or Q8_0 with head_dim not a multiple of
 * 32, unknown dtype), UNSUPPORTED (MXFP4 or Q8_0 queries), NOMEM. */
SKV_API skv_status skv_indexer_scores(skv_context *ctx, const skv_indexer_query *q,
                                      const skv_key_block *keys, float *out);

/* Top-k visible keys per query token: out_idx[t][0..k) in descending score, ties to the lower
 * index, -1 padding when fewer than k keys are visible (out_score padding: -INFINITY). ReLU
 * propagates NaN (a NaN in q or k makes that score NaN), and a NaN score ranks below every
 * number, -INFINITY included. out_score may be NULL; a zero score is reported as +0 and a NaN
 * score as the default quiet NaN. The selection is exactly that of sorting the scores of
 * skv_indexer_scores, for any thread count.
 *
 * Nothing of size n_tokens x n_keys is materialised: scores are computed on tiles and streamed
 * through a threshold filter. The workspace a call needs is at most
 *   threads * (8 * (3k + 272) * 8 + 8 * H64 * (head_dim + 3) * 4 + 256 * head_dim * 4 + 16 KiB)
 * bytes, plus n_tokens * threads * (8k + 4) when fewer than `threads` blocks of 8 tokens split
 * their keys across threads (decode); H64 is n_heads rounded up to 64. It is independent of
 * n_keys, and of n_tokens except in that split case. The context holds it for later calls,
 * grown to 1.25 times a new need (rounded up to 4 KiB) so that slowly growing calls do not
 * reallocate each time.
 * Errors: as skv_indexer_scores, plus INVALID_ARG for k <= 0 or k > SKV_TOPK_MAX_K. */
SKV_API skv_status skv_indexer_topk(skv_context *ctx, const skv_indexer_query *q,
                                    const skv_key_block *keys, int32_t k, int32_t *out_idx,
                                    float *out_score);

/* Top-k of f32 rows: row r is x[r * row_stride + 0 .. len_r), len_r = lengths[r] (0 <= len_r
 * <= n_cols) or n_cols when lengths is NULL. Same order, tie, NaN and padding rules as
 * skv_indexer_topk. out_idx [n_rows][k]; out_val [n_rows][k] or NULL. A histogram/radix
 * select, deterministic for any thread count. Errors: INVALID_ARG (row_stride < n_cols,
 * n_cols > INT32_MAX, k <= 0, k > SKV_TOPK_MAX_K, NULL), NOMEM. */
SKV_API skv_status skv_topk_rows(skv_context *ctx, const float *x, int64_t n_rows, int64_t n_cols,
                                 int64_t row_stride, const int64_t *lengths, int32_t k,
                                 int32_t *out_idx, float *out_val);

/* ---- paged indexer key cache ------------------------------------------------------------- */

/* Keys of many sequences for n_layers layers, in pages of page_tokens tokens. A page id serves
 * every layer (one block table per sequence); each (page, layer) slot stores page_tokens rows
 * of head_dim values and, for FP8, then page_tokens f32 scales (132 bytes per token for
 * head_dim 128, DeepGEMM's paged layout), then the pooled chunk sums when pool_chunk > 0,
 * then the lane copy when lane_copy is set. Sequences are numbered by the cache. Forked
 * sequences share pages by reference count; a shared page is copied on its first write. Each
 * layer has its own length (layers append one after another during a step). Page memory is
 * returned as soon as no sequence references it; the small bookkeeping arrays (sequence slots,
 * page ids) keep their high-water size until the cache is destroyed.
 * Thread safety: as the context it was created from. */
typedef struct skv_kcache skv_kcache;

/* Key cache settings: initialise with skv_kcache_params_init, then change fields. */
typedef struct skv_kcache_params {
    size_t struct_size;   /* sizeof(skv_kcache_params); set by skv_kcache_params_init */
    int32_t n_layers;     /* required: 1..65536 (default 1) */
    int32_t head_dim;     /* required: 1..4096 (default 128) */
    skv_dtype dtype;      /* F32, BF16, F16, FP8_E4M3, MXFP4_E2M1 (head_dim a multiple of 32:
                             each slot holds page_tokens * head_dim / 2 bytes of codes, then
                             page_tokens * head_dim / 32 scale bytes, 68 bytes a token for
                             head_dim 128 as the engines' fp4 pages) or Q8_0 (head_dim a
                             multiple of 32: ggml's blocks, 136 bytes a token for head_dim
                             128); default FP8_E4M3 */
    int32_t page_tokens;  /* tokens per page, 1..65536; default 64 */
    int64_t max_pages;    /* pages in use across all sequences, 0..2^31-1; default 0 = no limit */
    int32_t max_seqs;     /* live sequences; default 0 = no limit (ids below 2^30) */
    uint32_t quant_flags; /* skv_quantize_fp8 flags used when F32 keys are appended to an FP8
                             cache; default 0 */
    int32_t pool_chunk;   /* pooled block keys for MISA/HISA routing (router.h): running f32 sums
                             of every chunk of this many tokens, a divisor of page_tokens, kept in
                             the page (head_dim * 4 bytes per chunk and layer), updated on every
                             append and removal; 0 = none; default 0 */
    int32_t lane_copy;    /* 1: also keep each FP8 key in the page as "fp8 tiles" of 16 tokens,
                             the layout the few-head decode kernel reads without unpacking (MISA's
                             routed pass, 8 heads or fewer: about 1.5x faster per key); head_dim
                             bytes more per token and layer, the same scores to the bit; needs
                             FP8, head_dim a multiple of 32 and page_tokens of 16; default 0 */
} skv_kcache_params;

/* What a key cache holds (skv_kcache_get_stats). */
typedef struct skv_kcache_stats {
    size_t struct_size;       /* set by the caller to sizeof(skv_kcache_stats) */
    int32_t n_seqs;           /* live sequences */
    int64_t pages_in_use;     /* distinct pages referenced by any sequence */
    int64_t pages_shared;     /* of those, referenced by more than one sequence */
    int64_t page_refs;        /* block-table entries over all sequences */
    int64_t bytes_per_token;  /* bytes_per_page / page_tokens: values + scales over all layers,
                                 with the page's alignment padding shared out */
    int64_t bytes_per_page;   /* bytes of one page over all layers */
    int64_t bytes_in_use;     /* pages_in_use * bytes_per_page */
} skv_kcache_stats;

/* Fills *p with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_kcache_params_init(skv_kcache_params *p);

/* Errors: INVALID_ARG, NOMEM. The caller owns *out and frees it with skv_kcache_destroy, before
 * destroying ctx (the cache allocates, logs and computes with it). */
SKV_API skv_status skv_kcache_create(skv_context *ctx, const skv_kcache_params *p,
                                     skv_kcache **out);
SKV_API void skv_kcache_destroy(skv_kcache *c); /* NULL is fine */

/* New empty sequence. Errors: CAPACITY (max_seqs), NOMEM, INVALID_ARG (NULL). */
SKV_API skv_status skv_kcache_seq_create(skv_kcache *c, int32_t *out_seq);
/* Frees the sequence; pages no other sequence references are released. Errors: INVALID_ARG. */
SKV_API skv_status skv_kcache_seq_free(skv_kcache *c, int32_t seq);
/* New sequence with the same keys as src, sharing its pages. Errors: INVALID_ARG, CAPACITY,
 * NOMEM. */
SKV_API skv_status skv_kcache_seq_fork(skv_kcache *c, int32_t src, int32_t *out_seq);
/* Removes tokens [p0, p1) in every layer (p1 < 0 or past the end: to the end); later tokens
 * move down by the removed count. Errors: INVALID_ARG, CAPACITY or NOMEM (when shared pages
 * must be copied); on error nothing changed. */
SKV_API skv_status skv_kcache_seq_remove(skv_kcache *c, int32_t seq, int64_t p0, int64_t p1);
/* Tokens stored for the sequence in a layer. Errors: INVALID_ARG (NULL, an unknown seq, layer
 * out of range). */
SKV_API skv_status skv_kcache_seq_length(const skv_kcache *c, int32_t seq, int32_t layer,
                                         int64_t *out_len);

/* Appends keys->n_keys keys at the end of (seq, layer). keys->dtype is the cache's dtype, or
 * F32 (narrowed, or quantised for an FP8, MXFP4 or Q8_0 cache, on append: skv_quantize_fp8
 * with quant_flags, skv_quantize_mxfp4, skv_quantize_q8_0 with ggml's rounding). Errors: INVALID_ARG, CAPACITY
 * (max_pages), NOMEM; on error nothing changed. */
SKV_API skv_status skv_kcache_append(skv_kcache *c, int32_t seq, int32_t layer,
                                     const skv_key_block *keys);

/* Copies n stored keys starting at token `start` out, in the cache's dtype: keys_out
 * [n][head_dim] elements (MXFP4: [n][head_dim / 2] bytes; Q8_0: [n][head_dim / 32] blocks),
 * scales_out [n] (FP8 only; NULL otherwise). Errors: INVALID_ARG (NULL, an unknown seq, layer
 * out of range, [start, start + n) past the layer's length, scales_out given or missing against
 * the dtype). */
SKV_API skv_status skv_kcache_read(const skv_kcache *c, int32_t seq, int32_t layer, int64_t start,
                                   int64_t n, void *keys_out, float *scales_out);
/* The UE8M0 scale bytes of n stored MXFP4 keys: scales_out [n][head_dim / 32]. Errors:
 * INVALID_ARG (also a cache of another dtype). */
SKV_API skv_status skv_kcache_read_mx_scales(const skv_kcache *c, int32_t seq, int32_t layer,
                                             int64_t start, int64_t n, uint8_t *scales_out);

/* skv_indexer_scores / skv_indexer_topk over the keys of (seq, layer), read in place from the
 * pages (no gather). Results equal those of the same call on the contiguous keys.
 * Errors: as skv_indexer_scores / skv_indexer_topk, and INVALID_ARG for NULL c, an unknown seq or a layer out of
 * range. Changes nothing in the cache: it uses the cache's context's workspace. */
SKV_API skv_status skv_kcache_scores(skv_kcache *c, int32_t seq, int32_t layer,
                                     const skv_indexer_query *q, float *out);
SKV_API skv_status skv_kcache_topk(skv_kcache *c, int32_t seq, int32_t layer,
                                   const skv_indexer_query *q, int32_t k, int32_t *out_idx,
                                   float *out_score);

/* Errors: INVALID_ARG (NULL, struct_size too small). */
SKV_API skv_status skv_kcache_get_stats(const skv_kcache *c, skv_kcache_stats *out);

#ifdef __cplusplus
}
#endif

#endif
