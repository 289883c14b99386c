/* Test harness shared by the unit tests: checks that count and report, a seeded RNG, contexts
 * at each CPU level, indexer test data with a double-precision reference, and an independent
 * sort-based top-k. Header-only; each test is one program. */
#ifndef SKV_TEST_COMMON_H
#define SKV_TEST_COMMON_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparsekv/sparsekv.h"

/* ---- checks ------------------------------------------------------------------------------ */

static long test_checks, test_failures;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        test_checks++;                                                                        \
        if (!(cond)) {                                                                        \
            test_failures++;                                                                  \
            if (test_failures <= 50) {                                                        \
                fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
                fprintf(stderr, __VA_ARGS__);                                                 \
                fputc('\n', stderr);                                                          \
            }                                                                                 \
        }                                                                                     \
    } while (0)

#define CHECK_OK(expr)                                                                        \
    do {                                                                                      \
        skv_status s_ = (expr);                                                               \
        CHECK(s_ == SKV_OK, "%s", skv_status_string(s_));                                     \
    } while (0)

#define CHECK_STATUS(expr, want)                                                              \
    do {                                                                                      \
        skv_status s_ = (expr);                                                               \
        CHECK(s_ == (want), "got %d (%s), want %d", s_, skv_status_string(s_), (int)(want));  \
    } while (0)

static int test_summary(const char *name)
{
    printf("%s: %ld checks, %ld failures\n", name, test_checks, test_failures);
    return test_failures ? 1 : 0;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "test: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

/* ---- RNG (splitmix64) ---------------------------------------------------------------------- */

typedef struct rng { uint64_t s; } rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [lo, hi) */
static double rng_uniform(rng *r, double lo, double hi)
{
    return lo + (hi - lo) * (double)(rng_next(r) >> 11) * 0x1p-53;
}

/* uniform integer in [lo, hi] */
static int64_t rng_int(rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

/* ---- contexts at each CPU level ----------------------------------------------------------- */

typedef struct level { const char *name; uint32_t mask; } level;

static const level all_levels[] = {
    {"scalar", 0},
    {"avx2", SKV_CPU_AVX2},
    {"avx512", SKV_CPU_AVX2 | SKV_CPU_AVX512},
    {"avx512bf16", SKV_CPU_AVX2 | SKV_CPU_AVX512 | SKV_CPU_AVX512BF16},
    {"neon", SKV_CPU_NEON},
};
#define N_LEVELS 5

/* Whether this CPU runs the level; prints a skip line once per level otherwise. */
static int level_available(const level *lv)
{
    const int ok = (skv_cpu_flags() & lv->mask) == lv->mask;
    static int said[N_LEVELS];
    if (!ok && !said[lv - all_levels]) {
        said[lv - all_levels] = 1;
        printf("skip: this CPU has no %s\n", lv->name);
    }
    return ok;
}

static skv_context *ctx_new(uint32_t mask, int threads)
{
    skv_context_params p;
    skv_context_params_init(&p);
    p.cpu_mask = mask;
    p.n_threads = threads;
    skv_context *ctx = NULL;
    if (skv_context_create(&p, &ctx) != SKV_OK) {
        fprintf(stderr, "test: cannot create a context\n");
        exit(2);
    }
    return ctx;
}

/* ---- score ordering, independent of the library ------------------------------------------ */

/* Larger is better: NaN lowest, then -inf ... +inf; -0 == +0. */
static int score_cmp(float a, float b)
{
    const int an = isnan(a), bn = isnan(b);
    if (an || bn)
        return an && bn ? 0 : an ? -1 : 1;
    return a < b ? -1 : a > b ? 1 : 0;
}

typedef struct ranked { float v; int32_t i; } ranked;

static int ranked_cmp(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    const int c = score_cmp(a->v, b->v);
    if (c)
        return -c;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* Top-k of s[0..n) by full sort: descending, ties to the lower index, -1 padding. */
static void sort_topk(const float *s, int64_t n, int32_t k, int32_t *out_idx, float *out_val)
{
    ranked *r = xmalloc((size_t)(n ? n : 1) * sizeof *r);
    for (int64_t i = 0; i < n; i++) {
        r[i].v = s[i];
        r[i].i = (int32_t)i;
    }
    qsort(r, (size_t)n, sizeof *r, ranked_cmp);
    for (int32_t j = 0; j < k; j++) {
        out_idx[j] = j < n ? r[j].i : -1;
        if (out_val)
            out_val[j] = j < n ? r[j].v : -INFINITY;
    }
    free(r);
}

/* Bitwise float equality, treating every NaN as equal and -0 == +0. */
static int same_float(float a, float b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return a == b;
}

/* DeepGEMM's diff = 1 - 2 sum(xy) / sum(x^2 + y^2), over pairs where both are finite. */
static double deepgemm_diff(const float *x, const double *y, int64_t n)
{
    double sxy = 0, sxx = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]))
            continue;
        sxy += (double)x[i] * y[i];
        sxx += (double)x[i] * x[i] + y[i] * y[i];
    }
    return sxx == 0 ? 0 : 1 - 2 * sxy / sxx;
}

/* ---- indexer data ------------------------------------------------------------------------- */

typedef enum { FILL_RANDOM, FILL_EQUAL_KEYS, FILL_NEG_INF, FILL_NAN_INF, FILL_ODD_SCALES } fill_kind;

typedef struct idx_data {
    int32_t T, H, D;
    int64_t L;
    skv_dtype qt, kt;
    float *q32, *w, *k32;   /* values before narrowing */
    void *qd, *kd;          /* in qt / kt */
    float *qs, *ks;         /* fp8 scales, or NULL */
    int32_t *pos;           /* [T], or NULL: all visible */
} idx_data;

static size_t dsize(skv_dtype t) { return skv_dtype_size(t); }

static void narrow(skv_dtype t, const float *src, int64_t rows, int32_t cols, void **out,
                   float **scales)
{
    *scales = NULL;
    if (t == SKV_F32) {
        *out = xmalloc((size_t)rows * cols * 4);
        memcpy(*out, src, (size_t)rows * cols * 4);
    } else if (t == SKV_BF16 || t == SKV_F16) {
        *out = xmalloc((size_t)rows * cols * 2);
        skv_convert(t, *out, SKV_F32, src, rows * cols);
    } else if (t == SKV_Q8_0) {
        *out = xmalloc((size_t)(rows ? rows : 1) * (size_t)(cols / 32) * 34);
        skv_quantize_q8_0(src, rows, cols, cols, *out);
    } else {
        *out = xmalloc((size_t)rows * cols);
        *scales = xmalloc((size_t)(rows ? rows : 1) * 4);
        skv_quantize_fp8(src, rows, cols, cols, 0, *out, *scales);
    }
}

/* Random data; positions causal at the end of the keys (prefill chunk), random, or NULL. */
static void idx_data_make(idx_data *d, rng *r, int32_t T, int32_t H, int32_t D, int64_t L,
                          skv_dtype qt, skv_dtype kt, fill_kind fill, int pos_mode)
{
    memset(d, 0, sizeof *d);
    d->T = T, d->H = H, d->D = D, d->L = L, d->qt = qt, d->kt = kt;
    d->q32 = xmalloc((size_t)T * H * D * 4);
    d->w = xmalloc((size_t)T * H * 4);
    d->k32 = xmalloc((size_t)(L ? L : 1) * D * 4);
    for (int64_t i = 0; i < (int64_t)T * H * D; i++)
        d->q32[i] = (float)rng_uniform(r, -1, 1);
    for (int64_t i = 0; i < (int64_t)T * H; i++)
        d->w[i] = (float)rng_uniform(r, -1, 1);
    for (int64_t i = 0; i < L * D; i++)
        d->k32[i] = (float)rng_uniform(r, -1, 1);
    if (fill == FILL_EQUAL_KEYS) {
        for (int64_t s = 1; s < L; s++)
            memcpy(d->k32 + s * D, d->k32, (size_t)D * 4);
    } else if (fill == FILL_NEG_INF || fill == FILL_NAN_INF) {
        /* Positive queries and weights: a key holding +inf scores +inf (or -inf with the
           weights negated in FILL_NEG_INF); NaN keys score NaN; one token's q has a NaN. */
        for (int64_t i = 0; i < (int64_t)T * H * D; i++)
            d->q32[i] = (float)rng_uniform(r, 0.01, 1);
        for (int64_t i = 0; i < (int64_t)T * H; i++)
            d->w[i] = (float)(fill == FILL_NEG_INF ? -rng_uniform(r, 0.1, 1) : rng_uniform(r, 0.1, 1));
        for (int64_t s = 0; s < L; s++) {
            const int64_t u = rng_int(r, 0, 9);
            if (u < 5)
                d->k32[s * D + rng_int(r, 0, D - 1)] = INFINITY;
            else if (u == 5 && fill == FILL_NAN_INF)
                d->k32[s * D + rng_int(r, 0, D - 1)] = NAN;
        }
        if (fill == FILL_NAN_INF && T > 1)
            d->q32[(size_t)(T - 1) * H * D + rng_int(r, 0, (int64_t)H * D - 1)] = NAN;
    }
    narrow(qt, d->q32, (int64_t)T * H, D, &d->qd, &d->qs);
    narrow(kt, d->k32, L, D, &d->kd, &d->ks);
    if (fill == FILL_ODD_SCALES) { /* fp8 scales a quantiser never makes: negative and zero */
        for (int64_t i = 0; d->qs && i < (int64_t)T * H; i++)
            d->qs[i] *= rng_int(r, 0, 3) == 0 ? -1.0f : rng_int(r, 0, 5) == 0 ? 0.0f : 1.0f;
        for (int64_t i = 0; d->ks && i < L; i++)
            d->ks[i] *= rng_int(r, 0, 3) == 0 ? -1.0f : rng_int(r, 0, 5) == 0 ? 0.0f : 1.0f;
    }
    if (pos_mode) {
        d->pos = xmalloc((size_t)T * 4);
        for (int32_t t = 0; t < T; t++)
            d->pos[t] = pos_mode == 1 ? (int32_t)(L - T + t)
                                      : (int32_t)rng_int(r, -2, L + 2);
    }
}

static void idx_data_free(idx_data *d)
{
    free(d->q32), free(d->w), free(d->k32), free(d->qd), free(d->kd), free(d->qs), free(d->ks);
    free(d->pos);
    memset(d, 0, sizeof *d);
}

static skv_indexer_query idx_query(const idx_data *d)
{
    skv_indexer_query q = {d->T, d->H, d->D, d->qt, d->qd, d->qs, d->w, d->pos};
    return q;
}

static skv_key_block idx_keys(const idx_data *d)
{
    skv_key_block k = {d->L, d->D, d->kt, d->kd, d->ks};
    return k;
}

/* The value the library sees for element i of a narrowed array (dequantised, in double). */
static double elem(skv_dtype t, const void *p, const float *scales, int64_t i, int32_t row_len)
{
    switch (t) {
    case SKV_F32: return ((const float *)p)[i];
    case SKV_BF16: return skv_bf16_to_f32(((const uint16_t *)p)[i]);
    case SKV_F16: return skv_f16_to_f32(((const uint16_t *)p)[i]);
    case SKV_FP8_E4M3: return (double)skv_fp8_to_f32(((const uint8_t *)p)[i]) * scales[i / row_len];
    case SKV_Q8_0: { /* block b of row r: f16 scale, then 32 int8 codes */
        const uint8_t *blk = (const uint8_t *)p + ((size_t)(i / row_len) * (size_t)(row_len / 32) +
                                                   (size_t)(i % row_len / 32)) * 34;
        return (double)(int8_t)blk[2 + i % 32] * skv_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
    }
    default: return 0;
    }
}

static int64_t idx_visible(const idx_data *d, int32_t t)
{
    if (!d->pos)
        return d->L;
    const int64_t v = (int64_t)d->pos[t] + 1;
    return v < 0 ? 0 : v > d->L ? d->L : v;
}

/* ref[t][s] in double, and mag[t][s] = sum_h |w| * sum_d |q k| (error scale). Invisible keys:
 * ref = -inf, mag = 0. */
static void idx_reference(const idx_data *d, double *ref, double *mag)
{
    const int32_t H = d->H, D = d->D;
    double *kv = xmalloc((size_t)(d->L ? d->L : 1) * D * sizeof *kv);
    double *qv = xmalloc((size_t)H * D * sizeof *qv);
    for (int64_t i = 0; i < d->L * D; i++)
        kv[i] = elem(d->kt, d->kd, d->ks, i, D);
    for (int32_t t = 0; t < d->T; t++) {
        for (int64_t i = 0; i < (int64_t)H * D; i++)
            qv[i] = elem(d->qt, d->qd, d->qs, (int64_t)t * H * D + i, D);
        const int64_t vis = idx_visible(d, t);
        for (int64_t s = 0; s < d->L; s++) {
            double r = -INFINITY, m = 0;
            if (s < vis) {
                r = 0;
                for (int32_t h = 0; h < H; h++) {
                    double dot = 0, adot = 0;
                    for (int32_t dd = 0; dd < D; dd++) {
                        dot += qv[h * D + dd] * kv[s * D + dd];
                        adot += fabs(qv[h * D + dd] * kv[s * D + dd]);
                    }
                    const double relu = dot > 0 || isnan(dot) ? dot : 0;
                    r += d->w[t * H + h] * relu;
                    m += fabs(d->w[t * H + h]) * adot; /* adot holds |q k| with scales */
                }
            }
            ref[t * d->L + s] = r;
            mag[t * d->L + s] = m;
        }
    }
    free(kv);
    free(qv);
}

/* Tolerance of one f32 score against the double reference: f32 rounding of D products summed,
 * scaled, and H weighted terms summed, with a safety factor. */
static double score_tol(const idx_data *d, double mag)
{
    return 4.0 * (d->D + d->H + 8) * 0x1p-24 * mag + 1e-30;
}

#endif
