/* sparsekv — common types: status codes, dtypes, the context, allocator and logger hooks,
 * CPU features, dtype conversion and the fp8 quantiser.
 *
 * Thread safety: a context and every object created from it are used by one thread at a time
 * (one context per host thread, or external locking). Functions that take no context are
 * thread-safe. Kernels parallelise internally with OpenMP; called from inside a host's OpenMP
 * parallel region they run on the calling thread only (no nested teams). */
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
 * paired with one f32 scale per row: value = fp8 * scale. */
typedef enum skv_dtype {
    SKV_F32 = 0,
    SKV_BF16 = 1,
    SKV_F16 = 2,
    SKV_FP8_E4M3 = 3
} skv_dtype;

/* Bytes per element of a dtype; 0 for an unknown dtype. */
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
/* Every level (the default cpu_mask) */
#define SKV_CPU_ALL 0xffffffffu

/* Levels this CPU (and OS, for register state) supports, as SKV_CPU_* bits. */
SKV_API uint32_t skv_cpu_flags(void);

/* Name of the highest level in `flags`: "scalar", "avx2", "avx512" or "avx512bf16". */
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
 * allocator with only one of alloc/free set), NOMEM. */
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
 * amax = max(max|x|, 1e-4); scale = amax / 448, or with SKV_QUANT_POW2_SCALE the smallest power
 * of two >= amax / 448 ("ue8m0"); out = e4m3(x / scale), saturating. NaN inputs stay NaN (and
 * do not enter amax); infinities saturate.
 * x [n_rows][n_cols] with rows `x_stride` floats apart; out [n_rows][n_cols] bytes, contiguous;
 * scales [n_rows]. Errors: INVALID_ARG. */
enum { SKV_QUANT_POW2_SCALE = 1 /* scales are powers of two (UE8M0) */ };
/* See above. Thread-safe; borrows x, out and scales for the call. */
SKV_API skv_status skv_quantize_fp8(const float *x, int64_t n_rows, int32_t n_cols, int64_t x_stride,
                                    uint32_t flags, uint8_t *out, float *scales);

#ifdef __cplusplus
}
#endif

#endif
