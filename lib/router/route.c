/* The MISA router: a score per indexer head for each query token (pooled block keys, summed
 * or their largest, query norm, or the token's own key), and the top-h heads. Its cost is
 * H * D per block per token (the kernel table's head_dots), against H * D per key for the
 * indexer it steers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "router/router_impl.h"

void skv_misa_params_init(skv_misa_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->route = SKV_ROUTE_POOLED;
    p->heads = 8;
    p->block = 1024;
    p->candidates = 0;
    p->min_length = -1;
}

/* Heads whose query rows are dequantised together, then written down their columns. */
enum { Q_GROUP = 16 };

/* Dequantised q of token t, heads [h0, h1), transposed: out[d * H + h] (so that the dot
 * products of every head with one vector run as independent sums over the heads, which
 * vectorise). The kernel table converts Q_GROUP heads' rows into rows (Q_GROUP * head_dim
 * floats), which cols16 then writes down their columns (a run of heads per store). */
static void q_rows_t(const skv_kernels *kern, const skv_indexer_query *q, int32_t t, int32_t h0,
                     int32_t h1, float *rows, float *out)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    const size_t esize = skv_dtype_size(q->dtype);
    for (int32_t g = h0; g < h1; g += Q_GROUP) {
        const int32_t n = h1 - g < Q_GROUP ? h1 - g : Q_GROUP;
        for (int32_t j = 0; j < n; j++) {
            const size_t i = (size_t)t * H + g + j;
            const void *src = (const uint8_t *)q->q + i * D * esize;
            float *row = rows + (size_t)j * D;
            if (q->dtype == SKV_F32) {
                memcpy(row, src, (size_t)D * 4);
            } else if (q->dtype == SKV_BF16) {
                kern->bf16_to_f32(src, row, D);
            } else if (q->dtype == SKV_F16) {
                kern->f16_to_f32(src, row, D);
            } else {
                kern->fp8_to_f32(src, row, D);
                const float s = q->q_scale ? q->q_scale[i] : 1.0f;
                for (int32_t d = 0; d < D; d++)
                    row[d] *= s;
            }
        }
        kern->cols16(rows, n, D, out + g, H);
    }
}

static float relu(float x) { return x > 0 || x != x ? x : 0.0f; }

/* Whether the mode scores heads on pooled block means (and needs the pooled sums). */
static int on_blocks(skv_route_mode mode)
{
    return mode == SKV_ROUTE_POOLED || mode == SKV_ROUTE_POOLED_MAX;
}

/* One block's terms folded into the heads' scores: summed, or the larger kept (a NaN stays);
 * the mode tested once, so that either loop vectorises. */
static void fold_terms(skv_route_mode mode, float *restrict E, const float *restrict terms, int32_t H)
{
    if (mode == SKV_ROUTE_POOLED) {
        for (int32_t h = 0; h < H; h++)
            E[h] += terms[h];
    } else {
        for (int32_t h = 0; h < H; h++)
            E[h] = terms[h] > E[h] || terms[h] != terms[h] ? terms[h] : E[h];
    }
}

/* Blocks whose means go through head_dots together (its registers hold four key vectors). */
enum { ROUTE_BATCH = 4 };

/* A decode token is routed over the threads only when this many of its blocks' means must be
 * pooled from chunk sums; otherwise on the calling thread. On the development machine (fp8,
 * H = 64, D = 128), pooling every block, one thread routed 16 / 32 / 64 / 128 blocks in 9.6 /
 * 14 / 23 / 46 us, two threads in 11.3 / 13.7 / 19 / 29 (a parallel region costs 3-6 us to
 * fork and join). With the means remembered (a key cache's memo) only the head dot products
 * are left, and one thread was as fast or faster up to 1024 blocks: at 64 / 128 / 256 blocks
 * 13 / 23 / 54 us against 28 / 46 / 103 on two, just after a decode step's scoring pass. */
enum { ROUTE_PARALLEL_MIN_BLOCKS = 48 };

/* A thread's router scratch after the transposed query: the block means, a scratch row and
 * the dot products of a batch; before them, q_rows_t's rows. */
static size_t tmp_floats(int32_t H, int32_t D)
{
    const size_t terms = (size_t)(ROUTE_BATCH + 1) * D + (size_t)ROUTE_BATCH * H;
    return terms > (size_t)Q_GROUP * D ? terms : (size_t)Q_GROUP * D;
}

/* Means of the first n blocks, whole for every token of a call: the first `have` known already
 * (remembered by the key cache), the others computed once per call, where each token (and
 * each decode step) would otherwise read all their chunk sums again. */
typedef struct shared_means { float *mean; int64_t have, n; } shared_means;

/* The shared means still missing, spread over the threads of the enclosing parallel region.
 * tmp: head_dim floats. */
static void fill_shared(const skv_kernels *kern, const skv_key_src *src, int32_t block,
                        const shared_means *sh, float *tmp)
{
#pragma omp for schedule(static)
    for (int64_t b = sh->have; b < sh->n; b++)
        skv_pool_mean(kern, src, b * block, (b + 1) * block, sh->mean + (size_t)b * src->head_dim, tmp);
}

/* The pooled router's terms of blocks [b, b + n) (n <= ROUTE_BATCH) for token t:
 * out[i * H + h] = |w[h]| * relu(q_h . mean_{b+i}), each block's mean over the keys token t
 * sees (from sh where it has them: the same bits). tmp: tmp_floats. */
static void block_terms(const skv_kernels *kern, const skv_indexer_query *q, int32_t t,
                        const skv_key_src *src, int32_t block, int64_t b, int32_t n,
                        const shared_means *sh, const float *qt, float *tmp, float *out)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    const int64_t vis = skv_visible(q, t, src->n_keys);
    float wbuf[4096];
    const float *w = skv_query_weights(q, t, wbuf);
    float *scratch = tmp + (size_t)ROUTE_BATCH * D;
    const float *means = tmp;
    if (b + n <= sh->n) {
        means = sh->mean + (size_t)b * D;
    } else {
        for (int32_t i = 0; i < n; i++) {
            const int64_t b0 = (b + i) * block, end = b0 + block < vis ? b0 + block : vis;
            if (b + i < sh->n)
                memcpy(tmp + (size_t)i * D, sh->mean + (size_t)(b + i) * D, (size_t)D * 4);
            else
                skv_pool_mean(kern, src, b0, end, tmp + (size_t)i * D, scratch);
        }
    }
    kern->head_dots(qt, means, n, H, D, out);
    for (int32_t i = 0; i < n; i++)
        for (int32_t h = 0; h < H; h++)
            out[(size_t)i * H + h] = fabsf(w[h]) * relu(out[(size_t)i * H + h]);
}

/* Router scores E[h] of token t. qbuf: n_heads * head_dim floats; tmp: tmp_floats. */
static void route_scores(const skv_kernels *kern, const skv_indexer_query *q, int32_t t,
                         const skv_key_src *src, skv_route_mode mode, int32_t block,
                         const shared_means *sh, float *qbuf, float *tmp, float *E)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    q_rows_t(kern, q, t, 0, H, tmp, qbuf);
    float wbuf[4096];
    const float *w = skv_query_weights(q, t, wbuf);
    float *dots = tmp + (size_t)(ROUTE_BATCH + 1) * D;
    if (mode == SKV_ROUTE_QNORM) {
        memset(E, 0, (size_t)H * 4);
        for (int32_t d = 0; d < D; d++)
            for (int32_t h = 0; h < H; h++)
                E[h] += qbuf[(size_t)d * H + h] * qbuf[(size_t)d * H + h];
        for (int32_t h = 0; h < H; h++)
            E[h] = sqrtf(E[h]);
        return;
    }
    memset(E, 0, (size_t)H * 4);
    if (mode == SKV_ROUTE_OWN_KEY) {
        const int64_t p = q->positions ? q->positions[t] : src->n_keys - 1;
        if (p < 0 || p >= src->n_keys)
            return;
        skv_key_row_f32(kern, src, p, tmp);
        kern->head_dots(qbuf, tmp, 1, H, D, dots);
        for (int32_t h = 0; h < H; h++)
            E[h] = w[h] * relu(dots[h]);
        return;
    }
    const int64_t vis = skv_visible(q, t, src->n_keys), nb = (vis + block - 1) / block;
    for (int64_t b = 0; b < nb; b += ROUTE_BATCH) {
        const int32_t n = nb - b < ROUTE_BATCH ? (int32_t)(nb - b) : ROUTE_BATCH;
        block_terms(kern, q, t, src, block, b, n, sh, qbuf, tmp, dots);
        for (int32_t i = 0; i < n; i++) /* in block order */
            fold_terms(mode, E, dots + (size_t)i * H, H);
    }
}

typedef struct ranked_head { uint32_t key; int32_t h; } ranked_head;

/* The top h of E[0..H) (descending, ties to the lower head, NaN last) into heads: each head
 * inserted into the ranked best h so far (a few dozen compares, where sorting all H cost µs). */
static void top_heads(const float *E, int32_t H, int32_t h, ranked_head *best, int32_t *heads)
{
    int32_t n = 0;
    for (int32_t i = 0; i < H; i++) {
        const uint32_t key = skv_score_key(E[i]);
        if (n == h && key <= best[h - 1].key)
            continue; /* a tie goes to the lower head, kept already */
        int32_t j = n < h ? n++ : h - 1;
        for (; j > 0 && best[j - 1].key < key; j--)
            best[j] = best[j - 1];
        best[j] = (ranked_head){key, i};
    }
    for (int32_t i = 0; i < h; i++)
        heads[i] = best[i].h;
}

/* One token's pooled-router terms for every block, a share of them per thread of the
 * enclosing parallel region (all of them outside one). */
typedef struct block_share {
    const skv_kernels *kern;
    const skv_indexer_query *q;
    int32_t t;
    const skv_key_src *src;
    int32_t block;
    int64_t nb;
    const shared_means *sh;
    uint8_t *ws; /* per_thread bytes a thread */
    size_t per_thread;
    float *terms; /* [nb][H] */
} block_share;

static void block_share_terms(const block_share *s)
{
    const int32_t H = s->q->n_heads, D = s->q->head_dim;
#ifdef _OPENMP
    float *mine = (float *)(s->ws + s->per_thread * (size_t)omp_get_thread_num());
#else
    float *mine = (float *)s->ws;
#endif
    /* each thread dequantises the whole query for itself: cheaper than a barrier and than
       moving half of it between cores */
    float *tmp = mine + (size_t)H * D;
    q_rows_t(s->kern, s->q, s->t, 0, H, tmp, mine);
    fill_shared(s->kern, s->src, s->block, s->sh, tmp);
    const int64_t batches = (s->nb + ROUTE_BATCH - 1) / ROUTE_BATCH;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batches; i++) {
        const int64_t b = i * ROUTE_BATCH;
        block_terms(s->kern, s->q, s->t, s->src, s->block, b,
                    s->nb - b < ROUTE_BATCH ? (int32_t)(s->nb - b) : ROUTE_BATCH, s->sh, mine, tmp,
                    s->terms + (size_t)b * H);
    }
}

/* The pooled router for fewer tokens than threads (decode): each token's blocks are spread over
 * the threads, their terms folded afterwards in block order, so the scores are those of the
 * token-parallel path for any thread count. */
static void route_by_blocks(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                            const skv_misa_params *p, shared_means *sh, uint8_t *ws,
                            size_t per_thread, int32_t *out_heads, float *out_scores)
{
    const int32_t H = q->n_heads, D = q->head_dim;
    const int nth = skv_threads(ctx);
    float *terms = (float *)(ws + per_thread * (size_t)nth); /* [blocks][H], sized by the caller */
    /* thread 0's area as in skv_route_src: q | tmp | E (H) | ranks (H) */
    float *E = (float *)ws + (size_t)H * D + tmp_floats(H, D);
    ranked_head *rk = (ranked_head *)(E + H);
    for (int32_t t = 0; t < q->n_tokens; t++) {
        const int64_t vis = skv_visible(q, t, src->n_keys), nb = (vis + p->block - 1) / p->block;
        const block_share bs = {&ctx->kern, q, t, src, p->block, nb, sh, ws, per_thread, terms};
        const int64_t to_pool = nb - (sh->have < nb ? sh->have : nb);
        if (nth > 1 && to_pool >= ROUTE_PARALLEL_MIN_BLOCKS) {
#pragma omp parallel num_threads(nth)
            block_share_terms(&bs);
        } else {
            block_share_terms(&bs); /* outside any region: a serial one costs 2 us of gomp */
        }
        sh->have = sh->n; /* filled by the first token's region */
        memset(E, 0, (size_t)H * 4);
        for (int64_t b = 0; b < nb; b++)
            fold_terms(p->route, E, terms + (size_t)b * H, H);
        if (out_scores)
            memcpy(out_scores + (size_t)t * H, E, (size_t)H * 4);
        top_heads(E, H, p->heads, rk, out_heads + (size_t)t * p->heads);
    }
}

skv_status skv_route_src(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                         const skv_misa_params *p, int32_t *out_heads, float *out_scores)
{
    const int32_t T = q->n_tokens, H = q->n_heads, D = q->head_dim, h = p->heads;
    if (on_blocks(p->route) && src->pool_chunk < 1)
        return SKV_ERR_STATE;
    const int nth = skv_threads(ctx);
    const size_t per_thread = ((size_t)H * D + tmp_floats(H, D) + (size_t)H) * 4 + (size_t)H * sizeof(ranked_head);
    const int by_blocks = on_blocks(p->route) && T < nth;
    const size_t terms = by_blocks ? (size_t)((src->n_keys + p->block - 1) / p->block) * H * 4 : 0;
    /* the blocks every token sees whole: their means are shared by the tokens, and a key cache
       remembers them across calls (its keys only grow at the end: a decode step computes just
       the block it completed, if any) */
    int64_t whole = 0;
    if (on_blocks(p->route) && T > 0) {
        whole = INT64_MAX;
        for (int32_t t = 0; t < T; t++) {
            const int64_t w = skv_visible(q, t, src->n_keys) / p->block;
            whole = w < whole ? w : whole;
        }
    }
    skv_block_memo *memo = whole > 0 ? src->memo : NULL;
    if (memo && src->memo_frozen && (memo->block != p->block || memo->valid < whole))
        memo = NULL; /* a slice: the memo read only when it has every shared block */
    if (memo && !src->memo_frozen && !skv_block_memo_reserve(ctx, memo, whole, p->block, D))
        return SKV_ERR_NOMEM;
    if (!memo && T == 1)
        whole = 0; /* one token, nothing remembered: each block's mean is read once anyway */
    const size_t shared_b = memo ? 0 : skv_round_up((size_t)whole * D * 4, 64);
    uint8_t *ws = skv_workspace_aux(ctx, 0, shared_b + per_thread * (size_t)nth + terms);
    if (!ws)
        return SKV_ERR_NOMEM;
    shared_means sh = {(float *)ws, 0, whole};
    if (memo)
        sh.mean = memo->mean, sh.have = memo->valid < whole ? memo->valid : whole;
    ws += shared_b;
    if (by_blocks) {
        route_by_blocks(ctx, q, src, p, &sh, ws, per_thread, out_heads, out_scores);
    } else {
#pragma omp parallel num_threads(nth) if (nth > 1 && T > 1)
        {
#ifdef _OPENMP
            uint8_t *mine = ws + per_thread * (size_t)omp_get_thread_num();
#else
            uint8_t *mine = ws;
#endif
            float *qbuf = (float *)mine, *tmp = qbuf + (size_t)H * D, *E = tmp + tmp_floats(H, D);
            ranked_head *rk = (ranked_head *)(E + H);
            fill_shared(&ctx->kern, src, p->block, &sh, tmp);
#pragma omp for schedule(dynamic, 1)
            for (int32_t t = 0; t < T; t++) {
                route_scores(&ctx->kern, q, t, src, p->route, p->block, &sh, qbuf, tmp, E);
                if (out_scores)
                    memcpy(out_scores + (size_t)t * H, E, (size_t)H * 4);
                top_heads(E, H, h, rk, out_heads + (size_t)t * h);
            }
        }
    }
    if (memo && whole > memo->valid)
        memo->valid = whole;
    return SKV_OK;
}

skv_status skv_misa_check(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                          const skv_misa_params *p)
{
    SKV_CHECK(ctx, p != NULL && p->struct_size == sizeof *p);
    SKV_TRY(skv_indexer_check_query(ctx, q, src->head_dim, src->dtype));
    SKV_CHECK(ctx, p->heads >= 1 && p->heads <= q->n_heads);
    SKV_CHECK(ctx, on_blocks(p->route) || p->route == SKV_ROUTE_QNORM || p->route == SKV_ROUTE_OWN_KEY);
    SKV_CHECK(ctx, p->block >= 1 && p->candidates >= SKV_CANDIDATES_4K && p->min_length >= -1);
    if (on_blocks(p->route) && src->pool_chunk >= 1)
        SKV_CHECK(ctx, p->block % src->pool_chunk == 0);
    return SKV_OK;
}

skv_status skv_route_heads(skv_context *ctx, const skv_indexer_query *q,
                           const skv_key_block *keys, const skv_pooled_keys *pooled,
                           const skv_misa_params *p, int32_t *out_heads, float *out_scores)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    skv_key_src src;
    SKV_TRY(skv_src_with_pool(ctx, keys, pooled, &src));
    SKV_TRY(skv_misa_check(ctx, q, &src, p));
    SKV_CHECK(ctx, !on_blocks(p->route) || pooled != NULL);
    SKV_CHECK(ctx, out_heads != NULL || q->n_tokens == 0);
    return skv_route_src(ctx, q, &src, p, out_heads, out_scores);
}

skv_status skv_route_memo_fill(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                               const skv_misa_params *p)
{
    skv_block_memo *memo = src->memo;
    if (!on_blocks(p->route) || !memo || src->pool_chunk < 1)
        return SKV_OK;
    /* the whole blocks of the token that sees the most: every slice's shared blocks */
    const int64_t whole = skv_max_visible(q, src->n_keys) / p->block;
    if (whole == 0)
        return SKV_OK;
    if (!skv_block_memo_reserve(ctx, memo, whole, p->block, q->head_dim))
        return SKV_ERR_NOMEM;
    float *tmp = skv_workspace_aux(ctx, 0, (size_t)q->head_dim * 4);
    if (!tmp)
        return SKV_ERR_NOMEM;
    for (int64_t b = memo->valid; b < whole; b++)
        skv_pool_mean(&ctx->kern, src, b * p->block, (b + 1) * p->block,
                      memo->mean + (size_t)b * q->head_dim, tmp);
    if (whole > memo->valid)
        memo->valid = whole;
    return SKV_OK;
}
