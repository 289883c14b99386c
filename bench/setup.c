/* The start every small benchmark program shares: options, a context, the machine's limits
 * measured and written as the first record. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench.h"

int bench_setup(int argc, char **argv, const char *prog, double default_min_time, bench_setup_out *o)
{
    memset(o, 0, sizeof *o);
    o->min_time = default_min_time;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            o->quick = 1, o->min_time = default_min_time / 5;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            o->threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--min-time") && i + 1 < argc)
            o->min_time = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--quick] [--threads N] [--min-time S]\n", prog);
            return 2;
        }
    }
#ifdef _OPENMP
    if (o->threads <= 0)
        o->threads = omp_get_max_threads();
#else
    o->threads = 1;
#endif
    skv_context_params cp;
    skv_context_params_init(&cp);
    cp.n_threads = o->threads;
    skv_status st = skv_context_create(&cp, &o->ctx);
    if (st != SKV_OK) {
        fprintf(stderr, "%s: skv_context_create: %s\n", prog, skv_status_string(st));
        return 1;
    }
    if (machine_measure(o->threads, o->quick, &o->machine)) {
        fprintf(stderr, "%s: out of memory measuring the machine\n", prog);
        skv_context_destroy(o->ctx);
        return 1;
    }
    json_line j;
    json_begin(&j);
    json_str(&j, "name", "machine");
    json_num(&j, "peak_fp32_gflops", o->machine.peak_fp32_gflops, 2);
    json_num(&j, "peak_bf16_gflops", o->machine.peak_bf16_gflops, 2);
    json_num(&j, "stream_gbps", o->machine.stream_gbps, 2);
    json_int(&j, "threads", o->threads);
    json_str(&j, "isa", skv_cpu_level_name(skv_context_cpu_flags(o->ctx)));
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    json_str(&j, "openblas_coretype", coretype ? coretype : "unset");
    json_end(&j);
    return 0;
}
