/* Fuzz target: the stateless entry points with hostile shapes, dtypes and bit patterns. The
 * input picks a call and its shape; some fields come out of range on purpose (0 or negative
 * sizes, sizes past the documented limits, k near INT32_MAX, mismatched head_dim, unknown
 * dtypes, missing or extra scale pointers). The target's own reading of the headers' limits
 * decides whether the call is valid: an invalid one must be refused with INVALID_ARG or
 * UNSUPPORTED and write nothing (buffers are sized for the valid shape only, so an accepted
 * out-of-range size reads or writes out of bounds under ASan); a valid one is checked against
 * a plain model: top-k against sorting skv_indexer_scores (indices and scores exact), top-k of
 * rows against sorting the rows, attention against the double-precision reference, and
 * dtype conversion against widening. */
#include "fuzz.h"

#include "../sentinel.h"

/* A field that is usually valid (lo..hi) and sometimes not. */
static int32_t rd_field(reader *r, int32_t lo, int32_t hi)
{
    const uint8_t c = rd_u8(r);
    if (c < 230)
        return (int32_t)(lo + c % (hi - lo + 1));
    static const int32_t bad[] = {0, -1, INT32_MIN, INT32_MAX, 4097, 1025, 65537, -7,
                                  INT32_MAX / 3 + 1, SKV_TOPK_MAX_K + 1, SKV_TOPK_MAX_K, 1 << 30,
                                  INT32_MAX - 1, 2, 100000, 5000, -100, 4096, 1024, 3, 1, 7,
                                  16, 64, 31, 33};
    return bad[(c - 230) % 26];
}

/* Larger is better: NaN lowest; -0 == +0. */
static int better(float a, float b)
{
    if (isnan(a) || isnan(b))
        return !isnan(a) && isnan(b);
    return a > b;
}

/* The documented selection: visible entries by score (NaN lowest), ties to the lower index. */
static void ref_topk(const float *s, const uint8_t *vis, int64_t n, int32_t k, int32_t *idx, float *val)
{
    int32_t m = 0;
    for (int32_t j = 0; j < k; j++)
        idx[j] = -1, val[j] = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        if (!vis[i])
            continue;
        int32_t at = m < k ? m : k; /* insertion: later equal scores go after */
        while (at > 0 && better(s[i], val[at - 1]))
            at--;
        if (at >= k)
            continue;
        for (int32_t j = (m < k ? m : k - 1); j > at; j--)
            idx[j] = idx[j - 1], val[j] = val[j - 1];
        idx[at] = (int32_t)i, val[at] = s[i];
        m += m < k;
    }
}

static void same_topk(const int32_t *idx, const float *val, const int32_t *ridx, const float *rval,
                      int32_t k, const char *what)
{
    for (int32_t j = 0; j < k; j++) {
        REQUIRE(idx[j] == ridx[j], "%s: rank %d index %d, reference %d", what, j, idx[j], ridx[j]);
        if (val)
            REQUIRE(isnan(rval[j]) ? isnan(val[j]) : val[j] == rval[j], "%s: rank %d score %g, reference %g",
                    what, j, val[j], rval[j]);
    }
}

static size_t dsize(skv_dtype t) { return t >= 0 && t <= 3 ? skv_dtype_size(t) : 0; }

/* Fills n elements of dtype t (raw bit patterns for the narrow dtypes), scales for FP8. */
static void fill(reader *r, skv_dtype t, void *x, float *sc, size_t n, size_t rows)
{
    if (t == SKV_F32)
        rd_floats(r, x, n);
    else
        for (size_t i = 0; i < n * dsize(t); i++)
            ((uint8_t *)x)[i] = rd_u8(r);
    for (size_t i = 0; sc && i < rows; i++)
        sc[i] = rd_float(r);
}

static void indexer_case(reader *r, skv_context *ctx)
{
    int32_t T = rd_field(r, 0, 4);
    const int32_t H = rd_field(r, 1, 6), D = rd_field(r, 1, 40);
    const int32_t DK = rd_u8(r) < 240 ? D : rd_field(r, 1, 40);
    const int64_t L = rd_u8(r) < 240 ? rd_range(r, 0, 300) : (rd_u8(r) & 1 ? -1 : (int64_t)INT32_MAX + 1);
    const skv_dtype qt = (skv_dtype)(rd_u8(r) < 245 ? rd_u8(r) % 4 : 9), kt = (skv_dtype)(rd_u8(r) < 245 ? rd_u8(r) % 4 : -1);
    const uint8_t flags = rd_u8(r);
    int32_t k = rd_field(r, 1, 320);
    /* the valid shape (indexer.h's limits), and the buffers for it (1 element when a size is
       invalid); a valid shape too large to fuzz quickly runs with no tokens */
    const int shape_ok = T >= 0 && H >= 1 && H <= 4096 && D >= 1 && D <= 4096 && DK == D && L >= 0 &&
                         L <= INT32_MAX;
    if (shape_ok && ((int64_t)T * H * D > (1 << 16) || (int64_t)T * H * D * L > (1 << 21)))
        T = 0;
    /* F16 is widened exactly (indexer.h); MXFP4, a key dtype of its own, is fuzzed elsewhere */
    const int dtype_ok = qt >= SKV_F32 && qt <= SKV_FP8_E4M3 && kt >= SKV_F32 && kt <= SKV_FP8_E4M3;
    const int bad_qscale = flags & 1, bad_kscale = flags & 2, null_w = (flags & 0x1c) == 0x1c;
    const size_t nq = shape_ok ? (size_t)T * H * D : 1, nk = shape_ok ? (size_t)L * D : 1;
    const size_t nt = shape_ok ? (size_t)T : 1, nl = shape_ok ? (size_t)L : 1;
    void *q = fz_malloc(nq * 4), *kk = fz_malloc(nk * 4 + 1);
    float *qs = fz_malloc((size_t)(shape_ok ? T * H : 1) * 4 + 4), *ks = fz_malloc(nl * 4 + 4);
    float *w = fz_malloc((size_t)(shape_ok ? T * H : 1) * 4 + 4);
    int32_t *pos = fz_malloc(nt * 4 + 4);
    if (shape_ok && dtype_ok) {
        fill(r, qt, q, qs, nq, (size_t)T * H);
        fill(r, kt, kk, ks, nk, nl);
        rd_floats(r, w, (size_t)T * H);
    }
    for (size_t t = 0; t < nt; t++)
        pos[t] = (int32_t)rd_range(r, -2, L + 2);
    const int with_pos = flags & 0x20;
    const skv_indexer_query iq = {T, H, D, qt, q, (qt == SKV_FP8_E4M3) != (bad_qscale != 0) ? qs : NULL,
                                  null_w ? NULL : w, with_pos ? pos : NULL};
    const skv_key_block kb = {L, DK, kt, kk, (kt == SKV_FP8_E4M3) != (bad_kscale != 0) ? ks : NULL};
    /* an FP8 query without scales is valid (scales of 1, DeepGEMM's convention) */
    const int valid = shape_ok && dtype_ok && !(bad_qscale && qt != SKV_FP8_E4M3) && !bad_kscale &&
                      (!null_w || T == 0);
    const int k_ok = k >= 1 && k <= SKV_TOPK_MAX_K;
    if (k_ok && (int64_t)T * k > (1 << 20))
        k = 320; /* valid (SKV_TOPK_MAX_K itself: tests/test_badargs.c), too large to fuzz quickly */
    const size_t n_sc = valid ? (size_t)T * (size_t)L : 0, n_top = valid && k_ok ? (size_t)T * k : 0;
    float *sc = fz_malloc(n_sc * 4 + 64), *tv = fz_malloc(n_top * 4 + 64), *rv = fz_malloc(n_top * 4 + 64);
    int32_t *ti = fz_malloc(n_top * 4 + 64), *ri = fz_malloc(n_top * 4 + 64);
    memset(sc, SENT, n_sc * 4 + 64), memset(tv, SENT, n_top * 4 + 64), memset(ti, SENT, n_top * 4 + 64);

    if (getenv("FZ_DEBUG"))
        fprintf(stderr, "T %d H %d D %d DK %d L %lld qt %d kt %d flags %x valid %d\n", T, H, D, DK, (long long)L, qt, kt, flags, valid);
    const skv_status s1 = skv_indexer_scores(ctx, &iq, &kb, sc);
    const skv_status s2 = skv_indexer_topk(ctx, &iq, &kb, k, ti, tv);
    if (!valid) {
        REQUIRE(s1 == SKV_ERR_INVALID_ARG || (s1 == SKV_ERR_UNSUPPORTED && !dtype_ok),
                "invalid query: scores gave %d (T %d H %d D %d DK %d L %lld qt %d kt %d flags %x)", s1, T, H, D, DK, (long long)L, qt, kt, flags);
        REQUIRE(s2 == SKV_ERR_INVALID_ARG || (s2 == SKV_ERR_UNSUPPORTED && !dtype_ok),
                "invalid query: top-k gave %d", s2);
        REQUIRE(untouched(sc, 64) && untouched(tv, 64) && untouched(ti, 64), "refused call wrote");
    } else {
        REQUIRE(s1 == SKV_OK, "scores: status %d (T %d H %d D %d L %lld)", s1, T, H, D, (long long)L);
        if (!k_ok) {
            REQUIRE(s2 == SKV_ERR_INVALID_ARG || (T == 0 && s2 == SKV_OK), "k %d: status %d", k, s2);
            REQUIRE(untouched(tv, 64) && untouched(ti, 64), "k %d: refused call wrote", k);
        } else {
            REQUIRE(s2 == SKV_OK, "top-k: status %d", s2);
            uint8_t *vis = fz_malloc((size_t)L + 1);
            for (int32_t t = 0; t < T; t++) {
                for (int64_t s = 0; s < L; s++) {
                    vis[s] = !with_pos || s <= pos[t];
                    REQUIRE(vis[s] || sc[(size_t)t * L + s] == -INFINITY, "invisible key scored");
                }
                ref_topk(sc + (size_t)t * L, vis, L, k, ri + (size_t)t * k, rv + (size_t)t * k);
                same_topk(ti + (size_t)t * k, tv + (size_t)t * k, ri + (size_t)t * k, rv + (size_t)t * k, k,
                          "indexer top-k");
            }
            /* the same rows through skv_topk_rows (invisible keys: lengths) */
            if (with_pos && T > 0) {
                int64_t *len = fz_malloc((size_t)T * 8);
                for (int32_t t = 0; t < T; t++)
                    len[t] = pos[t] < 0 ? 0 : pos[t] + 1 > L ? L : pos[t] + 1;
                memset(ti, SENT, n_top * 4), memset(tv, SENT, n_top * 4);
                REQUIRE(skv_topk_rows(ctx, sc, T, L, L, len, k, ti, tv) == SKV_OK, "rows");
                for (int32_t t = 0; t < T; t++)
                    same_topk(ti + (size_t)t * k, tv + (size_t)t * k, ri + (size_t)t * k, rv + (size_t)t * k, k,
                              "top-k of rows");
                free(len);
            }
            free(vis);
        }
    }
    free(q), free(kk), free(qs), free(ks), free(w), free(pos), free(sc), free(tv), free(rv), free(ti), free(ri);
}

static void attention_case(reader *r, skv_context *ctx)
{
    skv_attn_batch b = {.struct_size = sizeof b};
    b.n_tokens = rd_field(r, 0, 3);
    b.n_kv_heads = rd_field(r, 1, 3);
    b.n_q_heads = (int32_t)((int64_t)b.n_kv_heads * rd_range(r, 1, 3) % INT32_MAX);
    if (rd_u8(r) > 240)
        b.n_q_heads = rd_field(r, 1, 9);
    b.k_dim = rd_field(r, 1, 24), b.v_dim = rd_field(r, 1, 24);
    b.dtype = (skv_dtype)(rd_u8(r) % 5);
    const uint8_t flags = rd_u8(r);
    b.scale = flags & 1 ? rd_float(r) : 0.3f;
    b.causal = flags & 2 ? (flags & 4 ? 2 : 1) : 0;
    b.n_rows = rd_range(r, 0, 40);
    const int shape_ok = b.n_tokens >= 0 && b.n_kv_heads >= 1 && b.n_q_heads >= 1 && b.n_q_heads <= 4096 &&
                         b.n_q_heads % b.n_kv_heads == 0 && b.k_dim >= 1 && b.k_dim <= 1024 && b.v_dim >= 1 &&
                         b.v_dim <= 1024; /* attention.h's limits */
    if (shape_ok && ((int64_t)b.n_tokens * b.n_q_heads * (b.k_dim + b.v_dim) > (1 << 16) ||
                     b.n_rows * (b.k_dim + b.v_dim) > (1 << 16)))
        b.n_tokens = 0, b.n_rows = 0; /* valid, too large to fuzz quickly */
    const int dtype_ok = b.dtype == SKV_F32 || b.dtype == SKV_BF16;
    const size_t T = shape_ok ? (size_t)b.n_tokens : 1, HQ = shape_ok ? (size_t)b.n_q_heads : 1;
    const size_t HK = shape_ok ? (size_t)b.n_kv_heads : 1, KD = shape_ok ? (size_t)b.k_dim : 1;
    const size_t VD = shape_ok ? (size_t)b.v_dim : 1, R = (size_t)b.n_rows;
    void *q = fz_malloc(T * HQ * KD * 4), *k = fz_malloc(R * KD * 4 + 4), *v = fz_malloc(R * VD * 4 + 4);
    int32_t *qp = fz_malloc(T * 4 + 4), *kp = fz_malloc(R * 4 + 4), *ll = fz_malloc(T * HK * 4 + 4);
    int64_t *ls = fz_malloc(T * HK * 8 + 8);
    int lists_ok = 1;
    float qmax = 0, kmax = 0;
    if (shape_ok) {
        float *tmp = fz_malloc((T * HQ * KD + R * (KD + VD)) * 4 + 4);
        rd_floats(r, tmp, T * HQ * KD + R * (KD + VD));
        for (size_t i = 0; i < T * HQ * KD + R * KD; i++) {
            tmp[i] = isfinite(tmp[i]) && fabsf(tmp[i]) > 1e15f ? 1e15f : tmp[i];
            if (isfinite(tmp[i]))
                *(i < T * HQ * KD ? &qmax : &kmax) = fmaxf(*(i < T * HQ * KD ? &qmax : &kmax), fabsf(tmp[i]));
        }
        for (size_t i = T * HQ * KD + R * KD; i < T * HQ * KD + R * (KD + VD); i++)
            tmp[i] = isfinite(tmp[i]) && fabsf(tmp[i]) < 1e30f ? tmp[i] : 1.0f; /* a weight-0 row's
                                                         non-finite v may or may not show */
        skv_convert(dtype_ok ? b.dtype : SKV_F32, q, SKV_F32, tmp, (int64_t)(T * HQ * KD));
        skv_convert(dtype_ok ? b.dtype : SKV_F32, k, SKV_F32, tmp + T * HQ * KD, (int64_t)(R * KD));
        skv_convert(dtype_ok ? b.dtype : SKV_F32, v, SKV_F32, tmp + T * HQ * KD + R * KD, (int64_t)(R * VD));
        free(tmp);
        for (size_t t = 0; t < T; t++)
            qp[t] = (int32_t)rd_range(r, -1, 40);
        for (size_t i = 0; i < R; i++)
            kp[i] = (int32_t)rd_range(r, 0, 40);
        for (size_t i = 0; i < T * HK; i++) {
            ls[i] = rd_range(r, -1, (int64_t)R);
            ll[i] = (int32_t)rd_range(r, 0, (int64_t)R + 1);
            lists_ok &= ls[i] >= 0 && ls[i] + ll[i] <= (int64_t)R;
        }
    }
    b.q = q, b.k = k, b.v = v, b.k_pos = kp, b.q_pos = qp, b.list_start = ls, b.list_len = ll;
    const int valid = shape_ok && dtype_ok && lists_ok && isfinite(b.scale) && b.causal <= 1;
    const size_t n_out = valid ? T * HQ * VD : 0, n_ml = valid ? T * HQ : 0;
    float *o = fz_malloc(n_out * 4 + 64), *m = fz_malloc(n_ml * 4 + 64), *l = fz_malloc(n_ml * 4 + 64);
    float *ro = fz_malloc(n_out * 4 + 64), *rm = fz_malloc(n_ml * 4 + 64), *rl = fz_malloc(n_ml * 4 + 64);
    memset(o, SENT, n_out * 4 + 64), memset(m, SENT, n_ml * 4 + 64), memset(l, SENT, n_ml * 4 + 64);
    const skv_status s = skv_sparse_attention(ctx, &b, o, m, l);
    const skv_status rs = skv_sparse_attention_reference(&b, ro, rm, rl);
    if (!valid) {
        REQUIRE(s == SKV_ERR_INVALID_ARG || (s == SKV_ERR_UNSUPPORTED && !dtype_ok), "invalid batch: status %d", s);
        REQUIRE(rs == s, "reference status %d, kernel %d", rs, s);
        REQUIRE(untouched(o, 64) && untouched(m, 64) && untouched(l, 64), "refused attention wrote");
    } else {
        REQUIRE(s == SKV_OK && rs == SKV_OK, "attention: status %d, reference %d", s, rs);
        /* scores are f32: their rounding (about |score| * k_dim * 2^-24) moves the softmax
           weights visibly past |score| ~ 100, where f32 and the double reference part ways
           (and the kernel may overflow where the reference does not) */
        const double bound = fabs((double)b.scale) * qmax * kmax * b.k_dim;
        for (size_t i = 0; bound <= 64 && i < n_out; i++)
            REQUIRE(isfinite(ro[i]) ? fabsf(o[i] - ro[i]) <= 2e-3f * (1.0f + fabsf(ro[i])) : isnan(ro[i]) == isnan(o[i]),
                    "out[%zu] %g, reference %g", i, o[i], ro[i]);
        for (size_t i = 0; bound <= 64 && i < n_ml; i++)
            REQUIRE(isfinite(rl[i]) ? fabsf(l[i] - rl[i]) <= 2e-3f * (1.0f + fabsf(rl[i])) : isnan(rl[i]) == isnan(l[i]),
                    "lse[%zu] %g, reference %g", i, l[i], rl[i]);
    }
    free(q), free(k), free(v), free(qp), free(kp), free(ll), free(ls);
    free(o), free(m), free(l), free(ro), free(rm), free(rl);
}

/* Conversions: every bit pattern widens and narrows as common.h says (NaN stays NaN, F16/BF16
 * round to nearest even and overflow to infinity, FP8 saturates); the fp8 quantiser's rows
 * dequantise within half a step of their scale. */
static void convert_case(reader *r)
{
    const int64_t n = rd_range(r, 0, 64);
    uint16_t h[64], b[64], h2[64], b2[64];
    uint8_t e[64], e2[64];
    float x[64], y[64], sc;
    for (int64_t i = 0; i < n; i++) {
        h[i] = (uint16_t)rd_u32(r), b[i] = (uint16_t)rd_u32(r), e[i] = rd_u8(r);
    }
    static const skv_dtype narrow[] = {SKV_F16, SKV_BF16, SKV_FP8_E4M3};
    const void *src[] = {h, b, e};
    void *back[] = {h2, b2, e2};
    for (int t = 0; t < 3; t++) {
        REQUIRE(skv_convert(SKV_F32, x, narrow[t], src[t], n) == SKV_OK, "widen");
        REQUIRE(skv_convert(narrow[t], back[t], SKV_F32, x, n) == SKV_OK, "narrow");
        for (int64_t i = 0; i < n; i++) {
            float w2;
            REQUIRE(skv_convert(SKV_F32, &w2, narrow[t], (const uint8_t *)back[t] + i * skv_dtype_size(narrow[t]), 1) ==
                        SKV_OK, "widen one");
            REQUIRE(isnan(x[i]) ? isnan(w2) : w2 == x[i] && signbit(w2) == signbit(x[i]),
                    "dtype %d: %g does not round-trip (%g)", narrow[t], x[i], w2);
        }
    }
    REQUIRE(skv_convert(SKV_F32, x, (skv_dtype)7, h, n) == (n ? SKV_ERR_INVALID_ARG : SKV_ERR_INVALID_ARG) ||
                n == 0, "unknown dtype accepted");
    REQUIRE(skv_convert(SKV_F32, x, SKV_F16, h, -1) == SKV_ERR_INVALID_ARG, "n < 0 accepted");
    rd_floats(r, y, (size_t)n);
    const uint32_t qf = rd_u8(r) & 1;
    if (n > 0) {
        REQUIRE(skv_quantize_fp8(y, 1, (int32_t)n, n, qf, e2, &sc) == SKV_OK, "quantize");
        for (int64_t i = 0; i < n; i++) {
            const double d = (double)skv_fp8_to_f32(e2[i]) * sc;
            if (isnan(y[i]))
                REQUIRE(isnan(d), "NaN lost");
            else if (isfinite(y[i]) && fabs(y[i]) <= 448.0 * sc)
                REQUIRE(fabs(d - y[i]) <= fabs(y[i]) / 16 + sc * 0.001953125 * 1.01,
                        "quantised %g to %g (scale %g)", y[i], d, sc);
        }
    }
}

/* ---- the engines' layouts (engine.h): MXFP4 keys, forced keys, ragged ranges, host pages -- */

/* The documented top-k of one token over its visible keys [lo, hi) of a score row: the first
 * n_sink and last n_window of them first, ascending, scored +INFINITY; then the best of the
 * others (ref_topk) in the k - f places left. Indices as in s. */
static void ref_forced(const float *s, int64_t lo, int64_t hi, int32_t n_sink, int32_t n_window,
                       int32_t k, int32_t *idx, float *val)
{
    const int64_t v = hi > lo ? hi - lo : 0, se = lo + (n_sink < v ? n_sink : v);
    const int64_t ws = hi - n_window > se ? hi - n_window : se;
    int32_t f = 0;
    for (int64_t i = lo; i < se; i++)
        idx[f] = (int32_t)i, val[f++] = INFINITY;
    for (int64_t i = ws; i < hi && v > 0; i++)
        idx[f] = (int32_t)i, val[f++] = INFINITY;
    uint8_t *vis = fz_malloc((size_t)(hi > 0 ? hi : 1));
    for (int64_t i = 0; i < hi; i++)
        vis[i] = i >= se && i < ws;
    ref_topk(s, vis, hi > 0 ? hi : 0, k - f, idx + f, val + f);
    free(vis);
}

/* Keys of one dtype for n rows: from floats (quantised for FP8 and MXFP4) or raw bytes. */
typedef struct fkeys {
    skv_dtype t;
    int32_t D;
    size_t row_bytes, scale_bytes; /* per key: values, and FP8 / MXFP4 scales */
    uint8_t *v, *sc;
} fkeys;

static void fkeys_make(fkeys *o, reader *r, skv_dtype t, int32_t D, int64_t n)
{
    o->t = t, o->D = D;
    o->row_bytes = t == SKV_MXFP4_E2M1 ? (size_t)D / 2 : (size_t)D * skv_dtype_size(t);
    o->scale_bytes = t == SKV_FP8_E4M3 ? 4 : t == SKV_MXFP4_E2M1 ? (size_t)D / 32 : 0;
    o->v = fz_malloc((size_t)n * o->row_bytes + 1);
    o->sc = fz_malloc((size_t)n * o->scale_bytes + 4);
    const int raw = rd_u8(r) & 1;
    float *x = fz_malloc((size_t)D * 4);
    for (int64_t i = 0; i < n; i++) {
        uint8_t *row = o->v + (size_t)i * o->row_bytes, *sc = o->sc + (size_t)i * o->scale_bytes;
        if (raw && t != SKV_F32) { /* any bit pattern, NaN and subnormal scales included */
            for (size_t b = 0; b < o->row_bytes; b++)
                row[b] = rd_u8(r);
            if (t == SKV_FP8_E4M3) {
                const float f = rd_float(r);
                memcpy(sc, &f, 4);
            } else {
                for (size_t b = 0; b < o->scale_bytes; b++)
                    sc[b] = rd_u8(r);
            }
            continue;
        }
        rd_floats(r, x, (size_t)D);
        if (t == SKV_FP8_E4M3) {
            float f;
            skv_quantize_fp8(x, 1, D, D, 0, row, &f);
            memcpy(sc, &f, 4);
        } else if (t == SKV_MXFP4_E2M1) {
            REQUIRE(skv_quantize_mxfp4(x, 1, D, D, row, sc) == SKV_OK, "quantise mxfp4");
        } else {
            skv_convert(t, row, SKV_F32, x, D);
        }
    }
    free(x);
}

static skv_key_block fkeys_block(const fkeys *o, int64_t first, int64_t n)
{
    skv_key_block kb = {n, o->D, o->t, o->v + (size_t)first * o->row_bytes, NULL, NULL};
    if (o->t == SKV_FP8_E4M3)
        kb.k_scale = (const float *)(void *)(o->sc + (size_t)first * 4);
    if (o->t == SKV_MXFP4_E2M1)
        kb.k_mx_scale = o->sc + (size_t)first * o->scale_bytes;
    return kb;
}

static void fkeys_free(fkeys *o) { free(o->v), free(o->sc); }

/* A query of T tokens; forced keys from the input (sometimes more than k: invalid). */
typedef struct fq {
    skv_indexer_query q;
    void *qd;
    float *qs, *w;
} fq;

static void fq_make(fq *o, reader *r, int32_t T, int32_t H, int32_t D)
{
    static const skv_dtype qt[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    const skv_dtype dt = qt[rd_u8(r) % 3];
    const size_t n = (size_t)T * H * D;
    float *x = fz_malloc(n * 4 + 4);
    rd_floats(r, x, n);
    o->qd = fz_malloc(n * 4 + 4);
    o->qs = fz_malloc((size_t)T * H * 4 + 4);
    o->w = fz_malloc((size_t)T * H * 4 + 4);
    if (dt == SKV_FP8_E4M3)
        skv_quantize_fp8(x, (int64_t)T * H, D, D, 0, o->qd, o->qs);
    else
        skv_convert(dt, o->qd, SKV_F32, x, (int64_t)n);
    free(x);
    rd_floats(r, o->w, (size_t)T * H);
    const int with_qs = dt == SKV_FP8_E4M3 && (rd_u8(r) & 1);
    o->q = (skv_indexer_query){T, H, D, dt, o->qd, with_qs ? o->qs : NULL, o->w, NULL};
    const uint8_t f = rd_u8(r);
    o->q.n_sink = f & 1 ? (int32_t)rd_range(r, 0, 6) : 0;
    o->q.n_window = f & 2 ? (int32_t)rd_range(r, 0, 6) : 0;
}

/* Tokens [t0, t1) of the query as one of their own. */
static skv_indexer_query fq_sub(const fq *o, int32_t t0, int32_t t1, const int32_t *pos)
{
    skv_indexer_query s = o->q;
    const size_t per = (size_t)o->q.n_heads * o->q.head_dim;
    const size_t es = o->q.dtype == SKV_F32 ? 4 : o->q.dtype == SKV_BF16 ? 2 : 1;
    s.n_tokens = t1 - t0;
    s.q = (const uint8_t *)o->qd + (size_t)t0 * per * es;
    s.q_scale = o->q.q_scale ? o->q.q_scale + (size_t)t0 * o->q.n_heads : NULL;
    s.weights = o->w + (size_t)t0 * o->q.n_heads;
    s.positions = pos;
    return s;
}

static void fq_free(fq *o) { free(o->qd), free(o->qs), free(o->w); }

static skv_dtype rd_key_dtype(reader *r, int32_t *D)
{
    static const skv_dtype kt[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3, SKV_MXFP4_E2M1};
    const skv_dtype t = kt[rd_u8(r) % 4];
    static const int32_t dims[] = {1, 5, 8, 16, 24};
    *D = t == SKV_MXFP4_E2M1 ? 32 * (int32_t)rd_range(r, 1, 2) : dims[rd_u8(r) % 5];
    return t;
}

/* Contiguous keys (every key dtype, MXFP4 included) with forced keys and positions: top-k
 * against the documented selection over skv_indexer_scores. */
static void forced_case(reader *r, skv_context *ctx)
{
    int32_t D;
    const skv_dtype kt = rd_key_dtype(r, &D);
    const int32_t T = (int32_t)rd_range(r, 0, 3), H = (int32_t)rd_range(r, 1, 4);
    const int64_t L = rd_range(r, 0, 150);
    int32_t k = (int32_t)rd_range(r, 1, 40);
    fkeys fk;
    fkeys_make(&fk, r, kt, D, L);
    fq q;
    fq_make(&q, r, T, H, D);
    int32_t *pos = NULL;
    if (rd_u8(r) & 1) {
        pos = fz_malloc((size_t)T * 4 + 4);
        for (int32_t t = 0; t < T; t++)
            pos[t] = (int32_t)rd_range(r, -2, L + 2);
        q.q.positions = pos;
    }
    const skv_key_block kb = fkeys_block(&fk, 0, L);
    const size_t n_top = (size_t)T * k;
    float *sc = fz_malloc((size_t)T * (size_t)L * 4 + 4), *tv = fz_malloc(n_top * 4 + 64), *rv = fz_malloc(n_top * 4 + 4);
    int32_t *ti = fz_malloc(n_top * 4 + 64), *ri = fz_malloc(n_top * 4 + 4);
    memset(tv, SENT, n_top * 4 + 64), memset(ti, SENT, n_top * 4 + 64);
    REQUIRE(skv_indexer_scores(ctx, &q.q, &kb, sc) == SKV_OK, "scores (dtype %d)", kt);
    const skv_status st = skv_indexer_topk(ctx, &q.q, &kb, k, ti, tv);
    if (q.q.n_sink + q.q.n_window > k) {
        REQUIRE(st == SKV_ERR_INVALID_ARG && untouched(tv, 64) && untouched(ti, 64),
                "forced %d + %d > k %d: status %d", q.q.n_sink, q.q.n_window, k, st);
    } else {
        REQUIRE(st == SKV_OK, "forced top-k: status %d", st);
        for (int32_t t = 0; t < T; t++) {
            const int64_t v = pos ? (pos[t] + 1 < 0 ? 0 : pos[t] + 1 > L ? L : pos[t] + 1) : L;
            ref_forced(sc + (size_t)t * L, 0, v, q.q.n_sink, q.q.n_window, k, ri + (size_t)t * k, rv + (size_t)t * k);
            same_topk(ti + (size_t)t * k, tv + (size_t)t * k, ri + (size_t)t * k, rv + (size_t)t * k, k, "forced top-k");
        }
    }
    fkeys_free(&fk), fq_free(&q);
    free(pos), free(sc), free(tv), free(rv), free(ti), free(ri);
}

/* skv_indexer_topk_ragged: token t sees [ks[t], ke[t]); checked against the documented
 * selection over that range of skv_indexer_scores' row (forced keys counted from ks). */
static void ragged_case(reader *r, skv_context *ctx)
{
    int32_t D;
    const skv_dtype kt = rd_key_dtype(r, &D);
    const int32_t T = (int32_t)rd_range(r, 0, 4), H = (int32_t)rd_range(r, 1, 4);
    const int64_t L = rd_range(r, 0, 150);
    const int32_t k = (int32_t)rd_range(r, 1, 40);
    fkeys fk;
    fkeys_make(&fk, r, kt, D, L);
    fq q;
    fq_make(&q, r, T, H, D);
    int32_t *ks = fz_malloc((size_t)T * 4 + 4), *ke = fz_malloc((size_t)T * 4 + 4);
    for (int32_t t = 0; t < T; t++) {
        const int same = t > 0 && (rd_u8(r) & 1); /* tokens of one sequence share ks */
        ks[t] = same ? ks[t - 1] : (int32_t)rd_range(r, 0, L);
        ke[t] = (int32_t)rd_range(r, ks[t], L);
    }
    /* one bad range when the input asks (zero bytes, an exhausted input's, keep them valid) */
    const uint8_t bad = rd_u8(r);
    const int ranges_ok = !(T > 0 && bad >= 1 && bad <= 3);
    if (!ranges_ok) {
        const int32_t t = (int32_t)rd_range(r, 0, T - 1);
        if (bad == 1)
            ks[t] = -1;
        else if (bad == 2)
            ke[t] = ks[t] - 1;
        else
            ke[t] = (int32_t)L + 1;
    }
    const uint8_t fl = rd_u8(r);
    const uint32_t flags = (fl & 1 ? SKV_RAGGED_RELATIVE : 0u) | (fl == 0xfe ? 2u : 0u); /* 2: unknown */
    const skv_key_block kb = fkeys_block(&fk, 0, L);
    const size_t n_top = (size_t)T * k;
    float *sc = fz_malloc((size_t)T * (size_t)L * 4 + 4), *tv = fz_malloc(n_top * 4 + 64), *rv = fz_malloc(n_top * 4 + 4);
    int32_t *ti = fz_malloc(n_top * 4 + 64), *ri = fz_malloc(n_top * 4 + 4);
    memset(tv, SENT, n_top * 4 + 64), memset(ti, SENT, n_top * 4 + 64);
    REQUIRE(skv_indexer_scores(ctx, &q.q, &kb, sc) == SKV_OK, "scores");
    const skv_status st = skv_indexer_topk_ragged(ctx, &q.q, &kb, ks, ke, k, flags, ti, tv);
    if (!ranges_ok || q.q.n_sink + q.q.n_window > k || (flags & 2)) {
        REQUIRE(st == SKV_ERR_INVALID_ARG && untouched(tv, 64) && untouched(ti, 64),
                "invalid ragged call: status %d", st);
    } else {
        REQUIRE(st == SKV_OK, "ragged: status %d", st);
        for (int32_t t = 0; t < T; t++) {
            int32_t *want = ri + (size_t)t * k;
            ref_forced(sc + (size_t)t * L, ks[t], ke[t], q.q.n_sink, q.q.n_window, k, want, rv + (size_t)t * k);
            for (int32_t j = 0; (flags & SKV_RAGGED_RELATIVE) && j < k; j++)
                want[j] = want[j] < 0 ? -1 : want[j] - ks[t];
            same_topk(ti + (size_t)t * k, tv + (size_t)t * k, want, rv + (size_t)t * k, k, "ragged top-k");
        }
    }
    fkeys_free(&fk), fq_free(&q);
    free(ks), free(ke), free(sc), free(tv), free(rv), free(ti), free(ri);
}

/* skv_paged_topk over a pool of blocks in shuffled order (shared by the sequences' tables,
 * partly filled last blocks, a gap between values and scales): against the documented
 * selection over skv_indexer_scores of each sequence's keys, with DeepGEMM's visibility rule
 * or positions; an out-of-pool block id or a bad q_start is refused and writes nothing. */
static void paged_case(reader *r, skv_context *ctx)
{
    enum { MAX_S = 3 };
    int32_t D;
    const skv_dtype kt = rd_key_dtype(r, &D);
    const int32_t H = (int32_t)rd_range(r, 1, 4), P = (int32_t)rd_range(r, 1, 9);
    const int32_t n_seqs = (int32_t)rd_range(r, 0, MAX_S), k = (int32_t)rd_range(r, 1, 40);
    int32_t len[MAX_S], qst[MAX_S + 1] = {0}, tab[MAX_S * 80];
    int64_t stride = 1, used = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        len[i] = (int32_t)rd_range(r, 0, 80);
        const int64_t nb = (len[i] + P - 1) / P;
        stride = nb > stride ? nb : stride;
        used += nb;
        qst[i + 1] = qst[i] + (int32_t)rd_range(r, 0, 2);
    }
    const int32_t T = qst[n_seqs];
    const int64_t n_blocks = used + rd_range(r, 0, 3);
    /* block ids: a permutation of the pool, so that sequences' blocks interleave */
    int32_t perm[MAX_S * 80 + 3];
    for (int32_t b = 0; b < n_blocks; b++)
        perm[b] = b;
    for (int32_t b = (int32_t)n_blocks - 1; b > 0; b--) {
        const int32_t j = (int32_t)rd_range(r, 0, b), x = perm[b];
        perm[b] = perm[j], perm[j] = x;
    }
    fkeys fk[MAX_S];
    const size_t row_b = kt == SKV_MXFP4_E2M1 ? (size_t)D / 2 : (size_t)D * skv_dtype_size(kt);
    const size_t sc_b = kt == SKV_FP8_E4M3 ? 4 : kt == SKV_MXFP4_E2M1 ? (size_t)D / 32 : 0;
    const size_t scale_off = ((size_t)P * row_b + 3) / 4 * 4 + 4 * (size_t)rd_range(r, 0, 2);
    const size_t block_bytes = ((sc_b ? scale_off + (size_t)P * sc_b : (size_t)P * row_b) + 3) / 4 * 4 +
                               4 * (size_t)rd_range(r, 0, 1);
    uint8_t *pool = fz_malloc((size_t)(n_blocks ? n_blocks : 1) * block_bytes);
    memset(pool, 0xa5, (size_t)(n_blocks ? n_blocks : 1) * block_bytes);
    int64_t next = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        fkeys_make(&fk[i], r, kt, D, len[i]);
        for (int64_t j = 0; j * P < len[i]; j++) {
            const int32_t id = perm[next++];
            tab[i * stride + j] = id;
            uint8_t *blk = pool + (size_t)id * block_bytes;
            for (int32_t t = 0; t < P && j * P + t < len[i]; t++) {
                memcpy(blk + (size_t)t * row_b, fk[i].v + (size_t)(j * P + t) * row_b, row_b);
                memcpy(blk + scale_off + (size_t)t * sc_b, fk[i].sc + (size_t)(j * P + t) * sc_b, sc_b);
            }
        }
    }
    fq q;
    fq_make(&q, r, T, H, D);
    int32_t *pos = NULL;
    if (rd_u8(r) & 1) {
        pos = fz_malloc((size_t)T * 4 + 4);
        for (int32_t t = 0; t < T; t++)
            pos[t] = (int32_t)rd_range(r, -2, 82);
        q.q.positions = pos;
    }
    const skv_paged_keys pk = {D, kt, P, pool, n_blocks, block_bytes, scale_off};
    const uint8_t bad = rd_u8(r);
    int valid = q.q.n_sink + q.q.n_window <= k;
    if (bad == 1 && n_seqs > 0 && len[0] > 0)
        tab[0] = (int32_t)n_blocks, valid = 0; /* past the pool */
    int32_t qbad[MAX_S + 1];
    memcpy(qbad, qst, sizeof qst);
    if (bad == 2 && n_seqs > 0)
        qbad[n_seqs] = T + 1, valid = 0;
    int one_each = bad == 3; /* NULL q_start: one token per sequence */
    for (int32_t i = 0; i < n_seqs; i++)
        one_each &= qst[i + 1] - qst[i] == 1;
    const skv_paged_batch pb = {n_seqs, tab, stride, len, one_each ? NULL : qbad};
    const size_t n_top = (size_t)T * k;
    float *tv = fz_malloc(n_top * 4 + 64), *rv = fz_malloc(n_top * 4 + 4);
    int32_t *ti = fz_malloc(n_top * 4 + 64), *ri = fz_malloc(n_top * 4 + 4);
    memset(tv, SENT, n_top * 4 + 64), memset(ti, SENT, n_top * 4 + 64);
    const skv_status st = skv_paged_topk(ctx, &pk, &pb, &q.q, k, ti, tv);
    if (!valid) {
        REQUIRE(st == SKV_ERR_INVALID_ARG && untouched(tv, 64) && untouched(ti, 64),
                "invalid paged call: status %d (bad %d)", st, bad);
    } else {
        REQUIRE(st == SKV_OK, "paged top-k: status %d (dtype %d P %d)", st, kt, P);
        for (int32_t i = 0; i < n_seqs; i++) {
            const int32_t t0 = qst[i], n = qst[i + 1] - qst[i];
            if (!n)
                continue;
            const skv_key_block kb = fkeys_block(&fk[i], 0, len[i]);
            const skv_indexer_query sq = fq_sub(&q, t0, t0 + n, NULL);
            float *sc = fz_malloc((size_t)n * len[i] * 4 + 4);
            REQUIRE(skv_indexer_scores(ctx, &sq, &kb, sc) == SKV_OK, "sequence scores");
            for (int32_t j = 0; j < n; j++) {
                const int64_t p = pos ? pos[t0 + j] : (int64_t)len[i] - n + j;
                const int64_t v = p + 1 < 0 ? 0 : p + 1 > len[i] ? len[i] : p + 1;
                const size_t o = (size_t)(t0 + j) * k;
                ref_forced(sc + (size_t)j * len[i], 0, v, q.q.n_sink, q.q.n_window, k, ri + o, rv + o);
                same_topk(ti + o, tv + o, ri + o, rv + o, k, "paged top-k");
            }
            free(sc);
        }
    }
    for (int32_t i = 0; i < n_seqs; i++)
        fkeys_free(&fk[i]);
    fq_free(&q);
    free(pool), free(pos), free(tv), free(rv), free(ti), free(ri);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    fail_alloc fa = {0};
    skv_context *ctx = fz_context(&fa, rd_cpu_mask(&r));
    for (int i = 0; i < 4 && r.n; i++) {
        switch (rd_u8(&r) % 6) {
        case 0: indexer_case(&r, ctx); break;
        case 1: attention_case(&r, ctx); break;
        case 2: convert_case(&r); break;
        case 3: forced_case(&r, ctx); break;
        case 4: ragged_case(&r, ctx); break;
        case 5: paged_case(&r, ctx); break;
        }
    }
    skv_context_destroy(ctx);
    REQUIRE(fa.live == 0, "%ld allocations leaked", fa.live);
    return 0;
}
