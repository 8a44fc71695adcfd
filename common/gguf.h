/* GGUF v3 reader: the file is mmapped read-only and every field is validated
 * before anything uses it. Strings and tensor data point into the mapping.
 * A model split by llama.cpp's gguf-split (NAME-0000K-of-0000N.gguf, keys
 * split.no / split.count / split.tensors.count) opens as one model. */
#ifndef MS_GGUF_H
#define MS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "limits.h"
#include "types.h"

#define MS_GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define MS_GGUF_VERSION 3
#define MS_GGUF_DEFAULT_ALIGNMENT 32

typedef enum {
    MS_GGUF_UINT8 = 0,
    MS_GGUF_INT8 = 1,
    MS_GGUF_UINT16 = 2,
    MS_GGUF_INT16 = 3,
    MS_GGUF_UINT32 = 4,
    MS_GGUF_INT32 = 5,
    MS_GGUF_FLOAT32 = 6,
    MS_GGUF_BOOL = 7,
    MS_GGUF_STRING = 8,
    MS_GGUF_ARRAY = 9,
    MS_GGUF_UINT64 = 10,
    MS_GGUF_INT64 = 11,
    MS_GGUF_FLOAT64 = 12,
    MS_GGUF_VTYPE_COUNT
} ms_gguf_vtype_t;

/* A string inside the mapping: NOT NUL-terminated. */
typedef struct {
    const char *ptr;
    uint64_t len;
} ms_str_t;

typedef struct {
    ms_str_t key;
    ms_gguf_vtype_t type;
    union {
        uint64_t u64;  /* UINT8..UINT64 widened */
        int64_t i64;   /* INT8..INT64 widened */
        double f64;    /* FLOAT32/FLOAT64 widened */
        bool b;
        ms_str_t str;
    } v;
    /* type == MS_GGUF_ARRAY: */
    ms_gguf_vtype_t arr_type;  /* element type; never ARRAY (nested arrays are refused) */
    uint64_t arr_n;            /* element count */
    const void *arr_data;      /* raw little-endian elements in the mapping (numeric/bool types) */
    const ms_str_t *arr_strs;  /* arr_type == STRING: arr_n strings (owned by the reader) */
} ms_gguf_kv_t;

typedef struct {
    ms_str_t name;
    uint32_t n_dims;          /* 1..MS_GGUF_DIMS_MAX */
    int64_t ne[MS_GGUF_DIMS_MAX]; /* ne[0] is the contiguous dimension (row length); unused dims are 1 */
    ms_type_t type;
    uint64_t offset;          /* from the start of the data section, aligned */
    uint64_t nbytes;          /* ms_type_row_bytes(type, ne[0]) * ne[1] * ne[2] * ne[3] */
    uint64_t file_offset;     /* absolute offset in the file (of part `part` for a split model) */
    const void *data;         /* inside the mapping (of part `part`) */
    uint32_t part;            /* file holding the data: 0 for a single file; see ms_gguf_part_path */
} ms_gguf_tensor_t;

typedef struct ms_gguf ms_gguf_t;

/* Opens, maps and validates path. On failure returns -errno (-ENOENT, -EIO,
 * -EINVAL for a malformed file, -ENOMEM) and err names the file and the field
 * ("model.gguf: tensor 'blk.0.attn_q.weight': data [off, off+size) extends past end of file (size N)").
 *
 * Split models: when path has split.count > 1, path may name any part; the
 * others are found by replacing its "-0000K-of-0000N.gguf" ending (K from
 * split.no + 1, N = split.count; -EINVAL when the name does not end so).
 * Every part is opened and validated on its own and must say split.no = its
 * position, the same split.count and split.tensors.count; tensor names are
 * unique across parts and their number is split.tensors.count. A missing or
 * bad part fails the open with err naming that file. The result is one model:
 * the metadata of the first part (which gguf-split gives the model's keys),
 * one tensor table in part order, each tensor's `part` telling its file.
 * ms_gguf_path, ms_gguf_file_size, ms_gguf_data_offset, ms_gguf_base and
 * ms_gguf_prefault then describe the first part; ms_gguf_part_* the others. */
int ms_gguf_open(const char *path, ms_gguf_t **ret_gguf, ms_err_t *err);

/* Same validation, mapping only the header part (metadata and tensor
 * infos, found by growing the mapped prefix as needed): tensor data is not
 * mapped, every tensor's data pointer is NULL, and ms_gguf_prefault refuses.
 * For programs that read tensor bytes themselves (expertd loads its slices
 * with io_uring) or only need the shapes. Errors as ms_gguf_open. */
int ms_gguf_open_header(const char *path, ms_gguf_t **ret_gguf, ms_err_t *err);

/* As ms_gguf_open_header, but tensor data may lie past the end of the file:
 * for files that describe a model without holding its weights (genmodel
 * --header-only writes them; `moeshard plan` reads them). Offsets must still
 * be aligned, not overlap and not overflow 64 bits. Only for programs that
 * need shapes and sizes: ms_gguf_open and ms_gguf_open_header refuse such
 * files. Errors as ms_gguf_open. */
int ms_gguf_open_layout(const char *path, ms_gguf_t **ret_gguf, ms_err_t *err);

/* Same validation over a caller-owned buffer (kept borrowed until close);
 * name is used in messages. For tests and fuzzing. Split keys are not
 * followed: the buffer is taken as one file. */
int ms_gguf_open_mem(const void *buf, size_t len, const char *name, ms_gguf_t **ret_gguf, ms_err_t *err);

/* Accepts NULL and *self_p == NULL; sets *self_p to NULL. */
void ms_gguf_close(ms_gguf_t **self_p);

const char *ms_gguf_path(const ms_gguf_t *g);
uint64_t ms_gguf_file_size(const ms_gguf_t *g);
uint32_t ms_gguf_alignment(const ms_gguf_t *g);
uint64_t ms_gguf_data_offset(const ms_gguf_t *g);  /* absolute offset of the data section */
const void *ms_gguf_base(const ms_gguf_t *g);      /* start of the mapping */

/* Reads [offset, offset + len) of the mapping into memory and maps its pages
 * now, so the first pass of computation does not pay page faults.
 * -EINVAL outside the file or for a borrowed buffer; -EIO/-ENOMEM/-EFAULT from the kernel. */
int ms_gguf_prefault(const ms_gguf_t *g, uint64_t offset, uint64_t len);

/* The files of a model: 1 for a single file, split.count for a split model.
 * For part in [0, n_parts): its path, size and data-section offset; NULL / 0
 * for a part out of range. */
uint32_t ms_gguf_n_parts(const ms_gguf_t *g);
const char *ms_gguf_part_path(const ms_gguf_t *g, uint32_t part);
uint64_t ms_gguf_part_size(const ms_gguf_t *g, uint32_t part);
uint64_t ms_gguf_part_data_offset(const ms_gguf_t *g, uint32_t part);
/* ms_gguf_prefault of a range of part `part`'s file; -EINVAL for a part out of range. */
int ms_gguf_prefault_part(const ms_gguf_t *g, uint32_t part, uint64_t offset, uint64_t len);
/* Prefaults t's bytes in whichever part holds them. */
int ms_gguf_prefault_tensor(const ms_gguf_t *g, const ms_gguf_tensor_t *t);

/* Points tensor i's data at data: its bytes, copied by the caller into memory
 * that lives until close (ms_model_open reads weights into huge-page memory).
 * Nothing happens for i out of range. */
void ms_gguf_set_tensor_data(ms_gguf_t *g, uint64_t i, const void *data);
/* Gives g a block from ms_mem_alloc, freed (ms_mem_free) at close or by the
 * next call. */
void ms_gguf_own_mem(ms_gguf_t *g, void *mem, uint64_t bytes);

uint64_t ms_gguf_n_kv(const ms_gguf_t *g);
const ms_gguf_kv_t *ms_gguf_kv(const ms_gguf_t *g, uint64_t i);
/* NULL when absent. */
const ms_gguf_kv_t *ms_gguf_find_kv(const ms_gguf_t *g, const char *key);

uint64_t ms_gguf_n_tensors(const ms_gguf_t *g);
const ms_gguf_tensor_t *ms_gguf_tensor(const ms_gguf_t *g, uint64_t i);
/* NULL when absent. */
const ms_gguf_tensor_t *ms_gguf_find_tensor(const ms_gguf_t *g, const char *name);

/* Typed getters: 0 on success; -ENOENT when the key is absent; -EINVAL when the
 * value has another type or does not fit (integers: any integer type whose value
 * fits; floats: FLOAT32 or FLOAT64). ret_ is written only on success. */
int ms_gguf_get_u32(const ms_gguf_t *g, const char *key, uint32_t *ret);
int ms_gguf_get_u64(const ms_gguf_t *g, const char *key, uint64_t *ret);
int ms_gguf_get_i32(const ms_gguf_t *g, const char *key, int32_t *ret);
int ms_gguf_get_f32(const ms_gguf_t *g, const char *key, float *ret);
int ms_gguf_get_bool(const ms_gguf_t *g, const char *key, bool *ret);
int ms_gguf_get_str(const ms_gguf_t *g, const char *key, ms_str_t *ret);
/* Array of arr_type elements; -EINVAL when not an array of that element type. */
int ms_gguf_get_arr(const ms_gguf_t *g, const char *key, ms_gguf_vtype_t arr_type, const ms_gguf_kv_t **ret);

/* Compares a ms_str_t with a C string. */
bool ms_str_eq(ms_str_t s, const char *c);

const char *ms_gguf_vtype_name(uint32_t vtype); /* "uint32", ...; "?" when out of range */

#endif
