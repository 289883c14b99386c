/* Sparse attention slices for a host's thread pool: worker ith computes its share of the
 * (query token, KV head) lists, token by token as sub-batches of consecutive KV heads. Each
 * list's result depends only on that list, so the slices together equal the whole call. */
#include "attention/attn.h"
#include "sparsekv/slice.h"

skv_status skv_sparse_attention_slice(skv_context *wctx, const skv_attn_batch *b, int32_t ith,
                                      int32_t nth, float *out, float *out_max, float *out_lse)
{
    if (!wctx || nth < 1 || ith < 0 || ith >= nth)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(skv_attn_check(wctx, b, out)); /* the whole batch, before anything is written */
    const int64_t Hkv = b->n_kv_heads, n_lists = (int64_t)b->n_tokens * Hkv;
    const int64_t l0 = n_lists * ith / nth, l1 = n_lists * (ith + 1) / nth;
    const int32_t group = b->n_q_heads / b->n_kv_heads;
    const size_t esize = skv_dtype_size(b->dtype);
    const int saved = wctx->n_threads;
    wctx->n_threads = 1;
    skv_status st = SKV_OK;
    for (int64_t l = l0; l < l1 && st == SKV_OK;) {
        const int64_t t = l / Hkv, h0 = l % Hkv, h1 = t == (l1 - 1) / Hkv ? (l1 - 1) % Hkv + 1 : Hkv;
        const size_t qh = (size_t)t * b->n_q_heads + (size_t)h0 * group; /* first query head */
        skv_attn_batch s = *b;
        s.n_tokens = 1;
        s.n_kv_heads = (int32_t)(h1 - h0);
        s.n_q_heads = s.n_kv_heads * group;
        s.q = (const uint8_t *)b->q + qh * b->k_dim * esize;
        s.q_pos = b->q_pos ? b->q_pos + t : NULL;
        s.list_start = b->list_start + l;
        s.list_len = b->list_len + l;
        st = skv_sparse_attention(wctx, &s, out + qh * b->v_dim, out_max ? out_max + qh : NULL,
                                  out_lse ? out_lse + qh : NULL);
        l += h1 - h0;
    }
    wctx->n_threads = saved;
    return st;
}
