/* Fuzz target: layer-reuse plans, the greedy search with a loss callback, and the router's
 * parameters, all on a context whose allocator fails the N-th allocation (N from the input).
 * Plans from patterns, frequencies and roles with segments from the input are checked against
 * the plan a plain model derives (valid or not, every layer's role, source and slot); the
 * search's callbacks see valid patterns, its result keeps target_full layers with the fixed
 * ones Full, its count of evaluations is the callbacks made, a NaN loss gives IO, and with one
 * block it equals a plain greedy search. MISA/HISA parameters from the input are accepted
 * exactly when router.h says, and the exactness dials (h = n_heads, a length gate above the
 * keys) return skv_indexer_topk's result bit for bit. Every NOMEM leaves *out NULL and nothing
 * allocated. */
#include "fuzz.h"

enum { MAX_L = 40 };

typedef struct fz {
    skv_context *ctx;
    fail_alloc fa;
} fz;

static void check_refusal(const fz *f, skv_status s, long failed, const char *what)
{
    REQUIRE(s == SKV_ERR_NOMEM && f->fa.failed > failed, "%s: unexpected status %d", what, s);
}

/* ---- plans ------------------------------------------------------------------------------ */

/* The model: valid iff every character is F/S, layer 0 and each segment's first layer Full,
 * segments strictly increasing below n. */
static int model_plan(const char *pat, int32_t n, const int32_t *seg, int32_t n_seg)
{
    if (n < 1 || n_seg < 0 || (n_seg > 0 && !seg))
        return 0;
    for (int32_t l = 0; l < n; l++)
        if (!strchr("FfSs", pat[l]) || pat[l] == 0)
            return 0;
    if (pat[0] != 'F' && pat[0] != 'f')
        return 0;
    for (int32_t i = 0; i < n_seg; i++) {
        if (seg[i] < 0 || seg[i] >= n || (i && seg[i] <= seg[i - 1]))
            return 0;
        if (pat[seg[i]] != 'F' && pat[seg[i]] != 'f')
            return 0;
    }
    return 1;
}

static void check_plan(const skv_reuse_plan *p, const char *pat, int32_t n)
{
    REQUIRE(skv_reuse_plan_n_layers(p) == n, "plan layers");
    int32_t full = 0, src = 0, slot = -1;
    char buf[MAX_L + 1];
    REQUIRE(skv_reuse_plan_pattern(p, buf, sizeof buf) == SKV_OK, "pattern");
    for (int32_t l = 0; l < n; l++) {
        const int is_full = pat[l] == 'F' || pat[l] == 'f';
        if (is_full)
            src = l, slot++, full++;
        skv_layer_role role;
        int32_t s, sl;
        REQUIRE(skv_reuse_plan_role(p, l, &role) == SKV_OK && role == (is_full ? SKV_LAYER_FULL : SKV_LAYER_SHARED),
                "layer %d role", l);
        REQUIRE(skv_reuse_plan_source(p, l, &s) == SKV_OK && s == src, "layer %d source %d, model %d", l, s, src);
        REQUIRE(skv_reuse_plan_full_slot(p, l, &sl) == SKV_OK && sl == slot, "layer %d slot", l);
        REQUIRE(buf[l] == (is_full ? 'F' : 'S'), "canonical pattern");
    }
    REQUIRE(buf[n] == 0 && skv_reuse_plan_n_full(p) == full, "full count");
    skv_layer_role role;
    REQUIRE(skv_reuse_plan_role(p, n, &role) == SKV_ERR_INVALID_ARG && skv_reuse_plan_role(p, -1, &role) == SKV_ERR_INVALID_ARG,
            "layer out of range accepted");
}

static void plans(fz *f, reader *r)
{
    char pat[MAX_L + 2];
    const int32_t n = (int32_t)rd_range(r, 0, MAX_L);
    for (int32_t l = 0; l < n; l++) {
        const uint8_t c = rd_u8(r);
        pat[l] = c < 100 ? 'F' : c < 200 ? 'S' : c < 220 ? 's' : c < 240 ? 'f' : (char)(c - 200);
    }
    pat[n] = 0;
    int32_t seg[8];
    const int32_t n_seg = (int32_t)rd_range(r, 0, 8);
    for (int32_t i = 0; i < n_seg; i++)
        seg[i] = (int32_t)rd_range(r, -1, MAX_L);
    const int32_t ns = rd_u8(r) < 250 ? n_seg : -1;
    const int valid = model_plan(pat, n, seg, ns) && (int32_t)strlen(pat) == n;
    skv_reuse_plan *p = (skv_reuse_plan *)(uintptr_t)1;
    long failed = f->fa.failed;
    skv_status s = skv_reuse_plan_from_string(f->ctx, pat, n_seg ? seg : NULL, ns, &p);
    if (valid && s == SKV_OK)
        check_plan(p, pat, n);
    else if (valid)
        check_refusal(f, s, failed, "plan from string");
    else
        REQUIRE(s == SKV_ERR_INVALID_ARG, "invalid pattern \"%s\": status %d", pat, s); /* checked
                                                                   before any allocation */
    REQUIRE((s == SKV_OK) == (p != NULL), "*out on status %d", s);
    skv_reuse_plan_destroy(p);

    /* roles: the same pattern */
    skv_layer_role roles[MAX_L + 1];
    int ok_roles = n >= 1;
    for (int32_t l = 0; l < n; l++) {
        ok_roles &= strchr("FfSs", pat[l]) != NULL;
        roles[l] = pat[l] == 'F' || pat[l] == 'f' ? SKV_LAYER_FULL : SKV_LAYER_SHARED;
    }
    if (ok_roles) {
        failed = f->fa.failed;
        s = skv_reuse_plan_from_roles(f->ctx, roles, n, n_seg ? seg : NULL, ns, &p);
        REQUIRE(s == (valid ? SKV_OK : SKV_ERR_INVALID_ARG) || (valid && s == SKV_ERR_NOMEM && f->fa.failed > failed),
                "plan from roles: status %d (valid %d)", s, valid);
        if (s == SKV_OK)
            check_plan(p, pat, n);
        REQUIRE((s == SKV_OK) == (p != NULL), "*out on status %d", s);
        skv_reuse_plan_destroy(p);
    }

    /* frequencies: the rule in reuse.h */
    const int32_t freq = (int32_t)rd_range(r, -1, 6), off = (int32_t)rd_range(r, -1, 8);
    const int32_t nf = n ? n : 1;
    const skv_reuse_freq_rule rule = (skv_reuse_freq_rule)(rd_u8(r) % 3);
    char fp[MAX_L + 2];
    for (int32_t l = 0; l < nf && freq >= 1 && off >= 0; l++) {
        const int32_t x = l - off;
        const int full = x < 0 || (rule == SKV_REUSE_FREQ_OFFICIAL ? (x > 1 ? x - 1 : 0) % freq == 0 : x % freq == 0);
        fp[l] = full ? 'F' : 'S';
    }
    fp[nf] = 0;
    const int fvalid = freq >= 1 && off >= 0 && off < nf && rule <= SKV_REUSE_FREQ_PLAIN &&
                       model_plan(fp, nf, seg, ns);
    failed = f->fa.failed;
    s = skv_reuse_plan_from_freq(f->ctx, nf, freq, off, rule, n_seg ? seg : NULL, ns, &p);
    REQUIRE(s == (fvalid ? SKV_OK : SKV_ERR_INVALID_ARG) || (fvalid && s == SKV_ERR_NOMEM && f->fa.failed > failed),
            "plan from freq %d offset %d rule %d over %d: status %d (model %s)", freq, off, rule, nf, s, fvalid ? fp : "invalid");
    if (s == SKV_OK)
        check_plan(p, fp, nf);
    REQUIRE((s == SKV_OK) == (p != NULL), "*out on status %d", s);
    skv_reuse_plan_destroy(p);
}

/* ---- search ------------------------------------------------------------------------------ */

typedef struct loss_ctx {
    int32_t n;
    double w[MAX_L][MAX_L]; /* loss of layer l sharing layer j's indices */
    long calls, nan_at;     /* the call that returns NaN (-1: none) */
    const int32_t *seg;
    int32_t n_seg;
} loss_ctx;

static double loss_of(const loss_ctx *c, const char *pat)
{
    double sum = 0;
    int32_t src = 0;
    for (int32_t l = 0; l < c->n; l++) {
        if (pat[l] == 'F')
            src = l;
        else
            sum += c->w[l][src];
    }
    return sum;
}

static double loss_cb(const char *pat, void *user)
{
    loss_ctx *c = user;
    REQUIRE((int32_t)strlen(pat) == c->n && pat[0] == 'F', "search passed a malformed pattern \"%s\"", pat);
    for (int32_t i = 0; i < c->n_seg; i++)
        REQUIRE(pat[c->seg[i]] == 'F', "search made a segment's first layer Shared");
    return c->calls++ == c->nan_at ? NAN : loss_of(c, pat);
}

static int fixed_full(const loss_ctx *c, int32_t l)
{
    if (l == 0)
        return 1;
    for (int32_t i = 0; i < c->n_seg; i++)
        if (c->seg[i] == l)
            return 1;
    return 0;
}

static void search(fz *f, reader *r)
{
    loss_ctx c = {.n = (int32_t)rd_range(r, 1, 12), .nan_at = rd_u8(r) < 40 ? rd_range(r, 0, 60) : -1};
    for (int32_t l = 0; l < c.n; l++)
        for (int32_t j = 0; j < c.n; j++)
            c.w[l][j] = (double)rd_range(r, 0, 7);
    int32_t seg[4];
    c.n_seg = (int32_t)rd_range(r, 0, 3);
    for (int32_t i = 0; i < c.n_seg; i++)
        seg[i] = (int32_t)rd_range(r, 0, c.n - 1);
    c.seg = seg;
    int seg_ok = 1;
    for (int32_t i = 1; i < c.n_seg; i++)
        seg_ok &= seg[i] > seg[i - 1];
    skv_reuse_search_params p;
    skv_reuse_search_params_init(&p);
    p.n_layers = c.n, p.target_full = (int32_t)rd_range(r, 0, c.n + 1), p.n_blocks = (int32_t)rd_range(r, 1, 3);
    p.segment_starts = c.n_seg ? seg : NULL, p.n_segments = c.n_seg, p.loss = loss_cb, p.user = &c;
    int32_t n_fixed = 0;
    for (int32_t l = 0; l < c.n; l++)
        n_fixed += fixed_full(&c, l);
    char out[MAX_L + 2];
    double curve[MAX_L + 2];
    skv_reuse_search_result res = {.struct_size = sizeof res};
    const long failed = f->fa.failed;
    const skv_status s = skv_reuse_search(f->ctx, &p, out, curve, &res);
    if (!seg_ok || p.target_full < n_fixed || p.target_full > c.n) {
        /* blocks' first layers are fixed too: a target between may still be refused */
        REQUIRE(s == SKV_ERR_INVALID_ARG, "invalid search: status %d", s); /* checked before
                                                                               any allocation */
        return;
    }
    if (s == SKV_ERR_INVALID_ARG) {
        REQUIRE(p.n_blocks > 1, "valid search with one block refused");
        return;
    }
    if (s == SKV_ERR_IO) {
        REQUIRE(c.nan_at >= 0 && c.calls > c.nan_at, "IO without a NaN loss");
        return;
    }
    if (s != SKV_OK) {
        check_refusal(f, s, failed, "search");
        return;
    }
    REQUIRE(c.nan_at < 0 || c.calls <= c.nan_at, "a NaN loss was ignored");
    REQUIRE(res.n_evals == c.calls, "%lld evaluations reported, %ld callbacks made", (long long)res.n_evals, c.calls);
    int32_t full = 0;
    for (int32_t l = 0; l < c.n; l++) {
        full += out[l] == 'F';
        REQUIRE(!fixed_full(&c, l) || out[l] == 'F', "fixed layer %d made Shared", l);
    }
    REQUIRE(out[c.n] == 0 && full == p.target_full, "%d Full layers, target %d", full, p.target_full);
    REQUIRE(curve[res.n_rounds] == loss_of(&c, out), "the curve's last point is not the pattern's loss");
    if (p.n_blocks == 1) { /* a plain greedy search */
        char m[MAX_L + 2];
        memset(m, 'F', (size_t)c.n);
        m[c.n] = 0;
        for (int32_t left = c.n; left > p.target_full; left--) {
            int32_t best = -1;
            double best_loss = 0;
            for (int32_t l = 0; l < c.n; l++) {
                if (m[l] != 'F' || fixed_full(&c, l))
                    continue;
                m[l] = 'S';
                const double x = loss_of(&c, m);
                m[l] = 'F';
                if (best < 0 || x < best_loss)
                    best = l, best_loss = x;
            }
            m[best] = 'S';
        }
        REQUIRE(!strcmp(m, out), "search found %s, greedy model %s", out, m);
    }
}

/* ---- router parameters ------------------------------------------------------------------- */

static void router(fz *f, reader *r)
{
    enum { T = 2, H = 4, D = 8, L = 96 };
    float q[T * H * D], w[T * H], k[L * D], sums[L * D];
    rd_floats(r, q, T * H * D);
    rd_floats(r, w, T * H);
    rd_floats(r, k, L * D);
    const int32_t chunk = (int32_t)rd_range(r, 1, 8);
    int32_t pos[T] = {(int32_t)rd_range(r, -1, L), (int32_t)rd_range(r, -1, L)};
    const skv_indexer_query iq = {T, H, D, SKV_F32, q, NULL, w, rd_u8(r) & 1 ? pos : NULL};
    const skv_key_block kb = {L, D, SKV_F32, k, NULL};
    REQUIRE(skv_pool_keys(&kb, chunk, sums) == SKV_OK, "pool");
    const skv_pooled_keys pk = {chunk, sums};
    const int32_t kk = (int32_t)rd_range(r, 1, 40);
    int32_t a[T * 40], b[T * 40];
    float as[T * 40], bs[T * 40];
    const long countdown = f->fa.countdown;
    f->fa.countdown = -1;
    REQUIRE(skv_indexer_topk(f->ctx, &iq, &kb, kk, b, bs) == SKV_OK, "dense");
    f->fa.countdown = countdown;
    const long failed = f->fa.failed;
    if (rd_u8(r) & 1) {
        skv_misa_params mp;
        skv_misa_params_init(&mp);
        mp.route = (skv_route_mode)rd_range(r, -1, 4);
        mp.heads = (int32_t)rd_range(r, -1, H + 1);
        mp.block = chunk * (int32_t)rd_range(r, 0, 4) + (rd_u8(r) < 30);
        mp.candidates = (int32_t)rd_range(r, -2, 80);
        mp.min_length = rd_range(r, -2, 200);
        const int valid = mp.route >= SKV_ROUTE_POOLED && mp.route <= SKV_ROUTE_POOLED_MAX && mp.heads >= 1 &&
                          mp.heads <= H && mp.block >= 1 && mp.min_length >= -1 &&
                          (mp.block % chunk == 0 || mp.route == SKV_ROUTE_QNORM || mp.route == SKV_ROUTE_OWN_KEY) &&
                          (mp.candidates == 0 || mp.candidates >= kk || mp.candidates == SKV_CANDIDATES_4K);
        const skv_status s = skv_misa_topk(f->ctx, &iq, &kb, &pk, &mp, kk, a, as);
        if (!valid) {
            REQUIRE(s == SKV_ERR_INVALID_ARG, "invalid MISA parameters accepted: status %d", s);
        } else if (s != SKV_OK) {
            check_refusal(f, s, failed, "MISA");
        } else if (mp.heads == H || mp.min_length > L) { /* the dials: the dense result */
            REQUIRE(!memcmp(a, b, sizeof(int32_t) * T * kk) && !memcmp(as, bs, sizeof(float) * T * kk),
                    "MISA with h = n_heads or the gate above the keys differs from the dense top-k");
        }
    } else {
        skv_hisa_params hp;
        skv_hisa_params_init(&hp);
        hp.block = chunk * (int32_t)rd_range(r, 0, 4) + (rd_u8(r) < 30);
        hp.blocks = (int32_t)rd_range(r, -1, 12);
        hp.min_length = rd_range(r, -2, 200);
        const int valid = hp.block >= 1 && hp.block % chunk == 0 && (hp.blocks >= 2 || hp.blocks == 0 || hp.blocks == SKV_CANDIDATES_4K) &&
                          hp.min_length >= -1;
        const skv_status s = skv_hisa_topk(f->ctx, &iq, &kb, &pk, &hp, kk, a, as);
        if (!valid) {
            REQUIRE(s == SKV_ERR_INVALID_ARG, "invalid HISA parameters accepted: status %d", s);
        } else if (s != SKV_OK) {
            check_refusal(f, s, failed, "HISA");
        } else if (hp.min_length > L || (hp.blocks > 0 && (int64_t)hp.blocks * hp.block >= L)) {
            REQUIRE(!memcmp(a, b, sizeof(int32_t) * T * kk) && !memcmp(as, bs, sizeof(float) * T * kk),
                    "HISA past its gate or covering the keys differs from the dense top-k");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    fz f = {0};
    f.ctx = fz_context(&f.fa, rd_cpu_mask(&r));
    for (int i = 0; i < 4 && r.n; i++) {
        const uint8_t what = rd_u8(&r), fail = rd_u8(&r);
        f.fa.countdown = fail < 60 ? fail % 12 : -1;
        switch (what % 3) {
        case 0: plans(&f, &r); break;
        case 1: search(&f, &r); break;
        case 2: router(&f, &r); break;
        }
        f.fa.countdown = -1;
    }
    skv_context_destroy(f.ctx);
    REQUIRE(f.fa.live == 0, "%ld allocations leaked", f.fa.live);
    return 0;
}
