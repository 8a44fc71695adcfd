/* moeshard generate and moeshard status: clients of a running coordinator
 * ('moeshard serve'). generate streams the text as it comes and prints the
 * same stdout and summary line as 'moeshard run'; Ctrl-C cancels the request
 * on the coordinator. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "cli.h"
#include "client_wire.h"
#include "limits.h"
#include "log.h"
#include "sampler.h"
#include "wire_zmq.h"

#define GEN_TIMEOUT_MS_DEFAULT 60000
#define GEN_TIMEOUT_MS_MAX     3600000
#define GEN_CANCEL_WAIT_MS     3000 /* after Ctrl-C: how long to wait for the coordinator's acknowledgement */
#define GEN_EXIT_INTERRUPTED   130

typedef struct {
    const char *server;
    const char *prompt;
    int64_t n_predict, timeout_ms;
    ms_sampler_params_t sp;
    bool seed_set, no_special;
} gen_opts_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A DEALER connected to the coordinator, and a signalfd for SIGINT/SIGTERM. */
typedef struct {
    void *zctx, *sock;
    int sig_fd;
    unsigned char *hdr;
    ms_cw_msg_t msg;
} client_t;

static int client_open(client_t *c, const char *cmd, const char *server)
{
    c->sig_fd = -1;
    c->hdr = malloc(MS_WIRE_HEADER_BYTES_MAX);
    c->zctx = zmq_ctx_new();
    c->sock = c->zctx ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
    if (!c->hdr || !c->sock || ms_wire_zmq_limits(c->sock)) {
        fprintf(stderr, "moeshard %s: cannot set up a ZeroMQ socket: %s\n", cmd, zmq_strerror(zmq_errno()));
        return -EIO;
    }
    if (zmq_connect(c->sock, server)) {
        coord_usage_error(cmd, "--server '%s' is not a ZeroMQ endpoint ZeroMQ accepts (%s); expected tcp://HOST:PORT",
                          server, zmq_strerror(zmq_errno()));
        return -EINVAL;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    c->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    return c->sig_fd < 0 ? -errno : 0;
}

static void client_close(client_t *c)
{
    if (c->sock)
        zmq_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    if (c->sig_fd >= 0)
        close(c->sig_fd);
    free(c->hdr);
    ms_cw_msg_clear(&c->msg);
}

static int client_send(client_t *c, size_t len)
{
    return ms_wire_zmq_send(c->sock, NULL, 0, c->hdr, len, NULL, 0);
}

/* Waits until deadline for a message (1, decoded into c->msg), a signal (2),
 * or nothing (0); -EPROTO for a malformed reply (printed). */
static int client_wait(client_t *c, const char *cmd, int64_t deadline)
{
    zmq_pollitem_t items[2] = { { .socket = c->sock, .events = ZMQ_POLLIN }, { .fd = c->sig_fd, .events = ZMQ_POLLIN } };
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return 0;
        if (zmq_poll(items, 2, (long)left) < 0 && zmq_errno() != EINTR)
            return -EIO;
        if (items[1].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            if (read(c->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
                return 2;
        }
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;
        ms_wire_rx_t rx;
        int rc = ms_wire_zmq_recv(c->sock, &rx, ZMQ_DONTWAIT);
        ms_err_t err = { { 0 } };
        ms_cw_msg_clear(&c->msg);
        if (!rc && (rx.n_parts != 1 || rx.n_dropped))
            rc = -EPROTO, snprintf(err.msg, sizeof(err.msg), "a reply of %d parts", rx.n_parts);
        if (!rc)
            rc = ms_cw_decode(ms_wire_rx_data(&rx, 0), ms_wire_rx_size(&rx, 0), &c->msg, &err);
        ms_wire_rx_close(&rx);
        if (rc == -EAGAIN)
            continue;
        if (rc) {
            fprintf(stderr, "moeshard %s: the coordinator sent a malformed reply: %s\n", cmd, err.msg);
            return -EPROTO;
        }
        return 1;
    }
}

/* ------------------------------------------------------------- generate */

static void generate_help(void)
{
    ms_sampler_params_t d = ms_sampler_defaults();
    printf("usage: moeshard generate --server tcp://HOST:PORT [options] PROMPT\n\n"
           "Sends PROMPT to a running coordinator ('moeshard serve') and streams the generated text\n"
           "to stdout; the summary line of 'moeshard run' goes to stderr. Ctrl-C cancels the request\n"
           "on the coordinator too.\n\n"
           "  -S, --server EP          the coordinator's client endpoint (required)\n"
           "  -n, --n-predict N        tokens to generate (default 128; stops early at end-of-text)\n"
           "      --temp T             temperature; 0 = greedy (default %.2f)\n"
           "      --top-k K            0 = off (default %d)\n"
           "      --top-p P            1 = off (default %.2f)\n"
           "      --min-p P            0 = off (default %.2f)\n"
           "      --repeat-penalty R   1 = off (default %.2f)\n"
           "      --repeat-last-n N    (default %d)\n"
           "  -s, --seed S             random seed (default: random, printed)\n"
           "      --no-special         treat special-token text in the prompt as plain text\n"
           "      --timeout-ms N       give up when the coordinator is silent this long (default %d)\n"
           "  -h, --help               this help\n",
           d.temp, d.top_k, d.top_p, d.min_p, d.repeat_penalty, d.repeat_last_n, GEN_TIMEOUT_MS_DEFAULT);
}

enum { OPT_TEMP = 1000, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REPPEN, OPT_REPN, OPT_NOSPECIAL, OPT_TIMEOUT };

static bool gen_opt(int c, const char *arg, gen_opts_t *o)
{
    const char *cmd = "generate";
    int64_t v;
    bool ok = true;
    switch (c) {
    case 'S': o->server = arg; break;
    case 'n': ok = coord_parse_i64(cmd, "--n-predict", arg, 0, MS_CONTEXT_MAX, &o->n_predict); break;
    case OPT_TEMP: ok = coord_parse_f32(cmd, "--temp", arg, 0, 100, &o->sp.temp); break;
    case OPT_TOPK: ok = coord_parse_i64(cmd, "--top-k", arg, 0, MS_VOCAB_MAX, &v); o->sp.top_k = (int32_t)v; break;
    case OPT_TOPP: ok = coord_parse_f32(cmd, "--top-p", arg, 1e-6f, 1, &o->sp.top_p); break;
    case OPT_MINP: ok = coord_parse_f32(cmd, "--min-p", arg, 0, 0.999999f, &o->sp.min_p); break;
    case OPT_REPPEN: ok = coord_parse_f32(cmd, "--repeat-penalty", arg, 1e-3f, 100, &o->sp.repeat_penalty); break;
    case OPT_REPN: ok = coord_parse_i64(cmd, "--repeat-last-n", arg, 0, MS_CONTEXT_MAX, &v); o->sp.repeat_last_n = (int32_t)v; break;
    case 's': ok = coord_parse_i64(cmd, "--seed", arg, 0, INT64_MAX, &v); o->sp.seed = (uint64_t)v; o->seed_set = true; break;
    case OPT_NOSPECIAL: o->no_special = true; break;
    case OPT_TIMEOUT: ok = coord_parse_i64(cmd, "--timeout-ms", arg, 1, GEN_TIMEOUT_MS_MAX, &o->timeout_ms); break;
    default: ok = false;
    }
    return ok;
}

static int gen_parse(int argc, char **argv, gen_opts_t *o)
{
    static const struct option longopts[] = {
        { "server", required_argument, 0, 'S' },    { "n-predict", required_argument, 0, 'n' },
        { "temp", required_argument, 0, OPT_TEMP }, { "top-k", required_argument, 0, OPT_TOPK },
        { "top-p", required_argument, 0, OPT_TOPP }, { "min-p", required_argument, 0, OPT_MINP },
        { "repeat-penalty", required_argument, 0, OPT_REPPEN }, { "repeat-last-n", required_argument, 0, OPT_REPN },
        { "seed", required_argument, 0, 's' },      { "no-special", no_argument, 0, OPT_NOSPECIAL },
        { "timeout-ms", required_argument, 0, OPT_TIMEOUT }, { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    opterr = 0;
    optind = 1;
    for (;;) {
        int c = getopt_long(argc, argv, ":S:n:s:h", longopts, NULL);
        if (c == -1)
            break;
        if (c == 'h') {
            generate_help();
            return COORD_EXIT_OK;
        }
        if (c == ':' || c == '?') {
            coord_usage_error("generate", c == ':' ? "option '%s' needs a value" : "unknown option '%s'",
                              argv[optind - 1]);
            return COORD_EXIT_USAGE;
        }
        if (!gen_opt(c, optarg, o))
            return COORD_EXIT_USAGE;
    }
    if (!o->server || optind != argc - 1) {
        coord_usage_error("generate", "expected --server EP and exactly one PROMPT argument");
        return COORD_EXIT_USAGE;
    }
    o->prompt = argv[optind];
    if (strlen(o->prompt) > MS_CW_PROMPT_BYTES_MAX) {
        coord_usage_error("generate", "the prompt is longer than %u bytes", MS_CW_PROMPT_BYTES_MAX);
        return COORD_EXIT_USAGE;
    }
    return -1;
}

/* run's summary line, from the coordinator's figures. */
static void print_summary(const ms_cw_event_t *e)
{
    double pf = e->prefill_s > 0 ? e->n_prompt / e->prefill_s : 0;
    double dc = e->decode_s > 0 && e->n_decode_steps ? e->n_decode_steps / e->decode_s : 0;
    char net[160] = "";
    if (e->n_hosts)
        snprintf(net, sizeof(net), ", experts on %d hosts (wire %s): network %.1f kB/decode step", e->n_hosts,
                 ms_wire_dtype_name(e->wire),
                 e->n_decode_steps ? (double)e->net_bytes_decode / e->n_decode_steps / 1e3 : 0.0);
    fprintf(stderr,
            "moeshard: prefill %.1f tok/s (%d tokens, %.3f s), decode %.1f tok/s (%d steps, %.3f s), "
            "generated %d tokens, weights/token %.1f MB, peak-rss %.1f MB, kv-cache %.1f MB, "
            "kernels %s, threads %d, seed %" PRIu64 "%s\n",
            pf, e->n_prompt, e->prefill_s, dc, e->n_decode_steps, e->decode_s, e->n_gen,
            (double)e->weights_bytes_per_token / 1e6, (double)e->peak_rss_bytes / 1e6, (double)e->kv_bytes / 1e6,
            e->kernels, e->threads, e->seed, net);
}

/* After Ctrl-C: Cancel, then wait a little for the coordinator to say so. */
static int cancel_request(client_t *c, uint64_t id)
{
    size_t len;
    fflush(stdout);
    if (ms_cw_encode_cancel(id, c->hdr, MS_WIRE_HEADER_BYTES_MAX, &len) == 0 && client_send(c, len) == 0) {
        int64_t deadline = now_ms() + GEN_CANCEL_WAIT_MS;
        int rc;
        while ((rc = client_wait(c, "generate", deadline)) == 1) {
            if (c->msg.kind == MS_CW_ERROR || (c->msg.kind == MS_CW_EVENT && c->msg.ev.kind >= MS_CW_EV_DONE))
                break;
        }
        if (rc != 1)
            fprintf(stderr, "moeshard generate: the coordinator did not acknowledge the cancel\n");
    }
    fprintf(stderr, "moeshard generate: interrupted; request cancelled\n");
    return GEN_EXIT_INTERRUPTED;
}

/* Handles one message; returns -1 to go on, or the exit status. */
static int on_reply(const ms_cw_msg_t *m, uint64_t id)
{
    if (m->request_id != id)
        return -1; /* a late reply to an earlier request of this socket: none here */
    if (m->kind == MS_CW_ERROR) {
        fprintf(stderr, "moeshard generate: the coordinator refused the request: %s\n", m->error.message);
        return COORD_EXIT_FAIL;
    }
    if (m->kind != MS_CW_EVENT) {
        fprintf(stderr, "moeshard generate: unexpected reply (kind %d) from the coordinator\n", (int)m->kind);
        return COORD_EXIT_FAIL;
    }
    const ms_cw_event_t *e = &m->ev;
    switch (e->kind) {
    case MS_CW_EV_TEXT:
        fwrite(e->text, 1, e->len, stdout);
        fflush(stdout);
        return -1;
    case MS_CW_EV_DONE:
        fputc('\n', stdout);
        fflush(stdout);
        print_summary(e);
        return COORD_EXIT_OK;
    case MS_CW_EV_ERROR:
        fflush(stdout);
        fprintf(stderr, "\nmoeshard generate: the request failed on the coordinator: %s\n", e->message);
        return COORD_EXIT_FAIL;
    default:
        return -1;
    }
}

static int generate(client_t *c, const gen_opts_t *o)
{
    uint64_t id;
    if (getrandom(&id, sizeof(id), 0) != sizeof(id))
        id = (uint64_t)now_ms();
    ms_cw_generate_t g = { .prompt = o->prompt, .prompt_len = strlen(o->prompt), .n_predict = (int32_t)o->n_predict,
                           .temp = o->sp.temp, .top_p = o->sp.top_p, .min_p = o->sp.min_p,
                           .repeat_penalty = o->sp.repeat_penalty, .top_k = o->sp.top_k,
                           .repeat_last_n = o->sp.repeat_last_n, .seed = o->sp.seed, .no_special = o->no_special };
    size_t len;
    if (ms_cw_encode_generate(id, &g, c->hdr, MS_WIRE_HEADER_BYTES_MAX, &len) || client_send(c, len)) {
        fprintf(stderr, "moeshard generate: sending the request to %s failed\n", o->server);
        return COORD_EXIT_FAIL;
    }
    for (;;) {
        int rc = client_wait(c, "generate", now_ms() + o->timeout_ms);
        if (rc == 0) {
            fprintf(stderr, "\nmoeshard generate: no reply from the coordinator at %s within %" PRId64 " ms "
                            "(is 'moeshard serve' running there?)\n", o->server, o->timeout_ms);
            return COORD_EXIT_FAIL;
        }
        if (rc == 2)
            return cancel_request(c, id);
        if (rc < 0)
            return COORD_EXIT_FAIL;
        int st = on_reply(&c->msg, id);
        if (st >= 0)
            return st;
    }
}

int coord_cmd_generate(int argc, char **argv)
{
    gen_opts_t o = { .n_predict = 128, .timeout_ms = GEN_TIMEOUT_MS_DEFAULT, .sp = ms_sampler_defaults() };
    int st = gen_parse(argc, argv, &o);
    if (st >= 0)
        return st;
    if (!o.seed_set && getrandom(&o.sp.seed, sizeof(o.sp.seed), 0) != sizeof(o.sp.seed))
        o.sp.seed = (uint64_t)time(NULL);
    o.sp.seed &= INT64_MAX; /* printable and accepted back by --seed */
    client_t c = { 0 };
    int rc = client_open(&c, "generate", o.server);
    st = rc == -EINVAL ? COORD_EXIT_USAGE : rc ? COORD_EXIT_FAIL : generate(&c, &o);
    client_close(&c);
    return st;
}

/* --------------------------------------------------------------- status */

static void status_help(void)
{
    printf("usage: moeshard status --server tcp://HOST:PORT [--timeout-ms N]\n\n"
           "Prints a running coordinator's view: model, uptime, requests, tokens/s and, with expert\n"
           "hosts, each host's slices, memory, health (age of its last reply), round-trip time and traffic.\n");
}

static void print_status(const ms_cw_status_t *s)
{
    printf("model      %s (%s)\n", s->model, s->arch);
    printf("uptime     %.1f s\n", (double)s->uptime_ms / 1e3);
    printf("requests   %u active, %u queued (at most %u at once), %" PRIu64 " done\n", s->active, s->queued,
           s->n_seq_max, s->requests_done);
    printf("tokens     %" PRIu64 " generated, %" PRIu64 " prompt\n", s->tokens_generated, s->prompt_tokens);
    printf("speed      decode %.1f tok/s, prefill %.1f tok/s (last 5 s)\n", s->decode_tok_s, s->prefill_tok_s);
    if (!s->n_hosts) {
        printf("experts    in the coordinator's process\n");
        return;
    }
    printf("experts    on %u hosts (wire %s)\n", s->n_hosts, ms_wire_dtype_name(s->wire));
    printf("%-28s %7s %10s %12s %9s %9s %12s %12s\n", "host", "slices", "memory MB", "last reply", "rtt ms",
           "batches", "sent MB", "received MB");
    for (uint32_t i = 0; i < s->n_hosts; i++) {
        const ms_cw_host_t *h = &s->hosts[i];
        char age[32];
        if (h->last_reply_age_ms < 0)
            snprintf(age, sizeof(age), "never");
        else
            snprintf(age, sizeof(age), "%.1f s ago", (double)h->last_reply_age_ms / 1e3);
        printf("%-28s %7u %10.1f %12s %9.3f %9" PRIu64 " %12.3f %12.3f\n", h->endpoint, h->slices_held,
               (double)h->memory_bytes / 1e6, age, h->rtt_ms_mean, h->batches, (double)h->bytes_sent / 1e6,
               (double)h->bytes_received / 1e6);
    }
}

int coord_cmd_status(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "server", required_argument, 0, 'S' }, { "timeout-ms", required_argument, 0, OPT_TIMEOUT },
        { "help", no_argument, 0, 'h' },         { 0, 0, 0, 0 },
    };
    const char *server = NULL;
    int64_t timeout_ms = 5000;
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":S:h", longopts, NULL)) != -1;) {
        if (c == 'h') {
            status_help();
            return COORD_EXIT_OK;
        }
        if (c == 'S')
            server = optarg;
        else if (c == OPT_TIMEOUT) {
            if (!coord_parse_i64("status", "--timeout-ms", optarg, 1, GEN_TIMEOUT_MS_MAX, &timeout_ms))
                return COORD_EXIT_USAGE;
        } else {
            coord_usage_error("status", c == ':' ? "option '%s' needs a value" : "unknown option '%s'",
                              argv[optind - 1]);
            return COORD_EXIT_USAGE;
        }
    }
    if (!server || optind != argc) {
        coord_usage_error("status", "expected --server EP and no other arguments");
        return COORD_EXIT_USAGE;
    }
    client_t c = { 0 };
    int rc = client_open(&c, "status", server);
    size_t len;
    int st = rc == -EINVAL ? COORD_EXIT_USAGE : rc ? COORD_EXIT_FAIL : -1;
    if (st < 0 && (ms_cw_encode_status_query(1, c.hdr, MS_WIRE_HEADER_BYTES_MAX, &len) || client_send(&c, len)))
        st = COORD_EXIT_FAIL;
    if (st < 0) {
        rc = client_wait(&c, "status", now_ms() + timeout_ms);
        if (rc == 1 && c.msg.kind == MS_CW_STATUS) {
            print_status(&c.msg.status);
            st = COORD_EXIT_OK;
        } else {
            if (rc == 0)
                fprintf(stderr, "moeshard status: no reply from the coordinator at %s within %" PRId64 " ms\n",
                        server, timeout_ms);
            else if (rc == 1)
                fprintf(stderr, "moeshard status: the coordinator answered with an error: %s\n",
                        c.msg.kind == MS_CW_ERROR ? c.msg.error.message : "unexpected reply");
            st = rc == 2 ? GEN_EXIT_INTERRUPTED : COORD_EXIT_FAIL;
        }
    }
    client_close(&c);
    return st;
}
