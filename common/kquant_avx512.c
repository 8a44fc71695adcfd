/* AVX-512 (BW + VNNI) dot products for Q4_0 and the k-quants, 64 quants per
 * instruction. Built with AVX-512 flags and reached only after the CPU check.
 * Integer sums per block are exact (maddubs then the scales through madd or
 * dpwssd; dpbusd for Q4_0). Q4_K and Q6_K then accumulate in vector lanes as
 * kquant_avx2.c does; Q4_0, Q2_K, Q3_K and Q5_K reduce each block's sums to
 * integers and take the scalar path's float step in its order, so their
 * results equal ms_kq_dot bit for bit. */
#include <immintrin.h>
#include <string.h>

#include "kernels_impl.h"
#include "kquant.h"
#include "kquant_x86.h"

/* 32 bytes at a in the low half, 32 bytes at b in the high half. */
FORCE_INLINE __m512i load_2x32(const void *a, const void *b)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* int16 lanes: 16 x scale a, then 16 x scale b (indices into an 8-lane vector). */
FORCE_INLINE __m512i scale_idx(int a, int b)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)a)), _mm256_set1_epi16((short)b), 1);
}

/* ---- Q4_K x Q8_K ----------------------------------------------------------
 * 64 bytes of qs hold sub-blocks 4k (low nibbles of the first 32), 4k+2 (low
 * nibbles of the last 32), 4k+1 and 4k+3 (the high nibbles): the activation
 * halves are gathered to match. */

/* The activation side of one super-block: its quants gathered to match the
 * weight nibbles, its pair sums of bsums, its scale. Prepared per block in a
 * dot product, or once per call for every row of a decode product. */
typedef struct {
    __m512i xlo[2], xhi[2];
    __m128i bs;
    float d;
} q4k_act_t;

FORCE_INLINE void q4k_act(const ms_block_q8_K_t *x, q4k_act_t *a)
{
    const int8_t *xq = x->qs;
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++) {
        a->xlo[k] = load_2x32(xq + 128 * k, xq + 128 * k + 64);
        a->xhi[k] = load_2x32(xq + 128 * k + 32, xq + 128 * k + 96);
    }
    a->bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)x->bsums), _mm_loadu_si128((const __m128i *)x->bsums + 1));
    a->d = x->d;
}

/* One super-block into the row's accumulators: the dot product and the
 * decode product run exactly these operations, in this order. */
FORCE_INLINE void q4k_block(const ms_block_q4_K_t *w, const q4k_act_t *a, const __m512i idx[2][2], __m512 *acc,
                            __m128 *accm)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    uint64_t sc, mn;
    unpack_k4(w->scales, &sc, &mn);
    float d = a->d * _cvtsh_ss(w->d), dmin = a->d * _cvtsh_ss(w->dmin);
    __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn));
    *accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(_mm_madd_epi16(mins, a->bs)), *accm);
    __m512i scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
    __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++) {
        __m512i q = _mm512_loadu_si512((const void *)(w->qs + 64 * k));
        __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        __m512i p0 = _mm512_madd_epi16(_mm512_maddubs_epi16(lo, a->xlo[k]), _mm512_permutexvar_epi16(idx[k][0], scales));
        __m512i p1 = _mm512_madd_epi16(_mm512_maddubs_epi16(hi, a->xhi[k]), _mm512_permutexvar_epi16(idx[k][1], scales));
        sum = _mm512_add_epi32(sum, _mm512_add_epi32(p0, p1));
    }
    *acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sum), *acc);
}

FORCE_INLINE void q4k_idx(__m512i idx[2][2])
{
    idx[0][0] = scale_idx(0, 2);
    idx[0][1] = scale_idx(1, 3);
    idx[1][0] = scale_idx(4, 6);
    idx[1][1] = scale_idx(5, 7);
}

static float dot_q4_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q4_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    __m512i idx[2][2];
    q4k_idx(idx);
    __m512 acc = _mm512_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        q4k_act_t a;
        q4k_act(&x[i], &a);
        q4k_block(&w[i], &a, idx, &acc, &accm);
    }
    return _mm512_reduce_add_ps(acc) - hsum4(accm);
}

/* Rows of a decode product prepare the activation side at most this often
 * per call (rows up to 16384 values); longer rows take the dot product. */
#define Q4K_VEC_BLOCKS_MAX 64

/* One token: the activation side is prepared once and every row streams
 * through q4k_block, so each row's result is dot_q4_K's bit for bit (a
 * token's result does not depend on how many tokens share the call). */
static void q4k_matvec(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    int64_t nb = mm->n_in / MS_QK_K;
    const ms_block_q8_K_t *x = mm->xq;
    q4k_act_t a[Q4K_VEC_BLOCKS_MAX];
    for (int64_t i = 0; i < nb; i++)
        q4k_act(&x[i], &a[i]);
    __m512i idx[2][2];
    q4k_idx(idx);
    size_t row_bytes = (size_t)nb * sizeof(ms_block_q4_K_t);
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * row_bytes;
    for (int64_t r = r0; r < r1; r++) {
        const ms_block_q4_K_t *w = (const ms_block_q4_K_t *)mm->w + r * nb;
        ms_kern_stream_ahead(w, row_bytes, w_end);
        __m512 acc = _mm512_setzero_ps();
        __m128 accm = _mm_setzero_ps();
        for (int64_t i = 0; i < nb; i++)
            q4k_block(&w[i], &a[i], idx, &acc, &accm);
        mm->y[r] = _mm512_reduce_add_ps(acc) - hsum4(accm);
    }
}

/* ---- Q6_K x Q8_K ----------------------------------------------------------
 * Per 128-value half: ql bytes 0-63 give groups 0 and 1 (low nibbles) and 2
 * and 3 (high nibbles), qh bits 2g..2g+1 the top two bits of group g. One
 * 512-bit vector carries groups (0, 1) or (2, 3): four 16-value scales. */

/* int16 lane -> scale: lanes 8s..8s+7 hold the pair sums of 16 values */
FORCE_INLINE void q6k_idx(__m512i idx[2][2])
{
    idx[0][0] = _mm512_set_epi64(0x0003000300030003, 0x0003000300030003, 0x0002000200020002, 0x0002000200020002,
                                 0x0001000100010001, 0x0001000100010001, 0x0000000000000000, 0x0000000000000000);
    idx[0][1] = _mm512_set_epi64(0x0007000700070007, 0x0007000700070007, 0x0006000600060006, 0x0006000600060006,
                                 0x0005000500050005, 0x0005000500050005, 0x0004000400040004, 0x0004000400040004);
    idx[1][0] = _mm512_set_epi64(0x000b000b000b000b, 0x000b000b000b000b, 0x000a000a000a000a, 0x000a000a000a000a,
                                 0x0009000900090009, 0x0009000900090009, 0x0008000800080008, 0x0008000800080008);
    idx[1][1] = _mm512_set_epi64(0x000f000f000f000f, 0x000f000f000f000f, 0x000e000e000e000e, 0x000e000e000e000e,
                                 0x000d000d000d000d, 0x000d000d000d000d, 0x000c000c000c000c, 0x000c000c000c000c);
}

/* One super-block into the row's accumulator: the dot product and the
 * one-token product run exactly these operations, in this order. */
FORCE_INLINE __m512 q6k_block(const ms_block_q6_K_t *w, const ms_block_q8_K_t *x, const __m512i idx[2][2],
                              __m512 acc)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(3);
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales));
    __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)x->bsums));
    __m512i scales = _mm512_castsi256_si512(sc16);
    __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i l = _mm512_loadu_si512((const void *)(w->ql + 64 * h));
        __m256i qh256 = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * h));
        /* top bits of groups 0|1 and 2|3, each group's 32 bytes in its 256-bit half */
        __m512i qh = _mm512_inserti64x4(_mm512_castsi256_si512(qh256), _mm256_srli_epi16(qh256, 2), 1);
        __m512i u01 = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(qh, m2), 4));
        __m512i u23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                      _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 4), m2), 4));
        const int8_t *xq = x->qs + 128 * h;
        __m512i p0 = _mm512_maddubs_epi16(u01, _mm512_loadu_si512((const void *)xq));
        __m512i p1 = _mm512_maddubs_epi16(u23, _mm512_loadu_si512((const void *)(xq + 64)));
        sum = _mm512_add_epi32(sum, _mm512_madd_epi16(p0, _mm512_permutexvar_epi16(idx[h][0], scales)));
        sum = _mm512_add_epi32(sum, _mm512_madd_epi16(p1, _mm512_permutexvar_epi16(idx[h][1], scales)));
    }
    /* quants are stored + 32: subtract 32 * sum_g scale_g * bsum_g */
    sum = _mm512_sub_epi32(sum, _mm512_zextsi256_si512(_mm256_slli_epi32(off, 5)));
    return _mm512_fmadd_ps(_mm512_set1_ps(x->d * _cvtsh_ss(w->d)), _mm512_cvtepi32_ps(sum), acc);
}

static float dot_q6_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q6_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    __m512i idx[2][2];
    q6k_idx(idx);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK_K; i++)
        acc = q6k_block(&w[i], &x[i], idx, acc);
    return _mm512_reduce_add_ps(acc);
}

/* One token: the rows stream through q6k_block with the constants set up
 * once, each row's result dot_q6_K's bit for bit. */
static void q6k_matvec(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    int64_t nb = mm->n_in / MS_QK_K;
    const ms_block_q8_K_t *x = mm->xq;
    __m512i idx[2][2];
    q6k_idx(idx);
    size_t row_bytes = (size_t)nb * sizeof(ms_block_q6_K_t);
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * row_bytes;
    for (int64_t r = r0; r < r1; r++) {
        const ms_block_q6_K_t *w = (const ms_block_q6_K_t *)mm->w + r * nb;
        ms_kern_stream_ahead(w, row_bytes, w_end);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < nb; i++)
            acc = q6k_block(&w[i], &x[i], idx, acc);
        mm->y[r] = _mm512_reduce_add_ps(acc);
    }
}

/* ---- helpers of the exact kernels ------------------------------------------ */

/* int16 lanes: 8 x a, 8 x b, 8 x c, 8 x d (indices into a 16-lane vector):
 * the scales of four 16-value groups after maddubs. */
FORCE_INLINE __m512i scale_idx4(int a, int b, int c, int d)
{
    __m256i lo = _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a));
    __m256i hi = _mm256_set_m128i(_mm_set1_epi16((short)d), _mm_set1_epi16((short)c));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* Bytes: 32 x a, then 32 x b. */
FORCE_INLINE __m512i bytes_2x32(int a, int b)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8((char)a)), _mm256_set1_epi8((char)b), 1);
}

/* The same 32 bytes in both halves. */
FORCE_INLINE __m512i load_bcast32(const void *p)
{
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
}

/* Lanes 0 and 1: the totals of the int32 lanes of a and of b. The block's
 * float step then stays in vector registers: no trip through integer ones. */
FORCE_INLINE __m128i hsum2_epi32(__m512i a, __m256i b)
{
    __m256i a8 = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    /* per 128-bit lane: a0 + a2, a1 + a3, b0 + b2, b1 + b3 */
    __m256i u = _mm256_add_epi32(_mm256_unpacklo_epi64(a8, b), _mm256_unpackhi_epi64(a8, b));
    __m128i v = _mm_add_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
    v = _mm_shuffle_epi32(v, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
}

/* Lane 0: the total of the int32 lanes of a. */
FORCE_INLINE __m128i hsum_epi32(__m512i a)
{
    __m256i a8 = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    __m128i v = _mm_add_epi32(_mm256_castsi256_si128(a8), _mm256_extracti128_si256(a8, 1));
    v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
    return _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 1, 1)));
}

/* The scalar path's float step of a block with mins, the same roundings in
 * the same order: xd * (d * isum - dmin * imin), sums = [isum, imin]. */
FORCE_INLINE float step_min(__m128i sums, uint16_t d, uint16_t dmin, float xd)
{
    __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)d | (uint32_t)dmin << 16)));
    __m128 p = _mm_mul_ps(_mm_cvtepi32_ps(sums), dd);
    return xd * _mm_cvtss_f32(_mm_sub_ss(p, _mm_movehdup_ps(p)));
}

/* ---- Q4_0 x Q8_0 -----------------------------------------------------------
 * The unsigned nibbles q meet the signed activations in dpbusd and the
 * offset leaves through a second one: sum (q - 8) x = sum q x - sum 8 x.
 * Eight blocks' sums are reduced together, then added in block order with
 * the scalar path's float step. */

/* Blocks 0 and 1: int32 lanes 0-7 add up to block 0's sum, 8-15 to block 1's. */
FORCE_INLINE __m512i q4_0_pair(const ms_block_q4_0_t *w, const ms_block_q8_0_t *x)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), eight = _mm512_set1_epi8(8), zero = _mm512_setzero_si512();
    __m256i q0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w[0].qs));
    __m256i q1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w[1].qs));
    __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
    /* a block's values 0-15 are its low nibbles, 16-31 its high nibbles */
    q = _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xff00ff00u, q, 4), m4);
    __m512i xv = load_2x32(x[0].qs, x[1].qs);
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, q, xv), _mm512_dpbusd_epi32(zero, eight, xv));
}

/* Lane j = the total of block j of four q4_0_pair results d[j / 2]. */
FORCE_INLINE __m256i q4_0_totals(const __m512i d[4])
{
    __m512i e0 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[0], d[1]), _mm512_unpackhi_epi32(d[0], d[1]));
    __m512i e1 = _mm512_add_epi32(_mm512_unpacklo_epi32(d[2], d[3]), _mm512_unpackhi_epi32(d[2], d[3]));
    /* 128-bit lane L of f: the totals of lane L of d[0..3] */
    __m512i f = _mm512_add_epi32(_mm512_unpacklo_epi64(e0, e1), _mm512_unpackhi_epi64(e0, e1));
    /* block 2k is lanes 0 + 1 of d[k], block 2k + 1 lanes 2 + 3 */
    __m512i g = _mm512_add_epi32(_mm512_shuffle_i32x4(f, f, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_i32x4(f, f, _MM_SHUFFLE(3, 1, 3, 1)));
    __m128i even = _mm512_castsi512_si128(g), odd = _mm512_extracti32x4_epi32(g, 1);
    return _mm256_set_m128i(_mm_unpackhi_epi32(even, odd), _mm_unpacklo_epi32(even, odd));
}

FORCE_INLINE int32_t q4_0_one(const ms_block_q4_0_t *w, const ms_block_q8_0_t *x)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8), zero = _mm256_setzero_si256();
    __m128i q = _mm_loadu_si128((const __m128i *)w->qs);
    __m256i v = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
    __m256i xv = _mm256_loadu_si256((const __m256i *)x->qs);
    __m256i d = _mm256_sub_epi32(_mm256_dpbusd_epi32(zero, v, xv), _mm256_dpbusd_epi32(zero, eight, xv));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
    s = _mm_hadd_epi32(s, s);
    return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

static float dot_q4_0(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q4_0_t *w = wv;
    const ms_block_q8_0_t *x = xv;
    int64_t nb = n / MS_QK4_0, i = 0;
    float sum = 0.0f;
    for (; i + 8 <= nb; i += 8) {
        __m512i d[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            d[k] = q4_0_pair(w + i + 2 * k, x + i + 2 * k);
        const ms_block_q4_0_t *b = w + i;
        const ms_block_q8_0_t *a = x + i;
        __m256 dw = _mm256_cvtph_ps(_mm_setr_epi16((short)b[0].d, (short)b[1].d, (short)b[2].d, (short)b[3].d,
                                                   (short)b[4].d, (short)b[5].d, (short)b[6].d, (short)b[7].d));
        __m256 dx = _mm256_cvtph_ps(_mm_setr_epi16((short)a[0].d, (short)a[1].d, (short)a[2].d, (short)a[3].d,
                                                   (short)a[4].d, (short)a[5].d, (short)a[6].d, (short)a[7].d));
        /* lane by lane the scalar (float)isum * (dw * dx); the sum stays serial */
        float p[8];
        _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_cvtepi32_ps(q4_0_totals(d)), _mm256_mul_ps(dw, dx)));
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            sum += p[j];
    }
    for (; i < nb; i++)
        sum += (float)q4_0_one(w + i, x + i) * (_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d));
    return sum;
}

/* ---- Q2_K / Q3_K x Q8_K ----------------------------------------------------
 * The 64 bytes of qs hold half 0 (bytes 0-31) and half 1; bits 2g..2g+1 of
 * byte l are value 32g + l of the half, so one shift g covers groups 2g,
 * 2g+1 (half 0) and 8+2g, 9+2g (half 1) of 16 values each. */

static float dot_q2_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q2_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m512i m2 = _mm512_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m512i idx[4] = { scale_idx4(0, 1, 8, 9), scale_idx4(2, 3, 10, 11), scale_idx4(4, 5, 12, 13),
                             scale_idx4(6, 7, 14, 15) };
    float sum = 0.0f;
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        __m128i s8 = _mm_loadu_si128((const __m128i *)w[i].scales);
        __m512i sc = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(s8, m4)));
        __m256i mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        __m256i msum = _mm256_madd_epi16(mn, _mm256_loadu_si256((const __m256i *)x[i].bsums));
        __m512i q = _mm512_loadu_si512((const void *)w[i].qs);
        const int8_t *xq = x[i].qs;
        __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m512i u = _mm512_and_si512(_mm512_srli_epi16(q, 2 * g), m2);
            __m512i p = _mm512_maddubs_epi16(u, load_2x32(xq + 32 * g, xq + 128 + 32 * g));
            acc = _mm512_dpwssd_epi32(acc, p, _mm512_permutexvar_epi16(idx[g], sc));
        }
        sum += step_min(hsum2_epi32(acc, msum), w[i].d, w[i].dmin, x[i].d);
    }
    return sum;
}

static float dot_q3_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q3_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m512i m2 = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
    const __m512i idx[4] = { scale_idx4(0, 1, 8, 9), scale_idx4(2, 3, 10, 11), scale_idx4(4, 5, 12, 13),
                             scale_idx4(6, 7, 14, 15) };
    float sum = 0.0f;
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        __m256i sc16 = _mm256_cvtepi8_epi16(unpack_q3_K(w[i].scales));
        __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)x[i].bsums));
        __m512i sc = _mm512_castsi256_si512(sc16);
        __m512i q = _mm512_loadu_si512((const void *)w[i].qs);
        __m512i hm = load_bcast32(w[i].hmask); /* value 32j + l: bit j of hmask[l] */
        const int8_t *xq = x[i].qs;
        __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m512i u = _mm512_and_si512(_mm512_srli_epi16(q, 2 * g), m2);
            u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(hm, bytes_2x32(1 << g, 1 << (4 + g))), u, four);
            __m512i p = _mm512_maddubs_epi16(u, load_2x32(xq + 32 * g, xq + 128 + 32 * g));
            acc = _mm512_dpwssd_epi32(acc, p, _mm512_permutexvar_epi16(idx[g], sc));
        }
        /* quants are stored + 4 */
        acc = _mm512_sub_epi32(acc, _mm512_zextsi256_si512(_mm256_slli_epi32(off, 2)));
        sum += x[i].d * (_cvtsh_ss(w[i].d) * _mm_cvtss_f32(_mm_cvtepi32_ps(hsum_epi32(acc))));
    }
    return sum;
}

/* ---- Q5_K x Q8_K -------------------------------------------------------------
 * Bytes 32m..32m+31 of qs hold sub-blocks 2m (low nibbles) and 2m+1 (high
 * nibbles): broadcast to both halves, they meet 64 contiguous activations.
 * The fifth bit of value 32j + l is bit j of qh[l]. */

static float dot_q5_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q5_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m512i m4 = _mm512_set1_epi8(0x0f), sixteen = _mm512_set1_epi8(16);
    const __m512i idx[4] = { scale_idx(0, 1), scale_idx(2, 3), scale_idx(4, 5), scale_idx(6, 7) };
    const __m512i hbit[4] = { bytes_2x32(1, 2), bytes_2x32(4, 8), bytes_2x32(16, 32), bytes_2x32(64, 128) };
    float sum = 0.0f;
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        uint64_t sc, mn;
        unpack_k4(w[i].scales, &sc, &mn);
        __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn));
        __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)x[i].bsums),
                                    _mm_loadu_si128((const __m128i *)x[i].bsums + 1));
        __m256i msum = _mm256_zextsi128_si256(_mm_madd_epi16(mins, bs));
        __m512i scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
        __m512i qh = load_bcast32(w[i].qh);
        __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            __m512i q = load_bcast32(w[i].qs + 32 * m);
            q = _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xffff0000u, q, 4), m4);
            q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(qh, hbit[m]), q, sixteen);
            __m512i p = _mm512_maddubs_epi16(q, _mm512_loadu_si512((const void *)(x[i].qs + 64 * m)));
            acc = _mm512_dpwssd_epi32(acc, p, _mm512_permutexvar_epi16(idx[m], scales));
        }
        sum += step_min(hsum2_epi32(acc, msum), w[i].d, w[i].dmin, x[i].d);
    }
    return sum;
}

static ms_kq_dot_fn dot_for(ms_type_t type)
{
    switch (type) {
    case MS_TYPE_Q4_0: return dot_q4_0;
    case MS_TYPE_Q2_K: return dot_q2_K;
    case MS_TYPE_Q3_K: return dot_q3_K;
    case MS_TYPE_Q4_K: return dot_q4_K;
    case MS_TYPE_Q5_K: return dot_q5_K;
    case MS_TYPE_Q6_K: return dot_q6_K;
    default: return ms_kq_dot_avx2(type);
    }
}

void ms_kq_matmul_avx512(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    if (mm->type == MS_TYPE_Q4_K && mm->n_tok == 1 && mm->n_in / MS_QK_K <= Q4K_VEC_BLOCKS_MAX) {
        q4k_matvec(mm, r0, r1);
        return;
    }
    if (mm->type == MS_TYPE_Q6_K && mm->n_tok == 1) {
        q6k_matvec(mm, r0, r1);
        return;
    }
    ms_kq_dot_fn dot = dot_for(mm->type);
    size_t wrow = (size_t)ms_type_row_bytes(mm->type, (uint64_t)mm->n_in);
    size_t xrow = ms_act_row_bytes(mm->type, mm->n_in);
    /* row outer, tokens inner: the row stays in L1 while every token reads it */
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * wrow;
    for (int64_t r = r0; r < r1; r++) {
        const char *w = (const char *)mm->w + (size_t)r * wrow;
        if (mm->n_tok == 1) /* decode: the rows stream once from memory */
            ms_kern_stream_ahead(w, wrow, w_end);
        for (int64_t t = 0; t < mm->n_tok; t++)
            mm->y[t * mm->ldy + r] = dot(w, (const char *)mm->xq + (size_t)t * xrow, mm->n_in);
    }
}
