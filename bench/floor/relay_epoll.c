// relay_epoll: the floor for any epoll-based TCP relay (issue 4's question).
//
//   relay_epoll LISTEN_PORT UPSTREAM_IP:PORT
//
// Single thread, level-triggered epoll, non-blocking sockets. Every accepted client gets one
// upstream connection; bytes are pumped both ways with exactly one read() and one write() per
// readable event and nothing else: no frame parsing, no allocation per message, no epoll_ctl
// per message, no EAGAIN-probing second read (that is why it is level-triggered: edge-triggered
// would need a read until EAGAIN, one extra syscall per message). A WebSocket upgrade passes
// through as plain bytes, so this is exactly the work a WebSocket proxy cannot avoid once the
// tunnel is up, minus everything a real proxy adds.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
static int peer[MAXFD];           // peer[fd] = the other end of fd's tunnel, -1 if none
static char buf[256 * 1024];      // one buffer for all: each read is written out before the next
static long short_writes;         // writes that did not take everything (expected: 0)
static volatile sig_atomic_t stop;

static void on_term(int s) { (void)s; stop = 1; }

static void nodelay(int fd) {
    // Like nginx on an upgraded connection: do not let Nagle hold a small frame back.
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void close_pair(int ep, int fd) {
    int p = peer[fd];
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    peer[fd] = -1;
    if (p >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, p, NULL);
        close(p);
        peer[p] = -1;
    }
}

static void add(int ep, int fd) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_IP:PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in up = {.sin_family = AF_INET};
    char host[64];
    snprintf(host, sizeof host, "%s", argv[2]);
    char *colon = strrchr(host, ':');
    if (!colon) return 2;
    *colon = 0;
    inet_pton(AF_INET, host, &up.sin_addr);
    up.sin_port = htons(atoi(colon + 1));

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &la.sin_addr);
    if (bind(ls, (void *)&la, sizeof la) || listen(ls, 4096)) { perror("listen"); return 1; }
    for (int i = 0; i < MAXFD; i++) peer[i] = -1;
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);

    int ep = epoll_create1(0);
    add(ep, ls);
    struct epoll_event evs[512];
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                // Set-up path, not measured: accept, then a blocking connect to the upstream
                // (loopback, immediate), then both sockets non-blocking.
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int u = socket(AF_INET, SOCK_STREAM, 0);
                    if (u < 0 || c >= MAXFD || u >= MAXFD || connect(u, (void *)&up, sizeof up)) {
                        close(c);
                        if (u >= 0) close(u);
                        continue;
                    }
                    fcntl(u, F_SETFL, O_NONBLOCK);
                    nodelay(c);
                    nodelay(u);
                    peer[c] = u;
                    peer[u] = c;
                    add(ep, c);
                    add(ep, u);
                }
                continue;
            }
            int p = peer[fd];
            if (p < 0) continue;  // closed earlier in this batch
            // The per-message path: one read, one write.
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close_pair(ep, fd);
                continue;
            }
            ssize_t w = write(p, buf, r);
            if (w != r) {
                // The peer's send buffer is full (never seen with one 64-byte message in flight).
                // A real relay would park the rest and wait for EPOLLOUT; the floor only has to
                // stay correct, so it finishes the write blocking and counts it.
                short_writes++;
                if (w < 0) {
                    if (errno != EAGAIN) { close_pair(ep, fd); continue; }
                    w = 0;
                }
                fcntl(p, F_SETFL, 0);
                while (w < r) {
                    ssize_t k = write(p, buf + w, r - w);
                    if (k <= 0) break;
                    w += k;
                }
                fcntl(p, F_SETFL, O_NONBLOCK);
            }
        }
    }
    fprintf(stderr, "relay_epoll: short writes %ld\n", short_writes);
    return 0;
}
