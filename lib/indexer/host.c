/* The engines' own layouts, read where they lie: keys in a host's page pool through its block
 * table (vLLM/SGLang/DeepGEMM fp8_paged_mqa_logits), and ragged batches of query tokens, each
 * with its key range [ks, ke) of one buffer (DeepGEMM fp8_mqa_logits). Both run the indexer
 * driver once per sequence on a key source that points into the caller's memory: nothing is
 * copied, and the results are those of the key cache or of a per-sequence call, bit for bit. */
#include <math.h>
#include <string.h>

#include "indexer/run.h"

/* Sequence i's tokens [t0, t1) as a query of their own, visible lengths in `pos` when given. */
static skv_indexer_query sub_query(const skv_indexer_query *q, int32_t t0, int32_t t1,
                                   const int32_t *pos)
{
    skv_indexer_query s = skv_query_from(q, t0);
    s.n_tokens = t1 - t0;
    s.positions = pos;
    return s;
}

/* The results of tokens that see no key: padding only. */
static void pad(int32_t *idx, float *score, size_t n)
{
    for (size_t j = 0; j < n; j++) {
        idx[j] = -1;
        if (score)
            score[j] = -INFINITY;
    }
}

static skv_status check_paged(skv_context *ctx, const skv_paged_keys *keys, const skv_paged_batch *b,
                              const skv_indexer_query *q)
{
    SKV_CHECK(ctx, keys != NULL && b != NULL);
    SKV_TRY(skv_indexer_check_query(ctx, q, keys->head_dim, keys->dtype));
    const int32_t D = keys->head_dim, P = keys->block_tokens;
    SKV_CHECK(ctx, P >= 1 && keys->n_blocks >= 0 && keys->n_blocks <= INT32_MAX);
    SKV_CHECK(ctx, keys->dtype != SKV_MXFP4_E2M1 || D % 32 == 0);
    SKV_CHECK(ctx, keys->dtype != SKV_Q8_0 || D % SKV_Q8_0_BLOCK == 0);
    const size_t values = (size_t)P * skv_row_bytes(keys->dtype, D);
    const size_t scales = (size_t)P * skv_row_scale_bytes(keys->dtype, D);
    /* the scales follow the values and fit in the block; f32 scales 4-byte aligned */
    SKV_CHECK(ctx, keys->pool != NULL || keys->n_blocks == 0);
    SKV_CHECK(ctx, !scales || keys->scale_offset >= values);
    SKV_CHECK(ctx, keys->block_bytes >= (scales ? keys->scale_offset + scales : values));
    if (keys->dtype == SKV_FP8_E4M3)
        SKV_CHECK(ctx, keys->block_bytes % 4 == 0 && keys->scale_offset % 4 == 0 &&
                           (uintptr_t)keys->pool % 4 == 0);
    if (keys->dtype == SKV_F32 || keys->dtype == SKV_BF16 || keys->dtype == SKV_F16)
        SKV_CHECK(ctx, keys->block_bytes % skv_dtype_size(keys->dtype) == 0 &&
                           (uintptr_t)keys->pool % skv_dtype_size(keys->dtype) == 0);
    SKV_CHECK(ctx, b->n_seqs >= 0 && (b->n_seqs == 0 || (b->block_table && b->context_lens)));
    SKV_CHECK(ctx, b->q_start != NULL || q->n_tokens == b->n_seqs);
    SKV_CHECK(ctx, b->q_start == NULL || (b->q_start[0] == 0 && b->q_start[b->n_seqs] == q->n_tokens));
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const int32_t len = b->context_lens[i];
        SKV_CHECK(ctx, len >= 0 && (b->q_start == NULL || b->q_start[i + 1] >= b->q_start[i]));
        const int64_t nb = ((int64_t)len + P - 1) / P;
        SKV_CHECK(ctx, nb <= b->table_stride || b->n_seqs == 1);
        for (int64_t j = 0; j < nb; j++) {
            const int32_t id = b->block_table[(size_t)i * (size_t)b->table_stride + (size_t)j];
            SKV_CHECK(ctx, id >= 0 && id < keys->n_blocks);
        }
    }
    return SKV_OK;
}

skv_status skv_paged_check(skv_context *ctx, const skv_paged_keys *keys, const skv_paged_batch *b,
                           const skv_indexer_query *q, int32_t k, const void *out)
{
    SKV_TRY(check_paged(ctx, keys, b, q));
    SKV_CHECK(ctx, k >= 1 && k <= SKV_TOPK_MAX_K && (out != NULL || q->n_tokens == 0));
    SKV_CHECK(ctx, (int64_t)q->n_sink + q->n_window <= k);
    return SKV_OK;
}

skv_status skv_paged_scratch(skv_context *ctx, const skv_paged_keys *keys, const skv_paged_batch *b,
                             int slot, skv_paged_seqs *out)
{
    const int32_t P = keys->block_tokens;
    int64_t max_blocks = 0;
    int32_t max_tokens = 0;
    for (int32_t i = 0; i < b->n_seqs; i++) {
        const int64_t nb = ((int64_t)b->context_lens[i] + P - 1) / P;
        const int32_t nt = b->q_start ? b->q_start[i + 1] - b->q_start[i] : 1;
        max_blocks = nb > max_blocks ? nb : max_blocks;
        max_tokens = nt > max_tokens ? nt : max_tokens;
    }
    /* a sequence's page pointers, an identity table over them, its tokens' positions */
    const size_t ptr_b = skv_round_up((size_t)max_blocks * sizeof(uint8_t *), 64);
    const size_t tab_b = skv_round_up((size_t)max_blocks * 4, 64);
    uint8_t *ws = skv_workspace_aux(ctx, slot, ptr_b + tab_b + (size_t)max_tokens * 4 + 64);
    if (!ws)
        return SKV_ERR_NOMEM;
    out->pages = (uint8_t **)ws;
    out->table = (int32_t *)(ws + ptr_b);
    out->pos = (int32_t *)(ws + ptr_b + tab_b);
    for (int64_t j = 0; j < max_blocks; j++)
        out->table[j] = (int32_t)j;
    return SKV_OK;
}

skv_indexer_query skv_paged_seq(const skv_paged_keys *keys, const skv_paged_batch *b,
                                const skv_indexer_query *q, int32_t i, const skv_paged_seqs *w,
                                skv_key_src *src, int32_t *t0_out)
{
    const int32_t P = keys->block_tokens, D = keys->head_dim;
    const int32_t t0 = b->q_start ? b->q_start[i] : i, t1 = b->q_start ? b->q_start[i + 1] : i + 1;
    const int32_t len = b->context_lens[i];
    const int64_t nb = t1 > t0 ? ((int64_t)len + P - 1) / P : 0;
    for (int64_t j = 0; j < nb; j++)
        w->pages[j] = (uint8_t *)keys->pool +
                      (size_t)b->block_table[(size_t)i * (size_t)b->table_stride + (size_t)j] *
                          keys->block_bytes;
    /* DeepGEMM's rule without positions: token j of n sees the first len - n + j + 1 keys */
    if (!q->positions)
        for (int32_t t = t0; t < t1; t++)
            w->pos[t - t0] = len - (t1 - t0) + (t - t0);
    const size_t values = (size_t)P * skv_row_bytes(keys->dtype, D);
    *src = (skv_key_src){
        .n_keys = len, .head_dim = D, .dtype = keys->dtype,
        .row_bytes = skv_row_bytes(keys->dtype, D), .table = w->table,
        .pages = (uint8_t *const *)w->pages, .slot_offset = 0,
        .scale_offset = skv_row_scale_bytes(keys->dtype, D) ? keys->scale_offset : values,
        .page_tokens = P,
    };
    *t0_out = t0;
    return sub_query(q, t0, t1, q->positions ? q->positions + t0 : w->pos);
}

skv_status skv_paged_topk(skv_context *ctx, const skv_paged_keys *keys, const skv_paged_batch *b,
                          const skv_indexer_query *q, int32_t k, int32_t *out_idx,
                          float *out_score)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(skv_paged_check(ctx, keys, b, q, k, out_idx));
    skv_paged_seqs w;
    SKV_TRY(skv_paged_scratch(ctx, keys, b, 2, &w));
    for (int32_t i = 0; i < b->n_seqs; i++) {
        skv_key_src src;
        int32_t t0;
        const skv_indexer_query sq = skv_paged_seq(keys, b, q, i, &w, &src, &t0);
        if (sq.n_tokens == 0)
            continue;
        int32_t *oi = out_idx + (size_t)t0 * k;
        float *os = out_score ? out_score + (size_t)t0 * k : NULL;
        if (src.n_keys == 0) { /* nothing visible */
            pad(oi, os, (size_t)sq.n_tokens * k);
            continue;
        }
        SKV_TRY(skv_indexer_run(ctx, &sq, &src, k, NULL, oi, os));
    }
    return SKV_OK;
}

skv_status skv_paged_scores(skv_context *ctx, const skv_paged_keys *keys, const skv_paged_batch *b,
                            const skv_indexer_query *q, float *out, int64_t out_stride)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(check_paged(ctx, keys, b, q));
    SKV_CHECK(ctx, out_stride >= 0 && (out != NULL || q->n_tokens == 0));
    for (int32_t i = 0; i < b->n_seqs; i++)
        SKV_CHECK(ctx, b->context_lens[i] <= out_stride);
    skv_paged_seqs w;
    SKV_TRY(skv_paged_scratch(ctx, keys, b, 2, &w));
    for (int32_t i = 0; i < b->n_seqs; i++) {
        skv_key_src src;
        int32_t t0;
        const skv_indexer_query sq = skv_paged_seq(keys, b, q, i, &w, &src, &t0);
        if (sq.n_tokens == 0)
            continue;
        float *o = out + (size_t)t0 * (size_t)out_stride;
        if (src.n_keys == 0) /* nothing visible */
            for (size_t j = 0; j < (size_t)sq.n_tokens * (size_t)out_stride; j++)
                o[j] = -INFINITY;
        else
            SKV_TRY(skv_indexer_run_scores(ctx, &sq, &src, o, out_stride));
    }
    return SKV_OK;
}

skv_status skv_indexer_topk_ragged(skv_context *ctx, const skv_indexer_query *q,
                                   const skv_key_block *keys, const int32_t *ks, const int32_t *ke,
                                   int32_t k, uint32_t flags, int32_t *out_idx, float *out_score)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, keys != NULL);
    SKV_TRY(skv_indexer_check_query(ctx, q, keys->head_dim, keys->dtype));
    skv_key_src all;
    SKV_TRY(skv_key_src_from_block(ctx, keys, &all));
    SKV_CHECK(ctx, k >= 1 && k <= SKV_TOPK_MAX_K && (flags & ~(uint32_t)SKV_RAGGED_RELATIVE) == 0);
    SKV_CHECK(ctx, q->positions == NULL); /* the ranges say what each token sees */
    SKV_CHECK(ctx, (int64_t)q->n_sink + q->n_window <= k);
    const int32_t T = q->n_tokens;
    SKV_CHECK(ctx, T == 0 || (ks && ke && out_idx));
    for (int32_t t = 0; t < T; t++)
        SKV_CHECK(ctx, ks[t] >= 0 && ks[t] <= ke[t] && ke[t] <= keys->n_keys);
    int32_t *pos = skv_workspace_aux(ctx, 2, (size_t)T * 4 + 64);
    if (!pos)
        return SKV_ERR_NOMEM;
    const int32_t D = keys->head_dim;
    /* runs of tokens with one start (a sequence's tokens): one driver call each */
    for (int32_t t0 = 0, t1; t0 < T; t0 = t1) {
        int32_t end = ke[t0];
        for (t1 = t0 + 1; t1 < T && ks[t1] == ks[t0]; t1++)
            end = ke[t1] > end ? ke[t1] : end;
        const int64_t s0 = ks[t0];
        for (int32_t t = t0; t < t1; t++)
            pos[t - t0] = ke[t] - ks[t] - 1;
        skv_key_src src = all;
        src.n_keys = end - s0;
        src.base = all.base + (size_t)s0 * all.row_bytes;
        src.scale = all.scale ? all.scale + s0 : NULL;
        src.mx_scale = all.mx_scale ? all.mx_scale + (size_t)s0 * (size_t)(D / 32) : NULL;
        const skv_indexer_query sq = sub_query(q, t0, t1, pos);
        int32_t *oi = out_idx + (size_t)t0 * k;
        float *os = out_score ? out_score + (size_t)t0 * k : NULL;
        if (src.n_keys == 0) {
            pad(oi, os, (size_t)(t1 - t0) * k);
            continue;
        }
        SKV_TRY(skv_indexer_run(ctx, &sq, &src, k, NULL, oi, os));
        if (!(flags & SKV_RAGGED_RELATIVE))
            for (size_t j = 0; j < (size_t)(t1 - t0) * k; j++)
                oi[j] += oi[j] >= 0 ? (int32_t)s0 : 0;
    }
    return SKV_OK;
}
