/* Streaming top-k: threshold filter, radix select, and a stable radix sort for the output. */
#include <math.h>
#include <string.h>

#include "indexer/topk.h"

#define SLACK 16 /* the SIMD filters store whole vectors past the count */

static int32_t state_limit(int32_t k)
{
    /* After a cut there are k candidates and room for at least one more piece. */
    const int64_t a = 2 * (int64_t)k, b = (int64_t)k + SKV_TOPK_PIECE;
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
static void narrow(const uint32_t *key, int32_t n, int all, uint32_t *lo, uint32_t *hi, int64_t *need)
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
    int64_t need = k; /* rank of the k-th key among those in [lo, hi] */
    if (lo != hi)
        narrow(key, n, 1, &lo, &hi, &need);
    uint32_t few[1024];
    int32_t m = 0;
    const uint32_t span = hi - lo;
    for (int32_t i = 0; i < n && m < 1024; i++) {
        few[m] = key[i];
        m += key[i] - lo <= span;
    }
    const int fits = m < 1024;
    while (lo != hi)
        narrow(fits ? few : key, fits ? m : n, 0, &lo, &hi, &need);

    const uint32_t kth = lo;
    int32_t out = 0;
    for (int32_t i = 0; i < n; i++) {
        const uint32_t kv = key[i];
        const int keep = kv > kth || (kv == kth && need > 0);
        need -= kv == kth;
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
        if (st->have_thr) {
            st->n += kern->filter(s + off, piece, base + off, st->thr, st->key + st->n,
                                  st->idx + st->n);
        } else {
            for (int32_t j = 0; j < piece; j++) {
                st->key[st->n + j] = skv_score_key(s[off + j]);
                st->idx[st->n + j] = base + off + j;
            }
            st->n += piece;
        }
    }
}

void skv_topk_push_keys(skv_topk_state *st, const uint32_t *key, const int32_t *idx, int32_t n)
{
    for (int32_t j = 0; j < n; j++) {
        if (st->have_thr && key[j] <= st->thr)
            continue;
        if (st->n == st->limit)
            skv_topk_compact(st);
        if (st->have_thr && key[j] <= st->thr)
            continue;
        st->key[st->n] = key[j];
        st->idx[st->n] = idx[j];
        st->n++;
    }
}

/* Stable LSD radix sort by descending key of n <= limit/2 candidates; the second half of the
 * buffer is the scratch. Index order among equal keys is kept (ties to the lower index). */
static void sort_desc(skv_topk_state *st)
{
    static const int shifts[3] = {0, 11, 22}, widths[3] = {11, 11, 10};
    uint32_t hist[2048];
    const int32_t n = st->n;
    uint32_t *k0 = st->key, *k1 = st->key + st->k;
    int32_t *i0 = st->idx, *i1 = st->idx + st->k;
    for (int p = 0; p < 3; p++) {
        const int sh = shifts[p];
        const uint32_t nb = 1u << widths[p], dm = nb - 1;
        memset(hist, 0, nb * sizeof hist[0]);
        for (int32_t i = 0; i < n; i++)
            hist[(~k0[i] >> sh) & dm]++;
        if (hist[(~k0[0] >> sh) & dm] == (uint32_t)n)
            continue; /* digit constant: order unchanged */
        uint32_t sum = 0;
        for (uint32_t b = 0; b < nb; b++) {
            const uint32_t c = hist[b];
            hist[b] = sum;
            sum += c;
        }
        for (int32_t i = 0; i < n; i++) {
            const uint32_t pos = hist[(~k0[i] >> sh) & dm]++;
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

void skv_topk_finish(skv_topk_state *st, int32_t *out_idx, float *out_score)
{
    skv_topk_compact(st);
    if (st->n > 0)
        sort_desc(st);
    for (int32_t i = 0; i < st->k; i++) {
        const int have = i < st->n;
        out_idx[i] = have ? st->idx[i] : -1;
        if (out_score)
            out_score[i] = have ? skv_score_from_key(st->key[i]) : -INFINITY;
    }
}

int32_t skv_topk_split_count(int64_t n_rows, int n_threads, int64_t row_len, int64_t min_keys)
{
    if (n_rows >= n_threads)
        return 1;
    const int64_t by_threads = (n_threads + n_rows - 1) / n_rows;
    const int64_t by_keys = row_len / min_keys > 1 ? row_len / min_keys : 1;
    return (int32_t)(by_threads < by_keys ? by_threads : by_keys);
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

void skv_topk_parts_store(const skv_topk_parts *m, int64_t row, int32_t split,
                          skv_topk_state *st)
{
    skv_topk_compact(st);
    const size_t slot = (size_t)row * (size_t)m->splits + (size_t)split;
    memcpy(m->key + slot * (size_t)m->k, st->key, (size_t)st->n * 4);
    memcpy(m->idx + slot * (size_t)m->k, st->idx, (size_t)st->n * 4);
    m->n[slot] = st->n;
}

void skv_topk_parts_finish(const skv_topk_parts *m, int64_t row, void *state_mem,
                           int32_t *out_idx, float *out_score)
{
    skv_topk_state st;
    skv_topk_init(&st, state_mem, m->k);
    for (int32_t sp = 0; sp < m->splits; sp++) {
        const size_t slot = (size_t)row * (size_t)m->splits + (size_t)sp;
        skv_topk_push_keys(&st, m->key + slot * (size_t)m->k, m->idx + slot * (size_t)m->k,
                           m->n[slot]);
    }
    skv_topk_finish(&st, out_idx, out_score);
}
