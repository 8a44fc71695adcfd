/* A fixed pool of worker threads for data-parallel kernels. Idle workers
 * block (futex/condition variable); they never spin. */
#ifndef MS_POOL_H
#define MS_POOL_H

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

/* Splits [0, n) into nth nearly equal contiguous parts, each a multiple of
 * grain (except the last), and returns part ith in *ret_begin, *ret_end. */
void ms_pool_split(long long n, long long grain, int ith, int nth, long long *ret_begin, long long *ret_end);

/* Number of online CPUs (at least 1). */
int ms_pool_default_threads(void);

#endif
