/* AArch64 Advanced SIMD (NEON) kernels: f32 scoring with 4 heads per vector (up to four
 * vectors, 16 heads, per chunk: AArch64 has 32 vector registers), the key conversions that
 * feed it (bf16, fp8, MXFP4), and the top-k's filter and cut passes. NEON is part of the
 * AArch64 base ISA, so the file needs no extra flags. Conversions and the top-k give the
 * scalar code's bits; scores are checked against the scalar reference by test_kernels. */
#include <arm_neon.h>
#include <string.h>

#include "core/core.h"

#define VEC float32x4_t
#define LANES 4
#define HV_MAX 4
#define G_MAX 4
/* keys per register tile: hv * N accumulators + hv query vectors + a broadcast <= 32 */
#define N_FOR_HV(hv) ((hv) == 1 ? 16 : (hv) == 2 ? 12 : (hv) == 3 ? 8 : 6)
#define VZERO() vdupq_n_f32(0.0f)
#define VLOAD(p) vld1q_f32(p)
#define VSET1(x) vdupq_n_f32(x)
#define VMUL(a, b) vmulq_f32(a, b)
#define VFMA(a, b, c) vfmaq_f32(c, a, b)
#define VBCASTG(p, g) bcast_g(p, g)
#define VGROUP(x, g) group_sum(x, g)
/* fmax propagates a NaN operand: max(0, NaN) = NaN, as the scalar relu keeps it. */
#define VRELU(x, v, active, g)                                                                \
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(vmaxq_f32(vdupq_n_f32(0.0f), x)),  \
                                    lead_mask((active) - (v) * LANES, g)))
#define VHSUM(v) vaddvq_f32(v)
/* three and four head vectors (score_simd.h instantiates one and two) */
#define CASES_WIDE(NAME) SCORE_CASES(NAME, 3, 1) SCORE_CASES(NAME, 4, 1)

/* All-ones on the first lane of each group of g among the first n lanes. */
static inline uint32x4_t lead_mask(int n, int g)
{
    static const int32_t iota_[4] = {0, 1, 2, 3};
    const int32x4_t iota = vld1q_s32(iota_);
    const uint32x4_t in = vcltq_s32(iota, vdupq_n_s32(n));
    const uint32x4_t lead = vceqq_s32(vandq_s32(iota, vdupq_n_s32(g - 1)), vdupq_n_s32(0));
    return vandq_u32(in, lead);
}

static inline __attribute__((always_inline)) float32x4_t bcast_g(const float *p, int g)
{
    switch (g) {
    case 1: return vld1q_dup_f32(p);
    case 2: {
        uint64_t x;
        memcpy(&x, p, 8);
        return vreinterpretq_f32_u64(vdupq_n_u64(x));
    }
    default: return vld1q_f32(p);
    }
}

static inline __attribute__((always_inline)) float32x4_t group_sum(float32x4_t x, int g)
{
    if (g >= 2)
        x = vaddq_f32(x, vrev64q_f32(x));
    if (g >= 4)
        x = vaddq_f32(x, vextq_f32(x, x, 2));
    return x;
}

#include "kernels/score_simd.h"

DEFINE_SCORE_KERNEL(score_f32_neon, tile_f32, float)

static size_t pack_size_neon(int32_t H, int32_t D)
{
    return skv_qpack_size(H, D, LANES, HV_MAX, SKV_F32);
}

static void pack_neon(void *dst, const skv_qpack_args *a)
{
    skv_qpack_fill(dst, a, LANES, HV_MAX, SKV_F32);
}

/* ---- conversions ---------------------------------------------------------------------- */

static void bf16_to_f32_neon(const void *src, void *dst, int64_t n)
{
    const uint16_t *s = src;
    float *d = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t w = vld1q_u16(s + i);
        vst1q_f32(d + i, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(w), 16)));
        vst1q_f32(d + i + 4, vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(w), 16)));
    }
    for (; i < n; i++)
        d[i] = skv_bf16_to_f32(s[i]);
}

/* Eight fp8 values as bf16 bits. A normal value s eeee mmm is s (eeee + 120) mmm0000 in bf16;
 * zeros, subnormals and NaN (exponent 0, or 0x7f / 0xff) take the table. */
static inline uint16x8_t fp8x8_bf16(const uint8_t *s)
{
    const uint16x8_t w = vmovl_u8(vld1_u8(s));
    const uint16x8_t mag = vandq_u16(w, vdupq_n_u16(0x7f));
    const uint16x8_t odd = vorrq_u16(vceqq_u16(vandq_u16(w, vdupq_n_u16(0x78)), vdupq_n_u16(0)),
                                     vceqq_u16(mag, vdupq_n_u16(0x7f)));
    if (vmaxvq_u16(odd)) {
        uint16_t t[8];
        for (int i = 0; i < 8; i++)
            t[i] = skv_fp8_bf16_lut[s[i]];
        return vld1q_u16(t);
    }
    const uint16x8_t sign = vshlq_n_u16(vandq_u16(w, vdupq_n_u16(0x80)), 8);
    return vorrq_u16(sign, vaddq_u16(vshlq_n_u16(mag, 4), vdupq_n_u16(120 << 7)));
}

static void fp8_to_f32_neon(const void *src, void *dst, int64_t n)
{
    const uint8_t *s = src;
    float *d = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t b = fp8x8_bf16(s + i);
        vst1q_f32(d + i, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(b), 16)));
        vst1q_f32(d + i + 4, vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(b), 16)));
    }
    for (; i < n; i++)
        d[i] = skv_fp8_to_f32(s[i]);
}

static void fp8_to_bf16_neon(const void *src, void *dst, int64_t n)
{
    const uint8_t *s = src;
    uint16_t *d = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        vst1q_u16(d + i, fp8x8_bf16(s + i));
    for (; i < n; i++)
        d[i] = skv_fp8_bf16_lut[s[i]];
}

/* MXFP4: the E2M1 values are bf16 numbers (the f32 low half is zero), so a byte table lookup
 * per half gives the 16 codes' bits; the scale multiply is the scalar code's f32 product. */
static const uint8_t e2m1_hi[16] = {0x00, 0x3f, 0x3f, 0x3f, 0x40, 0x40, 0x40, 0x40,
                                    0x80, 0xbf, 0xbf, 0xbf, 0xc0, 0xc0, 0xc0, 0xc0};
static const uint8_t e2m1_lo[16] = {0x00, 0x00, 0x80, 0xc0, 0x00, 0x40, 0x80, 0xc0,
                                    0x00, 0x00, 0x80, 0xc0, 0x00, 0x40, 0x80, 0xc0};

/* The 32 values of one block as 8 vectors, in order. */
static inline void mx_block(const uint8_t *packed, uint8_t sbyte, float32x4_t v[8])
{
    const uint8x16_t b = vld1q_u8(packed), hi_t = vld1q_u8(e2m1_hi), lo_t = vld1q_u8(e2m1_lo);
    const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(15)), hi = vshrq_n_u8(b, 4);
    const uint8x16x2_t c = vzipq_u8(lo, hi); /* codes 0..15, 16..31 */
    const float32x4_t s = vdupq_n_f32(skv_e8m0_f32(sbyte));
    for (int h = 0; h < 2; h++) {
        /* bf16 bits: low byte from lo_t, high byte from hi_t */
        const uint8x16x2_t z = vzipq_u8(vqtbl1q_u8(lo_t, c.val[h]), vqtbl1q_u8(hi_t, c.val[h]));
        for (int q = 0; q < 2; q++) {
            const uint16x8_t w = vreinterpretq_u16_u8(z.val[q]);
            v[h * 4 + q * 2] = vmulq_f32(vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(w), 16)), s);
            v[h * 4 + q * 2 + 1] = vmulq_f32(vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(w), 16)), s);
        }
    }
}

static void mxfp4_to_f32_neon(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    float *d = dst;
    for (int64_t b = 0; b < n; b++) {
        float32x4_t v[8];
        mx_block(packed + b * 16, scales[b], v);
        for (int i = 0; i < 8; i++)
            vst1q_f32(d + b * 32 + i * 4, v[i]);
    }
}

static void mxfp4_to_bf16_neon(const uint8_t *packed, const uint8_t *scales, int64_t n, void *dst)
{
    uint16_t *d = dst;
    for (int64_t b = 0; b < n; b++) {
        float32x4_t v[8];
        mx_block(packed + b * 16, scales[b], v);
        for (int i = 0; i < 8; i += 2) /* the upper halves (exact, kernels.h) */
            vst1q_u16(d + b * 32 + i * 4, vuzp2q_u16(vreinterpretq_u16_f32(v[i]),
                                                     vreinterpretq_u16_f32(v[i + 1])));
    }
}

/* ---- top-k ---------------------------------------------------------------------------- */

/* Byte shuffles that move the 32-bit lanes set in a 4-bit mask to the front, in order. */
static const uint8_t compress_tbl[16][16] = {
#define L(i) 4 * (i), 4 * (i) + 1, 4 * (i) + 2, 4 * (i) + 3
#define Z 255, 255, 255, 255
    {Z, Z, Z, Z},          {L(0), Z, Z, Z},       {L(1), Z, Z, Z},       {L(0), L(1), Z, Z},
    {L(2), Z, Z, Z},       {L(0), L(2), Z, Z},    {L(1), L(2), Z, Z},    {L(0), L(1), L(2), Z},
    {L(3), Z, Z, Z},       {L(0), L(3), Z, Z},    {L(1), L(3), Z, Z},    {L(0), L(1), L(3), Z},
    {L(2), L(3), Z, Z},    {L(0), L(2), L(3), Z}, {L(1), L(2), L(3), Z}, {L(0), L(1), L(2), L(3)},
#undef L
#undef Z
};

static inline unsigned mask4(uint32x4_t m)
{
    static const uint32_t bits_[4] = {1, 2, 4, 8};
    return vaddvq_u32(vandq_u32(m, vld1q_u32(bits_)));
}

static inline uint32x4_t compress4(uint32x4_t x, unsigned mask)
{
    return vreinterpretq_u32_u8(vqtbl1q_u8(vreinterpretq_u8_u32(x), vld1q_u8(compress_tbl[mask])));
}

/* The score keys of four floats (kernels.h: NaN -> 0, -0 == +0). */
static inline uint32x4_t score_keys(float32x4_t s)
{
    const float32x4_t v = vaddq_f32(s, vdupq_n_f32(0.0f));
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t flip = vorrq_u32(vreinterpretq_u32_s32(vshrq_n_s32(vreinterpretq_s32_u32(u), 31)),
                                      vdupq_n_u32(0x80000000u));
    return vandq_u32(veorq_u32(u, flip), vceqq_f32(v, v));
}

/* Sixteen scores at a time: most fall below the threshold once it is set, and one test skips
 * them together; the passing lanes of each four are compressed to the front. */
static int32_t filter_neon(const float *s, int32_t n, int32_t base, uint32_t thr, int all,
                           uint32_t *keys, int32_t *idx)
{
    static const int32_t iota_[4] = {0, 1, 2, 3};
    const uint32x4_t vthr = vdupq_n_u32(thr);
    const int32x4_t iota = vld1q_s32(iota_);
    int32_t m = 0, j = 0;
    for (; j + 16 <= n; j += 16) {
        uint32x4_t k[4], pass[4];
        for (int v = 0; v < 4; v++) {
            k[v] = score_keys(vld1q_f32(s + j + 4 * v));
            pass[v] = all ? vdupq_n_u32(~0u) : vcgtq_u32(k[v], vthr);
        }
        if (!vmaxvq_u32(vorrq_u32(vorrq_u32(pass[0], pass[1]), vorrq_u32(pass[2], pass[3]))))
            continue;
        for (int v = 0; v < 4; v++) {
            const unsigned mk = mask4(pass[v]);
            const int32x4_t ix = vaddq_s32(iota, vdupq_n_s32(base + j + 4 * v));
            vst1q_u32(keys + m, compress4(k[v], mk)); /* up to 3 past the count: allowed */
            vst1q_s32(idx + m, vreinterpretq_s32_u32(compress4(vreinterpretq_u32_s32(ix), mk)));
            m += __builtin_popcount(mk);
        }
    }
    for (; j < n; j++) {
        const uint32_t key = skv_score_key(s[j]);
        if (all || key > thr) {
            keys[m] = key;
            idx[m] = base + j;
            m++;
        }
    }
    return m;
}

static void key_range_neon(const uint32_t *key, int32_t n, uint32_t *lo, uint32_t *hi)
{
    uint32x4_t a = vdupq_n_u32(UINT32_MAX), b = vdupq_n_u32(0);
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32x4_t k = vld1q_u32(key + i);
        a = vminq_u32(a, k);
        b = vmaxq_u32(b, k);
    }
    uint32_t x = vminvq_u32(a), y = vmaxvq_u32(b);
    for (; i < n; i++) {
        x = key[i] < x ? key[i] : x;
        y = key[i] > y ? key[i] : y;
    }
    *lo = x;
    *hi = y;
}

static int32_t in_range_neon(const uint32_t *key, int32_t n, uint32_t lo, uint32_t span,
                             uint32_t *out, int32_t cap)
{
    const uint32x4_t vlo = vdupq_n_u32(lo), vspan = vdupq_n_u32(span);
    int32_t m = 0, i = 0;
    for (; i + 4 <= n && m < cap; i += 4) {
        const uint32x4_t k = vld1q_u32(key + i);
        const unsigned mk = mask4(vcleq_u32(vsubq_u32(k, vlo), vspan));
        vst1q_u32(out + m, compress4(k, mk)); /* m < cap: fits in cap + 16 */
        m += __builtin_popcount(mk);
    }
    for (; i < n && m < cap; i++) {
        out[m] = key[i];
        m += key[i] - lo <= span;
    }
    return m;
}

/* In place: the compressed four land at or before the four just read, so nothing unread is
 * overwritten; a block holding a tie to kth takes the scalar rule for its lanes. */
static int32_t keep_neon(uint32_t *key, int32_t *idx, int32_t n, uint32_t kth, int64_t need)
{
    const uint32x4_t vk = vdupq_n_u32(kth);
    int32_t out = 0, i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32x4_t k = vld1q_u32(key + i);
        const uint32x4_t ix = vld1q_u32((const uint32_t *)idx + i);
        if (vmaxvq_u32(vceqq_u32(k, vk))) {
            for (int l = 0; l < 4; l++) {
                const uint32_t kv = key[i + l];
                const int eq = kv == kth;
                const int keep = (kv > kth) | (eq & (need > 0));
                need -= eq;
                key[out] = kv;
                idx[out] = idx[i + l];
                out += keep;
            }
            continue;
        }
        const unsigned mk = mask4(vcgtq_u32(k, vk));
        vst1q_u32(key + out, compress4(k, mk));
        vst1q_u32((uint32_t *)idx + out, compress4(ix, mk));
        out += __builtin_popcount(mk);
    }
    for (; i < n; i++) {
        const uint32_t kv = key[i];
        const int eq = kv == kth;
        const int keep = (kv > kth) | (eq & (need > 0));
        need -= eq;
        key[out] = kv;
        idx[out] = idx[i];
        out += keep;
    }
    return out;
}

void skv_kernels_init_neon(skv_kernels *k)
{
    k->score_f32 = (skv_score_kernel){pack_size_neon, pack_neon, score_f32_neon, SKV_F32};
    k->bf16_to_f32 = bf16_to_f32_neon;
    k->fp8_to_f32 = fp8_to_f32_neon;
    k->fp8_to_bf16 = fp8_to_bf16_neon;
    k->mxfp4_to_f32 = mxfp4_to_f32_neon;
    k->mxfp4_to_bf16 = mxfp4_to_bf16_neon;
    k->filter = filter_neon;
    k->key_range = key_range_neon;
    k->in_range = in_range_neon;
    k->keep = keep_neon;
}
