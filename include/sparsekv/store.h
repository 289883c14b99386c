/* sparsekv — the clustered paged KV store, with a hot tier for CPU offload.
 *
 * A store keeps the K/V rows of many sequences for n_layers layers and n_kv_heads KV heads.
 * Per (sequence, layer, KV head) the tokens live in pages of page_tokens tokens:
 *   - the first n_sink tokens of a sequence ("sinks") in sink pages, in position order;
 *   - the most recent tokens (the "window": at least n_window of them once the sequence is
 *     long enough, fewer than n_window + page_tokens) in window pages, in position order;
 *   - every other token in the body. With layout SKV_STORE_CLUSTERED (the default) body pages
 *     hold tokens with similar keys, under a hierarchical index (a tree of centroid nodes whose
 *     leaves are the pages: see docs/store.md); with SKV_STORE_POSITIONAL they hold consecutive
 *     tokens (the plain paged layout, the Quest baseline).
 * When the window reaches n_window + page_tokens tokens its oldest full pages leave it: their
 * tokens are inserted into the index one by one (a full page splits in two; bulk_min or more
 * tokens at once are clustered into a new subtree instead), or, positional, the pages move to
 * the body as they are. Removing tokens merges under-full pages.
 *
 * The host tier (memory from the context allocator) holds the authoritative copy of every page.
 * The hot tier holds copies of at most hot_pages pages, in memory the host supplies through
 * callbacks (a GPU's), or an arena in host memory by default. A selection picks, per KV head,
 * the pages worth attending to within a token budget; skv_store_fetch makes them resident in
 * the hot tier (moving only pages that are not there or changed since they were copied) and
 * returns the block table; skv_store_gather copies the selected rows from the host tier into
 * contiguous buffers in the layout of skv_sparse_attention (attention.h).
 *
 * Positions are the caller's (original) positions; they are never renumbered. Pages are
 * reference counted: a forked sequence shares every page, and a shared page is copied on its
 * first write. A page is freed as soon as no sequence references it; the bookkeeping arrays
 * keep their high-water size until the store is destroyed.
 *
 * Every function returns SKV_ERR_INVALID_ARG for NULL objects and out-of-range arguments, and
 * leaves everything as it was on any error (exceptions are stated).
 * A call that touches a parked sequence (store_cold.h: append, remove, select, select_tokens,
 * read, fork) may also return skv_store_seq_restore's errors (NOMEM, IO) from bringing it back.
 * Ownership: the caller owns the store and its selections (each *_destroy frees them; a
 * selection before its store, the store before its context); every other pointer is borrowed
 * for the call, except the tier callbacks' user pointers, kept for the store's life.
 * Thread safety: a store, and its selections, are used by one thread at a time (that of its
 * context). Bulk clustering, selection and gather run on the context's OpenMP threads; results
 * do not depend on the thread count. The tier callbacks are called on the calling thread,
 * never inside a parallel region. */
#ifndef SPARSEKV_STORE_H
#define SPARSEKV_STORE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct skv_store skv_store;         /* opaque */
typedef struct skv_store_sel skv_store_sel; /* opaque: one selection, reusable */

/* ---- the hot tier ------------------------------------------------------------------------ */

/* A page's image, the part that moves between tiers, occupies one hot slot of slot_bytes:
 *   int32 pos[page_tokens]                     positions (-1 past the page's valid rows)
 *   padding to a 64-byte multiple (rows_offset)
 *   rows[page_tokens]: k_dim K elements then v_dim V elements, in the store dtype (row_bytes)
 * Valid rows are always the first n of a page. Only the prefix rows_offset + n * row_bytes of
 * an image is moved. skv_store_layout_info gives the numbers. */
typedef enum skv_tier_dir {
    SKV_TIER_TO_HOT = 0, /* host staging buffer -> hot slots */
    SKV_TIER_TO_HOST = 1 /* hot slots -> host staging buffer (only skv_store_check_hot) */
} skv_tier_dir;

/* One range of a batched copy: `bytes` bytes between offset `offset` of the staging buffer
 * and the start of hot slot `slot` (byte slot * slot_bytes of the hot region). */
typedef struct skv_tier_xfer {
    int64_t slot;  /* hot slot */
    size_t offset; /* in the staging buffer */
    size_t bytes;  /* to move */
} skv_tier_xfer;

/* Callbacks that place the hot tier in the host's memory (e.g. a GPU's). Either all four are
 * set or none (the default: an arena from the context allocator, copied with memcpy).
 * alloc: the hot region, `bytes` = hot_pages * slot_bytes, once at skv_store_create; returns
 *   its handle (a device pointer: the library never dereferences it), or NULL on failure.
 * free: releases it, at skv_store_destroy.
 * copy: moves n ranges (all the pages of one fetch: "staging many pages into one copy")
 *   between the hot region and one host staging buffer of staging_bytes; returns 0 on success,
 *   anything else on failure (the library then returns SKV_ERR_IO). A copy to the hot tier may
 *   complete asynchronously: the library leaves the staging buffer untouched until fence.
 * fence: waits for every copy issued so far; 0 on success, else failure (SKV_ERR_IO). */
typedef struct skv_store_tier {
    /* the hot region, or NULL */
    void *(*alloc)(void *user, size_t bytes);
    /* releases it */
    void (*free)(void *user, void *hot, size_t bytes);
    /* moves n ranges; 0 on success */
    int (*copy)(void *user, skv_tier_dir dir, void *hot, size_t slot_bytes, void *staging,
                size_t staging_bytes, const skv_tier_xfer *x, int64_t n);
    /* waits for the copies; 0 on success */
    int (*fence)(void *user);
    /* passed to each, never read by the library */
    void *user;
} skv_store_tier;

/* ---- the store --------------------------------------------------------------------------- */

typedef enum skv_store_layout {
    SKV_STORE_CLUSTERED = 0, /* body pages by key similarity, under the index */
    SKV_STORE_POSITIONAL = 1 /* body pages by position, no index (the paged-KV baseline) */
} skv_store_layout;

enum {
    /* params.flags: keep each body page's per-dimension key minimum and maximum (f32), needed
       by SKV_SCORE_MINMAX (Quest). Costs 8 * k_dim bytes per page. */
    SKV_STORE_MINMAX = 1,
    /* params.flags: page memory in slabs aligned to 2 MiB and advised as transparent huge
       pages (madvise MADV_HUGEPAGE: fewer page faults and TLB misses where the host allows;
       ignored where it does not). Costs up to 2 MiB per slab. */
    SKV_STORE_HUGEPAGES = 2
};

/* Store settings: initialise with skv_store_params_init, then change fields. */
typedef struct skv_store_params {
    size_t struct_size;      /* sizeof(skv_store_params); set by skv_store_params_init */
    int32_t n_layers;        /* 1..65536; default 1 */
    int32_t n_kv_heads;      /* 1..1024; default 8 */
    int32_t k_dim;           /* 1..1024; default 128 */
    int32_t v_dim;           /* 0..1024 (0: no values, e.g. MLA's latent in K); default 128 */
    skv_dtype dtype;         /* F32, BF16 or F16; default BF16 */
    int32_t page_tokens;     /* tokens per page, 2..64; default 16 */
    int32_t n_sink;          /* sink tokens, 0..65536; default 4 */
    int32_t n_window;        /* recent-window tokens, 0..1048576; default 64 */
    int64_t hot_pages;       /* hot-tier capacity in pages, 0..2^31-1 (0: no hot tier);
                                default 4096 */
    skv_store_layout layout; /* default SKV_STORE_CLUSTERED */
    int32_t fanout;          /* children per index node, 4..64; default 16 */
    int32_t bulk_min;        /* tokens leaving the window at once from which they are clustered
                                into a new subtree instead of inserted one by one, >= 1;
                                default 256 */
    uint32_t flags;          /* SKV_STORE_MINMAX; default 0 */
    int64_t max_pages;       /* host pages in use, all sequences, 0..2^31-1; 0 = no limit (default) */
    int32_t max_seqs;        /* live sequences; 0 = no limit (default; ids below 2^30) */
    skv_store_tier tier;     /* default: all NULL (host-memory arena) */
} skv_store_params;

/* Fills *p with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_store_params_init(skv_store_params *p);

/* Errors: INVALID_ARG (ranges above, tier callbacks partly set, NULL), UNSUPPORTED (dtype FP8),
 * NOMEM (or the tier's alloc returned NULL). */
SKV_API skv_status skv_store_create(skv_context *ctx, const skv_store_params *p,
                                    skv_store **out);
/* Frees every sequence, page and selection state; NULL is fine. Selections created from the
 * store must be destroyed first. */
SKV_API void skv_store_destroy(skv_store *s);

/* Byte layout of a page image (see skv_tier_xfer) and of the hot region. */
typedef struct skv_store_layout_info {
    size_t struct_size;  /* set by the caller */
    size_t slot_bytes;   /* bytes of one hot slot (a page image), a multiple of 64 */
    size_t rows_offset;  /* offset of row 0 in an image */
    size_t row_bytes;    /* bytes of one row: (k_dim + v_dim) elements */
    size_t k_bytes;      /* bytes of a row's K part (V follows it) */
    size_t host_page_bytes; /* host bytes of one page: its image and its index entry */
    void *hot;           /* the hot region's handle (NULL without a hot tier) */
} skv_store_layout_info;

/* Errors: INVALID_ARG (NULL, struct_size). */
SKV_API skv_status skv_store_layout_get(const skv_store *s, skv_store_layout_info *out);

/* Page memory comes in large slabs (one allocation each through the context allocator) and
 * every free page buffer waits in the store's pool until a new page takes it: pages freed by
 * one sequence are reused by the next at once. The pool keeps what it holds (the store's
 * high-water page memory, skv_store_stats.spare_bytes) until skv_store_trim.
 *
 * Reserves page memory up front (an engine's KV pool sized at start-up): the pool is filled to
 * at least n_pages buffers of host_page_bytes each, new slabs touched on the context's threads
 * (so a first prefill pays no allocation or first-touch page faults). Errors: INVALID_ARG,
 * CAPACITY, NOMEM (nothing reserved). */
SKV_API skv_status skv_store_reserve(skv_store *s, int64_t n_pages);

/* Returns slabs whose every page buffer is free to the context allocator, while at least
 * keep_pages buffers stay in the pool; *out_freed (may be NULL) gets the buffers returned.
 * Errors: INVALID_ARG. */
SKV_API skv_status skv_store_trim(skv_store *s, int64_t keep_pages, int64_t *out_freed);

/* ---- sequences --------------------------------------------------------------------------- */

/* New empty sequence. Errors: CAPACITY (max_seqs), NOMEM. */
SKV_API skv_status skv_store_seq_create(skv_store *s, int32_t *out_seq);
/* Frees the sequence: pages no other sequence references are released (and leave the hot
 * tier). Errors: INVALID_ARG. */
SKV_API skv_status skv_store_seq_free(skv_store *s, int32_t seq);
/* New sequence with the same tokens, sharing every page. Errors: INVALID_ARG, CAPACITY
 * (max_seqs), NOMEM. */
SKV_API skv_status skv_store_seq_fork(skv_store *s, int32_t src, int32_t *out_seq);
/* Removes the tokens whose positions are in [p0, p1) from every layer (p1 < 0: to the end);
 * other tokens keep their positions. Pages left under a quarter full merge with a similar
 * sibling page that has room. Errors: INVALID_ARG (p0 < 0, p1 in [0, p0)), CAPACITY or NOMEM
 * (shared pages must be copied). */
SKV_API skv_status skv_store_seq_remove(skv_store *s, int32_t seq, int32_t p0, int32_t p1);

/* What (seq, layer) holds (skv_store_seq_info_get). */
typedef struct skv_store_seq_info {
    size_t struct_size;  /* set by the caller */
    int64_t n_tokens;    /* tokens of (seq, layer) */
    int64_t n_sink;      /* of which sinks */
    int64_t n_window;    /* and window tokens; sinks + window are in every selection */
    int32_t max_pos;     /* largest position, -1 when empty; appends must go beyond it */
    int32_t height;      /* index levels above the pages (0: no index) */
    int64_t n_pages;     /* pages over all KV heads (sink, window and body) */
    int64_t n_nodes;     /* index nodes over all KV heads */
} skv_store_seq_info;

/* Errors: INVALID_ARG. */
SKV_API skv_status skv_store_seq_info_get(const skv_store *s, int32_t seq, int32_t layer,
                                          skv_store_seq_info *out);

/* ---- appending and reading --------------------------------------------------------------- */

/* n_tokens new tokens of one layer, every KV head. */
typedef struct skv_store_rows {
    int64_t n_tokens;         /* >= 0 (0 is a no-op) */
    skv_dtype dtype;          /* the store dtype, or F32 (rounded to nearest even on append) */
    const void *k;            /* [n_tokens][n_kv_heads][k_dim] */
    const void *v;            /* [n_tokens][n_kv_heads][v_dim]; NULL iff v_dim == 0 */
    const int32_t *positions; /* [n_tokens]: >= 0, strictly increasing, and above every
                                 position (seq, layer) holds */
} skv_store_rows;

/* Appends to (seq, layer). A large append (a prefill) is clustered in bulk. Errors:
 * INVALID_ARG (positions, dims, dtype, NULL), CAPACITY (max_pages: checked against the
 * operation's worst case), NOMEM. */
SKV_API skv_status skv_store_append(skv_store *s, int32_t seq, int32_t layer,
                                    const skv_store_rows *rows);

/* Copies tokens [first, first + n) of (seq, layer), in position order, out of the host tier:
 * k_out [n][n_kv_heads][k_dim] and v_out [n][n_kv_heads][v_dim] in the store dtype (v_out
 * NULL iff v_dim == 0), pos_out [n] (may be NULL). Errors: INVALID_ARG, NOMEM.
 * Also STATE for a page that fails the store's own checks (skv_store_validate says which). */
SKV_API skv_status skv_store_read(skv_store *s, int32_t seq, int32_t layer, int64_t first,
                                  int64_t n, void *k_out, void *v_out, int32_t *pos_out);

/* ---- selection --------------------------------------------------------------------------- */

typedef enum skv_store_score {
    /* Beam search down the index by each node's score max q.c + w |q| r (centroid c, radius r,
       w = radius_weight), keeping nodes that cover twice the candidates, then the candidate
       pages (about `candidates` times the budget left after sinks and window) ranked by their
       best token, scored exactly. Cost grows with the budget and the index's height, not with
       the context. Positional stores: SKV_ERR_UNSUPPORTED. */
    SKV_SCORE_INDEX = 0,
    /* Quest: every body page ranked by sum_d max(q_d min_d, q_d max_d) (needs
       SKV_STORE_MINMAX). Linear in the context; the baseline. */
    SKV_SCORE_MINMAX = 1,
    /* Every body page ranked by its best token, scored exactly: the best any page selection
       of this store can do by that rule. Reads every key. */
    SKV_SCORE_EXACT = 2
} skv_store_score;

/* One query token's selection request: initialise with skv_store_query_init. */
typedef struct skv_store_query {
    size_t struct_size;    /* sizeof(skv_store_query); set by skv_store_query_init */
    int32_t n_q_heads;     /* a multiple of n_kv_heads (query head h uses KV head
                              h / (n_q_heads / n_kv_heads), as in attention.h); default 0 */
    skv_dtype dtype;       /* of q: F32, BF16 or F16; default F32 */
    const void *q;         /* [n_q_heads][k_dim], one query token; default NULL */
    int64_t budget;        /* tokens per KV head, sinks and window included (partially
                              filled pages count their valid tokens); >= the sinks and window
                              present (skv_store_seq_info), which a long sequence holds up to
                              n_sink + n_window + page_tokens - 1 of: with the default store
                              params 83 tokens, so a budget below that can be refused (make
                              n_sink / n_window smaller for small budgets); default 2048 */
    skv_store_score score; /* default SKV_SCORE_INDEX */
    float candidates;      /* SKV_SCORE_INDEX: candidate tokens scored exactly, as a multiple
                              of the budget left after sinks and window (at least 64 pages'
                              worth), 1..64; default 3 */
    float radius_weight;   /* SKV_SCORE_INDEX: w above, 0..1 (1: a true upper bound of a node's
                              best token; smaller ranks better, as only the spread along q
                              matters); default 0.1 */
} skv_store_query;

/* Fills *q with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_store_query_init(skv_store_query *q);

/* A token of a head counts toward its score through every query head of its group: pages
 * rank by max over the group's heads g of (best q_g . k in the page) - (that head's best over
 * the pages scored), so that each head's own strongest tokens come first. Sinks and window
 * are always selected; then body pages in descending rank while they fit in the budget (a page
 * that does not fit is passed over for later, smaller ones). A budget at least the
 * sequence's length selects every token. Ties rank by the index's order of the pages, so a
 * selection depends only on the store's contents and the query (never on the thread count);
 * the CPU level may change scores in the last bits.
 *
 * The selection replaces `sel`'s contents (releasing its pins) and stays valid until (seq,
 * layer) next changes (append, remove, free); a stale selection gives SKV_ERR_STATE.
 * Errors: INVALID_ARG (including a budget below sinks + window: logged at SKV_LOG_WARN with
 * the numbers), UNSUPPORTED (INDEX on a
 * positional store, MINMAX without SKV_STORE_MINMAX), NOMEM. */
SKV_API skv_status skv_store_select(skv_store *s, int32_t seq, int32_t layer,
                                    const skv_store_query *q, skv_store_sel *sel);

/* Selects an external token set, e.g. the indexer's top-k: the sinks, the window, then the
 * listed positions in order while the budget (tokens per KV head, >= sinks + window) lasts;
 * entries < 0 (top-k padding), duplicates and positions (seq, layer) does not hold are passed
 * over. The same tokens in every KV head, mapped to the pages that hold them there: only the
 * listed tokens are gathered, their whole pages are fetched. Errors: INVALID_ARG, NOMEM. */
SKV_API skv_status skv_store_select_tokens(skv_store *s, int32_t seq, int32_t layer,
                                           const int32_t *positions, int64_t n, int64_t budget,
                                           skv_store_sel *sel);

/* Errors: INVALID_ARG, NOMEM. */
SKV_API skv_status skv_store_sel_create(skv_store *s, skv_store_sel **out);
/* Releases its pins; NULL is fine. */
SKV_API void skv_store_sel_destroy(skv_store_sel *sel);

/* What a selection holds (skv_store_sel_info_get). */
typedef struct skv_store_sel_info {
    size_t struct_size;  /* set by the caller */
    int32_t seq;         /* -1 when nothing was selected yet */
    int32_t layer;       /* -1 when nothing was selected yet */
    int32_t n_kv_heads;  /* the store's */
    int64_t n_tokens;    /* selected tokens over all KV heads (gather writes this many rows) */
    int64_t n_pages;     /* selected pages over all KV heads */
    int64_t max_head_tokens; /* the most tokens of one KV head */
    int64_t max_head_pages;  /* the most pages of one KV head */
    int fetched;         /* 1 after skv_store_fetch: the pages are resident and pinned */
    int stale;           /* 1 when (seq, layer) changed since the selection */
} skv_store_sel_info;

/* Errors: INVALID_ARG (NULL, struct_size). */
SKV_API skv_status skv_store_sel_info_get(const skv_store_sel *sel, skv_store_sel_info *out);

/* The selected pages of one KV head, in gather order (sinks, body pages by rank, window):
 * *out_n gets their count and tokens (either may be NULL); any array may be NULL, else it holds
 * max_head_pages entries. After skv_store_fetch, slots[i] is the page's hot slot (the block
 * table of a device kernel); before, -1. n_rows[i]: the page's valid rows; masks[i]: bit j set
 * when row j is selected (all valid rows, except for skv_store_select_tokens).
 * Errors: INVALID_ARG, STATE (stale). */
SKV_API skv_status skv_store_sel_pages(const skv_store_sel *sel, int32_t kv_head, int32_t *out_n,
                                       int64_t *out_tokens, int32_t *slots, int32_t *n_rows,
                                       uint64_t *masks);

/* ---- tiers ------------------------------------------------------------------------------- */

/* Makes every page of the selection resident in the hot tier and pins it (pinned pages are
 * never evicted) until the selection is released, replaced or destroyed. Pages already
 * resident and unchanged since their copy are hits; the others (missing, or changed since:
 * "stale") are staged into one host buffer and moved with one copy call, into free slots or
 * slots evicted by a clock sweep over unpinned pages, then fenced.
 * Errors: INVALID_ARG, STATE (stale selection; no hot tier), CAPACITY (the selection needs more
 * slots than are free or evictable: nothing changed), NOMEM, IO (copy or fence failed: the
 * pages being copied are not resident afterwards, pages evicted for them stay evicted, nothing
 * else changed; no host data is ever affected). */
SKV_API skv_status skv_store_fetch(skv_store *s, skv_store_sel *sel);

/* Like fetch, without pinning and without waiting for the copy (the next fetch, prefetch or
 * check fences first): for a selection known ahead (the next layer's). Pages that do not fit
 * (too few evictable slots) are skipped. Errors: as fetch, except CAPACITY. */
SKV_API skv_status skv_store_prefetch(skv_store *s, const skv_store_sel *sel);

/* Drops the selection's pins. Errors: INVALID_ARG. */
SKV_API skv_status skv_store_release(skv_store *s, skv_store_sel *sel);

/* Evicts up to max_pages unpinned resident pages (< 0: all), in clock order; *out_evicted
 * (may be NULL) gets the count. No data moves: the host copy is authoritative. */
SKV_API skv_status skv_store_evict(skv_store *s, int64_t max_pages, int64_t *out_evicted);

/* Reads every resident page back (SKV_TIER_TO_HOST, in batches) and compares it with its host
 * copy; *out_bad gets the number of pages that differ (0 when the hot tier is intact).
 * Errors: INVALID_ARG, STATE (no hot tier), NOMEM, IO. */
SKV_API skv_status skv_store_check_hot(skv_store *s, int64_t *out_bad);

/* ---- gather ------------------------------------------------------------------------------ */

enum {
    SKV_GATHER_PAGES = 0,    /* rows of a list in selection order (sinks, pages by rank,
                                window), each page's rows by position */
    SKV_GATHER_POSITIONS = 1 /* rows of a list by ascending position (the dense order) */
};

/* Where gather writes: rows [row0, row0 + n) of k, v, k_pos, and list_start / list_len [KV
 * head] (one list per KV head, attention.h's skv_attn_batch fields for one query token; copy
 * them to other tokens that share the selection). */
typedef struct skv_store_gather_out {
    size_t struct_size;   /* sizeof(skv_store_gather_out) */
    skv_dtype dtype;      /* of k and v: the store dtype, or F32 (widened exactly) */
    int32_t order;        /* SKV_GATHER_PAGES or SKV_GATHER_POSITIONS */
    int64_t row0;         /* first row written, >= 0 */
    int64_t max_rows;     /* rows available from row0; must be >= the selection's n_tokens;
                             row0 + max_rows rows of the widest row must fit in size_t */
    void *k;              /* [row0 + max_rows][k_dim]; NULL with v NULL: positions only */
    void *v;              /* [row0 + max_rows][v_dim]; NULL iff v_dim == 0 or k is NULL */
    int32_t *k_pos;       /* [row0 + max_rows] */
    int64_t *list_start;  /* [n_kv_heads]: absolute row indices */
    int32_t *list_len;    /* [n_kv_heads] */
} skv_store_gather_out;

/* Copies the selected rows from the host tier (no fetch needed). *out_rows (may be NULL) gets
 * the rows written. Errors: INVALID_ARG, STATE (stale or empty selection), NOMEM (positions
 * order only). */
SKV_API skv_status skv_store_gather(skv_store *s, const skv_store_sel *sel,
                                    const skv_store_gather_out *o, int64_t *out_rows);

/* ---- statistics -------------------------------------------------------------------------- */

/* What a store holds and has moved (skv_store_get_stats). */
typedef struct skv_store_stats {
    size_t struct_size;     /* set by the caller */
    int32_t n_seqs;         /* live sequences */
    int64_t pages_in_use;   /* distinct pages referenced by any sequence */
    int64_t pages_shared;   /* of those, referenced by more than one sequence */
    int64_t page_refs;      /* page references over all sequences, layers and heads */
    int64_t tokens_stored;  /* valid rows in pages in use */
    int64_t kv_bytes;       /* tokens_stored * row bytes: the K/V data proper */
    int64_t host_bytes;     /* pages_in_use * host page bytes (images and index entries) */
    int64_t index_bytes;    /* the index over all sequences: nodes (centroids, radii),
                               per-page centroids, radii and min/max, position maps */
    int64_t spare_bytes;    /* freed pages kept for reuse */
    int64_t hot_capacity;   /* hot slots (hot_pages) */
    int64_t hot_resident;   /* pages resident in the hot tier */
    int64_t hot_pinned;     /* of those, pinned by a fetched selection */
    int64_t bytes_to_hot;   /* moved to the hot tier since the last reset */
    int64_t bytes_to_host;  /* moved back (skv_store_check_hot) since the last reset */
    int64_t fetch_pages;    /* pages asked for by fetch and prefetch */
    int64_t fetch_hits;     /* of those, resident and current */
    int64_t fetch_stale;    /* resident but changed since copied (moved again) */
    int64_t fetch_misses;   /* not resident (moved) */
    int64_t evictions;      /* pages evicted from the hot tier */
    int64_t copy_calls;     /* tier copy callbacks made */
    int64_t io_errors;      /* copy or fence callbacks that failed */
} skv_store_stats;

/* Errors: INVALID_ARG (NULL, struct_size). */
SKV_API skv_status skv_store_get_stats(const skv_store *s, skv_store_stats *out);
/* Zeroes the counters (bytes moved, fetch counts, evictions, copy calls, io errors). */
SKV_API skv_status skv_store_reset_counters(skv_store *s);

#ifdef __cplusplus
}
#endif

#endif
