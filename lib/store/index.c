/* The per-head index: leaves (pages a head references), the tree of centroid nodes over the
 * body leaves, their statistics, node splits and the walk that keeps a path consistent after a
 * change (statistics recomputed from the children, never updated incrementally, so nothing
 * drifts), and whole-head clone and release. */
#include <math.h>

#include "store/store_impl.h"

/* ---- arrays ---------------------------------------------------------------------------- */

/* Moves the leaf arrays to capacity c (>= n_leaf); on failure nothing changes. */
static skv_status leaves_resize(skv_context *ctx, hidx *x, size_t c)
{
    sleaf *l = skv_alloc(ctx, c * sizeof *l);
    int32_t *f = skv_alloc(ctx, c * sizeof *f);
    if (!l || !f) {
        skv_free(ctx, l, c * sizeof *l);
        skv_free(ctx, f, c * sizeof *f);
        return SKV_ERR_NOMEM;
    }
    if (x->n_leaf)
        memcpy(l, x->leaf, (size_t)x->n_leaf * sizeof *l);
    if (x->n_leaf_free)
        memcpy(f, x->leaf_free, (size_t)x->n_leaf_free * sizeof *f);
    skv_free(ctx, x->leaf, (size_t)x->cap_leaf * sizeof *x->leaf);
    skv_free(ctx, x->leaf_free, (size_t)x->cap_leaf * sizeof *x->leaf_free);
    x->leaf = l, x->leaf_free = f, x->cap_leaf = (int32_t)c;
    return SKV_OK;
}

/* Moves the node arrays to capacity c (>= n_node); on failure nothing changes. */
static skv_status nodes_resize(skv_store *s, hidx *x, size_t c)
{
    skv_context *ctx = s->ctx;
    const size_t F1 = (size_t)s->F + 1, D = (size_t)s->D;
    snode *nd = skv_alloc(ctx, c * sizeof *nd);
    int32_t *ch = skv_alloc(ctx, c * F1 * sizeof *ch);
    float *ce = skv_alloc(ctx, c * D * sizeof *ce);
    int32_t *fr = skv_alloc(ctx, c * sizeof *fr);
    if (!nd || !ch || !ce || !fr) {
        skv_free(ctx, nd, c * sizeof *nd);
        skv_free(ctx, ch, c * F1 * sizeof *ch);
        skv_free(ctx, ce, c * D * sizeof *ce);
        skv_free(ctx, fr, c * sizeof *fr);
        return SKV_ERR_NOMEM;
    }
    const size_t n = (size_t)x->n_node;
    if (n) {
        memcpy(nd, x->node, n * sizeof *nd);
        memcpy(ch, x->child, n * F1 * sizeof *ch);
        memcpy(ce, x->cent, n * D * sizeof *ce);
    }
    if (x->n_node_free)
        memcpy(fr, x->node_free, (size_t)x->n_node_free * sizeof *fr);
    skv_free(ctx, x->node, (size_t)x->cap_node * sizeof *x->node);
    skv_free(ctx, x->child, (size_t)x->cap_node * F1 * sizeof *x->child);
    skv_free(ctx, x->cent, (size_t)x->cap_node * D * sizeof *x->cent);
    skv_free(ctx, x->node_free, (size_t)x->cap_node * sizeof *x->node_free);
    x->node = nd, x->child = ch, x->cent = ce, x->node_free = fr, x->cap_node = (int32_t)c;
    return SKV_OK;
}

static int64_t doubled_to(int64_t cap, int64_t want)
{
    int64_t c = cap ? cap : 8;
    while (c < want)
        c *= 2;
    return c;
}

skv_status hidx_grow(skv_store *s, hidx *x, int64_t leaves, int64_t nodes)
{
    const int64_t want_l = (int64_t)x->n_leaf + leaves, want_n = (int64_t)x->n_node + nodes;
    if (want_l > INT32_MAX || want_n > INT32_MAX)
        return SKV_ERR_CAPACITY;
    if (want_l > x->cap_leaf)
        SKV_TRY(leaves_resize(s->ctx, x, (size_t)doubled_to(x->cap_leaf, want_l)));
    if (want_n > x->cap_node)
        SKV_TRY(nodes_resize(s, x, (size_t)doubled_to(x->cap_node, want_n)));
    return SKV_OK;
}

/* Gives back node and leaf capacity a worst-case reservation left unused (a bulk build reserves
 * a node per page; about one per fanout pages is used). Best effort: on allocation failure the
 * arrays stay as they are, nothing observable changes either way. */
void hidx_shrink(skv_store *s, hidx *x)
{
    const int64_t want_n = (int64_t)x->n_node + x->n_node / 4 + 16;
    if (x->cap_node > 2 * want_n)
        (void)nodes_resize(s, x, (size_t)want_n);
    const int64_t want_l = (int64_t)x->n_leaf + x->n_leaf / 4 + 16;
    if (x->cap_leaf > 2 * want_l)
        (void)leaves_resize(s->ctx, x, (size_t)want_l);
}

int32_t leaf_new(hidx *x, int32_t page, int32_t parent)
{
    const int32_t l = x->n_leaf_free ? x->leaf_free[--x->n_leaf_free] : x->n_leaf++;
    x->leaf[l].page = page;
    x->leaf[l].parent = parent;
    return l;
}

void leaf_free(hidx *x, int32_t l)
{
    x->leaf[l].page = -1;
    x->leaf[l].parent = -1;
    x->leaf_free[x->n_leaf_free++] = l;
}

int32_t node_new(skv_store *s, hidx *x)
{
    const int32_t n = x->n_node_free ? x->node_free[--x->n_node_free] : x->n_node++;
    memset(&x->node[n], 0, sizeof x->node[n]);
    x->node[n].parent = -1;
    memset(node_cent(s, x, n), 0, (size_t)s->D * sizeof(float));
    return n;
}

void node_free(hidx *x, int32_t n)
{
    x->node[n].n_child = -1; /* marks a free node for the validator */
    x->node_free[x->n_node_free++] = n;
}

static void set_parent(hidx *x, int32_t c, int32_t parent)
{
    if (IS_LEAF(c))
        x->leaf[LEAF_IDX(c)].parent = parent;
    else
        x->node[c].parent = parent;
}

void node_add_child(skv_store *s, hidx *x, int32_t n, int32_t c)
{
    node_child(s, x, n)[x->node[n].n_child++] = c;
    set_parent(x, c, n);
}

/* Inserts c right after `after` among n's children. */
void node_insert_after(skv_store *s, hidx *x, int32_t n, int32_t after, int32_t c)
{
    int32_t *ch = node_child(s, x, n);
    int32_t k = x->node[n].n_child;
    while (k > 0 && ch[k - 1] != after) {
        ch[k] = ch[k - 1];
        k--;
    }
    ch[k] = c;
    x->node[n].n_child++;
    set_parent(x, c, n);
}

void node_remove_child(skv_store *s, hidx *x, int32_t n, int32_t c)
{
    int32_t *ch = node_child(s, x, n);
    const int32_t k = x->node[n].n_child;
    int32_t i = 0;
    while (i < k && ch[i] != c)
        i++;
    for (; i + 1 < k; i++)
        ch[i] = ch[i + 1];
    x->node[n].n_child = k - 1;
}

/* ---- statistics ------------------------------------------------------------------------ */

/* Rounding slack added to every radius so that it bounds distances computed in f32. */
static inline float radius_up(float r, float scale2)
{
    return r * (1.0f + 0x1p-18f) + 0x1p-20f * sqrtf(scale2) + 1e-30f;
}

STORE_CLONES void page_stats(skv_store *s, int32_t id, float aug_m)
{
    ptail *t = pg_tail(s, id);
    const int32_t n = t->n, D = s->D;
    float cen[1024], row[1024];
    for (int32_t i = 0; i < D; i++)
        cen[i] = 0;
    float asum = 0, nmax = 0;
    for (int32_t j = 0; j < n; j++) {
        row_to_f32(s, pg_row(s, id, j), row, D);
        for (int32_t i = 0; i < D; i++)
            cen[i] += row[i];
        const float nn = vec_dist2(row, NULL, D);
        asum += aug_coord(aug_m, nn);
        nmax = nn > nmax ? nn : nmax;
    }
    const float inv = n ? 1.0f / (float)n : 0.0f;
    for (int32_t i = 0; i < D; i++)
        cen[i] *= inv;
    /* stored in the page dtype: the bounds below are against the stored (rounded) centroid */
    void *pc = pg_cent(s, id);
    if (s->p.dtype == SKV_F32)
        memcpy(pc, cen, (size_t)D * 4);
    else
        skv_convert(s->p.dtype, pc, SKV_F32, cen, D);
    row_to_f32(s, pc, cen, D);
    float r2 = 0;
    const float c2 = vec_dist2(cen, NULL, D);
    float *lo = s->p.flags & SKV_STORE_MINMAX ? pg_min(s, id) : NULL;
    float *hi = lo ? pg_max(s, id) : NULL;
    if (lo)
        for (int32_t i = 0; i < D; i++)
            lo[i] = INFINITY, hi[i] = -INFINITY;
    for (int32_t j = 0; j < n; j++) {
        row_to_f32(s, pg_row(s, id, j), row, D);
        const float d2 = vec_dist2(row, cen, D);
        r2 = d2 > r2 ? d2 : r2;
        if (lo)
            for (int32_t i = 0; i < D; i++) {
                lo[i] = row[i] < lo[i] ? row[i] : lo[i];
                hi[i] = row[i] > hi[i] ? row[i] : hi[i];
            }
    }
    if (lo && n == 0)
        for (int32_t i = 0; i < D; i++)
            lo[i] = hi[i] = 0;
    t->radius = n ? radius_up(sqrtf(r2), nmax + c2) : 0.0f;
    t->cnorm2 = c2;
    t->aug = n ? asum * inv : 0.0f;
}

/* A child's centroid (f32), count, radius and augmented mean. */
static void child_info(const skv_store *s, const hidx *x, int32_t c, float *cen, int64_t *count,
                       float *radius, float *aug)
{
    if (IS_LEAF(c)) {
        const int32_t id = x->leaf[LEAF_IDX(c)].page;
        const ptail *t = pg_tail(s, id);
        row_to_f32(s, pg_cent(s, id), cen, s->D);
        *count = t->n, *radius = t->radius, *aug = t->aug;
    } else {
        memcpy(cen, node_cent(s, x, c), (size_t)s->D * sizeof *cen);
        *count = x->node[c].count, *radius = x->node[c].radius, *aug = x->node[c].aug;
    }
}

STORE_CLONES void node_stats(skv_store *s, hidx *x, int32_t n)
{
    const int32_t D = s->D, k = x->node[n].n_child;
    const int32_t *ch = node_child(s, x, n);
    float *c = node_cent(s, x, n);
    float cc[1024];
    double acc[1024];
    for (int32_t i = 0; i < D; i++)
        acc[i] = 0;
    int64_t count = 0;
    double asum = 0;
    for (int32_t j = 0; j < k; j++) {
        int64_t cn;
        float r, a;
        child_info(s, x, ch[j], cc, &cn, &r, &a);
        for (int32_t i = 0; i < D; i++)
            acc[i] += (double)cn * cc[i];
        count += cn;
        asum += (double)cn * a;
    }
    for (int32_t i = 0; i < D; i++)
        c[i] = count ? (float)(acc[i] / (double)count) : 0.0f;
    float rmax = 0, c2 = 0;
    for (int32_t i = 0; i < D; i++)
        c2 += c[i] * c[i];
    for (int32_t j = 0; j < k; j++) {
        int64_t cn;
        float r, a;
        child_info(s, x, ch[j], cc, &cn, &r, &a);
        if (cn == 0)
            continue;
        float d2 = 0;
        for (int32_t i = 0; i < D; i++) {
            const float d = cc[i] - c[i];
            d2 += d * d;
        }
        const float rr = sqrtf(d2) + r;
        rmax = rr > rmax ? rr : rmax;
    }
    x->node[n].count = count;
    x->node[n].radius = count ? radius_up(rmax, c2 + rmax * rmax) : 0.0f;
    x->node[n].aug = count ? (float)(asum / (double)count) : 0.0f;
}

/* ---- splits and the path walk ---------------------------------------------------------- */

/* Splits node n (fanout + 1 children) in two by 2-means over its children's centroids,
 * each side keeping at least a quarter of the fanout; the new sibling goes right after n in
 * its parent, or n and the sibling under a new root. */
static void node_split(skv_store *s, hidx *x, int32_t n, void *scratch)
{
    const int32_t D = s->D, k = x->node[n].n_child, F = s->F;
    float *pts = scratch;            /* [k][D] */
    float *aug = pts + (size_t)k * D; /* [k] */
    float *wt = aug + k;             /* [k] */
    float *proj = wt + k;            /* [k] */
    float *tmp = proj + k;           /* two_means scratch */
    int32_t ch[65];
    memcpy(ch, node_child(s, x, n), (size_t)k * sizeof *ch);
    for (int32_t j = 0; j < k; j++) {
        int64_t cn;
        float r;
        child_info(s, x, ch[j], pts + (size_t)j * D, &cn, &r, &aug[j]);
        wt[j] = (float)(cn > 0 ? cn : 1);
    }
    const int32_t min_side = F / 4 > 1 ? F / 4 : 1;
    int32_t n1 = two_means(s, pts, aug, wt, k, 4, proj, tmp);
    /* the n1 children of largest projection stay (ties: earlier child), the rest move */
    int32_t order[65];
    for (int32_t j = 0; j < k; j++)
        order[j] = j;
    if (n1 < 0) { /* identical centroids: split by order */
        for (int32_t j = 0; j < k; j++)
            proj[j] = (float)(k - j);
        n1 = k / 2;
    }
    for (int32_t a = 1; a < k; a++) { /* insertion sort: proj desc, index asc */
        const int32_t v = order[a];
        int32_t b = a;
        while (b > 0 && (proj[order[b - 1]] < proj[v] ||
                         (proj[order[b - 1]] == proj[v] && order[b - 1] > v))) {
            order[b] = order[b - 1];
            b--;
        }
        order[b] = v;
    }
    n1 = n1 < min_side ? min_side : n1 > k - min_side ? k - min_side : n1;
    uint8_t stay[65] = {0};
    for (int32_t j = 0; j < n1; j++)
        stay[order[j]] = 1;
    const int32_t m = node_new(s, x);
    x->node[n].n_child = 0;
    for (int32_t j = 0; j < k; j++) /* both sides keep the children's relative order */
        node_add_child(s, x, stay[j] ? n : m, ch[j]);
    node_stats(s, x, n);
    node_stats(s, x, m);
    const int32_t parent = x->node[n].parent;
    if (parent < 0) {
        const int32_t r = node_new(s, x);
        node_add_child(s, x, r, n);
        node_add_child(s, x, r, m);
        node_stats(s, x, r);
        x->root = r;
    } else {
        node_insert_after(s, x, parent, n, m);
    }
}

size_t node_split_scratch(const skv_store *s)
{
    const size_t k = (size_t)s->F + 1;
    return (k * (size_t)s->D + 4 * k) * sizeof(float) + two_means_scratch(s, (int32_t)k);
}

void node_fixup(skv_store *s, hidx *x, int32_t n, void *scratch)
{
    while (n >= 0) {
        int32_t parent = x->node[n].parent;
        if (x->node[n].n_child == 0) {
            if (parent >= 0)
                node_remove_child(s, x, parent, n);
            else
                x->root = -1;
            node_free(x, n);
            n = parent;
            continue;
        }
        node_stats(s, x, n);
        if (x->node[n].n_child > s->F) {
            node_split(s, x, n, scratch);
            parent = x->node[n].parent;
        }
        n = parent;
    }
    /* a root with a single node child adds a level for nothing */
    while (x->root >= 0 && x->node[x->root].n_child == 1 && !IS_LEAF(node_child(s, x, x->root)[0])) {
        const int32_t c = node_child(s, x, x->root)[0];
        node_free(x, x->root);
        x->root = c;
        x->node[c].parent = -1;
    }
}

int32_t hidx_height(const skv_store *s, const hidx *x)
{
    int32_t h = 0;
    for (int32_t n = x->root; n >= 0;) {
        h++;
        int32_t next = -1;
        const int32_t *ch = node_child(s, x, n);
        for (int32_t j = 0; j < x->node[n].n_child; j++)
            if (!IS_LEAF(ch[j])) {
                next = ch[j];
                break;
            }
        n = next;
    }
    return h;
}

/* ---- whole heads ----------------------------------------------------------------------- */

void hidx_release(skv_store *s, hidx *x, int immediate, int32_t h)
{
    for (int32_t l = 0; l < x->n_leaf; l++) {
        if (x->leaf[l].page < 0)
            continue;
        if (immediate)
            page_unref(s, x->leaf[l].page);
        else
            resv_unref(s, h, x->leaf[l].page);
        x->leaf[l].page = -1;
    }
}

void hidx_free_arrays(skv_store *s, hidx *x, int64_t layer_cap)
{
    skv_context *ctx = s->ctx;
    const size_t F1 = (size_t)s->F + 1, D = (size_t)s->D;
    skv_free(ctx, x->leaf, (size_t)x->cap_leaf * sizeof *x->leaf);
    skv_free(ctx, x->leaf_free, (size_t)x->cap_leaf * sizeof *x->leaf_free);
    skv_free(ctx, x->leaf_of, (size_t)layer_cap * sizeof *x->leaf_of);
    skv_free(ctx, x->sink, (size_t)x->cap_sinkp * sizeof *x->sink);
    skv_free(ctx, x->win, (size_t)x->cap_winp * sizeof *x->win);
    skv_free(ctx, x->body, (size_t)x->cap_body * sizeof *x->body);
    skv_free(ctx, x->node, (size_t)x->cap_node * sizeof *x->node);
    skv_free(ctx, x->child, (size_t)x->cap_node * F1 * sizeof *x->child);
    skv_free(ctx, x->cent, (size_t)x->cap_node * D * sizeof *x->cent);
    skv_free(ctx, x->node_free, (size_t)x->cap_node * sizeof *x->node_free);
    memset(x, 0, sizeof *x);
    x->root = -1;
}

static void *dup(skv_context *ctx, const void *src, size_t cap_bytes, size_t used_bytes, int *fail)
{
    if (!cap_bytes)
        return NULL;
    void *p = skv_alloc(ctx, cap_bytes);
    if (!p) {
        *fail = 1;
        return NULL;
    }
    if (used_bytes)
        memcpy(p, src, used_bytes);
    return p;
}

skv_status hidx_clone(skv_store *s, hidx *d, const hidx *a, int64_t layer_cap)
{
    skv_context *ctx = s->ctx;
    const size_t F1 = (size_t)s->F + 1, D = (size_t)s->D;
    int fail = 0;
    hidx x = *a;
    x.leaf = dup(ctx, a->leaf, (size_t)a->cap_leaf * sizeof *a->leaf,
                 (size_t)a->n_leaf * sizeof *a->leaf, &fail);
    x.leaf_free = dup(ctx, a->leaf_free, (size_t)a->cap_leaf * sizeof *a->leaf_free,
                      (size_t)a->n_leaf_free * sizeof *a->leaf_free, &fail);
    x.leaf_of = dup(ctx, a->leaf_of, (size_t)layer_cap * sizeof *a->leaf_of,
                    (size_t)layer_cap * sizeof *a->leaf_of, &fail);
    x.sink = dup(ctx, a->sink, (size_t)a->cap_sinkp * 4, (size_t)a->n_sinkp * 4, &fail);
    x.win = dup(ctx, a->win, (size_t)a->cap_winp * 4, (size_t)a->n_winp * 4, &fail);
    x.body = dup(ctx, a->body, (size_t)a->cap_body * 4, (size_t)a->n_body * 4, &fail);
    x.node = dup(ctx, a->node, (size_t)a->cap_node * sizeof *a->node,
                 (size_t)a->n_node * sizeof *a->node, &fail);
    x.child = dup(ctx, a->child, (size_t)a->cap_node * F1 * 4, (size_t)a->n_node * F1 * 4, &fail);
    x.cent = dup(ctx, a->cent, (size_t)a->cap_node * D * 4, (size_t)a->n_node * D * 4, &fail);
    x.node_free = dup(ctx, a->node_free, (size_t)a->cap_node * 4, (size_t)a->n_node_free * 4,
                      &fail);
    if (fail) {
        x.n_leaf = 0; /* no page references were taken */
        hidx_free_arrays(s, &x, layer_cap);
        memset(d, 0, sizeof *d);
        d->root = -1;
        return SKV_ERR_NOMEM;
    }
    for (int32_t l = 0; l < x.n_leaf; l++)
        if (x.leaf[l].page >= 0)
            s->refcnt[x.leaf[l].page]++;
    *d = x;
    return SKV_OK;
}

int64_t hidx_bytes(const skv_store *s, const hidx *x, int64_t layer_cap)
{
    const int64_t F1 = s->F + 1, D = s->D;
    return (int64_t)x->cap_leaf * (int64_t)(sizeof(sleaf) + 4) + layer_cap * 4 +
           (int64_t)(x->cap_sinkp + x->cap_winp + x->cap_body) * 4 +
           (int64_t)x->cap_node * ((int64_t)sizeof(snode) + F1 * 4 + D * 4 + 4);
}
