/* expertd's serving loop: a ZeroMQ ROUTER answering ExpertBatch, Hello,
 * Heartbeat and Stats requests until SIGTERM/SIGINT arrives on sig_fd. */
#ifndef EXPERTD_SERVER_H
#define EXPERTD_SERVER_H

#include "curve.h"
#include "err.h"
#include "store.h"

/* CURVE on the listening socket (docs/security.md); both NULL: plaintext. */
typedef struct {
    const ms_curve_keypair_t *key;   /* this host's key pair */
    const ms_curve_allow_t *allow;   /* coordinator keys admitted; must outlive expertd_serve */
} expertd_security_t;

/* Binds listen, tells systemd it is ready, serves until a signal is read
 * from sig_fd (a signalfd), finishing the batch in hand first. 0 after a
 * clean stop; -errno with err when the socket cannot be set up. */
int expertd_serve(expertd_store_t *store, const char *listen, int threads, const expertd_security_t *sec, int sig_fd,
                  ms_err_t *err);

#endif
