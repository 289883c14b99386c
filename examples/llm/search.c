/* The calibration loss of a reuse pattern: the model's mean NLL over the calibration tokens,
 * every layer attending to the top-k its plan gives it (Shared layers reuse their source's).
 * Losses are remembered across searches: the patterns of 6 layers are few. */
#include "search.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "eval.h"


typedef struct calib {
    const llm_model *m;
    skv_context *ctx;
    const int32_t *tokens;
    int T, k, n;
    char pattern[64][LLM_MAX_LAYERS + 1]; /* the memo (up to 64 patterns; more are recomputed) */
    double loss[64];
} calib;

static double calib_loss(const char *pattern, void *user)
{
    calib *c = user;
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->pattern[i], pattern))
            return c->loss[i];
    char name[64];
    snprintf(name, sizeof name, "indexcache_%s_k%d", pattern, c->k);
    llm_config cfg;
    if (llm_config_parse(name, c->m->n_layers, &cfg))
        return NAN;
    const double v = llm_chunk_nll(c->m, c->ctx, &cfg, c->tokens, c->T);
    if (c->n < 64 && !isnan(v)) {
        snprintf(c->pattern[c->n], sizeof c->pattern[0], "%s", pattern);
        c->loss[c->n++] = v;
    }
    return v;
}

static skv_status run_search(calib *c, skv_reuse_search_method method, int width, int n_full,
                             char *pattern, skv_reuse_search_result *res)
{
    skv_reuse_search_params p;
    skv_reuse_search_params_init(&p);
    p.n_layers = c->m->n_layers;
    p.target_full = n_full;
    p.loss = calib_loss;
    p.user = c;
    p.method = method;
    p.beam_width = width;
    res->struct_size = sizeof *res;
    return skv_reuse_search(c->ctx, &p, pattern, NULL, res);
}

int llm_search_pattern(const llm_model *m, skv_context *ctx, const int32_t *tokens, int T, int k,
                       int n_full, char *pattern)
{
    calib c = {.m = m, .ctx = ctx, .tokens = tokens, .T = T, .k = k};
    skv_reuse_search_result res;
    const skv_status s = run_search(&c, SKV_REUSE_SEARCH_AUTO, 4, n_full, pattern, &res);
    if (s != SKV_OK)
        fprintf(stderr, "llm: reuse search: %s\n", skv_status_string(s));
    return s != SKV_OK;
}

int llm_search_report(const llm_model *m, skv_context *ctx, const int32_t *tokens, int T, int k)
{
    static calib c; /* large: the memo */
    c = (calib){.m = m, .ctx = ctx, .tokens = tokens, .T = T, .k = k};
    static const struct { const char *name; skv_reuse_search_method method; int width; } runs[] = {
        {"greedy", SKV_REUSE_SEARCH_GREEDY, 1},
        {"beam2", SKV_REUSE_SEARCH_BEAM, 2},
        {"exhaustive", SKV_REUSE_SEARCH_EXHAUSTIVE, 1}};
    for (int n_full = 2; n_full <= 3; n_full++)
        for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
            char pattern[LLM_MAX_LAYERS + 1];
            skv_reuse_search_result res;
            const skv_status s = run_search(&c, runs[r].method, runs[r].width, n_full, pattern, &res);
            if (s != SKV_OK) {
                fprintf(stderr, "llm: reuse search: %s\n", skv_status_string(s));
                return 1;
            }
            printf("{\"search\": \"%s\", \"full_layers\": %d, \"pattern\": \"%s\", \"nll\": %.5f, "
                   "\"loss_calls\": %lld, \"calib_tokens\": %d, \"k\": %d}\n",
                   runs[r].name, n_full, pattern, calib_loss(pattern, &c), (long long)res.n_evals,
                   T, k);
            fflush(stdout);
        }
    for (int i = 0; i < c.n; i++)
        printf("{\"pattern\": \"%s\", \"nll\": %.5f, \"calib_tokens\": %d, \"k\": %d}\n",
               c.pattern[i], c.loss[i], T, k);
    return 0;
}
