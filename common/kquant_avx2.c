/* AVX2 dot products and matrix product for Q4_0 and the k-quants. Built with
 * AVX2/FMA/F16C flags and reached only after the CPU check.
 *
 * Weight quants are unpacked to unsigned bytes and multiplied with the signed
 * activation bytes by maddubs (u8 x s8 -> s16 pair sums: at most
 * 2 * 63 * 127 = 16002, no saturation); madd_epi16 then applies the
 * sub-block scales as int16 while widening to int32, so each super-block's
 * sum is exact before its one float multiply-add. Offsets (Q3_K 4, Q6_K 32)
 * and mins (Q2_K, Q4_K, Q5_K) go through the activation's bsums. */
#include <immintrin.h>
#include <string.h>

#include "kernels_impl.h"
#include "kquant.h"
#include "kquant_x86.h"

FORCE_INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* int16 lane k of each 128-bit half of v, broadcast over that half. */
FORCE_INLINE __m256i bcast16(__m256i v, int k)
{
    return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(((2 * k + 1) << 8) | (2 * k))));
}

/* Lane 2g of the low half and lane 2g+1 of the high half, each broadcast over
 * its half: the two scales of a 32-value group of 16-value sub-blocks. */
FORCE_INLINE __m256i bcast16_pair(__m256i v, int g)
{
    __m128i lo = _mm_set1_epi16((short)(((4 * g + 1) << 8) | (4 * g)));
    __m128i hi = _mm_set1_epi16((short)(((4 * g + 3) << 8) | (4 * g + 2)));
    return _mm256_shuffle_epi8(v, _mm256_set_m128i(hi, lo));
}

FORCE_INLINE __m256i load32(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* sum_j m_j * (bsums[2j] + bsums[2j+1]) as 4 int32 lanes. */
FORCE_INLINE __m128i mins_dot(uint64_t mn, const int16_t *bsums)
{
    __m128i mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)mn));
    __m128i b = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums), _mm_loadu_si128((const __m128i *)bsums + 1));
    return _mm_madd_epi16(mins, b);
}

/* ---- Q4_0 x Q8_0 --------------------------------------------------------- */

static float dot_q4_0(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q4_0_t *w = wv;
    const ms_block_q8_0_t *x = xv;
    const __m256i m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK4_0; i++) {
        __m128i q = _mm_loadu_si128((const __m128i *)w[i].qs);
        __m256i v = _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4), eight);
        __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(load32(x[i].qs), v));
        __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc = _mm256_fmadd_ps(p, _mm256_set1_ps(_cvtsh_ss(w[i].d) * _cvtsh_ss(x[i].d)), acc);
    }
    return hsum8(acc);
}

/* ---- Q4_K / Q5_K x Q8_K ---------------------------------------------------
 * Bytes 32k..32k+31 of qs hold sub-block 2k in their low nibbles and 2k+1 in
 * their high nibbles; Q5_K's fifth bit of sub-block j is bit j of qh. */

FORCE_INLINE float dot_k4(const void *wv, const void *xv, int64_t n, const bool q5)
{
    const ms_block_q8_K_t *x = xv;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    size_t bb = q5 ? sizeof(ms_block_q5_K_t) : sizeof(ms_block_q4_K_t);
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        const ms_block_q4_K_t *w4 = (const void *)((const char *)wv + (size_t)i * bb);
        const ms_block_q5_K_t *w5 = (const void *)w4;
        const uint8_t *qs = q5 ? w5->qs : w4->qs;
        uint64_t sc, mn;
        unpack_k4(w4->scales, &sc, &mn); /* d, dmin and scales sit at the same offsets in both */
        float d = x[i].d * _cvtsh_ss(w4->d), dmin = x[i].d * _cvtsh_ss(w4->dmin);
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mins_dot(mn, x[i].bsums)), accm);
        __m256i scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc)));
        __m256i hb = q5 ? load32(w5->qh) : _mm256_setzero_si256();
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m256i q = load32(qs + 32 * k);
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (q5) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hb, one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 1), one), 4));
                hb = _mm256_srli_epi16(hb, 2); /* bits crossing into the lower byte land above bit 0 */
            }
            __m256i p0 = _mm256_maddubs_epi16(lo, load32(x[i].qs + 64 * k));
            __m256i p1 = _mm256_maddubs_epi16(hi, load32(x[i].qs + 64 * k + 32));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p0, bcast16(scales, 2 * k)));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p1, bcast16(scales, 2 * k + 1)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sum), acc);
    }
    return hsum8(acc) - hsum4(accm);
}

static float dot_q4_K(const void *w, const void *x, int64_t n)
{
    return dot_k4(w, x, n, false);
}

static float dot_q5_K(const void *w, const void *x, int64_t n)
{
    return dot_k4(w, x, n, true);
}

/* ---- Q2_K / Q3_K / Q6_K x Q8_K --------------------------------------------
 * Sub-blocks of 16 values; a 32-value group g of a 128-value half takes
 * scales 2g (low 128 bits) and 2g+1 (high 128 bits). */

/* sum over the groups of a half: madd(maddubs(u_g, x_g), scales of g) */
FORCE_INLINE __m256i group_dot(__m256i u, const int8_t *x, __m256i scales, int g)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, load32(x)), bcast16_pair(scales, g));
}

/* 16 int16 scales with the 8 of half h in both 128-bit lanes. */
FORCE_INLINE __m256i half_scales(__m256i sc16, int h)
{
    return _mm256_broadcastsi128_si256(h ? _mm256_extracti128_si256(sc16, 1) : _mm256_castsi256_si128(sc16));
}

static float dot_q2_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q2_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m256i m2 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        __m128i s8 = _mm_loadu_si128((const __m128i *)w[i].scales);
        __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, m4));
        __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        __m256i msum = _mm256_madd_epi16(mn16, load32(x[i].bsums));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i q = load32(w[i].qs + 32 * h), s = half_scales(sc16, h);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                sum = _mm256_add_epi32(sum, group_dot(_mm256_and_si256(q, m2), x[i].qs + 128 * h + 32 * g, s, g));
                q = _mm256_srli_epi16(q, 2);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * _cvtsh_ss(w[i].d)), _mm256_cvtepi32_ps(sum), acc);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * _cvtsh_ss(w[i].dmin)), _mm256_cvtepi32_ps(msum), accm);
    }
    return hsum8(acc) - hsum8(accm);
}

static float dot_q3_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q3_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        __m256i sc16 = _mm256_cvtepi8_epi16(unpack_q3_K(w[i].scales));
        __m256i off = _mm256_madd_epi16(sc16, load32(x[i].bsums));
        __m256i hm = load32(w[i].hmask);
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i q = load32(w[i].qs + 32 * h), s = half_scales(sc16, h);
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                __m256i u = _mm256_or_si256(_mm256_and_si256(q, m2), _mm256_slli_epi16(_mm256_and_si256(hm, one), 2));
                sum = _mm256_add_epi32(sum, group_dot(u, x[i].qs + 128 * h + 32 * g, s, g));
                q = _mm256_srli_epi16(q, 2);
                hm = _mm256_srli_epi16(hm, 1);
            }
        }
        sum = _mm256_sub_epi32(sum, _mm256_slli_epi32(off, 2)); /* quants are stored + 4 */
        acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * _cvtsh_ss(w[i].d)), _mm256_cvtepi32_ps(sum), acc);
    }
    return hsum8(acc);
}

static float dot_q6_K(const void *wv, const void *xv, int64_t n)
{
    const ms_block_q6_K_t *w = wv;
    const ms_block_q8_K_t *x = xv;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / MS_QK_K; i++) {
        __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[i].scales));
        __m256i off = _mm256_madd_epi16(sc16, load32(x[i].bsums));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i l0 = load32(w[i].ql + 64 * h), l1 = load32(w[i].ql + 64 * h + 32);
            __m256i qh = load32(w[i].qh + 32 * h), s = half_scales(sc16, h);
            __m256i u[4] = {
                _mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
            };
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++) {
                __m256i v = _mm256_or_si256(u[g], _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
                sum = _mm256_add_epi32(sum, group_dot(v, x[i].qs + 128 * h + 32 * g, s, g));
                qh = _mm256_srli_epi16(qh, 2);
            }
        }
        sum = _mm256_sub_epi32(sum, _mm256_slli_epi32(off, 5)); /* quants are stored + 32 */
        acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * _cvtsh_ss(w[i].d)), _mm256_cvtepi32_ps(sum), acc);
    }
    return hsum8(acc);
}

ms_kq_dot_fn ms_kq_dot_avx2(ms_type_t type)
{
    switch (type) {
    case MS_TYPE_Q4_0: return dot_q4_0;
    case MS_TYPE_Q2_K: return dot_q2_K;
    case MS_TYPE_Q3_K: return dot_q3_K;
    case MS_TYPE_Q4_K: return dot_q4_K;
    case MS_TYPE_Q5_K: return dot_q5_K;
    case MS_TYPE_Q6_K: return dot_q6_K;
    default: return NULL;
    }
}

/* Row outer, tokens inner: a weight row (a few KB) stays in L1 while every
 * token's activation row passes over it, so it comes from DRAM once. */
void ms_kq_matmul_avx2(const ms_mm_t *mm, int64_t r0, int64_t r1)
{
    ms_kq_dot_fn dot = ms_kq_dot_avx2(mm->type);
    size_t wrow = (size_t)ms_type_row_bytes(mm->type, (uint64_t)mm->n_in);
    size_t xrow = ms_act_row_bytes(mm->type, mm->n_in);
    const char *w_end = (const char *)mm->w + (size_t)mm->n_out * wrow;
    for (int64_t r = r0; r < r1; r++) {
        const char *w = (const char *)mm->w + (size_t)r * wrow;
        if (mm->n_tok == 1) /* decode: the rows stream once from memory */
            ms_kern_stream_avx2(w, wrow, w_end);
        for (int64_t t = 0; t < mm->n_tok; t++)
            mm->y[t * mm->ldy + r] = dot(w, (const char *)mm->xq + (size_t)t * xrow, mm->n_in);
    }
}
