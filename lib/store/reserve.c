/* Page memory: slabs, the pool of free page buffers, reservation and trimming.
 *
 * Page buffers are carved from large slabs (one allocation through the context allocator per
 * slab, never one per page), and every free buffer waits in the pool (s->spare) until a new
 * page takes it: freed pages are reused at once, their memory already faulted in. Engines size
 * their KV pool once at start-up and then write at memory speed: skv_store_reserve fills the
 * pool up front and touches it on the context's threads, so a first prefill pays neither the
 * allocator nor first-touch page faults. With SKV_STORE_HUGEPAGES slabs are aligned to 2 MiB
 * and advised as transparent huge pages (best effort: the host's setting decides). The pool
 * keeps what it holds until skv_store_trim hands whole free slabs back, or the cold tier parks
 * pages (it trims down to the reservation so that parking frees host memory). */
#if !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise's MADV_HUGEPAGE */
#endif
#include <stdlib.h>
#include <sys/mman.h>

#include "store/store_impl.h"

#define HUGE_BYTES ((size_t)2 << 20)
#define SLAB_MIN_PAGES 64
#define SLAB_MAX_GROWTH ((int64_t)1 << 14) /* pages a slab adds beyond the request */

/* Room for n buffers in the pool array (contents kept). NOMEM changes nothing. */
static skv_status pool_room(skv_store *s, int64_t n)
{
    if (n <= s->cap_spare)
        return SKV_OK;
    if (n > INT32_MAX)
        return SKV_ERR_CAPACITY;
    int64_t cap = s->cap_spare ? s->cap_spare : 64;
    while (cap < n)
        cap *= 2;
    cap = cap > INT32_MAX ? INT32_MAX : cap;
    uint8_t **sp = skv_alloc(s->ctx, (size_t)cap * sizeof *sp);
    if (!sp)
        return SKV_ERR_NOMEM;
    if (s->n_spare)
        memcpy(sp, s->spare, (size_t)s->n_spare * sizeof *sp);
    skv_free(s->ctx, s->spare, (size_t)s->cap_spare * sizeof *s->spare);
    s->spare = sp;
    s->cap_spare = (int32_t)cap;
    return SKV_OK;
}

/* One new slab of n buffers, all into the pool (lowest address handed out first). */
static skv_status slab_add(skv_store *s, int64_t n)
{
    skv_context *ctx = s->ctx;
    const int huge = (s->p.flags & SKV_STORE_HUGEPAGES) != 0;
    const size_t bytes = (size_t)n * s->page_bytes;
    if (n > INT32_MAX || bytes / s->page_bytes != (size_t)n)
        return SKV_ERR_CAPACITY;
    const size_t alloc = bytes + (huge ? HUGE_BYTES : 0);
    if (alloc < bytes)
        return SKV_ERR_CAPACITY;
    SKV_TRY(pool_room(s, (int64_t)s->n_bufs + n));
    if (s->n_slabs == s->cap_slabs) {
        const int32_t cap = s->cap_slabs ? 2 * s->cap_slabs : 8;
        slab *sl = skv_alloc(ctx, (size_t)cap * sizeof *sl);
        if (!sl)
            return SKV_ERR_NOMEM;
        if (s->n_slabs)
            memcpy(sl, s->slabs, (size_t)s->n_slabs * sizeof *sl);
        skv_free(ctx, s->slabs, (size_t)s->cap_slabs * sizeof *s->slabs);
        s->slabs = sl;
        s->cap_slabs = cap;
    }
    uint8_t *base = skv_alloc(ctx, alloc);
    if (!base)
        return SKV_ERR_NOMEM;
    uint8_t *mem = base;
    if (huge) {
        mem = (uint8_t *)(((uintptr_t)base + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
        if (bytes >= HUGE_BYTES)
            (void)madvise(mem, bytes / HUGE_BYTES * HUGE_BYTES, MADV_HUGEPAGE); /* advice only */
    }
    s->slabs[s->n_slabs++] = (slab){base, alloc, mem, (int32_t)n};
    for (int64_t i = n - 1; i >= 0; i--)
        s->spare[s->n_spare++] = mem + (size_t)i * s->page_bytes;
    s->n_bufs += (int32_t)n;
    return SKV_OK;
}

skv_status pool_fill(skv_store *s, int64_t n)
{
    if (s->n_spare >= n)
        return SKV_OK;
    if (n > INT32_MAX)
        return SKV_ERR_CAPACITY;
    const int64_t need = n - s->n_spare;
    /* geometric growth so that many small appends make few slabs */
    int64_t grow = s->n_bufs / 2;
    grow = grow < SLAB_MIN_PAGES ? SLAB_MIN_PAGES : grow > SLAB_MAX_GROWTH ? SLAB_MAX_GROWTH : grow;
    if (need < grow && (int64_t)s->n_bufs + grow <= INT32_MAX)
        if (slab_add(s, grow) == SKV_OK)
            return SKV_OK;
    return slab_add(s, need); /* exactly the request, the last resort */
}

void spare_put(skv_store *s, uint8_t *mem)
{
    s->spare[s->n_spare++] = mem; /* the pool has room for every buffer */
}

static int slab_cmp(const void *a, const void *b)
{
    const uintptr_t x = (uintptr_t)((const slab *)a)->mem, y = (uintptr_t)((const slab *)b)->mem;
    return x < y ? -1 : x > y;
}

/* The slab holding buffer m (slabs sorted by address). */
static int32_t slab_of(const skv_store *s, const uint8_t *m)
{
    int32_t lo = 0, hi = s->n_slabs - 1;
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo + 1) / 2;
        if ((uintptr_t)s->slabs[mid].mem <= (uintptr_t)m)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

int64_t pool_trim(skv_store *s, int64_t keep)
{
    if (s->n_spare <= keep || s->n_slabs == 0)
        return 0;
    qsort(s->slabs, (size_t)s->n_slabs, sizeof *s->slabs, slab_cmp);
    /* free buffers per slab: counted in the slabs' n_free fields */
    for (int32_t i = 0; i < s->n_slabs; i++)
        s->slabs[i].n_free = 0;
    for (int32_t i = 0; i < s->n_spare; i++)
        s->slabs[slab_of(s, s->spare[i])].n_free++;
    int64_t freed = 0, spare = s->n_spare;
    for (int32_t i = 0; i < s->n_slabs; i++) {
        slab *sl = &s->slabs[i];
        sl->gone = sl->n_free == sl->n_pages && spare - sl->n_pages >= keep;
        if (sl->gone)
            spare -= sl->n_pages, freed += sl->n_pages;
    }
    if (!freed)
        return 0;
    int32_t o = 0;
    for (int32_t i = 0; i < s->n_spare; i++)
        if (!s->slabs[slab_of(s, s->spare[i])].gone)
            s->spare[o++] = s->spare[i];
    s->n_spare = o;
    int32_t k = 0;
    for (int32_t i = 0; i < s->n_slabs; i++) {
        slab *sl = &s->slabs[i];
        if (sl->gone) {
            skv_free(s->ctx, sl->base, sl->bytes);
            s->n_bufs -= sl->n_pages;
        } else {
            s->slabs[k++] = *sl;
        }
    }
    s->n_slabs = k;
    return freed;
}

void pool_destroy(skv_store *s)
{
    for (int32_t i = 0; i < s->n_slabs; i++)
        skv_free(s->ctx, s->slabs[i].base, s->slabs[i].bytes);
    skv_free(s->ctx, s->slabs, (size_t)s->cap_slabs * sizeof *s->slabs);
    skv_free(s->ctx, s->spare, (size_t)s->cap_spare * sizeof *s->spare);
}

skv_status skv_store_reserve(skv_store *s, int64_t n_pages)
{
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, n_pages >= 0 && n_pages <= INT32_MAX);
    const int32_t had = s->n_slabs;
    if (s->n_spare < n_pages)
        SKV_TRY(slab_add(s, n_pages - s->n_spare)); /* exactly what is asked */
    /* fault the new slabs in where the store's parallel loops will write them */
    const int threads = skv_threads(s->ctx);
    for (int32_t i = had; i < s->n_slabs; i++) {
        uint8_t *m = s->slabs[i].mem;
        const int64_t chunks = ((int64_t)s->slabs[i].n_pages * (int64_t)s->page_bytes + HUGE_BYTES - 1) /
                               (int64_t)HUGE_BYTES;
        const size_t bytes = (size_t)s->slabs[i].n_pages * s->page_bytes;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && chunks > 1)
        for (int64_t c = 0; c < chunks; c++) {
            const size_t at = (size_t)c * HUGE_BYTES;
            memset(m + at, 0, bytes - at < HUGE_BYTES ? bytes - at : HUGE_BYTES);
        }
    }
    if (s->reserved < (int32_t)n_pages)
        s->reserved = (int32_t)n_pages;
    return SKV_OK;
}

skv_status skv_store_trim(skv_store *s, int64_t keep_pages, int64_t *out_freed)
{
    if (out_freed)
        *out_freed = 0;
    if (!s)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(s->ctx, keep_pages >= 0);
    const int64_t f = pool_trim(s, keep_pages);
    if (out_freed)
        *out_freed = f;
    return SKV_OK;
}
