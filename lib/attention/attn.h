/* Internal interface of the sparse-attention module: the block kernel that every instruction
 * set implements, its dispatch table, and the argument checks shared by the kernel path and
 * the double-precision reference.
 *
 * The driver (attention.c) walks each (token, KV head) list in fixed segments of rows and each
 * segment in blocks of up to ATTN_BR used rows (masked rows are dropped before a block is
 * formed). A block kernel updates the running state of a chunk of query heads with one block:
 *   s[h][j] = scale * (q[h] . k[j])                  (one K row read serves every head)
 *   m' = max(m, max_j s[h][j]);  p[h][j] = exp(s[h][j] - m')
 *   l  = l * exp(m - m') + sum_j p[h][j]
 *   acc[h] = acc[h] * exp(m - m') + sum_j p[h][j] v[j] (one V row read serves every head)
 * Every head's arithmetic is the same whichever chunk it is in and whichever thread runs it,
 * so results never depend on the thread count. */
#ifndef SKV_ATTN_H
#define SKV_ATTN_H

#include <stdint.h>

#include "core/core.h"
#include "sparsekv/attention.h"

#define ATTN_BR 32      /* rows per block: one block's scores stay in L1 */
#define ATTN_HC_MAX 128 /* query heads a block call handles at most */
#define ATTN_DIM_MAX 1024

/* Running state of nh query heads over one segment, and the block's scratch. */
typedef struct attn_state {
    int32_t nh, k_dim, v_dim;
    float scale;
    const float *q;     /* [nh][k_dim] f32 */
    const uint16_t *qb; /* [nh][k_dim] bf16, for a block_bf16 with q_bf16 */
    float *m;           /* [nh] running max: -inf before any finite score, NaN once a score
                           was NaN or +inf (the head's result is then NaN) */
    float *l;           /* [nh] running sum of exp(s - m) */
    float *acc;         /* [nh][acc_stride] running sum of exp(s - m) v, unnormalised */
    size_t acc_stride;
    float *s;           /* scratch [nh][ATTN_BR]: scores, then weights */
    float *alpha;       /* scratch [nh]: this block's rescale factor */
    const char *pf_k, *pf_v; /* rows to ask for while this block computes, or NULL: row j of
                                the block asks for pf_k + j * k_bytes (and V likewise) */
    size_t k_bytes, v_bytes;
} attn_state;

/* One block of 1 <= n <= ATTN_BR rows; k[j] and v[j] point at row j's K and V elements. */
typedef void (*attn_block_fn)(attn_state *st, const void *const *k, const void *const *v,
                              int n);

typedef struct attn_kernels {
    attn_block_fn block_f32;  /* K, V and q in f32 */
    attn_block_fn block_bf16; /* K and V in bf16; q in bf16 (qb) if q_bf16, else in f32 */
    int q_bf16;
    void (*widen)(const uint16_t *src, float *dst, int64_t n); /* bf16 -> f32, exact */
    const char *name;
} attn_kernels;

/* The table for the highest level in `flags` (SKV_CPU_*). */
const attn_kernels *skv_attn_kernels(uint32_t flags);

extern const attn_kernels skv_attn_kernels_scalar;
#ifdef SKV_HAVE_X86
extern const attn_kernels skv_attn_kernels_avx2;
extern const attn_kernels skv_attn_kernels_avx512;
extern const attn_kernels skv_attn_kernels_avx512bf16;
#endif

/* Validates a batch and the output pointer (ctx may be NULL: logging only). */
skv_status skv_attn_check(skv_context *ctx, const skv_attn_batch *b, const float *out);

/* Whether row r is used by token t (the causal mask). */
static inline int attn_row_used(const skv_attn_batch *b, int32_t t, int64_t r)
{
    return !b->causal || b->k_pos[r] <= b->q_pos[t];
}

#endif
