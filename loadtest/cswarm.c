/* Subscriber swarm of the benchmark in C (optional; loadtest/swarm.py is the same in Python).
 *
 * usage: cswarm HOST PORT N KIND LAZY_US < setup
 *   KIND: fugato | socketio. stdin first carries N lines, each the first text frame to send on connection i
 *   (fugato: connect+subscribe commands; socketio: the room name), then commands: report | reset | stop.
 * Reads lazily (sleeps LAZY_US after each round of reads), counts messages by a marker and samples
 * publish->receive latency from the "t":<ns> field of the newest message of each read.
 * report prints one JSON line: {"ready":R,"messages":M,"samples":[ns,...]}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct { int fd; char *buf; size_t len, cap; char *room; int joined; } conn_t;

static long long now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void send_frame(int fd, const char *p, size_t n) {
    unsigned char head[14]; size_t h = 0;
    head[h++] = 0x81;
    if (n < 126) head[h++] = 0x80 | n;
    else if (n < 65536) { head[h++] = 0x80 | 126; head[h++] = n >> 8; head[h++] = n & 0xff; }
    else { head[h++] = 0x80 | 127; for (int i = 7; i >= 0; i--) head[h++] = (n >> (8 * i)) & 0xff; }
    memset(head + h, 0, 4); h += 4;  /* zero mask key: payload goes as it is */
    char *out = malloc(h + n); memcpy(out, head, h); memcpy(out + h, p, n);
    size_t off = 0;
    while (off < h + n) { ssize_t w = write(fd, out + off, h + n - off); if (w <= 0) { if (errno == EAGAIN) continue; break; } off += w; }
    free(out);
}

static int connect_ws(const char *host, int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(port); inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, host, port);
    if (write(fd, req, n) != n) return -1;
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: cswarm HOST PORT N KIND LAZY_US\n"); return 2; }
    const char *host = argv[1]; int port = atoi(argv[2]); int n = atoi(argv[3]);
    int fugato = strcmp(argv[4], "fugato") == 0; long lazy_us = atol(argv[5]);
    const char *path = fugato ? "/connection/websocket" : "/socket.io/?EIO=4&transport=websocket";
    const char *marker = fugato ? "\"pub\":" : "42[\"msg\""; size_t mlen = strlen(marker);
    conn_t *conns = calloc(n, sizeof *conns);
    int ep = epoll_create1(0);
    char *line = NULL; size_t lcap = 0;
    long long messages = 0; int ready = 0;
    size_t scap = 1 << 20, slen = 0; long long *samples = malloc(scap * sizeof *samples);
    for (int i = 0; i < n; i++) {
        ssize_t l = getline(&line, &lcap, stdin); if (l <= 0) { fprintf(stderr, "setup line missing\n"); return 1; }
        if (line[l - 1] == '\n') line[--l] = 0;
        int fd = connect_ws(host, port, path);
        if (fd < 0) { printf("{\"error\":\"connect failed after %d connections\"}\n", i); fflush(stdout); return 1; }
        conns[i].fd = fd; conns[i].cap = 1 << 16; conns[i].buf = malloc(conns[i].cap);
        /* the handshake reply: read up to the blank line, keep what follows */
        for (;;) {
            ssize_t r = read(fd, conns[i].buf + conns[i].len, conns[i].cap - conns[i].len);
            if (r <= 0) { printf("{\"error\":\"handshake failed\"}\n"); fflush(stdout); return 1; }
            conns[i].len += r;
            char *end = memmem(conns[i].buf, conns[i].len, "\r\n\r\n", 4);
            if (end) { size_t hl = end + 4 - conns[i].buf; memmove(conns[i].buf, end + 4, conns[i].len - hl); conns[i].len -= hl; break; }
        }
        if (fugato) {
            /* the setup line is the JSON of the first frame with "\n" written as \\n: unescape it */
            char *p = line, *q = line; while (*p) { if (p[0] == '\\' && p[1] == 'n') { *q++ = '\n'; p += 2; } else *q++ = *p++; } *q = 0;
            send_frame(fd, line, strlen(line));
        } else conns[i].room = strdup(line);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = i };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    printf("{\"connected\":%d}\n", n); fflush(stdout);
    struct epoll_event *evs = malloc(sizeof *evs * 4096);
    char frame[256];
    for (;;) {
        struct pollfd pin = { .fd = 0, .events = POLLIN };
        while (poll(&pin, 1, 0) > 0) {
            ssize_t l = getline(&line, &lcap, stdin); if (l <= 0) return 0;
            if (!strncmp(line, "stop", 4)) return 0;
            if (!strncmp(line, "reset", 5)) { messages = 0; slen = 0; printf("\"ok\"\n"); }
            else if (!strncmp(line, "report", 6)) {
                printf("{\"ready\":%d,\"messages\":%lld,\"samples\":[", ready, messages);
                for (size_t i = 0; i < slen; i++) printf(i ? ",%lld" : "%lld", samples[i]);
                printf("]}\n");
            }
            fflush(stdout);
        }
        int k = epoll_wait(ep, evs, 4096, 10);
        for (int e = 0; e < k; e++) {
            conn_t *c = &conns[evs[e].data.u32];
            if (c->cap - c->len < 65536) { c->cap *= 2; c->buf = realloc(c->buf, c->cap); }
            ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len);
            if (r <= 0) { if (r == 0) epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); continue; }
            c->len += r;
            size_t pos = 0; char *newest = NULL;
            while (c->len - pos >= 2) {
                unsigned char *b = (unsigned char *)c->buf + pos;
                size_t len = b[1] & 0x7f, head = 2;
                if (len == 126) { if (c->len - pos < 4) break; len = (b[2] << 8) | b[3]; head = 4; }
                else if (len == 127) { if (c->len - pos < 10) break; len = 0; for (int i = 2; i < 10; i++) len = (len << 8) | b[i]; head = 10; }
                if (c->len - pos < head + len) break;
                char *p = c->buf + pos + head, *end = p + len; int found = 0;
                if ((b[0] & 0x0f) == 1) {
                    for (char *s = p; (s = memmem(s, end - s, marker, mlen)); s += mlen) found++;
                    if (found) {
                        messages += found;
                        for (char *s = p; (s = memmem(s, end - s, "\"t\":", 4)); s += 4) newest = s + 4;
                    } else if (fugato) {
                        if ((len >= 2 && p[0] == '{' && p[1] == '}') || memmem(p, len, "\n{}", 3)) send_frame(c->fd, "{}", 2);
                        if (memmem(p, len, "\"id\":2", 6)) ready++;
                    } else if (len >= 2 && p[0] == '0' && p[1] == '{') send_frame(c->fd, "40", 2);
                    else if (len >= 2 && p[0] == '4' && p[1] == '0') {
                        int m = snprintf(frame, sizeof frame, "42[\"join\",\"%s\"]", c->room); send_frame(c->fd, frame, m);
                    } else if (len >= 11 && !memcmp(p, "42[\"joined\"", 11)) ready++;
                    else if (len == 1 && p[0] == '2') send_frame(c->fd, "3", 1);
                }
                pos += head + len;
            }
            if (newest && slen < scap) samples[slen++] = now_ns() - strtoll(newest, NULL, 10);
            memmove(c->buf, c->buf + pos, c->len - pos); c->len -= pos;
        }
        if (k > 0 && lazy_us) usleep(lazy_us);
    }
}
