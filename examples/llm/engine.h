/* The model run the way an engine runs it on sparsekv: one forward step of n tokens at a time
 * over a sequence, with attention over the tokens a configuration selects.
 *
 * Configurations (names as `llm eval --configs` takes them):
 *   dense                  every visible token (no indexer, no selection)
 *   dsa_k<K>               the indexer's top-K in every layer (skv_reuse_select_kcache, plan
 *                          all Full)
 *   indexcache_<PAT>_k<K>  IndexCache: Full layers ('F') run their indexer, Shared ('S') reuse
 *                          the top-K of the Full layer before them
 *   misa_h<H>_k<K>         MISA: the top-H of the 16 indexer heads routed on pooled blocks of
 *                          64 tokens score the keys
 *   misa_dagger_h<H>_k<K>  MISA-dagger: 4K candidates of that pass, re-ranked by all heads
 *   hisa_k<K>              HISA: blocks of 64 scored on their mean keys, ceil(4K / 64) of them
 *                          (first and last always) scored exactly
 *   store_b<B>             no indexer: the clustered KV store picks B tokens per KV head
 *                          (4 sinks, the recent window, pages by query-cluster similarity)
 *   store_dsa_k<K>         the offloaded DSA path: the store serves the indexer's top-K
 *                          (skv_store_select_tokens), plus its sinks and window
 * By default every indexer method runs in the prefill chunk too (each prompt token attends to
 * its own selection, as DSA does), or, with dense_prefill, attends densely there (its keys are
 * still cached); the store methods attend densely in the prefill chunk (the prompt's rows are
 * then appended to the store) and select from the store in decode. Routed methods
 * route at every length (their length gates are set to 0: at 2048 tokens the library's
 * measured crossovers would run them dense). */
#ifndef LLM_ENGINE_H
#define LLM_ENGINE_H

#include <sparsekv/sparsekv.h>

#include "model.h"

typedef enum llm_kind { LLM_DENSE, LLM_INDEXER, LLM_STORE, LLM_STORE_TOPK } llm_kind;

typedef struct llm_config {
    char name[64];
    llm_kind kind;
    char pattern[LLM_MAX_LAYERS + 1]; /* reuse pattern of indexer methods */
    int k;                            /* top-k of indexer methods */
    skv_select_method method;
    int misa_heads, misa_dagger;
    int budget;                       /* store tokens per KV head */
    int dense_prefill;                /* 1: steps of several tokens attend densely (indexer
                                         keys are still cached); set by the caller */
} llm_config;

/* Parses a configuration name (above) for a model of n_layers; 0 on success. */
int llm_config_parse(const char *name, int n_layers, llm_config *out);

/* Time spent per part of the forward pass, in ms (accumulated). */
typedef struct llm_timing {
    double proj, indexer, select, attn;
} llm_timing;

typedef struct llm_engine llm_engine;

/* An engine for one sequence of up to `capacity` tokens, steps of at most max_step tokens. */
llm_engine *llm_engine_create(const llm_model *m, const llm_config *c, skv_context *ctx,
                              int capacity, int max_step);
void llm_engine_destroy(llm_engine *e);
/* Runs tokens[0..n) at the next n positions; logits [n][vocab] (may be NULL: the last layer's
 * output is then not projected). Returns 0, or -1 after printing the failure. */
int llm_engine_step(llm_engine *e, const int32_t *tokens, int n, float *logits);
int llm_engine_length(const llm_engine *e);
const llm_timing *llm_engine_timing(const llm_engine *e);
void llm_engine_reset_timing(llm_engine *e);

#endif
