/* Kernels of the clustered store: dot products of a few query vectors with rows of keys or
 * centroids (any store dtype), and Quest's min/max bound. A scalar C reference is always built;
 * AVX2 and AVX-512 variants live in their own files with their own ISA flags and are chosen from
 * the context's CPU flags, like lib/kernels. */
#ifndef SKV_STORE_SKERN_H
#define SKV_STORE_SKERN_H

#include <stddef.h>
#include <stdint.h>

#include "sparsekv/common.h"

typedef struct skv_store_kern {
    /* out[j * G + g] = sum_i q[g * D + i] * row_j[i] for j < n, g < G; row_j starts `stride`
       bytes after row_{j-1} and holds D elements of dt (F32, BF16 or F16). f32 arithmetic; each
       (j, g) is computed the same way whatever n, j and G (results never depend on tiling). */
    void (*dots)(const float *q, int32_t G, int32_t D, const void *rows, skv_dtype dt,
                 size_t stride, int64_t n, float *out);
    /* out[g] = sum_i max(q[g * D + i] * lo[i], q[g * D + i] * hi[i]): Quest's upper bound of
       q . k over keys inside the box [lo, hi]. */
    void (*minmax)(const float *q, int32_t G, int32_t D, const float *lo, const float *hi,
                   float *out);
    /* Splits n rows of a page (`stride` bytes apart: kb bytes of K, then vb of V) into
       contiguous outputs: dk + i * kb and dv + i * vb. Plain copies (bit-exact). */
    void (*split_rows)(uint8_t *dk, uint8_t *dv, const uint8_t *src, size_t stride, size_t kb,
                       size_t vb, int32_t n);
    const char *name;
} skv_store_kern;

/* Scalar first, then each level the flags allow (SKV_CPU_AVX2, SKV_CPU_AVX512). */
void skv_skern_init(skv_store_kern *k, uint32_t flags);
void skv_skern_init_scalar(skv_store_kern *k);
void skv_skern_init_avx2(skv_store_kern *k);
void skv_skern_init_avx512(skv_store_kern *k);

#endif
