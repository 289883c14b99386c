/* Case inputs: seeded uniform random values, their conversion to bf16 / fp8 through the
 * library's own converters, the f32 view the references use, and the --dump files. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench.h"

/* splitmix64: tiny, fast, and good enough for benchmark data. */
static uint64_t mix_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void fill_uniform(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(mix_next(&s) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

void inputs_free(bench_inputs *in)
{
    if (in->q_ref != in->q)
        free(in->q_ref);
    if (in->k_ref != in->keys)
        free(in->k_ref);
    if (in->q_lib != in->q)
        free(in->q_lib);
    if (in->k_lib != in->keys)
        free(in->k_lib);
    free(in->q);
    free(in->w);
    free(in->keys);
    free(in->pos);
    free(in->q_scale);
    free(in->k_scale);
    memset(in, 0, sizeof *in);
}

/* Narrows x [rows][cols] to `dtype` (fp8: one scale per row) into *lib, and widens it back to
 * f32 into *ref: the values the library computes on. */
static skv_status convert_rows(const float *x, int64_t rows, int32_t cols, skv_dtype dtype,
                               void **lib, float **scale, float **ref)
{
    const int64_t n = rows * cols;
    *lib = malloc((size_t)n * skv_dtype_size(dtype));
    *ref = malloc((size_t)n * sizeof(float));
    if (dtype == SKV_FP8_E4M3)
        *scale = malloc((size_t)rows * sizeof(float));
    if (!*lib || !*ref || (dtype == SKV_FP8_E4M3 && !*scale))
        return SKV_ERR_NOMEM;
    skv_status st;
    if (dtype == SKV_FP8_E4M3)
        st = skv_quantize_fp8(x, rows, cols, cols, 0, *lib, *scale);
    else
        st = skv_convert(dtype, *lib, SKV_F32, x, n);
    if (st != SKV_OK)
        return st;
    st = skv_convert(SKV_F32, *ref, dtype, *lib, n);
    if (st != SKV_OK)
        return st;
    if (dtype == SKV_FP8_E4M3)
        for (int64_t r = 0; r < rows; r++)
            for (int32_t c = 0; c < cols; c++)
                (*ref)[r * cols + c] *= (*scale)[r];
    return SKV_OK;
}

skv_status inputs_make(bench_inputs *in, int32_t T, int32_t H, int32_t D, int64_t L, int32_t k,
                       skv_dtype dtype)
{
    memset(in, 0, sizeof *in);
    in->T = T;
    in->H = H;
    in->D = D;
    in->L = L;
    in->k = k;
    in->dtype = dtype;
    const size_t nq = (size_t)T * H * D, nw = (size_t)T * H, nk = (size_t)L * D;
    in->q = malloc(nq * sizeof(float));
    in->w = malloc(nw * sizeof(float));
    in->keys = malloc(nk * sizeof(float));
    in->pos = malloc((size_t)T * sizeof(int32_t));
    if (!in->q || !in->w || !in->keys || !in->pos) {
        inputs_free(in);
        return SKV_ERR_NOMEM;
    }
    /* The same values for every dtype of a shape; keys depend on (L, D) only. */
    const uint64_t seed = 0x736b76ull ^ ((uint64_t)T << 40) ^ ((uint64_t)H << 28) ^ (uint64_t)L;
    fill_uniform(in->q, nq, seed);
    fill_uniform(in->w, nw, seed + 1);
    fill_uniform(in->keys, nk, 0x6b657973ull ^ ((uint64_t)D << 40) ^ (uint64_t)L);
    for (int32_t t = 0; t < T; t++)
        in->pos[t] = (int32_t)(L - T + t);

    if (dtype == SKV_F32) {
        in->q_lib = in->q_ref = in->q;
        in->k_lib = in->k_ref = in->keys;
    } else {
        skv_status st = convert_rows(in->q, (int64_t)T * H, D, dtype, &in->q_lib, &in->q_scale,
                                     &in->q_ref);
        if (st == SKV_OK)
            st = convert_rows(in->keys, L, D, dtype, &in->k_lib, &in->k_scale, &in->k_ref);
        if (st != SKV_OK) {
            inputs_free(in);
            return st;
        }
    }
    in->query = (skv_indexer_query){
        .n_tokens = T, .n_heads = H, .head_dim = D, .dtype = dtype, .q = in->q_lib,
        .q_scale = in->q_scale, .weights = in->w, .positions = in->pos,
    };
    in->keys_block = (skv_key_block){
        .n_keys = L, .head_dim = D, .dtype = dtype, .k = in->k_lib, .k_scale = in->k_scale,
    };
    in->ref = (ref_problem){
        .T = T, .H = H, .D = D, .L = L, .k = k,
        .q = in->q_ref, .w = in->w, .keys = in->k_ref, .pos = in->pos,
    };
    return SKV_OK;
}

static int write_file(const char *dir, const char *file, const void *data, size_t bytes)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    const size_t w = fwrite(data, 1, bytes, f);
    const int closed = fclose(f);
    if (w != bytes || closed != 0) {
        if (errno == 0)
            errno = EIO;
        return -1;
    }
    return 0;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST)
        return 0;
    return -1;
}

int inputs_dump(const bench_inputs *in, const char *dir, const char *name, const int32_t *idx,
                int threads, const char *isa, double sparsekv_ns, int64_t iterations)
{
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    if (first != 1) { /* the files are defined as little-endian */
        errno = ENOTSUP;
        return -1;
    }
    char sub[4096];
    if (snprintf(sub, sizeof sub, "%s/%s", dir, name) >= (int)sizeof sub) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *c = sub + strlen(dir) + 1; *c; c++)
        if (*c == '/')
            *c = '_';
    if (make_dir(dir) || make_dir(sub))
        return -1;
    const size_t T = (size_t)in->T, H = (size_t)in->H, D = (size_t)in->D, L = (size_t)in->L;
    if (write_file(sub, "q.bin", in->q_ref, T * H * D * sizeof(float)) ||
        write_file(sub, "w.bin", in->w, T * H * sizeof(float)) ||
        write_file(sub, "k.bin", in->k_ref, L * D * sizeof(float)) ||
        write_file(sub, "pos.bin", in->pos, T * sizeof(int32_t)) ||
        write_file(sub, "idx.bin", idx, T * (size_t)in->k * sizeof(int32_t)))
        return -1;
    char meta[1024];
    const int n = snprintf(meta, sizeof meta,
                           "{\"name\": \"%s\", \"T\": %d, \"H\": %d, \"D\": %d, \"L\": %lld, "
                           "\"k\": %d, \"dtype\": \"%s\", \"threads\": %d, \"isa\": \"%s\", "
                           "\"sparsekv_ns\": %.1f, \"sparsekv_iterations\": %lld}\n",
                           name, in->T, in->H, in->D, (long long)in->L, in->k,
                           in->dtype == SKV_F32 ? "f32" : in->dtype == SKV_BF16 ? "bf16" : "fp8",
                           threads, isa, sparsekv_ns, (long long)iterations);
    if (n < 0 || n >= (int)sizeof meta) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return write_file(sub, "meta.json", meta, (size_t)n);
}
