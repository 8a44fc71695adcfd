/* ZeroMQ send/receive of wire messages; validation of what is received is
 * the codec's (wire.c). */
#include "wire_zmq.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

int ms_wire_zmq_limits(void *sock)
{
    int64_t max = (int64_t)MS_WIRE_FRAME_BYTES_MAX;
    if (max < MS_WIRE_HEADER_BYTES_MAX)
        max = MS_WIRE_HEADER_BYTES_MAX;
    int linger_ms = 100;
    if (zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof(max)) ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger_ms, sizeof(linger_ms)))
        return -zmq_errno();
    return 0;
}

void ms_wire_rx_close(ms_wire_rx_t *rx)
{
    for (int i = 0; i < rx->n_parts; i++)
        zmq_msg_close(&rx->part[i]);
    rx->n_parts = 0;
    rx->n_dropped = 0;
}

/* Discards the rest of a message that has too many parts. */
static int drain(void *sock, ms_wire_rx_t *rx)
{
    zmq_msg_t m;
    int more = 1;
    while (more) {
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            return -e;
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        rx->n_dropped++;
    }
    return 0;
}

int ms_wire_zmq_recv(void *sock, ms_wire_rx_t *rx, int flags)
{
    rx->n_parts = 0;
    rx->n_dropped = 0;
    for (;;) {
        zmq_msg_t *m = &rx->part[rx->n_parts];
        zmq_msg_init(m);
        /* only the first part may be non-blocking: the rest arrive atomically with it */
        if (zmq_msg_recv(m, sock, rx->n_parts ? 0 : flags) < 0) {
            int e = zmq_errno();
            zmq_msg_close(m);
            return -e;
        }
        rx->n_parts++;
        if (!zmq_msg_more(m))
            return 0;
        if (rx->n_parts == MS_WIRE_PARTS_MAX)
            return drain(sock, rx);
    }
}

int ms_wire_rx_decode(ms_wire_rx_t *rx, int hdr_part, ms_wire_msg_t *msg, ms_err_t *err)
{
    if (rx->n_dropped || rx->n_parts <= hdr_part) {
        memset(&msg->head, 0, sizeof(msg->head));
        if (rx->n_dropped) {
            ms_err_set(err, "message of %zu parts: more than a header and its tensor frames (at most %d)",
                       (size_t)rx->n_parts + rx->n_dropped, MS_WIRE_PARTS_MAX);
            return -EMSGSIZE;
        }
        ms_err_set(err, "message has no header frame");
        return -EPROTO;
    }
    const void *frames[MS_WIRE_PARTS_MAX];
    size_t sizes[MS_WIRE_PARTS_MAX], nf = 0;
    for (int i = hdr_part + 1; i < rx->n_parts; i++, nf++) {
        frames[nf] = ms_wire_rx_data(rx, i);
        sizes[nf] = ms_wire_rx_size(rx, i);
    }
    return ms_wire_decode(msg, ms_wire_rx_data(rx, hdr_part), ms_wire_rx_size(rx, hdr_part), frames, sizes, nf, err);
}

static int send_part(void *sock, const void *data, size_t len, int more)
{
    if (zmq_send(sock, data, len, more ? ZMQ_SNDMORE : 0) < 0)
        return -zmq_errno();
    return 0;
}

int ms_wire_zmq_send(void *sock, const void *route, size_t route_len, const void *hdr, size_t hdr_len,
                     const void *frame, size_t frame_bytes)
{
    int rc = 0;
    if (route)
        rc = send_part(sock, route, route_len, 1);
    if (!rc)
        rc = send_part(sock, hdr, hdr_len, frame != NULL);
    if (!rc && frame)
        rc = send_part(sock, frame, frame_bytes, 0);
    return rc;
}
