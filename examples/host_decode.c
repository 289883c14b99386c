/* A host engine's decode loop, the way an inference engine would drive sparsekv.
 *
 * A toy model with a few layers: each layer has fixed random indexer projections (the host's
 * weights): q = Wq x (H heads of D), k = Wk x (one key per token), w = Ww x (head gates).
 * The engine prefills a prompt in chunks, appending each layer's indexer keys to the paged key
 * cache (fp8, quantised on append) and selecting top-k tokens per query, then decodes token by
 * token: append the new key, ask for the top-k from the pages. Every selection is checked
 * against skv_indexer_topk on the same keys laid out contiguously. Each decode step also routes
 * 8 of the H indexer heads (MISA, on the cache's pooled chunk sums) and reports how much of the
 * dense top-k they recover; routing every head must give the dense selection back. (This toy
 * model's heads are independent random projections, so 8 of them recover about half of the
 * dense top-k; a trained indexer's heads agree far more: docs/misa.md.)
 *
 *   host_decode [prompt_tokens] [decode_steps] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sparsekv/sparsekv.h>

enum { LAYERS = 4, HIDDEN = 64, H = 32, D = 128, TOPK = 512, CHUNK = 512 };

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static uint64_t rng_state = 42;
static float frand(void) /* uniform [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * 0x1p-24 * 2 - 1);
}

typedef struct layer_weights { float *wq, *wk, *ww; } layer_weights;

/* y[rows] = W[rows][HIDDEN] x */
static void matvec(const float *W, const float *x, float *y, int rows)
{
    for (int r = 0; r < rows; r++) {
        float s = 0;
        for (int i = 0; i < HIDDEN; i++)
            s += W[(size_t)r * HIDDEN + i] * x[i];
        y[r] = s;
    }
}

#define TRY(expr)                                                                              \
    do {                                                                                       \
        skv_status s_ = (expr);                                                                \
        if (s_ != SKV_OK) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, skv_status_string(s_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

/* Projections of n tokens for one layer: q [n][H][D], k [n][D], w [n][H]. */
static void project(const layer_weights *lw, const float *x, int n, float *q, float *k, float *w)
{
    for (int t = 0; t < n; t++) {
        matvec(lw->wq, x + (size_t)t * HIDDEN, q + (size_t)t * H * D, H * D);
        matvec(lw->wk, x + (size_t)t * HIDDEN, k + (size_t)t * D, D);
        matvec(lw->ww, x + (size_t)t * HIDDEN, w + (size_t)t * H, H);
        for (int h = 0; h < H; h++)
            w[(size_t)t * H + h] *= 1.0f / sqrtf((float)H * D); /* the model's gate scale */
    }
}

/* Selection from the pages vs skv_indexer_topk on the same keys, contiguous; with recall, the
 * share of the dense top-k that the selection `routed` recovers (skv_selection_quality). */
static int same_as_contiguous(skv_context *ctx, skv_kcache *cache, int32_t seq, int layer,
                              const skv_indexer_query *q, const int32_t *idx, int64_t len,
                              const int32_t *routed, double *recall)
{
    uint8_t *keys = malloc((size_t)len * D);
    float *scales = malloc((size_t)len * sizeof(float));
    int32_t *want = malloc((size_t)q->n_tokens * TOPK * sizeof(int32_t));
    TRY(skv_kcache_read(cache, seq, layer, 0, len, keys, scales));
    skv_key_block kb = {len, D, SKV_FP8_E4M3, keys, scales};
    TRY(skv_indexer_topk(ctx, q, &kb, TOPK, want, NULL));
    const int same = memcmp(want, idx, (size_t)q->n_tokens * TOPK * sizeof(int32_t)) == 0;
    if (routed)
        TRY(skv_selection_quality(ctx, q, &kb, routed, TOPK, recall, NULL));
    free(keys), free(scales), free(want);
    return same;
}

/* MISA on one decode token: the 8 routed heads' top-k into routed (timed), and the dial that
 * routes every head, which must give the dense selection idx bit for bit. */
static int misa_step(skv_kcache *cache, int32_t seq, int layer, const skv_indexer_query *q,
                     const int32_t *idx, int32_t *routed, double *ms)
{
    skv_misa_params mp;
    skv_misa_params_init(&mp); /* pooled router, h = 8, blocks of 1024 tokens */
    mp.min_length = 0;         /* route at any length (the default gate runs dense below 1K) */
    const double t0 = now_ms();
    TRY(skv_kcache_misa_topk(cache, seq, layer, q, &mp, TOPK, routed, NULL));
    *ms += now_ms() - t0;
    int32_t *all = malloc((size_t)TOPK * sizeof(int32_t));
    mp.heads = H;
    TRY(skv_kcache_misa_topk(cache, seq, layer, q, &mp, TOPK, all, NULL));
    const int same = memcmp(all, idx, (size_t)TOPK * sizeof(int32_t)) == 0;
    free(all);
    return same;
}

int main(int argc, char **argv)
{
    const int prompt = argc > 1 ? atoi(argv[1]) : 4096;
    const int steps = argc > 2 ? atoi(argv[2]) : 16;
    if (prompt < 1 || steps < 0) {
        fprintf(stderr, "usage: host_decode [prompt_tokens >= 1] [decode_steps >= 0]\n");
        return 2;
    }

    skv_context *ctx;
    TRY(skv_context_create(NULL, &ctx));
    printf("sparsekv %d.%d.%d, %s kernels; %d layers, H=%d D=%d, top-%d, fp8 key cache\n",
           SKV_API_VERSION_MAJOR, SKV_API_VERSION_MINOR, SKV_API_VERSION_PATCH,
           skv_cpu_level_name(skv_context_cpu_flags(ctx)), LAYERS, H, D, TOPK);

    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.n_layers = LAYERS;
    kp.head_dim = D;
    kp.dtype = SKV_FP8_E4M3;
    kp.pool_chunk = 64; /* running key sums per 64 tokens: MISA's router reads block means */
    kp.lane_copy = 1;   /* keys also in the layout MISA's decode kernel reads (+D bytes a token) */
    skv_kcache *cache;
    TRY(skv_kcache_create(ctx, &kp, &cache));
    int32_t seq;
    TRY(skv_kcache_seq_create(cache, &seq));

    layer_weights lw[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        lw[l].wq = malloc(sizeof(float) * H * D * HIDDEN);
        lw[l].wk = malloc(sizeof(float) * D * HIDDEN);
        lw[l].ww = malloc(sizeof(float) * H * HIDDEN);
        for (size_t i = 0; i < (size_t)H * D * HIDDEN; i++)
            lw[l].wq[i] = frand() * 0.1f;
        for (size_t i = 0; i < (size_t)D * HIDDEN; i++)
            lw[l].wk[i] = frand() * 0.1f;
        for (size_t i = 0; i < (size_t)H * HIDDEN; i++)
            lw[l].ww[i] = frand();
    }

    float *x = malloc(sizeof(float) * CHUNK * HIDDEN), *q = malloc(sizeof(float) * CHUNK * H * D);
    float *k = malloc(sizeof(float) * CHUNK * D), *w = malloc(sizeof(float) * CHUNK * H);
    int32_t *pos = malloc(sizeof(int32_t) * CHUNK), *idx = malloc(sizeof(int32_t) * CHUNK * TOPK);
    int32_t *routed = malloc(sizeof(int32_t) * TOPK);
    int mismatches = 0;

    /* prefill, chunk by chunk: each layer appends its keys, then selects for the chunk */
    double t0 = now_ms(), t_select = 0;
    for (int start = 0; start < prompt; start += CHUNK) {
        const int n = prompt - start < CHUNK ? prompt - start : CHUNK;
        for (size_t i = 0; i < (size_t)n * HIDDEN; i++)
            x[i] = frand();
        for (int t = 0; t < n; t++)
            pos[t] = start + t;
        for (int l = 0; l < LAYERS; l++) {
            project(&lw[l], x, n, q, k, w);
            skv_key_block kb = {n, D, SKV_F32, k, NULL}; /* quantised to fp8 on append */
            TRY(skv_kcache_append(cache, seq, l, &kb));
            skv_indexer_query iq = {n, H, D, SKV_F32, q, NULL, w, pos};
            const double ts = now_ms();
            TRY(skv_kcache_topk(cache, seq, l, &iq, TOPK, idx, NULL));
            t_select += now_ms() - ts;
            if (start + n == prompt || start == 0) /* check the first and last chunks */
                mismatches += !same_as_contiguous(ctx, cache, seq, l, &iq, idx, start + n, NULL, NULL);
        }
    }
    printf("prefill %d tokens: %.1f ms (top-k selection %.1f ms over %d layers)\n", prompt,
           now_ms() - t0, t_select, LAYERS);

    /* decode: one token per step */
    for (int step = 0; step < steps; step++) {
        for (int i = 0; i < HIDDEN; i++)
            x[i] = frand();
        pos[0] = prompt + step;
        double sel = 0, sel_misa = 0, recall = 0;
        int ok = 1;
        for (int l = 0; l < LAYERS; l++) {
            project(&lw[l], x, 1, q, k, w);
            skv_key_block kb = {1, D, SKV_F32, k, NULL};
            TRY(skv_kcache_append(cache, seq, l, &kb)); /* the new key first: a token sees itself */
            skv_indexer_query iq = {1, H, D, SKV_F32, q, NULL, w, pos};
            const double ts = now_ms();
            TRY(skv_kcache_topk(cache, seq, l, &iq, TOPK, idx, NULL));
            sel += now_ms() - ts;
            ok &= misa_step(cache, seq, l, &iq, idx, routed, &sel_misa);
            double r;
            ok &= same_as_contiguous(ctx, cache, seq, l, &iq, idx, prompt + step + 1, routed, &r);
            recall += r / LAYERS;
        }
        mismatches += !ok;
        printf("step %3d  context %6d  top-%d over %d layers: %.3f ms (%.3f ms/layer)  %s;"
               "  MISA h=8: %.3f ms, recall %.2f\n", step, prompt + step + 1, TOPK, LAYERS, sel,
               sel / LAYERS, ok ? "matches" : "MISMATCH", sel_misa, recall);
    }

    skv_kcache_stats st = {.struct_size = sizeof st};
    TRY(skv_kcache_get_stats(cache, &st));
    printf("key cache: %lld pages of %lld bytes, %lld bytes/token over %d layers\n",
           (long long)st.pages_in_use, (long long)st.bytes_per_page, (long long)st.bytes_per_token,
           LAYERS);
    printf("%s: every selection %s skv_indexer_topk on contiguous keys (MISA with every head "
           "routed too)\n", mismatches ? "FAILED" : "ok", mismatches ? "did not match" : "matched");

    for (int l = 0; l < LAYERS; l++)
        free(lw[l].wq), free(lw[l].wk), free(lw[l].ww);
    free(x), free(q), free(k), free(w), free(pos), free(idx), free(routed);
    skv_kcache_destroy(cache);
    skv_context_destroy(ctx);
    return mismatches != 0;
}
