/* Concurrency: the documented model (a context and its objects used by one thread at a time,
 * context-free functions thread-safe) exercised from several host threads at once, and the
 * kernels called from inside a host's OpenMP parallel region. Each thread owns a context, a key
 * cache and a store and runs the same workload (appends, a fork and removal, paged and
 * contiguous top-k, a store selection and gather, sparse attention); every result must equal
 * the one computed first on the main thread alone, bit for bit. Run under ThreadSanitizer by
 * tools/tsan.sh; in the default suite it checks the results. */
#include <pthread.h>

#include "common.h"
#ifdef _OPENMP
#include <omp.h>
#endif

enum { THREADS = 4, T = 3, H = 4, D = 32, L = 700, K = 24, SH = 2, SD = 16, SN = 300 };

typedef struct result {
    int32_t idx[T * K], pidx[T * K];
    float val[T * K], pval[T * K], scores[T * L];
    int32_t gpos[SH * SN];
    float gk[SH * SN * SD], attn[T * H * SD];
    int64_t grows;
    int failed; /* calls that did not return SKV_OK */
} result;

/* The test's CHECK counters are not thread-safe: workers count their failures in their result. */
#define RUN(expr) (o->failed += (expr) != SKV_OK)

static float qf[T * H * D], wf[T * H], kf[L * D], sk[SN * SH * SD], sv[SN * SH * SD], sq[SH * SD];
static int32_t spos[SN];

static void inputs(void)
{
    rng r = {2024};
    for (int i = 0; i < T * H * D; i++)
        qf[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < T * H; i++)
        wf[i] = (float)rng_uniform(&r, 0, 1);
    for (int i = 0; i < L * D; i++)
        kf[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < SN * SH * SD; i++)
        sk[i] = (float)rng_uniform(&r, -1, 1), sv[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < SH * SD; i++)
        sq[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < SN; i++)
        spos[i] = 2 * i;
}

/* The whole workload on one context; `threads` OpenMP threads inside the library. */
static void workload(int threads, result *o)
{
    memset(o, 0, sizeof *o);
    skv_context *ctx = ctx_new(SKV_CPU_ALL, threads);
    const skv_indexer_query q = {T, H, D, SKV_F32, qf, NULL, wf, NULL};
    const skv_key_block kb = {L, D, SKV_F32, kf, NULL};
    RUN(skv_indexer_scores(ctx, &q, &kb, o->scores));
    RUN(skv_indexer_topk(ctx, &q, &kb, K, o->idx, o->val));

    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.n_layers = 2, kp.head_dim = D, kp.page_tokens = 64, kp.pool_chunk = 16;
    skv_kcache *c = NULL;
    int32_t a = -1, b = -1;
    RUN(skv_kcache_create(ctx, &kp, &c));
    RUN(skv_kcache_seq_create(c, &a));
    RUN(skv_kcache_append(c, a, 1, &kb));
    RUN(skv_kcache_seq_fork(c, a, &b));
    RUN(skv_kcache_seq_remove(c, b, 100, 150));
    RUN(skv_kcache_topk(c, a, 1, &q, K, o->pidx, o->pval));
    skv_kcache_destroy(c);

    skv_store_params sp;
    skv_store_params_init(&sp);
    sp.n_kv_heads = SH, sp.k_dim = SD, sp.v_dim = SD, sp.dtype = SKV_F32, sp.page_tokens = 8;
    sp.n_sink = 4, sp.n_window = 16, sp.hot_pages = 64, sp.bulk_min = 64;
    skv_store *s = NULL;
    skv_store_sel *sel = NULL;
    int32_t seq = -1;
    RUN(skv_store_create(ctx, &sp, &s));
    RUN(skv_store_sel_create(s, &sel));
    RUN(skv_store_seq_create(s, &seq));
    const skv_store_rows rows = {SN, SKV_F32, sk, sv, spos};
    RUN(skv_store_append(s, seq, 0, &rows));
    skv_store_query sq0;
    skv_store_query_init(&sq0);
    sq0.n_q_heads = SH, sq0.q = sq, sq0.budget = 96;
    RUN(skv_store_select(s, seq, 0, &sq0, sel));
    RUN(skv_store_fetch(s, sel));
    static __thread float gv[SH * SN * SD];
    int64_t ls[SH];
    int32_t ll[SH];
    const skv_store_gather_out go = {sizeof go, SKV_F32, SKV_GATHER_POSITIONS, 0, SH * SN, o->gk, gv, o->gpos, ls, ll};
    RUN(skv_store_gather(s, sel, &go, &o->grows));

    /* attention of the first T tokens' queries (as H heads over SH KV heads) on the gathered rows */
    int64_t lstart[T * SH];
    int32_t llen[T * SH];
    for (int t = 0; t < T; t++)
        for (int h = 0; h < SH; h++)
            lstart[t * SH + h] = ls[h], llen[t * SH + h] = ll[h];
    const skv_attn_batch ab = {sizeof ab, T, H, SH, SD, SD, SKV_F32, 0.25f, 0, qf, NULL, o->grows, o->gk, gv, NULL,
                               lstart, llen};
    RUN(skv_sparse_attention(ctx, &ab, o->attn, NULL, NULL));
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    skv_context_destroy(ctx);
}

static result want;

typedef struct worker {
    result r;
    int mismatches; /* repetitions whose results differ from `want` */
} worker;

static void *thread_main(void *arg)
{
    worker *w = arg;
    for (int rep = 0; rep < 3; rep++) {
        workload(1 + rep % 2, &w->r);
        w->mismatches += memcmp(&w->r, &want, sizeof want) != 0;
    }
    return NULL;
}

static void compare(const result *got, const char *what)
{
    CHECK(!memcmp(got, &want, sizeof want), "%s: results differ from the single-threaded run", what);
}

int main(void)
{
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    inputs();
    workload(1, &want);
    CHECK(want.failed == 0 && want.grows > 0 && want.idx[0] >= 0, "the workload failed (%d calls)", want.failed);

    /* host threads, one context each */
    static worker got[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&th[i], NULL, thread_main, &got[i]) == 0, "pthread_create");
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(got[i].mismatches == 0, "host thread %d: %d of 3 runs differ from the single-threaded one", i,
              got[i].mismatches);
    }

#ifdef _OPENMP
    /* inside a host's parallel region: each team thread its own context; the library's kernels
       then run on the calling thread only */
    static result team[THREADS];
#pragma omp parallel num_threads(THREADS)
    workload(2, &team[omp_get_thread_num()]);
    for (int i = 0; i < THREADS; i++)
        compare(&team[i], "OpenMP team thread");
#else
    printf("skip: built without OpenMP, no parallel-region run\n");
#endif
    return test_summary("test_threads");
}
