/* Appending tokens and removing position ranges.
 *
 * An append of m tokens to (seq, layer) is planned once for every head (the heads of a layer
 * hold the same tokens): `a` tokens complete the sinks, the rest join the window, and when the
 * window reaches n_window + P tokens its oldest f tokens (a multiple of P) leave it for the
 * body. Everything the commit needs is reserved first; heads then commit independently (in
 * parallel when a bulk clustering makes it worth it). */
#ifdef _OPENMP
#include <omp.h>
#endif

#include "store/store_impl.h"

#define PAR_MIN_TOKENS 256 /* an append this long copies its heads in parallel */

/* One token of the input, head h, into a row of the store format. */
static void put_row(const skv_store *s, uint8_t *dst, const skv_store_rows *r, int64_t i,
                    int32_t h)
{
    const size_t at = (size_t)i * (size_t)s->H + (size_t)h;
    const size_t vb = (size_t)s->VD * s->esize;
    if (r->dtype == s->p.dtype) {
        memcpy(dst, (const uint8_t *)r->k + at * s->k_bytes, s->k_bytes);
        if (vb)
            memcpy(dst + s->k_bytes, (const uint8_t *)r->v + at * vb, vb);
    } else {
        skv_convert(s->p.dtype, dst, SKV_F32, (const float *)r->k + at * (size_t)s->D, s->D);
        if (vb)
            skv_convert(s->p.dtype, dst + s->k_bytes, SKV_F32,
                        (const float *)r->v + at * (size_t)s->VD, s->VD);
    }
}

/* Appends input token i (head h) at the end of an ordered page list (sinks, window,
 * positional body): into the last page (copied first if shared) or a new one, written there
 * directly. *dirty: the leaf whose page statistics are pending (computed when the push moves
 * on). */
static void list_push(skv_store *s, int32_t h, hidx *x, int32_t *list, int32_t *n_list,
                      const skv_store_rows *in, int64_t i, int32_t pos, int64_t rank,
                      int32_t *dirty)
{
    int32_t l, id;
    if (*n_list == 0 || pg_n(s, x->leaf[list[*n_list - 1]].page) == s->P) {
        id = resv_page(s, h);
        l = leaf_new(x, id, -1);
        list[(*n_list)++] = l;
    } else {
        l = list[*n_list - 1];
        id = x->leaf[l].page;
        if (s->refcnt[id] > 1) {
            id = resv_cow(s, h, id);
            x->leaf[l].page = id;
        } else if (*dirty != l) {
            page_changed(s, id);
        }
    }
    if (*dirty != l) {
        if (*dirty >= 0)
            page_stats(s, x->leaf[*dirty].page, x->aug_m);
        *dirty = l;
    }
    const int32_t k = pg_n(s, id);
    put_row(s, pg_row(s, id, k), in, i, h);
    pg_pos(s, id)[k] = pos;
    pg_tail(s, id)->n = k + 1;
    x->leaf_of[rank] = l;
}

static void flush_dirty(skv_store *s, hidx *x, int32_t *dirty)
{
    if (*dirty >= 0)
        page_stats(s, x->leaf[*dirty].page, x->aug_m);
    *dirty = -1;
}

typedef struct plan {
    int64_t n0, m, a, r, w, f, kept;
    int bulk, clustered;
    size_t staging; /* bytes of staged rows per head */
} plan;

static void head_append(skv_store *s, int32_t h, slayer *ly, const skv_store_rows *in,
                        const plan *pl, uint8_t *ws)
{
    hidx *x = &ly->h[h];
    const int32_t P = s->P;
    const int64_t n0 = pl->n0, a = pl->a, m = pl->m, w = pl->w, f = pl->f;
    uint8_t *stage = ws + skv_round_up(s->row_bytes, 64);
    void *cs = stage + skv_round_up(pl->staging, 64);
    int32_t dirty = -1;

    for (int64_t i = 0; i < a; i++)
        list_push(s, h, x, x->sink, &x->n_sinkp, in, i, ly->pos[n0 + i], n0 + i, &dirty);
    flush_dirty(s, x, &dirty);

    int64_t next = a; /* next input token for the window */
    if (f > 0 && pl->clustered) {
        /* the first f tokens of (window, input) go into the index */
        const int64_t from_win = f < w ? f : w;
        const int32_t win_pages = (int32_t)((from_win + P - 1) / P);
        const size_t vb = (size_t)s->VD * s->esize;
        if (pl->bulk) {
            /* the rows stay where they are (window pages, the caller's input): the bulk build
               reads them through pointers and copies each once, into its page */
            const uint8_t **kp = (const uint8_t **)stage, **vp = kp + f;
            uint8_t *conv = stage + (size_t)f * 2 * sizeof *kp;
            int64_t k = 0;
            for (int32_t p = 0; p < win_pages; p++) {
                const int32_t id = x->leaf[x->win[p]].page;
                for (int32_t j = 0; j < pg_n(s, id); j++, k++)
                    kp[k] = pg_row(s, id, j), vp[k] = kp[k] + s->k_bytes;
            }
            for (; k < f; k++, next++) {
                const size_t at = (size_t)next * (size_t)s->H + (size_t)h;
                if (in->dtype == s->p.dtype) {
                    kp[k] = (const uint8_t *)in->k + at * s->k_bytes;
                    vp[k] = vb ? (const uint8_t *)in->v + at * vb : NULL;
                } else { /* f32 input: converted once */
                    uint8_t *r = conv + (size_t)k * s->row_bytes;
                    put_row(s, r, in, next, h);
                    kp[k] = r, vp[k] = r + s->k_bytes;
                }
            }
            /* ranks: the window's tokens, then the input's after any new sinks */
            cluster_bulk(s, h, x, ly, kp, vp, f, n0 - w + a, cs);
        } else if (f > w) {
            int64_t k = 0;
            for (int32_t p = 0; p < win_pages; p++) {
                const int32_t id = x->leaf[x->win[p]].page;
                const int32_t n = pg_n(s, id);
                memcpy(stage + (size_t)k * s->row_bytes, pg_row(s, id, 0), (size_t)n * s->row_bytes);
                k += n;
            }
            for (; k < f; k++, next++)
                put_row(s, stage + (size_t)k * s->row_bytes, in, next, h);
            for (int64_t i = 0; i < f; i++)
                cluster_insert(s, h, x, ly, stage + (size_t)i * s->row_bytes, n0 - w + a + i, cs);
        } else {
            int64_t rank = n0 - w;
            for (int32_t p = 0; p < win_pages; p++) {
                const int32_t id = x->leaf[x->win[p]].page;
                for (int32_t j = 0; j < pg_n(s, id); j++)
                    cluster_insert(s, h, x, ly, pg_row(s, id, j), rank++, cs);
            }
        }
        for (int32_t p = 0; p < win_pages; p++) {
            resv_unref(s, h, x->leaf[x->win[p]].page);
            leaf_free(x, x->win[p]);
        }
        memmove(x->win, x->win + win_pages, (size_t)(x->n_winp - win_pages) * sizeof *x->win);
        x->n_winp -= win_pages;
    } else if (f > 0) {
        /* positional: whole window pages become body pages as they are */
        const int32_t move = (int32_t)((f < w ? f : w + P - 1) / P);
        const int32_t mv = move < x->n_winp ? move : x->n_winp;
        memcpy(x->body + x->n_body, x->win, (size_t)mv * sizeof *x->win);
        x->n_body += mv;
        memmove(x->win, x->win + mv, (size_t)(x->n_winp - mv) * sizeof *x->win);
        x->n_winp -= mv;
        for (; next < a + (f > w ? f - w : 0); next++)
            list_push(s, h, x, x->body, &x->n_body, in, next, ly->pos[n0 + next], n0 + next,
                      &dirty);
        flush_dirty(s, x, &dirty);
    }
    for (; next < m; next++)
        list_push(s, h, x, x->win, &x->n_winp, in, next, ly->pos[n0 + next], n0 + next, &dirty);
    flush_dirty(s, x, &dirty);
}

/* Room for `need` entries in an int32 list. */
static skv_status list_grow(skv_context *ctx, int32_t **list, int32_t n, int32_t *cap, int64_t need)
{
    if (need <= *cap)
        return SKV_OK;
    if (need > INT32_MAX)
        return SKV_ERR_CAPACITY;
    int64_t c = *cap ? *cap : 4;
    while (c < need)
        c *= 2;
    int32_t *b = skv_alloc(ctx, (size_t)c * sizeof *b);
    if (!b)
        return SKV_ERR_NOMEM;
    if (n)
        memcpy(b, *list, (size_t)n * sizeof *b);
    skv_free(ctx, *list, (size_t)*cap * sizeof **list);
    *list = b;
    *cap = (int32_t)c;
    return SKV_OK;
}

/* Position array and every head's leaf map for `need` tokens. */
static skv_status layer_grow(skv_store *s, slayer *ly, int64_t need)
{
    if (need <= ly->cap)
        return SKV_OK;
    int64_t cap = ly->cap ? ly->cap : 64;
    while (cap < need)
        cap *= 2;
    skv_context *ctx = s->ctx;
    const int32_t H = s->H;
    int32_t *pos = skv_alloc(ctx, (size_t)cap * 4);
    int32_t **maps = skv_alloc_zero(ctx, (size_t)H * sizeof *maps);
    int fail = !pos || !maps;
    for (int32_t h = 0; !fail && h < H; h++)
        fail = !(maps[h] = skv_alloc(ctx, (size_t)cap * 4));
    if (fail) {
        for (int32_t h = 0; maps && h < H; h++)
            skv_free(ctx, maps[h], (size_t)cap * 4);
        skv_free(ctx, maps, (size_t)H * sizeof *maps);
        skv_free(ctx, pos, (size_t)cap * 4);
        return SKV_ERR_NOMEM;
    }
    if (ly->n)
        memcpy(pos, ly->pos, (size_t)ly->n * 4);
    skv_free(ctx, ly->pos, (size_t)ly->cap * 4);
    ly->pos = pos;
    for (int32_t h = 0; h < H; h++) {
        if (ly->n)
            memcpy(maps[h], ly->h[h].leaf_of, (size_t)ly->n * 4);
        skv_free(ctx, ly->h[h].leaf_of, (size_t)ly->cap * 4);
        ly->h[h].leaf_of = maps[h];
    }
    skv_free(ctx, maps, (size_t)H * sizeof *maps);
    ly->cap = cap;
    return SKV_OK;
}

skv_status skv_store_append(skv_store *s, int32_t seq, int32_t layer, const skv_store_rows *rows)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    skv_context *ctx = s->ctx;
    sseq *q = store_seq(s, seq);
    SKV_CHECK(ctx, q && rows && layer >= 0 && layer < s->p.n_layers);
    const int64_t m = rows->n_tokens;
    SKV_CHECK(ctx, m >= 0);
    if (m == 0)
        return SKV_OK;
    SKV_CHECK(ctx, rows->dtype == s->p.dtype || rows->dtype == SKV_F32);
    SKV_CHECK(ctx, rows->k && rows->positions && (rows->v != NULL) == (s->VD > 0));
    slayer *ly = &q->ly[layer];
    SKV_CHECK(ctx, m <= INT32_MAX - ly->n);
    const int32_t *pos = rows->positions;
    int32_t prev = ly->n ? ly->pos[ly->n - 1] : -1;
    for (int64_t i = 0; i < m; i++) {
        SKV_CHECK(ctx, pos[i] > prev && pos[i] < INT32_MAX);
        prev = pos[i];
    }
    SKV_TRY(cold_touch(s, q));

    const int32_t P = s->P, H = s->H;
    plan pl = {0};
    pl.n0 = ly->n, pl.m = m;
    pl.clustered = s->p.layout == SKV_STORE_CLUSTERED;
    const int sinks_open = ly->n == ly->n_sink && ly->n_sink < s->p.n_sink;
    pl.a = sinks_open ? (m < s->p.n_sink - ly->n_sink ? m : s->p.n_sink - ly->n_sink) : 0;
    pl.r = m - pl.a;
    pl.w = ly->n_win;
    if (pl.w + pl.r >= (int64_t)s->p.n_window + P)
        pl.f = (pl.w + pl.r - s->p.n_window) / P * P;
    pl.kept = pl.w + pl.r - pl.f;
    pl.bulk = pl.clustered && pl.f >= s->p.bulk_min;
    if (pl.bulk) /* row pointers, and the rows themselves when they need converting */
        pl.staging = (size_t)pl.f * (2 * sizeof(void *) + (rows->dtype != s->p.dtype ? s->row_bytes : 0));
    else if (pl.clustered && pl.f > pl.w)
        pl.staging = (size_t)pl.f * s->row_bytes;

    /* ---- reserve ---- */
    SKV_TRY(layer_grow(s, ly, ly->n + m));
    const int32_t win_cap = (s->p.n_window + P - 1) / P + 2;
    const int32_t sink_cap = (s->p.n_sink + P - 1) / P + 1;
    int64_t *need = store_scratch(s, (size_t)H * 2 * sizeof(int64_t));
    if (!need)
        return SKV_ERR_NOMEM;
    int64_t *rel = need + H;
    for (int32_t h = 0; h < H; h++) {
        hidx *x = &ly->h[h];
        int64_t pages = (pl.a ? (pl.a + P - 1) / P + 1 : 0) + (pl.kept + P - 1) / P + 1;
        int64_t nodes = 0;
        rel[h] = x->n_winp + x->n_sinkp + 4;
        if (pl.f && pl.clustered) {
            pages += pl.bulk ? (pl.f + P - 1) / P + 1 : 2 * pl.f;
            nodes = pl.bulk ? (pl.f + P - 1) / P + 2 + cluster_insert_nodes(s, x, 1)
                            : cluster_insert_nodes(s, x, pl.f);
            rel[h] += pl.bulk ? 0 : 2 * pl.f;
        } else if (pl.f) {
            pages += (pl.f + P - 1) / P + 1;
            SKV_TRY(list_grow(ctx, &x->body, x->n_body, &x->cap_body, x->n_body + (pl.f + P - 1) / P + 1));
        }
        need[h] = pages;
        if (pl.a)
            SKV_TRY(list_grow(ctx, &x->sink, x->n_sinkp, &x->cap_sinkp, sink_cap));
        SKV_TRY(list_grow(ctx, &x->win, x->n_winp, &x->cap_winp, win_cap));
        SKV_TRY(hidx_grow(s, x, pages, nodes));
    }
    /* heads commit in parallel when there is enough work: a bulk clustering, or a long append */
    int threads = skv_threads(ctx);
    if (!pl.bulk && m < PAR_MIN_TOKENS)
        threads = 1;
    threads = threads > H ? H : threads;
    size_t cs = cluster_insert_scratch(s);
    if (pl.bulk) {
        const size_t b = cluster_bulk_scratch(s, pl.f);
        cs = b > cs ? b : cs;
    }
    /* each thread's area starts on a cache line: its staging holds pointers and rows */
    const size_t per = skv_round_up(s->row_bytes, 64) + skv_round_up(pl.staging, 64) +
                       skv_round_up(cs, 64) + 64;
    /* store_scratch is reused for the per-thread areas: copy the reservation counts first */
    int64_t counts[2 * 64];
    int64_t *cnt = H <= 64 ? counts : NULL;
    if (!cnt) {
        cnt = skv_alloc(ctx, (size_t)H * 2 * sizeof *cnt);
        if (!cnt)
            return SKV_ERR_NOMEM;
    }
    memcpy(cnt, need, (size_t)H * 2 * sizeof *cnt);
    uint8_t *ws = store_scratch(s, per * (size_t)threads + 64);
    skv_status st = ws ? store_reserve(s, H, cnt, cnt + H) : SKV_ERR_NOMEM;
    if (cnt != counts)
        skv_free(ctx, cnt, (size_t)H * 2 * sizeof *cnt);
    if (st != SKV_OK)
        return st;

    /* ---- commit: nothing fails from here on ---- */
    memcpy(ly->pos + ly->n, pos, (size_t)m * sizeof *pos);
    ly->n += m;
    ws = (uint8_t *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
#endif
    for (int32_t h = 0; h < H; h++) {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        head_append(s, h, ly, rows, &pl, ws + (size_t)t * per);
    }
    ly->n_sink += pl.a;
    ly->n_win = pl.kept;
    ly->epoch = store_tick(s);
    store_reserve_end(s);
    if (pl.m > 1)
        for (int32_t h = 0; h < H; h++)
            hidx_shrink(s, &ly->h[h]);
    return SKV_OK;
}

/* ---- removal --------------------------------------------------------------------------- */

static inline int in_range(int32_t p, int32_t p0, int32_t p1) { return p >= p0 && p < p1; }

/* Removes [p0, p1) from an ordered list (sinks or window) and packs it again: every page full
 * but the last. Pages from the first affected one on are rewritten (copied first if shared). */
static void list_remove(skv_store *s, int32_t slot, hidx *x, slayer *ly, int32_t *list,
                        int32_t *n_list, int32_t p0, int32_t p1)
{
    const int32_t P = s->P;
    int32_t i0 = -1;
    for (int32_t i = 0; i < *n_list && i0 < 0; i++) {
        const int32_t id = x->leaf[list[i]].page;
        for (int32_t j = 0; j < pg_n(s, id); j++)
            if (in_range(pg_pos(s, id)[j], p0, p1)) {
                i0 = i;
                break;
            }
    }
    if (i0 < 0)
        return;
    for (int32_t i = i0; i < *n_list; i++) {
        sleaf *lf = &x->leaf[list[i]];
        if (s->refcnt[lf->page] > 1)
            lf->page = resv_cow(s, slot, lf->page);
        else
            page_changed(s, lf->page);
    }
    int32_t di = i0, dk = 0;
    for (int32_t i = i0; i < *n_list; i++) {
        const int32_t id = x->leaf[list[i]].page;
        const int32_t n = pg_n(s, id); /* set below only for pages already passed */
        for (int32_t j = 0; j < n; j++) {
            const int32_t p = pg_pos(s, id)[j];
            if (in_range(p, p0, p1))
                continue;
            const int32_t did = x->leaf[list[di]].page;
            if (di != i || dk != j) {
                memcpy(pg_row(s, did, dk), pg_row(s, id, j), s->row_bytes);
                pg_pos(s, did)[dk] = p;
                if (di != i)
                    x->leaf_of[layer_rank(ly, p)] = list[di];
            }
            if (++dk == P)
                di++, dk = 0;
        }
    }
    const int32_t keep = di + (dk > 0);
    for (int32_t i = i0; i < keep; i++) {
        const int32_t id = x->leaf[list[i]].page;
        const int32_t n = i < di ? P : dk;
        for (int32_t j = n; j < P; j++)
            pg_pos(s, id)[j] = -1;
        pg_tail(s, id)->n = n;
        page_stats(s, id, x->aug_m);
    }
    for (int32_t i = keep; i < *n_list; i++) {
        resv_unref(s, slot, x->leaf[list[i]].page);
        leaf_free(x, list[i]);
    }
    *n_list = keep;
}

/* Positional body: drops [p0, p1) page by page; a page left under a quarter full joins the
 * previous page when it fits there. */
static void body_remove(skv_store *s, int32_t slot, hidx *x, slayer *ly, int32_t p0, int32_t p1)
{
    const int32_t P = s->P;
    int32_t o = 0;
    for (int32_t i = 0; i < x->n_body; i++) {
        const int32_t l = x->body[i];
        int32_t id = x->leaf[l].page;
        const int32_t n = pg_n(s, id);
        const int32_t *pp = pg_pos(s, id);
        if (n == 0 || pp[0] >= p1 || pp[n - 1] < p0) {
            x->body[o++] = l;
            continue;
        }
        int32_t k = 0;
        for (int32_t j = 0; j < n; j++)
            k += !in_range(pp[j], p0, p1);
        if (k == 0) {
            resv_unref(s, slot, id);
            leaf_free(x, l);
            continue;
        }
        if (s->refcnt[id] > 1) {
            id = resv_cow(s, slot, id);
            x->leaf[l].page = id;
        } else {
            page_changed(s, id);
        }
        int32_t *pos = pg_pos(s, id), c = 0;
        for (int32_t j = 0; j < n; j++) {
            if (in_range(pos[j], p0, p1))
                continue;
            if (c != j) {
                memcpy(pg_row(s, id, c), pg_row(s, id, j), s->row_bytes);
                pos[c] = pos[j];
            }
            c++;
        }
        for (int32_t j = c; j < P; j++)
            pos[j] = -1;
        pg_tail(s, id)->n = c;
        if (c <= P / 4 && o > 0 && pg_n(s, x->leaf[x->body[o - 1]].page) + c <= P) {
            const int32_t pl = x->body[o - 1];
            int32_t tid = x->leaf[pl].page;
            if (s->refcnt[tid] > 1) {
                tid = resv_cow(s, slot, tid);
                x->leaf[pl].page = tid;
            } else {
                page_changed(s, tid);
            }
            const int32_t nt = pg_n(s, tid);
            for (int32_t j = 0; j < c; j++) {
                memcpy(pg_row(s, tid, nt + j), pg_row(s, id, j), s->row_bytes);
                pg_pos(s, tid)[nt + j] = pos[j];
                x->leaf_of[layer_rank(ly, pos[j])] = pl;
            }
            pg_tail(s, tid)->n = nt + c;
            page_stats(s, tid, x->aug_m);
            resv_unref(s, slot, id);
            leaf_free(x, l);
            continue;
        }
        page_stats(s, id, x->aug_m);
        x->body[o++] = l;
    }
    x->n_body = o;
}

static int64_t lower_bound(const slayer *ly, int64_t p)
{
    int64_t lo = 0, hi = ly->n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (ly->pos[mid] < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

skv_status skv_store_seq_remove(skv_store *s, int32_t seq, int32_t p0, int32_t p1)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    skv_context *ctx = s->ctx;
    sseq *q = store_seq(s, seq);
    SKV_CHECK(ctx, q && p0 >= 0 && (p1 < 0 || p1 >= p0));
    SKV_TRY(cold_touch(s, q));
    if (p1 < 0)
        p1 = INT32_MAX;
    const int32_t L = s->p.n_layers, H = s->H;
    const int clustered = s->p.layout == SKV_STORE_CLUSTERED;

    /* distinct affected leaves per (layer, head), sizes of the scratch */
    int32_t max_leaf = 0;
    int any = 0;
    for (int32_t l = 0; l < L; l++) {
        const slayer *ly = &q->ly[l];
        any |= lower_bound(ly, p0) < lower_bound(ly, p1);
        for (int32_t h = 0; h < H; h++)
            max_leaf = ly->h[h].n_leaf > max_leaf ? ly->h[h].n_leaf : max_leaf;
    }
    if (!any)
        return SKV_OK;
    const size_t cs = cluster_remove_scratch(s);
    const size_t marks = skv_round_up((size_t)max_leaf * 5 + 64, 64);
    const size_t counts = (size_t)L * H * 2 * sizeof(int64_t);
    uint8_t *ws = store_scratch(s, counts + marks + cs + 64);
    if (!ws)
        return SKV_ERR_NOMEM;
    int64_t *need = (int64_t *)ws, *rel = need + (size_t)L * H;
    uint8_t *mark = ws + counts;
    int32_t *aff = (int32_t *)(mark + skv_round_up((size_t)max_leaf, 64));
    void *cscratch = mark + marks;
    for (int32_t l = 0; l < L; l++) {
        const slayer *ly = &q->ly[l];
        const int64_t r0 = lower_bound(ly, p0), r1 = lower_bound(ly, p1);
        for (int32_t h = 0; h < H; h++) {
            const hidx *x = &ly->h[h];
            int64_t a = 0;
            if (r0 < r1) {
                memset(mark, 0, (size_t)x->n_leaf);
                for (int64_t r = r0; r < r1; r++)
                    if (!mark[x->leaf_of[r]])
                        mark[x->leaf_of[r]] = 1, a++;
            }
            const int64_t lists = r0 < r1 ? x->n_sinkp + x->n_winp : 0;
            need[(size_t)l * H + h] = 2 * a + lists;
            rel[(size_t)l * H + h] = 3 * a + 2 * lists;
        }
    }
    SKV_TRY(store_reserve(s, L * H, need, rel));

    /* ---- commit ---- */
    for (int32_t l = 0; l < L; l++) {
        slayer *ly = &q->ly[l];
        const int64_t r0 = lower_bound(ly, p0), r1 = lower_bound(ly, p1);
        if (r0 == r1)
            continue;
        for (int32_t h = 0; h < H; h++) {
            hidx *x = &ly->h[h];
            const int32_t slot = l * H + h;
            list_remove(s, slot, x, ly, x->sink, &x->n_sinkp, p0, p1);
            list_remove(s, slot, x, ly, x->win, &x->n_winp, p0, p1);
            if (!clustered) {
                body_remove(s, slot, x, ly, p0, p1);
                continue;
            }
            /* body leaves, each once, in order of first appearance */
            int32_t na = 0;
            memset(mark, 0, (size_t)x->n_leaf);
            const int64_t b0 = ly->n_sink, b1 = ly->n - ly->n_win;
            for (int64_t r = r0 > b0 ? r0 : b0; r < (r1 < b1 ? r1 : b1); r++) {
                const int32_t lf = x->leaf_of[r];
                if (!mark[lf])
                    mark[lf] = 1, aff[na++] = lf;
            }
            for (int32_t i = 0; i < na; i++)
                if (x->leaf[aff[i]].page >= 0)
                    cluster_remove(s, slot, x, ly, aff[i], p0, p1, cscratch);
        }
        /* the layer's arrays lose ranks [r0, r1) */
        const int64_t gone = r1 - r0;
        int64_t gs = 0, gw = 0;
        for (int64_t r = r0; r < r1; r++) {
            gs += r < ly->n_sink;
            gw += r >= ly->n - ly->n_win;
        }
        memmove(ly->pos + r0, ly->pos + r1, (size_t)(ly->n - r1) * sizeof *ly->pos);
        for (int32_t h = 0; h < H; h++)
            memmove(ly->h[h].leaf_of + r0, ly->h[h].leaf_of + r1,
                    (size_t)(ly->n - r1) * sizeof *ly->h[h].leaf_of);
        ly->n -= gone;
        ly->n_sink -= gs;
        ly->n_win -= gw;
        ly->epoch = store_tick(s);
    }
    store_reserve_end(s);
    return SKV_OK;
}
