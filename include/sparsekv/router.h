/* sparsekv — MISA head routing and hierarchical indexers: most of the indexer's work, skipped.
 *
 * MISA: a router scores the indexer heads of each query token on pooled block keys; only the
 * top-h heads score tokens (gates not renormalised), then top-k. MISA-dagger keeps C candidates
 * of the routed pass and re-ranks them with all heads. HISA scores pooled blocks with all heads,
 * keeps the best blocks (the first and last visible ones always) and scores their tokens
 * exactly. Every approximation has a dial back to the exact dense result: h = H, C >= visible
 * keys, blocks * block >= visible keys; and a length gate runs the dense indexer below a
 * crossover length.
 *
 * Pooled block keys: running f32 sums of the dequantised keys over chunks of `chunk` tokens
 * (the last chunk partial), from which the mean of any block of a multiple of `chunk` tokens
 * follows; a block partly past a query's last visible key is averaged over its visible keys.
 * The paged key cache keeps them up to date as keys are appended (skv_kcache_params.pool_chunk);
 * for contiguous keys skv_pool_keys computes them once and the host passes them back in.
 *
 * Thread safety: see common.h. */
#ifndef SPARSEKV_ROUTER_H
#define SPARSEKV_ROUTER_H

#include "common.h"
#include "indexer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Chunk sums of contiguous keys: [ceil(n_keys / chunk)][head_dim] f32, keys summed in order
 * (the same values the key cache keeps). */
typedef struct skv_pooled_keys {
    int32_t chunk;     /* tokens per chunk, >= 1 */
    const float *sums; /* [ceil(keys->n_keys / chunk)][keys->head_dim] */
} skv_pooled_keys;

/* Fills sums [ceil(n_keys / chunk)][head_dim]. Errors: INVALID_ARG. */
SKV_API skv_status skv_pool_keys(const skv_key_block *keys, int32_t chunk, float *sums);

/* The mean of each block of `block` tokens (a multiple of the pooled chunk) over keys
 * [0, n_keys), the last block over its true length: means [ceil(n_keys / block)][head_dim],
 * counts [ceil(n_keys / block)] (may be NULL). From contiguous keys with their pooled sums,
 * or from the key cache. Errors: INVALID_ARG (NULL keys, pooled or means with keys, block not
 * a multiple of the chunk; an unknown seq or layer), STATE (a cache
 * without pooled sums). Thread-safe for contiguous keys; the cache's: as the cache. */
SKV_API skv_status skv_block_means(const skv_key_block *keys, const skv_pooled_keys *pooled,
                                   int32_t block, float *means, int32_t *counts);
SKV_API skv_status skv_kcache_block_means(const skv_kcache *c, int32_t seq, int32_t layer,
                                          int32_t block, float *means, int32_t *counts);

/* ---- routing ------------------------------------------------------------------------------- */

typedef enum skv_route_mode {
    /* E[t][h] = sum over visible blocks b of |w[t][h]| * max(0, q[t][h] . mean_b) */
    SKV_ROUTE_POOLED = 0,
    /* E[t][h] = |q[t][h]| (Euclidean norm of the dequantised query) */
    SKV_ROUTE_QNORM = 1,
    /* E[t][h] = w[t][h] * max(0, q[t][h] . k[positions[t]]), the token's own key (0 when it is
       not among the keys) */
    SKV_ROUTE_OWN_KEY = 2,
    /* E[t][h] = the largest over visible blocks b of |w[t][h]| * max(0, q[t][h] . mean_b): a
       head's strongest block instead of its total (the top-k keeps a head's highest scores,
       which a sum over every block dilutes). Not in the paper; the same blocks, pooled sums
       and cost as SKV_ROUTE_POOLED. docs/misa.md compares the two. */
    SKV_ROUTE_POOLED_MAX = 3
} skv_route_mode;

/* MISA settings: initialise with skv_misa_params_init, then change fields. */
typedef struct skv_misa_params {
    size_t struct_size;   /* sizeof(skv_misa_params); set by skv_misa_params_init */
    skv_route_mode route; /* default SKV_ROUTE_POOLED */
    int32_t heads;        /* h, routed heads per query token, 1..n_heads; default 8 */
    int32_t block;        /* pooled block in tokens, a multiple of the pooled chunk; default 1024 */
    int32_t candidates;   /* MISA-dagger: C >= k candidates re-ranked with all heads;
                             SKV_CANDIDATES_4K (-1) = 4 * k, the papers' choice; 0 = plain
                             MISA; default 0 */
    int64_t min_length;   /* the length gate: when no query token sees this many keys, run the
                             dense indexer; -1 = the measured crossover below; default -1 */
} skv_misa_params;

/* Crossover lengths measured on the development machine (bench/misa_bench.c, fp8 keys, H = 64,
 * decode, 2 threads): below these the routed passes do not beat the dense indexer. MISA (h = 8)
 * was faster at every length swept from 1K; MISA-dagger (C = 8192) from 16K (0.89-0.96 of dense
 * there with the key cache's lane copy, 0.94-0.98 without; at 8K its candidates are every key);
 * HISA (B = 128, m = 64) from 16K (at 8K its 64 blocks hold every key: it is dense). */
#define SKV_CANDIDATES_4K (-1)                 /* "4 * k candidates", MISA-dagger and HISA */
#define SKV_MISA_DAGGER_4K SKV_CANDIDATES_4K /* its older name, kept */
#define SKV_MISA_MIN_LENGTH 1024             /* MISA's crossover (above) */
#define SKV_MISA_DAGGER_MIN_LENGTH 16384     /* MISA-dagger's crossover */
#define SKV_HISA_MIN_LENGTH 16384            /* HISA's crossover */

/* Fills *p with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_misa_params_init(skv_misa_params *p);

/* The routed heads of every query token: out_heads [n_tokens][h] in descending router score,
 * ties to the lower head; out_scores [n_tokens][n_heads] the router scores (may be NULL).
 * pooled: required for SKV_ROUTE_POOLED and SKV_ROUTE_POOLED_MAX, ignored otherwise.
 * Errors: INVALID_ARG (h out of range, block not a multiple of the chunk, pooled missing),
 * NOMEM. */
SKV_API skv_status skv_route_heads(skv_context *ctx, const skv_indexer_query *q,
                                   const skv_key_block *keys, const skv_pooled_keys *pooled,
                                   const skv_misa_params *p, int32_t *out_heads,
                                   float *out_scores);

/* MISA (and MISA-dagger with p->candidates) top-k, same outputs and rules as skv_indexer_topk:
 * the routed score of a key is sum over the routed heads of w * max(0, q . k) (MISA-dagger
 * ranks its candidates by the dense score). With h = n_heads, or C >= the visible keys, or
 * below the length gate, the result is skv_indexer_topk's, bit for bit.
 * Errors: as skv_route_heads, plus INVALID_ARG for k <= 0 or k > SKV_TOPK_MAX_K, or C other
 * than 0, k..SKV_TOPK_MAX_K or SKV_CANDIDATES_4K (with 4k at most SKV_TOPK_MAX_K). pooled may
 * be NULL: then a call whose routed pass needs it returns STATE (below the length gate and at
 * the exact dials none is needed). */
SKV_API skv_status skv_misa_topk(skv_context *ctx, const skv_indexer_query *q,
                                 const skv_key_block *keys, const skv_pooled_keys *pooled,
                                 const skv_misa_params *p, int32_t k, int32_t *out_idx,
                                 float *out_score);
/* The same on the keys of (seq, layer) in a key cache with pooled chunks. The cache remembers
 * the means of whole blocks between calls (head_dim floats per block of the sequence; a removal
 * forgets those from its first block on), so a decode step reads only the blocks it completed.
 * Errors also: STATE when the cache keeps no pooled sums and the router needs them, INVALID_ARG
 * for NULL c, an unknown seq or a layer out of range; NOMEM also when the memo cannot grow
 * (it keeps what it held). The call changes the cache (its memo): as any change, no other
 * thread may use the cache meanwhile (slices: skv_kcache_misa_prepare, slice.h). */
SKV_API skv_status skv_kcache_misa_topk(skv_kcache *c, int32_t seq, int32_t layer,
                                        const skv_indexer_query *q, const skv_misa_params *p,
                                        int32_t k, int32_t *out_idx, float *out_score);

/* ---- HISA ---------------------------------------------------------------------------------- */

typedef struct skv_hisa_params {
    size_t struct_size;   /* sizeof(skv_hisa_params); set by skv_hisa_params_init */
    int32_t block;        /* pooled block in tokens, a multiple of the pooled chunk; default 128 */
    int32_t blocks;       /* m: blocks kept per query token, the first and last visible ones
                             among them; >= 2, or SKV_CANDIDATES_4K (-1) = enough for 4 * k
                             candidates (ceil(4 * k / block), at least 2), the paper's choice;
                             0 is accepted as an older spelling of -1; default
                             SKV_CANDIDATES_4K */
    int64_t min_length;   /* the length gate; -1 = SKV_HISA_MIN_LENGTH; default -1 */
} skv_hisa_params;

/* Fills *p with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_hisa_params_init(skv_hisa_params *p);

/* HISA top-k: blocks scored with all heads on their means (sum_h w * max(0, q . mean)), the
 * first and last visible blocks kept, the best of the others up to m blocks, their visible
 * tokens scored exactly, top-k. m * block >= visible keys, or the length gate, gives
 * skv_indexer_topk's result bit for bit. Errors: as skv_misa_topk. */
SKV_API skv_status skv_hisa_topk(skv_context *ctx, const skv_indexer_query *q,
                                 const skv_key_block *keys, const skv_pooled_keys *pooled,
                                 const skv_hisa_params *p, int32_t k, int32_t *out_idx,
                                 float *out_score);
SKV_API skv_status skv_kcache_hisa_topk(skv_kcache *c, int32_t seq, int32_t layer,
                                        const skv_indexer_query *q, const skv_hisa_params *p,
                                        int32_t k, int32_t *out_idx, float *out_score);

/* ---- which path ran ------------------------------------------------------------------------ */

/* The path a MISA or HISA top-k took. Below the length gate (min_length, by default the
 * crossovers above) and at the exact dials the result is the dense indexer's: a quality
 * measurement of the approximation there reads recall 1. Each call also logs its path at
 * SKV_LOG_DEBUG. */
typedef enum skv_route_path {
    SKV_PATH_ROUTED = 0,     /* the routed (MISA, MISA-dagger) or block (HISA) pass ran */
    SKV_PATH_DENSE_GATE = 1, /* dense: no query token sees min_length keys */
    SKV_PATH_DENSE_DIAL = 2, /* dense: the dials cover every key (h = n_heads, C or
                                blocks * block >= the visible keys) */
    SKV_PATH_EMPTY = 3       /* no query tokens */
} skv_route_path;

/* Counters of the paths MISA and HISA took (skv_route_get_stats). */
typedef struct skv_route_stats {
    size_t struct_size;   /* set by the caller to sizeof(skv_route_stats) */
    int64_t calls[4];     /* MISA/HISA top-k calls that succeeded, by skv_route_path */
    int32_t last_path;    /* the path of the last successful call; -1 before any */
} skv_route_stats;

/* Counters of the MISA/HISA calls made with ctx (those on a key cache count in the cache's
 * context), since its creation or skv_route_reset_stats. Errors: INVALID_ARG (NULL,
 * struct_size). Thread safety: as the context. */
SKV_API skv_status skv_route_get_stats(const skv_context *ctx, skv_route_stats *out);
/* Zeroes them (last_path -1). Errors: INVALID_ARG (NULL). */
SKV_API skv_status skv_route_reset_stats(skv_context *ctx);

/* ---- quality -------------------------------------------------------------------------------- */

/* How well a selection idx [n_tokens][k] (-1 padded) matches the dense indexer's, per token,
 * computed against the dense scores on these keys:
 *   recall[t] = |{s in idx[t] : I(t,s) >= the k-th dense score}| / |T_dense(t)| (ties with the
 *               k-th count as hits, at most |T_dense(t)|: a score-level recall that does not
 *               punish a different choice among equal scores; skv_selection_recall_strict
 *               gives the papers' set recall);
 *   mass[t]   = sum over idx[t] of softmax_s I(t,s) / the same sum over T_dense(t).
 * A token with no visible key gets 1 and 1. Either output may be NULL.
 * Errors: as skv_indexer_topk. Cost: one dense scoring pass. */
SKV_API skv_status skv_selection_quality(skv_context *ctx, const skv_indexer_query *q,
                                         const skv_key_block *keys, const int32_t *idx,
                                         int32_t k, double *recall, double *mass);

/* The papers' recall, a strict set intersection: recall[t] = |idx[t] & T_dense(t)| /
 * |T_dense(t)|, T_dense(t) being exactly skv_indexer_topk's selection (ties to the lower
 * index); repeated entries of idx[t] count once, entries < 0 or out of range never; 1 for a
 * token with no visible key. Never above skv_selection_quality's recall, equal to it without
 * ties at the k-th score. recall [n_tokens]. Errors: as skv_selection_quality. */
SKV_API skv_status skv_selection_recall_strict(skv_context *ctx, const skv_indexer_query *q,
                                               const skv_key_block *keys, const int32_t *idx,
                                               int32_t k, double *recall);

#ifdef __cplusplus
}
#endif

#endif
