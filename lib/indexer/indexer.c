/* The lightning indexer driver: validation, work split, and the fused score -> select loop.
 *
 * Work items are (block of up to 8 query tokens) x (range of keys). Within an item, keys are
 * walked in groups of 256 (held in L2 across the block's tokens); each token's packed query
 * stays in L1 while a score kernel computes that token's scores for the group, which go
 * straight into the token's streaming top-k state (or into the caller's score matrix). When
 * there are fewer token blocks than threads, a block's keys are split into ranges that the
 * threads take as they come free, each thread's candidates are kept apart and merged at the
 * end; the result is unique, so the split never changes it.
 * A block of several tokens with few heads transposes each key group once into the keys-in-
 * lanes layout (kernels.h) and scores every token on it. */
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "indexer/run.h"
#include "indexer/topk.h"

#define TOKEN_BLOCK 8
#define KEY_GROUP 256
#define SPLIT_MIN_KEYS 1024 /* below this a split costs more than it saves */
#define CVT_STEP 32         /* keys converted per step */
#define RUN_MIN 16          /* listed keys in a row read where they lie rather than copied */
#define PREFETCH_NEXT 16    /* keys of the next segment asked for ahead */
/* Tokens of a block that share one transposition into lanes. fp8 keys are converted anyway,
 * and converting them straight into lanes beats rows even for one token (measured 9.0 against
 * 8.5 ns a key with 8 heads); bf16 keys are read as they lie unless four tokens share it. */
#define LANES_MIN_TOKENS_FP8 1
#define LANES_MIN_TOKENS_BF16 4
/* Tokens of a block up to which fp8 keys go into lanes in registers for each token (score_fp8:
 * 7.5 against 8.4 ns a key with 8 heads, one token) rather than into tiles shared by them all
 * (3.7 ns a key to make, 4.7 to score). */
#define FP8_LANES_IN_REGISTERS_MAX_TOKENS 1
#define RANGES_PER_THREAD 8 /* a split block's ranges: fine enough to even out unequal cores */

#define ONE4 1.0f, 1.0f, 1.0f, 1.0f
#define ONE16 ONE4, ONE4, ONE4, ONE4
#define ONE64 ONE16, ONE16, ONE16, ONE16
/* Key scales of keys that have none (an fp8 query against bf16 or f32 keys). */
static const float ones[KEY_GROUP] = {ONE64, ONE64, ONE64, ONE64};

static skv_status check_dtype(skv_dtype t)
{
    switch (t) {
    case SKV_F32:
    case SKV_BF16:
    case SKV_F16:
    case SKV_FP8_E4M3:
    case SKV_MXFP4_E2M1:
    case SKV_Q8_0: return SKV_OK;
    }
    return SKV_ERR_INVALID_ARG;
}

skv_status skv_indexer_check_query(skv_context *ctx, const skv_indexer_query *q,
                                   int32_t head_dim, skv_dtype key_dtype)
{
    SKV_CHECK(ctx, q != NULL);
    SKV_CHECK(ctx, q->n_tokens >= 0);
    SKV_CHECK(ctx, q->n_heads >= 1 && q->n_heads <= 4096);
    SKV_CHECK(ctx, q->head_dim >= 1 && q->head_dim <= 4096);
    SKV_CHECK(ctx, q->head_dim == head_dim);
    SKV_TRY(check_dtype(q->dtype));
    SKV_TRY(check_dtype(key_dtype));
    if (q->dtype == SKV_MXFP4_E2M1 || q->dtype == SKV_Q8_0) /* key dtypes only */
        return SKV_ERR_UNSUPPORTED;
    SKV_CHECK(ctx, q->dtype == SKV_FP8_E4M3 || q->q_scale == NULL); /* FP8: NULL = scales of 1 */
    SKV_CHECK(ctx, q->n_sink >= 0 && q->n_window >= 0);
    SKV_CHECK(ctx, q->n_tokens == 0 || (q->q != NULL && (q->weights != NULL) != (q->weights_bf16 != NULL)));
    return SKV_OK;
}

typedef struct segment {
    const uint8_t *rows; /* in the compute dtype after conversion */
    const float *scale;
    const uint8_t *mx; /* MXFP4 scale bytes of the rows (before conversion) */
    int64_t start, n;
} segment;

typedef struct plan {
    const skv_kernels *kern;
    const skv_indexer_query *q;
    const skv_key_src *src;
    const skv_score_kernel *sk;
    skv_cvt_fn cvt; /* NULL when keys are already in the compute dtype */
    skv_mx_cvt_fn cvt_mx; /* MXFP4 keys (cvt is NULL then) */
    size_t celem;   /* bytes of a compute element */
    int scaled;
    int32_t k, tb, n_blocks, splits;
    int index_order; /* top-k as a set in index order, not ranked (out_score unused) */
    int lanes;      /* few heads, D a multiple of 32: blocks of lanes_min tokens score in lanes */
    int32_t lanes_min;
    size_t pack_bytes, rows_bytes, scratch_bytes, state_bytes, thread_bytes;
    float *scores;
    int64_t score_stride; /* floats from one token's scores to the next's (>= n_keys) */
    int32_t *out_idx;
    float *out_score;
    uint8_t *ws;
    skv_topk_parts parts; /* when splits > 1 */
    int32_t ranges;       /* ranges per block (1 unless split) */
    int32_t *owner;       /* set form, split: [n_blocks][ranges] thread that took each range */
} plan;

static int64_t visible(const plan *p, int32_t t)
{
    if (p->src->lists)
        return p->src->list_len[t];
    const int64_t L = p->src->n_keys;
    if (!p->q->positions)
        return L;
    const int64_t v = (int64_t)p->q->positions[t] + 1;
    return v < 0 ? 0 : v > L ? L : v;
}

/* Keys [s, end) that sit contiguously from s, and where. */
static inline __attribute__((always_inline)) segment segment_at(const skv_key_src *src, int64_t s,
                                                                int64_t end)
{
    segment g;
    int64_t run;
    if (src->table) {
        const int64_t r = s % src->page_tokens;
        const uint8_t *page = src->pages[src->table[s / src->page_tokens]];
        g.rows = page + src->slot_offset + (size_t)r * src->row_bytes;
        g.scale = src->dtype == SKV_FP8_E4M3 ? (const float *)(page + src->scale_offset) + r : NULL;
        g.mx = src->dtype == SKV_MXFP4_E2M1
                   ? page + src->scale_offset + (size_t)r * (size_t)(src->head_dim / 32) : NULL;
        run = src->page_tokens - r;
    } else {
        g.rows = src->base + (size_t)s * src->row_bytes;
        g.scale = src->scale ? src->scale + s : NULL;
        g.mx = src->mx_scale ? src->mx_scale + (size_t)s * (size_t)(src->head_dim / 32) : NULL;
        run = src->n_keys - s;
    }
    g.start = s;
    g.n = run < end - s ? run : end - s;
    return g;
}

static void pack_token(const plan *p, int32_t t, void *dst)
{
    const skv_indexer_query *q = p->q;
    float wbuf[4096]; /* n_heads <= 4096 */
    const size_t hd = (size_t)q->n_heads * (size_t)q->head_dim;
    skv_qpack_args a = {
        .q = (const uint8_t *)q->q + (size_t)t * hd * skv_dtype_size(q->dtype),
        .q_dtype = q->dtype,
        .qscale = q->q_scale ? q->q_scale + (size_t)t * q->n_heads : NULL,
        .w = skv_query_weights(q, t, wbuf),
        .H = q->n_heads,
        .D = q->head_dim,
        .scaled = p->scaled,
    };
    p->sk->pack(dst, &a);
}

const uint8_t *skv_key_row(const skv_key_src *src, int64_t s, const float **scale)
{
    const segment g = segment_at(src, s, s + 1);
    if (scale)
        *scale = g.scale;
    return g.rows;
}

void skv_key_row_f32(const skv_kernels *kern, const skv_key_src *src, int64_t s, float *out)
{
    const segment g = segment_at(src, s, s + 1);
    const int32_t D = src->head_dim;
    if (src->dtype == SKV_FP8_E4M3) {
        kern->fp8_to_f32(g.rows, out, D);
        for (int32_t d = 0; d < D; d++)
            out[d] *= g.scale[0];
    } else if (src->dtype == SKV_MXFP4_E2M1) {
        kern->mxfp4_to_f32(g.rows, g.mx, D / 32, out);
    } else if (src->dtype == SKV_BF16) {
        kern->bf16_to_f32(g.rows, out, D);
    } else if (src->dtype == SKV_F16) {
        kern->f16_to_f32(g.rows, out, D);
    } else if (src->dtype == SKV_Q8_0) {
        kern->q8_0_to_f32(g.rows, out, D);
    } else {
        memcpy(out, g.rows, (size_t)D * 4);
    }
}

const float *skv_key_chunk_sum(const skv_key_src *src, int64_t i)
{
    const size_t D = (size_t)src->head_dim;
    if (!src->table)
        return src->pool_sums + (size_t)i * D;
    const int64_t per_page = src->page_tokens / src->pool_chunk;
    const uint8_t *page = src->pages[src->table[i / per_page]];
    return (const float *)(page + src->pool_offset) + (size_t)(i % per_page) * D;
}

/* Asks for keys [s, min(s + n, end)) wherever they live (pages included), so that the next
 * step's keys stream in while this one computes. */
static void prefetch_keys(const skv_key_src *src, int64_t s, int64_t n, int64_t end)
{
    end = s + n < end ? s + n : end;
    while (s < end) {
        const segment g = segment_at(src, s, end);
        const size_t bytes = (size_t)g.n * src->row_bytes;
        for (size_t off = 0; off < bytes; off += 64)
            __builtin_prefetch(g.rows + off);
        if (g.scale)
            __builtin_prefetch(g.scale);
        if (g.mx)
            __builtin_prefetch(g.mx);
        s += g.n;
    }
}

static inline void score_range(const plan *p, const uint8_t *pack, const uint8_t *rows,
                               const float *scale, int64_t n, float *out)
{
    p->sk->score(pack, rows, (size_t)p->src->head_dim, scale, n, out);
}

/* Where token t's scores for the group starting at g go: the caller's matrix, or the
 * token's tile row. */
static inline float *token_out(const plan *p, int32_t t, float *tile, int64_t g)
{
    if (p->scores)
        return p->scores + (size_t)t * p->score_stride + g;
    return tile + (size_t)(t % p->tb) * KEY_GROUP;
}

/* Keys [g, ge) of a token block in lanes: transposed once from wherever they lie (fp8
 * converted on the way), then scored for every token that sees them and pushed to its top-k;
 * one token's fp8 keys instead go into lanes in registers, from their rows or from the key
 * cache's lane copy. Keys in lanes are bf16 or fp8: the bf16 kernel serves no other. */
static void score_group_lanes(const plan *p, const segment *seg, int nseg, int64_t g, int64_t ge,
                              const int64_t *vis, int32_t nt, const uint8_t *packs,
                              uint8_t *scratch, int32_t t0, float *tile, skv_topk_state *st)
{
    const skv_key_src *src = p->src;
    const int32_t D = src->head_dim;
    const int fp8 = src->dtype == SKV_FP8_E4M3;
    const int in_registers = fp8 && nt <= FP8_LANES_IN_REGISTERS_MAX_TOKENS;
    /* the cache's lane copy holds these keys as fp8 tiles (groups start on whole tiles) */
    const int fp8_tiles = in_registers && src->lane_offset && g % 16 == 0;
    uint32_t *lanes = (uint32_t *)scratch;
    float *scale = (float *)(scratch + p->rows_bytes);
    const void *row[KEY_GROUP];
    if (fp8_tiles) { /* a page's tiles from its segment: one lookup a page */
        for (int e = 0; e < nseg; e++) {
            const uint8_t *page = src->pages[src->table[seg[e].start / src->page_tokens]];
            const int64_t in_page = seg[e].start % src->page_tokens;
            for (int64_t j = 0; j < seg[e].n; j += 16)
                row[(seg[e].start - g + j) / 16] = page + src->lane_offset + (size_t)(in_page + j) * D;
        }
        if (ge < src->n_keys) { /* the next group's first tile: the kernel asks for the rest */
            const uint8_t *next = src->pages[src->table[ge / src->page_tokens]] + src->lane_offset +
                                  (size_t)(ge % src->page_tokens) * D;
            for (size_t b = 0; b < (size_t)16 * D; b += 64)
                __builtin_prefetch(next + b);
        }
    } else {
        /* the next group's first keys: the kernel asks for the rest as it goes */
        prefetch_keys(src, ge, SKV_LANES_PREFETCH, src->n_keys);
    }
    for (int e = 0; e < nseg; e++) {
        const int64_t at = seg[e].start - g;
        for (int64_t j = 0; !fp8_tiles && j < seg[e].n; j++)
            row[at + j] = seg[e].rows + (size_t)j * src->row_bytes;
        if (p->scaled)
            memcpy(scale + at, seg[e].scale, (size_t)seg[e].n * 4);
    }
    if (fp8 && !in_registers)
        p->kern->lanes.fp8_to_lanes(row, D, ge - g, lanes);
    else if (!fp8)
        p->kern->lanes.to_lanes(row, D, ge - g, lanes);
    for (int32_t i = 0; i < nt; i++) {
        const int64_t end = vis[i] < ge ? vis[i] : ge;
        if (end <= g)
            continue;
        const uint8_t *pack = packs + (size_t)i * p->pack_bytes;
        float *out = token_out(p, t0 + i, tile, g);
        const float *ks = p->scaled ? scale : NULL;
        if (fp8_tiles)
            p->kern->lanes.score_fp8_tiles(pack, row, ks, end - g, out);
        else if (in_registers)
            p->kern->lanes.score_fp8(pack, row, ks, end - g, out);
        else
            p->kern->lanes.score(pack, lanes, ks, end - g, out);
        if (p->out_idx)
            skv_topk_push(&st[i], tile + (size_t)i * KEY_GROUP, (int32_t)(end - g),
                          (int32_t)g);
    }
}

/* Segments for list positions [g, ge) of a token's ascending key list: a run of RUN_MIN or
 * more consecutive keys on one page is read where it lies (HISA's blocks); other keys are
 * copied into `gathered` (room for a group of rows, then their scales), those of consecutive
 * positions forming one segment. Returns the count. */
static int list_segments(const skv_key_src *src, const int32_t *list, int64_t g, int64_t ge,
                         uint8_t *gathered, segment *seg)
{
    const size_t rb = src->row_bytes, mb = skv_row_scale_bytes(src->dtype, src->head_dim);
    float *gscale = (float *)(gathered + (size_t)KEY_GROUP * rb);
    uint8_t *gmx = gathered + (size_t)KEY_GROUP * rb; /* MXFP4 (no f32 scales then) */
    int nseg = 0;
    int64_t gathered_to = -1; /* list position where the last gathered segment ends */
    for (int64_t s = g; s < ge;) {
        const segment r = segment_at(src, list[s], list[s] + (ge - s));
        int64_t n = 1;
        while (n < r.n && list[s + n] == list[s] + n)
            n++;
        if (n >= RUN_MIN) {
            seg[nseg++] = (segment){r.rows, r.scale, r.mx, s, n};
        } else {
            memcpy(gathered + (size_t)(s - g) * rb, r.rows, (size_t)n * rb);
            if (r.mx)
                memcpy(gmx + (size_t)(s - g) * mb, r.mx, (size_t)n * mb);
            for (int64_t i = 0; r.scale && i < n; i++) /* mostly one: no call */
                gscale[s - g + i] = r.scale[i];
            if (gathered_to == s)
                seg[nseg - 1].n += n;
            else
                seg[nseg++] = (segment){gathered + (size_t)(s - g) * rb,
                                        r.scale ? gscale + (s - g) : NULL,
                                        r.mx ? gmx + (size_t)(s - g) * mb : NULL, s, n};
            gathered_to = s + n;
        }
        s += n;
    }
    return nseg;
}

/* One thread's hold on one token block: its tokens' packed queries, visible lengths and top-k
 * states (in the thread's workspace), kept across the block's key ranges the thread takes. */
typedef struct block_work {
    int32_t b, t0, nt, lead; /* lead: a token that sees every key the block scores */
    int64_t vis[TOKEN_BLOCK], lb;
    uint8_t *packs, *scratch, *gathered;
    float *tile;
    skv_topk_state st[TOKEN_BLOCK];
} block_work;

/* The most keys (or list positions) a token of block b sees. */
static int64_t block_visible(const plan *p, int32_t b)
{
    int64_t lb = 0;
    for (int32_t t = b * p->tb; t < p->q->n_tokens && t < (b + 1) * p->tb; t++) {
        const int64_t v = visible(p, t);
        lb = v > lb ? v : lb;
    }
    return lb;
}

static void block_begin(const plan *p, int32_t b, uint8_t *ws, block_work *w)
{
    const int32_t T = p->q->n_tokens;
    w->b = b;
    w->t0 = b * p->tb;
    w->nt = T - w->t0 < p->tb ? T - w->t0 : p->tb;
    w->packs = ws;
    w->scratch = w->packs + (size_t)p->tb * p->pack_bytes;
    w->tile = (float *)(w->scratch + p->scratch_bytes);
    uint8_t *states_mem = (uint8_t *)(w->tile + (size_t)p->tb * KEY_GROUP);
    w->gathered = states_mem + (size_t)p->tb * p->state_bytes; /* key lists only */
    w->lb = block_visible(p, b);
    w->lead = 0;
    for (int32_t i = 0; i < w->nt; i++) {
        w->vis[i] = visible(p, w->t0 + i);
        w->lead = w->vis[i] > w->vis[w->lead] ? i : w->lead;
        pack_token(p, w->t0 + i, w->packs + (size_t)i * p->pack_bytes);
        if (p->out_idx)
            skv_topk_init(&w->st[i], p->kern, states_mem + (size_t)i * p->state_bytes, p->k);
    }
}

/* Keys (or list positions) per range of a block whose tokens see lb: a multiple of 64. */
static int64_t range_len(int64_t lb, int32_t n_ranges)
{
    return (int64_t)skv_round_up((size_t)((lb + n_ranges - 1) / n_ranges), 64);
}

/* Range r of the block's n_ranges. */
static void block_range(const plan *p, block_work *w, int32_t range, int32_t n_ranges)
{
    const int32_t D = p->src->head_dim, t0 = w->t0, nt = w->nt, lead = w->lead;
    const int64_t *vis = w->vis;
    const int64_t chunk = range_len(w->lb, n_ranges);
    const int64_t lo = range * chunk < w->lb ? range * chunk : w->lb;
    const int64_t hi = lo + chunk < w->lb ? lo + chunk : w->lb;
    uint8_t *packs = w->packs, *scratch = w->scratch, *gathered = w->gathered;
    float *tile = w->tile;
    skv_topk_state *st = w->st;
    if (p->scores && range == 0) /* the score matrix past each token's visible keys */
        for (int32_t i = 0; i < nt; i++)
            for (int64_t s = vis[i]; s < p->score_stride; s++)
                p->scores[(size_t)(t0 + i) * p->score_stride + s] = -INFINITY;

    for (int64_t g = lo; g < hi; g += KEY_GROUP) {
        const int64_t ge = g + KEY_GROUP < hi ? g + KEY_GROUP : hi;
        segment seg[KEY_GROUP];
        int nseg = 0;
        if (p->src->lists) { /* one token: its listed keys (list positions g..ge) */
            nseg = list_segments(p->src, p->src->lists + (size_t)t0 * p->src->list_stride, g, ge,
                                 gathered, seg);
        } else {
            for (int64_t s = g; s < ge; s += seg[nseg++].n)
                seg[nseg] = segment_at(p->src, s, ge);
        }
        for (int e = 0; e < nseg; e++)
            if (p->scaled && !seg[e].scale)
                seg[e].scale = ones;
        if (p->lanes && nt >= p->lanes_min) {
            score_group_lanes(p, seg, nseg, g, ge, vis, nt, packs, scratch, t0, tile, st);
            continue;
        }
        if (p->cvt || p->cvt_mx) {
            /* Convert in small steps, scoring the lead token on each while the next one
               streams in: the conversion's memory reads overlap that token's arithmetic. */
            for (int e = 0; e < nseg; e++) {
                uint8_t *dst = scratch + (size_t)(seg[e].start - g) * D * p->celem;
                for (int64_t j = 0; j < seg[e].n; j += CVT_STEP) {
                    const int64_t n = seg[e].n - j < CVT_STEP ? seg[e].n - j : CVT_STEP;
                    if (!p->src->lists)
                        prefetch_keys(p->src, seg[e].start + j + CVT_STEP, CVT_STEP, hi);
                    if (p->cvt_mx)
                        p->cvt_mx(seg[e].rows + (size_t)j * p->src->row_bytes,
                                  seg[e].mx + (size_t)j * (D / 32), n * (D / 32),
                                  dst + (size_t)j * D * p->celem);
                    else
                        p->cvt(seg[e].rows + (size_t)j * p->src->row_bytes,
                               dst + (size_t)j * D * p->celem, n * D);
                    score_range(p, packs + (size_t)lead * p->pack_bytes, dst + (size_t)j * D * p->celem,
                                seg[e].scale ? seg[e].scale + j : NULL, n,
                                token_out(p, t0 + lead, tile, g) + (seg[e].start - g) + j);
                }
                seg[e].rows = dst;
            }
        }
        for (int32_t i = 0; i < nt; i++) {
            const int64_t end = vis[i] < ge ? vis[i] : ge;
            if (end <= g)
                continue;
            float *dst = token_out(p, t0 + i, tile, g);
            if (!((p->cvt || p->cvt_mx) && i == lead))
                for (int e = 0; e < nseg && seg[e].start < end; e++) {
                    const int64_t n = seg[e].n < end - seg[e].start ? seg[e].n : end - seg[e].start;
                    if (i == lead && !p->src->lists) /* the kernel prefetches within a segment */
                        prefetch_keys(p->src, seg[e].start + seg[e].n, PREFETCH_NEXT, hi);
                    score_range(p, packs + (size_t)i * p->pack_bytes, seg[e].rows, seg[e].scale, n,
                                dst + (seg[e].start - g));
                }
            if (p->out_idx)
                skv_topk_push(&st[i], tile + (size_t)i * KEY_GROUP, (int32_t)(end - g),
                              (int32_t)g);
        }
    }

}

/* The block's results: written out when its keys were not split, else its candidates stored
 * in the parts' slot `slot` (the thread's). */
static void block_end(const plan *p, block_work *w, int32_t slot)
{
    if (!p->out_idx)
        return;
    for (int32_t i = 0; i < w->nt; i++) {
        const int32_t t = w->t0 + i;
        if (p->splits == 1 && p->index_order)
            skv_topk_finish_set(&w->st[i], p->out_idx + (size_t)t * p->k);
        else if (p->splits == 1)
            skv_topk_finish(&w->st[i], p->out_idx + (size_t)t * p->k,
                            p->out_score ? p->out_score + (size_t)t * p->k : NULL);
        else if (p->index_order)
            skv_topk_parts_store_set(&p->parts, t, slot, &w->st[i]);
        else
            skv_topk_parts_store(&p->parts, t, slot, &w->st[i]);
    }
}

static void choose_kernel(skv_context *ctx, plan *p)
{
    const skv_kernels *kn = &ctx->kern;
    const skv_dtype qt = p->q->dtype, kt = p->src->dtype;
    const int narrow_q = qt == SKV_BF16 || qt == SKV_FP8_E4M3;
    const int narrow_k = kt == SKV_BF16 || kt == SKV_FP8_E4M3 || kt == SKV_MXFP4_E2M1;
    if (ctx->int8_queries && kt == SKV_Q8_0) { /* int8 queries (the pack quantises) on raw rows */
        p->sk = &kn->score_q8i8;
        p->celem = 1;
        p->cvt = NULL;
        p->cvt_mx = NULL;
        p->scaled = 0;
        return;
    }
    if (kn->score_bf16.pack_size && narrow_q && narrow_k) {
        p->sk = &kn->score_bf16;
        p->celem = 2;
        p->cvt = kt == SKV_FP8_E4M3 ? kn->fp8_to_bf16 : NULL;
        p->cvt_mx = kt == SKV_MXFP4_E2M1 ? kn->mxfp4_to_bf16 : NULL;
    } else {
        p->sk = &kn->score_f32;
        p->celem = 4;
        /* F16 and Q8_0 keys widen exactly to f32 a step of keys at a time, in L1 (F16C / AVX-512
           conversions), and are scored by the f32 kernel: f16 is not exact in bf16 */
        p->cvt = kt == SKV_BF16 ? kn->bf16_to_f32 : kt == SKV_FP8_E4M3 ? kn->fp8_to_f32
                 : kt == SKV_F16 ? kn->f16_to_f32 : kt == SKV_Q8_0 ? kn->q8_0_to_f32 : NULL;
        p->cvt_mx = kt == SKV_MXFP4_E2M1 ? kn->mxfp4_to_f32 : NULL;
    }
    p->scaled = qt == SKV_FP8_E4M3 || kt == SKV_FP8_E4M3;
}

static skv_status run(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                      int32_t k, float *scores, int64_t score_stride, int32_t *out_idx,
                      float *out_score, int index_order)
{
    const int32_t T = q->n_tokens;
    if (out_idx && !index_order && (int64_t)q->n_sink + q->n_window > k)
        return SKV_ERR_INVALID_ARG; /* forced keys are counted within k */
    if (T == 0)
        return SKV_OK;
    plan p = {.kern = &ctx->kern, .q = q, .src = src, .k = k, .index_order = index_order,
              .scores = scores, .score_stride = score_stride, .out_idx = out_idx,
              .out_score = out_score};
    choose_kernel(ctx, &p);

    const int nth = skv_threads(ctx);
    const int topk = out_idx != NULL;
    p.tb = (topk && k > 16384) || src->lists ? 1 : TOKEN_BLOCK;
    p.n_blocks = (T + p.tb - 1) / p.tb;
    int64_t lmax = 0;
    for (int32_t t = 0; t < T; t++) {
        const int64_t v = visible(&p, t);
        lmax = v > lmax ? v : lmax;
    }
    p.splits = skv_topk_split_count(p.n_blocks, nth, lmax, SPLIT_MIN_KEYS);
    /* Split blocks are cut finer, into ranges the threads take as they come free, so that a
       thread on a slower core (a busy sibling, a smaller core) takes fewer. A thread keeps its
       states across its ranges: the parts get a slot per thread. */
    p.ranges = 1;
    if (p.splits > 1) {
        const int64_t by_keys = lmax / SPLIT_MIN_KEYS, fine = (int64_t)RANGES_PER_THREAD * nth;
        const int64_t n = fine < by_keys ? fine : by_keys;
        p.ranges = n > p.splits ? (int32_t)n : p.splits;
        p.splits = nth;
    }

    p.pack_bytes = p.sk->pack_size(q->n_heads, q->head_dim);
    /* lanes: the bf16 kernel of a level that has them, few heads, whole tiles of dim pairs */
    p.lanes = p.sk->compute == SKV_BF16 && ctx->kern.lanes.to_lanes && q->n_heads <= SKV_LANES_MAX_HEADS &&
              q->head_dim % 32 == 0 && !src->lists && src->dtype != SKV_MXFP4_E2M1;
    p.lanes_min = src->dtype == SKV_FP8_E4M3 ? LANES_MIN_TOKENS_FP8 : LANES_MIN_TOKENS_BF16;
    p.lanes = p.lanes && T >= p.lanes_min;
    p.rows_bytes = skv_round_up((size_t)KEY_GROUP * q->head_dim * p.celem, SKV_ALIGN);
    /* converted rows; with lanes the transposed tiles (as many bytes) and the group's key scales */
    p.scratch_bytes = p.lanes                ? p.rows_bytes + KEY_GROUP * sizeof(float)
                      : p.cvt || p.cvt_mx ? p.rows_bytes
                                          : 0;
    p.state_bytes = topk ? skv_topk_state_bytes(k) : 0;
    const size_t gather_bytes =
        src->lists ? (size_t)KEY_GROUP * (src->row_bytes + 4 + skv_row_scale_bytes(src->dtype, src->head_dim))
                   : 0;
    p.thread_bytes = skv_round_up((size_t)p.tb * p.pack_bytes + p.scratch_bytes +
                                      (size_t)p.tb * KEY_GROUP * sizeof(float) +
                                      (size_t)p.tb * p.state_bytes + gather_bytes,
                                  SKV_ALIGN);
    const int64_t items = (int64_t)p.n_blocks * p.ranges;
    size_t merge_bytes = 0, ws_bytes;
    if (topk && p.splits > 1 && !skv_topk_parts_bytes(T, p.splits, k, index_order, &merge_bytes))
        return SKV_ERR_NOMEM;
    const size_t owner_bytes =
        merge_bytes && index_order ? skv_round_up((size_t)items * 4, SKV_ALIGN) : 0;
    if (!skv_mul_ok(p.thread_bytes, (size_t)nth, &ws_bytes) ||
        __builtin_add_overflow(ws_bytes, merge_bytes, &ws_bytes) ||
        __builtin_add_overflow(ws_bytes, owner_bytes, &ws_bytes))
        return SKV_ERR_NOMEM;
    p.ws = skv_workspace(ctx, ws_bytes);
    if (!p.ws)
        return SKV_ERR_NOMEM;
    if (merge_bytes)
        skv_topk_parts_init(&p.parts, &ctx->kern, p.ws + p.thread_bytes * nth, T, p.splits, k,
                            index_order);
    p.owner = owner_bytes ? (int32_t *)(p.ws + p.thread_bytes * nth + merge_bytes) : NULL;

#pragma omp parallel num_threads(nth) if (nth > 1 && items > 1)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        uint8_t *ws = p.ws + p.thread_bytes * (size_t)tid;
        block_work w;
        w.b = -1;
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t it = 0; it < items; it++) {
            const int32_t b = (int32_t)(it / p.ranges), r = (int32_t)(it % p.ranges);
            if (b != w.b) { /* a thread's items come in increasing order */
                if (w.b >= 0)
                    block_end(&p, &w, tid);
                block_begin(&p, b, ws, &w);
            }
            if (p.owner)
                p.owner[it] = tid;
            block_range(&p, &w, r, p.ranges);
        }
        if (w.b >= 0)
            block_end(&p, &w, tid);
        if (merge_bytes) {
            /* a ranked row's merge is written in pieces, one per thread (a decode token's
               would otherwise keep the others waiting) */
            const int32_t pieces = index_order ? 1 : skv_topk_parts_pieces(&p.parts);
#pragma omp barrier
#pragma omp for schedule(static) nowait /* the region's end is the barrier */
            for (int64_t it = 0; it < (int64_t)T * pieces; it++) {
                const int32_t t = (int32_t)(it / pieces);
                if (index_order) {
                    const int32_t b = t / p.tb;
                    skv_topk_parts_finish_set(&p.parts, t, p.owner + (size_t)b * p.ranges, p.ranges,
                                              range_len(block_visible(&p, b), p.ranges),
                                              out_idx + (size_t)t * k);
                } else
                    skv_topk_parts_finish(&p.parts, t, (int32_t)(it % pieces), pieces,
                                          out_idx + (size_t)t * k,
                                          out_score ? out_score + (size_t)t * k : NULL);
            }
        }
    }
    if (src->lists) /* list positions to keys; lists ascend, so ties stayed lowest-key-first */
        for (int32_t t = 0; t < T; t++)
            for (int32_t j = 0; j < k; j++) {
                int32_t *x = out_idx + (size_t)t * k + j;
                if (*x >= 0)
                    *x = src->lists[(size_t)t * src->list_stride + *x];
            }
    if (out_idx && !index_order)
        skv_forced_apply(q, src->n_keys, k, out_idx, out_score);
    return SKV_OK;
}

skv_status skv_indexer_run(skv_context *ctx, const skv_indexer_query *q, const skv_key_src *src,
                           int32_t k, float *scores, int32_t *out_idx, float *out_score)
{
    return run(ctx, q, src, k, scores, src->n_keys, out_idx, out_score, 0);
}

skv_status skv_indexer_run_scores(skv_context *ctx, const skv_indexer_query *q,
                                  const skv_key_src *src, float *scores, int64_t stride)
{
    return run(ctx, q, src, 0, scores, stride, NULL, NULL, 0);
}

skv_status skv_indexer_run_set(skv_context *ctx, const skv_indexer_query *q,
                               const skv_key_src *src, int32_t k, int32_t *out_idx)
{
    return run(ctx, q, src, k, NULL, 0, out_idx, NULL, 1);
}

skv_status skv_key_src_from_block(skv_context *ctx, const skv_key_block *keys, skv_key_src *out)
{
    SKV_CHECK(ctx, keys != NULL);
    SKV_CHECK(ctx, keys->head_dim >= 1 && keys->head_dim <= 4096);
    SKV_CHECK(ctx, keys->n_keys >= 0 && keys->n_keys <= INT32_MAX);
    SKV_CHECK(ctx, keys->n_keys == 0 || keys->k != NULL);
    SKV_TRY(check_dtype(keys->dtype));
    SKV_CHECK(ctx, (keys->dtype == SKV_FP8_E4M3) == (keys->k_scale != NULL));
    SKV_CHECK(ctx, keys->dtype != SKV_Q8_0 || keys->head_dim % SKV_Q8_0_BLOCK == 0);
    SKV_CHECK(ctx, keys->dtype == SKV_MXFP4_E2M1 ? keys->head_dim % 32 == 0 &&
                                                       (keys->k_mx_scale != NULL || keys->n_keys == 0)
                                                 : keys->k_mx_scale == NULL);
    *out = (skv_key_src){
        .n_keys = keys->n_keys, .head_dim = keys->head_dim, .dtype = keys->dtype,
        .row_bytes = skv_row_bytes(keys->dtype, keys->head_dim),
        .base = keys->k, .scale = keys->k_scale, .mx_scale = keys->k_mx_scale,
    };
    return SKV_OK;
}

skv_status skv_indexer_scores(skv_context *ctx, const skv_indexer_query *q,
                              const skv_key_block *keys, float *out)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, keys != NULL && q != NULL);
    SKV_TRY(skv_indexer_check_query(ctx, q, keys->head_dim, keys->dtype));
    skv_key_src src;
    SKV_TRY(skv_key_src_from_block(ctx, keys, &src));
    SKV_CHECK(ctx, out != NULL || q->n_tokens == 0 || keys->n_keys == 0);
    if (keys->n_keys == 0)
        return SKV_OK;
    return skv_indexer_run(ctx, q, &src, 0, out, NULL, NULL);
}

skv_status skv_indexer_topk(skv_context *ctx, const skv_indexer_query *q,
                            const skv_key_block *keys, int32_t k, int32_t *out_idx,
                            float *out_score)
{
    if (!ctx)
        return SKV_ERR_INVALID_ARG;
    SKV_CHECK(ctx, keys != NULL && q != NULL);
    SKV_TRY(skv_indexer_check_query(ctx, q, keys->head_dim, keys->dtype));
    skv_key_src src;
    SKV_TRY(skv_key_src_from_block(ctx, keys, &src));
    SKV_CHECK(ctx, k >= 1 && k <= SKV_TOPK_MAX_K);
    SKV_CHECK(ctx, out_idx != NULL || q->n_tokens == 0);
    return skv_indexer_run(ctx, q, &src, k, NULL, out_idx, out_score);
}
