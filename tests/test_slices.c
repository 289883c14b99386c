/* Slices from a plain pthread pool, nth = 1..5 (more workers than work items included), each
 * bit for bit equal to the OpenMP entry point: the indexer top-k (contiguous and paged, two
 * phases around the pool's barrier), skv_topk_rows, MISA and HISA, sparse attention and the
 * store's gather. Every worker has its own context, as the protocol in slice.h asks. */
#include <pthread.h>

#include "common.h"

#define MAX_NTH 5

/* ---- the pool: nth threads run job(arg, ith, nth); job may wait on the pool's barrier ------- */

typedef struct pool {
    int nth;
    pthread_barrier_t barrier;
    skv_context *wctx[MAX_NTH];
    skv_status status[MAX_NTH][2]; /* phase one, phase two */
    void (*job)(struct pool *, int ith, void *arg);
    void *arg;
} pool;

typedef struct worker { pool *p; int ith; } worker;

static void *worker_main(void *a)
{
    worker *w = a;
    w->p->job(w->p, w->ith, w->p->arg);
    return NULL;
}

static void pool_run(pool *p, int nth, void (*job)(pool *, int, void *), void *arg)
{
    pthread_t th[MAX_NTH];
    worker w[MAX_NTH];
    p->nth = nth, p->job = job, p->arg = arg;
    pthread_barrier_init(&p->barrier, NULL, (unsigned)nth);
    for (int i = 0; i < nth; i++) {
        p->status[i][0] = p->status[i][1] = SKV_OK;
        w[i] = (worker){p, i};
        if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0) {
            fprintf(stderr, "test: pthread_create failed\n");
            exit(2);
        }
    }
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&p->barrier);
}

static int pool_ok(const pool *p)
{
    for (int i = 0; i < p->nth; i++)
        if (p->status[i][0] != SKV_OK || p->status[i][1] != SKV_OK)
            return 0;
    return 1;
}

/* ---- indexer top-k: two phases ---------------------------------------------------------------- */

typedef struct topk_job {
    const skv_indexer_query *q;
    const skv_key_block *keys; /* or the cache, or host pages: */
    const skv_kcache *cache;
    const skv_paged_keys *pk;
    const skv_paged_batch *pb;
    int32_t k;
    void *part;
    int32_t *idx;
    float *score;
} topk_job;

static void topk_worker(pool *p, int ith, void *arg)
{
    topk_job *j = arg;
    p->status[ith][0] = j->pk      ? skv_paged_topk_slice(p->wctx[ith], j->pk, j->pb, j->q, j->k, ith, p->nth, j->part)
                        : j->cache ? skv_kcache_topk_slice(p->wctx[ith], j->cache, 0, 0, j->q, j->k, ith, p->nth, j->part)
                                   : skv_indexer_topk_slice(p->wctx[ith], j->q, j->keys, j->k, ith, p->nth, j->part);
    pthread_barrier_wait(&p->barrier); /* the host's barrier between the phases */
    p->status[ith][1] = skv_topk_merge_slice(j->part, j->q->n_tokens, j->k, ith, p->nth, j->idx, j->score);
}

/* Slices for nth = 1..5 against want_idx / want_score. */
static void check_topk(pool *p, topk_job *j, const int32_t *want_idx, const float *want_score,
                       const char *what)
{
    const size_t n = (size_t)j->q->n_tokens * j->k;
    j->idx = xmalloc(n * 4), j->score = xmalloc(n * 4);
    for (int nth = 1; nth <= MAX_NTH; nth++) {
        const size_t bytes = skv_topk_part_bytes(j->q->n_tokens, j->k, nth);
        CHECK(bytes == n * nth * 8, "part bytes");
        j->part = xmalloc(bytes);
        memset(j->idx, 0x55, n * 4), memset(j->score, 0x55, n * 4);
        pool_run(p, nth, topk_worker, j);
        CHECK(pool_ok(p), "%s nth %d: a slice failed", what, nth);
        CHECK(memcmp(j->idx, want_idx, n * 4) == 0 && memcmp(j->score, want_score, n * 4) == 0,
              "%s nth %d: slices differ from the OpenMP call", what, nth);
        free(j->part);
    }
    free(j->idx), free(j->score);
}

static void test_indexer(pool *p, skv_context *ctx, rng *r)
{
    static const skv_dtype dts[][2] = {{SKV_F32, SKV_F32}, {SKV_BF16, SKV_FP8_E4M3}, {SKV_FP8_E4M3, SKV_FP8_E4M3}};
    static const int32_t Ts[] = {1, 7}, Ls[] = {100, 1500, 3000}, Ks[] = {16, 2048};
    static const fill_kind fills[] = {FILL_RANDOM, FILL_EQUAL_KEYS, FILL_NAN_INF};
    int cases = 0;
    for (int di = 0; di < 3; di++)
        for (int ti = 0; ti < 2; ti++)
            for (int li = 0; li < 3; li++)
                for (int ki = 0; ki < 2; ki++) {
                    const fill_kind fill = fills[(di + ti + li + ki) % 3];
                    idx_data d;
                    idx_data_make(&d, r, Ts[ti], ti ? 12 : 64, 32, Ls[li], dts[di][0], dts[di][1], fill,
                                  (li + ki) % 3);
                    const skv_indexer_query q = idx_query(&d);
                    const skv_key_block kb = idx_keys(&d);
                    const int32_t k = Ks[ki];
                    int32_t *wi = xmalloc((size_t)d.T * k * 4);
                    float *ws = xmalloc((size_t)d.T * k * 4);
                    CHECK_OK(skv_indexer_topk(ctx, &q, &kb, k, wi, ws));
                    topk_job j = {.q = &q, .keys = &kb, .k = k};
                    char what[96];
                    snprintf(what, sizeof what, "indexer dt %d T %d L %d k %d fill %d", di, d.T, (int)d.L, k, fill);
                    check_topk(p, &j, wi, ws, what);
                    /* the same keys in a paged cache (pages of 64, and of 48: not a divisor of 256) */
                    if (dts[di][1] != SKV_BF16 && li > 0 && ki == 0) {
                        for (int pg = 0; pg < 2; pg++) {
                            skv_kcache_params kp;
                            skv_kcache_params_init(&kp);
                            kp.head_dim = 32, kp.dtype = dts[di][1], kp.page_tokens = pg ? 48 : 64;
                            skv_kcache *c = NULL;
                            int32_t seq;
                            CHECK_OK(skv_kcache_create(ctx, &kp, &c));
                            CHECK_OK(skv_kcache_seq_create(c, &seq));
                            CHECK_OK(skv_kcache_append(c, seq, 0, &kb));
                            CHECK_OK(skv_kcache_topk(c, seq, 0, &q, k, wi, ws));
                            topk_job jc = {.q = &q, .cache = c, .k = k};
                            check_topk(p, &jc, wi, ws, what);
                            skv_kcache_destroy(c);
                        }
                    }
                    free(wi), free(ws);
                    idx_data_free(&d);
                    cases++;
                }
    printf("indexer top-k slices: %d cases x nth 1..%d\n", cases, MAX_NTH);
}

/* ---- V4 conventions: forced keys, MXFP4 keys, bf16 gates, host-owned pages -------------------- */

/* Key rows of a dtype from f32 (values, and scales for FP8 / MXFP4, per row). */
static void keys_from_f32(skv_dtype t, const float *x, int64_t n, int32_t D, uint8_t *rows,
                          uint8_t *scales)
{
    if (t == SKV_FP8_E4M3)
        CHECK_OK(skv_quantize_fp8(x, n, D, D, 0, rows, (float *)scales));
    else if (t == SKV_MXFP4_E2M1)
        CHECK_OK(skv_quantize_mxfp4(x, n, D, D, rows, scales));
    else
        CHECK_OK(skv_convert(t, rows, SKV_F32, x, n * D));
}

static size_t key_row_bytes(skv_dtype t, int32_t D)
{
    return t == SKV_MXFP4_E2M1 ? (size_t)D / 2 : (size_t)D * skv_dtype_size(t);
}

static size_t key_scale_bytes(skv_dtype t, int32_t D)
{
    return t == SKV_FP8_E4M3 ? 4 : t == SKV_MXFP4_E2M1 ? (size_t)D / 32 : 0;
}

/* Contiguous keys and a key cache (pages of 64 and of 48) of MXFP4 / FP8 keys, queries with
 * forced sinks and window and bf16 gates: two-phase slices against the OpenMP calls. */
static void test_indexer_v4(pool *p, skv_context *ctx, rng *r)
{
    static const skv_dtype kts[] = {SKV_MXFP4_E2M1, SKV_FP8_E4M3};
    int cases = 0;
    for (int ki = 0; ki < 2; ki++)
        for (int ti = 0; ti < 2; ti++)
            for (int forced = 0; forced < 2; forced++) {
                const int32_t T = ti ? 5 : 1, H = 8, D = 64, k = forced ? 320 : 48;
                const int64_t L = 1700;
                const skv_dtype kt = kts[ki];
                idx_data d;
                idx_data_make(&d, r, T, H, D, L, SKV_BF16, SKV_F32, FILL_RANDOM, 1 + (ti + forced) % 2);
                for (int64_t i = 0; i < L; i++) { /* rows of many magnitudes: scales that differ */
                    const float m = ldexpf(1.0f, (int)rng_int(r, -6, 6));
                    for (int32_t e = 0; e < D; e++)
                        d.k32[i * D + e] *= m;
                }
                uint8_t *rows = xmalloc((size_t)L * key_row_bytes(kt, D)), *sc = xmalloc((size_t)L * key_scale_bytes(kt, D));
                keys_from_f32(kt, d.k32, L, D, rows, sc);
                const skv_key_block kb = {L, D, kt, rows, kt == SKV_FP8_E4M3 ? (const float *)sc : NULL,
                                          kt == SKV_MXFP4_E2M1 ? sc : NULL};
                uint16_t *wb = xmalloc((size_t)T * H * 2);
                CHECK_OK(skv_convert(SKV_BF16, wb, SKV_F32, d.w, (int64_t)T * H));
                skv_indexer_query q = idx_query(&d);
                q.weights = NULL, q.weights_bf16 = wb;
                q.n_sink = forced ? 4 : 0, q.n_window = forced ? 300 : 0; /* the window spans ranges */
                int32_t *wi = xmalloc((size_t)T * k * 4);
                float *ws = xmalloc((size_t)T * k * 4);
                CHECK_OK(skv_indexer_topk(ctx, &q, &kb, k, wi, ws));
                char what[96];
                snprintf(what, sizeof what, "v4 indexer kt %d T %d forced %d", kt, T, forced);
                topk_job j = {.q = &q, .keys = &kb, .k = k};
                check_topk(p, &j, wi, ws, what);
                for (int pg = 0; pg < 2; pg++) {
                    skv_kcache_params kp;
                    skv_kcache_params_init(&kp);
                    kp.head_dim = D, kp.dtype = kt, kp.page_tokens = pg ? 48 : 64;
                    skv_kcache *c = NULL;
                    int32_t seq;
                    CHECK_OK(skv_kcache_create(ctx, &kp, &c));
                    CHECK_OK(skv_kcache_seq_create(c, &seq));
                    CHECK_OK(skv_kcache_append(c, seq, 0, &kb));
                    CHECK_OK(skv_kcache_topk(c, seq, 0, &q, k, wi, ws));
                    topk_job jc = {.q = &q, .cache = c, .k = k};
                    snprintf(what, sizeof what, "v4 kcache kt %d T %d forced %d page %d", kt, T, forced, kp.page_tokens);
                    check_topk(p, &jc, wi, ws, what);
                    skv_kcache_destroy(c);
                }
                free(rows), free(sc), free(wb), free(wi), free(ws);
                idx_data_free(&d);
                cases++;
            }
    printf("v4 top-k slices (forced keys, mxfp4, bf16 gates): %d cases x nth 1..%d\n", cases, MAX_NTH);
}

/* skv_paged_topk over a host's pool: sequences sharing blocks, in any order, partly filled
 * last blocks, one empty, 1-3 tokens each, DeepGEMM's rule or positions, forced keys. */
static void test_paged(pool *p, skv_context *ctx, rng *r)
{
    static const skv_dtype dts[] = {SKV_FP8_E4M3, SKV_MXFP4_E2M1, SKV_BF16};
    enum { S = 4, MAXB = 40 };
    int cases = 0;
    for (int di = 0; di < 3; di++)
        for (int pg = 0; pg < 2; pg++)
            for (int mode = 0; mode < 2; mode++) {
                const skv_dtype dt = dts[di];
                const int32_t D = 64, H = 8, P = pg ? 48 : 64, k = mode ? 240 : 40;
                const int64_t NB = 70;
                const size_t rb = key_row_bytes(dt, D), sb = key_scale_bytes(dt, D);
                const size_t soff = (size_t)P * rb, bbytes = soff + (size_t)P * sb + 32;
                uint8_t *pool_ = xmalloc((size_t)NB * bbytes);
                float *x = xmalloc((size_t)P * D * 4);
                for (int64_t b = 0; b < NB; b++) {
                    for (size_t i = 0; i < (size_t)P * D; i++)
                        x[i] = (float)rng_uniform(r, -1, 1);
                    keys_from_f32(dt, x, P, D, pool_ + b * bbytes, pool_ + b * bbytes + soff);
                }
                int32_t table[S][MAXB], lens[S], qs[S + 1];
                qs[0] = 0;
                for (int i = 0; i < S; i++) {
                    lens[i] = i == 2 ? 0 : (int32_t)rng_int(r, 1, MAXB * P);
                    for (int b = 0; b < MAXB; b++)
                        table[i][b] = (int32_t)rng_int(r, 0, NB - 1);
                    qs[i + 1] = qs[i] + (int32_t)rng_int(r, 1, 3);
                }
                memcpy(table[1], table[0], 8 * 4); /* shared blocks */
                const int32_t T = qs[S];
                idx_data d;
                idx_data_make(&d, r, T, H, D, 0, SKV_FP8_E4M3, SKV_F32, FILL_RANDOM, 0);
                skv_indexer_query q = idx_query(&d);
                int32_t pos[3 * S];
                if (mode) { /* positions, some short of the sequence's end; forced keys */
                    for (int i = 0; i < S; i++)
                        for (int32_t t = qs[i]; t < qs[i + 1]; t++)
                            pos[t] = (int32_t)rng_int(r, -1, lens[i]);
                    q.positions = pos;
                    q.n_sink = 2, q.n_window = 200;
                }
                const skv_paged_keys pk = {D, dt, P, pool_, NB, bbytes, soff};
                const skv_paged_batch pb = {S, &table[0][0], MAXB, lens, qs};
                int32_t *wi = xmalloc((size_t)T * k * 4);
                float *ws = xmalloc((size_t)T * k * 4);
                CHECK_OK(skv_paged_topk(ctx, &pk, &pb, &q, k, wi, ws));
                char what[96];
                snprintf(what, sizeof what, "paged dt %d page %d mode %d", dt, P, mode);
                topk_job j = {.q = &q, .pk = &pk, .pb = &pb, .k = k};
                check_topk(p, &j, wi, ws, what);
                free(pool_), free(x), free(wi), free(ws);
                idx_data_free(&d);
                cases++;
            }
    printf("paged top-k slices: %d cases x nth 1..%d\n", cases, MAX_NTH);
}

/* ---- single-phase slices ---------------------------------------------------------------------- */

typedef struct one_job {
    int kind; /* 0 topk_rows, 1 misa, 2 hisa, 3 attention, 4 gather, 5 misa and 6 hisa on a key
                 cache */
    /* topk_rows */
    const float *x;
    int64_t rows, cols;
    const int64_t *lengths;
    /* misa / hisa */
    const skv_indexer_query *q;
    const skv_key_block *keys;
    const skv_pooled_keys *pooled;
    const skv_misa_params *mp;
    const skv_hisa_params *hp;
    int32_t k;
    int32_t *idx;
    float *val;
    /* attention */
    const skv_attn_batch *b;
    float *out, *mx, *lse;
    /* gather */
    const skv_store *s;
    const skv_store_sel *sel;
    const skv_store_gather_out *go;
    /* misa / hisa on a key cache (seq 0, layer 0); prepare: worker 0 runs
       skv_kcache_misa_prepare before the pool's barrier */
    skv_kcache *cache;
    int prepare;
} one_job;

static void one_worker(pool *p, int ith, void *arg)
{
    one_job *j = arg;
    skv_context *w = p->wctx[ith];
    skv_status st = SKV_ERR_INVALID_ARG;
    switch (j->kind) {
    case 0: st = skv_topk_rows_slice(w, j->x, j->rows, j->cols, j->cols, j->lengths, j->k, ith, p->nth, j->idx, j->val); break;
    case 1: st = skv_misa_topk_slice(w, j->q, j->keys, j->pooled, j->mp, j->k, ith, p->nth, j->idx, j->val); break;
    case 2: st = skv_hisa_topk_slice(w, j->q, j->keys, j->pooled, j->hp, j->k, ith, p->nth, j->idx, j->val); break;
    case 3: st = skv_sparse_attention_slice(w, j->b, ith, p->nth, j->out, j->mx, j->lse); break;
    case 4: st = skv_store_gather_slice(w, j->s, j->sel, j->go, ith, p->nth, NULL); break;
    case 5:
        if (j->prepare) {
            if (ith == 0)
                p->status[0][1] = skv_kcache_misa_prepare(j->cache, 0, 0, j->q, j->mp);
            pthread_barrier_wait(&p->barrier);
        }
        st = skv_kcache_misa_topk_slice(w, j->cache, 0, 0, j->q, j->mp, j->k, ith, p->nth, j->idx, j->val);
        break;
    case 6: st = skv_kcache_hisa_topk_slice(w, j->cache, 0, 0, j->q, j->hp, j->k, ith, p->nth, j->idx, j->val); break;
    }
    p->status[ith][0] = st;
}

/* Runs the job for nth = 1..5; before each run fills the n_out buffers (outs, bytes) with
 * 0x55, after it compares them with want. */
static void check_one(pool *p, one_job *j, int n_out, void *const *outs, const void *const *want,
                      const size_t *bytes, const char *what)
{
    for (int nth = 1; nth <= MAX_NTH; nth++) {
        for (int i = 0; i < n_out; i++)
            memset(outs[i], 0x55, bytes[i]);
        pool_run(p, nth, one_worker, j);
        CHECK(pool_ok(p), "%s nth %d: a slice failed (%s)", what, nth, skv_status_string(p->status[0][0]));
        for (int i = 0; i < n_out; i++)
            CHECK(memcmp(outs[i], want[i], bytes[i]) == 0, "%s nth %d: output %d differs", what, nth, i);
    }
}

static void test_topk_rows(pool *p, skv_context *ctx, rng *r)
{
    static const int64_t rows_[] = {1, 3, 9};
    for (int ri = 0; ri < 3; ri++) {
        const int64_t R = rows_[ri], C = 700;
        const int32_t k = 40;
        float *x = xmalloc((size_t)R * C * 4);
        int64_t *len = xmalloc((size_t)R * 8);
        for (int64_t i = 0; i < R * C; i++)
            x[i] = (float)rng_int(r, -20, 20); /* many ties */
        for (int64_t i = 0; i < R; i++)
            len[i] = rng_int(r, 0, C);
        int32_t *wi = xmalloc((size_t)R * k * 4), *gi = xmalloc((size_t)R * k * 4);
        float *wv = xmalloc((size_t)R * k * 4), *gv = xmalloc((size_t)R * k * 4);
        CHECK_OK(skv_topk_rows(ctx, x, R, C, C, len, k, wi, wv));
        one_job j = {.kind = 0, .x = x, .rows = R, .cols = C, .lengths = len, .k = k, .idx = gi, .val = gv};
        void *outs[] = {gi, gv};
        const void *want[] = {wi, wv};
        const size_t bytes[] = {(size_t)R * k * 4, (size_t)R * k * 4};
        check_one(p, &j, 2, outs, want, bytes, "topk_rows");
        free(x), free(len), free(wi), free(gi), free(wv), free(gv);
    }
}

static void test_router(pool *p, skv_context *ctx, rng *r)
{
    static const int32_t Ts[] = {1, 6};
    for (int ti = 0; ti < 2; ti++)
        for (int variant = 0; variant < 4; variant++) {
            const int32_t T = Ts[ti], H = 16, D = 32, L = 2500, k = 24, chunk = 64;
            idx_data d;
            idx_data_make(&d, r, T, H, D, L, SKV_FP8_E4M3, SKV_FP8_E4M3, FILL_RANDOM, 1 + variant % 2);
            const skv_indexer_query q = idx_query(&d);
            const skv_key_block kb = idx_keys(&d);
            float *sums = xmalloc((size_t)((L + chunk - 1) / chunk) * D * 4);
            CHECK_OK(skv_pool_keys(&kb, chunk, sums));
            const skv_pooled_keys pk = {chunk, sums};
            skv_misa_params mp;
            skv_misa_params_init(&mp);
            mp.heads = 4, mp.block = 256;
            mp.candidates = variant >= 2 ? SKV_CANDIDATES_4K : 0;
            mp.min_length = variant == 1 ? -1 : 0; /* variant 1: gated by the default */
            skv_hisa_params hp;
            skv_hisa_params_init(&hp);
            hp.block = 128, hp.blocks = 4;
            hp.min_length = variant == 1 ? -1 : 0;
            int32_t *wi = xmalloc((size_t)T * k * 4), *gi = xmalloc((size_t)T * k * 4);
            float *wv = xmalloc((size_t)T * k * 4), *gv = xmalloc((size_t)T * k * 4);
            void *outs[] = {gi, gv};
            const void *want[] = {wi, wv};
            const size_t bytes[] = {(size_t)T * k * 4, (size_t)T * k * 4};
            char what[64];
            CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, k, wi, wv));
            one_job j = {.kind = 1, .q = &q, .keys = &kb, .pooled = &pk, .mp = &mp, .hp = &hp, .k = k, .idx = gi, .val = gv};
            snprintf(what, sizeof what, "misa T %d variant %d", T, variant);
            check_one(p, &j, 2, outs, want, bytes, what);
            CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, k, wi, wv));
            j.kind = 2;
            snprintf(what, sizeof what, "hisa T %d variant %d", T, variant);
            check_one(p, &j, 2, outs, want, bytes, what);
            free(sums), free(wi), free(gi), free(wv), free(gv);
            idx_data_free(&d);
        }
}

/* MISA and HISA on a key cache with pooled chunks: the reference on one cache (its memo filled
 * by the OpenMP calls), the slices on a second cache with the same keys, first without the
 * prepare (the memo empty: each worker pools its means), then with it, then after a decode
 * step's appended keys (the memo grown by the prepare). */
static void test_kcache_router(pool *p, skv_context *ctx, rng *r)
{
    static const skv_route_mode routes[] = {SKV_ROUTE_POOLED, SKV_ROUTE_POOLED_MAX, SKV_ROUTE_QNORM, SKV_ROUTE_POOLED};
    int cases = 0;
    for (int ti = 0; ti < 2; ti++)
        for (int variant = 0; variant < 4; variant++) {
            const int32_t T = ti ? 6 : 1, H = 16, D = 32, k = 24;
            const int64_t L = 2600, STEP = 300;
            idx_data d;
            idx_data_make(&d, r, T, H, D, L + STEP, SKV_FP8_E4M3, SKV_F32, FILL_RANDOM, 0);
            skv_kcache_params kp;
            skv_kcache_params_init(&kp);
            kp.head_dim = D, kp.dtype = SKV_FP8_E4M3, kp.page_tokens = 64, kp.pool_chunk = 64;
            kp.lane_copy = variant & 1;
            skv_kcache *ref = NULL, *sl = NULL;
            int32_t seq;
            CHECK_OK(skv_kcache_create(ctx, &kp, &ref));
            CHECK_OK(skv_kcache_create(ctx, &kp, &sl));
            CHECK_OK(skv_kcache_seq_create(ref, &seq));
            CHECK_OK(skv_kcache_seq_create(sl, &seq));
            uint8_t *rows = xmalloc((size_t)(L + STEP) * D);
            float *sc = xmalloc((size_t)(L + STEP) * 4);
            keys_from_f32(SKV_FP8_E4M3, d.k32, L + STEP, D, rows, (uint8_t *)sc);
            skv_misa_params mp;
            skv_misa_params_init(&mp);
            mp.route = routes[variant], mp.heads = 4, mp.block = 256;
            mp.candidates = variant == 3 ? SKV_CANDIDATES_4K : 0;
            mp.min_length = variant == 2 && ti ? -1 : 0; /* one case gated by the default */
            skv_hisa_params hp;
            skv_hisa_params_init(&hp);
            hp.block = 128, hp.blocks = 5, hp.min_length = mp.min_length;
            int32_t *wi = xmalloc((size_t)T * k * 4), *gi = xmalloc((size_t)T * k * 4);
            float *wv = xmalloc((size_t)T * k * 4), *gv = xmalloc((size_t)T * k * 4);
            void *outs[] = {gi, gv};
            const void *want[] = {wi, wv};
            const size_t bytes[] = {(size_t)T * k * 4, (size_t)T * k * 4};
            int32_t pos[6];
            uint16_t wb[6 * 16];
            CHECK_OK(skv_convert(SKV_BF16, wb, SKV_F32, d.w, (int64_t)T * H));
            for (int step = 0; step < 2; step++) {
                const int64_t n0 = step ? L : 0, n = step ? STEP : L, len = n0 + n;
                const skv_key_block kb = {n, D, SKV_FP8_E4M3, rows + n0 * D, sc + n0, NULL};
                CHECK_OK(skv_kcache_append(ref, seq, 0, &kb));
                CHECK_OK(skv_kcache_append(sl, seq, 0, &kb));
                skv_indexer_query q = idx_query(&d);
                if (variant == 1) /* bf16 gates */
                    q.weights = NULL, q.weights_bf16 = wb;
                for (int32_t t = 0; t < T; t++) /* a prefill chunk's tokens see blocks apart */
                    pos[t] = (int32_t)(len - 1 - (T - 1 - t) * 200);
                q.positions = pos;
                char what[96];
                CHECK_OK(skv_kcache_misa_topk(ref, seq, 0, &q, &mp, k, wi, wv));
                one_job j = {.kind = 5, .q = &q, .mp = &mp, .hp = &hp, .k = k, .idx = gi, .val = gv, .cache = sl};
                for (j.prepare = 0; j.prepare < 2; j.prepare++) {
                    snprintf(what, sizeof what, "kcache misa T %d variant %d step %d prepare %d", T, variant, step, j.prepare);
                    check_one(p, &j, 2, outs, want, bytes, what);
                }
                CHECK_OK(skv_kcache_hisa_topk(ref, seq, 0, &q, &hp, k, wi, wv));
                j.kind = 6;
                snprintf(what, sizeof what, "kcache hisa T %d variant %d step %d", T, variant, step);
                check_one(p, &j, 2, outs, want, bytes, what);
            }
            skv_kcache_destroy(ref), skv_kcache_destroy(sl);
            free(rows), free(sc), free(wi), free(gi), free(wv), free(gv);
            idx_data_free(&d);
            cases++;
        }
    printf("key-cache misa/hisa slices: %d cases x 2 steps x nth 1..%d\n", cases, MAX_NTH);
}

static void test_attention(pool *p, skv_context *ctx, rng *r)
{
    static const int32_t hkv_[] = {1, 2, 4};
    for (int hi = 0; hi < 3; hi++)
        for (int dt = 0; dt < 2; dt++) {
            const int32_t T = 3, Hkv = hkv_[hi], Hq = 8, kd = 64, vd = 48;
            const int64_t R = 900;
            const skv_dtype t = dt ? SKV_BF16 : SKV_F32;
            const size_t es = skv_dtype_size(t);
            float *q32 = xmalloc((size_t)T * Hq * kd * 4), *k32 = xmalloc((size_t)R * kd * 4), *v32 = xmalloc((size_t)R * vd * 4);
            for (size_t i = 0; i < (size_t)T * Hq * kd; i++) q32[i] = (float)rng_uniform(r, -1, 1);
            for (size_t i = 0; i < (size_t)R * kd; i++) k32[i] = (float)rng_uniform(r, -1, 1);
            for (size_t i = 0; i < (size_t)R * vd; i++) v32[i] = (float)rng_uniform(r, -1, 1);
            void *q = xmalloc((size_t)T * Hq * kd * es), *kk = xmalloc((size_t)R * kd * es), *vv = xmalloc((size_t)R * vd * es);
            skv_convert(t, q, SKV_F32, q32, (int64_t)T * Hq * kd);
            skv_convert(t, kk, SKV_F32, k32, R * kd);
            skv_convert(t, vv, SKV_F32, v32, R * vd);
            int32_t qpos[3] = {500, 700, 899}, *kpos = xmalloc((size_t)R * 4), len[3 * 4];
            int64_t start[3 * 4];
            for (int64_t i = 0; i < R; i++)
                kpos[i] = (int32_t)i;
            for (int i = 0; i < T * Hkv; i++) {
                start[i] = rng_int(r, 0, R - 1);
                len[i] = (int32_t)rng_int(r, 0, R - start[i]); /* long lists split into segments */
            }
            const skv_attn_batch b = {sizeof b, T, Hq, Hkv, kd, vd, t, 0.125f, 1, q, qpos, R, kk, vv, kpos, start, len};
            const size_t no = (size_t)T * Hq * vd, nm = (size_t)T * Hq;
            float *wo = xmalloc(no * 4), *wm = xmalloc(nm * 4), *wl = xmalloc(nm * 4);
            float *go = xmalloc(no * 4), *gm = xmalloc(nm * 4), *gl = xmalloc(nm * 4);
            CHECK_OK(skv_sparse_attention(ctx, &b, wo, wm, wl));
            one_job j = {.kind = 3, .b = &b, .out = go, .mx = gm, .lse = gl};
            void *outs[] = {go, gm, gl};
            const void *want[] = {wo, wm, wl};
            const size_t bytes[] = {no * 4, nm * 4, nm * 4};
            check_one(p, &j, 3, outs, want, bytes, dt ? "attention bf16" : "attention f32");
            free(q32), free(k32), free(v32), free(q), free(kk), free(vv), free(kpos);
            free(wo), free(wm), free(wl), free(go), free(gm), free(gl);
        }
}

static void test_gather(pool *p, skv_context *ctx, rng *r)
{
    skv_store_params sp;
    skv_store_params_init(&sp);
    sp.n_kv_heads = 3, sp.k_dim = 16, sp.v_dim = 8, sp.dtype = SKV_BF16, sp.n_window = 32, sp.hot_pages = 0;
    skv_store *s = NULL;
    CHECK_OK(skv_store_create(ctx, &sp, &s));
    int32_t seq;
    CHECK_OK(skv_store_seq_create(s, &seq));
    enum { N = 900 };
    float *k = xmalloc((size_t)N * 3 * 16 * 4), *v = xmalloc((size_t)N * 3 * 8 * 4);
    int32_t *pos = xmalloc(N * 4);
    for (size_t i = 0; i < (size_t)N * 3 * 16; i++) k[i] = (float)rng_uniform(r, -1, 1);
    for (size_t i = 0; i < (size_t)N * 3 * 8; i++) v[i] = (float)rng_uniform(r, -1, 1);
    for (int i = 0; i < N; i++) pos[i] = 2 * i + 1;
    const skv_store_rows rows = {N, SKV_F32, k, v, pos};
    CHECK_OK(skv_store_append(s, seq, 0, &rows));
    skv_store_sel *sel = NULL;
    CHECK_OK(skv_store_sel_create(s, &sel));
    float qv[6 * 16];
    for (int i = 0; i < 6 * 16; i++) qv[i] = (float)rng_uniform(r, -1, 1);
    skv_store_query qq;
    skv_store_query_init(&qq);
    qq.n_q_heads = 6, qq.q = qv, qq.budget = 200;
    CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
    skv_store_sel_info si = {.struct_size = sizeof si};
    CHECK_OK(skv_store_sel_info_get(sel, &si));
    const int64_t R = si.n_tokens + 2;
    for (int mode = 0; mode < 4; mode++) { /* order x (store dtype, f32) */
        const int order = mode & 1;
        const skv_dtype dt = mode & 2 ? SKV_F32 : SKV_BF16;
        const size_t es = skv_dtype_size(dt);
        uint8_t *wk = xmalloc((size_t)R * 16 * es), *wv = xmalloc((size_t)R * 8 * es), *gk = xmalloc((size_t)R * 16 * es), *gv = xmalloc((size_t)R * 8 * es);
        int32_t *wp = xmalloc((size_t)R * 4), *gp = xmalloc((size_t)R * 4), wl[3], gl[3];
        int64_t ws[3], gs[3];
        memset(wk, 0x55, (size_t)R * 16 * es), memset(wv, 0x55, (size_t)R * 8 * es), memset(wp, 0x55, (size_t)R * 4);
        const skv_store_gather_out wo = {sizeof wo, dt, order, 2, R - 2, wk, wv, wp, ws, wl};
        CHECK_OK(skv_store_gather(s, sel, &wo, NULL));
        const skv_store_gather_out go = {sizeof go, dt, order, 2, R - 2, gk, gv, gp, gs, gl};
        one_job j = {.kind = 4, .s = s, .sel = sel, .go = &go};
        void *outs[] = {gk, gv, gp, gs, gl};
        const void *want[] = {wk, wv, wp, ws, wl};
        const size_t bytes[] = {(size_t)R * 16 * es, (size_t)R * 8 * es, (size_t)R * 4, sizeof ws, sizeof wl};
        check_one(p, &j, 5, outs, want, bytes, order ? "gather positions" : "gather pages");
        free(wk), free(wv), free(gk), free(gv), free(wp), free(gp);
    }
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    free(k), free(v), free(pos);
}

static void test_bad_args(skv_context *w)
{
    float x[4] = {1, 2, 3, 4};
    int32_t idx[2];
    CHECK_STATUS(skv_topk_rows_slice(w, x, 1, 4, 4, NULL, 2, 1, 1, idx, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_topk_rows_slice(w, x, 1, 4, 4, NULL, 2, -1, 2, idx, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_topk_rows_slice(w, x, 1, 4, 4, NULL, 2, 0, 0, idx, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_topk_rows_slice(NULL, x, 1, 4, 4, NULL, 2, 0, 1, idx, NULL), SKV_ERR_INVALID_ARG);
    int64_t bad_len[1] = {5};
    CHECK_STATUS(skv_topk_rows_slice(w, x, 1, 4, 4, bad_len, 2, 0, 2, idx, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_topk_rows_slice(w, x, 1, 4, 4, bad_len, 2, 1, 2, idx, NULL), SKV_ERR_INVALID_ARG);
    CHECK(skv_topk_part_bytes(1, 4, SKV_SLICE_MAX_WORKERS + 1) == 0 && skv_topk_part_bytes(-1, 4, 1) == 0 &&
              skv_topk_part_bytes(3, 4, 0) == 0 && skv_topk_part_bytes(3, 4, 2) == 3 * 4 * 2 * 8,
          "part bytes limits");
    CHECK_STATUS(skv_topk_merge_slice(x, 1, 2, 0, SKV_SLICE_MAX_WORKERS + 1, idx, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_topk_merge_slice(NULL, 1, 2, 0, 1, idx, NULL), SKV_ERR_INVALID_ARG);
    const skv_indexer_query q = {1, 1, 4, SKV_Q8_0, x, NULL, x, NULL}; /* a key dtype only */
    const skv_key_block kb = {1, 4, SKV_F16, x, NULL};
    uint64_t part[8]; /* aligned for the (index, score) pairs */
    CHECK_STATUS(skv_indexer_topk_slice(w, &q, &kb, 2, 0, 1, part), SKV_ERR_UNSUPPORTED);
    /* host pages: the slice's own checks, then skv_paged_topk's */
    const skv_indexer_query qf = {1, 1, 4, SKV_F32, x, NULL, x, NULL};
    const int32_t table[1] = {0}, lens[1] = {4};
    float pool4[16];
    for (int i = 0; i < 16; i++)
        pool4[i] = (float)(i % 5);
    const skv_paged_keys pk = {4, SKV_F32, 4, pool4, 1, sizeof pool4, 0};
    const skv_paged_batch pb = {1, table, 1, lens, NULL};
    CHECK_OK(skv_paged_topk_slice(w, &pk, &pb, &qf, 2, 0, 1, part));
    CHECK_STATUS(skv_paged_topk_slice(w, &pk, &pb, &qf, 2, 0, SKV_SLICE_MAX_WORKERS + 1, part), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_paged_topk_slice(w, &pk, &pb, &qf, 2, 2, 2, part), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_paged_topk_slice(w, &pk, &pb, &qf, 2, 0, 1, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_paged_topk_slice(w, &pk, &pb, &qf, SKV_TOPK_MAX_K + 1, 0, 1, part), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_paged_topk_slice(NULL, &pk, &pb, &qf, 2, 0, 1, part), SKV_ERR_INVALID_ARG);
    const int32_t bad_table[1] = {1}; /* past the pool */
    const skv_paged_batch bad_pb = {1, bad_table, 1, lens, NULL};
    CHECK_STATUS(skv_paged_topk_slice(w, &pk, &bad_pb, &qf, 2, 0, 1, part), SKV_ERR_INVALID_ARG);
    /* the key cache's MISA / HISA slices and the prepare */
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = 4, kp.dtype = SKV_F32, kp.page_tokens = 4; /* no pooled sums */
    skv_kcache *c = NULL;
    int32_t seq;
    CHECK_OK(skv_kcache_create(w, &kp, &c));
    CHECK_OK(skv_kcache_seq_create(c, &seq));
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.heads = 1, mp.block = 4, mp.min_length = 0;
    skv_hisa_params hp;
    skv_hisa_params_init(&hp);
    hp.block = 4, hp.min_length = 0;
    float sc[2];
    CHECK_STATUS(skv_kcache_misa_topk_slice(w, NULL, seq, 0, &qf, &mp, 2, 0, 1, idx, sc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_misa_topk_slice(w, c, seq + 1, 0, &qf, &mp, 2, 0, 1, idx, sc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_misa_topk_slice(w, c, seq, 1, &qf, &mp, 2, 0, 1, idx, sc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_misa_topk_slice(w, c, seq, 0, &qf, &mp, 2, 1, 1, idx, sc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_hisa_topk_slice(w, c, seq, 0, &qf, NULL, 2, 0, 1, idx, sc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_misa_prepare(NULL, seq, 0, &qf, &mp), SKV_ERR_INVALID_ARG);
    mp.heads = 2; /* more than the query's heads */
    CHECK_STATUS(skv_kcache_misa_prepare(c, seq, 0, &qf, &mp), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_misa_topk_slice(w, c, seq, 0, &qf, &mp, 2, 0, 1, idx, sc), SKV_ERR_INVALID_ARG);
    mp.heads = 1;
    /* without pooled sums: nothing to prepare; the routed pass needs them (STATE), as
       skv_kcache_misa_topk */
    const skv_key_block kb4 = {4, 4, SKV_F32, pool4, NULL, NULL};
    CHECK_OK(skv_kcache_append(c, seq, 0, &kb4));
    CHECK_OK(skv_kcache_misa_prepare(c, seq, 0, &qf, &mp));
    float q2v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const skv_indexer_query q2b = {1, 2, 4, SKV_F32, q2v, NULL, q2v, NULL}; /* h < H: routed */
    CHECK_STATUS(skv_kcache_misa_topk(c, seq, 0, &q2b, &mp, 2, idx, sc), SKV_ERR_STATE);
    CHECK_STATUS(skv_kcache_misa_topk_slice(w, c, seq, 0, &q2b, &mp, 2, 0, 1, idx, sc), SKV_ERR_STATE);
    skv_kcache_destroy(c);
}

int main(void)
{
    rng r = {2026};
    for (int li = 0; li < N_LEVELS; li++) {
        const level *lv = &all_levels[li];
        if (!level_available(lv))
            continue;
        printf("level %s\n", lv->name);
        skv_context *ctx = ctx_new(lv->mask, 4); /* the OpenMP reference */
        pool p;
        for (int i = 0; i < MAX_NTH; i++)
            p.wctx[i] = ctx_new(lv->mask, 4); /* n_threads is ignored by slices */
        test_indexer(&p, ctx, &r);
        test_indexer_v4(&p, ctx, &r);
        test_paged(&p, ctx, &r);
        test_topk_rows(&p, ctx, &r);
        test_router(&p, ctx, &r);
        test_kcache_router(&p, ctx, &r);
        test_attention(&p, ctx, &r);
        test_gather(&p, ctx, &r);
        if (li == 0)
            test_bad_args(p.wctx[0]);
        for (int i = 0; i < MAX_NTH; i++)
            skv_context_destroy(p.wctx[i]);
        skv_context_destroy(ctx);
    }
    return test_summary("slices");
}
