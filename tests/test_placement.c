/* Placement (common/placement.c): balance, distinct replicas, determinism,
 * capacities, and the refusals. Expected figures come from arithmetic on the
 * inputs (totals, shares), never from a previous run. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "placement.h"

static ms_placement_t *place(int32_t layers, int32_t experts, const uint64_t *bytes, int32_t hosts, int32_t r,
                             const uint64_t *cap, int *rc, ms_err_t *err)
{
    ms_placement_params_t p = { layers, experts, bytes, hosts, r, cap };
    ms_placement_t *pl = NULL;
    *rc = ms_placement_compute(&p, &pl, err);
    return pl;
}

static uint64_t max_u64(const uint64_t *v, int n)
{
    uint64_t m = 0;
    for (int i = 0; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* Every copy lands on a valid host, the R copies of a slice are distinct,
 * and per-host totals equal the sums over the table. */
static void check_table(const ms_placement_t *pl, const uint64_t *bytes)
{
    int32_t L = ms_placement_n_layers(pl), E = ms_placement_n_experts(pl), N = ms_placement_n_hosts(pl);
    int32_t R = ms_placement_replicas(pl);
    uint64_t sum[MS_HOSTS_MAX] = { 0 };
    uint32_t cnt[MS_HOSTS_MAX] = { 0 };
    for (int32_t l = 0; l < L; l++) {
        for (int32_t e = 0; e < E; e++) {
            for (int32_t r = 0; r < R; r++) {
                int32_t h = ms_placement_host(pl, l, e, r);
                CU_ASSERT_FATAL(h >= 0 && h < N);
                for (int32_t q = 0; q < r; q++)
                    CU_ASSERT_NOT_EQUAL(ms_placement_host(pl, l, e, q), h);
                CU_ASSERT(ms_placement_holds(pl, h, l, e));
                sum[h] += bytes[l];
                cnt[h]++;
            }
        }
    }
    for (int32_t h = 0; h < N; h++) {
        CU_ASSERT_EQUAL(ms_placement_host_bytes(pl, h), sum[h]);
        CU_ASSERT_EQUAL(ms_placement_host_slices(pl, h), cnt[h]);
    }
}

/* With equal capacities each host is within one slice of total * R / N. */
static void check_balance(int32_t L, int32_t E, const uint64_t *bytes, int32_t N, int32_t R)
{
    int rc;
    ms_err_t err = { { 0 } };
    ms_placement_t *pl = place(L, E, bytes, N, R, NULL, &rc, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    check_table(pl, bytes);
    double total = 0;
    for (int32_t l = 0; l < L; l++)
        total += (double)bytes[l] * E * R;
    double slice = (double)max_u64(bytes, L);
    for (int32_t h = 0; h < N; h++) {
        double dev = (double)ms_placement_host_bytes(pl, h) - total / N;
        CU_ASSERT(dev <= slice && dev >= -slice);
        if (dev > slice || dev < -slice)
            printf("\n  L %d E %d N %d R %d host %d off by %.0f (slice %.0f)\n", L, E, N, R, h, dev, slice);
    }
    ms_placement_destroy(&pl);
    CU_ASSERT_PTR_NULL(pl);
}

static void test_balance(void)
{
    uint64_t equal[4] = { 1000, 1000, 1000, 1000 };
    uint64_t mixed[5] = { 4096, 1000, 77777, 3, 12345 };
    check_balance(4, 8, equal, 3, 1);
    check_balance(4, 8, equal, 3, 2);
    check_balance(4, 8, equal, 3, 3);
    check_balance(5, 7, mixed, 4, 2);
    check_balance(5, 60, mixed, 7, 3);
    check_balance(1, 1, equal, 1, 1);
    check_balance(2, 3, mixed, 16, 1); /* more hosts than slices: some hold nothing */
    /* 2 layers x 4 experts of equal size on 4 hosts: exactly 2 slices each */
    int rc;
    ms_err_t err = { { 0 } };
    ms_placement_t *pl = place(2, 4, equal, 4, 1, NULL, &rc, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    for (int32_t h = 0; h < 4; h++) {
        CU_ASSERT_EQUAL(ms_placement_host_slices(pl, h), 2);
        CU_ASSERT_EQUAL(ms_placement_host_bytes(pl, h), 2000);
    }
    /* ties go to the lowest id: the first slice to host 0, the second to host 1 */
    CU_ASSERT_EQUAL(ms_placement_host(pl, 0, 0, 0), 0);
    CU_ASSERT_EQUAL(ms_placement_host(pl, 0, 1, 0), 1);
    ms_placement_destroy(&pl);
}

static void test_replicas_cover_all_hosts(void)
{
    /* R = N: every host holds every slice */
    uint64_t bytes[3] = { 10, 20, 30 };
    int rc;
    ms_err_t err = { { 0 } };
    ms_placement_t *pl = place(3, 5, bytes, 3, 3, NULL, &rc, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    for (int32_t h = 0; h < 3; h++) {
        CU_ASSERT_EQUAL(ms_placement_host_slices(pl, h), 15);
        CU_ASSERT_EQUAL(ms_placement_host_bytes(pl, h), 5 * (10 + 20 + 30));
        for (int32_t l = 0; l < 3; l++)
            for (int32_t e = 0; e < 5; e++)
                CU_ASSERT(ms_placement_holds(pl, h, l, e));
    }
    ms_placement_destroy(&pl);
}

static void test_deterministic(void)
{
    uint64_t bytes[6] = { 5, 900, 17, 4000, 4000, 1 };
    int rc1, rc2;
    ms_err_t err = { { 0 } };
    ms_placement_t *a = place(6, 33, bytes, 5, 2, NULL, &rc1, &err);
    ms_placement_t *b = place(6, 33, bytes, 5, 2, NULL, &rc2, &err);
    CU_ASSERT_FATAL(rc1 == 0 && rc2 == 0);
    bool same = true;
    for (int32_t l = 0; l < 6; l++)
        for (int32_t e = 0; e < 33; e++)
            for (int32_t r = 0; r < 2; r++)
                same = same && ms_placement_host(a, l, e, r) == ms_placement_host(b, l, e, r);
    CU_ASSERT(same);
    ms_placement_destroy(&a);
    ms_placement_destroy(&b);
}

/* Capacities 1:2:3 with room to spare: host k's share is cap_k / 6 of the
 * total, within one slice scaled by cap_k / cap_min (the greedy keeps the
 * loads bytes/cap within one slice/cap_min of each other). */
static void test_capacity_shares(void)
{
    uint64_t bytes[2] = { 100, 100 };
    uint64_t cap[3] = { 100000, 200000, 300000 };
    int rc;
    ms_err_t err = { { 0 } };
    ms_placement_t *pl = place(2, 300, bytes, 3, 1, cap, &rc, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    check_table(pl, bytes);
    double total = 2.0 * 300 * 100;
    for (int32_t h = 0; h < 3; h++) {
        double want = total * (double)cap[h] / 600000.0;
        double tol = 100.0 * (double)cap[h] / (double)cap[0];
        double got = (double)ms_placement_host_bytes(pl, h);
        CU_ASSERT(got >= want - tol && got <= want + tol);
    }
    /* a tight fit still places everything: capacities sum to exactly the total */
    uint64_t tight[3] = { 10000, 20000, 30000 };
    ms_placement_t *t = place(2, 300, bytes, 3, 1, tight, &rc, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    for (int32_t h = 0; h < 3; h++)
        CU_ASSERT_EQUAL(ms_placement_host_bytes(t, h), tight[h]);
    ms_placement_destroy(&t);
    ms_placement_destroy(&pl);
}

static void expect_fail(int32_t L, int32_t E, const uint64_t *bytes, int32_t N, int32_t R, const uint64_t *cap,
                        int want, const char *phrase)
{
    int rc;
    ms_err_t err = { { 0 } };
    ms_placement_t *pl = place(L, E, bytes, N, R, cap, &rc, &err);
    CU_ASSERT_EQUAL(rc, want);
    CU_ASSERT_PTR_NULL(pl);
    CU_ASSERT(strstr(err.msg, phrase) != NULL);
    if (!strstr(err.msg, phrase))
        printf("\n  expected '%s' in: %s\n", phrase, err.msg);
}

static void test_refusals(void)
{
    uint64_t bytes[2] = { 100, 100 };
    uint64_t zero[2] = { 100, 0 };
    expect_fail(2, 4, bytes, 2, 3, NULL, -EINVAL, "3 replicas");
    expect_fail(2, 4, bytes, 0, 1, NULL, -EINVAL, "0 hosts");
    expect_fail(2, 4, bytes, MS_HOSTS_MAX + 1, 1, NULL, -EINVAL, "hosts");
    expect_fail(2, 4, bytes, 2, 0, NULL, -EINVAL, "0 replicas");
    expect_fail(0, 4, bytes, 2, 1, NULL, -EINVAL, "layers");
    expect_fail(2, 0, bytes, 2, 1, NULL, -EINVAL, "experts");
    expect_fail(2, 4, NULL, 2, 1, NULL, -EINVAL, "slice size");
    expect_fail(2, 4, zero, 2, 1, NULL, -EINVAL, "layer 1 has no slice size");
    uint64_t cap0[2] = { 1000, 0 };
    expect_fail(2, 4, bytes, 2, 1, cap0, -EINVAL, "host 1 has capacity 0");
    /* 8 slices of 100 bytes, 2 copies each, but room for 700 + 700: the last copies do not fit */
    uint64_t small[2] = { 700, 700 };
    expect_fail(2, 4, bytes, 2, 2, small, -ENOSPC, "fits on no host");
    /* a slice larger than any host */
    uint64_t big[1] = { 5000 };
    uint64_t cap[3] = { 4000, 4000, 4000 };
    expect_fail(1, 1, big, 3, 1, cap, -ENOSPC, "layer 0 expert 0");
    ms_placement_destroy(NULL);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("placement", NULL, NULL);
    if (!s)
        return -1;
    bool ok = CU_add_test(s, "bytes balanced within one slice of perfect", test_balance) &&
              CU_add_test(s, "R = N: every host holds every slice", test_replicas_cover_all_hosts) &&
              CU_add_test(s, "same inputs, same placement", test_deterministic) &&
              CU_add_test(s, "capacities give proportional shares", test_capacity_shares) &&
              CU_add_test(s, "bad parameters and no room are refused", test_refusals);
    return ok ? 0 : -1;
}

#include "cu_main.h"
