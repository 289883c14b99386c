/* The clustered KV store against a plain model: per sequence and layer an array of tokens
 * (position, K and V rows of every KV head, in the store dtype), the sink and window counts the
 * store's rule implies, and nothing else.
 *
 * Random operation sequences on random store configurations (dtype, page size, dims, heads,
 * layers, sinks, window, layout, fanout, bulk threshold, hot-tier size, min/max flag, page and
 * sequence limits, a host-supplied hot tier that fails copies and fences now and then):
 * append (one token, a few, or a bulk prefill; F32 or the store dtype), fork, free, remove
 * (tail rollbacks, middles, everything), select (every scoring), select_tokens, fetch,
 * prefetch, release, evict, gather, invalid calls. After every operation the touched sequence
 * is read back and compared bit-exactly; every few operations every sequence is, and
 * skv_store_validate checks every internal invariant (reference counts against the references
 * held, page statistics and bounds, the index tree, the slot map). Selections are checked
 * against the model: within the budget, sinks and window included, every gathered row equal
 * to the model's row of its position, "budget >= length" selecting everything. Fetched block
 * tables are read in the hot tier and compared with the model too. The hot tier never holds
 * more than its capacity.
 *
 * Default: >= 100K operations; `--long`: >= 1M; `--seed S`: one episode. */
#include <time.h>

#include "common.h"
#include "store/store_impl.h"

static uint64_t cur_seed;
static long cur_op, total_ops, n_io, n_cap, n_inval, n_cow_forks, n_selects, n_fetches;

#define CTX_CHECK(cond, ...) CHECK(cond, "seed %llu op %ld: " __VA_ARGS__)

/* ---- a hot tier the test owns: fails the N-th copy or fence on request ----------------------- */

typedef struct ttier {
    uint8_t *mem;
    size_t bytes;
    long copies, fences, fail_copy_at, fail_fence_at;
    int allocated;
} ttier;

static void *tt_alloc(void *user, size_t bytes)
{
    ttier *t = user;
    t->mem = xmalloc(bytes);
    memset(t->mem, 0xAB, bytes);
    t->bytes = bytes;
    t->allocated = 1;
    return t->mem;
}

static void tt_free(void *user, void *hot, size_t bytes)
{
    ttier *t = user;
    if (hot != t->mem || bytes != t->bytes)
        test_failures++;
    free(t->mem);
    t->mem = NULL;
    t->allocated = 0;
}

static int tt_copy(void *user, skv_tier_dir dir, void *hot, size_t slot_bytes, void *staging,
                   size_t staging_bytes, const skv_tier_xfer *x, int64_t n)
{
    ttier *t = user;
    if (++t->copies == t->fail_copy_at) {
        /* a failing copy may have written part of what it was given */
        if (dir == SKV_TIER_TO_HOT && n)
            memset((uint8_t *)hot + (size_t)x[0].slot * slot_bytes, 0xCD, x[0].bytes / 2);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        if (x[i].offset + x[i].bytes > staging_bytes || x[i].bytes > slot_bytes)
            test_failures++;
        uint8_t *h = (uint8_t *)hot + (size_t)x[i].slot * slot_bytes;
        if (dir == SKV_TIER_TO_HOT)
            memcpy(h, (uint8_t *)staging + x[i].offset, x[i].bytes);
        else
            memcpy((uint8_t *)staging + x[i].offset, h, x[i].bytes);
    }
    return 0;
}

static int tt_fence(void *user)
{
    ttier *t = user;
    return ++t->fences == t->fail_fence_at ? -1 : 0;
}

/* ---- the model ------------------------------------------------------------------------------- */

typedef struct mlayer {
    int64_t n, cap, n_sink, n_win;
    int32_t *pos;
    uint8_t *k, *v; /* [n][H][kb], [n][H][vb] */
} mlayer;

typedef struct mseq {
    int live;
    mlayer *ly;
} mseq;

typedef struct model {
    skv_store_params p;
    size_t kb, vb;
    mseq *s;
    int32_t n_s;
} model;

static void ml_reserve(const model *m, mlayer *l, int64_t n)
{
    if (n <= l->cap)
        return;
    int64_t c = l->cap ? l->cap : 64;
    while (c < n)
        c *= 2;
    const size_t H = (size_t)m->p.n_kv_heads;
    l->pos = realloc(l->pos, (size_t)c * 4);
    l->k = realloc(l->k, (size_t)c * H * m->kb + 1);
    l->v = realloc(l->v, (size_t)c * H * m->vb + 1);
    if (!l->pos || !l->k || !l->v)
        exit(2);
    l->cap = c;
}

static void model_free_seq(model *m, int32_t i)
{
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        free(m->s[i].ly[l].pos), free(m->s[i].ly[l].k), free(m->s[i].ly[l].v);
    }
    free(m->s[i].ly);
    m->s[i].live = 0;
    m->s[i].ly = NULL;
}

static mseq *model_slot(model *m, int32_t id)
{
    if (id >= m->n_s) {
        m->s = realloc(m->s, (size_t)(id + 1) * sizeof *m->s);
        if (!m->s)
            exit(2);
        for (int32_t i = m->n_s; i <= id; i++)
            memset(&m->s[i], 0, sizeof m->s[i]);
        m->n_s = id + 1;
    }
    return &m->s[id];
}

static int32_t live_count(const model *m)
{
    int32_t n = 0;
    for (int32_t i = 0; i < m->n_s; i++)
        n += m->s[i].live;
    return n;
}

static int32_t pick_live(const model *m, rng *r)
{
    const int32_t n = live_count(m);
    if (!n)
        return -1;
    int32_t k = (int32_t)rng_int(r, 0, n - 1);
    for (int32_t i = 0; i < m->n_s; i++)
        if (m->s[i].live && k-- == 0)
            return i;
    return -1;
}

/* ---- comparisons ----------------------------------------------------------------------------- */

static void compare_seq(skv_store *st, const model *m, int32_t id)
{
    const size_t H = (size_t)m->p.n_kv_heads;
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        const mlayer *ml = &m->s[id].ly[l];
        skv_store_seq_info si = {.struct_size = sizeof si};
        CHECK_OK(skv_store_seq_info_get(st, id, l, &si));
        CTX_CHECK(si.n_tokens == ml->n && si.n_sink == ml->n_sink && si.n_window == ml->n_win,
                  "seq %d layer %d: tokens %lld/%lld sink %lld/%lld window %lld/%lld",
                  (unsigned long long)cur_seed, cur_op, id, l, (long long)si.n_tokens,
                  (long long)ml->n, (long long)si.n_sink, (long long)ml->n_sink,
                  (long long)si.n_window, (long long)ml->n_win);
        if (si.n_tokens != ml->n || !ml->n)
            continue;
        uint8_t *k = xmalloc((size_t)ml->n * H * m->kb), *v = xmalloc((size_t)ml->n * H * m->vb + 1);
        int32_t *pos = xmalloc((size_t)ml->n * 4);
        CHECK_OK(skv_store_read(st, id, l, 0, ml->n, k, m->vb ? v : NULL, pos));
        CTX_CHECK(!memcmp(pos, ml->pos, (size_t)ml->n * 4), "seq %d layer %d: positions differ",
                  (unsigned long long)cur_seed, cur_op, id, l);
        CTX_CHECK(!memcmp(k, ml->k, (size_t)ml->n * H * m->kb), "seq %d layer %d: K differs",
                  (unsigned long long)cur_seed, cur_op, id, l);
        CTX_CHECK(!m->vb || !memcmp(v, ml->v, (size_t)ml->n * H * m->vb),
                  "seq %d layer %d: V differs", (unsigned long long)cur_seed, cur_op, id, l);
        free(k), free(v), free(pos);
    }
}

static void validate(skv_store *st)
{
    char msg[512];
    const int rc = skv_store_validate(st, msg, sizeof msg);
    CTX_CHECK(rc == 0, "invariant: %s", (unsigned long long)cur_seed, cur_op, msg);
    if (rc) {
        fprintf(stderr, "stopping the episode\n");
    }
}

static int64_t model_rank(const mlayer *l, int32_t pos)
{
    int64_t lo = 0, hi = l->n;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (l->pos[mid] < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < l->n && l->pos[lo] == pos ? lo : -1;
}

/* Gathers `sel` (of seq id, layer l) in position order and checks it against the model: each
 * list ascending, within the budget, holding every sink and window token, rows bit-exact; when
 * `want` is not NULL, list h holds exactly those ranks. */
static void check_selection(skv_store *st, const model *m, skv_store_sel *sel, int32_t id,
                            int32_t l, int64_t budget, const int64_t *want, int64_t n_want)
{
    const mlayer *ml = &m->s[id].ly[l];
    const int32_t H = m->p.n_kv_heads;
    skv_store_sel_info inf = {.struct_size = sizeof inf};
    CHECK_OK(skv_store_sel_info_get(sel, &inf));
    CTX_CHECK(inf.seq == id && inf.layer == l && !inf.stale, "selection info",
              (unsigned long long)cur_seed, cur_op);
    const int64_t rows = inf.n_tokens + 3;
    const int order = (int)(cur_op & 1) ? SKV_GATHER_POSITIONS : SKV_GATHER_PAGES;
    uint8_t *k = xmalloc((size_t)rows * m->kb), *v = xmalloc((size_t)rows * m->vb + 1);
    int32_t *pos = xmalloc((size_t)rows * 4);
    int64_t ls[8];
    int32_t ll[8];
    skv_store_gather_out go = {sizeof go, m->p.dtype, order, 1, rows - 1, k, m->vb ? v : NULL,
                               pos, ls, ll};
    int64_t got = -1;
    CHECK_OK(skv_store_gather(st, sel, &go, &got));
    CTX_CHECK(got == inf.n_tokens, "gathered %lld of %lld", (unsigned long long)cur_seed,
              cur_op, (long long)got, (long long)inf.n_tokens);
    uint8_t *hit = xmalloc((size_t)ml->n + 1);
    for (int32_t h = 0; h < H; h++) {
        CTX_CHECK(ll[h] <= budget, "head %d: %d tokens over budget %lld",
                  (unsigned long long)cur_seed, cur_op, h, ll[h], (long long)budget);
        CTX_CHECK(ls[h] == 1 + (h ? ls[h - 1] - 1 + ll[h - 1] : 0), "list starts",
                  (unsigned long long)cur_seed, cur_op);
        memset(hit, 0, (size_t)ml->n + 1);
        int ok = 1;
        for (int32_t i = 0; i < ll[h]; i++) {
            const int64_t row = ls[h] + i;
            const int64_t r = model_rank(ml, pos[row]);
            if (r < 0 || hit[r]) {
                ok = 0;
                break;
            }
            hit[r] = 1;
            if (order == SKV_GATHER_POSITIONS && i && pos[row] <= pos[row - 1])
                ok = 0;
            if (memcmp(k + (size_t)row * m->kb, ml->k + ((size_t)r * H + h) * m->kb, m->kb) ||
                (m->vb && memcmp(v + (size_t)row * m->vb, ml->v + ((size_t)r * H + h) * m->vb, m->vb)))
                ok = 0;
        }
        CTX_CHECK(ok, "head %d: a gathered row is absent, repeated, out of order or differs",
                  (unsigned long long)cur_seed, cur_op, h);
        for (int64_t r = 0; r < ml->n; r++)
            if ((r < ml->n_sink || r >= ml->n - ml->n_win) && !hit[r]) {
                CTX_CHECK(0, "head %d: forced rank %lld missing", (unsigned long long)cur_seed,
                          cur_op, h, (long long)r);
                break;
            }
        if (budget >= ml->n && !want)
            CTX_CHECK(ll[h] == ml->n, "head %d: budget >= length but %d of %lld selected",
                      (unsigned long long)cur_seed, cur_op, h, ll[h], (long long)ml->n);
        if (want) {
            int64_t extra = 0;
            for (int64_t i = 0; i < n_want; i++)
                extra += !hit[want[i]];
            const int64_t forced = ml->n_sink + ml->n_win;
            CTX_CHECK(extra == 0 && ll[h] == forced + n_want,
                      "head %d: token set differs (%lld missing, %d vs %lld)",
                      (unsigned long long)cur_seed, cur_op, h, (long long)extra, ll[h],
                      (long long)(forced + n_want));
        }
    }
    free(hit), free(k), free(v), free(pos);
}

/* After a fetch: every selected page is resident; its slot holds the page's rows and positions
 * (read straight from the hot memory) equal to the model's. */
static void check_block_table(skv_store *st, const model *m, skv_store_sel *sel, int32_t id,
                              int32_t l)
{
    const mlayer *ml = &m->s[id].ly[l];
    skv_store_layout_info li = {.struct_size = sizeof li};
    CHECK_OK(skv_store_layout_get(st, &li));
    skv_store_sel_info inf = {.struct_size = sizeof inf};
    CHECK_OK(skv_store_sel_info_get(sel, &inf));
    CTX_CHECK(inf.fetched, "not fetched", (unsigned long long)cur_seed, cur_op);
    const size_t cap = (size_t)inf.max_head_pages + 1;
    int32_t *slots = xmalloc(cap * 4), *nr = xmalloc(cap * 4);
    uint64_t *mk = xmalloc(cap * 8);
    const int32_t H = m->p.n_kv_heads;
    for (int32_t h = 0; h < H; h++) {
        int32_t np = -1;
        int64_t nt = -1, sum = 0;
        CHECK_OK(skv_store_sel_pages(sel, h, &np, &nt, slots, nr, mk));
        int ok = 1;
        for (int32_t i = 0; i < np && ok; i++) {
            sum += __builtin_popcountll(mk[i]);
            if (slots[i] < 0 || slots[i] >= m->p.hot_pages) {
                ok = 0;
                break;
            }
            const uint8_t *img = (const uint8_t *)li.hot + (size_t)slots[i] * li.slot_bytes;
            const int32_t *pp = (const int32_t *)img;
            for (int32_t j = 0; j < nr[i] && ok; j++) {
                const int64_t r = model_rank(ml, pp[j]);
                const uint8_t *row = img + li.rows_offset + (size_t)j * li.row_bytes;
                ok = r >= 0 && !memcmp(row, ml->k + ((size_t)r * H + h) * m->kb, m->kb) &&
                     (!m->vb || !memcmp(row + li.k_bytes, ml->v + ((size_t)r * H + h) * m->vb, m->vb));
            }
        }
        CTX_CHECK(ok && sum == nt, "head %d: block table does not match the model (%lld/%lld)",
                  (unsigned long long)cur_seed, cur_op, h, (long long)sum, (long long)nt);
    }
    free(slots), free(nr), free(mk);
}

/* ---- one episode ----------------------------------------------------------------------------- */

typedef struct episode {
    rng r;
    skv_context *ctx;
    skv_store *st;
    model m;
    ttier tt;
    int custom, specials;
    float *centers; /* [n_centers][k_dim]: keys cluster around these */
    int32_t n_centers;
    skv_store_sel *sel[2];
    int32_t sel_seq[2], sel_layer[2];
    int64_t sel_budget[2];
    uint64_t *ver; /* [seq][layer] model versions: a selection is stale when they move */
    uint64_t sel_ver[2];
    int32_t ver_cap;
} episode;

static uint64_t *verp(episode *e, int32_t seq, int32_t layer)
{
    if (seq >= e->ver_cap) {
        const int32_t c = seq + 8;
        e->ver = realloc(e->ver, (size_t)c * e->m.p.n_layers * sizeof *e->ver);
        if (!e->ver)
            exit(2);
        memset(e->ver + (size_t)e->ver_cap * e->m.p.n_layers, 0,
               (size_t)(c - e->ver_cap) * e->m.p.n_layers * sizeof *e->ver);
        e->ver_cap = c;
    }
    return &e->ver[(size_t)seq * e->m.p.n_layers + layer];
}

static void bump(episode *e, int32_t seq)
{
    static uint64_t clock;
    for (int32_t l = 0; l < e->m.p.n_layers; l++)
        *verp(e, seq, l) = ++clock;
}

static float key_value(episode *e, int32_t d, int32_t c, float *special)
{
    *special = 0;
    float x = e->centers[(size_t)c * e->m.p.k_dim + d] + (float)rng_uniform(&e->r, -0.3, 0.3);
    if (e->specials && rng_int(&e->r, 0, 400) == 0) {
        static const float sp[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 6e4f, 1e-8f};
        x = sp[rng_int(&e->r, 0, 6)];
        *special = 1;
    }
    return x;
}

/* m new tokens for (id, layer): random keys around the centers, now and then repeats. */
static void op_append(episode *e, int32_t id, int32_t l, int64_t m_tok)
{
    model *m = &e->m;
    mlayer *ml = &m->s[id].ly[l];
    const int32_t H = m->p.n_kv_heads, D = m->p.k_dim, VD = m->p.v_dim;
    float *k = xmalloc((size_t)m_tok * H * D * 4 + 4), *v = xmalloc((size_t)m_tok * H * VD * 4 + 4);
    int32_t *pos = xmalloc((size_t)m_tok * 4);
    int32_t p = ml->n ? ml->pos[ml->n - 1] : -1;
    for (int64_t i = 0; i < m_tok; i++) {
        p += (int32_t)rng_int(&e->r, 1, 3);
        pos[i] = p;
        for (int32_t h = 0; h < H; h++) {
            const int32_t c = (int32_t)rng_int(&e->r, 0, e->n_centers - 1);
            float sp;
            for (int32_t d = 0; d < D; d++)
                k[((size_t)i * H + h) * D + d] = key_value(e, d, c, &sp);
            for (int32_t d = 0; d < VD; d++)
                v[((size_t)i * H + h) * VD + d] = (float)rng_uniform(&e->r, -2, 2);
        }
        if (i > 0 && rng_int(&e->r, 0, 20) == 0) /* an exact repeat of the previous token */
            memcpy(k + (size_t)i * H * D, k + (size_t)(i - 1) * H * D, (size_t)H * D * 4);
    }
    /* the values the store keeps: narrowed to its dtype */
    const size_t es = skv_dtype_size(m->p.dtype);
    uint8_t *kn = xmalloc((size_t)m_tok * H * D * es + 4), *vn = xmalloc((size_t)m_tok * H * VD * es + 4);
    skv_convert(m->p.dtype, kn, SKV_F32, k, m_tok * H * D);
    skv_convert(m->p.dtype, vn, SKV_F32, v, m_tok * H * VD);
    const int as_f32 = m->p.dtype == SKV_F32 || rng_int(&e->r, 0, 1);
    skv_store_rows rows = {m_tok, as_f32 ? SKV_F32 : m->p.dtype, as_f32 ? (void *)k : (void *)kn,
                           VD ? (as_f32 ? (void *)v : (void *)vn) : NULL, pos};
    const skv_status s = skv_store_append(e->st, id, l, &rows);
    if (s == SKV_ERR_CAPACITY && m->p.max_pages) {
        n_cap++;
    } else {
        CTX_CHECK(s == SKV_OK, "append %lld to seq %d layer %d: %s", (unsigned long long)cur_seed,
                  cur_op, (long long)m_tok, id, l, skv_status_string(s));
    }
    if (s == SKV_OK) {
        ml_reserve(m, ml, ml->n + m_tok);
        memcpy(ml->pos + ml->n, pos, (size_t)m_tok * 4);
        memcpy(ml->k + (size_t)ml->n * H * m->kb, kn, (size_t)m_tok * H * m->kb);
        if (m->vb)
            memcpy(ml->v + (size_t)ml->n * H * m->vb, vn, (size_t)m_tok * H * m->vb);
        /* the store's rule for sinks and the window */
        int64_t a = 0;
        if (ml->n == ml->n_sink && ml->n_sink < m->p.n_sink)
            a = m_tok < m->p.n_sink - ml->n_sink ? m_tok : m->p.n_sink - ml->n_sink;
        ml->n += m_tok;
        ml->n_sink += a;
        int64_t w = ml->n_win + m_tok - a;
        if (w >= (int64_t)m->p.n_window + m->p.page_tokens)
            w -= (w - m->p.n_window) / m->p.page_tokens * m->p.page_tokens;
        ml->n_win = w;
        *verp(e, id, l) += 1000003;
    }
    free(k), free(v), free(kn), free(vn), free(pos);
}

static void op_remove(episode *e, int32_t id)
{
    model *m = &e->m;
    const mlayer *l0 = &m->s[id].ly[0];
    int32_t last = 0;
    for (int32_t l = 0; l < m->p.n_layers; l++)
        if (m->s[id].ly[l].n)
            last = m->s[id].ly[l].pos[m->s[id].ly[l].n - 1] > last ? m->s[id].ly[l].pos[m->s[id].ly[l].n - 1] : last;
    int32_t p0, p1;
    const int64_t kind = rng_int(&e->r, 0, 9);
    if (kind < 4) { /* rollback of the tail */
        p0 = last - (int32_t)rng_int(&e->r, 0, 12);
        p1 = -1;
    } else if (kind < 9) {
        p0 = (int32_t)rng_int(&e->r, 0, last + 1);
        p1 = p0 + (int32_t)rng_int(&e->r, 0, kind == 8 ? 400 : 40);
    } else {
        p0 = 0, p1 = -1;
    }
    p0 = p0 < 0 ? 0 : p0;
    (void)l0;
    const skv_status s = skv_store_seq_remove(e->st, id, p0, p1);
    if (s == SKV_ERR_CAPACITY && m->p.max_pages) {
        n_cap++;
        return;
    }
    CTX_CHECK(s == SKV_OK, "remove [%d, %d) from seq %d: %s", (unsigned long long)cur_seed, cur_op,
              p0, p1, id, skv_status_string(s));
    if (s != SKV_OK)
        return;
    const int64_t hi = p1 < 0 ? INT64_MAX : p1;
    const size_t H = (size_t)m->p.n_kv_heads;
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        mlayer *ml = &m->s[id].ly[l];
        int64_t o = 0, gs = 0, gw = 0;
        for (int64_t r = 0; r < ml->n; r++) {
            if (ml->pos[r] >= p0 && ml->pos[r] < hi) {
                gs += r < ml->n_sink;
                gw += r >= ml->n - ml->n_win;
                continue;
            }
            ml->pos[o] = ml->pos[r];
            memmove(ml->k + (size_t)o * H * m->kb, ml->k + (size_t)r * H * m->kb, H * m->kb);
            if (m->vb)
                memmove(ml->v + (size_t)o * H * m->vb, ml->v + (size_t)r * H * m->vb, H * m->vb);
            o++;
        }
        if (o != ml->n)
            *verp(e, id, l) += 7;
        ml->n = o;
        ml->n_sink -= gs;
        ml->n_win -= gw;
    }
}

static void op_fork(episode *e, int32_t id)
{
    int32_t nid = -1;
    const skv_status s = skv_store_seq_fork(e->st, id, &nid);
    if (s == SKV_ERR_CAPACITY && e->m.p.max_seqs) {
        n_cap++;
        return;
    }
    CTX_CHECK(s == SKV_OK, "fork %d: %s", (unsigned long long)cur_seed, cur_op, id, skv_status_string(s));
    if (s != SKV_OK)
        return;
    model *m = &e->m;
    mseq *src = model_slot(m, id); /* model_slot may move m->s */
    (void)src;
    mseq *d = model_slot(m, nid);
    const mseq *a = &m->s[id];
    CTX_CHECK(!d->live, "fork returned a live id %d", (unsigned long long)cur_seed, cur_op, nid);
    d->live = 1;
    d->ly = calloc((size_t)m->p.n_layers, sizeof *d->ly);
    const size_t H = (size_t)m->p.n_kv_heads;
    for (int32_t l = 0; l < m->p.n_layers; l++) {
        const mlayer *al = &a->ly[l];
        mlayer *dl = &d->ly[l];
        ml_reserve(m, dl, al->n + 1);
        dl->n = al->n, dl->n_sink = al->n_sink, dl->n_win = al->n_win;
        if (!al->n)
            continue;
        memcpy(dl->pos, al->pos, (size_t)al->n * 4);
        memcpy(dl->k, al->k, (size_t)al->n * H * m->kb);
        if (m->vb)
            memcpy(dl->v, al->v, (size_t)al->n * H * m->vb);
    }
    bump(e, nid);
    n_cow_forks++;
}

static void op_create(episode *e)
{
    int32_t id = -1;
    const skv_status s = skv_store_seq_create(e->st, &id);
    if (s == SKV_ERR_CAPACITY && e->m.p.max_seqs) {
        n_cap++;
        return;
    }
    CTX_CHECK(s == SKV_OK, "create: %s", (unsigned long long)cur_seed, cur_op, skv_status_string(s));
    if (s != SKV_OK)
        return;
    mseq *d = model_slot(&e->m, id);
    d->live = 1;
    d->ly = calloc((size_t)e->m.p.n_layers, sizeof *d->ly);
    bump(e, id);
}

static void op_free(episode *e, int32_t id)
{
    CHECK_OK(skv_store_seq_free(e->st, id));
    model_free_seq(&e->m, id);
    bump(e, id);
}

static int sel_fresh(episode *e, int which)
{
    const int32_t id = e->sel_seq[which];
    return id >= 0 && id < e->m.n_s && e->m.s[id].live &&
           *verp(e, id, e->sel_layer[which]) == e->sel_ver[which];
}

static void op_select(episode *e, int32_t id, int32_t l, int tokens)
{
    model *m = &e->m;
    const mlayer *ml = &m->s[id].ly[l];
    const int which = (int)rng_int(&e->r, 0, 1);
    const int64_t forced = ml->n_sink + ml->n_win;
    int64_t budget = forced + rng_int(&e->r, 0, 3) * (int64_t)rng_int(&e->r, 0, 40);
    if (rng_int(&e->r, 0, 6) == 0)
        budget = ml->n + rng_int(&e->r, 0, 3);
    if (rng_int(&e->r, 0, 30) == 0 && forced > 0) { /* below the forced tokens: refused */
        skv_store_query q0;
        skv_store_query_init(&q0);
        q0.n_q_heads = m->p.n_kv_heads, q0.q = e->centers, q0.budget = forced - 1;
        q0.score = SKV_SCORE_EXACT;
        CHECK_STATUS(skv_store_select(e->st, id, l, &q0, e->sel[which]), SKV_ERR_INVALID_ARG);
        n_inval++;
        return;
    }
    skv_status s;
    int64_t *want = NULL, n_want = 0;
    if (!tokens) {
        const int32_t G = (int32_t)rng_int(&e->r, 1, 3);
        const int32_t nq = G * m->p.n_kv_heads, D = m->p.k_dim;
        float *q = xmalloc((size_t)nq * D * 4);
        for (int32_t i = 0; i < nq * D; i++)
            q[i] = (float)rng_uniform(&e->r, -1, 1);
        skv_store_query qq;
        skv_store_query_init(&qq);
        qq.n_q_heads = nq, qq.q = q, qq.budget = budget;
        qq.score = m->p.layout == SKV_STORE_POSITIONAL ? (skv_store_score)rng_int(&e->r, 1, 2)
                                                       : (skv_store_score)rng_int(&e->r, 0, 2);
        qq.candidates = (float)rng_uniform(&e->r, 1, 4);
        qq.radius_weight = (float)rng_uniform(&e->r, 0, 1);
        s = skv_store_select(e->st, id, l, &qq, e->sel[which]);
        if (qq.score == SKV_SCORE_MINMAX && !(m->p.flags & SKV_STORE_MINMAX)) {
            CHECK_STATUS(s, SKV_ERR_UNSUPPORTED);
            free(q);
            return;
        }
        free(q);
    } else {
        const int64_t n = rng_int(&e->r, 0, 30);
        int32_t *pos = xmalloc((size_t)n * 4 + 4);
        want = xmalloc((size_t)n * 8 + 8);
        uint8_t *taken = calloc((size_t)ml->n + 1, 1);
        for (int64_t i = 0; i < n; i++) {
            const int64_t u = rng_int(&e->r, 0, 9);
            pos[i] = u == 0 ? -1 : u == 1 || !ml->n ? (int32_t)rng_int(&e->r, 0, 100000)
                                                    : ml->pos[rng_int(&e->r, 0, ml->n - 1)];
            /* the expected set: listed, present, not forced, first time, while room lasts */
            const int64_t r = pos[i] < 0 ? -1 : model_rank(ml, pos[i]);
            if (r >= ml->n_sink && r < ml->n - ml->n_win && !taken[r] && forced + n_want < budget) {
                taken[r] = 1;
                want[n_want++] = r;
            }
        }
        s = skv_store_select_tokens(e->st, id, l, pos, n, budget, e->sel[which]);
        free(pos), free(taken);
    }
    CTX_CHECK(s == SKV_OK, "select: %s", (unsigned long long)cur_seed, cur_op, skv_status_string(s));
    if (s == SKV_OK) {
        e->sel_seq[which] = id, e->sel_layer[which] = l, e->sel_budget[which] = budget;
        e->sel_ver[which] = *verp(e, id, l);
        check_selection(e->st, m, e->sel[which], id, l, budget, want, n_want);
        n_selects++;
    }
    free(want);
}

static void op_fetch(episode *e, int pre)
{
    const int which = (int)rng_int(&e->r, 0, 1);
    skv_store_sel *sel = e->sel[which];
    if (e->custom && rng_int(&e->r, 0, 6) == 0) {
        if (rng_int(&e->r, 0, 1))
            e->tt.fail_copy_at = e->tt.copies + rng_int(&e->r, 1, 3);
        else
            e->tt.fail_fence_at = e->tt.fences + rng_int(&e->r, 1, 3);
    }
    const skv_status s = pre ? skv_store_prefetch(e->st, sel) : skv_store_fetch(e->st, sel);
    if (!e->m.p.hot_pages || !sel_fresh(e, which)) {
        CTX_CHECK(s == SKV_ERR_STATE || (s == SKV_ERR_IO && e->custom) || e->sel_seq[which] < 0,
                  "fetch of a stale selection: %s", (unsigned long long)cur_seed, cur_op,
                  skv_status_string(s));
        return;
    }
    if (s == SKV_ERR_IO) {
        n_io++;
        return;
    }
    if (s == SKV_ERR_CAPACITY) {
        n_cap++;
        skv_store_sel_info inf = {.struct_size = sizeof inf};
        skv_store_sel_info_get(sel, &inf);
        skv_store_stats st = {.struct_size = sizeof st};
        skv_store_get_stats(e->st, &st);
        CTX_CHECK(!pre && inf.n_pages > st.hot_capacity - st.hot_pinned,
                  "CAPACITY with room: %lld pages, %lld capacity, %lld pinned",
                  (unsigned long long)cur_seed, cur_op, (long long)inf.n_pages,
                  (long long)st.hot_capacity, (long long)st.hot_pinned);
        return;
    }
    CTX_CHECK(s == SKV_OK, "fetch: %s", (unsigned long long)cur_seed, cur_op, skv_status_string(s));
    if (s == SKV_OK && !pre)
        check_block_table(e->st, &e->m, sel, e->sel_seq[which], e->sel_layer[which]);
    n_fetches++;
}

static void op_invalid(episode *e)
{
    const int32_t id = pick_live(&e->m, &e->r);
    const int64_t k = rng_int(&e->r, 0, 5);
    float kv[2048] = {0};
    int32_t pos[2] = {5, 4};
    n_inval++;
    if (k == 0 && id >= 0) { /* positions not increasing */
        skv_store_rows rows = {2, SKV_F32, kv, e->m.p.v_dim ? kv : NULL, pos};
        CHECK_STATUS(skv_store_append(e->st, id, 0, &rows), SKV_ERR_INVALID_ARG);
    } else if (k == 1) {
        CHECK_STATUS(skv_store_seq_free(e->st, 1 << 29), SKV_ERR_INVALID_ARG);
    } else if (k == 2 && id >= 0) {
        CHECK_STATUS(skv_store_seq_remove(e->st, id, 10, 5), SKV_ERR_INVALID_ARG);
    } else if (k == 3 && id >= 0 && e->m.s[id].ly[0].n) { /* at or below the last position */
        pos[0] = e->m.s[id].ly[0].pos[e->m.s[id].ly[0].n - 1];
        skv_store_rows rows = {1, SKV_F32, kv, e->m.p.v_dim ? kv : NULL, pos};
        CHECK_STATUS(skv_store_append(e->st, id, 0, &rows), SKV_ERR_INVALID_ARG);
    } else if (k == 4 && id >= 0) {
        CHECK_STATUS(skv_store_read(e->st, id, 0, 0, e->m.s[id].ly[0].n + 1, kv, kv, NULL),
                     SKV_ERR_INVALID_ARG);
    } else {
        skv_store_rows rows = {1, SKV_F32, kv, NULL, pos};
        CHECK_STATUS(skv_store_append(e->st, id, e->m.p.n_layers, &rows), SKV_ERR_INVALID_ARG);
    }
}

static void random_params(rng *r, skv_store_params *p, episode *e)
{
    skv_store_params_init(p);
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_F16};
    p->dtype = dts[rng_int(r, 0, 2)];
    static const int32_t pts[] = {2, 3, 4, 8, 16};
    p->page_tokens = pts[rng_int(r, 0, 4)];
    p->k_dim = (int32_t)rng_int(r, 1, 20);
    p->v_dim = (int32_t)(rng_int(r, 0, 3) ? rng_int(r, 1, 12) : 0);
    p->n_kv_heads = (int32_t)rng_int(r, 1, 3);
    p->n_layers = (int32_t)rng_int(r, 1, 2);
    p->n_sink = (int32_t)rng_int(r, 0, 10);
    p->n_window = (int32_t)rng_int(r, 0, 40);
    p->hot_pages = rng_int(r, 0, 4) ? rng_int(r, 4, 96) : 0;
    p->layout = rng_int(r, 0, 3) ? SKV_STORE_CLUSTERED : SKV_STORE_POSITIONAL;
    p->fanout = (int32_t)rng_int(r, 4, 8);
    p->bulk_min = (int32_t)rng_int(r, 1, 200);
    p->flags = rng_int(r, 0, 1) ? SKV_STORE_MINMAX : 0;
    p->max_pages = rng_int(r, 0, 5) ? 0 : rng_int(r, 30, 400);
    p->max_seqs = rng_int(r, 0, 4) ? 0 : (int32_t)rng_int(r, 1, 5);
    e->custom = p->hot_pages && rng_int(r, 0, 1);
    if (e->custom)
        p->tier = (skv_store_tier){tt_alloc, tt_free, tt_copy, tt_fence, &e->tt};
}

static void episode_run(uint64_t seed, long n_ops)
{
    cur_seed = seed;
    episode e;
    memset(&e, 0, sizeof e);
    e.r.s = seed;
    e.ctx = ctx_new((uint32_t)rng_int(&e.r, 0, 1) ? SKV_CPU_ALL : 0, (int)rng_int(&e.r, 1, 2));
    skv_store_params p;
    random_params(&e.r, &p, &e);
    e.specials = rng_int(&e.r, 0, 9) == 0;
    e.m.p = p;
    e.m.kb = (size_t)p.k_dim * skv_dtype_size(p.dtype);
    e.m.vb = (size_t)p.v_dim * skv_dtype_size(p.dtype);
    e.n_centers = (int32_t)rng_int(&e.r, 1, 6);
    e.centers = xmalloc((size_t)e.n_centers * p.k_dim * 4 * 3 + 64);
    for (int32_t i = 0; i < e.n_centers * p.k_dim * 3; i++)
        e.centers[i] = (float)rng_uniform(&e.r, -3, 3);
    CHECK_OK(skv_store_create(e.ctx, &p, &e.st));
    if (!e.st)
        return;
    for (int i = 0; i < 2; i++) {
        CHECK_OK(skv_store_sel_create(e.st, &e.sel[i]));
        e.sel_seq[i] = -1;
    }
    const size_t mem0 = skv_context_memory(e.ctx);
    (void)mem0;
    for (long op = 0; op < n_ops; op++) {
        cur_op = op;
        total_ops++;
        int32_t id = pick_live(&e.m, &e.r);
        const int64_t u = rng_int(&e.r, 0, 99);
        int32_t touched = -1;
        if (id < 0 || u < 3) {
            op_create(&e);
        } else if (u < 40) {
            const int32_t l = (int32_t)rng_int(&e.r, 0, p.n_layers - 1);
            const int64_t big = e.m.s[id].ly[l].n;
            const int64_t v = rng_int(&e.r, 0, 99);
            int64_t m_tok = v < 70 ? 1 : v < 95 ? rng_int(&e.r, 2, 20) : rng_int(&e.r, 30, 300);
            if (big > 700)
                op_remove(&e, id);
            else
                op_append(&e, id, l, m_tok);
            touched = id;
        } else if (u < 48) {
            op_remove(&e, id);
            touched = id;
        } else if (u < 52) {
            op_fork(&e, id);
        } else if (u < 55) {
            if (live_count(&e.m) > 1)
                op_free(&e, id);
        } else if (u < 72) {
            op_select(&e, id, (int32_t)rng_int(&e.r, 0, p.n_layers - 1), 0);
        } else if (u < 79) {
            op_select(&e, id, (int32_t)rng_int(&e.r, 0, p.n_layers - 1), 1);
        } else if (u < 88) {
            op_fetch(&e, 0);
        } else if (u < 91) {
            op_fetch(&e, 1);
        } else if (u < 94) {
            CHECK_OK(skv_store_release(e.st, e.sel[rng_int(&e.r, 0, 1)]));
        } else if (u < 97) {
            int64_t n = -1;
            CHECK_OK(skv_store_evict(e.st, rng_int(&e.r, -1, 8), &n));
        } else {
            op_invalid(&e);
        }
        if (touched >= 0 && e.m.s[touched].live)
            compare_seq(e.st, &e.m, touched);
        if (op % 8 == 0 || op + 1 == n_ops) {
            validate(e.st);
            skv_store_stats st = {.struct_size = sizeof st};
            CHECK_OK(skv_store_get_stats(e.st, &st));
            CTX_CHECK(st.hot_resident <= st.hot_capacity && st.n_seqs == live_count(&e.m),
                      "stats: resident %lld of %lld, %d seqs of %d", (unsigned long long)cur_seed,
                      cur_op, (long long)st.hot_resident, (long long)st.hot_capacity, st.n_seqs,
                      live_count(&e.m));
            if (p.hot_pages && rng_int(&e.r, 0, 3) == 0) {
                int64_t bad = -1;
                const skv_status s = skv_store_check_hot(e.st, &bad);
                CTX_CHECK((s == SKV_OK && bad == 0) || (s == SKV_ERR_IO && e.custom),
                          "hot tier check: %s, %lld pages differ", (unsigned long long)cur_seed,
                          cur_op, skv_status_string(s), (long long)bad);
            }
        }
        if (op % 64 == 0)
            for (int32_t i = 0; i < e.m.n_s; i++)
                if (e.m.s[i].live)
                    compare_seq(e.st, &e.m, i);
        if (test_failures > 20)
            break;
    }
    /* everything freed: no page, no byte left */
    for (int32_t i = 0; i < e.m.n_s; i++)
        if (e.m.s[i].live)
            op_free(&e, i);
    skv_store_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_store_get_stats(e.st, &st));
    CTX_CHECK(st.pages_in_use == 0 && st.n_seqs == 0, "after freeing all: %lld pages",
              (unsigned long long)cur_seed, cur_op, (long long)st.pages_in_use);
    validate(e.st);
    for (int i = 0; i < 2; i++)
        skv_store_sel_destroy(e.sel[i]);
    skv_store_destroy(e.st);
    CTX_CHECK(skv_context_memory(e.ctx) == mem0 - (mem0 - skv_context_memory(e.ctx)) &&
                  !e.tt.allocated,
              "hot memory not returned", (unsigned long long)cur_seed, cur_op);
    skv_context_destroy(e.ctx);
    for (int32_t i = 0; i < e.m.n_s; i++)
        if (e.m.s[i].live)
            model_free_seq(&e.m, i);
    free(e.m.s), free(e.centers), free(e.ver);
}

int main(int argc, char **argv)
{
    long target = 100000, per = 2500;
    uint64_t one = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--long"))
            target = 1000000;
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            one = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--ops") && i + 1 < argc)
            target = strtol(argv[++i], NULL, 0);
    }
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0); /* short regions on a shared machine */
    const double t0 = (double)clock() / CLOCKS_PER_SEC;
    if (one) {
        episode_run(one, per);
    } else {
        for (uint64_t seed = 1; total_ops < target && test_failures == 0; seed++)
            episode_run(seed * 0x9E3779B97F4A7C15ull + 17, per);
    }
    printf("store_ops: %ld operations (%ld selections checked, %ld fetches, %ld forks, %ld refused "
           "for capacity, %ld copy/fence failures, %ld invalid calls) in %.1f s CPU\n",
           total_ops, n_selects, n_fetches, n_cow_forks, n_cap, n_io, n_inval,
           (double)clock() / CLOCKS_PER_SEC - t0);
    return test_summary("store_ops");
}
