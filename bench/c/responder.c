/* NOTIFY responder for the benchmark harness (bench/cresponder.py drives it).
 *
 *   responder PORT RECORDS_FILE          answer NOTIFYs on 127.0.0.1:PORT until SIGTERM
 *   responder --blast PORT COUNT WINDOW  closed-loop NOTIFY sender (the responder's ceiling)
 *
 * Every NOTIFY is answered with 200 OK copying Via/From/To/Call-ID/CSeq; one line per NOTIFY
 * goes to RECORDS_FILE: "recv_time\tcall_id\tfrom_user\tstate\tversion\tlocal_tag\n"
 * (recv_time from CLOCK_MONOTONIC, seconds). Datagrams are taken and answered in batches with
 * recvmmsg/sendmmsg. The bound port is printed on stdout ("port N") once ready.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
#define DGRAM 65536
#define REPLY 4096
#define RCVBUF (64 * 1024 * 1024)

static volatile sig_atomic_t stop_flag;
static void on_term(int sig) { (void)sig; stop_flag = 1; }

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void big_buffers(int fd) {
    int size = RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

static int bind_udp(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    big_buffers(fd);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); exit(2); }
    return fd;
}

static const char *memfind(const char *h, size_t hn, const char *n) {
    return memmem(h, hn, n, strlen(n));
}

typedef struct { const char *p; size_t n; } span;

static int keep_header(const char *name, size_t n) {
    static const char *keep[] = {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"};
    for (size_t k = 0; k < sizeof keep / sizeof *keep; k++)
        if (strlen(keep[k]) == n && strncasecmp(name, keep[k], n) == 0) return 1;
    return 0;
}

/* Build the 200 OK into out (returns its length, 0 when not a NOTIFY) and the record fields. */
static size_t answer(const char *d, size_t len, char *out, span *call_id, span *user,
                     span *state, long *version, span *tag) {
    *call_id = *user = *state = *tag = (span){"", 0};
    *version = -1;
    if (len < 7 || memcmp(d, "NOTIFY ", 7) != 0) return 0;
    const char *hend = memfind(d, len, "\r\n\r\n");
    const char *body = hend ? hend + 4 : d + len;
    size_t head_len = hend ? (size_t)(hend - d) : len;
    size_t o = 0;
    memcpy(out, "SIP/2.0 200 OK\r\n", 16);
    o = 16;
    const char *line = memchr(d, '\n', head_len);
    while (line && line < d + head_len) {
        line++;
        const char *eol = memfind(line, d + head_len - line, "\r\n");
        if (!eol) eol = d + head_len;
        size_t ll = eol - line;
        const char *colon = memchr(line, ':', ll);
        if (colon && colon > line) {
            const char *ne = colon;
            while (ne > line && (ne[-1] == ' ' || ne[-1] == '\t')) ne--;
            if (keep_header(line, ne - line) && o + ll + 64 < REPLY) {
                memcpy(out + o, line, ll);
                o += ll;
                out[o++] = '\r'; out[o++] = '\n';
                size_t nl = ne - line;
                const char *v = colon + 1;
                while (v < eol && (*v == ' ' || *v == '\t')) v++;
                const char *ve = eol;
                while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
                if ((nl == 7 && !strncasecmp(line, "call-id", 7)) || (nl == 1 && tolower(*line) == 'i'))
                    *call_id = (span){v, ve - v};
                else if ((nl == 4 && !strncasecmp(line, "from", 4)) || (nl == 1 && tolower(*line) == 'f')) {
                    const char *s = memfind(v, ve - v, "sip:");
                    const char *s2 = memfind(v, ve - v, "sips:");
                    if (s2 && (!s || s2 < s)) s = s2 + 1;
                    if (s) {
                        s += 4;
                        const char *e = s;
                        while (e < ve && *e != '@' && *e != ';' && *e != '>') e++;
                        if (e < ve && *e == '@' && e > s) *user = (span){s, e - s};
                    }
                }
            }
        }
        line = eol + 1 < d + head_len ? eol + 1 : NULL;
    }
    memcpy(out + o, "Content-Length: 0\r\n\r\n", 21);
    o += 21;
    size_t blen = d + len - body;
    const char *st = memfind(body, blen, "<state");
    while (st) {
        const char *gt = memchr(st, '>', d + len - st);
        if (!gt) break;
        const char *v = gt + 1, *e;
        while (v < d + len && isspace((unsigned char)*v)) v++;
        e = v;
        while (e < d + len && (isalpha((unsigned char)*e) || *e == '-')) e++;
        const char *w = e;
        while (w < d + len && isspace((unsigned char)*w)) w++;
        if (e > v && (size_t)(d + len - w) >= 8 && memcmp(w, "</state>", 8) == 0) {
            *state = (span){v, e - v};
            break;
        }
        st = memfind(st + 6, d + len - st - 6, "<state");
    }
    const char *di = memfind(body, blen, "<dialog-info");
    if (di) {
        const char *gt = memchr(di, '>', d + len - di);
        const char *vs = memfind(di, (gt ? gt : d + len) - di, " version=\"");
        if (!vs) vs = memfind(di, (gt ? gt : d + len) - di, "\tversion=\"");
        if (!vs) vs = memfind(di, (gt ? gt : d + len) - di, "\nversion=\"");
        if (vs && isdigit((unsigned char)vs[10])) *version = strtol(vs + 10, NULL, 10);
    }
    const char *lt = memfind(body, blen, "local-tag=\"");
    if (lt) {
        const char *v = lt + 11, *e = memchr(v, '"', d + len - v);
        if (e) *tag = (span){v, e - v};
    }
    return o;
}

static int serve(int port, const char *path) {
    int fd = bind_udp(port);
    FILE *rec = fopen(path, "w");
    if (!rec) { perror(path); return 2; }
    setvbuf(rec, NULL, _IOFBF, 1 << 20);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    printf("port %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    static char in[BATCH][DGRAM], out[BATCH][REPLY];
    static struct mmsghdr rm[BATCH], sm[BATCH];
    static struct iovec riov[BATCH], siov[BATCH];
    static struct sockaddr_in from[BATCH];
    for (int i = 0; i < BATCH; i++) {
        riov[i] = (struct iovec){in[i], DGRAM};
        rm[i].msg_hdr.msg_iov = &riov[i];
        rm[i].msg_hdr.msg_iovlen = 1;
        rm[i].msg_hdr.msg_name = &from[i];
    }
    double last_flush = now_mono();
    struct pollfd pfd = {fd, POLLIN, 0};
    while (!stop_flag) {
        int r = poll(&pfd, 1, 20);
        if (r <= 0) {
            fflush(rec);
            last_flush = now_mono();
            continue;
        }
        for (int round = 0; round < 64; round++) {
            for (int i = 0; i < BATCH; i++) rm[i].msg_hdr.msg_namelen = sizeof from[i];
            int n = recvmmsg(fd, rm, BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            double t = now_mono();
            int k = 0;
            for (int i = 0; i < n; i++) {
                span cid, user, state, tag;
                long version;
                size_t ol = answer(in[i], rm[i].msg_len, out[k], &cid, &user, &state, &version, &tag);
                if (!ol) continue;
                siov[k] = (struct iovec){out[k], ol};
                memset(&sm[k].msg_hdr, 0, sizeof sm[k].msg_hdr);
                sm[k].msg_hdr.msg_iov = &siov[k];
                sm[k].msg_hdr.msg_iovlen = 1;
                sm[k].msg_hdr.msg_name = &from[i];
                sm[k].msg_hdr.msg_namelen = rm[i].msg_hdr.msg_namelen;
                k++;
                fprintf(rec, "%.6f\t%.*s\t%.*s\t%.*s\t%ld\t%.*s\n", t, (int)cid.n, cid.p,
                        (int)user.n, user.p, (int)state.n, state.p, version, (int)tag.n, tag.p);
            }
            for (int sent = 0; sent < k;) {
                int m = sendmmsg(fd, sm + sent, k - sent, 0);
                if (m <= 0) { if (errno == EINTR) continue; sent++; continue; }
                sent += m;
            }
            if (n < BATCH) break;
        }
        double t = now_mono();
        if (t - last_flush > 0.02) { fflush(rec); last_flush = t; }
    }
    fclose(rec);
    return 0;
}

/* Closed loop: keep WINDOW NOTIFYs unanswered; prints "answered seconds". */
static int blast(int port, long count, int window) {
    int fd = bind_udp(0);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const char *body =
        "<?xml version=\"1.0\"?>\n<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" "
        "version=\"7\" state=\"full\" entity=\"sip:ext1@bench.local\"><dialog id=\"c\" call-id=\"c\" "
        "local-tag=\"p42\" direction=\"initiator\"><state>confirmed</state></dialog></dialog-info>";
    static char msg[BATCH][2048], rbuf[BATCH][2048];
    static struct mmsghdr sm[BATCH], rm[BATCH];
    static struct iovec siov[BATCH], riov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        riov[i] = (struct iovec){rbuf[i], sizeof rbuf[i]};
        rm[i].msg_hdr.msg_iov = &riov[i];
        rm[i].msg_hdr.msg_iovlen = 1;
    }
    long sent = 0, answered = 0;
    double t0 = now_mono();
    struct pollfd pfd = {fd, POLLIN, 0};
    while (answered < count) {
        long room = window - (sent - answered);
        if (room > BATCH) room = BATCH;
        if (room > count - sent) room = count - sent;
        for (int i = 0; i < room; i++) {
            long seq = sent + i;
            int l = snprintf(msg[i], sizeof msg[i],
                "NOTIFY sip:phone1@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK%ld\r\n"
                "From: <sip:ext1@bench.local>;tag=a\r\nTo: <sip:phone1@bench.local>;tag=b\r\n"
                "Call-ID: %ld@bench\r\nCSeq: 1 NOTIFY\r\nEvent: dialog\r\n"
                "Subscription-State: active;expires=3600\r\nContent-Type: application/dialog-info+xml\r\n"
                "Content-Length: %zu\r\n\r\n%s", port, seq, seq, strlen(body), body);
            siov[i] = (struct iovec){msg[i], (size_t)l};
            memset(&sm[i].msg_hdr, 0, sizeof sm[i].msg_hdr);
            sm[i].msg_hdr.msg_iov = &siov[i];
            sm[i].msg_hdr.msg_iovlen = 1;
            sm[i].msg_hdr.msg_name = &dst;
            sm[i].msg_hdr.msg_namelen = sizeof dst;
        }
        for (long done = 0; done < room;) {
            int m = sendmmsg(fd, sm + done, room - done, 0);
            if (m <= 0) break;
            done += m;
        }
        sent += room;
        if (poll(&pfd, 1, 2000) <= 0) break; /* a lost datagram: the rate so far stands */
        int n = recvmmsg(fd, rm, BATCH, MSG_DONTWAIT, NULL);
        if (n > 0) answered += n;
    }
    printf("%ld %.6f\n", answered, now_mono() - t0);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    if (argc == 5 && strcmp(argv[1], "--blast") == 0)
        return blast(atoi(argv[2]), atol(argv[3]), atoi(argv[4]));
    if (argc == 3) return serve(atoi(argv[1]), argv[2]);
    fprintf(stderr, "usage: responder PORT RECORDS | responder --blast PORT COUNT WINDOW\n");
    return 2;
}
