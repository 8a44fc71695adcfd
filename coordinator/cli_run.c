/* moeshard run: the whole model in one process (embedded mode), or with the
 * routed experts on expert hosts (--hosts). Prompt -> tokens -> batched
 * prefill -> decode loop with the sampler, streaming text. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "backend.h"
#include "cli.h"
#include "curve.h"
#include "forward.h"
#include "limits.h"
#include "log.h"
#include "model.h"
#include "npy.h"
#include "pool.h"
#include "sampler.h"
#include "tokenizer.h"

#define CMD "run"
#define RUN_BATCH_DEFAULT 256

typedef struct {
    const char *model_path;
    const char *prompt;
    const char *prompt_file;
    const char *dump_logits;
    int64_t n_predict;
    int64_t threads;
    int64_t n_ctx;
    int64_t n_batch;
    bool parse_special;
    bool seed_set;
    ms_sampler_params_t sp;
    const char *hosts;         /* --hosts as given */
    ms_wire_dtype_t wire;
    int64_t deadline_ms;
    bool wire_set, deadline_set;
    const char *key, *host_keys;  /* CURVE to the hosts (docs/security.md) */
    bool plaintext;
    bool mmap;
    ms_type_t kv_type;
} run_opts_t;

static void run_help(void)
{
    ms_sampler_params_t d = ms_sampler_defaults();
    printf("usage: moeshard run --model M.gguf (--prompt TEXT | --prompt-file F) [options]\n"
           "       moeshard run --model (M.gguf | PACK_DIR) --hosts EP,EP,... (--prompt TEXT | --prompt-file F) [options]\n\n"
           "Generates text with the whole model in this process and streams it to stdout;\n"
           "one summary line with prefill and decode speed goes to stderr. With --hosts the\n"
           "routed experts are computed by expertd hosts instead (docs/cluster.md).\n\n"
           "  -m, --model FILE         GGUF model (required); with --hosts also a folder written by\n"
           "                           'moeshard pack' (its dense.gguf is loaded)\n"
           "  -p, --prompt TEXT        prompt text\n"
           "  -f, --prompt-file FILE   read the prompt from FILE\n"
           "  -n, --n-predict N        tokens to generate (default 128; stops early at end-of-text)\n"
           "      --temp T             temperature; 0 = greedy (default %.2f)\n"
           "      --top-k K            keep the K most probable tokens; 0 = off (default %d)\n"
           "      --top-p P            nucleus sampling; 1 = off (default %.2f)\n"
           "      --min-p P            drop tokens below P x the best probability; 0 = off (default %.2f)\n"
           "      --repeat-penalty R   penalise recent tokens; 1 = off (default %.2f)\n"
           "      --repeat-last-n N    how many recent tokens the penalty looks at (default %d)\n"
           "  -s, --seed S             random seed; the same seed gives the same text (default: random, printed)\n"
           "  -t, --threads T          worker threads (default: all %d cores)\n"
           "  -c, --ctx N              context length (default: prompt + n-predict, at most the model's)\n"
           "  -b, --batch N            prompt tokens per prefill step (default %d, at most %d)\n"
           "      --kv-type f16|f32    what the KV cache holds (default f16: half the memory; f32: exact)\n"
           "      --no-special         treat special-token text in the prompt as plain text\n"
           "      --mmap               use the weights from the file's mapping (the page cache) instead of\n"
           "                           reading them into huge-page memory first: starts sooner, decodes\n"
           "                           slower (docs/performance.md)\n"
           "      --dump-logits FILE   write float32 logits as .npy [rows, vocab]: one row after each\n"
           "                           prompt token, then one after each generated token fed back\n"
           "      --hosts EP,EP,...    compute the routed experts on these expertd hosts (ZeroMQ endpoints,\n"
           "                           e.g. tcp://10.0.0.5:5555); every (layer, expert) must be held by one\n"
           "                           of them; the model's own expert tensors are then not read\n"
           "      --wire f32|bf16|f16  activations on the wire with --hosts (default f32: exact)\n"
           "      --deadline-ms N      with --hosts: wait at most N ms for a host's reply (default %d)\n"
           "      --key FILE           with --hosts: this process's CURVE key pair ('moeshard keygen');\n"
           "                           the hosts must allow its public key (docs/security.md)\n"
           "      --host-keys FILE     with --key: 'ENDPOINT KEY' lines, each host's public key\n"
           "      --plaintext          with --hosts: no encryption, accepted only for loopback hosts\n"
           "  -v, --verbose            more log lines on stderr\n"
           "  -h, --help               this help\n",
           d.temp, d.top_k, d.top_p, d.min_p, d.repeat_penalty, d.repeat_last_n, ms_pool_default_threads(),
           RUN_BATCH_DEFAULT, MS_BATCH_TOKENS_MAX, MS_BACKEND_NET_DEADLINE_MS_DEFAULT);
}

enum { OPT_TEMP = 1000, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REPPEN, OPT_REPN, OPT_NOSPECIAL, OPT_DUMP, OPT_HOSTS,
       OPT_WIRE, OPT_DEADLINE, OPT_KEY, OPT_HOST_KEYS, OPT_PLAINTEXT, OPT_MMAP, OPT_KV_TYPE };

static bool parse_wire(const char *s, ms_wire_dtype_t *ret);

/* With --hosts: both key files, or --plaintext (loopback checked later). */
static bool security_usage(const run_opts_t *o)
{
    if (!o->hosts)
        return true;
    bool keys = o->key || o->host_keys;
    if (keys && o->plaintext)
        coord_usage_error(CMD, "--plaintext and --key/--host-keys exclude each other");
    else if (keys && (!o->key || !o->host_keys))
        coord_usage_error(CMD, "--key and --host-keys go together: this process's key pair and the hosts' keys");
    else if (!keys && !o->plaintext)
        fprintf(stderr, "moeshard run: no keys for --hosts: make a key pair with 'moeshard keygen --out NAME', add "
                        "NAME.pub to each expertd's --allow list, and pass --key NAME.key --host-keys FILE "
                        "('ENDPOINT KEY' lines); or --plaintext when every host is loopback (docs/security.md)\n");
    else
        return true;
    return false;
}

/* Returns -1 to continue, or an exit status. */
static int parse_opts(int argc, char **argv, run_opts_t *o)
{
    static const struct option longopts[] = {
        { "model", required_argument, 0, 'm' },      { "prompt", required_argument, 0, 'p' },
        { "prompt-file", required_argument, 0, 'f' }, { "n-predict", required_argument, 0, 'n' },
        { "temp", required_argument, 0, OPT_TEMP },   { "top-k", required_argument, 0, OPT_TOPK },
        { "top-p", required_argument, 0, OPT_TOPP },  { "min-p", required_argument, 0, OPT_MINP },
        { "repeat-penalty", required_argument, 0, OPT_REPPEN },
        { "repeat-last-n", required_argument, 0, OPT_REPN },
        { "seed", required_argument, 0, 's' },        { "threads", required_argument, 0, 't' },
        { "ctx", required_argument, 0, 'c' },         { "batch", required_argument, 0, 'b' },
        { "no-special", no_argument, 0, OPT_NOSPECIAL }, { "dump-logits", required_argument, 0, OPT_DUMP },
        { "verbose", no_argument, 0, 'v' },           { "help", no_argument, 0, 'h' },
        { "hosts", required_argument, 0, OPT_HOSTS }, { "wire", required_argument, 0, OPT_WIRE },
        { "deadline-ms", required_argument, 0, OPT_DEADLINE },
        { "key", required_argument, 0, OPT_KEY },     { "host-keys", required_argument, 0, OPT_HOST_KEYS },
        { "plaintext", no_argument, 0, OPT_PLAINTEXT }, { "mmap", no_argument, 0, OPT_MMAP },
        { "kv-type", required_argument, 0, OPT_KV_TYPE },
        { 0, 0, 0, 0 },
    };
    int64_t v;
    opterr = 0;
    optind = 1;
    for (;;) {
        int c = getopt_long(argc, argv, ":m:p:f:n:s:t:c:b:vh", longopts, NULL);
        if (c == -1)
            break;
        bool ok = true;
        switch (c) {
        case 'm': o->model_path = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'f': o->prompt_file = optarg; break;
        case 'n': ok = coord_parse_i64(CMD, "--n-predict", optarg, 0, MS_CONTEXT_MAX, &o->n_predict); break;
        case OPT_TEMP: ok = coord_parse_f32(CMD, "--temp", optarg, 0, 100, &o->sp.temp); break;
        case OPT_TOPK: ok = coord_parse_i64(CMD, "--top-k", optarg, 0, MS_VOCAB_MAX, &v); o->sp.top_k = (int32_t)v; break;
        case OPT_TOPP: ok = coord_parse_f32(CMD, "--top-p", optarg, 1e-6f, 1, &o->sp.top_p); break;
        case OPT_MINP: ok = coord_parse_f32(CMD, "--min-p", optarg, 0, 0.999999f, &o->sp.min_p); break;
        case OPT_REPPEN: ok = coord_parse_f32(CMD, "--repeat-penalty", optarg, 1e-3f, 100, &o->sp.repeat_penalty); break;
        case OPT_REPN: ok = coord_parse_i64(CMD, "--repeat-last-n", optarg, 0, MS_CONTEXT_MAX, &v); o->sp.repeat_last_n = (int32_t)v; break;
        case 's': ok = coord_parse_i64(CMD, "--seed", optarg, 0, INT64_MAX, &v); o->sp.seed = (uint64_t)v; o->seed_set = true; break;
        case 't': ok = coord_parse_i64(CMD, "--threads", optarg, 1, MS_THREADS_MAX, &o->threads); break;
        case 'c': ok = coord_parse_i64(CMD, "--ctx", optarg, 1, MS_CONTEXT_MAX, &o->n_ctx); break;
        case 'b': ok = coord_parse_i64(CMD, "--batch", optarg, 1, MS_BATCH_TOKENS_MAX, &o->n_batch); break;
        case OPT_NOSPECIAL: o->parse_special = false; break;
        case OPT_DUMP: o->dump_logits = optarg; break;
        case OPT_HOSTS: o->hosts = optarg; break;
        case OPT_WIRE: ok = parse_wire(optarg, &o->wire); o->wire_set = true; break;
        case OPT_DEADLINE: ok = coord_parse_i64(CMD, "--deadline-ms", optarg, 1, MS_BACKEND_NET_DEADLINE_MS_MAX, &o->deadline_ms); o->deadline_set = true; break;
        case OPT_KEY: o->key = optarg; break;
        case OPT_HOST_KEYS: o->host_keys = optarg; break;
        case OPT_PLAINTEXT: o->plaintext = true; break;
        case OPT_MMAP: o->mmap = true; break;
        case OPT_KV_TYPE: ok = coord_parse_kv_type(CMD, optarg, &o->kv_type); break;
        case 'v': ms_log_set_level(MS_LOG_DEBUG); break;
        case 'h': run_help(); return COORD_EXIT_OK;
        case ':': coord_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]); return COORD_EXIT_USAGE;
        default: coord_usage_error(CMD, "unknown option '%s'", argv[optind - 1]); return COORD_EXIT_USAGE;
        }
        if (!ok)
            return COORD_EXIT_USAGE;
    }
    if (optind < argc) {
        coord_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
        return COORD_EXIT_USAGE;
    }
    if (!o->model_path) {
        coord_usage_error(CMD, "--model is required");
        return COORD_EXIT_USAGE;
    }
    if (!!o->prompt == !!o->prompt_file) {
        coord_usage_error(CMD, "give exactly one of --prompt and --prompt-file");
        return COORD_EXIT_USAGE;
    }
    if (!o->hosts && (o->wire_set || o->deadline_set || o->key || o->host_keys || o->plaintext)) {
        coord_usage_error(CMD, "--wire, --deadline-ms, --key, --host-keys and --plaintext apply only with --hosts");
        return COORD_EXIT_USAGE;
    }
    return security_usage(o) ? -1 : COORD_EXIT_USAGE;
}

static bool parse_wire(const char *s, ms_wire_dtype_t *ret)
{
    if (ms_wire_dtype_parse(s, ret) == 0)
        return true;
    fprintf(stderr, "moeshard %s: --wire expects f32, bf16 or f16, not '%s'\n", CMD, s);
    return false;
}

/* Splits --hosts at commas into *ret_eps (pointers into *ret_buf; the caller
 * frees both). -EINVAL (a usage error, printed) or -ENOMEM. */
static int split_hosts(const char *list, char **ret_buf, const char ***ret_eps, int *ret_n)
{
    size_t n = 1;
    for (const char *c = list; *c; c++)
        n += *c == ',';
    if (n > MS_HOSTS_MAX) {
        coord_usage_error(CMD, "--hosts lists %zu endpoints (at most %d)", n, MS_HOSTS_MAX);
        return -EINVAL;
    }
    char *buf = strdup(list);
    const char **eps = calloc(n, sizeof(*eps));
    if (!buf || !eps) {
        free(buf);
        free(eps);
        ms_log_error("out of memory");
        return -ENOMEM;
    }
    int i = 0;
    for (char *p = buf, *next; p; p = next) {
        next = strchr(p, ',');
        if (next)
            *next++ = '\0';
        eps[i++] = p;
        if (!*p) {
            coord_usage_error(CMD, "--hosts: endpoint %d is empty (expected EP,EP,... such as tcp://HOST:PORT)", i);
            free(buf);
            free(eps);
            return -EINVAL;
        }
    }
    *ret_buf = buf;
    *ret_eps = eps;
    *ret_n = i;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Everything one run holds; released in one place. */
typedef struct {
    run_opts_t o;
    char *prompt_buf;
    ms_model_t *model;
    ms_tokenizer_t *tok;
    ms_pool_t *pool;
    ms_expert_backend_t *backend;
    ms_forward_t *fwd;
    ms_sampler_t *sampler;
    ms_npy_writer_t *npy;
    int32_t *prompt_ids;
    size_t n_prompt;
    ms_batch_tok_t *batch;
    float *logits;
    const ms_kernels_t *k;
    int32_t n_ctx;
    char *hosts_buf;        /* --hosts split at commas */
    const char **hosts;     /* [n_hosts] into hosts_buf */
    int n_hosts;
    char *dense_path;       /* PACK_DIR/dense.gguf */
    ms_curve_keypair_t kp;  /* with --key */
    ms_curve_hostkeys_t *host_keys;
} run_t;

static void run_release(run_t *r)
{
    ms_npy_close(&r->npy);
    ms_sampler_destroy(&r->sampler);
    ms_forward_destroy(&r->fwd);
    ms_backend_destroy(&r->backend);
    ms_pool_destroy(&r->pool);
    ms_tokenizer_destroy(&r->tok);
    ms_model_destroy(&r->model);
    free(r->prompt_buf);
    free(r->prompt_ids);
    free(r->batch);
    free(r->logits);
    free(r->hosts_buf);
    free(r->hosts);
    free(r->dense_path);
    ms_curve_hostkeys_destroy(&r->host_keys);
    explicit_bzero(&r->kp, sizeof(r->kp));
}

static int load_prompt(run_t *r)
{
    const char *text = r->o.prompt;
    size_t len = text ? strlen(text) : 0;
    if (r->o.prompt_file) {
        uint64_t n;
        int rc = coord_read_file(r->o.prompt_file, (uint64_t)MS_PROMPT_TOKENS_MAX * 16, &r->prompt_buf, &n);
        if (rc) {
            ms_log_error("cannot read prompt file '%s': %s", r->o.prompt_file, strerror(-rc));
            return rc;
        }
        text = r->prompt_buf;
        len = n;
    }
    size_t n = 0;
    int rc = coord_encode(r->tok, text, len, ms_tokenizer_add_bos(r->tok), r->o.parse_special, &r->prompt_ids, &n);
    if (rc) {
        ms_log_error("the prompt could not be tokenized (%s); prompts are limited to %d tokens", strerror(-rc),
                     MS_PROMPT_TOKENS_MAX);
        return rc;
    }
    if (n == 0) {
        ms_log_error("the prompt is empty and the model adds no BOS token; give a non-empty prompt");
        return -EINVAL;
    }
    r->n_prompt = n;
    return 0;
}

/* The whole model, or with --hosts its dense part: a pack folder's
 * dense.gguf, or a full model whose expert tensors are left unread. */
static int load_model(run_t *r, ms_err_t *err)
{
    struct stat st;
    bool is_dir = stat(r->o.model_path, &st) == 0 && S_ISDIR(st.st_mode);
    if (!r->o.hosts) {
        if (!is_dir)
            return coord_model_open(CMD, r->o.model_path, false, r->o.mmap, &r->model, err);
        ms_err_set(err, "%s is a folder: a pack from 'moeshard pack' runs with its experts on hosts (--hosts EP,...)",
                   r->o.model_path);
        return -EINVAL;
    }
    const char *path = r->o.model_path;
    if (is_dir) {
        if (asprintf(&r->dense_path, "%s/dense.gguf", r->o.model_path) < 0) {
            r->dense_path = NULL;
            return -ENOMEM;
        }
        path = r->dense_path;
    }
    return coord_model_open(CMD, path, true, r->o.mmap, &r->model, err);
}

static int make_backend(run_t *r, int n_batch)
{
    if (!r->o.hosts) {
        int rc = ms_backend_local_new(r->model, r->pool, r->k, n_batch, &r->backend);
        if (rc)
            ms_log_error("cannot set up the expert computation: %s", strerror(-rc));
        return rc;
    }
    ms_backend_net_params_t p = ms_backend_net_defaults();
    p.wire = r->o.wire;
    if (r->o.deadline_ms)
        p.deadline_ms = (int32_t)r->o.deadline_ms;
    p.max_tokens = n_batch;
    p.pool = r->pool;
    p.curve_key = r->o.key ? &r->kp : NULL;
    p.host_keys = r->host_keys;
    ms_err_t err = { { 0 } };
    int rc = ms_backend_net_new(r->model, r->hosts, r->n_hosts, &p, &r->backend, &err);
    if (rc)
        ms_log_error("%s", err.msg);
    else
        ms_log_debug("experts on %d hosts, wire %s, deadline %d ms", r->n_hosts, ms_wire_dtype_name(p.wire),
                     p.deadline_ms);
    return rc;
}

static int setup(run_t *r)
{
    ms_err_t err = { { 0 } };
    int rc = load_model(r, &err);
    if (rc) {
        ms_log_error("%s", err.msg[0] ? err.msg : strerror(-rc));
        return rc;
    }
    rc = ms_tokenizer_new_from_gguf(r->model->gguf, &r->tok, &err);
    if (rc) {
        ms_log_error("%s: %s", r->o.model_path, err.msg);
        return rc;
    }
    rc = load_prompt(r);
    if (rc)
        return rc;
    const ms_hparams_t *hp = &r->model->hp;
    int64_t want = (int64_t)r->n_prompt + (r->o.n_predict > 0 ? r->o.n_predict : 1);
    int64_t n_ctx = r->o.n_ctx ? r->o.n_ctx : (want < hp->n_ctx_train ? want : hp->n_ctx_train);
    if ((int64_t)r->n_prompt >= n_ctx) {
        ms_log_error("the prompt has %zu tokens but the context holds %" PRId64 "; shorten the prompt or raise --ctx",
                     r->n_prompt, n_ctx);
        return -EINVAL;
    }
    r->n_ctx = (int32_t)n_ctx;
    int threads = r->o.threads ? (int)r->o.threads : ms_pool_default_threads();
    rc = ms_pool_new(threads, &r->pool);
    if (rc) {
        ms_log_error("cannot start %d threads: %s", threads, strerror(-rc));
        return rc;
    }
    r->k = ms_kernels_best();
    int n_batch = (int)(r->o.n_batch ? r->o.n_batch : RUN_BATCH_DEFAULT);
    rc = make_backend(r, n_batch);
    if (rc)
        return rc;
    ms_forward_params_t fp = { .n_ctx = r->n_ctx, .n_seq_max = 1, .n_batch_max = n_batch, .kv_type = r->o.kv_type };
    rc = ms_forward_new(r->model, &fp, r->pool, r->k, r->backend, &r->fwd, &err);
    if (rc) {
        ms_log_error("%s", err.msg);
        return rc;
    }
    r->o.n_batch = n_batch;
    r->batch = calloc((size_t)n_batch, sizeof(*r->batch));
    r->logits = malloc((size_t)n_batch * (size_t)hp->n_vocab * sizeof(float));
    if (!r->batch || !r->logits)
        return -ENOMEM;
    if (!r->o.seed_set && getrandom(&r->o.sp.seed, sizeof(r->o.sp.seed), 0) != sizeof(r->o.sp.seed))
        r->o.sp.seed = (uint64_t)time(NULL);
    r->o.sp.seed &= INT64_MAX; /* printable and accepted back by --seed */
    rc = ms_sampler_new(&r->o.sp, hp->n_vocab, &r->sampler);
    if (rc) {
        ms_log_error("invalid sampling settings");
        return rc;
    }
    if (r->o.dump_logits) {
        rc = ms_npy_open(r->o.dump_logits, hp->n_vocab, &r->npy);
        if (rc) {
            ms_log_error("cannot create '%s': %s", r->o.dump_logits, strerror(-rc));
            return rc;
        }
    }
    ms_log_debug("model %s: %s, %d layers, %d experts (top %d), kernels %s, %d threads, context %d",
                 r->o.model_path, ms_arch_name(hp->arch), hp->n_layer, hp->n_expert, hp->n_expert_used, r->k->name,
                 threads, r->n_ctx);
    return 0;
}

static int dump_rows(run_t *r, const float *rows, int n)
{
    for (int i = 0; r->npy && i < n; i++) {
        if (ms_npy_append_row(r->npy, rows + (size_t)i * (size_t)r->model->hp.n_vocab)) {
            ms_log_error("writing '%s' failed", r->o.dump_logits);
            return -EIO;
        }
    }
    return 0;
}

/* Runs the prompt through the model in batches; leaves the last token's logits in r->logits. */
static int prefill(run_t *r)
{
    ms_err_t err = { { 0 } };
    int32_t vocab = r->model->hp.n_vocab;
    for (size_t done = 0; done < r->n_prompt;) {
        int n = (int)((r->n_prompt - done) < (size_t)r->o.n_batch ? (r->n_prompt - done) : (size_t)r->o.n_batch);
        for (int i = 0; i < n; i++) {
            size_t pos = done + (size_t)i;
            bool last = pos == r->n_prompt - 1;
            r->batch[i] = (ms_batch_tok_t){ .token = r->prompt_ids[pos], .seq = 0, .pos = (int32_t)pos,
                                            .logits = last || r->npy };
        }
        int rc = ms_forward_step(r->fwd, r->batch, n, r->logits, &err);
        if (rc) {
            ms_log_error("prefill failed: %s", err.msg);
            return rc;
        }
        rc = dump_rows(r, r->logits, r->npy ? n : 0);
        if (rc)
            return rc;
        done += (size_t)n;
    }
    if (r->npy) /* the last prompt token's row is the last one written */
        memmove(r->logits, r->logits + (size_t)((r->n_prompt - 1) % (size_t)r->o.n_batch) * (size_t)vocab,
                (size_t)vocab * sizeof(float));
    for (size_t i = 0; i < r->n_prompt; i++)
        ms_sampler_accept(r->sampler, r->prompt_ids[i]);
    return 0;
}

static void emit(ms_utf8_stream_t *us, const char *piece, size_t len)
{
    char out[3 * MS_TOKEN_BYTES_MAX + 8];
    size_t n = ms_utf8_stream_push(us, piece, len > MS_TOKEN_BYTES_MAX ? MS_TOKEN_BYTES_MAX : len, out);
    if (n) {
        fwrite(out, 1, n, stdout);
        fflush(stdout);
    }
}

/* Samples, prints, feeds back; returns tokens generated and decode steps run. */
static int decode(run_t *r, int *ret_gen, int *ret_steps)
{
    ms_err_t err = { { 0 } };
    ms_utf8_stream_t us;
    ms_utf8_stream_init(&us);
    int gen = 0, steps = 0, rc = 0;
    int32_t pos = (int32_t)r->n_prompt;
    while (gen < r->o.n_predict) {
        int32_t tok = ms_sampler_sample(r->sampler, r->logits);
        ms_sampler_accept(r->sampler, tok);
        if (ms_tokenizer_is_eog(r->tok, tok))
            break;
        gen++;
        size_t len;
        const char *piece = ms_tokenizer_piece(r->tok, tok, &len);
        emit(&us, piece, len);
        if (gen == r->o.n_predict)
            break;
        if (pos >= r->n_ctx) {
            ms_log_warn("context of %d tokens is full; stopping (raise --ctx for longer output)", r->n_ctx);
            break;
        }
        ms_batch_tok_t b = { .token = tok, .seq = 0, .pos = pos++, .logits = true };
        rc = ms_forward_step(r->fwd, &b, 1, r->logits, &err);
        if (rc) {
            ms_log_error("decode failed at position %d: %s", b.pos, err.msg);
            break;
        }
        steps++;
        rc = dump_rows(r, r->logits, 1);
        if (rc)
            break;
    }
    char tail[16];
    size_t n = ms_utf8_stream_finish(&us, tail);
    fwrite(tail, 1, n, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    *ret_gen = gen;
    *ret_steps = steps;
    return rc;
}

/* Counters of the network backend at one moment; the summary reports the
 * differences over decode, where every dispatch carries exactly one token. */
typedef struct {
    ms_backend_net_stats_t st;
    uint64_t replies;      /* over all hosts */
    double rtt_ms_sum;     /* send-to-reply times of those replies */
} net_snap_t;

/* Zeros in embedded mode. */
static void net_snap(const run_t *r, net_snap_t *ret)
{
    *ret = (net_snap_t){ 0 };
    if (!r->o.hosts || ms_backend_net_stats(r->backend, &ret->st)) {
        ret->st = (ms_backend_net_stats_t){ 0 };
        return;
    }
    for (int h = 0; h < r->n_hosts; h++) {
        ms_backend_net_host_stats_t hs;
        if (ms_backend_net_host_stats(r->backend, h, &hs))
            continue;
        ret->replies += hs.replies;
        ret->rtt_ms_sum += hs.rtt_ms_mean * (double)hs.replies;
    }
}

static double ratio(double num, double den)
{
    return den > 0 ? num / den : 0.0;
}

/* The network part of the summary line. A decode dispatch is one layer of
 * one token, so per dispatch is per token per layer; hosts touched is the
 * batches sent per dispatch; rtt is a host's mean send-to-reply time. */
static void format_net(const run_t *r, const net_snap_t *a, const net_snap_t *b, int steps, char *out, size_t cap)
{
    double sent = (double)(b->st.bytes_sent - a->st.bytes_sent);
    double recv = (double)(b->st.bytes_received - a->st.bytes_received);
    double disp = (double)(b->st.dispatches - a->st.dispatches);
    snprintf(out, cap,
             ", experts on %d hosts (wire %s): network %.1f kB/decode step"
             "; per token and layer: sent %.0f B, received %.0f B, %.2f hosts, rtt %.3f ms",
             r->n_hosts, ms_wire_dtype_name(r->o.wire), ratio(sent + recv, steps) / 1e3, ratio(sent, disp),
             ratio(recv, disp), ratio((double)(b->st.messages_sent - a->st.messages_sent), disp),
             ratio(b->rtt_ms_sum - a->rtt_ms_sum, (double)(b->replies - a->replies)));
}

/* Plaintext only to loopback hosts; key files read before the model. -EINVAL (usage), -errno. */
static int run_security(run_t *r)
{
    ms_err_t err = { { 0 } };
    int rc = 0;
    if (r->o.plaintext && ms_curve_plaintext_check(r->hosts, r->n_hosts, &err)) {
        fprintf(stderr, "moeshard run: %s\n", err.msg);
        return -EINVAL;
    }
    if (r->o.key) {
        rc = ms_curve_keypair_load(r->o.key, &r->kp, &err);
        rc = rc ? rc : ms_curve_hostkeys_load(r->o.host_keys, &r->host_keys, &err);
    }
    if (rc)
        ms_log_error("%s", err.msg);
    return rc == -EINVAL ? -EIO : rc; /* a bad file is not a usage error */
}

int coord_cmd_run(int argc, char **argv)
{
    run_t r = { .o = { .n_predict = 128, .parse_special = true, .sp = ms_sampler_defaults(),
                       .kv_type = COORD_KV_TYPE_DEFAULT } };
    int status = parse_opts(argc, argv, &r.o);
    if (status >= 0)
        return status;
    int rc = r.o.hosts ? split_hosts(r.o.hosts, &r.hosts_buf, &r.hosts, &r.n_hosts) : 0;
    rc = rc ? rc : run_security(&r);
    if (rc) {
        run_release(&r);
        return rc == -EINVAL ? COORD_EXIT_USAGE : COORD_EXIT_FAIL;
    }
    rc = setup(&r);
    double t0 = now_s(), t1 = t0, t2 = t0;
    int gen = 0, steps = 0;
    net_snap_t snap0 = { 0 }, snap1 = { 0 };
    if (!rc) {
        rc = prefill(&r);
        t1 = now_s();
        net_snap(&r, &snap0);
    }
    if (!rc) {
        rc = decode(&r, &gen, &steps);
        t2 = now_s();
        net_snap(&r, &snap1);
    }
    const ms_backend_net_stats_t net1 = snap1.st;
    if (!rc && r.npy && ms_npy_close(&r.npy)) {
        ms_log_error("writing '%s' failed", r.o.dump_logits);
        rc = -EIO;
    }
    if (!rc) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double pf = t1 > t0 ? (double)r.n_prompt / (t1 - t0) : 0, dc = t2 > t1 && steps ? steps / (t2 - t1) : 0;
        char net[320] = "";
        if (r.o.hosts)
            format_net(&r, &snap0, &snap1, steps, net, sizeof(net));
        fprintf(stderr,
                "moeshard: prefill %.1f tok/s (%zu tokens, %.3f s), decode %.1f tok/s (%d steps, %.3f s), "
                "generated %d tokens, weights/token %.1f MB, peak-rss %.1f MB, kv-cache %.2f MB %s, "
                "kernels %s, threads %d, seed %" PRIu64 "%s\n",
                pf, r.n_prompt, t1 - t0, dc, steps, t2 - t1, gen,
                (double)(r.model->bytes_per_token + net1.expert_bytes_per_token) / 1e6,
                (double)ru.ru_maxrss * 1024.0 / 1e6, (double)ms_forward_kv_bytes(r.fwd) / 1e6,
                r.o.kv_type == MS_TYPE_F16 ? "f16" : "f32", r.k->name,
                ms_pool_size(r.pool), r.o.sp.seed, net);
        if (r.o.hosts)
            ms_log_debug("network: %" PRIu64 " dispatches, %" PRIu64 " batches sent, %" PRIu64 " frames sent by copy,"
                         " %" PRIu64 " stale replies dropped, %.1f kB sent, %.1f kB received", net1.dispatches,
                         net1.messages_sent, net1.frames_copied, net1.stale_dropped, (double)net1.bytes_sent / 1e3,
                         (double)net1.bytes_received / 1e3);
    }
    run_release(&r);
    return rc ? COORD_EXIT_FAIL : COORD_EXIT_OK;
}
