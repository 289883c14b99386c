/* skv_indexer_scores and skv_indexer_topk at every CPU level against a double-precision
 * reference of the formula, on many shapes and dtypes: scores within a stated tolerance (and
 * DeepGEMM's diff metric), top-k exactly equal to sorting the library's own scores, and as a
 * tie-aware set against the reference. Also: thread-count and rerun determinism, calls from
 * inside a host's OpenMP parallel region, and the internal set form of the top-k (the same
 * indices in ascending order) that MISA-dagger's candidate lists use. */
#include "common.h"
#include "indexer/run.h"

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct shape {
    int32_t T, H, D;
    int64_t L;
    int32_t k;
    int pos_mode; /* 0: all visible, 1: causal prefill chunk, 2: random positions */
    fill_kind fill;
} shape;

typedef struct dtypes { skv_dtype q, k; } dtypes;

static const dtypes all_dtypes[] = {
    {SKV_F32, SKV_F32}, {SKV_BF16, SKV_BF16}, {SKV_FP8_E4M3, SKV_FP8_E4M3},
    {SKV_F32, SKV_FP8_E4M3}, {SKV_BF16, SKV_FP8_E4M3}, {SKV_FP8_E4M3, SKV_BF16},
};
#define N_DTYPES 6

static const char *dname(skv_dtype t)
{
    return t == SKV_F32 ? "f32" : t == SKV_BF16 ? "bf16" : t == SKV_FP8_E4M3 ? "fp8"
           : t == SKV_F16 ? "f16" : t == SKV_Q8_0 ? "q8_0" : "?";
}

/* Scores against the reference: NaN where the reference is NaN, equal infinities, finite
 * values within score_tol; -inf where invisible. */
static void check_scores(const idx_data *d, const float *out, const double *ref, const double *mag,
                         const char *label)
{
    long bad = 0;
    for (int32_t t = 0; t < d->T; t++)
        for (int64_t s = 0; s < d->L; s++) {
            const size_t i = (size_t)t * d->L + s;
            const double r = ref[i];
            int ok;
            if (isnan(r))
                ok = isnan(out[i]);
            else if (isinf(r))
                ok = out[i] == r;
            else
                ok = fabs(out[i] - r) <= score_tol(d, mag[i]);
            if (!ok && bad++ < 3)
                CHECK(ok, "%s: score[%d][%lld] = %.9g, reference %.9g (tol %.3g)", label, t,
                      (long long)s, out[i], r, score_tol(d, mag[i]));
        }
    CHECK(bad == 0, "%s: %ld scores out of tolerance", label, bad);
    const double diff = deepgemm_diff(out, ref, (int64_t)d->T * d->L);
    CHECK(diff < 1e-9, "%s: DeepGEMM diff %.3g", label, diff);
}

/* Order of reference values: NaN lowest. */
static int val_cmp(double a, double b)
{
    const int an = isnan(a), bn = isnan(b);
    if (an || bn)
        return an && bn ? 0 : an ? -1 : 1;
    return a < b ? -1 : a > b;
}

typedef struct refrank { double v; int64_t i; } refrank;

static int refrank_cmp(const void *pa, const void *pb)
{
    const refrank *a = pa, *b = pb;
    const int c = val_cmp(a->v, b->v);
    if (c)
        return -c;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* Two reference scores that may legitimately swap places: equal within their tolerances. */
static int near_tie(const idx_data *d, const double *ref, const double *mag, size_t a, size_t b)
{
    if (isnan(ref[a]) || isnan(ref[b]))
        return isnan(ref[a]) && isnan(ref[b]);
    if (isinf(ref[a]) || isinf(ref[b]))
        return ref[a] == ref[b];
    return fabs(ref[a] - ref[b]) <= score_tol(d, mag[a]) + score_tol(d, mag[b]);
}

/* Top-k of one run: exact against sorting the library's own scores, then tie-aware against
 * the reference (set and order). */
static void check_topk(const idx_data *d, int32_t k, const int32_t *idx, const float *val,
                       const float *own, const double *ref, const double *mag, const char *label)
{
    int32_t *want = xmalloc((size_t)k * 4);
    float *wantv = xmalloc((size_t)k * 4);
    refrank *rr = xmalloc((size_t)(d->L ? d->L : 1) * sizeof *rr);
    char *chosen = xmalloc((size_t)(d->L ? d->L : 1));
    long bad = 0;
    for (int32_t t = 0; t < d->T && bad < 3; t++) {
        const int64_t vis = idx_visible(d, t);
        const int32_t *row = idx + (size_t)t * k;
        const float *rowv = val + (size_t)t * k;
        const size_t base = (size_t)t * d->L;

        /* exact: the library's own scores, sorted */
        sort_topk(own + base, vis, k, want, wantv);
        for (int32_t j = 0; j < k; j++)
            if (row[j] != want[j] || !same_float(rowv[j], wantv[j])) {
                CHECK(0, "%s: t=%d rank %d: got (%d, %g), sorting gives (%d, %g)", label, t, j,
                      row[j], rowv[j], want[j], wantv[j]);
                bad++;
                break;
            }

        /* structure: visible indices, no duplicates, -1 padding */
        const int64_t m = vis < k ? vis : k;
        memset(chosen, 0, (size_t)(d->L ? d->L : 1));
        for (int32_t j = 0; j < k; j++) {
            if (j < m) {
                const int ok = row[j] >= 0 && row[j] < vis && !chosen[row[j]];
                CHECK(ok, "%s: t=%d rank %d index %d (visible %lld)", label, t, j, row[j], (long long)vis);
                if (ok)
                    chosen[row[j]] = 1;
            } else {
                CHECK(row[j] == -1 && rowv[j] == -INFINITY, "%s: t=%d pad %d = %d", label, t, j, row[j]);
            }
        }
        if (m == 0)
            continue;

        /* tie-aware against the reference: the selected set is the best m up to near-ties,
           and rank j holds the reference's rank-j key or one tied with it */
        for (int64_t s = 0; s < vis; s++)
            rr[s] = (refrank){ref[base + s], s};
        qsort(rr, (size_t)vis, sizeof *rr, refrank_cmp);
        const size_t kth = base + rr[m - 1].i;
        for (int64_t s = 0; s < vis; s++) {
            const size_t i = base + s;
            const int c = val_cmp(ref[i], ref[kth]);
            if (chosen[s] && c < 0 && !near_tie(d, ref, mag, i, kth)) {
                CHECK(0, "%s: t=%d selected %lld scores %.9g below the k-th %.9g", label, t,
                      (long long)s, ref[i], ref[kth]);
                bad++;
            }
            if (!chosen[s] && c > 0 && !near_tie(d, ref, mag, i, kth)) {
                CHECK(0, "%s: t=%d unselected %lld scores %.9g above the k-th %.9g", label, t,
                      (long long)s, ref[i], ref[kth]);
                bad++;
            }
        }
        for (int32_t j = 0; j < m; j++)
            if (row[j] != rr[j].i && !near_tie(d, ref, mag, base + row[j], base + rr[j].i)) {
                CHECK(0, "%s: t=%d rank %d is %d (%.9g), reference rank is %lld (%.9g)", label,
                      t, j, row[j], ref[base + row[j]], (long long)rr[j].i, ref[base + rr[j].i]);
                bad++;
                break;
            }
    }
    free(want), free(wantv), free(rr), free(chosen);
}

static long cases_run;

static int cmp_idx(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* The set form against the ranked top-k: the same indices, ascending, then the same -1s. */
static void check_set_form(skv_context *c, const skv_indexer_query *q, const skv_key_block *kb,
                           int32_t k, const int32_t *in_rank_order, const char *label)
{
    const size_t nk = (size_t)q->n_tokens * k;
    int32_t *want = xmalloc(nk * 4), *got = xmalloc(nk * 4);
    memcpy(want, in_rank_order, nk * 4);
    for (int32_t t = 0; t < q->n_tokens; t++) {
        int32_t n = 0;
        while (n < k && want[(size_t)t * k + n] >= 0)
            n++;
        qsort(want + (size_t)t * k, (size_t)n, 4, cmp_idx);
    }
    skv_key_src src;
    CHECK_OK(skv_key_src_from_block(c, kb, &src));
    CHECK_OK(skv_indexer_run_set(c, q, &src, k, got));
    CHECK(memcmp(want, got, nk * 4) == 0, "%s: the set form differs from the ranked top-k", label);
    free(want), free(got);
}

/* One shape and dtype pair at every CPU level, with thread and rerun determinism. */
static void run_case(const shape *sh, dtypes dt, uint64_t seed)
{
    rng r = {seed};
    idx_data d;
    idx_data_make(&d, &r, sh->T, sh->H, sh->D, sh->L, dt.q, dt.k, sh->fill, sh->pos_mode);
    const size_t n = (size_t)d.T * (d.L ? d.L : 1);
    double *ref = xmalloc(n * sizeof *ref), *mag = xmalloc(n * sizeof *mag);
    idx_reference(&d, ref, mag);
    float *sc = xmalloc(n * 4), *sc1 = xmalloc(n * 4);
    const size_t nk = (size_t)d.T * sh->k;
    int32_t *idx = xmalloc(nk * 4), *idx1 = xmalloc(nk * 4), *idx2 = xmalloc(nk * 4);
    float *val = xmalloc(nk * 4), *val1 = xmalloc(nk * 4);
    const skv_indexer_query q = idx_query(&d);
    const skv_key_block kb = idx_keys(&d);

    for (int lv = 0; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        char label[160];
        snprintf(label, sizeof label, "%s T=%d H=%d D=%d L=%lld k=%d q=%s k=%s fill=%d pos=%d",
                 all_levels[lv].name, sh->T, sh->H, sh->D, (long long)sh->L, sh->k, dname(dt.q),
                 dname(dt.k), sh->fill, sh->pos_mode);
        skv_context *c2 = ctx_new(all_levels[lv].mask, 2), *c1 = ctx_new(all_levels[lv].mask, 1);

        CHECK_OK(skv_indexer_scores(c2, &q, &kb, sc));
        check_scores(&d, sc, ref, mag, label);
        CHECK_OK(skv_indexer_topk(c2, &q, &kb, sh->k, idx, val));
        check_topk(&d, sh->k, idx, val, sc, ref, mag, label);

        /* one thread, a rerun, and no score output: bit-identical */
        CHECK_OK(skv_indexer_scores(c1, &q, &kb, sc1));
        CHECK(memcmp(sc, sc1, n * 4) == 0, "%s: scores differ between 1 and 2 threads", label);
        CHECK_OK(skv_indexer_topk(c1, &q, &kb, sh->k, idx1, val1));
        CHECK(memcmp(idx, idx1, nk * 4) == 0 && memcmp(val, val1, nk * 4) == 0,
              "%s: top-k differs between 1 and 2 threads", label);
        CHECK_OK(skv_indexer_topk(c2, &q, &kb, sh->k, idx2, NULL));
        CHECK(memcmp(idx, idx2, nk * 4) == 0, "%s: top-k differs on rerun", label);
        /* three threads share a split block's ranges unevenly: the same bits again */
        skv_context *c3 = ctx_new(all_levels[lv].mask, 3);
        CHECK_OK(skv_indexer_scores(c3, &q, &kb, sc1));
        CHECK(memcmp(sc, sc1, n * 4) == 0, "%s: scores differ between 2 and 3 threads", label);
        CHECK_OK(skv_indexer_topk(c3, &q, &kb, sh->k, idx1, val1));
        CHECK(memcmp(idx, idx1, nk * 4) == 0 && memcmp(val, val1, nk * 4) == 0,
              "%s: top-k differs between 2 and 3 threads", label);
        check_set_form(c3, &q, &kb, sh->k, idx, label);
        skv_context_destroy(c3);
        check_set_form(c1, &q, &kb, sh->k, idx, label);
        check_set_form(c2, &q, &kb, sh->k, idx, label);

        skv_context_destroy(c1);
        skv_context_destroy(c2);
        cases_run++;
    }
    free(ref), free(mag), free(sc), free(sc1), free(idx), free(idx1), free(idx2), free(val), free(val1);
    idx_data_free(&d);
}

/* The workspace bound documented at skv_indexer_topk, for decode (keys split over threads, in
 * rows and in lanes), prefill blocks, small k, more heads than one chunk, at every level. */
typedef struct bound_case { int32_t T, H, D; int64_t L; int32_t k; int di; } bound_case;

static void check_workspace_bound(const bound_case *bc, const level *lv)
{
    rng r = {900 + (uint64_t)bc->H};
    idx_data d;
    idx_data_make(&d, &r, bc->T, bc->H, bc->D, bc->L, all_dtypes[bc->di].q, all_dtypes[bc->di].k,
                  FILL_RANDOM, 2);
    const skv_indexer_query q = idx_query(&d);
    const skv_key_block kb = idx_keys(&d);
    const int nth = 2;
    skv_context *c = ctx_new(lv->mask, nth);
    int32_t *idx = xmalloc((size_t)d.T * bc->k * 4);
    const size_t before = skv_context_memory(c);
    CHECK_OK(skv_indexer_topk(c, &q, &kb, bc->k, idx, NULL));
    const size_t used = skv_context_memory(c) - before, k = (size_t)bc->k;
    const size_t h64 = ((size_t)bc->H + 63) / 64 * 64, D = (size_t)bc->D;
    size_t need = nth * (8 * (3 * k + 272) * 8 + 8 * h64 * (D + 3) * 4 + 256 * D * 4 + 16384);
    if ((bc->T + 7) / 8 < nth)
        need += (size_t)bc->T * nth * (8 * k + 4);
    const size_t bound = (need + need / 4 + 4095) / 4096 * 4096; /* held: grown by 1.25 */
    CHECK(used <= bound, "%s T=%d H=%d D=%d k=%d: workspace %zu above the documented %zu",
          lv->name, bc->T, bc->H, bc->D, bc->k, used, bound);
    free(idx);
    skv_context_destroy(c);
    idx_data_free(&d);
}

/* Calls from inside a host's parallel region: each host thread with its own context gets the
 * same result as a plain call. */
static void run_in_host_region(void)
{
    rng r = {77};
    idx_data d;
    idx_data_make(&d, &r, 3, 16, 32, 5000, SKV_F32, SKV_F32, FILL_RANDOM, 2);
    const skv_indexer_query q = idx_query(&d);
    const skv_key_block kb = idx_keys(&d);
    const int32_t k = 100;
    int32_t *want = xmalloc((size_t)d.T * k * 4);
    skv_context *c = ctx_new(SKV_CPU_ALL, 2);
    CHECK_OK(skv_indexer_topk(c, &q, &kb, k, want, NULL));
    skv_context_destroy(c);
    int bad = 0;
#pragma omp parallel num_threads(2) reduction(+ : bad)
    {
        skv_context *mine = ctx_new(SKV_CPU_ALL, 2);
        int32_t *got = xmalloc((size_t)d.T * k * 4);
        for (int rep = 0; rep < 3; rep++) {
            bad += skv_indexer_topk(mine, &q, &kb, k, got, NULL) != SKV_OK;
            bad += memcmp(got, want, (size_t)d.T * k * 4) != 0;
        }
        free(got);
        skv_context_destroy(mine);
    }
    CHECK(bad == 0, "%d mismatches inside a host parallel region", bad);
    free(want);
    idx_data_free(&d);
}

int main(int argc, char **argv)
{
    /* --quick (used under the sanitizers): everything but the long-context and large
       prefill shapes */
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    uint64_t seed = 1;
    int di = 0;
    /* the H x D x T x L matrix, dtypes rotating */
    static const int32_t Hs[] = {1, 8, 32, 64}, Ds[] = {16, 64, 128}, Ts[] = {1, 7};
    static const int64_t Ls[] = {1, 65, 300};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 2; c++)
                for (int e = 0; e < 3; e++) {
                    const shape sh = {Ts[c], Hs[a], Ds[b], Ls[e], e == 1 ? 2048 : 64, (int)(seed % 3), FILL_RANDOM};
                    run_case(&sh, all_dtypes[di++ % N_DTYPES], seed++);
                }
    /* decode with few heads on fp8 keys: converted straight into lanes even for one token
       (bf16 queries; fp8 ones), short, split across threads, odd head counts */
    static const int32_t Hl[] = {1, 5, 8}, Dl[] = {32, 128};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++) {
            run_case(&(shape){1, Hl[a], Dl[b], 300, 64, 0, FILL_RANDOM}, all_dtypes[4], seed++);
            run_case(&(shape){2, Hl[a], Dl[b], 5000, 300, 2, FILL_ODD_SCALES}, all_dtypes[2], seed++);
        }
    /* L around k = 2048, every dtype */
    static const int64_t Lk[] = {2047, 2048, 2049, 4097};
    for (int e = 0; e < 4; e++)
        for (int t = 0; t < N_DTYPES; t++) {
            const shape sh = {e % 2 ? 7 : 1, 8, 16, Lk[e], 2048, 2, FILL_RANDOM};
            run_case(&sh, all_dtypes[t], seed++);
        }
    /* long contexts */
    for (int t = 0; t < 3 && !quick; t++) {
        const shape sh = {3, 8, 16, 70000, 2048, 2, FILL_RANDOM};
        run_case(&sh, all_dtypes[t], seed++);
    }
    if (!quick) {
        run_case(&(shape){1, 64, 128, 70000, 2048, 0, FILL_RANDOM}, all_dtypes[0], seed++);
        run_case(&(shape){1, 64, 128, 70000, 2048, 0, FILL_RANDOM}, all_dtypes[2], seed++);
    }
    /* prefill: a causal chunk from position 0, and a chunk at the end of a longer context */
    run_case(&(shape){300, 32, 64, 300, 64, 1, FILL_RANDOM}, all_dtypes[1], seed++);
    if (!quick) {
        run_case(&(shape){64, 64, 128, 4097, 2048, 1, FILL_RANDOM}, all_dtypes[0], seed++);
        run_case(&(shape){64, 64, 128, 4097, 2048, 1, FILL_RANDOM}, all_dtypes[2], seed++);
    }
    /* ragged: odd head_dim, heads that do not fill a vector, more heads than one chunk */
    for (int t = 0; t < N_DTYPES; t++) {
        run_case(&(shape){5, 33, 37, 1000, 100, 2, FILL_RANDOM}, all_dtypes[t], seed++);
        run_case(&(shape){2, 100, 129, 700, 50, 2, FILL_RANDOM}, all_dtypes[t], seed++);
    }
    /* ties, -inf-heavy rows, NaN and Inf */
    for (int t = 0; t < N_DTYPES; t++) {
        run_case(&(shape){3, 8, 16, 500, 64, 2, FILL_EQUAL_KEYS}, all_dtypes[t], seed++);
        run_case(&(shape){3, 16, 32, 500, 300, 2, FILL_NEG_INF}, all_dtypes[t], seed++);
        run_case(&(shape){3, 16, 32, 500, 300, 2, FILL_NAN_INF}, all_dtypes[t], seed++);
        /* small k over many keys: the threshold filter sees the special values too */
        run_case(&(shape){2, 16, 32, 3000, 16, 2, FILL_NEG_INF}, all_dtypes[t], seed++);
        run_case(&(shape){2, 16, 32, 3000, 16, 2, FILL_NAN_INF}, all_dtypes[t], seed++);
        run_case(&(shape){2, 8, 16, 3000, 40, 0, FILL_EQUAL_KEYS}, all_dtypes[t], seed++);
        run_case(&(shape){3, 16, 32, 2000, 64, 2, FILL_ODD_SCALES}, all_dtypes[t], seed++);
    }
    /* F16 on either side and Q8_0 keys (head_dim a multiple of 32): every level against the
       double reference on the dequantised values, decode and prefill, ragged heads and key
       counts, odd F16 dims, ties, NaN/Inf */
    static const dtypes new_dtypes[] = {
        {SKV_F16, SKV_F16}, {SKV_F32, SKV_F16}, {SKV_BF16, SKV_F16}, {SKV_F16, SKV_BF16},
        {SKV_F16, SKV_FP8_E4M3}, {SKV_F32, SKV_Q8_0}, {SKV_F16, SKV_Q8_0}, {SKV_BF16, SKV_Q8_0},
        {SKV_FP8_E4M3, SKV_Q8_0},
    };
    for (int t = 0; t < 9; t++) {
        const int q8 = new_dtypes[t].k == SKV_Q8_0;
        run_case(&(shape){1, 64, 128, 3001, 2048, 0, FILL_RANDOM}, new_dtypes[t], seed++);
        run_case(&(shape){7, 8, 32, 300, 64, 1, FILL_RANDOM}, new_dtypes[t], seed++);
        run_case(&(shape){2, 33, q8 ? 96 : 37, 1000, 100, 2, FILL_RANDOM}, new_dtypes[t], seed++);
        run_case(&(shape){1, 5, 64, 2049, 2048, 2, FILL_RANDOM}, new_dtypes[t], seed++);
        run_case(&(shape){3, 8, 32, 500, 64, 2, FILL_EQUAL_KEYS}, new_dtypes[t], seed++);
        run_case(&(shape){3, 16, 32, 500, 300, 2, FILL_NAN_INF}, new_dtypes[t], seed++);
        run_case(&(shape){2, 16, 32, 3000, 16, 2, FILL_NEG_INF}, new_dtypes[t], seed++);
    }
    run_in_host_region();
    static const bound_case bcs[] = {
        {1, 64, 128, 8192, 2048, 2}, {1, 8, 128, 8192, 2048, 2}, {3, 8, 64, 6000, 300, 4},
        {64, 64, 128, 4096, 2048, 1}, {16, 16, 32, 3000, 16, 0}, {1, 5, 96, 3000, 5000, 3},
        {2, 100, 64, 3000, 64, 0},
    };
    for (size_t i = 0; i < sizeof bcs / sizeof bcs[0]; i++)
        for (int lv = 0; lv < N_LEVELS; lv++)
            if (level_available(&all_levels[lv]))
                check_workspace_bound(&bcs[i], &all_levels[lv]);
    printf("%ld cases (shape x dtype x level)\n", cases_run);
    return test_summary("test_indexer");
}
