/* Teacher-forced evaluation: the prefill chunk, then one token per step, scoring every
 * position's next-token prediction. */
#include "eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Adds the NLL of positions p0..p0+n-1 (predicting the token after each) to *sum. */
static void score(const llm_model *m, const float *logits, const int32_t *tokens, int p0, int n,
                  double *sum, int32_t *argmax_out)
{
    for (int t = 0; t < n; t++) {
        int am;
        *sum += llm_nll(logits + (size_t)t * m->vocab, m->vocab, tokens[p0 + t + 1], &am);
        if (argmax_out)
            argmax_out[p0 + t] = am;
    }
}

int llm_eval(const llm_model *m, skv_context *ctx, const llm_config *c, const int32_t *tokens,
             int T, int T0, const int32_t *dense_argmax, int32_t *argmax_out, llm_eval_result *r)
{
    memset(r, 0, sizeof *r);
    if (T < 2 || T0 < 1 || T0 > T - 1) {
        fprintf(stderr, "llm: need 1 <= T0 <= T - 1 (T0 %d, T %d)\n", T0, T);
        return -1;
    }
    llm_engine *e = llm_engine_create(m, c, ctx, T, T0);
    float *logits = malloc((size_t)T0 * m->vocab * sizeof *logits);
    int rc = -1;
    if (!e || !logits) {
        fprintf(stderr, "llm: cannot create the engine for %s\n", c->name);
        goto out;
    }
    double prefill_sum = 0, decode_sum = 0, t0 = now_s();
    if (llm_engine_step(e, tokens, T0, logits))
        goto out;
    r->prefill_tokens_per_s = T0 / (now_s() - t0);
    score(m, logits, tokens, 0, T0, &prefill_sum, argmax_out);
    llm_engine_reset_timing(e);
    int agree = 0;
    t0 = now_s();
    for (int p = T0; p < T - 1; p++) {
        if (llm_engine_step(e, tokens + p, 1, logits))
            goto out;
        int32_t am;
        score(m, logits, tokens, p, 1, &decode_sum, NULL);
        llm_nll(logits, m->vocab, 0, &am);
        if (argmax_out)
            argmax_out[p] = am;
        agree += dense_argmax && dense_argmax[p] == am;
    }
    const double secs = now_s() - t0;
    r->decoded = T - 1 - T0;
    r->tokens_per_s = r->decoded / secs;
    r->nll = (prefill_sum + decode_sum) / (T - 1);
    r->decode_nll = r->decoded ? decode_sum / r->decoded : NAN;
    r->agreement = dense_argmax && r->decoded ? (double)agree / r->decoded : NAN;
    const llm_timing *tm = llm_engine_timing(e);
    const double d = r->decoded ? r->decoded : 1;
    r->per_token = (llm_timing){tm->proj / d, tm->indexer / d, tm->select / d, tm->attn / d};
    rc = 0;
out:
    free(logits);
    llm_engine_destroy(e);
    return rc;
}

double llm_chunk_nll(const llm_model *m, skv_context *ctx, const llm_config *c,
                     const int32_t *tokens, int T)
{
    llm_engine *e = llm_engine_create(m, c, ctx, T, T);
    float *logits = malloc((size_t)T * m->vocab * sizeof *logits);
    double sum = NAN;
    if (e && logits && llm_engine_step(e, tokens, T - 1, logits) == 0) {
        sum = 0;
        score(m, logits, tokens, 0, T - 1, &sum, NULL);
    }
    free(logits);
    llm_engine_destroy(e);
    return sum / (T - 1);
}
