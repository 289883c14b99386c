/* sparsekv-bench: declarations shared by its files.
 *
 *   machine.c    machine limits of this run: register-only FMA peaks, STREAM-style triad
 *   peak.c       the FMA / dot-product loops themselves, one per instruction set
 *   reference.cpp the two reference indexers (BLAS + full sort, naive loops + partial sort)
 *                and the std:: selections that skv_topk_rows is compared with
 *   timing.c     the repeat-until-min-time timer and the JSON Lines writer
 *   inputs.c     seeded random inputs in each dtype, their f32 view, and --dump files
 *   bench.c      options, inputs, cases, records */
#ifndef SKV_BENCH_H
#define SKV_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "sparsekv/sparsekv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- machine limits (machine.c, peak.c) ---------------------------------------------------- */

typedef struct bench_machine {
    double peak_fp32_gflops, peak_fp32_median; /* best and median of the repetitions */
    double peak_bf16_gflops, peak_bf16_median; /* 0 when the CPU has no AVX-512-BF16 */
    double stream_gbps, stream_median;
    const char *peak_isa; /* instruction set of the FMA loop: "avx512", "avx2" or "generic" */
    int reps;             /* repetitions of each measurement */
    int64_t triad_elems;  /* floats per triad array */
} bench_machine;

/* Measures all three limits with `threads` OpenMP threads. quick = fewer, shorter repetitions.
 * Returns 0, or -1 when the triad arrays cannot be allocated. */
int machine_measure(int threads, int quick, bench_machine *out);

/* One run of a register-only loop per thread: returns the flops every thread did together.
 * `iters` loop trips per thread; the loops live in peak.c. Each returns a value derived from
 * every accumulator so nothing can be optimised away. */
typedef enum peak_kind { PEAK_FMA_AVX512, PEAK_FMA_AVX2, PEAK_FMA_GENERIC, PEAK_DPBF16 } peak_kind;
float peak_loop(peak_kind kind, int64_t iters, float seed);
/* Floating-point operations of one trip of peak_loop's loop (per thread). */
double peak_flops_per_iter(peak_kind kind);

/* ---- timing and output (timing.c) -------------------------------------------------------- */

double now_s(void);         /* monotonic wall clock, seconds */
/* Exits with a message when allocation fails (benchmarks have no recovery to test). */
void *bench_xmalloc(size_t n);
/* Exits with `what` and the status's text unless st is SKV_OK. */
void bench_check(skv_status st, const char *what);
/* --filter: 1 when filter is NULL or name contains one of its comma-separated parts. */
int bench_name_selected(const char *filter, const char *name);
double process_cpu_s(void); /* CPU time of the whole process (all threads), seconds */
double bench_median(double *v, size_t n); /* of n >= 1 values, sorting them in place */

typedef struct bench_timing {
    int64_t iterations; /* measured calls (the warm-up is not counted) */
    double median_ns;   /* median time of one call: the reported real_time */
    double mean_ns, min_ns;
    double cpu_ns; /* process CPU time (all threads) per call, mean over the measured calls */
} bench_timing;

/* The measured operation: returns 0 on success; anything else stops the measurement. */
typedef int (*bench_fn)(void *arg);

/* Calls fn once to warm up (unless warmup == 0), then again until at least min_time seconds
 * of measured calls and at least min_iters calls. If the warm-up call alone took longer than
 * `warmup_counts_after` seconds (> 0), it is counted as the only measured call instead: such
 * a call is long enough that cold caches and page faults do not show. Returns fn's first
 * non-zero result, -1 when out of memory, else 0. */
int bench_time(bench_fn fn, void *arg, double min_time, int64_t min_iters, int warmup,
               double warmup_counts_after, bench_timing *out);

/* Calls compared with one another, timed in rounds: each round times every call in turn
 * (bench_time, min_time / BENCH_ROUNDS each, the first round with a warm-up), so that a slow
 * spell of a shared machine falls on all of them; each call's ratio to call 0 is taken round
 * by round, against call 0's time in the same round. */
enum { BENCH_ROUNDS = 5 };
typedef struct bench_rounds {
    double ns;          /* median of the rounds' median times */
    double vs_first;    /* median of the rounds' ratios to call 0 */
    double lo, hi;      /* the extremes of those ratios */
    double cpu_ns;      /* process CPU time per call */
    int64_t iterations; /* calls timed over all rounds */
} bench_rounds;

/* fn[i](arg[i]) for i < n; returns the first non-zero result (-1 when out of memory), else 0. */
int bench_time_rounds(int n, const bench_fn *fn, void *const *arg, double min_time,
                      bench_rounds *out);

/* A JSON object written on one line. Keys are written as given (no escaping needed: callers
 * pass identifiers); string values are escaped. Non-finite numbers are written as null. */
typedef struct json_line {
    char *buf;
    size_t len, cap;
    int oom;
} json_line;

void json_begin(json_line *j);
void json_str(json_line *j, const char *key, const char *val);
void json_int(json_line *j, const char *key, int64_t val);
void json_num(json_line *j, const char *key, double val, int decimals); /* fixed notation */
void json_ratio(json_line *j, const char *key, double val);            /* 4 significant digits */
void json_bool(json_line *j, const char *key, int val);
/* Arrays of numbers, nestable: key NULL for an array inside an array. */
void json_begin_array(json_line *j, const char *key);
void json_array_num(json_line *j, double val, int decimals);
void json_end_array(json_line *j);
void json_null(json_line *j, const char *key);
/* Closes the object, prints it and a newline to stdout, flushes, frees the buffer.
 * Returns -1 if the line could not be built (out of memory). */
int json_end(json_line *j);

/* ---- the start of the small benchmark programs (setup.c) ----------------------------------- */

typedef struct bench_setup_out {
    int quick, threads;
    double min_time;
    skv_context *ctx; /* with `threads` threads; the caller destroys it */
    bench_machine machine;
} bench_setup_out;

/* Parses --quick, --threads N, --min-time S; creates the context; measures the machine and
 * prints its record. Returns 0, or the exit code (2 for usage, 1 for a failure). */
int bench_setup(int argc, char **argv, const char *prog, double default_min_time, bench_setup_out *o);

/* ---- references (reference.cpp) ---------------------------------------------------------- */

/* The indexer problem in f32 (dequantised values for bf16 and fp8 inputs). */
typedef struct ref_problem {
    int32_t T, H, D;
    int64_t L;
    int32_t k;
    const float *q;      /* [T][H][D] */
    const float *w;      /* [T][H] */
    const float *keys;   /* [L][D] */
    const int32_t *pos;  /* [T]; key s visible to token t iff s <= pos[t] */
} ref_problem;

typedef struct ref_ws ref_ws; /* buffers kept across calls, as a real caller would */

ref_ws *ref_ws_create(void);
void ref_ws_destroy(ref_ws *ws); /* NULL is fine */

/* 1 when built with OpenBLAS (the blas_sort path exists). */
int ref_have_blas(void);
/* OpenBLAS's configuration string, or "none". */
const char *ref_blas_config(void);

/* Both write out_idx [T][k]: the top k visible keys of each token by descending score, ties to
 * the lower index, -1 padding. Return 0, -1 (out of memory) or -2 (no BLAS in this build).
 *
 * blas_sort: cblas_sgemm of a block of queries [rows = tokens*H][D] by the visible keys
 * [D][cols] into a product buffer; ReLU, weight and head-sum into the token's score row; then
 * a full std::sort of (score, index) over the visible keys. OpenBLAS runs with `threads`
 * threads for the call (its previous count is restored); the epilogue and the per-token sorts
 * are spread over OpenMP threads. */
int ref_blas_sort_topk(ref_ws *ws, const ref_problem *p, int threads, int32_t *out_idx);

/* naive: for each token, a `#pragma omp parallel for` over keys computes each score with a
 * plain dot-product loop per head (compiler-vectorised), ReLU, weight, sum; then
 * std::partial_sort of (score, index) takes the top k. Never holds more than one score row. */
int ref_naive_topk(ref_ws *ws, const ref_problem *p, int threads, int32_t *out_idx);

/* Selections of k out of one row x[0..n), written as ranked indices (ties to the lower index,
 * -1 padding), on one thread. Return 0 or -1 (out of memory). */
typedef enum ref_select { REF_STD_SORT, REF_PARTIAL_SORT, REF_NTH_ELEMENT } ref_select;
int ref_select_row(ref_ws *ws, ref_select how, const float *x, int64_t n, int32_t k,
                   int32_t *out_idx);

/* ---- inputs (inputs.c) ------------------------------------------------------------------- */

/* One case's inputs: uniform [-1, 1) values from a fixed-seed generator (the same f32 values
 * for every dtype of a shape; keys depend on L only), converted to the case's dtype. */
typedef struct bench_inputs {
    int32_t T, H, D, k;
    int64_t L;
    skv_dtype dtype;
    float *q, *w, *keys; /* f32 originals: [T][H][D], [T][H], [L][D] */
    int32_t *pos;        /* [T]: L-1 for decode, L-T .. L-1 for a prefill chunk */
    void *q_lib, *k_lib; /* in the case's dtype (bf16 via skv_convert, fp8 via
                            skv_quantize_fp8 per (token, head) row and per key) */
    float *q_scale, *k_scale; /* fp8 only */
    float *q_ref, *k_ref;     /* what the library computes on, as f32 (dequantised) */
    skv_indexer_query query;
    skv_key_block keys_block;
    ref_problem ref; /* on q_ref, k_ref */
} bench_inputs;

/* SKV_OK, SKV_ERR_NOMEM, or the failing conversion's status. */
skv_status inputs_make(bench_inputs *in, int32_t T, int32_t H, int32_t D, int64_t L, int32_t k,
                       skv_dtype dtype);
void inputs_free(bench_inputs *in);

/* x[0..n) uniform in [-1, 1) from a fixed-seed generator (24 random bits each). */
void fill_uniform(float *x, size_t n, uint64_t seed);

/* Writes q.bin [T][H][D] f32, w.bin [T][H] f32, k.bin [L][D] f32, pos.bin [T] int32, idx.bin
 * [T][k] int32 (the library's result) and meta.json into dir/<name with '/' -> '_'>/, all
 * little-endian raw arrays (the f32 view of the inputs). Returns 0, or -1 with errno set. */
int inputs_dump(const bench_inputs *in, const char *dir, const char *name, const int32_t *idx,
                int threads, const char *isa, double sparsekv_ns, int64_t iterations);

#ifdef __cplusplus
}
#endif

#endif
