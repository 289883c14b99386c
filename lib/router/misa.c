/* MISA (routed heads), MISA-dagger (routed candidates re-ranked densely) and HISA (pooled
 * blocks, then their tokens exactly). Each reuses the dense indexer: the routed pass is the
 * dense driver on a query of the routed heads, and re-ranking runs it on gathered rows. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "router/router_impl.h"

skv_status skv_rerank(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                      const int32_t *lists, const int32_t *list_len, int64_t stride, int32_t k,
                      int32_t *out_idx, float *out_score)
{
    skv_key_src ls = *src;
    ls.lists = lists;
    ls.list_len = list_len;
    ls.list_stride = stride;
    return skv_indexer_run(ctx, q, &ls, k, NULL, out_idx, out_score);
}

int64_t skv_max_visible(const skv_indexer_query *q, int64_t n_keys)
{
    int64_t m = 0;
    for (int32_t t = 0; t < q->n_tokens; t++) {
        const int64_t v = skv_visible(q, t, n_keys);
        m = v > m ? v : m;
    }
    return m;
}

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* The query of each token's routed heads (in ascending head order, so that routing every head
 * gives back the query itself). */
static void routed_query(const skv_indexer_query *q, const int32_t *heads, int32_t h,
                         uint8_t *qr, float *wr, float *sr, int32_t *sorted)
{
    const size_t row = (size_t)q->head_dim * skv_dtype_size(q->dtype);
    for (int32_t t = 0; t < q->n_tokens; t++) {
        memcpy(sorted, heads + (size_t)t * h, (size_t)h * 4);
        qsort(sorted, (size_t)h, 4, cmp_i32);
        for (int32_t i = 0; i < h; i++) {
            const size_t from = (size_t)t * q->n_heads + sorted[i], to = (size_t)t * h + i;
            memcpy(qr + to * row, (const uint8_t *)q->q + from * row, row);
            wr[to] = q->weights ? q->weights[from] : skv_bf16_bits_f32(q->weights_bf16[from]);
            if (sr)
                sr[to] = q->q_scale[from];
        }
    }
}

/* The dense path a call takes, or SKV_PATH_ROUTED. */
static skv_route_path dense_path(int32_t T, int64_t vis, int64_t gate, int dial)
{
    return T == 0 ? SKV_PATH_EMPTY : vis < gate ? SKV_PATH_DENSE_GATE
                                    : dial     ? SKV_PATH_DENSE_DIAL
                                               : SKV_PATH_ROUTED;
}

static skv_status misa_run(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                           const skv_misa_params *p, int32_t k, int32_t *out_idx, float *out_score,
                           skv_route_path *path, int64_t *vis_out, int64_t *gate_out)
{
    SKV_TRY(skv_misa_check(ctx, q, src, p));
    SKV_CHECK(ctx, k >= 1 && k <= SKV_TOPK_MAX_K && (out_idx != NULL || q->n_tokens == 0));
    SKV_CHECK(ctx, ((p->candidates == 0 || p->candidates >= k) && p->candidates <= SKV_TOPK_MAX_K) ||
                       (p->candidates == SKV_CANDIDATES_4K && k <= SKV_TOPK_MAX_K / 4));
    const int32_t T = q->n_tokens, H = q->n_heads, h = p->heads;
    const int32_t C = p->candidates == SKV_CANDIDATES_4K ? 4 * k : p->candidates;
    const int64_t vis = skv_max_visible(q, src->n_keys);
    const int64_t gate = skv_misa_gate(p);
    /* the dials and the length gate: the dense indexer itself */
    *path = dense_path(T, vis, gate, h == H || (C > 0 && C >= vis));
    *vis_out = vis;
    *gate_out = gate;
    if (*path != SKV_PATH_ROUTED)
        return skv_indexer_run(ctx, q, src, k, NULL, out_idx, out_score);

    const size_t qrow = (size_t)q->head_dim * skv_dtype_size(q->dtype);
    const size_t n_heads_b = skv_round_up((size_t)T * h * 4, 64);
    const size_t qr_b = skv_round_up((size_t)T * h * qrow, 64), wr_b = n_heads_b;
    const size_t cand_b = C ? skv_round_up((size_t)T * C * 4, 64) : 0;
    uint8_t *buf = skv_workspace_aux(ctx, 1, 3 * n_heads_b + qr_b + wr_b + cand_b +
                                                 (size_t)h * 4 + (size_t)T * 4);
    if (!buf)
        return SKV_ERR_NOMEM;
    int32_t *heads = (int32_t *)buf;
    uint8_t *qr = buf + n_heads_b;
    float *wr = (float *)(qr + qr_b), *sr = (float *)((uint8_t *)wr + wr_b);
    int32_t *cand = (int32_t *)((uint8_t *)sr + n_heads_b);
    int32_t *sorted = (int32_t *)((uint8_t *)cand + cand_b);

    SKV_TRY(skv_route_src(ctx, q, src, p, heads, NULL));
    routed_query(q, heads, h, qr, wr, q->q_scale ? sr : NULL, sorted);
    const skv_indexer_query rq = {T, h, q->head_dim, q->dtype, qr, q->q_scale ? sr : NULL, wr, q->positions,
                                   q->n_sink, q->n_window};
    if (!C)
        return skv_indexer_run(ctx, &rq, src, k, NULL, out_idx, out_score);

    /* MISA-dagger: C routed candidates per token (ascending), re-ranked by the dense score */
    SKV_TRY(skv_indexer_run_set(ctx, &rq, src, C, cand));
    int32_t *len = sorted + h;
    for (int32_t t = 0; t < T; t++) { /* each list's length: its padding starts at the first -1 */
        const int32_t *list = cand + (size_t)t * C;
        int32_t lo = 0, hi = C;
        while (lo < hi) {
            const int32_t mid = lo + (hi - lo) / 2;
            if (list[mid] >= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        len[t] = lo;
    }
    return skv_rerank(ctx, q, src, cand, len, C, k, out_idx, out_score);
}

skv_status skv_misa_src(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                           const skv_misa_params *p, int32_t k, int32_t *out_idx, float *out_score)
{
    skv_route_path path = SKV_PATH_EMPTY;
    int64_t vis = 0, gate = 0;
    const skv_status st = misa_run(ctx, q, src, p, k, out_idx, out_score, &path, &vis, &gate);
    return skv_route_note(ctx, "misa", path, vis, gate, st);
}

skv_status skv_misa_topk(skv_context *ctx, const skv_indexer_query *q, const skv_key_block *keys,
                         const skv_pooled_keys *pooled, const skv_misa_params *p, int32_t k,
                         int32_t *out_idx, float *out_score)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_src_with_pool(ctx, keys, pooled, &src));
    return skv_misa_src(ctx, q, &src, p, k, out_idx, out_score);
}

skv_status skv_kcache_misa_topk(skv_kcache *c, int32_t seq, int32_t layer,
                                const skv_indexer_query *q, const skv_misa_params *p, int32_t k,
                                int32_t *out_idx, float *out_score)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_kcache_src(c, seq, layer, &src));
    return skv_misa_src(skv_kcache_context(c), q, &src, p, k, out_idx, out_score);
}

/* ---- HISA ---------------------------------------------------------------------------------- */

void skv_hisa_params_init(skv_hisa_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->block = 128;
    p->blocks = SKV_CANDIDATES_4K;
    p->min_length = -1;
}

static skv_status hisa_run(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                           const skv_hisa_params *p, int32_t k, int32_t *out_idx, float *out_score,
                           skv_route_path *path, int64_t *vis_out, int64_t *gate_out)
{
    SKV_CHECK(ctx, p != NULL && p->struct_size == sizeof *p);
    SKV_TRY(skv_indexer_check_query(ctx, q, src->head_dim, src->dtype));
    SKV_CHECK(ctx, k >= 1 && k <= SKV_TOPK_MAX_K && (out_idx != NULL || q->n_tokens == 0));
    SKV_CHECK(ctx, p->block >= 1 && p->min_length >= -1 &&
                       (p->blocks >= 2 || p->blocks == 0 || p->blocks == SKV_CANDIDATES_4K));
    const int32_t T = q->n_tokens, D = q->head_dim, B = p->block;
    const int64_t m4k = ((int64_t)4 * k + B - 1) / B; /* SKV_CANDIDATES_4K (or 0) */
    SKV_CHECK(ctx, p->blocks > 0 || m4k * B <= INT32_MAX);
    const int32_t m = p->blocks > 0 ? p->blocks : m4k > 2 ? (int32_t)m4k : 2;
    SKV_CHECK(ctx, src->pool_chunk < 1 || B % src->pool_chunk == 0);
    const int64_t vis = skv_max_visible(q, src->n_keys);
    const int64_t gate = skv_hisa_gate(p);
    *path = dense_path(T, vis, gate, (int64_t)m * B >= vis);
    *vis_out = vis;
    *gate_out = gate;
    if (*path != SKV_PATH_ROUTED)
        return skv_indexer_run(ctx, q, src, k, NULL, out_idx, out_score);
    if (src->pool_chunk < 1)
        return SKV_ERR_STATE;

    /* block means over every key, and each token's last visible block as its position */
    const int64_t nb = (src->n_keys + B - 1) / B;
    const size_t means_b = skv_round_up((size_t)nb * D * 4, 64), pos_b = skv_round_up((size_t)T * 4, 64);
    const size_t sel_b = skv_round_up((size_t)m * 4, 64);
    const int nth = skv_threads(ctx);
    /* T x blocks and T x m x block can pass 2^64 bytes (T and the keys each up to 2^31) */
    size_t scores_b, list_b, both;
    if (!skv_mul_ok((size_t)T * 4, (size_t)nb, &scores_b) || !skv_mul_ok((size_t)T * 4, (size_t)m * B, &list_b) ||
        __builtin_add_overflow(scores_b, list_b, &both) || both > SIZE_MAX / 2)
        return SKV_ERR_NOMEM;
    scores_b = skv_round_up(scores_b, 64), list_b = skv_round_up(list_b, 64); /* the rest is < 2^50 */
    uint8_t *buf = skv_workspace_aux(ctx, 1, means_b + 2 * pos_b + scores_b + sel_b + list_b + (size_t)nth * D * 4);
    if (!buf)
        return SKV_ERR_NOMEM;
    float *means = (float *)buf, *scores = (float *)(buf + means_b + pos_b);
    int32_t *bpos = (int32_t *)(buf + means_b), *sel = (int32_t *)((uint8_t *)scores + scores_b);
    int32_t *list = (int32_t *)((uint8_t *)sel + sel_b);
    int32_t *len = (int32_t *)((uint8_t *)list + list_b);
    float *tmp = (float *)((uint8_t *)len + pos_b);
    /* every block's mean, once per call (decode at 128K: 1024 of them) */
#pragma omp parallel num_threads(nth) if (nth > 1 && nb > 64)
    {
#ifdef _OPENMP
        float *row = tmp + (size_t)omp_get_thread_num() * D;
#else
        float *row = tmp;
#endif
#pragma omp for schedule(static)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t b0 = b * B, end = b0 + B < src->n_keys ? b0 + B : src->n_keys;
            skv_pool_mean(&ctx->kern, src, b0, end, means + (size_t)b * D, row);
        }
    }
    for (int32_t t = 0; t < T; t++) {
        const int64_t v = skv_visible(q, t, src->n_keys);
        bpos[t] = v > 0 ? (int32_t)((v - 1) / B) : -1;
    }
    skv_indexer_query bq = *q;
    bq.positions = bpos;
    const skv_key_src bsrc = {.n_keys = nb, .head_dim = D, .dtype = SKV_F32,
                              .row_bytes = (size_t)D * 4, .base = (const uint8_t *)means};
    SKV_TRY(skv_indexer_run(ctx, &bq, &bsrc, 0, scores, NULL, NULL));

    for (int32_t t = 0; t < T; t++) {
        const int64_t v = skv_visible(q, t, src->n_keys);
        const int32_t last = bpos[t];
        int32_t n_sel = 0;
        if (last >= 0) { /* the first and last blocks, and the best m - 2 between them */
            sel[n_sel++] = 0;
            const int32_t inner = last - 1, want = m - 2 < inner ? m - 2 : inner;
            if (want > 0) {
                SKV_TRY(skv_topk_rows(ctx, scores + (size_t)t * nb + 1, 1, inner, inner, NULL, want,
                                      sel + 1, NULL));
                for (int32_t i = 1; i <= want; i++)
                    sel[i] += 1;
                n_sel += want;
            }
            if (last > 0)
                sel[n_sel++] = last;
            qsort(sel, (size_t)n_sel, 4, cmp_i32);
        }
        int32_t n = 0, *lt = list + (size_t)t * m * B;
        for (int32_t i = 0; i < n_sel; i++)
            for (int64_t s = (int64_t)sel[i] * B; s < (int64_t)(sel[i] + 1) * B && s < v; s++)
                lt[n++] = (int32_t)s;
        len[t] = n;
    }
    return skv_rerank(ctx, q, src, list, len, (int64_t)m * B, k, out_idx, out_score);
}

skv_status skv_hisa_src(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                           const skv_hisa_params *p, int32_t k, int32_t *out_idx, float *out_score)
{
    skv_route_path path = SKV_PATH_EMPTY;
    int64_t vis = 0, gate = 0;
    const skv_status st = hisa_run(ctx, q, src, p, k, out_idx, out_score, &path, &vis, &gate);
    return skv_route_note(ctx, "hisa", path, vis, gate, st);
}

skv_status skv_hisa_topk(skv_context *ctx, const skv_indexer_query *q, const skv_key_block *keys,
                         const skv_pooled_keys *pooled, const skv_hisa_params *p, int32_t k,
                         int32_t *out_idx, float *out_score)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_src_with_pool(ctx, keys, pooled, &src));
    return skv_hisa_src(ctx, q, &src, p, k, out_idx, out_score);
}

skv_status skv_kcache_hisa_topk(skv_kcache *c, int32_t seq, int32_t layer,
                                const skv_indexer_query *q, const skv_hisa_params *p, int32_t k,
                                int32_t *out_idx, float *out_score)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_kcache_src(c, seq, layer, &src));
    return skv_hisa_src(skv_kcache_context(c), q, &src, p, k, out_idx, out_score);
}
