// relay_uring: the same byte pump as relay_epoll.c, on io_uring (liburing), to see whether
// batching the per-message syscalls into one io_uring_enter per loop beats the epoll floor.
//
//   relay_uring LISTEN_PORT UPSTREAM_IP:PORT [MODE]
//
// MODE picks the ring setup (all single-threaded from the program's side):
//   plain   no setup flags: completions run as task work when the kernel gets to it
//   coop    IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG: no IPI/forced interruption for task work
//   defer   IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN (default): task work only runs inside our
//           io_uring_enter(GETEVENTS), so each enter reaps every completion that piled up
//   sqpoll  IORING_SETUP_SQPOLL: a kernel thread polls the SQ (and burns a core doing so). It is
//           a thread of this process, so its CPU is in /proc/PID/stat and counted. Reported
//           only; not a fair answer to "CPU per round trip".
// MODE may end in "+fixed" (e.g. defer+fixed): sockets are also registered in the ring's fixed
// file table (slot = fd number) and every recv/send uses IOSQE_FIXED_FILE, which saves the
// fget/fput (an atomic reference count pair) per request.
//
// Per socket one multishot recv is kept armed, taking buffers from a provided-buffer ring (so no
// per-message recv submission and no per-socket buffer). A completed recv becomes a send of that
// same buffer to the other socket; the buffer goes back to the ring when the send completes. At
// most one send is in flight per socket (later ones queue behind it), so bytes cannot reorder.
// The loop is: submit everything queued and wait for >= 1 completion (one io_uring_enter), then
// handle every completion that is there.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
#define NBUF 4096  // provided buffers (power of 2); 64-byte messages use one each
#define BSZ 2048
#define BGID 1

enum { OP_ACCEPT = 1, OP_RECV, OP_SEND };
#define UD(op, bid, fd) (((unsigned long long)(op) << 56) | ((unsigned long long)(bid) << 32) | (unsigned)(fd))

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;
static struct { int len, off, next; } meta[NBUF];  // per buffer: bytes, bytes sent, queue link
static int peer[MAXFD], qhead[MAXFD], qtail[MAXFD];
static unsigned char sending[MAXFD], recving[MAXFD], closing[MAXFD];
static int ls;
static struct sockaddr_in up;
static long enters, cqes, enobufs;
static int fixed;  // IOSQE_FIXED_FILE mode
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }

static struct io_uring_sqe *sqe(void) {
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    if (!s) {  // SQ full: push what is there (rare; the SQ is sized for a full batch)
        io_uring_submit(&ring);
        s = io_uring_get_sqe(&ring);
    }
    return s;
}

static void give_back(int bid) {
    io_uring_buf_ring_add(br, bufs + (size_t)bid * BSZ, BSZ, bid, io_uring_buf_ring_mask(NBUF), 0);
    io_uring_buf_ring_advance(br, 1);
}

static void arm_recv(int fd) {
    struct io_uring_sqe *s = sqe();
    io_uring_prep_recv_multishot(s, fd, NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT | (fixed ? IOSQE_FIXED_FILE : 0);
    s->buf_group = BGID;
    io_uring_sqe_set_data64(s, UD(OP_RECV, 0, fd));
    recving[fd] = 1;
}

static void arm_accept(void) {
    struct io_uring_sqe *s = sqe();
    io_uring_prep_multishot_accept(s, ls, NULL, NULL, 0);
    io_uring_sqe_set_data64(s, UD(OP_ACCEPT, 0, ls));
}

static void send_buf(int fd, int bid) {
    struct io_uring_sqe *s = sqe();
    io_uring_prep_send(s, fd, bufs + (size_t)bid * BSZ + meta[bid].off, meta[bid].len - meta[bid].off, MSG_NOSIGNAL);
    if (fixed) s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, UD(OP_SEND, bid, fd));
    sending[fd] = 1;
}

// Queue buffer bid for sending on fd; start it now if nothing is in flight on fd.
static void enqueue(int fd, int bid) {
    meta[bid].off = 0;
    meta[bid].next = -1;
    if (sending[fd]) {
        if (qtail[fd] >= 0) meta[qtail[fd]].next = bid; else qhead[fd] = bid;
        qtail[fd] = bid;
    } else {
        send_buf(fd, bid);
    }
}

// A socket is really closed once nothing of ours is in flight on it (so no stale completion can
// name a reused fd number).
static void maybe_close(int fd) {
    if (closing[fd] && !recving[fd] && !sending[fd]) {
        if (fixed) {  // drop the ring's reference, or the socket would stay open
            int none = -1;
            io_uring_register_files_update(&ring, fd, &none, 1);
        }
        close(fd);
        closing[fd] = 0;
        peer[fd] = -1;
    }
}

static void drop_queue(int fd) {
    for (int b = qhead[fd]; b >= 0; b = meta[b].next) give_back(b);
    qhead[fd] = qtail[fd] = -1;
}

// Tear down a tunnel: shutdown() ends the armed recvs (they complete with 0), queued data is
// dropped, and each fd is closed when its last operation has completed.
static void begin_close(int fd) {
    int p = peer[fd];
    int fds[2] = {fd, p};
    for (int i = 0; i < 2; i++) {
        int f = fds[i];
        if (f < 0 || closing[f]) continue;
        closing[f] = 1;
        shutdown(f, SHUT_RDWR);
        drop_queue(f);
    }
    maybe_close(fd);
    if (p >= 0) maybe_close(p);
}

static void on_accept(int c) {
    // Set-up path, not measured: a blocking connect to the upstream (loopback, immediate).
    int u = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (u < 0 || c >= MAXFD || u >= MAXFD || connect(u, (void *)&up, sizeof up)) {
        close(c);
        if (u >= 0) close(u);
        return;
    }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fixed) {
        int fds[1] = {c};
        io_uring_register_files_update(&ring, c, fds, 1);
        fds[0] = u;
        io_uring_register_files_update(&ring, u, fds, 1);
    }
    peer[c] = u;
    peer[u] = c;
    qhead[c] = qtail[c] = qhead[u] = qtail[u] = -1;
    arm_recv(c);
    arm_recv(u);
}

static void on_cqe(struct io_uring_cqe *cqe) {
    unsigned long long ud = cqe->user_data;
    int op = ud >> 56, bid = (ud >> 32) & 0xffff, fd = (int)(unsigned)ud, res = cqe->res;
    int more = cqe->flags & IORING_CQE_F_MORE;
    switch (op) {
    case OP_ACCEPT:
        if (res >= 0) on_accept(res);
        if (!more && !stop) arm_accept();
        break;
    case OP_RECV:
        if (!more) recving[fd] = 0;
        if (res > 0) {
            int b = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            meta[b].len = res;
            if (closing[fd] || peer[fd] < 0) give_back(b);
            else enqueue(peer[fd], b);
            if (!more && !closing[fd]) arm_recv(fd);
        } else if (res == -ENOBUFS && !closing[fd]) {
            enobufs++;  // all buffers are waiting on sends: re-arm (sends will return some)
            arm_recv(fd);
        } else {
            begin_close(fd);  // EOF or error
        }
        maybe_close(fd);
        break;
    case OP_SEND:
        sending[fd] = 0;
        if (res < 0 || closing[fd]) {
            give_back(bid);
            begin_close(fd);
        } else if ((meta[bid].off += res) < meta[bid].len) {
            send_buf(fd, bid);  // short send: the rest, before anything queued
        } else {
            give_back(bid);
            int nb = qhead[fd];
            if (nb >= 0) {
                qhead[fd] = meta[nb].next;
                if (qhead[fd] < 0) qtail[fd] = -1;
                send_buf(fd, nb);
            }
        }
        maybe_close(fd);
        break;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_IP:PORT [plain|coop|defer|sqpoll]\n", argv[0]);
        return 2;
    }
    char mode[32];
    snprintf(mode, sizeof mode, "%s", argc > 3 ? argv[3] : "defer");
    char *plus = strstr(mode, "+fixed");
    if (plus) {
        fixed = 1;
        *plus = 0;
    }
    char host[64];
    snprintf(host, sizeof host, "%s", argv[2]);
    char *colon = strrchr(host, ':');
    if (!colon) return 2;
    *colon = 0;
    up.sin_family = AF_INET;
    inet_pton(AF_INET, host, &up.sin_addr);
    up.sin_port = htons(atoi(colon + 1));

    ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &la.sin_addr);
    if (bind(ls, (void *)&la, sizeof la) || listen(ls, 4096)) { perror("listen"); return 1; }
    for (int i = 0; i < MAXFD; i++) peer[i] = qhead[i] = qtail[i] = -1;

    struct io_uring_params p = {.flags = IORING_SETUP_CQSIZE, .cq_entries = 16384};
    if (!strcmp(mode, "coop")) p.flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    else if (!strcmp(mode, "defer")) p.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    else if (!strcmp(mode, "sqpoll")) { p.flags |= IORING_SETUP_SQPOLL; p.sq_thread_idle = 1000; }
    else if (strcmp(mode, "plain")) { fprintf(stderr, "unknown mode %s\n", mode); return 2; }
    int r = io_uring_queue_init_params(4096, &ring, &p);
    if (r) { fprintf(stderr, "io_uring_queue_init_params(%s): %s\n", mode, strerror(-r)); return 1; }
    struct rlimit nofile;
    getrlimit(RLIMIT_NOFILE, &nofile);  // the table may not be larger than the fd limit
    unsigned slots = nofile.rlim_cur < MAXFD ? nofile.rlim_cur : MAXFD;
    if (fixed && (r = io_uring_register_files_sparse(&ring, slots))) {
        fprintf(stderr, "fixed files: %s\n", strerror(-r));
        return 1;
    }

    // Provided-buffer ring: the kernel picks a free buffer for each multishot recv completion.
    br = mmap(NULL, NBUF * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    bufs = malloc((size_t)NBUF * BSZ);
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = BGID};
    if ((r = io_uring_register_buf_ring(&ring, &reg, 0))) { fprintf(stderr, "buf ring: %s\n", strerror(-r)); return 1; }
    io_uring_buf_ring_init(br);
    for (int b = 0; b < NBUF; b++) give_back(b);

    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    arm_accept();
    while (!stop) {
        // One io_uring_enter: submit all queued SQEs and wait for at least one completion.
        r = io_uring_submit_and_wait(&ring, 1);
        enters++;
        if (r < 0 && r != -EINTR && r != -ETIME && r != -EAGAIN && r != -EBUSY) {
            fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-r));
            break;
        }
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            on_cqe(cqe);
            n++;
        }
        io_uring_cq_advance(&ring, n);
        cqes += n;
    }
    fprintf(stderr, "relay_uring(%s%s): %ld loop iterations, %.2f completions each, %ld ENOBUFS\n", mode, fixed ? "+fixed" : "", enters,
            enters ? (double)cqes / enters : 0, enobufs);
    return 0;
}
