/* Selection quality: the attention mass a selection keeps, for the clustered index against the
 * Quest baseline and the exact top-k oracle.
 *
 * mass(selection) = mean over queries and query heads of sum_{s selected} softmax_s(q . k_s / 8)
 * over the visible tokens; the oracle keeps the `budget` tokens of largest weight of each query
 * head (the most any selection of that size can keep, sinks and window not forced).
 * Methods, at budgets of 64, 128 and 256 tokens (sinks and window included):
 *   clustered  SKV_SCORE_INDEX on the clustered layout (the store's own selection)
 *   cl-exact   SKV_SCORE_EXACT on the clustered layout (every page scored by its best token)
 *   quest      SKV_SCORE_MINMAX on the positional layout (Quest: 16-token position pages)
 *   pos-exact  SKV_SCORE_EXACT on the positional layout
 *
 * 1. Structured synthetic KV (GQA, 2 query heads per KV head): keys in 64 clusters scattered
 *    over the positions, attention sinks, needles; each query aims at one cluster. The tokens
 *    that matter are spread over the positions and gathered by the clustering: asserted
 *    oracle >= every method, clustered >= quest at every budget, and the index within reach of
 *    scoring every clustered page exactly.
 * 2. The real K/V of a trained model (../shared/data/dev, 6 layers x 6 heads x 2048 tokens; the
 *    test says so and skips when absent): prefill of 1024 tokens, then 1024 decode steps (one
 *    append each, so the window flushes into the index as it would in decode), a selection at
 *    every 16th step, 4 sinks and a 16-token window. Per layer: the table, and the bounds this
 *    data supports: oracle >= all; clustered >= 0.85 of the oracle (0.75 in layer 0, whose
 *    attention is the least concentrated), not below quest by more than 0.02 in any layer, and
 *    above it over all layers. */
#include "common.h"
#include "data.h"

enum { M_ORACLE, M_CLUSTER, M_CL_EXACT, M_QUEST, M_POS_EXACT, N_METHODS };
static const char *method_name[N_METHODS] = {"oracle", "clustered", "cl-exact", "quest", "pos-exact"};
static const int64_t budgets[3] = {64, 128, 256};

typedef struct kvset {
    int32_t T, H, G, D; /* tokens, KV heads, query heads per KV head, dim */
    float *k, *v;       /* [T][H][D] (the store's input layout) */
    float *q;           /* [n_q][H * G][D] queries */
    int32_t *qt;        /* [n_q] the token each query belongs to (sees s <= qt) */
    int32_t n_q;
} kvset;

/* Sum of the weights of the tokens at `pos` (n of them) for query head qh of query i. */
static double mass_of(const kvset *d, const float *q, int32_t h, int32_t t, const int32_t *pos,
                      int32_t n, double *w)
{
    double mx = -INFINITY, sum = 0;
    for (int32_t s = 0; s <= t; s++) {
        double dot = 0;
        for (int32_t i = 0; i < d->D; i++)
            dot += (double)q[i] * d->k[((size_t)s * d->H + h) * d->D + i];
        w[s] = dot / 8.0;
        mx = w[s] > mx ? w[s] : mx;
    }
    for (int32_t s = 0; s <= t; s++)
        sum += (w[s] = exp(w[s] - mx));
    double m = 0;
    for (int32_t i = 0; i < n; i++)
        if (pos[i] >= 0 && pos[i] <= t)
            m += w[pos[i]];
    return m / sum;
}

static int dcmp(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The oracle: the largest `budget` weights (w as left by mass_of). */
static double oracle_mass(double *w, int32_t t, int64_t budget)
{
    double sum = 0, top = 0;
    for (int32_t s = 0; s <= t; s++)
        sum += w[s];
    qsort(w, (size_t)t + 1, sizeof *w, dcmp);
    for (int32_t s = 0; s <= t && s < budget; s++)
        top += w[s];
    return top / sum;
}

typedef struct qstores {
    skv_store *st[2]; /* clustered (with min/max), positional (with min/max) */
    int32_t seq[2];
    skv_store_sel *sel;
} qstores;

static void stores_make(skv_context *ctx, const kvset *d, int32_t sink, int32_t window,
                        qstores *o)
{
    for (int i = 0; i < 2; i++) {
        skv_store_params p;
        skv_store_params_init(&p);
        p.n_kv_heads = d->H, p.k_dim = d->D, p.v_dim = d->D, p.dtype = SKV_F16;
        p.page_tokens = 16, p.n_sink = sink, p.n_window = window, p.hot_pages = 0;
        p.flags = SKV_STORE_MINMAX;
        p.layout = i ? SKV_STORE_POSITIONAL : SKV_STORE_CLUSTERED;
        CHECK_OK(skv_store_create(ctx, &p, &o->st[i]));
        CHECK_OK(skv_store_seq_create(o->st[i], &o->seq[i]));
    }
    CHECK_OK(skv_store_sel_create(o->st[0], &o->sel));
}

static void stores_append(qstores *o, const kvset *d, int32_t t0, int32_t n)
{
    int32_t *pos = xmalloc((size_t)n * 4);
    for (int32_t i = 0; i < n; i++)
        pos[i] = t0 + i;
    const size_t at = (size_t)t0 * d->H * d->D;
    skv_store_rows rows = {n, SKV_F32, d->k + at, d->v + at, pos};
    for (int i = 0; i < 2; i++)
        CHECK_OK(skv_store_append(o->st[i], o->seq[i], 0, &rows));
    free(pos);
}

static void stores_free(qstores *o)
{
    skv_store_sel_destroy(o->sel);
    for (int i = 0; i < 2; i++)
        skv_store_destroy(o->st[i]);
}

/* Adds query qi's masses (every method, every budget, every query head) to acc[budget][method]. */
static void score_query(skv_context *ctx, qstores *o, const kvset *d, int32_t qi, double acc[3][N_METHODS])
{
    const int32_t t = d->qt[qi], nq = d->H * d->G;
    const float *q = d->q + (size_t)qi * nq * d->D;
    double *w = xmalloc((size_t)(t + 1) * sizeof *w);
    float *gk = xmalloc((size_t)4096 * d->D * 4), *gv = xmalloc((size_t)4096 * d->D * 4);
    int32_t *gp = xmalloc(4096 * 4);
    int64_t ls[64];
    int32_t ll[64];
    for (int b = 0; b < 3; b++) {
        for (int m = M_CLUSTER; m < N_METHODS; m++) {
            const int pos_layout = m >= M_QUEST;
            skv_store *st = o->st[pos_layout];
            skv_store_sel *sel;
            CHECK_OK(skv_store_sel_create(st, &sel));
            skv_store_query qq;
            skv_store_query_init(&qq);
            qq.n_q_heads = nq, qq.q = q, qq.budget = budgets[b];
            qq.score = m == M_CLUSTER ? SKV_SCORE_INDEX : m == M_QUEST ? SKV_SCORE_MINMAX : SKV_SCORE_EXACT;
            CHECK_OK(skv_store_select(st, o->seq[pos_layout], 0, &qq, sel));
            skv_store_gather_out go = {sizeof go, SKV_F32, SKV_GATHER_PAGES, 0, 4096, gk, gv, gp, ls, ll};
            CHECK_OK(skv_store_gather(st, sel, &go, NULL));
            for (int32_t h = 0; h < d->H; h++) {
                CHECK(ll[h] <= budgets[b], "over budget");
                for (int32_t g = 0; g < d->G; g++) {
                    const float *qh = q + (size_t)(h * d->G + g) * d->D;
                    const double mm = mass_of(d, qh, h, t, gp + ls[h], ll[h], w);
                    acc[b][m] += mm;
                    if (m == M_CLUSTER)
                        acc[b][M_ORACLE] += oracle_mass(w, t, budgets[b]);
                }
            }
            skv_store_sel_destroy(sel);
        }
    }
    (void)ctx;
    free(w), free(gk), free(gv), free(gp);
}

static void print_row(const char *what, double acc[3][N_METHODS], double n)
{
    printf("%-22s", what);
    for (int b = 0; b < 3; b++) {
        printf(" |");
        for (int m = 0; m < N_METHODS; m++)
            printf(" %.3f", acc[b][m] / n);
    }
    printf("\n");
}

static void print_header(void)
{
    printf("%-22s", "attention-mass recall");
    for (int b = 0; b < 3; b++)
        printf(" | budget %-27lld", (long long)budgets[b]);
    printf("\n%-22s", "");
    for (int b = 0; b < 3; b++) {
        printf(" |");
        for (int m = 0; m < N_METHODS; m++)
            printf(" %.5s", method_name[m]);
    }
    printf("\n");
}

static void check_order(const char *what, double acc[3][N_METHODS], double n, int strict_quest,
                        double floor_frac)
{
    for (int b = 0; b < 3; b++) {
        for (int m = M_CLUSTER; m < N_METHODS; m++)
            CHECK(acc[b][M_ORACLE] >= acc[b][m] - 1e-9 * n, "%s budget %lld: %s %.4f above the oracle %.4f",
                  what, (long long)budgets[b], method_name[m], acc[b][m] / n, acc[b][M_ORACLE] / n);
        if (strict_quest)
            CHECK(acc[b][M_CLUSTER] >= acc[b][M_QUEST], "%s budget %lld: clustered %.4f below quest %.4f",
                  what, (long long)budgets[b], acc[b][M_CLUSTER] / n, acc[b][M_QUEST] / n);
        CHECK(acc[b][M_CLUSTER] >= floor_frac * acc[b][M_ORACLE], "%s budget %lld: clustered %.4f "
              "below %.2f of the oracle %.4f", what, (long long)budgets[b], acc[b][M_CLUSTER] / n,
              floor_frac, acc[b][M_ORACLE] / n);
    }
}

/* ---- 1. structured synthetic KV ---------------------------------------------------------------- */

static void synthetic(skv_context *ctx)
{
    kvset d = {8192, 2, 2, 64, NULL, NULL, NULL, NULL, 48};
    rng r = {2024};
    const int32_t C = 64;
    float *u = xmalloc((size_t)C * d.D * 4), common[64];
    for (int32_t c = 0; c < C; c++) { /* unit directions */
        double n = 0;
        for (int32_t i = 0; i < d.D; i++) {
            u[c * d.D + i] = (float)rng_uniform(&r, -1, 1);
            n += u[c * d.D + i] * u[c * d.D + i];
        }
        for (int32_t i = 0; i < d.D; i++)
            u[c * d.D + i] /= (float)sqrt(n);
    }
    for (int32_t i = 0; i < d.D; i++)
        common[i] = (float)rng_uniform(&r, -1, 1) / 4.6f;
    d.k = xmalloc((size_t)d.T * d.H * d.D * 4);
    d.v = xmalloc((size_t)d.T * d.H * d.D * 4);
    int32_t *cl = xmalloc((size_t)d.T * 4);
    for (int32_t s = 0; s < d.T; s++) {
        cl[s] = (int32_t)rng_int(&r, 0, C - 1);
        for (int32_t h = 0; h < d.H; h++) {
            float *k = d.k + ((size_t)s * d.H + h) * d.D;
            for (int32_t i = 0; i < d.D; i++) {
                k[i] = 6.5f * u[cl[s] * d.D + i] + (float)rng_uniform(&r, -0.35, 0.35);
                if (s < 4) /* sinks: aligned with what every query shares */
                    k[i] = 9.0f * common[i];
                d.v[((size_t)s * d.H + h) * d.D + i] = (float)rng_uniform(&r, -1, 1);
            }
        }
    }
    d.q = xmalloc((size_t)d.n_q * d.H * d.G * d.D * 4);
    d.qt = xmalloc((size_t)d.n_q * 4);
    for (int32_t qi = 0; qi < d.n_q; qi++) {
        d.qt[qi] = d.T - 1;
        const int32_t c = (int32_t)rng_int(&r, 0, C - 1);
        /* a needle: one token far from its cluster's position, strongly matching */
        const int32_t nd = (int32_t)rng_int(&r, 100, d.T - 300);
        for (int32_t h = 0; h < d.H; h++)
            for (int32_t i = 0; i < d.D; i++)
                d.k[((size_t)nd * d.H + h) * d.D + i] = 9.0f * u[c * d.D + i];
        for (int32_t hq = 0; hq < d.H * d.G; hq++) {
            float *q = d.q + ((size_t)qi * d.H * d.G + hq) * d.D;
            for (int32_t i = 0; i < d.D; i++)
                q[i] = 6.5f * u[c * d.D + i] + 4.0f * common[i] + (float)rng_uniform(&r, -0.3, 0.3);
        }
    }
    double acc[3][N_METHODS] = {{0}};
    qstores o;
    stores_make(ctx, &d, 4, 16, &o);
    stores_append(&o, &d, 0, d.T - 256);     /* prefill: bulk clustering */
    for (int32_t t = d.T - 256; t < d.T; t++) /* decode: insertions */
        stores_append(&o, &d, t, 1);
    for (int32_t qi = 0; qi < d.n_q; qi++)
        score_query(ctx, &o, &d, qi, acc);
    const double n = (double)d.n_q * d.H * d.G;
    print_header();
    print_row("synthetic 8K, GQA 2", acc, n);
    check_order("synthetic", acc, n, 1, 0.5);
    for (int b = 0; b < 3; b++)
        CHECK(acc[b][M_CLUSTER] >= acc[b][M_CL_EXACT] - 0.05 * n,
              "synthetic budget %lld: the index (%.4f) far below exact page scoring (%.4f)",
              (long long)budgets[b], acc[b][M_CLUSTER] / n, acc[b][M_CL_EXACT] / n);
    stores_free(&o);
    free(u), free(d.k), free(d.v), free(d.q), free(d.qt), free(cl);
}

/* ---- 2. the real K/V ---------------------------------------------------------------------------- */

static void real_data(skv_context *ctx)
{
    if (!data_dir()) {
        printf("skip: real K/V not found (set SKV_TEST_DATA or place ../shared/data/dev)\n");
        return;
    }
    enum { T = 2048, NH = 6, D = 64, T0 = 1024, EVERY = 16 };
    double all[3][N_METHODS] = {{0}};
    double n_all = 0;
    for (int32_t layer = 0; layer < 6; layer++) {
        char name[64];
        uint16_t *raw[3];
        const char *part[3] = {"q", "k", "v"};
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "L%d_%s.bin", layer, part[i]);
            raw[i] = data_read(name, (size_t)NH * T * D * 2);
            if (!raw[i]) {
                printf("skip: %s unreadable\n", name);
                return;
            }
        }
        kvset d = {T, NH, 1, D, NULL, NULL, NULL, NULL, (T - T0) / EVERY};
        d.k = xmalloc((size_t)T * NH * D * 4), d.v = xmalloc((size_t)T * NH * D * 4);
        d.q = xmalloc((size_t)d.n_q * NH * D * 4);
        d.qt = xmalloc((size_t)d.n_q * 4);
        for (int32_t h = 0; h < NH; h++) /* [heads][T][D] -> [T][heads][D] */
            for (int32_t t = 0; t < T; t++) {
                skv_convert(SKV_F32, d.k + ((size_t)t * NH + h) * D, SKV_F16, raw[1] + ((size_t)h * T + t) * D, D);
                skv_convert(SKV_F32, d.v + ((size_t)t * NH + h) * D, SKV_F16, raw[2] + ((size_t)h * T + t) * D, D);
            }
        for (int32_t qi = 0; qi < d.n_q; qi++) {
            d.qt[qi] = T0 + EVERY - 1 + qi * EVERY;
            for (int32_t h = 0; h < NH; h++)
                skv_convert(SKV_F32, d.q + ((size_t)qi * NH + h) * D, SKV_F16,
                            raw[0] + ((size_t)h * T + d.qt[qi]) * D, D);
        }
        double acc[3][N_METHODS] = {{0}};
        qstores o;
        stores_make(ctx, &d, 4, 16, &o);
        stores_append(&o, &d, 0, T0);
        int32_t qi = 0;
        for (int32_t t = T0; t < T; t++) {
            stores_append(&o, &d, t, 1);
            if (qi < d.n_q && d.qt[qi] == t)
                score_query(ctx, &o, &d, qi++, acc);
        }
        const double n = (double)d.n_q * NH;
        if (layer == 0)
            print_header();
        snprintf(name, sizeof name, "real layer %d", layer);
        print_row(name, acc, n);
        /* Floors this data supports, with room: measured 0.86-0.97 of the oracle at 64 tokens
           and >= 0.95 from 128 (docs/store.md); the oracle bounds everything. */
        check_order(name, acc, n, 0, layer == 0 ? 0.75 : 0.85);
        for (int b = 0; b < 3; b++)
            CHECK(acc[b][M_CLUSTER] >= acc[b][M_QUEST] - 0.02 * n,
                  "%s budget %lld: clustered %.4f below quest %.4f", name, (long long)budgets[b],
                  acc[b][M_CLUSTER] / n, acc[b][M_QUEST] / n);
        for (int b = 0; b < 3; b++)
            for (int m = 0; m < N_METHODS; m++)
                all[b][m] += acc[b][m];
        n_all += n;
        stores_free(&o);
        for (int i = 0; i < 3; i++)
            free(raw[i]);
        free(d.k), free(d.v), free(d.q), free(d.qt);
    }
    print_row("real, all layers", all, n_all);
    for (int b = 0; b < 3; b++)
        CHECK(all[b][M_CLUSTER] >= all[b][M_QUEST],
              "real data budget %lld: clustered %.4f below quest %.4f over all layers",
              (long long)budgets[b], all[b][M_CLUSTER] / n_all, all[b][M_QUEST] / n_all);
}

int main(void)
{
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    synthetic(ctx);
    real_data(ctx);
    skv_context_destroy(ctx);
    return test_summary("store_quality");
}
