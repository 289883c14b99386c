/* The byte that a refused call must leave in its outputs: the caller fills them with SENT
 * first, then checks them with untouched() (tests/test_badargs.c, the fuzz targets). */
#ifndef SKV_TEST_SENTINEL_H
#define SKV_TEST_SENTINEL_H

#include <stddef.h>
#include <stdint.h>

#define SENT 0x7b

static int untouched(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != SENT)
            return 0;
    return 1;
}

#endif
