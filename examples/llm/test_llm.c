/* The llm program checked on the real model (skipped when ../shared/data is absent):
 * 1. its forward pass, by prefill and by decode steps, and its indexer projections, against a
 *    plain double-precision implementation of manifest.json's formulas on the first positions;
 * 2. the eval over the dev tokens: dense reproduces the manifest's NLL within 5e-3, and
 *    selections that keep every visible token (top-k with k >= the context, the store with a
 *    budget >= the context) agree with dense on every position, to the bit.
 * Usage: test_llm [T0] (the eval's prefill length; default 1920 to keep the test short). */
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

static void test_eval(const llm_model *m, skv_context *ctx, const int32_t *tokens, int T, int T0)
{
    int32_t *dense_am = malloc(sizeof(int32_t) * T), *am = malloc(sizeof(int32_t) * T);
    llm_config c;
    llm_eval_result dense, r;
    llm_config_parse("dense", m->n_layers, &c);
    CHECK(llm_eval(m, ctx, &c, tokens, T, T0, NULL, dense_am, &dense) == 0, "dense eval");
    const double want = manifest_nll();
    printf("dense: NLL %.5f per token over %d positions (manifest %.4f), %.1f tokens/s\n",
           dense.nll, T - 1, want, dense.tokens_per_s);
    CHECK(fabs(dense.nll - want) < 5e-3, "dense NLL %.5f, manifest %.4f", dense.nll, want);

    /* selections holding every visible token: the same rows in the same order as dense */
    char name[64];
    const char *const full[] = {"dsa_k%d", "store_b%d"};
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, full[i], T);
        CHECK(llm_config_parse(name, m->n_layers, &c) == 0, "%s", name);
        CHECK(llm_eval(m, ctx, &c, tokens, T, T0, dense_am, am, &r) == 0, "%s eval", name);
        int same = 1;
        for (int p = 0; p < T - 1; p++)
            same &= am[p] == dense_am[p];
        printf("%s: agreement %.4f, NLL %.5f (dense %.5f)\n", name, r.agreement, r.nll, dense.nll);
        CHECK(r.agreement == 1.0 && same, "%s: agreement %.6f", name, r.agreement);
        CHECK(r.nll == dense.nll, "%s: NLL %.9f != dense %.9f", name, r.nll, dense.nll);
    }
    free(dense_am), free(am);
}

int main(int argc, char **argv)
{
    const int T0 = argc > 1 ? atoi(argv[1]) : 1920;
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
