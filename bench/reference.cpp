// The reference paths sparsekv is measured against, on the same (f32) inputs:
//   blas_sort  what a framework does: one GEMM for all heads, an elementwise epilogue, a full
//              sort of every score row
//   naive      what a straightforward CPU op does (llama.cpp style): per (token, key, head) a
//              plain dot-product loop, parallel over keys, then std::partial_sort
// and the std:: selections skv_topk_rows is compared with. All rank by descending score, ties
// to the lower index, like the library, so their index sets can be compared exactly.
#include <algorithm>
#include <cstdint>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef BENCH_HAVE_BLAS
#include <cblas.h>
#endif

#include "bench.h"

namespace {

struct scored {
    float s;
    int32_t i;
};

inline bool ranks_before(const scored &a, const scored &b)
{
    return a.s > b.s || (a.s == b.s && a.i < b.i);
}

inline int thread_id()
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int64_t visible(const ref_problem *p, int32_t t)
{
    const int64_t v = (int64_t)p->pos[t] + 1;
    return v < 0 ? 0 : v > p->L ? p->L : v;
}

// Writes the first min(k, n) pairs' indices and pads the rest of the k slots with -1.
void write_top(const scored *pairs, int64_t n, int32_t k, int32_t *out)
{
    const int64_t kk = n < k ? n : k;
    for (int64_t j = 0; j < kk; j++)
        out[j] = pairs[j].i;
    for (int64_t j = kk; j < k; j++)
        out[j] = -1;
}

// One (token, key) score of the naive path: H plain dot products of D floats. The simd
// reduction lets the compiler reorder the dot product's sum (as -ffast-math would) so it can
// vectorise it; target_clones builds the function for AVX-512, AVX2+FMA and the baseline and
// picks one at load time, as a -march=native build of a host engine would.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
float naive_score(const float *q, const float *w, const float *key, int32_t H, int32_t D)
{
    float score = 0.0f;
    for (int32_t h = 0; h < H; h++) {
        const float *qh = q + (size_t)h * D;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int32_t d = 0; d < D; d++)
            dot += qh[d] * key[d];
        score += w[h] * (dot > 0.0f ? dot : 0.0f);
    }
    return score;
}

} // namespace

struct ref_ws {
    std::vector<float> product;              // blas_sort: [rows][cols] GEMM output
    std::vector<float> scores;               // blas_sort: [T][max visible]
    std::vector<float> row;                  // naive: one token's scores
    std::vector<std::vector<scored>> pairs;  // one buffer per thread
};

extern "C" {

ref_ws *ref_ws_create(void)
{
    return new (std::nothrow) ref_ws;
}

void ref_ws_destroy(ref_ws *ws)
{
    delete ws;
}

int ref_have_blas(void)
{
#ifdef BENCH_HAVE_BLAS
    return 1;
#else
    return 0;
#endif
}

const char *ref_blas_config(void)
{
#ifdef BENCH_HAVE_BLAS
    return openblas_get_config();
#else
    return "none";
#endif
}

int ref_blas_sort_topk(ref_ws *ws, const ref_problem *p, int threads, int32_t *out_idx)
{
#ifndef BENCH_HAVE_BLAS
    (void)ws;
    (void)p;
    (void)threads;
    (void)out_idx;
    return -2;
#else
    const int32_t T = p->T, H = p->H, D = p->D, k = p->k;
    int64_t lmax = 0;
    for (int32_t t = 0; t < T; t++)
        lmax = std::max(lmax, visible(p, t));
    // Blocks of tokens whose queries make about 512 GEMM rows; columns per GEMM so that the
    // product stays within 32 MiB (a decode step is one [H x L] product up to L = 128K).
    const int32_t tb = std::max<int32_t>(1, 512 / H);
    const int64_t rows_max = (int64_t)std::min(tb, T) * H;
    const int64_t cols = std::max<int64_t>(1, std::min<int64_t>(lmax, ((int64_t)8 << 20) / rows_max));
    try {
        ws->product.resize((size_t)(rows_max * cols));
        ws->scores.resize((size_t)T * (size_t)lmax);
        if ((int)ws->pairs.size() < threads)
            ws->pairs.resize((size_t)threads);
        for (int i = 0; i < threads; i++)
            if ((int64_t)ws->pairs[(size_t)i].size() < lmax)
                ws->pairs[(size_t)i].resize((size_t)lmax);
    } catch (const std::bad_alloc &) {
        return -1;
    }
    float *prod = ws->product.data();
    float *scores = ws->scores.data();

    const int saved_threads = openblas_get_num_threads();
    openblas_set_num_threads(threads);
    for (int32_t t0 = 0; t0 < T; t0 += tb) {
        const int32_t nt = std::min(tb, T - t0);
        int64_t bvis = 0;
        for (int32_t i = 0; i < nt; i++)
            bvis = std::max(bvis, visible(p, t0 + i));
        for (int64_t c0 = 0; c0 < bvis; c0 += cols) {
            const int64_t nc = std::min(cols, bvis - c0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nt * H, (int)nc, D, 1.0f,
                        p->q + (size_t)t0 * H * D, D, p->keys + (size_t)c0 * D, D, 0.0f, prod,
                        (int)nc);
            // ReLU, weight and head-sum, 256 columns at a time per task.
            const int64_t nblk = (nc + 255) / 256;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
            for (int32_t i = 0; i < nt; i++)
                for (int64_t b = 0; b < nblk; b++) {
                    const int64_t s0 = b * 256, s1 = std::min(nc, s0 + 256);
                    float *row = scores + (size_t)(t0 + i) * lmax + c0;
                    const float *wt = p->w + (size_t)(t0 + i) * H;
                    for (int64_t s = s0; s < s1; s++)
                        row[s] = 0.0f;
                    for (int32_t h = 0; h < H; h++) {
                        const float *pr = prod + (size_t)(i * H + h) * nc;
                        const float wh = wt[h];
                        for (int64_t s = s0; s < s1; s++)
                            row[s] += wh * std::max(pr[s], 0.0f);
                    }
                }
        }
    }
    openblas_set_num_threads(saved_threads);

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int32_t t = 0; t < T; t++) {
        const int64_t v = visible(p, t);
        const float *row = scores + (size_t)t * lmax;
        scored *pr = ws->pairs[(size_t)thread_id()].data();
        for (int64_t s = 0; s < v; s++)
            pr[s] = scored{row[s], (int32_t)s};
        std::sort(pr, pr + v, ranks_before);
        write_top(pr, v, k, out_idx + (size_t)t * k);
    }
    return 0;
#endif
}

int ref_naive_topk(ref_ws *ws, const ref_problem *p, int threads, int32_t *out_idx)
{
    const int32_t H = p->H, D = p->D, k = p->k;
    try {
        ws->row.resize((size_t)p->L);
        if (ws->pairs.empty())
            ws->pairs.resize(1);
        if ((int64_t)ws->pairs[0].size() < p->L)
            ws->pairs[0].resize((size_t)p->L);
    } catch (const std::bad_alloc &) {
        return -1;
    }
    float *row = ws->row.data();
    scored *pr = ws->pairs[0].data();
    for (int32_t t = 0; t < p->T; t++) {
        const int64_t v = visible(p, t);
        const float *qt = p->q + (size_t)t * H * D;
        const float *wt = p->w + (size_t)t * H;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t s = 0; s < v; s++)
            row[s] = naive_score(qt, wt, p->keys + (size_t)s * D, H, D);
        for (int64_t s = 0; s < v; s++)
            pr[s] = scored{row[s], (int32_t)s};
        const int64_t kk = std::min<int64_t>(k, v);
        std::partial_sort(pr, pr + kk, pr + v, ranks_before);
        write_top(pr, v, k, out_idx + (size_t)t * k);
    }
    return 0;
}

int ref_select_row(ref_ws *ws, ref_select how, const float *x, int64_t n, int32_t k,
                   int32_t *out_idx)
{
    try {
        if (ws->pairs.empty())
            ws->pairs.resize(1);
        if ((int64_t)ws->pairs[0].size() < n)
            ws->pairs[0].resize((size_t)n);
    } catch (const std::bad_alloc &) {
        return -1;
    }
    scored *pr = ws->pairs[0].data();
    for (int64_t s = 0; s < n; s++)
        pr[s] = scored{x[s], (int32_t)s};
    const int64_t kk = std::min<int64_t>(k, n);
    switch (how) {
    case REF_STD_SORT:
        std::sort(pr, pr + n, ranks_before);
        break;
    case REF_PARTIAL_SORT:
        std::partial_sort(pr, pr + kk, pr + n, ranks_before);
        break;
    case REF_NTH_ELEMENT:
        if (kk > 0 && kk < n)
            std::nth_element(pr, pr + (kk - 1), pr + n, ranks_before);
        std::sort(pr, pr + kk, ranks_before);
        break;
    }
    write_top(pr, n, k, out_idx);
    return 0;
}

} // extern "C"
