/* Q4_0 and k-quant (Q2_K..Q6_K) kernels shared by the kernel tables: the
 * per-element and per-scale decoding of ggml's block layouts, the scalar
 * reference (dequantisation, dot products with quantised activations), the
 * Q8_K activation quantiser and the SIMD matrix products. Private to the
 * kernel files. */
#ifndef MS_KQUANT_H
#define MS_KQUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels.h"
#include "types.h"

/* True for the weight types of this module (Q4_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K). */
bool ms_kq_handles(ms_type_t type);
/* Their activation format: Q8_0 for Q4_0, Q8_K for the k-quants. */
ms_type_t ms_kq_act_type(ms_type_t type);

/* Scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, 6 bits each:
 * sub-blocks 0-3 keep theirs in the low 6 bits of bytes j and j+4, sub-blocks
 * 4-7 in the nibbles of byte j+4 plus the top 2 bits of bytes j-4 and j. */
static inline void ms_kq_scale_min_k4(const uint8_t *s, int j, int *ret_sc, int *ret_m)
{
    if (j < 4) {
        *ret_sc = s[j] & 63;
        *ret_m = s[j + 4] & 63;
    } else {
        *ret_sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *ret_m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Signed scale (-32..31) of group i (0..15, 16 values each) of a Q3_K block:
 * low 4 bits in the nibbles of bytes 0-7, high 2 bits in bytes 8-11. */
static inline int ms_kq_scale_q3_K(const uint8_t *s, int i)
{
    int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

/* Unsigned quant of element e (0..255) of one block; the value is
 * (quant - offset) times the element's scale (minus its min for Q2_K/Q4_K/Q5_K):
 * offsets Q3_K 4, Q6_K 32, others 0. */
static inline int ms_kq_q2_K(const ms_block_q2_K_t *b, int e)
{
    return (b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

static inline int ms_kq_q3_K(const ms_block_q3_K_t *b, int e)
{
    int lo = (b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    return lo | (((b->hmask[e % 32] >> (e / 32)) & 1) << 2);
}

static inline int ms_kq_q4_K(const ms_block_q4_K_t *b, int e)
{
    return (b->qs[(e / 64) * 32 + e % 32] >> (4 * ((e / 32) & 1))) & 15;
}

static inline int ms_kq_q5_K(const ms_block_q5_K_t *b, int e)
{
    int lo = (b->qs[(e / 64) * 32 + e % 32] >> (4 * ((e / 32) & 1))) & 15;
    return lo | (((b->qh[e % 32] >> (e / 32)) & 1) << 4);
}

static inline int ms_kq_q6_K(const ms_block_q6_K_t *b, int e)
{
    int n = e / 128, g = (e % 128) / 32, l = e % 32;
    int lo = (b->ql[n * 64 + (g & 1) * 32 + l] >> (4 * (g >> 1))) & 15;
    return lo | (((b->qh[n * 32 + l] >> (2 * g)) & 3) << 4);
}

static inline int ms_kq_q4_0(const ms_block_q4_0_t *b, int e)
{
    return e < MS_QK4_0 / 2 ? b->qs[e] & 15 : b->qs[e - MS_QK4_0 / 2] >> 4;
}

/* dst[0..n) = values of a row of n elements, n a multiple of the block size. */
void ms_kq_dequant(ms_type_t type, const void *src, float *dst, int64_t n);

/* Scalar dot product of one weight row of n elements with one activation row
 * quantised by ms_kq_quantize_act. Integer sums per block are exact; the
 * blocks are added in float, in order. */
float ms_kq_dot(ms_type_t type, const void *w, const void *xq, int64_t n);

/* Q8_K as the k-quant dot products read it: per 256 values d = amax / 127,
 * q = round-half-away(x / d) clamped to [-127, 127] (NaN to -127), bsums the
 * sums of each 16 quants. Every ISA produces these exact bytes. */
void ms_kq_quantize_q8_K(const float *x, int64_t n, ms_block_q8_K_t *y);

/* One weight row of n elements against one quantised activation row. */
typedef float (*ms_kq_dot_fn)(const void *w, const void *xq, int64_t n);

/* The AVX2 row dot product for type, NULL for a type not of this module; the
 * AVX-512 table uses it for the types it has no wider kernel for. Call only
 * after the CPU check. */
ms_kq_dot_fn ms_kq_dot_avx2(ms_type_t type);

/* Fills b->bsums from b->qs. */
void ms_kq_q8_K_bsums(ms_block_q8_K_t *b);

/* The matrix products of the SIMD tables for the types of ms_kq_handles;
 * the job has been checked by ms_kern_job_ok. A row's result depends only on
 * its weight row and its token's activation row, never on n_tok. */
void ms_kq_matmul_avx2(const ms_mm_t *mm, int64_t r0, int64_t r1);
void ms_kq_matmul_avx512(const ms_mm_t *mm, int64_t r0, int64_t r1);

#endif
