/* The paged indexer key cache.
 *
 * A page id names one allocation holding a slot per layer; each slot is page_tokens rows of
 * keys then, for FP8, page_tokens f32 scales, then the optional pooled chunk sums and lane copy
 * (fp8 tiles, kernels.h). Sequences own block tables of page ids, a length per layer and, with
 * pooled sums, the router's remembered block means per layer (run.h). Pages are reference counted: fork shares them, and a shared page is
 * copied (all layers) before its first write. Every mutation first reserves what it needs
 * (table room, page ids, page memory) and only then writes, so a failure changes nothing. */
#include <math.h>
#include <string.h>

#include "indexer/run.h"

typedef struct kseq {
    int32_t live;
    int32_t n_pages, cap_pages;
    int32_t *table;
    int64_t *len;         /* [n_layers] */
    skv_block_memo *memo; /* [n_layers] when the cache keeps pooled sums (the router fills it) */
} kseq;

struct skv_kcache {
    skv_context *ctx;
    skv_kcache_params p;
    size_t row_bytes, mx_bytes, scale_offset, pool_offset, lane_offset, slot_bytes, page_bytes;
    uint8_t **pages; /* [id_cap]; NULL for a free id */
    int32_t *refcnt; /* [id_cap] */
    int32_t *free_ids, n_free, id_cap, ids_used;
    int64_t pages_in_use;
    kseq *seqs;
    int32_t seq_cap, n_seqs;
};

#define MAX_SEQ_ID (1 << 30)

void skv_kcache_params_init(skv_kcache_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->n_layers = 1;
    p->head_dim = 128;
    p->dtype = SKV_FP8_E4M3;
    p->page_tokens = 64;
}

skv_status skv_kcache_create(skv_context *ctx, const skv_kcache_params *p, skv_kcache **out)
{
    if (out)
        *out = NULL;
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, p && out && p->struct_size == sizeof *p);
    SKV_CHECK(ctx, p->n_layers >= 1 && p->n_layers <= 65536);
    SKV_CHECK(ctx, p->head_dim >= 1 && p->head_dim <= 4096);
    SKV_CHECK(ctx, p->page_tokens >= 1 && p->page_tokens <= 65536);
    SKV_CHECK(ctx, p->max_pages >= 0 && p->max_pages <= INT32_MAX && p->max_seqs >= 0);
    SKV_CHECK(ctx, (p->quant_flags & ~(uint32_t)(SKV_QUANT_POW2_SCALE | SKV_QUANT_DIV_SCALE)) == 0);
    SKV_CHECK(ctx, p->pool_chunk >= 0 && (p->pool_chunk == 0 || p->page_tokens % p->pool_chunk == 0));
    SKV_CHECK(ctx, p->lane_copy == 0 || (p->lane_copy == 1 && p->dtype == SKV_FP8_E4M3 &&
                                         p->head_dim % 32 == 0 && p->page_tokens % 16 == 0));
    SKV_CHECK(ctx, p->dtype == SKV_F32 || p->dtype == SKV_BF16 || p->dtype == SKV_F16 ||
                       p->dtype == SKV_FP8_E4M3 ||
                       (p->dtype == SKV_MXFP4_E2M1 && p->head_dim % 32 == 0) ||
                       (p->dtype == SKV_Q8_0 && p->head_dim % SKV_Q8_0_BLOCK == 0));

    skv_kcache *c = skv_alloc_zero(ctx, sizeof *c);
    if (!c)
        return SKV_ERR_NOMEM;
    c->ctx = ctx;
    c->p = *p;
    c->row_bytes = skv_row_bytes(p->dtype, p->head_dim);
    c->mx_bytes = p->dtype == SKV_MXFP4_E2M1 ? (size_t)p->head_dim / 32 : 0;
    /* values, then scales: FP8 132 bytes a token for head_dim 128 (DeepGEMM's paged layout),
       MXFP4 68 (vLLM's and DeepGEMM's fp4 layout, a block's codes then its scale bytes) */
    c->scale_offset = skv_round_up((size_t)p->page_tokens * c->row_bytes, 4);
    c->pool_offset = skv_round_up(c->scale_offset + (size_t)p->page_tokens *
                                                        skv_row_scale_bytes(p->dtype, p->head_dim), 4);
    c->slot_bytes = p->pool_chunk ? c->pool_offset + (size_t)(p->page_tokens / p->pool_chunk) *
                                                         (size_t)p->head_dim * 4
                                  : c->pool_offset;
    if (p->lane_copy) { /* whole 64-byte vectors: every layer's copy starts on one */
        c->lane_offset = skv_round_up(c->slot_bytes, 64);
        c->slot_bytes = c->lane_offset + (size_t)p->page_tokens * (size_t)p->head_dim;
    }
    c->page_bytes = c->slot_bytes * (size_t)p->n_layers;
    *out = c;
    return SKV_OK;
}

static void seq_release(skv_kcache *c, kseq *s);

void skv_kcache_destroy(skv_kcache *c)
{
    if (!c)
        return;
    skv_context *ctx = c->ctx;
    for (int32_t i = 0; i < c->seq_cap; i++)
        if (c->seqs[i].live)
            seq_release(c, &c->seqs[i]);
    skv_free(ctx, c->seqs, (size_t)c->seq_cap * sizeof *c->seqs);
    skv_free(ctx, c->pages, (size_t)c->id_cap * sizeof *c->pages);
    skv_free(ctx, c->refcnt, (size_t)c->id_cap * sizeof *c->refcnt);
    skv_free(ctx, c->free_ids, (size_t)c->id_cap * sizeof *c->free_ids);
    skv_free(ctx, c, sizeof *c);
}

/* ---- pages ----------------------------------------------------------------------------- */

static uint8_t *slot(const skv_kcache *c, int32_t id, int32_t layer)
{
    return c->pages[id] + (size_t)layer * c->slot_bytes;
}

/* Room for `more` ids beyond those in use. Growing changes nothing observable. */
static skv_status grow_ids(skv_kcache *c, int32_t more)
{
    const int64_t want = (int64_t)c->ids_used + more - c->n_free;
    if (want <= c->id_cap)
        return SKV_OK;
    if (want > INT32_MAX)
        return SKV_ERR_CAPACITY;
    int64_t cap = c->id_cap ? c->id_cap : 16;
    while (cap < want)
        cap *= 2;
    cap = cap > INT32_MAX ? INT32_MAX : cap;
    skv_context *ctx = c->ctx;
    uint8_t **pages = skv_alloc_zero(ctx, (size_t)cap * sizeof *pages);
    int32_t *ref = skv_alloc_zero(ctx, (size_t)cap * sizeof *ref);
    int32_t *fr = skv_alloc(ctx, (size_t)cap * sizeof *fr);
    if (!pages || !ref || !fr) {
        skv_free(ctx, pages, (size_t)cap * sizeof *pages);
        skv_free(ctx, ref, (size_t)cap * sizeof *ref);
        skv_free(ctx, fr, (size_t)cap * sizeof *fr);
        return SKV_ERR_NOMEM;
    }
    if (c->id_cap) {
        memcpy(pages, c->pages, (size_t)c->id_cap * sizeof *pages);
        memcpy(ref, c->refcnt, (size_t)c->id_cap * sizeof *ref);
        memcpy(fr, c->free_ids, (size_t)c->n_free * sizeof *fr);
    }
    skv_free(ctx, c->pages, (size_t)c->id_cap * sizeof *c->pages);
    skv_free(ctx, c->refcnt, (size_t)c->id_cap * sizeof *c->refcnt);
    skv_free(ctx, c->free_ids, (size_t)c->id_cap * sizeof *c->free_ids);
    c->pages = pages;
    c->refcnt = ref;
    c->free_ids = fr;
    c->id_cap = (int32_t)cap;
    return SKV_OK;
}

static void unref_page(skv_kcache *c, int32_t id)
{
    if (--c->refcnt[id] > 0)
        return;
    skv_free(c->ctx, c->pages[id], c->page_bytes);
    c->pages[id] = NULL;
    c->free_ids[c->n_free++] = id;
    c->pages_in_use--;
}

/* ---- sequences ------------------------------------------------------------------------- */

static kseq *get_seq(const skv_kcache *c, int32_t seq)
{
    if (seq < 0 || seq >= c->seq_cap || !c->seqs[seq].live)
        return NULL;
    return &c->seqs[seq];
}

static void seq_release(skv_kcache *c, kseq *s)
{
    for (int32_t i = 0; i < s->n_pages; i++)
        unref_page(c, s->table[i]);
    skv_free(c->ctx, s->table, (size_t)s->cap_pages * sizeof *s->table);
    skv_free(c->ctx, s->len, (size_t)c->p.n_layers * sizeof *s->len);
    for (int32_t l = 0; s->memo && l < c->p.n_layers; l++)
        skv_block_memo_free(c->ctx, &s->memo[l], c->p.head_dim);
    skv_free(c->ctx, s->memo, (size_t)c->p.n_layers * sizeof *s->memo);
    memset(s, 0, sizeof *s);
    c->n_seqs--;
}

/* A free slot for a new sequence with a zeroed length array and a table of cap_pages. */
static skv_status seq_new(skv_kcache *c, int32_t cap_pages, int32_t *out)
{
    if (c->p.max_seqs && c->n_seqs >= c->p.max_seqs)
        return SKV_ERR_CAPACITY;
    int32_t id = 0;
    while (id < c->seq_cap && c->seqs[id].live)
        id++;
    if (id >= MAX_SEQ_ID)
        return SKV_ERR_CAPACITY;
    skv_context *ctx = c->ctx;
    if (id == c->seq_cap) {
        const int32_t cap = c->seq_cap ? 2 * c->seq_cap : 8;
        kseq *seqs = skv_alloc_zero(ctx, (size_t)cap * sizeof *seqs);
        if (!seqs)
            return SKV_ERR_NOMEM;
        if (c->seq_cap)
            memcpy(seqs, c->seqs, (size_t)c->seq_cap * sizeof *seqs);
        skv_free(ctx, c->seqs, (size_t)c->seq_cap * sizeof *c->seqs);
        c->seqs = seqs;
        c->seq_cap = cap;
    }
    kseq s = {0};
    const size_t memo_b = c->p.pool_chunk ? (size_t)c->p.n_layers * sizeof *s.memo : 0;
    s.len = skv_alloc_zero(ctx, (size_t)c->p.n_layers * sizeof *s.len);
    s.cap_pages = cap_pages;
    s.table = cap_pages ? skv_alloc(ctx, (size_t)cap_pages * sizeof *s.table) : NULL;
    s.memo = memo_b ? skv_alloc_zero(ctx, memo_b) : NULL;
    if (!s.len || (cap_pages && !s.table) || (memo_b && !s.memo)) {
        skv_free(ctx, s.len, (size_t)c->p.n_layers * sizeof *s.len);
        skv_free(ctx, s.table, (size_t)cap_pages * sizeof *s.table);
        skv_free(ctx, s.memo, memo_b);
        return SKV_ERR_NOMEM;
    }
    s.live = 1;
    c->seqs[id] = s;
    c->n_seqs++;
    *out = id;
    return SKV_OK;
}

skv_status skv_kcache_seq_create(skv_kcache *c, int32_t *out_seq)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(c->ctx, out_seq != NULL);
    return seq_new(c, 0, out_seq);
}

skv_status skv_kcache_seq_free(skv_kcache *c, int32_t seq)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    kseq *s = get_seq(c, seq);
    SKV_CHECK(c->ctx, s != NULL);
    seq_release(c, s);
    return SKV_OK;
}

skv_status skv_kcache_seq_fork(skv_kcache *c, int32_t src, int32_t *out_seq)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(c->ctx, out_seq != NULL && get_seq(c, src) != NULL);
    int32_t id;
    SKV_TRY(seq_new(c, get_seq(c, src)->n_pages, &id));
    const kseq *s = get_seq(c, src); /* seq_new may have moved the array */
    kseq *d = &c->seqs[id];
    if (s->n_pages)
        memcpy(d->table, s->table, (size_t)s->n_pages * sizeof *s->table);
    memcpy(d->len, s->len, (size_t)c->p.n_layers * sizeof *s->len);
    d->n_pages = s->n_pages;
    for (int32_t i = 0; i < s->n_pages; i++)
        c->refcnt[s->table[i]]++;
    *out_seq = id;
    return SKV_OK;
}

skv_status skv_kcache_seq_length(const skv_kcache *c, int32_t seq, int32_t layer, int64_t *out_len)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    const kseq *s = get_seq(c, seq);
    SKV_CHECK(c->ctx, s && out_len && layer >= 0 && layer < c->p.n_layers);
    *out_len = s->len[layer];
    return SKV_OK;
}

/* Table room for n pages. Growing changes nothing observable. */
static skv_status grow_table(skv_kcache *c, kseq *s, int64_t n)
{
    if (n <= s->cap_pages)
        return SKV_OK;
    if (n > INT32_MAX)
        return SKV_ERR_CAPACITY;
    int64_t cap = s->cap_pages ? s->cap_pages : 4;
    while (cap < n)
        cap *= 2;
    cap = cap > INT32_MAX ? INT32_MAX : cap;
    int32_t *t = skv_alloc(c->ctx, (size_t)cap * sizeof *t);
    if (!t)
        return SKV_ERR_NOMEM;
    if (s->n_pages)
        memcpy(t, s->table, (size_t)s->n_pages * sizeof *t);
    skv_free(c->ctx, s->table, (size_t)s->cap_pages * sizeof *s->table);
    s->table = t;
    s->cap_pages = (int32_t)cap;
    return SKV_OK;
}

/* Makes table entries [first, need) writable: shared pages among the present ones are copied
 * and missing ones added (zeroed). All or nothing: CAPACITY past max_pages, NOMEM. */
static skv_status prepare_pages(skv_kcache *c, kseq *s, int64_t first, int64_t need)
{
    const int64_t have = s->n_pages;
    int64_t n_cow = 0;
    for (int64_t i = first; i < (need < have ? need : have); i++)
        n_cow += c->refcnt[s->table[i]] > 1;
    const int64_t m = n_cow + (need > have ? need - have : 0);
    if (m == 0)
        return SKV_OK;
    if (c->p.max_pages && c->pages_in_use + m > c->p.max_pages)
        return SKV_ERR_CAPACITY;
    if (m > INT32_MAX)
        return SKV_ERR_CAPACITY;
    SKV_TRY(grow_table(c, s, need));
    SKV_TRY(grow_ids(c, (int32_t)m));
    uint8_t *stack_mem[16], **mem = stack_mem;
    if (m > 16 && !(mem = skv_alloc(c->ctx, (size_t)m * sizeof *mem)))
        return SKV_ERR_NOMEM;
    for (int64_t i = 0; i < m; i++) {
        mem[i] = i < n_cow ? skv_alloc(c->ctx, c->page_bytes) : skv_alloc_zero(c->ctx, c->page_bytes);
        if (!mem[i]) {
            while (i--)
                skv_free(c->ctx, mem[i], c->page_bytes);
            if (mem != stack_mem)
                skv_free(c->ctx, mem, (size_t)m * sizeof *mem);
            return SKV_ERR_NOMEM;
        }
    }
    /* Nothing can fail from here on. */
    int64_t next = 0;
    for (int64_t i = first; i < need; i++) {
        if (i < have && c->refcnt[s->table[i]] == 1)
            continue;
        const int32_t id = c->n_free ? c->free_ids[--c->n_free] : c->ids_used++;
        c->pages[id] = mem[next++];
        c->refcnt[id] = 1;
        c->pages_in_use++;
        if (i < have) {
            memcpy(c->pages[id], c->pages[s->table[i]], c->page_bytes);
            unref_page(c, s->table[i]);
            s->table[i] = id;
        } else {
            s->table[s->n_pages++] = id;
        }
    }
    if (mem != stack_mem)
        skv_free(c->ctx, mem, (size_t)m * sizeof *mem);
    return SKV_OK;
}

static uint8_t *row_at(const skv_kcache *c, const kseq *s, int32_t layer, int64_t pos)
{
    const int32_t P = c->p.page_tokens;
    return slot(c, s->table[pos / P], layer) + (size_t)(pos % P) * c->row_bytes;
}

static float *scale_at(const skv_kcache *c, const kseq *s, int32_t layer, int64_t pos)
{
    const int32_t P = c->p.page_tokens;
    return (float *)(slot(c, s->table[pos / P], layer) + c->scale_offset) + pos % P;
}

static uint8_t *mx_at(const skv_kcache *c, const kseq *s, int32_t layer, int64_t pos)
{
    const int32_t P = c->p.page_tokens;
    return slot(c, s->table[pos / P], layer) + c->scale_offset + (size_t)(pos % P) * c->mx_bytes;
}

/* Key at pos as f32 (dequantised): the values the pooled sums add up. */
static void row_f32(const skv_kcache *c, const kseq *s, int32_t layer, int64_t pos, float *out)
{
    const uint8_t *row = row_at(c, s, layer, pos);
    const int32_t D = c->p.head_dim;
    if (c->p.dtype == SKV_FP8_E4M3) {
        const float sc = *scale_at(c, s, layer, pos);
        for (int32_t d = 0; d < D; d++)
            out[d] = skv_fp8_to_f32(row[d]) * sc;
    } else if (c->p.dtype == SKV_MXFP4_E2M1) {
        skv_mxfp4_row_f32(row, mx_at(c, s, layer, pos), D, out);
    } else if (c->p.dtype == SKV_Q8_0) {
        skv_q8_0_row_f32(row, D, out);
    } else {
        skv_convert(SKV_F32, out, c->p.dtype, row, D);
    }
}

/* Adds the key at pos to its chunk's pooled sum; the chunk's first key sets it. Keys enter in
 * position order, so a sum is the same whether built by appends or rebuilt after a removal. */
static void pool_add(skv_kcache *c, kseq *s, int32_t layer, int64_t pos)
{
    const int32_t P = c->p.page_tokens, C = c->p.pool_chunk, D = c->p.head_dim;
    float *sum = (float *)(slot(c, s->table[pos / P], layer) + c->pool_offset) + (size_t)((pos % P) / C) * D;
    float x[4096];
    row_f32(c, s, layer, pos, x);
    if (pos % C == 0)
        memcpy(sum, x, (size_t)D * 4);
    else
        for (int32_t d = 0; d < D; d++)
            sum[d] += x[d];
}

/* Key pos's bytes into its page's lane copy (the fp8 tile of its 16 tokens). */
static void lane_put(skv_kcache *c, kseq *s, int32_t layer, int64_t pos)
{
    const int32_t P = c->p.page_tokens, D = c->p.head_dim, j = (int32_t)(pos % P);
    uint8_t *tile = slot(c, s->table[pos / P], layer) + c->lane_offset + (size_t)(j / 16) * 16 * D;
    const uint8_t *row = row_at(c, s, layer, pos);
    for (int32_t d = 0; d < D; d++)
        tile[skv_fp8_tile_offset(j % 16, d)] = row[d];
}

/* Writes one key row (already validated) at pos. */
static void write_row(skv_kcache *c, kseq *s, int32_t layer, int64_t pos,
                      const skv_key_block *keys, int64_t i)
{
    const int32_t D = c->p.head_dim;
    uint8_t *dst = row_at(c, s, layer, pos);
    if (keys->dtype == c->p.dtype) {
        memcpy(dst, (const uint8_t *)keys->k + (size_t)i * c->row_bytes, c->row_bytes);
        if (c->p.dtype == SKV_FP8_E4M3)
            *scale_at(c, s, layer, pos) = keys->k_scale[i];
        if (c->mx_bytes)
            memcpy(mx_at(c, s, layer, pos), keys->k_mx_scale + (size_t)i * c->mx_bytes, c->mx_bytes);
        return;
    }
    const float *src = (const float *)keys->k + (size_t)i * D; /* F32 input */
    if (c->p.dtype == SKV_MXFP4_E2M1)
        skv_quantize_mxfp4(src, 1, D, D, dst, mx_at(c, s, layer, pos));
    else if (c->p.dtype == SKV_FP8_E4M3)
        skv_quantize_fp8(src, 1, D, D, c->p.quant_flags, dst, scale_at(c, s, layer, pos));
    else if (c->p.dtype == SKV_Q8_0)
        skv_quantize_q8_0(src, 1, D, D, dst);
    else
        skv_convert(c->p.dtype, dst, SKV_F32, src, D);
}

skv_status skv_kcache_append(skv_kcache *c, int32_t seq, int32_t layer, const skv_key_block *keys)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    skv_context *ctx = c->ctx;
    kseq *s = get_seq(c, seq);
    SKV_CHECK(ctx, s && keys && layer >= 0 && layer < c->p.n_layers);
    SKV_CHECK(ctx, keys->head_dim == c->p.head_dim && keys->n_keys >= 0);
    SKV_CHECK(ctx, keys->dtype == c->p.dtype || keys->dtype == SKV_F32);
    SKV_CHECK(ctx, (keys->dtype == SKV_FP8_E4M3) == (keys->k_scale != NULL));
    SKV_CHECK(ctx, (keys->dtype == SKV_MXFP4_E2M1) == (keys->k_mx_scale != NULL));
    SKV_CHECK(ctx, keys->n_keys == 0 || keys->k != NULL);
    SKV_CHECK(ctx, keys->n_keys <= INT32_MAX - s->len[layer]);
    const int32_t P = c->p.page_tokens;
    const int64_t start = s->len[layer], end = start + keys->n_keys;
    if (end == start)
        return SKV_OK;
    SKV_TRY(prepare_pages(c, s, start / P, (end + P - 1) / P));
    for (int64_t i = 0; i < keys->n_keys; i++) {
        write_row(c, s, layer, start + i, keys, i);
        if (c->p.pool_chunk)
            pool_add(c, s, layer, start + i);
        if (c->p.lane_copy)
            lane_put(c, s, layer, start + i);
    }
    s->len[layer] = end;
    return SKV_OK;
}

skv_status skv_kcache_seq_remove(skv_kcache *c, int32_t seq, int64_t p0, int64_t p1)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    kseq *s = get_seq(c, seq);
    SKV_CHECK(c->ctx, s && p0 >= 0);
    const int32_t L = c->p.n_layers, P = c->p.page_tokens;
    if (p1 < 0)
        p1 = INT64_MAX;
    SKV_CHECK(c->ctx, p1 >= p0);

    /* Pages written: from the first removed row to the end of the longest layer when rows move,
       and the page of a pooled chunk that the cut leaves partly filled (its sum is rebuilt). */
    int64_t first = INT64_MAX, max_new = 0;
    for (int32_t l = 0; l < L; l++) {
        const int64_t len = s->len[l], a = p0 < len ? p0 : len, b = p1 < len ? p1 : len;
        const int64_t nl = len - (b - a);
        const int rebuilds = c->p.pool_chunk && a % c->p.pool_chunk != 0;
        if (b > a && (nl > a || rebuilds) && a / P < first)
            first = a / P;
        max_new = nl > max_new ? nl : max_new;
    }
    const int64_t keep_pages = (max_new + P - 1) / P;
    if (first < keep_pages)
        SKV_TRY(prepare_pages(c, s, first, keep_pages));
    for (int32_t l = 0; l < L; l++) {
        const int64_t len = s->len[l], a = p0 < len ? p0 : len, b = p1 < len ? p1 : len;
        for (int64_t i = b; i < len; i++) {
            memcpy(row_at(c, s, l, a + i - b), row_at(c, s, l, i), c->row_bytes);
            if (c->p.dtype == SKV_FP8_E4M3)
                *scale_at(c, s, l, a + i - b) = *scale_at(c, s, l, i);
            if (c->mx_bytes)
                memcpy(mx_at(c, s, l, a + i - b), mx_at(c, s, l, i), c->mx_bytes);
        }
        s->len[l] = len - (b - a);
        if (s->memo && b > a) /* the router's means from a's block on */
            skv_block_memo_forget(&s->memo[l], a);
        if (c->p.pool_chunk && b > a) /* rebuild the chunks the rows moved into */
            for (int64_t i = a / c->p.pool_chunk * c->p.pool_chunk; i < s->len[l]; i++)
                pool_add(c, s, l, i);
        for (int64_t i = a; c->p.lane_copy && b > a && i < s->len[l]; i++) /* and the copy */
            lane_put(c, s, l, i);
    }
    while (s->n_pages > keep_pages)
        unref_page(c, s->table[--s->n_pages]);
    return SKV_OK;
}

skv_status skv_kcache_read(const skv_kcache *c, int32_t seq, int32_t layer, int64_t start,
                           int64_t n, void *keys_out, float *scales_out)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    const kseq *s = get_seq(c, seq);
    SKV_CHECK(c->ctx, s && layer >= 0 && layer < c->p.n_layers && start >= 0 && n >= 0);
    SKV_CHECK(c->ctx, start <= s->len[layer] && n <= s->len[layer] - start);
    SKV_CHECK(c->ctx, n == 0 || keys_out);
    SKV_CHECK(c->ctx, (c->p.dtype == SKV_FP8_E4M3) == (scales_out != NULL) || n == 0);
    for (int64_t i = 0; i < n; i++) {
        memcpy((uint8_t *)keys_out + (size_t)i * c->row_bytes, row_at(c, s, layer, start + i),
               c->row_bytes);
        if (scales_out)
            scales_out[i] = *scale_at(c, s, layer, start + i);
    }
    return SKV_OK;
}

skv_status skv_kcache_read_mx_scales(const skv_kcache *c, int32_t seq, int32_t layer,
                                     int64_t start, int64_t n, uint8_t *scales_out)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    const kseq *s = get_seq(c, seq);
    SKV_CHECK(c->ctx, s && layer >= 0 && layer < c->p.n_layers && start >= 0 && n >= 0);
    SKV_CHECK(c->ctx, start <= s->len[layer] && n <= s->len[layer] - start);
    SKV_CHECK(c->ctx, c->p.dtype == SKV_MXFP4_E2M1 && (n == 0 || scales_out));
    for (int64_t i = 0; i < n; i++)
        memcpy(scales_out + (size_t)i * c->mx_bytes, mx_at(c, s, layer, start + i), c->mx_bytes);
    return SKV_OK;
}

skv_context *skv_kcache_context(const skv_kcache *c) { return c->ctx; }

skv_status skv_kcache_src(const skv_kcache *c, int32_t seq, int32_t layer, skv_key_src *src)
{
    const kseq *s = get_seq(c, seq);
    SKV_CHECK(c->ctx, s && layer >= 0 && layer < c->p.n_layers);
    *src = (skv_key_src){
        .n_keys = s->len[layer], .head_dim = c->p.head_dim, .dtype = c->p.dtype,
        .row_bytes = c->row_bytes, .table = s->table, .pages = c->pages,
        .slot_offset = (size_t)layer * c->slot_bytes,
        .scale_offset = (size_t)layer * c->slot_bytes + c->scale_offset,
        .page_tokens = c->p.page_tokens,
        .pool_chunk = c->p.pool_chunk,
        .pool_offset = (size_t)layer * c->slot_bytes + c->pool_offset,
        .lane_offset = c->p.lane_copy ? (size_t)layer * c->slot_bytes + c->lane_offset : 0,
        .memo = s->memo ? &s->memo[layer] : NULL,
    };
    return SKV_OK;
}

static skv_status paged_src(skv_kcache *c, int32_t seq, int32_t layer,
                            const skv_indexer_query *q, skv_key_src *src)
{
    SKV_TRY(skv_kcache_src(c, seq, layer, src));
    return skv_indexer_check_query(c->ctx, q, c->p.head_dim, c->p.dtype);
}

skv_status skv_kcache_scores(skv_kcache *c, int32_t seq, int32_t layer,
                             const skv_indexer_query *q, float *out)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(paged_src(c, seq, layer, q, &src));
    SKV_CHECK(c->ctx, out != NULL || q->n_tokens == 0 || src.n_keys == 0);
    if (src.n_keys == 0)
        return SKV_OK;
    return skv_indexer_run(c->ctx, q, &src, 0, out, NULL, NULL);
}

skv_status skv_kcache_topk(skv_kcache *c, int32_t seq, int32_t layer, const skv_indexer_query *q,
                           int32_t k, int32_t *out_idx, float *out_score)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(paged_src(c, seq, layer, q, &src));
    SKV_CHECK(c->ctx, k >= 1 && k <= SKV_TOPK_MAX_K && (out_idx != NULL || q->n_tokens == 0));
    return skv_indexer_run(c->ctx, q, &src, k, NULL, out_idx, out_score);
}

skv_status skv_kcache_get_stats(const skv_kcache *c, skv_kcache_stats *out)
{
    if (!c || !out || out->struct_size < sizeof *out)
        return SKV_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->n_seqs = c->n_seqs;
    out->pages_in_use = c->pages_in_use;
    for (int32_t i = 0; i < c->ids_used; i++)
        out->pages_shared += c->pages[i] && c->refcnt[i] > 1;
    for (int32_t i = 0; i < c->seq_cap; i++)
        out->page_refs += c->seqs[i].live ? c->seqs[i].n_pages : 0;
    out->bytes_per_page = (int64_t)c->page_bytes;
    out->bytes_per_token = (int64_t)(c->page_bytes / (size_t)c->p.page_tokens);
    out->bytes_in_use = c->pages_in_use * (int64_t)c->page_bytes;
    return SKV_OK;
}
