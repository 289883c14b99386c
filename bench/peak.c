/* Register-only arithmetic loops that measure the machine's peak: many independent
 * accumulators (more than FMA latency x FMA ports), no memory traffic inside the loop, and a
 * result built from every accumulator so the compiler must run all of them. Each x86 loop is
 * compiled for its own instruction set with a target attribute; the caller checks the CPU
 * first (skv_cpu_flags). `objdump -d --no-show-raw-insn sparsekv-bench` shows each loop as a
 * run of vfmadd / vdpbf16ps on registers with no stack access (see bench/README.md). */
#include "bench.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

/* Multiplier and addend keep every accumulator bounded (it converges to c / (1 - m)), so no
 * value overflows or turns subnormal however long the loop runs. */
#define PEAK_M 0.9999999f
#define PEAK_C 1e-7f

#define FOR16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define FOR12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

#ifdef BENCH_X86

/* 16 zmm accumulators (Zen 4/5 and Intel cores need 8 to 10 in flight), two FMAs each per
 * trip: 32 x 16 lanes x 2 flop. 18 of the 32 zmm registers are live. */
__attribute__((target("avx512f"), noinline)) static float fma_avx512(int64_t iters, float seed)
{
    const __m512 m = _mm512_set1_ps(PEAK_M), c = _mm512_set1_ps(PEAK_C * seed);
#define DECL(i) __m512 a##i = _mm512_set1_ps(seed + (float)(i));
    FOR16(DECL)
#undef DECL
    for (int64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
        FOR16(STEP)
        FOR16(STEP)
#undef STEP
    }
    __m512 s = _mm512_setzero_ps();
#define SUM(i) s = _mm512_add_ps(s, a##i);
    FOR16(SUM)
#undef SUM
    return _mm512_reduce_add_ps(s);
}

/* 12 ymm accumulators (16 ymm registers in all: 12 + m + c fit without spills). */
__attribute__((target("avx2,fma"), noinline)) static float fma_avx2(int64_t iters, float seed)
{
    const __m256 m = _mm256_set1_ps(PEAK_M), c = _mm256_set1_ps(PEAK_C * seed);
#define DECL(i) __m256 a##i = _mm256_set1_ps(seed + (float)(i));
    FOR12(DECL)
#undef DECL
    for (int64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
        FOR12(STEP)
        FOR12(STEP)
#undef STEP
    }
    __m256 s = _mm256_setzero_ps();
#define SUM(i) s = _mm256_add_ps(s, a##i);
    FOR12(SUM)
#undef SUM
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    float lanes[4];
    _mm_storeu_ps(lanes, h);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

/* vdpbf16ps: 16 lanes x (2 products + 2 adds) = 64 flop per instruction; 16 accumulators,
 * two instructions each per trip. Products of the small constant operands keep the sums
 * bounded for any realistic trip count. */
__attribute__((target("avx512f,avx512bf16"), noinline)) static float dpbf16_avx512(int64_t iters,
                                                                                   float seed)
{
    const __m512 x = _mm512_set1_ps(1e-3f * seed);
    const __m512bh a = _mm512_cvtne2ps_pbh(x, x);
    const __m512bh b = _mm512_cvtne2ps_pbh(x, _mm512_set1_ps(-1e-3f));
#define DECL(i) __m512 a##i = _mm512_set1_ps(seed + (float)(i));
    FOR16(DECL)
#undef DECL
    for (int64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_dpbf16_ps(a##i, a, b);
        FOR16(STEP)
        FOR16(STEP)
#undef STEP
    }
    __m512 s = _mm512_setzero_ps();
#define SUM(i) s = _mm512_add_ps(s, a##i);
    FOR16(SUM)
#undef SUM
    return _mm512_reduce_add_ps(s);
}

#endif /* BENCH_X86 */

/* Portable fallback with GCC vector extensions: 12 accumulators of 8 floats. In ISO C mode the
 * compiler does not contract a*m + c into an FMA, so this counts a multiply and an add. */
typedef float v8f __attribute__((vector_size(32)));

__attribute__((noinline)) static float fma_generic(int64_t iters, float seed)
{
    const v8f m = {PEAK_M, PEAK_M, PEAK_M, PEAK_M, PEAK_M, PEAK_M, PEAK_M, PEAK_M};
    const v8f c = m * 0.0f + PEAK_C * seed;
#define DECL(i) v8f a##i = m * 0.0f + (seed + (float)(i));
    FOR12(DECL)
#undef DECL
    for (int64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = a##i * m + c;
        FOR12(STEP)
#undef STEP
    }
    v8f s = m * 0.0f;
#define SUM(i) s += a##i;
    FOR12(SUM)
#undef SUM
    float r = 0.0f;
    for (int i = 0; i < 8; i++)
        r += s[i];
    return r;
}

float peak_loop(peak_kind kind, int64_t iters, float seed)
{
    switch (kind) {
#ifdef BENCH_X86
    case PEAK_FMA_AVX512: return fma_avx512(iters, seed);
    case PEAK_FMA_AVX2: return fma_avx2(iters, seed);
    case PEAK_DPBF16: return dpbf16_avx512(iters, seed);
#else
    case PEAK_FMA_AVX512:
    case PEAK_FMA_AVX2:
    case PEAK_DPBF16: return 0.0f;
#endif
    case PEAK_FMA_GENERIC: return fma_generic(iters, seed);
    }
    return 0.0f;
}

double peak_flops_per_iter(peak_kind kind)
{
    switch (kind) {
    case PEAK_FMA_AVX512: return 32.0 * 16 * 2;  /* 32 FMAs x 16 lanes x 2 flop */
    case PEAK_FMA_AVX2: return 24.0 * 8 * 2;     /* 24 FMAs x 8 lanes x 2 flop */
    case PEAK_FMA_GENERIC: return 12.0 * 8 * 2;  /* 12 (mul + add) x 8 lanes */
    case PEAK_DPBF16: return 32.0 * 16 * 4;      /* 32 vdpbf16ps x 16 lanes x 2 (mul + add) x 2 */
    }
    return 0.0;
}
