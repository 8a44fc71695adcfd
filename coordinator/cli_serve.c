/* moeshard serve: the coordinator daemon. Loads the dense part and the
 * tokenizer, connects the expert hosts (or computes experts in-process),
 * runs the scheduler and serves clients on a ZeroMQ endpoint and, with
 * --http, the OpenAI-compatible API (docs/serve.md). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"
#include "curve.h"
#include "http.h"
#include "kernels.h"
#include "limits.h"
#include "log.h"
#include "model.h"
#include "notify.h"
#include "pool.h"
#include "sched.h"
#include "serve.h"
#include "tokenizer.h"

#define CMD "serve"
#define SERVE_SEQS_DEFAULT  8
#define SERVE_CTX_DEFAULT   4096
#define SERVE_BATCH_DEFAULT 256
#define SERVE_QUEUE_DEFAULT 64
#define SERVE_CONFIG_BYTES_MAX (1u << 16)
#define SERVE_CONFIG_ARGS_MAX 64

typedef struct {
    const char *model_path, *hosts, *listen, *http, *config, *name;
    int64_t threads, seqs, ctx, batch, queue, deadline_ms, replicas, heartbeat_ms, rate_limit;
    ms_wire_dtype_t wire;
    bool wire_set, queue_set, replicas_set;
    const char *key, *allow, *host_keys, *join_allow;      /* CURVE (docs/security.md) */
    const char *http_api_key, *http_tls_cert, *http_tls_key;
    bool plaintext, http_insecure;
    bool mmap;
    ms_type_t kv_type;
    bool kv_type_set;
} serve_opts_t;

static void serve_help(void)
{
    printf("usage: moeshard serve --model (M.gguf | PACK_DIR) --listen tcp://ADDR:PORT [options]\n\n"
           "Runs the coordinator: clients submit prompts with 'moeshard generate' and 'moeshard status';\n"
           "concurrent requests share each model step (continuous batching). Stops on SIGTERM or SIGINT.\n\n"
           "  -m, --model PATH        GGUF model; with --hosts also a folder written by 'moeshard pack'\n"
           "  -H, --hosts EP,EP,...   expertd hosts computing the routed experts (default: in this process)\n"
           "  -l, --listen EP         ZeroMQ endpoint for clients (required), e.g. tcp://127.0.0.1:5600\n"
           "      --http ADDR:PORT    also serve the OpenAI-compatible HTTP API there\n"
           "      --config FILE       read options from FILE: one 'option = value' per line, '#' comments;\n"
           "                          options on the command line win\n"
           "      --name NAME         model name shown by status and the HTTP API (default: the file name)\n"
           "      --mmap              use the weights from the file's mapping (the page cache) instead of\n"
           "                          reading them into huge-page memory first: starts sooner, decodes slower\n"
           "  -t, --threads T         worker threads (default: all %d cores)\n"
           "      --max-seqs N        requests decoding at once (default %d)\n"
           "  -c, --ctx N             positions per request: prompt + generated (default %d, at most the model's)\n"
           "  -b, --batch N           tokens per model step (default %d, at most %d)\n"
           "      --kv-type f16|f32   what the KV cache holds (default f16: half the memory; f32: exact)\n"
           "      --queue N           requests waiting for a free sequence before new ones are refused (default %d)\n"
           "      --wire f32|bf16|f16 activations on the wire with --hosts (default f32: exact)\n"
           "      --deadline-ms N     with --hosts: wait at most N ms for a host's reply (default %d)\n"
           "      --replicas R        with --hosts and a full GGUF: place R copies of every expert slice on\n"
           "                          distinct hosts, which load them from their own copy of the model\n"
           "                          (expertd --experts none); 0 serves what the hosts hold (default 1)\n"
           "      --heartbeat-ms N    with --hosts: idle heartbeat period; a host that misses %d is marked\n"
           "                          down and its work goes to replicas (default %d)\n"
           "      --rate-limit N      at most N requests a minute from one client (its CURVE key, else its address;\n"
           "                          bursts of N/6); over it: refused, on HTTP with 429 (default: no limit)\n"
           "      --key FILE          this coordinator's CURVE key pair ('moeshard keygen'): encrypts the\n"
           "                          client endpoint and authenticates it to the expert hosts\n"
           "      --allow FILE        client public keys admitted on --listen, one per line\n"
           "      --host-keys FILE    with --hosts: 'ENDPOINT KEY' lines, each host's public key\n"
           "      --join-allow FILE   with --key: public keys of expert hosts that may join (expertd --join);\n"
           "                          they may only join, not submit requests\n"
           "      --plaintext         no encryption: accepted only when --listen and every host are loopback\n"
           "      --http-api-key FILE require 'Authorization: Bearer KEY' on the HTTP API, KEY read from FILE\n"
           "      --http-tls-cert FILE  serve HTTPS with this PEM certificate chain ...\n"
           "      --http-tls-key FILE   ... and its PEM private key (mode 0600)\n"
           "      --http-insecure     allow plain HTTP on an address beyond loopback\n"
           "  -v, --verbose           more log lines\n"
           "  -h, --help              this help\n",
           ms_pool_default_threads(), SERVE_SEQS_DEFAULT, SERVE_CTX_DEFAULT, SERVE_BATCH_DEFAULT,
           MS_BATCH_TOKENS_MAX, SERVE_QUEUE_DEFAULT, MS_BACKEND_NET_DEADLINE_MS_DEFAULT, MS_BACKEND_NET_MISSED_MAX,
           MS_BACKEND_NET_HEARTBEAT_MS_DEFAULT);
}

enum { OPT_HTTP = 1000, OPT_CONFIG, OPT_SEQS, OPT_QUEUE, OPT_WIRE, OPT_DEADLINE, OPT_NAME, OPT_REPLICAS,
       OPT_HEARTBEAT, OPT_RATE, OPT_JOIN_ALLOW, OPT_KEY, OPT_ALLOW, OPT_HOST_KEYS, OPT_PLAINTEXT, OPT_API_KEY,
       OPT_TLS_CERT, OPT_TLS_KEY,
       OPT_INSECURE, OPT_MMAP, OPT_KV_TYPE };

static const struct option longopts[] = {
    { "model", required_argument, 0, 'm' },   { "hosts", required_argument, 0, 'H' },
    { "listen", required_argument, 0, 'l' },  { "http", required_argument, 0, OPT_HTTP },
    { "config", required_argument, 0, OPT_CONFIG }, { "threads", required_argument, 0, 't' },
    { "max-seqs", required_argument, 0, OPT_SEQS }, { "ctx", required_argument, 0, 'c' },
    { "batch", required_argument, 0, 'b' },   { "queue", required_argument, 0, OPT_QUEUE },
    { "wire", required_argument, 0, OPT_WIRE }, { "deadline-ms", required_argument, 0, OPT_DEADLINE },
    { "name", required_argument, 0, OPT_NAME }, { "verbose", no_argument, 0, 'v' },
    { "replicas", required_argument, 0, OPT_REPLICAS }, { "heartbeat-ms", required_argument, 0, OPT_HEARTBEAT },
    { "rate-limit", required_argument, 0, OPT_RATE },
    { "key", required_argument, 0, OPT_KEY }, { "allow", required_argument, 0, OPT_ALLOW },
    { "host-keys", required_argument, 0, OPT_HOST_KEYS }, { "plaintext", no_argument, 0, OPT_PLAINTEXT },
    { "join-allow", required_argument, 0, OPT_JOIN_ALLOW },
    { "http-api-key", required_argument, 0, OPT_API_KEY }, { "http-tls-cert", required_argument, 0, OPT_TLS_CERT },
    { "http-tls-key", required_argument, 0, OPT_TLS_KEY }, { "http-insecure", no_argument, 0, OPT_INSECURE },
    { "mmap", no_argument, 0, OPT_MMAP },     { "kv-type", required_argument, 0, OPT_KV_TYPE },
    { "help", no_argument, 0, 'h' },          { 0, 0, 0, 0 },
};

/* A flag: bare on the command line; "true"/"false" (or absent) in the config file. */
static bool apply_flag(const char *opt, const char *arg, bool *dst)
{
    if (!arg || !strcmp(arg, "true") || !strcmp(arg, "yes") || !strcmp(arg, "1"))
        *dst = true;
    else if (!strcmp(arg, "false") || !strcmp(arg, "no") || !strcmp(arg, "0"))
        *dst = false;
    else {
        coord_usage_error(CMD, "%s expects true or false, not '%s'", opt, arg);
        return false;
    }
    return true;
}

/* The security options; false when c is not one of them. */
static bool apply_security_opt(int c, const char *arg, serve_opts_t *o, bool *ok)
{
    *ok = true;
    switch (c) {
    case OPT_KEY: o->key = arg; return true;
    case OPT_ALLOW: o->allow = arg; return true;
    case OPT_HOST_KEYS: o->host_keys = arg; return true;
    case OPT_JOIN_ALLOW: o->join_allow = arg; return true;
    case OPT_API_KEY: o->http_api_key = arg; return true;
    case OPT_TLS_CERT: o->http_tls_cert = arg; return true;
    case OPT_TLS_KEY: o->http_tls_key = arg; return true;
    case OPT_PLAINTEXT: *ok = apply_flag("plaintext", arg, &o->plaintext); return true;
    case OPT_INSECURE: *ok = apply_flag("http-insecure", arg, &o->http_insecure); return true;
    default: return false;
    }
}

/* One option; false after printing a usage error. */
static bool apply_opt(int c, const char *arg, serve_opts_t *o)
{
    bool ok;
    if (apply_security_opt(c, arg, o, &ok))
        return ok;
    switch (c) {
    case 'm': o->model_path = arg; return true;
    case 'H': o->hosts = arg; return true;
    case 'l': o->listen = arg; return true;
    case OPT_HTTP: o->http = arg; return true;
    case OPT_CONFIG: o->config = arg; return true;
    case OPT_NAME: o->name = arg; return true;
    case OPT_MMAP: return apply_flag("mmap", arg, &o->mmap);
    case OPT_KV_TYPE: o->kv_type_set = true; return coord_parse_kv_type(CMD, arg ? arg : "", &o->kv_type);
    case 't': return coord_parse_i64(CMD, "--threads", arg, 1, MS_THREADS_MAX, &o->threads);
    case OPT_SEQS: return coord_parse_i64(CMD, "--max-seqs", arg, 1, MS_BATCH_TOKENS_MAX, &o->seqs);
    case 'c': return coord_parse_i64(CMD, "--ctx", arg, 1, MS_CONTEXT_MAX, &o->ctx);
    case 'b': return coord_parse_i64(CMD, "--batch", arg, 1, MS_BATCH_TOKENS_MAX, &o->batch);
    case OPT_QUEUE: o->queue_set = true; return coord_parse_i64(CMD, "--queue", arg, 0, MS_SCHED_QUEUE_MAX, &o->queue);
    case OPT_DEADLINE:
        return coord_parse_i64(CMD, "--deadline-ms", arg, 1, MS_BACKEND_NET_DEADLINE_MS_MAX, &o->deadline_ms);
    case OPT_RATE:
        return coord_parse_i64(CMD, "--rate-limit", arg, 1, MS_RATELIMIT_PER_MIN_MAX, &o->rate_limit);
    case OPT_REPLICAS:
        o->replicas_set = true;
        return coord_parse_i64(CMD, "--replicas", arg, 0, MS_HOSTS_MAX, &o->replicas);
    case OPT_HEARTBEAT:
        return coord_parse_i64(CMD, "--heartbeat-ms", arg, MS_BACKEND_NET_HEARTBEAT_MS_MIN,
                               MS_BACKEND_NET_HEARTBEAT_MS_MAX, &o->heartbeat_ms);
    case OPT_WIRE:
        o->wire_set = true;
        if (ms_wire_dtype_parse(arg, &o->wire) == 0)
            return true;
        coord_usage_error(CMD, "--wire expects f32, bf16 or f16, not '%s'", arg);
        return false;
    case 'v': { /* a flag: also "verbose = false" in a config file */
        bool v = false;
        if (!apply_flag("verbose", arg, &v))
            return false;
        ms_log_set_level(v ? MS_LOG_DEBUG : MS_LOG_INFO);
        return true;
    }
    default: return false;
    }
}

/* Returns -1 to continue, or an exit status. */
static int parse_argv(int argc, char **argv, serve_opts_t *o)
{
    opterr = 0;
    optind = 1;
    for (;;) {
        int c = getopt_long(argc, argv, ":m:H:l:t:c:b:vh", longopts, NULL);
        if (c == -1)
            break;
        if (c == 'h') {
            serve_help();
            return COORD_EXIT_OK;
        }
        if (c == ':') {
            coord_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
            return COORD_EXIT_USAGE;
        }
        if (c == '?') {
            coord_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
            return COORD_EXIT_USAGE;
        }
        if (!apply_opt(c, optarg, o))
            return COORD_EXIT_USAGE;
    }
    if (optind < argc) {
        coord_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
        return COORD_EXIT_USAGE;
    }
    return -1;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        *--e = '\0';
    return s;
}

/* One "option = value" line of the config file (value may be absent for verbose). */
static bool config_line(const char *path, int lineno, char *line, serve_opts_t *o)
{
    char *eq = strchr(line, '=');
    char *key = line, *val = NULL;
    if (eq) {
        *eq = '\0';
        val = trim(eq + 1);
    }
    key = trim(key);
    for (const struct option *opt = longopts; opt->name; opt++) {
        if (strcmp(opt->name, key) != 0 || !strcmp(key, "config") || !strcmp(key, "help"))
            continue;
        if (opt->has_arg == required_argument && (!val || !*val)) {
            fprintf(stderr, "moeshard serve: %s:%d: '%s' needs a value ('%s = VALUE')\n", path, lineno, key, key);
            return false;
        }
        return apply_opt(opt->val, val, o);
    }
    fprintf(stderr, "moeshard serve: %s:%d: unknown setting '%s' (settings are the long options of "
                    "'moeshard serve --help')\n", path, lineno, key);
    return false;
}

/* Applies the config file's settings; the buffer stays alive (options point into it). */
static int read_config(const char *path, serve_opts_t *o, char **ret_buf)
{
    uint64_t len;
    int rc = coord_read_file(path, SERVE_CONFIG_BYTES_MAX, ret_buf, &len);
    if (rc) {
        fprintf(stderr, "moeshard serve: cannot read config file '%s': %s\n", path, strerror(-rc));
        return rc;
    }
    int lineno = 0;
    for (char *line = *ret_buf, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *t = trim(line);
        if (*t && !config_line(path, lineno, t, o))
            return -EINVAL;
    }
    return 0;
}

/* The command line is read twice: first for --config, whose settings the
 * command line then overrides. */
static int parse_opts(int argc, char **argv, serve_opts_t *o, char **ret_config_buf)
{
    int st = parse_argv(argc, argv, o);
    if (st >= 0)
        return st;
    if (o->config) {
        serve_opts_t c = { .config = o->config };
        if (read_config(o->config, &c, ret_config_buf))
            return COORD_EXIT_USAGE;
        *o = c;
        st = parse_argv(argc, argv, o);
        if (st >= 0)
            return st;
    }
    if (!o->model_path || !o->listen) {
        coord_usage_error(CMD, "--model and --listen are required");
        return COORD_EXIT_USAGE;
    }
    if (!o->hosts && (o->wire_set || o->deadline_ms || o->replicas_set || o->heartbeat_ms)) {
        coord_usage_error(CMD, "--wire, --deadline-ms, --replicas and --heartbeat-ms apply only with --hosts");
        return COORD_EXIT_USAGE;
    }
    return -1;
}

/* Everything the daemon holds; released in one place, in reverse order. */
typedef struct {
    serve_opts_t o;
    char *config_buf, *hosts_buf, *dense_path;
    const char **hosts;
    int n_hosts;
    ms_model_t *model;
    ms_tokenizer_t *tok;
    ms_pool_t *pool;
    ms_expert_backend_t *backend;
    ms_sched_t *sched;
    coord_server_t *server;
    coord_http_t *http;
    int sig_fd;
    ms_curve_keypair_t kp;          /* with --key */
    ms_curve_allow_t *allow, *join_allow;
    ms_curve_hostkeys_t *host_keys;
    char *api_key, *tls_cert, *tls_key;
    ms_ratelimit_t *rate;           /* with --rate-limit: shared by ZeroMQ and HTTP clients */
} serve_t;

static void serve_release(serve_t *d)
{
    coord_http_stop(&d->http);
    ms_sched_destroy(&d->sched);
    if (d->server)
        coord_server_flush(d->server);
    coord_server_destroy(&d->server);
    ms_backend_destroy(&d->backend);
    ms_pool_destroy(&d->pool);
    ms_tokenizer_destroy(&d->tok);
    ms_model_destroy(&d->model);
    if (d->sig_fd >= 0)
        close(d->sig_fd);
    free(d->config_buf);
    free(d->hosts_buf);
    free(d->hosts);
    free(d->dense_path);
    ms_curve_allow_destroy(&d->allow);
    ms_curve_allow_destroy(&d->join_allow);
    ms_curve_hostkeys_destroy(&d->host_keys);
    ms_ratelimit_destroy(&d->rate);
    if (d->api_key)
        explicit_bzero(d->api_key, strlen(d->api_key));
    if (d->tls_key)
        explicit_bzero(d->tls_key, strlen(d->tls_key));
    free(d->api_key);
    free(d->tls_key);
    free(d->tls_cert);
    explicit_bzero(&d->kp, sizeof(d->kp));
}

static int split_hosts(serve_t *d)
{
    size_t n = 1;
    for (const char *c = d->o.hosts; *c; c++)
        n += *c == ',';
    if (n > MS_HOSTS_MAX) {
        coord_usage_error(CMD, "--hosts lists %zu endpoints (at most %d)", n, MS_HOSTS_MAX);
        return -EINVAL;
    }
    d->hosts_buf = strdup(d->o.hosts);
    d->hosts = calloc(n, sizeof(*d->hosts));
    if (!d->hosts_buf || !d->hosts)
        return -ENOMEM;
    for (char *p = d->hosts_buf, *next; p; p = next) {
        next = strchr(p, ',');
        if (next)
            *next++ = '\0';
        if (!*p) {
            coord_usage_error(CMD, "--hosts: endpoint %d is empty (expected EP,EP,... such as tcp://HOST:PORT)",
                              d->n_hosts + 1);
            return -EINVAL;
        }
        d->hosts[d->n_hosts++] = p;
    }
    return 0;
}

/* As run: the whole model, or with --hosts its dense part (a pack's dense.gguf). */
static int load_model(serve_t *d, ms_err_t *err)
{
    struct stat st;
    bool is_dir = stat(d->o.model_path, &st) == 0 && S_ISDIR(st.st_mode);
    if (!d->o.hosts) {
        if (!is_dir)
            return coord_model_open(CMD, d->o.model_path, false, d->o.mmap, &d->model, err);
        ms_err_set(err, "%s is a folder: a pack from 'moeshard pack' is served with its experts on hosts "
                        "(--hosts EP,...)", d->o.model_path);
        return -EINVAL;
    }
    const char *path = d->o.model_path;
    if (is_dir) {
        if (asprintf(&d->dense_path, "%s/dense.gguf", d->o.model_path) < 0) {
            d->dense_path = NULL;
            return -ENOMEM;
        }
        path = d->dense_path;
    }
    return coord_model_open(CMD, path, true, d->o.mmap, &d->model, err);
}

static int make_backend(serve_t *d, int n_batch, ms_err_t *err)
{
    if (!d->o.hosts) {
        int rc = ms_backend_local_new(d->model, d->pool, ms_kernels_best(), n_batch, &d->backend);
        if (rc)
            ms_err_set(err, "cannot set up the expert computation: %s", strerror(-rc));
        return rc;
    }
    ms_backend_net_params_t p = ms_backend_net_defaults();
    p.stop_fd = d->sig_fd; /* SIGTERM while hosts load their slices */
    p.wire = d->o.wire;
    if (d->o.deadline_ms)
        p.deadline_ms = (int32_t)d->o.deadline_ms;
    p.max_tokens = n_batch;
    p.pool = d->pool;
    if (d->o.heartbeat_ms)
        p.heartbeat_ms = (int32_t)d->o.heartbeat_ms;
    /* a full GGUF: the coordinator places the slices; a pack: its plan did */
    p.replicas = d->dense_path ? 0 : d->o.replicas_set ? (int32_t)d->o.replicas : 1;
    if (p.replicas > d->n_hosts) {
        ms_err_set(err, "--replicas %d exceeds the %d hosts of --hosts", p.replicas, d->n_hosts);
        return -EINVAL;
    }
    if (d->dense_path && d->o.replicas_set && d->o.replicas) {
        ms_err_set(err, "--replicas applies to a full GGUF; the pack %s already placed its slices (moeshard pack --replicas)",
                   d->o.model_path);
        return -EINVAL;
    }
    p.curve_key = d->o.key ? &d->kp : NULL;
    p.host_keys = d->host_keys;
    return ms_backend_net_new(d->model, d->hosts, d->n_hosts, &p, &d->backend, err);
}

/* Positions per sequence: --ctx, else the default capped by the model's training context. */
static int32_t serve_ctx(const serve_t *d)
{
    const ms_hparams_t *hp = &d->model->hp;
    int64_t ctx = d->o.ctx ? d->o.ctx : (SERVE_CTX_DEFAULT < hp->n_ctx_train ? SERVE_CTX_DEFAULT : hp->n_ctx_train);
    return (int32_t)ctx;
}

static int make_sched(serve_t *d, int n_batch, ms_err_t *err)
{
    int32_t ctx = serve_ctx(d);
    int64_t seqs = d->o.seqs ? d->o.seqs : SERVE_SEQS_DEFAULT;
    if (seqs > n_batch) {
        ms_err_set(err, "--max-seqs %lld exceeds the tokens per step (--batch %d): every sequence needs one",
                   (long long)seqs, n_batch);
        return -EINVAL;
    }
    ms_sched_params_t sp = { .n_seq_max = (int32_t)seqs, .n_ctx = ctx, .n_batch_max = n_batch,
                             .kv_type = d->o.kv_type_set ? d->o.kv_type : COORD_KV_TYPE_DEFAULT,
                             .queue_max = (int32_t)(d->o.queue_set ? d->o.queue : SERVE_QUEUE_DEFAULT),
                             .pool = d->pool };
    return ms_sched_new(d->model, d->tok, d->backend, &sp, &d->sched, err);
}

static const char *model_name(const serve_t *d)
{
    if (d->o.name)
        return d->o.name;
    const char *slash = strrchr(d->o.model_path, '/');
    return slash && slash[1] ? slash + 1 : d->o.model_path;
}

/* Prometheus lines for the hosts, appended to the HTTP /metrics. */
static void http_host_metrics(void *ctx, char *buf, size_t cap)
{
    const serve_t *d = ctx;
    size_t len = 0;
    buf[0] = '\0';
    int n_hosts = d->n_hosts ? ms_backend_net_n_hosts(d->backend) : 0; /* with those that joined */
    for (int h = 0; h < n_hosts && len < cap; h++) {
        ms_backend_net_host_stats_t hs;
        if (ms_backend_net_host_stats(d->backend, h, &hs))
            continue;
        int n = snprintf(buf + len, cap - len,
                         "moeshard_host_rtt_ms_mean{host=\"%s\"} %.3f\n"
                         "moeshard_host_bytes_sent_total{host=\"%s\"} %llu\n"
                         "moeshard_host_bytes_received_total{host=\"%s\"} %llu\n"
                         "moeshard_host_slices{host=\"%s\"} %u\n",
                         hs.endpoint, hs.rtt_ms_mean, hs.endpoint, (unsigned long long)hs.bytes_sent, hs.endpoint,
                         (unsigned long long)hs.bytes_received, hs.endpoint, hs.slices_held);
        if (n < 0 || (size_t)n >= cap - len) {
            buf[len] = '\0';
            break;
        }
        len += (size_t)n;
    }
}

static int start_http(serve_t *d, ms_err_t *err)
{
    /* the scheduler's context, not the model's: requests without max_tokens fill it */
    coord_http_params_t hp = { .n_ctx = serve_ctx(d), .api_key = d->api_key, .tls_cert_pem = d->tls_cert,
                               .tls_key_pem = d->tls_key, .insecure = d->o.http_insecure, .rate = d->rate,
                               .rate_per_min = (int)d->o.rate_limit };
    int rc = coord_http_start(d->sched, d->model, d->tok, model_name(d), d->o.http, &hp, &d->http, err);
    if (!rc && d->n_hosts)
        coord_http_set_stats_fn(d->http, http_host_metrics, d);
    if (!rc)
        ms_log_info("HTTP API on %s (port %u)", d->o.http, coord_http_port(d->http));
    return rc;
}

static int setup(serve_t *d, ms_err_t *err)
{
    if (d->o.rate_limit && ms_ratelimit_new((int)d->o.rate_limit, &d->rate)) {
        ms_err_set(err, "out of memory for the rate limiter");
        return -ENOMEM;
    }
    ms_notify_status("loading %s", d->o.model_path);
    int rc = load_model(d, err);
    rc = rc ? rc : ms_tokenizer_new_from_gguf(d->model->gguf, &d->tok, err);
    if (rc)
        return rc;
    int threads = d->o.threads ? (int)d->o.threads : ms_pool_default_threads();
    rc = ms_pool_new(threads, &d->pool);
    if (rc) {
        ms_err_set(err, "cannot start %d threads: %s", threads, strerror(-rc));
        return rc;
    }
    int n_batch = (int)(d->o.batch ? d->o.batch : SERVE_BATCH_DEFAULT);
    if (d->n_hosts)
        ms_notify_status("waiting for %d expert hosts to answer", d->n_hosts);
    rc = make_backend(d, n_batch, err);
    rc = rc ? rc : make_sched(d, n_batch, err);
    if (rc)
        return rc;
    coord_server_params_t sp = { .listen = d->o.listen, .model_name = model_name(d), .m = d->model,
                                 .sched = d->sched, .backend = d->backend, .n_hosts = d->n_hosts,
                                 .wire = d->o.wire, .n_seq_max = (int32_t)(d->o.seqs ? d->o.seqs : SERVE_SEQS_DEFAULT),
                                 .sig_fd = d->sig_fd, .curve_key = d->o.key ? &d->kp : NULL,
                                 .curve_allow = d->allow, .join_allow = d->join_allow, .rate = d->rate,
                                 .rate_per_min = (int)d->o.rate_limit };
    rc = coord_server_new(&sp, &d->server, err);
    return rc ? rc : d->o.http ? start_http(d, err) : 0;
}

/* SIGINT and SIGTERM are read from a signalfd by the serving loop; blocked
 * before any thread starts, so every thread inherits the mask. */
static int block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &set, NULL))
        return -errno;
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

/* ------------------------------------------------------------ security */

/* The combinations of security options that make sense; false after a usage error. */
static bool security_usage(const serve_opts_t *o)
{
    bool keys = o->key || o->allow || o->host_keys;
    const char *msg = NULL;
    if (keys && o->plaintext)
        msg = "--plaintext and --key/--allow/--host-keys exclude each other";
    else if (keys && (!o->key || !o->allow))
        msg = "--key and --allow go together: this coordinator's key pair and the client keys it admits";
    else if (o->host_keys && !o->hosts)
        msg = "--host-keys applies only with --hosts";
    else if (o->join_allow && !o->key)
        msg = "--join-allow goes with --key: joining hosts authenticate with their CURVE keys";
    else if (keys && o->hosts && !o->host_keys)
        msg = "--hosts with --key needs --host-keys FILE: 'ENDPOINT KEY' lines with each host's public key";
    else if (!o->http && (o->http_api_key || o->http_tls_cert || o->http_tls_key || o->http_insecure))
        msg = "--http-api-key, --http-tls-cert, --http-tls-key and --http-insecure apply only with --http";
    else if (!o->http_tls_cert != !o->http_tls_key)
        msg = "--http-tls-cert and --http-tls-key go together";
    if (msg) {
        coord_usage_error(CMD, "%s", msg);
        return false;
    }
    if (!keys && !o->plaintext) {
        fprintf(stderr, "moeshard serve: no keys: make a key pair with 'moeshard keygen --out NAME' and pass "
                        "--key NAME.key --allow CLIENTS (their .pub keys, one per line)%s; or --plaintext when "
                        "--listen%s are loopback (docs/security.md)\n",
                o->hosts ? " --host-keys HOSTS" : "", o->hosts ? " and every host" : "");
        return false;
    }
    return true;
}

/* The bearer token: one line of printable characters, from a private file. */
static int read_api_key(const char *path, char **ret, ms_err_t *err)
{
    char *buf = NULL;
    size_t len = 0;
    int rc = ms_curve_read_private(path, COORD_HTTP_API_KEY_BYTES_MAX + 2, &buf, &len, err);
    if (rc)
        return rc;
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        buf[--len] = '\0';
    bool ok = len > 0 && len <= COORD_HTTP_API_KEY_BYTES_MAX;
    for (size_t i = 0; i < len; i++)
        ok = ok && buf[i] > ' ' && buf[i] < 0x7f;
    if (!ok) {
        ms_err_set(err, "%s: the API key must be one line of 1 to %d printable characters without spaces", path,
                   COORD_HTTP_API_KEY_BYTES_MAX);
        explicit_bzero(buf, len);
        free(buf);
        return -EINVAL;
    }
    *ret = buf;
    return 0;
}

static int read_http_files(serve_t *d, ms_err_t *err)
{
    const serve_opts_t *o = &d->o;
    int rc = o->http_api_key ? read_api_key(o->http_api_key, &d->api_key, err) : 0;
    if (rc || !o->http_tls_cert)
        return rc;
    uint64_t len = 0;
    rc = coord_read_file(o->http_tls_cert, COORD_HTTP_PEM_BYTES_MAX, &d->tls_cert, &len);
    if (rc) {
        d->tls_cert = NULL;
        ms_err_set(err, "--http-tls-cert %s: %s", o->http_tls_cert, strerror(-rc));
        return rc;
    }
    size_t klen = 0;
    return ms_curve_read_private(o->http_tls_key, COORD_HTTP_PEM_BYTES_MAX, &d->tls_key, &klen, err);
}

/* Keys and secrets are read before the model, so a bad file fails at once. */
static int read_security_files(serve_t *d, ms_err_t *err)
{
    const serve_opts_t *o = &d->o;
    int rc = o->key ? ms_curve_keypair_load(o->key, &d->kp, err) : 0;
    rc = rc ? rc : o->allow ? ms_curve_allow_load(o->allow, &d->allow, err) : 0;
    rc = rc ? rc : o->host_keys ? ms_curve_hostkeys_load(o->host_keys, &d->host_keys, err) : 0;
    rc = rc ? rc : o->join_allow ? ms_curve_allow_load(o->join_allow, &d->join_allow, err) : 0;
    rc = rc ? rc : read_http_files(d, err);
    if (!rc && o->key)
        ms_log_info("CURVE: public key %s; %zu client keys admitted (%s)", d->kp.pub, ms_curve_allow_count(d->allow),
                    o->allow);
    return rc;
}

/* -1 to go on, or the exit status. */
static int serve_security(serve_t *d)
{
    if (!security_usage(&d->o))
        return COORD_EXIT_USAGE;
    ms_err_t err = { { 0 } };
    if (d->o.plaintext && (ms_curve_plaintext_check(&d->o.listen, 1, &err) ||
                           ms_curve_plaintext_check(d->hosts, d->n_hosts, &err))) {
        fprintf(stderr, "moeshard serve: %s\n", err.msg);
        return COORD_EXIT_USAGE;
    }
    if (d->o.plaintext)
        ms_log_warn("plaintext: the client endpoint%s neither encrypted nor authenticated (loopback only)",
                    d->n_hosts ? " and the links to the hosts are" : " is");
    if (read_security_files(d, &err)) {
        ms_log_error("%s", err.msg);
        return COORD_EXIT_FAIL;
    }
    return -1;
}

int coord_cmd_serve(int argc, char **argv)
{
    serve_t d = { .sig_fd = -1 };
    int st = parse_opts(argc, argv, &d.o, &d.config_buf);
    if (st >= 0) {
        serve_release(&d);
        return st;
    }
    int rc = d.o.hosts ? split_hosts(&d) : 0;
    if (rc) {
        serve_release(&d);
        return rc == -EINVAL ? COORD_EXIT_USAGE : COORD_EXIT_FAIL;
    }
    st = serve_security(&d);
    if (st >= 0) {
        serve_release(&d);
        return st;
    }
    d.sig_fd = block_signals();
    ms_err_t err = { { 0 } };
    if (d.sig_fd < 0) {
        ms_log_error("cannot set up signal handling: %s", strerror(-d.sig_fd));
        serve_release(&d);
        return COORD_EXIT_FAIL;
    }
    rc = setup(&d, &err);
    if (rc) {
        ms_log_error("%s", err.msg[0] ? err.msg : strerror(-rc));
        ms_notify_status("failed: %s", err.msg[0] ? err.msg : strerror(-rc));
        serve_release(&d);
        return COORD_EXIT_FAIL;
    }
    ms_log_info("serving %s (%s) on %s: %s, %d threads, kernels %s", model_name(&d),
                ms_arch_name(d.model->hp.arch), d.o.listen,
                d.n_hosts ? "experts on hosts" : "experts in this process", ms_sched_threads(d.sched),
                ms_sched_kernels_name(d.sched));
    char status[MS_NOTIFY_STATUS_BYTES_MAX];
    snprintf(status, sizeof(status), "serving %s on %s, experts %s", model_name(&d), d.o.listen,
             d.n_hosts ? "on hosts" : "in this process");
    ms_notify_ready(status); /* the hosts answered Hello and the client socket is bound */
    int sig = coord_server_run(d.server);
    ms_notify_stopping();
    ms_log_info("%s: stopping; requests in flight end with an error", sig > 0 ? strsignal(sig) : "error");
    serve_release(&d);
    return sig > 0 ? COORD_EXIT_OK : COORD_EXIT_FAIL;
}
