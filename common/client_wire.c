/* The client <-> coordinator codec (client_wire.h): protobuf-c Envelopes,
 * unpacked, bounded and copied out in one function each. */
#include "client_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moeshard.pb-c.h"

static void env_init(Moeshard__Envelope *env, uint64_t request_id)
{
    moeshard__envelope__init(env);
    env->version_major = MS_WIRE_VERSION_MAJOR;
    env->version_minor = MS_WIRE_VERSION_MINOR;
    env->request_id = request_id;
}

static int pack_env(const Moeshard__Envelope *env, void *buf, size_t cap, size_t *ret_len)
{
    size_t n = moeshard__envelope__get_packed_size(env);
    if (n > cap || n > MS_WIRE_HEADER_BYTES_MAX)
        return -EMSGSIZE;
    *ret_len = moeshard__envelope__pack(env, buf);
    return 0;
}

static Moeshard__Dtype dtype_pb(ms_wire_dtype_t dt)
{
    static const Moeshard__Dtype map[MS_WIRE_DTYPE_COUNT] = { MOESHARD__DTYPE__DTYPE_F32, MOESHARD__DTYPE__DTYPE_BF16,
                                                              MOESHARD__DTYPE__DTYPE_F16 };
    return (unsigned)dt < MS_WIRE_DTYPE_COUNT ? map[dt] : MOESHARD__DTYPE__DTYPE_INVALID;
}

static ms_wire_dtype_t dtype_ms(Moeshard__Dtype d)
{
    switch (d) {
    case MOESHARD__DTYPE__DTYPE_BF16: return MS_WIRE_BF16;
    case MOESHARD__DTYPE__DTYPE_F16: return MS_WIRE_F16;
    default: return MS_WIRE_F32;
    }
}

/* ---------------------------------------------------------------- encoding */

int ms_cw_encode_generate(uint64_t request_id, const ms_cw_generate_t *g, void *buf, size_t cap, size_t *ret_len)
{
    if (!g || (!g->prompt && g->prompt_len) || g->prompt_len > MS_CW_PROMPT_BYTES_MAX)
        return -EINVAL;
    Moeshard__Envelope env;
    Moeshard__Generate m;
    env_init(&env, request_id);
    moeshard__generate__init(&m);
    m.prompt.data = (uint8_t *)g->prompt;
    m.prompt.len = g->prompt_len;
    m.n_predict = g->n_predict;
    m.temp = g->temp;
    m.top_k = g->top_k;
    m.top_p = g->top_p;
    m.min_p = g->min_p;
    m.repeat_penalty = g->repeat_penalty;
    m.repeat_last_n = g->repeat_last_n;
    m.seed = g->seed;
    m.no_special = g->no_special;
    env.kind_case = MOESHARD__ENVELOPE__KIND_GENERATE;
    env.generate = &m;
    return pack_env(&env, buf, cap, ret_len);
}

int ms_cw_encode_cancel(uint64_t request_id, void *buf, size_t cap, size_t *ret_len)
{
    Moeshard__Envelope env;
    Moeshard__Cancel m;
    env_init(&env, request_id);
    moeshard__cancel__init(&m);
    env.kind_case = MOESHARD__ENVELOPE__KIND_CANCEL;
    env.cancel = &m;
    return pack_env(&env, buf, cap, ret_len);
}

int ms_cw_encode_status_query(uint64_t request_id, void *buf, size_t cap, size_t *ret_len)
{
    Moeshard__Envelope env;
    Moeshard__StatusQuery m;
    env_init(&env, request_id);
    moeshard__status_query__init(&m);
    env.kind_case = MOESHARD__ENVELOPE__KIND_STATUS_QUERY;
    env.status_query = &m;
    return pack_env(&env, buf, cap, ret_len);
}

int ms_cw_encode_event(uint64_t request_id, const ms_cw_event_t *ev, void *buf, size_t cap, size_t *ret_len)
{
    if (!ev || ev->kind < MS_CW_EV_ACCEPTED || ev->kind >= MS_CW_EV_COUNT || ev->len > MS_CW_TEXT_BYTES_MAX)
        return -EINVAL;
    Moeshard__Envelope env;
    Moeshard__GenEvent m;
    env_init(&env, request_id);
    moeshard__gen_event__init(&m);
    m.kind = ev->kind;
    m.token = ev->token;
    m.text.data = (uint8_t *)ev->text;
    m.text.len = ev->len;
    m.reason = (char *)ev->reason;
    m.message = (char *)ev->message;
    m.n_prompt = ev->n_prompt;
    m.n_gen = ev->n_gen;
    m.n_decode_steps = ev->n_decode_steps;
    m.prefill_s = ev->prefill_s;
    m.decode_s = ev->decode_s;
    m.queued_s = ev->queued_s;
    m.weights_bytes_per_token = ev->weights_bytes_per_token;
    m.kv_bytes = ev->kv_bytes;
    m.peak_rss_bytes = ev->peak_rss_bytes;
    m.kernels = (char *)ev->kernels;
    m.threads = ev->threads;
    m.seed = ev->seed;
    m.n_hosts = ev->n_hosts;
    m.wire = dtype_pb(ev->wire);
    m.net_bytes_decode = ev->net_bytes_decode;
    env.kind_case = MOESHARD__ENVELOPE__KIND_EVENT;
    env.event = &m;
    return pack_env(&env, buf, cap, ret_len);
}

int ms_cw_encode_status(uint64_t request_id, const ms_cw_status_t *st, void *buf, size_t cap, size_t *ret_len)
{
    if (!st || st->n_hosts > MS_HOSTS_MAX || (st->n_hosts && !st->hosts) ||
        !memchr(st->chat_family, '\0', sizeof(st->chat_family)))
        return -EINVAL;
    Moeshard__HostStatus *hs = calloc(st->n_hosts ? st->n_hosts : 1, sizeof(*hs));
    Moeshard__HostStatus **hp = calloc(st->n_hosts ? st->n_hosts : 1, sizeof(*hp));
    if (!hs || !hp) {
        free(hs);
        free(hp);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < st->n_hosts; i++) {
        const ms_cw_host_t *h = &st->hosts[i];
        moeshard__host_status__init(&hs[i]);
        hs[i].endpoint = (char *)h->endpoint;
        hs[i].slices_held = h->slices_held;
        hs[i].memory_bytes = h->memory_bytes;
        hs[i].last_reply_age_ms = h->last_reply_age_ms;
        hs[i].rtt_ms_mean = h->rtt_ms_mean;
        hs[i].bytes_sent = h->bytes_sent;
        hs[i].bytes_received = h->bytes_received;
        hs[i].batches = h->batches;
        hs[i].state = (char *)h->state;
        hp[i] = &hs[i];
    }
    Moeshard__Envelope env;
    Moeshard__StatusReply m;
    env_init(&env, request_id);
    moeshard__status_reply__init(&m);
    m.model = (char *)st->model;
    m.arch = (char *)st->arch;
    m.uptime_ms = st->uptime_ms;
    m.epoch = st->epoch;
    m.hosts_down = st->hosts_down;
    m.failover_slots = st->failover_slots;
    m.active = st->active;
    m.queued = st->queued;
    m.requests_done = st->requests_done;
    m.tokens_generated = st->tokens_generated;
    m.prompt_tokens = st->prompt_tokens;
    m.decode_tok_s = st->decode_tok_s;
    m.prefill_tok_s = st->prefill_tok_s;
    m.n_seq_max = st->n_seq_max;
    m.n_hosts = st->n_hosts;
    m.hosts = hp;
    m.wire = dtype_pb(st->wire);
    m.chat_template_family = (char *)st->chat_family;
    env.kind_case = MOESHARD__ENVELOPE__KIND_STATUS;
    env.status = &m;
    int rc = pack_env(&env, buf, cap, ret_len);
    free(hs);
    free(hp);
    return rc;
}

int ms_cw_encode_error(uint64_t request_id, int32_t code, const char *message, void *buf, size_t cap,
                       size_t *ret_len)
{
    char text[MS_WIRE_ERROR_BYTES_MAX + 1];
    snprintf(text, sizeof(text), "%s", message ? message : "");
    Moeshard__Envelope env;
    Moeshard__Error m;
    env_init(&env, request_id);
    moeshard__error__init(&m);
    m.code = code;
    m.message = text;
    env.kind_case = MOESHARD__ENVELOPE__KIND_ERROR;
    env.error = &m;
    return pack_env(&env, buf, cap, ret_len);
}

/* ---------------------------------------------------------------- decoding */

/* Copies a protobuf string into dst[cap]; -EPROTO naming the field when too long. */
static int copy_str(char *dst, size_t cap, const char *src, const char *field, ms_err_t *err)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap) {
        ms_err_set(err, "%s is %zu bytes long (at most %zu)", field, n, cap - 1);
        return -EPROTO;
    }
    memcpy(dst, src ? src : "", n + 1);
    return 0;
}

static int decode_generate(ms_cw_msg_t *msg, const Moeshard__Generate *g, ms_err_t *err)
{
    if (g->prompt.len > MS_CW_PROMPT_BYTES_MAX) {
        ms_err_set(err, "Generate.prompt is %zu bytes (at most %u)", g->prompt.len, MS_CW_PROMPT_BYTES_MAX);
        return -EPROTO;
    }
    msg->prompt_buf = malloc(g->prompt.len + 1);
    if (!msg->prompt_buf)
        return -ENOMEM;
    if (g->prompt.len)
        memcpy(msg->prompt_buf, g->prompt.data, g->prompt.len);
    msg->prompt_buf[g->prompt.len] = '\0';
    msg->gen = (ms_cw_generate_t){ .prompt = msg->prompt_buf, .prompt_len = g->prompt.len, .n_predict = g->n_predict,
                                   .temp = g->temp, .top_p = g->top_p, .min_p = g->min_p,
                                   .repeat_penalty = g->repeat_penalty, .top_k = g->top_k,
                                   .repeat_last_n = g->repeat_last_n, .seed = g->seed, .no_special = g->no_special };
    return 0;
}

static int decode_event(ms_cw_msg_t *msg, const Moeshard__GenEvent *e, ms_err_t *err)
{
    ms_cw_event_t *ev = &msg->ev;
    if (e->kind < MS_CW_EV_ACCEPTED || e->kind >= MS_CW_EV_COUNT || e->text.len > MS_CW_TEXT_BYTES_MAX) {
        ms_err_set(err, "GenEvent kind %d or text of %zu bytes out of range", e->kind, e->text.len);
        return -EPROTO;
    }
    *ev = (ms_cw_event_t){ .kind = (ms_cw_event_kind_t)e->kind, .token = e->token, .len = e->text.len,
                           .n_prompt = e->n_prompt, .n_gen = e->n_gen, .n_decode_steps = e->n_decode_steps,
                           .prefill_s = e->prefill_s, .decode_s = e->decode_s, .queued_s = e->queued_s,
                           .weights_bytes_per_token = e->weights_bytes_per_token, .kv_bytes = e->kv_bytes,
                           .peak_rss_bytes = e->peak_rss_bytes, .seed = e->seed, .threads = e->threads,
                           .n_hosts = e->n_hosts, .wire = dtype_ms(e->wire), .net_bytes_decode = e->net_bytes_decode };
    if (e->text.len)
        memcpy(ev->text, e->text.data, e->text.len);
    int rc = copy_str(ev->reason, sizeof(ev->reason), e->reason, "GenEvent.reason", err);
    rc = rc ? rc : copy_str(ev->message, sizeof(ev->message), e->message, "GenEvent.message", err);
    return rc ? rc : copy_str(ev->kernels, sizeof(ev->kernels), e->kernels, "GenEvent.kernels", err);
}

static int decode_host(ms_cw_host_t *h, const Moeshard__HostStatus *p, ms_err_t *err)
{
    *h = (ms_cw_host_t){ .slices_held = p->slices_held, .memory_bytes = p->memory_bytes,
                         .last_reply_age_ms = p->last_reply_age_ms, .rtt_ms_mean = p->rtt_ms_mean,
                         .bytes_sent = p->bytes_sent, .bytes_received = p->bytes_received, .batches = p->batches };
    int rc = copy_str(h->state, sizeof(h->state), p->state, "HostStatus.state", err);
    return rc ? rc : copy_str(h->endpoint, sizeof(h->endpoint), p->endpoint, "HostStatus.endpoint", err);
}

static int decode_status(ms_cw_msg_t *msg, const Moeshard__StatusReply *s, ms_err_t *err)
{
    ms_cw_status_t *st = &msg->status;
    if (s->n_hosts > MS_HOSTS_MAX) {
        ms_err_set(err, "StatusReply lists %zu hosts (at most %d)", s->n_hosts, MS_HOSTS_MAX);
        return -EPROTO;
    }
    *st = (ms_cw_status_t){ .uptime_ms = s->uptime_ms, .active = s->active, .queued = s->queued,
                            .n_seq_max = s->n_seq_max, .requests_done = s->requests_done,
                            .tokens_generated = s->tokens_generated, .prompt_tokens = s->prompt_tokens,
                            .decode_tok_s = s->decode_tok_s, .prefill_tok_s = s->prefill_tok_s,
                            .wire = dtype_ms(s->wire), .epoch = s->epoch, .hosts_down = s->hosts_down,
                            .failover_slots = s->failover_slots };
    int rc = copy_str(st->model, sizeof(st->model), s->model, "StatusReply.model", err);
    rc = rc ? rc : copy_str(st->arch, sizeof(st->arch), s->arch, "StatusReply.arch", err);
    rc = rc ? rc : copy_str(st->chat_family, sizeof(st->chat_family), s->chat_template_family,
                            "StatusReply.chat_template_family", err);
    if (rc || !s->n_hosts)
        return rc;
    st->hosts = calloc(s->n_hosts, sizeof(*st->hosts));
    if (!st->hosts)
        return -ENOMEM;
    st->n_hosts = (uint32_t)s->n_hosts;
    for (size_t i = 0; !rc && i < s->n_hosts; i++)
        rc = decode_host(&st->hosts[i], s->hosts[i], err);
    return rc;
}

static int decode_error(ms_cw_msg_t *msg, const Moeshard__Error *e, ms_err_t *err)
{
    msg->error.code = e->code;
    return copy_str(msg->error.message, sizeof(msg->error.message), e->message, "Error.message", err);
}

static int decode_kind(ms_cw_msg_t *msg, const Moeshard__Envelope *env, ms_err_t *err)
{
    switch (env->kind_case) {
    case MOESHARD__ENVELOPE__KIND_GENERATE: msg->kind = MS_CW_GENERATE; return decode_generate(msg, env->generate, err);
    case MOESHARD__ENVELOPE__KIND_CANCEL: msg->kind = MS_CW_CANCEL; return 0;
    case MOESHARD__ENVELOPE__KIND_EVENT: msg->kind = MS_CW_EVENT; return decode_event(msg, env->event, err);
    case MOESHARD__ENVELOPE__KIND_STATUS_QUERY: msg->kind = MS_CW_STATUS_QUERY; return 0;
    case MOESHARD__ENVELOPE__KIND_STATUS: msg->kind = MS_CW_STATUS; return decode_status(msg, env->status, err);
    case MOESHARD__ENVELOPE__KIND_ERROR: msg->kind = MS_CW_ERROR; return decode_error(msg, env->error, err);
    case MOESHARD__ENVELOPE__KIND_HELLO:
        msg->kind = MS_CW_JOIN;
        if (!env->hello->endpoint || !env->hello->endpoint[0]) {
            ms_err_set(err, "a Hello sent to a coordinator must name the host's endpoint (expertd --join)");
            return -EPROTO;
        }
        return copy_str(msg->join_endpoint, sizeof(msg->join_endpoint), env->hello->endpoint, "Hello.endpoint", err);
    default:
        ms_err_set(err, "envelope carries no client message (kind %d)", (int)env->kind_case);
        return -EPROTO;
    }
}

int ms_cw_decode(const void *hdr, size_t len, ms_cw_msg_t *msg, ms_err_t *err)
{
    memset(msg, 0, sizeof(*msg));
    if (!hdr || len > MS_WIRE_HEADER_BYTES_MAX) {
        ms_err_set(err, "header of %zu bytes (at most %u)", len, MS_WIRE_HEADER_BYTES_MAX);
        return -EPROTO;
    }
    Moeshard__Envelope *env = moeshard__envelope__unpack(NULL, len, hdr);
    if (!env) {
        ms_err_set(err, "the header is not a moeshard Envelope");
        return -EPROTO;
    }
    int rc;
    if (env->version_major != MS_WIRE_VERSION_MAJOR) {
        ms_err_set(err, "protocol version %u.%u (this side speaks %d.x)", env->version_major, env->version_minor,
                   MS_WIRE_VERSION_MAJOR);
        rc = -EPROTO;
    } else {
        msg->request_id = env->request_id;
        rc = decode_kind(msg, env, err);
    }
    moeshard__envelope__free_unpacked(env, NULL);
    return rc;
}

void ms_cw_msg_clear(ms_cw_msg_t *msg)
{
    if (!msg)
        return;
    free(msg->prompt_buf);
    free(msg->status.hosts);
    msg->prompt_buf = NULL;
    msg->status.hosts = NULL;
    msg->status.n_hosts = 0;
}
