/* Score kernels written once for any vector width. Included by one ISA file after it defines:
 *   VEC, LANES, HV_MAX, G_MAX   vector type, floats per vector, vectors per head chunk, the
 *                               largest lane group (kernels.h)
 *   N_FOR_HV(hv)                keys per register tile for hv head vectors (<= 16)
 *   VZERO() VLOAD(p) VSET1(x) VMUL(a,b) VFMA(a,b,c) = a*b+c
 *   VBCASTG(p, g)               g consecutive floats of p repeated over the vector
 *   VGROUP(x, g)                every lane holds the sum of its group of g lanes
 *   VRELU(x, v, active, g)      max(0, x) with NaN kept, on the first lane of each group among
 *                               the `active` lanes (counted from vector v's start); 0 elsewhere
 *   VHSUM(v)                    horizontal sum in a fixed order
 *   REDUCE4 (optional)          four keys' horizontal sums at once (reduce4_avx512.h)
 *
 * Heads live in vector lanes and keys in the register tile: acc[v][j] accumulates the dot
 * products of head vector v with key j, reading each key element once per tile as a
 * broadcast. With lane groups (few heads) a head's g lanes take g consecutive dims of the key
 * from one broadcast and are summed at the end. Scale, ReLU, weight and head sum then happen
 * in registers; one float per key leaves the tile. A tail of fewer than N keys reruns the last
 * key in the spare columns (the same per-key arithmetic, so a key's score never depends on
 * where it falls in a tile). */

#define SKV_ALWAYS_INLINE static inline __attribute__((always_inline))

/* Rows of the tile: a tail repeats the last valid key. */
#define TILE_ROWS(T, row, k, kst, N, n_valid)                                                 \
    const T *row[16];                                                                         \
    _Pragma("GCC unroll 16") for (int j_ = 0; j_ < (N); j_++) row[j_] =                      \
        (k) + (size_t)(j_ < (n_valid) ? j_ : (n_valid) - 1) * (kst)

/* sum_v w_v * relu(acc_v * mul_v), lane-wise: the scale, ReLU and weight of one key, its
 * heads still spread over the lanes. */
SKV_ALWAYS_INLINE VEC head_terms(const skv_qchunk *c, int hv, int g, VEC acc[HV_MAX][16], int j,
                                 const float *w, int scale_in, float ks)
{
    VEC sum = VZERO();
#pragma GCC unroll 16
    for (int v = 0; v < hv; v++) {
        VEC x = acc[v][j];
        if (g > 1)
            x = VGROUP(x, g);
        if (scale_in)
            x = VMUL(x, VMUL(VLOAD(c->s + v * LANES), VSET1(ks)));
        x = VRELU(x, v, c->active, g);
        sum = v == 0 ? VMUL(x, VLOAD(w)) : VFMA(x, VLOAD(w + v * LANES), sum);
    }
    return sum;
}

/* A key scale that takes the folded form: positive and finite. */
SKV_ALWAYS_INLINE int folds(float ks) { return ks > 0 && ks <= 3.4028235e38f; }

/* Key j's lane vector and the factor its head sum is multiplied by. scaled: 0 none, 1 scales
 * inside the ReLU, 2 folded (a key whose scale is not positive and finite takes form 1). */
SKV_ALWAYS_INLINE VEC key_terms(const skv_qchunk *c, int hv, int g, VEC acc[HV_MAX][16], int j,
                                const float *ks, int64_t n_valid, int scaled, float *mul)
{
    *mul = 1.0f;
    if (!scaled)
        return head_terms(c, hv, g, acc, j, c->w, 0, 0.0f);
    const float kj = ks[j < n_valid ? j : n_valid - 1]; /* spare columns repeat the last key */
    if (scaled == 2 && folds(kj)) {
        *mul = kj;
        return head_terms(c, hv, g, acc, j, c->wf, 0, 0.0f);
    }
    return head_terms(c, hv, g, acc, j, c->w, 1, kj);
}

SKV_ALWAYS_INLINE void tile_epilogue(const skv_qchunk *c, int hv, int g, int N,
                                     VEC acc[HV_MAX][16], const float *ks, int64_t n_valid,
                                     int scaled, int accumulate, float *out)
{
#ifdef REDUCE4
    /* four keys at a time: their horizontal sums share shuffles (N is a multiple of 4) */
#pragma GCC unroll 4
    for (int gi = 0; gi < N; gi += 4) {
        if (gi >= n_valid)
            break;
        VEC v[4];
        if (scaled == 2 && gi + 4 <= n_valid && folds(ks[gi]) && folds(ks[gi + 1]) &&
            folds(ks[gi + 2]) && folds(ks[gi + 3])) {
            /* four folded keys: their scales multiply straight from ks (building the
               multipliers on the stack would stall the vector load on four scalar stores) */
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                v[i] = head_terms(c, hv, g, acc, gi + i, c->wf, 0, 0.0f);
            REDUCE4(v, ks + gi, accumulate, out + gi, 4);
            continue;
        }
        float mul[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            v[i] = key_terms(c, hv, g, acc, gi + i, ks, n_valid, scaled, &mul[i]);
        REDUCE4(v, scaled ? mul : NULL, accumulate, out + gi, n_valid - gi);
    }
#else
#pragma GCC unroll 16
    for (int j = 0; j < N; j++) {
        if (j >= n_valid)
            break;
        float mul;
        const float r = VHSUM(key_terms(c, hv, g, acc, j, ks, n_valid, scaled, &mul)) * mul;
        out[j] = accumulate ? out[j] + r : r;
    }
#endif
}

/* f32 keys: D / g steps, each a broadcast of g dims per key. */
SKV_ALWAYS_INLINE void tile_f32(const skv_qchunk *c, int32_t D, int hv, int g, int N,
                                const float *k, size_t kst, const float *ks, int64_t n_valid,
                                int scaled, int accumulate, float *out)
{
    VEC acc[HV_MAX][16];
    TILE_ROWS(float, row, k, kst, N, n_valid);
#pragma GCC unroll 16
    for (int v = 0; v < hv; v++)
#pragma GCC unroll 16
        for (int j = 0; j < N; j++)
            acc[v][j] = VZERO();

    const float *q = c->q;
    const int32_t steps = D / g;
    for (int32_t d = 0; d < steps; d++) {
        VEC qv[HV_MAX];
#pragma GCC unroll 16
        for (int v = 0; v < hv; v++)
            qv[v] = VLOAD(q + ((size_t)d * hv + v) * LANES);
#pragma GCC unroll 16
        for (int j = 0; j < N; j++) {
            const VEC b = VBCASTG(row[j] + (size_t)d * g, g);
#pragma GCC unroll 16
            for (int v = 0; v < hv; v++)
                acc[v][j] = VFMA(qv[v], b, acc[v][j]);
        }
    }
    tile_epilogue(c, hv, g, N, acc, ks, n_valid, scaled, accumulate, out);
}

/* Defines `static void NAME(pack, k, kst, ks, n, out)` running TILE over every head chunk and
 * key tile; ELEM is the key element type. */
#define DEFINE_SCORE_KERNEL(NAME, TILE, ELEM)                                                 \
    SKV_ALWAYS_INLINE void NAME##_tiles(const skv_qchunk *c, int32_t D, int hv, int g,        \
                                        const ELEM *k, size_t kst, const float *ks,           \
                                        int64_t n, int scaled, int accumulate, float *out)    \
    {                                                                                         \
        const int N = N_FOR_HV(hv);                                                           \
        const size_t row_bytes = (size_t)D * sizeof(ELEM);                                    \
        for (int64_t j = 0; j < n; j += N) {                                                  \
            const int64_t left = n - j;                                                       \
            /* keys stream from memory once: ask for the rows a few tiles ahead while this    \
               one computes (prefetches past the end are harmless) */                         \
            if (!accumulate)                                                                  \
                for (int r_ = 0; r_ < N; r_++)                                                \
                    for (size_t b_ = 0; b_ < row_bytes; b_ += 64)                             \
                        __builtin_prefetch((const char *)(k + (size_t)(j + 4 * N + r_) * kst) + b_); \
            TILE(c, D, hv, g, N, k + (size_t)j * kst, kst, scaled ? ks + j : NULL,            \
                 left < N ? left : N, scaled, accumulate, out + j);                           \
        }                                                                                     \
    }                                                                                         \
    /* Rows of 128 dims (DeepSeek's and GLM's indexers) get their own instantiation: with the \
       row stride a constant, a tile addresses all its keys from one register. */             \
    SKV_ALWAYS_INLINE void NAME##_chunk(const skv_qchunk *c, int32_t D, int hv, int g,        \
                                        const ELEM *k, size_t kst, const float *ks,           \
                                        int64_t n, int scaled, int accumulate, float *out)    \
    {                                                                                         \
        if (D == 128 && kst == 128)                                                           \
            NAME##_tiles(c, 128, hv, g, k, 128, ks, n, scaled, accumulate, out);              \
        else                                                                                  \
            NAME##_tiles(c, D, hv, g, k, kst, ks, n, scaled, accumulate, out);                \
    }                                                                                         \
    static void NAME(const void *pack, const void *k, size_t kst, const float *ks, int64_t n, \
                     float *out)                                                              \
    {                                                                                         \
        const skv_qpack_hdr *hdr = pack;                                                      \
        for (int32_t ci = 0; ci < hdr->n_chunks; ci++) {                                      \
            const skv_qchunk c = skv_qpack_chunk(hdr, ci);                                    \
            const int acc_ = ci > 0;                                                          \
            /* lane groups only ever come with one vector */                                  \
            const int key_ = c.hv > 1 ? 16 + c.hv : c.g;                                      \
            switch (key_ * 3 + hdr->scaled) {                                                 \
            SCORE_CASES(NAME, 1, 1)                                                           \
            SCORE_CASES(NAME, 1, 2)                                                           \
            SCORE_CASES(NAME, 1, 4)                                                           \
            SCORE_CASES(NAME, 1, 8)                                                           \
            SCORE_CASES(NAME, 2, 1)                                                           \
            CASES_WIDE(NAME)                                                                  \
            default: break;                                                                   \
            }                                                                                 \
        }                                                                                     \
    }

/* Instantiations only 16-lane vectors need (g = 16, three and four head vectors); an ISA file
 * may define its own before including this one. */
#ifndef CASES_WIDE
#if G_MAX >= 16 && HV_MAX >= 4
#define CASES_WIDE(NAME) SCORE_CASES(NAME, 1, 16) SCORE_CASES(NAME, 3, 1) SCORE_CASES(NAME, 4, 1)
#else
#define CASES_WIDE(NAME)
#endif
#endif

/* The three scaling forms of one (hv, g) instantiation, keyed as in DEFINE_SCORE_KERNEL. */
#define SCORE_CASE_KEY(HV, G) ((HV) > 1 ? 16 + (HV) : (G))
#define SCORE_CASES(NAME, HV, G)                                                              \
    case SCORE_CASE_KEY(HV, G) * 3 + 0:                                                       \
        NAME##_chunk(&c, hdr->D, HV, G, k, kst, ks, n, 0, acc_, out);                         \
        break;                                                                                \
    case SCORE_CASE_KEY(HV, G) * 3 + 1:                                                       \
        NAME##_chunk(&c, hdr->D, HV, G, k, kst, ks, n, 1, acc_, out);                         \
        break;                                                                                \
    case SCORE_CASE_KEY(HV, G) * 3 + 2:                                                       \
        NAME##_chunk(&c, hdr->D, HV, G, k, kst, ks, n, 2, acc_, out);                         \
        break;
