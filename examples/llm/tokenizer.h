/* SentencePiece (Debian's libsentencepiece) behind a small C interface. */
#ifndef LLM_TOKENIZER_H
#define LLM_TOKENIZER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct llm_tokenizer llm_tokenizer;

/* NULL (with the reason printed) when the model cannot be loaded. */
llm_tokenizer *llm_tokenizer_open(const char *model_path);
void llm_tokenizer_close(llm_tokenizer *t);
int llm_tokenizer_bos(const llm_tokenizer *t);
/* Token ids of text into ids[max]; returns the count (at most max), or -1. */
int llm_tokenizer_encode(llm_tokenizer *t, const char *text, int32_t *ids, int max);
/* The text of ids[0..n) as a new NUL-terminated string (free() it), or NULL. */
char *llm_tokenizer_decode(llm_tokenizer *t, const int32_t *ids, int n);

#ifdef __cplusplus
}
#endif

#endif
