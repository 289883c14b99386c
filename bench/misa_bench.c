/* sparsekv-bench-misa: MISA (h = 8), MISA-dagger (C = 8192) and HISA (B = 128, m = 64: both
 * with the papers' 4k candidates) against the dense indexer, MISA with the paper's router
 * (pooled: block terms summed) and with SKV_ROUTE_POOLED_MAX ("_max": the largest block term),
 * on a DeepSeek-shaped indexer (H = 64, D = 128, k = 2048, fp8 keys in a paged key cache with
 * pooled sums): time relative to dense and recall, decoding at L = 8K, 32K, 128K and for a
 * prefill chunk; recall on structured synthetic inputs (keys around cluster centres, attention
 * sinks, a recent window, heads that specialise; each key's cluster drawn afresh, or in runs
 * whose neighbouring-key likeness matches the real keys': "structured_runs"; decode recall
 * over 8 decode tokens) and on the real activations in
 * ../shared/data; and the crossover lengths below which each method is slower than dense.
 * The fp8 cache keeps a lane copy (skv_kcache_params.lane_copy: the few-head decode kernel's
 * layout, 128 bytes more per token). At 32K and 128K also: recall against cost over each
 * method's dials (mode "tradeoff"), the decode cases without the lane copy ("decode_rows") and
 * with bf16 keys ("decode_bf16"), and the floor under any 8-head routed pass (misa/floor:
 * 8-head scoring alone; misa/floor_kernel: the same on keys in cache), and how concentrated
 * the dense selection's score mass is over the heads (misa/heads, and in misa/real).
 * JSON Lines; the machine's limits come first.
 *
 *   sparsekv-bench-misa [--quick] [--threads N] [--min-time S] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

enum { H = 64, D = 128, K = 2048, CHUNK = 64, PREFILL_T = 64, MAX_T = 64 };

/* ---- structured inputs ------------------------------------------------------------------- */

static uint64_t rs = 99;
static double unif(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return ((rs >> 11) + 0.5) * 0x1p-53;
}
static double gauss(void) { return sqrt(-2 * log(unif())) * cos(6.283185307179586 * unif()); }

typedef struct inputs {
    int64_t L;
    float *keys;  /* [L][D] f32 */
    float *q, *w; /* [MAX_T][H][D], [MAX_T][H] */
} inputs;

/* The kinds of inputs: plain uniform random values (time only: recall on them means little);
 * structured, each key's cluster drawn afresh; and the same in runs of keys of one cluster. */
typedef enum input_kind { UNIFORM, STRUCTURED, STRUCTURED_RUNS } input_kind;
static const char *const kind_names[] = {"uniform", "structured", "structured_runs"};

/* A run of keys from one cluster ends after each key with this chance: mean runs of 20 keys,
 * which gives neighbouring keys the cosine the real indexer keys show (about 0.7 at distance 1,
 * 0.45 at 8, near 0 by 64 in layers 1-5; key_cosine_d* in misa/heads and misa/real). */
#define RUN_END 0.05

/* Keys around 256 cluster centres (each key a centre plus noise), 4 attention sinks sharing a
 * direction, the last 256 keys sharing a "recent" direction. Heads specialise: most look for a
 * few clusters each, some for the sinks, some for the recent window; gates are positive with a
 * few dominant heads. */
static void make_inputs(inputs *in, int64_t L, input_kind kind)
{
    const int structured = kind != UNIFORM;
    in->L = L;
    in->keys = bench_xmalloc((size_t)L * D * 4);
    in->q = bench_xmalloc((size_t)MAX_T * H * D * 4);
    in->w = bench_xmalloc((size_t)MAX_T * H * 4);
    if (!structured) {
        fill_uniform(in->keys, (size_t)L * D, 31);
        fill_uniform(in->q, (size_t)MAX_T * H * D, 32);
        fill_uniform(in->w, (size_t)MAX_T * H, 33);
        return;
    }
    /* runs draw from a stream of their own, so that the structured inputs stay those of earlier
       runs of this benchmark */
    const uint64_t saved = rs;
    if (kind == STRUCTURED_RUNS)
        rs = 4242;
    enum { NC = 256 };
    float *cent = bench_xmalloc((size_t)(NC + 2) * D * 4); /* + sink and recent directions */
    for (size_t i = 0; i < (size_t)(NC + 2) * D; i++)
        cent[i] = (float)gauss();
    const float *sink = cent + (size_t)NC * D, *recent = cent + (size_t)(NC + 1) * D;
    const float *run = NULL; /* the cluster of the current run */
    for (int64_t s = 0; s < L; s++) {
        const float *c = sink;
        if (s >= 4 && s >= L - 256) {
            c = recent;
        } else if (s >= 4) {
            if (kind == STRUCTURED || !run || unif() < RUN_END)
                run = cent + (size_t)(unif() * NC) * D;
            c = run;
        }
        const double a = s < 4 ? 2.0 : 1.0;
        for (int d = 0; d < D; d++)
            in->keys[(size_t)s * D + d] = (float)(a * c[d] + 0.6 * gauss());
    }
    for (int t = 0; t < MAX_T; t++)
        for (int h = 0; h < H; h++) {
            float *qh = in->q + ((size_t)t * H + h) * D;
            for (int d = 0; d < D; d++)
                qh[d] = (float)(0.5 * gauss());
            if (h < 4) { /* sink heads */
                for (int d = 0; d < D; d++)
                    qh[d] += sink[d];
            } else if (h < 8) { /* recent-window heads */
                for (int d = 0; d < D; d++)
                    qh[d] += recent[d];
            } else { /* each head: 3 clusters of its own, steady over the tokens */
                for (int j = 0; j < 3; j++) {
                    const float *c = cent + (size_t)((h * 37 + j * 101) % NC) * D;
                    for (int d = 0; d < D; d++)
                        qh[d] += 0.7f * c[d];
                }
            }
            in->w[(size_t)t * H + h] = (float)((h % 13 == 0 ? 1.0 : 0.15) * (0.5 + unif()) / sqrt((double)H * D));
        }
    free(cent);
    if (kind == STRUCTURED_RUNS)
        rs = saved;
}

static void free_inputs(inputs *in) { free(in->keys), free(in->q), free(in->w); }

/* ---- one length: a key cache holding the keys, timed calls ---------------------------------- */

/* A method and its dials; the first of every list is dense, the reference of time and recall. */
typedef enum kind { DENSE, MISA, HISA } kind;
typedef struct method {
    const char *name;
    kind kind;
    int32_t heads, candidates, blocks; /* MISA h and C; HISA m (B = 128) */
    int32_t route_block;               /* MISA's router block; 0: the default (1024) */
    skv_route_mode route;              /* MISA's router: 0 = the paper's (pooled, summed) */
} method;

/* MISA's routers: the paper's sum over blocks, and the largest block (SKV_ROUTE_POOLED_MAX) */
#define MAXR 0, SKV_ROUTE_POOLED_MAX

enum { N_MAIN = 6 };
static const method main_methods[N_MAIN] = {
    {"dense", DENSE, 0, 0, 0, 0, 0},
    {"misa_h8", MISA, 8, 0, 0, 0, 0},
    {"misa_dagger_h8_c8192", MISA, 8, 8192, 0, 0, 0},
    {"hisa_b128_m64", HISA, 0, 0, 64, 0, 0}, /* the defaults: m * B = 4k */
    {"misa_h8_max", MISA, 8, 0, 0, MAXR},
    {"misa_dagger_h8_c8192_max", MISA, 8, 8192, 0, MAXR},
};

/* Recall against cost: each method's dials swept, so that a host can pick. */
static const method tradeoff_methods[] = {
    {"dense", DENSE, 0, 0, 0, 0, 0},
    {"misa_h2", MISA, 2, 0, 0, 0, 0},
    {"misa_h4", MISA, 4, 0, 0, 0, 0},
    {"misa_h8", MISA, 8, 0, 0, 0, 0},
    {"misa_h16", MISA, 16, 0, 0, 0, 0},
    {"misa_h32", MISA, 32, 0, 0, 0, 0},
    {"misa_dagger_h4_c8192", MISA, 4, 8192, 0, 0, 0},
    {"misa_dagger_h8_c4096", MISA, 8, 4096, 0, 0, 0},
    {"misa_dagger_h8_c8192", MISA, 8, 8192, 0, 0, 0},
    {"misa_dagger_h8_c16384", MISA, 8, 16384, 0, 0, 0},
    {"misa_dagger_h16_c8192", MISA, 16, 8192, 0, 0, 0},
    {"misa_h8_rb128", MISA, 8, 0, 0, 128, 0}, /* the router on blocks of 128 */
    {"misa_dagger_h8_c8192_rb128", MISA, 8, 8192, 0, 128, 0},
    {"hisa_b128_m16", HISA, 0, 0, 16, 0, 0},
    {"hisa_b128_m32", HISA, 0, 0, 32, 0, 0},
    {"hisa_b128_m64", HISA, 0, 0, 64, 0, 0},
    {"misa_h4_max", MISA, 4, 0, 0, MAXR},
    {"misa_h8_max", MISA, 8, 0, 0, MAXR},
    {"misa_dagger_h4_c8192_max", MISA, 4, 8192, 0, MAXR},
    {"misa_dagger_h8_c4096_max", MISA, 8, 4096, 0, MAXR},
    {"misa_dagger_h8_c8192_max", MISA, 8, 8192, 0, MAXR},
};
enum { N_TRADEOFF = sizeof tradeoff_methods / sizeof tradeoff_methods[0], MAX_METHODS = 24 };

typedef struct call {
    skv_context *ctx;
    skv_kcache *cache;
    int32_t seq;
    const method *m;
    const skv_indexer_query *q;
    int32_t *idx;
} call;

static int run_call(void *arg)
{
    call *c = arg;
    skv_status st = SKV_OK;
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.min_length = 0;
    mp.heads = c->m->heads;
    mp.candidates = c->m->candidates;
    if (c->m->route_block)
        mp.block = c->m->route_block;
    mp.route = c->m->route;
    skv_hisa_params hp;
    skv_hisa_params_init(&hp);
    hp.min_length = 0;
    hp.blocks = c->m->blocks;
    switch (c->m->kind) {
    case DENSE: st = skv_kcache_topk(c->cache, c->seq, 0, c->q, K, c->idx, NULL); break;
    case MISA: st = skv_kcache_misa_topk(c->cache, c->seq, 0, c->q, &mp, K, c->idx, NULL); break;
    case HISA: st = skv_kcache_hisa_topk(c->cache, c->seq, 0, c->q, &hp, K, c->idx, NULL); break;
    }
    return st != SKV_OK;
}

typedef struct length_setup {
    skv_kcache *cache;
    int32_t seq;
    void *kd;  /* the keys in the cache's dtype */
    float *ks; /* fp8 scales, or NULL */
    skv_key_block keys; /* the same keys, contiguous (for recall) */
    const char *dtype;  /* "fp8" (with the lane copy), "fp8_rows" (without), "bf16" */
    int lane_copy;
    int64_t bytes_per_token;
} length_setup;

/* A key cache holding the keys as fp8 (DeepSeek's indexer cache; with or without the lane
 * copy) or bf16. */
static void setup_length(skv_context *ctx, const inputs *in, skv_dtype dt, int lane_copy,
                         length_setup *ls)
{
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = D, kp.dtype = dt, kp.pool_chunk = CHUNK, kp.lane_copy = lane_copy;
    bench_check(skv_kcache_create(ctx, &kp, &ls->cache), "kcache");
    skv_kcache_stats st = {.struct_size = sizeof st};
    bench_check(skv_kcache_get_stats(ls->cache, &st), "stats");
    ls->bytes_per_token = st.bytes_per_token;
    ls->lane_copy = lane_copy;
    bench_check(skv_kcache_seq_create(ls->cache, &ls->seq), "seq");
    ls->kd = bench_xmalloc((size_t)in->L * D * skv_dtype_size(dt));
    ls->ks = NULL;
    if (dt == SKV_FP8_E4M3) {
        ls->ks = bench_xmalloc((size_t)in->L * 4);
        bench_check(skv_quantize_fp8(in->keys, in->L, D, D, 0, ls->kd, ls->ks), "quantise");
    } else {
        bench_check(skv_convert(dt, ls->kd, SKV_F32, in->keys, in->L * D), "convert");
    }
    ls->keys = (skv_key_block){in->L, D, dt, ls->kd, ls->ks};
    ls->dtype = dt == SKV_BF16 ? "bf16" : lane_copy ? "fp8" : "fp8_rows";
    bench_check(skv_kcache_append(ls->cache, ls->seq, 0, &ls->keys), "append");
}

static void free_length(length_setup *ls)
{
    skv_kcache_destroy(ls->cache);
    free(ls->kd), free(ls->ks);
}

/* The query of T tokens at the end of the context (fp8, quantised per (token, head)). */
typedef struct query_buf { uint8_t q8[MAX_T * H * D]; float qs[MAX_T * H]; int32_t pos[MAX_T]; skv_indexer_query q; } query_buf;

static void make_query(const inputs *in, int32_t T, query_buf *qb)
{
    bench_check(skv_quantize_fp8(in->q, (int64_t)T * H, D, D, 0, qb->q8, qb->qs), "quantise q");
    for (int32_t t = 0; t < T; t++)
        qb->pos[t] = (int32_t)(in->L - T + t);
    qb->q = (skv_indexer_query){T, H, D, SKV_FP8_E4M3, qb->q8, qb->qs, in->w, qb->pos};
}

/* Decode recall is averaged over this many decode tokens (each its own query, all at the last
 * position), where the one timed token alone reads a noisy figure. */
enum { DECODE_RECALL_T = 8 };

static void make_decode_recall_query(const inputs *in, query_buf *qb)
{
    make_query(in, DECODE_RECALL_T, qb);
    for (int32_t t = 0; t < DECODE_RECALL_T; t++)
        qb->pos[t] = (int32_t)(in->L - 1);
}

/* Per method: the median of the per-round ratios to dense, recall and mass recall. */
typedef struct measured {
    double vs_dense[MAX_METHODS], recall[MAX_METHODS], mass[MAX_METHODS];
} measured;

/* Times each method of the list (dense first) on qb and, with a recall query rq, its recall
 * against dense on rq's tokens (qb's own for a prefill chunk). */
static void measure(skv_context *ctx, const bench_machine *m, const length_setup *ls,
                    const query_buf *qb, const method *methods, int n_methods, const char *mode,
                    const char *inputs_name, double min_time, const query_buf *rq, measured *out)
{
    const int32_t T = qb->q.n_tokens, RT = rq ? rq->q.n_tokens : 0;
    const int want_recall = rq != NULL;
    int32_t *idx = bench_xmalloc((size_t)(T > RT ? T : RT) * K * 4);
    double *rec = bench_xmalloc((size_t)(RT + 1) * 8), *mass = bench_xmalloc((size_t)(RT + 1) * 8);
    call calls[MAX_METHODS];
    bench_fn fns[MAX_METHODS];
    void *args[MAX_METHODS];
    bench_rounds tr[MAX_METHODS];
    for (int mi = 0; mi < n_methods; mi++) {
        calls[mi] = (call){ctx, ls->cache, ls->seq, &methods[mi], &qb->q, idx};
        fns[mi] = run_call, args[mi] = &calls[mi];
    }
    if (bench_time_rounds(n_methods, fns, args, min_time, tr))
        bench_check(SKV_ERR_STATE, mode);
    for (int mi = 0; mi < n_methods; mi++) {
        const double time_ns = tr[mi].ns;
        out->vs_dense[mi] = tr[mi].vs_first;
        out->recall[mi] = out->mass[mi] = NAN;
        if (want_recall) {
            call cr = {ctx, ls->cache, ls->seq, &methods[mi], &rq->q, idx};
            if (run_call(&cr))
                bench_check(SKV_ERR_STATE, methods[mi].name);
            bench_check(skv_selection_quality(ctx, &rq->q, &ls->keys, idx, K, rec, mass), "quality");
            double r = 0, ms = 0;
            for (int32_t t = 0; t < RT; t++)
                r += rec[t], ms += mass[t];
            out->recall[mi] = r / RT, out->mass[mi] = ms / RT;
        }
        json_line j;
        json_begin(&j);
        char name[128];
        snprintf(name, sizeof name, "misa/%s/%s/L%lld/%s", mode, inputs_name, (long long)ls->keys.n_keys, methods[mi].name);
        json_str(&j, "name", name);
        json_int(&j, "iterations", tr[mi].iterations);
        json_int(&j, "rounds", BENCH_ROUNDS);
        json_num(&j, "real_time", time_ns, 1);
        json_num(&j, "cpu_time", tr[mi].cpu_ns, 1);
        json_str(&j, "time_unit", "ns");
        json_str(&j, "method", methods[mi].name);
        if (methods[mi].kind == MISA) {
            json_int(&j, "heads", methods[mi].heads), json_int(&j, "candidates", methods[mi].candidates);
            json_int(&j, "route_block", methods[mi].route_block ? methods[mi].route_block : 1024);
            json_str(&j, "router", methods[mi].route == SKV_ROUTE_POOLED_MAX ? "pooled_max" : "pooled");
        }
        if (methods[mi].kind == HISA)
            json_int(&j, "block", 128), json_int(&j, "blocks", methods[mi].blocks);
        json_int(&j, "H", H), json_int(&j, "D", D), json_int(&j, "k", K), json_int(&j, "T", T);
        if (want_recall)
            json_int(&j, "recall_tokens", RT);
        json_int(&j, "L", ls->keys.n_keys);
        json_str(&j, "dtype", ls->dtype);
        json_int(&j, "lane_copy", ls->lane_copy), json_int(&j, "cache_bytes_per_token", ls->bytes_per_token);
        json_str(&j, "inputs", inputs_name);
        json_ratio(&j, "time_vs_dense", tr[mi].vs_first);
        json_ratio(&j, "time_vs_dense_lo", tr[mi].lo);
        json_ratio(&j, "time_vs_dense_hi", tr[mi].hi);
        if (want_recall) {
            json_num(&j, "recall", out->recall[mi], 4);
            json_num(&j, "mass_recall", out->mass[mi], 4);
        }
        const double dense_flops = 2.0 * H * D * (double)ls->keys.n_keys * T;
        json_num(&j, "dense_equivalent_gflops", dense_flops / time_ns, 2);
        json_ratio(&j, "frac_bf16_peak_dense_equivalent", dense_flops / time_ns / m->peak_bf16_gflops);
        json_num(&j, "peak_fp32_gflops", m->peak_fp32_gflops, 2);
        json_num(&j, "peak_bf16_gflops", m->peak_bf16_gflops, 2);
        json_num(&j, "stream_gbps", m->stream_gbps, 2);
        json_end(&j);
    }
    free(idx), free(rec), free(mass);
}

/* Where MISA's decode time goes: the dense top-k, scores alone (no selection) with all 64 and
 * with 8 heads, and the top-k of 8 fixed heads (MISA without its router). No routed pass can
 * cost less than scoring with its 8 heads: that ratio is the floor under misa_h8. */
typedef struct floor_call { skv_kcache *cache; int32_t seq; const skv_indexer_query *q; float *scores; int32_t *idx; } floor_call;

static int floor_scores(void *arg)
{
    floor_call *f = arg;
    return skv_kcache_scores(f->cache, f->seq, 0, f->q, f->scores) != SKV_OK;
}

static int floor_topk(void *arg)
{
    floor_call *f = arg;
    return skv_kcache_topk(f->cache, f->seq, 0, f->q, K, f->idx, NULL) != SKV_OK;
}

typedef struct block_call { skv_context *ctx; const skv_indexer_query *q; const skv_key_block *kb; float *scores; } block_call;

static int block_scores(void *arg)
{
    block_call *b = arg;
    return skv_indexer_scores(b->ctx, b->q, b->kb, b->scores) != SKV_OK;
}

/* The same scoring on the first 512 and 2048 keys as a contiguous block, on one thread (a
 * context of its own) with the keys in L2: the slope between the two is the kernels' own cost
 * per key, without memory traffic, selection or per-call costs (the intercept). One token
 * (decode: fp8 keys in lanes made in registers, bf16 lane groups) with 8 and with 64 heads,
 * and blocks of 8 tokens of 8 heads (prefill: keys in lanes, transposed once per block), per
 * token and key; with a lane copy, one token of 8 heads also on a key cache keeping one.
 * Between the fp8 and bf16 records lies the conversion. */
static void kernel_floor(const length_setup *ls, const inputs *in, double min_time)
{
    static const int64_t n[2] = {512, 2048};
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 1; /* 2048 keys would be split over two */
    skv_context *ctx;
    bench_check(skv_context_create(&cp, &ctx), "context");
    query_buf *qb = bench_xmalloc(sizeof *qb);
    make_query(in, 8, qb);
    float *scores = bench_xmalloc((size_t)8 * n[1] * 4);
    /* 8-head queries cut from the 64-head data: token t, head h read as q[(8t + h) * D] */
    skv_indexer_query q8 = qb->q, q64 = qb->q, b8 = qb->q;
    q8.n_tokens = q64.n_tokens = 1, b8.n_tokens = 8;
    q8.n_heads = b8.n_heads = 8;
    q8.positions = q64.positions = b8.positions = NULL;
    const skv_indexer_query *qs[3] = {&q8, &q64, &b8};
    double per_key[4], per_call[4];
    for (int qi = 0; qi < 3; qi++) {
        double ns[2];
        for (int i = 0; i < 2; i++) {
            skv_key_block kb = ls->keys;
            kb.n_keys = n[i];
            block_call b = {ctx, qs[qi], &kb, scores};
            bench_timing tm;
            if (bench_time(block_scores, &b, min_time, 3, 1, 2.0, &tm))
                bench_check(SKV_ERR_STATE, "kernel floor");
            ns[i] = tm.median_ns / qs[qi]->n_tokens;
        }
        per_key[qi] = (ns[1] - ns[0]) / (double)(n[1] - n[0]);
        per_call[qi] = ns[0] - per_key[qi] * (double)n[0];
    }
    per_key[3] = per_call[3] = NAN;
    if (ls->lane_copy) { /* one token, 8 heads, from a key cache's lane copy (still in L2) */
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.head_dim = D, kp.lane_copy = 1;
        skv_kcache *kc;
        bench_check(skv_kcache_create(ctx, &kp, &kc), "kcache");
        double ns[2];
        for (int i = 0; i < 2; i++) {
            int32_t seq;
            bench_check(skv_kcache_seq_create(kc, &seq), "seq");
            skv_key_block kb = ls->keys;
            kb.n_keys = n[i];
            bench_check(skv_kcache_append(kc, seq, 0, &kb), "append");
            floor_call f = {kc, seq, &q8, scores, NULL};
            bench_timing tm;
            if (bench_time(floor_scores, &f, min_time, 3, 1, 2.0, &tm))
                bench_check(SKV_ERR_STATE, "kernel floor");
            ns[i] = tm.median_ns;
        }
        per_key[3] = (ns[1] - ns[0]) / (double)(n[1] - n[0]);
        per_call[3] = ns[0] - per_key[3] * (double)n[0];
        skv_kcache_destroy(kc);
    }
    json_line j;
    json_begin(&j);
    char name[96];
    snprintf(name, sizeof name, "misa/floor_kernel/%s", ls->dtype);
    json_str(&j, "name", name);
    json_int(&j, "D", D);
    json_str(&j, "dtype", ls->dtype);
    json_num(&j, "h8_ns_per_key", per_key[0], 3);
    json_num(&j, "h64_ns_per_key", per_key[1], 3);
    json_num(&j, "h8_block8_ns_per_token_key", per_key[2], 3);
    if (ls->lane_copy)
        json_num(&j, "h8_lane_copy_ns_per_key", per_key[3], 3);
    json_num(&j, "h8_ns_per_call", per_call[0], 1);
    json_num(&j, "h64_ns_per_call", per_call[1], 1);
    json_ratio(&j, "h8_vs_h64", per_key[0] / per_key[1]);
    json_ratio(&j, "h8_block8_vs_h64", per_key[2] / per_key[1]);
    if (ls->lane_copy)
        json_ratio(&j, "h8_lane_copy_vs_h64", per_key[3] / per_key[1]);
    json_ratio(&j, "h8_efficiency_per_head_vs_h64", per_key[1] / 8 / per_key[0]);
    json_str(&j, "note", "one thread, keys in L2, slope between 512 and 2048 keys; the ideal h8_vs_h64 is 0.125");
    json_end(&j);
    free(scores), free(qb);
    skv_context_destroy(ctx);
}

static void scoring_floor(const bench_machine *m, const length_setup *ls,
                          const query_buf *qb, double min_time)
{
    const int64_t L = ls->keys.n_keys;
    float *scores = bench_xmalloc((size_t)L * 4);
    int32_t *idx = bench_xmalloc((size_t)K * 4);
    skv_indexer_query q8 = qb->q; /* one token: its first 8 heads are a query of 8 heads */
    q8.n_heads = 8;
    const char *names[4] = {"dense_topk_h64", "scores_h64", "scores_h8", "topk_h8"};
    floor_call f[4];
    bench_fn fns[4];
    void *args[4];
    for (int i = 0; i < 4; i++) {
        f[i] = (floor_call){ls->cache, ls->seq, i == 0 || i == 1 ? &qb->q : &q8, scores, idx};
        fns[i] = i == 0 || i == 3 ? floor_topk : floor_scores, args[i] = &f[i];
    }
    bench_rounds tr[4];
    if (bench_time_rounds(4, fns, args, min_time, tr))
        bench_check(SKV_ERR_STATE, "floor");
    json_line j;
    json_begin(&j);
    char name[96];
    snprintf(name, sizeof name, "misa/floor/L%lld/%s", (long long)L, ls->dtype);
    json_str(&j, "name", name);
    json_int(&j, "L", L), json_int(&j, "H", H), json_int(&j, "D", D), json_int(&j, "k", K);
    json_str(&j, "dtype", ls->dtype);
    json_int(&j, "lane_copy", ls->lane_copy), json_int(&j, "cache_bytes_per_token", ls->bytes_per_token);
    json_int(&j, "rounds", BENCH_ROUNDS);
    for (int i = 0; i < 4; i++) {
        char key[64];
        snprintf(key, sizeof key, "%s_ns", names[i]);
        json_num(&j, key, tr[i].ns, 1);
        snprintf(key, sizeof key, "%s_vs_dense", names[i]); /* per round, as time_vs_dense */
        json_ratio(&j, key, tr[i].vs_first);
        snprintf(key, sizeof key, "%s_ns_per_key", names[i]);
        json_num(&j, key, tr[i].ns / (double)L, 3);
    }
    json_num(&j, "peak_bf16_gflops", m->peak_bf16_gflops, 2);
    json_num(&j, "stream_gbps", m->stream_gbps, 2);
    json_str(&j, "note", "scores_h8_vs_dense bounds any 8-head routed pass from below (fp8 conversion, "
                         "8-head scoring, key traffic); topk_h8 adds the selection; misa_h8 adds the router");
    json_end(&j);
    free(scores), free(idx);
}

/* ---- how concentrated the dense selection is over the heads -------------------------------- */

/* Per query token, the mass |w_h| * ReLU(q_h . k_s) that each head puts on the dense top-k, the
 * heads ranked by it: the share held by the top eighth and the top quarter of the heads,
 * averaged over the tokens (f32 query and keys). A router that keeps H / 8 heads recovers at
 * most about what they hold; the structured inputs and the real activations are compared by
 * it. */
static void head_concentration(skv_context *ctx, const skv_indexer_query *q, const skv_key_block *kb,
                               int32_t k, double share[2])
{
    const int32_t T = q->n_tokens, NH = q->n_heads, HD = q->head_dim;
    double mass[64], sum[2] = {0, 0};
    if (NH > 64)
        bench_check(SKV_ERR_INVALID_ARG, "head concentration: at most 64 heads");
    int32_t *idx = bench_xmalloc((size_t)T * k * 4);
    bench_check(skv_indexer_topk(ctx, q, kb, k, idx, NULL), "dense top-k");
    const float *qf = q->q, *kf = kb->k;
    for (int32_t t = 0; t < T; t++) {
        for (int32_t h = 0; h < NH; h++) {
            const float *qh = qf + ((size_t)t * NH + h) * HD;
            double m = 0;
            for (int32_t i = 0; i < k && idx[(size_t)t * k + i] >= 0; i++) {
                const float *ks = kf + (size_t)idx[(size_t)t * k + i] * HD;
                double dot = 0;
                for (int32_t d = 0; d < HD; d++)
                    dot += (double)qh[d] * ks[d];
                m += dot > 0 ? dot : 0;
            }
            mass[h] = fabs(q->weights[(size_t)t * NH + h]) * m;
        }
        for (int32_t a = 1; a < NH; a++) /* descending */
            for (int32_t b = a; b > 0 && mass[b] > mass[b - 1]; b--) {
                const double x = mass[b];
                mass[b] = mass[b - 1], mass[b - 1] = x;
            }
        double total = 0, top[2] = {0, 0};
        for (int32_t h = 0; h < NH; h++) {
            total += mass[h];
            top[0] += h < NH / 8 ? mass[h] : 0;
            top[1] += h < NH / 4 ? mass[h] : 0;
        }
        sum[0] += total > 0 ? top[0] / total : 0;
        sum[1] += total > 0 ? top[1] / total : 0;
    }
    share[0] = sum[0] / T, share[1] = sum[1] / T;
    free(idx);
}

/* How alike neighbouring keys are: the mean cosine of k_s - mean and k_{s+dist} - mean over s
 * (0 for keys drawn independently; the real indexer's keys show about 0.7 at distance 1). */
static double key_locality(const float *k, int64_t L, int32_t HD, int64_t dist)
{
    double *mean = bench_xmalloc((size_t)HD * 8), sum = 0;
    for (int32_t d = 0; d < HD; d++)
        mean[d] = 0;
    for (int64_t s = 0; s < L; s++)
        for (int32_t d = 0; d < HD; d++)
            mean[d] += k[(size_t)s * HD + d] / (double)L;
    for (int64_t s = 0; s + dist < L; s++) {
        double ab = 0, aa = 0, bb = 0;
        for (int32_t d = 0; d < HD; d++) {
            const double a = k[(size_t)s * HD + d] - mean[d], b = k[(size_t)(s + dist) * HD + d] - mean[d];
            ab += a * b, aa += a * a, bb += b * b;
        }
        sum += aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
    }
    free(mean);
    return L > dist ? sum / (double)(L - dist) : 0;
}

static void json_locality(json_line *j, const float *k, int64_t L, int32_t HD)
{
    json_num(j, "key_cosine_d1", key_locality(k, L, HD, 1), 3);
    json_num(j, "key_cosine_d8", key_locality(k, L, HD, 8), 3);
    json_num(j, "key_cosine_d64", key_locality(k, L, HD, 64), 3);
}

static void report_concentration(skv_context *ctx, const inputs *in, const char *inputs_name)
{
    enum { TOKENS = 8 };
    int32_t pos[TOKENS];
    for (int t = 0; t < TOKENS; t++)
        pos[t] = (int32_t)(in->L - 1); /* decode tokens seeing every key */
    const skv_indexer_query q = {TOKENS, H, D, SKV_F32, in->q, NULL, in->w, pos};
    const skv_key_block kb = {in->L, D, SKV_F32, in->keys, NULL};
    double share[2];
    head_concentration(ctx, &q, &kb, K, share);
    json_line j;
    json_begin(&j);
    char name[64];
    snprintf(name, sizeof name, "misa/heads/%s/L%lld", inputs_name, (long long)in->L);
    json_str(&j, "name", name);
    json_int(&j, "H", H), json_int(&j, "k", K), json_int(&j, "tokens", TOKENS);
    json_num(&j, "head_mass_top_eighth", share[0], 4);
    json_num(&j, "head_mass_top_quarter", share[1], 4);
    json_locality(&j, in->keys, in->L, D);
    json_str(&j, "note", "share of the dense top-k's score mass |w|*ReLU(q.k) held by the top H/8 and H/4 "
                         "heads of each token; key_cosine_d*: neighbouring keys' likeness; misa/real/L* give "
                         "the same for the real indexer");
    json_end(&j);
}

/* ---- real activations -------------------------------------------------------------------- */

static void real_data(skv_context *ctx)
{
    const char *env = getenv("SKV_TEST_DATA");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/dev", env && *env ? env : "../shared/data");
    enum { T = 2048, IH = 16, ID = 32, RK = 128, T0 = 1024 };
    int32_t pos[T - T0];
    for (int t = 0; t < T - T0; t++)
        pos[t] = T0 + t;
    for (int l = 0; l < 6; l++) {
        char path[1200];
        uint16_t *q16 = bench_xmalloc((size_t)T * IH * ID * 2);
        float *q = bench_xmalloc((size_t)T * IH * ID * 4), *w = bench_xmalloc((size_t)T * IH * 4), *k = bench_xmalloc((size_t)T * ID * 4);
        FILE *f;
        int ok = 1;
        const char *names[3] = {"iq", "iw", "ik"};
        void *bufs[3] = {q16, w, k};
        const size_t sizes[3] = {(size_t)T * IH * ID * 2, (size_t)T * IH * 4, (size_t)T * ID * 4};
        for (int i = 0; i < 3 && ok; i++) {
            snprintf(path, sizeof path, "%s/L%d_%s.bin", dir, l, names[i]);
            ok = (f = fopen(path, "rb")) != NULL && fread(bufs[i], 1, sizes[i], f) == sizes[i];
            if (f)
                fclose(f);
        }
        if (!ok) {
            printf("{\"name\": \"misa/real\", \"skipped\": \"../shared/data/dev not found (set SKV_TEST_DATA)\"}\n");
            free(q16), free(q), free(w), free(k);
            return;
        }
        skv_convert(SKV_F32, q, SKV_F16, q16, (int64_t)T * IH * ID);
        const skv_indexer_query qq = {T - T0, IH, ID, SKV_F32, q + (size_t)T0 * IH * ID, NULL, w + (size_t)T0 * IH, pos};
        const skv_key_block kb = {T, ID, SKV_F32, k, NULL};
        float *sums = bench_xmalloc((size_t)(T / 64) * ID * 4);
        bench_check(skv_pool_keys(&kb, 64, sums), "pool");
        const skv_pooled_keys pk = {64, sums};
        int32_t *idx = bench_xmalloc((size_t)(T - T0) * RK * 4);
        double *rec = bench_xmalloc((size_t)(T - T0) * 8);
        json_line j;
        json_begin(&j);
        char name[64];
        snprintf(name, sizeof name, "misa/real/L%d", l);
        json_str(&j, "name", name);
        json_int(&j, "k", RK), json_int(&j, "H", IH), json_int(&j, "D", ID), json_int(&j, "block", 64);
        double share[2];
        head_concentration(ctx, &qq, &kb, RK, share);
        json_num(&j, "head_mass_top_eighth", share[0], 4);
        json_num(&j, "head_mass_top_quarter", share[1], 4);
        json_locality(&j, k, T, ID);
        for (int v = 0; v < 8; v++) {
            skv_misa_params mp;
            skv_misa_params_init(&mp);
            mp.block = 64, mp.min_length = 0, mp.heads = v < 3 ? 2 << v : 8;
            mp.candidates = v == 3 || v == 7 ? 4 * RK : 0;
            static const char *const keys[8] = {"misa_h2_recall", "misa_h4_recall", "misa_h8_recall",
                                                "misa_dagger_h8_c4k_recall", "hisa_b64_c4k_recall", "misa_h16_recall",
                                                "misa_h8_recall_max", "misa_dagger_h8_c4k_recall_max"};
            const char *key = keys[v];
            if (v == 5)
                mp.heads = 16;
            if (v >= 6)
                mp.route = SKV_ROUTE_POOLED_MAX;
            if (v == 4) {
                skv_hisa_params hp;
                skv_hisa_params_init(&hp);
                hp.block = 64, hp.blocks = 4 * RK / 64, hp.min_length = 0;
                bench_check(skv_hisa_topk(ctx, &qq, &kb, &pk, &hp, RK, idx, NULL), "hisa");
            } else {
                bench_check(skv_misa_topk(ctx, &qq, &kb, &pk, &mp, RK, idx, NULL), "misa");
            }
            bench_check(skv_selection_quality(ctx, &qq, &kb, idx, RK, rec, NULL), "quality");
            double r = 0;
            for (int t = 0; t < T - T0; t++)
                r += rec[t];
            json_num(&j, key, r / (T - T0), 4);
        }
        json_end(&j);
        free(q16), free(q), free(w), free(k), free(sums), free(idx), free(rec);
    }
}

int main(int argc, char **argv)
{
    bench_setup_out o;
    const int rc = bench_setup(argc, argv, "sparsekv-bench-misa", 0.5, &o);
    if (rc)
        return rc;
    skv_context *ctx = o.ctx;
    const bench_machine m = o.machine;
    const int quick = o.quick;
    const double min_time = o.min_time;
    json_line j;

    /* decode and a prefill chunk at 8K, 32K, 128K on structured inputs, with and without runs
       (recall), and uniform random ones (time only: recall on random vectors means little) */
    static const int64_t Ls[3] = {8192, 32768, 131072};
    static const input_kind kinds[3] = {STRUCTURED, STRUCTURED_RUNS, UNIFORM};
    for (int li = 0; li < (quick ? 2 : 3); li++)
        for (int ki = 0; ki < 3; ki++) {
            const input_kind input = kinds[ki];
            const int structured = input != UNIFORM;
            inputs in;
            make_inputs(&in, Ls[li], input);
            length_setup ls;
            setup_length(ctx, &in, SKV_FP8_E4M3, 1, &ls);
            query_buf *qb = bench_xmalloc(sizeof *qb), *rq = bench_xmalloc(sizeof *rq);
            measured r;
            make_query(&in, 1, qb);
            make_decode_recall_query(&in, rq);
            const query_buf *drq = structured ? rq : NULL;
            measure(ctx, &m, &ls, qb, main_methods, N_MAIN, "decode", kind_names[input], min_time, drq, &r);
            if (structured && li > 0) { /* recall against cost, decode at 32K and 128K */
                measure(ctx, &m, &ls, qb, tradeoff_methods, N_TRADEOFF, "tradeoff", kind_names[input], min_time, rq, &r);
                report_concentration(ctx, &in, kind_names[input]);
            }
            if (input == STRUCTURED && li > 0) { /* timing only: the structured inputs stand for both */
                scoring_floor(&m, &ls, qb, min_time);
                /* the same without the lane copy: fp8 rows only */
                length_setup lr;
                setup_length(ctx, &in, SKV_FP8_E4M3, 0, &lr);
                measure(ctx, &m, &lr, qb, main_methods, N_MAIN, "decode_rows", "structured", min_time, rq, &r);
                scoring_floor(&m, &lr, qb, min_time);
                free_length(&lr);
                /* the same with bf16 keys: no per-key conversion, twice the key bytes */
                length_setup lb;
                setup_length(ctx, &in, SKV_BF16, 0, &lb);
                measure(ctx, &m, &lb, qb, main_methods, N_MAIN, "decode_bf16", "structured", min_time, rq, &r);
                scoring_floor(&m, &lb, qb, min_time);
                if (li == 1) {
                    kernel_floor(&ls, &in, min_time);
                    kernel_floor(&lb, &in, min_time);
                }
                free_length(&lb);
            }
            make_query(&in, PREFILL_T, qb);
            measure(ctx, &m, &ls, qb, main_methods, N_MAIN, "prefill", kind_names[input], min_time,
                    structured ? qb : NULL, &r);
            free(qb), free(rq);
            free_length(&ls);
            free_inputs(&in);
        }

    /* crossover: the shortest context at which each method beats dense (decode) */
    static const int64_t sweep[] = {1024, 2048, 4096, 8192, 16384, 32768, 65536};
    int64_t cross[N_MAIN] = {0};
    for (int si = 0; si < (int)(sizeof sweep / sizeof sweep[0]); si++) {
        inputs in;
        make_inputs(&in, sweep[si], STRUCTURED);
        length_setup ls;
        setup_length(ctx, &in, SKV_FP8_E4M3, 1, &ls);
        query_buf *qb = bench_xmalloc(sizeof *qb);
        make_query(&in, 1, qb);
        measured r;
        measure(ctx, &m, &ls, qb, main_methods, N_MAIN, "sweep", "structured", min_time * 0.5, NULL, &r);
        /* a method counts once it is really running (not handed to dense by its own dial:
           C >= L, or m * B >= L) and at least 5 % faster */
        const int active[N_MAIN] = {0, 1, sweep[si] > 8192, sweep[si] > 128 * 64, 1, sweep[si] > 8192};
        for (int mi = 1; mi < N_MAIN; mi++)
            if (!cross[mi] && active[mi] && r.vs_dense[mi] < 0.95)
                cross[mi] = sweep[si];
        free(qb);
        free_length(&ls);
        free_inputs(&in);
    }
    json_begin(&j);
    json_str(&j, "name", "misa/crossover");
    for (int mi = 1; mi < N_MAIN; mi++)
        json_int(&j, main_methods[mi].name, cross[mi]); /* 0: not faster at any swept length */
    json_str(&j, "note", "shortest swept decode context at which the method beats dense; the library's "
                         "default length gates (SKV_MISA_MIN_LENGTH etc.) come from these");
    json_end(&j);

    real_data(ctx);
    skv_context_destroy(ctx);
    return 0;
}
