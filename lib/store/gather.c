/* Gather: the selected rows of every KV head, from the host tier into contiguous caller
 * buffers in skv_sparse_attention's layout (one list per KV head); and read: tokens by position
 * rank, for hosts and tests that need the stored values back. */
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "sparsekv/slice.h"
#include "store/store_impl.h"

#define PREFETCH_PAGES 2 /* pages ahead: about 16 KiB in flight per thread */

typedef struct grow_ent { int32_t pos, page, j; } grow_ent;

static int pos_cmp(const void *a, const void *b)
{
    const int32_t x = ((const grow_ent *)a)->pos, y = ((const grow_ent *)b)->pos;
    return x < y ? -1 : x > y;
}

/* One row: K and V parts into their outputs, widened to f32 when asked. */
static inline void put(const skv_store *s, const skv_store_gather_out *o, int64_t r,
                       const uint8_t *src, int32_t pos)
{
    const size_t vb = (size_t)s->VD * s->esize;
    if (!o->k) { /* positions only */
    } else if (o->dtype == s->p.dtype) {
        memcpy((uint8_t *)o->k + (size_t)r * s->k_bytes, src, s->k_bytes);
        if (vb)
            memcpy((uint8_t *)o->v + (size_t)r * vb, src + s->k_bytes, vb);
    } else {
        row_to_f32(s, src, (float *)o->k + (size_t)r * s->D, s->D);
        if (vb)
            row_to_f32(s, src + s->k_bytes, (float *)o->v + (size_t)r * s->VD, s->VD);
    }
    o->k_pos[r] = pos;
}

/* Checks o against the selection, and the rows of the whole selection and of its largest
 * head. */
static skv_status gather_check(const skv_store *s, const skv_store_sel *sel,
                               const skv_store_gather_out *o, int64_t *total, int64_t *maxh)
{
    if (!s || !sel || sel->s != s || !o)
        return SKV_ERR_INVALID_ARG;
    skv_context *ctx = s->ctx;
    SKV_CHECK(ctx, o->struct_size == sizeof *o);
    SKV_CHECK(ctx, o->dtype == s->p.dtype || o->dtype == SKV_F32);
    SKV_CHECK(ctx, o->order == SKV_GATHER_PAGES || o->order == SKV_GATHER_POSITIONS);
    SKV_CHECK(ctx, o->row0 >= 0 && o->max_rows >= 0);
    /* the buffers' [row0 + max_rows] rows must be addressable: no wrapped row offset */
    const size_t widest = (size_t)(s->D > s->VD ? s->D : s->VD) * 4;
    SKV_CHECK(ctx, o->max_rows <= INT64_MAX - o->row0 &&
                       (uint64_t)(o->row0 + o->max_rows) <= SIZE_MAX / widest);
    /* k and v, or neither (positions only) */
    SKV_CHECK(ctx, o->k_pos && o->list_start && o->list_len &&
                       (o->k ? (o->v != NULL) == (s->VD > 0) : o->v == NULL));
    if (store_sel_stale(s, sel))
        return SKV_ERR_STATE;
    *total = 0, *maxh = 0;
    for (int32_t h = 0; h < s->H; h++) {
        *total += sel->head_tokens[h];
        *maxh = sel->head_tokens[h] > *maxh ? sel->head_tokens[h] : *maxh;
    }
    SKV_CHECK(ctx, *total <= o->max_rows);
    return SKV_OK;
}

/* The rows of head h from row r on; e: room for the head's rows (positions order only). */
static void gather_head(const skv_store *s, const skv_store_sel *sel, const skv_store_gather_out *o,
                        int32_t h, int64_t r, grow_ent *e)
{
    if (o->order == SKV_GATHER_PAGES) {
        const size_t vb = (size_t)s->VD * s->esize;
        for (int64_t i = 1; i < PREFETCH_PAGES && sel->head_off[h] + i < sel->head_off[h + 1]; i++)
            prefetch_image(s, sel->page[sel->head_off[h] + i]);
        for (int64_t i = sel->head_off[h]; i < sel->head_off[h + 1]; i++) {
            const int32_t id = sel->page[i];
            const int32_t *pp = pg_pos(s, id);
            if (i + PREFETCH_PAGES < sel->head_off[h + 1]) /* pages are scattered */
                prefetch_image(s, sel->page[i + PREFETCH_PAGES]);
            for (uint64_t m = sel->mask[i]; m;) {
                /* a run of selected rows: one kernel call (a whole page, usually) */
                const int j = __builtin_ctzll(m);
                int end = j;
                while (end < 64 && (m >> end & 1))
                    end++;
                m = end < 64 ? m & (~0ull << end) : 0;
                if (!o->k) {
                    memcpy(o->k_pos + r, pp + j, (size_t)(end - j) * 4);
                    r += end - j;
                } else if (o->dtype == s->p.dtype) {
                    s->kern.split_rows((uint8_t *)o->k + (size_t)r * s->k_bytes,
                                       vb ? (uint8_t *)o->v + (size_t)r * vb : NULL,
                                       pg_row(s, id, j), s->row_bytes, s->k_bytes, vb, end - j);
                    memcpy(o->k_pos + r, pp + j, (size_t)(end - j) * 4);
                    r += end - j;
                } else {
                    for (int jj = j; jj < end; jj++)
                        put(s, o, r++, pg_row(s, id, jj), pp[jj]);
                }
            }
        }
        return;
    }
    int64_t n = 0;
    for (int64_t i = sel->head_off[h]; i < sel->head_off[h + 1]; i++)
        for (uint64_t m = sel->mask[i]; m; m &= m - 1) {
            const int j = __builtin_ctzll(m);
            e[n++] = (grow_ent){pg_pos(s, sel->page[i])[j], sel->page[i], j};
        }
    qsort(e, (size_t)n, sizeof *e, pos_cmp);
    for (int64_t t = 0; t < n; t++)
        put(s, o, r++, pg_row(s, e[t].page, e[t].j), e[t].pos);
}

skv_status skv_store_gather(skv_store *s, const skv_store_sel *sel, const skv_store_gather_out *o,
                            int64_t *out_rows)
{
    int64_t total, maxh;
    SKV_TRY(gather_check(s, sel, o, &total, &maxh));
    const int32_t H = s->H;
    int threads = skv_threads(s->ctx);
    threads = threads > H ? H : threads;
    grow_ent *ents = NULL;
    if (o->order == SKV_GATHER_POSITIONS) {
        ents = store_scratch(s, (size_t)maxh * sizeof *ents * (size_t)threads + 64);
        if (!ents)
            return SKV_ERR_NOMEM;
    }
    int64_t start = o->row0;
    for (int32_t h = 0; h < H; h++) {
        o->list_start[h] = start;
        o->list_len[h] = (int32_t)sel->head_tokens[h];
        start += sel->head_tokens[h];
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
#endif
    for (int32_t h = 0; h < H; h++) {
#ifdef _OPENMP
        grow_ent *e = ents ? ents + (size_t)omp_get_thread_num() * (size_t)maxh : NULL;
#else
        grow_ent *e = ents;
#endif
        gather_head(s, sel, o, h, o->list_start[h], e);
    }
    if (out_rows)
        *out_rows = total;
    return SKV_OK;
}

skv_status skv_store_gather_slice(skv_context *wctx, const skv_store *s, const skv_store_sel *sel,
                                  const skv_store_gather_out *o, int32_t ith, int32_t nth,
                                  int64_t *out_rows)
{
    if (!wctx || nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    int64_t total, maxh;
    SKV_TRY(gather_check(s, sel, o, &total, &maxh));
    const int32_t H = s->H;
    const int32_t h0 = (int32_t)((int64_t)H * ith / nth), h1 = (int32_t)((int64_t)H * (ith + 1) / nth);
    grow_ent *e = NULL;
    if (o->order == SKV_GATHER_POSITIONS && h1 > h0) {
        e = skv_workspace_aux(wctx, 2, (size_t)maxh * sizeof *e + 64);
        if (!e)
            return SKV_ERR_NOMEM;
    }
    int64_t start = o->row0;
    for (int32_t h = 0; h < h1; h++) {
        if (h >= h0) {
            o->list_start[h] = start;
            o->list_len[h] = (int32_t)sel->head_tokens[h];
            gather_head(s, sel, o, h, start, e);
        }
        start += sel->head_tokens[h];
    }
    if (out_rows)
        *out_rows = total;
    return SKV_OK;
}

skv_status skv_store_read(skv_store *s, int32_t seq, int32_t layer, int64_t first, int64_t n,
                          void *k_out, void *v_out, int32_t *pos_out)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    sseq *q = store_seq(s, seq);
    SKV_CHECK(s->ctx, q && layer >= 0 && layer < s->p.n_layers && first >= 0 && n >= 0);
    const slayer *ly = &q->ly[layer];
    SKV_CHECK(s->ctx, first <= ly->n && n <= ly->n - first);
    SKV_CHECK(s->ctx, n == 0 || (k_out && (v_out != NULL) == (s->VD > 0)));
    SKV_TRY(cold_touch(s, q));
    const size_t vb = (size_t)s->VD * s->esize;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = first + i;
        const int32_t pos = ly->pos[r];
        if (pos_out)
            pos_out[i] = pos;
        for (int32_t h = 0; h < s->H; h++) {
            const int32_t id = ly->h[h].leaf[ly->h[h].leaf_of[r]].page;
            const int32_t *pp = pg_pos(s, id);
            int32_t j = 0;
            while (j < s->P && pp[j] != pos)
                j++;
            if (j == s->P)
                return SKV_ERR_STATE; /* the store is corrupt: skv_store_validate says how */
            const uint8_t *src = pg_row(s, id, j);
            const size_t at = (size_t)i * (size_t)s->H + (size_t)h;
            memcpy((uint8_t *)k_out + at * s->k_bytes, src, s->k_bytes);
            if (vb)
                memcpy((uint8_t *)v_out + at * vb, src + s->k_bytes, vb);
        }
    }
    return SKV_OK;
}
