/* The store's cold tier against an in-process backend (cold_fake.h) and a plain-array model.
 *
 * - basics: a parked sequence frees its host pages, reads back byte for byte, and selects and
 *   gathers bit for bit like a twin store that never parked; pinned and shared pages stay;
 *   stale selections; bad arguments;
 * - sharing: two stores that append the same prefix hold its pages once in the backend; a
 *   different model tag shares nothing;
 * - a random-operation run (appends, removals, forks, frees, parks, budget trims, restores,
 *   selections) with the backend refusing, failing and corrupting requests at random: a call
 *   that fails changes nothing, every token ever appended reads back as appended, selections
 *   equal the twin's, and the backend holds exactly one reference per parked page (plus the
 *   deletes that failed, which the store counts);
 * - allocation failure at every allocation site of a park / restore / trim scenario. */
#include "cold_fake.h"
#include "count_alloc.h"
#include "store/store_impl.h"

enum { H = 2, D = 8, VD = 8, L = 2, MAXSEQ = 8, MAXTOK = 4096 };

/* ---- the plain model ---------------------------------------------------------------------- */

typedef struct mlayer { int32_t n; int32_t pos[MAXTOK]; float k[MAXTOK][H * D], v[MAXTOK][H * VD]; } mlayer;
typedef struct mseq { int live; mlayer ly[L]; } mseq;

static mseq model[MAXSEQ];

static void model_remove(mlayer *m, int32_t p0, int32_t p1)
{
    int32_t w = 0;
    for (int32_t i = 0; i < m->n; i++) {
        if (m->pos[i] >= p0 && (p1 < 0 || m->pos[i] < p1))
            continue;
        m->pos[w] = m->pos[i];
        memcpy(m->k[w], m->k[i], sizeof m->k[i]);
        memcpy(m->v[w], m->v[i], sizeof m->v[i]);
        w++;
    }
    m->n = w;
}

static skv_store *store_new(skv_context *ctx, skv_store_layout layout, int hot)
{
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_layers = L, p.n_kv_heads = H, p.k_dim = D, p.v_dim = VD, p.dtype = SKV_F32;
    p.page_tokens = 4, p.n_sink = 2, p.n_window = 8, p.bulk_min = 16, p.fanout = 4;
    p.hot_pages = hot, p.layout = layout;
    skv_store *s = NULL;
    CHECK_OK(skv_store_create(ctx, &p, &s));
    return s;
}

static void validate(skv_store *s, const char *where)
{
    char msg[512];
    const int rc = skv_store_validate(s, msg, sizeof msg);
    CHECK(rc == 0, "%s: %s", where, msg);
}

/* Every token of (seq, layer) reads back as the model holds it. Returns the read status. */
static skv_status check_read(skv_store *s, int32_t seq, const char *where)
{
    for (int32_t l = 0; l < L; l++) {
        const mlayer *m = &model[seq].ly[l];
        skv_store_seq_info in = {.struct_size = sizeof in};
        CHECK_OK(skv_store_seq_info_get(s, seq, l, &in));
        CHECK(in.n_tokens == m->n, "%s: seq %d layer %d holds %lld, model %d", where, seq, l,
              (long long)in.n_tokens, m->n);
        if (in.n_tokens != m->n || m->n == 0)
            continue;
        float *k = xmalloc((size_t)m->n * sizeof m->k[0]), *v = xmalloc((size_t)m->n * sizeof m->v[0]);
        int32_t *pos = xmalloc((size_t)m->n * 4);
        const skv_status st = skv_store_read(s, seq, l, 0, m->n, k, v, pos);
        if (st == SKV_OK) {
            CHECK(!memcmp(pos, m->pos, (size_t)m->n * 4), "%s: seq %d layer %d positions", where, seq, l);
            CHECK(!memcmp(k, m->k, (size_t)m->n * sizeof m->k[0]), "%s: seq %d layer %d K", where, seq, l);
            CHECK(!memcmp(v, m->v, (size_t)m->n * sizeof m->v[0]), "%s: seq %d layer %d V", where, seq, l);
        }
        free(k), free(v), free(pos);
        if (st != SKV_OK)
            return st;
    }
    return SKV_OK;
}

/* Appends m random tokens to every layer of seq in both stores (twin may be NULL) and the
 * model; returns the cold store's status (the twin and the model change only on success). */
static skv_status append_both(skv_store *s, skv_store *twin, int32_t seq, int32_t m, rng *r)
{
    for (int32_t l = 0; l < L; l++) {
        mlayer *ml = &model[seq].ly[l];
        if (ml->n + m > MAXTOK)
            return SKV_OK;
        float *k = xmalloc((size_t)m * sizeof ml->k[0]), *v = xmalloc((size_t)m * sizeof ml->v[0]);
        int32_t *pos = xmalloc((size_t)m * 4);
        int32_t p = ml->n ? ml->pos[ml->n - 1] : -1;
        for (int32_t i = 0; i < m; i++) {
            pos[i] = p += 1 + (int32_t)rng_int(r, 0, 2);
            const int topic = (int)rng_int(r, 0, 3); /* clustered keys */
            for (int32_t j = 0; j < H * D; j++)
                k[(size_t)i * H * D + j] = (float)rng_uniform(r, -0.3, 0.3) + (j % 4 == topic ? 2.0f : 0.0f);
            for (int32_t j = 0; j < H * VD; j++)
                v[(size_t)i * H * VD + j] = (float)rng_uniform(r, -1, 1);
        }
        const skv_store_rows rows = {m, SKV_F32, k, v, pos};
        const skv_status st = skv_store_append(s, seq, l, &rows);
        if (st == SKV_OK) {
            if (twin)
                CHECK_OK(skv_store_append(twin, seq, l, &rows));
            memcpy(ml->pos + ml->n, pos, (size_t)m * 4);
            memcpy(ml->k + ml->n, k, (size_t)m * sizeof ml->k[0]);
            memcpy(ml->v + ml->n, v, (size_t)m * sizeof ml->v[0]);
            ml->n += m;
        }
        free(k), free(v), free(pos);
        if (st != SKV_OK)
            return st;
    }
    return SKV_OK;
}

/* Selects (exact scoring, or an external token set) and gathers in both stores; the rows must
 * be equal bit for bit. Returns the cold store's status. */
static skv_status check_select(skv_store *s, skv_store *twin, int32_t seq, rng *r, const char *where)
{
    const int32_t l = (int32_t)rng_int(r, 0, L - 1);
    const mlayer *m = &model[seq].ly[l];
    if (m->n == 0)
        return SKV_OK;
    skv_store_sel *a = NULL, *b = NULL;
    CHECK_OK(skv_store_sel_create(s, &a));
    CHECK_OK(skv_store_sel_create(twin, &b));
    const int64_t budget = 16 + rng_int(r, 0, 40); /* >= sinks + window (2 + at most 11) */
    skv_status st;
    if (rng_int(r, 0, 1)) {
        float q[H * D];
        for (int32_t j = 0; j < H * D; j++)
            q[j] = (float)rng_uniform(r, -1, 1);
        skv_store_query qu;
        skv_store_query_init(&qu);
        qu.n_q_heads = H, qu.q = q, qu.budget = budget, qu.score = SKV_SCORE_EXACT;
        st = skv_store_select(s, seq, l, &qu, a);
        if (st == SKV_OK)
            CHECK_OK(skv_store_select(twin, seq, l, &qu, b));
    } else {
        int32_t want[64];
        for (int32_t i = 0; i < 64; i++)
            want[i] = m->pos[rng_int(r, 0, m->n - 1)];
        st = skv_store_select_tokens(s, seq, l, want, 64, budget, a);
        if (st == SKV_OK)
            CHECK_OK(skv_store_select_tokens(twin, seq, l, want, 64, budget, b));
    }
    if (st == SKV_OK) {
        skv_store_sel_info ia = {.struct_size = sizeof ia}, ib = {.struct_size = sizeof ib};
        CHECK_OK(skv_store_sel_info_get(a, &ia));
        CHECK_OK(skv_store_sel_info_get(b, &ib));
        CHECK(ia.n_tokens == ib.n_tokens, "%s: %lld vs %lld tokens selected", where,
              (long long)ia.n_tokens, (long long)ib.n_tokens);
        const int64_t n = ia.n_tokens > 0 ? ia.n_tokens : 1;
        float *ka = xmalloc((size_t)n * D * 4 * 2), *va = xmalloc((size_t)n * VD * 4 * 2);
        int32_t *pa = xmalloc((size_t)n * 4 * 2);
        int64_t sa[H], sb[H];
        int32_t la[H], lb[H];
        skv_store_gather_out o = {sizeof o, SKV_F32, SKV_GATHER_POSITIONS, 0, n, ka, va, pa, sa, la};
        skv_store_gather_out ob = {sizeof ob, SKV_F32, SKV_GATHER_POSITIONS, 0, n, ka + n * D,
                                   va + n * VD, pa + n, sb, lb};
        if (ia.n_tokens == ib.n_tokens && ia.n_tokens > 0) {
            CHECK_OK(skv_store_gather(s, a, &o, NULL));
            CHECK_OK(skv_store_gather(twin, b, &ob, NULL));
            CHECK(!memcmp(ka, ka + n * D, (size_t)n * D * 4) && !memcmp(va, va + n * VD, (size_t)n * VD * 4) &&
                  !memcmp(pa, pa + n, (size_t)n * 4) && !memcmp(la, lb, sizeof la),
                  "%s: gathered rows differ from the twin's", where);
        }
        free(ka), free(va), free(pa);
    }
    skv_store_sel_destroy(a);
    skv_store_sel_destroy(b);
    return st;
}

static skv_store_cold_stats cold_stats(const skv_store *s)
{
    skv_store_cold_stats cs = {.struct_size = sizeof cs};
    CHECK_OK(skv_store_cold_stats_get(s, &cs));
    return cs;
}

/* One reference per parked page, plus every delete that failed. */
static void check_refs(skv_store *s, fake *f, const char *where)
{
    fake_wait(f); /* deletes of freed parked pages complete */
    const skv_store_cold_stats cs = cold_stats(s);
    CHECK(fake_refs(f) == cs.pages_cold + cs.del_failures, "%s: backend holds %ld refs, %lld parked + %lld failed deletes",
          where, fake_refs(f), (long long)cs.pages_cold, (long long)cs.del_failures);
    CHECK(f->put_mismatch == 0, "%s: a key was put with two different contents", where);
}

/* ---- basics ------------------------------------------------------------------------------- */

static void test_basics(skv_store_layout layout)
{
    memset(model, 0, sizeof model);
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    skv_store *s = store_new(ctx, layout, 64), *twin = store_new(ctx, layout, 0);
    fake f = {.r = {7}};
    const skv_store_cold cb = fake_backend(&f);
    rng r = {11};
    int32_t a, b, t;
    CHECK_STATUS(skv_store_seq_offload(s, 0, NULL), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_store_seq_create(s, &a));
    CHECK_STATUS(skv_store_seq_offload(s, a, NULL), SKV_ERR_STATE); /* no backend */
    CHECK_STATUS(skv_store_cold_attach(s, NULL, "m"), SKV_ERR_INVALID_ARG);
    skv_store_cold bad = cb;
    bad.wait = NULL;
    CHECK_STATUS(skv_store_cold_attach(s, &bad, "m"), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_cold_attach(s, &cb, NULL), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_store_cold_attach(s, &cb, "model-a"));
    CHECK_STATUS(skv_store_cold_attach(s, &cb, "model-a"), SKV_ERR_STATE);
    CHECK_STATUS(skv_store_cold_trim(s, -1, NULL), SKV_ERR_INVALID_ARG);
    CHECK_STATUS(skv_store_seq_restore(s, 99), SKV_ERR_INVALID_ARG);
    CHECK_OK(skv_store_seq_create(twin, &t));
    model[a].live = 1;
    CHECK_OK(append_both(s, twin, a, 300, &r));
    for (int i = 0; i < 20; i++)
        CHECK_OK(append_both(s, twin, a, 1, &r));
    skv_store_stats st0 = {.struct_size = sizeof st0}, st1 = {.struct_size = sizeof st1};
    CHECK_OK(skv_store_get_stats(s, &st0));

    /* a fetched selection pins pages: they stay; the selection goes stale */
    skv_store_sel *sel = NULL;
    CHECK_OK(skv_store_sel_create(s, &sel));
    const int32_t want[3] = {0, 100, 200};
    CHECK_OK(skv_store_select_tokens(s, a, 0, want, 3, 40, sel));
    CHECK_OK(skv_store_fetch(s, sel));
    skv_store_sel_info si = {.struct_size = sizeof si};
    CHECK_OK(skv_store_sel_info_get(sel, &si));
    int64_t parked = 0;
    CHECK_OK(skv_store_seq_offload(s, a, &parked));
    CHECK(parked == st0.pages_in_use - si.n_pages, "parked %lld of %lld pages, %lld pinned",
          (long long)parked, (long long)st0.pages_in_use, (long long)si.n_pages);
    validate(s, "parked");
    CHECK_OK(skv_store_get_stats(s, &st1));
    CHECK(st1.host_bytes == si.n_pages * (int64_t)s->page_bytes, "host bytes %lld after park",
          (long long)st1.host_bytes);
    skv_store_cold_stats cs = cold_stats(s);
    CHECK(cs.pages_cold == parked && cs.puts == parked && f.n == parked, "cold %lld puts %lld keys %ld",
          (long long)cs.pages_cold, (long long)cs.puts, f.n);
    CHECK_OK(skv_store_sel_info_get(sel, &si));
    CHECK(si.stale, "a selection of a parked sequence is not stale");
    CHECK_STATUS(skv_store_fetch(s, sel), SKV_ERR_STATE);
    CHECK_OK(skv_store_release(s, sel));
    int64_t more = -1;
    CHECK_OK(skv_store_seq_offload(s, a, &more)); /* the pages unpinned now */
    CHECK(more == si.n_pages, "second park moved %lld of %lld", (long long)more, (long long)si.n_pages);
    check_refs(s, &f, "basics park");

    /* a read brings everything back, byte for byte; the keys go */
    CHECK_OK(check_read(s, a, "basics"));
    validate(s, "restored");
    cs = cold_stats(s);
    CHECK(cs.pages_cold == 0 && f.n == 0 && cs.gets == parked + more, "after restore: cold %lld keys %ld",
          (long long)cs.pages_cold, f.n);
    for (int i = 0; i < 10; i++) {
        CHECK_OK(skv_store_seq_offload(s, a, NULL));
        CHECK_OK(check_select(s, twin, a, &r, "basics select"));
        CHECK_OK(append_both(s, twin, a, (int32_t)rng_int(&r, 1, 30), &r));
    }
    /* a fork shares pages: shared pages stay in host memory */
    CHECK_OK(skv_store_seq_fork(s, a, &b));
    model[b] = model[a];
    CHECK_OK(skv_store_seq_fork(twin, t, &t));
    CHECK_OK(skv_store_seq_offload(s, b, &parked));
    CHECK(parked == 0, "parked %lld shared pages", (long long)parked);
    CHECK_OK(append_both(s, twin, b, 5, &r)); /* b's copies on write are private */
    CHECK_OK(skv_store_seq_offload(s, b, &parked));
    CHECK(parked > 0, "b's private pages did not park");
    validate(s, "fork");
    CHECK_OK(check_read(s, a, "fork a"));
    CHECK_OK(check_read(s, b, "fork b"));
    CHECK_OK(skv_store_seq_offload(s, b, NULL));
    CHECK_OK(skv_store_seq_free(s, b)); /* freeing parked pages deletes their keys */
    model[b].live = 0;
    check_refs(s, &f, "basics free");
    validate(s, "free");
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    fake_wait(&f);
    CHECK(f.n == 0, "%ld keys left after destroy", f.n);
    skv_store_destroy(twin);
    fake_free(&f);
    skv_context_destroy(ctx);
}

/* ---- two stores sharing a prefix ---------------------------------------------------------- */

static void test_sharing(void)
{
    memset(model, 0, sizeof model);
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    skv_store *s1 = store_new(ctx, SKV_STORE_CLUSTERED, 0), *s2 = store_new(ctx, SKV_STORE_CLUSTERED, 0),
              *s3 = store_new(ctx, SKV_STORE_CLUSTERED, 0);
    fake f = {.r = {3}};
    const skv_store_cold cb = fake_backend(&f);
    CHECK_OK(skv_store_cold_attach(s1, &cb, "model-a"));
    CHECK_OK(skv_store_cold_attach(s2, &cb, "model-a"));
    CHECK_OK(skv_store_cold_attach(s3, &cb, "model-b"));
    int32_t q1, q2, q3;
    CHECK_OK(skv_store_seq_create(s1, &q1));
    CHECK_OK(skv_store_seq_create(s2, &q2));
    CHECK_OK(skv_store_seq_create(s3, &q3));
    model[0].live = 1;
    rng r = {5};
    CHECK_OK(append_both(s1, s2, 0, 400, &r)); /* the same prefix in s1 and s2 */
    r = (rng){5};
    memset(model, 0, sizeof model);
    model[0].live = 1;
    CHECK_OK(append_both(s3, NULL, 0, 400, &r));
    int64_t n1, n2, n3;
    CHECK_OK(skv_store_seq_offload(s1, q1, &n1));
    CHECK_OK(skv_store_seq_offload(s2, q2, &n2));
    CHECK(n1 == n2 && n1 > 0 && f.n == n1 && fake_refs(&f) == 2 * n1,
          "two stores: %lld + %lld pages, %ld keys, %ld refs", (long long)n1, (long long)n2, f.n, fake_refs(&f));
    CHECK_OK(skv_store_seq_offload(s3, q3, &n3));
    CHECK(f.n == n1 + n3, "another model tag shared keys: %ld keys for %lld + %lld", f.n, (long long)n1,
          (long long)n3);
    CHECK_OK(check_read(s1, q1, "sharing s1"));
    CHECK(f.n == n1 + n3 && fake_refs(&f) == n1 + n3, "after s1's restore: %ld keys", f.n);
    CHECK_OK(check_read(s2, q2, "sharing s2"));
    CHECK_OK(check_read(s3, q3, "sharing s3"));
    CHECK(f.n == 0, "%ld keys left", f.n);
    skv_store_destroy(s1), skv_store_destroy(s2), skv_store_destroy(s3);
    fake_free(&f);
    skv_context_destroy(ctx);
}

/* ---- the random-operation run ------------------------------------------------------------- */

static void test_random(skv_store_layout layout, uint64_t seed, int ops)
{
    memset(model, 0, sizeof model);
    skv_context *ctx = ctx_new(SKV_CPU_ALL, 1);
    skv_store *s = store_new(ctx, layout, 32), *twin = store_new(ctx, layout, 0);
    fake f = {.r = {seed}};
    const skv_store_cold cb = fake_backend(&f);
    CHECK_OK(skv_store_cold_attach(s, &cb, "model-r"));
    rng r = {seed * 31 + 1};
    long io = 0, ok_ops = 0;
    char where[64];
    for (int op = 0; op < ops; op++) {
        snprintf(where, sizeof where, "seed %llu op %d", (unsigned long long)seed, op);
        int32_t live[MAXSEQ], nl = 0;
        for (int32_t i = 0; i < MAXSEQ; i++)
            if (model[i].live)
                live[nl++] = i;
        const int32_t q = nl ? live[rng_int(&r, 0, nl - 1)] : -1;
        /* half of the calls see a reliable backend, half a failing one */
        const int failing = rng_int(&r, 0, 1) != 0;
        f.p_refuse = failing ? 0.005 : 0, f.p_fail = failing ? 0.01 : 0, f.p_corrupt = failing ? 0.005 : 0;
        const skv_store_cold_stats before = cold_stats(s);
        skv_store_stats hb = {.struct_size = sizeof hb};
        CHECK_OK(skv_store_get_stats(s, &hb));
        const int kind = nl == 0 ? 0 : (int)rng_int(&r, 0, 9);
        skv_status st = SKV_OK;
        switch (kind) {
        case 0: { /* a new sequence */
            if (nl == MAXSEQ)
                break;
            int32_t id, tid;
            CHECK_OK(skv_store_seq_create(s, &id));
            CHECK_OK(skv_store_seq_create(twin, &tid));
            CHECK(id == tid && !model[id].live, "%s: ids %d %d", where, id, tid);
            memset(&model[id], 0, sizeof model[id]);
            model[id].live = 1;
            st = append_both(s, twin, id, (int32_t)rng_int(&r, 1, 200), &r);
            break;
        }
        case 1:
            st = append_both(s, twin, q, (int32_t)rng_int(&r, 1, 3), &r);
            break;
        case 2: { /* removal of a tail or a middle range */
            const mlayer *m = &model[q].ly[0];
            if (!m->n)
                break;
            const int32_t p0 = m->pos[rng_int(&r, 0, m->n - 1)];
            const int32_t p1 = rng_int(&r, 0, 1) ? -1 : p0 + (int32_t)rng_int(&r, 1, 40);
            st = skv_store_seq_remove(s, q, p0, p1);
            if (st == SKV_OK) {
                CHECK_OK(skv_store_seq_remove(twin, q, p0, p1));
                for (int32_t l = 0; l < L; l++)
                    model_remove(&model[q].ly[l], p0, p1);
            }
            break;
        }
        case 3: { /* fork */
            if (nl == MAXSEQ)
                break;
            int32_t id, tid;
            st = skv_store_seq_fork(s, q, &id);
            if (st == SKV_OK) {
                CHECK_OK(skv_store_seq_fork(twin, q, &tid));
                CHECK(id == tid, "%s: fork ids %d %d", where, id, tid);
                model[id] = model[q];
            }
            break;
        }
        case 4: /* free */
            if (nl < 3)
                break;
            CHECK_OK(skv_store_seq_free(s, q));
            CHECK_OK(skv_store_seq_free(twin, q));
            model[q].live = 0;
            break;
        case 5:
        case 6:
            st = skv_store_seq_offload(s, q, NULL);
            break;
        case 7:
            st = skv_store_cold_trim(s, rng_int(&r, 0, hb.host_bytes), NULL);
            break;
        case 8:
            st = rng_int(&r, 0, 1) ? skv_store_seq_restore(s, q) : check_read(s, q, where);
            break;
        case 9:
            st = check_select(s, twin, q, &r, where);
            break;
        }
        CHECK(st == SKV_OK || st == SKV_ERR_IO, "%s: op %d returned %s", where, kind, skv_status_string(st));
        if (st == SKV_ERR_IO && kind != 7) { /* nothing changed (a trim keeps what it parked) */
            io++;
            const skv_store_cold_stats after = cold_stats(s);
            CHECK(after.pages_cold == before.pages_cold, "%s: a failed call changed the parked pages %lld -> %lld",
                  where, (long long)before.pages_cold, (long long)after.pages_cold);
        } else if (st == SKV_ERR_IO) {
            io++;
        } else {
            ok_ops++;
        }
        validate(s, where);
        check_refs(s, &f, where);
        if (test_failures)
            break;
    }
    /* every token ever appended (and not removed) comes back */
    f.p_refuse = f.p_fail = f.p_corrupt = 0;
    for (int32_t i = 0; i < MAXSEQ; i++)
        if (model[i].live)
            CHECK_OK(check_read(s, i, "final"));
    validate(s, "final");
    const skv_store_cold_stats cs = cold_stats(s);
    CHECK(io > 0 && cs.puts > 0 && cs.gets > 0, "the run exercised too little: %ld io errors", io);
    printf("random %s seed %llu: %d ops, %ld ok, %ld io errors; puts %lld gets %lld dels %lld, "
           "failures put %lld get %lld del %lld, bad reads %lld\n",
           layout == SKV_STORE_CLUSTERED ? "clustered" : "positional", (unsigned long long)seed, ops,
           ok_ops, io, (long long)cs.puts, (long long)cs.gets, (long long)cs.dels, (long long)cs.put_failures,
           (long long)cs.get_failures, (long long)cs.del_failures, (long long)cs.bad_reads);
    skv_store_destroy(s);
    fake_wait(&f);
    CHECK(fake_refs(&f) == cs.del_failures, "%ld refs left, %lld failed deletes", fake_refs(&f),
          (long long)cs.del_failures);
    skv_store_destroy(twin);
    fake_free(&f);
    skv_context_destroy(ctx);
}

/* ---- allocation failure ------------------------------------------------------------------- */

/* The scenario with the fail_at-th allocation failing; every call that fails with NOMEM must
 * have changed nothing and is retried. Returns 1 when a failure was injected. */
static int alloc_scenario(long fail_at)
{
    memset(model, 0, sizeof model);
    counting c = {.fail_at = fail_at};
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = 1;
    cp.allocator.alloc = c_alloc, cp.allocator.free = c_free, cp.allocator.user = &c;
    skv_context *ctx = NULL;
    if (skv_context_create(&cp, &ctx) != SKV_OK) { /* the context itself */
        CHECK(c.n >= fail_at, "context failed without an injected failure");
        return 1;
    }
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_layers = L, p.n_kv_heads = H, p.k_dim = D, p.v_dim = VD, p.dtype = SKV_F32;
    p.page_tokens = 4, p.n_sink = 2, p.n_window = 8, p.bulk_min = 16, p.fanout = 4, p.hot_pages = 0;
    skv_store *s = NULL;
    skv_status st;
    while ((st = skv_store_create(ctx, &p, &s)) == SKV_ERR_NOMEM)
        ;
    CHECK_OK(st);
    fake f = {.r = {1}};
    const skv_store_cold cb = fake_backend(&f);
#define RETRY(call, check)                                                                    \
    while ((st = (call)) == SKV_ERR_NOMEM) {                                                  \
        check;                                                                                \
    }                                                                                         \
    CHECK_OK(st)
    const skv_store_cold_stats none = {0};
    RETRY(skv_store_cold_attach(s, &cb, "m"), CHECK(!s->cold, "attach left a cold tier"));
    int32_t a = -1, b = -1;
    RETRY(skv_store_seq_create(s, &a), (void)0);
    RETRY(skv_store_seq_create(s, &b), (void)0);
    model[a].live = model[b].live = 1;
    rng r = {9};
    for (int i = 0; i < 3; i++) {
        rng keep = r;
        while ((st = append_both(s, NULL, a, 100, &r)) == SKV_ERR_NOMEM)
            r = keep; /* the model changed only for layers that succeeded: rebuilt below */
        CHECK_OK(st);
    }
    /* the appends above may have half-applied across layers on NOMEM; re-read the truth */
    for (int32_t l = 0; l < L; l++) {
        mlayer *m = &model[a].ly[l];
        skv_store_seq_info in = {.struct_size = sizeof in};
        CHECK_OK(skv_store_seq_info_get(s, a, l, &in));
        m->n = (int32_t)in.n_tokens;
        while ((st = skv_store_read(s, a, l, 0, m->n, m->k, m->v, m->pos)) == SKV_ERR_NOMEM)
            ;
        CHECK_OK(st);
    }
    RETRY(append_both(s, NULL, b, 50, &r), (void)0);
    int64_t n = 0;
    RETRY(skv_store_seq_offload(s, a, &n), CHECK(cold_stats(s).pages_cold == 0, "failed park changed state"));
    CHECK(n > 0, "nothing parked");
    RETRY(skv_store_seq_restore(s, a), CHECK(cold_stats(s).pages_cold == n, "failed restore changed state"));
    RETRY(skv_store_cold_trim(s, 0, NULL), (void)0);
    RETRY(check_read(s, b, "alloc b"), CHECK(cold_stats(s).pages_cold > 0, "failed read restored"));
    RETRY(check_read(s, a, "alloc a"), (void)0);
    (void)none;
    validate(s, "alloc");
    skv_store_destroy(s);
    fake_wait(&f);
    CHECK(f.n == 0, "alloc: %ld keys left", f.n);
    fake_free(&f);
    skv_context_destroy(ctx);
    CHECK(c.live == 0, "alloc: %zu bytes leaked", c.live);
    return c.n >= fail_at;
#undef RETRY
}

int main(int argc, char **argv)
{
    const int long_run = argc > 1 && !strcmp(argv[1], "--long");
    test_basics(SKV_STORE_CLUSTERED);
    test_basics(SKV_STORE_POSITIONAL);
    test_sharing();
    for (uint64_t seed = 1; seed <= (long_run ? 20u : 3u); seed++) {
        test_random(SKV_STORE_CLUSTERED, seed, long_run ? 2000 : 300);
        test_random(SKV_STORE_POSITIONAL, seed, long_run ? 2000 : 300);
    }
    long sites = 0;
    for (long at = 1; !test_failures && alloc_scenario(at); at++)
        sites++;
    printf("allocation failure: %ld sites\n", sites);
    return test_summary("store_cold");
}
