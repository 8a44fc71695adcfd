/* Scalar kernels: the reference every SIMD path is tested against, and the
 * fallback on CPUs without AVX2. Written for clarity, not speed. */
#include <math.h>
#include <string.h>

#include "kernels_impl.h"
#include "ms_assert.h"

/* Weight element c of a row of a plain (non-block) type. */
static inline float sc_weight(ms_type_t type, const void *row, int64_t c)
{
    switch (type) {
    case MS_TYPE_F16:
        return ms_f16_to_f32(((const uint16_t *)row)[c]);
    case MS_TYPE_BF16:
        return ms_bf16_to_f32(((const uint16_t *)row)[c]);
    default:
        return ((const float *)row)[c];
    }
}

static void sc_fill(float *dst, int64_t n, float v)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = v;
}

static void sc_dequant_row(ms_type_t type, const void *src, float *dst, int64_t n)
{
    switch (type) {
    case MS_TYPE_F32:
    case MS_TYPE_F16:
    case MS_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = sc_weight(type, src, i);
        return;
    case MS_TYPE_Q8_0: {
        const ms_block_q8_0_t *b = src;
        int64_t nb = n / MS_QK8_0;
        for (int64_t i = 0; i < nb; i++) {
            float d = ms_f16_to_f32(b[i].d);
            for (int j = 0; j < MS_QK8_0; j++)
                dst[i * MS_QK8_0 + j] = d * (float)b[i].qs[j];
        }
        sc_fill(dst + nb * MS_QK8_0, n - nb * MS_QK8_0, NAN); /* a partial block has no values */
        return;
    }
    case MS_TYPE_Q4_0:
    case MS_TYPE_Q2_K:
    case MS_TYPE_Q3_K:
    case MS_TYPE_Q4_K:
    case MS_TYPE_Q5_K:
    case MS_TYPE_Q6_K: {
        int64_t be = ms_type_traits(type)->block_elems, whole = n / be * be;
        ms_kq_dequant(type, src, dst, whole);
        sc_fill(dst + whole, n - whole, NAN);
        return;
    }
    default:
        sc_fill(dst, n, NAN);
        return;
    }
}

void ms_kern_quantize_q8_0(const float *x, int64_t n, ms_block_q8_0_t *y)
{
    for (int64_t i = 0; i < n / MS_QK8_0; i++) {
        const float *xb = x + i * MS_QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < MS_QK8_0; j++)
            amax = fmaxf(amax, fabsf(xb[j]));
        float id = ms_kern_q8_inv_scale(amax, &y[i].d);
        for (int j = 0; j < MS_QK8_0; j++) {
            float q = fminf(fmaxf(roundf(xb[j] * id), -127.0f), 127.0f);
            y[i].qs[j] = (int8_t)q;
        }
    }
}

static void sc_quantize_act(ms_type_t type, const float *x, int64_t n, void *xq)
{
    if (type == MS_TYPE_Q8_0 || type == MS_TYPE_Q4_0)
        ms_kern_quantize_q8_0(x, n, xq);
    else if (ms_kq_handles(type))
        ms_kq_quantize_q8_K(x, n, xq);
}

bool ms_kern_job_ok(const ms_mm_t *mm)
{
    switch (mm->type) {
    case MS_TYPE_F32:
    case MS_TYPE_F16:
    case MS_TYPE_BF16:
        return true;
    case MS_TYPE_Q8_0:
        return mm->xq != NULL && mm->n_in % MS_QK8_0 == 0;
    default:
        return ms_kq_handles(mm->type) && mm->xq != NULL && ms_act_row_bytes(mm->type, mm->n_in) != 0 &&
               ms_type_row_bytes(mm->type, (uint64_t)mm->n_in) != 0;
    }
}

void ms_kern_fill_nan(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    for (int64_t t = 0; t < mm->n_tok; t++)
        sc_fill(mm->y + t * mm->ldy + r0, r1 - r0, NAN);
}

/* sum over blocks of d_w * d_x * (integer dot of the block's quants) */
static float sc_dot_q8_0(const ms_block_q8_0_t *w, const ms_block_q8_0_t *x, int64_t nb)
{
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < MS_QK8_0; j++)
            isum += (int32_t)w[b].qs[j] * (int32_t)x[b].qs[j];
        sum += (float)isum * (ms_f16_to_f32(w[b].d) * ms_f16_to_f32(x[b].d));
    }
    return sum;
}

/* Row r of a Q8_0 matrix laid out 16 rows at a time (kernels.h), in the
 * order the AVX2 and AVX-512 kernels of that layout add it: one fma per
 * block, so their bits. */
static float sc_dot_q8_r16(const ms_mm_t *mm, int64_t r, const ms_block_q8_0_t *x)
{
    int64_t nb = mm->n_in / MS_QK8_0;
    const uint8_t *g = (const uint8_t *)mm->w + (size_t)(r / MS_Q8_R16_ROWS) * (size_t)nb * MS_Q8_R16_BLOCK_BYTES;
    int i = (int)(r % MS_Q8_R16_ROWS);
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        size_t so, qo;
        ms_q8_r16_at(nb, b, &so, &qo);
        uint16_t d;
        memcpy(&d, g + so + 2 * i, 2);
        int32_t isum = 0;
        for (int k = 0; k < MS_QK8_0; k++)
            isum += ((int32_t)g[qo + (k / 4) * 64 + 4 * i + k % 4] - 128) * (int32_t)x[b].qs[k];
        sum = fmaf((float)isum, ms_f16_to_f32(d) * ms_f16_to_f32(x[b].d), sum);
    }
    return sum;
}

static float sc_dot_plain(ms_type_t type, const void *w, const float *x, int64_t n)
{
    float sum = 0.0f;
    for (int64_t c = 0; c < n; c++)
        sum += sc_weight(type, w, c) * x[c];
    return sum;
}

static void sc_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    if (!ms_kern_job_ok(mm)) {
        ms_kern_fill_nan(mm, r0, r1);
        return;
    }
    size_t wrow = (size_t)ms_type_row_bytes(mm->type, (uint64_t)mm->n_in);
    size_t xrow = ms_act_row_bytes(mm->type, mm->n_in);
    for (int64_t t = 0; t < mm->n_tok; t++) {
        for (int64_t r = r0; r < r1; r++) {
            const char *w = (const char *)mm->w + (size_t)r * wrow;
            float v;
            const void *xq = mm->xq ? (const char *)mm->xq + (size_t)t * xrow : NULL;
            if (mm->type == MS_TYPE_Q8_0 && mm->w_r16)
                v = sc_dot_q8_r16(mm, r, xq);
            else if (mm->type == MS_TYPE_Q8_0)
                v = sc_dot_q8_0((const void *)w, xq, mm->n_in / MS_QK8_0);
            else if (ms_kq_handles(mm->type))
                v = ms_kq_dot(mm->type, w, xq, mm->n_in);
            else
                v = sc_dot_plain(mm->type, w, mm->x + t * mm->ldx, mm->n_in);
            mm->y[t * mm->ldy + r] = v;
        }
    }
}

static float sc_dot_f32(const float *a, const float *b, int64_t n)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

static void sc_axpy(float *y, float a, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void sc_dot_rows(const float *q, const float *rows, int64_t stride, int64_t n_rows, int64_t dim, float *out)
{
    for (int64_t j = 0; j < n_rows; j++)
        out[j] = sc_dot_f32(q, rows + j * stride, dim);
}

static void sc_axpy_rows(float *out, const float *w, const float *rows, int64_t stride, int64_t n_rows, int64_t dim)
{
    for (int64_t j = 0; j < n_rows; j++)
        sc_axpy(out, w[j], rows + j * stride, dim);
}

/* The f16 rows: each half widened exactly (sc_weight), then the products
 * and sums in sc_dot_f32's and sc_axpy's order, so that they give the f32
 * kernels' bits on the widened rows. */
static void sc_dot_rows_f16(const float *q, const uint16_t *rows, int64_t stride, int64_t n_rows, int64_t dim,
                            float *out)
{
    for (int64_t j = 0; j < n_rows; j++)
        out[j] = sc_dot_plain(MS_TYPE_F16, rows + j * stride, q, dim);
}

static void sc_axpy_rows_f16(float *out, const float *w, const uint16_t *rows, int64_t stride, int64_t n_rows,
                             int64_t dim)
{
    for (int64_t j = 0; j < n_rows; j++)
        for (int64_t i = 0; i < dim; i++)
            out[i] += w[j] * sc_weight(MS_TYPE_F16, rows + j * stride, i);
}

/* Several heads over the same rows: each head by the kernels above, so
 * every score is dot_rows' (dot_rows_f16's) bits by construction. */
static void sc_dot_rows_heads(ms_type_t row_type, const float *q, int64_t ldq, int nh, const void *rows,
                              int64_t stride, int64_t n_rows, int64_t dim, float *out, int64_t ldo)
{
    MS_ASSERT(row_type == MS_TYPE_F32 || row_type == MS_TYPE_F16);
    for (int h = 0; h < nh; h++) {
        if (row_type == MS_TYPE_F16)
            sc_dot_rows_f16(q + h * ldq, rows, stride, n_rows, dim, out + h * ldo);
        else
            sc_dot_rows(q + h * ldq, rows, stride, n_rows, dim, out + h * ldo);
    }
}

static void sc_axpy_rows_heads(ms_type_t row_type, float *out, int64_t ldo, const float *w, int64_t ldw, int nh,
                               const void *rows, int64_t stride, int64_t n_rows, int64_t dim)
{
    MS_ASSERT(row_type == MS_TYPE_F32 || row_type == MS_TYPE_F16);
    for (int h = 0; h < nh; h++) {
        if (row_type == MS_TYPE_F16)
            sc_axpy_rows_f16(out + h * ldo, w + h * ldw, rows, stride, n_rows, dim);
        else
            sc_axpy_rows(out + h * ldo, w + h * ldw, rows, stride, n_rows, dim);
    }
}

static void sc_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0; /* double: the mean of squares of a long row must not drift */
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)(n > 0 ? n : 1) + eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * scale * (w ? w[i] : 1.0f);
}

static void sc_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void sc_softmax(float *x, int64_t n)
{
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        max = fmaxf(max, x[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

const ms_kernels_t ms_kernels_scalar = {
    .name = "scalar",
    .dequant_row = sc_dequant_row,
    .quantize_act = sc_quantize_act,
    .matmul = sc_matmul,
    .dot_f32 = sc_dot_f32,
    .axpy = sc_axpy,
    .dot_rows = sc_dot_rows,
    .axpy_rows = sc_axpy_rows,
    .dot_rows_f16 = sc_dot_rows_f16,
    .axpy_rows_f16 = sc_axpy_rows_f16,
    .dot_rows_heads = sc_dot_rows_heads,
    .axpy_rows_heads = sc_axpy_rows_heads,
    .rmsnorm = sc_rmsnorm,
    .swiglu = sc_swiglu,
    .softmax = sc_softmax,
};
