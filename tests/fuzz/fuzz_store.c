/* Fuzz target: the clustered KV store driven by an operation sequence decoded from the input
 * (append in the store dtype or F32, fork, free, remove, select by every score and by tokens at
 * budgets from the input, fetch and prefetch through a host hot tier whose copies and fences
 * fail when the input says, release, evict, gather), against a model of every token ever
 * appended (position, K and V of each KV head, in the store dtype). After every operation every
 * sequence reads back bit-exactly, the hot tier's resident pages equal their host copies, and
 * the page limit holds. Selections stay within their budget, hold every sink and window token,
 * select everything when the budget covers the sequence, and gather rows equal to the model's.
 * A failed call (IO from the tier, NOMEM from an allocation failed on purpose, CAPACITY at a
 * limit) changes no host data. */
#include "fuzz.h"
#include "store/store_impl.h"

enum { MAX_SEQS = 4, MAX_LAYERS = 2, MAX_TOKENS = 400, MAX_OPS = 40 };

typedef struct mlayer {
    int64_t n;
    int32_t pos[MAX_TOKENS];
    uint8_t *k, *v; /* [MAX_TOKENS][H][kb], [MAX_TOKENS][H][vb] */
} mlayer;

typedef struct tier {
    uint8_t *mem;
    size_t bytes;
    int fail_copy, fail_fence; /* the next copy / fence fails */
} tier;

typedef struct fz {
    skv_context *ctx;
    fail_alloc fa;
    skv_store *s;
    skv_store_params p;
    tier t;
    size_t kb, vb;
    int live[MAX_SEQS];
    int32_t id[MAX_SEQS];
    mlayer ly[MAX_SEQS][MAX_LAYERS];
    skv_store_sel *sel;
} fz;

static void *t_alloc(void *user, size_t bytes)
{
    tier *t = user;
    t->mem = malloc(bytes ? bytes : 1);
    t->bytes = bytes;
    return t->mem;
}
static void t_free(void *user, void *hot, size_t bytes)
{
    tier *t = user;
    REQUIRE(hot == t->mem && bytes == t->bytes, "hot tier freed with other arguments");
    free(hot);
    t->mem = NULL;
}
static int t_copy(void *user, skv_tier_dir dir, void *hot, size_t slot_bytes, void *staging,
                  size_t staging_bytes, const skv_tier_xfer *x, int64_t n)
{
    tier *t = user;
    if (t->fail_copy) {
        t->fail_copy = 0;
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        REQUIRE(x[i].slot >= 0 && (size_t)(x[i].slot + 1) * slot_bytes <= t->bytes, "copy: slot out of range");
        REQUIRE(x[i].offset + x[i].bytes <= staging_bytes && x[i].bytes <= slot_bytes, "copy: range out of bounds");
        uint8_t *h = (uint8_t *)hot + (size_t)x[i].slot * slot_bytes, *st = (uint8_t *)staging + x[i].offset;
        if (dir == SKV_TIER_TO_HOT)
            memcpy(h, st, x[i].bytes);
        else
            memcpy(st, h, x[i].bytes);
    }
    return 0;
}
static int t_fence(void *user)
{
    tier *t = user;
    if (t->fail_fence) {
        t->fail_fence = 0;
        return -1;
    }
    return 0;
}

static void seq_new(fz *f, int i, int32_t id)
{
    f->live[i] = 1, f->id[i] = id;
    for (int l = 0; l < f->p.n_layers; l++) {
        mlayer *m = &f->ly[i][l];
        m->n = 0;
        m->k = fz_malloc((size_t)MAX_TOKENS * f->p.n_kv_heads * f->kb);
        m->v = fz_malloc((size_t)MAX_TOKENS * f->p.n_kv_heads * f->vb + 1);
    }
}

static void seq_drop(fz *f, int i)
{
    for (int l = 0; l < f->p.n_layers; l++)
        free(f->ly[i][l].k), free(f->ly[i][l].v);
    f->live[i] = 0;
}

static void check_refusal(const fz *f, skv_status s, long failed, const char *what)
{
    REQUIRE(s == SKV_ERR_NOMEM ? f->fa.failed > failed
            : s == SKV_ERR_CAPACITY ? f->p.max_pages > 0 || f->p.max_seqs > 0 || f->p.hot_pages > 0
                                    : 0,
            "%s: unexpected status %d", what, s);
}

/* Every sequence reads back as the model; the hot tier's pages equal their host copies. */
static void check_all(fz *f)
{
    const size_t H = (size_t)f->p.n_kv_heads;
    int64_t most = 0; /* buffers for the longest layer only: fresh pages cost under ASan */
    for (int i = 0; i < MAX_SEQS; i++)
        for (int32_t l = 0; f->live[i] && l < f->p.n_layers; l++)
            most = f->ly[i][l].n > most ? f->ly[i][l].n : most;
    uint8_t *k = fz_malloc((size_t)most * H * f->kb), *v = fz_malloc((size_t)most * H * f->vb + 1);
    int32_t pos[MAX_TOKENS];
    for (int i = 0; i < MAX_SEQS; i++)
        for (int32_t l = 0; f->live[i] && l < f->p.n_layers; l++) {
            const mlayer *m = &f->ly[i][l];
            skv_store_seq_info si = {.struct_size = sizeof si};
            REQUIRE(skv_store_seq_info_get(f->s, f->id[i], l, &si) == SKV_OK, "info");
            REQUIRE(si.n_tokens == m->n, "seq %d layer %d: %lld tokens, model %lld", i, l, (long long)si.n_tokens,
                    (long long)m->n);
            REQUIRE(si.n_sink >= 0 && si.n_window >= 0 && si.n_sink + si.n_window <= si.n_tokens &&
                        si.n_sink <= f->p.n_sink,
                    "seq %d layer %d: sinks %lld window %lld of %lld", i, l, (long long)si.n_sink,
                    (long long)si.n_window, (long long)si.n_tokens);
            REQUIRE(si.max_pos == (m->n ? m->pos[m->n - 1] : -1), "max_pos");
            if (!m->n)
                continue;
            REQUIRE(skv_store_read(f->s, f->id[i], l, 0, m->n, k, f->vb ? v : NULL, pos) == SKV_OK, "read");
            REQUIRE(!memcmp(pos, m->pos, (size_t)m->n * 4), "seq %d layer %d: positions differ", i, l);
            REQUIRE(!memcmp(k, m->k, (size_t)m->n * H * f->kb), "seq %d layer %d: K differs", i, l);
            REQUIRE(!f->vb || !memcmp(v, m->v, (size_t)m->n * H * f->vb), "seq %d layer %d: V differs", i, l);
        }
    free(k), free(v);
    skv_store_stats st = {.struct_size = sizeof st};
    REQUIRE(skv_store_get_stats(f->s, &st) == SKV_OK, "stats");
    REQUIRE(f->p.max_pages == 0 || st.pages_in_use <= f->p.max_pages, "pages over max_pages");
    REQUIRE(st.hot_resident <= st.hot_capacity && st.hot_pinned <= st.hot_capacity, "hot tier over capacity");
    char msg[256]; /* the store's own invariants: references, page bounds, the index, the slot map */
    REQUIRE(skv_store_validate(f->s, msg, sizeof msg) == 0, "invariant: %s", msg);
    if (f->p.hot_pages) {
        int64_t bad = -1;
        const long countdown = f->fa.countdown;
        f->fa.countdown = -1;
        const skv_status s = skv_store_check_hot(f->s, &bad);
        f->fa.countdown = countdown;
        REQUIRE(s == SKV_OK && bad == 0, "hot tier: status %d, %lld pages differ from the host", s, (long long)bad);
    }
}

static void op_append(fz *f, reader *r, int i)
{
    const int32_t l = (int32_t)rd_range(r, 0, f->p.n_layers - 1);
    mlayer *m = &f->ly[i][l];
    const size_t H = (size_t)f->p.n_kv_heads, KD = (size_t)f->p.k_dim, VD = (size_t)f->p.v_dim;
    int64_t n = rd_u8(r) < 32 ? rd_range(r, 0, 300) : rd_range(r, 0, 6);
    n = n > MAX_TOKENS - m->n ? MAX_TOKENS - m->n : n;
    const int f32_in = f->p.dtype == SKV_F32 || (rd_u8(r) & 1);
    const skv_dtype in_t = f32_in ? SKV_F32 : f->p.dtype;
    float *kf = fz_malloc((size_t)n * H * KD * 4 + 4), *vf = fz_malloc((size_t)n * H * VD * 4 + 4);
    rd_floats(r, kf, (size_t)n * H * KD);
    rd_floats(r, vf, (size_t)n * H * VD);
    uint8_t *kin = fz_malloc((size_t)n * H * KD * 4 + 4), *vin = fz_malloc((size_t)n * H * VD * 4 + 4);
    skv_convert(in_t, kin, SKV_F32, kf, (int64_t)(n * H * KD));
    skv_convert(in_t, vin, SKV_F32, vf, (int64_t)(n * H * VD));
    int32_t pos[MAX_TOKENS];
    int32_t p = m->n ? m->pos[m->n - 1] + 1 : (int32_t)rd_range(r, 0, 3);
    for (int64_t t = 0; t < n; t++) {
        pos[t] = p;
        p += (int32_t)rd_range(r, 1, 3);
    }
    const skv_store_rows rows = {n, in_t, kin, f->vb ? vin : NULL, pos};
    const long failed = f->fa.failed;
    const skv_status s = skv_store_append(f->s, f->id[i], l, &rows);
    if (s == SKV_OK) {
        for (int64_t t = 0; t < n; t++)
            m->pos[m->n + t] = pos[t];
        /* the model's rows: the input narrowed to the store dtype as common.h says */
        skv_convert(f->p.dtype, m->k + (size_t)m->n * H * f->kb, in_t, kin, (int64_t)(n * H * KD));
        skv_convert(f->p.dtype, m->v + (size_t)m->n * H * f->vb, in_t, vin, (int64_t)(n * H * VD));
        m->n += n;
    } else {
        check_refusal(f, s, failed, "append");
    }
    free(kf), free(vf), free(kin), free(vin);
}

static void op_remove(fz *f, reader *r, int i)
{
    const int32_t p0 = (int32_t)rd_range(r, 0, 900);
    const int32_t p1 = rd_u8(r) & 1 ? -1 : p0 + (int32_t)rd_range(r, 0, 200);
    const long failed = f->fa.failed;
    const skv_status s = skv_store_seq_remove(f->s, f->id[i], p0, p1);
    if (s != SKV_OK) {
        check_refusal(f, s, failed, "remove");
        return;
    }
    const size_t H = (size_t)f->p.n_kv_heads;
    for (int32_t l = 0; l < f->p.n_layers; l++) {
        mlayer *m = &f->ly[i][l];
        int64_t o = 0;
        for (int64_t t = 0; t < m->n; t++) {
            if (m->pos[t] >= p0 && (p1 < 0 || m->pos[t] < p1))
                continue;
            m->pos[o] = m->pos[t];
            memmove(m->k + (size_t)o * H * f->kb, m->k + (size_t)t * H * f->kb, H * f->kb);
            memmove(m->v + (size_t)o * H * f->vb, m->v + (size_t)t * H * f->vb, H * f->vb);
            o++;
        }
        m->n = o;
    }
}

static int64_t rank_of(const mlayer *m, int32_t pos)
{
    for (int64_t t = 0; t < m->n; t++)
        if (m->pos[t] == pos)
            return t;
    return -1;
}

/* Gathers the selection (in position order, or page order) and checks it against the model. */
static void check_selection(fz *f, reader *r, int i, int32_t l, int64_t budget, int tokens_set)
{
    const mlayer *m = &f->ly[i][l];
    const int32_t H = f->p.n_kv_heads;
    skv_store_sel_info inf = {.struct_size = sizeof inf};
    REQUIRE(skv_store_sel_info_get(f->sel, &inf) == SKV_OK && inf.seq == f->id[i] && inf.layer == l &&
                !inf.stale,
            "selection info");
    skv_store_seq_info si = {.struct_size = sizeof si};
    REQUIRE(skv_store_seq_info_get(f->s, f->id[i], l, &si) == SKV_OK, "info");
    const int order = rd_u8(r) & 1 ? SKV_GATHER_POSITIONS : SKV_GATHER_PAGES;
    const int64_t rows = inf.n_tokens + 2;
    uint8_t *k = fz_malloc((size_t)rows * f->kb), *v = fz_malloc((size_t)rows * f->vb + 1);
    int32_t *pos = fz_malloc((size_t)rows * 4);
    int64_t ls[4];
    int32_t ll[4];
    const skv_store_gather_out go = {sizeof go, f->p.dtype, order, 1, rows - 1, k, f->vb ? v : NULL, pos, ls, ll};
    int64_t got = -1;
    const long countdown = f->fa.countdown;
    f->fa.countdown = -1;
    const skv_status s = skv_store_gather(f->s, f->sel, &go, &got);
    f->fa.countdown = countdown;
    if (inf.n_tokens == 0) {
        REQUIRE(s == SKV_OK || s == SKV_ERR_STATE, "empty gather: status %d", s);
    } else {
        REQUIRE(s == SKV_OK && got == inf.n_tokens, "gather: status %d, %lld rows of %lld", s, (long long)got,
                (long long)inf.n_tokens);
        uint8_t hit[MAX_TOKENS];
        for (int32_t h = 0; h < H; h++) {
            REQUIRE(ll[h] <= budget, "head %d: %d tokens over budget %lld", h, ll[h], (long long)budget);
            memset(hit, 0, sizeof hit);
            for (int32_t j = 0; j < ll[h]; j++) {
                const int64_t row = ls[h] + j, t = rank_of(m, pos[row]);
                REQUIRE(t >= 0 && !hit[t], "head %d: gathered position %d absent or repeated", h, pos[row]);
                hit[t] = 1;
                REQUIRE(order != SKV_GATHER_POSITIONS || j == 0 || pos[row] > pos[row - 1], "positions order");
                REQUIRE(!memcmp(k + (size_t)row * f->kb, m->k + ((size_t)t * H + h) * f->kb, f->kb) &&
                            (!f->vb || !memcmp(v + (size_t)row * f->vb, m->v + ((size_t)t * H + h) * f->vb, f->vb)),
                        "head %d: gathered row of position %d differs", h, pos[row]);
            }
            for (int64_t t = 0; t < m->n; t++)
                REQUIRE(hit[t] || (t >= si.n_sink && t < m->n - si.n_window), "head %d: forced token %lld missing", h,
                        (long long)t);
            REQUIRE(tokens_set || budget < m->n || ll[h] == m->n, "head %d: budget covers %lld tokens, %d selected", h,
                    (long long)m->n, ll[h]);
        }
    }
    free(k), free(v), free(pos);
}

static void op_select(fz *f, reader *r, int i)
{
    const int32_t l = (int32_t)rd_range(r, 0, f->p.n_layers - 1), H = f->p.n_kv_heads;
    skv_store_seq_info si = {.struct_size = sizeof si};
    REQUIRE(skv_store_seq_info_get(f->s, f->id[i], l, &si) == SKV_OK, "info");
    const int64_t forced = si.n_sink + si.n_window;
    const uint8_t b = rd_u8(r);
    const int64_t budget = b < 16 ? forced - 1 : b < 64 ? si.n_tokens + rd_range(r, 0, 5) : forced + rd_range(r, 0, 200);
    const long failed = f->fa.failed;
    skv_status s;
    int tokens_set = 0;
    if (rd_u8(r) & 1) {
        skv_store_query q;
        skv_store_query_init(&q);
        const int32_t G = (int32_t)rd_range(r, 1, 2);
        float qv[2 * 3 * 16];
        rd_floats(r, qv, (size_t)G * H * f->p.k_dim);
        q.n_q_heads = G * H, q.q = qv, q.budget = budget, q.score = (skv_store_score)(rd_u8(r) % 3);
        q.candidates = 1.0f + (float)(rd_u8(r) % 8);
        q.radius_weight = (float)(rd_u8(r) % 11) / 10.0f;
        s = skv_store_select(f->s, f->id[i], l, &q, f->sel);
        if (s == SKV_ERR_UNSUPPORTED) {
            REQUIRE((q.score == SKV_SCORE_INDEX && f->p.layout == SKV_STORE_POSITIONAL) ||
                        (q.score == SKV_SCORE_MINMAX && !(f->p.flags & SKV_STORE_MINMAX)),
                    "select: unsupported without reason");
            return;
        }
    } else {
        int32_t list[64];
        const int64_t n = rd_range(r, 0, 64);
        for (int64_t j = 0; j < n; j++)
            list[j] = (int32_t)rd_range(r, -1, 900);
        s = skv_store_select_tokens(f->s, f->id[i], l, n ? list : NULL, n, budget, f->sel);
        tokens_set = 1;
    }
    if (budget < forced) {
        REQUIRE(s == SKV_ERR_INVALID_ARG, "budget below sinks and window: status %d", s);
        return;
    }
    if (s != SKV_OK) {
        check_refusal(f, s, failed, "select");
        return;
    }
    check_selection(f, r, i, l, budget, tokens_set);
}

/* Fetch (or prefetch) the current selection: on success every page is resident; IO when the
 * tier failed; in all cases the hot tier stays consistent (check_all). */
static void op_fetch(fz *f, reader *r)
{
    skv_store_sel_info inf = {.struct_size = sizeof inf};
    REQUIRE(skv_store_sel_info_get(f->sel, &inf) == SKV_OK, "info");
    const uint8_t c = rd_u8(r);
    f->t.fail_copy = (c & 3) == 1, f->t.fail_fence = (c & 3) == 2;
    const int pre = c & 4;
    const long failed = f->fa.failed;
    const skv_status s = pre ? skv_store_prefetch(f->s, f->sel) : skv_store_fetch(f->s, f->sel);
    const int tier_failed = (f->t.fail_copy == 0 && (c & 3) == 1) || (f->t.fail_fence == 0 && (c & 3) == 2);
    f->t.fail_copy = f->t.fail_fence = 0;
    if (inf.seq < 0 || inf.stale || !f->p.hot_pages) {
        REQUIRE(s == SKV_ERR_STATE || s == SKV_ERR_INVALID_ARG, "fetch of no, a stale or a tierless selection: %d", s);
        return;
    }
    if (s == SKV_ERR_IO) {
        REQUIRE(tier_failed, "IO without a tier failure");
        return;
    }
    if (s != SKV_OK) {
        check_refusal(f, s, failed, "fetch");
        return;
    }
    REQUIRE(!tier_failed || pre || inf.n_pages == 0, "a fetch whose copy or fence failed succeeded");
    if (!pre) {
        int32_t slots[MAX_TOKENS], n = 0;
        for (int32_t h = 0; h < f->p.n_kv_heads; h++) {
            REQUIRE(skv_store_sel_pages(f->sel, h, &n, NULL, slots, NULL, NULL) == SKV_OK, "pages");
            for (int32_t j = 0; j < n; j++)
                REQUIRE(slots[j] >= 0 && slots[j] < f->p.hot_pages, "head %d page %d: slot %d", h, j, slots[j]);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    fz f;
    memset(&f, 0, sizeof f);
    static const skv_dtype dts[] = {SKV_F32, SKV_BF16, SKV_F16};
    skv_store_params_init(&f.p);
    f.p.n_layers = (int32_t)rd_range(&r, 1, MAX_LAYERS);
    f.p.n_kv_heads = (int32_t)rd_range(&r, 1, 3);
    f.p.k_dim = (int32_t)rd_range(&r, 1, 16);
    f.p.v_dim = (int32_t)rd_range(&r, 0, 8);
    f.p.dtype = dts[rd_u8(&r) % 3];
    f.p.page_tokens = (int32_t)rd_range(&r, 2, 16);
    f.p.n_sink = (int32_t)rd_range(&r, 0, 6);
    f.p.n_window = (int32_t)rd_range(&r, 0, 24);
    f.p.hot_pages = rd_u8(&r) & 1 ? rd_range(&r, 1, 48) : 0;
    f.p.layout = rd_u8(&r) % 3 == 0 ? SKV_STORE_POSITIONAL : SKV_STORE_CLUSTERED;
    f.p.fanout = (int32_t)rd_range(&r, 4, 9);
    f.p.bulk_min = (int32_t)rd_range(&r, 1, 80);
    f.p.flags = rd_u8(&r) & 1 ? SKV_STORE_MINMAX : 0;
    f.p.max_pages = rd_u8(&r) % 4 == 0 ? rd_range(&r, 1, 200) : 0;
    f.p.max_seqs = rd_u8(&r) % 4 == 0 ? (int32_t)rd_range(&r, 1, MAX_SEQS) : 0;
    if (f.p.hot_pages && (rd_u8(&r) & 1))
        f.p.tier = (skv_store_tier){t_alloc, t_free, t_copy, t_fence, &f.t};
    f.kb = (size_t)f.p.k_dim * skv_dtype_size(f.p.dtype);
    f.vb = (size_t)f.p.v_dim * skv_dtype_size(f.p.dtype);
    f.ctx = fz_context(&f.fa, rd_cpu_mask(&r));
    REQUIRE(skv_store_create(f.ctx, &f.p, &f.s) == SKV_OK, "create");
    REQUIRE(skv_store_sel_create(f.s, &f.sel) == SKV_OK, "selection");
    int32_t id0;
    REQUIRE(skv_store_seq_create(f.s, &id0) == SKV_OK, "first sequence");
    seq_new(&f, 0, id0);

    for (int op = 0; op < MAX_OPS && r.n; op++) {
        const uint8_t code = rd_u8(&r), fail = rd_u8(&r);
        f.fa.countdown = fail < 40 ? fail % 8 : -1;
        const int i = pick_live(&r, f.live, MAX_SEQS);
        const long failed = f.fa.failed;
        switch (code % 10) {
        case 0:
        case 1:
        case 2:
            if (i >= 0)
                op_append(&f, &r, i);
            break;
        case 3:
            if (i >= 0)
                op_remove(&f, &r, i);
            break;
        case 4: { /* fork, or create */
            const int j = pick_free(f.live, MAX_SEQS);
            int32_t id = -1;
            if (j < 0)
                break;
            const int fork = i >= 0 && (rd_u8(&r) & 1);
            const skv_status s = fork ? skv_store_seq_fork(f.s, f.id[i], &id) : skv_store_seq_create(f.s, &id);
            if (s != SKV_OK) {
                check_refusal(&f, s, failed, fork ? "fork" : "create");
                break;
            }
            seq_new(&f, j, id);
            for (int32_t l = 0; fork && l < f.p.n_layers; l++) {
                const size_t H = (size_t)f.p.n_kv_heads;
                mlayer *d = &f.ly[j][l], *src = &f.ly[i][l];
                d->n = src->n;
                memcpy(d->pos, src->pos, (size_t)src->n * 4);
                memcpy(d->k, src->k, (size_t)src->n * H * f.kb);
                memcpy(d->v, src->v, (size_t)src->n * H * f.vb);
            }
            break;
        }
        case 5: /* free (the selection may go stale) */
            if (i >= 0 && (rd_u8(&r) & 3) == 0) {
                REQUIRE(skv_store_seq_free(f.s, f.id[i]) == SKV_OK, "free");
                seq_drop(&f, i);
            }
            break;
        case 6:
        case 7:
            if (i >= 0)
                op_select(&f, &r, i);
            break;
        case 8:
            op_fetch(&f, &r);
            break;
        case 9: { /* release, evict */
            int64_t ev = -1;
            if (rd_u8(&r) & 1)
                REQUIRE(skv_store_release(f.s, f.sel) == SKV_OK, "release");
            REQUIRE(skv_store_evict(f.s, rd_range(&r, -1, 8), &ev) == SKV_OK && ev >= 0, "evict");
            break;
        }
        }
        f.fa.countdown = -1;
        check_all(&f);
    }
    skv_store_sel_destroy(f.sel);
    skv_store_destroy(f.s);
    for (int j = 0; j < MAX_SEQS; j++)
        if (f.live[j])
            seq_drop(&f, j);
    skv_context_destroy(f.ctx);
    REQUIRE(f.fa.live == 0, "%ld allocations leaked", f.fa.live);
    REQUIRE(f.t.mem == NULL, "hot tier not freed");
    return 0;
}
