/* Token buckets in an open-addressed table. A full table evicts the bucket
 * seen least recently: a client that comes back then starts full again,
 * which errs on the side of admitting it. */
#include "ratelimit.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    bool used;
    uint8_t len;
    unsigned char key[MS_RATELIMIT_KEY_BYTES_MAX];
    double tokens, t_last;
} bucket_t;

struct ms_ratelimit {
    pthread_mutex_t lock;
    double per_s, burst;
    size_t n_used;
    bucket_t b[MS_RATELIMIT_CLIENTS_MAX];
};

int ms_ratelimit_new(int per_min, ms_ratelimit_t **ret_rl)
{
    if (per_min < 1 || per_min > MS_RATELIMIT_PER_MIN_MAX)
        return -EINVAL;
    ms_ratelimit_t *rl = calloc(1, sizeof(*rl));
    if (!rl)
        return -ENOMEM;
    pthread_mutex_init(&rl->lock, NULL);
    rl->per_s = per_min / 60.0;
    rl->burst = per_min / 6 > 1 ? (double)(per_min / 6) : 1.0;
    *ret_rl = rl;
    return 0;
}

void ms_ratelimit_destroy(ms_ratelimit_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pthread_mutex_destroy(&(*self_p)->lock);
    free(*self_p);
    *self_p = NULL;
}

static uint64_t hash(const unsigned char *k, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ k[i]) * 1099511628211ull;
    return h;
}

/* The key's bucket, or a free slot for it, or (table full) the stalest one. */
static bucket_t *find(ms_ratelimit_t *rl, const unsigned char *k, size_t n)
{
    size_t at = (size_t)(hash(k, n) % MS_RATELIMIT_CLIENTS_MAX), stalest = at;
    for (size_t i = 0; i < MS_RATELIMIT_CLIENTS_MAX; i++) {
        bucket_t *b = &rl->b[(at + i) % MS_RATELIMIT_CLIENTS_MAX];
        if (!b->used || (b->len == n && memcmp(b->key, k, n) == 0))
            return b;
        if (b->t_last < rl->b[stalest].t_last)
            stalest = (at + i) % MS_RATELIMIT_CLIENTS_MAX;
    }
    rl->b[stalest].used = false; /* evicted: reused below as a new client */
    rl->n_used--;
    return &rl->b[stalest];
}

int ms_ratelimit_take(ms_ratelimit_t *rl, const void *key, size_t len, double now_s, double *retry_after_s)
{
    if (len > MS_RATELIMIT_KEY_BYTES_MAX)
        len = MS_RATELIMIT_KEY_BYTES_MAX;
    pthread_mutex_lock(&rl->lock);
    bucket_t *b = find(rl, key, len);
    if (!b->used) {
        *b = (bucket_t){ .used = true, .len = (uint8_t)len, .tokens = rl->burst, .t_last = now_s };
        memcpy(b->key, key, len);
        rl->n_used++;
    }
    double dt = now_s > b->t_last ? now_s - b->t_last : 0.0;
    b->tokens = b->tokens + dt * rl->per_s < rl->burst ? b->tokens + dt * rl->per_s : rl->burst;
    b->t_last = now_s;
    int rc = 0;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
    } else {
        rc = -EBUSY;
        if (retry_after_s)
            *retry_after_s = (1.0 - b->tokens) / rl->per_s;
    }
    pthread_mutex_unlock(&rl->lock);
    return rc;
}
