/* Per-step selection across a layer stack: Full layers run the indexer into the selector's
 * buffer, Shared layers are handed that buffer (no copy). Layers come in increasing order, so
 * one buffer serves a step: a Shared layer's source is always the last Full layer selected. */
#include <string.h>

#include "reuse/reuse_impl.h"

struct skv_reuse_selector {
    skv_context *ctx;
    const skv_reuse_plan *plan;
    skv_reuse_selector_params p;
    int32_t *idx; /* [max_tokens][k] */
    size_t idx_bytes;
    int32_t step_tokens; /* 0: no step begun */
    int32_t last_layer;  /* last layer selected this step, -1 none */
    int32_t last_full;   /* the Full layer whose indices idx holds this step, -1 none */
    skv_reuse_selector_stats stats;
};

void skv_reuse_selector_params_init(skv_reuse_selector_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->k = 2048;
    p->max_tokens = 1;
    p->method = SKV_SELECT_DENSE;
    skv_misa_params_init(&p->misa);
    skv_hisa_params_init(&p->hisa);
}

skv_status skv_reuse_selector_create(skv_context *ctx, const skv_reuse_plan *plan,
                                     const skv_reuse_selector_params *p, skv_reuse_selector **out)
{
    if (out)
        *out = NULL;
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, plan && p && out && p->struct_size == sizeof *p);
    SKV_CHECK(ctx, p->k >= 1 && p->k <= SKV_TOPK_MAX_K && p->max_tokens >= 1);
    if (p->method != SKV_SELECT_DENSE && p->method != SKV_SELECT_MISA && p->method != SKV_SELECT_HISA)
        return SKV_ERR_UNSUPPORTED;
    size_t bytes;
    if (!skv_mul_ok((size_t)p->k * 4, (size_t)p->max_tokens, &bytes))
        return SKV_ERR_NOMEM;
    skv_reuse_selector *s = skv_alloc_zero(ctx, sizeof *s);
    int32_t *idx = skv_alloc(ctx, bytes);
    if (!s || !idx) {
        skv_free(ctx, s, sizeof *s);
        skv_free(ctx, idx, bytes);
        return SKV_ERR_NOMEM;
    }
    *s = (skv_reuse_selector){.ctx = ctx, .plan = plan, .p = *p, .idx = idx, .idx_bytes = bytes,
                              .last_layer = -1, .last_full = -1};
    s->stats.struct_size = sizeof s->stats;
    *out = s;
    return SKV_OK;
}

void skv_reuse_selector_destroy(skv_reuse_selector *s)
{
    if (!s)
        return;
    skv_context *ctx = s->ctx;
    skv_free(ctx, s->idx, s->idx_bytes);
    skv_free(ctx, s, sizeof *s);
}

skv_status skv_reuse_begin_step(skv_reuse_selector *s, int32_t n_tokens)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, n_tokens >= 1 && n_tokens <= s->p.max_tokens);
    s->step_tokens = n_tokens;
    s->last_layer = -1;
    s->last_full = -1;
    s->stats.steps++;
    return SKV_OK;
}

/* Checks common to both forms; for a Shared layer also serves it (returns 1). */
static skv_status select_begin(skv_reuse_selector *s, int32_t layer, const skv_indexer_query *q,
                               const int32_t **out_idx, int *served)
{
    *served = 0;
    SKV_CHECK(s->ctx, out_idx != NULL);
    SKV_CHECK(s->ctx, layer >= 0 && layer < s->plan->n_layers);
    if (s->step_tokens == 0)
        return SKV_ERR_STATE;
    SKV_CHECK(s->ctx, layer > s->last_layer);
    const int32_t src = s->plan->source[layer];
    if (src != layer) {
        if (s->last_full != src)
            return SKV_ERR_STATE;
        s->last_layer = layer;
        s->stats.reused++;
        *out_idx = s->idx;
        *served = 1;
        return SKV_OK;
    }
    SKV_CHECK(s->ctx, q != NULL && q->n_tokens == s->step_tokens);
    return SKV_OK;
}

static void select_done(skv_reuse_selector *s, int32_t layer, const int32_t **out_idx)
{
    s->last_layer = layer;
    s->last_full = layer;
    s->stats.indexer_runs++;
    *out_idx = s->idx;
}

skv_status skv_reuse_select(skv_reuse_selector *s, int32_t layer, const skv_indexer_query *q,
                            const skv_key_block *keys, const int32_t **out_idx)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    int served;
    SKV_TRY(select_begin(s, layer, q, out_idx, &served));
    if (served)
        return SKV_OK;
    SKV_CHECK(s->ctx, keys != NULL);
    switch (s->p.method) {
    case SKV_SELECT_MISA: SKV_TRY(skv_misa_topk(s->ctx, q, keys, NULL, &s->p.misa, s->p.k, s->idx, NULL)); break;
    case SKV_SELECT_HISA: SKV_TRY(skv_hisa_topk(s->ctx, q, keys, NULL, &s->p.hisa, s->p.k, s->idx, NULL)); break;
    default: SKV_TRY(skv_indexer_topk(s->ctx, q, keys, s->p.k, s->idx, NULL)); break;
    }
    select_done(s, layer, out_idx);
    return SKV_OK;
}

skv_status skv_reuse_select_kcache(skv_reuse_selector *s, int32_t layer,
                                   const skv_indexer_query *q, skv_kcache *cache, int32_t seq,
                                   const int32_t **out_idx)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    int served;
    SKV_TRY(select_begin(s, layer, q, out_idx, &served));
    if (served)
        return SKV_OK;
    SKV_CHECK(s->ctx, cache != NULL);
    const int32_t slot = s->plan->slot[layer];
    switch (s->p.method) {
    case SKV_SELECT_MISA: SKV_TRY(skv_kcache_misa_topk(cache, seq, slot, q, &s->p.misa, s->p.k, s->idx, NULL)); break;
    case SKV_SELECT_HISA: SKV_TRY(skv_kcache_hisa_topk(cache, seq, slot, q, &s->p.hisa, s->p.k, s->idx, NULL)); break;
    default: SKV_TRY(skv_kcache_topk(cache, seq, slot, q, s->p.k, s->idx, NULL)); break;
    }
    select_done(s, layer, out_idx);
    return SKV_OK;
}

skv_status skv_reuse_selector_get_stats(const skv_reuse_selector *s, skv_reuse_selector_stats *out)
{
    if (!s || !out || out->struct_size < sizeof *out)
        return SKV_ERR_INVALID_ARG;
    *out = s->stats;
    return SKV_OK;
}
