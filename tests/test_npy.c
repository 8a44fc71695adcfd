/* Tests for the .npy writer: byte layout checked against the NumPy format 1.0
 * description, a load by NumPy itself when available, and the error paths. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "npy.h"

#define PYTHON "/usr/bin/python3"
/* Our own bounds (<limits.h> resolves to common/limits.h under -Icommon):
 * a path is the temporary folder plus a short name. */
#define DIR_BYTES 1024
#define PATH_BYTES 2048

static char tmp_dir[DIR_BYTES];

static int suite_init(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/ms-npy-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int suite_clean(void)
{
    char cmd[PATH_BYTES + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void tmp_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmp_dir, name);
}

/* Reads a whole (small) file; returns its size or -1. */
static long slurp(const char *path, unsigned char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return (long)n;
}

/* Value of element (r, c): exactly representable, distinct per element. */
static float value_at(int r, int c)
{
    return (float)(r * 5 + c) * 0.25f - 1.0f;
}

static void write_3x5(const char *path)
{
    ms_npy_writer_t *w = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_npy_open(path, 5, &w), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    for (int r = 0; r < 3; r++) {
        float row[5];
        for (int c = 0; c < 5; c++)
            row[c] = value_at(r, c);
        CU_ASSERT_EQUAL(ms_npy_append_row(w, row), 0);
    }
    CU_ASSERT_EQUAL(ms_npy_close(&w), 0);
    CU_ASSERT_PTR_NULL(w);
}

/* The header is "\x93NUMPY", 1, 0, u16 length, then the dict padded with
 * spaces and ended by '\n'. The dict with room for a 13-digit row count is
 * 71 characters; 10 + 71 + 1 = 82 rounds up to 128 total, so the length
 * field holds 118. */
static void test_layout(void)
{
    char path[PATH_BYTES];
    tmp_path(path, sizeof(path), "a.npy");
    write_3x5(path);
    unsigned char buf[4096];
    long n = slurp(path, buf, sizeof(buf));
    CU_ASSERT_EQUAL_FATAL(n, 128 + 3 * 5 * 4);
    CU_ASSERT(memcmp(buf, "\x93NUMPY", 6) == 0);
    CU_ASSERT_EQUAL(buf[6], 1);
    CU_ASSERT_EQUAL(buf[7], 0);
    CU_ASSERT_EQUAL(buf[8] | (buf[9] << 8), 118);
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }";
    size_t dl = strlen(dict);
    CU_ASSERT(memcmp(buf + 10, dict, dl) == 0);
    for (size_t i = 10 + dl; i < 127; i++)
        CU_ASSERT_EQUAL(buf[i], ' ');
    CU_ASSERT_EQUAL(buf[127], '\n');
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 5; c++) {
            float v;
            memcpy(&v, buf + 128 + (r * 5 + c) * 4, 4);
            CU_ASSERT_EQUAL(v, value_at(r, c));
        }
    }
    /* -1.0f is 0xbf800000: bytes 00 00 80 bf in little-endian order. */
    CU_ASSERT(memcmp(buf + 128, "\x00\x00\x80\xbf", 4) == 0);
}

static void test_empty_and_wide_count(void)
{
    char path[PATH_BYTES];
    tmp_path(path, sizeof(path), "b.npy");
    ms_npy_writer_t *w = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_npy_open(path, 1, &w), 0);
    CU_ASSERT_EQUAL(ms_npy_close(&w), 0);
    unsigned char buf[256];
    CU_ASSERT_EQUAL_FATAL(slurp(path, buf, sizeof(buf)), 128);
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1), }";
    CU_ASSERT(memcmp(buf + 10, dict, strlen(dict)) == 0);

    /* 12345 rows: a five-digit count rewritten in the same header bytes. */
    CU_ASSERT_EQUAL_FATAL(ms_npy_open(path, 1, &w), 0);
    for (int i = 0; i < 12345; i++) {
        float v = (float)i;
        CU_ASSERT_EQUAL_FATAL(ms_npy_append_row(w, &v), 0);
    }
    CU_ASSERT_EQUAL(ms_npy_close(&w), 0);
    static unsigned char big[128 + 12345 * 4 + 16];
    CU_ASSERT_EQUAL_FATAL(slurp(path, big, sizeof(big)), 128 + 12345 * 4);
    dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (12345, 1), }";
    CU_ASSERT(memcmp(big + 10, dict, strlen(dict)) == 0);
    CU_ASSERT_EQUAL(big[127], '\n');
    float last;
    memcpy(&last, big + 128 + 12344 * 4, 4);
    CU_ASSERT_EQUAL(last, 12344.0f);
}

static int have_numpy(void)
{
    return access(PYTHON, X_OK) == 0 &&
           system(PYTHON " -c 'import numpy' >/dev/null 2>&1") == 0;
}

static void test_numpy_load(void)
{
    if (!have_numpy()) {
        fprintf(stderr, "\n    (" PYTHON " with numpy not found: NumPy load not checked) ");
        return;
    }
    char path[PATH_BYTES], cmd[2 * PATH_BYTES];
    tmp_path(path, sizeof(path), "c.npy");
    write_3x5(path);
    snprintf(cmd, sizeof(cmd),
             PYTHON " -c \"import numpy, sys; a = numpy.load(sys.argv[1]); "
             "want = numpy.arange(15, dtype=numpy.float32).reshape(3, 5) * 0.25 - 1; "
             "sys.exit(0 if a.dtype == numpy.float32 and a.shape == (3, 5) "
             "and (a == want).all() else 1)\" '%s'",
             path);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

static void test_errors(void)
{
    ms_npy_writer_t *w = NULL;
    char path[PATH_BYTES];
    tmp_path(path, sizeof(path), "no/such/dir/x.npy");
    CU_ASSERT_EQUAL(ms_npy_open(path, 4, &w), -ENOENT);
    CU_ASSERT_EQUAL(ms_npy_open(tmp_dir, 4, &w), -EISDIR);
    CU_ASSERT_PTR_NULL(w);
    tmp_path(path, sizeof(path), "d.npy");
    CU_ASSERT_EQUAL(ms_npy_open(path, 0, &w), -EINVAL);
    CU_ASSERT_EQUAL(ms_npy_open(path, -3, &w), -EINVAL);
    CU_ASSERT_EQUAL(ms_npy_open(path, ((int64_t)1 << 40) + 1, &w), -EINVAL);
    CU_ASSERT_EQUAL(ms_npy_open(NULL, 4, &w), -EINVAL);
    CU_ASSERT_EQUAL(ms_npy_open(path, 4, NULL), -EINVAL);
    CU_ASSERT_PTR_NULL(w);
    CU_ASSERT_EQUAL(ms_npy_close(NULL), 0);
    CU_ASSERT_EQUAL(ms_npy_close(&w), 0);
    CU_ASSERT_EQUAL(ms_npy_append_row(NULL, (const float[1]){ 0 }), -EINVAL);
}

/* /dev/full accepts the open and fails every write with ENOSPC. */
static void test_write_errors(void)
{
    if (access("/dev/full", W_OK) != 0) {
        fprintf(stderr, "\n    (/dev/full not available: write errors not checked) ");
        return;
    }
    ms_npy_writer_t *w = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_npy_open("/dev/full", 2, &w), 0);
    float two[2] = { 1.0f, 2.0f };
    CU_ASSERT_EQUAL(ms_npy_append_row(w, two), 0); /* still in the stdio buffer */
    CU_ASSERT_EQUAL(ms_npy_close(&w), -EIO);
    CU_ASSERT_PTR_NULL(w);

    /* A row larger than the stdio buffer reaches the device at once. */
    enum { WIDE = 1 << 16 };
    static float wide[WIDE];
    CU_ASSERT_EQUAL_FATAL(ms_npy_open("/dev/full", WIDE, &w), 0);
    CU_ASSERT_EQUAL(ms_npy_append_row(w, wide), -EIO);
    CU_ASSERT_EQUAL(ms_npy_close(&w), -EIO);
}

static int ms_test_register(void)
{
    CU_pSuite suite = CU_add_suite("npy", suite_init, suite_clean);
    if (!suite)
        return CU_get_error();
    if (!CU_add_test(suite, "3x5 layout: header text and data", test_layout) ||
        !CU_add_test(suite, "empty array and a wider row count", test_empty_and_wide_count) ||
        !CU_add_test(suite, "NumPy loads the file", test_numpy_load) ||
        !CU_add_test(suite, "invalid arguments and unwritable paths", test_errors) ||
        !CU_add_test(suite, "write errors give -EIO", test_write_errors))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
