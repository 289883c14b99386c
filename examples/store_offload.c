/* A model without an indexer on the clustered KV store: the host's K/V live in the store's host
 * tier, a hot tier in "device" memory holds the pages a step attends to, and each decode step
 * selects pages within a token budget, fetches them, gathers the rows and runs sparse
 * attention over them.
 *
 * The device is simulated: its memory comes from malloc and the copy callback records the
 * block table's pages as they arrive, but the callbacks are the ones a GPU engine would give
 * (one batched copy per fetch, a fence). Each step checks that:
 *   - every page of the block table is in the hot region as the host tier holds it
 *     (skv_store_check_hot);
 *   - with a budget of the whole sequence the output equals dense attention over every token
 *     (skv_sparse_attention_reference on the stored rows) to rounding;
 * and prints the attention output's distance from dense for the small budget.
 *
 *   store_offload [prompt_tokens] [decode_steps] [budget] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sparsekv/sparsekv.h>

enum { HKV = 2, HQ = 8, KD = 64, VD = 64 };

#define TRY(expr)                                                                              \
    do {                                                                                       \
        skv_status s_ = (expr);                                                                \
        if (s_ != SKV_OK) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, skv_status_string(s_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

static uint64_t rng_state = 11;
static float frand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * 0x1p-24 * 2 - 1);
}

/* ---- the "device": its memory, a batched copy, a fence ------------------------------------ */

typedef struct device { size_t bytes, copied; int copies, fences; } device;

static void *dev_alloc(void *u, size_t bytes)
{
    ((device *)u)->bytes = bytes;
    return malloc(bytes); /* a GPU engine: cudaMalloc, and return the device pointer */
}

static void dev_free(void *u, void *hot, size_t bytes)
{
    (void)u, (void)bytes;
    free(hot);
}

static int dev_copy(void *u, skv_tier_dir dir, void *hot, size_t slot_bytes, void *staging,
                    size_t staging_bytes, const skv_tier_xfer *x, int64_t n)
{
    device *d = u;
    (void)staging_bytes;
    for (int64_t i = 0; i < n; i++) { /* a GPU engine: cudaMemcpyAsync per range, one stream */
        uint8_t *slot = (uint8_t *)hot + (size_t)x[i].slot * slot_bytes;
        if (dir == SKV_TIER_TO_HOT)
            memcpy(slot, (uint8_t *)staging + x[i].offset, x[i].bytes);
        else
            memcpy((uint8_t *)staging + x[i].offset, slot, x[i].bytes);
        d->copied += x[i].bytes;
    }
    d->copies++;
    return 0;
}

static int dev_fence(void *u) /* a GPU engine: cudaStreamSynchronize */
{
    ((device *)u)->fences++;
    return 0;
}

/* One decode step of one layer: select within the budget, fetch, gather, attend. */
static void attend(skv_context *ctx, skv_store *s, skv_store_sel *sel, int32_t seq, int64_t budget,
                   const float *q, int32_t qpos, float *out, int64_t *rows_out)
{
    skv_store_query sq;
    skv_store_query_init(&sq);
    sq.n_q_heads = HQ, sq.q = q, sq.budget = budget; /* q [HQ][KD], f32 */
    TRY(skv_store_select(s, seq, 0, &sq, sel));
    TRY(skv_store_fetch(s, sel)); /* the block table's pages are resident and pinned now */
    int64_t bad = -1;
    TRY(skv_store_check_hot(s, &bad));
    if (bad != 0) {
        fprintf(stderr, "%lld hot pages differ from the host tier\n", (long long)bad);
        exit(1);
    }
    skv_store_sel_info si = {.struct_size = sizeof si};
    TRY(skv_store_sel_info_get(sel, &si));
    for (int32_t h = 0; h < HKV; h++) { /* the block table a device kernel would read */
        int32_t n_pages, slots[4096];
        if (si.max_head_pages > 4096)
            exit(1);
        TRY(skv_store_sel_pages(sel, h, &n_pages, NULL, slots, NULL, NULL));
        for (int32_t i = 0; i < n_pages; i++)
            if (slots[i] < 0 || slots[i] >= 1024) {
                fprintf(stderr, "KV head %d: page %d has no hot slot after fetch\n", h, i);
                exit(1);
            }
    }
    float *k = malloc((size_t)si.n_tokens * KD * 4), *v = malloc((size_t)si.n_tokens * VD * 4);
    int32_t *kpos = malloc((size_t)si.n_tokens * 4), lens[HKV];
    int64_t starts[HKV];
    if (!k || !v || !kpos)
        exit(1);
    const skv_store_gather_out go = {sizeof go, SKV_F32, SKV_GATHER_PAGES, 0, si.n_tokens, k, v, kpos, starts, lens};
    TRY(skv_store_gather(s, sel, &go, rows_out));
    const skv_attn_batch b = {sizeof b, 1, HQ, HKV, KD, VD, SKV_F32, 0.125f, 1, q, &qpos,
                              si.n_tokens, k, v, kpos, starts, lens};
    TRY(skv_sparse_attention(ctx, &b, out, NULL, NULL));
    TRY(skv_store_release(s, sel)); /* unpin: the pages may be evicted for the next layer */
    free(k), free(v), free(kpos);
}

int main(int argc, char **argv)
{
    const int n0 = argc > 1 ? atoi(argv[1]) : 2000, steps = argc > 2 ? atoi(argv[2]) : 4;
    const int64_t budget = argc > 3 ? atoll(argv[3]) : 256;
    if (n0 < 1 || steps < 1 || budget < 1) {
        fprintf(stderr, "usage: store_offload [prompt_tokens] [decode_steps] [budget]\n");
        return 2;
    }
    skv_context *ctx = NULL;
    TRY(skv_context_create(NULL, &ctx));
    device dev = {0};
    skv_store_params p;
    skv_store_params_init(&p);
    p.n_kv_heads = HKV, p.k_dim = KD, p.v_dim = VD, p.dtype = SKV_BF16;
    p.n_sink = 4, p.n_window = 32; /* a budget must hold sinks + window: see skv_store_query */
    p.hot_pages = 1024;
    p.tier = (skv_store_tier){dev_alloc, dev_free, dev_copy, dev_fence, &dev};
    skv_store *s = NULL;
    TRY(skv_store_create(ctx, &p, &s));
    int32_t seq;
    TRY(skv_store_seq_create(s, &seq));
    skv_store_sel *sel = NULL;
    TRY(skv_store_sel_create(s, &sel));

    /* the prompt's K/V (a real engine: its layer's projections), appended in one call */
    const int n = n0 + steps;
    float *k = malloc((size_t)n * HKV * KD * 4), *v = malloc((size_t)n * HKV * VD * 4);
    int32_t *pos = malloc((size_t)n * 4);
    if (!k || !v || !pos)
        return 1;
    for (size_t i = 0; i < (size_t)n * HKV * KD; i++)
        k[i] = frand();
    for (size_t i = 0; i < (size_t)n * HKV * VD; i++)
        v[i] = frand();
    for (int i = 0; i < n; i++)
        pos[i] = i;
    const skv_store_rows prompt = {n0, SKV_F32, k, v, pos};
    TRY(skv_store_append(s, seq, 0, &prompt));

    float q[HQ * KD], out[HQ * VD], dense[HQ * VD];
    int bad = 0;
    for (int t = 0; t < steps; t++) {
        const int32_t tok = n0 + t;
        const skv_store_rows one = {1, SKV_F32, k + (size_t)tok * HKV * KD, v + (size_t)tok * HKV * VD, pos + tok};
        TRY(skv_store_append(s, seq, 0, &one));
        for (int i = 0; i < HQ * KD; i++)
            q[i] = frand();
        int64_t rows = 0, all_rows = 0;
        attend(ctx, s, sel, seq, budget, q, tok, out, &rows);
        attend(ctx, s, sel, seq, tok + 1, q, tok, dense, &all_rows); /* every token: dense */

        /* dense attention over the stored rows (bf16, as the store keeps them), in double */
        float *sk = malloc((size_t)(tok + 1) * HKV * KD * 2 * 2), *sv = malloc((size_t)(tok + 1) * HKV * VD * 2 * 2);
        int32_t *sp = malloc((size_t)(tok + 1) * 4);
        uint16_t *bk = (uint16_t *)sk, *bv = (uint16_t *)sv;
        TRY(skv_store_read(s, seq, 0, 0, tok + 1, bk, bv, sp));
        float *fk = malloc((size_t)(tok + 1) * HKV * KD * 4), *fv = malloc((size_t)(tok + 1) * HKV * VD * 4);
        TRY(skv_convert(SKV_F32, fk, SKV_BF16, bk, (int64_t)(tok + 1) * HKV * KD));
        TRY(skv_convert(SKV_F32, fv, SKV_BF16, bv, (int64_t)(tok + 1) * HKV * VD));
        double worst = 0, dist = 0;
        for (int h = 0; h < HQ; h++) {
            const int g = h / (HQ / HKV);
            double m = -INFINITY, z = 0, acc[VD] = {0};
            for (int r = 0; r <= tok; r++) {
                double d = 0;
                for (int i = 0; i < KD; i++)
                    d += (double)q[h * KD + i] * fk[((size_t)r * HKV + g) * KD + i];
                m = d * 0.125 > m ? d * 0.125 : m;
            }
            for (int r = 0; r <= tok; r++) {
                double d = 0;
                for (int i = 0; i < KD; i++)
                    d += (double)q[h * KD + i] * fk[((size_t)r * HKV + g) * KD + i];
                const double e = exp(d * 0.125 - m);
                z += e;
                for (int i = 0; i < VD; i++)
                    acc[i] += e * fv[((size_t)r * HKV + g) * VD + i];
            }
            for (int i = 0; i < VD; i++) {
                const double want = acc[i] / z;
                worst = fmax(worst, fabs(dense[h * VD + i] - want));
                dist = fmax(dist, fabs(out[h * VD + i] - want));
            }
        }
        bad |= worst > 1e-4 || all_rows != (int64_t)(tok + 1) * HKV;
        printf("step %d: %lld tokens, budget %lld: %lld rows gathered, max |out - dense| %.4f; "
               "whole-sequence budget: max |out - dense| %.2g\n", t, (long long)tok + 1,
               (long long)budget, (long long)rows, dist, worst);
        free(sk), free(sv), free(sp), free(fk), free(fv);
    }
    skv_store_stats st = {.struct_size = sizeof st};
    TRY(skv_store_get_stats(s, &st));
    printf("hot tier: %lld pages resident, %d copy calls, %d fences, %.1f MiB moved; host tier %.1f MiB\n",
           (long long)st.hot_resident, dev.copies, dev.fences, dev.copied / 1048576.0, st.host_bytes / 1048576.0);
    skv_store_sel_destroy(sel);
    skv_store_destroy(s);
    skv_context_destroy(ctx);
    free(k), free(v), free(pos);
    if (bad)
        fprintf(stderr, "the whole-sequence budget did not give dense attention\n");
    return bad;
}
