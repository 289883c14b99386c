/* IndexCache: reuse plans (patterns, frequencies, offsets, segments), the per-step selector
 * (all-Full equals per-layer indexer runs bit-exactly; Shared layers get their source's
 * indices; the indexer runs once per Full layer), the greedy search on synthetic losses with
 * known optima (evaluation counts, P blocks, failing callbacks), the beam and exhaustive
 * searches against brute-force enumeration of loss tables (greedy's myopic failure included),
 * the proxies against direct
 * computations, and the overlap matrix on real activations against reference.json. */
#include "common.h"
#include "data.h"

static skv_context *ctx;

static void check_pattern(const skv_reuse_plan *p, const char *want)
{
    char buf[256];
    CHECK_OK(skv_reuse_plan_pattern(p, buf, sizeof buf));
    CHECK(strcmp(buf, want) == 0, "pattern %s, want %s", buf, want);
}

static void test_plans(void)
{
    skv_reuse_plan *p = NULL;
    CHECK_OK(skv_reuse_plan_from_string(ctx, "FFsSSfSSS", NULL, 0, &p));
    check_pattern(p, "FFSSSFSSS");
    CHECK(skv_reuse_plan_n_layers(p) == 9 && skv_reuse_plan_n_full(p) == 3, "counts");
    static const int32_t src[9] = {0, 1, 1, 1, 1, 5, 5, 5, 5}, slot[9] = {0, 1, 1, 1, 1, 2, 2, 2, 2};
    for (int32_t l = 0; l < 9; l++) {
        int32_t s, sl;
        skv_layer_role r;
        CHECK_OK(skv_reuse_plan_source(p, l, &s));
        CHECK_OK(skv_reuse_plan_full_slot(p, l, &sl));
        CHECK_OK(skv_reuse_plan_role(p, l, &r));
        CHECK(s == src[l] && sl == slot[l] && r == (src[l] == l ? SKV_LAYER_FULL : SKV_LAYER_SHARED),
              "layer %d: source %d slot %d role %d", l, s, sl, r);
    }
    int32_t x;
    CHECK_STATUS(skv_reuse_plan_source(p, 9, &x), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_source(p, -1, &x), SKV_ERR_INVALID_ARG);
    char small[9];
    CHECK_STATUS(skv_reuse_plan_pattern(p, small, sizeof small), SKV_ERR_INVALID_ARG);
    skv_reuse_plan_destroy(p);

    /* frequencies: the official rule gives FFSSSFSSS for 4, the plain one FSSSFSSS */
    struct { int32_t n, freq, off; skv_reuse_freq_rule rule; const char *want; } fq[] = {
        {9, 4, 0, SKV_REUSE_FREQ_OFFICIAL, "FFSSSFSSS"},
        {13, 4, 0, SKV_REUSE_FREQ_OFFICIAL, "FFSSSFSSSFSSS"},
        {9, 4, 0, SKV_REUSE_FREQ_PLAIN, "FSSSFSSSF"},
        {5, 1, 0, SKV_REUSE_FREQ_OFFICIAL, "FFFFF"},
        {5, 1, 0, SKV_REUSE_FREQ_PLAIN, "FFFFF"},
        {6, 2, 0, SKV_REUSE_FREQ_OFFICIAL, "FFSFSF"},
        {8, 3, 2, SKV_REUSE_FREQ_PLAIN, "FFFSSFSS"},
        {8, 3, 1, SKV_REUSE_FREQ_OFFICIAL, "FFFSSFSS"},
        {3, 100, 0, SKV_REUSE_FREQ_PLAIN, "FSS"},
    };
    for (size_t i = 0; i < sizeof fq / sizeof fq[0]; i++) {
        CHECK_OK(skv_reuse_plan_from_freq(ctx, fq[i].n, fq[i].freq, fq[i].off, fq[i].rule, NULL, 0, &p));
        if (p)
            check_pattern(p, fq[i].want);
        skv_reuse_plan_destroy(p);
        p = NULL;
    }

    /* roles and segments */
    const skv_layer_role roles[6] = {SKV_LAYER_FULL, SKV_LAYER_SHARED, SKV_LAYER_SHARED,
                                     SKV_LAYER_FULL, SKV_LAYER_SHARED, SKV_LAYER_SHARED};
    const int32_t seg_ok[2] = {0, 3}, seg_bad[2] = {0, 2}, seg_order[2] = {3, 3};
    CHECK_OK(skv_reuse_plan_from_roles(ctx, roles, 6, seg_ok, 2, &p));
    check_pattern(p, "FSSFSS");
    skv_reuse_plan_destroy(p);
    CHECK_STATUS(skv_reuse_plan_from_roles(ctx, roles, 6, seg_bad, 2, &p), SKV_ERR_INVALID_ARG);
    CHECK(p == NULL, "no plan on error");
    CHECK_STATUS(skv_reuse_plan_from_roles(ctx, roles, 6, seg_order, 2, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_string(ctx, "FSSFSS", seg_bad, 2, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_freq(ctx, 9, 4, 0, SKV_REUSE_FREQ_PLAIN, seg_ok, 2, &p),
                 SKV_ERR_INVALID_ARG); /* layer 3 is Shared under FSSSFSSSF */
    const skv_layer_role bad_role[2] = {SKV_LAYER_FULL, (skv_layer_role)7};
    CHECK_STATUS(skv_reuse_plan_from_roles(ctx, bad_role, 2, NULL, 0, &p), SKV_ERR_INVALID_ARG);

    /* invalid strings and parameters */
    const char *bad[] = {"", "SF", "FX", "F S", "FSF-"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_STATUS(skv_reuse_plan_from_string(ctx, bad[i], NULL, 0, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_string(ctx, NULL, NULL, 0, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_freq(ctx, 8, 0, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_freq(ctx, 8, 2, 8, SKV_REUSE_FREQ_PLAIN, NULL, 0, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_freq(ctx, 0, 2, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_freq(ctx, 8, 2, 0, (skv_reuse_freq_rule)5, NULL, 0, &p), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_plan_from_string(ctx, "FS", seg_ok, -1, &p), SKV_ERR_INVALID_ARG);
    CHECK(skv_reuse_plan_n_layers(NULL) == 0 && skv_reuse_plan_n_full(NULL) == 0, "NULL plan");
    skv_reuse_plan_destroy(NULL);

    /* key-cache parameters: Full layers only */
    CHECK_OK(skv_reuse_plan_from_freq(ctx, 61, 4, 0, SKV_REUSE_FREQ_OFFICIAL, NULL, 0, &p));
    skv_kcache_params base, kp;
    skv_kcache_params_init(&base);
    base.n_layers = 61;
    CHECK_OK(skv_reuse_kcache_params(p, &base, &kp));
    CHECK(kp.n_layers == skv_reuse_plan_n_full(p) && kp.n_layers == 16 && kp.head_dim == base.head_dim,
          "kcache layers %d", kp.n_layers);
    skv_reuse_plan_destroy(p);
}

/* ---- the selector ------------------------------------------------------------------------- */

typedef struct stack {
    int32_t n_layers;
    idx_data *layers; /* one query and key set per layer */
} stack;

static void stack_make(stack *s, int32_t n_layers, int32_t T, int64_t L, uint64_t seed)
{
    rng r = {seed};
    s->n_layers = n_layers;
    s->layers = xmalloc((size_t)n_layers * sizeof *s->layers);
    for (int32_t l = 0; l < n_layers; l++)
        idx_data_make(&s->layers[l], &r, T, 8, 32, L, SKV_F32, SKV_F32, FILL_RANDOM, 1);
}

static void stack_free(stack *s)
{
    for (int32_t l = 0; l < s->n_layers; l++)
        idx_data_free(&s->layers[l]);
    free(s->layers);
}

/* A key cache for the plan's Full layers (f32, head_dim 32) holding their keys. */
static skv_kcache *stack_kcache(const stack *st, const skv_reuse_plan *plan, int32_t pool_chunk,
                                int32_t *seq)
{
    skv_kcache_params base, kp;
    skv_kcache_params_init(&base);
    base.head_dim = 32, base.dtype = SKV_F32, base.pool_chunk = pool_chunk;
    CHECK_OK(skv_reuse_kcache_params(plan, &base, &kp));
    skv_kcache *kc = NULL;
    CHECK_OK(skv_kcache_create(ctx, &kp, &kc));
    CHECK_OK(skv_kcache_seq_create(kc, seq));
    for (int32_t l = 0; l < st->n_layers; l++) {
        int32_t slot;
        skv_layer_role role;
        skv_reuse_plan_role(plan, l, &role);
        skv_reuse_plan_full_slot(plan, l, &slot);
        if (role == SKV_LAYER_FULL) {
            const skv_key_block kb = idx_keys(&st->layers[l]);
            CHECK_OK(skv_kcache_append(kc, *seq, slot, &kb));
        }
    }
    return kc;
}

static void test_selector(const char *pattern, int32_t T, int use_kcache)
{
    const int32_t n = (int32_t)strlen(pattern), k = 40;
    const int64_t L = 700;
    stack st;
    stack_make(&st, n, T, L, 11 + T);
    skv_reuse_plan *plan;
    CHECK_OK(skv_reuse_plan_from_string(ctx, pattern, NULL, 0, &plan));
    skv_reuse_selector_params sp;
    skv_reuse_selector_params_init(&sp);
    sp.k = k;
    sp.max_tokens = T;
    skv_reuse_selector *sel;
    CHECK_OK(skv_reuse_selector_create(ctx, plan, &sp, &sel));

    /* a key cache with the Full layers' keys only */
    skv_kcache *kc = NULL;
    int32_t seq = -1;
    if (use_kcache) {
        kc = stack_kcache(&st, plan, 0, &seq);
        skv_kcache_stats ks = {.struct_size = sizeof ks};
        skv_kcache_get_stats(kc, &ks);
        CHECK(ks.bytes_per_token == (int64_t)skv_reuse_plan_n_full(plan) * 32 * 4,
              "key bytes per token %lld for %d Full layers", (long long)ks.bytes_per_token,
              skv_reuse_plan_n_full(plan));
    }

    int32_t *want = xmalloc((size_t)n * T * k * 4);
    for (int32_t l = 0; l < n; l++) { /* what each layer's own indexer would select */
        const skv_indexer_query q = idx_query(&st.layers[l]);
        const skv_key_block kb = idx_keys(&st.layers[l]);
        CHECK_OK(skv_indexer_topk(ctx, &q, &kb, k, want + (size_t)l * T * k, NULL));
    }
    for (int step = 0; step < 2; step++) {
        CHECK_OK(skv_reuse_begin_step(sel, T));
        for (int32_t l = 0; l < n; l++) {
            const skv_indexer_query q = idx_query(&st.layers[l]);
            const skv_key_block kb = idx_keys(&st.layers[l]);
            const int32_t *view = NULL;
            int32_t src;
            skv_reuse_plan_source(plan, l, &src);
            const int full = src == l;
            /* Shared layers must not need their own inputs */
            if (use_kcache)
                CHECK_OK(skv_reuse_select_kcache(sel, l, full ? &q : NULL, kc, seq, &view));
            else
                CHECK_OK(skv_reuse_select(sel, l, full ? &q : NULL, full ? &kb : NULL, &view));
            CHECK(view && memcmp(view, want + (size_t)src * T * k, (size_t)T * k * 4) == 0,
                  "%s layer %d: indices differ from layer %d's own indexer", pattern, l, src);
        }
    }
    skv_reuse_selector_stats ss = {.struct_size = sizeof ss};
    CHECK_OK(skv_reuse_selector_get_stats(sel, &ss));
    CHECK(ss.steps == 2 && ss.indexer_runs == 2 * skv_reuse_plan_n_full(plan) &&
              ss.reused == 2 * (n - skv_reuse_plan_n_full(plan)),
          "%s: %lld runs, %lld reused over 2 steps", pattern, (long long)ss.indexer_runs, (long long)ss.reused);

    /* order and state rules */
    const int32_t *view;
    const skv_indexer_query q0 = idx_query(&st.layers[0]);
    const skv_key_block k0 = idx_keys(&st.layers[0]);
    CHECK_OK(skv_reuse_begin_step(sel, T));
    CHECK_STATUS(skv_reuse_select(sel, 1, NULL, NULL, &view), pattern[1] == 'S' ? SKV_ERR_STATE : SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_reuse_select(sel, 0, &q0, &k0, &view));
    CHECK_STATUS(skv_reuse_select(sel, 0, &q0, &k0, &view), SKV_ERR_INVALID_ARG); /* not increasing */
    CHECK_STATUS(skv_reuse_select(sel, n, &q0, &k0, &view), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_begin_step(sel, T + 1), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_reuse_begin_step(sel, 0), SKV_ERR_INVALID_ARG);
    skv_reuse_selector *fresh;
    CHECK_OK(skv_reuse_selector_create(ctx, plan, &sp, &fresh));
    CHECK_STATUS(skv_reuse_select(fresh, 0, &q0, &k0, &view), SKV_ERR_STATE); /* no step */
    skv_reuse_selector_destroy(fresh);
    sp.method = (skv_select_method)7;
    CHECK_STATUS(skv_reuse_selector_create(ctx, plan, &sp, &fresh), SKV_ERR_UNSUPPORTED);

    free(want);
    skv_kcache_destroy(kc);
    skv_reuse_selector_destroy(sel);
    skv_reuse_plan_destroy(plan);
    stack_free(&st);
}

/* The selector with MISA (and HISA) on Full layers gives each layer what the routed call on its
 * source layer gives. */
static void test_selector_routed(void)
{
    const char *pattern = "FSSFSF";
    const int32_t n = 6, T = 2, k = 30;
    stack st;
    stack_make(&st, n, T, 900, 41);
    skv_reuse_plan *plan;
    CHECK_OK(skv_reuse_plan_from_string(ctx, pattern, NULL, 0, &plan));
    int32_t seq;
    skv_kcache *kc = stack_kcache(&st, plan, 16, &seq);
    for (int method = SKV_SELECT_MISA; method <= SKV_SELECT_HISA; method++) {
        skv_reuse_selector_params sp;
        skv_reuse_selector_params_init(&sp);
        sp.k = k, sp.max_tokens = T, sp.method = (skv_select_method)method;
        sp.misa.heads = 3, sp.misa.block = 64, sp.misa.min_length = 0;
        sp.hisa.block = 64, sp.hisa.blocks = 4, sp.hisa.min_length = 0;
        skv_reuse_selector *sel;
        CHECK_OK(skv_reuse_selector_create(ctx, plan, &sp, &sel));
        CHECK_OK(skv_reuse_begin_step(sel, T));
        int32_t want[2 * 30];
        for (int32_t l = 0; l < n; l++) {
            const skv_indexer_query q = idx_query(&st.layers[l]);
            int32_t src, slot;
            skv_reuse_plan_source(plan, l, &src);
            skv_reuse_plan_full_slot(plan, l, &slot);
            const int32_t *view;
            CHECK_OK(skv_reuse_select_kcache(sel, l, src == l ? &q : NULL, kc, seq, &view));
            if (src == l) {
                if (method == SKV_SELECT_MISA)
                    CHECK_OK(skv_kcache_misa_topk(kc, seq, slot, &q, &sp.misa, k, want, NULL));
                else
                    CHECK_OK(skv_kcache_hisa_topk(kc, seq, slot, &q, &sp.hisa, k, want, NULL));
            }
            CHECK(view && !memcmp(view, want, sizeof want), "method %d layer %d: selector view differs", method, l);
        }
        skv_reuse_selector_destroy(sel);
    }
    skv_kcache_destroy(kc);
    skv_reuse_plan_destroy(plan);
    stack_free(&st);
}

/* ---- the search --------------------------------------------------------------------------- */

/* Additive loss: flipping layer l costs cost[l] (the greedy optimum is the cheapest layers);
 * fail_at > 0 makes the fail_at-th call return NaN. */
typedef struct synth { const double *cost; int32_t n; long calls, fail_at; } synth;

static double synth_loss(const char *pattern, void *user)
{
    synth *s = user;
    s->calls++;
    if (s->fail_at && s->calls == s->fail_at)
        return NAN;
    double v = 1.0;
    CHECK((int32_t)strlen(pattern) == s->n, "pattern length");
    for (int32_t l = 0; l < s->n; l++)
        v += pattern[l] == 'S' ? s->cost[l] : 0;
    return v;
}

/* A loss with interactions: a Shared layer costs more the farther it is from its source. */
static double distance_loss(const char *pattern, void *user)
{
    (void)user;
    double v = 0;
    int32_t src = 0;
    for (int32_t l = 0; pattern[l]; l++) {
        if (pattern[l] == 'F')
            src = l;
        else
            v += (double)(l - src) * (l - src);
    }
    return v;
}

static void test_search(void)
{
    enum { N = 12 };
    double cost[N];
    rng r = {21};
    for (int i = 0; i < N; i++)
        cost[i] = rng_uniform(&r, 0.1, 1.0);
    cost[7] = cost[3]; /* a tie: the lower layer goes first */
    synth sy = {cost, N, 0, 0};
    skv_reuse_search_params sp;
    skv_reuse_search_params_init(&sp);
    sp.n_layers = N;
    sp.target_full = 4;
    sp.loss = synth_loss;
    sp.user = &sy;
    char pat[N + 1];
    double curve[N + 1];
    skv_reuse_search_result res = {.struct_size = sizeof res};
    CHECK_OK(skv_reuse_search(ctx, &sp, pat, curve, &res));

    /* the optimum: layer 0 stays Full, the 8 cheapest of layers 1..11 become Shared */
    int order[N - 1];
    for (int i = 0; i < N - 1; i++)
        order[i] = i + 1;
    for (int i = 0; i < N - 1; i++)
        for (int j = i + 1; j < N - 1; j++)
            if (cost[order[j]] < cost[order[i]] || (cost[order[j]] == cost[order[i]] && order[j] < order[i])) {
                const int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    char want[N + 1];
    memset(want, 'F', N);
    want[N] = '\0';
    double wl = 1.0;
    for (int i = 0; i < 8; i++) {
        want[order[i]] = 'S';
        wl += cost[order[i]];
        CHECK(fabs(curve[i + 1] - (wl)) < 1e-12, "curve[%d] = %g, want %g", i + 1, curve[i + 1], wl);
    }
    CHECK(strcmp(pat, want) == 0, "search found %s, optimum %s", pat, want);
    CHECK(curve[0] == 1.0, "curve[0] is all Full");
    /* evaluations: 1 (all Full) + 11 + 10 + ... + 4 candidates; each round's commit is cached */
    const int64_t evals = 1 + (11 + 10 + 9 + 8 + 7 + 6 + 5 + 4);
    CHECK(res.n_rounds == 8 && res.n_evals == evals && res.n_cached == 8 && sy.calls == evals,
          "rounds %d evals %lld cached %lld calls %ld", res.n_rounds, (long long)res.n_evals,
          (long long)res.n_cached, sy.calls);

    /* P blocks: block starts stay Full; one flip per block per round */
    sy.calls = 0;
    sp.n_blocks = 3; /* blocks [0,4) [4,8) [8,12): layers 0, 4, 8 fixed */
    sp.target_full = 3;
    CHECK_OK(skv_reuse_search(ctx, &sp, pat, curve, &res));
    CHECK(strcmp(pat, "FSSSFSSSFSSS") == 0, "P=3 to the fixed layers: %s", pat);
    CHECK(res.n_rounds == 3 && res.n_evals == 1 + 3 * (3 + 2 + 1) + 3, "P=3: rounds %d evals %lld",
          res.n_rounds, (long long)res.n_evals);
    sy.calls = 0;
    sp.target_full = 8; /* 4 flips: round 1 commits 3 (one per block), round 2 the best 1 */
    CHECK_OK(skv_reuse_search(ctx, &sp, pat, curve, &res));
    int nf = 0;
    for (int l = 0; l < N; l++)
        nf += pat[l] == 'F';
    CHECK(nf == 8 && pat[0] == 'F' && pat[4] == 'F' && pat[8] == 'F' && res.n_rounds == 2,
          "P=3 target 8: %s in %d rounds", pat, res.n_rounds);
    /* per block, the cheapest non-fixed layer went first */
    for (int b = 0; b < 3; b++) {
        int best = -1;
        for (int l = 4 * b + 1; l < 4 * b + 4; l++)
            if (best < 0 || cost[l] < cost[best])
                best = l;
        CHECK(pat[best] == 'S', "block %d: cheapest layer %d not flipped in %s", b, best, pat);
    }
    sp.n_blocks = 1;

    /* a loss with interactions (greedy is not optimal for it): the search retraces a plain
       greedy written here, round by round */
    skv_reuse_search_params dp;
    skv_reuse_search_params_init(&dp);
    dp.n_layers = 8;
    dp.target_full = 3;
    dp.loss = distance_loss;
    char dpat[9], gp[9] = "FFFFFFFF";
    double dcurve[9];
    CHECK_OK(skv_reuse_search(ctx, &dp, dpat, dcurve, NULL));
    for (int round = 1; round <= 5; round++) {
        int best = -1;
        double bl = 0;
        for (int l = 1; l < 8; l++) {
            if (gp[l] != 'F')
                continue;
            gp[l] = 'S';
            const double v = distance_loss(gp, NULL);
            gp[l] = 'F';
            if (best < 0 || v < bl)
                best = l, bl = v;
        }
        gp[best] = 'S';
        CHECK(dcurve[round] == bl, "round %d: curve %g, plain greedy %g", round, dcurve[round], bl);
    }
    CHECK(strcmp(dpat, gp) == 0, "distance loss: search %s, plain greedy %s", dpat, gp);

    /* segments stay Full */
    const int32_t segs[2] = {0, 6};
    sp.segment_starts = segs;
    sp.n_segments = 2;
    sp.target_full = 2;
    sy.calls = 0;
    CHECK_OK(skv_reuse_search(ctx, &sp, pat, NULL, &res));
    CHECK(strcmp(pat, "FSSSSSFSSSSS") == 0, "segments: %s", pat);
    sp.segment_starts = NULL;
    sp.n_segments = 0;

    /* failing callbacks: NaN on the 5th call (round 1) and on the 15th (round 2) */
    for (int fail = 0; fail < 2; fail++) {
        sy.calls = 0;
        sy.fail_at = fail ? 15 : 5;
        sp.target_full = 4;
        memset(pat, 'x', sizeof pat);
        CHECK_STATUS(skv_reuse_search(ctx, &sp, pat, curve, &res), SKV_ERR_IO);
        int shared = 0;
        for (int l = 0; l < N; l++)
            shared += pat[l] == 'S';
        CHECK(strlen(pat) == N && res.n_rounds == fail && shared == fail,
              "failure in round %d: pattern %s (the state before it), %d rounds", fail + 1, pat,
              res.n_rounds);
    }
    sy.fail_at = 0;

    /* bad parameters */
    sp.target_full = 0;
    CHECK_STATUS(skv_reuse_search(ctx, &sp, pat, NULL, NULL), SKV_ERR_INVALID_ARG);
    sp.target_full = N + 1;
    CHECK_STATUS(skv_reuse_search(ctx, &sp, pat, NULL, NULL), SKV_ERR_INVALID_ARG);
    sp.target_full = 2;
    sp.n_blocks = 3; /* three fixed block starts > 2 */
    CHECK_STATUS(skv_reuse_search(ctx, &sp, pat, NULL, NULL), SKV_ERR_INVALID_ARG);
    sp.n_blocks = 0;
    CHECK_STATUS(skv_reuse_search(ctx, &sp, pat, NULL, NULL), SKV_ERR_INVALID_ARG);
    sp.n_blocks = 1;
    sp.loss = NULL;
    CHECK_STATUS(skv_reuse_search(ctx, &sp, pat, NULL, NULL), SKV_ERR_INVALID_ARG);
}

/* A loss table over every pattern of n layers: the pattern read as bits (S = 1) indexes it. */
typedef struct table { const double *loss; int32_t n; long calls, fail_at; } table;

static double table_loss(const char *pattern, void *user)
{
    table *t = user;
    t->calls++;
    if (t->fail_at && t->calls == t->fail_at)
        return NAN;
    uint32_t bits = 0;
    for (int32_t l = 0; l < t->n; l++)
        bits |= (uint32_t)(pattern[l] == 'S') << l;
    return t->loss[bits];
}

/* The optimum over every pattern with `full` Full layers and layer 0 Full, by brute force. */
static double brute_force(const table *t, int32_t full, char *best)
{
    double bl = INFINITY;
    for (uint32_t bits = 0; bits < (1u << t->n); bits += 2) { /* layer 0 Full: bit 0 clear */
        if (t->n - __builtin_popcount(bits) != full || !(t->loss[bits] < bl))
            continue;
        bl = t->loss[bits];
        for (int32_t l = 0; l < t->n; l++)
            best[l] = bits >> l & 1 ? 'S' : 'F';
        best[t->n] = '\0';
    }
    return bl;
}

static skv_status search_with(skv_reuse_search_method method, int32_t width, int64_t max_patterns,
                              table *t, int32_t full, char *pat, double *curve,
                              skv_reuse_search_result *res)
{
    skv_reuse_search_params sp;
    skv_reuse_search_params_init(&sp);
    sp.n_layers = t->n;
    sp.target_full = full;
    sp.loss = table_loss;
    sp.user = t;
    sp.method = method;
    sp.beam_width = width;
    if (max_patterns)
        sp.max_patterns = max_patterns;
    res->struct_size = sizeof *res;
    return skv_reuse_search(ctx, &sp, pat, curve, res);
}

static void test_search_methods(void)
{
    skv_reuse_search_params dp;
    skv_reuse_search_params_init(&dp);
    CHECK(dp.method == SKV_REUSE_SEARCH_GREEDY && dp.beam_width == 4 && dp.max_patterns == 4096,
          "search defaults");

    /* greedy's myopic failure, as on the real model: flipping layer 1 alone costs least, so
       greedy commits it, but the best pair of flips keeps layer 1 Full (FFSS) */
    double small[16];
    for (int i = 0; i < 16; i++)
        small[i] = 10 + i; /* patterns outside the story */
    small[0] = 0;                 /* FFFF */
    small[1 << 1] = 0.1;          /* FSFF: the cheapest single flip */
    small[1 << 2] = 0.2;          /* FFSF */
    small[1 << 3] = 0.3;          /* FFFS */
    small[(1 << 1) | (1 << 2)] = 1.0; /* FSSF: greedy's answer */
    small[(1 << 1) | (1 << 3)] = 1.1; /* FSFS */
    small[(1 << 2) | (1 << 3)] = 0.5; /* FFSS: the optimum */
    table t = {small, 4, 0, 0};
    char pat[17];
    double curve[17];
    skv_reuse_search_result res;
    CHECK_OK(search_with(SKV_REUSE_SEARCH_GREEDY, 1, 0, &t, 2, pat, curve, &res));
    CHECK(!strcmp(pat, "FSSF") && curve[2] == 1.0, "greedy: %s %g (its known failure)", pat, curve[2]);
    CHECK_OK(search_with(SKV_REUSE_SEARCH_BEAM, 2, 0, &t, 2, pat, curve, &res));
    CHECK(!strcmp(pat, "FFSS") && curve[0] == 0 && curve[1] == 0.1 && curve[2] == 0.5 &&
          res.n_rounds == 2, "beam 2: %s, curve %g %g %g", pat, curve[0], curve[1], curve[2]);
    t.calls = 0;
    CHECK_OK(search_with(SKV_REUSE_SEARCH_EXHAUSTIVE, 1, 0, &t, 2, pat, curve, &res));
    CHECK(!strcmp(pat, "FFSS") && curve[0] == 0 && curve[1] == 0.5 && res.n_rounds == 1 &&
          res.n_evals == 1 + 3 && t.calls == 4, "exhaustive: %s in %lld evaluations", pat,
          (long long)res.n_evals);
    t.calls = 0;
    CHECK_OK(search_with(SKV_REUSE_SEARCH_AUTO, 4, 0, &t, 2, pat, curve, &res));
    CHECK(!strcmp(pat, "FFSS") && res.n_evals == 4, "auto (3 patterns): exhaustive, %s", pat);

    /* random tables: exhaustive and a wide beam find the brute-force optimum for every target;
       a beam of width 1 is greedy, round by round */
    enum { NL = 7 };
    double *loss = malloc(sizeof(double) << NL);
    rng r = {77};
    for (int rep = 0; rep < 20; rep++) {
        for (int i = 0; i < 1 << NL; i++)
            loss[i] = rng_uniform(&r, 0, 1);
        table tt = {loss, NL, 0, 0};
        for (int32_t full = 1; full <= NL; full++) {
            char want[NL + 1], gp[NL + 1];
            double gcurve[NL + 1];
            const double wl = brute_force(&tt, full, want);
            CHECK_OK(search_with(SKV_REUSE_SEARCH_EXHAUSTIVE, 1, 0, &tt, full, pat, curve, &res));
            CHECK(!strcmp(pat, want) && curve[1] == wl, "rep %d full %d: exhaustive %s, brute %s",
                  rep, full, pat, want);
            CHECK_OK(search_with(SKV_REUSE_SEARCH_BEAM, 64, 0, &tt, full, pat, curve, &res));
            CHECK(!strcmp(pat, want) && curve[NL - full] == wl, "rep %d full %d: beam 64 %s, "
                  "brute %s", rep, full, pat, want);
            CHECK_OK(search_with(SKV_REUSE_SEARCH_GREEDY, 1, 0, &tt, full, gp, gcurve, &res));
            CHECK_OK(search_with(SKV_REUSE_SEARCH_BEAM, 1, 0, &tt, full, pat, curve, &res));
            CHECK(!strcmp(pat, gp) && !memcmp(curve, gcurve, sizeof(double) * (NL - full + 1)),
                  "rep %d full %d: beam 1 %s, greedy %s", rep, full, pat, gp);
            CHECK(gcurve[NL - full] >= wl, "greedy below the optimum");
        }
    }
    free(loss);

    /* AUTO over the pattern limit runs the beam; EXHAUSTIVE refuses it */
    table big = {small, 4, 0, 0};
    CHECK_OK(search_with(SKV_REUSE_SEARCH_AUTO, 2, 2, &big, 2, pat, curve, &res));
    CHECK(!strcmp(pat, "FFSS") && res.n_rounds == 2, "auto over the limit: beam, %s", pat);
    memset(pat, 'x', sizeof pat);
    CHECK_STATUS(search_with(SKV_REUSE_SEARCH_EXHAUSTIVE, 1, 2, &big, 2, pat, curve, &res),
                 SKV_ERR_CAPACITY);
    /* a failing callback: IO, the pattern of the last completed round */
    for (int m = 0; m < 2; m++) {
        table f = {small, 4, 0, 3};
        CHECK_STATUS(search_with(m ? SKV_REUSE_SEARCH_EXHAUSTIVE : SKV_REUSE_SEARCH_BEAM, 2, 0, &f, 2,
                                 pat, curve, &res), SKV_ERR_IO);
        CHECK(!strcmp(pat, "FFFF") && res.n_rounds == 0, "NaN: %s after %d rounds", pat,
              res.n_rounds);
    }
    /* bad parameters */
    CHECK_STATUS(search_with(SKV_REUSE_SEARCH_BEAM, 0, 0, &t, 2, pat, NULL, &res),
                 SKV_ERR_INVALID_ARG);
    CHECK_STATUS(search_with((skv_reuse_search_method)9, 1, 0, &t, 2, pat, NULL, &res),
                 SKV_ERR_INVALID_ARG);
    CHECK_STATUS(search_with(SKV_REUSE_SEARCH_AUTO, 1, -1, &t, 2, pat, NULL, &res),
                 SKV_ERR_INVALID_ARG);
}

/* ---- proxies ------------------------------------------------------------------------------ */

static void test_proxies(void)
{
    /* overlap against a direct count */
    enum { NL = 4, TT = 5, K = 6 };
    rng r = {8};
    int32_t topk[NL * TT * K];
    for (int l = 0; l < NL; l++)
        for (int t = 0; t < TT; t++)
            for (int j = 0; j < K; j++) { /* distinct values per row from a small range, some -1 */
                int32_t v;
                int dup;
                do {
                    v = (int32_t)rng_int(&r, -1, 11);
                    dup = 0;
                    for (int i = 0; i < j; i++)
                        dup |= v >= 0 && topk[(l * TT + t) * K + i] == v;
                } while (dup);
                topk[(l * TT + t) * K + j] = v;
            }
    double ov[NL * NL];
    CHECK_OK(skv_reuse_overlap(ctx, topk, NL, TT, K, ov));
    for (int i = 0; i < NL; i++)
        for (int j = 0; j < NL; j++) {
            long hits = 0;
            for (int t = 0; t < TT; t++)
                for (int a = 0; a < K; a++)
                    for (int b = 0; b < K; b++) {
                        const int32_t x = topk[(i * TT + t) * K + a], y = topk[(j * TT + t) * K + b];
                        hits += x >= 0 && x == y;
                    }
            CHECK(fabs(ov[i * NL + j] - (double)hits / (TT * K)) < 1e-12, "overlap[%d][%d] = %g, direct %g",
                  i, j, ov[i * NL + j], (double)hits / (TT * K));
        }

    /* the mass matrix against a direct computation */
    enum { ML = 3, MT = 4, MK = 5 };
    const int64_t L = 60;
    stack st;
    stack_make(&st, ML, MT, L, 99);
    skv_indexer_query qs[ML];
    skv_key_block ks[ML];
    for (int l = 0; l < ML; l++) {
        qs[l] = idx_query(&st.layers[l]);
        ks[l] = idx_keys(&st.layers[l]);
    }
    double M[ML * ML];
    int32_t tk[ML * MT * MK];
    CHECK_OK(skv_reuse_mass_matrix(ctx, qs, ks, ML, MK, M, tk));
    for (int l = 0; l < ML; l++) {
        double *ref = xmalloc((size_t)MT * L * sizeof *ref), *mag = xmalloc((size_t)MT * L * sizeof *mag);
        idx_reference(&st.layers[l], ref, mag);
        for (int j = 0; j < ML; j++) {
            double want = 0;
            for (int t = 0; t < MT; t++) {
                double mx = -INFINITY, z = 0, m = 0;
                for (int64_t s = 0; s < L; s++)
                    mx = ref[t * L + s] > mx ? ref[t * L + s] : mx;
                for (int64_t s = 0; s < L; s++)
                    z += exp(ref[t * L + s] - mx);
                for (int i = 0; i < MK; i++) {
                    const int32_t s = tk[(j * MT + t) * MK + i];
                    if (s >= 0)
                        m += exp(ref[t * L + s] - mx);
                }
                want += m / z / MT;
            }
            CHECK(fabs(M[l * ML + j] - want) < 1e-5, "mass[%d][%d] = %g, direct %g", l, j, M[l * ML + j], want);
        }
        free(ref), free(mag);
    }
    /* the loss built on it */
    skv_reuse_mass_loss ml = {M, ML};
    CHECK(skv_reuse_mass_loss_fn("FFF", &ml) == 0, "all Full");
    CHECK(fabs(skv_reuse_mass_loss_fn("FSF", &ml) - (1 - M[1 * ML + 0]) / ML) < 1e-15, "one Shared");
    CHECK(fabs(skv_reuse_mass_loss_fn("FSS", &ml) - (2 - M[1 * ML] - M[2 * ML]) / ML) < 1e-15, "two Shared");
    CHECK(isnan(skv_reuse_mass_loss_fn("SFF", &ml)) && isnan(skv_reuse_mass_loss_fn("FX", &ml)) &&
              isnan(skv_reuse_mass_loss_fn("FF", &ml)), "malformed patterns");
    stack_free(&st);
}

/* The overlap of the trained indexer's selections across the 6 layers of the real model
 * (k = 128, queries 1024..2047) against reference.json. */
static void test_real_overlap(void)
{
    char *ref = data_reference();
    if (!ref) {
        printf("skip: ../shared/data/dev not found (set SKV_TEST_DATA): real-data overlap not checked\n");
        return;
    }
    enum { K = 128, T0 = 1024, TQ = 1024 };
    layer_inputs in[DATA_LAYERS];
    int32_t pos[TQ];
    for (int t = 0; t < TQ; t++)
        pos[t] = T0 + t;
    int32_t *topk = xmalloc((size_t)DATA_LAYERS * TQ * K * 4);
    skv_indexer_query qs[DATA_LAYERS];
    skv_key_block ks[DATA_LAYERS];
    for (int l = 0; l < DATA_LAYERS; l++) {
        CHECK(data_layer(l, &in[l]), "layer %d data", l);
        qs[l] = (skv_indexer_query){TQ, DATA_IH, DATA_ID, SKV_F32, in[l].iq + (size_t)T0 * DATA_IH * DATA_ID,
                                    NULL, in[l].iw + (size_t)T0 * DATA_IH, pos};
        ks[l] = (skv_key_block){DATA_T, DATA_ID, SKV_F32, in[l].ik, NULL};
        CHECK_OK(skv_indexer_topk(ctx, &qs[l], &ks[l], K, topk + (size_t)l * TQ * K, NULL));
    }
    double ov[DATA_LAYERS * DATA_LAYERS], want[DATA_LAYERS * DATA_LAYERS];
    CHECK_OK(skv_reuse_overlap(ctx, topk, DATA_LAYERS, TQ, K, ov));
    CHECK(json_numbers(ref, "overlap", want, 36) == 36, "reference overlap");
    double worst = 0;
    for (int i = 0; i < 36; i++)
        worst = fabs(ov[i] - want[i]) > worst ? fabs(ov[i] - want[i]) : worst;
    CHECK(worst <= 0.0006, "overlap differs from reference.json by %.4f", worst);
    printf("real-data overlap: max |diff| vs reference.json %.5f (reference rounded to 0.001)\n", worst);
    for (int i = 0; i < DATA_LAYERS; i++) {
        printf("  ");
        for (int j = 0; j < DATA_LAYERS; j++)
            printf(" %.3f", ov[i * DATA_LAYERS + j]);
        printf("\n");
    }

    /* the proxy search on real data: its 3-Full pattern is at least as good, by its own loss,
       as uniform spacing */
    double M[DATA_LAYERS * DATA_LAYERS];
    CHECK_OK(skv_reuse_mass_matrix(ctx, qs, ks, DATA_LAYERS, K, M, NULL));
    skv_reuse_mass_loss ml = {M, DATA_LAYERS};
    skv_reuse_search_params sp;
    skv_reuse_search_params_init(&sp);
    sp.n_layers = DATA_LAYERS;
    sp.target_full = 3;
    sp.loss = skv_reuse_mass_loss_fn;
    sp.user = &ml;
    char pat[DATA_LAYERS + 1];
    CHECK_OK(skv_reuse_search(ctx, &sp, pat, NULL, NULL));
    printf("real-data mass proxy: diagonal");
    for (int l = 0; l < DATA_LAYERS; l++)
        printf(" %.3f", M[l * DATA_LAYERS + l]);
    printf("; search (3 Full) -> %s loss %.4f, uniform FSFSFS %.4f\n", pat,
           skv_reuse_mass_loss_fn(pat, &ml), skv_reuse_mass_loss_fn("FSFSFS", &ml));
    CHECK(skv_reuse_mass_loss_fn(pat, &ml) <= skv_reuse_mass_loss_fn("FSFSFS", &ml) + 1e-12, "greedy vs uniform");
    for (int l = 0; l < DATA_LAYERS; l++)
        data_layer_free(&in[l]);
    free(topk);
    free(ref);
}

/* Pipeline parallelism: every split of 1..7 layers into stages, with frequency plans of every
 * rule and a few frequencies and offsets: the first layer of every stage is Full, every layer
 * reads a Full layer of its own stage, and each rank's key cache holds exactly the stage's Full
 * layers, each in its own slot. */
static void test_pp_ranks(void)
{
    skv_kcache_params base;
    skv_kcache_params_init(&base);
    long plans = 0;
    for (int32_t n = 1; n <= 7; n++)
        for (uint32_t cut = 0; cut < (1u << (n - 1)); cut++) {
            int32_t starts[8], ns = 0, stage_of[8];
            starts[ns++] = 0;
            for (int32_t l = 1; l < n; l++)
                if (cut >> (l - 1) & 1)
                    starts[ns++] = l;
            for (int32_t st = 0, l = 0; l < n; l++) {
                if (st + 1 < ns && l == starts[st + 1])
                    st++;
                stage_of[l] = st;
            }
            for (int32_t freq = 1; freq <= 4; freq++)
                for (int rule = 0; rule < 2; rule++)
                    for (int32_t off = 0; off < n && off < 2; off++) {
                        /* the rule's plan without stages; refused with them exactly when it
                           puts a stage start Shared: then the same roles, stage starts Full */
                        skv_reuse_plan *p = NULL, *whole = NULL;
                        CHECK_OK(skv_reuse_plan_from_freq(ctx, n, freq, off, (skv_reuse_freq_rule)rule,
                                                          NULL, 0, &whole));
                        if (!whole)
                            continue;
                        skv_layer_role roles[8];
                        int starts_shared = 0;
                        for (int32_t l = 0; l < n; l++)
                            CHECK_OK(skv_reuse_plan_role(whole, l, &roles[l]));
                        for (int32_t i = 0; i < ns; i++) {
                            starts_shared += roles[starts[i]] == SKV_LAYER_SHARED;
                            roles[starts[i]] = SKV_LAYER_FULL;
                        }
                        skv_reuse_plan_destroy(whole);
                        const skv_status fs = skv_reuse_plan_from_freq(ctx, n, freq, off,
                                                                       (skv_reuse_freq_rule)rule, starts, ns, &p);
                        CHECK(fs == (starts_shared ? SKV_ERR_INVALID_ARG : SKV_OK),
                              "n %d cut %u freq %d: %s with %d stage starts Shared", n, cut, freq,
                              skv_status_string(fs), starts_shared);
                        if (starts_shared) {
                            CHECK(p == NULL, "a plan on error");
                            CHECK_OK(skv_reuse_plan_from_roles(ctx, roles, n, starts, ns, &p));
                        }
                        if (!p)
                            continue;
                        plans++;
                        int32_t total = 0;
                        for (int32_t st = 0; st < ns; st++) {
                            const int32_t first = starts[st];
                            const int32_t len = (st + 1 < ns ? starts[st + 1] : n) - first;
                            skv_layer_role role;
                            CHECK_OK(skv_reuse_plan_role(p, first, &role));
                            CHECK(role == SKV_LAYER_FULL, "n %d cut %u: stage %d starts Shared", n, cut, st);
                            skv_kcache_params kp;
                            CHECK_OK(skv_reuse_kcache_params_range(p, first, len, &base, &kp));
                            int32_t full = 0, used[8] = {0};
                            for (int32_t l = first; l < first + len; l++) {
                                int32_t src, slot;
                                CHECK_OK(skv_reuse_plan_source(p, l, &src));
                                CHECK_OK(skv_reuse_plan_range_slot(p, first, l, &slot));
                                CHECK(stage_of[src] == st, "n %d cut %u: layer %d reads layer %d of another stage",
                                      n, cut, l, src);
                                CHECK(slot >= 0 && slot < kp.n_layers, "layer %d: slot %d of %d", l, slot,
                                      kp.n_layers);
                                if (src == l) {
                                    full++;
                                    if (slot >= 0 && slot < 8)
                                        used[slot]++;
                                } else {
                                    int32_t ss;
                                    CHECK_OK(skv_reuse_plan_range_slot(p, first, src, &ss));
                                    CHECK(ss == slot, "layer %d: slot %d, its source's %d", l, slot, ss);
                                }
                            }
                            CHECK(kp.n_layers == full, "n %d cut %u stage %d: key cache of %d layers, %d Full",
                                  n, cut, st, kp.n_layers, full);
                            for (int32_t i = 0; i < full && i < 8; i++)
                                CHECK(used[i] == 1, "stage %d: slot %d used %d times", st, i, used[i]);
                            total += full;
                        }
                        CHECK(total == skv_reuse_plan_n_full(p), "ranks hold %d Full layers of %d", total,
                              skv_reuse_plan_n_full(p));
                        if (n > 1) { /* a range starting at a Shared layer, or outside the plan */
                            int32_t sh = -1;
                            for (int32_t l = 1; l < n && sh < 0; l++) {
                                skv_layer_role role;
                                CHECK_OK(skv_reuse_plan_role(p, l, &role));
                                sh = role == SKV_LAYER_SHARED ? l : -1;
                            }
                            skv_kcache_params kp;
                            int32_t slot;
                            if (sh > 0) {
                                CHECK_STATUS(skv_reuse_kcache_params_range(p, sh, 1, &base, &kp), SKV_ERR_INVALID_ARG);
                                CHECK_STATUS(skv_reuse_plan_range_slot(p, sh, sh, &slot), SKV_ERR_INVALID_ARG);
                            }
                            CHECK_STATUS(skv_reuse_kcache_params_range(p, 0, n + 1, &base, &kp), SKV_ERR_INVALID_ARG);
                            CHECK_STATUS(skv_reuse_plan_range_slot(p, 1, 0, &slot), SKV_ERR_INVALID_ARG);
                        }
                        skv_reuse_plan_destroy(p);
                    }
            /* a plan whose stage starts Shared is refused */
            if (ns > 1) {
                skv_layer_role roles[8];
                for (int32_t l = 0; l < n; l++)
                    roles[l] = l == 0 ? SKV_LAYER_FULL : SKV_LAYER_SHARED;
                skv_reuse_plan *p = NULL;
                CHECK_STATUS(skv_reuse_plan_from_roles(ctx, roles, n, starts, ns, &p), SKV_ERR_INVALID_ARG);
                skv_reuse_plan_destroy(p);
            }
        }
    printf("pipeline stages: %ld plans checked\n", plans);
}

int main(void)
{
    ctx = ctx_new(SKV_CPU_ALL, 2);
    test_plans();
    test_pp_ranks();
    test_selector("FFFFFF", 1, 0);
    test_selector("FSSFSF", 1, 0);
    test_selector("FSSSFSSS", 5, 0);
    test_selector("FSFSSSF", 3, 1);
    test_selector("FFSSSFSSS", 1, 1);
    test_selector_routed();
    test_search();
    test_search_methods();
    test_proxies();
    test_real_overlap();
    skv_context_destroy(ctx);
    return test_summary("test_reuse");
}
