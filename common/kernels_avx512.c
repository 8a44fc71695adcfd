/* AVX-512 kernels (F/BW/VL/DQ + VNNI). Built with AVX-512 flags and reached
 * only through ms_kernels_for() after the CPU check. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_impl.h"
#include "ms_assert.h"

#define FORCE_INLINE static inline __attribute__((always_inline))

/* Matmul tiles: MR weight rows x MT tokens of accumulators, so each weight
 * vector loaded is used MT times and each activation vector MR times. */
#define Q8_MR 4
#define Q8_MT 4
/* Up to this many tokens (decode) a Q8_0 matmul walks one weight row at a
 * time: one sequential stream reaches DRAM speed where four interleaved row
 * streams measured at half of it; the work per byte is small enough that
 * reusing activations across rows does not matter there. */
#define Q8_ONE_ROW_TOKENS 8
#define PL_MR 4
#define PL_MT 4

/* ---- Q8_0 x Q8_0 ---------------------------------------------------------
 * vpdpbusd multiplies unsigned by signed bytes. The activations are made
 * unsigned once per load (x + 128, an xor) and the weights stay signed:
 *   sum (x+128) w = sum x w + 128 sum w,
 * so each row's accumulator starts at -128 sum w (one vpdpbusd per row) and
 * every (row, token) pair then costs a single vpdpbusd. This beats the |w| /
 * sign(x, w) trick, which needs a sign fix-up per pair on 512-bit vectors. */

/* Quants of blocks b[0] and b[1] in the low and high halves. */
FORCE_INLINE __m512i q8_load2(const ms_block_q8_0_t *b)
{
    __m256i lo = _mm256_loadu_si256((const __m256i *)b[0].qs);
    __m256i hi = _mm256_loadu_si256((const __m256i *)b[1].qs);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

FORCE_INLINE __m512 q8_scale2(const ms_block_q8_0_t *b)
{
    __m256i h = _mm256_mask_blend_epi16(0xff00, _mm256_set1_epi16((short)b[0].d), _mm256_set1_epi16((short)b[1].d));
    return _mm512_cvtph_ps(h);
}

/* A lone last block: upper half zero quants and zero scale. */
FORCE_INLINE __m512i q8_load1(const ms_block_q8_0_t *b)
{
    return _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)b[0].qs));
}

FORCE_INLINE __m512 q8_scale1(const ms_block_q8_0_t *b)
{
    return _mm512_maskz_mov_ps(0x00ff, _mm512_set1_ps(_cvtsh_ss(b[0].d)));
}

FORCE_INLINE void q8_step(__m512 acc[Q8_MR][Q8_MT], const __m512i *w, const __m512 *dw, const __m512i *x,
                          const __m512 *dx, int nr, int nt)
{
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const __m512i zero = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++) {
        __m512i corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, w[i]));
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++) {
            __m512i p = _mm512_dpbusd_epi32(corr, x[j], w[i]);
            acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw[i], dx[j]), acc[i][j]);
        }
    }
}

/* y[j*ldy + i] = row wr[i] . token xt[j] over nb blocks, for i < nr, j < nt. */
FORCE_INLINE void q8_tile(const ms_block_q8_0_t *const *wr, const ms_block_q8_0_t *const *xt, int64_t nb,
                          float *y, int64_t ldy, const int nr, const int nt)
{
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    __m512 acc[Q8_MR][Q8_MT];
    __m512i w[Q8_MR], x[Q8_MT];
    __m512 dw[Q8_MR], dx[Q8_MT];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            acc[i][j] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            w[i] = q8_load2(wr[i] + b);
            dw[i] = q8_scale2(wr[i] + b);
        }
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++) {
            x[j] = _mm512_xor_si512(q8_load2(xt[j] + b), bias);
            dx[j] = q8_scale2(xt[j] + b);
        }
        q8_step(acc, w, dw, x, dx, nr, nt);
    }
    if (b < nb) {
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            w[i] = q8_load1(wr[i] + b);
            dw[i] = q8_scale1(wr[i] + b);
        }
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++) {
            x[j] = _mm512_xor_si512(q8_load1(xt[j] + b), bias);
            dx[j] = q8_scale1(xt[j] + b);
        }
        q8_step(acc, w, dw, x, dx, nr, nt);
    }
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]);
}

typedef void (*q8_tile_fn)(const ms_block_q8_0_t *const *, const ms_block_q8_0_t *const *, int64_t, float *,
                           int64_t);

#define Q8_TILE(NR, NT)                                                                                     \
    static void q8_tile_##NR##_##NT(const ms_block_q8_0_t *const *wr, const ms_block_q8_0_t *const *xt,     \
                                    int64_t nb, float *y, int64_t ldy)                                      \
    {                                                                                                       \
        q8_tile(wr, xt, nb, y, ldy, NR, NT);                                                                \
    }
Q8_TILE(1, 1) Q8_TILE(1, 2) Q8_TILE(1, 3) Q8_TILE(1, 4)
Q8_TILE(2, 1) Q8_TILE(2, 2) Q8_TILE(2, 3) Q8_TILE(2, 4)
Q8_TILE(3, 1) Q8_TILE(3, 2) Q8_TILE(3, 3) Q8_TILE(3, 4)
Q8_TILE(4, 1) Q8_TILE(4, 2) Q8_TILE(4, 3) Q8_TILE(4, 4)

static const q8_tile_fn q8_tiles[Q8_MR][Q8_MT] = {
    { q8_tile_1_1, q8_tile_1_2, q8_tile_1_3, q8_tile_1_4 },
    { q8_tile_2_1, q8_tile_2_2, q8_tile_2_3, q8_tile_2_4 },
    { q8_tile_3_1, q8_tile_3_2, q8_tile_3_3, q8_tile_3_4 },
    { q8_tile_4_1, q8_tile_4_2, q8_tile_4_3, q8_tile_4_4 },
};

/* Block pairs of one activation row, laid out once per call for decode:
 * quants already biased to unsigned, scales already broadcast. */
#define Q8_VEC_PAIRS_MAX 128 /* rows up to 8192 values take the decode path */

/* One token (decode): each weight row streams once, and the activation side
 * costs nothing per row beyond two L1 loads per pair. The accumulation order
 * is q8_tile's exactly (one accumulator, pairs in order, a lone last block
 * last), so a token's result does not depend on how many tokens share the
 * call: continuous batching gives the same logits as a request run alone. */
static void q8_matvec(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    int64_t nb = mm->n_in / MS_QK8_0, np = nb / 2;
    const ms_block_q8_0_t *xb = mm->xq;
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    const __m512i zero = _mm512_setzero_si512();
    __m512i xv[Q8_VEC_PAIRS_MAX + 1];
    __m512 xd[Q8_VEC_PAIRS_MAX + 1];
    for (int64_t p = 0; p < np; p++) {
        xv[p] = _mm512_xor_si512(q8_load2(xb + 2 * p), bias);
        xd[p] = q8_scale2(xb + 2 * p);
    }
    if (nb % 2) {
        xv[np] = _mm512_xor_si512(q8_load1(xb + nb - 1), bias);
        xd[np] = q8_scale1(xb + nb - 1);
    }
    size_t row_bytes = (size_t)nb * sizeof(ms_block_q8_0_t);
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * row_bytes;
    for (int64_t r = r0; r < r1; r++) {
        const ms_block_q8_0_t *w = (const ms_block_q8_0_t *)mm->w + r * nb;
        ms_kern_stream_ahead(w, row_bytes, w_end);
        __m512 acc = _mm512_setzero_ps();
        int64_t p = 0;
        /* two pairs per iteration (their integer sums are independent), added
         * to the one accumulator in pair order */
        for (; p + 2 <= np; p += 2) {
            __m512i w0 = q8_load2(w + 2 * p), w1 = q8_load2(w + 2 * p + 2);
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, w0)), xv[p], w0);
            __m512i s1 =
                _mm512_dpbusd_epi32(_mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, w1)), xv[p + 1], w1);
            __m512 d0 = _mm512_mul_ps(q8_scale2(w + 2 * p), xd[p]);
            __m512 d1 = _mm512_mul_ps(q8_scale2(w + 2 * p + 2), xd[p + 1]);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), d0, acc);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), d1, acc);
        }
        for (; p < np; p++) {
            __m512i w0 = q8_load2(w + 2 * p);
            __m512i corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, w0));
            __m512i s0 = _mm512_dpbusd_epi32(corr, xv[p], w0);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(q8_scale2(w + 2 * p), xd[p]), acc);
        }
        if (nb % 2) {
            __m512i w0 = q8_load1(w + nb - 1);
            __m512i corr = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, w0));
            __m512i s0 = _mm512_dpbusd_epi32(corr, xv[np], w0);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), _mm512_mul_ps(q8_scale1(w + nb - 1), xd[np]), acc);
        }
        mm->y[r] = _mm512_reduce_add_ps(acc);
    }
}

/* Row tiles outer, token tiles inner: a tile's weight rows stay in L1 while
 * every token passes over them, so each weight byte comes from DRAM once. */
static void q8_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    if (mm->n_tok == 1 && mm->n_in / MS_QK8_0 / 2 <= Q8_VEC_PAIRS_MAX) {
        q8_matvec(mm, r0, r1);
        return;
    }
    int64_t nb = mm->n_in / MS_QK8_0;
    size_t xrow = (size_t)nb * sizeof(ms_block_q8_0_t);
    const ms_block_q8_0_t *w0 = mm->w;
    const char *xq = mm->xq;
    const ms_block_q8_0_t *wr[Q8_MR], *xt[Q8_MT];
    int mr = mm->n_tok <= Q8_ONE_ROW_TOKENS ? 1 : Q8_MR;
    for (int64_t r = r0; r < r1; r += mr) {
        int nr = r1 - r < mr ? (int)(r1 - r) : mr;
        for (int i = 0; i < nr; i++)
            wr[i] = w0 + (r + i) * nb;
        for (int64_t t = 0; t < mm->n_tok; t += Q8_MT) {
            int nt = mm->n_tok - t < Q8_MT ? (int)(mm->n_tok - t) : Q8_MT;
            for (int j = 0; j < nt; j++)
                xt[j] = (const void *)(xq + (size_t)(t + j) * xrow);
            q8_tiles[nr - 1][nt - 1](wr, xt, nb, mm->y + t * mm->ldy + r, mm->ldy);
        }
    }
}

/* ---- Q8_0 x Q8_0, 16 rows at a time (w_r16) ------------------------------
 * Matrices laid out 16 rows at a time at load time (kernels.h): one row a
 * lane. A block of 16 rows is eight 64-byte vectors of weights, chunk g
 * holding each row's quants 4g..4g+3, and vpdpbusd multiplies each by the
 * token's 4 quants 4g..4g+3 broadcast, adding row i's 4 products into lane
 * i. The weights are stored unsigned (q + 128), so each lane gains 128 x
 * the sum of the token's block, which starts the sum negated. The blocks
 * are added in the order kernels.h gives for these kernels, so the bits are
 * the scalar and AVX2 kernels' on the same packed matrix. */

/* Tokens a pass over a group's blocks takes: each weight vector loaded
 * serves Q8R16_NT tokens. */
#define Q8R16_NT 4
/* Blocks of the activations' per-block numbers kept on the stack at a time
 * (n_in up to 16384 in one pass; longer rows go in passes, the sums carried
 * through y). */
#define Q8R16_XB 512
/* How far ahead the one-token loop asks for a pair of blocks' 17 lines:
 * 6 KiB, into every cache level (prefetch locality 3, as for the page it
 * touches MS_PAGE_AHEAD on). The row kernels ask non-temporally 12 KiB ahead
 * (MS_KERN_STREAM_AHEAD); for this loop the nearer, all-levels prefetch
 * measured best. */
#define Q8R16_LINES_AHEAD (6 * 1024)

typedef struct {
    float d;      /* the block's scale */
    int32_t corr; /* 128 x the sum of its quants */
} q8r16_xb_t;

FORCE_INLINE __m512i q8r16_bcst4(const int8_t *q)
{
    int32_t v;
    memcpy(&v, q, 4);
    return _mm512_set1_epi32(v);
}

/* One block of 16 rows (w: 8 chunks, unsigned; dw: the 16 scales) into the
 * accumulators of nt tokens. */
FORCE_INLINE void q8r16_blk(__m512 *acc, const __m512i *w, __m512 dw, const ms_block_q8_0_t *const *xt,
                            const q8r16_xb_t *const *xc, int64_t b, int64_t bx, const int nt)
{
#pragma GCC unroll 4
    for (int j = 0; j < nt; j++) {
        const int8_t *q = xt[j][b].qs;
        __m512i s0 = _mm512_set1_epi32(-xc[j][bx].corr), s1 = _mm512_setzero_si512();
        s0 = _mm512_dpbusd_epi32(s0, w[0], q8r16_bcst4(q + 0));
        s1 = _mm512_dpbusd_epi32(s1, w[1], q8r16_bcst4(q + 4));
        s0 = _mm512_dpbusd_epi32(s0, w[2], q8r16_bcst4(q + 8));
        s1 = _mm512_dpbusd_epi32(s1, w[3], q8r16_bcst4(q + 12));
        s0 = _mm512_dpbusd_epi32(s0, w[4], q8r16_bcst4(q + 16));
        s1 = _mm512_dpbusd_epi32(s1, w[5], q8r16_bcst4(q + 20));
        s0 = _mm512_dpbusd_epi32(s0, w[6], q8r16_bcst4(q + 24));
        s1 = _mm512_dpbusd_epi32(s1, w[7], q8r16_bcst4(q + 28));
        __m512 d = _mm512_mul_ps(dw, _mm512_set1_ps(xc[j][bx].d));
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), d, acc[j]);
    }
}

/* Block b of nb of a group: its 8 chunks of quants and its 16 scales. */
FORCE_INLINE void q8r16_load(const uint8_t *g, int64_t nb, int64_t b, __m512i *w, __m512 *dw)
{
    size_t so, qo;
    ms_q8_r16_at(nb, b, &so, &qo);
    *dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(g + so)));
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        w[k] = _mm512_loadu_si512(g + qo + 64 * k);
}

/* Tokens [t, t + nt) x rows [r0, r1) over blocks [b0, b1), the sums
 * carried in y when b0 > 0. xi: for one token, its quants 4 bytes a lane
 * per block (8 int32), blocks [b0, b1). */
FORCE_INLINE void q8r16_pass(const ms_mm_t *mm, int64_t r0, int64_t r1, int64_t t, int64_t b0, int64_t b1,
                             const ms_block_q8_0_t *const *xt, const q8r16_xb_t *const *xc, const int32_t *xi,
                             const int nt)
{
    int64_t nb = mm->n_in / MS_QK8_0;
    size_t row = (size_t)nb * sizeof(ms_block_q8_0_t);
    /* one token: the weights stream once from memory, asked for ahead of a
     * cursor going through the group's bytes as fast as the blocks do */
    const bool stream = mm->n_tok == 1;
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * row;
    for (int64_t g = r0 / MS_Q8_R16_ROWS * MS_Q8_R16_ROWS; g < r1; g += MS_Q8_R16_ROWS) {
        int64_t lo = g > r0 ? g : r0, hi = g + MS_Q8_R16_ROWS < r1 ? g + MS_Q8_R16_ROWS : r1;
        __mmask16 m = (__mmask16)(((1u << (hi - g)) - 1) & ~((1u << (lo - g)) - 1));
        const char *gp = (const char *)mm->w + (size_t)g * row;
        __m512 acc[Q8R16_NT];
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            acc[j] = b0 ? _mm512_maskz_loadu_ps(m, mm->y + (t + j) * mm->ldy + g) : _mm512_setzero_ps();
        __m512i w[8];
        __m512 dw;
        if (nt == 1 && xi && nb % 2 == 0 && b0 == 0 && b1 == nb) {
            /* one token, whole pairs of blocks in one pass: block by block
             * straight from the pair's lines (17, 64-byte aligned) */
            __m512 a = acc[0];
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *pp = (const uint8_t *)gp + (size_t)(b / 2) * 2 * MS_Q8_R16_BLOCK_BYTES;
                const uint8_t *qb = pp + 64 + 512 * (b % 2);
                if (stream) {
                    const uint8_t *f = pp + Q8R16_LINES_AHEAD;
                    if (b % 2 == 0 && (const char *)f + 2 * MS_Q8_R16_BLOCK_BYTES <= w_end)
                        for (int o = 0; o < 2 * MS_Q8_R16_BLOCK_BYTES; o += 64)
                            __builtin_prefetch(f + o, 0, 3);
                    uintptr_t pg = ((uintptr_t)qb + MS_PAGE_AHEAD + 4095) & ~(uintptr_t)4095;
                    if (pg < (uintptr_t)qb + MS_PAGE_AHEAD + MS_Q8_R16_BLOCK_BYTES && pg < (uintptr_t)w_end)
                        __builtin_prefetch((const void *)pg, 0, 3);
                }
                const int32_t *x0 = xi + b * 8;
                __m512i s0 = _mm512_set1_epi32(-xc[0][b].corr), s1 = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int k = 0; k < 8; k += 2) {
                    s0 = _mm512_dpbusd_epi32(s0, _mm512_load_si512(qb + 64 * k), _mm512_set1_epi32(x0[k]));
                    s1 = _mm512_dpbusd_epi32(s1, _mm512_load_si512(qb + 64 + 64 * k), _mm512_set1_epi32(x0[k + 1]));
                }
                __m512 d = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pp + 32 * (b % 2)))),
                                         _mm512_set1_ps(xc[0][b].d));
                a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), d, a);
            }
            acc[0] = a;
        } else {
            for (int64_t b = b0; b < b1; b++) {
                /* the pair's 17 lines asked for at its first block */
                if (stream && (b % 2 == 0 || b == b0))
                    ms_kern_stream_ahead(gp + (size_t)(b / 2) * 2 * MS_Q8_R16_BLOCK_BYTES, 2 * MS_Q8_R16_BLOCK_BYTES,
                                         w_end);
                q8r16_load((const uint8_t *)gp, nb, b, w, &dw);
                q8r16_blk(acc, w, dw, xt, xc, b, b - b0, nt);
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            _mm512_mask_storeu_ps(mm->y + (t + j) * mm->ldy + g, m, acc[j]);
    }
}

typedef void (*q8r16_pass_fn)(const ms_mm_t *, int64_t, int64_t, int64_t, int64_t, int64_t,
                              const ms_block_q8_0_t *const *, const q8r16_xb_t *const *, const int32_t *);

#define Q8R16_PASS(NT)                                                                                          \
    static void q8r16_pass_##NT(const ms_mm_t *mm, int64_t r0, int64_t r1, int64_t t, int64_t b0, int64_t b1,   \
                                const ms_block_q8_0_t *const *xt, const q8r16_xb_t *const *xc, const int32_t *xi) \
    {                                                                                                           \
        q8r16_pass(mm, r0, r1, t, b0, b1, xt, xc, xi, NT);                                                      \
    }
Q8R16_PASS(1) Q8R16_PASS(2) Q8R16_PASS(3) Q8R16_PASS(4)

static const q8r16_pass_fn q8r16_passes[Q8R16_NT] = { q8r16_pass_1, q8r16_pass_2, q8r16_pass_3, q8r16_pass_4 };

/* Token tiles outer, blocks in passes of Q8R16_XB, rows inner: a thread's
 * rows of one call (a few grains) stay in L2 while the token tiles go over
 * them; one token streams each weight once. */
static void q8r16_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    int64_t nb = mm->n_in / MS_QK8_0;
    size_t xrow = (size_t)nb * sizeof(ms_block_q8_0_t);
    q8r16_xb_t xcb[Q8R16_NT][Q8R16_XB];
    _Alignas(64) int32_t xib[Q8R16_XB * 8];
    const ms_block_q8_0_t *xt[Q8R16_NT];
    const q8r16_xb_t *xc[Q8R16_NT];
    for (int64_t t = 0; t < mm->n_tok; t += Q8R16_NT) {
        int nt = mm->n_tok - t < Q8R16_NT ? (int)(mm->n_tok - t) : Q8R16_NT;
        for (int j = 0; j < nt; j++) {
            xt[j] = (const void *)((const char *)mm->xq + (size_t)(t + j) * xrow);
            xc[j] = xcb[j];
        }
        for (int64_t b0 = 0; b0 < nb; b0 += Q8R16_XB) {
            int64_t b1 = nb - b0 < Q8R16_XB ? nb : b0 + Q8R16_XB;
            for (int j = 0; j < nt; j++)
                for (int64_t b = b0; b < b1; b++) {
                    __m256i q = _mm256_loadu_si256((const __m256i *)xt[j][b].qs);
                    __m512i s = _mm512_cvtepi8_epi16(q);
                    xcb[j][b - b0].corr = 128 * _mm512_reduce_add_epi32(_mm512_madd_epi16(s, _mm512_set1_epi16(1)));
                    xcb[j][b - b0].d = _cvtsh_ss(xt[j][b].d);
                }
            const int32_t *xi = NULL;
            if (nt == 1) {
                for (int64_t b = b0; b < b1; b++)
                    memcpy(xib + (b - b0) * 8, xt[0][b].qs, 32);
                xi = xib;
            }
            q8r16_passes[nt - 1](mm, r0, r1, t, b0, b1, xt, xc, xi);
        }
    }
}

/* ---- F32 / F16 / BF16 weights x f32 activations ------------------------ */

/* 16 weights from element c as f32; lanes outside m read as 0. */
FORCE_INLINE __m512 pl_load_w(ms_type_t type, const void *row, int64_t c, __mmask16 m)
{
    if (type == MS_TYPE_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c));
    if (type == MS_TYPE_BF16) {
        __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c));
        return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)row + c);
}

FORCE_INLINE void pl_step(__m512 acc[PL_MR][PL_MT], ms_type_t type, const char *const *wr, const float *const *xt,
                          int64_t c, __mmask16 m, int nr, int nt)
{
    __m512 w[PL_MR];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
        w[i] = pl_load_w(type, wr[i], c, m);
#pragma GCC unroll 4
    for (int j = 0; j < nt; j++) {
        __m512 x = _mm512_maskz_loadu_ps(m, xt[j] + c);
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++)
            acc[i][j] = _mm512_fmadd_ps(w[i], x, acc[i][j]);
    }
}

FORCE_INLINE void pl_tile(ms_type_t type, const char *const *wr, const float *const *xt, int64_t n,
                          float *y, int64_t ldy, const int nr, const int nt)
{
    __m512 acc[PL_MR][PL_MT];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            acc[i][j] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 16 <= n; c += 16)
        pl_step(acc, type, wr, xt, c, 0xffff, nr, nt);
    if (c < n)
        pl_step(acc, type, wr, xt, c, (__mmask16)((1u << (n - c)) - 1), nr, nt);
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            y[j * ldy + i] = _mm512_reduce_add_ps(acc[i][j]);
}

typedef void (*pl_tile_fn)(const char *const *, const float *const *, int64_t, float *, int64_t);

#define PL_TILE(TY, NAME, NR, NT)                                                                           \
    static void pl_##NAME##_##NR##_##NT(const char *const *wr, const float *const *xt, int64_t n, float *y, \
                                        int64_t ldy)                                                        \
    {                                                                                                       \
        pl_tile(TY, wr, xt, n, y, ldy, NR, NT);                                                             \
    }
#define PL_TILES(TY, NAME) \
    PL_TILE(TY, NAME, 1, 1) PL_TILE(TY, NAME, 1, 4) PL_TILE(TY, NAME, 4, 1) PL_TILE(TY, NAME, 4, 4)
PL_TILES(MS_TYPE_F32, f32)
PL_TILES(MS_TYPE_F16, f16)
PL_TILES(MS_TYPE_BF16, bf16)

/* [type: f32, f16, bf16][full row tile][full token tile] */
static const pl_tile_fn pl_tiles[3][2][2] = {
    { { pl_f32_1_1, pl_f32_1_4 }, { pl_f32_4_1, pl_f32_4_4 } },
    { { pl_f16_1_1, pl_f16_1_4 }, { pl_f16_4_1, pl_f16_4_4 } },
    { { pl_bf16_1_1, pl_bf16_1_4 }, { pl_bf16_4_1, pl_bf16_4_4 } },
};

static void pl_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    int ty = mm->type == MS_TYPE_F32 ? 0 : mm->type == MS_TYPE_F16 ? 1 : 2;
    size_t wrow = (size_t)ms_type_row_bytes(mm->type, (uint64_t)mm->n_in);
    const char *wr[PL_MR];
    const float *xt[PL_MT];
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * wrow;
    for (int64_t r = r0; r < r1;) {
        int nr = r1 - r >= PL_MR ? PL_MR : 1;
        for (int i = 0; i < nr; i++)
            wr[i] = (const char *)mm->w + (size_t)(r + i) * wrow;
        if (mm->n_tok == 1) /* decode: the rows stream once from memory */
            ms_kern_stream_ahead(wr[0], (size_t)nr * wrow, w_end);
        for (int64_t t = 0; t < mm->n_tok;) {
            int nt = mm->n_tok - t >= PL_MT ? PL_MT : 1;
            for (int j = 0; j < nt; j++)
                xt[j] = mm->x + (t + j) * mm->ldx;
            pl_tiles[ty][nr == PL_MR][nt == PL_MT](wr, xt, mm->n_in, mm->y + t * mm->ldy + r, mm->ldy);
            t += nt;
        }
        r += nr;
    }
}

static void v16_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    if (!ms_kern_job_ok(mm))
        ms_kern_fill_nan(mm, r0, r1);
    else if (mm->type == MS_TYPE_Q8_0 && mm->w_r16)
        q8r16_matmul(mm, r0, r1);
    else if (mm->type == MS_TYPE_Q8_0)
        q8_matmul(mm, r0, r1);
    else if (ms_kq_handles(mm->type))
        ms_kq_matmul_avx512(mm, r0, r1);
    else
        pl_matmul(mm, r0, r1);
}

/* ---- dequantisation and activation quantisation ----------------------- */

static void v16_dequant_q8_0(const ms_block_q8_0_t *b, float *dst, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        __m512 d = _mm512_set1_ps(_cvtsh_ss(b[i].d));
        __m256i q = _mm256_loadu_si256((const __m256i *)b[i].qs);
        __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
        __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
        _mm512_storeu_ps(dst + i * MS_QK8_0, _mm512_mul_ps(d, lo));
        _mm512_storeu_ps(dst + i * MS_QK8_0 + 16, _mm512_mul_ps(d, hi));
    }
}

static void v16_dequant_plain(ms_type_t type, const void *src, float *dst, int64_t n)
{
    int64_t c = 0;
    for (; c + 16 <= n; c += 16)
        _mm512_storeu_ps(dst + c, pl_load_w(type, src, c, 0xffff));
    if (c < n) {
        __mmask16 m = (__mmask16)((1u << (n - c)) - 1);
        _mm512_mask_storeu_ps(dst + c, m, pl_load_w(type, src, c, m));
    }
}

static void v16_dequant_row(ms_type_t type, const void *src, float *dst, int64_t n)
{
    if (type == MS_TYPE_Q8_0 && n % MS_QK8_0 == 0)
        v16_dequant_q8_0(src, dst, n / MS_QK8_0);
    else if (type == MS_TYPE_F32 || type == MS_TYPE_F16 || type == MS_TYPE_BF16)
        v16_dequant_plain(type, src, dst, n);
    else
        ms_kernels_scalar.dequant_row(type, src, dst, n);
}

/* roundf(v) (half away from zero) then clamp to [-127, 127], NaN to -127:
 * bit-identical to the scalar path. v - trunc(v) is exact. */
FORCE_INLINE __m512i q8_round(__m512 v)
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 frac = _mm512_andnot_ps(sign, _mm512_sub_ps(v, t));
    __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(sign, v));
    __m512 r = _mm512_mask_add_ps(t, up, t, one);
    r = _mm512_min_ps(_mm512_set1_ps(127.0f), _mm512_max_ps(r, _mm512_set1_ps(-127.0f)));
    return _mm512_cvtps_epi32(r);
}

static void v16_quantize_q8_0(const float *x, int64_t n, ms_block_q8_0_t *y)
{
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / MS_QK8_0; i++) {
        __m512 a = _mm512_loadu_ps(x + i * MS_QK8_0);
        __m512 b = _mm512_loadu_ps(x + i * MS_QK8_0 + 16);
        /* max_ps returns its second operand when either is NaN: NaN inputs
         * are skipped as the scalar's fmaxf chain skips them */
        __m512 m = _mm512_max_ps(_mm512_and_ps(a, abs_mask), _mm512_setzero_ps());
        m = _mm512_max_ps(_mm512_and_ps(b, abs_mask), m);
        float amax = _mm512_reduce_max_ps(m);
        __m512 id = _mm512_set1_ps(ms_kern_q8_inv_scale(amax, &y[i].d));
        __m128i qa = _mm512_cvtsepi32_epi8(q8_round(_mm512_mul_ps(a, id)));
        __m128i qb = _mm512_cvtsepi32_epi8(q8_round(_mm512_mul_ps(b, id)));
        _mm_storeu_si128((__m128i *)y[i].qs, qa);
        _mm_storeu_si128((__m128i *)(y[i].qs + 16), qb);
    }
}

/* Q8_K: one f32 scale per 256 values, quants as v16_quantize_q8_0 rounds them. */
static void v16_quantize_q8_K(const float *x, int64_t n, ms_block_q8_K_t *y)
{
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        const float *xb = x + i * MS_QK_K;
        __m512 m = _mm512_setzero_ps(); /* NaN skipped, as in v16_quantize_q8_0 */
        for (int k = 0; k < MS_QK_K; k += 16)
            m = _mm512_max_ps(_mm512_and_ps(_mm512_loadu_ps(xb + k), abs_mask), m);
        float d = _mm512_reduce_max_ps(m) / 127.0f;
        __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        y[i].d = d;
        for (int k = 0; k < MS_QK_K; k += 16) {
            __m128i q = _mm512_cvtsepi32_epi8(q8_round(_mm512_mul_ps(_mm512_loadu_ps(xb + k), id)));
            _mm_storeu_si128((__m128i *)(y[i].qs + k), q);
        }
        ms_kq_q8_K_bsums(&y[i]);
    }
}

static void v16_quantize_act(ms_type_t type, const float *x, int64_t n, void *xq)
{
    if (type == MS_TYPE_Q8_0 || type == MS_TYPE_Q4_0)
        v16_quantize_q8_0(x, n, xq);
    else if (ms_kq_handles(type))
        v16_quantize_q8_K(x, n, xq);
}

/* ---- f32 vector helpers ------------------------------------------------ */

FORCE_INLINE __mmask16 tail_mask(int64_t rem)
{
    return (__mmask16)((1u << rem) - 1);
}

static float v16_dot_f32(const float *a, const float *b, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void v16_axpy(float *y, float a, const float *x, int64_t n)
{
    __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

static void v16_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    __m512 ss = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        ss = _mm512_fmadd_ps(v, v, ss);
    }
    double mean = (double)_mm512_reduce_add_ps(ss) / (double)(n > 0 ? n : 1);
    __m512 scale = _mm512_set1_ps((float)(1.0 / sqrt(mean + eps)));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), scale);
        if (w)
            v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i));
        _mm512_mask_storeu_ps(out + i, m, v);
    }
}

/* exp(x) with relative error below 5e-7 (not correctly rounded expf):
 * x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its
 * degree-6 Taylor polynomial (truncation < 1.3e-7), and scalef applies 2^n
 * with proper overflow to inf and underflow to subnormals/0. NaN stays NaN. */
FORCE_INLINE __m512 v16_exp(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static void v16_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        __m512 e = v16_exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 v = _mm512_div_ps(_mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, up + i)), _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, v);
    }
}

static void v16_softmax(float *x, int64_t n)
{
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, x + i));
    }
    __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        __m512 e = v16_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx));
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

/* ---- attention over cached rows ------------------------------------------
 * Scores take DOT_ROWS rows per pass: each query vector loaded serves them
 * all and their sums reduce together. The weighted sum keeps an
 * AXPY_VECS-vector slice of out in registers across all rows (two sets, even
 * and odd rows, so twice as many FMA chains run at once); a head dim of 64 is
 * a single slice. The rows are f32 or f16 (type, a constant in each caller):
 * f16 values widen exactly and then take the f32 path's arithmetic, so both
 * give the same bits on the same values. */
#define DOT_ROWS 4
#define AXPY_VECS 4

/* Element i of rows (f32 or f16). */
FORCE_INLINE const void *kv_at(ms_type_t type, const void *rows, int64_t i)
{
    if (type == MS_TYPE_F16)
        return (const uint16_t *)rows + i;
    return (const float *)rows + i;
}

/* The 16 values at row as f32. */
FORCE_INLINE __m512 kv_load(ms_type_t type, const void *row)
{
    if (type == MS_TYPE_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256(row));
    return _mm512_loadu_ps(row);
}

/* The values at row in the lanes of m as f32, the other lanes 0 (and not read). */
FORCE_INLINE __m512 kv_load_mask(ms_type_t type, const void *row, __mmask16 m)
{
    return pl_load_w(type, row, 0, m);
}

/* Lane r of the result = sum of a_r's lanes. */
FORCE_INLINE __m128 hsum4x16(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
    __m256 h[4];
    const __m512 a[4] = { a0, a1, a2, a3 };
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
        h[r] = _mm256_add_ps(_mm512_castps512_ps256(a[r]), _mm512_extractf32x8_ps(a[r], 1));
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* out[r] = q . (rows + r*stride)[0..dim) for r < nr <= DOT_ROWS. */
FORCE_INLINE void dot_tile(ms_type_t type, const float *q, const void *rows, int64_t stride, int64_t dim,
                           float *out, const int nr)
{
    __m512 acc[DOT_ROWS][2];
#pragma GCC unroll 4
    for (int r = 0; r < DOT_ROWS; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        __m512 q0 = _mm512_loadu_ps(q + i), q1 = _mm512_loadu_ps(q + i + 16);
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            acc[r][0] = _mm512_fmadd_ps(q0, kv_load(type, kv_at(type, rows, r * stride + i)), acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(q1, kv_load(type, kv_at(type, rows, r * stride + i + 16)), acc[r][1]);
        }
    }
    for (; i < dim; i += 16) {
        __mmask16 m = dim - i >= 16 ? 0xffff : tail_mask(dim - i);
        __m512 qv = _mm512_maskz_loadu_ps(m, q + i);
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++)
            acc[r][0] = _mm512_fmadd_ps(qv, kv_load_mask(type, kv_at(type, rows, r * stride + i), m), acc[r][0]);
    }
    __m128 s = hsum4x16(_mm512_add_ps(acc[0][0], acc[0][1]), _mm512_add_ps(acc[1][0], acc[1][1]),
                        _mm512_add_ps(acc[2][0], acc[2][1]), _mm512_add_ps(acc[3][0], acc[3][1]));
    _mm_mask_storeu_ps(out, (__mmask8)((1u << nr) - 1), s);
}

/* A row's score depends on its values alone, not on the tile it lands in
 * (the tiles' rows never mix), so any blocking of the rows gives the same
 * scores. */
FORCE_INLINE void dot_rows(ms_type_t type, const float *q, const void *rows, int64_t stride, int64_t n_rows,
                           int64_t dim, float *out)
{
    int64_t j = 0;
    for (; j + DOT_ROWS <= n_rows; j += DOT_ROWS)
        dot_tile(type, q, kv_at(type, rows, j * stride), stride, dim, out + j, DOT_ROWS);
    switch (n_rows - j) {
    case 3: dot_tile(type, q, kv_at(type, rows, j * stride), stride, dim, out + j, 3); break;
    case 2: dot_tile(type, q, kv_at(type, rows, j * stride), stride, dim, out + j, 2); break;
    case 1: dot_tile(type, q, kv_at(type, rows, j * stride), stride, dim, out + j, 1); break;
    default: break;
    }
}

static void v16_dot_rows(const float *q, const float *rows, int64_t stride, int64_t n_rows, int64_t dim, float *out)
{
    dot_rows(MS_TYPE_F32, q, rows, stride, n_rows, dim, out);
}

static void v16_dot_rows_f16(const float *q, const uint16_t *rows, int64_t stride, int64_t n_rows, int64_t dim,
                             float *out)
{
    dot_rows(MS_TYPE_F16, q, rows, stride, n_rows, dim, out);
}

/* out[0..width) += sum_j w[j] * (rows + j*stride)[0..width), in nv vectors
 * (width in (16 (nv - 1), 16 nv]). */
FORCE_INLINE void axpy_slice(ms_type_t type, float *out, const float *w, const void *rows, int64_t stride,
                             int64_t n_rows, int64_t width, const int nv)
{
    __mmask16 m[AXPY_VECS];
    __m512 a[AXPY_VECS], b[AXPY_VECS];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        m[v] = width - 16 * v >= 16 ? 0xffff : tail_mask(width - 16 * v);
        a[v] = _mm512_maskz_loadu_ps(m[v], out + 16 * v);
        b[v] = _mm512_setzero_ps();
    }
    int64_t j = 0;
    for (; j + 2 <= n_rows; j += 2) {
        const void *r0 = kv_at(type, rows, j * stride), *r1 = kv_at(type, r0, stride);
        __m512 w0 = _mm512_set1_ps(w[j]), w1 = _mm512_set1_ps(w[j + 1]);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            a[v] = _mm512_fmadd_ps(w0, kv_load_mask(type, kv_at(type, r0, 16 * v), m[v]), a[v]);
            b[v] = _mm512_fmadd_ps(w1, kv_load_mask(type, kv_at(type, r1, 16 * v), m[v]), b[v]);
        }
    }
    if (j < n_rows) {
        __m512 w0 = _mm512_set1_ps(w[j]);
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            a[v] = _mm512_fmadd_ps(w0, kv_load_mask(type, kv_at(type, rows, j * stride + 16 * v), m[v]), a[v]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
        _mm512_mask_storeu_ps(out + 16 * v, m[v], _mm512_add_ps(a[v], b[v]));
}

FORCE_INLINE void axpy_rows(ms_type_t type, float *out, const float *w, const void *rows, int64_t stride,
                            int64_t n_rows, int64_t dim)
{
    for (int64_t c = 0; c < dim; c += 16 * AXPY_VECS) {
        int64_t width = dim - c < 16 * AXPY_VECS ? dim - c : 16 * AXPY_VECS;
        switch ((width + 15) / 16) {
        case 4: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 4); break;
        case 3: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 3); break;
        case 2: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 2); break;
        default: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 1); break;
        }
    }
}

static void v16_axpy_rows(float *out, const float *w, const float *rows, int64_t stride, int64_t n_rows, int64_t dim)
{
    axpy_rows(MS_TYPE_F32, out, w, rows, stride, n_rows, dim);
}

static void v16_axpy_rows_f16(float *out, const float *w, const uint16_t *rows, int64_t stride, int64_t n_rows,
                              int64_t dim)
{
    axpy_rows(MS_TYPE_F16, out, w, rows, stride, n_rows, dim);
}

/* ---- several query heads over the same cached rows -----------------------
 * A KV group's heads read the same rows: a tile here loads (and widens) each
 * row vector once for all its heads. Scores take two rows x up to HD_HEADS
 * heads at a time through the dim (16 accumulators, 8 query vectors and 4
 * row vectors of the 32 registers), and HD_ROWS rows (two such pairs) per
 * reduction: reducing 16 (row, head) sums side by side costs about a
 * shuffle each, and the second pair's FMAs overlap the first pair's
 * reduction (a fifth less time than a reduction per pair: f16 rows, dim 64,
 * 4 heads, on the AMD EPYC the tests run on).
 * More heads take another pass over the same rows, still in L1.
 * Per (row, head) the arithmetic is dot_tile's exactly: the same two
 * accumulators over the 32-value steps, the same masked 16-value tail, their
 * sum reduced as hsum4x16 reduces it, hence dot_rows' bits. The weighted
 * sum keeps an AXPY_VECS-vector slice of up to HA_HEADS heads' outputs in
 * registers across all rows. */
#define HD_ROWS 4
#define HD_HEADS 4
#define HA_HEADS 4

/* v, kept in a register: GCC otherwise folds a vector's load into every
 * FMA that uses it, loading it once per use (20 loads for a row pair's 16
 * FMAs per step, where a core does at most two of either a cycle). */
FORCE_INLINE __m512 in_reg(__m512 v)
{
    __asm__("" : "+v"(v));
    return v;
}

/* The steps of hsum4x16's reduction of one vector (lanes i and i + 8, then
 * adjacent pairs of those, then pairs of pairs, then the two halves), each
 * on two registers of vectors side by side for one shuffle and two blends,
 * where hsum4x16 spends two shuffles per vector. Some additions take their
 * operands the other way round: the same sums, bit for bit (only which
 * payload survives two NaN operands could differ).
 * fold_halves: 256-bit half 0 = x's lanes i + i+8, half 1 the same of y. */
FORCE_INLINE __m512 fold_halves(__m512 x, __m512 y)
{
    return _mm512_add_ps(_mm512_mask_blend_ps(0xff00, x, y), _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 3, 2)));
}

/* In each 128-bit lane: (x0 + x1, y0 + y1, x2 + x3, y2 + y3). */
FORCE_INLINE __m512 fold_pairs(__m512 x, __m512 y)
{
    __m512 sw = _mm512_permute_ps(_mm512_mask_blend_ps(0xaaaa, y, x), _MM_SHUFFLE(2, 3, 0, 1));
    return _mm512_add_ps(_mm512_mask_blend_ps(0xaaaa, x, y), sw);
}

/* In each 128-bit lane: (x0 + x2, x1 + x3, y0 + y2, y1 + y3). */
FORCE_INLINE __m512 fold_quads(__m512 x, __m512 y)
{
    __m512 sw = _mm512_permute_ps(_mm512_mask_blend_ps(0xcccc, y, x), _MM_SHUFFLE(1, 0, 3, 2));
    return _mm512_add_ps(_mm512_mask_blend_ps(0xcccc, x, y), sw);
}

/* 128-bit lanes (x0 + x1, x2 + x3, y0 + y1, y2 + y3). */
FORCE_INLINE __m512 fold_lanes(__m512 x, __m512 y)
{
    return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* s[h*2 + r] = the sum of dot_tile's two accumulators for q + h*ldq against
 * rows + r*stride, for r < nr <= 2, h < nh <= HD_HEADS. */
FORCE_INLINE void dot_heads_pair(ms_type_t type, const float *q, int64_t ldq, const void *rows, int64_t stride,
                                 int64_t dim, __m512 *s, const int nr, const int nh)
{
    __m512 acc[HD_HEADS][2][2];
#pragma GCC unroll 4
    for (int h = 0; h < nh; h++)
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++)
            acc[h][r][0] = acc[h][r][1] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        __m512 x[2][2];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            x[r][0] = in_reg(kv_load(type, kv_at(type, rows, r * stride + i)));
            x[r][1] = in_reg(kv_load(type, kv_at(type, rows, r * stride + i + 16)));
        }
#pragma GCC unroll 4
        for (int h = 0; h < nh; h++) {
            __m512 q0 = in_reg(_mm512_loadu_ps(q + h * ldq + i)), q1 = in_reg(_mm512_loadu_ps(q + h * ldq + i + 16));
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) {
                acc[h][r][0] = _mm512_fmadd_ps(q0, x[r][0], acc[h][r][0]);
                acc[h][r][1] = _mm512_fmadd_ps(q1, x[r][1], acc[h][r][1]);
            }
        }
    }
    for (; i < dim; i += 16) {
        __mmask16 m = dim - i >= 16 ? 0xffff : tail_mask(dim - i);
        __m512 x[2];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++)
            x[r] = kv_load_mask(type, kv_at(type, rows, r * stride + i), m);
#pragma GCC unroll 4
        for (int h = 0; h < nh; h++) {
            __m512 qv = _mm512_maskz_loadu_ps(m, q + h * ldq + i);
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++)
                acc[h][r][0] = _mm512_fmadd_ps(qv, x[r], acc[h][r][0]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < nh; h++)
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++)
            s[h * 2 + r] = _mm512_add_ps(acc[h][r][0], acc[h][r][1]);
}

/* out[h*ldo + r] = (q + h*ldq) . (rows + r*stride)[0..dim) for r < nr <= HD_ROWS,
 * h < nh <= HD_HEADS: row pairs p = 0, 1, each folded to two registers
 * (heads 0-1, heads 2-3) before the next pair's accumulators need theirs. */
FORCE_INLINE void dot_heads_tile(ms_type_t type, const float *q, int64_t ldq, const void *rows, int64_t stride,
                                 int64_t dim, float *out, int64_t ldo, const int nr, const int nh)
{
    __m512 u01[2], u23[2];
#pragma GCC unroll 2
    for (int p = 0; p < 2; p++) {
        __m512 s[2 * HD_HEADS];
#pragma GCC unroll 8
        for (int k = 0; k < 2 * HD_HEADS; k++)
            s[k] = _mm512_setzero_ps();
        int np = nr - 2 * p < 2 ? nr - 2 * p : 2;
        if (np == 2)
            dot_heads_pair(type, q, ldq, kv_at(type, rows, 2 * p * stride), stride, dim, s, 2, nh);
        else if (np == 1)
            dot_heads_pair(type, q, ldq, kv_at(type, rows, 2 * p * stride), stride, dim, s, 1, nh);
        /* u01[p]: 128-bit lanes 0-1 hold head 0's rows 2p and 2p+1 summed
         * down to pairs of lanes, lanes 2-3 head 1's; u23[p] heads 2 and 3 */
        u01[p] = fold_pairs(fold_halves(s[0], s[2]), fold_halves(s[1], s[3]));
        u23[p] = fold_pairs(fold_halves(s[4], s[6]), fold_halves(s[5], s[7]));
    }
    /* 128-bit lane h: head h's rows 0..3 */
    __m512 v = fold_lanes(fold_quads(u01[0], u01[1]), fold_quads(u23[0], u23[1]));
#pragma GCC unroll 4
    for (int h = 0; h < nh; h++) {
        if (nr == 4)
            _mm_storeu_ps(out + h * ldo, _mm512_extractf32x4_ps(v, h));
        else
            _mm_mask_storeu_ps(out + h * ldo, (__mmask8)((1u << nr) - 1), _mm512_extractf32x4_ps(v, h));
    }
}

/* dot_heads_tile over all the rows, nh heads. */
FORCE_INLINE void dot_heads_pass(ms_type_t type, const float *q, int64_t ldq, const void *rows, int64_t stride,
                                 int64_t n_rows, int64_t dim, float *out, int64_t ldo, const int nh)
{
    int64_t j = 0;
    for (; j + HD_ROWS <= n_rows; j += HD_ROWS)
        dot_heads_tile(type, q, ldq, kv_at(type, rows, j * stride), stride, dim, out + j, ldo, HD_ROWS, nh);
    const void *rj = kv_at(type, rows, j * stride);
    switch (n_rows - j) {
    case 3: dot_heads_tile(type, q, ldq, rj, stride, dim, out + j, ldo, 3, nh); break;
    case 2: dot_heads_tile(type, q, ldq, rj, stride, dim, out + j, ldo, 2, nh); break;
    case 1: dot_heads_tile(type, q, ldq, rj, stride, dim, out + j, ldo, 1, nh); break;
    default: break;
    }
}

/* A pass per HD_HEADS heads; a call's rows (the callers' blocks are sized
 * for L1) stay in L1 between passes. A lone head is dot_rows' (four rows
 * per query load; the same bits either way). */
FORCE_INLINE void dot_rows_heads(ms_type_t type, const float *q, int64_t ldq, int nh, const void *rows,
                                 int64_t stride, int64_t n_rows, int64_t dim, float *out, int64_t ldo)
{
    for (int h = 0, hn; h < nh; h += hn) {
        hn = ms_kern_heads_next(nh - h, HD_HEADS);
        const float *qh = q + h * ldq;
        float *oh = out + h * ldo;
        switch (hn) {
        case 4: dot_heads_pass(type, qh, ldq, rows, stride, n_rows, dim, oh, ldo, 4); break;
        case 3: dot_heads_pass(type, qh, ldq, rows, stride, n_rows, dim, oh, ldo, 3); break;
        case 2: dot_heads_pass(type, qh, ldq, rows, stride, n_rows, dim, oh, ldo, 2); break;
        default: dot_rows(type, qh, rows, stride, n_rows, dim, oh); break;
        }
    }
}

static void v16_dot_rows_heads(ms_type_t row_type, const float *q, int64_t ldq, int nh, const void *rows,
                               int64_t stride, int64_t n_rows, int64_t dim, float *out, int64_t ldo)
{
    MS_ASSERT(row_type == MS_TYPE_F32 || row_type == MS_TYPE_F16);
    if (row_type == MS_TYPE_F16)
        dot_rows_heads(MS_TYPE_F16, q, ldq, nh, rows, stride, n_rows, dim, out, ldo);
    else
        dot_rows_heads(MS_TYPE_F32, q, ldq, nh, rows, stride, n_rows, dim, out, ldo);
}

/* out[h*ldo + 0..width) += sum_j w[h*ldw + j] * (rows + j*stride)[0..width)
 * for h < nh <= HA_HEADS, in nv vectors (width in (16 (nv - 1), 16 nv]).
 * Each out value gains its products one fused multiply-add at a time in row
 * order (the scalar kernel's order), where axpy_rows sums even and odd rows
 * apart: the (head, vector) chains are already enough. */
FORCE_INLINE void axpy_heads_tile(ms_type_t type, float *out, int64_t ldo, const float *w, int64_t ldw,
                                  const void *rows, int64_t stride, int64_t n_rows, int64_t width, const int nv,
                                  const int nh)
{
    __mmask16 m[AXPY_VECS];
    __m512 acc[HA_HEADS][AXPY_VECS];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++)
        m[v] = width - 16 * v >= 16 ? 0xffff : tail_mask(width - 16 * v);
#pragma GCC unroll 4
    for (int h = 0; h < nh; h++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            acc[h][v] = _mm512_maskz_loadu_ps(m[v], out + h * ldo + 16 * v);
    for (int64_t j = 0; j < n_rows; j++) {
        const void *rj = kv_at(type, rows, j * stride);
        __m512 x[AXPY_VECS];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            x[v] = kv_load_mask(type, kv_at(type, rj, 16 * v), m[v]);
#pragma GCC unroll 4
        for (int h = 0; h < nh; h++) {
            __m512 wh = _mm512_set1_ps(w[h * ldw + j]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[h][v] = _mm512_fmadd_ps(wh, x[v], acc[h][v]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < nh; h++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            _mm512_mask_storeu_ps(out + h * ldo + 16 * v, m[v], acc[h][v]);
}

/* axpy_heads_tile over the whole dim for nh >= 2 heads, in slices of
 * AXPY_VECS vectors. */
FORCE_INLINE void axpy_heads_pass(ms_type_t type, float *out, int64_t ldo, const float *w, int64_t ldw,
                                  const void *rows, int64_t stride, int64_t n_rows, int64_t dim, const int nh)
{
    for (int64_t c = 0; c < dim; c += 16 * AXPY_VECS) {
        int64_t width = dim - c < 16 * AXPY_VECS ? dim - c : 16 * AXPY_VECS;
        const void *rc = kv_at(type, rows, c);
        switch ((width + 15) / 16) {
        case 4: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 4, nh); break;
        case 3: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 3, nh); break;
        case 2: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 2, nh); break;
        default: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 1, nh); break;
        }
    }
}

/* A pass per HA_HEADS heads; a lone head is axpy_rows' (its even and odd
 * rows apart keep twice the chains going). */
FORCE_INLINE void axpy_rows_heads(ms_type_t type, float *out, int64_t ldo, const float *w, int64_t ldw, int nh,
                                  const void *rows, int64_t stride, int64_t n_rows, int64_t dim)
{
    for (int h = 0, hn; h < nh; h += hn) {
        hn = ms_kern_heads_next(nh - h, HA_HEADS);
        float *oh = out + h * ldo;
        const float *wh = w + h * ldw;
        switch (hn) {
        case 4: axpy_heads_pass(type, oh, ldo, wh, ldw, rows, stride, n_rows, dim, 4); break;
        case 3: axpy_heads_pass(type, oh, ldo, wh, ldw, rows, stride, n_rows, dim, 3); break;
        case 2: axpy_heads_pass(type, oh, ldo, wh, ldw, rows, stride, n_rows, dim, 2); break;
        default: axpy_rows(type, oh, wh, rows, stride, n_rows, dim); break;
        }
    }
}

static void v16_axpy_rows_heads(ms_type_t row_type, float *out, int64_t ldo, const float *w, int64_t ldw, int nh,
                                const void *rows, int64_t stride, int64_t n_rows, int64_t dim)
{
    MS_ASSERT(row_type == MS_TYPE_F32 || row_type == MS_TYPE_F16);
    if (row_type == MS_TYPE_F16)
        axpy_rows_heads(MS_TYPE_F16, out, ldo, w, ldw, nh, rows, stride, n_rows, dim);
    else
        axpy_rows_heads(MS_TYPE_F32, out, ldo, w, ldw, nh, rows, stride, n_rows, dim);
}

const ms_kernels_t ms_kernels_avx512 = {
    .name = "avx512",
    .dequant_row = v16_dequant_row,
    .quantize_act = v16_quantize_act,
    .matmul = v16_matmul,
    .dot_f32 = v16_dot_f32,
    .axpy = v16_axpy,
    .dot_rows = v16_dot_rows,
    .axpy_rows = v16_axpy_rows,
    .dot_rows_f16 = v16_dot_rows_f16,
    .axpy_rows_f16 = v16_axpy_rows_f16,
    .dot_rows_heads = v16_dot_rows_heads,
    .axpy_rows_heads = v16_axpy_rows_heads,
    .rmsnorm = v16_rmsnorm,
    .swiglu = v16_swiglu,
    .softmax = v16_softmax,
};
