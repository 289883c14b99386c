/* sparsekv — the store's cold tier: page images in a key-value store the host supplies (a
 * distributed KV store such as Redis, Valkey, Mooncake Store or LMCache's remote backends).
 *
 * Under the host tier (the authoritative copies in host memory) a store may park whole
 * sequences: their private pages (referenced once, not pinned in the hot tier) are written to
 * the backend and, once the backend confirmed every write, dropped from host memory. Any call
 * that touches a parked sequence (append, remove, select, select_tokens, read, fork) first
 * brings its pages back, checked byte for byte against their keys; skv_store_seq_restore does
 * it explicitly. skv_store_cold_trim parks the least recently used sequences until the host
 * pages fit a budget.
 *
 * Keys are content-addressed: 16 bytes, a 128-bit hash of the model tag, the store's shape,
 * the page's (layer, KV head) and its contents (positions, rows, index entry). Two stores (in
 * one process or many) of the same model that hold the same page — a shared prefix appended
 * the same way — compute the same key, so the backend holds it once. The hash is not
 * cryptographic: the backend must be trusted by every store that shares it.
 *
 * Every call is all or nothing: a failed park deletes what it had written and keeps every host
 * page; a failed restore keeps the sequence parked and its keys in the backend. See
 * docs/store.md, "The cold tier". */
#ifndef SPARSEKV_STORE_COLD_H
#define SPARSEKV_STORE_COLD_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { SKV_COLD_KEY_BYTES = 16 };

/* Completion of one request: status 0 on success, anything else a failure. Called exactly once
 * per request the backend accepted, from any thread, before or after the request function
 * returns, and always before the backend's wait returns. */
typedef void (*skv_cold_done)(void *tag, int status);

/* The backend. Request functions return 0 when the request was accepted (done will be
 * called) and nonzero when it was refused (done is not called). The store keeps key, data and
 * buf valid until the completion, so a backend may use them asynchronously.
 *   put: stores `bytes` bytes under key and adds one reference to it (a key present already
 *        holds the same bytes: only its reference count grows).
 *   get: reads the bytes stored under key into buf (`bytes` long); a missing key or another
 *        length is a failure.
 *   del: drops one reference; the backend may forget the key when none is left.
 *   wait: returns once every accepted request has completed (its done called and visible to
 *        the calling thread). */
typedef struct skv_store_cold {
    int (*put)(void *user, const uint8_t *key, const void *data, size_t bytes, skv_cold_done done,
               void *tag); /* see above */
    int (*get)(void *user, const uint8_t *key, void *buf, size_t bytes, skv_cold_done done,
               void *tag); /* see above */
    int (*del)(void *user, const uint8_t *key, skv_cold_done done, void *tag); /* see above */
    void (*wait)(void *user); /* see above */
    void *user;               /* passed to each; kept for the store's life */
} skv_store_cold;

/* Attaches a backend (all five members set; user may be NULL) with a model tag (a
 * NUL-terminated name of the model and its weights: stores of different models must use
 * different tags). Once per store, before any sequence is parked. Errors: INVALID_ARG, STATE
 * (a backend is attached already), NOMEM. *cold is copied and model_tag hashed: neither needs
 * to outlive the call; cold->user is kept, and the functions called, for the store's life. */
SKV_API skv_status skv_store_cold_attach(skv_store *s, const skv_store_cold *cold,
                                         const char *model_tag);

/* Parks the sequence: its private pages that are not pinned in the hot tier go to the backend
 * and leave host memory (and the hot tier). Selections of it become stale. *out_pages (may be
 * NULL) gets the pages parked. Errors: INVALID_ARG, STATE (no backend), NOMEM, IO (a write
 * refused or failed: nothing changed; the writes that succeeded were deleted again). */
SKV_API skv_status skv_store_seq_offload(skv_store *s, int32_t seq, int64_t *out_pages);

/* Brings the sequence's parked pages back (a no-op for a sequence with none). Errors:
 * INVALID_ARG, NOMEM, IO (a read failed or returned other bytes than the key's: the sequence
 * stays parked, nothing changed). */
SKV_API skv_status skv_store_seq_restore(skv_store *s, int32_t seq);

/* Parks sequences, least recently used first (the last call that touched them), until the
 * host pages of the store take at most host_budget_bytes, or no sequence has pages left to
 * park. *out_pages (may be NULL) gets the pages parked. Each sequence is parked all or
 * nothing; on an error those parked before stay parked. Errors: as skv_store_seq_offload. */
SKV_API skv_status skv_store_cold_trim(skv_store *s, int64_t host_budget_bytes,
                                       int64_t *out_pages);

/* What the cold tier did (skv_store_cold_stats_get). */
typedef struct skv_store_cold_stats {
    size_t struct_size;      /* set by the caller */
    int64_t pages_cold;      /* pages parked now */
    int64_t host_page_bytes; /* host bytes of the pages not parked */
    int64_t puts;            /* requests completed successfully: puts, */
    int64_t gets;            /* gets */
    int64_t dels;            /* and deletes */
    int64_t bytes_put;       /* bytes written to the backend */
    int64_t bytes_got;       /* bytes read back */
    int64_t put_failures;    /* puts refused or failed (the call returned IO) */
    int64_t get_failures;    /* gets refused or failed (the call returned IO) */
    int64_t del_failures;    /* refused or failed deletes: a reference the backend keeps */
    int64_t bad_reads;       /* reads whose bytes did not match their key */
} skv_store_cold_stats;

/* Errors: INVALID_ARG. */
SKV_API skv_status skv_store_cold_stats_get(const skv_store *s, skv_store_cold_stats *out);

#ifdef __cplusplus
}
#endif

#endif
