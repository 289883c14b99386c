/* sparsekv — CPU sparse attention over selected tokens.
 *
 * After a selection (the indexer's top-k, or the clustered store's pages), each query token and
 * KV head attends over its own list of selected key/value rows. The rows are gathered into
 * caller buffers (skv_store_gather writes exactly this layout); lists may share rows (DSA's
 * top-k is common to all heads of a token).
 *
 *   out[t][h] = sum_i softmax_i(scale * q[t][h] . k[r_i]) v[r_i]
 *   over rows r_i of list (t, h / group), group = n_q_heads / n_kv_heads (GQA; MHA: 1),
 *   keeping only rows with k_pos[r] <= q_pos[t] when causal.
 *
 * Thread safety: see common.h. */
#ifndef SPARSEKV_ATTENTION_H
#define SPARSEKV_ATTENTION_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One call's query tokens, their lists of rows and the rows (see above). */
typedef struct skv_attn_batch {
    size_t struct_size;      /* sizeof(skv_attn_batch) */
    int32_t n_tokens;        /* query tokens, >= 0 */
    int32_t n_q_heads;       /* 1..4096, a multiple of n_kv_heads */
    int32_t n_kv_heads;      /* >= 1 */
    int32_t k_dim;           /* 1..1024 */
    int32_t v_dim;           /* 1..1024 */
    skv_dtype dtype;         /* of q, k and v: F32 or BF16 */
    float scale;             /* softmax scale, e.g. 1/sqrt(k_dim); finite */
    int causal;              /* 1: a row is used only if k_pos[row] <= q_pos[t]; 0: every row */
    const void *q;           /* [n_tokens][n_q_heads][k_dim]; head h reads KV head h / group */
    const int32_t *q_pos;    /* [n_tokens]; required when causal */
    int64_t n_rows;          /* rows in k, v, k_pos */
    const void *k;           /* [n_rows][k_dim] */
    const void *v;           /* [n_rows][v_dim] */
    const int32_t *k_pos;    /* [n_rows]; required when causal */
    const int64_t *list_start; /* [n_tokens][n_kv_heads]: first row of each list */
    const int32_t *list_len;   /* [n_tokens][n_kv_heads]: rows in it (>= 0); a list, empty or
                                  not, must lie in [0, n_rows): start >= 0, start + len <= n_rows */
} skv_attn_batch;

/* out [n_tokens][n_q_heads][v_dim] (f32). The partial form also returns, per (t, h), the
 * maximum scaled score m and the log-sum-exp lse = m + log(sum_i exp(s_i - m)) of the rows
 * used (m = lse = -INFINITY and out = 0 for an empty or fully masked list), so that a host can
 * merge it with attention computed elsewhere (skv_attention_merge). Either pointer may be NULL.
 * Special values: rows whose score is -inf get weight 0, and a list whose every score is -inf
 * gives the empty result; a NaN or +inf score (NaN or infinity in q or k, or overflow) makes
 * that (t, h)'s out, max and lse NaN; an infinity or NaN in v of a used row makes that output
 * column non-finite (a row of weight 0 may or may not); masked rows are never read.
 * Accumulation is in f32; bf16 inputs are widened exactly (where AVX-512-BF16 computes q.k, the
 * products are exact but bf16 subnormals count as zero). out may be NULL only if n_tokens is 0.
 * Errors: INVALID_ARG (sizes, NULL, a list outside [0, n_rows), scale not finite, causal not
 * 0 or 1, struct_size, unknown dtype), UNSUPPORTED (F16, FP8_E4M3), NOMEM; nothing is written
 * on error. Deterministic for any thread count, and from inside a host's parallel region.
 * Results differ between CPU levels only by rounding. */
SKV_API skv_status skv_sparse_attention(skv_context *ctx, const skv_attn_batch *b, float *out,
                                        float *out_max, float *out_lse);

/* Merges two partial results over disjoint row sets of the same (t, h) pairs, n pairs of
 * v_dim: o = (exp(lse_a - L) o_a + exp(lse_b - L) o_b) with L = log(exp(lse_a) + exp(lse_b));
 * writes o into o_a and L into lse_a. An empty side (lse = -INFINITY) leaves the other (copied
 * exactly into o_a, lse_a when a is the empty one); otherwise a NaN or +inf lse on either side
 * makes o and L NaN. Weights in double. Thread-safe; the b arrays must not overlap the a
 * arrays. Errors: INVALID_ARG (n < 0, v_dim < 1, NULL with n > 0). */
SKV_API skv_status skv_attention_merge(int64_t n, int32_t v_dim, float *o_a, float *lse_a,
                                       const float *o_b, const float *lse_b);

/* The plain scalar reference of skv_sparse_attention, in double precision internally (two
 * passes per (t, h), no buffers); same arguments, outputs, special values and errors (NOMEM
 * never). Thread-safe. For tests and for checking a host's own kernels. */
SKV_API skv_status skv_sparse_attention_reference(const skv_attn_batch *b, float *out,
                                                  float *out_max, float *out_lse);

#ifdef __cplusplus
}
#endif

#endif
