/* The greedy search with the built-in attention-mass proxy as its loss, in one call. */
#include "core/core.h"
#include "sparsekv/reuse.h"

skv_status skv_reuse_search_mass(skv_context *ctx, const skv_reuse_search_params *p,
                                 const double *mass, char *pattern_out, double *curve_out,
                                 skv_reuse_search_result *result)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, p && p->struct_size == sizeof *p && mass);
    SKV_CHECK(ctx, p->loss == NULL && p->user == NULL); /* the proxy is the loss */
    skv_reuse_mass_loss ml = {mass, p->n_layers};
    skv_reuse_search_params sp = *p;
    sp.loss = skv_reuse_mass_loss_fn;
    sp.user = &ml;
    return skv_reuse_search(ctx, &sp, pattern_out, curve_out, result);
}
