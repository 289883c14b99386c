/* skv_sparse_attention_reference: the definition in plain loops, in double precision. Two
 * passes per (token, head): the maximum score, then the weights and the weighted sum, the
 * scores recomputed rather than stored so no buffer grows with the list. */
#include <math.h>

#include "attention/attn.h"

static double elem(const skv_attn_batch *b, const void *base, int64_t i)
{
    return b->dtype == SKV_F32 ? (double)((const float *)base)[i]
                               : (double)skv_bf16_to_f32(((const uint16_t *)base)[i]);
}

static double score(const skv_attn_batch *b, int64_t q_off, int64_t r)
{
    double dot = 0.0;
    for (int32_t d = 0; d < b->k_dim; d++)
        dot += elem(b, b->q, q_off + d) * elem(b, b->k, r * b->k_dim + d);
    return (double)b->scale * dot;
}

skv_status skv_sparse_attention_reference(const skv_attn_batch *b, float *out, float *out_max,
                                          float *out_lse)
{
    SKV_TRY(skv_attn_check(NULL, b, out));
    const int32_t group = b->n_q_heads / b->n_kv_heads, V = b->v_dim;
    double o[ATTN_DIM_MAX];
    for (int32_t t = 0; t < b->n_tokens; t++)
        for (int32_t h = 0; h < b->n_q_heads; h++) {
            const int64_t th = (int64_t)t * b->n_q_heads + h;
            const int64_t list = (int64_t)t * b->n_kv_heads + h / group;
            const int64_t r0 = b->list_start[list], r1 = r0 + b->list_len[list];
            const int64_t q_off = th * b->k_dim;
            double m = -INFINITY, l = 0.0;
            int bad = 0;
            for (int64_t r = r0; r < r1; r++) {
                if (!attn_row_used(b, t, r))
                    continue;
                const double s = score(b, q_off, r);
                bad |= isnan(s) || s == INFINITY;
                m = s > m ? s : m;
            }
            for (int32_t c = 0; c < V; c++)
                o[c] = 0.0;
            if (!bad && m > -INFINITY)
                for (int64_t r = r0; r < r1; r++) {
                    if (!attn_row_used(b, t, r))
                        continue;
                    const double p = exp(score(b, q_off, r) - m);
                    l += p;
                    for (int32_t c = 0; c < V; c++)
                        o[c] += p * elem(b, b->v, r * V + c);
                }
            float *dst = out + th * V;
            float mx, lse;
            if (bad) {
                for (int32_t c = 0; c < V; c++)
                    dst[c] = NAN;
                mx = lse = NAN;
            } else if (m == -INFINITY) { /* empty, fully masked, or every score -inf */
                for (int32_t c = 0; c < V; c++)
                    dst[c] = 0.0f;
                mx = lse = -INFINITY;
            } else {
                for (int32_t c = 0; c < V; c++)
                    dst[c] = (float)(o[c] / l);
                mx = (float)m;
                lse = (float)(m + log(l));
            }
            if (out_max)
                out_max[th] = mx;
            if (out_lse)
                out_lse[th] = lse;
        }
    return SKV_OK;
}
