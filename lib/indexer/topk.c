/* Streaming top-k: threshold filter, radix select, and a stable radix sort for the output. */
#include <math.h>
#include <string.h>

#include "indexer/topk.h"

#define SLACK 16 /* the SIMD filters store whole vectors past the count */

static int32_t state_limit(int32_t k)
{
    /* After a cut there are k candidates and room for 2k more, and at least one piece: each
       cut passes over the whole buffer, so a larger one cuts less often (2k measured 2-3 %
       slower over 32K keys; 3k and 4k alike). */
    const int64_t a = 3 * (int64_t)k, b = (int64_t)k + SKV_TOPK_PIECE;
    return (int32_t)(a > b ? a : b);
}

size_t skv_topk_state_bytes(int32_t k)
{
    return skv_round_up((size_t)(state_limit(k) + SLACK) * 8, SKV_ALIGN);
}

void skv_topk_init(skv_topk_state *st, void *mem, int32_t k)
{
    st->limit = state_limit(k);
    st->key = mem;
    st->idx = (int32_t *)(st->key + st->limit + SLACK);
    st->n = 0;
    st->k = k;
    st->thr = 0;
    st->have_thr = 0;
}

/* Histogram of the keys in [lo, hi] (all of them when `all`) by the top 11 bits in which lo
 * and hi differ; narrows [lo, hi] to the bin holding the need-th largest and makes need the
 * rank inside it. */
static void narrow(const uint32_t *key, int32_t n, int all, uint32_t *lo, uint32_t *hi, int64_t *need,
                   int64_t *in_bin)
{
    uint32_t hist[2048];
    const int bits = 32 - __builtin_clz(*lo ^ *hi);
    const int sh = bits > 11 ? bits - 11 : 0;
    const uint32_t base = *lo >> sh, span = *hi - *lo;
    uint32_t nb = (*hi >> sh) - base + 1;
    nb = nb < 2048 ? nb : 2048; /* always: lo and hi agree above bit `bits` */
    memset(hist, 0, nb * sizeof hist[0]);
    if (all) {
        for (int32_t i = 0; i < n; i++)
            hist[(key[i] >> sh) - base]++;
    } else {
        for (int32_t i = 0; i < n; i++)
            if (key[i] - *lo <= span)
                hist[(key[i] >> sh) - base]++;
    }
    uint32_t b = nb - 1;
    int64_t above = 0;
    while (above + hist[b] < *need)
        above += hist[b--];
    *need -= above;
    *in_bin = hist[b];
    const uint32_t blo = (base + b) << sh, bhi = blo + ((1u << sh) - 1);
    *lo = blo > *lo ? blo : *lo;
    *hi = bhi < *hi ? bhi : *hi;
}

/* Keeps the k best of n > k candidates in index order; returns the k-th best key.
 * One histogram pass over every key finds the bin (of the range's top 11 differing bits) that
 * holds the k-th; that bin's keys are usually few, so they are copied out and refined alone
 * (11 more bits a pass). A last branch-free pass keeps every key above the k-th and the
 * earliest ones equal to it. */
static uint32_t select_keep(uint32_t *key, int32_t *idx, int32_t n, int32_t k)
{
    uint32_t lo = UINT32_MAX, hi = 0;
    for (int32_t i = 0; i < n; i++) {
        lo = key[i] < lo ? key[i] : lo;
        hi = key[i] > hi ? key[i] : hi;
    }
    int64_t need = k;   /* rank of the k-th key among those in [lo, hi] */
    int64_t in_bin = n; /* keys in [lo, hi] */
    if (lo != hi)
        narrow(key, n, 1, &lo, &hi, &need, &in_bin);
    uint32_t few[1024];
    int32_t m = 0;
    const uint32_t span = hi - lo;
    for (int32_t i = 0; i < n && m < 1024; i++) {
        few[m] = key[i];
        m += key[i] - lo <= span;
    }
    const int fits = m < 1024;
    while (lo != hi)
        narrow(fits ? few : key, fits ? m : n, 0, &lo, &hi, &need, &in_bin);

    const uint32_t kth = lo;
    int32_t out = 0;
    if (need == in_bin) { /* every key equal to the k-th is kept: no tie to break */
        for (int32_t i = 0; i < n; i++) {
            const uint32_t kv = key[i];
            key[out] = kv;
            idx[out] = idx[i];
            out += kv >= kth;
        }
        return kth;
    }
    for (int32_t i = 0; i < n; i++) { /* bitwise, not ||: the branch would be a coin toss */
        const uint32_t kv = key[i];
        const int eq = kv == kth;
        const int keep = (kv > kth) | (eq & (need > 0));
        need -= eq;
        key[out] = kv;
        idx[out] = idx[i];
        out += keep;
    }
    return kth;
}

void skv_topk_compact(skv_topk_state *st)
{
    if (st->n <= st->k)
        return;
    st->thr = select_keep(st->key, st->idx, st->n, st->k);
    st->have_thr = 1;
    st->n = st->k;
}

void skv_topk_push(const skv_kernels *kern, skv_topk_state *st, const float *s, int32_t n,
                   int32_t base)
{
    for (int32_t off = 0; off < n; off += SKV_TOPK_PIECE) {
        const int32_t piece = n - off < SKV_TOPK_PIECE ? n - off : SKV_TOPK_PIECE;
        if (st->n + piece > st->limit)
            skv_topk_compact(st);
        st->n += kern->filter(s + off, piece, base + off, st->thr, !st->have_thr,
                              st->key + st->n, st->idx + st->n);
    }
}

/* Stable LSD radix sort by descending key of n <= k candidates; the second half of the buffer
 * is the scratch. Index order among equal keys is kept (ties to the lower index). One pass
 * counts all three digits; digits every key shares are skipped. */
static void sort_desc(skv_topk_state *st)
{
    static const int shifts[3] = {0, 11, 22};
    uint32_t hist[3][2048];
    const int32_t n = st->n;
    uint32_t *k0 = st->key, *k1 = st->key + st->k;
    int32_t *i0 = st->idx, *i1 = st->idx + st->k;
    memset(hist, 0, sizeof hist);
    for (int32_t i = 0; i < n; i++) {
        const uint32_t v = ~k0[i];
        hist[0][v & 2047]++;
        hist[1][(v >> 11) & 2047]++;
        hist[2][v >> 22]++;
    }
    for (int p = 0; p < 3; p++) {
        const int sh = shifts[p];
        uint32_t *h = hist[p];
        if (h[(~k0[0] >> sh) & 2047] == (uint32_t)n)
            continue; /* digit constant: order unchanged */
        uint32_t sum = 0;
        for (uint32_t b = 0; b < 2048; b++) {
            const uint32_t c = h[b];
            h[b] = sum;
            sum += c;
        }
        for (int32_t i = 0; i < n; i++) {
            const uint32_t pos = h[(~k0[i] >> sh) & 2047]++;
            k1[pos] = k0[i];
            i1[pos] = i0[i];
        }
        uint32_t *tk = k0;
        k0 = k1;
        k1 = tk;
        int32_t *ti = i0;
        i0 = i1;
        i1 = ti;
    }
    if (k0 != st->key) {
        memcpy(st->key, k0, (size_t)n * sizeof *k0);
        memcpy(st->idx, i0, (size_t)n * sizeof *i0);
    }
}

/* The state cut to its best k, in rank order. */
static void rank(skv_topk_state *st)
{
    skv_topk_compact(st);
    if (st->n > 1)
        sort_desc(st);
}

/* key may be NULL when out_score is. */
static void write_out(const uint32_t *key, const int32_t *idx, int32_t n, int32_t k,
                      int32_t *out_idx, float *out_score)
{
    for (int32_t i = 0; i < k; i++) {
        const int have = i < n;
        out_idx[i] = have ? idx[i] : -1;
        if (out_score)
            out_score[i] = have ? skv_score_from_key(key[i]) : -INFINITY;
    }
}

void skv_topk_finish(skv_topk_state *st, int32_t *out_idx, float *out_score)
{
    rank(st);
    write_out(st->key, st->idx, st->n, st->k, out_idx, out_score);
}

void skv_topk_finish_set(skv_topk_state *st, int32_t *out_idx)
{
    skv_topk_compact(st); /* keeps index order */
    write_out(NULL, st->idx, st->n, st->k, out_idx, NULL);
}

int32_t skv_topk_split_count(int64_t n_rows, int n_threads, int64_t row_len, int64_t min_keys)
{
    if (n_rows >= n_threads)
        return 1;
    const int64_t by_threads = (n_threads + n_rows - 1) / n_rows;
    const int64_t by_keys = row_len / min_keys > 1 ? row_len / min_keys : 1;
    const int64_t n = by_threads < by_keys ? by_threads : by_keys;
    return (int32_t)(n < 64 ? n : 64); /* skv_topk_parts_finish merges at most 64 */
}

int skv_topk_parts_bytes(int64_t rows, int32_t splits, int32_t k, size_t *out)
{
    size_t per;
    if (!skv_mul_ok((size_t)rows * (size_t)splits, (size_t)k * 8 + 4, &per))
        return 0;
    *out = skv_round_up(per, SKV_ALIGN);
    return 1;
}

void skv_topk_parts_init(skv_topk_parts *m, void *mem, int64_t rows, int32_t splits, int32_t k)
{
    const size_t n = (size_t)rows * (size_t)splits;
    m->key = mem;
    m->idx = (int32_t *)(m->key + n * (size_t)k);
    m->n = m->idx + n * (size_t)k;
    m->k = k;
    m->splits = splits;
}

/* Copies a state's candidates, as they are, into its (row, split) slot. */
static void store_state(const skv_topk_parts *m, int64_t row, int32_t split,
                        const skv_topk_state *st)
{
    const size_t slot = (size_t)row * (size_t)m->splits + (size_t)split;
    memcpy(m->key + slot * (size_t)m->k, st->key, (size_t)st->n * 4);
    memcpy(m->idx + slot * (size_t)m->k, st->idx, (size_t)st->n * 4);
    m->n[slot] = st->n;
}

void skv_topk_parts_store(const skv_topk_parts *m, int64_t row, int32_t split,
                          skv_topk_state *st)
{
    rank(st);
    store_state(m, row, split, st);
}

/* Each split's list is ranked and the splits cover disjoint index ranges, so the best k of
 * the row come from merging the lists head by head (key descending, lower index first). */
void skv_topk_parts_finish(const skv_topk_parts *m, int64_t row, int32_t *out_idx,
                           float *out_score)
{
    enum { MAX_SPLITS = 64 };
    int32_t head[MAX_SPLITS] = {0};
    const size_t base = (size_t)row * (size_t)m->splits;
    int32_t i = 0;
    for (; i < m->k; i++) {
        int32_t best = -1;
        uint32_t bk = 0;
        int32_t bi = 0;
        for (int32_t sp = 0; sp < m->splits; sp++) {
            if (head[sp] >= m->n[base + sp])
                continue;
            const size_t at = (base + sp) * (size_t)m->k + (size_t)head[sp];
            const uint32_t kv = m->key[at];
            const int32_t iv = m->idx[at];
            if (best < 0 || kv > bk || (kv == bk && iv < bi)) {
                best = sp;
                bk = kv;
                bi = iv;
            }
        }
        if (best < 0)
            break;
        head[best]++;
        out_idx[i] = bi;
        if (out_score)
            out_score[i] = skv_score_from_key(bk);
    }
    write_out(NULL, NULL, 0, m->k - i, out_idx + i, out_score ? out_score + i : NULL);
}

void skv_topk_parts_store_set(const skv_topk_parts *m, int64_t row, int32_t split,
                              skv_topk_state *st)
{
    skv_topk_compact(st); /* keeps index order */
    store_state(m, row, split, st);
}

/* The splits cover ascending, disjoint index ranges: laid end to end they are one candidate
 * list in index order, which one select cuts to its best k (earliest kept on ties). */
void skv_topk_parts_finish_set(const skv_topk_parts *m, int64_t row, int32_t *out_idx)
{
    const size_t base = (size_t)row * (size_t)m->splits;
    uint32_t *key = m->key + base * (size_t)m->k;
    int32_t *idx = m->idx + base * (size_t)m->k;
    int32_t n = 0;
    for (int32_t sp = 0; sp < m->splits; sp++) {
        const size_t at = (base + sp) * (size_t)m->k;
        const int32_t c = m->n[base + sp];
        memmove(key + n, m->key + at, (size_t)c * 4);
        memmove(idx + n, m->idx + at, (size_t)c * 4);
        n += c;
    }
    if (n > m->k) {
        select_keep(key, idx, n, m->k);
        n = m->k;
    }
    write_out(NULL, idx, n, m->k, out_idx, NULL);
}
