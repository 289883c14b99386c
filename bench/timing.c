/* The timer (warm-up, then repeat until a minimum time and count; median of the calls) and the
 * JSON Lines writer. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

void *bench_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "benchmark: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

void bench_check(skv_status st, const char *what)
{
    if (st != SKV_OK) {
        fprintf(stderr, "benchmark: %s: %s\n", what, skv_status_string(st));
        exit(1);
    }
}

int bench_name_selected(const char *filter, const char *name)
{
    if (!filter)
        return 1;
    for (const char *f = filter; *f;) {
        const size_t n = strcspn(f, ",");
        char part[256];
        if (n > 0 && n < sizeof part) {
            memcpy(part, f, n);
            part[n] = '\0';
            if (strstr(name, part))
                return 1;
        }
        f += n + (f[n] == ',');
    }
    return 0;
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double process_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int bench_time(bench_fn fn, void *arg, double min_time, int64_t min_iters, int warmup,
               double warmup_counts_after, bench_timing *out)
{
    memset(out, 0, sizeof *out);
    size_t cap = 64, n = 0;
    double *t = malloc(cap * sizeof *t);
    if (!t)
        return -1;
    double total = 0.0, cpu_total = 0.0;
    if (warmup) {
        const double c0 = process_cpu_s(), t0 = now_s();
        const int rc = fn(arg);
        const double dt = now_s() - t0, dc = process_cpu_s() - c0;
        if (rc) {
            free(t);
            return rc;
        }
        if (warmup_counts_after > 0.0 && dt > warmup_counts_after) {
            t[n++] = dt;
            total = dt;
            cpu_total = dc;
        }
    }
    while (n < (size_t)min_iters || total < min_time) {
        if (n == cap) {
            double *g = realloc(t, 2 * cap * sizeof *t);
            if (!g) {
                free(t);
                return -1;
            }
            t = g;
            cap *= 2;
        }
        const double c0 = process_cpu_s(), t0 = now_s();
        const int rc = fn(arg);
        const double dt = now_s() - t0, dc = process_cpu_s() - c0;
        if (rc) {
            free(t);
            return rc;
        }
        t[n++] = dt;
        total += dt;
        cpu_total += dc;
    }
    out->iterations = (int64_t)n;
    out->median_ns = 1e9 * bench_median(t, n); /* sorts t */
    out->mean_ns = 1e9 * total / (double)n;
    out->min_ns = 1e9 * t[0];
    out->cpu_ns = 1e9 * cpu_total / (double)n;
    free(t);
    return 0;
}

int bench_time_rounds(int n, const bench_fn *fn, void *const *arg, double min_time,
                      bench_rounds *out)
{
    double *round_ns = calloc((size_t)n * BENCH_ROUNDS, sizeof *round_ns);
    if (!round_ns)
        return -1;
    for (int i = 0; i < n; i++)
        out[i].cpu_ns = 0.0, out[i].iterations = 0;
    for (int r = 0; r < BENCH_ROUNDS; r++)
        for (int i = 0; i < n; i++) {
            bench_timing tm;
            const int rc = bench_time(fn[i], arg[i], min_time / BENCH_ROUNDS, 1, r == 0, 2.0, &tm);
            if (rc) {
                free(round_ns);
                return rc;
            }
            round_ns[(size_t)i * BENCH_ROUNDS + r] = tm.median_ns;
            out[i].cpu_ns += tm.cpu_ns * (double)tm.iterations;
            out[i].iterations += tm.iterations;
        }
    for (int i = 0; i < n; i++) {
        double ratio[BENCH_ROUNDS], *ns = round_ns + (size_t)i * BENCH_ROUNDS;
        for (int r = 0; r < BENCH_ROUNDS; r++)
            ratio[r] = ns[r] / round_ns[r];
        out[i].vs_first = bench_median(ratio, BENCH_ROUNDS); /* sorts ratio */
        out[i].lo = ratio[0], out[i].hi = ratio[BENCH_ROUNDS - 1];
        out[i].cpu_ns /= (double)out[i].iterations;
    }
    for (int i = 0; i < n; i++) /* after every ratio: the median sorts the times */
        out[i].ns = bench_median(round_ns + (size_t)i * BENCH_ROUNDS, BENCH_ROUNDS);
    free(round_ns);
    return 0;
}

/* ---- JSON Lines ---------------------------------------------------------------------------- */

static void put(json_line *j, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void put(json_line *j, const char *fmt, ...)
{
    if (j->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        const int w = vsnprintf(j->buf + j->len, j->cap - j->len, fmt, ap);
        va_end(ap);
        if (w < 0) {
            j->oom = 1;
            return;
        }
        if ((size_t)w < j->cap - j->len) {
            j->len += (size_t)w;
            return;
        }
        const size_t cap = 2 * j->cap + (size_t)w;
        char *g = realloc(j->buf, cap);
        if (!g) {
            j->oom = 1;
            return;
        }
        j->buf = g;
        j->cap = cap;
    }
}

static void key(json_line *j, const char *k)
{
    put(j, "%s\"%s\": ", j->len > 1 ? ", " : "", k);
}

void json_begin(json_line *j)
{
    j->cap = 1024;
    j->len = 0;
    j->buf = malloc(j->cap);
    j->oom = j->buf == NULL;
    if (j->buf) {
        j->buf[0] = '{';
        j->buf[1] = '\0';
        j->len = 1;
    }
}

void json_str(json_line *j, const char *k, const char *val)
{
    key(j, k);
    put(j, "\"");
    for (const unsigned char *c = (const unsigned char *)val; *c; c++) {
        if (*c == '"' || *c == '\\')
            put(j, "\\%c", *c);
        else if (*c < 0x20)
            put(j, "\\u%04x", *c);
        else
            put(j, "%c", *c);
    }
    put(j, "\"");
}

void json_int(json_line *j, const char *k, int64_t val)
{
    key(j, k);
    put(j, "%lld", (long long)val);
}

void json_num(json_line *j, const char *k, double val, int decimals)
{
    key(j, k);
    if (isfinite(val))
        put(j, "%.*f", decimals, val);
    else
        put(j, "null");
}

void json_ratio(json_line *j, const char *k, double val)
{
    key(j, k);
    if (isfinite(val))
        put(j, "%.4g", val);
    else
        put(j, "null");
}

void json_bool(json_line *j, const char *k, int val)
{
    key(j, k);
    put(j, "%s", val ? "true" : "false");
}

void json_null(json_line *j, const char *k)
{
    key(j, k);
    put(j, "null");
}

int json_end(json_line *j)
{
    put(j, "}");
    const int ok = !j->oom;
    if (ok) {
        fputs(j->buf, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    free(j->buf);
    j->buf = NULL;
    return ok ? 0 : -1;
}

/* Arrays of numbers, nestable: inside an array the key is NULL. */
static void array_sep(json_line *j)
{
    if (!j->oom && j->len > 0 && j->buf[j->len - 1] != '[')
        put(j, ", ");
}

void json_begin_array(json_line *j, const char *k)
{
    if (k)
        key(j, k);
    else
        array_sep(j);
    put(j, "[");
}

void json_array_num(json_line *j, double val, int decimals)
{
    array_sep(j);
    if (isfinite(val))
        put(j, "%.*f", decimals, val);
    else
        put(j, "null");
}

void json_end_array(json_line *j) { put(j, "]"); }
