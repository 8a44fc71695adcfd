/* The coordinator's client endpoint (docs/serve.md): a ROUTER socket taking
 * Generate, Cancel and StatusQuery from `moeshard generate`/`status`, and the
 * scheduler's events streamed back to the clients that asked. */
#ifndef COORD_SERVE_H
#define COORD_SERVE_H

#include <stdint.h>

#include "backend.h"
#include "curve.h"
#include "err.h"
#include "model.h"
#include "sched.h"
#include "ratelimit.h"
#include "wire.h"

#define COORD_SERVE_REQUESTS_MAX 4096 /* client requests in flight (queued or running) */

typedef struct {
    const char *listen;          /* ZeroMQ endpoint to bind, e.g. tcp://127.0.0.1:5600 */
    const char *model_name;      /* shown by status */
    const ms_model_t *m;
    ms_sched_t *sched;
    ms_expert_backend_t *backend; /* a network backend gives per-host figures */
    int n_hosts;                 /* 0: experts in this process */
    ms_wire_dtype_t wire;
    int32_t n_seq_max;
    int sig_fd;                  /* readable when the server should stop (a signalfd) */
    const ms_curve_keypair_t *curve_key;   /* CURVE server key pair; NULL: plaintext (docs/security.md) */
    const ms_curve_allow_t *curve_allow;   /* client keys admitted; borrowed, outlives the server */
    const ms_curve_allow_t *join_allow;    /* expert-host keys that may join (expertd --join); NULL: none.
                                            * Admitted on the endpoint, but they may only join */
    ms_ratelimit_t *rate;        /* per-client Generate rate (by CURVE key, else address); NULL: unlimited */
    int rate_per_min;
} coord_server_params_t;

typedef struct coord_server coord_server_t;

/* Binds the endpoint. -EINVAL (bad endpoint), -EADDRINUSE, -ENOMEM; err says which. */
int coord_server_new(const coord_server_params_t *p, coord_server_t **ret_server, ms_err_t *err);
/* Serves until sig_fd is readable; returns the signal number read. */
int coord_server_run(coord_server_t *s);
/* After the scheduler is gone: forwards its last events (errors of the
 * requests it failed) to their clients. */
void coord_server_flush(coord_server_t *s);
void coord_server_destroy(coord_server_t **self_p);

/* The scheduler callback of this server's requests (ctx is the server). */
void coord_server_on_event(void *ctx, const ms_gen_event_t *ev);

#endif
