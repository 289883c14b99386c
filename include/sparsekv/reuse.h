/* sparsekv — IndexCache: cross-layer index reuse.
 *
 * Each layer of a model is Full (it runs its own indexer) or Shared (it reuses the top-k of the
 * nearest preceding Full layer). A reuse plan says which; a selector hands every layer its
 * indices during a forward step, running the indexer only on Full layers; the calibration
 * searches (greedy, beam, exhaustive) find a plan for a model from the host's own loss.
 *
 * Thread safety: see common.h. A plan is immutable after creation: any number of threads may
 * query it. */
#ifndef SPARSEKV_REUSE_H
#define SPARSEKV_REUSE_H

#include "common.h"
#include "indexer.h"
#include "router.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A layer's role: Full runs its indexer, Shared reuses its source's top-k. */
typedef enum skv_layer_role { SKV_LAYER_FULL = 0, SKV_LAYER_SHARED = 1 } skv_layer_role;

/* ---- reuse plans ------------------------------------------------------------------------- */

typedef struct skv_reuse_plan skv_reuse_plan; /* opaque, immutable */

/* Frequency conventions. With an offset o, layers below o are Full and the rule applies to
 * l - o above it (o = 0: the rule as written). */
typedef enum skv_reuse_freq_rule {
    /* IndexCache's released code: Shared iff max(l-1, 0) % freq != 0 -> FFSSSFSSS... (freq 4) */
    SKV_REUSE_FREQ_OFFICIAL = 0,
    /* Full iff l % freq == 0 -> FSSSFSSS... */
    SKV_REUSE_FREQ_PLAIN = 1
} skv_reuse_freq_rule;

/* Every constructor validates: at least one layer (at most 65536), layer 0 Full, and the first
 * layer of every pipeline segment Full. Segments: segment_starts[0..n_segments) strictly
 * increasing layer indices below n_layers (0 may be included or not); NULL with n_segments 0
 * means one segment. Errors: INVALID_ARG (with the reason logged at DEBUG level), NOMEM. */

/* From a pattern of 'F' and 'S' (case-insensitive), one character per layer. */
SKV_API skv_status skv_reuse_plan_from_string(skv_context *ctx, const char *pattern,
                                              const int32_t *segment_starts, int32_t n_segments,
                                              skv_reuse_plan **out);
/* From a frequency (>= 1) and offset (0 <= offset < n_layers). */
SKV_API skv_status skv_reuse_plan_from_freq(skv_context *ctx, int32_t n_layers, int32_t freq,
                                            int32_t offset, skv_reuse_freq_rule rule,
                                            const int32_t *segment_starts, int32_t n_segments,
                                            skv_reuse_plan **out);
/* From one role per layer. */
SKV_API skv_status skv_reuse_plan_from_roles(skv_context *ctx, const skv_layer_role *roles,
                                             int32_t n_layers, const int32_t *segment_starts,
                                             int32_t n_segments, skv_reuse_plan **out);
SKV_API void skv_reuse_plan_destroy(skv_reuse_plan *p); /* NULL is fine */

SKV_API int32_t skv_reuse_plan_n_layers(const skv_reuse_plan *p); /* 0 for NULL */
SKV_API int32_t skv_reuse_plan_n_full(const skv_reuse_plan *p);   /* 0 for NULL */
/* Errors (all queries): INVALID_ARG for NULL or a layer out of range. */
SKV_API skv_status skv_reuse_plan_role(const skv_reuse_plan *p, int32_t layer, skv_layer_role *out);
/* The Full layer whose indices `layer` uses: itself when Full. */
SKV_API skv_status skv_reuse_plan_source(const skv_reuse_plan *p, int32_t layer, int32_t *out);
/* The layer's slot among Full layers (0 .. n_full-1), its source's slot when Shared: the layer
 * index to use in a key cache created with skv_reuse_kcache_params. */
SKV_API skv_status skv_reuse_plan_full_slot(const skv_reuse_plan *p, int32_t layer, int32_t *out);
/* The canonical pattern ("FFSS...", upper case) into buf[size >= n_layers + 1]. */
SKV_API skv_status skv_reuse_plan_pattern(const skv_reuse_plan *p, char *buf, size_t size);

/* Key-cache parameters for a plan: `base` with n_layers = number of Full layers, so Shared
 * layers get no indexer key pages at all. Errors: INVALID_ARG (NULL, base->struct_size). */
SKV_API skv_status skv_reuse_kcache_params(const skv_reuse_plan *p, const skv_kcache_params *base,
                                           skv_kcache_params *out);

/* Pipeline parallelism: the rank that runs layers [first, first + n) keeps indexer keys for the
 * Full layers among them only. `first` must be Full (give the stage boundaries as segment
 * starts: every constructor refuses a plan that makes one Shared, vLLM #49085), so every layer
 * of the range reads a Full layer inside it.
 * out gets `base` with n_layers = the range's Full layers. Errors: INVALID_ARG (NULL, a range
 * outside the plan, first Shared). */
SKV_API skv_status skv_reuse_kcache_params_range(const skv_reuse_plan *p, int32_t first, int32_t n,
                                                 const skv_kcache_params *base,
                                                 skv_kcache_params *out);
/* The layer index to use in that rank's key cache: the layer's Full slot less first's.
 * Errors: INVALID_ARG (NULL, layer below first or outside the plan, first Shared). */
SKV_API skv_status skv_reuse_plan_range_slot(const skv_reuse_plan *p, int32_t first, int32_t layer,
                                             int32_t *out);

/* ---- per-step selection -------------------------------------------------------------------- */

/* How Full layers select: the dense indexer, MISA (router.h; MISA-dagger with candidates), or
 * HISA. The routed methods read pooled keys, which only a key cache with pool_chunk keeps: with
 * contiguous keys (skv_reuse_select) they need a router mode without pooled keys. */
typedef enum skv_select_method {
    SKV_SELECT_DENSE = 0,
    SKV_SELECT_MISA = 1,
    SKV_SELECT_HISA = 2
} skv_select_method;

/* Selector settings: initialise with skv_reuse_selector_params_init, then change fields. */
typedef struct skv_reuse_selector_params {
    size_t struct_size;       /* sizeof(skv_reuse_selector_params); set by _params_init */
    int32_t k;                /* top-k per query token, 1..SKV_TOPK_MAX_K; default 2048 */
    int32_t max_tokens;       /* query tokens per step, at most; default 1 (decode) */
    skv_select_method method; /* default SKV_SELECT_DENSE */
    skv_misa_params misa;     /* for SKV_SELECT_MISA; default skv_misa_params_init's */
    skv_hisa_params hisa;     /* for SKV_SELECT_HISA; default skv_hisa_params_init's */
} skv_reuse_selector_params;

typedef struct skv_reuse_selector skv_reuse_selector; /* opaque; one per sequence */

/* What a selector did (skv_reuse_selector_get_stats). */
typedef struct skv_reuse_selector_stats {
    size_t struct_size;     /* set by the caller */
    int64_t steps;          /* skv_reuse_begin_step calls */
    int64_t indexer_runs;   /* Full-layer selections computed */
    int64_t reused;         /* Shared-layer selections served from their source */
} skv_reuse_selector_stats;

/* Fills *p with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_reuse_selector_params_init(skv_reuse_selector_params *p);
/* The selector keeps a pointer to the plan: the plan must outlive it. Errors: INVALID_ARG,
 * UNSUPPORTED (method), NOMEM. It holds one index buffer of max_tokens * k int32. */
SKV_API skv_status skv_reuse_selector_create(skv_context *ctx, const skv_reuse_plan *plan,
                                             const skv_reuse_selector_params *p,
                                             skv_reuse_selector **out);
SKV_API void skv_reuse_selector_destroy(skv_reuse_selector *s); /* NULL is fine */

/* Starts a forward step of n_tokens (1 .. max_tokens) query tokens. Layers must then be
 * selected in increasing order (layers may be skipped only if no later layer of this step
 * needs them: a Shared layer's source must have been selected in this step).
 * Errors: INVALID_ARG (NULL, n_tokens out of range). */
SKV_API skv_status skv_reuse_begin_step(skv_reuse_selector *s, int32_t n_tokens);

/* Selects for `layer` and returns a view of its indices, [n_tokens][k] int32 (-1 padded):
 * - Full layer: runs the indexer on q (q->n_tokens == the step's n_tokens) and the keys;
 * - Shared layer: returns its source's indices; q and keys are not read (may be NULL).
 * The view is owned by the selector: it stays valid until the next Full layer is selected,
 * the next step begins, or the selector is destroyed — the same memory is reused.
 * Errors: INVALID_ARG (layer out of order or range, token count mismatch, NULL q/keys for a
 * Full layer), STATE (no step begun, or the source Full layer was not selected this step),
 * and those of skv_indexer_topk. On error the view of the previous Full layer is unchanged. */
SKV_API skv_status skv_reuse_select(skv_reuse_selector *s, int32_t layer,
                                    const skv_indexer_query *q, const skv_key_block *keys,
                                    const int32_t **out_idx);
/* The same with the keys in a key cache created with skv_reuse_kcache_params: the layer's
 * keys are at (seq, full slot of layer). Errors: as skv_reuse_select (NULL cache for a Full
 * layer: INVALID_ARG), with those of skv_kcache_topk, skv_kcache_misa_topk or
 * skv_kcache_hisa_topk by the method. The cache is used with its own context (the selector's
 * thread must be the only one using it). */
SKV_API skv_status skv_reuse_select_kcache(skv_reuse_selector *s, int32_t layer,
                                           const skv_indexer_query *q, skv_kcache *cache,
                                           int32_t seq, const int32_t **out_idx);
/* Errors: INVALID_ARG (NULL, struct_size too small). */
SKV_API skv_status skv_reuse_selector_get_stats(const skv_reuse_selector *s,
                                                skv_reuse_selector_stats *out);

/* ---- calibration search ------------------------------------------------------------------------ */

/* The host's loss for a pattern ('F'/'S' per layer, NUL-terminated; valid during the call):
 * it runs its model with that reuse pattern on fixed calibration batches. Lower is better. A
 * NaN return aborts the search. */
typedef double (*skv_reuse_loss_fn)(const char *pattern, void *user);

/* How skv_reuse_search explores patterns. Greedy commits one flip per round and can be misled
 * by its first commitments (a flip that is cheap alone can rule out the best pair); the beam
 * keeps the beam_width best patterns of each round; exhaustive evaluates every pattern. */
typedef enum skv_reuse_search_method {
    SKV_REUSE_SEARCH_GREEDY = 0,     /* IndexCache's greedy (with n_blocks) */
    SKV_REUSE_SEARCH_BEAM = 1,       /* greedy's rounds over a beam of patterns */
    SKV_REUSE_SEARCH_EXHAUSTIVE = 2, /* every pattern with target_full Full layers */
    SKV_REUSE_SEARCH_AUTO = 3        /* exhaustive when there are at most max_patterns, else beam */
} skv_reuse_search_method;

/* Search settings: initialise with skv_reuse_search_params_init, then change fields. */
typedef struct skv_reuse_search_params {
    size_t struct_size;            /* sizeof(skv_reuse_search_params); set by _params_init */
    int32_t n_layers;              /* required */
    int32_t target_full;           /* Full layers to keep, >= number of fixed-Full layers */
    int32_t n_blocks;              /* P: contiguous blocks of layers, one flip per block per
                                      round, each block's first layer fixed Full; default 1 */
    const int32_t *segment_starts; /* pipeline segments (their first layers stay Full) */
    int32_t n_segments;            /* default 0 (one segment) */
    skv_reuse_loss_fn loss;        /* required */
    void *user;                    /* passed to loss */
    skv_reuse_search_method method; /* default SKV_REUSE_SEARCH_GREEDY */
    int32_t beam_width;            /* BEAM (and AUTO's beam): patterns kept, 1..4096; default 4 */
    int64_t max_patterns;          /* EXHAUSTIVE and AUTO: most patterns enumerated, >= 1;
                                      default 4096 */
} skv_reuse_search_params;

/* What a search did (optional output of skv_reuse_search). */
typedef struct skv_reuse_search_result {
    size_t struct_size;  /* set by the caller */
    int32_t n_rounds;    /* rounds run */
    int64_t n_evals;     /* loss callbacks made */
    int64_t n_cached;    /* evaluations answered from the search's cache */
} skv_reuse_search_result;

/* Fills *p with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_reuse_search_params_init(skv_reuse_search_params *p);

/* Searches (IndexCache, training-free) for the pattern of target_full Full layers with the
 * lowest loss; layer 0, segment starts and block starts are always Full. Evaluations are
 * cached by pattern.
 * - GREEDY: start all Full; each round, for every candidate (a Full layer that is not fixed),
 *   evaluate the pattern with that layer flipped to Shared; commit the flip with the lowest loss
 *   (ties to the lower layer) — with P blocks, the best flip of each block, and in a round that
 *   needs fewer flips than blocks, the best of those flips — until target_full layers remain
 *   Full. O(n_layers^2) evaluations.
 * - BEAM: the same rounds over the beam_width best patterns: each round every pattern of the
 *   beam is expanded by each single flip, and the beam_width lowest-loss distinct patterns
 *   (ties to the earlier parent, then the lower layer) are kept; one flip per round (n_blocks
 *   only fixes block starts). Width 1 is greedy with one block. O(width * n_layers^2)
 *   evaluations.
 * - EXHAUSTIVE: every pattern, C(free layers, target_full - fixed) evaluations (ties to the
 *   pattern whose non-fixed Full layers come first in lexicographic order); SKV_ERR_CAPACITY
 *   when there are more than max_patterns. AUTO: EXHAUSTIVE when they are at most
 *   max_patterns, BEAM otherwise.
 * Outputs: pattern_out[n_layers + 1] (the final pattern), curve_out[n_layers + 1] or NULL:
 * curve_out[r] is the loss after round r (r = 0: all Full; greedy and beam: the best pattern of
 * each round; exhaustive: one round, the optimum), result may be NULL.
 * Errors: INVALID_ARG (target below the fixed-Full count or above n_layers, bad segments or
 * blocks, method or width out of range), CAPACITY (EXHAUSTIVE over max_patterns), NOMEM, and
 * SKV_ERR_IO when the loss callback returns NaN (outputs then hold the state before the failing
 * round). */
SKV_API skv_status skv_reuse_search(skv_context *ctx, const skv_reuse_search_params *p,
                                    char *pattern_out, double *curve_out,
                                    skv_reuse_search_result *result);

/* ---- proxies for hosts that cannot run a loss --------------------------------------------------
 * Heuristics: IndexCache found similarity-based layer choices no better than uniform spacing;
 * a host loss through skv_reuse_search is the recommended path. */

/* Cross-layer overlap from captured top-k: topk [n_layers][n_tokens][k] (-1 padded);
 * out[i][j] = mean over tokens of |T_i(t) & T_j(t)| / k (indices < 0 ignored);
 * 1 <= k <= SKV_TOPK_MAX_K. Errors: INVALID_ARG (NULL, sizes out of range), NOMEM. */
SKV_API skv_status skv_reuse_overlap(skv_context *ctx, const int32_t *topk, int32_t n_layers,
                                     int32_t n_tokens, int32_t k, double *out);

/* Attention-mass matrix from captured indexer inputs of one calibration batch (the same query
 * tokens in every layer): runs each layer's indexer, then
 *   out[l][j] = mean over tokens of the share of softmax(I_l(t, .)) over visible keys that
 *               layer j's top-k captures.
 * The diagonal is each layer's own top-k mass. queries/keys: n_layers each. Also fills
 * topk_out [n_layers][n_tokens][k] when not NULL (for skv_reuse_overlap); 1 <= k <=
 * SKV_TOPK_MAX_K. Errors: INVALID_ARG (NULL, k out of range, no tokens or keys, layers with
 * different token or key counts), NOMEM, and those of skv_indexer_topk / skv_indexer_scores on
 * a layer; after such a layer's error, out and topk_out may be partly written. */
SKV_API skv_status skv_reuse_mass_matrix(skv_context *ctx, const skv_indexer_query *queries,
                                         const skv_key_block *keys, int32_t n_layers, int32_t k,
                                         double *out, int32_t *topk_out);

/* A loss for skv_reuse_search from a mass matrix: `user` points to an skv_reuse_mass_loss;
 * loss(pattern) = sum over Shared layers l of (1 - M[l][source(l)]), divided by n_layers
 * (0 when all Full; NaN for a malformed pattern). */
typedef struct skv_reuse_mass_loss {
    const double *mass; /* [n_layers][n_layers], from skv_reuse_mass_matrix; borrowed */
    int32_t n_layers;   /* >= 1 */
} skv_reuse_mass_loss;
/* The loss above, as an skv_reuse_loss_fn. Thread-safe. */
SKV_API double skv_reuse_mass_loss_fn(const char *pattern, void *user);

/* skv_reuse_search with skv_reuse_mass_loss_fn over `mass` [n_layers][n_layers] (from
 * skv_reuse_mass_matrix) as its loss, in one call: p as for skv_reuse_search with p->loss and
 * p->user left NULL (skv_reuse_search_params_init's). Outputs and errors as skv_reuse_search,
 * plus INVALID_ARG for mass NULL or p->loss / p->user set. */
SKV_API skv_status skv_reuse_search_mass(skv_context *ctx, const skv_reuse_search_params *p,
                                         const double *mass, char *pattern_out,
                                         double *curve_out, skv_reuse_search_result *result);

#ifdef __cplusplus
}
#endif

#endif
