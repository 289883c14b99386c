/* Pooled block keys: chunk sums of contiguous keys, block means from chunk sums (contiguous or
 * in the key cache's pages), and range sums for partly visible blocks. */
#include <string.h>

#include "router/router_impl.h"

void skv_pool_range_sum(const skv_kernels *kern, const skv_key_src *src, int64_t b0, int64_t end,
                        float *sum, float *tmp)
{
    enum { BATCH = 32 }; /* chunk sums added per kernel call */
    const int32_t D = src->head_dim, C = src->pool_chunk;
    int first = 1;
    int64_t s = b0;
    /* whole chunks, and a last chunk that ends where the keys end (its sum holds exactly
       those keys): the first copied, the others added in order */
    const float *cs[BATCH];
    int32_t n = 0;
    for (; s < end && (s + C <= end || end == src->n_keys); s += C) {
        if (first) {
            memcpy(sum, skv_key_chunk_sum(src, s / C), (size_t)D * 4);
            first = 0;
            continue;
        }
        cs[n++] = skv_key_chunk_sum(src, s / C);
        if (n == BATCH)
            kern->add_rows(sum, cs, n, D), n = 0;
    }
    if (n)
        kern->add_rows(sum, cs, n, D);
    /* a partial chunk: its keys summed the way the chunk sum is built, then added */
    if (s < end) {
        float part[4096];
        for (int64_t i = s; i < end; i++) {
            skv_key_row_f32(kern, src, i, i == s ? part : tmp);
            if (i > s)
                kern->add_rows(part, (const float *const[]){tmp}, 1, D);
        }
        if (first)
            memcpy(sum, part, (size_t)D * 4);
        else
            kern->add_rows(sum, (const float *const[]){part}, 1, D);
        first = 0;
    }
    if (first)
        memset(sum, 0, (size_t)D * 4);
}

void skv_pool_mean(const skv_kernels *kern, const skv_key_src *src, int64_t b0, int64_t end,
                   float *mean, float *tmp)
{
    skv_pool_range_sum(kern, src, b0, end, mean, tmp);
    for (int32_t d = 0; d < src->head_dim; d++)
        mean[d] /= (float)(end - b0);
}

skv_status skv_pool_keys(const skv_key_block *keys, int32_t chunk, float *sums)
{
    skv_key_src src;
    if (!keys || chunk < 1)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(skv_key_src_from_block(NULL, keys, &src));
    if (keys->n_keys > 0 && !sums)
        return SKV_ERR_INVALID_ARG;
    skv_kernels kern; /* no context here: the CPU's own level (every level gives these bits) */
    skv_kernels_init(&kern, skv_cpu_flags());
    float tmp[4096];
    const int32_t D = keys->head_dim;
    for (int64_t c = 0; c * chunk < keys->n_keys; c++) {
        float *out = sums + (size_t)c * D;
        const int64_t end = (c + 1) * chunk < keys->n_keys ? (c + 1) * chunk : keys->n_keys;
        for (int64_t i = c * chunk; i < end; i++) {
            skv_key_row_f32(&kern, &src, i, i == c * chunk ? out : tmp);
            if (i > c * chunk)
                kern.add_rows(out, (const float *const[]){tmp}, 1, D);
        }
    }
    return SKV_OK;
}

skv_status skv_src_with_pool(skv_context *ctx, const skv_key_block *keys,
                             const skv_pooled_keys *pooled, skv_key_src *out)
{
    SKV_TRY(skv_key_src_from_block(ctx, keys, out));
    if (pooled) {
        SKV_CHECK(ctx, pooled->chunk >= 1 && (pooled->sums != NULL || keys->n_keys == 0));
        out->pool_chunk = pooled->chunk;
        out->pool_sums = pooled->sums;
    }
    return SKV_OK;
}

static skv_status block_means(const skv_kernels *kern, const skv_key_src *src, int32_t block,
                              float *means, int32_t *counts)
{
    if (src->pool_chunk < 1)
        return SKV_ERR_STATE;
    if (block < 1 || block % src->pool_chunk)
        return SKV_ERR_INVALID_ARG;
    if (src->n_keys > 0 && !means)
        return SKV_ERR_INVALID_ARG;
    float tmp[4096];
    const int32_t D = src->head_dim;
    for (int64_t b = 0; b * block < src->n_keys; b++) {
        const int64_t b0 = b * block, end = b0 + block < src->n_keys ? b0 + block : src->n_keys;
        skv_pool_mean(kern, src, b0, end, means + (size_t)b * D, tmp);
        if (counts)
            counts[b] = (int32_t)(end - b0);
    }
    return SKV_OK;
}

skv_status skv_block_means(const skv_key_block *keys, const skv_pooled_keys *pooled,
                           int32_t block, float *means, int32_t *counts)
{
    skv_key_src src;
    if (!pooled)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(skv_src_with_pool(NULL, keys, pooled, &src));
    skv_kernels kern; /* no context here: the CPU's own level */
    skv_kernels_init(&kern, skv_cpu_flags());
    return block_means(&kern, &src, block, means, counts);
}

skv_status skv_kcache_block_means(const skv_kcache *c, int32_t seq, int32_t layer,
                                  int32_t block, float *means, int32_t *counts)
{
    skv_key_src src;
    if (!c)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(skv_kcache_src(c, seq, layer, &src));
    return block_means(&skv_kcache_context(c)->kern, &src, block, means, counts);
}
