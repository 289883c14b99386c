/* The context: parameters, allocator and logger hooks, workspace, threads. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/core.h"
#include "sparsekv/version.h"

#ifdef SKV_HAVE_OPENBLAS
int openblas_get_parallel(void); /* 0 sequential, 1 pthreads, 2 OpenMP */
#endif

static void *default_alloc(void *user, size_t size, size_t align)
{
    (void)user;
    return aligned_alloc(align, skv_round_up(size, align));
}

static void default_free(void *user, void *ptr, size_t size)
{
    (void)user;
    (void)size;
    free(ptr);
}

void *skv_alloc(skv_context *ctx, size_t size)
{
    if (size == 0)
        return NULL;
    void *p = ctx->alloc.alloc(ctx->alloc.user, size, SKV_ALIGN);
    if (p)
        ctx->bytes_live += size;
    return p;
}

void *skv_alloc_zero(skv_context *ctx, size_t size)
{
    void *p = skv_alloc(ctx, size);
    if (p)
        memset(p, 0, size);
    return p;
}

void skv_free(skv_context *ctx, void *p, size_t size)
{
    if (!p)
        return;
    ctx->bytes_live -= size;
    ctx->alloc.free(ctx->alloc.user, p, size);
}

static void *grow(skv_context *ctx, void **buf, size_t *have, size_t size)
{
    if (size <= *have)
        return *buf;
    /* Grow geometrically so a slowly growing context does not reallocate every call. */
    size_t want = skv_round_up(size + size / 4, 4096);
    void *p = skv_alloc(ctx, want);
    if (!p)
        return NULL;
    skv_free(ctx, *buf, *have);
    *buf = p;
    *have = want;
    return p;
}

void *skv_workspace(skv_context *ctx, size_t size) { return grow(ctx, &ctx->ws, &ctx->ws_size, size); }

void *skv_workspace_aux(skv_context *ctx, int slot, size_t size)
{
    return grow(ctx, &ctx->aux[slot], &ctx->aux_size[slot], size);
}

void skv_log(skv_context *ctx, skv_log_level level, const char *fmt, ...)
{
    if (!ctx || !ctx->log || level > ctx->log_level)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ctx->log(ctx->log_user, level, msg);
}

int skv_threads(const skv_context *ctx)
{
#ifdef _OPENMP
    if (omp_in_parallel())
        return 1;
    return ctx->n_threads;
#else
    (void)ctx;
    return 1;
#endif
}

int skv_version(void) { return SKV_API_VERSION; }

void skv_context_params_init(skv_context_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->n_threads = 0;
    p->cpu_mask = SKV_CPU_ALL;
    p->log_level = SKV_LOG_WARN;
}

static void check_blas(skv_context *ctx)
{
#ifdef SKV_HAVE_OPENBLAS
    if (openblas_get_parallel() == 1)
        skv_log(ctx, SKV_LOG_WARN,
                "the OpenBLAS loaded is the pthread build: it oversubscribes threads inside "
                "OpenMP regions; install libopenblas0-openmp");
#else
    (void)ctx;
#endif
}

skv_status skv_context_create(const skv_context_params *p, skv_context **out)
{
    skv_context_params def;
    if (!out)
        return SKV_ERR_INVALID_ARG;
    *out = NULL;
    if (!p) {
        skv_context_params_init(&def);
        p = &def;
    }
    if (p->struct_size != sizeof *p || p->n_threads < 0 || p->n_threads > 4096)
        return SKV_ERR_INVALID_ARG;
    if ((p->allocator.alloc == NULL) != (p->allocator.free == NULL))
        return SKV_ERR_INVALID_ARG;

    skv_allocator a = p->allocator;
    if (!a.alloc) {
        a.alloc = default_alloc;
        a.free = default_free;
        a.user = NULL;
    }
    skv_context *ctx = a.alloc(a.user, sizeof *ctx, SKV_ALIGN);
    if (!ctx)
        return SKV_ERR_NOMEM;
    memset(ctx, 0, sizeof *ctx);
    ctx->alloc = a;
    ctx->log = p->log;
    ctx->log_user = p->log_user;
    ctx->log_level = p->log_level;
    ctx->bytes_live = sizeof *ctx;
    ctx->route_last = -1;
#ifdef _OPENMP
    ctx->n_threads = p->n_threads > 0 ? p->n_threads : omp_get_max_threads();
#else
    ctx->n_threads = 1;
#endif
    ctx->cpu_flags = skv_cpu_flags() & p->cpu_mask;
    skv_kernels_init(&ctx->kern, ctx->cpu_flags);
    ctx->cpu_flags = ctx->kern.flags;
    check_blas(ctx);
    skv_log(ctx, SKV_LOG_INFO, "sparsekv %d.%d.%d: %s kernels, %d threads", SKV_API_VERSION_MAJOR,
            SKV_API_VERSION_MINOR, SKV_API_VERSION_PATCH, skv_cpu_level_name(ctx->cpu_flags),
            ctx->n_threads);
    *out = ctx;
    return SKV_OK;
}

void skv_context_destroy(skv_context *ctx)
{
    if (!ctx)
        return;
    skv_free(ctx, ctx->ws, ctx->ws_size);
    for (int i = 0; i < 3; i++)
        skv_free(ctx, ctx->aux[i], ctx->aux_size[i]);
    skv_allocator a = ctx->alloc;
    a.free(a.user, ctx, sizeof *ctx);
}

uint32_t skv_context_cpu_flags(const skv_context *ctx) { return ctx ? ctx->cpu_flags : 0; }

size_t skv_context_memory(const skv_context *ctx) { return ctx ? ctx->bytes_live : 0; }
