/* Selection quality against the dense indexer: tie-aware and strict recall, and the share of
 * the dense softmax mass covered. */
#include <math.h>
#include <string.h>

#include "router/router_impl.h"

#define TOKENS_PER_PASS 8 /* dense score rows held at once */

static skv_status quality(skv_context *ctx, const skv_indexer_query *q, const skv_key_block *keys,
                          const int32_t *idx, int32_t k, double *recall, double *strict,
                          double *mass)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_key_src_from_block(ctx, keys, &src));
    SKV_TRY(skv_indexer_check_query(ctx, q, src.head_dim, src.dtype));
    SKV_CHECK(ctx, k >= 1 && k <= SKV_TOPK_MAX_K && (idx != NULL || q->n_tokens == 0));
    const int64_t L = src.n_keys;
    const size_t rows_b = skv_round_up((size_t)TOKENS_PER_PASS * (L ? L : 1) * 4, 64);
    const size_t top_b = skv_round_up((size_t)TOKENS_PER_PASS * k * 8, 64);
    const size_t mark_b = strict ? skv_round_up((size_t)(L ? L : 1), 64) : 0;
    uint8_t *buf = skv_workspace_aux(ctx, 1, rows_b + top_b + mark_b);
    if (!buf)
        return SKV_ERR_NOMEM;
    float *rows = (float *)buf, *dval = (float *)(buf + rows_b);
    int32_t *didx = (int32_t *)(dval + (size_t)TOKENS_PER_PASS * k);
    uint8_t *mark = buf + rows_b + top_b; /* strict: keys of the dense top-k not yet matched */
    if (strict)
        memset(mark, 0, (size_t)(L ? L : 1));

    for (int32_t t0 = 0; t0 < q->n_tokens; t0 += TOKENS_PER_PASS) {
        const int32_t nt = q->n_tokens - t0 < TOKENS_PER_PASS ? q->n_tokens - t0 : TOKENS_PER_PASS;
        skv_indexer_query qs = skv_query_from(q, t0);
        qs.n_tokens = nt;
        qs.positions = q->positions ? q->positions + t0 : NULL;
        if (L > 0)
            SKV_TRY(skv_indexer_run(ctx, &qs, &src, 0, rows, NULL, NULL));
        if (L > 0)
            SKV_TRY(skv_indexer_run(ctx, &qs, &src, k, NULL, didx, dval));
        for (int32_t i = 0; i < nt; i++) {
            const int32_t t = t0 + i;
            const float *row = rows + (size_t)i * L;
            const int32_t *sel = idx + (size_t)t * k, *dsel = didx + (size_t)i * k;
            int32_t n_dense = 0;
            while (L > 0 && n_dense < k && dsel[n_dense] >= 0)
                n_dense++;
            if (n_dense == 0) {
                if (recall)
                    recall[t] = 1;
                if (strict)
                    strict[t] = 1;
                if (mass)
                    mass[t] = 1;
                continue;
            }
            if (strict) { /* |idx[t] & T_dense(t)|, each dense key counted once */
                int32_t both = 0;
                for (int32_t j = 0; j < n_dense; j++)
                    mark[dsel[j]] = 1;
                for (int32_t j = 0; j < k; j++) {
                    const int32_t s = sel[j];
                    if (s >= 0 && s < L && mark[s])
                        both++, mark[s] = 0;
                }
                for (int32_t j = 0; j < n_dense; j++)
                    mark[dsel[j]] = 0;
                strict[t] = (double)both / n_dense;
            }
            const uint32_t kth = skv_score_key(dval[(size_t)i * k + n_dense - 1]);
            const int64_t vis = skv_visible(q, t, L);
            int32_t hits = 0;
            double mx = -INFINITY, m_sel = 0, m_dense = 0;
            for (int64_t s = 0; s < vis; s++)
                mx = row[s] > mx ? row[s] : mx;
            for (int32_t j = 0; j < k; j++) {
                const int32_t s = sel[j];
                if (s < 0 || s >= vis)
                    continue;
                hits += skv_score_key(row[s]) >= kth;
                m_sel += row[s] == row[s] && mx > -INFINITY ? exp((double)row[s] - mx) : 0;
            }
            for (int32_t j = 0; j < n_dense; j++) {
                const float v = row[dsel[j]];
                m_dense += v == v && mx > -INFINITY ? exp((double)v - mx) : 0;
            }
            if (recall)
                recall[t] = (double)(hits < n_dense ? hits : n_dense) / n_dense;
            if (mass)
                mass[t] = m_dense > 0 ? m_sel / m_dense : 1;
        }
    }
    return SKV_OK;
}

skv_status skv_selection_quality(skv_context *ctx, const skv_indexer_query *q,
                                 const skv_key_block *keys, const int32_t *idx, int32_t k,
                                 double *recall, double *mass)
{
    return quality(ctx, q, keys, idx, k, recall, NULL, mass);
}

skv_status skv_selection_recall_strict(skv_context *ctx, const skv_indexer_query *q,
                                       const skv_key_block *keys, const int32_t *idx, int32_t k,
                                       double *recall)
{
    if (ctx && q && q->n_tokens > 0 && !recall)
        return SKV_ERR_INVALID_ARG;
    return quality(ctx, q, keys, idx, k, NULL, recall, NULL);
}
