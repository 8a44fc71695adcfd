/* Tensor element types, numbered as GGUF/ggml number them, with their block
 * geometry, and the scalar half-precision conversions every kernel shares. */
#ifndef MS_TYPES_H
#define MS_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Ids are GGUF's on-disk ggml_type values; gaps are ids ggml retired. */
typedef enum {
    MS_TYPE_F32 = 0,
    MS_TYPE_F16 = 1,
    MS_TYPE_Q4_0 = 2,
    MS_TYPE_Q4_1 = 3,
    MS_TYPE_Q5_0 = 6,
    MS_TYPE_Q5_1 = 7,
    MS_TYPE_Q8_0 = 8,
    MS_TYPE_Q8_1 = 9,
    MS_TYPE_Q2_K = 10,
    MS_TYPE_Q3_K = 11,
    MS_TYPE_Q4_K = 12,
    MS_TYPE_Q5_K = 13,
    MS_TYPE_Q6_K = 14,
    MS_TYPE_Q8_K = 15,
    MS_TYPE_IQ2_XXS = 16,
    MS_TYPE_IQ2_XS = 17,
    MS_TYPE_IQ3_XXS = 18,
    MS_TYPE_IQ1_S = 19,
    MS_TYPE_IQ4_NL = 20,
    MS_TYPE_IQ3_S = 21,
    MS_TYPE_IQ2_S = 22,
    MS_TYPE_IQ4_XS = 23,
    MS_TYPE_I8 = 24,
    MS_TYPE_I16 = 25,
    MS_TYPE_I32 = 26,
    MS_TYPE_I64 = 27,
    MS_TYPE_F64 = 28,
    MS_TYPE_IQ1_M = 29,
    MS_TYPE_BF16 = 30,
    MS_TYPE_TQ1_0 = 34,
    MS_TYPE_TQ2_0 = 35,
    MS_TYPE_MXFP4 = 39,
    MS_TYPE_COUNT = 40  /* one past the largest id; not every id below it exists */
} ms_type_t;

typedef struct {
    const char *name;     /* "F32", "Q8_0", ... as GGUF tools print them */
    uint32_t block_elems; /* elements per block (1 for plain types) */
    uint32_t block_bytes; /* bytes per block */
    bool computable;      /* the kernels can dequantize and multiply it */
} ms_type_traits_t;

/* Traits of a type id read from a file; NULL for an id no ggml version defines. */
const ms_type_traits_t *ms_type_traits(uint32_t type);

/* Bytes of a row of n elements; 0 when type is unknown or n is not a whole
 * number of blocks. */
uint64_t ms_type_row_bytes(uint32_t type, uint64_t n);

#define MS_QK8_0 32
typedef struct {
    uint16_t d;          /* f16 scale */
    int8_t qs[MS_QK8_0]; /* value = d * qs[i] */
} ms_block_q8_0_t;
_Static_assert(sizeof(ms_block_q8_0_t) == 34, "Q8_0 block is 34 bytes on disk");

/* ggml's on-disk blocks of the other weight types the kernels compute. A
 * k-quant super-block holds MS_QK_K values in sub-blocks of 16 or 32, each
 * with its own small integer scale (and min) relative to the f16 d (dmin). */
#define MS_QK4_0 32
typedef struct {
    uint16_t d;               /* f16 scale */
    uint8_t qs[MS_QK4_0 / 2]; /* value j: (qs[j] & 15) - 8, value j+16: (qs[j] >> 4) - 8, times d */
} ms_block_q4_0_t;
_Static_assert(sizeof(ms_block_q4_0_t) == 18, "Q4_0 block is 18 bytes on disk");

#define MS_QK_K 256
#define MS_K_SCALE_BYTES 12 /* 8 scales and 8 mins (or 16 scales) of 6 bits */

typedef struct {
    uint8_t scales[MS_QK_K / 16]; /* per 16 values: scale (low 4 bits) and min (high 4 bits) */
    uint8_t qs[MS_QK_K / 4];      /* 2-bit quants */
    uint16_t d;                   /* f16 scale of the scales */
    uint16_t dmin;                /* f16 scale of the mins */
} ms_block_q2_K_t;
_Static_assert(sizeof(ms_block_q2_K_t) == 84, "Q2_K block is 84 bytes on disk");

typedef struct {
    uint8_t hmask[MS_QK_K / 8];        /* third bit of each quant */
    uint8_t qs[MS_QK_K / 4];           /* low 2 bits of each quant */
    uint8_t scales[MS_K_SCALE_BYTES];  /* 16 signed 6-bit scales (stored + 32) */
    uint16_t d;                        /* f16 scale of the scales */
} ms_block_q3_K_t;
_Static_assert(sizeof(ms_block_q3_K_t) == 110, "Q3_K block is 110 bytes on disk");

typedef struct {
    uint16_t d;                       /* f16 scale of the scales */
    uint16_t dmin;                    /* f16 scale of the mins */
    uint8_t scales[MS_K_SCALE_BYTES]; /* 8 scales and 8 mins of 6 bits, one pair per 32 values */
    uint8_t qs[MS_QK_K / 2];          /* 4-bit quants */
} ms_block_q4_K_t;
_Static_assert(sizeof(ms_block_q4_K_t) == 144, "Q4_K block is 144 bytes on disk");

typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[MS_K_SCALE_BYTES]; /* as Q4_K */
    uint8_t qh[MS_QK_K / 8];          /* fifth bit of each quant */
    uint8_t qs[MS_QK_K / 2];          /* low 4 bits of each quant */
} ms_block_q5_K_t;
_Static_assert(sizeof(ms_block_q5_K_t) == 176, "Q5_K block is 176 bytes on disk");

typedef struct {
    uint8_t ql[MS_QK_K / 2];      /* low 4 bits of each quant */
    uint8_t qh[MS_QK_K / 4];      /* high 2 bits of each quant */
    int8_t scales[MS_QK_K / 16];  /* one signed 8-bit scale per 16 values */
    uint16_t d;                   /* f16 scale of the scales */
} ms_block_q6_K_t;
_Static_assert(sizeof(ms_block_q6_K_t) == 210, "Q6_K block is 210 bytes on disk");

/* The activation format the k-quant dot products read (never a weight type here). */
typedef struct {
    float d;                     /* value = d * qs[i] */
    int8_t qs[MS_QK_K];
    int16_t bsums[MS_QK_K / 16]; /* sum of each 16 quants */
} ms_block_q8_K_t;
_Static_assert(sizeof(ms_block_q8_K_t) == 292, "Q8_K block is 292 bytes");

static inline float ms_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* Round to nearest even, overflow to inf, NaN kept NaN. */
static inline uint16_t ms_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00);
    if (absx >= 0x477ff000u) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below the smallest normal f16: subnormal or 0 */
        if (absx < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = absx + 0xfff + ((absx >> 13) & 1); /* round to nearest even */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

static inline float ms_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static inline uint16_t ms_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

#endif
