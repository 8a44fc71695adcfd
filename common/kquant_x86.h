/* x86 helpers both SIMD k-quant files use (SSE-level intrinsics only, so
 * each file compiles them with its own ISA flags). Private to kquant_avx2.c
 * and kquant_avx512.c. */
#ifndef MS_KQUANT_X86_H
#define MS_KQUANT_X86_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define FORCE_INLINE static inline __attribute__((always_inline))

FORCE_INLINE float hsum4(__m128 s)
{
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 16 signed 6-bit scales of a Q3_K block as bytes (ms_kq_scale_q3_K, four at a time). */
FORCE_INLINE __m128i unpack_q3_K(const uint8_t *s)
{
    uint32_t u[3];
    memcpy(u, s, sizeof(u));
    uint32_t o0 = (u[0] & 0x0f0f0f0fu) | ((u[2] & 0x03030303u) << 4);
    uint32_t o1 = (u[1] & 0x0f0f0f0fu) | (((u[2] >> 2) & 0x03030303u) << 4);
    uint32_t o2 = ((u[0] >> 4) & 0x0f0f0f0fu) | (((u[2] >> 4) & 0x03030303u) << 4);
    uint32_t o3 = ((u[1] >> 4) & 0x0f0f0f0fu) | (((u[2] >> 6) & 0x03030303u) << 4);
    return _mm_sub_epi8(_mm_setr_epi32((int)o0, (int)o1, (int)o2, (int)o3), _mm_set1_epi8(32));
}

/* Scales (bytes 0-7 of *ret_sc) and mins (of *ret_m) of a Q4_K/Q5_K block,
 * the 6-bit fields of ms_kq_scale_min_k4 gathered four at a time. */
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

#endif
