/* sparsekv-bench-reuse: IndexCache on a DeepSeek-shaped stack (61 layers, H = 64, D = 128,
 * k = 2048, fp8 indexer keys): indexer time per step and key-cache bytes for all-Full, 1/2 and
 * 1/4 Full patterns, decoding at L = 32K and for a prefill chunk; then the overlap matrix of a
 * synthetic stack whose layers share structure, and the attention-mass proxy's pattern against
 * uniform spacing. JSON Lines, like sparsekv-bench; the machine's limits come first.
 *
 *   sparsekv-bench-reuse [--quick] [--threads N] [--min-time S] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

enum { LAYERS = 61, H = 64, D = 128, K = 2048, CTX = 32768, PREFILL_T = 64 };

/* ---- the 61-layer stack ----------------------------------------------------------------- */

typedef struct stack {
    skv_context *ctx;
    const skv_reuse_plan *plan;
    skv_reuse_selector *sel;
    skv_kcache *cache;
    int32_t seq;
    const skv_indexer_query *q; /* one query reused by every layer */
} stack;

static int step(void *arg)
{
    stack *s = arg;
    if (skv_reuse_begin_step(s->sel, s->q->n_tokens) != SKV_OK)
        return 1;
    for (int32_t l = 0; l < LAYERS; l++) {
        const int32_t *view;
        if (skv_reuse_select_kcache(s->sel, l, s->q, s->cache, s->seq, &view) != SKV_OK)
            return 1;
    }
    return 0;
}

typedef struct pattern_result { double decode_ns, prefill_ns; int64_t bytes, bytes_per_token; } pattern_result;

static void run_pattern(skv_context *ctx, const bench_machine *m, const char *label,
                        const skv_reuse_plan *plan, const uint8_t *k8, const float *ks,
                        const skv_indexer_query *qd, const skv_indexer_query *qp, double min_time,
                        const pattern_result *base, pattern_result *out)
{
    skv_kcache_params bp, kp;
    skv_kcache_params_init(&bp);
    bp.head_dim = D;
    bp.dtype = SKV_FP8_E4M3;
    bench_check(skv_reuse_kcache_params(plan, &bp, &kp), "kcache params");
    skv_kcache *cache;
    bench_check(skv_kcache_create(ctx, &kp, &cache), "kcache create");
    int32_t seq;
    bench_check(skv_kcache_seq_create(cache, &seq), "seq create");
    const skv_key_block kb = {CTX, D, SKV_FP8_E4M3, k8, ks};
    for (int32_t slot = 0; slot < kp.n_layers; slot++)
        bench_check(skv_kcache_append(cache, seq, slot, &kb), "append");
    skv_kcache_stats st = {.struct_size = sizeof st};
    bench_check(skv_kcache_get_stats(cache, &st), "stats");

    skv_reuse_selector_params sp;
    skv_reuse_selector_params_init(&sp);
    sp.k = K;
    sp.max_tokens = PREFILL_T;
    skv_reuse_selector *sel;
    bench_check(skv_reuse_selector_create(ctx, plan, &sp, &sel), "selector");

    stack s = {ctx, plan, sel, cache, seq, qd};
    bench_timing td, tp;
    if (bench_time(step, &s, min_time, 3, 1, 0, &td))
        bench_check(SKV_ERR_STATE, "decode step");
    s.q = qp;
    if (bench_time(step, &s, 0, 1, 0, 0, &tp))
        bench_check(SKV_ERR_STATE, "prefill step");
    skv_reuse_selector_stats ss = {.struct_size = sizeof ss};
    bench_check(skv_reuse_selector_get_stats(sel, &ss), "selector stats");

    out->decode_ns = td.median_ns;
    out->prefill_ns = tp.median_ns;
    out->bytes = st.bytes_in_use;
    out->bytes_per_token = st.bytes_per_token;
    char pat[LAYERS + 1];
    bench_check(skv_reuse_plan_pattern(plan, pat, sizeof pat), "pattern");

    json_line j;
    json_begin(&j);
    char name[96];
    snprintf(name, sizeof name, "reuse_stack/%s/L%d", label, CTX);
    json_str(&j, "name", name);
    json_int(&j, "iterations", td.iterations);
    json_num(&j, "real_time", td.median_ns, 1);
    json_num(&j, "cpu_time", td.cpu_ns, 1);
    json_str(&j, "time_unit", "ns");
    json_int(&j, "layers", LAYERS);
    json_int(&j, "full_layers", skv_reuse_plan_n_full(plan));
    json_str(&j, "pattern", pat);
    json_int(&j, "H", H), json_int(&j, "D", D), json_int(&j, "k", K), json_int(&j, "L", CTX);
    json_str(&j, "dtype", "fp8");
    json_num(&j, "decode_step_ns", td.median_ns, 1);
    json_num(&j, "prefill_step_ns", tp.median_ns, 1);
    json_int(&j, "prefill_tokens", PREFILL_T);
    json_int(&j, "indexer_runs", ss.indexer_runs);
    json_int(&j, "reused", ss.reused);
    json_int(&j, "key_cache_bytes", st.bytes_in_use);
    json_int(&j, "key_cache_bytes_per_token", st.bytes_per_token);
    const double flops = 2.0 * H * D * (double)CTX * skv_reuse_plan_n_full(plan);
    json_num(&j, "gflops", flops / td.median_ns, 2);
    json_ratio(&j, "frac_bf16_peak", flops / td.median_ns / m->peak_bf16_gflops);
    if (base) {
        json_ratio(&j, "decode_time_vs_all_full", td.median_ns / base->decode_ns);
        json_ratio(&j, "prefill_time_vs_all_full", tp.median_ns / base->prefill_ns);
        json_ratio(&j, "key_cache_bytes_vs_all_full", (double)st.bytes_in_use / (double)base->bytes);
        json_ratio(&j, "ideal_ratio", (double)skv_reuse_plan_n_full(plan) / LAYERS);
    }
    json_num(&j, "peak_fp32_gflops", m->peak_fp32_gflops, 2);
    json_num(&j, "peak_bf16_gflops", m->peak_bf16_gflops, 2);
    json_num(&j, "stream_gbps", m->stream_gbps, 2);
    json_end(&j);

    skv_reuse_selector_destroy(sel);
    skv_kcache_destroy(cache);
}

/* ---- a synthetic stack whose layers share structure --------------------------------------- */

static uint64_t rs_state = 7;
static double gauss(void) /* Box-Muller on a 64-bit LCG */
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        rs_state = rs_state * 6364136223846793005ull + 1442695040888963407ull;
        u[i] = ((rs_state >> 11) + 0.5) * 0x1p-53;
    }
    return sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

enum { SL = 12, SH = 16, SD = 64, SLEN = 4096, ST = 64, SK = 256 };

/* Layer l's keys and queries drift from layer l-1's by a random walk, so adjacent layers select
 * alike and distant ones less; a few "reset" layers break the structure. */
static void synthetic(skv_context *ctx, const bench_machine *m)
{
    float *k = bench_xmalloc(sizeof(float) * SL * SLEN * SD), *q = bench_xmalloc(sizeof(float) * SL * ST * SH * SD);
    float *w = bench_xmalloc(sizeof(float) * SL * ST * SH);
    int32_t pos[ST];
    for (int t = 0; t < ST; t++)
        pos[t] = SLEN - ST + t;
    const double drift = 0.45;
    for (int l = 0; l < SL; l++) {
        const int reset = l == 0 || l == 7;
        for (size_t i = 0; i < (size_t)SLEN * SD; i++)
            k[(size_t)l * SLEN * SD + i] = (float)(reset ? gauss() : k[(size_t)(l - 1) * SLEN * SD + i] + drift * gauss());
        for (size_t i = 0; i < (size_t)ST * SH * SD; i++)
            q[(size_t)l * ST * SH * SD + i] = (float)(reset ? gauss() : q[(size_t)(l - 1) * ST * SH * SD + i] + drift * gauss());
        for (size_t i = 0; i < (size_t)ST * SH; i++)
            w[(size_t)l * ST * SH + i] = (float)fabs(gauss()) * 0.25f;
    }
    skv_indexer_query qs[SL];
    skv_key_block ks[SL];
    for (int l = 0; l < SL; l++) {
        qs[l] = (skv_indexer_query){ST, SH, SD, SKV_F32, q + (size_t)l * ST * SH * SD, NULL, w + (size_t)l * ST * SH, pos};
        ks[l] = (skv_key_block){SLEN, SD, SKV_F32, k + (size_t)l * SLEN * SD, NULL};
    }
    double mass[SL * SL], ov[SL * SL];
    int32_t *topk = bench_xmalloc(sizeof(int32_t) * SL * ST * SK);
    bench_check(skv_reuse_mass_matrix(ctx, qs, ks, SL, SK, mass, topk), "mass matrix");
    bench_check(skv_reuse_overlap(ctx, topk, SL, ST, SK, ov), "overlap");

    skv_reuse_mass_loss ml = {mass, SL};
    skv_reuse_search_params sp;
    skv_reuse_search_params_init(&sp);
    sp.n_layers = SL;
    sp.target_full = SL / 4;
    sp.loss = skv_reuse_mass_loss_fn;
    sp.user = &ml;
    char pat[SL + 1];
    skv_reuse_search_result res = {.struct_size = sizeof res};
    bench_check(skv_reuse_search(ctx, &sp, pat, NULL, &res), "search");

    /* uniform spacing with the same number of Full layers */
    skv_reuse_plan *uni;
    bench_check(skv_reuse_plan_from_freq(ctx, SL, 4, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &uni), "uniform plan");
    char upat[SL + 1];
    bench_check(skv_reuse_plan_pattern(uni, upat, sizeof upat), "pattern");
    skv_reuse_plan_destroy(uni);
    /* the mean overlap a pattern's Shared layers get from their sources */
    double ov_search = 0, ov_uni = 0;
    int n_shared = 0;
    for (int pass = 0; pass < 2; pass++) {
        const char *pp = pass ? upat : pat;
        int src = 0;
        double acc = 0;
        int n = 0;
        for (int l = 0; l < SL; l++) {
            if (pp[l] == 'F')
                src = l;
            else
                acc += ov[l * SL + src], n++;
        }
        *(pass ? &ov_uni : &ov_search) = n ? acc / n : 1;
        n_shared = n;
    }

    json_line j;
    json_begin(&j);
    json_str(&j, "name", "reuse_synthetic/overlap_and_proxy");
    json_int(&j, "layers", SL), json_int(&j, "H", SH), json_int(&j, "D", SD), json_int(&j, "L", SLEN);
    json_int(&j, "tokens", ST), json_int(&j, "k", SK);
    json_num(&j, "layer_drift", drift, 2);
    json_str(&j, "structure", "random walk across layers, fresh layers at 0 and 7");
    json_begin_array(&j, "overlap");
    for (int i = 0; i < SL; i++) {
        json_begin_array(&j, NULL);
        for (int jj = 0; jj < SL; jj++)
            json_array_num(&j, ov[i * SL + jj], 3);
        json_end_array(&j);
    }
    json_end_array(&j);
    json_str(&j, "proxy_pattern", pat);
    json_num(&j, "proxy_mass_loss", skv_reuse_mass_loss_fn(pat, &ml), 4);
    json_num(&j, "proxy_mean_reuse_overlap", ov_search, 4);
    json_str(&j, "uniform_pattern", upat);
    json_num(&j, "uniform_mass_loss", skv_reuse_mass_loss_fn(upat, &ml), 4);
    json_num(&j, "uniform_mean_reuse_overlap", ov_uni, 4);
    json_int(&j, "shared_layers", n_shared);
    json_int(&j, "search_evaluations", res.n_evals);
    json_str(&j, "note", "proxies are heuristics: IndexCache found similarity-based choices no better "
                         "than uniform spacing; a host loss through skv_reuse_search is the recommended path");
    json_num(&j, "peak_fp32_gflops", m->peak_fp32_gflops, 2);
    json_end(&j);
    free(k), free(q), free(w), free(topk);
}

int main(int argc, char **argv)
{
    bench_setup_out o;
    const int rc = bench_setup(argc, argv, "sparsekv-bench-reuse", 1.0, &o);
    if (rc)
        return rc;
    skv_context *ctx = o.ctx;
    const bench_machine m = o.machine;
    const double min_time = o.min_time;

    /* inputs: one key set (quantised once, appended to every Full layer), one query */
    float *kf = bench_xmalloc(sizeof(float) * CTX * D), *qf = bench_xmalloc(sizeof(float) * PREFILL_T * H * D);
    float *w = bench_xmalloc(sizeof(float) * PREFILL_T * H), *ks = bench_xmalloc(sizeof(float) * CTX);
    float *qs = bench_xmalloc(sizeof(float) * PREFILL_T * H);
    uint8_t *k8 = bench_xmalloc((size_t)CTX * D), *q8 = bench_xmalloc((size_t)PREFILL_T * H * D);
    fill_uniform(kf, (size_t)CTX * D, 11);
    fill_uniform(qf, (size_t)PREFILL_T * H * D, 12);
    fill_uniform(w, (size_t)PREFILL_T * H, 13);
    bench_check(skv_quantize_fp8(kf, CTX, D, D, 0, k8, ks), "quantise keys");
    bench_check(skv_quantize_fp8(qf, (int64_t)PREFILL_T * H, D, D, 0, q8, qs), "quantise queries");
    int32_t pos[PREFILL_T];
    for (int t = 0; t < PREFILL_T; t++)
        pos[t] = CTX - PREFILL_T + t;
    const skv_indexer_query qd = {1, H, D, SKV_FP8_E4M3, q8 + (size_t)(PREFILL_T - 1) * H * D,
                                  qs + (size_t)(PREFILL_T - 1) * H, w + (size_t)(PREFILL_T - 1) * H,
                                  pos + PREFILL_T - 1};
    const skv_indexer_query qp = {PREFILL_T, H, D, SKV_FP8_E4M3, q8, qs, w, pos};

    skv_reuse_plan *all, *half, *quarter;
    bench_check(skv_reuse_plan_from_freq(ctx, LAYERS, 1, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &all), "plan");
    bench_check(skv_reuse_plan_from_freq(ctx, LAYERS, 2, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &half), "plan");
    bench_check(skv_reuse_plan_from_freq(ctx, LAYERS, 4, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &quarter), "plan");
    pattern_result r_all, r_half, r_quarter;
    run_pattern(ctx, &m, "all_full", all, k8, ks, &qd, &qp, min_time, NULL, &r_all);
    run_pattern(ctx, &m, "half_full", half, k8, ks, &qd, &qp, min_time, &r_all, &r_half);
    run_pattern(ctx, &m, "quarter_full", quarter, k8, ks, &qd, &qp, min_time, &r_all, &r_quarter);
    skv_reuse_plan_destroy(all), skv_reuse_plan_destroy(half), skv_reuse_plan_destroy(quarter);

    synthetic(ctx, &m);

    free(kf), free(qf), free(w), free(ks), free(qs), free(k8), free(q8);
    skv_context_destroy(ctx);
    return 0;
}
