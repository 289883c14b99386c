/* Shared by the fuzz targets: a reader that turns the input into choices (exhausted input reads
 * as zeros, so every input is a valid program), an allocator that fails the N-th allocation,
 * and the check that aborts on a broken invariant (the fuzzer then saves the input). */
#ifndef SKV_FUZZ_H
#define SKV_FUZZ_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparsekv/sparsekv.h"

#define REQUIRE(cond, ...)                                                                    \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "fuzz: %s:%d: %s: ", __FILE__, __LINE__, #cond);                  \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

typedef struct reader {
    const uint8_t *p;
    size_t n;
} reader;

static inline uint8_t rd_u8(reader *r)
{
    if (!r->n)
        return 0;
    r->n--;
    return *r->p++;
}

static inline uint32_t rd_u32(reader *r)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)rd_u8(r) << (8 * i);
    return v;
}

/* An integer in [lo, hi] (hi - lo < 2^32). */
static inline int64_t rd_range(reader *r, int64_t lo, int64_t hi)
{
    const uint64_t span = (uint64_t)(hi - lo) + 1;
    const uint32_t v = span <= 256 ? rd_u8(r) : rd_u32(r);
    return lo + (int64_t)(v % span);
}

/* A float: mostly small values, sometimes a raw bit pattern (NaN, Inf, subnormals, huge). */
static inline float rd_float(reader *r)
{
    const uint8_t c = rd_u8(r);
    if (c < 200)
        return ((float)c - 100.0f) / 37.0f;
    if (c < 240) {
        const uint32_t b = rd_u32(r);
        float f;
        memcpy(&f, &b, 4);
        return f;
    }
    static const float special[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-40f, -3e38f, 448.0f,
                                    1e-45f, 65504.0f, 3.4e38f, -1e-7f, 1.0f, -1.0f, 0.5f, 2.0f};
    return special[c - 240];
}

static inline void rd_floats(reader *r, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = rd_float(r);
}

static inline void *fz_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    REQUIRE(p != NULL, "out of memory (%zu bytes)", n);
    return p;
}

/* A live slot of live[0..n) chosen by the input (-1 when none), and the first free one. */
static inline int pick_live(reader *r, const int *live, int n)
{
    const int start = rd_u8(r) % n;
    for (int j = 0; j < n; j++)
        if (live[(start + j) % n])
            return (start + j) % n;
    return -1;
}

static inline int pick_free(const int *live, int n)
{
    for (int j = 0; j < n; j++)
        if (!live[j])
            return j;
    return -1;
}

/* ---- an allocator that fails on request -------------------------------------------------- */

typedef struct fail_alloc {
    long countdown; /* the allocation that sees 0 fails; < 0: none fails */
    long failed;    /* allocations refused so far */
    long live;      /* allocations not yet freed */
} fail_alloc;

static void *fa_alloc(void *user, size_t size, size_t align)
{
    fail_alloc *f = user;
    if (f->countdown >= 0 && f->countdown-- == 0) {
        f->failed++;
        return NULL;
    }
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    f->live += p != NULL;
    return p;
}

static void fa_free(void *user, void *p, size_t size)
{
    fail_alloc *f = user;
    (void)size;
    if (p)
        f->live--;
    free(p);
}

/* A single-threaded context (OpenMP teams per input would only slow the fuzzer) on the
 * failing allocator; cpu_mask picks the kernel level. */
static inline skv_context *fz_context(fail_alloc *fa, uint32_t cpu_mask)
{
    skv_context_params p;
    skv_context_params_init(&p);
    p.n_threads = 1;
    p.cpu_mask = cpu_mask;
    p.allocator = (skv_allocator){fa_alloc, fa_free, fa};
    skv_context *ctx = NULL;
    fa->countdown = -1;
    REQUIRE(skv_context_create(&p, &ctx) == SKV_OK, "context");
    return ctx;
}

static inline uint32_t rd_cpu_mask(reader *r)
{
    static const uint32_t masks[] = {SKV_CPU_ALL, 0, SKV_CPU_AVX2, SKV_CPU_AVX2 | SKV_CPU_AVX512};
    return masks[rd_u8(r) & 3];
}

#endif
