/* Thread pool tests: each thread index runs exactly once per run, runs in a
 * row, the degenerate pools, invalid sizes, the split arithmetic, and the
 * round-trip latency of an empty run (printed, not asserted). */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "limits.h"
#include "pool.h"

typedef struct {
    atomic_int count[8];
    atomic_int bad_nth;
    int expect_nth;
    pthread_t caller;
    atomic_int caller_not_0;
} count_ctx_t;

static void count_fn(void *arg, int ith, int nth)
{
    count_ctx_t *c = arg;
    if (nth != c->expect_nth || ith < 0 || ith >= nth)
        atomic_fetch_add(&c->bad_nth, 1);
    else
        atomic_fetch_add(&c->count[ith], 1);
    if ((ith == 0) != (pthread_equal(pthread_self(), c->caller) != 0))
        atomic_fetch_add(&c->caller_not_0, 1);
}

static void run_counted(ms_pool_t *pool, int nth, int runs)
{
    count_ctx_t c = { .expect_nth = nth, .caller = pthread_self() };
    for (int r = 0; r < runs; r++) {
        ms_pool_run(pool, count_fn, &c);
        /* after each return every index has run exactly r + 1 times */
        for (int i = 0; i < nth; i++)
            if (atomic_load(&c.count[i]) != r + 1) {
                CU_FAIL("a thread index did not run exactly once");
                return;
            }
    }
    CU_ASSERT_EQUAL(atomic_load(&c.bad_nth), 0);
    CU_ASSERT_EQUAL(atomic_load(&c.caller_not_0), 0);
}

static void test_every_index_once(void)
{
    for (int nth = 1; nth <= 4; nth++) {
        ms_pool_t *pool = NULL;
        CU_ASSERT_EQUAL_FATAL(ms_pool_new(nth, &pool), 0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(pool);
        CU_ASSERT_EQUAL(ms_pool_size(pool), nth);
        run_counted(pool, nth, 10000);
        ms_pool_destroy(&pool);
        CU_ASSERT_PTR_NULL(pool);
    }
}

/* With a spin window, workers poll between runs; switching the window on and
 * off between runs (as a forward step does) loses no wake-up. */
static void test_spin_window(void)
{
    for (int nth = 2; nth <= 3; nth++) {
        ms_pool_t *pool = NULL;
        CU_ASSERT_EQUAL_FATAL(ms_pool_new(nth, &pool), 0);
        ms_pool_set_spin(pool, 200);
        run_counted(pool, nth, 10000);
        for (int i = 0; i < 200; i++) {
            ms_pool_set_spin(pool, (i % 2) ? 0 : 50);
            run_counted(pool, nth, 3);
        }
        CU_ASSERT_EQUAL(ms_pool_set_spin(pool, 5000000), 0); /* the previous window (i = 199) */
        run_counted(pool, nth, 100);
        CU_ASSERT_EQUAL(ms_pool_set_spin(pool, 0), MS_POOL_SPIN_US_MAX); /* capped */
        usleep(3000); /* workers are asleep again: the next run must wake them */
        run_counted(pool, nth, 10);
        ms_pool_destroy(&pool);
    }
    CU_ASSERT_EQUAL(ms_pool_set_spin(NULL, 100), 0);
}

static void test_null_pool(void)
{
    CU_ASSERT_EQUAL(ms_pool_size(NULL), 1);
    run_counted(NULL, 1, 3);
    ms_pool_destroy(NULL);
    ms_pool_t *none = NULL;
    ms_pool_destroy(&none);
    CU_ASSERT_PTR_NULL(none);
}

static void test_invalid_sizes(void)
{
    ms_pool_t *sentinel = (ms_pool_t *)&sentinel, *pool = sentinel;
    CU_ASSERT_EQUAL(ms_pool_new(0, &pool), -EINVAL);
    CU_ASSERT_EQUAL(ms_pool_new(-1, &pool), -EINVAL);
    CU_ASSERT_EQUAL(ms_pool_new(MS_THREADS_MAX + 1, &pool), -EINVAL);
    CU_ASSERT_PTR_EQUAL(pool, sentinel); /* untouched on failure */
}

/* Thread 0 waits for thread 1 inside one run: a pool that ran its threads
 * one after another would time out here instead of passing. */
typedef struct {
    atomic_int flag;
    atomic_int timed_out;
} meet_ctx_t;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void meet_fn(void *arg, int ith, int nth)
{
    meet_ctx_t *c = arg;
    (void)nth;
    if (ith == 1) {
        atomic_store(&c->flag, 1);
        return;
    }
    if (ith != 0)
        return;
    double end = now_s() + 5.0;
    while (!atomic_load(&c->flag)) {
        if (now_s() > end) {
            atomic_store(&c->timed_out, 1);
            return;
        }
        sched_yield();
    }
}

static void test_concurrent(void)
{
    ms_pool_t *pool = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_pool_new(3, &pool), 0);
    for (int r = 0; r < 20; r++) {
        meet_ctx_t c = { 0 };
        ms_pool_run(pool, meet_fn, &c);
        CU_ASSERT_EQUAL(atomic_load(&c.timed_out), 0);
        CU_ASSERT_EQUAL(atomic_load(&c.flag), 1);
    }
    ms_pool_destroy(&pool);
}

static void check_split(long long n, long long grain, int nth)
{
    long long prev_end = 0, min = -1, max = 0;
    for (int i = 0; i < nth; i++) {
        long long b, e;
        ms_pool_split(n, grain, i, nth, &b, &e);
        CU_ASSERT_EQUAL(b, prev_end); /* contiguous, in order */
        CU_ASSERT(e >= b);
        if (e < n)
            CU_ASSERT_EQUAL(e % grain, 0);
        long long units = (e - b + grain - 1) / grain;
        min = min < 0 || units < min ? units : min;
        max = units > max ? units : max;
        prev_end = e;
    }
    CU_ASSERT_EQUAL(prev_end, n);
    CU_ASSERT(max - min <= 1); /* nearly equal, counted in grains */
}

static void test_split(void)
{
    check_split(100, 1, 3);
    check_split(100, 16, 3);
    check_split(1024, 16, 2);
    check_split(5, 16, 4); /* fewer grains than threads: later parts empty */
    check_split(0, 4, 2);
    check_split(1000003, 4, 7);
    long long b = 7, e = 7;
    ms_pool_split(100, 16, 0, 3, &b, &e);
    CU_ASSERT(b == 0 && e == 48); /* 7 grains: 3, 2, 2 */
    ms_pool_split(100, 16, 2, 3, &b, &e);
    CU_ASSERT(b == 80 && e == 100);
    ms_pool_split(100, 16, 3, 3, &b, &e); /* ith out of range: empty */
    CU_ASSERT(b == e);
    ms_pool_split(100, 0, 0, 1, &b, &e); /* grain 0 counts as 1 */
    CU_ASSERT(b == 0 && e == 100);
    CU_ASSERT(ms_pool_default_threads() >= 1 && ms_pool_default_threads() <= MS_THREADS_MAX);
}

static void empty_fn(void *arg, int ith, int nth)
{
    (void)arg;
    (void)ith;
    (void)nth;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_latency_report(void)
{
    enum { RUNS = 10000 };
    static double t[RUNS];
    ms_pool_t *pool = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_pool_new(2, &pool), 0);
    for (int i = 0; i < RUNS; i++) {
        double t0 = now_s();
        ms_pool_run(pool, empty_fn, NULL);
        t[i] = now_s() - t0;
    }
    ms_pool_destroy(&pool);
    qsort(t, RUNS, sizeof(t[0]), cmp_double);
    printf("\n  empty ms_pool_run, 2 threads: median %.1f us, p90 %.1f us, p99 %.1f us\n", t[RUNS / 2] * 1e6,
           t[RUNS * 9 / 10] * 1e6, t[RUNS * 99 / 100] * 1e6);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("pool", NULL, NULL);
    if (!s)
        return 1;
    if (!CU_add_test(s, "every index once per run, 10000 runs", test_every_index_once) ||
        !CU_add_test(s, "NULL pool and destroy", test_null_pool) ||
        !CU_add_test(s, "spin window between runs", test_spin_window) ||
        !CU_add_test(s, "invalid sizes", test_invalid_sizes) ||
        !CU_add_test(s, "threads run concurrently", test_concurrent) ||
        !CU_add_test(s, "split", test_split) ||
        !CU_add_test(s, "empty run latency (report only)", test_latency_report))
        return 1;
    return 0;
}

#include "cu_main.h"
