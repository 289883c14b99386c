/* The opt-in int8 path's switch (indexer.h). */
#include "core/core.h"
#include "sparsekv/indexer.h"

skv_status skv_context_set_int8_queries(skv_context *ctx, int on)
{
    if (!ctx || (on != 0 && on != 1))
        return SKV_ERR_INVALID_ARG;
    ctx->int8_queries = on;
    return SKV_OK;
}
