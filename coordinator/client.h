/* The client side of the coordinator's endpoint (docs/serve.md), shared by
 * `moeshard generate`, `status` and `chat`: one DEALER socket, requests out,
 * the decoded replies of one request in. Returns errors; never prints. */
#ifndef COORD_CLIENT_H
#define COORD_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "client_wire.h"
#include "err.h"

#define COORD_CLIENT_TIMEOUT_MS_MAX 3600000 /* the longest silence a client may be told to accept */

typedef struct coord_client coord_client_t;

/* How the link is secured (docs/security.md): CURVE with both key files, or
 * plaintext, which only a loopback server endpoint accepts. */
typedef struct {
    const char *key_file;         /* --key: this client's key pair */
    const char *server_key_file;  /* --server-key: the coordinator's public key */
    bool plaintext;               /* --plaintext */
} coord_client_sec_t;

/* Connects a DEALER to server (e.g. tcp://127.0.0.1:5600) with the wire's
 * size limits, secured as sec says: -EPERM with err saying what to do for
 * no keys, keys with --plaintext, or plaintext beyond loopback; a key file
 * that cannot be used is -EPERM too (err names it). A coordinator that
 * refuses the handshake (key not allowed, wrong server key, plaintext on one
 * side only) makes the next wait fail with -ECONNREFUSED and err saying why. ZeroMQ connects in the background: a coordinator that is not
 * up yet gets the requests queued, and an absent one shows as a timeout.
 * timeout_ms in [1, COORD_CLIENT_TIMEOUT_MS_MAX] bounds each wait of
 * coord_client_recv and coord_client_status: how long the coordinator may
 * stay silent. intr_fd is -1, or a descriptor that becomes readable when the
 * user interrupts (a signalfd, or the read end of a self-pipe written by a
 * signal handler); a wait that finds it readable drains one read of it and
 * returns -EINTR. -EINVAL with err for a bad timeout or an endpoint ZeroMQ
 * does not accept (quoting it); -ENOMEM, -EIO (err says which). */
int coord_client_new(const char *server, const coord_client_sec_t *sec, int64_t timeout_ms, int intr_fd,
                     coord_client_t **ret_client, ms_err_t *err);
void coord_client_destroy(coord_client_t **self_p);

/* Sends g as a new request; its id goes to *ret_id. Waits at most the
 * client's timeout for a connection to take it. -EINVAL (a field out of its
 * bound), -EMSGSIZE, or as coord_client_recv (-ETIMEDOUT, -EINTR,
 * -ECONNREFUSED, ...), each with err. */
int coord_client_send_generate(coord_client_t *c, const ms_cw_generate_t *g, uint64_t *ret_id, ms_err_t *err);

/* Waits at most the client's timeout for the next message of request id and
 * decodes it into *msg (release it with ms_cw_msg_clear). Messages of other
 * ids, such as the tail of a request cancelled earlier, are dropped.
 * -ETIMEDOUT, -EINTR (intr_fd), -ECONNREFUSED (handshake refused, err), -EPROTO with err for a message that cannot
 * be decoded (malformed, or no memory for it), -EIO when polling fails. *msg holds nothing to release after a failure. */
int coord_client_recv(coord_client_t *c, uint64_t id, ms_cw_msg_t *msg, ms_err_t *err);

/* Sends Cancel for id, then waits up to wait_ms for the request's last
 * message (an Error, or a done or error event), dropping its other text.
 * 0 once the coordinator confirms; -ETIMEDOUT, -EINTR (interrupted again),
 * -EPROTO (err), or the socket's -errno when the Cancel could not be sent. */
int coord_client_cancel(coord_client_t *c, uint64_t id, int64_t wait_ms, ms_err_t *err);

/* Asks for the coordinator's status and waits for it: 0 with *msg of kind
 * MS_CW_STATUS (release with ms_cw_msg_clear). -EREMOTEIO with err holding
 * the coordinator's Error message; -EPROTO (err) for a malformed or
 * unexpected reply; -ETIMEDOUT, -EINTR, or the socket's -errno. */
int coord_client_status(coord_client_t *c, ms_cw_msg_t *msg, ms_err_t *err);

#endif
