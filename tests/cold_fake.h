/* An in-process cold-tier backend for the tests: a reference-counted key-value table whose
 * requests complete only in wait(), in a shuffled order, and which refuses, fails or corrupts
 * requests at random when asked. Header-only, like common.h. */
#ifndef SKV_TEST_COLD_FAKE_H
#define SKV_TEST_COLD_FAKE_H

#include "common.h"
#include "sparsekv/store_cold.h"

typedef struct fentry { uint8_t key[SKV_COLD_KEY_BYTES]; uint8_t *data; size_t bytes; long refs; } fentry;
typedef struct freq {
    int op; /* 0 put, 1 get, 2 del */
    uint8_t key[SKV_COLD_KEY_BYTES];
    const void *data;
    void *buf;
    size_t bytes;
    skv_cold_done done;
    void *tag;
} freq;

typedef struct fake {
    fentry *e;
    long n, cap;
    freq *q;
    long nq, capq;
    rng r;
    double p_refuse, p_fail, p_corrupt; /* per request */
    long refused, failed, corrupted, put_mismatch, completed;
} fake;

static fentry *fake_find(fake *f, const uint8_t *key)
{
    for (long i = 0; i < f->n; i++)
        if (!memcmp(f->e[i].key, key, SKV_COLD_KEY_BYTES))
            return &f->e[i];
    return NULL;
}

static int fake_issue(fake *f, int op, const uint8_t *key, const void *data, void *buf,
                      size_t bytes, skv_cold_done done, void *tag)
{
    if (f->p_refuse > 0 && rng_uniform(&f->r, 0, 1) < f->p_refuse) {
        f->refused++;
        return 1;
    }
    if (f->nq == f->capq) {
        f->capq = f->capq ? 2 * f->capq : 64;
        f->q = realloc(f->q, (size_t)f->capq * sizeof *f->q);
        if (!f->q)
            exit(2);
    }
    freq *r = &f->q[f->nq++];
    r->op = op;
    memcpy(r->key, key, SKV_COLD_KEY_BYTES);
    r->data = data, r->buf = buf, r->bytes = bytes, r->done = done, r->tag = tag;
    return 0;
}

static int fake_put(void *u, const uint8_t *key, const void *data, size_t bytes, skv_cold_done done,
                    void *tag)
{
    return fake_issue(u, 0, key, data, NULL, bytes, done, tag);
}
static int fake_get(void *u, const uint8_t *key, void *buf, size_t bytes, skv_cold_done done,
                    void *tag)
{
    return fake_issue(u, 1, key, NULL, buf, bytes, done, tag);
}
static int fake_del(void *u, const uint8_t *key, skv_cold_done done, void *tag)
{
    return fake_issue(u, 2, key, NULL, NULL, 0, done, tag);
}

/* Completes one request: 0 done well. */
static int fake_complete(fake *f, const freq *r)
{
    if (f->p_fail > 0 && rng_uniform(&f->r, 0, 1) < f->p_fail) {
        f->failed++;
        return 1;
    }
    fentry *e = fake_find(f, r->key);
    if (r->op == 0) {
        if (e) {
            f->put_mismatch += e->bytes != r->bytes || memcmp(e->data, r->data, r->bytes) != 0;
            e->refs++;
            return 0;
        }
        if (f->n == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 64;
            f->e = realloc(f->e, (size_t)f->cap * sizeof *f->e);
            if (!f->e)
                exit(2);
        }
        e = &f->e[f->n++];
        memcpy(e->key, r->key, SKV_COLD_KEY_BYTES);
        e->data = xmalloc(r->bytes);
        memcpy(e->data, r->data, r->bytes);
        e->bytes = r->bytes;
        e->refs = 1;
        return 0;
    }
    if (!e)
        return 1;
    if (r->op == 1) {
        if (e->bytes != r->bytes)
            return 1;
        memcpy(r->buf, e->data, e->bytes);
        if (f->p_corrupt > 0 && rng_uniform(&f->r, 0, 1) < f->p_corrupt) {
            ((uint8_t *)r->buf)[rng_int(&f->r, 0, (int64_t)e->bytes - 1)] ^= 0x10;
            f->corrupted++;
        }
        return 0;
    }
    if (--e->refs == 0) {
        free(e->data);
        *e = f->e[--f->n];
    }
    return 0;
}

static void fake_wait(void *u)
{
    fake *f = u;
    while (f->nq) { /* a random pending request completes next */
        const long i = (long)rng_int(&f->r, 0, f->nq - 1);
        const freq r = f->q[i];
        f->q[i] = f->q[--f->nq];
        const int rc = fake_complete(f, &r);
        f->completed++;
        r.done(r.tag, rc);
    }
}

static skv_store_cold fake_backend(fake *f)
{
    return (skv_store_cold){fake_put, fake_get, fake_del, fake_wait, f};
}

static long fake_refs(const fake *f)
{
    long n = 0;
    for (long i = 0; i < f->n; i++)
        n += f->e[i].refs;
    return n;
}

static void fake_free(fake *f)
{
    for (long i = 0; i < f->n; i++)
        free(f->e[i].data);
    free(f->e), free(f->q);
    memset(f, 0, sizeof *f);
}

#endif
