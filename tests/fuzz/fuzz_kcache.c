/* Fuzz target: the paged key cache driven by an operation sequence decoded from the input
 * (create, append in every dtype, remove ranges, fork, free, scores, top-k, block means, read
 * back), checked after every operation against a model that keeps each sequence's keys as
 * contiguous copies: lengths and stored bytes equal, paged scores and top-k bit-equal to the
 * contiguous ones, pooled block means equal to pooling the read-back keys, and every failed
 * call (an allocation failed on purpose, a capacity limit, a dead sequence) changing nothing. */
#include "fuzz.h"

enum { MAX_LAYERS = 3, MAX_SEQS = 6, MAX_LEN = 600, MAX_OPS = 32 };

typedef struct mseq {
    int64_t len[MAX_LAYERS], cap[MAX_LAYERS]; /* cap: rows the buffers hold (grown on demand:
                                                 buffers of MAX_LEN rows cost fresh pages under
                                                 ASan on every input) */
    uint8_t *rows[MAX_LAYERS]; /* [cap][row_bytes] */
    uint8_t *sc[MAX_LAYERS];   /* [cap][sc_bytes]: f32 scales (FP8), scale bytes (MXFP4) */
} mseq;

typedef struct fz {
    skv_context *ctx;
    fail_alloc fa;
    skv_kcache *c;
    skv_kcache_params p;
    size_t row_bytes, sc_bytes; /* per key: values, and FP8 / MXFP4 scales */
    mseq s[MAX_SEQS];
    int live[MAX_SEQS];
    int32_t id[MAX_SEQS]; /* the cache's id of model sequence i */
    int same_level;       /* the context's kernels are the CPU's own level */
} fz;

/* Room for n rows in layer l. */
static void mseq_reserve(fz *f, mseq *s, int32_t l, int64_t n)
{
    if (n <= s->cap[l])
        return;
    const int64_t cap = n > 2 * s->cap[l] ? n : 2 * s->cap[l];
    s->rows[l] = realloc(s->rows[l], (size_t)cap * f->row_bytes);
    s->sc[l] = realloc(s->sc[l], (size_t)cap * 4); /* sc_bytes <= 4 */
    REQUIRE(s->rows[l] && s->sc[l], "out of memory");
    s->cap[l] = cap;
}

static void mseq_alloc(fz *f, int i)
{
    mseq *s = &f->s[i];
    memset(s, 0, sizeof *s);
    f->live[i] = 1;
    for (int32_t l = 0; l < f->p.n_layers; l++)
        mseq_reserve(f, s, l, 16); /* never NULL: memmove and memcpy get real pointers */
}

static void mseq_free(fz *f, int i)
{
    mseq *s = &f->s[i];
    for (int l = 0; l < f->p.n_layers; l++)
        free(s->rows[l]), free(s->sc[l]);
    memset(s, 0, sizeof *s);
    f->live[i] = 0;
}

/* The cache holds exactly the model. */
static void check_all(fz *f)
{
    skv_kcache_stats st = {.struct_size = sizeof st};
    REQUIRE(skv_kcache_get_stats(f->c, &st) == SKV_OK, "stats");
    int32_t live = 0;
    int64_t longest = 0;
    for (int i = 0; i < MAX_SEQS; i++)
        for (int32_t l = 0; f->live[i] && l < f->p.n_layers; l++)
            longest = f->s[i].len[l] > longest ? f->s[i].len[l] : longest;
    uint8_t *buf = fz_malloc((size_t)longest * f->row_bytes);
    uint8_t *sc = fz_malloc((size_t)longest * 4);
    for (int i = 0; i < MAX_SEQS; i++) {
        const mseq *s = &f->s[i];
        if (!f->live[i])
            continue;
        live++;
        for (int32_t l = 0; l < f->p.n_layers; l++) {
            int64_t len = -1;
            REQUIRE(skv_kcache_seq_length(f->c, f->id[i], l, &len) == SKV_OK, "length");
            REQUIRE(len == s->len[l], "seq %d layer %d: length %lld, model %lld", i, l, (long long)len,
                    (long long)s->len[l]);
            const int fp8 = f->p.dtype == SKV_FP8_E4M3, mx = f->p.dtype == SKV_MXFP4_E2M1;
            REQUIRE(skv_kcache_read(f->c, f->id[i], l, 0, len, buf, fp8 ? (float *)(void *)sc : NULL) == SKV_OK, "read");
            REQUIRE(memcmp(buf, s->rows[l], (size_t)len * f->row_bytes) == 0, "seq %d layer %d: keys differ", i, l);
            REQUIRE(!mx || skv_kcache_read_mx_scales(f->c, f->id[i], l, 0, len, sc) == SKV_OK, "read scales");
            REQUIRE(memcmp(sc, s->sc[l], (size_t)len * f->sc_bytes) == 0, "seq %d layer %d: scales differ", i, l);
        }
    }
    free(buf), free(sc);
    REQUIRE(st.n_seqs == live, "stats: %d sequences, model %d", st.n_seqs, live);
    REQUIRE(f->p.max_pages == 0 || st.pages_in_use <= f->p.max_pages, "pages over max_pages");
    REQUIRE(st.pages_in_use <= st.page_refs, "pages in use above references");
}

/* An error status is legitimate: NOMEM only when an allocation failed, CAPACITY only with a limit. */
static void check_refusal(const fz *f, skv_status s, long failed_before, const char *what)
{
    REQUIRE(s == SKV_ERR_NOMEM ? f->fa.failed > failed_before
            : s == SKV_ERR_CAPACITY ? f->p.max_pages > 0 || f->p.max_seqs > 0
                                    : 0,
            "%s: unexpected status %d", what, s);
}

static void op_append(fz *f, reader *r, int i)
{
    mseq *s = &f->s[i];
    const int32_t l = (int32_t)rd_range(r, 0, f->p.n_layers - 1), D = f->p.head_dim;
    int64_t n = rd_range(r, 0, 70);
    n = n > MAX_LEN - s->len[l] ? MAX_LEN - s->len[l] : n;
    const int f32_in = f->p.dtype == SKV_F32 || (rd_u8(r) & 1);
    const size_t in_row = f32_in ? (size_t)D * 4 : f->row_bytes;
    uint8_t *in = fz_malloc((size_t)n * in_row + 1), *want = fz_malloc((size_t)n * f->row_bytes + 1);
    uint8_t *in_sc = fz_malloc((size_t)n * 4 + 4), *want_sc = fz_malloc((size_t)n * 4 + 4);
    for (int64_t t = 0; t < n; t++) {
        float x[64];
        rd_floats(r, x, (size_t)D);
        uint8_t *row = want + (size_t)t * f->row_bytes;
        if (f32_in)
            memcpy(in + (size_t)t * in_row, x, in_row);
        uint8_t *sct = want_sc + (size_t)t * f->sc_bytes;
        if (f->p.dtype == SKV_FP8_E4M3) {
            float scale;
            REQUIRE(skv_quantize_fp8(x, 1, D, D, f->p.quant_flags, row, &scale) == SKV_OK, "quantize");
            if (!f32_in) { /* raw fp8 bytes and scales from the input, any bit pattern */
                for (int32_t d = 0; d < D; d++)
                    row[d] = rd_u8(r);
                scale = rd_float(r);
                memcpy(in + (size_t)t * in_row, row, f->row_bytes);
            }
            memcpy(sct, &scale, 4);
        } else if (f->p.dtype == SKV_MXFP4_E2M1) {
            REQUIRE(skv_quantize_mxfp4(x, 1, D, D, row, sct) == SKV_OK, "quantize mxfp4");
            if (!f32_in) { /* raw codes and scale bytes (255: NaN, 0: the smallest) */
                for (size_t b = 0; b < f->row_bytes; b++)
                    row[b] = rd_u8(r);
                for (size_t b = 0; b < f->sc_bytes; b++)
                    sct[b] = rd_u8(r);
                memcpy(in + (size_t)t * in_row, row, f->row_bytes);
            }
        } else if (f32_in) {
            REQUIRE(skv_convert(f->p.dtype, row, SKV_F32, x, D) == SKV_OK, "convert");
        } else { /* raw bf16 bit patterns */
            for (size_t b = 0; b < f->row_bytes; b++)
                row[b] = rd_u8(r);
            memcpy(in + (size_t)t * in_row, row, f->row_bytes);
        }
    }
    memcpy(in_sc, want_sc, (size_t)n * f->sc_bytes);
    const skv_key_block kb = {n, D, f32_in ? SKV_F32 : f->p.dtype, n ? in : NULL,
                              !f32_in && f->p.dtype == SKV_FP8_E4M3 ? (const float *)(void *)in_sc : NULL,
                              !f32_in && f->p.dtype == SKV_MXFP4_E2M1 ? in_sc : NULL};
    const long failed = f->fa.failed;
    const skv_status st = skv_kcache_append(f->c, f->id[i], l, &kb);
    if (st == SKV_OK) {
        mseq_reserve(f, s, l, s->len[l] + n);
        memcpy(s->rows[l] + (size_t)s->len[l] * f->row_bytes, want, (size_t)n * f->row_bytes);
        memcpy(s->sc[l] + (size_t)s->len[l] * f->sc_bytes, want_sc, (size_t)n * f->sc_bytes);
        s->len[l] += n;
    } else {
        check_refusal(f, st, failed, "append");
    }
    free(in), free(want), free(in_sc), free(want_sc);
}

static void op_remove(fz *f, reader *r, int i)
{
    mseq *s = &f->s[i];
    int64_t longest = 0;
    for (int l = 0; l < f->p.n_layers; l++)
        longest = s->len[l] > longest ? s->len[l] : longest;
    const int64_t p0 = rd_range(r, 0, longest + 2);
    const uint8_t kind = rd_u8(r) % 4; /* to the end (-1), past the end, or a range */
    const int64_t p1 = kind == 0 ? -1 : kind == 1 ? INT64_MAX : p0 + rd_range(r, 0, 40);
    const long failed = f->fa.failed;
    const skv_status st = skv_kcache_seq_remove(f->c, f->id[i], p0, p1);
    if (st != SKV_OK) {
        check_refusal(f, st, failed, "remove");
        return;
    }
    for (int l = 0; l < f->p.n_layers; l++) {
        const int64_t len = s->len[l], a = p0 < len ? p0 : len, e = p1 < 0 || p1 > len ? len : p1;
        const int64_t b = e < a ? a : e;
        memmove(s->rows[l] + (size_t)a * f->row_bytes, s->rows[l] + (size_t)b * f->row_bytes,
                (size_t)(len - b) * f->row_bytes);
        memmove(s->sc[l] + (size_t)a * f->sc_bytes, s->sc[l] + (size_t)b * f->sc_bytes,
                (size_t)(len - b) * f->sc_bytes);
        s->len[l] = len - (b - a);
    }
}

/* A query on the cache's head_dim in a dtype from the input. */
typedef struct fquery {
    skv_indexer_query q;
    void *qd;
    float *qs, *w;
    int32_t *pos;
} fquery;

static void query_make(fquery *o, reader *r, int32_t D)
{
    static const skv_dtype qt[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    const int32_t T = (int32_t)rd_range(r, 1, 3), H = (int32_t)rd_range(r, 1, 5);
    const skv_dtype dt = qt[rd_u8(r) % 3];
    const size_t n = (size_t)T * H * D;
    float *x = fz_malloc(n * 4);
    rd_floats(r, x, n);
    o->qd = fz_malloc(n * 4);
    o->qs = fz_malloc((size_t)T * H * 4);
    if (dt == SKV_FP8_E4M3)
        skv_quantize_fp8(x, (int64_t)T * H, D, D, 0, o->qd, o->qs);
    else
        skv_convert(dt, o->qd, SKV_F32, x, (int64_t)n);
    free(x);
    o->w = fz_malloc((size_t)T * H * 4);
    rd_floats(r, o->w, (size_t)T * H);
    o->pos = NULL;
    if (rd_u8(r) & 1) {
        o->pos = fz_malloc((size_t)T * 4);
        for (int32_t t = 0; t < T; t++)
            o->pos[t] = (int32_t)rd_range(r, -2, MAX_LEN + 2);
    }
    o->q = (skv_indexer_query){T, H, D, dt, o->qd, dt == SKV_FP8_E4M3 ? o->qs : NULL, o->w, o->pos};
    const uint8_t forced = rd_u8(r); /* sinks and a window (top-k only; scores ignore them) */
    o->q.n_sink = forced & 1 ? (int32_t)rd_range(r, 0, 5) : 0;
    o->q.n_window = forced & 2 ? (int32_t)rd_range(r, 0, 5) : 0;
}

static void query_free(fquery *o) { free(o->qd), free(o->qs), free(o->w), free(o->pos); }

static skv_key_block model_keys(const fz *f, const mseq *s, int32_t l)
{
    return (skv_key_block){s->len[l], f->p.head_dim, f->p.dtype, s->rows[l],
                           f->p.dtype == SKV_FP8_E4M3 ? (const float *)(void *)s->sc[l] : NULL,
                           f->p.dtype == SKV_MXFP4_E2M1 ? s->sc[l] : NULL};
}

/* Paged scores and top-k equal the contiguous ones to the bit (allocation failures allowed). */
static void op_search(fz *f, reader *r, int i, int topk)
{
    const mseq *s = &f->s[i];
    const int32_t l = (int32_t)rd_range(r, 0, f->p.n_layers - 1);
    fquery fq;
    query_make(&fq, r, f->p.head_dim);
    const skv_key_block kb = model_keys(f, s, l);
    const int32_t T = fq.q.n_tokens, k = (int32_t)rd_range(r, 1, s->len[l] + 4);
    const size_t n_out = topk ? (size_t)T * k : (size_t)T * (size_t)(s->len[l] ? s->len[l] : 1);
    float *a = fz_malloc(n_out * 4), *b = fz_malloc(n_out * 4);
    int32_t *ia = fz_malloc(n_out * 4), *ib = fz_malloc(n_out * 4);
    const long failed = f->fa.failed;
    const skv_status sa = topk ? skv_kcache_topk(f->c, f->id[i], l, &fq.q, k, ia, a)
                               : skv_kcache_scores(f->c, f->id[i], l, &fq.q, a);
    const long countdown = f->fa.countdown;
    f->fa.countdown = -1;
    const skv_status sb = topk ? skv_indexer_topk(f->ctx, &fq.q, &kb, k, ib, b)
                               : skv_indexer_scores(f->ctx, &fq.q, &kb, b);
    f->fa.countdown = countdown;
    const int forced_bad = topk && fq.q.n_sink + fq.q.n_window > k;
    REQUIRE(forced_bad ? sb == SKV_ERR_INVALID_ARG && sa == SKV_ERR_INVALID_ARG : sb == SKV_OK,
            "contiguous %s: status %d (paged %d)", topk ? "top-k" : "scores", sb, sa);
    if (forced_bad) {
        /* refused by both: forced keys are counted within k */
    } else if (sa != SKV_OK) {
        check_refusal(f, sa, failed, topk ? "paged top-k" : "paged scores");
    } else if (topk) {
        REQUIRE(memcmp(ia, ib, n_out * 4) == 0, "paged top-k indices differ from the contiguous ones");
        REQUIRE(memcmp(a, b, n_out * 4) == 0, "paged top-k scores differ from the contiguous ones");
    } else if (s->len[l]) {
        size_t at = 0; /* bit-equal, except that a NaN's sign and payload may differ */
        while (at < n_out && (!memcmp(a + at, b + at, 4) || (isnan(a[at]) && isnan(b[at]))))
            at++;
        REQUIRE(at == n_out, "paged scores differ from the contiguous ones: [%zu] of %lld keys %g vs %g (dtype %d q %d H %d D %d P %d lanes %d)",
                at, (long long)s->len[l], at < n_out ? a[at] : 0, at < n_out ? b[at] : 0, f->p.dtype, fq.q.dtype, fq.q.n_heads,
                f->p.head_dim, f->p.page_tokens, f->p.lane_copy);
    }
    free(a), free(b), free(ia), free(ib);
    query_free(&fq);
}

/* The cache's block means equal pooling the sequence's keys afresh. */
static void op_means(fz *f, reader *r, int i)
{
    const mseq *s = &f->s[i];
    const int32_t l = (int32_t)rd_range(r, 0, f->p.n_layers - 1), D = f->p.head_dim;
    const int32_t C = f->p.pool_chunk, B = C * (int32_t)rd_range(r, 1, 3);
    const int64_t len = s->len[l], nc = (len + C - 1) / C, nb = (len + B - 1) / B;
    float *sums = fz_malloc((size_t)(nc + 1) * D * 4), *want = fz_malloc((size_t)(nb + 1) * D * 4);
    float *got = fz_malloc((size_t)(nb + 1) * D * 4);
    int32_t *cnt = fz_malloc((size_t)(nb + 1) * 4);
    const skv_key_block kb = model_keys(f, s, l);
    REQUIRE(skv_pool_keys(&kb, C, sums) == SKV_OK, "pool");
    const skv_pooled_keys pk = {C, sums};
    REQUIRE(skv_block_means(&kb, &pk, B, want, NULL) == SKV_OK, "means");
    REQUIRE(skv_kcache_block_means(f->c, f->id[i], l, B, got, cnt) == SKV_OK, "cache means");
    /* bit-equal at the CPU's own level (skv_block_means's); another level may round otherwise */
    for (size_t j = 0; j < (size_t)nb * D; j++)
        REQUIRE(!memcmp(&want[j], &got[j], 4) || (isnan(want[j]) && isnan(got[j])) ||
                    (!f->same_level && fabsf(want[j] - got[j]) <= 1e-5f * (1 + fabsf(want[j]))),
                "seq %d layer %d: block means differ from pooling its keys", i, l);
    for (int64_t b = 0; b < nb; b++)
        REQUIRE(cnt[b] == ((b + 1) * B <= len ? B : len - b * B), "block %lld count %d", (long long)b, cnt[b]);
    free(sums), free(want), free(got), free(cnt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    fz f;
    memset(&f, 0, sizeof f);
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    static const int32_t dims[] = {1, 3, 8, 16, 32, 64};
    skv_kcache_params_init(&f.p);
    const uint8_t dtb = rd_u8(&r); /* bytes below 192 keep their older meaning */
    f.p.dtype = dtb >= 192 ? SKV_MXFP4_E2M1 : dts[dtb % 3];
    f.p.n_layers = (int32_t)rd_range(&r, 1, MAX_LAYERS);
    const uint8_t db = rd_u8(&r);
    f.p.head_dim = f.p.dtype == SKV_MXFP4_E2M1 ? dims[4 + (db & 1)] : dims[db % 6];
    const uint8_t pb = rd_u8(&r);
    f.p.page_tokens = pb & 1 ? 16 * (int32_t)rd_range(&r, 1, 2) : (int32_t)rd_range(&r, 1, 20);
    const int32_t div = (int32_t)rd_range(&r, 0, 4); /* pool_chunk: 0 or a divisor of page_tokens */
    f.p.pool_chunk = 0;
    for (int32_t c = 1, seen = 0; div && c <= f.p.page_tokens; c++)
        if (f.p.page_tokens % c == 0 && ++seen == div)
            f.p.pool_chunk = c;
    f.p.max_pages = rd_u8(&r) % 4 == 0 ? rd_range(&r, 1, 40) : 0;
    f.p.max_seqs = rd_u8(&r) % 4 == 0 ? (int32_t)rd_range(&r, 1, MAX_SEQS) : 0;
    f.p.quant_flags = rd_u8(&r) & SKV_QUANT_POW2_SCALE;
    f.p.lane_copy = f.p.dtype == SKV_FP8_E4M3 && f.p.head_dim % 32 == 0 && f.p.page_tokens % 16 == 0 &&
                    (rd_u8(&r) & 1);
    f.row_bytes = f.p.dtype == SKV_MXFP4_E2M1 ? (size_t)f.p.head_dim / 2
                                              : (size_t)f.p.head_dim * skv_dtype_size(f.p.dtype);
    f.sc_bytes = f.p.dtype == SKV_FP8_E4M3 ? 4 : f.p.dtype == SKV_MXFP4_E2M1 ? (size_t)f.p.head_dim / 32 : 0;
    /* mostly the scalar kernels: a fuzzing build compiles the SIMD ones at -O0 */
    const uint32_t mask = rd_u8(&r) < 64 ? SKV_CPU_ALL : 0;
    f.ctx = fz_context(&f.fa, mask);
    f.same_level = skv_context_cpu_flags(f.ctx) == skv_cpu_flags();
    REQUIRE(skv_kcache_create(f.ctx, &f.p, &f.c) == SKV_OK, "create");
    REQUIRE(skv_kcache_seq_create(f.c, &f.id[0]) == SKV_OK, "first sequence");
    mseq_alloc(&f, 0);

    for (int op = 0; op < MAX_OPS && r.n; op++) {
        const uint8_t code = rd_u8(&r), fail = rd_u8(&r);
        f.fa.countdown = fail < 40 ? fail % 8 : -1; /* fail the N-th allocation of this operation */
        int i = pick_live(&r, f.live, MAX_SEQS);
        const long failed = f.fa.failed;
        switch (code % 9) {
        case 0: { /* create */
            const int j = pick_free(f.live, MAX_SEQS);
            int32_t id = -1;
            if (j < 0)
                break;
            const skv_status st = skv_kcache_seq_create(f.c, &id);
            if (st == SKV_OK) {
                mseq_alloc(&f, j);
                f.id[j] = id;
            } else {
                check_refusal(&f, st, failed, "create");
            }
            break;
        }
        case 1:
        case 2:
            if (i >= 0)
                op_append(&f, &r, i);
            break;
        case 3:
            if (i >= 0)
                op_remove(&f, &r, i);
            break;
        case 4: { /* fork */
            const int j = pick_free(f.live, MAX_SEQS);
            int32_t id = -1;
            if (i < 0 || j < 0)
                break;
            const skv_status st = skv_kcache_seq_fork(f.c, f.id[i], &id);
            if (st == SKV_OK) {
                mseq_alloc(&f, j);
                f.id[j] = id;
                for (int l = 0; l < f.p.n_layers; l++) {
                    mseq_reserve(&f, &f.s[j], l, f.s[i].len[l]);
                    f.s[j].len[l] = f.s[i].len[l];
                    memcpy(f.s[j].rows[l], f.s[i].rows[l], (size_t)f.s[i].len[l] * f.row_bytes);
                    memcpy(f.s[j].sc[l], f.s[i].sc[l], (size_t)f.s[i].len[l] * f.sc_bytes);
                }
            } else {
                check_refusal(&f, st, failed, "fork");
            }
            break;
        }
        case 5: /* free */
            if (i >= 0) {
                REQUIRE(skv_kcache_seq_free(f.c, f.id[i]) == SKV_OK, "free");
                mseq_free(&f, i);
            }
            break;
        case 6:
        case 7:
            if (i >= 0)
                op_search(&f, &r, i, code % 9 == 7);
            break;
        case 8: /* block means, or a call on a dead id (refused, nothing changes) */
            if (i >= 0 && f.p.pool_chunk)
                op_means(&f, &r, i);
            else {
                const int32_t dead = (int32_t)rd_u32(&r);
                int live = 0;
                for (int j = 0; j < MAX_SEQS; j++)
                    live |= f.live[j] && f.id[j] == dead;
                if (!live)
                    REQUIRE(skv_kcache_seq_remove(f.c, dead, 0, -1) == SKV_ERR_INVALID_ARG, "dead id");
            }
            break;
        }
        f.fa.countdown = -1;
        check_all(&f);
    }
    skv_kcache_destroy(f.c);
    for (int j = 0; j < MAX_SEQS; j++)
        if (f.live[j])
            mseq_free(&f, j);
    skv_context_destroy(f.ctx);
    REQUIRE(f.fa.live == 0, "%ld allocations leaked", f.fa.live);
    return 0;
}
