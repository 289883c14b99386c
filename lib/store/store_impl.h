/* Internal interface of the clustered KV store: its objects, the page table, reservations, and
 * the functions the module's files share. docs/store.md explains the design.
 *
 * Ownership, per (sequence, layer, KV head) — an `hidx`:
 *   leaves   one per page this head references (sink, window or body); a leaf names its page
 *            and, for body pages of the clustered layout, its parent index node;
 *   leaf_of  the leaf of every token, in rank (= position) order;
 *   nodes    the index tree over the body leaves (clustered layout): centroid, radius, count;
 *   lists    sink leaves and window leaves in position order; body leaves for the positional
 *            layout in position order.
 * Pages are store-wide (ids into the page table), reference counted across sequences, and
 * always belong to one (layer, KV head). Rows inside a page are sorted by position.
 *
 * Mutations follow reserve-then-commit: a `resv` is filled first (page buffers and ids, array
 * room) and the commit phase cannot fail. Page releases during a commit are deferred to the
 * end so that heads can commit in parallel. */
#ifndef SKV_STORE_IMPL_H
#define SKV_STORE_IMPL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/core.h"
#include "sparsekv/store.h"
#include "store/skern.h"

#define STORE_MAX_SEQ_ID (1 << 30)

/* The store's arithmetic loops in plain C (page statistics, 2-means, bulk projections), compiled
 * once per x86 level and picked at load time: the compiler vectorises them at the CPU's width.
 * ISO C mode contracts no FMAs and the loops fix their summation order, so every clone gives
 * the same bits. */
#if defined(SKV_HAVE_X86) && defined(__x86_64__) && defined(__ELF__) && defined(__GNUC__)
#define STORE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define STORE_CLONES
#endif
#define LEAF(i) (-1 - (i)) /* a child entry naming a leaf */
#define IS_LEAF(c) ((c) < 0)
#define LEAF_IDX(c) (-1 - (c))

/* ---- pages ------------------------------------------------------------------------------ */

/* Host-only part of a page, after its image (slot_bytes): statistics of the valid rows. */
typedef struct ptail {
    int32_t n;     /* valid rows */
    float radius;  /* >= max |k - c| over valid rows, c the stored centroid */
    float aug;     /* mean augmented coordinate sqrt(M^2 - |k|^2) */
    float cnorm2;  /* |c|^2 of the stored centroid */
} ptail;

/* ---- the index ------------------------------------------------------------------------- */

typedef struct snode {
    int32_t parent; /* -1 for the root; for a free node, the next free node */
    int32_t n_child;
    int64_t count;  /* tokens below */
    float radius;   /* >= max |k - cent| over tokens below */
    float aug;      /* mean augmented coordinate below */
} snode;

typedef struct sleaf {
    int32_t page;   /* page id; -1 when the leaf is free */
    int32_t parent; /* index node, or -1 (sink, window, positional body) */
} sleaf;

typedef struct hidx {
    sleaf *leaf;
    int32_t n_leaf, cap_leaf; /* high water, capacity */
    int32_t *leaf_free, n_leaf_free;
    int32_t *leaf_of; /* [layer cap] */
    int32_t *sink, n_sinkp, cap_sinkp;
    int32_t *win, n_winp, cap_winp;
    int32_t *body, n_body, cap_body; /* positional layout only */
    snode *node;
    int32_t *child; /* [cap_node][fanout + 1] */
    float *cent;    /* [cap_node][k_dim] */
    int32_t n_node, cap_node;
    int32_t *node_free, n_node_free;
    int32_t root; /* -1: empty */
    float aug_m;  /* M of the augmentation; 0 until the first body token */
} hidx;

typedef struct slayer {
    int32_t *pos; /* [cap] positions of every token, ascending */
    int64_t n, cap;
    int64_t n_sink, n_win; /* tokens in sink and window pages */
    uint64_t epoch;        /* store clock value at the last change */
    hidx *h;               /* [n_kv_heads] */
} slayer;

typedef struct sseq {
    int live;
    slayer *ly;      /* [n_layers] */
    int64_t n_cold;  /* pages parked in the cold tier (cold.c) */
    uint64_t used;   /* cold.c's clock at the last call that touched the sequence */
} sseq;

/* A slab of page buffers (reserve.c): one allocation through the context allocator. */
typedef struct slab {
    void *base;       /* as allocated */
    size_t bytes;     /* as allocated */
    uint8_t *mem;     /* the first buffer (aligned to 2 MiB with SKV_STORE_HUGEPAGES) */
    int32_t n_pages;  /* buffers */
    int32_t n_free;   /* pool_trim's count of its buffers in the pool */
    int gone;         /* pool_trim: being freed */
} slab;

/* ---- reservations ---------------------------------------------------------------------- */

/* Pages and array room one head may use during a commit, and the pages it releases. */
typedef struct hresv {
    int32_t *ids;    /* reserved page ids */
    uint8_t **mem;   /* their buffers */
    int32_t n, used;
    int32_t *rel;    /* page ids whose reference was dropped (released after the commit) */
    int32_t n_rel, cap_rel;
} hresv;

/* ---- the store ------------------------------------------------------------------------- */

struct skv_store {
    skv_context *ctx;
    skv_store_params p;
    skv_store_kern kern;
    int32_t P, D, VD, H; /* page tokens, k_dim, v_dim, KV heads */
    size_t esize, k_bytes, row_bytes, rows_offset, slot_bytes;
    size_t tail_cent, tail_min, tail_max, page_bytes; /* tail offsets from the image's end */
    int32_t F;                                        /* fanout */

    /* page table */
    uint8_t **pages;
    int32_t *refcnt;
    uint32_t *version;
    int32_t *page_slot; /* hot slot, or -1 */
    int32_t *free_ids, n_free, id_cap, ids_used;
    int64_t pages_in_use;
    uint8_t **spare; /* the pool: free page buffers, room for every buffer of every slab */
    int32_t n_spare, cap_spare;
    slab *slabs;
    int32_t n_slabs, cap_slabs;
    int32_t n_bufs;   /* page buffers in all slabs */
    int32_t reserved; /* the largest skv_store_reserve */

    /* sequences */
    sseq *seqs;
    int32_t seq_cap, n_seqs;
    uint64_t clock;

    /* hot tier */
    skv_store_tier tier;
    void *hot;
    int64_t C;
    int32_t *slot_page; /* page id, -1 free, -2 orphan (freed while pinned) */
    uint32_t *slot_ver;
    int32_t *slot_pin;
    uint8_t *slot_ref, *slot_flight;
    int32_t *free_slots, n_free_slots;
    int64_t hand, n_resident, n_pinned_slots, n_orphan;
    int unfenced;
    uint8_t *staging;
    size_t staging_cap;
    skv_tier_xfer *xfer;
    int64_t xfer_cap;
    skv_store_stats ctr; /* counters only */

    struct cold_tier *cold; /* the cold tier (cold.c), NULL without one */

    /* scratch, grown on demand, kept */
    void *scratch;
    size_t scratch_cap;
    hresv *resv; /* [resv_cap]: one per (layer, head) slot of the current mutation */
    int32_t resv_cap, resv_n;
    void *resv_buf;
    size_t resv_buf_cap;
};

struct skv_store_sel {
    skv_store *s;
    int32_t seq, layer;
    uint64_t epoch;
    int64_t *head_off;    /* [H + 1] into the page arrays */
    int64_t *head_tokens; /* [H] */
    int32_t *page, *nrow, *slot;
    uint64_t *mask;
    int64_t cap;
    int fetched;
};

/* ---- store.c: pages and sequences ------------------------------------------------------ */

static inline uint8_t *pg(const skv_store *s, int32_t id) { return s->pages[id]; }
static inline int32_t *pg_pos(const skv_store *s, int32_t id) { return (int32_t *)s->pages[id]; }
static inline uint8_t *pg_row(const skv_store *s, int32_t id, int32_t i)
{
    return s->pages[id] + s->rows_offset + (size_t)i * s->row_bytes;
}
static inline ptail *pg_tail(const skv_store *s, int32_t id)
{
    return (ptail *)(s->pages[id] + s->slot_bytes);
}
static inline void *pg_cent(const skv_store *s, int32_t id)
{
    return s->pages[id] + s->slot_bytes + s->tail_cent;
}
static inline float *pg_min(const skv_store *s, int32_t id)
{
    return (float *)(s->pages[id] + s->slot_bytes + s->tail_min);
}
static inline float *pg_max(const skv_store *s, int32_t id)
{
    return (float *)(s->pages[id] + s->slot_bytes + s->tail_max);
}
static inline int32_t pg_n(const skv_store *s, int32_t id) { return pg_tail(s, id)->n; }
/* Prefetches the K parts of a page's rows (and its tail, where n lives). */
static inline void prefetch_keys(const skv_store *s, int32_t id)
{
    const uint8_t *m = s->pages[id];
    __builtin_prefetch(m + s->slot_bytes);
    for (int32_t j = 0; j < s->P; j++)
        for (size_t b = 0; b < s->k_bytes; b += 64)
            __builtin_prefetch(m + s->rows_offset + (size_t)j * s->row_bytes + b);
}
/* Prefetches a whole page image (rows and positions). */
static inline void prefetch_image(const skv_store *s, int32_t id)
{
    const uint8_t *m = s->pages[id];
    for (size_t b = 0; b < s->slot_bytes; b += 64)
        __builtin_prefetch(m + b);
}

sseq *store_seq(const skv_store *s, int32_t seq);
/* The store's clock, advanced: the epoch of a change. */
static inline uint64_t store_tick(skv_store *s) { return ++s->clock; }

/* Reservation for slots [0, n) (the heads of a layer, or (layer, head) pairs): `pages[i]`
 * pages for slot i (ids and buffers), release room `rel[i]`. Checks max_pages against the
 * total. All or nothing: CAPACITY, NOMEM. */
skv_status store_reserve(skv_store *s, int32_t n, const int64_t *pages, const int64_t *rel);
/* After the commit: returns unused reservations, releases the deferred pages. */
void store_reserve_end(skv_store *s);
/* A fresh page (refcount 1, new version, pos all -1, n = 0) from slot h's reservation. */
int32_t resv_page(skv_store *s, int32_t h);
/* Drops one reference, deferred (see store_reserve_end). */
void resv_unref(skv_store *s, int32_t h, int32_t id);
/* A private copy of a shared page (refcount > 1) from the reservation; the old one unref'd. */
int32_t resv_cow(skv_store *s, int32_t h, int32_t id);
/* Marks a page's contents changed (its hot copy is stale). */
static inline void page_changed(skv_store *s, int32_t id) { s->version[id]++; }
/* Immediate unref (no parallel commit running). */
void page_unref(skv_store *s, int32_t id);

/* Scratch memory of at least `size` bytes, kept between calls; NULL on failure. */
void *store_scratch(skv_store *s, size_t size);

/* ---- reserve.c: page memory ----------------------------------------------------------- */

/* At least n buffers in the pool (new slabs as needed). CAPACITY, NOMEM (nothing changed). */
skv_status pool_fill(skv_store *s, int64_t n);
/* A free page buffer back into the pool (cannot fail). */
void spare_put(skv_store *s, uint8_t *mem);
/* Frees slabs whose every buffer is in the pool while at least `keep` buffers stay in it;
 * returns the buffers freed. */
int64_t pool_trim(skv_store *s, int64_t keep);
/* Frees every slab and the pool (store destroy). */
void pool_destroy(skv_store *s);

/* ---- index.c: leaves, nodes, statistics ------------------------------------------------ */

/* Room for `leaves` more leaves and `nodes` more nodes in head h's arrays. NOMEM. */
skv_status hidx_grow(skv_store *s, hidx *x, int64_t leaves, int64_t nodes);
/* Trims node and leaf capacity far above use (best effort, never fails visibly). */
void hidx_shrink(skv_store *s, hidx *x);
int32_t leaf_new(hidx *x, int32_t page, int32_t parent);
void leaf_free(hidx *x, int32_t l);
int32_t node_new(skv_store *s, hidx *x);
void node_free(hidx *x, int32_t n);
static inline int32_t *node_child(const skv_store *s, const hidx *x, int32_t n)
{
    return x->child + (size_t)n * (size_t)(s->F + 1);
}
static inline float *node_cent(const skv_store *s, const hidx *x, int32_t n)
{
    return x->cent + (size_t)n * (size_t)s->D;
}
/* Recomputes a page's tail (centroid, radius, augmented mean, min/max) from its rows. */
void page_stats(skv_store *s, int32_t id, float aug_m);
/* Recomputes node n's count, centroid, radius and augmented mean from its children. */
void node_stats(skv_store *s, hidx *x, int32_t n);
/* Walks from node n to the root: statistics, splits of nodes over fanout, removal of empty
 * nodes, and root collapse. scratch: node_split_scratch bytes. */
void node_fixup(skv_store *s, hidx *x, int32_t n, void *scratch);
size_t node_split_scratch(const skv_store *s);
/* Adds child c (node or LEAF) to node n at the end, or right after child `after`. */
void node_add_child(skv_store *s, hidx *x, int32_t n, int32_t c);
void node_insert_after(skv_store *s, hidx *x, int32_t n, int32_t after, int32_t c);
void node_remove_child(skv_store *s, hidx *x, int32_t n, int32_t c);
/* Height of the tree (0: empty). */
int32_t hidx_height(const skv_store *s, const hidx *x);
/* Releases every page reference and frees the arrays of one head. */
void hidx_release(skv_store *s, hidx *x, int immediate, int32_t h);
void hidx_free_arrays(skv_store *s, hidx *x, int64_t layer_cap);
/* Copies src into dst (fresh arrays; pages gain a reference). NOMEM leaves dst empty. */
skv_status hidx_clone(skv_store *s, hidx *dst, const hidx *src, int64_t layer_cap);
/* Bytes of the index structures of one head (nodes, centroids, position map). */
int64_t hidx_bytes(const skv_store *s, const hidx *x, int64_t layer_cap);

/* ---- cluster.c: clustering ------------------------------------------------------------- */

/* The augmented coordinate sqrt(max(0, M^2 - |k|^2)). */
static inline float aug_coord(float m, float norm2)
{
    const float d = m * m - norm2;
    return d > 0 ? __builtin_sqrtf(d) : 0.0f;
}
/* n elements of the store dtype to f32 (exact). */
static inline float f16_to_f32_inline(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    union { uint32_t u; float f; } v;
    if (e == 0x1f)
        v.u = sign | 0x7f800000u | (m << 13);
    else if (e)
        v.u = sign | ((e + 112) << 23) | (m << 13);
    else {
        const float f = (float)m * 0x1p-24f; /* subnormal or zero: exact */
        return sign ? -f : f;
    }
    return v.f;
}
static inline void row_to_f32(const skv_store *s, const void *src, float *dst, int32_t n)
{
    if (s->p.dtype == SKV_F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (s->p.dtype == SKV_BF16) {
        const uint16_t *h = src;
        for (int32_t i = 0; i < n; i++)
            dst[i] = skv_bf16_bits_f32(h[i]);
    } else {
        const uint16_t *h = src;
        for (int32_t i = 0; i < n; i++)
            dst[i] = f16_to_f32_inline(h[i]);
    }
}
/* |a - b|^2 (b NULL: |a|^2), summed in 16 lanes reduced pairwise: vectorised by the compiler,
 * the same on every CPU. */
static inline float vec_dist2(const float *a, const float *b, int32_t D)
{
    enum { LANES = 16 };
    float acc[LANES] = {0};
    int32_t i = 0;
    for (; i + LANES <= D; i += LANES)
        for (int l = 0; l < LANES; l++) {
            const float d = a[i + l] - (b ? b[i + l] : 0.0f);
            acc[l] += d * d;
        }
    for (int l = 0; i < D; i++, l++) {
        const float d = a[i] - (b ? b[i] : 0.0f);
        acc[l] += d * d;
    }
    for (int w = LANES / 2; w; w /= 2)
        for (int l = 0; l < w; l++)
            acc[l] += acc[l + w];
    return acc[0];
}
/* 2-means in the augmented space over k points (pts [k][D] f32, aug [k], weights wt or NULL):
 * seeded with the point farthest from the mean and the point farthest from that, `iters`
 * Lloyd steps. Writes proj[i] = x_i . w - t, the signed side of the bisecting hyperplane
 * (> 0: the first centre's side), and the hyperplane itself (w [D], w_aug, t) at the start of
 * tmp. Returns the count of points with proj > 0, or -1 when all points coincide. */
int32_t two_means(const skv_store *s, const float *pts, const float *aug, const float *wt,
                  int32_t k, int iters, float *proj, void *tmp);
size_t two_means_scratch(const skv_store *s, int32_t k);
/* Bulk clustering of f tokens (token t's K at kp[t], its V at vp[t], in the store dtype) with
 * positions at ranks [rank0, rank0 + f) into a new subtree, grafted under the root. */
void cluster_bulk(skv_store *s, int32_t h, hidx *x, slayer *ly, const uint8_t *const *kp,
                  const uint8_t *const *vp, int64_t f, int64_t rank0, void *scratch);
size_t cluster_bulk_scratch(const skv_store *s, int64_t f);
/* Inserts one token (row in store format) at rank `rank` into the index. */
void cluster_insert(skv_store *s, int32_t h, hidx *x, slayer *ly, const uint8_t *row,
                    int64_t rank, void *scratch);
size_t cluster_insert_scratch(const skv_store *s);
/* Bounds used by reservations. */
int64_t cluster_insert_nodes(const skv_store *s, const hidx *x, int64_t f);
/* Removes the rows of body leaf l whose positions are in [p0, p1), then merges it into a
 * similar sibling when under a quarter full. */
void cluster_remove(skv_store *s, int32_t h, hidx *x, slayer *ly, int32_t l, int32_t p0,
                    int32_t p1, void *scratch);
size_t cluster_remove_scratch(const skv_store *s);
/* Rank of a position in the layer (binary search); -1 when absent. */
int64_t layer_rank(const slayer *ly, int32_t pos);

/* ---- tiers.c --------------------------------------------------------------------------- */

skv_status tier_init(skv_store *s);
void tier_destroy(skv_store *s);
/* A page is being freed: its slot is released (or orphaned while pinned). */
void tier_page_freed(skv_store *s, int32_t id);
/* sel.c: room for n pages (contents kept; NOMEM changes nothing), and packing the heads' pages
 * written at offsets at[h] (cnt[h] each) into consecutive ranges. */
skv_status sel_grow(skv_store_sel *sel, int64_t n);
void sel_pack(skv_store_sel *sel, int32_t H, const int64_t *at, const int64_t *cnt);
/* 1 when the selection is empty or (seq, layer) changed since it was made. */
int store_sel_stale(const skv_store *s, const skv_store_sel *sel);
/* Drops a selection's pins (selection destroy). */
void store_sel_unpin(skv_store_sel *sel);

/* ---- cold.c --------------------------------------------------------------------------- */

/* Restores a parked sequence before a call touches it, and marks it used. */
skv_status cold_touch(skv_store *s, sseq *q);
/* 1 when page id is parked (its memory is NULL, its refcount 1). */
int cold_is(const skv_store *s, int32_t id);
/* A parked page's last reference is gone: its key is deleted in the backend. */
void cold_page_freed(skv_store *s, int32_t id);
/* Waits for outstanding deletes and frees the cold tier's state. */
void cold_destroy(skv_store *s);

/* ---- validate.c (tests) ---------------------------------------------------------------- */

/* Checks every internal invariant; returns 0, or -1 with a message in msg. */
int skv_store_validate(const skv_store *s, char *msg, size_t msg_len);

#endif
