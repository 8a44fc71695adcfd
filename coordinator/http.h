/* The coordinator's OpenAI-compatible HTTP API (libmicrohttpd + jansson):
 * /v1/completions, /v1/chat/completions (whole or server-sent events),
 * /v1/models, /health and Prometheus /metrics, over the scheduler. */
#ifndef COORD_HTTP_H
#define COORD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "err.h"
#include "ratelimit.h"
#include "model.h"
#include "sched.h"
#include "tokenizer.h"

/* Bounds on what a client controls (docs/http.md). */
#define COORD_HTTP_BODY_BYTES_DEFAULT  (1u << 20)  /* request body */
#define COORD_HTTP_BODY_BYTES_MAX      (1u << 26)
#define COORD_HTTP_REQUESTS_DEFAULT    64          /* generation requests in flight at once */
#define COORD_HTTP_REQUESTS_MAX        4096
#define COORD_HTTP_SPARE_CONNECTIONS   16          /* connections beyond the requests, for /health and /metrics */
#define COORD_HTTP_STOPS_MAX           4           /* stop sequences per request, as OpenAI */
#define COORD_HTTP_STOP_BYTES_MAX      256         /* one stop sequence */
#define COORD_HTTP_MESSAGES_MAX        4096        /* messages in one chat request */
#define COORD_HTTP_MODEL_NAME_BYTES_MAX 256
#define COORD_HTTP_API_KEY_BYTES_MAX   512
#define COORD_HTTP_IDLE_TIMEOUT_S      60          /* an idle keep-alive connection is closed after this */
#define COORD_HTTP_STATS_BYTES_MAX     (1u << 20)  /* text the stats hook may add to /metrics */
#define COORD_HTTP_PEM_BYTES_MAX       (1u << 20)  /* a TLS certificate chain or key */

typedef struct {
    const char *api_key;      /* NULL or "": no authentication; else "Authorization: Bearer KEY" on /v1/ and /metrics */
    size_t body_bytes_max;    /* 0: COORD_HTTP_BODY_BYTES_DEFAULT; at most COORD_HTTP_BODY_BYTES_MAX */
    uint32_t requests_max;    /* 0: COORD_HTTP_REQUESTS_DEFAULT; more at once get 429 */
    int32_t n_ctx;            /* the scheduler's positions per sequence; 0: the model's training context */
    const char *tls_cert_pem; /* NULL: plain HTTP; else HTTPS (libmicrohttpd + GnuTLS) with this PEM chain */
    const char *tls_key_pem;  /* the certificate's private key, PEM; required with tls_cert_pem */
    bool insecure;            /* allow plain HTTP beyond loopback (docs/security.md) */
    ms_ratelimit_t *rate;     /* per-client request rate (by address), borrowed; NULL: unlimited */
    int rate_per_min;         /* the rate it was made with, for messages */
} coord_http_params_t;

typedef struct coord_http coord_http_t;

/* Appends Prometheus text lines (per-host latency, bytes, health) for /metrics:
 * writes at most cap bytes including a terminating NUL into buf. Called on an
 * HTTP thread, possibly on several at once. */
typedef void (*coord_http_stats_fn)(void *ctx, char *buf, size_t cap);

/* Starts serving on listen_addr ("127.0.0.1:8080", ":8080" for every IPv4
 * address, "[::1]:8080"; port 0 picks a free one, see coord_http_port).
 * An address beyond loopback needs TLS or p->insecure (-EPERM otherwise);
 * a TLS key or certificate libmicrohttpd refuses is -EINVAL.
 * Borrows sched, m and tok (they must outlive the server); copies model_name
 * (the "model" of every reply; NULL or "" -> "moeshard") and p. The chat
 * template family comes from the model's tokenizer.chat_template (chatml
 * when it has none; logged). -EINVAL (bad address or parameter, err says
 * which), -EADDRINUSE/-EACCES (cannot listen), -ENOMEM. */
int coord_http_start(ms_sched_t *sched, const ms_model_t *m, const ms_tokenizer_t *tok, const char *model_name,
                     const char *listen_addr, const coord_http_params_t *p, coord_http_t **ret,
                     ms_err_t *err);
/* Stops listening, ends requests in flight (a whole reply gets 503, a stream
 * an error event; their scheduler requests are cancelled) and joins the
 * server's threads. Call before destroying the scheduler. Accepts NULL. */
void coord_http_stop(coord_http_t **self_p);

/* The port actually listened on. */
uint16_t coord_http_port(const coord_http_t *h);

/* Sets (or with fn NULL clears) the hook whose lines end /metrics. */
void coord_http_set_stats_fn(coord_http_t *h, coord_http_stats_fn fn, void *ctx);

/* Reads a request body body[0..len) exactly as the server reads one, without
 * a server: /v1/chat/completions when chat (rendered with family, lengths
 * bounded by n_ctx) else /v1/completions, for a tokenizer that adds BOS
 * itself. 0 with *ret_gp and *ret_prompt (the caller's, free()) set;
 * -EINVAL (the request would get 400) or -ENOMEM with err holding the
 * reply's message. For tests and fuzzing. */
int coord_http_parse_body(const ms_tokenizer_t *tok, ms_chat_family_t family, int32_t n_ctx, bool chat,
                          const char *body, size_t len, ms_gen_params_t *ret_gp, char **ret_prompt, ms_err_t *err);

#endif
