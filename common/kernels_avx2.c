/* AVX2 + FMA + F16C kernels. Built with those flags and reached only through
 * ms_kernels_for() after the CPU check. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels_impl.h"
#include "ms_assert.h"

#define FORCE_INLINE static inline __attribute__((always_inline))

/* Tiles of MR weight rows x MT tokens; sized so accumulators and operands
 * fit the 16 ymm registers. */
#define Q8_MR 2
#define Q8_MT 4
#define PL_MR 2
#define PL_MT 4

FORCE_INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* v as it is, opaque to the optimiser: keeps a chain of integer sums in the
 * order written. Left to itself the compiler reassociates a block's 8 (or 32)
 * additions into a tree and spills the partial sums to the stack. */
FORCE_INLINE __m256i q8_chain(__m256i v)
{
    __asm__("" : "+x"(v));
    return v;
}

/* ---- Q8_0 x Q8_0 ---------------------------------------------------------
 * maddubs multiplies unsigned by signed bytes: |w| as unsigned and x with
 * w's sign applied. |w| <= 128 and |x| <= 127 keep each pair sum within
 * int16 (2 * 128 * 127 = 32512), so maddubs never saturates. */

/* A block's scale in all 8 lanes: the half broadcast, then converted once. */
FORCE_INLINE __m256 q8_scale(const ms_block_q8_0_t *b)
{
    return _mm256_cvtph_ps(_mm_set1_epi16((short)b->d));
}

FORCE_INLINE void q8_tile(const ms_block_q8_0_t *const *wr, const ms_block_q8_0_t *const *xt, int64_t nb,
                          float *y, int64_t ldy, const int nr, const int nt)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[Q8_MR][Q8_MT];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i w[Q8_MR], aw[Q8_MR];
        __m256 dw[Q8_MR];
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++) {
            w[i] = _mm256_loadu_si256((const __m256i *)wr[i][b].qs);
            aw[i] = _mm256_sign_epi8(w[i], w[i]);
            dw[i] = q8_scale(&wr[i][b]);
        }
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)xt[j][b].qs);
            __m256 dx = q8_scale(&xt[j][b]);
#pragma GCC unroll 4
            for (int i = 0; i < nr; i++) {
                __m256i p16 = _mm256_maddubs_epi16(aw[i], _mm256_sign_epi8(x, w[i]));
                __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[i][j] = _mm256_fmadd_ps(p, _mm256_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            y[j * ldy + i] = hsum8(acc[i][j]);
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

static const q8_tile_fn q8_tiles[Q8_MR][Q8_MT] = {
    { q8_tile_1_1, q8_tile_1_2, q8_tile_1_3, q8_tile_1_4 },
    { q8_tile_2_1, q8_tile_2_2, q8_tile_2_3, q8_tile_2_4 },
};

/* Row tiles outer, token tiles inner: a tile's weight rows stay in L1 while
 * every token passes over them. */
static void q8_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    int64_t nb = mm->n_in / MS_QK8_0;
    size_t xrow = (size_t)nb * sizeof(ms_block_q8_0_t);
    const ms_block_q8_0_t *w0 = mm->w;
    const char *xq = mm->xq;
    const ms_block_q8_0_t *wr[Q8_MR], *xt[Q8_MT];
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * xrow;
    for (int64_t r = r0; r < r1; r += Q8_MR) {
        int nr = r1 - r < Q8_MR ? (int)(r1 - r) : Q8_MR;
        for (int i = 0; i < nr; i++)
            wr[i] = w0 + (r + i) * nb;
        if (mm->n_tok == 1) /* decode: the rows stream once from memory */
            ms_kern_stream_avx2(wr[0], (size_t)nr * xrow, w_end);
        for (int64_t t = 0; t < mm->n_tok; t += Q8_MT) {
            int nt = mm->n_tok - t < Q8_MT ? (int)(mm->n_tok - t) : Q8_MT;
            for (int j = 0; j < nt; j++)
                xt[j] = (const void *)(xq + (size_t)(t + j) * xrow);
            q8_tiles[nr - 1][nt - 1](wr, xt, nb, mm->y + t * mm->ldy + r, mm->ldy);
        }
    }
}

/* ---- Q8_0 x Q8_0, 16 rows at a time (w_r16) ------------------------------
 * Matrices laid out 16 rows at a time at load time (kernels.h), one row a
 * lane as in the AVX-512 kernels, in two halves of 8 rows: chunk g of a
 * block holds each row's quants 4g..4g+3 (stored q + 128), multiplied by
 * the token's 4 quants 4g..4g+3 broadcast, with maddubs as above. The
 * integer sums are exact and the float steps are those kernels.h gives for
 * these kernels, so the bits are the scalar and AVX-512 kernels' on the
 * same packed matrix. */
#define Q8R16_NT 4
#define Q8R16_XB 512 /* blocks of per-block activation scales on the stack at a time */

/* One half (8 rows) of a block: chunk k's 32 bytes at c + 64 k, into nt
 * tokens' accumulators. */
FORCE_INLINE void q8r16_half(__m256 *acc, const uint8_t *c, __m256 dw, const ms_block_q8_0_t *const *xt,
                             const float *const *xd, int64_t b, int64_t bx, const int nt)
{
    const __m256i ones = _mm256_set1_epi16(1), bias = _mm256_set1_epi8((char)0x80);
    __m256i s[Q8R16_NT];
#pragma GCC unroll 4
    for (int j = 0; j < nt; j++)
        s[j] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        __m256i w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(c + 64 * k)), bias);
        __m256i aw = _mm256_abs_epi8(w);
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++) {
            int32_t v;
            memcpy(&v, xt[j][b].qs + 4 * k, 4);
            __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_set1_epi32(v), w));
            s[j] = q8_chain(_mm256_add_epi32(s[j], _mm256_madd_epi16(p, ones)));
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < nt; j++)
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[j]), _mm256_mul_ps(dw, _mm256_set1_ps(xd[j][bx])), acc[j]);
}

/* Tokens [t, t + nt) x rows [r0, r1) over blocks [b0, b1), the sums
 * carried in y when b0 > 0; 2 tokens or more (one token is
 * q8r16_pass_one's, which streams the weights). */
FORCE_INLINE void q8r16_pass(const ms_mm_t *mm, int64_t r0, int64_t r1, int64_t t, int64_t b0, int64_t b1,
                             const ms_block_q8_0_t *const *xt, const float *const *xd, const int nt)
{
    int64_t nb = mm->n_in / MS_QK8_0;
    size_t row = (size_t)nb * sizeof(ms_block_q8_0_t);
    for (int64_t g = r0 / MS_Q8_R16_ROWS * MS_Q8_R16_ROWS; g < r1; g += MS_Q8_R16_ROWS) {
        const char *gp = (const char *)mm->w + (size_t)g * row;
        for (int h = 0; h < 2; h++) {
            int64_t base = g + 8 * h;
            if (base >= r1 || base + 8 <= r0)
                continue;
            __m256 acc[Q8R16_NT];
            float out[Q8R16_NT][8];
#pragma GCC unroll 4
            for (int j = 0; j < nt; j++) {
                if (b0) /* lanes outside [r0, r1) are computed and not stored */
                    for (int i = 0; i < 8; i++)
                        out[j][i] = base + i >= r0 && base + i < r1 ? mm->y[(t + j) * mm->ldy + base + i] : 0.0f;
                acc[j] = b0 ? _mm256_loadu_ps(out[j]) : _mm256_setzero_ps();
            }
            for (int64_t b = b0; b < b1; b++) {
                size_t so, qo;
                ms_q8_r16_at(nb, b, &so, &qo);
                __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gp + so + 16 * h)));
                q8r16_half(acc, (const uint8_t *)gp + qo + 32 * h, dw, xt, xd, b, b - b0, nt);
            }
#pragma GCC unroll 4
            for (int j = 0; j < nt; j++) {
                _mm256_storeu_ps(out[j], acc[j]);
                for (int i = 0; i < 8; i++)
                    if (base + i >= r0 && base + i < r1)
                        mm->y[(t + j) * mm->ldy + base + i] = out[j][i];
            }
        }
    }
}

/* One token: both halves of a group in one pass over its blocks, so each
 * 64-byte chunk is read once, in order, and the token's 4 quants are
 * broadcast once for 16 rows (the halves-outer pass reads a group twice and
 * broadcasts twice: from memory 15.5-16.5 against 18.3-19.5 GB/s on 2
 * threads, docs/performance.md). The same sums and steps, so the same bits. */
static void q8r16_pass_one(const ms_mm_t *mm, int64_t r0, int64_t r1, int64_t t, int64_t b0, int64_t b1,
                           const ms_block_q8_0_t *const *xtp, const float *const *xdp)
{
    const ms_block_q8_0_t *xt = xtp[0];
    const float *xd = xdp[0];
    float *y = mm->y + t * mm->ldy;
    const bool stream = mm->n_tok == 1;
    const __m256i ones = _mm256_set1_epi16(1), bias = _mm256_set1_epi8((char)0x80);
    int64_t nb = mm->n_in / MS_QK8_0;
    size_t row = (size_t)nb * sizeof(ms_block_q8_0_t);
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * row;
    for (int64_t g = r0 / MS_Q8_R16_ROWS * MS_Q8_R16_ROWS; g < r1; g += MS_Q8_R16_ROWS) {
        const char *gp = (const char *)mm->w + (size_t)g * row;
        bool whole = g >= r0 && g + MS_Q8_R16_ROWS <= r1;
        float out[MS_Q8_R16_ROWS];
        if (b0) /* lanes outside [r0, r1) are computed and not stored */
            for (int i = 0; i < MS_Q8_R16_ROWS; i++)
                out[i] = g + i >= r0 && g + i < r1 ? y[g + i] : 0.0f;
        __m256 acc0 = b0 ? _mm256_loadu_ps(out) : _mm256_setzero_ps();
        __m256 acc1 = b0 ? _mm256_loadu_ps(out + 8) : _mm256_setzero_ps();
        for (int64_t b = b0; b < b1; b++) {
            if (stream)
                ms_kern_stream_avx2(gp + (size_t)b * MS_Q8_R16_BLOCK_BYTES, MS_Q8_R16_BLOCK_BYTES, w_end);
            size_t so, qo;
            ms_q8_r16_at(nb, b, &so, &qo);
            __m256 dx = _mm256_set1_ps(xd[b - b0]);
            __m256 dw0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gp + so)));
            __m256 dw1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gp + so + 16)));
            const uint8_t *c = (const uint8_t *)gp + qo;
            __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(c + 64 * k)), bias);
                __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(c + 64 * k + 32)), bias);
                int32_t v;
                memcpy(&v, xt[b].qs + 4 * k, 4);
                __m256i xv = _mm256_set1_epi32(v);
                __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(xv, w0));
                __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(xv, w1));
                s0 = q8_chain(_mm256_add_epi32(s0, _mm256_madd_epi16(p0, ones)));
                s1 = q8_chain(_mm256_add_epi32(s1, _mm256_madd_epi16(p1, ones)));
            }
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(dw0, dx), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(dw1, dx), acc1);
        }
        if (whole) {
            _mm256_storeu_ps(y + g, acc0);
            _mm256_storeu_ps(y + g + 8, acc1);
            continue;
        }
        _mm256_storeu_ps(out, acc0);
        _mm256_storeu_ps(out + 8, acc1);
        for (int i = 0; i < MS_Q8_R16_ROWS; i++)
            if (g + i >= r0 && g + i < r1)
                y[g + i] = out[i];
    }
}

typedef void (*q8r16_pass_fn)(const ms_mm_t *, int64_t, int64_t, int64_t, int64_t, int64_t,
                              const ms_block_q8_0_t *const *, const float *const *);

#define Q8R16_PASS(NT)                                                                                        \
    static void q8r16_pass_##NT(const ms_mm_t *mm, int64_t r0, int64_t r1, int64_t t, int64_t b0, int64_t b1, \
                                const ms_block_q8_0_t *const *xt, const float *const *xd)                     \
    {                                                                                                         \
        q8r16_pass(mm, r0, r1, t, b0, b1, xt, xd, NT);                                                        \
    }
Q8R16_PASS(2) Q8R16_PASS(3) Q8R16_PASS(4)

static const q8r16_pass_fn q8r16_passes[Q8R16_NT] = { q8r16_pass_one, q8r16_pass_2, q8r16_pass_3, q8r16_pass_4 };

/* Token tiles outer, rows inner: a thread's rows of one call stay in L2
 * while the token tiles go over them. */
static void q8r16_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    int64_t nb = mm->n_in / MS_QK8_0;
    size_t xrow = (size_t)nb * sizeof(ms_block_q8_0_t);
    float xdb[Q8R16_NT][Q8R16_XB];
    const ms_block_q8_0_t *xt[Q8R16_NT];
    const float *xd[Q8R16_NT];
    for (int64_t t = 0; t < mm->n_tok; t += Q8R16_NT) {
        int nt = mm->n_tok - t < Q8R16_NT ? (int)(mm->n_tok - t) : Q8R16_NT;
        for (int j = 0; j < nt; j++) {
            xt[j] = (const void *)((const char *)mm->xq + (size_t)(t + j) * xrow);
            xd[j] = xdb[j];
        }
        for (int64_t b0 = 0; b0 < nb; b0 += Q8R16_XB) {
            int64_t b1 = nb - b0 < Q8R16_XB ? nb : b0 + Q8R16_XB;
            for (int j = 0; j < nt; j++)
                for (int64_t b = b0; b < b1; b++)
                    xdb[j][b - b0] = _cvtsh_ss(xt[j][b].d);
            q8r16_passes[nt - 1](mm, r0, r1, t, b0, b1, xt, xd);
        }
    }
}

/* ---- F32 / F16 / BF16 weights x f32 activations ------------------------ */

FORCE_INLINE __m256 pl_load_w(ms_type_t type, const void *row, int64_t c)
{
    if (type == MS_TYPE_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
    if (type == MS_TYPE_BF16) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    }
    return _mm256_loadu_ps((const float *)row + c);
}

FORCE_INLINE float pl_weight(ms_type_t type, const void *row, int64_t c)
{
    if (type == MS_TYPE_F16)
        return _cvtsh_ss(((const uint16_t *)row)[c]);
    if (type == MS_TYPE_BF16)
        return ms_bf16_to_f32(((const uint16_t *)row)[c]);
    return ((const float *)row)[c];
}

FORCE_INLINE void pl_tile(ms_type_t type, const char *const *wr, const float *const *xt, int64_t n,
                          float *y, int64_t ldy, const int nr, const int nt)
{
    __m256 acc[PL_MR][PL_MT];
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++)
            acc[i][j] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        __m256 w[PL_MR];
#pragma GCC unroll 4
        for (int i = 0; i < nr; i++)
            w[i] = pl_load_w(type, wr[i], c);
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++) {
            __m256 x = _mm256_loadu_ps(xt[j] + c);
#pragma GCC unroll 4
            for (int i = 0; i < nr; i++)
                acc[i][j] = _mm256_fmadd_ps(w[i], x, acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 4
        for (int j = 0; j < nt; j++) {
            float s = hsum8(acc[i][j]);
            for (int64_t k = c; k < n; k++)
                s += pl_weight(type, wr[i], k) * xt[j][k];
            y[j * ldy + i] = s;
        }
}

typedef void (*pl_tile_fn)(const char *const *, const float *const *, int64_t, float *, int64_t);

#define PL_TILE(TY, NAME, NR, NT)                                                                           \
    static void pl_##NAME##_##NR##_##NT(const char *const *wr, const float *const *xt, int64_t n, float *y, \
                                        int64_t ldy)                                                        \
    {                                                                                                       \
        pl_tile(TY, wr, xt, n, y, ldy, NR, NT);                                                             \
    }
#define PL_TILES(TY, NAME) \
    PL_TILE(TY, NAME, 1, 1) PL_TILE(TY, NAME, 1, 4) PL_TILE(TY, NAME, 2, 1) PL_TILE(TY, NAME, 2, 4)
PL_TILES(MS_TYPE_F32, f32)
PL_TILES(MS_TYPE_F16, f16)
PL_TILES(MS_TYPE_BF16, bf16)

/* [type: f32, f16, bf16][full row tile][full token tile] */
static const pl_tile_fn pl_tiles[3][2][2] = {
    { { pl_f32_1_1, pl_f32_1_4 }, { pl_f32_2_1, pl_f32_2_4 } },
    { { pl_f16_1_1, pl_f16_1_4 }, { pl_f16_2_1, pl_f16_2_4 } },
    { { pl_bf16_1_1, pl_bf16_1_4 }, { pl_bf16_2_1, pl_bf16_2_4 } },
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
            ms_kern_stream_avx2(wr[0], (size_t)nr * wrow, w_end);
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

static void v8_matmul(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    if (!ms_kern_job_ok(mm))
        ms_kern_fill_nan(mm, r0, r1);
    else if (mm->type == MS_TYPE_Q8_0 && mm->w_r16)
        q8r16_matmul(mm, r0, r1);
    else if (mm->type == MS_TYPE_Q8_0)
        q8_matmul(mm, r0, r1);
    else if (ms_kq_handles(mm->type))
        ms_kq_matmul_avx2(mm, r0, r1);
    else
        pl_matmul(mm, r0, r1);
}

/* ---- dequantisation and activation quantisation ----------------------- */

static void v8_dequant_q8_0(const ms_block_q8_0_t *b, float *dst, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        __m256 d = q8_scale(&b[i]);
        for (int k = 0; k < MS_QK8_0; k += 8) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(b[i].qs + k));
            __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            _mm256_storeu_ps(dst + i * MS_QK8_0 + k, _mm256_mul_ps(d, v));
        }
    }
}

static void v8_dequant_plain(ms_type_t type, const void *src, float *dst, int64_t n)
{
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        _mm256_storeu_ps(dst + c, pl_load_w(type, src, c));
    for (; c < n; c++)
        dst[c] = pl_weight(type, src, c);
}

static void v8_dequant_row(ms_type_t type, const void *src, float *dst, int64_t n)
{
    if (type == MS_TYPE_Q8_0 && n % MS_QK8_0 == 0)
        v8_dequant_q8_0(src, dst, n / MS_QK8_0);
    else if (type == MS_TYPE_F32 || type == MS_TYPE_F16 || type == MS_TYPE_BF16)
        v8_dequant_plain(type, src, dst, n);
    else
        ms_kernels_scalar.dequant_row(type, src, dst, n);
}

/* roundf(v) (half away from zero) then clamp to [-127, 127], NaN to -127:
 * bit-identical to the scalar path. v - trunc(v) is exact. */
FORCE_INLINE __m256i q8_round(__m256 v)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, v));
    __m256 r = _mm256_add_ps(t, _mm256_and_ps(up, one));
    r = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(r, _mm256_set1_ps(-127.0f)));
    return _mm256_cvtps_epi32(r);
}

/* The largest |value| of the 32 at xb. max_ps returns its second operand
 * when either is NaN: NaN inputs are skipped as the scalar's fmaxf chain
 * skips them. */
FORCE_INLINE float q8_block_amax(const float *xb)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++)
        m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xb + 8 * k), abs_mask), m);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

/* The 32 values at xb times id, rounded, into qs. */
FORCE_INLINE void q8_block_store(const float *xb, __m256 id, int8_t *qs)
{
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = q8_round(_mm256_mul_ps(_mm256_loadu_ps(xb + 8 * k), id));
    /* packs work per 128-bit lane; the permute restores element order */
    __m256i q16a = _mm256_packs_epi32(q[0], q[1]);
    __m256i q16b = _mm256_packs_epi32(q[2], q[3]);
    __m256i q8 = _mm256_packs_epi16(q16a, q16b);
    q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, q8);
}

/* Eight blocks at a time, their scales in one vector: d = amax / 127 and
 * 1 / d by vector divisions (the scalar's IEEE divisions, so the same
 * values) and d to f16 by F16C, which rounds to nearest even, subnormals and
 * overflow to inf included, as ms_f32_to_f16 does (amax is never NaN). The
 * scalar steps per block (two divisions in a chain, a branchy f16
 * conversion) had cost as much as the rest of the block. */
static void v8_quantize_q8_0(const float *x, int64_t n, ms_block_q8_0_t *y)
{
    int64_t nb = n / MS_QK8_0, i = 0;
    for (; i + 8 <= nb; i += 8) {
        float amax[8], idv[8];
        uint16_t dh[8];
        for (int j = 0; j < 8; j++)
            amax[j] = q8_block_amax(x + (i + j) * MS_QK8_0);
        __m256 d = _mm256_div_ps(_mm256_loadu_ps(amax), _mm256_set1_ps(127.0f));
        __m256 nz = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_OQ);
        _mm256_storeu_ps(idv, _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), d), nz));
        _mm_storeu_si128((__m128i *)dh, _mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        for (int j = 0; j < 8; j++) {
            y[i + j].d = dh[j];
            q8_block_store(x + (i + j) * MS_QK8_0, _mm256_set1_ps(idv[j]), y[i + j].qs);
        }
    }
    for (; i < nb; i++) {
        const float *xb = x + i * MS_QK8_0;
        q8_block_store(xb, _mm256_set1_ps(ms_kern_q8_inv_scale(q8_block_amax(xb), &y[i].d)), y[i].qs);
    }
}

/* Q8_K: one f32 scale per 256 values, quants as v8_quantize_q8_0 rounds them. */
static void v8_quantize_q8_K(const float *x, int64_t n, ms_block_q8_K_t *y)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        const float *xb = x + i * MS_QK_K;
        __m256 m = _mm256_setzero_ps(); /* NaN skipped, as in v8_quantize_q8_0 */
        for (int k = 0; k < MS_QK_K; k += 8)
            m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xb + k), abs_mask), m);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float d = _mm_cvtss_f32(m4) / 127.0f;
        __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
        y[i].d = d;
        for (int k = 0; k < MS_QK_K; k += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; j++)
                q[j] = q8_round(_mm256_mul_ps(_mm256_loadu_ps(xb + k + 8 * j), id));
            __m256i q8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(y[i].qs + k), q8);
        }
        ms_kq_q8_K_bsums(&y[i]);
    }
}

static void v8_quantize_act(ms_type_t type, const float *x, int64_t n, void *xq)
{
    if (type == MS_TYPE_Q8_0 || type == MS_TYPE_Q4_0)
        v8_quantize_q8_0(x, n, xq);
    else if (ms_kq_handles(type))
        v8_quantize_q8_K(x, n, xq);
}

/* ---- f32 vector helpers ------------------------------------------------ */

/* Lanes [0, rem) set; rem may exceed 8. */
FORCE_INLINE __m256i tail_mask(int64_t rem)
{
    int r = rem > 8 ? 8 : (int)rem;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* The first min(rem, 8) floats at p, the other lanes 0, and the store of
 * as many. A whole vector goes through a plain load or store and only a
 * tail is masked: on AMD's Zen a masked store (VMASKMOVPS to memory) takes
 * some 9 ns a vector against 1.5 for a plain one (measured on the Zen 3
 * machine, docs/performance.md), which made the f32 helpers below (RMSNorm,
 * SwiGLU, softmax) several times slower there than their arithmetic. */
FORCE_INLINE __m256 load_n(const float *p, int64_t rem)
{
    return rem >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail_mask(rem));
}

FORCE_INLINE void store_n(float *p, int64_t rem, __m256 v)
{
    if (rem >= 8)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, tail_mask(rem), v);
}

static float v8_dot_f32(const float *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i < n; i += 8) {
        __m256i m = tail_mask(n - i);
        s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s0);
    }
    return hsum8(_mm256_add_ps(s0, s1));
}

static void v8_axpy(float *y, float a, const float *x, int64_t n)
{
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        __m256i m = tail_mask(n - i);
        __m256 v = _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m));
        _mm256_maskstore_ps(y + i, m, v);
    }
}

static void v8_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    __m256 ss = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 v = load_n(x + i, n - i);
        ss = _mm256_fmadd_ps(v, v, ss);
    }
    double mean = (double)hsum8(ss) / (double)(n > 0 ? n : 1);
    __m256 scale = _mm256_set1_ps((float)(1.0 / sqrt(mean + eps)));
    for (int64_t i = 0; i < n; i += 8) {
        __m256 v = _mm256_mul_ps(load_n(x + i, n - i), scale);
        if (w)
            v = _mm256_mul_ps(v, load_n(w + i, n - i));
        store_n(out + i, n - i, v);
    }
}

/* exp(x) with relative error below 5e-7 (not correctly rounded expf):
 * x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its
 * degree-6 Taylor polynomial (truncation < 1.3e-7), and 2^n applied as two
 * factors 2^(n/2) so overflow gives inf and underflow subnormals/0. NaN
 * stays NaN (max/min return their second operand for NaN). */
FORCE_INLINE __m256 v8_exp(__m256 x)
{
    x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1);
    __m256i n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

static void v8_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 8) {
        __m256 g = load_n(gate + i, n - i);
        __m256 e = v8_exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 v = _mm256_div_ps(_mm256_mul_ps(g, load_n(up + i, n - i)), _mm256_add_ps(one, e));
        store_n(out + i, n - i, v);
    }
}

static void v8_softmax(float *x, int64_t n)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 vmax = ninf;
    for (int64_t i = 0; i < n; i += 8) {
        __m256 v;
        if (n - i >= 8) {
            v = _mm256_loadu_ps(x + i);
        } else { /* the lanes past the end count as -inf */
            __m256i m = tail_mask(n - i);
            v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + i, m), _mm256_castsi256_ps(m));
        }
        vmax = _mm256_max_ps(v, vmax);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    __m256 mx = _mm256_set1_ps(_mm_cvtss_f32(m4));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 e = v8_exp(_mm256_sub_ps(load_n(x + i, n - i), mx));
        if (n - i < 8)
            e = _mm256_and_ps(e, _mm256_castsi256_ps(tail_mask(n - i)));
        sum = _mm256_add_ps(sum, e);
        store_n(x + i, n - i, e);
    }
    __m256 inv = _mm256_set1_ps(1.0f / hsum8(sum));
    for (int64_t i = 0; i < n; i += 8)
        store_n(x + i, n - i, _mm256_mul_ps(load_n(x + i, n - i), inv));
}

/* ---- attention over cached rows ------------------------------------------
 * Scores take DOT_ROWS rows per pass: each query vector loaded serves them
 * all and their sums reduce together. The weighted sum keeps an
 * AXPY_VECS-vector slice of out in registers across all rows (two sets, even
 * and odd rows, so twice as many FMA chains run at once). The rows are f32
 * or f16 (type, a constant in each caller): f16 values widen exactly and
 * then take the f32 path's arithmetic, so both give the same bits on the
 * same values. */
#define DOT_ROWS 4
#define AXPY_VECS 4

/* Element i of rows (f32 or f16). */
FORCE_INLINE const void *kv_at(ms_type_t type, const void *rows, int64_t i)
{
    if (type == MS_TYPE_F16)
        return (const uint16_t *)rows + i;
    return (const float *)rows + i;
}

/* The 8 values at row as f32. */
FORCE_INLINE __m256 kv_load(ms_type_t type, const void *row)
{
    return pl_load_w(type, row, 0);
}

/* The first min(rem, 8) values at row as f32, the other lanes 0; m =
 * tail_mask(rem). Nothing past them is read: AVX2 has no masked 16-bit
 * load, so a partial f16 vector goes through a zeroed buffer (+0, as
 * maskload gives). */
FORCE_INLINE __m256 kv_load_part(ms_type_t type, const void *row, int64_t rem, __m256i m)
{
    if (type != MS_TYPE_F16)
        return _mm256_maskload_ps(row, m);
    if (rem >= 8)
        return kv_load(type, row);
    uint16_t h[8] = { 0 };
    memcpy(h, row, (size_t)rem * sizeof(h[0]));
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* Lane r of the result = sum of a_r's lanes. */
FORCE_INLINE __m128 hsum4x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* out[r] = q . (rows + r*stride)[0..dim) for r < nr <= DOT_ROWS. */
FORCE_INLINE void dot_tile(ms_type_t type, const float *q, const void *rows, int64_t stride, int64_t dim,
                           float *out, const int nr)
{
    __m256 acc[DOT_ROWS][2];
#pragma GCC unroll 4
    for (int r = 0; r < DOT_ROWS; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        __m256 q0 = _mm256_loadu_ps(q + i), q1 = _mm256_loadu_ps(q + i + 8);
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            acc[r][0] = _mm256_fmadd_ps(q0, kv_load(type, kv_at(type, rows, r * stride + i)), acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(q1, kv_load(type, kv_at(type, rows, r * stride + i + 8)), acc[r][1]);
        }
    }
    for (; i < dim; i += 8) {
        __m256i m = tail_mask(dim - i);
        __m256 qv = _mm256_maskload_ps(q + i, m);
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++)
            acc[r][0] =
                _mm256_fmadd_ps(qv, kv_load_part(type, kv_at(type, rows, r * stride + i), dim - i, m), acc[r][0]);
    }
    __m128 s = hsum4x8(_mm256_add_ps(acc[0][0], acc[0][1]), _mm256_add_ps(acc[1][0], acc[1][1]),
                       _mm256_add_ps(acc[2][0], acc[2][1]), _mm256_add_ps(acc[3][0], acc[3][1]));
    if (nr == DOT_ROWS)
        _mm_storeu_ps(out, s);
    else
        _mm_maskstore_ps(out, _mm_cmpgt_epi32(_mm_set1_epi32(nr), _mm_setr_epi32(0, 1, 2, 3)), s);
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

static void v8_dot_rows(const float *q, const float *rows, int64_t stride, int64_t n_rows, int64_t dim, float *out)
{
    dot_rows(MS_TYPE_F32, q, rows, stride, n_rows, dim, out);
}

static void v8_dot_rows_f16(const float *q, const uint16_t *rows, int64_t stride, int64_t n_rows, int64_t dim,
                            float *out)
{
    dot_rows(MS_TYPE_F16, q, rows, stride, n_rows, dim, out);
}

/* out[0..width) += sum_j w[j] * (rows + j*stride)[0..width), in nv vectors
 * (width in (8 (nv - 1), 8 nv]): all but the last are whole. */
FORCE_INLINE void axpy_slice(ms_type_t type, float *out, const float *w, const void *rows, int64_t stride,
                             int64_t n_rows, int64_t width, const int nv)
{
    const int64_t last = width - 8 * (nv - 1);
    const __m256i ml = tail_mask(last);
    __m256 a[AXPY_VECS], b[AXPY_VECS];
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        a[v] = v < nv - 1 ? _mm256_loadu_ps(out + 8 * v) : _mm256_maskload_ps(out + 8 * v, ml);
        b[v] = _mm256_setzero_ps();
    }
    int64_t j = 0;
    for (; j + 2 <= n_rows; j += 2) {
        const void *r0 = kv_at(type, rows, j * stride), *r1 = kv_at(type, r0, stride);
        __m256 w0 = _mm256_set1_ps(w[j]), w1 = _mm256_set1_ps(w[j + 1]);
#pragma GCC unroll 4
        for (int v = 0; v < nv - 1; v++) {
            a[v] = _mm256_fmadd_ps(w0, kv_load(type, kv_at(type, r0, 8 * v)), a[v]);
            b[v] = _mm256_fmadd_ps(w1, kv_load(type, kv_at(type, r1, 8 * v)), b[v]);
        }
        a[nv - 1] = _mm256_fmadd_ps(w0, kv_load_part(type, kv_at(type, r0, 8 * (nv - 1)), last, ml), a[nv - 1]);
        b[nv - 1] = _mm256_fmadd_ps(w1, kv_load_part(type, kv_at(type, r1, 8 * (nv - 1)), last, ml), b[nv - 1]);
    }
    if (j < n_rows) {
        const void *r0 = kv_at(type, rows, j * stride);
        __m256 w0 = _mm256_set1_ps(w[j]);
#pragma GCC unroll 4
        for (int v = 0; v < nv - 1; v++)
            a[v] = _mm256_fmadd_ps(w0, kv_load(type, kv_at(type, r0, 8 * v)), a[v]);
        a[nv - 1] = _mm256_fmadd_ps(w0, kv_load_part(type, kv_at(type, r0, 8 * (nv - 1)), last, ml), a[nv - 1]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv - 1; v++)
        _mm256_storeu_ps(out + 8 * v, _mm256_add_ps(a[v], b[v]));
    store_n(out + 8 * (nv - 1), last, _mm256_add_ps(a[nv - 1], b[nv - 1]));
}

FORCE_INLINE void axpy_rows(ms_type_t type, float *out, const float *w, const void *rows, int64_t stride,
                            int64_t n_rows, int64_t dim)
{
    for (int64_t c = 0; c < dim; c += 8 * AXPY_VECS) {
        int64_t width = dim - c < 8 * AXPY_VECS ? dim - c : 8 * AXPY_VECS;
        switch ((width + 7) / 8) {
        case 4: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 4); break;
        case 3: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 3); break;
        case 2: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 2); break;
        default: axpy_slice(type, out + c, w, kv_at(type, rows, c), stride, n_rows, width, 1); break;
        }
    }
}

static void v8_axpy_rows(float *out, const float *w, const float *rows, int64_t stride, int64_t n_rows, int64_t dim)
{
    axpy_rows(MS_TYPE_F32, out, w, rows, stride, n_rows, dim);
}

static void v8_axpy_rows_f16(float *out, const float *w, const uint16_t *rows, int64_t stride, int64_t n_rows,
                             int64_t dim)
{
    axpy_rows(MS_TYPE_F16, out, w, rows, stride, n_rows, dim);
}

/* ---- several query heads over the same cached rows -----------------------
 * A KV group's heads read the same rows: a tile here loads (and widens) each
 * row vector once for all its heads. Scores take two rows x up to HD_HEADS
 * heads at a time through the dim (8 accumulators, 4 row vectors, each
 * query vector loaded once for both rows: 8 loads per 8 FMAs, where one row
 * x four heads needs 10), and HD_ROWS rows (two such pairs) per reduction.
 * More heads take more passes over the same rows, still in L1.
 * Per (row, head) the arithmetic is dot_tile's exactly: the same two
 * accumulators over the 16-value steps, the same 8-value tail, their sum
 * reduced as hsum4x8 reduces it, hence dot_rows' bits. The weighted sum
 * keeps a slice of up to HA_HEADS heads' outputs in registers across all
 * rows. */
#define HD_ROWS 4
#define HD_HEADS 2
#define HA_HEADS 4

/* v, kept in a register: GCC otherwise folds a vector's load into every
 * FMA that uses it, loading it once per use. */
FORCE_INLINE __m256 in_reg(__m256 v)
{
    __asm__("" : "+x"(v));
    return v;
}

/* The steps of hsum4x8's reduction of one vector (adjacent pairs, pairs of
 * pairs, the two halves), each on two registers of vectors side by side.
 * Some additions take their operands the other way round: the same sums,
 * bit for bit (only which payload survives two NaN operands could differ).
 * fold_pairs: in each 128-bit lane (x0 + x1, y0 + y1, x2 + x3, y2 + y3). */
FORCE_INLINE __m256 fold_pairs(__m256 x, __m256 y)
{
    __m256 sw = _mm256_permute_ps(_mm256_blend_ps(y, x, 0xaa), _MM_SHUFFLE(2, 3, 0, 1));
    return _mm256_add_ps(_mm256_blend_ps(x, y, 0xaa), sw);
}

/* In each 128-bit lane (x0 + x2, x1 + x3, y0 + y2, y1 + y3). */
FORCE_INLINE __m256 fold_quads(__m256 x, __m256 y)
{
    __m256 sw = _mm256_permute_ps(_mm256_blend_ps(y, x, 0xcc), _MM_SHUFFLE(1, 0, 3, 2));
    return _mm256_add_ps(_mm256_blend_ps(x, y, 0xcc), sw);
}

/* (x's 128-bit lanes added, y's added). */
FORCE_INLINE __m256 fold_lanes(__m256 x, __m256 y)
{
    return _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31));
}

/* s[h*2 + r] = the sum of dot_tile's two accumulators for q + h*ldq against
 * rows + r*stride, for r < nr <= 2, h < nh <= HD_HEADS. */
FORCE_INLINE void dot_heads_pair(ms_type_t type, const float *q, int64_t ldq, const void *rows, int64_t stride,
                                 int64_t dim, __m256 *s, const int nr, const int nh)
{
    __m256 acc[HD_HEADS][2][2];
#pragma GCC unroll 2
    for (int h = 0; h < nh; h++)
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++)
            acc[h][r][0] = acc[h][r][1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= dim; i += 16) {
        __m256 x[2][2];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            x[r][0] = in_reg(kv_load(type, kv_at(type, rows, r * stride + i)));
            x[r][1] = in_reg(kv_load(type, kv_at(type, rows, r * stride + i + 8)));
        }
#pragma GCC unroll 2
        for (int h = 0; h < nh; h++) {
            __m256 q0 = in_reg(_mm256_loadu_ps(q + h * ldq + i)), q1 = in_reg(_mm256_loadu_ps(q + h * ldq + i + 8));
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) {
                acc[h][r][0] = _mm256_fmadd_ps(q0, x[r][0], acc[h][r][0]);
                acc[h][r][1] = _mm256_fmadd_ps(q1, x[r][1], acc[h][r][1]);
            }
        }
    }
    for (; i < dim; i += 8) {
        __m256i m = tail_mask(dim - i);
        __m256 x[2];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++)
            x[r] = kv_load_part(type, kv_at(type, rows, r * stride + i), dim - i, m);
#pragma GCC unroll 2
        for (int h = 0; h < nh; h++) {
            __m256 qv = _mm256_maskload_ps(q + h * ldq + i, m);
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++)
                acc[h][r][0] = _mm256_fmadd_ps(qv, x[r], acc[h][r][0]);
        }
    }
#pragma GCC unroll 2
    for (int h = 0; h < nh; h++)
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++)
            s[h * 2 + r] = _mm256_add_ps(acc[h][r][0], acc[h][r][1]);
}

/* out[h*ldo + r] = (q + h*ldq) . (rows + r*stride)[0..dim) for r < nr <= HD_ROWS,
 * h < nh <= HD_HEADS: row pairs p = 0, 1, each folded to one register per
 * head before the next pair's accumulators need theirs. */
FORCE_INLINE void dot_heads_tile(ms_type_t type, const float *q, int64_t ldq, const void *rows, int64_t stride,
                                 int64_t dim, float *out, int64_t ldo, const int nr, const int nh)
{
    __m256 u0[2], u1[2];
#pragma GCC unroll 2
    for (int p = 0; p < 2; p++) {
        __m256 s[2 * HD_HEADS];
#pragma GCC unroll 4
        for (int k = 0; k < 2 * HD_HEADS; k++)
            s[k] = _mm256_setzero_ps();
        int np = nr - 2 * p < 2 ? nr - 2 * p : 2;
        if (np == 2)
            dot_heads_pair(type, q, ldq, kv_at(type, rows, 2 * p * stride), stride, dim, s, 2, nh);
        else if (np == 1)
            dot_heads_pair(type, q, ldq, kv_at(type, rows, 2 * p * stride), stride, dim, s, 1, nh);
        /* u0[p]: head 0's rows 2p and 2p+1 summed down to pairs of lanes
         * (in each 128-bit lane); u1[p] head 1's */
        u0[p] = fold_pairs(s[0], s[1]);
        u1[p] = fold_pairs(s[2], s[3]);
    }
    /* 128-bit lane h: head h's rows 0..3 */
    __m256 v = fold_lanes(fold_quads(u0[0], u0[1]), fold_quads(u1[0], u1[1]));
    const __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32(nr), _mm_setr_epi32(0, 1, 2, 3));
#pragma GCC unroll 2
    for (int h = 0; h < nh; h++) {
        __m128 vh = h == 0 ? _mm256_castps256_ps128(v) : _mm256_extractf128_ps(v, 1);
        if (nr == 4)
            _mm_storeu_ps(out + h * ldo, vh);
        else
            _mm_maskstore_ps(out + h * ldo, m, vh);
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
        if (hn == 2)
            dot_heads_pass(type, qh, ldq, rows, stride, n_rows, dim, oh, ldo, 2);
        else
            dot_rows(type, qh, rows, stride, n_rows, dim, oh);
    }
}

static void v8_dot_rows_heads(ms_type_t row_type, const float *q, int64_t ldq, int nh, const void *rows,
                              int64_t stride, int64_t n_rows, int64_t dim, float *out, int64_t ldo)
{
    MS_ASSERT(row_type == MS_TYPE_F32 || row_type == MS_TYPE_F16);
    if (row_type == MS_TYPE_F16)
        dot_rows_heads(MS_TYPE_F16, q, ldq, nh, rows, stride, n_rows, dim, out, ldo);
    else
        dot_rows_heads(MS_TYPE_F32, q, ldq, nh, rows, stride, n_rows, dim, out, ldo);
}

/* out[h*ldo + 0..width) += sum_j w[h*ldw + j] * (rows + j*stride)[0..width)
 * for h < nh <= HA_HEADS, in nv vectors (width in (8 (nv - 1), 8 nv]): all
 * but the last are whole. Each out value gains its products one fused
 * multiply-add at a time in row order (the scalar kernel's order), where
 * axpy_rows sums even and odd rows apart: the (head, vector) chains are
 * already enough. */
FORCE_INLINE void axpy_heads_tile(ms_type_t type, float *out, int64_t ldo, const float *w, int64_t ldw,
                                  const void *rows, int64_t stride, int64_t n_rows, int64_t width, const int nv,
                                  const int nh)
{
    const int64_t last = width - 8 * (nv - 1);
    const __m256i ml = tail_mask(last);
    __m256 acc[HA_HEADS][AXPY_VECS];
#pragma GCC unroll 4
    for (int h = 0; h < nh; h++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv - 1; v++)
            acc[h][v] = _mm256_loadu_ps(out + h * ldo + 8 * v);
        acc[h][nv - 1] = _mm256_maskload_ps(out + h * ldo + 8 * (nv - 1), ml);
    }
    for (int64_t j = 0; j < n_rows; j++) {
        const void *rj = kv_at(type, rows, j * stride);
        __m256 x[AXPY_VECS];
#pragma GCC unroll 4
        for (int v = 0; v < nv - 1; v++)
            x[v] = kv_load(type, kv_at(type, rj, 8 * v));
        x[nv - 1] = kv_load_part(type, kv_at(type, rj, 8 * (nv - 1)), last, ml);
#pragma GCC unroll 4
        for (int h = 0; h < nh; h++) {
            __m256 wh = _mm256_broadcast_ss(w + h * ldw + j);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[h][v] = _mm256_fmadd_ps(wh, x[v], acc[h][v]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < nh; h++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv - 1; v++)
            _mm256_storeu_ps(out + h * ldo + 8 * v, acc[h][v]);
        store_n(out + h * ldo + 8 * (nv - 1), last, acc[h][nv - 1]);
    }
}

/* axpy_heads_tile over the whole dim for 2 <= nh <= 4 heads, in slices of
 * 4 vectors for 2 heads and 3 for more: 8 to 12 accumulator chains (FMA
 * latency 4, two a cycle), with the row vectors and a weight at most the 16
 * registers (4 heads x 3 vectors took 10-15 % less time than x 2). */
FORCE_INLINE void axpy_heads_pass(ms_type_t type, float *out, int64_t ldo, const float *w, int64_t ldw,
                                  const void *rows, int64_t stride, int64_t n_rows, int64_t dim, const int nh)
{
    const int vmax = nh == 2 ? 4 : 3;
    for (int64_t c = 0; c < dim; c += 8 * vmax) {
        int64_t width = dim - c < 8 * vmax ? dim - c : 8 * vmax;
        const void *rc = kv_at(type, rows, c);
        switch ((width + 7) / 8) {
        case 4: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 4, nh); break;
        case 3: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 3, nh); break;
        case 2: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 2, nh); break;
        default: axpy_heads_tile(type, out + c, ldo, w, ldw, rc, stride, n_rows, width, 1, nh); break;
        }
    }
}

/* A pass per HA_HEADS heads; a lone head is axpy_rows' (its even and odd
 * rows apart keep 8 chains going). */
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

static void v8_axpy_rows_heads(ms_type_t row_type, float *out, int64_t ldo, const float *w, int64_t ldw, int nh,
                               const void *rows, int64_t stride, int64_t n_rows, int64_t dim)
{
    MS_ASSERT(row_type == MS_TYPE_F32 || row_type == MS_TYPE_F16);
    if (row_type == MS_TYPE_F16)
        axpy_rows_heads(MS_TYPE_F16, out, ldo, w, ldw, nh, rows, stride, n_rows, dim);
    else
        axpy_rows_heads(MS_TYPE_F32, out, ldo, w, ldw, nh, rows, stride, n_rows, dim);
}

const ms_kernels_t ms_kernels_avx2 = {
    .name = "avx2",
    .dequant_row = v8_dequant_row,
    .quantize_act = v8_quantize_act,
    .matmul = v8_matmul,
    .dot_f32 = v8_dot_f32,
    .axpy = v8_axpy,
    .dot_rows = v8_dot_rows,
    .axpy_rows = v8_axpy_rows,
    .dot_rows_f16 = v8_dot_rows_f16,
    .axpy_rows_f16 = v8_axpy_rows_f16,
    .dot_rows_heads = v8_dot_rows_heads,
    .axpy_rows_heads = v8_axpy_rows_heads,
    .rmsnorm = v8_rmsnorm,
    .swiglu = v8_swiglu,
    .softmax = v8_softmax,
};
