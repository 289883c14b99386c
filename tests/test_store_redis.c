/* The store's cold tier on a real redis-server (examples/redis), started here on a free
 * loopback port and stopped at the end; skipped (exit 77) when redis-server is absent.
 *
 * - parking under a budget and selection back, byte for byte (against a twin store that never
 *   parks, and against the generated data);
 * - two stores sharing a prefix through one server hold its pages once;
 * - the server killed mid-run: parks and restores return SKV_ERR_IO and change nothing; after
 *   a restart (append-only file, fsync always) everything comes back;
 * - a server whose maxmemory is too small: the park fails with SKV_ERR_IO, the adapter says
 *   OOM, the host copies stay, nothing is left on the server. */
#include "cold_redis.h"
#include "common.h"
#include "redis_spawn.h"

enum { H = 4, D = 32, VD = 32, L = 2 };

/* ---- data: a function of (seq kind, layer, position), so nothing needs a model ------------ */

static float val(int kind, int l, int32_t p, int j)
{
    uint64_t x = (uint64_t)kind * 1000003u + (uint64_t)l * 7919u + (uint64_t)p * 104729u + (uint64_t)j;
    x = (x ^ (x >> 31)) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    return (float)((double)(x >> 40) / (double)(1 << 24)) - 0.5f + (j % 8 == p % 8 ? 1.5f : 0.0f);
}

static skv_store *store_new(skv_context *ctx)
{
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_layers = L, p.n_kv_heads = H, p.k_dim = D, p.v_dim = VD, p.dtype = SKV_F32;
    p.hot_pages = 0, p.n_window = 16;
    skv_store *s = NULL;
    CHECK_OK(skv_store_create(ctx, &p, &s));
    return s;
}

static void append(skv_store *s, int32_t seq, int kind, int32_t p0, int32_t n)
{
    float *k = xmalloc((size_t)n * H * D * 4), *v = xmalloc((size_t)n * H * VD * 4);
    int32_t *pos = xmalloc((size_t)n * 4);
    for (int32_t l = 0; l < L; l++) {
        for (int32_t i = 0; i < n; i++) {
            pos[i] = p0 + i;
            for (int j = 0; j < H * D; j++)
                k[(size_t)i * H * D + j] = val(kind, l, p0 + i, j);
            for (int j = 0; j < H * VD; j++)
                v[(size_t)i * H * VD + j] = val(kind + 100, l, p0 + i, j);
        }
        const skv_store_rows rows = {n, SKV_F32, k, v, pos};
        CHECK_OK(skv_store_append(s, seq, l, &rows));
    }
    free(k), free(v), free(pos);
}

/* Reads (seq) back and compares with the generated data: returns the read's status. */
static skv_status check(skv_store *s, int32_t seq, int kind, int32_t n, const char *where)
{
    float *k = xmalloc((size_t)n * H * D * 4), *v = xmalloc((size_t)n * H * VD * 4);
    int32_t *pos = xmalloc((size_t)n * 4);
    skv_status st = SKV_OK;
    for (int32_t l = 0; l < L && st == SKV_OK; l++) {
        st = skv_store_read(s, seq, l, 0, n, k, v, pos);
        if (st != SKV_OK)
            break;
        long bad = 0;
        for (int32_t i = 0; i < n; i++) {
            bad += pos[i] != i;
            for (int j = 0; j < H * D; j++)
                bad += k[(size_t)i * H * D + j] != val(kind, l, i, j);
            for (int j = 0; j < H * VD; j++)
                bad += v[(size_t)i * H * VD + j] != val(kind + 100, l, i, j);
        }
        CHECK(bad == 0, "%s: layer %d: %ld values differ", where, l, bad);
    }
    free(k), free(v), free(pos);
    return st;
}

static int64_t parked(const skv_store *s)
{
    skv_store_cold_stats cs = {.struct_size = sizeof cs};
    CHECK_OK(skv_store_cold_stats_get(s, &cs));
    return cs.pages_cold;
}

/* Selections of the restored store gather the same rows as a twin's. */
static void check_select(skv_store *s, skv_store *twin, int32_t seq, const char *where)
{
    skv_store_sel *a = NULL, *b = NULL;
    CHECK_OK(skv_store_sel_create(s, &a));
    CHECK_OK(skv_store_sel_create(twin, &b));
    float q[H * D];
    for (int j = 0; j < H * D; j++)
        q[j] = val(7, 0, 3, j);
    skv_store_query qu;
    skv_store_query_init(&qu);
    qu.n_q_heads = H, qu.q = q, qu.budget = 256;
    CHECK_OK(skv_store_select(s, seq, 1, &qu, a));
    CHECK_OK(skv_store_select(twin, seq, 1, &qu, b));
    skv_store_sel_info ia = {.struct_size = sizeof ia};
    CHECK_OK(skv_store_sel_info_get(a, &ia));
    const int64_t n = ia.n_tokens;
    float *ka = xmalloc((size_t)n * 2 * D * 4), *va = xmalloc((size_t)n * 2 * VD * 4);
    int32_t *pa = xmalloc((size_t)n * 2 * 4);
    int64_t sa[H], sb[H];
    int32_t la[H], lb[H];
    const skv_store_gather_out oa = {sizeof oa, SKV_F32, SKV_GATHER_POSITIONS, 0, n, ka, va, pa, sa, la};
    const skv_store_gather_out ob = {sizeof ob, SKV_F32, SKV_GATHER_POSITIONS, 0, n, ka + n * D, va + n * VD,
                                     pa + n, sb, lb};
    int64_t ra = 0, rb = 0;
    CHECK_OK(skv_store_gather(s, a, &oa, &ra));
    CHECK_OK(skv_store_gather(twin, b, &ob, &rb));
    CHECK(ra == rb && ra > 0 && !memcmp(ka, ka + n * D, (size_t)n * D * 4) &&
              !memcmp(va, va + n * VD, (size_t)n * VD * 4) && !memcmp(pa, pa + n, (size_t)n * 4),
          "%s: gathered rows differ", where);
    free(ka), free(va), free(pa);
    skv_store_sel_destroy(a);
    skv_store_sel_destroy(b);
}

int main(void)
{
    if (!skv_redis_server_bin()) {
        printf("skip: redis-server not found (apt-get install redis-server)\n");
        return 77;
    }
    skv_redis_server sv = {.persist = 1};
    if (skv_redis_server_start(&sv)) {
        fprintf(stderr, "redis-server did not start\n");
        return 2;
    }
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    skv_redis *r1 = NULL, *r2 = NULL;
    CHECK(skv_redis_open("127.0.0.1", sv.port, "skv:", &r1) == 0, "connect");
    CHECK(skv_redis_open("127.0.0.1", sv.port, "skv:", &r2) == 0, "connect");
    if (!r1 || !r2)
        goto out;
    const skv_store_cold b1 = skv_redis_backend(r1), b2 = skv_redis_backend(r2);
    skv_store *s1 = store_new(ctx), *s2 = store_new(ctx), *twin = store_new(ctx);
    CHECK_OK(skv_store_cold_attach(s1, &b1, "test-model"));
    CHECK_OK(skv_store_cold_attach(s2, &b2, "test-model"));
    int32_t a, b, c, t;
    CHECK_OK(skv_store_seq_create(s1, &a));
    CHECK_OK(skv_store_seq_create(s1, &b));
    CHECK_OK(skv_store_seq_create(s2, &c));
    CHECK_OK(skv_store_seq_create(twin, &t));
    const int32_t NA = 1500, NB = 700;
    append(s1, a, 1, 0, NA);
    append(twin, t, 1, 0, NA);
    append(s1, b, 2, 0, NB);
    append(s2, c, 1, 0, NA); /* the same prefix as a */

    /* parked under a budget (LRU: a first), selected back */
    int64_t n = 0;
    CHECK_OK(skv_store_cold_trim(s1, 0, &n));
    const long long keys = skv_redis_server_int(&sv, "DBSIZE");
    CHECK(n == parked(s1) && n > 0 && keys == n, "parked %lld, %lld keys", (long long)n, keys);
    check_select(s1, twin, a, "redis select");
    CHECK_OK(check(s1, a, 1, NA, "redis a"));

    /* sharing: s2 parks the same pages as a: no new keys */
    int64_t na = 0, nc = 0;
    CHECK_OK(skv_store_seq_offload(s1, a, &na));
    const long long before = skv_redis_server_int(&sv, "DBSIZE");
    CHECK_OK(skv_store_seq_offload(s2, c, &nc));
    CHECK(na == nc && skv_redis_server_int(&sv, "DBSIZE") == before, "shared prefix: %lld + %lld pages, keys %lld -> %lld",
          (long long)na, (long long)nc, before, skv_redis_server_int(&sv, "DBSIZE"));
    CHECK_OK(check(s2, c, 1, NA, "redis c"));

    /* the server killed: parks and restores fail and change nothing; a restart resumes */
    skv_redis_server_kill(&sv);
    CHECK_OK(check(s2, c, 1, NA, "c, host copy")); /* c is back in host memory */
    const int64_t pa = parked(s1);
    CHECK_STATUS(skv_store_seq_offload(s2, c, NULL), SKV_ERR_IO);
    CHECK(parked(s2) == 0, "a failed park parked pages");
    CHECK_STATUS(skv_store_seq_restore(s1, a), SKV_ERR_IO);
    CHECK_STATUS(check(s1, b, 2, NB, "b, server down"), SKV_ERR_IO);
    CHECK(parked(s1) == pa, "a failed restore changed the parked pages");
    printf("server down: %s\n", skv_redis_last_error(r1));
    CHECK(strstr(skv_redis_last_error(r1), "connect") || strstr(skv_redis_last_error(r1), "lost"),
          "no clear error: %s", skv_redis_last_error(r1));
    CHECK(skv_redis_server_start(&sv) == 0, "restart");
    CHECK_OK(check(s1, a, 1, NA, "a after restart"));
    CHECK_OK(check(s1, b, 2, NB, "b after restart"));
    CHECK_OK(skv_store_seq_offload(s2, c, NULL));
    CHECK_OK(check(s2, c, 1, NA, "c after restart"));
    CHECK(skv_redis_server_int(&sv, "DBSIZE") == 0, "keys left: %lld", skv_redis_server_int(&sv, "DBSIZE"));

    /* maxmemory too small: a clear error, the host copies stay, nothing left behind */
    CHECK(skv_redis_server_int(&sv, "CONFIG SET maxmemory 2mb") == 0, "CONFIG SET");
    CHECK_STATUS(skv_store_seq_offload(s1, a, NULL), SKV_ERR_IO);
    printf("server full: %s\n", skv_redis_last_error(r1));
    CHECK(strstr(skv_redis_last_error(r1), "OOM") != NULL, "no clear error: %s", skv_redis_last_error(r1));
    CHECK(parked(s1) == 0, "pages parked on a full server");
    CHECK_OK(check(s1, a, 1, NA, "a, server full"));
    CHECK(skv_redis_server_int(&sv, "DBSIZE") == 0, "a failed park left %lld keys", skv_redis_server_int(&sv, "DBSIZE"));
    CHECK(skv_redis_server_int(&sv, "CONFIG SET maxmemory 0") == 0, "CONFIG SET");
    CHECK_OK(skv_store_seq_offload(s1, a, NULL));
    CHECK_OK(skv_store_seq_free(s1, a)); /* its keys go */
    skv_store_destroy(s1);
    skv_store_destroy(s2);
    skv_store_destroy(twin);
    CHECK(skv_redis_server_int(&sv, "DBSIZE") == 0, "keys left at the end: %lld", skv_redis_server_int(&sv, "DBSIZE"));
out:
    skv_redis_close(r1);
    skv_redis_close(r2);
    skv_context_destroy(ctx);
    skv_redis_server_stop(&sv);
    return test_summary("store_redis");
}
