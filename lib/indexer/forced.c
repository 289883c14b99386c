/* Forced keys: a token's first n_sink and last n_window visible keys are always selected
 * (attention sinks and a local window, as mlx-lm and several engines keep them), counted within
 * k. Applied to a finished ranked top-k: the best k - f other keys of a set are always among
 * its best k, so moving the forced keys to the front and keeping the first k - f others, in
 * their rank order, gives the result of selecting them from all visible keys. */
#include <math.h>
#include <string.h>

#include "indexer/run.h"

int64_t skv_forced_bounds(const skv_indexer_query *q, int32_t t, int64_t n_keys, int64_t *sink_end,
                          int64_t *window_start)
{
    int64_t v = n_keys;
    if (q->positions) {
        const int64_t p = (int64_t)q->positions[t] + 1;
        v = p < 0 ? 0 : p > n_keys ? n_keys : p;
    }
    const int64_t s = q->n_sink < v ? q->n_sink : v;
    const int64_t w = v - q->n_window > s ? v - q->n_window : s;
    *sink_end = s;
    *window_start = w;
    return v;
}

void skv_forced_apply(const skv_indexer_query *q, int64_t n_keys, int32_t k, int32_t *out_idx,
                      float *out_score)
{
    if (q->n_sink <= 0 && q->n_window <= 0)
        return;
    for (int32_t t = 0; t < q->n_tokens; t++) {
        int32_t *idx = out_idx + (size_t)t * k;
        float *sc = out_score ? out_score + (size_t)t * k : NULL;
        int64_t s, w;
        const int64_t v = skv_forced_bounds(q, t, n_keys, &s, &w);
        const int32_t f = (int32_t)(s + (v - w));
        /* the others, in rank order, to the front; then moved past the forced ones */
        int32_t m = 0;
        for (int32_t j = 0; j < k && m < k - f; j++) {
            const int32_t x = idx[j];
            if (x < 0 || x < s || x >= w)
                continue;
            idx[m] = x;
            if (sc)
                sc[m] = sc[j];
            m++;
        }
        memmove(idx + f, idx, (size_t)m * 4);
        if (sc)
            memmove(sc + f, sc, (size_t)m * 4);
        int32_t j = 0;
        for (int64_t x = 0; x < s; x++)
            idx[j++] = (int32_t)x;
        for (int64_t x = w; x < v; x++)
            idx[j++] = (int32_t)x;
        for (j = 0; sc && j < f; j++)
            sc[j] = INFINITY;
        for (j = f + m; j < k; j++) {
            idx[j] = -1;
            if (sc)
                sc[j] = -INFINITY;
        }
    }
}
