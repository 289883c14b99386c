/* A cold tier for the sparsekv store on Redis or Valkey (hiredis): the adapter a host hands to
 * skv_store_cold_attach. Requests queue until the store waits, then go out pipelined on one
 * connection; a lost connection fails the requests in flight (the store returns SKV_ERR_IO and
 * keeps its host pages) and is re-established on the next wait.
 *
 * Each page is one Redis hash, <prefix><32 hex digits of the key>, with fields d (the page
 * blob) and r (its reference count, kept by server-side scripts so that stores sharing a
 * server share pages). Run the server with `maxmemory-policy noeviction`: a server that evicts
 * keys on its own loses parked pages. A full server refuses writes (OOM): the park fails, the
 * host pages stay, and skv_redis_last_error says why. */
#ifndef SKV_COLD_REDIS_H
#define SKV_COLD_REDIS_H

#include "sparsekv/store_cold.h"

typedef struct skv_redis skv_redis;

/* Connects to host:port (TCP). prefix (at most 64 bytes) names the keys. Returns 0, or -1 with
 * *out NULL (no memory, or the server unreachable: the message goes to stderr). */
int skv_redis_open(const char *host, int port, const char *prefix, skv_redis **out);
void skv_redis_close(skv_redis *r);
/* The callback table for skv_store_cold_attach (valid while r is open). */
skv_store_cold skv_redis_backend(skv_redis *r);
/* The last failure the server or the connection reported ("" when none). */
const char *skv_redis_last_error(const skv_redis *r);
/* Requests completed, failed, and bytes sent and received since open. */
typedef struct skv_redis_stats { long long done, failed, bytes_out, bytes_in, round_trips; } skv_redis_stats;
skv_redis_stats skv_redis_get_stats(const skv_redis *r);

#endif
