/* The join thread: its own ZeroMQ context and DEALER, so nothing is shared
 * with the serving loop. The coordinator answers only refusals; acceptance
 * shows as the coordinator connecting to the advertised endpoint. */
#include "join.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "limits.h"
#include "log.h"
#include "wire.h"
#include "wire_zmq.h"

#define JOIN_POLL_MS 100 /* how soon a stop is noticed */

struct expertd_join {
    expertd_join_params_t p;
    char coordinator[MS_WIRE_ENDPOINT_BYTES_MAX + 1];
    void *zctx, *sock;
    pthread_t thread;
    bool started;
    atomic_int stop;
    ms_wire_msg_t *msg;
    unsigned char *hdr;
    char last_refusal[MS_WIRE_ERROR_BYTES_MAX + 1];
    ms_wire_hello_t hello;
};

static void send_hello(expertd_join_t *j, uint64_t id)
{
    ms_wire_head_t head = { .request_id = id };
    size_t len;
    ms_err_t e = { { 0 } };
    if (ms_wire_encode_hello(&head, &j->hello, j->hdr, MS_WIRE_HEADER_BYTES_MAX, &len, &e) == 0)
        zmq_send(j->sock, j->hdr, len, ZMQ_DONTWAIT); /* a full queue: the coordinator is away; next time */
    else
        ms_log_error("join: cannot encode Hello: %s", e.msg);
}

/* A refusal is logged once until it changes (a coordinator serving a pack, ...). */
static void read_replies(expertd_join_t *j)
{
    for (;;) {
        ms_wire_rx_t rx;
        int rc = ms_wire_zmq_recv(j->sock, &rx, ZMQ_DONTWAIT);
        if (rc) {
            ms_wire_rx_close(&rx);
            return;
        }
        ms_err_t e = { { 0 } };
        if (rx.n_parts == 1 && !rx.n_dropped &&
            ms_wire_decode(j->msg, ms_wire_rx_data(&rx, 0), ms_wire_rx_size(&rx, 0), NULL, NULL, 0, &e) == 0 &&
            j->msg->kind == MS_WIRE_ERROR && strcmp(j->last_refusal, j->msg->error.message) != 0) {
            snprintf(j->last_refusal, sizeof(j->last_refusal), "%s", j->msg->error.message);
            ms_log_warn("join: the coordinator at %s refuses this host: %s", j->coordinator, j->last_refusal);
        }
        ms_wire_rx_close(&rx);
    }
}

static void *join_main(void *arg)
{
    expertd_join_t *j = arg;
    uint64_t id = 1;
    int waited = j->p.interval_ms; /* the first Hello at once */
    while (!atomic_load(&j->stop)) {
        if (waited >= j->p.interval_ms) {
            send_hello(j, id++);
            waited = 0;
        }
        zmq_pollitem_t it = { .socket = j->sock, .events = ZMQ_POLLIN };
        int n = zmq_poll(&it, 1, JOIN_POLL_MS);
        if (n > 0)
            read_replies(j);
        waited += JOIN_POLL_MS;
    }
    return NULL;
}

static int check_params(const expertd_join_params_t *p, ms_err_t *err)
{
    if (!p->coordinator || !p->coordinator[0] || strlen(p->coordinator) > MS_WIRE_ENDPOINT_BYTES_MAX) {
        ms_err_set(err, "--join: expects the coordinator's endpoint (1 to %d bytes)", MS_WIRE_ENDPOINT_BYTES_MAX);
        return -EINVAL;
    }
    if (!p->advertise || !p->advertise[0] || strlen(p->advertise) > MS_WIRE_ENDPOINT_BYTES_MAX) {
        ms_err_set(err, "--advertise: expects this host's endpoint as the coordinator reaches it (1 to %d bytes)",
                   MS_WIRE_ENDPOINT_BYTES_MAX);
        return -EINVAL;
    }
    if (p->key && !p->coordinator_key) {
        ms_err_set(err, "--join with --key needs --coordinator-key: the coordinator's public key file");
        return -EINVAL;
    }
    if (p->interval_ms < 100 || p->interval_ms > 3600000) {
        ms_err_set(err, "join: interval %d ms outside [100, 3600000]", p->interval_ms);
        return -EINVAL;
    }
    return 0;
}

static int connect_coordinator(expertd_join_t *j, ms_err_t *err)
{
    j->zctx = zmq_ctx_new();
    j->sock = j->zctx ? zmq_socket(j->zctx, ZMQ_DEALER) : NULL;
    if (!j->sock) {
        ms_err_set(err, "join: cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        return -ENOMEM;
    }
    int rc = ms_wire_zmq_limits(j->sock);
    if (!rc && j->p.key)
        rc = ms_curve_client_setup(j->sock, j->p.key, j->p.coordinator_key);
    if (rc) {
        ms_err_set(err, "join: cannot configure the socket: %s", zmq_strerror(-rc));
        return rc;
    }
    if (zmq_connect(j->sock, j->coordinator)) {
        ms_err_set(err, "--join '%s': ZeroMQ refuses the endpoint (%s); expected tcp://HOST:PORT", j->coordinator,
                   zmq_strerror(zmq_errno()));
        return -EINVAL;
    }
    return 0;
}

int expertd_join_start(const expertd_join_params_t *p, expertd_join_t **ret_join, ms_err_t *err)
{
    int rc = check_params(p, err);
    if (rc)
        return rc;
    expertd_join_t *j = calloc(1, sizeof(*j));
    if (!j || !(j->hdr = malloc(MS_WIRE_HEADER_BYTES_MAX)) || ms_wire_msg_new(&j->msg)) {
        expertd_join_stop(&j);
        ms_err_set(err, "join: out of memory");
        return -ENOMEM;
    }
    j->p = *p;
    snprintf(j->coordinator, sizeof(j->coordinator), "%s", p->coordinator);
    j->hello = (ms_wire_hello_t){ .host_id = -1, .n_layer = p->n_layer, .hidden = p->hidden,
                                  .n_expert = p->n_expert };
    snprintf(j->hello.endpoint, sizeof(j->hello.endpoint), "%s", p->advertise);
    rc = connect_coordinator(j, err);
    if (!rc && pthread_create(&j->thread, NULL, join_main, j)) {
        ms_err_set(err, "join: cannot start its thread");
        rc = -EAGAIN;
    }
    if (rc) {
        expertd_join_stop(&j);
        return rc;
    }
    j->started = true;
    ms_log_info("join: asking the coordinator at %s to add this host (%s) every %.1f s", j->coordinator,
                p->advertise, (double)p->interval_ms / 1e3);
    *ret_join = j;
    return 0;
}

void expertd_join_stop(expertd_join_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    expertd_join_t *j = *self_p;
    if (j->started) {
        atomic_store(&j->stop, 1);
        pthread_join(j->thread, NULL);
    }
    if (j->sock)
        zmq_close(j->sock);
    if (j->zctx)
        zmq_ctx_term(j->zctx);
    ms_wire_msg_destroy(&j->msg);
    free(j->hdr);
    free(j);
    *self_p = NULL;
}
