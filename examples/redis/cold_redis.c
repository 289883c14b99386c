/* The Redis cold tier (cold_redis.h): a request queue, pipelined on wait. */
#define _POSIX_C_SOURCE 200809L
#include "cold_redis.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

/* put: a new hash with the blob and one reference, or one more reference to an existing one */
static const char PUT_SCRIPT[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HINCRBY', KEYS[1], 'r', 1) end "
    "redis.call('HSET', KEYS[1], 'd', ARGV[1], 'r', 1) return 1";
/* del: one reference less; the hash goes with the last (DEL, which a full server still runs) */
static const char DEL_SCRIPT[] =
    "local n = tonumber(redis.call('HGET', KEYS[1], 'r')) "
    "if n == nil then return redis.error_reply('no such page') end "
    "if n <= 1 then redis.call('DEL', KEYS[1]) return 0 end "
    "return redis.call('HINCRBY', KEYS[1], 'r', -1)";

typedef struct rreq {
    int op; /* 0 put, 1 get, 2 del */
    char name[64 + 2 * SKV_COLD_KEY_BYTES + 1];
    const void *data;
    void *buf;
    size_t bytes;
    skv_cold_done done;
    void *tag;
} rreq;

struct skv_redis {
    redisContext *c;
    char host[256];
    int port;
    char prefix[65];
    rreq *q;
    size_t nq, capq;
    char err[256];
    skv_redis_stats st;
};

static void set_error(skv_redis *r, const char *what, const char *detail)
{
    snprintf(r->err, sizeof r->err, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

static int connect_server(skv_redis *r)
{
    if (r->c && !r->c->err)
        return 0;
    if (r->c)
        redisFree(r->c);
    const struct timeval tv = {2, 0};
    r->c = redisConnectWithTimeout(r->host, r->port, tv);
    if (!r->c || r->c->err) {
        set_error(r, "cannot connect to redis", r->c ? r->c->errstr : "no memory");
        if (r->c)
            redisFree(r->c);
        r->c = NULL;
        return -1;
    }
    const struct timeval cmd = {10, 0};
    redisSetTimeout(r->c, cmd);
    return 0;
}

int skv_redis_open(const char *host, int port, const char *prefix, skv_redis **out)
{
    *out = NULL;
    if (!host || !prefix || strlen(host) >= 256 || strlen(prefix) > 64)
        return -1;
    skv_redis *r = calloc(1, sizeof *r);
    if (!r)
        return -1;
    snprintf(r->host, sizeof r->host, "%s", host);
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    r->port = port;
    if (connect_server(r)) {
        fprintf(stderr, "skv_redis_open: %s\n", r->err);
        free(r);
        return -1;
    }
    r->err[0] = 0;
    *out = r;
    return 0;
}

void skv_redis_close(skv_redis *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nq; i++) /* never left pending: the store waits before it ends */
        r->q[i].done(r->q[i].tag, 1);
    if (r->c)
        redisFree(r->c);
    free(r->q);
    free(r);
}

static int enqueue(skv_redis *r, int op, const uint8_t *key, const void *data, void *buf,
                   size_t bytes, skv_cold_done done, void *tag)
{
    if (r->nq == r->capq) {
        const size_t cap = r->capq ? 2 * r->capq : 256;
        rreq *q = realloc(r->q, cap * sizeof *q);
        if (!q)
            return 1;
        r->q = q, r->capq = cap;
    }
    rreq *e = &r->q[r->nq++];
    int k = snprintf(e->name, sizeof e->name, "%s", r->prefix);
    for (int i = 0; i < SKV_COLD_KEY_BYTES; i++)
        k += snprintf(e->name + k, sizeof e->name - (size_t)k, "%02x", key[i]);
    e->op = op, e->data = data, e->buf = buf, e->bytes = bytes, e->done = done, e->tag = tag;
    return 0;
}

static int r_put(void *u, const uint8_t *key, const void *data, size_t bytes, skv_cold_done done,
                 void *tag)
{
    return enqueue(u, 0, key, data, NULL, bytes, done, tag);
}
static int r_get(void *u, const uint8_t *key, void *buf, size_t bytes, skv_cold_done done, void *tag)
{
    return enqueue(u, 1, key, NULL, buf, bytes, done, tag);
}
static int r_del(void *u, const uint8_t *key, skv_cold_done done, void *tag)
{
    return enqueue(u, 2, key, NULL, NULL, 0, done, tag);
}

/* 0 when reply answers request e well (a get's bytes copied out). */
static int settle(skv_redis *r, const rreq *e, const redisReply *rep)
{
    if (rep->type == REDIS_REPLY_ERROR) {
        set_error(r, "redis refused a request", rep->str);
        return 1;
    }
    if (e->op == 1) {
        if (rep->type != REDIS_REPLY_STRING || rep->len != e->bytes) {
            set_error(r, "redis", rep->type == REDIS_REPLY_NIL ? "page missing" : "page of another length");
            return 1;
        }
        memcpy(e->buf, rep->str, e->bytes);
        r->st.bytes_in += (long long)e->bytes;
        return 0;
    }
    return rep->type != REDIS_REPLY_INTEGER;
}

/* A write to a connection the server closed raises SIGPIPE, which kills a process that did not
 * ignore it: the adapter blocks it on this thread while it talks to the server and consumes
 * the one it caused, leaving the host's signal handling as it was. */
typedef struct pipe_guard { sigset_t old; int was_pending; } pipe_guard;

static void pipe_block(pipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void pipe_restore(pipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigpending(&pending);
    if (!g->was_pending && sigismember(&pending, SIGPIPE)) {
        const struct timespec zero = {0, 0};
        sigtimedwait(&set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static void r_wait(void *u)
{
    skv_redis *r = u;
    if (!r->nq)
        return;
    pipe_guard g;
    pipe_block(&g);
    size_t sent = 0;
    if (connect_server(r) == 0) {
        for (; sent < r->nq; sent++) {
            const rreq *e = &r->q[sent];
            int rc;
            if (e->op == 0)
                rc = redisAppendCommand(r->c, "EVAL %s 1 %s %b", PUT_SCRIPT, e->name, e->data, e->bytes);
            else if (e->op == 1)
                rc = redisAppendCommand(r->c, "HGET %s d", e->name);
            else
                rc = redisAppendCommand(r->c, "EVAL %s 1 %s", DEL_SCRIPT, e->name);
            if (rc != REDIS_OK)
                break;
            r->st.bytes_out += e->op == 0 ? (long long)e->bytes : 0;
        }
        r->st.round_trips++;
    }
    size_t i = 0;
    for (; i < sent; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep) {
            set_error(r, "redis connection lost", r->c->errstr);
            break; /* the rest fail below; the connection is redone on the next wait */
        }
        const int bad = settle(r, &r->q[i], rep);
        freeReplyObject(rep);
        r->st.done += !bad;
        r->st.failed += bad;
        r->q[i].done(r->q[i].tag, bad);
    }
    for (; i < r->nq; i++) {
        r->st.failed++;
        r->q[i].done(r->q[i].tag, 1);
    }
    if (r->c && r->c->err) {
        redisFree(r->c);
        r->c = NULL;
    }
    r->nq = 0;
    pipe_restore(&g);
}

skv_store_cold skv_redis_backend(skv_redis *r)
{
    return (skv_store_cold){r_put, r_get, r_del, r_wait, r};
}

const char *skv_redis_last_error(const skv_redis *r) { return r->err; }

skv_redis_stats skv_redis_get_stats(const skv_redis *r) { return r->st; }
