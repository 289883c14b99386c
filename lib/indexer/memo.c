/* The router's remembered block means (skv_block_memo, run.h): grown by the router as blocks
 * complete, forgotten from a removal's block on and freed by the key cache. */
#include <string.h>

#include "indexer/run.h"

static size_t memo_bytes(int64_t cap, int32_t head_dim)
{
    return (size_t)cap * (size_t)head_dim * sizeof(float);
}

int skv_block_memo_reserve(skv_context *ctx, skv_block_memo *m, int64_t n, int32_t block,
                           int32_t head_dim)
{
    if (m->block != block)
        m->valid = 0, m->block = block;
    if (n <= m->cap)
        return 1;
    int64_t cap = m->cap > 0 ? m->cap : 16;
    while (cap < n)
        cap *= 2;
    float *mean = skv_alloc(ctx, memo_bytes(cap, head_dim));
    if (!mean)
        return 0;
    if (m->valid)
        memcpy(mean, m->mean, memo_bytes(m->valid, head_dim));
    skv_free(ctx, m->mean, memo_bytes(m->cap, head_dim));
    m->mean = mean, m->cap = cap;
    return 1;
}

void skv_block_memo_forget(skv_block_memo *m, int64_t key)
{
    if (!m->block)
        return;
    const int64_t keep = key / m->block;
    m->valid = m->valid < keep ? m->valid : keep;
}

void skv_block_memo_free(skv_context *ctx, skv_block_memo *m, int32_t head_dim)
{
    skv_free(ctx, m->mean, memo_bytes(m->cap, head_dim));
    memset(m, 0, sizeof *m);
}
