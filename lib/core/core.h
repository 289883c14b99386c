/* Internal core: the context, allocation through the hooks, logging, argument checks. */
#ifndef SKV_CORE_H
#define SKV_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sparsekv/common.h"
#include "kernels/kernels.h"

#define SKV_ALIGN 64

struct skv_context {
    skv_allocator alloc;
    skv_log_fn log;
    void *log_user;
    skv_log_level log_level;
    int n_threads;
    uint32_t cpu_flags;
    skv_kernels kern;
    void *ws; /* workspace shared by kernel calls, grown on demand */
    size_t ws_size;
    void *aux[3]; /* workspaces of callers of kernels (routing, gathers), likewise */
    size_t aux_size[3];
    size_t bytes_live; /* everything allocated through this context, workspace included */
    int64_t route_paths[4]; /* MISA/HISA calls by skv_route_path (router.h) */
    int32_t route_last;     /* the path of the last one, -1 before any */
    int int8_queries;       /* skv_context_set_int8_queries */
};

/* Allocation through the context's hooks; sizes are remembered by the caller (the hook API
 * passes them back on free). skv_alloc returns NULL on failure or size 0. */
void *skv_alloc(skv_context *ctx, size_t size);
void *skv_alloc_zero(skv_context *ctx, size_t size);
void skv_free(skv_context *ctx, void *p, size_t size);

/* Workspace of at least `size` bytes, 64-byte aligned, valid until the next call that asks
 * for workspace. Growing discards the old contents. NULL on allocation failure (the old
 * workspace is kept). */
void *skv_workspace(skv_context *ctx, size_t size);
/* The same for code that calls kernels between uses: auxiliary slots 0..2, never touched by
 * the kernels' own workspace. */
void *skv_workspace_aux(skv_context *ctx, int slot, size_t size);

void skv_log(skv_context *ctx, skv_log_level level, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* bf16 bits of each fp8-e4m3 value (exact; f32 bits are these << 16). */
extern const uint16_t skv_fp8_bf16_lut[256];

/* MXFP4 (mxfp4.c): E2M1 code -> f32; a UE8M0 scale byte -> 2^(b - 127) (b = 0: the f32
 * subnormal 2^-127; 255: NaN); one row of D values (D a multiple of 32) dequantised. */
extern const float skv_e2m1_f32_lut[16];
static inline float skv_e8m0_f32(uint8_t b)
{
    union { uint32_t u; float f; } v = {b == 0 ? 0x00400000u : b == 255 ? 0x7fc00000u : (uint32_t)b << 23};
    return v.f;
}
void skv_mxfp4_row_f32(const uint8_t *packed, const uint8_t *scales, int32_t D, float *out);
/* One Q8_0 row of D values (D a multiple of 32) dequantised (q8_0.c). */
void skv_q8_0_row_f32(const void *row, int32_t D, float *out);

/* Bytes of a row of D elements as stored (MXFP4: the packed values, without scales), and of
 * its scales (FP8: one f32; MXFP4: D / 32 bytes; else 0). */
static inline size_t skv_row_bytes(skv_dtype t, int32_t D)
{
    return t == SKV_MXFP4_E2M1 ? (size_t)D / 2
           : t == SKV_Q8_0     ? (size_t)(D / SKV_Q8_0_BLOCK) * SKV_Q8_0_BLOCK_BYTES
                               : (size_t)D * skv_dtype_size(t);
}
static inline size_t skv_row_scale_bytes(skv_dtype t, int32_t D)
{
    return t == SKV_FP8_E4M3 ? 4 : t == SKV_MXFP4_E2M1 ? (size_t)D / 32 : 0;
}

/* bf16 bits widened to f32 by placement (exact), inline where a loop converts elementwise. */
static inline float skv_bf16_bits_f32(uint32_t b)
{
    union { uint32_t u; float f; } v = {b << 16};
    return v.f;
}

/* Threads a kernel may use now: 1 inside a host's parallel region. */
int skv_threads(const skv_context *ctx);

/* Checked size arithmetic: false on overflow. */
static inline bool skv_mul_ok(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

static inline size_t skv_round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Argument check: returns SKV_ERR_INVALID_ARG when cond is false. Debug builds say which. */
#ifndef NDEBUG
#define SKV_CHECK(ctx, cond)                                                                  \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            skv_log((ctx), SKV_LOG_DEBUG, "%s: invalid argument: %s", __func__, #cond);        \
            return SKV_ERR_INVALID_ARG;                                                       \
        }                                                                                     \
    } while (0)
#else
#define SKV_CHECK(ctx, cond)                                                                  \
    do {                                                                                      \
        (void)(ctx);                                                                          \
        if (!(cond))                                                                          \
            return SKV_ERR_INVALID_ARG;                                                       \
    } while (0)
#endif

#define SKV_TRY(expr)                                                                         \
    do {                                                                                      \
        skv_status skv_try_s_ = (expr);                                                       \
        if (skv_try_s_ != SKV_OK)                                                             \
            return skv_try_s_;                                                                \
    } while (0)

#endif
