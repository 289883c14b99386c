/* Reserving page memory up front: engines size their KV pool once at start-up and then write
 * at memory speed. The reservation fills the store's pool of spare page buffers (the pool every
 * new page is taken from first) and touches every buffer on the context's threads, so a first
 * prefill pays neither the allocator nor the first-touch page faults; the pool keeps that many
 * buffers from then on, as pages are freed and reused. */
#include "store/store_impl.h"

skv_status skv_store_reserve(skv_store *s, int64_t n_pages)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, n_pages >= 0 && n_pages <= INT32_MAX);
    const int32_t want = (int32_t)n_pages, had = s->n_spare;
    if (want > s->cap_spare) {
        uint8_t **sp = skv_alloc(s->ctx, (size_t)want * sizeof *sp);
        if (!sp)
            return SKV_ERR_NOMEM;
        if (s->n_spare)
            memcpy(sp, s->spare, (size_t)s->n_spare * sizeof *sp);
        skv_free(s->ctx, s->spare, (size_t)s->cap_spare * sizeof *s->spare);
        s->spare = sp;
        s->cap_spare = want;
    }
    while (s->n_spare < want) {
        uint8_t *m = skv_alloc(s->ctx, s->page_bytes);
        if (!m) {
            while (s->n_spare > had)
                skv_free(s->ctx, s->spare[--s->n_spare], s->page_bytes);
            return SKV_ERR_NOMEM;
        }
        s->spare[s->n_spare++] = m;
    }
    /* fault the new buffers in where the store's parallel loops will write them */
    const int threads = skv_threads(s->ctx);
    uint8_t **sp = s->spare;
    const size_t bytes = s->page_bytes;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int32_t i = had; i < want; i++)
        memset(sp[i], 0, bytes);
    if (s->spare_keep < want)
        s->spare_keep = want;
    return SKV_OK;
}
