/* Slices of the indexer top-k and skv_topk_rows for a host's thread pool: phase one scores a
 * worker's range of keys with the single-threaded driver, phase two merges the ranges' top-k
 * lists. The merge is exact: the top-k of the union is among the union of the ranges' top-k. */
#include <math.h>

#include "indexer/run.h"
#include "sparsekv/slice.h"

#define KEY_ALIGN 256 /* ranges start at multiples of this many keys (and of a page) */

typedef struct cand { int32_t idx; float score; } cand;

size_t skv_topk_part_bytes(int32_t n_tokens, int32_t k, int32_t nth)
{
    size_t n;
    if (n_tokens < 0 || k < 1 || nth < 1 || nth > SKV_SLICE_MAX_WORKERS || !skv_mul_ok((size_t)n_tokens, (size_t)k, &n) ||
        !skv_mul_ok(n, (size_t)nth, &n) || !skv_mul_ok(n, sizeof(cand), &n))
        return 0;
    return n;
}

/* Runs the driver with the context held to one thread (the worker's own context). */
static skv_status one_thread(skv_context *wctx, const skv_indexer_query *q, const skv_key_src *src,
                             int32_t k, int32_t *idx, float *score)
{
    const int saved = wctx->n_threads;
    wctx->n_threads = 1;
    const skv_status st = skv_indexer_run(wctx, q, src, k, NULL, idx, score);
    wctx->n_threads = saved;
    return st;
}

/* A forced key (skv_forced_apply) in a candidate list: ranked before every other key, the
 * lower index first (sinks, then the window, as the driver puts them), score +INFINITY. */
static cand forced_cand(int64_t key) { return (cand){(int32_t)(-2 - key), INFINITY}; }
static int32_t cand_key(cand c) { return c.idx <= -2 ? -2 - c.idx : c.idx; }

/* Phase one on a validated source: worker ith's range of keys [s0, s1), the candidates of q's
 * tokens into mine [n_tokens][k]. The range is ranked without q's forced keys; those that lie
 * in it are put first, marked (forced_cand), and the best k - f others follow: the merged lists
 * then hold every forced key and the best others, as skv_forced_apply would. */
static skv_status topk_range(skv_context *wctx, const skv_indexer_query *q, const skv_key_src *src,
                             int32_t k, int32_t ith, int32_t nth, int64_t align, cand *mine)
{
    const int32_t T = q->n_tokens;
    const int64_t units = (src->n_keys + align - 1) / align;
    const int64_t s0 = units * ith / nth * align, s1e = units * (ith + 1) / nth * align;
    const int64_t s1 = s1e < src->n_keys ? s1e : src->n_keys;
    if (s0 >= s1) { /* an idle worker: no candidates */
        for (size_t i = 0; i < (size_t)T * k; i++)
            mine[i] = (cand){-1, -INFINITY};
        return SKV_OK;
    }
    skv_key_src sub = *src;
    sub.n_keys = s1 - s0;
    sub.memo = NULL;
    if (src->table) {
        sub.table = src->table + s0 / src->page_tokens;
    } else {
        sub.base = src->base + (size_t)s0 * src->row_bytes;
        sub.scale = src->scale ? src->scale + s0 : NULL;
        sub.mx_scale = src->mx_scale ? src->mx_scale + (size_t)s0 * (size_t)(src->head_dim / 32) : NULL;
    }
    /* positions relative to the range, and room for the range's lists, from wctx */
    const size_t pos_b = skv_round_up((size_t)T * 4, 64), idx_b = skv_round_up((size_t)T * k * 4, 64);
    uint8_t *buf = skv_workspace_aux(wctx, 2, pos_b + 2 * idx_b);
    if (!buf)
        return SKV_ERR_NOMEM;
    int32_t *pos = (int32_t *)buf, *idx = (int32_t *)(buf + pos_b);
    float *score = (float *)(buf + pos_b + idx_b);
    skv_indexer_query sq = *q;
    sq.n_sink = sq.n_window = 0;
    if (q->positions) {
        for (int32_t t = 0; t < T; t++) {
            const int64_t p = (int64_t)q->positions[t] - s0;
            pos[t] = p < -1 ? -1 : p > INT32_MAX ? INT32_MAX : (int32_t)p;
        }
        sq.positions = pos;
    }
    SKV_TRY(one_thread(wctx, &sq, &sub, k, idx, score));
    for (int32_t t = 0; t < T; t++) {
        cand *out = mine + (size_t)t * k;
        const int32_t *ti = idx + (size_t)t * k;
        const float *ts = score + (size_t)t * k;
        int64_t se = 0, ws = 0, v = 0;
        if (q->n_sink > 0 || q->n_window > 0)
            v = skv_forced_bounds(q, t, src->n_keys, &se, &ws);
        int32_t n = 0;
        for (int64_t x = s0; x < s1 && x < se; x++)
            out[n++] = forced_cand(x);
        for (int64_t x = ws > s0 ? ws : s0; x < s1 && x < v; x++)
            out[n++] = forced_cand(x);
        for (int32_t j = 0; j < k && n < k; j++) {
            const int64_t x = ti[j] < 0 ? -1 : ti[j] + s0;
            if (x >= 0 && (x < se || (x >= ws && x < v)))
                continue; /* forced: put first already */
            out[n++] = x < 0 ? (cand){-1, -INFINITY} : (cand){(int32_t)x, ts[j]};
        }
    }
    return SKV_OK;
}

/* A validated top-k: validated k and part, the keys of the OpenMP call's checks. */
static skv_status check_topk(skv_context *wctx, const skv_indexer_query *q, int32_t k, int32_t nth,
                             const void *part)
{
    SKV_CHECK(wctx, k >= 1 && k <= SKV_TOPK_MAX_K && (part != NULL || q->n_tokens == 0));
    SKV_CHECK(wctx, (int64_t)q->n_sink + q->n_window <= k);
    SKV_CHECK(wctx, skv_topk_part_bytes(q->n_tokens, k, nth) > 0 || q->n_tokens == 0);
    return SKV_OK;
}

skv_status skv_indexer_topk_slice(skv_context *wctx, const skv_indexer_query *q,
                                  const skv_key_block *keys, int32_t k, int32_t ith, int32_t nth,
                                  void *part)
{
    if (!wctx || nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(wctx, keys != NULL);
    SKV_TRY(skv_indexer_check_query(wctx, q, keys->head_dim, keys->dtype));
    skv_key_src src;
    SKV_TRY(skv_key_src_from_block(wctx, keys, &src));
    SKV_TRY(check_topk(wctx, q, k, nth, part));
    return topk_range(wctx, q, &src, k, ith, nth, KEY_ALIGN, (cand *)part + (size_t)ith * q->n_tokens * k);
}

/* Ranges of whole pages and whole groups of keys: the least common multiple. */
static int64_t page_align(int32_t page_tokens)
{
    int64_t a = page_tokens, b = KEY_ALIGN;
    while (b) {
        const int64_t r = a % b;
        a = b, b = r;
    }
    return (int64_t)page_tokens / a * KEY_ALIGN;
}

skv_status skv_kcache_topk_slice(skv_context *wctx, const skv_kcache *c, int32_t seq,
                                 int32_t layer, const skv_indexer_query *q, int32_t k,
                                 int32_t ith, int32_t nth, void *part)
{
    if (!wctx || !c || nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_kcache_src(c, seq, layer, &src));
    SKV_TRY(skv_indexer_check_query(wctx, q, src.head_dim, src.dtype));
    SKV_TRY(check_topk(wctx, q, k, nth, part));
    return topk_range(wctx, q, &src, k, ith, nth, page_align(src.page_tokens),
                      (cand *)part + (size_t)ith * q->n_tokens * k);
}

skv_status skv_paged_topk_slice(skv_context *wctx, const skv_paged_keys *keys,
                                const skv_paged_batch *b, const skv_indexer_query *q, int32_t k,
                                int32_t ith, int32_t nth, void *part)
{
    if (!wctx || nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(skv_paged_check(wctx, keys, b, q, k, part));
    SKV_TRY(check_topk(wctx, q, k, nth, part));
    skv_paged_seqs w; /* slot 1: topk_range takes slot 2 */
    SKV_TRY(skv_paged_scratch(wctx, keys, b, 1, &w));
    const int64_t align = page_align(keys->block_tokens);
    cand *mine = (cand *)part + (size_t)ith * q->n_tokens * k;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        skv_key_src src;
        int32_t t0;
        const skv_indexer_query sq = skv_paged_seq(keys, b, q, i, &w, &src, &t0);
        cand *out = mine + (size_t)t0 * k;
        if (sq.n_tokens == 0)
            continue;
        if (src.n_keys == 0) { /* nothing visible: padding, from every worker */
            for (size_t j = 0; j < (size_t)sq.n_tokens * k; j++)
                out[j] = (cand){-1, -INFINITY};
            continue;
        }
        SKV_TRY(topk_range(wctx, &sq, &src, k, ith, nth, align, out));
    }
    return SKV_OK;
}

/* a before b: forced keys first (the lower first), then the higher score (NaN lowest), then
 * the lower index; padding last */
static int cand_before(cand a, cand b)
{
    if (b.idx == -1)
        return a.idx != -1;
    if (a.idx == -1)
        return 0;
    if (a.idx <= -2 || b.idx <= -2) /* forced keys, encoded -2 - key */
        return a.idx <= -2 && (b.idx >= 0 || a.idx > b.idx);
    const uint32_t ka = skv_score_key(a.score), kb = skv_score_key(b.score);
    return ka > kb || (ka == kb && a.idx < b.idx);
}

skv_status skv_topk_merge_slice(const void *part, int32_t n_tokens, int32_t k, int32_t ith,
                                int32_t nth, int32_t *out_idx, float *out_score)
{
    if (nth < 1 || nth > SKV_SLICE_MAX_WORKERS || ith < 0 || ith >= nth || n_tokens < 0 || k < 1)
        return SKV_ERR_INVALID_ARG;
    if (n_tokens == 0)
        return SKV_OK;
    if (!part || !out_idx || skv_topk_part_bytes(n_tokens, k, nth) == 0)
        return SKV_ERR_INVALID_ARG;
    const cand *c = part;
    const int32_t t0 = (int32_t)((int64_t)n_tokens * ith / nth);
    const int32_t t1 = (int32_t)((int64_t)n_tokens * (ith + 1) / nth);
    int32_t at[SKV_SLICE_MAX_WORKERS]; /* each list's next candidate */
    for (int32_t t = t0; t < t1; t++) {
        for (int32_t w = 0; w < nth; w++)
            at[w] = 0;
        for (int32_t j = 0; j < k; j++) {
            int32_t best = -1;
            cand x = {-1, -INFINITY};
            for (int32_t w = 0; w < nth; w++) {
                if (at[w] == k)
                    continue;
                const cand y = c[((size_t)w * n_tokens + t) * k + at[w]];
                if (best < 0 || cand_before(y, x))
                    best = w, x = y;
            }
            if (x.idx != -1)
                at[best]++;
            out_idx[(size_t)t * k + j] = x.idx == -1 ? -1 : cand_key(x);
            if (out_score)
                out_score[(size_t)t * k + j] = x.idx == -1 ? -INFINITY : x.score;
        }
    }
    return SKV_OK;
}

skv_status skv_topk_rows_slice(skv_context *wctx, const float *x, int64_t n_rows, int64_t n_cols,
                               int64_t row_stride, const int64_t *lengths, int32_t k, int32_t ith,
                               int32_t nth, int32_t *out_idx, float *out_val)
{
    if (!wctx || nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(wctx, n_rows >= 0 && k >= 1 && n_cols >= 0);
    for (int64_t r = 0; lengths && r < n_rows; r++) /* every row's, as the whole call checks */
        SKV_CHECK(wctx, lengths[r] >= 0 && lengths[r] <= n_cols);
    const int64_t r0 = n_rows * ith / nth, r1 = n_rows * (ith + 1) / nth;
    if (r0 == r1) /* still the whole call's checks, so that every worker returns its status */
        return skv_topk_rows(wctx, x, 0, n_cols, row_stride, NULL, k, out_idx, out_val);
    const int saved = wctx->n_threads;
    wctx->n_threads = 1;
    const skv_status st = skv_topk_rows(wctx, x + r0 * row_stride, r1 - r0, n_cols, row_stride,
                                        lengths ? lengths + r0 : NULL, k, out_idx + r0 * k,
                                        out_val ? out_val + r0 * k : NULL);
    wctx->n_threads = saved;
    return st;
}
