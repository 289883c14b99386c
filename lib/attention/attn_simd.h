/* Block kernels written once for any vector width (see attn.h for what a block does). Included
 * by one ISA file after it defines:
 *   VEC, LANES                      vector type and floats per vector
 *   VZERO() VSET1(x) VLOAD(p) VSTORE(p,v) VADD VSUB VMUL VMAX VMIN VFMA(a,b,c) = a*b+c
 *   VLOADN(p,n) VSTOREN(p,v,n)      first n < LANES lanes (the rest read as 0, not written)
 *   VLOADH(p) VLOADHN(p,n)          LANES (or n) bf16 values widened to f32 (exact)
 *   VFIRST(v)                       lane 0
 *   VBAD(v)                         nonzero when a lane is NaN or +inf
 *   VHMAX(v) VHSUM(v)               horizontal max and sum in a fixed order
 *   VROUND(v) VPOW2(n) VKEEP_GE(r,x,c)  round to nearest; 2^n for integral n in [-126, 0];
 *                                   r where x >= c, else 0
 *   REDUCE4(a0,a1,a2,a3)            __m128 of the four horizontal sums, one fixed tree per sum
 *   QK_NH, PV_NH, PV_CV             heads per QK tile, heads and vectors per PV tile
 *
 * Scores: a tile of up to QK_NH heads x 4 rows keeps one accumulator per (head, row) over d
 * (q and K rows loaded once per tile and shared), then REDUCE4 gives each dot product by the
 * same tree whatever the tile holds: a score never depends on its neighbours. Weighted sums: a
 * tile of PV_NH heads x PV_CV vectors of output columns stays in registers over the block's
 * rows, each V vector loaded once and used by every head of the tile. K and V rows in bf16
 * (B16) are widened as they are loaded, in registers. */
#include <math.h>

#define SKV_ALWAYS_INLINE static inline __attribute__((always_inline))

/* e^x for x <= 0 (NaN reads as very negative): 2^n * e^r with r = x - n ln2 in
 * [-ln2/2, ln2/2] (Cody-Waite split of ln2), e^r by its Taylor series to degree 7 (error
 * below 1e-8 relative); results below 2^-126 flush to 0. */
SKV_ALWAYS_INLINE VEC vexp(VEC x)
{
    const VEC lo = VSET1(-87.33654f); /* ln(2^-126) */
    const VEC xc = VMIN(VMAX(x, lo), VZERO());
    const VEC n = VROUND(VMUL(xc, VSET1(1.44269504f)));
    VEC r = VFMA(n, VSET1(-0.693359375f), xc);
    r = VFMA(n, VSET1(2.12194440e-4f), r);
    VEC p = VSET1(1.0f / 5040);
    p = VFMA(p, r, VSET1(1.0f / 720));
    p = VFMA(p, r, VSET1(1.0f / 120));
    p = VFMA(p, r, VSET1(1.0f / 24));
    p = VFMA(p, r, VSET1(1.0f / 6));
    p = VFMA(p, r, VSET1(0.5f));
    p = VFMA(p, r, VSET1(1.0f));
    p = VFMA(p, r, VSET1(1.0f));
    return VKEEP_GE(VMUL(p, VPOW2(n)), x, lo);
}

/* ---- scores ------------------------------------------------------------------------------ */

/* s[h][0..4) = scale * q[h0+h] . k4[r] for h < NH, K rows f32 or (B16) bf16; NH and B16 are
 * compile-time constants after inlining. */
SKV_ALWAYS_INLINE void qk_tile_f32(const attn_state *st, int NH, int h0, const void *const *k4,
                                   float *s, int B16)
{
    const int32_t D = st->k_dim, Dv = D - D % LANES;
    const float *q[QK_NH];
    VEC acc[QK_NH][4];
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++) {
        q[h] = st->q + (size_t)(h0 + h) * D;
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            acc[h][r] = VZERO();
    }
    for (int32_t d = 0; d < Dv; d += LANES) {
        VEC kv[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            kv[r] = B16 ? VLOADH((const uint16_t *)k4[r] + d) : VLOAD((const float *)k4[r] + d);
#pragma GCC unroll 4
        for (int h = 0; h < NH; h++) {
            const VEC qv = VLOAD(q[h] + d);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[h][r] = VFMA(qv, kv[r], acc[h][r]);
        }
    }
    if (Dv < D) {
        const int rem = D - Dv;
        VEC kv[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            kv[r] = B16 ? VLOADHN((const uint16_t *)k4[r] + Dv, rem)
                        : VLOADN((const float *)k4[r] + Dv, rem);
#pragma GCC unroll 4
        for (int h = 0; h < NH; h++) {
            const VEC qv = VLOADN(q[h] + Dv, rem);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[h][r] = VFMA(qv, kv[r], acc[h][r]);
        }
    }
    const __m128 sc = _mm_set1_ps(st->scale);
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++)
        _mm_storeu_ps(s + (size_t)h * ATTN_BR,
                      _mm_mul_ps(REDUCE4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]), sc));
}

/* Asks for the K and V rows j0 .. j0+3 of a later block, spread over the score tiles (a burst
 * per block helped bf16 only). The hardware prefetchers lose track of rows read four at a
 * time; measured on decode over 64 MiB of rows, one thread: 1.15-1.35x, and 6% slower when
 * the rows are in cache. */
SKV_ALWAYS_INLINE void prefetch_rows(const attn_state *st, int j0)
{
    for (int r = 0; r < 4; r++) {
        const char *k = st->pf_k + (size_t)(j0 + r) * st->k_bytes;
        const char *v = st->pf_v + (size_t)(j0 + r) * st->v_bytes;
        for (size_t o = 0; o < st->k_bytes; o += 64)
            __builtin_prefetch(k + o);
        for (size_t o = 0; o < st->v_bytes; o += 64)
            __builtin_prefetch(v + o);
    }
}

/* All scores of a block: head tiles outer (their q rows stay in L1), row quads inner. Rows
 * past n repeat the last row; their scores are overwritten by the softmax step. */
#define DEFINE_QK(NAME, TILE, B16)                                                            \
    SKV_ALWAYS_INLINE void NAME(const attn_state *st, const void *const *k, int n)            \
    {                                                                                         \
        for (int h0 = 0; h0 < st->nh; h0 += QK_NH) {                                          \
            const int left = st->nh - h0;                                                     \
            for (int j0 = 0; j0 < n; j0 += 4) {                                               \
                const void *k4[4];                                                            \
                for (int r = 0; r < 4; r++)                                                   \
                    k4[r] = k[j0 + r < n ? j0 + r : n - 1];                                   \
                float *s = st->s + (size_t)h0 * ATTN_BR + j0;                                 \
                if (h0 == 0 && st->pf_k)                                                      \
                    prefetch_rows(st, j0);                                                    \
                switch (left < QK_NH ? left : QK_NH) {                                        \
                case 1: TILE(st, 1, h0, k4, s, B16); break;                                   \
                case 2: TILE(st, 2 <= QK_NH ? 2 : 1, h0, k4, s, B16); break;                  \
                case 3: TILE(st, 3 <= QK_NH ? 3 : 1, h0, k4, s, B16); break;                  \
                default: TILE(st, QK_NH, h0, k4, s, B16); break;                              \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

/* ---- online softmax ---------------------------------------------------------------------- */

/* Turns each head's scores s[h][0..n) into weights exp(s - m') and updates m, l; alpha[h] is
 * the factor acc[h] must be rescaled by. A head with a NaN or +inf score (now or before) gets
 * m = NaN and weights 0; a head with no finite score yet keeps m = -inf and weights 0. */
static void softmax_update(attn_state *st, int n)
{
    const int nv = (n + LANES - 1) / LANES;
    for (int32_t h = 0; h < st->nh; h++) {
        float *s = st->s + (size_t)h * ATTN_BR;
        for (int j = n; j < nv * LANES; j++)
            s[j] = -INFINITY;
        const float m = st->m[h];
        int bad = m != m;
        VEC mx = VSET1(-INFINITY);
        for (int v = 0; v < nv; v++) {
            const VEC x = VLOAD(s + v * LANES);
            bad |= VBAD(x);
            mx = VMAX(mx, x);
        }
        const float bm = VHMAX(mx), mn = m > bm ? m : bm;
        st->alpha[h] = 1.0f;
        if (bad || mn == -INFINITY) {
            if (bad)
                st->m[h] = NAN;
            for (int j = 0; j < n; j++)
                s[j] = 0.0f;
            continue;
        }
        if (m != mn)
            st->alpha[h] = VFIRST(vexp(VSET1(m - mn)));
        const VEC vmn = VSET1(mn);
        VEC sum = VZERO();
        for (int v = 0; v < nv; v++) {
            const VEC p = vexp(VSUB(VLOAD(s + v * LANES), vmn));
            VSTORE(s + v * LANES, p);
            sum = VADD(sum, p);
        }
        st->l[h] = st->l[h] * st->alpha[h] + VHSUM(sum);
        st->m[h] = mn;
    }
}

/* ---- weighted sum of V rows -------------------------------------------------------------- */

/* acc[h0+h][c0 ..] = alpha * acc + sum_j s[h][j] v[j][c0 ..] for NH heads and CV vectors of
 * columns; with MASKED the last vector holds only `rem` columns. */
SKV_ALWAYS_INLINE void pv_tile(attn_state *st, int NH, int CV, int MASKED, int rem, int h0,
                               int32_t c0, const void *const *v, int n, int B16)
{
    VEC acc[PV_NH][PV_CV];
    float *dst[PV_NH];
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++) {
        dst[h] = st->acc + (size_t)(h0 + h) * st->acc_stride + c0;
        const VEC a = VSET1(st->alpha[h0 + h]);
#pragma GCC unroll 4
        for (int c = 0; c < CV; c++)
            acc[h][c] = VMUL(MASKED && c == CV - 1 ? VLOADN(dst[h] + c * LANES, rem)
                                                   : VLOAD(dst[h] + c * LANES), a);
    }
    const float *w = st->s + (size_t)h0 * ATTN_BR;
    for (int j = 0; j < n; j++) {
        const float *vr = (const float *)v[j] + c0;
        const uint16_t *vh = (const uint16_t *)v[j] + c0;
        VEC x[PV_CV];
#pragma GCC unroll 4
        for (int c = 0; c < CV; c++) {
            if (MASKED && c == CV - 1)
                x[c] = B16 ? VLOADHN(vh + c * LANES, rem) : VLOADN(vr + c * LANES, rem);
            else
                x[c] = B16 ? VLOADH(vh + c * LANES) : VLOAD(vr + c * LANES);
        }
#pragma GCC unroll 4
        for (int h = 0; h < NH; h++) {
            const VEC p = VSET1(w[(size_t)h * ATTN_BR + j]);
#pragma GCC unroll 4
            for (int c = 0; c < CV; c++)
                acc[h][c] = VFMA(p, x[c], acc[h][c]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; h++)
#pragma GCC unroll 4
        for (int c = 0; c < CV; c++) {
            if (MASKED && c == CV - 1)
                VSTOREN(dst[h] + c * LANES, acc[h][c], rem);
            else
                VSTORE(dst[h] + c * LANES, acc[h][c]);
        }
}

/* One head tile over every column: full chunks of PV_CV vectors, then the remaining full
 * vectors, then a partial vector. */
SKV_ALWAYS_INLINE void pv_heads(attn_state *st, int NH, int h0, const void *const *v, int n,
                                int B16)
{
    const int32_t V = st->v_dim, full = V / LANES, rem = V % LANES;
    int32_t c = 0;
    for (; c + PV_CV <= full; c += PV_CV)
        pv_tile(st, NH, PV_CV, 0, 0, h0, c * LANES, v, n, B16);
    switch (full - c) {
    case 1: pv_tile(st, NH, 1, 0, 0, h0, c * LANES, v, n, B16); break;
    case 2: pv_tile(st, NH, 2 <= PV_CV ? 2 : 1, 0, 0, h0, c * LANES, v, n, B16); break;
    case 3: pv_tile(st, NH, 3 <= PV_CV ? 3 : 1, 0, 0, h0, c * LANES, v, n, B16); break;
    default: break;
    }
    if (rem)
        pv_tile(st, NH, 1, 1, rem, h0, full * LANES, v, n, B16);
}

SKV_ALWAYS_INLINE void pv_block(attn_state *st, const void *const *v, int n, int B16)
{
    for (int h0 = 0; h0 < st->nh; h0 += PV_NH) {
        const int left = st->nh - h0;
        switch (left < PV_NH ? left : PV_NH) {
        case 1: pv_heads(st, 1, h0, v, n, B16); break;
        case 2: pv_heads(st, 2 <= PV_NH ? 2 : 1, h0, v, n, B16); break;
        case 3: pv_heads(st, 3 <= PV_NH ? 3 : 1, h0, v, n, B16); break;
        default: pv_heads(st, PV_NH, h0, v, n, B16); break;
        }
    }
}

/* The block kernel around a score function QK(st, k, n); V rows f32 or (B16) bf16. */
#define DEFINE_BLOCK(NAME, QK, B16)                                                           \
    static void NAME(attn_state *st, const void *const *k, const void *const *v, int n)       \
    {                                                                                         \
        QK(st, k, n);                                                                         \
        softmax_update(st, n);                                                                \
        pv_block(st, v, n, B16);                                                              \
    }
