/* A private redis-server for tests and benchmarks: started on a free loopback port
 * (127.0.0.1 only, no RDB snapshots, `maxmemory-policy noeviction`), stopped at the end. */
#ifndef SKV_REDIS_SPAWN_H
#define SKV_REDIS_SPAWN_H

typedef struct skv_redis_server {
    int pid;       /* 0 when not running */
    int port;      /* chosen by the first start, kept across restarts */
    int persist;   /* 1: an append-only file with fsync always (data survives a kill) */
    char dir[64];  /* its working directory (created by the first start, removed by stop) */
} skv_redis_server;

/* The redis-server binary, or NULL when none is installed. */
const char *skv_redis_server_bin(void);
/* Starts (or restarts) the server and waits until it answers PING. Returns 0 or -1. */
int skv_redis_server_start(skv_redis_server *sv);
/* Kills the server (SIGKILL: as a crash would). */
void skv_redis_server_kill(skv_redis_server *sv);
/* Kills it and removes its directory. */
void skv_redis_server_stop(skv_redis_server *sv);
/* Runs one command on a fresh connection: its integer reply, 0 for a status reply, -1 else. */
long long skv_redis_server_int(const skv_redis_server *sv, const char *cmd);

#endif
