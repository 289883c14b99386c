/* Streaming top-k: threshold filter, radix select, and a stable radix sort for the output. */
#include <math.h>
#include <string.h>

#include "indexer/topk.h"

#define SLACK 16 /* the SIMD filters store whole vectors past the count */

/* k <= SKV_TOPK_MAX_K (the entry points refuse more), so 3k and the slack fit int32. */
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

void skv_topk_init(skv_topk_state *st, const skv_kernels *kern, void *mem, int32_t k)
{
    st->kern = kern;
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
 * (11 more bits a pass). A last pass keeps every key above the k-th and the earliest ones
 * equal to it. */
static uint32_t select_keep(const skv_kernels *kern, uint32_t *key, int32_t *idx, int32_t n,
                            int32_t k)
{
    enum { FEW = 1024 };
    uint32_t lo, hi;
    kern->key_range(key, n, &lo, &hi);
    int64_t need = k; /* rank of the k-th key among those in [lo, hi] */
    if (lo != hi)
        narrow(key, n, 1, &lo, &hi, &need);
    uint32_t few[FEW + 16];
    const int32_t m = kern->in_range(key, n, lo, hi - lo, few, FEW);
    const int fits = m < FEW;
    while (lo != hi)
        narrow(fits ? few : key, fits ? m : n, 0, &lo, &hi, &need);
    kern->keep(key, idx, n, lo, need);
    return lo;
}

void skv_topk_compact(skv_topk_state *st)
{
    if (st->n <= st->k)
        return;
    st->thr = select_keep(st->kern, st->key, st->idx, st->n, st->k);
    st->have_thr = 1;
    st->n = st->k;
}

void skv_topk_push(skv_topk_state *st, const float *s, int32_t n, int32_t base)
{
    for (int32_t off = 0; off < n; off += SKV_TOPK_PIECE) {
        const int32_t piece = n - off < SKV_TOPK_PIECE ? n - off : SKV_TOPK_PIECE;
        if (st->n + piece > st->limit)
            skv_topk_compact(st);
        st->n += st->kern->filter(s + off, piece, base + off, st->thr, !st->have_thr,
                              st->key + st->n, st->idx + st->n);
    }
}

/* Stable LSD radix sort by descending key of n <= k candidates; the second half of the buffer
 * is the scratch. Index order among equal keys is kept (ties to the lower index). The digits
 * sorted are those of hi - key (ascending), hi the largest key: a top-k's keys span a narrow
 * range (about 2^24 for 2048 of 32K scores), so its high digits are all zero and skipped (three
 * passes where the keys themselves need four). Digits of 8 bits: a k of a few thousand leaves
 * most of 2048 bins empty, and their prefix sums cost more than a fourth pass. One pass counts
 * every digit; a digit all the keys share is skipped too. */
static void sort_desc(skv_topk_state *st)
{
    uint32_t hist[4][256];
    const int32_t n = st->n;
    uint32_t *k0 = st->key, *k1 = st->key + st->k;
    int32_t *i0 = st->idx, *i1 = st->idx + st->k;
    uint32_t lo, hi;
    st->kern->key_range(k0, n, &lo, &hi);
    const int digits = lo == hi ? 0 : (32 - __builtin_clz(hi - lo) + 7) / 8;
    memset(hist, 0, sizeof hist);
    for (int32_t i = 0; i < n; i++) {
        const uint32_t v = hi - k0[i];
        hist[0][v & 255]++;
        hist[1][(v >> 8) & 255]++;
        hist[2][(v >> 16) & 255]++;
        hist[3][v >> 24]++;
    }
    for (int p = 0; p < digits; p++) {
        const int sh = 8 * p;
        uint32_t *h = hist[p];
        if (h[((hi - k0[0]) >> sh) & 255] == (uint32_t)n)
            continue; /* digit constant: order unchanged */
        uint32_t sum = 0;
        for (uint32_t b = 0; b < 256; b++) {
            const uint32_t c = h[b];
            h[b] = sum;
            sum += c;
        }
        for (int32_t i = 0; i < n; i++) {
            const uint32_t pos = h[((hi - k0[i]) >> sh) & 255]++;
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
    return (int32_t)(n < 64 ? n : 64); /* each split costs a merge of k on one thread */
}

static int32_t parts_stride(int32_t splits, int set_form)
{
    return set_form ? 2 * splits : splits;
}

int skv_topk_parts_bytes(int64_t rows, int32_t splits, int32_t k, int set_form, size_t *out)
{
    size_t per;
    if (!skv_mul_ok((size_t)rows * (size_t)parts_stride(splits, set_form), (size_t)k * 8 + 4, &per))
        return 0;
    *out = skv_round_up(per, SKV_ALIGN);
    return 1;
}

void skv_topk_parts_init(skv_topk_parts *m, const skv_kernels *kern, void *mem, int64_t rows,
                         int32_t splits, int32_t k, int set_form)
{
    m->kern = kern;
    m->stride = parts_stride(splits, set_form);
    const size_t n = (size_t)rows * (size_t)m->stride;
    m->key = mem;
    m->idx = (int32_t *)(m->key + n * (size_t)k);
    m->n = m->idx + n * (size_t)k;
    m->k = k;
    m->splits = splits;
    memset(m->n, 0, n * sizeof *m->n); /* a slot no thread fills is empty */
}

/* Copies a state's candidates, as they are, into its (row, split) slot. */
static void store_state(const skv_topk_parts *m, int64_t row, int32_t split,
                        const skv_topk_state *st)
{
    const size_t slot = (size_t)row * (size_t)m->stride + (size_t)split;
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

/* Rank order of candidates from any lists: key descending, then index ascending. */
static inline uint64_t rank_of(uint32_t key, int32_t idx)
{
    return (uint64_t)key << 32 | (uint32_t)~idx;
}

/* How many of ranked list a the best p (p <= na + nb) of a and b hold: a binary search along
 * the merge path (no two entries rank alike: indices differ). */
static int32_t a_share(const uint32_t *ak, const int32_t *ai, int32_t na, const uint32_t *bk,
                       const int32_t *bi, int32_t nb, int32_t p)
{
    int32_t lo = p - nb > 0 ? p - nb : 0, hi = p < na ? p : na;
    while (lo < hi) { /* the first a entry that does not outrank b's entry p - mid - 1 */
        const int32_t mid = lo + (hi - lo) / 2;
        if (rank_of(ak[mid], ai[mid]) > rank_of(bk[p - mid - 1], bi[p - mid - 1]))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Merges ranked list b into ranked list a (index ranges may interleave), in a's storage (room
 * for k): a becomes the best min(k, na + nb) of both, ranked, and its count is returned. The
 * merge runs backwards from the last rank kept, so every write lands past the a entries still
 * to be read. */
static int32_t merge_into(uint32_t *ak, int32_t *ai, int32_t na, const uint32_t *bk,
                          const int32_t *bi, int32_t nb, int32_t k)
{
    const int32_t m = na + nb < k ? na + nb : k;
    const int32_t lo = a_share(ak, ai, na, bk, bi, nb, m);
    int32_t i = lo - 1, j = m - lo - 1, pos = m - 1;
    while (i >= 0 && j >= 0) { /* the lower-ranked of the two heads goes last */
        const uint32_t x = ak[i], y = bk[j], xi = (uint32_t)ai[i], yi = (uint32_t)bi[j];
        const int from_b = rank_of(y, (int32_t)yi) < rank_of(x, (int32_t)xi);
        const uint32_t pick = 0u - (uint32_t)from_b; /* a mask, not a branch: a coin toss */
        ak[pos] = x ^ ((x ^ y) & pick);
        ai[pos] = (int32_t)(xi ^ ((xi ^ yi) & pick));
        j -= from_b;
        i -= !from_b;
        pos--;
    }
    for (; j >= 0; j--, pos--) {
        ak[pos] = bk[j];
        ai[pos] = bi[j];
    }
    return m;
}

/* Ranks [r0, r1) of the merge of ranked lists a (na) and b (nb), written out (ranks past
 * na + nb are padding): from where the merge path crosses rank r0, a forward merge,
 * branch-free where the lists compete. */
static void merge_range(const uint32_t *ak, const int32_t *ai, int32_t na, const uint32_t *bk,
                        const int32_t *bi, int32_t nb, int32_t r0, int32_t r1, int32_t *out_idx,
                        float *out_score)
{
    const int32_t e = r1 < na + nb ? r1 : na + nb;
    int32_t i = 0, j = 0;
    if (r0 < e)
        i = a_share(ak, ai, na, bk, bi, nb, r0), j = r0 - i;
    for (int32_t r = r0; r < e; r++) { /* rank_of is never 0: an exhausted list never wins */
        const uint64_t ra = i < na ? rank_of(ak[i], ai[i]) : 0, rb = j < nb ? rank_of(bk[j], bi[j]) : 0;
        const int from_a = ra > rb;
        const uint64_t best = from_a ? ra : rb;
        out_idx[r] = (int32_t)~(uint32_t)best;
        if (out_score)
            out_score[r] = skv_score_from_key((uint32_t)(best >> 32));
        i += from_a;
        j += !from_a;
    }
    for (int32_t r = r0 > e ? r0 : e; r < r1; r++) {
        out_idx[r] = -1;
        if (out_score)
            out_score[r] = -INFINITY;
    }
}

int32_t skv_topk_parts_pieces(const skv_topk_parts *m)
{
    return m->splits <= 2 ? 2 : 1;
}

/* Each slot's list is ranked and no index is in two slots. With more than two slots all but
 * the last are merged into the first slot's storage, one after another; the last two lists
 * are then merged straight into the output, piece by piece. */
void skv_topk_parts_finish(const skv_topk_parts *m, int64_t row, int32_t piece, int32_t pieces,
                           int32_t *out_idx, float *out_score)
{
    const size_t base = (size_t)row * (size_t)m->stride;
    uint32_t *key = m->key + base * (size_t)m->k;
    int32_t *idx = m->idx + base * (size_t)m->k;
    int32_t n = m->n[base];
    for (int32_t sp = 1; sp < m->splits - 1; sp++) {
        const size_t at = (base + sp) * (size_t)m->k;
        n = merge_into(key, idx, n, m->key + at, m->idx + at, m->n[base + sp], m->k);
    }
    const size_t last = m->splits > 1 ? base + (size_t)m->splits - 1 : base;
    const int32_t n_last = m->splits > 1 ? m->n[last] : 0;
    const int32_t r0 = (int32_t)((int64_t)m->k * piece / pieces);
    const int32_t r1 = (int32_t)((int64_t)m->k * (piece + 1) / pieces);
    merge_range(key, idx, n, m->key + last * (size_t)m->k, m->idx + last * (size_t)m->k, n_last,
                r0, r1, out_idx, out_score);
}

void skv_topk_parts_store_set(const skv_topk_parts *m, int64_t row, int32_t split,
                              skv_topk_state *st)
{
    skv_topk_compact(st); /* keeps index order */
    store_state(m, row, split, st);
}

/* First position in idx[from, to) (ascending) whose index is at least bound. */
static int32_t first_at_least(const int32_t *idx, int32_t from, int32_t to, int64_t bound)
{
    while (from < to) {
        const int32_t mid = from + (to - from) / 2;
        if (idx[mid] < bound)
            from = mid + 1;
        else
            to = mid;
    }
    return from;
}

/* The slots' lists interleave (one thread's ranges between another's): walking the ranges in
 * order and copying each one's run from its owner's slot lays them out in index order, which
 * one select then cuts to the best k (earliest kept on ties). */
void skv_topk_parts_finish_set(const skv_topk_parts *m, int64_t row, const int32_t *owner,
                               int32_t n_ranges, int64_t chunk, int32_t *out_idx)
{
    const size_t base = (size_t)row * (size_t)m->stride, k = (size_t)m->k;
    uint32_t *key = m->key + (base + (size_t)m->splits) * k; /* the row's ordered area */
    int32_t *idx = m->idx + (base + (size_t)m->splits) * k;
    int32_t *cursor = m->n + base + m->splits; /* counts of the area's slots: unused */
    for (int32_t sp = 0; sp < m->splits; sp++)
        cursor[sp] = 0;
    int32_t n = 0;
    for (int32_t r = 0; r < n_ranges; r++) {
        const int32_t o = owner[r];
        const size_t at = (base + (size_t)o) * k;
        const int32_t from = cursor[o];
        const int32_t to = first_at_least(m->idx + at, from, m->n[base + o], (int64_t)(r + 1) * chunk);
        memcpy(key + n, m->key + at + from, (size_t)(to - from) * 4);
        memcpy(idx + n, m->idx + at + from, (size_t)(to - from) * 4);
        n += to - from;
        cursor[o] = to;
    }
    if (n > m->k) {
        select_keep(m->kern, key, idx, n, m->k);
        n = m->k;
    }
    write_out(NULL, idx, n, m->k, out_idx, NULL);
}
