/* The indexer driver shared by contiguous keys and the paged key cache. */
#ifndef SKV_INDEXER_RUN_H
#define SKV_INDEXER_RUN_H

#include "core/core.h"
#include "sparsekv/indexer.h"

/* Where the keys are: contiguous rows, or pages through a block table. */
typedef struct skv_key_src {
    int64_t n_keys;
    int32_t head_dim;
    skv_dtype dtype;
    size_t row_bytes;
    /* contiguous */
    const uint8_t *base;
    const float *scale; /* FP8 only */
    /* paged, when table != NULL: key s is row s % page_tokens of page table[s / page_tokens];
       that page's slot starts at pages[id] + slot_offset, its scales at + scale_offset */
    const int32_t *table;
    uint8_t *const *pages;
    size_t slot_offset, scale_offset;
    int32_t page_tokens;
} skv_key_src;

/* Validates the query against the keys (dims, dtypes, pointers). */
skv_status skv_indexer_check_query(skv_context *ctx, const skv_indexer_query *q,
                                   int32_t head_dim, skv_dtype key_dtype);

/* Scores (scores != NULL) or top-k (out_idx != NULL) of every query token. */
skv_status skv_indexer_run(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                           int32_t k, float *scores, int32_t *out_idx, float *out_score);

#endif
