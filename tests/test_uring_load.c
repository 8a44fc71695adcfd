/* Tests for the io_uring loader: unaligned ranges read back exactly as mmap
 * sees them, on the temporary folder (buffered where it refuses O_DIRECT) and
 * on /var/tmp (usually a disk: O_DIRECT), with every parameter extreme;
 * digest mismatches, bad ranges and parameters; SHA-256 against FIPS 180-2
 * vectors. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "uring_load.h"

#define DIR_BYTES 1024
#define PATH_BYTES 2048
#define MiB (1ull << 20)
/* Not a multiple of any block or chunk size: the last chunk ends short. */
#define FILE_BYTES (37 * MiB + 123)
#define RANGES_MAX 32

typedef struct {
    const char *base;      /* folder the file lives in */
    char dir[DIR_BYTES];
    char path[PATH_BYTES];
    const uint8_t *map;    /* the file through mmap: the reference */
    bool direct_ok;        /* an O_DIRECT read of this file works */
} fixture_t;

static fixture_t fx_tmp, fx_var;

/* xorshift64*: reproducible bytes with no structure a wrong offset could match. */
static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed;
    for (size_t i = 0; i < n; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        p[i] = (uint8_t)((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
}

static bool probe_direct(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0)
        return false;
    void *buf = NULL;
    bool ok = posix_memalign(&buf, 4096, 4096) == 0 && pread(fd, buf, 4096, 0) == 4096;
    free(buf);
    close(fd);
    return ok;
}

static int write_file(const char *path)
{
    uint8_t *data = malloc(FILE_BYTES);
    if (!data)
        return -1;
    fill_random(data, FILE_BYTES, 0x9e3779b97f4a7c15ull);
    FILE *f = fopen(path, "wb");
    int ret = f && fwrite(data, 1, FILE_BYTES, f) == FILE_BYTES ? 0 : -1;
    if (f && fclose(f) != 0)
        ret = -1;
    free(data);
    return ret;
}

static int fixture_init(fixture_t *fx, const char *base)
{
    fx->base = base;
    snprintf(fx->dir, sizeof(fx->dir), "%s/ms-uring-XXXXXX", base);
    if (!mkdtemp(fx->dir))
        return -1;
    snprintf(fx->path, sizeof(fx->path), "%s/data.bin", fx->dir);
    if (write_file(fx->path) != 0)
        return -1;
    int fd = open(fx->path, O_RDONLY);
    if (fd < 0)
        return -1;
    void *m = mmap(NULL, FILE_BYTES, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return -1;
    fx->map = m;
    fx->direct_ok = probe_direct(fx->path);
    printf("\n  %s: O_DIRECT %s\n", fx->path, fx->direct_ok ? "works" : "refused (buffered path)");
    return 0;
}

static int fixture_clean(fixture_t *fx)
{
    if (fx->map)
        munmap((void *)fx->map, FILE_BYTES);
    fx->map = NULL;
    unlink(fx->path);
    return rmdir(fx->dir) == 0 ? 0 : -1;
}

static int init_tmp(void)
{
    const char *t = getenv("TMPDIR");
    return fixture_init(&fx_tmp, t && *t ? t : "/tmp");
}

static int clean_tmp(void)
{
    return fixture_clean(&fx_tmp);
}

static int init_var(void)
{
    return fixture_init(&fx_var, "/var/tmp");
}

static int clean_var(void)
{
    return fixture_clean(&fx_var);
}

/* ---- range sets ---- */

typedef struct {
    ms_load_range_t r[RANGES_MAX];
    uint8_t *mem[RANGES_MAX]; /* allocations; dst is mem + 1 (never aligned) */
    uint8_t digest[RANGES_MAX][MS_SHA256_BYTES];
    size_t n;
} rangeset_t;

static void add(rangeset_t *s, uint64_t off, uint64_t n)
{
    CU_ASSERT_FATAL(s->n < RANGES_MAX);
    uint8_t *m = malloc(n + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    memset(m, 0xa5, n + 1);
    s->mem[s->n] = m;
    s->r[s->n] = (ms_load_range_t){ .file_offset = off, .nbytes = n, .dst = m + 1, .status = 12345 };
    s->n++;
}

static void rangeset_free(rangeset_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->mem[i]);
    s->n = 0;
}

/* Every awkward shape, listed mostly in reverse file order. */
static void build_awkward(rangeset_t *s)
{
    add(s, FILE_BYTES - 1, 1);                   /* the very last byte */
    add(s, FILE_BYTES - 5000, 4000);             /* near the end, ends 1000 before it */
    add(s, 30 * MiB + 17, 4097);                 /* after a gap larger than any chunk */
    add(s, 3 * MiB + 5, 5 * MiB + 7);            /* spans many chunks of every size */
    add(s, 4 * MiB - 3, 6);                      /* overlaps the range above in the file */
    add(s, 2 * MiB - 10, 20);                    /* straddles a 2 MiB chunk boundary */
    add(s, 65536 - 7, 14);                       /* straddles a 64 KiB chunk boundary */
    add(s, 100500, 500);                         /* adjacent to the next one below */
    add(s, 100000, 500);
    add(s, 4097, 4095);
    add(s, 1, 4097);                             /* shares blocks with its neighbours */
    add(s, 0, 1);
}

static void set_digests(rangeset_t *s, const fixture_t *fx)
{
    for (size_t i = 0; i < s->n; i++) {
        CU_ASSERT_EQUAL_FATAL(ms_sha256(fx->map + s->r[i].file_offset, s->r[i].nbytes, s->digest[i]), 0);
        s->r[i].sha256 = s->digest[i];
    }
}

static uint64_t sum_bytes(const rangeset_t *s)
{
    uint64_t t = 0;
    for (size_t i = 0; i < s->n; i++)
        t += s->r[i].nbytes;
    return t;
}

static void check_loaded(const rangeset_t *s, const fixture_t *fx)
{
    for (size_t i = 0; i < s->n; i++) {
        const ms_load_range_t *r = &s->r[i];
        CU_ASSERT_EQUAL(r->status, 0);
        CU_ASSERT_EQUAL(memcmp(r->dst, fx->map + r->file_offset, r->nbytes), 0);
        CU_ASSERT_EQUAL(s->mem[i][0], 0xa5); /* nothing written before dst */
    }
}

typedef struct {
    uint64_t calls, last_done, last_total;
    bool backwards;
} progress_t;

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    progress_t *p = ctx;
    if (done < p->last_done || done > total)
        p->backwards = true;
    p->calls++;
    p->last_done = done;
    p->last_total = total;
}

/* Loads the awkward set with the given parameters and checks every byte. */
static void load_awkward(const fixture_t *fx, uint32_t depth, uint32_t chunk, bool direct, bool digests)
{
    rangeset_t s = { 0 };
    build_awkward(&s);
    if (digests)
        set_digests(&s, fx);
    ms_load_params_t p = { .queue_depth = depth, .chunk_bytes = chunk, .direct = direct };
    ms_load_stats_t st = { 0 };
    progress_t prog = { 0 };
    ms_err_t err = { { 0 } };
    int ret = ms_uring_load(fx->path, s.r, s.n, &p, on_progress, &prog, &st, &err);
    if (ret != 0)
        printf("\n  depth %u chunk %u: %s\n", depth, chunk, err.msg);
    CU_ASSERT_EQUAL_FATAL(ret, 0);
    check_loaded(&s, fx);
    CU_ASSERT_EQUAL(st.bytes, sum_bytes(&s));
    CU_ASSERT(st.bytes_read >= st.bytes - 6); /* the overlapping 6 bytes are read once */
    CU_ASSERT(st.bytes_read < 16 * MiB + 2 * chunk); /* the gaps were skipped */
    CU_ASSERT_EQUAL(st.used_direct, direct && fx->direct_ok);
    CU_ASSERT_EQUAL(st.mismatches, 0);
    CU_ASSERT(st.seconds > 0);
    CU_ASSERT(prog.calls >= 1);
    CU_ASSERT_FALSE(prog.backwards);
    CU_ASSERT_EQUAL(prog.last_done, st.bytes);
    CU_ASSERT_EQUAL(prog.last_total, st.bytes);
    rangeset_free(&s);
}

static void ranges_all_params(const fixture_t *fx)
{
    ms_load_params_t d = ms_load_defaults();
    load_awkward(fx, d.queue_depth, d.chunk_bytes, d.direct, false);
    load_awkward(fx, d.queue_depth, d.chunk_bytes, d.direct, true);
    load_awkward(fx, 1, 64 << 10, true, true);
    load_awkward(fx, 256, 64 << 10, true, false);
    load_awkward(fx, 1, 4 << 20, true, false);
    load_awkward(fx, 256, 4 << 20, true, true);
    load_awkward(fx, 3, 16 << 20, true, false);
    load_awkward(fx, 32, 1 << 20, false, true);
}

/* The whole file as one range into unaligned memory, digest checked. */
static void whole_file(const fixture_t *fx)
{
    rangeset_t s = { 0 };
    add(&s, 0, FILE_BYTES);
    set_digests(&s, fx);
    ms_load_params_t p = ms_load_defaults();
    ms_load_stats_t st = { 0 };
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_uring_load(fx->path, s.r, s.n, &p, NULL, NULL, &st, &err), 0);
    check_loaded(&s, fx);
    CU_ASSERT_EQUAL(st.bytes, FILE_BYTES);
    CU_ASSERT_EQUAL(st.bytes_read, FILE_BYTES); /* EOF ends the last read */
    rangeset_free(&s);
}

/* Hand-computed read volume: two 10-byte ranges far apart cost one 4 KiB
 * block each; the last 5 bytes of the file cost the 123-byte tail block. */
static void sparse_reads(const fixture_t *fx)
{
    rangeset_t s = { 0 };
    add(&s, 30 * MiB, 10);
    add(&s, 10, 10);
    add(&s, FILE_BYTES - 5, 5);
    ms_load_params_t p = ms_load_defaults();
    ms_load_stats_t st = { 0 };
    CU_ASSERT_EQUAL_FATAL(ms_uring_load(fx->path, s.r, s.n, &p, NULL, NULL, &st, NULL), 0);
    check_loaded(&s, fx);
    CU_ASSERT_EQUAL(st.bytes, 25);
    CU_ASSERT_EQUAL(st.bytes_read, 4096 + 4096 + 123);
    rangeset_free(&s);
}

/* A wrong digest fails its own range only; the call still succeeds. */
static void bad_digest(const fixture_t *fx)
{
    rangeset_t s = { 0 };
    build_awkward(&s);
    set_digests(&s, fx);
    s.digest[3][17] ^= 0x01;
    s.digest[7][0] ^= 0x80;
    ms_load_params_t p = ms_load_defaults();
    ms_load_stats_t st = { 0 };
    CU_ASSERT_EQUAL_FATAL(ms_uring_load(fx->path, s.r, s.n, &p, NULL, NULL, &st, NULL), 0);
    CU_ASSERT_EQUAL(st.mismatches, 2);
    for (size_t i = 0; i < s.n; i++) {
        CU_ASSERT_EQUAL(s.r[i].status, (i == 3 || i == 7) ? -EBADMSG : 0);
        CU_ASSERT_EQUAL(memcmp(s.r[i].dst, fx->map + s.r[i].file_offset, s.r[i].nbytes), 0);
    }
    rangeset_free(&s);
}

/* Ranges that do not fit the file are refused before anything is read. */
static void bad_ranges(const fixture_t *fx)
{
    static const struct {
        uint64_t off, n;
    } bad[] = {
        { FILE_BYTES - 10, 11 },    /* one byte past the end */
        { FILE_BYTES, 1 },          /* starts at the end */
        { FILE_BYTES + 4096, 10 },  /* starts past the end */
        { UINT64_MAX - 5, 10 },     /* offset + length overflows */
        { 0, 0 },                   /* empty */
    };
    ms_load_params_t p = ms_load_defaults();
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        rangeset_t s = { 0 };
        add(&s, 0, 100);
        add(&s, bad[k].off, bad[k].n ? bad[k].n : 1);
        s.r[1].nbytes = bad[k].n;
        ms_load_stats_t st = { .bytes = 777 };
        ms_err_t err = { { 0 } };
        CU_ASSERT_EQUAL(ms_uring_load(fx->path, s.r, s.n, &p, NULL, NULL, &st, &err), -EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, fx->path));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "range 1"));
        CU_ASSERT_EQUAL(st.bytes, 777); /* untouched on failure */
        rangeset_free(&s);
    }
    rangeset_t s = { 0 };
    add(&s, 0, 100);
    s.r[0].dst = NULL;
    CU_ASSERT_EQUAL(ms_uring_load(fx->path, s.r, s.n, &p, NULL, NULL, NULL, NULL), -EINVAL);
    rangeset_free(&s);
}

static void test_ranges_tmp(void) { ranges_all_params(&fx_tmp); }
static void test_ranges_var(void) { ranges_all_params(&fx_var); }
static void test_whole_tmp(void) { whole_file(&fx_tmp); }
static void test_whole_var(void) { whole_file(&fx_var); }
static void test_sparse_tmp(void) { sparse_reads(&fx_tmp); }
static void test_sparse_var(void) { sparse_reads(&fx_var); }
static void test_digest_tmp(void) { bad_digest(&fx_tmp); }
static void test_digest_var(void) { bad_digest(&fx_var); }
static void test_bad_ranges_tmp(void) { bad_ranges(&fx_tmp); }

static void test_no_ranges(void)
{
    ms_load_params_t p = ms_load_defaults();
    ms_load_stats_t st = { .bytes = 5 };
    progress_t prog = { 0 };
    CU_ASSERT_EQUAL(ms_uring_load(fx_tmp.path, NULL, 0, &p, on_progress, &prog, &st, NULL), 0);
    CU_ASSERT_EQUAL(st.bytes, 0);
    CU_ASSERT_EQUAL(st.bytes_read, 0);
    CU_ASSERT_EQUAL(prog.calls, 1);
}

static void test_missing_file(void)
{
    char path[PATH_BYTES];
    snprintf(path, sizeof(path), "%s/no-such-file.gguf", fx_tmp.dir);
    rangeset_t s = { 0 };
    add(&s, 0, 10);
    ms_load_params_t p = ms_load_defaults();
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL(ms_uring_load(path, s.r, s.n, &p, NULL, NULL, NULL, &err), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no-such-file.gguf"));
    p.direct = false;
    CU_ASSERT_EQUAL(ms_uring_load(path, s.r, s.n, &p, NULL, NULL, NULL, &err), -ENOENT);
    /* a folder is not a model file */
    CU_ASSERT_EQUAL(ms_uring_load(fx_tmp.dir, s.r, s.n, &p, NULL, NULL, NULL, &err), -EINVAL);
    rangeset_free(&s);
}

/* sysfs files claim 4096 bytes and hold a few: the read ends before the
 * size fstat gave, as when a file shrinks while it loads. */
static void test_short_file(void)
{
    static const char *const candidates[] = { "/sys/devices/system/cpu/online", "/sys/kernel/uevent_seqnum",
                                               "/sys/power/state" };
    const char *path = NULL;
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]) && !path; i++) {
        struct stat st;
        if (stat(candidates[i], &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 4096)
            path = candidates[i];
    }
    if (!path) {
        printf("\n  no sysfs file to read: skipped\n");
        return;
    }
    rangeset_t s = { 0 };
    add(&s, 1000, 100);
    for (int direct = 0; direct <= 1; direct++) {
        ms_load_params_t p = ms_load_defaults();
        p.direct = direct;
        ms_err_t err = { { 0 } };
        s.r[0].status = 0;
        CU_ASSERT_EQUAL(ms_uring_load(path, s.r, s.n, &p, NULL, NULL, NULL, &err), -EIO);
        CU_ASSERT_EQUAL(s.r[0].status, -EIO);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    }
    rangeset_free(&s);
}

static void test_bad_params(void)
{
    static const struct {
        uint32_t depth, chunk;
    } bad[] = {
        { 0, 2 << 20 },          /* no reads in flight */
        { 257, 2 << 20 },        /* above the queue depth limit */
        { 64, 0 },
        { 64, 4096 },            /* below 64 KiB */
        { 64, (64 << 10) + 1 },  /* not whole blocks */
        { 64, (64 << 10) + 512 },
        { 64, (16 << 20) + 4096 }, /* above 16 MiB */
        { 64, 32 << 20 },
    };
    rangeset_t s = { 0 };
    add(&s, 0, 10);
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        ms_load_params_t p = { .queue_depth = bad[k].depth, .chunk_bytes = bad[k].chunk, .direct = true };
        ms_err_t err = { { 0 } };
        CU_ASSERT_EQUAL(ms_uring_load(fx_tmp.path, s.r, s.n, &p, NULL, NULL, NULL, &err), -EINVAL);
        CU_ASSERT(err.msg[0] != '\0');
    }
    ms_load_params_t p = ms_load_defaults();
    CU_ASSERT_EQUAL(ms_uring_load(NULL, s.r, s.n, &p, NULL, NULL, NULL, NULL), -EINVAL);
    CU_ASSERT_EQUAL(ms_uring_load(fx_tmp.path, NULL, 1, &p, NULL, NULL, NULL, NULL), -EINVAL);
    CU_ASSERT_EQUAL(ms_uring_load(fx_tmp.path, s.r, s.n, NULL, NULL, NULL, NULL, NULL), -EINVAL);
    rangeset_free(&s);
}

static void test_defaults(void)
{
    ms_load_params_t p = ms_load_defaults();
    CU_ASSERT_EQUAL(p.queue_depth, 32);
    CU_ASSERT_EQUAL(p.chunk_bytes, 1u << 20);
    CU_ASSERT_TRUE(p.direct);
}

/* ---- SHA-256 helpers: FIPS 180-2 appendix vectors ---- */

static void expect_digest(const char *msg, size_t len, const char *hex)
{
    uint8_t md[MS_SHA256_BYTES];
    char out[2 * MS_SHA256_BYTES + 1];
    CU_ASSERT_EQUAL_FATAL(ms_sha256(msg, len, md), 0);
    ms_sha256_hex(md, out);
    CU_ASSERT_STRING_EQUAL(out, hex);
}

static void test_sha256_vectors(void)
{
    expect_digest("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect_digest("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect_digest(NULL, 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    expect_digest(two_blocks, strlen(two_blocks), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *million = malloc(1000000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(million);
    memset(million, 'a', 1000000);
    expect_digest(million, 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
    uint8_t md[MS_SHA256_BYTES];
    CU_ASSERT_EQUAL(ms_sha256(NULL, 1, md), -EINVAL);
}

static void test_sha256_parse(void)
{
    const char *hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    uint8_t md[MS_SHA256_BYTES], want[MS_SHA256_BYTES];
    CU_ASSERT_EQUAL_FATAL(ms_sha256("abc", 3, want), 0);
    CU_ASSERT_EQUAL(ms_sha256_parse(hex, 64, md), 0);
    CU_ASSERT_EQUAL(memcmp(md, want, sizeof(md)), 0);
    CU_ASSERT_EQUAL(md[0], 0xba);
    CU_ASSERT_EQUAL(md[31], 0xad);
    CU_ASSERT_EQUAL(ms_sha256_parse("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", 64, md), 0);
    CU_ASSERT_EQUAL(memcmp(md, want, sizeof(md)), 0);

    uint8_t keep[MS_SHA256_BYTES];
    memset(keep, 0x11, sizeof(keep));
    memcpy(md, keep, sizeof(md));
    CU_ASSERT_EQUAL(ms_sha256_parse(hex, 63, md), -EINVAL);
    CU_ASSERT_EQUAL(ms_sha256_parse(hex, 65, md), -EINVAL);
    CU_ASSERT_EQUAL(ms_sha256_parse("", 0, md), -EINVAL);
    CU_ASSERT_EQUAL(ms_sha256_parse(NULL, 64, md), -EINVAL);
    char bad[65];
    for (size_t pos = 0; pos < 64; pos += 21) {
        memcpy(bad, hex, 65);
        bad[pos] = 'g';
        CU_ASSERT_EQUAL(ms_sha256_parse(bad, 64, md), -EINVAL);
        bad[pos] = ' ';
        CU_ASSERT_EQUAL(ms_sha256_parse(bad, 64, md), -EINVAL);
    }
    memcpy(bad, hex, 65);
    bad[10] = '\0'; /* length says 64, text ends early */
    CU_ASSERT_EQUAL(ms_sha256_parse(bad, 64, md), -EINVAL);
    CU_ASSERT_EQUAL(memcmp(md, keep, sizeof(md)), 0); /* untouched on failure */

    char out[65];
    uint8_t all[MS_SHA256_BYTES];
    for (size_t i = 0; i < sizeof(all); i++)
        all[i] = (uint8_t)(i * 8 + 7);
    ms_sha256_hex(all, out);
    CU_ASSERT_EQUAL(strlen(out), 64);
    CU_ASSERT_EQUAL(strncmp(out, "070f171f", 8), 0);
    CU_ASSERT_EQUAL(ms_sha256_parse(out, 64, md), 0);
    CU_ASSERT_EQUAL(memcmp(md, all, sizeof(md)), 0);
}

static int add_tests(CU_pSuite s, const char **names, CU_TestFunc *fns, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!CU_add_test(s, names[i], fns[i]))
            return -1;
    return 0;
}

static int ms_test_register(void)
{
    CU_pSuite sha = CU_add_suite("sha256", NULL, NULL);
    CU_pSuite tmp = CU_add_suite("uring_load_tmpdir", init_tmp, clean_tmp);
    CU_pSuite var = CU_add_suite("uring_load_var_tmp", init_var, clean_var);
    if (!sha || !tmp || !var)
        return -1;
    const char *sha_names[] = { "known vectors", "hex parse and format" };
    CU_TestFunc sha_fns[] = { test_sha256_vectors, test_sha256_parse };
    const char *tmp_names[] = { "awkward ranges, every parameter", "whole file", "sparse reads skip gaps",
                                "digest mismatch", "ranges past the end", "no ranges", "missing file",
                                "bad parameters", "defaults", "file shorter than its size" };
    CU_TestFunc tmp_fns[] = { test_ranges_tmp, test_whole_tmp, test_sparse_tmp, test_digest_tmp,
                              test_bad_ranges_tmp, test_no_ranges, test_missing_file, test_bad_params,
                              test_defaults, test_short_file };
    const char *var_names[] = { "awkward ranges, every parameter", "whole file", "sparse reads skip gaps",
                                "digest mismatch" };
    CU_TestFunc var_fns[] = { test_ranges_var, test_whole_var, test_sparse_var, test_digest_var };
    if (add_tests(sha, sha_names, sha_fns, 2) || add_tests(tmp, tmp_names, tmp_fns, 10) ||
        add_tests(var, var_names, var_fns, 4))
        return -1;
    return 0;
}

#include "cu_main.h"
