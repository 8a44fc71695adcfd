/* loadbench: how fast ms_uring_load brings a whole file into memory, in
 * 4 MiB ranges, for the load figure of bench/bench.sh (compared there with
 * dd iflag=direct bs=4M over the same file). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "uring_load.h"

#define LB_RANGE_BYTES (4ull << 20) /* one range per 4 MiB, as dd bs=4M reads */
#define LB_FILE_BYTES_MAX (1ull << 40)
#define LB_DROP_CACHES "/proc/sys/vm/drop_caches"

typedef struct {
    const char *path;
    ms_load_params_t params;
    bool sha256;      /* check a digest per range (computed by an untimed first pass) */
    bool drop_caches; /* drop the page cache before the timed pass */
    bool no_prefault; /* count first-touch page faults of the destination in the load */
} lb_opts_t;

typedef struct {
    uint8_t *mem;     /* the whole file's bytes */
    size_t bytes;
    ms_load_range_t *ranges;
    uint8_t (*digests)[MS_SHA256_BYTES];
    size_t n;
} lb_load_t;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loadbench [--sha256] [--drop-caches] [--no-prefault] [--buffered] [--queue-depth N]\n"
            "                 [--chunk-kib N] FILE\n"
            "  Loads all of FILE in 4 MiB ranges with io_uring and prints on stdout\n"
            "  load_gbps=X direct=yes|no bytes=N sha256=yes|no cache_dropped=yes|no seconds=S ...\n"
            "  --sha256       check a SHA-256 per range while loading (digests from an untimed first pass)\n"
            "  --drop-caches  sync and drop the page cache before the timed pass (needs root)\n"
            "  --no-prefault  load into never-touched memory: first-touch page faults count in the time\n"
            "                 (by default the destination is zeroed, and so faulted in, before timing)\n"
            "  --buffered     do not try O_DIRECT\n"
            "  --queue-depth  reads in flight, 1..256 (default 64)\n"
            "  --chunk-kib    bytes per read in KiB, 64..16384, a multiple of 4 (default 2048)\n");
}

static int parse_u32(const char *s, unsigned long lo, unsigned long hi, uint32_t *ret)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || !*s || *end || *s == '-' || v < lo || v > hi)
        return -EINVAL;
    *ret = (uint32_t)v;
    return 0;
}

static int parse_args(int argc, char **argv, lb_opts_t *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint32_t v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--sha256")) {
            o->sha256 = true;
        } else if (!strcmp(a, "--drop-caches")) {
            o->drop_caches = true;
        } else if (!strcmp(a, "--no-prefault")) {
            o->no_prefault = true;
        } else if (!strcmp(a, "--buffered")) {
            o->params.direct = false;
        } else if (!strcmp(a, "--queue-depth") && i + 1 < argc && !parse_u32(argv[i + 1], 1, 256, &v)) {
            o->params.queue_depth = v;
            i++;
        } else if (!strcmp(a, "--chunk-kib") && i + 1 < argc && !parse_u32(argv[i + 1], 64, 16384, &v) &&
                   v % 4 == 0) {
            o->params.chunk_bytes = v << 10;
            i++;
        } else if (a[0] != '-' && !o->path) {
            o->path = a;
        } else {
            fprintf(stderr, "loadbench: bad option or value: '%s%s%s'\n", a, i + 1 < argc ? " " : "",
                    i + 1 < argc ? argv[i + 1] : "");
            return -EINVAL;
        }
    }
    if (!o->path) {
        fprintf(stderr, "loadbench: no file given\n");
        return -EINVAL;
    }
    return 0;
}

/* Fresh memory for the whole file, on huge pages where the kernel gives them,
 * as a slice store would be: faulting it in is part of the load. */
static int lb_alloc(const char *path, lb_load_t *l)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int ret = -errno;
        fprintf(stderr, "loadbench: %s: %s\n", path, strerror(-ret));
        return ret;
    }
    if (!S_ISREG(st.st_mode) || st.st_size <= 0 || (uint64_t)st.st_size > LB_FILE_BYTES_MAX) {
        fprintf(stderr, "loadbench: %s: not a regular file of 1 byte to 1 TiB\n", path);
        return -EINVAL;
    }
    l->bytes = (size_t)st.st_size;
    l->n = (l->bytes + LB_RANGE_BYTES - 1) / LB_RANGE_BYTES;
    l->mem = mmap(NULL, l->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (l->mem == MAP_FAILED) {
        l->mem = NULL;
        fprintf(stderr, "loadbench: cannot map %zu bytes for %s\n", l->bytes, path);
        return -ENOMEM;
    }
    madvise(l->mem, l->bytes, MADV_HUGEPAGE);
    l->ranges = calloc(l->n, sizeof(*l->ranges));
    l->digests = calloc(l->n, sizeof(*l->digests));
    if (!l->ranges || !l->digests) {
        fprintf(stderr, "loadbench: out of memory for %zu ranges\n", l->n);
        return -ENOMEM;
    }
    for (size_t i = 0; i < l->n; i++) {
        uint64_t off = i * LB_RANGE_BYTES;
        uint64_t left = l->bytes - off;
        l->ranges[i] = (ms_load_range_t){
            .file_offset = off,
            .nbytes = left < LB_RANGE_BYTES ? left : LB_RANGE_BYTES,
            .dst = l->mem + off,
        };
    }
    return 0;
}

static void lb_free(lb_load_t *l)
{
    if (l->mem)
        munmap(l->mem, l->bytes);
    free(l->ranges);
    free(l->digests);
}

static int lb_load(const lb_opts_t *o, lb_load_t *l, ms_load_progress_fn progress, ms_load_stats_t *st)
{
    ms_err_t err = { { 0 } };
    int ret = ms_uring_load(o->path, l->ranges, l->n, &o->params, progress, NULL, st, &err);
    if (ret < 0)
        fprintf(stderr, "loadbench: %s\n", err.msg);
    return ret;
}

/* The expected digests: loads the file once (untimed) and hashes what came. */
static int lb_reference(const lb_opts_t *o, lb_load_t *l)
{
    ms_load_stats_t st;
    int ret = lb_load(o, l, NULL, &st);
    for (size_t i = 0; ret == 0 && i < l->n; i++)
        ret = ms_sha256(l->ranges[i].dst, l->ranges[i].nbytes, l->digests[i]);
    for (size_t i = 0; ret == 0 && i < l->n; i++)
        l->ranges[i].sha256 = l->digests[i];
    return ret;
}

/* Readies the destination for the timed pass. Zeroing it faults every page
 * in, so the figure is the loader's and the disk's (dd's 4 MiB buffer is
 * faulted once); it also wipes the first pass's bytes. Without prefault the
 * memory is returned to the kernel and the timed pass faults it in. */
static int lb_prepare_memory(const lb_opts_t *o, lb_load_t *l, double *ret_seconds)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (o->no_prefault) {
        if (madvise(l->mem, l->bytes, MADV_DONTNEED) != 0)
            return -errno;
    } else {
        memset(l->mem, 0, l->bytes);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *ret_seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return 0;
}

static bool drop_caches(void)
{
    sync();
    FILE *f = fopen(LB_DROP_CACHES, "w");
    if (!f)
        return false;
    bool ok = fputs("3\n", f) >= 0;
    return fclose(f) == 0 && ok;
}

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    (void)ctx;
    if (isatty(STDERR_FILENO))
        fprintf(stderr, "\rloadbench: %.2f / %.2f GB", done / 1e9, total / 1e9);
}

int main(int argc, char **argv)
{
    lb_opts_t o = { .params = ms_load_defaults() };
    if (parse_args(argc, argv, &o) < 0) {
        usage(stderr);
        return 2;
    }
    lb_load_t l = { 0 };
    int ret = lb_alloc(o.path, &l);
    if (ret == 0 && o.sha256)
        ret = lb_reference(&o, &l);
    double prefault_s = 0;
    if (ret == 0)
        ret = lb_prepare_memory(&o, &l, &prefault_s);
    bool dropped = false;
    if (ret == 0 && o.drop_caches && !(dropped = drop_caches()))
        fprintf(stderr, "loadbench: could not drop the page cache (%s not writable): the figure may be warm\n",
                LB_DROP_CACHES);
    ms_load_stats_t st = { 0 };
    if (ret == 0)
        ret = lb_load(&o, &l, on_progress, &st);
    if (ret == 0 && isatty(STDERR_FILENO))
        fputc('\n', stderr);
    if (ret == 0 && st.mismatches > 0) {
        fprintf(stderr, "loadbench: %u ranges did not match their digest from the first pass\n", st.mismatches);
        ret = -EBADMSG;
    }
    if (ret == 0)
        printf("load_gbps=%.3f direct=%s bytes=%llu sha256=%s cache_dropped=%s seconds=%.3f prefault=%s "
               "prefault_seconds=%.3f queue_depth=%u chunk_kib=%u\n",
               st.bytes / st.seconds / 1e9, st.used_direct ? "yes" : "no", (unsigned long long)st.bytes,
               o.sha256 ? "yes" : "no", dropped ? "yes" : "no", st.seconds, o.no_prefault ? "no" : "yes",
               prefault_s, o.params.queue_depth, o.params.chunk_bytes >> 10);
    lb_free(&l);
    return ret == 0 ? 0 : 1;
}
