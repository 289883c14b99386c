/* Scalar C attention kernel: always built, the path of CPUs without AVX2 and the ground the
 * SIMD variants are compared with. Plain loops in the order of the formula (attn.h): each dot
 * product summed over d in order, weights by libm's expf, each V row added in order. */
#include <math.h>

#include "attention/attn.h"

/* Element d of a row of f32 or (bf16) bf16 values, as f32 (bf16 widens exactly). */
static inline float elem(const void *row, int32_t d, int bf16)
{
    if (!bf16)
        return ((const float *)row)[d];
    return skv_bf16_bits_f32(((const uint16_t *)row)[d]);
}

static void scores(attn_state *st, const void *const *k, int n, int bf16)
{
    for (int32_t h = 0; h < st->nh; h++) {
        const float *q = st->q + (size_t)h * st->k_dim;
        for (int j = 0; j < n; j++) {
            float dot = 0.0f;
            for (int32_t d = 0; d < st->k_dim; d++)
                dot += q[d] * elem(k[j], d, bf16);
            st->s[(size_t)h * ATTN_BR + j] = st->scale * dot;
        }
    }
}

/* As softmax_update in attn_simd.h. */
static void softmax_update(attn_state *st, int n)
{
    for (int32_t h = 0; h < st->nh; h++) {
        float *s = st->s + (size_t)h * ATTN_BR;
        const float m = st->m[h];
        int bad = isnan(m);
        float bm = -INFINITY;
        for (int j = 0; j < n; j++) {
            bad |= isnan(s[j]) || s[j] == INFINITY;
            bm = s[j] > bm ? s[j] : bm;
        }
        const float mn = m > bm ? m : bm;
        st->alpha[h] = 1.0f;
        if (bad || mn == -INFINITY) {
            if (bad)
                st->m[h] = NAN;
            for (int j = 0; j < n; j++)
                s[j] = 0.0f;
            continue;
        }
        if (m != mn)
            st->alpha[h] = expf(m - mn);
        float sum = 0.0f;
        for (int j = 0; j < n; j++) {
            s[j] = expf(s[j] - mn);
            sum += s[j];
        }
        st->l[h] = st->l[h] * st->alpha[h] + sum;
        st->m[h] = mn;
    }
}

static void weighted_sum(attn_state *st, const void *const *v, int n, int bf16)
{
    for (int32_t h = 0; h < st->nh; h++) {
        float *acc = st->acc + (size_t)h * st->acc_stride;
        const float *w = st->s + (size_t)h * ATTN_BR;
        for (int32_t c = 0; c < st->v_dim; c++)
            acc[c] *= st->alpha[h];
        for (int j = 0; j < n; j++)
            for (int32_t c = 0; c < st->v_dim; c++)
                acc[c] += w[j] * elem(v[j], c, bf16);
    }
}

static void block_f32(attn_state *st, const void *const *k, const void *const *v, int n)
{
    scores(st, k, n, 0);
    softmax_update(st, n);
    weighted_sum(st, v, n, 0);
}

static void block_bf16(attn_state *st, const void *const *k, const void *const *v, int n)
{
    scores(st, k, n, 1);
    softmax_update(st, n);
    weighted_sum(st, v, n, 1);
}

static void widen_scalar(const uint16_t *src, float *dst, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = elem(src, (int32_t)i, 1);
}

const attn_kernels skv_attn_kernels_scalar = {block_f32, block_bf16, 0, widen_scalar, "scalar"};
