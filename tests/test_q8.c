/* ggml's Q8_0 and F16 for the indexer: the quantiser bit for bit against hand-worked blocks and
 * against ggml's rule (quantize_row_q8_0_ref, restated here independently with the compiler's
 * _Float16 for the scale's rounding) on random and tie-heavy blocks; dequantisation; the
 * F16 -> f32 and Q8_0 -> f32 kernels of every level against the scalar ones, bit for bit
 * (ragged n, NaN/Inf/subnormal f16, zero, saturating and NaN scales); bad arguments. */
#include "common.h"
#include "kernels/kernels.h"

static uint16_t blk_scale(const uint8_t *b) { return (uint16_t)(b[0] | b[1] << 8); }

/* ggml's rule on one finite block, as its reference computes it. */
static void ggml_rule(const float *x, uint8_t *out)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    const _Float16 h = (_Float16)d;
    memcpy(out, &h, 2);
    for (int j = 0; j < 32; j++)
        out[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

static void check_hand_blocks(void)
{
    float x[4 * 32];
    uint8_t q[4 * 34];
    /* block 0: amax 127, so d = 1 and id = 1 exactly: codes are roundf of the values, halves
       away from zero (rint would give 2, -2, 0, 126 for the first four) */
    static const float b0[8] = {2.5f, -2.5f, 0.5f, 126.5f, -127.0f, 1.49f, -0.5f, 3.5f};
    static const int8_t c0[8] = {3, -3, 1, 127, -127, 1, -1, 4};
    /* block 1: -16 .. 15: amax 16, d = 16 / 127 = 0.12598425 -> f16 0x3008 (0.125977: 8.06
       ulps of 2^-13 above 0.125, rounded to 8); id = 7.9375 (127 / 16): x = -16 -> -127,
       15 -> 119.06 -> 119, 1 -> 7.94 -> 8, 2 -> 15.875 -> 16, -3 -> -23.81 -> -24 */
    /* block 2: amax = 127 * (1 + 3 * 2^-11) = 127.186035: d = 1 + 3 * 2^-11 exactly, halfway
       between the f16 values 1 + 2^-10 (0x3c01) and 1 + 2^-9 (0x3c02): ties to even, 0x3c02
       (truncation would keep 0x3c01); the codes use the f32 d: amax -> 127, 50 -> 49.93 -> 50 */
    /* block 3: all zero (-0 too): scale 0, codes 0 */
    for (int j = 0; j < 32; j++) {
        x[j] = j < 8 ? b0[j] : (float)(j % 5) - 2.0f;
        x[32 + j] = (float)j - 16.0f;
        x[64 + j] = j == 0 ? 127.18603515625f : j == 1 ? 50.0f : j == 2 ? -127.18603515625f : 0.0f;
        x[96 + j] = j % 2 ? -0.0f : 0.0f;
    }
    CHECK_OK(skv_quantize_q8_0(x, 1, 128, 128, q));
    CHECK(blk_scale(q) == 0x3c00, "block 0 scale %#x", blk_scale(q));
    for (int j = 0; j < 8; j++)
        CHECK((int8_t)q[2 + j] == c0[j], "block 0 code %d: %d, want %d", j, (int8_t)q[2 + j], c0[j]);
    const uint8_t *b1 = q + 34;
    CHECK(blk_scale(b1) == 0x3008, "block 1 scale %#x, want 0x3008", blk_scale(b1));
    CHECK((int8_t)b1[2] == -127 && (int8_t)b1[2 + 31] == 119 && (int8_t)b1[2 + 17] == 8 &&
              (int8_t)b1[2 + 18] == 16 && (int8_t)b1[2 + 13] == -24,
          "block 1 codes %d %d %d %d %d", (int8_t)b1[2], (int8_t)b1[33], (int8_t)b1[19], (int8_t)b1[20],
          (int8_t)b1[15]);
    const uint8_t *b2 = q + 68;
    CHECK(blk_scale(b2) == 0x3c02, "block 2 scale %#x, want 0x3c02 (ties to even)", blk_scale(b2));
    CHECK((int8_t)b2[2] == 127 && (int8_t)b2[3] == 50 && (int8_t)b2[4] == -127 && b2[5] == 0,
          "block 2 codes %d %d %d %d", (int8_t)b2[2], (int8_t)b2[3], (int8_t)b2[4], (int8_t)b2[5]);
    const uint8_t *b3 = q + 102;
    int zero = blk_scale(b3) == 0;
    for (int j = 0; j < 32; j++)
        zero &= b3[2 + j] == 0;
    CHECK(zero, "zero block not all zero");
    /* dequantised: code * f16 scale, exact */
    float y[128];
    CHECK_OK(skv_dequantize_q8_0(q, 1, 128, y));
    CHECK(y[0] == 3.0f && y[1] == -3.0f && y[3] == 127.0f, "dequantised %g %g %g", y[0], y[1], y[3]);
    CHECK(y[32] == -127.0f * skv_f16_to_f32(0x3008) && y[64] == 127.0f * skv_f16_to_f32(0x3c02) &&
              y[96] == 0.0f, "dequantised values %g %g %g", y[32], y[64], y[96]);
    /* the pinned non-finite cases: NaN -> NaN scale and zero codes; +-inf -> +-127, out of
       amax (here 2: d = 2 / 127) */
    for (int j = 0; j < 32; j++)
        x[j] = j == 0 ? NAN : 1.0f, x[32 + j] = j == 0 ? INFINITY : j == 1 ? -INFINITY : j == 2 ? 2.0f : 0.0f;
    CHECK_OK(skv_quantize_q8_0(x, 2, 32, 32, q));
    CHECK(blk_scale(q) == 0x7e00 && q[2] == 0 && q[3] == 0, "NaN block: scale %#x", blk_scale(q));
    CHECK(blk_scale(q + 34) == skv_f32_to_f16(2.0f / 127) && (int8_t)q[36] == 127 &&
              (int8_t)q[37] == -127 && (int8_t)q[38] == 127,
          "inf block: scale %#x codes %d %d %d", blk_scale(q + 34), (int8_t)q[36], (int8_t)q[37], (int8_t)q[38]);
}

/* Random blocks (wide magnitudes, tie-heavy halves, f16-overflowing and subnormal scales)
 * against ggml's rule; strided rows. */
static void check_ggml_rule(void)
{
    rng r = {2021};
    long bad = 0, blocks = 0;
    float x[3 * 100];
    uint8_t got[3 * 3 * 34], want[34];
    for (int t = 0; t < 4000; t++) {
        const int kind = t % 4;
        const double mag = kind == 0 ? 1 : kind == 1 ? pow(2, rng_int(&r, -30, 30))
                                                     : kind == 2 ? 127 : pow(2, rng_int(&r, -140, 127));
        for (int i = 0; i < 300; i++) {
            float v = (float)(rng_uniform(&r, -1, 1) * mag);
            if (kind == 2) /* halves: id is 1 when the block's amax is 127 */
                v = (float)(rng_int(&r, -254, 254) * 0.5);
            x[i] = v;
        }
        if (kind == 2)
            for (int b = 0; b < 9; b++)
                x[(b / 3) * 100 + (b % 3) * 32] = 127.0f;
        CHECK_OK(skv_quantize_q8_0(x, 3, 96, 100, got));
        for (int b = 0; b < 9; b++) {
            const float *xb = x + (b / 3) * 100 + (b % 3) * 32;
            float amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(xb[j]));
            if (1.0f / (amax / 127) > 3.4e38f) /* ggml undefined: 1 / d overflows */
                continue;
            ggml_rule(xb, want);
            blocks++;
            if (memcmp(got + b * 34, want, 34) && bad++ < 3)
                CHECK(0, "block %d of trial %d (amax %g) differs from ggml's rule", b, t, amax);
        }
    }
    CHECK(bad == 0, "%ld of %ld blocks differ from ggml's rule", bad, blocks);
}

static void check_kernels(void)
{
    skv_kernels ref;
    skv_kernels_init(&ref, 0);
    rng r = {31};
    enum { N = 32 * 40 };
    uint16_t h[N + 64];
    uint8_t q[(N / 32) * 34];
    for (int i = 0; i < N + 64; i++) /* every class: zero, subnormal, normal, inf, NaN (s and q) */
        h[i] = i < 8 ? (uint16_t[]){0x0000, 0x8000, 0x0001, 0x83ff, 0x7c00, 0xfc00, 0x7c01, 0xfe00}[i]
                     : (uint16_t)rng_int(&r, 0, 65535);
    for (int b = 0; b < N / 32; b++) {
        /* scales: random, zero, NaN (signalling), inf, subnormal, the largest */
        const uint16_t s = b < 6 ? (uint16_t[]){0x0000, 0x7d00, 0x7c00, 0x0001, 0x7bff, 0xfc00}[b]
                                 : (uint16_t)rng_int(&r, 0, 0x7bff) | (uint16_t)(rng_int(&r, 0, 1) << 15);
        q[b * 34] = (uint8_t)s, q[b * 34 + 1] = (uint8_t)(s >> 8);
        for (int j = 0; j < 32; j++)
            q[b * 34 + 2 + j] = (uint8_t)(j < 3 ? (uint8_t[]){0x80, 0x7f, 0x81}[j] : rng_int(&r, 0, 255));
    }
    float *a = xmalloc((N + 64) * 4), *c = xmalloc((N + 64) * 4);
    /* the scalar ones against the definitions (NaN quiet, values exact) */
    ref.f16_to_f32(h, a, N);
    long bad = 0;
    for (int i = 0; i < N; i++) {
        const float want = skv_f16_to_f32(h[i]);
        bad += isnan(want) ? !isnan(a[i]) : !same_float(a[i], want);
    }
    ref.q8_0_to_f32(q, c, N);
    for (int i = 0; i < N; i++) {
        const float s = skv_f16_to_f32(blk_scale(q + (i / 32) * 34)), want = (float)((double)(int8_t)q[(i / 32) * 34 + 2 + i % 32] * s);
        bad += isnan(want) ? !isnan(c[i]) : !same_float(c[i], want);
    }
    CHECK(bad == 0, "scalar f16/q8_0 conversions: %ld values off", bad);
    for (int lv = 1; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_kernels kn;
        skv_kernels_init(&kn, all_levels[lv].mask);
        for (int n = 0; n <= 300; n += (n < 70 ? 1 : 37)) {
            const int off = (int)rng_int(&r, 0, 60);
            memset(a, 0x5a, (N + 64) * 4), memset(c, 0x5a, (N + 64) * 4);
            ref.f16_to_f32(h + off, a, n);
            kn.f16_to_f32(h + off, c, n);
            CHECK(memcmp(a, c, (size_t)(n + 16) * 4) == 0, "%s f16_to_f32 n=%d", all_levels[lv].name, n);
        }
        for (int nb = 0; nb <= N / 32; nb += 1 + nb / 8) {
            const int off = (int)rng_int(&r, 0, N / 32 - nb);
            memset(a, 0x5a, (N + 64) * 4), memset(c, 0x5a, (N + 64) * 4);
            ref.q8_0_to_f32(q + off * 34, a, (int64_t)nb * 32);
            kn.q8_0_to_f32(q + off * 34, c, (int64_t)nb * 32);
            CHECK(memcmp(a, c, (size_t)(nb * 32 + 16) * 4) == 0, "%s q8_0_to_f32 blocks=%d",
                  all_levels[lv].name, nb);
        }
    }
    free(a), free(c);
}

static void check_badargs(void)
{
    float x[64] = {0};
    uint8_t q[68];
    CHECK_STATUS(skv_quantize_q8_0(x, 1, 48, 48, q), SKV_ERR_INVALID_ARG); /* not a multiple */
    CHECK_STATUS(skv_quantize_q8_0(x, 1, 0, 0, q), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_quantize_q8_0(x, 1, 64, 32, q), SKV_ERR_INVALID_ARG); /* stride */
    CHECK_STATUS(skv_quantize_q8_0(x, -1, 32, 32, q), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_quantize_q8_0(NULL, 1, 32, 32, q), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_quantize_q8_0(x, 1, 32, 32, NULL), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_quantize_q8_0(NULL, 0, 32, 32, NULL));
    CHECK_STATUS(skv_dequantize_q8_0(q, 1, 33, x), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_dequantize_q8_0(NULL, 1, 32, x), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_dequantize_q8_0(q, 1, 32, NULL), SKV_ERR_INVALID_ARG);
    CHECK(skv_dtype_size(SKV_Q8_0) == 0, "Q8_0 has no element size");
    CHECK_STATUS(skv_convert(SKV_F32, x, SKV_Q8_0, q, 32), SKV_ERR_INVALID_ARG);

    /* the indexer: Q8_0 is a key dtype with head_dim a multiple of 32 and no scale arrays */
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    float w[2] = {1, 1}, qf[2 * 32] = {0};
    int32_t idx[4];
    skv_quantize_q8_0(x, 2, 32, 32, q);
    const skv_indexer_query qq = {1, 2, 32, SKV_F32, qf, NULL, w, NULL};
    skv_key_block kb = {2, 32, SKV_Q8_0, q, NULL};
    CHECK_OK(skv_indexer_topk(ctx, &qq, &kb, 2, idx, NULL));
    skv_key_block bad = kb;
    bad.k_scale = w;
    CHECK_STATUS(skv_indexer_topk(ctx, &qq, &bad, 2, idx, NULL), SKV_ERR_INVALID_ARG);
    bad = kb, bad.head_dim = 16;
    const skv_indexer_query q16 = {1, 2, 16, SKV_F32, qf, NULL, w, NULL};
    CHECK_STATUS(skv_indexer_topk(ctx, &q16, &bad, 2, idx, NULL), SKV_ERR_INVALID_ARG);
    const skv_indexer_query qq8 = {1, 2, 32, SKV_Q8_0, q, NULL, w, NULL};
    CHECK_STATUS(skv_indexer_topk(ctx, &qq8, &kb, 2, idx, NULL), SKV_ERR_UNSUPPORTED);
    /* the key cache: Q8_0 needs head_dim % 32 == 0 */
    skv_kcache_params p;
    skv_kcache_params_init(&p);
    p.dtype = SKV_Q8_0, p.head_dim = 48;
    skv_kcache *c = (skv_kcache *)1;
    CHECK_STATUS(skv_kcache_create(ctx, &p, &c), SKV_ERR_INVALID_ARG);
    CHECK(c == NULL, "out not cleared");
    p.dtype = SKV_F16, p.head_dim = 48;
    CHECK_OK(skv_kcache_create(ctx, &p, &c));
    skv_kcache_destroy(c);
    skv_context_destroy(ctx);
}

/* F16 and Q8_0 keys (F32, F16 and BF16 queries) through every entry point at every level: the
 * indexer, the key cache (narrowed or quantised on append, or appended as they are) and
 * MISA/HISA on contiguous keys and on the cache. Both key types widen exactly to f32 and the
 * f32 kernels score them, so each result must equal, bit for bit, that of the same call on
 * f32 keys holding the dequantised values (test_indexer checks those against the double
 * formula). */
#include "sparsekv/engine.h"
#include "sparsekv/router.h"

static void check_paths(void)
{
    rng r = {77};
    const int32_t H = 16, D = 64, L = 2500, C = 16, K = 128;
    static const skv_dtype kts[] = {SKV_F16, SKV_Q8_0}, qts[] = {SKV_F32, SKV_F16, SKV_BF16};
    for (int lv = 0; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_context *ctx = ctx_new(all_levels[lv].mask, 2);
        for (int ki = 0; ki < 2; ki++)
            for (int qi = 0; qi < 3; qi++)
                for (int T = 1; T <= 5; T += 4) {
                    char label[96];
                    snprintf(label, sizeof label, "%s kt=%d qt=%d T=%d", all_levels[lv].name, kts[ki], qts[qi], T);
                    idx_data d;
                    idx_data_make(&d, &r, T, H, D, L, qts[qi], kts[ki], FILL_RANDOM, 1);
                    float *kf = xmalloc((size_t)L * D * 4); /* the dequantised keys */
                    for (int64_t i = 0; i < (int64_t)L * D; i++)
                        kf[i] = (float)elem(d.kt, d.kd, NULL, i, D);
                    const skv_indexer_query q = idx_query(&d);
                    const skv_key_block kb = idx_keys(&d), k32 = {L, D, SKV_F32, kf, NULL};
                    float *s0 = xmalloc((size_t)T * L * 4), *s1 = xmalloc((size_t)T * L * 4);
                    int32_t *i0 = xmalloc((size_t)T * K * 4), *i1 = xmalloc((size_t)T * K * 4);
                    float *v0 = xmalloc((size_t)T * K * 4), *v1 = xmalloc((size_t)T * K * 4);
#define SAME(what)                                                                            \
    CHECK(memcmp(i0, i1, (size_t)T * K * 4) == 0 && memcmp(v0, v1, (size_t)T * K * 4) == 0,  \
          "%s: %s differs from f32 keys", label, what)
                    CHECK_OK(skv_indexer_scores(ctx, &q, &k32, s0));
                    CHECK_OK(skv_indexer_scores(ctx, &q, &kb, s1));
                    CHECK(memcmp(s0, s1, (size_t)T * L * 4) == 0, "%s: scores differ", label);
                    CHECK_OK(skv_indexer_topk(ctx, &q, &k32, K, i0, v0));
                    CHECK_OK(skv_indexer_topk(ctx, &q, &kb, K, i1, v1));
                    SAME("top-k");
                    /* MISA and HISA on contiguous keys with their pooled sums */
                    float *ps0 = xmalloc((size_t)(L / C + 1) * D * 4), *ps1 = xmalloc((size_t)(L / C + 1) * D * 4);
                    CHECK_OK(skv_pool_keys(&k32, C, ps0));
                    CHECK_OK(skv_pool_keys(&kb, C, ps1));
                    CHECK(memcmp(ps0, ps1, (size_t)((L + C - 1) / C) * D * 4) == 0, "%s: pooled sums", label);
                    const skv_pooled_keys p0 = {C, ps0}, p1 = {C, ps1};
                    skv_misa_params mp;
                    skv_misa_params_init(&mp);
                    mp.heads = 4, mp.block = 64, mp.min_length = 0;
                    CHECK_OK(skv_misa_topk(ctx, &q, &k32, &p0, &mp, K, i0, v0));
                    CHECK_OK(skv_misa_topk(ctx, &q, &kb, &p1, &mp, K, i1, v1));
                    SAME("MISA");
                    skv_hisa_params hp;
                    skv_hisa_params_init(&hp);
                    hp.block = 64, hp.blocks = 8, hp.min_length = 0;
                    CHECK_OK(skv_hisa_topk(ctx, &q, &k32, &p0, &hp, K, i0, v0));
                    CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &p1, &hp, K, i1, v1));
                    SAME("HISA");
                    /* the key cache: f32 appended (narrowed / quantised there) and native rows */
                    skv_kcache_params cp;
                    skv_kcache_params_init(&cp);
                    cp.dtype = kts[ki], cp.head_dim = D, cp.page_tokens = 64, cp.pool_chunk = C;
                    skv_kcache *c = NULL;
                    CHECK_OK(skv_kcache_create(ctx, &cp, &c));
                    int32_t sa, sb;
                    CHECK_OK(skv_kcache_seq_create(c, &sa));
                    CHECK_OK(skv_kcache_seq_create(c, &sb));
                    const skv_key_block k_in = {L, D, SKV_F32, d.k32, NULL};
                    CHECK_OK(skv_kcache_append(c, sa, 0, &k_in));
                    CHECK_OK(skv_kcache_append(c, sb, 0, &(skv_key_block){700, D, kts[ki], kb.k, NULL}));
                    CHECK_OK(skv_kcache_append(c, sb, 0, &(skv_key_block){L - 700, D, kts[ki],
                        (const uint8_t *)kb.k + (size_t)700 * (kts[ki] == SKV_F16 ? D * 2 : D / 32 * 34), NULL}));
                    const size_t rb = kts[ki] == SKV_F16 ? (size_t)D * 2 : (size_t)D / 32 * 34;
                    uint8_t *back = xmalloc((size_t)L * rb);
                    CHECK_OK(skv_kcache_read(c, sa, 0, 0, L, back, NULL));
                    CHECK(memcmp(back, kb.k, (size_t)L * rb) == 0, "%s: cache rows differ from narrowing", label);
                    for (int si = 0; si < 2; si++) {
                        const int32_t sq = si ? sb : sa;
                        CHECK_OK(skv_kcache_scores(c, sq, 0, &q, s1));
                        CHECK(memcmp(s0, s1, (size_t)T * L * 4) == 0, "%s: cache scores differ", label);
                        CHECK_OK(skv_indexer_topk(ctx, &q, &k32, K, i0, v0));
                        CHECK_OK(skv_kcache_topk(c, sq, 0, &q, K, i1, v1));
                        SAME("cache top-k");
                        CHECK_OK(skv_misa_topk(ctx, &q, &k32, &p0, &mp, K, i0, v0));
                        CHECK_OK(skv_kcache_misa_topk(c, sq, 0, &q, &mp, K, i1, v1));
                        SAME("cache MISA");
                        CHECK_OK(skv_hisa_topk(ctx, &q, &k32, &p0, &hp, K, i0, v0));
                        CHECK_OK(skv_kcache_hisa_topk(c, sq, 0, &q, &hp, K, i1, v1));
                        SAME("cache HISA");
                    }
                    skv_kcache_destroy(c);
                    /* a host's page pool (engine.h), blocks in reverse order */
                    const int32_t P = 64, nbk = (L + P - 1) / P;
                    uint8_t *pool = xmalloc((size_t)nbk * P * rb);
                    int32_t *table = xmalloc((size_t)nbk * 4);
                    for (int32_t b = 0; b < nbk; b++) {
                        table[b] = nbk - 1 - b;
                        const int32_t n = L - b * P < P ? L - b * P : P;
                        memcpy(pool + (size_t)table[b] * P * rb, (const uint8_t *)kb.k + (size_t)b * P * rb, (size_t)n * rb);
                    }
                    const skv_paged_keys pk = {D, kts[ki], P, pool, nbk, (size_t)P * rb, 0};
                    const int32_t lens[1] = {L}, qst[2] = {0, T};
                    const skv_paged_batch pb = {1, table, nbk, lens, qst};
                    CHECK_OK(skv_indexer_topk(ctx, &q, &k32, K, i0, v0));
                    CHECK_OK(skv_paged_topk(ctx, &pk, &pb, &q, K, i1, v1));
                    SAME("host pages");
                    free(pool), free(table);
                    free(back), free(ps0), free(ps1), free(kf), free(s0), free(s1);
                    free(i0), free(i1), free(v0), free(v1);
                    idx_data_free(&d);
                }
        skv_context_destroy(ctx);
    }
}

/* The int8 path: every level's kernel against the scalar reference bit for bit (ragged heads
 * and key counts, every query dtype, zero / NaN / infinite / subnormal key scales, codes -128
 * included); then through the API at every level: scores and selection equal to the scalar
 * level's, which are the reference kernel's, and close to the exact path's. */
#include "kernels/q8i8.h"

static void check_int8(void)
{
    skv_kernels ref;
    skv_kernels_init(&ref, 0);
    rng r = {88};
    long bad = 0, trials = 0;
    for (int t = 0; t < 300; t++) {
        const int32_t H = (int32_t)(t < 40 ? (int32_t[]){1, 15, 16, 17, 64, 65, 33, 128}[t % 8] : rng_int(&r, 1, 140));
        const int32_t D = 32 * (int32_t)rng_int(&r, 1, 6), n = (int32_t)rng_int(&r, 1, 37);
        const skv_dtype qt = (skv_dtype[]){SKV_F32, SKV_BF16, SKV_F16, SKV_FP8_E4M3}[t % 4];
        float *q32 = xmalloc((size_t)H * D * 4), *w = xmalloc((size_t)H * 4), *qs = xmalloc((size_t)H * 4);
        for (int64_t i = 0; i < (int64_t)H * D; i++)
            q32[i] = (float)rng_uniform(&r, -2, 2);
        if (t % 7 == 6)
            q32[rng_int(&r, 0, (int64_t)H * D - 1)] = t % 2 ? NAN : INFINITY;
        for (int32_t h = 0; h < H; h++)
            w[h] = (float)rng_uniform(&r, -1, 1), qs[h] = (float)rng_uniform(&r, 0.01, 2);
        void *q = xmalloc((size_t)H * D * 4);
        if (qt == SKV_FP8_E4M3)
            skv_quantize_fp8(q32, H, D, D, 0, q, qs);
        else
            skv_convert(qt, q, SKV_F32, q32, (int64_t)H * D);
        const size_t rb = (size_t)D / 32 * 34;
        uint8_t *k = xmalloc((size_t)n * rb);
        for (size_t i = 0; i < (size_t)n * rb; i++)
            k[i] = (uint8_t)rng_int(&r, 0, 255);
        for (int32_t j = 0; j < n; j++)
            for (int32_t b = 0; b < D / 32; b++) { /* mostly ordinary scales, some special */
                const int64_t u = rng_int(&r, 0, 40);
                const uint16_t sc = u == 0 ? 0x7c00 : u == 1 ? 0x7e00 : u == 2 ? 0 : u == 3 ? 0x0003
                                    : (uint16_t)(0x2000 + rng_int(&r, 0, 0x1fff));
                k[j * rb + b * 34] = (uint8_t)sc, k[j * rb + b * 34 + 1] = (uint8_t)(sc >> 8);
            }
        const skv_qpack_args a = {q, qt, qt == SKV_FP8_E4M3 ? qs : NULL, w, H, D, 0};
        void *pack = aligned_alloc(64, ref.score_q8i8.pack_size(H, D));
        ref.score_q8i8.pack(pack, &a);
        float *want = xmalloc((size_t)n * 4), *got = xmalloc((size_t)n * 4);
        ref.score_q8i8.score(pack, k, (size_t)D, NULL, n, want);
        for (int lv = 1; lv < N_LEVELS; lv++) {
            if (!level_available(&all_levels[lv]))
                continue;
            skv_kernels kn;
            skv_kernels_init(&kn, all_levels[lv].mask);
            if (kn.score_q8i8.score == ref.score_q8i8.score)
                continue; /* this CPU has no VNNI at that level */
            kn.score_q8i8.score(pack, k, (size_t)D, NULL, n, got);
            for (int32_t j = 0; j < n; j++)
                if (!(isnan(want[j]) ? isnan(got[j]) : same_float(got[j], want[j])) && bad++ < 4)
                    CHECK(0, "%s int8 H=%d D=%d n=%d key %d: %.9g, scalar %.9g", all_levels[lv].name,
                          H, D, n, j, got[j], want[j]);
            trials++;
        }
        free(pack), free(want), free(got), free(q32), free(w), free(qs), free(q), free(k);
    }
    CHECK(bad == 0, "int8 kernels: %ld scores differ from the scalar reference", bad);
    printf("int8 kernel trials against the scalar reference: %ld\n", trials);

    /* the API: contiguous keys, the key cache, MISA, at every level against the scalar level */
    const int32_t T = 3, H = 64, D = 128, L = 3000, K = 128;
    idx_data d;
    idx_data_make(&d, &r, T, H, D, L, SKV_F32, SKV_Q8_0, FILL_RANDOM, 1);
    const skv_indexer_query q = idx_query(&d);
    const skv_key_block kb = idx_keys(&d);
    int32_t *i0 = xmalloc((size_t)T * K * 4), *i1 = xmalloc((size_t)T * K * 4), *ie = xmalloc((size_t)T * K * 4);
    float *v0 = xmalloc((size_t)T * K * 4), *v1 = xmalloc((size_t)T * K * 4);
    float *s0 = xmalloc((size_t)T * L * 4), *s1 = xmalloc((size_t)T * L * 4);
    skv_context *sc = ctx_new(0, 2);
    CHECK_STATUS(skv_context_set_int8_queries(NULL, 1), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_context_set_int8_queries(sc, 2), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_indexer_topk(sc, &q, &kb, K, ie, NULL)); /* exact, for the overlap */
    CHECK_OK(skv_context_set_int8_queries(sc, 1));
    CHECK_OK(skv_indexer_scores(sc, &q, &kb, s0));
    CHECK_OK(skv_indexer_topk(sc, &q, &kb, K, i0, v0));
    /* the scalar level's scores are the reference kernel's */
    {
        skv_kernels kr;
        skv_kernels_init(&kr, 0);
        void *pack = aligned_alloc(64, kr.score_q8i8.pack_size(H, D));
        float *row = xmalloc((size_t)L * 4);
        long off = 0;
        for (int32_t t = 0; t < T; t++) {
            const skv_qpack_args a = {d.q32 + (size_t)t * H * D, SKV_F32, NULL, d.w + (size_t)t * H, H, D, 0};
            kr.score_q8i8.pack(pack, &a);
            kr.score_q8i8.score(pack, d.kd, (size_t)D, NULL, L, row);
            for (int64_t s = 0; s <= d.pos[t] && s < L; s++)
                off += !same_float(row[s], s0[(size_t)t * L + s]);
        }
        CHECK(off == 0, "int8 scores of the API: %ld differ from the reference kernel's", off);
        free(pack), free(row);
    }
    long common = 0;
    for (int32_t t = 0; t < T; t++)
        for (int32_t a = 0; a < K; a++)
            for (int32_t b = 0; b < K; b++)
                common += i0[t * K + a] == ie[t * K + b];
    CHECK(common >= (long)(0.9 * T * K), "int8 top-k overlap with the exact path %ld of %d", common, T * K);
    printf("int8 top-%d overlap with the exact path on random data: %.4f\n", K, (double)common / (T * K));
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.heads = 8, mp.block = 64, mp.route = SKV_ROUTE_QNORM, mp.min_length = 0;
    int32_t *m0 = xmalloc((size_t)T * K * 4), *m1 = xmalloc((size_t)T * K * 4);
    CHECK_OK(skv_misa_topk(sc, &q, &kb, NULL, &mp, K, m0, NULL));
    for (int lv = 1; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_context *c = ctx_new(all_levels[lv].mask, 2);
        CHECK_OK(skv_context_set_int8_queries(c, 1));
        CHECK_OK(skv_indexer_scores(c, &q, &kb, s1));
        CHECK(memcmp(s0, s1, (size_t)T * L * 4) == 0, "%s: int8 scores differ from the scalar level", all_levels[lv].name);
        CHECK_OK(skv_indexer_topk(c, &q, &kb, K, i1, v1));
        CHECK(memcmp(i0, i1, (size_t)T * K * 4) == 0 && memcmp(v0, v1, (size_t)T * K * 4) == 0,
              "%s: int8 selection differs from the scalar level", all_levels[lv].name);
        skv_kcache_params cp;
        skv_kcache_params_init(&cp);
        cp.dtype = SKV_Q8_0, cp.head_dim = D;
        skv_kcache *kc = NULL;
        int32_t seq;
        CHECK_OK(skv_kcache_create(c, &cp, &kc));
        CHECK_OK(skv_kcache_seq_create(kc, &seq));
        CHECK_OK(skv_kcache_append(kc, seq, 0, &kb));
        CHECK_OK(skv_kcache_topk(kc, seq, 0, &q, K, i1, v1));
        CHECK(memcmp(i0, i1, (size_t)T * K * 4) == 0 && memcmp(v0, v1, (size_t)T * K * 4) == 0,
              "%s: int8 key-cache selection differs", all_levels[lv].name);
        skv_kcache_destroy(kc);
        CHECK_OK(skv_misa_topk(c, &q, &kb, NULL, &mp, K, m1, NULL));
        CHECK(memcmp(m0, m1, (size_t)T * K * 4) == 0, "%s: int8 MISA differs", all_levels[lv].name);
        skv_context_destroy(c);
    }
    skv_context_destroy(sc);
    free(i0), free(i1), free(ie), free(v0), free(v1), free(s0), free(s1), free(m0), free(m1);
    idx_data_free(&d);
}

int main(void)
{
    check_int8();
    check_paths();
    check_hand_blocks();
    check_ggml_rule();
    check_kernels();
    check_badargs();
    return test_summary("test_q8");
}
