/* The int8 path with AVX512-VNNI (q8i8.h): 16 heads in the lanes of a vector, a key's four
 * code bytes broadcast, one vpdpbusd per 4 dims (key codes + 128 unsigned, made once per block
 * of a tile's keys; query codes signed; the pack's -128 * sum(q) starts the sum), then per
 * block one conversion and one fma with the block's scale; two keys a tile so that each query
 * vector loaded serves both. Built into the
 * AVX-512 level's library with VNNI enabled here; used only when the CPU has it. */
#pragma GCC target("avx512vnni")
#include <immintrin.h>
#include <string.h>

#include "core/core.h"
#include "kernels/q8i8.h"

#define HV_CHUNK 4 /* head vectors per pass over a tile's keys */

static inline __m512 relu_nan(__m512 x)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NLE_UQ), x);
}

/* Lanes summed as a tree: l + 8, + 4, + 2, + 1 (q8i8.h). */
static inline float tree_sum(__m512 s)
{
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(s),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

static inline __m512 block_scale(const uint8_t *blk)
{
    uint16_t h;
    memcpy(&h, blk, 2);
    return _mm512_cvtph_ps(_mm256_set1_epi16((short)h));
}

static inline int32_t load4(const uint8_t *p)
{
    int32_t x;
    memcpy(&x, p, 4);
    return x;
}

/* N keys (1 or 2) from rows r[]: their lane sums over every head vector. */
static inline __attribute__((always_inline)) void tile(const skv_q8i8_hdr *hdr, const uint8_t *const *r,
                                                       int N, float *out)
{
    const int32_t nv = hdr->nv, nb = hdr->nb;
    const float *wq = skv_q8i8_wq(hdr);
    __m512 s[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int32_t v0 = 0; v0 < nv; v0 += HV_CHUNK) {
        const int hv = nv - v0 < HV_CHUNK ? nv - v0 : HV_CHUNK;
        __m512 f[HV_CHUNK][2];
        for (int v = 0; v < HV_CHUNK; v++)
            f[v][0] = f[v][1] = _mm512_setzero_ps();
        for (int32_t b = 0; b < nb; b++) {
            __m512i acc[HV_CHUNK][2];
            __m512 ds[2];
            uint8_t u[2][32] __attribute__((aligned(32)));
            for (int j = 0; j < N; j++) {
                const uint8_t *blk = r[j] + (size_t)b * SKV_Q8_0_BLOCK_BYTES;
                ds[j] = block_scale(blk);
                _mm256_store_si256((__m256i *)u[j], _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)),
                                                                     _mm256_set1_epi8((char)0x80)));
            }
            for (int v = 0; v < HV_CHUNK && v < hv; v++) {
                const __m512i c = _mm512_loadu_si512(skv_q8i8_corr(hdr, v0 + v, b));
                for (int j = 0; j < N; j++)
                    acc[v][j] = c;
            }
            for (int st = 0; st < 8; st++) {
                __m512i kb[2];
                for (int j = 0; j < N; j++)
                    kb[j] = _mm512_set1_epi32(load4(u[j] + 4 * st));
                for (int v = 0; v < HV_CHUNK; v++) {
                    if (v >= hv)
                        break;
                    const __m512i qv = _mm512_load_si512(skv_q8i8_codes(hdr, v0 + v, b) + st * 64);
                    for (int j = 0; j < N; j++)
                        acc[v][j] = _mm512_dpbusd_epi32(acc[v][j], kb[j], qv);
                }
            }
            for (int v = 0; v < HV_CHUNK && v < hv; v++)
                for (int j = 0; j < N; j++)
                    f[v][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[v][j]), ds[j], f[v][j]);
        }
        for (int v = 0; v < HV_CHUNK && v < hv; v++) {
            const __m512 w = _mm512_loadu_ps(wq + (size_t)(v0 + v) * 16);
            /* padded heads add exactly 0 (their f may be NaN from an infinite key scale) */
            const int32_t real = hdr->H - (v0 + v) * 16;
            const __mmask16 live = real >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << real) - 1);
            for (int j = 0; j < N; j++) {
                const __m512 rr = _mm512_maskz_mov_ps(live, relu_nan(f[v][j]));
                s[j] = v0 + v == 0 ? _mm512_mul_ps(rr, w) : _mm512_fmadd_ps(rr, w, s[j]);
            }
        }
    }
    for (int j = 0; j < N; j++)
        out[j] = tree_sum(s[j]);
}

static void score_q8i8_avx512vnni(const void *pack, const void *k, size_t kst, const float *ks,
                                  int64_t n, float *out)
{
    (void)kst, (void)ks;
    const skv_q8i8_hdr *hdr = pack;
    const size_t rb = (size_t)hdr->nb * SKV_Q8_0_BLOCK_BYTES;
    const uint8_t *base = k;
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
        for (size_t o = 0; o < 2 * rb; o += 64) /* the next tile's rows stream in */
            __builtin_prefetch(base + (size_t)(j + 8) * rb + o);
        const uint8_t *r[2] = {base + (size_t)j * rb, base + (size_t)(j + 1) * rb};
        tile(hdr, r, 2, out + j);
    }
    if (j < n) {
        const uint8_t *r[2] = {base + (size_t)j * rb, NULL};
        tile(hdr, r, 1, out + j);
    }
}

int skv_q8i8_init_avx512vnni(skv_kernels *k)
{
    if (!__builtin_cpu_supports("avx512vnni"))
        return 0;
    k->score_q8i8 = (skv_score_kernel){skv_q8i8_pack_size, skv_q8i8_pack, score_q8i8_avx512vnni, SKV_Q8_0};
    return 1;
}
