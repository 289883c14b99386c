/* Kernel checks in the manner of dav1d's checkasm: every kernel of every CPU level against the
 * scalar C reference on random inputs from a fixed seed — ragged sizes, odd dims, strides,
 * scales, NaN and Inf — plus the property the determinism guarantee rests on: a key's score
 * does not depend on how keys are tiled. `--bench` also times each level's score kernel
 * against the scalar one. */
#include <time.h>

#include "common.h"
#include "kernels/kernels.h"

static size_t skv_round_up_test(size_t x) { return (x + 63) / 64 * 64; }

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct score_case {
    int32_t H, D, n, stride;
    int scaled;
    skv_dtype qt;
    float *q32, *w, *qs, *k32, *ks;
    void *q;    /* q in qt */
    uint16_t *kb; /* keys in bf16 (for the bf16 kernel) */
    float *kf;    /* keys widened from kb (exact) */
} score_case;

static void make_case(score_case *c, rng *r, int32_t H, int32_t D, int32_t n, int special)
{
    memset(c, 0, sizeof *c);
    c->H = H, c->D = D, c->n = n, c->stride = D + (int32_t)rng_int(r, 0, 3);
    c->scaled = (int)rng_int(r, 0, 1);
    static const skv_dtype qts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    c->qt = qts[rng_int(r, 0, 2)];
    c->q32 = xmalloc((size_t)H * D * 4);
    c->w = xmalloc((size_t)H * 4);
    c->qs = xmalloc((size_t)H * 4);
    c->ks = xmalloc((size_t)n * 4);
    c->kb = xmalloc((size_t)n * c->stride * 2);
    c->kf = xmalloc((size_t)n * c->stride * 4);
    for (int64_t i = 0; i < (int64_t)H * D; i++)
        c->q32[i] = (float)rng_uniform(r, -1, 1);
    /* scales are positive (the folded form) except in some cases: negative, zero, infinite */
    const int odd_scales = rng_int(r, 0, 3) == 0;
    static const float odd[] = {-0.5f, 0.0f, INFINITY, -2.0f};
    for (int32_t h = 0; h < H; h++) {
        c->w[h] = (float)rng_uniform(r, -1, 1);
        c->qs[h] = odd_scales && rng_int(r, 0, 3) == 0 ? odd[rng_int(r, 0, 3)] : (float)rng_uniform(r, 0.001, 2);
    }
    for (int32_t j = 0; j < n; j++) {
        c->ks[j] = odd_scales && rng_int(r, 0, 3) == 0 ? odd[rng_int(r, 0, 3)] : (float)rng_uniform(r, 0.001, 2);
        for (int32_t d = 0; d < c->stride; d++) {
            const float v = d < D ? (float)rng_uniform(r, -1, 1) : NAN; /* pad: must never be read */
            c->kb[(size_t)j * c->stride + d] = skv_f32_to_bf16(v);
        }
    }
    if (special) { /* Inf and NaN in keys and in one head of q */
        for (int s = 0; s < 3; s++) {
            const int32_t j = (int32_t)rng_int(r, 0, n - 1), d = (int32_t)rng_int(r, 0, D - 1);
            c->kb[(size_t)j * c->stride + d] = s == 0 ? 0x7fc0 : s == 1 ? 0x7f80 : 0xff80;
        }
        c->q32[rng_int(r, 0, (int64_t)H * D - 1)] = rng_int(r, 0, 1) ? NAN : INFINITY;
    }
    for (int64_t i = 0; i < (int64_t)n * c->stride; i++)
        c->kf[i] = skv_bf16_to_f32(c->kb[i]);
    if (c->qt == SKV_F32) {
        c->q = xmalloc((size_t)H * D * 4);
        memcpy(c->q, c->q32, (size_t)H * D * 4);
    } else if (c->qt == SKV_BF16) {
        c->q = xmalloc((size_t)H * D * 2);
        skv_convert(SKV_BF16, c->q, SKV_F32, c->q32, (int64_t)H * D);
    } else {
        c->q = xmalloc((size_t)H * D);
        skv_convert(SKV_FP8_E4M3, c->q, SKV_F32, c->q32, (int64_t)H * D);
    }
}

static void free_case(score_case *c)
{
    free(c->q32), free(c->w), free(c->qs), free(c->ks), free(c->kb), free(c->kf), free(c->q);
}

/* Runs one score kernel: pack, then n keys. */
static void run_score(const skv_score_kernel *sk, const score_case *c, const void *keys,
                      int32_t first, int32_t n, float *out)
{
    const skv_qpack_args a = {c->q, c->qt, c->scaled ? c->qs : NULL, c->w, c->H, c->D, c->scaled};
    void *pack = aligned_alloc(64, skv_round_up_test(sk->pack_size(c->H, c->D)));
    sk->pack(pack, &a);
    const size_t esize = sk->compute == SKV_BF16 ? 2 : 4;
    sk->score(pack, (const uint8_t *)keys + (size_t)first * c->stride * esize, (size_t)c->stride,
              c->scaled ? c->ks + first : NULL, n, out);
    free(pack);
}

/* Error scale of key j: sum_h |w| * |s_h| * sum_d |q k|. */
static double case_mag(const score_case *c, int32_t j)
{
    double m = 0;
    for (int32_t h = 0; h < c->H; h++) {
        double a = 0;
        for (int32_t d = 0; d < c->D; d++) {
            const double qv = c->qt == SKV_F32 ? c->q32[h * c->D + d]
                              : c->qt == SKV_BF16 ? skv_bf16_to_f32(((uint16_t *)c->q)[h * c->D + d])
                                                  : skv_fp8_to_f32(((uint8_t *)c->q)[h * c->D + d]);
            a += fabs(qv * c->kf[(size_t)j * c->stride + d]);
        }
        m += fabs(c->w[h]) * a * (c->scaled ? fabs((double)c->qs[h] * c->ks[j]) : 1);
    }
    return m;
}

/* A kernel's score of key j against the scalar reference's: NaN and Inf alike, otherwise
 * within the rounding of D products and H heads. */
static int close_to_scalar(const score_case *c, int32_t j, float got, float want)
{
    const double tol = 4.0 * (c->D + c->H + 8) * 0x1p-24 * case_mag(c, j) + 1e-30;
    return isnan(want) ? isnan(got) : isinf(want) ? got == want : fabs((double)got - want) <= tol;
}

static void check_score_kernels(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    rng r = {1234};
    long bad = 0, tiling = 0, trials = 0;
    static const int32_t Hs[] = {1, 7, 16, 17, 32, 33, 48, 63, 64, 65, 100, 128};
    /* few heads with dims that lane groups divide (g = 2 .. 16), then anything */
    static const int32_t Hg[] = {1, 2, 3, 4, 5, 8}, Dg[] = {32, 64, 96, 128, 48, 16, 8, 2};
    for (int t = 0; t < 496; t++) {
        const int32_t H = t < 48 ? Hs[t % 12] : t < 96 ? Hg[t % 6] : (int32_t)rng_int(&r, 1, 140);
        const int32_t D = t < 48 ? (t % 4 == 0 ? 128 : 16 + t % 7)
                          : t < 96 ? Dg[(t / 6) % 8] : (int32_t)rng_int(&r, 1, 140);
        const int32_t n = (int32_t)rng_int(&r, 1, 41);
        score_case c;
        make_case(&c, &r, H, D, n, t % 5 == 4);
        float *want = xmalloc((size_t)n * 4), *got = xmalloc((size_t)n * 4), *one = xmalloc(4);
        run_score(&ref->score_f32, &c, c.kf, 0, n, want);
        for (int which = 0; which < 2; which++) {
            const skv_score_kernel *sk = which ? &kn->score_bf16 : &kn->score_f32;
            if (!sk->pack_size)
                continue;
            if (which && c.qt == SKV_F32)
                continue; /* the bf16 kernel serves bf16 and fp8 queries only */
            const void *keys = which ? (const void *)c.kb : (const void *)c.kf;
            run_score(sk, &c, keys, 0, n, got);
            for (int32_t j = 0; j < n; j++) {
                const int ok = close_to_scalar(&c, j, got[j], want[j]);
                if (!ok && bad++ < 5)
                    CHECK(ok, "%s %s H=%d D=%d n=%d j=%d scaled=%d qt=%d: %.9g vs scalar %.9g",
                          lv, which ? "bf16" : "f32", H, D, n, j, c.scaled, c.qt, got[j], want[j]);
                run_score(sk, &c, keys, j, 1, one);
                if (!same_float(one[0], got[j]) && tiling++ < 5)
                    CHECK(0, "%s %s H=%d D=%d: key %d alone %.9g, in a tile of %d %.9g", lv,
                          which ? "bf16" : "f32", H, D, j, one[0], n, got[j]);
            }
            trials++;
        }
        free(want), free(got), free(one);
        free_case(&c);
    }
    CHECK(bad == 0, "%s: %ld scores differ from the scalar reference", lv, bad);
    CHECK(tiling == 0, "%s: %ld scores depend on tiling", lv, tiling);
    printf("%s: %ld score-kernel trials\n", lv, trials);
}

static void check_conversions(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    rng r = {99};
    uint8_t src8[600];
    uint16_t src16[600];
    for (int i = 0; i < 600; i++) {
        src8[i] = (uint8_t)(i < 256 ? i : rng_int(&r, 0, 255));
        src16[i] = (uint16_t)(i < 4 ? (uint16_t[]){0x7fc0, 0x7f80, 0x8000, 0x0001}[i] : rng_int(&r, 0, 65535));
    }
    for (int n = 0; n <= 300; n += (n < 70 ? 1 : 37)) {
        const int off = (int)rng_int(&r, 0, 200);
        float a[320], b[320];
        uint16_t c[320], d[320];
        memset(a, 0x5a, sizeof a), memset(b, 0x5a, sizeof b), memset(c, 0x5a, sizeof c), memset(d, 0x5a, sizeof d);
        ref->fp8_to_f32(src8 + off, a, n);
        kn->fp8_to_f32(src8 + off, b, n);
        CHECK(memcmp(a, b, sizeof a) == 0, "%s fp8_to_f32 n=%d", lv, n);
        ref->fp8_to_bf16(src8 + off, c, n);
        kn->fp8_to_bf16(src8 + off, d, n);
        CHECK(memcmp(c, d, sizeof c) == 0, "%s fp8_to_bf16 n=%d", lv, n);
        ref->bf16_to_f32(src16 + off, a, n);
        kn->bf16_to_f32(src16 + off, b, n);
        CHECK(memcmp(a, b, sizeof a) == 0, "%s bf16_to_f32 n=%d", lv, n);
    }
}

/* MXFP4 blocks to f32 and bf16: the same bits as the scalar code for every code and every
 * scale byte (0: the smallest, 255: NaN), any block count. */
static void check_mxfp4_conversions(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    rng r = {31};
    enum { NB = 9 };
    uint8_t packed[NB * 16], scales[NB];
    float a[NB * 32], b[NB * 32];
    uint16_t c[NB * 32], d[NB * 32];
    for (int t = 0; t < 256; t++) {
        const int n = t % (NB + 1);
        for (int i = 0; i < NB * 16; i++)
            packed[i] = (uint8_t)(t < 16 ? (t * 17 + i) : rng_int(&r, 0, 255)); /* every code */
        for (int i = 0; i < NB; i++)
            scales[i] = (uint8_t)(i == 0 ? t : rng_int(&r, 0, 255));
        memset(a, 0x5a, sizeof a), memset(b, 0x5a, sizeof b), memset(c, 0x5a, sizeof c), memset(d, 0x5a, sizeof d);
        ref->mxfp4_to_f32(packed, scales, n, a);
        kn->mxfp4_to_f32(packed, scales, n, b);
        CHECK(memcmp(a, b, sizeof a) == 0, "%s mxfp4_to_f32 blocks=%d scale=%d", lv, n, t);
        ref->mxfp4_to_bf16(packed, scales, n, c);
        kn->mxfp4_to_bf16(packed, scales, n, d);
        CHECK(memcmp(c, d, sizeof c) == 0, "%s mxfp4_to_bf16 blocks=%d scale=%d", lv, n, t);
    }
}

static void check_filter(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    rng r = {7};
    float s[400];
    uint32_t ka[420], kb2[420];
    int32_t ia[420], ib[420];
    long bad = 0;
    for (int t = 0; t < 3000; t++) {
        const int32_t n = (int32_t)rng_int(&r, 0, 400);
        for (int32_t j = 0; j < n; j++) {
            const int64_t u = rng_int(&r, 0, 20);
            s[j] = u == 0 ? NAN : u == 1 ? -NAN : u == 2 ? INFINITY : u == 3 ? -INFINITY
                   : u == 4 ? 0.0f : u == 5 ? -0.0f : u < 9 ? (float)rng_int(&r, -3, 3)
                                                    : (float)rng_uniform(&r, -10, 10);
        }
        /* thresholds: keys of values present, and the extremes */
        const float tv = n ? s[rng_int(&r, 0, n - 1)] : 0.0f;
        union { float f; uint32_t u; } cv = {tv + 0.0f};
        uint32_t thr = tv != tv ? 0 : cv.u ^ ((uint32_t)((int32_t)cv.u >> 31) | 0x80000000u);
        if (t % 10 == 0)
            thr = 0;
        if (t % 10 == 1)
            thr = 0xffffffffu;
        memset(kb2, 0, sizeof kb2);
        const int32_t base = (int32_t)rng_int(&r, 0, 1 << 20);
        const int all = t % 10 == 2;
        const int32_t m1 = ref->filter(s, n, base, thr, all, ka, ia);
        const int32_t m2 = kn->filter(s, n, base, thr, all, kb2, ib);
        CHECK(!all || m1 == n, "%s: filter with all kept %d of %d", lv, m1, n);
        const int ok = m1 == m2 && memcmp(ka, kb2, (size_t)m1 * 4) == 0 && memcmp(ia, ib, (size_t)m1 * 4) == 0;
        if (!ok && bad++ < 3)
            CHECK(ok, "%s filter n=%d thr=%#x: %d vs %d candidates", lv, n, thr, m2, m1);
        for (int32_t j = m2 + 16; j < 420; j++)
            if (kb2[j] != 0 && bad++ < 3)
                CHECK(0, "%s filter wrote past count + 16", lv);
    }
    CHECK(bad == 0, "%s filter: %ld mismatches", lv, bad);
}

/* The top-k cut's passes: key_range, in_range (with and without reaching its cap) and keep
 * (every tie count against need, in place, nothing written past n), on keys with heavy ties,
 * the extremes 0 and UINT32_MAX, and ragged lengths. */
static void check_topk_cuts(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    enum { MAXN = 300, GUARD = 20 };
    rng r = {11};
    uint32_t key[MAXN], ka[MAXN + GUARD], kb[MAXN + GUARD], fa[MAXN + 16], fb[MAXN + 16];
    int32_t ia[MAXN + GUARD], ib[MAXN + GUARD];
    long bad = 0;
    for (int t = 0; t < 4000; t++) {
        const int32_t n = (int32_t)rng_int(&r, t % 7 == 0 ? 0 : 1, MAXN);
        const int few = t % 3 == 0; /* values from a handful: many ties */
        for (int32_t i = 0; i < n; i++) {
            const int64_t u = rng_int(&r, 0, 30);
            key[i] = u == 0 ? 0u : u == 1 ? UINT32_MAX
                     : few ? 0x80000000u + (uint32_t)rng_int(&r, 0, 4)
                           : (uint32_t)rng_int(&r, 0, INT32_MAX) * 2u + (uint32_t)(u & 1);
        }
        if (n > 0) {
            uint32_t lo1, hi1, lo2, hi2;
            ref->key_range(key, n, &lo1, &hi1);
            kn->key_range(key, n, &lo2, &hi2);
            if ((lo1 != lo2 || hi1 != hi2) && bad++ < 3)
                CHECK(0, "%s key_range n=%d: [%#x, %#x] vs [%#x, %#x]", lv, n, lo2, hi2, lo1, hi1);
        }
        const uint32_t a = n ? key[rng_int(&r, 0, n - 1)] : 0, b = n ? key[rng_int(&r, 0, n - 1)] : 0;
        const uint32_t lo = a < b ? a : b, span = (a < b ? b : a) - lo;
        const int32_t cap = (int32_t)rng_int(&r, 1, MAXN);
        const int32_t m1 = ref->in_range(key, n, lo, span, fa, cap);
        const int32_t m2 = kn->in_range(key, n, lo, span, fb, cap);
        const int ok = m1 < cap ? m1 == m2 && memcmp(fa, fb, (size_t)m1 * 4) == 0 : m2 >= cap;
        if (!ok && bad++ < 3)
            CHECK(0, "%s in_range n=%d cap=%d: %d vs %d", lv, n, cap, m2, m1);

        const uint32_t kth = n ? key[rng_int(&r, 0, n - 1)] : 0;
        const int64_t need = rng_int(&r, -2, n + 2);
        for (int32_t i = 0; i < MAXN + GUARD; i++) {
            ka[i] = kb[i] = i < n ? key[i] : 0xdeadbeefu;
            ia[i] = ib[i] = i < n ? (int32_t)rng_int(&r, 0, 1 << 30) : -7;
        }
        const int32_t c1 = ref->keep(ka, ia, n, kth, need);
        const int32_t c2 = kn->keep(kb, ib, n, kth, need);
        int32_t gt = 0, eq = 0;
        for (int32_t i = 0; i < n; i++) {
            gt += key[i] > kth;
            eq += key[i] == kth;
        }
        const int32_t want = gt + (need <= 0 ? 0 : need < eq ? (int32_t)need : eq);
        const int okk = c1 == want && c2 == c1 && memcmp(ka, kb, (size_t)c1 * 4) == 0 &&
                        memcmp(ia, ib, (size_t)c1 * 4) == 0;
        if (!okk && bad++ < 3)
            CHECK(0, "%s keep n=%d need=%lld: %d vs %d (want %d)", lv, n, (long long)need, c2, c1, want);
        for (int32_t i = n; i < MAXN + GUARD; i++)
            if ((kb[i] != 0xdeadbeefu || ib[i] != -7) && bad++ < 3)
                CHECK(0, "%s keep wrote past n=%d", lv, n);
    }
    CHECK(bad == 0, "%s top-k cuts: %ld mismatches", lv, bad);
}

/* The keys-in-lanes kernel (few heads, D a multiple of 32): the transposed layout exactly, its
 * scores against the scalar reference, and a key's score alone equal to the same key in a
 * tile. */
static void check_lanes_kernel(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    if (!kn->lanes.to_lanes)
        return;
    rng r = {77};
    long bad = 0, layout = 0, tiling = 0;
    static const int32_t Ds[] = {32, 64, 96, 128};
    for (int t = 0; t < 240; t++) {
        const int32_t H = 1 + t % SKV_LANES_MAX_HEADS, D = Ds[(t / 8) % 4];
        const int32_t n = t % 3 == 0 ? (int32_t)rng_int(&r, 1, 40) : (int32_t)rng_int(&r, 1, 300);
        score_case c;
        make_case(&c, &r, H, D, n, t % 5 == 4);
        if (c.qt == SKV_F32) { /* the bf16 pack serves bf16 and fp8 queries */
            free_case(&c);
            continue;
        }
        const int32_t units = D / 2, tiles = (n + 15) / 16;
        uint16_t *rows = xmalloc((size_t)n * D * 2);
        for (int32_t j = 0; j < n; j++)
            memcpy(rows + (size_t)j * D, c.kb + (size_t)j * c.stride, (size_t)D * 2);
        uint32_t *lanes = xmalloc((size_t)tiles * units * 16 * 4), *one_lane = xmalloc((size_t)units * 16 * 4);
        /* fp8 rows straight into lanes: the same as converting them, then to_lanes */
        uint8_t *f8 = xmalloc((size_t)n * D);
        const void **f8rows = xmalloc((size_t)n * sizeof *f8rows);
        for (int32_t j = 0; j < n; j++) {
            for (int32_t d = 0; d < D; d++)
                f8[(size_t)j * D + d] = (uint8_t)(j * D + d < 256 ? j * D + d : rng_int(&r, 0, 255));
            f8rows[j] = f8 + (size_t)(n - 1 - j) * D; /* rows anywhere: here in reverse */
        }
        uint16_t *f8b = xmalloc((size_t)n * D * 2);
        const void **f8b_rows = xmalloc((size_t)n * sizeof *f8b_rows);
        for (int32_t j = 0; j < n; j++) {
            ref->fp8_to_bf16(f8rows[j], f8b + (size_t)j * D, D);
            f8b_rows[j] = f8b + (size_t)j * D;
        }
        kn->lanes.to_lanes(f8b_rows, D, n, lanes);
        uint32_t *lanes_f8 = xmalloc((size_t)tiles * units * 16 * 4);
        kn->lanes.fp8_to_lanes(f8rows, D, n, lanes_f8);
        if (memcmp(lanes, lanes_f8, (size_t)tiles * units * 16 * 4) != 0 && layout++ < 3)
            CHECK(0, "%s fp8_to_lanes D=%d n=%d differs from converting, then to_lanes", lv, D, n);
        free(f8), free(f8rows), free(f8b), free(f8b_rows), free(lanes_f8);
        /* bf16 rows anywhere: every other key read from a second copy */
        uint16_t *copy = xmalloc((size_t)n * D * 2);
        memcpy(copy, rows, (size_t)n * D * 2);
        const void **row_ptr = xmalloc((size_t)n * sizeof *row_ptr);
        for (int32_t j = 0; j < n; j++)
            row_ptr[j] = (j % 2 ? copy : rows) + (size_t)j * D;
        kn->lanes.to_lanes(row_ptr, D, n, lanes);
        for (int32_t tt = 0; tt < tiles; tt++)
            for (int32_t u = 0; u < units; u++)
                for (int32_t l = 0; l < 16; l++) {
                    const int32_t j = 16 * tt + l < n ? 16 * tt + l : n - 1; /* a partial tile repeats its last key */
                    const uint32_t want = rows[(size_t)j * D + 2 * u] | (uint32_t)rows[(size_t)j * D + 2 * u + 1] << 16;
                    if (lanes[((size_t)tt * units + u) * 16 + l] != want && layout++ < 3)
                        CHECK(0, "%s to_lanes D=%d n=%d: key %d pair %d", lv, D, n, j, u);
                }
        const skv_qpack_args a = {c.q, c.qt, c.scaled ? c.qs : NULL, c.w, H, D, c.scaled};
        void *pack = aligned_alloc(64, skv_round_up_test(kn->score_bf16.pack_size(H, D)));
        kn->score_bf16.pack(pack, &a);
        float *want = xmalloc((size_t)n * 4), *got = xmalloc((size_t)n * 4), one;
        run_score(&ref->score_f32, &c, c.kf, 0, n, want);
        kn->lanes.score(pack, lanes, c.scaled ? c.ks : NULL, n, got);
        for (int32_t j = 0; j < n; j++) {
            const int ok = close_to_scalar(&c, j, got[j], want[j]);
            if (!ok && bad++ < 5)
                CHECK(ok, "%s lanes H=%d D=%d n=%d j=%d scaled=%d qt=%d: %.9g vs scalar %.9g", lv,
                      H, D, n, j, c.scaled, c.qt, got[j], want[j]);
            if (j % 7 == 0 || j == n - 1) {
                kn->lanes.to_lanes(&row_ptr[j], D, 1, one_lane);
                kn->lanes.score(pack, one_lane, c.scaled ? c.ks + j : NULL, 1, &one);
                if (!same_float(one, got[j]) && tiling++ < 3)
                    CHECK(0, "%s lanes H=%d D=%d: key %d alone %.9g, among %d %.9g", lv, H, D, j,
                          one, n, got[j]);
            }
        }
        free(pack), free(want), free(got), free(rows), free(copy), free(row_ptr), free(lanes), free(one_lane);
        free_case(&c);
    }
    CHECK(bad == 0 && layout == 0 && tiling == 0, "%s lanes: %ld scores, %ld layout, %ld tiling mismatches",
          lv, bad, layout, tiling);
}

/* fp8 keys scored in lanes from their rows: the same bits as fp8_to_lanes then the lanes
 * kernel, and close to the scalar reference, on fp8 values with zeros, subnormals, NaN and the
 * largest magnitudes among them; a key's score the same alone and among other keys. */
static void check_fp8_lanes_kernel(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    if (!kn->lanes.score_fp8)
        return;
    rng r = {78};
    long bad = 0, tiling = 0;
    static const int32_t Ds[] = {32, 64, 96, 128, 256};
    static const uint8_t odd[] = {0x00, 0x80, 0x01, 0x87, 0x05, 0x7e, 0xfe, 0x7f, 0xff};
    for (int t = 0; t < 300; t++) {
        const int32_t H = 1 + t % SKV_LANES_MAX_HEADS, D = Ds[(t / 8) % 5];
        const int32_t n = t % 3 == 0 ? (int32_t)rng_int(&r, 1, 40) : (int32_t)rng_int(&r, 1, 300);
        score_case c;
        make_case(&c, &r, H, D, n, 0);
        if (c.qt == SKV_F32) { /* the bf16 pack serves bf16 and fp8 queries */
            free_case(&c);
            continue;
        }
        c.scaled = 1; /* fp8 keys come with scales */
        /* special bytes: none, a few (zeros and subnormals, or any), or many */
        const int mode = t % 4, per_mille = mode == 0 ? 0 : mode == 3 ? 50 : 3;
        uint8_t *f8 = xmalloc((size_t)n * D);
        const void **f8rows = xmalloc((size_t)n * sizeof *f8rows);
        for (int32_t j = 0; j < n; j++)
            for (int32_t d = 0; d < D; d++) {
                uint8_t b = (uint8_t)rng_int(&r, 0, 255);
                if ((b & 0x78) == 0 || (b & 0x7f) == 0x7f) /* normal unless chosen below */
                    b ^= 0x40;
                if (rng_int(&r, 0, 999) < per_mille)
                    b = odd[rng_int(&r, 0, mode == 1 ? 4 : 8)];
                f8[(size_t)j * D + d] = b;
                c.kf[(size_t)j * c.stride + d] = skv_fp8_to_f32(b);
            }
        for (int32_t j = 0; j < n; j++)
            f8rows[j] = f8 + (size_t)(n - 1 - j) * D; /* rows anywhere: here in reverse */
        float *kf = xmalloc((size_t)n * c.stride * 4);
        for (int32_t j = 0; j < n; j++) /* row j of the reference is the kernel's key j */
            memcpy(kf + (size_t)j * c.stride, c.kf + (size_t)(n - 1 - j) * c.stride, (size_t)D * 4);
        memcpy(c.kf, kf, (size_t)n * c.stride * 4);
        free(kf);
        const skv_qpack_args a = {c.q, c.qt, c.qs, c.w, H, D, 1};
        void *pack = aligned_alloc(64, skv_round_up_test(kn->score_bf16.pack_size(H, D)));
        kn->score_bf16.pack(pack, &a);
        float *want = xmalloc((size_t)n * 4), *got = xmalloc((size_t)n * 4), one[17];
        float *tiled = xmalloc((size_t)n * 4);
        uint32_t *lanes = xmalloc((size_t)(n + 15) / 16 * (D / 2) * 16 * 4);
        kn->lanes.fp8_to_lanes(f8rows, D, n, lanes);
        kn->lanes.score(pack, lanes, c.ks, n, tiled);
        run_score(&ref->score_f32, &c, c.kf, 0, n, want);
        kn->lanes.score_fp8(pack, f8rows, c.ks, n, got);
        /* the same keys in fp8 tiles, stored in reverse order; the last tile's unused keys
           hold junk (NaN, zeros, anything), which must not reach a score */
        const int32_t n_tiles = (n + 15) / 16;
        uint8_t *tiles = xmalloc((size_t)n_tiles * 16 * D);
        const void **tilep = xmalloc((size_t)n_tiles * sizeof *tilep);
        for (size_t i = 0; i < (size_t)n_tiles * 16 * D; i++)
            tiles[i] = (uint8_t)rng_int(&r, 0, 255);
        for (int32_t tt = 0; tt < n_tiles; tt++)
            tilep[tt] = tiles + (size_t)(n_tiles - 1 - tt) * 16 * D;
        for (int32_t j = 0; j < n; j++)
            for (int32_t d = 0; d < D; d++)
                ((uint8_t *)tilep[j / 16])[skv_fp8_tile_offset(j % 16, d)] =
                    ((const uint8_t *)f8rows[j])[d];
        float *from_tiles = xmalloc((size_t)n * 4);
        kn->lanes.score_fp8_tiles(pack, tilep, c.ks, n, from_tiles);
        for (int32_t j = 0; j < n; j++) {
            const int ok = close_to_scalar(&c, j, got[j], want[j]) && same_float(got[j], tiled[j]) &&
                           same_float(from_tiles[j], got[j]);
            if (!ok && bad++ < 5)
                CHECK(ok, "%s fp8 lanes H=%d D=%d n=%d j=%d qt=%d: %.9g vs scalar %.9g, tiles %.9g, fp8 tiles %.9g",
                      lv, H, D, n, j, c.qt, got[j], want[j], tiled[j], from_tiles[j]);
            if (j % 5 == 0 || j == n - 1) { /* alone, and first of a window of other keys */
                const int32_t m = n - j < 17 ? n - j : 17;
                kn->lanes.score_fp8(pack, &f8rows[j], c.ks + j, 1, &one[0]);
                if (!same_float(one[0], got[j]) && tiling++ < 3)
                    CHECK(0, "%s fp8 lanes H=%d D=%d: key %d alone %.9g, among %d %.9g", lv, H, D, j,
                          one[0], n, got[j]);
                kn->lanes.score_fp8(pack, &f8rows[j], c.ks + j, m, one);
                for (int32_t i = 0; i < m; i++)
                    if (!same_float(one[i], got[j + i]) && tiling++ < 3)
                        CHECK(0, "%s fp8 lanes H=%d D=%d: key %d from %d %.9g, from 0 %.9g", lv, H, D,
                              j + i, j, one[i], got[j + i]);
            }
            if (j % 16 == 0) { /* from the fp8 tile of key j on, a few keys */
                const int32_t m = n - j < 17 ? n - j : 17;
                kn->lanes.score_fp8_tiles(pack, &tilep[j / 16], c.ks + j, m, one);
                for (int32_t i = 0; i < m; i++)
                    if (!same_float(one[i], got[j + i]) && tiling++ < 3)
                        CHECK(0, "%s fp8 tiles H=%d D=%d: key %d from %d %.9g, from 0 %.9g", lv, H, D,
                              j + i, j, one[i], got[j + i]);
            }
        }
        free(tiles), free(tilep), free(from_tiles);
        free(pack), free(want), free(got), free(tiled), free(lanes), free(f8), free(f8rows);
        free_case(&c);
    }
    CHECK(bad == 0 && tiling == 0, "%s fp8 lanes: %ld scores, %ld tiling mismatches", lv, bad, tiling);
}

/* Same bits, or NaN on both sides (a NaN's payload may come from either operand). */
static int same_f32(float a, float b)
{
    return (a != a && b != b) || memcmp(&a, &b, 4) == 0;
}

/* The router's head dot products and row adds: the scalar kernel against double precision,
 * every level against the scalar kernel bit for bit (ragged H and D, NaN and Inf). */
static void check_router_kernels(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    static const int32_t Hs[] = {1, 7, 8, 13, 16, 33, 64, 70, 130};
    static const int32_t Ds[] = {1, 3, 32, 100, 128};
    rng r = {21};
    long bad = 0;
    static const int32_t Ns[] = {1, 2, 3, 4, 5, 7}; /* key vectors a call: batches and tails */
    for (size_t hi = 0; hi < sizeof Hs / sizeof Hs[0]; hi++)
        for (size_t di = 0; di < sizeof Ds / sizeof Ds[0]; di++) {
            const int32_t H = Hs[hi], D = Ds[di], n = Ns[(hi + di) % 6];
            float *qt = malloc((size_t)H * D * 4), *x = malloc((size_t)n * D * 4);
            float a[7 * 131], b[7 * 131];
            for (int special = 0; special < 2; special++) {
                for (int32_t i = 0; i < H * D; i++)
                    qt[i] = (float)rng_uniform(&r, -2, 2);
                for (int32_t i = 0; i < n * D; i++)
                    x[i] = (float)rng_uniform(&r, -2, 2);
                if (special) { /* a NaN in one head's query, an Inf in the last key */
                    qt[(size_t)(D / 2) * H + H / 2] = NAN;
                    x[(size_t)n * D - 1] = INFINITY;
                }
                memset(a, 0x5a, sizeof a), memset(b, 0x5a, sizeof b);
                ref->head_dots(qt, x, n, H, D, a);
                kn->head_dots(qt, x, n, H, D, b);
                for (int32_t i = 0; i < n; i++)
                    for (int32_t h = 0; h < H; h++) {
                        const float *xi = x + (size_t)i * D;
                        const float ah = a[(size_t)i * H + h], bh = b[(size_t)i * H + h];
                        double want = 0, mag = 0;
                        for (int32_t d = 0; d < D; d++) {
                            want += (double)qt[(size_t)d * H + h] * xi[d];
                            mag += fabs((double)qt[(size_t)d * H + h] * xi[d]);
                        }
                        const int ok_ref = special ? same_f32(ah, (float)want) || fabs(ah - want) <= 2 * D * 0x1p-24 * mag
                                                   : fabs(ah - want) <= 2 * D * 0x1p-24 * mag + 1e-30;
                        if ((!ok_ref || !same_f32(ah, bh)) && bad++ < 3)
                            CHECK(0, "%s head_dots n=%d H=%d D=%d i=%d h=%d: %.9g, scalar %.9g, double %.9g",
                                  lv, n, H, D, i, h, bh, ah, want);
                    }
                for (int32_t j = n * H; j < 7 * 131; j++) /* nothing past n * H */
                    if (memcmp(&b[j], &(uint32_t){0x5a5a5a5au}, 4) != 0 && bad++ < 3)
                        CHECK(0, "%s head_dots n=%d H=%d wrote past its dots", lv, n, H);
            }
            free(qt), free(x);
        }
    for (int32_t n = 0; n <= 300; n += n < 40 ? 1 : 37) /* ragged tails past 128 and 256 */
        for (int32_t n_rows = 0; n_rows <= 5; n_rows++) {
            float acc1[301], acc2[301], x[5][301];
            const float *rows[5] = {x[0], x[1], x[2], x[3], x[4]};
            for (int32_t i = 0; i < 301; i++) {
                acc1[i] = acc2[i] = (float)rng_uniform(&r, -5, 5);
                for (int j = 0; j < 5; j++)
                    x[j][i] = (float)rng_uniform(&r, -5, 5) * (j == 2 ? 1e-7f : 1.0f);
            }
            x[1][5] = NAN, x[3][7] = INFINITY, x[4][7] = -INFINITY;
            float start[301], want[301];
            memcpy(start, acc1, sizeof start);
            for (int32_t i = 0; i < 301; i++) { /* one add per row, in row order; nothing past n */
                want[i] = start[i];
                for (int j = 0; i < n && j < n_rows; j++)
                    want[i] += x[j][i];
            }
            ref->add_rows(acc1, rows, n_rows, n);
            kn->add_rows(acc2, rows, n_rows, n);
            for (int32_t i = 0; i < 301; i++)
                if ((!same_f32(acc1[i], want[i]) || !same_f32(acc2[i], want[i])) && bad++ < 3)
                    CHECK(0, "%s add_rows n=%d rows=%d i=%d: %.9g, scalar %.9g, want %.9g", lv, n,
                          n_rows, i, acc2[i], acc1[i], want[i]);
        }
    for (int32_t rows = 0; rows <= 16; rows++) /* cols16: every row count, ragged columns */
        for (int32_t cols = 0; cols <= 40; cols += cols < 20 ? 1 : 7) {
            enum { STRIDE = 19 };
            float src[16 * 40], got[41 * STRIDE], want[41 * STRIDE];
            for (int32_t i = 0; i < 16 * 40; i++)
                src[i] = (float)rng_uniform(&r, -5, 5);
            src[0] = NAN, src[16 * 40 - 1] = -INFINITY;
            for (int32_t i = 0; i < 41 * STRIDE; i++)
                got[i] = want[i] = (float)i; /* what lies outside rows x cols stays */
            for (int32_t c = 0; c < cols; c++)
                for (int32_t rr = 0; rr < rows; rr++)
                    want[c * STRIDE + rr] = src[rr * cols + c];
            kn->cols16(src, rows, cols, got, STRIDE);
            if (memcmp(got, want, sizeof got) != 0 && bad++ < 3)
                CHECK(0, "%s cols16 rows=%d cols=%d", lv, rows, cols);
        }
    CHECK(bad == 0, "%s router kernels: %ld mismatches", lv, bad);
}

static void bench_scores(const skv_kernels *ref, const skv_kernels *kn, const char *lv)
{
    rng r = {5};
    score_case c;
    make_case(&c, &r, 64, 128, 40, 0);
    c.scaled = 0;
    float out[40];
    double t_ref = 0, t_lv = 0, t_bf = 0;
    const int reps = 200;
    double t0 = now_s();
    for (int i = 0; i < reps / 20; i++)
        run_score(&ref->score_f32, &c, c.kf, 0, 40, out);
    t_ref = (now_s() - t0) / (reps / 20);
    t0 = now_s();
    for (int i = 0; i < reps; i++)
        run_score(&kn->score_f32, &c, c.kf, 0, 40, out);
    t_lv = (now_s() - t0) / reps;
    if (kn->score_bf16.pack_size && c.qt != SKV_F32) {
        t0 = now_s();
        for (int i = 0; i < reps; i++)
            run_score(&kn->score_bf16, &c, c.kb, 0, 40, out);
        t_bf = (now_s() - t0) / reps;
    }
    printf("bench %-10s score_f32 %.1f us (%.1fx scalar)", lv, t_lv * 1e6, t_ref / t_lv);
    if (t_bf > 0)
        printf("  score_bf16 %.1f us (%.1fx scalar)", t_bf * 1e6, t_ref / t_bf);
    printf("\n");
    free_case(&c);
}

int main(int argc, char **argv)
{
    const int bench = argc > 1 && strcmp(argv[1], "--bench") == 0;
    skv_kernels ref;
    skv_kernels_init(&ref, 0);
    CHECK(ref.flags == 0 && ref.score_bf16.pack_size == NULL, "scalar table");
    for (int lv = 1; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_kernels kn;
        skv_kernels_init(&kn, all_levels[lv].mask);
        CHECK(kn.flags == all_levels[lv].mask, "%s table flags %#x", all_levels[lv].name, kn.flags);
        check_score_kernels(&ref, &kn, all_levels[lv].name);
        check_conversions(&ref, &kn, all_levels[lv].name);
        check_mxfp4_conversions(&ref, &kn, all_levels[lv].name);
        check_filter(&ref, &kn, all_levels[lv].name);
        check_topk_cuts(&ref, &kn, all_levels[lv].name);
        check_router_kernels(&ref, &kn, all_levels[lv].name);
        check_lanes_kernel(&ref, &kn, all_levels[lv].name);
        check_fp8_lanes_kernel(&ref, &kn, all_levels[lv].name);
        if (bench)
            bench_scores(&ref, &kn, all_levels[lv].name);
    }
    return test_summary("test_kernels");
}
