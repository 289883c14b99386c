/* A host with its own thread pool driving a decode step through sparsekv's slices, the way a
 * ggml-style engine runs custom operations: each operation is one function called on every
 * worker with (ith, nth), and the pool synchronises between operations (ggml does so between
 * graph nodes). No OpenMP team runs inside the library here.
 *
 * One layer of a DeepSeek-V3.2-style decode step, per generated token:
 *   host:   append the token's indexer key to the paged key cache, its K/V row to the host's KV
 *   op 1:   skv_kcache_topk_slice      (phase one: each worker's range of the keys)
 *   op 2:   skv_topk_merge_slice       (phase two, after the pool's barrier)
 *   op 3:   gather the selected K/V rows (the host's own copy loop, split by rows)
 *   op 4:   skv_sparse_attention_slice (each worker's (token, KV head) lists)
 * and the same selection by MISA (routed heads), whose key-cache form remembers block means in
 * the cache: the host thread fills them (skv_kcache_misa_prepare) between operations, then
 *   op 5:   skv_kcache_misa_topk_slice (reads them only; a decode token runs on one worker)
 * Every step is checked against the OpenMP entry points (skv_kcache_topk, skv_sparse_attention,
 * skv_kcache_misa_topk) on a context of their own: the outputs must be equal bit for bit (exit 1
 * otherwise).
 *
 *   thread_pool [context_tokens] [decode_steps] [threads] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sparsekv/sparsekv.h>

enum { H = 16, D = 64, TOPK = 256, HQ = 16, HKV = 4, KD = 64, VD = 64, MAX_THREADS = 64 };

static uint64_t rng_state = 7;
static float frand(void) /* uniform [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * 0x1p-24 * 2 - 1);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* ---- the pool: the main thread is worker 0; run() calls op on every worker, then waits ------ */

typedef void (*op_fn)(int ith, int nth, void *user);

typedef struct pool {
    int nth, quit;
    pthread_t th[MAX_THREADS];
    pthread_barrier_t go, done;
    op_fn op;
    void *user;
} pool;

typedef struct worker_arg { pool *p; int ith; } worker_arg;
static worker_arg args[MAX_THREADS];

static void *worker_loop(void *a)
{
    const worker_arg *w = a;
    for (;;) {
        pthread_barrier_wait(&w->p->go);
        if (w->p->quit)
            return NULL;
        w->p->op(w->ith, w->p->nth, w->p->user);
        pthread_barrier_wait(&w->p->done);
    }
}

static void pool_run(pool *p, op_fn op, void *user)
{
    p->op = op, p->user = user;
    pthread_barrier_wait(&p->go);
    op(0, p->nth, user);
    pthread_barrier_wait(&p->done);
}

static void pool_start(pool *p, int nth)
{
    p->nth = nth, p->quit = 0;
    pthread_barrier_init(&p->go, NULL, (unsigned)nth);
    pthread_barrier_init(&p->done, NULL, (unsigned)nth);
    for (int i = 1; i < nth; i++) {
        args[i] = (worker_arg){p, i};
        if (pthread_create(&p->th[i], NULL, worker_loop, &args[i]) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            exit(1);
        }
    }
}

static void pool_stop(pool *p)
{
    p->quit = 1;
    pthread_barrier_wait(&p->go);
    for (int i = 1; i < p->nth; i++)
        pthread_join(p->th[i], NULL);
    pthread_barrier_destroy(&p->go);
    pthread_barrier_destroy(&p->done);
}

/* ---- the step's state and its operations ------------------------------------------------------- */

typedef struct step {
    skv_context *wctx[MAX_THREADS]; /* one per worker, as slice.h asks */
    skv_status status[MAX_THREADS];
    skv_kcache *cache;
    int32_t seq;
    skv_indexer_query q;            /* the token's indexer query */
    void *part;                     /* phase-one candidates, skv_topk_part_bytes */
    int32_t idx[TOPK];              /* the selection */
    skv_misa_params mp;             /* MISA's selection of the same token */
    int32_t misa_idx[TOPK];
    const float *kv_k, *kv_v;       /* the host's KV: [tokens][HKV][KD], [tokens][HKV][VD] */
    float *gk, *gv;                 /* gathered rows, [HKV][TOPK][KD] and [HKV][TOPK][VD] */
    int32_t gpos[HKV * TOPK], n_sel;
    skv_attn_batch b;
    float out[HQ * VD];
} step;

static void op_topk(int ith, int nth, void *u)
{
    step *s = u;
    s->status[ith] = skv_kcache_topk_slice(s->wctx[ith], s->cache, s->seq, 0, &s->q, TOPK, ith, nth, s->part);
}

static void op_misa(int ith, int nth, void *u)
{
    step *s = u;
    s->status[ith] = skv_kcache_misa_topk_slice(s->wctx[ith], s->cache, s->seq, 0, &s->q, &s->mp,
                                                TOPK, ith, nth, s->misa_idx, NULL);
}

static void op_merge(int ith, int nth, void *u)
{
    step *s = u;
    s->status[ith] = skv_topk_merge_slice(s->part, 1, TOPK, ith, nth, s->idx, NULL);
}

static void op_gather(int ith, int nth, void *u) /* the host's own rows: one list per KV head */
{
    step *s = u;
    const int rows = HKV * s->n_sel, r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    for (int r = r0; r < r1; r++) {
        const int h = r / s->n_sel, tok = s->idx[r % s->n_sel];
        memcpy(s->gk + (size_t)r * KD, s->kv_k + ((size_t)tok * HKV + h) * KD, KD * 4);
        memcpy(s->gv + (size_t)r * VD, s->kv_v + ((size_t)tok * HKV + h) * VD, VD * 4);
        s->gpos[r] = tok;
    }
    s->status[ith] = SKV_OK;
}

static void op_attention(int ith, int nth, void *u)
{
    step *s = u;
    s->status[ith] = skv_sparse_attention_slice(s->wctx[ith], &s->b, ith, nth, s->out, NULL, NULL);
}

static int all_ok(const step *s, int nth, const char *what)
{
    for (int i = 0; i < nth; i++)
        if (s->status[i] != SKV_OK) {
            fprintf(stderr, "%s, worker %d: %s\n", what, i, skv_status_string(s->status[i]));
            return 0;
        }
    return 1;
}

int main(int argc, char **argv)
{
    const int L0 = argc > 1 ? atoi(argv[1]) : 4096, steps = argc > 2 ? atoi(argv[2]) : 4;
    const int nth = argc > 3 ? atoi(argv[3]) : 4;
    if (L0 < 1 || steps < 1 || nth < 1 || nth > MAX_THREADS) {
        fprintf(stderr, "usage: thread_pool [context_tokens >= 1] [steps >= 1] [threads 1..%d]\n", MAX_THREADS);
        return 2;
    }
    const int L = L0 + steps;
    static step s;
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 1; /* the workers' contexts: slices never start threads anyway */
    for (int i = 0; i < nth; i++)
        if (skv_context_create(&cp, &s.wctx[i]) != SKV_OK)
            return 1;
    skv_context *ref = NULL; /* the cache's own, and the OpenMP entry points' for the check */
    if (skv_context_create(NULL, &ref) != SKV_OK)
        return 1;

    /* the host's model state: indexer keys in a paged fp8 cache, K/V rows in its own arrays */
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = D, kp.dtype = SKV_FP8_E4M3, kp.page_tokens = 64;
    kp.pool_chunk = 64; /* MISA's pooled block keys */
    skv_misa_params_init(&s.mp);
    s.mp.heads = 4, s.mp.block = 512, s.mp.min_length = 0; /* routed at any length */
    if (skv_kcache_create(ref, &kp, &s.cache) != SKV_OK || skv_kcache_seq_create(s.cache, &s.seq) != SKV_OK)
        return 1;
    float *ikeys = malloc((size_t)L * D * 4), *kv_k = malloc((size_t)L * HKV * KD * 4);
    float *kv_v = malloc((size_t)L * HKV * VD * 4);
    s.gk = malloc((size_t)HKV * TOPK * KD * 4), s.gv = malloc((size_t)HKV * TOPK * VD * 4);
    s.part = malloc(skv_topk_part_bytes(1, TOPK, nth));
    if (!ikeys || !kv_k || !kv_v || !s.gk || !s.gv || !s.part)
        return 1;
    for (size_t i = 0; i < (size_t)L * D; i++)
        ikeys[i] = frand();
    for (size_t i = 0; i < (size_t)L * HKV * KD; i++)
        kv_k[i] = frand();
    for (size_t i = 0; i < (size_t)L * HKV * VD; i++)
        kv_v[i] = frand();
    s.kv_k = kv_k, s.kv_v = kv_v;
    const skv_key_block prompt = {L0, D, SKV_F32, ikeys, NULL}; /* the prefill's keys */
    if (skv_kcache_append(s.cache, s.seq, 0, &prompt) != SKV_OK)
        return 1;

    pool p;
    pool_start(&p, nth);
    float q[H * D], w[H], attn_q[HQ * KD], want_out[HQ * VD];
    int32_t want_idx[TOPK], want_misa[TOPK], pos;
    int bad = 0;
    double t_pool = 0, t_omp = 0;
    for (int t = 0; t < steps && !bad; t++) {
        /* host: the new token's key and query (a real engine computes them from its weights) */
        const int32_t tok = L0 + t;
        const skv_key_block nk = {1, D, SKV_F32, ikeys + (size_t)tok * D, NULL};
        if (skv_kcache_append(s.cache, s.seq, 0, &nk) != SKV_OK)
            return 1;
        for (int i = 0; i < H * D; i++)
            q[i] = frand();
        for (int i = 0; i < H; i++)
            w[i] = frand();
        for (int i = 0; i < HQ * KD; i++)
            attn_q[i] = frand();
        pos = tok;
        s.q = (skv_indexer_query){1, H, D, SKV_F32, q, NULL, w, &pos};

        double t0 = now_ms();
        pool_run(&p, op_topk, &s);
        bad |= !all_ok(&s, nth, "top-k phase one");
        pool_run(&p, op_merge, &s);
        bad |= !all_ok(&s, nth, "top-k merge");
        s.n_sel = 0;
        while (s.n_sel < TOPK && s.idx[s.n_sel] >= 0)
            s.n_sel++;
        pool_run(&p, op_gather, &s);
        int64_t starts[HKV];
        int32_t lens[HKV];
        for (int h = 0; h < HKV; h++)
            starts[h] = (int64_t)h * s.n_sel, lens[h] = s.n_sel;
        s.b = (skv_attn_batch){sizeof s.b, 1, HQ, HKV, KD, VD, SKV_F32, 0.125f, 1, attn_q, &pos,
                               (int64_t)HKV * s.n_sel, s.gk, s.gv, s.gpos, starts, lens};
        pool_run(&p, op_attention, &s);
        bad |= !all_ok(&s, nth, "attention");
        t_pool += now_ms() - t0;
        if (skv_kcache_misa_prepare(s.cache, s.seq, 0, &s.q, &s.mp) != SKV_OK)
            return 1; /* one thread, between operations: the workers only read what it fills */
        pool_run(&p, op_misa, &s);
        bad |= !all_ok(&s, nth, "misa");

        /* the same step through the OpenMP entry points */
        t0 = now_ms();
        if (skv_kcache_topk(s.cache, s.seq, 0, &s.q, TOPK, want_idx, NULL) != SKV_OK ||
            skv_sparse_attention(ref, &s.b, want_out, NULL, NULL) != SKV_OK)
            return 1;
        t_omp += now_ms() - t0;
        if (skv_kcache_misa_topk(s.cache, s.seq, 0, &s.q, &s.mp, TOPK, want_misa, NULL) != SKV_OK)
            return 1;
        if (memcmp(want_idx, s.idx, sizeof want_idx) != 0 ||
            memcmp(want_out, s.out, sizeof want_out) != 0 ||
            memcmp(want_misa, s.misa_idx, sizeof want_misa) != 0) {
            fprintf(stderr, "step %d: the pool's result differs from the OpenMP entry points\n", t);
            bad = 1;
        }
    }
    pool_stop(&p);
    printf("%d decode steps at %d tokens, %d pool threads: %.3f ms/step (OpenMP entry points: "
           "%.3f ms/step, timing only); top-%d, attention and MISA %s\n", steps, L0, nth,
           t_pool / steps, t_omp / steps, TOPK, bad ? "DIFFER" : "equal bit for bit");
    skv_kcache_destroy(s.cache);
    for (int i = 0; i < nth; i++)
        skv_context_destroy(s.wctx[i]);
    skv_context_destroy(ref);
    free(ikeys), free(kv_k), free(kv_v), free(s.gk), free(s.gv), free(s.part);
    return bad;
}
