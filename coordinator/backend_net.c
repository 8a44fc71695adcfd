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

#include "limits.h"
#include "wire_zmq.h"

_Static_assert(MS_HOSTS_MAX <= UINT16_MAX, "a host index fits the slice table's uint16");

typedef struct {
    char *endpoint;          /* owned copy, for messages */
    void *sock;              /* DEALER connected to the host's ROUTER */
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
                                      .max_tokens = MS_BATCH_TOKENS_MAX, .pool = NULL };
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
    if (zmq_connect(H->sock, H->endpoint)) {
        rc = zmq_errno();
        ms_err_set(err, "host '%s': ZeroMQ refuses the endpoint (%s); expected tcp://HOST:PORT", H->endpoint,
                   zmq_strerror(rc));
        return -EINVAL;
    }
    return 0;
}

/* Receives the next message of host h if there is one: into its reply slot
 * while a reply is awaited, else into the spare slot. 1 received, 0 none, -errno. */
static int recv_one(net_backend_t *b, int h, ms_wire_rx_t **ret_rx)
{
    net_host_t *H = &b->hosts[h];
    ms_wire_rx_t *rx = H->pending ? &H->rx : &b->spare;
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
    if (rx->n_parts < 1 || rx->n_dropped) {
        ms_err_set(err, "a message of %d parts (at most %d)", rx->n_parts + (int)rx->n_dropped, MS_WIRE_PARTS_MAX);
        return -EPROTO;
    }
    const void *frames[MS_WIRE_PARTS_MAX];
    size_t sizes[MS_WIRE_PARTS_MAX];
    for (int i = 1; i < rx->n_parts; i++) {
        frames[i - 1] = ms_wire_rx_data(rx, i);
        sizes[i - 1] = ms_wire_rx_size(rx, i);
    }
    return ms_wire_decode(b->msg, ms_wire_rx_data(rx, 0), ms_wire_rx_size(rx, 0), frames, sizes,
                          (size_t)rx->n_parts - 1, err);
}

static bool is_awaited(const net_backend_t *b, const net_host_t *H)
{
    return H->pending && b->msg->head.request_id == H->request_id && b->msg->head.epoch == MS_BACKEND_NET_EPOCH;
}

/* Polls the sockets of every host until none is pending or deadline_at
 * passes; on_reply handles each awaited reply (decoded in b->msg) and
 * returns 0 or -errno with err set. Stale replies are dropped. */
typedef int (*on_reply_fn)(net_backend_t *b, int h, ms_err_t *err);

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
            ms_err_set(err, "host %s sent a malformed message: %s", H->endpoint, derr.msg);
            return rc;
        }
        if (!is_awaited(b, H)) {
            b->st.stale_dropped++;
            ms_wire_rx_close(rx);
            continue;
        }
        H->pending = false;
        H->last_reply_us = now_us();
        if (H->sent_at_us) { /* a batch's reply (the Hello round is not timed) */
            H->replies++;
            H->rtt_us_sum += (uint64_t)(H->last_reply_us - H->sent_at_us);
        }
        rc = on_reply(b, h, err);
        if (rc)
            return rc;
    }
}

static int n_pending(const net_backend_t *b)
{
    int n = 0;
    for (int h = 0; h < b->n_hosts; h++)
        n += b->hosts[h].pending;
    return n;
}

/* 0 when nothing is pending any more, -ETIMEDOUT at the deadline, or the first failure. */
static int poll_replies(net_backend_t *b, int64_t deadline_at, on_reply_fn on_reply, ms_err_t *err)
{
    while (n_pending(b) > 0) {
        int64_t left = deadline_at - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        for (int h = 0; h < b->n_hosts; h++)
            b->items[h] = (zmq_pollitem_t){ .socket = b->hosts[h].sock, .events = ZMQ_POLLIN };
        int n = zmq_poll(b->items, b->n_hosts, (long)left);
        if (n < 0 && zmq_errno() == EINTR)
            continue;
        if (n < 0) {
            int e = zmq_errno();
            ms_err_set(err, "waiting for expert hosts failed: %s", zmq_strerror(e));
            return -e;
        }
        for (int h = 0; h < b->n_hosts; h++) {
            if (!(b->items[h].revents & ZMQ_POLLIN))
                continue;
            int rc = handle_readable(b, h, on_reply, err);
            if (rc)
                return rc;
        }
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
        ms_wire_head_t head = { .request_id = b->next_id++, .epoch = MS_BACKEND_NET_EPOCH };
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
    bool covered = build_table(b, hs, &cov) == 0;
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
    else
        rc = rc ? rc : build_table(b, &hs, err);
    b->st.expert_bytes_per_token = hs.slice_bytes * (uint64_t)b->n_layer * (uint64_t)b->k_max;
    free(hs.bits);
    drop_pending(b);
    return rc;
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
    ms_wire_head_t head = { .request_id = b->next_id++, .epoch = MS_BACKEND_NET_EPOCH };
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
    b->submitted = true;
    b->st.last_bytes_sent = 0;
    b->st.last_bytes_received = 0;
    for (int h = 0; h < b->n_hosts; h++) {
        net_host_t *H = &b->hosts[h];
        H->send_rc = H->n_tok ? send_batch(b, H, x) : 0;
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
    H->reply = msg->frame; /* points into H->rx, which stays open until the combine */
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
            .last_reply_us = H->last_reply_us };
    }
    pthread_mutex_unlock(&b->pub_lock);
}

static int report_send_failure(net_backend_t *b, ms_err_t *err)
{
    for (int h = 0; h < b->n_hosts; h++) {
        const net_host_t *H = &b->hosts[h];
        if (H->send_rc) {
            ms_err_set(err, "layer %d: sending the batch to host %s failed: %s", b->il, H->endpoint,
                       zmq_strerror(-H->send_rc));
            return H->send_rc == -EAGAIN ? -EIO : H->send_rc;
        }
    }
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
    ms_pool_set_spin(b->p.pool, 0); /* no pool thread polls while this one sleeps in zmq_poll */
    uint64_t received0 = b->st.bytes_received;
    int rc = report_send_failure(b, err);
    if (!rc) {
        rc = poll_replies(b, now_ms() + b->p.deadline_ms, on_result, err);
        if (rc == -ETIMEDOUT) {
            text_t t = { .len = 0 };
            list_pending(b, &t);
            ms_err_set(err, "layer %d: no reply within %d ms from %s (host down or overloaded)", b->il,
                       b->p.deadline_ms, t.buf);
        }
    }
    if (!rc) {
        combine(b, out);
        b->st.dispatches++;
    }
    b->st.last_bytes_received = b->st.bytes_received - received0;
    drop_pending(b);
    publish(b);
    return rc;
}

/* ---- creation ---- */

static void net_destroy(ms_expert_backend_t *self)
{
    net_backend_t *b = (net_backend_t *)self;
    for (int h = 0; b->hosts && h < b->n_hosts; h++) {
        ms_wire_rx_close(&b->hosts[h].rx);
        if (b->hosts[h].sock)
            zmq_close(b->hosts[h].sock);
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
    }
    free(b->hosts);
    free(b->pub_hosts);
    if (b->pub_lock_init)
        pthread_mutex_destroy(&b->pub_lock);
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
        p->max_tokens < 1 || p->max_tokens > MS_BATCH_TOKENS_MAX) {
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
    atomic_init(&H->frame_held, 0);
    return H->endpoint && H->tok && H->ids && H->w && H->frame ? 0 : -ENOMEM;
}

static int alloc_backend(net_backend_t *b, const char *const *endpoints, ms_err_t *err)
{
    size_t rows = (size_t)b->p.max_tokens;
    b->hosts = calloc((size_t)b->n_hosts, sizeof(*b->hosts));
    b->pub_hosts = calloc((size_t)b->n_hosts, sizeof(*b->pub_hosts));
    b->items = calloc((size_t)b->n_hosts, sizeof(*b->items));
    b->hdr = malloc(MS_WIRE_HEADER_BYTES_MAX);
    b->copy = malloc(rows * (size_t)b->d * b->wbytes);
    b->conv = malloc(rows * (size_t)b->d * sizeof(float));
    int rc = b->hosts && b->pub_hosts && b->items && b->hdr && b->copy && b->conv ? ms_wire_msg_new(&b->msg) : -ENOMEM;
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
    b->base = (ms_expert_backend_t){ .name = "net", .submit = net_submit, .wait = net_wait, .destroy = net_destroy };
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
    rc = alloc_backend(b, endpoints, err);
    b->zctx = rc ? NULL : zmq_ctx_new();
    if (!rc && !b->zctx) {
        rc = -zmq_errno();
        ms_err_set(err, "cannot create a ZeroMQ context: %s", zmq_strerror(-rc));
    }
    for (int h = 0; !rc && h < n_hosts; h++)
        rc = connect_host(b, &b->hosts[h], err);
    rc = rc ? rc : hello_round(b, err);
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
    return ((const net_backend_t *)self)->n_hosts;
}

int ms_backend_net_host_stats(const ms_expert_backend_t *self, int h, ms_backend_net_host_stats_t *ret_stats)
{
    if (!self || self->submit != net_submit || h < 0 || h >= ((const net_backend_t *)self)->n_hosts)
        return -EINVAL;
    net_backend_t *b = (net_backend_t *)self;
    pthread_mutex_lock(&b->pub_lock);
    *ret_stats = b->pub_hosts[h];
    pthread_mutex_unlock(&b->pub_lock);
    return 0;
}
