/* Loading the model and the parts of its forward pass shared by every attention method. */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sparsekv/sparsekv.h>

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s)
        s[fread(s, 1, (size_t)n, f)] = '\0';
    fclose(f);
    return s;
}

/* The number after "key": in the JSON text (the first occurrence), or NaN. */
static double json_get(const char *json, const char *key)
{
    char pat[96];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p || !(p = strchr(p + strlen(pat), ':')))
        return NAN;
    return strtod(p + 1, NULL);
}

/* Tensor `name` of n elements from DIR/name.bin, f16 or f32 by its size, widened to f32. */
static float *load_tensor(const char *dir, const char *name, size_t n)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "llm: cannot open %s\n", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    const long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *out = malloc(n * sizeof *out);
    void *raw = malloc(bytes > 0 ? (size_t)bytes : 1);
    int ok = out && raw && (bytes == (long)(n * 2) || bytes == (long)(n * 4)) &&
             fread(raw, 1, (size_t)bytes, f) == (size_t)bytes;
    fclose(f);
    if (ok)
        ok = skv_convert(SKV_F32, out, bytes == (long)(n * 2) ? SKV_F16 : SKV_F32, raw,
                         (int64_t)n) == SKV_OK;
    free(raw);
    if (!ok) {
        fprintf(stderr, "llm: %s: expected %zu f16 or f32 values\n", path, n);
        free(out);
        return NULL;
    }
    return out;
}

/* Stacks tensors (rows[i] x cols each) into one matrix; NULL if any is missing. */
static float *load_stacked(const char *dir, int l, const char *const *names, const int *rows,
                           int count, int cols)
{
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += (size_t)rows[i] * cols;
    float *m = malloc(total * sizeof *m), *at = m;
    for (int i = 0; m && i < count; i++) {
        char name[96];
        snprintf(name, sizeof name, names[i], l);
        float *t = load_tensor(dir, name, (size_t)rows[i] * cols);
        if (!t) {
            free(m);
            return NULL;
        }
        memcpy(at, t, (size_t)rows[i] * cols * sizeof *t);
        at += (size_t)rows[i] * cols;
        free(t);
    }
    return m;
}

static void rope_table(int max_seq, int half, int dims, double theta, float **c, float **s)
{
    *c = malloc((size_t)max_seq * half * sizeof **c);
    *s = malloc((size_t)max_seq * half * sizeof **s);
    for (int p = 0; p < max_seq; p++)
        for (int i = 0; i < half; i++) {
            const double a = p * pow(theta, -2.0 * i / dims);
            (*c)[(size_t)p * half + i] = (float)cos(a);
            (*s)[(size_t)p * half + i] = (float)sin(a);
        }
}

int llm_model_load(llm_model *m, const char *dir)
{
    memset(m, 0, sizeof *m);
    char path[1200];
    snprintf(path, sizeof path, "%s/manifest.json", dir);
    char *js = read_text(path);
    if (!js) {
        fprintf(stderr, "llm: cannot read %s\n", path);
        return -1;
    }
    m->dim = (int)json_get(js, "dim"), m->n_layers = (int)json_get(js, "n_layers");
    m->n_heads = (int)json_get(js, "n_heads"), m->hidden = (int)json_get(js, "hidden_dim");
    m->vocab = (int)json_get(js, "vocab_size"), m->max_seq = (int)json_get(js, "max_seq_len");
    m->theta = json_get(js, "rope_theta"), m->eps = json_get(js, "norm_eps");
    m->ih = (int)json_get(js, "heads"), m->irope = (int)json_get(js, "rope_dims");
    const char *idx = strstr(js, "\"indexer\"");
    m->id = idx ? (int)json_get(idx, "dim") : 0;
    const int n_kv = (int)json_get(js, "n_kv_heads");
    free(js);
    if (m->dim <= 0 || m->n_heads <= 0 || m->dim % m->n_heads || n_kv != m->n_heads ||
        m->n_layers < 1 || m->n_layers > LLM_MAX_LAYERS || m->hidden <= 0 || m->vocab <= 0 ||
        m->max_seq <= 0 || !(m->theta > 0) || !(m->eps > 0) || m->ih <= 0 || m->id <= 0 ||
        m->irope <= 0 || m->irope > m->id || m->irope % 2) {
        fprintf(stderr, "llm: %s: unexpected configuration (this program runs MHA Llama "
                        "models with a DSA indexer)\n", path);
        return -1;
    }
    m->head_dim = m->dim / m->n_heads;
    const int D = m->dim, F = m->hidden;
    int ok = (m->tok = load_tensor(dir, "tok.weight", (size_t)m->vocab * D)) &&
             (m->norm = load_tensor(dir, "norm.weight", (size_t)D));
    for (int l = 0; ok && l < m->n_layers; l++) {
        llm_layer *L = &m->layer[l];
        char name[96];
        snprintf(name, sizeof name, "layers.%d.attn_norm.weight", l);
        ok = (L->attn_norm = load_tensor(dir, name, (size_t)D)) != NULL;
        snprintf(name, sizeof name, "layers.%d.ffn_norm.weight", l);
        ok = ok && (L->ffn_norm = load_tensor(dir, name, (size_t)D));
        snprintf(name, sizeof name, "layers.%d.wo.weight", l);
        ok = ok && (L->wo = load_tensor(dir, name, (size_t)D * D));
        snprintf(name, sizeof name, "layers.%d.w2.weight", l);
        ok = ok && (L->w2 = load_tensor(dir, name, (size_t)D * F));
        snprintf(name, sizeof name, "indexer.%d.kn.weight", l);
        ok = ok && (L->kn_w = load_tensor(dir, name, (size_t)m->id));
        snprintf(name, sizeof name, "indexer.%d.kn.bias", l);
        ok = ok && (L->kn_b = load_tensor(dir, name, (size_t)m->id));
        static const char *const qkv[] = {"layers.%d.wq.weight", "layers.%d.wk.weight",
                                          "layers.%d.wv.weight"};
        static const char *const w13[] = {"layers.%d.w1.weight", "layers.%d.w3.weight"};
        static const char *const wi[] = {"indexer.%d.wq.weight", "indexer.%d.wk.weight",
                                         "indexer.%d.ww.weight"};
        const int qkv_rows[] = {D, D, D}, w13_rows[] = {F, F};
        const int wi_rows[] = {m->ih * m->id, m->id, m->ih};
        ok = ok && (L->wqkv = load_stacked(dir, l, qkv, qkv_rows, 3, D));
        ok = ok && (L->w13 = load_stacked(dir, l, w13, w13_rows, 2, D));
        ok = ok && (L->wi = load_stacked(dir, l, wi, wi_rows, 3, D));
    }
    if (!ok) {
        llm_model_free(m);
        return -1;
    }
    rope_table(m->max_seq, m->head_dim / 2, m->head_dim, m->theta, &m->rope_cos, &m->rope_sin);
    rope_table(m->max_seq, m->irope / 2, m->id, m->theta, &m->irope_cos, &m->irope_sin);
    return 0;
}

void llm_model_free(llm_model *m)
{
    free(m->tok), free(m->norm);
    for (int l = 0; l < LLM_MAX_LAYERS; l++) {
        llm_layer *L = &m->layer[l];
        free(L->attn_norm), free(L->ffn_norm), free(L->wqkv), free(L->wo), free(L->w13);
        free(L->w2), free(L->wi), free(L->kn_w), free(L->kn_b);
    }
    free(m->rope_cos), free(m->rope_sin), free(m->irope_cos), free(m->irope_sin);
    memset(m, 0, sizeof *m);
}

void llm_matmul(const float *x, const float *W, int n, int in, int out, int accumulate, float *y)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, W, in,
                accumulate ? 1.0f : 0.0f, y, out);
}

void llm_rmsnorm(const float *x, const float *w, int n, int dim, double eps, float *y)
{
    for (int t = 0; t < n; t++) {
        const float *r = x + (size_t)t * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++)
            ss += (double)r[i] * r[i];
        const float inv = (float)(1.0 / sqrt(ss / dim + eps));
        for (int i = 0; i < dim; i++)
            y[(size_t)t * dim + i] = r[i] * inv * w[i];
    }
}

void llm_rope(float *v, int n_vec, int stride, int dims, const float *cos_t, const float *sin_t,
              int pos)
{
    const int half = dims / 2;
    const float *c = cos_t + (size_t)pos * half, *s = sin_t + (size_t)pos * half;
    for (int h = 0; h < n_vec; h++) {
        float *x = v + (size_t)h * stride;
        for (int i = 0; i < half; i++) {
            const float a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = a * c[i] - b * s[i];
            x[2 * i + 1] = a * s[i] + b * c[i];
        }
    }
}

void llm_ffn(const llm_model *m, int l, float *x, int n, float *scratch)
{
    const llm_layer *L = &m->layer[l];
    const int D = m->dim, F = m->hidden;
    float *xn = scratch, *h13 = xn + (size_t)n * D, *g = h13 + (size_t)n * 2 * F;
    llm_rmsnorm(x, L->ffn_norm, n, D, m->eps, xn);
    llm_matmul(xn, L->w13, n, D, 2 * F, 0, h13);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < F; i++) {
            const float a = h13[(size_t)t * 2 * F + i], b = h13[(size_t)t * 2 * F + F + i];
            g[(size_t)t * F + i] = a / (1.0f + expf(-a)) * b;
        }
    llm_matmul(g, L->w2, n, F, D, 1, x);
}

void llm_logits(const llm_model *m, const float *x, int n, float *scratch, float *logits)
{
    llm_rmsnorm(x, m->norm, n, m->dim, m->eps, scratch);
    llm_matmul(scratch, m->tok, n, m->dim, m->vocab, 0, logits);
}

void llm_indexer_project(const llm_model *m, int l, const float *xn, int n, int pos0, float *q,
                         float *k, float *w, float *scratch)
{
    const llm_layer *L = &m->layer[l];
    const int H = m->ih, Di = m->id, cols = H * Di + Di + H;
    llm_matmul(xn, L->wi, n, m->dim, cols, 0, scratch);
    const float wscale = (float)(1.0 / sqrt((double)H) / sqrt((double)Di));
    for (int t = 0; t < n; t++) {
        const float *r = scratch + (size_t)t * cols;
        float *qt = q + (size_t)t * H * Di, *kt = k + (size_t)t * Di;
        memcpy(qt, r, sizeof(float) * H * Di);
        llm_rope(qt, H, Di, m->irope, m->irope_cos, m->irope_sin, pos0 + t);
        double mean = 0, var = 0; /* LayerNorm of the key */
        for (int i = 0; i < Di; i++)
            mean += r[H * Di + i];
        mean /= Di;
        for (int i = 0; i < Di; i++)
            var += (r[H * Di + i] - mean) * (r[H * Di + i] - mean);
        const double inv = 1.0 / sqrt(var / Di + m->eps);
        for (int i = 0; i < Di; i++)
            kt[i] = (float)((r[H * Di + i] - mean) * inv) * L->kn_w[i] + L->kn_b[i];
        llm_rope(kt, 1, Di, m->irope, m->irope_cos, m->irope_sin, pos0 + t);
        for (int h = 0; h < H; h++)
            w[(size_t)t * H + h] = r[H * Di + Di + h] * wscale;
    }
}

double llm_nll(const float *logits, int vocab, int target, int *argmax)
{
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    double sum = 0;
    for (int i = 0; i < vocab; i++)
        sum += exp((double)logits[i] - logits[best]);
    if (argmax)
        *argmax = best;
    return log(sum) + logits[best] - logits[target];
}

int llm_read_tokens(const char *path, int32_t **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    const long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    int n = bytes > 0 && bytes % 4 == 0 ? (int)(bytes / 4) : 0;
    int32_t *t = n ? malloc((size_t)bytes) : NULL;
    if (!t || fread(t, 4, (size_t)n, f) != (size_t)n) {
        free(t);
        n = 0;
        t = NULL;
    }
    fclose(f);
    *out = t;
    return n;
}
