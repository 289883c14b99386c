/* IndexCache's pattern search driven by the model's own loss (skv_reuse_search). */
#ifndef LLM_SEARCH_H
#define LLM_SEARCH_H

#include "engine.h"

/* The pattern with n_full Full layers that skv_reuse_search (AUTO: exhaustive here) finds on
 * the NLL of tokens[0..T) at top-k; pattern[n_layers + 1]. 0 on success. */
int llm_search_pattern(const llm_model *m, skv_context *ctx, const int32_t *tokens, int T, int k,
                       int n_full, char *pattern);

/* Greedy, beam (width 2) and exhaustive for 2 and 3 Full layers, one JSON line each, then the
 * NLL of every pattern evaluated. 0 on success. */
int llm_search_report(const llm_model *m, skv_context *ctx, const int32_t *tokens, int T, int k);

#endif
