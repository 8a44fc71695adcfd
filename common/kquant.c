/* Scalar reference for Q4_0 and the k-quants: dequantisation, dot products
 * against Q8_0 / Q8_K activations, and the Q8_K activation quantiser. Written
 * element by element from ggml's block layouts, for clarity; the SIMD paths
 * are tested against it. */
#include <math.h>

#include "kquant.h"

bool ms_kq_handles(ms_type_t type)
{
    switch (type) {
    case MS_TYPE_Q4_0:
    case MS_TYPE_Q2_K:
    case MS_TYPE_Q3_K:
    case MS_TYPE_Q4_K:
    case MS_TYPE_Q5_K:
    case MS_TYPE_Q6_K:
        return true;
    default:
        return false;
    }
}

ms_type_t ms_kq_act_type(ms_type_t type)
{
    return type == MS_TYPE_Q4_0 ? MS_TYPE_Q8_0 : MS_TYPE_Q8_K;
}

/* ---- dequantisation ------------------------------------------------------ */

static void dq_q4_0(const ms_block_q4_0_t *b, float *y)
{
    float d = ms_f16_to_f32(b->d);
    for (int e = 0; e < MS_QK4_0; e++)
        y[e] = d * (float)(ms_kq_q4_0(b, e) - 8);
}

static void dq_q2_K(const ms_block_q2_K_t *b, float *y)
{
    float d = ms_f16_to_f32(b->d), dmin = ms_f16_to_f32(b->dmin);
    for (int e = 0; e < MS_QK_K; e++) {
        int s = b->scales[e / 16];
        y[e] = d * (float)(s & 15) * (float)ms_kq_q2_K(b, e) - dmin * (float)(s >> 4);
    }
}

static void dq_q3_K(const ms_block_q3_K_t *b, float *y)
{
    float d = ms_f16_to_f32(b->d);
    for (int e = 0; e < MS_QK_K; e++)
        y[e] = d * (float)ms_kq_scale_q3_K(b->scales, e / 16) * (float)(ms_kq_q3_K(b, e) - 4);
}

static void dq_q4_K(const ms_block_q4_K_t *b, float *y)
{
    float d = ms_f16_to_f32(b->d), dmin = ms_f16_to_f32(b->dmin);
    for (int e = 0; e < MS_QK_K; e++) {
        int sc, m;
        ms_kq_scale_min_k4(b->scales, e / 32, &sc, &m);
        y[e] = d * (float)sc * (float)ms_kq_q4_K(b, e) - dmin * (float)m;
    }
}

static void dq_q5_K(const ms_block_q5_K_t *b, float *y)
{
    float d = ms_f16_to_f32(b->d), dmin = ms_f16_to_f32(b->dmin);
    for (int e = 0; e < MS_QK_K; e++) {
        int sc, m;
        ms_kq_scale_min_k4(b->scales, e / 32, &sc, &m);
        y[e] = d * (float)sc * (float)ms_kq_q5_K(b, e) - dmin * (float)m;
    }
}

static void dq_q6_K(const ms_block_q6_K_t *b, float *y)
{
    float d = ms_f16_to_f32(b->d);
    for (int e = 0; e < MS_QK_K; e++)
        y[e] = d * (float)b->scales[e / 16] * (float)(ms_kq_q6_K(b, e) - 32);
}

void ms_kq_dequant(ms_type_t type, const void *src, float *dst, int64_t n)
{
    int64_t nb = n / (type == MS_TYPE_Q4_0 ? MS_QK4_0 : MS_QK_K);
    for (int64_t i = 0; i < nb; i++) {
        switch (type) {
        case MS_TYPE_Q4_0: dq_q4_0((const ms_block_q4_0_t *)src + i, dst + i * MS_QK4_0); break;
        case MS_TYPE_Q2_K: dq_q2_K((const ms_block_q2_K_t *)src + i, dst + i * MS_QK_K); break;
        case MS_TYPE_Q3_K: dq_q3_K((const ms_block_q3_K_t *)src + i, dst + i * MS_QK_K); break;
        case MS_TYPE_Q4_K: dq_q4_K((const ms_block_q4_K_t *)src + i, dst + i * MS_QK_K); break;
        case MS_TYPE_Q5_K: dq_q5_K((const ms_block_q5_K_t *)src + i, dst + i * MS_QK_K); break;
        case MS_TYPE_Q6_K: dq_q6_K((const ms_block_q6_K_t *)src + i, dst + i * MS_QK_K); break;
        default: return;
        }
    }
}

/* ---- dot products -------------------------------------------------------
 * Per block: exact integer sums of quant products (scales applied as
 * integers), then one float step. The mins of Q2_K/Q4_K/Q5_K and the offsets
 * of Q3_K/Q6_K use the activation's bsums: sum (q - o) x = sum q x - o sum x. */

static float dot_q4_0(const ms_block_q4_0_t *w, const ms_block_q8_0_t *x)
{
    int32_t isum = 0;
    for (int e = 0; e < MS_QK4_0; e++)
        isum += (ms_kq_q4_0(w, e) - 8) * x->qs[e];
    return (float)isum * (ms_f16_to_f32(w->d) * ms_f16_to_f32(x->d));
}

static float dot_q2_K(const ms_block_q2_K_t *w, const ms_block_q8_K_t *x)
{
    int32_t isum = 0, msum = 0;
    for (int g = 0; g < 16; g++) {
        int32_t s = 0;
        for (int e = 16 * g; e < 16 * g + 16; e++)
            s += ms_kq_q2_K(w, e) * x->qs[e];
        isum += (w->scales[g] & 15) * s;
        msum += (w->scales[g] >> 4) * x->bsums[g];
    }
    return x->d * (ms_f16_to_f32(w->d) * (float)isum - ms_f16_to_f32(w->dmin) * (float)msum);
}

static float dot_q3_K(const ms_block_q3_K_t *w, const ms_block_q8_K_t *x)
{
    int32_t isum = 0;
    for (int g = 0; g < 16; g++) {
        int32_t s = 0;
        for (int e = 16 * g; e < 16 * g + 16; e++)
            s += ms_kq_q3_K(w, e) * x->qs[e];
        isum += ms_kq_scale_q3_K(w->scales, g) * (s - 4 * x->bsums[g]);
    }
    return x->d * (ms_f16_to_f32(w->d) * (float)isum);
}

static float dot_q4_K(const ms_block_q4_K_t *w, const ms_block_q8_K_t *x)
{
    int32_t isum = 0, msum = 0;
    for (int j = 0; j < 8; j++) {
        int32_t s = 0;
        int sc, m;
        for (int e = 32 * j; e < 32 * j + 32; e++)
            s += ms_kq_q4_K(w, e) * x->qs[e];
        ms_kq_scale_min_k4(w->scales, j, &sc, &m);
        isum += sc * s;
        msum += m * (x->bsums[2 * j] + x->bsums[2 * j + 1]);
    }
    return x->d * (ms_f16_to_f32(w->d) * (float)isum - ms_f16_to_f32(w->dmin) * (float)msum);
}

static float dot_q5_K(const ms_block_q5_K_t *w, const ms_block_q8_K_t *x)
{
    int32_t isum = 0, msum = 0;
    for (int j = 0; j < 8; j++) {
        int32_t s = 0;
        int sc, m;
        for (int e = 32 * j; e < 32 * j + 32; e++)
            s += ms_kq_q5_K(w, e) * x->qs[e];
        ms_kq_scale_min_k4(w->scales, j, &sc, &m);
        isum += sc * s;
        msum += m * (x->bsums[2 * j] + x->bsums[2 * j + 1]);
    }
    return x->d * (ms_f16_to_f32(w->d) * (float)isum - ms_f16_to_f32(w->dmin) * (float)msum);
}

static float dot_q6_K(const ms_block_q6_K_t *w, const ms_block_q8_K_t *x)
{
    int32_t isum = 0;
    for (int g = 0; g < 16; g++) {
        int32_t s = 0;
        for (int e = 16 * g; e < 16 * g + 16; e++)
            s += ms_kq_q6_K(w, e) * x->qs[e];
        isum += w->scales[g] * (s - 32 * x->bsums[g]);
    }
    return x->d * (ms_f16_to_f32(w->d) * (float)isum);
}

float ms_kq_dot(ms_type_t type, const void *w, const void *xq, int64_t n)
{
    float sum = 0.0f;
    if (type == MS_TYPE_Q4_0) {
        for (int64_t i = 0; i < n / MS_QK4_0; i++)
            sum += dot_q4_0((const ms_block_q4_0_t *)w + i, (const ms_block_q8_0_t *)xq + i);
        return sum;
    }
    const ms_block_q8_K_t *x = xq;
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        switch (type) {
        case MS_TYPE_Q2_K: sum += dot_q2_K((const ms_block_q2_K_t *)w + i, x + i); break;
        case MS_TYPE_Q3_K: sum += dot_q3_K((const ms_block_q3_K_t *)w + i, x + i); break;
        case MS_TYPE_Q4_K: sum += dot_q4_K((const ms_block_q4_K_t *)w + i, x + i); break;
        case MS_TYPE_Q5_K: sum += dot_q5_K((const ms_block_q5_K_t *)w + i, x + i); break;
        case MS_TYPE_Q6_K: sum += dot_q6_K((const ms_block_q6_K_t *)w + i, x + i); break;
        default: return NAN;
        }
    }
    return sum;
}

/* ---- Q8_K activations ---------------------------------------------------- */

void ms_kq_quantize_q8_K(const float *x, int64_t n, ms_block_q8_K_t *y)
{
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        const float *xb = x + i * MS_QK_K;
        float amax = 0.0f;
        for (int j = 0; j < MS_QK_K; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = d;
        for (int j = 0; j < MS_QK_K; j++)
            y[i].qs[j] = (int8_t)fminf(fmaxf(roundf(xb[j] * id), -127.0f), 127.0f);
        ms_kq_q8_K_bsums(&y[i]);
    }
}

void ms_kq_q8_K_bsums(ms_block_q8_K_t *b)
{
    for (int g = 0; g < MS_QK_K / 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += b->qs[16 * g + j];
        b->bsums[g] = (int16_t)s;
    }
}
