/* A private redis-server (redis_spawn.h). */
#define _POSIX_C_SOURCE 200809L
#include "redis_spawn.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

const char *skv_redis_server_bin(void)
{
    static const char *cands[] = {"/usr/bin/redis-server", "/usr/local/bin/redis-server",
                                  "/usr/sbin/redis-server"};
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++)
        if (access(cands[i], X_OK) == 0)
            return cands[i];
    return NULL;
}

static int free_port(void)
{
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) &&
        !getsockname(fd, (struct sockaddr *)&a, &len))
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

long long skv_redis_server_int(const skv_redis_server *sv, const char *cmd)
{
    const struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", sv->port, tv);
    long long v = -1;
    if (c && !c->err) {
        redisReply *rep = redisCommand(c, cmd);
        if (rep && rep->type == REDIS_REPLY_INTEGER)
            v = rep->integer;
        else if (rep && rep->type == REDIS_REPLY_STATUS)
            v = 0;
        freeReplyObject(rep);
    }
    if (c)
        redisFree(c);
    return v;
}

int skv_redis_server_start(skv_redis_server *sv)
{
    const char *bin = skv_redis_server_bin();
    if (!bin)
        return -1;
    if (!sv->dir[0]) {
        snprintf(sv->dir, sizeof sv->dir, "/tmp/skv-redis-XXXXXX");
        if (!mkdtemp(sv->dir)) {
            sv->dir[0] = 0;
            return -1;
        }
    }
    if (sv->port <= 0 && (sv->port = free_port()) < 0)
        return -1;
    char port[16];
    snprintf(port, sizeof port, "%d", sv->port);
    const pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        const int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 1);
        execl(bin, "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
              "--appendonly", sv->persist ? "yes" : "no", "--appendfsync", "always", "--dir",
              sv->dir, "--maxmemory-policy", "noeviction", (char *)NULL);
        _exit(127);
    }
    sv->pid = (int)pid;
    for (int i = 0; i < 500; i++) { /* up to 5 s */
        if (skv_redis_server_int(sv, "PING") == 0)
            return 0;
        if (waitpid(pid, NULL, WNOHANG) == pid) { /* it exited: the port was taken? */
            sv->pid = 0;
            return -1;
        }
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    skv_redis_server_kill(sv);
    return -1;
}

void skv_redis_server_kill(skv_redis_server *sv)
{
    if (sv->pid > 0) {
        kill((pid_t)sv->pid, SIGKILL);
        waitpid((pid_t)sv->pid, NULL, 0);
    }
    sv->pid = 0;
}

void skv_redis_server_stop(skv_redis_server *sv)
{
    skv_redis_server_kill(sv);
    if (sv->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", sv->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", sv->dir);
        sv->dir[0] = 0;
    }
}
