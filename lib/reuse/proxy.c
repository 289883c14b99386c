/* Proxies for choosing reuse patterns without a host loss: the cross-layer top-k overlap and
 * the attention-mass matrix (how much of layer l's softmax over its own indexer scores the
 * top-k of layer j captures), with a search loss built on the latter. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "indexer/run.h"
#include "reuse/reuse_impl.h"

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* |a & b| of two ascending lists, ignoring negative entries (and repeats). */
static int32_t intersect(const int32_t *a, const int32_t *b, int32_t k)
{
    int32_t i = 0, j = 0, n = 0;
    while (i < k && a[i] < 0)
        i++;
    while (j < k && b[j] < 0)
        j++;
    while (i < k && j < k) {
        if (a[i] < b[j]) {
            i++;
        } else if (b[j] < a[i]) {
            j++;
        } else {
            const int32_t v = a[i];
            n++;
            while (i < k && a[i] == v)
                i++;
            while (j < k && b[j] == v)
                j++;
        }
    }
    return n;
}

skv_status skv_reuse_overlap(skv_context *ctx, const int32_t *topk, int32_t n_layers,
                             int32_t n_tokens, int32_t k, double *out)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, topk && out && n_layers >= 1 && n_tokens >= 1 && k >= 1 &&
                       k <= SKV_TOPK_MAX_K);
    size_t row_bytes, bytes;
    if (!skv_mul_ok((size_t)k * 4, (size_t)n_layers, &row_bytes) ||
        !skv_mul_ok(row_bytes, (size_t)n_tokens, &bytes))
        return SKV_ERR_NOMEM;
    int32_t *sorted = skv_alloc(ctx, bytes);
    if (!sorted)
        return SKV_ERR_NOMEM;
    const size_t per_layer = (size_t)n_tokens * k;
    for (int32_t l = 0; l < n_layers; l++)
        for (int32_t t = 0; t < n_tokens; t++) {
            int32_t *row = sorted + l * per_layer + (size_t)t * k;
            memcpy(row, topk + l * per_layer + (size_t)t * k, (size_t)k * 4);
            qsort(row, (size_t)k, 4, cmp_i32);
        }
    for (int32_t i = 0; i < n_layers; i++)
        for (int32_t j = i; j < n_layers; j++) {
            int64_t total = 0;
            for (int32_t t = 0; t < n_tokens; t++)
                total += intersect(sorted + i * per_layer + (size_t)t * k,
                                   sorted + j * per_layer + (size_t)t * k, k);
            out[(size_t)i * n_layers + j] = out[(size_t)j * n_layers + i] =
                (double)total / ((double)n_tokens * k);
        }
    skv_free(ctx, sorted, bytes);
    return SKV_OK;
}

skv_status skv_reuse_mass_matrix(skv_context *ctx, const skv_indexer_query *queries,
                                 const skv_key_block *keys, int32_t n_layers, int32_t k,
                                 double *out, int32_t *topk_out)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, queries && keys && out && n_layers >= 1 && k >= 1 && k <= SKV_TOPK_MAX_K);
    const int32_t T = queries[0].n_tokens;
    const int64_t L = keys[0].n_keys;
    SKV_CHECK(ctx, T >= 1 && L >= 1);
    /* every layer's query and keys before anything is allocated or written: a refused layer
       left the earlier layers' top-k in topk_out (and was NOMEM under allocation failure) */
    for (int32_t l = 0; l < n_layers; l++) {
        SKV_CHECK(ctx, queries[l].n_tokens == T && keys[l].n_keys == L);
        SKV_CHECK(ctx, (int64_t)queries[l].n_sink + queries[l].n_window <= k);
        skv_indexer_query q = queries[l];
        skv_key_block kb = keys[l];
        q.dtype = q.dtype == SKV_F16 ? SKV_F32 : q.dtype; /* F16 is checked as the f32 it widens to */
        kb.dtype = kb.dtype == SKV_F16 ? SKV_F32 : kb.dtype;
        skv_key_src src;
        SKV_TRY(skv_key_src_from_block(ctx, &kb, &src));
        SKV_TRY(skv_indexer_check_query(ctx, &q, kb.head_dim, kb.dtype));
    }
    size_t topk_bytes, score_bytes;
    if (!skv_mul_ok((size_t)T * (size_t)k * 4, (size_t)n_layers, &topk_bytes) ||
        !skv_mul_ok((size_t)T * 4, (size_t)L, &score_bytes))
        return SKV_ERR_NOMEM;
    int32_t *topk = topk_out ? topk_out : skv_alloc(ctx, topk_bytes);
    float *scores = skv_alloc(ctx, score_bytes);
    skv_status st = SKV_ERR_NOMEM;
    if (!topk || !scores)
        goto done;
    const size_t per_layer = (size_t)T * k;
    for (int32_t l = 0; l < n_layers; l++) {
        st = skv_indexer_topk(ctx, &queries[l], &keys[l], k, topk + l * per_layer, NULL);
        if (st != SKV_OK)
            goto done;
    }
    for (int32_t l = 0; l < n_layers; l++) {
        st = skv_indexer_scores(ctx, &queries[l], &keys[l], scores);
        if (st != SKV_OK)
            goto done;
        for (int32_t j = 0; j < n_layers; j++)
            out[(size_t)l * n_layers + j] = 0;
        for (int32_t t = 0; t < T; t++) {
            /* softmax over the visible keys (-inf scores weigh 0; NaN ones are left out) */
            float *row = scores + (size_t)t * L;
            double mx = -INFINITY, z = 0;
            for (int64_t s = 0; s < L; s++)
                if (row[s] > mx)
                    mx = row[s];
            if (mx == -INFINITY)
                continue;
            for (int64_t s = 0; s < L; s++)
                z += row[s] == row[s] ? exp((double)row[s] - mx) : 0;
            for (int32_t j = 0; j < n_layers; j++) {
                const int32_t *sel = topk + j * per_layer + (size_t)t * k;
                double m = 0;
                for (int32_t i = 0; i < k; i++)
                    if (sel[i] >= 0 && row[sel[i]] == row[sel[i]])
                        m += exp((double)row[sel[i]] - mx);
                out[(size_t)l * n_layers + j] += m / z;
            }
        }
        for (int32_t j = 0; j < n_layers; j++)
            out[(size_t)l * n_layers + j] /= T;
    }
    st = SKV_OK;
done:
    if (!topk_out)
        skv_free(ctx, topk, topk_bytes);
    skv_free(ctx, scores, score_bytes);
    return st;
}

double skv_reuse_mass_loss_fn(const char *pattern, void *user)
{
    const skv_reuse_mass_loss *m = user;
    if (!m || !m->mass || !pattern || m->n_layers < 1 || (pattern[0] != 'F' && pattern[0] != 'f'))
        return NAN;
    double loss = 0;
    int32_t src = 0;
    for (int32_t l = 0; l < m->n_layers; l++) {
        const char c = pattern[l];
        if (c == 'F' || c == 'f')
            src = l;
        else if (c == 'S' || c == 's')
            loss += 1 - m->mass[(size_t)l * m->n_layers + src];
        else
            return NAN;
    }
    if (pattern[m->n_layers] != '\0') /* longer than the layers */
        return NAN;
    return loss / m->n_layers;
}
