/* MISA / HISA: pooled block keys against recomputation (also through random appends, removes
 * and forks of the key cache), the router formula against a double-precision computation, the
 * exactness dials at every CPU level and dtype, recall monotone in h, C and m, bad parameters,
 * the quality metrics against a direct computation, and the real activations against
 * reference.json. */
#include "common.h"
#include "data.h"

static skv_context *ctx;
static int quick; /* --quick (under the sanitizers): the real-data check on two of the layers */

/* ---- pooled sums ---------------------------------------------------------------------------- */

/* The f32 value of key s as the library sees it. */
static float key_f32(const idx_data *d, int64_t s, int32_t i)
{
    return (float)elem(d->kt, d->kd, d->ks, s * d->D + i, d->D);
}

static void test_pool(void)
{
    rng r = {31};
    static const int32_t chunks[] = {1, 7, 16, 64};
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    for (int c = 0; c < 4; c++)
        for (int t = 0; t < 3; t++) {
            idx_data d;
            idx_data_make(&d, &r, 1, 2, 12, 300 + c, SKV_F32, dts[t], FILL_RANDOM, 0);
            const skv_key_block kb = idx_keys(&d);
            const int32_t C = chunks[c], nc = (int32_t)((d.L + C - 1) / C);
            float *sums = xmalloc((size_t)nc * d.D * 4);
            CHECK_OK(skv_pool_keys(&kb, C, sums));
            long bad = 0;
            for (int32_t i = 0; i < nc; i++)
                for (int32_t x = 0; x < d.D; x++) {
                    float want = 0;
                    for (int64_t s = (int64_t)i * C; s < (int64_t)(i + 1) * C && s < d.L; s++)
                        want = s == (int64_t)i * C ? key_f32(&d, s, x) : want + key_f32(&d, s, x);
                    bad += sums[(size_t)i * d.D + x] != want;
                }
            CHECK(bad == 0, "chunk %d dtype %d: %ld pooled sums differ from summing in order", C, t, bad);
            /* block means: chunk sums in order over the block, divided by its true length */
            const skv_pooled_keys pk = {C, sums};
            const int32_t B = C * 3, nb = (int32_t)((d.L + B - 1) / B);
            float *means = xmalloc((size_t)nb * d.D * 4);
            int32_t *counts = xmalloc((size_t)nb * 4);
            CHECK_OK(skv_block_means(&kb, &pk, B, means, counts));
            bad = 0;
            for (int32_t b = 0; b < nb; b++) {
                const int64_t n = d.L - (int64_t)b * B < B ? d.L - (int64_t)b * B : B;
                bad += counts[b] != n;
                for (int32_t x = 0; x < d.D; x++) {
                    float s = 0;
                    for (int32_t i = b * 3; i < b * 3 + 3 && i < nc; i++)
                        s = i == b * 3 ? sums[(size_t)i * d.D + x] : s + sums[(size_t)i * d.D + x];
                    bad += means[(size_t)b * d.D + x] != s / (float)n;
                }
            }
            CHECK(bad == 0, "chunk %d: %ld block means differ", C, bad);
            if (C > 1)
                CHECK_STATUS(skv_block_means(&kb, &pk, C + 1, means, counts), SKV_ERR_INVALID_ARG);
            free(sums), free(means), free(counts);
            idx_data_free(&d);
        }
}

/* The key cache's pooled sums after random appends, removes and forks equal pooling its keys
 * afresh. */
static void check_kcache_pool(skv_kcache *c, int32_t seq, int32_t layer, skv_dtype dt, int32_t D,
                              int32_t chunk, const char *what)
{
    int64_t len;
    CHECK_OK(skv_kcache_seq_length(c, seq, layer, &len));
    if (len == 0)
        return;
    void *keys = xmalloc((size_t)len * D * 4);
    float *scales = dt == SKV_FP8_E4M3 ? xmalloc((size_t)len * 4) : NULL;
    CHECK_OK(skv_kcache_read(c, seq, layer, 0, len, keys, scales));
    const skv_key_block kb = {len, D, dt, keys, scales};
    const int32_t nc = (int32_t)((len + chunk - 1) / chunk), B = 2 * chunk, nb = (int32_t)((len + B - 1) / B);
    float *sums = xmalloc((size_t)nc * D * 4), *want = xmalloc((size_t)nb * D * 4), *got = xmalloc((size_t)nb * D * 4);
    CHECK_OK(skv_pool_keys(&kb, chunk, sums));
    const skv_pooled_keys pk = {chunk, sums};
    CHECK_OK(skv_block_means(&kb, &pk, B, want, NULL));
    CHECK_OK(skv_kcache_block_means(c, seq, layer, B, got, NULL));
    CHECK(memcmp(want, got, (size_t)nb * D * 4) == 0, "%s: the cache's pooled means differ from pooling its keys", what);
    free(keys), free(scales), free(sums), free(want), free(got);
}

static void test_kcache_pool(void)
{
    rng r = {5};
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    for (int t = 0; t < 3; t++) {
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.n_layers = 2, kp.head_dim = 8, kp.dtype = dts[t], kp.page_tokens = 16, kp.pool_chunk = 4;
        skv_kcache *c;
        CHECK_OK(skv_kcache_create(ctx, &kp, &c));
        int32_t seqs[4], n_seqs = 1;
        CHECK_OK(skv_kcache_seq_create(c, &seqs[0]));
        float buf[200 * 8];
        for (int op = 0; op < 300; op++) {
            const int32_t s = seqs[rng_int(&r, 0, n_seqs - 1)], layer = (int32_t)rng_int(&r, 0, 1);
            const int64_t u = rng_int(&r, 0, 9);
            if (u < 6) {
                const int64_t n = rng_int(&r, 0, 40);
                for (int64_t i = 0; i < n * 8; i++)
                    buf[i] = (float)rng_uniform(&r, -2, 2);
                const skv_key_block kb = {n, 8, SKV_F32, buf, NULL};
                CHECK_OK(skv_kcache_append(c, s, layer, &kb));
            } else if (u < 8) {
                int64_t len;
                skv_kcache_seq_length(c, s, layer, &len);
                const int64_t p0 = rng_int(&r, 0, len + 2), p1 = rng_int(&r, -1, len + 5);
                skv_kcache_seq_remove(c, s, p0, p1 < p0 && p1 >= 0 ? p0 : p1);
            } else if (n_seqs < 4) {
                CHECK_OK(skv_kcache_seq_fork(c, s, &seqs[n_seqs++]));
            }
            for (int i = 0; i < n_seqs; i++)
                for (int32_t l = 0; l < 2; l++) {
                    char what[64];
                    snprintf(what, sizeof what, "dtype %d op %d seq %d layer %d", t, op, i, l);
                    check_kcache_pool(c, seqs[i], l, dts[t], 8, 4, what);
                }
        }
        skv_kcache_destroy(c);
    }
}

/* A truncation inside a pooled chunk of a page shared with a fork rebuilds that chunk's sum: the
 * page must be copied first, or the fork's block means become the truncated sequence's. Every
 * dtype, the cut at each offset within the chunk, and each sequence of the pair truncated. */
static void test_kcache_pool_fork_truncate(void)
{
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    rng r = {47};
    float buf[24 * 8];
    for (int i = 0; i < 24 * 8; i++)
        buf[i] = (float)rng_uniform(&r, -2, 2);
    for (int t = 0; t < 3; t++)
        for (int32_t cut = 17; cut < 24; cut++)
            for (int which = 0; which < 2; which++) {
                skv_kcache_params kp;
                skv_kcache_params_init(&kp);
                kp.n_layers = 2, kp.head_dim = 8, kp.dtype = dts[t], kp.page_tokens = 16, kp.pool_chunk = 4;
                skv_kcache *c;
                int32_t a, b;
                CHECK_OK(skv_kcache_create(ctx, &kp, &c));
                CHECK_OK(skv_kcache_seq_create(c, &a));
                const skv_key_block kb = {24, 8, SKV_F32, buf, NULL};
                CHECK_OK(skv_kcache_append(c, a, 0, &kb));
                CHECK_OK(skv_kcache_append(c, a, 1, &kb));
                CHECK_OK(skv_kcache_seq_fork(c, a, &b));
                CHECK_OK(skv_kcache_seq_remove(c, which ? b : a, cut, -1));
                char what[80];
                for (int32_t l = 0; l < 2; l++) {
                    snprintf(what, sizeof what, "dtype %d cut %d seq %c layer %d", t, cut, which ? 'a' : 'b', l);
                    check_kcache_pool(c, which ? a : b, l, dts[t], 8, 4, what);
                    check_kcache_pool(c, which ? b : a, l, dts[t], 8, 4, what);
                }
                skv_kcache_destroy(c);
            }
}

/* A key cache with a lane copy (the few-head decode kernel's layout) against one without: MISA
 * and MISA-dagger decode return the same keys and scores to the bit, after appends, a removal
 * and a fork (fp8 keys with zeros, subnormals and NaN among them). */
static void test_lane_copy(void)
{
    rng r = {29};
    enum { D = 32, H = 16, L = 3000, K = 64 };
    skv_kcache *c[2];
    int32_t seq[2], fork[2];
    uint8_t *k8 = xmalloc((size_t)L * D);
    float *ks = xmalloc((size_t)L * 4), *kf = xmalloc((size_t)L * D * 4);
    for (int64_t i = 0; i < (int64_t)L * D; i++)
        kf[i] = (float)rng_uniform(&r, -2, 2) * (i % 97 == 0 ? 1e-4f : 1.0f);
    CHECK_OK(skv_quantize_fp8(kf, L, D, D, 0, k8, ks));
    for (int64_t i = 0; i < (int64_t)L * D; i += 131)
        k8[i] = i % 3 == 0 ? 0x00 : i % 3 == 1 ? 0x03 : 0x7f; /* zero, subnormal, NaN */
    for (int v = 0; v < 2; v++) {
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.head_dim = D, kp.page_tokens = 64, kp.pool_chunk = 16, kp.lane_copy = v;
        CHECK_OK(skv_kcache_create(ctx, &kp, &c[v]));
        CHECK_OK(skv_kcache_seq_create(c[v], &seq[v]));
        for (int64_t at = 0; at < L; at += 700) { /* appends that end inside a tile */
            const int64_t n = L - at < 700 ? L - at : 700;
            const skv_key_block kb = {n, D, SKV_FP8_E4M3, k8 + at * D, ks + at};
            CHECK_OK(skv_kcache_append(c[v], seq[v], 0, &kb));
        }
        CHECK_OK(skv_kcache_seq_remove(c[v], seq[v], 1000, 1037)); /* rows move by 37 */
        CHECK_OK(skv_kcache_seq_fork(c[v], seq[v], &fork[v]));
        const skv_key_block kb = {5, D, SKV_FP8_E4M3, k8, ks};
        CHECK_OK(skv_kcache_append(c[v], fork[v], 0, &kb)); /* the fork's last page copied */
    }
    idx_data d;
    idx_data_make(&d, &r, 1, H, D, L, SKV_FP8_E4M3, SKV_FP8_E4M3, FILL_RANDOM, 1);
    skv_indexer_query q = idx_query(&d);
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.heads = 4, mp.block = 64, mp.min_length = 0;
    for (int dagger = 0; dagger < 2; dagger++)
        for (int f = 0; f < 2; f++) {
            int32_t idx[2][K];
            float sc[2][K];
            mp.candidates = dagger ? 4 * K : 0;
            for (int v = 0; v < 2; v++) {
                const int32_t sq = f ? fork[v] : seq[v];
                int32_t pos = f ? L - 37 + 4 : L - 37 - 1 - 100; /* the fork's end; inside */
                q.positions = &pos;
                CHECK_OK(skv_kcache_misa_topk(c[v], sq, 0, &q, &mp, K, idx[v], sc[v]));
            }
            CHECK(!memcmp(idx[0], idx[1], sizeof idx[0]) && !memcmp(sc[0], sc[1], sizeof sc[0]),
                  "lane copy changes MISA%s (fork %d)", dagger ? "-dagger" : "", f);
        }
    for (int v = 0; v < 2; v++)
        skv_kcache_destroy(c[v]);
    idx_data_free(&d);
    free(k8), free(ks), free(kf);
}

/* The key cache remembers whole blocks' means for the router across calls: decode steps,
 * prefill chunks, removals (which forget the means from the removed rows' block on), forks and
 * a change of router block must give what MISA gives on the same keys laid out contiguously
 * (pooled afresh, nothing remembered), to the bit. Two threads: blocks spread over them. */
static void test_kcache_memo(void)
{
    rng r = {41};
    enum { D = 32, H = 16, MAXL = 2600, K = 32 };
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = D, kp.page_tokens = 16, kp.pool_chunk = 16;
    skv_kcache *c;
    CHECK_OK(skv_kcache_create(ctx, &kp, &c));
    int32_t seq;
    CHECK_OK(skv_kcache_seq_create(c, &seq));
    float *kf = xmalloc((size_t)MAXL * D * 4), *sums = xmalloc((size_t)MAXL * D * 4);
    uint8_t *k8 = xmalloc((size_t)MAXL * D);
    float *ks = xmalloc((size_t)MAXL * 4);
    idx_data d;
    idx_data_make(&d, &r, 3, H, D, 0, SKV_FP8_E4M3, SKV_FP8_E4M3, FILL_RANDOM, 0);
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.heads = 4, mp.min_length = 0;
    int64_t len = 0;
    for (int step = 0; step < 90; step++) {
        const int64_t u = rng_int(&r, 0, 19);
        if (u < 12 || len < 100) { /* decode steps, now and then a prefill chunk */
            const int64_t n = u < 10 ? 1 : rng_int(&r, 20, 300);
            if (len + n > MAXL)
                continue;
            for (int64_t i = 0; i < n * D; i++)
                kf[i] = (float)rng_uniform(&r, -1, 1);
            CHECK_OK(skv_quantize_fp8(kf, n, D, D, 0, k8 + len * D, ks + len));
            const skv_key_block kb = {n, D, SKV_FP8_E4M3, k8 + len * D, ks + len};
            CHECK_OK(skv_kcache_append(c, seq, 0, &kb));
            len += n;
        } else if (u < 15) { /* a removal inside the remembered blocks */
            const int64_t p0 = rng_int(&r, 0, len - 1), p1 = p0 + rng_int(&r, 1, 70);
            const int64_t b = p1 < len ? p1 : len;
            memmove(k8 + p0 * D, k8 + b * D, (size_t)(len - b) * D);
            memmove(ks + p0, ks + b, (size_t)(len - b) * 4);
            CHECK_OK(skv_kcache_seq_remove(c, seq, p0, p1));
            len -= b - p0;
        } else if (u < 17) { /* go on in a fork: it remembers nothing yet */
            int32_t f;
            CHECK_OK(skv_kcache_seq_fork(c, seq, &f));
            CHECK_OK(skv_kcache_seq_free(c, seq));
            seq = f;
        } else { /* another router block */
            mp.block = mp.block == 64 ? 128 : 64;
        }
        const skv_key_block kb = {len, D, SKV_FP8_E4M3, k8, ks};
        CHECK_OK(skv_pool_keys(&kb, 16, sums));
        const skv_pooled_keys pk = {16, sums};
        for (int32_t T = 1; T <= 3; T += 2) { /* a decode token (sometimes mid-context), a chunk */
            skv_indexer_query q = idx_query(&d);
            int32_t pos[3];
            for (int32_t t = 0; t < T; t++)
                pos[t] = (int32_t)(T == 1 && step % 4 == 0 ? rng_int(&r, 0, len - 1) : len - T + t);
            q.n_tokens = T, q.positions = pos;
            int32_t a[3 * K], b[3 * K];
            float sa[3 * K], sb[3 * K];
            CHECK_OK(skv_kcache_misa_topk(c, seq, 0, &q, &mp, K, a, sa));
            CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, K, b, sb));
            CHECK(!memcmp(a, b, (size_t)T * K * 4) && !memcmp(sa, sb, (size_t)T * K * 4),
                  "step %d: MISA on the cache (remembered means) differs from contiguous keys (T=%d L=%lld block %d)",
                  step, T, (long long)len, mp.block);
        }
    }
    skv_kcache_destroy(c);
    idx_data_free(&d);
    free(kf), free(sums), free(k8), free(ks);
}

/* ---- the router formula -------------------------------------------------------------------- */

static double ddot(const double *a, const double *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void test_router_formula(void)
{
    rng r = {9};
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    for (int trial = 0; trial < 12; trial++) {
        const int32_t H = trial % 3 == 0 ? 4 : trial % 3 == 1 ? 16 : 64, D = trial % 2 ? 16 : 32;
        const int64_t L = 250 + 37 * trial;
        idx_data d;
        idx_data_make(&d, &r, 5, H, D, L, dts[trial % 3], dts[(trial / 3) % 3], FILL_RANDOM, 2);
        d.pos[0] = 63, d.pos[1] = 64; /* the visible range ending at a chunk boundary, and one past */
        const skv_indexer_query q = idx_query(&d);
        const skv_key_block kb = idx_keys(&d);
        const int32_t chunk = 16, B = 32;
        float *sums = xmalloc((size_t)((L + chunk - 1) / chunk) * D * 4);
        CHECK_OK(skv_pool_keys(&kb, chunk, sums));
        const skv_pooled_keys pk = {chunk, sums};
        double *kv = xmalloc((size_t)L * D * 8), *qv = xmalloc((size_t)D * 8), *mean = xmalloc((size_t)D * 8);
        for (int64_t i = 0; i < L * D; i++)
            kv[i] = elem(d.kt, d.kd, d.ks, i, D);
        for (int mode = 0; mode < 4; mode++) {
            skv_misa_params mp;
            skv_misa_params_init(&mp);
            mp.route = (skv_route_mode)mode, mp.heads = H / 2, mp.block = B;
            int32_t *heads = xmalloc((size_t)d.T * mp.heads * 4);
            float *E = xmalloc((size_t)d.T * H * 4);
            CHECK_OK(skv_route_heads(ctx, &q, &kb, &pk, &mp, heads, E));
            long bad = 0;
            for (int32_t t = 0; t < d.T; t++) {
                const int64_t vis = idx_visible(&d, t);
                for (int32_t h = 0; h < H; h++) {
                    for (int32_t x = 0; x < D; x++)
                        qv[x] = elem(d.qt, d.qd, d.qs, ((int64_t)t * H + h) * D + x, D);
                    const double w = d.w[t * H + h];
                    double e = 0, mag = 0;
                    if (mode == SKV_ROUTE_QNORM) {
                        e = sqrt(ddot(qv, qv, D));
                        mag = e;
                    } else if (mode == SKV_ROUTE_OWN_KEY) {
                        const int64_t p = d.pos[t];
                        if (p >= 0 && p < L) {
                            const double x = ddot(qv, kv + p * D, D);
                            e = w * (x > 0 ? x : 0);
                            for (int32_t i = 0; i < D; i++)
                                mag += fabs(w * qv[i] * kv[p * D + i]);
                        }
                    } else { /* pooled: the blocks' terms summed, or (POOLED_MAX) the largest */
                        for (int64_t b0 = 0; b0 < vis; b0 += B) {
                            const int64_t end = b0 + B < vis ? b0 + B : vis;
                            for (int32_t x = 0; x < D; x++) {
                                mean[x] = 0;
                                for (int64_t s = b0; s < end; s++)
                                    mean[x] += kv[s * D + x];
                                mean[x] /= (double)(end - b0);
                            }
                            const double x = ddot(qv, mean, D), term = fabs(w) * (x > 0 ? x : 0);
                            double m = 0;
                            for (int32_t i = 0; i < D; i++)
                                m += fabs(w * qv[i] * mean[i]);
                            if (mode == SKV_ROUTE_POOLED)
                                e += term, mag += m;
                            else
                                e = term > e ? term : e, mag = m > mag ? m : mag;
                        }
                    }
                    const double tol = 8.0 * (D + B + 8) * 0x1p-24 * (mag + fabs(e)) + 1e-30;
                    const int ok = fabs(E[t * H + h] - e) <= tol;
                    if (!ok && bad++ < 3)
                        CHECK(ok, "mode %d trial %d t=%d h=%d: E %.9g, reference %.9g", mode, trial, t, h, E[t * H + h], e);
                }
                /* the heads are the top h of the library's own scores, ties to the lower head */
                for (int32_t i = 0; i < mp.heads; i++) {
                    const int32_t hh = heads[t * mp.heads + i];
                    CHECK(hh >= 0 && hh < H, "head index");
                    if (i > 0) {
                        const int32_t hp = heads[t * mp.heads + i - 1];
                        const int c = score_cmp(E[t * H + hp], E[t * H + hh]);
                        CHECK(c > 0 || (c == 0 && hp < hh), "mode %d: heads out of order", mode);
                    }
                }
                for (int32_t h = 0; h < H; h++) { /* nothing outside beats the last one inside */
                    int in = 0;
                    for (int32_t i = 0; i < mp.heads; i++)
                        in |= heads[t * mp.heads + i] == h;
                    const int32_t last = heads[t * mp.heads + mp.heads - 1];
                    if (!in)
                        CHECK(score_cmp(E[t * H + h], E[t * H + last]) < 0 ||
                                  (score_cmp(E[t * H + h], E[t * H + last]) == 0 && h > last),
                              "mode %d: head %d left out but ranks above %d", mode, h, last);
                }
            }
            CHECK(bad == 0, "mode %d trial %d: %ld router scores off", mode, trial, bad);
            free(heads), free(E);
        }
        free(sums), free(kv), free(qv), free(mean);
        idx_data_free(&d);
    }
}

/* Decode (one token, fewer tokens than threads) routes by spreading blocks over the threads; its
 * scores must equal the token-parallel path's and not depend on the thread count. */
static void test_route_decode(void)
{
    rng r = {17};
    idx_data d;
    idx_data_make(&d, &r, 2, 16, 32, 5000, SKV_FP8_E4M3, SKV_FP8_E4M3, FILL_RANDOM, 1);
    const skv_key_block kb = idx_keys(&d);
    float *sums = xmalloc((size_t)(5000 / 16 + 1) * 32 * 4);
    CHECK_OK(skv_pool_keys(&kb, 16, sums));
    const skv_pooled_keys pk = {16, sums};
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    skv_indexer_query both = idx_query(&d), last = both;
    last.n_tokens = 1; /* the second token alone */
    last.q = (const uint8_t *)both.q + (size_t)16 * 32;
    last.q_scale = both.q_scale + 16, last.weights = both.weights + 16, last.positions = both.positions + 1;
    float E2[2 * 16], E1[16], E1b[16];
    int32_t h2[2 * 4], h1[4], h1b[4];
    skv_context *c1 = ctx_new(SKV_CPU_ALL, 1), *c2 = ctx_new(SKV_CPU_ALL, 2);
    /* blocks of 64: 79 blocks, spread over the threads; of 256: 20, routed on one thread; both
       block routers */
    for (int it = 0; it < 4; it++) {
        const int32_t blk = it % 2 ? 256 : 64;
        mp.route = it < 2 ? SKV_ROUTE_POOLED : SKV_ROUTE_POOLED_MAX;
        mp.block = blk, mp.heads = 4, mp.min_length = 0, mp.candidates = 0;
        CHECK_OK(skv_route_heads(c2, &both, &kb, &pk, &mp, h2, E2)); /* token-parallel */
        CHECK_OK(skv_route_heads(c2, &last, &kb, &pk, &mp, h1, E1)); /* blocks over threads */
        CHECK_OK(skv_route_heads(c1, &last, &kb, &pk, &mp, h1b, E1b));
        CHECK(!memcmp(E1, E2 + 16, sizeof E1) && !memcmp(h1, h2 + 4, sizeof h1), "decode router differs from the token-parallel one");
        CHECK(!memcmp(E1, E1b, sizeof E1) && !memcmp(h1, h1b, sizeof h1), "decode router depends on the thread count");
        int32_t a[64], b[64];
        CHECK_OK(skv_misa_topk(c2, &last, &kb, &pk, &mp, 64, a, NULL));
        CHECK_OK(skv_misa_topk(c1, &last, &kb, &pk, &mp, 64, b, NULL));
        CHECK(!memcmp(a, b, sizeof a), "decode MISA depends on the thread count");
        mp.candidates = 1000;
        CHECK_OK(skv_misa_topk(c2, &last, &kb, &pk, &mp, 64, a, NULL));
        CHECK_OK(skv_misa_topk(c1, &last, &kb, &pk, &mp, 64, b, NULL));
        CHECK(!memcmp(a, b, sizeof a), "decode MISA-dagger depends on the thread count");
    }
    skv_context_destroy(c1), skv_context_destroy(c2);
    free(sums);
    idx_data_free(&d);
}

/* ---- dials ------------------------------------------------------------------------------------ */

static const struct { skv_dtype q, k; } dial_dtypes[] = {
    {SKV_F32, SKV_F32}, {SKV_BF16, SKV_BF16}, {SKV_FP8_E4M3, SKV_FP8_E4M3}, {SKV_F32, SKV_FP8_E4M3}};

static void test_dials(void)
{
    rng r = {77};
    for (int dt = 0; dt < 4; dt++) {
        /* prefill chunk: tokens at positions 200..1199 sample both sides of C and m * B */
        idx_data d;
        idx_data_make(&d, &r, 6, 16, 32, 1200, dial_dtypes[dt].q, dial_dtypes[dt].k, FILL_RANDOM, 0);
        d.pos = xmalloc(6 * 4);
        static const int32_t P[6] = {200, 300, 511, 700, 1000, 1199};
        memcpy(d.pos, P, sizeof P);
        const skv_indexer_query q = idx_query(&d);
        const skv_key_block kb = idx_keys(&d);
        const int32_t k = 50, chunk = 16;
        float *sums = xmalloc((size_t)(1200 / chunk + 1) * 32 * 4);
        CHECK_OK(skv_pool_keys(&kb, chunk, sums));
        const skv_pooled_keys pk = {chunk, sums};
        int32_t want[6 * 50], got[6 * 50];
        float wantv[6 * 50], gotv[6 * 50];

        /* a key cache holding the same keys, with pooled sums */
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.head_dim = 32, kp.dtype = dial_dtypes[dt].k, kp.page_tokens = 64, kp.pool_chunk = chunk;
        skv_kcache *kc;
        int32_t seq;
        CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
        CHECK_OK(skv_kcache_seq_create(kc, &seq));
        CHECK_OK(skv_kcache_append(kc, seq, 0, &kb));

        for (int lv = 0; lv < N_LEVELS; lv++) {
            if (!level_available(&all_levels[lv]))
                continue;
            skv_context *c = ctx_new(all_levels[lv].mask, 2);
            CHECK_OK(skv_indexer_topk(c, &q, &kb, k, want, wantv));
            skv_misa_params mp;
            skv_misa_params_init(&mp);
            mp.block = 32, mp.min_length = 0;
            /* h = H */
            mp.heads = 16;
            CHECK_OK(skv_misa_topk(c, &q, &kb, &pk, &mp, k, got, gotv));
            CHECK(!memcmp(got, want, sizeof got) && !memcmp(gotv, wantv, sizeof gotv), "%s dt %d: h = H differs from dense", all_levels[lv].name, dt);
            /* C >= visible: tokens that see at most C keys get the dense result */
            mp.heads = 4, mp.candidates = 512;
            CHECK_OK(skv_misa_topk(c, &q, &kb, &pk, &mp, k, got, gotv));
            for (int t = 0; t < 6; t++)
                if (P[t] + 1 <= 512)
                    CHECK(!memcmp(got + t * k, want + t * k, k * 4) && !memcmp(gotv + t * k, wantv + t * k, k * 4),
                          "%s dt %d t %d: C >= visible differs from dense", all_levels[lv].name, dt, t);
            /* m * B >= visible: tokens that see at most m * B keys get the dense result */
            skv_hisa_params hp;
            skv_hisa_params_init(&hp);
            hp.block = 32, hp.blocks = 12, hp.min_length = 0; /* 384 keys */
            CHECK_OK(skv_hisa_topk(c, &q, &kb, &pk, &hp, k, got, gotv));
            for (int t = 0; t < 6; t++)
                if (P[t] + 1 <= 384)
                    CHECK(!memcmp(got + t * k, want + t * k, k * 4) && !memcmp(gotv + t * k, wantv + t * k, k * 4),
                          "%s dt %d t %d: m * B >= visible differs from dense", all_levels[lv].name, dt, t);
            /* the length gate */
            mp.candidates = 0, mp.min_length = 5000;
            CHECK_OK(skv_misa_topk(c, &q, &kb, &pk, &mp, k, got, gotv));
            CHECK(!memcmp(got, want, sizeof got) && !memcmp(gotv, wantv, sizeof gotv), "%s: MISA length gate", all_levels[lv].name);
            hp.min_length = 5000;
            CHECK_OK(skv_hisa_topk(c, &q, &kb, &pk, &hp, k, got, gotv));
            CHECK(!memcmp(got, want, sizeof got) && !memcmp(gotv, wantv, sizeof gotv), "%s: HISA length gate", all_levels[lv].name);
            skv_context_destroy(c);
        }
        /* key cache paths equal the contiguous ones (same pooled sums, same keys) */
        {
            skv_misa_params mp;
            skv_misa_params_init(&mp);
            mp.block = 32, mp.min_length = 0, mp.heads = 4;
            int32_t a[6 * 50], b[6 * 50];
            for (int v = 0; v < 2; v++) {
                mp.candidates = v ? 200 : 0;
                CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, k, a, NULL));
                CHECK_OK(skv_kcache_misa_topk(kc, seq, 0, &q, &mp, k, b, NULL));
                CHECK(!memcmp(a, b, sizeof a), "dt %d: key-cache MISA%s differs from contiguous", dt, v ? "-dagger" : "");
            }
            skv_hisa_params hp;
            skv_hisa_params_init(&hp);
            hp.block = 32, hp.blocks = 6, hp.min_length = 0;
            CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, k, a, NULL));
            CHECK_OK(skv_kcache_hisa_topk(kc, seq, 0, &q, &hp, k, b, NULL));
            CHECK(!memcmp(a, b, sizeof a), "dt %d: key-cache HISA differs from contiguous", dt);
        }
        skv_kcache_destroy(kc);
        free(sums);
        idx_data_free(&d);
    }
}

/* ---- monotonicity ----------------------------------------------------------------------------- */

static double mean_recall(const skv_indexer_query *q, const skv_key_block *kb, const int32_t *sel,
                          int32_t k, double *per_token)
{
    CHECK_OK(skv_selection_quality(ctx, q, kb, sel, k, per_token, NULL));
    double m = 0;
    for (int32_t t = 0; t < q->n_tokens; t++)
        m += per_token[t];
    return m / q->n_tokens;
}

static void test_monotone(void)
{
    rng r = {12};
    idx_data d;
    idx_data_make(&d, &r, 16, 32, 32, 4000, SKV_F32, SKV_F32, FILL_RANDOM, 1);
    for (int64_t i = 0; i < (int64_t)d.T * d.H; i++) /* positive gates: adding heads adds evidence */
        d.w[i] = fabsf(d.w[i]);
    const skv_indexer_query q = idx_query(&d);
    const skv_key_block kb = idx_keys(&d);
    const int32_t k = 64;
    float *sums = xmalloc((size_t)(4000 / 16 + 1) * 32 * 4);
    CHECK_OK(skv_pool_keys(&kb, 16, sums));
    const skv_pooled_keys pk = {16, sums};
    int32_t *sel = xmalloc((size_t)d.T * k * 4);
    double *rec = xmalloc(d.T * 8), *prev = xmalloc(d.T * 8);
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.block = 64, mp.min_length = 0;
    for (int router = 0; router < 2; router++) { /* the paper's router and the pooled-max one */
        mp.route = router ? SKV_ROUTE_POOLED_MAX : SKV_ROUTE_POOLED, mp.candidates = 0;
        double last = -1;
        static const int32_t hs[] = {1, 2, 4, 8, 16, 32};
        for (int i = 0; i < 6; i++) {
            mp.heads = hs[i];
            CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, k, sel, NULL));
            const double m = mean_recall(&q, &kb, sel, k, rec);
            CHECK(m >= last - 1e-12, "router %d: recall falls from %.4f to %.4f at h = %d", router, last, m, hs[i]);
            last = m;
        }
        CHECK(last == 1.0, "h = H recall %.4f", last);
        /* C: nested candidate sets, so per token */
        mp.heads = 4;
        static const int32_t cs[] = {64, 128, 256, 1024, 4000};
        for (int i = 0; i < 5; i++) {
            mp.candidates = cs[i];
            CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, k, sel, NULL));
            mean_recall(&q, &kb, sel, k, rec);
            for (int32_t t = 0; i > 0 && t < d.T; t++)
                CHECK(rec[t] >= prev[t] - 1e-12, "router %d, C = %d: token %d recall %.4f < %.4f", router, cs[i], t,
                      rec[t], prev[t]);
            memcpy(prev, rec, d.T * 8);
        }
        for (int32_t t = 0; t < d.T; t++)
            CHECK(rec[t] == 1.0, "C = all: recall %.4f", rec[t]);
    }
    /* m: nested block sets, so per token */
    skv_hisa_params hp;
    skv_hisa_params_init(&hp);
    hp.block = 64, hp.min_length = 0;
    static const int32_t ms[] = {2, 4, 8, 16, 32, 63};
    for (int i = 0; i < 6; i++) {
        hp.blocks = ms[i];
        CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, k, sel, NULL));
        mean_recall(&q, &kb, sel, k, rec);
        for (int32_t t = 0; i > 0 && t < d.T; t++)
            CHECK(rec[t] >= prev[t] - 1e-12, "m = %d: token %d recall %.4f < %.4f", ms[i], t, rec[t], prev[t]);
        memcpy(prev, rec, d.T * 8);
    }
    for (int32_t t = 0; t < d.T; t++)
        CHECK(rec[t] == 1.0, "m * B >= visible: recall %.4f", rec[t]);
    free(sums), free(sel), free(rec), free(prev);
    idx_data_free(&d);
}

/* ---- parameters, metrics ---------------------------------------------------------------------- */

/* Exact ties and NaN among the router's scores: the query-norm router on heads whose queries
 * repeat (in pairs and triples) and one NaN head; the heads must be the top h by score, ties
 * to the lower head, NaN last, for every h. */
static void test_route_ties(void)
{
    enum { H = 13, D = 8 };
    float q[H * D], w[H];
    static const int group[H] = {0, 1, 0, 2, 1, 3, 2, 0, 4, 3, 5, 1, 6}; /* heads sharing a query */
    for (int32_t h = 0; h < H; h++) {
        for (int32_t x = 0; x < D; x++)
            q[h * D + x] = (float)((group[h] * 7 + x * 3) % 5) - 1.5f;
        w[h] = 1;
    }
    q[5 * D + 2] = NAN; /* head 5: NaN norm */
    const float k[D] = {0};
    const skv_indexer_query qq = {1, H, D, SKV_F32, q, NULL, w, NULL};
    const skv_key_block kb = {1, D, SKV_F32, k, NULL};
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.route = SKV_ROUTE_QNORM;
    float E[H];
    for (int32_t h = 1; h <= H; h++) {
        int32_t got[H], want[H];
        mp.heads = h;
        CHECK_OK(skv_route_heads(ctx, &qq, &kb, NULL, &mp, got, E));
        int32_t taken[H] = {0};
        for (int32_t i = 0; i < h; i++) { /* the best not taken yet, lowest head first */
            int32_t b = -1;
            for (int32_t x = 0; x < H; x++)
                if (!taken[x] && (b < 0 || score_cmp(E[x], E[b]) > 0))
                    b = x;
            taken[b] = 1, want[i] = b;
        }
        CHECK(!memcmp(got, want, (size_t)h * 4), "h=%d: tied heads in the wrong order", h);
    }
}

static void test_params_and_metrics(void)
{
    rng r = {4};
    idx_data d;
    idx_data_make(&d, &r, 2, 8, 16, 600, SKV_F32, SKV_F32, FILL_RANDOM, 0);
    const skv_indexer_query q = idx_query(&d);
    const skv_key_block kb = idx_keys(&d);
    float sums[(600 / 16 + 1) * 16];
    CHECK_OK(skv_pool_keys(&kb, 16, sums));
    const skv_pooled_keys pk = {16, sums};
    int32_t sel[2 * 20], heads[2 * 8];
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.block = 64, mp.min_length = 0;
    mp.heads = 0;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.heads = 9;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.heads = 4, mp.candidates = 10; /* C < k */
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.candidates = 0, mp.block = 40; /* not a multiple of the chunk */
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.block = 64;
    CHECK_STATUS(skv_route_heads(ctx, &q, &kb, NULL, &mp, heads, NULL), SKV_ERR_INVALID_ARG);
    mp.route = SKV_ROUTE_POOLED_MAX; /* the same block rules */
    CHECK_STATUS(skv_route_heads(ctx, &q, &kb, NULL, &mp, heads, NULL), SKV_ERR_INVALID_ARG);
    mp.block = 40;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.block = 64;
    CHECK_OK(skv_route_heads(ctx, &q, &kb, &pk, &mp, heads, NULL));
    mp.route = (skv_route_mode)4;
    CHECK_STATUS(skv_route_heads(ctx, &q, &kb, &pk, &mp, heads, NULL), SKV_ERR_INVALID_ARG);
    mp.route = (skv_route_mode)-1;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.route = SKV_ROUTE_POOLED;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 0, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.struct_size = 3;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.struct_size = sizeof mp;
    /* the 4k defaults: C = -1 is C = 4k (here 80 of 600 keys), HISA m = 0 is ceil(4k / B) */
    int32_t a4[2 * 20], b4[2 * 20];
    float av[2 * 20], bv[2 * 20];
    mp.candidates = SKV_MISA_DAGGER_4K;
    CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, a4, av));
    mp.candidates = 80;
    CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, b4, bv));
    CHECK(memcmp(a4, b4, sizeof a4) == 0 && memcmp(av, bv, sizeof av) == 0, "C = -1 is not C = 4k");
    mp.candidates = -2;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.candidates = SKV_MISA_DAGGER_4K; /* 4k overflows */
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, INT32_MAX / 4 + 1, sel, NULL), SKV_ERR_INVALID_ARG);
    mp.candidates = 0;
    skv_hisa_params hp;
    skv_hisa_params_init(&hp);
    CHECK(hp.blocks == SKV_CANDIDATES_4K && hp.block == 128, "HISA defaults: m = -1 (4k), B = 128");
    hp.min_length = 0, hp.block = 32;
    CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, a4, av)); /* m = ceil(80 / 32) = 3 */
    hp.blocks = 3;
    CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, b4, bv));
    CHECK(memcmp(a4, b4, sizeof a4) == 0 && memcmp(av, bv, sizeof av) == 0, "HISA m = 0 is not m = 3");
    hp.blocks = 0, hp.block = 16; /* 80 / 16 = 5 blocks */
    CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, a4, av));
    hp.blocks = 5;
    CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, b4, bv));
    CHECK(memcmp(a4, b4, sizeof a4) == 0 && memcmp(av, bv, sizeof av) == 0, "HISA m = 0 is not m = 5");
    hp.blocks = 4;
    CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, b4, bv));
    CHECK(memcmp(a4, b4, sizeof a4) != 0, "HISA m = 4 and m = 5 agree: the check above would not see a wrong m");
    hp.block = 24, hp.blocks = 0;
    CHECK_STATUS(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    hp.block = 32, hp.blocks = 1;
    CHECK_STATUS(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    hp.blocks = -2;
    CHECK_STATUS(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, sel, NULL), SKV_ERR_INVALID_ARG);
    /* one sentinel for "4k candidates": SKV_CANDIDATES_4K is HISA's m = 0 (kept) as well */
    hp.block = 16, hp.blocks = SKV_CANDIDATES_4K; /* b4 holds m = 4's result, a4 m = 5's */
    CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 20, b4, bv));
    CHECK(memcmp(a4, b4, sizeof a4) == 0 && memcmp(av, bv, sizeof av) == 0,
          "HISA m = SKV_CANDIDATES_4K is not m = 5");
    hp.block = 32;
    hp.blocks = 4;
    CHECK_STATUS(skv_hisa_topk(ctx, &q, &kb, NULL, &hp, 20, sel, NULL), SKV_ERR_STATE);
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, NULL, &mp, 20, sel, NULL), SKV_ERR_STATE); /* routed */
    /* a key cache without pooled sums: the pooled router has nothing to read */
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.head_dim = 16, kp.dtype = SKV_F32;
    skv_kcache *kc;
    int32_t seq;
    CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
    CHECK_OK(skv_kcache_seq_create(kc, &seq));
    CHECK_OK(skv_kcache_append(kc, seq, 0, &kb));
    CHECK_STATUS(skv_kcache_misa_topk(kc, seq, 0, &q, &mp, 20, sel, NULL), SKV_ERR_STATE);
    mp.route = SKV_ROUTE_POOLED_MAX;
    CHECK_STATUS(skv_kcache_misa_topk(kc, seq, 0, &q, &mp, 20, sel, NULL), SKV_ERR_STATE);
    mp.route = SKV_ROUTE_QNORM; /* needs no pooled keys */
    CHECK_OK(skv_kcache_misa_topk(kc, seq, 0, &q, &mp, 20, sel, NULL));
    skv_kcache_destroy(kc);

    /* metrics against a direct computation */
    float *sc = xmalloc((size_t)2 * 600 * 4);
    CHECK_OK(skv_indexer_scores(ctx, &q, &kb, sc));
    int32_t dense[2 * 20];
    float dv[2 * 20];
    CHECK_OK(skv_indexer_topk(ctx, &q, &kb, 20, dense, dv));
    for (int i = 0; i < 2 * 20; i++) /* a selection: the dense one with every 4th entry swapped out */
        sel[i] = i % 4 == 0 ? (dense[i] + 300) % 600 : dense[i];
    double rec[2], mass[2];
    CHECK_OK(skv_selection_quality(ctx, &q, &kb, sel, 20, rec, mass));
    for (int t = 0; t < 2; t++) {
        int hits = 0;
        double mx = -INFINITY, ms = 0, md = 0;
        for (int s = 0; s < 600; s++)
            mx = sc[t * 600 + s] > mx ? sc[t * 600 + s] : mx;
        for (int i = 0; i < 20; i++) {
            hits += sc[t * 600 + sel[t * 20 + i]] >= dv[t * 20 + 19];
            ms += exp(sc[t * 600 + sel[t * 20 + i]] - mx);
            md += exp(sc[t * 600 + dense[t * 20 + i]] - mx);
        }
        CHECK(fabs(rec[t] - hits / 20.0) < 1e-12 && fabs(mass[t] - ms / md) < 1e-9,
              "t %d: recall %g (direct %g), mass %g (direct %g)", t, rec[t], hits / 20.0, mass[t], ms / md);
        CHECK(rec[t] < 1, "the swapped selection loses recall");
    }
    CHECK_OK(skv_selection_quality(ctx, &q, &kb, dense, 20, rec, mass));
    CHECK(rec[0] == 1 && rec[1] == 1 && mass[0] == 1 && mass[1] == 1, "dense against itself");
    free(sc);
    idx_data_free(&d);
}

/* ---- the real activations ------------------------------------------------------------------------ */

/* The pooled-max router's recalls per layer (h = 2, 4, 8, MISA-dagger h = 8 with 4k candidates),
 * from tools/misa_real_reference.py (numpy, apart from the library; the same script's sum router
 * reproduces reference.json). */
static const double real_pooled_max[6][4] = {
    {0.4829, 0.6537, 0.8230, 0.9850},
    {0.2960, 0.5699, 0.8234, 0.9995},
    {0.2669, 0.5957, 0.8731, 0.9978},
    {0.3552, 0.6254, 0.8655, 0.9999},
    {0.3499, 0.5459, 0.7955, 0.9997},
    {0.3367, 0.6684, 0.8276, 0.9995},
};

static void test_real(void)
{
    char *ref = data_reference();
    if (!ref) {
        printf("skip: ../shared/data/dev not found (set SKV_TEST_DATA): real-data recalls not checked\n");
        return;
    }
    enum { K = 128, T0 = 1024, TQ = 1024 };
    int32_t pos[TQ];
    for (int t = 0; t < TQ; t++)
        pos[t] = T0 + t;
    int32_t *sel = xmalloc((size_t)TQ * K * 4);
    double *rec = xmalloc(TQ * 8);
    float *sums = xmalloc((size_t)(DATA_T / 64) * DATA_ID * 4);
    double worst = 0;
    for (int l = 0; l < DATA_LAYERS; l += quick ? DATA_LAYERS - 1 : 1) {
        layer_inputs in;
        if (!data_layer(l, &in)) {
            CHECK(0, "layer %d data unreadable", l);
            continue;
        }
        const skv_indexer_query q = {TQ, DATA_IH, DATA_ID, SKV_F32, in.iq + (size_t)T0 * DATA_IH * DATA_ID,
                                     NULL, in.iw + (size_t)T0 * DATA_IH, pos};
        const skv_key_block kb = {DATA_T, DATA_ID, SKV_F32, in.ik, NULL};
        CHECK_OK(skv_pool_keys(&kb, 64, sums));
        const skv_pooled_keys pk = {64, sums};
        char sec[8], key[64];
        snprintf(sec, sizeof sec, "L%d", l);
        printf("L%d:", l);
        /* v: MISA h = 2, 4, 8 and MISA-dagger (the paper's router, against reference.json),
           HISA, then the four MISA cases again with the pooled-max router (against numpy) */
        for (int v = 0; v < 9; v++) {
            const int hisa = v == 4, max = v > 4, m = max ? v - 5 : v;
            if (hisa) {
                skv_hisa_params hp;
                skv_hisa_params_init(&hp);
                hp.block = 64, hp.blocks = 4 * K / 64, hp.min_length = 0;
                CHECK_OK(skv_hisa_topk(ctx, &q, &kb, &pk, &hp, K, sel, NULL));
                snprintf(key, sizeof key, "hisa_b64_c4k_recall");
            } else {
                skv_misa_params mp;
                skv_misa_params_init(&mp);
                mp.route = max ? SKV_ROUTE_POOLED_MAX : SKV_ROUTE_POOLED;
                mp.block = 64, mp.min_length = 0, mp.heads = m < 3 ? 2 << m : 8, mp.candidates = m == 3 ? 4 * K : 0;
                CHECK_OK(skv_misa_topk(ctx, &q, &kb, &pk, &mp, K, sel, NULL));
                if (m < 3)
                    snprintf(key, sizeof key, "misa_h%d_recall", mp.heads);
                else
                    snprintf(key, sizeof key, "misa_dagger_h8_c4k_recall");
            }
            const double got = mean_recall(&q, &kb, sel, K, rec);
            const double want = max ? real_pooled_max[l][m] : json_number(ref, sec, key);
            worst = fabs(got - want) > worst ? fabs(got - want) : worst;
            CHECK(fabs(got - want) <= 0.0006, "L%d %s%s: %.4f, reference %.4f", l, max ? "pooled-max " : "", key,
                  got, want);
            printf(" %s%s %.4f (ref %.4f)", max ? "max_" : "", key, got, want);
        }
        printf("\n");
        data_layer_free(&in);
    }
    printf("real data: max |recall - reference| %.5f\n", worst);
    free(sel), free(rec), free(sums), free(ref);
}

int main(int argc, char **argv)
{
    quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    ctx = ctx_new(SKV_CPU_ALL, 2);
    test_pool();
    test_kcache_pool();
    test_kcache_pool_fork_truncate();
    test_lane_copy();
    test_kcache_memo();
    test_router_formula();
    test_route_decode();
    test_dials();
    test_monotone();
    test_route_ties();
    test_params_and_metrics();
    test_real();
    skv_context_destroy(ctx);
    return test_summary("test_router");
}
