/* Tests for the token sampler: each stage of the chain against hand-worked
 * cases, the draw distribution against exact softmax probabilities, and the
 * generator against an independent implementation of xoshiro256**. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "sampler.h"

#define N_DRAWS 20000

/* Parameters with every filter off, so each test turns on only what it tests. */
static ms_sampler_params_t plain(float temp, uint64_t seed)
{
    ms_sampler_params_t p = ms_sampler_defaults();
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.seed = seed;
    return p;
}

static ms_sampler_t *make(const ms_sampler_params_t *p, int32_t n_vocab)
{
    ms_sampler_t *s = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_sampler_new(p, n_vocab, &s), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

/* Test data generator (not the sampler's): an LCG giving logits in [-4, 4). */
static void fill_logits(float *l, int n, uint32_t seed)
{
    uint32_t x = seed;
    for (int i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        l[i] = (float)((x >> 8) / 16777216.0 * 8.0 - 4.0);
    }
}

static void counts_of(ms_sampler_t *s, const float *logits, int n, long *counts)
{
    memset(counts, 0, (size_t)n * sizeof(*counts));
    for (int i = 0; i < N_DRAWS; i++) {
        int32_t t = ms_sampler_sample(s, logits);
        CU_ASSERT_FATAL(t >= 0 && t < n);
        counts[t]++;
    }
}

/* |observed - p| within 3 standard errors of a binomial proportion. */
static void check_freq(long count, double p)
{
    double f = (double)count / N_DRAWS;
    double se = sqrt(p * (1.0 - p) / N_DRAWS);
    CU_ASSERT(fabs(f - p) <= 3.0 * se);
}

static void test_defaults(void)
{
    ms_sampler_params_t p = ms_sampler_defaults();
    CU_ASSERT_DOUBLE_EQUAL(p.temp, 0.8, 1e-6);
    CU_ASSERT_EQUAL(p.top_k, 40);
    CU_ASSERT_DOUBLE_EQUAL(p.top_p, 0.95, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(p.min_p, 0.05, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(p.repeat_penalty, 1.0, 0.0);
    CU_ASSERT_EQUAL(p.repeat_last_n, 64);
    CU_ASSERT_EQUAL(p.seed, 0);
}

static void test_greedy(void)
{
    ms_sampler_params_t p = plain(0.0f, 1);
    ms_sampler_t *s = make(&p, 6);
    float a[6] = { 0.5f, -2.0f, 3.25f, 3.0f, -7.0f, 1.0f };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, a), 2);
    float ties[6] = { 1.0f, 4.0f, 2.0f, 4.0f, 4.0f, -1.0f };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, ties), 1);
    float all_equal[6] = { 0, 0, 0, 0, 0, 0 };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, all_equal), 0);
    float last[6] = { -1.0f, -1.0f, -1.0f, -1.0f, -1.0f, -0.5f };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, last), 5);
    /* The logits are the caller's: untouched. */
    CU_ASSERT_DOUBLE_EQUAL(a[2], 3.25, 0.0);
    ms_sampler_destroy(&s);
    CU_ASSERT_PTR_NULL(s);
}

static void test_nonfinite_logits(void)
{
    ms_sampler_params_t p = plain(0.0f, 1);
    ms_sampler_t *s = make(&p, 4);
    float nan_first[4] = { NAN, 1.0f, 2.0f, NAN };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, nan_first), 2);
    float inf[4] = { 1.0f, INFINITY, 2.0f, -INFINITY };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, inf), 1);
    ms_sampler_destroy(&s);

    /* Sampling: NaN tokens never drawn, +inf always wins. */
    p = plain(1.0f, 3);
    s = make(&p, 4);
    for (int i = 0; i < 200; i++) {
        int32_t t = ms_sampler_sample(s, nan_first);
        CU_ASSERT(t == 1 || t == 2);
        CU_ASSERT_EQUAL(ms_sampler_sample(s, inf), 1);
    }
    float none[4] = { -INFINITY, NAN, -INFINITY, -INFINITY };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, none), 0);
    ms_sampler_destroy(&s);
}

static void test_top_k_1_is_greedy(void)
{
    enum { N = 3000 };
    static float l[N];
    const float temps[] = { 0.1f, 0.8f, 1.0f, 5.0f, 100.0f };
    for (int v = 0; v < 5; v++) {
        fill_logits(l, N, 100u + (uint32_t)v);
        l[v * 7] = l[v * 7 + 3] = 4.5f; /* a tie at the top: the lower id wins */
        int32_t want = v * 7;
        ms_sampler_params_t p = plain(temps[v], (uint64_t)v);
        p.top_k = 1;
        ms_sampler_t *s = make(&p, N);
        for (int i = 0; i < 50; i++)
            CU_ASSERT_EQUAL(ms_sampler_sample(s, l), want);
        ms_sampler_destroy(&s);
    }
}

/* Every draw lands in the k largest logits, found here by counting. */
static void test_top_k_set(void)
{
    enum { N = 1000, K = 10 };
    static float l[N];
    fill_logits(l, N, 7);
    ms_sampler_params_t p = plain(100.0f, 9); /* near-flat: all K get drawn */
    p.top_k = K;
    ms_sampler_t *s = make(&p, N);
    int seen[N] = { 0 };
    for (int i = 0; i < 2000; i++) {
        int32_t t = ms_sampler_sample(s, l);
        CU_ASSERT_FATAL(t >= 0 && t < N);
        int above = 0;
        for (int j = 0; j < N; j++)
            above += l[j] > l[t];
        CU_ASSERT(above < K);
        seen[t] = 1;
    }
    int distinct = 0;
    for (int j = 0; j < N; j++)
        distinct += seen[j];
    CU_ASSERT_EQUAL(distinct, K);
    ms_sampler_destroy(&s);
}

static void test_top_p_tiny(void)
{
    enum { N = 500 };
    static float l[N];
    fill_logits(l, N, 21);
    l[321] = 4.2f; /* above the generator's range: the single most probable */
    ms_sampler_params_t p = plain(1.0f, 5);
    p.top_p = 1e-6f;
    ms_sampler_t *s = make(&p, N);
    for (int i = 0; i < 500; i++)
        CU_ASSERT_EQUAL(ms_sampler_sample(s, l), 321);
    ms_sampler_destroy(&s);
}

/* Draws from logits l with params p; returns a bit set of the ids seen. */
static unsigned ids_drawn(const ms_sampler_params_t *p, const float *l, int n)
{
    ms_sampler_t *s = make(p, n);
    unsigned mask = 0;
    for (int i = 0; i < 2000; i++)
        mask |= 1u << ms_sampler_sample(s, l);
    ms_sampler_destroy(&s);
    return mask;
}

/* p = 0.5, 0.3, 0.15, 0.05: top_p 0.75 needs the first two (0.5 < 0.75 <=
 * 0.8), renormalised to 0.625 and 0.375. The cut sits exactly at the
 * cumulative sums: 0.48 needs one token, 0.52 two, 0.82 three. */
static void test_top_p_set(void)
{
    float l[4] = { (float)log(0.5), (float)log(0.3), (float)log(0.15), (float)log(0.05) };
    ms_sampler_params_t p = plain(1.0f, 77);
    p.top_p = 0.75f;
    ms_sampler_t *s = make(&p, 4);
    long c[4];
    counts_of(s, l, 4, c);
    CU_ASSERT_EQUAL(c[2], 0);
    CU_ASSERT_EQUAL(c[3], 0);
    check_freq(c[0], 0.625);
    check_freq(c[1], 0.375);
    ms_sampler_destroy(&s);

    p.top_p = 0.48f;
    CU_ASSERT_EQUAL(ids_drawn(&p, l, 4), 0x1u);
    p.top_p = 0.52f;
    CU_ASSERT_EQUAL(ids_drawn(&p, l, 4), 0x3u);
    p.top_p = 0.82f;
    CU_ASSERT_EQUAL(ids_drawn(&p, l, 4), 0x7u);
    /* After top_k 2 the two survivors have 0.625 and 0.375: top_p 0.6 keeps
     * one (it would keep two if normalised over the whole vocabulary). */
    p.top_k = 2;
    p.top_p = 0.6f;
    CU_ASSERT_EQUAL(ids_drawn(&p, l, 4), 0x1u);
}

/* A wide, nearly flat vocabulary, so the top-p prefix spans several sorted
 * chunks; the expected set comes from a plain sort in double here. */
static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

static void test_top_p_wide(void)
{
    enum { N = 2000 };
    static float l[N];
    static double sorted[N];
    fill_logits(l, N, 5);
    for (int i = 0; i < N; i++)
        l[i] *= 0.1f;
    double z = 0.0, mx = -INFINITY;
    for (int i = 0; i < N; i++)
        mx = fmax(mx, l[i]);
    for (int i = 0; i < N; i++)
        z += exp(l[i] - mx);
    for (int i = 0; i < N; i++)
        sorted[i] = l[i];
    qsort(sorted, N, sizeof(double), cmp_desc);
    double cum = 0.0;
    int keep = 0;
    while (keep < N && cum < 0.5) /* keep: smallest prefix reaching 0.5 */
        cum += exp(sorted[keep++] - mx) / z;
    CU_ASSERT_FATAL(keep > 300); /* several chunks of the incremental sort */
    double cutoff = sorted[keep - 1];
    /* The boundary must be clear of float rounding for the check to hold. */
    CU_ASSERT_FATAL(sorted[keep] < cutoff);

    /* The last token inside the cut must show up too: expected count
     * N_DRAWS * p / cum, large enough that missing it is not chance. */
    double p_last = exp(cutoff - mx) / z / cum;
    CU_ASSERT_FATAL(N_DRAWS * p_last > 15.0);

    ms_sampler_params_t p = plain(1.0f, 11);
    p.top_p = 0.5f;
    ms_sampler_t *s = make(&p, N);
    long last_seen = 0, outside = 0;
    for (int i = 0; i < N_DRAWS; i++) {
        int32_t t = ms_sampler_sample(s, l);
        CU_ASSERT_FATAL(t >= 0 && t < N);
        outside += l[t] < cutoff;
        last_seen += l[t] == cutoff;
    }
    CU_ASSERT_EQUAL(outside, 0);
    CU_ASSERT(last_seen > 0);
    ms_sampler_destroy(&s);
}

/* Ratios to the max 1, 0.5, 0.2, 0.04. min_p 0.3 keeps ids 0 and 1 (2/3,
 * 1/3); min_p 0.1 keeps 0, 1, 2 (1/1.7, 0.5/1.7, 0.2/1.7). Thresholds just
 * either side of each ratio move exactly one token in or out. */
static void test_min_p(void)
{
    float l[4] = { 0.0f, (float)log(0.5), (float)log(0.2), (float)log(0.04) };
    ms_sampler_params_t p = plain(1.0f, 31);
    p.min_p = 0.3f;
    ms_sampler_t *s = make(&p, 4);
    long c[4];
    counts_of(s, l, 4, c);
    CU_ASSERT_EQUAL(c[2] + c[3], 0);
    check_freq(c[0], 2.0 / 3.0);
    ms_sampler_destroy(&s);

    p.min_p = 0.1f;
    s = make(&p, 4);
    counts_of(s, l, 4, c);
    CU_ASSERT_EQUAL(c[3], 0);
    check_freq(c[0], 1.0 / 1.7);
    check_freq(c[1], 0.5 / 1.7);
    check_freq(c[2], 0.2 / 1.7);
    ms_sampler_destroy(&s);

    const float mp[] = { 0.51f, 0.49f, 0.21f, 0.19f, 0.041f, 0.039f };
    const unsigned want[] = { 0x1u, 0x3u, 0x3u, 0x7u, 0x7u, 0xfu };
    p.temp = 3.0f; /* flatter, so that the 0.04 token shows up in 2000 draws */
    for (int i = 0; i < 6; i++) {
        p.min_p = mp[i];
        CU_ASSERT_EQUAL(ids_drawn(&p, l, 4), want[i]);
    }
}

static void test_repeat_penalty(void)
{
    ms_sampler_params_t p = plain(0.0f, 0);
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 2;
    ms_sampler_t *s = make(&p, 3);
    /* 2.0 / 1.5 = 1.333 < 1.8: the penalty moves the argmax from 0 to 1. */
    float a[3] = { 2.0f, 1.8f, -1.0f };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, a), 0);
    ms_sampler_accept(s, 0);
    CU_ASSERT_EQUAL(ms_sampler_sample(s, a), 1);
    /* Once per distinct token: 2.0 / 1.5 = 1.333 > 1.0 keeps 0 on top even
     * with 0 twice in the window (twice would give 0.889 < 1.0). */
    float b[3] = { 2.0f, 1.0f, 0.0f };
    ms_sampler_accept(s, 0);
    CU_ASSERT_EQUAL(ms_sampler_sample(s, b), 0);
    /* Two more tokens push 0 out of the window of 2. */
    ms_sampler_accept(s, 2);
    ms_sampler_accept(s, 2);
    CU_ASSERT_EQUAL(ms_sampler_sample(s, a), 0);
    /* Out-of-range ids are ignored, not recorded. */
    ms_sampler_accept(s, -1);
    ms_sampler_accept(s, 3);
    CU_ASSERT_EQUAL(ms_sampler_sample(s, a), 0);
    ms_sampler_destroy(&s);

    /* Negative logits are multiplied: -1.0 * 1.5 = -1.5 < -1.2. */
    s = make(&p, 3);
    float c[3] = { -1.0f, -1.2f, -3.0f };
    CU_ASSERT_EQUAL(ms_sampler_sample(s, c), 0);
    ms_sampler_accept(s, 0);
    CU_ASSERT_EQUAL(ms_sampler_sample(s, c), 1);
    ms_sampler_destroy(&s);
}

/* Softmax of logits / 0.7 over four tokens, computed here in double. */
static void test_distribution(void)
{
    float l[4] = { 1.0f, 0.5f, 0.0f, -1.0f };
    double e[4], z = 0.0;
    for (int i = 0; i < 4; i++)
        z += e[i] = exp((double)l[i] / 0.7);
    ms_sampler_params_t p = plain(0.7f, 12345);
    ms_sampler_t *s = make(&p, 4);
    long c[4];
    counts_of(s, l, 4, c);
    for (int i = 0; i < 4; i++)
        check_freq(c[i], e[i] / z);
    ms_sampler_destroy(&s);

    /* top_k 3 renormalises over the three largest at temperature 1. */
    p = plain(1.0f, 999);
    p.top_k = 3;
    s = make(&p, 4);
    counts_of(s, l, 4, c);
    z = exp(1.0) + exp(0.5) + exp(0.0);
    CU_ASSERT_EQUAL(c[3], 0);
    check_freq(c[0], exp(1.0) / z);
    check_freq(c[1], exp(0.5) / z);
    check_freq(c[2], exp(0.0) / z);
    ms_sampler_destroy(&s);
}

static void test_seeds(void)
{
    enum { N = 64, STEPS = 1000 };
    float l[N];
    fill_logits(l, N, 3);
    ms_sampler_params_t p = plain(1.0f, 2024);
    ms_sampler_t *a = make(&p, N), *b = make(&p, N);
    p.seed = 2025;
    ms_sampler_t *c = make(&p, N);
    int same_ab = 1, differ_ac = 0;
    for (int i = 0; i < STEPS; i++) {
        int32_t ta = ms_sampler_sample(a, l), tb = ms_sampler_sample(b, l);
        int32_t tc = ms_sampler_sample(c, l);
        same_ab &= ta == tb;
        differ_ac += ta != tc;
    }
    CU_ASSERT(same_ab);
    CU_ASSERT(differ_ac > STEPS / 2);
    ms_sampler_destroy(&a);
    ms_sampler_destroy(&b);
    ms_sampler_destroy(&c);
}

/* Two equal logits at temperature 1: token 0 exactly when the draw is below
 * 0.5, i.e. when the generator output's top bit is 0. Expected bits from an
 * independent implementation of splitmix64 + xoshiro256** (Blackman and
 * Vigna's reference algorithm, written in Python), seed 42 and seed 0. */
static void test_generator_golden(void)
{
    const char *want[2] = { "00111111111010111111000100011001",
                            "11001101110001001010000110111100" };
    const uint64_t seeds[2] = { 42, 0 };
    float l[2] = { 0.25f, 0.25f };
    for (int k = 0; k < 2; k++) {
        ms_sampler_params_t p = plain(1.0f, seeds[k]);
        ms_sampler_t *s = make(&p, 2);
        char got[33] = { 0 };
        for (int i = 0; i < 32; i++)
            got[i] = (char)('0' + ms_sampler_sample(s, l));
        CU_ASSERT_STRING_EQUAL(got, want[k]);
        ms_sampler_destroy(&s);
    }
}

static void expect_invalid(ms_sampler_params_t p, int32_t n_vocab)
{
    ms_sampler_t *s = (ms_sampler_t *)&s; /* must stay untouched on failure */
    ms_sampler_t *before = s;
    CU_ASSERT_EQUAL(ms_sampler_new(&p, n_vocab, &s), -EINVAL);
    CU_ASSERT_PTR_EQUAL(s, before);
}

static void test_invalid_params(void)
{
    ms_sampler_params_t d = ms_sampler_defaults(), p;
    const float bad_temp[] = { -0.01f, 100.5f, NAN, INFINITY };
    for (int i = 0; i < 4; i++) {
        p = d, p.temp = bad_temp[i];
        expect_invalid(p, 10);
    }
    const float bad_top_p[] = { 0.0f, -0.5f, 1.01f, NAN };
    for (int i = 0; i < 4; i++) {
        p = d, p.top_p = bad_top_p[i];
        expect_invalid(p, 10);
    }
    const float bad_min_p[] = { -0.1f, 1.0f, NAN };
    for (int i = 0; i < 3; i++) {
        p = d, p.min_p = bad_min_p[i];
        expect_invalid(p, 10);
    }
    const float bad_pen[] = { 0.0f, -1.0f, NAN, INFINITY };
    for (int i = 0; i < 4; i++) {
        p = d, p.repeat_penalty = bad_pen[i];
        expect_invalid(p, 10);
    }
    p = d, p.repeat_last_n = -1;
    expect_invalid(p, 10);
    expect_invalid(d, 0);
    expect_invalid(d, -5);
    expect_invalid(d, MS_VOCAB_MAX + 1);
    ms_sampler_t *s = NULL;
    CU_ASSERT_EQUAL(ms_sampler_new(NULL, 10, &s), -EINVAL);
    CU_ASSERT_EQUAL(ms_sampler_new(&d, 10, NULL), -EINVAL);

    /* Edges that are valid: temp 0 and 100, top_p 1, min_p 0, full vocab,
     * top_k beyond the vocabulary, a huge window (clamped). */
    p = d, p.temp = 100.0f, p.top_p = 1.0f, p.min_p = 0.0f, p.top_k = 1000;
    p.repeat_last_n = INT32_MAX;
    CU_ASSERT_EQUAL(ms_sampler_new(&p, 1, &s), 0);
    float one = 0.0f;
    CU_ASSERT_EQUAL(ms_sampler_sample(s, &one), 0);
    ms_sampler_destroy(&s);
    p = d, p.temp = 0.0f;
    CU_ASSERT_EQUAL(ms_sampler_new(&p, MS_VOCAB_MAX, &s), 0);
    ms_sampler_destroy(&s);
    ms_sampler_destroy(&s); /* NULL is accepted */
    ms_sampler_destroy(NULL);
}

static int ms_test_register(void)
{
    CU_pSuite suite = CU_add_suite("sampler", NULL, NULL);
    if (!suite)
        return CU_get_error();
    const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
        { "defaults", test_defaults },
        { "greedy argmax, lowest id on ties", test_greedy },
        { "NaN and infinite logits", test_nonfinite_logits },
        { "top_k 1 equals greedy at any temperature", test_top_k_1_is_greedy },
        { "top_k keeps exactly the k largest", test_top_k_set },
        { "tiny top_p keeps the most probable", test_top_p_tiny },
        { "top_p set and renormalisation", test_top_p_set },
        { "top_p over a wide vocabulary", test_top_p_wide },
        { "min_p filtering", test_min_p },
        { "repetition penalty", test_repeat_penalty },
        { "draws follow the exact softmax", test_distribution },
        { "same seed same tokens, other seed other tokens", test_seeds },
        { "generator matches reference xoshiro256**", test_generator_golden },
        { "invalid params rejected", test_invalid_params },
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (!CU_add_test(suite, tests[i].name, tests[i].fn))
            return CU_get_error();
    }
    return 0;
}

#include "cu_main.h"
