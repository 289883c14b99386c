/* Clustering keys into pages: 2-means in the augmented space, bulk building of a subtree by
 * repeated bisection (prefill), one-token insertion with page splits (decode), and removal
 * with page merges.
 *
 * The augmentation appends a_k = sqrt(M^2 - |k|^2) to every key (M >= every norm), so all
 * augmented keys lie on a sphere and |q' - k'|^2 = |q|^2 + M^2 - 2 q.k for q' = (q, 0): nearest
 * in that space is largest inner product. Clustering there groups keys a query would rank
 * together; it keeps large-norm keys (the ones that win inner products) apart by direction
 * and lumps small-norm keys together. */
#include <math.h>

#include "store/store_impl.h"

#define BULK_SAMPLE 512 /* points a bisection's 2-means sees; every token is then projected */
#define KM_ITERS 4
#define PROJ_BLOCK 64 /* keys projected per kernel call */

static inline void *align64(void *p) { return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

size_t two_means_scratch(const skv_store *s, int32_t k)
{
    return (size_t)(4 * s->D + 8 + 6 * (size_t)k) * sizeof(float) + 2 * (size_t)s->D * 8 + 192;
}

/* Squared augmented distances of every point to centre c (cq [D], ca), through the dot kernel. */
static void dist_to(const skv_store *s, const float *pts, const float *aug, const float *nrm,
                    int32_t k, const float *cq, float ca, float *dot, float *out)
{
    const int32_t D = s->D;
    s->kern.dots(cq, 1, D, pts, SKV_F32, (size_t)D * 4, k, dot);
    const float c2 = vec_dist2(cq, NULL, D);
    for (int32_t i = 0; i < k; i++) {
        const float da = aug[i] - ca;
        out[i] = nrm[i] - 2 * dot[i] + c2 + da * da;
    }
}

STORE_CLONES int32_t two_means(const skv_store *s, const float *pts, const float *aug, const float *wt,
                               int32_t k, int iters, float *proj, void *tmp)
{
    const int32_t D = s->D;
    float *w = align64(tmp);          /* [D], then w_aug, t */
    float *cq = w + D + 2;            /* [2][D] */
    float *nrm = cq + 2 * D;          /* [k] */
    float *dot = nrm + k;             /* [k] */
    float *d1 = dot + k;               /* [k], then pairs [k][2] */
    uint8_t *side = (uint8_t *)(d1 + 2 * k);
    double *acc = align64(side + k); /* [2][D] */
    float ca[2];

    for (int32_t i = 0; i < k; i++)
        nrm[i] = vec_dist2(pts + (size_t)i * D, NULL, D);
    /* seeds: farthest from the weighted mean, then farthest from that */
    double wsum = 0, asum = 0;
    for (int32_t j = 0; j < D; j++)
        acc[j] = 0;
    for (int32_t i = 0; i < k; i++) {
        const double wi = wt ? wt[i] : 1.0;
        for (int32_t j = 0; j < D; j++)
            acc[j] += wi * pts[(size_t)i * D + j];
        asum += wi * aug[i];
        wsum += wi;
    }
    for (int32_t j = 0; j < D; j++)
        cq[j] = (float)(acc[j] / wsum);
    dist_to(s, pts, aug, nrm, k, cq, (float)(asum / wsum), dot, d1);
    int32_t i1 = 0;
    for (int32_t i = 1; i < k; i++)
        i1 = d1[i] > d1[i1] ? i : i1;
    memcpy(cq, pts + (size_t)i1 * D, (size_t)D * 4);
    ca[0] = aug[i1];
    dist_to(s, pts, aug, nrm, k, cq, ca[0], dot, d1);
    int32_t i2 = 0;
    for (int32_t i = 1; i < k; i++)
        i2 = d1[i] > d1[i2] ? i : i2;
    if (!(d1[i2] > 0))
        return -1;
    memcpy(cq + D, pts + (size_t)i2 * D, (size_t)D * 4);
    ca[1] = aug[i2];

    float *fa = (float *)acc; /* per-iteration sums: f32, one lane per dimension */
    for (int it = 0; it < iters; it++) {
        /* both centres in one pass over the points (d1 holds the pairs) */
        s->kern.dots(cq, 2, D, pts, SKV_F32, (size_t)D * 4, k, d1);
        const float c2[2] = {vec_dist2(cq, NULL, D), vec_dist2(cq + D, NULL, D)};
        double ws[2] = {0, 0}, as[2] = {0, 0};
        for (int32_t j = 0; j < 2 * D; j++)
            fa[j] = 0;
        for (int32_t i = 0; i < k; i++) {
            const float e0 = aug[i] - ca[0], e1 = aug[i] - ca[1];
            const float x0 = c2[0] - 2 * d1[2 * i] + e0 * e0, x1 = c2[1] - 2 * d1[2 * i + 1] + e1 * e1;
            const int c = x1 < x0;
            side[i] = (uint8_t)c;
            const float wi = wt ? wt[i] : 1.0f;
            float *a = fa + (size_t)c * D;
            const float *pt = pts + (size_t)i * D;
            for (int32_t j = 0; j < D; j++)
                a[j] += wi * pt[j];
            ws[c] += wi;
            as[c] += (double)wi * aug[i];
        }
        for (int c = 0; c < 2; c++) {
            if (ws[c] == 0)
                continue; /* an empty side keeps its centre */
            for (int32_t j = 0; j < D; j++)
                cq[(size_t)c * D + j] = (float)(fa[(size_t)c * D + j] / ws[c]);
            ca[c] = (float)(as[c] / ws[c]);
        }
    }
    /* the bisecting hyperplane: x.w + a w_aug > t on the first centre's side */
    float t = 0;
    for (int32_t j = 0; j < D; j++) {
        w[j] = cq[j] - cq[D + j];
        t += cq[j] * cq[j] - cq[D + j] * cq[D + j];
    }
    w[D] = ca[0] - ca[1];
    t = 0.5f * (t + ca[0] * ca[0] - ca[1] * ca[1]);
    w[D + 1] = t;
    s->kern.dots(w, 1, D, pts, SKV_F32, (size_t)D * 4, k, proj);
    int32_t n1 = 0;
    for (int32_t i = 0; i < k; i++) {
        proj[i] += aug[i] * w[D] - t;
        n1 += proj[i] > 0;
    }
    return n1;
}

int64_t layer_rank(const slayer *ly, int32_t pos)
{
    int64_t lo = 0, hi = ly->n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (ly->pos[mid] < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ly->n && ly->pos[lo] == pos ? lo : -1;
}

static float init_m(float max_norm) { return max_norm > 0 ? max_norm * 1.25f : 1.0f; }

/* ---- bulk build ------------------------------------------------------------------------ */

typedef struct bulk {
    skv_store *s;
    int32_t h;
    hidx *x;
    slayer *ly;
    const uint8_t *const *kp, *const *vp; /* each token's K and V (vp NULL entries: no V) */
    int64_t rank0;
    int32_t *idx;
    float *aug, *proj;
    struct pi { float p; int32_t i; } *pairs;
    float *pts, *saug, *sproj;
    uint8_t *blk; /* [PROJ_BLOCK][k_bytes] gathered keys */
    void *tm;
} bulk;

static inline int pi_before(struct pi a, struct pi b) /* larger projection first, then index */
{
    return a.p > b.p || (a.p == b.p && a.i < b.i);
}

/* Reorders a[0..n) so that its first L entries are the L first by pi_before. Deterministic. */
static void select_first(struct pi *a, int64_t n, int64_t L)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        /* median of three as pivot */
        struct pi x = a[lo], y = a[mid], z = a[hi], p;
        if (pi_before(x, y))
            p = pi_before(y, z) ? y : (pi_before(x, z) ? z : x);
        else
            p = pi_before(x, z) ? x : (pi_before(y, z) ? z : y);
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (pi_before(a[i], p))
                i++;
            while (pi_before(p, a[j]))
                j--;
            if (i <= j) {
                struct pi t = a[i];
                a[i] = a[j], a[j] = t;
                i++, j--;
            }
        }
        if (L - 1 <= j)
            hi = j;
        else if (L - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* Prefetches token t's key (and its value when v). */
static inline void prefetch_row(const bulk *b, int32_t t, int v)
{
    const skv_store *s = b->s;
    for (size_t o = 0; o < s->k_bytes; o += 64)
        __builtin_prefetch(b->kp[t] + o);
    if (v && b->vp[t])
        for (size_t o = 0; o < s->row_bytes - s->k_bytes; o += 64)
            __builtin_prefetch(b->vp[t] + o);
}

/* Splits idx[start, start + m) into a left part of L tokens (a multiple of P) and the rest. */
STORE_CLONES static int64_t bisect(bulk *b, int64_t start, int64_t m)
{
    skv_store *s = b->s;
    const int32_t D = s->D, P = s->P;
    const int32_t S = m < BULK_SAMPLE ? (int32_t)m : BULK_SAMPLE;
    for (int32_t j = 0; j < S && j < 8; j++)
        prefetch_row(b, b->idx[start + (int64_t)j * m / S], 0);
    for (int32_t j = 0; j < S; j++) {
        if (j + 8 < S) /* the samples are spread over the staging area: fetch ahead */
            prefetch_row(b, b->idx[start + (int64_t)(j + 8) * m / S], 0);
        const int32_t t = b->idx[start + (int64_t)j * m / S];
        row_to_f32(s, b->kp[t], b->pts + (size_t)j * D, D);
        b->saug[j] = b->aug[t];
    }
    const int64_t hi = (m - 1) / P * P;
    const int32_t n1s = two_means(s, b->pts, b->saug, NULL, S, KM_ITERS, b->sproj, b->tm);
    if (n1s < 0) { /* identical keys: halves in position order */
        int64_t L = (m / 2 + P / 2) / P * P;
        return L < P ? P : L > hi ? hi : L;
    }
    const float *w = align64(b->tm);
    const float wa = w[D], t = w[D + 1];
    /* every token's side: keys gathered in blocks (visited in partition order, all over the
       staging area) and projected with one kernel call per block */
    int64_t n1 = 0;
    float pr[PROJ_BLOCK];
    for (int64_t k0 = 0; k0 < m; k0 += PROJ_BLOCK) {
        const int32_t nb = (int32_t)(m - k0 < PROJ_BLOCK ? m - k0 : PROJ_BLOCK);
        for (int32_t k = 0; k < nb; k++) {
            if (k0 + k + 8 < m)
                prefetch_row(b, b->idx[start + k0 + k + 8], 0);
            memcpy(b->blk + (size_t)k * s->k_bytes, b->kp[b->idx[start + k0 + k]], s->k_bytes);
        }
        s->kern.dots(w, 1, D, b->blk, s->p.dtype, s->k_bytes, nb, pr);
        for (int32_t k = 0; k < nb; k++) {
            const int32_t i = b->idx[start + k0 + k];
            const float p = pr[k] + b->aug[i] * wa - t;
            b->pairs[k0 + k] = (struct pi){p, i};
            n1 += p > 0;
        }
    }
    int64_t L = (n1 + P / 2) / P * P;
    L = L < P ? P : L > hi ? hi : L;
    select_first(b->pairs, m, L);
    for (int64_t k = 0; k < m; k++)
        b->idx[start + k] = b->pairs[k].i;
    return L;
}

static int32_t make_page(bulk *b, int64_t start, int64_t m)
{
    skv_store *s = b->s;
    int32_t *ix = b->idx + start;
    for (int64_t a = 1; a < m; a++) { /* rows by position */
        const int32_t v = ix[a];
        int64_t c = a;
        while (c > 0 && ix[c - 1] > v) {
            ix[c] = ix[c - 1];
            c--;
        }
        ix[c] = v;
    }
    const int32_t id = resv_page(s, b->h);
    const int32_t l = leaf_new(b->x, id, -1);
    int32_t *pos = pg_pos(s, id);
    for (int64_t k = 0; k < m; k++) {
        uint8_t *r = pg_row(s, id, (int32_t)k);
        memcpy(r, b->kp[ix[k]], s->k_bytes);
        if (s->row_bytes > s->k_bytes)
            memcpy(r + s->k_bytes, b->vp[ix[k]], s->row_bytes - s->k_bytes);
        pos[k] = b->ly->pos[b->rank0 + ix[k]];
        b->x->leaf_of[b->rank0 + ix[k]] = l;
    }
    pg_tail(s, id)->n = (int32_t)m;
    page_stats(s, id, b->x->aug_m);
    return LEAF(l);
}

/* A subtree over idx[start, start + m): a page, or a node whose children come from bisecting
 * the largest part until every part fits a subtree one level lower (at most cap pages, cap a
 * power of the fanout) or there are fanout parts. The tree is full at the bottom, like a
 * B-tree: nodes over pages have about fanout children, only the top is narrower. */
static int32_t build(bulk *b, int64_t start, int64_t m)
{
    skv_store *s = b->s;
    if (m <= s->P)
        return make_page(b, start, m);
    const int64_t pages = (m + s->P - 1) / s->P;
    int64_t cap = 1;
    while (cap * s->F < pages)
        cap *= s->F;
    const int64_t part_max = cap * s->P;
    int64_t ps[64], pl[64];
    int32_t np = 1;
    ps[0] = start, pl[0] = m;
    while (np < s->F) {
        int32_t big = -1;
        for (int32_t i = 0; i < np; i++)
            if (pl[i] > part_max && (big < 0 || pl[i] > pl[big]))
                big = i;
        if (big < 0)
            break;
        const int64_t L = bisect(b, ps[big], pl[big]);
        for (int32_t i = np; i > big + 1; i--)
            ps[i] = ps[i - 1], pl[i] = pl[i - 1];
        ps[big + 1] = ps[big] + L, pl[big + 1] = pl[big] - L;
        pl[big] = L;
        np++;
    }
    int32_t kids[64];
    for (int32_t i = 0; i < np; i++) {
        /* pages copy rows from all over the input: fetch the next page's while this one fills */
        for (int32_t a = i == 0 ? 0 : i + 1; a <= i + 1 && a < np; a++)
            if (pl[a] <= s->P)
                for (int64_t k = 0; k < pl[a]; k++)
                    prefetch_row(b, b->idx[ps[a] + k], 1);
        kids[i] = build(b, ps[i], pl[i]);
    }
    const int32_t n = node_new(s, b->x);
    for (int32_t i = 0; i < np; i++)
        node_add_child(s, b->x, n, kids[i]);
    node_stats(s, b->x, n);
    return n;
}

size_t cluster_bulk_scratch(const skv_store *s, int64_t f)
{
    return (size_t)f * (4 + 4 + 8) + (size_t)BULK_SAMPLE * ((size_t)s->D + 2) * 4 +
           (size_t)PROJ_BLOCK * s->k_bytes + 64 +
           two_means_scratch(s, BULK_SAMPLE) + node_split_scratch(s) + 4 * 64;
}

STORE_CLONES void cluster_bulk(skv_store *s, int32_t h, hidx *x, slayer *ly, const uint8_t *const *kp,
                  const uint8_t *const *vp, int64_t f, int64_t rank0, void *scratch)
{
    const int32_t D = s->D;
    bulk b = {s, h, x, ly, kp, vp, rank0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    uint8_t *p = align64(scratch);
    b.idx = (int32_t *)p, p = align64(p + (size_t)f * 4);
    b.aug = (float *)p, p = align64(p + (size_t)f * 4);
    b.pairs = (struct pi *)p, p = align64(p + (size_t)f * 8);
    b.pts = (float *)p, p = align64(p + (size_t)BULK_SAMPLE * D * 4);
    b.saug = (float *)p, p = align64(p + (size_t)BULK_SAMPLE * 4);
    b.sproj = (float *)p, p = align64(p + (size_t)BULK_SAMPLE * 4);
    b.blk = p, p = align64(p + (size_t)PROJ_BLOCK * s->k_bytes);
    b.tm = p;
    float *row = b.pts; /* reused before any bisection */
    float nmax = 0;
    for (int64_t i = 0; i < f; i++) {
        row_to_f32(s, kp[i], row, D);
        const float n = vec_dist2(row, NULL, D);
        b.aug[i] = n;
        nmax = n > nmax ? n : nmax;
        b.idx[i] = (int32_t)i;
    }
    if (x->aug_m == 0)
        x->aug_m = init_m(sqrtf(nmax));
    for (int64_t i = 0; i < f; i++)
        b.aug[i] = aug_coord(x->aug_m, b.aug[i]);
    const int32_t sub = build(&b, 0, f);
    /* graft: the subtree becomes the root, or one more child of the root */
    if (x->root < 0) {
        if (IS_LEAF(sub)) {
            const int32_t r = node_new(s, x);
            node_add_child(s, x, r, sub);
            node_stats(s, x, r);
            x->root = r;
        } else {
            x->root = sub;
        }
    } else {
        node_add_child(s, x, x->root, sub);
        node_fixup(s, x, x->root, b.tm);
    }
}

/* ---- one-token insertion --------------------------------------------------------------- */

size_t cluster_insert_scratch(const skv_store *s)
{
    const size_t k = (size_t)s->P + 1;
    const size_t split = k * ((size_t)s->D + 3) * 4 + k * s->row_bytes + k * 4 +
                         two_means_scratch(s, (int32_t)k);
    const size_t ns = node_split_scratch(s);
    return (size_t)s->D * 4 + (split > ns ? split : ns) + 4 * 64;
}

int64_t cluster_insert_nodes(const skv_store *s, const hidx *x, int64_t f)
{
    /* each insertion splits at most every node on its path and adds a root; the height grows by
       one per root split, which takes at least fanout - 1 new children */
    const int64_t hb = hidx_height(s, x) + 2 + 2 * f / (s->F - 1);
    return f * (hb + 1) + 1;
}

/* A full page receives one more token: its P + 1 tokens are bisected into two pages. */
static void split_insert(skv_store *s, int32_t h, hidx *x, slayer *ly, int32_t l,
                         const uint8_t *row, int64_t rank, void *scratch)
{
    const int32_t P = s->P, D = s->D, k = P + 1;
    const int32_t parent = x->leaf[l].parent;
    int32_t id = x->leaf[l].page;
    uint8_t *p = align64(scratch);
    float *pts = (float *)p;
    float *aug = pts + (size_t)k * D, *proj = aug + k;
    uint8_t *rw = align64(proj + k);
    int32_t *pos = (int32_t *)align64(rw + (size_t)k * s->row_bytes);
    void *tm = align64(pos + k);
    memcpy(rw, pg_row(s, id, 0), (size_t)P * s->row_bytes);
    memcpy(rw + (size_t)P * s->row_bytes, row, s->row_bytes);
    memcpy(pos, pg_pos(s, id), (size_t)P * 4);
    pos[P] = ly->pos[rank];
    for (int32_t i = 0; i < k; i++) {
        row_to_f32(s, rw + (size_t)i * s->row_bytes, pts + (size_t)i * D, D);
        aug[i] = aug_coord(x->aug_m, vec_dist2(pts + (size_t)i * D, NULL, D));
    }
    int32_t n1 = two_means(s, pts, aug, NULL, k, KM_ITERS, proj, tm);
    if (n1 < 0) { /* identical keys: the older half stays */
        for (int32_t i = 0; i < k; i++)
            proj[i] = (float)(k - i);
        n1 = k / 2;
    }
    const int32_t lo = P / 4 > 1 ? P / 4 : 1;
    n1 = n1 < lo ? lo : n1 > k - lo ? k - lo : n1;
    int32_t order[65];
    for (int32_t i = 0; i < k; i++)
        order[i] = i;
    for (int32_t a = 1; a < k; a++) {
        const int32_t v = order[a];
        int32_t c = a;
        while (c > 0 && (proj[order[c - 1]] < proj[v] ||
                         (proj[order[c - 1]] == proj[v] && order[c - 1] > v))) {
            order[c] = order[c - 1];
            c--;
        }
        order[c] = v;
    }
    uint8_t stay[65] = {0};
    for (int32_t i = 0; i < n1; i++)
        stay[order[i]] = 1;
    if (s->refcnt[id] > 1) { /* the shared original stays intact for its other owners */
        resv_unref(s, h, id);
        id = resv_page(s, h);
        x->leaf[l].page = id;
    } else {
        page_changed(s, id);
    }
    const int32_t nb = resv_page(s, h);
    const int32_t lb = leaf_new(x, nb, parent);
    int32_t na = 0, nn = 0;
    int32_t *pa = pg_pos(s, id), *pb = pg_pos(s, nb);
    for (int32_t i = 0; i < k; i++) { /* both pages keep position order */
        const uint8_t *src = rw + (size_t)i * s->row_bytes;
        if (stay[i]) {
            memcpy(pg_row(s, id, na), src, s->row_bytes);
            pa[na++] = pos[i];
            if (i == P)
                x->leaf_of[rank] = l;
        } else {
            memcpy(pg_row(s, nb, nn), src, s->row_bytes);
            pb[nn++] = pos[i];
            x->leaf_of[i == P ? rank : layer_rank(ly, pos[i])] = lb;
        }
    }
    for (int32_t i = na; i < P; i++)
        pa[i] = -1;
    pg_tail(s, id)->n = na;
    pg_tail(s, nb)->n = nn;
    page_stats(s, id, x->aug_m);
    page_stats(s, nb, x->aug_m);
    node_insert_after(s, x, parent, LEAF(l), LEAF(lb));
}

void cluster_insert(skv_store *s, int32_t h, hidx *x, slayer *ly, const uint8_t *row,
                    int64_t rank, void *scratch)
{
    const int32_t D = s->D;
    float *xk = align64(scratch);
    void *rest = align64(xk + D);
    row_to_f32(s, row, xk, D);
    const float n2 = vec_dist2(xk, NULL, D);
    if (x->aug_m == 0)
        x->aug_m = init_m(sqrtf(n2));
    const float a = aug_coord(x->aug_m, n2);
    if (x->root < 0) {
        const int32_t r = node_new(s, x);
        const int32_t id = resv_page(s, h);
        memcpy(pg_row(s, id, 0), row, s->row_bytes);
        pg_pos(s, id)[0] = ly->pos[rank];
        pg_tail(s, id)->n = 1;
        page_stats(s, id, x->aug_m);
        const int32_t l = leaf_new(x, id, r);
        node_add_child(s, x, r, LEAF(l));
        node_stats(s, x, r);
        x->root = r;
        x->leaf_of[rank] = l;
        return;
    }
    /* descend to the nearest child at every level */
    int32_t n = x->root, best;
    for (;;) {
        const int32_t *ch = node_child(s, x, n);
        float bd = INFINITY;
        best = ch[0];
        for (int32_t j = 0; j < x->node[n].n_child; j++) {
            const int32_t c = ch[j];
            float dot, c2, ca;
            if (IS_LEAF(c)) {
                const int32_t id = x->leaf[LEAF_IDX(c)].page;
                s->kern.dots(xk, 1, D, pg_cent(s, id), s->p.dtype, 0, 1, &dot);
                c2 = pg_tail(s, id)->cnorm2, ca = pg_tail(s, id)->aug;
            } else {
                const float *cc = node_cent(s, x, c);
                s->kern.dots(xk, 1, D, cc, SKV_F32, 0, 1, &dot);
                c2 = vec_dist2(cc, NULL, D);
                ca = x->node[c].aug;
            }
            const float d = n2 - 2 * dot + c2 + (a - ca) * (a - ca);
            if (d < bd)
                bd = d, best = c;
        }
        if (IS_LEAF(best))
            break;
        n = best;
    }
    const int32_t l = LEAF_IDX(best);
    int32_t id = x->leaf[l].page;
    const int32_t k = pg_n(s, id);
    if (k < s->P) {
        if (s->refcnt[id] > 1) {
            id = resv_cow(s, h, id);
            x->leaf[l].page = id;
        } else {
            page_changed(s, id);
        }
        memcpy(pg_row(s, id, k), row, s->row_bytes);
        pg_pos(s, id)[k] = ly->pos[rank];
        pg_tail(s, id)->n = k + 1;
        page_stats(s, id, x->aug_m);
        x->leaf_of[rank] = l;
    } else {
        split_insert(s, h, x, ly, l, row, rank, rest);
    }
    node_fixup(s, x, n, rest);
}

/* ---- removal --------------------------------------------------------------------------- */

size_t cluster_remove_scratch(const skv_store *s)
{
    const size_t ns = node_split_scratch(s);
    const size_t m = 2 * (size_t)s->P * (s->row_bytes + 4) + 2 * (size_t)s->D * 4;
    return (ns > m ? ns : m) + 256;
}

static inline int in_range(int32_t p, int32_t p0, int32_t p1) { return p >= p0 && p < p1; }

void cluster_remove(skv_store *s, int32_t h, hidx *x, slayer *ly, int32_t l, int32_t p0,
                    int32_t p1, void *scratch)
{
    const int32_t P = s->P, D = s->D;
    int32_t id = x->leaf[l].page;
    const int32_t parent = x->leaf[l].parent;
    const int32_t n = pg_n(s, id);
    int32_t keep = 0;
    for (int32_t i = 0; i < n; i++)
        keep += !in_range(pg_pos(s, id)[i], p0, p1);
    if (keep == n)
        return;
    if (keep == 0) {
        resv_unref(s, h, id);
        node_remove_child(s, x, parent, LEAF(l));
        leaf_free(x, l);
        node_fixup(s, x, parent, scratch);
        return;
    }
    if (s->refcnt[id] > 1) {
        id = resv_cow(s, h, id);
        x->leaf[l].page = id;
    } else {
        page_changed(s, id);
    }
    int32_t *pos = pg_pos(s, id), k = 0;
    for (int32_t i = 0; i < n; i++) {
        if (in_range(pos[i], p0, p1))
            continue;
        if (k != i) {
            memcpy(pg_row(s, id, k), pg_row(s, id, i), s->row_bytes);
            pos[k] = pos[i];
        }
        k++;
    }
    for (int32_t i = k; i < P; i++)
        pos[i] = -1;
    pg_tail(s, id)->n = k;
    page_stats(s, id, x->aug_m);

    if (k <= P / 4) { /* under-full: merge into the most similar sibling page with room */
        float *ca = align64(scratch), *cb = ca + D;
        row_to_f32(s, pg_cent(s, id), ca, D);
        const int32_t *ch = node_child(s, x, parent);
        int32_t best = -1;
        float bd = INFINITY;
        for (int32_t j = 0; j < x->node[parent].n_child; j++) {
            const int32_t c = ch[j];
            if (!IS_LEAF(c) || LEAF_IDX(c) == l)
                continue;
            const int32_t sid = x->leaf[LEAF_IDX(c)].page;
            if (pg_n(s, sid) + k > P)
                continue;
            row_to_f32(s, pg_cent(s, sid), cb, D);
            float d = 0;
            for (int32_t i = 0; i < D; i++)
                d += (ca[i] - cb[i]) * (ca[i] - cb[i]);
            const float da = pg_tail(s, id)->aug - pg_tail(s, sid)->aug;
            d += da * da;
            if (d < bd)
                bd = d, best = LEAF_IDX(c);
        }
        if (best >= 0) {
            int32_t tid = x->leaf[best].page;
            if (s->refcnt[tid] > 1) {
                tid = resv_cow(s, h, tid);
                x->leaf[best].page = tid;
            } else {
                page_changed(s, tid);
            }
            const int32_t nt = pg_n(s, tid);
            uint8_t *rw = align64(cb + D);
            int32_t *mp = (int32_t *)align64(rw + (size_t)(nt + k) * s->row_bytes);
            const int32_t *pt = pg_pos(s, tid);
            int32_t i = 0, j = 0, o = 0;
            while (i < nt || j < k) { /* merge by position */
                const int from_t = j >= k || (i < nt && pt[i] < pos[j]);
                const uint8_t *src = from_t ? pg_row(s, tid, i) : pg_row(s, id, j);
                memcpy(rw + (size_t)o * s->row_bytes, src, s->row_bytes);
                mp[o++] = from_t ? pt[i++] : pos[j++];
            }
            memcpy(pg_row(s, tid, 0), rw, (size_t)o * s->row_bytes);
            memcpy(pg_pos(s, tid), mp, (size_t)o * 4);
            pg_tail(s, tid)->n = o;
            page_stats(s, tid, x->aug_m);
            for (int32_t q = 0; q < k; q++)
                x->leaf_of[layer_rank(ly, pos[q])] = best;
            resv_unref(s, h, id);
            node_remove_child(s, x, parent, LEAF(l));
            leaf_free(x, l);
        }
    }
    node_fixup(s, x, parent, scratch);
}
