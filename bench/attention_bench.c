/* sparsekv-bench-attention: CPU sparse attention (skv_sparse_attention) on decode-shaped
 * selections gathered from a 128K-token context, an MLA/DSA-shaped case, and dense attention
 * over the whole context; against the scalar kernel (cpu_mask 0), the double-precision
 * reference, and the machine's limits measured in the same run. JSON Lines, google-benchmark
 * field names; the first record is the machine's.
 *
 *   sparsekv-bench-attention [--quick] [--threads N] [--min-time S] [--filter S[,S...]]
 *                            [--no-ref]
 *
 * Counted per call: flops = 2 * Hq * T * rows * (k_dim + v_dim) (q.k and p.v multiply-adds;
 * exp and the softmax bookkeeping not counted), bytes = K and V bytes of the rows read
 * (Hkv * rows * (k_dim + v_dim) * element size; q and out are negligible). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench.h"

#define CTX (128 * 1024) /* context tokens per KV head */
#define HKV 8
#define HQ 32
#define DIM 128

typedef struct options {
    const char *filter;
    double min_time;
    int threads, quick, no_ref;
} options;

static void die(const char *what, const char *why)
{
    fprintf(stderr, "sparsekv-bench-attention: %s: %s\n", what, why);
    exit(1);
}

static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->min_time = -1;
#ifdef _OPENMP
    o->threads = omp_get_max_threads();
#else
    o->threads = 1;
#endif
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quick")) {
            o->quick = 1;
        } else if (!strcmp(a, "--no-ref")) {
            o->no_ref = 1;
        } else if (!strcmp(a, "--threads") && v) {
            o->threads = atoi(v), i++;
            if (o->threads < 1 || o->threads > 4096)
                return -1;
        } else if (!strcmp(a, "--min-time") && v) {
            o->min_time = atof(v), i++;
            if (!(o->min_time >= 0 && o->min_time <= 3600))
                return -1;
        } else if (!strcmp(a, "--filter") && v) {
            o->filter = v, i++;
        } else {
            fputs("usage: sparsekv-bench-attention [--quick] [--threads N] [--min-time S] "
                  "[--filter S[,S...]] [--no-ref]\n", stderr);
            return -1;
        }
    }
    if (o->min_time < 0)
        o->min_time = o->quick ? 0.1 : 0.3;
    return 0;
}

static int selected(const options *o, const char *name)
{
    return bench_name_selected(o->filter, name);
}

/* ---- inputs ------------------------------------------------------------------------------- */

/* x[0..n) uniform in [-1, 1) from a fixed seed (xorshift64*), in parallel chunks. */
static void fill(float *x, size_t n, uint64_t seed)
{
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < (int64_t)((n + 65535) / 65536); c++) {
        uint64_t s = seed * 0x9e3779b97f4a7c15ull + (uint64_t)c * 0xbf58476d1ce4e5b9ull + 1;
        const size_t end = (size_t)(c + 1) * 65536 < n ? (size_t)(c + 1) * 65536 : n;
        for (size_t i = (size_t)c * 65536; i < end; i++) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            x[i] = (float)((double)((s * 0x2545f4914f6cdd1dull) >> 40) * 0x1p-23 - 1.0);
        }
    }
}

static uint16_t *to_bf16(const float *x, size_t n)
{
    uint16_t *d = bench_xmalloc(n * 2);
    if (skv_convert(SKV_BF16, d, SKV_F32, x, (int64_t)n) != SKV_OK)
        die("skv_convert", "failed");
    return d;
}

/* K and V of a context: [HKV][CTX][DIM] each, f32 and bf16. */
typedef struct context_kv {
    float *k, *v;
    uint16_t *kb, *vb;
    int32_t *pos; /* [HKV * CTX]: position of each row */
} context_kv;

/* One batch and everything it points at. */
typedef struct batch {
    skv_attn_batch b;
    void *q, *k, *v; /* owned unless borrowed */
    int32_t *q_pos, *k_pos, *len;
    int64_t *start;
    int borrowed;
    float *out, *lse;
} batch;

static void batch_free(batch *x)
{
    free(x->q), free(x->q_pos), free(x->len), free(x->start), free(x->out), free(x->lse);
    if (!x->borrowed)
        free(x->k), free(x->v), free(x->k_pos);
}

static void batch_init(batch *x, int32_t T, int32_t Hq, int32_t Hkv, int32_t kd, int32_t vd,
                       skv_dtype dt, uint64_t seed)
{
    memset(x, 0, sizeof *x);
    const size_t nq = (size_t)T * Hq * kd;
    float *q = bench_xmalloc(nq * 4);
    fill(q, nq, seed);
    x->q = dt == SKV_F32 ? (void *)q : (void *)to_bf16(q, nq);
    if (dt != SKV_F32)
        free(q);
    x->q_pos = bench_xmalloc((size_t)T * 4);
    x->len = bench_xmalloc((size_t)T * Hkv * 4);
    x->start = bench_xmalloc((size_t)T * Hkv * 8);
    x->out = bench_xmalloc((size_t)T * Hq * vd * 4);
    x->lse = bench_xmalloc((size_t)T * Hq * 4);
    skv_attn_batch *b = &x->b;
    memset(b, 0, sizeof *b);
    b->struct_size = sizeof *b;
    b->n_tokens = T, b->n_q_heads = Hq, b->n_kv_heads = Hkv, b->k_dim = kd, b->v_dim = vd;
    b->dtype = dt, b->scale = 1.0f / sqrtf((float)kd), b->causal = 1;
    b->q = x->q, b->q_pos = x->q_pos, b->list_start = x->start, b->list_len = x->len;
}

/* Decode: one token at the end of the context; each KV head selects `rows` distinct random
 * positions of its 128K, gathered (in position order) into contiguous K, V and positions. */
static void make_decode(batch *x, const context_kv *c, int32_t rows, skv_dtype dt)
{
    batch_init(x, 1, HQ, HKV, DIM, DIM, dt, 11 + (uint64_t)rows);
    const size_t es = dt == SKV_F32 ? 4 : 2, n = (size_t)HKV * rows;
    uint8_t *k = bench_xmalloc(n * DIM * es), *v = bench_xmalloc(n * DIM * es);
    x->k_pos = bench_xmalloc(n * 4);
    uint8_t *taken = bench_xmalloc(CTX);
    uint64_t s = 0x1234567ull + (uint64_t)rows;
    for (int32_t g = 0; g < HKV; g++) {
        memset(taken, 0, CTX);
        for (int32_t i = 0; i < rows;) {
            s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
            const int32_t p = (int32_t)((s * 0x2545f4914f6cdd1dull) >> 47); /* < 128K */
            i += !taken[p];
            taken[p] = 1;
        }
        size_t r = (size_t)g * rows;
        for (int32_t p = 0; p < CTX; p++) {
            if (!taken[p])
                continue;
            const size_t src = (size_t)g * CTX + p;
            const void *ks = dt == SKV_F32 ? (const void *)(c->k + src * DIM)
                                           : (const void *)(c->kb + src * DIM);
            const void *vs = dt == SKV_F32 ? (const void *)(c->v + src * DIM)
                                           : (const void *)(c->vb + src * DIM);
            memcpy(k + r * DIM * es, ks, DIM * es);
            memcpy(v + r * DIM * es, vs, DIM * es);
            x->k_pos[r++] = p;
        }
        x->start[g] = (int64_t)g * rows;
        x->len[g] = rows;
    }
    free(taken);
    x->k = k, x->v = v;
    x->q_pos[0] = CTX - 1;
    x->b.n_rows = (int64_t)n, x->b.k = k, x->b.v = v, x->b.k_pos = x->k_pos;
}

/* Dense: the same token over every row of its KV head's context. */
static void make_dense(batch *x, const context_kv *c, skv_dtype dt)
{
    batch_init(x, 1, HQ, HKV, DIM, DIM, dt, 12);
    x->borrowed = 1;
    x->k = dt == SKV_F32 ? (void *)c->k : (void *)c->kb;
    x->v = dt == SKV_F32 ? (void *)c->v : (void *)c->vb;
    x->k_pos = c->pos;
    for (int32_t g = 0; g < HKV; g++)
        x->start[g] = (int64_t)g * CTX, x->len[g] = CTX;
    x->q_pos[0] = CTX - 1;
    x->b.n_rows = (int64_t)HKV * CTX, x->b.k = x->k, x->b.v = x->v, x->b.k_pos = c->pos;
}

/* MLA / DSA: 128 query heads share one list of 2048 rows of a 576-dim key (latent + rope) and
 * a 512-dim value. */
static void make_mla(batch *x, skv_dtype dt)
{
    enum { ROWS = 2048, KD = 576, VD = 512 };
    batch_init(x, 1, 128, 1, KD, VD, dt, 13);
    float *k = bench_xmalloc((size_t)ROWS * KD * 4), *v = bench_xmalloc((size_t)ROWS * VD * 4);
    fill(k, (size_t)ROWS * KD, 14);
    fill(v, (size_t)ROWS * VD, 15);
    if (dt == SKV_F32) {
        x->k = k, x->v = v;
    } else {
        x->k = to_bf16(k, (size_t)ROWS * KD), x->v = to_bf16(v, (size_t)ROWS * VD);
        free(k), free(v);
    }
    x->k_pos = bench_xmalloc(ROWS * 4);
    for (int32_t i = 0; i < ROWS; i++)
        x->k_pos[i] = i * 50;
    x->q_pos[0] = ROWS * 50;
    x->start[0] = 0, x->len[0] = ROWS;
    x->b.n_rows = ROWS, x->b.k = x->k, x->b.v = x->v, x->b.k_pos = x->k_pos;
}

/* ---- timing and records ------------------------------------------------------------------- */

typedef struct call {
    skv_context *ctx; /* NULL: the reference */
    batch *x;
    float *out, *lse;
    skv_status st;
} call;

static int run_call(void *arg)
{
    call *c = arg;
    c->st = c->ctx ? skv_sparse_attention(c->ctx, &c->x->b, c->out, NULL, c->lse)
                   : skv_sparse_attention_reference(&c->x->b, c->out, NULL, c->lse);
    return c->st != SKV_OK;
}

static double time_call(call *c, double min_time, int64_t min_iters, bench_timing *t)
{
    if (bench_time(run_call, c, min_time, min_iters, 1, 1.0, t))
        die("skv_sparse_attention", c->st != SKV_OK ? skv_status_string(c->st) : "out of memory");
    return t->median_ns;
}

typedef struct run_state {
    const options *opt;
    const bench_machine *m;
    skv_context *ctx, *ctx_scalar;
    const char *isa;
} run_state;

/* Largest |out - ref| over the largest |ref|: the kernel's error against the reference. */
static double rel_err(const float *out, const float *ref, size_t n)
{
    double e = 0, mag = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)out[i] - ref[i]));
        mag = fmax(mag, fabs((double)ref[i]));
    }
    return mag > 0 ? e / mag : e;
}

static void run_case(const run_state *rs, const char *kind, batch *x, int64_t rows, int scalar,
                     int reference)
{
    const skv_attn_batch *b = &x->b;
    char name[160];
    snprintf(name, sizeof name, "attention/%s/Hq%d/Hkv%d/k%d/v%d/rows%lld/%s/%s", kind,
             b->n_q_heads, b->n_kv_heads, b->k_dim, b->v_dim, (long long)rows,
             b->dtype == SKV_F32 ? "f32" : "bf16", rs->isa);
    if (!selected(rs->opt, name))
        return;
    const size_t n_out = (size_t)b->n_tokens * b->n_q_heads * b->v_dim;
    const double mt = rs->opt->min_time;
    bench_timing t, ts = {0}, tr = {0};
    call c = {rs->ctx, x, x->out, x->lse, SKV_OK};
    time_call(&c, mt, 3, &t);
    float *ref = NULL;
    if (scalar) {
        call cs = {rs->ctx_scalar, x, bench_xmalloc(n_out * 4),
                   bench_xmalloc((size_t)b->n_tokens * b->n_q_heads * 4), SKV_OK};
        time_call(&cs, 0.6 * mt, 1, &ts);
        free(cs.out), free(cs.lse);
    }
    if (reference && !rs->opt->no_ref) {
        ref = bench_xmalloc(n_out * 4);
        float *rl = bench_xmalloc((size_t)b->n_tokens * b->n_q_heads * 4);
        call cr = {NULL, x, ref, rl, SKV_OK};
        time_call(&cr, 0.6 * mt, 1, &tr);
        free(rl);
    }
    const double es = b->dtype == SKV_F32 ? 4 : 2;
    const double flops = 2.0 * b->n_q_heads * b->n_tokens * (double)rows * (b->k_dim + b->v_dim);
    const double bytes =
        (double)b->n_kv_heads * b->n_tokens * (double)rows * (b->k_dim + b->v_dim) * es;
    const double gflops = flops / t.median_ns, gbps = bytes / t.median_ns;
    json_line j;
    json_begin(&j);
    json_str(&j, "name", name);
    json_int(&j, "iterations", t.iterations);
    json_num(&j, "real_time", t.median_ns, 1);
    json_num(&j, "cpu_time", t.cpu_ns, 1);
    json_str(&j, "time_unit", "ns");
    json_num(&j, "min_time", t.min_ns, 1);
    json_int(&j, "tokens", b->n_tokens);
    json_int(&j, "q_heads", b->n_q_heads);
    json_int(&j, "kv_heads", b->n_kv_heads);
    json_int(&j, "k_dim", b->k_dim);
    json_int(&j, "v_dim", b->v_dim);
    json_int(&j, "rows_per_list", rows);
    json_str(&j, "dtype", b->dtype == SKV_F32 ? "f32" : "bf16");
    json_num(&j, "gflops", gflops, 2);
    json_num(&j, "gbps", gbps, 2);
    json_ratio(&j, "frac_fp32_peak", gflops / rs->m->peak_fp32_gflops);
    json_ratio(&j, "frac_bf16_peak",
               rs->m->peak_bf16_gflops > 0 ? gflops / rs->m->peak_bf16_gflops : NAN);
    json_ratio(&j, "frac_stream", gbps / rs->m->stream_gbps);
    json_num(&j, "scalar_time", scalar ? ts.median_ns : NAN, 1);
    json_ratio(&j, "speedup_vs_scalar", scalar ? ts.median_ns / t.median_ns : NAN);
    json_num(&j, "reference_time", ref ? tr.median_ns : NAN, 1);
    json_ratio(&j, "speedup_vs_reference", ref ? tr.median_ns / t.median_ns : NAN);
    json_ratio(&j, "max_rel_err_vs_reference", ref ? rel_err(x->out, ref, n_out) : NAN);
    json_str(&j, "flops", "2*Hq*T*rows*(k_dim+v_dim)");
    json_str(&j, "bytes", "Hkv*T*rows*(k_dim+v_dim)*elem");
    json_int(&j, "threads", rs->opt->threads);
    json_str(&j, "isa", rs->isa);
    if (json_end(&j))
        die("JSON", "out of memory");
    free(ref);
}

static void machine_record(const run_state *rs)
{
    const bench_machine *m = rs->m;
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "machine");
    json_num(&j, "peak_fp32_gflops", m->peak_fp32_gflops, 2);
    json_num(&j, "peak_fp32_gflops_median", m->peak_fp32_median, 2);
    json_num(&j, "peak_bf16_gflops", m->peak_bf16_gflops, 2);
    json_num(&j, "peak_bf16_gflops_median", m->peak_bf16_median, 2);
    json_num(&j, "stream_gbps", m->stream_gbps, 2);
    json_num(&j, "stream_gbps_median", m->stream_median, 2);
    json_str(&j, "peak_isa", m->peak_isa);
    json_int(&j, "threads", rs->opt->threads);
    json_str(&j, "cpu", skv_cpu_level_name(skv_cpu_flags()));
    json_str(&j, "isa", rs->isa);
    json_int(&j, "sparsekv_version", skv_version());
    json_num(&j, "min_time_s", rs->opt->min_time, 3);
    json_bool(&j, "quick", rs->opt->quick);
    if (json_end(&j))
        die("JSON", "out of memory");
}

/* The limits again after the cases: far from the first record's, something else ran. */
static void machine_end_record(const run_state *rs)
{
    bench_machine m;
    if (machine_measure(rs->opt->threads, rs->opt->quick, &m))
        die("triad arrays", "out of memory");
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "machine_end");
    json_num(&j, "peak_fp32_gflops", m.peak_fp32_gflops, 2);
    json_num(&j, "peak_bf16_gflops", m.peak_bf16_gflops, 2);
    json_num(&j, "stream_gbps", m.stream_gbps, 2);
    json_ratio(&j, "peak_fp32_vs_start", m.peak_fp32_gflops / rs->m->peak_fp32_gflops);
    json_ratio(&j, "stream_vs_start", m.stream_gbps / rs->m->stream_gbps);
    json_int(&j, "threads", rs->opt->threads);
    if (json_end(&j))
        die("JSON", "out of memory");
}

static skv_context *context(int threads, uint32_t mask)
{
    skv_context_params p;
    skv_context_params_init(&p);
    p.n_threads = threads;
    p.cpu_mask = mask;
    skv_context *ctx;
    const skv_status st = skv_context_create(&p, &ctx);
    if (st != SKV_OK)
        die("skv_context_create", skv_status_string(st));
    return ctx;
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o))
        return 2;
#ifdef _OPENMP
    omp_set_dynamic(0);
    omp_set_num_threads(o.threads);
#endif
    run_state rs = {.opt = &o};
    rs.ctx = context(o.threads, SKV_CPU_ALL);
    rs.ctx_scalar = context(o.threads, 0);
    rs.isa = skv_cpu_level_name(skv_context_cpu_flags(rs.ctx));
    bench_machine m;
    if (machine_measure(o.threads, o.quick, &m))
        die("triad arrays", "out of memory");
    rs.m = &m;
    machine_record(&rs);

    context_kv c;
    const size_t n = (size_t)HKV * CTX * DIM;
    c.k = bench_xmalloc(n * 4), c.v = bench_xmalloc(n * 4);
    fill(c.k, n, 1), fill(c.v, n, 2);
    c.kb = to_bf16(c.k, n), c.vb = to_bf16(c.v, n);
    c.pos = bench_xmalloc((size_t)HKV * CTX * 4);
    for (size_t i = 0; i < (size_t)HKV * CTX; i++)
        c.pos[i] = (int32_t)(i % CTX);

    static const int32_t rows[3] = {256, 2048, 8192};
    for (int dt = 0; dt < 2; dt++) {
        const skv_dtype t = dt ? SKV_BF16 : SKV_F32;
        for (int i = 0; i < 3; i++) {
            batch x;
            make_decode(&x, &c, rows[i], t);
            run_case(&rs, "decode", &x, rows[i], 1, 1);
            batch_free(&x);
        }
        batch x;
        make_mla(&x, t);
        run_case(&rs, "mla", &x, 2048, 1, !o.quick);
        batch_free(&x);
        make_dense(&x, &c, t);
        run_case(&rs, "dense", &x, CTX, !o.quick, 0);
        batch_free(&x);
    }
    free(c.k), free(c.v), free(c.kb), free(c.vb), free(c.pos);
    machine_end_record(&rs);
    skv_context_destroy(rs.ctx);
    skv_context_destroy(rs.ctx_scalar);
    return 0;
}
