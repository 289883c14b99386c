/* The cold tier: whole sequences parked in a key-value backend the host supplies, under
 * content-addressed keys, and brought back byte for byte on their next use.
 *
 * A parked page keeps its id and reference (refcount 1: only private pages park) with its
 * memory freed (s->pages[id] == NULL); its key and blob length stay here. The index structures
 * of a parked sequence (leaves, nodes, position maps: a few per cent of the pages) stay in
 * host memory, so restoring moves page bytes only.
 *
 * A page travels as a blob: n | positions | rows | tail (statistics, centroid, min/max), the
 * bytes that matter and no padding, so equal pages give equal blobs and equal keys. Requests
 * go out in batches through one staging buffer; nothing in host memory changes until every
 * request of the call has completed well (reserve, then commit, as everywhere in the store). */
#include "sparsekv/store_cold.h"
#include "store/store_impl.h"

enum { BATCH = 256 };

struct cold_tier {
    skv_store_cold cb;
    uint64_t tag[2];  /* hash of the model tag and the store's shape */
    uint8_t *key;     /* [cap][SKV_COLD_KEY_BYTES] */
    uint32_t *blen;   /* [cap] blob bytes of a parked page */
    uint8_t *parked;  /* [cap] */
    int32_t cap;
    size_t blob_max;
    uint8_t *staging;             /* [BATCH][blob_max] */
    int32_t status[BATCH];        /* per request: 0 pending, 1 done well, -1 failed */
    int64_t async_dels, async_del_failures; /* deletes of freed parked pages */
    uint64_t clock;
    skv_store_cold_stats st;
};

/* ---- keys ------------------------------------------------------------------------------ */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t fmix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* A 128-bit hash of n bytes continuing from h (two lanes over 16-byte blocks, then the length
 * and a final mix). Not cryptographic. */
static void hash128(uint64_t h[2], const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t a = h[0] ^ 0x9e3779b97f4a7c15ull, b = h[1] ^ 0xc2b2ae3d27d4eb4full;
    const size_t len = n;
    for (; n >= 16; n -= 16, p += 16) {
        uint64_t x, y;
        memcpy(&x, p, 8);
        memcpy(&y, p + 8, 8);
        a = rotl64((a ^ x) * 0x87c37b91114253d5ull, 31);
        b = rotl64((b ^ y) * 0x4cf5ad432745937full, 33);
        a += b;
        b += a;
    }
    uint8_t last[16] = {0};
    memcpy(last, p, n);
    uint64_t x, y;
    memcpy(&x, last, 8);
    memcpy(&y, last + 8, 8);
    a = fmix64(a ^ x ^ (uint64_t)len);
    b = fmix64(b ^ y ^ a);
    h[0] = fmix64(a + b);
    h[1] = fmix64(b + h[0]);
}

/* ---- blobs ----------------------------------------------------------------------------- */

static size_t tail_bytes(const skv_store *s)
{
    return sizeof(ptail) + s->k_bytes +
           (s->p.flags & SKV_STORE_MINMAX ? 2 * (size_t)s->D * 4 : 0);
}

static size_t blob_size(const skv_store *s, int32_t n)
{
    return 4 + (size_t)n * (4 + s->row_bytes) + tail_bytes(s);
}

static size_t blob_write(const skv_store *s, int32_t id, uint8_t *dst)
{
    const int32_t n = pg_n(s, id);
    uint8_t *o = dst;
    memcpy(o, &n, 4), o += 4;
    memcpy(o, pg_pos(s, id), (size_t)n * 4), o += (size_t)n * 4;
    memcpy(o, pg_row(s, id, 0), (size_t)n * s->row_bytes), o += (size_t)n * s->row_bytes;
    memcpy(o, pg_tail(s, id), sizeof(ptail)), o += sizeof(ptail);
    memcpy(o, pg_cent(s, id), s->k_bytes), o += s->k_bytes;
    if (s->p.flags & SKV_STORE_MINMAX) {
        memcpy(o, pg_min(s, id), (size_t)s->D * 4), o += (size_t)s->D * 4;
        memcpy(o, pg_max(s, id), (size_t)s->D * 4), o += (size_t)s->D * 4;
    }
    return (size_t)(o - dst);
}

/* Fills page memory m from a blob of `bytes` bytes; 0 when the blob is malformed. */
static int blob_read(const skv_store *s, const uint8_t *src, size_t bytes, uint8_t *m)
{
    int32_t n;
    if (bytes < 4)
        return 0;
    memcpy(&n, src, 4);
    if (n < 0 || n > s->P || bytes != blob_size(s, n))
        return 0;
    const uint8_t *i = src + 4;
    int32_t *pos = (int32_t *)m;
    memcpy(pos, i, (size_t)n * 4), i += (size_t)n * 4;
    for (int32_t j = n; j < s->P; j++)
        pos[j] = -1;
    memset(m + (size_t)s->P * 4, 0, s->rows_offset - (size_t)s->P * 4);
    memcpy(m + s->rows_offset, i, (size_t)n * s->row_bytes), i += (size_t)n * s->row_bytes;
    memset(m + s->slot_bytes, 0, s->page_bytes - s->slot_bytes);
    uint8_t *t = m + s->slot_bytes;
    memcpy(t, i, sizeof(ptail)), i += sizeof(ptail);
    memcpy(t + s->tail_cent, i, s->k_bytes), i += s->k_bytes;
    if (s->p.flags & SKV_STORE_MINMAX) {
        memcpy(t + s->tail_min, i, (size_t)s->D * 4), i += (size_t)s->D * 4;
        memcpy(t + s->tail_max, i, (size_t)s->D * 4);
    }
    return ((const ptail *)t)->n == n;
}

/* The key of a blob of (layer, head). */
static void blob_key(const struct cold_tier *c, int32_t layer, int32_t head, const uint8_t *blob,
                     size_t bytes, uint8_t *key)
{
    uint64_t h[2] = {c->tag[0] ^ (uint64_t)layer, c->tag[1] ^ ((uint64_t)head << 20)};
    hash128(h, blob, bytes);
    memcpy(key, h, SKV_COLD_KEY_BYTES);
}

/* ---- requests -------------------------------------------------------------------------- */

static void req_done(void *tag, int status)
{
    __atomic_store_n((int32_t *)tag, status ? -1 : 1, __ATOMIC_RELEASE);
}

static void async_del_done(void *tag, int status)
{
    struct cold_tier *c = tag;
    __atomic_fetch_add(status ? &c->async_del_failures : &c->async_dels, 1, __ATOMIC_RELAXED);
}

/* Collects async delete outcomes into the statistics (after a wait). */
static void settle_async(struct cold_tier *c)
{
    c->st.dels += __atomic_exchange_n(&c->async_dels, 0, __ATOMIC_ACQ_REL);
    c->st.del_failures += __atomic_exchange_n(&c->async_del_failures, 0, __ATOMIC_ACQ_REL);
}

/* Waits for the batch's n requests; returns the number that did not complete well. */
static int64_t batch_wait(struct cold_tier *c, int32_t n)
{
    c->cb.wait(c->cb.user);
    settle_async(c);
    int64_t bad = 0;
    for (int32_t i = 0; i < n; i++)
        bad += __atomic_load_n(&c->status[i], __ATOMIC_ACQUIRE) != 1;
    return bad;
}

/* Deletes the keys of pages ids[0..n) (their references), in batches. */
static void delete_keys(struct cold_tier *c, const int64_t *ent, int64_t n)
{
    for (int64_t b = 0; b < n; b += BATCH) {
        const int32_t m = (int32_t)(n - b < BATCH ? n - b : BATCH);
        for (int32_t i = 0; i < m; i++) {
            const int32_t id = (int32_t)(ent[b + i] & 0xffffffff);
            c->status[i] = 0;
            if (c->cb.del(c->cb.user, c->key + (size_t)id * SKV_COLD_KEY_BYTES, req_done,
                          &c->status[i]))
                c->status[i] = -1;
        }
        c->cb.wait(c->cb.user);
        settle_async(c);
        for (int32_t i = 0; i < m; i++) {
            const int ok = __atomic_load_n(&c->status[i], __ATOMIC_ACQUIRE) == 1;
            c->st.dels += ok;
            c->st.del_failures += !ok;
        }
    }
}

/* ---- state ----------------------------------------------------------------------------- */

int cold_is(const skv_store *s, int32_t id)
{
    return s->cold && id < s->cold->cap && s->cold->parked[id];
}

/* Room for the page ids in use. NOMEM changes nothing. */
static skv_status grow_table(skv_store *s)
{
    struct cold_tier *c = s->cold;
    if (c->cap >= s->ids_used)
        return SKV_OK;
    const int32_t cap = s->id_cap;
    uint8_t *key = skv_alloc(s->ctx, (size_t)cap * SKV_COLD_KEY_BYTES);
    uint32_t *blen = skv_alloc(s->ctx, (size_t)cap * 4);
    uint8_t *parked = skv_alloc_zero(s->ctx, (size_t)cap);
    if (!key || !blen || !parked) {
        skv_free(s->ctx, key, (size_t)cap * SKV_COLD_KEY_BYTES);
        skv_free(s->ctx, blen, (size_t)cap * 4);
        skv_free(s->ctx, parked, (size_t)cap);
        return SKV_ERR_NOMEM;
    }
    if (c->cap) {
        memcpy(key, c->key, (size_t)c->cap * SKV_COLD_KEY_BYTES);
        memcpy(blen, c->blen, (size_t)c->cap * 4);
        memcpy(parked, c->parked, (size_t)c->cap);
    }
    skv_free(s->ctx, c->key, (size_t)c->cap * SKV_COLD_KEY_BYTES);
    skv_free(s->ctx, c->blen, (size_t)c->cap * 4);
    skv_free(s->ctx, c->parked, (size_t)c->cap);
    c->key = key, c->blen = blen, c->parked = parked, c->cap = cap;
    return SKV_OK;
}

skv_status skv_store_cold_attach(skv_store *s, const skv_store_cold *cold, const char *model_tag)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, cold && model_tag && cold->put && cold->get && cold->del && cold->wait);
    if (s->cold)
        return SKV_ERR_STATE;
    struct cold_tier *c = skv_alloc_zero(s->ctx, sizeof *c);
    if (!c)
        return SKV_ERR_NOMEM;
    c->blob_max = skv_round_up(blob_size(s, s->P), 64);
    c->staging = skv_alloc(s->ctx, BATCH * c->blob_max);
    if (!c->staging) {
        skv_free(s->ctx, c, sizeof *c);
        return SKV_ERR_NOMEM;
    }
    c->cb = *cold;
    /* the tag, then everything that shapes a blob's meaning */
    const int64_t shape[8] = {s->P, s->D, s->VD, s->H, s->p.dtype, s->p.layout, s->p.flags,
                              s->p.fanout};
    uint64_t h[2] = {0x736b762d636f6c64ull, 0x7061676573763031ull};
    hash128(h, model_tag, strlen(model_tag));
    hash128(h, shape, sizeof shape);
    c->tag[0] = h[0], c->tag[1] = h[1];
    c->st.struct_size = sizeof c->st;
    s->cold = c;
    return SKV_OK;
}

void cold_destroy(skv_store *s)
{
    struct cold_tier *c = s->cold;
    if (!c)
        return;
    c->cb.wait(c->cb.user); /* deletes of the pages freed with the sequences */
    skv_free(s->ctx, c->key, (size_t)c->cap * SKV_COLD_KEY_BYTES);
    skv_free(s->ctx, c->blen, (size_t)c->cap * 4);
    skv_free(s->ctx, c->parked, (size_t)c->cap);
    skv_free(s->ctx, c->staging, BATCH * c->blob_max);
    skv_free(s->ctx, c, sizeof *c);
    s->cold = NULL;
}

void cold_page_freed(skv_store *s, int32_t id)
{
    struct cold_tier *c = s->cold;
    c->parked[id] = 0;
    c->st.pages_cold--;
    if (c->cb.del(c->cb.user, c->key + (size_t)id * SKV_COLD_KEY_BYTES, async_del_done, c))
        c->st.del_failures++;
}

/* Pages of q (entries id | (layer * H + head) << 32) that are parked (want_parked) or may
 * park: private, in host memory, not pinned in the hot tier. Returns the count; with ent NULL
 * only counts. */
static int64_t collect(const skv_store *s, const sseq *q, int want_parked, int64_t *ent)
{
    int64_t n = 0;
    for (int32_t l = 0; l < s->p.n_layers; l++)
        for (int32_t h = 0; h < s->H; h++) {
            const hidx *x = &q->ly[l].h[h];
            for (int32_t i = 0; i < x->n_leaf; i++) {
                const int32_t id = x->leaf[i].page;
                if (id < 0)
                    continue;
                int ok;
                if (want_parked) {
                    ok = cold_is(s, id);
                } else {
                    const int32_t sl = s->page_slot[id];
                    ok = s->pages[id] && s->refcnt[id] == 1 && (sl < 0 || s->slot_pin[sl] == 0);
                }
                if (!ok)
                    continue;
                if (ent)
                    ent[n] = (int64_t)(uint32_t)id | ((int64_t)(l * s->H + h) << 32);
                n++;
            }
        }
    return n;
}

/* ---- park and restore ------------------------------------------------------------------ */

static skv_status offload(skv_store *s, sseq *q, int64_t *out_pages)
{
    struct cold_tier *c = s->cold;
    SKV_TRY(grow_table(s));
    const int64_t n = collect(s, q, 0, NULL);
    if (n == 0)
        return SKV_OK;
    int64_t *ent = store_scratch(s, (size_t)n * sizeof *ent);
    if (!ent)
        return SKV_ERR_NOMEM;
    collect(s, q, 0, ent);
    for (int64_t b = 0; b < n; b += BATCH) {
        const int32_t m = (int32_t)(n - b < BATCH ? n - b : BATCH);
        size_t bytes = 0;
        for (int32_t i = 0; i < m; i++) {
            const int32_t id = (int32_t)(ent[b + i] & 0xffffffff), lh = (int32_t)(ent[b + i] >> 32);
            uint8_t *blob = c->staging + (size_t)i * c->blob_max;
            const size_t bl = blob_write(s, id, blob);
            uint8_t *key = c->key + (size_t)id * SKV_COLD_KEY_BYTES;
            blob_key(c, lh / s->H, lh % s->H, blob, bl, key);
            c->blen[id] = (uint32_t)bl;
            c->status[i] = 0;
            if (c->cb.put(c->cb.user, key, blob, bl, req_done, &c->status[i]))
                c->status[i] = -1;
            bytes += bl;
        }
        const int64_t bad = batch_wait(c, m);
        c->st.puts += m - bad;
        c->st.put_failures += bad;
        if (bad) {
            /* undo: every put of this call that completed well loses its reference again */
            int64_t k = b;
            for (int32_t i = 0; i < m; i++)
                if (c->status[i] == 1)
                    ent[k++] = ent[b + i];
            delete_keys(c, ent, k);
            return SKV_ERR_IO;
        }
        c->st.bytes_put += (int64_t)bytes;
    }
    /* every page is in the backend: commit */
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = (int32_t)(ent[i] & 0xffffffff);
        tier_page_freed(s, id); /* leaves the hot tier */
        spare_put(s, s->pages[id]);
        s->pages[id] = NULL;
        c->parked[id] = 1;
    }
    pool_trim(s, s->reserved); /* whole free slabs go back: parking frees host memory */
    q->n_cold += n;
    c->st.pages_cold += n;
    for (int32_t l = 0; l < s->p.n_layers; l++)
        q->ly[l].epoch = store_tick(s); /* selections of the sequence are stale */
    if (out_pages)
        *out_pages = n;
    return SKV_OK;
}

static skv_status restore(skv_store *s, sseq *q)
{
    struct cold_tier *c = s->cold;
    const int64_t n = collect(s, q, 1, NULL); /* == q->n_cold (skv_store_validate checks) */
    int64_t *ent = store_scratch(s, (size_t)n * (sizeof *ent + sizeof(uint8_t *)));
    if (!ent)
        return SKV_ERR_NOMEM;
    uint8_t **mem = (uint8_t **)(ent + n);
    collect(s, q, 1, ent);
    skv_status st = pool_fill(s, n);
    if (st != SKV_OK)
        return st;
    for (int64_t i = 0; i < n; i++)
        mem[i] = s->spare[s->n_spare - 1 - i]; /* taken from the pool at the commit */
    for (int64_t b = 0; st == SKV_OK && b < n; b += BATCH) {
        const int32_t m = (int32_t)(n - b < BATCH ? n - b : BATCH);
        for (int32_t i = 0; i < m; i++) {
            const int32_t id = (int32_t)(ent[b + i] & 0xffffffff);
            c->status[i] = 0;
            if (c->cb.get(c->cb.user, c->key + (size_t)id * SKV_COLD_KEY_BYTES,
                          c->staging + (size_t)i * c->blob_max, c->blen[id], req_done,
                          &c->status[i]))
                c->status[i] = -1;
        }
        const int64_t bad = batch_wait(c, m);
        c->st.gets += m - bad;
        c->st.get_failures += bad;
        if (bad) {
            st = SKV_ERR_IO;
            break;
        }
        for (int32_t i = 0; i < m; i++) {
            const int32_t id = (int32_t)(ent[b + i] & 0xffffffff), lh = (int32_t)(ent[b + i] >> 32);
            const uint8_t *blob = c->staging + (size_t)i * c->blob_max;
            uint8_t key[SKV_COLD_KEY_BYTES];
            blob_key(c, lh / s->H, lh % s->H, blob, c->blen[id], key);
            if (memcmp(key, c->key + (size_t)id * SKV_COLD_KEY_BYTES, SKV_COLD_KEY_BYTES) ||
                !blob_read(s, blob, c->blen[id], mem[b + i])) {
                c->st.bad_reads++;
                st = SKV_ERR_IO;
                break;
            }
            c->st.bytes_got += c->blen[id];
        }
    }
    if (st != SKV_OK)
        return st; /* the buffers stay in the pool */
    /* commit: the pages are back; their backend references go */
    s->n_spare -= (int32_t)n;
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = (int32_t)(ent[i] & 0xffffffff);
        s->pages[id] = mem[i];
        c->parked[id] = 0;
    }
    q->n_cold = 0;
    c->st.pages_cold -= n;
    delete_keys(c, ent, n);
    return SKV_OK;
}

skv_status cold_touch(skv_store *s, sseq *q)
{
    if (!s->cold)
        return SKV_OK;
    q->used = ++s->cold->clock;
    return q->n_cold ? restore(s, q) : SKV_OK;
}

skv_status skv_store_seq_offload(skv_store *s, int32_t seq, int64_t *out_pages)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    sseq *q = store_seq(s, seq);
    SKV_CHECK(s->ctx, q != NULL);
    if (!s->cold)
        return SKV_ERR_STATE;
    if (out_pages)
        *out_pages = 0;
    return offload(s, q, out_pages);
}

skv_status skv_store_seq_restore(skv_store *s, int32_t seq)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    sseq *q = store_seq(s, seq);
    SKV_CHECK(s->ctx, q != NULL);
    return q->n_cold ? restore(s, q) : SKV_OK;
}

static int64_t host_page_bytes(const skv_store *s)
{
    const int64_t cold = s->cold ? s->cold->st.pages_cold : 0;
    return (s->pages_in_use - cold) * (int64_t)s->page_bytes;
}

skv_status skv_store_cold_trim(skv_store *s, int64_t host_budget_bytes, int64_t *out_pages)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, host_budget_bytes >= 0);
    if (!s->cold)
        return SKV_ERR_STATE;
    if (out_pages)
        *out_pages = 0;
    /* sequences in (last use, id) order, each tried once: after its park only shared or
       pinned pages are left */
    uint64_t last_used = 0;
    int32_t last = -1;
    while (host_page_bytes(s) > host_budget_bytes) {
        int32_t pick = -1;
        for (int32_t i = 0; i < s->seq_cap; i++) {
            const sseq *q = &s->seqs[i];
            const int after = q->used > last_used || (q->used == last_used && i > last);
            if (q->live && after && (pick < 0 || q->used < s->seqs[pick].used))
                pick = i;
        }
        if (pick < 0)
            break;
        last_used = s->seqs[pick].used, last = pick;
        int64_t n = 0;
        SKV_TRY(offload(s, &s->seqs[pick], &n));
        if (out_pages)
            *out_pages += n;
    }
    return SKV_OK;
}

skv_status skv_store_cold_stats_get(const skv_store *s, skv_store_cold_stats *out)
{
    if (!s || !out || out->struct_size < sizeof *out)
        return SKV_ERR_INVALID_ARG;
    if (s->cold) {
        *out = s->cold->st;
        out->dels += __atomic_load_n(&s->cold->async_dels, __ATOMIC_ACQUIRE);
        out->del_failures += __atomic_load_n(&s->cold->async_del_failures, __ATOMIC_ACQUIRE);
    } else {
        memset(out, 0, sizeof *out);
    }
    out->struct_size = sizeof *out;
    out->host_page_bytes = host_page_bytes(s);
    return SKV_OK;
}
