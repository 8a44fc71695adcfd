/* NumPy .npy (format 1.0) writer for float32 matrices, streamed row by row. */
#ifndef MS_NPY_H
#define MS_NPY_H

#include <stdint.h>
#include <stdio.h>

typedef struct ms_npy_writer ms_npy_writer_t;

/* Creates path for a little-endian float32 array of shape [rows?, cols]. The
 * row count is written when the file is closed (the header reserves room).
 * -errno on failure. */
int ms_npy_open(const char *path, int64_t cols, ms_npy_writer_t **ret_w);
/* Appends one row of cols floats. -EIO on a write error. */
int ms_npy_append_row(ms_npy_writer_t *w, const float *row);
/* Rewrites the header with the final row count, closes; -EIO on error.
 * Accepts NULL; NULLs *self_p. */
int ms_npy_close(ms_npy_writer_t **self_p);

#endif
