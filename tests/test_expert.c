/* Grouped expert FFN (common/expert.c) against a per-token, per-expert
 * computation in double precision written out in this file. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expert.h"
#include "kernels.h"
#include "pool.h"
#include "types.h"

#define D 64
#define F 96
#define E 6

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

typedef struct {
    float gate[E][F][D], up[E][F][D], down[E][D][F];
    ms_block_q8_0_t qgate[E][F][D / 32], qup[E][F][D / 32], qdown[E][D][F / 32];
} weights_t;

static void quantize_q8(const float *x, int n, ms_block_q8_0_t *out)
{
    for (int b = 0; b < n / 32; b++) {
        float amax = 0;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[b * 32 + i]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        out[b].d = ms_f32_to_f16(d);
        for (int i = 0; i < 32; i++)
            out[b].qs[i] = (int8_t)roundf(x[b * 32 + i] * id);
    }
}

static weights_t *make_weights(void)
{
    weights_t *w = malloc(sizeof(*w));
    float s_in = 1.0f / sqrtf(D), s_ff = 1.0f / sqrtf(F);
    for (int e = 0; e < E; e++) {
        for (int r = 0; r < F; r++)
            for (int c = 0; c < D; c++) {
                w->gate[e][r][c] = frand() * s_in * 2;
                w->up[e][r][c] = frand() * s_in * 2;
            }
        for (int r = 0; r < D; r++)
            for (int c = 0; c < F; c++)
                w->down[e][r][c] = frand() * s_ff * 2;
        for (int r = 0; r < F; r++) {
            quantize_q8(w->gate[e][r], D, w->qgate[e][r]);
            quantize_q8(w->up[e][r], D, w->qup[e][r]);
        }
        for (int r = 0; r < D; r++)
            quantize_q8(w->down[e][r], F, w->qdown[e][r]);
    }
    return w;
}

static ms_weight_t view(ms_type_t type, const void *data, int64_t n_in, int64_t n_out)
{
    uint64_t rb = ms_type_row_bytes(type, (uint64_t)n_in);
    return (ms_weight_t){ .type = type, .data = data, .n_in = n_in, .n_out = n_out, .n_mat = E, .row_bytes = rb,
                          .mat_bytes = rb * (uint64_t)n_out };
}

/* Projections (bit 0 gate, 1 up, 2 down) whose weights are Q8_0; the others are F32. */
#define Q8_ALL 7u

/* Dequantised value of weight (e, r, c) of projection which as the kernels see it. */
static double wval(const weights_t *w, int which, unsigned q8, int e, int r, int c)
{
    if (!(q8 >> which & 1u))
        return which == 0 ? w->gate[e][r][c] : which == 1 ? w->up[e][r][c] : w->down[e][r][c];
    const ms_block_q8_0_t *b = which == 0 ? &w->qgate[e][r][c / 32] : which == 1 ? &w->qup[e][r][c / 32]
                                                                                  : &w->qdown[e][r][c / 32];
    return (double)ms_f16_to_f32(b->d) * b->qs[c % 32];
}

static void reference(const weights_t *w, unsigned q8, const float *x, int n_tok, const int32_t *ids, const float *gw,
                      int k, double *out)
{
    for (int t = 0; t < n_tok; t++) {
        for (int i = 0; i < D; i++)
            out[t * D + i] = 0;
        for (int j = 0; j < k; j++) {
            int e = ids[t * k + j];
            if (e < 0)
                continue;
            double h[F];
            for (int r = 0; r < F; r++) {
                double g = 0, u = 0;
                for (int c = 0; c < D; c++) {
                    g += wval(w, 0, q8, e, r, c) * x[t * D + c];
                    u += wval(w, 1, q8, e, r, c) * x[t * D + c];
                }
                h[r] = g / (1.0 + exp(-g)) * u;
            }
            for (int r = 0; r < D; r++) {
                double s = 0;
                for (int c = 0; c < F; c++)
                    s += wval(w, 2, q8, e, r, c) * h[c];
                out[t * D + r] += gw[t * k + j] * s;
            }
        }
    }
}

static void run_case(unsigned q8, int n_tok, int k, int threads)
{
    static weights_t *w;
    if (!w)
        w = make_weights();
    ms_weight_t gate = q8 & 1u ? view(MS_TYPE_Q8_0, w->qgate, D, F) : view(MS_TYPE_F32, w->gate, D, F);
    ms_weight_t up = q8 & 2u ? view(MS_TYPE_Q8_0, w->qup, D, F) : view(MS_TYPE_F32, w->up, D, F);
    ms_weight_t down = q8 & 4u ? view(MS_TYPE_Q8_0, w->qdown, F, D) : view(MS_TYPE_F32, w->down, F, D);
    float *x = malloc(sizeof(float) * (size_t)n_tok * D), *out = malloc(sizeof(float) * (size_t)n_tok * D);
    double *ref = malloc(sizeof(double) * (size_t)n_tok * D);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_tok * (size_t)k);
    float *gw = malloc(sizeof(float) * (size_t)n_tok * (size_t)k);
    for (int i = 0; i < n_tok * D; i++)
        x[i] = frand();
    for (int t = 0; t < n_tok; t++)
        for (int j = 0; j < k; j++) {
            ids[t * k + j] = (t * 7 + j * 3) % E; /* distinct within a token while k <= 2 */
            if (t % 5 == 4 && j == k - 1)
                ids[t * k + j] = -1; /* a skipped slot */
            gw[t * k + j] = 0.25f + 0.5f * (float)j;
        }
    ms_pool_t *pool = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_pool_new(threads, &pool), 0);
    ms_expert_ws_t *ws = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_expert_ws_new(&gate, &up, &down, (int64_t)n_tok * k, &ws), 0);
    const ms_kernels_t *kern = ms_kernels_for(MS_ISA_SCALAR);
    CU_ASSERT_EQUAL(ms_expert_ffn(pool, kern, &gate, &up, &down, x, D, n_tok, ids, gw, k, out, D, ws), 0);
    reference(w, q8, x, n_tok, ids, gw, k, ref);
    double max_err = 0, max_ref = 0;
    for (int i = 0; i < n_tok * D; i++) {
        max_err = fmax(max_err, fabs(out[i] - ref[i]));
        max_ref = fmax(max_ref, fabs(ref[i]));
    }
    /* F32: float rounding only. Q8_0: the kernels also quantise activations to 8 bits. */
    double tol = q8 ? 0.02 * max_ref : 1e-4 * fmax(1.0, max_ref);
    CU_ASSERT(max_err <= tol);
    if (max_err > tol)
        printf("\n  Q8_0 mask %u n_tok %d k %d: max error %g > %g\n", q8, n_tok, k, max_err, tol);
    /* the fastest kernels agree with the scalar ones */
    float *out2 = malloc(sizeof(float) * (size_t)n_tok * D);
    CU_ASSERT_EQUAL(ms_expert_ffn(pool, ms_kernels_best(), &gate, &up, &down, x, D, n_tok, ids, gw, k, out2, D, ws), 0);
    for (int i = 0; i < n_tok * D; i++)
        CU_ASSERT(fabs(out2[i] - out[i]) <= 1e-3 * fmax(1.0, fabs(out[i])));
    /* an expert id out of range is refused */
    ids[0] = E;
    CU_ASSERT_EQUAL(ms_expert_ffn(pool, kern, &gate, &up, &down, x, D, n_tok, ids, gw, k, out, D, ws), -EINVAL);
    /* more rows than the workspace holds are refused */
    CU_ASSERT_EQUAL(ms_expert_ffn(pool, kern, &gate, &up, &down, x, D, n_tok + 1, ids, gw, k, out, D, ws), -EINVAL);
    ms_expert_ws_destroy(&ws);
    CU_ASSERT_PTR_NULL(ws);
    ms_pool_destroy(&pool);
    free(x), free(out), free(out2), free(ref), free(ids), free(gw);
}

static void test_f32_decode(void) { run_case(0, 1, 2, 1); }
static void test_f32_batch(void) { run_case(0, 13, 2, 2); }
static void test_f32_top1(void) { run_case(0, 7, 1, 3); }
static void test_q8_decode(void) { run_case(Q8_ALL, 1, 2, 2); }
static void test_q8_batch(void) { run_case(Q8_ALL, 17, 2, 2); }
/* gate and up of different types: each quantises the tokens' rows for itself
 * or reads them as f32 */
static void test_mixed_gate_q8(void) { run_case(1u | 4u, 11, 2, 2); }
static void test_mixed_up_q8(void) { run_case(2u, 9, 2, 1); }

static void test_ws_rejects(void)
{
    weights_t *w = make_weights();
    ms_weight_t gate = view(MS_TYPE_F32, w->gate, D, F), up = view(MS_TYPE_F32, w->up, D, F);
    ms_weight_t down = view(MS_TYPE_F32, w->down, F, D), bad = view(MS_TYPE_F32, w->down, D, F);
    ms_expert_ws_t *ws = NULL;
    CU_ASSERT_EQUAL(ms_expert_ws_new(&gate, &up, &down, 0, &ws), -EINVAL);
    CU_ASSERT_EQUAL(ms_expert_ws_new(&gate, &up, &bad, 4, &ws), -EINVAL);
    CU_ASSERT_PTR_NULL(ws);
    ms_expert_ws_destroy(NULL);
    ms_expert_ws_destroy(&ws);
    free(w);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("expert", NULL, NULL);
    if (!s)
        return -1;
    bool ok = CU_add_test(s, "F32, one token", test_f32_decode) && CU_add_test(s, "F32, 13 tokens", test_f32_batch) &&
              CU_add_test(s, "F32, top-1", test_f32_top1) && CU_add_test(s, "Q8_0, one token", test_q8_decode) &&
              CU_add_test(s, "Q8_0, 17 tokens", test_q8_batch) &&
              CU_add_test(s, "gate and down Q8_0, up F32", test_mixed_gate_q8) &&
              CU_add_test(s, "up Q8_0, gate and down F32", test_mixed_up_q8) &&
              CU_add_test(s, "workspace rejects bad shapes", test_ws_rejects);
    return ok ? 0 : -1;
}

#include "cu_main.h"
