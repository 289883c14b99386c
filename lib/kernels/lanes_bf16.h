/* Few-head scoring with the keys in the lanes (kernels.h, "keys in lanes"), AVX-512-BF16.
 * Included by kernels_avx512bf16.c after vec_avx512.h and score_simd.h.
 *
 * With 8 heads or fewer, a vector of heads leaves half of each key's work to its own
 * horizontal sum and feeds one key broadcast to one dot product. Here 16 keys fill the lanes
 * and the query pairs are the broadcasts: every vdpbf16ps is a full vector of useful work, and
 * the ReLU, weights and head sum run on 16 keys at once. The keys must first be transposed
 * into tiles of 16 (to_lanes), which pays when several query tokens share them (prefill). */

/* The rest of transpose16 once its first step is done: t[i], t[i + 1] (i even) are rows i and
 * i + 1 interleaved dword by dword within each 128-bit lane, low halves then high halves
 * (unpacklo / unpackhi_epi32); r receives the transposed rows. */
SKV_ALWAYS_INLINE void transpose16_paired(__m512i t[16], __m512i r[16])
{
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 8)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
        }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
    }
}

/* Rows of 16 dwords transposed in place (r[i] lane j -> r[j] lane i). */
SKV_ALWAYS_INLINE void transpose16(__m512i r[16])
{
    __m512i t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    transpose16_paired(t, r);
}

/* The 16 row pointers of the tile at key t0 (a last partial tile repeats its last key), and a
 * request for the rows SKV_LANES_PREFETCH keys on (row_bytes each). */
SKV_ALWAYS_INLINE void tile_rows(const void *const *rows, int64_t t0, int64_t n, size_t row_bytes,
                                 const void *row[16])
{
    for (int i = 0; i < 16; i++)
        row[i] = rows[t0 + i < n ? t0 + i : n - 1];
    for (int64_t i = t0 + SKV_LANES_PREFETCH; i < t0 + SKV_LANES_PREFETCH + 16 && i < n; i++)
        for (size_t b = 0; b < row_bytes; b += 64)
            __builtin_prefetch((const char *)rows[i] + b);
}

/* n bf16 rows of D dims (D a multiple of 32; one pointer per key, wherever the rows are) into
 * tiles of 16 keys; a last partial tile repeats its last key. */
static void to_lanes_avx512(const void *const *rows, int32_t D, int64_t n, uint32_t *out)
{
    const int32_t units = D / 2;
    for (int64_t t0 = 0; t0 < n; t0 += 16) {
        uint32_t *tile = out + (size_t)(t0 / 16) * (size_t)units * 16;
        const void *row[16];
        tile_rows(rows, t0, n, (size_t)D * 2, row);
        for (int32_t u0 = 0; u0 < units; u0 += 16) {
            __m512i r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                r[i] = _mm512_loadu_si512((const uint16_t *)row[i] + 2 * (size_t)u0);
            transpose16(r);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                _mm512_storeu_si512(tile + (size_t)(u0 + j) * 16, r[j]);
        }
    }
}

/* sum_h w_h * relu(acc_h * mul_h) over the H heads, in head order (mul NULL: no factor). */
SKV_ALWAYS_INLINE __m512 lanes_head_sum(int H, const __m512 *acc, int stride, const float *w,
                                        int G, const float *s, __m512 ks)
{
    __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int h = 0; h < H; h++) {
        __m512 x = acc[h * stride];
        if (s)
            x = _mm512_mul_ps(x, _mm512_mul_ps(_mm512_set1_ps(s[h * G]), ks));
        x = _mm512_max_ps(_mm512_setzero_ps(), x); /* NaN stays: vmaxps returns its 2nd source */
        sum = h == 0 ? _mm512_mul_ps(x, _mm512_set1_ps(w[h * G]))
                     : _mm512_fmadd_ps(x, _mm512_set1_ps(w[h * G]), sum);
    }
    return sum;
}

/* Scores of one vector of 16 keys from its head accumulators (acc[h * stride]). */
SKV_ALWAYS_INLINE void lanes_store(const skv_qchunk *c, int scaled, int H, int G,
                                   const __m512 *acc, int stride, const float *ks, int nv,
                                   float *out)
{
    const __mmask16 m = nv >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nv) - 1);
    __m512 r;
    if (!scaled) {
        r = lanes_head_sum(H, acc, stride, c->w, G, NULL, _mm512_setzero_ps());
    } else {
        const __m512 k = _mm512_maskz_loadu_ps(m, ks);
        /* folded (kernels.h) where the key scale is positive and finite, else scales inside */
        const __mmask16 fold = scaled == 2 ? _mm512_cmp_ps_mask(k, _mm512_setzero_ps(), _CMP_GT_OQ) &
                                                 _mm512_cmp_ps_mask(k, _mm512_set1_ps(3.4028235e38f), _CMP_LE_OQ)
                                           : 0;
        r = _mm512_setzero_ps();
        if (fold)
            r = _mm512_mul_ps(lanes_head_sum(H, acc, stride, c->wf, G, NULL, k), k);
        if ((fold & m) != m)
            r = _mm512_mask_mov_ps(lanes_head_sum(H, acc, stride, c->w, G, c->s, k), fold, r);
    }
    _mm512_mask_storeu_ps(out, m, r);
}

/* One pair of dims u of KV vectors of 16 keys (k[v]) against H heads, into acc[h * KV + v]. */
SKV_ALWAYS_INLINE void lanes_pair(const skv_qchunk *c, int H, int G, int KV, int32_t u, const __m512bh *k,
                                  __m512 *acc)
{
    const uint32_t *qu = (const uint32_t *)c->q + (size_t)(u / G) * 16 + u % G; /* pair u of head
                                                                      h at [u / G][h * G + u % G] */
#pragma GCC unroll 8
    for (int h = 0; h < H; h++) {
        const __m512bh qb = (__m512bh)_mm512_set1_epi32((int)qu[h * G]);
#pragma GCC unroll 16
        for (int v = 0; v < KV; v++)
            acc[h * KV + v] = _mm512_dpbf16_ps(acc[h * KV + v], k[v], qb);
    }
}

/* The scores of the n keys (at most 16 * KV) of KV vectors from their head accumulators. */
SKV_ALWAYS_INLINE void lanes_store_all(const skv_qchunk *c, int scaled, int H, int G, int KV,
                                       const __m512 *acc, const float *ks, int64_t n, float *out)
{
#pragma GCC unroll 16
    for (int v = 0; v < KV; v++) {
        const int64_t left = n - 16 * (int64_t)v;
        if (left <= 0)
            break;
        lanes_store(c, scaled, H, G, acc + v, KV, ks ? ks + 16 * v : NULL,
                    left < 16 ? (int)left : 16, out + 16 * v);
    }
}

/* KV vectors of 16 keys against H heads (H * KV <= 16 accumulators, KV <= 8 key vectors); G
 * the pack's lane group. */
SKV_ALWAYS_INLINE void lanes_block(const skv_qchunk *c, int scaled, int H, int G, int KV,
                                   int32_t units, const uint32_t *tile, const float *ks,
                                   int64_t n, float *out)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < H * KV; i++)
        acc[i] = _mm512_setzero_ps();
    for (int32_t u0 = 0; u0 < units; u0 += G) {
#pragma GCC unroll 16
        for (int du = 0; du < G; du++) {
            __m512bh k[8];
#pragma GCC unroll 16
            for (int v = 0; v < KV; v++)
                k[v] = (__m512bh)_mm512_loadu_si512(tile + ((size_t)v * units + u0 + du) * 16);
            lanes_pair(c, H, G, KV, u0 + du, k, acc);
        }
    }
    lanes_store_all(c, scaled, H, G, KV, acc, ks, n, out);
}

/* Every tile of n keys: KV tiles at a time, then one at a time. */
SKV_ALWAYS_INLINE void lanes_all(const skv_qchunk *c, int scaled, int H, int G, int KV,
                                 int32_t units, const uint32_t *lanes, const float *ks,
                                 int64_t n, float *out)
{
    const size_t tile_dwords = (size_t)units * 16;
    int64_t j = 0;
    for (; j + 16 * KV <= n; j += 16 * KV)
        lanes_block(c, scaled, H, G, KV, units, lanes + (size_t)(j / 16) * tile_dwords,
                    ks ? ks + j : NULL, 16 * KV, out + j);
    for (; j < n; j += 16)
        lanes_block(c, scaled, H, G, 1, units, lanes + (size_t)(j / 16) * tile_dwords,
                    ks ? ks + j : NULL, n - j, out + j);
}

#define LANES_CASE(HH, GG, KK)                                                                \
    case HH:                                                                                  \
        if (hdr->scaled == 0)                                                                 \
            lanes_all(&c, 0, HH, GG, KK, units, lanes, ks, n, out);                           \
        else if (hdr->scaled == 1)                                                            \
            lanes_all(&c, 1, HH, GG, KK, units, lanes, ks, n, out);                           \
        else                                                                                  \
            lanes_all(&c, 2, HH, GG, KK, units, lanes, ks, n, out);                           \
        break;

/* The pack is score_bf16's (one chunk: at most 8 heads, lane group G = 16 / 2^ceil(log2 H)). */
static void score_lanes_avx512(const void *pack, const uint32_t *lanes, const float *ks,
                               int64_t n, float *out)
{
    const skv_qpack_hdr *hdr = pack;
    const skv_qchunk c = skv_qpack_chunk(hdr, 0);
    const int32_t units = hdr->D / 2;
    switch (hdr->H) {
        LANES_CASE(1, 16, 8)
        LANES_CASE(2, 8, 8)
        LANES_CASE(3, 4, 4)
        LANES_CASE(4, 4, 4)
        LANES_CASE(5, 2, 2)
        LANES_CASE(6, 2, 2)
        LANES_CASE(7, 2, 2)
        LANES_CASE(8, 2, 2)
    default: break;
    }
}
