/* llm: the model of ../shared/data/model run end to end through sparsekv.
 *
 *   llm eval --model DIR --tokens FILE [--from T0] [--configs A,B,..] [--searched PATTERN]
 *            [--prefill selected|dense]
 *   llm generate --model DIR --prompt TEXT [-n N] [--config NAME]
 *   llm search --model DIR --tokens FILE [--calib N] [--k K]
 *
 * eval prints one JSON line per configuration (engine.h lists them); search prints what the
 * greedy, beam and exhaustive IndexCache searches find for 2 and 3 Full layers, on the model's
 * NLL over the first N tokens. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eval.h"
#include "search.h"
#ifdef LLM_HAVE_SENTENCEPIECE
#include "tokenizer.h"
#endif

static const char *const default_configs =
    "dense,dsa_k64,dsa_k128,dsa_k256,indexcache_FSSFSS_k128,SEARCHED,misa_h4_k128,misa_h8_k128,"
    "misa_dagger_h8_k128,hisa_k128,store_b64,store_b128,store_b256,store_dsa_k128";

typedef struct args {
    const char *model, *tokens, *prompt, *configs, *config, *searched;
    int from, n, calib, k, dense_prefill;
} args;

static int usage(void)
{
    fprintf(stderr,
            "usage: llm eval --model DIR --tokens FILE [--from T0] [--configs A,B,..] "
            "[--searched PATTERN] [--prefill selected|dense]\n"
            "       llm generate --model DIR --prompt TEXT [-n N] [--config NAME]\n"
            "       llm search --model DIR --tokens FILE [--calib N] [--k K]\n");
    return 2;
}

static int parse(int argc, char **argv, args *a)
{
    *a = (args){.configs = default_configs, .config = "dense", .from = 1024, .n = 32,
                .calib = 1024, .k = 64};
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return -1;
        if (!strcmp(o, "--model"))
            a->model = v;
        else if (!strcmp(o, "--tokens"))
            a->tokens = v;
        else if (!strcmp(o, "--prompt"))
            a->prompt = v;
        else if (!strcmp(o, "--configs"))
            a->configs = v;
        else if (!strcmp(o, "--config"))
            a->config = v;
        else if (!strcmp(o, "--searched"))
            a->searched = v;
        else if (!strcmp(o, "--from"))
            a->from = atoi(v);
        else if (!strcmp(o, "-n"))
            a->n = atoi(v);
        else if (!strcmp(o, "--calib"))
            a->calib = atoi(v);
        else if (!strcmp(o, "--k"))
            a->k = atoi(v);
        else if (!strcmp(o, "--prefill") && (!strcmp(v, "dense") || !strcmp(v, "selected")))
            a->dense_prefill = !strcmp(v, "dense");
        else
            return -1;
        i++;
    }
    return a->model ? 0 : -1;
}

static const char *prefill_rule(const llm_config *c)
{
    switch (c->kind) {
    case LLM_DENSE: return "dense";
    case LLM_INDEXER: return c->dense_prefill ? "dense (keys cached)" : "selected";
    default: return "dense, then appended to the store";
    }
}

static int cmd_eval(const llm_model *m, skv_context *ctx, const args *a)
{
    int32_t *tokens;
    const int T = a->tokens ? llm_read_tokens(a->tokens, &tokens) : 0;
    if (T < 2 || T > m->max_seq) {
        fprintf(stderr, "llm: cannot read tokens from %s\n", a->tokens ? a->tokens : "(none)");
        return 1;
    }
    int32_t *dense_argmax = malloc((size_t)T * 4);
    char *list = strdup(a->configs), *save = NULL;
    int rc = 0, have_dense = 0;
    for (char *name = strtok_r(list, ",", &save); name && !rc; name = strtok_r(NULL, ",", &save)) {
        char buf[64];
        if (!strcmp(name, "SEARCHED")) { /* the pattern of the loss-driven search, k = 128 */
            char pat[LLM_MAX_LAYERS + 1];
            if (a->searched)
                snprintf(pat, sizeof pat, "%s", a->searched);
            else if (llm_search_pattern(m, ctx, tokens, a->from < T ? a->from : T, a->k, 2, pat)) {
                rc = 1;
                break;
            }
            snprintf(buf, sizeof buf, "indexcache_%s_k128", pat);
            name = buf;
        }
        llm_config c;
        if (llm_config_parse(name, m->n_layers, &c)) {
            fprintf(stderr, "llm: unknown configuration '%s'\n", name);
            rc = 1;
            break;
        }
        c.dense_prefill = a->dense_prefill;
        llm_eval_result r;
        const int is_dense = c.kind == LLM_DENSE;
        if (llm_eval(m, ctx, &c, tokens, T, a->from, have_dense ? dense_argmax : NULL,
                     is_dense ? dense_argmax : NULL, &r)) {
            rc = 1;
            break;
        }
        have_dense |= is_dense;
        printf("{\"config\": \"%s\", \"nll_per_token\": %.5f, \"decode_nll_per_token\": %.5f, "
               "\"argmax_agreement\": ",
               c.name, r.nll, r.decode_nll);
        if (isnan(r.agreement))
            printf("null");
        else
            printf("%.5f", r.agreement);
        printf(", \"tokens_per_s\": %.1f, \"prefill_tokens_per_s\": %.1f, \"tokens\": %d, "
               "\"from\": %d, \"decoded\": %d, \"k\": %d, \"budget\": %d, \"prefill\": \"%s\", "
               "\"ms_per_token\": {\"projections\": %.4f, \"indexer\": %.4f, \"selection\": %.4f, "
               "\"attention\": %.4f}}\n",
               r.tokens_per_s, r.prefill_tokens_per_s, T, a->from, r.decoded, c.k, c.budget,
               prefill_rule(&c), r.per_token.proj, r.per_token.indexer, r.per_token.select,
               r.per_token.attn);
        fflush(stdout);
    }
    free(list);
    free(dense_argmax);
    free(tokens);
    return rc;
}

static int cmd_search(const llm_model *m, skv_context *ctx, const args *a)
{
    int32_t *tokens;
    const int T = a->tokens ? llm_read_tokens(a->tokens, &tokens) : 0;
    if (T < 2) {
        fprintf(stderr, "llm: cannot read tokens from %s\n", a->tokens ? a->tokens : "(none)");
        return 1;
    }
    const int rc = llm_search_report(m, ctx, tokens, a->calib < T ? a->calib : T, a->k);
    free(tokens);
    return rc;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static int cmd_generate(const llm_model *m, skv_context *ctx, const args *a)
{
#ifndef LLM_HAVE_SENTENCEPIECE
    (void)m, (void)ctx, (void)a;
    fprintf(stderr, "llm: built without SentencePiece (libsentencepiece-dev): no generate\n");
    return 1;
#else
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizer.model", a->model);
    llm_config c;
    if (!a->prompt || a->n < 0 || llm_config_parse(a->config, m->n_layers, &c))
        return usage();
    llm_tokenizer *tk = llm_tokenizer_open(path);
    if (!tk)
        return 1;
    const int cap = m->max_seq;
    int32_t *ids = malloc((size_t)cap * 4);
    ids[0] = llm_tokenizer_bos(tk);
    int n = llm_tokenizer_encode(tk, a->prompt, ids + 1, cap - 1);
    int rc = 1;
    if (n < 0 || n + 1 + a->n > cap) {
        fprintf(stderr, "llm: prompt and %d new tokens exceed %d tokens\n", a->n, cap);
        goto out_tok;
    }
    n += 1;
    llm_engine *e = llm_engine_create(m, &c, ctx, n + a->n, n);
    float *logits = malloc((size_t)n * m->vocab * 4);
    if (!e || !logits)
        goto out;
    double t0 = now_ms();
    if (llm_engine_step(e, ids, n, logits))
        goto out;
    double ms = now_ms() - t0;
    printf("prompt: %d tokens (%s); each line: a new token and the step that produced it\n", n,
           c.name);
    const int first = n;
    for (int i = 0; i < a->n; i++) {
        if (i > 0) { /* one decode step: the previous token in, logits for this one out */
            t0 = now_ms();
            if (llm_engine_step(e, ids + first + i - 1, 1, logits))
                goto out;
            ms = now_ms() - t0;
        }
        int next;
        llm_nll(logits + (size_t)(i == 0 ? n - 1 : 0) * m->vocab, m->vocab, 0, &next);
        ids[first + i] = next;
        char *piece = llm_tokenizer_decode(tk, ids + first + i, 1);
        printf("token %3d  id %4d  %8.3f ms%s  %s\n", i, next, ms, i ? "" : " (prefill)",
               piece ? piece : "");
        free(piece);
    }
    char *text = llm_tokenizer_decode(tk, ids + 1, first - 1 + a->n);
    printf("%s\n", text ? text : "");
    free(text);
    rc = 0;
out:
    free(logits);
    llm_engine_destroy(e);
out_tok:
    free(ids);
    llm_tokenizer_close(tk);
    return rc;
#endif
}

int main(int argc, char **argv)
{
    args a;
    if (argc < 2 || parse(argc, argv, &a))
        return usage();
    llm_model m;
    if (llm_model_load(&m, a.model))
        return 1;
    skv_context *ctx;
    if (skv_context_create(NULL, &ctx) != SKV_OK)
        return 1;
    int rc;
    if (!strcmp(argv[1], "eval"))
        rc = cmd_eval(&m, ctx, &a);
    else if (!strcmp(argv[1], "generate"))
        rc = cmd_generate(&m, ctx, &a);
    else if (!strcmp(argv[1], "search"))
        rc = cmd_search(&m, ctx, &a);
    else
        rc = usage();
    skv_context_destroy(ctx);
    llm_model_free(&m);
    return rc;
}
