/* sparsekv-bench: the lightning indexer and its top-k against a BLAS + sort reference, a naive
 * reference and the machine's limits measured in the same run. One JSON record per line, in
 * google-benchmark's field names. See bench/README.md for the fields. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench.h"

#define HEAD_DIM 128
#define TOP_K 2048
#define TOPK_ROW_LEN 131072
#define SHARE_TARGET 0.05 /* the target: top-k at most 5 % of the scoring time */

typedef struct options {
    const char *filter; /* comma-separated substrings; NULL = every case */
    double min_time;    /* seconds of measured calls per library timing */
    int threads, quick, no_ref;
    uint32_t cpu_mask;
    const char *dump;
} options;

/* What the run has measured so far, and whether anything failed. */
typedef struct run_state {
    const options *opt;
    const bench_machine *machine;
    skv_context *ctx, *ctx1; /* n_threads = opt->threads, and 1 */
    const char *isa;
    ref_ws *ws;
    double scores_128k_ns, topk_row_ns; /* for the topk_share record; 0 = not measured */
    int failures;
} run_state;

/* ---- options --------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: sparsekv-bench [options]\n"
          "  --filter S[,S...]  run only the cases whose name contains one of the substrings\n"
          "  --min-time SEC     measured time per library timing (default 0.5; 0.1 with --quick);\n"
          "                     references get 0.6 x SEC and at least one call\n"
          "  --threads N        OpenMP threads for everything (default: all, omp_get_max_threads)\n"
          "  --quick            decode at L = 8K and 32K only, shorter machine measurements\n"
          "  --cpu-mask X       skv_context_params.cpu_mask: a number (0x7, 0 = scalar) or one of\n"
          "                     scalar, avx2, avx512, avx512bf16\n"
          "  --no-ref           skip the reference paths (no speed-ups, no match check)\n"
          "  --dump DIR         also run the PyTorch peer cases and write their inputs and the\n"
          "                     library's top-k under DIR (see bench/peers/torch_indexer.py)\n"
          "  --help\n",
          f);
}

static int parse_mask(const char *s, uint32_t *out)
{
    static const struct {
        const char *name;
        uint32_t mask;
    } names[] = {
        {"scalar", 0},
        {"avx2", SKV_CPU_AVX2},
        {"avx512", SKV_CPU_AVX2 | SKV_CPU_AVX512},
        {"avx512bf16", SKV_CPU_AVX2 | SKV_CPU_AVX512 | SKV_CPU_AVX512BF16},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) {
            *out = names[i].mask;
            return 0;
        }
    char *end;
    errno = 0;
    const unsigned long v = strtoul(s, &end, 0);
    if (errno || end == s || *end || v > 0xffffffffu)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* 0 = run, 1 = --help printed, -1 = bad arguments. */
static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->min_time = -1.0;
    o->cpu_mask = SKV_CPU_ALL;
#ifdef _OPENMP
    o->threads = omp_get_max_threads();
#else
    o->threads = 1;
#endif
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--quick")) {
            o->quick = 1;
        } else if (!strcmp(a, "--no-ref")) {
            o->no_ref = 1;
        } else if (!v) {
            fprintf(stderr, "sparsekv-bench: %s: unknown option or missing value\n", a);
            return -1;
        } else if (!strcmp(a, "--filter")) {
            o->filter = v;
            i++;
        } else if (!strcmp(a, "--dump")) {
            o->dump = v;
            i++;
        } else if (!strcmp(a, "--min-time")) {
            o->min_time = strtod(v, &end);
            if (end == v || *end || !(o->min_time >= 0.0) || o->min_time > 3600.0) {
                fprintf(stderr, "sparsekv-bench: --min-time %s: want seconds in [0, 3600]\n", v);
                return -1;
            }
            i++;
        } else if (!strcmp(a, "--threads")) {
            const long n = strtol(v, &end, 10);
            if (end == v || *end || n < 1 || n > 4096) {
                fprintf(stderr, "sparsekv-bench: --threads %s: want 1..4096\n", v);
                return -1;
            }
            o->threads = (int)n;
            i++;
        } else if (!strcmp(a, "--cpu-mask")) {
            if (parse_mask(v, &o->cpu_mask)) {
                fprintf(stderr, "sparsekv-bench: --cpu-mask %s: want a number or a level name\n", v);
                return -1;
            }
            i++;
        } else {
            fprintf(stderr, "sparsekv-bench: %s: unknown option\n", a);
            return -1;
        }
    }
    if (o->min_time < 0.0)
        o->min_time = o->quick ? 0.1 : 0.5;
    return 0;
}

static int selected(const options *o, const char *name)
{
    return bench_name_selected(o->filter, name);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *dtype_name(skv_dtype t)
{
    switch (t) {
    case SKV_F32: return "f32";
    case SKV_BF16: return "bf16";
    case SKV_F16: return "f16";
    case SKV_FP8_E4M3: return "fp8";
    case SKV_MXFP4_E2M1: return "mxfp4";
    case SKV_Q8_0: return "q8_0";
    }
    return "?";
}

static void die_status(const char *what, skv_status st)
{
    fprintf(stderr, "sparsekv-bench: %s: %s (%d)\n", what, skv_status_string(st), (int)st);
    exit(1);
}

static void die_oom(const char *what)
{
    fprintf(stderr, "sparsekv-bench: %s: out of memory\n", what);
    exit(1);
}

static void emit(json_line *j)
{
    if (json_end(j))
        die_oom("JSON record");
}

static void machine_fields(json_line *j, const bench_machine *m)
{
    json_num(j, "peak_fp32_gflops", m->peak_fp32_gflops, 2);
    json_num(j, "peak_bf16_gflops", m->peak_bf16_gflops, 2);
    json_num(j, "stream_gbps", m->stream_gbps, 2);
}

static void time_fields(json_line *j, const bench_timing *t)
{
    json_int(j, "iterations", t->iterations);
    json_num(j, "real_time", t->median_ns, 1);
    json_num(j, "cpu_time", t->cpu_ns, 1);
    json_str(j, "time_unit", "ns");
    json_num(j, "mean_time", t->mean_ns, 1);
    json_num(j, "min_time", t->min_ns, 1);
}

/* a / b, or NaN (written as null) when b is not positive. */
static double ratio(double a, double b)
{
    return b > 0.0 ? a / b : NAN;
}

/* ---- timed calls ---------------------------------------------------------------------------- */

typedef struct lib_call {
    skv_context *ctx;
    const bench_inputs *in;
    int32_t *idx;  /* topk */
    float *scores; /* scores */
    skv_status st;
} lib_call;

static int call_topk(void *arg)
{
    lib_call *c = arg;
    c->st = skv_indexer_topk(c->ctx, &c->in->query, &c->in->keys_block, c->in->k, c->idx, NULL);
    return c->st != SKV_OK;
}

static int call_scores(void *arg)
{
    lib_call *c = arg;
    c->st = skv_indexer_scores(c->ctx, &c->in->query, &c->in->keys_block, c->scores);
    return c->st != SKV_OK;
}

typedef struct ref_call {
    ref_ws *ws;
    const ref_problem *p;
    int threads, naive;
    int32_t *idx;
} ref_call;

static int call_ref(void *arg)
{
    ref_call *c = arg;
    return c->naive ? ref_naive_topk(c->ws, c->p, c->threads, c->idx)
                    : ref_blas_sort_topk(c->ws, c->p, c->threads, c->idx);
}

typedef struct row_call {
    skv_context *ctx; /* library when non-NULL, else a std:: selection */
    ref_ws *ws;
    ref_select how;
    const float *x;
    int64_t n;
    int32_t k;
    int32_t *idx;
    skv_status st;
} row_call;

static int call_row(void *arg)
{
    row_call *c = arg;
    if (c->ctx) {
        c->st = skv_topk_rows(c->ctx, c->x, 1, c->n, c->n, NULL, c->k, c->idx, NULL);
        return c->st != SKV_OK;
    }
    return ref_select_row(c->ws, c->how, c->x, c->n, c->k, c->idx);
}

/* Times a call; on failure reports it and exits. `st` is where a library call leaves its
 * status (NULL for the references, which return -1 out of memory or -2 unavailable). */
static void timed(const char *what, bench_fn fn, void *arg, const skv_status *st,
                  double min_time, int64_t min_iters, double warmup_counts_after, bench_timing *t)
{
    const int rc = bench_time(fn, arg, min_time, min_iters, 1, warmup_counts_after, t);
    if (rc == 0)
        return;
    if (st && *st != SKV_OK)
        die_status(what, *st);
    fprintf(stderr, "sparsekv-bench: %s: %s\n", what,
            rc == -2 ? "not available in this build" : "out of memory");
    exit(1);
}

/* ---- checking a selection against a reference ------------------------------------------- */

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Exact score in double precision and a bound on the error of any f32 evaluation of it
 * (gamma_n times the sum of the magnitudes of its terms, n covering the D-term dot products,
 * the H-term head sum and the scale and weight roundings). */
static double exact_score(const ref_problem *p, int32_t t, int64_t s, double *bound)
{
    double score = 0.0, mag = 0.0;
    const float *key = p->keys + (size_t)s * p->D;
    for (int32_t h = 0; h < p->H; h++) {
        const float *qh = p->q + ((size_t)t * p->H + h) * p->D;
        double dot = 0.0, absdot = 0.0;
        for (int32_t d = 0; d < p->D; d++) {
            const double x = (double)qh[d] * key[d];
            dot += x;
            absdot += fabs(x);
        }
        const double w = p->w[(size_t)t * p->H + h];
        score += w * (dot > 0.0 ? dot : 0.0);
        mag += fabs(w) * absdot;
    }
    const double n = p->D + p->H + 8, u = 0x1p-24;
    *bound = n * u / (1.0 - n * u) * mag;
    return score;
}

typedef struct match_result {
    int checked;        /* a reference ran */
    int exact;          /* every token's index set equals the reference's */
    int64_t mismatched; /* tokens whose sets differ */
    int64_t near_ties;  /* of those, tokens where every swapped key is within the f32 error
                           bound of the keys it displaced: both answers are right */
    double overlap;     /* |lib ∩ ref| / |ref| over all tokens */
} match_result;

static match_result compare_sets(const ref_problem *p, const int32_t *lib, const int32_t *ref)
{
    match_result r = {.checked = 1, .exact = 1};
    const int32_t k = p->k;
    int32_t *a = bench_xmalloc((size_t)k * sizeof *a), *b = bench_xmalloc((size_t)k * sizeof *b);
    int32_t *only_a = bench_xmalloc((size_t)k * sizeof *a), *only_b = bench_xmalloc((size_t)k * sizeof *b);
    int64_t common = 0, total = 0;
    for (int32_t t = 0; t < p->T; t++) {
        memcpy(a, lib + (size_t)t * k, (size_t)k * sizeof *a);
        memcpy(b, ref + (size_t)t * k, (size_t)k * sizeof *b);
        qsort(a, (size_t)k, sizeof *a, cmp_i32);
        qsort(b, (size_t)k, sizeof *b, cmp_i32);
        int32_t i = 0, j = 0, na = 0, nb = 0;
        while (i < k || j < k) {
            if (j == k || (i < k && a[i] < b[j]))
                only_a[na++] = a[i++];
            else if (i == k || b[j] < a[i])
                only_b[nb++] = b[j++];
            else {
                common += b[j] >= 0;
                i++;
                j++;
            }
        }
        for (int32_t x = 0; x < k; x++)
            total += b[x] >= 0;
        if (na == 0 && nb == 0)
            continue;
        r.exact = 0;
        r.mismatched++;
        /* A near tie: the lowest-scoring key only the library chose still reaches, within
           the error bounds, the highest-scoring key only the reference chose. */
        int tie = na == nb;
        double lo_a = INFINITY, hi_b = -INFINITY;
        for (int32_t x = 0; tie && x < na; x++) {
            double bound;
            if (only_a[x] < 0) {
                tie = 0;
                break;
            }
            const double e = exact_score(p, t, only_a[x], &bound);
            lo_a = fmin(lo_a, e + bound);
        }
        for (int32_t x = 0; tie && x < nb; x++) {
            double bound;
            if (only_b[x] < 0) {
                tie = 0;
                break;
            }
            const double e = exact_score(p, t, only_b[x], &bound);
            hi_b = fmax(hi_b, e - bound);
        }
        r.near_ties += tie && hi_b <= lo_a;
    }
    r.overlap = total ? (double)common / (double)total : 1.0;
    free(a);
    free(b);
    free(only_a);
    free(only_b);
    return r;
}

static void match_fields(json_line *j, const char *key, const char *key_ties, const match_result *m)
{
    if (!m->checked) {
        json_null(j, key);
        return;
    }
    json_bool(j, key, m->exact);
    char buf[64];
    snprintf(buf, sizeof buf, "%s_mismatched_tokens", key);
    json_int(j, buf, m->mismatched);
    json_int(j, key_ties, m->near_ties);
    snprintf(buf, sizeof buf, "%s_overlap", key);
    json_ratio(j, buf, m->overlap);
}

/* ---- indexer cases ---------------------------------------------------------------------- */

typedef struct indexer_case {
    int prefill, scores_only, peer;
    int32_t T, H;
    int64_t L;
    skv_dtype dtype;
} indexer_case;

static void case_name(const run_state *rs, const indexer_case *c, char *buf, size_t n)
{
    char tpart[32] = "";
    if (c->prefill)
        snprintf(tpart, sizeof tpart, "T%d/", c->T);
    snprintf(buf, n, "%s/%s/H%d/%sL%lld/%s/%s", c->scores_only ? "indexer_scores" : "indexer_topk",
             c->prefill ? "prefill" : "decode", c->H, tpart, (long long)c->L, dtype_name(c->dtype),
             rs->isa);
}

static void run_indexer_case(run_state *rs, const indexer_case *c)
{
    const options *o = rs->opt;
    char name[256];
    case_name(rs, c, name, sizeof name);
    if (!selected(o, name))
        return;
    fprintf(stderr, "sparsekv-bench: %s\n", name);

    bench_inputs in;
    const skv_status st = inputs_make(&in, c->T, c->H, HEAD_DIM, c->L, TOP_K, c->dtype);
    if (st != SKV_OK)
        die_status("preparing inputs", st);
    const int32_t T = c->T, H = c->H, D = HEAD_DIM, k = TOP_K;

    int64_t pairs = 0, lvis = 0;
    for (int32_t t = 0; t < T; t++) {
        const int64_t v = (int64_t)in.pos[t] + 1 < c->L ? (int64_t)in.pos[t] + 1 : c->L;
        pairs += v;
        lvis = v > lvis ? v : lvis;
    }
    /* Bytes read once per call: visible keys (+ fp8 scales), queries (+ fp8 scales), gates,
       positions. */
    const double esize = (double)skv_dtype_size(c->dtype);
    const double row_scale = c->dtype == SKV_FP8_E4M3 ? 4.0 : 0.0;
    const double bytes = (double)lvis * (D * esize + row_scale) +
                         (double)T * H * (D * esize + row_scale + 4.0) + 4.0 * T;
    const double flops = 2.0 * H * D * (double)pairs;

    int32_t *idx = bench_xmalloc((size_t)T * k * sizeof *idx);
    float *scores = c->scores_only ? bench_xmalloc((size_t)T * (size_t)c->L * sizeof *scores) : NULL;
    lib_call lc = {.ctx = rs->ctx, .in = &in, .idx = idx, .scores = scores};
    bench_timing tl;
    timed(name, c->scores_only ? call_scores : call_topk, &lc, &lc.st, o->min_time, 3, 0.0, &tl);

    /* References on the f32 values the library computes on. */
    const double ref_min = 0.6 * o->min_time;
    bench_timing tb = {0}, tn = {0};
    match_result mb = {0}, mn = {0};
    const int refs = !o->no_ref && !c->scores_only;
    if (refs) {
        int32_t *ridx = bench_xmalloc((size_t)T * k * sizeof *ridx);
        ref_call rc = {.ws = rs->ws, .p = &in.ref, .threads = o->threads, .idx = ridx};
        if (ref_have_blas()) {
            timed("blas_sort reference", call_ref, &rc, NULL, ref_min, 1, 1.0, &tb);
            mb = compare_sets(&in.ref, idx, ridx);
        }
        rc.naive = 1;
        timed("naive reference", call_ref, &rc, NULL, ref_min, 1, 1.0, &tn);
        mn = compare_sets(&in.ref, idx, ridx);
        free(ridx);
    }

    json_line j;
    json_begin(&j);
    json_str(&j, "name", name);
    time_fields(&j, &tl);
    json_int(&j, "H", H);
    json_int(&j, "D", D);
    json_int(&j, "T", T);
    json_int(&j, "L", c->L);
    json_int(&j, "k", c->scores_only ? 0 : k);
    json_str(&j, "dtype", dtype_name(c->dtype));
    json_int(&j, "threads", o->threads);
    json_str(&j, "isa", rs->isa);
    json_int(&j, "visible_pairs", pairs);
    const double gflops = flops / tl.median_ns, gbps = bytes / tl.median_ns;
    json_num(&j, "gflops", gflops, 2);
    json_ratio(&j, "frac_fp32_peak", ratio(gflops, rs->machine->peak_fp32_gflops));
    json_ratio(&j, "frac_bf16_peak", ratio(gflops, rs->machine->peak_bf16_gflops));
    json_num(&j, "gbps", gbps, 3);
    json_ratio(&j, "frac_stream", ratio(gbps, rs->machine->stream_gbps));
    if (refs) {
        json_str(&j, "ref_inputs", c->dtype == SKV_F32 ? "f32" : c->dtype == SKV_BF16
                                                              ? "f32 (bf16 inputs widened)"
                                                              : "f32 (fp8 inputs dequantised)");
        if (ref_have_blas()) {
            json_num(&j, "blas_sort_ns", tb.median_ns, 1);
            json_int(&j, "blas_sort_iterations", tb.iterations);
            json_ratio(&j, "speedup_vs_blas_sort", ratio(tb.median_ns, tl.median_ns));
        } else {
            json_str(&j, "blas_sort", "unavailable: built without OpenBLAS");
        }
        json_num(&j, "naive_ns", tn.median_ns, 1);
        json_int(&j, "naive_iterations", tn.iterations);
        json_ratio(&j, "speedup_vs_naive", ratio(tn.median_ns, tl.median_ns));
        /* match: against blas_sort when it ran, else against naive */
        const match_result *primary = ref_have_blas() ? &mb : &mn;
        match_fields(&j, "match", "near_tie_tokens", primary);
        match_fields(&j, "match_naive", "match_naive_near_tie_tokens", &mn);
        const int ok = (primary->exact || primary->near_ties == primary->mismatched) &&
                       (mn.exact || mn.near_ties == mn.mismatched);
        json_bool(&j, "match_ok", ok);
        if (!ok) {
            fprintf(stderr, "sparsekv-bench: %s: the library's top-k differs from the reference's\n",
                    name);
            rs->failures++;
        }
    } else if (!c->scores_only) {
        json_null(&j, "match");
    }
    machine_fields(&j, rs->machine);
    emit(&j);

    if (c->scores_only && c->H == 64 && c->T == 1 && c->L == TOPK_ROW_LEN && c->dtype == SKV_F32)
        rs->scores_128k_ns = tl.median_ns;
    if (c->peer && o->dump &&
        inputs_dump(&in, o->dump, name, idx, o->threads, rs->isa, tl.median_ns, tl.iterations)) {
        fprintf(stderr, "sparsekv-bench: --dump %s: %s\n", o->dump, strerror(errno));
        exit(1);
    }
    free(idx);
    free(scores);
    inputs_free(&in);
}

/* ---- top-k alone ------------------------------------------------------------------------- */

static void run_topk_rows(run_state *rs)
{
    const options *o = rs->opt;
    char name[128];
    snprintf(name, sizeof name, "topk_rows/L%d/k%d/%s", TOPK_ROW_LEN, TOP_K, rs->isa);
    if (!selected(o, name))
        return;
    fprintf(stderr, "sparsekv-bench: %s\n", name);

    const int64_t n = TOPK_ROW_LEN;
    const int32_t k = TOP_K;
    float *x = bench_xmalloc((size_t)n * sizeof *x);
    fill_uniform(x, (size_t)n, 0x726f77ull); /* random scores, fixed seed */

    int32_t *lib = bench_xmalloc((size_t)k * sizeof *lib), *lib1 = bench_xmalloc((size_t)k * sizeof *lib1);
    int32_t *ref = bench_xmalloc((size_t)k * sizeof *ref);
    row_call rc = {.ctx = rs->ctx, .x = x, .n = n, .k = k, .idx = lib};
    bench_timing tl, t1, ts[3];
    timed(name, call_row, &rc, &rc.st, o->min_time, 3, 0.0, &tl);
    rc.ctx = rs->ctx1;
    rc.idx = lib1;
    timed(name, call_row, &rc, &rc.st, o->min_time, 3, 0.0, &t1);
    int same = !memcmp(lib, lib1, (size_t)k * sizeof *lib);
    rc.ctx = NULL;
    rc.ws = rs->ws;
    rc.idx = ref;
    static const char *const how_name[3] = {"std_sort", "partial_sort", "nth_element"};
    for (int h = 0; h < 3; h++) {
        rc.how = (ref_select)h;
        timed(how_name[h], call_row, &rc, NULL, 0.6 * o->min_time, 3, 0.0, &ts[h]);
        same &= !memcmp(lib, ref, (size_t)k * sizeof *lib); /* ranked lists, not only sets */
    }

    json_line j;
    json_begin(&j);
    json_str(&j, "name", name);
    time_fields(&j, &tl);
    json_int(&j, "L", n);
    json_int(&j, "k", k);
    json_int(&j, "threads", o->threads);
    json_str(&j, "isa", rs->isa);
    const double gbps = 4.0 * (double)n / tl.median_ns;
    json_num(&j, "gbps", gbps, 3);
    json_ratio(&j, "frac_stream", ratio(gbps, rs->machine->stream_gbps));
    json_num(&j, "real_time_1thread", t1.median_ns, 1);
    char key[64];
    for (int h = 0; h < 3; h++) {
        snprintf(key, sizeof key, "%s_ns", how_name[h]);
        json_num(&j, key, ts[h].median_ns, 1);
        snprintf(key, sizeof key, "speedup_vs_%s", how_name[h]);
        json_ratio(&j, key, ratio(ts[h].median_ns, tl.median_ns));
        snprintf(key, sizeof key, "speedup_1thread_vs_%s", how_name[h]);
        json_ratio(&j, key, ratio(ts[h].median_ns, t1.median_ns));
    }
    json_int(&j, "ref_threads", 1);
    json_bool(&j, "match", same);
    machine_fields(&j, rs->machine);
    emit(&j);
    if (!same) {
        fprintf(stderr, "sparsekv-bench: %s: skv_topk_rows differs from std::sort\n", name);
        rs->failures++;
    }
    rs->topk_row_ns = tl.median_ns;
    free(x);
    free(lib);
    free(lib1);
    free(ref);
}

static void topk_share(run_state *rs)
{
    if (!(rs->topk_row_ns > 0.0 && rs->scores_128k_ns > 0.0))
        return;
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "topk_share");
    json_num(&j, "topk_rows_ns", rs->topk_row_ns, 1);
    json_num(&j, "indexer_scores_ns", rs->scores_128k_ns, 1);
    json_str(&j, "scores_case", "decode H64 L131072 f32");
    const double share = rs->topk_row_ns / rs->scores_128k_ns;
    json_ratio(&j, "share", share);
    json_ratio(&j, "target", SHARE_TARGET);
    json_bool(&j, "meets_target", share <= SHARE_TARGET);
    json_int(&j, "threads", rs->opt->threads);
    json_str(&j, "isa", rs->isa);
    emit(&j);
}

/* ---- machine record ----------------------------------------------------------------------- */

/* The 1-minute load average (other tenants' work shows here), or NaN where unknown. */
static double load_average(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double v = NAN;
    if (f) {
        if (fscanf(f, "%lf", &v) != 1)
            v = NAN;
        fclose(f);
    }
    return v;
}

static void machine_record(const run_state *rs)
{
    const bench_machine *m = rs->machine;
    const char *coretype = getenv("OPENBLAS_CORETYPE");
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
    json_int(&j, "repetitions", m->reps);
    json_int(&j, "triad_bytes_per_array", m->triad_elems * 4);
    json_int(&j, "threads", rs->opt->threads);
    json_str(&j, "cpu", skv_cpu_level_name(skv_cpu_flags()));
    json_str(&j, "isa", rs->isa);
    json_int(&j, "sparsekv_version", skv_version());
    json_str(&j, "openblas_coretype", coretype ? coretype : "unset");
    json_str(&j, "openblas_config", ref_blas_config());
    json_num(&j, "load_average_1m", load_average(), 2);
    json_num(&j, "min_time_s", rs->opt->min_time, 3);
    json_bool(&j, "quick", rs->opt->quick);
    emit(&j);
}

/* The limits measured again after the cases: when they differ much from the first record's,
 * something else ran on the machine during the run. */
static void machine_end_record(const run_state *rs)
{
    bench_machine m;
    if (machine_measure(rs->opt->threads, rs->opt->quick, &m))
        die_oom("triad arrays");
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "machine_end");
    json_num(&j, "peak_fp32_gflops", m.peak_fp32_gflops, 2);
    json_num(&j, "peak_bf16_gflops", m.peak_bf16_gflops, 2);
    json_num(&j, "stream_gbps", m.stream_gbps, 2);
    json_ratio(&j, "peak_fp32_vs_start", ratio(m.peak_fp32_gflops, rs->machine->peak_fp32_gflops));
    json_ratio(&j, "stream_vs_start", ratio(m.stream_gbps, rs->machine->stream_gbps));
    json_num(&j, "load_average_1m", load_average(), 2);
    json_int(&j, "threads", rs->opt->threads);
    emit(&j);
}

/* ---- main -------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o;
    const int pa = parse_args(argc, argv, &o);
    if (pa)
        return pa > 0 ? 0 : 2;
#ifdef _OPENMP
    omp_set_dynamic(0);
    omp_set_num_threads(o.threads);
#endif

    run_state rs = {.opt = &o};
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = o.threads;
    cp.cpu_mask = o.cpu_mask;
    skv_status st = skv_context_create(&cp, &rs.ctx);
    if (st != SKV_OK)
        die_status("skv_context_create", st);
    cp.n_threads = 1;
    st = skv_context_create(&cp, &rs.ctx1);
    if (st != SKV_OK)
        die_status("skv_context_create", st);
    rs.isa = skv_cpu_level_name(skv_context_cpu_flags(rs.ctx));
    rs.ws = ref_ws_create();
    if (!rs.ws)
        die_oom("reference workspace");

    bench_machine m;
    if (machine_measure(o.threads, o.quick, &m))
        die_oom("triad arrays");
    rs.machine = &m;
    machine_record(&rs);

    static const int64_t decode_L[3] = {8192, 32768, 131072};
    static const int32_t heads[2] = {64, 32};
    static const skv_dtype dtypes[3] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    const int n_decode = o.quick ? 2 : 3;
    for (int l = 0; l < n_decode; l++) {
        for (int h = 0; h < 2; h++)
            for (int d = 0; d < 3; d++) {
                const indexer_case c = {.T = 1, .H = heads[h], .L = decode_L[l], .dtype = dtypes[d],
                                        .peer = o.dump && heads[h] == 64 && dtypes[d] == SKV_F32 &&
                                                decode_L[l] >= 32768};
                run_indexer_case(&rs, &c);
            }
        if (decode_L[l] == TOPK_ROW_LEN) {
            const indexer_case c = {.scores_only = 1, .T = 1, .H = 64, .L = TOPK_ROW_LEN,
                                    .dtype = SKV_F32};
            run_indexer_case(&rs, &c);
        }
    }
    if (!o.quick) {
        for (int h = 0; h < 2; h++)
            for (int d = 0; d < 3; d++) {
                const indexer_case c = {.prefill = 1, .T = 512, .H = heads[h], .L = 32768,
                                        .dtype = dtypes[d]};
                run_indexer_case(&rs, &c);
            }
        run_topk_rows(&rs);
        topk_share(&rs);
    }
    if (o.dump) {
        const indexer_case c = {.prefill = 1, .peer = 1, .T = 256, .H = 64, .L = 8192,
                                .dtype = SKV_F32};
        run_indexer_case(&rs, &c);
    }

    machine_end_record(&rs);

    ref_ws_destroy(rs.ws);
    skv_context_destroy(rs.ctx1);
    skv_context_destroy(rs.ctx);
    if (rs.failures)
        fprintf(stderr, "sparsekv-bench: %d case(s) failed their check\n", rs.failures);
    return rs.failures ? 1 : 0;
}
