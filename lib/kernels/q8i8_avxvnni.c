/* The int8 path with AVX-VNNI (VEX vpdpbusd on 8 lanes; q8i8.h; key codes + 128 unsigned,
 * query codes signed): the 16 lanes of a head
 * vector as two halves, otherwise the AVX512-VNNI kernel's arithmetic in the same order, so
 * the same bits. Built into the AVX2 level's library with AVX-VNNI enabled here; used only
 * when the CPU has it. */
#pragma GCC target("avxvnni")
#include <immintrin.h>
#include <string.h>

#include "core/core.h"
#include "kernels/q8i8.h"

static inline __m256 relu_nan(__m256 x)
{
    return _mm256_and_ps(x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NLE_UQ));
}

static inline float tree_sum(__m256 lo, __m256 hi)
{
    const __m256 a = _mm256_add_ps(lo, hi); /* l + 8 */
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

static void score_q8i8_avxvnni(const void *pack, const void *k, size_t kst, const float *ks,
                               int64_t n, float *out)
{
    (void)kst, (void)ks;
    const skv_q8i8_hdr *hdr = pack;
    const int32_t nv = hdr->nv, nb = hdr->nb;
    const float *wq = skv_q8i8_wq(hdr);
    const size_t rb = (size_t)nb * SKV_Q8_0_BLOCK_BYTES;
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *row = (const uint8_t *)k + (size_t)j * rb;
        __builtin_prefetch(row + 8 * rb);
        __m256 s[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int32_t v = 0; v < nv; v++) {
            __m256 f[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int32_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * SKV_Q8_0_BLOCK_BYTES;
                const uint8_t *qc = skv_q8i8_codes(hdr, v, b);
                const int32_t *corr = skv_q8i8_corr(hdr, v, b);
                __m256i acc[2] = {_mm256_loadu_si256((const __m256i *)corr),
                                  _mm256_loadu_si256((const __m256i *)(corr + 8))};
                uint8_t u[32] __attribute__((aligned(32))); /* key codes + 128 */
                _mm256_store_si256((__m256i *)u, _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)),
                                                                  _mm256_set1_epi8((char)0x80)));
                for (int st = 0; st < 8; st++) {
                    int32_t x;
                    memcpy(&x, u + 4 * st, 4);
                    const __m256i kb = _mm256_set1_epi32(x);
                    for (int half = 0; half < 2; half++)
                        acc[half] = _mm256_dpbusd_avx_epi32(
                            acc[half], kb, _mm256_load_si256((const __m256i *)(qc + st * 64 + half * 32)));
                }
                uint16_t h;
                memcpy(&h, blk, 2);
                const __m256 d = _mm256_cvtph_ps(_mm_set1_epi16((short)h));
                for (int half = 0; half < 2; half++)
                    f[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[half]), d, f[half]);
            }
            const int32_t real = hdr->H - v * 16;
            for (int half = 0; half < 2; half++) {
                /* padded heads add exactly 0 */
                const int32_t lanes = real - half * 8 >= 8 ? 8 : real - half * 8 > 0 ? real - half * 8 : 0;
                const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), idx));
                const __m256 r = _mm256_and_ps(relu_nan(f[half]), live);
                const __m256 w = _mm256_loadu_ps(wq + (size_t)v * 16 + half * 8);
                s[half] = v == 0 ? _mm256_mul_ps(r, w) : _mm256_fmadd_ps(r, w, s[half]);
            }
        }
        out[j] = tree_sum(s[0], s[1]);
    }
}

int skv_q8i8_init_avxvnni(skv_kernels *k)
{
    if (!__builtin_cpu_supports("avxvnni"))
        return 0;
    k->score_q8i8 = (skv_score_kernel){skv_q8i8_pack_size, skv_q8i8_pack, score_q8i8_avxvnni, SKV_Q8_0};
    return 1;
}
