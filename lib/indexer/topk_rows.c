/* skv_topk_rows: the indexer's selection over caller-supplied score rows. Rows are spread over
 * threads; when there are fewer rows than threads, long rows are split into key ranges that
 * are selected separately and merged (the result is unique, so the split never shows). */
#ifdef _OPENMP
#include <omp.h>
#endif

#include "indexer/topk.h"
#include "sparsekv/indexer.h"

#define SPLIT_MIN_KEYS 16384

skv_status skv_topk_rows(skv_context *ctx, const float *x, int64_t n_rows, int64_t n_cols,
                         int64_t row_stride, const int64_t *lengths, int32_t k,
                         int32_t *out_idx, float *out_val)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, n_rows >= 0 && n_cols >= 0 && n_cols <= INT32_MAX && row_stride >= n_cols);
    SKV_CHECK(ctx, k >= 1 && k <= SKV_TOPK_MAX_K);
    if (n_rows == 0)
        return SKV_OK;
    SKV_CHECK(ctx, out_idx != NULL && (x != NULL || n_cols == 0));
    if (lengths)
        for (int64_t r = 0; r < n_rows; r++)
            SKV_CHECK(ctx, lengths[r] >= 0 && lengths[r] <= n_cols);

    const int nth = skv_threads(ctx);
    const int32_t splits = skv_topk_split_count(n_rows, nth, n_cols, SPLIT_MIN_KEYS);
    const size_t state_bytes = skv_topk_state_bytes(k);
    size_t parts_bytes = 0, ws_bytes;
    if (splits > 1 && !skv_topk_parts_bytes(n_rows, splits, k, 0, &parts_bytes))
        return SKV_ERR_NOMEM;
    if (!skv_mul_ok(state_bytes, (size_t)nth, &ws_bytes) ||
        __builtin_add_overflow(ws_bytes, parts_bytes, &ws_bytes))
        return SKV_ERR_NOMEM;
    uint8_t *ws = skv_workspace(ctx, ws_bytes);
    if (!ws)
        return SKV_ERR_NOMEM;
    const skv_kernels *kern = &ctx->kern;
    skv_topk_parts parts;
    if (splits > 1)
        skv_topk_parts_init(&parts, kern, ws + state_bytes * nth, n_rows, splits, k, 0);

    const int64_t items = n_rows * splits;
#pragma omp parallel num_threads(nth) if (nth > 1 && items > 1)
    {
#ifdef _OPENMP
        uint8_t *mine = ws + state_bytes * (size_t)omp_get_thread_num();
#else
        uint8_t *mine = ws;
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            const int64_t r = it / splits;
            const int32_t sp = (int32_t)(it % splits);
            const int64_t len = lengths ? lengths[r] : n_cols;
            const int64_t chunk = (len + splits - 1) / splits;
            const int64_t lo = sp * chunk < len ? sp * chunk : len;
            const int64_t hi = lo + chunk < len ? lo + chunk : len;
            skv_topk_state st;
            skv_topk_init(&st, kern, mine, k);
            skv_topk_push(&st, x + r * row_stride + lo, (int32_t)(hi - lo), (int32_t)lo);
            if (splits == 1)
                skv_topk_finish(&st, out_idx + r * k, out_val ? out_val + r * k : NULL);
            else
                skv_topk_parts_store(&parts, r, sp, &st);
        }
        if (splits > 1) { /* each row's merge in pieces, one per thread */
            const int32_t pieces = skv_topk_parts_pieces(&parts);
#pragma omp for schedule(static)
            for (int64_t it = 0; it < n_rows * pieces; it++) {
                const int64_t r = it / pieces;
                skv_topk_parts_finish(&parts, r, (int32_t)(it % pieces), pieces, out_idx + r * k,
                                      out_val ? out_val + r * k : NULL);
            }
        }
    }
    return SKV_OK;
}
