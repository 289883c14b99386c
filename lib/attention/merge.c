/* skv_attention_merge: combines two normalised partial results by their log-sum-exps. The
 * weights exp(lse - max) are taken in double so that merging is as exact as the inputs. */
#include <math.h>
#include <string.h>

#include "attention/attn.h"

skv_status skv_attention_merge(int64_t n, int32_t v_dim, float *o_a, float *lse_a,
                               const float *o_b, const float *lse_b)
{
    size_t total;
    SKV_CHECK(NULL, n >= 0 && v_dim >= 1);
    SKV_CHECK(NULL, skv_mul_ok((size_t)n, (size_t)v_dim * sizeof(float), &total) &&
                        total <= (size_t)PTRDIFF_MAX);
    SKV_CHECK(NULL, n == 0 || (o_a && lse_a && o_b && lse_b));
    for (int64_t i = 0; i < n; i++) {
        float *oa = o_a + i * v_dim;
        const float *ob = o_b + i * v_dim;
        const float la = lse_a[i], lb = lse_b[i];
        if (lb == -INFINITY)
            continue;
        if (la == -INFINITY) {
            memcpy(oa, ob, (size_t)v_dim * sizeof *oa);
            lse_a[i] = lb;
            continue;
        }
        if (!isfinite(la) || !isfinite(lb)) { /* NaN (or +inf): no meaningful weights */
            for (int32_t c = 0; c < v_dim; c++)
                oa[c] = NAN;
            lse_a[i] = NAN;
            continue;
        }
        const double mx = la > lb ? la : lb;
        const double wa = exp(la - mx), wb = exp(lb - mx), sum = wa + wb;
        for (int32_t c = 0; c < v_dim; c++)
            oa[c] = (float)((wa * oa[c] + wb * ob[c]) / sum);
        lse_a[i] = (float)(mx + log(sum));
    }
    return SKV_OK;
}
