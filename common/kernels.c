/* Kernel dispatch (CPU feature checks), the multi-threaded drivers over the
 * per-ISA tables, and RoPE. */
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"
#include "limits.h"

/* Rows of one job handed to a thread at a time: 16 f32 outputs fill one
 * cache line of y, so threads never write the same line (and 16 is a whole
 * number of the 4-row SIMD tiles). */
#define MS_MM_GRAIN_ROWS 16

static bool cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

static bool cpu_has_avx512(void)
{
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}

_Atomic bool ms_kern_touch_mid;

const ms_kernels_t *ms_kernels_for(ms_isa_t isa)
{
    switch (isa) {
    case MS_ISA_SCALAR:
        return &ms_kernels_scalar;
    case MS_ISA_AVX2:
        if (!cpu_has_avx2())
            return NULL;
        atomic_store_explicit(&ms_kern_touch_mid, !__builtin_cpu_supports("avx512f"), memory_order_relaxed);
        return &ms_kernels_avx2;
    case MS_ISA_AVX512:
        if (!cpu_has_avx512())
            return NULL;
        atomic_store_explicit(&ms_kern_touch_mid, false, memory_order_relaxed);
        return &ms_kernels_avx512;
    default:
        return NULL;
    }
}

const ms_kernels_t *ms_kernels_best(void)
{
    const char *want = getenv("MS_KERNELS");
    for (int isa = 0; want && isa < MS_ISA_COUNT; isa++) {
        const ms_kernels_t *k = ms_kernels_for((ms_isa_t)isa);
        if (k && strcmp(want, k->name) == 0)
            return k;
    }
    for (int isa = MS_ISA_COUNT - 1; isa > MS_ISA_SCALAR; isa--) {
        const ms_kernels_t *k = ms_kernels_for((ms_isa_t)isa);
        if (k)
            return k;
    }
    return &ms_kernels_scalar;
}

/* Q8_0 and Q4_0 weights pair with Q8_0 activations, the k-quants with Q8_K
 * (as llama.cpp pairs them): 0 for a row that is not whole blocks of those. */
size_t ms_act_row_bytes(ms_type_t type, int64_t n_in)
{
    if (n_in <= 0)
        return 0;
    if (type == MS_TYPE_Q8_0)
        return (size_t)ms_type_row_bytes(MS_TYPE_Q8_0, (uint64_t)n_in);
    if (ms_kq_handles(type))
        return (size_t)ms_type_row_bytes(ms_kq_act_type(type), (uint64_t)n_in);
    return 0;
}

bool ms_q8_r16_fits(int64_t n_out, int64_t n_in)
{
    return n_out > 0 && n_out % MS_Q8_R16_ROWS == 0 && n_in > 0 && n_in % MS_QK8_0 == 0;
}

bool ms_q8_r16_pack(void *w, int64_t n_mat, int64_t n_out, int64_t n_in)
{
    if (n_mat <= 0 || !ms_q8_r16_fits(n_out, n_in))
        return false;
    int64_t nb = n_in / MS_QK8_0;
    size_t group = (size_t)nb * MS_Q8_R16_BLOCK_BYTES;
    ms_block_q8_0_t *rows = malloc(group);
    if (!rows)
        return false;
    uint8_t *g = w, *end = g + (size_t)n_mat * (size_t)(n_out / MS_Q8_R16_ROWS) * group;
    for (; g < end; g += group) {
        memcpy(rows, g, group);
        for (int64_t b = 0; b < nb; b++) {
            size_t so, qo;
            ms_q8_r16_at(nb, b, &so, &qo);
            for (int i = 0; i < MS_Q8_R16_ROWS; i++) {
                const ms_block_q8_0_t *blk = &rows[(int64_t)i * nb + b];
                memcpy(g + so + 2 * i, &blk->d, 2);
                for (int k = 0; k < MS_QK8_0 / 4; k++) {
                    uint32_t v;
                    memcpy(&v, blk->qs + 4 * k, 4);
                    v ^= 0x80808080u; /* each quant q as q + 128 */
                    memcpy(g + qo + 64 * k + 4 * i, &v, 4);
                }
            }
        }
    }
    free(rows);
    return true;
}

/* Each thread owns a contiguous range of grains, packed as (back << 32 | front)
 * so that its owner (taking from the front) and a thief (taking from the
 * back) claim grains with one compare-and-swap each. */
typedef struct {
    _Alignas(64) _Atomic uint64_t span;
} mm_range_t;

typedef struct {
    const ms_kernels_t *k;
    const ms_mm_t *jobs;
    int n_jobs;
    long long units; /* grains of MS_MM_GRAIN_ROWS rows, summed over the jobs */
    mm_range_t *ranges; /* one per pool thread */
} mm_multi_ctx_t;

static long long mm_units(const ms_mm_t *mm)
{
    return mm->n_out > 0 ? (mm->n_out + MS_MM_GRAIN_ROWS - 1) / MS_MM_GRAIN_ROWS : 0;
}

/* Grains [u0, u1) of the concatenated jobs, across job boundaries. *at is
 * where the calling thread's last rows ended: a one-token job's rows that do
 * not go on from there start a new stream (ms_kern_stream_start). */
static void mm_run_units(const mm_multi_ctx_t *c, long long u0, long long u1, const char **at)
{
    long long base = 0;
    for (int j = 0; j < c->n_jobs && base < u1; j++) {
        const ms_mm_t *mm = &c->jobs[j];
        long long n = mm_units(mm);
        long long lo = u0 > base ? u0 : base;
        long long hi = u1 < base + n ? u1 : base + n;
        if (lo < hi) {
            int64_t r0 = (lo - base) * MS_MM_GRAIN_ROWS;
            int64_t r1 = (hi - base) * MS_MM_GRAIN_ROWS;
            r1 = r1 < mm->n_out ? r1 : mm->n_out;
            size_t row = (size_t)ms_type_row_bytes(mm->type, (uint64_t)mm->n_in);
            const char *from = (const char *)mm->w + (size_t)r0 * row;
            if (mm->n_tok == 1 && from != *at)
                ms_kern_stream_start(from, (const char *)mm->w + (size_t)mm->n_out * row);
            c->k->matmul(mm, r0, r1);
            *at = (const char *)mm->w + (size_t)r1 * row;
        }
        base += n;
    }
}

#define MM_OWN_GRAINS 4   /* the owner's claim from the front of its range */
#define MM_STEAL_GRAINS 1 /* a thief's claim from the back of another's */

/* Claims up to want grains of *r from the front (owner) or the back (thief);
 * false when the range is empty. */
static bool mm_claim(mm_range_t *r, long long want, bool from_back, long long *ret_u0, long long *ret_u1)
{
    uint64_t v = atomic_load_explicit(&r->span, memory_order_relaxed);
    for (;;) {
        long long front = (long long)(v & 0xffffffffu), back = (long long)(v >> 32);
        if (front >= back)
            return false;
        long long take = back - front < want ? back - front : want;
        long long nf = from_back ? front : front + take, nb = from_back ? back - take : back;
        if (atomic_compare_exchange_weak_explicit(&r->span, &v, (uint64_t)nb << 32 | (uint64_t)nf,
                                                  memory_order_relaxed, memory_order_relaxed)) {
            *ret_u0 = from_back ? nb : front;
            *ret_u1 = from_back ? back : nf;
            return true;
        }
    }
}

/* Every thread starts on an equal contiguous share and walks it front to
 * back; a thread that finishes early takes grains from the back of the
 * others' shares, so a thread slowed by its neighbours (or descheduled) does
 * not hold up the step. Each row is computed whole by one thread, so the
 * result does not depend on who computed it. */
static void mm_multi_thread(void *arg, int ith, int nth)
{
    const mm_multi_ctx_t *c = arg;
    long long u0, u1;
    const char *at = NULL;
    if (!c->ranges) {
        mm_run_units(c, 0, c->units, &at);
        return;
    }
    while (mm_claim(&c->ranges[ith], MM_OWN_GRAINS, false, &u0, &u1))
        mm_run_units(c, u0, u1, &at);
    for (int v = (ith + 1) % nth; v != ith; v = (v + 1) % nth)
        while (mm_claim(&c->ranges[v], MM_STEAL_GRAINS, true, &u0, &u1))
            mm_run_units(c, u0, u1, &at);
}

/* Below this much work (weight bytes x tokens) a product runs on the caller:
 * handing it to the pool costs a synchronisation worth more than its half
 * (a 32-expert router of 35 KB takes ~1.5 us alone). */
#define MS_MM_INLINE_BYTES (128u << 10)

void ms_matmul_multi(ms_pool_t *pool, const ms_kernels_t *k, const ms_mm_t *jobs, int n_jobs)
{
    mm_multi_ctx_t c = { .k = k, .jobs = jobs, .n_jobs = n_jobs, .units = 0 };
    uint64_t work = 0;
    for (int j = 0; j < n_jobs; j++) {
        c.units += mm_units(&jobs[j]);
        work += ms_type_row_bytes(jobs[j].type, (uint64_t)jobs[j].n_in) * (uint64_t)jobs[j].n_out *
                (uint64_t)jobs[j].n_tok;
    }
    if (c.units == 0)
        return;
    int nth = ms_pool_size(pool);
    if (c.units < 2 || work < MS_MM_INLINE_BYTES || nth < 2) {
        ms_pool_run(NULL, mm_multi_thread, &c);
        return;
    }
    mm_range_t ranges[MS_THREADS_MAX];
    for (int i = 0; i < nth; i++) {
        long long u0, u1;
        ms_pool_split(c.units, 1, i, nth, &u0, &u1);
        atomic_init(&ranges[i].span, (uint64_t)u1 << 32 | (uint64_t)u0);
    }
    c.ranges = ranges;
    ms_pool_run(pool, mm_multi_thread, &c);
}

/* Rows of activations quantised on the caller rather than the pool. */
#define MS_QUANT_INLINE_ELEMS (64 * 1024)

typedef struct {
    const ms_kernels_t *k;
    ms_type_t type;
    const float *x;
    int64_t ldx, n_tok, n_in;
    char *xq;
    size_t xq_row;
} quant_ctx_t;

static void quant_thread(void *arg, int ith, int nth)
{
    const quant_ctx_t *c = arg;
    long long t0, t1;
    ms_pool_split(c->n_tok, 1, ith, nth, &t0, &t1);
    for (long long t = t0; t < t1; t++)
        c->k->quantize_act(c->type, c->x + t * c->ldx, c->n_in, c->xq + (size_t)t * c->xq_row);
}

void ms_act_quantize_rows(ms_pool_t *pool, const ms_kernels_t *k, ms_type_t type,
                          const float *x, int64_t ldx, int64_t n_tok, int64_t n_in, void *xq)
{
    quant_ctx_t c = { .k = k, .type = type, .x = x, .ldx = ldx, .n_tok = n_tok, .n_in = n_in,
                      .xq = xq, .xq_row = ms_act_row_bytes(type, n_in) };
    if (c.xq_row == 0 || n_tok <= 0)
        return;
    /* a few rows (decode: one per chosen expert) cost less than a pool handoff */
    ms_pool_run(n_tok * n_in > MS_QUANT_INLINE_ELEMS ? pool : NULL, quant_thread, &c);
}

void ms_rope_angles(int rot_dim, int64_t pos, float freq_base, double *cs, double *sn)
{
    /* The angle in double: at positions near 2^18 a float angle loses the
     * low bits that decide the rotation of the fastest frequencies. */
    for (int i = 0; i < rot_dim / 2; i++) {
        double theta = (double)pos * pow((double)freq_base, -2.0 * i / rot_dim);
        cs[i] = cos(theta);
        sn[i] = sin(theta);
    }
}

/* Shapes come from the model loader, which validates them; a shape this
 * function cannot rotate (odd or oversized rot_dim, unknown mode) leaves x
 * unchanged rather than touching memory outside the heads. */
void ms_rope_apply(float *x, int n_heads, int head_dim, int rot_dim, const double *cs, const double *sn,
                   ms_rope_mode_t mode)
{
    if (rot_dim < 2 || rot_dim % 2 || rot_dim > head_dim || head_dim > MS_HEAD_DIM_MAX ||
        n_heads <= 0 || (mode != MS_ROPE_NORM && mode != MS_ROPE_NEOX))
        return;
    int half = rot_dim / 2;
    /* frequency i rotates values (i, i + half) in neox pairing, (2i, 2i + 1)
     * otherwise; one loop per pairing so that the compiler can vectorise it */
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        if (mode == MS_ROPE_NEOX) {
            for (int i = 0; i < half; i++) {
                double x0 = xh[i], x1 = xh[i + half];
                xh[i] = (float)(x0 * cs[i] - x1 * sn[i]);
                xh[i + half] = (float)(x0 * sn[i] + x1 * cs[i]);
            }
        } else {
            for (int i = 0; i < half; i++) {
                double x0 = xh[2 * i], x1 = xh[2 * i + 1];
                xh[2 * i] = (float)(x0 * cs[i] - x1 * sn[i]);
                xh[2 * i + 1] = (float)(x0 * sn[i] + x1 * cs[i]);
            }
        }
    }
}

void ms_rope(float *x, int n_heads, int head_dim, int rot_dim, int64_t pos,
             float freq_base, ms_rope_mode_t mode)
{
    double cs[MS_HEAD_DIM_MAX / 2], sn[MS_HEAD_DIM_MAX / 2];
    if (rot_dim < 2 || rot_dim > head_dim || head_dim > MS_HEAD_DIM_MAX)
        return;
    ms_rope_angles(rot_dim, pos, freq_base, cs, sn);
    ms_rope_apply(x, n_heads, head_dim, rot_dim, cs, sn, mode);
}
