/* The store object: parameters, the page table with reference counts, reservations (the
 * reserve-then-commit discipline every mutation follows), sequences, and statistics. */
#include <stdlib.h>

#include "store/store_impl.h"

void skv_store_params_init(skv_store_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->n_layers = 1;
    p->n_kv_heads = 8;
    p->k_dim = 128;
    p->v_dim = 128;
    p->dtype = SKV_BF16;
    p->page_tokens = 16;
    p->n_sink = 4;
    p->n_window = 64;
    p->hot_pages = 4096;
    p->layout = SKV_STORE_CLUSTERED;
    p->fanout = 16;
    p->bulk_min = 256;
}

static skv_status check_params(skv_context *ctx, const skv_store_params *p)
{
    SKV_CHECK(ctx, p->struct_size == sizeof *p);
    SKV_CHECK(ctx, p->n_layers >= 1 && p->n_layers <= 65536);
    SKV_CHECK(ctx, p->n_kv_heads >= 1 && p->n_kv_heads <= 1024);
    SKV_CHECK(ctx, p->k_dim >= 1 && p->k_dim <= 1024 && p->v_dim >= 0 && p->v_dim <= 1024);
    SKV_CHECK(ctx, p->page_tokens >= 2 && p->page_tokens <= 64);
    SKV_CHECK(ctx, p->n_sink >= 0 && p->n_sink <= 65536);
    SKV_CHECK(ctx, p->n_window >= 0 && p->n_window <= (1 << 20));
    SKV_CHECK(ctx, p->hot_pages >= 0 && p->hot_pages <= INT32_MAX);
    SKV_CHECK(ctx, p->layout == SKV_STORE_CLUSTERED || p->layout == SKV_STORE_POSITIONAL);
    SKV_CHECK(ctx, p->fanout >= 4 && p->fanout <= 64 && p->bulk_min >= 1);
    SKV_CHECK(ctx, (p->flags & ~(uint32_t)(SKV_STORE_MINMAX | SKV_STORE_HUGEPAGES)) == 0);
    SKV_CHECK(ctx, p->max_pages >= 0 && p->max_pages <= INT32_MAX && p->max_seqs >= 0);
    const skv_store_tier *t = &p->tier;
    const int set = (t->alloc != NULL) + (t->free != NULL) + (t->copy != NULL) + (t->fence != NULL);
    SKV_CHECK(ctx, set == 0 || set == 4);
    if (p->dtype == SKV_FP8_E4M3)
        return SKV_ERR_UNSUPPORTED;
    SKV_CHECK(ctx, p->dtype == SKV_F32 || p->dtype == SKV_BF16 || p->dtype == SKV_F16);
    return SKV_OK;
}

skv_status skv_store_create(skv_context *ctx, const skv_store_params *p, skv_store **out)
{
    if (out)
        *out = NULL;
    if (!ctx || !out)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, p != NULL);
    SKV_TRY(check_params(ctx, p));

    skv_store *s = skv_alloc_zero(ctx, sizeof *s);
    if (!s)
        return SKV_ERR_NOMEM;
    s->ctx = ctx;
    s->p = *p;
    s->P = p->page_tokens, s->D = p->k_dim, s->VD = p->v_dim, s->H = p->n_kv_heads;
    s->F = p->fanout;
    s->esize = skv_dtype_size(p->dtype);
    s->k_bytes = (size_t)s->D * s->esize;
    s->row_bytes = (size_t)(s->D + s->VD) * s->esize;
    s->rows_offset = skv_round_up((size_t)s->P * 4, 64);
    s->slot_bytes = skv_round_up(s->rows_offset + (size_t)s->P * s->row_bytes, 64);
    s->tail_cent = sizeof(ptail);
    s->tail_min = s->tail_cent + skv_round_up(s->k_bytes, 16);
    s->tail_max = s->tail_min + (p->flags & SKV_STORE_MINMAX ? (size_t)s->D * 4 : 0);
    const size_t tail_end = s->tail_max + (p->flags & SKV_STORE_MINMAX ? (size_t)s->D * 4 : 0);
    s->page_bytes = skv_round_up(s->slot_bytes + tail_end, 64);
    skv_skern_init(&s->kern, skv_context_cpu_flags(ctx));
    const skv_status st = tier_init(s);
    if (st != SKV_OK) {
        skv_free(ctx, s, sizeof *s);
        return st;
    }
    *out = s;
    return SKV_OK;
}

static void seq_release(skv_store *s, sseq *q);

void skv_store_destroy(skv_store *s)
{
    if (!s)
        return;
    skv_context *ctx = s->ctx;
    for (int32_t i = 0; i < s->seq_cap; i++)
        if (s->seqs[i].live)
            seq_release(s, &s->seqs[i]);
    cold_destroy(s);
    tier_destroy(s);
    pool_destroy(s);
    skv_free(ctx, s->seqs, (size_t)s->seq_cap * sizeof *s->seqs);
    skv_free(ctx, s->pages, (size_t)s->id_cap * sizeof *s->pages);
    skv_free(ctx, s->refcnt, (size_t)s->id_cap * sizeof *s->refcnt);
    skv_free(ctx, s->version, (size_t)s->id_cap * sizeof *s->version);
    skv_free(ctx, s->page_slot, (size_t)s->id_cap * sizeof *s->page_slot);
    skv_free(ctx, s->free_ids, (size_t)s->id_cap * sizeof *s->free_ids);
    skv_free(ctx, s->scratch, s->scratch_cap);
    skv_free(ctx, s->resv_buf, s->resv_buf_cap);
    skv_free(ctx, s->resv, (size_t)s->resv_cap * sizeof *s->resv);
    skv_free(ctx, s, sizeof *s);
}

skv_status skv_store_layout_get(const skv_store *s, skv_store_layout_info *out)
{
    if (!s || !out || out->struct_size < sizeof *out)
        return SKV_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->slot_bytes = s->slot_bytes;
    out->rows_offset = s->rows_offset;
    out->row_bytes = s->row_bytes;
    out->k_bytes = s->k_bytes;
    out->host_page_bytes = s->page_bytes;
    out->hot = s->hot;
    return SKV_OK;
}

void *store_scratch(skv_store *s, size_t size)
{
    if (size <= s->scratch_cap)
        return s->scratch;
    const size_t want = skv_round_up(size + size / 4, 4096);
    void *p = skv_alloc(s->ctx, want);
    if (!p)
        return NULL;
    skv_free(s->ctx, s->scratch, s->scratch_cap);
    s->scratch = p;
    s->scratch_cap = want;
    return p;
}

/* ---- the page table -------------------------------------------------------------------- */

/* Room for `more` page ids beyond those in use. Changes nothing observable. */
static skv_status grow_ids(skv_store *s, int64_t more)
{
    const int64_t want = (int64_t)s->ids_used + more - s->n_free;
    if (want <= s->id_cap)
        return SKV_OK;
    if (want > INT32_MAX)
        return SKV_ERR_CAPACITY;
    int64_t cap = s->id_cap ? s->id_cap : 64;
    while (cap < want)
        cap *= 2;
    cap = cap > INT32_MAX ? INT32_MAX : cap;
    skv_context *ctx = s->ctx;
    uint8_t **pages = skv_alloc_zero(ctx, (size_t)cap * sizeof *pages);
    int32_t *ref = skv_alloc_zero(ctx, (size_t)cap * sizeof *ref);
    uint32_t *ver = skv_alloc_zero(ctx, (size_t)cap * sizeof *ver);
    int32_t *slot = skv_alloc(ctx, (size_t)cap * sizeof *slot);
    int32_t *fr = skv_alloc(ctx, (size_t)cap * sizeof *fr);
    if (!pages || !ref || !ver || !slot || !fr) {
        skv_free(ctx, pages, (size_t)cap * sizeof *pages);
        skv_free(ctx, ref, (size_t)cap * sizeof *ref);
        skv_free(ctx, ver, (size_t)cap * sizeof *ver);
        skv_free(ctx, slot, (size_t)cap * sizeof *slot);
        skv_free(ctx, fr, (size_t)cap * sizeof *fr);
        return SKV_ERR_NOMEM;
    }
    for (int64_t i = 0; i < cap; i++)
        slot[i] = -1;
    if (s->id_cap) {
        memcpy(pages, s->pages, (size_t)s->id_cap * sizeof *pages);
        memcpy(ref, s->refcnt, (size_t)s->id_cap * sizeof *ref);
        memcpy(ver, s->version, (size_t)s->id_cap * sizeof *ver);
        memcpy(slot, s->page_slot, (size_t)s->id_cap * sizeof *slot);
        memcpy(fr, s->free_ids, (size_t)s->n_free * sizeof *fr);
    }
    skv_free(ctx, s->pages, (size_t)s->id_cap * sizeof *s->pages);
    skv_free(ctx, s->refcnt, (size_t)s->id_cap * sizeof *s->refcnt);
    skv_free(ctx, s->version, (size_t)s->id_cap * sizeof *s->version);
    skv_free(ctx, s->page_slot, (size_t)s->id_cap * sizeof *s->page_slot);
    skv_free(ctx, s->free_ids, (size_t)s->id_cap * sizeof *s->free_ids);
    s->pages = pages, s->refcnt = ref, s->version = ver, s->page_slot = slot, s->free_ids = fr;
    s->id_cap = (int32_t)cap;
    return SKV_OK;
}

void page_unref(skv_store *s, int32_t id)
{
    if (--s->refcnt[id] > 0)
        return;
    tier_page_freed(s, id);
    if (s->pages[id])
        spare_put(s, s->pages[id]);
    else
        cold_page_freed(s, id); /* parked: its key goes */
    s->pages[id] = NULL;
    s->free_ids[s->n_free++] = id;
    s->pages_in_use--;
}

skv_status store_reserve(skv_store *s, int32_t H, const int64_t *pages, const int64_t *rel)
{
    skv_context *ctx = s->ctx;
    if (H > s->resv_cap) {
        hresv *r = skv_alloc_zero(ctx, (size_t)H * sizeof *r);
        if (!r)
            return SKV_ERR_NOMEM;
        skv_free(ctx, s->resv, (size_t)s->resv_cap * sizeof *s->resv);
        s->resv = r;
        s->resv_cap = H;
    }
    int64_t total = 0, total_rel = 0;
    for (int32_t h = 0; h < H; h++)
        total += pages[h], total_rel += rel[h];
    if (total > INT32_MAX || total_rel > INT32_MAX)
        return SKV_ERR_CAPACITY;
    if (s->p.max_pages && s->pages_in_use + total > s->p.max_pages)
        return SKV_ERR_CAPACITY;
    SKV_TRY(grow_ids(s, total));
    /* ids + buffers + releases for every head, in one buffer */
    const size_t need = (size_t)total * (sizeof(int32_t) + sizeof(uint8_t *)) +
                        (size_t)total_rel * sizeof(int32_t) + 64;
    if (need > s->resv_buf_cap) {
        const size_t want = skv_round_up(need + need / 4, 4096);
        void *b = skv_alloc(ctx, want);
        if (!b)
            return SKV_ERR_NOMEM;
        skv_free(ctx, s->resv_buf, s->resv_buf_cap);
        s->resv_buf = b;
        s->resv_buf_cap = want;
    }
    /* buffers: from the pool, new slabs as needed */
    SKV_TRY(pool_fill(s, total));
    /* Nothing can fail from here on: hand out ids and buffers in head order. */
    uint8_t **mp = (uint8_t **)s->resv_buf;
    int32_t *ip = (int32_t *)(mp + total);
    int32_t *rp = ip + total;
    for (int32_t h = 0; h < H; h++) {
        hresv *r = &s->resv[h];
        r->n = (int32_t)pages[h], r->used = 0, r->n_rel = 0, r->cap_rel = (int32_t)rel[h];
        r->ids = ip, r->mem = mp, r->rel = rp;
        for (int32_t i = 0; i < r->n; i++) {
            r->ids[i] = s->n_free ? s->free_ids[--s->n_free] : s->ids_used++;
            r->mem[i] = s->spare[--s->n_spare];
        }
        ip += r->n, mp += r->n, rp += r->cap_rel;
    }
    s->resv_n = H;
    return SKV_OK;
}

void store_reserve_end(skv_store *s)
{
    for (int32_t h = s->resv_n - 1; h >= 0; h--) {
        hresv *r = &s->resv[h];
        s->pages_in_use += r->used;
        for (int32_t i = r->n - 1; i >= r->used; i--) {
            s->free_ids[s->n_free++] = r->ids[i];
            s->spare[s->n_spare++] = r->mem[i];
        }
        r->n = r->used = 0;
    }
    for (int32_t h = 0; h < s->resv_n; h++) {
        hresv *r = &s->resv[h];
        for (int32_t i = 0; i < r->n_rel; i++)
            page_unref(s, r->rel[i]);
        r->n_rel = r->cap_rel = 0;
    }
    s->resv_n = 0;
}

int32_t resv_page(skv_store *s, int32_t h)
{
    hresv *r = &s->resv[h];
    const int32_t id = r->ids[r->used];
    uint8_t *m = r->mem[r->used++];
    s->pages[id] = m;
    s->refcnt[id] = 1;
    s->version[id]++;
    int32_t *pos = (int32_t *)m;
    for (int32_t i = 0; i < s->P; i++)
        pos[i] = -1;
    memset(m + s->slot_bytes, 0, sizeof(ptail));
    return id;
}

void resv_unref(skv_store *s, int32_t h, int32_t id)
{
    hresv *r = &s->resv[h];
    r->rel[r->n_rel++] = id;
}

int32_t resv_cow(skv_store *s, int32_t h, int32_t id)
{
    const int32_t nid = resv_page(s, h);
    memcpy(s->pages[nid], s->pages[id], s->page_bytes);
    resv_unref(s, h, id);
    return nid;
}

/* ---- sequences ------------------------------------------------------------------------- */

sseq *store_seq(const skv_store *s, int32_t seq)
{
    if (seq < 0 || seq >= s->seq_cap || !s->seqs[seq].live)
        return NULL;
    return &s->seqs[seq];
}

static void layer_free(skv_store *s, slayer *ly)
{
    if (!ly->h)
        return;
    for (int32_t h = 0; h < s->H; h++)
        hidx_free_arrays(s, &ly->h[h], ly->cap);
    skv_free(s->ctx, ly->pos, (size_t)ly->cap * sizeof *ly->pos);
    skv_free(s->ctx, ly->h, (size_t)s->H * sizeof *ly->h);
    memset(ly, 0, sizeof *ly);
}

static void seq_release(skv_store *s, sseq *q)
{
    for (int32_t l = 0; l < s->p.n_layers; l++) {
        slayer *ly = &q->ly[l];
        for (int32_t h = 0; ly->h && h < s->H; h++)
            hidx_release(s, &ly->h[h], 1, h);
        layer_free(s, ly);
    }
    skv_free(s->ctx, q->ly, (size_t)s->p.n_layers * sizeof *q->ly);
    memset(q, 0, sizeof *q);
    s->n_seqs--;
}

/* A free sequence slot (the table grown if needed) with its layers allocated and empty. */
static skv_status seq_new(skv_store *s, int32_t *out)
{
    if (s->p.max_seqs && s->n_seqs >= s->p.max_seqs)
        return SKV_ERR_CAPACITY;
    int32_t id = 0;
    while (id < s->seq_cap && s->seqs[id].live)
        id++;
    if (id >= STORE_MAX_SEQ_ID)
        return SKV_ERR_CAPACITY;
    skv_context *ctx = s->ctx;
    if (id == s->seq_cap) {
        const int32_t cap = s->seq_cap ? 2 * s->seq_cap : 8;
        sseq *seqs = skv_alloc_zero(ctx, (size_t)cap * sizeof *seqs);
        if (!seqs)
            return SKV_ERR_NOMEM;
        if (s->seq_cap)
            memcpy(seqs, s->seqs, (size_t)s->seq_cap * sizeof *seqs);
        skv_free(ctx, s->seqs, (size_t)s->seq_cap * sizeof *s->seqs);
        s->seqs = seqs;
        s->seq_cap = cap;
    }
    const int32_t L = s->p.n_layers;
    sseq q = {0};
    q.ly = skv_alloc_zero(ctx, (size_t)L * sizeof *q.ly);
    if (!q.ly)
        return SKV_ERR_NOMEM;
    for (int32_t l = 0; l < L; l++) {
        slayer *ly = &q.ly[l];
        ly->h = skv_alloc_zero(ctx, (size_t)s->H * sizeof *ly->h);
        if (!ly->h) {
            for (int32_t i = 0; i < l; i++)
                layer_free(s, &q.ly[i]);
            skv_free(ctx, q.ly, (size_t)L * sizeof *q.ly);
            return SKV_ERR_NOMEM;
        }
        for (int32_t h = 0; h < s->H; h++)
            ly->h[h].root = -1;
        ly->epoch = store_tick(s);
    }
    q.live = 1;
    s->seqs[id] = q;
    s->n_seqs++;
    *out = id;
    return SKV_OK;
}

skv_status skv_store_seq_create(skv_store *s, int32_t *out_seq)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, out_seq != NULL);
    return seq_new(s, out_seq);
}

skv_status skv_store_seq_free(skv_store *s, int32_t seq)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    sseq *q = store_seq(s, seq);
    SKV_CHECK(s->ctx, q != NULL);
    seq_release(s, q);
    return SKV_OK;
}

skv_status skv_store_seq_fork(skv_store *s, int32_t src, int32_t *out_seq)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, out_seq != NULL && store_seq(s, src) != NULL);
    SKV_TRY(cold_touch(s, store_seq(s, src)));
    int32_t id;
    SKV_TRY(seq_new(s, &id));
    const sseq *a = store_seq(s, src); /* seq_new may have moved the table */
    sseq *b = &s->seqs[id];
    skv_context *ctx = s->ctx;
    for (int32_t l = 0; l < s->p.n_layers; l++) {
        const slayer *la = &a->ly[l];
        slayer *lb = &b->ly[l];
        skv_status st = SKV_OK;
        if (la->cap) {
            lb->pos = skv_alloc(ctx, (size_t)la->cap * sizeof *lb->pos);
            if (!lb->pos)
                st = SKV_ERR_NOMEM;
            else
                lb->cap = la->cap;
        }
        for (int32_t h = 0; st == SKV_OK && h < s->H; h++)
            st = hidx_clone(s, &lb->h[h], &la->h[h], la->cap);
        if (st != SKV_OK) {
            /* pages gained references only in finished clones: release those */
            seq_release(s, b);
            return st;
        }
        if (la->n)
            memcpy(lb->pos, la->pos, (size_t)la->n * sizeof *lb->pos);
        lb->n = la->n, lb->n_sink = la->n_sink, lb->n_win = la->n_win;
    }
    *out_seq = id;
    return SKV_OK;
}

skv_status skv_store_seq_info_get(const skv_store *s, int32_t seq, int32_t layer,
                                  skv_store_seq_info *out)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    const sseq *q = store_seq(s, seq);
    SKV_CHECK(s->ctx, q && out && out->struct_size >= sizeof *out);
    SKV_CHECK(s->ctx, layer >= 0 && layer < s->p.n_layers);
    const slayer *ly = &q->ly[layer];
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->n_tokens = ly->n;
    out->n_sink = ly->n_sink;
    out->n_window = ly->n_win;
    out->max_pos = ly->n ? ly->pos[ly->n - 1] : -1;
    for (int32_t h = 0; h < s->H; h++) {
        const hidx *x = &ly->h[h];
        out->n_pages += x->n_leaf - x->n_leaf_free;
        out->n_nodes += x->n_node - x->n_node_free;
        const int32_t ht = hidx_height(s, x);
        out->height = ht > out->height ? ht : out->height;
    }
    return SKV_OK;
}

/* ---- statistics ------------------------------------------------------------------------ */

skv_status skv_store_get_stats(const skv_store *s, skv_store_stats *out)
{
    if (!s || !out || out->struct_size < sizeof *out)
        return SKV_ERR_INVALID_ARG;
    *out = s->ctr;
    out->struct_size = sizeof *out;
    out->n_seqs = s->n_seqs;
    out->pages_in_use = s->pages_in_use;
    for (int32_t i = 0; i < s->ids_used; i++) {
        if (!s->pages[i])
            continue;
        out->pages_shared += s->refcnt[i] > 1;
        out->tokens_stored += pg_n(s, i);
    }
    int64_t idx = 0;
    for (int32_t i = 0; i < s->seq_cap; i++) {
        const sseq *q = &s->seqs[i];
        if (!q->live)
            continue;
        for (int32_t l = 0; l < s->p.n_layers; l++) {
            const slayer *ly = &q->ly[l];
            idx += ly->cap * 4;
            for (int32_t h = 0; h < s->H; h++) {
                out->page_refs += ly->h[h].n_leaf - ly->h[h].n_leaf_free;
                idx += hidx_bytes(s, &ly->h[h], ly->cap);
            }
        }
    }
    /* each page's index entry: its tail (centroid, radius, min/max) */
    idx += s->pages_in_use * (int64_t)(s->page_bytes - s->slot_bytes);
    out->index_bytes = idx;
    out->kv_bytes = out->tokens_stored * (int64_t)s->row_bytes;
    int64_t parked = 0;
    for (int32_t i = 0; i < s->seq_cap; i++)
        parked += s->seqs[i].live ? s->seqs[i].n_cold : 0;
    out->host_bytes = (s->pages_in_use - parked) * (int64_t)s->page_bytes; /* parked: cold */
    out->spare_bytes = (int64_t)s->n_spare * (int64_t)s->page_bytes;
    out->hot_capacity = s->C;
    out->hot_resident = s->n_resident;
    out->hot_pinned = s->n_pinned_slots;
    return SKV_OK;
}

skv_status skv_store_reset_counters(skv_store *s)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    memset(&s->ctr, 0, sizeof s->ctr);
    return SKV_OK;
}
