/* The paper cuts a first outside user hit, each with the test that would have caught it:
 * silent length gates, F16 refused by the indexer, small store budgets refused without a
 * reason, gather without positions-only, two "4k" sentinels, tie-counting recall only, and
 * the mass-proxy search wired by hand. */
#include "common.h"

/* ---- a log that remembers its lines -------------------------------------------------------- */

typedef struct log_book { char text[8192]; size_t n; int warns, debugs; } log_book;

static void log_keep(void *user, skv_log_level lvl, const char *msg)
{
    log_book *b = user;
    b->warns += lvl == SKV_LOG_WARN;
    b->debugs += lvl == SKV_LOG_DEBUG;
    const size_t len = strlen(msg);
    if (b->n + len + 2 < sizeof b->text) {
        memcpy(b->text + b->n, msg, len);
        b->n += len;
        b->text[b->n++] = '\n';
        b->text[b->n] = 0;
    }
}

static skv_context *ctx_logged(log_book *b, skv_log_level verbosity)
{
    memset(b, 0, sizeof *b);
    skv_context_params p;
    skv_context_params_init(&p);
    p.n_threads = 2;
    p.log = log_keep;
    p.log_user = b;
    p.log_level = verbosity;
    skv_context *ctx = NULL;
    if (skv_context_create(&p, &ctx) != SKV_OK)
        exit(2);
    memset(b, 0, sizeof *b); /* forget the creation line */
    return ctx;
}

static void fill(rng *r, float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)rng_uniform(r, -1, 1);
}

/* ---- 1. the length gates say which path ran -------------------------------------------------- */

static void test_paths(void)
{
    log_book b;
    skv_context *ctx = ctx_logged(&b, SKV_LOG_DEBUG);
    rng r = {11};
    enum { T = 2, H = 16, D = 32, L = 2048, K = 32, CHUNK = 64 };
    float *q = xmalloc(T * H * D * 4), w[T * H], *k = xmalloc((size_t)L * D * 4);
    float *sums = xmalloc((size_t)(L / CHUNK) * D * 4);
    fill(&r, q, T * H * D), fill(&r, w, T * H), fill(&r, k, (size_t)L * D);
    const skv_indexer_query qq = {T, H, D, SKV_F32, q, NULL, w, NULL};
    const skv_key_block kb = {L, D, SKV_F32, k, NULL};
    CHECK_OK(skv_pool_keys(&kb, CHUNK, sums));
    const skv_pooled_keys pk = {CHUNK, sums};
    int32_t idx[T * K], dense[T * K];
    CHECK_OK(skv_indexer_topk(ctx, &qq, &kb, K, dense, NULL));

    skv_route_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_route_get_stats(ctx, &st));
    CHECK(st.last_path == -1 && st.calls[0] == 0, "fresh context: no MISA/HISA call yet");

    /* MISA-dagger with the default gate (16K) on 2K keys: dense, and now it says so */
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.block = 256, mp.heads = 4, mp.candidates = SKV_CANDIDATES_4K;
    CHECK_OK(skv_misa_topk(ctx, &qq, &kb, &pk, &mp, K, idx, NULL));
    CHECK_OK(skv_route_get_stats(ctx, &st));
    CHECK(st.last_path == SKV_PATH_DENSE_GATE && st.calls[SKV_PATH_DENSE_GATE] == 1,
          "MISA-dagger below its crossover: path %d", st.last_path);
    CHECK(memcmp(idx, dense, sizeof idx) == 0, "the gated path is not the dense result");
    CHECK(b.debugs >= 1 && strstr(b.text, "misa: dense (below the length gate)"),
          "no debug line for the gate: %s", b.text);
    /* below the gate's dial: routed, and different from dense */
    mp.min_length = 0;
    CHECK_OK(skv_misa_topk(ctx, &qq, &kb, &pk, &mp, K, idx, NULL));
    CHECK_OK(skv_route_get_stats(ctx, &st));
    CHECK(st.last_path == SKV_PATH_ROUTED && st.calls[SKV_PATH_ROUTED] == 1, "path %d", st.last_path);
    CHECK(strstr(b.text, "misa: routed"), "no debug line for the routed pass");
    /* h = H: the dial gives dense */
    mp.heads = H;
    CHECK_OK(skv_misa_topk(ctx, &qq, &kb, &pk, &mp, K, idx, NULL));
    CHECK_OK(skv_route_get_stats(ctx, &st));
    CHECK(st.last_path == SKV_PATH_DENSE_DIAL, "h = H: path %d", st.last_path);
    /* HISA likewise */
    skv_hisa_params hp;
    skv_hisa_params_init(&hp);
    hp.block = 64;
    CHECK_OK(skv_hisa_topk(ctx, &qq, &kb, &pk, &hp, K, idx, NULL));
    CHECK_OK(skv_route_get_stats(ctx, &st));
    CHECK(st.last_path == SKV_PATH_DENSE_GATE && st.calls[SKV_PATH_DENSE_GATE] == 2, "HISA gate: %d",
          st.last_path);
    CHECK(strstr(b.text, "hisa: dense (below the length gate)"), "no HISA debug line");
    hp.min_length = 0;
    CHECK_OK(skv_hisa_topk(ctx, &qq, &kb, &pk, &hp, K, idx, NULL));
    CHECK_OK(skv_route_get_stats(ctx, &st));
    CHECK(st.last_path == SKV_PATH_ROUTED && st.calls[SKV_PATH_ROUTED] == 2, "HISA routed: %d",
          st.last_path);
    /* a failed call counts nothing */
    CHECK_STATUS(skv_hisa_topk(ctx, &qq, &kb, &pk, &hp, 0, idx, NULL), SKV_ERR_INVALID_ARG);
    skv_route_stats st2 = {.struct_size = sizeof st2};
    CHECK_OK(skv_route_get_stats(ctx, &st2));
    CHECK(memcmp(&st, &st2, sizeof st) == 0, "a refused call changed the counters");
    CHECK_OK(skv_route_reset_stats(ctx));
    CHECK_OK(skv_route_get_stats(ctx, &st));
    CHECK(st.last_path == -1 && st.calls[SKV_PATH_ROUTED] == 0, "reset");
    st.struct_size = 1;
    CHECK_STATUS(skv_route_get_stats(ctx, &st), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_route_get_stats(NULL, &st2), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_route_reset_stats(NULL), SKV_ERR_INVALID_ARG);
    /* one sentinel: the old MISA name is the same value */
    CHECK(SKV_MISA_DAGGER_4K == SKV_CANDIDATES_4K, "two 4k sentinels");
    free(q), free(k), free(sums);
    skv_context_destroy(ctx);
}

/* ---- 2. F16 queries and keys ------------------------------------------------------------------ */

static void test_f16(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    rng r = {12};
    static const int32_t Ts[] = {1, 5}, Ds[] = {16, 33}, Ls[] = {7, 300};
    for (int c = 0; c < 2; c++) {
        const int32_t T = Ts[c], H = 3, D = Ds[c], L = Ls[c], K = 10;
        float *q = xmalloc((size_t)T * H * D * 4), *w = xmalloc((size_t)T * H * 4);
        float *k = xmalloc((size_t)L * D * 4);
        uint16_t *qh = xmalloc((size_t)T * H * D * 2), *kh = xmalloc((size_t)L * D * 2);
        fill(&r, q, (size_t)T * H * D), fill(&r, w, (size_t)T * H), fill(&r, k, (size_t)L * D);
        /* f16 values, and their exact f32 widening */
        CHECK_OK(skv_convert(SKV_F16, qh, SKV_F32, q, (int64_t)T * H * D));
        CHECK_OK(skv_convert(SKV_F16, kh, SKV_F32, k, (int64_t)L * D));
        CHECK_OK(skv_convert(SKV_F32, q, SKV_F16, qh, (int64_t)T * H * D));
        CHECK_OK(skv_convert(SKV_F32, k, SKV_F16, kh, (int64_t)L * D));
        int32_t pos[5];
        for (int32_t t = 0; t < T; t++)
            pos[t] = L - T + t - 3;
        const skv_indexer_query q32 = {T, H, D, SKV_F32, q, NULL, w, pos};
        const skv_indexer_query q16 = {T, H, D, SKV_F16, qh, NULL, w, pos};
        const skv_key_block k32 = {L, D, SKV_F32, k, NULL}, k16 = {L, D, SKV_F16, kh, NULL};
        float *s_ref = xmalloc((size_t)T * L * 4), *s = xmalloc((size_t)T * L * 4);
        int32_t i_ref[5 * 10], i16[5 * 10];
        float v_ref[5 * 10], v16[5 * 10];
        CHECK_OK(skv_indexer_scores(ctx, &q32, &k32, s_ref));
        CHECK_OK(skv_indexer_topk(ctx, &q32, &k32, K, i_ref, v_ref));
        /* the double reference on the f16 values */
        double worst = 0;
        for (int32_t t = 0; t < T; t++)
            for (int32_t j = 0; j <= pos[t]; j++) {
                double acc = 0;
                for (int32_t h = 0; h < H; h++) {
                    double dot = 0;
                    for (int32_t d = 0; d < D; d++)
                        dot += (double)q[((size_t)t * H + h) * D + d] * k[(size_t)j * D + d];
                    acc += w[t * H + h] * (dot > 0 ? dot : 0);
                }
                const double e = fabs(acc - s_ref[(size_t)t * L + j]);
                worst = e > worst ? e : worst;
            }
        CHECK(worst < 1e-4, "f32 scores of f16 values off the double reference by %g", worst);
        const skv_indexer_query *qs[3] = {&q16, &q32, &q16};
        const skv_key_block *ks[3] = {&k32, &k16, &k16};
        for (int m = 0; m < 3; m++) {
            memset(s, 0, (size_t)T * L * 4);
            CHECK_OK(skv_indexer_scores(ctx, qs[m], ks[m], s));
            CHECK(memcmp(s, s_ref, (size_t)T * L * 4) == 0, "F16 scores (mode %d) differ from f32", m);
            CHECK_OK(skv_indexer_topk(ctx, qs[m], ks[m], K, i16, v16));
            CHECK(memcmp(i16, i_ref, (size_t)T * K * 4) == 0 && memcmp(v16, v_ref, (size_t)T * K * 4) == 0,
                  "F16 top-k (mode %d) differs from f32", m);
        }
        /* refused: F16 with a scale, or k <= 0; nothing allocated is left behind */
        const size_t mem = skv_context_memory(ctx);
        skv_indexer_query bad = q16;
        bad.q_scale = w;
        CHECK_STATUS(skv_indexer_topk(ctx, &bad, &k16, K, i16, NULL), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_indexer_topk(ctx, &q16, &k16, 0, i16, NULL), SKV_ERR_INVALID_ARG);
        CHECK(skv_context_memory(ctx) == mem, "F16 call left memory behind");
        free(q), free(w), free(k), free(qh), free(kh), free(s_ref), free(s);
    }
    skv_context_destroy(ctx);
}

/* ---- 3, 4. store budgets and positions-only gather -------------------------------------------- */

static void test_store(void)
{
    log_book b;
    skv_context *ctx = ctx_logged(&b, SKV_LOG_WARN);
    skv_store_params p;
    skv_store_params_init(&p); /* defaults: n_sink 4, n_window 64, page_tokens 16 */
    p.n_kv_heads = 2, p.k_dim = 16, p.v_dim = 8, p.dtype = SKV_F32, p.hot_pages = 0;
    skv_store *s = NULL;
    CHECK_OK(skv_store_create(ctx, &p, &s));
    int32_t seq;
    CHECK_OK(skv_store_seq_create(s, &seq));
    enum { N = 400 };
    rng r = {13};
    float *k = xmalloc((size_t)N * 2 * 16 * 4), *v = xmalloc((size_t)N * 2 * 8 * 4);
    int32_t pos[N];
    fill(&r, k, (size_t)N * 2 * 16), fill(&r, v, (size_t)N * 2 * 8);
    for (int i = 0; i < N; i++)
        pos[i] = 3 * i;
    const skv_store_rows rows = {N, SKV_F32, k, v, pos};
    CHECK_OK(skv_store_append(s, seq, 0, &rows));
    skv_store_seq_info info = {.struct_size = sizeof info};
    CHECK_OK(skv_store_seq_info_get(s, seq, 0, &info));
    const int64_t forced = info.n_sink + info.n_window;
    CHECK(forced > 64 && forced <= p.n_sink + p.n_window + p.page_tokens - 1,
          "sinks + window %lld: the documented bound", (long long)forced);
    skv_store_sel *sel = NULL;
    CHECK_OK(skv_store_sel_create(s, &sel));
    float qv[2 * 16];
    fill(&r, qv, 32);
    skv_store_query qq;
    skv_store_query_init(&qq);
    qq.n_q_heads = 2, qq.q = qv, qq.budget = 64;
    CHECK_STATUS(skv_store_select(s, seq, 0, &qq, sel), SKV_ERR_INVALID_ARG);
    CHECK(b.warns == 1 && strstr(b.text, "budget 64 is below") && strstr(b.text, "window"),
          "a small budget is refused without saying why: '%s'", b.text);
    qq.budget = forced + 40;
    CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
    skv_store_sel_info si = {.struct_size = sizeof si};
    CHECK_OK(skv_store_sel_info_get(sel, &si));

    /* positions only: the same k_pos and lists as a full gather, nothing else needed */
    for (int order = 0; order < 2; order++) {
        const int64_t R = si.n_tokens;
        float *gk = xmalloc((size_t)R * 16 * 4), *gv = xmalloc((size_t)R * 8 * 4);
        int32_t *gp = xmalloc((size_t)R * 4), *pp = xmalloc((size_t)(R + 1) * 4);
        int64_t ls[2], ls2[2], n1 = 0, n2 = 0;
        int32_t ll[2], ll2[2];
        skv_store_gather_out full = {sizeof full, SKV_F32, order, 0, R, gk, gv, gp, ls, ll};
        CHECK_OK(skv_store_gather(s, sel, &full, &n1));
        skv_store_gather_out only = {sizeof only, SKV_F32, order, 1, R, NULL, NULL, pp, ls2, ll2};
        CHECK_OK(skv_store_gather(s, sel, &only, &n2));
        CHECK(n1 == R && n2 == R && memcmp(gp, pp + 1, (size_t)R * 4) == 0 && ll[0] == ll2[0] &&
                  ll[1] == ll2[1] && ls2[0] == ls[0] + 1 && ls2[1] == ls[1] + 1,
              "positions-only gather (order %d) differs", order);
        only.v = gv; /* v without k: refused */
        CHECK_STATUS(skv_store_gather(s, sel, &only, NULL), SKV_ERR_INVALID_ARG);
        only.v = NULL, only.k_pos = NULL;
        CHECK_STATUS(skv_store_gather(s, sel, &only, NULL), SKV_ERR_INVALID_ARG);
        free(gk), free(gv), free(gp), free(pp);
    }
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    free(k), free(v);
    skv_context_destroy(ctx);
}

/* ---- 6. strict recall beside the tie-counting one ----------------------------------------------- */

static void test_recall(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    rng r = {14};
    enum { T = 3, H = 2, D = 8, L = 64, K = 8 };
    float q[T * H * D], w[T * H], k[L * D];
    fill(&r, q, T * H * D), fill(&r, k, L * D);
    for (int i = 0; i < T * H; i++)
        w[i] = (float)rng_uniform(&r, 0.1, 1);
    /* key 40 repeats the dense top-1 of every token... made below for token 0's k-th key */
    const skv_indexer_query qq = {T, H, D, SKV_F32, q, NULL, w, NULL};
    skv_key_block kb = {L, D, SKV_F32, k, NULL};
    int32_t dense[T * K];
    CHECK_OK(skv_indexer_topk(ctx, &qq, &kb, K, dense, NULL));
    /* make key 63 a copy of token 0's k-th key (a tie the dense top-k breaks to the lower) */
    const int32_t kth = dense[K - 1];
    CHECK(kth < 63, "setup");
    memcpy(k + 63 * D, k + (size_t)kth * D, D * 4);
    CHECK_OK(skv_indexer_topk(ctx, &qq, &kb, K, dense, NULL));
    CHECK(dense[K - 1] == kth, "setup: the tie goes to the lower index");
    int32_t sel[T * K];
    memcpy(sel, dense, sizeof sel);
    sel[K - 1] = 63;                     /* token 0: the tie partner */
    sel[K + 0] = sel[K + 1];             /* token 1: a repeat in place of its best */
    sel[2 * K + 3] = -1;                 /* token 2: one missing */
    double tie[T], strict[T], mass[T];
    CHECK_OK(skv_selection_quality(ctx, &qq, &kb, sel, K, tie, mass));
    CHECK_OK(skv_selection_recall_strict(ctx, &qq, &kb, sel, K, strict));
    CHECK(tie[0] == 1 && strict[0] == (double)(K - 1) / K, "tie partner: tie %g strict %g", tie[0], strict[0]);
    CHECK(strict[1] == (double)(K - 1) / K && strict[1] <= tie[1], "repeat: strict %g tie %g", strict[1], tie[1]);
    CHECK(strict[2] == (double)(K - 1) / K && tie[2] == strict[2], "missing: strict %g tie %g", strict[2], tie[2]);
    CHECK_OK(skv_selection_recall_strict(ctx, &qq, &kb, dense, K, strict));
    CHECK(strict[0] == 1 && strict[1] == 1 && strict[2] == 1, "the dense top-k itself");
    CHECK_STATUS(skv_selection_recall_strict(ctx, &qq, &kb, dense, K, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_selection_recall_strict(ctx, &qq, &kb, dense, 0, strict), SKV_ERR_INVALID_ARG);
    skv_context_destroy(ctx);
}

/* ---- 7. the mass-proxy search in one call -------------------------------------------------- */

static void test_search_mass(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    rng r = {15};
    enum { N = 9 };
    double mass[N * N];
    for (int i = 0; i < N * N; i++)
        mass[i] = rng_uniform(&r, 0.3, 1);
    skv_reuse_search_params sp;
    skv_reuse_search_params_init(&sp);
    sp.n_layers = N, sp.target_full = 3;
    char pa[N + 1], pb[N + 1];
    double ca[N + 1] = {0}, cb[N + 1] = {0};
    CHECK_OK(skv_reuse_search_mass(ctx, &sp, mass, pa, ca, NULL));
    skv_reuse_mass_loss ml = {mass, N};
    skv_reuse_search_params by_hand = sp;
    by_hand.loss = skv_reuse_mass_loss_fn, by_hand.user = &ml;
    CHECK_OK(skv_reuse_search(ctx, &by_hand, pb, cb, NULL));
    CHECK(strcmp(pa, pb) == 0 && memcmp(ca, cb, sizeof ca) == 0, "one-call %s vs by hand %s", pa, pb);
    int full = 0;
    for (int i = 0; i < N; i++)
        full += pa[i] == 'F';
    CHECK(full == 3 && pa[0] == 'F', "pattern %s", pa);
    CHECK_STATUS(skv_reuse_search_mass(ctx, &by_hand, mass, pa, ca, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_search_mass(ctx, &sp, NULL, pa, ca, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_search_mass(NULL, &sp, mass, pa, ca, NULL), SKV_ERR_INVALID_ARG);
    skv_context_destroy(ctx);
}

int main(void)
{
    test_paths();
    test_f16();
    test_store();
    test_recall();
    test_search_mass();
    return test_summary("papercuts");
}
