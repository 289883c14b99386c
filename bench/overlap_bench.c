/* sparsekv-bench-overlap: how much the opt-in int8 path changes the selection. Top-k overlap
 * |T_int8 & T_exact| / k at k = 128 against the exact path (f32 arithmetic on the same values):
 * on the real activations (../shared/data/dev, or the folder given: every layer, query tokens
 * 1024..2047, causal; F16 queries and keys as stored, the int8 path on those keys quantised to
 * Q8_0), and on the indexer bench's inputs (uniform, 64 heads x 128, a 512-token prefill chunk
 * at 32K and 8 decode tokens at 128K). Also the overlap of Q8_0 keys with exact queries (the
 * keys' quantisation alone). One JSON line per case; not a timing, so no exclusive lock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define K 128

typedef struct stats { double mean, min; } stats;

static stats overlap(const int32_t *a, const int32_t *b, int32_t T)
{
    stats s = {0, 1};
    for (int32_t t = 0; t < T; t++) {
        int c = 0, n = 0;
        for (int i = 0; i < K; i++) {
            n += a[t * K + i] >= 0;
            for (int j = 0; j < K && a[t * K + i] >= 0; j++)
                c += a[t * K + i] == b[t * K + j];
        }
        const double o = n ? (double)c / n : 1;
        s.mean += o / T;
        s.min = o < s.min ? o : s.min;
    }
    return s;
}

/* The three selections of q over f32 keys k32 [L][D]: exact, Q8_0 keys, int8 path. */
static void measure(skv_context *ctx, skv_context *ctx8, const skv_indexer_query *q,
                    const skv_key_block *exact_keys, const float *k32, int64_t L, int32_t D,
                    const char *name)
{
    const int32_t T = q->n_tokens;
    void *k8 = bench_xmalloc((size_t)L * (size_t)(D / 32) * 34);
    bench_check(skv_quantize_q8_0(k32, L, D, D, k8), "quantise keys");
    const skv_key_block kq = {L, D, SKV_Q8_0, k8, NULL};
    int32_t *ie = bench_xmalloc((size_t)T * K * 4), *iq = bench_xmalloc((size_t)T * K * 4);
    int32_t *i8 = bench_xmalloc((size_t)T * K * 4);
    bench_check(skv_indexer_topk(ctx, q, exact_keys, K, ie, NULL), "exact top-k");
    bench_check(skv_indexer_topk(ctx, q, &kq, K, iq, NULL), "Q8_0 top-k");
    bench_check(skv_indexer_topk(ctx8, q, &kq, K, i8, NULL), "int8 top-k");
    const stats sq = overlap(ie, iq, T), s8 = overlap(ie, i8, T);
    json_line j;
    json_begin(&j);
    json_str(&j, "name", name);
    json_int(&j, "T", T);
    json_int(&j, "L", L);
    json_int(&j, "H", q->n_heads);
    json_int(&j, "D", D);
    json_int(&j, "k", K);
    json_num(&j, "q8_0_keys_overlap_mean", sq.mean, 4);
    json_num(&j, "q8_0_keys_overlap_min", sq.min, 4);
    json_num(&j, "int8_overlap_mean", s8.mean, 4);
    json_num(&j, "int8_overlap_min", s8.min, 4);
    json_end(&j);
    free(k8), free(ie), free(iq), free(i8);
}

static void *load(const char *dir, const char *file, size_t bytes)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    void *p = bench_xmalloc(bytes);
    const size_t got = fread(p, 1, bytes, f);
    fclose(f);
    if (got != bytes)
        free(p), p = NULL;
    return p;
}

static void real_data(skv_context *ctx, skv_context *ctx8, const char *dir)
{
    enum { T = 2048, H = 16, D = 32, T0 = 1024 };
    for (int l = 0; l < 6; l++) {
        char fq[32], fw[32], fk[32];
        snprintf(fq, sizeof fq, "L%d_iq.bin", l), snprintf(fw, sizeof fw, "L%d_iw.bin", l);
        snprintf(fk, sizeof fk, "L%d_ik.bin", l);
        uint16_t *iq = load(dir, fq, (size_t)T * H * D * 2), *ik = load(dir, fk, (size_t)T * D * 2);
        float *iw = load(dir, fw, (size_t)T * H * 4);
        if (!iq || !ik || !iw) {
            fprintf(stderr, "sparsekv-bench-overlap: %s: no activations, real-data cases skipped\n", dir);
            free(iq), free(ik), free(iw);
            return;
        }
        float *k32 = bench_xmalloc((size_t)T * D * 4);
        bench_check(skv_convert(SKV_F32, k32, SKV_F16, ik, (int64_t)T * D), "widen keys");
        int32_t pos[T - T0];
        for (int t = 0; t < T - T0; t++)
            pos[t] = T0 + t;
        const skv_indexer_query q = {T - T0, H, D, SKV_F16, iq + (size_t)T0 * H * D, NULL,
                                     iw + (size_t)T0 * H, pos};
        const skv_key_block kb = {T, D, SKV_F16, ik, NULL};
        char name[64];
        snprintf(name, sizeof name, "overlap/dev/L%d", l);
        measure(ctx, ctx8, &q, &kb, k32, T, D, name);
        free(iq), free(ik), free(iw), free(k32);
    }
}

static void bench_inputs_case(skv_context *ctx, skv_context *ctx8, int32_t T, int64_t L, const char *name)
{
    enum { H = 64, D = 128 };
    float *q = bench_xmalloc((size_t)T * H * D * 4), *w = bench_xmalloc((size_t)T * H * 4);
    float *k = bench_xmalloc((size_t)L * D * 4);
    int32_t *pos = bench_xmalloc((size_t)T * 4);
    fill_uniform(q, (size_t)T * H * D, 1), fill_uniform(w, (size_t)T * H, 2), fill_uniform(k, (size_t)L * D, 3);
    for (int32_t t = 0; t < T; t++)
        pos[t] = (int32_t)(L - T + t);
    const skv_indexer_query qq = {T, H, D, SKV_F32, q, NULL, w, pos};
    const skv_key_block kb = {L, D, SKV_F32, k, NULL};
    measure(ctx, ctx8, &qq, &kb, k, L, D, name);
    free(q), free(w), free(k), free(pos);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "../shared/data/dev";
    skv_context *ctx = NULL, *ctx8 = NULL;
    bench_check(skv_context_create(NULL, &ctx), "context");
    bench_check(skv_context_create(NULL, &ctx8), "context");
    bench_check(skv_context_set_int8_queries(ctx8, 1), "int8 queries");
    real_data(ctx, ctx8, dir);
    bench_inputs_case(ctx, ctx8, 512, 32768, "overlap/bench/prefill/H64/T512/L32768");
    bench_inputs_case(ctx, ctx8, 8, 131072, "overlap/bench/decode/H64/T8/L131072");
    skv_context_destroy(ctx8);
    skv_context_destroy(ctx);
    return 0;
}
