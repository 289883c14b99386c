/* sparsekv-bench-dtypes: the key types engines cache, against bf16 keys (the fastest exact
 * path): F16 keys and queries, F16 keys with f32 queries, and ggml's Q8_0 keys with f32 and
 * bf16 queries, and the opt-in int8 path (int8 queries against Q8_0 keys, VNNI), at the
 * indexer bench's shapes (64 heads x 128, top-2048): decode at 32K and
 * 128K keys, and a 512-token prefill chunk at the end of 32K. Every variant's inputs come from
 * the same f32 values (narrowed with skv_convert, quantised with skv_quantize_q8_0); the
 * variants of a shape are timed in interleaved rounds (bench_time_rounds) and reported with
 * their ratio to bf16 and to the machine's peaks measured in the same run. JSON Lines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define H 64
#define D 128
#define K 2048

typedef struct variant {
    const char *name;
    skv_dtype qt, kt;
} variant;

static const variant variants[] = {
    {"bf16", SKV_BF16, SKV_BF16}, /* the baseline: every ratio is to this one */
    {"f16", SKV_F16, SKV_F16},
    {"f32q_f16k", SKV_F32, SKV_F16},
    {"f32", SKV_F32, SKV_F32},
    {"f32q_q8_0k", SKV_F32, SKV_Q8_0},
    {"bf16q_q8_0k", SKV_BF16, SKV_Q8_0},
    {"int8q_q8_0k", SKV_F32, SKV_Q8_0}, /* the opt-in int8 path (its own context) */
};
#define NV (int)(sizeof variants / sizeof variants[0])

typedef struct call {
    skv_context *ctx;
    skv_indexer_query q;
    skv_key_block k;
    int32_t *idx;
} call;

static int run_call(void *arg)
{
    call *c = arg;
    return skv_indexer_topk(c->ctx, &c->q, &c->k, K, c->idx, NULL) != SKV_OK;
}

/* x [n] as dtype t (F32: a copy). */
static void *narrow(const float *x, int64_t rows, int32_t cols, skv_dtype t)
{
    const int64_t n = rows * cols;
    if (t == SKV_Q8_0) {
        void *o = bench_xmalloc((size_t)rows * (size_t)(cols / 32) * 34);
        bench_check(skv_quantize_q8_0(x, rows, cols, cols, o), "quantise q8_0");
        return o;
    }
    void *o = bench_xmalloc((size_t)n * skv_dtype_size(t));
    bench_check(skv_convert(t, o, SKV_F32, x, n), "convert");
    return o;
}

static void run_shape(const bench_setup_out *s, skv_context *ctx8, int32_t T, int64_t L)
{
    float *q = bench_xmalloc((size_t)T * H * D * 4), *w = bench_xmalloc((size_t)T * H * 4);
    float *k = bench_xmalloc((size_t)L * D * 4);
    int32_t *pos = bench_xmalloc((size_t)T * 4);
    fill_uniform(q, (size_t)T * H * D, 1);
    fill_uniform(w, (size_t)T * H, 2);
    fill_uniform(k, (size_t)L * D, 3);
    for (int32_t t = 0; t < T; t++)
        pos[t] = (int32_t)(L - T + t);
    call calls[NV];
    bench_fn fns[NV];
    void *args[NV];
    for (int v = 0; v < NV; v++) {
        calls[v] = (call){strcmp(variants[v].name, "int8q_q8_0k") ? s->ctx : ctx8,
                          {T, H, D, variants[v].qt, narrow(q, (int64_t)T * H, D, variants[v].qt), NULL, w, pos},
                          {L, D, variants[v].kt, narrow(k, L, D, variants[v].kt), NULL},
                          bench_xmalloc((size_t)T * K * 4)};
        fns[v] = run_call;
        args[v] = &calls[v];
    }
    bench_rounds r[NV];
    if (bench_time_rounds(NV, fns, args, s->min_time, r))
        fprintf(stderr, "sparsekv-bench-dtypes: a call failed\n"), exit(1);
    int64_t pairs = 0;
    for (int32_t t = 0; t < T; t++)
        pairs += pos[t] + 1;
    const double flops = 2.0 * H * D * (double)pairs;
    for (int v = 0; v < NV; v++) {
        char name[128];
        snprintf(name, sizeof name, "dtypes/%s/H%d/T%d/L%lld/%s", T > 1 ? "prefill" : "decode", H, T,
                 (long long)L, variants[v].name);
        const double kbytes = variants[v].kt == SKV_Q8_0 ? 34.0 / 32 : (double)skv_dtype_size(variants[v].kt);
        const double gflops = flops / r[v].ns, gbps = (double)L * D * kbytes / r[v].ns;
        json_line j;
        json_begin(&j);
        json_str(&j, "name", name);
        json_num(&j, "real_time_ns", r[v].ns, 1);
        json_int(&j, "iterations", r[v].iterations);
        json_int(&j, "T", T);
        json_int(&j, "L", L);
        json_int(&j, "H", H);
        json_int(&j, "D", D);
        json_int(&j, "k", K);
        json_int(&j, "threads", s->threads);
        json_str(&j, "isa", skv_cpu_level_name(skv_context_cpu_flags(s->ctx)));
        json_ratio(&j, "throughput_vs_bf16", 1.0 / r[v].vs_first);
        json_ratio(&j, "time_vs_bf16_lo", r[v].lo);
        json_ratio(&j, "time_vs_bf16_hi", r[v].hi);
        json_num(&j, "gflops", gflops, 2);
        json_ratio(&j, "frac_fp32_peak", gflops / s->machine.peak_fp32_gflops);
        json_ratio(&j, "frac_bf16_peak", s->machine.peak_bf16_gflops > 0 ? gflops / s->machine.peak_bf16_gflops : -1);
        json_num(&j, "key_gbps", gbps, 3);
        json_ratio(&j, "frac_stream", gbps / s->machine.stream_gbps);
        json_end(&j);
    }
    for (int v = 0; v < NV; v++)
        free((void *)calls[v].q.q), free((void *)calls[v].k.k), free(calls[v].idx);
    free(q), free(w), free(k), free(pos);
}

int main(int argc, char **argv)
{
    bench_setup_out s;
    const int rc = bench_setup(argc, argv, "sparsekv-bench-dtypes", 2.0, &s);
    if (rc)
        return rc;
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = s.threads;
    skv_context *ctx8 = NULL;
    bench_check(skv_context_create(&cp, &ctx8), "context");
    bench_check(skv_context_set_int8_queries(ctx8, 1), "int8 queries");
    run_shape(&s, ctx8, 1, 32768);
    run_shape(&s, ctx8, 1, 131072);
    run_shape(&s, ctx8, 512, 32768);
    skv_context_destroy(ctx8);
    skv_context_destroy(s.ctx);
    return 0;
}
