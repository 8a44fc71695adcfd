/* The coordinator's client endpoint (serve.h). One thread owns the ROUTER
 * socket; the scheduler's callback hands events over through an inproc
 * PUSH/PULL pair, because ZeroMQ sockets are not shared between threads. */
#include "serve.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "chat.h"
#include "client_wire.h"
#include "log.h"
#include "notify.h"
#include "wire_zmq.h"

#define SERVE_EV_TEXT_MAX MS_CW_TEXT_BYTES_MAX

/* What the scheduler thread hands to the server thread for one event. */
typedef struct {
    ms_gen_event_kind_t kind;
    uint64_t id;
    int32_t token;
    uint32_t len;
    ms_gen_stats_t st;
    char reason[MS_CW_REASON_BYTES_MAX + 1];
    char message[MS_WIRE_ERROR_BYTES_MAX + 1];
    char text[SERVE_EV_TEXT_MAX];
} serve_ev_t;

/* A client request in flight. */
typedef struct {
    bool used;
    uint64_t sched_id;
    uint64_t client_id;
    unsigned char route[MS_WIRE_ID_BYTES_MAX];
    size_t route_len;
    uint64_t seed;
    bool client_gone;
} serve_req_t;

struct coord_server {
    coord_server_params_t p;
    void *zctx, *router, *push, *pull;
    ms_curve_zap_t *zap;          /* admits the allowlisted clients; NULL in plaintext */
    ms_curve_allow_t *zap_allow;  /* clients and joining hosts, when both are listed: what zap admits */
    char inproc[64];
    serve_req_t *reqs;            /* [n_reqs] */
    int n_reqs;
    unsigned char *hdr;           /* encoding buffer, MS_WIRE_HEADER_BYTES_MAX */
    serve_ev_t ev_out;            /* the scheduler thread's staging copy */
    serve_ev_t ev_in;             /* the server thread's */
    ms_cw_msg_t msg;
    double t_start;
    char chat_family[MS_CW_FAMILY_BYTES_MAX + 1]; /* for StatusReply; "" when not recognised */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------- the scheduler's side */

void coord_server_on_event(void *ctx, const ms_gen_event_t *ev)
{
    coord_server_t *s = ctx;
    serve_ev_t *e = &s->ev_out;
    e->kind = ev->kind;
    e->id = ev->id;
    e->token = ev->token;
    e->len = 0;
    e->reason[0] = e->message[0] = '\0';
    if (ev->kind == MS_GEN_TOKEN) {
        e->len = (uint32_t)(ev->len < SERVE_EV_TEXT_MAX ? ev->len : SERVE_EV_TEXT_MAX);
        memcpy(e->text, ev->text, e->len);
    } else if (ev->kind == MS_GEN_DONE) {
        e->st = *ev->stats;
        snprintf(e->reason, sizeof(e->reason), "%s", ev->reason);
    } else {
        snprintf(e->message, sizeof(e->message), "%s", ev->message);
    }
    size_t bytes = offsetof(serve_ev_t, text) + e->len;
    /* inproc with no high-water mark: this never blocks the scheduler */
    if (zmq_send(s->push, e, bytes, 0) < 0)
        ms_log_error("request %" PRIu64 ": handing an event to the client thread failed: %s", ev->id,
                     zmq_strerror(zmq_errno()));
}

/* ------------------------------------------------------------- replies */

static void send_to(coord_server_t *s, const unsigned char *route, size_t route_len, size_t len, bool *ret_gone)
{
    int rc = ms_wire_zmq_send(s->router, route, route_len, s->hdr, len, NULL, 0);
    if (rc == -EHOSTUNREACH && ret_gone)
        *ret_gone = true;
    else if (rc)
        ms_log_warn("sending a reply to a client failed: %s", zmq_strerror(-rc));
}

static void reply_error(coord_server_t *s, const unsigned char *route, size_t route_len, uint64_t client_id,
                        int code, const char *message)
{
    size_t len;
    if (ms_cw_encode_error(client_id, code, message, s->hdr, MS_WIRE_HEADER_BYTES_MAX, &len) == 0)
        send_to(s, route, route_len, len, NULL);
}

static void send_event(coord_server_t *s, serve_req_t *r, const ms_cw_event_t *ev)
{
    size_t len;
    int rc = ms_cw_encode_event(r->client_id, ev, s->hdr, MS_WIRE_HEADER_BYTES_MAX, &len);
    if (rc) {
        ms_log_error("request %" PRIu64 ": encoding an event failed: %s", r->sched_id, strerror(-rc));
        return;
    }
    bool gone = false;
    send_to(s, r->route, r->route_len, len, &gone);
    if (gone && !r->client_gone) {
        /* the client disconnected: its tokens would go nowhere */
        r->client_gone = true;
        ms_log_info("request %" PRIu64 ": the client is gone; cancelling", r->sched_id);
        ms_sched_cancel(s->p.sched, r->sched_id);
    }
}

static serve_req_t *find_sched(coord_server_t *s, uint64_t id)
{
    for (int i = 0; i < s->n_reqs; i++)
        if (s->reqs[i].used && s->reqs[i].sched_id == id)
            return &s->reqs[i];
    return NULL;
}

static serve_req_t *find_client(coord_server_t *s, const void *route, size_t route_len, uint64_t client_id)
{
    for (int i = 0; i < s->n_reqs; i++) {
        serve_req_t *r = &s->reqs[i];
        if (r->used && r->client_id == client_id && r->route_len == route_len && !memcmp(r->route, route, route_len))
            return r;
    }
    return NULL;
}

/* The figures of `moeshard run`'s summary line. */
static void fill_summary(coord_server_t *s, const serve_req_t *r, const ms_gen_stats_t *st, ms_cw_event_t *ev)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    ms_backend_net_stats_t ns = { 0 };
    if (s->p.n_hosts)
        ms_backend_net_stats(s->p.backend, &ns);
    ev->n_prompt = st->n_prompt;
    ev->n_gen = st->n_gen;
    ev->n_decode_steps = st->n_decode_steps;
    ev->prefill_s = st->prefill_s;
    ev->decode_s = st->decode_s;
    ev->queued_s = st->queued_s;
    ev->weights_bytes_per_token = s->p.m->bytes_per_token + ns.expert_bytes_per_token;
    ev->kv_bytes = ms_sched_kv_bytes(s->p.sched);
    ev->peak_rss_bytes = (uint64_t)ru.ru_maxrss * 1024;
    snprintf(ev->kernels, sizeof(ev->kernels), "%s", ms_sched_kernels_name(s->p.sched));
    ev->threads = ms_sched_threads(s->p.sched);
    ev->seed = r->seed;
    ev->n_hosts = s->p.n_hosts ? ms_backend_net_n_hosts(s->p.backend) : 0;
    ev->wire = s->p.wire;
    ev->net_bytes_decode = st->net_bytes_decode;
}

/* One event from the scheduler, to its client. */
static void forward_event(coord_server_t *s, const serve_ev_t *e)
{
    serve_req_t *r = find_sched(s, e->id);
    if (!r)
        return; /* its client slot was never filled (submit failed) */
    static ms_cw_event_t ev;
    memset(&ev, 0, offsetof(ms_cw_event_t, text));
    ev.token = e->token;
    if (e->kind == MS_GEN_TOKEN) {
        ev.kind = MS_CW_EV_TEXT;
        ev.len = e->len;
        memcpy(ev.text, e->text, e->len);
        ev.reason[0] = ev.message[0] = ev.kernels[0] = '\0';
    } else if (e->kind == MS_GEN_DONE) {
        ev = (ms_cw_event_t){ .kind = MS_CW_EV_DONE };
        snprintf(ev.reason, sizeof(ev.reason), "%s", e->reason);
        fill_summary(s, r, &e->st, &ev);
        ms_log_info("request %" PRIu64 ": %s after %d tokens (prompt %d tokens, %.3f s queued, %.3f s prefill, "
                    "%.3f s decode)", r->sched_id, !strcmp(e->reason, "cancelled") ? "cancelled" : "done",
                    e->st.n_gen, e->st.n_prompt, e->st.queued_s, e->st.prefill_s, e->st.decode_s);
    } else {
        ev = (ms_cw_event_t){ .kind = MS_CW_EV_ERROR };
        snprintf(ev.message, sizeof(ev.message), "%s", e->message);
        ms_log_error("request %" PRIu64 ": %s", r->sched_id, e->message);
    }
    if (!r->client_gone || e->kind != MS_GEN_TOKEN)
        send_event(s, r, &ev);
    if (e->kind != MS_GEN_TOKEN)
        r->used = false;
}

static void drain_events(coord_server_t *s)
{
    for (;;) {
        int n = zmq_recv(s->pull, &s->ev_in, sizeof(s->ev_in), ZMQ_DONTWAIT);
        if (n < 0)
            return;
        if ((size_t)n < offsetof(serve_ev_t, text) || (size_t)n > sizeof(s->ev_in))
            continue; /* cannot happen: only our own callback writes here */
        forward_event(s, &s->ev_in);
    }
}

/* ------------------------------------------------------------- requests */

static ms_gen_params_t gen_params(const ms_cw_generate_t *g)
{
    ms_gen_params_t p = { .n_predict = g->n_predict, .parse_special = !g->no_special, .add_bos = true };
    p.sp = (ms_sampler_params_t){ .temp = g->temp, .top_k = g->top_k, .top_p = g->top_p, .min_p = g->min_p,
                                  .repeat_penalty = g->repeat_penalty, .repeat_last_n = g->repeat_last_n,
                                  .seed = g->seed };
    return p;
}

/* Who sent part: its CURVE key (ZAP's User-Id), else its address; NULL when neither is known. */
static const char *client_identity(zmq_msg_t *part)
{
    const char *id = zmq_msg_gets(part, "User-Id");
    if (!id || !id[0])
        id = zmq_msg_gets(part, "Peer-Address");
    return id && id[0] ? id : NULL;
}

/* Refuses (EBUSY, the wait in the message) a client over its request rate:
 * the client is its CURVE key, else its address, else its connection. */
static bool over_rate(coord_server_t *s, const unsigned char *route, size_t route_len, const char *who)
{
    if (!s->p.rate)
        return false;
    const void *key = who ? (const void *)who : route;
    size_t len = who ? strlen(who) : route_len;
    double wait = 0;
    if (ms_ratelimit_take(s->p.rate, key, len, now_s(), &wait) == 0)
        return false;
    char text[160];
    snprintf(text, sizeof(text), "rate limit: at most %d requests a minute from one client; retry in %.0f s",
             s->p.rate_per_min, ceil(wait));
    reply_error(s, route, route_len, s->msg.request_id, EBUSY, text);
    return true;
}

static void on_generate(coord_server_t *s, const unsigned char *route, size_t route_len, const char *who)
{
    const ms_cw_msg_t *m = &s->msg;
    if (over_rate(s, route, route_len, who))
        return;
    if (find_client(s, route, route_len, m->request_id)) {
        reply_error(s, route, route_len, m->request_id, EEXIST, "a request with this id is already running");
        return;
    }
    serve_req_t *r = NULL;
    for (int i = 0; !r && i < s->n_reqs; i++)
        r = s->reqs[i].used ? NULL : &s->reqs[i];
    if (!r) {
        reply_error(s, route, route_len, m->request_id, EBUSY, "the coordinator is at its request limit; try later");
        return;
    }
    ms_gen_params_t gp = gen_params(&m->gen);
    ms_err_t err = { { 0 } };
    uint64_t id;
    int rc = ms_sched_submit(s->p.sched, m->gen.prompt, m->gen.prompt_len, &gp, coord_server_on_event, s, &id, &err);
    if (rc) {
        ms_log_info("refused a request: %s", err.msg);
        reply_error(s, route, route_len, m->request_id, -rc, err.msg);
        return;
    }
    *r = (serve_req_t){ .used = true, .sched_id = id, .client_id = m->request_id, .route_len = route_len,
                        .seed = m->gen.seed };
    memcpy(r->route, route, route_len);
    ms_log_info("request %" PRIu64 ": %zu prompt bytes, n_predict %d, temp %.2f, seed %" PRIu64, id,
                m->gen.prompt_len, m->gen.n_predict, m->gen.temp, m->gen.seed);
    ms_cw_event_t ev = { .kind = MS_CW_EV_ACCEPTED };
    send_event(s, r, &ev);
}

static void on_cancel(coord_server_t *s, const unsigned char *route, size_t route_len)
{
    serve_req_t *r = find_client(s, route, route_len, s->msg.request_id);
    if (!r || ms_sched_cancel(s->p.sched, r->sched_id)) {
        reply_error(s, route, route_len, s->msg.request_id, ENOENT, "no such request (finished or never started)");
        return;
    }
    ms_log_info("request %" PRIu64 ": cancel requested by the client", r->sched_id);
}

/* An expert host asks to join (expertd --join); refusals are answered,
 * acceptance is silent. On a CURVE link the key it authenticated with
 * (ZAP's User-Id) is the key its endpoint is reached with. */
static void on_join(coord_server_t *s, const unsigned char *route, size_t route_len, const char *user_id)
{
    ms_err_t err = { { 0 } };
    int rc = ms_backend_net_join(s->p.backend, s->msg.join_endpoint, s->p.curve_key ? user_id : NULL, &err);
    if (rc) {
        ms_log_warn("expert host %s cannot join: %s", s->msg.join_endpoint, err.msg);
        reply_error(s, route, route_len, s->msg.request_id, -rc, err.msg);
    }
}

static void host_status(coord_server_t *s, int h, ms_cw_host_t *out)
{
    ms_backend_net_host_stats_t hs = { 0 };
    ms_backend_net_host_stats(s->p.backend, h, &hs);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    *out = (ms_cw_host_t){ .slices_held = hs.slices_held, .memory_bytes = hs.memory_bytes,
                           .last_reply_age_ms = hs.last_reply_us ? (now - hs.last_reply_us) / 1000 : -1,
                           .rtt_ms_mean = hs.rtt_ms_mean, .bytes_sent = hs.bytes_sent,
                           .bytes_received = hs.bytes_received, .batches = hs.replies };
    snprintf(out->endpoint, sizeof(out->endpoint), "%s", hs.endpoint ? hs.endpoint : "?");
    snprintf(out->state, sizeof(out->state), "%s", hs.state ? hs.state : "?");
}

static void on_status(coord_server_t *s, const unsigned char *route, size_t route_len)
{
    ms_sched_stats_t ss;
    ms_sched_stats(s->p.sched, &ss);
    ms_cw_status_t st = { .uptime_ms = (uint64_t)((now_s() - s->t_start) * 1e3), .active = ss.active,
                          .queued = ss.queued, .n_seq_max = (uint32_t)s->p.n_seq_max,
                          .requests_done = ss.requests_done, .tokens_generated = ss.tokens_generated,
                          .prompt_tokens = ss.prompt_tokens, .decode_tok_s = ss.decode_tok_s,
                          .prefill_tok_s = ss.prefill_tok_s, .wire = s->p.wire };
    snprintf(st.model, sizeof(st.model), "%s", s->p.model_name);
    snprintf(st.arch, sizeof(st.arch), "%s", ms_arch_name(s->p.m->hp.arch));
    snprintf(st.chat_family, sizeof(st.chat_family), "%s", s->chat_family);
    /* hosts may have joined since the start */
    int n_hosts = s->p.n_hosts ? ms_backend_net_n_hosts(s->p.backend) : 0;
    ms_cw_host_t *hosts = n_hosts > 0 ? calloc((size_t)n_hosts, sizeof(*hosts)) : NULL;
    if (n_hosts > 0 && !hosts) {
        reply_error(s, route, route_len, s->msg.request_id, ENOMEM, "out of memory");
        return;
    }
    for (int h = 0; h < n_hosts; h++)
        host_status(s, h, &hosts[h]);
    st.hosts = hosts;
    st.n_hosts = n_hosts > 0 ? (uint32_t)n_hosts : 0;
    ms_backend_net_stats_t ns;
    if (s->p.n_hosts && ms_backend_net_stats(s->p.backend, &ns) == 0) {
        st.epoch = ns.epoch;
        st.hosts_down = ns.hosts_down;
        st.failover_slots = ns.failover_slots;
    }
    size_t len;
    if (ms_cw_encode_status(s->msg.request_id, &st, s->hdr, MS_WIRE_HEADER_BYTES_MAX, &len) == 0)
        send_to(s, route, route_len, len, NULL);
    free(hosts);
}

/* On CURVE links a key may do what its list allows: clients (--allow)
 * submit, cancel and ask status; expert hosts (--join-allow) join. */
static bool role_allowed(coord_server_t *s, const unsigned char *route, size_t route_len, const char *user_id)
{
    if (!s->p.curve_key)
        return true;
    bool join = s->msg.kind == MS_CW_JOIN;
    if (ms_curve_allow_has_z85(join ? s->p.join_allow : s->p.curve_allow, user_id))
        return true;
    const char *text = join ? "this key may not join: list it in the coordinator's --join-allow"
                            : "this key may only join as an expert host: list it in --allow to submit requests";
    ms_log_warn("serve: key %s refused: %s", user_id ? user_id : "(none)", text);
    reply_error(s, route, route_len, s->msg.request_id, EPERM, text);
    return false;
}

/* One message from a client: [routing id][header]. */
static void on_client(coord_server_t *s, ms_wire_rx_t *rx)
{
    if (rx->n_parts != 2 || rx->n_dropped || ms_wire_rx_size(rx, 0) > MS_WIRE_ID_BYTES_MAX) {
        ms_log_warn("a client sent a message of %d parts (expected 2: a header only); ignored",
                    rx->n_parts + (int)rx->n_dropped);
        if (rx->n_parts >= 1 && ms_wire_rx_size(rx, 0) <= MS_WIRE_ID_BYTES_MAX)
            reply_error(s, ms_wire_rx_data(rx, 0), ms_wire_rx_size(rx, 0), 0, EPROTO,
                        "expected one header frame per message");
        return;
    }
    const unsigned char *route = ms_wire_rx_data(rx, 0);
    size_t route_len = ms_wire_rx_size(rx, 0);
    ms_err_t err = { { 0 } };
    int rc = ms_cw_decode(ms_wire_rx_data(rx, 1), ms_wire_rx_size(rx, 1), &s->msg, &err);
    if (!rc && !role_allowed(s, route, route_len, zmq_msg_gets(&rx->part[1], "User-Id")))
        ; /* refused */
    else if (!rc && s->msg.kind == MS_CW_GENERATE)
        on_generate(s, route, route_len, client_identity(&rx->part[1]));
    else if (!rc && s->msg.kind == MS_CW_CANCEL)
        on_cancel(s, route, route_len);
    else if (!rc && s->msg.kind == MS_CW_STATUS_QUERY)
        on_status(s, route, route_len);
    else if (!rc && s->msg.kind == MS_CW_JOIN)
        on_join(s, route, route_len, zmq_msg_gets(&rx->part[1], "User-Id"));
    else {
        if (!rc)
            snprintf(err.msg, sizeof(err.msg), "a coordinator takes Generate, Cancel and StatusQuery, not kind %d",
                     (int)s->msg.kind);
        ms_log_warn("bad client message: %s", err.msg);
        reply_error(s, route, route_len, s->msg.request_id, EPROTO, err.msg);
    }
    ms_cw_msg_clear(&s->msg);
}

static void drain_clients(coord_server_t *s)
{
    for (;;) {
        ms_wire_rx_t rx;
        int rc = ms_wire_zmq_recv(s->router, &rx, ZMQ_DONTWAIT);
        if (rc == 0)
            on_client(s, &rx);
        ms_wire_rx_close(&rx);
        if (rc)
            return;
    }
}

/* The watchdog's view of the scheduler thread, sampled from this loop: a
 * ping goes out only when a step finished or requests moved since the last
 * one, or when nothing waits for the scheduler. A step stuck past WatchdogSec
 * (a deadlock, a forward pass that never returns) or a hung client loop thus
 * stops the pings, and systemd restarts the coordinator. */
typedef struct {
    ms_notify_pacer_t pacer;
    ms_sched_stats_t last;
    double t_sample;
    bool moved, busy;
} serve_wd_t;

/* How often a busy scheduler is sampled between two pings. */
#define SERVE_WD_SAMPLE_MS 2000

static void wd_sample(coord_server_t *s, serve_wd_t *wd)
{
    ms_sched_stats_t st;
    ms_sched_stats(s->p.sched, &st);
    wd->busy = st.active || st.queued;
    /* only the scheduler thread changes these: clients submitting is not progress */
    wd->moved |= !wd->busy || st.steps != wd->last.steps || st.active != wd->last.active ||
                 st.requests_done != wd->last.requests_done || st.prompt_tokens != wd->last.prompt_tokens;
    wd->last = st;
    wd->t_sample = now_s();
}

static void wd_tick(coord_server_t *s, serve_wd_t *wd)
{
    if (wd->pacer.period_us == 0)
        return;
    if ((now_s() - wd->t_sample) * 1e3 >= SERVE_WD_SAMPLE_MS)
        wd_sample(s, wd);
    if (!ms_notify_pacer_due(&wd->pacer))
        return;
    wd_sample(s, wd);
    if (wd->moved)
        ms_notify_watchdog();
    wd->moved = false;
}

int coord_server_run(coord_server_t *s)
{
    zmq_pollitem_t items[3] = { { .socket = s->router, .events = ZMQ_POLLIN },
                                { .socket = s->pull, .events = ZMQ_POLLIN },
                                { .fd = s->p.sig_fd, .events = ZMQ_POLLIN } };
    serve_wd_t wd = { .moved = true };
    ms_notify_pacer_init(&wd.pacer);
    for (;;) {
        /* idle, only the next ping wakes the loop; busy, the scheduler is sampled too */
        int n = zmq_poll(items, 3, ms_notify_pacer_timeout_ms(&wd.pacer, wd.busy ? SERVE_WD_SAMPLE_MS : -1));
        wd_tick(s, &wd);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            ms_log_error("polling the client sockets failed: %s", zmq_strerror(zmq_errno()));
            return -1;
        }
        if (items[1].revents & ZMQ_POLLIN)
            drain_events(s);
        if (items[0].revents & ZMQ_POLLIN)
            drain_clients(s);
        if (items[2].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            if (read(s->p.sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
                return (int)si.ssi_signo;
        }
    }
}

void coord_server_flush(coord_server_t *s)
{
    drain_events(s);
}

/* ------------------------------------------------------------- creation */

/* Runs on the ZAP thread: each client admitted or refused, with its address and key. */
static void log_zap(void *ctx, bool admitted, const char *address, const char *key, const char *name)
{
    (void)ctx;
    if (admitted)
        ms_log_debug("serve: admitted client %s (key %s%s%s)", address, key, *name ? ", " : "", name);
    else
        ms_log_warn("serve: refused client %s: key %s is not on the allowlist", address, *key ? key : "(none)");
}

/* CURVE on the client endpoint; the ZAP handler serves before the bind. */
static int secure_router(coord_server_t *s, ms_err_t *err)
{
    if (!s->p.curve_key)
        return 0;
    int rc = s->p.join_allow ? ms_curve_allow_union(s->p.curve_allow, s->p.join_allow, &s->zap_allow, err) : 0;
    rc = rc ? rc : ms_curve_zap_start(s->zctx, s->zap_allow ? s->zap_allow : s->p.curve_allow, log_zap, NULL,
                                      &s->zap, err);
    if (!rc && (rc = ms_curve_server_setup(s->router, s->p.curve_key)) != 0)
        ms_err_set(err, "cannot set up CURVE on %s: %s", s->p.listen, zmq_strerror(-rc));
    return rc;
}

static int open_sockets(coord_server_t *s, ms_err_t *err)
{
    int zero = 0, one = 1;
    s->zctx = zmq_ctx_new();
    s->router = s->zctx ? zmq_socket(s->zctx, ZMQ_ROUTER) : NULL;
    s->push = s->zctx ? zmq_socket(s->zctx, ZMQ_PUSH) : NULL;
    s->pull = s->zctx ? zmq_socket(s->zctx, ZMQ_PULL) : NULL;
    if (!s->router || !s->push || !s->pull) {
        ms_err_set(err, "cannot create ZeroMQ sockets: %s", zmq_strerror(zmq_errno()));
        return -ENOMEM;
    }
    snprintf(s->inproc, sizeof(s->inproc), "inproc://coord-events-%p", (void *)s);
    zmq_setsockopt(s->push, ZMQ_SNDHWM, &zero, sizeof(zero));
    zmq_setsockopt(s->pull, ZMQ_RCVHWM, &zero, sizeof(zero));
    zmq_setsockopt(s->router, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
    int rc = ms_wire_zmq_limits(s->router);
    if (rc || zmq_bind(s->pull, s->inproc) || zmq_connect(s->push, s->inproc)) {
        ms_err_set(err, "cannot set up the event channel: %s", zmq_strerror(zmq_errno()));
        return -EIO;
    }
    rc = secure_router(s, err);
    if (rc)
        return rc;
    if (zmq_bind(s->router, s->p.listen)) {
        rc = -zmq_errno();
        ms_err_set(err, "cannot listen on %s: %s", s->p.listen, zmq_strerror(-rc));
        return rc;
    }
    return 0;
}

/* The family status reports, so that 'moeshard chat' renders with the
 * model's own template; "" (clients fall back to chatml) when the model has
 * no template or one no renderer follows. */
static void detect_chat_family(coord_server_t *s)
{
    ms_chat_family_t f;
    ms_err_t e = { { 0 } };
    if (ms_chat_detect(s->p.m->gguf, &f, &e)) {
        ms_log_info("serve: %s; status reports no chat template family", e.msg);
        return;
    }
    snprintf(s->chat_family, sizeof(s->chat_family), "%s", ms_chat_family_name(f));
    ms_log_debug("serve: chat template family %s", s->chat_family);
}

int coord_server_new(const coord_server_params_t *p, coord_server_t **ret_server, ms_err_t *err)
{
    if (!p || !p->listen || !p->m || !p->sched || p->n_seq_max < 1) {
        ms_err_set(err, "server: listen endpoint, model and scheduler are required");
        return -EINVAL;
    }
    coord_server_t *s = calloc(1, sizeof(*s));
    if (!s) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    s->p = *p;
    s->t_start = now_s();
    detect_chat_family(s);
    s->n_reqs = COORD_SERVE_REQUESTS_MAX;
    s->reqs = calloc((size_t)s->n_reqs, sizeof(*s->reqs));
    s->hdr = malloc(MS_WIRE_HEADER_BYTES_MAX);
    int rc = s->reqs && s->hdr ? open_sockets(s, err) : -ENOMEM;
    if (rc == -ENOMEM && err && !err->msg[0])
        ms_err_set(err, "out of memory");
    if (rc) {
        coord_server_destroy(&s);
        return rc;
    }
    *ret_server = s;
    return 0;
}

void coord_server_destroy(coord_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    coord_server_t *s = *self_p;
    if (s->router)
        zmq_close(s->router);
    if (s->push)
        zmq_close(s->push);
    if (s->pull)
        zmq_close(s->pull);
    ms_curve_zap_stop(&s->zap); /* its socket must close before the context ends */
    ms_curve_allow_destroy(&s->zap_allow);
    if (s->zctx)
        zmq_ctx_term(s->zctx);
    free(s->reqs);
    free(s->hdr);
    free(s);
    *self_p = NULL;
}
