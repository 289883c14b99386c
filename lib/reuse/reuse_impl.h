/* Internal: the reuse plan's representation, shared by the plan, selector and search code. */
#ifndef SKV_REUSE_IMPL_H
#define SKV_REUSE_IMPL_H

#include "core/core.h"
#include "sparsekv/reuse.h"

struct skv_reuse_plan {
    skv_context *ctx;
    int32_t n_layers, n_full;
    int32_t *source; /* [n_layers]: the Full layer each layer reads (itself when Full) */
    int32_t *slot;   /* [n_layers]: index among Full layers of source[l] */
};

/* Whether layer `layer` is Full, read from a builder's source of roles. */
typedef int (*skv_reuse_full_fn)(const void *src, int32_t layer);

/* Checks segment starts and that layer 0 and every segment start are Full (is_full(src, l)).
 * Allocates nothing. Logs the reason at DEBUG level. */
skv_status skv_reuse_check_roles_fn(skv_context *ctx, skv_reuse_full_fn is_full, const void *src,
                                    int32_t n_layers, const int32_t *segment_starts,
                                    int32_t n_segments);

#endif
