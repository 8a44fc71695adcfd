/* GGUF v3 reader: maps a file read-only (or borrows a caller buffer), checks
 * every header, metadata and tensor-info field against the bytes that are
 * really there and the limits in limits.h, then indexes keys and tensor names. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* GNU strerror_r, which returns the message */
#endif

#include "limits.h"

#include "gguf.h"
#include "mem.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Numeric array elements are handed out as raw little-endian bytes. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

/* The smallest encodings, used to refuse counts that cannot fit in the bytes
 * left before allocating anything for them. */
#define KV_BYTES_MIN (8 + 1 + 4 + 1)               /* key len, 1-byte key, type, 1-byte value */
#define TENSOR_INFO_BYTES_MIN (8 + 1 + 4 + 8 + 4 + 8) /* name len, 1-byte name, n_dims, ne[0], type, offset */
#define SHOW_NAME_BYTES 64                         /* how much of a name goes into a message */

/* Open-addressing table of item indices, keyed by the ms_str_t name field of
 * the items (keys or tensors) it points at. */
typedef struct {
    uint32_t *slots;   /* item index + 1; 0 = empty */
    uint64_t mask;     /* slot count - 1 (power of two) */
    const char *items; /* address of the first item's name field */
    size_t stride;     /* bytes between two items */
} name_index_t;

struct ms_gguf {
    char *name;          /* path or caller's name, for messages */
    const uint8_t *base; /* file bytes */
    uint64_t size;       /* of the file */
    uint64_t avail;      /* bytes at base: the file, or its header part (header_only) */
    bool header_only;    /* tensor data not mapped: tensors' data pointers are NULL */
    bool layout_only;    /* header_only, and tensor data may lie past the end of the file */
    bool ran_short;      /* the last parse failed for want of bytes past avail */
    void *map; /* our mapping (NULL for a borrowed buffer or an empty file) */
    void *mem;           /* tensors' bytes moved into memory (ms_gguf_own_mem), or NULL */
    uint64_t mem_bytes;
    uint32_t alignment;
    uint64_t data_offset;
    uint64_t n_kv;
    ms_gguf_kv_t *kvs;
    uint64_t n_tensors;
    ms_gguf_tensor_t *tensors;
    name_index_t kv_index;
    name_index_t tensor_index;
    /* A split model: this object is its first part, holding the model's
     * metadata and the merged tensor table; parts[1..n_parts-1] are the
     * other files, each opened and validated on its own (parts[0] unused). */
    uint32_t n_parts;
    ms_gguf_t **parts;
};

/* Parsing position plus what is being parsed, so every message can say where. */
typedef struct {
    const uint8_t *p;
    uint64_t size;
    uint64_t pos;
    const char *name;
    ms_err_t *err;
    bool *ran_short; /* set when a check fails for want of bytes */
    char where[128]; /* "header", "metadata key 3 ('general.name')", "tensor 7 ('output.weight')" */
} cursor_t;

static const uint8_t scalar_bytes[MS_GGUF_VTYPE_COUNT] = {
    [MS_GGUF_UINT8] = 1,  [MS_GGUF_INT8] = 1,    [MS_GGUF_UINT16] = 2, [MS_GGUF_INT16] = 2,
    [MS_GGUF_UINT32] = 4, [MS_GGUF_INT32] = 4,   [MS_GGUF_FLOAT32] = 4, [MS_GGUF_BOOL] = 1,
    [MS_GGUF_UINT64] = 8, [MS_GGUF_INT64] = 8,   [MS_GGUF_FLOAT64] = 8,
};

static const char *const vtype_names[MS_GGUF_VTYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool",  "string", "array", "uint64", "int64", "float64",
};

const char *ms_gguf_vtype_name(uint32_t vtype)
{
    return vtype < MS_GGUF_VTYPE_COUNT ? vtype_names[vtype] : "?";
}

bool ms_str_eq(ms_str_t s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

/* A name as it may appear in a message: at most SHOW_NAME_BYTES bytes, with
 * bytes that could garble a log line replaced by '?'. */
static const char *show(ms_str_t s, char buf[SHOW_NAME_BYTES + 4])
{
    uint64_t n = s.len < SHOW_NAME_BYTES ? s.len : SHOW_NAME_BYTES;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[i] = (ch >= 0x20 && ch < 0x7f && ch != '\'') ? (char)ch : '?';
    }
    strcpy(buf + n, s.len > n ? "..." : "");
    return buf;
}

static void where_set(cursor_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void where_set(cursor_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->where, sizeof(c->where), fmt, ap);
    va_end(ap);
}

/* "name: where: detail"; always -EINVAL, so callers can return it directly. */
static int bad(cursor_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(cursor_t *c, const char *fmt, ...)
{
    char detail[MS_ERR_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    ms_err_set(c->err, "%s: %s: %s", c->name, c->where, detail);
    return -EINVAL;
}

static uint64_t left(const cursor_t *c)
{
    return c->size - c->pos;
}

static int need(cursor_t *c, uint64_t n, const char *what)
{
    if (n <= left(c))
        return 0;
    *c->ran_short = true;
    ms_err_set(c->err, "%s: truncated in %s: %s needs %" PRIu64 " bytes but only %" PRIu64 " are left",
               c->name, c->where, what, n, left(c));
    return -EINVAL;
}

static int rd_u32(cursor_t *c, const char *what, uint32_t *ret)
{
    int rc = need(c, 4, what);
    if (rc)
        return rc;
    memcpy(ret, c->p + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor_t *c, const char *what, uint64_t *ret)
{
    int rc = need(c, 8, what);
    if (rc)
        return rc;
    memcpy(ret, c->p + c->pos, 8);
    c->pos += 8;
    return 0;
}

/* A u64 length then that many bytes, the length checked against max first. */
static int rd_str(cursor_t *c, uint64_t max, const char *what, ms_str_t *ret)
{
    uint64_t len;
    int rc = rd_u64(c, what, &len);
    if (rc)
        return rc;
    if (len > max)
        return bad(c, "%s length %" PRIu64 " exceeds the limit %" PRIu64, what, len, max);
    rc = need(c, len, what);
    if (rc)
        return rc;
    ret->ptr = (const char *)(c->p + c->pos);
    ret->len = len;
    c->pos += len;
    return 0;
}

/* ---- name index ---- */

static uint64_t hash_bytes(const char *p, uint64_t n)
{
    uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3u;
    }
    return h;
}

static int index_init(name_index_t *ix, uint64_t n, const void *items, size_t stride)
{
    uint64_t cap = 16;
    while (cap < 2 * n) /* at most half full keeps probe chains short */
        cap <<= 1;
    ix->slots = calloc(cap, sizeof(*ix->slots));
    if (!ix->slots)
        return -ENOMEM;
    ix->mask = cap - 1;
    ix->items = items;
    ix->stride = stride;
    return 0;
}

static ms_str_t index_name(const name_index_t *ix, uint32_t i)
{
    ms_str_t s;
    memcpy(&s, ix->items + (size_t)i * ix->stride, sizeof(s));
    return s;
}

/* Slot holding name, or the empty slot where it would go. */
static uint64_t index_slot(const name_index_t *ix, const char *p, uint64_t n)
{
    uint64_t h = hash_bytes(p, n) & ix->mask;
    for (;;) {
        uint32_t v = ix->slots[h];
        if (v == 0)
            return h;
        ms_str_t s = index_name(ix, v - 1);
        if (s.len == n && (n == 0 || memcmp(s.ptr, p, n) == 0))
            return h;
        h = (h + 1) & ix->mask;
    }
}

/* Adds item i; returns the index of an item already holding the name, or -1. */
static int64_t index_add(name_index_t *ix, uint32_t i)
{
    ms_str_t s = index_name(ix, i);
    uint64_t h = index_slot(ix, s.ptr, s.len);
    if (ix->slots[h])
        return (int64_t)ix->slots[h] - 1;
    ix->slots[h] = i + 1;
    return -1;
}

static int64_t index_find(const name_index_t *ix, const char *name)
{
    if (!ix->slots)
        return -1;
    uint64_t h = index_slot(ix, name, strlen(name));
    return (int64_t)ix->slots[h] - 1;
}

/* ---- header ---- */

static int check_count(cursor_t *c, const char *field, uint64_t n, uint64_t max, uint64_t min_bytes, const char *items)
{
    if (n > max)
        return bad(c, "%s=%" PRIu64 " exceeds the limit %" PRIu64, field, n, max);
    if (n * min_bytes > left(c) && (*c->ran_short = true)) /* no overflow: n <= 2^20, min_bytes < 64 */
        return bad(c, "%s=%" PRIu64 " %s need at least %" PRIu64 " bytes but only %" PRIu64 " are left", field, n,
                   items, n * min_bytes, left(c));
    return 0;
}

static int parse_header(ms_gguf_t *g, cursor_t *c)
{
    uint32_t magic, version;
    where_set(c, "header");
    int rc = rd_u32(c, "magic", &magic);
    if (rc)
        return rc;
    if (magic != MS_GGUF_MAGIC) {
        ms_err_set(c->err, "%s: bad magic 0x%08" PRIx32 " (not a GGUF file)", c->name, magic);
        return -EINVAL;
    }
    if ((rc = rd_u32(c, "version", &version)))
        return rc;
    if (version != MS_GGUF_VERSION) {
        ms_err_set(c->err, "%s: GGUF version %" PRIu32 " is not supported (version %d is)", c->name, version,
                   MS_GGUF_VERSION);
        return -EINVAL;
    }
    if ((rc = rd_u64(c, "n_tensors", &g->n_tensors)) || (rc = rd_u64(c, "n_kv", &g->n_kv)))
        return rc;
    if ((rc = check_count(c, "n_kv", g->n_kv, MS_GGUF_KV_MAX, KV_BYTES_MIN, "metadata pairs")))
        return rc;
    return check_count(c, "n_tensors", g->n_tensors, MS_GGUF_TENSORS_MAX, TENSOR_INFO_BYTES_MIN, "tensor infos");
}

/* ---- metadata values ---- */

static void decode_scalar(ms_gguf_vtype_t type, const uint8_t *p, ms_gguf_kv_t *kv)
{
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    float f32;
    switch (type) {
    case MS_GGUF_UINT8: kv->v.u64 = p[0]; break;
    case MS_GGUF_INT8: kv->v.i64 = (int8_t)p[0]; break;
    case MS_GGUF_UINT16: memcpy(&u16, p, 2); kv->v.u64 = u16; break;
    case MS_GGUF_INT16: memcpy(&u16, p, 2); kv->v.i64 = (int16_t)u16; break;
    case MS_GGUF_UINT32: memcpy(&u32, p, 4); kv->v.u64 = u32; break;
    case MS_GGUF_INT32: memcpy(&u32, p, 4); kv->v.i64 = (int32_t)u32; break;
    case MS_GGUF_FLOAT32: memcpy(&f32, p, 4); kv->v.f64 = f32; break;
    case MS_GGUF_BOOL: kv->v.b = p[0] != 0; break;
    case MS_GGUF_UINT64: memcpy(&u64, p, 8); kv->v.u64 = u64; break;
    case MS_GGUF_INT64: memcpy(&u64, p, 8); kv->v.i64 = (int64_t)u64; break;
    case MS_GGUF_FLOAT64: memcpy(&kv->v.f64, p, 8); break;
    default: break; /* strings and arrays are not scalars */
    }
}

static int parse_scalar(cursor_t *c, ms_gguf_kv_t *kv)
{
    if (kv->type == MS_GGUF_STRING)
        return rd_str(c, MS_GGUF_STRING_BYTES_MAX, "string value", &kv->v.str);
    int rc = need(c, scalar_bytes[kv->type], ms_gguf_vtype_name(kv->type));
    if (rc)
        return rc;
    const uint8_t *p = c->p + c->pos;
    if (kv->type == MS_GGUF_BOOL && p[0] > 1)
        return bad(c, "bool byte %u is neither 0 nor 1", p[0]);
    decode_scalar(kv->type, p, kv);
    c->pos += scalar_bytes[kv->type];
    return 0;
}

static int parse_str_array(cursor_t *c, ms_gguf_kv_t *kv)
{
    if (kv->arr_n * 8 > left(c)) { /* each string needs at least its length field */
        *c->ran_short = true;
        ms_err_set(c->err, "%s: truncated in %s: array of %" PRIu64 " strings needs at least %" PRIu64
                           " bytes but only %" PRIu64 " are left", c->name, c->where, kv->arr_n, kv->arr_n * 8, left(c));
        return -EINVAL;
    }
    if (kv->arr_n == 0)
        return 0;
    ms_str_t *strs = calloc(kv->arr_n, sizeof(*strs));
    if (!strs) {
        ms_err_set(c->err, "%s: %s: out of memory for %" PRIu64 " strings", c->name, c->where, kv->arr_n);
        return -ENOMEM;
    }
    kv->arr_strs = strs; /* owned from here on, freed by close */
    char what[48];
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        snprintf(what, sizeof(what), "array string %" PRIu64, i);
        int rc = rd_str(c, MS_GGUF_STRING_BYTES_MAX, what, &strs[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static int parse_num_array(cursor_t *c, ms_gguf_kv_t *kv)
{
    uint64_t bytes = kv->arr_n * scalar_bytes[kv->arr_type]; /* arr_n <= 2^26: no overflow */
    char what[64];
    snprintf(what, sizeof(what), "array of %" PRIu64 " %s", kv->arr_n, ms_gguf_vtype_name(kv->arr_type));
    int rc = need(c, bytes, what);
    if (rc)
        return rc;
    const uint8_t *p = c->p + c->pos;
    if (kv->arr_type == MS_GGUF_BOOL) {
        for (uint64_t i = 0; i < kv->arr_n; i++)
            if (p[i] > 1)
                return bad(c, "bool element %" PRIu64 " is %u, neither 0 nor 1", i, p[i]);
    }
    kv->arr_data = p;
    c->pos += bytes;
    return 0;
}

static int parse_array(cursor_t *c, ms_gguf_kv_t *kv)
{
    uint32_t et;
    int rc = rd_u32(c, "array element type", &et);
    if (rc)
        return rc;
    if (et == MS_GGUF_ARRAY)
        return bad(c, "nested arrays (array of array) are not supported");
    if (et >= MS_GGUF_VTYPE_COUNT)
        return bad(c, "unknown array element type %" PRIu32, et);
    kv->arr_type = (ms_gguf_vtype_t)et;
    if ((rc = rd_u64(c, "array count", &kv->arr_n)))
        return rc;
    if (kv->arr_n > MS_GGUF_ARRAY_MAX)
        return bad(c, "array count %" PRIu64 " exceeds the limit %u", kv->arr_n, (unsigned)MS_GGUF_ARRAY_MAX);
    return et == MS_GGUF_STRING ? parse_str_array(c, kv) : parse_num_array(c, kv);
}

static int parse_kv(ms_gguf_t *g, cursor_t *c, uint64_t i)
{
    ms_gguf_kv_t *kv = &g->kvs[i];
    char shown[SHOW_NAME_BYTES + 4];
    where_set(c, "metadata key %" PRIu64, i);
    int rc = rd_str(c, MS_GGUF_STRING_BYTES_MAX, "key", &kv->key);
    if (rc)
        return rc;
    if (kv->key.len == 0)
        return bad(c, "empty key");
    where_set(c, "metadata key %" PRIu64 " ('%s')", i, show(kv->key, shown));
    int64_t dup = index_add(&g->kv_index, (uint32_t)i);
    if (dup >= 0)
        return bad(c, "duplicate key (metadata key %" PRId64 " has the same name)", dup);
    uint32_t type;
    if ((rc = rd_u32(c, "value type", &type)))
        return rc;
    if (type >= MS_GGUF_VTYPE_COUNT)
        return bad(c, "unknown value type %" PRIu32, type);
    kv->type = (ms_gguf_vtype_t)type;
    return type == MS_GGUF_ARRAY ? parse_array(c, kv) : parse_scalar(c, kv);
}

static int parse_alignment(ms_gguf_t *g, cursor_t *c)
{
    g->alignment = MS_GGUF_DEFAULT_ALIGNMENT;
    const ms_gguf_kv_t *kv = ms_gguf_find_kv(g, "general.alignment");
    if (!kv)
        return 0;
    where_set(c, "metadata 'general.alignment'");
    if (kv->type != MS_GGUF_UINT32)
        return bad(c, "general.alignment has type %s, expected uint32", ms_gguf_vtype_name(kv->type));
    uint64_t a = kv->v.u64;
    if (a == 0 || (a & (a - 1)) != 0)
        return bad(c, "general.alignment=%" PRIu64 " is not a power of two", a);
    if (a > MS_GGUF_ALIGNMENT_MAX)
        return bad(c, "general.alignment=%" PRIu64 " exceeds the limit %u", a, (unsigned)MS_GGUF_ALIGNMENT_MAX);
    g->alignment = (uint32_t)a;
    return 0;
}

static int parse_metadata(ms_gguf_t *g, cursor_t *c)
{
    if (g->n_kv) {
        g->kvs = calloc(g->n_kv, sizeof(*g->kvs));
        if (!g->kvs)
            return -ENOMEM;
    }
    if (index_init(&g->kv_index, g->n_kv, g->kvs ? (const void *)&g->kvs[0].key : NULL, sizeof(*g->kvs)))
        return -ENOMEM;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        int rc = parse_kv(g, c, i);
        if (rc)
            return rc;
    }
    return parse_alignment(g, c);
}

/* ---- tensor infos ---- */

static int read_shape(cursor_t *c, ms_gguf_tensor_t *t)
{
    int rc = rd_u32(c, "n_dims", &t->n_dims);
    if (rc)
        return rc;
    if (t->n_dims < 1 || t->n_dims > MS_GGUF_DIMS_MAX)
        return bad(c, "n_dims=%" PRIu32 " is outside 1..%d", t->n_dims, MS_GGUF_DIMS_MAX);
    for (uint32_t d = 0; d < MS_GGUF_DIMS_MAX; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne;
        if ((rc = rd_u64(c, "ne", &ne)))
            return rc;
        if (ne > INT64_MAX)
            return bad(c, "ne[%" PRIu32 "]=%" PRId64 " is negative", d, (int64_t)ne);
        if (ne == 0)
            return bad(c, "ne[%" PRIu32 "]=0: empty tensors are not supported", d);
        t->ne[d] = (int64_t)ne;
    }
    return 0;
}

static int check_size(cursor_t *c, ms_gguf_tensor_t *t)
{
    const ms_type_traits_t *tt = ms_type_traits(t->type);
    uint64_t elems = 1;
    for (int d = 0; d < MS_GGUF_DIMS_MAX; d++) {
        if ((uint64_t)t->ne[d] > (uint64_t)INT64_MAX / elems)
            return bad(c, "element count of shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] overflows 64 bits",
                       t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
        elems *= (uint64_t)t->ne[d];
    }
    if (t->ne[0] % tt->block_elems != 0)
        return bad(c, "ne[0]=%" PRId64 " is not a multiple of the %s block size %" PRIu32, t->ne[0], tt->name,
                   tt->block_elems);
    uint64_t bytes = ms_type_row_bytes(t->type, (uint64_t)t->ne[0]);
    for (int d = 1; d < MS_GGUF_DIMS_MAX && bytes; d++)
        bytes = bytes > UINT64_MAX / (uint64_t)t->ne[d] ? 0 : bytes * (uint64_t)t->ne[d];
    if (bytes == 0) /* ne >= 1 everywhere, so 0 here means overflow */
        return bad(c, "byte size of %s shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] overflows 64 bits",
                   tt->name, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    t->nbytes = bytes;
    return 0;
}

static int parse_tensor_info(ms_gguf_t *g, cursor_t *c, uint64_t i)
{
    ms_gguf_tensor_t *t = &g->tensors[i];
    char shown[SHOW_NAME_BYTES + 4];
    where_set(c, "tensor %" PRIu64, i);
    int rc = rd_str(c, MS_GGUF_NAME_BYTES_MAX, "name", &t->name);
    if (rc)
        return rc;
    if (t->name.len == 0)
        return bad(c, "empty name");
    where_set(c, "tensor %" PRIu64 " ('%s')", i, show(t->name, shown));
    int64_t dup = index_add(&g->tensor_index, (uint32_t)i);
    if (dup >= 0)
        return bad(c, "duplicate tensor name (tensor %" PRId64 " has the same name)", dup);
    if ((rc = read_shape(c, t)))
        return rc;
    uint32_t type;
    if ((rc = rd_u32(c, "type", &type)) || (rc = rd_u64(c, "offset", &t->offset)))
        return rc;
    if (!ms_type_traits(type))
        return bad(c, "unknown tensor type %" PRIu32, type);
    t->type = (ms_type_t)type;
    return check_size(c, t);
}

/* A file that describes a model without holding its data (the header-only
 * files of genmodel): the data may lie past the end, but its range must still
 * be a range of 64-bit offsets. */
static int place_described(ms_gguf_t *g, cursor_t *c, ms_gguf_tensor_t *t)
{
    if (t->offset > UINT64_MAX - g->data_offset || t->nbytes > UINT64_MAX - (g->data_offset + t->offset))
        return bad(c, "data offset %" PRIu64 " + %" PRIu64 " bytes overflows 64 bits", t->offset, t->nbytes);
    t->file_offset = g->data_offset + t->offset;
    t->data = NULL;
    return 0;
}

/* Offsets are checked once the data section's start is known. */
static int place_tensor(ms_gguf_t *g, cursor_t *c, uint64_t i)
{
    ms_gguf_tensor_t *t = &g->tensors[i];
    char shown[SHOW_NAME_BYTES + 4];
    where_set(c, "tensor %" PRIu64 " ('%s')", i, show(t->name, shown));
    if (t->offset % g->alignment != 0)
        return bad(c, "offset %" PRIu64 " is not a multiple of the alignment %" PRIu32, t->offset, g->alignment);
    if (g->layout_only)
        return place_described(g, c, t);
    uint64_t room = g->size > g->data_offset ? g->size - g->data_offset : 0;
    if (t->offset > room)
        return bad(c, "data offset %" PRIu64 " lies past end of file (data section at %" PRIu64 ", size %" PRIu64 ")",
                   t->offset, g->data_offset, g->size);
    uint64_t start = g->data_offset + t->offset; /* <= size */
    if (t->nbytes > room - t->offset) {
        if (t->nbytes > UINT64_MAX - start)
            return bad(c, "data [%" PRIu64 ", %" PRIu64 " + %" PRIu64 ") extends past end of file (size %" PRIu64 ")",
                       start, start, t->nbytes, g->size);
        return bad(c, "data [%" PRIu64 ", %" PRIu64 ") extends past end of file (size %" PRIu64 ")", start,
                   start + t->nbytes, g->size);
    }
    t->file_offset = g->data_offset + t->offset;
    t->data = g->header_only ? NULL : g->base + t->file_offset;
    return 0;
}

typedef struct {
    uint64_t offset;
    uint64_t end;
    uint32_t idx;
} span_t;

static int span_cmp(const void *a, const void *b)
{
    const span_t *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : (x->idx > y->idx) - (x->idx < y->idx);
}

/* ggml writes tensors back to back; any order is accepted here, overlap is not. */
static int check_overlap(ms_gguf_t *g, cursor_t *c)
{
    if (g->n_tensors < 2)
        return 0;
    span_t *s = malloc(g->n_tensors * sizeof(*s));
    if (!s)
        return -ENOMEM;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        s[i] = (span_t){g->tensors[i].offset, g->tensors[i].offset + g->tensors[i].nbytes, (uint32_t)i};
    qsort(s, g->n_tensors, sizeof(*s), span_cmp);
    int rc = 0;
    for (uint64_t k = 1; k < g->n_tensors && !rc; k++) {
        if (s[k].offset >= s[k - 1].end)
            continue;
        char a[SHOW_NAME_BYTES + 4], b[SHOW_NAME_BYTES + 4];
        where_set(c, "tensor %" PRIu32 " ('%s')", s[k].idx, show(g->tensors[s[k].idx].name, a));
        rc = bad(c, "data [%" PRIu64 ", %" PRIu64 ") overlaps tensor %" PRIu32 " ('%s') [%" PRIu64 ", %" PRIu64 ")",
                 s[k].offset, s[k].end, s[k - 1].idx, show(g->tensors[s[k - 1].idx].name, b), s[k - 1].offset,
                 s[k - 1].end);
    }
    free(s);
    return rc;
}

static int parse_tensors(ms_gguf_t *g, cursor_t *c)
{
    if (g->n_tensors) {
        g->tensors = calloc(g->n_tensors, sizeof(*g->tensors));
        if (!g->tensors)
            return -ENOMEM;
    }
    if (index_init(&g->tensor_index, g->n_tensors, g->tensors ? (const void *)&g->tensors[0].name : NULL,
                   sizeof(*g->tensors)))
        return -ENOMEM;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        int rc = parse_tensor_info(g, c, i);
        if (rc)
            return rc;
    }
    /* The data section starts at the next multiple of the alignment; a file
     * without tensors may end before it. */
    g->data_offset = (c->pos + g->alignment - 1) / g->alignment * g->alignment;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        int rc = place_tensor(g, c, i);
        if (rc)
            return rc;
    }
    return check_overlap(g, c);
}

static int parse(ms_gguf_t *g, ms_err_t *err)
{
    g->ran_short = false;
    cursor_t c = {.p = g->base, .size = g->avail, .pos = 0, .name = g->name, .err = err, .ran_short = &g->ran_short};
    int rc = parse_header(g, &c);
    if (!rc)
        rc = parse_metadata(g, &c);
    if (!rc)
        rc = parse_tensors(g, &c);
    if (rc == -ENOMEM)
        ms_err_set(err, "%s: out of memory while indexing %" PRIu64 " keys and %" PRIu64 " tensors", g->name, g->n_kv,
                   g->n_tensors);
    return rc;
}

/* ---- open / close ---- */

static ms_gguf_t *gguf_alloc(const char *name)
{
    ms_gguf_t *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->name = strdup(name ? name : "(buffer)");
    if (!g->name) {
        free(g);
        return NULL;
    }
    return g;
}

static int finish_open(ms_gguf_t *g, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    int rc = parse(g, err);
    if (rc) {
        ms_gguf_close(&g);
        return rc;
    }
    *ret_gguf = g;
    return 0;
}

int ms_gguf_open_mem(const void *buf, size_t len, const char *name, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    ms_gguf_t *g = gguf_alloc(name);
    if (!g) {
        ms_err_set(err, "%s: out of memory", name ? name : "(buffer)");
        return -ENOMEM;
    }
    g->base = buf;
    g->size = g->avail = buf ? len : 0;
    return finish_open(g, ret_gguf, err);
}

static int sys_fail(const char *path, const char *what, int e, ms_err_t *err)
{
    char buf[128];
    ms_err_set(err, "%s: %s: %s", path, what, strerror_r(e, buf, sizeof(buf)));
    return -e;
}

/* Maps the first min(size, limit) bytes of fd; an empty file is left
 * unmapped (mmap refuses length 0) and then fails validation like any
 * truncated file. */
static int map_file(ms_gguf_t *g, int fd, const char *path, uint64_t limit, ms_err_t *err)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return sys_fail(path, "cannot stat", errno == ENOMEM ? ENOMEM : EIO, err);
    if (!S_ISREG(st.st_mode)) {
        ms_err_set(err, "%s: not a regular file", path);
        return -EINVAL;
    }
    g->size = (uint64_t)st.st_size;
    g->avail = g->size < limit ? g->size : limit;
    if (g->avail == 0)
        return 0;
    void *p = mmap(NULL, (size_t)g->avail, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        return sys_fail(path, "cannot map", e == ENOMEM ? ENOMEM : EIO, err);
    }
    g->map = p;
    g->base = p;
    return 0;
}

typedef enum {
    OPEN_FULL,   /* the whole file mapped */
    OPEN_HEADER, /* the header mapped; tensor data must lie inside the file */
    OPEN_LAYOUT, /* the header mapped; tensor data may lie past the end of the file */
} open_mode_t;

static int open_whole(const char *path, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sys_fail(path, "cannot open", errno, err);
    ms_gguf_t *g = gguf_alloc(path);
    if (!g) {
        close(fd);
        ms_err_set(err, "%s: out of memory", path);
        return -ENOMEM;
    }
    int rc = map_file(g, fd, path, UINT64_MAX, err);
    close(fd); /* the mapping keeps the file's pages */
    if (rc) {
        ms_gguf_close(&g);
        return rc;
    }
    return finish_open(g, ret_gguf, err);
}

/* The first mapping tried by ms_gguf_open_header; it grows 4x while the
 * header runs past it. */
#define GGUF_HEADER_PROBE_BYTES (1u << 20)

static int open_prefix(const char *path, bool layout, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sys_fail(path, "cannot open", errno, err);
    uint64_t limit = GGUF_HEADER_PROBE_BYTES;
    for (;;) {
        ms_gguf_t *g = gguf_alloc(path);
        if (!g) {
            close(fd);
            ms_err_set(err, "%s: out of memory", path);
            return -ENOMEM;
        }
        g->header_only = true;
        g->layout_only = layout;
        int rc = map_file(g, fd, path, limit, err);
        rc = rc ? rc : parse(g, err);
        if (!rc) {
            close(fd);
            *ret_gguf = g;
            return 0;
        }
        bool retry = rc == -EINVAL && g->ran_short && g->avail < g->size;
        uint64_t size = g->size;
        ms_gguf_close(&g);
        if (!retry) {
            close(fd);
            return rc;
        }
        limit = limit > size / 4 ? size : limit * 4;
    }
}

static int open_file(const char *path, open_mode_t mode, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    return mode == OPEN_FULL ? open_whole(path, ret_gguf, err) : open_prefix(path, mode == OPEN_LAYOUT, ret_gguf, err);
}

/* ---- split models (llama.cpp's gguf-split: NAME-0000K-of-0000N.gguf) ---- */

#define SPLIT_PARTS_MAX 4096   /* files of one split model (gguf-split writes split.count as u16) */
#define SPLIT_SUFFIX_BYTES 20  /* "-00001-of-00003.gguf": 5-digit numbers while count <= 99999 */
_Static_assert(SPLIT_PARTS_MAX <= 99999, "part numbers are written with 5 digits");

typedef struct {
    uint32_t no;      /* split.no: 0-based index of this part */
    uint32_t count;   /* split.count: 1 for a whole model */
    uint64_t tensors; /* split.tensors.count: tensors of the whole model */
} split_t;

/* The split.* keys of one file; a file without split.count is a whole model. */
static int read_split(const ms_gguf_t *g, split_t *ret, ms_err_t *err)
{
    *ret = (split_t){ .no = 0, .count = 1, .tensors = g->n_tensors };
    int rc = ms_gguf_get_u32(g, "split.count", &ret->count);
    if (rc == -ENOENT)
        return 0;
    if (rc || ret->count < 1 || ret->count > SPLIT_PARTS_MAX) {
        ms_err_set(err, "%s: metadata key 'split.count' must be an integer in [1, %d]", g->name, SPLIT_PARTS_MAX);
        return -EINVAL;
    }
    rc = ms_gguf_get_u32(g, "split.no", &ret->no);
    if ((rc && !(rc == -ENOENT && ret->count == 1)) || ret->no >= ret->count) {
        ms_err_set(err, "%s: metadata key 'split.no' must be an integer in [0, %" PRIu32 ") (split.count is %" PRIu32 ")",
                   g->name, ret->count, ret->count);
        return -EINVAL;
    }
    int32_t total;
    if (ret->count == 1)
        return 0;
    if (ms_gguf_get_i32(g, "split.tensors.count", &total) || total < 0 || (uint64_t)total > MS_GGUF_TENSORS_MAX) {
        ms_err_set(err, "%s: metadata key 'split.tensors.count' must be an integer in [0, %u] in every part of a split"
                   " model", g->name, (unsigned)MS_GGUF_TENSORS_MAX);
        return -EINVAL;
    }
    ret->tensors = (uint64_t)total;
    return 0;
}

/* "-0000K-of-0000N.gguf" for part i (0-based) of count: SPLIT_SUFFIX_BYTES
 * characters, as count <= SPLIT_PARTS_MAX. */
static void split_suffix(char buf[32], uint32_t i, uint32_t count)
{
    snprintf(buf, 32, "-%05" PRIu32 "-of-%05" PRIu32 ".gguf", i + 1, count);
}

/* Length of g's name before the "-0000K-of-0000N.gguf" its split keys call for. */
static int split_prefix_len(const ms_gguf_t *g, const split_t *sp, size_t *ret, ms_err_t *err)
{
    char want[32];
    split_suffix(want, sp->no, sp->count);
    size_t len = strlen(g->name);
    if (len <= SPLIT_SUFFIX_BYTES || strcmp(g->name + len - SPLIT_SUFFIX_BYTES, want) != 0) {
        ms_err_set(err, "%s: part %" PRIu32 " of a model split in %" PRIu32 " (split.no %" PRIu32 ", split.count %"
                   PRIu32 "), but its name does not end in '%s', so the other parts cannot be found (keep the names"
                   " gguf-split gave the parts)", g->name, sp->no + 1, sp->count, sp->no, sp->count, want);
        return -EINVAL;
    }
    *ret = len - SPLIT_SUFFIX_BYTES;
    return 0;
}

/* "PREFIX-0000K-of-0000N.gguf" for part i (0-based); the caller frees it. */
static char *part_name(const char *name, size_t prefix_len, uint32_t i, uint32_t count)
{
    char suffix[32];
    split_suffix(suffix, i, count);
    size_t n = strlen(suffix);
    char *p = malloc(prefix_len + n + 1);
    if (p) {
        memcpy(p, name, prefix_len);
        memcpy(p + prefix_len, suffix, n + 1);
    }
    return p;
}

/* Opens part i of the split model sp (read from the file ref) describes and
 * checks that it says so. */
static int open_part(const char *path, open_mode_t mode, uint32_t i, const split_t *sp, const char *ref,
                     ms_gguf_t **ret, ms_err_t *err)
{
    ms_gguf_t *p = NULL;
    split_t got;
    int rc = open_file(path, mode, &p, err);
    if (rc == -ENOENT)
        ms_err_set(err, "%s: part %" PRIu32 " of %" PRIu32 " of a split model is missing (every part must be in the"
                   " same folder)", path, i + 1, sp->count);
    rc = rc ? rc : read_split(p, &got, err);
    if (!rc && (got.count != sp->count || got.no != i)) {
        ms_err_set(err, "%s: split.count %" PRIu32 ", split.no %" PRIu32 ": expected part %" PRIu32 " (split.no %" PRIu32
                   ") of %" PRIu32 "; is it a part of another model?", path, got.count, got.no, i + 1, i, sp->count);
        rc = -EINVAL;
    } else if (!rc && got.tensors != sp->tensors) {
        ms_err_set(err, "%s: split.tensors.count is %" PRIu64 " but %s says %" PRIu64 ": the parts belong to"
                   " different models", path, got.tensors, ref, sp->tensors);
        rc = -EINVAL;
    }
    if (rc) {
        ms_gguf_close(&p);
        return rc;
    }
    *ret = p;
    return 0;
}

static const ms_gguf_t *part_at(const ms_gguf_t *g, uint32_t i)
{
    return i == 0 ? g : g->parts[i];
}

static int dup_error(const ms_gguf_t *g, const ms_gguf_tensor_t *t, const ms_gguf_tensor_t *first, ms_err_t *err)
{
    char shown[SHOW_NAME_BYTES + 4];
    ms_err_set(err, "%s: tensor '%s' is also in %s: the parts of a split model hold each tensor once",
               part_at(g, t->part)->name, show(t->name, shown), part_at(g, first->part)->name);
    return -EINVAL;
}

/* One tensor table over every part, in part order; names unique across parts. */
static int merge_tensors(ms_gguf_t *g, const split_t *sp, ms_err_t *err)
{
    uint64_t total = 0; /* <= SPLIT_PARTS_MAX * MS_GGUF_TENSORS_MAX: no overflow */
    for (uint32_t i = 0; i < g->n_parts; i++)
        total += part_at(g, i)->n_tensors;
    if (total != sp->tensors) {
        ms_err_set(err, "%s: split.tensors.count is %" PRIu64 " but the %" PRIu32 " parts hold %" PRIu64 " tensors",
                   g->name, sp->tensors, g->n_parts, total);
        return -EINVAL;
    }
    ms_gguf_tensor_t *all = total ? calloc(total, sizeof(*all)) : NULL;
    name_index_t ix = { 0 };
    if ((total && !all) || index_init(&ix, total, all ? (const void *)&all[0].name : NULL, sizeof(*all))) {
        free(all);
        ms_err_set(err, "%s: out of memory while indexing %" PRIu64 " tensors", g->name, total);
        return -ENOMEM;
    }
    int rc = 0;
    uint64_t k = 0;
    for (uint32_t i = 0; i < g->n_parts && !rc; i++) {
        const ms_gguf_t *p = part_at(g, i);
        for (uint64_t j = 0; j < p->n_tensors && !rc; j++, k++) {
            all[k] = p->tensors[j];
            all[k].part = i;
            int64_t dup = index_add(&ix, (uint32_t)k);
            rc = dup >= 0 ? dup_error(g, &all[k], &all[dup], err) : 0;
        }
    }
    if (rc) {
        free(all);
        free(ix.slots);
        return rc;
    }
    free(g->tensors);
    free(g->tensor_index.slots);
    g->tensors = all;
    g->tensor_index = ix;
    g->n_tensors = total;
    return 0;
}

/* *g_p is part sp->no of a split model: opens the others and leaves in *g_p
 * the first part, holding them all and the merged tensor table. */
static int open_split(ms_gguf_t **g_p, const split_t *sp, open_mode_t mode, ms_err_t *err)
{
    size_t prefix = 0;
    int rc = split_prefix_len(*g_p, sp, &prefix, err);
    if (rc)
        return rc;
    ms_gguf_t **parts = calloc(sp->count, sizeof(*parts));
    char *name = strdup((*g_p)->name);
    rc = parts && name ? 0 : -ENOMEM;
    if (!rc) {
        parts[sp->no] = *g_p;
        *g_p = NULL;
    }
    for (uint32_t i = 0; i < sp->count && !rc; i++) {
        char *path = parts[i] ? NULL : part_name(name, prefix, i, sp->count);
        if (!parts[i])
            rc = path ? open_part(path, mode, i, sp, name, &parts[i], err) : -ENOMEM;
        free(path);
    }
    if (rc == -ENOMEM)
        ms_err_set(err, "%s: out of memory while opening the parts of a split model", name ? name : "(split)");
    free(name);
    if (!rc) {
        *g_p = parts[0];
        (*g_p)->parts = parts;
        (*g_p)->n_parts = sp->count;
        return merge_tensors(*g_p, sp, err); /* on failure the caller closes *g_p, and every part with it */
    }
    for (uint32_t i = 0; parts && i < sp->count; i++)
        ms_gguf_close(&parts[i]);
    free(parts);
    return rc;
}

static int open_model(const char *path, open_mode_t mode, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    ms_gguf_t *g = NULL;
    split_t sp;
    int rc = open_file(path, mode, &g, err);
    rc = rc ? rc : read_split(g, &sp, err);
    if (!rc && sp.count > 1)
        rc = open_split(&g, &sp, mode, err);
    if (rc) {
        ms_gguf_close(&g);
        return rc;
    }
    *ret_gguf = g;
    return 0;
}

int ms_gguf_open(const char *path, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    return open_model(path, OPEN_FULL, ret_gguf, err);
}

int ms_gguf_open_header(const char *path, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    return open_model(path, OPEN_HEADER, ret_gguf, err);
}

int ms_gguf_open_layout(const char *path, ms_gguf_t **ret_gguf, ms_err_t *err)
{
    return open_model(path, OPEN_LAYOUT, ret_gguf, err);
}

void ms_gguf_close(ms_gguf_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_gguf_t *g = *self_p;
    if (g->kvs) {
        for (uint64_t i = 0; i < g->n_kv; i++)
            free((void *)g->kvs[i].arr_strs);
    }
    free(g->kvs);
    free(g->tensors);
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
    for (uint32_t i = 1; g->parts && i < g->n_parts; i++)
        ms_gguf_close(&g->parts[i]);
    free(g->parts);
    if (g->map)
        munmap(g->map, (size_t)g->avail);
    ms_mem_free(g->mem, (size_t)g->mem_bytes);
    free(g->name);
    free(g);
    *self_p = NULL;
}

/* ---- accessors ---- */

const char *ms_gguf_path(const ms_gguf_t *g) { return g->name; }
uint64_t ms_gguf_file_size(const ms_gguf_t *g) { return g->size; }
uint32_t ms_gguf_alignment(const ms_gguf_t *g) { return g->alignment; }
uint64_t ms_gguf_data_offset(const ms_gguf_t *g) { return g->data_offset; }
const void *ms_gguf_base(const ms_gguf_t *g) { return g->base; }
uint64_t ms_gguf_n_kv(const ms_gguf_t *g) { return g->n_kv; }
uint64_t ms_gguf_n_tensors(const ms_gguf_t *g) { return g->n_tensors; }
uint32_t ms_gguf_n_parts(const ms_gguf_t *g) { return g->parts ? g->n_parts : 1; }

const char *ms_gguf_part_path(const ms_gguf_t *g, uint32_t part)
{
    return part < ms_gguf_n_parts(g) ? part_at(g, part)->name : NULL;
}

uint64_t ms_gguf_part_size(const ms_gguf_t *g, uint32_t part)
{
    return part < ms_gguf_n_parts(g) ? part_at(g, part)->size : 0;
}

uint64_t ms_gguf_part_data_offset(const ms_gguf_t *g, uint32_t part)
{
    return part < ms_gguf_n_parts(g) ? part_at(g, part)->data_offset : 0;
}

const ms_gguf_kv_t *ms_gguf_kv(const ms_gguf_t *g, uint64_t i)
{
    return i < g->n_kv ? &g->kvs[i] : NULL;
}

const ms_gguf_tensor_t *ms_gguf_tensor(const ms_gguf_t *g, uint64_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const ms_gguf_kv_t *ms_gguf_find_kv(const ms_gguf_t *g, const char *key)
{
    int64_t i = index_find(&g->kv_index, key);
    return i >= 0 ? &g->kvs[i] : NULL;
}

const ms_gguf_tensor_t *ms_gguf_find_tensor(const ms_gguf_t *g, const char *name)
{
    int64_t i = index_find(&g->tensor_index, name);
    return i >= 0 ? &g->tensors[i] : NULL;
}

/* ---- typed getters ---- */

/* An integer value of any width as (negative?, magnitude-or-value). */
typedef struct {
    bool neg;
    uint64_t u; /* valid when !neg */
    int64_t i;  /* valid when neg */
} int_val_t;

static int find_int(const ms_gguf_t *g, const char *key, int_val_t *ret)
{
    const ms_gguf_kv_t *kv = ms_gguf_find_kv(g, key);
    if (!kv)
        return -ENOENT;
    switch (kv->type) {
    case MS_GGUF_UINT8: case MS_GGUF_UINT16: case MS_GGUF_UINT32: case MS_GGUF_UINT64:
        *ret = (int_val_t){false, kv->v.u64, 0};
        return 0;
    case MS_GGUF_INT8: case MS_GGUF_INT16: case MS_GGUF_INT32: case MS_GGUF_INT64:
        *ret = (int_val_t){kv->v.i64 < 0, (uint64_t)kv->v.i64, kv->v.i64};
        return 0;
    default:
        return -EINVAL;
    }
}

int ms_gguf_get_u32(const ms_gguf_t *g, const char *key, uint32_t *ret)
{
    int_val_t v;
    int rc = find_int(g, key, &v);
    if (rc)
        return rc;
    if (v.neg || v.u > UINT32_MAX)
        return -EINVAL;
    *ret = (uint32_t)v.u;
    return 0;
}

int ms_gguf_get_u64(const ms_gguf_t *g, const char *key, uint64_t *ret)
{
    int_val_t v;
    int rc = find_int(g, key, &v);
    if (rc)
        return rc;
    if (v.neg)
        return -EINVAL;
    *ret = v.u;
    return 0;
}

int ms_gguf_get_i32(const ms_gguf_t *g, const char *key, int32_t *ret)
{
    int_val_t v;
    int rc = find_int(g, key, &v);
    if (rc)
        return rc;
    if (v.neg ? v.i < INT32_MIN : v.u > INT32_MAX)
        return -EINVAL;
    *ret = v.neg ? (int32_t)v.i : (int32_t)v.u;
    return 0;
}

int ms_gguf_get_f32(const ms_gguf_t *g, const char *key, float *ret)
{
    const ms_gguf_kv_t *kv = ms_gguf_find_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != MS_GGUF_FLOAT32 && kv->type != MS_GGUF_FLOAT64)
        return -EINVAL;
    double d = kv->v.f64;
    if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
        return -EINVAL; /* a finite double that float cannot hold */
    *ret = (float)d;
    return 0;
}

int ms_gguf_get_bool(const ms_gguf_t *g, const char *key, bool *ret)
{
    const ms_gguf_kv_t *kv = ms_gguf_find_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != MS_GGUF_BOOL)
        return -EINVAL;
    *ret = kv->v.b;
    return 0;
}

int ms_gguf_get_str(const ms_gguf_t *g, const char *key, ms_str_t *ret)
{
    const ms_gguf_kv_t *kv = ms_gguf_find_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != MS_GGUF_STRING)
        return -EINVAL;
    *ret = kv->v.str;
    return 0;
}

int ms_gguf_get_arr(const ms_gguf_t *g, const char *key, ms_gguf_vtype_t arr_type, const ms_gguf_kv_t **ret)
{
    const ms_gguf_kv_t *kv = ms_gguf_find_kv(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != MS_GGUF_ARRAY || kv->arr_type != arr_type)
        return -EINVAL;
    *ret = kv;
    return 0;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif

int ms_gguf_prefault(const ms_gguf_t *g, uint64_t offset, uint64_t len)
{
    if (!g->map || g->header_only || offset > g->avail || len > g->avail - offset)
        return -EINVAL;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = offset & ~(uint64_t)(page - 1);
    uint64_t n = offset + len - start;
    if (n == 0)
        return 0;
    if (madvise((char *)g->map + start, (size_t)n, MADV_POPULATE_READ) == 0)
        return 0;
    int e = errno;
    if (e != EINVAL) /* EINVAL: a kernel without POPULATE_READ; read-ahead is the best left */
        return -e;
    return madvise((char *)g->map + start, (size_t)n, MADV_WILLNEED) == 0 ? 0 : -errno;
}

int ms_gguf_prefault_part(const ms_gguf_t *g, uint32_t part, uint64_t offset, uint64_t len)
{
    return part < ms_gguf_n_parts(g) ? ms_gguf_prefault(part_at(g, part), offset, len) : -EINVAL;
}

int ms_gguf_prefault_tensor(const ms_gguf_t *g, const ms_gguf_tensor_t *t)
{
    return ms_gguf_prefault_part(g, t->part, t->file_offset, t->nbytes);
}

/* ---- tensors moved into memory ---- */

void ms_gguf_set_tensor_data(ms_gguf_t *g, uint64_t i, const void *data)
{
    if (i < g->n_tensors)
        g->tensors[i].data = data;
}

void ms_gguf_own_mem(ms_gguf_t *g, void *mem, uint64_t bytes)
{
    ms_mem_free(g->mem, (size_t)g->mem_bytes);
    g->mem = mem;
    g->mem_bytes = bytes;
}
