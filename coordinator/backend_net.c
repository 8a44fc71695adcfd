/* Network expert backend: a layer's routed experts computed on expertd hosts
 * over ZeroMQ (docs/protocol.md), one ExpertBatch per host per layer. */
#include "backend.h"

#include <errno.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "curve.h"
#include "limits.h"
#include "log.h"
#include "placement.h"
#include "shard.h"
#include "wire_zmq.h"

/* How long the start waits for the handshakes (a reachable host takes
 * milliseconds); a host not connected within the grace, or stuck longer, is
 * left to the Hello round. */
#define NET_HANDSHAKE_MS_MAX 3000
#define NET_CONNECT_GRACE_MS 500

_Static_assert(MS_HOSTS_MAX <= UINT16_MAX, "a host index fits the slice table's uint16");

typedef enum { HOST_UP, HOST_DOWN, HOST_LOADING } host_state_t;
static const char *const host_state_names[] = { "up", "down", "loading" };

typedef struct {
    char *endpoint;          /* owned copy, for messages */
    void *sock;              /* DEALER connected to the host's ROUTER */
    ms_curve_monitor_t *handshake; /* watches the first handshake at start, then closed */
    /* the request in flight */
    uint64_t request_id;
    bool pending;            /* sent and not yet answered */
    int send_rc;             /* -errno of a failed send, reported by wait */
    int32_t n_tok;           /* rows of this host's batch */
    int32_t cur_tok;         /* step token that owns the last row (grouping) */
    int32_t *tok;            /* [max_tokens] row -> token of the step */
    int32_t *ids;            /* [max_tokens][k] global expert ids, -1 = slot on another host */
    float *w;                /* [max_tokens][k] */
    unsigned char *frame;    /* [max_tokens][d] of the wire dtype, handed to ZeroMQ without a copy */
    atomic_int frame_held;   /* 1 while ZeroMQ holds frame (cleared from its I/O thread) */
    ms_wire_rx_t rx;         /* the reply, kept (no copy) until combined */
    const void *reply;       /* its tensor frame, [n_tok][d] of the wire dtype */
    /* figures for status (published with the backend's counters) */
    uint32_t slices_held;
    uint64_t memory_bytes;
    uint64_t bytes_sent, bytes_received, replies, rtt_us_sum;
    int64_t sent_at_us, last_reply_us; /* last_reply_us 0: none yet */
    /* health */
    host_state_t state;
    void *mon;               /* PAIR socket receiving the DEALER's connection events */
    int64_t ctl_sent_us;     /* last Heartbeat/Hello/Load sent outside a dispatch */
    bool ctl_pending;        /* that request is unanswered */
    uint64_t ctl_id;
    uint64_t *held;          /* [words] the slices it last reported holding */
    uint64_t capacity;       /* bytes of slices it offers to hold (Hello); 0: not stated */
    char server_key[MS_CURVE_Z85_BYTES + 1]; /* a joined host's key (authenticated when it joined); "": host keys file */
    bool failing;            /* this dispatch: its rows go to replicas */
    bool joining;            /* loading its share of the next placement; not in the table yet */
    bool ctl_sync;           /* the control request in flight is a Load/Unload */
    /* failover rows it computes for hosts that are down: one (token, expert) slot per row, k = 1 */
    bool fo_pending;
    uint64_t fo_id;
    int fo_send_rc;
    int32_t fo_n;
    int32_t *fo_slot;        /* [max_tokens] step slot t * k + j of each row */
    int32_t *fo_ids;         /* [max_tokens] */
    float *fo_w;             /* [max_tokens] all 1: the host returns each expert's output unweighted */
} net_host_t;

/* What the Hello round collects before the slice table is built. */
typedef struct {
    uint64_t *bits;          /* [n_hosts][words]: slice held */
    size_t words;
    uint64_t slice_bytes;    /* largest memory_bytes / n_held seen */
} hello_state_t;

typedef struct {
    ms_expert_backend_t base; /* first: the interface pointer is this struct's address */
    const ms_model_t *m;
    ms_backend_net_params_t p;
    int32_t d, n_layer, n_expert, k_max;
    size_t wbytes;            /* bytes of one wire element */
    void *zctx;
    int n_hosts;
    net_host_t *hosts;        /* [n_hosts] */
    zmq_pollitem_t *items;    /* [n_hosts] */
    /* (layer, expert) -> the hosts holding it, in endpoint order:
     * holders[first[s] .. first[s + 1]) for s = layer * n_expert + expert */
    uint32_t *first;          /* [n_layer * n_expert + 1] */
    uint16_t *holders;
    ms_wire_msg_t *msg;       /* decoding storage */
    unsigned char *hdr;       /* encoding buffer, MS_WIRE_HEADER_BYTES_MAX */
    unsigned char *copy;      /* [max_tokens][d] wire: frame sent by copy while ZeroMQ holds a host's own */
    float *conv;              /* [max_tokens][d] a reply in f32 */
    ms_wire_rx_t spare;       /* a reply nobody waits for (stale) */
    hello_state_t *hello;     /* during creation only */
    size_t words;             /* of a slice bitset */
    uint64_t *placed;         /* [n_hosts][words] slices assigned by the placement (replicas > 0) */
    const ms_kernels_t *kern; /* the axpy that recombines failover rows, as expertd combines its own */
    const float *x;           /* the submitted activations, for failover rows */
    uint8_t *slot_state;      /* [max_tokens * k_max] 0 idle, 1 needs a replica, 2 sent to one */
    int32_t *slot_e;          /* [max_tokens * k_max] the expert of a slot that needs a replica */
    float *slot_y;            /* [max_tokens * k_max][d] expert outputs of failover slots */
    /* joining hosts (ms_backend_net_join, any thread) */
    pthread_mutex_t join_lock;
    bool join_lock_init;
    char join_ep[MS_BACKEND_NET_JOIN_QUEUE][MS_BACKEND_NET_ENDPOINT_BYTES];
    char join_key[MS_BACKEND_NET_JOIN_QUEUE][MS_CURVE_Z85_BYTES + 1];
    int n_join;
    uint16_t *next_holders;   /* the next placement (same first[]), while a host joins */
    bool switch_ready;        /* the joining host holds its share: switch when idle */
    bool unload_pending;      /* after a switch: hosts still hold what moved away */
    bool creating;            /* inside ms_backend_net_new: a readable stop_fd cancels */
    ms_wire_load_t load;      /* the Load/Unload being encoded (its expert list is large) */
    int pub_n_hosts;
    /* the dispatch in flight */
    int32_t il, n_tok, k;
    bool submitted;
    uint64_t next_id;
    ms_backend_net_stats_t st;
    /* a copy of st and the hosts' figures, for readers on other threads */
    pthread_mutex_t pub_lock;
    bool pub_lock_init;
    ms_backend_net_stats_t pub;
    ms_backend_net_host_stats_t *pub_hosts; /* [n_hosts] */
} net_backend_t;

ms_backend_net_params_t ms_backend_net_defaults(void)
{
    return (ms_backend_net_params_t){ .wire = MS_WIRE_F32, .deadline_ms = MS_BACKEND_NET_DEADLINE_MS_DEFAULT,
                                      .max_tokens = MS_BATCH_TOKENS_MAX, .pool = NULL, .replicas = 0,
                                      .heartbeat_ms = MS_BACKEND_NET_HEARTBEAT_MS_DEFAULT, .stop_fd = -1 };
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- bounded text for error messages ---- */

typedef struct {
    char buf[MS_ERR_MSG_BYTES];
    size_t len;
    bool full;
} text_t;

static void text_add(text_t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(text_t *t, const char *fmt, ...)
{
    if (t->full)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, sizeof(t->buf) - t->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(t->buf) - t->len) {
        t->full = true;
        t->buf[t->len] = '\0'; /* drop the partial item; the caller ends with "..." */
        return;
    }
    t->len += (size_t)n;
}

/* "tcp://a:1, tcp://b:2", at most a third of a message. */
static void list_endpoints(const net_backend_t *b, text_t *t)
{
    size_t cap = MS_ERR_MSG_BYTES / 3;
    for (int h = 0; h < b->n_hosts && !t->full; h++) {
        if (t->len + strlen(b->hosts[h].endpoint) + 2 > cap) {
            text_add(t, "... (%d hosts)", b->n_hosts);
            return;
        }
        text_add(t, "%s%s", h ? ", " : "", b->hosts[h].endpoint);
    }
}

/* ---- ZeroMQ ---- */

static void frame_released(void *data, void *hint)
{
    (void)data;
    atomic_store_explicit((atomic_int *)hint, 0, memory_order_release);
}

static int send_header(net_host_t *H, const void *hdr, size_t len, bool more)
{
    return zmq_send(H->sock, hdr, len, more ? ZMQ_SNDMORE : 0) < 0 ? -zmq_errno() : 0;
}

/* The host's own frame, without a copy: ZeroMQ releases it from its I/O
 * thread once written, which clears frame_held. */
static int send_frame_zero_copy(net_host_t *H, size_t bytes)
{
    zmq_msg_t part;
    atomic_store_explicit(&H->frame_held, 1, memory_order_relaxed);
    if (zmq_msg_init_data(&part, H->frame, bytes, frame_released, &H->frame_held)) {
        atomic_store_explicit(&H->frame_held, 0, memory_order_relaxed);
        return -zmq_errno();
    }
    if (zmq_msg_send(&part, H->sock, 0) < 0) {
        int e = zmq_errno();
        zmq_msg_close(&part); /* releases the frame through frame_released */
        return -e;
    }
    return 0;
}

/* CURVE client options, and a handshake monitor (also in plaintext: a host
 * that expects CURVE is then named at once), before the connect. */
static int secure_host(net_backend_t *b, net_host_t *H, ms_err_t *err)
{
    if (!b->p.curve_key)
        return ms_curve_monitor_new(b->zctx, H->sock, &H->handshake, err);
    const char *server_key = H->server_key[0] ? H->server_key : ms_curve_hostkeys_find(b->p.host_keys, H->endpoint);
    if (!server_key) {
        ms_err_set(err, "host %s: no server key for it in the host keys file (add a line '%s KEY' with the "
                        "host's .pub key)", H->endpoint, H->endpoint);
        return -EINVAL;
    }
    int rc = ms_curve_client_setup(H->sock, b->p.curve_key, server_key);
    if (rc) {
        ms_err_set(err, "host %s: cannot set up CURVE: %s", H->endpoint, zmq_strerror(-rc));
        return rc;
    }
    return ms_curve_monitor_new(b->zctx, H->sock, &H->handshake, err);
}

static int connect_host(net_backend_t *b, net_host_t *H, ms_err_t *err)
{
    H->sock = zmq_socket(b->zctx, ZMQ_DEALER);
    if (!H->sock) {
        int e = zmq_errno();
        ms_err_set(err, "host %s: cannot create a ZeroMQ socket: %s", H->endpoint, zmq_strerror(e));
        return -e;
    }
    /* a send to a host whose queue is full waits at most one deadline */
    int rc = ms_wire_zmq_limits(H->sock);
    if (!rc && zmq_setsockopt(H->sock, ZMQ_SNDTIMEO, &b->p.deadline_ms, sizeof(b->p.deadline_ms)))
        rc = -zmq_errno();
    if (rc) {
        ms_err_set(err, "host %s: cannot configure its socket: %s", H->endpoint, zmq_strerror(-rc));
        return rc;
    }
    rc = secure_host(b, H, err);
    if (rc)
        return rc;
    if (zmq_connect(H->sock, H->endpoint)) {
        rc = zmq_errno();
        ms_err_set(err, "host '%s': ZeroMQ refuses the endpoint (%s); expected tcp://HOST:PORT", H->endpoint,
                   zmq_strerror(rc));
        return -EINVAL;
    }
    return 0;
}

/* Waits for each host's first handshake, so a refused key, a wrong server
 * key or plaintext on one side fails the start with its reason instead of a Hello timeout.
 * Hosts not up yet are left to the Hello round. Closes the handshake
 * monitors in any case (wait false: only that). */
static int check_handshakes(net_backend_t *b, bool wait, ms_err_t *err)
{
    int64_t t0 = now_ms(), deadline = t0 + (b->p.deadline_ms < NET_HANDSHAKE_MS_MAX ? b->p.deadline_ms : NET_HANDSHAKE_MS_MAX);
    int rc = 0;
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        if (wait && !rc && H->handshake) {
            char peer[MS_CURVE_ENDPOINT_BYTES_MAX + 8];
            snprintf(peer, sizeof(peer), "host %s", H->endpoint);
            int64_t now = now_ms(), grace = t0 + NET_CONNECT_GRACE_MS - now; /* shared by all hosts */
            rc = ms_curve_monitor_wait(H->handshake, peer, deadline > now ? deadline - now : 0, grace > 0 ? grace : 0, err);
            rc = rc < 0 ? rc : 0;
        }
        ms_curve_monitor_destroy(&H->handshake);
    }
    return rc;
}

/* Moves every part of src into dst (whose parts are closed first). */
static void rx_move(ms_wire_rx_t *dst, ms_wire_rx_t *src)
{
    ms_wire_rx_close(dst);
    for (int i = 0; i < src->n_parts; i++) {
        zmq_msg_init(&dst->part[i]);
        zmq_msg_move(&dst->part[i], &src->part[i]);
    }
    dst->n_parts = src->n_parts;
    dst->n_dropped = src->n_dropped;
    ms_wire_rx_close(src);
}

/* Receives the next message of host h into the spare slot if there is one.
 * 1 received, 0 none, -errno. */
static int recv_one(net_backend_t *b, int h, ms_wire_rx_t **ret_rx)
{
    net_host_t *H = &b->hosts[h];
    ms_wire_rx_t *rx = &b->spare;
    int rc = ms_wire_zmq_recv(H->sock, rx, ZMQ_DONTWAIT);
    if (rc == -EAGAIN) {
        ms_wire_rx_close(rx);
        return 0;
    }
    if (rc) {
        ms_wire_rx_close(rx);
        return rc;
    }
    for (int i = 0; i < rx->n_parts; i++) {
        b->st.bytes_received += ms_wire_rx_size(rx, i);
        H->bytes_received += ms_wire_rx_size(rx, i);
    }
    *ret_rx = rx;
    return 1;
}

/* Decodes rx into b->msg. A message with extra parts or that does not decode is a protocol error. */
static int decode_rx(net_backend_t *b, ms_wire_rx_t *rx, ms_err_t *err)
{
    int rc = ms_wire_rx_decode(rx, 0, b->msg, err);
    return rc == -EMSGSIZE ? -EPROTO : rc;
}

/* Polls the sockets of every host until none is pending or deadline_at
 * passes; on_reply handles each awaited reply (decoded in b->msg) and
 * returns 0 or -errno with err set. Stale replies are dropped. */
typedef int (*on_reply_fn)(net_backend_t *b, int h, ms_err_t *err);
static int on_failover_reply(net_backend_t *b, int h, ms_err_t *err);
static void on_control_reply(net_backend_t *b, int h);

static int handle_readable(net_backend_t *b, int h, on_reply_fn on_reply, ms_err_t *err)
{
    net_host_t *H = &b->hosts[h];
    for (;;) {
        ms_wire_rx_t *rx = NULL;
        int rc = recv_one(b, h, &rx);
        if (rc <= 0) {
            if (rc)
                ms_err_set(err, "host %s: receiving failed: %s", H->endpoint, zmq_strerror(-rc));
            return rc;
        }
        ms_err_t derr = { { 0 } };
        rc = decode_rx(b, rx, &derr);
        if (rc) {
            ms_wire_rx_close(rx);
            if (!H->pending && !H->fo_pending) { /* nothing of this dispatch: drop it */
                b->st.stale_dropped++;
                continue;
            }
            ms_err_set(err, "host %s sent a malformed message: %s", H->endpoint, derr.msg);
            return rc;
        }
        uint64_t id = b->msg->head.request_id;
        if (H->pending && id == H->request_id) {
            rx_move(&H->rx, rx);
            H->pending = false;
            H->last_reply_us = now_us();
            if (H->sent_at_us) { /* a batch's reply (the Hello round is not timed) */
                H->replies++;
                H->rtt_us_sum += (uint64_t)(H->last_reply_us - H->sent_at_us);
            }
            rc = on_reply(b, h, err);
        } else if (H->fo_pending && id == H->fo_id) {
            H->fo_pending = false;
            rc = on_failover_reply(b, h, err);
            ms_wire_rx_close(rx);
        } else if (H->ctl_pending && id == H->ctl_id) {
            H->ctl_pending = false;
            on_control_reply(b, h);
            ms_wire_rx_close(rx);
        } else {
            b->st.stale_dropped++;
            ms_wire_rx_close(rx);
        }
        if (rc)
            return rc;
    }
}

static int n_pending(const net_backend_t *b)
{
    int n = 0;
    for (int h = 0; h < b->n_hosts; h++)
        n += b->hosts[h].pending + b->hosts[h].fo_pending;
    return n;
}

static void drain_monitor(net_backend_t *b, int h);

/* Waits up to timeout_ms for messages and connection events and handles
 * them. 0, or the first failure. */
static int poll_once(net_backend_t *b, long timeout_ms, on_reply_fn on_reply, ms_err_t *err)
{
    int n_items = 0;
    for (int h = 0; h < b->n_hosts; h++) {
        b->items[n_items++] = (zmq_pollitem_t){ .socket = b->hosts[h].sock, .events = ZMQ_POLLIN };
        b->items[n_items++] = (zmq_pollitem_t){ .socket = b->hosts[h].mon, .events = ZMQ_POLLIN };
    }
    if (b->creating && b->p.stop_fd >= 0)
        b->items[n_items++] = (zmq_pollitem_t){ .fd = b->p.stop_fd, .events = ZMQ_POLLIN };
    int n = zmq_poll(b->items, n_items, timeout_ms);
    if (n < 0 && zmq_errno() == EINTR)
        return 0;
    if (n < 0) {
        int e = zmq_errno();
        ms_err_set(err, "waiting for expert hosts failed: %s", zmq_strerror(e));
        return -e;
    }
    if (b->creating && b->p.stop_fd >= 0 && (b->items[n_items - 1].revents & ZMQ_POLLIN)) {
        ms_err_set(err, "stopped by a signal while waiting for the expert hosts");
        return -ECANCELED;
    }
    for (int h = 0; h < b->n_hosts; h++) {
        if (b->items[2 * h + 1].revents & ZMQ_POLLIN)
            drain_monitor(b, h);
        if (!(b->items[2 * h].revents & ZMQ_POLLIN))
            continue;
        int rc = handle_readable(b, h, on_reply, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* 0 when nothing is pending any more, -ETIMEDOUT at the deadline, or the first failure. */
static int poll_replies(net_backend_t *b, int64_t deadline_at, on_reply_fn on_reply, ms_err_t *err)
{
    while (n_pending(b) > 0) {
        int64_t left = deadline_at - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        int rc = poll_once(b, (long)left, on_reply, err);
        if (rc)
            return rc;
    }
    return 0;
}

/* Lists the hosts still pending into t. */
static void list_pending(const net_backend_t *b, text_t *t)
{
    int listed = 0;
    for (int h = 0; h < b->n_hosts; h++) {
        if (!b->hosts[h].pending)
            continue;
        if (t->len > MS_ERR_MSG_BYTES / 2) {
            text_add(t, ", ... (%d hosts in all)", n_pending(b));
            return;
        }
        text_add(t, "%s%s", listed++ ? ", " : "", b->hosts[h].endpoint);
    }
}

/* Forgets every request in flight: their replies, if they ever come, are stale. */
static void drop_pending(net_backend_t *b)
{
    for (int h = 0; h < b->n_hosts; h++) {
        b->hosts[h].pending = false;
        b->hosts[h].reply = NULL;
        ms_wire_rx_close(&b->hosts[h].rx);
    }
}

/* ---- Hello: who holds what ---- */


static int check_hello_model(net_backend_t *b, const net_host_t *H, const ms_wire_hello_t *hi, ms_err_t *err)
{
    if (hi->n_layer == b->n_layer && hi->hidden == b->d && hi->n_expert == b->n_expert)
        return 0;
    ms_err_set(err, "host %s serves another model: %d layers, hidden %d, %d experts; this model has %d layers,"
               " hidden %d, %d experts", H->endpoint, hi->n_layer, hi->hidden, hi->n_expert, b->n_layer, b->d,
               b->n_expert);
    return -EINVAL;
}

static int on_hello(net_backend_t *b, int h, ms_err_t *err)
{
    net_host_t *H = &b->hosts[h];
    const ms_wire_msg_t *msg = b->msg;
    int rc = 0;
    if (msg->kind == MS_WIRE_ERROR) {
        ms_err_set(err, "host %s refused Hello: %s (%s)", H->endpoint, msg->error.message, strerror(msg->error.code));
        rc = -EIO;
    } else if (msg->kind != MS_WIRE_HELLO) {
        ms_err_set(err, "host %s answered Hello with %s", H->endpoint, ms_wire_kind_name(msg->kind));
        rc = -EPROTO;
    }
    rc = rc ? rc : check_hello_model(b, H, &msg->hello, err);
    ms_wire_rx_close(&H->rx);
    if (rc)
        return rc;
    hello_state_t *hs = b->hello;
    const ms_wire_hello_t *hi = &msg->hello;
    uint64_t *bits = hs->bits + (size_t)h * hs->words;
    for (uint32_t i = 0; i < hi->n_held; i++) {
        /* ranges were checked against the protocol bounds; now against the model */
        if (hi->held[i].layer >= b->n_layer || hi->held[i].expert >= b->n_expert) {
            ms_err_set(err, "host %s lists slice (layer %d, expert %d) outside the model", H->endpoint,
                       hi->held[i].layer, hi->held[i].expert);
            return -EPROTO;
        }
        size_t s = (size_t)hi->held[i].layer * (size_t)b->n_expert + (size_t)hi->held[i].expert;
        bits[s / 64] |= 1ull << (s % 64);
    }
    memcpy(H->held, bits, hs->words * sizeof(uint64_t));
    H->capacity = hi->capacity_bytes;
    H->slices_held = hi->n_held;
    H->memory_bytes = hi->memory_bytes;
    if (hi->n_held && hi->memory_bytes / hi->n_held > hs->slice_bytes)
        hs->slice_bytes = hi->memory_bytes / hi->n_held;
    return 0;
}

static int send_hellos(net_backend_t *b, ms_err_t *err)
{
    ms_wire_hello_t me = { .host_id = -1 };
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        ms_wire_head_t head = { .request_id = b->next_id++, .epoch = b->st.epoch };
        size_t len;
        int rc = ms_wire_encode_hello(&head, &me, b->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, err);
        rc = rc ? rc : send_header(H, b->hdr, len, false);
        if (rc) {
            ms_err_set(err, "host %s: sending Hello failed: %s", H->endpoint, zmq_strerror(-rc));
            return rc;
        }
        H->request_id = head.request_id;
        H->pending = true;
        b->st.bytes_sent += len;
    }
    return 0;
}

/* Layers without routed experts (deepseek2's leading dense ones) are never dispatched. */
static bool layer_has_experts(const net_backend_t *b, int il)
{
    return !b->m->layers || b->m->layers[il].has_experts;
}

static bool slice_missing(const net_backend_t *b, int il, int e)
{
    size_t s = (size_t)il * (size_t)b->n_expert + (size_t)e;
    return b->first[s] == b->first[s + 1];
}

/* Appends "layer L experts a,b-d" for the slices of layer il nobody holds; counts them. */
static void list_missing_layer(const net_backend_t *b, int il, text_t *t, int *n_missing)
{
    int in_layer = 0;
    for (int e = 0; e < b->n_expert; e++)
        in_layer += slice_missing(b, il, e);
    if (in_layer == 0)
        return;
    *n_missing += in_layer;
    text_add(t, "%slayer %d expert%s ", t->len ? "; " : "", il, in_layer > 1 ? "s" : "");
    bool first_run = true;
    for (int e = 0; e < b->n_expert; e++) {
        if (!slice_missing(b, il, e))
            continue;
        int end = e;
        while (end + 1 < b->n_expert && slice_missing(b, il, end + 1))
            end++;
        const char *sep = first_run ? "" : ",";
        if (end - e >= 2)
            text_add(t, "%s%d-%d", sep, e, end);
        else if (end - e == 1)
            text_add(t, "%s%d,%d", sep, e, end);
        else
            text_add(t, "%s%d", sep, e);
        first_run = false;
        e = end;
    }
}

static int check_coverage(net_backend_t *b, ms_err_t *err)
{
    text_t list = { .len = 0 };
    int n_missing = 0;
    for (int il = 0; il < b->n_layer; il++)
        if (layer_has_experts(b, il)) /* dense layers (deepseek2's first) hold no slices */
            list_missing_layer(b, il, &list, &n_missing);
    if (n_missing == 0)
        return 0;
    text_t eps = { .len = 0 };
    list_endpoints(b, &eps);
    ms_err_set(err, "no live host holds %s%s (%d slices; hosts: %s)", list.buf, list.full ? "..." : "", n_missing,
               eps.buf);
    return -ENOENT;
}

/* holders/first from the per-host bitsets, in endpoint order. */
static int build_table(net_backend_t *b, const hello_state_t *hs, ms_err_t *err)
{
    size_t n_slices = (size_t)b->n_layer * (size_t)b->n_expert, total = 0;
    b->first = calloc(n_slices + 1, sizeof(*b->first));
    for (size_t s = 0; b->first && s < n_slices; s++)
        for (int h = 0; h < b->n_hosts; h++)
            total += (hs->bits[(size_t)h * hs->words + s / 64] >> (s % 64)) & 1;
    b->holders = malloc((total ? total : 1) * sizeof(*b->holders));
    if (!b->first || !b->holders) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    uint32_t n = 0;
    for (size_t s = 0; s < n_slices; s++) {
        b->first[s] = n;
        for (int h = 0; h < b->n_hosts; h++)
            if ((hs->bits[(size_t)h * hs->words + s / 64] >> (s % 64)) & 1)
                b->holders[n++] = (uint16_t)h;
    }
    b->first[n_slices] = n;
    return check_coverage(b, err);
}

/* Names the hosts that did not answer Hello and, when the others do not
 * hold every slice, what is missing without them. */
static int report_silent_hosts(net_backend_t *b, const hello_state_t *hs, ms_err_t *err)
{
    text_t t = { .len = 0 };
    list_pending(b, &t);
    ms_err_t cov = { { 0 } };
    bool covered = b->p.replicas > 0 || build_table(b, hs, &cov) == 0;
    ms_err_set(err, "no Hello reply within %d ms from %s (is expertd running and listening there?)%s%s",
               b->p.deadline_ms, t.buf, covered ? "" : "; without it, ", covered ? "" : cov.msg);
    return -ETIMEDOUT;
}

static int hello_round(net_backend_t *b, ms_err_t *err)
{
    hello_state_t hs = { .words = ((size_t)b->n_layer * (size_t)b->n_expert + 63) / 64 };
    hs.bits = calloc((size_t)b->n_hosts * hs.words, sizeof(uint64_t));
    if (!hs.bits) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    b->hello = &hs;
    int rc = send_hellos(b, err);
    rc = rc ? rc : poll_replies(b, now_ms() + b->p.deadline_ms, on_hello, err);
    b->hello = NULL;
    if (rc == -ETIMEDOUT)
        rc = report_silent_hosts(b, &hs, err);
    else if (!rc && b->p.replicas == 0)
        rc = build_table(b, &hs, err);
    int32_t moe_layers = 0;
    for (int32_t il = 0; il < b->n_layer; il++)
        moe_layers += layer_has_experts(b, il);
    b->st.expert_bytes_per_token = hs.slice_bytes * (uint64_t)moe_layers * (uint64_t)b->k_max;
    free(hs.bits);
    drop_pending(b);
    return rc;
}

/* ---- placement and slice sync (replicas > 0) ---- */

static bool bit(const uint64_t *bits, size_t s)
{
    return (bits[s / 64] >> (s % 64)) & 1;
}

/* Bytes of one expert slice per layer, from the full model's tensor table;
 * a layer without routed experts counts 1 byte and is never sent. */
static int slice_sizes(net_backend_t *b, uint64_t *bytes, bool *has, ms_err_t *err)
{
    ms_shard_t *sh = NULL;
    ms_err_t e = { { 0 } };
    if (!b->m->gguf || ms_shard_open(b->m->gguf, &sh, &e)) {
        ms_err_set(err, "placing slices needs the full model on the coordinator (a GGUF with the expert tensors): %s",
                   e.msg[0] ? e.msg : "no file");
        return -EINVAL;
    }
    int rc = ms_shard_is_packed(sh) ? -EINVAL : 0;
    if (rc)
        ms_err_set(err, "placing slices needs the full model, not a host shard");
    for (int32_t l = 0; !rc && l < b->n_layer; l++) {
        const ms_slice_t *sl = ms_shard_find(sh, l, 0);
        has[l] = sl != NULL;
        bytes[l] = sl ? sl->nbytes[MS_PROJ_GATE] + sl->nbytes[MS_PROJ_UP] + sl->nbytes[MS_PROJ_DOWN] : 1;
    }
    ms_shard_destroy(&sh);
    return rc;
}

/* Places R copies of every slice; fills b->placed and the holders table in
 * copy order (copy 0 computes, the others stand by). */
static int place(net_backend_t *b, ms_err_t *err)
{
    size_t nl = (size_t)b->n_layer, ne = (size_t)b->n_expert;
    uint64_t *bytes = calloc(nl, sizeof(uint64_t));
    bool *has = calloc(nl, sizeof(bool));
    b->placed = calloc((size_t)b->n_hosts * b->words, sizeof(uint64_t));
    b->first = calloc(nl * ne + 1, sizeof(*b->first));
    b->holders = malloc(nl * ne * (size_t)b->p.replicas * sizeof(*b->holders));
    int rc = bytes && has && b->placed && b->first && b->holders ? slice_sizes(b, bytes, has, err) : -ENOMEM;
    ms_placement_t *pl = NULL;
    uint64_t *caps = calloc((size_t)b->n_hosts, sizeof(uint64_t));
    bool stated = caps != NULL; /* capacities weigh only when every host states one */
    for (int h = 0; stated && h < b->n_hosts; h++)
        stated = (caps[h] = b->hosts[h].capacity) > 0;
    if (!rc) {
        ms_placement_params_t pp = { .n_layers = b->n_layer, .n_experts = b->n_expert, .slice_bytes = bytes,
                                     .n_hosts = b->n_hosts, .replicas = b->p.replicas,
                                     .capacity_bytes = stated ? caps : NULL };
        rc = ms_placement_compute(&pp, &pl, err);
    }
    free(caps);
    uint32_t n = 0;
    for (size_t s = 0; !rc && s < nl * ne; s++) {
        b->first[s] = n;
        int32_t l = (int32_t)(s / ne), e = (int32_t)(s % ne);
        for (int32_t c = 0; has[l] && c < b->p.replicas; c++) {
            int32_t h = ms_placement_host(pl, l, e, c);
            b->holders[n++] = (uint16_t)h;
            b->placed[(size_t)h * b->words + s / 64] |= 1ull << (s % 64);
        }
    }
    if (!rc)
        b->first[nl * ne] = n;
    if (rc == -ENOMEM)
        ms_err_set(err, "out of memory placing %zu slices", nl * ne);
    ms_placement_destroy(&pl);
    free(bytes);
    free(has);
    return rc;
}

/* Sends host h the next Load or Unload that brings what it holds to its
 * share, as a batch-path request (await) or a control request. 1 sent,
 * 0 nothing left to change, -errno. */
static int sync_next(net_backend_t *b, int h, bool await, ms_err_t *err)
{
    net_host_t *H = &b->hosts[h];
    const uint64_t *want = b->placed + (size_t)h * b->words;
    ms_wire_load_t *ld = &b->load;
    for (int32_t l = 0; l < b->n_layer; l++) {
        for (int pass = 0; pass < 2; pass++) { /* Load first, then Unload */
            ld->layer = l;
            ld->n_experts = 0;
            for (int32_t e = 0; e < b->n_expert; e++) {
                size_t s = (size_t)l * (size_t)b->n_expert + (size_t)e;
                if (bit(want, s) != bit(H->held, s) && bit(want, s) == (pass == 0))
                    ld->experts[ld->n_experts++] = e;
            }
            if (!ld->n_experts)
                continue;
            snprintf(ld->source, sizeof(ld->source), "%s", pass == 0 ? MS_WIRE_SOURCE_LOCAL : "");
            ms_wire_head_t head = { .request_id = b->next_id++, .epoch = b->st.epoch };
            size_t len;
            int rc = ms_wire_encode_load(&head, ld, b->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, err);
            rc = rc ? rc : send_header(H, b->hdr, len, false);
            if (rc) {
                ms_err_set(err, "host %s: sending %s for layer %d failed: %s", H->endpoint, pass ? "Unload" : "Load",
                           l, zmq_strerror(-rc));
                return rc;
            }
            b->st.bytes_sent += len;
            H->sent_at_us = 0;
            if (await) {
                H->request_id = head.request_id;
                H->pending = true;
            } else {
                H->ctl_id = head.request_id;
                H->ctl_pending = true;
                H->ctl_sync = true;
                H->ctl_sent_us = now_us();
            }
            return 1;
        }
    }
    return 0;
}

/* A Hello (the reply to Hello, Load and Unload) from host h: what it holds now. */
static int take_hello(net_backend_t *b, int h, ms_err_t *err)
{
    net_host_t *H = &b->hosts[h];
    const ms_wire_msg_t *msg = b->msg;
    if (msg->kind == MS_WIRE_ERROR) {
        ms_err_set(err, "host %s: %s (%s)", H->endpoint, msg->error.message, strerror(msg->error.code));
        return -EIO;
    }
    if (msg->kind != MS_WIRE_HELLO) {
        ms_err_set(err, "host %s answered with %s where a Hello was expected", H->endpoint,
                   ms_wire_kind_name(msg->kind));
        return -EPROTO;
    }
    const ms_wire_hello_t *hi = &msg->hello;
    if (hi->n_layer != b->n_layer || hi->hidden != b->d || hi->n_expert != b->n_expert) {
        ms_err_set(err, "host %s serves another model: %d layers, hidden %d, %d experts", H->endpoint, hi->n_layer,
                   hi->hidden, hi->n_expert);
        return -EINVAL;
    }
    memset(H->held, 0, b->words * sizeof(uint64_t));
    for (uint32_t i = 0; i < hi->n_held; i++) {
        if (hi->held[i].layer >= b->n_layer || hi->held[i].expert >= b->n_expert) {
            ms_err_set(err, "host %s lists slice (layer %d, expert %d) outside the model", H->endpoint,
                       hi->held[i].layer, hi->held[i].expert);
            return -EPROTO;
        }
        size_t s = (size_t)hi->held[i].layer * (size_t)b->n_expert + (size_t)hi->held[i].expert;
        H->held[s / 64] |= 1ull << (s % 64);
    }
    H->slices_held = hi->n_held;
    H->memory_bytes = hi->memory_bytes;
    H->capacity = hi->capacity_bytes;
    return 0;
}

/* Whether host h holds every slice the table gives it. */
static bool holds_share(const net_backend_t *b, int h)
{
    const net_host_t *H = &b->hosts[h];
    size_t n = (size_t)b->n_layer * (size_t)b->n_expert;
    for (size_t s = 0; s < n; s++)
        for (uint32_t i = b->first[s]; i < b->first[s + 1]; i++)
            if (b->holders[i] == h && !bit(H->held, s))
                return false;
    return true;
}

/* Whether host h holds every slice placed on it (assign mode). */
static bool holds_placed(const net_backend_t *b, int h)
{
    const uint64_t *want = b->placed + (size_t)h * b->words, *have = b->hosts[h].held;
    for (size_t w = 0; w < b->words; w++)
        if (want[w] & ~have[w])
            return false;
    return true;
}

static int on_sync_reply(net_backend_t *b, int h, ms_err_t *err)
{
    int rc = take_hello(b, h, err);
    ms_wire_rx_close(&b->hosts[h].rx);
    return rc ? rc : (sync_next(b, h, true, err) < 0 ? -EIO : 0);
}

/* The first placement: every host loads its share and drops the rest. */
static int assign_all(net_backend_t *b, ms_err_t *err)
{
    int rc = place(b, err);
    for (int h = 0; !rc && h < b->n_hosts; h++)
        rc = sync_next(b, h, true, err) < 0 ? -EIO : 0;
    if (!rc && n_pending(b))
        ms_log_info("placing %d copies of every slice on %d hosts: waiting for their loads", b->p.replicas, b->n_hosts);
    rc = rc ? rc : poll_replies(b, now_ms() + MS_BACKEND_NET_LOAD_MS_MAX, on_sync_reply, err);
    for (int h = 0; !rc && h < b->n_hosts; h++) {
        if (!holds_share(b, h)) {
            ms_err_set(err, "host %s did not load all of its share (a slice failed its digest or read)",
                       b->hosts[h].endpoint);
            rc = -EIO;
        }
    }
    drop_pending(b);
    return rc;
}

/* ---- health: connection events, heartbeats, hosts coming back ---- */

static void set_state(net_backend_t *b, int h, host_state_t st, const char *why)
{
    net_host_t *H = &b->hosts[h];
    if (H->state == st)
        return;
    if (st == HOST_UP || H->state == HOST_UP)
        b->st.epoch++;
    H->state = st;
    H->ctl_pending = false;
    H->ctl_sync = false;
    H->ctl_sent_us = 0; /* probe or heartbeat at the next tick */
    if (st == HOST_DOWN)
        ms_log_warn("expert host %s is down (%s); epoch %llu", H->endpoint, why, (unsigned long long)b->st.epoch);
    else
        ms_log_info("expert host %s is %s (%s); epoch %llu", H->endpoint, host_state_names[st], why,
                    (unsigned long long)b->st.epoch);
}

static int monitor_host(net_backend_t *b, int h, ms_err_t *err)
{
    net_host_t *H = &b->hosts[h];
    char ep[96];
    snprintf(ep, sizeof(ep), "inproc://moeshard-net-%p-%d", (void *)b, h);
    int rc = zmq_socket_monitor(H->sock, ep, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED);
    H->mon = rc ? NULL : zmq_socket(b->zctx, ZMQ_PAIR);
    if (!H->mon || zmq_connect(H->mon, ep)) {
        int e = zmq_errno();
        ms_err_set(err, "host %s: cannot watch its connection: %s", H->endpoint, zmq_strerror(e));
        return -e;
    }
    return 0;
}

/* A dropped connection marks the host down at once (its batch in flight goes to replicas). */
static void drain_monitor(net_backend_t *b, int h)
{
    net_host_t *H = &b->hosts[h];
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, H->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        uint16_t ev = 0;
        if (zmq_msg_size(&m) >= sizeof(ev))
            memcpy(&ev, zmq_msg_data(&m), sizeof(ev));
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        while (more) { /* the event's address part */
            zmq_msg_init(&m);
            more = zmq_msg_recv(&m, H->mon, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (ev == ZMQ_EVENT_DISCONNECTED && H->state != HOST_DOWN)
            set_state(b, h, HOST_DOWN, "connection lost");
        else if (ev == ZMQ_EVENT_CONNECTED && H->state == HOST_DOWN)
            H->ctl_sent_us = 0; /* ask for its Hello now */
    }
}

static void send_control(net_backend_t *b, int h, bool hello)
{
    net_host_t *H = &b->hosts[h];
    ms_wire_head_t head = { .request_id = b->next_id++, .epoch = b->st.epoch };
    ms_wire_hello_t me = { .host_id = -1 };
    size_t len;
    ms_err_t e = { { 0 } };
    int rc = hello ? ms_wire_encode_hello(&head, &me, b->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &e)
                   : ms_wire_encode_heartbeat(&head, b->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &e);
    /* a full queue to a silent host: not sent, and counted as missed below */
    if (!rc && zmq_send(H->sock, b->hdr, len, ZMQ_DONTWAIT) >= 0)
        b->st.bytes_sent += len;
    H->ctl_id = head.request_id;
    H->ctl_pending = true;
    H->ctl_sent_us = now_us();
}

static int plan_join(net_backend_t *b, int h);
static void take_joins(net_backend_t *b);
static void switch_placement(net_backend_t *b);

/* A control reply (Heartbeat's Stats, Hello, Load's Hello) outside a dispatch. */
static void on_control_reply(net_backend_t *b, int h)
{
    net_host_t *H = &b->hosts[h];
    H->last_reply_us = now_us();
    bool sync = H->ctl_sync;
    H->ctl_sync = false;
    if (!sync && (H->state == HOST_UP || b->msg->kind != MS_WIRE_HELLO))
        return; /* a heartbeat answered */
    ms_err_t e = { { 0 } };
    if (take_hello(b, h, &e)) {
        ms_log_warn("expert host %s: %s", H->endpoint, e.msg);
        if (H->state != HOST_UP)
            return; /* it stays out */
    }
    if (H->joining && !b->next_holders && plan_join(b, h)) {
        ms_log_warn("expert host %s cannot join: out of memory", H->endpoint);
        return;
    }
    if (b->placed && sync_next(b, h, false, &e) == 1) {
        if (H->state == HOST_DOWN)
            set_state(b, h, HOST_LOADING, "loading its share");
        H->ctl_pending = true; /* set_state cleared it: the Load just sent is in flight */
        H->ctl_sync = true;
        return;
    }
    bool complete = b->placed ? holds_placed(b, h) : holds_share(b, h);
    if (H->joining && complete && !b->switch_ready) {
        b->switch_ready = true;
        ms_log_info("expert host %s holds its share: the placement switches at the next idle moment", H->endpoint);
    } else if (!H->joining && H->state != HOST_UP && complete) {
        set_state(b, h, HOST_UP, "it holds its share again");
    }
}

static void publish(net_backend_t *b);

static int net_tick(ms_expert_backend_t *self, bool idle)
{
    net_backend_t *b = (net_backend_t *)self;
    ms_err_t e = { { 0 } };
    if (poll_once(b, 0, on_failover_reply, &e))
        ms_log_warn("expert hosts: %s", e.msg);
    take_joins(b);
    if (b->switch_ready && idle)
        switch_placement(b);
    int64_t t = now_us(), period = (int64_t)b->p.heartbeat_ms * 1000;
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        int64_t limit = H->ctl_sync ? (int64_t)MS_BACKEND_NET_LOAD_MS_MAX * 1000 : period * MS_BACKEND_NET_MISSED_MAX;
        if (H->ctl_pending && t - H->ctl_sent_us > limit) {
            if (H->state != HOST_DOWN)
                set_state(b, h, HOST_DOWN, H->ctl_sync ? "its Load did not complete" : "missed its heartbeats");
            H->ctl_pending = false;
            H->ctl_sync = false;
        }
        if (!H->ctl_pending && b->unload_pending && H->state == HOST_UP && sync_next(b, h, false, &e) == 1)
            continue;
        if (!H->ctl_pending && t - H->ctl_sent_us >= period)
            send_control(b, h, H->state != HOST_UP);
    }
    if (b->unload_pending) {
        bool synced = true;
        for (int h = 0; h < b->n_hosts; h++)
            synced = synced && (b->hosts[h].state != HOST_UP ||
                                memcmp(b->hosts[h].held, b->placed + (size_t)h * b->words, b->words * 8) == 0);
        b->unload_pending = !synced;
    }
    publish(b);
    return b->switch_ready;
}

/* ---- hosts joining: a new placement epoch that moves slices to them ---- */

static int alloc_host(net_backend_t *b, net_host_t *H, const char *endpoint);
static int net_submit(ms_expert_backend_t *self, int il, const float *x, int n_tok, const int32_t *ids,
                      const float *w, int k);

/* bits[h][words] of the slices each host is given by holders. */
static void bits_from_holders(const net_backend_t *b, const uint16_t *holders, uint64_t *bits)
{
    size_t n = (size_t)b->n_layer * (size_t)b->n_expert;
    memset(bits, 0, (size_t)b->n_hosts * b->words * sizeof(uint64_t));
    for (size_t s = 0; s < n; s++)
        for (uint32_t i = b->first[s]; i < b->first[s + 1]; i++)
            bits[(size_t)holders[i] * b->words + s / 64] |= 1ull << (s % 64);
}

/* Moves copies from the busiest hosts to host nh until it holds its equal
 * share; every other host only gives slices away, so nothing but nh loads.
 * Deterministic: slices in (layer, expert) order. */
static void rebalance(const net_backend_t *b, int nh, uint16_t *holders)
{
    uint32_t *count = calloc((size_t)b->n_hosts, sizeof(uint32_t));
    if (!count)
        return; /* no move: nh joins with nothing to do */
    size_t n = (size_t)b->n_layer * (size_t)b->n_expert;
    uint32_t total = b->first[n];
    for (uint32_t i = 0; i < total; i++)
        count[holders[i]]++;
    /* shares by stated capacity when every host states one, else equal */
    double sum = 0;
    bool stated = true;
    for (int h = 0; h < b->n_hosts; h++) {
        stated = stated && b->hosts[h].capacity > 0;
        sum += (double)b->hosts[h].capacity;
    }
    double share_nh = stated ? (double)b->hosts[nh].capacity / sum : 1.0 / b->n_hosts;
    uint32_t target = (uint32_t)((double)total * share_nh);
#define LOAD(h) ((double)count[h] / (stated ? (double)b->hosts[h].capacity : 1.0))
    for (size_t s = 0; s < n && count[nh] < target; s++) {
        int busiest = -1;
        bool has = false;
        for (uint32_t i = b->first[s]; i < b->first[s + 1]; i++) {
            has = has || holders[i] == nh;
            if (busiest < 0 || LOAD(holders[i]) > LOAD(holders[busiest]))
                busiest = (int)i;
        }
        /* move only from a host that stays at least as loaded as nh becomes */
        if (has || busiest < 0 || LOAD(holders[busiest]) <= (double)(count[nh] + 1) / (stated ? (double)b->hosts[nh].capacity : 1.0))
            continue;
        count[holders[busiest]]--;
        holders[busiest] = (uint16_t)nh;
        count[nh]++;
    }
#undef LOAD
    free(count);
}

static int grow_hosts(net_backend_t *b, const char *endpoint, const char *key, ms_err_t *err)
{
    int h = b->n_hosts;
    uint64_t *placed = realloc(b->placed, (size_t)(h + 1) * b->words * sizeof(uint64_t));
    if (!placed) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    b->placed = placed;
    memset(b->placed + (size_t)h * b->words, 0, b->words * sizeof(uint64_t));
    net_host_t *H = &b->hosts[h];
    memset(H, 0, sizeof(*H));
    int rc = alloc_host(b, H, endpoint);
    if (rc) {
        ms_err_set(err, "out of memory");
        return rc;
    }
    b->n_hosts++;
    snprintf(H->server_key, sizeof(H->server_key), "%s", key);
    rc = connect_host(b, H, err);
    ms_curve_monitor_destroy(&H->handshake); /* one monitor per socket: monitor_host's */
    rc = rc ? rc : monitor_host(b, h, err);
    H->state = HOST_LOADING;
    H->joining = true;
    if (rc)
        H->state = HOST_DOWN;
    return rc;
}

/* Takes the hosts that asked to join: each becomes a host in state
 * loading, outside the table until the switch. */
static void take_joins(net_backend_t *b)
{
    char ep[MS_BACKEND_NET_ENDPOINT_BYTES], key[MS_CURVE_Z85_BYTES + 1];
    for (;;) {
        pthread_mutex_lock(&b->join_lock);
        bool any = b->n_join > 0 && !b->next_holders;
        if (any) {
            memcpy(ep, b->join_ep[0], sizeof(ep));
            memcpy(key, b->join_key[0], sizeof(key));
            memmove(b->join_ep[0], b->join_ep[1], (size_t)(b->n_join - 1) * sizeof(b->join_ep[0]));
            memmove(b->join_key[0], b->join_key[1], (size_t)(b->n_join - 1) * sizeof(b->join_key[0]));
            b->n_join--;
        }
        pthread_mutex_unlock(&b->join_lock);
        if (!any)
            return;
        int known = -1;
        for (int h = 0; h < b->n_hosts; h++)
            if (strcmp(b->hosts[h].endpoint, ep) == 0)
                known = h;
        if (known >= 0) { /* a host that restarted: probe it now */
            if (b->hosts[known].state == HOST_DOWN)
                b->hosts[known].ctl_sent_us = 0;
            continue;
        }
        ms_err_t e = { { 0 } };
        if (b->n_hosts >= MS_HOSTS_MAX || grow_hosts(b, ep, key, &e)) {
            ms_log_warn("expert host %s cannot join: %s", ep, e.msg[0] ? e.msg : "too many hosts");
            continue;
        }
        ms_log_info("expert host %s asks to join: asking for its Hello", ep);
        return; /* one join at a time */
    }
}

/* The joining host answered Hello: the next placement gives it its share. */
static int plan_join(net_backend_t *b, int h)
{
    uint32_t total = b->first[(size_t)b->n_layer * (size_t)b->n_expert];
    b->next_holders = malloc((total ? total : 1) * sizeof(uint16_t));
    uint64_t *bits = calloc((size_t)b->n_hosts * b->words, sizeof(uint64_t));
    if (!b->next_holders || !bits) {
        free(b->next_holders);
        b->next_holders = NULL;
        free(bits);
        return -ENOMEM;
    }
    memcpy(b->next_holders, b->holders, total * sizeof(uint16_t));
    rebalance(b, h, b->next_holders);
    bits_from_holders(b, b->next_holders, bits);
    memcpy(b->placed + (size_t)h * b->words, bits + (size_t)h * b->words, b->words * sizeof(uint64_t));
    free(bits);
    return 0;
}

/* At an idle step boundary: the table becomes the next placement, the
 * joined host serves, and the others drop what moved away. */
static void switch_placement(net_backend_t *b)
{
    free(b->holders);
    b->holders = b->next_holders;
    b->next_holders = NULL;
    bits_from_holders(b, b->holders, b->placed);
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        if (H->joining) {
            H->joining = false;
            set_state(b, h, HOST_UP, "joined the placement");
        }
        H->ctl_sent_us = 0; /* their Unloads go out at this tick */
    }
    b->switch_ready = false;
    b->unload_pending = true;
}

int ms_backend_net_join(ms_expert_backend_t *self, const char *endpoint, const char *server_key_z85, ms_err_t *err)
{
    if (!self || self->submit != net_submit) {
        ms_err_set(err, "expert hosts cannot join: the experts are computed in the coordinator's process");
        return -EINVAL;
    }
    net_backend_t *b = (net_backend_t *)self;
    if (!b->p.replicas) {
        ms_err_set(err, "expert hosts cannot join a coordinator serving a pack: serve the full GGUF so that the "
                        "coordinator places the slices (moeshard serve --replicas)");
        return -EINVAL;
    }
    if (b->p.curve_key && (!server_key_z85 || !ms_curve_z85_valid(server_key_z85))) {
        ms_err_set(err, "a joining host must authenticate with its CURVE key on an encrypted coordinator");
        return -EPERM;
    }
    if (!endpoint || !endpoint[0] || strlen(endpoint) >= MS_BACKEND_NET_ENDPOINT_BYTES) {
        ms_err_set(err, "a joining host's endpoint must be 1..%d bytes", MS_BACKEND_NET_ENDPOINT_BYTES - 1);
        return -EINVAL;
    }
    pthread_mutex_lock(&b->join_lock);
    int rc = 0;
    for (int i = 0; i < b->n_join; i++)
        if (strcmp(b->join_ep[i], endpoint) == 0)
            goto out; /* asked already */
    if (b->n_join == MS_BACKEND_NET_JOIN_QUEUE) {
        ms_err_set(err, "%d hosts are already waiting to join; ask again later", MS_BACKEND_NET_JOIN_QUEUE);
        rc = -EBUSY;
        goto out;
    }
    snprintf(b->join_key[b->n_join], sizeof(b->join_key[0]), "%s", server_key_z85 ? server_key_z85 : "");
    snprintf(b->join_ep[b->n_join++], MS_BACKEND_NET_ENDPOINT_BYTES, "%s", endpoint);
out:
    pthread_mutex_unlock(&b->join_lock);
    return rc;
}

/* ---- failover: the rows of hosts that are down, one (token, expert) slot per row ---- */

/* First live holder of (il, e) other than the host that is down; -1 when none. */
static int live_holder(const net_backend_t *b, int il, int32_t e)
{
    size_t s = (size_t)il * (size_t)b->n_expert + (size_t)e;
    for (uint32_t i = b->first[s]; i < b->first[s + 1]; i++)
        if (b->hosts[b->holders[i]].state == HOST_UP)
            return b->holders[i];
    return -1;
}

/* Marks the slots of host h's rows as needing a replica. */
static void fail_rows(net_backend_t *b, int h)
{
    net_host_t *H = &b->hosts[h];
    if (H->failing || !H->n_tok)
        return;
    H->failing = true;
    H->pending = false;
    ms_wire_rx_close(&H->rx);
    for (int32_t r = 0; r < H->n_tok; r++)
        for (int j = 0; j < b->k; j++)
            if (H->ids[(size_t)r * (size_t)b->k + (size_t)j] >= 0) {
                size_t s = (size_t)H->tok[r] * (size_t)b->k + (size_t)j;
                b->slot_state[s] = 1;
                b->slot_e[s] = H->ids[(size_t)r * (size_t)b->k + (size_t)j];
            }
}

static int send_failover(net_backend_t *b, net_host_t *H)
{
    ms_wire_head_t head = { .request_id = b->next_id++, .epoch = b->st.epoch };
    ms_wire_batch_t wb = { .layer = b->il, .n_tokens = H->fo_n, .hidden = b->d, .k = 1, .dtype = b->p.wire,
                           .ids = H->fo_ids, .weights = H->fo_w };
    size_t len, row = (size_t)b->d * b->wbytes;
    int rc = ms_wire_encode_batch(&head, &wb, b->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, NULL);
    rc = rc ? rc : send_header(H, b->hdr, len, true);
    if (rc)
        return rc;
    for (int32_t r = 0; r < H->fo_n; r++)
        ms_wire_from_f32(b->p.wire, b->x + (size_t)(H->fo_slot[r] / b->k) * (size_t)b->d, (size_t)b->d,
                         b->copy + (size_t)r * row);
    if (zmq_send(H->sock, b->copy, (size_t)H->fo_n * row, 0) < 0)
        return -zmq_errno();
    H->fo_id = head.request_id;
    H->fo_pending = true;
    b->st.bytes_sent += len + (size_t)H->fo_n * row;
    H->bytes_sent += len + (size_t)H->fo_n * row;
    return 0;
}

/* Appends "(layer L, expert E)" for a slot nobody live holds. */
static int no_holder(net_backend_t *b, int32_t e, ms_err_t *err)
{
    text_t t = { .len = 0 };
    for (int h = 0; h < b->n_hosts; h++)
        if (b->hosts[h].state != HOST_UP)
            text_add(&t, "%s%s", t.len ? ", " : "", b->hosts[h].endpoint);
    ms_err_set(err, "layer %d expert %d is unavailable: no live host holds it (down: %s); the request cannot be "
               "answered until a host holding it is back", b->il, e, t.buf);
    return -EHOSTDOWN;
}

/* One round: every slot that needs a replica goes to its first live holder,
 * at most max_tokens rows per host; hosts with failover rows in flight wait. */
static int start_failover_round(net_backend_t *b, ms_err_t *err)
{
    for (int h = 0; h < b->n_hosts; h++)
        if (b->hosts[h].fo_pending)
            return 0;
    for (int h = 0; h < b->n_hosts; h++)
        b->hosts[h].fo_n = 0;
    size_t n_slots = (size_t)b->n_tok * (size_t)b->k;
    for (size_t s = 0; s < n_slots; s++) {
        if (b->slot_state[s] != 1)
            continue;
        int32_t e = b->slot_e[s];
        int rh = live_holder(b, b->il, e);
        if (rh < 0)
            return no_holder(b, e, err);
        net_host_t *R = &b->hosts[rh];
        if (R->fo_n >= b->p.max_tokens)
            continue; /* next round */
        R->fo_slot[R->fo_n] = (int32_t)s;
        R->fo_ids[R->fo_n] = e;
        R->fo_w[R->fo_n++] = 1.0f;
        b->slot_state[s] = 2;
    }
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *R = &b->hosts[h];
        if (!R->fo_n)
            continue;
        int rc = send_failover(b, R);
        if (rc) { /* its slots go to the next round, on another holder once it is marked down */
            ms_log_warn("layer %d: sending failover rows to %s failed: %s", b->il, R->endpoint, zmq_strerror(-rc));
            for (int32_t r = 0; r < R->fo_n; r++)
                b->slot_state[R->fo_slot[r]] = 1;
            set_state(b, h, HOST_DOWN, "send failed");
            fail_rows(b, h);
        }
        b->st.failover_slots += (uint64_t)R->fo_n;
    }
    return 0;
}

static int on_failover_reply(net_backend_t *b, int h, ms_err_t *err)
{
    net_host_t *H = &b->hosts[h];
    const ms_wire_msg_t *msg = b->msg;
    const ms_wire_result_t *r = &msg->result;
    if (msg->kind != MS_WIRE_RESULT || r->status != 0 || r->n_tokens != H->fo_n || r->hidden != b->d ||
        r->dtype != b->p.wire) {
        ms_err_set(err, "layer %d: host %s answered failover rows with %s%s%s", b->il, H->endpoint,
                   ms_wire_kind_name(msg->kind), msg->kind == MS_WIRE_ERROR ? ": " : "",
                   msg->kind == MS_WIRE_ERROR ? msg->error.message : "");
        return msg->kind == MS_WIRE_ERROR ? -EIO : -EPROTO;
    }
    size_t row = (size_t)b->d * b->wbytes;
    for (int32_t i = 0; i < H->fo_n; i++) {
        int32_t s = H->fo_slot[i];
        ms_wire_to_f32(b->p.wire, (const unsigned char *)msg->frame + (size_t)i * row, (size_t)b->d,
                       b->slot_y + (size_t)s * (size_t)b->d);
        b->slot_state[s] = 0;
    }
    H->fo_n = 0;
    return 0;
}

/* Rows of hosts that are down, and failover rows sent to hosts that went down since. */
static void collect_failures(net_backend_t *b)
{
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        if (H->state == HOST_UP)
            continue;
        fail_rows(b, h);
        if (H->fo_pending) {
            H->fo_pending = false;
            for (int32_t r = 0; r < H->fo_n; r++)
                b->slot_state[H->fo_slot[r]] = 1;
            H->fo_n = 0;
        }
    }
}

static bool failover_left(const net_backend_t *b)
{
    size_t n_slots = (size_t)b->n_tok * (size_t)b->k;
    for (size_t s = 0; s < n_slots; s++)
        if (b->slot_state[s])
            return true;
    return false;
}

/* Host h's partial sums rebuilt from its slots' outputs, in its own order. */
static void combine_failed(net_backend_t *b, const net_host_t *H, float *out)
{
    size_t d = (size_t)b->d;
    for (int32_t r = 0; r < H->n_tok; r++) {
        float *o = b->conv; /* one row of scratch */
        memset(o, 0, d * sizeof(float));
        size_t t = (size_t)H->tok[r];
        for (int j = 0; j < b->k; j++) {
            size_t s = (size_t)r * (size_t)b->k + (size_t)j;
            if (H->ids[s] >= 0)
                b->kern->axpy(o, H->w[s], b->slot_y + (t * (size_t)b->k + (size_t)j) * d, (int64_t)d);
        }
        float *dst = out + t * d;
        for (size_t i = 0; i < d; i++)
            dst[i] += o[i];
    }
}

/* ---- one dispatch ---- */

/* Row of token t in host H's batch, opening it (all slots empty) on first use. */
static int32_t host_row(net_host_t *H, int32_t t, int k)
{
    if (H->n_tok > 0 && H->cur_tok == t)
        return H->n_tok - 1;
    int32_t row = H->n_tok++;
    H->cur_tok = t;
    H->tok[row] = t;
    for (int j = 0; j < k; j++) {
        H->ids[(size_t)row * (size_t)k + (size_t)j] = -1;
        H->w[(size_t)row * (size_t)k + (size_t)j] = 0.0f;
    }
    return row;
}

/* Splits the step's slots by the host that owns each (layer, expert). */
static int group_by_host(net_backend_t *b, int il, int n_tok, const int32_t *ids, const float *w, int k)
{
    for (int h = 0; h < b->n_hosts; h++)
        b->hosts[h].n_tok = 0;
    const uint32_t *first = b->first + (size_t)il * (size_t)b->n_expert;
    for (int32_t t = 0; t < n_tok; t++) {
        for (int j = 0; j < k; j++) {
            size_t s = (size_t)t * (size_t)k + (size_t)j;
            int32_t e = ids[s];
            if (e == -1)
                continue;
            if (e < 0 || e >= b->n_expert || !isfinite(w[s]))
                return -EINVAL;
            net_host_t *H = &b->hosts[b->holders[first[e]]]; /* first replica: deterministic */
            int32_t row = host_row(H, t, k);
            H->ids[(size_t)row * (size_t)k + (size_t)j] = e;
            H->w[(size_t)row * (size_t)k + (size_t)j] = w[s];
        }
    }
    return 0;
}

/* Gathers host H's token rows of x into dst in the wire dtype. */
static void pack_rows(const net_backend_t *b, const net_host_t *H, const float *x, unsigned char *dst)
{
    size_t row_bytes = (size_t)b->d * b->wbytes;
    for (int32_t r = 0; r < H->n_tok; r++)
        ms_wire_from_f32(b->p.wire, x + (size_t)H->tok[r] * (size_t)b->d, (size_t)b->d, dst + (size_t)r * row_bytes);
}

static int send_batch(net_backend_t *b, net_host_t *H, const float *x)
{
    ms_wire_head_t head = { .request_id = b->next_id++, .epoch = b->st.epoch };
    ms_wire_batch_t wb = { .layer = b->il, .n_tokens = H->n_tok, .hidden = b->d, .k = b->k, .dtype = b->p.wire,
                           .ids = H->ids, .weights = H->w };
    size_t len, bytes = (size_t)H->n_tok * (size_t)b->d * b->wbytes;
    int rc = ms_wire_encode_batch(&head, &wb, b->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, NULL);
    rc = rc ? rc : send_header(H, b->hdr, len, true);
    if (rc)
        return rc;
    if (atomic_load_explicit(&H->frame_held, memory_order_acquire)) {
        /* ZeroMQ has not yet released the last frame: send this one by copy */
        pack_rows(b, H, x, b->copy);
        rc = zmq_send(H->sock, b->copy, bytes, 0) < 0 ? -zmq_errno() : 0;
        b->st.frames_copied++;
    } else {
        pack_rows(b, H, x, H->frame);
        rc = send_frame_zero_copy(H, bytes);
    }
    if (rc)
        return rc;
    H->request_id = head.request_id;
    H->pending = true;
    b->st.messages_sent++;
    b->st.last_bytes_sent += len + bytes;
    b->st.bytes_sent += len + bytes;
    H->bytes_sent += len + bytes;
    H->sent_at_us = now_us();
    return 0;
}

static int net_submit(ms_expert_backend_t *self, int il, const float *x, int n_tok, const int32_t *ids,
                      const float *w, int k)
{
    net_backend_t *b = (net_backend_t *)self;
    if (il < 0 || il >= b->n_layer || n_tok < 1 || n_tok > b->p.max_tokens || k < 1 || k > b->k_max)
        return -EINVAL;
    drop_pending(b); /* a submit without wait abandons the previous dispatch */
    int rc = group_by_host(b, il, n_tok, ids, w, k);
    if (rc)
        return rc;
    b->il = il;
    b->n_tok = n_tok;
    b->k = k;
    b->x = x;
    b->submitted = true;
    b->st.last_bytes_sent = 0;
    b->st.last_bytes_received = 0;
    memset(b->slot_state, 0, (size_t)n_tok * (size_t)k);
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        H->failing = false;
        H->fo_pending = false;
        H->fo_n = 0;
        H->send_rc = H->n_tok && H->state == HOST_UP ? send_batch(b, H, x) : 0;
        if (H->send_rc) {
            ms_log_warn("layer %d: sending the batch to %s failed: %s", il, H->endpoint, zmq_strerror(-H->send_rc));
            set_state(b, h, HOST_DOWN, "send failed");
        }
    }
    return 0;
}

static int on_result(net_backend_t *b, int h, ms_err_t *err)
{
    net_host_t *H = &b->hosts[h];
    const ms_wire_msg_t *msg = b->msg;
    if (msg->kind == MS_WIRE_ERROR) {
        ms_err_set(err, "layer %d: host %s refused the batch (%s): %s", b->il, H->endpoint,
                   strerror(msg->error.code), msg->error.message);
        return -EIO;
    }
    const ms_wire_result_t *r = &msg->result;
    if (msg->kind != MS_WIRE_RESULT || r->status != 0) {
        ms_err_set(err, "layer %d: host %s answered with %s status %d", b->il, H->endpoint,
                   ms_wire_kind_name(msg->kind), msg->kind == MS_WIRE_RESULT ? r->status : 0);
        return msg->kind == MS_WIRE_RESULT ? -EIO : -EPROTO;
    }
    if (r->layer != b->il || r->n_tokens != H->n_tok || r->hidden != b->d || r->dtype != b->p.wire) {
        ms_err_set(err, "layer %d: host %s replied for layer %d, %d tokens, hidden %d, %s; sent %d tokens, hidden %d, %s",
                   b->il, H->endpoint, r->layer, r->n_tokens, r->hidden, ms_wire_dtype_name(r->dtype), H->n_tok,
                   b->d, ms_wire_dtype_name(b->p.wire));
        return -EPROTO;
    }
    H->reply = ms_wire_rx_data(&H->rx, 1); /* the tensor frame; H->rx stays open until the combine */
    return 0;
}

/* out[t] = sum over hosts, in endpoint order (the same sum every run), of their rows for t. */
static void combine(net_backend_t *b, float *out)
{
    size_t d = (size_t)b->d;
    memset(out, 0, (size_t)b->n_tok * d * sizeof(float));
    for (int h = 0; h < b->n_hosts; h++) {
        const net_host_t *H = &b->hosts[h];
        if (!H->n_tok)
            continue;
        if (H->failing) {
            combine_failed(b, H, out);
            continue;
        }
        ms_wire_to_f32(b->p.wire, H->reply, (size_t)H->n_tok * d, b->conv);
        for (int32_t r = 0; r < H->n_tok; r++) {
            float *o = out + (size_t)H->tok[r] * d;
            const float *c = b->conv + (size_t)r * d;
            for (size_t i = 0; i < d; i++)
                o[i] += c[i];
        }
    }
}

/* Copies the counters for ms_backend_net_stats and _host_stats, which may
 * run on another thread (a status request) while this one dispatches. */
static void publish(net_backend_t *b)
{
    pthread_mutex_lock(&b->pub_lock);
    b->pub = b->st;
    for (int h = 0; h < b->n_hosts; h++) {
        const net_host_t *H = &b->hosts[h];
        b->pub_hosts[h] = (ms_backend_net_host_stats_t){
            .endpoint = H->endpoint, .slices_held = H->slices_held, .memory_bytes = H->memory_bytes,
            .bytes_sent = H->bytes_sent, .bytes_received = H->bytes_received, .replies = H->replies,
            .rtt_ms_mean = H->replies ? (double)H->rtt_us_sum / (double)H->replies / 1e3 : 0.0,
            .last_reply_us = H->last_reply_us, .state = H->joining ? "joining" : host_state_names[H->state] };
    }
    b->pub_n_hosts = b->n_hosts;
    b->pub.hosts_down = 0;
    for (int h = 0; h < b->n_hosts; h++)
        b->pub.hosts_down += b->hosts[h].state != HOST_UP;
    pthread_mutex_unlock(&b->pub_lock);
}

/* Hosts still pending at the deadline are marked down, once: their rows
 * then go to replicas within a second deadline. */
static int on_deadline(net_backend_t *b, bool *retried, ms_err_t *err)
{
    text_t t = { .len = 0 };
    list_pending(b, &t);
    bool replicated = false; /* some slice has a second holder to fail over to */
    size_t n_slices = (size_t)b->n_layer * (size_t)b->n_expert;
    for (size_t s = 0; s < n_slices && !replicated; s++)
        replicated = b->first[s + 1] - b->first[s] > 1;
    if (*retried || !replicated) {
        ms_err_set(err, "layer %d: no reply within %d ms from %s (host down or overloaded)", b->il,
                   b->p.deadline_ms, t.len ? t.buf : "the replicas");
        return -ETIMEDOUT;
    }
    *retried = true;
    for (int h = 0; h < b->n_hosts; h++)
        if (b->hosts[h].pending || b->hosts[h].fo_pending)
            set_state(b, h, HOST_DOWN, "no reply within the deadline");
    return 0;
}

static int net_wait(ms_expert_backend_t *self, float *out, ms_err_t *err)
{
    net_backend_t *b = (net_backend_t *)self;
    if (!b->submitted) {
        ms_err_set(err, "expert backend: wait without a submitted batch");
        return -EINVAL;
    }
    b->submitted = false;
    /* no pool thread polls while this one sleeps in zmq_poll; the step's
     * kernels that follow poll again as before */
    uint32_t spin_us = ms_pool_set_spin(b->p.pool, 0);
    uint64_t received0 = b->st.bytes_received;
    int64_t deadline_at = now_ms() + b->p.deadline_ms;
    bool retried = false;
    int rc = 0;
    for (;;) {
        collect_failures(b);
        rc = start_failover_round(b, err);
        if (rc || (n_pending(b) == 0 && !failover_left(b)))
            break;
        int64_t left = deadline_at - now_ms();
        if (left <= 0) {
            rc = on_deadline(b, &retried, err);
            deadline_at = now_ms() + b->p.deadline_ms;
            if (rc)
                break;
            continue;
        }
        rc = poll_once(b, (long)left, on_result, err);
        if (rc)
            break;
    }
    if (!rc) {
        combine(b, out);
        b->st.dispatches++;
    }
    b->st.last_bytes_received = b->st.bytes_received - received0;
    drop_pending(b);
    for (int h = 0; h < b->n_hosts; h++) {
        b->hosts[h].fo_pending = false;
        b->hosts[h].failing = false;
    }
    publish(b);
    ms_pool_set_spin(b->p.pool, spin_us);
    return rc;
}

/* ---- creation ---- */

static void net_destroy(ms_expert_backend_t *self)
{
    net_backend_t *b = (net_backend_t *)self;
    for (int h = 0; b->hosts && h < b->n_hosts; h++) {
        ms_wire_rx_close(&b->hosts[h].rx);
        ms_curve_monitor_destroy(&b->hosts[h].handshake);
        if (b->hosts[h].mon)
            zmq_close(b->hosts[h].mon);
        if (b->hosts[h].sock) {
            zmq_socket_monitor(b->hosts[h].sock, NULL, 0);
            zmq_close(b->hosts[h].sock);
        }
    }
    ms_wire_rx_close(&b->spare);
    /* after the context ends ZeroMQ holds no frame of ours: only now free them */
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    for (int h = 0; b->hosts && h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        free(H->endpoint);
        free(H->tok);
        free(H->ids);
        free(H->w);
        free(H->frame);
        free(H->held);
        free(H->fo_slot);
        free(H->fo_ids);
        free(H->fo_w);
    }
    free(b->placed);
    free(b->slot_state);
    free(b->slot_e);
    free(b->slot_y);
    free(b->hosts);
    free(b->pub_hosts);
    if (b->pub_lock_init)
        pthread_mutex_destroy(&b->pub_lock);
    if (b->join_lock_init)
        pthread_mutex_destroy(&b->join_lock);
    free(b->next_holders);
    free(b->items);
    free(b->first);
    free(b->holders);
    ms_wire_msg_destroy(&b->msg);
    free(b->hdr);
    free(b->copy);
    free(b->conv);
    free(b);
}

static int check_params(const ms_model_t *m, const char *const *endpoints, int n_hosts,
                        const ms_backend_net_params_t *p, ms_err_t *err)
{
    if (!m || !endpoints || !p || n_hosts < 1 || n_hosts > MS_HOSTS_MAX) {
        ms_err_set(err, "network backend: %d hosts (expected 1..%d)", n_hosts, MS_HOSTS_MAX);
        return -EINVAL;
    }
    if (ms_wire_dtype_bytes(p->wire) == 0 || p->deadline_ms < 1 || p->deadline_ms > MS_BACKEND_NET_DEADLINE_MS_MAX ||
        p->max_tokens < 1 || p->max_tokens > MS_BATCH_TOKENS_MAX || p->replicas < 0 || p->replicas > n_hosts ||
        p->heartbeat_ms < MS_BACKEND_NET_HEARTBEAT_MS_MIN || p->heartbeat_ms > MS_BACKEND_NET_HEARTBEAT_MS_MAX) {
        if (p->replicas < 0 || p->replicas > n_hosts || p->heartbeat_ms < MS_BACKEND_NET_HEARTBEAT_MS_MIN ||
            p->heartbeat_ms > MS_BACKEND_NET_HEARTBEAT_MS_MAX) {
            ms_err_set(err, "network backend: %d replicas on %d hosts (expected 0..%d) or heartbeat %d ms (%d..%d)",
                       p->replicas, n_hosts, n_hosts, p->heartbeat_ms, MS_BACKEND_NET_HEARTBEAT_MS_MIN,
                       MS_BACKEND_NET_HEARTBEAT_MS_MAX);
            return -EINVAL;
        }
        ms_err_set(err, "network backend: wire dtype %d, deadline %d ms (1..%d) or %d tokens per step (1..%d) out of range",
                   (int)p->wire, p->deadline_ms, MS_BACKEND_NET_DEADLINE_MS_MAX, p->max_tokens, MS_BATCH_TOKENS_MAX);
        return -EINVAL;
    }
    for (int h = 0; h < n_hosts; h++) {
        if (!endpoints[h] || !endpoints[h][0]) {
            ms_err_set(err, "network backend: host %d has an empty endpoint", h);
            return -EINVAL;
        }
    }
    if (p->curve_key && !p->host_keys) {
        ms_err_set(err, "network backend: CURVE needs the hosts' server keys (--host-keys FILE)");
        return -EINVAL;
    }
    return 0;
}

static int alloc_host(net_backend_t *b, net_host_t *H, const char *endpoint)
{
    size_t rows = (size_t)b->p.max_tokens, slots = rows * (size_t)b->k_max;
    H->endpoint = strdup(endpoint);
    H->tok = calloc(rows, sizeof(*H->tok));
    H->ids = calloc(slots, sizeof(*H->ids));
    H->w = calloc(slots, sizeof(*H->w));
    H->frame = malloc(rows * (size_t)b->d * b->wbytes);
    H->held = calloc(b->words, sizeof(uint64_t));
    H->fo_slot = calloc(rows, sizeof(*H->fo_slot));
    H->fo_ids = calloc(rows, sizeof(*H->fo_ids));
    H->fo_w = calloc(rows, sizeof(*H->fo_w));
    atomic_init(&H->frame_held, 0);
    return H->endpoint && H->tok && H->ids && H->w && H->frame && H->held && H->fo_slot && H->fo_ids && H->fo_w
               ? 0 : -ENOMEM;
}

static int alloc_backend(net_backend_t *b, const char *const *endpoints, ms_err_t *err)
{
    size_t rows = (size_t)b->p.max_tokens;
    /* room for every host that may join later */
    b->hosts = calloc(MS_HOSTS_MAX, sizeof(*b->hosts));
    b->pub_hosts = calloc(MS_HOSTS_MAX, sizeof(*b->pub_hosts));
    b->items = calloc(2 * (size_t)MS_HOSTS_MAX + 1, sizeof(*b->items)); /* + the stop fd */
    b->words = ((size_t)b->n_layer * (size_t)b->n_expert + 63) / 64;
    b->slot_state = calloc(rows * (size_t)b->k_max, 1);
    b->slot_e = calloc(rows * (size_t)b->k_max, sizeof(int32_t));
    b->slot_y = malloc(rows * (size_t)b->k_max * (size_t)b->d * sizeof(float));
    b->hdr = malloc(MS_WIRE_HEADER_BYTES_MAX);
    b->copy = malloc(rows * (size_t)b->d * b->wbytes);
    b->conv = malloc(rows * (size_t)b->d * sizeof(float));
    bool ok = b->hosts && b->pub_hosts && b->items && b->hdr && b->copy && b->conv && b->slot_state && b->slot_e &&
              b->slot_y;
    int rc = ok ? ms_wire_msg_new(&b->msg) : -ENOMEM;
    for (int h = 0; !rc && h < b->n_hosts; h++)
        rc = alloc_host(b, &b->hosts[h], endpoints[h]);
    if (rc)
        ms_err_set(err, "network backend: out of memory for %d hosts", b->n_hosts);
    return rc;
}

int ms_backend_net_new(const ms_model_t *m, const char *const *endpoints, int n_hosts,
                       const ms_backend_net_params_t *p, ms_expert_backend_t **ret_backend, ms_err_t *err)
{
    int rc = check_params(m, endpoints, n_hosts, p, err);
    if (rc)
        return rc;
    net_backend_t *b = calloc(1, sizeof(*b));
    if (!b) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    b->base = (ms_expert_backend_t){ .name = "net", .submit = net_submit, .wait = net_wait, .tick = net_tick,
                                     .destroy = net_destroy };
    b->kern = ms_kernels_best();
    b->st.epoch = MS_BACKEND_NET_EPOCH;
    b->m = m;
    b->p = *p;
    b->d = m->hp.n_embd;
    b->n_layer = m->hp.n_layer;
    b->n_expert = m->hp.n_expert;
    b->k_max = m->hp.n_expert_used;
    b->wbytes = ms_wire_dtype_bytes(p->wire);
    b->n_hosts = n_hosts;
    b->next_id = 1;
    pthread_mutex_init(&b->pub_lock, NULL);
    b->pub_lock_init = true;
    pthread_mutex_init(&b->join_lock, NULL);
    b->join_lock_init = true;
    rc = alloc_backend(b, endpoints, err);
    b->zctx = rc ? NULL : zmq_ctx_new();
    if (!rc && !b->zctx) {
        rc = -zmq_errno();
        ms_err_set(err, "cannot create a ZeroMQ context: %s", zmq_strerror(-rc));
    }
    for (int h = 0; !rc && h < n_hosts; h++)
        rc = connect_host(b, &b->hosts[h], err);
    int hs = b->zctx ? check_handshakes(b, rc == 0, err) : 0; /* before monitor_host: one monitor per socket */
    rc = rc ? rc : hs;
    for (int h = 0; !rc && h < n_hosts; h++)
        rc = monitor_host(b, h, err);
    b->creating = true;
    rc = rc ? rc : hello_round(b, err);
    if (!rc && b->p.replicas > 0)
        rc = assign_all(b, err);
    b->creating = false;
    for (int h = 0; !rc && h < n_hosts; h++)
        b->hosts[h].ctl_sent_us = now_us(); /* the first heartbeat one period from now */
    if (rc) {
        net_destroy(&b->base);
        return rc;
    }
    publish(b);
    *ret_backend = &b->base;
    return 0;
}

int ms_backend_net_stats(const ms_expert_backend_t *self, ms_backend_net_stats_t *ret_stats)
{
    if (!self || self->submit != net_submit)
        return -EINVAL;
    net_backend_t *b = (net_backend_t *)self;
    pthread_mutex_lock(&b->pub_lock);
    *ret_stats = b->pub;
    pthread_mutex_unlock(&b->pub_lock);
    return 0;
}

int ms_backend_net_n_hosts(const ms_expert_backend_t *self)
{
    if (!self || self->submit != net_submit)
        return -EINVAL;
    net_backend_t *b = (net_backend_t *)self;
    pthread_mutex_lock(&b->pub_lock);
    int n = b->pub_n_hosts;
    pthread_mutex_unlock(&b->pub_lock);
    return n;
}

int ms_backend_net_host_stats(const ms_expert_backend_t *self, int h, ms_backend_net_host_stats_t *ret_stats)
{
    if (!self || self->submit != net_submit || h < 0)
        return -EINVAL;
    net_backend_t *b = (net_backend_t *)self;
    pthread_mutex_lock(&b->pub_lock);
    if (h >= b->pub_n_hosts) {
        pthread_mutex_unlock(&b->pub_lock);
        return -EINVAL;
    }
    *ret_stats = b->pub_hosts[h];
    pthread_mutex_unlock(&b->pub_lock);
    return 0;
}
