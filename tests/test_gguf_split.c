/* CUnit tests for split GGUF models (common/gguf.c) and the per-part slice
 * loader (ms_shard_load_ranges in common/shard.c): a model written whole and
 * in parts opens as the same model; a missing part, a part that says another
 * count, a duplicated tensor and a part of another model are each refused
 * naming the file; header-only (layout) files open only in layout mode. */
#include "gguf.h"
#include "gguf_write.h"
#include "shard.h"
#include "uring_load.h"

#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_T 6        /* tensors of the test model */
#define ROWS 2
#define COLS 4       /* each tensor: F32 [COLS, ROWS] */
#define PARTS 3

static const char *const names[N_T] = { "token_embd.weight", "a.weight", "b.weight",
                                        "c.weight", "d.weight", "output.weight" };
static char tmp_dir[256];

static int suite_init(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/test_gguf_split.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static const char *path_of(const char *name)
{
    static char path[4][512];
    static int turn;
    turn = (turn + 1) % 4;
    snprintf(path[turn], sizeof(path[turn]), "%s/%s", tmp_dir, name);
    return path[turn];
}

static const char *part_file(int k, int count)
{
    char name[64];
    snprintf(name, sizeof(name), "m-%05d-of-%05d.gguf", k + 1, count);
    return path_of(name);
}

static void remove_all(void)
{
    static const char *const extra[] = { "whole.gguf", "odd.gguf", "described.gguf" };
    for (int k = 0; k < PARTS + 1; k++)
        unlink(part_file(k, PARTS));
    for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
        unlink(path_of(extra[i]));
}

static int suite_clean(void)
{
    remove_all();
    return rmdir(tmp_dir);
}

/* Element j of tensor i: a value no other element of the model has. */
static float value_of(int i, int j)
{
    return (float)(100 * i + j) + 0.25f;
}

static int add_u16(ms_gguf_writer_t *w, const char *key, uint16_t v)
{
    ms_gguf_kv_t kv = { .key = { key, strlen(key) }, .type = MS_GGUF_UINT16, .v.u64 = v };
    return ms_gguf_writer_copy_kv(w, &kv);
}

/* What one file of the test holds. */
typedef struct {
    bool meta;           /* the model's metadata (first part or whole file) */
    bool split;          /* write split.* keys */
    uint16_t no, count;
    int32_t total;       /* split.tensors.count */
    int lo, hi;          /* tensors [lo, hi) of names[] */
    const char *rename0; /* tensor lo written under this name instead (a duplicate) */
} file_spec_t;

static void write_file(const char *path, const file_spec_t *f)
{
    ms_gguf_writer_t *w = ms_gguf_writer_new(32);
    CU_ASSERT_FATAL(w != NULL);
    if (f->meta) {
        CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "general.architecture", "test"), 0);
        CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "test.answer", 42), 0);
    }
    if (f->split) {
        CU_ASSERT_EQUAL(add_u16(w, "split.no", f->no), 0);
        CU_ASSERT_EQUAL(add_u16(w, "split.count", f->count), 0);
        CU_ASSERT_EQUAL(ms_gguf_writer_add_i32(w, "split.tensors.count", f->total), 0);
    }
    int64_t ne[2] = { COLS, ROWS };
    for (int i = f->lo; i < f->hi; i++)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, i == f->lo && f->rename0 ? f->rename0 : names[i], MS_TYPE_F32, 2,
                                                  ne), 0);
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    for (int i = f->lo; i < f->hi; i++) {
        float v[COLS * ROWS];
        for (int j = 0; j < COLS * ROWS; j++)
            v[j] = value_of(i, j);
        CU_ASSERT_EQUAL(ms_gguf_writer_write(w, v, sizeof(v), &err), 0);
    }
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
}

/* Part k of PARTS: tensors [2k, 2k + 2). */
static file_spec_t part_spec(int k)
{
    return (file_spec_t){ .meta = k == 0, .split = true, .no = (uint16_t)k, .count = PARTS, .total = N_T,
                          .lo = 2 * k, .hi = 2 * k + 2 };
}

static void write_split(void)
{
    remove_all();
    for (int k = 0; k < PARTS; k++) {
        file_spec_t f = part_spec(k);
        write_file(part_file(k, PARTS), &f);
    }
}

static void check_values(const ms_gguf_tensor_t *t, int i)
{
    CU_ASSERT_FATAL(t != NULL && t->data != NULL);
    CU_ASSERT_EQUAL(t->nbytes, COLS * ROWS * sizeof(float));
    const float *v = t->data;
    for (int j = 0; j < COLS * ROWS; j++)
        CU_ASSERT_EQUAL(v[j], value_of(i, j));
}

static void test_split_opens_as_one(void)
{
    file_spec_t whole = { .meta = true, .lo = 0, .hi = N_T };
    write_split();
    write_file(path_of("whole.gguf"), &whole);
    ms_gguf_t *g = NULL, *w = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(part_file(0, PARTS), &g, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path_of("whole.gguf"), &w, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_n_parts(g), PARTS);
    CU_ASSERT_EQUAL(ms_gguf_n_parts(w), 1);
    CU_ASSERT_EQUAL(ms_gguf_n_tensors(g), N_T);
    uint32_t answer = 0;
    CU_ASSERT_EQUAL(ms_gguf_get_u32(g, "test.answer", &answer), 0);
    CU_ASSERT_EQUAL(answer, 42);
    for (int i = 0; i < N_T; i++) {
        const ms_gguf_tensor_t *a = ms_gguf_find_tensor(g, names[i]), *b = ms_gguf_find_tensor(w, names[i]);
        check_values(a, i);
        check_values(b, i);
        CU_ASSERT_EQUAL(a->part, (uint32_t)(i / 2));
        CU_ASSERT_EQUAL(b->part, 0);
        CU_ASSERT_TRUE(ms_str_eq(ms_gguf_tensor(g, (uint64_t)i)->name, names[i])); /* part order kept */
        CU_ASSERT_TRUE(a->ne[0] == b->ne[0] && a->ne[1] == b->ne[1] && a->type == b->type);
    }
    for (uint32_t k = 0; k < PARTS; k++)
        CU_ASSERT_STRING_EQUAL(ms_gguf_part_path(g, k), part_file((int)k, PARTS));
    CU_ASSERT_PTR_NULL(ms_gguf_part_path(g, PARTS));
    const ms_gguf_tensor_t *last = ms_gguf_find_tensor(g, names[N_T - 1]);
    CU_ASSERT_EQUAL(ms_gguf_prefault_tensor(g, last), 0);
    CU_ASSERT_TRUE(last->file_offset + last->nbytes <= ms_gguf_part_size(g, last->part));
    ms_gguf_close(&g);
    ms_gguf_close(&w);
    CU_ASSERT_PTR_NULL(g);
}

static void test_any_part_opens_the_model(void)
{
    write_split();
    ms_gguf_t *g = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(part_file(2, PARTS), &g, &err), 0);
    CU_ASSERT_STRING_EQUAL(ms_gguf_path(g), part_file(0, PARTS));
    CU_ASSERT_EQUAL(ms_gguf_n_tensors(g), N_T);
    CU_ASSERT_PTR_NOT_NULL(ms_gguf_find_kv(g, "general.architecture"));
    ms_gguf_close(&g);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open_header(part_file(1, PARTS), &g, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_n_tensors(g), N_T);
    CU_ASSERT_PTR_NULL(ms_gguf_find_tensor(g, names[3])->data);
    ms_gguf_close(&g);
}

/* Opening any part fails with rc and a message naming `names_file`. */
static void expect_refused(int rc_want, const char *file, const char *also)
{
    char names_file[512];
    snprintf(names_file, sizeof(names_file), "%s", file); /* path_of's buffers rotate */
    for (int k = 0; k < PARTS; k++) {
        ms_gguf_t *g = NULL;
        ms_err_t err = { { 0 } };
        if (access(part_file(k, PARTS), F_OK) != 0)
            continue;
        int rc = ms_gguf_open(part_file(k, PARTS), &g, &err);
        CU_ASSERT_EQUAL(rc, rc_want);
        CU_ASSERT_PTR_NULL(g);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, names_file));
        if (also)
            CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, also));
        if (!strstr(err.msg, names_file) || (also && !strstr(err.msg, also)))
            fprintf(stderr, "\nunexpected message: %s\n", err.msg);
    }
}

static void test_missing_part(void)
{
    write_split();
    unlink(part_file(1, PARTS));
    expect_refused(-ENOENT, part_file(1, PARTS), "missing");
}

static void test_wrong_count(void)
{
    write_split();
    file_spec_t f = part_spec(1);
    f.count = 4; /* its name still says -of-00003 */
    write_file(part_file(1, PARTS), &f);
    expect_refused(-EINVAL, part_file(1, PARTS), "split.count");
}

static void test_duplicate_tensor(void)
{
    write_split();
    file_spec_t f = part_spec(2);
    f.rename0 = names[1]; /* part 0 holds it too */
    write_file(part_file(2, PARTS), &f);
    expect_refused(-EINVAL, part_file(2, PARTS), "also in");
}

static void test_part_of_another_model(void)
{
    write_split();
    file_spec_t f = part_spec(1);
    f.total = N_T + 3;
    write_file(part_file(1, PARTS), &f);
    expect_refused(-EINVAL, part_file(1, PARTS), "split.tensors.count");
}

static void test_total_mismatch(void)
{
    remove_all();
    for (int k = 0; k < PARTS; k++) {
        file_spec_t f = part_spec(k);
        f.total = N_T + 1; /* every part agrees, but the parts hold N_T */
        write_file(part_file(k, PARTS), &f);
    }
    expect_refused(-EINVAL, part_file(0, PARTS), "hold 6 tensors");
}

static void test_bad_name_and_keys(void)
{
    remove_all();
    file_spec_t f = part_spec(0);
    write_file(path_of("odd.gguf"), &f);
    ms_gguf_t *g = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL(ms_gguf_open(path_of("odd.gguf"), &g, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "does not end in '-00001-of-00003.gguf'"));
    f.no = 5; /* split.no past split.count */
    write_file(part_file(0, PARTS), &f);
    CU_ASSERT_EQUAL(ms_gguf_open(part_file(0, PARTS), &g, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "split.no"));
    /* A one-part "split" is a whole model. */
    f = (file_spec_t){ .meta = true, .split = true, .no = 0, .count = 1, .total = N_T, .lo = 0, .hi = N_T };
    write_file(path_of("odd.gguf"), &f);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path_of("odd.gguf"), &g, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_n_parts(g), 1);
    ms_gguf_close(&g);
}

/* A file cut back to its header: only ms_gguf_open_layout takes it. */
static void test_layout_mode(void)
{
    file_spec_t f = { .meta = true, .lo = 0, .hi = N_T };
    const char *path = path_of("described.gguf");
    write_file(path, &f);
    ms_gguf_t *g = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path, &g, &err), 0);
    uint64_t data = ms_gguf_data_offset(g);
    ms_gguf_close(&g);
    CU_ASSERT_EQUAL_FATAL(truncate(path, (off_t)data), 0);
    CU_ASSERT_EQUAL(ms_gguf_open(path, &g, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "past end of file"));
    CU_ASSERT_EQUAL(ms_gguf_open_header(path, &g, &err), -EINVAL);
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open_layout(path, &g, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_n_tensors(g), N_T);
    const ms_gguf_tensor_t *t = ms_gguf_find_tensor(g, names[N_T - 1]);
    CU_ASSERT_PTR_NULL(t->data);
    /* F32 [4, 2] = 32 bytes, a multiple of the alignment: tensors back to back. */
    CU_ASSERT_EQUAL(t->file_offset, data + (N_T - 1) * COLS * ROWS * sizeof(float));
    ms_gguf_close(&g);
}

/* Ranges from every part, read part by part into one buffer each. */
static void test_load_ranges(void)
{
    write_split();
    ms_gguf_t *g = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open_header(part_file(0, PARTS), &g, &err), 0);
    float out[N_T][COLS * ROWS];
    ms_load_range_t r[N_T];
    uint32_t part[N_T];
    for (int i = N_T - 1; i >= 0; i--) { /* any order */
        const ms_gguf_tensor_t *t = ms_gguf_find_tensor(g, names[i]);
        r[i] = (ms_load_range_t){ .file_offset = t->file_offset, .nbytes = t->nbytes, .dst = out[i] };
        part[i] = t->part;
    }
    ms_load_params_t params = ms_load_defaults();
    params.direct = false;
    ms_load_stats_t st = { 0 };
    CU_ASSERT_EQUAL_FATAL(ms_shard_load_ranges(g, r, part, N_T, &params, NULL, NULL, &st, &err), 0);
    CU_ASSERT_EQUAL(st.bytes, N_T * sizeof(out[0]));
    for (int i = 0; i < N_T; i++) {
        CU_ASSERT_EQUAL(r[i].status, 0);
        for (int j = 0; j < COLS * ROWS; j++)
            CU_ASSERT_EQUAL(out[i][j], value_of(i, j));
    }
    part[0] = PARTS; /* no such part */
    CU_ASSERT_EQUAL(ms_shard_load_ranges(g, r, part, N_T, &params, NULL, NULL, &st, &err), -EINVAL);
    ms_gguf_close(&g);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("gguf_split", suite_init, suite_clean);
    if (!s)
        return -1;
    if (!CU_add_test(s, "a split model opens as the whole one", test_split_opens_as_one) ||
        !CU_add_test(s, "any part opens the model", test_any_part_opens_the_model) ||
        !CU_add_test(s, "a missing part is refused by name", test_missing_part) ||
        !CU_add_test(s, "a part with another split.count is refused", test_wrong_count) ||
        !CU_add_test(s, "a tensor in two parts is refused", test_duplicate_tensor) ||
        !CU_add_test(s, "a part of another model is refused", test_part_of_another_model) ||
        !CU_add_test(s, "split.tensors.count must match the parts", test_total_mismatch) ||
        !CU_add_test(s, "split names and keys are checked", test_bad_name_and_keys) ||
        !CU_add_test(s, "header-only files open in layout mode only", test_layout_mode) ||
        !CU_add_test(s, "slices load part by part", test_load_ranges))
        return -1;
    return 0;
}

#include "cu_main.h"
