/*
 * loadgen: a small single-threaded HTTP/1.1-over-mutual-TLS load generator for bench/run.py.
 *
 * Why not an off-the-shelf tool: wrk, h2load and hey cannot present a client certificate; ab
 * speaks HTTP/1.0, reports whole milliseconds and has no fixed-rate mode; curl --parallel and a
 * Python asyncio client cannot outpace nginx on one core. This one is epoll + OpenSSL, one core,
 * and bench/run.py reports its CPU use next to every number so a saturated generator shows.
 *
 * Modes (all print one JSON object on stdout):
 *   http       N keep-alive connections, GET PATH; closed loop (--rate 0) or fixed rate (--rate R:
 *              request i is due at t0 + i/R, latency is measured from that due time, so queueing
 *              behind a slow server counts: no coordinated omission). --warmup then --duration.
 *   handshake  N parallel clients, each: TCP connect, full TLS 1.3 mTLS handshake (or a resumed
 *              one with --resume: offers the last ticket it got), waits for the server's session
 *              ticket, sends close_notify, waits for the server's close. Counts handshakes/s.
 *   idle       opens N connections (at most --concurrency handshaking at once), one GET PATH on
 *              each, prints {"mode":"idle",...}, then holds them open until stdin is closed or a
 *              line is read.
 *   xfer       one connection, --count sequential transfers: GET PATH (download, body discarded)
 *              or --method PUT with --size bytes of body (upload). Reports seconds per transfer.
 *
 * Build: cc -O2 -o loadgen loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { M_HTTP, M_HANDSHAKE, M_IDLE, M_XFER };
enum { ST_FREE, ST_CONNECT, ST_HANDSHAKE, ST_IDLE, ST_SEND, ST_RECV, ST_TICKET, ST_CLOSING };
enum { CS_SIZE, CS_DATA, CS_DCRLF, CS_TRAILER };

typedef struct conn {
    int fd;
    uint32_t gen;
    int idx;
    int st;
    SSL *ssl;
    SSL_SESSION *sess; /* handshake --resume: last ticket received */
    uint64_t t_conn;   /* connect start */
    uint64_t t_start;  /* request due/sent time */
    uint64_t deadline; /* ticket / close wait */
    int in_idle;
    int got_ticket;
    int retried;
    /* request */
    size_t req_off;
    uint64_t body_left;
    /* response */
    char hdr[8192];
    size_t hlen;
    int in_body;
    int chunked;
    int cst;
    int64_t body_rem; /* -1: until close */
    uint64_t csize;
    int cext;
    int tline;
    uint64_t resp_bytes;
    uint64_t got_any;
} conn;

/* options */
static int mode = M_HTTP;
static const char *host = "127.0.0.1", *sni = "localhost", *cert = NULL, *key = NULL, *path = "/small";
static const char *method = "GET";
static int port = 0, nconns = 32, concurrency = 128, resume = 0, count = 1, tls12 = 0;
static double rate = 0, duration = 5, warmup = 1;
static uint64_t size = 0;

static SSL_CTX *ctx;
static int ep;
static conn *conns;
static char request[1024];
static size_t request_len;
static char rbuf[256 * 1024];
static char wbody[256 * 1024];
static int ssl_idx;

/* measurement */
static uint64_t t_begin, t_measure, t_end;
static uint64_t *lat;
static size_t nlat, caplat;
static uint64_t completed, errors, reconnects, handshakes, reused, censored;
static uint64_t issued; /* fixed rate: requests scheduled so far */
static uint64_t *pending; /* fixed rate: ring of due times */
static size_t pend_head, pend_len, pend_cap;
static int *idle_stack;
static size_t idle_len;
static int establishing, settled;
static double xfer_secs[1024];
static uint64_t xfer_bytes[1024];
static int xfer_done;
static char last_error[256];
static char negotiated[128];

/* bench/run.py samples the servers' CPU time when it reads these lines */
static void mark(const char *what) {
    printf("MARK %s\n", what);
    fflush(stdout);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static double cpu_secs(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void note_error(const char *what) {
    errors++;
    unsigned long e = ERR_peek_last_error();
    if (e) {
        char buf[200];
        ERR_error_string_n(e, buf, sizeof buf);
        snprintf(last_error, sizeof last_error, "%s: %s", what, buf);
    } else {
        snprintf(last_error, sizeof last_error, "%s: %s", what, errno ? strerror(errno) : "eof");
    }
    ERR_clear_error();
}

static void record(uint64_t v) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) { perror("realloc"); exit(2); }
    }
    lat[nlat++] = v;
}

static int new_session_cb(SSL *ssl, SSL_SESSION *s) {
    conn *c = SSL_get_ex_data(ssl, ssl_idx);
    if (!c) return 0;
    c->got_ticket = 1;
    if (mode == M_HANDSHAKE && resume) {
        if (c->sess) SSL_SESSION_free(c->sess);
        c->sess = s;
        return 1; /* we keep the reference */
    }
    return 0;
}

static void conn_release(conn *c) {
    if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; }
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    c->gen++;
    c->st = ST_FREE;
}

static int conn_open(conn *c) {
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { note_error("socket"); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        note_error("connect");
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->gen++;
    c->st = ST_CONNECT;
    c->t_conn = now_ns();
    c->got_ticket = 0;
    c->hlen = 0;
    c->in_body = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP,
                             .data.u64 = ((uint64_t)c->idx << 32) | c->gen};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { perror("epoll_ctl"); exit(2); }
    return 0;
}

static void start_request(conn *c, uint64_t due) {
    c->st = ST_SEND;
    c->t_start = due;
    c->req_off = 0;
    c->body_left = (strcmp(method, "PUT") == 0) ? size : 0;
    c->hlen = 0;
    c->in_body = 0;
    c->chunked = 0;
    c->resp_bytes = 0;
    c->got_any = 0;
}

static void push_idle(conn *c) {
    c->st = ST_IDLE;
    if (!c->in_idle) { c->in_idle = 1; idle_stack[idle_len++] = c->idx; }
}

/* Parse response bytes; 1: response complete, 0: need more, -1: bad response. */
static int parse(conn *c, const char *data, size_t n) {
    c->got_any += n;
    if (!c->in_body) {
        size_t room = sizeof c->hdr - 1 - c->hlen;
        size_t take = n < room ? n : room;
        memcpy(c->hdr + c->hlen, data, take);
        c->hlen += take;
        c->hdr[c->hlen] = 0;
        char *e = strstr(c->hdr, "\r\n\r\n");
        if (!e) return c->hlen == sizeof c->hdr - 1 ? -1 : 0;
        size_t hend = (size_t)(e + 4 - c->hdr);
        size_t used = take - (c->hlen - hend);
        data += used;
        n -= used;
        int status = (c->hlen > 12 && strncmp(c->hdr, "HTTP/1.", 7) == 0) ? atoi(c->hdr + 9) : 0;
        if (status < 100) return -1;
        if (status < 200) { /* interim (100 Continue): parse the next head */
            c->hlen = 0;
            return n ? parse(c, data, n) : 0;
        }
        c->in_body = 1;
        c->chunked = 0;
        c->body_rem = -1;
        for (char *line = strstr(c->hdr, "\r\n") + 2; line < c->hdr + hend - 2; line = strstr(line, "\r\n") + 2) {
            if (strncasecmp(line, "content-length:", 15) == 0) c->body_rem = strtoll(line + 15, NULL, 10);
            else if (strncasecmp(line, "transfer-encoding:", 18) == 0 && strcasestr(line, "chunked") &&
                     strcasestr(line, "chunked") < strstr(line, "\r\n"))
                c->chunked = 1;
        }
        if (status == 204 || status == 304) c->body_rem = 0, c->chunked = 0;
        if (c->chunked) { c->cst = CS_SIZE; c->csize = 0; c->cext = 0; }
        if (!c->chunked && c->body_rem == 0) return 1;
    }
    if (!c->chunked) {
        c->resp_bytes += n;
        if (c->body_rem < 0) return 0; /* until close */
        if ((int64_t)n > c->body_rem) return -1;
        c->body_rem -= n;
        return c->body_rem == 0;
    }
    while (n) {
        char ch;
        switch (c->cst) {
        case CS_SIZE:
            ch = *data++, n--;
            if (ch == '\n') {
                c->cst = c->csize ? CS_DATA : CS_TRAILER;
                c->tline = 0;
            } else if (!c->cext && ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F'))) {
                c->csize = c->csize * 16 + (ch <= '9' ? ch - '0' : (ch | 32) - 'a' + 10);
            } else if (ch == ';') {
                c->cext = 1;
            }
            break;
        case CS_DATA: {
            size_t take = n < c->csize ? n : c->csize;
            data += take, n -= take, c->csize -= take, c->resp_bytes += take;
            if (!c->csize) c->cst = CS_DCRLF;
            break;
        }
        case CS_DCRLF:
            ch = *data++, n--;
            if (ch == '\n') { c->cst = CS_SIZE; c->csize = 0; c->cext = 0; }
            break;
        case CS_TRAILER:
            ch = *data++, n--;
            if (ch == '\n') {
                if (c->tline == 0) return 1;
                c->tline = 0;
            } else if (ch != '\r') {
                c->tline++;
            }
            break;
        }
    }
    return 0;
}

static void reconnect(conn *c, int retry_request);
static void on_response(conn *c);

static void begin_handshake(conn *c) {
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_connect_state(c->ssl);
    SSL_set_tlsext_host_name(c->ssl, sni);
    SSL_set_ex_data(c->ssl, ssl_idx, c);
    if (mode == M_HANDSHAKE && resume && c->sess) SSL_set_session(c->ssl, c->sess);
    c->st = ST_HANDSHAKE;
}

static uint64_t pop_pending(void) {
    uint64_t due = pending[pend_head];
    pend_head = (pend_head + 1) % pend_cap;
    pend_len--;
    return due;
}

/* Run a connection's state machine until it would block. */
static void drive(conn *c) {
    for (;;) {
        int r, err;
        switch (c->st) {
        case ST_FREE:
            return;
        case ST_CONNECT: {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr) {
                errno = soerr;
                note_error("connect");
                reconnect(c, 1);
                return;
            }
            begin_handshake(c);
            break;
        }
        case ST_HANDSHAKE:
            r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
                note_error("handshake");
                reconnect(c, 1);
                return;
            }
            if (!negotiated[0])
                snprintf(negotiated, sizeof negotiated, "%s %s", SSL_get_version(c->ssl),
                         SSL_CIPHER_get_name(SSL_get_current_cipher(c->ssl)));
            if (mode == M_HANDSHAKE) {
                uint64_t t = now_ns();
                if (t >= t_measure && t < t_end) {
                    handshakes++;
                    if (SSL_session_reused(c->ssl)) reused++;
                    record(t - c->t_conn);
                }
                c->st = ST_TICKET;
                c->deadline = t + 1000000000ull;
                break;
            }
            if (mode == M_HTTP && establishing) {
                push_idle(c);
                settled++;
                return;
            }
            if (mode == M_HTTP && c->retried) { /* a request was cut by a server-side close: resend */
                c->retried = 0;
                start_request(c, c->t_start);
                break;
            }
            if (mode == M_HTTP && rate == 0) {
                start_request(c, now_ns());
                break;
            }
            if (mode == M_HTTP) {
                if (pend_len) { start_request(c, pop_pending()); break; }
                push_idle(c);
                return;
            }
            start_request(c, now_ns()); /* idle and xfer: one request */
            break;
        case ST_TICKET:
            r = SSL_read(c->ssl, rbuf, sizeof rbuf);
            if (r > 0) continue;
            err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ && !c->got_ticket && now_ns() < c->deadline) return;
            if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_ZERO_RETURN) ERR_clear_error();
            SSL_shutdown(c->ssl);
            shutdown(c->fd, SHUT_WR);
            c->st = ST_CLOSING;
            c->deadline = now_ns() + 1000000000ull;
            break;
        case ST_CLOSING: {
            ssize_t k;
            while ((k = recv(c->fd, rbuf, sizeof rbuf, 0)) > 0) {}
            if (k < 0 && errno == EAGAIN && now_ns() < c->deadline) return;
            reconnect(c, 0);
            return;
        }
        case ST_IDLE:
            /* an idle connection became readable: the server closed it (or sent junk) */
            r = SSL_read(c->ssl, rbuf, sizeof rbuf);
            if (r > 0) continue;
            err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ) return;
            ERR_clear_error();
            if (mode == M_IDLE) { errors++; conn_release(c); return; }
            reconnect(c, 0);
            return;
        case ST_SEND:
            while (c->req_off < request_len) {
                r = SSL_write(c->ssl, request + c->req_off, request_len - c->req_off);
                if (r <= 0) goto write_blocked;
                c->req_off += r;
            }
            while (c->body_left) {
                size_t k = c->body_left < sizeof wbody ? c->body_left : sizeof wbody;
                r = SSL_write(c->ssl, wbody, k);
                if (r <= 0) goto write_blocked;
                c->body_left -= r;
            }
            c->st = ST_RECV;
            break;
        write_blocked:
            err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
            note_error("write");
            reconnect(c, c->got_any == 0);
            return;
        case ST_RECV:
            r = SSL_read(c->ssl, rbuf, sizeof rbuf);
            if (r > 0) {
                int p = parse(c, rbuf, r);
                if (p < 0) { note_error("bad response"); reconnect(c, 0); return; }
                if (p > 0) on_response(c);
                break;
            }
            err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
            if (c->in_body && !c->chunked && c->body_rem < 0) { ERR_clear_error(); on_response(c); break; }
            if (c->got_any == 0) { ERR_clear_error(); reconnect(c, 1); return; } /* keep-alive close race */
            note_error("read");
            reconnect(c, 0);
            return;
        }
    }
}

static void on_response(conn *c) {
    uint64_t t = now_ns();
    if (mode == M_HTTP) {
        if (c->t_start >= t_measure && c->t_start < t_end && t <= t_end) {
            record(t - c->t_start);
            completed++;
        }
        if (t >= t_end) { c->st = ST_IDLE; return; }
        if (rate == 0) { start_request(c, t); return; }
        if (pend_len) { start_request(c, pop_pending()); return; }
        push_idle(c);
        return;
    }
    if (mode == M_IDLE) {
        settled++;
        c->st = ST_IDLE;
        return;
    }
    /* xfer */
    xfer_secs[xfer_done] = (t - c->t_start) / 1e9;
    xfer_bytes[xfer_done] = strcmp(method, "PUT") == 0 ? size : c->resp_bytes;
    xfer_done++;
    if (xfer_done < count) start_request(c, now_ns());
    else c->st = ST_IDLE;
}

static void reconnect(conn *c, int retry_request) {
    if (c->st == ST_CLOSING || c->st == ST_TICKET) {
        conn_release(c);
        if (mode == M_HANDSHAKE && now_ns() < t_end) conn_open(c);
        return;
    }
    int was_request = c->st == ST_SEND || c->st == ST_RECV;
    conn_release(c);
    if (establishing) { settled++; return; }
    if (mode == M_XFER) { xfer_done = count; return; }
    if (now_ns() >= t_end) return;
    reconnects++;
    c->retried = was_request && retry_request;
    if (conn_open(c) < 0) c->st = ST_FREE;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen MODE --port P --cert C --key K [--host 127.0.0.1] [--sni localhost]\n"
            "  [--conns N] [--path /small] [--rate R] [--duration S] [--warmup S] [--resume]\n"
            "  [--concurrency N] [--method GET|PUT] [--size BYTES] [--count N] [--tls12]\n"
            "MODE: http | handshake | idle | xfer\n");
    exit(2);
}

static double pct(double q) {
    if (!nlat) return 0;
    size_t i = (size_t)(q * (nlat - 1) + 0.5);
    return lat[i] / 1e6;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (!strcmp(argv[1], "http")) mode = M_HTTP;
    else if (!strcmp(argv[1], "handshake")) mode = M_HANDSHAKE;
    else if (!strcmp(argv[1], "idle")) mode = M_IDLE;
    else if (!strcmp(argv[1], "xfer")) mode = M_XFER;
    else usage();
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (i++, 1))
        if (OPT("--host")) host = v;
        else if (OPT("--sni")) sni = v;
        else if (OPT("--port")) port = atoi(v);
        else if (OPT("--cert")) cert = v;
        else if (OPT("--key")) key = v;
        else if (OPT("--path")) path = v;
        else if (OPT("--method")) method = v;
        else if (OPT("--conns")) nconns = atoi(v);
        else if (OPT("--concurrency")) concurrency = atoi(v);
        else if (OPT("--rate")) rate = atof(v);
        else if (OPT("--duration")) duration = atof(v);
        else if (OPT("--warmup")) warmup = atof(v);
        else if (OPT("--size")) size = strtoull(v, NULL, 10);
        else if (OPT("--count")) count = atoi(v);
        else if (!strcmp(a, "--resume")) resume = 1;
        else if (!strcmp(a, "--tls12")) tls12 = 1;
        else usage();
    }
    if (!port || !cert || !key) usage();
    if (mode == M_XFER) nconns = 1;
    if (count > 1024) count = 1024;
    signal(SIGPIPE, SIG_IGN);
    memset(wbody, 'x', sizeof wbody);

    ctx = SSL_CTX_new(TLS_client_method());
    if (tls12) {
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    } else {
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* the client's cost is not what is measured */
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (mode == M_IDLE) SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    ssl_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);

    if (!strcmp(method, "PUT"))
        request_len = snprintf(request, sizeof request,
                               "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %llu\r\nContent-Type: application/octet-stream\r\n\r\n",
                               path, sni, (unsigned long long)size);
    else
        request_len = snprintf(request, sizeof request, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: loadgen\r\n\r\n", method,
                               path, sni);

    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc(nconns, sizeof *conns);
    idle_stack = calloc(nconns, sizeof *idle_stack);
    for (int i = 0; i < nconns; i++) { conns[i].idx = i; conns[i].fd = -1; }
    if (rate > 0) {
        pend_cap = (size_t)(rate * (duration + warmup + 1)) + 16;
        pending = malloc(pend_cap * sizeof *pending);
    }

    struct epoll_event evs[512];
    uint64_t t0 = now_ns();

    if (mode == M_HANDSHAKE) {
        t_begin = t0;
        t_measure = t_begin + (uint64_t)(warmup * 1e9);
        t_end = t_measure + (uint64_t)(duration * 1e9);
        for (int i = 0; i < nconns; i++) conn_open(&conns[i]);
        double cpu_a = -1;
        uint64_t next_scan = t0 + 50000000ull;
        for (;;) {
            uint64_t t = now_ns();
            if (cpu_a < 0 && t >= t_measure) { cpu_a = cpu_secs(); mark("start"); }
            if (t >= t_end) break;
            if (t >= next_scan) {
                next_scan = t + 50000000ull;
                for (int i = 0; i < nconns; i++) {
                    conn *c = &conns[i];
                    if (c->st == ST_FREE) conn_open(c);
                    else if ((c->st == ST_TICKET || c->st == ST_CLOSING) && t >= c->deadline) drive(c);
                }
            }
            uint64_t until = next_scan < t_end ? next_scan : t_end;
            if (cpu_a < 0 && t_measure < until) until = t_measure;
            struct timespec ts = {(until - t) / 1000000000ull, (until - t) % 1000000000ull};
            int n = epoll_pwait2(ep, evs, 512, &ts, NULL);
            for (int k = 0; k < n; k++) {
                conn *c = &conns[evs[k].data.u64 >> 32];
                if ((uint32_t)evs[k].data.u64 == c->gen) drive(c);
            }
        }
        mark("end");
        double cpu = cpu_secs() - (cpu_a < 0 ? 0 : cpu_a);
        qsort(lat, nlat, sizeof *lat, cmp_u64);
        printf("{\"mode\":\"handshake\",\"resume\":%d,\"conns\":%d,\"duration\":%.3f,\"handshakes\":%llu,"
               "\"per_sec\":%.1f,\"reused\":%llu,\"errors\":%llu,\"reconnects\":%llu,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
               "\"cpu_s\":%.3f,\"tls\":\"%s\",\"last_error\":\"%s\"}\n",
               resume, nconns, duration, (unsigned long long)handshakes, handshakes / duration,
               (unsigned long long)reused, (unsigned long long)errors, (unsigned long long)reconnects, pct(0.5),
               pct(0.99), cpu, negotiated, last_error);
        return 0;
    }

    if (mode == M_XFER) {
        t_end = UINT64_MAX;
        mark("start");
        conn_open(&conns[0]);
        uint64_t give_up = t0 + 600ull * 1000000000ull;
        double cpu_a = cpu_secs();
        while (xfer_done < count && now_ns() < give_up) {
            int n = epoll_wait(ep, evs, 512, 1000);
            for (int k = 0; k < n; k++) {
                conn *c = &conns[evs[k].data.u64 >> 32];
                if ((uint32_t)evs[k].data.u64 == c->gen) drive(c);
            }
        }
        mark("end");
        double cpu = cpu_secs() - cpu_a;
        printf("{\"mode\":\"xfer\",\"method\":\"%s\",\"errors\":%llu,\"cpu_s\":%.3f,\"tls\":\"%s\",\"last_error\":\"%s\",\"transfers\":[",
               method, (unsigned long long)errors, cpu, negotiated, last_error);
        for (int i = 0; i < xfer_done; i++)
            printf("%s{\"seconds\":%.6f,\"bytes\":%llu}", i ? "," : "", xfer_secs[i], (unsigned long long)xfer_bytes[i]);
        printf("]}\n");
        return 0;
    }

    /* http and idle: establish every connection first (at most `concurrency` handshaking at once) */
    establishing = 1;
    t_end = UINT64_MAX;
    t_measure = UINT64_MAX;
    {
        int next = 0;
        uint64_t give_up = t0 + 120ull * 1000000000ull;
        while (now_ns() < give_up) {
            int inflight = next - settled;
            while (next < nconns && inflight < concurrency) {
                if (conn_open(&conns[next]) == 0) inflight++;
                else settled++;
                next++;
            }
            if (next == nconns && settled >= nconns) break;
            int n = epoll_wait(ep, evs, 512, 100);
            for (int k = 0; k < n; k++) {
                conn *c = &conns[evs[k].data.u64 >> 32];
                if ((uint32_t)evs[k].data.u64 == c->gen) drive(c);
            }
        }
    }
    establishing = 0;
    int open_now = 0;
    for (int i = 0; i < nconns; i++) open_now += conns[i].st == ST_IDLE;
    if (mode == M_IDLE) {
        printf("{\"mode\":\"idle\",\"requested\":%d,\"open\":%d,\"errors\":%llu,\"seconds\":%.3f,\"tls\":\"%s\",\"last_error\":\"%s\"}\n",
               nconns, open_now, (unsigned long long)errors, (now_ns() - t0) / 1e9, negotiated, last_error);
        fflush(stdout);
        char line[64];
        if (!fgets(line, sizeof line, stdin)) {}
        return 0;
    }
    if (open_now == 0) {
        printf("{\"mode\":\"http\",\"error\":\"no connection could be opened\",\"last_error\":\"%s\"}\n", last_error);
        return 1;
    }

    /* http: measure */
    t_begin = now_ns();
    t_measure = t_begin + (uint64_t)(warmup * 1e9);
    t_end = t_measure + (uint64_t)(duration * 1e9);
    double cpu_a = -1;
    if (rate == 0) {
        size_t n = idle_len;
        idle_len = 0;
        for (size_t i = 0; i < n; i++) {
            conn *c = &conns[idle_stack[i]];
            c->in_idle = 0;
            if (c->st != ST_IDLE) continue;
            start_request(c, now_ns());
            drive(c);
        }
    }
    for (;;) {
        uint64_t t = now_ns();
        if (cpu_a < 0 && t >= t_measure) { cpu_a = cpu_secs(); mark("start"); }
        if (t >= t_end) break;
        uint64_t until = t_end;
        if (rate > 0) {
            uint64_t due_n = (uint64_t)((t - t_begin) / 1e9 * rate) + 1;
            while (issued < due_n && pend_len < pend_cap) {
                pending[(pend_head + pend_len) % pend_cap] = t_begin + (uint64_t)(issued * 1e9 / rate);
                pend_len++;
                issued++;
            }
            while (pend_len && idle_len) {
                conn *c = &conns[idle_stack[--idle_len]];
                c->in_idle = 0;
                if (c->st != ST_IDLE) continue;
                start_request(c, pop_pending());
                drive(c);
            }
            uint64_t next_due = t_begin + (uint64_t)(issued * 1e9 / rate);
            if (next_due < until) until = next_due;
        }
        if (cpu_a < 0 && t_measure < until) until = t_measure;
        t = now_ns();
        uint64_t wait = until > t ? until - t : 0;
        struct timespec ts = {wait / 1000000000ull, wait % 1000000000ull};
        int n = epoll_pwait2(ep, evs, 512, &ts, NULL);
        for (int k = 0; k < n; k++) {
            conn *c = &conns[evs[k].data.u64 >> 32];
            if ((uint32_t)evs[k].data.u64 == c->gen) drive(c);
        }
    }
    mark("end");
    double cpu = cpu_secs() - (cpu_a < 0 ? cpu_secs() : cpu_a);
    if (rate > 0) {
        /* requests still queued or in flight at the end count with the time they had waited so far */
        for (size_t i = 0; i < pend_len; i++) {
            uint64_t due = pending[(pend_head + i) % pend_cap];
            if (due >= t_measure && due < t_end) { record(t_end - due); censored++; }
        }
        for (int i = 0; i < nconns; i++) {
            conn *c = &conns[i];
            if ((c->st == ST_SEND || c->st == ST_RECV) && c->t_start >= t_measure && c->t_start < t_end) {
                record(t_end - c->t_start);
                censored++;
            }
        }
    }
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++) sum += lat[i];
    printf("{\"mode\":\"http\",\"conns\":%d,\"open\":%d,\"rate\":%.1f,\"duration\":%.3f,\"completed\":%llu,\"rps\":%.1f,"
           "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,\"mean_ms\":%.3f,"
           "\"censored\":%llu,\"errors\":%llu,\"reconnects\":%llu,\"cpu_s\":%.3f,\"tls\":\"%s\",\"last_error\":\"%s\"}\n",
           nconns, open_now, rate, duration, (unsigned long long)completed, completed / duration, pct(0.5), pct(0.9),
           pct(0.99), pct(0.999), nlat ? lat[nlat - 1] / 1e6 : 0, nlat ? sum / nlat / 1e6 : 0,
           (unsigned long long)censored, (unsigned long long)errors, (unsigned long long)reconnects, cpu, negotiated,
           last_error);
    return 0;
}
