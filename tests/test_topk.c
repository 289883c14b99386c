/* skv_topk_rows against a full sort, at every CPU level and with 1, 2 and 7 threads: random and
 * adversarial rows (heavy ties, NaN, +-inf, +-0, sorted ascending so every element passes
 * the threshold, descending, constant), row lengths, k around the row length, few long rows
 * (split across threads, up to seven ranges merged, some short or empty) and many short ones. */
#include "common.h"

static void fill_row(rng *r, float *x, int64_t n, int kind)
{
    for (int64_t i = 0; i < n; i++) {
        switch (kind) {
        case 0: x[i] = (float)rng_uniform(r, -1, 1); break;
        case 1: x[i] = (float)rng_int(r, -3, 3); break; /* heavy ties */
        case 2: { /* special values */
            const int64_t u = rng_int(r, 0, 12);
            x[i] = u == 0 ? NAN : u == 1 ? -NAN : u == 2 ? INFINITY : u == 3 ? -INFINITY
                   : u == 4 ? 0.0f : u == 5 ? -0.0f : (float)rng_uniform(r, -5, 5);
        } break;
        case 3: x[i] = (float)i; break;            /* ascending: every element is a new best */
        case 4: x[i] = (float)(n - i); break;      /* descending */
        case 5: x[i] = 1.5f; break;                /* constant */
        case 6: x[i] = i % 2 ? NAN : -INFINITY; break;
        default: x[i] = (float)rng_uniform(r, -1e30, 1e30); break;
        }
    }
}

static long runs;

static void run(int64_t n_rows, int64_t n_cols, int32_t k, int kind, int with_lengths, uint64_t seed)
{
    rng r = {seed};
    const int64_t stride = n_cols + (seed % 3);
    float *x = xmalloc((size_t)(n_rows * stride + 1) * 4);
    int64_t *len = xmalloc((size_t)n_rows * 8);
    for (int64_t i = 0; i < n_rows; i++) {
        fill_row(&r, x + i * stride, stride, kind);
        len[i] = with_lengths ? rng_int(&r, 0, n_cols) : n_cols;
    }
    const size_t nk = (size_t)n_rows * k;
    int32_t *want = xmalloc(nk * 4), *got = xmalloc(nk * 4), *got1 = xmalloc(nk * 4), *got2 = xmalloc(nk * 4);
    float *wantv = xmalloc(nk * 4), *gotv = xmalloc(nk * 4), *gotv1 = xmalloc(nk * 4);
    for (int64_t i = 0; i < n_rows; i++)
        sort_topk(x + i * stride, len[i], k, want + i * k, wantv + i * k);
    for (int lv = 0; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_context *c2 = ctx_new(all_levels[lv].mask, 2), *c1 = ctx_new(all_levels[lv].mask, 1);
        skv_context *c7 = ctx_new(all_levels[lv].mask, 7);
        CHECK_OK(skv_topk_rows(c2, x, n_rows, n_cols, stride, with_lengths ? len : NULL, k, got, gotv));
        long bad = 0;
        for (size_t i = 0; i < nk; i++)
            bad += got[i] != want[i] || !same_float(gotv[i], wantv[i]);
        CHECK(bad == 0, "%s rows=%lld cols=%lld k=%d kind=%d: %ld of %zu differ from sorting",
              all_levels[lv].name, (long long)n_rows, (long long)n_cols, k, kind, bad, nk);
        CHECK_OK(skv_topk_rows(c1, x, n_rows, n_cols, stride, with_lengths ? len : NULL, k, got1, gotv1));
        CHECK(memcmp(got, got1, nk * 4) == 0 && memcmp(gotv, gotv1, nk * 4) == 0,
              "%s: 1 and 2 threads differ", all_levels[lv].name);
        CHECK_OK(skv_topk_rows(c7, x, n_rows, n_cols, stride, with_lengths ? len : NULL, k, got1, gotv1));
        CHECK(memcmp(got, got1, nk * 4) == 0 && memcmp(gotv, gotv1, nk * 4) == 0,
              "%s: 7 and 2 threads differ", all_levels[lv].name);
        CHECK_OK(skv_topk_rows(c2, x, n_rows, n_cols, stride, with_lengths ? len : NULL, k, got2, NULL));
        CHECK(memcmp(got, got2, nk * 4) == 0, "%s: rerun without values differs", all_levels[lv].name);
        skv_context_destroy(c1);
        skv_context_destroy(c2);
        skv_context_destroy(c7);
        runs++;
    }
    free(x), free(len), free(want), free(got), free(got1), free(got2), free(wantv), free(gotv), free(gotv1);
}

int main(void)
{
    uint64_t seed = 1;
    for (int kind = 0; kind < 8; kind++) {
        run(1, 1, 1, kind, 0, seed++);
        run(3, 100, 7, kind, 1, seed++);
        run(3, 100, 100, kind, 0, seed++);
        run(3, 100, 150, kind, 1, seed++);
        run(100, 257, 16, kind, 1, seed++);
        run(2, 5000, 1, kind, 0, seed++);
        run(1, 70000, 2048, kind, 0, seed++);   /* one long row: split across threads */
        run(1, 40000, 39999, kind, 0, seed++);
        run(4, 20000, 300, kind, 1, seed++);
        run(1, 120000, 3000, kind, 1, seed++); /* seven ranges of a random length */
        run(1, 120000, 20000, kind, 0, seed++); /* ranges shorter than k */
    }
    run(1, 200000, 2048, 0, 0, seed++);
    run(1, 200000, 5, 3, 0, seed++);
    printf("%ld runs (case x level)\n", runs);
    return test_summary("test_topk");
}
