/* Per-client token buckets (common/ratelimit.c) with time given by the test:
 * the burst, the refill rate, clients kept apart, eviction when full. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ratelimit.h"

/* 60 a minute: one a second, bursts of 10 */
static void test_bucket(void)
{
    ms_ratelimit_t *rl = NULL;
    CU_ASSERT_FATAL(ms_ratelimit_new(60, &rl) == 0);
    for (int i = 0; i < 10; i++)
        CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "a", 1, 100.0, NULL), 0);
    double wait = 0;
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "a", 1, 100.0, &wait), -EBUSY);
    CU_ASSERT(wait > 0.99 && wait < 1.01);
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "b", 1, 100.0, NULL), 0); /* another client has its own bucket */
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "a", 1, 100.5, &wait), -EBUSY);
    CU_ASSERT(wait > 0.49 && wait < 0.51);
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "a", 1, 101.0, NULL), 0); /* one second: one more */
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "a", 1, 101.0, NULL), -EBUSY);
    int ok = 0; /* a long pause refills to the burst, not beyond */
    for (int i = 0; i < 20; i++)
        ok += ms_ratelimit_take(rl, "a", 1, 1000.0, NULL) == 0;
    CU_ASSERT_EQUAL(ok, 10);
    ms_ratelimit_destroy(&rl);
    CU_ASSERT_PTR_NULL(rl);
}

/* Slow rates still allow one request; bad rates are refused. */
static void test_limits(void)
{
    ms_ratelimit_t *rl = NULL;
    CU_ASSERT_EQUAL(ms_ratelimit_new(0, &rl), -EINVAL);
    CU_ASSERT_EQUAL(ms_ratelimit_new(MS_RATELIMIT_PER_MIN_MAX + 1, &rl), -EINVAL);
    CU_ASSERT_FATAL(ms_ratelimit_new(1, &rl) == 0);
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "k", 1, 5.0, NULL), 0);
    double wait = 0;
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "k", 1, 6.0, &wait), -EBUSY);
    CU_ASSERT(wait > 58.9 && wait < 59.1);
    ms_ratelimit_destroy(&rl);
    ms_ratelimit_destroy(NULL);
}

/* More clients than the table holds: the least recently seen is forgotten
 * (it starts with a full bucket again), the others keep their state. */
static void test_eviction(void)
{
    ms_ratelimit_t *rl = NULL;
    CU_ASSERT_FATAL(ms_ratelimit_new(6, &rl) == 0); /* burst 1 */
    char key[32];
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "first", 5, 0.0, NULL), 0);
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "first", 5, 0.0, NULL), -EBUSY);
    for (int i = 0; i < MS_RATELIMIT_CLIENTS_MAX; i++) {
        int n = snprintf(key, sizeof(key), "client-%d", i);
        CU_ASSERT_EQUAL(ms_ratelimit_take(rl, key, (size_t)n, 1.0 + i * 1e-4, NULL), 0);
    }
    /* "first" was the stalest: evicted, so admitted again at once */
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, "first", 5, 2.0, NULL), 0);
    /* a recent client kept its empty bucket */
    int n = snprintf(key, sizeof(key), "client-%d", MS_RATELIMIT_CLIENTS_MAX - 1);
    CU_ASSERT_EQUAL(ms_ratelimit_take(rl, key, (size_t)n, 2.0, NULL), -EBUSY);
    ms_ratelimit_destroy(&rl);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("ratelimit", NULL, NULL);
    if (!s || !CU_add_test(s, "burst and refill per client", test_bucket) ||
        !CU_add_test(s, "slow and bad rates", test_limits) || !CU_add_test(s, "a full table forgets the stalest", test_eviction))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
