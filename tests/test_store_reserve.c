/* skv_store_reserve: the pool of page buffers filled up front. A prefill into reserved memory
 * allocates no page buffer; freed pages return to the pool and are reused; the rows read back
 * as appended; allocation failure at every site of the reservation changes nothing and leaks
 * nothing. */
#include "count_alloc.h"

enum { H = 4, D = 32, T = 1000 };

static skv_store_stats stats(const skv_store *s)
{
    skv_store_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_store_get_stats(s, &st));
    return st;
}

/* Appends T tokens to a new sequence and checks they read back; returns the sequence. */
static int32_t prefill(skv_store *s, uint64_t seed)
{
    float *k = xmalloc((size_t)T * H * D * 4), *v = xmalloc((size_t)T * H * D * 4),
          *kr = xmalloc((size_t)T * H * D * 4), *vr = xmalloc((size_t)T * H * D * 4);
    int32_t *pos = xmalloc(T * 4);
    rng r = {seed};
    for (size_t i = 0; i < (size_t)T * H * D; i++)
        k[i] = (float)rng_uniform(&r, -1, 1), v[i] = (float)rng_uniform(&r, -1, 1);
    for (int32_t t = 0; t < T; t++)
        pos[t] = t;
    int32_t seq = -1;
    CHECK_OK(skv_store_seq_create(s, &seq));
    const skv_store_rows rows = {T, SKV_F32, k, v, pos};
    CHECK_OK(skv_store_append(s, seq, 0, &rows));
    CHECK_OK(skv_store_read(s, seq, 0, 0, T, kr, vr, NULL));
    CHECK(!memcmp(k, kr, (size_t)T * H * D * 4) && !memcmp(v, vr, (size_t)T * H * D * 4),
          "rows differ after a prefill into reserved pages");
    free(k), free(v), free(kr), free(vr), free(pos);
    return seq;
}

int main(void)
{
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_kv_heads = H, p.k_dim = D, p.v_dim = D, p.dtype = SKV_F32, p.hot_pages = 0;
    p.layout = SKV_STORE_POSITIONAL;
    long sites = 0;
    for (long fail_at = 1;; fail_at++) {
        counting c = {0};
        skv_context_params cp;
        skv_context_params_init(&cp);
        cp.n_threads = 2;
        cp.allocator.alloc = c_alloc, cp.allocator.free = c_free, cp.allocator.user = &c;
        skv_context *ctx = NULL;
        CHECK_OK(skv_context_create(&cp, &ctx));
        skv_store *s = NULL;
        CHECK_OK(skv_store_create(ctx, &p, &s));
        skv_store_layout_info li = {.struct_size = sizeof li};
        CHECK_OK(skv_store_layout_get(s, &li));
        c.page_bytes = li.host_page_bytes;
        CHECK_STATUS(skv_store_reserve(NULL, 1), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_store_reserve(s, -1), SKV_ERR_INVALID_ARG);
        /* the pages a prefill of T tokens needs: T / 16 per head, a few spare */
        const int64_t need = 2 * (T / 16 + 8) * H; /* above the prefill's worst-case reservation */
        c.fail_at = c.n + fail_at;
        const skv_status st = skv_store_reserve(s, need);
        const int injected = c.n >= c.fail_at;
        c.fail_at = 0;
        if (st == SKV_ERR_NOMEM) {
            CHECK(injected, "NOMEM without an injected failure");
            CHECK(stats(s).spare_bytes == 0, "a failed reservation kept %lld bytes",
                  (long long)stats(s).spare_bytes);
            sites++;
        } else {
            CHECK_OK(st);
            CHECK(!injected, "a failure was injected and the call succeeded");
        }
        if (!injected) {
            CHECK(stats(s).spare_bytes == need * (int64_t)li.host_page_bytes, "reserved %lld bytes",
                  (long long)stats(s).spare_bytes);
            const long before = c.sized;
            const int32_t a = prefill(s, 1);
            CHECK(c.sized == before, "a prefill into reserved memory allocated %ld pages",
                  c.sized - before);
            const int64_t used = stats(s).pages_in_use;
            CHECK_OK(skv_store_seq_free(s, a));
            CHECK(stats(s).spare_bytes == need * (int64_t)li.host_page_bytes,
                  "freed pages did not return to the pool: %lld bytes (%lld pages used)",
                  (long long)stats(s).spare_bytes, (long long)used);
            const long again = c.sized;
            const int32_t b = prefill(s, 2); /* reuses them */
            CHECK(c.sized == again, "the second prefill allocated %ld pages", c.sized - again);
            CHECK_OK(skv_store_seq_free(s, b));
            CHECK_OK(skv_store_reserve(s, 0)); /* never shrinks */
            CHECK(stats(s).spare_bytes == need * (int64_t)li.host_page_bytes, "reserve 0 shrank the pool");
        }
        skv_store_destroy(s);
        skv_context_destroy(ctx);
        CHECK(c.live == 0, "%zu bytes leaked", c.live);
        if (!injected || test_failures)
            break;
    }
    printf("reserve: %ld allocation sites failed in turn\n", sites);
    CHECK(sites > 2, "too few allocation sites: %ld", sites);
    return test_summary("store_reserve");
}
