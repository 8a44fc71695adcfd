/* One DEALER to the coordinator (client.h): request ids, sending, and the
 * wait that multiplexes replies with the user's Ctrl-C. */
#include "client.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "curve.h"
#include "wire_zmq.h"

#define CLIENT_INTR_READ_BYTES 128 /* one signalfd_siginfo, or a burst of self-pipe bytes */

struct coord_client {
    void *zctx, *sock;
    ms_curve_monitor_t *mon;  /* turns a refused handshake into an error, not a timeout */
    char peer[160];           /* "the coordinator at EP", for messages */
    int intr_fd;
    int64_t timeout_ms;
    uint64_t next_id;
    unsigned char *hdr; /* encode buffer of MS_WIRE_HEADER_BYTES_MAX */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CURVE client options from the key files, or the plaintext check. -EPERM (err). */
static int client_secure(coord_client_t *c, const char *server, const coord_client_sec_t *sec, ms_err_t *err)
{
    bool keys = sec && (sec->key_file || sec->server_key_file);
    if (!keys && !(sec && sec->plaintext)) {
        ms_err_set(err, "no keys: make a key pair with 'moeshard keygen --out NAME', have the coordinator allow "
                        "NAME.pub, and pass --key NAME.key --server-key SERVER.pub; or --plaintext when the "
                        "coordinator is on this machine (docs/security.md)");
        return -EPERM;
    }
    if (!keys)
        return ms_curve_plaintext_check(&server, 1, err) ? -EPERM : 0;
    if (sec->plaintext || !sec->key_file || !sec->server_key_file) {
        ms_err_set(err, "%s", sec->plaintext ? "--plaintext and --key/--server-key exclude each other"
                                             : "--key and --server-key go together");
        return -EPERM;
    }
    ms_curve_keypair_t kp;
    char server_pub[MS_CURVE_Z85_BYTES + 1];
    int rc = ms_curve_keypair_load(sec->key_file, &kp, err);
    rc = rc ? rc : ms_curve_pubkey_load(sec->server_key_file, server_pub, err);
    if (!rc && (rc = ms_curve_client_setup(c->sock, &kp, server_pub)))
        ms_err_set(err, "cannot set up CURVE: %s", zmq_strerror(-rc));
    memset(&kp, 0, sizeof(kp));
    return rc ? -EPERM : 0;
}

static int client_connect(coord_client_t *c, const char *server, const coord_client_sec_t *sec, ms_err_t *err)
{
    c->zctx = zmq_ctx_new();
    c->sock = c->zctx ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
    if (!c->sock) {
        ms_err_set(err, "cannot set up a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        return -EIO;
    }
    int rc = ms_wire_zmq_limits(c->sock);
    if (rc) {
        ms_err_set(err, "cannot set the ZeroMQ socket's limits: %s", zmq_strerror(-rc));
        return -EIO;
    }
    snprintf(c->peer, sizeof(c->peer), "the coordinator at %.120s", server);
    rc = client_secure(c, server, sec, err);
    rc = rc ? rc : ms_curve_monitor_new(c->zctx, c->sock, &c->mon, err) ? -EIO : 0;
    if (rc)
        return rc;
    if (zmq_connect(c->sock, server)) {
        ms_err_set(err, "'%s' is not an endpoint ZeroMQ accepts (%s)", server, zmq_strerror(zmq_errno()));
        return -EINVAL;
    }
    return 0;
}

int coord_client_new(const char *server, const coord_client_sec_t *sec, int64_t timeout_ms, int intr_fd,
                     coord_client_t **ret_client, ms_err_t *err)
{
    if (!server || timeout_ms < 1 || timeout_ms > COORD_CLIENT_TIMEOUT_MS_MAX) {
        ms_err_set(err, "a client needs an endpoint and a timeout in [1, %d] ms", COORD_CLIENT_TIMEOUT_MS_MAX);
        return -EINVAL;
    }
    coord_client_t *c = calloc(1, sizeof(*c));
    if (!c || !(c->hdr = malloc(MS_WIRE_HEADER_BYTES_MAX))) {
        free(c);
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    c->intr_fd = intr_fd;
    c->timeout_ms = timeout_ms;
    /* a random start keeps ids of successive runs apart in the coordinator's log */
    if (getrandom(&c->next_id, sizeof(c->next_id), 0) != sizeof(c->next_id))
        c->next_id = (uint64_t)now_ms();
    int rc = client_connect(c, server, sec, err);
    if (rc) {
        coord_client_destroy(&c);
        return rc;
    }
    *ret_client = c;
    return 0;
}

void coord_client_destroy(coord_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    coord_client_t *c = *self_p;
    ms_curve_monitor_destroy(&c->mon);
    if (c->sock)
        zmq_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    free(c->hdr);
    free(c);
    *self_p = NULL;
}

/* ----------------------------------------------------------- waiting */

/* Drains the interrupt descriptor; true when it was readable. */
static bool take_interrupt(coord_client_t *c, short revents)
{
    if (!(revents & ZMQ_POLLIN))
        return false;
    char buf[CLIENT_INTR_READ_BYTES];
    return read(c->intr_fd, buf, sizeof(buf)) > 0;
}

/* Takes one waiting message off the socket and decodes it. 0, -EAGAIN
 * (nothing complete yet), -EPROTO (err). */
static int take_message(coord_client_t *c, ms_cw_msg_t *msg, ms_err_t *err)
{
    ms_wire_rx_t rx;
    int rc = ms_wire_zmq_recv(c->sock, &rx, ZMQ_DONTWAIT);
    if (rc && rc != -EAGAIN) {
        ms_err_set(err, "receiving a reply failed: %s", strerror(-rc));
        rc = -EPROTO;
    } else if (!rc && (rx.n_parts != 1 || rx.n_dropped)) {
        ms_err_set(err, "a reply of %d frames (expected one header frame)", rx.n_parts + (int)rx.n_dropped);
        rc = -EPROTO;
    } else if (!rc) {
        rc = ms_cw_decode(ms_wire_rx_data(&rx, 0), ms_wire_rx_size(&rx, 0), msg, err);
        if (rc == -ENOMEM)
            ms_err_set(err, "out of memory decoding a reply");
        if (rc)
            ms_cw_msg_clear(msg);
        rc = rc ? -EPROTO : 0;
    }
    ms_wire_rx_close(&rx);
    return rc;
}

/* Waits until the socket can take (ZMQ_POLLOUT) or give (ZMQ_POLLIN) a
 * message, before deadline (now_ms clock). 0; -ETIMEDOUT; -EINTR (Ctrl-C or
 * SIGTERM on intr_fd); -ECONNREFUSED (the handshake was refused, err);
 * -ECONNRESET (the connection dropped, err); -EIO (err). */
static int wait_socket(coord_client_t *c, short events, int64_t deadline, ms_err_t *err)
{
    zmq_pollitem_t it[3] = { { .socket = c->sock, .events = events },
                             { .fd = c->intr_fd, .events = ZMQ_POLLIN },
                             { .socket = ms_curve_monitor_socket(c->mon), .events = ZMQ_POLLIN } };
    if (c->intr_fd < 0)
        it[1] = it[2];
    int n_items = c->intr_fd >= 0 ? 3 : 2, i_mon = n_items - 1;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        it[0].revents = it[1].revents = it[2].revents = 0;
        if (zmq_poll(it, n_items, (long)left) < 0) {
            if (zmq_errno() == EINTR)
                continue; /* a handled signal; a Ctrl-C shows on intr_fd */
            ms_err_set(err, "waiting for the coordinator failed: %s", zmq_strerror(zmq_errno()));
            return -EIO;
        }
        if (n_items == 3 && take_interrupt(c, it[1].revents))
            return -EINTR;
        if ((it[i_mon].revents & ZMQ_POLLIN) && ms_curve_monitor_read(c->mon, c->peer, err) < 0)
            return -ECONNREFUSED;
        if (ms_curve_monitor_lost(c->mon)) {
            ms_err_set(err, "lost the connection to %s: the request was not completed (the coordinator stopped or "
                            "restarted); send it again", c->peer);
            return -ECONNRESET;
        }
        if (it[0].revents & events)
            return 0;
    }
}

/* ------------------------------------------------------------- sending */

/* Sends the encoded header (len bytes of c->hdr) before deadline. ZeroMQ
 * blocks a send while the socket has no connection to hand it to (nothing
 * listens at the endpoint, or the handshake failed), so the send waits as a
 * receive does: bounded, interruptible, and a refused handshake is an error.
 * Errors as wait_socket, with err set for -ETIMEDOUT too. */
static int send_until(coord_client_t *c, size_t len, int64_t deadline, ms_err_t *err)
{
    int64_t window = deadline - now_ms();
    for (;;) {
        if (zmq_send(c->sock, c->hdr, len, ZMQ_DONTWAIT) >= 0)
            return 0;
        if (zmq_errno() != EAGAIN && zmq_errno() != EINTR) {
            ms_err_set(err, "sending to %s failed: %s", c->peer, zmq_strerror(zmq_errno()));
            return -EIO;
        }
        int rc = wait_socket(c, ZMQ_POLLOUT, deadline, err);
        if (rc == -ETIMEDOUT)
            ms_err_set(err, "could not reach %s within %" PRId64 " ms (is 'moeshard serve' running there?)", c->peer,
                       window);
        if (rc)
            return rc;
    }
}

int coord_client_send_generate(coord_client_t *c, const ms_cw_generate_t *g, uint64_t *ret_id, ms_err_t *err)
{
    uint64_t id = ++c->next_id;
    size_t len = 0;
    int rc = ms_cw_encode_generate(id, g, c->hdr, MS_WIRE_HEADER_BYTES_MAX, &len);
    if (rc) {
        ms_err_set(err, "the request cannot be encoded (%s)", strerror(-rc));
        return rc;
    }
    rc = send_until(c, len, now_ms() + c->timeout_ms, err);
    if (!rc)
        *ret_id = id;
    return rc;
}

/* ----------------------------------------------------------- receiving */

/* The next message of id before deadline (now_ms clock); see coord_client_recv. */
static int recv_until(coord_client_t *c, uint64_t id, int64_t deadline, ms_cw_msg_t *msg, ms_err_t *err)
{
    for (;;) {
        int rc = wait_socket(c, ZMQ_POLLIN, deadline, err);
        if (rc)
            return rc;
        rc = take_message(c, msg, err);
        if (rc == -EAGAIN)
            continue;
        if (rc || msg->request_id == id)
            return rc;
        ms_cw_msg_clear(msg);
    }
}

int coord_client_recv(coord_client_t *c, uint64_t id, ms_cw_msg_t *msg, ms_err_t *err)
{
    return recv_until(c, id, now_ms() + c->timeout_ms, msg, err);
}

static bool is_last(const ms_cw_msg_t *m)
{
    return m->kind == MS_CW_ERROR ||
           (m->kind == MS_CW_EVENT && (m->ev.kind == MS_CW_EV_DONE || m->ev.kind == MS_CW_EV_ERROR));
}

int coord_client_cancel(coord_client_t *c, uint64_t id, int64_t wait_ms, ms_err_t *err)
{
    size_t len = 0;
    int64_t deadline = now_ms() + wait_ms;
    int rc = ms_cw_encode_cancel(id, c->hdr, MS_WIRE_HEADER_BYTES_MAX, &len);
    if (rc) {
        ms_err_set(err, "cannot encode Cancel: %s", strerror(-rc));
        return rc;
    }
    rc = send_until(c, len, deadline, err);
    if (rc)
        return rc;
    for (;;) {
        ms_cw_msg_t msg;
        rc = recv_until(c, id, deadline, &msg, err);
        if (rc)
            return rc;
        bool last = is_last(&msg);
        ms_cw_msg_clear(&msg);
        if (last)
            return 0;
    }
}

/* ------------------------------------------------------------- status */

int coord_client_status(coord_client_t *c, ms_cw_msg_t *msg, ms_err_t *err)
{
    uint64_t id = ++c->next_id;
    size_t len = 0;
    int rc = ms_cw_encode_status_query(id, c->hdr, MS_WIRE_HEADER_BYTES_MAX, &len);
    if (rc) {
        ms_err_set(err, "cannot encode StatusQuery: %s", strerror(-rc));
        return rc;
    }
    rc = send_until(c, len, now_ms() + c->timeout_ms, err);
    rc = rc ? rc : coord_client_recv(c, id, msg, err);
    if (rc || msg->kind == MS_CW_STATUS)
        return rc;
    if (msg->kind == MS_CW_ERROR) {
        ms_err_set(err, "%s", msg->error.message);
        rc = -EREMOTEIO;
    } else {
        ms_err_set(err, "a reply of kind %d to StatusQuery", (int)msg->kind);
        rc = -EPROTO;
    }
    ms_cw_msg_clear(msg);
    return rc;
}
