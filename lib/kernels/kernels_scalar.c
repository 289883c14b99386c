/* Scalar C reference kernels: always built, the ground every SIMD variant is checked against,
 * and the path taken on CPUs without AVX2. Written for clarity, in the same per-key operation
 * order as the formula: dot product over d, scale, ReLU (NaN propagates), weight, head sum. */
#include <math.h>
#include <string.h>

#include "core/core.h"

static size_t pack_size_scalar(int32_t H, int32_t D)
{
    return skv_qpack_size(H, D, 1, H, SKV_F32);
}

static void pack_scalar(void *dst, const skv_qpack_args *a)
{
    skv_qpack_fill(dst, a, 1, a->H, SKV_F32);
}

static inline float relu(float x) { return x > 0 || x != x ? x : 0.0f; }

static void score_scalar(const void *pack, const void *keys, size_t k_stride, const float *ks,
                         int64_t n, float *out)
{
    const skv_qpack_hdr *hdr = pack;
    const skv_qchunk c = skv_qpack_chunk(hdr, 0);
    const float *q = c.q;
    const int32_t H = hdr->H, D = hdr->D;
    for (int64_t j = 0; j < n; j++) {
        const float *k = (const float *)keys + j * (int64_t)k_stride;
        /* folded (kernels.h): the key scale after the head sum, q scales in the weights */
        const int folded = hdr->scaled == 2 && ks[j] > 0 && ks[j] <= 3.4028235e38f;
        float sum = 0;
        for (int32_t h = 0; h < H; h++) {
            float dot = 0;
            for (int32_t d = 0; d < D; d++)
                dot += q[(size_t)d * H + h] * k[d];
            if (folded)
                sum += c.wf[h] * relu(dot);
            else if (hdr->scaled)
                sum += c.w[h] * relu(dot * (c.s[h] * ks[j]));
            else
                sum += c.w[h] * relu(dot);
        }
        out[j] = folded ? sum * ks[j] : sum;
    }
}

static void bf16_to_f32_scalar(const void *src, void *dst, int64_t n)
{
    const uint16_t *s = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = skv_bf16_to_f32(s[i]);
}

static void fp8_to_f32_scalar(const void *src, void *dst, int64_t n)
{
    const uint8_t *s = src;
    float *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = skv_fp8_to_f32(s[i]);
}

static void fp8_to_bf16_scalar(const void *src, void *dst, int64_t n)
{
    const uint8_t *s = src;
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = skv_fp8_bf16_lut[s[i]];
}

static void mxfp4_to_f32_scalar(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    float *d = dst;
    for (int64_t b = 0; b < n; b++)
        skv_mxfp4_row_f32(packed + b * 16, scales + b, 32, d + b * 32);
}

static void mxfp4_to_bf16_scalar(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    uint16_t *d = dst;
    float v[32];
    for (int64_t b = 0; b < n; b++) {
        skv_mxfp4_row_f32(packed + b * 16, scales + b, 32, v);
        for (int i = 0; i < 32; i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            d[b * 32 + i] = (uint16_t)(u >> 16);
        }
    }
}

static int32_t filter_scalar(const float *s, int32_t n, int32_t base, uint32_t thr, int all,
                             uint32_t *keys, int32_t *idx)
{
    int32_t m = 0;
    for (int32_t j = 0; j < n; j++) {
        const uint32_t key = skv_score_key(s[j]);
        if (all || key > thr) {
            keys[m] = key;
            idx[m] = base + j;
            m++;
        }
    }
    return m;
}

static void key_range_scalar(const uint32_t *key, int32_t n, uint32_t *lo, uint32_t *hi)
{
    uint32_t a = UINT32_MAX, b = 0;
    for (int32_t i = 0; i < n; i++) {
        a = key[i] < a ? key[i] : a;
        b = key[i] > b ? key[i] : b;
    }
    *lo = a;
    *hi = b;
}

static int32_t in_range_scalar(const uint32_t *key, int32_t n, uint32_t lo, uint32_t span,
                               uint32_t *out, int32_t cap)
{
    int32_t m = 0;
    for (int32_t i = 0; i < n && m < cap; i++) {
        out[m] = key[i];
        m += key[i] - lo <= span;
    }
    return m;
}

static int32_t keep_scalar(uint32_t *key, int32_t *idx, int32_t n, uint32_t kth, int64_t need)
{
    int32_t out = 0;
    for (int32_t i = 0; i < n; i++) { /* bitwise, not ||: the branch would be a coin toss */
        const uint32_t kv = key[i];
        const int eq = kv == kth;
        const int keep = (kv > kth) | (eq & (need > 0));
        need -= eq;
        key[out] = kv;
        idx[out] = idx[i];
        out += keep;
    }
    return out;
}

static void head_dots_scalar(const float *qt, const float *x, int32_t n, int32_t H, int32_t D,
                             float *dots)
{
    for (int32_t i = 0; i < n; i++, x += D, dots += H) {
        for (int32_t h = 0; h < H; h++)
            dots[h] = 0;
        for (int32_t d = 0; d < D; d++) {
            const float xd = x[d], *row = qt + (size_t)d * H;
            for (int32_t h = 0; h < H; h++) {
                const float p = row[h] * xd; /* rounded apart from the add, as every level */
                dots[h] += p;
            }
        }
    }
}

static void add_rows_scalar(float *acc, const float *const *rows, int32_t n_rows, int64_t n)
{
    for (int32_t r = 0; r < n_rows; r++)
        for (int64_t i = 0; i < n; i++)
            acc[i] += rows[r][i];
}

static void cols16_scalar(const float *src, int32_t rows, int32_t cols, float *dst,
                          int64_t dst_stride)
{
    for (int32_t c = 0; c < cols; c++)
        for (int32_t r = 0; r < rows; r++)
            dst[c * dst_stride + r] = src[(size_t)r * cols + c];
}

void skv_kernels_init_scalar(skv_kernels *k)
{
    memset(k, 0, sizeof *k);
    k->score_f32 = (skv_score_kernel){pack_size_scalar, pack_scalar, score_scalar, SKV_F32};
    k->bf16_to_f32 = bf16_to_f32_scalar;
    k->fp8_to_f32 = fp8_to_f32_scalar;
    k->fp8_to_bf16 = fp8_to_bf16_scalar;
    k->mxfp4_to_f32 = mxfp4_to_f32_scalar;
    k->mxfp4_to_bf16 = mxfp4_to_bf16_scalar;
    k->filter = filter_scalar;
    k->key_range = key_range_scalar;
    k->in_range = in_range_scalar;
    k->keep = keep_scalar;
    k->head_dots = head_dots_scalar;
    k->add_rows = add_rows_scalar;
    k->cols16 = cols16_scalar;
}
