/* NumPy .npy format 1.0 writer: a fixed-size header whose row count is
 * rewritten in place at close, then float32 rows streamed behind it. */
#include "npy.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Room reserved in the header for each dimension: 2^40 rows (or columns)
 * of float32 is 4 TiB per column, beyond any dump this writer is for. */
#define NPY_DIM_MAX ((int64_t)1 << 40)
#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_BYTES 6
#define NPY_PREAMBLE_BYTES 10 /* magic, version 1.0, u16 header length */
#define NPY_ALIGN 64          /* NumPy pads the whole header to this */

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "rows are written as they sit in memory and declared '<f4'");
_Static_assert(sizeof(float) == 4, "'<f4' is a 4-byte float");

struct ms_npy_writer {
    FILE *f;
    int64_t cols;
    int64_t rows;
    int64_t rows_max;     /* NPY_DIM_MAX, lowered so the byte count fits int64 */
    size_t header_bytes;  /* fixed at open: preamble + padded dict */
};

/* The dict text for shape (rows, cols), without padding. */
static int format_dict(char *buf, size_t cap, int64_t rows, int64_t cols)
{
    return snprintf(buf, cap,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (%" PRId64 ", %" PRId64 "), }",
                    rows, cols);
}

/* Total header size: the dict with the widest row count, plus the '\n',
 * rounded up to NPY_ALIGN. Independent of the final count, so the rewrite at
 * close fits the same bytes. */
static size_t header_size(int64_t cols)
{
    char buf[256];
    int n = format_dict(buf, sizeof(buf), NPY_DIM_MAX, cols);
    size_t raw = NPY_PREAMBLE_BYTES + (size_t)n + 1;
    return (raw + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
}

/* Writes the header for the current row count at the file's start. */
static int write_header(ms_npy_writer_t *w)
{
    char hdr[512];
    size_t dict_bytes = w->header_bytes - NPY_PREAMBLE_BYTES;
    memcpy(hdr, NPY_MAGIC, NPY_MAGIC_BYTES);
    hdr[6] = 1; /* format version 1.0 */
    hdr[7] = 0;
    hdr[8] = (char)(dict_bytes & 0xff); /* header length, u16 little-endian */
    hdr[9] = (char)(dict_bytes >> 8);
    int n = format_dict(hdr + NPY_PREAMBLE_BYTES, sizeof(hdr) - NPY_PREAMBLE_BYTES, w->rows, w->cols);
    memset(hdr + NPY_PREAMBLE_BYTES + n, ' ', dict_bytes - (size_t)n - 1);
    hdr[w->header_bytes - 1] = '\n';
    if (fseeko(w->f, 0, SEEK_SET) != 0)
        return -errno;
    if (fwrite(hdr, 1, w->header_bytes, w->f) != w->header_bytes)
        return -EIO;
    return 0;
}

int ms_npy_open(const char *path, int64_t cols, ms_npy_writer_t **ret_w)
{
    if (!path || !ret_w || cols < 1 || cols > NPY_DIM_MAX)
        return -EINVAL;
    ms_npy_writer_t *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->cols = cols;
    w->rows_max = NPY_DIM_MAX;
    if (w->rows_max > INT64_MAX / (cols * (int64_t)sizeof(float)))
        w->rows_max = INT64_MAX / (cols * (int64_t)sizeof(float));
    w->header_bytes = header_size(cols);
    w->f = fopen(path, "wb");
    if (!w->f) {
        int ret = -errno;
        free(w);
        return ret;
    }
    int ret = write_header(w);
    if (ret < 0) {
        fclose(w->f);
        free(w);
        return ret;
    }
    *ret_w = w;
    return 0;
}

int ms_npy_append_row(ms_npy_writer_t *w, const float *row)
{
    if (!w || !row)
        return -EINVAL;
    if (w->rows >= w->rows_max)
        return -EFBIG;
    if (fwrite(row, sizeof(float), (size_t)w->cols, w->f) != (size_t)w->cols)
        return -EIO;
    w->rows++;
    return 0;
}

int ms_npy_close(ms_npy_writer_t **self_p)
{
    if (!self_p || !*self_p)
        return 0;
    ms_npy_writer_t *w = *self_p;
    int ret = 0;
    /* Flush the rows before seeking back, so a full disk shows up here. */
    if (fflush(w->f) != 0 || write_header(w) < 0 || ferror(w->f))
        ret = -EIO;
    if (fclose(w->f) != 0)
        ret = -EIO;
    free(w);
    *self_p = NULL;
    return ret;
}
