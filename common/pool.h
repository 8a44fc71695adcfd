/* A fixed pool of worker threads for data-parallel kernels. Idle workers
 * block on a futex. Between the kernels of one busy stretch (a forward step)
 * the caller may let them poll for a bounded window first, because waking a
 * sleeping thread on an idle virtual CPU costs tens of microseconds, more
 * than the gap between two kernels; outside such a stretch they never spin. */
#ifndef MS_POOL_H
#define MS_POOL_H

#include <stdint.h>

typedef struct ms_pool ms_pool_t;

/* fn runs once on each of nth threads; ith in [0, nth); ith 0 is the caller. */
typedef void (*ms_pool_fn_t)(void *ctx, int ith, int nth);

/* n_threads counts the caller: n_threads - 1 workers are started.
 * -EINVAL outside [1, MS_THREADS_MAX]; -errno from pthread_create; -ENOMEM. */
int ms_pool_new(int n_threads, ms_pool_t **ret_pool);
/* Stops and joins the workers. Accepts NULL and *self_p == NULL; NULLs *self_p. */
void ms_pool_destroy(ms_pool_t **self_p);

/* 1 for a NULL pool. */
int ms_pool_size(const ms_pool_t *pool);

/* Runs fn on every thread of the pool and returns once all have returned.
 * pool may be NULL: fn(ctx, 0, 1) on the caller. Not reentrant: fn must not
 * call ms_pool_run on the same pool. Allocates nothing. */
void ms_pool_run(ms_pool_t *pool, ms_pool_fn_t fn, void *ctx);

/* While spin_us > 0, a worker that finished a run (and the caller waiting
 * for workers) polls for the next event up to spin_us microseconds before it
 * sleeps in the kernel. Set it for a stretch of back-to-back runs and back to
 * 0 (the default: sleep at once) when the stretch ends or before blocking on
 * anything else (the network), then restore what it was. Capped at
 * MS_POOL_SPIN_US_MAX. Returns the previous setting (0 for a NULL pool). */
uint32_t ms_pool_set_spin(ms_pool_t *pool, uint32_t spin_us);

/* Splits [0, n) into nth nearly equal contiguous parts, each a multiple of
 * grain (except the last), and returns part ith in *ret_begin, *ret_end. */
void ms_pool_split(long long n, long long grain, int ith, int nth, long long *ret_begin, long long *ret_end);

/* Number of online CPUs (at least 1). */
int ms_pool_default_threads(void);

#endif
