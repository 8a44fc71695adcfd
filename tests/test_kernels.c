/* Kernel tests: every SIMD table against the scalar table on odd shapes, the
 * scalar table against double-precision references, hand-computed values for
 * the conversions, RoPE and dequantisation, and the multi-threaded drivers. */
#include <CUnit/CUnit.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* uniform in [lo, hi) */
static float rnd_f(float lo, float hi)
{
    return lo + (hi - lo) * (float)(rnd_u32() & 0xffffff) / 16777216.0f;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* ---- half-precision helpers of types.h --------------------------------- */

static void test_f32_to_f16(void)
{
    CU_ASSERT_EQUAL(ms_f32_to_f16(1.0f), 0x3c00);
    CU_ASSERT_EQUAL(ms_f32_to_f16(-2.0f), 0xc000);
    CU_ASSERT_EQUAL(ms_f32_to_f16(0.0f), 0x0000);
    CU_ASSERT_EQUAL(ms_f32_to_f16(-0.0f), 0x8000);
    CU_ASSERT_EQUAL(ms_f32_to_f16(65504.0f), 0x7bff);         /* largest finite */
    CU_ASSERT_EQUAL(ms_f32_to_f16(65519.99f), 0x7bff);        /* below the midpoint to 2^16 */
    CU_ASSERT_EQUAL(ms_f32_to_f16(65520.0f), 0x7c00);         /* midpoint, ties to even = inf */
    CU_ASSERT_EQUAL(ms_f32_to_f16(1e9f), 0x7c00);
    CU_ASSERT_EQUAL(ms_f32_to_f16(-INFINITY), 0xfc00);
    uint16_t nan = ms_f32_to_f16(NAN);
    CU_ASSERT((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
    /* 1 + 2^-11 lies halfway between 0x3c00 and 0x3c01: the even one wins */
    CU_ASSERT_EQUAL(ms_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3c00);
    /* 1 + 3 * 2^-11 lies halfway between 0x3c01 and 0x3c02 */
    CU_ASSERT_EQUAL(ms_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);
    CU_ASSERT_EQUAL(ms_f32_to_f16(1.0f + 3 * ldexpf(1, -12)), 0x3c01); /* above the midpoint */
    /* subnormals: units of 2^-24 */
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(1, -24)), 0x0001);
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(1, -25)), 0x0000);     /* tie between 0 and 1 unit */
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(3, -26)), 0x0001);     /* 0.75 unit */
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(3, -25)), 0x0002);     /* 1.5 units: tie to even 2 */
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(5, -25)), 0x0002);     /* 2.5 units: tie to even 2 */
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(1, -15)), 0x0200);
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(1, -14)), 0x0400);     /* smallest normal */
    CU_ASSERT_EQUAL(ms_f32_to_f16(ldexpf(1023, -24)), 0x03ff);  /* largest subnormal */
    CU_ASSERT_EQUAL(ms_f32_to_f16(-ldexpf(1, -24)), 0x8001);
}

static void test_f16_to_f32(void)
{
    CU_ASSERT_EQUAL(ms_f16_to_f32(0x3c00), 1.0f);
    CU_ASSERT_EQUAL(ms_f16_to_f32(0x3555), 0.333251953125f); /* (1 + 341/1024) / 4 */
    CU_ASSERT_EQUAL(ms_f16_to_f32(0x7bff), 65504.0f);
    CU_ASSERT_EQUAL(ms_f16_to_f32(0x0001), ldexpf(1, -24));
    CU_ASSERT_EQUAL(ms_f16_to_f32(0x03ff), ldexpf(1023, -24));
    CU_ASSERT_EQUAL(ms_f16_to_f32(0x8200), -ldexpf(1, -15));
    CU_ASSERT(isinf(ms_f16_to_f32(0x7c00)) && ms_f16_to_f32(0x7c00) > 0);
    CU_ASSERT(isinf(ms_f16_to_f32(0xfc00)) && ms_f16_to_f32(0xfc00) < 0);
    CU_ASSERT(isnan(ms_f16_to_f32(0x7e00)));
    CU_ASSERT(isnan(ms_f16_to_f32(0xfc01)));
    float nz = ms_f16_to_f32(0x8000);
    CU_ASSERT(nz == 0.0f && signbit(nz));
    /* every finite half survives a round trip */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        if (ms_f32_to_f16(ms_f16_to_f32((uint16_t)h)) != h) {
            CU_FAIL("f16 round trip");
            break;
        }
    }
}

static void test_bf16(void)
{
    CU_ASSERT_EQUAL(ms_f32_to_bf16(1.0f), 0x3f80);
    CU_ASSERT_EQUAL(ms_f32_to_bf16(-3.0f), 0xc040);
    CU_ASSERT_EQUAL(ms_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);     /* tie, even stays */
    CU_ASSERT_EQUAL(ms_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82); /* tie, odd rounds up */
    CU_ASSERT_EQUAL(ms_f32_to_bf16(1.0f + 5 * ldexpf(1, -10)), 0x3f81);
    CU_ASSERT_EQUAL(ms_f32_to_bf16(bits_f32(0x7f7fffff)), 0x7f80); /* FLT_MAX rounds to inf */
    CU_ASSERT_EQUAL(ms_f32_to_bf16(INFINITY), 0x7f80);
    uint16_t nan = ms_f32_to_bf16(bits_f32(0x7f800001)); /* NaN whose payload sits in the cut bits */
    CU_ASSERT((nan & 0x7f80) == 0x7f80 && (nan & 0x7f) != 0);
    CU_ASSERT_EQUAL(ms_f32_to_bf16(bits_f32(0x00010000)), 0x0001); /* subnormal kept */
    CU_ASSERT_EQUAL(ms_bf16_to_f32(0x4049), 3.140625f);
    CU_ASSERT_EQUAL(ms_bf16_to_f32(0x0001), bits_f32(0x00010000));
    CU_ASSERT(isinf(ms_bf16_to_f32(0xff80)) && ms_bf16_to_f32(0xff80) < 0);
}

/* ---- tables ------------------------------------------------------------ */

static const ms_kernels_t *tables[MS_ISA_COUNT];
static int n_tables;

static void load_tables(void)
{
    n_tables = 0;
    for (int i = 0; i < MS_ISA_COUNT; i++) {
        const ms_kernels_t *k = ms_kernels_for((ms_isa_t)i);
        if (k)
            tables[n_tables++] = k;
    }
}

static void test_dispatch(void)
{
    load_tables();
    CU_ASSERT_PTR_NOT_NULL_FATAL(ms_kernels_for(MS_ISA_SCALAR));
    CU_ASSERT_STRING_EQUAL(ms_kernels_for(MS_ISA_SCALAR)->name, "scalar");
    CU_ASSERT_PTR_NULL(ms_kernels_for(MS_ISA_COUNT));
    CU_ASSERT_PTR_NULL(ms_kernels_for((ms_isa_t)-1));
    const ms_kernels_t *best = ms_kernels_best();
    CU_ASSERT_PTR_EQUAL(best, tables[n_tables - 1]);
    setenv("MS_KERNELS", "scalar", 1);
    CU_ASSERT_PTR_EQUAL(ms_kernels_best(), ms_kernels_for(MS_ISA_SCALAR));
    setenv("MS_KERNELS", "no-such-isa", 1);
    CU_ASSERT_PTR_EQUAL(ms_kernels_best(), best);
    unsetenv("MS_KERNELS");
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        CU_ASSERT_PTR_NOT_NULL(ms_kernels_for(MS_ISA_AVX512));
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        CU_ASSERT_PTR_NOT_NULL(ms_kernels_for(MS_ISA_AVX2));
    printf("\n  kernel tables on this CPU:");
    for (int i = 0; i < n_tables; i++)
        printf(" %s", tables[i]->name);
    printf("\n");
}

static void test_act_row_bytes(void)
{
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_F32, 64), 0);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_F16, 64), 0);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_BF16, 64), 0);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q8_0, 64), 68);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q8_0, 4096), 4352);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q8_0, 33), 0);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q8_0, 0), 0);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q8_0, -32), 0);
}

/* ---- dequantisation ---------------------------------------------------- */

static void test_dequant_hand(void)
{
    ms_block_q8_0_t blk[2];
    memset(blk, 0, sizeof(blk));
    blk[0].d = 0x3800; /* 0.5 */
    blk[0].qs[0] = -128;
    blk[0].qs[1] = -1;
    blk[0].qs[3] = 1;
    blk[0].qs[31] = 127;
    blk[1].d = 0xbc00; /* -1 */
    blk[1].qs[5] = 3;
    const uint16_t h[19] = { 0x3c00, 0xc000, 0x0001, 0x03ff, 0x7c00, 0xfc00, 0x3555, 0x8000, 0x7bff, 0x3800,
                             0x3c00, 0x3c00, 0x3c00, 0x3c00, 0x3c00, 0x3c00, 0x0200, 0x4000, 0xc400 };
    const float hv[19] = { 1, -2, ldexpf(1, -24), ldexpf(1023, -24), INFINITY, -INFINITY, 0.333251953125f, -0.0f,
                           65504, 0.5f, 1, 1, 1, 1, 1, 1, ldexpf(1, -15), 2, -4 };
    const uint16_t b16[19] = { 0x3f80, 0xc040, 0x7f80, 0x4049, 0x0001, 0, 0, 0, 0, 0,
                               0, 0, 0, 0, 0, 0, 0, 0x3f00, 0xbf80 };
    const float bv[19] = { 1, -3, INFINITY, 3.140625f, bits_f32(0x00010000), 0, 0, 0, 0, 0,
                           0, 0, 0, 0, 0, 0, 0, 0.5f, -1 };
    const float f32v[19] = { 1.5f, -2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, -19 };
    for (int ti = 0; ti < n_tables; ti++) {
        const ms_kernels_t *k = tables[ti];
        float out[64];
        k->dequant_row(MS_TYPE_Q8_0, blk, out, 64);
        CU_ASSERT_EQUAL(out[0], -64.0f);
        CU_ASSERT_EQUAL(out[1], -0.5f);
        CU_ASSERT_EQUAL(out[2], 0.0f);
        CU_ASSERT_EQUAL(out[3], 0.5f);
        CU_ASSERT_EQUAL(out[31], 63.5f);
        CU_ASSERT_EQUAL(out[32 + 5], -3.0f);
        CU_ASSERT_EQUAL(out[32 + 6], 0.0f);
        k->dequant_row(MS_TYPE_F16, h, out, 19);
        for (int i = 0; i < 19; i++)
            CU_ASSERT(out[i] == hv[i] && signbit(out[i]) == signbit(hv[i]));
        k->dequant_row(MS_TYPE_BF16, b16, out, 19);
        for (int i = 0; i < 19; i++)
            CU_ASSERT_EQUAL(out[i], bv[i]);
        k->dequant_row(MS_TYPE_F32, f32v, out, 19);
        CU_ASSERT(memcmp(out, f32v, sizeof(f32v)) == 0);
        /* a type without kernels gives NaN, not garbage or a crash */
        k->dequant_row(MS_TYPE_Q5_0, blk, out, 32);
        CU_ASSERT(isnan(out[0]) && isnan(out[31]));
    }
}

/* ---- activation quantisation ------------------------------------------- */

static int8_t round_half_away(double v)
{
    double r = v < 0 ? -floor(-v + 0.5) : floor(v + 0.5);
    return (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
}

static void test_quantize_act(void)
{
    enum { N = 4096 + 32 };
    static float x[N];
    for (int i = 0; i < N; i++)
        x[i] = rnd_f(-3, 3);
    memset(x + 64, 0, 32 * sizeof(float)); /* all-zero block: d = 0, q = 0 */
    /* a block whose amax is 127 has d = 1 exactly: halves must round away */
    float halves[6] = { 127, 2.5f, -2.5f, 0.5f, -0.5f, 126.5f };
    memcpy(x + 96, halves, sizeof(halves));
    for (int i = 96 + 6; i < 128; i++)
        x[i] = 0.25f;
    x[200] = -1000; /* a block dominated by one value */
    for (int i = 256; i < 288; i++) /* d below f16's smallest normal: a subnormal scale */
        x[i] = rnd_f(-1e-5f, 1e-5f);
    for (int i = 288; i < 320; i++) /* d above f16's largest: an infinite scale */
        x[i] = (i % 2 ? 1 : -1) * rnd_f(5e6f, 1e7f);
    size_t rb = ms_act_row_bytes(MS_TYPE_Q8_0, N);
    ms_block_q8_0_t *ref = malloc(rb), *q = malloc(rb);
    CU_ASSERT_FATAL(ref && q);
    for (int b = 0; b < N / 32; b++) {
        double amax = 0;
        for (int j = 0; j < 32; j++)
            amax = fmax(amax, fabs(x[b * 32 + j]));
        float d = (float)amax / 127.0f;
        float id = d != 0 ? 1.0f / d : 0.0f;
        ref[b].d = ms_f32_to_f16(d);
        for (int j = 0; j < 32; j++)
            ref[b].qs[j] = round_half_away((double)(x[b * 32 + j] * id));
    }
    CU_ASSERT_EQUAL(ref[3].qs[1], 3);
    CU_ASSERT_EQUAL(ref[3].qs[2], -3);
    CU_ASSERT_EQUAL(ref[3].qs[3], 1);
    CU_ASSERT_EQUAL(ref[3].qs[4], -1);
    CU_ASSERT_EQUAL(ref[3].qs[5], 127);
    CU_ASSERT_EQUAL(ref[3].d, 0x3c00);
    for (int ti = 0; ti < n_tables; ti++) {
        memset(q, 0x55, rb);
        tables[ti]->quantize_act(MS_TYPE_Q8_0, x, N, q);
        int bad = memcmp(q, ref, rb) != 0;
        if (bad)
            fprintf(stderr, "quantize_act mismatch in %s\n", tables[ti]->name);
        CU_ASSERT(!bad);
        /* every value lies within half a step of its quantised value */
        for (int b = 0; b < N / 32; b++) {
            double d = ms_f16_to_f32(q[b].d);
            if (b == 8 || b == 9) /* the bound assumes a normal f16 scale */
                continue;
            for (int j = 0; j < 32; j++)
                /* half a step, plus the f16 rounding of the scale (2^-11 relative) times q */
                CU_ASSERT(fabs(q[b].qs[j] * d - x[b * 32 + j]) <=
                          0.5 * d * (1 + 1e-6) + abs(q[b].qs[j]) * d / 2048.0 + 1e-12);
        }
        /* F32 weights read f32 activations: nothing is written */
        memset(q, 0x55, rb);
        tables[ti]->quantize_act(MS_TYPE_F32, x, N, q);
        CU_ASSERT_EQUAL(((unsigned char *)q)[0], 0x55);
    }
    CU_ASSERT_EQUAL(ref[8].d & 0x7c00, 0);      /* subnormal */
    CU_ASSERT_NOT_EQUAL(ref[8].d & 0x3ff, 0);
    CU_ASSERT_EQUAL(ref[9].d & 0x7fff, 0x7c00); /* inf */
    /* NaN and inf inputs, in blocks the fast tables take one at a time and
     * eight at a time: no crash and every table gives the same bytes */
    x[5] = NAN;
    x[40] = INFINITY;
    x[32 * 17 + 3] = NAN;
    x[32 * 18 + 9] = -INFINITY;
    tables[0]->quantize_act(MS_TYPE_Q8_0, x, N, ref);
    for (int ti = 1; ti < n_tables; ti++) {
        tables[ti]->quantize_act(MS_TYPE_Q8_0, x, N, q);
        CU_ASSERT(memcmp(q, ref, rb) == 0);
    }
    free(ref);
    free(q);
}

/* ---- matmul ------------------------------------------------------------ */

typedef struct {
    ms_type_t type;
    int64_t n_out, n_in, n_tok, ldx, ldy;
    void *w;      /* [n_out] rows of type */
    double *wd;   /* dequantised weights, [n_out][n_in] */
    float *x;     /* [n_tok][ldx] */
    void *xq;     /* [n_tok] quantised rows or NULL */
    float *y;     /* [n_tok][ldy] */
} mm_case_t;

static void case_fill_weights(mm_case_t *c)
{
    size_t rb = ms_type_row_bytes(c->type, (uint64_t)c->n_in);
    c->w = malloc(rb * (size_t)c->n_out);
    c->wd = malloc(sizeof(double) * (size_t)(c->n_out * c->n_in));
    for (int64_t r = 0; r < c->n_out; r++) {
        char *row = (char *)c->w + (size_t)r * rb;
        double *wd = c->wd + r * c->n_in;
        for (int64_t i = 0; i < c->n_in; i++) {
            float v = rnd_f(-1, 1);
            if (c->type == MS_TYPE_F32) {
                ((float *)row)[i] = v;
                wd[i] = v;
            } else if (c->type == MS_TYPE_F16) {
                ((uint16_t *)row)[i] = ms_f32_to_f16(v);
                wd[i] = ms_f16_to_f32(((uint16_t *)row)[i]);
            } else if (c->type == MS_TYPE_BF16) {
                ((uint16_t *)row)[i] = ms_f32_to_bf16(v);
                wd[i] = ms_bf16_to_f32(((uint16_t *)row)[i]);
            }
        }
        if (c->type != MS_TYPE_Q8_0)
            continue;
        ms_block_q8_0_t *b = (void *)row;
        for (int64_t k = 0; k < c->n_in / 32; k++) {
            b[k].d = ms_f32_to_f16(rnd_f(-0.02f, 0.02f));
            for (int j = 0; j < 32; j++) {
                b[k].qs[j] = (int8_t)(rnd_u32() & 0xff); /* full range, -128 included */
                wd[k * 32 + j] = (double)ms_f16_to_f32(b[k].d) * b[k].qs[j];
            }
        }
    }
}

static void case_new(mm_case_t *c, ms_type_t type, int64_t n_out, int64_t n_in, int64_t n_tok)
{
    *c = (mm_case_t){ .type = type, .n_out = n_out, .n_in = n_in, .n_tok = n_tok, .ldx = n_in + 5,
                      .ldy = n_out + 3 };
    case_fill_weights(c);
    c->x = malloc(sizeof(float) * (size_t)(c->ldx * n_tok));
    for (int64_t i = 0; i < c->ldx * n_tok; i++)
        c->x[i] = rnd_f(-2, 2);
    size_t xb = ms_act_row_bytes(type, n_in);
    c->xq = xb ? malloc(xb * (size_t)n_tok) : NULL;
    if (xb)
        ms_act_quantize_rows(NULL, ms_kernels_for(MS_ISA_SCALAR), type, c->x, c->ldx, n_tok, n_in, c->xq);
    c->y = malloc(sizeof(float) * (size_t)(c->ldy * n_tok));
}

static void case_free(mm_case_t *c)
{
    free(c->w);
    free(c->wd);
    free(c->x);
    free(c->xq);
    free(c->y);
}

static ms_mm_t case_job(const mm_case_t *c, float *y)
{
    return (ms_mm_t){ .type = c->type, .w = c->w, .n_out = c->n_out, .n_in = c->n_in, .x = c->x,
                      .ldx = c->ldx, .xq = c->xq, .n_tok = c->n_tok, .y = y, .ldy = c->ldy };
}

/* Runs table k on the case into c->y (padding set to a sentinel) and
 * checks the padding columns stayed untouched. */
static void case_run(const ms_kernels_t *k, mm_case_t *c)
{
    for (int64_t i = 0; i < c->ldy * c->n_tok; i++)
        c->y[i] = -12345.0f;
    ms_mm_t job = case_job(c, c->y);
    k->matmul(&job, 0, c->n_out);
    for (int64_t t = 0; t < c->n_tok; t++)
        for (int64_t r = c->n_out; r < c->ldy; r++)
            CU_ASSERT_EQUAL(c->y[t * c->ldy + r], -12345.0f);
}

/* Exact value (double) and the magnitude sum|terms| for output (t, r). */
static void case_ref(const mm_case_t *c, int64_t t, int64_t r, double *ret_v, double *ret_mag)
{
    double v = 0, mag = 0;
    if (c->type == MS_TYPE_Q8_0) {
        size_t rb = ms_type_row_bytes(MS_TYPE_Q8_0, (uint64_t)c->n_in);
        const ms_block_q8_0_t *w = (const void *)((const char *)c->w + (size_t)r * rb);
        const ms_block_q8_0_t *x = (const void *)((const char *)c->xq + (size_t)t * rb);
        for (int64_t b = 0; b < c->n_in / 32; b++) {
            long isum = 0, iabs = 0;
            for (int j = 0; j < 32; j++) {
                isum += (long)w[b].qs[j] * x[b].qs[j];
                iabs += labs((long)w[b].qs[j] * x[b].qs[j]);
            }
            double s = (double)ms_f16_to_f32(w[b].d) * ms_f16_to_f32(x[b].d);
            v += s * (double)isum;
            mag += fabs(s) * (double)iabs;
        }
    } else {
        for (int64_t i = 0; i < c->n_in; i++) {
            double p = c->wd[r * c->n_in + i] * c->x[t * c->ldx + i];
            v += p;
            mag += fabs(p);
        }
    }
    *ret_v = v;
    *ret_mag = mag;
}

static const ms_type_t mm_types[] = { MS_TYPE_F32, MS_TYPE_F16, MS_TYPE_BF16, MS_TYPE_Q8_0 };
static const int64_t mm_n_in[] = { 32, 64, 96, 4064, 4096 + 32 };
static const int64_t mm_n_out[] = { 1, 3, 17, 33 };
static const int64_t mm_n_tok[] = { 1, 2, 3, 5, 8, 17 };
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Scalar against the double reference, then each SIMD table against the
 * scalar result, over every type and shape. */
static void test_matmul_shapes(void)
{
    for (size_t ty = 0; ty < COUNT(mm_types); ty++)
        for (size_t a = 0; a < COUNT(mm_n_in); a++)
            for (size_t b = 0; b < COUNT(mm_n_out); b++)
                for (size_t tt = 0; tt < COUNT(mm_n_tok); tt++) {
                    mm_case_t c;
                    case_new(&c, mm_types[ty], mm_n_out[b], mm_n_in[a], mm_n_tok[tt]);
                    double tol = c.type == MS_TYPE_Q8_0 ? 1e-4 : 1e-5;
                    case_run(tables[0], &c);
                    float *ys = malloc(sizeof(float) * (size_t)(c.ldy * c.n_tok));
                    memcpy(ys, c.y, sizeof(float) * (size_t)(c.ldy * c.n_tok));
                    int bad = 0;
                    for (int64_t t = 0; t < c.n_tok; t++)
                        for (int64_t r = 0; r < c.n_out; r++) {
                            double v, mag;
                            case_ref(&c, t, r, &v, &mag);
                            bad += !(fabs(ys[t * c.ldy + r] - v) <= tol * mag + 1e-30);
                        }
                    for (int ti = 1; ti < n_tables; ti++) {
                        case_run(tables[ti], &c);
                        for (int64_t t = 0; t < c.n_tok; t++)
                            for (int64_t r = 0; r < c.n_out; r++) {
                                double v, mag;
                                case_ref(&c, t, r, &v, &mag);
                                bad += !(fabs(c.y[t * c.ldy + r] - ys[t * c.ldy + r]) <= 1e-5 * mag + 1e-30);
                            }
                    }
                    if (bad)
                        fprintf(stderr, "matmul mismatch: type %d n_in %lld n_out %lld n_tok %lld: %d\n",
                                (int)c.type, (long long)c.n_in, (long long)c.n_out, (long long)c.n_tok, bad);
                    CU_ASSERT_EQUAL(bad, 0);
                    free(ys);
                    case_free(&c);
                }
}

/* A token's result must not depend on the other tokens of the call (its
 * tile shape): continuous batching relies on it for outputs identical to a
 * request run alone. Bit-for-bit, for every table, type and batch size. */
static void test_matmul_batch_invariant(void)
{
    static const int64_t n_toks[] = { 2, 3, 4, 5, 8, 9, 17 };
    static const int64_t n_ins[] = { 96, 1056 };
    for (int ti = 0; ti < n_tables; ti++)
        for (size_t ty = 0; ty < COUNT(mm_types); ty++)
            for (size_t a = 0; a < COUNT(n_ins); a++)
                for (size_t b = 0; b < COUNT(n_toks); b++) {
                    mm_case_t c;
                    case_new(&c, mm_types[ty], 37, n_ins[a], n_toks[b]);
                    case_run(tables[ti], &c);
                    size_t xb = ms_act_row_bytes(c.type, c.n_in);
                    float *solo = malloc(sizeof(float) * (size_t)c.ldy);
                    int bad = 0;
                    for (int64_t t = 0; t < c.n_tok; t++) {
                        ms_mm_t one = case_job(&c, solo);
                        one.x = c.x + t * c.ldx;
                        one.xq = xb ? (const char *)c.xq + (size_t)t * xb : NULL;
                        one.n_tok = 1;
                        tables[ti]->matmul(&one, 0, c.n_out);
                        bad += memcmp(solo, c.y + t * c.ldy, sizeof(float) * (size_t)c.n_out) != 0;
                    }
                    if (bad)
                        fprintf(stderr, "%s: type %d n_in %lld: %d of %lld tokens differ alone and in a batch\n",
                                tables[ti]->name, (int)c.type, (long long)c.n_in, bad, (long long)c.n_tok);
                    CU_ASSERT_EQUAL(bad, 0);
                    free(solo);
                    case_free(&c);
                }
}

/* The largest products the int8 paths can meet: w = -128 against x = -127
 * (maddubs would saturate int16 if the sign trick were wrong). */
static void test_matmul_q8_extremes(void)
{
    enum { NIN = 96, NOUT = 5, NTOK = 3 };
    ms_block_q8_0_t w[NOUT][NIN / 32], x[NTOK][NIN / 32];
    for (int r = 0; r < NOUT; r++)
        for (int b = 0; b < NIN / 32; b++) {
            w[r][b].d = 0x3c00;
            memset(w[r][b].qs, r % 2 ? 0x80 : 0x7f, 32); /* -128 or 127 */
        }
    for (int t = 0; t < NTOK; t++)
        for (int b = 0; b < NIN / 32; b++) {
            x[t][b].d = 0x3c00;
            memset(x[t][b].qs, t % 2 ? 0x81 : 0x7f, 32); /* -127 or 127 */
        }
    for (int ti = 0; ti < n_tables; ti++) {
        float y[NTOK][NOUT];
        ms_mm_t job = { .type = MS_TYPE_Q8_0, .w = w, .n_out = NOUT, .n_in = NIN, .x = NULL, .ldx = 0,
                        .xq = x, .n_tok = NTOK, .y = &y[0][0], .ldy = NOUT };
        tables[ti]->matmul(&job, 0, NOUT);
        for (int t = 0; t < NTOK; t++)
            for (int r = 0; r < NOUT; r++) {
                double wq = r % 2 ? -128 : 127, xq = t % 2 ? -127 : 127;
                CU_ASSERT_EQUAL(y[t][r], (float)(NIN * wq * xq));
            }
    }
}

/* Jobs the kernels cannot compute yield NaN rows instead of reading garbage. */
static void test_matmul_invalid(void)
{
    float x[64] = { 0 }, y[4];
    ms_block_q8_0_t w[2][2];
    memset(w, 0, sizeof(w));
    for (int ti = 0; ti < n_tables; ti++) {
        ms_mm_t job = { .type = MS_TYPE_Q8_0, .w = w, .n_out = 2, .n_in = 64, .x = x, .ldx = 64,
                        .xq = NULL, .n_tok = 1, .y = y, .ldy = 2 };
        y[0] = y[1] = 0;
        tables[ti]->matmul(&job, 0, 2);
        CU_ASSERT(isnan(y[0]) && isnan(y[1]));
        job.type = MS_TYPE_IQ2_XXS;
        job.xq = w;
        y[0] = y[1] = 0;
        tables[ti]->matmul(&job, 0, 2);
        CU_ASSERT(isnan(y[0]) && isnan(y[1]));
    }
}

/* ms_matmul_multi on pools of 1..3 threads gives the single-thread bits,
 * run after run: threads that finish their share take grains from the back
 * of the others', so which thread computes a row changes between runs. */
static void test_matmul_multi(void)
{
    mm_case_t c[4];
    case_new(&c[0], MS_TYPE_Q8_0, 33, 256, 5);
    case_new(&c[1], MS_TYPE_F16, 100, 96, 5);
    case_new(&c[2], MS_TYPE_F32, 17, 64, 5);
    case_new(&c[3], MS_TYPE_BF16, 70, 160, 5);
    for (int ti = 0; ti < n_tables; ti++) {
        const ms_kernels_t *k = tables[ti];
        float *ref[4], *out[4];
        ms_mm_t jobs[4];
        for (int j = 0; j < 4; j++) {
            size_t bytes = sizeof(float) * (size_t)(c[j].ldy * c[j].n_tok);
            ref[j] = calloc(1, bytes);
            out[j] = calloc(1, bytes);
            ms_mm_t one = case_job(&c[j], ref[j]);
            k->matmul(&one, 0, c[j].n_out);
            jobs[j] = case_job(&c[j], out[j]);
        }
        for (int nth = 0; nth <= 3; nth++) {
            ms_pool_t *pool = NULL;
            if (nth > 0)
                CU_ASSERT_EQUAL_FATAL(ms_pool_new(nth, &pool), 0);
            for (int run = 0; run < (nth > 1 ? 50 : 1); run++) {
                for (int j = 0; j < 4; j++)
                    memset(out[j], 0, sizeof(float) * (size_t)(c[j].ldy * c[j].n_tok));
                ms_matmul_multi(pool, k, jobs, 4);
                for (int j = 0; j < 4; j++)
                    for (int64_t t = 0; t < c[j].n_tok; t++)
                        CU_ASSERT(memcmp(out[j] + t * c[j].ldy, ref[j] + t * c[j].ldy,
                                         sizeof(float) * (size_t)c[j].n_out) == 0);
            }
            /* quantising on the pool gives the same bytes as one thread */
            size_t xb = ms_act_row_bytes(MS_TYPE_Q8_0, c[0].n_in);
            unsigned char *q = malloc(xb * (size_t)c[0].n_tok);
            ms_act_quantize_rows(pool, k, MS_TYPE_Q8_0, c[0].x, c[0].ldx, c[0].n_tok, c[0].n_in, q);
            CU_ASSERT(memcmp(q, c[0].xq, xb * (size_t)c[0].n_tok) == 0);
            free(q);
            ms_matmul_multi(pool, k, jobs, 0); /* no jobs: nothing to do */
            ms_pool_destroy(&pool);
        }
        for (int j = 0; j < 4; j++) {
            free(ref[j]);
            free(out[j]);
        }
    }
    for (int j = 0; j < 4; j++)
        case_free(&c[j]);
}

/* ---- Q8_0 laid out 16 rows at a time ------------------------------------- */

/* Memory for packed Q8_0 weights: a packed matrix starts on a cache line
 * (kernels.h). */
static void *q8_r16_alloc(size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

/* A copy of the case's Q8_0 weights laid out 16 rows at a time. */
static void *case_pack(const mm_case_t *c)
{
    size_t bytes = ms_type_row_bytes(MS_TYPE_Q8_0, (uint64_t)c->n_in) * (size_t)c->n_out;
    void *p = q8_r16_alloc(bytes);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memcpy(p, c->w, bytes);
    CU_ASSERT_FATAL(ms_q8_r16_pack(p, 1, c->n_out, c->n_in));
    return p;
}

/* ms_q8_r16_pack puts every row's scale and quants (q + 128) where
 * ms_q8_r16_at says, touches nothing past the matrices, and refuses shapes
 * that are not whole groups of 16 rows of whole blocks, leaving them as
 * they were. */
static void test_q8_r16_pack(void)
{
    /* the layout by hand: blocks in pairs (their scales, then their
     * quants), an odd last block alone (its scales, then its quants) */
    static const struct {
        int64_t nb, b;
        size_t so, qo;
    } at[] = {
        { 3, 0, 0, 64 },           { 3, 1, 32, 64 + 512 },           { 3, 2, 1088, 1088 + 32 },
        { 4, 2, 1088, 1088 + 64 }, { 4, 3, 1088 + 32, 1088 + 576 }, { 1, 0, 0, 32 },
    };
    for (size_t i = 0; i < COUNT(at); i++) {
        size_t so, qo;
        ms_q8_r16_at(at[i].nb, at[i].b, &so, &qo);
        CU_ASSERT(so == at[i].so && qo == at[i].qo);
    }
    static const int64_t n_ins[] = { 1024, 96 }; /* 32 blocks; 3 blocks, the last alone */
    static const int64_t n_outs[] = { 16, 48 };
    static const int64_t n_mats[] = { 1, 3 };
    for (size_t a = 0; a < COUNT(n_ins); a++)
        for (size_t o = 0; o < COUNT(n_outs); o++)
            for (size_t m = 0; m < COUNT(n_mats); m++) {
                int64_t n_in = n_ins[a], n_out = n_outs[o], n_mat = n_mats[m], nb = n_in / MS_QK8_0;
                size_t rb = ms_type_row_bytes(MS_TYPE_Q8_0, (uint64_t)n_in), mb = rb * (size_t)n_out;
                size_t bytes = mb * (size_t)n_mat;
                uint8_t *w = q8_r16_alloc(bytes + 64), *orig = malloc(bytes + 64);
                CU_ASSERT_FATAL(w && orig);
                for (size_t i = 0; i < bytes + 64; i++)
                    w[i] = (uint8_t)rnd_u32();
                memcpy(orig, w, bytes + 64);
                CU_ASSERT_FATAL(ms_q8_r16_pack(w, n_mat, n_out, n_in));
                CU_ASSERT(memcmp(w + bytes, orig + bytes, 64) == 0); /* nothing past the matrices */
                int bad = 0;
                for (int64_t mat = 0; mat < n_mat; mat++)
                    for (int64_t r = 0; r < n_out; r++) {
                        const ms_block_q8_0_t *src = (const void *)(orig + (size_t)mat * mb + (size_t)r * rb);
                        const uint8_t *g = w + (size_t)mat * mb + (size_t)(r / MS_Q8_R16_ROWS) * MS_Q8_R16_ROWS * rb;
                        int i = (int)(r % MS_Q8_R16_ROWS);
                        for (int64_t b = 0; b < nb; b++) {
                            size_t so, qo;
                            ms_q8_r16_at(nb, b, &so, &qo);
                            bad += memcmp(g + so + 2 * i, &src[b].d, 2) != 0;
                            for (int k = 0; k < MS_QK8_0; k++)
                                bad += g[qo + (size_t)(k / 4) * 64 + 4 * (size_t)i + k % 4] != (uint8_t)(src[b].qs[k] + 128);
                        }
                    }
                if (bad)
                    fprintf(stderr, "r16 pack: n_in %lld n_out %lld n_mat %lld: %d values misplaced\n",
                            (long long)n_in, (long long)n_out, (long long)n_mat, bad);
                CU_ASSERT_EQUAL(bad, 0);
                free(w);
                free(orig);
            }
    CU_ASSERT(ms_q8_r16_fits(16, 32) && ms_q8_r16_fits(1024, 1024) && ms_q8_r16_fits(48, 96));
    static const int64_t refused[][2] = { { 15, 1024 }, { 17, 1024 }, { 8, 64 }, { 0, 64 }, { -16, 64 },
                                          { 16, 48 },   { 16, 16 },   { 16, 0 }, { 16, -32 } };
    enum { BUF = 17 * 34 * 32 + 64 };
    uint8_t *buf = q8_r16_alloc(BUF), *orig = malloc(BUF);
    CU_ASSERT_FATAL(buf && orig);
    for (size_t i = 0; i < BUF; i++)
        buf[i] = (uint8_t)rnd_u32();
    memcpy(orig, buf, BUF);
    for (size_t i = 0; i < COUNT(refused); i++) {
        CU_ASSERT(!ms_q8_r16_fits(refused[i][0], refused[i][1]));
        CU_ASSERT(!ms_q8_r16_pack(buf, 1, refused[i][0], refused[i][1]));
    }
    CU_ASSERT(!ms_q8_r16_pack(buf, 0, 16, 64)); /* no matrices */
    CU_ASSERT(!ms_q8_r16_pack(buf, -1, 16, 64));
    CU_ASSERT(memcmp(buf, orig, BUF) == 0);
    free(buf);
    free(orig);
}

/* Products of packed matrices are the same bits on every table (the R16
 * kernels add a row's blocks in one order), for any number of tokens and
 * any rows [r0, r1) at whole groups, and on a pool of 2. */
static void test_q8_r16_isas(void)
{
    static const int64_t n_outs[] = { 16, 48, 1024 };
    static const int64_t n_ins[] = { 64, 96, 1024, 16384 + 96 }; /* the last in two passes of blocks */
    static const int64_t n_toks[] = { 1, 2, 3, 4, 5, 17 };
    ms_pool_t *pool = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_pool_new(2, &pool), 0);
    for (size_t o = 0; o < COUNT(n_outs); o++)
        for (size_t a = 0; a < COUNT(n_ins); a++)
            for (size_t tt = 0; tt < COUNT(n_toks); tt++) {
                if (n_outs[o] > 48 && n_ins[a] > 1024)
                    continue;
                mm_case_t c;
                case_new(&c, MS_TYPE_Q8_0, n_outs[o], n_ins[a], n_toks[tt]);
                void *wp = case_pack(&c);
                size_t ybytes = sizeof(float) * (size_t)(c.ldy * c.n_tok);
                float *ref = malloc(ybytes), *y = malloc(ybytes);
                ms_mm_t job = case_job(&c, ref);
                job.w = wp;
                job.w_r16 = true;
                tables[0]->matmul(&job, 0, c.n_out); /* scalar */
                int64_t ranges[][2] = { { 0, c.n_out }, { 0, 16 }, { c.n_out - 16, c.n_out }, { 16, c.n_out },
                                        { 16, c.n_out - 16 } };
                int bad = 0;
                for (int ti = 0; ti < n_tables; ti++)
                    for (size_t ri = 0; ri < COUNT(ranges); ri++) {
                        int64_t r0 = ranges[ri][0], r1 = ranges[ri][1];
                        if (r0 >= r1)
                            continue;
                        for (int64_t i = 0; i < c.ldy * c.n_tok; i++)
                            y[i] = -12345.0f;
                        job.y = y;
                        if (ri == 0 && ti > 0) /* the whole matrix on the pool as well */
                            ms_matmul_multi(pool, tables[ti], &job, 1);
                        else
                            tables[ti]->matmul(&job, r0, r1);
                        for (int64_t t = 0; t < c.n_tok; t++)
                            for (int64_t r = 0; r < c.ldy; r++) {
                                float v = y[t * c.ldy + r];
                                if (r >= r0 && r < r1)
                                    bad += memcmp(&v, &ref[t * c.ldy + r], sizeof(v)) != 0;
                                else
                                    bad += v != -12345.0f; /* outside [r0, r1): not written */
                            }
                        if (bad) {
                            fprintf(stderr, "r16 %s: n_out %lld n_in %lld n_tok %lld rows [%lld, %lld): %d differ from scalar\n",
                                    tables[ti]->name, (long long)c.n_out, (long long)c.n_in, (long long)c.n_tok,
                                    (long long)r0, (long long)r1, bad);
                            ti = n_tables;
                            break;
                        }
                    }
                CU_ASSERT_EQUAL(bad, 0);
                free(ref);
                free(y);
                free(wp);
                case_free(&c);
            }
    ms_pool_destroy(&pool);
}

/* A packed matrix's product against the same matrix's in the file's row
 * layout (the row kernels): equal within the tolerance the tables keep to
 * one another, and within the scalar's tolerance of the exact value. */
static void test_q8_r16_vs_rows(void)
{
    static const int64_t n_outs[] = { 16, 48, 1024 };
    static const int64_t n_ins[] = { 64, 96, 1024, 4096 + 32 };
    static const int64_t n_toks[] = { 1, 5 };
    for (size_t o = 0; o < COUNT(n_outs); o++)
        for (size_t a = 0; a < COUNT(n_ins); a++)
            for (size_t tt = 0; tt < COUNT(n_toks); tt++) {
                mm_case_t c;
                case_new(&c, MS_TYPE_Q8_0, n_outs[o], n_ins[a], n_toks[tt]);
                void *wp = case_pack(&c);
                float *yp = malloc(sizeof(float) * (size_t)(c.ldy * c.n_tok));
                int bad = 0;
                for (int ti = 0; ti < n_tables; ti++) {
                    case_run(tables[ti], &c); /* the row layout, into c.y */
                    ms_mm_t job = case_job(&c, yp);
                    job.w = wp;
                    job.w_r16 = true;
                    tables[ti]->matmul(&job, 0, c.n_out);
                    for (int64_t t = 0; t < c.n_tok; t++)
                        for (int64_t r = 0; r < c.n_out; r++) {
                            double v, mag;
                            case_ref(&c, t, r, &v, &mag);
                            double p = yp[t * c.ldy + r];
                            bad += !(fabs(p - c.y[t * c.ldy + r]) <= 1e-5 * mag + 1e-30);
                            bad += !(fabs(p - v) <= 1e-4 * mag + 1e-30);
                        }
                    if (bad) {
                        fprintf(stderr, "r16 %s: n_out %lld n_in %lld n_tok %lld: %d packed values off the row layout's\n",
                                tables[ti]->name, (long long)c.n_out, (long long)c.n_in, (long long)c.n_tok, bad);
                        break;
                    }
                }
                CU_ASSERT_EQUAL(bad, 0);
                free(yp);
                free(wp);
                case_free(&c);
            }
}

/* ---- f32 helpers ------------------------------------------------------- */

static const int64_t vec_n[] = { 1, 7, 8, 15, 16, 17, 33, 100, 4096 + 5 };

static void test_dot_axpy(void)
{
    enum { N = 4096 + 5 };
    static float a[N], b[N], y[N + 1], y0[N + 1]; /* one past the longest n: the check that nothing is written there */
    for (int i = 0; i < N; i++) {
        a[i] = rnd_f(-1, 1);
        b[i] = rnd_f(-1, 1);
        y0[i] = rnd_f(-1, 1);
    }
    for (int ti = 0; ti < n_tables; ti++)
        for (size_t s = 0; s < COUNT(vec_n); s++) {
            int64_t n = vec_n[s];
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < n; i++) {
                ref += (double)a[i] * b[i];
                mag += fabs((double)a[i] * b[i]);
            }
            CU_ASSERT(fabs(tables[ti]->dot_f32(a, b, n) - ref) <= 1e-5 * mag);
            memcpy(y, y0, sizeof(y));
            tables[ti]->axpy(y, 0.75f, a, n);
            for (int64_t i = 0; i < n; i++)
                CU_ASSERT(fabs(y[i] - (y0[i] + 0.75 * a[i])) <= 1e-6 * (fabs(y0[i]) + fabs(a[i])));
            CU_ASSERT_EQUAL(y[n], y0[n]); /* nothing past n */
        }
}

/* ---- attention over cached rows ---------------------------------------- */

static const int64_t rows_dim[] = { 1, 7, 16, 24, 64, 65, 128, 130 };
static const int64_t rows_n[] = { 0, 1, 3, 17, 200 };
enum { ROWS_DIM_MAX = 130, ROWS_N_MAX = 200, ROWS_STRIDE_MAX = 2 * ROWS_DIM_MAX + 17 };

/* Packed rows, a little padding, and more than a row's worth between rows. */
static int64_t rows_stride(int64_t dim, int s)
{
    return s == 0 ? dim : s == 1 ? dim + 3 : 2 * dim + 17;
}

/* n rows of dim values at stride; the padding and everything after hold NaN,
 * so a kernel that reads past dim (or past n rows) yields NaN and fails. */
static void rows_fill(float *rows, int64_t stride, int64_t n, int64_t dim)
{
    for (int64_t i = 0; i < ROWS_N_MAX * ROWS_STRIDE_MAX; i++)
        rows[i] = NAN;
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < dim; i++)
            rows[j * stride + i] = rnd_f(-1, 1);
}

/* Any order of summing dim products in float lies within dim * eps * mag of
 * the exact sum (mag = sum of |products|); two such orders within twice that. */
static void dot_rows_case(int64_t dim, int64_t n, int64_t stride)
{
    static float q[ROWS_DIM_MAX + 1], rows[ROWS_N_MAX * ROWS_STRIDE_MAX], out[ROWS_N_MAX + 1], sc[ROWS_N_MAX];
    double ref[ROWS_N_MAX], mag[ROWS_N_MAX];
    for (int64_t i = 0; i < dim; i++)
        q[i] = rnd_f(-1, 1);
    q[dim] = NAN;
    rows_fill(rows, stride, n, dim);
    for (int64_t j = 0; j < n; j++) {
        ref[j] = mag[j] = 0;
        for (int64_t i = 0; i < dim; i++) {
            ref[j] += (double)q[i] * rows[j * stride + i];
            mag[j] += fabs((double)q[i] * rows[j * stride + i]);
        }
    }
    for (int ti = 0; ti < n_tables; ti++) {
        out[n] = 42.0f;
        tables[ti]->dot_rows(q, rows, stride, n, dim, out);
        CU_ASSERT_EQUAL(out[n], 42.0f);
        if (ti == 0)
            memcpy(sc, out, sizeof(float) * (size_t)n);
        for (int64_t j = 0; j < n; j++) {
            double tol = (double)dim * FLT_EPSILON * mag[j];
            bool ok = fabs(out[j] - ref[j]) <= tol && fabs(out[j] - sc[j]) <= 2 * tol;
            if (!ok)
                fprintf(stderr, "%s dot_rows dim %lld n %lld stride %lld row %lld: %g vs %g\n", tables[ti]->name,
                        (long long)dim, (long long)n, (long long)stride, (long long)j, out[j], ref[j]);
            CU_ASSERT(ok);
        }
    }
}

static void test_dot_rows(void)
{
    CU_ASSERT_STRING_EQUAL_FATAL(tables[0]->name, "scalar");
    for (size_t d = 0; d < COUNT(rows_dim); d++)
        for (size_t r = 0; r < COUNT(rows_n); r++)
            for (int s = 0; s < 3; s++)
                dot_rows_case(rows_dim[d], rows_n[r], rows_stride(rows_dim[d], s));
}

/* out[i] starts at y0[i] and gains n products: within (n + 1) * eps * mag. */
static void axpy_rows_case(int64_t dim, int64_t n, int64_t stride)
{
    static float w[ROWS_N_MAX + 1], rows[ROWS_N_MAX * ROWS_STRIDE_MAX], y0[ROWS_DIM_MAX], out[ROWS_DIM_MAX + 1],
        sc[ROWS_DIM_MAX];
    double ref[ROWS_DIM_MAX], mag[ROWS_DIM_MAX];
    for (int64_t j = 0; j < n; j++)
        w[j] = rnd_f(-1, 1);
    w[n] = NAN;
    rows_fill(rows, stride, n, dim);
    for (int64_t i = 0; i < dim; i++) {
        y0[i] = rnd_f(-1, 1);
        ref[i] = y0[i];
        mag[i] = fabs(y0[i]);
        for (int64_t j = 0; j < n; j++) {
            ref[i] += (double)w[j] * rows[j * stride + i];
            mag[i] += fabs((double)w[j] * rows[j * stride + i]);
        }
    }
    for (int ti = 0; ti < n_tables; ti++) {
        memcpy(out, y0, sizeof(float) * (size_t)dim);
        out[dim] = 42.0f;
        tables[ti]->axpy_rows(out, w, rows, stride, n, dim);
        CU_ASSERT_EQUAL(out[dim], 42.0f);
        if (ti == 0)
            memcpy(sc, out, sizeof(float) * (size_t)dim);
        if (n == 0)
            CU_ASSERT(memcmp(out, y0, sizeof(float) * (size_t)dim) == 0);
        for (int64_t i = 0; i < dim; i++) {
            double tol = (double)(n + 1) * FLT_EPSILON * mag[i];
            bool ok = fabs(out[i] - ref[i]) <= tol && fabs(out[i] - sc[i]) <= 2 * tol;
            if (!ok)
                fprintf(stderr, "%s axpy_rows dim %lld n %lld stride %lld col %lld: %g vs %g\n", tables[ti]->name,
                        (long long)dim, (long long)n, (long long)stride, (long long)i, out[i], ref[i]);
            CU_ASSERT(ok);
        }
    }
}

static void test_axpy_rows(void)
{
    CU_ASSERT_STRING_EQUAL_FATAL(tables[0]->name, "scalar");
    for (size_t d = 0; d < COUNT(rows_dim); d++)
        for (size_t r = 0; r < COUNT(rows_n); r++)
            for (int s = 0; s < 3; s++)
                axpy_rows_case(rows_dim[d], rows_n[r], rows_stride(rows_dim[d], s));
}

/* Hand values: q = (1, 2, 3) against rows (1, 0, 0), (0, 1, 1), (-1, 1, -1)
 * gives 1, 5, -2; weights (0.5, 2, -1) over the same rows add
 * (0.5 + 1, 2 - 1, 2 + 1) = (1.5, 1, 3) to out. */
static void test_rows_hand(void)
{
    const float q[3] = { 1, 2, 3 }, w[3] = { 0.5f, 2, -1 };
    const float rows[3][4] = { { 1, 0, 0, NAN }, { 0, 1, 1, NAN }, { -1, 1, -1, NAN } };
    for (int ti = 0; ti < n_tables; ti++) {
        float s[3], o[3] = { 10, 20, 30 };
        tables[ti]->dot_rows(q, &rows[0][0], 4, 3, 3, s);
        CU_ASSERT(s[0] == 1.0f && s[1] == 5.0f && s[2] == -2.0f);
        tables[ti]->axpy_rows(o, w, &rows[0][0], 4, 3, 3);
        CU_ASSERT(o[0] == 11.5f && o[1] == 21.0f && o[2] == 33.0f);
    }
}

/* ---- the same over f16 rows (an f16 KV cache) ---------------------------
 * Each table's f16 kernels must give, bit for bit, what its f32 kernels give
 * on the widened rows, and a row's score must not depend on the other rows
 * of the call (callers split the rows into blocks). */

/* Every tail length of 8- and 16-wide vectors around the tile and slice
 * sizes, and every row count up to two tiles of four. */
static const int64_t rows16_dim[] = { 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 128, 130 };
static const int64_t rows16_n[] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 64, 200 };

#define F16_NAN 0x7e00

/* A random half: mostly in (-1, 1), one in eight scaled by 2^-24..2^15 so
 * subnormals, zeros and large values occur too. */
static uint16_t rnd_f16(void)
{
    float v = rnd_f(-1, 1);
    if (rnd_u32() % 8 == 0)
        v = ldexpf(v, (int)(rnd_u32() % 40) - 24);
    return ms_f32_to_f16(v);
}

/* n rows of dim random halves at stride, NaN around them (as rows_fill), and
 * wide = the same rows widened to f32, NaN around them. */
static void rows_fill_f16(uint16_t *h, float *wide, int64_t stride, int64_t n, int64_t dim)
{
    for (int64_t i = 0; i < ROWS_N_MAX * ROWS_STRIDE_MAX; i++) {
        h[i] = F16_NAN;
        wide[i] = NAN;
    }
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < dim; i++) {
            h[j * stride + i] = rnd_f16();
            wide[j * stride + i] = ms_f16_to_f32(h[j * stride + i]);
        }
}

/* dot_rows_case's bounds on the widened values, then the bits against
 * dot_rows on them and against each row scored alone. */
static void dot_rows_f16_case(int64_t dim, int64_t n, int64_t stride)
{
    static uint16_t h[ROWS_N_MAX * ROWS_STRIDE_MAX];
    static float q[ROWS_DIM_MAX + 1], wide[ROWS_N_MAX * ROWS_STRIDE_MAX], out[ROWS_N_MAX + 1], o32[ROWS_N_MAX],
        sc[ROWS_N_MAX];
    double ref[ROWS_N_MAX], mag[ROWS_N_MAX];
    for (int64_t i = 0; i < dim; i++)
        q[i] = rnd_f(-1, 1);
    q[dim] = NAN;
    rows_fill_f16(h, wide, stride, n, dim);
    for (int64_t j = 0; j < n; j++) {
        ref[j] = mag[j] = 0;
        for (int64_t i = 0; i < dim; i++) {
            ref[j] += (double)q[i] * wide[j * stride + i];
            mag[j] += fabs((double)q[i] * wide[j * stride + i]);
        }
    }
    for (int ti = 0; ti < n_tables; ti++) {
        const ms_kernels_t *k = tables[ti];
        out[n] = 42.0f;
        k->dot_rows_f16(q, h, stride, n, dim, out);
        CU_ASSERT_EQUAL(out[n], 42.0f);
        if (ti == 0)
            memcpy(sc, out, sizeof(float) * (size_t)n);
        for (int64_t j = 0; j < n; j++) {
            double tol = (double)dim * FLT_EPSILON * mag[j];
            bool ok = fabs(out[j] - ref[j]) <= tol && fabs(out[j] - sc[j]) <= 2 * tol;
            if (!ok)
                fprintf(stderr, "%s dot_rows_f16 dim %lld n %lld stride %lld row %lld: %g vs %g\n", k->name,
                        (long long)dim, (long long)n, (long long)stride, (long long)j, out[j], ref[j]);
            CU_ASSERT(ok);
        }
        k->dot_rows(q, wide, stride, n, dim, o32);
        int differ = memcmp(out, o32, sizeof(float) * (size_t)n) != 0, alone = 0;
        for (int64_t j = 0; j < n; j++) {
            float one;
            k->dot_rows_f16(q, h + j * stride, stride, 1, dim, &one);
            alone += memcmp(&one, &out[j], sizeof(one)) != 0;
        }
        if (differ || alone)
            fprintf(stderr, "%s dot_rows_f16 dim %lld n %lld stride %lld: %s%d rows differ scored alone\n", k->name,
                    (long long)dim, (long long)n, (long long)stride, differ ? "differs from dot_rows; " : "", alone);
        CU_ASSERT(!differ);
        CU_ASSERT_EQUAL(alone, 0);
    }
}

static void test_dot_rows_f16(void)
{
    CU_ASSERT_STRING_EQUAL_FATAL(tables[0]->name, "scalar");
    for (size_t d = 0; d < COUNT(rows16_dim); d++)
        for (size_t r = 0; r < COUNT(rows16_n); r++)
            for (int s = 0; s < 3; s++)
                dot_rows_f16_case(rows16_dim[d], rows16_n[r], rows_stride(rows16_dim[d], s));
}

/* axpy_rows_case's bounds on the widened values, then the bits against
 * axpy_rows on them. */
static void axpy_rows_f16_case(int64_t dim, int64_t n, int64_t stride)
{
    static uint16_t h[ROWS_N_MAX * ROWS_STRIDE_MAX];
    static float w[ROWS_N_MAX + 1], wide[ROWS_N_MAX * ROWS_STRIDE_MAX], y0[ROWS_DIM_MAX], out[ROWS_DIM_MAX + 1],
        o32[ROWS_DIM_MAX], sc[ROWS_DIM_MAX];
    double ref[ROWS_DIM_MAX], mag[ROWS_DIM_MAX];
    for (int64_t j = 0; j < n; j++)
        w[j] = rnd_f(-1, 1);
    w[n] = NAN;
    rows_fill_f16(h, wide, stride, n, dim);
    for (int64_t i = 0; i < dim; i++) {
        y0[i] = rnd_f(-1, 1);
        ref[i] = y0[i];
        mag[i] = fabs(y0[i]);
        for (int64_t j = 0; j < n; j++) {
            ref[i] += (double)w[j] * wide[j * stride + i];
            mag[i] += fabs((double)w[j] * wide[j * stride + i]);
        }
    }
    for (int ti = 0; ti < n_tables; ti++) {
        const ms_kernels_t *k = tables[ti];
        memcpy(out, y0, sizeof(float) * (size_t)dim);
        out[dim] = 42.0f;
        k->axpy_rows_f16(out, w, h, stride, n, dim);
        CU_ASSERT_EQUAL(out[dim], 42.0f);
        if (ti == 0)
            memcpy(sc, out, sizeof(float) * (size_t)dim);
        if (n == 0)
            CU_ASSERT(memcmp(out, y0, sizeof(float) * (size_t)dim) == 0);
        for (int64_t i = 0; i < dim; i++) {
            double tol = (double)(n + 1) * FLT_EPSILON * mag[i];
            bool ok = fabs(out[i] - ref[i]) <= tol && fabs(out[i] - sc[i]) <= 2 * tol;
            if (!ok)
                fprintf(stderr, "%s axpy_rows_f16 dim %lld n %lld stride %lld col %lld: %g vs %g\n", k->name,
                        (long long)dim, (long long)n, (long long)stride, (long long)i, out[i], ref[i]);
            CU_ASSERT(ok);
        }
        memcpy(o32, y0, sizeof(float) * (size_t)dim);
        k->axpy_rows(o32, w, wide, stride, n, dim);
        int differ = memcmp(out, o32, sizeof(float) * (size_t)dim) != 0;
        if (differ)
            fprintf(stderr, "%s axpy_rows_f16 dim %lld n %lld stride %lld: differs from axpy_rows\n", k->name,
                    (long long)dim, (long long)n, (long long)stride);
        CU_ASSERT(!differ);
    }
}

static void test_axpy_rows_f16(void)
{
    CU_ASSERT_STRING_EQUAL_FATAL(tables[0]->name, "scalar");
    for (size_t d = 0; d < COUNT(rows16_dim); d++)
        for (size_t r = 0; r < COUNT(rows16_n); r++)
            for (int s = 0; s < 3; s++)
                axpy_rows_f16_case(rows16_dim[d], rows16_n[r], rows_stride(rows16_dim[d], s));
}

/* test_rows_hand's rows as halves, and a fourth, (2^-24, 2^-14, 4095/12288)
 * (0x0001 the smallest subnormal, 0x0400 the smallest normal, 0x3555): q
 * scores it 2^-24 + 2^-13 + (1 - 2^-12) = 1 - 2^-13 + 2^-24; weight 1024
 * adds (2^-14, 1/16, 341.25) to out. Every partial sum is exact, so any
 * order gives these values. The rows sit in a buffer that ends where the
 * last row does, for the address sanitizer to catch a read past it. */
static void test_rows_f16_hand(void)
{
    const float q[3] = { 1, 2, 3 }, w[4] = { 0.5f, 2, -1, 1024 };
    const uint16_t rows[4][4] = { { 0x3c00, 0, 0, F16_NAN },
                                  { 0, 0x3c00, 0x3c00, F16_NAN },
                                  { 0xbc00, 0x3c00, 0xbc00, F16_NAN },
                                  { 0x0001, 0x0400, 0x3555, F16_NAN } };
    uint16_t *h = malloc(sizeof(uint16_t) * (3 * 4 + 3));
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    memcpy(h, rows, sizeof(uint16_t) * (3 * 4 + 3));
    for (int ti = 0; ti < n_tables; ti++) {
        float s[4], o[3] = { 10, 20, 30 };
        tables[ti]->dot_rows_f16(q, h, 4, 4, 3, s);
        CU_ASSERT(s[0] == 1.0f && s[1] == 5.0f && s[2] == -2.0f);
        CU_ASSERT_EQUAL(s[3], 1.0f - ldexpf(1, -13) + ldexpf(1, -24));
        tables[ti]->axpy_rows_f16(o, w, h, 4, 4, 3);
        CU_ASSERT(o[0] == 11.5f + ldexpf(1, -14) && o[1] == 21.0625f && o[2] == 374.25f);
    }
    free(h);
}

/* ---- several heads over the same rows -----------------------------------
 * dot_rows_heads must give each head what the same table's dot_rows
 * (dot_rows_f16) gives it, bit for bit; axpy_rows_heads each head's weighted
 * sum within rounding. Neither may touch out outside its heads' entries:
 * q, w and the rows hold NaN in their gaps (a read there poisons a result),
 * out a sentinel in its gaps (a write there changes it). Every head count,
 * head dims around the 8- and 16-wide vectors and the slices, a latent
 * row's 576, and row counts around the row tiles. */
static const int64_t heads_dim[] = { 1, 7, 16, 17, 33, 64, 65, 128, 130, 576 };
static const int64_t heads_n[] = { 0, 1, 2, 3, 5, 9, 64 };
enum { HEADS_DIM_MAX = 576, HEADS_N_MAX = 64, HEADS_PAD = 3 };
_Static_assert(HEADS_N_MAX * (HEADS_DIM_MAX + HEADS_PAD) <= ROWS_N_MAX * ROWS_STRIDE_MAX,
               "the rows_fill buffers hold the heads tests' rows");
#define HEADS_SENTINEL (-12345.5f)

/* One shape's data for all MS_ROWS_HEADS_MAX heads: n rows of dim values of
 * type at stride (h the halves, f the f32 values or the halves widened),
 * q [heads][ldq], w [heads][ldw] and y0 [heads][ldo_y] (axpy's out before
 * the call), gaps NaN in q and w and HEADS_SENTINEL in y0; dot's out is
 * [heads][ldo_s]. */
typedef struct {
    ms_type_t type;
    int64_t dim, n, stride, ldq, ldw, ldo_s, ldo_y;
    uint16_t h[ROWS_N_MAX * ROWS_STRIDE_MAX];
    float f[ROWS_N_MAX * ROWS_STRIDE_MAX];
    float q[MS_ROWS_HEADS_MAX * (HEADS_DIM_MAX + HEADS_PAD)];
    float w[MS_ROWS_HEADS_MAX * (HEADS_N_MAX + HEADS_PAD)];
    float y0[MS_ROWS_HEADS_MAX * (HEADS_DIM_MAX + HEADS_PAD)];
} heads_case_t;

static heads_case_t hc; /* large: static, not on the stack */

static void heads_case_fill(heads_case_t *c, ms_type_t type, int64_t dim, int64_t n, int64_t stride)
{
    *c = (heads_case_t){ .type = type, .dim = dim, .n = n, .stride = stride, .ldq = dim + HEADS_PAD,
                         .ldw = n + 2, .ldo_s = n + 2, .ldo_y = dim + HEADS_PAD };
    if (type == MS_TYPE_F16)
        rows_fill_f16(c->h, c->f, stride, n, dim);
    else
        rows_fill(c->f, stride, n, dim);
    for (int64_t i = 0; i < MS_ROWS_HEADS_MAX * c->ldq; i++)
        c->q[i] = i % c->ldq < dim ? rnd_f(-1, 1) : NAN;
    for (int64_t i = 0; i < MS_ROWS_HEADS_MAX * c->ldw; i++)
        c->w[i] = i % c->ldw < n ? rnd_f(-1, 1) : NAN;
    for (int64_t i = 0; i < MS_ROWS_HEADS_MAX * c->ldo_y; i++)
        c->y0[i] = i % c->ldo_y < dim ? rnd_f(-1, 1) : HEADS_SENTINEL;
}

static const void *heads_rows(const heads_case_t *c)
{
    return c->type == MS_TYPE_F16 ? (const void *)c->h : (const void *)c->f;
}

/* Entries of out [MS_ROWS_HEADS_MAX][ld] outside heads [0, nh) x [0, len)
 * that differ from before. */
static int heads_gaps_changed(const float *out, const float *before, int64_t ld, int nh, int64_t len)
{
    int changed = 0;
    for (int64_t i = 0; i < MS_ROWS_HEADS_MAX * ld; i++)
        if ((i / ld >= nh || i % ld >= len) && memcmp(&out[i], &before[i], sizeof(float)) != 0)
            changed++;
    return changed;
}

static void dot_heads_case(const ms_kernels_t *k, const heads_case_t *c, int nh)
{
    static float out[MS_ROWS_HEADS_MAX * (HEADS_N_MAX + 2)], before[MS_ROWS_HEADS_MAX * (HEADS_N_MAX + 2)],
        one[HEADS_N_MAX];
    for (int64_t i = 0; i < MS_ROWS_HEADS_MAX * c->ldo_s; i++)
        out[i] = before[i] = HEADS_SENTINEL;
    k->dot_rows_heads(c->type, c->q, c->ldq, nh, heads_rows(c), c->stride, c->n, c->dim, out, c->ldo_s);
    int differ = 0, changed = heads_gaps_changed(out, before, c->ldo_s, nh, c->n);
    for (int h = 0; h < nh; h++) {
        if (c->type == MS_TYPE_F16)
            k->dot_rows_f16(c->q + h * c->ldq, c->h, c->stride, c->n, c->dim, one);
        else
            k->dot_rows(c->q + h * c->ldq, c->f, c->stride, c->n, c->dim, one);
        differ += memcmp(out + h * c->ldo_s, one, sizeof(float) * (size_t)c->n) != 0;
    }
    if (differ || changed)
        fprintf(stderr, "%s dot_rows_heads %s nh %d dim %lld n %lld stride %lld: %d heads differ, %d gaps written\n",
                k->name, ms_type_traits(c->type)->name, nh, (long long)c->dim, (long long)c->n, (long long)c->stride,
                differ, changed);
    CU_ASSERT_EQUAL(differ, 0);
    CU_ASSERT_EQUAL(changed, 0);
}

/* axpy_rows_case's bound against double for every head, and twice it
 * against the same table's axpy_rows on that head alone (two orders). */
static void axpy_heads_case(const ms_kernels_t *k, const heads_case_t *c, int nh)
{
    static float out[MS_ROWS_HEADS_MAX * (HEADS_DIM_MAX + HEADS_PAD)], one[HEADS_DIM_MAX];
    int64_t ld = c->ldo_y, dim = c->dim;
    memcpy(out, c->y0, sizeof(float) * (size_t)(MS_ROWS_HEADS_MAX * ld));
    k->axpy_rows_heads(c->type, out, ld, c->w, c->ldw, nh, heads_rows(c), c->stride, c->n, dim);
    int bad = 0, changed = heads_gaps_changed(out, c->y0, ld, nh, dim);
    for (int h = 0; h < nh; h++) {
        const float *w = c->w + h * c->ldw, *y0 = c->y0 + h * ld, *o = out + h * ld;
        memcpy(one, y0, sizeof(float) * (size_t)dim);
        if (c->type == MS_TYPE_F16)
            k->axpy_rows_f16(one, w, c->h, c->stride, c->n, dim);
        else
            k->axpy_rows(one, w, c->f, c->stride, c->n, dim);
        if (c->n == 0)
            bad += memcmp(o, y0, sizeof(float) * (size_t)dim) != 0;
        for (int64_t i = 0; i < dim; i++) {
            double ref = y0[i], mag = fabs(y0[i]);
            for (int64_t j = 0; j < c->n; j++) {
                ref += (double)w[j] * c->f[j * c->stride + i];
                mag += fabs((double)w[j] * c->f[j * c->stride + i]);
            }
            double tol = (double)(c->n + 1) * FLT_EPSILON * mag;
            bad += !(fabs(o[i] - ref) <= tol && fabs(o[i] - one[i]) <= 2 * tol);
        }
    }
    if (bad || changed)
        fprintf(stderr, "%s axpy_rows_heads %s nh %d dim %lld n %lld stride %lld: %d values off, %d gaps written\n",
                k->name, ms_type_traits(c->type)->name, nh, (long long)dim, (long long)c->n, (long long)c->stride, bad,
                changed);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(changed, 0);
}

/* Copy of the first len values of src in an array of exactly that many. */
static void *heads_dup(const void *src, size_t len, size_t size)
{
    void *p = malloc(len * size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memcpy(p, src, len * size);
    return p;
}

/* Both kernels on copies of the case's arrays that end where the values the
 * kernels may touch do (q, w and out at (nh - 1) * ld + their length, the
 * rows at (n - 1) * stride + dim), for the address sanitizer to catch an
 * access past them (make asan); the results are the bits of the same calls
 * on the case's own arrays. */
static void bounds_heads_case(const ms_kernels_t *k, const heads_case_t *c, int nh)
{
    static float ref_s[MS_ROWS_HEADS_MAX * (HEADS_N_MAX + 2)], ref_y[MS_ROWS_HEADS_MAX * (HEADS_DIM_MAX + HEADS_PAD)];
    int64_t n = c->n, dim = c->dim;
    if (n == 0)
        return;
    size_t n_s = (size_t)((nh - 1) * c->ldo_s + n), n_y = (size_t)((nh - 1) * c->ldo_y + dim);
    size_t esize = c->type == MS_TYPE_F16 ? sizeof(uint16_t) : sizeof(float);
    float *q = heads_dup(c->q, (size_t)((nh - 1) * c->ldq + dim), sizeof(float));
    float *w = heads_dup(c->w, (size_t)((nh - 1) * c->ldw + n), sizeof(float));
    void *rows = heads_dup(heads_rows(c), (size_t)((n - 1) * c->stride + dim), esize);
    float *s = heads_dup(c->y0, n_s, sizeof(float)), *y = heads_dup(c->y0, n_y, sizeof(float));
    memcpy(ref_s, c->y0, sizeof(float) * n_s);
    memcpy(ref_y, c->y0, sizeof(float) * n_y);
    k->dot_rows_heads(c->type, q, c->ldq, nh, rows, c->stride, n, dim, s, c->ldo_s);
    k->dot_rows_heads(c->type, c->q, c->ldq, nh, heads_rows(c), c->stride, n, dim, ref_s, c->ldo_s);
    k->axpy_rows_heads(c->type, y, c->ldo_y, w, c->ldw, nh, rows, c->stride, n, dim);
    k->axpy_rows_heads(c->type, ref_y, c->ldo_y, c->w, c->ldw, nh, heads_rows(c), c->stride, n, dim);
    CU_ASSERT(memcmp(s, ref_s, sizeof(float) * n_s) == 0);
    CU_ASSERT(memcmp(y, ref_y, sizeof(float) * n_y) == 0);
    free(q);
    free(w);
    free(rows);
    free(s);
    free(y);
}

/* Each shape (f32 and f16 rows, packed and wider strides) with every table
 * and every head count. */
static void heads_shapes(void (*run)(const ms_kernels_t *, const heads_case_t *, int))
{
    const ms_type_t types[] = { MS_TYPE_F32, MS_TYPE_F16 };
    for (size_t t = 0; t < COUNT(types); t++)
        for (size_t d = 0; d < COUNT(heads_dim); d++)
            for (size_t r = 0; r < COUNT(heads_n); r++)
                for (int s = 0; s < 2; s++) {
                    heads_case_fill(&hc, types[t], heads_dim[d], heads_n[r], rows_stride(heads_dim[d], s));
                    for (int ti = 0; ti < n_tables; ti++)
                        for (int nh = 1; nh <= MS_ROWS_HEADS_MAX; nh++)
                            run(tables[ti], &hc, nh);
                }
}

static void test_dot_rows_heads(void)
{
    heads_shapes(dot_heads_case);
}

static void test_axpy_rows_heads(void)
{
    heads_shapes(axpy_heads_case);
}

static void test_rows_heads_bounds(void)
{
    heads_shapes(bounds_heads_case);
}

static void test_rmsnorm(void)
{
    enum { N = 4096 + 5 };
    static float x[N + 1], w[N], out[N + 1];
    for (int i = 0; i < N; i++) {
        x[i] = rnd_f(-4, 4);
        w[i] = rnd_f(0.5f, 1.5f);
    }
    for (int ti = 0; ti < n_tables; ti++)
        for (size_t s = 0; s < COUNT(vec_n); s++) {
            int64_t n = vec_n[s];
            double ss = 0;
            for (int64_t i = 0; i < n; i++)
                ss += (double)x[i] * x[i];
            double scale = 1.0 / sqrt(ss / (double)n + 1e-5);
            out[n] = 42.0f;
            tables[ti]->rmsnorm(out, x, w, n, 1e-5f);
            for (int64_t i = 0; i < n; i++)
                CU_ASSERT(fabs(out[i] - x[i] * scale * w[i]) <= 1e-5 * fabs(x[i] * scale * w[i]) + 1e-7);
            CU_ASSERT_EQUAL(out[n], 42.0f);
            tables[ti]->rmsnorm(out, x, NULL, n, 1e-5f);
            for (int64_t i = 0; i < n; i++)
                CU_ASSERT(fabs(out[i] - x[i] * scale) <= 1e-5 * fabs(x[i] * scale) + 1e-7);
        }
    /* in place */
    float v[3] = { 3, 4, 0 };
    for (int ti = 0; ti < n_tables; ti++) {
        float t[3];
        memcpy(t, v, sizeof(t));
        tables[ti]->rmsnorm(t, t, NULL, 3, 0.0f);
        double s = 1.0 / sqrt(25.0 / 3.0);
        CU_ASSERT(fabs(t[0] - 3 * s) < 1e-6 && fabs(t[1] - 4 * s) < 1e-6 && t[2] == 0);
    }
}

static void test_swiglu(void)
{
    enum { N = 4096 + 5 };
    static float g[N], u[N], out[N + 1];
    for (int i = 0; i < N; i++) {
        g[i] = rnd_f(-20, 20);
        u[i] = rnd_f(-2, 2);
    }
    g[0] = -100; /* exp(100) overflows: silu -> -0 */
    g[1] = 100;
    g[2] = 0;
    g[3] = -88;
    g[4] = 1e-20f;
    for (int ti = 0; ti < n_tables; ti++)
        for (size_t s = 0; s < COUNT(vec_n); s++) {
            int64_t n = vec_n[s];
            out[n] = 42.0f;
            tables[ti]->swiglu(out, g, u, n);
            for (int64_t i = 0; i < n; i++) {
                double ref = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
                CU_ASSERT(fabs(out[i] - ref) <= 2e-6 * fabs(ref) + 1e-30);
            }
            CU_ASSERT_EQUAL(out[n], 42.0f);
        }
}

static void test_softmax(void)
{
    enum { N = 4096 + 5 };
    static float x0[N], x[N + 1];
    for (int i = 0; i < N; i++)
        x0[i] = rnd_f(-30, 30);
    x0[3] = -INFINITY; /* a masked attention score */
    for (int ti = 0; ti < n_tables; ti++)
        for (size_t s = 0; s < COUNT(vec_n); s++) {
            int64_t n = vec_n[s];
            memcpy(x, x0, sizeof(x0));
            x[n] = 42.0f;
            tables[ti]->softmax(x, n);
            double mx = -INFINITY, sum = 0;
            for (int64_t i = 0; i < n; i++)
                mx = fmax(mx, x0[i]);
            /* x - max is rounded to float by any float softmax (at |x - max| ~ 60
             * that alone moves exp by 4e-6), so the reference starts from it */
            for (int64_t i = 0; i < n; i++)
                sum += exp((double)(x0[i] - (float)mx));
            for (int64_t i = 0; i < n; i++) {
                double ref = exp((double)(x0[i] - (float)mx)) / sum;
                if (!(fabs(x[i] - ref) <= 2e-6 * ref + 1e-37))
                    fprintf(stderr, "%s n %lld i %lld: %g vs %g\n", tables[ti]->name, (long long)n, (long long)i, x[i], ref);
                CU_ASSERT(fabs(x[i] - ref) <= 2e-6 * ref + 1e-37);
            }
            CU_ASSERT_EQUAL(x[n], 42.0f);
            if (n > 3)
                CU_ASSERT_EQUAL(x[3], 0.0f);
        }
}

/* ---- RoPE -------------------------------------------------------------- */

static void test_rope(void)
{
    /* head_dim 4, pos 1, base 10000: theta_0 = 1 rad, theta_1 = 10000^-0.5 = 0.01 rad */
    float x[4] = { 1, 2, 3, 4 };
    ms_rope(x, 1, 4, 4, 1, 10000.0f, MS_ROPE_NORM);
    const float norm[4] = { -1.1426396637f, 1.9220755965f, 2.9598506679f, 4.0297995017f };
    for (int i = 0; i < 4; i++)
        CU_ASSERT(fabsf(x[i] - norm[i]) < 1e-6f);
    float y[4] = { 1, 2, 3, 4 };
    ms_rope(y, 1, 4, 4, 1, 10000.0f, MS_ROPE_NEOX);
    const float neox[4] = { -1.9841106486f, 1.9599006675f, 2.4623779024f, 4.0197996683f };
    for (int i = 0; i < 4; i++)
        CU_ASSERT(fabsf(y[i] - neox[i]) < 1e-6f);

    /* pos 0 is the identity, bit for bit */
    float z[2 * 8], z0[2 * 8];
    for (int i = 0; i < 16; i++)
        z0[i] = rnd_f(-1, 1);
    for (int m = 0; m < MS_ROPE_COUNT; m++) {
        memcpy(z, z0, sizeof(z));
        ms_rope(z, 2, 8, 8, 0, 10000.0f, (ms_rope_mode_t)m);
        CU_ASSERT(memcmp(z, z0, sizeof(z)) == 0);
    }
    /* rot_dim 4 of head_dim 8, two heads: dims 4..7 untouched, both heads rotated */
    for (int m = 0; m < MS_ROPE_COUNT; m++) {
        float h[16] = { 1, 2, 3, 4, 9, 9, 9, 9, 1, 2, 3, 4, 8, 8, 8, 8 };
        ms_rope(h, 2, 8, 4, 1, 10000.0f, (ms_rope_mode_t)m);
        const float *want = m == MS_ROPE_NORM ? norm : neox;
        for (int hd = 0; hd < 2; hd++) {
            for (int i = 0; i < 4; i++)
                CU_ASSERT(fabsf(h[hd * 8 + i] - want[i]) < 1e-6f);
            for (int i = 4; i < 8; i++)
                CU_ASSERT_EQUAL(h[hd * 8 + i], hd ? 8.0f : 9.0f);
        }
    }
    /* a large position: the angle is exact in double (cos(2^17 rad) pairs) */
    float p[2] = { 1, 0 };
    ms_rope(p, 1, 2, 2, 131072, 10000.0f, MS_ROPE_NORM);
    CU_ASSERT(fabsf(p[0] - (float)cos(131072.0)) < 1e-6f && fabsf(p[1] - (float)sin(131072.0)) < 1e-6f);
    /* shapes it cannot rotate leave x alone */
    float q[4] = { 1, 2, 3, 4 };
    ms_rope(q, 1, 4, 3, 5, 10000.0f, MS_ROPE_NORM);
    ms_rope(q, 1, 4, 6, 5, 10000.0f, MS_ROPE_NEOX);
    ms_rope(q, 1, 4, 4, 5, 10000.0f, MS_ROPE_COUNT);
    ms_rope(q, 0, 4, 4, 5, 10000.0f, MS_ROPE_NORM);
    CU_ASSERT(q[0] == 1 && q[1] == 2 && q[2] == 3 && q[3] == 4);
}

/* ---- throughput (printed, not asserted) --------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Q8_0 matmul on a pool of 2 with ms_kernels_best(); GB/s counts weight
 * bytes once per call (decode), GFLOP/s counts 2 n_out n_in n_tok. */
static void bench_q8(ms_pool_t *pool, int64_t n_out, int64_t n_in, int64_t n_tok, bool r16)
{
    const ms_kernels_t *k = ms_kernels_best();
    /* several matrices so decode reads from DRAM, not the 32 MB L3 */
    enum { NMAT = 48 };
    size_t rb = ms_type_row_bytes(MS_TYPE_Q8_0, (uint64_t)n_in), wb = rb * (size_t)n_out;
    int nmat = (int)(NMAT * 1024 * 1024 / n_out / n_in);
    nmat = nmat < 2 ? 2 : nmat;
    char *w = q8_r16_alloc(wb * (size_t)nmat); /* a packed matrix starts on a cache line */
    for (size_t i = 0; i < wb * (size_t)nmat; i++)
        w[i] = (char)(rnd_u32() & 0x3f); /* scales stay small, finite */
    if (r16)
        CU_ASSERT_FATAL(ms_q8_r16_pack(w, nmat, n_out, n_in));
    float *x = malloc(sizeof(float) * (size_t)(n_in * n_tok)), *y = malloc(sizeof(float) * (size_t)(n_out * n_tok));
    for (int64_t i = 0; i < n_in * n_tok; i++)
        x[i] = rnd_f(-1, 1);
    void *xq = malloc(rb * (size_t)n_tok);
    ms_act_quantize_rows(pool, k, MS_TYPE_Q8_0, x, n_in, n_tok, n_in, xq);
    int iters = n_tok >= 32 ? 20 : 200;
    double t0 = now_s();
    for (int it = 0; it < iters; it++) {
        ms_mm_t job = { .type = MS_TYPE_Q8_0, .w = w + (size_t)(it % nmat) * wb, .n_out = n_out, .n_in = n_in,
                        .x = x, .ldx = n_in, .xq = xq, .n_tok = n_tok, .y = y, .ldy = n_out, .w_r16 = r16 };
        ms_matmul_multi(pool, k, &job, 1);
    }
    double dt = (now_s() - t0) / iters;
    printf("  q8_0%s %s %5lldx%lld n_tok %3lld: %7.1f us  %6.1f GB/s weights  %7.1f GFLOP/s\n", r16 ? " r16" : "    ", k->name,
           (long long)n_out, (long long)n_in, (long long)n_tok, dt * 1e6, (double)wb / dt * 1e-9,
           2.0 * n_out * n_in * n_tok / dt * 1e-9);
    free(w);
    free(x);
    free(y);
    free(xq);
}

/* The f32 helpers a decode step runs on one thread between its products, on
 * the bench model's sizes (a 1024-wide hidden state; SwiGLU and the
 * quantisation of the 4 chosen experts' 1024-wide rows; 256 attention
 * scores), on data in L1: ns per call, the best of 5 rounds, per table. */
static void bench_helpers(const ms_kernels_t *k)
{
    enum { N = 4096, ROUNDS = 5, ITERS = 2000 };
    static float a[N], b[N], o[N];
    static ms_block_q8_0_t q[N / MS_QK8_0];
    for (int i = 0; i < N; i++) {
        a[i] = rnd_f(-4, 4);
        b[i] = rnd_f(-1, 1);
    }
    double best[4] = { 1e9, 1e9, 1e9, 1e9 };
    for (int r = 0; r < ROUNDS; r++) {
        double t[5];
        t[0] = now_s();
        for (int it = 0; it < ITERS; it++)
            k->rmsnorm(o, a, b, 1024, 1e-5f);
        t[1] = now_s();
        for (int it = 0; it < ITERS; it++)
            k->swiglu(o, a, b, N);
        t[2] = now_s();
        for (int it = 0; it < ITERS; it++) {
            memcpy(o, a, 256 * sizeof(float));
            k->softmax(o, 256);
        }
        t[3] = now_s();
        for (int it = 0; it < ITERS; it++)
            k->quantize_act(MS_TYPE_Q8_0, a, N, q);
        t[4] = now_s();
        for (int j = 0; j < 4; j++)
            best[j] = fmin(best[j], (t[j + 1] - t[j]) / ITERS * 1e9);
    }
    printf("  %-6s rmsnorm 1024: %6.0f ns  swiglu 4096: %6.0f ns  softmax 256: %6.0f ns  quantize q8_0 4096: %6.0f ns\n",
           k->name, best[0], best[1], best[2], best[3]);
}

static void test_throughput_report(void)
{
    ms_pool_t *pool = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_pool_new(2, &pool), 0);
    printf("\n");
    const int64_t toks[] = { 1, 4, 32, 128 };
    for (int r16 = 0; r16 < 2; r16++)
        for (int m = 0; m < 2; m++)
            for (size_t i = 0; i < COUNT(toks); i++)
                bench_q8(pool, m ? 4096 : 1024, 1024, toks[i], r16);
    ms_pool_destroy(&pool);
    load_tables();
    for (int i = 0; i < n_tables; i++)
        bench_helpers(tables[i]);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("kernels", NULL, NULL);
    if (!s)
        return 1;
    if (!CU_add_test(s, "f32 to f16 rounding", test_f32_to_f16) ||
        !CU_add_test(s, "f16 to f32 values", test_f16_to_f32) ||
        !CU_add_test(s, "bf16 conversions", test_bf16) ||
        !CU_add_test(s, "dispatch", test_dispatch) ||
        !CU_add_test(s, "act row bytes", test_act_row_bytes) ||
        !CU_add_test(s, "dequant hand values", test_dequant_hand) ||
        !CU_add_test(s, "quantize act", test_quantize_act) ||
        !CU_add_test(s, "matmul all shapes and types", test_matmul_shapes) ||
        !CU_add_test(s, "matmul q8 extremes", test_matmul_q8_extremes) ||
        !CU_add_test(s, "matmul: a token's result independent of its batch", test_matmul_batch_invariant) ||
        !CU_add_test(s, "matmul invalid jobs", test_matmul_invalid) ||
        !CU_add_test(s, "matmul multi on pools", test_matmul_multi) ||
        !CU_add_test(s, "q8_0 16-row layout: pack puts every value where the layout says", test_q8_r16_pack) ||
        !CU_add_test(s, "q8_0 16-row layout: the same bits on every table", test_q8_r16_isas) ||
        !CU_add_test(s, "q8_0 16-row layout against the row layout", test_q8_r16_vs_rows) ||
        !CU_add_test(s, "dot and axpy", test_dot_axpy) ||
        !CU_add_test(s, "dot_rows against double", test_dot_rows) ||
        !CU_add_test(s, "axpy_rows against double", test_axpy_rows) ||
        !CU_add_test(s, "dot_rows and axpy_rows hand values", test_rows_hand) ||
        !CU_add_test(s, "dot_rows_f16 against double and dot_rows", test_dot_rows_f16) ||
        !CU_add_test(s, "axpy_rows_f16 against double and axpy_rows", test_axpy_rows_f16) ||
        !CU_add_test(s, "dot_rows_f16 and axpy_rows_f16 hand values", test_rows_f16_hand) ||
        !CU_add_test(s, "dot_rows_heads: each head dot_rows' bits", test_dot_rows_heads) ||
        !CU_add_test(s, "axpy_rows_heads against double and axpy_rows", test_axpy_rows_heads) ||
        !CU_add_test(s, "dot_rows_heads and axpy_rows_heads inside their arrays", test_rows_heads_bounds) ||
        !CU_add_test(s, "rmsnorm", test_rmsnorm) ||
        !CU_add_test(s, "swiglu", test_swiglu) ||
        !CU_add_test(s, "softmax", test_softmax) ||
        !CU_add_test(s, "rope", test_rope) ||
        !CU_add_test(s, "q8_0 throughput (report only)", test_throughput_report))
        return 1;
    return 0;
}

#include "cu_main.h"
