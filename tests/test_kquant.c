/* Q4_0 and k-quant tests: hand-built blocks against values computed by hand,
 * every kernel table against a double-precision reference and against the
 * scalar table (bit for bit where a kernel is exact), batch invariance, the
 * Q8_K activation bytes, quantiser round trips and the refusal of rows that
 * are not whole blocks. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint32_t rnd_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static float rnd_f(float lo, float hi)
{
    return lo + (hi - lo) * (float)(rnd_u32() & 0xffffff) / 16777216.0f;
}

static const ms_type_t kq_types[] = { MS_TYPE_Q4_0, MS_TYPE_Q2_K, MS_TYPE_Q3_K,
                                      MS_TYPE_Q4_K, MS_TYPE_Q5_K, MS_TYPE_Q6_K };

static const ms_kernels_t *tables[MS_ISA_COUNT];
static int n_tables;

static int suite_init(void)
{
    for (int i = 0; i < MS_ISA_COUNT; i++)
        if (ms_kernels_for((ms_isa_t)i))
            tables[n_tables++] = ms_kernels_for((ms_isa_t)i);
    return 0;
}

/* ---- sizes ------------------------------------------------------------------ */

static void test_row_bytes(void)
{
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q4_0, 64), 36);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q2_K, 512), 168);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q3_K, 256), 110);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q4_K, 4096), 16 * 144);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q5_K, 256), 176);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q6_K, 768), 630);
    /* a row that is not whole super-blocks is refused */
    static const uint64_t bad[] = { 1, 32, 128, 255, 257, 4096 + 32 };
    for (size_t t = 1; t < COUNT(kq_types); t++)
        for (size_t i = 0; i < COUNT(bad); i++)
            CU_ASSERT_EQUAL(ms_type_row_bytes(kq_types[t], bad[i]), 0);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q4_0, 48), 0);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q4_K, 0), 0);
    for (size_t t = 0; t < COUNT(kq_types); t++)
        CU_ASSERT(ms_type_traits(kq_types[t])->computable);
    /* activations: Q8_0 rows for Q4_0, Q8_K (292 bytes per 256) for the k-quants */
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q4_0, 64), 68);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q4_K, 4096), 16 * 292);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q6_K, 256), 292);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q2_K, 300), 0);
    CU_ASSERT_EQUAL(ms_act_row_bytes(MS_TYPE_Q3_K, -256), 0);
}

/* ---- hand-built blocks ---------------------------------------------------------
 * Scales 0x3800 = 0.5 and 0x3400 = 0.25; each expected value is worked out
 * from ggml's layout in the comment next to it. */

static void expect_values(ms_type_t type, const void *blk, int n, const int *idx, const float *want, int n_idx)
{
    float out[256];
    for (int ti = 0; ti < n_tables; ti++) {
        tables[ti]->dequant_row(type, blk, out, n);
        for (int i = 0; i < n_idx; i++) {
            if (out[idx[i]] != want[i])
                fprintf(stderr, "%s type %d element %d: %g, want %g\n", tables[ti]->name, (int)type, idx[i],
                        out[idx[i]], want[i]);
            CU_ASSERT_EQUAL(out[idx[i]], want[i]);
        }
    }
}

/* Scale bytes shared by the Q4_K and Q5_K blocks:
 *   sub 0: sc = 1 & 63 = 1, m = s[4] & 63 = 5;   sub 1: sc = 2, m = 6
 *   sub 3: sc = 0x7f & 63 = 63, m = 0xc8 & 63 = 8
 *   sub 7: sc = (s[11] & 15) | (s[3] >> 6) << 4 = 7 | 16 = 23,
 *          m = (s[11] >> 4) | (s[7] >> 6) << 4 = 8 | 48 = 56 */
static const uint8_t k4_scales[12] = { 1, 2, 3, 0x7f, 5, 6, 7, 0xc8, 0x21, 0x43, 0x65, 0x87 };

static void test_dequant_hand(void)
{
    ms_block_q4_K_t q4;
    memset(&q4, 0, sizeof(q4));
    q4.d = 0x3800;
    q4.dmin = 0x3400;
    memcpy(q4.scales, k4_scales, 12);
    q4.qs[0] = 0x9a;  /* element 0: low nibble 10 (sub 0); element 32: high nibble 9 (sub 1) */
    q4.qs[37] = 0xf0; /* element 101 = sub 3 (high nibbles of bytes 32-63), byte 37: 15 */
    q4.qs[127] = 0x30; /* element 255 = sub 7, high nibble 3 */
    /* 0.5*1*10 - 0.25*5, 0.5*2*9 - 0.25*6, 0.5*63*15 - 0.25*8, 0.5*23*3 - 0.25*56, 0.5*23*0 - 0.25*56 */
    expect_values(MS_TYPE_Q4_K, &q4, 256, (int[]){ 0, 32, 101, 255, 254 }, (float[]){ 3.75f, 7.5f, 470.5f, 20.5f, -14 }, 5);

    ms_block_q5_K_t q5;
    memset(&q5, 0, sizeof(q5));
    q5.d = 0x3800;
    q5.dmin = 0x3400;
    memcpy(q5.scales, k4_scales, 12);
    q5.qs[0] = 0x0a;
    q5.qs[127] = 0x30;
    q5.qh[0] = 0x81;  /* element 0: fifth bit (bit 0) set; element 224 (sub 7): bit 7 set */
    q5.qh[31] = 0x80; /* element 255: bit 7 */
    /* 0.5*1*26 - 1.25, 0.5*23*19 - 14, 0.5*23*16 - 14 */
    expect_values(MS_TYPE_Q5_K, &q5, 256, (int[]){ 0, 255, 224 }, (float[]){ 11.75f, 204.5f, 170 }, 3);

    ms_block_q6_K_t q6;
    memset(&q6, 0, sizeof(q6));
    q6.d = 0x3800;
    q6.scales[0] = 2;
    q6.scales[4] = 4;
    q6.scales[5] = -3;
    q6.scales[6] = -1;
    q6.scales[15] = 127;
    q6.ql[0] = 0x4f;  /* element 0 low nibble 15; element 64 high nibble 4 */
    q6.qh[0] = 0xe6;  /* bits 0-1 = 2 (element 0), 4-5 = 2 (element 64), 6-7 = 3 (element 96) */
    q6.ql[16] = 0x70; /* element 80: high nibble 7 */
    q6.qh[16] = 0x10; /* element 80: bits 4-5 = 1 */
    /* (47-32)*2*0.5, (36-32)*4*0.5, (48-32)*-1*0.5, (23-32)*-3*0.5, (0-32)*127*0.5 */
    expect_values(MS_TYPE_Q6_K, &q6, 256, (int[]){ 0, 64, 96, 80, 255 }, (float[]){ 15, 8, -8, 13.5f, -2032 }, 5);

    ms_block_q3_K_t q3;
    memset(&q3, 0, sizeof(q3));
    q3.d = 0x3800;
    q3.scales[0] = 0x5a; /* scale 0 low 10, scale 8 low 5 */
    q3.scales[4] = 0x3f; /* scale 4 low 15, scale 12 low 3 */
    q3.scales[8] = 0xe4; /* high bits: scale 0 -> 0, 4 -> 1, 8 -> 2, 12 -> 3 */
    /* scales: 10-32 = -22, 31-32 = -1, 37-32 = 5, 51-32 = 19 */
    q3.qs[0] = 0x03;    /* element 0: low bits 3; element 64 (bits 4-5): 0 */
    q3.hmask[0] = 0x11; /* element 0 (bit 0) and element 128 (bit 4) have the high bit */
    q3.qs[32] = 0x01;   /* element 128: low bits 1 */
    q3.qs[40] = 0x20;   /* element 200 (half 1, group 2, l 8): bits 4-5 = 2, no high bit */
    /* (7-4)*-22*0.5, (0-4)*-1*0.5, (5-4)*5*0.5, (2-4)*19*0.5 */
    expect_values(MS_TYPE_Q3_K, &q3, 256, (int[]){ 0, 64, 128, 200 }, (float[]){ -33, 2, 2.5f, -19 }, 4);

    ms_block_q2_K_t q2;
    memset(&q2, 0, sizeof(q2));
    q2.d = 0x3800;
    q2.dmin = 0x3400;
    q2.scales[0] = 0x3a;  /* scale 10, min 3 */
    q2.scales[15] = 0xf1; /* scale 1, min 15 */
    q2.qs[0] = 0x02;      /* element 0: 2 */
    q2.qs[63] = 0xc0;     /* element 255 (half 1, group 3, l 31): bits 6-7 = 3 */
    /* 0.5*10*2 - 0.25*3, 0.5*1*3 - 0.25*15, element 1: 0 - 0.75 */
    expect_values(MS_TYPE_Q2_K, &q2, 256, (int[]){ 0, 255, 1 }, (float[]){ 9.25f, -2.25f, -0.75f }, 3);

    ms_block_q4_0_t q40[2];
    memset(q40, 0, sizeof(q40));
    q40[0].d = 0x3800;
    q40[0].qs[0] = 0x1f;  /* element 0: 15-8; element 16: 1-8 */
    q40[0].qs[15] = 0x80; /* element 15: 0-8; element 31: 8-8 */
    q40[1].d = 0xbc00;    /* -1 */
    q40[1].qs[3] = 0x09;  /* element 35: (9-8) * -1 */
    expect_values(MS_TYPE_Q4_0, q40, 64, (int[]){ 0, 16, 15, 31, 35, 36 }, (float[]){ 3.5f, -3.5f, -4, 0, -1, 8 }, 6);
}

/* ---- random weight rows ---------------------------------------------------- */

/* Random bytes everywhere (every quant and scale bit pattern), then small
 * finite f16 scales so products stay far from overflow. */
static void fill_row(ms_type_t type, void *row, int64_t n)
{
    size_t bytes = ms_type_row_bytes(type, (uint64_t)n);
    for (size_t i = 0; i < bytes; i++)
        ((uint8_t *)row)[i] = (uint8_t)rnd_u32();
    int64_t nb = (int64_t)(bytes / ms_type_traits(type)->block_bytes);
    for (int64_t b = 0; b < nb; b++) {
        uint16_t d = ms_f32_to_f16(rnd_f(-0.01f, 0.01f)), dmin = ms_f32_to_f16(rnd_f(0, 0.01f));
        switch (type) {
        case MS_TYPE_Q4_0: ((ms_block_q4_0_t *)row)[b].d = d; break;
        case MS_TYPE_Q2_K: ((ms_block_q2_K_t *)row)[b].d = d; ((ms_block_q2_K_t *)row)[b].dmin = dmin; break;
        case MS_TYPE_Q3_K: ((ms_block_q3_K_t *)row)[b].d = d; break;
        case MS_TYPE_Q4_K: ((ms_block_q4_K_t *)row)[b].d = d; ((ms_block_q4_K_t *)row)[b].dmin = dmin; break;
        case MS_TYPE_Q5_K: ((ms_block_q5_K_t *)row)[b].d = d; ((ms_block_q5_K_t *)row)[b].dmin = dmin; break;
        case MS_TYPE_Q6_K: ((ms_block_q6_K_t *)row)[b].d = d; break;
        default: break;
        }
    }
}

/* The same row with every quant bit cleared: what dequantises is the
 * constant part of each value (-dmin*m, or -offset*d*sc), which bounds the
 * cancellation inside the integer dot products. */
static void zero_quants(ms_type_t type, void *row, int64_t n)
{
    int64_t nb = (int64_t)(ms_type_row_bytes(type, (uint64_t)n) / ms_type_traits(type)->block_bytes);
    for (int64_t b = 0; b < nb; b++) {
        switch (type) {
        case MS_TYPE_Q4_0: memset(((ms_block_q4_0_t *)row)[b].qs, 0, 16); break;
        case MS_TYPE_Q2_K: memset(((ms_block_q2_K_t *)row)[b].qs, 0, 64); break;
        case MS_TYPE_Q3_K:
            memset(((ms_block_q3_K_t *)row)[b].qs, 0, 64);
            memset(((ms_block_q3_K_t *)row)[b].hmask, 0, 32);
            break;
        case MS_TYPE_Q4_K: memset(((ms_block_q4_K_t *)row)[b].qs, 0, 128); break;
        case MS_TYPE_Q5_K:
            memset(((ms_block_q5_K_t *)row)[b].qs, 0, 128);
            memset(((ms_block_q5_K_t *)row)[b].qh, 0, 32);
            break;
        case MS_TYPE_Q6_K:
            memset(((ms_block_q6_K_t *)row)[b].ql, 0, 128);
            memset(((ms_block_q6_K_t *)row)[b].qh, 0, 64);
            break;
        default: break;
        }
    }
}

/* Values of one quantised activation row (Q8_0 for Q4_0, Q8_K otherwise). */
static void act_values(ms_type_t type, const void *xq, int64_t n, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        if (type == MS_TYPE_Q4_0) {
            const ms_block_q8_0_t *b = (const ms_block_q8_0_t *)xq + i / 32;
            out[i] = (double)ms_f16_to_f32(b->d) * b->qs[i % 32];
        } else {
            const ms_block_q8_K_t *b = (const ms_block_q8_K_t *)xq + i / 256;
            out[i] = (double)b->d * b->qs[i % 256];
        }
    }
}

typedef struct {
    ms_type_t type;
    int64_t n_out, n_in, n_tok, ldx, ldy;
    size_t wrow, xrow;
    void *w, *xq;
    float *x, *y, *wd, *wz; /* wd: dequantised weights, wz: their constant parts */
} kcase_t;

static void kcase_new(kcase_t *c, ms_type_t type, int64_t n_out, int64_t n_in, int64_t n_tok)
{
    *c = (kcase_t){ .type = type, .n_out = n_out, .n_in = n_in, .n_tok = n_tok, .ldx = n_in + 3, .ldy = n_out + 1 };
    c->wrow = ms_type_row_bytes(type, (uint64_t)n_in);
    c->xrow = ms_act_row_bytes(type, n_in);
    c->w = malloc(c->wrow * (size_t)n_out);
    c->wd = malloc(sizeof(float) * (size_t)(n_out * n_in));
    c->wz = malloc(sizeof(float) * (size_t)(n_out * n_in));
    void *tmp = malloc(c->wrow);
    for (int64_t r = 0; r < n_out; r++) {
        char *row = (char *)c->w + (size_t)r * c->wrow;
        fill_row(type, row, n_in);
        tables[0]->dequant_row(type, row, c->wd + r * n_in, n_in);
        memcpy(tmp, row, c->wrow);
        zero_quants(type, tmp, n_in);
        tables[0]->dequant_row(type, tmp, c->wz + r * n_in, n_in);
    }
    free(tmp);
    c->x = malloc(sizeof(float) * (size_t)(c->ldx * n_tok));
    for (int64_t i = 0; i < c->ldx * n_tok; i++)
        c->x[i] = rnd_f(-2, 2);
    c->xq = malloc(c->xrow * (size_t)n_tok);
    ms_act_quantize_rows(NULL, tables[0], type, c->x, c->ldx, n_tok, n_in, c->xq);
    c->y = malloc(sizeof(float) * (size_t)(c->ldy * n_tok));
}

static void kcase_free(kcase_t *c)
{
    free(c->w);
    free(c->wd);
    free(c->wz);
    free(c->x);
    free(c->xq);
    free(c->y);
}

static void kcase_run(const ms_kernels_t *k, kcase_t *c, float *y)
{
    ms_mm_t job = { .type = c->type, .w = c->w, .n_out = c->n_out, .n_in = c->n_in, .x = c->x, .ldx = c->ldx,
                    .xq = c->xq, .n_tok = c->n_tok, .y = y, .ldy = c->ldy };
    k->matmul(&job, 0, c->n_out);
}

/* Exact product of the dequantised row and the quantised activation (double),
 * its magnitude (with the constant parts), and the bound on the distance to
 * the f32 activation: each activation value is within half its block's step. */
static void kcase_ref(const kcase_t *c, int64_t t, int64_t r, double *ret_v, double *ret_mag, double *ret_qerr)
{
    double *xv = malloc(sizeof(double) * (size_t)c->n_in);
    act_values(c->type, (const char *)c->xq + (size_t)t * c->xrow, c->n_in, xv);
    int blk = c->type == MS_TYPE_Q4_0 ? 32 : 256;
    double v = 0, mag = 0, qerr = 0;
    for (int64_t i = 0; i < c->n_in; i++) {
        double w = c->wd[r * c->n_in + i];
        v += w * xv[i];
        mag += fabs(xv[i]) * (fabs(w) + fabs((double)c->wz[r * c->n_in + i]));
        const char *xb = (const char *)c->xq + (size_t)t * c->xrow;
        double step = c->type == MS_TYPE_Q4_0 ? ms_f16_to_f32(((const ms_block_q8_0_t *)xb)[i / blk].d)
                                              : ((const ms_block_q8_K_t *)xb)[i / blk].d;
        /* half a step, plus (Q8_0) the f16 rounding of the scale: 2^-11 of |x| */
        qerr += fabs(w) * (0.5 * step + (c->type == MS_TYPE_Q4_0 ? fabs(xv[i]) / 2048.0 : 0.0));
    }
    free(xv);
    *ret_v = v;
    *ret_mag = mag;
    *ret_qerr = qerr;
}

static void check_case(kcase_t *c)
{
    size_t ybytes = sizeof(float) * (size_t)(c->ldy * c->n_tok);
    float *ys = malloc(ybytes);
    kcase_run(tables[0], c, ys);
    int bad = 0;
    for (int64_t t = 0; t < c->n_tok; t++)
        for (int64_t r = 0; r < c->n_out; r++) {
            double v, mag, qerr, f32 = 0;
            kcase_ref(c, t, r, &v, &mag, &qerr);
            float got = ys[t * c->ldy + r];
            bad += !(fabs(got - v) <= 1e-5 * mag + 1e-30);
            /* against the f32 activation: the activation rounding bound */
            for (int64_t i = 0; i < c->n_in; i++)
                f32 += (double)c->wd[r * c->n_in + i] * c->x[t * c->ldx + i];
            bad += !(fabs(got - f32) <= qerr + 1e-5 * mag + 1e-30);
            for (int ti = 1; ti < n_tables; ti++) {
                kcase_run(tables[ti], c, c->y);
                bad += !(fabs(c->y[t * c->ldy + r] - got) <= 1e-5 * mag + 1e-30);
            }
        }
    if (bad)
        fprintf(stderr, "type %d n_in %lld n_out %lld n_tok %lld: %d mismatches\n", (int)c->type,
                (long long)c->n_in, (long long)c->n_out, (long long)c->n_tok, bad);
    CU_ASSERT_EQUAL(bad, 0);
    free(ys);
}

static void test_matmul_shapes(void)
{
    static const int64_t n_ins[] = { 256, 768, 4096 + 256 };
    static const int64_t n_outs[] = { 1, 3, 17 };
    static const int64_t n_toks[] = { 1, 2, 5 };
    for (size_t ty = 0; ty < COUNT(kq_types); ty++)
        for (size_t a = 0; a < COUNT(n_ins); a++)
            for (size_t b = 0; b < COUNT(n_outs); b++)
                for (size_t tt = 0; tt < COUNT(n_toks); tt++) {
                    kcase_t c;
                    kcase_new(&c, kq_types[ty], n_outs[b], n_ins[a], n_toks[tt]);
                    check_case(&c);
                    kcase_free(&c);
                }
    /* Q4_0 rows of an odd number of 32-value blocks */
    kcase_t c;
    kcase_new(&c, MS_TYPE_Q4_0, 7, 32 * 7, 3);
    check_case(&c);
    kcase_free(&c);
}

/* A token's result does not depend on the rest of its batch, bit for bit. */
static void test_batch_invariant(void)
{
    static const int64_t n_toks[] = { 2, 3, 5, 9 };
    for (int ti = 0; ti < n_tables; ti++)
        for (size_t ty = 0; ty < COUNT(kq_types); ty++)
            for (size_t b = 0; b < COUNT(n_toks); b++) {
                kcase_t c;
                kcase_new(&c, kq_types[ty], 19, 512, n_toks[b]);
                kcase_run(tables[ti], &c, c.y);
                int bad = 0;
                float solo[19];
                for (int64_t t = 0; t < c.n_tok; t++) {
                    ms_mm_t one = { .type = c.type, .w = c.w, .n_out = c.n_out, .n_in = c.n_in,
                                    .x = c.x + t * c.ldx, .ldx = c.ldx,
                                    .xq = (const char *)c.xq + (size_t)t * c.xrow, .n_tok = 1, .y = solo,
                                    .ldy = c.ldy };
                    tables[ti]->matmul(&one, 0, c.n_out);
                    bad += memcmp(solo, c.y + t * c.ldy, sizeof(solo)) != 0;
                }
                CU_ASSERT_EQUAL(bad, 0);
                kcase_free(&c);
            }
}

/* Where a SIMD kernel reduces each block to exact integers and takes the
 * scalar float step in order (AVX-512: Q4_0, Q2_K, Q3_K, Q5_K), its results
 * equal the scalar table's bit for bit. Activations of +-127 only (every
 * value at its block's amax) push the int16 pair sums to their largest. */
static void test_exact_as_scalar(void)
{
    static const ms_type_t exact[] = { MS_TYPE_Q4_0, MS_TYPE_Q2_K, MS_TYPE_Q3_K, MS_TYPE_Q5_K };
    static const int64_t n_ins[] = { 256, 768, 4096 + 256 };
    /* Q4_0: 7, 8, 9 and 17 blocks reach the 8-block path, its tail and both */
    static const int64_t q4_0_ins[] = { 32 * 7, 32 * 8, 32 * 9, 32 * 17 };
    const ms_kernels_t *k = ms_kernels_for(MS_ISA_AVX512);
    if (!k)
        return;
    for (size_t ty = 0; ty < COUNT(exact); ty++)
        for (size_t a = 0; a < 4; a++) {
            int64_t n_in = exact[ty] == MS_TYPE_Q4_0 ? q4_0_ins[a] : a < COUNT(n_ins) ? n_ins[a] : 512;
            for (int extreme = 0; extreme < 2; extreme++) {
                kcase_t c;
                kcase_new(&c, exact[ty], 7, n_in, 3);
                if (extreme) {
                    for (int64_t i = 0; i < c.ldx * c.n_tok; i++)
                        c.x[i] = rnd_u32() & 1 ? 2.0f : -2.0f;
                    ms_act_quantize_rows(NULL, tables[0], c.type, c.x, c.ldx, c.n_tok, n_in, c.xq);
                }
                size_t ybytes = sizeof(float) * (size_t)(c.ldy * c.n_tok);
                float *ys = calloc(1, ybytes);
                memset(c.y, 0, ybytes);
                kcase_run(ms_kernels_for(MS_ISA_SCALAR), &c, ys);
                kcase_run(k, &c, c.y);
                int bad = 0;
                for (int64_t t = 0; t < c.n_tok; t++)
                    bad += memcmp(ys + t * c.ldy, c.y + t * c.ldy, sizeof(float) * (size_t)c.n_out) != 0;
                if (bad)
                    fprintf(stderr, "%s n_in %lld extreme %d: %d tokens differ from scalar\n",
                            ms_type_traits(c.type)->name, (long long)n_in, extreme, bad);
                CU_ASSERT_EQUAL(bad, 0);
                free(ys);
                kcase_free(&c);
            }
        }
}

/* ---- Q8_K activations ---------------------------------------------------------- */

static int8_t round_half_away(double v)
{
    double r = v < 0 ? -floor(-v + 0.5) : floor(v + 0.5);
    return (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
}

static void test_quantize_q8_K(void)
{
    enum { N = 1024 };
    static float x[N];
    for (int i = 0; i < N; i++)
        x[i] = rnd_f(-3, 3);
    memset(x + 256, 0, 256 * sizeof(float)); /* an all-zero block: d = 0 */
    x[512] = 127;                            /* d = 1 exactly: halves round away from zero */
    for (int i = 513; i < 768; i++)
        x[i] = (i % 2 ? 1 : -1) * (0.5f + (float)(i % 7));
    ms_block_q8_K_t ref[N / 256], q[N / 256];
    for (int b = 0; b < N / 256; b++) {
        float amax = 0;
        for (int j = 0; j < 256; j++)
            amax = fmaxf(amax, fabsf(x[b * 256 + j]));
        float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        ref[b].d = d;
        for (int j = 0; j < 256; j++)
            ref[b].qs[j] = round_half_away((double)(x[b * 256 + j] * id));
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++)
                s += ref[b].qs[16 * g + j];
            ref[b].bsums[g] = (int16_t)s;
        }
    }
    CU_ASSERT_EQUAL(ref[2].d, 1.0f);
    CU_ASSERT_EQUAL(ref[2].qs[1], 3);  /* x[513] = +(0.5 + 513 % 7) = 2.5 rounds away to 3 */
    CU_ASSERT_EQUAL(ref[2].qs[2], -4); /* x[514] = -(0.5 + 3) = -3.5 rounds away to -4 */
    for (int ti = 0; ti < n_tables; ti++) {
        memset(q, 0x55, sizeof(q));
        tables[ti]->quantize_act(MS_TYPE_Q4_K, x, N, q);
        CU_ASSERT(memcmp(q, ref, sizeof(q)) == 0);
        /* Q4_0 weights read Q8_0 activations */
        ms_block_q8_0_t a[N / 32], b[N / 32];
        tables[ti]->quantize_act(MS_TYPE_Q4_0, x, N, a);
        tables[ti]->quantize_act(MS_TYPE_Q8_0, x, N, b);
        CU_ASSERT(memcmp(a, b, sizeof(a)) == 0);
    }
}

/* ---- quantisers ------------------------------------------------------------------ */

/* Relative RMS error bounds of round to nearest on uniform [-1, 1) values
 * (signal RMS 1/sqrt(3)): a step s gives noise RMS s/sqrt(12). Steps with the
 * block extremes near +-0.95: Q4_0 0.95/8, Q2_K 1.9/3 (16 values), Q3_K
 * 0.95/4, Q4_K 1.9/15 (32 values), Q5_K 1.9/31, Q6_K 0.95/32; the bound is
 * 1.3 times that (scales rounded to 4-8 bits add error on top). */
static double rms_bound(ms_type_t type)
{
    double step;
    switch (type) {
    case MS_TYPE_Q4_0: step = 0.95 / 8; break;
    case MS_TYPE_Q2_K: step = 1.9 / 3; break;
    case MS_TYPE_Q3_K: step = 0.95 / 4; break;
    case MS_TYPE_Q4_K: step = 1.9 / 15; break;
    case MS_TYPE_Q5_K: step = 1.9 / 31; break;
    default: step = 0.95 / 32; break;
    }
    return 1.3 * (step / sqrt(12.0)) * sqrt(3.0);
}

static void test_quantize_round_trip(void)
{
    enum { N = 8192 };
    static float x[N], y[N];
    static uint8_t buf[N * 2];
    for (int i = 0; i < N; i++)
        x[i] = rnd_f(-1, 1);
    for (size_t ty = 0; ty < COUNT(kq_types); ty++) {
        ms_type_t t = kq_types[ty];
        CU_ASSERT_EQUAL_FATAL(ms_quantize_row(t, x, N, buf), ms_type_row_bytes(t, N));
        tables[0]->dequant_row(t, buf, y, N);
        double se = 0, sx = 0, emax = 0;
        for (int i = 0; i < N; i++) {
            se += (double)(y[i] - x[i]) * (y[i] - x[i]);
            sx += (double)x[i] * x[i];
            emax = fmax(emax, fabs(y[i] - x[i]));
        }
        double rel = sqrt(se / sx);
        printf("\n  %s round trip: relative RMS error %.4f (bound %.4f), max %.4f", ms_type_traits(t)->name, rel,
               rms_bound(t), emax);
        CU_ASSERT(rel <= rms_bound(t));
        CU_ASSERT(rel >= 0.2 * rms_bound(t)); /* a quantiser that stored floats would be a bug too */
        /* zeros stay exactly zero */
        static const float zeros[256];
        CU_ASSERT_EQUAL(ms_quantize_row(t, zeros, 256, buf), ms_type_row_bytes(t, 256));
        tables[0]->dequant_row(t, buf, y, 256);
        for (int i = 0; i < 256; i++)
            CU_ASSERT_EQUAL(y[i], 0.0f);
        /* refused: not whole blocks, empty */
        CU_ASSERT_EQUAL(ms_quantize_row(t, x, 16, buf), 0);
        CU_ASSERT_EQUAL(ms_quantize_row(t, x, 0, buf), 0);
    }
    printf("\n");
    CU_ASSERT_EQUAL(ms_quantize_row(MS_TYPE_IQ2_XXS, x, 256, buf), 0);
    CU_ASSERT_EQUAL(ms_quantize_row(MS_TYPE_Q8_K, x, 256, buf), 0);
    CU_ASSERT_EQUAL(ms_quantize_row(MS_TYPE_Q8_0, x, 64, buf), 68);
    CU_ASSERT_EQUAL(ms_quantize_row(MS_TYPE_F16, x, 3, buf), 6);
}

/* ---- jobs the kernels cannot compute ----------------------------------------------- */

static void test_invalid(void)
{
    static uint8_t w[2 * 144], xq[2 * 292];
    float x[512] = { 0 }, y[2];
    for (int ti = 0; ti < n_tables; ti++) {
        ms_mm_t job = { .type = MS_TYPE_Q4_K, .w = w, .n_out = 2, .n_in = 256, .x = x, .ldx = 256,
                        .xq = NULL, .n_tok = 1, .y = y, .ldy = 2 };
        y[0] = y[1] = 0;
        tables[ti]->matmul(&job, 0, 2); /* no activation row */
        CU_ASSERT(isnan(y[0]) && isnan(y[1]));
        job.xq = xq;
        job.n_in = 200; /* not whole super-blocks */
        y[0] = y[1] = 0;
        tables[ti]->matmul(&job, 0, 2);
        CU_ASSERT(isnan(y[0]) && isnan(y[1]));
        float out[300];
        tables[ti]->dequant_row(MS_TYPE_Q6_K, w, out, 300); /* the partial block has no values */
        CU_ASSERT(!isnan(out[255]) && isnan(out[256]) && isnan(out[299]));
    }
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("kquant", suite_init, NULL);
    if (!s)
        return 1;
    if (!CU_add_test(s, "row bytes and refusals", test_row_bytes) ||
        !CU_add_test(s, "dequant hand-built blocks", test_dequant_hand) ||
        !CU_add_test(s, "matmul against double and scalar", test_matmul_shapes) ||
        !CU_add_test(s, "matmul: a token's result independent of its batch", test_batch_invariant) ||
        !CU_add_test(s, "matmul: exact kernels equal scalar bit for bit", test_exact_as_scalar) ||
        !CU_add_test(s, "Q8_K activation bytes", test_quantize_q8_K) ||
        !CU_add_test(s, "quantise/dequantise round trip", test_quantize_round_trip) ||
        !CU_add_test(s, "jobs that cannot be computed", test_invalid))
        return 1;
    return 0;
}

#include "cu_main.h"
