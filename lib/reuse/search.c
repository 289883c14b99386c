/* The greedy calibration search over reuse patterns (IndexCache's training-free search, whose
 * code is not released): flip to Shared, one round at a time, the layer whose flip costs the
 * least loss. Evaluations are memoised by pattern in an open-addressing table. */
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
}

typedef struct flip { double loss; int32_t layer; } flip;

/* Lower loss first, then the lower layer. */
static int flip_better(flip a, flip b)
{
    return a.loss < b.loss || (a.loss == b.loss && a.layer < b.layer);
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

    uint8_t *fixed = skv_alloc_zero(ctx, (size_t)N);
    char *pat = skv_alloc(ctx, (size_t)N + 1), *buf = skv_alloc(ctx, (size_t)N + 1);
    uint8_t *all_full = skv_alloc(ctx, (size_t)N);
    flip *winners = skv_alloc(ctx, (size_t)P * sizeof *winners);
    search s = {.p = p, .buf = buf};
    skv_status st = SKV_ERR_NOMEM;
    if (!fixed || !pat || !buf || !all_full || !winners)
        goto done;
    memset(all_full, 1, (size_t)N);
    st = skv_reuse_check_roles(ctx, all_full, N, p->segment_starts, p->n_segments);
    if (st != SKV_OK)
        goto done;
    fixed[0] = 1;
    for (int32_t i = 0; i < p->n_segments; i++)
        fixed[p->segment_starts[i]] = 1;
    for (int32_t b = 0; b < P; b++)
        fixed[(int64_t)b * N / P] = 1;
    int32_t n_fixed = 0;
    for (int32_t l = 0; l < N; l++)
        n_fixed += fixed[l];
    st = SKV_ERR_INVALID_ARG;
    if (p->target_full < n_fixed || p->target_full > N)
        goto done;

    /* table for every evaluation the search can make, at most half full */
    size_t cap = 64;
    const int64_t max_evals = (int64_t)N * (N + 1) / 2 + N + 1;
    while ((int64_t)cap < 2 * max_evals && cap < ((size_t)1 << 24))
        cap *= 2;
    st = memo_init(&s.memo, ctx, N, cap);
    if (st != SKV_OK)
        goto done;

    memset(pat, 'F', (size_t)N);
    pat[N] = '\0';
    memcpy(pattern_out, pat, (size_t)N + 1);
    int32_t n_full = N, round = 0;
    double loss = evaluate(&s, pat);
    st = SKV_ERR_IO;
    if (isnan(loss))
        goto done_memo;
    if (curve_out)
        curve_out[0] = loss;

    while (n_full > p->target_full) {
        /* the best flip of each block (one block: of all layers) */
        int32_t n_win = 0;
        for (int32_t b = 0; b < P; b++) {
            const int32_t lo = (int32_t)((int64_t)b * N / P), hi = (int32_t)((int64_t)(b + 1) * N / P);
            flip best = {INFINITY, -1};
            for (int32_t l = lo; l < hi; l++) {
                if (fixed[l] || pat[l] != 'F')
                    continue;
                pat[l] = 'S';
                const flip f = {evaluate(&s, pat), l};
                pat[l] = 'F';
                if (isnan(f.loss))
                    goto done_memo;
                if (best.layer < 0 || flip_better(f, best))
                    best = f;
            }
            if (best.layer >= 0)
                winners[n_win++] = best;
        }
        /* commit all winners, or the best `need` of them */
        const int32_t need = n_full - p->target_full;
        for (int32_t i = 1; i < n_win; i++) /* insertion sort: n_win <= P */
            for (int32_t j = i; j > 0 && flip_better(winners[j], winners[j - 1]); j--) {
                const flip t = winners[j];
                winners[j] = winners[j - 1];
                winners[j - 1] = t;
            }
        const int32_t take = n_win < need ? n_win : need;
        for (int32_t i = 0; i < take; i++)
            pat[winners[i].layer] = 'S';
        n_full -= take;
        loss = evaluate(&s, pat); /* cached when a single flip was committed */
        if (isnan(loss)) {
            for (int32_t i = 0; i < take; i++)
                pat[winners[i].layer] = 'F';
            goto done_memo;
        }
        round++;
        memcpy(pattern_out, pat, (size_t)N + 1);
        if (curve_out)
            curve_out[round] = loss;
    }
    st = SKV_OK;

done_memo:
    if (st == SKV_ERR_IO)
        skv_log(ctx, SKV_LOG_WARN, "reuse search: the loss callback returned NaN in round %d", round + 1);
    if (result) {
        result->struct_size = sizeof *result;
        result->n_rounds = round;
        result->n_evals = s.evals;
        result->n_cached = s.cached;
    }
    memo_free(&s.memo);
done:
    skv_free(ctx, fixed, (size_t)N);
    skv_free(ctx, pat, (size_t)N + 1);
    skv_free(ctx, buf, (size_t)N + 1);
    skv_free(ctx, all_full, (size_t)N);
    skv_free(ctx, winners, (size_t)P * sizeof *winners);
    return st;
}
