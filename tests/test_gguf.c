/* CUnit tests for the GGUF reader (common/gguf.c) and writer (common/gguf_write.c):
 * writer/reader round trips, and hand-built corrupt files the reader must refuse
 * with -EINVAL and a message naming the field. */
#include "limits.h"

#include "gguf.h"
#include "gguf_write.h"

#include <CUnit/CUnit.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CRAFTED "crafted.gguf"

/* GGUF ids written as plain numbers in crafted files, taken from the GGUF
 * spec rather than from the enums under test. */
enum { V_U8 = 0, V_I8 = 1, V_U16 = 2, V_I16 = 3, V_U32 = 4, V_I32 = 5, V_F32 = 6, V_BOOL = 7, V_STR = 8, V_ARR = 9,
       V_U64 = 10, V_I64 = 11, V_F64 = 12 };
enum { T_F32 = 0, T_F16 = 1, T_Q8_0 = 8, T_F64 = 28 };

/* ---- scratch directory ---- */

static char tmp_dir[256];

static int suite_init(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/test_gguf.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int suite_cleanup(void)
{
    static const char *const names[] = {"rt64.gguf", "rt4096.gguf", "rt32.gguf", "copy.gguf", "many.gguf",
                                        "empty.gguf", "prefix.gguf", "w.gguf", "large.gguf"};
    char path[512];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmp_dir, names[i]);
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/adir", tmp_dir);
    rmdir(path);
    return rmdir(tmp_dir);
}

static const char *tmp_path(const char *name)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmp_dir, name);
    return path;
}

/* ---- byte builder for crafted files ---- */

typedef struct {
    uint8_t *p;
    size_t len;
    size_t cap;
} bb_t;

static void bb_raw(bb_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort();
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void bb_u8(bb_t *b, uint8_t v) { bb_raw(b, &v, 1); }
static void bb_u32(bb_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    bb_raw(b, x, 4);
}
static void bb_u64(bb_t *b, uint64_t v)
{
    bb_u32(b, (uint32_t)v);
    bb_u32(b, (uint32_t)(v >> 32));
}
static void bb_str(bb_t *b, const char *s)
{
    bb_u64(b, strlen(s));
    bb_raw(b, s, strlen(s));
}
static void bb_zeros(bb_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        bb_u8(b, 0);
}
static void bb_pad(bb_t *b, size_t align)
{
    bb_zeros(b, (align - b->len % align) % align);
}
static void bb_free(bb_t *b)
{
    free(b->p);
    *b = (bb_t){0};
}

static void c_hdr(bb_t *b, uint64_t n_tensors, uint64_t n_kv)
{
    bb_raw(b, "GGUF", 4);
    bb_u32(b, 3);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}

static void c_key(bb_t *b, const char *key, uint32_t type)
{
    bb_str(b, key);
    bb_u32(b, type);
}

static void c_tensor(bb_t *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset)
{
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        bb_u64(b, ne[d]);
    bb_u32(b, type);
    bb_u64(b, offset);
}

/* One F32 tensor "t" of ne elements at offset 0, data section filled. */
static void c_one_f32(bb_t *b, uint64_t ne)
{
    c_hdr(b, 1, 0);
    c_tensor(b, "t", 1, &ne, T_F32, 0);
    bb_pad(b, 32);
    bb_zeros(b, (size_t)ne * 4);
}

static int open_bb(const bb_t *b, ms_gguf_t **g, ms_err_t *err)
{
    err->msg[0] = '\0';
    return ms_gguf_open_mem(b->p, b->len, CRAFTED, g, err);
}

/* The buffer must be refused with -EINVAL and a message naming the file and
 * holding phrase. */
static void expect_bad(bb_t *b, const char *phrase)
{
    ms_gguf_t *g = NULL;
    ms_err_t err;
    int rc = open_bb(b, &g, &err);
    CU_ASSERT_EQUAL(rc, -EINVAL);
    CU_ASSERT_PTR_NULL(g);
    CU_ASSERT_EQUAL(strncmp(err.msg, CRAFTED ": ", strlen(CRAFTED) + 2), 0);
    if (!strstr(err.msg, phrase)) {
        fprintf(stderr, "\n  expected '%s' in: %s\n", phrase, err.msg);
        CU_FAIL("message does not name the field");
    }
    ms_gguf_close(&g);
    bb_free(b);
}

/* ---- crafted valid file ---- */

static void craft_valid(bb_t *b)
{
    c_hdr(b, 2, 3);
    c_key(b, "general.architecture", V_STR);
    bb_str(b, "llama");
    c_key(b, "a.u32", V_U32);
    bb_u32(b, 7);
    c_key(b, "a.arr", V_ARR);
    bb_u32(b, V_I32);
    bb_u64(b, 3);
    bb_u32(b, 1);
    bb_u32(b, 2);
    bb_u32(b, (uint32_t)-3);
    uint64_t ne0 = 8, ne1[2] = {32, 2};
    c_tensor(b, "t0", 1, &ne0, T_F32, 0);
    c_tensor(b, "t1", 2, ne1, T_Q8_0, 32);
    bb_pad(b, 32);
    for (int i = 0; i < 32 + 68; i++)
        bb_u8(b, (uint8_t)i);
}

static void test_crafted_valid(void)
{
    bb_t b = {0};
    craft_valid(&b);
    ms_gguf_t *g = NULL;
    ms_err_t err;
    int rc = open_bb(&b, &g, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(ms_gguf_n_kv(g), 3);
    CU_ASSERT_EQUAL(ms_gguf_n_tensors(g), 2);
    CU_ASSERT_EQUAL(ms_gguf_alignment(g), 32);
    CU_ASSERT_EQUAL(ms_gguf_file_size(g), b.len);
    CU_ASSERT_EQUAL(ms_gguf_data_offset(g), b.len - 100);
    CU_ASSERT_PTR_EQUAL(ms_gguf_base(g), b.p);
    CU_ASSERT_STRING_EQUAL(ms_gguf_path(g), CRAFTED);
    ms_str_t s;
    CU_ASSERT_EQUAL(ms_gguf_get_str(g, "general.architecture", &s), 0);
    CU_ASSERT_TRUE(ms_str_eq(s, "llama"));
    const ms_gguf_kv_t *arr;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_get_arr(g, "a.arr", MS_GGUF_INT32, &arr), 0);
    int32_t v[3];
    memcpy(v, arr->arr_data, sizeof(v));
    CU_ASSERT(arr->arr_n == 3 && v[0] == 1 && v[1] == 2 && v[2] == -3);
    const ms_gguf_tensor_t *t1 = ms_gguf_find_tensor(g, "t1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t1);
    CU_ASSERT_PTR_EQUAL(t1, ms_gguf_tensor(g, 1));
    CU_ASSERT(t1->n_dims == 2 && t1->ne[0] == 32 && t1->ne[1] == 2 && t1->ne[2] == 1 && t1->ne[3] == 1);
    CU_ASSERT_EQUAL(t1->type, MS_TYPE_Q8_0);
    CU_ASSERT_EQUAL(t1->nbytes, 68); /* 2 blocks of 34 bytes */
    CU_ASSERT_EQUAL(t1->file_offset, b.len - 68);
    CU_ASSERT_EQUAL(((const uint8_t *)t1->data)[0], 32);
    CU_ASSERT_PTR_NULL(ms_gguf_find_tensor(g, "t2"));
    CU_ASSERT_PTR_NULL(ms_gguf_find_kv(g, "a.u3"));
    CU_ASSERT_PTR_NULL(ms_gguf_tensor(g, 2));
    CU_ASSERT_PTR_NULL(ms_gguf_kv(g, 3));
    ms_gguf_close(&g);
    CU_ASSERT_PTR_NULL(g);
    ms_gguf_close(&g); /* NULL is accepted */
    ms_gguf_close(NULL);
    bb_free(&b);
}

/* ---- corrupt headers and metadata ---- */

static void test_bad_header(void)
{
    bb_t b = {0};
    bb_u32(&b, 0x12345678);
    bb_u32(&b, 3);
    bb_u64(&b, 0);
    bb_u64(&b, 0);
    expect_bad(&b, "bad magic 0x12345678 (not a GGUF file)");

    bb_raw(&b, "GGUF", 4);
    bb_u32(&b, 2);
    bb_u64(&b, 0);
    bb_u64(&b, 0);
    expect_bad(&b, "GGUF version 2 is not supported (version 3 is)");

    bb_raw(&b, "GGUF", 4);
    bb_u32(&b, 1);
    expect_bad(&b, "GGUF version 1 is not supported");

    c_hdr(&b, 0, (uint64_t)1 << 60);
    expect_bad(&b, "n_kv=1152921504606846976 exceeds the limit");

    c_hdr(&b, (uint64_t)1 << 60, 0);
    expect_bad(&b, "n_tensors=1152921504606846976 exceeds the limit");

    c_hdr(&b, 0, 1000); /* within the limit, but the file is 24 bytes */
    expect_bad(&b, "n_kv=1000 metadata pairs need at least");

    c_hdr(&b, 500, 0);
    expect_bad(&b, "n_tensors=500 tensor infos need at least");

    bb_raw(&b, "GG", 2);
    expect_bad(&b, "truncated in header: magic");
}

static void test_bad_strings(void)
{
    bb_t b = {0};
    c_hdr(&b, 0, 1);
    bb_u64(&b, (uint64_t)1 << 62); /* key length */
    bb_zeros(&b, 16);              /* so the header's size check passes */
    expect_bad(&b, "metadata key 0: key length 4611686018427387904 exceeds the limit");

    c_hdr(&b, 0, 1);
    c_key(&b, "s", V_STR);
    bb_u64(&b, (uint64_t)1 << 62);
    expect_bad(&b, "metadata key 0 ('s'): string value length 4611686018427387904 exceeds the limit");

    c_hdr(&b, 0, 1);
    c_key(&b, "s", V_STR);
    bb_u64(&b, 100); /* within the limit, but only 4 bytes follow */
    bb_raw(&b, "abcd", 4);
    expect_bad(&b, "truncated in metadata key 0 ('s'): string value needs 100 bytes but only 4 are left");

    c_hdr(&b, 0, 1);
    bb_u64(&b, 0);
    bb_u32(&b, V_U8);
    bb_zeros(&b, 4);
    expect_bad(&b, "metadata key 0: empty key");
}

static void test_bad_values(void)
{
    bb_t b = {0};
    c_hdr(&b, 0, 1);
    c_key(&b, "x", 13);
    bb_u32(&b, 0);
    expect_bad(&b, "metadata key 0 ('x'): unknown value type 13");

    c_hdr(&b, 0, 1);
    c_key(&b, "x", V_ARR);
    bb_u32(&b, V_ARR);
    bb_u64(&b, 1);
    bb_u32(&b, V_U8);
    bb_u64(&b, 1);
    bb_u8(&b, 0);
    expect_bad(&b, "nested arrays");

    c_hdr(&b, 0, 1);
    c_key(&b, "x", V_ARR);
    bb_u32(&b, 99);
    bb_u64(&b, 0);
    expect_bad(&b, "unknown array element type 99");

    c_hdr(&b, 0, 1);
    c_key(&b, "x", V_ARR);
    bb_u32(&b, V_U32);
    bb_u64(&b, (uint64_t)1 << 40);
    expect_bad(&b, "array count 1099511627776 exceeds the limit");

    c_hdr(&b, 0, 1);
    c_key(&b, "x", V_ARR);
    bb_u32(&b, V_U32);
    bb_u64(&b, 1000);
    bb_zeros(&b, 16);
    expect_bad(&b, "truncated in metadata key 0 ('x'): array of 1000 uint32 needs 4000 bytes but only 16 are left");

    c_hdr(&b, 0, 1);
    c_key(&b, "tokenizer.ggml.tokens", V_ARR);
    bb_u32(&b, V_STR);
    bb_u64(&b, 151936);
    bb_zeros(&b, 1024);
    expect_bad(&b, "truncated in metadata key 0 ('tokenizer.ggml.tokens'): array of 151936 strings needs at least");

    c_hdr(&b, 0, 1);
    c_key(&b, "b", V_BOOL);
    bb_u8(&b, 2);
    expect_bad(&b, "metadata key 0 ('b'): bool byte 2 is neither 0 nor 1");

    c_hdr(&b, 0, 1);
    c_key(&b, "b", V_ARR);
    bb_u32(&b, V_BOOL);
    bb_u64(&b, 3);
    bb_u8(&b, 1);
    bb_u8(&b, 0);
    bb_u8(&b, 7);
    expect_bad(&b, "bool element 2 is 7");

    c_hdr(&b, 0, 3);
    c_key(&b, "a", V_U8);
    bb_u8(&b, 1);
    c_key(&b, "b", V_U8);
    bb_u8(&b, 1);
    c_key(&b, "a", V_U8);
    bb_u8(&b, 1);
    expect_bad(&b, "metadata key 2 ('a'): duplicate key (metadata key 0 has the same name)");

}

static void test_bad_alignment(void)
{
    bb_t b = {0};
    c_hdr(&b, 0, 1);
    c_key(&b, "general.alignment", V_U32);
    bb_u32(&b, 48);
    expect_bad(&b, "general.alignment=48 is not a power of two");

    c_hdr(&b, 0, 1);
    c_key(&b, "general.alignment", V_U32);
    bb_u32(&b, 0);
    expect_bad(&b, "general.alignment=0 is not a power of two");

    c_hdr(&b, 0, 1);
    c_key(&b, "general.alignment", V_U64);
    bb_u64(&b, 64);
    expect_bad(&b, "general.alignment has type uint64, expected uint32");

    c_hdr(&b, 0, 1);
    c_key(&b, "general.alignment", V_U32);
    bb_u32(&b, 1u << 21);
    expect_bad(&b, "general.alignment=2097152 exceeds the limit");
}

/* ---- corrupt tensor infos ---- */

static void test_bad_tensor_shape(void)
{
    bb_t b = {0};
    uint64_t ne[5] = {32, 1, 1, 1, 1};
    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 0, ne, T_F32, 0);
    bb_zeros(&b, 16); /* so the header's size check passes */
    expect_bad(&b, "tensor 0 ('t'): n_dims=0 is outside 1..4");

    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 5, ne, T_F32, 0);
    expect_bad(&b, "tensor 0 ('t'): n_dims=5 is outside 1..4");

    uint64_t neg[2] = {32, (uint64_t)-2};
    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 2, neg, T_F32, 0);
    expect_bad(&b, "ne[1]=-2 is negative");

    uint64_t zero[2] = {32, 0};
    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 2, zero, T_F32, 0);
    expect_bad(&b, "ne[1]=0");

    uint64_t huge[2] = {(uint64_t)1 << 40, (uint64_t)1 << 40};
    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 2, huge, T_F32, 0);
    expect_bad(&b, "tensor 0 ('t'): element count of shape [1099511627776, 1099511627776, 1, 1] overflows 64 bits");

    uint64_t big = (uint64_t)1 << 62; /* 2^62 elements fit in int64, 2^65 bytes do not */
    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 1, &big, T_F64, 0);
    expect_bad(&b, "byte size of F64 shape [4611686018427387904, 1, 1, 1] overflows 64 bits");

    uint64_t ne33[2] = {33, 4};
    c_hdr(&b, 1, 0);
    c_tensor(&b, "blk.0.ffn_up_exps.weight", 2, ne33, T_Q8_0, 0);
    ms_gguf_t *g = NULL;
    ms_err_t err;
    CU_ASSERT_EQUAL(open_bb(&b, &g, &err), -EINVAL);
    CU_ASSERT_STRING_EQUAL(err.msg,
                           CRAFTED ": tensor 0 ('blk.0.ffn_up_exps.weight'): ne[0]=33 is not a multiple of the Q8_0 block size 32");
    bb_free(&b);
}

static void test_bad_tensor_type_and_name(void)
{
    bb_t b = {0};
    uint64_t ne = 32;
    static const uint32_t bad_types[] = {4, 5, 31, 33, 36, 38, 40, 1000};
    for (size_t i = 0; i < sizeof(bad_types) / sizeof(bad_types[0]); i++) {
        char phrase[64];
        snprintf(phrase, sizeof(phrase), "tensor 0 ('t'): unknown tensor type %" PRIu32, bad_types[i]);
        c_hdr(&b, 1, 0);
        c_tensor(&b, "t", 1, &ne, bad_types[i], 0);
        expect_bad(&b, phrase);
    }

    c_hdr(&b, 2, 0);
    c_tensor(&b, "same", 1, &ne, T_F32, 0);
    c_tensor(&b, "same", 1, &ne, T_F32, 128);
    expect_bad(&b, "tensor 1 ('same'): duplicate tensor name (tensor 0 has the same name)");

    char longname[MS_GGUF_NAME_BYTES_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    c_hdr(&b, 1, 0);
    c_tensor(&b, longname, 1, &ne, T_F32, 0);
    expect_bad(&b, "tensor 0: name length 257 exceeds the limit 256");

    c_hdr(&b, 1, 0);
    c_tensor(&b, "", 1, &ne, T_F32, 0);
    bb_zeros(&b, 8);
    expect_bad(&b, "tensor 0: empty name");

    c_hdr(&b, 1, 0);
    c_key(&b, "x", V_U8); /* n_kv says 0: these bytes are read as tensor 0's name and n_dims */
    bb_zeros(&b, 32);
    expect_bad(&b, "tensor 0 ('x'): n_dims=0");
}

static void test_bad_tensor_placement(void)
{
    bb_t b = {0};
    uint64_t ne = 8;
    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 1, &ne, T_F32, 8);
    bb_pad(&b, 32);
    bb_zeros(&b, 64);
    expect_bad(&b, "tensor 0 ('t'): offset 8 is not a multiple of the alignment 32");

    c_one_f32(&b, 8);
    b.len -= 1; /* 31 of the 32 data bytes */
    size_t data_start = b.len - 31;
    char phrase[128];
    snprintf(phrase, sizeof(phrase), "tensor 0 ('t'): data [%zu, %zu) extends past end of file (size %zu)", data_start,
             data_start + 32, b.len);
    expect_bad(&b, phrase);

    c_hdr(&b, 1, 0);
    c_tensor(&b, "t", 1, &ne, T_F32, (uint64_t)1 << 62);
    bb_pad(&b, 32);
    expect_bad(&b, "lies past end of file");

    uint64_t ne16 = 16; /* 64 bytes at offset 0 */
    c_hdr(&b, 2, 0);
    c_tensor(&b, "a", 1, &ne16, T_F32, 0);
    c_tensor(&b, "b", 1, &ne, T_F32, 32);
    bb_pad(&b, 32);
    bb_zeros(&b, 64);
    expect_bad(&b, "tensor 1 ('b'): data [32, 64) overlaps tensor 0 ('a') [0, 64)");

    /* order in the file does not matter, overlap does */
    c_hdr(&b, 3, 0);
    c_tensor(&b, "late", 1, &ne, T_F32, 64);
    c_tensor(&b, "early", 1, &ne, T_F32, 0);
    c_tensor(&b, "mid", 1, &ne16, T_F32, 32);
    bb_pad(&b, 32);
    bb_zeros(&b, 96);
    expect_bad(&b, "overlaps");
}

static void test_out_of_order_tensors_ok(void)
{
    bb_t b = {0};
    uint64_t ne = 8;
    c_hdr(&b, 2, 0);
    c_tensor(&b, "second", 1, &ne, T_F32, 32);
    c_tensor(&b, "first", 1, &ne, T_F32, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 64);
    ms_gguf_t *g = NULL;
    ms_err_t err;
    CU_ASSERT_EQUAL(open_bb(&b, &g, &err), 0);
    ms_gguf_close(&g);
    bb_free(&b);
}

/* A key with control bytes is shown with '?' in place of them. */
static void test_name_shown_safely(void)
{
    bb_t b = {0};
    c_hdr(&b, 0, 1);
    c_key(&b, "k\x01\n", V_BOOL);
    bb_u8(&b, 3);
    expect_bad(&b, "metadata key 0 ('k?\?'): bool byte 3");
}

/* ---- every prefix of a valid file must fail cleanly ---- */

/* Bytes a valid file needs: up to the end of its last tensor's data (the
 * padding after it is optional). */
static size_t needed_bytes(const uint8_t *p, size_t len)
{
    ms_gguf_t *g = NULL;
    ms_err_t err = {{0}};
    if (ms_gguf_open_mem(p, len, CRAFTED, &g, &err) != 0)
        return 0;
    uint64_t end = 0;
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        if (t->file_offset + t->nbytes > end)
            end = t->file_offset + t->nbytes;
    }
    ms_gguf_close(&g);
    return (size_t)end;
}

/* Every shorter prefix fails with -EINVAL and a message; longer ones open. */
static void check_prefixes(const uint8_t *p, size_t len)
{
    size_t need = needed_bytes(p, len);
    CU_ASSERT_FATAL(need > 0 && need <= len);
    size_t as_expected = 0;
    for (size_t n = 0; n <= len; n++) {
        /* an exact-size copy, so a read past the end is a real overrun */
        uint8_t *copy = malloc(n ? n : 1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
        memcpy(copy, p, n);
        ms_gguf_t *g = NULL;
        ms_err_t err = {{0}};
        int rc = ms_gguf_open_mem(copy, n, CRAFTED, &g, &err);
        bool named = strncmp(err.msg, CRAFTED ": ", strlen(CRAFTED) + 2) == 0;
        if (n < need ? (rc == -EINVAL && g == NULL && named) : (rc == 0 && g != NULL))
            as_expected++;
        else
            fprintf(stderr, "\n  prefix %zu of %zu (needs %zu): rc %d msg '%s'\n", n, len, need, rc, err.msg);
        ms_gguf_close(&g);
        free(copy);
    }
    CU_ASSERT_EQUAL(as_expected, len + 1);
}

/* ---- writer round trip ---- */

static const char *const rt_strs[] = {"alpha", "", "h\xc3\xa9llo \xe2\x9c\x93", "nul\0inside", "\xff\xfe"};
static const uint64_t rt_lens[] = {5, 0, 10, 10, 2};
#define RT_NSTR 5

typedef struct {
    const char *name;
    ms_type_t type;
    uint32_t n_dims;
    int64_t ne[4];
    uint64_t nbytes; /* computed by hand */
} rt_tensor_t;

static const rt_tensor_t rt_tensors[] = {
    {"f32_1d", MS_TYPE_F32, 1, {5, 1, 1, 1}, 5 * 4},
    {"f16_2d", MS_TYPE_F16, 2, {3, 4, 1, 1}, 12 * 2},
    {"blk.0.ffn_up_exps.weight", MS_TYPE_Q8_0, 3, {64, 2, 3, 1}, (64 / 32) * 34 * 6},
    {"f32_4d", MS_TYPE_F32, 4, {2, 3, 4, 5}, 120 * 4},
};
#define RT_NT 4

static uint8_t pattern(size_t t, uint64_t i)
{
    return (uint8_t)(i * 31 + t * 7 + 1);
}

/* A kv value built by hand, for the widths the typed add_* calls do not cover. */
static ms_gguf_kv_t mk_kv(const char *key, ms_gguf_vtype_t type)
{
    ms_gguf_kv_t kv;
    memset(&kv, 0, sizeof(kv));
    kv.key = (ms_str_t){key, strlen(key)};
    kv.type = type;
    return kv;
}

static const uint8_t arr_u8[] = {0, 1, 255};
static const int8_t arr_i8[] = {-128, 0, 127};
static const uint16_t arr_u16[] = {0, 65535};
static const int16_t arr_i16[] = {-32768, 32767, -1};
static const uint64_t arr_u64[] = {UINT64_MAX, 0, 1};
static const int64_t arr_i64[] = {INT64_MIN, INT64_MAX};
static const double arr_f64[] = {3.141592653589793, -0.0, 1e300};
static const uint8_t arr_bool[] = {1, 0, 1, 1};

static void add_copied_kvs(ms_gguf_writer_t *w)
{
    ms_gguf_kv_t kv = mk_kv("w.u8", MS_GGUF_UINT8);
    kv.v.u64 = 200;
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), 0);
    kv = mk_kv("w.i8", MS_GGUF_INT8);
    kv.v.i64 = -100;
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), 0);
    kv = mk_kv("w.u16", MS_GGUF_UINT16);
    kv.v.u64 = 60000;
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), 0);
    kv = mk_kv("w.i16", MS_GGUF_INT16);
    kv.v.i64 = -30000;
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), 0);
    kv = mk_kv("w.i64", MS_GGUF_INT64);
    kv.v.i64 = -((int64_t)1 << 40);
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), 0);
    kv = mk_kv("w.f64", MS_GGUF_FLOAT64);
    kv.v.f64 = 1e300;
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), 0);

    struct { const char *key; ms_gguf_vtype_t et; const void *data; uint64_t n; } arrs[] = {
        {"a.u8", MS_GGUF_UINT8, arr_u8, 3},    {"a.i8", MS_GGUF_INT8, arr_i8, 3},
        {"a.u16", MS_GGUF_UINT16, arr_u16, 2}, {"a.i16", MS_GGUF_INT16, arr_i16, 3},
        {"a.u64", MS_GGUF_UINT64, arr_u64, 3}, {"a.i64", MS_GGUF_INT64, arr_i64, 2},
        {"a.f64", MS_GGUF_FLOAT64, arr_f64, 3}, {"a.bool", MS_GGUF_BOOL, arr_bool, 4},
        {"a.empty", MS_GGUF_UINT8, NULL, 0},
    };
    for (size_t i = 0; i < sizeof(arrs) / sizeof(arrs[0]); i++) {
        kv = mk_kv(arrs[i].key, MS_GGUF_ARRAY);
        kv.arr_type = arrs[i].et;
        kv.arr_data = arrs[i].data;
        kv.arr_n = arrs[i].n;
        CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), 0);
    }
}

static const float arr_f32[] = {0.5f, -1.25f, 3.0e38f};
static const int32_t arr_i32[] = {INT32_MIN, -1, 0, INT32_MAX};
static const uint32_t arr_u32[] = {0, 4000000000u};

static void add_typed_kvs(ms_gguf_writer_t *w)
{
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "general.architecture", "qwen3moe"), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "k.u32", 4000000000u), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_i32(w, "k.i32", -123456), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u64(w, "k.u64", (uint64_t)1 << 50), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_f32(w, "k.f32", 1e-6f), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_bool(w, "k.true", true), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_bool(w, "k.false", false), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "k.str", "gr\xc3\xbc\xc3\x9f \xe2\x9c\x93"), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "k.empty", ""), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_str(w, "k.strs", rt_strs, rt_lens, RT_NSTR), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_f32(w, "k.f32s", arr_f32, 3), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_i32(w, "k.i32s", arr_i32, 4), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_u32(w, "k.u32s", arr_u32, 2), 0);
}
#define RT_TYPED_KVS 13
#define RT_COPIED_KVS 15

/* Writes the round-trip file; tensor 2 goes in odd-sized chunks. */
static int write_rt(const char *path, uint32_t alignment)
{
    ms_gguf_writer_t *w = ms_gguf_writer_new(alignment);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    add_typed_kvs(w);
    add_copied_kvs(w);
    for (size_t t = 0; t < RT_NT; t++)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, rt_tensors[t].name, rt_tensors[t].type, rt_tensors[t].n_dims,
                                                  rt_tensors[t].ne), 0);
    ms_err_t err = {{0}};
    int rc = ms_gguf_writer_begin(w, path, &err);
    CU_ASSERT_EQUAL(rc, 0);
    for (size_t t = 0; t < RT_NT && !rc; t++) {
        uint64_t n = rt_tensors[t].nbytes, done = 0;
        uint8_t *data = malloc(n);
        for (uint64_t i = 0; i < n; i++)
            data[i] = pattern(t, i);
        while (done < n && !rc) {
            uint64_t chunk = t == 2 ? 7 : n; /* 408 = 58 * 7 + 2 */
            if (chunk > n - done)
                chunk = n - done;
            rc = ms_gguf_writer_write(w, data + done, chunk, &err);
            done += chunk;
        }
        free(data);
    }
    CU_ASSERT_EQUAL(rc, 0);
    if (!rc)
        rc = ms_gguf_writer_finish(w, &err);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc)
        fprintf(stderr, "\n  write_rt: %s\n", err.msg);
    ms_gguf_writer_destroy(&w);
    CU_ASSERT_PTR_NULL(w);
    return rc;
}

static bool str_is(ms_str_t s, const char *p, uint64_t n)
{
    return s.len == n && (n == 0 || memcmp(s.ptr, p, n) == 0);
}

static void check_typed_kvs(const ms_gguf_t *g)
{
    uint32_t u32 = 0;
    int32_t i32 = 0;
    uint64_t u64 = 0;
    float f = 0;
    bool b = false;
    ms_str_t s;
    CU_ASSERT(ms_gguf_get_u32(g, "k.u32", &u32) == 0 && u32 == 4000000000u);
    CU_ASSERT(ms_gguf_get_i32(g, "k.i32", &i32) == 0 && i32 == -123456);
    CU_ASSERT(ms_gguf_get_u64(g, "k.u64", &u64) == 0 && u64 == (uint64_t)1 << 50);
    CU_ASSERT(ms_gguf_get_f32(g, "k.f32", &f) == 0 && f == 1e-6f);
    CU_ASSERT(ms_gguf_get_bool(g, "k.true", &b) == 0 && b);
    CU_ASSERT(ms_gguf_get_bool(g, "k.false", &b) == 0 && !b);
    CU_ASSERT(ms_gguf_get_str(g, "k.str", &s) == 0 && str_is(s, "gr\xc3\xbc\xc3\x9f \xe2\x9c\x93", 10));
    CU_ASSERT(ms_gguf_get_str(g, "k.empty", &s) == 0 && s.len == 0);
    CU_ASSERT(ms_gguf_get_str(g, "general.architecture", &s) == 0 && ms_str_eq(s, "qwen3moe"));
    const ms_gguf_kv_t *kv;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_get_arr(g, "k.strs", MS_GGUF_STRING, &kv), 0);
    CU_ASSERT_EQUAL_FATAL(kv->arr_n, RT_NSTR);
    for (int i = 0; i < RT_NSTR; i++)
        CU_ASSERT(str_is(kv->arr_strs[i], rt_strs[i], rt_lens[i]));
    CU_ASSERT_EQUAL_FATAL(ms_gguf_get_arr(g, "k.f32s", MS_GGUF_FLOAT32, &kv), 0);
    CU_ASSERT(kv->arr_n == 3 && memcmp(kv->arr_data, arr_f32, sizeof(arr_f32)) == 0);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_get_arr(g, "k.i32s", MS_GGUF_INT32, &kv), 0);
    CU_ASSERT(kv->arr_n == 4 && memcmp(kv->arr_data, arr_i32, sizeof(arr_i32)) == 0);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_get_arr(g, "k.u32s", MS_GGUF_UINT32, &kv), 0);
    CU_ASSERT(kv->arr_n == 2 && memcmp(kv->arr_data, arr_u32, sizeof(arr_u32)) == 0);
}

static void check_copied_kvs(const ms_gguf_t *g)
{
    const ms_gguf_kv_t *kv;
    CU_ASSERT((kv = ms_gguf_find_kv(g, "w.u8")) && kv->type == MS_GGUF_UINT8 && kv->v.u64 == 200);
    CU_ASSERT((kv = ms_gguf_find_kv(g, "w.i8")) && kv->type == MS_GGUF_INT8 && kv->v.i64 == -100);
    CU_ASSERT((kv = ms_gguf_find_kv(g, "w.u16")) && kv->type == MS_GGUF_UINT16 && kv->v.u64 == 60000);
    CU_ASSERT((kv = ms_gguf_find_kv(g, "w.i16")) && kv->type == MS_GGUF_INT16 && kv->v.i64 == -30000);
    CU_ASSERT((kv = ms_gguf_find_kv(g, "w.i64")) && kv->type == MS_GGUF_INT64 && kv->v.i64 == -((int64_t)1 << 40));
    CU_ASSERT((kv = ms_gguf_find_kv(g, "w.f64")) && kv->type == MS_GGUF_FLOAT64 && kv->v.f64 == 1e300);
    struct { const char *key; ms_gguf_vtype_t et; const void *data; uint64_t n, bytes; } arrs[] = {
        {"a.u8", MS_GGUF_UINT8, arr_u8, 3, 3},     {"a.i8", MS_GGUF_INT8, arr_i8, 3, 3},
        {"a.u16", MS_GGUF_UINT16, arr_u16, 2, 4},  {"a.i16", MS_GGUF_INT16, arr_i16, 3, 6},
        {"a.u64", MS_GGUF_UINT64, arr_u64, 3, 24}, {"a.i64", MS_GGUF_INT64, arr_i64, 2, 16},
        {"a.f64", MS_GGUF_FLOAT64, arr_f64, 3, 24}, {"a.bool", MS_GGUF_BOOL, arr_bool, 4, 4},
        {"a.empty", MS_GGUF_UINT8, NULL, 0, 0},
    };
    for (size_t i = 0; i < sizeof(arrs) / sizeof(arrs[0]); i++) {
        CU_ASSERT_EQUAL_FATAL(ms_gguf_get_arr(g, arrs[i].key, arrs[i].et, &kv), 0);
        CU_ASSERT_EQUAL(kv->arr_n, arrs[i].n);
        if (arrs[i].bytes)
            CU_ASSERT_EQUAL(memcmp(kv->arr_data, arrs[i].data, arrs[i].bytes), 0);
    }
}

static uint64_t up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

static void check_tensors(const ms_gguf_t *g, uint32_t alignment)
{
    CU_ASSERT_EQUAL_FATAL(ms_gguf_n_tensors(g), RT_NT);
    CU_ASSERT_EQUAL(ms_gguf_data_offset(g) % alignment, 0);
    uint64_t expect_off = 0;
    for (size_t i = 0; i < RT_NT; i++) {
        const rt_tensor_t *r = &rt_tensors[i];
        const ms_gguf_tensor_t *t = ms_gguf_find_tensor(g, r->name);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_PTR_EQUAL(t, ms_gguf_tensor(g, i));
        CU_ASSERT(ms_str_eq(t->name, r->name));
        CU_ASSERT_EQUAL(t->type, r->type);
        CU_ASSERT_EQUAL(t->n_dims, r->n_dims);
        for (int d = 0; d < 4; d++)
            CU_ASSERT_EQUAL(t->ne[d], r->ne[d]);
        CU_ASSERT_EQUAL(t->nbytes, r->nbytes);
        CU_ASSERT_EQUAL(t->offset, expect_off); /* back to back, each aligned */
        CU_ASSERT_EQUAL(t->file_offset % alignment, 0);
        CU_ASSERT_EQUAL(t->file_offset, ms_gguf_data_offset(g) + t->offset);
        const uint8_t *p = t->data;
        uint64_t bad = 0;
        for (uint64_t k = 0; k < r->nbytes; k++)
            bad += p[k] != pattern(i, k);
        CU_ASSERT_EQUAL(bad, 0);
        expect_off = up(expect_off + r->nbytes, alignment);
    }
    /* the file ends padded to the alignment after the last tensor */
    CU_ASSERT_EQUAL(ms_gguf_file_size(g), ms_gguf_data_offset(g) + expect_off);
}

static void roundtrip(const char *name, uint32_t alignment)
{
    const char *path = tmp_path(name);
    if (write_rt(path, alignment))
        return;
    ms_gguf_t *g = NULL;
    ms_err_t err = {{0}};
    int rc = ms_gguf_open(path, &g, &err);
    if (rc)
        fprintf(stderr, "\n  open: %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(ms_gguf_alignment(g), alignment);
    bool auto_key = alignment != 32;
    CU_ASSERT_EQUAL(ms_gguf_n_kv(g), RT_TYPED_KVS + RT_COPIED_KVS + (auto_key ? 1 : 0));
    if (auto_key) { /* written first */
        uint32_t a = 0;
        CU_ASSERT(ms_str_eq(ms_gguf_kv(g, 0)->key, "general.alignment"));
        CU_ASSERT_EQUAL(ms_gguf_kv(g, 0)->type, MS_GGUF_UINT32);
        CU_ASSERT(ms_gguf_get_u32(g, "general.alignment", &a) == 0 && a == alignment);
    } else {
        CU_ASSERT_PTR_NULL(ms_gguf_find_kv(g, "general.alignment"));
    }
    /* insertion order kept */
    CU_ASSERT(ms_str_eq(ms_gguf_kv(g, auto_key ? 1 : 0)->key, "general.architecture"));
    CU_ASSERT(ms_str_eq(ms_gguf_kv(g, ms_gguf_n_kv(g) - 1)->key, "a.empty"));
    check_typed_kvs(g);
    check_copied_kvs(g);
    check_tensors(g, alignment);
    ms_gguf_close(&g);
}

static void test_roundtrip_64(void) { roundtrip("rt64.gguf", 64); }
static void test_roundtrip_4096(void) { roundtrip("rt4096.gguf", 4096); }
static void test_roundtrip_32(void) { roundtrip("rt32.gguf", 32); }

static bool kv_equal(const ms_gguf_kv_t *a, const ms_gguf_kv_t *b)
{
    static const uint8_t esz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (!str_is(a->key, b->key.ptr, b->key.len) || a->type != b->type)
        return false;
    switch (a->type) {
    case MS_GGUF_STRING: return str_is(a->v.str, b->v.str.ptr, b->v.str.len);
    case MS_GGUF_BOOL: return a->v.b == b->v.b;
    case MS_GGUF_FLOAT32: case MS_GGUF_FLOAT64: return memcmp(&a->v.f64, &b->v.f64, 8) == 0;
    case MS_GGUF_ARRAY: break;
    default: return a->v.u64 == b->v.u64;
    }
    if (a->arr_type != b->arr_type || a->arr_n != b->arr_n)
        return false;
    if (a->arr_type != MS_GGUF_STRING)
        return a->arr_n == 0 || memcmp(a->arr_data, b->arr_data, a->arr_n * esz[a->arr_type]) == 0;
    for (uint64_t i = 0; i < a->arr_n; i++)
        if (!str_is(a->arr_strs[i], b->arr_strs[i].ptr, b->arr_strs[i].len))
            return false;
    return true;
}

/* Copying every kv of a 64-aligned file into a 4096-aligned one, as a shard
 * writer does: values identical, general.alignment replaced in place. */
static void test_copy_all_kvs(void)
{
    const char *src_path = tmp_path("rt64.gguf");
    ms_gguf_t *src = NULL;
    ms_err_t err = {{0}};
    if (access(src_path, F_OK) != 0)
        CU_ASSERT_EQUAL_FATAL(write_rt(src_path, 64), 0);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(src_path, &src, &err), 0);
    ms_gguf_writer_t *w = ms_gguf_writer_new(4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (uint64_t i = 0; i < ms_gguf_n_kv(src); i++)
        CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, ms_gguf_kv(src, i)), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, ms_gguf_kv(src, 1)), -EINVAL); /* duplicate */
    const char *dst_path = tmp_path("copy.gguf");
    CU_ASSERT_EQUAL(ms_gguf_writer_begin(w, dst_path, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
    ms_gguf_t *dst = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(dst_path, &dst, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_n_kv(dst), ms_gguf_n_kv(src));
    CU_ASSERT_EQUAL(ms_gguf_alignment(dst), 4096);
    CU_ASSERT(ms_str_eq(ms_gguf_kv(dst, 0)->key, "general.alignment"));
    for (uint64_t i = 1; i < ms_gguf_n_kv(src); i++)
        CU_ASSERT(kv_equal(ms_gguf_kv(dst, i), ms_gguf_kv(src, i)));
    CU_ASSERT_EQUAL(ms_gguf_n_tensors(dst), 0);
    ms_gguf_close(&dst);
    ms_gguf_close(&src);
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void test_truncated_everywhere(void)
{
    bb_t b = {0};
    craft_valid(&b);
    check_prefixes(b.p, b.len);
    bb_free(&b);

    const char *path = tmp_path("rt64.gguf");
    if (access(path, F_OK) != 0)
        CU_ASSERT_EQUAL_FATAL(write_rt(path, 64), 0);
    size_t len = 0;
    uint8_t *p = slurp(path, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    check_prefixes(p, len);

    /* a few prefixes through the mmap path as well */
    size_t need = needed_bytes(p, len);
    const size_t cuts[] = {0, 3, 23, 100, need / 2, need - 1};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        const char *pp = tmp_path("prefix.gguf");
        FILE *f = fopen(pp, "wb");
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        CU_ASSERT_EQUAL(fwrite(p, 1, cuts[i], f), cuts[i]);
        fclose(f);
        ms_gguf_t *g = NULL;
        ms_err_t err = {{0}};
        CU_ASSERT_EQUAL(ms_gguf_open(pp, &g, &err), -EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, pp));
        ms_gguf_close(&g);
    }
    free(p);
}

static void test_open_errors(void)
{
    ms_gguf_t *g = NULL;
    ms_err_t err = {{0}};
    const char *missing = tmp_path("does-not-exist.gguf");
    CU_ASSERT_EQUAL(ms_gguf_open(missing, &g, &err), -ENOENT);
    CU_ASSERT_PTR_NULL(g);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, missing));

    char dir[512];
    snprintf(dir, sizeof(dir), "%s", tmp_path("adir"));
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0700), 0);
    CU_ASSERT_EQUAL(ms_gguf_open(dir, &g, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a regular file"));

    const char *empty = tmp_path("empty.gguf");
    FILE *f = fopen(empty, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fclose(f);
    CU_ASSERT_EQUAL(ms_gguf_open(empty, &g, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "truncated in header"));

    CU_ASSERT_EQUAL(ms_gguf_open_mem(NULL, 0, "nothing", &g, &err), -EINVAL);
    CU_ASSERT_PTR_NULL(g);
}

/* ---- getters ---- */

static void test_getters(void)
{
    bb_t b = {0};
    c_hdr(&b, 0, 9);
    c_key(&b, "u8", V_U8);
    bb_u8(&b, 250);
    c_key(&b, "i8", V_I8);
    bb_u8(&b, 0xfb); /* -5 */
    c_key(&b, "u64big", V_U64);
    bb_u64(&b, (uint64_t)5 << 32);
    c_key(&b, "i64neg", V_I64);
    bb_u64(&b, (uint64_t)-((int64_t)1 << 40));
    c_key(&b, "u32big", V_U32);
    bb_u32(&b, 3000000000u);
    c_key(&b, "f64big", V_F64);
    double d = 1e300;
    bb_raw(&b, &d, 8);
    c_key(&b, "f64half", V_F64);
    d = 0.5;
    bb_raw(&b, &d, 8);
    c_key(&b, "s", V_STR);
    bb_str(&b, "x");
    c_key(&b, "arr", V_ARR);
    bb_u32(&b, V_U16);
    bb_u64(&b, 2);
    bb_u32(&b, 0x00020001);
    ms_gguf_t *g = NULL;
    ms_err_t err;
    CU_ASSERT_EQUAL_FATAL(open_bb(&b, &g, &err), 0);

    uint32_t u32 = 77;
    uint64_t u64 = 77;
    int32_t i32 = 77;
    float f = 77;
    bool bo = true;
    ms_str_t s = {"z", 1};
    const ms_gguf_kv_t *kv = NULL;
    CU_ASSERT(ms_gguf_get_u32(g, "u8", &u32) == 0 && u32 == 250);
    CU_ASSERT(ms_gguf_get_i32(g, "u8", &i32) == 0 && i32 == 250);
    CU_ASSERT(ms_gguf_get_i32(g, "i8", &i32) == 0 && i32 == -5);
    u32 = 77;
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "i8", &u32), -EINVAL); /* negative into unsigned */
    CU_ASSERT_EQUAL(ms_gguf_get_u64(g, "i8", &u64), -EINVAL);
    CU_ASSERT_EQUAL(u32, 77); /* untouched on failure */
    CU_ASSERT_EQUAL(u64, 77);
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "u64big", &u32), -EINVAL);
    CU_ASSERT(ms_gguf_get_u64(g, "u64big", &u64) == 0 && u64 == (uint64_t)5 << 32);
    CU_ASSERT_EQUAL(ms_gguf_get_i32(g, "i64neg", &i32), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_get_i32(g, "u32big", &i32), -EINVAL);
    CU_ASSERT(ms_gguf_get_u32(g, "u32big", &u32) == 0 && u32 == 3000000000u);
    CU_ASSERT_EQUAL(ms_gguf_get_f32(g, "f64big", &f), -EINVAL);
    CU_ASSERT(ms_gguf_get_f32(g, "f64half", &f) == 0 && f == 0.5f);
    CU_ASSERT_EQUAL(ms_gguf_get_f32(g, "u8", &f), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "f64half", &u32), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_get_bool(g, "u8", &bo), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_get_str(g, "u8", &s), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "s", &u32), -EINVAL);
    CU_ASSERT(ms_gguf_get_str(g, "s", &s) == 0 && ms_str_eq(s, "x"));
    CU_ASSERT_EQUAL(ms_gguf_get_arr(g, "arr", MS_GGUF_UINT32, &kv), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_get_arr(g, "u8", MS_GGUF_UINT8, &kv), -EINVAL);
    CU_ASSERT_PTR_NULL(kv);
    CU_ASSERT(ms_gguf_get_arr(g, "arr", MS_GGUF_UINT16, &kv) == 0 && kv->arr_n == 2);
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "arr", &u32), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "absent", &u32), -ENOENT);
    CU_ASSERT_EQUAL(ms_gguf_get_u64(g, "absent", &u64), -ENOENT);
    CU_ASSERT_EQUAL(ms_gguf_get_i32(g, "absent", &i32), -ENOENT);
    CU_ASSERT_EQUAL(ms_gguf_get_f32(g, "absent", &f), -ENOENT);
    CU_ASSERT_EQUAL(ms_gguf_get_bool(g, "absent", &bo), -ENOENT);
    CU_ASSERT_EQUAL(ms_gguf_get_str(g, "absent", &s), -ENOENT);
    CU_ASSERT_EQUAL(ms_gguf_get_arr(g, "absent", MS_GGUF_UINT8, &kv), -ENOENT);
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "", &u32), -ENOENT);
    ms_gguf_close(&g);
    bb_free(&b);
}

static void test_str_helpers(void)
{
    CU_ASSERT_TRUE(ms_str_eq((ms_str_t){"abc", 3}, "abc"));
    CU_ASSERT_FALSE(ms_str_eq((ms_str_t){"abc", 2}, "abc"));
    CU_ASSERT_FALSE(ms_str_eq((ms_str_t){"abd", 3}, "abc"));
    CU_ASSERT_TRUE(ms_str_eq((ms_str_t){NULL, 0}, ""));
    CU_ASSERT_STRING_EQUAL(ms_gguf_vtype_name(4), "uint32");
    CU_ASSERT_STRING_EQUAL(ms_gguf_vtype_name(12), "float64");
    CU_ASSERT_STRING_EQUAL(ms_gguf_vtype_name(13), "?");
}

/* ---- writer refusals ---- */

static void test_writer_refusals(void)
{
    CU_ASSERT_PTR_NULL(ms_gguf_writer_new(0));
    CU_ASSERT_PTR_NULL(ms_gguf_writer_new(48));
    CU_ASSERT_PTR_NULL(ms_gguf_writer_new(1u << 21));
    ms_gguf_writer_destroy(NULL);

    ms_gguf_writer_t *w = ms_gguf_writer_new(64);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "k", 1), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "k", 2), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "k", "x"), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "", 1), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, NULL, 1), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "s", NULL), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "general.alignment", 32), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u64(w, "general.alignment", 64), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "general.alignment", 64), 0);
    const char *with_null[] = {"a", NULL};
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_str(w, "strs", with_null, NULL, 2), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_str(w, "strs", with_null, NULL, 1), 0); /* NULL lens: strlen */
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_u32(w, "big", NULL, (uint64_t)MS_GGUF_ARRAY_MAX + 1), -EINVAL);
    ms_gguf_kv_t kv = mk_kv("badbool", MS_GGUF_ARRAY);
    kv.arr_type = MS_GGUF_BOOL;
    kv.arr_data = "\x01\x02";
    kv.arr_n = 2;
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), -EINVAL);
    kv.arr_type = MS_GGUF_ARRAY;
    CU_ASSERT_EQUAL(ms_gguf_writer_copy_kv(w, &kv), -EINVAL);

    int64_t ne33[2] = {33, 2}, ne64[2] = {64, 2}, ne0[1] = {0}, neneg[2] = {32, -1};
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", MS_TYPE_Q8_0, 2, ne33), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", MS_TYPE_Q8_0, 0, ne64), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", MS_TYPE_Q8_0, 5, ne64), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", (ms_type_t)4, 2, ne64), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", MS_TYPE_F32, 1, ne0), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", MS_TYPE_F32, 2, neneg), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "", MS_TYPE_F32, 2, ne64), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", MS_TYPE_Q8_0, 2, ne64), 0); /* 136 bytes */
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "q", MS_TYPE_F32, 2, ne64), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "r", MS_TYPE_F32, 1, ne64), 0); /* 256 bytes */

    ms_err_t err = {{0}};
    uint8_t data[512] = {0};
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 1, &err), -EINVAL); /* before begin */
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), -EINVAL);
    const char *path = tmp_path("w.gguf");
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_begin(w, path, &err), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "late", 1), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "late", MS_TYPE_F32, 1, ne64), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 137, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "tensor 'q'"));
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 136, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 100, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "tensor 'r': 100 of 256 bytes written"));
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 157, &err), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 156, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 1, &err), -EINVAL);
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), -EINVAL);
    ms_gguf_writer_destroy(&w);
    CU_ASSERT_PTR_NULL(w);

    ms_gguf_t *g = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path, &g, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_n_kv(g), 3); /* k, general.alignment (caller's, in place), strs */
    CU_ASSERT(ms_str_eq(ms_gguf_kv(g, 1)->key, "general.alignment"));
    CU_ASSERT_EQUAL(ms_gguf_find_tensor(g, "r")->offset, 192); /* 136 rounded up to 64 */
    ms_gguf_close(&g);

    w = ms_gguf_writer_new(32);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    char bad_path[600];
    snprintf(bad_path, sizeof(bad_path), "%s/no/such/dir.gguf", tmp_dir);
    CU_ASSERT_EQUAL(ms_gguf_writer_begin(w, bad_path, &err), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad_path));
    ms_gguf_writer_destroy(&w);
}

/* Lookups stay right with many tensors (hash collisions, growth). */
static void test_many_tensors(void)
{
    enum { N = 3000 };
    ms_gguf_writer_t *w = ms_gguf_writer_new(32);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    char name[64];
    int64_t ne = 8;
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_exps.weight", i);
        CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, name, MS_TYPE_F32, 1, &ne), 0);
    }
    ms_err_t err = {{0}};
    const char *path = tmp_path("many.gguf");
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    float v[8];
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 8; k++)
            v[k] = (float)(i * 8 + k);
        CU_ASSERT_EQUAL(ms_gguf_writer_write(w, v, sizeof(v), &err), 0);
    }
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
    ms_gguf_t *g = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path, &g, &err), 0);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_exps.weight", i);
        const ms_gguf_tensor_t *t = ms_gguf_find_tensor(g, name);
        float first;
        if (t)
            memcpy(&first, t->data, 4);
        if (!t || t != ms_gguf_tensor(g, (uint64_t)i) || first != (float)(i * 8))
            wrong++;
    }
    CU_ASSERT_EQUAL(wrong, 0);
    CU_ASSERT_PTR_NULL(ms_gguf_find_tensor(g, "blk.3000.ffn_gate_exps.weight"));
    ms_gguf_close(&g);
}

/* Data larger than the writer's buffer, in one large write and in odd chunks
 * that cross buffer boundaries, arrives intact. */
static void test_large_tensor(void)
{
    enum { ROW = 1 << 20, ROWS = 3 }; /* 12 MiB of F32 */
    const uint64_t n = (uint64_t)ROW * ROWS * 4;
    uint8_t *data = malloc(n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(data);
    for (uint64_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i * 2654435761u >> 13);
    ms_gguf_writer_t *w = ms_gguf_writer_new(4096);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    int64_t ne[2] = {ROW, ROWS}, small = 3;
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "small", MS_TYPE_F32, 1, &small), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "big", MS_TYPE_F32, 2, ne), 0);
    ms_err_t err = {{0}};
    const char *path = tmp_path("large.gguf");
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, 12, &err), 0);
    uint64_t first = 5u << 20; /* one write past the buffer size */
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, first, &err), 0);
    uint64_t done = first;
    while (done < n) {
        uint64_t k = (777u << 10) + 13;
        if (k > n - done)
            k = n - done;
        CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_write(w, data + done, k, &err), 0);
        done += k;
    }
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
    ms_gguf_t *g = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path, &g, &err), 0);
    const ms_gguf_tensor_t *t = ms_gguf_find_tensor(g, "big");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->nbytes, n);
    CU_ASSERT_EQUAL(t->offset, 4096);
    CU_ASSERT_EQUAL(memcmp(t->data, data, n), 0);
    CU_ASSERT_EQUAL(memcmp(ms_gguf_find_tensor(g, "small")->data, data, 12), 0);
    CU_ASSERT_EQUAL(ms_gguf_file_size(g) % 4096, 0);
    ms_gguf_close(&g);
    free(data);
}

/* Header-only opening: a 2.9 MiB string array forces the mapped prefix to grow
 * past its first 1 MiB; every key and tensor info equals a full open's, no
 * tensor data is mapped, and a damaged file is refused the same way. */
static void test_header_only(void)
{
    const char *path = tmp_path("header-only.gguf");
    enum { N_STR = 3000 };
    static char text[N_STR][1024];
    const char *strs[N_STR];
    for (int i = 0; i < N_STR; i++) {
        memset(text[i], 'a' + i % 26, sizeof(text[i]) - 1);
        strs[i] = text[i];
    }
    ms_gguf_writer_t *w = ms_gguf_writer_new(64);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_str(w, "big.strings", strs, NULL, N_STR), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "after.big", 7), 0);
    int64_t ne[2] = { 64, 3 };
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "t0", MS_TYPE_F32, 2, ne), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "t1", MS_TYPE_F32, 2, ne), 0);
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    static float data[2 * 64 * 3];
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, sizeof(data) / 2, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_write(w, data, sizeof(data) / 2, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);

    ms_gguf_t *full = NULL, *hdr = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path, &full, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open_header(path, &hdr, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_file_size(hdr), ms_gguf_file_size(full));
    CU_ASSERT_EQUAL(ms_gguf_data_offset(hdr), ms_gguf_data_offset(full));
    CU_ASSERT_TRUE(ms_gguf_data_offset(hdr) > (2u << 20)); /* past the first 1 MiB probe, and its 4x */
    uint32_t v = 0;
    CU_ASSERT_EQUAL(ms_gguf_get_u32(hdr, "after.big", &v), 0);
    CU_ASSERT_EQUAL(v, 7);
    const ms_gguf_kv_t *kv = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_gguf_get_arr(hdr, "big.strings", MS_GGUF_STRING, &kv), 0);
    CU_ASSERT_EQUAL(kv->arr_n, N_STR);
    CU_ASSERT_TRUE(ms_str_eq(kv->arr_strs[N_STR - 1], text[N_STR - 1]));
    for (uint64_t i = 0; i < 2; i++) {
        const ms_gguf_tensor_t *a = ms_gguf_tensor(full, i), *b = ms_gguf_tensor(hdr, i);
        CU_ASSERT_EQUAL(a->file_offset, b->file_offset);
        CU_ASSERT_EQUAL(a->nbytes, b->nbytes);
        CU_ASSERT_PTR_NOT_NULL(a->data);
        CU_ASSERT_PTR_NULL(b->data);
    }
    CU_ASSERT_EQUAL(ms_gguf_prefault(hdr, ms_gguf_data_offset(hdr), 64), -EINVAL);
    ms_gguf_close(&hdr);
    ms_gguf_close(&full);

    /* cut inside the big array: refused, naming the file, like a full open */
    CU_ASSERT_EQUAL_FATAL(truncate(path, 2u << 20), 0);
    CU_ASSERT_EQUAL(ms_gguf_open_header(path, &hdr, &err), -EINVAL);
    CU_ASSERT_PTR_NULL(hdr);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "header-only.gguf"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "truncated"));
    CU_ASSERT_EQUAL(ms_gguf_open_header(tmp_path("no-such-file.gguf"), &hdr, &err), -ENOENT);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("gguf", suite_init, suite_cleanup);
    if (!s)
        return CU_get_error();
    struct { const char *name; CU_TestFunc fn; } tests[] = {
        {"crafted valid file", test_crafted_valid},
        {"bad header", test_bad_header},
        {"bad strings", test_bad_strings},
        {"bad values", test_bad_values},
        {"bad alignment", test_bad_alignment},
        {"bad tensor shape", test_bad_tensor_shape},
        {"bad tensor type and name", test_bad_tensor_type_and_name},
        {"bad tensor placement", test_bad_tensor_placement},
        {"tensors out of order accepted", test_out_of_order_tensors_ok},
        {"names shown safely", test_name_shown_safely},
        {"round trip, alignment 64", test_roundtrip_64},
        {"round trip, alignment 4096", test_roundtrip_4096},
        {"round trip, default alignment", test_roundtrip_32},
        {"copy every kv into a new file", test_copy_all_kvs},
        {"every prefix fails cleanly", test_truncated_everywhere},
        {"open errors", test_open_errors},
        {"getters", test_getters},
        {"string helpers", test_str_helpers},
        {"writer refusals", test_writer_refusals},
        {"many tensors", test_many_tensors},
        {"tensor larger than the write buffer", test_large_tensor},
        {"header-only open", test_header_only},
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
        if (!CU_add_test(s, tests[i].name, tests[i].fn))
            return CU_get_error();
    return 0;
}

#include "cu_main.h"
