/* Reuse plans: construction from a pattern, a frequency or roles; validation; queries. */
#include <string.h>

#include "reuse/reuse_impl.h"

#define MAX_LAYERS 65536

skv_status skv_reuse_check_roles(skv_context *ctx, const uint8_t *full, int32_t n_layers,
                                 const int32_t *segment_starts, int32_t n_segments)
{
    SKV_CHECK(ctx, n_layers >= 1 && n_layers <= MAX_LAYERS);
    SKV_CHECK(ctx, n_segments >= 0 && (n_segments == 0 || segment_starts != NULL));
    if (!full[0]) {
        skv_log(ctx, SKV_LOG_DEBUG, "reuse plan: layer 0 must be Full");
        return SKV_ERR_INVALID_ARG;
    }
    for (int32_t i = 0; i < n_segments; i++) {
        const int32_t s = segment_starts[i];
        if (s < 0 || s >= n_layers || (i > 0 && s <= segment_starts[i - 1])) {
            skv_log(ctx, SKV_LOG_DEBUG, "reuse plan: segment start %d out of order or range", s);
            return SKV_ERR_INVALID_ARG;
        }
        if (!full[s]) {
            skv_log(ctx, SKV_LOG_DEBUG, "reuse plan: layer %d starts a segment and must be Full", s);
            return SKV_ERR_INVALID_ARG;
        }
    }
    return SKV_OK;
}

static skv_status plan_build(skv_context *ctx, const uint8_t *full, int32_t n_layers,
                             const int32_t *segment_starts, int32_t n_segments,
                             skv_reuse_plan **out)
{
    SKV_TRY(skv_reuse_check_roles(ctx, full, n_layers, segment_starts, n_segments));
    skv_reuse_plan *p = skv_alloc_zero(ctx, sizeof *p);
    int32_t *source = skv_alloc(ctx, (size_t)n_layers * 4), *slot = skv_alloc(ctx, (size_t)n_layers * 4);
    if (!p || !source || !slot) {
        skv_free(ctx, p, sizeof *p);
        skv_free(ctx, source, (size_t)n_layers * 4);
        skv_free(ctx, slot, (size_t)n_layers * 4);
        return SKV_ERR_NOMEM;
    }
    int32_t src = 0, n_full = 0;
    for (int32_t l = 0; l < n_layers; l++) {
        if (full[l]) {
            src = l;
            n_full++;
        }
        source[l] = src;
        slot[l] = n_full - 1;
    }
    *p = (skv_reuse_plan){ctx, n_layers, n_full, source, slot};
    *out = p;
    return SKV_OK;
}

skv_status skv_reuse_plan_from_roles(skv_context *ctx, const skv_layer_role *roles,
                                     int32_t n_layers, const int32_t *segment_starts,
                                     int32_t n_segments, skv_reuse_plan **out)
{
    if (out)
        *out = NULL;
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, out != NULL && roles != NULL && n_layers >= 1 && n_layers <= MAX_LAYERS);
    uint8_t *full = skv_alloc(ctx, (size_t)n_layers);
    if (!full)
        return SKV_ERR_NOMEM;
    skv_status st = SKV_OK;
    for (int32_t l = 0; l < n_layers && st == SKV_OK; l++) {
        if (roles[l] != SKV_LAYER_FULL && roles[l] != SKV_LAYER_SHARED)
            st = SKV_ERR_INVALID_ARG;
        full[l] = roles[l] == SKV_LAYER_FULL;
    }
    if (st == SKV_OK)
        st = plan_build(ctx, full, n_layers, segment_starts, n_segments, out);
    skv_free(ctx, full, (size_t)n_layers);
    return st;
}

skv_status skv_reuse_plan_from_string(skv_context *ctx, const char *pattern,
                                      const int32_t *segment_starts, int32_t n_segments,
                                      skv_reuse_plan **out)
{
    if (out)
        *out = NULL;
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, out != NULL && pattern != NULL);
    const size_t n = strnlen(pattern, MAX_LAYERS + 1);
    SKV_CHECK(ctx, n >= 1 && n <= MAX_LAYERS);
    uint8_t *full = skv_alloc(ctx, n);
    if (!full)
        return SKV_ERR_NOMEM;
    skv_status st = SKV_OK;
    for (size_t l = 0; l < n; l++) {
        const char c = pattern[l];
        if (c != 'F' && c != 'f' && c != 'S' && c != 's') {
            skv_log(ctx, SKV_LOG_DEBUG, "reuse pattern: '%c' at %zu is neither F nor S", c, l);
            st = SKV_ERR_INVALID_ARG;
            break;
        }
        full[l] = c == 'F' || c == 'f';
    }
    if (st == SKV_OK)
        st = plan_build(ctx, full, (int32_t)n, segment_starts, n_segments, out);
    skv_free(ctx, full, n);
    return st;
}

skv_status skv_reuse_plan_from_freq(skv_context *ctx, int32_t n_layers, int32_t freq,
                                    int32_t offset, skv_reuse_freq_rule rule,
                                    const int32_t *segment_starts, int32_t n_segments,
                                    skv_reuse_plan **out)
{
    if (out)
        *out = NULL;
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, out != NULL && n_layers >= 1 && n_layers <= MAX_LAYERS && freq >= 1);
    SKV_CHECK(ctx, offset >= 0 && offset < n_layers);
    SKV_CHECK(ctx, rule == SKV_REUSE_FREQ_OFFICIAL || rule == SKV_REUSE_FREQ_PLAIN);
    uint8_t *full = skv_alloc(ctx, (size_t)n_layers);
    if (!full)
        return SKV_ERR_NOMEM;
    for (int32_t l = 0; l < n_layers; l++) {
        const int32_t x = l - offset;
        if (x < 0)
            full[l] = 1;
        else if (rule == SKV_REUSE_FREQ_OFFICIAL)
            full[l] = (x - 1 > 0 ? x - 1 : 0) % freq == 0;
        else
            full[l] = x % freq == 0;
    }
    const skv_status st = plan_build(ctx, full, n_layers, segment_starts, n_segments, out);
    skv_free(ctx, full, (size_t)n_layers);
    return st;
}

void skv_reuse_plan_destroy(skv_reuse_plan *p)
{
    if (!p)
        return;
    skv_context *ctx = p->ctx;
    skv_free(ctx, p->source, (size_t)p->n_layers * 4);
    skv_free(ctx, p->slot, (size_t)p->n_layers * 4);
    skv_free(ctx, p, sizeof *p);
}

int32_t skv_reuse_plan_n_layers(const skv_reuse_plan *p) { return p ? p->n_layers : 0; }
int32_t skv_reuse_plan_n_full(const skv_reuse_plan *p) { return p ? p->n_full : 0; }

skv_status skv_reuse_plan_role(const skv_reuse_plan *p, int32_t layer, skv_layer_role *out)
{
    if (!p || !out || layer < 0 || layer >= p->n_layers)
        return SKV_ERR_INVALID_ARG;
    *out = p->source[layer] == layer ? SKV_LAYER_FULL : SKV_LAYER_SHARED;
    return SKV_OK;
}

skv_status skv_reuse_plan_source(const skv_reuse_plan *p, int32_t layer, int32_t *out)
{
    if (!p || !out || layer < 0 || layer >= p->n_layers)
        return SKV_ERR_INVALID_ARG;
    *out = p->source[layer];
    return SKV_OK;
}

skv_status skv_reuse_plan_full_slot(const skv_reuse_plan *p, int32_t layer, int32_t *out)
{
    if (!p || !out || layer < 0 || layer >= p->n_layers)
        return SKV_ERR_INVALID_ARG;
    *out = p->slot[layer];
    return SKV_OK;
}

skv_status skv_reuse_plan_pattern(const skv_reuse_plan *p, char *buf, size_t size)
{
    if (!p || !buf || size < (size_t)p->n_layers + 1)
        return SKV_ERR_INVALID_ARG;
    for (int32_t l = 0; l < p->n_layers; l++)
        buf[l] = p->source[l] == l ? 'F' : 'S';
    buf[p->n_layers] = '\0';
    return SKV_OK;
}

skv_status skv_reuse_kcache_params(const skv_reuse_plan *p, const skv_kcache_params *base,
                                   skv_kcache_params *out)
{
    if (!p || !base || !out || base->struct_size != sizeof *base)
        return SKV_ERR_INVALID_ARG;
    *out = *base;
    out->n_layers = p->n_full;
    return SKV_OK;
}

skv_status skv_reuse_kcache_params_range(const skv_reuse_plan *p, int32_t first, int32_t n,
                                         const skv_kcache_params *base, skv_kcache_params *out)
{
    if (!p || !base || !out || base->struct_size != sizeof *base || first < 0 || n < 1 ||
        first >= p->n_layers || n > p->n_layers - first || p->source[first] != first)
        return SKV_ERR_INVALID_ARG;
    /* slots grow by one at each Full layer: the range's count is a difference of slots */
    const int32_t last = first + n - 1;
    *out = *base;
    out->n_layers = p->slot[last] - p->slot[first] + 1;
    return SKV_OK;
}

skv_status skv_reuse_plan_range_slot(const skv_reuse_plan *p, int32_t first, int32_t layer,
                                     int32_t *out)
{
    if (!p || !out || first < 0 || layer < first || layer >= p->n_layers ||
        p->source[first] != first)
        return SKV_ERR_INVALID_ARG;
    *out = p->slot[layer] - p->slot[first];
    return SKV_OK;
}
