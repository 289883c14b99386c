/* A CPU engine using sparsekv end to end: IndexCache reuse, the indexer's top-k from the paged
 * fp8 key cache, and sparse attention over the selected tokens.
 *
 * A toy model with six layers under the IndexCache pattern "FSSFSS": layers 0 and 3 run their
 * indexer (their keys are the only ones in the indexer key cache), the others reuse the top-k
 * of the Full layer before them. Attention is DSA's: every query head of a token attends over
 * the same selected tokens, through one shared KV head (MQA, as MLA runs in DSA). The host keeps
 * its attention K/V per layer, gathers the selected rows and calls skv_sparse_attention; each
 * result of the first and last prefill chunks and of every decode step is checked against
 * skv_sparse_attention_reference on the same rows.
 *
 *   cpu_engine [prompt_tokens] [decode_steps] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sparsekv/sparsekv.h>

#define PATTERN "FSSFSS"
enum {
    LAYERS = 6, HIDDEN = 64, CHUNK = 256, TOPK = 512,
    IH = 16, ID = 128,      /* indexer heads and head size */
    QH = 8, KD = 64, VD = 64 /* attention query heads; one KV head of KD/VD */
};

#define TRY(expr)                                                                              \
    do {                                                                                       \
        skv_status s_ = (expr);                                                                \
        if (s_ != SKV_OK) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, skv_status_string(s_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static uint64_t rng_state = 7;
static float frand(void) /* uniform [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * 0x1p-24 * 2 - 1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static float *random_matrix(size_t rows, float scale)
{
    float *m = xmalloc(sizeof(float) * rows * HIDDEN);
    for (size_t i = 0; i < rows * HIDDEN; i++)
        m[i] = frand() * scale;
    return m;
}

/* y[t][rows] = W[rows][HIDDEN] x[t] for n tokens, times `scale` */
static void project(const float *W, const float *x, int n, int rows, float scale, float *y)
{
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            float s = 0;
            for (int i = 0; i < HIDDEN; i++)
                s += W[(size_t)r * HIDDEN + i] * x[(size_t)t * HIDDEN + i];
            y[(size_t)t * rows + r] = s * scale;
        }
}

typedef struct layer {
    float *wiq, *wik, *wiw; /* indexer projections (Full layers) */
    float *wq, *wk, *wv;    /* attention projections */
    float *k, *v;           /* the host's attention cache, [capacity][KD], [capacity][VD] */
} layer;

typedef struct buffers {
    float *x, *iq, *ik, *iw, *q, *k_rows, *v_rows, *out, *ref;
    int32_t *pos, *k_pos, *list_len;
    int64_t *list_start;
} buffers;

/* Attention of n tokens of one layer over their selected rows; when `check`, returns the
 * largest difference from the double-precision reference (which is slow: checked sparingly). */
static double attend(skv_context *ctx, const layer *L, const buffers *b, int n,
                     const int32_t *idx, int check, double *ms)
{
    int64_t rows = 0;
    for (int t = 0; t < n; t++) {
        b->list_start[t] = rows;
        for (int i = 0; i < TOPK && idx[(size_t)t * TOPK + i] >= 0; i++, rows++) {
            const int32_t s = idx[(size_t)t * TOPK + i];
            memcpy(b->k_rows + rows * KD, L->k + (size_t)s * KD, sizeof(float) * KD);
            memcpy(b->v_rows + rows * VD, L->v + (size_t)s * VD, sizeof(float) * VD);
            b->k_pos[rows] = s;
        }
        b->list_len[t] = (int32_t)(rows - b->list_start[t]);
    }
    skv_attn_batch ab = {
        .struct_size = sizeof ab, .n_tokens = n, .n_q_heads = QH, .n_kv_heads = 1,
        .k_dim = KD, .v_dim = VD, .dtype = SKV_F32, .scale = 1.0f / sqrtf(KD), .causal = 1,
        .q = b->q, .q_pos = b->pos, .n_rows = rows, .k = b->k_rows, .v = b->v_rows,
        .k_pos = b->k_pos, .list_start = b->list_start, .list_len = b->list_len};
    const double t0 = now_ms();
    TRY(skv_sparse_attention(ctx, &ab, b->out, NULL, NULL));
    *ms += now_ms() - t0;
    if (!check)
        return 0;
    TRY(skv_sparse_attention_reference(&ab, b->ref, NULL, NULL));
    double worst = 0;
    for (size_t i = 0; i < (size_t)n * QH * VD; i++)
        worst = fmax(worst, fabs((double)b->out[i] - b->ref[i]));
    return worst;
}

/* One forward step of n tokens at positions start.. over every layer. */
static double forward(skv_context *ctx, const skv_reuse_plan *plan, skv_reuse_selector *sel,
                      skv_kcache *cache, int32_t seq, layer *layers, buffers *b, int start,
                      int n, int check, double *select_ms, double *attn_ms)
{
    for (int i = 0; i < n * HIDDEN; i++)
        b->x[i] = frand();
    for (int t = 0; t < n; t++)
        b->pos[t] = start + t;
    TRY(skv_reuse_begin_step(sel, n));
    double worst = 0;
    for (int l = 0; l < LAYERS; l++) {
        layer *L = &layers[l];
        /* attention K/V of the new tokens go into the host's cache first: a token sees itself */
        project(L->wk, b->x, n, KD, 1, L->k + (size_t)start * KD);
        project(L->wv, b->x, n, VD, 1, L->v + (size_t)start * VD);
        project(L->wq, b->x, n, QH * KD, 1, b->q);
        skv_layer_role role;
        TRY(skv_reuse_plan_role(plan, l, &role));
        skv_indexer_query iq = {n, IH, ID, SKV_F32, b->iq, NULL, b->iw, b->pos};
        if (role == SKV_LAYER_FULL) { /* only Full layers compute indexer keys and queries */
            int32_t slot;
            TRY(skv_reuse_plan_full_slot(plan, l, &slot));
            project(L->wik, b->x, n, ID, 1, b->ik);
            project(L->wiq, b->x, n, IH * ID, 1, b->iq);
            project(L->wiw, b->x, n, IH, 1.0f / sqrtf((float)IH * ID), b->iw);
            skv_key_block kb = {n, ID, SKV_F32, b->ik, NULL}; /* quantised to fp8 on append */
            TRY(skv_kcache_append(cache, seq, slot, &kb));
        }
        const int32_t *idx;
        const double t0 = now_ms();
        TRY(skv_reuse_select_kcache(sel, l, role == SKV_LAYER_FULL ? &iq : NULL, cache, seq, &idx));
        *select_ms += now_ms() - t0;
        worst = fmax(worst, attend(ctx, L, b, n, idx, check, attn_ms));
    }
    return worst;
}

int main(int argc, char **argv)
{
    const int prompt = argc > 1 ? atoi(argv[1]) : 4096;
    const int steps = argc > 2 ? atoi(argv[2]) : 8;
    if (prompt < 1 || steps < 0) {
        fprintf(stderr, "usage: cpu_engine [prompt_tokens >= 1] [decode_steps >= 0]\n");
        return 2;
    }
    const int capacity = prompt + steps;

    skv_context *ctx;
    TRY(skv_context_create(NULL, &ctx));
    skv_reuse_plan *plan;
    TRY(skv_reuse_plan_from_string(ctx, PATTERN, NULL, 0, &plan));
    printf("sparsekv, %s kernels; %d layers as %s (%d run their indexer), top-%d, "
           "indexer H=%d D=%d fp8, attention %d heads over 1 KV head of %d\n",
           skv_cpu_level_name(skv_context_cpu_flags(ctx)), LAYERS, PATTERN,
           skv_reuse_plan_n_full(plan), TOPK, IH, ID, QH, KD);

    skv_kcache_params base, kp;
    skv_kcache_params_init(&base);
    base.head_dim = ID;
    base.dtype = SKV_FP8_E4M3;
    TRY(skv_reuse_kcache_params(plan, &base, &kp)); /* pages for the Full layers only */
    skv_kcache *cache;
    TRY(skv_kcache_create(ctx, &kp, &cache));
    int32_t seq;
    TRY(skv_kcache_seq_create(cache, &seq));

    skv_reuse_selector_params sp;
    skv_reuse_selector_params_init(&sp);
    sp.k = TOPK;
    sp.max_tokens = CHUNK;
    skv_reuse_selector *sel;
    TRY(skv_reuse_selector_create(ctx, plan, &sp, &sel));

    layer layers[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        layer *L = &layers[l];
        L->wiq = random_matrix(IH * ID, 0.1f), L->wik = random_matrix(ID, 0.1f);
        L->wiw = random_matrix(IH, 1);
        L->wq = random_matrix(QH * KD, 0.1f), L->wk = random_matrix(KD, 0.1f);
        L->wv = random_matrix(VD, 0.1f);
        L->k = xmalloc(sizeof(float) * capacity * KD), L->v = xmalloc(sizeof(float) * capacity * VD);
    }
    buffers b = {
        .x = xmalloc(sizeof(float) * CHUNK * HIDDEN), .iq = xmalloc(sizeof(float) * CHUNK * IH * ID),
        .ik = xmalloc(sizeof(float) * CHUNK * ID), .iw = xmalloc(sizeof(float) * CHUNK * IH),
        .q = xmalloc(sizeof(float) * CHUNK * QH * KD),
        .k_rows = xmalloc(sizeof(float) * CHUNK * TOPK * KD),
        .v_rows = xmalloc(sizeof(float) * CHUNK * TOPK * VD),
        .out = xmalloc(sizeof(float) * CHUNK * QH * VD), .ref = xmalloc(sizeof(float) * CHUNK * QH * VD),
        .pos = xmalloc(sizeof(int32_t) * CHUNK), .k_pos = xmalloc(sizeof(int32_t) * CHUNK * TOPK),
        .list_len = xmalloc(sizeof(int32_t) * CHUNK), .list_start = xmalloc(sizeof(int64_t) * CHUNK)};

    double worst = 0, select_ms = 0, attn_ms = 0, t0 = now_ms();
    for (int start = 0; start < prompt; start += CHUNK) {
        const int n = prompt - start < CHUNK ? prompt - start : CHUNK;
        const int check = start == 0 || start + n == prompt; /* the first and last chunks */
        worst = fmax(worst, forward(ctx, plan, sel, cache, seq, layers, &b, start, n, check,
                                    &select_ms, &attn_ms));
    }
    printf("prefill %d tokens: %.1f ms; selection %.1f ms, sparse attention %.1f ms\n", prompt,
           now_ms() - t0, select_ms, attn_ms);

    for (int step = 0; step < steps; step++) {
        select_ms = attn_ms = 0;
        worst = fmax(worst, forward(ctx, plan, sel, cache, seq, layers, &b, prompt + step, 1, 1,
                                    &select_ms, &attn_ms));
        printf("step %2d  context %6d: selection %.3f ms, sparse attention %.3f ms\n", step,
               prompt + step + 1, select_ms, attn_ms);
    }

    skv_reuse_selector_stats st = {.struct_size = sizeof st};
    TRY(skv_reuse_selector_get_stats(sel, &st));
    printf("%lld steps: %lld indexer runs, %lld layer selections reused\n", (long long)st.steps,
           (long long)st.indexer_runs, (long long)st.reused);
    const int ok = worst < 1e-4;
    printf("%s: sparse attention within %.1e of the double-precision reference (bound 1e-4)\n",
           ok ? "ok" : "FAILED", worst);

    for (int l = 0; l < LAYERS; l++) {
        layer *L = &layers[l];
        free(L->wiq), free(L->wik), free(L->wiw), free(L->wq), free(L->wk), free(L->wv);
        free(L->k), free(L->v);
    }
    free(b.x), free(b.iq), free(b.ik), free(b.iw), free(b.q), free(b.k_rows), free(b.v_rows);
    free(b.out), free(b.ref), free(b.pos), free(b.k_pos), free(b.list_len), free(b.list_start);
    skv_reuse_selector_destroy(sel);
    skv_kcache_destroy(cache);
    skv_reuse_plan_destroy(plan);
    skv_context_destroy(ctx);
    return !ok;
}
