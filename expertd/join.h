/* expertd --join: a thread that asks a coordinator, every few seconds, to
 * add this host to its placement (a Hello naming this host's endpoint), so
 * hosts can be added to a running cluster and find a restarted coordinator. */
#ifndef EXPERTD_JOIN_H
#define EXPERTD_JOIN_H

#include <stdint.h>

#include "curve.h"
#include "err.h"

#define EXPERTD_JOIN_INTERVAL_MS 2000 /* between two Hellos */

typedef struct {
    const char *coordinator;             /* the coordinator's client endpoint (moeshard serve --listen) */
    const char *advertise;               /* this host's serving endpoint as the coordinator reaches it */
    const ms_curve_keypair_t *key;       /* this host's key pair, or NULL for plaintext */
    const char *coordinator_key;         /* the coordinator's public key (Z85); required with key */
    int32_t n_layer, hidden, n_expert;   /* the model this host serves */
    int interval_ms;                     /* [100, 3600000] */
} expertd_join_params_t;

typedef struct expertd_join expertd_join_t;

/* Connects to the coordinator and starts the thread. -EINVAL (bad
 * parameters or an endpoint ZeroMQ refuses), -ENOMEM, -errno; err says which. */
int expertd_join_start(const expertd_join_params_t *p, expertd_join_t **ret_join, ms_err_t *err);
/* Stops the thread and closes the socket. Accepts NULL and *self_p == NULL. */
void expertd_join_stop(expertd_join_t **self_p);

#endif
