/* expertd's request loop. One message at a time: decode and validate,
 * compute on the pool, reply. A bad request gets an Error reply and a log
 * line; nothing a peer sends stops the loop. Buffers are sized at start. */
#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "expert.h"
#include "kernels.h"
#include "limits.h"
#include "log.h"
#include "notify.h"
#include "pool.h"
#include "wire.h"
#include "wire_zmq.h"

typedef struct {
    expertd_store_t *store;
    const ms_hparams_t *hp;
    void *zctx, *sock;
    ms_curve_zap_t *zap;        /* admits the allowlisted coordinators; NULL in plaintext */
    ms_pool_t *pool;
    const ms_kernels_t *kern;
    ms_expert_ws_t *ws;
    int64_t max_rows;           /* (token, slot) pairs the workspace takes */
    ms_wire_msg_t *msg;
    float *x, *out;             /* [MS_WIRE_TOKENS_MAX][d] */
    void *frame;                /* [MS_WIRE_TOKENS_MAX][d] f32: the reply's tensor frame */
    int32_t *ids;               /* [MS_WIRE_SLOTS_MAX] slab indices */
    uint8_t *hdr;               /* [MS_WIRE_HEADER_BYTES_MAX] */
    const void *route;          /* the current peer's routing id */
    size_t route_len;
    struct timespec t0;
    uint64_t batches, tokens, errors, compute_us;
} server_t;

static uint64_t elapsed_us(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - t0->tv_sec) * 1000000u + (uint64_t)((t.tv_nsec - t0->tv_nsec) / 1000);
}

static void peer_name(const server_t *sv, char out[24])
{
    size_t n = sv->route_len < 8 ? sv->route_len : 8;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", ((const uint8_t *)sv->route)[i]);
}

static void send_reply(server_t *sv, size_t hdr_len, const void *frame, size_t frame_bytes)
{
    int rc = ms_wire_zmq_send(sv->sock, sv->route, sv->route_len, sv->hdr, hdr_len, frame, frame_bytes);
    if (rc)
        ms_log_warn("reply not sent: %s", zmq_strerror(-rc));
}

/* Logs the refusal once and tells the peer why. */
static void reply_error(server_t *sv, const ms_wire_head_t *h, int code, const char *text)
{
    char peer[24];
    peer_name(sv, peer);
    sv->errors++;
    ms_log_warn("peer %s request %llu: refused (%s): %s", peer, (unsigned long long)h->request_id,
                strerror(code), text);
    size_t len;
    ms_err_t e = { { 0 } };
    if (ms_wire_encode_error(h, code, text, sv->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &e) == 0)
        send_reply(sv, len, NULL, 0);
    else
        ms_log_error("cannot encode an Error reply: %s", e.msg);
}

static void fill_stats(const server_t *sv, ms_wire_stats_t *st)
{
    *st = (ms_wire_stats_t){ .uptime_ms = elapsed_us(&sv->t0) / 1000, .batches = sv->batches,
                             .tokens = sv->tokens, .errors = sv->errors,
                             .slices_held = expertd_store_n_served(sv->store),
                             .slices_failed = expertd_store_n_failed(sv->store),
                             .memory_bytes = expertd_store_bytes(sv->store), .compute_us = sv->compute_us };
}

static void reply_stats(server_t *sv, const ms_wire_head_t *h)
{
    ms_wire_stats_t st;
    fill_stats(sv, &st);
    size_t len;
    ms_err_t e = { { 0 } };
    if (ms_wire_encode_stats(h, &st, sv->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &e) == 0)
        send_reply(sv, len, NULL, 0);
    else
        reply_error(sv, h, EMSGSIZE, e.msg);
}

static void reply_hello(server_t *sv, const ms_wire_head_t *h)
{
    ms_wire_hello_t hello;
    expertd_store_hello(sv->store, &hello);
    hello.cores = (uint32_t)ms_pool_default_threads();
    size_t len;
    ms_err_t e = { { 0 } };
    if (ms_wire_encode_hello(h, &hello, sv->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &e) == 0)
        send_reply(sv, len, NULL, 0);
    else
        reply_error(sv, h, EMSGSIZE, e.msg);
}

/* Validates the batch against what this host serves and computes it into sv->out. */
static int compute(server_t *sv, const ms_wire_batch_t *b, const void *frame, ms_err_t *err)
{
    int rc = ms_wire_check_batch(b, sv->hp->n_layer, sv->hp->n_embd, sv->hp->n_expert, expertd_store_held,
                                 sv->store, err);
    if (rc)
        return rc;
    int64_t slots = (int64_t)b->n_tokens * b->k;
    if (slots > sv->max_rows) {
        ms_err_set(err, "layer %d: %d tokens x %d slots exceed this host's %lld (k at most the model's %d)",
                   b->layer, b->n_tokens, b->k, (long long)sv->max_rows, sv->hp->n_expert_used);
        return -EMSGSIZE;
    }
    for (int64_t s = 0; s < slots; s++)
        sv->ids[s] = b->ids[s] < 0 ? -1 : expertd_store_local(sv->store, b->layer, b->ids[s]);
    const ms_weight_t *w = expertd_store_weights(sv->store, b->layer);
    if (!w) /* the layer holds nothing, so every slot is empty (checked above) */
        w = expertd_store_any_weights(sv->store);
    int64_t d = b->hidden;
    ms_wire_to_f32(b->dtype, frame, (size_t)b->n_tokens * (size_t)d, sv->x);
    rc = ms_expert_ffn(sv->pool, sv->kern, &w[0], &w[1], &w[2], sv->x, d, b->n_tokens, sv->ids, b->weights, b->k,
                       sv->out, d, sv->ws);
    if (rc)
        ms_err_set(err, "layer %d: the expert computation refused the batch", b->layer);
    return rc;
}

static void serve_batch(server_t *sv)
{
    const ms_wire_msg_t *m = sv->msg;
    const ms_wire_batch_t *b = &m->batch;
    ms_err_t err = { { 0 } };
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    int rc = compute(sv, b, m->frame, &err);
    if (rc) {
        reply_error(sv, &m->head, -rc, err.msg);
        return;
    }
    size_t n = (size_t)b->n_tokens * (size_t)b->hidden, len;
    ms_wire_from_f32(b->dtype, sv->out, n, sv->frame);
    ms_wire_result_t r = { .status = 0, .layer = b->layer, .n_tokens = b->n_tokens, .hidden = b->hidden,
                           .dtype = b->dtype };
    rc = ms_wire_encode_result(&m->head, &r, sv->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &err);
    if (rc) {
        reply_error(sv, &m->head, -rc, err.msg);
        return;
    }
    send_reply(sv, len, sv->frame, n * ms_wire_dtype_bytes(b->dtype));
    uint64_t us = elapsed_us(&t);
    sv->batches++;
    sv->tokens += (uint64_t)b->n_tokens;
    sv->compute_us += us;
    ms_log_debug("request %llu: layer %d, %d tokens x %d slots (%s) in %llu us",
                 (unsigned long long)m->head.request_id, b->layer, b->n_tokens, b->k, ms_wire_dtype_name(b->dtype),
                 (unsigned long long)us);
}

/* Load/Unload: the layer is rebuilt now (batches wait meanwhile; the
 * coordinator dispatches to a host only the slices it reported loaded), and
 * the reply is this host's Hello, listing what it now serves. */
static void serve_load(server_t *sv)
{
    const ms_wire_msg_t *m = sv->msg;
    const ms_wire_load_t *l = &m->load;
    bool load = m->kind == MS_WIRE_LOAD;
    if (load && strcmp(l->source, MS_WIRE_SOURCE_LOCAL) != 0) {
        reply_error(sv, &m->head, ENOTSUP, "Load: this expertd reads slices only from its own model file (source \"" MS_WIRE_SOURCE_LOCAL "\")");
        return;
    }
    ms_err_t err = { { 0 } };
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    int rc = expertd_store_apply(sv->store, l->layer, l->experts, (int)l->n_experts, load, &err);
    if (rc) {
        reply_error(sv, &m->head, -rc, err.msg);
        return;
    }
    ms_log_info("%s layer %d: %u experts in %.1f ms; now serving %u slices (%.1f MiB)", load ? "loaded" : "unloaded",
                l->layer, l->n_experts, (double)elapsed_us(&t) / 1e3, expertd_store_n_served(sv->store),
                (double)expertd_store_bytes(sv->store) / 1048576.0);
    reply_hello(sv, &m->head);
}

/* One received message: [routing id] header [frames]. */
static void handle(server_t *sv, ms_wire_rx_t *rx)
{
    sv->route = ms_wire_rx_data(rx, 0);
    sv->route_len = ms_wire_rx_size(rx, 0);
    ms_err_t err = { { 0 } };
    int rc = ms_wire_rx_decode(rx, 1, sv->msg, &err);
    if (rc) {
        reply_error(sv, &sv->msg->head, -rc, err.msg);
        return;
    }
    const ms_wire_head_t *h = &sv->msg->head;
    switch (sv->msg->kind) {
    case MS_WIRE_BATCH:
        serve_batch(sv);
        break;
    case MS_WIRE_HELLO:
        reply_hello(sv, h);
        break;
    case MS_WIRE_HEARTBEAT:
    case MS_WIRE_STATS:
        reply_stats(sv, h);
        break;
    case MS_WIRE_LOAD:
    case MS_WIRE_UNLOAD:
        serve_load(sv);
        break;
    default:
        snprintf(err.msg, sizeof(err.msg), "%s is a reply, not a request", ms_wire_kind_name(sv->msg->kind));
        reply_error(sv, h, EPROTO, err.msg);
        break;
    }
}

static int setup_compute(server_t *sv, int threads, ms_err_t *err)
{
    const ms_weight_t *w = expertd_store_any_weights(sv->store);
    size_t d = (size_t)sv->hp->n_embd;
    int k_max = sv->hp->n_expert_used > 0 ? sv->hp->n_expert_used : 1;
    sv->max_rows = (int64_t)MS_WIRE_TOKENS_MAX * (k_max < MS_TOPK_MAX ? k_max : MS_TOPK_MAX);
    sv->kern = ms_kernels_best();
    int rc = ms_pool_new(threads, &sv->pool);
    if (!rc)
        rc = ms_expert_ws_new(&w[0], &w[1], &w[2], sv->max_rows, &sv->ws);
    if (!rc)
        rc = ms_wire_msg_new(&sv->msg);
    if (rc) {
        ms_err_set(err, "cannot set up %d compute threads and their buffers: %s", threads, strerror(-rc));
        return rc;
    }
    sv->x = aligned_alloc(64, MS_WIRE_TOKENS_MAX * d * sizeof(float));
    sv->out = aligned_alloc(64, MS_WIRE_TOKENS_MAX * d * sizeof(float));
    sv->frame = malloc(MS_WIRE_TOKENS_MAX * d * sizeof(float));
    sv->ids = malloc(MS_WIRE_SLOTS_MAX * sizeof(int32_t));
    sv->hdr = malloc(MS_WIRE_HEADER_BYTES_MAX);
    if (!sv->x || !sv->out || !sv->frame || !sv->ids || !sv->hdr) {
        ms_err_set(err, "out of memory for the request buffers");
        return -ENOMEM;
    }
    return 0;
}

/* Runs on the ZAP thread: every admission decision, with the peer's address and key. */
static void log_zap(void *ctx, bool admitted, const char *address, const char *key, const char *name)
{
    (void)ctx;
    if (admitted)
        ms_log_info("admitted coordinator %s (key %s%s%s)", address, key, *name ? ", " : "", name);
    else
        ms_log_warn("refused connection from %s: key %s is not on the allowlist", address, *key ? key : "(none)");
}

/* The ZAP handler is serving before the bind, so no connection gets in unchecked. */
static int setup_curve(server_t *sv, const expertd_security_t *sec, ms_err_t *err)
{
    if (!sec || !sec->key)
        return 0;
    int rc = ms_curve_zap_start(sv->zctx, sec->allow, log_zap, NULL, &sv->zap, err);
    if (!rc && (rc = ms_curve_server_setup(sv->sock, sec->key)) != 0)
        ms_err_set(err, "cannot set up CURVE on the listening socket: %s", zmq_strerror(-rc));
    return rc;
}

static int setup_socket(server_t *sv, const char *listen, const expertd_security_t *sec, ms_err_t *err)
{
    sv->zctx = zmq_ctx_new();
    sv->sock = sv->zctx ? zmq_socket(sv->zctx, ZMQ_ROUTER) : NULL;
    if (!sv->sock) {
        ms_err_set(err, "cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        return -ENOMEM;
    }
    int rc = setup_curve(sv, sec, err);
    if (rc)
        return rc;
    rc = ms_wire_zmq_limits(sv->sock);
    if (!rc && zmq_bind(sv->sock, listen) != 0)
        rc = -zmq_errno();
    if (rc)
        ms_err_set(err, "cannot listen on %s: %s", listen, zmq_strerror(-rc));
    return rc;
}

static void teardown(server_t *sv)
{
    if (sv->sock)
        zmq_close(sv->sock);
    ms_curve_zap_stop(&sv->zap); /* its socket too must close before the context ends */
    if (sv->zctx)
        zmq_ctx_term(sv->zctx);
    ms_expert_ws_destroy(&sv->ws);
    ms_pool_destroy(&sv->pool);
    ms_wire_msg_destroy(&sv->msg);
    free(sv->x);
    free(sv->out);
    free(sv->frame);
    free(sv->ids);
    free(sv->hdr);
}

static void notify_ready(const server_t *sv, const char *listen, int threads)
{
    double mib = (double)expertd_store_bytes(sv->store) / 1048576.0;
    uint32_t n = expertd_store_n_served(sv->store);
    ms_log_info("serving %u slices (%.1f MiB) on %s with %d threads (%s kernels)", n, mib, listen, threads,
                sv->kern->name);
    char status[MS_NOTIFY_STATUS_BYTES_MAX];
    snprintf(status, sizeof(status), "holding %u slices (%.1f MB), serving on %s", n,
             (double)expertd_store_bytes(sv->store) / 1e6, listen);
    ms_notify_ready(status); /* a no-op without NOTIFY_SOCKET */
}

/* Waits up to timeout_ms (-1: no limit) for a request or a signal; returns 1 to stop. */
static int step(server_t *sv, int sig_fd, int timeout_ms)
{
    zmq_pollitem_t items[2] = { { sv->sock, 0, ZMQ_POLLIN, 0 }, { NULL, sig_fd, ZMQ_POLLIN, 0 } };
    if (zmq_poll(items, 2, timeout_ms) < 0)
        return zmq_errno() == EINTR ? 0 : -zmq_errno();
    if (items[1].revents & ZMQ_POLLIN) {
        struct signalfd_siginfo si;
        if (read(sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
            ms_log_info("%s: stopping", strsignal((int)si.ssi_signo));
        return 1;
    }
    if (!(items[0].revents & ZMQ_POLLIN))
        return 0;
    ms_wire_rx_t rx;
    int rc = ms_wire_zmq_recv(sv->sock, &rx, ZMQ_DONTWAIT);
    if (rc == 0)
        handle(sv, &rx);
    else if (rc != -EAGAIN)
        ms_log_warn("receive failed: %s", zmq_strerror(-rc));
    ms_wire_rx_close(&rx);
    return 0;
}

int expertd_serve(expertd_store_t *store, const char *listen, int threads, const expertd_security_t *sec, int sig_fd,
                  ms_err_t *err)
{
    server_t sv = { .store = store, .hp = expertd_store_hparams(store) };
    clock_gettime(CLOCK_MONOTONIC, &sv.t0);
    int rc = setup_compute(&sv, threads, err);
    if (!rc)
        rc = setup_socket(&sv, listen, sec, err);
    if (!rc) {
        notify_ready(&sv, listen, threads);
        /* the watchdog is pinged from this loop only: a request that never
         * finishes stops the pings and systemd restarts the daemon */
        ms_notify_pacer_t wd;
        ms_notify_pacer_init(&wd);
        while ((rc = step(&sv, sig_fd, ms_notify_pacer_timeout_ms(&wd, -1))) == 0)
            if (ms_notify_pacer_due(&wd))
                ms_notify_watchdog();
        if (rc < 0)
            ms_err_set(err, "polling %s failed: %s", listen, zmq_strerror(-rc));
        rc = rc < 0 ? rc : 0;
        ms_notify_stopping();
        ms_log_info("stopped after %llu batches (%llu tokens), %llu refused requests",
                    (unsigned long long)sv.batches, (unsigned long long)sv.tokens, (unsigned long long)sv.errors);
    }
    teardown(&sv);
    return rc;
}
