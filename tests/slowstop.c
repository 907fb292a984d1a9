/* A RAG API stand-in for the quiesce test on the real node: runs until SIGTERM, then
 * takes three seconds to stop (as an API draining its requests), and as its very last
 * act records that it stopped, in the test's Redis: RPUSH rag-api:stopped <pid>.
 * Usage: slowstop REDIS_PORT */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stopping = 0;
static void term(int s) { (void)s; stopping = 1; }

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    signal(SIGTERM, term);
    while (!stopping) pause();
    sleep(3);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    char cmd[64], reply[64];
    int n = snprintf(cmd, sizeof cmd, "RPUSH rag-api:stopped %d\r\n", (int)getpid());
    if (write(fd, cmd, (size_t)n) != n) return 1;
    if (read(fd, reply, sizeof reply) <= 0) return 1; /* the push is acknowledged */
    return 0;
}
