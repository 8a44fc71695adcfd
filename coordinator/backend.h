/* The expert backend: where a layer's routed-expert FFNs are computed. The
 * forward pass has one code path; the backend is in-process (this file's
 * local backend) or the network (expert hosts). submit/wait are split so the
 * coordinator can do local work (shared experts) while remote replies are in flight. */
#ifndef MS_BACKEND_H
#define MS_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "curve.h"
#include "err.h"
#include "kernels.h"
#include "model.h"
#include "pool.h"
#include "wire.h"

typedef struct ms_expert_backend ms_expert_backend_t;

struct ms_expert_backend {
    const char *name;
    /* Starts out[t] = sum_j w[t*k+j] * FFN_{ids[t*k+j]}(x[t]) for layer il, t < n_tok.
     * x [n_tok][d], ids and w [n_tok][k] stay valid and unchanged until wait returns. */
    int (*submit)(ms_expert_backend_t *self, int il, const float *x, int n_tok, const int32_t *ids,
                  const float *w, int k);
    /* Completes the last submit: writes out [n_tok][d]. -errno with err set on
     * failure. A backend that blocks on anything but the pool sets the pool's
     * spin window to 0 first (ms_pool_set_spin), so no thread polls while it waits. */
    int (*wait)(ms_expert_backend_t *self, float *out, ms_err_t *err);
    /* Housekeeping between steps and while idle (heartbeats, hosts coming
     * back); NULL when the backend needs none. Called from the thread that
     * submits, at least every MS_BACKEND_TICK_MS while idle (idle true: no
     * request in flight). Returns 1 while it waits for an idle moment to
     * switch the placement (the caller then admits no new request), else 0. */
    int (*tick)(ms_expert_backend_t *self, bool idle);
    void (*destroy)(ms_expert_backend_t *self);
};

/* Computes experts from the model's own tensors with the given pool and
 * kernels, for up to max_tokens tokens per step. -EINVAL, -ENOMEM. */
int ms_backend_local_new(const ms_model_t *m, ms_pool_t *pool, const ms_kernels_t *k, int max_tokens,
                         ms_expert_backend_t **ret_backend);

/* ---- the network backend (backend_net.c): experts computed on expertd hosts ---- */

#define MS_BACKEND_NET_DEADLINE_MS_DEFAULT 10000 /* per dispatch (and for the Hello round) */
#define MS_BACKEND_NET_DEADLINE_MS_MAX     3600000
#define MS_BACKEND_NET_EPOCH               1     /* placement epoch of a fresh pack (docs/pack.md) */
#define MS_BACKEND_TICK_MS                 100   /* idle housekeeping period */
#define MS_BACKEND_NET_HEARTBEAT_MS_DEFAULT 1000
#define MS_BACKEND_NET_HEARTBEAT_MS_MIN    50
#define MS_BACKEND_NET_HEARTBEAT_MS_MAX    600000
#define MS_BACKEND_NET_MISSED_MAX          3     /* heartbeats a host may miss before it is marked down */
#define MS_BACKEND_NET_LOAD_MS_MAX         (6 * 3600 * 1000) /* the first placement's loads, all hosts */
#define MS_BACKEND_NET_ENDPOINT_BYTES      256   /* a joining host's endpoint, with its terminator */
#define MS_BACKEND_NET_JOIN_QUEUE          16    /* hosts waiting to join */

typedef struct {
    ms_wire_dtype_t wire;   /* activations and replies on the wire: f32 (exact), bf16, f16 */
    int32_t deadline_ms;    /* [1, MS_BACKEND_NET_DEADLINE_MS_MAX]: per dispatch and for the Hello round */
    int32_t max_tokens;     /* [1, MS_BATCH_TOKENS_MAX]: tokens per submit, buffers sized for it */
    ms_pool_t *pool;        /* its spin window is 0 while waiting on the network, then restored; may be NULL */
    int32_t replicas;       /* 0: use the slices the hosts hold (a pack); R in [1, hosts]: place R copies of
                             * every slice on distinct hosts and have each Load its share from its own copy
                             * of the full model (the coordinator's model must then be the full GGUF) */
    int32_t heartbeat_ms;   /* idle heartbeat period; a host that misses MS_BACKEND_NET_MISSED_MAX in a row,
                             * or whose connection drops, is marked down until it answers Hello again */
    int stop_fd;            /* readable (a signalfd): give up creating (-ECANCELED); -1: none */
    const ms_curve_keypair_t *curve_key;    /* CURVE client key pair; NULL: plaintext (docs/security.md) */
    const ms_curve_hostkeys_t *host_keys;   /* each endpoint's server key; required with curve_key */
} ms_backend_net_params_t;

/* f32, MS_BACKEND_NET_DEADLINE_MS_DEFAULT, MS_BATCH_TOKENS_MAX tokens, no pool,
 * no placement (replicas 0), MS_BACKEND_NET_HEARTBEAT_MS_DEFAULT. */
ms_backend_net_params_t ms_backend_net_defaults(void);

/* Traffic counters; "last" is the most recent dispatch (one layer of one step). */
typedef struct {
    uint64_t dispatches;              /* submits completed by a successful wait */
    uint64_t messages_sent;           /* ExpertBatch messages (at most one per host per dispatch) */
    uint64_t bytes_sent, bytes_received;           /* since creation: headers + tensor frames */
    uint64_t last_bytes_sent, last_bytes_received; /* the last dispatch */
    uint64_t stale_dropped;           /* replies of another request or epoch, dropped */
    uint64_t frames_copied;           /* frames sent by copy because ZeroMQ still held the zero-copy buffer */
    uint64_t expert_bytes_per_token;  /* from the hosts' Hello: n_layer x top-k x bytes of one slice */
    uint64_t epoch;                   /* placement epoch: +1 whenever a host goes down or comes back */
    uint32_t hosts_down;              /* hosts down or reloading now */
    uint64_t failover_slots;          /* (token, expert) slots recomputed on a replica for a host that was down */
} ms_backend_net_stats_t;

/* Connects one DEALER socket per endpoint (its own ZeroMQ context), asks each
 * host for Hello and builds the (layer, expert) -> hosts table; a slice goes
 * to the first host in endpoint order that holds it. With p->replicas > 0 the
 * coordinator places the slices itself (ms_placement: R copies, the first
 * copy computes, the others stand by) and has every host Load what it lacks
 * and Unload what it holds beyond its share, waiting for all of them.
 * A host that goes down during a dispatch has its (token, expert) slots
 * recomputed on live replicas, one slot per row, and recombined in the same
 * order it would have used: with the f32 wire the result is bit-identical. Fails with one message
 * in err: -EINVAL for bad parameters or an endpoint ZeroMQ refuses (naming it),
 * -ETIMEDOUT naming every host that did not answer Hello within the deadline,
 * -EPROTO for a bad Hello reply, -EINVAL when a host serves another model
 * (layers, hidden size or expert count differ), -ENOENT listing the slices no
 * host holds (and the endpoints asked), -ENOMEM.
 * submit refuses (-EINVAL) a layer, token count, k or expert id out of range;
 * a send that fails is reported by wait. wait fails (-ETIMEDOUT, -EIO for an
 * Error reply, -EPROTO for a malformed one) naming the host and the layer;
 * late replies of a failed dispatch are dropped by request id and epoch. */
int ms_backend_net_new(const ms_model_t *m, const char *const *endpoints, int n_hosts,
                       const ms_backend_net_params_t *p, ms_expert_backend_t **ret_backend, ms_err_t *err);

/* -EINVAL when b is not a network backend. The figures are those of the
 * last completed dispatch (wait); safe to call from any thread. */
int ms_backend_net_stats(const ms_expert_backend_t *b, ms_backend_net_stats_t *ret_stats);

/* One host's figures, as of the last completed dispatch. */
typedef struct {
    const char *endpoint;            /* borrowed: lives as long as the backend */
    uint32_t slices_held;            /* from its Hello */
    uint64_t memory_bytes;           /* bytes of expert slices it holds (Hello) */
    uint64_t bytes_sent, bytes_received;
    uint64_t replies;                /* replies awaited and received */
    double rtt_ms_mean;              /* send to reply, over those replies */
    int64_t last_reply_us;           /* CLOCK_MONOTONIC microseconds of the last reply; 0: none */
    const char *state;               /* "up", "down" or "loading" (static text) */
} ms_backend_net_host_stats_t;

/* Hosts of a network backend, or -EINVAL. */
int ms_backend_net_n_hosts(const ms_expert_backend_t *b);
/* -EINVAL when b is not a network backend or h is out of range; any thread. */
int ms_backend_net_host_stats(const ms_expert_backend_t *b, int h, ms_backend_net_host_stats_t *ret_stats);

/* An expert host asks to join (any thread): server_key_z85 is its public
 * key as CURVE authenticated it on the join link (the same pair serves its
 * endpoint), NULL on plaintext links. At a later tick the backend
 * connects to endpoint, asks its Hello, moves copies from the busiest hosts
 * to it until it holds an equal share (it Loads them; nobody else loads),
 * and once it has, switches the table at an idle step boundary (requests in
 * flight finish on the old placement, so their output does not change);
 * then the other hosts Unload what moved. A known endpoint that is down is
 * probed at once. -EINVAL (not a network backend, one serving a pack, a bad
 * endpoint), -EBUSY (MS_BACKEND_NET_JOIN_QUEUE hosts already waiting). */
int ms_backend_net_join(ms_expert_backend_t *b, const char *endpoint, const char *server_key_z85, ms_err_t *err);

/* Accepts NULL and *self_p == NULL; NULLs *self_p. */
void ms_backend_destroy(ms_expert_backend_t **self_p);

#endif
