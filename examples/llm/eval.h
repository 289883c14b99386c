/* Teacher-forced evaluation of a configuration over a token file. */
#ifndef LLM_EVAL_H
#define LLM_EVAL_H

#include "engine.h"

typedef struct llm_eval_result {
    double nll;          /* mean next-token cross-entropy over positions 0..T-2 */
    double decode_nll;   /* the same over the decoded positions T0..T-2 */
    double agreement;    /* share of decoded positions whose argmax equals dense's (NaN without) */
    double tokens_per_s; /* decode steps per second */
    double prefill_tokens_per_s;
    llm_timing per_token; /* ms per decode step, by part */
    int decoded;          /* decode steps: T - 1 - T0 */
} llm_eval_result;

/* Prefills tokens[0..T0) in one step, then decodes one token per step up to T-2. argmax_out
 * [T] (may be NULL) gets each position's most likely next token; dense_argmax (may be NULL)
 * is the dense run's, for the agreement. Returns 0, or -1 after printing why. */
int llm_eval(const llm_model *m, skv_context *ctx, const llm_config *c, const int32_t *tokens,
             int T, int T0, const int32_t *dense_argmax, int32_t *argmax_out, llm_eval_result *r);

/* Mean NLL of positions 0..T-2 with everything in one step (each token attending to its own
 * selection): the calibration loss of the reuse search. NaN on failure. */
double llm_chunk_nll(const llm_model *m, skv_context *ctx, const llm_config *c,
                     const int32_t *tokens, int T);

#endif
