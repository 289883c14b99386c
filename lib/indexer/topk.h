/* Streaming top-k selection over score keys (see skv_score_key). A state holds candidates in
 * index order; pushes must come in increasing index order. Once the buffer fills it is cut
 * back to the best k by a radix select, and the k-th key becomes a threshold that rejects
 * later candidates at the cost of one compare: a later index never wins a tie. */
#ifndef SKV_TOPK_H
#define SKV_TOPK_H

#include "core/core.h"

#define SKV_TOPK_PIECE 256 /* scores pushed per filter call */

typedef struct skv_topk_state {
    const skv_kernels *kern;
    uint32_t *key;
    int32_t *idx;
    int32_t n, k, limit; /* count, target, compaction trigger */
    uint32_t thr;        /* with have_thr: accept key > thr only */
    int have_thr;
} skv_topk_state;

/* Bytes of buffer a state for k needs (64-byte multiple). */
size_t skv_topk_state_bytes(int32_t k);
void skv_topk_init(skv_topk_state *st, const skv_kernels *kern, void *mem, int32_t k);
/* Scores s[0..n) of indices base + 0..n. */
void skv_topk_push(skv_topk_state *st, const float *s, int32_t n, int32_t base);
/* Cuts the state to its best min(n, k), still in index order. */
void skv_topk_compact(skv_topk_state *st);
/* Writes k results in rank order, padded with -1 / -INFINITY. out_score may be NULL. */
void skv_topk_finish(skv_topk_state *st, int32_t *out_idx, float *out_score);
/* Writes the best min(n, k) indices in index order, padded with -1: the same set as
 * skv_topk_finish, without ranking it. */
void skv_topk_finish_set(skv_topk_state *st, int32_t *out_idx);

/* Candidates of rows whose keys were cut into ranges that threads took as they came free:
 * each thread's best k of the ranges it took, in a slot of its own (rank order, or index order
 * for the set form), merged at the end. The set form's rows also hold an area as large as
 * their slots, where the slots' runs are laid out in index order. */
typedef struct skv_topk_parts {
    const skv_kernels *kern;
    uint32_t *key; /* [rows][stride][k] */
    int32_t *idx;
    int32_t *n; /* [rows][stride] */
    int32_t k, splits, stride; /* slots; slots per row (2 * splits for the set form) */
} skv_topk_parts;

/* Ranges per row: enough to give every thread work, none shorter than min_keys. */
int32_t skv_topk_split_count(int64_t n_rows, int n_threads, int64_t row_len, int64_t min_keys);
/* false on size overflow. */
int skv_topk_parts_bytes(int64_t rows, int32_t splits, int32_t k, int set_form, size_t *out);
void skv_topk_parts_init(skv_topk_parts *m, const skv_kernels *kern, void *mem, int64_t rows,
                         int32_t splits, int32_t k, int set_form);
void skv_topk_parts_store(const skv_topk_parts *m, int64_t row, int32_t split,
                          skv_topk_state *st);
/* Merges a row's slots (no index in two of them) and writes its results: ranks [piece * k /
 * pieces, (piece + 1) * k / pieces) of them, so that pieces of one row can be written by
 * several threads at once (pieces at most skv_topk_parts_pieces; out_* point at the row's
 * first rank). */
int32_t skv_topk_parts_pieces(const skv_topk_parts *m);
void skv_topk_parts_finish(const skv_topk_parts *m, int64_t row, int32_t piece, int32_t pieces,
                           int32_t *out_idx, float *out_score);
/* The set form: a slot's best k stored in index order; and a row's best k over its slots
 * written in index order (padded with -1). Range r of the row, indices [r * chunk, (r + 1) *
 * chunk), was taken by the thread of slot owner[r]. */
void skv_topk_parts_store_set(const skv_topk_parts *m, int64_t row, int32_t split,
                              skv_topk_state *st);
void skv_topk_parts_finish_set(const skv_topk_parts *m, int64_t row, const int32_t *owner,
                               int32_t n_ranges, int64_t chunk, int32_t *out_idx);

#endif
