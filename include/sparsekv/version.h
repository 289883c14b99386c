/* sparsekv — version. The single source of truth: meson reads these lines to set the
 * library's version and soversion. While MAJOR is 0 a MINOR step may change the ABI (public
 * structs grow at their end), so the soversion is MAJOR.MINOR then (libsparsekv.so.0.2), and
 * MAJOR alone from 1 on. */
#ifndef SPARSEKV_VERSION_H
#define SPARSEKV_VERSION_H

#define SKV_API_VERSION_MAJOR 0 /* incompatible changes */
#define SKV_API_VERSION_MINOR 2 /* additions (and, while MAJOR is 0, ABI changes) */
#define SKV_API_VERSION_PATCH 0 /* fixes */

/* The three in one int, as skv_version() returns it. */
#define SKV_API_VERSION \
    ((SKV_API_VERSION_MAJOR << 16) | (SKV_API_VERSION_MINOR << 8) | SKV_API_VERSION_PATCH)

#endif
