/* bench/gateways' load generator in C (issue 77), loadgen.py's drop-in: aiohttp's client
 * cost this 2-core machine 100-200 us of CPU a call, more than the gateway measured, and
 * took it from the same two cores; this one costs ~11-14 us. One thread, epoll, C
 * keep-alive HTTP/1.1 connections to one target; each call's answer parsed (status,
 * Content-Length or chunked, the body whole) and checked as loadgen.py checks it.
 *
 *     loadgen SPEC OUT
 *
 * SPEC: key=value lines (cload.py writes them; no JSON parser here): host, port, path,
 * header (one a line, "Name: value"), body (its "{{id}}" and "{{n}}" replaced by the
 * call's number + 2 and its number), kind (model | mcp), stream (0 | 1), n, c, warmup,
 * seconds. `warmup` calls first, not measured, none begun after seconds / 10; then `n`
 * calls numbered on, none begun after `seconds`.
 * OUT: {"wall_s", "latencies", "first_chunks", "errors", "first_error", "reconnects"}
 * (seconds), as loadgen.py writes it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_S 60.0 /* a call's, as loadgen.py's ClientTimeout(total=60) */
#define DETAIL 300     /* bytes of an answer quoted */
#define KINDS 32

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, errno ? strerror(errno) : "bad input");
    exit(2);
}

static void reserve(buf_t *b, size_t more) {
    if (b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die("realloc");
    b->cap = cap;
}

static void add(buf_t *b, const char *s, size_t n) {
    reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void addf(buf_t *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    add(b, tmp, n < (int)sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the spec ---- */
static char host[256] = "127.0.0.1", path[4096] = "/", *body_tpl = "";
static int port, stream, is_mcp;
static long n_calls, conc = 1, warmup;
static double seconds = 60.0;
static buf_t prefix; /* request line, Host and the spec's headers */

static void read_spec(const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) die(file);
    buf_t headers = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) > 0) {
        while (got && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        char *v = strchr(line, '=');
        if (!v) continue;
        *v++ = 0;
        if (!strcmp(line, "host")) snprintf(host, sizeof host, "%s", v);
        else if (!strcmp(line, "port")) port = atoi(v);
        else if (!strcmp(line, "path")) snprintf(path, sizeof path, "%s", v);
        else if (!strcmp(line, "header")) addf(&headers, "%s\r\n", v);
        else if (!strcmp(line, "body")) body_tpl = strdup(v);
        else if (!strcmp(line, "kind")) is_mcp = !strcmp(v, "mcp");
        else if (!strcmp(line, "stream")) stream = atoi(v);
        else if (!strcmp(line, "n")) n_calls = atol(v);
        else if (!strcmp(line, "c")) conc = atol(v);
        else if (!strcmp(line, "warmup")) warmup = atol(v);
        else if (!strcmp(line, "seconds")) seconds = atof(v);
    }
    free(line);
    fclose(f);
    if (port <= 0 || conc <= 0 || n_calls < 0 || warmup < 0) {
        errno = 0;
        die("the spec (port, c, n, warmup)");
    }
    addf(&prefix, "POST %s HTTP/1.1\r\nHost: %s:%d\r\n", path, host, port);
    if (headers.len) add(&prefix, headers.p, headers.len);
    free(headers.p);
}

/* the call's body: the template with {{id}} and {{n}} replaced */
static void expand(buf_t *out, long i) {
    const char *s = body_tpl;
    while (*s) {
        if (!strncmp(s, "{{id}}", 6)) {
            addf(out, "%ld", i + 2);
            s += 6;
        } else if (!strncmp(s, "{{n}}", 5)) {
            addf(out, "%ld", i);
            s += 5;
        } else {
            const char *next = strstr(s, "{{");
            size_t k = next ? (size_t)(next - s) : strlen(s);
            if (k == 0) k = 2; /* a "{{" of no marker: as it is */
            add(out, s, k);
            s += k;
        }
    }
}

/* ---- the figures ---- */
static double *latencies, *firsts;
static long n_lat, n_first, n_errors, reconnects;
static struct {
    char kind[128];
    char said[DETAIL + 160];
    long count;
} kinds[KINDS];
static int n_kinds;

static void error(const char *kind, const char *detail) {
    n_errors++;
    for (int k = 0; k < n_kinds; k++)
        if (!strcmp(kinds[k].kind, kind)) {
            kinds[k].count++;
            return;
        }
    if (n_kinds == KINDS) return;
    snprintf(kinds[n_kinds].kind, sizeof kinds[0].kind, "%s", kind);
    /* str(Wrong): "kind: detail", quoted to 300 bytes as loadgen.py quotes it */
    snprintf(kinds[n_kinds].said, sizeof kinds[0].said, "%s%s%s", kind,
             detail && *detail ? ": " : "", detail ? detail : "");
    kinds[n_kinds].said[DETAIL] = 0;
    kinds[n_kinds].count = 1;
    n_kinds++;
}

/* Python's repr of the first 300 bytes of an answer, b'...' */
static void quote(char *out, size_t cap, const char *s, size_t len) {
    size_t o = 0;
    if (len > DETAIL) len = DETAIL;
    o += snprintf(out + o, cap - o, "b'");
    for (size_t i = 0; i < len && o + 6 < cap; i++) {
        unsigned char ch = s[i];
        if (ch == '\\' || ch == '\'') o += snprintf(out + o, cap - o, "\\%c", ch);
        else if (ch == '\n') o += snprintf(out + o, cap - o, "\\n");
        else if (ch == '\r') o += snprintf(out + o, cap - o, "\\r");
        else if (ch == '\t') o += snprintf(out + o, cap - o, "\\t");
        else if (ch < 32 || ch > 126) o += snprintf(out + o, cap - o, "\\x%02x", ch);
        else out[o++] = ch;
    }
    snprintf(out + o, cap - o, "'");
}

/* ---- one connection and its call ---- */
enum { HEAD, BODY_LEN, BODY_EOF, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER };

typedef struct {
    int fd;
    int busy, retried, served;
    long call;
    double t0, first;
    buf_t out;
    size_t sent;
    buf_t in; /* raw bytes of the answer; `pos` parsed */
    size_t pos;
    buf_t body; /* the answer's body, decoded */
    int stage, status, closing;
    long remaining;
    int writing; /* EPOLLOUT asked for */
} conn_t;

static conn_t *conns;
static int ep, busy_count;
static long next_call, end_call;
static double stop_at;
static int measuring;

static void drop(conn_t *k) {
    if (k->fd >= 0) close(k->fd); /* closing it takes it out of the epoll set */
    k->fd = -1;
}

/* 0, or the errno of a failed connect */
static int dial(conn_t *k) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        errno = 0;
        die("host (an IPv4 address)");
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    /* loopback: a blocking connect is done at once; non-blocking afterwards */
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int err = errno;
        close(fd);
        return err;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = k};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    k->fd = fd;
    k->served = 0;
    k->writing = 0;
    return 0;
}

static void want_write(conn_t *k, int on) {
    if (k->writing == on) return; /* (a syscall a call saved) */
    k->writing = on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = k};
    epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
}

static void reset_answer(conn_t *k) {
    k->in.len = k->pos = k->body.len = 0;
    k->stage = HEAD;
    k->status = k->closing = 0;
    k->remaining = 0;
    k->first = -1;
}

static void lose(conn_t *k, const char *kind);

/* what is left of the request written; 0, or -1 with the call lost */
static int flush(conn_t *k) {
    while (k->sent < k->out.len) {
        ssize_t w = send(k->fd, k->out.p + k->sent, k->out.len - k->sent, MSG_NOSIGNAL);
        if (w > 0) {
            k->sent += w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_write(k, 1);
            return 0;
        }
        char kind[160];
        snprintf(kind, sizeof kind, "write: %s", strerror(errno));
        lose(k, kind);
        return -1;
    }
    want_write(k, 0);
    return 0;
}

/* the call sent on k's connection, dialled first if it has none; 0, or -1 with the
 * call lost */
static int send_call(conn_t *k) {
    int err = k->fd < 0 ? dial(k) : 0;
    if (err) {
        char kind[160];
        snprintf(kind, sizeof kind, "connect: %s", strerror(err));
        lose(k, kind);
        return -1;
    }
    reset_answer(k);
    k->sent = 0;
    return flush(k);
}

/* the next call begun on k, if there is one to begin */
static void begin(conn_t *k) {
    while (next_call < end_call && now() < stop_at) {
        k->call = next_call++;
        k->t0 = now();
        k->retried = 0;
        k->out.len = 0;
        buf_t body = {0};
        expand(&body, k->call);
        add(&k->out, prefix.p, prefix.len);
        addf(&k->out, "Content-Length: %zu\r\n\r\n", body.len);
        add(&k->out, body.p ? body.p : "", body.len);
        free(body.p);
        k->busy = 1;
        busy_count++;
        if (send_call(k) == 0) return;
        /* lost at once (no connection): counted; the next call tried */
    }
}

static void done(conn_t *k) {
    k->busy = 0;
    busy_count--;
}

/* the call failed: counted, the connection dropped (re-dialled for the next call) */
static void lose(conn_t *k, const char *kind) {
    error(kind, NULL);
    drop(k);
    done(k);
}

static int has(const buf_t *b, const char *s) {
    return b->len && memmem(b->p, b->len, s, strlen(s)) != NULL;
}

/* the answer checked as loadgen.py checks it: a kind of error, or NULL when right */
static const char *check(conn_t *k, char *detail, size_t cap) {
    static char kind[128];
    const buf_t *b = &k->body;
    detail[0] = 0;
    if (!is_mcp && !stream) {
        if (k->status == 200 && has(b, "echo")) return NULL;
        snprintf(kind, sizeof kind, "status %d", k->status);
        quote(detail, cap, b->p, b->len);
        return kind;
    }
    if (!is_mcp) {
        if (k->status == 200 && k->first >= 0 && has(b, "echo")) return NULL;
        snprintf(kind, sizeof kind, "a stream of status %d with no echo", k->status);
        return kind;
    }
    if (k->status != 200) {
        snprintf(kind, sizeof kind, "tools/call: status %d", k->status);
        quote(detail, cap, b->p, b->len);
        return kind;
    }
    char want[2][96];
    snprintf(want[0], sizeof want[0], "\"text\":\"hi %ld\"", k->call);
    snprintf(want[1], sizeof want[1], "\"text\": \"hi %ld\"", k->call);
    int error_flag = has(b, "\"isError\":true") || has(b, "\"isError\": true");
    if (!error_flag && (has(b, want[0]) || has(b, want[1]))) return NULL;
    const char *other = NULL;
    if (!error_flag && b->len) {
        other = memmem(b->p, b->len, "\"text\":\"hi ", 11);
        if (!other) other = memmem(b->p, b->len, "\"text\": \"hi ", 12);
    }
    if (other) {
        const char *said = strstr(other, "hi "); /* the body is NUL-ended (add) */
        const char *end = strchr(said, '"');
        snprintf(detail, cap, "asked 'hi %ld', answered '%.*s'", k->call,
                 (int)(end ? end - said : 20), said);
        return "tools/call answered with another call's result";
    }
    quote(detail, cap, b->p, b->len);
    return "tools/call: not its result";
}

/* the answer complete: checked and counted; the next call begun */
static void answered(conn_t *k) {
    char detail[DETAIL * 4 + 16];
    const char *kind = check(k, detail, sizeof detail);
    if (kind) error(kind, detail);
    else if (measuring) {
        latencies[n_lat++] = now() - k->t0;
        if (!is_mcp && stream) firsts[n_first++] = k->first;
    }
    k->served++;
    if (k->closing) { /* the server said it closes: a new connection for the next */
        drop(k);
        reconnects++;
    }
    done(k);
    begin(k);
}

/* the bytes of k->in parsed on; 1 when the answer is complete, -1 when malformed */
static int parse(conn_t *k) {
    for (;;) {
        char *p = k->in.p + k->pos;
        size_t avail = k->in.len - k->pos;
        if (k->stage == HEAD) {
            char *end = avail ? memmem(p, avail, "\r\n\r\n", 4) : NULL;
            if (!end) return 0;
            *end = 0;
            int minor = 1;
            if (sscanf(p, "HTTP/1.%d %d", &minor, &k->status) != 2) return -1;
            long length = -1;
            int chunked = 0;
            k->closing = minor == 0;
            char *line = strstr(p, "\r\n");
            while (line && line < end) { /* each header line, NUL-ended while read */
                line += 2;
                char *eol = strstr(line, "\r\n");
                if (eol) *eol = 0;
                char *colon = strchr(line, ':');
                if (colon) {
                    char *v = colon + 1;
                    while (*v == ' ' || *v == '\t') v++;
                    size_t name = colon - line;
                    if (name == 14 && !strncasecmp(line, "content-length", 14)) length = atol(v);
                    else if (name == 17 && !strncasecmp(line, "transfer-encoding", 17))
                        chunked = strcasestr(v, "chunked") != NULL;
                    else if (name == 10 && !strncasecmp(line, "connection", 10)) {
                        if (strcasestr(v, "close")) k->closing = 1;
                        else if (strcasestr(v, "keep-alive")) k->closing = 0;
                    }
                }
                if (eol) *eol = '\r';
                line = eol;
            }
            k->pos = end + 4 - k->in.p;
            if (k->status >= 100 && k->status < 200) continue; /* an interim answer */
            if (k->status == 204 || k->status == 304) return 1;
            if (chunked) k->stage = CHUNK_SIZE;
            else if (length >= 0) {
                k->stage = BODY_LEN;
                k->remaining = length;
            } else {
                k->stage = BODY_EOF;
                k->closing = 1;
            }
        } else if (k->stage == BODY_LEN || k->stage == CHUNK_DATA) {
            size_t take = avail < (size_t)k->remaining ? avail : (size_t)k->remaining;
            add(&k->body, p, take);
            k->pos += take;
            k->remaining -= take;
            if (k->remaining) return 0;
            if (k->stage == BODY_LEN) return 1;
            k->stage = CHUNK_CRLF;
        } else if (k->stage == BODY_EOF) {
            add(&k->body, p, avail);
            k->pos += avail;
            return 0; /* complete at the end of the connection */
        } else if (k->stage == CHUNK_CRLF) {
            if (avail < 2) return 0;
            if (p[0] != '\r' || p[1] != '\n') return -1;
            k->pos += 2;
            k->stage = CHUNK_SIZE;
        } else { /* CHUNK_SIZE, TRAILER: a line */
            char *eol = avail ? memmem(p, avail, "\r\n", 2) : NULL;
            if (!eol) return 0;
            k->pos += eol + 2 - p;
            if (k->stage == TRAILER) {
                if (eol == p) return 1;
                continue;
            }
            char *stop;
            long size = strtol(p, &stop, 16);
            if (stop == p || size < 0) return -1;
            if (size == 0) k->stage = TRAILER;
            else {
                k->stage = CHUNK_DATA;
                k->remaining = size;
            }
        }
    }
}

/* a stream's first chunk: when the body's first `data:` line has come */
static void first_data(conn_t *k) {
    const buf_t *b = &k->body;
    for (const char *s = b->p; b->len && s && s < b->p + b->len;) {
        s = memmem(s, b->p + b->len - s, "data:", 5);
        if (!s) return;
        if (s == b->p || s[-1] == '\n') {
            k->first = now() - k->t0;
            return;
        }
        s += 5;
    }
}

static void on_readable(conn_t *k) {
    for (;;) {
        reserve(&k->in, 65536);
        ssize_t r = read(k->fd, k->in.p + k->in.len, k->in.cap - k->in.len - 1);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int err = r < 0 ? errno : 0;
            if (!k->busy) { /* an idle connection the server ended */
                drop(k);
                reconnects++;
                return;
            }
            if (r == 0 && k->stage == BODY_EOF) { /* (`closing`: answered drops it) */
                answered(k);
                return;
            }
            /* a kept-alive connection the server had closed before the request:
             * sent again once on a new one, as HTTP clients do; not once a byte of
             * the answer came (`in` is emptied as a body is parsed: the stage says) */
            if (k->stage == HEAD && k->in.len == 0 && k->served > 0 && !k->retried) {
                drop(k);
                reconnects++;
                k->retried = 1;
                if (send_call(k) < 0) begin(k);
                return;
            }
            char kind[160];
            if (err) snprintf(kind, sizeof kind, "read: %s", strerror(err));
            else snprintf(kind, sizeof kind, "the server closed the connection mid-answer");
            reconnects++;
            lose(k, kind);
            begin(k);
            return;
        }
        if (!k->busy) continue; /* bytes no call asked for: dropped */
        k->in.len += r;
        int got = parse(k);
        if (stream && k->first < 0 && k->stage != HEAD) first_data(k);
        if (got < 0) {
            lose(k, "a malformed answer");
            begin(k);
            return;
        }
        if (got > 0) {
            answered(k);
            return;
        }
        if (k->pos == k->in.len) k->in.len = k->pos = 0;
    }
}

static void timeouts(void) {
    double t = now();
    for (long i = 0; i < conc; i++)
        if (conns[i].busy && t - conns[i].t0 > TIMEOUT_S) {
            lose(&conns[i], "TimeoutError");
            begin(&conns[i]);
        }
}

/* `count` calls numbered from `start`, `conc` at a time; none begun after `bound` s */
static double phase(long start, long count, double bound) {
    double t0 = now(), last = t0;
    next_call = start;
    end_call = start + count;
    stop_at = t0 + bound;
    for (long i = 0; i < conc; i++) begin(&conns[i]);
    struct epoll_event evs[256];
    while (busy_count > 0) {
        int got = epoll_wait(ep, evs, 256, 1000);
        if (got < 0 && errno != EINTR) die("epoll_wait");
        for (int e = 0; e < got; e++) {
            conn_t *k = evs[e].data.ptr;
            if (k->fd < 0) continue;
            if ((evs[e].events & EPOLLOUT) && k->busy && k->sent < k->out.len) {
                if (flush(k) < 0) {
                    begin(k);
                    continue;
                }
            }
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(k);
        }
        if (now() - last > 1.0) {
            timeouts();
            last = now();
        }
    }
    return now() - t0;
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = *s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 32) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void write_out(const char *file, double wall) {
    FILE *f = fopen(file, "w");
    if (!f) die(file);
    fprintf(f, "{\"wall_s\": %.9g, \"latencies\": [", wall);
    for (long i = 0; i < n_lat; i++) fprintf(f, "%s%.9g", i ? ", " : "", latencies[i]);
    fprintf(f, "], \"first_chunks\": [");
    for (long i = 0; i < n_first; i++) fprintf(f, "%s%.9g", i ? ", " : "", firsts[i]);
    fprintf(f, "], \"errors\": %ld, \"first_error\": ", n_errors);
    if (!n_kinds) fprintf(f, "null");
    else { /* the three kinds most counted (first seen first among equals), as Counter */
        buf_t s = {0};
        int used[KINDS] = {0};
        for (int shown = 0; shown < 3 && shown < n_kinds; shown++) {
            int best = -1;
            for (int k = 0; k < n_kinds; k++)
                if (!used[k] && (best < 0 || kinds[k].count > kinds[best].count)) best = k;
            used[best] = 1;
            addf(&s, "%s%ldx %s", shown ? "; " : "", kinds[best].count, kinds[best].said);
        }
        json_string(f, s.p);
        free(s.p);
    }
    fprintf(f, ", \"reconnects\": %ld}\n", reconnects);
    if (fclose(f)) die(file);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: loadgen SPEC OUT\n");
        return 2;
    }
    read_spec(argv[1]);
    latencies = calloc(n_calls + 1, sizeof *latencies);
    firsts = calloc(n_calls + 1, sizeof *firsts);
    conns = calloc(conc, sizeof *conns);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!latencies || !firsts || !conns || ep < 0) die("setup");
    for (long i = 0; i < conc; i++) conns[i].fd = -1;
    phase(0, warmup, seconds / 10);
    n_errors = reconnects = n_kinds = 0; /* the warm-up's are not the run's */
    measuring = 1;
    double wall = phase(warmup, n_calls, seconds);
    write_out(argv[2], wall);
    return 0;
}
