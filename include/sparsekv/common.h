/* sparsekv — common types: status codes, dtypes, the context, allocator and logger hooks,
 * CPU features, dtype conversion and the fp8 quantiser.
 *
 * Thread safety: a context and every object created from it are used by one thread at a time
 * (one context per host thread, or external locking). Functions that take no context are
 * thread-safe. Kernels parallelise internally with OpenMP; called from inside a host's OpenMP
 * parallel region they run on the calling thread only (no nested teams).
 *
 * Ownership and lifetime, wherever a declaration says nothing else: pointer arguments are
 * borrowed for the call (the caller allocates and frees them, and they must stay valid until
 * the call returns; the library keeps none of them). An object a *_create call makes belongs
 * to the caller until its *_destroy, which must come before the destroy of the context it
 * was made from. Views and strings the library returns (skv_status_string, a selector's
 * indices) belong to the library, valid as their declaration states. The statuses each
 * declaration lists are all it returns. */
#ifndef SPARSEKV_COMMON_H
#define SPARSEKV_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(SKV_BUILDING_LIBRARY) && defined(__GNUC__)
#define SKV_API __attribute__((visibility("default")))
#else
#define SKV_API
#endif

/* Status codes. Values are frozen. 0 is success, errors are negative. On error, nothing
 * observable has changed, except that constructors (`*_create`, plan builders) set their
 * `*out` to NULL (whatever the error, whenever out is not NULL), and outputs a function
 * documents as partial. */
typedef enum skv_status {
    SKV_OK = 0,
    SKV_ERR_INVALID_ARG = -1, /* NULL pointer, size out of range, mismatched dims */
    SKV_ERR_NOMEM = -2,       /* the allocator returned NULL */
    SKV_ERR_UNSUPPORTED = -3, /* valid request this build or dtype cannot serve */
    SKV_ERR_CAPACITY = -4,    /* a configured limit (pages, sequences) would be exceeded */
    SKV_ERR_STATE = -5,       /* the object is not in a state that allows the call */
    SKV_ERR_IO = -6           /* a host-supplied copy callback failed */
} skv_status;

/* Short English description of a status; never NULL ("unknown status" for others). */
SKV_API const char *skv_status_string(skv_status s);

/* API version the library was built with: SKV_API_VERSION of version.h. */
SKV_API int skv_version(void);

/* Element types. FP8_E4M3 is OCP e4m3fn (no infinities, NaN = S.1111.111, max 448), always
 * paired with one f32 scale per row: value = fp8 * scale.
 * MXFP4_E2M1 (OCP MX; indexer keys only) is the layout of the engines' fp4 indexer caches
 * (vLLM, SGLang, DeepGEMM's fp8_fp4_paged_mqa_logits): a row of D values (D a multiple of 32)
 * is D / 2 bytes, value 2i in the low nibble of byte i and 2i + 1 in the high nibble, each an
 * E2M1 code (bit 3 the sign; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6), paired with D / 32 UE8M0
 * scale bytes, one per 32 values: value = e2m1 * 2^(byte - 127); byte 255 is NaN. */
typedef enum skv_dtype {
    SKV_F32 = 0,
    SKV_BF16 = 1,
    SKV_F16 = 2,
    SKV_FP8_E4M3 = 3,
    SKV_MXFP4_E2M1 = 4,
    SKV_Q8_0 = 5
} skv_dtype;

/* SKV_Q8_0 (indexer keys only) is ggml's block_q8_0 (ggml/src/ggml-common.h): a row of D
 * values (D a multiple of 32) is D / 32 blocks of 34 bytes, each an IEEE f16 scale d (little
 * endian) then 32 int8 codes qs; value = qs[j] * d, exact in f32. The scales live inside the
 * rows: a key block or cache of Q8_0 has no separate scale array. */
#define SKV_Q8_0_BLOCK 32       /* values per block */
#define SKV_Q8_0_BLOCK_BYTES 34 /* bytes per block: the f16 scale, then the codes */

/* Bytes per element of a dtype; 0 for an unknown dtype, for MXFP4 (half a byte each, plus
 * a scale byte per 32) and for Q8_0 (34 bytes per 32). */
SKV_API size_t skv_dtype_size(skv_dtype t);

/* ---- allocator and logger hooks ---------------------------------------------------------- */

/* alloc returns memory aligned to `align` (a power of two, at most 4096), or NULL.
 * free receives the size that was passed to alloc. Called on the thread that calls the
 * library. Defaults: aligned_alloc / free. */
typedef struct skv_allocator {
    void *(*alloc)(void *user, size_t size, size_t align); /* returns size bytes, or NULL */
    void (*free)(void *user, void *ptr, size_t size);      /* releases what alloc returned */
    void *user;                                            /* passed to both */
} skv_allocator;

/* Levels of the log hook, most severe first. */
typedef enum skv_log_level {
    SKV_LOG_ERROR = 0,
    SKV_LOG_WARN = 1,
    SKV_LOG_INFO = 2,
    SKV_LOG_DEBUG = 3
} skv_log_level;

/* Called on the thread that calls the library; msg is valid only during the call. */
typedef void (*skv_log_fn)(void *user, skv_log_level level, const char *msg);

/* ---- CPU features ------------------------------------------------------------------------ */

/* Instruction-set levels. Each level includes the ones before it; a kernel family uses the
 * highest level that the CPU supports and the context's cpu_mask allows. */
/* AVX2 + FMA + F16C */
#define SKV_CPU_AVX2 (1u << 0)
/* AVX-512 F, BW, DQ, VL */
#define SKV_CPU_AVX512 (1u << 1)
/* AVX-512 BF16 + VBMI (Zen 4+, Sapphire Rapids+) */
#define SKV_CPU_AVX512BF16 (1u << 2)
/* AArch64 Advanced SIMD (every AArch64 CPU; the only level there) */
#define SKV_CPU_NEON (1u << 3)
/* Every level (the default cpu_mask) */
#define SKV_CPU_ALL 0xffffffffu

/* Levels this CPU (and OS, for register state) supports, as SKV_CPU_* bits. */
SKV_API uint32_t skv_cpu_flags(void);

/* Name of the highest level in `flags`: "scalar", "avx2", "avx512", "avx512bf16" or "neon" (a
 * static string). Thread-safe. */
SKV_API const char *skv_cpu_level_name(uint32_t flags);

/* ---- context ----------------------------------------------------------------------------- */

typedef struct skv_context skv_context; /* opaque */

/* Context settings: initialise with skv_context_params_init, then change fields. */
typedef struct skv_context_params {
    size_t struct_size;      /* sizeof(skv_context_params); set by skv_context_params_init */
    int32_t n_threads;       /* OpenMP threads for kernels; default 0 = omp_get_max_threads() */
    uint32_t cpu_mask;       /* AND-ed with skv_cpu_flags(); default SKV_CPU_ALL. 0 = scalar */
    skv_allocator allocator; /* default: all NULL = aligned_alloc/free */
    skv_log_fn log;          /* default NULL = silent */
    void *log_user;          /* default NULL */
    skv_log_level log_level; /* most verbose level passed to log; default SKV_LOG_WARN */
} skv_context_params;

/* Fills *p with the defaults and struct_size (NULL is ignored). Thread-safe. */
SKV_API void skv_context_params_init(skv_context_params *p);

/* p may be NULL (defaults). Errors: INVALID_ARG (out NULL, bad struct_size, n_threads < 0,
 * allocator with only one of alloc/free set), NOMEM. *p is copied; the allocator's and the
 * log's user pointers are kept, and their functions called, until skv_context_destroy. */
SKV_API skv_status skv_context_create(const skv_context_params *p, skv_context **out);

/* NULL is fine. Objects created from the context must be destroyed first. */
SKV_API void skv_context_destroy(skv_context *ctx);

/* The SKV_CPU_* flags the context's kernels use (detected AND mask). */
SKV_API uint32_t skv_context_cpu_flags(const skv_context *ctx);

/* Bytes the context holds for its workspace and objects now (for hosts that budget memory). */
SKV_API size_t skv_context_memory(const skv_context *ctx);

/* ---- dtype conversion -------------------------------------------------------------------- */

/* Widening to f32 is exact for every dtype. Narrowing rounds to nearest, ties to even; NaN
 * stays NaN. F16 and BF16 overflow to infinity; FP8_E4M3 saturates to +-448 (infinities too).
 * Values are raw (no fp8 scale). */
SKV_API float skv_bf16_to_f32(uint16_t x);
SKV_API uint16_t skv_f32_to_bf16(float x);
SKV_API float skv_f16_to_f32(uint16_t x);
SKV_API uint16_t skv_f32_to_f16(float x);
SKV_API float skv_fp8_to_f32(uint8_t x);
SKV_API uint8_t skv_f32_to_fp8(float x);

/* n elements between dtypes (raw values; FP8 without scale). Errors: INVALID_ARG (NULL with
 * n > 0, n < 0, unknown dtype). src and dst must not overlap. */
SKV_API skv_status skv_convert(skv_dtype dst_type, void *dst, skv_dtype src_type, const void *src,
                               int64_t n);

/* Quantise f32 rows to fp8-e4m3 with one f32 scale per row, as DeepSeek's reference does:
 * amax = max(max|x|, 1e-4); scale = amax * (1 / 448) (the f32 reciprocal, DeepSeek's kernel),
 * or amax / 448 rounded once with SKV_QUANT_DIV_SCALE (vLLM's; the two differ by an ulp for
 * some amax), or with SKV_QUANT_POW2_SCALE the smallest power of two >= that ("ue8m0");
 * out = e4m3(x / scale), saturating. NaN inputs stay NaN (and do not enter amax); infinities
 * saturate.
 * x [n_rows][n_cols] with rows `x_stride` floats apart; out [n_rows][n_cols] bytes, contiguous;
 * scales [n_rows]. Errors: INVALID_ARG. */
enum {
    SKV_QUANT_POW2_SCALE = 1, /* scales are powers of two (UE8M0) */
    SKV_QUANT_DIV_SCALE = 2   /* scale = amax / 448 rounded once (vLLM's) */
};
/* See above. Thread-safe; borrows x, out and scales for the call. */
SKV_API skv_status skv_quantize_fp8(const float *x, int64_t n_rows, int32_t n_cols, int64_t x_stride,
                                    uint32_t flags, uint8_t *out, float *scales);
/* The same with one scale per `block` columns of a row (DeepSeek's act_quant: 128 of a longer
 * row; the last block of a row may be shorter): scales [n_rows][ceil(n_cols / block)].
 * block >= n_cols is skv_quantize_fp8. Errors: INVALID_ARG (also block < 1). */
SKV_API skv_status skv_quantize_fp8_blocks(const float *x, int64_t n_rows, int32_t n_cols,
                                           int64_t x_stride, int32_t block, uint32_t flags,
                                           uint8_t *out, float *scales);

/* MXFP4 (see skv_dtype). The quantiser: for each 32 values, amax = the largest finite |x|;
 * the scale exponent e = ceil(log2(amax / 6)) of the f32 quotient, clamped to [-127, 127] (so
 * amax / 2^e <= 6: the power of two that makes amax fit E2M1's largest value, as the engines'
 * reference quantisers compute it); codes = E2M1(x / 2^e), rounded to nearest with ties to the
 * even code (the hardware conversion's rounding), saturating at 6 (infinities too). A NaN
 * makes its block's scale byte 255 (every value of the block NaN) and its codes 0.
 * x [n_rows][n_cols] (n_cols a multiple of 32) with rows x_stride floats apart; out
 * [n_rows][n_cols / 2] bytes and scales [n_rows][n_cols / 32], contiguous. Errors: INVALID_ARG. */
SKV_API skv_status skv_quantize_mxfp4(const float *x, int64_t n_rows, int32_t n_cols,
                                      int64_t x_stride, uint8_t *out, uint8_t *scales);
/* The exact values: out [n_rows][n_cols] = e2m1 * 2^(scale - 127), as f32 (values past the f32
 * range, from scale bytes above 253, are infinite). Errors: INVALID_ARG. */
SKV_API skv_status skv_dequantize_mxfp4(const uint8_t *packed, const uint8_t *scales,
                                        int64_t n_rows, int32_t n_cols, float *out);
/* One E2M1 code (low 4 bits) as f32, and an f32 as its E2M1 code (no scale; rounding as the
 * quantiser's; NaN gives 0). */
SKV_API float skv_e2m1_to_f32(uint8_t code);
SKV_API uint8_t skv_f32_to_e2m1(float x);

/* Q8_0 (see skv_dtype) with ggml's rounding, bit for bit with quantize_row_q8_0_ref
 * (ggml/src/ggml-quants.c) on finite input: per 32 values amax = max |x|, d = amax / 127 in
 * f32, the scale d rounded to f16 (nearest, ties to even), codes roundf(x * (1 / d)) (half away
 * from zero; 0 when d is 0), computed from the f32 d. Where ggml's result is undefined the
 * quantiser pins it: infinities do not enter amax and take code +-127, codes clamp to +-127, a
 * NaN makes its block's scale the f16 NaN 0x7e00 (every value NaN) and its codes 0.
 * x [n_rows][n_cols] (n_cols a multiple of 32) with rows x_stride floats apart; out
 * [n_rows][n_cols / 32] blocks of 34 bytes, contiguous (no alignment needed).
 * Errors: INVALID_ARG. Thread-safe. */
SKV_API skv_status skv_quantize_q8_0(const float *x, int64_t n_rows, int32_t n_cols,
                                     int64_t x_stride, void *out);
/* The exact values: out [n_rows][n_cols] = qs * d as f32. Errors: INVALID_ARG. */
SKV_API skv_status skv_dequantize_q8_0(const void *blocks, int64_t n_rows, int32_t n_cols,
                                       float *out);

#ifdef __cplusplus
}
#endif

#endif
