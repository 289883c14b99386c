/* Which path MISA and HISA took: counters in the context and a debug line per call, so that a
 * length gate that quietly ran the dense indexer shows. */
#include "router/router_impl.h"

static const char *const path_names[4] = {"routed", "dense (below the length gate)",
                                          "dense (the dials cover every key)", "empty"};

skv_status skv_route_note(skv_context *ctx, const char *method, skv_route_path path,
                          int64_t visible, int64_t gate, skv_status st)
{
    if (st != SKV_OK)
        return st;
    ctx->route_paths[path]++;
    ctx->route_last = (int32_t)path;
    skv_log(ctx, SKV_LOG_DEBUG, "%s: %s; %lld visible keys, gate %lld", method, path_names[path],
            (long long)visible, (long long)gate);
    return SKV_OK;
}

skv_status skv_route_get_stats(const skv_context *ctx, skv_route_stats *out)
{
    if (!ctx || !out || out->struct_size != sizeof *out)
        return SKV_ERR_INVALID_ARG;
    for (int i = 0; i < 4; i++)
        out->calls[i] = ctx->route_paths[i];
    out->last_path = ctx->route_last;
    return SKV_OK;
}

skv_status skv_route_reset_stats(skv_context *ctx)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    for (int i = 0; i < 4; i++)
        ctx->route_paths[i] = 0;
    ctx->route_last = -1;
    return SKV_OK;
}
