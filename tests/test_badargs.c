/* Every public function with bad arguments: each returns the status its header documents,
 * writes none of its outputs, and changes nothing (key cache lengths, contents and stats; the
 * context's memory). Also the valid edge cases next to them (empty inputs, k beyond the keys,
 * nothing visible, NULL to the destroy functions). Calls that an unchecked overflow could turn
 * into a wild read or write run in a child process, so that a crash is reported as a failure
 * instead of ending the test. */
#include "common.h"

#include <sys/wait.h>
#include <unistd.h>

#include "sentinel.h"

/* Runs fn(arg) in a child process; it returns its number of failed checks. A crash, a
 * sanitizer report or a failed check there is a failure here. */
static void isolated(const char *what, int (*fn)(void *), void *arg)
{
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) {
        CHECK(fn(arg) == 0, "%s", what);
        return;
    }
    if (pid == 0) {
        const long before = test_failures;
        const int bad = fn(arg) != 0 || test_failures != before;
        fflush(stdout);
        fflush(stderr);
        _exit(bad ? 1 : 0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    test_checks++;
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        test_failures++;
        if (WIFSIGNALED(st))
            fprintf(stderr, "FAIL %s: crashed with signal %d\n", what, WTERMSIG(st));
        else
            fprintf(stderr, "FAIL %s: exit status %d\n", what, WEXITSTATUS(st));
    }
}

/* ---- status strings, versions, small queries ---------------------------------------------- */

static void test_misc(void)
{
    static const skv_status all[] = {SKV_OK, SKV_ERR_INVALID_ARG, SKV_ERR_NOMEM, SKV_ERR_UNSUPPORTED,
                                     SKV_ERR_CAPACITY, SKV_ERR_STATE, SKV_ERR_IO};
    const char *unknown = skv_status_string((skv_status)12345);
    CHECK(unknown != NULL && unknown[0], "unknown status string");
    for (int i = 0; i < 7; i++) {
        const char *s = skv_status_string(all[i]);
        CHECK(s != NULL && s[0] && (!unknown || strcmp(s, unknown) != 0), "status %d string", all[i]);
        for (int j = 0; j < i; j++)
            CHECK(s && skv_status_string(all[j]) && strcmp(s, skv_status_string(all[j])) != 0,
                  "statuses %d and %d share a string", all[i], all[j]);
    }
    static const int others[] = {1, -7, -100, 99, INT32_MIN, INT32_MAX};
    for (int i = 0; i < 6; i++) {
        const char *s = skv_status_string((skv_status)others[i]);
        CHECK(s != NULL && unknown && !strcmp(s, unknown), "status %d string", others[i]);
    }
    CHECK(SKV_OK == 0 && SKV_ERR_INVALID_ARG == -1 && SKV_ERR_NOMEM == -2 && SKV_ERR_UNSUPPORTED == -3 &&
              SKV_ERR_CAPACITY == -4 && SKV_ERR_STATE == -5 && SKV_ERR_IO == -6,
          "frozen status values");

    CHECK(skv_version() == SKV_API_VERSION, "skv_version %d", skv_version());
    CHECK(skv_dtype_size(SKV_F32) == 4 && skv_dtype_size(SKV_BF16) == 2 && skv_dtype_size(SKV_F16) == 2 &&
              skv_dtype_size(SKV_FP8_E4M3) == 1,
          "dtype sizes");
    CHECK(skv_dtype_size((skv_dtype)99) == 0 && skv_dtype_size((skv_dtype)-1) == 0 &&
              skv_dtype_size((skv_dtype)4) == 0,
          "unknown dtype size");
    CHECK(!strcmp(skv_cpu_level_name(0), "scalar") && !strcmp(skv_cpu_level_name(SKV_CPU_AVX2), "avx2") &&
              !strcmp(skv_cpu_level_name(SKV_CPU_AVX2 | SKV_CPU_AVX512), "avx512") &&
              !strcmp(skv_cpu_level_name(SKV_CPU_AVX2 | SKV_CPU_AVX512 | SKV_CPU_AVX512BF16), "avx512bf16") &&
              !strcmp(skv_cpu_level_name(SKV_CPU_NEON), "neon"),
          "level names");
    const char *ln = skv_cpu_level_name(0xfffffff8u); /* unknown bits only */
    CHECK(ln != NULL, "level name of unknown bits");
    /* NULL objects to the accessors and init functions: no crash, nothing reported */
    CHECK(skv_context_cpu_flags(NULL) == 0, "cpu flags of NULL");
    CHECK(skv_context_memory(NULL) == 0, "memory of NULL");
    skv_context_params_init(NULL);
    skv_kcache_params_init(NULL);
    skv_context_destroy(NULL);
    skv_kcache_destroy(NULL);
}

/* ---- context -------------------------------------------------------------------------------- */

static long hook_calls;
static void *spy_alloc(void *user, size_t size, size_t align)
{
    (void)user;
    hook_calls++;
    return aligned_alloc(align, (size + align - 1) / align * align);
}
static void spy_free(void *user, void *p, size_t size)
{
    (void)user, (void)size;
    hook_calls++;
    free(p);
}

static skv_context *const NOT_SET = (skv_context *)(uintptr_t)0x1234;

/* A failed create sets *out to NULL. */
#define CREATE_FAILS(pp, want, what)                                                          \
    do {                                                                                      \
        skv_context *o_ = NOT_SET;                                                            \
        CHECK_STATUS(skv_context_create((pp), &o_), (want));                                  \
        CHECK(o_ == NULL, "%s: failed create left *out set", (what));                         \
    } while (0)

static void test_context(void)
{
    skv_context_params p;
    CHECK_STATUS(skv_context_create(NULL, NULL), SKV_ERR_INVALID_ARG);
    skv_context_params_init(&p);
    CHECK_STATUS(skv_context_create(&p, NULL), SKV_ERR_INVALID_ARG);
    CHECK(p.struct_size == sizeof p && p.n_threads == 0 && p.cpu_mask == SKV_CPU_ALL && !p.allocator.alloc &&
              !p.allocator.free && !p.log && p.log_level == SKV_LOG_WARN,
          "context defaults");

    static const size_t sizes[] = {0, sizeof(skv_context_params) - 1, sizeof(skv_context_params) + 8, 8};
    for (int i = 0; i < 4; i++) {
        skv_context_params_init(&p);
        p.struct_size = sizes[i];
        CREATE_FAILS(&p, SKV_ERR_INVALID_ARG, "struct_size");
    }
    static const int32_t threads[] = {-1, -1000, INT32_MIN};
    for (int i = 0; i < 3; i++) {
        skv_context_params_init(&p);
        p.n_threads = threads[i];
        CREATE_FAILS(&p, SKV_ERR_INVALID_ARG, "n_threads");
    }
    /* one hook only: refused, and the hook given is never called */
    skv_context_params_init(&p);
    p.allocator.alloc = spy_alloc;
    CREATE_FAILS(&p, SKV_ERR_INVALID_ARG, "alloc hook only");
    skv_context_params_init(&p);
    p.allocator.free = spy_free;
    CREATE_FAILS(&p, SKV_ERR_INVALID_ARG, "free hook only");
    CHECK(hook_calls == 0, "a refused allocator was called %ld times", hook_calls);

    /* valid: NULL params, both hooks, every mask */
    skv_context *ctx = NULL;
    CHECK_OK(skv_context_create(NULL, &ctx));
    CHECK(ctx != NULL && skv_context_memory(ctx) > 0, "default context");
    CHECK((skv_context_cpu_flags(ctx) & ~skv_cpu_flags()) == 0, "flags beyond the CPU's");
    skv_context_destroy(ctx);
    skv_context_params_init(&p);
    p.allocator = (skv_allocator){spy_alloc, spy_free, NULL};
    p.cpu_mask = 0;
    p.n_threads = 1;
    ctx = NULL;
    CHECK_OK(skv_context_create(&p, &ctx));
    CHECK(ctx && skv_context_cpu_flags(ctx) == 0, "mask 0 is scalar");
    skv_context_destroy(ctx);
    CHECK(hook_calls >= 2, "hooks not used (%ld calls)", hook_calls);
}

/* ---- conversion and quantiser --------------------------------------------------------------- */

static void test_convert(void)
{
    float src[8] = {1, 2, 3, 4, -1, 0.5f, 0, 96};
    uint8_t dst[64];
    static const skv_dtype bad[] = {(skv_dtype)4, (skv_dtype)99, (skv_dtype)-1};
    for (int i = 0; i < 3; i++) {
        memset(dst, SENT, sizeof dst);
        CHECK_STATUS(skv_convert(bad[i], dst, SKV_F32, src, 8), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_convert(SKV_BF16, dst, bad[i], src, 8), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_convert(bad[i], dst, bad[i], src, 8), SKV_ERR_INVALID_ARG);
        CHECK(untouched(dst, sizeof dst), "refused convert wrote");
    }
    memset(dst, SENT, sizeof dst);
    CHECK_STATUS(skv_convert(SKV_BF16, dst, SKV_F32, src, -1), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_convert(SKV_BF16, dst, SKV_F32, src, INT64_MIN), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_convert(SKV_BF16, NULL, SKV_F32, src, 8), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_convert(SKV_BF16, dst, SKV_F32, NULL, 8), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_convert(SKV_F32, dst, SKV_F32, NULL, 1), SKV_ERR_INVALID_ARG);
    CHECK(untouched(dst, sizeof dst), "refused convert wrote");
    /* valid: zero elements with NULL pointers; every pair of dtypes */
    CHECK_OK(skv_convert(SKV_BF16, NULL, SKV_F32, NULL, 0));
    CHECK_OK(skv_convert(SKV_FP8_E4M3, dst, SKV_F16, src, 0));
    CHECK(untouched(dst, sizeof dst), "convert of 0 elements wrote");
    static const skv_dtype all[] = {SKV_F32, SKV_BF16, SKV_F16, SKV_FP8_E4M3};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++) {
            uint8_t mid[32];
            float back[8];
            memset(dst, SENT, sizeof dst);
            CHECK_OK(skv_convert(all[a], mid, SKV_F32, src, 8));
            CHECK_OK(skv_convert(all[b], dst, all[a], mid, 8));
            CHECK_OK(skv_convert(SKV_F32, back, all[b], dst, 8));
            CHECK(untouched(dst + 8 * skv_dtype_size(all[b]), sizeof dst - 8 * skv_dtype_size(all[b])),
                  "convert %d -> %d wrote past n", a, b);
            int ok = 1;
            for (int i = 0; i < 8; i++) /* these values are exact in every dtype */
                ok &= back[i] == src[i];
            CHECK(ok, "convert f32 -> %d -> %d -> f32 changed exact values", a, b);
        }
}

static void test_quantize(void)
{
    float x[4 * 8];
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i - 10) * 0.25f;
    uint8_t out[64];
    float sc[8];
#define Q_FAILS(...)                                                                          \
    do {                                                                                      \
        memset(out, SENT, sizeof out);                                                        \
        memset(sc, SENT, sizeof sc);                                                          \
        CHECK_STATUS(skv_quantize_fp8(__VA_ARGS__), SKV_ERR_INVALID_ARG);                     \
        CHECK(untouched(out, sizeof out) && untouched(sc, sizeof sc), "refused quantise wrote"); \
    } while (0)
    Q_FAILS(NULL, 4, 8, 8, 0, out, sc);
    Q_FAILS(x, 4, 8, 8, 0, NULL, sc);
    Q_FAILS(x, 4, 8, 8, 0, out, NULL);
    Q_FAILS(x, -1, 8, 8, 0, out, sc);
    Q_FAILS(x, INT64_MIN, 8, 8, 0, out, sc);
    Q_FAILS(x, 4, 0, 8, 0, out, sc);
    Q_FAILS(x, 4, -1, 8, 0, out, sc);
    Q_FAILS(x, 4, INT32_MIN, 8, 0, out, sc);
    Q_FAILS(x, 4, 8, 7, 0, out, sc);
    Q_FAILS(x, 4, 8, -8, 0, out, sc);
    Q_FAILS(x, 4, 8, 8, 8, out, sc);
    Q_FAILS(x, 4, 8, 8, 0x80000000u, out, sc);
    Q_FAILS(x, 4, 8, 8, SKV_QUANT_POW2_SCALE | 4, out, sc);
    Q_FAILS(x, 0, 0, 8, 0, out, sc); /* n_cols < 1 even with no rows */
#undef Q_FAILS
    /* valid: no rows; a stride wider than the row; both flag values */
    memset(out, SENT, sizeof out);
    memset(sc, SENT, sizeof sc);
    CHECK_OK(skv_quantize_fp8(NULL, 0, 8, 8, 0, NULL, NULL));
    CHECK_OK(skv_quantize_fp8(x, 0, 8, 8, 0, out, sc));
    CHECK(untouched(out, sizeof out) && untouched(sc, sizeof sc), "quantise of 0 rows wrote");
    CHECK_OK(skv_quantize_fp8(x, 2, 8, 16, SKV_QUANT_POW2_SCALE, out, sc));
    CHECK(untouched(out + 16, sizeof out - 16) && untouched(sc + 2, sizeof sc - 8), "quantise wrote past its rows");
    int ok = 1;
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 8; c++)
            ok &= fabsf(skv_fp8_to_f32(out[r * 8 + c]) * sc[r] - x[r * 16 + c]) <= 0.07f * fabsf(x[r * 16 + c]) + 1e-6f;
    CHECK(ok, "strided quantise reads the wrong rows");
}

/* ---- indexer kernels -------------------------------------------------------------------------- */

typedef struct idx_fixture {
    float q[2 * 4 * 8], w[2 * 4], k[10 * 8];
    uint8_t q8[2 * 4 * 8], k8[10 * 8];
    float qs[2 * 4], ks[10];
    int32_t pos[2];
} idx_fixture;

static void idx_fixture_init(idx_fixture *f)
{
    rng r = {42};
    for (int i = 0; i < 64; i++)
        f->q[i] = (float)rng_uniform(&r, -1, 1);
    for (int i = 0; i < 8; i++)
        f->w[i] = (float)rng_uniform(&r, 0.1, 1);
    for (int i = 0; i < 80; i++)
        f->k[i] = (float)rng_uniform(&r, -1, 1);
    skv_quantize_fp8(f->q, 8, 8, 8, 0, f->q8, f->qs);
    skv_quantize_fp8(f->k, 10, 8, 8, 0, f->k8, f->ks);
    f->pos[0] = 3, f->pos[1] = 9;
}

/* Both kernels refuse (q, keys) with `want`, writing nothing. */
static void idx_refused(skv_context *ctx, const skv_indexer_query *q, const skv_key_block *kb, skv_status want,
                        const char *what)
{
    float out[2 * 16 * 8], osc[2 * 16];
    int32_t oidx[2 * 16];
    memset(out, SENT, sizeof out), memset(osc, SENT, sizeof osc), memset(oidx, SENT, sizeof oidx);
    const size_t mem = skv_context_memory(ctx);
    skv_status s = skv_indexer_scores(ctx, q, kb, out);
    CHECK(s == want, "%s: scores gave %d (%s), want %d", what, s, skv_status_string(s), want);
    s = skv_indexer_topk(ctx, q, kb, 16, oidx, osc);
    CHECK(s == want, "%s: topk gave %d (%s), want %d", what, s, skv_status_string(s), want);
    CHECK(untouched(out, sizeof out) && untouched(osc, sizeof osc) && untouched(oidx, sizeof oidx),
          "%s: a refused call wrote its output", what);
    CHECK(skv_context_memory(ctx) == mem, "%s: a refused call changed the context's memory", what);
}

static void test_indexer(skv_context *ctx)
{
    idx_fixture f;
    idx_fixture_init(&f);
    const skv_indexer_query q0 = {2, 4, 8, SKV_F32, f.q, NULL, f.w, f.pos};
    const skv_key_block k0 = {10, 8, SKV_F32, f.k, NULL};
    const skv_indexer_query q8 = {2, 4, 8, SKV_FP8_E4M3, f.q8, f.qs, f.w, f.pos};
    const skv_key_block k8 = {10, 8, SKV_FP8_E4M3, f.k8, f.ks};
    skv_indexer_query q;
    skv_key_block kb;
    float out[2 * 16 * 8], osc[2 * 16];
    int32_t oidx[2 * 16];

    /* NULL context, query, keys, outputs */
    memset(out, SENT, sizeof out), memset(oidx, SENT, sizeof oidx);
    CHECK_STATUS(skv_indexer_scores(NULL, &q0, &k0, out), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_indexer_topk(NULL, &q0, &k0, 4, oidx, NULL), SKV_ERR_INVALID_ARG);
    CHECK(untouched(out, sizeof out) && untouched(oidx, sizeof oidx), "NULL context: output written");
    idx_refused(ctx, NULL, &k0, SKV_ERR_INVALID_ARG, "NULL query");
    idx_refused(ctx, &q0, NULL, SKV_ERR_INVALID_ARG, "NULL keys");
    CHECK_STATUS(skv_indexer_scores(ctx, &q0, &k0, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_indexer_topk(ctx, &q0, &k0, 4, NULL, osc), SKV_ERR_INVALID_ARG);
    q = q0, q.q = NULL;
    idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "NULL q");
    q = q0, q.weights = NULL;
    idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "NULL weights");
    kb = k0, kb.k = NULL;
    idx_refused(ctx, &q0, &kb, SKV_ERR_INVALID_ARG, "NULL k");

    /* sizes */
    static const int32_t bad_t[] = {-1, INT32_MIN};
    for (int i = 0; i < 2; i++) {
        q = q0, q.n_tokens = bad_t[i];
        idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "n_tokens < 0");
    }
    static const int32_t bad_h[] = {0, -1, 4097, INT32_MAX};
    for (int i = 0; i < 4; i++) {
        q = q0, q.n_heads = bad_h[i];
        idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "n_heads");
    }
    static const int32_t bad_d[] = {0, -1, 4097};
    for (int i = 0; i < 3; i++) {
        q = q0, q.head_dim = bad_d[i];
        kb = k0, kb.head_dim = bad_d[i];
        idx_refused(ctx, &q, &kb, SKV_ERR_INVALID_ARG, "head_dim out of range");
    }
    q = q0, q.head_dim = 4; /* same buffers, different head_dim */
    idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "head_dim of q != keys");
    kb = k0, kb.head_dim = 16;
    idx_refused(ctx, &q0, &kb, SKV_ERR_INVALID_ARG, "head_dim of keys != q");
    static const int64_t bad_l[] = {-1, INT64_MIN, (int64_t)INT32_MAX + 1, INT64_MAX};
    for (int i = 0; i < 4; i++) {
        kb = k0, kb.n_keys = bad_l[i]; /* the pointer holds 10 keys: refused before reading */
        idx_refused(ctx, &q0, &kb, SKV_ERR_INVALID_ARG, "n_keys out of range");
    }

    /* dtypes: F16 is served (test_q8.c); its arguments are checked like the others' */
    q = q0, q.dtype = SKV_F16, q.q_scale = f.qs;
    idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "F16 query with a scale");
    q = q0, q.dtype = SKV_F16, q.q = NULL;
    idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "F16 query, NULL q");
    kb = k0, kb.dtype = SKV_F16, kb.k = NULL;
    idx_refused(ctx, &q0, &kb, SKV_ERR_INVALID_ARG, "F16 keys, NULL k");
    kb = k0, kb.dtype = SKV_F16, kb.head_dim = 7;
    idx_refused(ctx, &q0, &kb, SKV_ERR_INVALID_ARG, "F16 keys, head_dim mismatch");
    static const skv_dtype bad_dt[] = {(skv_dtype)99, (skv_dtype)6, (skv_dtype)-1};
    for (int i = 0; i < 3; i++) {
        q = q0, q.dtype = bad_dt[i];
        idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "unknown query dtype");
        kb = k0, kb.dtype = bad_dt[i];
        idx_refused(ctx, &q0, &kb, SKV_ERR_INVALID_ARG, "unknown key dtype");
    }

    /* scales: required for FP8, refused otherwise */
    q = q8, q.q_scale = NULL; /* FP8 queries: NULL q_scale means scales of 1 */
    CHECK_OK(skv_indexer_scores(ctx, &q, &k8, out));
    q = q0, q.q_scale = f.qs;
    idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "F32 query with q_scale");
    kb = k8, kb.k_scale = NULL;
    idx_refused(ctx, &q8, &kb, SKV_ERR_INVALID_ARG, "FP8 keys without k_scale");
    kb = k0, kb.k_scale = f.ks;
    idx_refused(ctx, &q0, &kb, SKV_ERR_INVALID_ARG, "F32 keys with k_scale");
    q = q0, q.dtype = SKV_BF16, q.q_scale = f.qs;
    idx_refused(ctx, &q, &k0, SKV_ERR_INVALID_ARG, "BF16 query with q_scale");

    /* k */
    static const int32_t bad_k[] = {0, -1, INT32_MIN};
    for (int i = 0; i < 3; i++) {
        memset(oidx, SENT, sizeof oidx), memset(osc, SENT, sizeof osc);
        CHECK_STATUS(skv_indexer_topk(ctx, &q0, &k0, bad_k[i], oidx, osc), SKV_ERR_INVALID_ARG);
        CHECK(untouched(oidx, sizeof oidx) && untouched(osc, sizeof osc), "k=%d: output written", bad_k[i]);
    }

    /* ---- valid edge cases ---- */
    /* the mixed dtypes all work on this data */
    CHECK_OK(skv_indexer_topk(ctx, &q8, &k8, 4, oidx, osc));
    CHECK_OK(skv_indexer_topk(ctx, &q0, &k8, 4, oidx, osc));
    CHECK_OK(skv_indexer_topk(ctx, &q8, &k0, 4, oidx, osc));
    /* n_tokens = 0: nothing to do, outputs may be NULL */
    q = q0, q.n_tokens = 0, q.q = NULL, q.weights = NULL, q.positions = NULL;
    CHECK_OK(skv_indexer_scores(ctx, &q, &k0, NULL));
    CHECK_OK(skv_indexer_topk(ctx, &q, &k0, 5, NULL, NULL));
    /* n_keys = 0: no output for scores; top-k all padding */
    kb = k0, kb.n_keys = 0, kb.k = NULL;
    memset(out, SENT, sizeof out);
    CHECK_OK(skv_indexer_scores(ctx, &q0, &kb, out));
    CHECK(untouched(out, sizeof out), "scores over 0 keys wrote");
    CHECK_OK(skv_indexer_scores(ctx, &q0, &kb, NULL));
    memset(oidx, SENT, sizeof oidx), memset(osc, SENT, sizeof osc);
    CHECK_OK(skv_indexer_topk(ctx, &q0, &kb, 7, oidx, osc));
    int ok = 1;
    for (int i = 0; i < 14; i++)
        ok &= oidx[i] == -1 && osc[i] == -INFINITY;
    CHECK(ok && untouched(oidx + 14, sizeof oidx - 56), "top-k over 0 keys: want all -1 / -inf");
    /* k larger than the keys: every visible key, then padding; matches sorting the scores */
    float sc[2 * 10];
    CHECK_OK(skv_indexer_scores(ctx, &q0, &k0, sc));
    memset(oidx, SENT, sizeof oidx), memset(osc, SENT, sizeof osc);
    CHECK_OK(skv_indexer_topk(ctx, &q0, &k0, 16, oidx, osc));
    for (int t = 0; t < 2; t++) {
        int32_t want[16];
        float wantv[16];
        sort_topk(sc + t * 10, f.pos[t] + 1, 16, want, wantv);
        CHECK(!memcmp(want, oidx + t * 16, sizeof want) && !memcmp(wantv, osc + t * 16, sizeof wantv),
              "k > n_keys, token %d: not the sorted visible keys then padding", t);
        for (int s = f.pos[t] + 1; s < 10; s++)
            CHECK(sc[t * 10 + s] == -INFINITY, "invisible key %d of token %d scored %g", s, t, sc[t * 10 + s]);
    }
    /* out_score NULL */
    int32_t oidx2[32];
    CHECK_OK(skv_indexer_topk(ctx, &q0, &k0, 16, oidx2, NULL));
    CHECK(!memcmp(oidx, oidx2, sizeof oidx2), "top-k without scores differs");
    /* positions negative: nothing visible; positions past the end: everything */
    int32_t neg[2] = {-1, INT32_MIN}, big[2] = {10, INT32_MAX};
    q = q0, q.positions = neg;
    memset(out, SENT, sizeof out);
    CHECK_OK(skv_indexer_scores(ctx, &q, &k0, out));
    ok = 1;
    for (int i = 0; i < 20; i++)
        ok &= out[i] == -INFINITY;
    CHECK(ok && untouched(out + 20, sizeof out - 80), "nothing visible: scores must be -inf");
    CHECK_OK(skv_indexer_topk(ctx, &q, &k0, 3, oidx, osc));
    ok = 1;
    for (int i = 0; i < 6; i++)
        ok &= oidx[i] == -1 && osc[i] == -INFINITY;
    CHECK(ok, "nothing visible: top-k must be all padding");
    q.positions = big;
    CHECK_OK(skv_indexer_scores(ctx, &q, &k0, out));
    q.positions = NULL;
    CHECK_OK(skv_indexer_scores(ctx, &q, &k0, sc));
    CHECK(!memcmp(out, sc, sizeof sc), "positions past the end differ from NULL positions");
}

/* ---- skv_topk_rows ---------------------------------------------------------------------------- */

static void test_topk_rows(skv_context *ctx)
{
    float x[3 * 12];
    rng r = {7};
    for (int i = 0; i < 36; i++)
        x[i] = (float)rng_uniform(&r, -1, 1);
    int32_t idx[3 * 16];
    float val[3 * 16];
    int64_t lens[3] = {10, 10, 10};
#define ROWS_FAILS(...)                                                                       \
    do {                                                                                      \
        memset(idx, SENT, sizeof idx), memset(val, SENT, sizeof val);                         \
        const size_t mem_ = skv_context_memory(ctx);                                          \
        CHECK_STATUS(skv_topk_rows(__VA_ARGS__), SKV_ERR_INVALID_ARG);                        \
        CHECK(untouched(idx, sizeof idx) && untouched(val, sizeof val), "refused topk_rows wrote"); \
        CHECK(skv_context_memory(ctx) == mem_, "refused topk_rows changed memory");           \
    } while (0)
    ROWS_FAILS(NULL, x, 3, 10, 12, NULL, 4, idx, val);
    ROWS_FAILS(ctx, NULL, 3, 10, 12, NULL, 4, idx, val);
    ROWS_FAILS(ctx, x, 3, 10, 12, NULL, 4, NULL, val);
    ROWS_FAILS(ctx, x, -1, 10, 12, NULL, 4, idx, val);
    ROWS_FAILS(ctx, x, 3, -1, 12, NULL, 4, idx, val);
    ROWS_FAILS(ctx, x, 3, 10, 9, NULL, 4, idx, val);                     /* row_stride < n_cols */
    ROWS_FAILS(ctx, x, 3, 10, -12, NULL, 4, idx, val);
    ROWS_FAILS(ctx, x, 3, (int64_t)INT32_MAX + 1, (int64_t)INT32_MAX + 1, NULL, 4, idx, val);
    ROWS_FAILS(ctx, x, 1, INT64_MAX, INT64_MAX, NULL, 4, idx, val);
    ROWS_FAILS(ctx, x, 3, 10, 12, NULL, 0, idx, val);
    ROWS_FAILS(ctx, x, 3, 10, 12, NULL, -1, idx, val);
    ROWS_FAILS(ctx, x, 3, 10, 12, NULL, INT32_MIN, idx, val);
    lens[2] = 11; /* > n_cols, in the last row: no row may be written first */
    ROWS_FAILS(ctx, x, 3, 10, 12, lens, 4, idx, val);
    lens[2] = -1;
    ROWS_FAILS(ctx, x, 3, 10, 12, lens, 4, idx, val);
    lens[2] = INT64_MIN;
    ROWS_FAILS(ctx, x, 3, 10, 12, lens, 4, idx, val);
#undef ROWS_FAILS

    /* valid: no rows (NULLs fine), no columns, lengths of 0 and n_cols, k > n_cols, stride > n_cols */
    CHECK_OK(skv_topk_rows(ctx, NULL, 0, 10, 12, NULL, 4, NULL, NULL));
    memset(idx, SENT, sizeof idx), memset(val, SENT, sizeof val);
    CHECK_OK(skv_topk_rows(ctx, NULL, 3, 0, 0, NULL, 2, idx, val));
    int ok = 1;
    for (int i = 0; i < 6; i++)
        ok &= idx[i] == -1 && val[i] == -INFINITY;
    CHECK(ok && untouched(idx + 6, sizeof idx - 24), "topk_rows of 0 columns: want padding");
    lens[0] = 0, lens[1] = 10, lens[2] = 4;
    memset(idx, SENT, sizeof idx), memset(val, SENT, sizeof val);
    CHECK_OK(skv_topk_rows(ctx, x, 3, 10, 12, lens, 16, idx, val));
    for (int rr = 0; rr < 3; rr++) {
        int32_t want[16];
        float wantv[16];
        sort_topk(x + rr * 12, lens[rr], 16, want, wantv);
        CHECK(!memcmp(want, idx + rr * 16, sizeof want) && !memcmp(wantv, val + rr * 16, sizeof wantv),
              "topk_rows row %d (length %lld, k 16): not the sorted row", rr, (long long)lens[rr]);
    }
    int32_t idx2[3 * 16];
    CHECK_OK(skv_topk_rows(ctx, x, 3, 10, 12, lens, 16, idx2, NULL));
    CHECK(!memcmp(idx, idx2, sizeof idx2), "topk_rows without values differs");
}

/* ---- key cache -------------------------------------------------------------------------------- */

static skv_kcache *const KC_NOT_SET = (skv_kcache *)(uintptr_t)0x1234;

static void test_kcache_create(skv_context *ctx)
{
    skv_kcache_params p;
    skv_kcache_params_init(&p);
    CHECK(p.struct_size == sizeof p && p.n_layers == 1 && p.head_dim == 128 && p.dtype == SKV_FP8_E4M3 &&
              p.page_tokens == 64 && p.max_pages == 0 && p.max_seqs == 0 && p.quant_flags == 0,
          "key cache defaults");
    skv_kcache *c = KC_NOT_SET;
    CHECK_STATUS(skv_kcache_create(NULL, &p, &c), SKV_ERR_INVALID_ARG);
    CHECK(c == NULL, "NULL context: *out not cleared");
    CHECK_STATUS(skv_kcache_create(ctx, NULL, &c), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_create(ctx, &p, NULL), SKV_ERR_INVALID_ARG);
    const size_t mem = skv_context_memory(ctx);
    typedef struct bad { const char *what; skv_kcache_params p; skv_status want; } bad;
    bad cases[32];
    int n = 0;
#define BAD(field, value, st)                                                                 \
    do {                                                                                      \
        cases[n].what = #field " = " #value;                                                  \
        skv_kcache_params_init(&cases[n].p);                                                  \
        cases[n].p.field = (value);                                                           \
        cases[n++].want = (st);                                                               \
    } while (0)
    BAD(struct_size, 0, SKV_ERR_INVALID_ARG);
    BAD(struct_size, sizeof(skv_kcache_params) - 1, SKV_ERR_INVALID_ARG);
    BAD(struct_size, sizeof(skv_kcache_params) + 8, SKV_ERR_INVALID_ARG);
    BAD(n_layers, 0, SKV_ERR_INVALID_ARG);
    BAD(n_layers, -1, SKV_ERR_INVALID_ARG);
    BAD(n_layers, INT32_MIN, SKV_ERR_INVALID_ARG);
    BAD(head_dim, 0, SKV_ERR_INVALID_ARG);
    BAD(head_dim, -1, SKV_ERR_INVALID_ARG);
    BAD(head_dim, 4097, SKV_ERR_INVALID_ARG);
    BAD(page_tokens, 0, SKV_ERR_INVALID_ARG);
    BAD(page_tokens, -64, SKV_ERR_INVALID_ARG);
    BAD(page_tokens, 65537, SKV_ERR_INVALID_ARG);
    BAD(max_pages, -1, SKV_ERR_INVALID_ARG);
    BAD(max_pages, INT64_MIN, SKV_ERR_INVALID_ARG);
    BAD(max_seqs, -1, SKV_ERR_INVALID_ARG);
    BAD(quant_flags, 4, SKV_ERR_INVALID_ARG);
    BAD(quant_flags, 0xffffffffu, SKV_ERR_INVALID_ARG);
    BAD(dtype, (skv_dtype)6, SKV_ERR_INVALID_ARG);
    BAD(dtype, (skv_dtype)99, SKV_ERR_INVALID_ARG);
    BAD(dtype, (skv_dtype)-1, SKV_ERR_INVALID_ARG);
    BAD(lane_copy, 2, SKV_ERR_INVALID_ARG);
    BAD(lane_copy, -1, SKV_ERR_INVALID_ARG);
#define BAD_LANES(field, value) /* a lane copy where its layout cannot be kept */              \
    do {                                                                                      \
        BAD(field, value, SKV_ERR_INVALID_ARG);                                               \
        cases[n - 1].what = "lane_copy = 1 with " #field " = " #value;                        \
        cases[n - 1].p.lane_copy = 1;                                                         \
    } while (0)
    BAD_LANES(dtype, SKV_BF16);
    BAD_LANES(head_dim, 48);
    BAD_LANES(page_tokens, 40);
#undef BAD_LANES
#undef BAD
    for (int i = 0; i < n; i++) {
        c = KC_NOT_SET;
        const skv_status s = skv_kcache_create(ctx, &cases[i].p, &c);
        CHECK(s == cases[i].want, "kcache_create with %s: %d (%s), want %d", cases[i].what, s,
              skv_status_string(s), cases[i].want);
        CHECK(c == KC_NOT_SET || c == NULL, "kcache_create with %s: output written", cases[i].what);
        if (s == SKV_OK && c && c != KC_NOT_SET)
            skv_kcache_destroy(c);
        CHECK(skv_context_memory(ctx) == mem, "kcache_create with %s: memory changed", cases[i].what);
    }
    /* valid extremes */
    skv_kcache_params_init(&p);
    p.head_dim = 4096, p.page_tokens = 65536, p.n_layers = 1, p.dtype = SKV_BF16, p.quant_flags = 1;
    c = NULL;
    CHECK_OK(skv_kcache_create(ctx, &p, &c));
    skv_kcache_destroy(c);
    p.head_dim = 1, p.page_tokens = 1, p.dtype = SKV_F32;
    c = NULL;
    CHECK_OK(skv_kcache_create(ctx, &p, &c));
    skv_kcache_destroy(c);
    skv_kcache_params_init(&p); /* a lane copy: FP8, head_dim 32, pages of 16 */
    p.head_dim = 32, p.page_tokens = 16, p.lane_copy = 1;
    c = NULL;
    CHECK_OK(skv_kcache_create(ctx, &p, &c));
    skv_kcache_destroy(c);
    CHECK(skv_context_memory(ctx) == mem, "create/destroy leaked %zu bytes", skv_context_memory(ctx) - mem);
}

/* What must not change: stats, and lengths and contents of the listed sequences. */
typedef struct snap {
    skv_kcache_stats st;
    int n;
    int32_t ids[4];
    int64_t len[4][2];
    uint8_t *data[4][2];
    size_t mem;
} snap;

typedef struct kc_fixture {
    skv_context *ctx;
    skv_kcache *c;
    skv_dtype dt;
    int32_t a, b, freed, never;
    size_t row;
} kc_fixture;

static void snap_take(const kc_fixture *f, snap *s)
{
    memset(s, 0, sizeof *s);
    s->st.struct_size = sizeof s->st;
    CHECK_OK(skv_kcache_get_stats(f->c, &s->st));
    s->ids[0] = f->a, s->ids[1] = f->b, s->n = 2;
    for (int i = 0; i < s->n; i++)
        for (int32_t l = 0; l < 2; l++) {
            CHECK_OK(skv_kcache_seq_length(f->c, s->ids[i], l, &s->len[i][l]));
            const int64_t n = s->len[i][l];
            s->data[i][l] = xmalloc((size_t)n * (f->row + 4));
            memset(s->data[i][l], 0, (size_t)n * (f->row + 4));
            CHECK_OK(skv_kcache_read(f->c, s->ids[i], l, 0, n, s->data[i][l],
                                     f->dt == SKV_FP8_E4M3 ? (float *)(s->data[i][l] + n * f->row) : NULL));
        }
    s->mem = skv_context_memory(f->ctx);
}

static void snap_free(snap *s)
{
    for (int i = 0; i < s->n; i++)
        for (int l = 0; l < 2; l++)
            free(s->data[i][l]);
}

static snap cur_snap;

static void kc_begin(const kc_fixture *f)
{
    snap_take(f, &cur_snap);
}

/* The cache is exactly as at kc_begin, and so is the context's memory unless valid kernel
 * calls in between may have grown its workspace. */
static void kc_same(const kc_fixture *f, const char *what, int mem_too)
{
    snap now;
    snap_take(f, &now);
    int same = !memcmp(&now.st, &cur_snap.st, sizeof now.st) && (!mem_too || now.mem == cur_snap.mem);
    for (int i = 0; i < now.n; i++)
        for (int l = 0; l < 2; l++)
            same &= now.len[i][l] == cur_snap.len[i][l] &&
                    !memcmp(now.data[i][l], cur_snap.data[i][l], (size_t)now.len[i][l] * (f->row + 4));
    CHECK(same, "%s (%s cache): a refused call changed the cache", what,
          f->dt == SKV_F32 ? "f32" : f->dt == SKV_BF16 ? "bf16" : "fp8");
    snap_free(&now);
}

static void kc_unchanged(const kc_fixture *f, const char *what) { kc_same(f, what, 1); }

static void kc_open(kc_fixture *f, skv_context *ctx, skv_dtype dt)
{
    memset(f, 0, sizeof *f);
    f->ctx = ctx;
    f->dt = dt;
    skv_kcache_params p;
    skv_kcache_params_init(&p);
    p.n_layers = 2, p.head_dim = 8, p.dtype = dt, p.page_tokens = 4;
    CHECK_OK(skv_kcache_create(ctx, &p, &f->c));
    if (!f->c)
        exit(2);
    f->row = 8 * skv_dtype_size(dt);
    float k[16 * 8];
    rng r = {dt + 1};
    for (int i = 0; i < 128; i++)
        k[i] = (float)rng_uniform(&r, -1, 1);
    const skv_key_block kb = {10, 8, SKV_F32, k, NULL}, kb1 = {6, 8, SKV_F32, k + 40, NULL};
    CHECK_OK(skv_kcache_seq_create(f->c, &f->a));
    CHECK_OK(skv_kcache_append(f->c, f->a, 0, &kb));
    CHECK_OK(skv_kcache_append(f->c, f->a, 1, &kb1));
    CHECK_OK(skv_kcache_seq_fork(f->c, f->a, &f->b));
    CHECK_OK(skv_kcache_append(f->c, f->b, 0, &kb1));
    CHECK_OK(skv_kcache_seq_create(f->c, &f->freed));
    CHECK_OK(skv_kcache_seq_free(f->c, f->freed));
    f->never = 1000;
}

static void kc_close(kc_fixture *f)
{
    skv_kcache_destroy(f->c);
}

typedef struct ovf_arg { kc_fixture *f; } ovf_arg;

/* Appending INT64_MAX keys to a non-empty sequence: len + n overflows. */
static int ovf_append(void *arg)
{
    kc_fixture *f = ((ovf_arg *)arg)->f;
    float k[8] = {0};
    float sc = 1;
    const skv_key_block kb = {INT64_MAX, 8, f->dt, k, f->dt == SKV_FP8_E4M3 ? &sc : NULL};
    kc_begin(f);
    CHECK_STATUS(skv_kcache_append(f->c, f->a, 0, &kb), SKV_ERR_INVALID_ARG);
    kc_unchanged(f, "append of INT64_MAX keys");
    const skv_key_block kb2 = {INT64_MAX - 5, 8, SKV_F32, k, NULL};
    CHECK_STATUS(skv_kcache_append(f->c, f->a, 1, &kb2), SKV_ERR_INVALID_ARG);
    kc_unchanged(f, "append of INT64_MAX - 5 keys");
    return 0;
}

/* Reading n = INT64_MAX keys from start 1: start + n overflows. */
static int ovf_read(void *arg)
{
    kc_fixture *f = ((ovf_arg *)arg)->f;
    uint8_t out[64];
    float sc[8];
    memset(out, SENT, sizeof out), memset(sc, SENT, sizeof sc);
    float *scp = f->dt == SKV_FP8_E4M3 ? sc : NULL;
    CHECK_STATUS(skv_kcache_read(f->c, f->a, 0, 1, INT64_MAX, out, scp), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_read(f->c, f->a, 0, INT64_MAX, INT64_MAX, out, scp), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_read(f->c, f->a, 0, INT64_MAX, 1, out, scp), SKV_ERR_INVALID_ARG);
    CHECK(untouched(out, sizeof out) && untouched(sc, sizeof sc), "overflowing read wrote");
    return 0;
}

static void test_kcache_ops(skv_context *ctx, skv_dtype dt)
{
    kc_fixture f;
    kc_open(&f, ctx, dt);
    const int fp8 = dt == SKV_FP8_E4M3;
    int32_t out = 4242;
    int64_t len = 777;
    const int32_t dead[] = {-1, INT32_MIN, f.freed, f.never, INT32_MAX, 1 << 30};

    kc_begin(&f);
    /* seq_create / seq_free / seq_fork */
    CHECK_STATUS(skv_kcache_seq_create(NULL, &out), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_create(f.c, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_free(NULL, f.a), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_fork(NULL, f.a, &out), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_fork(f.c, f.a, NULL), SKV_ERR_INVALID_ARG);
    for (int i = 0; i < 6; i++) {
        CHECK_STATUS(skv_kcache_seq_free(f.c, dead[i]), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_kcache_seq_fork(f.c, dead[i], &out), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_kcache_seq_remove(f.c, dead[i], 0, -1), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_kcache_seq_length(f.c, dead[i], 0, &len), SKV_ERR_INVALID_ARG);
    }
    CHECK(out == 4242 && len == 777, "refused calls wrote their outputs");
    kc_unchanged(&f, "sequence calls on invalid ids");

    /* seq_remove */
    CHECK_STATUS(skv_kcache_seq_remove(NULL, f.a, 0, 1), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_remove(f.c, f.a, -1, 3), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_remove(f.c, f.a, INT64_MIN, -1), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_remove(f.c, f.a, 5, 3), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_remove(f.c, f.a, 5, 0), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_remove(f.c, f.a, 100, 50), SKV_ERR_INVALID_ARG);
    kc_unchanged(&f, "remove with bad ranges");
    /* valid no-ops: past the end, empty ranges */
    CHECK_OK(skv_kcache_seq_remove(f.c, f.a, 10, -1));
    CHECK_OK(skv_kcache_seq_remove(f.c, f.a, 100, -1));
    CHECK_OK(skv_kcache_seq_remove(f.c, f.a, INT64_MAX, -1));
    CHECK_OK(skv_kcache_seq_remove(f.c, f.a, 3, 3));
    CHECK_OK(skv_kcache_seq_remove(f.c, f.a, 50, 60));
    kc_unchanged(&f, "remove of nothing");

    /* seq_length */
    CHECK_STATUS(skv_kcache_seq_length(NULL, f.a, 0, &len), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_length(f.c, f.a, -1, &len), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_length(f.c, f.a, 2, &len), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_length(f.c, f.a, INT32_MAX, &len), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_seq_length(f.c, f.a, 0, NULL), SKV_ERR_INVALID_ARG);
    CHECK(len == 777, "refused seq_length wrote");

    /* append */
    float k[16 * 8] = {0}, ksc[16];
    uint16_t kbf[16 * 8] = {0};
    for (int i = 0; i < 16; i++)
        ksc[i] = 0.5f;
    for (int i = 0; i < 128; i++)
        k[i] = (float)i / 64;
    const skv_key_block good = {3, 8, dt, fp8 ? (const void *)k : dt == SKV_BF16 ? (const void *)kbf : k,
                                fp8 ? ksc : NULL};
    skv_key_block kb;
#define APPEND_FAILS(seq, layer, kbp, want, what)                                             \
    do {                                                                                      \
        CHECK_STATUS(skv_kcache_append(f.c, (seq), (layer), (kbp)), (want));                  \
        kc_unchanged(&f, what);                                                               \
    } while (0)
    APPEND_FAILS(f.a, 0, NULL, SKV_ERR_INVALID_ARG, "append of NULL keys");
    CHECK_STATUS(skv_kcache_append(NULL, f.a, 0, &good), SKV_ERR_INVALID_ARG);
    for (int i = 0; i < 6; i++)
        APPEND_FAILS(dead[i], 0, &good, SKV_ERR_INVALID_ARG, "append to an invalid sequence");
    APPEND_FAILS(f.a, -1, &good, SKV_ERR_INVALID_ARG, "append to layer -1");
    APPEND_FAILS(f.a, 2, &good, SKV_ERR_INVALID_ARG, "append to layer n_layers");
    kb = good, kb.head_dim = 7;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append with another head_dim");
    kb = good, kb.head_dim = 16;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append with another head_dim");
    kb = good, kb.n_keys = -1;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of -1 keys");
    kb = good, kb.n_keys = INT64_MIN;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of INT64_MIN keys");
    kb = good, kb.n_keys = (int64_t)INT32_MAX + 1;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of INT32_MAX + 1 keys");
    kb = good, kb.n_keys = (int64_t)INT32_MAX - 9; /* the layer holds 10: one too many */
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append past INT32_MAX keys in a layer");
    kb = good, kb.k = NULL;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append with NULL k");
    kb = good, kb.dtype = SKV_F16, kb.k_scale = NULL;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of F16 keys (neither the cache dtype nor F32)");
    kb = good, kb.dtype = (skv_dtype)99, kb.k_scale = NULL;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of dtype 99");
    if (dt != SKV_BF16) {
        kb = good, kb.dtype = SKV_BF16, kb.k = kbf, kb.k_scale = NULL;
        APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of BF16 keys to another dtype's cache");
    } else {
        kb = good, kb.dtype = SKV_FP8_E4M3, kb.k_scale = ksc;
        APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of FP8 keys to a BF16 cache");
    }
    kb = good, kb.dtype = SKV_F32, kb.k = k, kb.k_scale = ksc;
    APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of F32 keys with k_scale");
    if (fp8) {
        kb = good, kb.k_scale = NULL;
        APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append of FP8 keys without k_scale");
    } else {
        kb = good, kb.k_scale = ksc;
        APPEND_FAILS(f.a, 0, &kb, SKV_ERR_INVALID_ARG, "append with k_scale to a non-FP8 cache");
    }
#undef APPEND_FAILS
    /* valid: zero keys, k may be NULL */
    kb = good, kb.n_keys = 0, kb.k = NULL;
    CHECK_OK(skv_kcache_append(f.c, f.a, 1, &kb));
    kb = good, kb.n_keys = 0, kb.k = NULL, kb.dtype = SKV_F32, kb.k_scale = NULL;
    CHECK_OK(skv_kcache_append(f.c, f.b, 0, &kb));
    kc_unchanged(&f, "append of 0 keys");

    /* read */
    uint8_t buf[32 * 8 * 4];
    float sbuf[32];
    float *scp = fp8 ? sbuf : NULL;
#define READ_FAILS(seq, layer, start, n, ko, so, what)                                        \
    do {                                                                                      \
        memset(buf, SENT, sizeof buf), memset(sbuf, SENT, sizeof sbuf);                       \
        CHECK_STATUS(skv_kcache_read(f.c, (seq), (layer), (start), (n), (ko), (so)), SKV_ERR_INVALID_ARG); \
        CHECK(untouched(buf, sizeof buf) && untouched(sbuf, sizeof sbuf), "%s: output written", what); \
    } while (0)
    memset(buf, SENT, sizeof buf);
    CHECK_STATUS(skv_kcache_read(NULL, f.a, 0, 0, 1, buf, scp), SKV_ERR_INVALID_ARG);
    for (int i = 0; i < 6; i++)
        READ_FAILS(dead[i], 0, 0, 1, buf, scp, "read of an invalid sequence");
    READ_FAILS(f.a, -1, 0, 1, buf, scp, "read of layer -1");
    READ_FAILS(f.a, 2, 0, 1, buf, scp, "read of layer n_layers");
    READ_FAILS(f.a, 0, -1, 1, buf, scp, "read from -1");
    READ_FAILS(f.a, 0, 0, -1, buf, scp, "read of -1 keys");
    READ_FAILS(f.a, 0, 0, 11, buf, scp, "read of one key past the end");
    READ_FAILS(f.a, 0, 10, 1, buf, scp, "read at the end");
    READ_FAILS(f.a, 1, 5, 2, buf, scp, "read past the end of layer 1");
    READ_FAILS(f.a, 0, 11, 0, buf, scp, "read of 0 keys past the end");
    READ_FAILS(f.a, 0, 0, 2, NULL, scp, "read into NULL");
    READ_FAILS(f.a, 0, 0, 2, buf, fp8 ? NULL : sbuf, fp8 ? "FP8 read without scales" : "read with scales from a non-FP8 cache");
#undef READ_FAILS
    /* valid: 0 keys at the end, NULL outputs */
    CHECK_OK(skv_kcache_read(f.c, f.a, 0, 10, 0, NULL, NULL));
    CHECK_OK(skv_kcache_read(f.c, f.a, 1, 0, 0, NULL, NULL));

    /* scores / topk over the cache */
    idx_fixture fx;
    idx_fixture_init(&fx);
    const skv_indexer_query q0 = {2, 4, 8, SKV_F32, fx.q, NULL, fx.w, fx.pos};
    skv_indexer_query q;
    float out_s[2 * 16], osc[2 * 16];
    int32_t oidx[2 * 16];
#define KQ_FAILS(seq, layer, qp, k_, want, what)                                              \
    do {                                                                                      \
        memset(out_s, SENT, sizeof out_s), memset(osc, SENT, sizeof osc), memset(oidx, SENT, sizeof oidx); \
        const size_t mem_ = skv_context_memory(ctx);                                          \
        CHECK_STATUS(skv_kcache_scores(f.c, (seq), (layer), (qp), out_s), (want));            \
        CHECK_STATUS(skv_kcache_topk(f.c, (seq), (layer), (qp), (k_), oidx, osc), (want));    \
        CHECK(untouched(out_s, sizeof out_s) && untouched(osc, sizeof osc) && untouched(oidx, sizeof oidx), \
              "%s: output written", what);                                                   \
        CHECK(skv_context_memory(ctx) == mem_, "%s: memory changed", what);                  \
    } while (0)
    CHECK_STATUS(skv_kcache_scores(NULL, f.a, 0, &q0, out_s), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_topk(NULL, f.a, 0, &q0, 4, oidx, osc), SKV_ERR_INVALID_ARG);
    for (int i = 0; i < 6; i++)
        KQ_FAILS(dead[i], 0, &q0, 4, SKV_ERR_INVALID_ARG, "paged indexer on an invalid sequence");
    KQ_FAILS(f.a, -1, &q0, 4, SKV_ERR_INVALID_ARG, "paged indexer on layer -1");
    KQ_FAILS(f.a, 2, &q0, 4, SKV_ERR_INVALID_ARG, "paged indexer on layer n_layers");
    KQ_FAILS(f.a, 0, NULL, 4, SKV_ERR_INVALID_ARG, "paged indexer with NULL query");
    q = q0, q.head_dim = 4;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_INVALID_ARG, "paged indexer, head_dim mismatch");
    q = q0, q.n_heads = 0;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_INVALID_ARG, "paged indexer, 0 heads");
    q = q0, q.n_tokens = -1;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_INVALID_ARG, "paged indexer, -1 tokens");
    q = q0, q.q = NULL;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_INVALID_ARG, "paged indexer, NULL q");
    q = q0, q.weights = NULL;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_INVALID_ARG, "paged indexer, NULL weights");
    q = q0, q.dtype = SKV_Q8_0;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_UNSUPPORTED, "paged indexer, Q8_0 query (a key dtype)");
    q = q0, q.dtype = (skv_dtype)99;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_INVALID_ARG, "paged indexer, query dtype 99");
    q = q0, q.q_scale = fx.qs;
    KQ_FAILS(f.a, 0, &q, 4, SKV_ERR_INVALID_ARG, "paged indexer, F32 query with q_scale");
    q = q0, q.dtype = SKV_FP8_E4M3, q.q = fx.q8; /* NULL q_scale: scales of 1 */
    CHECK_OK(skv_kcache_scores(f.c, f.a, 0, &q, out_s));
    memset(oidx, SENT, sizeof oidx), memset(osc, SENT, sizeof osc);
    CHECK_STATUS(skv_kcache_topk(f.c, f.a, 0, &q0, 0, oidx, osc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_topk(f.c, f.a, 0, &q0, -5, oidx, osc), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_topk(f.c, f.a, 0, &q0, 4, NULL, osc), SKV_ERR_INVALID_ARG);
    CHECK(untouched(oidx, sizeof oidx) && untouched(osc, sizeof osc), "refused paged topk wrote");
    CHECK_STATUS(skv_kcache_scores(f.c, f.a, 0, &q0, NULL), SKV_ERR_INVALID_ARG);
#undef KQ_FAILS
    /* valid: a fresh (empty) sequence; k beyond the keys; nothing visible; no tokens */
    int32_t e = -1;
    CHECK_OK(skv_kcache_seq_create(f.c, &e));
    memset(oidx, SENT, sizeof oidx), memset(osc, SENT, sizeof osc);
    CHECK_OK(skv_kcache_topk(f.c, e, 1, &q0, 5, oidx, osc));
    int ok = 1;
    for (int i = 0; i < 10; i++)
        ok &= oidx[i] == -1 && osc[i] == -INFINITY;
    CHECK(ok && untouched(oidx + 10, sizeof oidx - 40), "top-k of an empty sequence: want padding");
    memset(out_s, SENT, sizeof out_s);
    CHECK_OK(skv_kcache_scores(f.c, e, 0, &q0, out_s));
    CHECK_OK(skv_kcache_scores(f.c, e, 0, &q0, NULL));
    CHECK(untouched(out_s, sizeof out_s), "scores of an empty sequence wrote");
    CHECK_OK(skv_kcache_seq_free(f.c, e));
    float sc[2 * 10];
    CHECK_OK(skv_kcache_scores(f.c, f.a, 0, &q0, sc));
    CHECK_OK(skv_kcache_topk(f.c, f.a, 0, &q0, 16, oidx, osc));
    for (int t = 0; t < 2; t++) {
        int32_t want[16];
        sort_topk(sc + t * 10, fx.pos[t] + 1, 16, want, NULL);
        CHECK(!memcmp(want, oidx + t * 16, sizeof want), "paged top-k, k > keys, token %d", t);
    }
    int32_t neg[2] = {-1, -100};
    q = q0, q.positions = neg;
    CHECK_OK(skv_kcache_topk(f.c, f.a, 0, &q, 3, oidx, osc));
    ok = 1;
    for (int i = 0; i < 6; i++)
        ok &= oidx[i] == -1 && osc[i] == -INFINITY;
    CHECK(ok, "paged top-k with nothing visible: want padding");
    q = q0, q.n_tokens = 0, q.q = NULL, q.weights = NULL;
    CHECK_OK(skv_kcache_topk(f.c, f.a, 0, &q, 3, NULL, NULL));
    CHECK_OK(skv_kcache_scores(f.c, f.a, 0, &q, NULL));
    kc_same(&f, "valid paged indexer calls", 0);
    snap_free(&cur_snap);
    kc_begin(&f);

    /* get_stats */
    skv_kcache_stats st, st0;
    memset(&st, SENT, sizeof st);
    CHECK_STATUS(skv_kcache_get_stats(NULL, &st), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_kcache_get_stats(f.c, NULL), SKV_ERR_INVALID_ARG);
    static const size_t small[] = {0, 1, sizeof(skv_kcache_stats) - 1, sizeof(size_t) + sizeof(int32_t)};
    for (int i = 0; i < 4; i++) {
        memset(&st, SENT, sizeof st);
        st.struct_size = small[i];
        memcpy(&st0, &st, sizeof st);
        CHECK_STATUS(skv_kcache_get_stats(f.c, &st), SKV_ERR_INVALID_ARG);
        CHECK(!memcmp(&st, &st0, sizeof st), "get_stats with struct_size %zu wrote", small[i]);
    }
    struct { skv_kcache_stats s; uint8_t tail[16]; } big;
    memset(&big, SENT, sizeof big);
    big.s.struct_size = sizeof big;
    CHECK_OK(skv_kcache_get_stats(f.c, &big.s));
    CHECK(big.s.n_seqs == 2 && big.s.pages_in_use > 0 && untouched(big.tail, sizeof big.tail),
          "get_stats with a larger struct_size");

    /* calls whose size arithmetic can overflow, in a child process */
    ovf_arg oa = {&f};
    char what[96];
    snprintf(what, sizeof what, "skv_kcache_append of INT64_MAX keys (%s cache)", fp8 ? "fp8" : dt == SKV_BF16 ? "bf16" : "f32");
    isolated(what, ovf_append, &oa);
    snprintf(what, sizeof what, "skv_kcache_read with start + n overflowing (%s cache)", fp8 ? "fp8" : dt == SKV_BF16 ? "bf16" : "f32");
    isolated(what, ovf_read, &oa);
    kc_unchanged(&f, "after the overflow checks");

    snap_free(&cur_snap);
    kc_close(&f);
}

/* max_seqs: refused create and fork write nothing */
static void test_kcache_capacity(skv_context *ctx)
{
    skv_kcache_params p;
    skv_kcache_params_init(&p);
    p.max_seqs = 1, p.max_pages = 1, p.head_dim = 4, p.page_tokens = 2, p.dtype = SKV_F32;
    skv_kcache *c = NULL;
    CHECK_OK(skv_kcache_create(ctx, &p, &c));
    if (!c)
        return;
    int32_t a = -1, out = 4242;
    CHECK_OK(skv_kcache_seq_create(c, &a));
    CHECK_STATUS(skv_kcache_seq_create(c, &out), SKV_ERR_CAPACITY);
    CHECK_STATUS(skv_kcache_seq_fork(c, a, &out), SKV_ERR_CAPACITY);
    CHECK(out == 4242, "refused create/fork wrote the id");
    float k[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    const skv_key_block kb = {3, 4, SKV_F32, k, NULL};
    CHECK_STATUS(skv_kcache_append(c, a, 0, &kb), SKV_ERR_CAPACITY);
    int64_t len = -1;
    CHECK_OK(skv_kcache_seq_length(c, a, 0, &len));
    CHECK(len == 0, "refused append changed the length to %lld", (long long)len);
    skv_kcache_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_kcache_get_stats(c, &st));
    CHECK(st.pages_in_use == 0 && st.n_seqs == 1, "refused append took pages");
    skv_kcache_destroy(c);
}

/* ---- constructors on error ------------------------------------------------------------------ */

/* common.h: a constructor that fails sets *out to NULL, whatever the error (a NULL context,
 * NULL or bad parameters), so that a host may destroy *out after any failed build. */
#define GARBAGE ((void *)(uintptr_t)0x5a5a5a5a)
#define CLEARS(call, out, what)                                                               \
    do {                                                                                      \
        out = GARBAGE;                                                                        \
        const skv_status st_ = (call);                                                        \
        CHECK(st_ != SKV_OK && out == NULL, "%s: status %d, *out %p", what, st_, (void *)out);   \
    } while (0)

static void test_constructors_clear_out(skv_context *ctx)
{
    skv_context *cx;
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = -1;
    CLEARS(skv_context_create(&cp, &cx), cx, "context, n_threads -1");

    skv_kcache_params kp;
    skv_kcache_params_init(&kp);
    skv_kcache *kc;
    CLEARS(skv_kcache_create(NULL, &kp, &kc), kc, "kcache, NULL context");
    CLEARS(skv_kcache_create(ctx, NULL, &kc), kc, "kcache, NULL params");
    kp.struct_size = 1;
    CLEARS(skv_kcache_create(ctx, &kp, &kc), kc, "kcache, bad struct_size");

    static const skv_layer_role roles[2] = {SKV_LAYER_FULL, SKV_LAYER_SHARED};
    skv_reuse_plan *plan;
    CLEARS(skv_reuse_plan_from_roles(NULL, roles, 2, NULL, 0, &plan), plan, "plan from roles, NULL context");
    CLEARS(skv_reuse_plan_from_roles(ctx, NULL, 2, NULL, 0, &plan), plan, "plan from roles, NULL roles");
    CLEARS(skv_reuse_plan_from_roles(ctx, roles, 0, NULL, 0, &plan), plan, "plan from roles, 0 layers");
    CLEARS(skv_reuse_plan_from_string(NULL, "FS", NULL, 0, &plan), plan, "plan from string, NULL context");
    CLEARS(skv_reuse_plan_from_string(ctx, NULL, NULL, 0, &plan), plan, "plan from string, NULL pattern");
    CLEARS(skv_reuse_plan_from_string(ctx, "", NULL, 0, &plan), plan, "plan from string, empty");
    CLEARS(skv_reuse_plan_from_freq(NULL, 4, 2, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &plan), plan,
           "plan from freq, NULL context");
    CLEARS(skv_reuse_plan_from_freq(ctx, 0, 2, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &plan), plan,
           "plan from freq, 0 layers");
    CLEARS(skv_reuse_plan_from_freq(ctx, 4, 0, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &plan), plan,
           "plan from freq, freq 0");

    CHECK_OK(skv_reuse_plan_from_string(ctx, "FS", NULL, 0, &plan));
    skv_reuse_selector_params sp;
    skv_reuse_selector_params_init(&sp);
    skv_reuse_selector *rs;
    CLEARS(skv_reuse_selector_create(NULL, plan, &sp, &rs), rs, "selector, NULL context");
    CLEARS(skv_reuse_selector_create(ctx, NULL, &sp, &rs), rs, "selector, NULL plan");
    CLEARS(skv_reuse_selector_create(ctx, plan, NULL, &rs), rs, "selector, NULL params");
    sp.k = 0;
    CLEARS(skv_reuse_selector_create(ctx, plan, &sp, &rs), rs, "selector, k 0");
    skv_reuse_plan_destroy(plan);

    skv_store_params stp;
    skv_store_params_init(&stp);
    skv_store *st;
    CLEARS(skv_store_create(NULL, &stp, &st), st, "store, NULL context");
    CLEARS(skv_store_create(ctx, NULL, &st), st, "store, NULL params");
    stp.n_layers = 0;
    CLEARS(skv_store_create(ctx, &stp, &st), st, "store, 0 layers");
    skv_store_sel *sel;
    CLEARS(skv_store_sel_create(NULL, &sel), sel, "selection, NULL store");
}

/* skv_reuse_mass_loss_fn: NaN for a pattern that is not exactly n_layers of F/S starting with
 * F (too short, too long, another letter); the sum over Shared layers otherwise. */
/* An allocator that refuses everything once closed. */
static void *gate_alloc(void *u, size_t size, size_t align)
{
    return *(int *)u ? NULL : aligned_alloc(align, (size + align - 1) / align * align);
}

static void gate_free(void *u, void *p, size_t size)
{
    (void)u, (void)size;
    free(p);
}

static double zero_loss(const char *pattern, void *user)
{
    (void)pattern, (void)user;
    return 0.0;
}

/* The plan builders and the search check every argument before they allocate: with every
 * allocation refused, an invalid call is INVALID_ARG (and an unaffordable exhaustive search
 * CAPACITY), never NOMEM; the valid calls beside them are NOMEM, which shows the allocator
 * refuses. */
static void test_invalid_before_alloc(void)
{
    int closed = 0;
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 1;
    cp.allocator = (skv_allocator){gate_alloc, gate_free, &closed};
    skv_context *ctx = NULL;
    CHECK_OK(skv_context_create(&cp, &ctx));
    closed = 1;
    skv_reuse_plan *plan;
    static const skv_layer_role fs[3] = {SKV_LAYER_FULL, SKV_LAYER_SHARED, SKV_LAYER_FULL},
                                sf[2] = {SKV_LAYER_SHARED, SKV_LAYER_FULL},
                                bad[2] = {SKV_LAYER_FULL, (skv_layer_role)7};
    static const int32_t seg_shared[1] = {1}, seg_desc[2] = {2, 1}, seg_out[1] = {3}, seg_ok[1] = {2};
#define INVALID(call, what)                                                                   \
    do {                                                                                      \
        plan = GARBAGE;                                                                       \
        const skv_status st_ = (call);                                                        \
        CHECK(st_ == SKV_ERR_INVALID_ARG && plan == NULL, "%s under allocation failure: status %d", what, st_); \
    } while (0)
    INVALID(skv_reuse_plan_from_roles(ctx, bad, 2, NULL, 0, &plan), "roles: unknown role");
    INVALID(skv_reuse_plan_from_roles(ctx, sf, 2, NULL, 0, &plan), "roles: layer 0 Shared");
    INVALID(skv_reuse_plan_from_roles(ctx, fs, 3, seg_shared, 1, &plan), "roles: segment on a Shared layer");
    INVALID(skv_reuse_plan_from_roles(ctx, fs, 3, seg_desc, 2, &plan), "roles: segments out of order");
    INVALID(skv_reuse_plan_from_roles(ctx, fs, 3, seg_out, 1, &plan), "roles: segment past the layers");
    INVALID(skv_reuse_plan_from_roles(ctx, fs, 3, NULL, 1, &plan), "roles: NULL segments");
    INVALID(skv_reuse_plan_from_string(ctx, "FSX", NULL, 0, &plan), "string: bad character");
    INVALID(skv_reuse_plan_from_string(ctx, "SF", NULL, 0, &plan), "string: layer 0 Shared");
    INVALID(skv_reuse_plan_from_string(ctx, "FSF", seg_shared, 1, &plan), "string: segment on S");
    INVALID(skv_reuse_plan_from_string(ctx, "FSF", seg_desc, 2, &plan), "string: segments out of order");
    INVALID(skv_reuse_plan_from_freq(ctx, 4, 2, 0, SKV_REUSE_FREQ_PLAIN, seg_shared, 1, &plan),
            "freq: segment on a Shared layer");
    INVALID(skv_reuse_plan_from_freq(ctx, 4, 2, 0, SKV_REUSE_FREQ_PLAIN, seg_out, -1, &plan),
            "freq: negative segment count");
    plan = GARBAGE;
    CHECK(skv_reuse_plan_from_roles(ctx, fs, 3, seg_ok, 1, &plan) == SKV_ERR_NOMEM && plan == NULL,
          "roles: a valid plan is NOMEM");
    CHECK(skv_reuse_plan_from_string(ctx, "FSF", seg_ok, 1, &plan) == SKV_ERR_NOMEM, "string: valid is NOMEM");
    CHECK(skv_reuse_plan_from_freq(ctx, 4, 2, 0, SKV_REUSE_FREQ_PLAIN, seg_ok, 1, &plan) == SKV_ERR_NOMEM,
          "freq: valid is NOMEM");
#undef INVALID

    skv_reuse_search_params sp;
    skv_reuse_search_params_init(&sp);
    sp.n_layers = 8;
    sp.target_full = 4;
    sp.n_blocks = 2; /* layers 0 and 4 fixed */
    sp.loss = zero_loss;
    char pat[9];
    memset(pat, SENT, sizeof pat);
    CHECK(skv_reuse_search(ctx, &sp, pat, NULL, NULL) == SKV_ERR_NOMEM, "search: valid is NOMEM");
    const int32_t seg5[1] = {5}, seg_dup[2] = {5, 5}, seg9[1] = {9};
    struct { int32_t target, n_seg; const int32_t *seg; skv_reuse_search_method m; int64_t maxp;
             skv_status want; const char *what; } cases[] = {
        {1, 0, NULL, SKV_REUSE_SEARCH_GREEDY, 4096, SKV_ERR_INVALID_ARG, "target below the fixed layers"},
        {2, 1, seg5, SKV_REUSE_SEARCH_GREEDY, 4096, SKV_ERR_INVALID_ARG, "target below fixed with a segment"},
        {9, 0, NULL, SKV_REUSE_SEARCH_GREEDY, 4096, SKV_ERR_INVALID_ARG, "target above the layers"},
        {4, 2, seg_dup, SKV_REUSE_SEARCH_GREEDY, 4096, SKV_ERR_INVALID_ARG, "segments repeated"},
        {4, 1, seg9, SKV_REUSE_SEARCH_BEAM, 4096, SKV_ERR_INVALID_ARG, "segment past the layers"},
        {4, 1, NULL, SKV_REUSE_SEARCH_GREEDY, 4096, SKV_ERR_INVALID_ARG, "NULL segments"},
        {4, 0, NULL, SKV_REUSE_SEARCH_EXHAUSTIVE, 14, SKV_ERR_CAPACITY, "exhaustive over max_patterns"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        skv_reuse_search_params q = sp;
        q.target_full = cases[i].target;
        q.n_segments = cases[i].n_seg;
        q.segment_starts = cases[i].seg;
        q.method = cases[i].m;
        q.max_patterns = cases[i].maxp;
        const skv_status st = skv_reuse_search(ctx, &q, pat, NULL, NULL);
        CHECK(st == cases[i].want, "search, %s, under allocation failure: status %d", cases[i].what, st);
    }
    /* the exhaustive bound is exact: C(6, 2) = 15 patterns fit max_patterns 15 (then NOMEM) */
    sp.method = SKV_REUSE_SEARCH_EXHAUSTIVE;
    sp.max_patterns = 15;
    CHECK(skv_reuse_search(ctx, &sp, pat, NULL, NULL) == SKV_ERR_NOMEM, "search: exhaustive at its bound");
    for (size_t i = 0; i < sizeof pat; i++)
        CHECK(pat[i] == SENT, "search wrote pattern_out on a failed call");
    closed = 0;
    /* and with memory, the valid search runs with the fixed-layer count the merge gives */
    sp.method = SKV_REUSE_SEARCH_GREEDY;
    sp.segment_starts = seg5;
    sp.n_segments = 1;
    sp.target_full = 3;
    CHECK_OK(skv_reuse_search(ctx, &sp, pat, NULL, NULL));
    CHECK(pat[0] == 'F' && pat[4] == 'F' && pat[5] == 'F' && strlen(pat) == 8 &&
              strspn(pat, "FS") == 8 && (size_t)(strchr(pat + 1, 'F') - pat) == 4,
          "search with a segment: %s", pat);
    skv_context_destroy(ctx);
}

/* skv_reuse_mass_matrix checks every layer before it writes: a bad query in the last layer
 * leaves topk_out untouched, and is INVALID_ARG with every allocation refused too. */
static void test_mass_matrix_checks_first(void)
{
    int closed = 0;
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 1;
    cp.allocator = (skv_allocator){gate_alloc, gate_free, &closed};
    skv_context *ctx = NULL;
    CHECK_OK(skv_context_create(&cp, &ctx));
    const float q[2 * 4] = {1, 0, 0, 1, 0, 1, 1, 0}, w[2] = {1, 1}, k[3 * 4] = {1, 2, 0, 1, 0, 1, 3, 0, 2, 2, 2, 2};
    skv_indexer_query qs[2] = {{1, 2, 4, SKV_F32, q, NULL, w, NULL}, {1, 2, 4, SKV_F32, q, NULL, w, NULL}};
    const skv_key_block ks[2] = {{3, 4, SKV_F32, k, NULL}, {3, 4, SKV_F32, k, NULL}};
    double out[4];
    int32_t topk[2 * 2];
    CHECK_OK(skv_reuse_mass_matrix(ctx, qs, ks, 2, 2, out, topk));
    CHECK(out[0] == out[3] && out[1] == out[0] && out[0] > 0 && out[0] <= 1, "mass of equal layers %g %g", out[0], out[1]);
    const skv_indexer_query good = qs[1];
    for (int bad = 0; bad < 4; bad++) {
        qs[1] = good;
        if (bad == 0)
            qs[1].n_heads = 0;
        else if (bad == 1)
            qs[1].weights = NULL;
        else if (bad == 2)
            qs[1].q_scale = w; /* a scale on an f32 query */
        else
            qs[1].n_sink = 3; /* forced keys past k */
        for (closed = 0; closed < 2; closed++) {
            memset(topk, SENT, sizeof topk);
            memset(out, SENT, sizeof out);
            const skv_status st = skv_reuse_mass_matrix(ctx, qs, ks, 2, 2, out, topk);
            CHECK(st == SKV_ERR_INVALID_ARG && untouched(topk, sizeof topk) && untouched(out, sizeof out),
                  "mass matrix, bad layer 1 (%d), allocations %s: status %d, outputs %s", bad,
                  closed ? "refused" : "granted", st, untouched(topk, sizeof topk) ? "untouched" : "written");
        }
    }
    closed = 0;
    skv_context_destroy(ctx);
}

/* An allocator that refuses anything above 256 MiB: limits whose memory no test machine lends
 * are refused for memory at once (ASan would abort on a terabyte request instead of failing it). */
static void *capped_alloc(void *user, size_t size, size_t align)
{
    (void)user;
    return size > ((size_t)256 << 20) ? NULL : aligned_alloc(align, (size + align - 1) / align * align);
}
static void capped_free(void *user, void *p, size_t size) { (void)user, (void)size, free(p); }

/* ---- the limits the headers state: each accepted at the limit, refused one past it ------- */

/* A status that is not a refusal of the arguments (NOMEM allowed: the limit may cost more
 * memory than the machine lends). */
#define AT_LIMIT(call, what)                                                                  \
    do {                                                                                      \
        const skv_status st_ = (call);                                                        \
        CHECK(st_ == SKV_OK || st_ == SKV_ERR_NOMEM, "%s at the limit: status %d", what, st_); \
    } while (0)
#define PAST_LIMIT(call, what)                                                                \
    do {                                                                                      \
        const skv_status st_ = (call);                                                        \
        CHECK(st_ == SKV_ERR_INVALID_ARG, "%s past the limit: status %d", what, st_);           \
    } while (0)

static skv_status store_with(skv_context *ctx, const skv_store_params *p)
{
    skv_store *s = NULL;
    const skv_status st = skv_store_create(ctx, p, &s);
    skv_store_destroy(s);
    return st;
}

static skv_status kcache_with(skv_context *ctx, const skv_kcache_params *p)
{
    skv_kcache *c = NULL;
    const skv_status st = skv_kcache_create(ctx, p, &c);
    skv_kcache_destroy(c);
    return st;
}

static skv_status plan_string_of(skv_context *ctx, size_t n)
{
    char *pat = xmalloc(n + 1);
    memset(pat, 'S', n);
    pat[0] = 'F';
    pat[n] = '\0';
    skv_reuse_plan *plan = NULL;
    const skv_status st = skv_reuse_plan_from_string(ctx, pat, NULL, 0, &plan);
    skv_reuse_plan_destroy(plan);
    free(pat);
    return st;
}

static double first_layer_loss(const char *pattern, void *user)
{
    (void)user;
    return pattern[1] == 'F' ? 0.0 : 1.0;
}

static void test_header_limits(void)
{
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 2;
    cp.allocator = (skv_allocator){capped_alloc, capped_free, NULL};
    skv_context *ctx = NULL;
    CHECK_OK(skv_context_create(&cp, &ctx));
    /* indexer.h: 1 <= n_heads <= 4096, 1 <= head_dim <= 4096 */
    {
        float *q = xmalloc(4097 * 4), *w = xmalloc(4097 * 4), k[4097 * 2], out[2];
        for (int i = 0; i < 4097; i++)
            q[i] = 1.0f, w[i] = 1.0f / 4096;
        for (int i = 0; i < 4097 * 2; i++)
            k[i] = (float)(i % 3);
        skv_indexer_query iq = {1, 4096, 1, SKV_F32, q, NULL, w, NULL};
        skv_key_block kb = {2, 1, SKV_F32, k, NULL};
        CHECK_OK(skv_indexer_scores(ctx, &iq, &kb, out));
        CHECK(out[0] == 0.0f && out[1] == 1.0f, "4096 heads: %g %g", out[0], out[1]);
        iq.n_heads = 4097;
        PAST_LIMIT(skv_indexer_scores(ctx, &iq, &kb, out), "n_heads");
        iq = (skv_indexer_query){1, 1, 4096, SKV_F32, q, NULL, w, NULL};
        kb = (skv_key_block){2, 4096, SKV_F32, k, NULL};
        int32_t idx[1];
        CHECK_OK(skv_indexer_topk(ctx, &iq, &kb, 1, idx, NULL));
        iq.head_dim = kb.head_dim = 4097;
        PAST_LIMIT(skv_indexer_topk(ctx, &iq, &kb, 1, idx, NULL), "head_dim");
        free(q), free(w);
    }
    /* indexer.h: the key cache's n_layers 1..65536, page_tokens 1..65536, max_pages 0..2^31-1 */
    {
        skv_kcache_params kp;
        skv_kcache_params_init(&kp);
        kp.head_dim = 32;
        kp.n_layers = 65536;
        AT_LIMIT(kcache_with(ctx, &kp), "kcache n_layers");
        kp.n_layers = 65537;
        PAST_LIMIT(kcache_with(ctx, &kp), "kcache n_layers");
        kp.n_layers = 1;
        kp.max_pages = INT32_MAX;
        AT_LIMIT(kcache_with(ctx, &kp), "kcache max_pages");
        kp.max_pages = (int64_t)INT32_MAX + 1;
        PAST_LIMIT(kcache_with(ctx, &kp), "kcache max_pages");
    }
    /* store.h: every ranged field at both ends of its range and one past */
    {
        skv_store_params base;
        skv_store_params_init(&base);
        base.k_dim = 8, base.v_dim = 8, base.n_kv_heads = 1, base.hot_pages = 0;
        struct { int field; int64_t at, past; } r[] = {
            {0, 65536, 65537}, {1, 1024, 1025}, {2, 1024, 1025}, {3, 1024, 1025}, {3, 0, -1},
            {4, 2, 1}, {4, 64, 65}, {5, 65536, 65537}, {6, 1 << 20, (1 << 20) + 1},
            {7, INT32_MAX, (int64_t)INT32_MAX + 1}, {8, 4, 3}, {8, 64, 65},
            {9, INT32_MAX, (int64_t)INT32_MAX + 1},
        };
        for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
            for (int past = 0; past < 2; past++) {
                skv_store_params p = base;
                const int64_t v = past ? r[i].past : r[i].at;
                switch (r[i].field) {
                case 0: p.n_layers = (int32_t)v; break;
                case 1: p.n_kv_heads = (int32_t)v; break;
                case 2: p.k_dim = (int32_t)v; break;
                case 3: p.v_dim = (int32_t)v; break;
                case 4: p.page_tokens = (int32_t)v; break;
                case 5: p.n_sink = (int32_t)v; break;
                case 6: p.n_window = (int32_t)v; break;
                case 7: p.hot_pages = v; break;
                case 8: p.fanout = (int32_t)v; break;
                case 9: p.max_pages = v; break;
                }
                const skv_status st = store_with(ctx, &p);
                CHECK(past ? st == SKV_ERR_INVALID_ARG : st == SKV_OK || st == SKV_ERR_NOMEM,
                      "store field %d = %lld: status %d", r[i].field, (long long)v, st);
            }
    }
    /* attention.h: n_q_heads 1..4096 */
    {
        float *q = xmalloc(4097 * 4), kv[2] = {1, 2}, *o = xmalloc(4097 * 4);
        for (int i = 0; i < 4097; i++)
            q[i] = 1.0f;
        int64_t ls[1] = {0};
        int32_t ll[1] = {1};
        skv_attn_batch b = {sizeof b, 1, 4096, 1, 1, 1, SKV_F32, 1.0f, 0, q, NULL, 1, kv, kv + 1, NULL, ls, ll};
        CHECK_OK(skv_sparse_attention(ctx, &b, o, NULL, NULL));
        CHECK(o[0] == 2.0f && o[4095] == 2.0f, "4096 query heads: %g", o[0]);
        b.n_q_heads = 4097;
        PAST_LIMIT(skv_sparse_attention(ctx, &b, o, NULL, NULL), "n_q_heads");
        free(q), free(o);
    }
    /* reuse.h: at most 65536 layers; beam_width 1..4096 */
    {
        AT_LIMIT(plan_string_of(ctx, 65536), "plan of 65536 layers");
        PAST_LIMIT(plan_string_of(ctx, 65537), "plan of 65537 layers");
        skv_reuse_plan *plan = NULL;
        AT_LIMIT(skv_reuse_plan_from_freq(ctx, 65536, 2, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &plan), "freq plan");
        skv_reuse_plan_destroy(plan);
        PAST_LIMIT(skv_reuse_plan_from_freq(ctx, 65537, 2, 0, SKV_REUSE_FREQ_PLAIN, NULL, 0, &plan), "freq plan");
        skv_reuse_search_params sp;
        skv_reuse_search_params_init(&sp);
        sp.n_layers = 3, sp.target_full = 2, sp.loss = first_layer_loss;
        sp.method = SKV_REUSE_SEARCH_BEAM, sp.beam_width = 4096;
        char pat[4];
        CHECK_OK(skv_reuse_search(ctx, &sp, pat, NULL, NULL));
        CHECK(!strcmp(pat, "FFS"), "beam of 4096: %s", pat);
        sp.beam_width = 4097;
        PAST_LIMIT(skv_reuse_search(ctx, &sp, pat, NULL, NULL), "beam_width");
        sp.beam_width = 4, sp.n_layers = 65537;
        PAST_LIMIT(skv_reuse_search(ctx, &sp, pat, NULL, NULL), "search layers");
    }
    /* slice.h: SKV_SLICE_MAX_WORKERS workers */
    CHECK(skv_topk_part_bytes(1, 4, SKV_SLICE_MAX_WORKERS) == (size_t)SKV_SLICE_MAX_WORKERS * 4 * 8 &&
              skv_topk_part_bytes(1, 4, SKV_SLICE_MAX_WORKERS + 1) == 0,
          "part bytes at and past the worker limit");
    /* engine.h: block ids below n_blocks <= INT32_MAX (the pool is read only where the table
       points) */
    {
        float pool[4] = {1, 2, 3, 4}, q[1] = {1}, w[1] = {1};
        const int32_t table[2] = {0, 1}, lens[1] = {4};
        skv_paged_keys pk = {1, SKV_F32, 2, pool, INT32_MAX, 8, 0};
        const skv_paged_batch pb = {1, table, 2, lens, NULL};
        const skv_indexer_query iq = {1, 1, 1, SKV_F32, q, NULL, w, NULL};
        int32_t idx[2];
        CHECK_OK(skv_paged_topk(ctx, &pk, &pb, &iq, 2, idx, NULL));
        CHECK(idx[0] == 3 && idx[1] == 2, "paged at n_blocks INT32_MAX: %d %d", idx[0], idx[1]);
        pk.n_blocks = (int64_t)INT32_MAX + 1;
        PAST_LIMIT(skv_paged_topk(ctx, &pk, &pb, &iq, 2, idx, NULL), "n_blocks");
    }
    skv_context_destroy(ctx);
}

static void test_mass_loss_pattern(void)
{
    const double mass[9] = {1, 0, 0, 0.75, 1, 0, 0.5, 0.25, 1};
    skv_reuse_mass_loss m = {mass, 3};
    CHECK(skv_reuse_mass_loss_fn("FSS", &m) == (0.25 + 0.5) / 3, "FSS");
    CHECK(skv_reuse_mass_loss_fn("FFF", &m) == 0, "FFF");
    CHECK(skv_reuse_mass_loss_fn("fsF", &m) == 0.25 / 3, "fsF");
    static const char *bad[] = {"FSSS", "FSSF", "FFFFFFFF", "FS", "F", "", "SFF", "FXS", "FS S"};
    for (int i = 0; i < 9; i++)
        CHECK(isnan(skv_reuse_mass_loss_fn(bad[i], &m)), "pattern \"%s\" for 3 layers is not NaN", bad[i]);
    CHECK(isnan(skv_reuse_mass_loss_fn(NULL, &m)), "NULL pattern");
    CHECK(isnan(skv_reuse_mass_loss_fn("FSS", NULL)), "NULL user");
}

/* ---- k at its limit ------------------------------------------------------------------------- */

/* With capped_alloc, a call at k = SKV_TOPK_MAX_K is accepted and then refused for memory (its
 * state is 1.5 GiB a thread), one past it is refused as an invalid argument, as is every k whose
 * state size once overflowed int32 (3k > INT32_MAX). */
static int huge_k(void *arg)
{
    (void)arg;
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 2;
    cp.allocator = (skv_allocator){capped_alloc, capped_free, NULL};
    skv_context *ctx;
    CHECK_OK(skv_context_create(&cp, &ctx));
    idx_fixture f;
    idx_fixture_init(&f);
    const skv_indexer_query q = {1, 4, 8, SKV_F32, f.q, NULL, f.w, NULL};
    const skv_key_block kb = {10, 8, SKV_F32, f.k, NULL};
    int32_t idx[64];
    float val[64];
    static const int32_t bad_k[] = {SKV_TOPK_MAX_K + 1, INT32_MAX / 3 + 1, INT32_MAX / 3 + 2, INT32_MAX / 2,
                                    INT32_MAX - 16, INT32_MAX};
    for (int i = 0; i < 6; i++) {
        memset(idx, SENT, sizeof idx), memset(val, SENT, sizeof val);
        CHECK_STATUS(skv_indexer_topk(ctx, &q, &kb, bad_k[i], idx, val), SKV_ERR_INVALID_ARG);
        CHECK_STATUS(skv_topk_rows(ctx, f.k, 1, 10, 10, NULL, bad_k[i], idx, val), SKV_ERR_INVALID_ARG);
        CHECK(untouched(idx, sizeof idx) && untouched(val, sizeof val), "k %d: refused call wrote", bad_k[i]);
    }
    CHECK_STATUS(skv_indexer_topk(ctx, &q, &kb, SKV_TOPK_MAX_K, idx, val), SKV_ERR_NOMEM);
    CHECK_STATUS(skv_topk_rows(ctx, f.k, 1, 10, 10, NULL, SKV_TOPK_MAX_K, idx, val), SKV_ERR_NOMEM);
    CHECK(untouched(idx, sizeof idx) && untouched(val, sizeof val), "k at the limit: refused call wrote");
    /* MISA-dagger's candidates become a top-k's k */
    float sums[3 * 8];
    CHECK_OK(skv_pool_keys(&kb, 4, sums));
    const skv_pooled_keys pk = {4, sums};
    skv_misa_params mp;
    skv_misa_params_init(&mp);
    mp.heads = 2, mp.block = 4, mp.min_length = 0;
    mp.candidates = SKV_TOPK_MAX_K + 1;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 4, idx, val), SKV_ERR_INVALID_ARG);
    mp.candidates = SKV_MISA_DAGGER_4K;
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, SKV_TOPK_MAX_K / 4 + 1, idx, val), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_misa_topk(ctx, &q, &kb, &pk, &mp, 4, idx, val), SKV_OK);
    skv_context_destroy(ctx);
    return 0;
}

static void test_huge_k(void) { isolated("top-k with k near and past SKV_TOPK_MAX_K", huge_k, NULL); }

int main(void)
{
    test_misc();
    test_context();
    test_convert();
    test_quantize();
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    test_indexer(ctx);
    test_topk_rows(ctx);
    test_kcache_create(ctx);
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    for (int i = 0; i < 3; i++)
        test_kcache_ops(ctx, dts[i]);
    test_kcache_capacity(ctx);
    test_constructors_clear_out(ctx);
    test_huge_k();
    test_mass_loss_pattern();
    test_invalid_before_alloc();
    test_mass_matrix_checks_first();
    test_header_limits();
    skv_context_destroy(ctx);
    /* the scalar kernels refuse the same way */
    ctx = ctx_new(0, 1);
    test_indexer(ctx);
    test_topk_rows(ctx);
    skv_context_destroy(ctx);
    return test_summary("test_badargs");
}
