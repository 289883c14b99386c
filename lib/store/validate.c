/* The store's internal invariants, checked exhaustively (tests call this after operations):
 * positions, the token -> leaf map, page contents and statistics, lists, the index tree,
 * reference counts against the references actually held, and the hot-tier slot map. Slow by
 * design (it re-reads every token); uses plain malloc, not the context allocator, so that it
 * never disturbs allocation-failure tests. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "store/store_impl.h"

#define FAIL(...)                                                                             \
    do {                                                                                      \
        snprintf(msg, msg_len, __VA_ARGS__);                                                  \
        goto fail;                                                                            \
    } while (0)

static int page_ok(const skv_store *s, const hidx *x, int32_t id, char *msg, size_t msg_len)
{
    const int32_t D = s->D, P = s->P, n = pg_n(s, id);
    const int32_t *pos = pg_pos(s, id);
    float row[1024], cen[1024];
    if (n < 1 || n > P) {
        snprintf(msg, msg_len, "page %d holds %d rows", id, n);
        return 0;
    }
    for (int32_t j = 0; j < P; j++) {
        if (j < n && (pos[j] < 0 || (j && pos[j] <= pos[j - 1]))) {
            snprintf(msg, msg_len, "page %d: positions not ascending at row %d", id, j);
            return 0;
        }
        if (j >= n && pos[j] != -1) {
            snprintf(msg, msg_len, "page %d: position %d past its rows", id, pos[j]);
            return 0;
        }
    }
    row_to_f32(s, pg_cent(s, id), cen, D);
    const ptail *t = pg_tail(s, id);
    for (int32_t j = 0; j < n; j++) {
        row_to_f32(s, pg_row(s, id, j), row, D);
        float d2 = 0;
        for (int32_t i = 0; i < D; i++)
            d2 += (row[i] - cen[i]) * (row[i] - cen[i]);
        if (sqrtf(d2) > t->radius * (1 + 1e-5f) + 1e-30f) {
            snprintf(msg, msg_len, "page %d: row %d at %g from the centroid, radius %g", id, j,
                     sqrtf(d2), t->radius);
            return 0;
        }
        if (s->p.flags & SKV_STORE_MINMAX)
            for (int32_t i = 0; i < D; i++)
                if (row[i] == row[i] && !(row[i] >= pg_min(s, id)[i] && row[i] <= pg_max(s, id)[i])) {
                    snprintf(msg, msg_len, "page %d: row %d outside its min/max box", id, j);
                    return 0;
                }
    }
    (void)x;
    return 1;
}

/* Every token below node n is within its radius of its centroid; counts add up. */
static int64_t tree_ok(const skv_store *s, const hidx *x, int32_t n, int32_t parent, uint8_t *seen,
                       int32_t depth, char *msg, size_t msg_len)
{
    if (n < 0 || n >= x->n_node || x->node[n].n_child < 1 || x->node[n].n_child > s->F) {
        snprintf(msg, msg_len, "node %d: bad id or %d children", n, n >= 0 && n < x->n_node ? x->node[n].n_child : -1);
        return -1;
    }
    if (x->node[n].parent != parent || depth > 64) {
        snprintf(msg, msg_len, "node %d: parent %d, expected %d", n, x->node[n].parent, parent);
        return -1;
    }
    int64_t count = 0;
    const int32_t *ch = node_child(s, x, n);
    for (int32_t j = 0; j < x->node[n].n_child; j++) {
        const int32_t c = ch[j];
        if (IS_LEAF(c)) {
            const int32_t l = LEAF_IDX(c);
            if (l >= x->n_leaf || x->leaf[l].page < 0 || x->leaf[l].parent != n || seen[l]) {
                snprintf(msg, msg_len, "node %d: child leaf %d is free, foreign or repeated", n, l);
                return -1;
            }
            seen[l] = 1;
            count += pg_n(s, x->leaf[l].page);
        } else {
            const int64_t k = tree_ok(s, x, c, n, seen, depth + 1, msg, msg_len);
            if (k < 0)
                return -1;
            count += k;
        }
    }
    if (count != x->node[n].count) {
        snprintf(msg, msg_len, "node %d: count %lld, children hold %lld", n,
                 (long long)x->node[n].count, (long long)count);
        return -1;
    }
    return count;
}

static int radius_ok(const skv_store *s, const hidx *x, int32_t l, char *msg, size_t msg_len)
{
    const int32_t id = x->leaf[l].page, D = s->D;
    float row[1024];
    for (int32_t j = 0; j < pg_n(s, id); j++) {
        row_to_f32(s, pg_row(s, id, j), row, D);
        for (int32_t n = x->leaf[l].parent; n >= 0; n = x->node[n].parent) {
            const float *c = node_cent(s, x, n);
            float d2 = 0;
            for (int32_t i = 0; i < D; i++)
                d2 += (row[i] - c[i]) * (row[i] - c[i]);
            if (sqrtf(d2) > x->node[n].radius * (1 + 1e-4f) + 1e-20f) {
                snprintf(msg, msg_len, "node %d: a token at %g from the centroid, radius %g", n,
                         sqrtf(d2), x->node[n].radius);
                return 0;
            }
        }
    }
    return 1;
}

/* An ordered list: leaves live, parentless, pages full except the last, positions ascending
 * across pages; returns its tokens or -1. */
static int64_t list_ok(const skv_store *s, const hidx *x, const int32_t *list, int32_t n,
                       int packed, uint8_t *seen, char *msg, size_t msg_len)
{
    int64_t tok = 0;
    int32_t last = -1;
    for (int32_t i = 0; i < n; i++) {
        const int32_t l = list[i];
        if (l < 0 || l >= x->n_leaf || x->leaf[l].page < 0 || x->leaf[l].parent != -1 || seen[l]) {
            snprintf(msg, msg_len, "list entry %d: leaf %d free, parented or repeated", i, l);
            return -1;
        }
        seen[l] = 1;
        const int32_t id = x->leaf[l].page, k = pg_n(s, id);
        if (packed && i + 1 < n && k != s->P) {
            snprintf(msg, msg_len, "list entry %d: %d rows, not packed", i, k);
            return -1;
        }
        if (k && pg_pos(s, id)[0] <= last) {
            snprintf(msg, msg_len, "list entry %d: positions out of order", i);
            return -1;
        }
        last = k ? pg_pos(s, id)[k - 1] : last;
        tok += k;
    }
    return tok;
}

int skv_store_validate(const skv_store *s, char *msg, size_t msg_len)
{
    int32_t *refs = calloc((size_t)s->ids_used + 1, sizeof *refs);
    uint8_t *seen = NULL;
    int32_t *cnt = NULL;
    size_t seen_cap = 0;
    if (!refs) {
        snprintf(msg, msg_len, "out of memory");
        return -1;
    }
    int64_t parked_all = 0;
    for (int32_t qi = 0; qi < s->seq_cap; qi++) {
        const sseq *q = &s->seqs[qi];
        if (!q->live)
            continue;
        int64_t parked = 0;
        for (int32_t li = 0; li < s->p.n_layers; li++) {
            const slayer *ly = &q->ly[li];
            if (ly->n > ly->cap || ly->n_sink + ly->n_win > ly->n || ly->n_sink > s->p.n_sink)
                FAIL("seq %d layer %d: counts n %lld sink %lld win %lld", qi, li,
                     (long long)ly->n, (long long)ly->n_sink, (long long)ly->n_win);
            for (int64_t r = 1; r < ly->n; r++)
                if (ly->pos[r] <= ly->pos[r - 1])
                    FAIL("seq %d layer %d: positions not ascending at %lld", qi, li, (long long)r);
            for (int32_t h = 0; q->n_cold && h < s->H; h++) {
                /* parked: only the references can be checked without the backend */
                const hidx *x = &ly->h[h];
                for (int32_t l = 0; l < x->n_leaf; l++) {
                    const int32_t id = x->leaf[l].page;
                    if (id < 0)
                        continue;
                    if (id >= s->ids_used || (!s->pages[id] && !cold_is(s, id)))
                        FAIL("seq %d layer %d head %d: leaf %d names dead page %d", qi, li, h, l, id);
                    refs[id]++;
                    parked += cold_is(s, id);
                }
            }
            for (int32_t h = 0; !q->n_cold && h < s->H; h++) {
                const hidx *x = &ly->h[h];
                if ((size_t)x->n_leaf + 1 > seen_cap) {
                    free(seen), free(cnt);
                    seen_cap = (size_t)x->n_leaf + 1;
                    seen = calloc(seen_cap, 1);
                    cnt = calloc(seen_cap, sizeof *cnt);
                    if (!seen || !cnt)
                        FAIL("out of memory");
                }
                memset(seen, 0, (size_t)x->n_leaf + 1);
                memset(cnt, 0, ((size_t)x->n_leaf + 1) * sizeof *cnt);
                int32_t live = 0;
                for (int32_t l = 0; l < x->n_leaf; l++) {
                    const int32_t id = x->leaf[l].page;
                    if (id < 0)
                        continue;
                    live++;
                    if (id >= s->ids_used || !s->pages[id])
                        FAIL("seq %d layer %d head %d: leaf %d names dead page %d", qi, li, h, l, id);
                    refs[id]++;
                    if (!page_ok(s, x, id, msg, msg_len))
                        goto fail;
                }
                if (live + x->n_leaf_free != x->n_leaf)
                    FAIL("seq %d layer %d head %d: %d live + %d free leaves != %d", qi, li, h,
                         live, x->n_leaf_free, x->n_leaf);
                /* every token maps to a live leaf whose page holds its position */
                for (int64_t r = 0; r < ly->n; r++) {
                    const int32_t l = x->leaf_of[r];
                    if (l < 0 || l >= x->n_leaf || x->leaf[l].page < 0)
                        FAIL("seq %d layer %d head %d: rank %lld maps to leaf %d", qi, li, h,
                             (long long)r, l);
                    const int32_t id = x->leaf[l].page;
                    int32_t j = 0;
                    while (j < pg_n(s, id) && pg_pos(s, id)[j] != ly->pos[r])
                        j++;
                    if (j == pg_n(s, id))
                        FAIL("seq %d layer %d head %d: position %d not in its page %d", qi, li,
                             h, ly->pos[r], id);
                    cnt[l]++;
                }
                for (int32_t l = 0; l < x->n_leaf; l++)
                    if (x->leaf[l].page >= 0 && cnt[l] != pg_n(s, x->leaf[l].page))
                        FAIL("seq %d layer %d head %d: leaf %d has %d mapped tokens, %d rows",
                             qi, li, h, l, cnt[l], pg_n(s, x->leaf[l].page));
                const int64_t ts = list_ok(s, x, x->sink, x->n_sinkp, 1, seen, msg, msg_len);
                const int64_t tw = list_ok(s, x, x->win, x->n_winp, 1, seen, msg, msg_len);
                if (ts < 0 || tw < 0)
                    goto fail;
                if (ts != ly->n_sink || tw != ly->n_win)
                    FAIL("seq %d layer %d head %d: sink/window pages hold %lld/%lld tokens, "
                         "expected %lld/%lld", qi, li, h, (long long)ts, (long long)tw,
                         (long long)ly->n_sink, (long long)ly->n_win);
                for (int64_t r = 0; r < ly->n; r++) {
                    const int is_sink = r < ly->n_sink, is_win = r >= ly->n - ly->n_win;
                    const int32_t l = x->leaf_of[r];
                    const int in_list = seen[l];
                    if ((is_sink || is_win) != in_list)
                        FAIL("seq %d layer %d head %d: rank %lld in the wrong part", qi, li, h,
                             (long long)r);
                }
                const int64_t body = ly->n - ly->n_sink - ly->n_win;
                int64_t tb = 0;
                if (s->p.layout == SKV_STORE_POSITIONAL) {
                    tb = list_ok(s, x, x->body, x->n_body, 0, seen, msg, msg_len);
                    if (tb < 0)
                        goto fail;
                } else if (x->root >= 0) {
                    tb = tree_ok(s, x, x->root, -1, seen, 0, msg, msg_len);
                    if (tb < 0)
                        goto fail;
                    for (int32_t l = 0; l < x->n_leaf; l++)
                        if (x->leaf[l].page >= 0 && x->leaf[l].parent >= 0 &&
                            !radius_ok(s, x, l, msg, msg_len))
                            goto fail;
                }
                if (tb != body)
                    FAIL("seq %d layer %d head %d: body holds %lld tokens, expected %lld", qi,
                         li, h, (long long)tb, (long long)body);
                for (int32_t l = 0; l < x->n_leaf; l++)
                    if (x->leaf[l].page >= 0 && !seen[l])
                        FAIL("seq %d layer %d head %d: leaf %d unreachable", qi, li, h, l);
            }
        }
        if (parked != q->n_cold)
            FAIL("seq %d: %lld pages parked, %lld counted", qi, (long long)parked,
                 (long long)q->n_cold);
        parked_all += parked;
    }
    int64_t in_use = 0, parked = 0;
    for (int32_t id = 0; id < s->ids_used; id++) {
        const int cold = cold_is(s, id);
        if ((s->pages[id] != NULL || cold) != (s->refcnt[id] > 0) || s->refcnt[id] != refs[id])
            FAIL("page %d: refcount %d, %d references held, memory %s", id, s->refcnt[id],
                 refs[id], s->pages[id] ? "present" : cold ? "parked" : "absent");
        if (cold && (s->pages[id] || s->refcnt[id] != 1 || s->page_slot[id] >= 0))
            FAIL("page %d: parked with memory, %d references or slot %d", id, s->refcnt[id],
                 s->page_slot[id]);
        in_use += s->pages[id] != NULL || cold;
        parked += cold;
        if (!s->pages[id] && s->page_slot[id] >= 0)
            FAIL("page %d: free but mapped to slot %d", id, s->page_slot[id]);
    }
    if (parked != parked_all)
        FAIL("%lld pages parked, %lld held by parked sequences", (long long)parked,
             (long long)parked_all);
    if (in_use != s->pages_in_use || in_use + s->n_free != s->ids_used)
        FAIL("pages in use %lld, counted %lld, free ids %d, used ids %d",
             (long long)s->pages_in_use, (long long)in_use, s->n_free, s->ids_used);
    if (s->C) {
        int64_t res = 0, pinned = 0, orph = 0;
        for (int64_t sl = 0; sl < s->C; sl++) {
            const int32_t id = s->slot_page[sl];
            if (id >= 0) {
                res++;
                if (id >= s->ids_used || !s->pages[id] || s->page_slot[id] != sl)
                    FAIL("slot %lld: holds page %d which maps to %d", (long long)sl, id,
                         id < s->ids_used ? s->page_slot[id] : -9);
            } else if (id == -2) {
                orph++;
                if (s->slot_pin[sl] <= 0)
                    FAIL("slot %lld: orphan without pins", (long long)sl);
            } else if (id != -1) {
                FAIL("slot %lld: state %d", (long long)sl, id);
            }
            if (s->slot_pin[sl] < 0)
                FAIL("slot %lld: pin count %d", (long long)sl, s->slot_pin[sl]);
            pinned += s->slot_pin[sl] > 0;
            if (s->slot_ref[sl] > 1)
                FAIL("slot %lld: a protection mark survived", (long long)sl);
        }
        if (res != s->n_resident || pinned != s->n_pinned_slots || orph != s->n_orphan ||
            res + orph + s->n_free_slots != s->C || res > s->C)
            FAIL("hot tier: resident %lld/%lld pinned %lld/%lld orphans %lld/%lld free %d of %lld",
                 (long long)res, (long long)s->n_resident, (long long)pinned,
                 (long long)s->n_pinned_slots, (long long)orph, (long long)s->n_orphan,
                 s->n_free_slots, (long long)s->C);
        for (int32_t i = 0; i < s->n_free_slots; i++)
            if (s->slot_page[s->free_slots[i]] != -1)
                FAIL("free slot %d is in use", s->free_slots[i]);
    }
    free(refs), free(seen), free(cnt);
    return 0;
fail:
    free(refs), free(seen), free(cnt);
    return -1;
}
