/* The selection object: its arrays (pages, valid rows, row masks, hot slots, per head), their
 * growth, and what a host reads from it (counts, block tables, staleness). */
#include "store/store_impl.h"

/* ---- the selection object -------------------------------------------------------------- */

skv_status skv_store_sel_create(skv_store *s, skv_store_sel **out)
{
    if (out)
        *out = NULL;
    if (!s || !out)
        return SKV_ERR_INVALID_ARG;
    skv_context *ctx = s->ctx;
    skv_store_sel *sel = skv_alloc_zero(ctx, sizeof *sel);
    if (!sel)
        return SKV_ERR_NOMEM;
    sel->head_off = skv_alloc_zero(ctx, (size_t)(s->H + 1) * sizeof *sel->head_off);
    sel->head_tokens = skv_alloc_zero(ctx, (size_t)s->H * sizeof *sel->head_tokens);
    if (!sel->head_off || !sel->head_tokens) {
        skv_free(ctx, sel->head_off, (size_t)(s->H + 1) * sizeof *sel->head_off);
        skv_free(ctx, sel->head_tokens, (size_t)s->H * sizeof *sel->head_tokens);
        skv_free(ctx, sel, sizeof *sel);
        return SKV_ERR_NOMEM;
    }
    sel->s = s;
    sel->seq = sel->layer = -1;
    *out = sel;
    return SKV_OK;
}

static void sel_free_arrays(skv_store_sel *sel)
{
    skv_context *ctx = sel->s->ctx;
    const size_t c = (size_t)sel->cap;
    skv_free(ctx, sel->page, c * sizeof *sel->page);
    skv_free(ctx, sel->nrow, c * sizeof *sel->nrow);
    skv_free(ctx, sel->slot, c * sizeof *sel->slot);
    skv_free(ctx, sel->mask, c * sizeof *sel->mask);
}

void skv_store_sel_destroy(skv_store_sel *sel)
{
    if (!sel)
        return;
    skv_store *s = sel->s;
    store_sel_unpin(sel);
    sel_free_arrays(sel);
    skv_free(s->ctx, sel->head_off, (size_t)(s->H + 1) * sizeof *sel->head_off);
    skv_free(s->ctx, sel->head_tokens, (size_t)s->H * sizeof *sel->head_tokens);
    skv_free(s->ctx, sel, sizeof *sel);
}

/* Room for n pages; the contents are kept. NOMEM changes nothing. The arrays exist even for
 * n = 0: a selection commits `sel->page + offset` and the like. */
skv_status sel_grow(skv_store_sel *sel, int64_t n)
{
    if (n <= sel->cap && sel->page)
        return SKV_OK;
    skv_context *ctx = sel->s->ctx;
    const int64_t c = n + n / 4 + 16;
    int32_t *pg = skv_alloc(ctx, (size_t)c * 4), *nr = skv_alloc(ctx, (size_t)c * 4);
    int32_t *sl = skv_alloc(ctx, (size_t)c * 4);
    uint64_t *mk = skv_alloc(ctx, (size_t)c * 8);
    if (!pg || !nr || !sl || !mk) {
        skv_free(ctx, pg, (size_t)c * 4), skv_free(ctx, nr, (size_t)c * 4);
        skv_free(ctx, sl, (size_t)c * 4), skv_free(ctx, mk, (size_t)c * 8);
        return SKV_ERR_NOMEM;
    }
    const size_t used = (size_t)sel->head_off[sel->s->H];
    if (sel->seq >= 0 && used) {
        memcpy(pg, sel->page, used * 4), memcpy(nr, sel->nrow, used * 4);
        memcpy(sl, sel->slot, used * 4), memcpy(mk, sel->mask, used * 8);
    }
    sel_free_arrays(sel);
    sel->page = pg, sel->nrow = nr, sel->slot = sl, sel->mask = mk;
    sel->cap = c;
    return SKV_OK;
}

int store_sel_stale(const skv_store *s, const skv_store_sel *sel)
{
    if (sel->seq < 0)
        return 1;
    const sseq *q = store_seq(s, sel->seq);
    return !q || q->ly[sel->layer].epoch != sel->epoch;
}

skv_status skv_store_sel_info_get(const skv_store_sel *sel, skv_store_sel_info *out)
{
    if (!sel || !out || out->struct_size < sizeof *out)
        return SKV_ERR_INVALID_ARG;
    const skv_store *s = sel->s;
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->seq = sel->seq, out->layer = sel->layer, out->n_kv_heads = s->H;
    if (sel->seq < 0)
        return SKV_OK;
    for (int32_t h = 0; h < s->H; h++) {
        const int64_t np = sel->head_off[h + 1] - sel->head_off[h];
        out->n_tokens += sel->head_tokens[h];
        out->n_pages += np;
        out->max_head_tokens = sel->head_tokens[h] > out->max_head_tokens ? sel->head_tokens[h]
                                                                          : out->max_head_tokens;
        out->max_head_pages = np > out->max_head_pages ? np : out->max_head_pages;
    }
    out->fetched = sel->fetched;
    out->stale = store_sel_stale(s, sel);
    return SKV_OK;
}

skv_status skv_store_sel_pages(const skv_store_sel *sel, int32_t kv_head, int32_t *out_n,
                               int64_t *out_tokens, int32_t *slots, int32_t *n_rows,
                               uint64_t *masks)
{
    if (!sel || sel->seq < 0 || kv_head < 0 || kv_head >= sel->s->H)
        return SKV_ERR_INVALID_ARG;
    if (store_sel_stale(sel->s, sel))
        return SKV_ERR_STATE;
    const int64_t a = sel->head_off[kv_head], b = sel->head_off[kv_head + 1];
    if (out_n)
        *out_n = (int32_t)(b - a);
    if (out_tokens)
        *out_tokens = sel->head_tokens[kv_head];
    for (int64_t i = a; i < b; i++) {
        if (slots)
            slots[i - a] = sel->fetched ? sel->slot[i] : -1;
        if (n_rows)
            n_rows[i - a] = sel->nrow[i];
        if (masks)
            masks[i - a] = sel->mask[i];
    }
    return SKV_OK;
}

/* Moves head h's pages (written at offset `at[h]`) down to be contiguous; fills the offsets. */
void sel_pack(skv_store_sel *sel, int32_t H, const int64_t *at, const int64_t *cnt)
{
    int64_t o = 0;
    for (int32_t h = 0; h < H; h++) {
        sel->head_off[h] = o;
        if (at[h] != o) {
            memmove(sel->page + o, sel->page + at[h], (size_t)cnt[h] * 4);
            memmove(sel->nrow + o, sel->nrow + at[h], (size_t)cnt[h] * 4);
            memmove(sel->mask + o, sel->mask + at[h], (size_t)cnt[h] * 8);
        }
        o += cnt[h];
    }
    sel->head_off[H] = o;
    for (int64_t i = 0; i < o; i++)
        sel->slot[i] = -1;
}

