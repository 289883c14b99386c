/* skv_store_reserve and the page pool: the pool of page buffers (carved from slabs) filled up
 * front. A prefill into reserved memory takes every page from the pool (no new slab); freed
 * pages return to the pool and are reused, also without a reservation; skv_store_trim hands
 * whole free slabs back; the rows read back as appended; allocation failure at every site of
 * the reservation changes nothing and leaks nothing; the same with huge-page slabs. */
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

/* Page buffers the store holds: in use and in the pool. */
static int64_t held(const skv_store *s, size_t page_bytes)
{
    const skv_store_stats st = stats(s);
    return st.pages_in_use + st.spare_bytes / (int64_t)page_bytes;
}

/* Without a reservation: the second prefill of the same length reuses the first one's pages
 * (the pool grows by no slab), and trimming returns them all. */
static void reuse_without_reserve(uint32_t flags)
{
    counting c = {0};
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.allocator.alloc = c_alloc, cp.allocator.free = c_free, cp.allocator.user = &c;
    skv_context *ctx = NULL;
    CHECK_OK(skv_context_create(&cp, &ctx));
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_kv_heads = H, p.k_dim = D, p.v_dim = D, p.dtype = SKV_F32, p.hot_pages = 0;
    p.flags = flags;
    skv_store *s = NULL;
    CHECK_OK(skv_store_create(ctx, &p, &s));
    skv_store_layout_info li = {.struct_size = sizeof li};
    CHECK_OK(skv_store_layout_get(s, &li));
    const int32_t a = prefill(s, 3);
    const int64_t first = held(s, li.host_page_bytes);
    CHECK(first >= stats(s).pages_in_use && stats(s).pages_in_use > 0, "held %lld", (long long)first);
    CHECK_OK(skv_store_seq_free(s, a));
    CHECK(stats(s).pages_in_use == 0 && held(s, li.host_page_bytes) == first,
          "freed pages left the pool: %lld of %lld", (long long)held(s, li.host_page_bytes),
          (long long)first);
    const int32_t b = prefill(s, 4);
    CHECK(held(s, li.host_page_bytes) == first, "the second prefill grew the pool: %lld, was %lld",
          (long long)held(s, li.host_page_bytes), (long long)first);
    int64_t freed = -1;
    CHECK_STATUS(skv_store_trim(NULL, 0, &freed), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_trim(s, -1, NULL), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_store_trim(s, 0, &freed)); /* pages in use keep their slabs */
    CHECK(held(s, li.host_page_bytes) == first - freed, "trim: held %lld, freed %lld of %lld",
          (long long)held(s, li.host_page_bytes), (long long)freed, (long long)first);
    CHECK_OK(skv_store_seq_free(s, b));
    const size_t live = c.live;
    CHECK_OK(skv_store_trim(s, 0, &freed));
    CHECK(stats(s).spare_bytes == 0 && freed > 0, "trim left %lld bytes in the pool",
          (long long)stats(s).spare_bytes);
    CHECK(live - c.live >= (size_t)freed * li.host_page_bytes, "trim returned %zu bytes for %lld pages",
          live - c.live, (long long)freed);
    const int32_t again = prefill(s, 5); /* new slabs after a full trim */
    CHECK_OK(skv_store_seq_free(s, again));
    skv_store_destroy(s);
    skv_context_destroy(ctx);
    CHECK(c.live == 0, "%zu bytes leaked", c.live);
}

static long reserve_sites(uint32_t flags)
{
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_kv_heads = H, p.k_dim = D, p.v_dim = D, p.dtype = SKV_F32, p.hot_pages = 0;
    p.layout = SKV_STORE_POSITIONAL;
    p.flags = flags;
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
            const int32_t a = prefill(s, 1);
            CHECK(held(s, li.host_page_bytes) == need, "a prefill into reserved memory holds %lld pages",
                  (long long)held(s, li.host_page_bytes));
            const int64_t used = stats(s).pages_in_use;
            CHECK_OK(skv_store_seq_free(s, a));
            CHECK(stats(s).spare_bytes == need * (int64_t)li.host_page_bytes,
                  "freed pages did not return to the pool: %lld bytes (%lld pages used)",
                  (long long)stats(s).spare_bytes, (long long)used);
            const int32_t b = prefill(s, 2); /* reuses them */
            CHECK(held(s, li.host_page_bytes) == need, "the second prefill holds %lld pages",
                  (long long)held(s, li.host_page_bytes));
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
    return sites;
}

int main(void)
{
    for (int huge = 0; huge < 2; huge++) {
        const uint32_t flags = huge ? SKV_STORE_HUGEPAGES : 0;
        const long sites = reserve_sites(flags);
        printf("reserve%s: %ld allocation sites failed in turn\n", huge ? " (huge pages)" : "", sites);
        CHECK(sites > 2, "too few allocation sites: %ld", sites);
        reuse_without_reserve(flags);
    }
    return test_summary("store_reserve");
}
