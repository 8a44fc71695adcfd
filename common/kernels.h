/* Numeric kernels: weight (de)quantisation, matrix products over weight
 * rows, and the small per-vector operations of a transformer layer.
 * Each has a scalar reference and SIMD paths (AVX2, AVX-512/VNNI) picked at
 * run time from the CPU's features. Pure functions over their arguments. */
#ifndef MS_KERNELS_H
#define MS_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pool.h"
#include "types.h"

typedef enum {
    MS_ISA_SCALAR,
    MS_ISA_AVX2,    /* AVX2 + FMA + F16C */
    MS_ISA_AVX512,  /* AVX-512 F/BW/VL (+VNNI where present) */
    MS_ISA_COUNT
} ms_isa_t;

typedef enum {
    MS_ROPE_NORM, /* rotate adjacent pairs (x[2i], x[2i+1]): llama/Mixtral as GGUF stores them */
    MS_ROPE_NEOX, /* rotate half-split pairs (x[i], x[i + rot/2]): Qwen2/3-MoE, OLMoE */
    MS_ROPE_COUNT
} ms_rope_mode_t;

/* Q8_0 matrices in memory may be laid out 16 rows at a time instead of row
 * by row (ms_q8_r16_pack, at load time). A block of 16 rows is
 *   16 f16 scales, row i's at [2i] (32 bytes), and
 *   8 chunks of 64 bytes: chunk g holds row i's quants 4g..4g+3 at [4i],
 *   each quant stored as q + 128 (unsigned),
 * so one 64-byte load feeds one vpdpbusd for 16 rows and a block's 16
 * scales convert in one instruction. A group of 16 rows keeps its blocks
 * in pairs, the two blocks' scales first and then their quants (1088 bytes,
 * 17 whole cache lines: every load of quants is aligned); an odd last block
 * is scales then quants (ms_q8_r16_at). A group takes the bytes its 16
 * rows took (16 x 34 per block), so rows [r0, r1) at whole groups still
 * sit at w + r0 * row bytes. A packed matrix starts on a 64-byte boundary
 * (each tensor read into memory does): the AVX-512 one-token loop loads the
 * quants of an even number of blocks aligned.
 *
 * The kernels of this layout (ms_mm_t.w_r16), on every ISA, compute a row as
 *   acc = 0; for each block b in order:
 *       acc = fma((float)(integer dot of the quants), f16(w.d) * f16(x.d), acc)
 * (one rounding per multiply, one per fma), so a packed matrix's products
 * have the same bits whatever the ISA, the number of tokens in the call or
 * the rows' grouping. Matrices in the file's row-by-row layout (--mmap,
 * any matrix not packed) go through the row kernels, each ISA with its own
 * order; a packed and an unpacked copy of the same matrix agree only within
 * rounding. */
#define MS_Q8_R16_ROWS 16
#define MS_Q8_R16_BLOCK_BYTES (MS_Q8_R16_ROWS * 34)

/* Block b (of nb) of a 16-row group: offsets of its scales and of its first
 * chunk of quants from the group's start. */
static inline void ms_q8_r16_at(int64_t nb, int64_t b, size_t *scales, size_t *quants)
{
    size_t pair = (size_t)(b / 2) * 2 * MS_Q8_R16_BLOCK_BYTES;
    if (b % 2 == 0 && b == nb - 1) {
        *scales = pair;
        *quants = pair + 32;
    } else {
        *scales = pair + 32 * (size_t)(b % 2);
        *quants = pair + 64 + 512 * (size_t)(b % 2);
    }
}

/* One matrix product job: y[t*ldy + r] = sum_c W[r][c] * x[t][c]
 * for r in [0, n_out), t in [0, n_tok).
 *   W  [n_out][n_in] of type; row r starts at w + r * ms_type_row_bytes(type, n_in)
 *      (for r a multiple of 16 when w_r16)
 *   x  [n_tok][n_in] f32, row t at x + t * ldx; may be NULL when xq is
 *      given (the kernels then read only xq)
 *   xq the same rows quantised by ms_act_quantize for type, or NULL when
 *      ms_act_row_bytes(type, n_in) == 0 (the kernel then reads x)
 *   y  [n_tok][ldy] f32 */
typedef struct {
    ms_type_t type;
    const void *w;
    int64_t n_out, n_in;
    const float *x;
    int64_t ldx;
    const void *xq;
    int64_t n_tok;
    float *y;
    int64_t ldy;
    bool w_r16; /* Q8_0 only: w is laid out 16 rows at a time (above) */
} ms_mm_t;

/* Whether a Q8_0 matrix of n_out rows of n_in values can be laid out 16
 * rows at a time: whole groups of rows and whole blocks. */
bool ms_q8_r16_fits(int64_t n_out, int64_t n_in);
/* Rewrites n_mat Q8_0 matrices of n_out x n_in, back to back at w, from
 * the file's row-by-row layout to the 16-row one, in place; false (w
 * unchanged) when they do not fit or memory for one group is not there. */
bool ms_q8_r16_pack(void *w, int64_t n_mat, int64_t n_out, int64_t n_in);

#define MS_ROWS_HEADS_MAX 8 /* query heads one dot_rows_heads / axpy_rows_heads call takes */

typedef struct {
    const char *name; /* "scalar", "avx2", "avx512" */
    /* dst[0..n) = values of a row of n elements (n a multiple of the block size). */
    void (*dequant_row)(ms_type_t type, const void *src, float *dst, int64_t n);
    /* Quantises one activation row of n elements into the format the kernels
     * multiply type's weights with (Q8_0 blocks for Q8_0 weights). */
    void (*quantize_act)(ms_type_t type, const float *x, int64_t n, void *xq);
    /* Rows [r0, r1) of one job, all its tokens. */
    void (*matmul)(const ms_mm_t *mm, int64_t r0, int64_t r1);
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    /* y[i] += a * x[i] */
    void (*axpy)(float *y, float a, const float *x, int64_t n);
    /* out[j] = dot(q, rows + j*stride) for j < n_rows, each row dim floats
     * (attention scores of one query against cached keys). */
    void (*dot_rows)(const float *q, const float *rows, int64_t stride, int64_t n_rows, int64_t dim, float *out);
    /* out[i] += sum_j w[j] * rows[j*stride + i] for i < dim (attention's
     * weighted sum of cached values). */
    void (*axpy_rows)(float *out, const float *w, const float *rows, int64_t stride, int64_t n_rows, int64_t dim);
    /* The same two over rows of IEEE half floats (an f16 KV cache): each
     * value widened to f32 exactly, then the f32 arithmetic of the kernels
     * above; stride counts halves. */
    void (*dot_rows_f16)(const float *q, const uint16_t *rows, int64_t stride, int64_t n_rows, int64_t dim,
                         float *out);
    void (*axpy_rows_f16)(float *out, const float *w, const uint16_t *rows, int64_t stride, int64_t n_rows,
                          int64_t dim);
    /* Several query heads against the same cached rows, each row read from
     * memory once for all of them (attention's heads of one KV group): rows
     * of row_type (MS_TYPE_F32 or MS_TYPE_F16, any other aborts: a caller's
     * bug; stride in values), nh in [1, MS_ROWS_HEADS_MAX].
     * dot_rows_heads: out[h*ldo + j] = dot(q + h*ldq, rows + j*stride) for
     *   j < n_rows, each score bit for bit what dot_rows (dot_rows_f16) gives
     *   for that head.
     * axpy_rows_heads: out[h*ldo + i] += sum_j w[h*ldw + j] * rows[j*stride + i]
     *   for h < nh, i < dim (summed in its own order: within rounding of
     *   axpy_rows per head). */
    void (*dot_rows_heads)(ms_type_t row_type, const float *q, int64_t ldq, int nh, const void *rows, int64_t stride,
                           int64_t n_rows, int64_t dim, float *out, int64_t ldo);
    void (*axpy_rows_heads)(ms_type_t row_type, float *out, int64_t ldo, const float *w, int64_t ldw, int nh,
                            const void *rows, int64_t stride, int64_t n_rows, int64_t dim);
    /* out[i] = x[i] / sqrt(mean(x^2) + eps) * (w ? w[i] : 1); out may alias x. */
    void (*rmsnorm)(float *out, const float *x, const float *w, int64_t n, float eps);
    /* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)); out may alias gate. */
    void (*swiglu)(float *out, const float *gate, const float *up, int64_t n);
    /* x = exp(x - max) / sum, in place. */
    void (*softmax)(float *x, int64_t n);
} ms_kernels_t;

/* The table for one ISA, or NULL when this CPU (or this build) lacks it. */
const ms_kernels_t *ms_kernels_for(ms_isa_t isa);
/* The fastest table this CPU supports; MS_KERNELS=scalar|avx2|avx512 in the
 * environment overrides (falling back to the best available if unsupported). */
const ms_kernels_t *ms_kernels_best(void);

/* Bytes of one activation row quantised for type's weights; 0 when the
 * kernels read f32 activations directly for type (F32, F16, BF16). */
size_t ms_act_row_bytes(ms_type_t type, int64_t n_in);

/* Runs the jobs on the pool: their rows are split across threads in one
 * pass (one wake-up for all jobs). Every job's xq must be prepared. */
void ms_matmul_multi(ms_pool_t *pool, const ms_kernels_t *k, const ms_mm_t *jobs, int n_jobs);

/* Quantises n_tok rows (stride ldx) into xq (rows of ms_act_row_bytes(type, n_in))
 * on the pool; no-op when ms_act_row_bytes(type, n_in) == 0. */
void ms_act_quantize_rows(ms_pool_t *pool, const ms_kernels_t *k, ms_type_t type,
                          const float *x, int64_t ldx, int64_t n_tok, int64_t n_in, void *xq);

/* Memory read once is touched page by page ahead of the read. On the
 * virtual machines measured (docs/performance.md, "Pages"), the first read
 * of every 4 KiB page stalls, even inside the guest's 2 MiB pages and more
 * the larger the memory read (most likely the address translation: the
 * hypervisor maps guest memory in 4 KiB pages, and the walk waits on
 * page-table lines from memory). A stream spends less on a page than that
 * stall; touching the first line of each page well ahead of the read
 * starts those waits early and side by side. One-token products streamed
 * 30-40 % faster for it over a 1.8 GB footprint, and a bare read loop up
 * to 40 % (in some spells of this shared machine; in others no faster).
 * MS_PAGE_AHEAD is how far ahead the one-token kernels touch (the AVX2 ones
 * on a CPU without AVX-512 touch each page's middle line instead:
 * kernels_impl.h, ms_kern_touch_mid). */
#define MS_PAGE_BYTES 4096
#define MS_PAGE_AHEAD (64 * 1024)

/* Touches (prefetches) the line `at` bytes into each page that starts in
 * [from, end). */
static inline void ms_touch_pages_at(const void *from, const void *end, size_t at)
{
    uintptr_t p = ((uintptr_t)from + MS_PAGE_BYTES - 1) & ~(uintptr_t)(MS_PAGE_BYTES - 1);
    for (; p < (uintptr_t)end; p += MS_PAGE_BYTES)
        __builtin_prefetch((const void *)(p + at), 0, 3);
}

/* Touches the first line of each page that starts in [from, end). */
static inline void ms_touch_pages(const void *from, const void *end)
{
    ms_touch_pages_at(from, end, 0);
}

/* Rotary embedding of one token's heads in place.
 *   x [n_heads][head_dim]; only the first rot_dim dims of each head rotate.
 *   theta_i = pos * freq_base^(-2i/rot_dim), i in [0, rot_dim/2). */
void ms_rope(float *x, int n_heads, int head_dim, int rot_dim, int64_t pos,
             float freq_base, ms_rope_mode_t mode);
/* The same in two steps, for callers that rotate many heads of one
 * position (every layer of a step): cs/sn[i] = cos/sin(theta_i) for i <
 * rot_dim / 2, then the rotation with them. ms_rope_angles + ms_rope_apply
 * gives exactly ms_rope's result. */
void ms_rope_angles(int rot_dim, int64_t pos, float freq_base, double *cs, double *sn);
void ms_rope_apply(float *x, int n_heads, int head_dim, int rot_dim, const double *cs, const double *sn,
                   ms_rope_mode_t mode);

#endif
