/* The calibration searches over reuse patterns, all through the host's loss: IndexCache's
 * training-free greedy (its code is not released: flip to Shared, one round at a time, the
 * layer whose flip costs the least loss), a beam over the same rounds, and exhaustive
 * enumeration. Evaluations are memoised by pattern in an open-addressing table. */
#include <math.h>
#include <string.h>

#include "reuse/reuse_impl.h"

typedef struct memo {
    skv_context *ctx;
    int32_t n_layers;
    size_t cap, used;
    char *keys;   /* [cap][n_layers]; a slot is empty when its first byte is 0 */
    double *vals; /* [cap] */
} memo;

static uint64_t hash_pattern(const char *s, int32_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int32_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static skv_status memo_init(memo *m, skv_context *ctx, int32_t n_layers, size_t cap)
{
    *m = (memo){ctx, n_layers, cap, 0, NULL, NULL};
    m->keys = skv_alloc_zero(ctx, cap * (size_t)n_layers);
    m->vals = skv_alloc(ctx, cap * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        skv_free(ctx, m->keys, cap * (size_t)n_layers);
        skv_free(ctx, m->vals, cap * sizeof *m->vals);
        return SKV_ERR_NOMEM;
    }
    return SKV_OK;
}

static void memo_free(memo *m)
{
    skv_free(m->ctx, m->keys, m->cap * (size_t)m->n_layers);
    skv_free(m->ctx, m->vals, m->cap * sizeof *m->vals);
}

/* The slot holding pattern s, or the empty slot where it would go. */
static size_t memo_slot(const memo *m, const char *s)
{
    size_t i = hash_pattern(s, m->n_layers) & (m->cap - 1);
    while (m->keys[i * m->n_layers] && memcmp(m->keys + i * m->n_layers, s, (size_t)m->n_layers))
        i = (i + 1) & (m->cap - 1);
    return i;
}

typedef struct search {
    const skv_reuse_search_params *p;
    memo memo;
    char *buf; /* n_layers + 1: the pattern handed to the callback */
    int64_t evals, cached;
} search;

/* Loss of a pattern (n_layers chars), from the cache or the callback; NaN on failure. */
static double evaluate(search *s, const char *pattern)
{
    memo *m = &s->memo;
    const size_t i = memo_slot(m, pattern);
    if (m->keys[i * m->n_layers]) {
        s->cached++;
        return m->vals[i];
    }
    memcpy(s->buf, pattern, (size_t)m->n_layers);
    s->buf[m->n_layers] = '\0';
    const double v = s->p->loss(s->buf, s->p->user);
    s->evals++;
    if (isnan(v))
        return v;
    if (2 * (m->used + 1) <= m->cap) { /* keep the table at most half full; beyond, stop caching */
        memcpy(m->keys + i * m->n_layers, pattern, (size_t)m->n_layers);
        m->vals[i] = v;
        m->used++;
    }
    return v;
}

void skv_reuse_search_params_init(skv_reuse_search_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->n_blocks = 1;
    p->method = SKV_REUSE_SEARCH_GREEDY;
    p->beam_width = 4;
    p->max_patterns = 4096;
}

typedef struct flip { double loss; int32_t layer; } flip;

/* Lower loss first, then the lower layer. */
static int flip_better(flip a, flip b)
{
    return a.loss < b.loss || (a.loss == b.loss && a.layer < b.layer);
}

/* The search's state: the parameters, the fixed-Full layers, outputs. */
typedef struct run {
    search s;
    skv_context *ctx;
    int32_t N, n_fixed;
    const uint8_t *fixed;
    char *pattern_out;
    double *curve_out;
    int32_t round;
} run;

/* Records round r's pattern and loss. */
static void record(run *r, const char *pat, double loss)
{
    memcpy(r->pattern_out, pat, (size_t)r->N);
    r->pattern_out[r->N] = '\0';
    if (r->curve_out)
        r->curve_out[r->round] = loss;
}

static skv_status greedy(run *r, int32_t target, int32_t P, char *pat, flip *winners)
{
    const int32_t N = r->N;
    int32_t n_full = N;
    while (n_full > target) {
        /* the best flip of each block (one block: of all layers) */
        int32_t n_win = 0;
        for (int32_t b = 0; b < P; b++) {
            const int32_t lo = (int32_t)((int64_t)b * N / P), hi = (int32_t)((int64_t)(b + 1) * N / P);
            flip best = {INFINITY, -1};
            for (int32_t l = lo; l < hi; l++) {
                if (r->fixed[l] || pat[l] != 'F')
                    continue;
                pat[l] = 'S';
                const flip f = {evaluate(&r->s, pat), l};
                pat[l] = 'F';
                if (isnan(f.loss))
                    return SKV_ERR_IO;
                if (best.layer < 0 || flip_better(f, best))
                    best = f;
            }
            if (best.layer >= 0)
                winners[n_win++] = best;
        }
        /* commit all winners, or the best `need` of them */
        const int32_t need = n_full - target;
        for (int32_t i = 1; i < n_win; i++) /* insertion sort: n_win <= P */
            for (int32_t j = i; j > 0 && flip_better(winners[j], winners[j - 1]); j--) {
                const flip t = winners[j];
                winners[j] = winners[j - 1];
                winners[j - 1] = t;
            }
        const int32_t take = n_win < need ? n_win : need;
        for (int32_t i = 0; i < take; i++)
            pat[winners[i].layer] = 'S';
        const double loss = evaluate(&r->s, pat); /* cached when a single flip was committed */
        if (isnan(loss))
            return SKV_ERR_IO;
        n_full -= take;
        r->round++;
        record(r, pat, loss);
    }
    return SKV_OK;
}

/* A beam entry: its pattern lives in the beam's arena. */
typedef struct cand { double loss; int32_t order; } cand;

static int cand_better(cand a, cand b)
{
    return a.loss < b.loss || (a.loss == b.loss && a.order < b.order);
}

/* Rounds as greedy's, keeping the W best patterns: each round every pattern of the beam
 * spawns its single flips; the W lowest-loss distinct children (ties: the earlier parent,
 * then the lower layer) are the next beam. W = 1 is greedy with one block. */
static skv_status beam(run *r, int32_t target, int32_t W, char *arena, cand *cands)
{
    const int32_t N = r->N;
    const size_t stride = (size_t)N;
    char *cur = arena, *next = arena + (size_t)W * stride; /* W patterns each */
    char *kids = next + (size_t)W * stride;                /* W * N children */
    int32_t n_cur = 1;
    memset(cur, 'F', stride);
    for (int32_t n_full = N; n_full > target; n_full--) {
        int32_t n_kids = 0;
        for (int32_t b = 0; b < n_cur; b++)
            for (int32_t l = 0; l < N; l++) {
                char *parent = cur + (size_t)b * stride;
                if (r->fixed[l] || parent[l] != 'F')
                    continue;
                char *kid = kids + (size_t)n_kids * stride;
                memcpy(kid, parent, stride);
                kid[l] = 'S';
                int dup = 0; /* the same pattern from an earlier parent */
                for (int32_t j = 0; j < n_kids && !dup; j++)
                    dup = !memcmp(kids + (size_t)cands[j].order * stride, kid, stride);
                if (dup)
                    continue;
                const double v = evaluate(&r->s, kid);
                if (isnan(v))
                    return SKV_ERR_IO;
                cands[n_kids] = (cand){v, n_kids};
                n_kids++;
            }
        for (int32_t i = 1; i < n_kids; i++) /* insertion sort, stable by order */
            for (int32_t j = i; j > 0 && cand_better(cands[j], cands[j - 1]); j--) {
                const cand t = cands[j];
                cands[j] = cands[j - 1];
                cands[j - 1] = t;
            }
        n_cur = n_kids < W ? n_kids : W;
        for (int32_t i = 0; i < n_cur; i++)
            memcpy(next + (size_t)i * stride, kids + (size_t)cands[i].order * stride, stride);
        char *t = cur;
        cur = next, next = t;
        r->round++;
        record(r, cur, cands[0].loss);
    }
    return SKV_OK;
}

/* C(n, k), or -1 above `limit`. */
static int64_t choose(int32_t n, int32_t k, int64_t limit)
{
    if (k < 0 || k > n)
        return 0;
    if (k > n - k)
        k = n - k;
    int64_t c = 1;
    for (int32_t i = 1; i <= k; i++) {
        c = c * (n - k + i) / i; /* exact: c * (n - k + i) is divisible by i */
        if (c > limit)
            return -1;
    }
    return c;
}

/* Every pattern with `target` Full layers (the fixed ones among them), in lexicographic order
 * of the other Full layers' indices; the lowest loss wins, ties to the first. */
static skv_status exhaustive(run *r, int32_t target, char *pat, char *best, int32_t *free_l,
                             int32_t *pick)
{
    const int32_t N = r->N, need = target - r->n_fixed;
    int32_t n_free = 0;
    for (int32_t l = 0; l < N; l++)
        if (!r->fixed[l])
            free_l[n_free++] = l;
    for (int32_t i = 0; i < need; i++)
        pick[i] = i;
    double best_loss = INFINITY;
    int have = 0;
    for (;;) {
        for (int32_t l = 0; l < N; l++)
            pat[l] = r->fixed[l] ? 'F' : 'S';
        for (int32_t i = 0; i < need; i++)
            pat[free_l[pick[i]]] = 'F';
        const double v = evaluate(&r->s, pat);
        if (isnan(v))
            return SKV_ERR_IO;
        if (!have || v < best_loss) {
            best_loss = v, have = 1;
            memcpy(best, pat, (size_t)N);
        }
        int32_t i = need - 1; /* the next combination */
        while (i >= 0 && pick[i] == n_free - need + i)
            i--;
        if (i < 0)
            break;
        pick[i]++;
        for (int32_t j = i + 1; j < need; j++)
            pick[j] = pick[j - 1] + 1;
    }
    r->round = 1;
    record(r, best, best_loss);
    return SKV_OK;
}

static int full_always(const void *src, int32_t l)
{
    (void)src, (void)l;
    return 1;
}

/* Layers the search keeps Full: each block's first (layer 0 among them) and the segment
 * starts, both increasing: counted by merging, without allocating. */
static int32_t count_fixed(int32_t N, int32_t P, const int32_t *seg, int32_t n_seg)
{
    int32_t n = 0, b = 0, i = 0;
    int64_t last = -1;
    while (b < P || i < n_seg) {
        const int64_t bl = b < P ? (int64_t)b * N / P : INT64_MAX, sl = i < n_seg ? seg[i] : INT64_MAX;
        const int64_t v = bl < sl ? bl : sl;
        b += v == bl;
        i += v == sl;
        n += v != last;
        last = v;
    }
    return n;
}

skv_status skv_reuse_search(skv_context *ctx, const skv_reuse_search_params *p, char *pattern_out,
                            double *curve_out, skv_reuse_search_result *result)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, p && p->struct_size == sizeof *p && pattern_out && p->loss);
    SKV_CHECK(ctx, !result || result->struct_size >= sizeof *result);
    const int32_t N = p->n_layers, P = p->n_blocks;
    SKV_CHECK(ctx, N >= 1 && N <= 65536 && P >= 1 && P <= N);
    SKV_CHECK(ctx, p->method >= SKV_REUSE_SEARCH_GREEDY && p->method <= SKV_REUSE_SEARCH_AUTO);
    SKV_CHECK(ctx, p->beam_width >= 1 && p->beam_width <= 4096 && p->max_patterns >= 1);
    /* every argument before the first allocation: an invalid call is INVALID_ARG (and one the
       exhaustive search cannot afford CAPACITY) even when memory runs out */
    SKV_TRY(skv_reuse_check_roles_fn(ctx, full_always, NULL, N, p->segment_starts, p->n_segments));
    const int32_t n_fixed = count_fixed(N, P, p->segment_starts, p->n_segments);
    SKV_CHECK(ctx, p->target_full >= n_fixed && p->target_full <= N);

    /* exhaustive when asked, or (auto) when the patterns are few enough; else beam */
    skv_reuse_search_method method = p->method;
    const int64_t n_patterns = choose(N - n_fixed, p->target_full - n_fixed, p->max_patterns);
    if (method == SKV_REUSE_SEARCH_AUTO)
        method = n_patterns >= 0 ? SKV_REUSE_SEARCH_EXHAUSTIVE : SKV_REUSE_SEARCH_BEAM;
    if (method == SKV_REUSE_SEARCH_EXHAUSTIVE && n_patterns < 0)
        return SKV_ERR_CAPACITY;
    const int32_t W = method == SKV_REUSE_SEARCH_BEAM ? p->beam_width : 1;

    uint8_t *fixed = skv_alloc_zero(ctx, (size_t)N);
    char *pat = skv_alloc(ctx, (size_t)N + 1), *buf = skv_alloc(ctx, (size_t)N + 1);
    char *best = skv_alloc(ctx, (size_t)N + 1);
    int32_t *ints = skv_alloc(ctx, 2 * (size_t)N * sizeof *ints); /* free layers, picks */
    flip *winners = skv_alloc(ctx, (size_t)P * sizeof *winners);
    run r = {.s = {.p = p, .buf = buf}, .ctx = ctx, .N = N, .fixed = fixed,
             .pattern_out = pattern_out, .curve_out = curve_out};
    char *arena = NULL;
    cand *cands = NULL;
    size_t arena_bytes = 0, cands_bytes = 0;
    skv_status st = SKV_ERR_NOMEM;
    if (!fixed || !pat || !buf || !best || !ints || !winners)
        goto done;
    fixed[0] = 1;
    for (int32_t i = 0; i < p->n_segments; i++)
        fixed[p->segment_starts[i]] = 1;
    for (int32_t b = 0; b < P; b++)
        fixed[(int64_t)b * N / P] = 1;
    r.n_fixed = n_fixed;
    if (method == SKV_REUSE_SEARCH_BEAM) {
        arena_bytes = ((size_t)2 * W + (size_t)W * N) * (size_t)N;
        cands_bytes = (size_t)W * N * sizeof *cands;
        arena = skv_alloc(ctx, arena_bytes);
        cands = skv_alloc(ctx, cands_bytes);
        if (!arena || !cands)
            goto done;
    }

    /* a table for every evaluation the search can make, at most half full */
    int64_t max_evals = (int64_t)N * (N + 1) / 2 * W + N + 1;
    if (method == SKV_REUSE_SEARCH_EXHAUSTIVE)
        max_evals = n_patterns + 1;
    size_t cap = 64;
    while ((int64_t)cap < 2 * max_evals && cap < ((size_t)1 << 24))
        cap *= 2;
    st = memo_init(&r.s.memo, ctx, N, cap);
    if (st != SKV_OK)
        goto done;

    memset(pat, 'F', (size_t)N);
    pat[N] = '\0';
    const double loss = evaluate(&r.s, pat);
    st = SKV_ERR_IO;
    if (isnan(loss))
        goto done_memo;
    record(&r, pat, loss);
    if (method == SKV_REUSE_SEARCH_GREEDY)
        st = greedy(&r, p->target_full, P, pat, winners);
    else if (method == SKV_REUSE_SEARCH_BEAM)
        st = beam(&r, p->target_full, W, arena, cands);
    else
        st = exhaustive(&r, p->target_full, pat, best, ints, ints + N);

done_memo:
    if (st == SKV_ERR_IO)
        skv_log(ctx, SKV_LOG_WARN, "reuse search: the loss callback returned NaN in round %d",
                r.round + 1);
    if (result) {
        result->struct_size = sizeof *result;
        result->n_rounds = r.round;
        result->n_evals = r.s.evals;
        result->n_cached = r.s.cached;
    }
    memo_free(&r.s.memo);
done:
    skv_free(ctx, fixed, (size_t)N);
    skv_free(ctx, pat, (size_t)N + 1);
    skv_free(ctx, buf, (size_t)N + 1);
    skv_free(ctx, best, (size_t)N + 1);
    skv_free(ctx, ints, 2 * (size_t)N * sizeof *ints);
    skv_free(ctx, winners, (size_t)P * sizeof *winners);
    skv_free(ctx, arena, arena_bytes);
    skv_free(ctx, cands, cands_bytes);
    return st;
}
