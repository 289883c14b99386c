/* Core: status strings, version, context parameters, allocator and logger hooks, CPU flags and
 * mask, dtype conversions against independent oracles, and the fp8 quantiser against
 * hand-worked values. */
#include "common.h"

/* ---- an independent rounding oracle --------------------------------------------------------
 * The non-negative finite values of a format, ascending, with their codes; rounding x is the
 * nearest of them, ties to the even code (the mantissa's last bit). */
typedef struct format {
    double *val;
    uint32_t *code;
    int n;
    int saturate; /* beyond the largest: saturate (fp8) or overflow to infinity */
    uint32_t inf_code, nan_code;
} format;

static void format_add(format *f, double v, uint32_t c)
{
    f->val[f->n] = v;
    f->code[f->n++] = c;
}

static format make_fp8(void)
{
    format f = {xmalloc(256 * 8), xmalloc(256 * 4), 0, 1, 0, 0x7f};
    for (uint32_t c = 0; c < 0x7f; c++) { /* 0x7f is NaN */
        const int e = c >> 3, m = c & 7;
        format_add(&f, e == 0 ? m / 8.0 * ldexp(1, -6) : (1 + m / 8.0) * ldexp(1, e - 7), c);
    }
    return f;
}

static format make_ieee(int ebits, int mbits)
{
    const int n = 1 << (ebits + mbits), bias = (1 << (ebits - 1)) - 1;
    format f = {xmalloc((size_t)n * 8), xmalloc((size_t)n * 4), 0, 0, 0, 0};
    for (int c = 0; c < n; c++) {
        const int e = c >> mbits, m = c & ((1 << mbits) - 1);
        if (e == (1 << ebits) - 1)
            break;
        const double frac = (double)m / (1 << mbits);
        format_add(&f, e == 0 ? frac * ldexp(1, 1 - bias) : (1 + frac) * ldexp(1, e - bias), (uint32_t)c);
    }
    f.inf_code = (uint32_t)((1 << ebits) - 1) << mbits;
    f.nan_code = f.inf_code | (1u << (mbits - 1));
    return f;
}

/* Code of |x| (x >= 0, not NaN). */
static uint32_t oracle_round(const format *f, double x)
{
    const double max = f->val[f->n - 1], ulp = max - f->val[f->n - 2];
    if (x > max) {
        if (f->saturate || x < max + ulp / 2)
            return f->code[f->n - 1];
        return f->inf_code;
    }
    int lo = 0, hi = f->n - 1; /* val[lo] <= x <= val[hi] */
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (f->val[mid] <= x)
            lo = mid;
        else
            hi = mid;
    }
    if (f->val[lo] == x)
        return f->code[lo];
    const double dl = x - f->val[lo], dh = f->val[hi] - x;
    if (dl != dh)
        return dl < dh ? f->code[lo] : f->code[hi];
    return (f->code[lo] & 1) ? f->code[hi] : f->code[lo];
}

static float bits_f(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static uint32_t f_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* f32 patterns to try: a strided sweep of all 2^32 plus the neighbourhood of every value of
 * the target format (where rounding decides). */
static void check_narrowing(const char *name, const format *f, int bits, uint32_t (*conv)(float))
{
    const uint32_t sign_bit = 1u << (bits - 1);
    long bad = 0, n = 0;
    for (uint64_t u = 0; u < (1ull << 32); u += 2039) {
        const float x = bits_f((uint32_t)u);
        const uint32_t got = conv(x);
        uint32_t want;
        if (isnan(x))
            want = ((f_bits(x) >> 31) ? sign_bit : 0) | f->nan_code;
        else
            want = (signbit(x) ? sign_bit : 0) | oracle_round(f, fabs((double)x));
        const int ok = isnan(x) ? (got & ~sign_bit) != 0 && conv(x) == got &&
                                       ((got & ~sign_bit) & f->nan_code) == f->nan_code
                                : got == want;
        if (!ok && bad++ < 5)
            CHECK(ok, "%s(%a) = %#x, want %#x", name, x, got, want);
        n++;
    }
    for (int i = 0; i < f->n; i++)
        for (int sgn = 0; sgn < 2; sgn++) {
            const float base = (float)f->val[i];
            const uint32_t b = f_bits(base);
            for (int dlt = -3; dlt <= 3; dlt++) {
                const float x = bits_f((uint32_t)((int64_t)b + dlt)) * (sgn ? -1.0f : 1.0f);
                if (isnan(x) || isinf(x))
                    continue;
                const uint32_t want = (signbit(x) ? sign_bit : 0) | oracle_round(f, fabs((double)x));
                const uint32_t got = conv(x);
                if (got != want && bad++ < 5)
                    CHECK(got == want, "%s(%a) = %#x, want %#x", name, x, got, want);
                n++;
            }
            /* exact midpoints between neighbours */
            if (i + 1 < f->n) {
                const double mid = (f->val[i] + f->val[i + 1]) / 2;
                const float x = (float)mid * (sgn ? -1.0f : 1.0f);
                if ((double)fabsf(x) == mid) {
                    const uint32_t want = (sgn ? sign_bit : 0) | oracle_round(f, mid);
                    const uint32_t got = conv(x);
                    if (got != want && bad++ < 5)
                        CHECK(got == want, "%s(midpoint %a) = %#x, want %#x", name, x, got, want);
                    n++;
                }
            }
        }
    CHECK(bad == 0, "%s: %ld of %ld narrowings wrong", name, bad, n);
}

static uint32_t conv_fp8(float x) { return skv_f32_to_fp8(x); }
static uint32_t conv_bf16(float x) { return skv_f32_to_bf16(x); }
static uint32_t conv_f16(float x) { return skv_f32_to_f16(x); }

static void test_conversions(void)
{
    format f8 = make_fp8(), bf = make_ieee(8, 7), hf = make_ieee(5, 10);

    /* widening: every code, exact */
    for (uint32_t c = 0; c < 256; c++) {
        const float got = skv_fp8_to_f32((uint8_t)c);
        const uint32_t mag = c & 0x7f;
        if (mag == 0x7f) {
            CHECK(isnan(got), "fp8 %#x should be NaN", c);
        } else {
            const double want = (c & 0x80 ? -1 : 1) * f8.val[mag];
            CHECK((double)got == want && !!signbit(got) == !!(c & 0x80), "fp8 %#x -> %a", c, got);
            CHECK(skv_f32_to_fp8(got) == c, "fp8 %#x does not round-trip", c);
        }
    }
    for (uint32_t c = 0; c < 65536; c++) {
        const float b = skv_bf16_to_f32((uint16_t)c), h = skv_f16_to_f32((uint16_t)c);
        CHECK(f_bits(b) == c << 16, "bf16 %#x", c);
        const uint32_t hm = c & 0x7fff;
        if (hm > 0x7c00)
            CHECK(isnan(h), "f16 %#x should be NaN", c);
        else if (hm == 0x7c00)
            CHECK(isinf(h) && !!signbit(h) == !!(c & 0x8000), "f16 %#x should be inf", c);
        else
            CHECK((double)fabsf(h) == hf.val[hm] && !!signbit(h) == !!(c & 0x8000), "f16 %#x", c);
        if (hm <= 0x7c00) {
            CHECK(skv_f32_to_f16(h) == c, "f16 %#x does not round-trip", c);
            CHECK(skv_f32_to_bf16(b) == c || (c & 0x7fff) > 0x7f80, "bf16 %#x does not round-trip", c);
        }
    }

    /* narrowing against the oracle */
    check_narrowing("f32_to_fp8", &f8, 8, conv_fp8);
    check_narrowing("f32_to_bf16", &bf, 16, conv_bf16);
    check_narrowing("f32_to_f16", &hf, 16, conv_f16);

    /* hand-worked fp8 values */
    CHECK(skv_f32_to_fp8(1.0f) == 0x38, "1.0");
    CHECK(skv_f32_to_fp8(-1.0f) == 0xb8, "-1.0");
    CHECK(skv_f32_to_fp8(1.0625f) == 0x38, "1.0625 ties to even 1.0");
    CHECK(skv_f32_to_fp8(1.1875f) == 0x3a, "1.1875 ties to even 1.25");
    CHECK(skv_f32_to_fp8(1.07f) == 0x39, "1.07 rounds to 1.125");
    CHECK(skv_f32_to_fp8(448.0f) == 0x7e, "448 is the max");
    CHECK(skv_f32_to_fp8(464.0f) == 0x7e, "464 saturates");
    CHECK(skv_f32_to_fp8(1e9f) == 0x7e && skv_f32_to_fp8(-1e9f) == 0xfe, "saturation");
    CHECK(skv_f32_to_fp8(INFINITY) == 0x7e && skv_f32_to_fp8(-INFINITY) == 0xfe, "inf saturates");
    CHECK((skv_f32_to_fp8(NAN) & 0x7f) == 0x7f, "NaN");
    CHECK(skv_f32_to_fp8(0x1p-9f) == 0x01, "min subnormal");
    CHECK(skv_f32_to_fp8(0x1p-10f) == 0x00, "half the min subnormal ties to 0");
    CHECK(skv_f32_to_fp8(0x1.8p-10f) == 0x01, "0.75 of the min subnormal rounds up");
    CHECK(skv_f32_to_fp8(0x1.8p-9f) == 0x02, "1.5 x min subnormal ties to even 2");
    CHECK(skv_f32_to_fp8(0x1.4p-8f) == 0x02, "2.5 x min subnormal ties to even 2");
    CHECK(skv_f32_to_fp8(0x1.ep-7f) == 0x08, "15/16 of the min normal ties up to it");
    CHECK(skv_f32_to_fp8(-0.0f) == 0x80 && skv_f32_to_fp8(1e-30f) == 0x00, "zeros");
    CHECK(skv_f32_to_bf16(1.00390625f) == 0x3f80, "bf16 tie to even");
    CHECK(skv_f32_to_bf16(1.01171875f) == 0x3f82, "bf16 tie to even (up)");
    CHECK(skv_f32_to_f16(65504.0f) == 0x7bff && skv_f32_to_f16(65520.0f) == 0x7c00, "f16 overflow");
    CHECK(skv_f32_to_f16(0x1p-24f) == 0x0001 && skv_f32_to_f16(0x1p-25f) == 0x0000, "f16 subnormals");

    /* skv_convert: any pair of dtypes equals the scalar functions through f32 */
    static const skv_dtype ts[] = {SKV_F32, SKV_BF16, SKV_F16, SKV_FP8_E4M3};
    rng r = {5};
    float src32[300];
    for (int i = 0; i < 300; i++)
        src32[i] = (float)rng_uniform(&r, -500, 500) * (i % 7 == 0 ? 1e-4f : 1.0f);
    src32[0] = NAN, src32[1] = INFINITY, src32[2] = -0.0f;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) {
            uint8_t src[1200], dst[1200];
            skv_convert(ts[a], src, SKV_F32, src32, 300);
            memset(dst, 0xcd, sizeof dst);
            CHECK_OK(skv_convert(ts[b], dst, ts[a], src, 299));
            long bad = 0;
            for (int i = 0; i < 299; i++) {
                float v;
                skv_convert(SKV_F32, &v, ts[a], src + i * skv_dtype_size(ts[a]), 1);
                uint8_t want[4];
                switch (ts[b]) {
                case SKV_F32: memcpy(want, &v, 4); break;
                case SKV_BF16: { uint16_t x = skv_f32_to_bf16(v); memcpy(want, &x, 2); } break;
                case SKV_F16: { uint16_t x = skv_f32_to_f16(v); memcpy(want, &x, 2); } break;
                case SKV_FP8_E4M3: want[0] = skv_f32_to_fp8(v); break;
                case SKV_MXFP4_E2M1:
                case SKV_Q8_0: break;
                }
                bad += memcmp(dst + i * skv_dtype_size(ts[b]), want, skv_dtype_size(ts[b])) != 0;
            }
            CHECK(bad == 0, "convert %d -> %d: %ld wrong", a, b, bad);
            CHECK(dst[299 * skv_dtype_size(ts[b])] == 0xcd, "convert %d -> %d wrote past n", a, b);
        }
    CHECK(skv_dtype_size(SKV_F32) == 4 && skv_dtype_size(SKV_BF16) == 2 &&
              skv_dtype_size(SKV_F16) == 2 && skv_dtype_size(SKV_FP8_E4M3) == 1 &&
              skv_dtype_size((skv_dtype)9) == 0, "dtype sizes");
    free(f8.val), free(f8.code), free(bf.val), free(bf.code), free(hf.val), free(hf.code);
}

/* The quantiser: hand-worked rows. 1/448 in f32 is 0x1.24924ap-9 (rounded up). */
static void test_quantizer(void)
{
    const float inv448 = 1.0f / 448.0f;
    CHECK(f_bits(inv448) == f_bits(0x1.24924ap-9f), "1/448 in f32");
    uint8_t out[8];
    float s;

    /* amax 2: scale 2/448; 2 -> 448 exactly representable after division? 2/s rounds to 448 */
    const float row1[4] = {1.0f, -2.0f, 0.5f, 0.0f};
    CHECK_OK(skv_quantize_fp8(row1, 1, 4, 4, 0, out, &s));
    CHECK(s == 2.0f * inv448, "scale %a", s);
    CHECK(out[1] == 0xfe && out[0] == 0x76 && out[2] == 0x6e && out[3] == 0x00,
          "codes %#x %#x %#x %#x", out[0], out[1], out[2], out[3]);

    /* an all-zero row: the amax floor 1e-4 */
    const float zeros[3] = {0, 0, -0.0f};
    CHECK_OK(skv_quantize_fp8(zeros, 1, 3, 3, 0, out, &s));
    CHECK(s == 1e-4f * inv448 && out[0] == 0 && out[1] == 0 && out[2] == 0x80, "floor: scale %a", s);
    CHECK_OK(skv_quantize_fp8(zeros, 1, 3, 3, SKV_QUANT_POW2_SCALE, out, &s));
    CHECK(s == 0x1p-22f, "floor, pow2: scale %a (1e-4/448 = 2^-22.1 rounds up to 2^-22)", s);

    /* power-of-two scales: amax 1 -> 2^-8.8 -> 2^-8; amax 1.75 -> exactly 2^-8 stays 2^-8 */
    const float one[2] = {1.0f, 0.25f};
    CHECK_OK(skv_quantize_fp8(one, 1, 2, 2, SKV_QUANT_POW2_SCALE, out, &s));
    CHECK(s == 0x1p-8f && out[0] == skv_f32_to_fp8(256.0f) && out[1] == skv_f32_to_fp8(64.0f),
          "pow2 amax 1: %a", s);
    /* RNE after dividing by an exact power of two: 1.0625 -> 1.0 and 1.1875 -> 1.25 */
    const float ties[3] = {1.75f, 1.0625f * 0x1p-8f, 1.1875f * 0x1p-8f};
    CHECK_OK(skv_quantize_fp8(ties, 1, 3, 3, SKV_QUANT_POW2_SCALE, out, &s));
    CHECK(s == 0x1p-8f, "1.75 * fl(1/448) rounds to exactly 2^-8: %a", s);
    CHECK(out[0] == 0x7e && out[1] == 0x38 && out[2] == 0x3a, "codes %#x %#x %#x", out[0], out[1], out[2]);

    /* subnormal outputs, saturation of infinities, NaN kept and out of amax; row stride */
    const float mixed[2][5] = {{1.0f, 1e-5f, INFINITY, NAN, -3e-6f}, {9, 9, 9, 9, 9}};
    CHECK_OK(skv_quantize_fp8(&mixed[0][0], 1, 4, 5, 0, out, &s));
    CHECK(s == inv448, "inf and NaN stay out of amax: %a", s);
    CHECK(out[1] == 0x02, "1e-5 / s = 0.00448 = 2.29 x 2^-9 -> subnormal 2: %#x", out[1]);
    CHECK(out[2] == 0x7e && (out[3] & 0x7f) == 0x7f, "inf saturates, NaN stays: %#x %#x", out[2], out[3]);
    float s2[2];
    uint8_t o2[8];
    CHECK_OK(skv_quantize_fp8(&mixed[0][0], 2, 3, 5, 0, o2, s2));
    CHECK(s2[0] == inv448 && s2[1] == 9.0f * inv448 && o2[3] == 0x7e, "two rows with stride");
}

/* ---- context, allocator, logger, CPU flags ------------------------------------------------ */

typedef struct counting { long allocs, frees; long long live; } counting;

static void *c_alloc(void *user, size_t size, size_t align)
{
    counting *c = user;
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    if (p) {
        c->allocs++;
        c->live += (long long)size;
        CHECK(((uintptr_t)p & (align - 1)) == 0 && align >= 64, "alignment %zu", align);
    }
    return p;
}

static void c_free(void *user, void *p, size_t size)
{
    counting *c = user;
    c->frees++;
    c->live -= (long long)size;
    free(p);
}

typedef struct logbook { int n[4]; char last[256]; } logbook;

static void logger(void *user, skv_log_level lvl, const char *msg)
{
    logbook *b = user;
    b->n[lvl]++;
    snprintf(b->last, sizeof b->last, "%s", msg);
}

static void test_context(void)
{
    skv_context_params p;
    skv_context_params_init(&p);
    CHECK(p.struct_size == sizeof p && p.n_threads == 0 && p.cpu_mask == SKV_CPU_ALL &&
              p.allocator.alloc == NULL && p.log == NULL && p.log_level == SKV_LOG_WARN,
          "defaults");

    skv_context *ctx = NULL;
    CHECK_OK(skv_context_create(NULL, &ctx));
    CHECK(ctx != NULL && skv_context_cpu_flags(ctx) == skv_cpu_flags(), "NULL params = defaults");
    CHECK(skv_context_memory(ctx) > 0, "memory");
    skv_context_destroy(ctx);
    skv_context_destroy(NULL);

    /* allocator hooks carry every allocation, and everything comes back */
    counting cnt = {0};
    logbook book = {{0}, ""};
    skv_context_params_init(&p);
    p.allocator = (skv_allocator){c_alloc, c_free, &cnt};
    p.log = logger;
    p.log_user = &book;
    p.log_level = SKV_LOG_INFO;
    CHECK_OK(skv_context_create(&p, &ctx));
    CHECK(cnt.allocs == 1 && book.n[SKV_LOG_INFO] >= 1 && strstr(book.last, "sparsekv") != NULL,
          "create: %ld allocs, log '%s'", cnt.allocs, book.last);
    rng r = {3};
    idx_data d;
    idx_data_make(&d, &r, 2, 8, 16, 3000, SKV_F32, SKV_F32, FILL_RANDOM, 0);
    const skv_indexer_query q = idx_query(&d);
    const skv_key_block kb = idx_keys(&d);
    int32_t idx[2 * 10];
    const size_t before = skv_context_memory(ctx);
    CHECK_OK(skv_indexer_topk(ctx, &q, &kb, 10, idx, NULL));
    CHECK(skv_context_memory(ctx) > before && cnt.allocs > 1, "workspace through the hooks");
    const long allocs = cnt.allocs;
    CHECK_OK(skv_indexer_topk(ctx, &q, &kb, 10, idx, NULL));
    CHECK(cnt.allocs == allocs, "workspace is reused across calls");
    skv_context_destroy(ctx);
    CHECK(cnt.live == 0 && cnt.allocs == cnt.frees, "leak: %lld bytes, %ld/%ld", cnt.live, cnt.allocs, cnt.frees);
    idx_data_free(&d);

    /* the log level filters */
    memset(&book, 0, sizeof book);
    p.log_level = SKV_LOG_WARN;
    CHECK_OK(skv_context_create(&p, &ctx));
    CHECK(book.n[SKV_LOG_INFO] == 0, "INFO delivered at WARN level");
    skv_context_destroy(ctx);

    /* CPU mask: levels are cumulative; 0 is scalar */
    skv_context *c0 = ctx_new(0, 1);
    CHECK(skv_context_cpu_flags(c0) == 0 && strcmp(skv_cpu_level_name(0), "scalar") == 0, "scalar");
    skv_context_destroy(c0);
    c0 = ctx_new(SKV_CPU_AVX512, 1); /* without AVX2 the chain stops at scalar */
    CHECK(skv_context_cpu_flags(c0) == 0, "mask without the lower level");
    skv_context_destroy(c0);
    for (int lv = 1; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        c0 = ctx_new(all_levels[lv].mask, 1);
        CHECK(skv_context_cpu_flags(c0) == all_levels[lv].mask &&
                  strcmp(skv_cpu_level_name(skv_context_cpu_flags(c0)), all_levels[lv].name) == 0,
              "level %s", all_levels[lv].name);
        skv_context_destroy(c0);
    }
    const uint32_t f = skv_cpu_flags();
    CHECK(!(f & SKV_CPU_AVX512) || (f & SKV_CPU_AVX2), "flags are cumulative");
    CHECK(!(f & SKV_CPU_AVX512BF16) || (f & SKV_CPU_AVX512), "flags are cumulative");
    printf("cpu: %s\n", skv_cpu_level_name(f));
}

static void test_status(void)
{
    const skv_status all[] = {SKV_OK, SKV_ERR_INVALID_ARG, SKV_ERR_NOMEM, SKV_ERR_UNSUPPORTED,
                              SKV_ERR_CAPACITY, SKV_ERR_STATE, SKV_ERR_IO};
    CHECK(SKV_OK == 0 && SKV_ERR_INVALID_ARG == -1 && SKV_ERR_NOMEM == -2 &&
              SKV_ERR_UNSUPPORTED == -3 && SKV_ERR_CAPACITY == -4 && SKV_ERR_STATE == -5 &&
              SKV_ERR_IO == -6, "frozen values");
    for (int i = 0; i < 7; i++) {
        const char *s = skv_status_string(all[i]);
        CHECK(s && *s && strcmp(s, "unknown status") != 0, "string of %d", all[i]);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(s, skv_status_string(all[j])) != 0, "distinct strings %d %d", i, j);
    }
    CHECK(strcmp(skv_status_string((skv_status)-99), "unknown status") == 0, "unknown");
    CHECK(skv_version() == SKV_API_VERSION, "version");
}

int main(void)
{
    test_status();
    test_context();
    test_conversions();
    test_quantizer();
    return test_summary("test_core");
}
