/* rttbench: the round trip of one expert dispatch that carries no expert
 * work, to live expertd hosts: what a layer of a cluster decode step costs
 * beyond the experts' own computation (ZeroMQ, the wire encoding, the host's
 * request loop, the machine's thread wake-ups). Each round sends every host
 * a Batch for layer 0 of --tokens rows whose slots are all empty, as the
 * coordinator sends its batches, and waits for every Result; the figure is
 * the time from the first send to the last reply. Used by bench/bench.sh
 * (plaintext on loopback) and against deployed hosts (CURVE keys, as the
 * coordinator's); see docs/performance.md and docs/cluster.md. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "curve.h"
#include "limits.h"
#include "wire.h"
#include "wire_zmq.h"

#define RTT_HOSTS_MAX 16
#define RTT_TIMEOUT_MS 5000
#define RTT_ROUNDS_MAX 1000000

typedef struct {
    const char *endpoints[RTT_HOSTS_MAX];
    int n_hosts;
    long rounds, warmup;
    int tokens;
    ms_wire_dtype_t wire;
    const char *key_path, *host_keys_path; /* CURVE: this client's key pair, the hosts' server keys */
} rtt_opts_t;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("rttbench: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void usage(FILE *fp)
{
    fputs("usage: rttbench --hosts EP[,EP...] [--key FILE --host-keys FILE] [--rounds N] [--warmup N]\n"
          "                [--tokens T] [--wire f32|bf16|f16]\n"
          "  --hosts EP,...    expertd endpoints\n"
          "  --key FILE        this client's CURVE key pair (moeshard keygen); the hosts must allow its\n"
          "                    public key. Without keys the links are plaintext: loopback endpoints only\n"
          "  --host-keys FILE  the hosts' server keys, \"ENDPOINT Z85KEY\" lines (as moeshard serve)\n"
          "  --rounds N        timed rounds (default 2000)\n"
          "  --warmup N        untimed rounds first (default 200)\n"
          "  --tokens T        activation rows per batch (default 1: one decode step)\n"
          "  --wire DT         activation dtype (default f32)\n"
          "Prints rtt_hosts=H rtt_us_mean=... rtt_us_median=... rtt_us_p90=... rtt_us_min=...\n",
          fp);
}

static long parse_long(const char *flag, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        die("%s %s: expected a whole number in [%ld, %ld]", flag, s, lo, hi);
    return v;
}

static void parse_args(int argc, char **argv, rtt_opts_t *o)
{
    static const struct option longs[] = {
        { "hosts", required_argument, NULL, 'H' }, { "rounds", required_argument, NULL, 'r' },
        { "warmup", required_argument, NULL, 'w' }, { "tokens", required_argument, NULL, 't' },
        { "wire", required_argument, NULL, 'W' },   { "key", required_argument, NULL, 'k' },
        { "host-keys", required_argument, NULL, 'K' }, { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    static char hosts[4096];
    *o = (rtt_opts_t){ .rounds = 2000, .warmup = 200, .tokens = 1, .wire = MS_WIRE_F32 };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'H':
            if (strlen(optarg) >= sizeof(hosts))
                die("--hosts: the list is longer than %zu characters", sizeof(hosts) - 1);
            snprintf(hosts, sizeof(hosts), "%s", optarg);
            o->n_hosts = 0;
            for (char *save = NULL, *t = strtok_r(hosts, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (o->n_hosts == RTT_HOSTS_MAX)
                    die("--hosts: at most %d endpoints", RTT_HOSTS_MAX);
                o->endpoints[o->n_hosts++] = t;
            }
            break;
        case 'r': o->rounds = parse_long("--rounds", optarg, 1, RTT_ROUNDS_MAX); break;
        case 'w': o->warmup = parse_long("--warmup", optarg, 0, RTT_ROUNDS_MAX); break;
        case 't': o->tokens = (int)parse_long("--tokens", optarg, 1, MS_WIRE_TOKENS_MAX); break;
        case 'W':
            if (ms_wire_dtype_parse(optarg, &o->wire))
                die("--wire %s: expected f32, bf16 or f16", optarg);
            break;
        case 'k': o->key_path = optarg; break;
        case 'K': o->host_keys_path = optarg; break;
        case 'h': usage(stdout); exit(0);
        default:
            usage(stderr);
            die("unknown option or missing value: %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die("unexpected argument: %s (see --help)", argv[optind]);
    if (o->n_hosts == 0)
        die("--hosts is required (see --help)");
    if (!o->key_path != !o->host_keys_path)
        die("--key and --host-keys go together (see --help)");
}

/* The hosts' CURVE keys, or the check that plaintext stays on loopback. */
typedef struct {
    ms_curve_keypair_t kp;
    ms_curve_hostkeys_t *hosts;
} rtt_keys_t;

static void load_keys(const rtt_opts_t *o, rtt_keys_t *k)
{
    ms_err_t err = { { 0 } };
    if (!o->key_path) {
        if (ms_curve_plaintext_check(o->endpoints, o->n_hosts, &err))
            die("%s; rttbench takes --key and --host-keys for such hosts", err.msg);
        return;
    }
    if (ms_curve_keypair_load(o->key_path, &k->kp, &err) || ms_curve_hostkeys_load(o->host_keys_path, &k->hosts, &err))
        die("%s", err.msg);
    for (int h = 0; h < o->n_hosts; h++)
        if (!ms_curve_hostkeys_find(k->hosts, o->endpoints[h]))
            die("%s: no server key for it in %s", o->endpoints[h], o->host_keys_path);
}

typedef struct {
    void *sock;
    const char *ep;
    int32_t hidden, n_layer;
    uint64_t want_id;
} rtt_host_t;

/* Receives one message from H and decodes it into msg; dies on timeout or a
 * malformed message, naming the host. */
static void recv_msg(rtt_host_t *H, ms_wire_msg_t *msg)
{
    ms_wire_rx_t rx;
    int rc = ms_wire_zmq_recv(H->sock, &rx, 0);
    if (rc) {
        ms_wire_rx_close(&rx);
        die("%s: no reply within %d ms (%s): is expertd running there, and does it allow this key (or run "
            "--plaintext on loopback)?",
            H->ep, RTT_TIMEOUT_MS, zmq_strerror(-rc));
    }
    ms_err_t err = { { 0 } };
    rc = ms_wire_rx_decode(&rx, 0, msg, &err);
    ms_wire_rx_close(&rx);
    if (rc)
        die("%s: a reply that does not decode: %s", H->ep, err.msg);
    if (msg->kind == MS_WIRE_ERROR)
        die("%s: refused the request: %s", H->ep, msg->error.message);
}

static void connect_host(void *zctx, const rtt_keys_t *keys, rtt_host_t *H, ms_wire_msg_t *msg, uint64_t *next_id,
                         char *hdr)
{
    int timeout = RTT_TIMEOUT_MS;
    H->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (!H->sock || ms_wire_zmq_limits(H->sock) || zmq_setsockopt(H->sock, ZMQ_RCVTIMEO, &timeout, sizeof(timeout)))
        die("%s: cannot open a socket: %s", H->ep, zmq_strerror(zmq_errno()));
    if (keys->hosts && ms_curve_client_setup(H->sock, &keys->kp, ms_curve_hostkeys_find(keys->hosts, H->ep)))
        die("%s: cannot set up CURVE: %s", H->ep, zmq_strerror(zmq_errno()));
    if (zmq_connect(H->sock, H->ep))
        die("%s: cannot connect: %s", H->ep, zmq_strerror(zmq_errno()));
    ms_wire_hello_t me = { .host_id = -1 };
    ms_wire_head_t head = { .request_id = (*next_id)++ };
    size_t len;
    ms_err_t err = { { 0 } };
    if (ms_wire_encode_hello(&head, &me, hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &err) ||
        ms_wire_zmq_send(H->sock, NULL, 0, hdr, len, NULL, 0))
        die("%s: cannot send Hello: %s", H->ep, err.msg[0] ? err.msg : zmq_strerror(zmq_errno()));
    recv_msg(H, msg);
    if (msg->kind != MS_WIRE_HELLO)
        die("%s: answered Hello with %s", H->ep, ms_wire_kind_name(msg->kind));
    H->hidden = msg->hello.hidden;
    H->n_layer = msg->hello.n_layer;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    rtt_opts_t o;
    parse_args(argc, argv, &o);
    rtt_keys_t keys = { 0 };
    load_keys(&o, &keys);
    void *zctx = zmq_ctx_new();
    ms_wire_msg_t *msg = NULL;
    char *hdr = malloc(MS_WIRE_HEADER_BYTES_MAX);
    double *rtt = malloc(sizeof(double) * (size_t)o.rounds);
    if (!zctx || ms_wire_msg_new(&msg) || !hdr || !rtt)
        die("out of memory");
    rtt_host_t hosts[RTT_HOSTS_MAX] = { 0 };
    uint64_t next_id = 1;
    for (int h = 0; h < o.n_hosts; h++) {
        hosts[h].ep = o.endpoints[h];
        connect_host(zctx, &keys, &hosts[h], msg, &next_id, hdr);
        if (hosts[h].hidden != hosts[0].hidden)
            die("%s serves hidden %d, %s hidden %d: not the same model", hosts[h].ep, hosts[h].hidden, hosts[0].ep,
                hosts[0].hidden);
    }
    int32_t d = hosts[0].hidden;
    size_t frame_bytes;
    if (ms_wire_frame_bytes(o.wire, o.tokens, d, &frame_bytes))
        die("%d tokens x hidden %d do not fit one frame", o.tokens, d);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)o.tokens);
    float *w = calloc((size_t)o.tokens, sizeof(float));
    void *frame = calloc(1, frame_bytes);
    if (!ids || !w || !frame)
        die("out of memory");
    for (int t = 0; t < o.tokens; t++)
        ids[t] = -1; /* an empty slot: the host computes nothing */
    ms_wire_batch_t b = { .layer = 0, .n_tokens = o.tokens, .hidden = d, .k = 1, .dtype = o.wire, .ids = ids,
                          .weights = w };
    for (long r = 0; r < o.warmup + o.rounds; r++) {
        double t0 = now_us();
        for (int h = 0; h < o.n_hosts; h++) {
            rtt_host_t *H = &hosts[h];
            ms_wire_head_t head = { .request_id = next_id++ };
            size_t len;
            ms_err_t err = { { 0 } };
            if (ms_wire_encode_batch(&head, &b, hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &err) ||
                ms_wire_zmq_send(H->sock, NULL, 0, hdr, len, frame, frame_bytes))
                die("%s: cannot send a batch: %s", H->ep, err.msg[0] ? err.msg : zmq_strerror(zmq_errno()));
            H->want_id = head.request_id;
        }
        for (int h = 0; h < o.n_hosts; h++) {
            rtt_host_t *H = &hosts[h];
            do
                recv_msg(H, msg);
            while (msg->head.request_id != H->want_id); /* a late reply of an earlier round */
            if (msg->kind != MS_WIRE_RESULT || msg->result.status != 0)
                die("%s: answered a batch with %s", H->ep, ms_wire_kind_name(msg->kind));
        }
        if (r >= o.warmup)
            rtt[r - o.warmup] = now_us() - t0;
    }
    double sum = 0;
    for (long r = 0; r < o.rounds; r++)
        sum += rtt[r];
    qsort(rtt, (size_t)o.rounds, sizeof(double), cmp_double);
    printf("rtt_hosts=%d rtt_tokens=%d rtt_wire=%s rtt_rounds=%ld rtt_us_mean=%.1f rtt_us_median=%.1f "
           "rtt_us_p90=%.1f rtt_us_min=%.1f\n",
           o.n_hosts, o.tokens, ms_wire_dtype_name(o.wire), o.rounds, sum / (double)o.rounds, rtt[o.rounds / 2],
           rtt[(size_t)((double)o.rounds * 0.9)], rtt[0]);
    for (int h = 0; h < o.n_hosts; h++)
        zmq_close(hosts[h].sock);
    zmq_ctx_term(zctx);
    ms_curve_hostkeys_destroy(&keys.hosts);
    ms_wire_msg_destroy(&msg);
    free(hdr);
    free(rtt);
    free(ids);
    free(w);
    free(frame);
    return 0;
}
