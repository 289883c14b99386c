/* The paged indexer key cache against a plain model: per sequence and layer a growable array of
 * rows (bytes in the cache dtype) and scales, plus a shadow of the page tables with reference
 * counts, so that every statistic (pages in use, shared pages, block-table entries) is known
 * exactly after every operation, and so is whether an operation must fail with CAPACITY.
 *
 * 1. Random operation sequences (create, free, fork, append of 0..200 keys in the cache dtype
 *    or F32, remove of random ranges, reads, invalid calls, paged top-k) on random cache
 *    configurations; after every operation the touched sequences, and every few operations all
 *    sequences, are read back and compared bit-exactly; stats are compared exactly.
 * 2. Copy-on-write and capacity (max_pages, max_seqs) scenarios written out step by step.
 * 3. skv_kcache_topk / skv_kcache_scores equal skv_indexer_topk / skv_indexer_scores on the
 *    same keys laid out contiguously, bit-exactly, at every CPU level, for every cache dtype
 *    and page size.
 *
 * `test_kcache --long` runs >= 200K random operations. Every failure message carries its
 * seed; `test_kcache --seed S` reruns one random episode. */
#include "common.h"

static uint64_t cur_seed;
static long cur_op, total_ops;
static long n_copied, n_capacity, n_invalid; /* pages copied on write; refused operations */

/* ---- the model ----------------------------------------------------------------------------- */

typedef struct mlayer {
    uint8_t *rows; /* [len][row] in the cache dtype */
    float *sc;     /* [len], FP8 only */
    int64_t len, cap;
} mlayer;

typedef struct mseq {
    int live;
    int32_t *tab; /* shadow page ids */
    int64_t n_pages, cap_pages;
    mlayer *ly;
} mseq;

typedef struct model {
    skv_kcache_params p;
    size_t row; /* bytes per key row */
    int fp8;
    mseq *s;
    int32_t n_s; /* slots (cache ids) */
    int32_t n_live;
    int32_t *ref, *free_ids;
    int32_t n_ref, cap_ref, n_free;
    int64_t in_use, shared, refs;
} model;

static void model_init(model *m, const skv_kcache_params *p)
{
    memset(m, 0, sizeof *m);
    m->p = *p;
    m->row = (size_t)p->head_dim * skv_dtype_size(p->dtype);
    m->fp8 = p->dtype == SKV_FP8_E4M3;
}

static void model_free(model *m)
{
    for (int32_t i = 0; i < m->n_s; i++) {
        if (m->s[i].ly)
            for (int32_t l = 0; l < m->p.n_layers; l++)
                free(m->s[i].ly[l].rows), free(m->s[i].ly[l].sc);
        free(m->s[i].ly), free(m->s[i].tab);
    }
    free(m->s), free(m->ref), free(m->free_ids);
    memset(m, 0, sizeof *m);
}

static int32_t page_new(model *m)
{
    int32_t id;
    if (m->n_free) {
        id = m->free_ids[--m->n_free];
    } else {
        if (m->n_ref == m->cap_ref) {
            m->cap_ref = m->cap_ref ? 2 * m->cap_ref : 64;
            m->ref = realloc(m->ref, (size_t)m->cap_ref * 4);
            m->free_ids = realloc(m->free_ids, (size_t)m->cap_ref * 4);
            if (!m->ref || !m->free_ids)
                exit(2);
        }
        id = m->n_ref++;
    }
    m->ref[id] = 1;
    m->in_use++;
    return id;
}

static void page_ref(model *m, int32_t id)
{
    if (++m->ref[id] == 2)
        m->shared++;
}

static void page_unref(model *m, int32_t id)
{
    if (--m->ref[id] == 1)
        m->shared--;
    if (m->ref[id] == 0) {
        m->free_ids[m->n_free++] = id;
        m->in_use--;
    }
}

static void tab_push(mseq *s, int32_t id)
{
    if (s->n_pages == s->cap_pages) {
        s->cap_pages = s->cap_pages ? 2 * s->cap_pages : 8;
        s->tab = realloc(s->tab, (size_t)s->cap_pages * 4);
        if (!s->tab)
            exit(2);
    }
    s->tab[s->n_pages++] = id;
}

static void layer_reserve(const model *m, mlayer *ly, int64_t n)
{
    if (n <= ly->cap)
        return;
    int64_t cap = ly->cap ? ly->cap : 64;
    while (cap < n)
        cap *= 2;
    ly->rows = realloc(ly->rows, (size_t)cap * m->row);
    ly->sc = realloc(ly->sc, (size_t)cap * 4);
    if (!ly->rows || !ly->sc)
        exit(2);
    ly->cap = cap;
}

/* A fresh, empty sequence at cache id `id`. */
static mseq *model_add_seq(model *m, int32_t id)
{
    if (id >= m->n_s) {
        const int32_t n = id + 8;
        m->s = realloc(m->s, (size_t)n * sizeof *m->s);
        if (!m->s)
            exit(2);
        memset(m->s + m->n_s, 0, (size_t)(n - m->n_s) * sizeof *m->s);
        m->n_s = n;
    }
    mseq *s = &m->s[id];
    if (!s->ly) {
        s->ly = calloc((size_t)m->p.n_layers, sizeof *s->ly);
        if (!s->ly)
            exit(2);
    }
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        s->ly[l].len = 0;
        layer_reserve(m, &s->ly[l], 1); /* never NULL: memcpy and memmove of 0 bytes stay defined */
    }
    s->n_pages = 0;
    s->live = 1;
    m->n_live++;
    return s;
}

static mseq *model_seq(model *m, int32_t id)
{
    return id >= 0 && id < m->n_s && m->s[id].live ? &m->s[id] : NULL;
}

static void model_free_seq(model *m, int32_t id)
{
    mseq *s = &m->s[id];
    for (int64_t i = 0; i < s->n_pages; i++)
        page_unref(m, s->tab[i]);
    m->refs -= s->n_pages;
    s->n_pages = 0;
    s->live = 0;
    m->n_live--;
}

static void model_fork(model *m, int32_t src, int32_t id)
{
    mseq *d = model_add_seq(m, id);
    const mseq *s = &m->s[src]; /* after the realloc */
    for (int64_t i = 0; i < s->n_pages; i++) {
        tab_push(d, s->tab[i]);
        page_ref(m, s->tab[i]);
    }
    m->refs += s->n_pages;
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        layer_reserve(m, &d->ly[l], s->ly[l].len);
        memcpy(d->ly[l].rows, s->ly[l].rows, (size_t)s->ly[l].len * m->row);
        memcpy(d->ly[l].sc, s->ly[l].sc, (size_t)s->ly[l].len * 4);
        d->ly[l].len = s->ly[l].len;
    }
}

/* Pages that making table entries [first, need) writable takes: shared ones copied, missing
 * ones added. */
static int64_t pages_needed(const model *m, const mseq *s, int64_t first, int64_t need)
{
    int64_t n = 0;
    for (int64_t i = first; i < need && i < s->n_pages; i++)
        n += m->ref[s->tab[i]] > 1;
    return n + (need > s->n_pages ? need - s->n_pages : 0);
}

static void make_writable(model *m, mseq *s, int64_t first, int64_t need)
{
    for (int64_t i = first; i < need; i++) {
        if (i < s->n_pages) {
            if (m->ref[s->tab[i]] > 1) {
                n_copied++;
                const int32_t id = page_new(m);
                page_unref(m, s->tab[i]);
                s->tab[i] = id;
            }
        } else {
            tab_push(s, page_new(m));
            m->refs++;
        }
    }
}

static int over_capacity(const model *m, int64_t more)
{
    return more > 0 && m->p.max_pages && m->in_use + more > m->p.max_pages;
}

/* The status an append of n keys must return, and the model after it. Rows already in the
 * cache dtype: rows / sc. */
static skv_status model_append(model *m, int32_t id, int32_t layer, int64_t n, const uint8_t *rows,
                               const float *sc)
{
    mseq *s = &m->s[id];
    mlayer *ly = &s->ly[layer];
    if (n == 0)
        return SKV_OK;
    const int64_t P = m->p.page_tokens, start = ly->len, end = start + n;
    if (over_capacity(m, pages_needed(m, s, start / P, (end + P - 1) / P)))
        return SKV_ERR_CAPACITY;
    make_writable(m, s, start / P, (end + P - 1) / P);
    layer_reserve(m, ly, end);
    memcpy(ly->rows + (size_t)start * m->row, rows, (size_t)n * m->row);
    if (m->fp8)
        memcpy(ly->sc + start, sc, (size_t)n * 4);
    ly->len = end;
    return SKV_OK;
}

static skv_status model_remove(model *m, int32_t id, int64_t p0, int64_t p1)
{
    mseq *s = &m->s[id];
    const int64_t P = m->p.page_tokens;
    if (p0 < 0)
        return SKV_ERR_INVALID_ARG;
    if (p1 < 0)
        p1 = INT64_MAX;
    if (p1 < p0)
        return SKV_ERR_INVALID_ARG;
    int moving = 0;
    int64_t max_new = 0;
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        const int64_t len = s->ly[l].len, a = p0 < len ? p0 : len, b = p1 < len ? p1 : len;
        moving |= b > a && b < len; /* later rows move down: pages from p0 on are written */
        max_new = len - (b - a) > max_new ? len - (b - a) : max_new;
    }
    const int64_t keep = (max_new + P - 1) / P;
    if (moving) {
        if (over_capacity(m, pages_needed(m, s, p0 / P, keep)))
            return SKV_ERR_CAPACITY;
        make_writable(m, s, p0 / P, keep);
    }
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        mlayer *ly = &s->ly[l];
        const int64_t len = ly->len, a = p0 < len ? p0 : len, b = p1 < len ? p1 : len;
        memmove(ly->rows + (size_t)a * m->row, ly->rows + (size_t)b * m->row, (size_t)(len - b) * m->row);
        memmove(ly->sc + a, ly->sc + b, (size_t)(len - b) * 4);
        ly->len = len - (b - a);
    }
    while (s->n_pages > keep) {
        page_unref(m, s->tab[--s->n_pages]);
        m->refs--;
    }
    return SKV_OK;
}

static int64_t seq_max_len(const model *m, const mseq *s)
{
    int64_t mx = 0;
    for (int32_t l = 0; l < m->p.n_layers; l++)
        mx = s->ly[l].len > mx ? s->ly[l].len : mx;
    return mx;
}

/* ---- checks against the cache ------------------------------------------------------------ */

static skv_kcache_stats get_stats(const skv_kcache *c)
{
    skv_kcache_stats st;
    memset(&st, 0xa5, sizeof st);
    st.struct_size = sizeof st;
    CHECK_OK(skv_kcache_get_stats(c, &st));
    return st;
}

static void check_stats(const model *m, const skv_kcache *c, const skv_kcache_stats *created)
{
    const skv_kcache_stats st = get_stats(c);
    int64_t refs = 0;
    for (int32_t i = 0; i < m->n_s; i++)
        if (m->s[i].live)
            refs += (seq_max_len(m, &m->s[i]) + m->p.page_tokens - 1) / m->p.page_tokens;
    const int ok = st.n_seqs == m->n_live && st.pages_in_use == m->in_use &&
                   st.pages_shared == m->shared && st.page_refs == m->refs && st.page_refs == refs &&
                   st.bytes_per_page == created->bytes_per_page &&
                   st.bytes_per_token == created->bytes_per_token &&
                   st.bytes_in_use == st.pages_in_use * st.bytes_per_page;
    CHECK(ok,
          "seed %llu op %ld: stats seqs %d pages %lld shared %lld refs %lld bytes %lld; model %d "
          "%lld %lld %lld (refs by length %lld)",
          (unsigned long long)cur_seed, cur_op, st.n_seqs, (long long)st.pages_in_use,
          (long long)st.pages_shared, (long long)st.page_refs, (long long)st.bytes_in_use,
          m->n_live, (long long)m->in_use, (long long)m->shared, (long long)m->refs, (long long)refs);
}

/* Lengths and every stored key of one sequence, bit-exact. */
static void check_seq(const model *m, const skv_kcache *c, int32_t id)
{
    const mseq *s = &m->s[id];
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        const mlayer *ly = &s->ly[l];
        int64_t len = -1;
        CHECK_OK(skv_kcache_seq_length(c, id, l, &len));
        CHECK(len == ly->len, "seed %llu op %ld: seq %d layer %d length %lld, model %lld",
              (unsigned long long)cur_seed, cur_op, id, l, (long long)len, (long long)ly->len);
        if (len != ly->len)
            continue;
        uint8_t *rows = xmalloc((size_t)len * m->row + 1);
        float *sc = xmalloc((size_t)len * 4 + 4);
        CHECK_OK(skv_kcache_read(c, id, l, 0, len, rows, m->fp8 ? sc : NULL));
        const int same = memcmp(rows, ly->rows, (size_t)len * m->row) == 0 &&
                         (!m->fp8 || memcmp(sc, ly->sc, (size_t)len * 4) == 0);
        if (!same) {
            int64_t first = 0;
            while (first < len && memcmp(rows + first * m->row, ly->rows + first * m->row, m->row) == 0 &&
                   (!m->fp8 || memcmp(sc + first, ly->sc + first, 4) == 0))
                first++;
            CHECK(same, "seed %llu op %ld: seq %d layer %d: key %lld of %lld differs from the model",
                  (unsigned long long)cur_seed, cur_op, id, l, (long long)first, (long long)len);
        } else {
            CHECK(same, "-");
        }
        free(rows), free(sc);
    }
}

static void check_all(const model *m, const skv_kcache *c, const skv_kcache_stats *created)
{
    for (int32_t i = 0; i < m->n_s; i++)
        if (m->s[i].live)
            check_seq(m, c, i);
    check_stats(m, c, created);
}

/* ---- key data ------------------------------------------------------------------------------- */

static const float specials[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e30f, -1e-40f, 500.0f, 1e-6f};

/* n keys to append: `in` holds what is passed (F32 or the cache dtype), `rows`/`sc` what the
 * cache must store. raw: any bit pattern in the cache dtype; else values in [-2, 2] with a
 * fraction `special` of special values. */
typedef struct keys {
    skv_key_block kb;
    void *in;
    float *in_sc;
    uint8_t *rows;
    float *sc;
} keys;

static void keys_make(keys *o, rng *r, const model *m, int64_t n, int f32_in, int raw, double special)
{
    const int32_t D = m->p.head_dim;
    const size_t ne = (size_t)n * D;
    o->rows = xmalloc(ne * skv_dtype_size(m->p.dtype) + 1);
    o->sc = xmalloc((size_t)n * 4 + 4);
    o->in_sc = NULL;
    if (raw && !f32_in) {
        uint8_t *b = o->rows;
        for (size_t i = 0; i < ne * skv_dtype_size(m->p.dtype); i++)
            b[i] = (uint8_t)rng_next(r);
        for (int64_t i = 0; i < n; i++) {
            const uint64_t u = rng_next(r);
            o->sc[i] = u % 8 == 0 ? specials[u / 8 % 9] : (float)rng_uniform(r, -1, 1);
        }
        o->in = xmalloc(ne * skv_dtype_size(m->p.dtype) + 1);
        memcpy(o->in, o->rows, ne * skv_dtype_size(m->p.dtype));
        if (m->fp8) {
            o->in_sc = xmalloc((size_t)n * 4 + 4);
            memcpy(o->in_sc, o->sc, (size_t)n * 4);
        }
    } else {
        float *x = xmalloc(ne * 4 + 4);
        for (size_t i = 0; i < ne; i++)
            x[i] = special > 0 && rng_uniform(r, 0, 1) < special ? specials[rng_int(r, 0, 8)]
                                                                  : (float)rng_uniform(r, -2, 2);
        /* what the cache stores: narrowed row by row (FP8: one scale per row) */
        for (int64_t i = 0; i < n; i++) {
            if (m->p.dtype == SKV_FP8_E4M3)
                skv_quantize_fp8(x + i * D, 1, D, D, f32_in ? m->p.quant_flags : (uint32_t)rng_int(r, 0, 1),
                                 o->rows + (size_t)i * D, o->sc + i);
            else
                skv_convert(m->p.dtype, o->rows + (size_t)i * m->row, SKV_F32, x + i * D, D);
        }
        if (f32_in) {
            o->in = x;
        } else {
            free(x);
            o->in = xmalloc(ne * skv_dtype_size(m->p.dtype) + 1);
            memcpy(o->in, o->rows, ne * skv_dtype_size(m->p.dtype));
            if (m->fp8) {
                o->in_sc = xmalloc((size_t)n * 4 + 4);
                memcpy(o->in_sc, o->sc, (size_t)n * 4);
            }
        }
    }
    o->kb = (skv_key_block){n, D, f32_in ? SKV_F32 : m->p.dtype, o->in, o->in_sc};
}

static void keys_free(keys *o)
{
    free(o->in), free(o->in_sc), free(o->rows), free(o->sc);
}

/* ---- paged top-k against contiguous top-k ------------------------------------------------- */

typedef struct query {
    skv_indexer_query q;
    void *qd;
    float *qs, *w;
    int32_t *pos;
} query;

static void query_make(query *o, rng *r, int32_t T, int32_t H, int32_t D, skv_dtype qt,
                       int pos_mode, int64_t L)
{
    const size_t n = (size_t)T * H * D;
    float *q32 = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        q32[i] = (float)rng_uniform(r, -1, 1);
    o->w = xmalloc((size_t)T * H * 4);
    for (int64_t i = 0; i < (int64_t)T * H; i++)
        o->w[i] = (float)rng_uniform(r, -1, 1);
    o->qs = NULL;
    if (qt == SKV_F32) {
        o->qd = q32;
        q32 = NULL;
    } else if (qt == SKV_BF16) {
        o->qd = xmalloc(n * 2);
        skv_convert(SKV_BF16, o->qd, SKV_F32, q32, (int64_t)n);
    } else {
        o->qd = xmalloc(n);
        o->qs = xmalloc((size_t)T * H * 4);
        skv_quantize_fp8(q32, (int64_t)T * H, D, D, 0, o->qd, o->qs);
    }
    free(q32);
    o->pos = NULL;
    if (pos_mode) {
        o->pos = xmalloc((size_t)T * 4);
        for (int32_t t = 0; t < T; t++)
            o->pos[t] = pos_mode == 1 ? (int32_t)(L - T + t) : (int32_t)rng_int(r, -2, L + 2);
    }
    o->q = (skv_indexer_query){T, H, D, qt, o->qd, o->qs, o->w, o->pos};
}

static void query_free(query *o)
{
    free(o->qd), free(o->qs), free(o->w), free(o->pos);
}

static long topk_compared;

/* The same bits, a NaN's sign and payload aside (they follow the order in which a kernel
 * happens to meet NaN operands, which the paging of the keys may change). */
static int same_scores(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(isnan(a[i]) && isnan(b[i])) && memcmp(&a[i], &b[i], 4) != 0)
            return 0;
    return 1;
}

/* skv_kcache_topk / _scores on (id, layer) against skv_indexer_topk / _scores on the model's
 * contiguous copy of the same keys, bit-exactly (NaN as NaN). */
static void compare_topk(skv_context *ctx, skv_kcache *c, const model *m, int32_t id, int32_t layer,
                         const query *qq, const int32_t *ks, int nk, const char *label)
{
    const mlayer *ly = &m->s[id].ly[layer];
    static float no_scale;
    const skv_key_block kb = {ly->len, m->p.head_dim, m->p.dtype, ly->len ? ly->rows : NULL,
                              m->fp8 ? (ly->len ? ly->sc : &no_scale) : NULL};
    const skv_key_block *kbp = &kb;
    const int32_t T = qq->q.n_tokens;
    const size_t ns = (size_t)T * (ly->len ? ly->len : 1);
    float *s1 = xmalloc(ns * 4), *s2 = xmalloc(ns * 4);
    CHECK_OK(skv_kcache_scores(c, id, layer, &qq->q, s1));
    CHECK_OK(skv_indexer_scores(ctx, &qq->q, kbp, s2));
    CHECK(same_scores(s1, s2, (size_t)T * ly->len), "%s: paged scores differ (L=%lld)", label,
          (long long)ly->len);
    for (int j = 0; j < nk; j++) {
        const int32_t k = ks[j];
        const size_t n = (size_t)T * k;
        int32_t *i1 = xmalloc(n * 4), *i2 = xmalloc(n * 4), *i3 = xmalloc(n * 4);
        float *v1 = xmalloc(n * 4), *v2 = xmalloc(n * 4);
        CHECK_OK(skv_kcache_topk(c, id, layer, &qq->q, k, i1, v1));
        CHECK_OK(skv_indexer_topk(ctx, &qq->q, kbp, k, i2, v2));
        CHECK(memcmp(i1, i2, n * 4) == 0 && same_scores(v1, v2, n),
              "%s k=%d: paged top-k differs from contiguous (L=%lld)", label, k, (long long)ly->len);
        CHECK_OK(skv_kcache_topk(c, id, layer, &qq->q, k, i3, NULL));
        CHECK(memcmp(i1, i3, n * 4) == 0, "%s k=%d: paged top-k without scores differs", label, k);
        /* and the selection is the sorted paged scores (so equality is not of two wrong answers) */
        int32_t *want = xmalloc((size_t)k * 4);
        const int32_t t = T - 1;
        int64_t vis = ly->len;
        if (qq->q.positions) {
            const int64_t v = (int64_t)qq->q.positions[t] + 1;
            vis = v < 0 ? 0 : v > vis ? vis : v;
        }
        sort_topk(s1 + (size_t)t * ly->len, vis, k, want, NULL);
        CHECK(memcmp(want, i1 + (size_t)t * k, (size_t)k * 4) == 0,
              "%s k=%d: paged top-k is not the sorted paged scores", label, k);
        free(want), free(i1), free(i2), free(i3), free(v1), free(v2);
    }
    free(s1), free(s2);
    topk_compared++;
}

/* ---- random operation episodes -------------------------------------------------------------- */

static const char *dname(skv_dtype t)
{
    return t == SKV_F32 ? "f32" : t == SKV_BF16 ? "bf16" : t == SKV_FP8_E4M3 ? "fp8" : "?";
}

static int32_t pick_live(const model *m, rng *r)
{
    if (!m->n_live)
        return -1;
    int64_t j = rng_int(r, 0, m->n_live - 1);
    for (int32_t i = 0; i < m->n_s; i++)
        if (m->s[i].live && j-- == 0)
            return i;
    return -1;
}

static int32_t pick_dead(const model *m, rng *r)
{
    switch (rng_int(r, 0, 3)) {
    case 0: return -1 - (int32_t)rng_int(r, 0, 5);
    case 1: return m->n_s + (int32_t)rng_int(r, 0, 1000);
    case 2: return INT32_MAX;
    default:
        for (int32_t i = 0; i < m->n_s; i++)
            if (!m->s[i].live)
                return i;
        return m->n_s + 3;
    }
}

/* Exactly the state a failed call must leave: stats and every sequence. */
static void check_unchanged(const model *m, const skv_kcache *c, const skv_kcache_stats *before,
                            const skv_kcache_stats *created, const char *what)
{
    if (strstr(what, "invalid"))
        n_invalid++;
    else
        n_capacity++;
    const skv_kcache_stats after = get_stats(c);
    CHECK(memcmp(before, &after, sizeof after) == 0, "seed %llu op %ld: failed %s changed the stats",
          (unsigned long long)cur_seed, cur_op, what);
    check_all(m, c, created);
}

static void episode(uint64_t seed, long n_ops)
{
    rng r = {seed};
    cur_seed = seed;
    cur_op = -1;
    static const int32_t Ds[] = {1, 3, 8, 16, 33, 128};
    static const int32_t Ps[] = {1, 2, 7, 16, 64};
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    skv_kcache_params p;
    skv_kcache_params_init(&p);
    p.n_layers = (int32_t)rng_int(&r, 1, 3);
    p.head_dim = Ds[rng_int(&r, 0, 5)];
    p.dtype = dts[rng_int(&r, 0, 2)];
    p.page_tokens = Ps[rng_int(&r, 0, 4)];
    p.quant_flags = (uint32_t)rng_int(&r, 0, 1);
    if (p.dtype == SKV_FP8_E4M3 && p.head_dim % 32 == 0 && p.page_tokens % 16 == 0)
        p.lane_copy = (int32_t)rng_int(&r, 0, 1); /* top-k of few heads reads it: compared below */
    const int64_t max_len = p.page_tokens == 1 ? 300 : 1200;
    if (rng_int(&r, 0, 2) == 0)
        p.max_pages = rng_int(&r, 1, 3 * max_len / p.page_tokens);
    if (rng_int(&r, 0, 2) == 0)
        p.max_seqs = (int32_t)rng_int(&r, 1, 8);

    skv_context *ctx = ctx_new(SKV_CPU_ALL, 2);
    const size_t mem0 = skv_context_memory(ctx);
    skv_kcache *c = NULL;
    CHECK_OK(skv_kcache_create(ctx, &p, &c));
    if (!c) {
        skv_context_destroy(ctx);
        return;
    }
    const size_t mem1 = skv_context_memory(ctx);
    size_t ws_growth = 0; /* workspace grown by top-k calls */
    const skv_kcache_stats created = get_stats(c);
    model m;
    model_init(&m, &p);
    {
        /* values, scales and the lane copy (whole 64-byte vectors: up to 63 bytes of padding) */
        const int64_t want_tok = (int64_t)p.n_layers * ((int64_t)m.row + (m.fp8 ? 4 : 0) +
                                                        (p.lane_copy ? p.head_dim : 0));
        const int64_t pad = p.lane_copy ? 64 : 8;
        CHECK(created.n_seqs == 0 && created.pages_in_use == 0 && created.page_refs == 0 &&
                  created.bytes_in_use == 0 && created.bytes_per_page >= want_tok * p.page_tokens &&
                  created.bytes_per_page < want_tok * p.page_tokens + pad * p.n_layers &&
                  created.bytes_per_token >= want_tok &&
                  created.bytes_per_token <= want_tok + (pad / 2 + 4) * p.n_layers,
              "seed %llu: fresh stats: bytes per page %lld, per token %lld, want %lld per token",
              (unsigned long long)seed, (long long)created.bytes_per_page,
              (long long)created.bytes_per_token, (long long)want_tok);
    }
    const int max_live = 10;
    int64_t peak_pages = 0;
    int32_t peak_seqs = 0;

    for (long op = 0; op < n_ops; op++) {
        cur_op = op;
        total_ops++;
        const int64_t u = rng_int(&r, 0, 99);
        int32_t touched[2] = {-1, -1};
        skv_kcache_stats before = get_stats(c);
        if (u < 8 || m.n_live == 0) { /* create */
            int32_t id = -7;
            const skv_status want =
                p.max_seqs && m.n_live >= p.max_seqs ? SKV_ERR_CAPACITY : SKV_OK;
            const skv_status got = skv_kcache_seq_create(c, &id);
            CHECK(got == want, "seed %llu op %ld: seq_create %d, want %d", (unsigned long long)seed,
                  op, got, want);
            if (got == SKV_OK) {
                CHECK(id >= 0 && id < (1 << 30) && !model_seq(&m, id),
                      "seed %llu op %ld: new sequence id %d", (unsigned long long)seed, op, id);
                if (id >= 0 && id < (1 << 30) && !model_seq(&m, id)) {
                    model_add_seq(&m, id);
                    touched[0] = id;
                }
            } else {
                check_unchanged(&m, c, &before, &created, "seq_create");
            }
            if (m.n_live >= max_live) { /* keep the population bounded */
                const int32_t v = pick_live(&m, &r);
                CHECK_OK(skv_kcache_seq_free(c, v));
                model_free_seq(&m, v);
            }
        } else if (u < 16) { /* fork */
            const int32_t src = pick_live(&m, &r);
            int32_t id = -7;
            const skv_status want =
                p.max_seqs && m.n_live >= p.max_seqs ? SKV_ERR_CAPACITY : SKV_OK;
            const skv_status got = skv_kcache_seq_fork(c, src, &id);
            CHECK(got == want, "seed %llu op %ld: fork %d, want %d", (unsigned long long)seed, op,
                  got, want);
            if (got == SKV_OK && id >= 0 && id < (1 << 30) && !model_seq(&m, id)) {
                model_fork(&m, src, id);
                touched[0] = id;
                touched[1] = src;
                const skv_kcache_stats st = get_stats(c);
                const int64_t np = m.s[src].n_pages;
                CHECK(st.pages_in_use == before.pages_in_use && st.page_refs == before.page_refs + np &&
                          st.pages_shared >= np && (np == 0 || st.pages_shared > 0),
                      "seed %llu op %ld: after fork of %lld pages: in use %lld -> %lld, shared %lld",
                      (unsigned long long)seed, op, (long long)np, (long long)before.pages_in_use,
                      (long long)st.pages_in_use, (long long)st.pages_shared);
            } else if (got == SKV_OK) {
                CHECK(0, "seed %llu op %ld: fork gave id %d", (unsigned long long)seed, op, id);
            } else {
                check_unchanged(&m, c, &before, &created, "fork");
            }
        } else if (u < 22) { /* free */
            const int32_t id = pick_live(&m, &r);
            CHECK_OK(skv_kcache_seq_free(c, id));
            model_free_seq(&m, id);
        } else if (u < 62) { /* append */
            const int32_t id = pick_live(&m, &r);
            const int32_t layer = (int32_t)rng_int(&r, 0, p.n_layers - 1);
            const int64_t v = rng_int(&r, 0, 9);
            int64_t n = v < 1 ? 0 : v < 4 ? rng_int(&r, 1, 8) : v < 7 ? rng_int(&r, 9, 64)
                                                                       : rng_int(&r, 65, 200);
            if (m.s[id].ly[layer].len + n > max_len)
                n = rng_int(&r, 0, 3);
            const int f32_in = p.dtype == SKV_F32 ? (int)rng_int(&r, 0, 1) : (int)rng_int(&r, 0, 2) == 0;
            keys kk;
            keys_make(&kk, &r, &m, n, f32_in, (int)rng_int(&r, 0, 1), 0.02);
            const skv_status want = model_append(&m, id, layer, n, kk.rows, kk.sc);
            const skv_status got = skv_kcache_append(c, id, layer, &kk.kb);
            CHECK(got == want, "seed %llu op %ld: append %lld keys (%s in) to seq %d layer %d: %d, want %d",
                  (unsigned long long)seed, op, (long long)n, dname(kk.kb.dtype), id, layer, got, want);
            if (got != SKV_OK)
                check_unchanged(&m, c, &before, &created, "append");
            keys_free(&kk);
            touched[0] = id;
        } else if (u < 82) { /* remove */
            const int32_t id = pick_live(&m, &r);
            const int64_t len = seq_max_len(&m, &m.s[id]);
            int64_t p0 = 0, p1 = -1;
            switch (rng_int(&r, 0, 7)) {
            case 0: p0 = rng_int(&r, 0, len), p1 = -rng_int(&r, 1, 3); break;          /* to the end */
            case 1: p0 = len + rng_int(&r, 0, 5), p1 = rng_int(&r, 0, 1) ? -1 : p0 + 7; break; /* past */
            case 2: case 3: p0 = rng_int(&r, 0, len), p1 = rng_int(&r, p0, len); break;  /* middle */
            case 4: p0 = rng_int(&r, 0, len), p1 = len + rng_int(&r, 0, 9); break;        /* p1 past */
            case 5: p0 = rng_int(&r, 0, len), p1 = p0; break;                           /* empty */
            case 6: p0 = 0, p1 = rng_int(&r, 0, 1) ? -1 : len; break;                   /* all */
            default:
                p0 = rng_int(&r, 0, len), p1 = p0 + rng_int(&r, 1, p.page_tokens + 1); /* short */
                break;
            }
            if (rng_int(&r, 0, 49) == 0) { /* invalid */
                if (rng_int(&r, 0, 1))
                    p0 = -rng_int(&r, 1, 5);
                else
                    p0 = rng_int(&r, 1, len + 1), p1 = p0 - rng_int(&r, 1, p0);
            }
            const skv_status want = model_remove(&m, id, p0, p1);
            const skv_status got = skv_kcache_seq_remove(c, id, p0, p1);
            CHECK(got == want, "seed %llu op %ld: remove [%lld, %lld) of seq %d (length %lld): %d, want %d",
                  (unsigned long long)seed, op, (long long)p0, (long long)p1, id, (long long)len, got, want);
            if (got != SKV_OK)
                check_unchanged(&m, c, &before, &created, "remove");
            touched[0] = id;
        } else if (u < 90) { /* partial read */
            const int32_t id = pick_live(&m, &r);
            const int32_t layer = (int32_t)rng_int(&r, 0, p.n_layers - 1);
            const mlayer *ly = &m.s[id].ly[layer];
            const int64_t start = rng_int(&r, 0, ly->len), n = rng_int(&r, 0, ly->len - start);
            uint8_t *rows = xmalloc((size_t)n * m.row + 1);
            float *sc = xmalloc((size_t)n * 4 + 4);
            CHECK_OK(skv_kcache_read(c, id, layer, start, n, rows, m.fp8 ? sc : NULL));
            CHECK(memcmp(rows, ly->rows + (size_t)start * m.row, (size_t)n * m.row) == 0 &&
                      (!m.fp8 || memcmp(sc, ly->sc + start, (size_t)n * 4) == 0),
                  "seed %llu op %ld: read [%lld, +%lld) of seq %d layer %d differs",
                  (unsigned long long)seed, op, (long long)start, (long long)n, id, layer);
            /* one key past the end: refused, output untouched */
            memset(rows, 0x5c, (size_t)n * m.row + 1);
            CHECK_STATUS(skv_kcache_read(c, id, layer, start, ly->len - start + 1, rows,
                                         m.fp8 ? sc : NULL),
                         SKV_ERR_INVALID_ARG);
            CHECK(rows[0] == 0x5c && rows[(size_t)n * m.row] == 0x5c, "read past the end wrote");
            free(rows), free(sc);
        } else if (u < 94) { /* paged top-k */
            const int32_t id = pick_live(&m, &r);
            const int32_t layer = (int32_t)rng_int(&r, 0, p.n_layers - 1);
            const size_t mem_a = skv_context_memory(ctx);
            query qq;
            query_make(&qq, &r, (int32_t)rng_int(&r, 1, 3), (int32_t)rng_int(&r, 1, 5), p.head_dim,
                       dts[rng_int(&r, 0, 2)], (int)rng_int(&r, 0, 2), m.s[id].ly[layer].len);
            const int32_t ks[2] = {(int32_t)rng_int(&r, 1, 20), (int32_t)rng_int(&r, 1, 400)};
            char label[96];
            snprintf(label, sizeof label, "seed %llu op %ld", (unsigned long long)seed, op);
            compare_topk(ctx, c, &m, id, layer, &qq, ks, 2, label);
            query_free(&qq);
            ws_growth += skv_context_memory(ctx) - mem_a;
        } else { /* invalid calls: refused, nothing changes */
            const int32_t dead = pick_dead(&m, &r), live = pick_live(&m, &r);
            int32_t out = 12345;
            int64_t len = 777;
            float kbuf[256] = {0}, ksc[2] = {1, 1};
            skv_key_block kb = {1, p.head_dim, p.dtype, kbuf, m.fp8 ? ksc : NULL};
            if (p.head_dim * 4 > (int32_t)sizeof kbuf)
                kb.k = m.s[live].ly[0].rows; /* never read: the call is refused first */
            switch (rng_int(&r, 0, 7)) {
            case 0: CHECK_STATUS(skv_kcache_seq_free(c, dead), SKV_ERR_INVALID_ARG); break;
            case 1:
                CHECK_STATUS(skv_kcache_seq_fork(c, dead, &out), SKV_ERR_INVALID_ARG);
                CHECK(out == 12345, "failed fork wrote its output");
                break;
            case 2: CHECK_STATUS(skv_kcache_append(c, dead, 0, &kb), SKV_ERR_INVALID_ARG); break;
            case 3: CHECK_STATUS(skv_kcache_append(c, live, p.n_layers, &kb), SKV_ERR_INVALID_ARG); break;
            case 4: CHECK_STATUS(skv_kcache_seq_remove(c, dead, 0, -1), SKV_ERR_INVALID_ARG); break;
            case 5:
                CHECK_STATUS(skv_kcache_seq_length(c, dead, 0, &len), SKV_ERR_INVALID_ARG);
                CHECK(len == 777, "failed seq_length wrote its output");
                break;
            case 6:
                kb.head_dim = p.head_dim + 1;
                CHECK_STATUS(skv_kcache_append(c, live, 0, &kb), SKV_ERR_INVALID_ARG);
                break;
            default:
                CHECK_STATUS(skv_kcache_seq_remove(c, live, 5, 4), SKV_ERR_INVALID_ARG);
                break;
            }
            check_unchanged(&m, c, &before, &created, "invalid call");
        }
        for (int j = 0; j < 2; j++)
            if (touched[j] >= 0 && model_seq(&m, touched[j]))
                check_seq(&m, c, touched[j]);
        check_stats(&m, c, &created);
        if (op % 32 == 31)
            check_all(&m, c, &created);
        peak_pages = m.in_use > peak_pages ? m.in_use : peak_pages;
        peak_seqs = m.n_live > peak_seqs ? m.n_live : peak_seqs;
    }
    check_all(&m, c, &created);

    /* free everything: no page left, page memory returned (block-table and id metadata may be
       kept for reuse), and destroying the cache returns the context to where it was */
    const size_t mem_full = skv_context_memory(ctx);
    const int64_t pages_full = m.in_use;
    for (int32_t i = 0; i < m.n_s; i++)
        if (m.s[i].live) {
            CHECK_OK(skv_kcache_seq_free(c, i));
            model_free_seq(&m, i);
        }
    const skv_kcache_stats st = get_stats(c);
    CHECK(st.n_seqs == 0 && st.pages_in_use == 0 && st.pages_shared == 0 && st.page_refs == 0 &&
              st.bytes_in_use == 0,
          "seed %llu: after freeing every sequence: %d seqs, %lld pages", (unsigned long long)seed,
          st.n_seqs, (long long)st.pages_in_use);
    const size_t mem_empty = skv_context_memory(ctx);
    CHECK(mem_full - mem_empty >= (size_t)pages_full * (size_t)created.bytes_per_page,
          "seed %llu: freeing %lld pages of %lld bytes released only %zu bytes",
          (unsigned long long)seed, (long long)pages_full, (long long)created.bytes_per_page,
          mem_full - mem_empty);
    const size_t meta = (size_t)64 * (size_t)(2 * peak_pages + 2 * peak_seqs + 64);
    CHECK(mem_empty - mem1 - ws_growth <= meta,
          "seed %llu: %zu bytes still held with no sequence (metadata bound %zu)",
          (unsigned long long)seed, mem_empty - mem1 - ws_growth, meta);
    skv_kcache_destroy(c);
    CHECK(skv_context_memory(ctx) == mem0 + ws_growth,
          "seed %llu: context memory %zu after destroying the cache, %zu before creating it",
          (unsigned long long)seed, skv_context_memory(ctx) - ws_growth, mem0);
    skv_context_destroy(ctx);
    model_free(&m);
}

/* ---- copy-on-write and capacity, step by step --------------------------------------------- */

typedef struct fixture {
    skv_context *ctx;
    skv_kcache *c;
    model m;
    skv_kcache_stats created;
    rng r;
} fixture;

static void fixture_open(fixture *f, skv_dtype dt, int32_t L, int32_t D, int32_t P, int64_t max_pages,
                         int32_t max_seqs, uint64_t seed)
{
    skv_kcache_params p;
    skv_kcache_params_init(&p);
    p.n_layers = L, p.head_dim = D, p.dtype = dt, p.page_tokens = P;
    p.max_pages = max_pages, p.max_seqs = max_seqs;
    f->ctx = ctx_new(SKV_CPU_ALL, 2);
    f->c = NULL;
    if (skv_kcache_create(f->ctx, &p, &f->c) != SKV_OK) {
        fprintf(stderr, "test: cannot create a key cache\n");
        exit(2);
    }
    model_init(&f->m, &p);
    f->created = get_stats(f->c);
    f->r = (rng){seed};
    cur_seed = seed;
    cur_op = -1;
}

static void fixture_close(fixture *f)
{
    skv_kcache_destroy(f->c);
    skv_context_destroy(f->ctx);
    model_free(&f->m);
}

static int32_t fx_create(fixture *f)
{
    int32_t id = -1;
    CHECK_OK(skv_kcache_seq_create(f->c, &id));
    model_add_seq(&f->m, id);
    return id;
}

static int32_t fx_fork(fixture *f, int32_t src)
{
    int32_t id = -1;
    CHECK_OK(skv_kcache_seq_fork(f->c, src, &id));
    model_fork(&f->m, src, id);
    return id;
}

/* Appends n keys (F32 input every other call) and checks the status the model predicts
 * equals `want`; on failure, nothing changed. */
static void fx_append(fixture *f, int32_t id, int32_t layer, int64_t n, skv_status want)
{
    keys kk;
    keys_make(&kk, &f->r, &f->m, n, (int)(f->r.s & 1), 0, 0);
    const skv_kcache_stats before = get_stats(f->c);
    const skv_status pred = model_append(&f->m, id, layer, n, kk.rows, kk.sc);
    CHECK(pred == want, "model predicts %d for append of %lld, scenario says %d", pred, (long long)n, want);
    CHECK_STATUS(skv_kcache_append(f->c, id, layer, &kk.kb), want);
    if (want != SKV_OK)
        check_unchanged(&f->m, f->c, &before, &f->created, "append");
    check_all(&f->m, f->c, &f->created);
    keys_free(&kk);
}

static void fx_remove(fixture *f, int32_t id, int64_t p0, int64_t p1, skv_status want)
{
    const skv_kcache_stats before = get_stats(f->c);
    const skv_status pred = model_remove(&f->m, id, p0, p1);
    CHECK(pred == want, "model predicts %d for remove [%lld, %lld), scenario says %d", pred,
          (long long)p0, (long long)p1, want);
    CHECK_STATUS(skv_kcache_seq_remove(f->c, id, p0, p1), want);
    if (want != SKV_OK)
        check_unchanged(&f->m, f->c, &before, &f->created, "remove");
    check_all(&f->m, f->c, &f->created);
}

static void fx_free(fixture *f, int32_t id)
{
    CHECK_OK(skv_kcache_seq_free(f->c, id));
    model_free_seq(&f->m, id);
    check_all(&f->m, f->c, &f->created);
}

#define EXPECT_PAGES(f, in_use, shared, refs)                                                 \
    do {                                                                                      \
        const skv_kcache_stats st_ = get_stats((f)->c);                                       \
        CHECK(st_.pages_in_use == (in_use) && st_.pages_shared == (shared) &&                 \
                  st_.page_refs == (refs),                                                    \
              "pages in use %lld shared %lld refs %lld, want %d %d %d",                       \
              (long long)st_.pages_in_use, (long long)st_.pages_shared,                       \
              (long long)st_.page_refs, (in_use), (shared), (refs));                          \
    } while (0)

static void cow_scenario(skv_dtype dt)
{
    fixture f;
    fixture_open(&f, dt, 2, 8, 4, 0, 0, 100 + dt);
    const int32_t a = fx_create(&f);
    fx_append(&f, a, 0, 10, SKV_OK); /* pages 0..2 */
    fx_append(&f, a, 1, 6, SKV_OK);
    EXPECT_PAGES(&f, 3, 0, 3);
    const int32_t b = fx_fork(&f, a);
    CHECK(b != a, "fork returned its source");
    EXPECT_PAGES(&f, 3, 3, 6); /* nothing copied yet */
    check_all(&f.m, f.c, &f.created);
    fx_append(&f, b, 0, 1, SKV_OK); /* writes shared page 2: one copy */
    EXPECT_PAGES(&f, 4, 2, 6);
    fx_append(&f, b, 1, 2, SKV_OK); /* layer 1 rows 6, 7: page 1 copied */
    EXPECT_PAGES(&f, 5, 1, 6);
    fx_append(&f, b, 1, 1, SKV_OK); /* page 2 of b is private already; layer 1 row 8 */
    EXPECT_PAGES(&f, 5, 1, 6);
    fx_append(&f, b, 0, 6, SKV_OK); /* rows 11..16: page 2 private, pages 3, 4 new */
    EXPECT_PAGES(&f, 7, 1, 8);
    fx_remove(&f, a, 1, 2, SKV_OK); /* a's rows move down: shared page 0 copied */
    EXPECT_PAGES(&f, 8, 0, 8);
    const int32_t c2 = fx_fork(&f, b);
    EXPECT_PAGES(&f, 8, 5, 13);
    fx_remove(&f, c2, 8, -1, SKV_OK); /* truncation writes nothing: no copy, pages dropped */
    EXPECT_PAGES(&f, 8, 2, 10);
    fx_remove(&f, c2, 6, 7, SKV_OK); /* layer 0 moves rows 7 -> 6 (page 1); layer 1 has 8 */
    EXPECT_PAGES(&f, 9, 1, 10);
    fx_free(&f, b);
    EXPECT_PAGES(&f, 5, 0, 5);
    fx_free(&f, a);
    fx_free(&f, c2);
    EXPECT_PAGES(&f, 0, 0, 0);
    fixture_close(&f);
}

static void capacity_scenario(skv_dtype dt)
{
    fixture f;
    fixture_open(&f, dt, 1, 4, 4, 4, 0, 200 + dt);
    const int32_t a = fx_create(&f);
    fx_append(&f, a, 0, 17, SKV_ERR_CAPACITY); /* 5 pages at once: refused whole */
    fx_append(&f, a, 0, 16, SKV_OK);
    EXPECT_PAGES(&f, 4, 0, 4);
    fx_append(&f, a, 0, 1, SKV_ERR_CAPACITY);
    fx_append(&f, a, 0, 0, SKV_OK);
    const int32_t b = fx_fork(&f, a); /* sharing needs no page */
    EXPECT_PAGES(&f, 4, 4, 8);
    fx_append(&f, b, 0, 1, SKV_ERR_CAPACITY);
    fx_remove(&f, b, 0, 1, SKV_ERR_CAPACITY); /* would copy 4 shared pages */
    fx_remove(&f, b, 13, 14, SKV_ERR_CAPACITY); /* would copy page 3 */
    fx_remove(&f, b, 8, -1, SKV_OK);           /* truncation: no copy */
    EXPECT_PAGES(&f, 4, 2, 6);
    fx_remove(&f, a, 12, -1, SKV_OK); /* a drops page 3: freed */
    EXPECT_PAGES(&f, 3, 2, 5);
    fx_append(&f, b, 0, 1, SKV_OK); /* b's third page */
    EXPECT_PAGES(&f, 4, 2, 6);
    fx_append(&f, b, 0, 4, SKV_ERR_CAPACITY);
    fx_remove(&f, b, 0, 1, SKV_ERR_CAPACITY); /* two shared pages to copy, none free */
    fx_free(&f, a);
    EXPECT_PAGES(&f, 3, 0, 3);
    fx_remove(&f, b, 0, 1, SKV_OK); /* now private: no copy needed */
    fx_append(&f, b, 0, 8, SKV_OK);
    EXPECT_PAGES(&f, 4, 0, 4);
    fx_free(&f, b);
    fixture_close(&f);

    /* max_seqs: create and fork refused at the limit, output untouched; a slot freed is reused */
    fixture_open(&f, dt, 2, 4, 2, 0, 2, 300 + dt);
    const int32_t s0 = fx_create(&f);
    fx_append(&f, s0, 1, 5, SKV_OK);
    const int32_t s1 = fx_fork(&f, s0);
    int32_t out = 4242;
    skv_kcache_stats before = get_stats(f.c);
    CHECK_STATUS(skv_kcache_seq_create(f.c, &out), SKV_ERR_CAPACITY);
    CHECK(out == 4242, "refused seq_create wrote its output (%d)", out);
    CHECK_STATUS(skv_kcache_seq_fork(f.c, s0, &out), SKV_ERR_CAPACITY);
    CHECK(out == 4242, "refused seq_fork wrote its output (%d)", out);
    check_unchanged(&f.m, f.c, &before, &f.created, "create/fork at max_seqs");
    fx_free(&f, s0);
    const int32_t s2 = fx_fork(&f, s1);
    CHECK(s2 != s1, "fork returned its source");
    before = get_stats(f.c);
    CHECK_STATUS(skv_kcache_seq_fork(f.c, s1, &out), SKV_ERR_CAPACITY);
    check_unchanged(&f.m, f.c, &before, &f.created, "fork at max_seqs");
    fx_free(&f, s1);
    fx_free(&f, s2);
    const int32_t s3 = fx_create(&f);
    const int32_t s4 = fx_create(&f);
    CHECK(s3 != s4, "two live sequences share id %d", s3);
    fixture_close(&f);
}

/* ---- paged top-k against contiguous: every level, dtype, page size, head_dim -------------- */

static void topk_matrix(void)
{
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
    static const int32_t Ps[] = {1, 7, 64}, Ds[] = {16, 32, 33}, Hs[] = {8, 16}, Ts[] = {1, 5};
    static const int32_t ks[] = {1, 7, 64, 1000};
    uint64_t seed = 5000;
    int qi = 0;
    for (int lv = 0; lv < N_LEVELS; lv++) {
        if (!level_available(&all_levels[lv]))
            continue;
        skv_context *ctx = ctx_new(all_levels[lv].mask, 2);
        for (int di = 0; di < 3; di++)
            for (int pi = 0; pi < 3; pi++)
                for (int hi = 0; hi < 3; hi++)
                    for (int lc = 0; lc < 2; lc++) { /* the lane copy where a cache can keep one */
                    if (lc && !(dts[di] == SKV_FP8_E4M3 && Ds[hi] % 32 == 0 && Ps[pi] % 16 == 0))
                        continue;
                    skv_kcache_params p;
                    skv_kcache_params_init(&p);
                    p.n_layers = 2, p.head_dim = Ds[hi], p.dtype = dts[di], p.page_tokens = Ps[pi];
                    p.quant_flags = (uint32_t)(seed & 1);
                    p.lane_copy = lc;
                    skv_kcache *c = NULL;
                    CHECK_OK(skv_kcache_create(ctx, &p, &c));
                    if (!c)
                        continue;
                    const skv_kcache_stats created = get_stats(c);
                    model m;
                    model_init(&m, &p);
                    rng r = {++seed};
                    cur_seed = seed;
                    /* A: appends in random pieces with a removal; B: a fork of A, appended to
                       and cut in the middle (pages partly shared, partly copied); E: empty;
                       Long (some shapes): enough keys that a token's keys are split over threads */
                    int32_t ids[4], n_ids = 0;
                    CHECK_OK(skv_kcache_seq_create(c, &ids[0]));
                    model_add_seq(&m, ids[0]);
                    for (int step = 0; step < 8; step++) {
                        keys kk;
                        const int32_t layer = step & 1;
                        const int64_t n = rng_int(&r, 0, 150);
                        keys_make(&kk, &r, &m, n, (int)rng_int(&r, 0, 1), 0, step == 3 ? 0.01 : 0);
                        CHECK_STATUS(skv_kcache_append(c, ids[0], layer, &kk.kb),
                                     model_append(&m, ids[0], layer, n, kk.rows, kk.sc));
                        keys_free(&kk);
                    }
                    const int64_t la = seq_max_len(&m, &m.s[ids[0]]);
                    const int64_t cut = rng_int(&r, 0, la), cut1 = cut + rng_int(&r, 0, 20);
                    CHECK_STATUS(skv_kcache_seq_remove(c, ids[0], cut, cut1),
                                 model_remove(&m, ids[0], cut, cut1));
                    n_ids = 1;
                    CHECK_OK(skv_kcache_seq_fork(c, ids[0], &ids[1]));
                    model_fork(&m, ids[0], ids[1]);
                    n_ids = 2;
                    for (int step = 0; step < 4; step++) {
                        keys kk;
                        const int32_t layer = step & 1;
                        const int64_t n = rng_int(&r, 1, 120);
                        keys_make(&kk, &r, &m, n, (int)rng_int(&r, 0, 1), 0, 0);
                        CHECK_STATUS(skv_kcache_append(c, ids[1], layer, &kk.kb),
                                     model_append(&m, ids[1], layer, n, kk.rows, kk.sc));
                        keys_free(&kk);
                    }
                    const int64_t p0 = rng_int(&r, 0, seq_max_len(&m, &m.s[ids[1]]) / 2);
                    const int64_t p1 = p0 + rng_int(&r, 1, 40);
                    CHECK_STATUS(skv_kcache_seq_remove(c, ids[1], p0, p1), model_remove(&m, ids[1], p0, p1));
                    CHECK_OK(skv_kcache_seq_create(c, &ids[2]));
                    model_add_seq(&m, ids[2]);
                    n_ids = 3;
                    if ((hi == 0 || lc) && pi > 0) { /* split over threads */
                        CHECK_OK(skv_kcache_seq_create(c, &ids[3]));
                        model_add_seq(&m, ids[3]);
                        n_ids = 4;
                        keys kk;
                        keys_make(&kk, &r, &m, 9000, (int)rng_int(&r, 0, 1), 0, 0.001);
                        CHECK_STATUS(skv_kcache_append(c, ids[3], 0, &kk.kb),
                                     model_append(&m, ids[3], 0, 9000, kk.rows, kk.sc));
                        keys_free(&kk);
                    }
                    check_all(&m, c, &created);
                    for (int si = 0; si < n_ids; si++)
                        for (int h = 0; h < 2; h++)
                            for (int t = 0; t < 2; t++)
                                for (int pm = 1; pm <= 2; pm++) {
                                    const int32_t layer = si == 3 ? 0 : (int32_t)rng_int(&r, 0, 1);
                                    if (si == 2 && (h || t || pm == 2))
                                        continue; /* the empty sequence once */
                                    if (si == 3 && (h != t || pm == 1))
                                        continue; /* the long one twice */
                                    const skv_dtype qt = dts[qi++ % 3];
                                    query qq;
                                    query_make(&qq, &r, Ts[t], Hs[h], p.head_dim, qt, pm,
                                               m.s[ids[si]].ly[layer].len);
                                    char label[160];
                                    snprintf(label, sizeof label,
                                             "%s cache=%s%s P=%d D=%d H=%d T=%d q=%s pos=%d seq %d "
                                             "(seed %llu)",
                                             all_levels[lv].name, dname(p.dtype), lc ? "+lanes" : "",
                                             p.page_tokens, p.head_dim, Hs[h], Ts[t], dname(qt), pm,
                                             si, (unsigned long long)seed);
                                    compare_topk(ctx, c, &m, ids[si], layer, &qq, ks, 4, label);
                                    query_free(&qq);
                                }
                    skv_kcache_destroy(c);
                    model_free(&m);
                }
        skv_context_destroy(ctx);
    }
}

int main(int argc, char **argv)
{
    int long_run = 0;
    long seed_only = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--long"))
            long_run = 1;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed_only = atol(argv[++i]);
    }
    if (seed_only >= 0) {
        episode((uint64_t)seed_only, long_run ? 4000 : 400);
        return test_summary("test_kcache");
    }

    for (int t = 0; t < 3; t++) {
        static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_FP8_E4M3};
        cow_scenario(dts[t]);
        capacity_scenario(dts[t]);
    }

    /* random episodes: a few thousand operations by default, >= 200K with --long */
    const long target = long_run ? 1000000 : 6000;
    const long per_episode = long_run ? 2000 : 400;
    uint64_t seed = 1;
    while (total_ops < target)
        episode(seed++, per_episode);
    printf("%ld random operations in %llu episodes (%ld pages copied on write, %ld refused for "
           "capacity, %ld invalid calls refused)\n",
           total_ops, (unsigned long long)(seed - 1), n_copied, n_capacity, n_invalid);

    topk_matrix();
    printf("%ld paged top-k comparisons\n", topk_compared);
    return test_summary("test_kcache");
}
