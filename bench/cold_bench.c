/* sparsekv-bench-cold: the store's tiers over a private redis-server on loopback. Pages/s and
 * bytes/s for each move — host reads (skv_store_read), hot-tier fetches (the host arena),
 * parks to Redis and restores from it — in interleaved rounds, with the machine's triad
 * bandwidth from the same run. Shape: 8 KV heads x 128, K and V in bf16, 16-token pages
 * (8.25 KiB images), sequences of --tokens tokens (default 16K; --quick 4K), one layer.
 * Needs redis-server (exits 77 without it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cold_redis.h"
#include "redis_spawn.h"

enum { H = 8, D = 128, SEQS = 2, ROUNDS = 3 };

static uint16_t bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

typedef struct rec { double s[ROUNDS]; int64_t pages, bytes; } rec;

static void report(const char *tier, const char *op, rec *r, const bench_machine *m)
{
    const double t = bench_median(r->s, ROUNDS);
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "cold_tier");
    json_str(&j, "tier", tier);
    json_str(&j, "op", op);
    json_int(&j, "pages", r->pages);
    json_int(&j, "bytes", r->bytes);
    json_num(&j, "median_s", t, 6);
    json_num(&j, "pages_per_s", (double)r->pages / t, 0);
    json_num(&j, "gbps", (double)r->bytes / t * 1e-9, 3);
    json_ratio(&j, "of_triad", (double)r->bytes / t * 1e-9 / m->stream_gbps);
    json_end(&j);
}

int main(int argc, char **argv)
{
    int64_t tokens = 16384;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--tokens")) {
            tokens = atoll(argv[i + 1]);
            memmove(argv + i, argv + i + 2, (size_t)(argc - i - 2) * sizeof *argv);
            argc -= 2;
            break;
        }
    if (!skv_redis_server_bin()) {
        printf("skip: redis-server not found\n");
        return 77;
    }
    bench_setup_out o;
    const int rc = bench_setup(argc, argv, "sparsekv-bench-cold", 0.5, &o);
    if (rc)
        return rc;
    if (o.quick && tokens > 4096)
        tokens = 4096;
    skv_redis_server sv = {0};
    if (skv_redis_server_start(&sv)) {
        fprintf(stderr, "redis-server did not start\n");
        return 1;
    }
    skv_redis *rd = NULL;
    if (skv_redis_open("127.0.0.1", sv.port, "bench:", &rd)) {
        skv_redis_server_stop(&sv);
        return 1;
    }
    const skv_store_cold cb = skv_redis_backend(rd);

    skv_store_params p;
    skv_store_params_init(&p);
    p.n_layers = 1, p.n_kv_heads = H, p.k_dim = D, p.v_dim = D, p.dtype = SKV_BF16;
    p.hot_pages = (int32_t)(tokens / 16 * H + 64 * H);
    skv_store *s = NULL;
    bench_check(skv_store_create(o.ctx, &p, &s), "store");
    bench_check(skv_store_cold_attach(s, &cb, "bench-model"), "attach");
    const size_t n_el = (size_t)tokens * H * D;
    uint16_t *k = bench_xmalloc(n_el * 2), *v = bench_xmalloc(n_el * 2);
    float *tmp = bench_xmalloc(n_el * 4);
    int32_t *pos = bench_xmalloc((size_t)tokens * 4);
    fill_uniform(tmp, n_el, 1);
    for (size_t i = 0; i < n_el; i++)
        k[i] = bf16(tmp[i]);
    fill_uniform(tmp, n_el, 2);
    for (size_t i = 0; i < n_el; i++)
        v[i] = bf16(tmp[i]);
    for (int64_t t = 0; t < tokens; t++)
        pos[t] = (int32_t)t;
    int32_t seq[SEQS];
    for (int i = 0; i < SEQS; i++) {
        bench_check(skv_store_seq_create(s, &seq[i]), "seq");
        const skv_store_rows rows = {tokens, SKV_BF16, k, v, pos};
        bench_check(skv_store_append(s, seq[i], 0, &rows), "append");
    }
    skv_store_sel *sel = NULL;
    bench_check(skv_store_sel_create(s, &sel), "sel");
    skv_store_layout_info li = {.struct_size = sizeof li};
    bench_check(skv_store_layout_get(s, &li), "layout");

    rec host = {0}, hot = {0}, park = {0}, restore = {0};
    for (int r = 0; r < ROUNDS; r++) {
        /* host: every row of seq 0 read out (K and V bytes) */
        double t0 = now_s();
        bench_check(skv_store_read(s, seq[0], 0, 0, tokens, k, v, NULL), "read");
        host.s[r] = now_s() - t0;
        host.pages = tokens / 16 * H, host.bytes = (int64_t)n_el * 4;
        /* hot: every page of seq 1 fetched into evicted slots */
        int64_t ev;
        bench_check(skv_store_evict(s, -1, &ev), "evict");
        bench_check(skv_store_select_tokens(s, seq[1], 0, pos, tokens, tokens, sel), "select");
        skv_store_stats st0 = {.struct_size = sizeof st0}, st1 = {.struct_size = sizeof st1};
        bench_check(skv_store_get_stats(s, &st0), "stats");
        t0 = now_s();
        bench_check(skv_store_fetch(s, sel), "fetch");
        hot.s[r] = now_s() - t0;
        bench_check(skv_store_get_stats(s, &st1), "stats");
        bench_check(skv_store_release(s, sel), "release");
        hot.pages = st1.fetch_misses - st0.fetch_misses + st1.fetch_stale - st0.fetch_stale;
        hot.bytes = st1.bytes_to_hot - st0.bytes_to_hot;
        /* remote: seq 1 parked in Redis and restored */
        skv_store_cold_stats c0 = {.struct_size = sizeof c0}, c1 = {.struct_size = sizeof c1};
        bench_check(skv_store_cold_stats_get(s, &c0), "cold stats");
        int64_t n = 0;
        t0 = now_s();
        bench_check(skv_store_seq_offload(s, seq[1], &n), "park");
        park.s[r] = now_s() - t0;
        t0 = now_s();
        bench_check(skv_store_seq_restore(s, seq[1]), "restore");
        restore.s[r] = now_s() - t0;
        bench_check(skv_store_cold_stats_get(s, &c1), "cold stats");
        park.pages = restore.pages = n;
        park.bytes = c1.bytes_put - c0.bytes_put;
        restore.bytes = c1.bytes_got - c0.bytes_got;
    }
    report("host", "read", &host, &o.machine);
    report("hot", "fetch", &hot, &o.machine);
    report("remote", "park", &park, &o.machine);
    report("remote", "restore", &restore, &o.machine);
    const skv_redis_stats rs = skv_redis_get_stats(rd);
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "cold_tier_setup");
    json_int(&j, "tokens", tokens);
    json_int(&j, "page_image_bytes", (int64_t)li.slot_bytes);
    json_int(&j, "host_page_bytes", (int64_t)li.host_page_bytes);
    json_int(&j, "redis_round_trips", rs.round_trips);
    json_int(&j, "redis_failed", rs.failed);
    json_end(&j);
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    skv_redis_close(rd);
    skv_redis_server_stop(&sv);
    skv_context_destroy(o.ctx);
    free(k), free(v), free(tmp), free(pos);
    return 0;
}
