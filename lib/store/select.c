/* Selection: for one query token, per KV head, the sinks, the window, and the body pages that
 * rank highest, within a token budget; or an external token set mapped to pages.
 *
 * SKV_SCORE_INDEX descends the index as a beam: at each step every frontier entry (a node or a
 * page) gets the score max_g q_g.c + w |q_g| r (w = 1 is a true upper bound of the entry's best
 * token; the default 0.1 ranks better, because a radius is the spread in every direction while
 * only the spread along q matters), the entries covering 2 * candidates * budget tokens (at
 * least 512 pages' worth, and at least fanout entries) are kept and their nodes replaced by
 * their children, until only pages remain; a frontier of fewer than 4 * fanout entries is
 * expanded whole, as coarse centroids say little. The pages covering candidates * budget tokens
 * (at least 64 pages' worth) are then scored exactly by their best token. A query
 * group's heads are compared after subtracting each head's best score among the entries, so one
 * head with large logits does not crowd out the others. */
#include <math.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "store/store_impl.h"

void skv_store_query_init(skv_store_query *q)
{
    if (!q)
        return;
    memset(q, 0, sizeof *q);
    q->struct_size = sizeof *q;
    q->dtype = SKV_F32;
    q->budget = 2048;
    q->score = SKV_SCORE_INDEX;
    q->candidates = 3.0f;
    q->radius_weight = 0.1f;
}

/* ---- scoring --------------------------------------------------------------------------- */

typedef struct rank_ent { float s; int32_t i; } rank_ent;

static int rank_cmp(const void *pa, const void *pb)
{
    const rank_ent *a = pa, *b = pb;
    const int an = a->s != a->s, bn = b->s != b->s; /* NaN ranks last */
    if (an != bn)
        return an - bn;
    if (!an && a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

static inline uint64_t full_mask(int32_t n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

typedef struct sctx {
    skv_store *s;
    const slayer *ly;
    const float *Q;  /* [n_q][D] f32 */
    const float *qn; /* [n_q] norms */
    int32_t G;
    int64_t budget;
    skv_store_score score;
    float cand, rw;
} sctx;

/* Per-thread scratch of one head's selection. */
typedef struct hscratch {
    int32_t *ref, *ref2; /* frontier entries (child refs) */
    int64_t *cnt, *cnt2;
    float *sc;           /* [E][G] */
    rank_ent *rk;
    float *tok;          /* [P][G] */
} hscratch;

static size_t hscratch_size(int64_t E, int32_t G, int32_t P)
{
    (void)P;
    return (size_t)E * (4 + 4 + 8 + 8 + 8 + 4 * (size_t)G) + 64 * (size_t)G * 4 + 8 * 64;
}

static void hscratch_carve(hscratch *w, void *base, int64_t E, int32_t G)
{
    uint8_t *p = (uint8_t *)(((uintptr_t)base + 63) & ~(uintptr_t)63);
#define TAKE(field, bytes) (w->field = (void *)p, p += skv_round_up((size_t)(bytes), 64))
    TAKE(ref, E * 4);
    TAKE(ref2, E * 4);
    TAKE(cnt, E * 8);
    TAKE(cnt2, E * 8);
    TAKE(rk, E * 8);
    TAKE(sc, (size_t)E * G * 4);
    TAKE(tok, 64 * (size_t)G * 4);
#undef TAKE
}

static int64_t ent_count(const skv_store *s, const hidx *x, int32_t c)
{
    return IS_LEAF(c) ? pg_n(s, x->leaf[LEAF_IDX(c)].page) : x->node[c].count;
}

/* Bounds of n entries for the G query heads into sc [n][G]. */
static void bound_entries(const sctx *c, const hidx *x, const int32_t *ref, int64_t n, float *sc)
{
    const float L = c->rw;
    const skv_store *s = c->s;
    const int32_t G = c->G, D = s->D;
    for (int64_t e = 0; e < n; e++) {
        float *o = sc + e * G;
        float r;
        if (e + 2 < n && IS_LEAF(ref[e + 2])) { /* the centroid two entries ahead */
            const uint8_t *t = (const uint8_t *)pg_tail(s, x->leaf[LEAF_IDX(ref[e + 2])].page);
            for (size_t b = 0; b < s->tail_cent + s->k_bytes; b += 64)
                __builtin_prefetch(t + b);
        }
        if (IS_LEAF(ref[e])) {
            const int32_t id = x->leaf[LEAF_IDX(ref[e])].page;
            s->kern.dots(c->Q, G, D, pg_cent(s, id), s->p.dtype, 0, 1, o);
            r = pg_tail(s, id)->radius;
        } else {
            s->kern.dots(c->Q, G, D, node_cent(s, x, ref[e]), SKV_F32, 0, 1, o);
            r = x->node[ref[e]].radius;
        }
        for (int32_t g = 0; g < G; g++)
            o[g] += L * c->qn[g] * r;
    }
}

/* Exact best token of each page (leaf refs) into sc [n][G]. */
static void exact_entries(const sctx *c, const hidx *x, const int32_t *ref, int64_t n, float *sc,
                          float *tok)
{
    const skv_store *s = c->s;
    const int32_t G = c->G;
    for (int64_t e = 0; e < n; e++) {
        const int32_t id = x->leaf[LEAF_IDX(ref[e])].page, k = pg_n(s, id);
        if (e + 1 < n) /* pages are scattered: fetch the next one's keys while this one is scored */
            prefetch_keys(s, x->leaf[LEAF_IDX(ref[e + 1])].page);
        s->kern.dots(c->Q, G, s->D, pg_row(s, id, 0), s->p.dtype, s->row_bytes, k, tok);
        for (int32_t g = 0; g < G; g++) {
            float m = -INFINITY;
            for (int32_t j = 0; j < k; j++)
                m = tok[j * G + g] > m || tok[j * G + g] != tok[j * G + g] ? tok[j * G + g] : m;
            sc[e * G + g] = m;
        }
    }
}

static void minmax_entries(const sctx *c, const hidx *x, const int32_t *ref, int64_t n, float *sc)
{
    const skv_store *s = c->s;
    for (int64_t e = 0; e < n; e++) {
        const int32_t id = x->leaf[LEAF_IDX(ref[e])].page;
        if (e + 1 < n) {
            const int32_t nx = x->leaf[LEAF_IDX(ref[e + 1])].page;
            for (size_t b = 0; b < (size_t)s->D * 8; b += 64)
                __builtin_prefetch((const uint8_t *)pg_min(s, nx) + b);
        }
        s->kern.minmax(c->Q, c->G, s->D, pg_min(s, id), pg_max(s, id), sc + e * c->G);
    }
}

/* Sorts rk best first (score descending, NaN last, ties by index) with a stable LSD radix sort
 * on the monotone score key; tmp holds n entries. rk must be in index order on entry. */
static void rank_sort(rank_ent *rk, int64_t n, rank_ent *tmp)
{
    if (n < 48) {
        for (int64_t a = 1; a < n; a++) {
            const rank_ent v = rk[a];
            int64_t b = a;
            while (b > 0 && rank_cmp(&rk[b - 1], &v) > 0) {
                rk[b] = rk[b - 1];
                b--;
            }
            rk[b] = v;
        }
        return;
    }
    rank_ent *src = rk, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 8) {
        int64_t cnt[256] = {0};
        for (int64_t i = 0; i < n; i++)
            cnt[(~skv_score_key(src[i].s) >> shift) & 255]++;
        int64_t sum = 0;
        for (int b = 0; b < 256; b++) {
            const int64_t c = cnt[b];
            cnt[b] = sum;
            sum += c;
        }
        for (int64_t i = 0; i < n; i++)
            dst[cnt[(~skv_score_key(src[i].s) >> shift) & 255]++] = src[i];
        rank_ent *t = src;
        src = dst, dst = t;
    }
    /* four passes: the result is back in rk */
}

/* rk[e] = {max_g (sc[e][g] - max over entries of sc[.][g]), e}, sorted best first. */
static void rank_entries(const float *sc, int64_t n, int32_t G, rank_ent *rk, rank_ent *tmp)
{
    float mx[1024];
    for (int32_t g = 0; g < G; g++)
        mx[g] = -INFINITY;
    for (int64_t e = 0; e < n; e++)
        for (int32_t g = 0; g < G; g++)
            mx[g] = sc[e * G + g] > mx[g] ? sc[e * G + g] : mx[g];
    for (int64_t e = 0; e < n; e++) {
        float best = -INFINITY;
        for (int32_t g = 0; g < G; g++) {
            /* a head whose every score is -inf contributes nothing */
            const float v = isinf(mx[g]) && mx[g] < 0 ? -INFINITY : sc[e * G + g] - mx[g];
            best = v > best || v != v ? v : best;
        }
        rk[e] = (rank_ent){best, (int32_t)e};
    }
    rank_sort(rk, n, tmp);
}

/* Body leaves in index order (depth first) or list order; returns the count. */
static int64_t body_leaves(const skv_store *s, const hidx *x, int32_t *out, int32_t *stack)
{
    int64_t n = 0;
    if (s->p.layout == SKV_STORE_POSITIONAL) {
        for (int32_t i = 0; i < x->n_body; i++)
            out[n++] = LEAF(x->body[i]);
        return n;
    }
    if (x->root < 0)
        return 0;
    /* depth first, children in order: push children in reverse */
    int64_t sp = 0;
    stack[sp++] = x->root;
    while (sp) {
        const int32_t c = stack[--sp];
        if (IS_LEAF(c)) {
            out[n++] = c;
            continue;
        }
        const int32_t *ch = node_child(s, x, c);
        for (int32_t j = x->node[c].n_child - 1; j >= 0; j--)
            stack[sp++] = ch[j];
    }
    return n;
}

static void emit(const skv_store *s, const hidx *x, int32_t l, int32_t *page, int32_t *nrow,
                 uint64_t *mask, int64_t *k, int64_t *tokens)
{
    const int32_t id = x->leaf[l].page, n = pg_n(s, id);
    page[*k] = id, nrow[*k] = n, mask[*k] = full_mask(n);
    (*k)++;
    *tokens += n;
}

/* One head: writes its pages from index `at` of the selection arrays; returns the count. */
static int64_t select_head(const sctx *c, const hidx *x, hscratch *w, skv_store_sel *sel,
                           int64_t at, int64_t *tokens)
{
    const skv_store *s = c->s;
    const int32_t G = c->G;
    int32_t *page = sel->page + at, *nrow = sel->nrow + at;
    uint64_t *mask = sel->mask + at;
    int64_t k = 0;
    *tokens = 0;
    for (int32_t i = 0; i < x->n_sinkp; i++)
        emit(s, x, x->sink[i], page, nrow, mask, &k, tokens);
    const int64_t forced = c->ly->n_sink + c->ly->n_win;
    const int64_t body = c->ly->n - forced;
    int64_t rem = c->budget - forced;
    if (body > 0 && rem > 0) {
        int64_t n = 0;
        int32_t *ref = w->ref, *alt = w->ref2;
        if (rem >= body || c->score != SKV_SCORE_INDEX) {
            n = body_leaves(s, x, ref, alt);
        } else {
            /* the beam: entries covering beam tokens survive each step */
            /* floors: small budgets still look at a few hundred pages of nodes and score a few
               dozen pages exactly (cheap, and the bounds are only a ranking) */
            const double cand0 = (double)c->cand * (double)rem, cand_min = 64.0 * s->P;
            const double cand = cand0 > cand_min ? cand0 : cand_min;
            const double beam0 = 2.0 * cand, beam_min = 512.0 * s->P;
            const int64_t beam = (int64_t)(beam0 > beam_min ? beam0 : beam_min) + 1;
            const int32_t *ch = node_child(s, x, x->root);
            for (int32_t j = 0; j < x->node[x->root].n_child; j++)
                ref[n++] = ch[j];
            /* Coarse nodes average many clusters: their centroids say little. A frontier of
               fewer than 4 * fanout entries is expanded whole, and a pruned one keeps at
               least fanout entries. */
            const int64_t min_frontier = 4 * (int64_t)s->F, min_keep = s->F;
            for (;;) {
                int any_node = 0;
                for (int64_t e = 0; e < n && !any_node; e++)
                    any_node = !IS_LEAF(ref[e]);
                if (!any_node)
                    break;
                int64_t covered = 0, m = 0;
                if (n < min_frontier) {
                    for (int64_t e = 0; e < n; e++)
                        w->rk[e].i = (int32_t)e;
                    covered = -1; /* keep all */
                } else {
                    bound_entries(c, x, ref, n, w->sc);
                    rank_entries(w->sc, n, G, w->rk, (rank_ent *)w->cnt2);
                }
                for (int64_t e = 0, kept = 0;
                     e < n && (covered < 0 || covered < beam || kept < min_keep); e++, kept++) {
                    const int32_t r = ref[w->rk[e].i];
                    if (covered >= 0)
                        covered += ent_count(s, x, r);
                    if (IS_LEAF(r)) {
                        alt[m++] = r;
                    } else {
                        const int32_t *cc = node_child(s, x, r);
                        for (int32_t j = 0; j < x->node[r].n_child; j++)
                            alt[m++] = cc[j];
                    }
                }
                int32_t *t = ref;
                ref = alt, alt = t;
                n = m;
            }
            /* the candidates: pages covering cand tokens by bound */
            bound_entries(c, x, ref, n, w->sc);
            rank_entries(w->sc, n, G, w->rk, (rank_ent *)w->cnt2);
            int64_t covered = 0, m = 0;
            for (int64_t e = 0; e < n && (covered < cand || m == 0); e++) {
                w->cnt[m++] = w->rk[e].i;
                covered += ent_count(s, x, ref[w->rk[e].i]);
            }
            /* candidates back in index order, so that exact ties break by it */
            for (int64_t a = 1; a < m; a++) {
                const int64_t v = w->cnt[a];
                int64_t b = a;
                while (b > 0 && w->cnt[b - 1] > v) {
                    w->cnt[b] = w->cnt[b - 1];
                    b--;
                }
                w->cnt[b] = v;
            }
            for (int64_t e = 0; e < m; e++)
                alt[e] = ref[w->cnt[e]];
            int32_t *t = ref;
            ref = alt, alt = t;
            n = m;
        }
        if (rem >= body) {
            for (int64_t e = 0; e < n; e++)
                emit(s, x, LEAF_IDX(ref[e]), page, nrow, mask, &k, tokens);
        } else {
            if (c->score == SKV_SCORE_MINMAX)
                minmax_entries(c, x, ref, n, w->sc);
            else
                exact_entries(c, x, ref, n, w->sc, w->tok);
            rank_entries(w->sc, n, G, w->rk, (rank_ent *)w->cnt2);
            int64_t left = rem;
            for (int64_t e = 0; e < n && left > 0; e++) {
                const int32_t l = LEAF_IDX(ref[w->rk[e].i]);
                const int32_t pn = pg_n(s, x->leaf[l].page);
                if (pn > left)
                    continue;
                emit(s, x, l, page, nrow, mask, &k, tokens);
                left -= pn;
            }
        }
    }
    for (int32_t i = 0; i < x->n_winp; i++)
        emit(s, x, x->win[i], page, nrow, mask, &k, tokens);
    return k;
}

/* Checks shared by both selections; the forced count is sinks + window. */
static skv_status check_sel(skv_store *s, int32_t seq, int32_t layer, int64_t budget,
                            const skv_store_sel *sel, sseq **out)
{
    sseq *q = store_seq(s, seq);
    SKV_CHECK(s->ctx, q && sel && sel->s == s && layer >= 0 && layer < s->p.n_layers);
    const slayer *ly = &q->ly[layer];
    if (budget < ly->n_sink + ly->n_win) { /* the common surprise with small budgets: say why */
        skv_log(s->ctx, SKV_LOG_WARN,
                "store select: budget %lld is below the %lld sink and %lld window tokens held "
                "(n_sink %d, n_window %d: up to n_sink + n_window + page_tokens - 1 = %d)",
                (long long)budget, (long long)ly->n_sink, (long long)ly->n_win, s->p.n_sink,
                s->p.n_window, s->p.n_sink + s->p.n_window + s->p.page_tokens - 1);
        return SKV_ERR_INVALID_ARG;
    }
    SKV_TRY(cold_touch(s, q));
    *out = q;
    return SKV_OK;
}

static int64_t live_leaves(const hidx *x) { return x->n_leaf - x->n_leaf_free; }

skv_status skv_store_select(skv_store *s, int32_t seq, int32_t layer, const skv_store_query *q,
                            skv_store_sel *sel)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    skv_context *ctx = s->ctx;
    SKV_CHECK(ctx, q && q->struct_size == sizeof *q);
    sseq *sq;
    SKV_TRY(check_sel(s, seq, layer, q->budget, sel, &sq));
    const int32_t H = s->H, D = s->D;
    SKV_CHECK(ctx, q->n_q_heads >= H && q->n_q_heads % H == 0 && q->n_q_heads <= 1024 && q->q);
    SKV_CHECK(ctx, q->dtype == SKV_F32 || q->dtype == SKV_BF16 || q->dtype == SKV_F16);
    SKV_CHECK(ctx, q->score == SKV_SCORE_INDEX || q->score == SKV_SCORE_MINMAX ||
                       q->score == SKV_SCORE_EXACT);
    SKV_CHECK(ctx, q->candidates >= 1.0f && q->candidates <= 64.0f);
    SKV_CHECK(ctx, q->radius_weight >= 0.0f && q->radius_weight <= 1.0f);
    if (q->score == SKV_SCORE_INDEX && s->p.layout == SKV_STORE_POSITIONAL)
        return SKV_ERR_UNSUPPORTED;
    if (q->score == SKV_SCORE_MINMAX && !(s->p.flags & SKV_STORE_MINMAX))
        return SKV_ERR_UNSUPPORTED;
    const slayer *ly = &sq->ly[layer];
    const int32_t G = q->n_q_heads / H;

    /* room: the selection arrays, the query in f32, per-thread scratch */
    int64_t total = 0, E = 16;
    for (int32_t h = 0; h < H; h++) {
        const hidx *x = &ly->h[h];
        total += live_leaves(x);
        const int64_t e = live_leaves(x) + (x->n_node - x->n_node_free) + 16;
        E = e > E ? e : E;
    }
    SKV_TRY(sel_grow(sel, total));
    int threads = skv_threads(ctx);
    threads = threads > H ? H : threads;
    const size_t qbytes = skv_round_up((size_t)q->n_q_heads * (D + 1) * 4 + (size_t)H * 16 + 64, 64);
    const size_t per = skv_round_up(hscratch_size(E, G, s->P), 64);
    uint8_t *ws = store_scratch(s, qbytes + per * (size_t)threads + 64);
    if (!ws)
        return SKV_ERR_NOMEM;
    float *Q = (float *)ws, *qn = Q + (size_t)q->n_q_heads * D;
    int64_t *at = (int64_t *)(((uintptr_t)(qn + q->n_q_heads) + 7) & ~(uintptr_t)7);
    int64_t *cnt = at + H;
    if (q->dtype == SKV_F32)
        memcpy(Q, q->q, (size_t)q->n_q_heads * D * 4);
    else
        skv_convert(SKV_F32, Q, q->dtype, q->q, (int64_t)q->n_q_heads * D);
    for (int32_t i = 0; i < q->n_q_heads; i++) {
        float n = 0;
        for (int32_t d = 0; d < D; d++)
            n += Q[(size_t)i * D + d] * Q[(size_t)i * D + d];
        qn[i] = sqrtf(n);
    }
    int64_t o = 0;
    for (int32_t h = 0; h < H; h++) {
        at[h] = o;
        o += live_leaves(&ly->h[h]);
    }

    /* ---- nothing fails from here on: the selection is replaced ---- */
    store_sel_unpin(sel);
    uint8_t *tb = ws + qbytes;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1)
#endif
    for (int32_t h = 0; h < H; h++) {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        hscratch w;
        hscratch_carve(&w, tb + (size_t)t * per, E, G);
        sctx c = {s, ly, Q + (size_t)h * G * D, qn + (size_t)h * G, G, q->budget, q->score,
                  q->candidates, q->radius_weight};
        cnt[h] = select_head(&c, &ly->h[h], &w, sel, at[h], &sel->head_tokens[h]);
    }
    sel_pack(sel, H, at, cnt);
    sel->seq = seq, sel->layer = layer, sel->epoch = ly->epoch;
    return SKV_OK;
}

skv_status skv_store_select_tokens(skv_store *s, int32_t seq, int32_t layer,
                                   const int32_t *positions, int64_t n, int64_t budget,
                                   skv_store_sel *sel)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    sseq *sq;
    SKV_TRY(check_sel(s, seq, layer, budget, sel, &sq));
    SKV_CHECK(s->ctx, n >= 0 && (n == 0 || positions));
    const slayer *ly = &sq->ly[layer];
    const int32_t H = s->H;
    int64_t total = 0, maxl = 1;
    for (int32_t h = 0; h < H; h++) {
        total += live_leaves(&ly->h[h]);
        maxl = ly->h[h].n_leaf > maxl ? ly->h[h].n_leaf : maxl;
    }
    SKV_TRY(sel_grow(sel, total));
    /* the chosen body ranks (list order), a bitmap against duplicates, a leaf -> entry map */
    const int64_t room = budget - ly->n_sink - ly->n_win;
    const int64_t nr = n < room ? n : room;
    const size_t bm = skv_round_up((size_t)(ly->n / 8 + 1), 64);
    uint8_t *ws = store_scratch(s, (size_t)nr * 8 + bm + (size_t)maxl * 4 + (size_t)H * 16 + 256);
    if (!ws)
        return SKV_ERR_NOMEM;
    int64_t *ranks = (int64_t *)ws;
    uint8_t *seen = (uint8_t *)(ranks + nr);
    int32_t *ent = (int32_t *)(seen + bm);
    int64_t *at = (int64_t *)(ent + maxl + 2);
    at = (int64_t *)(((uintptr_t)at + 7) & ~(uintptr_t)7);
    int64_t *cnt = at + H;
    memset(seen, 0, bm);
    const int64_t b0 = ly->n_sink, b1 = ly->n - ly->n_win;
    int64_t k = 0;
    for (int64_t i = 0; i < n && k < nr; i++) {
        if (positions[i] < 0)
            continue;
        const int64_t r = layer_rank(ly, positions[i]);
        if (r < b0 || r >= b1 || (seen[r >> 3] >> (r & 7) & 1))
            continue; /* absent, already forced, or a duplicate */
        seen[r >> 3] |= (uint8_t)(1u << (r & 7));
        ranks[k++] = r;
    }

    /* ---- commit ---- */
    store_sel_unpin(sel);
    int64_t o = 0;
    for (int32_t h = 0; h < H; h++) {
        const hidx *x = &ly->h[h];
        at[h] = o;
        int32_t *page = sel->page + o, *nrow = sel->nrow + o;
        uint64_t *mask = sel->mask + o;
        int64_t c = 0, tok = 0;
        for (int32_t i = 0; i < x->n_sinkp; i++)
            emit(s, x, x->sink[i], page, nrow, mask, &c, &tok);
        for (int32_t l = 0; l < x->n_leaf; l++)
            ent[l] = -1;
        for (int64_t i = 0; i < k; i++) {
            const int32_t l = x->leaf_of[ranks[i]], id = x->leaf[l].page;
            if (ent[l] < 0) {
                ent[l] = (int32_t)c;
                page[c] = id, nrow[c] = pg_n(s, id), mask[c] = 0;
                c++;
            }
            const int32_t *pp = pg_pos(s, id);
            int32_t j = 0;
            while (j < s->P - 1 && pp[j] != ly->pos[ranks[i]])
                j++;
            mask[ent[l]] |= 1ull << j;
            tok++;
        }
        for (int32_t i = 0; i < x->n_winp; i++)
            emit(s, x, x->win[i], page, nrow, mask, &c, &tok);
        cnt[h] = c;
        sel->head_tokens[h] = tok;
        o += live_leaves(x);
    }
    sel_pack(sel, H, at, cnt);
    sel->seq = seq, sel->layer = layer, sel->epoch = ly->epoch;
    return SKV_OK;
}
