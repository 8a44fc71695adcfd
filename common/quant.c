/* Round-to-nearest quantisers for every weight type the kernels compute,
 * writing ggml's block layouts (the inverse of the decoding in kquant.h). */
#include <math.h>
#include <string.h>

#include "quant.h"

/* round-half-away(v) clamped to [lo, hi]; NaN gives lo. */
static int q_round(float v, int lo, int hi)
{
    return (int)roundf(fminf(fmaxf(v, (float)lo), (float)hi));
}

/* The value of largest magnitude (sign kept) of x[0..n). */
static float signed_amax(const float *x, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(m))
            m = x[i];
    return m;
}

/* Stores a scale as f16 and returns the value the decoder will see. */
static float store_f16(uint16_t *dst, float v)
{
    *dst = ms_f32_to_f16(v);
    return ms_f16_to_f32(*dst);
}

static float inv_or_zero(float v)
{
    return v != 0.0f ? 1.0f / v : 0.0f;
}

static void quant_q8_0(const float *x, ms_block_q8_0_t *y)
{
    float amax = 0.0f;
    for (int j = 0; j < MS_QK8_0; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = inv_or_zero(d);
    y->d = ms_f32_to_f16(d);
    for (int j = 0; j < MS_QK8_0; j++)
        y->qs[j] = (int8_t)q_round(x[j] * id, -127, 127);
}

/* The extreme value maps to quant -8 exactly (as ggml's reference does). */
static void quant_q4_0(const float *x, ms_block_q4_0_t *y)
{
    float id = inv_or_zero(store_f16(&y->d, signed_amax(x, MS_QK4_0) / -8.0f));
    memset(y->qs, 0, sizeof(y->qs));
    for (int e = 0; e < MS_QK4_0; e++) {
        int q = q_round(x[e] * id, -8, 7) + 8;
        y->qs[e % 16] |= (uint8_t)(e < 16 ? q : q << 4);
    }
}

/* ---- "type-1" k-quants: value = d * sc * q - dmin * m ------------------- */

/* Per sub-block of len values: scale (max - min) / levels and min -min(0, ..)
 * into sc[] and mn[] (floats); returns nothing. */
static void sub_ranges(const float *x, int n_sub, int len, int levels, float *sc, float *mn)
{
    for (int j = 0; j < n_sub; j++) {
        float lo = 0.0f, hi = 0.0f;
        for (int i = 0; i < len; i++) {
            lo = fminf(lo, x[j * len + i]);
            hi = fmaxf(hi, x[j * len + i]);
        }
        sc[j] = (hi - lo) / (float)levels;
        mn[j] = -lo;
    }
}

static float max_of(const float *v, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++)
        m = fmaxf(m, v[i]);
    return m;
}

/* Integer sub-block scales and mins (0..smax) against the stored d and dmin;
 * returns nothing, writes isc[] and imn[]. */
static void int_scales(const float *sc, const float *mn, int n_sub, int smax, float d, float dmin, int *isc, int *imn)
{
    for (int j = 0; j < n_sub; j++) {
        isc[j] = q_round(sc[j] * inv_or_zero(d), 0, smax);
        imn[j] = q_round(mn[j] * inv_or_zero(dmin), 0, smax);
    }
}

/* Quant of value v in a sub-block with integer scale s and min m. */
static int type1_quant(float v, float d, int s, float dmin, int m, int levels)
{
    return q_round((v + dmin * (float)m) * inv_or_zero(d * (float)s), 0, levels);
}

/* The 12 scale bytes of Q4_K/Q5_K (inverse of ms_kq_scale_min_k4). */
static void pack_k4_scales(const int *isc, const int *imn, uint8_t *s)
{
    memset(s, 0, MS_K_SCALE_BYTES);
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)isc[j];
        s[j + 4] = (uint8_t)imn[j];
    }
    for (int j = 4; j < 8; j++) {
        s[j + 4] = (uint8_t)((isc[j] & 15) | ((imn[j] & 15) << 4));
        s[j - 4] |= (uint8_t)((isc[j] >> 4) << 6);
        s[j] |= (uint8_t)((imn[j] >> 4) << 6);
    }
}

/* Q4_K (levels 15) and Q5_K (levels 31): sub-blocks of 32. Fills d, dmin,
 * scales and the quants q[256]; the caller packs the quant bits. */
static void quant_k4(const float *x, int levels, uint16_t *ret_d, uint16_t *ret_dmin, uint8_t *scales, int *q)
{
    float sc[8], mn[8];
    int isc[8], imn[8];
    sub_ranges(x, 8, 32, levels, sc, mn);
    float d = store_f16(ret_d, max_of(sc, 8) / 63.0f);
    float dmin = store_f16(ret_dmin, max_of(mn, 8) / 63.0f);
    int_scales(sc, mn, 8, 63, d, dmin, isc, imn);
    pack_k4_scales(isc, imn, scales);
    for (int e = 0; e < MS_QK_K; e++)
        q[e] = type1_quant(x[e], d, isc[e / 32], dmin, imn[e / 32], levels);
}

static void quant_q4_K(const float *x, ms_block_q4_K_t *y)
{
    int q[MS_QK_K];
    quant_k4(x, 15, &y->d, &y->dmin, y->scales, q);
    memset(y->qs, 0, sizeof(y->qs));
    for (int e = 0; e < MS_QK_K; e++)
        y->qs[(e / 64) * 32 + e % 32] |= (uint8_t)(q[e] << (4 * ((e / 32) & 1)));
}

static void quant_q5_K(const float *x, ms_block_q5_K_t *y)
{
    int q[MS_QK_K];
    quant_k4(x, 31, &y->d, &y->dmin, y->scales, q);
    memset(y->qs, 0, sizeof(y->qs));
    memset(y->qh, 0, sizeof(y->qh));
    for (int e = 0; e < MS_QK_K; e++) {
        y->qs[(e / 64) * 32 + e % 32] |= (uint8_t)((q[e] & 15) << (4 * ((e / 32) & 1)));
        y->qh[e % 32] |= (uint8_t)((q[e] >> 4) << (e / 32));
    }
}

/* Q2_K: sub-blocks of 16, 2-bit quants, 4-bit scales and mins. */
static void quant_q2_K(const float *x, ms_block_q2_K_t *y)
{
    float sc[16], mn[16];
    int isc[16], imn[16];
    sub_ranges(x, 16, 16, 3, sc, mn);
    float d = store_f16(&y->d, max_of(sc, 16) / 15.0f);
    float dmin = store_f16(&y->dmin, max_of(mn, 16) / 15.0f);
    int_scales(sc, mn, 16, 15, d, dmin, isc, imn);
    memset(y->qs, 0, sizeof(y->qs));
    for (int g = 0; g < 16; g++)
        y->scales[g] = (uint8_t)(isc[g] | (imn[g] << 4));
    for (int e = 0; e < MS_QK_K; e++) {
        int q = type1_quant(x[e], d, isc[e / 16], dmin, imn[e / 16], 3);
        y->qs[(e / 128) * 32 + e % 32] |= (uint8_t)(q << (2 * ((e % 128) / 32)));
    }
}

/* ---- "type-0" k-quants: value = d * sc * (q - offset) -------------------- */

/* Signed integer scales of 16 groups of 16 values whose quants span
 * [-qneg, qneg - 1]: each group's extreme maps to -qneg, and d maps the
 * largest group scale to -sneg. Writes isc[16]; returns the stored d. */
static float type0_scales(const float *x, int qneg, int sneg, uint16_t *ret_d, int *isc)
{
    float s[16];
    for (int g = 0; g < 16; g++)
        s[g] = signed_amax(x + 16 * g, 16) / (float)-qneg;
    float d = store_f16(ret_d, signed_amax(s, 16) / (float)-sneg);
    for (int g = 0; g < 16; g++)
        isc[g] = q_round(s[g] * inv_or_zero(d), -sneg, sneg - 1);
    return d;
}

static void quant_q3_K(const float *x, ms_block_q3_K_t *y)
{
    int isc[16];
    float d = type0_scales(x, 4, 32, &y->d, isc);
    memset(y->scales, 0, sizeof(y->scales));
    memset(y->qs, 0, sizeof(y->qs));
    memset(y->hmask, 0, sizeof(y->hmask));
    for (int i = 0; i < 16; i++) { /* inverse of ms_kq_scale_q3_K */
        int v = isc[i] + 32;
        y->scales[i % 8] |= (uint8_t)((v & 15) << (i < 8 ? 0 : 4));
        y->scales[8 + (i & 3)] |= (uint8_t)((v >> 4) << (2 * (i >> 2)));
    }
    for (int e = 0; e < MS_QK_K; e++) {
        int u = q_round(x[e] * inv_or_zero(d * (float)isc[e / 16]), -4, 3) + 4;
        y->qs[(e / 128) * 32 + e % 32] |= (uint8_t)((u & 3) << (2 * ((e % 128) / 32)));
        y->hmask[e % 32] |= (uint8_t)((u >> 2) << (e / 32));
    }
}

static void quant_q6_K(const float *x, ms_block_q6_K_t *y)
{
    int isc[16];
    float d = type0_scales(x, 32, 128, &y->d, isc);
    memset(y->ql, 0, sizeof(y->ql));
    memset(y->qh, 0, sizeof(y->qh));
    for (int g = 0; g < 16; g++)
        y->scales[g] = (int8_t)isc[g];
    for (int e = 0; e < MS_QK_K; e++) {
        int u = q_round(x[e] * inv_or_zero(d * (float)isc[e / 16]), -32, 31) + 32;
        int n = e / 128, g = (e % 128) / 32, l = e % 32;
        y->ql[n * 64 + (g & 1) * 32 + l] |= (uint8_t)((u & 15) << (4 * (g >> 1)));
        y->qh[n * 32 + l] |= (uint8_t)((u >> 4) << (2 * g));
    }
}

/* ---- rows ------------------------------------------------------------------ */

static void quant_plain(ms_type_t type, const float *x, int64_t n, void *out)
{
    uint16_t *h = out;
    for (int64_t i = 0; i < n; i++) {
        if (type == MS_TYPE_F32)
            memcpy((float *)out + i, x + i, sizeof(float));
        else
            h[i] = type == MS_TYPE_F16 ? ms_f32_to_f16(x[i]) : ms_f32_to_bf16(x[i]);
    }
}

static void quant_block(ms_type_t type, const float *x, void *blk)
{
    switch (type) {
    case MS_TYPE_Q8_0: quant_q8_0(x, blk); break;
    case MS_TYPE_Q4_0: quant_q4_0(x, blk); break;
    case MS_TYPE_Q2_K: quant_q2_K(x, blk); break;
    case MS_TYPE_Q3_K: quant_q3_K(x, blk); break;
    case MS_TYPE_Q4_K: quant_q4_K(x, blk); break;
    case MS_TYPE_Q5_K: quant_q5_K(x, blk); break;
    case MS_TYPE_Q6_K: quant_q6_K(x, blk); break;
    default: break;
    }
}

size_t ms_quantize_row(ms_type_t type, const float *x, int64_t n, void *out)
{
    switch (type) {
    case MS_TYPE_F32: case MS_TYPE_F16: case MS_TYPE_BF16: case MS_TYPE_Q8_0: case MS_TYPE_Q4_0:
    case MS_TYPE_Q2_K: case MS_TYPE_Q3_K: case MS_TYPE_Q4_K: case MS_TYPE_Q5_K: case MS_TYPE_Q6_K:
        break;
    default:
        return 0;
    }
    uint64_t bytes = n > 0 ? ms_type_row_bytes(type, (uint64_t)n) : 0;
    if (bytes == 0 || bytes > SIZE_MAX)
        return 0;
    const ms_type_traits_t *tr = ms_type_traits(type);
    if (tr->block_elems == 1) {
        quant_plain(type, x, n, out);
        return (size_t)bytes;
    }
    for (int64_t b = 0; b < n / tr->block_elems; b++)
        quant_block(type, x + b * tr->block_elems, (char *)out + (size_t)b * tr->block_bytes);
    return (size_t)bytes;
}
