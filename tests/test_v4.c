/* DeepSeek-V4's indexer and the engines' conventions: the fp8 quantiser's options, NULL q
 * scales, forced sinks and window in every top-k path, MXFP4 keys (quantiser against
 * hand-worked values, scores at every level against the double formula on dequantised values,
 * top-k, key cache, MISA/HISA, IndexCache). */
#include "common.h"
#include "kernels/kernels.h"

static int quick;

/* ---- hand-worked quantiser values ---------------------------------------------------------- */

static void test_fp8_quant_options(void)
{
    /* an amax where the f32 reciprocal's product and the rounded quotient differ by an ulp */
    float amax = 0;
    for (int i = 1; i < 100000 && !amax; i++) {
        const float a = 1.0f + (float)i * 0.0013f;
        if (a * (1.0f / 448.0f) != a / 448.0f)
            amax = a;
    }
    CHECK(amax != 0, "no amax with differing scales found");
    float row[200];
    for (int i = 0; i < 200; i++)
        row[i] = i < 128 ? (i == 5 ? -amax : 0.01f * (float)i / 128.0f) : (i == 150 ? 1000.0f : 1.0f);
    uint8_t q[200];
    float sc[2];
    CHECK_OK(skv_quantize_fp8_blocks(row, 1, 200, 200, 128, 0, q, sc));
    CHECK(sc[0] == amax * (1.0f / 448.0f), "block 0 scale %.9g", sc[0]);
    CHECK(sc[1] == 1000.0f * (1.0f / 448.0f), "block 1 scale %.9g", sc[1]);
    CHECK(q[5] == 0xfe && q[150] == 0x7e, "amax codes %#x %#x (want -448, 448)", q[5], q[150]);
    CHECK_OK(skv_quantize_fp8_blocks(row, 1, 200, 200, 128, SKV_QUANT_DIV_SCALE, q, sc));
    CHECK(sc[0] == amax / 448.0f && sc[0] != amax * (1.0f / 448.0f), "divided scale %.9g", sc[0]);
    CHECK_OK(skv_quantize_fp8_blocks(row, 1, 200, 200, 128, SKV_QUANT_POW2_SCALE, q, sc));
    CHECK(sc[1] == 4.0f, "pow2 scale of 1000 / 448 = 2.23: %g, want 4", sc[1]);
    CHECK(q[150] == skv_f32_to_fp8(250.0f) && q[149] == skv_f32_to_fp8(0.25f), "pow2 codes");
    /* one block per row is skv_quantize_fp8 */
    float sc1;
    uint8_t q1[200];
    CHECK_OK(skv_quantize_fp8(row, 1, 200, 200, 0, q1, &sc1));
    CHECK_OK(skv_quantize_fp8_blocks(row, 1, 200, 200, 1000, 0, q, sc));
    CHECK(sc1 == sc[0] && memcmp(q, q1, 200) == 0, "block >= n_cols differs from per-row");
    CHECK_STATUS(skv_quantize_fp8_blocks(row, 1, 200, 200, 0, 0, q, sc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_quantize_fp8_blocks(row, 1, 200, 200, 128, 4, q, sc), SKV_ERR_INVALID_ARG);
}

/* The nearest E2M1 magnitude by distance, ties to the even code: independent of the library's
 * thresholds. */
static uint8_t e2m1_nearest(double x)
{
    static const double mag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    const double a = fabs(x);
    int best = 0;
    for (int c = 1; c < 8; c++) {
        const double d = fabs(a - mag[c]), db = fabs(a - mag[best]);
        if (d < db || (d == db && c % 2 == 0))
            best = c;
    }
    return (uint8_t)((signbit(x) ? 8 : 0) | best);
}

static double e2m1_value(uint8_t c)
{
    static const double mag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    return (c & 8 ? -1 : 1) * mag[c & 7];
}

static void test_mxfp4_quantiser(void)
{
    for (int c = 0; c < 16; c++)
        CHECK(skv_e2m1_to_f32((uint8_t)c) == (float)e2m1_value((uint8_t)c), "code %d", c);
    /* ties: to the even code */
    const float at[] = {0.25f, 0.26f, 0.75f, 1.25f, 1.3f, 1.75f, 2.5f, 2.6f, 3.5f, 5.0f, 5.1f, 100.0f,
                        -0.75f, -0.0f, INFINITY, -INFINITY};
    const uint8_t want[] = {0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7, 7, 10, 8, 7, 15};
    for (int i = 0; i < (int)(sizeof at / sizeof at[0]); i++)
        CHECK(skv_f32_to_e2m1(at[i]) == want[i], "e2m1(%g) = %d, want %d", at[i],
              skv_f32_to_e2m1(at[i]), want[i]);

    /* scale bytes: amax 6 -> 2^0; just above -> 2^1; 3 -> 2^-1; 0 -> the smallest;
       amax 1.5 * 6 * 2^-127 -> 2^-126; NaN -> 255; infinities saturate and stay out of amax */
    float x[7][32];
    const float amax[7] = {6.0f, 6.0001f, 3.0f, 0.0f, 9.0f * 0x1p-127f, 1.0f, 7.75f};
    const uint8_t want_sb[7] = {127, 128, 126, 0, 1, 255, 128};
    for (int b = 0; b < 7; b++)
        for (int i = 0; i < 32; i++)
            x[b][i] = b == 6 ? 0.25f * (float)i : amax[b] * (float)((i * 7) % 32) / 31.0f * (i % 2 ? -1 : 1);
    x[5][3] = NAN;
    x[2][9] = INFINITY; /* block 2: the finite amax is 3 */
    x[2][0] = 3.0f;
    uint8_t out[7][16], sb[7];
    CHECK_OK(skv_quantize_mxfp4(&x[0][0], 7, 32, 32, &out[0][0], sb));
    for (int b = 0; b < 7; b++) {
        CHECK(sb[b] == want_sb[b], "block %d: scale byte %d, want %d", b, sb[b], want_sb[b]);
        if (b == 5) {
            for (int i = 0; i < 16; i++)
                CHECK(out[b][i] == 0, "NaN block codes");
            continue;
        }
        const double s = ldexp(1.0, (int)sb[b] - 127);
        for (int i = 0; i < 32; i++) {
            const uint8_t code = i % 2 ? out[b][i / 2] >> 4 : out[b][i / 2] & 15;
            const double v = x[b][i];
            const uint8_t w = isinf(v) ? (v > 0 ? 7 : 15) : e2m1_nearest(v / s);
            CHECK(code == w, "block %d value %d (%g): code %d, want %d", b, i, v, code, w);
        }
    }
    /* hand-worked: 0.25 i with amax 7.75 -> scale 2, so 0.125 i rounds: i = 2 (0.25) to 0, 3
       (0.375) to 0.5, 6 (0.75) to 1, 10 (1.25) to 1, 20 (2.5) to 2, 31 (3.875) to 4 */
    CHECK((out[6][1] & 15) == 0 && (out[6][1] >> 4) == 1 && (out[6][3] & 15) == 2 &&
              (out[6][5] & 15) == 2 && (out[6][10] & 15) == 4 && (out[6][15] >> 4) == 6,
          "hand-worked codes");
    /* dequantise: the exact values, and NaN for byte 255 */
    float dq[7][32];
    CHECK_OK(skv_dequantize_mxfp4(&out[0][0], sb, 7, 32, &dq[0][0]));
    CHECK(dq[6][31] == 8.0f && dq[6][3] == 1.0f && isnan(dq[5][0]), "dequantised %g %g %g",
          dq[6][31], dq[6][3], dq[5][0]);
    CHECK(dq[4][0] == 0.0f || fabsf(dq[4][0]) >= 0x1p-127f, "subnormal scale values");
    CHECK_STATUS(skv_quantize_mxfp4(&x[0][0], 1, 48, 48, &out[0][0], sb), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_quantize_mxfp4(&x[0][0], 1, 32, 16, &out[0][0], sb), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_quantize_mxfp4(&x[0][0], 1, 32, 32, NULL, sb), SKV_ERR_INVALID_ARG);
}

/* Every level's MXFP4 conversions against the values in double: all 256 code pairs, every
 * scale byte (subnormal, large, overflowing and NaN ones included), ragged block counts. */
static void test_mx_convert(void)
{
    const int64_t n = 256 + 7;
    uint8_t *packed = xmalloc((size_t)n * 16), *sc = xmalloc((size_t)n);
    for (int64_t b = 0; b < n; b++) {
        sc[b] = (uint8_t)(b % 256);
        for (int i = 0; i < 16; i++)
            packed[b * 16 + i] = (uint8_t)((b * 16 + i) * 37 % 256);
    }
    float *f = xmalloc((size_t)(n + 1) * 32 * 4);
    uint16_t *h = xmalloc((size_t)(n + 1) * 32 * 2);
    for (int li = 0; li < N_LEVELS; li++) {
        const level *lv = &all_levels[li];
        if (!level_available(lv))
            continue;
        skv_kernels kern, below;
        skv_kernels_init(&kern, lv->mask);
        /* each x86 level above AVX2 has conversions of its own: this checks them, not AVX2's */
        skv_kernels_init(&below, SKV_CPU_AVX2);
        if (lv->mask & SKV_CPU_AVX512)
            CHECK(kern.mxfp4_to_f32 != below.mxfp4_to_f32 && kern.mxfp4_to_bf16 != below.mxfp4_to_bf16,
                  "%s: the MXFP4 conversions are AVX2's", lv->name);
        for (int64_t m = 0; m <= n; m += (m < 3 ? 1 : 37)) {
            memset(f, 0x5a, (size_t)(n + 1) * 32 * 4);
            memset(h, 0x5a, (size_t)(n + 1) * 32 * 2);
            kern.mxfp4_to_f32(packed, sc, m, f);
            kern.mxfp4_to_bf16(packed, sc, m, h);
            long bad = 0;
            for (int64_t i = 0; i < m * 32; i++) {
                const uint8_t byte = packed[i / 2], b = sc[i / 32];
                const double v = e2m1_value(i % 2 ? byte >> 4 : byte & 15) * ldexp(1.0, (int)b - 127);
                const float want = b == 255 ? NAN : (float)v; /* past the f32 range: inf */
                const float hb = skv_bf16_to_f32(h[i]);
                bad += !same_float(f[i], want) || signbit(f[i]) != signbit(want);
                bad += !same_float(hb, want) || signbit(hb) != signbit(want);
            }
            uint32_t past;
            memcpy(&past, f + m * 32, 4);
            bad += past != 0x5a5a5a5au || h[m * 32] != 0x5a5a; /* nothing past the m blocks */
            CHECK(bad == 0, "%s: %lld blocks: %ld values off", lv->name, (long long)m, bad);
        }
    }
    free(packed), free(sc), free(f), free(h);
}

/* ---- MXFP4 keys against the double formula -------------------------------------------------- */

typedef struct mxkeys {
    int64_t L;
    int32_t D;
    uint8_t *codes, *scales;
    float *f32; /* the dequantised values (f32, exact) */
} mxkeys;

/* Random codes; scale bytes around 127 with, when `special`, NaN (255), zero codes, subnormal
 * values (bytes 0 and 1) and large ones. */
static void mxkeys_make(mxkeys *m, rng *r, int64_t L, int32_t D, int special)
{
    m->L = L;
    m->D = D;
    m->codes = xmalloc((size_t)L * D / 2 + 1);
    m->scales = xmalloc((size_t)L * D / 32 + 1);
    m->f32 = xmalloc(((size_t)L * D + 1) * 4);
    for (size_t i = 0; i < (size_t)L * D / 2; i++)
        m->codes[i] = (uint8_t)rng_int(r, 0, 255);
    for (size_t i = 0; i < (size_t)L * D / 32; i++)
        m->scales[i] = (uint8_t)rng_int(r, 122, 132);
    if (special && L > 3) {
        m->scales[(size_t)rng_int(r, 0, L - 1) * D / 32] = 255; /* a NaN block */
        memset(m->codes + (size_t)(L / 2) * D / 2, 0, (size_t)D / 2); /* zero codes */
        const int64_t sub = L / 3;
        m->scales[(size_t)sub * D / 32] = 0; /* 2^-127: subnormal values */
        m->scales[(size_t)sub * D / 32 + (D > 32)] = 1;
        m->scales[(size_t)(L - 1) * D / 32] = 180; /* large, still finite */
    }
    /* the values in double from the codes and bytes (exact in f32 for bytes below 254) */
    for (size_t i = 0; i < (size_t)L * D; i++) {
        const uint8_t byte = m->codes[i / 2], b = m->scales[i / 32];
        const double v = e2m1_value(i % 2 ? byte >> 4 : byte & 15);
        m->f32[i] = b == 255 ? NAN : (float)(v * ldexp(1.0, (int)b - 127));
    }
    float *lib = xmalloc(((size_t)L * D + 1) * 4);
    CHECK_OK(skv_dequantize_mxfp4(m->codes, m->scales, L, D, lib));
    long bad = 0;
    for (size_t i = 0; i < (size_t)L * D; i++)
        bad += !same_float(lib[i], m->f32[i]) || signbit(lib[i]) != signbit(m->f32[i]);
    CHECK(bad == 0 || L == 0, "skv_dequantize_mxfp4: %ld values differ", bad);
    free(lib);
}

static void mxkeys_free(mxkeys *m)
{
    free(m->codes), free(m->scales), free(m->f32);
}

static skv_key_block mx_block(const mxkeys *m)
{
    return (skv_key_block){m->L, m->D, SKV_MXFP4_E2M1, m->codes, NULL, m->scales};
}

typedef struct qbuf {
    skv_indexer_query q;
    void *qd;
    float *qs, *w, *q32;
    int32_t *pos;
} qbuf;

static void qbuf_make(qbuf *o, rng *r, int32_t T, int32_t H, int32_t D, skv_dtype qt, int64_t L,
                      int null_scale)
{
    const size_t n = (size_t)T * H * D;
    o->q32 = xmalloc(n * 4 + 4);
    o->w = xmalloc((size_t)T * H * 4 + 4);
    o->pos = xmalloc((size_t)T * 4 + 4);
    o->qs = NULL;
    for (size_t i = 0; i < n; i++)
        o->q32[i] = (float)rng_uniform(r, -1, 1);
    for (size_t i = 0; i < (size_t)T * H; i++)
        o->w[i] = (float)rng_uniform(r, -0.5, 1);
    for (int32_t t = 0; t < T; t++)
        o->pos[t] = (int32_t)rng_int(r, -1, L + 1);
    if (qt == SKV_F32) {
        o->qd = xmalloc(n * 4 + 4);
        memcpy(o->qd, o->q32, n * 4);
    } else if (qt == SKV_BF16) {
        o->qd = xmalloc(n * 2 + 2);
        skv_convert(SKV_BF16, o->qd, SKV_F32, o->q32, (int64_t)n);
    } else {
        o->qd = xmalloc(n + 1);
        if (null_scale) {
            skv_convert(SKV_FP8_E4M3, o->qd, SKV_F32, o->q32, (int64_t)n);
        } else {
            o->qs = xmalloc((size_t)T * H * 4 + 4);
            skv_quantize_fp8(o->q32, (int64_t)T * H, D, D, 0, o->qd, o->qs);
        }
    }
    o->q = (skv_indexer_query){T, H, D, qt, o->qd, o->qs, o->w, o->pos};
}

static void qbuf_free(qbuf *o)
{
    free(o->q32), free(o->w), free(o->pos), free(o->qd), free(o->qs);
}

/* The query value the library sees, in double. */
static double q_value(const qbuf *o, size_t i, int32_t D)
{
    switch (o->q.dtype) {
    case SKV_F32: return ((const float *)o->qd)[i];
    case SKV_BF16: return skv_bf16_to_f32(((const uint16_t *)o->qd)[i]);
    default: return (double)skv_fp8_to_f32(((const uint8_t *)o->qd)[i]) * (o->qs ? o->qs[i / D] : 1.0);
    }
}

/* Scores of every level against the formula in double on the dequantised keys (bf16 dot
 * products count subnormal keys as zero, as documented). */
static void check_mx_scores(const level *lv, skv_context *ctx, const qbuf *o, const mxkeys *m,
                            const char *what)
{
    const int32_t T = o->q.n_tokens, H = o->q.n_heads, D = m->D;
    const int64_t L = m->L;
    float *out = xmalloc(((size_t)T * L + 1) * 4);
    const skv_key_block kb = mx_block(m);
    CHECK_OK(skv_indexer_scores(ctx, &o->q, &kb, out));
    const int bf16_dots = (skv_context_cpu_flags(ctx) & SKV_CPU_AVX512BF16) && o->q.dtype != SKV_F32;
    long bad = 0;
    for (int32_t t = 0; t < T; t++) {
        const int64_t vis = o->pos[t] + 1 < 0 ? 0 : o->pos[t] + 1 > L ? L : o->pos[t] + 1;
        for (int64_t s = 0; s < L; s++) {
            const float got = out[(size_t)t * L + s];
            if (s >= vis) {
                bad += got != -INFINITY;
                continue;
            }
            double ref = 0, mag = 0;
            for (int32_t h = 0; h < H; h++) {
                double dot = 0, adot = 0;
                for (int32_t d = 0; d < D; d++) {
                    double kv = m->f32[(size_t)s * D + d];
                    if (bf16_dots && fabs(kv) < 0x1p-126)
                        kv = 0;
                    const double p = q_value(o, ((size_t)t * H + h) * D + d, D) * kv;
                    dot += p;
                    adot += fabs(p);
                }
                ref += o->w[t * H + h] * (dot > 0 || isnan(dot) ? dot : 0);
                mag += fabs(o->w[t * H + h]) * adot;
            }
            const double tol = 4.0 * (D + H + 8) * 0x1p-24 * mag + 1e-30;
            const int ok = isnan(ref) ? isnan(got) : fabs(got - ref) <= tol;
            if (!ok && bad < 3)
                fprintf(stderr, "  %s %s: score[%d][%lld] = %.9g, reference %.9g\n", lv->name, what,
                        t, (long long)s, got, ref);
            bad += !ok;
        }
    }
    CHECK(bad == 0, "%s %s: %ld scores off the formula", lv->name, what, bad);

    /* top-k: exactly the sorted scores */
    const int32_t k = 7;
    int32_t *idx = xmalloc((size_t)T * k * 4 + 4), *want = xmalloc((size_t)k * 4);
    float *val = xmalloc((size_t)T * k * 4 + 4), *wval = xmalloc((size_t)k * 4);
    CHECK_OK(skv_indexer_topk(ctx, &o->q, &kb, k, idx, val));
    long tbad = 0;
    for (int32_t t = 0; t < T; t++) {
        const int64_t vis = o->pos[t] + 1 < 0 ? 0 : o->pos[t] + 1 > L ? L : o->pos[t] + 1;
        sort_topk(out + (size_t)t * L, vis, k, want, wval);
        for (int32_t j = 0; j < k; j++)
            tbad += idx[t * k + j] != want[j] || !same_float(val[t * k + j], wval[j]);
    }
    CHECK(tbad == 0, "%s %s: top-k differs from the sorted scores (%ld)", lv->name, what, tbad);
    free(out), free(idx), free(want), free(val), free(wval);
}

static void test_mx_scores(void)
{
    rng r = {16};
    const int32_t Ds[] = {32, 64, 128, 96};
    const int32_t Hs[] = {1, 3, 8, 64};
    const int64_t Ls[] = {0, 1, 17, 300, 1100};
    const skv_dtype qts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3, SKV_FP8_E4M3};
    for (int li = 0; li < N_LEVELS; li++) {
        const level *lv = &all_levels[li];
        if (!level_available(lv))
            continue;
        skv_context *ctx = ctx_new(lv->mask, 2);
        for (int c = 0; c < (quick ? 10 : 24); c++) {
            const int32_t D = Ds[c % 4], H = Hs[(c / 4) % 4], T = (int32_t)rng_int(&r, 1, 9);
            const int64_t L = Ls[c % 5];
            const skv_dtype qt = qts[(c / 2) % 4];
            mxkeys m;
            mxkeys_make(&m, &r, L, D, c % 3 == 0);
            qbuf o;
            qbuf_make(&o, &r, T, H, D, qt, L, (c / 2) % 4 == 3);
            char what[96];
            snprintf(what, sizeof what, "T=%d H=%d D=%d L=%lld q=%d%s", T, H, D, (long long)L, qt,
                     o.qs || qt != SKV_FP8_E4M3 ? "" : " (NULL q_scale)");
            check_mx_scores(lv, ctx, &o, &m, what);
            qbuf_free(&o);
            mxkeys_free(&m);
        }
        skv_context_destroy(ctx);
    }
}

/* ---- MXFP4 keys give the results of their dequantised values, in every path ----------------- */

static int same_topk(const int32_t *a, const float *as, const int32_t *b, const float *bs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i] || !same_float(as[i], bs[i]))
            return 0;
    return 1;
}

static void test_mx_paths(void)
{
    rng r = {1616};
    const int32_t D = 64, H = 16, T = 3, k = 40;
    const int64_t L = quick ? 2600 : 5000;
    for (int li = 0; li < N_LEVELS; li++) {
        const level *lv = &all_levels[li];
        if (!level_available(lv))
            continue;
        skv_context *ctx = ctx_new(lv->mask, 2);
        mxkeys m;
        mxkeys_make(&m, &r, L, D, 0);
        qbuf o;
        qbuf_make(&o, &r, T, H, D, SKV_F32, L, 0);
        for (int32_t t = 0; t < T; t++)
            o.pos[t] = (int32_t)(L - 1 - t * 700);
        const skv_key_block kb = mx_block(&m), kf = {L, D, SKV_F32, m.f32, NULL};
        int32_t a[T * k], b[T * k];
        float as[T * k], bs[T * k];
        CHECK_OK(skv_indexer_topk(ctx, &o.q, &kb, k, a, as));
        CHECK_OK(skv_indexer_topk(ctx, &o.q, &kf, k, b, bs));
        CHECK(same_topk(a, as, b, bs, (size_t)T * k), "%s: mxfp4 top-k != f32 of its values", lv->name);

        /* the key cache: appended in uneven pieces, MXFP4 as given and F32 quantised */
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.head_dim = D;
        kp.dtype = SKV_MXFP4_E2M1;
        kp.page_tokens = 64;
        kp.pool_chunk = 16;
        skv_kcache *kc;
        CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
        int32_t seq, seq2;
        CHECK_OK(skv_kcache_seq_create(kc, &seq));
        CHECK_OK(skv_kcache_seq_create(kc, &seq2));
        for (int64_t s = 0; s < L;) {
            const int64_t n = s + 777 < L ? rng_int(&r, 1, 777) : L - s;
            const skv_key_block piece = {n, D, SKV_MXFP4_E2M1, m.codes + s * D / 2, NULL,
                                         m.scales + s * D / 32};
            CHECK_OK(skv_kcache_append(kc, seq, 0, &piece));
            const skv_key_block fpiece = {n, D, SKV_F32, m.f32 + s * D, NULL};
            CHECK_OK(skv_kcache_append(kc, seq2, 0, &fpiece)); /* exact values: the same codes */
            s += n;
        }
        CHECK_OK(skv_kcache_topk(kc, seq, 0, &o.q, k, b, bs));
        CHECK(same_topk(a, as, b, bs, (size_t)T * k), "%s: kcache mxfp4 top-k differs", lv->name);
        uint8_t *rc = xmalloc((size_t)L * D / 2), *rs = xmalloc((size_t)L * D / 32);
        CHECK_OK(skv_kcache_read(kc, seq2, 0, 0, L, rc, NULL));
        CHECK_OK(skv_kcache_read_mx_scales(kc, seq2, 0, 0, L, rs));
        /* requantising exact values: the same values (codes may differ only for all-zero or
           NaN blocks, whose scale is free) */
        float *back = xmalloc((size_t)L * D * 4);
        skv_dequantize_mxfp4(rc, rs, L, D, back);
        long diff = 0;
        for (size_t i = 0; i < (size_t)L * D; i++)
            diff += !same_float(back[i], m.f32[i]);
        CHECK(diff == 0, "%s: F32 appended to an MXFP4 cache: %ld values changed", lv->name, diff);
        free(rc), free(rs), free(back);

        /* MISA and HISA, routed, against the same on f32 keys with pooled sums */
        skv_misa_params mp;
        skv_misa_params_init(&mp);
        mp.heads = 4;
        mp.block = 64;
        mp.min_length = 0;
        float *sums = xmalloc((size_t)((L + 15) / 16) * D * 4);
        CHECK_OK(skv_pool_keys(&kf, 16, sums));
        const skv_pooled_keys pk = {16, sums};
        CHECK_OK(skv_kcache_misa_topk(kc, seq, 0, &o.q, &mp, k, a, as));
        CHECK_OK(skv_misa_topk(ctx, &o.q, &kf, &pk, &mp, k, b, bs));
        CHECK(same_topk(a, as, b, bs, (size_t)T * k), "%s: MISA on mxfp4 differs", lv->name);
        CHECK_OK(skv_misa_topk(ctx, &o.q, &kb, &pk, &mp, k, a, as));
        CHECK(same_topk(a, as, b, bs, (size_t)T * k), "%s: MISA on an mxfp4 block differs", lv->name);
        skv_hisa_params hp;
        skv_hisa_params_init(&hp);
        hp.block = 64;
        hp.blocks = 6;
        hp.min_length = 0;
        CHECK_OK(skv_kcache_hisa_topk(kc, seq, 0, &o.q, &hp, k, a, as));
        CHECK_OK(skv_hisa_topk(ctx, &o.q, &kf, &pk, &hp, k, b, bs));
        CHECK(same_topk(a, as, b, bs, (size_t)T * k), "%s: HISA on mxfp4 differs", lv->name);

        /* removal and fork keep the keys */
        CHECK_OK(skv_kcache_seq_remove(kc, seq, 100, 1400));
        int32_t fk;
        CHECK_OK(skv_kcache_seq_fork(kc, seq, &fk));
        float *rest = xmalloc((size_t)(L - 1300) * D * 4);
        memcpy(rest, m.f32, (size_t)100 * D * 4);
        memcpy(rest + (size_t)100 * D, m.f32 + (size_t)1400 * D, (size_t)(L - 1400) * D * 4);
        const skv_key_block kr = {L - 1300, D, SKV_F32, rest, NULL};
        for (int32_t t = 0; t < T; t++)
            o.pos[t] = (int32_t)(L - 1301 - t * 300);
        CHECK_OK(skv_indexer_topk(ctx, &o.q, &kr, k, b, bs));
        CHECK_OK(skv_kcache_topk(kc, fk, 0, &o.q, k, a, as));
        CHECK(same_topk(a, as, b, bs, (size_t)T * k), "%s: mxfp4 after remove/fork differs", lv->name);
        free(rest), free(sums);
        skv_kcache_destroy(kc);
        qbuf_free(&o);
        mxkeys_free(&m);
        skv_context_destroy(ctx);
    }
}

/* ---- NULL q_scale and forced keys ---------------------------------------------------------------- */

static void test_null_q_scale(void)
{
    rng r = {7};
    for (int li = 0; li < N_LEVELS; li++) {
        const level *lv = &all_levels[li];
        if (!level_available(lv))
            continue;
        skv_context *ctx = ctx_new(lv->mask, 2);
        const int32_t T = 4, H = 12, D = 64;
        const int64_t L = 333;
        qbuf o;
        qbuf_make(&o, &r, T, H, D, SKV_FP8_E4M3, L, 1);
        float *ones = xmalloc((size_t)T * H * 4), *k32 = xmalloc((size_t)L * D * 4);
        for (int i = 0; i < T * H; i++)
            ones[i] = 1.0f;
        for (size_t i = 0; i < (size_t)L * D; i++)
            k32[i] = (float)rng_uniform(&r, -1, 1);
        uint8_t *k8 = xmalloc((size_t)L * D);
        float *ks = xmalloc((size_t)L * 4), *a = xmalloc((size_t)T * L * 4), *b = xmalloc((size_t)T * L * 4);
        skv_quantize_fp8(k32, L, D, D, 0, k8, ks);
        const skv_key_block kb = {L, D, SKV_FP8_E4M3, k8, ks};
        CHECK_OK(skv_indexer_scores(ctx, &o.q, &kb, a));
        skv_indexer_query q1 = o.q;
        q1.q_scale = ones;
        CHECK_OK(skv_indexer_scores(ctx, &q1, &kb, b));
        CHECK(memcmp(a, b, (size_t)T * L * 4) == 0, "%s: NULL q_scale differs from scales of 1", lv->name);
        free(ones), free(k32), free(k8), free(ks), free(a), free(b);
        qbuf_free(&o);
        skv_context_destroy(ctx);
    }
}

/* The plain model of forced keys on a finished unforced top-k of k: the forced keys, then the
 * first k - f others in rank order. */
static int32_t forced_model(const int32_t *plain, int32_t k, int64_t vis, int32_t ns, int32_t nw,
                            int32_t *out)
{
    const int64_t s = ns < vis ? ns : vis, w = vis - nw > s ? vis - nw : s;
    int32_t j = 0;
    for (int64_t x = 0; x < s; x++)
        out[j++] = (int32_t)x;
    for (int64_t x = w; x < vis; x++)
        out[j++] = (int32_t)x;
    for (int32_t i = 0; i < k && j < k; i++)
        if (plain[i] >= s && plain[i] < w)
            out[j++] = plain[i];
    const int32_t f = (int32_t)(s + (vis - w));
    while (j < k)
        out[j++] = -1;
    return f;
}

static void test_forced(void)
{
    rng r = {99};
    const int32_t T = 5, H = 8, D = 64, k = 24;
    const int64_t L = 3000;
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    float *k32 = xmalloc((size_t)L * D * 4), *scores = xmalloc((size_t)T * L * 4);
    for (size_t i = 0; i < (size_t)L * D; i++)
        k32[i] = (float)rng_uniform(&r, -1, 1);
    const skv_key_block kb = {L, D, SKV_F32, k32, NULL};
    qbuf o;
    qbuf_make(&o, &r, T, H, D, SKV_BF16, L, 0);
    o.pos[0] = 5, o.pos[1] = 30, o.pos[2] = (int32_t)L - 1, o.pos[3] = 2000, o.pos[4] = 20;
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = D;
    kp.dtype = SKV_F32;
    kp.pool_chunk = 16;
    skv_kcache *kc;
    int32_t seq;
    CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
    CHECK_OK(skv_kcache_seq_create(kc, &seq));
    CHECK_OK(skv_kcache_append(kc, seq, 0, &kb));
    float *sums = xmalloc((size_t)(L / 16 + 1) * D * 4);
    CHECK_OK(skv_pool_keys(&kb, 16, sums));
    const skv_pooled_keys pk = {16, sums};
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.heads = 2, mp.block = 64, mp.min_length = 0;
    skv_hisa_params hp;
    skv_hisa_params_init(&hp);
    hp.block = 64, hp.blocks = 4, hp.min_length = 0;
    const int32_t sinks[] = {0, 4, 1, 0, 24, 3};
    const int32_t wins[] = {0, 0, 8, 16, 0, 21};
    int32_t plain[T * k], got[T * k], want[k];
    float gs[T * k];
    CHECK_OK(skv_indexer_scores(ctx, &o.q, &kb, scores));
    for (int c = 0; c < 6; c++) {
        skv_indexer_query q = o.q;
        q.n_sink = sinks[c], q.n_window = wins[c];
        for (int path = 0; path < 5; path++) {
            skv_indexer_query q0 = o.q;
            skv_status st0 = SKV_OK, st = SKV_OK;
            switch (path) {
            case 0: /* contiguous: the model on the sorted scores */
                for (int32_t t = 0; t < T; t++) {
                    const int64_t vis = o.pos[t] + 1 > L ? L : o.pos[t] + 1;
                    sort_topk(scores + (size_t)t * L, vis, k, plain + t * k, NULL);
                }
                st = skv_indexer_topk(ctx, &q, &kb, k, got, gs);
                break;
            case 1:
                st0 = skv_kcache_topk(kc, seq, 0, &q0, k, plain, NULL);
                st = skv_kcache_topk(kc, seq, 0, &q, k, got, gs);
                break;
            case 2:
                st0 = skv_misa_topk(ctx, &q0, &kb, &pk, &mp, k, plain, NULL);
                st = skv_misa_topk(ctx, &q, &kb, &pk, &mp, k, got, gs);
                break;
            case 3:
                st0 = skv_kcache_hisa_topk(kc, seq, 0, &q0, &hp, k, plain, NULL);
                st = skv_kcache_hisa_topk(kc, seq, 0, &q, &hp, k, got, gs);
                break;
            case 4: { /* IndexCache: a Full layer, then a Shared one serving its indices */
                skv_reuse_plan *plan;
                CHECK_OK(skv_reuse_plan_from_string(ctx, "FS", NULL, 0, &plan));
                skv_reuse_selector_params sp;
                skv_reuse_selector_params_init(&sp);
                sp.k = k, sp.max_tokens = T;
                skv_reuse_selector *sel;
                CHECK_OK(skv_reuse_selector_create(ctx, plan, &sp, &sel));
                const int32_t *view;
                CHECK_OK(skv_reuse_begin_step(sel, T));
                CHECK_OK(skv_reuse_select(sel, 0, &q0, &kb, &view));
                memcpy(plain, view, sizeof plain);
                CHECK_OK(skv_reuse_begin_step(sel, T));
                st = skv_reuse_select(sel, 0, &q, &kb, &view);
                memcpy(got, view, sizeof got);
                CHECK_OK(skv_reuse_select(sel, 1, NULL, NULL, &view));
                CHECK(memcmp(view, got, sizeof got) == 0, "shared layer lost the forced keys");
                for (int i = 0; i < T * k; i++)
                    gs[i] = INFINITY; /* no scores from a selector */
                skv_reuse_selector_destroy(sel);
                skv_reuse_plan_destroy(plan);
            } break;
            }
            CHECK(st0 == SKV_OK && st == SKV_OK, "path %d case %d: %d %d", path, c, st0, st);
            long bad = 0;
            for (int32_t t = 0; t < T; t++) {
                const int64_t vis = o.pos[t] + 1 > L ? L : o.pos[t] + 1;
                const int32_t f = forced_model(plain + t * k, k, vis, q.n_sink, q.n_window, want);
                for (int32_t j = 0; j < k; j++) {
                    bad += got[t * k + j] != want[j];
                    if (path < 4 && j < f)
                        bad += gs[t * k + j] != INFINITY;
                    if (path == 0 && j >= f && want[j] >= 0)
                        bad += !same_float(gs[t * k + j], scores[(size_t)t * L + want[j]]);
                }
            }
            CHECK(bad == 0, "path %d, sinks %d window %d: %ld entries off the model", path,
                  q.n_sink, q.n_window, bad);
        }
    }
    /* bad arguments change nothing */
    skv_indexer_query q = o.q;
    memset(got, 0x5a, sizeof got);
    q.n_sink = 20, q.n_window = 5;
    CHECK_STATUS(skv_indexer_topk(ctx, &q, &kb, k, got, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_topk(kc, seq, 0, &q, k, got, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, k, got, NULL), SKV_ERR_INVALID_ARG);
    q.n_sink = -1, q.n_window = 0;
    CHECK_STATUS(skv_indexer_topk(ctx, &q, &kb, k, got, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_indexer_scores(ctx, &q, &kb, scores), SKV_ERR_INVALID_ARG);
    long touched = 0;
    for (size_t i = 0; i < sizeof got; i++)
        touched += ((uint8_t *)got)[i] != 0x5a;
    CHECK(touched == 0, "refused calls wrote their output");
    free(k32), free(scores), free(sums);
    skv_kcache_destroy(kc);
    qbuf_free(&o);
    skv_context_destroy(ctx);
}

static void test_mx_badargs(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    uint8_t codes[64 * 3] = {0}, sc[6] = {127, 127, 127, 127, 127, 127};
    float w[2] = {1, 1}, q[2 * 64] = {0}, out[3];
    const skv_indexer_query qq = {1, 2, 64, SKV_F32, q, NULL, w, NULL};
    skv_key_block kb = {3, 64, SKV_MXFP4_E2M1, codes, NULL, sc};
    CHECK_OK(skv_indexer_scores(ctx, &qq, &kb, out));
    kb.k_mx_scale = NULL; /* scales missing */
    CHECK_STATUS(skv_indexer_scores(ctx, &qq, &kb, out), SKV_ERR_INVALID_ARG);
    kb.k_mx_scale = sc;
    kb.k_scale = w; /* an f32 scale for MXFP4 */
    CHECK_STATUS(skv_indexer_scores(ctx, &qq, &kb, out), SKV_ERR_INVALID_ARG);
    const skv_indexer_query q48 = {1, 2, 48, SKV_F32, q, NULL, w, NULL};
    const skv_key_block k48 = {3, 48, SKV_MXFP4_E2M1, codes, NULL, sc}; /* not whole blocks */
    CHECK_STATUS(skv_indexer_scores(ctx, &q48, &k48, out), SKV_ERR_INVALID_ARG);
    const skv_key_block k8 = {3, 64, SKV_F32, q, NULL, sc}; /* mx scales on f32 keys */
    CHECK_STATUS(skv_indexer_scores(ctx, &qq, &k8, out), SKV_ERR_INVALID_ARG);
    const skv_indexer_query qm = {1, 2, 64, SKV_MXFP4_E2M1, codes, NULL, w, NULL};
    kb.k_scale = NULL;
    CHECK_STATUS(skv_indexer_scores(ctx, &qm, &kb, out), SKV_ERR_UNSUPPORTED);
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.dtype = SKV_MXFP4_E2M1;
    kp.head_dim = 48;
    skv_kcache *kc = NULL;
    CHECK_STATUS(skv_kcache_create(ctx, &kp, &kc), SKV_ERR_INVALID_ARG);
    kp.head_dim = 64;
    kp.lane_copy = 1;
    CHECK_STATUS(skv_kcache_create(ctx, &kp, &kc), SKV_ERR_INVALID_ARG);
    kp.lane_copy = 0;
    CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
    int32_t seq;
    CHECK_OK(skv_kcache_seq_create(kc, &seq));
    kb.k_mx_scale = NULL;
    CHECK_STATUS(skv_kcache_append(kc, seq, 0, &kb), SKV_ERR_INVALID_ARG);
    int64_t len = -1;
    CHECK_OK(skv_kcache_seq_length(kc, seq, 0, &len));
    CHECK(len == 0, "refused append changed the length");
    skv_kcache_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_kcache_get_stats(kc, &st));
    CHECK(st.bytes_per_token == 64 / 2 + 64 / 32, "mxfp4 bytes per token %lld", (long long)st.bytes_per_token);
    skv_kcache_destroy(kc);
    skv_context_destroy(ctx);
}

/* ---- host-owned pages, ragged batches, compressed entries -------------------------------------- */

/* Random stored keys of a dtype: rows [n][row bytes] and scales [n][scale bytes]. */
static void random_rows(rng *r, skv_dtype t, int32_t D, int64_t n, uint8_t *rows, uint8_t *scales)
{
    for (int64_t i = 0; i < n; i++) {
        if (t == SKV_F32 || t == SKV_BF16) {
            float *f = xmalloc((size_t)D * 4);
            for (int32_t d = 0; d < D; d++)
                f[d] = (float)rng_uniform(r, -1, 1);
            skv_convert(t, rows + (size_t)i * D * skv_dtype_size(t), SKV_F32, f, D);
            free(f);
        } else if (t == SKV_FP8_E4M3) {
            for (int32_t d = 0; d < D; d++) {
                uint8_t b = (uint8_t)rng_int(r, 0, 255);
                rows[(size_t)i * D + d] = (b & 0x7f) == 0x7f ? 0x30 : b;
            }
            const float sc = (float)rng_uniform(r, 0.001, 0.01);
            memcpy(scales + (size_t)i * 4, &sc, 4);
        } else {
            for (int32_t d = 0; d < D / 2; d++)
                rows[(size_t)i * D / 2 + d] = (uint8_t)rng_int(r, 0, 255);
            for (int32_t d = 0; d < D / 32; d++)
                scales[(size_t)i * D / 32 + d] = (uint8_t)rng_int(r, 120, 134);
        }
    }
}

static size_t row_b(skv_dtype t, int32_t D) { return t == SKV_MXFP4_E2M1 ? (size_t)D / 2 : (size_t)D * skv_dtype_size(t); }
static size_t scale_b(skv_dtype t, int32_t D) { return t == SKV_FP8_E4M3 ? 4 : t == SKV_MXFP4_E2M1 ? (size_t)D / 32 : 0; }

static void test_paged(void)
{
    rng r = {2024};
    const int32_t D = 64, H = 16, P = 16, k = 30, S = 5;
    const int64_t NB = 60;
    const skv_dtype dts[] = {SKV_FP8_E4M3, SKV_MXFP4_E2M1, SKV_BF16, SKV_F32};
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    for (int di = 0; di < 4; di++) {
        const skv_dtype dt = dts[di];
        const size_t rb = row_b(dt, D), sb = scale_b(dt, D);
        const size_t soff = (size_t)P * rb, bbytes = soff + (size_t)P * sb + 64;
        uint8_t *pool = xmalloc((size_t)NB * bbytes);
        memset(pool, 0x7f, (size_t)NB * bbytes); /* NaN fp8 bytes in the gaps: never read */
        for (int64_t b = 0; b < NB; b++)
            random_rows(&r, dt, D, P, pool + b * bbytes, pool + b * bbytes + soff);
        /* tables: unordered ids, sequence 1 shares sequence 0's first blocks, partial last ones */
        int32_t table[S][12], lens[S], qs[S + 1];
        qs[0] = 0;
        for (int i = 0; i < S; i++) {
            lens[i] = i == 4 ? 0 : (int32_t)rng_int(&r, 1, 12 * P);
            for (int j = 0; j < 12; j++)
                table[i][j] = (int32_t)rng_int(&r, 0, NB - 1);
            if (i == 1)
                memcpy(table[1], table[0], 6 * 4);
            qs[i + 1] = qs[i] + (int32_t)rng_int(&r, 1, 3);
        }
        const int32_t T = qs[S];
        qbuf o;
        qbuf_make(&o, &r, T, H, D, SKV_BF16, 0, 0);
        o.q.positions = NULL;
        const skv_paged_keys pk = {D, dt, P, pool, NB, bbytes, soff};
        const skv_paged_batch pb = {S, &table[0][0], 12, lens, qs};
        int32_t *got = xmalloc((size_t)T * k * 4), *want = xmalloc((size_t)T * k * 4);
        float *gs = xmalloc((size_t)T * k * 4), *ws = xmalloc((size_t)T * k * 4);
        CHECK_OK(skv_paged_topk(ctx, &pk, &pb, &o.q, k, got, gs));
        /* the same keys appended to a key cache, one sequence each */
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.head_dim = D, kp.dtype = dt, kp.page_tokens = P;
        skv_kcache *kc;
        CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
        int32_t seqs[S];
        for (int i = 0; i < S; i++) {
            int32_t seq;
            CHECK_OK(skv_kcache_seq_create(kc, &seq));
            seqs[i] = seq;
            uint8_t *rows = xmalloc((size_t)lens[i] * rb + 1), *sc = xmalloc((size_t)lens[i] * sb + 1);
            for (int32_t s = 0; s < lens[i]; s++) {
                const uint8_t *blk = pool + (size_t)table[i][s / P] * bbytes;
                memcpy(rows + (size_t)s * rb, blk + (size_t)(s % P) * rb, rb);
                memcpy(sc + (size_t)s * sb, blk + soff + (size_t)(s % P) * sb, sb);
            }
            const skv_key_block kb = {lens[i], D, dt, rows, dt == SKV_FP8_E4M3 ? (const float *)sc : NULL,
                                      dt == SKV_MXFP4_E2M1 ? sc : NULL};
            CHECK_OK(skv_kcache_append(kc, seq, 0, &kb));
            const int32_t n = qs[i + 1] - qs[i];
            int32_t pos[3];
            for (int32_t j = 0; j < n; j++)
                pos[j] = lens[i] - n + j;
            skv_indexer_query sq = o.q;
            sq.n_tokens = n;
            sq.q = (const uint16_t *)o.qd + (size_t)qs[i] * H * D;
            sq.weights = o.w + (size_t)qs[i] * H;
            sq.positions = pos;
            CHECK_OK(skv_kcache_topk(kc, seq, 0, &sq, k, want + (size_t)qs[i] * k, ws + (size_t)qs[i] * k));
            free(rows), free(sc);
        }
        CHECK(same_topk(got, gs, want, ws, (size_t)T * k), "dtype %d: host pages differ from the key cache", dt);
        /* the scores alone: the key cache's scores of each sequence, -inf past its length */
        const int64_t stride = 12 * P + 5;
        float *psc = xmalloc((size_t)T * stride * 4), *wsc = xmalloc((size_t)T * stride * 4);
        for (size_t i = 0; i < (size_t)T * stride; i++)
            wsc[i] = -INFINITY;
        for (int i = 0; i < S; i++) {
            const int32_t n = qs[i + 1] - qs[i];
            int32_t pos[3];
            for (int32_t j = 0; j < n; j++)
                pos[j] = lens[i] - n + j;
            skv_indexer_query sq = o.q;
            sq.n_tokens = n;
            sq.q = (const uint16_t *)o.qd + (size_t)qs[i] * H * D;
            sq.weights = o.w + (size_t)qs[i] * H;
            sq.positions = pos;
            float *rows = xmalloc((size_t)n * lens[i] * 4 + 4);
            CHECK_OK(skv_kcache_scores(kc, seqs[i], 0, &sq, rows));
            for (int32_t j = 0; j < n; j++)
                memcpy(wsc + (size_t)(qs[i] + j) * stride, rows + (size_t)j * lens[i], (size_t)lens[i] * 4);
            free(rows);
        }
        memset(psc, 0x5a, (size_t)T * stride * 4);
        CHECK_OK(skv_paged_scores(ctx, &pk, &pb, &o.q, psc, stride));
        long sbad = 0;
        for (size_t i = 0; i < (size_t)T * stride; i++)
            sbad += !same_float(psc[i], wsc[i]);
        CHECK(sbad == 0, "dtype %d: host page scores differ from the key cache's (%ld)", dt, sbad);
        /* refused: a row shorter than a sequence, no output; nothing written */
        memset(psc, 0x5a, (size_t)T * stride * 4);
        int32_t longest = 0;
        for (int i = 0; i < S; i++)
            longest = lens[i] > longest ? lens[i] : longest;
        CHECK_STATUS(skv_paged_scores(ctx, &pk, &pb, &o.q, psc, longest - 1), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_paged_scores(ctx, &pk, &pb, &o.q, NULL, stride), SKV_ERR_INVALID_ARG);
        const int32_t id3 = table[3][0];
        table[3][0] = (int32_t)NB;
        CHECK_STATUS(skv_paged_scores(ctx, &pk, &pb, &o.q, psc, stride), SKV_ERR_INVALID_ARG);
        table[3][0] = id3;
        uint32_t first, last;
        memcpy(&first, psc, 4);
        memcpy(&last, psc + (size_t)T * stride - 1, 4);
        CHECK(first == 0x5a5a5a5au && last == 0x5a5a5a5au, "refused paged scores wrote");
        free(psc), free(wsc);
        /* the same rule given as positions */
        int32_t *ps = xmalloc((size_t)T * 4);
        for (int i = 0; i < S; i++)
            for (int32_t t = qs[i]; t < qs[i + 1]; t++)
                ps[t] = lens[i] - (qs[i + 1] - qs[i]) + (t - qs[i]);
        o.q.positions = ps;
        CHECK_OK(skv_paged_topk(ctx, &pk, &pb, &o.q, k, want, ws));
        CHECK(same_topk(got, gs, want, ws, (size_t)T * k), "dtype %d: positions differ from the rule", dt);
        o.q.positions = NULL;
        free(ps);
        /* bad arguments: a block id out of range, scales inside the values, misaligned fp8
           blocks, a bad q_start; nothing written */
        memset(got, 0x5a, (size_t)T * k * 4);
        int32_t saved = table[2][0];
        table[2][0] = (int32_t)NB;
        CHECK_STATUS(skv_paged_topk(ctx, &pk, &pb, &o.q, k, got, NULL), SKV_ERR_INVALID_ARG);
        table[2][0] = -1;
        CHECK_STATUS(skv_paged_topk(ctx, &pk, &pb, &o.q, k, got, NULL), SKV_ERR_INVALID_ARG);
        table[2][0] = saved;
        if (sb) {
            skv_paged_keys bad = pk;
            bad.scale_offset = soff - 1;
            CHECK_STATUS(skv_paged_topk(ctx, &bad, &pb, &o.q, k, got, NULL), SKV_ERR_INVALID_ARG);
            bad = pk;
            bad.block_bytes = soff + (size_t)P * sb - 1; /* scales missing */
            CHECK_STATUS(skv_paged_topk(ctx, &bad, &pb, &o.q, k, got, NULL), SKV_ERR_INVALID_ARG);
        }
        if (dt == SKV_FP8_E4M3) {
            skv_paged_keys bad = pk;
            bad.block_bytes = bbytes + 2;
            CHECK_STATUS(skv_paged_topk(ctx, &bad, &pb, &o.q, k, got, NULL), SKV_ERR_INVALID_ARG);
        }
        skv_paged_batch badb = pb;
        int32_t qbad[S + 1];
        memcpy(qbad, qs, sizeof qbad);
        qbad[2] = qbad[3] + 1;
        badb.q_start = qbad;
        CHECK_STATUS(skv_paged_topk(ctx, &pk, &badb, &o.q, k, got, NULL), SKV_ERR_INVALID_ARG);
        /* k past SKV_TOPK_MAX_K: refused as skv_indexer_topk refuses it (was accepted) */
        CHECK_STATUS(skv_paged_topk(ctx, &pk, &pb, &o.q, SKV_TOPK_MAX_K + 1, got, NULL), SKV_ERR_INVALID_ARG);
        skv_indexer_query q8 = o.q; /* a key-only dtype as queries */
        q8.dtype = SKV_Q8_0;
        CHECK_STATUS(skv_paged_topk(ctx, &pk, &pb, &q8, k, got, NULL), SKV_ERR_UNSUPPORTED);
        long touched = 0;
        for (size_t i = 0; i < (size_t)T * k; i++)
            touched += got[i] != 0x5a5a5a5a;
        CHECK(touched == 0, "refused paged calls wrote their output");
        skv_kcache_destroy(kc);
        free(got), free(want), free(gs), free(ws), free(pool);
        qbuf_free(&o);
    }
    skv_context_destroy(ctx);
}

static void test_ragged(void)
{
    rng r = {77};
    const int32_t D = 64, H = 12, k = 20, S = 8;
    const int64_t L = 4000;
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    mxkeys m;
    mxkeys_make(&m, &r, L, D, 0);
    const skv_key_block kb = mx_block(&m);
    int32_t ks[64], ke[64], seq_of[64], T = 0;
    int64_t at = 0;
    for (int i = 0; i < S; i++) {
        const int64_t len = rng_int(&r, 1, L / S), n = rng_int(&r, 1, 4);
        for (int64_t j = 0; j < n; j++, T++) {
            ks[T] = (int32_t)at;
            ke[T] = (int32_t)(at + (len - n + j + 1 > 0 ? len - n + j + 1 : 0));
            seq_of[T] = i;
        }
        at += len;
    }
    qbuf o;
    qbuf_make(&o, &r, T, H, D, SKV_FP8_E4M3, 0, 0);
    o.q.positions = NULL;
    o.q.n_sink = 2, o.q.n_window = 3;
    int32_t got[64 * 20], rel[64 * 20], want[64 * 20];
    float gs[64 * 20], ws[64 * 20];
    CHECK_OK(skv_indexer_topk_ragged(ctx, &o.q, &kb, ks, ke, k, 0, got, gs));
    CHECK_OK(skv_indexer_topk_ragged(ctx, &o.q, &kb, ks, ke, k, SKV_RAGGED_RELATIVE, rel, NULL));
    for (int32_t t0 = 0, t1; t0 < T; t0 = t1) { /* per sequence, as separate calls */
        for (t1 = t0; t1 < T && seq_of[t1] == seq_of[t0]; t1++)
            ;
        int32_t pos[4];
        for (int32_t t = t0; t < t1; t++)
            pos[t - t0] = ke[t] - ks[t0] - 1;
        const skv_key_block sub = {ke[t1 - 1] - ks[t0], D, SKV_MXFP4_E2M1,
                                   m.codes + (size_t)ks[t0] * D / 2, NULL, m.scales + (size_t)ks[t0] * D / 32};
        skv_indexer_query sq = o.q;
        sq.n_tokens = t1 - t0;
        sq.q = (const uint8_t *)o.qd + (size_t)t0 * H * D;
        sq.q_scale = o.qs + (size_t)t0 * H;
        sq.weights = o.w + (size_t)t0 * H;
        sq.positions = pos;
        CHECK_OK(skv_indexer_topk(ctx, &sq, &sub, k, want + t0 * k, ws + t0 * k));
    }
    long bad = 0;
    for (int32_t i = 0; i < T * k; i++) {
        const int32_t base = ks[i / k];
        bad += rel[i] != want[i] || got[i] != (want[i] < 0 ? -1 : want[i] + base) ||
               !same_float(gs[i], ws[i]);
    }
    CHECK(bad == 0, "ragged batch differs from per-sequence calls (%ld)", bad);
    ks[3] = ke[3] + 1;
    memset(got, 0x5a, sizeof got);
    CHECK_STATUS(skv_indexer_topk_ragged(ctx, &o.q, &kb, ks, ke, k, 0, got, NULL), SKV_ERR_INVALID_ARG);
    ks[3] = ke[3];
    ke[5] = (int32_t)L + 1;
    CHECK_STATUS(skv_indexer_topk_ragged(ctx, &o.q, &kb, ks, ke, k, 0, got, NULL), SKV_ERR_INVALID_ARG);
    ke[5] = ks[5];
    /* k past SKV_TOPK_MAX_K: refused as skv_indexer_topk refuses it (was accepted) */
    CHECK_STATUS(skv_indexer_topk_ragged(ctx, &o.q, &kb, ks, ke, SKV_TOPK_MAX_K + 1, 0, got, NULL),
                 SKV_ERR_INVALID_ARG);
    o.q.positions = o.pos;
    CHECK_STATUS(skv_indexer_topk_ragged(ctx, &o.q, &kb, ks, ke, k, 0, got, NULL), SKV_ERR_INVALID_ARG);
    CHECK(got[0] == 0x5a5a5a5a && got[T * k - 1] == 0x5a5a5a5a, "refused ragged call wrote");
    qbuf_free(&o);
    mxkeys_free(&m);
    skv_context_destroy(ctx);
}

static void test_compressed(void)
{
    /* visibility: entry i is seen by position p iff (i + 1) * ratio <= p + 1 */
    int32_t pos[40], out[40];
    for (int i = 0; i < 40; i++)
        pos[i] = i - 3;
    CHECK_OK(skv_compressed_positions(pos, 40, 4, out));
    long bad = 0;
    for (int i = 0; i < 40; i++) {
        int32_t last = -1;
        for (int32_t e = 0; (e + 1) * 4 <= pos[i] + 1; e++)
            last = e;
        bad += out[i] != last;
    }
    CHECK(bad == 0, "compressed positions off the rule (%ld)", bad);
    CHECK(skv_compressed_count(1023, 4) == 255 && skv_compressed_count(1024, 4) == 256, "count");
    const int32_t sel[4] = {0, 5, 17, -1};
    int32_t tok[16], pages[16];
    CHECK_OK(skv_compressed_expand(sel, 4, 4, tok));
    CHECK(tok[0] == 0 && tok[3] == 3 && tok[4] == 20 && tok[11] == 71 && tok[12] == -1 && tok[15] == -1,
          "expanded tokens");
    int64_t np = 0;
    CHECK_OK(skv_compressed_pages(sel, 4, 4, 8, pages, &np));
    CHECK(np == 3 && pages[0] == 0 && pages[1] == 2 && pages[2] == 8, "pages %lld", (long long)np);
    const int32_t big[1] = {INT32_MAX / 4};
    CHECK_STATUS(skv_compressed_expand(big, 1, 4, tok), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_compressed_positions(pos, 4, 0, out), SKV_ERR_INVALID_ARG);

    /* a decode run: entries appended to an MXFP4 key cache as the compressor emits them, each
       step's top-k against the plain model on the visible entries */
    rng r = {4};
    const int32_t D = 64, H = 8, ratio = 4, k = 16;
    const int64_t N = 700;
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    mxkeys m;
    mxkeys_make(&m, &r, N / ratio, D, 0);
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = D, kp.dtype = SKV_MXFP4_E2M1;
    skv_kcache *kc;
    int32_t seq;
    CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
    CHECK_OK(skv_kcache_seq_create(kc, &seq));
    qbuf o;
    qbuf_make(&o, &r, 1, H, D, SKV_F32, 0, 0);
    const skv_key_block all = mx_block(&m);
    float *sc = xmalloc((size_t)(N / ratio) * 4);
    long off = 0;
    for (int64_t p = 0; p < N; p++) {
        int64_t have;
        CHECK_OK(skv_kcache_seq_length(kc, seq, 0, &have));
        /* the compressor's output of this step: an entry when token p completes one */
        const int64_t n_new = skv_compressed_count(p + 1, ratio) - have;
        const skv_key_block e = {n_new, D, SKV_MXFP4_E2M1, m.codes + have * D / 2, NULL, m.scales + have * D / 32};
        if (p % 5 == 0) { /* a missing entry, one too many: refused, nothing appended */
            skv_key_block wrong = e;
            wrong.n_keys = 1 - n_new;
            CHECK_STATUS(skv_kcache_append_compressed(kc, seq, 0, p + 1, ratio, &wrong), SKV_ERR_INVALID_ARG);
        }
        CHECK_OK(skv_kcache_append_compressed(kc, seq, 0, p + 1, ratio, &e));
        CHECK_OK(skv_kcache_seq_length(kc, seq, 0, &have));
        CHECK(have == (p + 1) / ratio, "after token %lld: %lld entries", (long long)p, (long long)have);
        if (p % 37)
            continue;
        const int32_t tp = (int32_t)p;
        int32_t ep;
        CHECK_OK(skv_compressed_positions(&tp, 1, ratio, &ep));
        o.q.positions = &ep;
        int32_t got[16], want[16];
        CHECK_OK(skv_kcache_topk(kc, seq, 0, &o.q, k, got, NULL));
        const int64_t vis = (p + 1) / ratio;
        if (vis > 0) {
            o.q.positions = NULL;
            const skv_key_block vk = {vis, D, SKV_MXFP4_E2M1, all.k, NULL, all.k_mx_scale};
            CHECK_OK(skv_indexer_scores(ctx, &o.q, &vk, sc));
        }
        sort_topk(sc, vis, k, want, NULL);
        for (int j = 0; j < k; j++)
            off += got[j] != want[j];
    }
    CHECK(off == 0, "compressed decode top-k off the model (%ld)", off);

    /* prefill: chunks of any length, each appending the entries it completes (f32 entries
       quantised on the way: the values are exact, so the same codes); the same cache contents */
    int32_t seq2;
    CHECK_OK(skv_kcache_seq_create(kc, &seq2));
    for (int64_t p = 0; p < N;) {
        const int64_t c = p + 90 < N ? rng_int(&r, 1, 90) : N - p;
        const int64_t have = skv_compressed_count(p, ratio), n_new = skv_compressed_count(p + c, ratio) - have;
        const skv_key_block e = {n_new, D, SKV_F32, m.f32 + have * D, NULL, NULL};
        CHECK_OK(skv_kcache_append_compressed(kc, seq2, 0, p + c, ratio, &e));
        p += c;
    }
    const int64_t n_e = N / ratio;
    uint8_t *c1 = xmalloc((size_t)n_e * D / 2), *c2 = xmalloc((size_t)n_e * D / 2);
    uint8_t *s1 = xmalloc((size_t)n_e * D / 32), *s2 = xmalloc((size_t)n_e * D / 32);
    CHECK_OK(skv_kcache_read(kc, seq, 0, 0, n_e, c1, NULL));
    CHECK_OK(skv_kcache_read(kc, seq2, 0, 0, n_e, c2, NULL));
    CHECK_OK(skv_kcache_read_mx_scales(kc, seq, 0, 0, n_e, s1));
    CHECK_OK(skv_kcache_read_mx_scales(kc, seq2, 0, 0, n_e, s2));
    float *v1 = xmalloc((size_t)n_e * D * 4), *v2 = xmalloc((size_t)n_e * D * 4);
    CHECK_OK(skv_dequantize_mxfp4(c1, s1, n_e, D, v1));
    CHECK_OK(skv_dequantize_mxfp4(c2, s2, n_e, D, v2));
    CHECK(memcmp(c1, m.codes, (size_t)n_e * D / 2) == 0 && memcmp(v1, v2, (size_t)n_e * D * 4) == 0,
          "prefill and decode appends of compressed entries differ");
    free(v1), free(v2);
    /* refused, nothing changed: tokens behind the stored entries, ratio 0, negative tokens, a
       sequence that does not exist, the dtype of another cache */
    const skv_key_block none = {0, D, SKV_MXFP4_E2M1, m.codes, NULL, m.scales};
    const skv_key_block one = {1, D, SKV_MXFP4_E2M1, m.codes, NULL, m.scales};
    CHECK_STATUS(skv_kcache_append_compressed(kc, seq2, 0, N - ratio, ratio, &none), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_append_compressed(kc, seq2, 0, N + ratio, 0, &one), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_append_compressed(kc, seq2, 0, -1, ratio, &none), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_append_compressed(kc, seq2, 1, N + ratio, ratio, &one), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_append_compressed(kc, seq2 + 7, 0, N + ratio, ratio, &one), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_append_compressed(kc, seq2, 0, N + ratio, ratio, NULL), SKV_ERR_INVALID_ARG);
    const skv_key_block fp8 = {1, D, SKV_FP8_E4M3, m.codes, (const float *)m.f32, NULL};
    CHECK_STATUS(skv_kcache_append_compressed(kc, seq2, 0, N + ratio, ratio, &fp8), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_append_compressed(NULL, seq2, 0, N + ratio, ratio, &one), SKV_ERR_INVALID_ARG);
    int64_t len2;
    CHECK_OK(skv_kcache_seq_length(kc, seq2, 0, &len2));
    uint8_t *c3 = xmalloc((size_t)n_e * D / 2);
    CHECK_OK(skv_kcache_read(kc, seq2, 0, 0, n_e, c3, NULL));
    CHECK(len2 == n_e && memcmp(c2, c3, (size_t)n_e * D / 2) == 0, "a refused append changed the cache");
    free(c3);
    free(c1), free(c2), free(s1), free(s2);
    skv_kcache_destroy(kc);
    free(sc);
    qbuf_free(&o);
    mxkeys_free(&m);
    skv_context_destroy(ctx);
}

/* IndexCache over compressed layers: a plan "FSFS" over a key cache holding only the Full
 * layers' compressed entries, appended as the compressor emits them (a prefill chunk, then
 * decode steps). Full layers compute (the key cache's own top-k of their slot), Shared layers
 * return their source's indices without running the indexer, and the indices are entries that
 * expand to tokens the query token has seen. */
static void test_compressed_reuse(void)
{
    rng r = {26274};
    const int32_t D = 64, H = 8, ratio = 4, k = 12, NL = 4, prefill = 61;
    const int64_t N = 400;
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    skv_reuse_plan *plan;
    CHECK_OK(skv_reuse_plan_from_string(ctx, "FSFS", NULL, 0, &plan));
    skv_kcache_params base, kp;
    skv_kcache_params_init(&base);
    base.head_dim = D, base.dtype = SKV_MXFP4_E2M1, base.page_tokens = 16;
    CHECK_OK(skv_reuse_kcache_params(plan, &base, &kp));
    CHECK(kp.n_layers == 2, "the cache keeps the 2 Full layers, not %d", kp.n_layers);
    skv_kcache *kc;
    int32_t seq;
    CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
    CHECK_OK(skv_kcache_seq_create(kc, &seq));
    mxkeys m[2]; /* each Full layer's entries */
    mxkeys_make(&m[0], &r, N / ratio, D, 0);
    mxkeys_make(&m[1], &r, N / ratio, D, 0);
    skv_reuse_selector_params sp;
    skv_reuse_selector_params_init(&sp);
    sp.k = k, sp.max_tokens = prefill;
    skv_reuse_selector *sel;
    CHECK_OK(skv_reuse_selector_create(ctx, plan, &sp, &sel));
    qbuf o[NL]; /* each layer's queries (a Shared layer's are never read) */
    for (int l = 0; l < NL; l++)
        qbuf_make(&o[l], &r, prefill, H, D, SKV_FP8_E4M3, 0, 0);
    int32_t *want = xmalloc((size_t)prefill * k * 4), *tok = xmalloc((size_t)prefill * k * ratio * 4);
    int32_t *epos = xmalloc((size_t)prefill * 4), src_idx[2][61 * 12];
    long bad = 0, steps = 0;
    for (int64_t p = 0; p < N;) {
        const int32_t T = p == 0 ? prefill : 1; /* a prefill chunk, then decode */
        for (int32_t slot = 0; slot < 2; slot++) { /* the compressor's entries of this step */
            const int64_t have = skv_compressed_count(p, ratio), n_new = skv_compressed_count(p + T, ratio) - have;
            const skv_key_block e = {n_new, D, SKV_MXFP4_E2M1, m[slot].codes + have * D / 2, NULL,
                                     m[slot].scales + have * D / 32};
            CHECK_OK(skv_kcache_append_compressed(kc, seq, slot, p + T, ratio, &e));
        }
        for (int32_t t = 0; t < T; t++)
            epos[t] = (int32_t)(p + t);
        CHECK_OK(skv_compressed_positions(epos, T, ratio, epos)); /* tokens to entries */
        CHECK_OK(skv_reuse_begin_step(sel, T));
        steps++;
        for (int32_t l = 0; l < NL; l++) {
            skv_indexer_query q = o[l].q;
            q.n_tokens = T;
            q.positions = epos;
            const int32_t *view;
            if (l % 2) { /* Shared: no query, no keys read */
                CHECK_OK(skv_reuse_select_kcache(sel, l, NULL, kc, seq, &view));
                bad += memcmp(view, src_idx[(l - 1) / 2], (size_t)T * k * 4) != 0;
                continue;
            }
            CHECK_OK(skv_reuse_select_kcache(sel, l, &q, kc, seq, &view));
            CHECK_OK(skv_kcache_topk(kc, seq, l / 2, &q, k, want, NULL));
            bad += memcmp(view, want, (size_t)T * k * 4) != 0;
            memcpy(src_idx[l / 2], view, (size_t)T * k * 4);
            /* entries a token may see only, expanding to tokens at or before it */
            CHECK_OK(skv_compressed_expand(view, (int64_t)T * k, ratio, tok));
            for (int32_t t = 0; t < T; t++)
                for (int32_t j = 0; j < k; j++) {
                    const int32_t e = view[t * k + j];
                    if (e < 0)
                        continue;
                    bad += e > epos[t];
                    for (int32_t i = 0; i < ratio; i++)
                        bad += tok[((size_t)t * k + j) * ratio + i] != e * ratio + i ||
                               tok[((size_t)t * k + j) * ratio + i] > p + t;
                }
        }
        p += T;
    }
    CHECK(bad == 0, "IndexCache over compressed entries: %ld mismatches", bad);
    skv_reuse_selector_stats stats = {sizeof stats, 0, 0, 0};
    CHECK_OK(skv_reuse_selector_get_stats(sel, &stats));
    CHECK(stats.steps == steps && stats.indexer_runs == 2 * steps && stats.reused == 2 * steps,
          "selector stats %lld %lld %lld for %ld steps", (long long)stats.steps,
          (long long)stats.indexer_runs, (long long)stats.reused, steps);
    for (int l = 0; l < NL; l++)
        qbuf_free(&o[l]);
    free(want), free(tok), free(epos);
    mxkeys_free(&m[0]);
    mxkeys_free(&m[1]);
    skv_reuse_selector_destroy(sel);
    skv_kcache_destroy(kc);
    skv_reuse_plan_destroy(plan);
    skv_context_destroy(ctx);
}

/* Allocation failure at each allocation of a paged (top-k and scores), a ragged and an MXFP4
 * cache call: a clear NOMEM (or success with the same result), nothing leaked. */
typedef struct fail_alloc { long n, fail_at, live; } fail_alloc;

static void *fa_alloc(void *user, size_t size, size_t align)
{
    fail_alloc *f = user;
    if (++f->n == f->fail_at)
        return NULL;
    f->live++;
    return aligned_alloc(align, (size + align - 1) / align * align);
}

static void fa_free(void *user, void *p, size_t size)
{
    fail_alloc *f = user;
    (void)size;
    if (p)
        f->live--;
    free(p);
}

static skv_status alloc_scenario(fail_alloc *fa, const mxkeys *m, const qbuf *o, int32_t *out)
{
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 2;
    cp.allocator = (skv_allocator){fa_alloc, fa_free, fa};
    skv_context *ctx;
    skv_status st = skv_context_create(&cp, &ctx);
    if (st != SKV_OK)
        return st;
    const int32_t k = 8, P = 16, D = m->D;
    int32_t table[8] = {3, 1, 0, 2, 7, 6, 5, 4}, len = (int32_t)m->L;
    const skv_paged_keys pk = {D, SKV_MXFP4_E2M1, P, NULL, 8, (size_t)P * (D / 2 + D / 32), (size_t)P * D / 2};
    uint8_t *pool = xmalloc(pk.block_bytes * 8);
    for (int32_t s = 0; s < len; s++) {
        uint8_t *blk = pool + (size_t)table[s / P] * pk.block_bytes;
        memcpy(blk + (size_t)(s % P) * D / 2, m->codes + (size_t)s * D / 2, (size_t)D / 2);
        memcpy(blk + pk.scale_offset + (size_t)(s % P) * D / 32, m->scales + (size_t)s * D / 32, (size_t)D / 32);
    }
    skv_paged_keys pk2 = pk;
    pk2.pool = pool;
    const skv_paged_batch pb = {1, table, 8, &len, NULL};
    skv_indexer_query q = o->q;
    q.n_tokens = 1;
    st = skv_paged_topk(ctx, &pk2, &pb, &q, k, out, NULL);
    if (st == SKV_OK) { /* the scores alone: their best key is the top-k's first */
        float *sc = xmalloc((size_t)len * 4);
        st = skv_paged_scores(ctx, &pk2, &pb, &q, sc, len);
        int32_t best = 0;
        for (int32_t s = 1; s < len; s++)
            best = sc[s] > sc[best] ? s : best;
        if (st == SKV_OK && best != out[0])
            st = SKV_ERR_STATE;
        free(sc);
    }
    const int32_t ks = 0, ke = len;
    if (st == SKV_OK) {
        q.positions = NULL;
        st = skv_indexer_topk_ragged(ctx, &q, &(skv_key_block){m->L, D, SKV_MXFP4_E2M1, m->codes, NULL, m->scales},
                                     &ks, &ke, k, 0, out + k, NULL);
    }
    skv_kcache *kc = NULL;
    if (st == SKV_OK) {
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.head_dim = D, kp.dtype = SKV_MXFP4_E2M1, kp.page_tokens = P, kp.pool_chunk = 4;
        st = skv_kcache_create(ctx, &kp, &kc);
    }
    int32_t seq;
    if (st == SKV_OK)
        st = skv_kcache_seq_create(kc, &seq);
    if (st == SKV_OK) {
        const skv_key_block kb = {m->L, D, SKV_F32, m->f32, NULL};
        st = skv_kcache_append(kc, seq, 0, &kb);
    }
    if (st == SKV_OK) {
        q.positions = o->q.positions;
        st = skv_kcache_topk(kc, seq, 0, &q, k, out + 2 * k, NULL);
    }
    skv_kcache_destroy(kc);
    skv_context_destroy(ctx);
    free(pool);
    return st;
}

static void test_alloc_failures(void)
{
    rng r = {5};
    mxkeys m;
    mxkeys_make(&m, &r, 120, 64, 0);
    qbuf o;
    qbuf_make(&o, &r, 1, 8, 64, SKV_FP8_E4M3, 120, 0);
    o.pos[0] = 119;
    int32_t want[24], got[24];
    fail_alloc fa = {0, 0, 0};
    CHECK_OK(alloc_scenario(&fa, &m, &o, want));
    const long total = fa.n;
    for (long at = 1; at <= total; at++) {
        fail_alloc f = {0, at, 0};
        memset(got, 0, sizeof got);
        const skv_status st = alloc_scenario(&f, &m, &o, got);
        CHECK(st == SKV_ERR_NOMEM || (st == SKV_OK && memcmp(got, want, sizeof got) == 0),
              "failing allocation %ld of %ld: %d", at, total, st);
        CHECK(f.live == 0, "failing allocation %ld: %ld blocks leaked", at, f.live);
    }
    CHECK(want[0] == want[8] && want[0] == want[16], "paged, ragged and cache disagree");
    qbuf_free(&o);
    mxkeys_free(&m);
}

/* bf16 gates: the results of f32 weights holding the same values, in every path. */
static void test_bf16_weights(void)
{
    rng r = {31};
    const int32_t T = 3, H = 16, D = 64, k = 20;
    const int64_t L = 2100;
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    mxkeys m;
    mxkeys_make(&m, &r, L, D, 0);
    const skv_key_block kb = mx_block(&m);
    qbuf o;
    qbuf_make(&o, &r, T, H, D, SKV_BF16, L, 0);
    uint16_t wb[T * H];
    for (int i = 0; i < T * H; i++) {
        wb[i] = skv_f32_to_bf16(o.w[i]);
        o.w[i] = skv_bf16_to_f32(wb[i]);
    }
    skv_indexer_query qb = o.q;
    qb.weights = NULL, qb.weights_bf16 = wb;
    float *pooled = xmalloc((size_t)(L / 16 + 1) * D * 4);
    CHECK_OK(skv_pool_keys(&kb, 16, pooled));
    const skv_pooled_keys pk = {16, pooled};
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.heads = 3, mp.block = 64, mp.min_length = 0;
    skv_hisa_params hp;
    skv_hisa_params_init(&hp);
    hp.block = 64, hp.blocks = 4, hp.min_length = 0;
    int32_t a[T * k], b[T * k];
    float as[T * k], bs[T * k];
    const int32_t ks[3] = {0, 500, 1000}, ke[3] = {(int32_t)L, 900, (int32_t)L - 1};
    for (int path = 0; path < 4; path++) {
        for (int side = 0; side < 2; side++) {
            skv_indexer_query qq = side ? qb : o.q;
            const skv_indexer_query *q = &qq;
            if (path == 3) {
                qq.positions = NULL;
                CHECK_OK(skv_indexer_topk_ragged(ctx, q, &kb, ks, ke, k, 0, side ? b : a, side ? bs : as));
                continue;
            }
            int32_t *oi = side ? b : a;
            float *os = side ? bs : as;
            if (path == 0)
                CHECK_OK(skv_indexer_topk(ctx, q, &kb, k, oi, os));
            else if (path == 1)
                CHECK_OK(skv_misa_topk(ctx, q, &kb, &pk, &mp, k, oi, os));
            else
                CHECK_OK(skv_hisa_topk(ctx, q, &kb, &pk, &hp, k, oi, os));
        }
        CHECK(same_topk(a, as, b, bs, (size_t)T * k), "path %d: bf16 weights differ from f32", path);
    }
    qb.weights = o.w; /* both given */
    CHECK_STATUS(skv_indexer_topk(ctx, &qb, &kb, k, a, NULL), SKV_ERR_INVALID_ARG);
    free(pooled);
    qbuf_free(&o);
    mxkeys_free(&m);
    skv_context_destroy(ctx);
}

int main(int argc, char **argv)
{
    quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    test_fp8_quant_options();
    test_mxfp4_quantiser();
    test_mx_convert();
    test_null_q_scale();
    test_forced();
    test_mx_badargs();
    test_mx_scores();
    test_mx_paths();
    test_paged();
    test_ragged();
    test_compressed();
    test_compressed_reuse();
    test_alloc_failures();
    test_bf16_weights();
    return test_summary("v4");
}
