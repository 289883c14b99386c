/* fp8 keys scored in lanes straight from their rows (kernels.h, score_fp8), AVX-512-BF16.
 * Included by kernels_avx512bf16.c after lanes_bf16.h and the fp8 table conversion.
 *
 * The lanes kernel's arithmetic in its order, so the scores are the same bits, but the tiles
 * never reach memory and cost no cross-lane shuffles: 16 bytes of each key are loaded into
 * the 128-bit lane of their tile position (key 4L + m into lane L of vector m), in-lane
 * unpacks put the four keys of a lane pair by pair, and fp8 becomes bf16 by an unpack, a
 * shift, a mask and an add, beside the dot products, where fp8_to_lanes' byte permutes and
 * transposition cost as much as 8 heads' scoring. The shift is exact for normal values only;
 * zeros, subnormals and NaN take the table conversion. Keys kept in fp8 tiles (the vectors
 * those unpacks make, stored once when a key is cached) skip the loads and unpacks too:
 * score_fp8_tiles, which converts by table only (fp8_tiles_chunk says why). */

/* *low gathers (x | 0x80) + 1 of x's bytes by minimum: a byte at most 0x88 marks a zero, a
 * subnormal or a NaN (0xff wraps to 0). */
SKV_ALWAYS_INLINE void fp8_low_bytes(__m512i x, __m512i *low)
{
    const __m512i mag = _mm512_or_si512(x, _mm512_set1_epi32((int)0x80808080u));
    *low = _mm512_min_epu8(*low, _mm512_sub_epi8(mag, _mm512_set1_epi8(-1)));
}

/* 16 keys' bytes [off, off + 16) as fp8 pairs in tile order: u[i] lane L holds pair 2i of
 * keys 4L..4L+3 (2 bytes each), then their pair 2i + 1; their bytes into *low. */
SKV_ALWAYS_INLINE void fp8_tile_chunk(const void *const row[16], int32_t off, __m512i u[4], __m512i *low)
{
    __m512i x[4];
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        const uint8_t *r0 = row[m], *r1 = row[4 + m], *r2 = row[8 + m], *r3 = row[12 + m];
        x[m] = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(r0 + off)));
        x[m] = _mm512_inserti32x4(x[m], _mm_loadu_si128((const __m128i *)(r1 + off)), 1);
        x[m] = _mm512_inserti32x4(x[m], _mm_loadu_si128((const __m128i *)(r2 + off)), 2);
        x[m] = _mm512_inserti32x4(x[m], _mm_loadu_si128((const __m128i *)(r3 + off)), 3);
        fp8_low_bytes(x[m], low);
    }
    const __m512i t0 = _mm512_unpacklo_epi16(x[0], x[1]), t1 = _mm512_unpackhi_epi16(x[0], x[1]);
    const __m512i t2 = _mm512_unpacklo_epi16(x[2], x[3]), t3 = _mm512_unpackhi_epi16(x[2], x[3]);
    u[0] = _mm512_unpacklo_epi32(t0, t2);
    u[1] = _mm512_unpackhi_epi32(t0, t2);
    u[2] = _mm512_unpacklo_epi32(t1, t3);
    u[3] = _mm512_unpackhi_epi32(t1, t3);
}

/* The tile rows of pairs 2i (half 0) or 2i + 1 (half 1) from u = u[i]: by shift (t NULL:
 * normal values only), s eeee mmm in a word's high byte -> s (eeee + 120) mmm0000, or by
 * table. */
SKV_ALWAYS_INLINE __m512i fp8_tile_row(__m512i u, int half, const fp8_lut *t)
{
    if (!t) {
        const __m512i w = half ? _mm512_unpackhi_epi8(_mm512_setzero_si512(), u)
                               : _mm512_unpacklo_epi8(_mm512_setzero_si512(), u);
        const __m512i m = _mm512_and_si512(_mm512_srai_epi16(w, 4), _mm512_set1_epi16((short)0x87f0));
        return _mm512_add_epi32(m, _mm512_set1_epi16(120 << 7)); /* no carry between words */
    }
    __m512i lo, hi;
    fp8x64_bytes(t, u, &lo, &hi);
    return half ? _mm512_unpackhi_epi8(lo, hi) : _mm512_unpacklo_epi8(lo, hi);
}

/* Dims [off, off + 16) of KV tiles of 16 keys from their rows (src: 16 * KV row pointers)
 * against H heads into acc, lanes_block's order: for each pair of dims, each head, each tile.
 * A chunk holding a byte the shift cannot convert takes the table (the same bits for the
 * others: a key's score never depends on its neighbours). */
SKV_ALWAYS_INLINE void fp8_rows_chunk(const skv_qchunk *c, int H, int G, int KV, int32_t off,
                                      const void *const *src, const fp8_lut *lut, __m512 *acc)
{
    __m512i u[2][4], low = _mm512_set1_epi8((char)0xff);
#pragma GCC unroll 2
    for (int v = 0; v < KV; v++)
        fp8_tile_chunk(src + 16 * v, off, u[v], &low);
    const fp8_lut *t = _mm512_cmple_epu8_mask(low, _mm512_set1_epi8((char)0x88)) ? lut : NULL;
#pragma GCC unroll 8
    for (int p = 0; p < 8; p++) {
        __m512bh k[2];
#pragma GCC unroll 2
        for (int v = 0; v < KV; v++)
            k[v] = (__m512bh)fp8_tile_row(u[v][p / 2], p % 2, t);
        lanes_pair(c, H, G, KV, off / 2 + p, k, acc);
    }
}

/* The same from KV fp8 tiles (src: KV tile pointers), every byte by table: its two byte
 * permutes, a sign merge and two unpacks make two rows, where the shift takes four operations
 * a row and its check for bytes it cannot convert another one and a half, and real keys hold
 * many such bytes (a third of the dev data's, quantised to fp8, are zeros or subnormals).
 * Each vector is loaded when its two pairs are due, so that few registers stay live. From rows
 * the table measured slower than the shift: their unpacks compete for the same shuffles. */
SKV_ALWAYS_INLINE void fp8_tiles_chunk(const skv_qchunk *c, int H, int G, int KV, int32_t off,
                                       const void *const *src, const fp8_lut *lut, __m512 *acc)
{
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        __m512i x[2];
#pragma GCC unroll 2
        for (int v = 0; v < KV; v++)
            x[v] = _mm512_loadu_si512((const uint8_t *)src[v] + (size_t)off * 16 + 64 * i);
#pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
            __m512bh k[2];
#pragma GCC unroll 2
            for (int v = 0; v < KV; v++)
                k[v] = (__m512bh)fp8_tile_row(x[v], half, lut);
            lanes_pair(c, H, G, KV, off / 2 + 2 * i + half, k, acc);
        }
    }
}

/* KV tiles of 16 keys against H heads, from their rows or, with TILES, their fp8 tiles. */
SKV_ALWAYS_INLINE void fp8_lanes_block(const skv_qchunk *c, int scaled, int H, int G, int KV, int TILES,
                                       int32_t D, const void *const *src, const fp8_lut *lut,
                                       const float *ks, int64_t n, float *out)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < H * KV; i++)
        acc[i] = _mm512_setzero_ps();
    for (int32_t off = 0; off < D; off += 16) {
        if (TILES)
            fp8_tiles_chunk(c, H, G, KV, off, src, lut, acc);
        else
            fp8_rows_chunk(c, H, G, KV, off, src, lut, acc);
    }
    lanes_store_all(c, scaled, H, G, KV, acc, ks, n, out);
}

/* Every tile of n keys: two at a time, then one. */
SKV_ALWAYS_INLINE void fp8_lanes_all(const skv_qchunk *c, int scaled, int H, int G, int32_t D,
                                     const void *const *rows, const fp8_lut *lut, const float *ks,
                                     int64_t n, float *out)
{
    for (int64_t j = 0; j < n; j += 32) {
        const void *row[32];
        tile_rows(rows, j, n, (size_t)D, row);
        tile_rows(rows, j + 16, n, (size_t)D, row + 16); /* past n: the last key again */
        const int64_t left = n - j;
        if (left > 16)
            fp8_lanes_block(c, scaled, H, G, 2, 0, D, row, lut, ks ? ks + j : NULL, left, out + j);
        else
            fp8_lanes_block(c, scaled, H, G, 1, 0, D, row, lut, ks ? ks + j : NULL, left, out + j);
    }
}

/* The same from fp8 tiles, asking for the next two tiles while these are scored. */
SKV_ALWAYS_INLINE void fp8_tiles_all(const skv_qchunk *c, int scaled, int H, int G, int32_t D,
                                     const void *const *tiles, const fp8_lut *lut, const float *ks,
                                     int64_t n, float *out)
{
    const int64_t n_tiles = (n + 15) / 16;
    for (int64_t j = 0; j < n; j += 32) {
        for (int64_t t = j / 16 + 2; t < j / 16 + 4 && t < n_tiles; t++)
            for (int32_t b = 0; b < 16 * D; b += 256) { /* 16 * D: a multiple of 512 */
                const uint8_t *at = (const uint8_t *)tiles[t] + b;
                __builtin_prefetch(at);
                __builtin_prefetch(at + 64);
                __builtin_prefetch(at + 128);
                __builtin_prefetch(at + 192);
            }
        const int64_t left = n - j;
        if (left > 16)
            fp8_lanes_block(c, scaled, H, G, 2, 1, D, tiles + j / 16, lut, ks ? ks + j : NULL, left, out + j);
        else
            fp8_lanes_block(c, scaled, H, G, 1, 1, D, tiles + j / 16, lut, ks ? ks + j : NULL, left, out + j);
    }
}

#define FP8_LANES_CASE(ALL, HH, GG)                                                           \
    case HH:                                                                                  \
        if (hdr->scaled == 0)                                                                 \
            ALL(&c, 0, HH, GG, D, src, &lut, ks, n, out);                                     \
        else if (hdr->scaled == 1)                                                            \
            ALL(&c, 1, HH, GG, D, src, &lut, ks, n, out);                                     \
        else                                                                                  \
            ALL(&c, 2, HH, GG, D, src, &lut, ks, n, out);                                     \
        break;

#define FP8_LANES_KERNEL(NAME, ALL)                                                           \
    static void NAME(const void *pack, const void *const *src, const float *ks, int64_t n,    \
                     float *out)                                                              \
    {                                                                                         \
        const skv_qpack_hdr *hdr = pack;                                                      \
        const skv_qchunk c = skv_qpack_chunk(hdr, 0);                                         \
        const int32_t D = hdr->D;                                                             \
        fp8_lut lut;                                                                          \
        fp8_lut_init(&lut);                                                                   \
        switch (hdr->H) {                                                                     \
            FP8_LANES_CASE(ALL, 1, 16)                                                        \
            FP8_LANES_CASE(ALL, 2, 8)                                                         \
            FP8_LANES_CASE(ALL, 3, 4)                                                         \
            FP8_LANES_CASE(ALL, 4, 4)                                                         \
            FP8_LANES_CASE(ALL, 5, 2)                                                         \
            FP8_LANES_CASE(ALL, 6, 2)                                                         \
            FP8_LANES_CASE(ALL, 7, 2)                                                         \
            FP8_LANES_CASE(ALL, 8, 2)                                                         \
        default: break;                                                                       \
        }                                                                                     \
    }

/* The packs are score_bf16's (one chunk: at most 8 heads, lane group G = 16 / 2^ceil(log2 H)). */
FP8_LANES_KERNEL(score_fp8_avx512, fp8_lanes_all)
FP8_LANES_KERNEL(score_fp8_tiles_avx512, fp8_tiles_all)
