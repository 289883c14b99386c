/* Machine limits measured in the same run as the cases, with the same thread count:
 *   peak_fp32_gflops  register-only FMA loop (peak.c), all threads at once
 *   peak_bf16_gflops  register-only vdpbf16ps loop (0 without AVX-512-BF16)
 *   stream_gbps       STREAM-style triad a[i] = b[i] + s * c[i] over float arrays much larger
 *                     than the caches, 12 bytes counted per element (STREAM's convention: the
 *                     write-allocate read of a[] is not counted)
 * Each is the best of several repetitions (the median is kept too): on a shared machine the
 * best run is the one least disturbed by other tenants. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench.h"
#include "sparsekv/sparsekv.h"

#define TRIAD_ELEMS ((int64_t)16 << 20) /* 64 MiB per array */

static volatile float machine_sink; /* results of the loops end here */

static void best_and_median(double *v, int n, double *best, double *median)
{
    *median = bench_median(v, (size_t)n); /* sorts v */
    *best = v[n - 1];
}

/* One timed run of the peak loop on every thread of the team; GFLOP/s. */
static double peak_once(peak_kind kind, int threads, int64_t iters)
{
    double t0 = 0.0, t1 = 0.0, total = 0.0;
    int team = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
#pragma omp single
        team = omp_get_num_threads();
#pragma omp single
        t0 = now_s();
        /* the implicit barrier after single starts every thread together */
        total += peak_loop(kind, iters, 1.0f + 0.125f * (float)omp_get_thread_num());
#pragma omp barrier
#pragma omp single
        t1 = now_s();
    }
#else
    (void)threads;
    t0 = now_s();
    total = peak_loop(kind, iters, 1.0f);
    t1 = now_s();
#endif
    machine_sink = (float)total;
    return peak_flops_per_iter(kind) * (double)iters * team / (t1 - t0) * 1e-9;
}

/* Trip count of the peak loop for one repetition of about `seconds`: calibrated on the calling
 * thread alone (no team to wake), fastest of three tries, so that a descheduled moment during
 * calibration cannot shrink the repetitions to the size of a scheduler tick. */
static int64_t calibrate_peak(peak_kind kind, double seconds)
{
    int64_t iters = 1 << 12;
    double dt;
    for (;;) {
        dt = INFINITY;
        for (int i = 0; i < 3; i++) {
            const double t0 = now_s();
            machine_sink = peak_loop(kind, iters, 1.0f);
            dt = fmin(dt, now_s() - t0);
        }
        if (dt > 2e-3 || iters > ((int64_t)1 << 40))
            break;
        iters *= 4;
    }
    return (int64_t)((double)iters * seconds / dt) + 1;
}

/* The fp32 and (when present) bf16 peaks, their repetitions interleaved: a neighbour busy for
 * a while then lowers a few repetitions of each rather than every repetition of one. */
static void measure_peaks(peak_kind fma, int bf16, int threads, int reps, double seconds,
                          bench_machine *m)
{
    const int64_t it32 = calibrate_peak(fma, seconds);
    const int64_t it16 = bf16 ? calibrate_peak(PEAK_DPBF16, seconds) : 0;
    double v32[32], v16[32];
    for (int r = 0; r < reps; r++) {
        v32[r] = peak_once(fma, threads, it32);
        if (bf16)
            v16[r] = peak_once(PEAK_DPBF16, threads, it16);
    }
    best_and_median(v32, reps, &m->peak_fp32_gflops, &m->peak_fp32_median);
    if (bf16)
        best_and_median(v16, reps, &m->peak_bf16_gflops, &m->peak_bf16_median);
}

static int measure_triad(int threads, int reps, double *best, double *median)
{
    const int64_t n = TRIAD_ELEMS;
    const size_t bytes = (size_t)n * sizeof(float);
    float *a = aligned_alloc(64, bytes), *b = aligned_alloc(64, bytes), *c = aligned_alloc(64, bytes);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return -1;
    }
    /* First touch on the threads that will stream the data. */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; i++) {
        a[i] = 0.0f;
        b[i] = 1.0f + (float)(i & 7);
        c[i] = 0.5f;
    }
    double v[32];
    float check = 0.0f;
    for (int r = 0; r < reps + 1; r++) {
        const float s = 1.0f + (float)r;
        const double t0 = now_s();
#pragma omp parallel for simd schedule(static) num_threads(threads)
        for (int64_t i = 0; i < n; i++)
            a[i] = b[i] + s * c[i];
        const double dt = now_s() - t0;
        check += a[(size_t)r * 4099 % (size_t)n]; /* the stores are read: they must happen */
        if (r > 0) /* the first pass is a warm-up */
            v[r - 1] = 12.0 * (double)n / dt * 1e-9;
    }
    machine_sink = check;
    free(a);
    free(b);
    free(c);
    best_and_median(v, reps, best, median);
    return 0;
}

int machine_measure(int threads, int quick, bench_machine *m)
{
    memset(m, 0, sizeof *m);
    const uint32_t cpu = skv_cpu_flags();
    /* Many short repetitions rather than a few long ones: on a shared machine a short one has
       a better chance to run undisturbed, and the best one is kept. */
    const int reps = quick ? 5 : 11;
    const double seconds = quick ? 0.02 : 0.05;
    m->reps = reps;
    m->triad_elems = TRIAD_ELEMS;

    peak_kind fma = PEAK_FMA_GENERIC;
    m->peak_isa = "generic";
    if (cpu & SKV_CPU_AVX512) {
        fma = PEAK_FMA_AVX512;
        m->peak_isa = "avx512";
    } else if (cpu & SKV_CPU_AVX2) {
        fma = PEAK_FMA_AVX2;
        m->peak_isa = "avx2";
    }
    measure_peaks(fma, (cpu & SKV_CPU_AVX512BF16) != 0, threads, reps, seconds, m);
    return measure_triad(threads, reps, &m->stream_gbps, &m->stream_median);
}
