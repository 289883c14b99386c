/* sparsekv-bench-store: the clustered KV store on a 128K-token context of 8 KV heads x 128 dims
 * (bf16 K and V, 32 query heads: GQA 4), one layer, with a 32-layer estimate. JSON Lines with
 * google-benchmark field names; the machine's limits (FMA peaks, triad bandwidth) come first.
 *
 *   sparsekv-bench-store [--quick] [--threads N] [--min-time S] [--ctx N] [--steps N]
 *
 * The context is synthetic but structured like text: after 4 sink tokens, segments of 64-512
 * tokens each on a "topic" (8 of 1024 key directions per head; a third of the segments return
 * to an earlier topic), keys = norm x direction + noise. A decode query mixes 2-3 directions
 * of the current topic, drifts a little every step and changes topic every 100-300 steps.
 *
 * Records: index build (prefill) time and memory overhead; selection latency at several budgets
 * for the index, the Quest baseline and exact page scoring; gather bandwidth against triad;
 * selection + gather + sparse attention against dense attention over the whole context; a
 * 1K-step decode trace (append, select, fetch) with hit rate and bytes moved against bytes
 * selected; attention-mass recall of clustered, Quest and the exact top-k oracle. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench.h"

/* Parallel regions here are many and short (one per call); on a shared machine a spinning
   OpenMP worker that lost its core stalls the next region for a whole time slice. Idle workers
   sleep unless the caller chose otherwise (reported in the machine record). */
static const char *wait_policy(void)
{
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    return getenv("OMP_WAIT_POLICY");
}

enum { HKV = 8, G = 4, HQ = HKV * G, DIM = 128, PAGE = 16, SINKS = 4, WINDOW = 64 };
#define N_CENTERS 1024
#define N_TOPICS 96
#define TOPIC_SIZE 8

static void die(const char *what, skv_status st)
{
    fprintf(stderr, "sparsekv-bench-store: %s: %s\n", what, skv_status_string(st));
    exit(1);
}

#define TRY(what, call)                                                                       \
    do {                                                                                      \
        const skv_status st_ = (call);                                                        \
        if (st_ != SKV_OK)                                                                    \
            die(what, st_);                                                                   \
    } while (0)

typedef struct rng { uint64_t s; } rng;

static uint64_t rnext(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double runif(rng *r, double a, double b) { return a + (b - a) * (double)(rnext(r) >> 11) * 0x1p-53; }
static int64_t rint_(rng *r, int64_t a, int64_t b) { return a + (int64_t)(rnext(r) % (uint64_t)(b - a + 1)); }

static inline float bf2f(uint16_t h)
{
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* ---- the synthetic context ------------------------------------------------------------------- */

typedef struct world {
    int64_t T;
    float *dir;     /* [HKV][N_CENTERS][DIM] unit directions */
    float *common;  /* [HKV][DIM]: what every query shares (the sinks' direction) */
    int32_t *topic; /* [N_TOPICS][TOPIC_SIZE] center ids */
    uint16_t *k, *v; /* [T][HKV][DIM] bf16 */
    int32_t *pos;
    int32_t cur_topic;
    rng r;
} world;

static void token_kv(world *w, int64_t t, int32_t topic)
{
    float row[DIM];
    for (int32_t h = 0; h < HKV; h++) {
        if (t < SINKS) {
            for (int i = 0; i < DIM; i++)
                row[i] = 9.0f * w->common[h * DIM + i];
        } else {
            const int32_t c = w->topic[topic * TOPIC_SIZE + rint_(&w->r, 0, TOPIC_SIZE - 1)];
            const float a = (float)(10.0 * (1.0 + 0.25 * runif(&w->r, -1, 1)));
            const float *d = w->dir + ((size_t)h * N_CENTERS + c) * DIM;
            for (int i = 0; i < DIM; i++)
                row[i] = a * d[i] + (float)runif(&w->r, -0.45, 0.45);
        }
        skv_convert(SKV_BF16, w->k + ((size_t)t * HKV + h) * DIM, SKV_F32, row, DIM);
        for (int i = 0; i < DIM; i++)
            row[i] = (float)runif(&w->r, -1, 1);
        skv_convert(SKV_BF16, w->v + ((size_t)t * HKV + h) * DIM, SKV_F32, row, DIM);
    }
    w->pos[t] = (int32_t)t;
}

static void world_make(world *w, int64_t prefill, int64_t extra)
{
    memset(w, 0, sizeof *w);
    w->r.s = 12345;
    w->T = prefill + extra;
    w->dir = bench_xmalloc((size_t)HKV * N_CENTERS * DIM * 4);
    w->common = bench_xmalloc((size_t)HKV * DIM * 4);
    w->topic = bench_xmalloc((size_t)N_TOPICS * TOPIC_SIZE * 4);
    for (int64_t c = 0; c < (int64_t)HKV * N_CENTERS; c++) {
        double n = 0;
        float *d = w->dir + c * DIM;
        for (int i = 0; i < DIM; i++)
            d[i] = (float)runif(&w->r, -1, 1), n += (double)d[i] * d[i];
        for (int i = 0; i < DIM; i++)
            d[i] /= (float)sqrt(n);
    }
    for (int i = 0; i < HKV * DIM; i++)
        w->common[i] = (float)runif(&w->r, -1, 1) / 6.5f;
    for (int i = 0; i < N_TOPICS * TOPIC_SIZE; i++)
        w->topic[i] = (int32_t)rint_(&w->r, 0, N_CENTERS - 1);
    w->k = bench_xmalloc((size_t)w->T * HKV * DIM * 2);
    w->v = bench_xmalloc((size_t)w->T * HKV * DIM * 2);
    w->pos = bench_xmalloc((size_t)w->T * 4);
    int32_t topic = 0;
    for (int64_t t = 0; t < prefill;) {
        const int64_t len = rint_(&w->r, 64, 512);
        topic = runif(&w->r, 0, 1) < 0.33 && t > 4096 ? topic / 2 : (int32_t)rint_(&w->r, 0, N_TOPICS - 1);
        for (int64_t i = 0; i < len && t < prefill; i++, t++)
            token_kv(w, t, topic);
    }
    w->cur_topic = topic;
}

static void world_free(world *w)
{
    free(w->dir), free(w->common), free(w->topic), free(w->k), free(w->v), free(w->pos);
}

/* The decode query: a drifting mixture of the current topic's directions. */
typedef struct query_gen { float wt[TOPIC_SIZE]; int32_t topic, left; rng r; } query_gen;

static void query_next(world *w, query_gen *g, uint16_t *qb, float *qf)
{
    if (g->left-- <= 0) {
        g->topic = runif(&g->r, 0, 1) < 0.5 ? w->cur_topic : (int32_t)rint_(&g->r, 0, N_TOPICS - 1);
        g->left = (int32_t)rint_(&g->r, 100, 300);
        for (int j = 0; j < TOPIC_SIZE; j++)
            g->wt[j] = j < 3 && runif(&g->r, 0, 1) < 0.8 ? (float)runif(&g->r, 0.3, 1) : 0.0f;
    }
    for (int j = 0; j < TOPIC_SIZE; j++) { /* drift */
        g->wt[j] += (float)runif(&g->r, -0.04, 0.04);
        g->wt[j] = g->wt[j] < 0 ? 0 : g->wt[j];
    }
    for (int32_t h = 0; h < HKV; h++) {
        float base[DIM] = {0};
        double n = 0;
        for (int j = 0; j < TOPIC_SIZE; j++) {
            const float *d = w->dir + ((size_t)h * N_CENTERS + w->topic[g->topic * TOPIC_SIZE + j]) * DIM;
            for (int i = 0; i < DIM; i++)
                base[i] += g->wt[j] * d[i];
        }
        for (int i = 0; i < DIM; i++)
            n += (double)base[i] * base[i];
        const float sc = n > 0 ? (float)(10.0 / sqrt(n)) : 0.0f;
        for (int32_t gq = 0; gq < G; gq++) {
            float *q = qf + ((size_t)h * G + gq) * DIM;
            for (int i = 0; i < DIM; i++)
                q[i] = sc * base[i] + 4.0f * w->common[h * DIM + i] + (float)runif(&g->r, -0.2, 0.2);
        }
    }
    skv_convert(SKV_BF16, qb, SKV_F32, qf, HQ * DIM);
    skv_convert(SKV_F32, qf, SKV_BF16, qb, HQ * DIM); /* the values the kernels see */
}

/* ---- helpers --------------------------------------------------------------------------------- */

static skv_store *store_new(skv_context *ctx, skv_store_layout layout, int64_t hot)
{
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_kv_heads = HKV, p.k_dim = DIM, p.v_dim = DIM, p.dtype = SKV_BF16, p.page_tokens = PAGE;
    p.n_sink = SINKS, p.n_window = WINDOW, p.hot_pages = hot, p.layout = layout;
    p.flags = SKV_STORE_MINMAX;
    skv_store *s;
    TRY("store", skv_store_create(ctx, &p, &s));
    return s;
}

static void record_common(json_line *j, const char *name, const bench_timing *t)
{
    json_begin(j);
    json_str(j, "name", name);
    json_int(j, "iterations", t ? t->iterations : 1);
    json_num(j, "real_time", t ? t->median_ns : 0, 1);
    json_num(j, "cpu_time", t ? t->cpu_ns : 0, 1);
    json_str(j, "time_unit", "ns");
}

typedef struct sel_call {
    skv_store *s;
    int32_t seq;
    skv_store_query *q;
    skv_store_sel *sel;
} sel_call;

static int do_select(void *arg)
{
    sel_call *c = arg;
    return skv_store_select(c->s, c->seq, 0, c->q, c->sel) != SKV_OK;
}

typedef struct gather_call {
    skv_store *s;
    skv_store_sel *sel;
    skv_store_gather_out *o;
} gather_call;

static int do_gather(void *arg)
{
    gather_call *c = arg;
    return skv_store_gather(c->s, c->sel, c->o, NULL) != SKV_OK;
}

typedef struct rot_call {
    skv_store *s;
    skv_store_sel **sel;
    int n, next;
    skv_store_gather_out *o;
} rot_call;

static int do_gather_rot(void *arg)
{
    rot_call *c = arg;
    const int i = c->next;
    c->next = (c->next + 1) % c->n;
    return skv_store_gather(c->s, c->sel[i], c->o, NULL) != SKV_OK;
}

typedef struct attn_call {
    skv_context *ctx;
    skv_attn_batch *b;
    float *out;
} attn_call;

static int do_attn(void *arg)
{
    attn_call *c = arg;
    return skv_sparse_attention(c->ctx, c->b, c->out, NULL, NULL) != SKV_OK;
}

typedef struct pipe_call {
    sel_call *sc;
    gather_call *gc;
    attn_call *ac;
} pipe_call;

static int do_pipe(void *arg)
{
    pipe_call *c = arg;
    return do_select(c->sc) || do_gather(c->gc) || do_attn(c->ac);
}

/* ---- prefill speed against memcpy ------------------------------------------------------------ */

/* One timed prefill of the whole context into store s: a new sequence, one append. Returns the
   seconds; the process CPU seconds go to *cpu, the sequence id to *seq. */
static double prefill_once(skv_store *s, const skv_store_rows *rows, int32_t *seq, double *cpu)
{
    TRY("seq", skv_store_seq_create(s, seq));
    const double t0 = now_s(), c0 = process_cpu_s();
    TRY("prefill", skv_store_append(s, *seq, 0, rows));
    *cpu = process_cpu_s() - c0;
    return now_s() - t0;
}

/* memcpy of the K and V bytes into dst (touched or not), the store's reference speed. */
static double copy_kv(uint8_t *dst, const world *w, size_t half)
{
    const double t0 = now_s();
    memcpy(dst, w->k, half);
    memcpy(dst + half, w->v, half);
    return now_s() - t0;
}

/* Prefill of the whole context (one layer: 8 KV heads x 128, bf16 K and V) into a new store,
   into reserved memory, and in the steady state (the first sequence freed, a second of the
   same length into the same store), positional and clustered, against memcpy of the same bytes
   into touched memory and into fresh memory, all in interleaved rounds. */
static void bench_prefill(json_line *j, const world *w, skv_context *ctx, int rounds,
                          const bench_machine *mach)
{
    const int64_t L = w->T;
    const size_t half = (size_t)L * HKV * DIM * 2, bytes = 2 * half;
    const skv_store_rows rows = {L, SKV_BF16, w->k, w->v, w->pos};
    uint8_t *touched = bench_xmalloc(bytes);
    memset(touched, 1, bytes);
    enum { C_TOUCHED, C_FRESH, C_NEW, C_STEADY = C_NEW + 2, C_RESERVE = C_STEADY + 2,
           C_RESV = C_RESERVE + 2, N_CASES = C_RESV + 2 };
    static const char *case_name[N_CASES] = {"memcpy_touched", "memcpy_fresh",
                                             "new/positional", "new/clustered",
                                             "steady/positional", "steady/clustered",
                                             "reserve_call/positional", "reserve_call/clustered",
                                             "reserved/positional", "reserved/clustered"};
    double *t = bench_xmalloc((size_t)rounds * N_CASES * sizeof *t);
    double *cpu = bench_xmalloc((size_t)rounds * N_CASES * sizeof *cpu);
    memset(cpu, 0, (size_t)rounds * N_CASES * sizeof *cpu);
    int64_t pages[2] = {0, 0};
    double fill[2] = {0, 0};
    for (int r = 0; r < rounds; r++) {
        double *tr = t + (size_t)r * N_CASES, *cr = cpu + (size_t)r * N_CASES;
        tr[C_TOUCHED] = copy_kv(touched, w, half);
        uint8_t *fresh = bench_xmalloc(bytes);
        tr[C_FRESH] = copy_kv(fresh, w, half);
        free(fresh);
        for (int lay = 0; lay < 2; lay++) {
            const skv_store_layout layout = lay ? SKV_STORE_CLUSTERED : SKV_STORE_POSITIONAL;
            skv_store *s = store_new(ctx, layout, 0);
            int32_t a, b;
            tr[C_NEW + lay] = prefill_once(s, &rows, &a, &cr[C_NEW + lay]);
            skv_store_stats st = {.struct_size = sizeof st};
            TRY("stats", skv_store_get_stats(s, &st));
            pages[lay] = st.pages_in_use;
            fill[lay] = (double)st.tokens_stored / ((double)st.pages_in_use * PAGE);
            TRY("free", skv_store_seq_free(s, a));
            tr[C_STEADY + lay] = prefill_once(s, &rows, &b, &cr[C_STEADY + lay]);
            skv_store_destroy(s);
            /* a store whose page memory the host reserved up front, e.g. at engine start-up */
            s = store_new(ctx, layout, 0);
            const double t0 = now_s();
            TRY("reserve", skv_store_reserve(s, pages[lay] + 2 * HKV * (WINDOW / PAGE + 2)));
            tr[C_RESERVE + lay] = now_s() - t0;
            tr[C_RESV + lay] = prefill_once(s, &rows, &a, &cr[C_RESV + lay]);
            skv_store_destroy(s);
        }
    }
    char name[160];
    double med[N_CASES];
    for (int c = 0; c < N_CASES; c++) {
        double v[64], ratio[64], cv[64];
        for (int r = 0; r < rounds; r++) {
            v[r] = t[(size_t)r * N_CASES + c];
            cv[r] = cpu[(size_t)r * N_CASES + c];
            ratio[r] = t[(size_t)r * N_CASES + C_TOUCHED] / v[r];
        }
        med[c] = bench_median(v, (size_t)rounds);
        snprintf(name, sizeof name, "store_prefill/%s/L%lld/H%d/D%d/bf16", case_name[c],
                 (long long)L, HKV, DIM);
        bench_timing bt = {rounds, med[c] * 1e9, med[c] * 1e9, med[c] * 1e9,
                           bench_median(cv, (size_t)rounds) * 1e9};
        record_common(j, name, &bt);
        json_int(j, "bytes", (int64_t)bytes);
        json_num(j, "gbps", (double)bytes / (med[c] * 1e9), 3);
        json_ratio(j, "ratio_to_memcpy_touched", bench_median(ratio, (size_t)rounds));
        json_ratio(j, "ratio_to_stream", (double)bytes / (med[c] * 1e9) / mach->stream_gbps);
        const int lay = c >= C_NEW ? (c - C_NEW) % 2 : -1;
        if (lay >= 0 && !(c == C_RESERVE || c == C_RESERVE + 1)) {
            json_int(j, "pages", pages[lay]);
            json_ratio(j, "page_fill", fill[lay]);
            json_num(j, "estimate_61_layers_s", 61 * med[c], 2);
        }
        if (c >= C_STEADY && c < C_RESERVE)
            json_bool(j, lay ? "target_0.1_met" : "target_0.3_met",
                      med[c] * (lay ? 0.1 : 0.3) <= med[C_TOUCHED] ? 1 : 0);
        if (c >= C_RESV)
            json_ratio(j, "over_steady", med[c] / med[C_STEADY + lay]);
        json_int(j, "rounds", rounds);
        json_end(j);
    }
    free(t);
    free(cpu);
    free(touched);
}

/* Attention weights of one query head over tokens [0, n) (exact, double). */
static void weights(const world *w, const float *q, int32_t h, int64_t n, double *wt)
{
    double mx = -INFINITY, sum = 0;
    const double scale = 1.0 / sqrt((double)DIM);
#ifdef _OPENMP
#pragma omp parallel for reduction(max : mx)
#endif
    for (int64_t s = 0; s < n; s++) {
        const uint16_t *k = w->k + ((size_t)s * HKV + h) * DIM;
        float dot = 0;
        for (int i = 0; i < DIM; i++)
            dot += q[i] * bf2f(k[i]);
        wt[s] = dot * scale;
        mx = wt[s] > mx ? wt[s] : mx;
    }
    for (int64_t s = 0; s < n; s++)
        sum += (wt[s] = exp(wt[s] - mx));
    for (int64_t s = 0; s < n; s++)
        wt[s] /= sum;
}

static int dcmp_desc(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Mass on the selection's tokens of head h: sum of wt over the gathered positions. */
static double sel_mass(const double *wt, const int32_t *pos, int64_t start, int32_t len)
{
    double m = 0;
    for (int32_t i = 0; i < len; i++)
        m += wt[pos[start + i]];
    return m;
}

/* ---- main ------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    const char *policy = wait_policy(); /* before the OpenMP runtime starts */
    int quick = 0, threads = 0;
    double min_time = 0.5;
    int64_t ctx_tokens = 128 * 1024, steps = 1000;
    int prefill_rounds = 3, only_prefill = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1, min_time = 0.1, ctx_tokens = 32 * 1024, steps = 200, prefill_rounds = 1;
        else if (!strcmp(argv[i], "--prefill-rounds") && i + 1 < argc)
            prefill_rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only-prefill"))
            only_prefill = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--min-time") && i + 1 < argc)
            min_time = atof(argv[++i]);
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc)
            ctx_tokens = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoll(argv[++i]);
        else {
            fprintf(stderr, "usage: sparsekv-bench-store [--quick] [--threads N] [--min-time S] "
                            "[--ctx N] [--steps N] [--prefill-rounds N (0..64)] [--only-prefill]\n");
            return 2;
        }
    }
#ifdef _OPENMP
    if (threads <= 0)
        threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = threads;
    skv_context *ctx;
    TRY("context", skv_context_create(&cp, &ctx));
    bench_machine mach;
    if (machine_measure(threads, quick, &mach))
        die("machine limits", SKV_ERR_NOMEM);
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "machine");
    json_num(&j, "peak_fp32_gflops", mach.peak_fp32_gflops, 2);
    json_num(&j, "peak_bf16_gflops", mach.peak_bf16_gflops, 2);
    json_num(&j, "stream_gbps", mach.stream_gbps, 2);
    json_int(&j, "threads", threads);
    json_str(&j, "isa", skv_cpu_level_name(skv_context_cpu_flags(ctx)));
    json_str(&j, "omp_wait_policy", policy);
    json_end(&j);

    world w;
    world_make(&w, ctx_tokens, steps + 16);
    if (prefill_rounds > 0) {
        const int64_t T = w.T;
        w.T = ctx_tokens; /* the context proper, without the decode tokens */
        bench_prefill(&j, &w, ctx, prefill_rounds > 64 ? 64 : prefill_rounds, &mach);
        w.T = T;
    }
    if (only_prefill) {
        world_free(&w);
        skv_context_destroy(ctx);
        return 0;
    }
    const int64_t L = ctx_tokens;
    const size_t row_bytes = 2 * DIM * 2; /* K and V, bf16 */
    char name[160];

    /* ---- index build at prefill, memory ---- */
    skv_store *sc = store_new(ctx, SKV_STORE_CLUSTERED, 8192), *sp = store_new(ctx, SKV_STORE_POSITIONAL, 0);
    int32_t seq_c, seq_p;
    TRY("seq", skv_store_seq_create(sc, &seq_c));
    TRY("seq", skv_store_seq_create(sp, &seq_p));
    skv_store_rows rows = {L, SKV_BF16, w.k, w.v, w.pos};
    for (int layout = 0; layout < 2; layout++) {
        skv_store *s = layout ? sp : sc;
        const double t0 = now_s(), c0 = process_cpu_s();
        TRY("prefill", skv_store_append(s, layout ? seq_p : seq_c, 0, &rows));
        const double dt = now_s() - t0, dc = process_cpu_s() - c0;
        skv_store_stats st = {.struct_size = sizeof st};
        TRY("stats", skv_store_get_stats(s, &st));
        skv_store_seq_info si = {.struct_size = sizeof si};
        TRY("info", skv_store_seq_info_get(s, layout ? seq_p : seq_c, 0, &si));
        /* the min/max boxes are the Quest baseline's index, kept in both stores here */
        const int64_t minmax = st.pages_in_use * DIM * 8;
        snprintf(name, sizeof name, "store_build/%s/L%lld/H%d/D%d/bf16", layout ? "positional" : "clustered",
                 (long long)L, HKV, DIM);
        bench_timing bt = {1, dt * 1e9, dt * 1e9, dt * 1e9, dc * 1e9};
        record_common(&j, name, &bt);
        json_num(&j, "tokens_per_s", (double)L / dt, 0);
        json_int(&j, "kv_bytes", st.kv_bytes);
        json_int(&j, "host_bytes", st.host_bytes);
        json_int(&j, "index_bytes", st.index_bytes);
        /* both stores keep Quest's min/max boxes here (the baseline needs them): reported apart */
        json_ratio(&j, "index_overhead", (double)(st.index_bytes - minmax) / (double)st.kv_bytes);
        json_ratio(&j, "minmax_overhead", (double)minmax / (double)st.kv_bytes);
        json_ratio(&j, "host_overhead", (double)st.host_bytes / (double)st.kv_bytes - 1.0);
        json_ratio(&j, "page_fill", (double)st.tokens_stored / ((double)st.pages_in_use * PAGE));
        json_int(&j, "pages", st.pages_in_use);
        json_int(&j, "nodes", si.n_nodes);
        json_int(&j, "height", si.height);
        json_num(&j, "estimate_32_layers_s", 32 * dt, 2);
        json_end(&j);
    }

    /* ---- selection latency ---- */
    query_gen qg = {{0}, 0, 0, {777}};
    uint16_t *qb = bench_xmalloc((size_t)HQ * DIM * 2);
    float *qf = bench_xmalloc((size_t)HQ * DIM * 4);
    query_next(&w, &qg, qb, qf);
    skv_store_sel *sel_c, *sel_p;
    TRY("sel", skv_store_sel_create(sc, &sel_c));
    TRY("sel", skv_store_sel_create(sp, &sel_p));
    static const int64_t budgets[] = {256, 1024, 2048, 4096};
    double sel2048_ns = 0;
    for (int b = 0; b < 4; b++)
        for (int m = 0; m < 3; m++) {
            if (m == 2 && budgets[b] != 2048)
                continue;
            skv_store_query q;
            skv_store_query_init(&q);
            q.n_q_heads = HQ, q.dtype = SKV_BF16, q.q = qb, q.budget = budgets[b];
            q.score = m == 0 ? SKV_SCORE_INDEX : m == 1 ? SKV_SCORE_MINMAX : SKV_SCORE_EXACT;
            sel_call c = {m == 1 ? sp : sc, m == 1 ? seq_p : seq_c, &q, m == 1 ? sel_p : sel_c};
            bench_timing t;
            if (bench_time(do_select, &c, min_time, 3, 1, 1.0, &t))
                die("select", SKV_ERR_STATE);
            skv_store_sel_info inf = {.struct_size = sizeof inf};
            TRY("info", skv_store_sel_info_get(c.sel, &inf));
            snprintf(name, sizeof name, "store_select/%s/B%lld/L%lld", m == 0 ? "index" : m == 1 ? "quest_minmax" : "exact_pages",
                     (long long)budgets[b], (long long)L);
            record_common(&j, name, &t);
            json_int(&j, "budget", budgets[b]);
            json_int(&j, "tokens_selected", inf.n_tokens);
            json_int(&j, "pages_selected", inf.n_pages);
            json_num(&j, "estimate_32_layers_ms", 32 * t.median_ns * 1e-6, 2);
            json_end(&j);
            if (m == 0 && budgets[b] == 2048)
                sel2048_ns = t.median_ns;
        }

    /* ---- gather bandwidth and sparse vs dense attention ---- */
    skv_store_query q;
    skv_store_query_init(&q);
    q.n_q_heads = HQ, q.dtype = SKV_BF16, q.q = qb, q.budget = 2048;
    TRY("select", skv_store_select(sc, seq_c, 0, &q, sel_c));
    skv_store_sel_info inf = {.struct_size = sizeof inf};
    TRY("info", skv_store_sel_info_get(sel_c, &inf));
    const int64_t grows = 2048 * HKV; /* room for any selection at this budget */
    uint16_t *gk = bench_xmalloc((size_t)grows * DIM * 2), *gv = bench_xmalloc((size_t)grows * DIM * 2);
    int32_t *gp = bench_xmalloc((size_t)grows * 4);
    int64_t ls[HKV];
    int32_t ll[HKV];
    skv_store_gather_out go = {sizeof go, SKV_BF16, SKV_GATHER_PAGES, 0, grows, gk, gv, gp, ls, ll};
    gather_call gc = {sc, sel_c, &go};
    /* Gathering one selection again and again would read it from cache: rotate over selections
       of different queries (different topics), about 8 MiB of pages each, so that the pages
       come from memory as they do in decode. */
    enum { ROT = 24 };
    skv_store_sel *rot[ROT];
    int64_t rot_rows = 0;
    {
        query_gen rg = {{0}, 0, 0, {31337}};
        for (int i = 0; i < ROT; i++) {
            for (int skip = 0; skip < 150; skip++)
                query_next(&w, &rg, qb, qf);
            TRY("sel", skv_store_sel_create(sc, &rot[i]));
            TRY("select", skv_store_select(sc, seq_c, 0, &q, rot[i]));
            skv_store_sel_info ri = {.struct_size = sizeof ri};
            TRY("info", skv_store_sel_info_get(rot[i], &ri));
            rot_rows += ri.n_tokens;
        }
        query_next(&w, &qg, qb, qf);
    }
    rot_call rc = {sc, rot, ROT, 0, &go};
    bench_timing tg;
    if (bench_time(do_gather_rot, &rc, min_time, 2 * ROT, 1, 1.0, &tg))
        die("gather", SKV_ERR_STATE);
    const double gbytes = 2.0 * ((double)rot_rows / ROT) * (double)row_bytes; /* read + written */
    const double gather_gbps = gbytes / tg.median_ns;
    record_common(&j, "store_gather/B2048/bf16", &tg);
    json_int(&j, "rows", rot_rows / ROT);
    json_int(&j, "selections_rotated", ROT);
    json_num(&j, "gbps", gather_gbps, 2);
    json_ratio(&j, "ratio_to_stream", gather_gbps / mach.stream_gbps);
    json_bool(&j, "target_0.6_met", gather_gbps >= 0.6 * mach.stream_gbps);
    json_str(&j, "bytes_counted", "rows read + rows written (STREAM convention)");
    json_end(&j);
    /* the selection the attention cases use, for the current query */
    TRY("select", skv_store_select(sc, seq_c, 0, &q, sel_c));
    int64_t sel_rows = 0;
    TRY("gather", skv_store_gather(sc, sel_c, &go, &sel_rows));

    /* dense: every token of each KV head, head-major */
    uint16_t *dk = bench_xmalloc((size_t)L * HKV * DIM * 2), *dv = bench_xmalloc((size_t)L * HKV * DIM * 2);
    int32_t *dp = bench_xmalloc((size_t)L * HKV * 4);
    for (int32_t h = 0; h < HKV; h++)
        for (int64_t t = 0; t < L; t++) {
            memcpy(dk + ((size_t)h * L + t) * DIM, w.k + ((size_t)t * HKV + h) * DIM, DIM * 2);
            memcpy(dv + ((size_t)h * L + t) * DIM, w.v + ((size_t)t * HKV + h) * DIM, DIM * 2);
            dp[(size_t)h * L + t] = (int32_t)t;
        }
    int64_t dls[HKV];
    int32_t dll[HKV];
    for (int32_t h = 0; h < HKV; h++)
        dls[h] = (int64_t)h * L, dll[h] = (int32_t)L;
    const int32_t qpos = (int32_t)(L - 1);
    float *out = bench_xmalloc((size_t)HQ * DIM * 4);
    skv_attn_batch dense = {sizeof dense, 1, HQ, HKV, DIM, DIM, SKV_BF16, 1.0f / sqrtf((float)DIM), 1,
                            qb, &qpos, L * HKV, dk, dv, dp, dls, dll};
    attn_call dc = {ctx, &dense, out};
    bench_timing td;
    if (bench_time(do_attn, &dc, min_time, 3, 1, 1.0, &td))
        die("dense attention", SKV_ERR_STATE);
    const double dense_flops = 2.0 * HQ * (double)L * 2 * DIM;
    snprintf(name, sizeof name, "store_attention/dense/L%lld/bf16", (long long)L);
    record_common(&j, name, &td);
    json_num(&j, "gflops", dense_flops / td.median_ns, 2);
    json_num(&j, "gbps", (double)L * HKV * row_bytes / td.median_ns, 2);
    json_end(&j);
    skv_attn_batch sparse = dense;
    sparse.n_rows = sel_rows, sparse.k = gk, sparse.v = gv, sparse.k_pos = gp;
    sparse.list_start = ls, sparse.list_len = ll;
    attn_call ac = {ctx, &sparse, out};
    bench_timing ta, tp;
    if (bench_time(do_attn, &ac, min_time, 5, 1, 1.0, &ta))
        die("sparse attention", SKV_ERR_STATE);
    sel_call scall = {sc, seq_c, &q, sel_c};
    pipe_call pc = {&scall, &gc, &ac};
    if (bench_time(do_pipe, &pc, min_time, 5, 1, 1.0, &tp))
        die("pipeline", SKV_ERR_STATE);
    snprintf(name, sizeof name, "store_attention/select_gather_sparse/B2048/L%lld/bf16", (long long)L);
    record_common(&j, name, &tp);
    json_num(&j, "select_ns", sel2048_ns, 1);
    json_num(&j, "gather_ns", tg.median_ns, 1);
    json_num(&j, "attention_ns", ta.median_ns, 1);
    json_num(&j, "dense_ns", td.median_ns, 1);
    json_ratio(&j, "speedup_vs_dense", td.median_ns / tp.median_ns);
    json_ratio(&j, "select_speedup_vs_dense", td.median_ns / sel2048_ns);
    json_bool(&j, "target_10x_met", td.median_ns >= 10 * sel2048_ns);
    json_num(&j, "estimate_32_layers_ms", 32 * tp.median_ns * 1e-6, 2);
    json_end(&j);
    free(dk), free(dv), free(dp);

    /* ---- attention-mass recall (before the trace appends to the stores) ---- */
    {
        const int nq = quick ? 4 : 12;
        double acc[4][4] = {{0}}; /* [budget][oracle, clustered, quest, exact pages] */
        double *wt = bench_xmalloc((size_t)L * sizeof *wt), *srt = bench_xmalloc((size_t)L * sizeof *srt);
        uint16_t *rk = bench_xmalloc((size_t)8192 * HKV * DIM * 2), *rv = bench_xmalloc((size_t)8192 * HKV * DIM * 2);
        int32_t *rp = bench_xmalloc((size_t)8192 * HKV * 4);
        query_gen rg = {{0}, 0, 0, {4242}};
        for (int qi = 0; qi < nq; qi++) {
            for (int skip = 0; skip < 25; skip++) /* queries spread over topics */
                query_next(&w, &rg, qb, qf);
            int64_t lsr[4][3][HKV];
            int32_t llr[4][3][HKV];
            int32_t *posr[4][3];
            for (int b = 0; b < 4; b++)
                for (int m = 0; m < 3; m++) {
                    skv_store_query qq;
                    skv_store_query_init(&qq);
                    qq.n_q_heads = HQ, qq.dtype = SKV_BF16, qq.q = qb, qq.budget = budgets[b];
                    qq.score = m == 0 ? SKV_SCORE_INDEX : m == 1 ? SKV_SCORE_MINMAX : SKV_SCORE_EXACT;
                    skv_store *s = m == 1 ? sp : sc;
                    skv_store_sel *sl = m == 1 ? sel_p : sel_c;
                    TRY("select", skv_store_select(s, m == 1 ? seq_p : seq_c, 0, &qq, sl));
                    skv_store_gather_out o = {sizeof o, SKV_BF16, SKV_GATHER_PAGES, 0, 8192 * HKV, rk, rv, rp,
                                              lsr[b][m], llr[b][m]};
                    TRY("gather", skv_store_gather(s, sl, &o, NULL));
                    posr[b][m] = bench_xmalloc((size_t)8192 * HKV * 4);
                    memcpy(posr[b][m], rp, (size_t)8192 * HKV * 4);
                }
            for (int32_t hq = 0; hq < HQ; hq++) {
                const int32_t h = hq / G;
                weights(&w, qf + (size_t)hq * DIM, h, L, wt);
                memcpy(srt, wt, (size_t)L * sizeof *srt);
                qsort(srt, (size_t)L, sizeof *srt, dcmp_desc);
                for (int b = 0; b < 4; b++) {
                    double top = 0;
                    for (int64_t s = 0; s < budgets[b]; s++)
                        top += srt[s];
                    acc[b][0] += top;
                    for (int m = 0; m < 3; m++)
                        acc[b][1 + m] += sel_mass(wt, posr[b][m], lsr[b][m][h], llr[b][m][h]);
                }
            }
            for (int b = 0; b < 4; b++)
                for (int m = 0; m < 3; m++)
                    free(posr[b][m]);
        }
        for (int b = 0; b < 4; b++) {
            snprintf(name, sizeof name, "store_recall/B%lld/L%lld", (long long)budgets[b], (long long)L);
            json_begin(&j);
            json_str(&j, "name", name);
            json_int(&j, "queries", nq);
            json_int(&j, "budget", budgets[b]);
            const double n = (double)nq * HQ;
            json_num(&j, "oracle", acc[b][0] / n, 4);
            json_num(&j, "clustered", acc[b][1] / n, 4);
            json_num(&j, "quest", acc[b][2] / n, 4);
            json_num(&j, "clustered_exact_pages", acc[b][3] / n, 4);
            json_bool(&j, "clustered_ge_quest", acc[b][1] >= acc[b][2]);
            json_end(&j);
        }
        free(wt), free(srt), free(rk), free(rv), free(rp);
    }

    /* ---- decode trace: append, select, fetch ---- */
    {
        TRY("reset", skv_store_reset_counters(sc));
        skv_store_stats s0 = {.struct_size = sizeof s0}, s1 = {.struct_size = sizeof s1};
        int32_t *prev = bench_xmalloc((size_t)grows * 2 * 4 + 64 * 1024), *cur = bench_xmalloc((size_t)grows * 2 * 4 + 64 * 1024);
        int64_t prev_ls[HKV] = {0};
        int32_t prev_ll[HKV] = {0};
        uint16_t *tk = bench_xmalloc((size_t)(grows + 4096) * DIM * 2), *tv = bench_xmalloc((size_t)(grows + 4096) * DIM * 2);
        double sum_moved = 0, sum_sel = 0, sum_new = 0, t_step = 0, c_step = 0, cold_ratio = 0;
        double t_append = 0, t_select = 0;
        int64_t counted = 0;
        query_gen tg2 = {{0}, 0, 0, {999}};
        for (int64_t step = 0; step < steps; step++) {
            const int64_t t = L + step;
            token_kv(&w, t, tg2.topic);
            skv_store_rows one = {1, SKV_BF16, w.k + (size_t)t * HKV * DIM, w.v + (size_t)t * HKV * DIM, w.pos + t};
            query_next(&w, &tg2, qb, qf);
            const double t0 = now_s(), c0 = process_cpu_s();
            TRY("append", skv_store_append(sc, seq_c, 0, &one));
            const double t1 = now_s();
            TRY("select", skv_store_select(sc, seq_c, 0, &q, sel_c));
            const double t2 = now_s();
            t_append += t1 - t0, t_select += t2 - t1;
            TRY("get", skv_store_get_stats(sc, &s0));
            TRY("fetch", skv_store_fetch(sc, sel_c));
            t_step += now_s() - t0;
            c_step += process_cpu_s() - c0;
            TRY("get", skv_store_get_stats(sc, &s1));
            TRY("info", skv_store_sel_info_get(sel_c, &inf));
            skv_store_gather_out o = {sizeof o, SKV_BF16, SKV_GATHER_POSITIONS, 0, grows + 4096, tk, tv, cur, ls, ll};
            TRY("gather", skv_store_gather(sc, sel_c, &o, NULL));
            int64_t fresh = 0;
            for (int32_t h = 0; h < HKV; h++) { /* tokens not selected at the previous step */
                int32_t a = 0, b = 0;
                while (a < ll[h]) {
                    const int32_t x = cur[ls[h] + a];
                    while (b < prev_ll[h] && prev[prev_ls[h] + b] < x)
                        b++;
                    fresh += !(b < prev_ll[h] && prev[prev_ls[h] + b] == x);
                    a++;
                }
            }
            const double moved = (double)(s1.bytes_to_hot - s0.bytes_to_hot);
            if (step == 0) {
                cold_ratio = moved / ((double)inf.n_tokens * row_bytes);
            } else {
                sum_moved += moved;
                sum_sel += (double)inf.n_tokens * row_bytes;
                sum_new += (double)fresh * row_bytes;
                counted++;
            }
            int32_t *tmp = prev;
            prev = cur, cur = tmp;
            memcpy(prev_ls, ls, sizeof ls), memcpy(prev_ll, ll, sizeof ll);
            TRY("release", skv_store_release(sc, sel_c));
        }
        TRY("stats", skv_store_get_stats(sc, &s1));
        snprintf(name, sizeof name, "store_decode_trace/steps%lld/B2048/L%lld", (long long)steps, (long long)L);
        bench_timing bt = {steps, t_step / (double)steps * 1e9, t_step / (double)steps * 1e9, 0,
                           c_step / (double)steps * 1e9};
        record_common(&j, name, &bt);
        json_str(&j, "step", "append 1 token, select (index, 2048), fetch (delta) into the hot tier");
        json_num(&j, "append_ns", t_append / (double)steps * 1e9, 1);
        json_num(&j, "select_ns", t_select / (double)steps * 1e9, 1);
        json_int(&j, "hot_capacity_pages", s1.hot_capacity);
        json_ratio(&j, "hit_rate", (double)s1.fetch_hits / (double)s1.fetch_pages);
        json_num(&j, "bytes_moved_per_step", sum_moved / (double)counted, 0);
        json_num(&j, "bytes_selected_per_step", sum_sel / (double)counted, 0);
        json_num(&j, "bytes_newly_selected_per_step", sum_new / (double)counted, 0);
        json_ratio(&j, "moved_over_selected", sum_moved / sum_sel);
        json_ratio(&j, "moved_over_newly_selected", sum_moved / sum_new);
        json_ratio(&j, "cold_fetch_moved_over_selected", cold_ratio);
        json_bool(&j, "target_1.25_met", sum_moved <= 1.25 * sum_new);
        json_int(&j, "evictions", s1.evictions);
        json_int(&j, "copy_calls", s1.copy_calls);
        json_num(&j, "estimate_32_layers_ms_per_step", 32 * t_step / (double)steps * 1e3, 2);
        json_end(&j);
        free(prev), free(cur), free(tk), free(tv);
    }

    for (int i = 0; i < ROT; i++)
        skv_store_sel_destroy(rot[i]);
    skv_store_sel_destroy(sel_c);
    skv_store_sel_destroy(sel_p);
    skv_store_destroy(sc);
    skv_store_destroy(sp);
    free(qb), free(qf), free(gk), free(gv), free(gp), free(out);
    world_free(&w);
    skv_context_destroy(ctx);
    return 0;
}
