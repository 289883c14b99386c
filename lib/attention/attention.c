/* skv_sparse_attention: validation, the work split, and the merge of partial results.
 *
 * Work items are (list, segment, chunk of query heads). A list (token t, KV head g) is cut into
 * segments by its length alone (about SEG_ROWS rows each, at most max_segs), never by the
 * thread count, so every (t, h) is summed in the same order however many threads run; the
 * heads of the group are chunked only to give threads work when lists are few, and chunking
 * does not change any head's arithmetic. Each item leaves the unnormalised state (m, l, acc)
 * of its heads over its segment; once every item of a wave of lists is done, each (t, h)
 * merges its segments in order and normalises. Waves bound the workspace. */
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention/attn.h"

#define SEG_ROWS 1024         /* rows per segment, about: long lists split across threads */
#define MAX_SEGS 1024
#define PAIR_FLOATS (1 << 18) /* segment states of one list, at most (unless one is bigger) */
#define WAVE_FLOATS (1 << 20) /* segment states of one wave, at most (unless one list's are) */
#define WAVE_LISTS 4096
#define PF_ROWS 64           /* rows ahead asked for while a block computes */
#define PAR_MIN_MACS (1 << 20) /* below this, one thread: starting a team costs more */

typedef struct plan {
    const skv_attn_batch *b;
    const attn_kernels *kern;
    int q_wide;                 /* q widened to f32 per item (bf16 input, kernel wants f32) */
    int32_t group, hc, n_chunks;
    int32_t max_segs;
    size_t acc_stride;          /* floats per head's accumulator */
    size_t seg_floats;          /* floats of one segment's state: m, l, acc of every head */
    size_t thread_bytes;
    uint8_t *thread_ws;
    float *states;
    int64_t *items_before;      /* [lists in wave + 1] */
    int64_t *state_off;         /* [lists in wave] */
    int64_t l0, nl;             /* first list of the wave, lists in it */
} plan;

static int32_t seg_count(const plan *p, int64_t len)
{
    if (len == 0)
        return 0;
    const int64_t n = (len + SEG_ROWS - 1) / SEG_ROWS;
    return n < p->max_segs ? (int32_t)n : p->max_segs;
}

/* ---- one item -------------------------------------------------------------------------- */

typedef struct scratch {
    float *s, *alpha, *q; /* scores, rescale factors, widened q */
} scratch;

static size_t thread_bytes(const plan *p)
{
    return skv_round_up((size_t)p->hc * ATTN_BR * sizeof(float), SKV_ALIGN) +
           skv_round_up((size_t)p->hc * sizeof(float), SKV_ALIGN) +
           (p->q_wide ? skv_round_up((size_t)p->hc * p->b->k_dim * sizeof(float), SKV_ALIGN) : 0);
}

static scratch thread_scratch(const plan *p, int tid)
{
    uint8_t *w = p->thread_ws + (size_t)tid * p->thread_bytes;
    scratch sc;
    sc.s = (float *)w;
    w += skv_round_up((size_t)p->hc * ATTN_BR * sizeof(float), SKV_ALIGN);
    sc.alpha = (float *)w;
    w += skv_round_up((size_t)p->hc * sizeof(float), SKV_ALIGN);
    sc.q = p->q_wide ? (float *)w : NULL;
    return sc;
}

/* State of segment `seg` of wave list w: m [group], l [group], acc [group][acc_stride]. */
static float *seg_state(const plan *p, int64_t w, int32_t seg)
{
    return p->states + p->state_off[w] + (size_t)seg * p->seg_floats;
}

static size_t acc_offset(const plan *p) { return skv_round_up((size_t)2 * p->group, 16); }

static void run_item(const plan *p, int64_t item, const scratch *sc)
{
    const skv_attn_batch *b = p->b;
    /* the wave list holding the item: the last w with items_before[w] <= item (lists with
       no items share their successor's start and are passed over) */
    int64_t lo = 0, hi = p->nl;
    while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (p->items_before[mid] <= item)
            lo = mid;
        else
            hi = mid;
    }
    const int64_t w = lo, list = p->l0 + w, local = item - p->items_before[w];
    const int32_t seg = (int32_t)(local / p->n_chunks), chunk = (int32_t)(local % p->n_chunks);
    const int32_t t = (int32_t)(list / b->n_kv_heads), g = (int32_t)(list % b->n_kv_heads);
    const int64_t len = b->list_len[list], ns = seg_count(p, len);
    const int64_t r0 = b->list_start[list] + len * seg / ns;
    const int64_t r1 = b->list_start[list] + len * (seg + 1) / ns;
    const int32_t h0 = chunk * p->hc;
    const int32_t nh = p->group - h0 < p->hc ? p->group - h0 : p->hc;

    float *state = seg_state(p, w, seg);
    attn_state st = {
        .nh = nh, .k_dim = b->k_dim, .v_dim = b->v_dim, .scale = b->scale,
        .m = state + h0, .l = state + p->group + h0,
        .acc = state + acc_offset(p) + (size_t)h0 * p->acc_stride,
        .acc_stride = p->acc_stride, .s = sc->s, .alpha = sc->alpha,
        .k_bytes = (size_t)b->k_dim * (b->dtype == SKV_BF16 ? 2 : 4),
        .v_bytes = (size_t)b->v_dim * (b->dtype == SKV_BF16 ? 2 : 4),
    };
    for (int32_t h = 0; h < nh; h++) {
        st.m[h] = -INFINITY;
        st.l[h] = 0.0f;
    }
    memset(st.acc, 0, (size_t)nh * p->acc_stride * sizeof(float));

    const size_t q_off = ((size_t)t * b->n_q_heads + (size_t)g * p->group + h0) * b->k_dim;
    const int bf16 = b->dtype == SKV_BF16;
    if (!bf16) {
        st.q = (const float *)b->q + q_off;
    } else if (!p->q_wide) {
        st.qb = (const uint16_t *)b->q + q_off;
    } else {
        p->kern->widen((const uint16_t *)b->q + q_off, sc->q, (int64_t)nh * b->k_dim);
        st.q = sc->q;
    }
    const attn_block_fn block = bf16 ? p->kern->block_bf16 : p->kern->block_f32;
    const size_t esize = bf16 ? 2 : 4;
    const size_t k_row = (size_t)b->k_dim * esize, v_row = (size_t)b->v_dim * esize;
    const uint8_t *kb = b->k, *vb = b->v;
    const void *kp[ATTN_BR], *vp[ATTN_BR];
    int n = 0;
    for (int64_t r = r0; r < r1; r++) {
        if (!attn_row_used(b, t, r))
            continue;
        kp[n] = kb + (size_t)r * k_row;
        vp[n] = vb + (size_t)r * v_row;
        if (++n == ATTN_BR) {
            /* while this block computes, the rows of the block PF_ROWS later (counting
               masked rows too), if the segment has them */
            const int64_t ahead = r + 1 + PF_ROWS - ATTN_BR;
            const int in_seg = ahead + ATTN_BR <= r1;
            st.pf_k = in_seg ? (const char *)kb + (size_t)ahead * k_row : NULL;
            st.pf_v = in_seg ? (const char *)vb + (size_t)ahead * v_row : NULL;
            block(&st, kp, vp, n);
            n = 0;
        }
    }
    if (n) {
        st.pf_k = NULL;
        block(&st, kp, vp, n);
    }
}

/* ---- merge and normalise --------------------------------------------------------------- */

static void finish_head(const plan *p, int64_t w, int32_t hg, float *out, float *out_max,
                        float *out_lse)
{
    const skv_attn_batch *b = p->b;
    const int64_t list = p->l0 + w;
    const int32_t t = (int32_t)(list / b->n_kv_heads), g = (int32_t)(list % b->n_kv_heads);
    const int64_t th = (int64_t)t * b->n_q_heads + (int64_t)g * p->group + hg;
    const int32_t ns = seg_count(p, b->list_len[list]), V = b->v_dim;
    float *o = out + th * V;
    float m = -INFINITY, l = 0.0f;
    int bad = 0;
    for (int32_t s = 0; s < ns; s++) {
        const float *state = seg_state(p, w, s);
        const float ms = state[hg], ls = state[p->group + hg];
        const float *acc = state + acc_offset(p) + (size_t)hg * p->acc_stride;
        if (isnan(ms)) {
            bad = 1;
            break;
        }
        if (ms == -INFINITY)
            continue;
        if (m == -INFINITY) {
            memcpy(o, acc, (size_t)V * sizeof *o);
            m = ms;
            l = ls;
            continue;
        }
        const float mn = m > ms ? m : ms, a = expf(m - mn), c = expf(ms - mn);
        for (int32_t i = 0; i < V; i++)
            o[i] = o[i] * a + acc[i] * c;
        l = l * a + ls * c;
        m = mn;
    }
    float mx = m, lse;
    if (bad) {
        for (int32_t i = 0; i < V; i++)
            o[i] = NAN;
        mx = lse = NAN;
    } else if (m == -INFINITY) {
        memset(o, 0, (size_t)V * sizeof *o);
        lse = -INFINITY;
    } else {
        for (int32_t i = 0; i < V; i++)
            o[i] /= l;
        lse = m + logf(l);
    }
    if (out_max)
        out_max[th] = mx;
    if (out_lse)
        out_lse[th] = lse;
}

/* Every item of the wave, then every head's merge, by a team of nth threads or, without
 * entering a parallel region (whose start costs microseconds even for one thread), by the
 * calling thread alone. No orphaned worksharing: inside a host's parallel region it would
 * bind to the host's team. */
static void run_wave(const plan *p, int nth, int64_t items, int64_t heads, float *out,
                     float *out_max, float *out_lse)
{
    if (nth > 1 && items > 1) {
#pragma omp parallel num_threads(nth)
        {
#ifdef _OPENMP
            const scratch sc = thread_scratch(p, omp_get_thread_num());
#else
            const scratch sc = thread_scratch(p, 0);
#endif
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < items; it++)
                run_item(p, it, &sc);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < heads; i++)
                finish_head(p, i / p->group, (int32_t)(i % p->group), out, out_max, out_lse);
        }
        return;
    }
    const scratch sc = thread_scratch(p, 0);
    for (int64_t it = 0; it < items; it++)
        run_item(p, it, &sc);
    for (int64_t i = 0; i < heads; i++)
        finish_head(p, i / p->group, (int32_t)(i % p->group), out, out_max, out_lse);
}

/* ---- planning ---------------------------------------------------------------------------- */

/* Lists [l0, end) of the next wave, and its segment-state floats. */
static int64_t wave_end(const plan *p, int64_t l0, int64_t n_lists, size_t *floats)
{
    size_t f = 0;
    int64_t l = l0;
    for (; l < n_lists && l - l0 < WAVE_LISTS; l++) {
        const size_t add = (size_t)seg_count(p, p->b->list_len[l]) * p->seg_floats;
        if (l > l0 && f + add > WAVE_FLOATS)
            break;
        f += add;
    }
    *floats = f;
    return l;
}

/* Head chunks: the whole group (each K/V row read once) unless that leaves threads idle. */
static void choose_chunks(plan *p, int64_t total_segs, int nth)
{
    int32_t chunks = (p->group + ATTN_HC_MAX - 1) / ATTN_HC_MAX;
    while (total_segs * chunks < 2 * (int64_t)nth && p->group / (chunks * 2) >= 4)
        chunks *= 2;
    p->hc = (int32_t)skv_round_up((size_t)((p->group + chunks - 1) / chunks), 4);
    if (p->hc > p->group)
        p->hc = p->group;
    p->n_chunks = (p->group + p->hc - 1) / p->hc;
}

skv_status skv_sparse_attention(skv_context *ctx, const skv_attn_batch *b, float *out,
                                float *out_max, float *out_lse)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_TRY(skv_attn_check(ctx, b, out));
    if (b->n_tokens == 0)
        return SKV_OK;

    plan p = {.b = b, .kern = skv_attn_kernels(skv_context_cpu_flags(ctx))};
    p.q_wide = b->dtype == SKV_BF16 && !p.kern->q_bf16;
    p.group = b->n_q_heads / b->n_kv_heads;
    p.acc_stride = skv_round_up((size_t)b->v_dim, 16);
    p.seg_floats = skv_round_up((size_t)2 * p.group, 16) + (size_t)p.group * p.acc_stride;
    const size_t cap = PAIR_FLOATS / p.seg_floats;
    p.max_segs = cap < 1 ? 1 : cap > MAX_SEGS ? MAX_SEGS : (int32_t)cap;

    const int64_t n_lists = (int64_t)b->n_tokens * b->n_kv_heads;
    int64_t total_segs = 0;
    double macs = 0.0;
    for (int64_t l = 0; l < n_lists; l++) {
        total_segs += seg_count(&p, b->list_len[l]);
        macs += (double)b->list_len[l];
    }
    macs *= (double)p.group * (b->k_dim + b->v_dim);
    int nth = skv_threads(ctx);
    if (macs < PAR_MIN_MACS)
        nth = 1;
    choose_chunks(&p, total_segs, nth);

    /* the largest wave's states, for the workspace */
    size_t max_floats = 0;
    for (int64_t l0 = 0; l0 < n_lists;) {
        size_t f;
        l0 = wave_end(&p, l0, n_lists, &f);
        max_floats = f > max_floats ? f : max_floats;
    }
    /* workspace: per-thread scratch, then the wave's segment states, then its list index */
    p.thread_bytes = thread_bytes(&p);
    const size_t index_bytes = (size_t)(2 * WAVE_LISTS + 1) * sizeof(int64_t);
    size_t states_bytes, threads_total, ws_bytes;
    if (!skv_mul_ok(max_floats, sizeof(float), &states_bytes) ||
        !skv_mul_ok(p.thread_bytes, (size_t)nth, &threads_total) ||
        __builtin_add_overflow(threads_total, skv_round_up(states_bytes, SKV_ALIGN), &ws_bytes) ||
        __builtin_add_overflow(ws_bytes, index_bytes, &ws_bytes))
        return SKV_ERR_NOMEM;
    uint8_t *ws = skv_workspace(ctx, ws_bytes);
    if (!ws)
        return SKV_ERR_NOMEM;
    p.thread_ws = ws;
    p.states = (float *)(ws + threads_total);
    p.items_before = (int64_t *)(ws + threads_total + skv_round_up(states_bytes, SKV_ALIGN));
    p.state_off = p.items_before + WAVE_LISTS + 1;

    for (int64_t l0 = 0; l0 < n_lists;) {
        size_t f;
        const int64_t l1 = wave_end(&p, l0, n_lists, &f);
        const int64_t nl = l1 - l0;
        int64_t items = 0, off = 0;
        for (int64_t w = 0; w < nl; w++) {
            const int32_t ns = seg_count(&p, b->list_len[l0 + w]);
            p.items_before[w] = items;
            p.state_off[w] = off;
            items += (int64_t)ns * p.n_chunks;
            off += (int64_t)ns * (int64_t)p.seg_floats;
        }
        p.items_before[nl] = items;
        p.l0 = l0;
        p.nl = nl;
        run_wave(&p, nth, items, nl * p.group, out, out_max, out_lse);
        l0 = l1;
    }
    return SKV_OK;
}
