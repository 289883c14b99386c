/* The hot tier: hot_pages slots in memory the host supplies (or a host arena), a map between
 * pages and slots, a clock over unpinned slots for eviction, and batched copies through one
 * staging buffer. The host tier is authoritative: evicting never moves data back, and a failed
 * copy only un-maps the slots it was writing. A slot keeps the version of the page it holds, so
 * a page changed since its copy is seen as stale and moved again ("delta fetch"). */
#include "store/store_impl.h"

/* ---- the default tier: an arena in host memory ----------------------------------------- */

static void *arena_alloc(void *user, size_t bytes)
{
    skv_store *s = user;
    return skv_alloc(s->ctx, bytes);
}

static void arena_free(void *user, void *hot, size_t bytes)
{
    skv_store *s = user;
    skv_free(s->ctx, hot, bytes);
}

static int arena_copy(void *user, skv_tier_dir dir, void *hot, size_t slot_bytes, void *staging,
                      size_t staging_bytes, const skv_tier_xfer *x, int64_t n)
{
    (void)user;
    (void)staging_bytes;
    for (int64_t i = 0; i < n; i++) {
        uint8_t *h = (uint8_t *)hot + (size_t)x[i].slot * slot_bytes;
        uint8_t *st = (uint8_t *)staging + x[i].offset;
        if (dir == SKV_TIER_TO_HOT)
            memcpy(h, st, x[i].bytes);
        else
            memcpy(st, h, x[i].bytes);
    }
    return 0;
}

static int arena_fence(void *user)
{
    (void)user;
    return 0;
}

skv_status tier_init(skv_store *s)
{
    s->C = s->p.hot_pages;
    if (s->C == 0)
        return SKV_OK;
    skv_context *ctx = s->ctx;
    if (s->p.tier.alloc) {
        s->tier = s->p.tier;
    } else {
        s->tier = (skv_store_tier){arena_alloc, arena_free, arena_copy, arena_fence, s};
    }
    size_t bytes;
    if (!skv_mul_ok((size_t)s->C, s->slot_bytes, &bytes))
        return SKV_ERR_INVALID_ARG;
    const size_t C = (size_t)s->C;
    /* the slots first: a capacity the tier cannot hold fails there, before the slot map's
       arrays (14 bytes a slot, zeroed) are written (hot_pages 2^31 - 1 took minutes) */
    s->hot = s->tier.alloc(s->tier.user, bytes);
    if (s->hot) {
        s->slot_page = skv_alloc(ctx, C * 4);
        s->slot_ver = skv_alloc_zero(ctx, C * 4);
        s->slot_pin = skv_alloc_zero(ctx, C * 4);
        s->slot_ref = skv_alloc_zero(ctx, C * 2); /* reference bits, then the per-fetch marks */
        s->free_slots = skv_alloc(ctx, C * 4);
    }
    if (!s->hot || !s->slot_page || !s->slot_ver || !s->slot_pin || !s->slot_ref || !s->free_slots) {
        if (s->hot)
            s->tier.free(s->tier.user, s->hot, bytes);
        s->hot = NULL;
        skv_free(ctx, s->slot_page, C * 4);
        skv_free(ctx, s->slot_ver, C * 4);
        skv_free(ctx, s->slot_pin, C * 4);
        skv_free(ctx, s->slot_ref, C * 2);
        skv_free(ctx, s->free_slots, C * 4);
        s->slot_page = NULL, s->slot_ver = NULL, s->slot_pin = NULL, s->slot_ref = NULL;
        s->free_slots = NULL;
        s->C = 0;
        return SKV_ERR_NOMEM;
    }
    s->slot_flight = s->slot_ref + C;
    for (int64_t i = 0; i < s->C; i++) {
        s->slot_page[i] = -1;
        s->free_slots[i] = (int32_t)(s->C - 1 - i); /* slot 0 is handed out first */
    }
    s->n_free_slots = (int32_t)s->C;
    return SKV_OK;
}

void tier_destroy(skv_store *s)
{
    skv_context *ctx = s->ctx;
    if (s->hot) {
        if (s->unfenced)
            s->tier.fence(s->tier.user);
        s->tier.free(s->tier.user, s->hot, (size_t)s->C * s->slot_bytes);
    }
    const size_t C = (size_t)s->C;
    skv_free(ctx, s->slot_page, C * 4);
    skv_free(ctx, s->slot_ver, C * 4);
    skv_free(ctx, s->slot_pin, C * 4);
    skv_free(ctx, s->slot_ref, C * 2);
    skv_free(ctx, s->free_slots, C * 4);
    skv_free(ctx, s->staging, s->staging_cap);
    skv_free(ctx, s->xfer, (size_t)s->xfer_cap * sizeof *s->xfer);
}

/* ---- the slot map ---------------------------------------------------------------------- */

static void slot_free(skv_store *s, int32_t sl)
{
    s->slot_page[sl] = -1;
    s->free_slots[s->n_free_slots++] = sl;
}

/* The page in slot sl stops being resident there (pinned slots become orphans until unpinned). */
static void slot_unmap(skv_store *s, int32_t sl)
{
    const int32_t id = s->slot_page[sl];
    if (id < 0)
        return;
    s->page_slot[id] = -1;
    s->n_resident--;
    if (s->slot_pin[sl] > 0) {
        s->slot_page[sl] = -2;
        s->n_orphan++;
    } else {
        slot_free(s, sl);
    }
}

void tier_page_freed(skv_store *s, int32_t id)
{
    const int32_t sl = s->page_slot[id];
    if (sl >= 0)
        slot_unmap(s, sl);
}

static skv_status do_fence(skv_store *s)
{
    if (!s->unfenced)
        return SKV_OK;
    s->unfenced = 0;
    const int rc = s->tier.fence(s->tier.user);
    for (int64_t i = 0; i < s->C; i++) {
        if (!s->slot_flight[i])
            continue;
        s->slot_flight[i] = 0;
        if (rc)
            slot_unmap(s, (int32_t)i);
    }
    if (rc) {
        s->ctr.io_errors++;
        return SKV_ERR_IO;
    }
    return SKV_OK;
}

static skv_status grow_staging(skv_store *s, size_t bytes, int64_t n_xfer)
{
    if (bytes > s->staging_cap) {
        const size_t want = skv_round_up(bytes + bytes / 4, 4096);
        uint8_t *b = skv_alloc(s->ctx, want);
        if (!b)
            return SKV_ERR_NOMEM;
        skv_free(s->ctx, s->staging, s->staging_cap);
        s->staging = b;
        s->staging_cap = want;
    }
    if (n_xfer > s->xfer_cap) {
        const int64_t want = n_xfer + n_xfer / 4 + 16;
        skv_tier_xfer *x = skv_alloc(s->ctx, (size_t)want * sizeof *x);
        if (!x)
            return SKV_ERR_NOMEM;
        skv_free(s->ctx, s->xfer, (size_t)s->xfer_cap * sizeof *s->xfer);
        s->xfer = x;
        s->xfer_cap = want;
    }
    return SKV_OK;
}

static inline size_t image_bytes(const skv_store *s, int32_t id)
{
    return s->rows_offset + (size_t)pg_n(s, id) * s->row_bytes;
}

/* ---- fetch ----------------------------------------------------------------------------- */

static void unpin(skv_store *s, skv_store_sel *sel)
{
    if (!sel->fetched)
        return;
    const int64_t N = sel->head_off[s->H];
    for (int64_t i = 0; i < N; i++) {
        const int32_t sl = sel->slot[i];
        sel->slot[i] = -1;
        if (sl < 0 || --s->slot_pin[sl] > 0)
            continue;
        s->n_pinned_slots--;
        if (s->slot_page[sl] == -2) {
            s->n_orphan--;
            slot_free(s, sl);
        }
    }
    sel->fetched = 0;
}

enum { C_HIT = 0, C_REFRESH = 1, C_NEW = 2, C_SKIP = 3 };

static skv_status fetch(skv_store *s, skv_store_sel *sel, int pin)
{
    if (!s->hot || store_sel_stale(s, sel))
        return SKV_ERR_STATE;
    SKV_TRY(do_fence(s));
    const int64_t N = sel->head_off[s->H];
    uint8_t *cls = store_scratch(s, (size_t)N + 64);
    if (!cls)
        return SKV_ERR_NOMEM;
    /* Classify against the pins that remain once this selection's own pins (a fetch replaces
       them) are released. Hits and in-place refreshes are protected from this fetch's evictions;
       a stale page pinned by someone else gets a new slot (its old copy may be in use). */
    const int own = pin && sel->fetched;
    int64_t need_new = 0, protect = 0, own_only = 0;
    for (int64_t i = 0; i < N; i++) {
        const int32_t id = sel->page[i], sl = s->page_slot[id];
        if (own && sel->slot[i] >= 0 && s->slot_pin[sel->slot[i]] == 1 &&
            s->slot_page[sel->slot[i]] >= 0)
            own_only++;
        const int32_t pin_after = sl < 0 ? 0 : s->slot_pin[sl] - (own && sel->slot[i] == sl);
        if (sl >= 0 && s->slot_ver[sl] == s->version[id])
            cls[i] = C_HIT;
        else if (sl >= 0 && pin_after == 0)
            cls[i] = C_REFRESH;
        else
            cls[i] = C_NEW, need_new++;
        protect += sl >= 0 && cls[i] != C_NEW && pin_after == 0;
    }
    const int64_t pinned_mapped = s->n_pinned_slots - s->n_orphan - own_only;
    const int64_t avail = s->n_free_slots + (s->n_resident - pinned_mapped) - protect;
    if (need_new > avail) {
        if (pin)
            return SKV_ERR_CAPACITY;
        int64_t left = avail > 0 ? avail : 0;
        for (int64_t i = 0; i < N; i++)
            if (cls[i] == C_NEW)
                cls[i] = left-- > 0 ? C_NEW : C_SKIP;
    }
    size_t bytes = 0;
    int64_t nx = 0;
    for (int64_t i = 0; i < N; i++)
        if (cls[i] == C_REFRESH || cls[i] == C_NEW)
            bytes += skv_round_up(image_bytes(s, sel->page[i]), 64), nx++;
    SKV_TRY(grow_staging(s, bytes, nx));

    /* ---- commit: the copy is the only thing that can fail ---- */
    if (pin)
        unpin(s, sel);
    /* reference byte: bit 0 the clock's reference bit, bit 1 "protected in this fetch" */
    for (int64_t i = 0; i < N; i++) {
        const int32_t sl = s->page_slot[sel->page[i]];
        if (sl >= 0 && cls[i] != C_NEW && cls[i] != C_SKIP)
            s->slot_ref[sl] |= 2;
    }
    size_t off = 0, moved = 0;
    nx = 0;
    for (int64_t i = 0; i < N; i++) {
        if (cls[i] != C_REFRESH && cls[i] != C_NEW)
            continue;
        const int32_t id = sel->page[i];
        int32_t sl = s->page_slot[id];
        if (cls[i] == C_NEW) {
            if (sl >= 0)
                slot_unmap(s, sl); /* pinned elsewhere: orphaned until unpinned */
            if (s->n_free_slots) {
                sl = s->free_slots[--s->n_free_slots];
            } else {
                for (;;) { /* the clock, over unpinned and unprotected slots */
                    sl = (int32_t)s->hand;
                    s->hand = s->hand + 1 == s->C ? 0 : s->hand + 1;
                    if (s->slot_page[sl] < 0 || s->slot_pin[sl] > 0 || (s->slot_ref[sl] & 2))
                        continue;
                    if (s->slot_ref[sl] & 1) {
                        s->slot_ref[sl] = 0;
                        continue;
                    }
                    break;
                }
                slot_unmap(s, sl);
                s->n_free_slots--; /* slot_unmap put it on the free list: take it back */
                s->ctr.evictions++;
            }
            s->slot_page[sl] = -3; /* reserved: not resident until the copy succeeds */
            s->slot_ref[sl] = 2;
        }
        const size_t b = image_bytes(s, id);
        memcpy(s->staging + off, pg(s, id), b);
        s->xfer[nx++] = (skv_tier_xfer){sl, off, b};
        off += skv_round_up(b, 64);
        moved += b;
    }
    int rc = 0;
    if (nx) {
        s->ctr.copy_calls++;
        rc = s->tier.copy(s->tier.user, SKV_TIER_TO_HOT, s->hot, s->slot_bytes, s->staging, off,
                          s->xfer, nx);
    }
    int64_t k = 0;
    for (int64_t i = 0; i < N; i++) {
        if (cls[i] != C_REFRESH && cls[i] != C_NEW)
            continue;
        const int32_t id = sel->page[i], sl = (int32_t)s->xfer[k++].slot;
        if (rc) { /* the slot's contents are unknown now: it holds nothing */
            s->slot_ref[sl] = 0;
            if (cls[i] == C_REFRESH)
                slot_unmap(s, sl);
            else
                slot_free(s, sl);
            continue;
        }
        if (cls[i] == C_NEW) {
            s->slot_page[sl] = id;
            s->page_slot[id] = sl;
            s->n_resident++;
        }
        s->slot_ver[sl] = s->version[id];
        s->slot_flight[sl] = 1;
    }
    for (int64_t i = 0; i < N; i++) { /* protection ends; every selected page was referenced */
        const int32_t sl = s->page_slot[sel->page[i]];
        if (sl >= 0)
            s->slot_ref[sl] = 1;
    }
    if (rc) {
        s->ctr.io_errors++;
        return SKV_ERR_IO;
    }
    s->ctr.bytes_to_hot += (int64_t)moved;
    s->ctr.fetch_pages += N;
    for (int64_t i = 0; i < N; i++) {
        s->ctr.fetch_hits += cls[i] == C_HIT;
        s->ctr.fetch_stale += cls[i] == C_REFRESH;
        s->ctr.fetch_misses += cls[i] == C_NEW;
    }
    s->unfenced = nx > 0;
    if (!pin)
        return SKV_OK;
    SKV_TRY(do_fence(s));
    for (int64_t i = 0; i < N; i++) {
        const int32_t sl = s->page_slot[sel->page[i]];
        sel->slot[i] = sl;
        if (s->slot_pin[sl]++ == 0)
            s->n_pinned_slots++;
    }
    sel->fetched = 1;
    return SKV_OK;
}

skv_status skv_store_fetch(skv_store *s, skv_store_sel *sel)
{
    if (!s || !sel || sel->s != s)
        return SKV_ERR_INVALID_ARG;
    return fetch(s, sel, 1);
}

skv_status skv_store_prefetch(skv_store *s, const skv_store_sel *sel)
{
    if (!s || !sel || sel->s != s)
        return SKV_ERR_INVALID_ARG;
    return fetch(s, (skv_store_sel *)sel, 0);
}

skv_status skv_store_release(skv_store *s, skv_store_sel *sel)
{
    if (!s || !sel || sel->s != s)
        return SKV_ERR_INVALID_ARG;
    unpin(s, sel);
    return SKV_OK;
}

void store_sel_unpin(skv_store_sel *sel) { unpin(sel->s, sel); }

skv_status skv_store_evict(skv_store *s, int64_t max_pages, int64_t *out_evicted)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    int64_t n = 0;
    if (max_pages < 0)
        max_pages = INT64_MAX;
    /* two turns of the clock: the first clears reference bits it passes */
    for (int64_t step = 0; step < 2 * s->C && n < max_pages; step++) {
        const int32_t sl = (int32_t)s->hand;
        s->hand = s->hand + 1 == s->C ? 0 : s->hand + 1;
        if (s->slot_page[sl] < 0 || s->slot_pin[sl] > 0)
            continue;
        if (s->slot_ref[sl] && step < s->C) {
            s->slot_ref[sl] = 0;
            continue;
        }
        slot_unmap(s, sl);
        s->slot_ref[sl] = 0;
        n++;
    }
    s->ctr.evictions += n;
    if (out_evicted)
        *out_evicted = n;
    return SKV_OK;
}

skv_status skv_store_check_hot(skv_store *s, int64_t *out_bad)
{
    if (!s || !out_bad)
        return SKV_ERR_INVALID_ARG;
    if (!s->hot)
        return SKV_ERR_STATE;
    SKV_TRY(do_fence(s));
    const int64_t batch = 256;
    SKV_TRY(grow_staging(s, (size_t)batch * s->slot_bytes, batch));
    int64_t bad = 0;
    for (int64_t first = 0; first < s->C;) {
        int64_t nx = 0;
        size_t off = 0;
        for (; first < s->C && nx < batch; first++) {
            const int32_t id = s->slot_page[first];
            if (id < 0 || s->slot_ver[first] != s->version[id])
                continue; /* stale copies are refreshed before use */
            const size_t b = image_bytes(s, id);
            s->xfer[nx++] = (skv_tier_xfer){first, off, b};
            off += s->slot_bytes;
        }
        if (!nx)
            continue;
        s->ctr.copy_calls++;
        if (s->tier.copy(s->tier.user, SKV_TIER_TO_HOST, s->hot, s->slot_bytes, s->staging, off,
                         s->xfer, nx) ||
            s->tier.fence(s->tier.user)) {
            s->ctr.io_errors++;
            return SKV_ERR_IO;
        }
        for (int64_t i = 0; i < nx; i++) {
            s->ctr.bytes_to_host += (int64_t)s->xfer[i].bytes;
            const int32_t id = s->slot_page[s->xfer[i].slot];
            bad += memcmp(s->staging + s->xfer[i].offset, pg(s, id), s->xfer[i].bytes) != 0;
        }
    }
    *out_bad = bad;
    return SKV_OK;
}
