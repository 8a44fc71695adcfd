/* mmbench: how fast the decode products stream their weights, by shape.
 *
 * A decode step multiplies one token by many weight matrices, grouped into
 * products of one or more jobs (ms_matmul_multi: Q, K and V together; the
 * output projection alone; the chosen experts' gate and up matrices; their
 * down matrices). Each product is one hand-off to the thread pool and one
 * stream per thread that starts cold and ends when the product does. This
 * program times products of J jobs of R rows each (Q8_0, one token) over
 * weights spread across a buffer far larger than the caches, visited in a
 * scattered order, and prints the weight bytes per second; with --rows 0 one
 * product covers the whole buffer (the long-stream limit). bench/bench.sh
 * runs it for the bench model's shapes (docs/performance.md).
 *
 * With --in-cache the weights are a few rows that stay in the core's L1
 * data cache, gone over many times a pass: the rate is then what the kernel
 * computes, not what memory delivers, and shows how fast the CPU itself runs
 * at the moment (a shared machine's cores slow down with the neighbours'
 * load, and the products with them). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"
#include "limits.h"
#include "mem.h"
#include "pool.h"
#include "types.h"

#define MMB_JOBS_MAX     64
#define MMB_PASSES_MAX   1000
#define MMB_MIB_MAX      (64 << 10)
#define MMB_WARM_PASSES  2
#define MMB_SPIN_US      200 /* as the forward pass sets it for a step */
#define MMB_CACHE_BYTES  (32 << 10) /* inside L1: 48 KiB on Zen 4/5, 32-48 KiB on recent Intel */
#define MMB_CACHE_REPEAT 4096       /* times a pass goes over those bytes (~130 MB) */

typedef struct {
    int64_t rows;     /* per job; 0: one job over the whole buffer */
    int jobs;
    int64_t n_in;
    int64_t mib;
    int passes;
    int threads;
    bool rows_layout; /* --layout rows: the file's row-by-row Q8_0 (--mmap); else 16 rows at a time */
    bool in_cache;
} mmb_opts_t;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: mmbench [--rows R] [--jobs J] [--n-in N] [--size-mib M] [--passes P] [--threads T]\n"
            "               [--layout r16|rows]\n"
            "       mmbench --in-cache [--n-in N] [--passes P] [--threads T] [--layout r16|rows]\n\n"
            "Times one-token Q8_0 matrix products (ms_matmul_multi) of J jobs of R rows of N\n"
            "values each, over M MiB of weights visited in a scattered order, and prints the\n"
            "weight bytes streamed per second (1e9 bytes/s): the best and the mean of P passes.\n\n"
            "  --rows R       rows per job; 0 = one job over the whole buffer (default 1024)\n"
            "  --jobs J       jobs per product, 1..%d (default 1)\n"
            "  --n-in N       values per row, a multiple of 32 up to %d (default 1024)\n"
            "  --size-mib M   weight buffer, 16..%d MiB (default 256)\n"
            "  --passes P     timed passes over the buffer, 1..%d (default 10)\n"
            "  --threads T    pool threads (default: all %d cores)\n"
            "  --layout L     r16: the weights laid out 16 rows at a time, as moeshard\n"
            "                 holds Q8_0 matrices it read into memory (default); rows: the\n"
            "                 file's row-by-row layout, as with --mmap\n"
            "  --in-cache     one product over the rows that fit in %d KiB (with --layout r16,\n"
            "                 whole groups of 16 rows), %d times a pass: the weights stay in L1,\n"
            "                 so the rate is the kernel's compute speed\n"
            "  -h, --help     this help\n",
            MMB_JOBS_MAX, MS_QK8_0 * 256, MMB_MIB_MAX, MMB_PASSES_MAX, ms_pool_default_threads(),
            MMB_CACHE_BYTES >> 10, MMB_CACHE_REPEAT);
}

static int parse_int(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *ret)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "mmbench: %s expects an integer in [%" PRId64 ", %" PRId64 "], not '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *ret = v;
    return 0;
}

static int parse_args(int argc, char **argv, mmb_opts_t *o)
{
    static const struct option longopts[] = {
        { "rows", required_argument, 0, 'r' },     { "jobs", required_argument, 0, 'j' },
        { "n-in", required_argument, 0, 'n' },     { "size-mib", required_argument, 0, 'm' },
        { "passes", required_argument, 0, 'p' },   { "threads", required_argument, 0, 't' },
        { "layout", required_argument, 0, 'l' },   { "in-cache", no_argument, 0, 'c' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    *o = (mmb_opts_t){ .rows = 1024, .jobs = 1, .n_in = 1024, .mib = 256, .passes = 10,
                       .threads = ms_pool_default_threads() };
    int64_t v;
    bool shape = false; /* --rows, --jobs or --size-mib given */
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, ":h", longopts, NULL);
        if (c == -1)
            break;
        int rc = 0;
        switch (c) {
        case 'r': rc = parse_int("--rows", optarg, 0, 1 << 24, &o->rows); shape = true; break;
        case 'j': rc = parse_int("--jobs", optarg, 1, MMB_JOBS_MAX, &v); o->jobs = (int)v; shape = true; break;
        case 'n': rc = parse_int("--n-in", optarg, MS_QK8_0, MS_QK8_0 * 256, &o->n_in); break;
        case 'm': rc = parse_int("--size-mib", optarg, 16, MMB_MIB_MAX, &o->mib); shape = true; break;
        case 'p': rc = parse_int("--passes", optarg, 1, MMB_PASSES_MAX, &v); o->passes = (int)v; break;
        case 't': rc = parse_int("--threads", optarg, 1, MS_THREADS_MAX, &v); o->threads = (int)v; break;
        case 'l':
            if (strcmp(optarg, "r16") && strcmp(optarg, "rows")) {
                fprintf(stderr, "mmbench: --layout expects r16 or rows, not '%s'\n", optarg);
                return -1;
            }
            o->rows_layout = strcmp(optarg, "rows") == 0;
            break;
        case 'c': o->in_cache = true; break;
        case 'h': usage(stdout); return 1;
        case ':': fprintf(stderr, "mmbench: option '%s' needs a value (see --help)\n", argv[optind - 1]); return -1;
        default: fprintf(stderr, "mmbench: unknown option '%s' (see --help)\n", argv[optind - 1]); return -1;
        }
        if (rc)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "mmbench: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    if (o->n_in % MS_QK8_0) {
        fprintf(stderr, "mmbench: --n-in must be a multiple of %d (Q8_0 blocks)\n", MS_QK8_0);
        return -1;
    }
    if (o->in_cache && shape) {
        fprintf(stderr, "mmbench: --in-cache sets the weights itself; leave out --rows, --jobs and --size-mib\n");
        return -1;
    }
    if (o->in_cache) {
        /* the rows layout takes whole rows, the r16 layout whole groups of 16 */
        int group = o->rows_layout ? 1 : MS_Q8_R16_ROWS;
        o->rows = 0;
        if ((int64_t)ms_type_row_bytes(MS_TYPE_Q8_0, (uint64_t)o->n_in) * group > MMB_CACHE_BYTES) {
            fprintf(stderr, "mmbench: with --in-cache %d row%s of --n-in %" PRId64 " must fit in %d KiB%s\n", group,
                    group > 1 ? "s" : "", o->n_in, MMB_CACHE_BYTES >> 10,
                    group > 1 ? " (or --layout rows)" : "");
            return -1;
        }
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Q8_0 rows whose scales are small normal halves and whose quants vary. */
static void fill_q8(uint8_t *w, int64_t rows, int64_t n_in)
{
    int64_t nb = n_in / MS_QK8_0;
    for (int64_t r = 0; r < rows; r++) {
        ms_block_q8_0_t *b = (ms_block_q8_0_t *)(w + (uint64_t)r * (uint64_t)nb * sizeof(*b));
        for (int64_t i = 0; i < nb; i++) {
            b[i].d = (uint16_t)(0x2000 + ((r + i) & 0x3ff));
            for (int k = 0; k < MS_QK8_0; k++)
                b[i].qs[k] = (int8_t)((r * 31 + i * 7 + k * 13) & 0xff);
        }
    }
}

int main(int argc, char **argv)
{
    mmb_opts_t o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc > 0 ? 0 : 2;
    uint64_t row_bytes = ms_type_row_bytes(MS_TYPE_Q8_0, (uint64_t)o.n_in);
    uint64_t buf_bytes = o.in_cache ? MMB_CACHE_BYTES : (uint64_t)o.mib << 20;
    int repeat = o.in_cache ? MMB_CACHE_REPEAT : 1;
    int64_t total_rows = (int64_t)(buf_bytes / row_bytes);
    if (!o.rows_layout)
        total_rows -= total_rows % MS_Q8_R16_ROWS; /* whole groups of 16 rows */
    int64_t per_product = o.rows ? o.rows * o.jobs : total_rows;
    if (per_product > total_rows) {
        fprintf(stderr, "mmbench: %d jobs of %" PRId64 " rows need more than --size-mib %" PRId64 "\n", o.jobs,
                o.rows, o.mib);
        return 2;
    }
    bool r16 = !o.rows_layout;
    if (r16 && (per_product % MS_Q8_R16_ROWS || (o.rows && o.rows % MS_Q8_R16_ROWS))) {
        fprintf(stderr, "mmbench: --layout r16 needs rows per job in multiples of %d (or --layout rows)\n",
                MS_Q8_R16_ROWS);
        return 2;
    }
    int64_t n_products = total_rows / per_product;
    int64_t used_rows = n_products * per_product;
    uint8_t *w = ms_mem_alloc((size_t)((uint64_t)used_rows * row_bytes));
    float *x = calloc((size_t)o.n_in, sizeof(float)), *y = calloc((size_t)used_rows, sizeof(float));
    void *xq = malloc(ms_act_row_bytes(MS_TYPE_Q8_0, o.n_in));
    ms_pool_t *pool = NULL;
    if (!w || !x || !y || !xq || ms_pool_new(o.threads, &pool)) {
        fprintf(stderr, "mmbench: out of memory for %" PRId64 " MiB of weights (try --size-mib smaller)\n", o.mib);
        return 1;
    }
    fill_q8(w, used_rows, o.n_in);
    if (r16 && !ms_q8_r16_pack(w, used_rows / MS_Q8_R16_ROWS, MS_Q8_R16_ROWS, o.n_in)) {
        fprintf(stderr, "mmbench: out of memory laying out the weights\n");
        return 1;
    }
    const ms_kernels_t *k = ms_kernels_best();
    for (int64_t i = 0; i < o.n_in; i++)
        x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    k->quantize_act(MS_TYPE_Q8_0, x, o.n_in, xq);
    ms_pool_set_spin(pool, MMB_SPIN_US);
    /* a stride coprime with the count visits every product once per pass, far from the last */
    int64_t stride = 1;
    for (int64_t s = n_products / 2 + 1; s < n_products; s++) {
        int64_t a = s, b = n_products;
        while (b) {
            int64_t t = a % b;
            a = b;
            b = t;
        }
        if (a == 1) {
            stride = s;
            break;
        }
    }
    ms_mm_t jobs[MMB_JOBS_MAX];
    int n_jobs = o.rows ? o.jobs : 1;
    double best = 0, sum = 0;
    for (int pass = 0; pass < MMB_WARM_PASSES + o.passes; pass++) {
        double t0 = now_s();
        for (int64_t i = 0; i < n_products * repeat; i++) {
            int64_t p = (i % n_products * stride) % n_products;
            for (int j = 0; j < n_jobs; j++) {
                int64_t r0 = p * per_product + (int64_t)j * (o.rows ? o.rows : per_product);
                jobs[j] = (ms_mm_t){ .type = MS_TYPE_Q8_0, .w = w + (uint64_t)r0 * row_bytes,
                                     .n_out = o.rows ? o.rows : per_product, .n_in = o.n_in, .x = x,
                                     .ldx = o.n_in, .xq = xq, .n_tok = 1, .y = y + r0, .ldy = 1, .w_r16 = r16 };
            }
            ms_matmul_multi(pool, k, jobs, n_jobs);
        }
        double gbps = (double)repeat * (double)used_rows * (double)row_bytes / (now_s() - t0) / 1e9;
        if (pass >= MMB_WARM_PASSES) {
            sum += gbps;
            best = gbps > best ? gbps : best;
        }
    }
    printf("mmbench_in_cache=%d\n", o.in_cache);
    printf("mmbench_rows=%" PRId64 "\nmmbench_jobs=%d\nmmbench_n_in=%" PRId64 "\nmmbench_threads=%d\nmmbench_layout=%s\n"
           "mmbench_products=%" PRId64 "\nmmbench_gbps=%.2f\nmmbench_mean_gbps=%.2f\n",
           o.rows ? o.rows : per_product, n_jobs, o.n_in, o.threads, r16 ? "r16" : "rows", n_products, best, sum / o.passes);
    ms_pool_destroy(&pool);
    ms_mem_free(w, (size_t)((uint64_t)used_rows * row_bytes));
    free(x);
    free(y);
    free(xq);
    return 0;
}
