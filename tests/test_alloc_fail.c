/* Allocation failure at every allocation site: an allocator hook that counts allocations and
 * fails exactly the N-th one, for N = 1, 2, 3, ... until a run of the scenario completes with
 * no failure injected. The scenario touches every allocation site: context creation, kernel
 * workspace (indexer top-k and scores, split rows and their merge buffers, skv_topk_rows with
 * long and many rows), key cache creation, sequence slots, block tables, page-id arrays, pages
 * (one at a time and many at once), fork, copy-on-write on append and on remove, paged top-k,
 * frees, destruction.
 *
 * Every call either succeeds or returns SKV_ERR_NOMEM; a failed call leaves its object as it
 * was (key cache lengths, contents and stats; kernel outputs unwritten; context memory
 * unchanged for kernels) and is then retried, so the rest of the scenario still runs, and
 * every result is compared with a run without failures. The allocator checks that free gets
 * the size alloc got, alignment requests are powers of two <= 4096, the hooks run outside
 * parallel regions, skv_context_memory equals the bytes live in the allocator, and after
 * destroying everything no byte and no block is left. */
#include "common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- the failing, tracking allocator -------------------------------------------------------- */

typedef struct block { void *p; size_t size; } block;

typedef struct tracker {
    long n_allocs, fail_at; /* fail the fail_at-th allocation (1-based); 0: never */
    int injected;
    long live_blocks, peak_blocks;
    size_t live_bytes;
    block *blocks;
    long cap;
    long bad_free, bad_size, bad_align, in_parallel;
} tracker;

static void *t_alloc(void *user, size_t size, size_t align)
{
    tracker *t = user;
    t->n_allocs++;
#ifdef _OPENMP
    t->in_parallel += omp_in_parallel() != 0;
#endif
    if (align == 0 || (align & (align - 1)) || align > 4096)
        t->bad_align++;
    if (t->n_allocs == t->fail_at) {
        t->injected = 1;
        return NULL;
    }
    if (size == 0)
        t->bad_size++;
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    if (!p)
        return NULL;
    if (t->live_blocks == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 256;
        t->blocks = realloc(t->blocks, (size_t)t->cap * sizeof *t->blocks);
        if (!t->blocks)
            exit(2);
    }
    t->blocks[t->live_blocks++] = (block){p, size};
    t->live_bytes += size;
    t->peak_blocks = t->live_blocks > t->peak_blocks ? t->live_blocks : t->peak_blocks;
    return p;
}

static void t_free(void *user, void *p, size_t size)
{
    tracker *t = user;
#ifdef _OPENMP
    t->in_parallel += omp_in_parallel() != 0;
#endif
    if (!p)
        return; /* a NULL free is harmless; the library need not call it, but may */
    for (long i = t->live_blocks - 1; i >= 0; i--)
        if (t->blocks[i].p == p) {
            if (t->blocks[i].size != size)
                t->bad_size++;
            t->live_bytes -= t->blocks[i].size;
            t->blocks[i] = t->blocks[--t->live_blocks];
            free(p);
            return;
        }
    t->bad_free++; /* not ours, or freed twice: do not touch it */
}

/* ---- the scenario ------------------------------------------------------------------------------ */

#define MAXSEQ 12

/* Results of the run without failures; later runs must reproduce them. */
typedef struct results {
    int32_t *idx[16];
    float *val[16];
    size_t n[16];
    uint8_t *cache_state;
    size_t cache_state_bytes;
} results;

static results ref;
static int recording;
static long cur_n, n_nomem, n_mem_grew;

static void result(int slot, const int32_t *idx, const float *val, size_t n, const char *what)
{
    if (recording) {
        ref.idx[slot] = xmalloc(n * 4), ref.val[slot] = xmalloc(n * 4), ref.n[slot] = n;
        memcpy(ref.idx[slot], idx ? idx : (const int32_t *)val, n * 4);
        memcpy(ref.val[slot], val ? val : (const float *)idx, n * 4);
        return;
    }
    CHECK(ref.n[slot] == n && !memcmp(ref.idx[slot], idx ? idx : (const int32_t *)val, n * 4) &&
              !memcmp(ref.val[slot], val ? val : (const float *)idx, n * 4),
          "N=%ld: %s differs from the run without failures", cur_n, what);
}

/* Stats, and for every live sequence its lengths and keys, as one blob. */
static uint8_t *cache_state(const skv_kcache *c, const int32_t *ids, int n_ids, int32_t n_layers,
                            size_t row, int fp8, size_t *bytes)
{
    size_t cap = 4096, n = 0;
    uint8_t *b = xmalloc(cap);
#define PUT(src, len)                                                                         \
    do {                                                                                      \
        while (n + (len) > cap)                                                               \
            b = realloc(b, cap *= 2);                                                         \
        if (!b)                                                                               \
            exit(2);                                                                          \
        memcpy(b + n, (src), (len));                                                          \
        n += (len);                                                                           \
    } while (0)
    skv_kcache_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CHECK_OK(skv_kcache_get_stats(c, &st));
    PUT(&st, sizeof st);
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0)
            continue;
        PUT(&ids[i], sizeof ids[i]);
        for (int32_t l = 0; l < n_layers; l++) {
            int64_t len = -1;
            CHECK_OK(skv_kcache_seq_length(c, ids[i], l, &len));
            PUT(&len, sizeof len);
            if (len <= 0)
                continue;
            uint8_t *k = xmalloc((size_t)len * row);
            float *s = xmalloc((size_t)len * 4);
            CHECK_OK(skv_kcache_read(c, ids[i], l, 0, len, k, fp8 ? s : NULL));
            PUT(k, (size_t)len * row);
            if (fp8)
                PUT(s, (size_t)len * 4);
            free(k), free(s);
        }
    }
#undef PUT
    *bytes = n;
    return b;
}

/* Runs `call` until it succeeds; only one allocation fails per run, so a second attempt must.
 * A failure must be NOMEM; `check` then verifies nothing changed. */
#define ATTEMPT(what, call, check)                                                            \
    for (int att_ = 0;; att_++) {                                                             \
        const skv_status s_ = (call);                                                         \
        if (s_ == SKV_OK)                                                                     \
            break;                                                                            \
        CHECK(s_ == SKV_ERR_NOMEM && att_ == 0, "N=%ld: %s: %s (attempt %d)", cur_n, (what),  \
              skv_status_string(s_), att_ + 1);                                               \
        if (s_ != SKV_ERR_NOMEM || att_ > 0)                                                  \
            goto out;                                                                         \
        n_nomem++;                                                                            \
        check;                                                                                \
    }

/* Memory accounting: the context's count equals the allocator's live bytes. */
#define CHECK_ACCOUNTING(t, ctx)                                                              \
    CHECK(skv_context_memory(ctx) == (t)->live_bytes,                                         \
          "N=%ld: skv_context_memory %zu, allocator holds %zu", cur_n, skv_context_memory(ctx), \
          (t)->live_bytes)

typedef struct data {
    float *q, *w, *k, *kbig, *rows1, *rows64, *rowsbig;
    uint8_t *k8;
    float *ks8;
    int32_t pos[3];
} data;

static data D;

static void data_make(void)
{
    rng r = {2024};
    D.q = xmalloc(3 * 8 * 32 * 4);
    D.w = xmalloc(3 * 8 * 4);
    D.k = xmalloc(5000 * 32 * 4);
    D.kbig = xmalloc(20000 * 32 * 4);
    D.k8 = xmalloc(5000 * 32);
    D.ks8 = xmalloc(5000 * 4);
    D.rows1 = xmalloc(40000 * 4);
    D.rows64 = xmalloc(64 * 1000 * 4);
    D.rowsbig = xmalloc(100000 * 4);
    for (int i = 0; i < 3 * 8 * 32; i++)
        D.q[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < 24; i++)
        D.w[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < 5000 * 32; i++)
        D.k[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < 20000 * 32; i++)
        D.kbig[i] = (float)rng_uniform(&r, -1, 1);
    skv_quantize_fp8(D.k, 5000, 32, 32, 0, D.k8, D.ks8);
    for (int i = 0; i < 40000; i++)
        D.rows1[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < 64000; i++)
        D.rows64[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < 100000; i++)
        D.rowsbig[i] = (float)rng_uniform(&r, -1, 1);
    D.pos[0] = 1000, D.pos[1] = 4321, D.pos[2] = 4999;
}

static void data_free(void)
{
    free(D.q), free(D.w), free(D.k), free(D.kbig), free(D.k8), free(D.ks8);
    free(D.rows1), free(D.rows64), free(D.rowsbig);
}

/* A kernel call that may fail: outputs must stay unwritten and the context's memory unchanged. */
#define KERNEL(what, call, outp, outbytes, ctx)                                               \
    do {                                                                                      \
        memset((outp), 0x7b, (outbytes));                                                     \
        const size_t mem_ = skv_context_memory(ctx);                                          \
        ATTEMPT(what, call, {                                                                 \
            int same_ = 1;                                                                    \
            for (size_t i_ = 0; i_ < (outbytes); i_++)                                        \
                same_ &= ((const uint8_t *)(outp))[i_] == 0x7b;                               \
            CHECK(same_, "N=%ld: %s failed but wrote its output", cur_n, (what));             \
            CHECK(skv_context_memory(ctx) == mem_, "N=%ld: %s failed but memory changed",     \
                  cur_n, (what));                                                             \
        });                                                                                   \
    } while (0)

/* A composite call (several workspaces, grown one after another) that may fail: outputs must
 * stay unwritten; workspace it grew before failing may stay with the context (capacity, not
 * state). */
#define COMPOSITE(what, call, outp, outbytes)                                                 \
    do {                                                                                      \
        memset((outp), 0x7b, (outbytes));                                                     \
        ATTEMPT(what, call, {                                                                 \
            int same_ = 1;                                                                    \
            for (size_t i_ = 0; i_ < (outbytes); i_++)                                        \
                same_ &= ((const uint8_t *)(outp))[i_] == 0x7b;                               \
            CHECK(same_, "N=%ld: %s failed but wrote its output", cur_n, (what));             \
        });                                                                                   \
    } while (0)

/* A key cache call that may fail: the cache must be exactly as before. */
#define KCACHE(what, call)                                                                    \
    do {                                                                                      \
        size_t nb_;                                                                           \
        uint8_t *before_ = cache_state(c, ids, MAXSEQ, 2, 16, 1, &nb_);                       \
        const size_t mem_ = skv_context_memory(ctx);                                          \
        ATTEMPT(what, call, {                                                                 \
            size_t na_;                                                                       \
            uint8_t *after_ = cache_state(c, ids, MAXSEQ, 2, 16, 1, &na_);                    \
            CHECK(na_ == nb_ && !memcmp(before_, after_, na_),                                \
                  "N=%ld: %s failed but changed the cache", cur_n, (what));                   \
            n_mem_grew += skv_context_memory(ctx) != mem_;                                    \
            free(after_);                                                                     \
        });                                                                                   \
        free(before_);                                                                        \
        CHECK_ACCOUNTING(t, ctx);                                                             \
    } while (0)

/* Flipping layer l costs (l + 1) except the last two, which are expensive. */
static double synth_loss(const char *pattern, void *user)
{
    (void)user;
    double v = 0;
    for (int l = 0; pattern[l]; l++)
        v += pattern[l] == 'S' ? (l >= 7 ? 100.0 : l + 1) : 0;
    return v;
}

static void scenario(tracker *t)
{
    skv_context *ctx = NULL;
    skv_kcache *c = NULL;
    int32_t ids[MAXSEQ];
    for (int i = 0; i < MAXSEQ; i++)
        ids[i] = -1;
    const size_t T = 3, K = 64;
    int32_t *idx = xmalloc(64 * 3000 * 4);
    float *val = xmalloc(64 * 3000 * 4);
    float *scores = xmalloc(3 * 5000 * 4);

    /* context */
    skv_context_params p;
    skv_context_params_init(&p);
    p.allocator = (skv_allocator){t_alloc, t_free, t};
    p.n_threads = 2;
    ATTEMPT("context create", skv_context_create(&p, &ctx), {
        CHECK(ctx == NULL, "N=%ld: failed context create returned a context", cur_n);
        CHECK(t->live_blocks == 0, "N=%ld: failed context create leaked %ld blocks", cur_n, t->live_blocks);
    });
    CHECK_ACCOUNTING(t, ctx);

    /* indexer kernels: workspace for blocks of tokens, for one token split over threads (with
       merge buffers), FP8 keys, scores */
    const skv_indexer_query q = {3, 8, 32, SKV_F32, D.q, NULL, D.w, D.pos};
    const skv_indexer_query q1 = {1, 8, 32, SKV_F32, D.q, NULL, D.w, NULL};
    const skv_key_block kb = {5000, 32, SKV_F32, D.k, NULL};
    const skv_key_block kb8 = {5000, 32, SKV_FP8_E4M3, D.k8, D.ks8};
    const skv_key_block kbig = {20000, 32, SKV_F32, D.kbig, NULL};
    KERNEL("indexer topk", skv_indexer_topk(ctx, &q, &kb, 64, idx, val), idx, T * K * 4, ctx);
    result(0, idx, val, T * K, "indexer topk");
    KERNEL("indexer scores", skv_indexer_scores(ctx, &q, &kb, scores), scores, T * 5000 * 4, ctx);
    result(1, NULL, scores, T * 5000, "indexer scores");
    KERNEL("indexer topk, split token", skv_indexer_topk(ctx, &q1, &kbig, 2048, idx, val), idx, 2048 * 4, ctx);
    result(2, idx, val, 2048, "indexer topk, split token");
    KERNEL("indexer topk fp8", skv_indexer_topk(ctx, &q, &kb8, 300, idx, val), idx, T * 300 * 4, ctx);
    result(3, idx, val, T * 300, "indexer topk fp8");
    CHECK_ACCOUNTING(t, ctx);

    /* top-k of rows: one long row (split), many rows, one longer row with a larger k */
    KERNEL("topk_rows, 1 long row", skv_topk_rows(ctx, D.rows1, 1, 40000, 40000, NULL, 100, idx, val), idx, 100 * 4, ctx);
    result(4, idx, val, 100, "topk_rows, 1 long row");
    KERNEL("topk_rows, 64 rows", skv_topk_rows(ctx, D.rows64, 64, 1000, 1000, NULL, 500, idx, val), idx, 64 * 500 * 4, ctx);
    result(5, idx, val, 64 * 500, "topk_rows, 64 rows");
    KERNEL("topk_rows, large k", skv_topk_rows(ctx, D.rowsbig, 1, 100000, 100000, NULL, 3000, idx, val), idx, 3000 * 4, ctx);
    result(6, idx, val, 3000, "topk_rows, large k");
    CHECK_ACCOUNTING(t, ctx);

    /* key cache: FP8, 2 layers, head_dim 16, 4 tokens a page */
    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    kp.n_layers = 2, kp.head_dim = 16, kp.dtype = SKV_FP8_E4M3, kp.page_tokens = 4;
    {
        const size_t mem = skv_context_memory(ctx);
        ATTEMPT("kcache create", skv_kcache_create(ctx, &kp, &c), {
            CHECK(c == NULL, "N=%ld: failed kcache create returned a cache", cur_n);
            CHECK(skv_context_memory(ctx) == mem, "N=%ld: failed kcache create kept memory", cur_n);
        });
    }
    CHECK_ACCOUNTING(t, ctx);

    /* keys: F32 (quantised on append), and FP8 with scales */
    float kf[200 * 16];
    uint8_t k8[200 * 16];
    float ks[200];
    for (int i = 0; i < 200 * 16; i++)
        kf[i] = D.k[i] * (1 + (float)(i % 7));
    skv_quantize_fp8(kf, 200, 16, 16, 0, k8, ks);
    const skv_key_block a30 = {30, 16, SKV_F32, kf, NULL};
    const skv_key_block a100 = {100, 16, SKV_FP8_E4M3, k8, ks};
    const skv_key_block a3 = {3, 16, SKV_FP8_E4M3, k8 + 16 * 50, ks + 50};

    KCACHE("seq_create", skv_kcache_seq_create(c, &ids[0]));
    /* pages one append at a time, block table and page ids growing */
    for (int i = 0; i < 6; i++)
        KCACHE("append", skv_kcache_append(c, ids[0], i & 1, &a30));
    /* 25 pages at once (more than the on-stack page list holds) */
    KCACHE("append of many pages", skv_kcache_append(c, ids[0], 0, &a100));
    /* more sequences than the first slot array holds */
    for (int i = 1; i < 10; i++) {
        KCACHE("seq_create", skv_kcache_seq_create(c, &ids[i]));
        KCACHE("append", skv_kcache_append(c, ids[i], 1, &a3));
    }
    /* fork, then write the fork (copy-on-write), then cut the middle of a shared sequence */
    KCACHE("fork", skv_kcache_seq_fork(c, ids[0], &ids[10]));
    KCACHE("append to a fork", skv_kcache_append(c, ids[10], 1, &a3));
    KCACHE("fork", skv_kcache_seq_fork(c, ids[10], &ids[11]));
    KCACHE("remove in a shared sequence", skv_kcache_seq_remove(c, ids[11], 5, 77));
    KCACHE("remove in a shared sequence", skv_kcache_seq_remove(c, ids[0], 1, 2));
    KCACHE("append of many pages to a fork", skv_kcache_append(c, ids[10], 0, &a100));
    KCACHE("remove everything", skv_kcache_seq_remove(c, ids[9], 0, -1));
    KCACHE("free", skv_kcache_seq_free(c, ids[9]));
    ids[9] = -1;
    KCACHE("seq_create into a freed slot", skv_kcache_seq_create(c, &ids[9]));
    {
        int32_t extra = -1;
        KCACHE("fork of an empty sequence", skv_kcache_seq_fork(c, ids[9], &extra));
        KCACHE("free", skv_kcache_seq_free(c, extra));
    }

    /* paged indexer: queries of head_dim 16 */
    {
        const skv_indexer_query qk = {3, 8, 16, SKV_F32, D.q, NULL, D.w, NULL};
        KERNEL("kcache topk", skv_kcache_topk(c, ids[0], 0, &qk, 64, idx, val), idx, 3 * 64 * 4, ctx);
        result(7, idx, val, 3 * 64, "kcache topk");
        int64_t len = 0;
        CHECK_OK(skv_kcache_seq_length(c, ids[11], 1, &len));
        KERNEL("kcache scores", skv_kcache_scores(c, ids[11], 1, &qk, scores), scores, 3 * (size_t)len * 4, ctx);
        result(8, NULL, scores, 3 * (size_t)len, "kcache scores");
    }
    {
        size_t nb;
        uint8_t *st = cache_state(c, ids, MAXSEQ, 2, 16, 1, &nb);
        if (recording) {
            ref.cache_state = st;
            ref.cache_state_bytes = nb;
        } else {
            CHECK(nb == ref.cache_state_bytes && !memcmp(st, ref.cache_state, nb),
                  "N=%ld: the key cache differs from the run without failures", cur_n);
            free(st);
        }
    }
    for (int i = 0; i < MAXSEQ; i++)
        if (ids[i] >= 0) {
            CHECK_OK(skv_kcache_seq_free(c, ids[i]));
            ids[i] = -1;
        }
    {
        skv_kcache_stats st;
        memset(&st, 0, sizeof st);
        st.struct_size = sizeof st;
        CHECK_OK(skv_kcache_get_stats(c, &st));
        CHECK(st.pages_in_use == 0 && st.n_seqs == 0, "N=%ld: pages left after freeing every sequence", cur_n);
    }
    CHECK_ACCOUNTING(t, ctx);

    /* IndexCache: plans, a selector step, the search's memo, the proxies */
    {
        skv_reuse_plan *plan = NULL, *plan2 = NULL, *plan3 = NULL;
        const skv_layer_role roles[3] = {SKV_LAYER_FULL, SKV_LAYER_SHARED, SKV_LAYER_FULL};
        ATTEMPT("plan from string", skv_reuse_plan_from_string(ctx, "FSF", NULL, 0, &plan),
                CHECK(plan == NULL, "N=%ld: failed plan returned", cur_n));
        ATTEMPT("plan from freq", skv_reuse_plan_from_freq(ctx, 9, 4, 0, SKV_REUSE_FREQ_OFFICIAL, NULL, 0, &plan2),
                CHECK(plan2 == NULL, "N=%ld: failed plan returned", cur_n));
        ATTEMPT("plan from roles", skv_reuse_plan_from_roles(ctx, roles, 3, NULL, 0, &plan3),
                CHECK(plan3 == NULL, "N=%ld: failed plan returned", cur_n));
        skv_reuse_selector *sel = NULL;
        skv_reuse_selector_params sp;
        skv_reuse_selector_params_init(&sp);
        sp.k = 64;
        sp.max_tokens = 3;
        ATTEMPT("selector create", skv_reuse_selector_create(ctx, plan, &sp, &sel),
                CHECK(sel == NULL, "N=%ld: failed selector returned", cur_n));
        CHECK_OK(skv_reuse_begin_step(sel, 3));
        const int32_t *view = NULL;
        ATTEMPT("select", skv_reuse_select(sel, 0, &q, &kb, &view), (void)0);
        ATTEMPT("select shared", skv_reuse_select(sel, 1, NULL, NULL, &view), (void)0);
        result(9, view, NULL, 3 * 64, "reuse selection");

        skv_reuse_search_params rp;
        skv_reuse_search_params_init(&rp);
        rp.n_layers = 9;
        rp.target_full = 3;
        rp.loss = synth_loss;
        char pat[10];
        ATTEMPT("search", skv_reuse_search(ctx, &rp, pat, NULL, NULL), (void)0);
        CHECK(strcmp(pat, "FSSSSSSFF") == 0, "N=%ld: search found %s", cur_n, pat);

        int32_t tk[2 * 3 * 8];
        for (int i = 0; i < 2 * 3 * 8; i++)
            tk[i] = (i % 24) % 11; /* both layers select the same */
        double ov[4], mass[4];
        ATTEMPT("overlap", skv_reuse_overlap(ctx, tk, 2, 3, 8, ov), (void)0);
        const skv_indexer_query qs[2] = {q, q};
        const skv_key_block ks2[2] = {kb, kb};
        ATTEMPT("mass matrix", skv_reuse_mass_matrix(ctx, qs, ks2, 2, 16, mass, NULL), (void)0);
        CHECK(fabs(mass[0] - mass[1]) < 1e-12 && ov[1] == 1.0, "N=%ld: proxies of identical layers", cur_n);
        skv_reuse_selector_destroy(sel);
        skv_reuse_plan_destroy(plan);
        skv_reuse_plan_destroy(plan2);
        skv_reuse_plan_destroy(plan3);
    }
    CHECK_ACCOUNTING(t, ctx);

    /* MISA / HISA: routing scratch, routed queries, candidate lists, block means */
    {
        float sums[(5000 / 16 + 1) * 32];
        CHECK_OK(skv_pool_keys(&kb, 16, sums));
        const skv_pooled_keys pk = {16, sums};
        skv_misa_params mp;
        skv_misa_params_init(&mp);
        mp.heads = 2, mp.block = 64, mp.min_length = 0;
        COMPOSITE("misa", skv_misa_topk(ctx, &q, &kb, &pk, &mp, 64, idx, val), idx, T * K * 4);
        result(10, idx, val, T * K, "misa");
        mp.candidates = 256;
        COMPOSITE("misa-dagger", skv_misa_topk(ctx, &q, &kb, &pk, &mp, 64, idx, val), idx, T * K * 4);
        result(11, idx, val, T * K, "misa-dagger");
        skv_hisa_params hp;
        skv_hisa_params_init(&hp);
        hp.block = 64, hp.blocks = 6, hp.min_length = 0;
        COMPOSITE("hisa", skv_hisa_topk(ctx, &q, &kb, &pk, &hp, 64, idx, val), idx, T * K * 4);
        result(12, idx, val, T * K, "hisa");
        double rec[3];
        ATTEMPT("quality", skv_selection_quality(ctx, &q, &kb, idx, 64, rec, NULL), (void)0);
    }
    CHECK_ACCOUNTING(t, ctx);

    /* MISA decode on a key cache with pooled sums and a lane copy: the block means it remembers
       grow with the context (a failure to grow them costs time, not the result) */
    {
        skv_kcache_params mk;
        skv_kcache_params_init(&mk);
        mk.head_dim = 32, mk.page_tokens = 16, mk.pool_chunk = 16, mk.lane_copy = 1;
        skv_kcache *cm = NULL;
        int32_t sq = -1;
        ATTEMPT("kcache create", skv_kcache_create(ctx, &mk, &cm), (void)0);
        ATTEMPT("seq_create", skv_kcache_seq_create(cm, &sq), (void)0);
        skv_misa_params mp;
        skv_misa_params_init(&mp);
        mp.heads = 2, mp.block = 64, mp.min_length = 0;
        for (int step = 0; step < 3; step++) {
            const skv_key_block part = {1500, 32, SKV_FP8_E4M3, D.k8 + (size_t)step * 1500 * 32,
                                        D.ks8 + step * 1500};
            ATTEMPT("append", skv_kcache_append(cm, sq, 0, &part), (void)0);
            COMPOSITE("kcache misa", skv_kcache_misa_topk(cm, sq, 0, &q1, &mp, 64, idx, val), idx, K * 4);
            result(13 + step, idx, val, K, "kcache misa");
        }
        skv_kcache_destroy(cm);
    }
    CHECK_ACCOUNTING(t, ctx);

out:
    skv_kcache_destroy(c);
    skv_context_destroy(ctx);
    free(idx), free(val), free(scores);
}

static void run(tracker *t, long fail_at)
{
    free(t->blocks);
    memset(t, 0, sizeof *t);
    t->fail_at = fail_at;
    cur_n = fail_at;
    scenario(t);
    CHECK(t->live_blocks == 0 && t->live_bytes == 0, "N=%ld: %ld blocks, %zu bytes leaked", fail_at,
          t->live_blocks, t->live_bytes);
    CHECK(t->bad_free == 0, "N=%ld: %ld frees of pointers not allocated (or freed twice)", fail_at, t->bad_free);
    CHECK(t->bad_size == 0, "N=%ld: %ld frees with another size than allocated (or size 0)", fail_at, t->bad_size);
    CHECK(t->bad_align == 0, "N=%ld: %ld bad alignments", fail_at, t->bad_align);
    CHECK(t->in_parallel == 0, "N=%ld: %ld hook calls inside a parallel region", fail_at, t->in_parallel);
}

int main(void)
{
    data_make();
    tracker t = {0};
    recording = 1;
    run(&t, 0);
    recording = 0;
    const long total = t.n_allocs;
    printf("the scenario makes %ld allocations (peak %ld blocks live)\n", total, t.peak_blocks);
    CHECK(total > 50, "only %ld allocations: the scenario misses allocation sites", total);

    long n = 1;
    for (;; n++) {
        run(&t, n);
        if (!t.injected)
            break;
        if (n > 100000) {
            CHECK(0, "no end to allocations");
            break;
        }
    }
    printf("failure injected at N = 1 .. %ld (%ld NOMEM returns, each retried); N = %ld ran clean\n",
           n - 1, n_nomem, n);
    printf("%ld failed key cache calls kept grown capacity (context memory changed, cache unchanged)\n",
           n_mem_grew);
    CHECK(n - 1 == total, "failures injected at %ld points, the clean run made %ld allocations", n - 1, total);
    CHECK(n_nomem == n - 1, "%ld injected failures but %ld NOMEM returns", n - 1, n_nomem);

    for (int i = 0; i < 16; i++)
        free(ref.idx[i]), free(ref.val[i]);
    free(ref.cache_state);
    free(t.blocks);
    data_free();
    return test_summary("test_alloc_fail");
}
