// The C interface of tokenizer.h over sentencepiece::SentencePieceProcessor.
#include "tokenizer.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

struct llm_tokenizer {
    sentencepiece::SentencePieceProcessor sp;
};

llm_tokenizer *llm_tokenizer_open(const char *model_path)
{
    llm_tokenizer *t = new (std::nothrow) llm_tokenizer;
    if (!t)
        return nullptr;
    const auto status = t->sp.Load(model_path);
    if (!status.ok()) {
        std::fprintf(stderr, "llm: %s: %s\n", model_path, status.ToString().c_str());
        delete t;
        return nullptr;
    }
    return t;
}

void llm_tokenizer_close(llm_tokenizer *t) { delete t; }

int llm_tokenizer_bos(const llm_tokenizer *t) { return t->sp.bos_id(); }

int llm_tokenizer_encode(llm_tokenizer *t, const char *text, int32_t *ids, int max)
{
    std::vector<int> v;
    if (!t->sp.Encode(text, &v).ok())
        return -1;
    const int n = (int)v.size() < max ? (int)v.size() : max;
    for (int i = 0; i < n; i++)
        ids[i] = v[i];
    return n;
}

char *llm_tokenizer_decode(llm_tokenizer *t, const int32_t *ids, int n)
{
    std::vector<int> v(ids, ids + n);
    std::string s;
    if (!t->sp.Decode(v, &s).ok())
        return nullptr;
    char *out = static_cast<char *>(std::malloc(s.size() + 1));
    if (out)
        std::memcpy(out, s.c_str(), s.size() + 1);
    return out;
}
