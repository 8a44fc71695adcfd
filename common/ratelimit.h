/* Per-client request rate limits: a token bucket per client key (a CURVE
 * public key, an API key, an address), in a bounded table that forgets the
 * least recently seen client when full. Safe to call from several threads. */
#ifndef MS_RATELIMIT_H
#define MS_RATELIMIT_H

#include <stddef.h>

#define MS_RATELIMIT_KEY_BYTES_MAX 128  /* longer keys are cut: the prefix identifies the client */
#define MS_RATELIMIT_CLIENTS_MAX   4096 /* clients remembered at once */
#define MS_RATELIMIT_PER_MIN_MAX   1000000

typedef struct ms_ratelimit ms_ratelimit_t;

/* per_min requests a minute per client, with bursts of up to
 * max(1, per_min / 6) (ten seconds' worth). -EINVAL for per_min outside
 * [1, MS_RATELIMIT_PER_MIN_MAX], -ENOMEM. */
int ms_ratelimit_new(int per_min, ms_ratelimit_t **ret_rl);
/* Accepts NULL and *self_p == NULL. */
void ms_ratelimit_destroy(ms_ratelimit_t **self_p);

/* Takes one request for client key (len bytes) at now_s (a monotonic clock
 * in seconds): 0 when admitted, -EBUSY when over the limit, with
 * *retry_after_s (if not NULL) the seconds until one more would be. */
int ms_ratelimit_take(ms_ratelimit_t *rl, const void *key, size_t len, double now_s, double *retry_after_s);

#endif
