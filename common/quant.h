/* Weight quantisers: f32 rows to the on-disk block formats the kernels
 * compute (for the model generator and tests). Round to nearest with a
 * plain scale choice per block, not llama.cpp's error-minimising search. */
#ifndef MS_QUANT_H
#define MS_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "types.h"

/* Encodes the n values of x as a row of type into out, which must hold
 * ms_type_row_bytes(type, n) bytes. Types: F32, F16, BF16, Q8_0, Q4_0,
 * Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. Returns the bytes written, or 0 (nothing
 * written) for another type or when n <= 0 or n is not a whole number of
 * blocks. Values should be finite (NaN encodes as the lowest quant). */
size_t ms_quantize_row(ms_type_t type, const float *x, int64_t n, void *out);

#endif
