/* Kernel families and their dispatch tables. Each family has a scalar C reference, always
 * built, and x86 variants compiled in their own files with their own ISA flags. A table is
 * filled with the scalar versions, then upgraded level by level while the CPU flags (AND the
 * context's mask) allow. */
#ifndef SKV_KERNELS_H
#define SKV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "sparsekv/common.h"

/* ---- indexer scoring --------------------------------------------------------------------
 * A "query pack" holds one query token in the layout a score kernel wants (heads interleaved
 * for the vector width, padded), with its weights and optional per-head fp8 scales. The score
 * kernel then computes, for n consecutive keys rows `k_stride` elements apart,
 *   out[j] = sum_h w[h] * relu(s_h * (q[h] . k[j]))     s_h = qs[h] * ks[j] when scaled, else 1
 * When every q scale is positive and finite the pack also holds w[h] * qs[h] ("folded"), and
 * keys with a positive finite scale take DeepSeek's form ks[j] * sum_h (w qs)[h] relu(q . k):
 * equal in exact arithmetic (relu(a x) = a relu(x) for a > 0), two multiplies fewer per head.
 * Each key's result depends only on that key (never on n or j): tiling cannot change it. */
typedef struct skv_qpack_args {
    const void *q;       /* [H][D] of one token */
    skv_dtype q_dtype;   /* F32, BF16, F16 (f32 compute only) or FP8_E4M3 */
    const float *qscale; /* [H] or NULL */
    const float *w;      /* [H] */
    int32_t H, D;
    int scaled;          /* 1: apply qs[h] * ks[j] (fp8 on either side) */
} skv_qpack_args;

/* The pack layout every kernel shares: a header, then chunks of up to hv_max vectors of
 * `lanes` lanes. A "unit" is one dim (compute F32) or one pair of dims (BF16; odd D padded).
 * Lane groups: with few heads, each head takes g lanes (g a power of two, heads * g <= lanes,
 * g dividing the units) holding g consecutive units, so one broadcast of g units of a key
 * feeds g lanes; g = 1 otherwise. A chunk holds width = hv * lanes lanes, heads = width / g:
 *   q: [units / g][width] units; lane l holds unit (step * g + l % g) of head l / g
 *   w, wf: [width] weights (and weights * q scales) on each group's first lane, 0 elsewhere
 *   s: [width] q scales (1 when absent)
 * Padded lanes are zero in q and w. The scalar kernel uses lanes = 1, hv_max = H. */
typedef struct skv_qpack_hdr {
    int32_t H, D, lanes, hv_max, n_chunks, g;
    int32_t scaled; /* 0 none, 1 scales inside the ReLU, 2 folded (see above) */
    skv_dtype compute;
    size_t chunk_bytes; /* bytes of a full chunk; chunk c starts at hdr + c * chunk_bytes */
} skv_qpack_hdr;

#define SKV_QPACK_HDR_BYTES 64

size_t skv_qpack_size(int32_t H, int32_t D, int lanes, int hv_max, skv_dtype compute);
void skv_qpack_fill(void *dst, const skv_qpack_args *a, int lanes, int hv_max, skv_dtype compute);

/* Pointers into chunk c of a pack. */
typedef struct skv_qchunk {
    const void *q;
    const float *w, *s, *wf; /* weights, q scales, weights * q scales */
    int32_t hv, heads; /* vectors, and real heads in them */
    int32_t g, active; /* lane group, and lanes in use (heads * g) */
} skv_qchunk;

skv_qchunk skv_qpack_chunk(const skv_qpack_hdr *h, int32_t c);

typedef struct skv_score_kernel {
    /* Bytes of one pack for H heads of dimension D (64-byte multiple). */
    size_t (*pack_size)(int32_t H, int32_t D);
    void (*pack)(void *dst, const skv_qpack_args *a);
    /* keys in the kernel's compute dtype (f32 or bf16); ks NULL unless the pack is scaled. */
    void (*score)(const void *pack, const void *k, size_t k_stride, const float *ks, int64_t n,
                  float *out);
    skv_dtype compute; /* SKV_F32 or SKV_BF16 */
} skv_score_kernel;

/* ---- few heads, keys in lanes ------------------------------------------------------------
 * With at most 8 heads a vector of heads leaves most of each key's work to a horizontal sum;
 * putting 16 keys in the lanes instead makes every dot-product step a full vector. The lanes
 * layout of n keys of D dims (D a multiple of 32): tile t (keys 16t..16t+15) at
 * out + t * (D / 2) * 16 holds, for each pair u of dims, the 16 keys' bf16 pairs [u][16]; a last
 * partial tile repeats its last key. score takes a score_bf16 pack of at most 8 heads and
 * computes the same formula per key (each key's result depends only on that key), with the
 * rounding of its own summation order. */
typedef struct skv_lanes_kernel {
    /* rows: one pointer per key (the keys of a group may lie on several pages) */
    void (*to_lanes)(const void *const *rows, int32_t D, int64_t n, uint32_t *out);
    /* the same from fp8 rows (converted on the way, exactly) */
    void (*fp8_to_lanes)(const void *const *rows, int32_t D, int64_t n, uint32_t *out);
    void (*score)(const void *pack, const uint32_t *lanes, const float *ks, int64_t n,
                  float *out);
    /* fp8 rows scored in lanes made in registers (no tiles: for keys that one token scores);
       the same bits as fp8_to_lanes, then score. Present wherever to_lanes is. */
    void (*score_fp8)(const void *pack, const void *const *rows, const float *ks, int64_t n,
                      float *out);
    /* The same from fp8 keys already in "fp8 tiles" (tiles: one pointer per 16 keys, the last
       tile's keys past n ignored): tile t holds, for each 16 dims d0 of its keys, 256 bytes
       at tile + d0 * 16: four 64-byte vectors, vector i's 128-bit lane L holding keys 4L..4L+3,
       each its bytes of dims d0 + 4i, d0 + 4i + 1 (bytes 0-7: key 4L + j at 2j), then dims
       d0 + 4i + 2, + 3 (bytes 8-15), so that a byte unpack widens them into lanes rows (the
       key cache's lane copy: skv_kcache_params.lane_copy). The same bits again. */
    void (*score_fp8_tiles)(const void *pack, const void *const *tiles, const float *ks,
                            int64_t n, float *out);
} skv_lanes_kernel;

/* The byte offset of dim d of key j (0..15) within its fp8 tile (layout above). */
static inline size_t skv_fp8_tile_offset(int32_t j, int32_t d)
{
    const int32_t pair = (d % 16) / 2;
    return (size_t)(d / 16) * 256 + (size_t)(pair / 2) * 64 + (size_t)(j / 4) * 16 +
           (size_t)(pair % 2) * 8 + (size_t)(j % 4) * 2 + (size_t)(d % 2);
}

#define SKV_LANES_MAX_HEADS 8
/* Keys stream from memory once: to_lanes and fp8_to_lanes ask for the rows this many keys
 * ahead of the tile they transpose, and a caller that walks groups of keys asks for the next
 * group's first ones (MISA prefill at 128K measured 14 % faster, decode 3 %). */
#define SKV_LANES_PREFETCH 32

/* ---- conversion to a compute dtype (n elements, any n) --------------------------------- */
typedef void (*skv_cvt_fn)(const void *src, void *dst, int64_t n);

/* ---- MXFP4 blocks to a compute dtype ---------------------------------------------------
 * n blocks of 32 values: block b's codes are packed[16b .. 16b + 16) (low nibble first), its
 * scale byte scales[b]; dst gets 32n values e2m1 * 2^(scale - 127), as f32 or as bf16 (exact:
 * at most two significant bits, so the f32 value's low half is zero). Every level computes
 * the f32 product code value * scale, so every level gives the same bits. */
typedef void (*skv_mx_cvt_fn)(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst);

/* ---- top-k filter ------------------------------------------------------------------------
 * Scores are ranked through a monotone u32 key: larger key = better; NaN -> 0; -0 == +0.
 * filter appends (key, base + j) for every j with key(s[j]) > thr (every j when `all`), in
 * order, and returns the count. It may write up to 16 entries past the count. */
typedef int32_t (*skv_filter_fn)(const float *s, int32_t n, int32_t base, uint32_t thr, int all,
                                 uint32_t *keys, int32_t *idx);

/* ---- the top-k cut's passes (radix select) -----------------------------------------------
 * key_range writes the smallest and largest of n >= 1 keys.
 * in_range copies, in order, the keys with key - lo <= span into out and returns their count;
 * once the count reaches cap it may stop, returning some count >= cap (out holds cap + 16).
 * keep keeps in place, in order, the pairs with key > kth and the first `need` pairs with
 * key == kth (all of them when need >= their count), and returns how many it kept; it writes
 * nothing past n. */
typedef void (*skv_key_range_fn)(const uint32_t *key, int32_t n, uint32_t *lo, uint32_t *hi);
typedef int32_t (*skv_in_range_fn)(const uint32_t *key, int32_t n, uint32_t lo, uint32_t span,
                                   uint32_t *out, int32_t cap);
typedef int32_t (*skv_keep_fn)(uint32_t *key, int32_t *idx, int32_t n, uint32_t kth, int64_t need);

/* ---- the MISA router's dot products ------------------------------------------------------
 * dots[i * H + h] = sum_d qt[d * H + h] * x[i * D + d] for n vectors x and h < H (qt: the
 * query transposed, [D][H]); each head sums over d in order, with the product rounded before
 * the add, so every level gives the same bits. add_rows: acc[i] += rows[0][i], then rows[1][i], ... in row order (the bits of
 * one add per row), the sums kept in registers across the rows. */
typedef void (*skv_head_dots_fn)(const float *qt, const float *x, int32_t n, int32_t H,
                                 int32_t D, float *dots);
typedef void (*skv_add_rows_fn)(float *acc, const float *const *rows, int32_t n_rows, int64_t n);
/* dst[c * dst_stride + r] = src[r * cols + c] for r < rows <= 16, c < cols: up to 16 rows
 * written down their columns (the router's query, a group of heads at a time). */
typedef void (*skv_cols16_fn)(const float *src, int32_t rows, int32_t cols, float *dst,
                              int64_t dst_stride);

typedef struct skv_kernels {
    uint32_t flags;       /* SKV_CPU_* in use */
    skv_score_kernel score_f32;
    skv_score_kernel score_bf16; /* pack_size == NULL when the level has no bf16 dot product */
    skv_lanes_kernel lanes;      /* to_lanes == NULL when the level has none */
    skv_cvt_fn bf16_to_f32, fp8_to_f32, fp8_to_bf16;
    skv_mx_cvt_fn mxfp4_to_f32, mxfp4_to_bf16;
    skv_filter_fn filter;
    skv_key_range_fn key_range;
    skv_in_range_fn in_range;
    skv_keep_fn keep;
    skv_head_dots_fn head_dots;
    skv_add_rows_fn add_rows;
    skv_cols16_fn cols16;
    /* F16 -> f32 (exact; NaN quiet), any n; Q8_0 blocks -> f32 (n values, a multiple of 32:
       n / 32 blocks of SKV_Q8_0_BLOCK_BYTES). f16_*.c and q8_*.c, the same bits at every level. */
    skv_cvt_fn f16_to_f32, q8_0_to_f32;
    /* The opt-in int8 path (q8i8.h): int8 queries against raw Q8_0 rows (k_stride unused). */
    skv_score_kernel score_q8i8;
} skv_kernels;

void skv_kernels_init(skv_kernels *k, uint32_t flags);

/* Per-ISA table fillers (defined only where the build has the ISA). */
void skv_kernels_init_scalar(skv_kernels *k);
void skv_kernels_init_avx2(skv_kernels *k);
void skv_kernels_init_avx512(skv_kernels *k);
void skv_kernels_init_avx512bf16(skv_kernels *k);
void skv_mxfp4_init_avx2(skv_kernels *k);   /* mxfp4_avx2.c: the MXFP4 conversions */
void skv_mxfp4_init_avx512(skv_kernels *k); /* mxfp4_avx512.c: the same, both AVX-512 levels */
void skv_f16_init_scalar(skv_kernels *k);  /* f16_*.c: F16 -> f32 */
void skv_f16_init_avx2(skv_kernels *k);
void skv_f16_init_avx512(skv_kernels *k);
void skv_q8_init_scalar(skv_kernels *k);   /* q8_*.c: Q8_0 -> f32 */
void skv_q8_init_avx2(skv_kernels *k);
void skv_q8_init_avx512(skv_kernels *k);
void skv_q8i8_init_scalar(skv_kernels *k);      /* q8i8_*.c: the int8 path */
int skv_q8i8_init_avx512vnni(skv_kernels *k);   /* 0 when the CPU lacks AVX512-VNNI */
int skv_q8i8_init_avxvnni(skv_kernels *k);      /* 0 when the CPU lacks AVX-VNNI */
void skv_kernels_init_neon(skv_kernels *k); /* kernels_neon.c (AArch64) */

/* Score-key encoding shared by every variant. */
static inline uint32_t skv_score_key(float f)
{
    union { float f; uint32_t u; } v = {f + 0.0f}; /* -0 + 0 = +0 */
    if (f != f)
        return 0;
    return v.u ^ ((uint32_t)((int32_t)v.u >> 31) | 0x80000000u);
}

static inline float skv_score_from_key(uint32_t key)
{
    union { uint32_t u; float f; } v;
    if (key == 0) {
        v.u = 0x7fc00000u;
        return v.f;
    }
    v.u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    return v.f;
}

#endif
