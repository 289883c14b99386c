/* An allocator hook for the tests: counts allocations, fails the fail_at-th (1-based; 0 never),
 * tracks the bytes live and the allocations of one size (page_bytes; 0 none). */
#ifndef SKV_TEST_COUNT_ALLOC_H
#define SKV_TEST_COUNT_ALLOC_H

#include "common.h"

typedef struct counting { long n, fail_at, sized; size_t live, page_bytes; } counting;

static void *c_alloc(void *u, size_t size, size_t align)
{
    counting *c = u;
    if (++c->n == c->fail_at)
        return NULL;
    c->sized += c->page_bytes && size == c->page_bytes;
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    c->live += p ? size : 0;
    return p;
}

static void c_free(void *u, void *p, size_t size)
{
    counting *c = u;
    if (p)
        c->live -= size;
    free(p);
}

#endif
