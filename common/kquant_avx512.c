/* AVX-512 (BW) dot products for the k-quants people run most (Q4_K, Q6_K),
 * 64 quants per instruction; the other k-quants and Q4_0 use the AVX2 row
 * kernels. Built with AVX-512 flags and reached only after the CPU check.
 * The arithmetic is that of kquant_avx2.c: exact int32 sums per super-block
 * (maddubs, then madd_epi16 applying the scales), one float step per block. */
#include <immintrin.h>
#include <string.h>

#include "kquant.h"

#define FORCE_INLINE static inline __attribute__((always_inline))

FORCE_INLINE float hsum4(__m128 s)
{
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

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

FORCE_INLINE void unpack_k4(const uint8_t *s, uint64_t *ret_sc, uint64_t *ret_m)
{
    uint32_t u[3];
    memcpy(u, s, sizeof(u));
    uint32_t sc_lo = u[0] & 0x3f3f3f3fu, m_lo = u[1] & 0x3f3f3f3fu;
    uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    uint32_t m_hi = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    *ret_sc = sc_lo | (uint64_t)sc_hi << 32;
    *ret_m = m_lo | (uint64_t)m_hi << 32;
}

static float dot_q4_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q4_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i idx[2][2] = { { scale_idx(0, 2), scale_idx(1, 3) }, { scale_idx(4, 6), scale_idx(5, 7) } };
    __m512 acc = _mm512_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        uint64_t sc, mn;
        unpack_k4(w[i].scales, &sc, &mn);
        float d = x[i].d * _cvtsh_ss(w[i].d), dmin = x[i].d * _cvtsh_ss(w[i].dmin);
        __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn));
        __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)x[i].bsums),
                                    _mm_loadu_si128((const __m128i *)x[i].bsums + 1));
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(_mm_madd_epi16(mins, bs)), accm);
        __m512i scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
        __m512i sum = _mm512_setzero_si512();
        const int8_t *xq = x[i].qs;
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++) {
            __m512i q = _mm512_loadu_si512((const void *)(w[i].qs + 64 * k));
            __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
            __m512i xlo = load_2x32(xq + 128 * k, xq + 128 * k + 64);
            __m512i xhi = load_2x32(xq + 128 * k + 32, xq + 128 * k + 96);
            __m512i p0 = _mm512_madd_epi16(_mm512_maddubs_epi16(lo, xlo), _mm512_permutexvar_epi16(idx[k][0], scales));
            __m512i p1 = _mm512_madd_epi16(_mm512_maddubs_epi16(hi, xhi), _mm512_permutexvar_epi16(idx[k][1], scales));
            sum = _mm512_add_epi32(sum, _mm512_add_epi32(p0, p1));
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sum), acc);
    }
    return _mm512_reduce_add_ps(acc) - hsum4(accm);
}

/* ---- Q6_K x Q8_K ----------------------------------------------------------
 * Per 128-value half: ql bytes 0-63 give groups 0 and 1 (low nibbles) and 2
 * and 3 (high nibbles), qh bits 2g..2g+1 the top two bits of group g. One
 * 512-bit vector carries groups (0, 1) or (2, 3): four 16-value scales. */

static float dot_q6_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q6_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(3);
    /* int16 lane -> scale: lanes 8s..8s+7 hold the pair sums of 16 values */
    const __m512i idx[2][2] = {
        { _mm512_set_epi64(0x0003000300030003, 0x0003000300030003, 0x0002000200020002, 0x0002000200020002,
                           0x0001000100010001, 0x0001000100010001, 0x0000000000000000, 0x0000000000000000),
          _mm512_set_epi64(0x0007000700070007, 0x0007000700070007, 0x0006000600060006, 0x0006000600060006,
                           0x0005000500050005, 0x0005000500050005, 0x0004000400040004, 0x0004000400040004) },
        { _mm512_set_epi64(0x000b000b000b000b, 0x000b000b000b000b, 0x000a000a000a000a, 0x000a000a000a000a,
                           0x0009000900090009, 0x0009000900090009, 0x0008000800080008, 0x0008000800080008),
          _mm512_set_epi64(0x000f000f000f000f, 0x000f000f000f000f, 0x000e000e000e000e, 0x000e000e000e000e,
                           0x000d000d000d000d, 0x000d000d000d000d, 0x000c000c000c000c, 0x000c000c000c000c) },
    };
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[i].scales));
        __m256i off = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)x[i].bsums));
        __m512i scales = _mm512_castsi256_si512(sc16);
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512i l = _mm512_loadu_si512((const void *)(w[i].ql + 64 * h));
            __m256i qh256 = _mm256_loadu_si256((const __m256i *)(w[i].qh + 32 * h));
            /* top bits of groups 0|1 and 2|3, each group's 32 bytes in its 256-bit half */
            __m512i qh = _mm512_inserti64x4(_mm512_castsi256_si512(qh256), _mm256_srli_epi16(qh256, 2), 1);
            __m512i u01 = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_slli_epi16(_mm512_and_si512(qh, m2), 4));
            __m512i u23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 4), m2), 4));
            const int8_t *xq = x[i].qs + 128 * h;
            __m512i p0 = _mm512_maddubs_epi16(u01, _mm512_loadu_si512((const void *)xq));
            __m512i p1 = _mm512_maddubs_epi16(u23, _mm512_loadu_si512((const void *)(xq + 64)));
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(p0, _mm512_permutexvar_epi16(idx[h][0], scales)));
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(p1, _mm512_permutexvar_epi16(idx[h][1], scales)));
        }
        /* quants are stored + 32: subtract 32 * sum_g scale_g * bsum_g */
        sum = _mm512_sub_epi32(sum, _mm512_zextsi256_si512(_mm256_slli_epi32(off, 5)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i].d * _cvtsh_ss(w[i].d)), _mm512_cvtepi32_ps(sum), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

void ms_kq_matmul_avx512(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    ms_kq_dot_fn dot = mm->type == MS_TYPE_Q4_K ? dot_q4_K
                     : mm->type == MS_TYPE_Q6_K ? dot_q6_K
                                                : ms_kq_dot_avx2(mm->type);
    size_t wrow = (size_t)ms_type_row_bytes(mm->type, (uint64_t)mm->n_in);
    size_t xrow = ms_act_row_bytes(mm->type, mm->n_in);
    /* row outer, tokens inner: the row stays in L1 while every token reads it */
    for (int64_t r = r0; r < r1; r++) {
        const char *w = (const char *)mm->w + (size_t)r * wrow;
        for (int64_t t = 0; t < mm->n_tok; t++)
            mm->y[t * mm->ldy + r] = dot(w, (const char *)mm->xq + (size_t)t * xrow, mm->n_in);
    }
}
