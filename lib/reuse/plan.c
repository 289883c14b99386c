/* Reuse plans: construction from a pattern, a frequency or roles; validation; queries. */
#include <string.h>

#include "reuse/reuse_impl.h"

#define MAX_LAYERS 65536

skv_status skv_reuse_check_roles_fn(skv_context *ctx, skv_reuse_full_fn is_full, const void *src,
                                    int32_t n_layers, const int32_t *segment_starts,
                                    int32_t n_segments)
{
    SKV_CHECK(ctx, n_layers >= 1 && n_layers <= MAX_LAYERS);
    SKV_CHECK(ctx, n_segments >= 0 && (n_segments == 0 || segment_starts != NULL));
    if (!is_full(src, 0)) {
        skv_log(ctx, SKV_LOG_DEBUG, "reuse plan: layer 0 must be Full");
        return SKV_ERR_INVALID_ARG;
    }
    for (int32_t i = 0; i < n_segments; i++) {
        const int32_t s = segment_starts[i];
        if (s < 0 || s >= n_layers || (i > 0 && s <= segment_starts[i - 1])) {
            skv_log(ctx, SKV_LOG_DEBUG, "reuse plan: segment start %d out of order or range", s);
            return SKV_ERR_INVALID_ARG;
        }
        if (!is_full(src, s)) {
            skv_log(ctx, SKV_LOG_DEBUG, "reuse plan: layer %d starts a segment and must be Full", s);
            return SKV_ERR_INVALID_ARG;
        }
    }
    return SKV_OK;
}

/* The builders' sources of roles: an array of roles, a pattern string, a frequency rule. */
static int full_of_role(const void *src, int32_t l)
{
    return ((const skv_layer_role *)src)[l] == SKV_LAYER_FULL;
}

static int full_of_char(const void *src, int32_t l)
{
    const char c = ((const char *)src)[l];
    return c == 'F' || c == 'f';
}

typedef struct freq_rule {
    int32_t freq, offset;
    skv_reuse_freq_rule rule;
} freq_rule;

static int full_of_freq(const void *src, int32_t l)
{
    const freq_rule *f = src;
    const int32_t x = l - f->offset;
    if (x < 0)
        return 1;
    if (f->rule == SKV_REUSE_FREQ_OFFICIAL)
        return (x - 1 > 0 ? x - 1 : 0) % f->freq == 0;
    return x % f->freq == 0;
}

/* Every argument is checked before the first allocation: an invalid call is INVALID_ARG even
 * when memory runs out. */
static skv_status plan_build(skv_context *ctx, skv_reuse_full_fn is_full, const void *src,
                             int32_t n_layers, const int32_t *segment_starts, int32_t n_segments,
                             skv_reuse_plan **out)
{
    SKV_TRY(skv_reuse_check_roles_fn(ctx, is_full, src, n_layers, segment_starts, n_segments));
    skv_reuse_plan *p = skv_alloc_zero(ctx, sizeof *p);
    int32_t *source = skv_alloc(ctx, (size_t)n_layers * 4), *slot = skv_alloc(ctx, (size_t)n_layers * 4);
    if (!p || !source || !slot) {
        skv_free(ctx, p, sizeof *p);
        skv_free(ctx, source, (size_t)n_layers * 4);
        skv_free(ctx, slot, (size_t)n_layers * 4);
        return SKV_ERR_NOMEM;
    }
    int32_t src_l = 0, n_full = 0;
    for (int32_t l = 0; l < n_layers; l++) {
        if (is_full(src, l)) {
            src_l = l;
            n_full++;
        }
        source[l] = src_l;
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
    for (int32_t l = 0; l < n_layers; l++)
        SKV_CHECK(ctx, roles[l] == SKV_LAYER_FULL || roles[l] == SKV_LAYER_SHARED);
    return plan_build(ctx, full_of_role, roles, n_layers, segment_starts, n_segments, out);
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
    for (size_t l = 0; l < n; l++) {
        const char c = pattern[l];
        if (c != 'F' && c != 'f' && c != 'S' && c != 's') {
            skv_log(ctx, SKV_LOG_DEBUG, "reuse pattern: '%c' at %zu is neither F nor S", c, l);
            return SKV_ERR_INVALID_ARG;
        }
    }
    return plan_build(ctx, full_of_char, pattern, (int32_t)n, segment_starts, n_segments, out);
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
    const freq_rule f = {freq, offset, rule};
    return plan_build(ctx, full_of_freq, &f, n_layers, segment_starts, n_segments, out);
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
