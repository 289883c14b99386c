/* DeepSeek-V4's compressed indexer entries: which entries a token sees, and the tokens and
 * pages a selected entry stands for (engine.h). */
#include <stdlib.h>

#include "indexer/run.h"

int64_t skv_compressed_count(int64_t n_tokens, int32_t ratio)
{
    return ratio >= 1 && n_tokens > 0 ? n_tokens / ratio : 0;
}

skv_status skv_kcache_append_compressed(skv_kcache *c, int32_t seq, int32_t layer,
                                        int64_t n_tokens, int32_t ratio, const skv_key_block *entries)
{
    if (!c)
        return SKV_ERR_INVALID_ARG;
    skv_context *ctx = skv_kcache_context(c);
    SKV_CHECK(ctx, ratio >= 1 && n_tokens >= 0 && n_tokens <= INT32_MAX && entries != NULL);
    int64_t stored;
    SKV_TRY(skv_kcache_seq_length(c, seq, layer, &stored));
    /* exactly the entries the new tokens completed: none missing, none twice */
    SKV_CHECK(ctx, entries->n_keys == skv_compressed_count(n_tokens, ratio) - stored);
    return skv_kcache_append(c, seq, layer, entries);
}

/* floor(a / b) for b >= 1 */
static int64_t floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

skv_status skv_compressed_positions(const int32_t *positions, int32_t n, int32_t ratio,
                                    int32_t *out)
{
    if (ratio < 1 || n < 0 || (n > 0 && (!positions || !out)))
        return SKV_ERR_INVALID_ARG;
    for (int32_t t = 0; t < n; t++) {
        const int64_t last = floor_div((int64_t)positions[t] + 1, ratio) - 1;
        out[t] = last < -1 ? -1 : (int32_t)last;
    }
    return SKV_OK;
}

skv_status skv_compressed_expand(const int32_t *entries, int64_t n, int32_t ratio, int32_t *out)
{
    if (ratio < 1 || n < 0 || (n > 0 && (!entries || !out)))
        return SKV_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++)
        if (entries[i] > INT32_MAX / ratio - 1)
            return SKV_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++)
        for (int32_t j = 0; j < ratio; j++)
            out[i * ratio + j] = entries[i] < 0 ? -1 : entries[i] * ratio + j;
    return SKV_OK;
}

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

skv_status skv_compressed_pages(const int32_t *entries, int64_t n, int32_t ratio,
                                int32_t page_tokens, int32_t *out_pages, int64_t *n_out)
{
    if (ratio < 1 || page_tokens < 1 || n < 0 || !n_out || (n > 0 && (!entries || !out_pages)))
        return SKV_ERR_INVALID_ARG;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (entries[i] < 0)
            continue;
        const int64_t first = (int64_t)entries[i] * ratio, last = first + ratio - 1;
        for (int64_t p = first / page_tokens; p <= last / page_tokens; p++)
            out_pages[m++] = (int32_t)p;
    }
    qsort(out_pages, (size_t)m, 4, cmp_i32);
    int64_t u = 0;
    for (int64_t i = 0; i < m; i++)
        if (u == 0 || out_pages[u - 1] != out_pages[i])
            out_pages[u++] = out_pages[i];
    *n_out = u;
    return SKV_OK;
}
