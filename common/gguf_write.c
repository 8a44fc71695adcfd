/* GGUF v3 writer: metadata and tensor infos are collected in memory, then the
 * file is streamed through one buffer, tensor data in declaration order, so a
 * file larger than RAM is written at disk speed. Everything it writes passes
 * the reader's checks (same limits, same alignment rules). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* GNU strerror_r, which returns the message */
#endif

#include "limits.h"

#include "gguf_write.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITE_BUF_BYTES (4u << 20) /* large enough that write(2) calls cost nothing next to the disk */
#define ALIGN_KEY "general.alignment"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF writer assumes a little-endian host");

typedef struct {
    uint8_t *p;
    size_t len;
    size_t cap;
} bytes_t;

typedef struct {
    char *name;
    ms_type_t type;
    uint32_t n_dims;
    int64_t ne[MS_GGUF_DIMS_MAX];
    uint64_t offset; /* in the data section, aligned */
    uint64_t nbytes;
} wtensor_t;

typedef struct {
    char *ptr; /* copy, NUL-terminated for messages */
    size_t len;
} wkey_t;

enum { W_DECLARING, W_WRITING, W_DONE, W_FAILED };

struct ms_gguf_writer {
    uint32_t alignment;
    bool align_declared; /* the caller added general.alignment itself */
    bytes_t meta;        /* encoded key/values, in insertion order */
    wkey_t *keys;        /* for refusing duplicates */
    uint64_t n_kv, keys_cap;
    wtensor_t *tensors;
    uint64_t n_tensors, tensors_cap;
    uint64_t data_bytes; /* end of the last declared tensor in the data section */
    int state;
    int fd;
    char *path;
    uint8_t *buf; /* WRITE_BUF_BYTES */
    size_t buf_len;
    uint64_t written;  /* bytes handed to write(2); the file position is written + buf_len */
    uint64_t cur;      /* tensor whose bytes are being written */
    uint64_t cur_done; /* bytes of it written so far */
};

static const uint8_t elem_bytes[MS_GGUF_VTYPE_COUNT] = {
    [MS_GGUF_UINT8] = 1,  [MS_GGUF_INT8] = 1,  [MS_GGUF_UINT16] = 2,  [MS_GGUF_INT16] = 2,
    [MS_GGUF_UINT32] = 4, [MS_GGUF_INT32] = 4, [MS_GGUF_FLOAT32] = 4, [MS_GGUF_BOOL] = 1,
    [MS_GGUF_UINT64] = 8, [MS_GGUF_INT64] = 8, [MS_GGUF_FLOAT64] = 8,
};

static uint64_t align_up(uint64_t x, uint32_t a)
{
    return (x + a - 1) / a * a;
}

/* ---- growable byte buffer for the metadata section ---- */

static int bytes_put(bytes_t *b, const void *p, size_t n)
{
    if (n > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            return -ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static int bytes_u32(bytes_t *b, uint32_t v) { return bytes_put(b, &v, 4); }
static int bytes_u64(bytes_t *b, uint64_t v) { return bytes_put(b, &v, 8); }

static int bytes_str(bytes_t *b, const char *p, uint64_t n)
{
    int rc = bytes_u64(b, n);
    return rc ? rc : bytes_put(b, p, (size_t)n);
}

/* ---- lifecycle ---- */

ms_gguf_writer_t *ms_gguf_writer_new(uint32_t alignment)
{
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > MS_GGUF_ALIGNMENT_MAX)
        return NULL; /* the reader would refuse the file */
    ms_gguf_writer_t *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->alignment = alignment;
    w->fd = -1;
    return w;
}

void ms_gguf_writer_destroy(ms_gguf_writer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_gguf_writer_t *w = *self_p;
    if (w->fd >= 0)
        close(w->fd);
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i].ptr);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->keys);
    free(w->tensors);
    free(w->meta.p);
    free(w->buf);
    free(w->path);
    free(w);
    *self_p = NULL;
}

/* ---- metadata ---- */

static bool is_align_key(const char *key, size_t len)
{
    return len == strlen(ALIGN_KEY) && memcmp(key, ALIGN_KEY, len) == 0;
}

static bool has_key(const ms_gguf_writer_t *w, const char *key, size_t len)
{
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (w->keys[i].len == len && memcmp(w->keys[i].ptr, key, len) == 0)
            return true;
    return false;
}

static int keys_push(ms_gguf_writer_t *w, const char *key, size_t len)
{
    if (w->n_kv == w->keys_cap) {
        uint64_t cap = w->keys_cap ? 2 * w->keys_cap : 64;
        wkey_t *k = realloc(w->keys, cap * sizeof(*k));
        if (!k)
            return -ENOMEM;
        w->keys = k;
        w->keys_cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, key, len);
    copy[len] = '\0';
    w->keys[w->n_kv] = (wkey_t){copy, len};
    return 0;
}

/* Checks the key and appends key and value type; *mark lets kv_end undo it. */
static int kv_begin(ms_gguf_writer_t *w, const char *key, size_t len, ms_gguf_vtype_t type, size_t *mark)
{
    if (!w || !key || w->state != W_DECLARING || len == 0 || len > MS_GGUF_STRING_BYTES_MAX)
        return -EINVAL;
    if (w->n_kv + 1 >= MS_GGUF_KV_MAX) /* one pair stays free for general.alignment */
        return -EINVAL;
    if (has_key(w, key, len) || (is_align_key(key, len) && type != MS_GGUF_UINT32))
        return -EINVAL;
    *mark = w->meta.len;
    int rc = bytes_str(&w->meta, key, len);
    if (!rc)
        rc = bytes_u32(&w->meta, (uint32_t)type);
    if (!rc)
        rc = keys_push(w, key, len);
    if (rc)
        w->meta.len = *mark;
    return rc;
}

/* Commits the pair, or on rc != 0 removes what kv_begin added. */
static int kv_end(ms_gguf_writer_t *w, size_t mark, int rc)
{
    if (rc) {
        w->meta.len = mark;
        free(w->keys[w->n_kv].ptr);
        return rc;
    }
    if (is_align_key(w->keys[w->n_kv].ptr, w->keys[w->n_kv].len))
        w->align_declared = true;
    w->n_kv++;
    return 0;
}

static int add_scalar(ms_gguf_writer_t *w, const char *key, size_t klen, ms_gguf_vtype_t type, const void *v)
{
    size_t mark;
    int rc = kv_begin(w, key, klen, type, &mark);
    if (rc)
        return rc;
    return kv_end(w, mark, bytes_put(&w->meta, v, elem_bytes[type]));
}

static int add_string(ms_gguf_writer_t *w, const char *key, size_t klen, const char *v, uint64_t n)
{
    if (!v || n > MS_GGUF_STRING_BYTES_MAX)
        return -EINVAL;
    size_t mark;
    int rc = kv_begin(w, key, klen, MS_GGUF_STRING, &mark);
    if (rc)
        return rc;
    return kv_end(w, mark, bytes_str(&w->meta, v, n));
}

static bool bools_ok(const uint8_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i] > 1)
            return false;
    return true;
}

static int add_num_array(ms_gguf_writer_t *w, const char *key, size_t klen, ms_gguf_vtype_t et, const void *v,
                         uint64_t n)
{
    if (n > MS_GGUF_ARRAY_MAX || (n && !v) || et >= MS_GGUF_VTYPE_COUNT || elem_bytes[et] == 0)
        return -EINVAL;
    if (et == MS_GGUF_BOOL && !bools_ok(v, n))
        return -EINVAL;
    size_t mark;
    int rc = kv_begin(w, key, klen, MS_GGUF_ARRAY, &mark);
    if (rc)
        return rc;
    rc = bytes_u32(&w->meta, (uint32_t)et);
    if (!rc)
        rc = bytes_u64(&w->meta, n);
    if (!rc)
        rc = bytes_put(&w->meta, v, (size_t)(n * elem_bytes[et]));
    return kv_end(w, mark, rc);
}

/* String i of an array given either as (pointers, lengths) or as ms_str_t. */
typedef struct {
    const char *const *ptrs;
    const uint64_t *lens; /* NULL: NUL-terminated */
    const ms_str_t *strs;
} str_src_t;

static ms_str_t src_get(const str_src_t *s, uint64_t i)
{
    if (s->strs)
        return s->strs[i];
    const char *p = s->ptrs[i];
    return (ms_str_t){p, p ? (s->lens ? s->lens[i] : strlen(p)) : 0};
}

static int add_str_array(ms_gguf_writer_t *w, const char *key, size_t klen, const str_src_t *src, uint64_t n)
{
    if (n > MS_GGUF_ARRAY_MAX || (n && !src->ptrs && !src->strs))
        return -EINVAL;
    for (uint64_t i = 0; i < n; i++) {
        ms_str_t s = src_get(src, i);
        if ((!s.ptr && s.len) || (!s.ptr && !src->strs) || s.len > MS_GGUF_STRING_BYTES_MAX)
            return -EINVAL;
    }
    size_t mark;
    int rc = kv_begin(w, key, klen, MS_GGUF_ARRAY, &mark);
    if (rc)
        return rc;
    rc = bytes_u32(&w->meta, MS_GGUF_STRING);
    if (!rc)
        rc = bytes_u64(&w->meta, n);
    for (uint64_t i = 0; i < n && !rc; i++) {
        ms_str_t s = src_get(src, i);
        rc = bytes_str(&w->meta, s.ptr, s.len);
    }
    return kv_end(w, mark, rc);
}

static size_t key_len(const char *key)
{
    return key ? strlen(key) : 0;
}

int ms_gguf_writer_add_u32(ms_gguf_writer_t *w, const char *key, uint32_t v)
{
    /* general.alignment is the writer's own: it must agree with it */
    if (w && key && is_align_key(key, strlen(key)) && v != w->alignment)
        return -EINVAL;
    return add_scalar(w, key, key_len(key), MS_GGUF_UINT32, &v);
}

int ms_gguf_writer_add_i32(ms_gguf_writer_t *w, const char *key, int32_t v)
{
    return add_scalar(w, key, key_len(key), MS_GGUF_INT32, &v);
}

int ms_gguf_writer_add_u64(ms_gguf_writer_t *w, const char *key, uint64_t v)
{
    return add_scalar(w, key, key_len(key), MS_GGUF_UINT64, &v);
}

int ms_gguf_writer_add_f32(ms_gguf_writer_t *w, const char *key, float v)
{
    return add_scalar(w, key, key_len(key), MS_GGUF_FLOAT32, &v);
}

int ms_gguf_writer_add_bool(ms_gguf_writer_t *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return add_scalar(w, key, key_len(key), MS_GGUF_BOOL, &b);
}

int ms_gguf_writer_add_str(ms_gguf_writer_t *w, const char *key, const char *v)
{
    return add_string(w, key, key_len(key), v, v ? strlen(v) : 0);
}

int ms_gguf_writer_add_arr_str(ms_gguf_writer_t *w, const char *key, const char *const *v, const uint64_t *lens,
                               uint64_t n)
{
    str_src_t src = {.ptrs = v, .lens = lens};
    return add_str_array(w, key, key_len(key), &src, n);
}

int ms_gguf_writer_add_arr_f32(ms_gguf_writer_t *w, const char *key, const float *v, uint64_t n)
{
    return add_num_array(w, key, key_len(key), MS_GGUF_FLOAT32, v, n);
}

int ms_gguf_writer_add_arr_i32(ms_gguf_writer_t *w, const char *key, const int32_t *v, uint64_t n)
{
    return add_num_array(w, key, key_len(key), MS_GGUF_INT32, v, n);
}

int ms_gguf_writer_add_arr_u32(ms_gguf_writer_t *w, const char *key, const uint32_t *v, uint64_t n)
{
    return add_num_array(w, key, key_len(key), MS_GGUF_UINT32, v, n);
}

/* The widened value narrowed back to its on-disk width (exact: it came from there). */
static void encode_scalar(const ms_gguf_kv_t *kv, uint8_t out[8])
{
    uint64_t u = kv->v.u64;
    int64_t s = kv->v.i64;
    switch (kv->type) {
    case MS_GGUF_UINT8: out[0] = (uint8_t)u; break;
    case MS_GGUF_INT8: out[0] = (uint8_t)(int8_t)s; break;
    case MS_GGUF_UINT16: { uint16_t x = (uint16_t)u; memcpy(out, &x, 2); } break;
    case MS_GGUF_INT16: { int16_t x = (int16_t)s; memcpy(out, &x, 2); } break;
    case MS_GGUF_UINT32: { uint32_t x = (uint32_t)u; memcpy(out, &x, 4); } break;
    case MS_GGUF_INT32: { int32_t x = (int32_t)s; memcpy(out, &x, 4); } break;
    case MS_GGUF_FLOAT32: { float x = (float)kv->v.f64; memcpy(out, &x, 4); } break;
    case MS_GGUF_BOOL: out[0] = kv->v.b ? 1 : 0; break;
    case MS_GGUF_UINT64: memcpy(out, &u, 8); break;
    case MS_GGUF_INT64: memcpy(out, &s, 8); break;
    case MS_GGUF_FLOAT64: memcpy(out, &kv->v.f64, 8); break;
    default: break;
    }
}

static int copy_array(ms_gguf_writer_t *w, const ms_gguf_kv_t *kv)
{
    if (kv->arr_type == MS_GGUF_STRING) {
        str_src_t src = {.strs = kv->arr_strs};
        return add_str_array(w, kv->key.ptr, kv->key.len, &src, kv->arr_n);
    }
    return add_num_array(w, kv->key.ptr, kv->key.len, kv->arr_type, kv->arr_data, kv->arr_n);
}

int ms_gguf_writer_copy_kv(ms_gguf_writer_t *w, const ms_gguf_kv_t *kv)
{
    if (!w || !kv || !kv->key.ptr || (unsigned)kv->type >= MS_GGUF_VTYPE_COUNT)
        return -EINVAL;
    /* A copied general.alignment describes the source file; this file gets
     * the writer's alignment in its place. */
    if (is_align_key(kv->key.ptr, kv->key.len))
        return add_scalar(w, kv->key.ptr, kv->key.len, MS_GGUF_UINT32, &w->alignment);
    if (kv->type == MS_GGUF_STRING) {
        if (!kv->v.str.ptr && kv->v.str.len)
            return -EINVAL;
        return add_string(w, kv->key.ptr, kv->key.len, kv->v.str.ptr ? kv->v.str.ptr : "", kv->v.str.len);
    }
    if (kv->type == MS_GGUF_ARRAY)
        return copy_array(w, kv);
    uint8_t v[8] = {0};
    encode_scalar(kv, v);
    return add_scalar(w, kv->key.ptr, kv->key.len, kv->type, v);
}

/* ---- tensor declarations ---- */

/* Bytes of a tensor of this shape, or 0 when the shape is invalid for type. */
static uint64_t tensor_bytes(ms_type_t type, uint32_t n_dims, const int64_t *ne)
{
    if (n_dims < 1 || n_dims > MS_GGUF_DIMS_MAX || !ne)
        return 0;
    uint64_t elems = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1 || (uint64_t)ne[d] > (uint64_t)INT64_MAX / elems)
            return 0;
        elems *= (uint64_t)ne[d];
    }
    uint64_t bytes = ms_type_row_bytes(type, (uint64_t)ne[0]);
    for (uint32_t d = 1; d < n_dims && bytes; d++)
        bytes = bytes > UINT64_MAX / (uint64_t)ne[d] ? 0 : bytes * (uint64_t)ne[d];
    return bytes;
}

static bool has_tensor(const ms_gguf_writer_t *w, const char *name)
{
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return true;
    return false;
}

static int tensors_grow(ms_gguf_writer_t *w)
{
    if (w->n_tensors < w->tensors_cap)
        return 0;
    uint64_t cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
    wtensor_t *t = realloc(w->tensors, cap * sizeof(*t));
    if (!t)
        return -ENOMEM;
    w->tensors = t;
    w->tensors_cap = cap;
    return 0;
}

int ms_gguf_writer_add_tensor(ms_gguf_writer_t *w, const char *name, ms_type_t type, uint32_t n_dims, const int64_t *ne)
{
    if (!w || !name || w->state != W_DECLARING || w->n_tensors >= MS_GGUF_TENSORS_MAX)
        return -EINVAL;
    size_t len = strlen(name);
    if (len == 0 || len > MS_GGUF_NAME_BYTES_MAX || has_tensor(w, name))
        return -EINVAL;
    uint64_t nbytes = tensor_bytes(type, n_dims, ne);
    uint64_t offset = align_up(w->data_bytes, w->alignment);
    /* keeps data_bytes + alignment representable, so align_up never wraps */
    if (nbytes == 0 || offset > UINT64_MAX - w->alignment || nbytes > UINT64_MAX - w->alignment - offset)
        return -EINVAL;
    if (tensors_grow(w))
        return -ENOMEM;
    wtensor_t *t = &w->tensors[w->n_tensors];
    *t = (wtensor_t){.name = strdup(name), .type = type, .n_dims = n_dims, .offset = offset, .nbytes = nbytes};
    if (!t->name)
        return -ENOMEM;
    for (uint32_t d = 0; d < MS_GGUF_DIMS_MAX; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    w->data_bytes = offset + nbytes;
    w->n_tensors++;
    return 0;
}

/* ---- streaming output ---- */

static int io_fail(ms_gguf_writer_t *w, const char *what, int e, ms_err_t *err)
{
    char buf[128];
    ms_err_set(err, "%s: %s: %s", w->path ? w->path : "(gguf writer)", what, strerror_r(e, buf, sizeof(buf)));
    w->state = W_FAILED;
    return -e;
}

static int write_all(ms_gguf_writer_t *w, const uint8_t *p, size_t n, ms_err_t *err)
{
    while (n > 0) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return io_fail(w, "write failed", errno, err);
        w->written += (uint64_t)k;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int flush(ms_gguf_writer_t *w, ms_err_t *err)
{
    int rc = write_all(w, w->buf, w->buf_len, err);
    w->buf_len = 0;
    return rc;
}

/* Appends n bytes (zeros when p is NULL); large chunks bypass the buffer. */
static int emit(ms_gguf_writer_t *w, const void *p, uint64_t n, ms_err_t *err)
{
    const uint8_t *src = p;
    if (src && n >= WRITE_BUF_BYTES) {
        int rc = flush(w, err);
        return rc ? rc : write_all(w, src, (size_t)n, err);
    }
    while (n > 0) {
        size_t k = WRITE_BUF_BYTES - w->buf_len;
        if (k > n)
            k = (size_t)n;
        if (src) {
            memcpy(w->buf + w->buf_len, src, k);
            src += k;
        } else {
            memset(w->buf + w->buf_len, 0, k);
        }
        w->buf_len += k;
        n -= k;
        if (w->buf_len == WRITE_BUF_BYTES) {
            int rc = flush(w, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int emit_u32(ms_gguf_writer_t *w, uint32_t v, ms_err_t *err) { return emit(w, &v, 4, err); }
static int emit_u64(ms_gguf_writer_t *w, uint64_t v, ms_err_t *err) { return emit(w, &v, 8, err); }

static int emit_tensor_info(ms_gguf_writer_t *w, const wtensor_t *t, ms_err_t *err)
{
    uint64_t len = strlen(t->name);
    int rc = emit_u64(w, len, err);
    rc = rc ? rc : emit(w, t->name, len, err);
    rc = rc ? rc : emit_u32(w, t->n_dims, err);
    for (uint32_t d = 0; d < t->n_dims && !rc; d++)
        rc = emit_u64(w, (uint64_t)t->ne[d], err);
    rc = rc ? rc : emit_u32(w, (uint32_t)t->type, err);
    return rc ? rc : emit_u64(w, t->offset, err);
}

static int emit_header(ms_gguf_writer_t *w, ms_err_t *err)
{
    bool auto_align = !w->align_declared && w->alignment != MS_GGUF_DEFAULT_ALIGNMENT;
    int rc = emit_u32(w, MS_GGUF_MAGIC, err);
    rc = rc ? rc : emit_u32(w, MS_GGUF_VERSION, err);
    rc = rc ? rc : emit_u64(w, w->n_tensors, err);
    rc = rc ? rc : emit_u64(w, w->n_kv + (auto_align ? 1 : 0), err);
    if (auto_align) { /* first, so a reader knows the alignment early */
        rc = rc ? rc : emit_u64(w, strlen(ALIGN_KEY), err);
        rc = rc ? rc : emit(w, ALIGN_KEY, strlen(ALIGN_KEY), err);
        rc = rc ? rc : emit_u32(w, MS_GGUF_UINT32, err);
        rc = rc ? rc : emit_u32(w, w->alignment, err);
    }
    rc = rc ? rc : emit(w, w->meta.p, w->meta.len, err);
    for (uint64_t i = 0; i < w->n_tensors && !rc; i++)
        rc = emit_tensor_info(w, &w->tensors[i], err);
    return rc;
}

int ms_gguf_writer_begin(ms_gguf_writer_t *w, const char *path, ms_err_t *err)
{
    if (!w || !path || w->state != W_DECLARING) {
        ms_err_set(err, "%s: gguf writer: begin called twice, after a failure, or without a writer",
                   path ? path : "(null)");
        return -EINVAL;
    }
    free(w->path);
    w->path = strdup(path);
    if (!w->buf)
        w->buf = malloc(WRITE_BUF_BYTES);
    if (!w->path || !w->buf) {
        ms_err_set(err, "%s: out of memory for the write buffer", path);
        return -ENOMEM;
    }
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0)
        return io_fail(w, "cannot create", errno, err);
    w->state = W_WRITING;
    int rc = emit_header(w, err);
    if (rc)
        return rc;
    uint64_t here = w->written + w->buf_len;
    return emit(w, NULL, align_up(here, w->alignment) - here, err); /* the data section starts aligned */
}

/* Padding after tensor cur, up to the next tensor's offset (or, after the
 * last one, to the alignment, so the file ends on an aligned boundary). */
static int emit_tensor_padding(ms_gguf_writer_t *w, ms_err_t *err)
{
    const wtensor_t *t = &w->tensors[w->cur];
    uint64_t end = t->offset + t->nbytes;
    uint64_t next = w->cur + 1 < w->n_tensors ? w->tensors[w->cur + 1].offset : align_up(end, w->alignment);
    return emit(w, NULL, next - end, err);
}

int ms_gguf_writer_write(ms_gguf_writer_t *w, const void *data, uint64_t nbytes, ms_err_t *err)
{
    if (!w || w->state != W_WRITING) {
        ms_err_set(err, "gguf writer: write while not writing (no successful begin, an earlier failure, or after finish)");
        return -EINVAL;
    }
    if (w->cur >= w->n_tensors) {
        ms_err_set(err, "%s: write of %" PRIu64 " bytes after every declared tensor was complete", w->path, nbytes);
        return -EINVAL;
    }
    const wtensor_t *t = &w->tensors[w->cur];
    if (nbytes > t->nbytes - w->cur_done || (nbytes && !data)) {
        ms_err_set(err, "%s: tensor '%s': write of %" PRIu64 " bytes exceeds the %" PRIu64 " bytes left of its %" PRIu64,
                   w->path, t->name, nbytes, t->nbytes - w->cur_done, t->nbytes);
        return -EINVAL;
    }
    int rc = emit(w, data, nbytes, err);
    if (rc)
        return rc;
    w->cur_done += nbytes;
    if (w->cur_done < t->nbytes || nbytes == 0)
        return 0;
    rc = emit_tensor_padding(w, err);
    w->cur++;
    w->cur_done = 0;
    return rc;
}

int ms_gguf_writer_finish(ms_gguf_writer_t *w, ms_err_t *err)
{
    if (!w || w->state != W_WRITING) {
        ms_err_set(err, "gguf writer: finish while not writing (no successful begin, an earlier failure, or after finish)");
        return -EINVAL;
    }
    if (w->cur < w->n_tensors) {
        const wtensor_t *t = &w->tensors[w->cur];
        ms_err_set(err, "%s: tensor '%s': %" PRIu64 " of %" PRIu64 " bytes written (%" PRIu64 " tensors of %" PRIu64
                        " complete)", w->path, t->name, w->cur_done, t->nbytes, w->cur, w->n_tensors);
        return -EINVAL;
    }
    int rc = flush(w, err);
    if (rc)
        return rc;
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0)
        return io_fail(w, "close failed", errno, err);
    w->state = W_DONE;
    return 0;
}
