/* sparsekv-bench-v4: DeepSeek-V4-Flash-like indexer shapes (64 heads x 128, top-512, FP8
 * queries) over compressed entries: FP8 against MXFP4 keys, the owned key cache against the
 * same keys in host pages (skv_paged_topk), decode at 32K and 256K entries (128K and 1M tokens
 * at ratio 4) and a 512-token prefill chunk at both; bf16 keys beside them (the score kernel
 * without a conversion); and a ragged batch of 8 sequences against 8 separate calls. JSON Lines; the machine's limits come first. Variants compared with one
 * another are timed in interleaved rounds (bench_time_rounds). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define H 64
#define D 128
#define K 512
#define PAGE 64

static float uniform(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) * 0x1p-24 * 2.0 - 1.0);
}

typedef struct query {
    uint8_t *q8;
    float *qs, *w;
    int32_t *pos;
    skv_indexer_query q;
} query;

static void query_make(query *o, int32_t T, int64_t L, uint64_t seed)
{
    float *q = bench_xmalloc((size_t)T * H * D * 4);
    o->q8 = bench_xmalloc((size_t)T * H * D);
    o->qs = bench_xmalloc((size_t)T * H * 4);
    o->w = bench_xmalloc((size_t)T * H * 4);
    o->pos = bench_xmalloc((size_t)T * 4);
    for (size_t i = 0; i < (size_t)T * H * D; i++)
        q[i] = uniform(&seed);
    for (size_t i = 0; i < (size_t)T * H; i++)
        o->w[i] = uniform(&seed);
    for (int32_t t = 0; t < T; t++)
        o->pos[t] = (int32_t)(L - T + t);
    bench_check(skv_quantize_fp8(q, (int64_t)T * H, D, D, 0, o->q8, o->qs), "quantize q");
    free(q);
    o->q = (skv_indexer_query){T, H, D, SKV_FP8_E4M3, o->q8, o->qs, o->w, o->pos};
}

static void query_free(query *o) { free(o->q8), free(o->qs), free(o->w), free(o->pos); }

/* One dtype's keys: in an owned cache (one sequence) and in a host pool, blocks shuffled. */
typedef struct keys {
    skv_dtype dt;
    int64_t L;
    skv_kcache *kc;
    int32_t seq;
    uint8_t *pool;
    int32_t *table;
    int32_t len;
    skv_paged_keys pk;
    skv_paged_batch pb;
} keys;

static void keys_make(keys *o, skv_context *ctx, skv_dtype dt, int64_t L, const float *f32)
{
    o->dt = dt, o->L = L, o->len = (int32_t)L;
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = D, kp.dtype = dt, kp.page_tokens = PAGE;
    bench_check(skv_kcache_create(ctx, &kp, &o->kc), "kcache_create");
    bench_check(skv_kcache_seq_create(o->kc, &o->seq), "seq_create");
    const skv_key_block kb = {L, D, SKV_F32, f32, NULL};
    bench_check(skv_kcache_append(o->kc, o->seq, 0, &kb), "append"); /* quantised on append */
    const size_t rb = dt == SKV_MXFP4_E2M1 ? D / 2 : dt == SKV_BF16 ? 2 * D : D;
    const size_t sb = dt == SKV_MXFP4_E2M1 ? D / 32 : dt == SKV_FP8_E4M3 ? 4 : 0;
    const int64_t nb = (L + PAGE - 1) / PAGE;
    const size_t bbytes = PAGE * (rb + sb);
    o->pool = bench_xmalloc((size_t)nb * bbytes);
    o->table = bench_xmalloc((size_t)nb * 4);
    for (int64_t b = 0; b < nb; b++)
        o->table[b] = (int32_t)b;
    uint64_t s = 99;
    for (int64_t b = nb - 1; b > 0; b--) { /* shuffled block ids */
        s = s * 6364136223846793005ull + 1;
        const int64_t j = (int64_t)((s >> 33) % (uint64_t)(b + 1));
        const int32_t x = o->table[b];
        o->table[b] = o->table[j], o->table[j] = x;
    }
    uint8_t *rows = bench_xmalloc(PAGE * rb), *sc = bench_xmalloc(PAGE * sb + 4);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t n = L - b * PAGE < PAGE ? L - b * PAGE : PAGE;
        uint8_t *blk = o->pool + (size_t)o->table[b] * bbytes;
        bench_check(skv_kcache_read(o->kc, o->seq, 0, b * PAGE, n, rows,
                                    dt == SKV_FP8_E4M3 ? (float *)sc : NULL), "read");
        if (dt == SKV_MXFP4_E2M1)
            bench_check(skv_kcache_read_mx_scales(o->kc, o->seq, 0, b * PAGE, n, sc), "read scales");
        memcpy(blk, rows, (size_t)n * rb);
        memcpy(blk + PAGE * rb, sc, (size_t)n * sb);
    }
    free(rows), free(sc);
    o->pk = (skv_paged_keys){D, dt, PAGE, o->pool, nb, bbytes, PAGE * rb};
    o->pb = (skv_paged_batch){1, o->table, nb, &o->len, NULL};
}

static void keys_free(keys *o)
{
    skv_kcache_destroy(o->kc);
    free(o->pool), free(o->table);
}

typedef struct call {
    skv_context *ctx;
    keys *k;
    query *q;
    int host;
    int32_t *idx;
} call;

static int run_call(void *arg)
{
    call *c = arg;
    if (c->host) /* decode: one sequence, one token */
        return skv_paged_topk(c->ctx, &c->k->pk, &c->k->pb, &c->q->q, K, c->idx, NULL) != SKV_OK;
    return skv_kcache_topk(c->k->kc, c->k->seq, 0, &c->q->q, K, c->idx, NULL) != SKV_OK;
}

static void emit_case(const char *name, const bench_rounds *r, double flops, double key_bytes,
                      const bench_machine *m, const char *vs, int64_t L, int32_t T, const char *dt)
{
    json_line j;
    json_begin(&j);
    json_str(&j, "name", name);
    json_int(&j, "iterations", r->iterations);
    json_num(&j, "real_time", r->ns, 1);
    json_num(&j, "cpu_time", r->cpu_ns, 1);
    json_str(&j, "time_unit", "ns");
    json_int(&j, "H", H), json_int(&j, "D", D), json_int(&j, "k", K), json_int(&j, "T", T);
    json_int(&j, "entries", L);
    json_str(&j, "key_dtype", dt);
    json_num(&j, "ns_per_entry", r->ns / (double)L / T, 4);
    json_num(&j, "gflops", flops / r->ns, 2);
    json_ratio(&j, "frac_fp32_peak", flops / r->ns / m->peak_fp32_gflops);
    if (m->peak_bf16_gflops > 0)
        json_ratio(&j, "frac_bf16_peak", flops / r->ns / m->peak_bf16_gflops);
    else
        json_null(&j, "frac_bf16_peak");
    json_num(&j, "key_gbps", key_bytes / r->ns, 2);
    json_ratio(&j, "frac_stream", key_bytes / r->ns / m->stream_gbps);
    json_str(&j, "vs", vs);
    json_ratio(&j, "time_vs", r->vs_first);
    json_ratio(&j, "time_vs_lo", r->lo);
    json_ratio(&j, "time_vs_hi", r->hi);
    json_num(&j, "peak_fp32_gflops", m->peak_fp32_gflops, 2);
    json_num(&j, "peak_bf16_gflops", m->peak_bf16_gflops, 2);
    json_num(&j, "stream_gbps", m->stream_gbps, 2);
    json_end(&j);
}

/* FP8 owned, MXFP4 owned, bf16 owned, then FP8 and MXFP4 host pages on one shape, in rounds.
 * bf16 keys take the bf16 score kernel with no conversion: MXFP4 against them is the
 * conversion's cost, bf16 against the peak the score kernel's efficiency. */
static void shape(bench_setup_out *s, int64_t L, int32_t T, const float *f32)
{
    keys k8, k4, k16;
    keys_make(&k8, s->ctx, SKV_FP8_E4M3, L, f32);
    keys_make(&k4, s->ctx, SKV_MXFP4_E2M1, L, f32);
    keys_make(&k16, s->ctx, SKV_BF16, L, f32);
    query q;
    query_make(&q, T, L, 7);
    /* FP8 owned first (every time_vs is against it); host pages only for decode, where T
       one-token sequences are the same problem */
    call c[5] = {{s->ctx, &k8, &q, 0, NULL}, {s->ctx, &k4, &q, 0, NULL}, {s->ctx, &k16, &q, 0, NULL},
                 {s->ctx, &k8, &q, 1, NULL}, {s->ctx, &k4, &q, 1, NULL}};
    const char *what[5] = {"fp8/owned", "mxfp4/owned", "bf16/owned", "fp8/host", "mxfp4/host"};
    const char *dt[5] = {"fp8", "mxfp4", "bf16", "fp8", "mxfp4"};
    const double key_bytes[5] = {D + 4, D / 2 + D / 32, 2 * D, D + 4, D / 2 + D / 32};
    const int n = T == 1 ? 5 : 3;
    int32_t *idx[5];
    bench_fn fn[5];
    void *arg[5];
    for (int i = 0; i < n; i++) {
        idx[i] = bench_xmalloc((size_t)T * K * 4);
        c[i].idx = idx[i];
        fn[i] = run_call;
        arg[i] = &c[i];
        if (run_call(&c[i]))
            bench_check(SKV_ERR_STATE, what[i]);
    }
    for (int i = 3; i < n; i++) /* host pages select exactly what the owned cache does */
        if (memcmp(idx[i], idx[i - 3], (size_t)T * K * 4))
            fprintf(stderr, "v4_bench: %s disagrees with the owned cache\n", what[i]);
    bench_rounds r[5];
    bench_check(bench_time_rounds(n, fn, arg, s->min_time, r) ? SKV_ERR_NOMEM : SKV_OK, "timing");
    const double flops = 2.0 * H * D * (double)L * T;
    char name[128];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "v4_indexer/%s/H%d/k%d/entries%lld/%s", T == 1 ? "decode" : "prefill",
                 H, K, (long long)L, what[i]);
        emit_case(name, &r[i], flops, (double)L * key_bytes[i], &s->machine, "fp8/owned", L, T, dt[i]);
    }
    for (int i = 0; i < n; i++)
        free(idx[i]);
    query_free(&q);
    keys_free(&k8);
    keys_free(&k4);
    keys_free(&k16);
}

typedef struct ragged_arg {
    skv_context *ctx;
    skv_key_block kb;
    query *q;
    int32_t *ks, *ke, *idx;
    int separate;
} ragged_arg;

static int run_ragged(void *arg)
{
    ragged_arg *a = arg;
    if (!a->separate)
        return skv_indexer_topk_ragged(a->ctx, &a->q->q, &a->kb, a->ks, a->ke, K, 0, a->idx, NULL) !=
               SKV_OK;
    for (int32_t t = 0; t < a->q->q.n_tokens; t++) {
        const int64_t n = a->ke[t] - a->ks[t];
        const skv_key_block sub = {n, D, SKV_MXFP4_E2M1, (const uint8_t *)a->kb.k + (size_t)a->ks[t] * D / 2,
                                   NULL, a->kb.k_mx_scale + (size_t)a->ks[t] * D / 32};
        skv_indexer_query sq = a->q->q;
        sq.n_tokens = 1;
        sq.q = a->q->q8 + (size_t)t * H * D;
        sq.q_scale = a->q->qs + (size_t)t * H;
        sq.weights = a->q->w + (size_t)t * H;
        sq.positions = NULL;
        if (skv_indexer_topk(a->ctx, &sq, &sub, K, a->idx + (size_t)t * K, NULL) != SKV_OK)
            return 1;
    }
    return 0;
}

/* 8 decode sequences of 4K entries each on one MXFP4 buffer: one ragged call against 8. */
static void ragged(bench_setup_out *s, const float *f32)
{
    const int32_t S = 8;
    const int64_t per = 4096, L = S * per;
    uint8_t *codes = bench_xmalloc((size_t)L * D / 2), *sc = bench_xmalloc((size_t)L * D / 32);
    bench_check(skv_quantize_mxfp4(f32, L, D, D, codes, sc), "quantize mxfp4");
    query q;
    query_make(&q, S, per, 11);
    q.q.positions = NULL;
    int32_t ks[8], ke[8];
    for (int i = 0; i < S; i++)
        ks[i] = (int32_t)(i * per), ke[i] = (int32_t)((i + 1) * per);
    int32_t *i1 = bench_xmalloc((size_t)S * K * 4), *i2 = bench_xmalloc((size_t)S * K * 4);
    ragged_arg a1 = {s->ctx, {L, D, SKV_MXFP4_E2M1, codes, NULL, sc}, &q, ks, ke, i1, 1};
    ragged_arg a2 = a1;
    a2.separate = 0, a2.idx = i2;
    const bench_fn fn[2] = {run_ragged, run_ragged};
    void *const arg[2] = {&a1, &a2};
    bench_rounds r[2];
    bench_check(bench_time_rounds(2, fn, arg, s->min_time, r) ? SKV_ERR_NOMEM : SKV_OK, "timing");
    for (int i = 0; i < S * K; i++)
        if (i2[i] >= 0)
            i2[i] -= ks[i / K];
    if (memcmp(i1, i2, (size_t)S * K * 4))
        fprintf(stderr, "v4_bench: ragged and separate calls disagree\n");
    const double flops = 2.0 * H * D * (double)L;
    emit_case("v4_ragged/decode/8seq/entries4096/mxfp4/8_calls", &r[0], flops, (double)L * 68,
              &s->machine, "8_calls", L, 1, "mxfp4");
    emit_case("v4_ragged/decode/8seq/entries4096/mxfp4/one_ragged_call", &r[1], flops, (double)L * 68,
              &s->machine, "8_calls", L, 1, "mxfp4");
    free(codes), free(sc), free(i1), free(i2);
    query_free(&q);
}

int main(int argc, char **argv)
{
    bench_setup_out s;
    const int rc = bench_setup(argc, argv, "sparsekv-bench-v4", 1.0, &s);
    if (rc)
        return rc;
    const int64_t Lmax = s.quick ? 32768 : 262144;
    float *f32 = bench_xmalloc((size_t)Lmax * D * 4);
    uint64_t seed = 3;
    for (size_t i = 0; i < (size_t)Lmax * D; i++)
        f32[i] = uniform(&seed);
    shape(&s, 32768, 1, f32);
    if (!s.quick)
        shape(&s, 262144, 1, f32);
    shape(&s, 32768, s.quick ? 64 : 512, f32);
    if (!s.quick)
        shape(&s, 262144, 512, f32);
    ragged(&s, f32);
    free(f32);
    skv_context_destroy(s.ctx);
    return 0;
}
