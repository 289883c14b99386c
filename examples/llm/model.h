/* The small Llama-style model of ../shared/data/model (its manifest.json gives the formulas):
 * weights loaded from f16 (f32 for the indexer) into f32, and the pieces of its forward pass
 * that do not depend on how attention selects tokens. */
#ifndef LLM_MODEL_H
#define LLM_MODEL_H

#include <stdint.h>

enum { LLM_MAX_LAYERS = 16 };

typedef struct llm_layer {
    float *attn_norm, *ffn_norm; /* [dim] */
    float *wqkv;                 /* [3 dim][dim]: wq, wk, wv stacked, one sgemm */
    float *wo;                   /* [dim][dim] */
    float *w13;                  /* [2 hidden][dim]: w1, w3 stacked */
    float *w2;                   /* [dim][hidden] */
    float *wi;                   /* indexer [ih * id + id + ih][dim]: wq, wk, ww stacked */
    float *kn_w, *kn_b;          /* indexer key LayerNorm [id] */
} llm_layer;

typedef struct llm_model {
    int dim, n_layers, n_heads, head_dim, hidden, vocab, max_seq;
    int ih, id, irope;  /* indexer heads, head size, roped dims */
    double theta, eps;
    float *tok;         /* [vocab][dim], tied with the output */
    float *norm;        /* [dim] */
    llm_layer layer[LLM_MAX_LAYERS];
    float *rope_cos, *rope_sin;   /* [max_seq][head_dim / 2] */
    float *irope_cos, *irope_sin; /* [max_seq][irope / 2]: the indexer's angles over id dims */
} llm_model;

/* Loads DIR/manifest.json and the tensors it lists; 0 on success, else prints why. */
int llm_model_load(llm_model *m, const char *dir);
void llm_model_free(llm_model *m);

/* y[n][out] = x[n][in] . W[out][in]^T (+ y when accumulate): OpenBLAS sgemm. */
void llm_matmul(const float *x, const float *W, int n, int in, int out, int accumulate, float *y);
/* y[n][dim] = x / rms(x) * w, per row. */
void llm_rmsnorm(const float *x, const float *w, int n, int dim, double eps, float *y);
/* Rotates pairs (2i, 2i+1) of the first `dims` values of each of n_vec vectors of `stride`
 * floats at position pos, with the angle tables of rows [pos][dims / 2]. */
void llm_rope(float *v, int n_vec, int stride, int dims, const float *cos_t, const float *sin_t,
              int pos);
/* The SwiGLU feed-forward block of layer l on n rows, added to x; scratch [n][3 hidden + dim]. */
void llm_ffn(const llm_model *m, int l, float *x, int n, float *scratch);
/* logits[n][vocab] of the final hidden states x[n][dim]; scratch [n][dim]. */
void llm_logits(const llm_model *m, const float *x, int n, float *scratch, float *logits);
/* The indexer of layer l on the normed input xn[n][dim] at positions pos0..: q [n][ih][id],
 * k [n][id], w [n][ih] (scales folded in); scratch [n][ih * id + id + ih]. */
void llm_indexer_project(const llm_model *m, int l, const float *xn, int n, int pos0, float *q,
                         float *k, float *w, float *scratch);

/* -log softmax(logits)[target] and the argmax (ties to the lower id), in double. */
double llm_nll(const float *logits, int vocab, int target, int *argmax);

/* Reads a raw little-endian int32 token file; returns the count (0 on failure). */
int llm_read_tokens(const char *path, int32_t **out);

#endif
