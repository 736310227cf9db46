/* HTTP publisher for the benchmark harness (bench/publisher.py drives it).
 *
 *   publisher HOST PORT PATH RATE CONNECTIONS TAG_PREFIX PLAN_FILE OUT_FILE [DEPTH]
 *   publisher --sink     a trivial HTTP server answering 200 to every request (the
 *                        publisher's own ceiling); prints "port N", runs until SIGTERM
 *
 * PLAN_FILE holds one publish per line: "seq presentity state call". Each becomes one
 * Kazoo/pua_json dialog update (the JSON of bench.workload.dialog_update) POSTed over
 * CONNECTIONS keep-alive HTTP/1.1 connections, at most DEPTH requests (default 1; more is HTTP
 * pipelining) in flight on each, publish i
 * due at start + i / RATE (RATE <= 0: as fast as connections free up). OUT_FILE gets
 * "S index send_time" per request sent (CLOCK_MONOTONIC seconds), "C status count" per HTTP
 * status and a last line "T started finished errors". Exit 3 when the server stops answering.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DOMAIN "bench.local"
#define REQ 4096
#define RBUF 65536

typedef struct { long seq, pres, call; int state; } plan_t;
typedef struct { int fd, busy; size_t blen; char buf[RBUF]; } conn_t;  /* busy: in flight */

static const char *STATES[] = {"early", "confirmed", "terminated"};
static const int EXPIRES[] = {120, 3600, 10};

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int state_index(const char *s) {
    for (int i = 0; i < 3; i++) if (strcmp(s, STATES[i]) == 0) return i;
    return -1;
}

static int build(char *out, const char *host, const char *path, const char *prefix, const plan_t *p) {
    char body[2048];
    const char *st = STATES[p->state];
    int bl = snprintf(body, sizeof body,
        "{\"Event-Category\":\"presence\",\"Event-Name\":\"update\",\"Event-Package\":\"dialog\","
        "\"From\":\"sip:ext%ld@" DOMAIN "\",\"From-User\":\"ext%ld\",\"From-Realm\":\"" DOMAIN "\","
        "\"To\":\"sip:peer%ld@" DOMAIN "\",\"To-User\":\"peer%ld\",\"To-Realm\":\"" DOMAIN "\","
        "\"Call-ID\":\"bench-%ld-%ld\",\"From-Tag\":\"%s%ld\",\"To-Tag\":\"r%ld\","
        "\"State\":\"%s\",\"Direction\":\"initiator\",\"Expires\":%d}",
        p->pres, p->pres, p->pres, p->pres, p->pres, p->call, prefix, p->seq, p->pres, st,
        EXPIRES[p->state]);
    return snprintf(out, REQ,
        "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        "Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s", path, host, bl, body);
}

/* Pop one complete response; returns its status, 0 when incomplete. */
static int take_response(conn_t *c) {
    char *end = memmem(c->buf, c->blen, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = end - c->buf + 4;
    long length = 0;
    for (char *l = memchr(c->buf, '\n', head); l && l < end; l = memchr(l, '\n', end - l)) {
        l++;
        if (strncasecmp(l, "content-length:", 15) == 0) length = strtol(l + 15, NULL, 10);
    }
    if (c->blen < head + length) return 0;
    int status = atoi(c->buf + 9);
    memmove(c->buf, c->buf + head + length, c->blen - head - length);
    c->blen -= head + length;
    return status ? status : -1;
}

/* Keep-alive HTTP sink: answers every complete request (headers + Content-Length) with 200. */
static int sink(void) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 128) < 0) return 2;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    printf("port %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static conn_t cs[1024];
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int e = 0; e < n; e++) {
            int fd = evs[e].data.fd;
            if (fd == lfd) {
                int c = accept(lfd, NULL, NULL);
                if (c < 0 || c >= 1024) { if (c >= 0) close(c); continue; }
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                cs[c].blen = 0;
                ev = (struct epoll_event){.events = EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                continue;
            }
            conn_t *c = &cs[fd];
            ssize_t r = recv(fd, c->buf + c->blen, RBUF - c->blen, 0);
            if (r <= 0) { close(fd); continue; }
            c->blen += r;
            for (;;) {
                char *end = memmem(c->buf, c->blen, "\r\n\r\n", 4);
                if (!end) break;
                size_t head = end - c->buf + 4;
                char *cl = memmem(c->buf, head, "Content-Length:", 15);
                size_t total = head + (cl ? strtol(cl + 15, NULL, 10) : 0);
                if (c->blen < total) break;
                memmove(c->buf, c->buf + total, c->blen - total);
                c->blen -= total;
                if (send(fd, ok, sizeof ok - 1, MSG_NOSIGNAL) < 0) break;
            }
        }
    }
}

/* a non-blocking keep-alive connection to the server, watched for answers as connection I */
static int open_connection(const struct sockaddr_in *sa, int ep, int i) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) { perror("connect"); return -1; }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return fd;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--sink") == 0) return sink();
    if (argc != 9 && argc != 10) {
        fprintf(stderr, "usage: publisher HOST PORT PATH RATE CONNECTIONS TAG_PREFIX PLAN OUT [DEPTH]\n");
        return 2;
    }
    const char *ip = argv[1], *path = argv[3], *prefix = argv[6];
    int port = atoi(argv[2]), nconn = atoi(argv[5]), depth = argc == 10 ? atoi(argv[9]) : 1;
    if (depth < 1) depth = 1;
    double rate = atof(argv[4]);
    char host[128];
    snprintf(host, sizeof host, "%s:%d", ip, port);
    FILE *pf = fopen(argv[7], "r");
    if (!pf) { perror(argv[7]); return 2; }
    size_t cap = 1024, count = 0;
    plan_t *plan = malloc(cap * sizeof *plan);
    char st[32];
    plan_t p;
    while (fscanf(pf, "%ld %ld %31s %ld", &p.seq, &p.pres, st, &p.call) == 4) {
        if ((p.state = state_index(st)) < 0) { fprintf(stderr, "bad state %s\n", st); return 2; }
        if (count == cap) plan = realloc(plan, (cap *= 2) * sizeof *plan);
        plan[count++] = p;
    }
    fclose(pf);
    if (nconn < 1) nconn = 1;
    conn_t *conns = calloc(nconn, sizeof *conns);
    /* one entry per free request slot: a connection appears up to DEPTH times */
    int *idle = malloc((size_t)nconn * depth * sizeof *idle), nidle = 0;
    int ep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    /* opened when first used: a connection opened early and left unused would meet the
       server's deadline for a first request (busylamp: 408 after 10 s) */
    for (int i = 0; i < nconn; i++) conns[i].fd = -1;
    for (int d = 0; d < depth; d++)
        for (int i = 0; i < nconn; i++) idle[nidle++] = i;
    double *sent_at = malloc((count + 1) * sizeof *sent_at);
    long *sent_idx = malloc((count + 1) * sizeof *sent_idx);
    size_t nsent = 0, done = 0;
    long in_flight = 0, errors = 0, reopened = 0, statuses[600] = {0};
    char req[REQ];
    double start = now_mono(), quiet_since = 0;
    int rc = 0;
    struct epoll_event evs[256];
    while (done < count || in_flight) {
        double now = now_mono();
        while (nidle && done < count && (rate <= 0 || start + done / rate <= now)) {
            int i = idle[--nidle];
            if (conns[i].fd < 0 && (conns[i].fd = open_connection(&sa, ep, i)) < 0) { rc = 2; goto out; }
            int len = build(req, host, path, prefix, &plan[done]);
            double t = now_mono();
            ssize_t w = send(conns[i].fd, req, len, MSG_NOSIGNAL);
            if (w != len) { errors++; idle[nidle++] = i; done++; continue; }
            sent_at[nsent] = t;
            sent_idx[nsent++] = done;
            conns[i].busy++;
            in_flight++;
            done++;
        }
        int timeout = 1000;
        if (done < count && nidle && rate > 0) {
            double wait = start + done / rate - now_mono();
            timeout = wait <= 0 ? 0 : (int)ceil(wait * 1000);
        }
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n <= 0) {
            if (in_flight && !nidle) {
                if (!quiet_since) quiet_since = now_mono();
                else if (now_mono() - quiet_since > 10) {
                    fprintf(stderr, "server stopped answering HTTP publishes\n");
                    rc = 3;
                    break;
                }
            }
            continue;
        }
        quiet_since = 0;
        for (int e = 0; e < n; e++) {
            conn_t *c = &conns[evs[e].data.u32];
            if (c->busy == 0) {
                /* nothing asked on it: the server timed out a connection whose first request
                   did not come (a fast server can leave the last free connections unused for
                   long) and says so (408) before it closes; open it again, it stays free */
                char junk[1024];
                ssize_t r = recv(c->fd, junk, sizeof junk, 0);
                if (r != 0 && !(r < 0 && errno != EAGAIN && errno != EINTR)) continue;
                close(c->fd);
                c->blen = 0;
                if ((c->fd = open_connection(&sa, ep, evs[e].data.u32)) < 0) { rc = 2; goto out; }
                reopened++;
                continue;
            }
            ssize_t r = recv(c->fd, c->buf + c->blen, RBUF - c->blen, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) { fprintf(stderr, "server closed a keep-alive connection\n"); rc = 4; goto out; }
            c->blen += r;
            int status;
            while ((status = take_response(c)) != 0) {
                if (status > 0 && status < 600) statuses[status]++;
                in_flight--;
                c->busy--;
                idle[nidle++] = evs[e].data.u32;
            }
        }
    }
out:;
    double finished = now_mono();
    FILE *of = fopen(argv[8], "w");
    if (!of) { perror(argv[8]); return 2; }
    for (size_t i = 0; i < nsent; i++) fprintf(of, "S %ld %.6f\n", sent_idx[i], sent_at[i]);
    for (int s = 0; s < 600; s++) if (statuses[s]) fprintf(of, "C %d %ld\n", s, statuses[s]);
    fprintf(of, "T %.6f %.6f %ld\n", start, finished, errors);
    if (reopened) fprintf(stderr, "reopened %ld connections the server closed while idle\n", reopened);
    fclose(of);
    return rc;
}
