/* The clustered KV store, scenario by scenario:
 *  1. kernels: every CPU level's dot and min/max kernels against the scalar reference (ragged
 *     dims, strides, every dtype), and a row's result independent of the rows beside it;
 *  2. budgets: no head ever over its budget, sinks and window always in, the greedy fill
 *     leaving less than a page unused, "budget >= length" selecting every token, whose sparse
 *     attention then equals dense attention over the same rows bit for bit;
 *  3. determinism: the same operations with 1 and 2 threads give the same index and the same
 *     selections, bit for bit;
 *  4. external token sets: sinks, window, then the listed positions in order within the budget,
 *     duplicates, padding and absent positions passed over; only listed rows gathered;
 *  5. the hot tier: delta fetch (a second fetch moves nothing; a change moves only the changed
 *     pages), capacity refusals that change nothing, pins that survive eviction, counters;
 *  6. copy and fence failures at the N-th call for every N of a scenario: SKV_ERR_IO, then the
 *     store validates, the hot tier reads back intact, every row is still there, a retry works;
 *  7. allocation failure at every allocation site of a scenario that touches them all: NOMEM
 *     with nothing observable changed, then a retry; nothing leaked at the end;
 *  8. bad arguments: the documented statuses. */
#include "common.h"
#include "store/skern.h"
#include "store/store_impl.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static void fill_keys(rng *r, float *k, int64_t n, int32_t H, int32_t D, int32_t n_centers)
{
    float c[64 * 256];
    for (int32_t i = 0; i < n_centers * D; i++)
        c[i] = (float)rng_uniform(r, -2, 2);
    for (int64_t i = 0; i < n * H; i++) {
        const int32_t ci = (int32_t)rng_int(r, 0, n_centers - 1);
        for (int32_t d = 0; d < D; d++)
            k[i * D + d] = c[ci * D + d] + (float)rng_uniform(r, -0.4, 0.4);
    }
}

static skv_store *make_store(skv_context *ctx, const skv_store_params *p)
{
    skv_store *s = NULL;
    CHECK_OK(skv_store_create(ctx, p, &s));
    return s;
}

static void base_params(skv_store_params *p)
{
    skv_store_params_init(p);
    p->n_kv_heads = 2, p->k_dim = 24, p->v_dim = 16, p->page_tokens = 8;
    p->n_sink = 3, p->n_window = 12, p->hot_pages = 256, p->bulk_min = 32, p->fanout = 8;
    p->flags = SKV_STORE_MINMAX;
}

/* n tokens at positions 2i (+ off) into every layer. */
static void fill_seq(skv_store *s, const skv_store_params *p, int32_t seq, int64_t n, int32_t pos0,
                     uint64_t seed, int64_t chunk)
{
    rng r = {seed};
    const int32_t H = p->n_kv_heads;
    float *k = xmalloc((size_t)n * H * p->k_dim * 4), *v = xmalloc((size_t)n * H * (p->v_dim + 1) * 4);
    int32_t *pos = xmalloc((size_t)n * 4);
    fill_keys(&r, k, n, H, p->k_dim, 5);
    for (int64_t i = 0; i < n * H * p->v_dim; i++)
        v[i] = (float)rng_uniform(&r, -1, 1);
    for (int64_t i = 0; i < n; i++)
        pos[i] = pos0 + 2 * (int32_t)i;
    for (int32_t l = 0; l < p->n_layers; l++)
        for (int64_t a = 0; a < n; a += chunk) {
            const int64_t m = n - a < chunk ? n - a : chunk;
            skv_store_rows rows = {m, SKV_F32, k + (size_t)a * H * p->k_dim,
                                   p->v_dim ? v + (size_t)a * H * p->v_dim : NULL, pos + a};
            CHECK_OK(skv_store_append(s, seq, l, &rows));
        }
    free(k), free(v), free(pos);
}

static void validate(skv_store *s, const char *where)
{
    char msg[512];
    const int rc = skv_store_validate(s, msg, sizeof msg);
    CHECK(rc == 0, "%s: %s", where, msg);
}

/* ---- 1. kernels ------------------------------------------------------------------------------- */

static void test_kernels(void)
{
    rng r = {42};
    skv_store_kern ref;
    skv_skern_init_scalar(&ref);
    for (int lv = 1; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_store_kern k;
        skv_skern_init(&k, all_levels[lv].mask);
        if (!strcmp(k.name, "scalar"))
            continue;
        long bad = 0, bad_tiling = 0;
        for (int it = 0; it < 400; it++) {
            const int32_t G = (int32_t)rng_int(&r, 1, 9), D = (int32_t)rng_int(&r, 1, 200);
            const int64_t n = rng_int(&r, 0, 13);
            static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_F16};
            const skv_dtype dt = dts[rng_int(&r, 0, 2)];
            const size_t es = skv_dtype_size(dt);
            const size_t stride = ((size_t)D + (size_t)rng_int(&r, 0, 9)) * es;
            float *q = xmalloc((size_t)G * D * 4), *rf = xmalloc((size_t)(n + 1) * D * 4);
            uint8_t *rows = xmalloc((size_t)(n + 1) * stride + 64);
            for (int32_t i = 0; i < G * D; i++)
                q[i] = (float)rng_uniform(&r, -3, 3);
            for (int64_t j = 0; j < n; j++) {
                for (int32_t i = 0; i < D; i++)
                    rf[j * D + i] = (float)rng_uniform(&r, -3, 3);
                skv_convert(dt, rows + (size_t)j * stride, SKV_F32, rf + j * D, D);
            }
            float *a = xmalloc((size_t)(n + 1) * G * 4), *b = xmalloc((size_t)(n + 1) * G * 4);
            float *c = xmalloc((size_t)(n + 1) * G * 4);
            ref.dots(q, G, D, rows, dt, stride, n, a);
            k.dots(q, G, D, rows, dt, stride, n, b);
            for (int64_t j = 0; j < n; j++) /* one row, one query at a time */
                for (int32_t g = 0; g < G; g++)
                    k.dots(q + (size_t)g * D, 1, D, rows + (size_t)j * stride, dt, 0, 1, c + j * G + g);
            for (int64_t j = 0; j < n; j++)
                for (int32_t g = 0; g < G; g++) {
                    double mag = 0;
                    for (int32_t i = 0; i < D; i++)
                        mag += fabs(q[g * D + i] * rf[j * D + i]);
                    bad += fabs(a[j * G + g] - b[j * G + g]) > 4 * D * 0x1p-24 * mag + 1e-30;
                    bad_tiling += memcmp(&b[j * G + g], &c[j * G + g], 4) != 0;
                }
            float lo[256], hi[256], mm_a[16], mm_b[16];
            for (int32_t i = 0; i < D; i++) {
                lo[i] = (float)rng_uniform(&r, -2, 1);
                hi[i] = lo[i] + (float)rng_uniform(&r, 0, 2);
            }
            ref.minmax(q, G, D, lo, hi, mm_a);
            k.minmax(q, G, D, lo, hi, mm_b);
            for (int32_t g = 0; g < G; g++) {
                double mag = 0;
                for (int32_t i = 0; i < D; i++)
                    mag += fabs(q[g * D + i]) * (fabs(lo[i]) + fabs(hi[i]));
                bad += fabs(mm_a[g] - mm_b[g]) > 4 * D * 0x1p-24 * mag + 1e-30;
            }
            free(q), free(rf), free(rows), free(a), free(b), free(c);
        }
        CHECK(bad == 0, "%s: %ld results outside tolerance of the scalar reference", k.name, bad);
        CHECK(bad_tiling == 0, "%s: %ld results depend on the rows and queries beside them",
              k.name, bad_tiling);
        printf("kernels at level %s (%s): checked against scalar\n", all_levels[lv].name, k.name);
    }
}

/* ---- 2. budgets and the dense path ------------------------------------------------------------ */

static void gather_all(skv_store *s, skv_store_sel *sel, const skv_store_params *p, int order,
                       float **k, float **v, int32_t **pos, int64_t *ls, int32_t *ll)
{
    skv_store_sel_info inf = {.struct_size = sizeof inf};
    CHECK_OK(skv_store_sel_info_get(sel, &inf));
    const int64_t n = inf.n_tokens + 1;
    *k = xmalloc((size_t)n * p->k_dim * 4);
    *v = xmalloc((size_t)n * (p->v_dim + 1) * 4);
    *pos = xmalloc((size_t)n * 4);
    skv_store_gather_out go = {sizeof go, SKV_F32, order, 0, n, *k, p->v_dim ? *v : NULL, *pos, ls, ll};
    CHECK_OK(skv_store_gather(s, sel, &go, NULL));
}

static void test_budgets(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    for (int layout = 0; layout < 2; layout++) {
        skv_store_params p;
        base_params(&p);
        p.layout = layout ? SKV_STORE_POSITIONAL : SKV_STORE_CLUSTERED;
        skv_store *s = make_store(ctx, &p);
        int32_t seq;
        CHECK_OK(skv_store_seq_create(s, &seq));
        fill_seq(s, &p, seq, 1500, 10, 7, 700);
        fill_seq(s, &p, seq, 37, 5000, 8, 1); /* decode: window flushes, insertions, splits */
        CHECK_OK(skv_store_seq_remove(s, seq, 700, 900)); /* merges */
        validate(s, "budgets");
        skv_store_seq_info si = {.struct_size = sizeof si};
        CHECK_OK(skv_store_seq_info_get(s, seq, 0, &si));
        const int64_t forced = si.n_sink + si.n_window;
        skv_store_sel *sel;
        CHECK_OK(skv_store_sel_create(s, &sel));
        rng r = {99};
        const int32_t G = 3, nq = G * p.n_kv_heads;
        float q[6 * 24];
        for (int i = 0; i < nq * p.k_dim; i++)
            q[i] = (float)rng_uniform(&r, -1, 1);
        long over = 0, slack = 0, missing = 0, checked = 0;
        for (int sc = layout ? 1 : 0; sc < 3; sc++)
            for (int64_t budget = forced; budget < si.n_tokens + 20; budget += 1 + budget / 7) {
                skv_store_query qq;
                skv_store_query_init(&qq);
                qq.n_q_heads = nq, qq.q = q, qq.budget = budget, qq.score = (skv_store_score)sc;
                CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
                float *k, *v;
                int32_t *pos;
                int64_t ls[2];
                int32_t ll[2];
                gather_all(s, sel, &p, SKV_GATHER_POSITIONS, &k, &v, &pos, ls, ll);
                for (int32_t h = 0; h < p.n_kv_heads; h++) {
                    checked++;
                    over += ll[h] > budget;
                    /* the fill leaves less than a page unused unless everything is in */
                    slack += ll[h] < si.n_tokens && budget - ll[h] >= p.page_tokens;
                    if (budget >= si.n_tokens)
                        missing += ll[h] != si.n_tokens;
                }
                free(k), free(v), free(pos);
            }
        CHECK(over == 0, "%ld selections over budget", over);
        CHECK(slack == 0, "%ld selections leave a page or more of the budget unused", slack);
        CHECK(missing == 0, "%ld full-budget selections miss tokens", missing);
        printf("budgets (%s): %ld selections checked\n", layout ? "positional" : "clustered", checked);

        /* sinks and window present: by position, in every head, at the smallest budget */
        {
            int32_t *pos_all = xmalloc((size_t)si.n_tokens * 4);
            uint16_t *kk = xmalloc((size_t)si.n_tokens * p.n_kv_heads * p.k_dim * 2);
            uint16_t *vv = xmalloc((size_t)si.n_tokens * p.n_kv_heads * p.v_dim * 2);
            CHECK_OK(skv_store_read(s, seq, 0, 0, si.n_tokens, kk, vv, pos_all));
            skv_store_query qq;
            skv_store_query_init(&qq);
            qq.n_q_heads = nq, qq.q = q, qq.budget = forced;
            qq.score = layout ? SKV_SCORE_EXACT : SKV_SCORE_INDEX;
            CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
            float *k, *v;
            int32_t *pos;
            int64_t ls[2];
            int32_t ll[2];
            gather_all(s, sel, &p, SKV_GATHER_POSITIONS, &k, &v, &pos, ls, ll);
            for (int32_t h = 0; h < p.n_kv_heads; h++) {
                CHECK(ll[h] == forced, "head %d: %d tokens at the forced budget %lld", h, ll[h],
                      (long long)forced);
                for (int64_t i = 0; i < si.n_sink && i < ll[h]; i++)
                    CHECK(pos[ls[h] + i] == pos_all[i], "sink %lld missing", (long long)i);
                for (int64_t i = 0; i < si.n_window && i < ll[h]; i++)
                    CHECK(pos[ls[h] + ll[h] - 1 - i] == pos_all[si.n_tokens - 1 - i],
                          "window token %lld missing", (long long)i);
            }
            free(k), free(v), free(pos), free(pos_all), free(kk), free(vv);
            qq.budget = forced - 1;
            if (forced > 0)
                CHECK_STATUS(skv_store_select(s, seq, 0, &qq, sel), SKV_ERR_INVALID_ARG);
        }

        /* budget >= length: sparse attention over the gathered rows == dense attention */
        if (!layout) {
            skv_store_query qq;
            skv_store_query_init(&qq);
            qq.n_q_heads = nq, qq.q = q, qq.budget = si.n_tokens;
            CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
            float *k, *v;
            int32_t *pos;
            int64_t ls[2];
            int32_t ll[2];
            gather_all(s, sel, &p, SKV_GATHER_POSITIONS, &k, &v, &pos, ls, ll);
            /* dense: every token of each head, read back in position order */
            const int64_t n = si.n_tokens;
            uint16_t *kb = xmalloc((size_t)n * p.n_kv_heads * p.k_dim * 2);
            uint16_t *vb = xmalloc((size_t)n * p.n_kv_heads * p.v_dim * 2);
            int32_t *dpos = xmalloc((size_t)n * 4);
            CHECK_OK(skv_store_read(s, seq, 0, 0, n, kb, vb, dpos));
            float *dk = xmalloc((size_t)n * p.n_kv_heads * p.k_dim * 4);
            float *dv = xmalloc((size_t)n * p.n_kv_heads * p.v_dim * 4);
            int32_t *dp = xmalloc((size_t)n * p.n_kv_heads * 4);
            for (int32_t h = 0; h < p.n_kv_heads; h++)
                for (int64_t i = 0; i < n; i++) {
                    const int64_t row = h * n + i;
                    skv_convert(SKV_F32, dk + row * p.k_dim, SKV_BF16,
                                kb + (i * p.n_kv_heads + h) * p.k_dim, p.k_dim);
                    skv_convert(SKV_F32, dv + row * p.v_dim, SKV_BF16,
                                vb + (i * p.n_kv_heads + h) * p.v_dim, p.v_dim);
                    dp[row] = dpos[i];
                }
            CHECK(!memcmp(k, dk, (size_t)n * p.n_kv_heads * p.k_dim * 4) &&
                      !memcmp(v, dv, (size_t)n * p.n_kv_heads * p.v_dim * 4) &&
                      !memcmp(pos, dp, (size_t)n * p.n_kv_heads * 4),
                  "full selection gathered in position order differs from the dense rows");
            const int64_t dls[2] = {0, n};
            const int32_t dll[2] = {(int32_t)n, (int32_t)n};
            const int32_t qpos = dpos[n - 1];
            skv_attn_batch b = {sizeof b, 1, nq, p.n_kv_heads, p.k_dim, p.v_dim, SKV_F32,
                                0.2f, 1, q, &qpos, n * p.n_kv_heads, k, v, pos, ls, ll};
            skv_attn_batch d = b;
            d.k = dk, d.v = dv, d.k_pos = dp, d.list_start = dls, d.list_len = dll;
            float o1[6 * 16], o2[6 * 16], o3[6 * 16], o4[6 * 16];
            CHECK_OK(skv_sparse_attention_reference(&b, o1, NULL, NULL));
            CHECK_OK(skv_sparse_attention_reference(&d, o2, NULL, NULL));
            CHECK_OK(skv_sparse_attention(ctx, &b, o3, NULL, NULL));
            CHECK_OK(skv_sparse_attention(ctx, &d, o4, NULL, NULL));
            CHECK(!memcmp(o1, o2, sizeof o1) && !memcmp(o3, o4, sizeof o3),
                  "attention over a full selection differs from dense attention");
            free(k), free(v), free(pos), free(kb), free(vb), free(dpos), free(dk), free(dv), free(dp);
        }
        skv_store_sel_destroy(sel);
        skv_store_destroy(s);
    }
    skv_context_destroy(ctx);
}

/* ---- 3. determinism across thread counts ------------------------------------------------------- */

typedef struct sel_dump { int32_t n[8]; int64_t tok[8]; int32_t rows[8][512]; uint64_t mask[8][512]; int32_t first[8][512]; } sel_dump;

static void dump_sel(skv_store *s, skv_store_sel *sel, int32_t H, sel_dump *d)
{
    memset(d, 0, sizeof *d);
    for (int32_t h = 0; h < H; h++) {
        int32_t slots[512];
        CHECK_OK(skv_store_sel_pages(sel, h, &d->n[h], &d->tok[h], slots, d->rows[h], d->mask[h]));
    }
    (void)s;
}

static void test_determinism(void)
{
    sel_dump *d[2];
    d[0] = xmalloc(sizeof *d[0]), d[1] = xmalloc(sizeof *d[1]);
    float *gk[2] = {0}, *gv[2] = {0};
    int32_t *gp[2] = {0};
    int64_t seq_nodes[2] = {0};
    for (int t = 0; t < 2; t++) {
        skv_context *ctx = ctx_new(SKV_CPU_ALL, t + 1);
        skv_store_params p;
        base_params(&p);
        p.n_kv_heads = 4;
        skv_store *s = make_store(ctx, &p);
        int32_t seq;
        CHECK_OK(skv_store_seq_create(s, &seq));
        fill_seq(s, &p, seq, 3000, 0, 11, 3000);
        fill_seq(s, &p, seq, 50, 7000, 12, 1);
        skv_store_seq_info si = {.struct_size = sizeof si};
        CHECK_OK(skv_store_seq_info_get(s, seq, 0, &si));
        seq_nodes[t] = si.n_nodes * 1000 + si.height;
        skv_store_sel *sel;
        CHECK_OK(skv_store_sel_create(s, &sel));
        rng r = {5};
        float q[8 * 24];
        for (int i = 0; i < 8 * p.k_dim; i++)
            q[i] = (float)rng_uniform(&r, -1, 1);
        skv_store_query qq;
        skv_store_query_init(&qq);
        qq.n_q_heads = 8, qq.q = q, qq.budget = 300;
        CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
        dump_sel(s, sel, p.n_kv_heads, d[t]);
        int64_t ls[4];
        int32_t ll[4];
        gather_all(s, sel, &p, SKV_GATHER_PAGES, &gk[t], &gv[t], &gp[t], ls, ll);
        skv_store_sel_destroy(sel);
        skv_store_destroy(s);
        skv_context_destroy(ctx);
    }
    CHECK(seq_nodes[0] == seq_nodes[1], "index shapes differ across thread counts");
    CHECK(!memcmp(d[0], d[1], sizeof *d[0]), "selections differ across thread counts");
    int64_t n = 0;
    for (int h = 0; h < 4; h++)
        n += d[0]->tok[h];
    CHECK(!memcmp(gk[0], gk[1], (size_t)n * 24 * 4) && !memcmp(gp[0], gp[1], (size_t)n * 4),
          "gathered rows differ across thread counts");
    for (int t = 0; t < 2; t++)
        free(gk[t]), free(gv[t]), free(gp[t]), free(d[t]);
    printf("determinism: 1 and 2 threads agree\n");
}

/* ---- 4. external token sets -------------------------------------------------------------------- */

static void test_token_sets(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    skv_store_params p;
    base_params(&p);
    skv_store *s = make_store(ctx, &p);
    int32_t seq;
    CHECK_OK(skv_store_seq_create(s, &seq));
    fill_seq(s, &p, seq, 400, 0, 3, 400); /* positions 0, 2, ..., 798 */
    skv_store_seq_info si = {.struct_size = sizeof si};
    CHECK_OK(skv_store_seq_info_get(s, seq, 0, &si));
    const int64_t forced = si.n_sink + si.n_window;
    skv_store_sel *sel;
    CHECK_OK(skv_store_sel_create(s, &sel));
    /* padding, an odd (absent) position, a duplicate, a sink, a window token, then body tokens */
    const int32_t list[] = {-1, 101, 200, 200, 0, 798, 300, 2, 500, 600, 650, 660};
    const int64_t budget = forced + 4; /* room for 200, 300, 500, 600 */
    CHECK_OK(skv_store_select_tokens(s, seq, 0, list, 12, budget, sel));
    float *k, *v;
    int32_t *pos;
    int64_t ls[2];
    int32_t ll[2];
    gather_all(s, sel, &p, SKV_GATHER_POSITIONS, &k, &v, &pos, ls, ll);
    for (int32_t h = 0; h < 2; h++) {
        CHECK(ll[h] == budget, "head %d: %d tokens, want %lld", h, ll[h], (long long)budget);
        int found = 0;
        for (int32_t i = 0; i < ll[h]; i++) {
            const int32_t ps = pos[ls[h] + i];
            found += ps == 200 || ps == 300 || ps == 500 || ps == 600;
            CHECK(ps != 650 && ps != 660 && ps != 101, "position %d selected past the budget", ps);
        }
        CHECK(found == 4, "head %d: %d of the 4 listed body tokens", h, found);
        int32_t np;
        int64_t nt;
        int32_t rows[64];
        uint64_t masks[64];
        CHECK_OK(skv_store_sel_pages(sel, h, &np, &nt, NULL, rows, masks));
        int64_t pop = 0;
        for (int32_t i = 0; i < np; i++) {
            pop += __builtin_popcountll(masks[i]);
            CHECK((masks[i] & ~((rows[i] >= 64 ? ~0ull : (1ull << rows[i]) - 1))) == 0, "mask past rows");
        }
        CHECK(pop == nt && nt == ll[h], "masks count %lld, tokens %lld", (long long)pop, (long long)nt);
    }
    free(k), free(v), free(pos);
    /* the whole pages are fetched */
    CHECK_OK(skv_store_fetch(s, sel));
    skv_store_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_store_get_stats(s, &st));
    skv_store_sel_info inf = {.struct_size = sizeof inf};
    CHECK_OK(skv_store_sel_info_get(sel, &inf));
    CHECK(st.hot_resident == inf.n_pages && st.hot_pinned == inf.n_pages, "resident %lld, pages %lld",
          (long long)st.hot_resident, (long long)inf.n_pages);
    /* an empty list is the forced tokens; the budget below them is refused */
    CHECK_OK(skv_store_select_tokens(s, seq, 0, NULL, 0, forced, sel));
    CHECK_OK(skv_store_sel_info_get(sel, &inf));
    CHECK(inf.n_tokens == 2 * forced, "empty set: %lld tokens", (long long)inf.n_tokens);
    if (forced)
        CHECK_STATUS(skv_store_select_tokens(s, seq, 0, list, 12, forced - 1, sel), SKV_ERR_INVALID_ARG);
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    skv_context_destroy(ctx);
    printf("token sets: checked\n");
}

/* ---- 5. the hot tier --------------------------------------------------------------------------- */

static void test_hot_tier(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    skv_store_params p;
    base_params(&p);
    p.hot_pages = 40;
    skv_store *s = make_store(ctx, &p);
    int32_t seq;
    CHECK_OK(skv_store_seq_create(s, &seq));
    fill_seq(s, &p, seq, 600, 0, 4, 600);
    skv_store_sel *a, *b;
    CHECK_OK(skv_store_sel_create(s, &a));
    CHECK_OK(skv_store_sel_create(s, &b));
    float q[4 * 24];
    rng r = {8};
    for (int i = 0; i < 4 * 24; i++)
        q[i] = (float)rng_uniform(&r, -1, 1);
    skv_store_query qq;
    skv_store_query_init(&qq);
    qq.n_q_heads = 4, qq.q = q, qq.budget = 60;
    CHECK_OK(skv_store_select(s, seq, 0, &qq, a));
    skv_store_sel_info ia = {.struct_size = sizeof ia};
    CHECK_OK(skv_store_sel_info_get(a, &ia));
    CHECK_OK(skv_store_fetch(s, a));
    skv_store_stats s1 = {.struct_size = sizeof s1}, s2 = {.struct_size = sizeof s2};
    CHECK_OK(skv_store_get_stats(s, &s1));
    CHECK(s1.fetch_misses == ia.n_pages && s1.copy_calls == 1, "first fetch: %lld misses, %lld copies",
          (long long)s1.fetch_misses, (long long)s1.copy_calls);
    CHECK(s1.bytes_to_hot > 0 && s1.bytes_to_hot <= ia.n_pages * (int64_t)s->slot_bytes, "bytes moved");
    CHECK_OK(skv_store_fetch(s, a)); /* again: nothing moves */
    CHECK_OK(skv_store_get_stats(s, &s2));
    CHECK(s2.bytes_to_hot == s1.bytes_to_hot && s2.fetch_hits == s1.fetch_hits + ia.n_pages,
          "second fetch moved %lld bytes", (long long)(s2.bytes_to_hot - s1.bytes_to_hot));
    /* one appended token changes one window page per head: only those move again */
    fill_seq(s, &p, seq, 1, 5000, 9, 1);
    CHECK_STATUS(skv_store_fetch(s, a), SKV_ERR_STATE); /* stale */
    CHECK_OK(skv_store_select(s, seq, 0, &qq, a));
    CHECK_OK(skv_store_get_stats(s, &s1));
    CHECK_OK(skv_store_fetch(s, a));
    CHECK_OK(skv_store_get_stats(s, &s2));
    const int64_t moved = s2.fetch_misses + s2.fetch_stale - s1.fetch_misses - s1.fetch_stale;
    CHECK(moved >= 1 && moved <= 2 * p.n_kv_heads, "after one append %lld pages moved", (long long)moved);
    /* pinned pages survive eviction; a selection larger than the free room is refused whole */
    int64_t ev = 0;
    CHECK_OK(skv_store_evict(s, -1, &ev));
    CHECK_OK(skv_store_get_stats(s, &s1));
    CHECK(s1.hot_resident >= s1.hot_pinned && s1.hot_pinned > 0, "pins lost to eviction");
    qq.budget = 300;
    CHECK_OK(skv_store_select(s, seq, 0, &qq, b));
    CHECK_STATUS(skv_store_fetch(s, b), SKV_ERR_CAPACITY);
    CHECK_OK(skv_store_get_stats(s, &s2));
    CHECK(s2.hot_resident == s1.hot_resident && s2.bytes_to_hot == s1.bytes_to_hot, "refusal changed the tier");
    CHECK_OK(skv_store_prefetch(s, b)); /* what fits */
    CHECK_OK(skv_store_release(s, a));
    CHECK_OK(skv_store_get_stats(s, &s2));
    CHECK(s2.hot_pinned == 0 && s2.hot_resident <= s2.hot_capacity, "release");
    int64_t bad = -1;
    CHECK_OK(skv_store_check_hot(s, &bad));
    CHECK(bad == 0, "%lld hot pages differ", (long long)bad);
    validate(s, "hot tier");
    skv_store_sel_destroy(a);
    skv_store_sel_destroy(b);
    skv_store_destroy(s);
    skv_context_destroy(ctx);
    printf("hot tier: delta fetch, refusal, pins, eviction checked\n");
}

/* ---- 6. copy and fence failures ---------------------------------------------------------------- */

typedef struct ftier { uint8_t *mem; size_t bytes; long copies, fences, fail_copy, fail_fence; } ftier;

static void *ft_alloc(void *u, size_t n)
{
    ftier *t = u;
    t->mem = xmalloc(n);
    memset(t->mem, 0x5A, n);
    t->bytes = n;
    return t->mem;
}
static void ft_free(void *u, void *h, size_t n)
{
    ftier *t = u;
    (void)h;
    (void)n;
    free(t->mem);
    t->mem = NULL;
}
static int ft_copy(void *u, skv_tier_dir dir, void *hot, size_t sb, void *st, size_t stb,
                   const skv_tier_xfer *x, int64_t n)
{
    ftier *t = u;
    (void)stb;
    if (++t->copies == t->fail_copy) {
        if (n && dir == SKV_TIER_TO_HOT) /* half written */
            memset((uint8_t *)hot + (size_t)x[n - 1].slot * sb, 0xEE, x[n - 1].bytes / 2);
        return 5;
    }
    for (int64_t i = 0; i < n; i++) {
        uint8_t *h = (uint8_t *)hot + (size_t)x[i].slot * sb, *g = (uint8_t *)st + x[i].offset;
        if (dir == SKV_TIER_TO_HOT)
            memcpy(h, g, x[i].bytes);
        else
            memcpy(g, h, x[i].bytes);
    }
    return 0;
}
static int ft_fence(void *u)
{
    ftier *t = u;
    return ++t->fences == t->fail_fence ? 7 : 0;
}

/* A scenario of selections, fetches, prefetches and appends; returns the copies it made. */
static long copy_scenario(ftier *t, int fence, long fail_at, long *n_io)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    skv_store_params p;
    base_params(&p);
    p.hot_pages = 48;
    p.tier = (skv_store_tier){ft_alloc, ft_free, ft_copy, ft_fence, t};
    memset(t, 0, sizeof *t);
    if (fence)
        t->fail_fence = fail_at;
    else
        t->fail_copy = fail_at;
    skv_store *s = make_store(ctx, &p);
    int32_t seq;
    CHECK_OK(skv_store_seq_create(s, &seq));
    fill_seq(s, &p, seq, 500, 0, 21, 500);
    /* what every row must stay */
    uint16_t *k0 = xmalloc(600 * 2 * 24 * 2), *v0 = xmalloc(600 * 2 * 16 * 2);
    uint16_t *k1 = xmalloc(600 * 2 * 24 * 2), *v1 = xmalloc(600 * 2 * 16 * 2);
    skv_store_sel *sel;
    CHECK_OK(skv_store_sel_create(s, &sel));
    rng r = {77};
    for (int step = 0; step < 12; step++) {
        float q[4 * 24];
        for (int i = 0; i < 4 * 24; i++)
            q[i] = (float)rng_uniform(&r, -1, 1);
        skv_store_query qq;
        skv_store_query_init(&qq);
        qq.n_q_heads = 4, qq.q = q, qq.budget = 40 + 5 * step;
        CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
        skv_store_seq_info si = {.struct_size = sizeof si};
        CHECK_OK(skv_store_seq_info_get(s, seq, 0, &si));
        CHECK_OK(skv_store_read(s, seq, 0, 0, si.n_tokens, k0, v0, NULL));
        skv_status st = step % 3 == 2 ? skv_store_prefetch(s, sel) : skv_store_fetch(s, sel);
        if (st == SKV_ERR_IO) {
            (*n_io)++;
            validate(s, "after IO error");
            CHECK_OK(skv_store_read(s, seq, 0, 0, si.n_tokens, k1, v1, NULL));
            CHECK(!memcmp(k0, k1, (size_t)si.n_tokens * 2 * 24 * 2) &&
                      !memcmp(v0, v1, (size_t)si.n_tokens * 2 * 16 * 2),
                  "rows changed by a failed copy");
            int64_t bad = -1;
            CHECK_OK(skv_store_check_hot(s, &bad));
            CHECK(bad == 0, "a failed copy left %lld stale pages mapped", (long long)bad);
            /* (the check's own copies come after the failing one: they succeed) */
            st = skv_store_fetch(s, sel); /* the retry */
        }
        CHECK(st == SKV_OK, "step %d: %s", step, skv_status_string(st));
        if (step % 4 == 3)
            fill_seq(s, &p, seq, 3, 9000 + 100 * step, 30 + step, 1);
    }
    int64_t bad = -1;
    skv_status st = skv_store_check_hot(s, &bad);
    if (st == SKV_ERR_IO) { /* the failure fell on the check's own read-back */
        (*n_io)++;
        st = skv_store_check_hot(s, &bad);
    }
    CHECK_OK(st);
    CHECK(bad == 0, "%lld pages differ at the end", (long long)bad);
    validate(s, "copy scenario end");
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    skv_context_destroy(ctx);
    free(k0), free(v0), free(k1), free(v1);
    return fence ? t->fences : t->copies;
}

static void test_copy_failures(void)
{
    ftier t;
    long n_io = 0, runs = 0;
    for (int fence = 0; fence < 2; fence++) {
        const long total = copy_scenario(&t, fence, 0, &n_io);
        for (long at = 1; at <= total; at++, runs++)
            copy_scenario(&t, fence, at, &n_io);
    }
    CHECK(n_io >= runs / 2, "only %ld of %ld failing runs saw SKV_ERR_IO", n_io, runs);
    printf("copy failures: %ld runs, %ld IO errors recovered\n", runs, n_io);
}

/* ---- 7. allocation failures -------------------------------------------------------------------- */

typedef struct blk { void *p; size_t n; } blk;
typedef struct tracker { long n_allocs, fail_at; int injected; blk *b; long nb, cap; size_t live; long bad; } tracker;

static void *tr_alloc(void *u, size_t size, size_t align)
{
    tracker *t = u;
    if (++t->n_allocs == t->fail_at) {
        t->injected = 1;
        return NULL;
    }
#ifdef _OPENMP
    t->bad += omp_in_parallel() != 0;
#endif
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    if (t->nb == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->b = realloc(t->b, (size_t)t->cap * sizeof *t->b);
    }
    t->b[t->nb++] = (blk){p, size};
    t->live += size;
    return p;
}

static void tr_free(void *u, void *p, size_t size)
{
    tracker *t = u;
    for (long i = t->nb - 1; i >= 0; i--)
        if (t->b[i].p == p) {
            t->bad += t->b[i].n != size;
            t->live -= t->b[i].n;
            t->b[i] = t->b[--t->nb];
            free(p);
            return;
        }
    t->bad++;
}

/* Observable state of a store: every row of every sequence, counts, selection info. */
typedef struct snap { uint8_t *buf; size_t n; } snap;

static void snap_take(skv_store *s, const int32_t *seqs, int n_seqs, skv_store_sel *sel, snap *o)
{
    size_t cap = 1 << 16;
    o->buf = xmalloc(cap), o->n = 0;
#define PUT(ptr, bytes)                                                                       \
    do {                                                                                      \
        if (o->n + (bytes) > cap) {                                                           \
            cap = 2 * (o->n + (bytes));                                                       \
            o->buf = realloc(o->buf, cap);                                                    \
        }                                                                                     \
        memcpy(o->buf + o->n, (ptr), (bytes));                                                \
        o->n += (bytes);                                                                      \
    } while (0)
    for (int i = 0; i < n_seqs; i++) {
        if (seqs[i] < 0)
            continue;
        for (int32_t l = 0; l < s->p.n_layers; l++) {
            skv_store_seq_info si = {.struct_size = sizeof si};
            if (skv_store_seq_info_get(s, seqs[i], l, &si) != SKV_OK)
                continue;
            PUT(&si, sizeof si);
            const size_t kb = (size_t)si.n_tokens * s->H * s->k_bytes + 1;
            const size_t vb = (size_t)si.n_tokens * s->H * s->VD * s->esize + 1;
            uint8_t *k = xmalloc(kb), *v = xmalloc(vb);
            int32_t *pos = xmalloc((size_t)si.n_tokens * 4 + 4);
            CHECK_OK(skv_store_read(s, seqs[i], l, 0, si.n_tokens, k, v, pos));
            PUT(k, kb - 1);
            PUT(v, vb - 1);
            PUT(pos, (size_t)si.n_tokens * 4);
            free(k), free(v), free(pos);
        }
    }
    skv_store_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_store_get_stats(s, &st));
    const int64_t counts[] = {st.n_seqs, st.pages_in_use, st.page_refs, st.tokens_stored,
                              st.hot_resident, st.hot_pinned, st.fetch_pages, st.bytes_to_hot};
    PUT(counts, sizeof counts);
    if (sel) {
        skv_store_sel_info si = {.struct_size = sizeof si};
        CHECK_OK(skv_store_sel_info_get(sel, &si));
        PUT(&si, sizeof si);
    }
#undef PUT
}

static int alloc_step; /* which call of the scenario failed, for messages */

/* Runs `call`; on NOMEM checks that it was injected and nothing changed, then retries. */
#define STEP(call)                                                                            \
    do {                                                                                      \
        alloc_step++;                                                                         \
        snap a_, b_;                                                                          \
        snap_take(s, seqs, 3, sel, &a_);                                                      \
        const int inj_ = t->injected;                                                         \
        skv_status st_ = (call);                                                              \
        if (st_ == SKV_ERR_NOMEM) {                                                           \
            CHECK(t->injected && !inj_, "step %d: NOMEM without an injected failure", alloc_step); \
            snap_take(s, seqs, 3, sel, &b_);                                                  \
            CHECK(a_.n == b_.n && !memcmp(a_.buf, b_.buf, a_.n),                              \
                  "step %d (allocation %ld): a failed call changed the store", alloc_step,   \
                  t->fail_at);                                                                \
            free(b_.buf);                                                                     \
            st_ = (call);                                                                     \
        }                                                                                     \
        CHECK(st_ == SKV_OK, "step %d: %s", alloc_step, skv_status_string(st_));              \
        free(a_.buf);                                                                         \
    } while (0)

static skv_status append_f32(skv_store *s, int32_t seq, int32_t l, int64_t n, int32_t pos0, uint64_t seed)
{
    rng r = {seed};
    const int32_t H = s->H, D = s->D, VD = s->VD;
    float *k = xmalloc((size_t)n * H * D * 4), *v = xmalloc((size_t)n * H * VD * 4 + 4);
    int32_t *pos = xmalloc((size_t)n * 4);
    fill_keys(&r, k, n, H, D, 4);
    for (int64_t i = 0; i < n * H * VD; i++)
        v[i] = (float)rng_uniform(&r, -1, 1);
    for (int64_t i = 0; i < n; i++)
        pos[i] = pos0 + (int32_t)i;
    skv_store_rows rows = {n, SKV_F32, k, VD ? v : NULL, pos};
    const skv_status st = skv_store_append(s, seq, l, &rows);
    free(k), free(v), free(pos);
    return st;
}

/* Everything that allocates. Returns 1 when it ran to the end. */
static int alloc_scenario(tracker *t, long fail_at, snap *final)
{
    memset(t, 0, sizeof *t);
    t->fail_at = fail_at;
    alloc_step = 0;
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.allocator = (skv_allocator){tr_alloc, tr_free, t};
    cp.n_threads = 2;
    skv_context *ctx = NULL;
    skv_status st = skv_context_create(&cp, &ctx);
    if (st == SKV_ERR_NOMEM)
        st = skv_context_create(&cp, &ctx);
    CHECK_OK(st);
    skv_store_params p;
    base_params(&p);
    p.n_layers = 2, p.hot_pages = 64, p.bulk_min = 40, p.fanout = 4;
    skv_store *s = NULL;
    st = skv_store_create(ctx, &p, &s);
    if (st == SKV_ERR_NOMEM) {
        CHECK(s == NULL && t->injected, "store create: NOMEM leaves *out NULL");
        st = skv_store_create(ctx, &p, &s);
    }
    CHECK_OK(st);
    skv_store_sel *sel = NULL;
    st = skv_store_sel_create(s, &sel);
    if (st == SKV_ERR_NOMEM)
        st = skv_store_sel_create(s, &sel);
    CHECK_OK(st);
    int32_t seqs[3] = {-1, -1, -1};
    int32_t id = -1;
    STEP(skv_store_seq_create(s, &id));
    seqs[0] = id;
    STEP(append_f32(s, seqs[0], 0, 300, 0, 1)); /* bulk */
    STEP(append_f32(s, seqs[0], 1, 120, 0, 2));
    for (int i = 0; i < 40; i++) /* decode: flushes, insertions, splits */
        STEP(append_f32(s, seqs[0], 0, 1, 1000 + i, 3 + i));
    STEP(skv_store_seq_fork(s, seqs[0], &id));
    seqs[1] = id;
    STEP(append_f32(s, seqs[1], 0, 9, 2000, 50)); /* copy-on-write */
    STEP(skv_store_seq_remove(s, seqs[1], 40, 230)); /* merges, copies */
    STEP(skv_store_seq_remove(s, seqs[0], 1030, -1)); /* rollback */
    float q[4 * 24];
    rng r = {4};
    for (int i = 0; i < 4 * 24; i++)
        q[i] = (float)rng_uniform(&r, -1, 1);
    skv_store_query qq;
    skv_store_query_init(&qq);
    qq.n_q_heads = 4, qq.q = q, qq.budget = 70;
    for (int sc = 0; sc < 3; sc++) {
        qq.score = (skv_store_score)sc;
        STEP(skv_store_select(s, seqs[1], 0, &qq, sel));
    }
    const int32_t list[] = {5, 7, 9, 100, 150, 2001};
    STEP(skv_store_select_tokens(s, seqs[1], 0, list, 6, 60, sel));
    qq.score = SKV_SCORE_INDEX;
    STEP(skv_store_select(s, seqs[0], 0, &qq, sel));
    STEP(skv_store_fetch(s, sel));
    int64_t bad = 0, ev = 0;
    STEP(skv_store_check_hot(s, &bad));
    {
        float k[1024 * 24], v[1024 * 16];
        int32_t pos[1024];
        int64_t ls[2];
        int32_t ll[2];
        skv_store_gather_out go = {sizeof go, SKV_F32, SKV_GATHER_POSITIONS, 0, 1024, k, v, pos, ls, ll};
        STEP(skv_store_gather(s, sel, &go, NULL));
    }
    STEP(skv_store_evict(s, 5, &ev));
    STEP(skv_store_release(s, sel));
    STEP(skv_store_seq_fork(s, seqs[1], &id));
    seqs[2] = id;
    STEP(append_f32(s, seqs[2], 1, 200, 5000, 60)); /* bulk into a forked layer */
    STEP(skv_store_seq_free(s, seqs[1]));
    seqs[1] = -1;
    snap_take(s, seqs, 3, NULL, final);
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    skv_context_destroy(ctx);
    CHECK(t->nb == 0 && t->live == 0, "allocation %ld: %ld blocks, %zu bytes leaked", fail_at,
          t->nb, t->live);
    CHECK(t->bad == 0, "allocation %ld: %ld bad frees or allocations inside parallel regions",
          fail_at, t->bad);
    free(t->b);
    return !t->injected;
}

static void test_alloc_failures(void)
{
    tracker t;
    snap ref, got;
    alloc_scenario(&t, 0, &ref);
    const long total = t.n_allocs;
    long n = 0;
    for (long at = 1; at <= total + 1; at++, n++) {
        const int clean = alloc_scenario(&t, at, &got);
        CHECK(got.n == ref.n && !memcmp(got.buf, ref.buf, ref.n),
              "failing allocation %ld: the final state differs from a clean run", at);
        free(got.buf);
        if (clean)
            break;
        if (test_failures > 10)
            break;
    }
    free(ref.buf);
    printf("allocation failures: %ld sites of %ld allocations\n", n, total);
}

/* ---- 8. bad arguments -------------------------------------------------------------------------- */

static void test_bad_args(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    skv_store_params p;
    base_params(&p);
    skv_store *s = NULL;
    CHECK_STATUS(skv_store_create(NULL, &p, &s), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_create(ctx, NULL, &s), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_create(ctx, &p, NULL), SKV_ERR_INVALID_ARG);
    const struct { int field; int64_t value; } bad[] = {
        {0, 0}, {1, 0}, {2, 0}, {3, 1025}, {4, -1}, {5, 1}, {6, 65}, {7, -1}, {8, -1}, {9, -1},
        {10, 3}, {11, 65}, {12, 0}, {13, 8}, {14, -1}, {15, 2},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        skv_store_params q = p;
        switch (bad[i].field) {
        case 0: q.struct_size = 0; break;
        case 1: q.n_layers = 0; break;
        case 2: q.n_kv_heads = 0; break;
        case 3: q.k_dim = (int32_t)bad[i].value; break;
        case 4: q.v_dim = -1; break;
        case 5: q.page_tokens = 1; break;
        case 6: q.page_tokens = 65; break;
        case 7: q.n_sink = -1; break;
        case 8: q.n_window = -1; break;
        case 9: q.hot_pages = -1; break;
        case 10: q.layout = (skv_store_layout)3; break;
        case 11: q.fanout = 65; break;
        case 12: q.bulk_min = 0; break;
        case 13: q.flags = 8; break;
        case 14: q.max_pages = -1; break;
        case 15: q.tier.alloc = ft_alloc; break; /* partly set */
        }
        s = (skv_store *)&q;
        CHECK_STATUS(skv_store_create(ctx, &q, &s), SKV_ERR_INVALID_ARG);
        CHECK(s == NULL, "field %d: *out not cleared", bad[i].field);
    }
    p.dtype = SKV_FP8_E4M3;
    CHECK_STATUS(skv_store_create(ctx, &p, &s), SKV_ERR_UNSUPPORTED);
    base_params(&p);
    p.flags = 0;
    p.hot_pages = 0;
    s = make_store(ctx, &p);
    int32_t seq = -1;
    CHECK_STATUS(skv_store_seq_create(s, NULL), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_store_seq_create(s, &seq));
    CHECK_STATUS(skv_store_seq_fork(s, seq + 7, &seq), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_seq_remove(s, seq, -1, 4), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_seq_remove(s, seq, 9, 4), SKV_ERR_INVALID_ARG);
    float k[24 * 4] = {0};
    int32_t pos[2] = {3, 3};
    skv_store_rows rows = {2, SKV_F32, k, k, pos};
    CHECK_STATUS(skv_store_append(s, seq, 0, &rows), SKV_ERR_INVALID_ARG); /* not increasing */
    pos[1] = 4;
    rows.v = NULL;
    CHECK_STATUS(skv_store_append(s, seq, 0, &rows), SKV_ERR_INVALID_ARG); /* V missing */
    rows.v = k;
    rows.dtype = SKV_F16;
    CHECK_STATUS(skv_store_append(s, seq, 0, &rows), SKV_ERR_INVALID_ARG); /* neither dtype */
    rows.dtype = SKV_F32;
    CHECK_STATUS(skv_store_append(s, seq, 1, &rows), SKV_ERR_INVALID_ARG); /* layer */
    pos[0] = -5;
    CHECK_STATUS(skv_store_append(s, seq, 0, &rows), SKV_ERR_INVALID_ARG);
    pos[0] = 3;
    CHECK_OK(skv_store_append(s, seq, 0, &rows));
    CHECK_STATUS(skv_store_append(s, seq, 0, &rows), SKV_ERR_INVALID_ARG); /* not above the last */
    CHECK_STATUS(skv_store_read(s, seq, 0, 1, 2, k, k, NULL), SKV_ERR_INVALID_ARG);
    skv_store_sel *sel;
    CHECK_STATUS(skv_store_sel_create(s, NULL), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_store_sel_create(s, &sel));
    skv_store_query qq;
    skv_store_query_init(&qq);
    qq.n_q_heads = 3, qq.q = k;
    CHECK_STATUS(skv_store_select(s, seq, 0, &qq, sel), SKV_ERR_INVALID_ARG); /* not a multiple */
    qq.n_q_heads = 2, qq.score = SKV_SCORE_MINMAX;
    CHECK_STATUS(skv_store_select(s, seq, 0, &qq, sel), SKV_ERR_UNSUPPORTED);
    qq.score = SKV_SCORE_INDEX, qq.candidates = 0.5f;
    CHECK_STATUS(skv_store_select(s, seq, 0, &qq, sel), SKV_ERR_INVALID_ARG);
    qq.candidates = 2;
    qq.dtype = SKV_FP8_E4M3;
    CHECK_STATUS(skv_store_select(s, seq, 0, &qq, sel), SKV_ERR_INVALID_ARG);
    qq.dtype = SKV_F32;
    CHECK_STATUS(skv_store_sel_pages(sel, 0, NULL, NULL, NULL, NULL, NULL), SKV_ERR_INVALID_ARG); /* empty */
    CHECK_OK(skv_store_select(s, seq, 0, &qq, sel));
    CHECK_STATUS(skv_store_fetch(s, sel), SKV_ERR_STATE); /* no hot tier */
    int64_t bad_pages;
    CHECK_STATUS(skv_store_check_hot(s, &bad_pages), SKV_ERR_STATE);
    float ko[8 * 24], vo[8 * 16];
    int32_t po[8];
    int64_t ls[2];
    int32_t ll[2];
    skv_store_gather_out go = {sizeof go, SKV_F32, SKV_GATHER_PAGES, 0, 1, ko, vo, po, ls, ll};
    CHECK_STATUS(skv_store_gather(s, sel, &go, NULL), SKV_ERR_INVALID_ARG); /* too few rows */
    go.max_rows = 8;
    go.dtype = SKV_F16;
    CHECK_STATUS(skv_store_gather(s, sel, &go, NULL), SKV_ERR_INVALID_ARG);
    go.dtype = SKV_F32;
    /* rows past what size_t addresses: row0 + max_rows overflowing int64, or its byte offset
       (24 floats a row) overflowing size_t, is refused before anything is written */
    go.row0 = INT64_MAX - 4;
    CHECK_STATUS(skv_store_gather(s, sel, &go, NULL), SKV_ERR_INVALID_ARG);
    go.row0 = (int64_t)(SIZE_MAX / 96 - 7), go.max_rows = 8;
    CHECK_STATUS(skv_store_gather(s, sel, &go, NULL), SKV_ERR_INVALID_ARG);
    go.row0 = 0;
    CHECK_OK(skv_store_gather(s, sel, &go, NULL));
    CHECK_OK(skv_store_seq_remove(s, seq, 0, -1));
    CHECK_STATUS(skv_store_gather(s, sel, &go, NULL), SKV_ERR_STATE); /* stale */
    CHECK_STATUS(skv_store_sel_pages(sel, 0, NULL, NULL, NULL, NULL, NULL), SKV_ERR_STATE);
    skv_store_stats st = {.struct_size = 3};
    CHECK_STATUS(skv_store_get_stats(s, &st), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_seq_free(s, seq + 1), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_store_seq_free(s, seq));
    CHECK_STATUS(skv_store_seq_free(s, seq), SKV_ERR_INVALID_ARG);
    skv_store_sel_destroy(sel);
    skv_store_sel_destroy(NULL);
    skv_store_destroy(s);
    skv_store_destroy(NULL);
    /* the positional layout has no index */
    base_params(&p);
    p.layout = SKV_STORE_POSITIONAL;
    s = make_store(ctx, &p);
    CHECK_OK(skv_store_seq_create(s, &seq));
    CHECK_OK(skv_store_sel_create(s, &sel));
    CHECK_STATUS(skv_store_select(s, seq, 0, &qq, sel), SKV_ERR_UNSUPPORTED);
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    skv_context_destroy(ctx);
}

/* Selections of an empty sequence, by every score and by tokens, with a fresh selection object
 * (no arrays yet): nothing selected, and no pointer arithmetic on NULL arrays (which clang's
 * UBSan reports). */
static void test_empty_selection(void)
{
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    skv_store_params p;
    base_params(&p);
    skv_store *s = make_store(ctx, &p);
    int32_t seq;
    CHECK_OK(skv_store_seq_create(s, &seq));
    static const skv_store_score scores[] = {SKV_SCORE_INDEX, SKV_SCORE_MINMAX, SKV_SCORE_EXACT};
    float q[4 * 24] = {0};
    for (int i = 0; i < 4; i++) {
        skv_store_sel *sel;
        CHECK_OK(skv_store_sel_create(s, &sel));
        if (i < 3) {
            skv_store_query sq;
            skv_store_query_init(&sq);
            sq.n_q_heads = 4, sq.q = q, sq.budget = 0, sq.score = scores[i];
            CHECK_OK(skv_store_select(s, seq, 0, &sq, sel));
        } else {
            CHECK_OK(skv_store_select_tokens(s, seq, 0, NULL, 0, 0, sel));
        }
        skv_store_sel_info info = {.struct_size = sizeof info};
        CHECK_OK(skv_store_sel_info_get(sel, &info));
        CHECK(info.n_tokens == 0 && info.n_pages == 0 && info.seq == seq, "empty selection %d: %lld tokens",
              i, (long long)info.n_tokens);
        int32_t n = -1;
        CHECK_OK(skv_store_sel_pages(sel, 1, &n, NULL, NULL, NULL, NULL));
        CHECK(n == 0, "empty selection %d: %d pages", i, n);
        skv_store_sel_destroy(sel);
    }
    skv_store_destroy(s);
    skv_context_destroy(ctx);
}

int main(void)
{
    /* many short parallel regions on a shared machine: idle threads sleep instead of spinning */
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    test_kernels();
    test_budgets();
    test_determinism();
    test_token_sets();
    test_hot_tier();
    test_copy_failures();
    test_alloc_failures();
    test_bad_args();
    test_empty_selection();
    return test_summary("store");
}
