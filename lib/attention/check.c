/* Argument checks of the attention entry points. Everything is validated before any output is
 * written, lists included, so a failed call changes nothing. */
#include <math.h>

#include "attention/attn.h"

/* Bytes spanned by `rows` rows of `dim` elements of `esize` bytes fit in a pointer offset. */
static int span_ok(int64_t rows, int32_t dim, size_t esize)
{
    size_t n;
    return skv_mul_ok((size_t)rows, (size_t)dim * esize, &n) && n <= (size_t)PTRDIFF_MAX;
}

skv_status skv_attn_check(skv_context *ctx, const skv_attn_batch *b, const float *out)
{
    SKV_CHECK(ctx, b != NULL);
    SKV_CHECK(ctx, b->struct_size == sizeof *b);
    SKV_CHECK(ctx, b->dtype == SKV_F32 || b->dtype == SKV_BF16 || b->dtype == SKV_F16 ||
                       b->dtype == SKV_FP8_E4M3);
    SKV_CHECK(ctx, b->n_tokens >= 0);
    SKV_CHECK(ctx, b->n_kv_heads >= 1 && b->n_q_heads >= 1 && b->n_q_heads <= 4096);
    SKV_CHECK(ctx, b->n_q_heads % b->n_kv_heads == 0);
    SKV_CHECK(ctx, b->k_dim >= 1 && b->k_dim <= ATTN_DIM_MAX);
    SKV_CHECK(ctx, b->v_dim >= 1 && b->v_dim <= ATTN_DIM_MAX);
    SKV_CHECK(ctx, isfinite(b->scale));
    SKV_CHECK(ctx, b->causal == 0 || b->causal == 1);
    SKV_CHECK(ctx, b->n_rows >= 0);
    const int32_t dim = b->k_dim > b->v_dim ? b->k_dim : b->v_dim;
    SKV_CHECK(ctx, span_ok((int64_t)b->n_tokens * b->n_q_heads, dim, sizeof(float)));
    SKV_CHECK(ctx, span_ok(b->n_rows, dim, sizeof(float)));
    if (b->n_rows > 0) {
        SKV_CHECK(ctx, b->k != NULL && b->v != NULL);
        SKV_CHECK(ctx, !b->causal || b->k_pos != NULL);
    }
    if (b->n_tokens > 0) {
        SKV_CHECK(ctx, b->q != NULL && out != NULL);
        SKV_CHECK(ctx, b->list_start != NULL && b->list_len != NULL);
        SKV_CHECK(ctx, !b->causal || b->q_pos != NULL);
        const int64_t n_lists = (int64_t)b->n_tokens * b->n_kv_heads;
        for (int64_t i = 0; i < n_lists; i++) {
            const int64_t s = b->list_start[i], n = b->list_len[i];
            SKV_CHECK(ctx, n >= 0 && s >= 0 && s <= b->n_rows - n);
        }
    }
    if (b->dtype == SKV_F16 || b->dtype == SKV_FP8_E4M3)
        return SKV_ERR_UNSUPPORTED;
    return SKV_OK;
}
