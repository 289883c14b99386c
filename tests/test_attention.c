/* Sparse attention: skv_sparse_attention at every CPU level against the double-precision
 * reference and against this file's own double computation (which also checks the reference);
 * gathered selections against dense attention restricted to the selected tokens; partial
 * results merged against the whole; determinism across thread counts and reruns; NaN, infinity
 * and empty-list semantics; bad arguments; allocation failure at every allocation.
 *
 * Tolerance of one output column (t, h, c), from f32 error analysis with margin (u = 2^-24):
 *   |out - exact| <= wmag * (2 * ds + 8 u (n + 16))
 * where wmag = max_c sum_i p_i |v_ic| (the softmax-weighted magnitude of v), n the rows used,
 * and ds = 4 u (k_dim + 4) max_i scale sum_d |q_d k_id| bounds a score's error: a score error
 * moves a weight by at most twice itself relative, and summing n weighted rows (plus the
 * segment merges and exp's few ulps) adds the second term. */
#include "common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define U 0x1p-24

/* ---- test data ---------------------------------------------------------------------------- */

typedef struct shape {
    int32_t T, Hq, Hkv, kd, vd;
    skv_dtype dt;
    int causal;
    int64_t n_rows;
    const int32_t *lens; /* list lengths drawn from here (n_lens of them) */
    int n_lens;
    int share;           /* 1: every list of a token starts at the same row */
    float scale;         /* 0: 1/sqrt(kd) */
} shape;

typedef struct attn_data {
    skv_attn_batch b;
    float *qf, *kf, *vf; /* the values the library sees, as f32 */
    void *q, *k, *v;
    int32_t *qpos, *kpos, *len;
    int64_t *start;
} attn_data;

static void *to_dtype(skv_dtype dt, float *x, int64_t n)
{
    if (dt == SKV_F32) {
        float *d = xmalloc((size_t)n * 4);
        memcpy(d, x, (size_t)n * 4);
        return d;
    }
    uint16_t *d = xmalloc((size_t)n * 2);
    for (int64_t i = 0; i < n; i++) {
        d[i] = skv_f32_to_bf16(x[i]);
        x[i] = skv_bf16_to_f32(d[i]); /* the f32 view holds what the library sees */
    }
    return d;
}

static void data_free(attn_data *d)
{
    free(d->qf), free(d->kf), free(d->vf), free(d->q), free(d->k), free(d->v);
    free(d->qpos), free(d->kpos), free(d->len), free(d->start);
    memset(d, 0, sizeof *d);
}

/* Narrowed copies of qf, kf, vf, and the batch pointing at everything. */
static void data_finish(attn_data *d, const shape *s)
{
    d->q = to_dtype(s->dt, d->qf, (int64_t)s->T * s->Hq * s->kd);
    d->k = to_dtype(s->dt, d->kf, s->n_rows * s->kd);
    d->v = to_dtype(s->dt, d->vf, s->n_rows * s->vd);
    skv_attn_batch *b = &d->b;
    memset(b, 0, sizeof *b);
    b->struct_size = sizeof *b;
    b->n_tokens = s->T, b->n_q_heads = s->Hq, b->n_kv_heads = s->Hkv;
    b->k_dim = s->kd, b->v_dim = s->vd, b->dtype = s->dt;
    b->scale = s->scale != 0 ? s->scale : 1.0f / sqrtf((float)s->kd);
    b->causal = s->causal;
    b->q = d->q, b->q_pos = d->qpos, b->n_rows = s->n_rows, b->k = d->k, b->v = d->v;
    b->k_pos = d->kpos, b->list_start = d->start, b->list_len = d->len;
}

/* Random values in [-1, 1); positions 0 .. n_rows-1 shuffled; each token's position puts some
 * of its rows in the future (token 0 sees every row, a last token of several sees none). */
static void data_make(attn_data *d, rng *r, const shape *s)
{
    memset(d, 0, sizeof *d);
    const int64_t nq = (int64_t)s->T * s->Hq * s->kd, R = s->n_rows;
    d->qf = xmalloc((size_t)(nq ? nq : 1) * 4);
    d->kf = xmalloc((size_t)(R ? R : 1) * s->kd * 4);
    d->vf = xmalloc((size_t)(R ? R : 1) * s->vd * 4);
    for (int64_t i = 0; i < nq; i++)
        d->qf[i] = (float)rng_uniform(r, -1, 1);
    for (int64_t i = 0; i < R * s->kd; i++)
        d->kf[i] = (float)rng_uniform(r, -1, 1);
    for (int64_t i = 0; i < R * s->vd; i++)
        d->vf[i] = (float)rng_uniform(r, -1, 1);
    d->kpos = xmalloc((size_t)(R ? R : 1) * 4);
    for (int64_t i = 0; i < R; i++)
        d->kpos[i] = (int32_t)i;
    for (int64_t i = R - 1; i > 0; i--) {
        const int64_t j = rng_int(r, 0, i);
        const int32_t x = d->kpos[i];
        d->kpos[i] = d->kpos[j], d->kpos[j] = x;
    }
    d->qpos = xmalloc((size_t)(s->T ? s->T : 1) * 4);
    for (int32_t t = 0; t < s->T; t++)
        d->qpos[t] = t == 0                   ? (int32_t)R
                     : t == s->T - 1 && s->T > 2 ? -1
                                                 : (int32_t)rng_int(r, 0, R);
    const int64_t nl = (int64_t)s->T * s->Hkv;
    d->len = xmalloc((size_t)(nl ? nl : 1) * 4);
    d->start = xmalloc((size_t)(nl ? nl : 1) * 8);
    for (int64_t l = 0; l < nl; l++) {
        const int32_t want = s->lens[rng_int(r, 0, s->n_lens - 1)];
        d->len[l] = want <= R ? want : (int32_t)R;
        d->start[l] = rng_int(r, 0, R - d->len[l]);
        if (s->share && l % s->Hkv) {
            d->len[l] = d->len[l - l % s->Hkv];
            d->start[l] = d->start[l - l % s->Hkv];
        }
    }
    data_finish(d, s);
}

/* ---- this file's own double computation --------------------------------------------------- */

typedef struct expect {
    double *o, *mag; /* [v_dim]: the output, sum_i p_i |v_ic| / sum_i p_i */
    double m, lse, smag;
    int64_t n;
    int bad;   /* a NaN or +inf score */
} expect;

static void expect_head(const attn_data *d, int32_t t, int32_t h, expect *e)
{
    const skv_attn_batch *b = &d->b;
    const int32_t g = h / (b->n_q_heads / b->n_kv_heads);
    const int64_t l = (int64_t)t * b->n_kv_heads + g;
    const int64_t r0 = b->list_start[l], r1 = r0 + b->list_len[l];
    const float *q = d->qf + ((size_t)t * b->n_q_heads + h) * b->k_dim;
    double *w = xmalloc((size_t)(r1 - r0 + 1) * sizeof *w);
    e->m = -INFINITY, e->smag = 0, e->n = 0, e->bad = 0;
    for (int64_t r = r0; r < r1; r++) {
        w[r - r0] = NAN;
        if (b->causal && d->kpos[r] > d->qpos[t])
            continue;
        double dot = 0, adot = 0;
        for (int32_t i = 0; i < b->k_dim; i++) {
            dot += (double)q[i] * d->kf[r * b->k_dim + i];
            adot += fabs((double)q[i] * d->kf[r * b->k_dim + i]);
        }
        w[r - r0] = dot * b->scale;
        e->smag = fmax(e->smag, adot * fabs(b->scale));
        e->bad |= isnan(w[r - r0]) || w[r - r0] == INFINITY;
        e->m = fmax(e->m, w[r - r0]);
        e->n++;
    }
    double l_sum = 0;
    for (int32_t c = 0; c < b->v_dim; c++)
        e->o[c] = e->mag[c] = 0;
    if (!e->bad && e->m > -INFINITY)
        for (int64_t r = r0; r < r1; r++) {
            if (isnan(w[r - r0]))
                continue;
            const double p = exp(w[r - r0] - e->m);
            l_sum += p;
            for (int32_t c = 0; c < b->v_dim; c++) {
                e->o[c] += p * d->vf[r * b->v_dim + c];
                e->mag[c] += p * fabs(d->vf[r * b->v_dim + c]);
            }
        }
    if (l_sum > 0) {
        for (int32_t c = 0; c < b->v_dim; c++) {
            e->o[c] /= l_sum;
            e->mag[c] /= l_sum;
        }
        e->lse = e->m + log(l_sum);
    } else {
        e->lse = e->m;
    }
    free(w);
}

/* Tolerance of a column whose softmax-weighted magnitude of v is wmag. */
static double out_tol(const skv_attn_batch *b, const expect *e, double wmag)
{
    const double ds = 4 * U * (b->k_dim + 4) * e->smag;
    return wmag * (2 * ds + 8 * U * (e->n + 16)) + 1e-30;
}

/* Checks out/max/lse of every (t, h) against the expectation; `tight` for the reference (f32
 * rounding of double results only). Returns the number of mismatching heads. */
static long compare(const attn_data *d, const float *out, const float *mx, const float *lse,
                    int tight, const char *what)
{
    const skv_attn_batch *b = &d->b;
    expect e;
    e.o = xmalloc((size_t)b->v_dim * sizeof *e.o);
    e.mag = xmalloc((size_t)b->v_dim * sizeof *e.mag);
    long bad_heads = 0;
    for (int32_t t = 0; t < b->n_tokens; t++)
        for (int32_t h = 0; h < b->n_q_heads; h++) {
            expect_head(d, t, h, &e);
            const size_t th = (size_t)t * b->n_q_heads + h;
            const float *o = out + th * b->v_dim;
            const double ds = tight ? 1e-6 * (fabs(e.m) + e.smag)
                                    : 4 * U * (b->k_dim + 4) * e.smag + 2 * U * fabs(e.m);
            int ok = 1;
            if (e.bad) {
                for (int32_t c = 0; c < b->v_dim; c++)
                    ok &= isnan(o[c]) != 0;
                ok &= isnan(mx[th]) && isnan(lse[th]);
            } else if (e.m == -INFINITY) {
                for (int32_t c = 0; c < b->v_dim; c++)
                    ok &= o[c] == 0.0f;
                ok &= mx[th] == -INFINITY && lse[th] == -INFINITY;
            } else {
                /* a non-finite expected column (an infinity in v) must be non-finite */
                double worst = 0;
                for (int32_t c = 0; c < b->v_dim; c++) {
                    if (!isfinite(e.o[c])) {
                        ok &= !isfinite(o[c]);
                        continue;
                    }
                    const double tol = tight ? 1e-6 * e.mag[c] + 1e-30 : out_tol(b, &e, e.mag[c]);
                    const double err = fabs(o[c] - e.o[c]) / tol;
                    worst = err > worst || err != err ? err : worst;
                }
                ok &= worst <= 1.0;
                ok &= fabs(mx[th] - e.m) <= ds;
                ok &= fabs(lse[th] - e.lse) <= ds + 8 * U * (e.n + 16) + 2 * U * fabs(e.lse);
                if (!ok && bad_heads < 3)
                    fprintf(stderr,
                            "  %s t=%d h=%d: err/tol %.3g, max %.9g vs %.9g, lse %.9g vs %.9g, "
                            "n=%lld\n",
                            what, t, h, worst, mx[th], e.m, lse[th], e.lse, (long long)e.n);
            }
            bad_heads += !ok;
        }
    free(e.o), free(e.mag);
    return bad_heads;
}

typedef struct result {
    float *out, *mx, *lse;
    size_t n_out, n_th;
} result;

static void result_alloc(result *r, const skv_attn_batch *b)
{
    r->n_th = (size_t)b->n_tokens * b->n_q_heads;
    r->n_out = r->n_th * b->v_dim;
    r->out = xmalloc((r->n_out ? r->n_out : 1) * 4);
    r->mx = xmalloc((r->n_th ? r->n_th : 1) * 4);
    r->lse = xmalloc((r->n_th ? r->n_th : 1) * 4);
    memset(r->out, 0x7f, r->n_out * 4); /* unwritten outputs show */
}

static void result_free(result *r) { free(r->out), free(r->mx), free(r->lse); }

static int same_result(const result *a, const result *b)
{
    return !memcmp(a->out, b->out, a->n_out * 4) && !memcmp(a->mx, b->mx, a->n_th * 4) &&
           !memcmp(a->lse, b->lse, a->n_th * 4);
}

/* ---- accuracy at every level -------------------------------------------------------------- */

static const int32_t LENS_ALL[] = {0, 1, 15, 16, 17, 300, 2048};
static const int32_t LENS_SHORT[] = {0, 1, 15, 16, 17, 33, 300};
static const int32_t LENS_LONG[] = {2048, 3000, 1, 17};

static void run_shape(const shape *s, uint64_t seed, const char *name)
{
    rng r = {seed};
    attn_data d;
    data_make(&d, &r, s);
    result ref;
    result_alloc(&ref, &d.b);
    CHECK_OK(skv_sparse_attention_reference(&d.b, ref.out, ref.mx, ref.lse));
    CHECK(compare(&d, ref.out, ref.mx, ref.lse, 1, "reference") == 0, "%s: reference", name);
    for (int lv = 0; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_context *ctx = ctx_new(all_levels[lv].mask, 2);
        result got;
        result_alloc(&got, &d.b);
        CHECK_OK(skv_sparse_attention(ctx, &d.b, got.out, got.mx, got.lse));
        CHECK(compare(&d, got.out, got.mx, got.lse, 0, all_levels[lv].name) == 0, "%s at %s", name,
              all_levels[lv].name);
        /* NULL max and lse: the same output */
        result again;
        result_alloc(&again, &d.b);
        CHECK_OK(skv_sparse_attention(ctx, &d.b, again.out, NULL, NULL));
        CHECK(!memcmp(again.out, got.out, got.n_out * 4), "%s at %s: NULL max/lse changed out",
              name, all_levels[lv].name);
        result_free(&again);
        result_free(&got);
        skv_context_destroy(ctx);
    }
    result_free(&ref);
    data_free(&d);
}

static void test_shapes(void)
{
    static const int32_t dims[][2] = {{1, 1}, {7, 7}, {64, 64}, {128, 128}, {64, 7}, {7, 128},
                                      {128, 1}, {1, 64}, {33, 100}};
    static const int32_t groups[][2] = {{2, 2}, {4, 2}, {8, 2}, {16, 2}, {3, 3}, {8, 1}};
    uint64_t seed = 100;
    char name[160];
    for (int dt = 0; dt < 2; dt++)
        for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++)
            for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
                const int causal = (int)((gi + di) % 2);
                const shape s = {.T = 3, .Hq = groups[gi][0], .Hkv = groups[gi][1],
                                 .kd = dims[di][0], .vd = dims[di][1],
                                 .dt = dt ? SKV_BF16 : SKV_F32, .causal = causal, .n_rows = 700,
                                 .lens = LENS_SHORT, .n_lens = 7, .share = (int)(di % 3 == 0)};
                snprintf(name, sizeof name, "%s Hq%d Hkv%d k%d v%d causal%d", dt ? "bf16" : "f32",
                         s.Hq, s.Hkv, s.kd, s.vd, causal);
                run_shape(&s, seed++, name);
            }
    /* every list length at once, long lists (segments), sharper softmax */
    for (int dt = 0; dt < 2; dt++) {
        const skv_dtype t = dt ? SKV_BF16 : SKV_F32;
        const shape all = {.T = 2, .Hq = 8, .Hkv = 2, .kd = 128, .vd = 128, .dt = t, .causal = 1,
                           .n_rows = 2500, .lens = LENS_ALL, .n_lens = 7};
        run_shape(&all, seed++, dt ? "bf16 all lengths" : "f32 all lengths");
        const shape lng = {.T = 2, .Hq = 4, .Hkv = 1, .kd = 64, .vd = 48, .dt = t, .causal = 1,
                           .n_rows = 3000, .lens = LENS_LONG, .n_lens = 4, .scale = 0.5f};
        run_shape(&lng, seed++, dt ? "bf16 long, sharp" : "f32 long, sharp");
        const shape dsa = {.T = 1, .Hq = 160, .Hkv = 1, .kd = 576, .vd = 512, .dt = t,
                           .n_rows = 200, .lens = LENS_SHORT + 5, .n_lens = 2, .share = 1};
        run_shape(&dsa, seed++, dt ? "bf16 MLA-like, 160 heads" : "f32 MLA-like, 160 heads");
        const shape big = {.T = 1, .Hq = 2, .Hkv = 1, .kd = 1024, .vd = 1024, .dt = t, .causal = 1,
                           .n_rows = 100, .lens = LENS_SHORT + 4, .n_lens = 3};
        run_shape(&big, seed++, dt ? "bf16 dims 1024" : "f32 dims 1024");
    }
}

/* Many lists (several waves of lists) and wide states (several waves of states, capped
 * segment counts): the work split must not show in the results. */
static void test_waves(void)
{
    static const int32_t few[] = {0, 3, 5};
    const shape many = {.T = 600, .Hq = 8, .Hkv = 8, .kd = 8, .vd = 8, .dt = SKV_F32, .causal = 1,
                        .n_rows = 64, .lens = few, .n_lens = 3};
    run_shape(&many, 7001, "4800 lists");
    static const int32_t ten[] = {10};
    const shape wide = {.T = 40, .Hq = 32, .Hkv = 1, .kd = 1, .vd = 1024, .dt = SKV_F32,
                        .n_rows = 64, .lens = ten, .n_lens = 1};
    run_shape(&wide, 7002, "wide states");
    static const int32_t longl[] = {4000};
    const shape capped = {.T = 1, .Hq = 64, .Hkv = 1, .kd = 2, .vd = 1024, .dt = SKV_F32,
                          .n_rows = 4000, .lens = longl, .n_lens = 1, .scale = 0.1f};
    run_shape(&capped, 7003, "capped segments");
}

/* ---- a selection equals dense attention restricted to it --------------------------------- */

/* A dense sequence of L tokens per KV head; each (token, KV head) selects a random subset
 * (in random order), gathered into contiguous rows with their positions. The library's result
 * on the gathered rows must match dense attention over all L tokens in which the unselected
 * ones are masked out, computed here in double. */
static void test_dense_restricted(void)
{
    const int32_t T = 3, Hq = 8, Hkv = 2, D = 64, Dv = 32, L = 1500, K = 257;
    for (int dt = 0; dt < 2; dt++) {
        rng r = {4242 + dt};
        const skv_dtype t_ = dt ? SKV_BF16 : SKV_F32;
        float *kd = xmalloc((size_t)Hkv * L * D * 4), *vd = xmalloc((size_t)Hkv * L * Dv * 4);
        for (int64_t i = 0; i < (int64_t)Hkv * L * D; i++)
            kd[i] = (float)rng_uniform(&r, -1, 1);
        for (int64_t i = 0; i < (int64_t)Hkv * L * Dv; i++)
            vd[i] = (float)rng_uniform(&r, -1, 1);
        uint8_t *sel = xmalloc((size_t)T * Hkv * L);
        memset(sel, 0, (size_t)T * Hkv * L);
        attn_data d;
        memset(&d, 0, sizeof d);
        const shape s = {.T = T, .Hq = Hq, .Hkv = Hkv, .kd = D, .vd = Dv, .dt = t_, .causal = 1,
                         .n_rows = (int64_t)T * Hkv * K};
        d.qf = xmalloc((size_t)T * Hq * D * 4);
        for (int64_t i = 0; i < (int64_t)T * Hq * D; i++)
            d.qf[i] = (float)rng_uniform(&r, -1, 1);
        d.qpos = xmalloc((size_t)T * 4);
        d.qpos[0] = L - 1, d.qpos[1] = L / 2, d.qpos[2] = 100;
        d.kf = xmalloc((size_t)s.n_rows * D * 4);
        d.vf = xmalloc((size_t)s.n_rows * Dv * 4);
        d.kpos = xmalloc((size_t)s.n_rows * 4);
        d.start = xmalloc((size_t)T * Hkv * 8);
        d.len = xmalloc((size_t)T * Hkv * 4);
        /* the dense K/V go through the same narrowing as the gathered ones */
        free(to_dtype(t_, kd, (int64_t)Hkv * L * D));
        free(to_dtype(t_, vd, (int64_t)Hkv * L * Dv));
        int64_t row = 0;
        for (int32_t t = 0; t < T; t++)
            for (int32_t g = 0; g < Hkv; g++) {
                const int64_t l = (int64_t)t * Hkv + g;
                d.start[l] = row;
                d.len[l] = K;
                for (int32_t i = 0; i < K; i++) {
                    int32_t p;
                    do
                        p = (int32_t)rng_int(&r, 0, L - 1);
                    while (sel[l * L + p]);
                    sel[l * L + p] = 1;
                    memcpy(d.kf + row * D, kd + ((size_t)g * L + p) * D, (size_t)D * 4);
                    memcpy(d.vf + row * Dv, vd + ((size_t)g * L + p) * Dv, (size_t)Dv * 4);
                    d.kpos[row++] = p;
                }
            }
        data_finish(&d, &s);
        for (int lv = 0; lv < N_LEVELS; lv++) {
            if (!level_available(&all_levels[lv]))
                continue;
            skv_context *ctx = ctx_new(all_levels[lv].mask, 2);
            result got;
            result_alloc(&got, &d.b);
            CHECK_OK(skv_sparse_attention(ctx, &d.b, got.out, got.mx, got.lse));
            long bad = 0;
            for (int32_t t = 0; t < T; t++)
                for (int32_t h = 0; h < Hq; h++) {
                    const int32_t g = h / (Hq / Hkv);
                    const float *q = d.qf + ((size_t)t * Hq + h) * D;
                    double m = -INFINITY, l_sum = 0, o[32] = {0}, mag = 0, smag = 0;
                    int64_t n = 0;
                    for (int pass = 0; pass < 2; pass++)
                        for (int32_t p = 0; p < L; p++) {
                            if (!sel[((size_t)t * Hkv + g) * L + p] || p > d.qpos[t])
                                continue; /* dense attention, the rest masked */
                            double dot = 0, adot = 0;
                            for (int32_t i = 0; i < D; i++) {
                                dot += (double)q[i] * kd[((size_t)g * L + p) * D + i];
                                adot += fabs((double)q[i] * kd[((size_t)g * L + p) * D + i]);
                            }
                            dot *= d.b.scale;
                            if (pass == 0) {
                                m = fmax(m, dot), n++, smag = fmax(smag, adot * d.b.scale);
                                continue;
                            }
                            const double w = exp(dot - m);
                            l_sum += w;
                            for (int32_t c = 0; c < Dv; c++)
                                o[c] += w * vd[((size_t)g * L + p) * Dv + c];
                            for (int32_t c = 0; c < Dv; c++)
                                mag = fmax(mag, fabs(vd[((size_t)g * L + p) * Dv + c]));
                        }
                    const size_t th = (size_t)t * Hq + h;
                    const expect e = {.smag = smag, .n = n};
                    const double tol = out_tol(&d.b, &e, mag); /* mag: max |v| (conservative) */
                    for (int32_t c = 0; c < Dv; c++)
                        bad += !(fabs(got.out[th * Dv + c] - o[c] / l_sum) <= tol);
                    bad += !(fabs(got.lse[th] - (m + log(l_sum))) <= 1e-5 * (1 + fabs(m)));
                }
            CHECK(bad == 0, "%s at %s: %ld values differ from restricted dense attention",
                  dt ? "bf16" : "f32", all_levels[lv].name, bad);
            result_free(&got);
            skv_context_destroy(ctx);
        }
        data_free(&d);
        free(kd), free(vd), free(sel);
    }
}

/* ---- partial results merge to the whole --------------------------------------------------- */

/* Splits every list at a random point into its first and second part (either may be empty),
 * runs both, merges, and compares with the whole list. An empty side merges exactly. */
static void test_merge(void)
{
    static const int32_t lens[] = {0, 1, 2, 40, 300, 2100};
    for (int dt = 0; dt < 2; dt++) {
        rng r = {555 + dt};
        const shape s = {.T = 4, .Hq = 8, .Hkv = 2, .kd = 64, .vd = 40,
                         .dt = dt ? SKV_BF16 : SKV_F32, .causal = 1, .n_rows = 2200,
                         .lens = lens, .n_lens = 6};
        attn_data d;
        data_make(&d, &r, &s);
        const int64_t nl = (int64_t)s.T * s.Hkv;
        int64_t *sa = xmalloc((size_t)nl * 8), *sb = xmalloc((size_t)nl * 8);
        int32_t *la = xmalloc((size_t)nl * 4), *lb = xmalloc((size_t)nl * 4);
        for (int64_t l = 0; l < nl; l++) {
            const int32_t cut = l % 3 == 0   ? 0
                                : l % 3 == 1 ? d.len[l]
                                             : (int32_t)rng_int(&r, 0, d.len[l]);
            sa[l] = d.start[l], la[l] = cut;
            sb[l] = d.start[l] + cut, lb[l] = d.len[l] - cut;
        }
        for (int lv = 0; lv < N_LEVELS; lv++) {
            if (!level_available(&all_levels[lv]))
                continue;
            skv_context *ctx = ctx_new(all_levels[lv].mask, 2);
            result whole, a, bpart;
            result_alloc(&whole, &d.b), result_alloc(&a, &d.b), result_alloc(&bpart, &d.b);
            CHECK_OK(skv_sparse_attention(ctx, &d.b, whole.out, whole.mx, whole.lse));
            skv_attn_batch ba = d.b, bb = d.b;
            ba.list_start = sa, ba.list_len = la, bb.list_start = sb, bb.list_len = lb;
            CHECK_OK(skv_sparse_attention(ctx, &ba, a.out, a.mx, a.lse));
            CHECK_OK(skv_sparse_attention(ctx, &bb, bpart.out, bpart.mx, bpart.lse));
            float *a_out = xmalloc(a.n_out * 4), *a_lse = xmalloc(a.n_th * 4);
            memcpy(a_out, a.out, a.n_out * 4), memcpy(a_lse, a.lse, a.n_th * 4);
            CHECK_OK(skv_attention_merge((int64_t)a.n_th, s.vd, a.out, a.lse, bpart.out,
                                         bpart.lse));
            long bad = 0, exact_bad = 0;
            expect e;
            e.o = xmalloc((size_t)s.vd * sizeof *e.o);
            e.mag = xmalloc((size_t)s.vd * sizeof *e.mag);
            for (size_t th = 0; th < a.n_th; th++) {
                const int32_t t = (int32_t)(th / s.Hq), h = (int32_t)(th % s.Hq);
                const float *m = a.out + th * s.vd, *w = whole.out + th * s.vd;
                if (a_lse[th] == -INFINITY || bpart.lse[th] == -INFINITY) {
                    /* an empty (or fully masked) side: the other side, bit for bit */
                    const int a_empty = a_lse[th] == -INFINITY;
                    const float *other = a_empty ? bpart.out + th * s.vd : a_out + th * s.vd;
                    const float olse = a_empty ? bpart.lse[th] : a_lse[th];
                    exact_bad += memcmp(m, other, (size_t)s.vd * 4) != 0 ||
                                 !same_float(a.lse[th], olse);
                    continue;
                }
                /* both sides' errors add up: twice a whole list's tolerance, against the whole
                   list's result and the exact one */
                expect_head(&d, t, h, &e);
                for (int32_t c = 0; c < s.vd; c++) {
                    const double tol = 2 * out_tol(&d.b, &e, e.mag[c]);
                    bad += !(fabs(m[c] - w[c]) <= tol) + !(fabs(m[c] - e.o[c]) <= tol);
                }
                bad += !(fabs(a.lse[th] - whole.lse[th]) <= 1e-5 * (1 + fabs(whole.lse[th])));
            }
            CHECK(bad == 0, "%s at %s: %ld merged values differ from the whole list",
                  dt ? "bf16" : "f32", all_levels[lv].name, bad);
            CHECK(exact_bad == 0, "%s at %s: %ld merges with an empty side are not exact",
                  dt ? "bf16" : "f32", all_levels[lv].name, exact_bad);
            free(e.o), free(e.mag), free(a_out), free(a_lse);
            result_free(&whole), result_free(&a), result_free(&bpart);
            skv_context_destroy(ctx);
        }
        free(sa), free(sb), free(la), free(lb);
        data_free(&d);
    }

    /* the merge function alone: NaN propagates, empty sides, weights */
    float oa[6] = {1, 2, 3, 4, 5, 6}, lsa[3] = {-INFINITY, 0.5f, NAN};
    const float ob[6] = {7, 8, 9, 10, 11, 12}, lsb[3] = {1.0f, 0.5f, 0.0f};
    CHECK_OK(skv_attention_merge(3, 2, oa, lsa, ob, lsb));
    CHECK(oa[0] == 7 && oa[1] == 8 && lsa[0] == 1.0f, "empty a takes b");
    CHECK(fabsf(oa[2] - 6) < 1e-6f && fabsf(oa[3] - 7) < 1e-6f &&
              fabsf(lsa[1] - (0.5f + logf(2))) < 1e-6f, "equal weights average");
    CHECK(isnan(oa[4]) && isnan(oa[5]) && isnan(lsa[2]), "NaN lse propagates");
    float oe[2] = {1, 2}, lse_e[1] = {0.0f};
    const float of[2] = {5, 6}, lse_f[1] = {(float)log(3.0)};
    CHECK_OK(skv_attention_merge(1, 2, oe, lse_e, of, lse_f));
    CHECK(fabsf(oe[0] - 4) < 1e-6f && fabsf(oe[1] - 5) < 1e-6f &&
              fabsf(lse_e[0] - (float)log(4.0)) < 1e-6f, "weights 1/4 and 3/4");
    float oc[2] = {1, 2}, lsc[1] = {-INFINITY};
    const float od[2] = {3, 4}, lsd[1] = {-INFINITY};
    CHECK_OK(skv_attention_merge(1, 2, oc, lsc, od, lsd));
    CHECK(oc[0] == 1 && oc[1] == 2 && lsc[0] == -INFINITY, "both empty: a unchanged");
}

/* ---- determinism ---------------------------------------------------------------------------- */

static void test_determinism(void)
{
    static const int32_t lens[] = {0, 17, 1000, 2500, 5000};
    const shape shapes[] = {
        {.T = 3, .Hq = 16, .Hkv = 4, .kd = 128, .vd = 128, .dt = SKV_F32, .causal = 1,
         .n_rows = 6000, .lens = lens, .n_lens = 5},
        {.T = 3, .Hq = 16, .Hkv = 4, .kd = 96, .vd = 80, .dt = SKV_BF16, .causal = 1,
         .n_rows = 6000, .lens = lens, .n_lens = 5},
        {.T = 1, .Hq = 128, .Hkv = 1, .kd = 72, .vd = 64, .dt = SKV_BF16, .n_rows = 3000,
         .lens = lens + 3, .n_lens = 1}, /* one list: segments and head chunks */
    };
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        rng r = {900 + si};
        attn_data d;
        data_make(&d, &r, &shapes[si]);
        for (int lv = 0; lv < N_LEVELS; lv++) {
            if (!level_available(&all_levels[lv]))
                continue;
            result base;
            result_alloc(&base, &d.b);
            skv_context *c1 = ctx_new(all_levels[lv].mask, 1);
            CHECK_OK(skv_sparse_attention(c1, &d.b, base.out, base.mx, base.lse));
            static const int threads[] = {1, 2, 3, 8};
            for (size_t ti = 0; ti < 4; ti++) {
                skv_context *c = ctx_new(all_levels[lv].mask, threads[ti]);
                for (int rep = 0; rep < 2; rep++) {
                    result got;
                    result_alloc(&got, &d.b);
                    CHECK_OK(skv_sparse_attention(c, &d.b, got.out, got.mx, got.lse));
                    CHECK(same_result(&base, &got), "shape %zu at %s: %d threads (run %d) differ",
                          si, all_levels[lv].name, threads[ti], rep);
                    result_free(&got);
                }
                skv_context_destroy(c);
            }
            /* inside a host's parallel region: runs on the calling thread, same result */
            long differ = 0;
#pragma omp parallel num_threads(2) reduction(+ : differ)
            {
                skv_context *c = ctx_new(all_levels[lv].mask, 4);
                result got;
                result_alloc(&got, &d.b);
                differ += skv_sparse_attention(c, &d.b, got.out, got.mx, got.lse) != SKV_OK ||
                          !same_result(&base, &got);
                result_free(&got);
                skv_context_destroy(c);
            }
            CHECK(differ == 0, "shape %zu at %s: inside a parallel region differs", si,
                  all_levels[lv].name);
            result_free(&base);
            skv_context_destroy(c1);
        }
        data_free(&d);
    }
}

/* ---- NaN, infinity, empty ----------------------------------------------------------------- */

static void run_all_levels(const attn_data *d, result *ref, const char *what)
{
    CHECK_OK(skv_sparse_attention_reference(&d->b, ref->out, ref->mx, ref->lse));
    CHECK(compare(d, ref->out, ref->mx, ref->lse, 1, "reference") == 0, "%s: reference", what);
    for (int lv = 0; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_context *ctx = ctx_new(all_levels[lv].mask, 2);
        result got;
        result_alloc(&got, &d->b);
        CHECK_OK(skv_sparse_attention(ctx, &d->b, got.out, got.mx, got.lse));
        CHECK(compare(d, got.out, got.mx, got.lse, 0, all_levels[lv].name) == 0, "%s at %s", what,
              all_levels[lv].name);
        /* non-finite columns agree with the reference's */
        long differ = 0;
        for (size_t i = 0; i < got.n_out; i++)
            differ += !isfinite(got.out[i]) != !isfinite(ref->out[i]);
        CHECK(differ == 0, "%s at %s: %ld columns finite in one and not the other", what,
              all_levels[lv].name, differ);
        result_free(&got);
        skv_context_destroy(ctx);
    }
}

static void refresh(attn_data *d, const shape *s)
{
    free(d->q), free(d->k), free(d->v);
    data_finish(d, s);
}

/* Planted values, each in its own list (list l = rows [40 l, 40 l + 40), heads 2g, 2g+1 of
 * token t use list 2t + g); what each one does is spelled out below, and every level must
 * agree with the reference, non-finite columns included. */
static void test_special(void)
{
    static const int32_t lens[] = {40};
    for (int dt = 0; dt < 2; dt++) {
        const shape s = {.T = 4, .Hq = 4, .Hkv = 2, .kd = 16, .vd = 8,
                         .dt = dt ? SKV_BF16 : SKV_F32, .causal = 1, .n_rows = 320,
                         .lens = lens, .n_lens = 1};
        rng r = {31337 + dt};
        attn_data d;
        data_make(&d, &r, &s);
        for (int64_t l = 0; l < 8; l++)
            d.start[l] = 40 * l, d.len[l] = l == 5 ? 0 : 40;
        for (int64_t row = 0; row < 320; row++)
            d.kpos[row] = (int32_t)row;
        d.qpos[0] = d.qpos[1] = 1 << 30;
        float *q0 = d.qf, *q1 = d.qf + 4 * 16;
        /* token 0: list 0 has NaN in a K row (heads 0, 1 NaN); list 1 has +inf in one V
           element (head 2: that column non-finite); head 3 has NaN in q */
        d.kf[3 * 16 + 5] = NAN;
        d.vf[(40 + 7) * 8 + 2] = INFINITY;
        q0[3 * 16 + 4] = NAN;
        /* token 1: head 0 gets a +inf score (q infinite where row 89's key is positive, 0
           elsewhere: NaN); head 2's every score is -inf (q = -inf . e0, keys' first element 1):
           the empty result */
        for (int32_t i = 0; i < 16; i++) {
            q1[i] = d.kf[89 * 16 + i] > 0 ? INFINITY : 0.0f;
            q1[2 * 16 + i] = i == 0 ? -INFINITY : 0.0f;
        }
        for (int64_t row = 120; row < 160; row++)
            d.kf[row * 16] = 1.0f;
        /* token 2: in list 4 a future row holds NaN everywhere (masked: no effect); list 5 is
           empty */
        d.qpos[2] = 1000;
        d.kpos[162] = 5000;
        for (int32_t i = 0; i < 16; i++)
            d.kf[162 * 16 + i] = NAN;
        for (int32_t i = 0; i < 8; i++)
            d.vf[162 * 8 + i] = NAN;
        /* token 3: list 6 entirely in the future, list 7 half */
        d.qpos[3] = 200;
        for (int64_t row = 300; row < 320; row++)
            d.kpos[row] = 300;
        for (int64_t row = 280; row < 300; row++)
            d.kpos[row] = (int32_t)(row - 100);
        refresh(&d, &s);
        result ref;
        result_alloc(&ref, &d.b);
        run_all_levels(&d, &ref, dt ? "bf16 special values" : "f32 special values");
        const int vd = 8;
#define OUT(t, h, c) ref.out[((t) * 4 + (h)) * vd + (c)]
#define TH(t, h) ((t) * 4 + (h))
        CHECK(isnan(OUT(0, 0, 0)) && isnan(OUT(0, 1, 7)) && isnan(ref.mx[0]) && isnan(ref.lse[1]),
              "NaN in a used K row: the list's heads are NaN");
        CHECK(!isfinite(OUT(0, 2, 2)) && isfinite(OUT(0, 2, 1)) && isfinite(ref.lse[TH(0, 2)]),
              "+inf in V: that column non-finite, the rest finite");
        CHECK(isnan(OUT(0, 3, 0)) && isnan(ref.lse[TH(0, 3)]), "NaN in q: the head is NaN");
        CHECK(isnan(OUT(1, 0, 0)) && isnan(ref.mx[TH(1, 0)]), "a +inf score: NaN");
        CHECK(isfinite(OUT(1, 1, 0)) && isfinite(ref.lse[TH(1, 1)]), "token 1 head 1 normal");
        CHECK(OUT(1, 2, 0) == 0 && ref.mx[TH(1, 2)] == -INFINITY && ref.lse[TH(1, 2)] == -INFINITY,
              "every score -inf: the empty result");
        CHECK(isfinite(OUT(2, 0, 0)) && isfinite(ref.lse[TH(2, 1)]), "a masked NaN row: no effect");
        CHECK(OUT(2, 2, 0) == 0 && ref.lse[TH(2, 3)] == -INFINITY, "an empty list");
        CHECK(OUT(3, 0, 0) == 0 && ref.lse[TH(3, 1)] == -INFINITY, "a fully masked list");
        CHECK(isfinite(OUT(3, 2, 0)) && isfinite(ref.lse[TH(3, 3)]), "a half masked list");
#undef OUT
#undef TH
        /* the masked NaN row changes nothing: the same batch with the row finite */
        skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
        result a, b;
        result_alloc(&a, &d.b), result_alloc(&b, &d.b);
        CHECK_OK(skv_sparse_attention(ctx, &d.b, a.out, a.mx, a.lse));
        for (int32_t i = 0; i < 16; i++)
            d.kf[162 * 16 + i] = 0.5f;
        for (int32_t i = 0; i < 8; i++)
            d.vf[162 * 8 + i] = 0.5f;
        refresh(&d, &s);
        CHECK_OK(skv_sparse_attention(ctx, &d.b, b.out, b.mx, b.lse));
        CHECK(!memcmp(a.out + 2 * 4 * vd, b.out + 2 * 4 * vd, 2 * vd * 4), "a masked row mattered");
        result_free(&a), result_free(&b);
        skv_context_destroy(ctx);
        result_free(&ref);
        data_free(&d);
    }
}

/* ---- bad arguments ------------------------------------------------------------------------ */

static void test_badargs(void)
{
    rng r = {5};
    static const int32_t l8[] = {8};
    const shape s = {.T = 2, .Hq = 4, .Hkv = 2, .kd = 8, .vd = 8, .dt = SKV_F32, .causal = 1,
                     .n_rows = 32, .lens = l8, .n_lens = 1};
    attn_data d;
    data_make(&d, &r, &s);
    for (int i = 0; i < 4; i++)
        d.start[i] = 8 * i;
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    result res;
    result_alloc(&res, &d.b);
    const size_t mem0 = skv_context_memory(ctx);
    float sentinel[64];
    memcpy(sentinel, res.out, sizeof sentinel);

#define BAD(field_change, want)                                                               \
    do {                                                                                      \
        skv_attn_batch b_ = d.b;                                                              \
        field_change;                                                                         \
        CHECK_STATUS(skv_sparse_attention(ctx, &b_, res.out, res.mx, res.lse), want);         \
        CHECK_STATUS(skv_sparse_attention_reference(&b_, res.out, res.mx, res.lse), want);    \
        CHECK(!memcmp(res.out, sentinel, 64 * 4), "a failed call wrote its output");          \
    } while (0)

    BAD(b_.struct_size = 0, SKV_ERR_INVALID_ARG);
    BAD(b_.struct_size = sizeof b_ + 8, SKV_ERR_INVALID_ARG);
    BAD(b_.n_tokens = -1, SKV_ERR_INVALID_ARG);
    BAD(b_.n_q_heads = 0, SKV_ERR_INVALID_ARG);
    BAD(b_.n_q_heads = 5, SKV_ERR_INVALID_ARG); /* not a multiple of n_kv_heads */
    BAD(b_.n_q_heads = 1, SKV_ERR_INVALID_ARG); /* fewer than n_kv_heads */
    BAD(b_.n_q_heads = 4098, SKV_ERR_INVALID_ARG);
    BAD(b_.n_kv_heads = 0, SKV_ERR_INVALID_ARG);
    BAD(b_.k_dim = 0, SKV_ERR_INVALID_ARG);
    BAD(b_.k_dim = 1025, SKV_ERR_INVALID_ARG);
    BAD(b_.v_dim = 0, SKV_ERR_INVALID_ARG);
    BAD(b_.v_dim = 1025, SKV_ERR_INVALID_ARG);
    BAD(b_.scale = NAN, SKV_ERR_INVALID_ARG);
    BAD(b_.scale = INFINITY, SKV_ERR_INVALID_ARG);
    BAD(b_.causal = 2, SKV_ERR_INVALID_ARG);
    BAD(b_.dtype = (skv_dtype)7, SKV_ERR_INVALID_ARG);
    BAD(b_.dtype = SKV_F16, SKV_ERR_UNSUPPORTED);
    BAD(b_.dtype = SKV_FP8_E4M3, SKV_ERR_UNSUPPORTED);
    BAD((b_.dtype = SKV_F16, b_.k_dim = 0), SKV_ERR_INVALID_ARG); /* invalid beats unsupported */
    BAD(b_.q = NULL, SKV_ERR_INVALID_ARG);
    BAD(b_.k = NULL, SKV_ERR_INVALID_ARG);
    BAD(b_.v = NULL, SKV_ERR_INVALID_ARG);
    BAD(b_.q_pos = NULL, SKV_ERR_INVALID_ARG);
    BAD(b_.k_pos = NULL, SKV_ERR_INVALID_ARG);
    BAD(b_.list_start = NULL, SKV_ERR_INVALID_ARG);
    BAD(b_.list_len = NULL, SKV_ERR_INVALID_ARG);
    BAD(b_.n_rows = -1, SKV_ERR_INVALID_ARG);
    BAD(b_.n_rows = 20, SKV_ERR_INVALID_ARG); /* lists 2 and 3 now end past n_rows */
    BAD(b_.n_rows = INT64_MAX / 2, SKV_ERR_INVALID_ARG);
    int64_t st[4];
    int32_t ln[4];
    for (int i = 0; i < 4; i++)
        st[i] = d.start[i], ln[i] = d.len[i];
    BAD((st[3] = -1, b_.list_start = st), SKV_ERR_INVALID_ARG);
    st[3] = d.start[3];
    BAD((st[2] = 32 - 7, b_.list_start = st), SKV_ERR_INVALID_ARG); /* 25 + 8 > 32 */
    st[2] = d.start[2];
    BAD((ln[1] = -1, b_.list_len = ln), SKV_ERR_INVALID_ARG);
    ln[1] = d.len[1];
    BAD((ln[0] = 33, st[0] = 0, b_.list_len = ln, b_.list_start = st), SKV_ERR_INVALID_ARG);
    ln[0] = d.len[0], st[0] = d.start[0];
    BAD((st[1] = INT64_MAX, ln[1] = 1, b_.list_start = st, b_.list_len = ln), SKV_ERR_INVALID_ARG);
    CHECK(skv_context_memory(ctx) == mem0, "failed calls changed the context's memory");
    /* causal off: positions may be NULL */
    {
        skv_attn_batch b = d.b;
        b.causal = 0, b.q_pos = NULL, b.k_pos = NULL;
        CHECK_OK(skv_sparse_attention(ctx, &b, res.out, NULL, NULL));
        memcpy(res.out, sentinel, sizeof sentinel);
    }
    CHECK_STATUS(skv_sparse_attention(NULL, &d.b, res.out, res.mx, res.lse), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_sparse_attention(ctx, NULL, res.out, res.mx, res.lse), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_sparse_attention(ctx, &d.b, NULL, res.mx, res.lse), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_sparse_attention_reference(NULL, res.out, res.mx, res.lse),
                 SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_sparse_attention_reference(&d.b, NULL, NULL, NULL), SKV_ERR_INVALID_ARG);
    /* nothing to do: NULL everywhere is fine */
    {
        skv_attn_batch b;
        memset(&b, 0, sizeof b);
        b.struct_size = sizeof b, b.n_q_heads = 1, b.n_kv_heads = 1, b.k_dim = 1, b.v_dim = 1;
        b.scale = 1.0f;
        CHECK_OK(skv_sparse_attention(ctx, &b, NULL, NULL, NULL));
        CHECK_OK(skv_sparse_attention_reference(&b, NULL, NULL, NULL));
    }

    float o[4] = {0}, l[2] = {0};
    CHECK_STATUS(skv_attention_merge(-1, 2, o, l, o, l), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_attention_merge(2, 0, o, l, o, l), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_attention_merge(2, 2, NULL, l, o, l), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_attention_merge(2, 2, o, NULL, o, l), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_attention_merge(2, 2, o, l, NULL, l), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_attention_merge(2, 2, o, l, o, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_attention_merge(INT64_MAX / 2, 1024, o, l, o, l), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_attention_merge(0, 2, NULL, NULL, NULL, NULL));
#undef BAD
    result_free(&res);
    skv_context_destroy(ctx);
    data_free(&d);
}

/* ---- allocation failure ------------------------------------------------------------------- */

typedef struct tracker {
    long n, fail_at, live;
    size_t bytes;
} tracker;

static void *t_alloc(void *user, size_t size, size_t align)
{
    tracker *t = user;
    if (++t->n == t->fail_at)
        return NULL;
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    if (p)
        t->live++, t->bytes += size;
    return p;
}

static void t_free(void *user, void *p, size_t size)
{
    tracker *t = user;
    if (p)
        t->live--, t->bytes -= size;
    free(p);
}

/* For N = 1, 2, ...: a context whose allocator fails the N-th allocation runs two calls that
 * need workspace of different sizes; each fails with NOMEM leaving its output untouched or
 * gives the result of an unfailing run. Ends when no allocation failed; nothing may leak. */
static void test_alloc_fail(void)
{
    rng r = {99};
    static const int32_t lens[] = {5, 3000};
    const shape s1 = {.T = 2, .Hq = 8, .Hkv = 2, .kd = 32, .vd = 32, .dt = SKV_BF16, .causal = 1,
                      .n_rows = 4000, .lens = lens, .n_lens = 2};
    const shape s2 = {.T = 1, .Hq = 4, .Hkv = 1, .kd = 8, .vd = 8, .dt = SKV_F32, .n_rows = 100,
                      .lens = lens, .n_lens = 1};
    attn_data d1, d2;
    data_make(&d1, &r, &s1);
    data_make(&d2, &r, &s2);
    result want1, want2;
    result_alloc(&want1, &d1.b), result_alloc(&want2, &d2.b);
    skv_context *c0 = ctx_new(SKV_CPU_ALL, 2);
    CHECK_OK(skv_sparse_attention(c0, &d2.b, want2.out, want2.mx, want2.lse));
    CHECK_OK(skv_sparse_attention(c0, &d1.b, want1.out, want1.mx, want1.lse));
    skv_context_destroy(c0);
    long failures = 0, n;
    for (n = 1; n < 100; n++) {
        tracker t = {.fail_at = n};
        skv_context_params p;
        skv_context_params_init(&p);
        p.n_threads = 2;
        p.allocator.alloc = t_alloc, p.allocator.free = t_free, p.allocator.user = &t;
        skv_context *ctx = NULL;
        const skv_status cs = skv_context_create(&p, &ctx);
        CHECK(cs == SKV_OK || (cs == SKV_ERR_NOMEM && !ctx), "N=%ld: context create %d", n, cs);
        if (ctx) {
            const attn_data *ds[2] = {&d2, &d1};
            const result *ws[2] = {&want2, &want1};
            for (int i = 0; i < 2; i++) {
                result got;
                result_alloc(&got, &ds[i]->b);
                float *before = xmalloc(got.n_out * 4);
                memcpy(before, got.out, got.n_out * 4);
                const size_t mem = skv_context_memory(ctx);
                const skv_status st =
                    skv_sparse_attention(ctx, &ds[i]->b, got.out, got.mx, got.lse);
                CHECK(st == SKV_OK || st == SKV_ERR_NOMEM, "N=%ld: status %d", n, st);
                if (st == SKV_OK)
                    CHECK(same_result(&got, ws[i]), "N=%ld: call %d differs", n, i);
                else
                    CHECK(!memcmp(before, got.out, got.n_out * 4) && skv_context_memory(ctx) == mem,
                          "N=%ld: a failed call changed something", n);
                failures += st == SKV_ERR_NOMEM;
                free(before);
                result_free(&got);
            }
            skv_context_destroy(ctx);
        }
        CHECK(t.live == 0 && t.bytes == 0, "N=%ld: %ld blocks (%zu bytes) leaked", n, t.live,
              t.bytes);
        if (t.n < t.fail_at)
            break; /* nothing failed: every allocation site was covered */
    }
    CHECK(n < 100 && failures > 0, "allocation failure never reached the kernel (%ld)", failures);
    result_free(&want1), result_free(&want2);
    data_free(&d1), data_free(&d2);
}

int main(void)
{
    test_badargs();
    test_special();
    test_merge();
    test_dense_restricted();
    test_determinism();
    test_alloc_fail();
    test_waves();
    test_shapes();
    return test_summary("attention");
}
