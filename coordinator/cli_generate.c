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

#include "cli.h"
#include "client.h"
#include "client_wire.h"
#include "limits.h"
#include "sampler.h"

#define GEN_TIMEOUT_MS_DEFAULT 60000
#define GEN_TIMEOUT_MS_MAX     COORD_CLIENT_TIMEOUT_MS_MAX
#define GEN_CANCEL_WAIT_MS     3000 /* after Ctrl-C: how long to wait for the coordinator's acknowledgement */
#define GEN_EXIT_INTERRUPTED   130

typedef struct {
    const char *server;
    const char *prompt;
    int64_t n_predict, timeout_ms;
    ms_sampler_params_t sp;
    bool seed_set, no_special;
    coord_client_sec_t sec;
} gen_opts_t;

/* Ctrl-C and SIGTERM become readable on a signalfd the client's waits
 * watch, so a request is cancelled on the coordinator rather than cut off. */
static int open_client(const char *cmd, const char *server, const coord_client_sec_t *sec, int64_t timeout_ms,
                       int *sig_fd, coord_client_t **ret)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    *sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (*sig_fd < 0) {
        fprintf(stderr, "moeshard %s: cannot watch for Ctrl-C: %s\n", cmd, strerror(errno));
        return COORD_EXIT_FAIL;
    }
    ms_err_t err = { { 0 } };
    int rc = coord_client_new(server, sec, timeout_ms, *sig_fd, ret, &err);
    if (rc == -EINVAL) {
        coord_usage_error(cmd, "--server %s; expected tcp://HOST:PORT", err.msg);
        return COORD_EXIT_USAGE;
    }
    if (rc == -EPERM) {
        fprintf(stderr, "moeshard %s: %s\n", cmd, err.msg);
        return COORD_EXIT_USAGE;
    }
    if (rc) {
        fprintf(stderr, "moeshard %s: %s\n", cmd, err.msg);
        return COORD_EXIT_FAIL;
    }
    return -1;
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
           "      --key FILE           this client's key pair ('moeshard keygen'; docs/security.md)\n"
           "      --server-key FILE    the coordinator's public key\n"
           "      --plaintext          no encryption: only for a coordinator on this machine (loopback)\n"
           "  -h, --help               this help\n",
           d.temp, d.top_k, d.top_p, d.min_p, d.repeat_penalty, d.repeat_last_n, GEN_TIMEOUT_MS_DEFAULT);
}

enum { OPT_TEMP = 1000, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REPPEN, OPT_REPN, OPT_NOSPECIAL, OPT_TIMEOUT, OPT_KEY,
       OPT_SERVER_KEY, OPT_PLAINTEXT };

/* The security options both commands take; false when c is not one. */
static bool sec_opt(int c, const char *arg, coord_client_sec_t *sec)
{
    if (c == OPT_KEY)
        sec->key_file = arg;
    else if (c == OPT_SERVER_KEY)
        sec->server_key_file = arg;
    else if (c == OPT_PLAINTEXT)
        sec->plaintext = true;
    return c == OPT_KEY || c == OPT_SERVER_KEY || c == OPT_PLAINTEXT;
}

#define SEC_LONGOPTS                                                                                             \
    { "key", required_argument, 0, OPT_KEY }, { "server-key", required_argument, 0, OPT_SERVER_KEY },            \
        { "plaintext", no_argument, 0, OPT_PLAINTEXT }

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
    default: ok = sec_opt(c, arg, &o->sec);
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
        SEC_LONGOPTS, { 0, 0, 0, 0 },
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
static int cancel_request(coord_client_t *c, uint64_t id)
{
    fflush(stdout);
    ms_err_t err = { { 0 } };
    int rc = coord_client_cancel(c, id, GEN_CANCEL_WAIT_MS, &err);
    if (rc == -EPROTO)
        fprintf(stderr, "moeshard generate: the coordinator sent a malformed reply: %s\n", err.msg);
    if (rc == -ETIMEDOUT || rc == -EINTR || rc == -EPROTO)
        fprintf(stderr, "moeshard generate: the coordinator did not acknowledge the cancel\n");
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

/* A failed wait's message; the exit status. */
static int wait_failed(int rc, const ms_err_t *err, const gen_opts_t *o)
{
    if (rc == -ETIMEDOUT)
        fprintf(stderr, "\nmoeshard generate: no reply from the coordinator at %s within %" PRId64 " ms "
                        "(is 'moeshard serve' running there?)\n", o->server, o->timeout_ms);
    else if (rc == -EPROTO)
        fprintf(stderr, "moeshard generate: the coordinator sent a malformed reply: %s\n", err->msg);
    else
        fprintf(stderr, "moeshard generate: %s\n", err->msg);
    return COORD_EXIT_FAIL;
}

static int generate(coord_client_t *c, const gen_opts_t *o)
{
    ms_cw_generate_t g = { .prompt = o->prompt, .prompt_len = strlen(o->prompt), .n_predict = (int32_t)o->n_predict,
                           .temp = o->sp.temp, .top_p = o->sp.top_p, .min_p = o->sp.min_p,
                           .repeat_penalty = o->sp.repeat_penalty, .top_k = o->sp.top_k,
                           .repeat_last_n = o->sp.repeat_last_n, .seed = o->sp.seed, .no_special = o->no_special };
    uint64_t id;
    ms_err_t send_err = { { 0 } };
    int src = coord_client_send_generate(c, &g, &id, &send_err);
    if (src == -EINTR)
        return GEN_EXIT_INTERRUPTED; /* nothing was sent: nothing to cancel */
    if (src)
        return wait_failed(src, &send_err, o);
    for (;;) {
        ms_cw_msg_t msg;
        ms_err_t err = { { 0 } };
        int rc = coord_client_recv(c, id, &msg, &err);
        if (rc == -EINTR)
            return cancel_request(c, id);
        if (rc)
            return wait_failed(rc, &err, o);
        int st = on_reply(&msg, id);
        ms_cw_msg_clear(&msg);
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
    coord_client_t *c = NULL;
    int sig_fd = -1;
    st = open_client("generate", o.server, &o.sec, o.timeout_ms, &sig_fd, &c);
    if (st < 0)
        st = generate(c, &o);
    coord_client_destroy(&c);
    if (sig_fd >= 0)
        close(sig_fd);
    return st;
}

/* --------------------------------------------------------------- status */

static void status_help(void)
{
    printf("usage: moeshard status --server tcp://HOST:PORT [--timeout-ms N]\n"
           "                       [--key FILE --server-key FILE | --plaintext]\n\n"
           "Prints a running coordinator's view: model, its chat template family, uptime, requests,\n"
           "tokens/s and, with expert hosts, each host's slices, memory, health (age of its last\n"
           "reply), round-trip time and traffic.\n");
}

static void print_status(const ms_cw_status_t *s)
{
    printf("model      %s (%s)\n", s->model, s->arch);
    printf("template   %s\n", s->chat_family[0] ? s->chat_family : "none recognised (chat falls back to chatml)");
    printf("uptime     %.1f s\n", (double)s->uptime_ms / 1e3);
    printf("requests   %u active, %u queued (at most %u at once), %" PRIu64 " done\n", s->active, s->queued,
           s->n_seq_max, s->requests_done);
    printf("tokens     %" PRIu64 " generated, %" PRIu64 " prompt\n", s->tokens_generated, s->prompt_tokens);
    printf("speed      decode %.1f tok/s, prefill %.1f tok/s (last 5 s)\n", s->decode_tok_s, s->prefill_tok_s);
    if (!s->n_hosts) {
        printf("experts    in the coordinator's process\n");
        return;
    }
    printf("experts    on %u hosts (wire %s), placement epoch %" PRIu64 ", %u down, %" PRIu64
           " slots recomputed on replicas\n", s->n_hosts, ms_wire_dtype_name(s->wire), s->epoch, s->hosts_down,
           s->failover_slots);
    printf("%-28s %-8s %7s %10s %12s %9s %9s %12s %12s\n", "host", "state", "slices", "memory MB", "last reply",
           "rtt ms", "batches", "sent MB", "received MB");
    for (uint32_t i = 0; i < s->n_hosts; i++) {
        const ms_cw_host_t *h = &s->hosts[i];
        char age[32];
        if (h->last_reply_age_ms < 0)
            snprintf(age, sizeof(age), "never");
        else
            snprintf(age, sizeof(age), "%.1f s ago", (double)h->last_reply_age_ms / 1e3);
        printf("%-28s %-8s %7u %10.1f %12s %9.3f %9" PRIu64 " %12.3f %12.3f\n", h->endpoint, h->state, h->slices_held,
               (double)h->memory_bytes / 1e6, age, h->rtt_ms_mean, h->batches, (double)h->bytes_sent / 1e6,
               (double)h->bytes_received / 1e6);
    }
}

static int status_query(coord_client_t *c, const char *server, int64_t timeout_ms)
{
    ms_cw_msg_t msg;
    ms_err_t err = { { 0 } };
    int rc = coord_client_status(c, &msg, &err);
    if (!rc) {
        print_status(&msg.status);
        ms_cw_msg_clear(&msg);
        return COORD_EXIT_OK;
    }
    if (rc == -EINTR)
        return GEN_EXIT_INTERRUPTED;
    if (rc == -ETIMEDOUT)
        fprintf(stderr, "moeshard status: no reply from the coordinator at %s within %" PRId64 " ms\n", server,
                timeout_ms);
    else if (rc == -EREMOTEIO)
        fprintf(stderr, "moeshard status: the coordinator answered with an error: %s\n", err.msg);
    else if (rc == -EPROTO)
        fprintf(stderr, "moeshard status: the coordinator sent a malformed reply: %s\n", err.msg);
    else
        fprintf(stderr, "moeshard status: %s\n", err.msg);
    return COORD_EXIT_FAIL;
}

int coord_cmd_status(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "server", required_argument, 0, 'S' }, { "timeout-ms", required_argument, 0, OPT_TIMEOUT },
        { "help", no_argument, 0, 'h' },         SEC_LONGOPTS, { 0, 0, 0, 0 },
    };
    const char *server = NULL;
    coord_client_sec_t sec = { 0 };
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
        else if (sec_opt(c, optarg, &sec))
            continue;
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
    coord_client_t *c = NULL;
    int sig_fd = -1;
    int st = open_client("status", server, &sec, timeout_ms, &sig_fd, &c);
    if (st < 0)
        st = status_query(c, server, timeout_ms);
    coord_client_destroy(&c);
    if (sig_fd >= 0)
        close(sig_fd);
    return st;
}
