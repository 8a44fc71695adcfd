/* Thin ZeroMQ helpers for the wire protocol: socket limits, and sending and
 * receiving one multipart message [routing id] header [tensor frame]. */
#ifndef MS_WIRE_ZMQ_H
#define MS_WIRE_ZMQ_H

#include <stdbool.h>
#include <stddef.h>

#include <zmq.h>

#include "err.h"
#include "limits.h"
#include "wire.h"

/* One received message: its parts, kept as ZeroMQ messages (no copies). */
typedef struct {
    zmq_msg_t part[MS_WIRE_PARTS_MAX];
    int n_parts;            /* parts held in part[] */
    size_t n_dropped;       /* parts beyond MS_WIRE_PARTS_MAX, received and discarded */
} ms_wire_rx_t;

/* Sets ZMQ_MAXMSGSIZE (the largest frame the protocol allows: a larger one
 * makes ZeroMQ drop the peer's connection) and a short linger. -errno. */
int ms_wire_zmq_limits(void *sock);

/* Receives every part of the next message (flags: 0 or ZMQ_DONTWAIT).
 * Returns 0 (rx holds n_parts parts; parts past MS_WIRE_PARTS_MAX are
 * counted in n_dropped, which the caller refuses), -EAGAIN, or -errno.
 * Release with ms_wire_rx_close, also after a failure. */
int ms_wire_zmq_recv(void *sock, ms_wire_rx_t *rx, int flags);
void ms_wire_rx_close(ms_wire_rx_t *rx);

static inline const void *ms_wire_rx_data(ms_wire_rx_t *rx, int i)
{
    return zmq_msg_data(&rx->part[i]);
}
static inline size_t ms_wire_rx_size(ms_wire_rx_t *rx, int i)
{
    return zmq_msg_size(&rx->part[i]);
}

/* Decodes rx into msg: part hdr_part is the header (1 after a ROUTER's
 * routing id, else 0) and the parts after it are its tensor frames.
 * -EMSGSIZE when parts were dropped (more than MS_WIRE_PARTS_MAX), -EPROTO
 * when there is no header part (msg->head is zeroed in both cases), else
 * what ms_wire_decode returns; err says which. */
int ms_wire_rx_decode(ms_wire_rx_t *rx, int hdr_part, ms_wire_msg_t *msg, ms_err_t *err);

/* Sends [route] hdr [frame]: route is the peer's routing id on a ROUTER
 * (NULL on a DEALER), frame NULL when the message has no tensor frame.
 * The bytes are copied into ZeroMQ before return. -errno. */
int ms_wire_zmq_send(void *sock, const void *route, size_t route_len, const void *hdr, size_t hdr_len,
                     const void *frame, size_t frame_bytes);

#endif
