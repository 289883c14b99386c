/* The llm program checked on the real model (skipped when ../shared/data is absent):
 * 1. its forward pass, by prefill and by decode steps, and its indexer projections, against a
 *    plain double-precision implementation of manifest.json's formulas on the first positions;
 * 2. the eval over the dev tokens: dense reproduces the manifest's NLL within 5e-3, and on a
 *    prefix, selections that keep every visible token (top-k with k >= the context, the store
 *    with a budget >= the context, MISA routing all 16 heads) agree with the exact path on
 *    every position, to the bit.
 * Usage: test_llm [T0] (the full-file eval's prefill length; default 2000 to keep the test
 * short: the decode steps dominate its time). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

static int failures;
#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                               \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, "\n");                                                             \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

static char *data_path(const char *rel)
{
    static char buf[4][1200];
    static int next;
    const char *env = getenv("SKV_TEST_DATA");
    char *p = buf[next++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", env && *env ? env : "../shared/data", rel);
    return p;
}

static void *read_dump(const char *rel, size_t bytes)
{
    FILE *f = fopen(data_path(rel), "rb");
    void *buf = f ? malloc(bytes) : NULL;
    if (buf && fread(buf, 1, bytes, f) != bytes) {
        free(buf);
        buf = NULL;
    }
    if (f)
        fclose(f);
    return buf;
}

/* ---- the double-precision reference ---------------------------------------------------- */

static void ref_matvec(const float *W, const double *x, int in, int out, double *y)
{
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++)
            s += (double)W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

static void ref_rmsnorm(const double *x, const float *w, int n, double eps, double *y)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    const double inv = 1 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * inv * w[i];
}

static void ref_rope(double *v, int dims, int total, double theta, int pos)
{
    for (int i = 0; i < dims / 2; i++) {
        const double a = pos * pow(theta, -2.0 * i / total), c = cos(a), s = sin(a);
        const double x = v[2 * i], y = v[2 * i + 1];
        v[2 * i] = x * c - y * s;
        v[2 * i + 1] = x * s + y * c;
    }
}

/* Logits [P][vocab] of tokens[0..P) and the indexer key of every layer and position
 * (ik [layers][P][id]) and gates (iw [layers][P][ih]). */
static void reference(const llm_model *m, const int32_t *tokens, int P, double *logits,
                      double *ik, double *iw)
{
    const int D = m->dim, H = m->n_heads, hd = m->head_dim, F = m->hidden;
    const int icols = m->ih * m->id + m->id + m->ih;
    double *x = malloc(sizeof(double) * P * D), *xn = malloc(sizeof(double) * D);
    double *q = malloc(sizeof(double) * P * D), *k = malloc(sizeof(double) * P * D);
    double *v = malloc(sizeof(double) * P * D), *att = malloc(sizeof(double) * D);
    double *o = malloc(sizeof(double) * D), *h13 = malloc(sizeof(double) * 2 * F);
    double *g = malloc(sizeof(double) * F), *ip = malloc(sizeof(double) * icols);
    double *sc = malloc(sizeof(double) * P);
    for (int t = 0; t < P; t++)
        for (int i = 0; i < D; i++)
            x[(size_t)t * D + i] = m->tok[(size_t)tokens[t] * D + i];
    for (int l = 0; l < m->n_layers; l++) {
        const llm_layer *L = &m->layer[l];
        for (int t = 0; t < P; t++) {
            ref_rmsnorm(x + (size_t)t * D, L->attn_norm, D, m->eps, xn);
            ref_matvec(L->wqkv, xn, D, D, q + (size_t)t * D);
            ref_matvec(L->wqkv + (size_t)D * D, xn, D, D, k + (size_t)t * D);
            ref_matvec(L->wqkv + (size_t)2 * D * D, xn, D, D, v + (size_t)t * D);
            for (int h = 0; h < H; h++) {
                ref_rope(q + (size_t)t * D + h * hd, hd, hd, m->theta, t);
                ref_rope(k + (size_t)t * D + h * hd, hd, hd, m->theta, t);
            }
            /* the indexer key: LayerNorm(wk x), roped; gates scaled */
            ref_matvec(L->wi, xn, D, icols, ip);
            double *kk = ik + ((size_t)l * P + t) * m->id, mean = 0, var = 0;
            for (int i = 0; i < m->id; i++)
                mean += ip[m->ih * m->id + i] / m->id;
            for (int i = 0; i < m->id; i++)
                var += pow(ip[m->ih * m->id + i] - mean, 2) / m->id;
            for (int i = 0; i < m->id; i++)
                kk[i] = (ip[m->ih * m->id + i] - mean) / sqrt(var + m->eps) * L->kn_w[i] + L->kn_b[i];
            ref_rope(kk, m->irope, m->id, m->theta, t);
            for (int h = 0; h < m->ih; h++)
                iw[((size_t)l * P + t) * m->ih + h] =
                    ip[m->ih * m->id + m->id + h] / sqrt((double)m->ih) / sqrt((double)m->id);
        }
        for (int t = 0; t < P; t++) {
            for (int h = 0; h < H; h++) { /* softmax over s <= t of q . k / sqrt(hd) */
                double mx = -INFINITY, z = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += q[(size_t)t * D + h * hd + i] * k[(size_t)s * D + h * hd + i];
                    sc[s] = d / sqrt((double)hd);
                    mx = fmax(mx, sc[s]);
                }
                for (int i = 0; i < hd; i++)
                    att[h * hd + i] = 0;
                for (int s = 0; s <= t; s++) {
                    const double w = exp(sc[s] - mx);
                    z += w;
                    for (int i = 0; i < hd; i++)
                        att[h * hd + i] += w * v[(size_t)s * D + h * hd + i];
                }
                for (int i = 0; i < hd; i++)
                    att[h * hd + i] /= z;
            }
            ref_matvec(L->wo, att, D, D, o);
            for (int i = 0; i < D; i++)
                x[(size_t)t * D + i] += o[i];
        }
        for (int t = 0; t < P; t++) { /* x += w2(silu(w1 xn) * w3 xn) */
            ref_rmsnorm(x + (size_t)t * D, L->ffn_norm, D, m->eps, xn);
            ref_matvec(L->w13, xn, D, 2 * F, h13);
            for (int i = 0; i < F; i++)
                g[i] = h13[i] / (1 + exp(-h13[i])) * h13[F + i];
            double *y = malloc(sizeof(double) * D);
            ref_matvec(L->w2, g, F, D, y);
            for (int i = 0; i < D; i++)
                x[(size_t)t * D + i] += y[i];
            free(y);
        }
    }
    for (int t = 0; t < P; t++) {
        ref_rmsnorm(x + (size_t)t * D, m->norm, D, m->eps, xn);
        ref_matvec(m->tok, xn, D, m->vocab, logits + (size_t)t * m->vocab);
    }
    free(x), free(xn), free(q), free(k), free(v), free(att), free(o), free(h13), free(g);
    free(ip), free(sc);
}

static void test_forward(const llm_model *m, skv_context *ctx, const int32_t *tokens)
{
    enum { P = 24, HALF = 10 };
    const int V = m->vocab;
    double *ref = malloc(sizeof(double) * P * V);
    double *ik = malloc(sizeof(double) * m->n_layers * P * m->id);
    double *iw = malloc(sizeof(double) * m->n_layers * P * m->ih);
    reference(m, tokens, P, ref, ik, iw);
    float *a = malloc(sizeof(float) * P * V), *b = malloc(sizeof(float) * P * V);
    llm_config dense;
    llm_config_parse("dense", m->n_layers, &dense);
    llm_engine *e1 = llm_engine_create(m, &dense, ctx, P, P);
    llm_engine *e2 = llm_engine_create(m, &dense, ctx, P, HALF);
    CHECK(e1 && e2, "engines");
    if (!e1 || !e2)
        return;
    /* all P tokens in one step; and HALF in one step, then one token per step */
    CHECK(llm_engine_step(e1, tokens, P, a) == 0, "prefill");
    CHECK(llm_engine_step(e2, tokens, HALF, b) == 0, "prefill half");
    for (int t = HALF; t < P; t++)
        CHECK(llm_engine_step(e2, tokens + t, 1, b + (size_t)t * V) == 0, "decode %d", t);
    double worst_a = 0, worst_b = 0, scale = 0;
    for (size_t i = 0; i < (size_t)P * V; i++) {
        worst_a = fmax(worst_a, fabs(a[i] - ref[i]));
        worst_b = fmax(worst_b, fabs(b[i] - ref[i]));
        scale = fmax(scale, fabs(ref[i]));
    }
    printf("forward: logits of %d positions within %.2e (prefill) and %.2e (decode) of the "
           "double reference (largest |logit| %.1f)\n", P, worst_a, worst_b, scale);
    CHECK(worst_a < 2e-3 && worst_b < 2e-3, "logits differ from the reference: %g, %g",
          worst_a, worst_b);

    /* the indexer's keys and gates, all layers and positions */
    float *q = malloc(sizeof(float) * P * m->ih * m->id), *k = malloc(sizeof(float) * P * m->id);
    float *w = malloc(sizeof(float) * P * m->ih);
    float *xn = malloc(sizeof(float) * P * m->dim);
    float *scratch = malloc(sizeof(float) * P * (m->ih * m->id + m->id + m->ih));
    /* the reference's layer inputs are not kept: check layer 0, whose input is the embedding */
    float *x0 = malloc(sizeof(float) * P * m->dim);
    for (int t = 0; t < P; t++)
        memcpy(x0 + (size_t)t * m->dim, m->tok + (size_t)tokens[t] * m->dim, sizeof(float) * m->dim);
    llm_rmsnorm(x0, m->layer[0].attn_norm, P, m->dim, m->eps, xn);
    llm_indexer_project(m, 0, xn, P, 0, q, k, w, scratch);
    double wk = 0, ww = 0;
    for (int i = 0; i < P * m->id; i++)
        wk = fmax(wk, fabs(k[i] - ik[i]));
    for (int i = 0; i < P * m->ih; i++)
        ww = fmax(ww, fabs(w[i] - iw[i]));
    printf("indexer (layer 0): keys within %.2e, gates within %.2e of the reference\n", wk, ww);
    CHECK(wk < 1e-4 && ww < 1e-5, "indexer keys %g gates %g", wk, ww);

    /* the conventions (RoPE pairs, scales, LayerNorm) against the activations dumped from the
       f32 checkpoint (dev/L0_*: f16 queries, f32 keys and gates): layer 0, first P tokens */
    const int T = 2048;
    uint16_t *dq = read_dump("dev/L0_iq.bin", (size_t)T * m->ih * m->id * 2);
    float *dk = read_dump("dev/L0_ik.bin", (size_t)T * m->id * 4);
    float *dw = read_dump("dev/L0_iw.bin", (size_t)T * m->ih * 4);
    uint16_t *daq = read_dump("dev/L0_q.bin", (size_t)m->n_heads * T * m->head_dim * 2);
    CHECK(dq && dk && dw && daq, "dumped activations");
    if (dq && dk && dw && daq) {
        double eq = 0, ek = 0, ew = 0, ea = 0, mq = 0, mk = 0, mw = 0, ma = 0;
        for (int i = 0; i < P * m->ih * m->id; i++) {
            eq = fmax(eq, fabs(q[i] - skv_f16_to_f32(dq[i])));
            mq = fmax(mq, fabs(q[i]));
        }
        for (int i = 0; i < P * m->id; i++)
            ek = fmax(ek, fabs(k[i] - dk[i])), mk = fmax(mk, fabs(k[i]));
        for (int i = 0; i < P * m->ih; i++)
            ew = fmax(ew, fabs(w[i] - dw[i])), mw = fmax(mw, fabs(w[i]));
        /* attention queries of layer 0, roped: xn . wq^T */
        float *qkv = malloc(sizeof(float) * P * 3 * m->dim);
        llm_matmul(xn, m->layer[0].wqkv, P, m->dim, 3 * m->dim, 0, qkv);
        for (int t = 0; t < P; t++) {
            llm_rope(qkv + (size_t)t * 3 * m->dim, m->n_heads, m->head_dim, m->head_dim,
                     m->rope_cos, m->rope_sin, t);
            for (int h = 0; h < m->n_heads; h++)
                for (int i = 0; i < m->head_dim; i++) {
                    const float av = qkv[(size_t)t * 3 * m->dim + h * m->head_dim + i];
                    const float d = skv_f16_to_f32(daq[((size_t)h * T + t) * m->head_dim + i]);
                    ea = fmax(ea, fabs(av - d)), ma = fmax(ma, fabs(av));
                }
        }
        free(qkv);
        printf("layer 0 against the f32 checkpoint's dump: indexer q %.1e (of %.1f), k %.1e "
               "(of %.1f), w %.1e (of %.2f), attention q %.1e (of %.1f)\n", eq, mq, ek, mk, ew,
               mw, ea, ma);
        /* f16 weights and f16-stored dumps: within a percent of each tensor's range */
        CHECK(eq < 0.01 * mq && ek < 0.01 * mk && ew < 0.01 * mw && ea < 0.01 * ma,
              "layer 0 differs from the dumped activations");
    }
    free(dq), free(dk), free(dw), free(daq);
    free(q), free(k), free(w), free(xn), free(scratch), free(x0);
    llm_engine_destroy(e1);
    llm_engine_destroy(e2);
    free(ref), free(ik), free(iw), free(a), free(b);
}

static double manifest_nll(void)
{
    FILE *f = fopen(data_path("dev/manifest.json"), "rb");
    if (!f)
        return NAN;
    static char js[1 << 16];
    js[fread(js, 1, sizeof js - 1, f)] = '\0';
    fclose(f);
    const char *p = strstr(js, "\"dense_nll_per_token\"");
    return p && (p = strchr(p, ':')) ? strtod(p + 1, NULL) : NAN;
}

static int eval_named(const llm_model *m, skv_context *ctx, const char *name,
                      const int32_t *tokens, int T, int T0, const int32_t *dense_am, int32_t *am,
                      llm_eval_result *r)
{
    llm_config c;
    if (llm_config_parse(name, m->n_layers, &c)) {
        CHECK(0, "configuration %s", name);
        return -1;
    }
    const int rc = llm_eval(m, ctx, &c, tokens, T, T0, dense_am, am, r);
    CHECK(rc == 0, "%s eval", name);
    return rc;
}

static void test_eval(const llm_model *m, skv_context *ctx, const int32_t *tokens, int T, int T0)
{
    int32_t *dense_am = malloc(sizeof(int32_t) * T), *am = malloc(sizeof(int32_t) * T);
    llm_eval_result dense, r;
    /* the whole file: dense against the manifest */
    if (eval_named(m, ctx, "dense", tokens, T, T0, NULL, dense_am, &dense) == 0) {
        const double want = manifest_nll();
        printf("dense: NLL %.5f per token over %d positions (manifest %.4f; prefill %d)\n",
               dense.nll, T - 1, want, T0);
        CHECK(fabs(dense.nll - want) < 5e-3, "dense NLL %.5f, manifest %.4f", dense.nll, want);
    }

    /* a prefix of S tokens, S/2 prefilled: selections holding every visible token take the
       same rows in the same order as dense (indexer top-k in prefill and decode, the store,
       MISA with every head routed against the plain indexer) */
    enum { S = 512 };
    if (eval_named(m, ctx, "dense", tokens, S, S / 2, NULL, dense_am, &dense))
        return;
    static const char *const same_as[][2] = {{"dsa_k512", "dense"}, {"store_b512", "dense"},
                                             {"misa_h16_k64", "dsa_k64"}};
    for (int i = 0; i < 3; i++) {
        llm_eval_result base = dense;
        int32_t *base_am = dense_am;
        int32_t *tmp = NULL;
        if (strcmp(same_as[i][1], "dense")) {
            tmp = malloc(sizeof(int32_t) * T);
            if (eval_named(m, ctx, same_as[i][1], tokens, S, S / 2, NULL, tmp, &base))
                return;
            base_am = tmp;
        }
        if (eval_named(m, ctx, same_as[i][0], tokens, S, S / 2, base_am, am, &r) == 0) {
            int same = 1;
            for (int p = 0; p < S - 1; p++)
                same &= am[p] == base_am[p];
            printf("%s: agreement %.4f with %s, NLL %.6f (%s %.6f)\n", same_as[i][0], r.agreement,
                   same_as[i][1], r.nll, same_as[i][1], base.nll);
            CHECK(r.agreement == 1.0 && same, "%s: agreement %.6f", same_as[i][0], r.agreement);
            CHECK(r.nll == base.nll, "%s: NLL %.9f != %.9f", same_as[i][0], r.nll, base.nll);
        }
        free(tmp);
    }
    free(dense_am), free(am);
}

int main(int argc, char **argv)
{
    const int T0 = argc > 1 ? atoi(argv[1]) : 2000;
    llm_model m;
    FILE *probe = fopen(data_path("model/manifest.json"), "rb");
    if (!probe) {
        printf("SKIP: the model is absent (%s); set SKV_TEST_DATA to ../shared/data\n",
               data_path("model/manifest.json"));
        return 77;
    }
    fclose(probe);
    int32_t *tokens;
    const int T = llm_read_tokens(data_path("dev/token_ids.bin"), &tokens);
    if (llm_model_load(&m, data_path("model")) || T < 32 || T0 < 1 || T0 >= T) {
        fprintf(stderr, "FAIL: cannot load the model or the tokens\n");
        return 1;
    }
    skv_context *ctx;
    if (skv_context_create(NULL, &ctx) != SKV_OK)
        return 1;
    test_forward(&m, ctx, tokens);
    test_eval(&m, ctx, tokens, T, T0);
    skv_context_destroy(ctx);
    llm_model_free(&m);
    free(tokens);
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures != 0;
}
