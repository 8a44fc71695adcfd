/* The OpenAI-compatible HTTP API. libmicrohttpd runs a thread per
 * connection; a generation request's thread waits on its own eventfd (which
 * the scheduler's callback signals) and on the client's socket, so a client
 * that hangs up cancels its request at once and no thread ever spins. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "limits.h"
#include "log.h"

#define HTTP_WAIT_MS 1000              /* a waiting request re-checks its state at least this often */
#define HTTP_COMPLETION_TOKENS_DEFAULT 16 /* max_tokens of /v1/completions when absent, as OpenAI */
#define HTTP_STREAM_BLOCK_BYTES 4096
#define HTTP_TEMP_MAX 2.0              /* OpenAI's range; the sampler would take more */
#define HTTP_REPEAT_PENALTY_MAX 100.0
#define HTTP_METRICS_BYTES 8192        /* the scheduler's and the server's own lines */
#define HTTP_PARAM_BYTES 64
#define HTTP_BODY_DISCARD_FACTOR 16    /* an oversized body is read (and dropped) up to this many times the limit */
#define HTTP_STOP_GRACE_MS 3000        /* how long stopping waits for the answers to requests in flight */

/* Statuses counted for /metrics; anything else counts as "other". */
static const unsigned http_codes[] = { 200, 400, 401, 404, 405, 413, 429, 500, 503 };
#define HTTP_N_CODES (sizeof(http_codes) / sizeof(http_codes[0]))

typedef enum { EP_COMPLETIONS, EP_CHAT, EP_MODELS, EP_MODEL, EP_HEALTH, EP_METRICS, EP_COUNT } http_ep_t;

static const struct {
    const char *path; /* EP_MODEL: a prefix */
    const char *method;
    bool auth;
} http_eps[EP_COUNT] = {
    [EP_COMPLETIONS] = { "/v1/completions", "POST", true },
    [EP_CHAT] = { "/v1/chat/completions", "POST", true },
    [EP_MODELS] = { "/v1/models", "GET", true },
    [EP_MODEL] = { "/v1/models/", "GET", true },
    [EP_HEALTH] = { "/health", "GET", false },
    [EP_METRICS] = { "/metrics", "GET", true },
};

struct coord_http {
    struct MHD_Daemon *d;
    ms_sched_t *sched;
    const ms_model_t *m;
    const ms_tokenizer_t *tok;
    char model_name[COORD_HTTP_MODEL_NAME_BYTES_MAX + 1];
    char *api_key;          /* NULL: no authentication */
    char *tls_cert, *tls_key; /* PEM copies, alive as long as the daemon; NULL: plain HTTP */
    size_t body_bytes_max;
    uint32_t requests_max;
    int32_t n_ctx;
    ms_ratelimit_t *rate;   /* borrowed; NULL: no per-client limit */
    int rate_per_min;
    ms_chat_family_t family;
    char *bos_text;         /* what the template writes for bos_token; NULL when the tokenizer adds BOS */
    int stop_fd;            /* eventfd, readable from the moment the server stops */
    uint16_t port;
    int64_t created;
    uint64_t id_salt;
    atomic_bool stopping;
    atomic_uint in_flight;  /* generation requests holding a slot */
    atomic_uint_fast64_t next_id;
    atomic_uint_fast64_t n_status[HTTP_N_CODES + 1];
    pthread_mutex_t busy_mu;  /* requests between their first call and their completion */
    pthread_cond_t busy_cv;
    uint32_t busy;
    pthread_mutex_t stats_mu; /* the stats hook */
    coord_http_stats_fn stats_fn;
    void *stats_ctx;
};

/* One HTTP request while its body arrives (MHD's per-request pointer). */
typedef struct {
    http_ep_t ep;
    int route;          /* 0, -ENOENT (no such path) or -EPERM (another method) */
    char *body;
    size_t len, cap;
    bool too_big;
    uint64_t seen;      /* body bytes received, kept or not */
} http_req_t;

/* A request refused: status, OpenAI error body and an optional header. */
typedef struct {
    unsigned status;
    const char *type;
    const char *code;
    char param[HTTP_PARAM_BYTES]; /* "" -> null */
    char msg[MS_ERR_MSG_BYTES];
    const char *hdr, *hdr_value;
} http_fail_t;

/* A parsed generation request. */
typedef struct {
    bool chat, stream, include_usage, n_predict_set;
    char *prompt; /* the prompt text, or the conversation rendered by the chat template */
    size_t prompt_len;
    ms_gen_params_t gp;
    int n_stops;
    char stops[COORD_HTTP_STOPS_MAX][COORD_HTTP_STOP_BYTES_MAX + 1];
    size_t stop_len[COORD_HTTP_STOPS_MAX];
} http_job_t;

/* A generation in flight, shared by the HTTP thread and the scheduler's
 * callback; each holds a reference and the last one frees it. */
typedef struct {
    pthread_mutex_t mu;
    int efd;                /* signalled on every change */
    int refs;
    ms_sched_t *sched;
    uint64_t id;
    char *text;             /* generated text, trimmed at a stop sequence */
    size_t len, cap;
    size_t safe;            /* text[0..safe) can be sent: no stop sequence can begin before it */
    int32_t n_tokens, n_prompt;
    bool done, failed, stop_hit;
    const char *reason;     /* when done: "stop", "length" or "cancelled" */
    char message[MS_ERR_MSG_BYTES];
    int n_stops;
    char stops[COORD_HTTP_STOPS_MAX][COORD_HTTP_STOP_BYTES_MAX + 1];
    size_t stop_len[COORD_HTTP_STOPS_MAX];
} http_gen_t;

/* A server-sent event stream being written. */
typedef struct {
    coord_http_t *h;
    http_gen_t *g;
    bool chat, include_usage;
    int client_fd;
    char id[48];
    int64_t created;
    size_t sent;            /* bytes of g->text already sent */
    bool began, ended;
    char *out;              /* formatted events not yet handed to MHD */
    size_t out_len, out_off, out_cap;
} http_stream_t;

/* ------------------------------------------------------------------ errors */

static int fail(http_fail_t *f, unsigned status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(http_fail_t *f, unsigned status, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
    va_end(ap);
    f->status = status;
    f->type = status >= 500 ? "server_error" : status == 429 ? "rate_limit_error" : "invalid_request_error";
    snprintf(f->param, sizeof(f->param), "%s", param ? param : "");
    return -EINVAL;
}

/* -------------------------------------------------------------- replies */

static void count_status(coord_http_t *h, unsigned status)
{
    size_t i = 0;
    while (i < HTTP_N_CODES && http_codes[i] != status)
        i++;
    atomic_fetch_add(&h->n_status[i], 1);
}

/* Queues body[0..len) (malloc'd; always consumed) with the given status. */
static enum MHD_Result reply_buf(coord_http_t *h, struct MHD_Connection *c, unsigned status, const char *ctype,
                                 char *body, size_t len, const char *hdr, const char *hdr_value)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (hdr)
        MHD_add_response_header(r, hdr, hdr_value);
    enum MHD_Result res = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    count_status(h, status);
    return res;
}

/* Serialises and frees obj. */
static enum MHD_Result reply_json(coord_http_t *h, struct MHD_Connection *c, unsigned status, json_t *obj,
                                  const char *hdr, const char *hdr_value)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                                  "\"param\":null,\"code\":null}}";
        char *b = strdup(oom);
        return b ? reply_buf(h, c, 500, "application/json", b, strlen(b), NULL, NULL) : MHD_NO;
    }
    size_t n = strlen(s);
    char *b = realloc(s, n + 2); /* a newline ends the body, for people reading it with curl */
    if (b) {
        b[n++] = '\n';
        b[n] = '\0';
        s = b;
    }
    return reply_buf(h, c, status, "application/json", s, n, hdr, hdr_value);
}

static json_t *error_json(const http_fail_t *f)
{
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", f->msg, "type", f->type, "param",
                     f->param[0] ? json_string(f->param) : json_null(), "code",
                     f->code ? json_string(f->code) : json_null());
}

static enum MHD_Result reply_fail(coord_http_t *h, struct MHD_Connection *c, const http_fail_t *f)
{
    if (f->status >= 500)
        ms_log_warn("http: %u: %s", f->status, f->msg);
    else
        ms_log_debug("http: %u: %s", f->status, f->msg);
    return reply_json(h, c, f->status, error_json(f), f->hdr, f->hdr_value);
}

static enum MHD_Result reply_error(coord_http_t *h, struct MHD_Connection *c, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static enum MHD_Result reply_error(coord_http_t *h, struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
    http_fail_t f = { 0 };
    fail(&f, status, NULL, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f.msg, sizeof(f.msg), fmt, ap);
    va_end(ap);
    if (status == 429 || status == 503) {
        f.hdr = MHD_HTTP_HEADER_RETRY_AFTER;
        f.hdr_value = "1";
    }
    return reply_fail(h, c, &f);
}

/* ----------------------------------------------------- JSON field readers */

/* o[key] when present and not null. */
static json_t *field(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

/* A number in [lo, hi] (lo excluded when lo_open); absent leaves *ret. */
static int get_real(const json_t *o, const char *key, double lo, double hi, bool lo_open, double *ret,
                    http_fail_t *f)
{
    json_t *v = field(o, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return fail(f, 400, key, "'%s' must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
        return fail(f, 400, key, "'%s' must be in %s%g, %g], got %g", key, lo_open ? "(" : "[", lo, hi, x);
    *ret = x;
    return 0;
}

/* A whole number in [lo, hi]; absent leaves *ret and *ret_set. */
static int get_int(const json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *ret, bool *ret_set,
                   http_fail_t *f)
{
    json_t *v = field(o, key);
    if (!v)
        return 0;
    double r = json_is_real(v) ? json_real_value(v) : 0;
    if (!json_is_integer(v) && !(json_is_real(v) && r == floor(r) && fabs(r) <= 9007199254740992.0))
        return fail(f, 400, key, "'%s' must be an integer", key);
    int64_t x = json_is_integer(v) ? (int64_t)json_integer_value(v) : (int64_t)r;
    if (x < lo || x > hi)
        return fail(f, 400, key, "'%s' must be in [%" PRId64 ", %" PRId64 "], got %" PRId64, key, lo, hi, x);
    *ret = x;
    if (ret_set)
        *ret_set = true;
    return 0;
}

static int get_bool(const json_t *o, const char *key, bool *ret, http_fail_t *f)
{
    json_t *v = field(o, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return fail(f, 400, key, "'%s' must be true or false", key);
    *ret = json_is_true(v);
    return 0;
}

/* OpenAI fields this server does not implement: accepted only with the
 * value that means "off", so no request silently gets other semantics. */
static int check_unsupported(const json_t *root, http_fail_t *f)
{
    static const struct {
        const char *key;
        double one; /* the accepted number; NAN: only false, 0, "" or an empty array/object */
    } keys[] = {
        { "n", 1 }, { "best_of", 1 }, { "presence_penalty", 0 }, { "frequency_penalty", 0 },
        { "echo", NAN }, { "logprobs", NAN }, { "top_logprobs", NAN }, { "logit_bias", NAN },
        { "suffix", NAN }, { "tools", NAN }, { "functions", NAN },
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_t *v = field(root, keys[i].key);
        bool ok = !v || (json_is_number(v) && json_number_value(v) == (isnan(keys[i].one) ? 0 : keys[i].one)) ||
                  (isnan(keys[i].one) && (json_is_false(v) || (json_is_string(v) && !json_string_length(v)) ||
                                          (json_is_array(v) && !json_array_size(v)) ||
                                          (json_is_object(v) && !json_object_size(v))));
        if (!ok)
            return fail(f, 400, keys[i].key, "'%s' is not supported by this server", keys[i].key);
    }
    return 0;
}

/* ------------------------------------------------------ request parsing */

static int add_stop(http_job_t *j, const json_t *v, size_t i, http_fail_t *f)
{
    size_t n = json_string_length(v);
    if (n == 0)
        return fail(f, 400, "stop", "stop sequence %zu is empty", i);
    if (n > COORD_HTTP_STOP_BYTES_MAX)
        return fail(f, 400, "stop", "stop sequence %zu has %zu bytes (at most %d)", i, n, COORD_HTTP_STOP_BYTES_MAX);
    memcpy(j->stops[j->n_stops], json_string_value(v), n);
    j->stops[j->n_stops][n] = '\0';
    j->stop_len[j->n_stops++] = n;
    return 0;
}

/* "stop": a string or an array of at most COORD_HTTP_STOPS_MAX strings. */
static int parse_stop(const json_t *root, http_job_t *j, http_fail_t *f)
{
    json_t *v = field(root, "stop");
    if (!v)
        return 0;
    if (json_is_string(v))
        return add_stop(j, v, 0, f);
    if (!json_is_array(v))
        return fail(f, 400, "stop", "'stop' must be a string or an array of strings");
    if (json_array_size(v) > COORD_HTTP_STOPS_MAX)
        return fail(f, 400, "stop", "'stop' holds %zu sequences (at most %d)", json_array_size(v),
                    COORD_HTTP_STOPS_MAX);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s))
            return fail(f, 400, "stop", "stop[%zu] must be a string", i);
        if (add_stop(j, s, i, f))
            return -EINVAL;
    }
    return 0;
}

static int parse_stream(const json_t *root, http_job_t *j, http_fail_t *f)
{
    if (get_bool(root, "stream", &j->stream, f))
        return -EINVAL;
    json_t *so = field(root, "stream_options");
    if (!so)
        return 0;
    if (!json_is_object(so))
        return fail(f, 400, "stream_options", "'stream_options' must be an object");
    if (!j->stream)
        return fail(f, 400, "stream_options", "'stream_options' is allowed only with \"stream\": true");
    return get_bool(so, "include_usage", &j->include_usage, f);
}

/* Sampling and length settings shared by both endpoints. */
static int parse_sampling(const coord_http_t *h, const json_t *root, http_job_t *j, http_fail_t *f)
{
    double temp = 1.0, top_p = 1.0, min_p = 0.0, rep = 1.0;
    int64_t top_k = 0, n_predict = 0, seed = -1, rep_n = j->gp.sp.repeat_last_n;
    const char *max_key = j->chat && field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    json_t *model = field(root, "model");
    if (model && !json_is_string(model))
        return fail(f, 400, "model", "'model' must be a string");
    int rc = get_int(root, max_key, 1, h->n_ctx, &n_predict, &j->n_predict_set, f);
    rc = rc ? rc : get_real(root, "temperature", 0, HTTP_TEMP_MAX, false, &temp, f);
    rc = rc ? rc : get_real(root, "top_p", 0, 1, true, &top_p, f);
    rc = rc ? rc : get_int(root, "top_k", 0, ms_tokenizer_n_vocab(h->tok), &top_k, NULL, f);
    rc = rc ? rc : get_real(root, "min_p", 0, 1, false, &min_p, f);
    rc = rc ? rc : (min_p >= 1 ? fail(f, 400, "min_p", "'min_p' must be below 1") : 0);
    rc = rc ? rc : get_real(root, "repeat_penalty", 0, HTTP_REPEAT_PENALTY_MAX, true, &rep, f);
    rc = rc ? rc : get_int(root, "repeat_last_n", 0, h->n_ctx, &rep_n, NULL, f);
    rc = rc ? rc : get_int(root, "seed", 0, INT64_MAX, &seed, NULL, f);
    if (rc)
        return rc;
    if (seed < 0 && getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
        seed = (int64_t)time(NULL);
    j->gp.n_predict = (int32_t)n_predict;
    j->gp.sp = (ms_sampler_params_t){ .temp = (float)temp, .top_k = (int32_t)top_k, .top_p = (float)top_p,
                                      .min_p = (float)min_p, .repeat_penalty = (float)rep,
                                      .repeat_last_n = (int32_t)rep_n, .seed = (uint64_t)seed & INT64_MAX };
    return 0;
}

/* /v1/completions: "prompt" is a string (or an array holding one string). */
static int parse_prompt(const json_t *root, http_job_t *j, http_fail_t *f)
{
    json_t *v = json_object_get(root, "prompt");
    if (json_is_array(v) && json_array_size(v) == 1)
        v = json_array_get(v, 0);
    if (!v)
        return fail(f, 400, "prompt", "'prompt' is required");
    if (!json_is_string(v))
        return fail(f, 400, "prompt", "'prompt' must be a string (or an array holding one string)");
    j->prompt_len = json_string_length(v);
    j->prompt = malloc(j->prompt_len + 1);
    if (!j->prompt)
        return fail(f, 500, NULL, "out of memory");
    memcpy(j->prompt, json_string_value(v), j->prompt_len + 1);
    return 0;
}

/* A message's content: a string, or an array of {"type": "text", "text": ...}
 * parts joined (into *owned, which the caller frees). */
static int parse_content(const json_t *v, size_t i, const char **ret, char **owned, http_fail_t *f)
{
    char param[HTTP_PARAM_BYTES];
    snprintf(param, sizeof(param), "messages[%zu].content", i);
    if (json_is_string(v)) {
        *ret = json_string_value(v);
        return 0;
    }
    if (!json_is_array(v))
        return fail(f, 400, param, "%s must be a string or an array of text parts", param);
    size_t total = 1;
    for (size_t k = 0; k < json_array_size(v); k++) {
        json_t *p = json_array_get(v, k), *t = json_object_get(p, "text");
        if (!json_is_object(p) || !json_is_string(json_object_get(p, "type")) ||
            strcmp(json_string_value(json_object_get(p, "type")), "text") || !json_is_string(t))
            return fail(f, 400, param, "%s[%zu] must be {\"type\": \"text\", \"text\": STRING} (only text is supported)",
                        param, k);
        total += json_string_length(t);
    }
    char *s = malloc(total), *at = s;
    if (!s)
        return fail(f, 500, NULL, "out of memory");
    for (size_t k = 0; k < json_array_size(v); k++) {
        json_t *t = json_object_get(json_array_get(v, k), "text");
        memcpy(at, json_string_value(t), json_string_length(t));
        at += json_string_length(t);
    }
    *at = '\0';
    *owned = s;
    *ret = s;
    return 0;
}

static int parse_message(const json_t *v, size_t i, ms_chat_msg_t *ret, char **owned, http_fail_t *f)
{
    char param[HTTP_PARAM_BYTES];
    snprintf(param, sizeof(param), "messages[%zu]", i);
    if (!json_is_object(v))
        return fail(f, 400, param, "%s must be an object with role and content", param);
    json_t *role = json_object_get(v, "role");
    snprintf(param, sizeof(param), "messages[%zu].role", i);
    if (!json_is_string(role))
        return fail(f, 400, param, "%s must be a string", param);
    const char *r = json_string_value(role);
    if (!strcmp(r, "developer")) /* OpenAI's newer name for the system message */
        r = "system";
    if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
        return fail(f, 400, param, "%s '%.64s' is not supported (system, user or assistant)", param, r);
    ret->role = r;
    json_t *content = json_object_get(v, "content");
    if (!content) {
        snprintf(param, sizeof(param), "messages[%zu].content", i);
        return fail(f, 400, param, "%s is required", param);
    }
    return parse_content(content, i, &ret->content, owned, f);
}

static int render_chat(const coord_http_t *h, const ms_chat_msg_t *msgs, size_t n, http_job_t *j, http_fail_t *f)
{
    ms_err_t err = { { 0 } };
    int rc = ms_chat_render(h->family, msgs, n, h->bos_text, &j->prompt, &err);
    if (rc == -ENOMEM)
        return fail(f, 500, NULL, "out of memory");
    if (rc)
        return fail(f, 400, "messages", "%s", err.msg);
    j->prompt_len = strlen(j->prompt);
    return 0;
}

/* /v1/chat/completions: "messages" rendered with the model's chat template. */
static int parse_messages(const coord_http_t *h, const json_t *root, http_job_t *j, http_fail_t *f)
{
    json_t *arr = json_object_get(root, "messages");
    if (!json_is_array(arr))
        return fail(f, 400, "messages", "'messages' must be an array of {\"role\", \"content\"} objects");
    size_t n = json_array_size(arr);
    if (n == 0)
        return fail(f, 400, "messages", "'messages' is empty");
    if (n > COORD_HTTP_MESSAGES_MAX)
        return fail(f, 400, "messages", "'messages' holds %zu messages (at most %d)", n, COORD_HTTP_MESSAGES_MAX);
    ms_chat_msg_t *msgs = calloc(n, sizeof(*msgs));
    char **owned = calloc(n, sizeof(*owned));
    int rc = msgs && owned ? 0 : fail(f, 500, NULL, "out of memory");
    for (size_t i = 0; i < n && !rc; i++)
        rc = parse_message(json_array_get(arr, i), i, &msgs[i], &owned[i], f);
    rc = rc ? rc : render_chat(h, msgs, n, j, f);
    for (size_t i = 0; owned && i < n; i++)
        free(owned[i]);
    free(owned);
    free(msgs);
    return rc;
}

/* Without max_tokens a completion writes OpenAI's 16 tokens and a chat
 * reply may fill the rest of the context. */
static int default_length(const coord_http_t *h, http_job_t *j, http_fail_t *f)
{
    if (j->n_predict_set)
        return 0;
    if (!j->chat) {
        j->gp.n_predict = HTTP_COMPLETION_TOKENS_DEFAULT < h->n_ctx ? HTTP_COMPLETION_TOKENS_DEFAULT : h->n_ctx;
        return 0;
    }
    size_t n = 0;
    int rc = ms_tokenizer_encode(h->tok, j->prompt, j->prompt_len, j->gp.add_bos, j->gp.parse_special, NULL, 0, &n);
    if (rc && rc != -ENOSPC)
        return fail(f, 400, "messages", "the conversation cannot be tokenized (%s)", strerror(-rc));
    if (n >= (size_t)h->n_ctx)
        return fail(f, 400, "messages", "the conversation takes %zu tokens; the context holds %d", n, h->n_ctx);
    j->gp.n_predict = h->n_ctx - (int32_t)n;
    return 0;
}

static int parse_job(const coord_http_t *h, const http_req_t *r, http_job_t *j, http_fail_t *f)
{
    json_error_t jerr;
    json_t *root = json_loadb(r->body ? r->body : "", r->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(f, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                    jerr.column);
    int rc = json_is_object(root) ? 0 : fail(f, 400, NULL, "the body must be a JSON object");
    rc = rc ? rc : check_unsupported(root, f);
    rc = rc ? rc : parse_sampling(h, root, j, f);
    rc = rc ? rc : parse_stop(root, j, f);
    rc = rc ? rc : parse_stream(root, j, f);
    rc = rc ? rc : j->chat ? parse_messages(h, root, j, f) : parse_prompt(root, j, f);
    rc = rc ? rc : default_length(h, j, f);
    json_decref(root);
    return rc;
}

int coord_http_parse_body(const ms_tokenizer_t *tok, ms_chat_family_t family, int32_t n_ctx, bool chat,
                          const char *body, size_t len, ms_gen_params_t *ret_gp, char **ret_prompt, ms_err_t *err)
{
    /* the fields parse_job reads; the rest of a server is not needed */
    coord_http_t h = { .tok = tok, .n_ctx = n_ctx, .family = family };
    http_req_t r = { .ep = chat ? EP_CHAT : EP_COMPLETIONS, .body = (char *)body, .len = len };
    http_fail_t f = { 0 };
    http_job_t j = { .chat = chat };
    j.gp = (ms_gen_params_t){ .parse_special = true, .add_bos = true, .sp = ms_sampler_defaults() };
    if (parse_job(&h, &r, &j, &f)) {
        free(j.prompt);
        ms_err_set(err, "%s", f.msg);
        return f.status >= 500 ? -ENOMEM : -EINVAL;
    }
    *ret_gp = j.gp;
    *ret_prompt = j.prompt;
    return 0;
}

/* --------------------------------------------------------- generations */

static void gen_notify(http_gen_t *g)
{
    uint64_t one = 1;
    ssize_t n = write(g->efd, &one, sizeof(one));
    (void)n; /* the counter cannot overflow: the reader drains it */
}

static void gen_unref(http_gen_t *g)
{
    pthread_mutex_lock(&g->mu);
    int refs = --g->refs;
    pthread_mutex_unlock(&g->mu);
    if (refs)
        return;
    close(g->efd);
    pthread_mutex_destroy(&g->mu);
    free(g->text);
    free(g);
}

/* After the text grew from old_len: trims it at the earliest stop sequence
 * (true), or moves safe to the end minus the longest tail that could still
 * begin one. A match or tail never starts before the old safe point, so
 * text already sent is never taken back. */
static bool gen_scan_stops(http_gen_t *g, size_t old_len)
{
    size_t best = SIZE_MAX, hold = 0;
    for (int i = 0; i < g->n_stops; i++) {
        size_t sl = g->stop_len[i], from = old_len >= sl - 1 ? old_len - (sl - 1) : 0;
        const char *p = g->len - from >= sl ? memmem(g->text + from, g->len - from, g->stops[i], sl) : NULL;
        if (p && (size_t)(p - g->text) < best)
            best = (size_t)(p - g->text);
    }
    if (best != SIZE_MAX) {
        g->len = g->safe = best;
        return true;
    }
    for (int i = 0; i < g->n_stops; i++)
        for (size_t k = g->stop_len[i] - 1 < g->len ? g->stop_len[i] - 1 : g->len; k > hold; k--)
            if (!memcmp(g->text + g->len - k, g->stops[i], k)) {
                hold = k;
                break;
            }
    g->safe = g->len - hold;
    return false;
}

/* Under g->mu. Returns true when the request must be cancelled. */
static bool gen_on_token(http_gen_t *g, const ms_gen_event_t *ev)
{
    if (g->stop_hit || g->failed)
        return false;
    if (ev->token >= 0)
        g->n_tokens++;
    if (g->len + ev->len + 1 > g->cap) {
        size_t cap = g->cap ? g->cap : 256;
        while (cap < g->len + ev->len + 1)
            cap *= 2;
        char *t = realloc(g->text, cap);
        if (!t) {
            g->failed = true;
            snprintf(g->message, sizeof(g->message), "out of memory for the generated text");
            return true;
        }
        g->text = t;
        g->cap = cap;
    }
    size_t old = g->len;
    if (ev->len)
        memcpy(g->text + g->len, ev->text, ev->len);
    g->len += ev->len;
    g->stop_hit = gen_scan_stops(g, old);
    return g->stop_hit;
}

static void gen_on_done(http_gen_t *g, const ms_gen_event_t *ev)
{
    const char *r = ev->reason ? ev->reason : "";
    g->reason = g->stop_hit || !strcmp(r, "stop") ? "stop" : !strcmp(r, "length") ? "length" : "cancelled";
    g->n_prompt = ev->stats ? ev->stats->n_prompt : 0;
    g->safe = g->len;
    g->done = true;
}

/* The scheduler's callback (its thread). */
static void gen_on_event(void *ctx, const ms_gen_event_t *ev)
{
    http_gen_t *g = ctx;
    bool final = ev->kind != MS_GEN_TOKEN, cancel = false;
    pthread_mutex_lock(&g->mu);
    if (ev->kind == MS_GEN_TOKEN) {
        cancel = gen_on_token(g, ev);
    } else if (ev->kind == MS_GEN_DONE) {
        gen_on_done(g, ev);
    } else {
        g->failed = true;
        g->done = true;
        snprintf(g->message, sizeof(g->message), "%s", ev->message ? ev->message : "generation failed");
    }
    pthread_mutex_unlock(&g->mu);
    if (cancel)
        ms_sched_cancel(g->sched, ev->id);
    gen_notify(g);
    if (final)
        gen_unref(g);
}

static http_gen_t *gen_new(coord_http_t *h, const http_job_t *j)
{
    http_gen_t *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g->efd < 0) {
        free(g);
        return NULL;
    }
    pthread_mutex_init(&g->mu, NULL);
    g->refs = 2; /* this thread and the scheduler's callback */
    g->sched = h->sched;
    g->n_stops = j->n_stops;
    memcpy(g->stops, j->stops, sizeof(g->stops));
    memcpy(g->stop_len, j->stop_len, sizeof(g->stop_len));
    return g;
}

static bool slot_take(coord_http_t *h)
{
    if (atomic_fetch_add(&h->in_flight, 1) < h->requests_max)
        return true;
    atomic_fetch_sub(&h->in_flight, 1);
    return false;
}

/* Submits the job; on success *ret_gen holds one reference for the caller. */
static int gen_submit(coord_http_t *h, const http_job_t *j, http_gen_t **ret_gen, http_fail_t *f)
{
    http_gen_t *g = gen_new(h, j);
    if (!g)
        return fail(f, 500, NULL, "out of memory");
    ms_err_t err = { { 0 } };
    uint64_t id = 0;
    int rc = ms_sched_submit(h->sched, j->prompt, j->prompt_len, &j->gp, gen_on_event, g, &id, &err);
    if (rc) {
        g->refs = 1; /* the callback will never run */
        gen_unref(g);
        if (rc == -EBUSY) {
            fail(f, 503, NULL, "the server is busy: %s", err.msg[0] ? err.msg : "the queue is full");
            f->hdr = MHD_HTTP_HEADER_RETRY_AFTER;
            f->hdr_value = "1";
            return rc;
        }
        if (rc == -E2BIG)
            return fail(f, 400, j->n_predict_set ? "max_tokens" : j->chat ? "messages" : "prompt", "%s", err.msg);
        return fail(f, rc == -EINVAL ? 400 : 500, NULL, "%s", err.msg[0] ? err.msg : strerror(-rc));
    }
    pthread_mutex_lock(&g->mu);
    g->id = id;
    pthread_mutex_unlock(&g->mu);
    *ret_gen = g;
    return 0;
}

/* The HTTP side is done with g: cancels it if still running, drops the
 * reference and the request slot. */
static void gen_end(coord_http_t *h, http_gen_t *g)
{
    pthread_mutex_lock(&g->mu);
    bool done = g->done;
    uint64_t id = g->id;
    pthread_mutex_unlock(&g->mu);
    if (!done)
        ms_sched_cancel(h->sched, id);
    gen_unref(g);
    atomic_fetch_sub(&h->in_flight, 1);
}

/* Blocks until g changes, the client hangs up (-EPIPE) or the server stops
 * (-ESHUTDOWN); 0 means "look again". client_fd < 0: not watched. */
static int gen_wait(http_gen_t *g, int client_fd, int stop_fd)
{
    struct pollfd p[3] = { { .fd = g->efd, .events = POLLIN }, { .fd = stop_fd, .events = POLLIN },
                           { .fd = client_fd, .events = POLLRDHUP } };
    int n = poll(p, client_fd >= 0 ? 3 : 2, HTTP_WAIT_MS);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    if (p[0].revents & POLLIN) {
        uint64_t v;
        ssize_t r = read(g->efd, &v, sizeof(v));
        (void)r; /* EAGAIN only: someone else drained it */
    }
    if (p[1].revents)
        return -ESHUTDOWN;
    if (client_fd >= 0 && (p[2].revents & (POLLRDHUP | POLLHUP | POLLERR)))
        return -EPIPE;
    return 0;
}

static int client_fd(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* ------------------------------------------------------ response bodies */

static void make_id(coord_http_t *h, bool chat, char *buf, size_t cap)
{
    uint64_t n = atomic_fetch_add(&h->next_id, 1) + 1;
    snprintf(buf, cap, "%s-%016" PRIx64, chat ? "chatcmpl" : "cmpl", (uint64_t)(h->id_salt ^ (n * 0x9E3779B97F4A7C15ull)));
}

static json_t *usage_json(int32_t n_prompt, int32_t n_gen)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", (json_int_t)n_prompt, "completion_tokens",
                     (json_int_t)n_gen, "total_tokens", (json_int_t)n_prompt + n_gen);
}

/* The header of every reply object: id, object, created, model. */
static json_t *reply_head(const coord_http_t *h, const char *id, const char *object, int64_t created)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", object, "created", (json_int_t)created, "model",
                     h->model_name);
}

/* One choice; text NULL in a chat delta that carries none. */
static json_t *choice_json(bool chat, bool delta, const char *text, size_t len, const char *role,
                           const char *finish)
{
    json_t *fin = finish ? json_string(finish) : json_null();
    if (!chat)
        return json_pack("{s:s%, s:i, s:n, s:o}", "text", text ? text : "", text ? len : 0, "index", 0,
                         "logprobs", "finish_reason", fin);
    json_t *msg = json_object();
    if (role)
        json_object_set_new(msg, "role", json_string(role));
    if (text)
        json_object_set_new(msg, "content", json_stringn(text, len));
    return json_pack("{s:i, s:o, s:n, s:o}", "index", 0, delta ? "delta" : "message", msg, "logprobs",
                     "finish_reason", fin);
}

static json_t *whole_json(coord_http_t *h, const http_job_t *j, const http_gen_t *g)
{
    char id[48];
    make_id(h, j->chat, id, sizeof(id));
    json_t *o = reply_head(h, id, j->chat ? "chat.completion" : "text_completion", (int64_t)time(NULL));
    json_t *ch = choice_json(j->chat, false, g->text ? g->text : "", g->len, "assistant", g->reason);
    if (!o || !ch) {
        json_decref(o);
        json_decref(ch);
        return NULL;
    }
    json_object_set_new(o, "choices", json_pack("[o]", ch));
    json_object_set_new(o, "usage", usage_json(g->n_prompt, g->n_tokens));
    return o;
}

/* Waits for the whole text, then answers with one JSON object. */
static enum MHD_Result reply_whole(coord_http_t *h, struct MHD_Connection *c, const http_job_t *j, http_gen_t *g)
{
    int fd = client_fd(c), rc = 0;
    for (;;) {
        pthread_mutex_lock(&g->mu);
        bool done = g->done;
        pthread_mutex_unlock(&g->mu);
        if (done || (rc = gen_wait(g, fd, h->stop_fd)))
            break;
    }
    enum MHD_Result res;
    if (rc == -EPIPE)
        res = MHD_NO; /* nobody to answer: drop the connection */
    else if (rc == -ESHUTDOWN)
        res = reply_error(h, c, 503, "the server is shutting down");
    else if (rc)
        res = reply_error(h, c, 500, "waiting for the generation failed: %s", strerror(-rc));
    else if (g->failed)
        res = reply_error(h, c, 500, "generation failed: %s", g->message);
    else if (!strcmp(g->reason, "cancelled"))
        res = reply_error(h, c, 503, "the request was cancelled by the server");
    else
        res = reply_json(h, c, 200, whole_json(h, j, g), NULL, NULL);
    gen_end(h, g);
    return res;
}

/* --------------------------------------------------- server-sent events */

static int sse_append(http_stream_t *s, const char *a, size_t n)
{
    if (s->out_len + n > s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap : 1024;
        while (cap < s->out_len + n)
            cap *= 2;
        char *o = realloc(s->out, cap);
        if (!o)
            return -ENOMEM;
        s->out = o;
        s->out_cap = cap;
    }
    memcpy(s->out + s->out_len, a, n);
    s->out_len += n;
    return 0;
}

/* Appends "data: {obj}\n\n" and frees obj. */
static int sse_json(http_stream_t *s, json_t *obj)
{
    char *t = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!t)
        return -ENOMEM;
    int rc = sse_append(s, "data: ", 6);
    rc = rc ? rc : sse_append(s, t, strlen(t));
    rc = rc ? rc : sse_append(s, "\n\n", 2);
    free(t);
    return rc;
}

static json_t *chunk_json(http_stream_t *s, const char *text, size_t len, const char *role, const char *finish)
{
    json_t *o = reply_head(s->h, s->id, s->chat ? "chat.completion.chunk" : "text_completion", s->created);
    json_t *ch = choice_json(s->chat, true, text, len, role, finish);
    if (!o || !ch) {
        json_decref(o);
        json_decref(ch);
        return NULL;
    }
    json_object_set_new(o, "choices", json_pack("[o]", ch));
    return o;
}

/* The closing events: the finish reason, usage when asked, [DONE]; or the error. */
static int sse_finish(http_stream_t *s, bool failed, const char *message, const char *reason, int32_t n_prompt,
                      int32_t n_gen)
{
    s->ended = true;
    if (failed || !strcmp(reason, "cancelled")) {
        http_fail_t f = { 0 };
        fail(&f, 500, NULL, "%s", failed ? message : "the request was cancelled by the server");
        return sse_json(s, error_json(&f));
    }
    int rc = sse_json(s, chunk_json(s, s->chat ? NULL : "", 0, NULL, reason));
    if (!rc && s->include_usage) {
        json_t *u = reply_head(s->h, s->id, s->chat ? "chat.completion.chunk" : "text_completion", s->created);
        if (u) {
            json_object_set_new(u, "choices", json_array());
            json_object_set_new(u, "usage", usage_json(n_prompt, n_gen));
        }
        rc = sse_json(s, u);
    }
    return rc ? rc : sse_append(s, "data: [DONE]\n\n", 14);
}

/* Formats what is new into s->out: 1 when something was added, 0 when nothing is new. */
static int stream_fill(http_stream_t *s)
{
    if (!s->began) {
        s->began = true;
        if (s->chat) /* OpenAI opens a chat stream with the role */
            return sse_json(s, chunk_json(s, "", 0, "assistant", NULL)) ? -ENOMEM : 1;
    }
    http_gen_t *g = s->g;
    pthread_mutex_lock(&g->mu);
    size_t end = g->safe, n = end > s->sent ? end - s->sent : 0;
    char *text = n ? malloc(n) : NULL;
    if (text)
        memcpy(text, g->text + s->sent, n);
    bool done = g->done, failed = g->failed;
    const char *reason = g->reason;
    int32_t n_prompt = g->n_prompt, n_gen = g->n_tokens;
    char message[MS_ERR_MSG_BYTES];
    memcpy(message, g->message, sizeof(message));
    pthread_mutex_unlock(&g->mu);
    if (n && !text)
        return -ENOMEM;
    int rc = n ? sse_json(s, chunk_json(s, text, n, NULL, NULL)) : 0;
    free(text);
    s->sent += n;
    if (!rc && done)
        rc = sse_finish(s, failed, message, reason, n_prompt, n_gen);
    return rc ? rc : n || done;
}

/* MHD's content reader: blocks (this connection's own thread) until there is
 * something to send. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_stream_t *s = cls;
    (void)pos;
    for (;;) {
        if (s->out_off < s->out_len) {
            size_t n = s->out_len - s->out_off < max ? s->out_len - s->out_off : max;
            memcpy(buf, s->out + s->out_off, n);
            s->out_off += n;
            return (ssize_t)n;
        }
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        s->out_len = s->out_off = 0;
        int rc = stream_fill(s);
        if (rc < 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (rc > 0)
            continue;
        rc = gen_wait(s->g, s->client_fd, s->h->stop_fd);
        if (rc == -ESHUTDOWN) {
            http_fail_t f = { 0 };
            fail(&f, 503, NULL, "the server is shutting down");
            s->ended = true;
            if (sse_json(s, error_json(&f)))
                return MHD_CONTENT_READER_END_WITH_ERROR;
        } else if (rc) {
            ms_log_debug("http: stream %s: the client went away; request cancelled", s->id);
            return MHD_CONTENT_READER_END_WITH_ERROR; /* gen_end, from stream_free, cancels */
        }
    }
}

static void stream_free(void *cls)
{
    http_stream_t *s = cls;
    gen_end(s->h, s->g);
    free(s->out);
    free(s);
}

static enum MHD_Result stream_start(coord_http_t *h, struct MHD_Connection *c, const http_job_t *j, http_gen_t *g)
{
    http_stream_t *s = calloc(1, sizeof(*s));
    if (!s) {
        gen_end(h, g);
        return reply_error(h, c, 500, "out of memory");
    }
    *s = (http_stream_t){ .h = h, .g = g, .chat = j->chat, .include_usage = j->include_usage,
                          .client_fd = client_fd(c), .created = (int64_t)time(NULL) };
    make_id(h, j->chat, s->id, sizeof(s->id));
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK_BYTES, stream_read, s, stream_free);
    if (!r) {
        stream_free(s);
        return reply_error(h, c, 500, "out of memory");
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result res = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r); /* MHD frees it, and calls stream_free, when the connection is done with it */
    count_status(h, 200);
    return res;
}

/* The client's address as the rate limiter's key; 0 bytes when unknown. */
static size_t client_key(struct MHD_Connection *c, unsigned char *key, size_t cap)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return 0;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET && cap >= 4) {
        memcpy(key, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        return 4;
    }
    if (sa->sa_family == AF_INET6 && cap >= 16) {
        memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        return 16;
    }
    return 0;
}

/* Answers 429 with Retry-After when the client is over its rate: true then. */
static bool over_rate(coord_http_t *h, struct MHD_Connection *c, enum MHD_Result *res)
{
    unsigned char key[16];
    size_t n = h->rate ? client_key(c, key, sizeof(key)) : 0;
    double wait = 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (!n || ms_ratelimit_take(h->rate, key, n, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9, &wait) == 0)
        return false;
    http_fail_t f = { 0 };
    char retry[24];
    snprintf(retry, sizeof(retry), "%.0f", ceil(wait));
    fail(&f, 429, NULL, "rate limit: at most %d requests a minute from one client; retry in %s s",
         h->rate_per_min, retry);
    f.hdr = MHD_HTTP_HEADER_RETRY_AFTER;
    f.hdr_value = retry;
    *res = reply_fail(h, c, &f);
    return true;
}

static enum MHD_Result serve_generate(coord_http_t *h, struct MHD_Connection *c, const http_req_t *r)
{
    http_fail_t f = { 0 };
    http_job_t j = { .chat = r->ep == EP_CHAT };
    j.gp = (ms_gen_params_t){ .parse_special = true, .add_bos = true, .sp = ms_sampler_defaults() };
    http_gen_t *g = NULL;
    enum MHD_Result res;
    if (parse_job(h, r, &j, &f))
        res = reply_fail(h, c, &f);
    else if (atomic_load(&h->stopping))
        res = reply_error(h, c, 503, "the server is shutting down");
    else if (over_rate(h, c, &res))
        ; /* answered */
    else if (!slot_take(h))
        res = reply_error(h, c, 429, "too many requests in flight (at most %u); retry later", h->requests_max);
    else if (gen_submit(h, &j, &g, &f)) {
        atomic_fetch_sub(&h->in_flight, 1);
        res = reply_fail(h, c, &f);
    } else {
        res = j.stream ? stream_start(h, c, &j, g) : reply_whole(h, c, &j, g);
    }
    free(j.prompt);
    return res;
}

/* ------------------------------------------------------ other endpoints */

static json_t *model_json(const coord_http_t *h)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", h->model_name, "object", "model", "created",
                     (json_int_t)h->created, "owned_by", "moeshard");
}

static enum MHD_Result serve_model(coord_http_t *h, struct MHD_Connection *c, const char *url)
{
    const char *name = url + strlen(http_eps[EP_MODEL].path);
    if (strcmp(name, h->model_name)) {
        http_fail_t f = { 0 };
        fail(&f, 404, "model", "the model '%.200s' does not exist (this server has '%s')", name, h->model_name);
        f.code = "model_not_found";
        return reply_fail(h, c, &f);
    }
    return reply_json(h, c, 200, model_json(h), NULL, NULL);
}

static size_t buf_printf(char *buf, size_t cap, size_t at, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static size_t buf_printf(char *buf, size_t cap, size_t at, const char *fmt, ...)
{
    if (at >= cap)
        return at;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + at, cap - at, fmt, ap);
    va_end(ap);
    return n < 0 ? at : at + (size_t)n < cap ? at + (size_t)n : cap - 1;
}

static size_t metric(char *buf, size_t cap, size_t at, const char *name, const char *type, const char *help,
                     double v)
{
    return buf_printf(buf, cap, at, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

static size_t metrics_http(coord_http_t *h, char *buf, size_t cap, size_t at)
{
    at = buf_printf(buf, cap, at, "# HELP moeshard_http_responses_total HTTP responses by status code.\n"
                                  "# TYPE moeshard_http_responses_total counter\n");
    for (size_t i = 0; i <= HTTP_N_CODES; i++) {
        char code[16];
        snprintf(code, sizeof(code), i < HTTP_N_CODES ? "%u" : "other", i < HTTP_N_CODES ? http_codes[i] : 0);
        at = buf_printf(buf, cap, at, "moeshard_http_responses_total{code=\"%s\"} %" PRIuFAST64 "\n", code,
                        atomic_load(&h->n_status[i]));
    }
    return metric(buf, cap, at, "moeshard_http_requests_in_flight", "gauge",
                  "Generation requests the HTTP API is serving.", atomic_load(&h->in_flight));
}

static enum MHD_Result serve_metrics(coord_http_t *h, struct MHD_Connection *c)
{
    size_t cap = HTTP_METRICS_BYTES + COORD_HTTP_STATS_BYTES_MAX, at = 0;
    char *buf = malloc(cap);
    if (!buf)
        return reply_error(h, c, 500, "out of memory");
    ms_sched_stats_t st;
    ms_sched_stats(h->sched, &st);
    at = metric(buf, cap, at, "moeshard_requests_total", "counter", "Generation requests finished.",
                (double)st.requests_done);
    at = metric(buf, cap, at, "moeshard_tokens_generated_total", "counter", "Tokens generated.",
                (double)st.tokens_generated);
    at = metric(buf, cap, at, "moeshard_prompt_tokens_total", "counter", "Prompt tokens processed.",
                (double)st.prompt_tokens);
    at = metric(buf, cap, at, "moeshard_queue_depth", "gauge", "Requests waiting for a sequence slot.", st.queued);
    at = metric(buf, cap, at, "moeshard_active_requests", "gauge", "Requests being generated.", st.active);
    at = metric(buf, cap, at, "moeshard_decode_tokens_per_second", "gauge",
                "Tokens generated per second over the last seconds.", st.decode_tok_s);
    at = metric(buf, cap, at, "moeshard_prefill_tokens_per_second", "gauge",
                "Prompt tokens processed per second over the last seconds.", st.prefill_tok_s);
    at = metrics_http(h, buf, cap, at);
    pthread_mutex_lock(&h->stats_mu);
    if (h->stats_fn && at + 1 < cap) {
        buf[at] = '\0';
        h->stats_fn(h->stats_ctx, buf + at, cap - at);
        buf[cap - 1] = '\0';
        at += strlen(buf + at);
    }
    pthread_mutex_unlock(&h->stats_mu);
    return reply_buf(h, c, 200, "text/plain; version=0.0.4; charset=utf-8", buf, at, NULL, NULL);
}

/* --------------------------------------------------------------- routing */

/* The endpoint of (url, method): 0, or -ENOENT (404) / -EPERM (405, *ret set). */
static int route(const char *url, const char *method, http_ep_t *ret)
{
    for (int e = 0; e < EP_COUNT; e++) {
        const char *p = http_eps[e].path;
        bool match = e == EP_MODEL ? !strncmp(url, p, strlen(p)) && url[strlen(p)] : !strcmp(url, p);
        if (!match)
            continue;
        *ret = (http_ep_t)e;
        return strcmp(method, http_eps[e].method) ? -EPERM : 0;
    }
    return -ENOENT;
}

static bool key_equal(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    unsigned char d = na != nb;
    for (size_t i = 0; i < nb; i++) /* time depends on the key's length only */
        d |= (unsigned char)(a[i < na ? i : 0] ^ b[i]);
    return d == 0;
}

static bool authorized(const coord_http_t *h, struct MHD_Connection *c)
{
    if (!h->api_key)
        return true;
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!v || strncasecmp(v, "Bearer ", 7))
        return false;
    v += 7;
    while (*v == ' ')
        v++;
    return key_equal(v, h->api_key);
}

static enum MHD_Result serve_get(coord_http_t *h, struct MHD_Connection *c, http_ep_t ep, const char *url)
{
    switch (ep) {
    case EP_MODELS:
        return reply_json(h, c, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", model_json(h)), NULL, NULL);
    case EP_MODEL:
        return serve_model(h, c, url);
    case EP_HEALTH:
        if (atomic_load(&h->stopping))
            return reply_json(h, c, 503, json_pack("{s:s}", "status", "shutting down"), NULL, NULL);
        return reply_json(h, c, 200, json_pack("{s:s}", "status", "ok"), NULL, NULL);
    case EP_METRICS:
        return serve_metrics(h, c);
    default:
        return reply_error(h, c, 500, "no handler for this endpoint");
    }
}

/* The first call for a request: routes it and refuses a body announced
 * too large before it is read (closing the connection). Everything else is
 * answered on the last call: a reply queued on the first one makes
 * libmicrohttpd close the connection, which would defeat keep-alive. */
static enum MHD_Result request_begin(coord_http_t *h, struct MHD_Connection *c, const char *url, const char *method,
                                     void **con_cls)
{
    http_req_t *r = calloc(1, sizeof(*r));
    if (!r)
        return reply_error(h, c, 500, "out of memory");
    r->route = route(url, method, &r->ep);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > h->body_bytes_max) {
        free(r);
        return reply_error(h, c, 413, "the body has %.20s bytes (at most %zu)", cl, h->body_bytes_max);
    }
    *con_cls = r;
    pthread_mutex_lock(&h->busy_mu);
    h->busy++;
    pthread_mutex_unlock(&h->busy_mu);
    return MHD_YES;
}

/* The last call, with the whole body read. */
static enum MHD_Result request_end(coord_http_t *h, struct MHD_Connection *c, const char *url, const char *method,
                                   const http_req_t *r)
{
    http_fail_t f = { 0 };
    if (r->route == -ENOENT) {
        fail(&f, 404, NULL, "no endpoint %.16s %.200s (see docs/http.md)", method, url);
        return reply_fail(h, c, &f);
    }
    if (r->route == -EPERM) {
        fail(&f, 405, NULL, "%.200s takes %s, not %.16s", url, http_eps[r->ep].method, method);
        f.hdr = MHD_HTTP_HEADER_ALLOW;
        f.hdr_value = http_eps[r->ep].method;
        return reply_fail(h, c, &f);
    }
    if (http_eps[r->ep].auth && !authorized(h, c)) {
        fail(&f, 401, NULL, "a valid API key is required (Authorization: Bearer KEY)");
        f.code = "invalid_api_key";
        f.hdr = MHD_HTTP_HEADER_WWW_AUTHENTICATE;
        f.hdr_value = "Bearer";
        return reply_fail(h, c, &f);
    }
    if (r->too_big)
        return reply_error(h, c, 413, "the body is larger than %zu bytes", h->body_bytes_max);
    if (strcmp(method, "POST"))
        return serve_get(h, c, r->ep, url);
    return serve_generate(h, c, r);
}

static void body_append(const coord_http_t *h, http_req_t *r, const char *data, size_t n)
{
    if (r->too_big)
        return;
    if (r->len + n > h->body_bytes_max) {
        r->too_big = true;
        free(r->body);
        r->body = NULL;
        return;
    }
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n)
            cap *= 2;
        char *b = realloc(r->body, cap);
        if (!b) {
            r->too_big = true; /* answered with 413: the body cannot be held */
            return;
        }
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    coord_http_t *h = cls;
    http_req_t *r = *con_cls;
    (void)version;
    if (!r)
        return request_begin(h, c, url, method, con_cls);
    if (*upload_size) {
        size_t n = *upload_size;
        body_append(h, r, upload, n);
        *upload_size = 0;
        /* A 413 queued mid-body is never delivered by libmicrohttpd, so an
         * oversized body is read to its end and dropped, up to a bound. */
        r->seen += n;
        if (r->seen / HTTP_BODY_DISCARD_FACTOR > h->body_bytes_max) {
            ms_log_debug("http: dropping a connection that sent more than %d x %zu body bytes",
                         HTTP_BODY_DISCARD_FACTOR, h->body_bytes_max);
            return MHD_NO;
        }
        return MHD_YES;
    }
    return request_end(h, c, url, method, r);
}

/* The request's answer is sent (or its connection lost). */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    coord_http_t *h = cls;
    http_req_t *r = *con_cls;
    (void)c;
    (void)toe;
    if (!r)
        return;
    free(r->body);
    free(r);
    *con_cls = NULL;
    pthread_mutex_lock(&h->busy_mu);
    if (--h->busy == 0)
        pthread_cond_broadcast(&h->busy_cv);
    pthread_mutex_unlock(&h->busy_mu);
}

/* Lets the requests in flight send their last words (503s, error events)
 * before the daemon shuts every connection's socket. */
static void wait_idle(coord_http_t *h)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += HTTP_STOP_GRACE_MS / 1000;
    until.tv_nsec += (long)(HTTP_STOP_GRACE_MS % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->busy_mu);
    while (h->busy && pthread_cond_timedwait(&h->busy_cv, &h->busy_mu, &until) != ETIMEDOUT)
        ;
    if (h->busy)
        ms_log_warn("http: stopping with %u requests still unanswered after %d ms", h->busy, HTTP_STOP_GRACE_MS);
    pthread_mutex_unlock(&h->busy_mu);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    ms_log_debug("http: %s", line);
}

/* ------------------------------------------------------------ life cycle */

/* "HOST:PORT", "[V6]:PORT" or ":PORT" into *ret. */
static int parse_listen(const char *s, struct sockaddr_storage *ret, socklen_t *ret_len, ms_err_t *err)
{
    const char *colon = strrchr(s, ':');
    char *end;
    errno = 0;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || !colon[1] || *end || errno || port < 0 || port > 65535) {
        ms_err_set(err, "listen address '%.200s': expected ADDR:PORT (e.g. 127.0.0.1:8080 or :8080)", s);
        return -EINVAL;
    }
    char host[256];
    size_t n = (size_t)(colon - s);
    if (n >= sizeof(host)) {
        ms_err_set(err, "listen address '%.200s': the host part is too long", s);
        return -EINVAL;
    }
    memcpy(host, s, n);
    host[n] = '\0';
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memmove(host, host + 1, n - 2);
        host[n - 2] = '\0';
    }
    memset(ret, 0, sizeof(*ret));
    if (!host[0]) {
        struct sockaddr_in *a = (struct sockaddr_in *)ret;
        *a = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                   .sin_addr.s_addr = htonl(INADDR_ANY) };
        *ret_len = sizeof(*a);
        return 0;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai = NULL;
    int g = getaddrinfo(host, NULL, &hints, &ai);
    if (g || !ai || ai->ai_addrlen > sizeof(*ret)) {
        ms_err_set(err, "listen address '%.200s': cannot resolve '%s': %s", s, host, g ? gai_strerror(g) : "no address");
        if (ai)
            freeaddrinfo(ai);
        return -EINVAL;
    }
    memcpy(ret, ai->ai_addr, ai->ai_addrlen);
    *ret_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    if (ret->ss_family == AF_INET)
        ((struct sockaddr_in *)ret)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ret)->sin6_port = htons((uint16_t)port);
    return 0;
}

static bool is_loopback(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET)
        return ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24 == 127;
    return sa->ss_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
}

/* Why MHD could not listen: tries the same bind to learn the errno. */
static int listen_errno(const struct sockaddr_storage *sa, socklen_t len)
{
    int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, rc = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)sa, len) || listen(fd, 1))
        rc = -errno;
    close(fd);
    return rc ? rc : -EIO;
}

static int check_params(const coord_http_params_t *p, const char *model_name, ms_err_t *err)
{
    if (p && p->body_bytes_max > COORD_HTTP_BODY_BYTES_MAX) {
        ms_err_set(err, "HTTP body limit %zu is above %u bytes", p->body_bytes_max, COORD_HTTP_BODY_BYTES_MAX);
        return -EINVAL;
    }
    if (p && p->requests_max > COORD_HTTP_REQUESTS_MAX) {
        ms_err_set(err, "HTTP request limit %u is above %d", p->requests_max, COORD_HTTP_REQUESTS_MAX);
        return -EINVAL;
    }
    if (p && (p->n_ctx < 0 || p->n_ctx > MS_CONTEXT_MAX)) {
        ms_err_set(err, "HTTP context %d is outside [0, %d]", p->n_ctx, MS_CONTEXT_MAX);
        return -EINVAL;
    }
    bool tls_bad = p && (!p->tls_cert_pem != !p->tls_key_pem ||
                         (p->tls_cert_pem && (strlen(p->tls_cert_pem) > COORD_HTTP_PEM_BYTES_MAX ||
                                              strlen(p->tls_key_pem) > COORD_HTTP_PEM_BYTES_MAX)));
    if (tls_bad) {
        ms_err_set(err, "HTTPS needs both a certificate and its key, each at most %u bytes of PEM",
                   COORD_HTTP_PEM_BYTES_MAX);
        return -EINVAL;
    }
    if (p && p->api_key && strlen(p->api_key) > COORD_HTTP_API_KEY_BYTES_MAX) {
        ms_err_set(err, "the API key is longer than %d bytes", COORD_HTTP_API_KEY_BYTES_MAX);
        return -EINVAL;
    }
    if (model_name && strlen(model_name) > COORD_HTTP_MODEL_NAME_BYTES_MAX) {
        ms_err_set(err, "the model name is longer than %d bytes", COORD_HTTP_MODEL_NAME_BYTES_MAX);
        return -EINVAL;
    }
    return 0;
}

/* The model's chat template family (chatml when it has none or an unknown
 * one, logged) and the text its template writes for bos_token. */
static int chat_setup(coord_http_t *h)
{
    ms_err_t e = { { 0 } };
    int rc = ms_chat_detect(h->m->gguf, &h->family, &e);
    if (rc == -ENOENT)
        ms_log_info("http: the model has no chat template; /v1/chat/completions uses chatml");
    else if (rc)
        ms_log_warn("http: %s; /v1/chat/completions uses chatml", e.msg);
    if (rc)
        h->family = MS_CHAT_CHATML;
    else
        ms_log_debug("http: chat template family %s", ms_chat_family_name(h->family));
    int32_t bos = ms_tokenizer_bos(h->tok);
    if (ms_tokenizer_add_bos(h->tok) || bos < 0)
        return 0; /* the tokenizer adds BOS itself (ms_chat_render) */
    size_t n = 0;
    const char *t = ms_tokenizer_token_text(h->tok, bos, &n);
    h->bos_text = strndup(t ? t : "", t ? n : 0);
    return h->bos_text ? 0 : -ENOMEM;
}

static coord_http_t *http_alloc(ms_sched_t *sched, const ms_model_t *m, const ms_tokenizer_t *tok,
                                const char *model_name, const coord_http_params_t *p)
{
    coord_http_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->sched = sched;
    h->m = m;
    h->tok = tok;
    h->stop_fd = -1;
    snprintf(h->model_name, sizeof(h->model_name), "%s", model_name && *model_name ? model_name : "moeshard");
    h->body_bytes_max = p && p->body_bytes_max ? p->body_bytes_max : COORD_HTTP_BODY_BYTES_DEFAULT;
    h->requests_max = p && p->requests_max ? p->requests_max : COORD_HTTP_REQUESTS_DEFAULT;
    h->n_ctx = p && p->n_ctx ? p->n_ctx : m->hp.n_ctx_train;
    h->rate = p ? p->rate : NULL;
    h->rate_per_min = p ? p->rate_per_min : 0;
    h->created = (int64_t)time(NULL);
    pthread_mutex_init(&h->stats_mu, NULL);
    pthread_mutex_init(&h->busy_mu, NULL);
    pthread_cond_init(&h->busy_cv, NULL);
    if (getrandom(&h->id_salt, sizeof(h->id_salt), 0) != sizeof(h->id_salt))
        h->id_salt = (uint64_t)time(NULL) * 0x2545F4914F6CDD1Dull;
    if (p && p->api_key && *p->api_key && !(h->api_key = strdup(p->api_key)))
        goto out_free;
    if (p && p->tls_cert_pem && (!(h->tls_cert = strdup(p->tls_cert_pem)) || !(h->tls_key = strdup(p->tls_key_pem))))
        goto out_free;
    h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->stop_fd >= 0 && !chat_setup(h))
        return h;
out_free:
    coord_http_stop(&h);
    return NULL;
}

/* Plain HTTP beyond loopback lets anyone on the path read prompts, replies
 * and the API key: refused unless the operator says otherwise. */
static int check_exposure(const coord_http_t *h, const char *listen_addr, const struct sockaddr_storage *sa,
                          const coord_http_params_t *p, ms_err_t *err)
{
    if (is_loopback(sa))
        return 0;
    if (!h->api_key)
        ms_log_warn("http: %s is reachable beyond loopback without an API key: anyone who reaches it may use it "
                    "(--http-api-key FILE)", listen_addr);
    if (h->tls_cert)
        return 0;
    if (!p || !p->insecure) {
        ms_err_set(err, "HTTP on %.200s would be reachable beyond loopback in plain text: give it TLS "
                        "(--http-tls-cert FILE --http-tls-key FILE), listen on 127.0.0.1 behind a TLS proxy, or "
                        "pass --http-insecure (docs/security.md)", listen_addr);
        return -EPERM;
    }
    ms_log_warn("http: %s is reachable beyond loopback over plain HTTP (--http-insecure)", listen_addr);
    return 0;
}

static int http_listen(coord_http_t *h, const char *listen_addr, const struct sockaddr_storage *sa_in, socklen_t len,
                       ms_err_t *err)
{
    struct sockaddr_storage sa = *sa_in;
    int rc;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG | (sa.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0) | (h->tls_cert ? MHD_USE_TLS : 0);
    struct MHD_OptionItem tls[] = { { MHD_OPTION_HTTPS_MEM_CERT, 0, h->tls_cert },
                                    { MHD_OPTION_HTTPS_MEM_KEY, 0, h->tls_key },
                                    { MHD_OPTION_END, 0, NULL } };
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(h->requests_max + COORD_HTTP_SPARE_CONNECTIONS),
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)COORD_HTTP_IDLE_TIMEOUT_S,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
                            MHD_OPTION_ARRAY, h->tls_cert ? tls : tls + 2, MHD_OPTION_END);
    if (!h->d) {
        rc = listen_errno(&sa, len);
        if (rc == -EIO && h->tls_cert) {
            ms_err_set(err, "HTTPS on %.200s: libmicrohttpd refused the TLS certificate or key (see the log line "
                            "before this one)", listen_addr);
            return -EINVAL;
        }
        ms_err_set(err, "cannot listen for HTTP on %.200s: %s", listen_addr, strerror(-rc));
        return rc;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : 0;
    return 0;
}

int coord_http_start(ms_sched_t *sched, const ms_model_t *m, const ms_tokenizer_t *tok, const char *model_name,
                     const char *listen_addr, const coord_http_params_t *p, coord_http_t **ret, ms_err_t *err)
{
    if (!sched || !m || !tok || !listen_addr || !ret) {
        ms_err_set(err, "HTTP API: scheduler, model, tokenizer, listen address and result are required");
        return -EINVAL;
    }
    struct sockaddr_storage sa;
    socklen_t len = 0;
    int rc = check_params(p, model_name, err);
    rc = rc ? rc : parse_listen(listen_addr, &sa, &len, err);
    if (rc)
        return rc;
    coord_http_t *h = http_alloc(sched, m, tok, model_name, p);
    if (!h) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    rc = check_exposure(h, listen_addr, &sa, p, err);
    rc = rc ? rc : http_listen(h, listen_addr, &sa, len, err);
    if (rc) {
        coord_http_stop(&h);
        return rc;
    }
    *ret = h;
    return 0;
}

void coord_http_stop(coord_http_t **self_p)
{
    coord_http_t *h = self_p ? *self_p : NULL;
    if (!h)
        return;
    *self_p = NULL;
    atomic_store(&h->stopping, true);
    if (h->stop_fd >= 0) {
        uint64_t one = 1;
        ssize_t n = write(h->stop_fd, &one, sizeof(one));
        (void)n; /* a fresh eventfd takes one write */
    }
    if (h->d) {
        wait_idle(h);
        MHD_stop_daemon(h->d); /* joins every connection's thread */
    }
    if (h->stop_fd >= 0)
        close(h->stop_fd);
    pthread_mutex_destroy(&h->stats_mu);
    pthread_mutex_destroy(&h->busy_mu);
    pthread_cond_destroy(&h->busy_cv);
    free(h->api_key);
    if (h->tls_key)
        explicit_bzero(h->tls_key, strlen(h->tls_key));
    free(h->tls_key);
    free(h->tls_cert);
    free(h->bos_text);
    free(h);
}

uint16_t coord_http_port(const coord_http_t *h)
{
    return h ? h->port : 0;
}

void coord_http_set_stats_fn(coord_http_t *h, coord_http_stats_fn fn, void *ctx)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->stats_mu);
    h->stats_fn = fn;
    h->stats_ctx = ctx;
    pthread_mutex_unlock(&h->stats_mu);
}
