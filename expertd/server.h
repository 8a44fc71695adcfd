/* expertd's serving loop: a ZeroMQ ROUTER answering ExpertBatch, Hello,
 * Heartbeat and Stats requests until SIGTERM/SIGINT arrives on sig_fd. */
#ifndef EXPERTD_SERVER_H
#define EXPERTD_SERVER_H

#include "err.h"
#include "store.h"

/* Binds listen, tells systemd it is ready, serves until a signal is read
 * from sig_fd (a signalfd), finishing the batch in hand first. 0 after a
 * clean stop; -errno with err when the socket cannot be set up. */
int expertd_serve(expertd_store_t *store, const char *listen, int threads, int sig_fd, ms_err_t *err);

#endif
