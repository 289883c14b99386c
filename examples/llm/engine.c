/* One forward step through sparsekv: the indexer keys go to the paged key cache, the reuse
 * selector hands each layer its top-k (running the indexer on Full layers only), the selected
 * K/V rows are gathered and skv_sparse_attention attends over them; store configurations keep
 * the K/V rows in the clustered store and gather what it selects. */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { PAGE = 64, POOL = 64, STORE_PAGE = 16, STORE_SINK = 4, STORE_WINDOW = 16 };

struct llm_engine {
    const llm_model *m;
    llm_config c;
    skv_context *ctx;
    int cap, max_step, len;
    float *kc, *vc;  /* the host's attention cache [layer][head][cap][head_dim] */
    int32_t *kpos;   /* [head * cap]: position of each cache row */
    skv_reuse_plan *plan;
    skv_reuse_selector *sel;
    skv_kcache *kcache;
    int32_t kseq;
    skv_store *store;
    skv_store_sel *ssel;
    int32_t sseq;
    /* scratch for max_step tokens */
    float *x, *xn, *qkv, *q, *krow, *vrow, *att, *ffn, *iq, *ik, *iw, *iproj;
    int32_t *pos;
    /* gathered rows for attention */
    int64_t rows_cap;
    float *gk, *gv;
    int32_t *gpos, *llen, *sorted, *count;
    int64_t *lstart;
    llm_timing tm;
};

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

#define SKV(expr)                                                                              \
    do {                                                                                       \
        const skv_status s_ = (expr);                                                          \
        if (s_ != SKV_OK) {                                                                    \
            fprintf(stderr, "llm: %s: %s\n", #expr, skv_status_string(s_));                    \
            return -1;                                                                         \
        }                                                                                      \
    } while (0)

int llm_config_parse(const char *name, int n_layers, llm_config *c)
{
    memset(c, 0, sizeof *c);
    if (strlen(name) >= sizeof c->name)
        return -1;
    strcpy(c->name, name);
    c->method = SKV_SELECT_DENSE;
    memset(c->pattern, 'F', (size_t)n_layers);
    int end = -1, a = 0, b = 0;
    char pat[LLM_MAX_LAYERS + 2] = "";
    if (!strcmp(name, "dense")) {
        c->kind = LLM_DENSE;
        return 0;
    }
    if (sscanf(name, "dsa_k%d%n", &a, &end) == 1 && !name[end]) {
        c->kind = LLM_INDEXER, c->k = a;
    } else if (sscanf(name, "indexcache_%17[FSfs]_k%d%n", pat, &a, &end) == 2 && !name[end]) {
        if ((int)strlen(pat) != n_layers)
            return -1;
        for (int i = 0; i < n_layers; i++)
            c->pattern[i] = pat[i] == 'f' || pat[i] == 'F' ? 'F' : 'S';
        c->kind = LLM_INDEXER, c->k = a;
    } else if (sscanf(name, "misa_h%d_k%d%n", &b, &a, &end) == 2 && !name[end]) {
        c->kind = LLM_INDEXER, c->k = a, c->method = SKV_SELECT_MISA, c->misa_heads = b;
    } else if (sscanf(name, "misa_dagger_h%d_k%d%n", &b, &a, &end) == 2 && !name[end]) {
        c->kind = LLM_INDEXER, c->k = a, c->method = SKV_SELECT_MISA, c->misa_heads = b;
        c->misa_dagger = 1;
    } else if (sscanf(name, "hisa_k%d%n", &a, &end) == 1 && !name[end]) {
        c->kind = LLM_INDEXER, c->k = a, c->method = SKV_SELECT_HISA;
    } else if (sscanf(name, "store_b%d%n", &a, &end) == 1 && !name[end]) {
        c->kind = LLM_STORE, c->budget = a;
        return a >= STORE_SINK + STORE_WINDOW + STORE_PAGE ? 0 : -1;
    } else if (sscanf(name, "store_dsa_k%d%n", &a, &end) == 1 && !name[end]) {
        /* room for every listed token besides the sinks and the longest window */
        c->kind = LLM_STORE_TOPK, c->k = a;
        c->budget = a + STORE_SINK + STORE_WINDOW + STORE_PAGE - 1;
    } else {
        return -1;
    }
    return c->k >= 1 ? 0 : -1;
}

static void *zalloc(size_t n) { return calloc(n ? n : 1, 1); }

void llm_engine_destroy(llm_engine *e)
{
    if (!e)
        return;
    skv_reuse_selector_destroy(e->sel);
    skv_kcache_destroy(e->kcache);
    skv_reuse_plan_destroy(e->plan);
    skv_store_sel_destroy(e->ssel);
    skv_store_destroy(e->store);
    free(e->kc), free(e->vc), free(e->kpos), free(e->x), free(e->xn), free(e->qkv), free(e->q);
    free(e->krow), free(e->vrow), free(e->att), free(e->ffn), free(e->iq), free(e->ik);
    free(e->iw), free(e->iproj), free(e->pos), free(e->gk), free(e->gv), free(e->gpos);
    free(e->llen), free(e->sorted), free(e->count), free(e->lstart);
    free(e);
}

static int setup_indexer(llm_engine *e)
{
    const llm_model *m = e->m;
    SKV(skv_reuse_plan_from_string(e->ctx, e->c.pattern, NULL, 0, &e->plan));
    skv_kcache_params base, kp;
    skv_kcache_params_init(&base);
    base.head_dim = m->id;
    base.dtype = SKV_F32; /* the trained indexer is f32: keep its keys exact */
    base.page_tokens = PAGE;
    base.pool_chunk = e->c.method == SKV_SELECT_DENSE ? 0 : POOL;
    SKV(skv_reuse_kcache_params(e->plan, &base, &kp)); /* pages for Full layers only */
    SKV(skv_kcache_create(e->ctx, &kp, &e->kcache));
    SKV(skv_kcache_seq_create(e->kcache, &e->kseq));
    skv_reuse_selector_params sp;
    skv_reuse_selector_params_init(&sp);
    sp.k = e->c.k;
    sp.max_tokens = e->max_step;
    sp.method = e->c.method;
    sp.misa.route = SKV_ROUTE_POOLED;
    sp.misa.heads = e->c.misa_heads;
    sp.misa.block = POOL;
    sp.misa.candidates = e->c.misa_dagger ? SKV_CANDIDATES_4K : 0;
    sp.misa.min_length = 0;
    sp.hisa.block = POOL;
    sp.hisa.blocks = 0; /* enough blocks for 4k candidates */
    sp.hisa.min_length = 0;
    SKV(skv_reuse_selector_create(e->ctx, e->plan, &sp, &e->sel));
    return 0;
}

static int setup_store(llm_engine *e)
{
    const llm_model *m = e->m;
    skv_store_params sp;
    skv_store_params_init(&sp);
    sp.n_layers = m->n_layers;
    sp.n_kv_heads = m->n_heads;
    sp.k_dim = sp.v_dim = m->head_dim;
    sp.dtype = SKV_F32;
    sp.page_tokens = STORE_PAGE;
    sp.n_sink = STORE_SINK;
    sp.n_window = STORE_WINDOW;
    sp.hot_pages = 0; /* CPU only: attention reads the gathered host rows */
    SKV(skv_store_create(e->ctx, &sp, &e->store));
    SKV(skv_store_seq_create(e->store, &e->sseq));
    SKV(skv_store_sel_create(e->store, &e->ssel));
    return 0;
}

llm_engine *llm_engine_create(const llm_model *m, const llm_config *c, skv_context *ctx,
                              int capacity, int max_step)
{
    if (capacity < 1 || capacity > m->max_seq || max_step < 1 || max_step > capacity)
        return NULL;
    llm_engine *e = zalloc(sizeof *e);
    if (!e)
        return NULL;
    e->m = m, e->c = *c, e->ctx = ctx, e->cap = capacity, e->max_step = max_step;
    const int D = m->dim, H = m->n_heads, hd = m->head_dim, n = max_step;
    const size_t cache = (size_t)m->n_layers * H * capacity * hd;
    const int64_t per_token = (int64_t)H * (c->kind == LLM_DENSE ? 0 : c->kind == LLM_INDEXER
                                                ? (c->k < capacity ? c->k : capacity) : c->budget);
    e->rows_cap = per_token > (1 << 17) ? per_token : (1 << 17);
    e->kc = malloc(cache * sizeof(float)), e->vc = malloc(cache * sizeof(float));
    e->kpos = malloc((size_t)H * capacity * sizeof(int32_t));
    e->x = malloc((size_t)n * D * 4), e->xn = malloc((size_t)n * D * 4);
    e->qkv = malloc((size_t)n * 3 * D * 4), e->q = malloc((size_t)n * D * 4);
    e->krow = malloc((size_t)n * D * 4), e->vrow = malloc((size_t)n * D * 4);
    e->att = malloc((size_t)n * D * 4), e->ffn = malloc((size_t)n * (3 * m->hidden + D) * 4);
    e->iq = malloc((size_t)n * m->ih * m->id * 4), e->ik = malloc((size_t)n * m->id * 4);
    e->iw = malloc((size_t)n * m->ih * 4);
    e->iproj = malloc((size_t)n * (m->ih * m->id + m->id + m->ih) * 4);
    e->pos = malloc((size_t)n * 4);
    e->gk = malloc((size_t)e->rows_cap * hd * 4), e->gv = malloc((size_t)e->rows_cap * hd * 4);
    e->gpos = malloc((size_t)e->rows_cap * 4);
    e->llen = malloc((size_t)n * H * 4), e->lstart = malloc((size_t)n * H * 8);
    e->sorted = malloc((size_t)n * (c->k > 0 ? c->k : 1) * 4), e->count = malloc((size_t)n * 4);
    int ok = e->kc && e->vc && e->kpos && e->x && e->xn && e->qkv && e->q && e->krow && e->vrow &&
             e->att && e->ffn && e->iq && e->ik && e->iw && e->iproj && e->pos && e->gk && e->gv &&
             e->gpos && e->llen && e->lstart && e->sorted && e->count;
    if (ok) {
        for (int h = 0; h < H; h++)
            for (int s = 0; s < capacity; s++)
                e->kpos[(size_t)h * capacity + s] = s;
        if (c->kind == LLM_INDEXER || c->kind == LLM_STORE_TOPK)
            ok = setup_indexer(e) == 0;
        if (ok && (c->kind == LLM_STORE || c->kind == LLM_STORE_TOPK))
            ok = setup_store(e) == 0;
    }
    if (!ok) {
        llm_engine_destroy(e);
        return NULL;
    }
    return e;
}

int llm_engine_length(const llm_engine *e) { return e->len; }
const llm_timing *llm_engine_timing(const llm_engine *e) { return &e->tm; }
void llm_engine_reset_timing(llm_engine *e) { memset(&e->tm, 0, sizeof e->tm); }

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* skv_sparse_attention of the n query tokens at q (a row of e->q) into the same rows of
 * e->att, over the lists in lstart / llen. */
static int attend(llm_engine *e, const float *kbase, const float *vbase, const float *q,
                  const int32_t *pos, int n, int64_t n_rows, const int32_t *kpos)
{
    const llm_model *m = e->m;
    const skv_attn_batch b = {
        .struct_size = sizeof b, .n_tokens = n, .n_q_heads = m->n_heads,
        .n_kv_heads = m->n_heads, .k_dim = m->head_dim, .v_dim = m->head_dim, .dtype = SKV_F32,
        .scale = (float)(1.0 / sqrt((double)m->head_dim)), .causal = 1, .q = q, .q_pos = pos,
        .n_rows = n_rows, .k = kbase, .v = vbase, .k_pos = kpos, .list_start = e->lstart,
        .list_len = e->llen};
    SKV(skv_sparse_attention(e->ctx, &b, e->att + (size_t)(q - e->q), NULL, NULL));
    return 0;
}

/* Every visible row of the host cache, in position order. */
static int attend_dense(llm_engine *e, int l, int n)
{
    const int H = e->m->n_heads;
    const size_t layer = (size_t)l * H * e->cap * e->m->head_dim;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < H; h++) {
            e->lstart[t * H + h] = (int64_t)h * e->cap;
            e->llen[t * H + h] = e->pos[t] + 1;
        }
    return attend(e, e->kc + layer, e->vc + layer, e->q, e->pos, n, (int64_t)H * e->cap, e->kpos);
}

/* The selected rows idx [n][k] (-1 padded) of the host cache, gathered in position order
 * (with every visible token selected, the rows and the result are dense attention's). */
static int attend_selected(llm_engine *e, int l, int n, const int32_t *idx)
{
    const int H = e->m->n_heads, hd = e->m->head_dim, k = e->c.k;
    const size_t layer = (size_t)l * H * e->cap * hd;
    const int kk = k < e->cap ? k : e->cap;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        int c = 0;
        for (int i = 0; i < k && idx[(size_t)t * k + i] >= 0; i++)
            e->sorted[(size_t)t * kk + c++] = idx[(size_t)t * k + i];
        qsort(e->sorted + (size_t)t * kk, (size_t)c, 4, cmp_i32);
        e->count[t] = c;
    }
    for (int t0 = 0; t0 < n;) {
        int64_t rows = 0;
        int t1 = t0;
        while (t1 < n && rows + (int64_t)H * e->count[t1] <= e->rows_cap) {
            for (int h = 0; h < H; h++) {
                e->lstart[(t1 - t0) * H + h] = rows + (int64_t)h * e->count[t1];
                e->llen[(t1 - t0) * H + h] = e->count[t1];
            }
            rows += (int64_t)H * e->count[t1++];
        }
#pragma omp parallel for schedule(dynamic, 4)
        for (int t = t0; t < t1; t++)
            for (int h = 0; h < H; h++) {
                const int64_t r0 = e->lstart[(t - t0) * H + h];
                const float *ks = e->kc + layer + (size_t)h * e->cap * hd;
                const float *vs = e->vc + layer + (size_t)h * e->cap * hd;
                for (int i = 0; i < e->count[t]; i++) {
                    const int32_t s = e->sorted[(size_t)t * kk + i];
                    memcpy(e->gk + (r0 + i) * hd, ks + (size_t)s * hd, (size_t)hd * 4);
                    memcpy(e->gv + (r0 + i) * hd, vs + (size_t)s * hd, (size_t)hd * 4);
                    e->gpos[r0 + i] = s;
                }
            }
        if (attend(e, e->gk, e->gv, e->q + (size_t)t0 * H * hd, e->pos + t0, t1 - t0, rows,
                   e->gpos))
            return -1;
        t0 = t1;
    }
    return 0;
}

/* The store's selection for one decode token: by itself, or the listed top-k. */
static int store_select(llm_engine *e, int l, const int32_t *idx)
{
    if (e->c.kind == LLM_STORE) {
        skv_store_query sq;
        skv_store_query_init(&sq);
        sq.n_q_heads = e->m->n_heads;
        sq.dtype = SKV_F32;
        sq.q = e->q;
        sq.budget = e->c.budget;
        SKV(skv_store_select(e->store, e->sseq, l, &sq, e->ssel));
    } else {
        SKV(skv_store_select_tokens(e->store, e->sseq, l, idx, e->c.k, e->c.budget, e->ssel));
    }
    return 0;
}

/* Attention over the rows of the store's selection, gathered in position order. */
static int attend_store(llm_engine *e)
{
    const skv_store_gather_out o = {
        .struct_size = sizeof o, .dtype = SKV_F32, .order = SKV_GATHER_POSITIONS, .row0 = 0,
        .max_rows = e->rows_cap, .k = e->gk, .v = e->gv, .k_pos = e->gpos,
        .list_start = e->lstart, .list_len = e->llen};
    int64_t rows;
    SKV(skv_store_gather(e->store, e->ssel, &o, &rows));
    return attend(e, e->gk, e->gv, e->q, e->pos, 1, rows, e->gpos);
}

int llm_engine_step(llm_engine *e, const int32_t *tokens, int n, float *logits)
{
    const llm_model *m = e->m;
    const int D = m->dim, H = m->n_heads, hd = m->head_dim, p0 = e->len;
    if (n < 1 || n > e->max_step || p0 + n > e->cap) {
        fprintf(stderr, "llm: step of %d tokens at %d does not fit (capacity %d)\n", n, p0, e->cap);
        return -1;
    }
    for (int t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= m->vocab) {
            fprintf(stderr, "llm: token %d out of range\n", tokens[t]);
            return -1;
        }
        memcpy(e->x + (size_t)t * D, m->tok + (size_t)tokens[t] * D, (size_t)D * 4);
        e->pos[t] = p0 + t;
    }
    const int use_indexer = e->c.kind == LLM_INDEXER || e->c.kind == LLM_STORE_TOPK;
    const int use_store = e->c.kind == LLM_STORE || e->c.kind == LLM_STORE_TOPK;
    /* store methods select for one query token: their prompt chunks attend densely */
    const int dense_step = e->c.kind == LLM_DENSE || (n > 1 && (use_store || e->c.dense_prefill));
    if (use_indexer)
        SKV(skv_reuse_begin_step(e->sel, n));
    for (int l = 0; l < m->n_layers; l++) {
        const llm_layer *L = &m->layer[l];
        double t0 = now_ms();
        llm_rmsnorm(e->x, L->attn_norm, n, D, m->eps, e->xn);
        llm_matmul(e->xn, L->wqkv, n, D, 3 * D, 0, e->qkv);
        float *kc = e->kc + (size_t)l * H * e->cap * hd, *vc = e->vc + (size_t)l * H * e->cap * hd;
        for (int t = 0; t < n; t++) {
            float *r = e->qkv + (size_t)t * 3 * D;
            llm_rope(r, H, hd, hd, m->rope_cos, m->rope_sin, p0 + t);
            llm_rope(r + D, H, hd, hd, m->rope_cos, m->rope_sin, p0 + t);
            memcpy(e->q + (size_t)t * D, r, (size_t)D * 4);
            memcpy(e->krow + (size_t)t * D, r + D, (size_t)D * 4);
            memcpy(e->vrow + (size_t)t * D, r + 2 * D, (size_t)D * 4);
            for (int h = 0; h < H; h++) {
                memcpy(kc + ((size_t)h * e->cap + p0 + t) * hd, r + D + h * hd, (size_t)hd * 4);
                memcpy(vc + ((size_t)h * e->cap + p0 + t) * hd, r + 2 * D + h * hd, (size_t)hd * 4);
            }
        }
        e->tm.proj += now_ms() - t0;

        const int32_t *idx = NULL;
        if (use_indexer) {
            skv_layer_role role;
            int32_t slot;
            SKV(skv_reuse_plan_role(e->plan, l, &role));
            SKV(skv_reuse_plan_full_slot(e->plan, l, &slot));
            const skv_indexer_query iq = {n, m->ih, m->id, SKV_F32, e->iq, NULL, e->iw, e->pos};
            if (role == SKV_LAYER_FULL) { /* Shared layers compute no indexer at all */
                t0 = now_ms();
                llm_indexer_project(m, l, e->xn, n, p0, e->iq, e->ik, e->iw, e->iproj);
                const skv_key_block kb = {n, m->id, SKV_F32, e->ik, NULL};
                SKV(skv_kcache_append(e->kcache, e->kseq, slot, &kb));
                e->tm.indexer += now_ms() - t0;
            }
            t0 = now_ms();
            if (!dense_step) /* (a step may skip every selection) */
                SKV(skv_reuse_select_kcache(e->sel, l, role == SKV_LAYER_FULL ? &iq : NULL,
                                            e->kcache, e->kseq, &idx));
            e->tm.select += now_ms() - t0;
        }
        if (use_store) {
            t0 = now_ms();
            const skv_store_rows rows = {n, SKV_F32, e->krow, e->vrow, e->pos};
            SKV(skv_store_append(e->store, e->sseq, l, &rows));
            if (n == 1 && store_select(e, l, idx))
                return -1;
            e->tm.select += now_ms() - t0;
        }

        t0 = now_ms();
        int rc;
        if (dense_step)
            rc = attend_dense(e, l, n);
        else if (use_store)
            rc = attend_store(e);
        else
            rc = attend_selected(e, l, n, idx);
        if (rc)
            return -1;
        e->tm.attn += now_ms() - t0;

        t0 = now_ms();
        llm_matmul(e->att, L->wo, n, D, D, 1, e->x);
        llm_ffn(m, l, e->x, n, e->ffn);
        e->tm.proj += now_ms() - t0;
    }
    if (logits) {
        const double t0 = now_ms();
        llm_logits(m, e->x, n, e->xn, logits);
        e->tm.proj += now_ms() - t0;
    }
    e->len += n;
    return 0;
}
