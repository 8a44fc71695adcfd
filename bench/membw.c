/* membw: this machine's memory read bandwidth (1e9 bytes/s), on 1 and on N
 * threads, for the decode roofline in bench/bench.sh. The readers touch each
 * 4 KiB page MS_PAGE_AHEAD before they read it, as the decode kernels do
 * (common/kernels.h, ms_touch_pages): without that a plain read loop waits
 * on address translations: on the machine measured it read up to 30 % less
 * than the memory gives (--touch-ahead 0 measures it so). */
#include <errno.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "limits.h"

#define MEMBW_SIZE_MIB_DEFAULT 1024
#define MEMBW_SIZE_MIB_MIN     16
#define MEMBW_SIZE_MIB_MAX     (1 << 20)
#define MEMBW_PASSES_DEFAULT   20 /* best-of: rides out other load on shared cores */
#define MEMBW_PASSES_MAX       1000
#define MEMBW_TOUCH_KIB_MAX    (64 << 10)
#define MEMBW_STRIDE           256 /* bytes per loop iteration: 4 x 64 (AVX-512), 8 x 32 (AVX2) */

typedef uint64_t (*membw_read_fn)(const uint8_t *p, size_t n);

typedef struct {
    int threads;
    int passes;
    size_t bytes;
} membw_opts_t;

/* Bytes ahead at which the readers touch each page; 0: they do not. */
static size_t membw_touch = MS_PAGE_AHEAD;

/* Before bytes [i, i + MEMBW_STRIDE) of the n at p are read: touches the
 * pages that start `membw_touch` bytes on, inside the n bytes. */
static inline void touch_ahead(const uint8_t *p, size_t i, size_t n)
{
    if (!membw_touch || i + membw_touch >= n)
        return;
    size_t to = i + membw_touch + MEMBW_STRIDE;
    ms_touch_pages(p + i + membw_touch, p + (to < n ? to : n));
}

/* Pass hand-off between the timing thread and the readers: idle readers
 * block on a condition variable, they never spin. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    int pass;      /* bumped by the timer to start one pass */
    int running;   /* readers still reading the current pass */
    int stop;      /* set once: readers return */
} membw_sync_t;

typedef struct {
    membw_sync_t *sync;
    membw_read_fn read_fn;
    const uint8_t *p;
    size_t n;
    uint64_t sink; /* the xor of everything read: keeps the loads alive */
} membw_worker_t;

/* ---- read loops: xor into independent accumulators so that many loads are
 * in flight and the compiler cannot drop them ---- */

__attribute__((target("avx512f")))
static uint64_t read_avx512(const uint8_t *p, size_t n)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += MEMBW_STRIDE) {
        touch_ahead(p, i, n);
        a0 = _mm512_xor_si512(a0, _mm512_load_si512((const void *)(p + i)));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512((const void *)(p + i + 64)));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512((const void *)(p + i + 128)));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512((const void *)(p + i + 192)));
    }
    a0 = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    uint64_t lanes[8];
    _mm512_storeu_si512((void *)lanes, a0);
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x ^= lanes[i];
    return x;
}

__attribute__((target("avx2")))
static uint64_t read_avx2(const uint8_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    __m256i a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i < n; i += MEMBW_STRIDE) {
        touch_ahead(p, i, n);
        const __m256i *v = (const __m256i *)(const void *)(p + i);
        a0 = _mm256_xor_si256(a0, _mm256_load_si256(v + 0));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256(v + 1));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256(v + 2));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256(v + 3));
        a4 = _mm256_xor_si256(a4, _mm256_load_si256(v + 4));
        a5 = _mm256_xor_si256(a5, _mm256_load_si256(v + 5));
        a6 = _mm256_xor_si256(a6, _mm256_load_si256(v + 6));
        a7 = _mm256_xor_si256(a7, _mm256_load_si256(v + 7));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    a4 = _mm256_xor_si256(_mm256_xor_si256(a4, a5), _mm256_xor_si256(a6, a7));
    a0 = _mm256_xor_si256(a0, a4);
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)(void *)lanes, a0);
    return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}

static uint64_t read_scalar(const uint8_t *p, size_t n)
{
    const uint64_t *q = (const uint64_t *)(const void *)p;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i < n / 8; i += 4) {
        if (i % 32 == 0) /* every MEMBW_STRIDE bytes, as the vector loops check */
            touch_ahead(p, i * 8, n);
        a0 ^= q[i];
        a1 ^= q[i + 1];
        a2 ^= q[i + 2];
        a3 ^= q[i + 3];
    }
    return a0 ^ a1 ^ a2 ^ a3;
}

static membw_read_fn pick_read(const char **ret_isa)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        *ret_isa = "avx512";
        return read_avx512;
    }
    if (__builtin_cpu_supports("avx2")) {
        *ret_isa = "avx2";
        return read_avx2;
    }
    *ret_isa = "scalar";
    return read_scalar;
}

/* ---- threads ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *worker_main(void *arg)
{
    membw_worker_t *w = arg;
    membw_sync_t *y = w->sync;
    int seen = 0;
    pthread_mutex_lock(&y->mu);
    for (;;) {
        while (y->pass == seen && !y->stop)
            pthread_cond_wait(&y->go, &y->mu);
        if (y->stop)
            break;
        seen = y->pass;
        pthread_mutex_unlock(&y->mu);
        w->sink ^= w->read_fn(w->p, w->n);
        pthread_mutex_lock(&y->mu);
        if (--y->running == 0)
            pthread_cond_signal(&y->done);
    }
    pthread_mutex_unlock(&y->mu);
    return NULL;
}

/* Splits buf into n_threads slices of whole strides; the last takes the rest. */
static void split(membw_worker_t *w, int n_threads, const uint8_t *buf, size_t bytes)
{
    size_t per = bytes / (size_t)n_threads / MEMBW_STRIDE * MEMBW_STRIDE;
    for (int t = 0; t < n_threads; t++) {
        w[t].p = buf + (size_t)t * per;
        w[t].n = t == n_threads - 1 ? bytes - (size_t)t * per : per;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds of each of `passes` passes, all readers together, fastest first. */
static void time_passes(membw_sync_t *y, int n_threads, int passes, double *secs)
{
    for (int i = 0; i < passes; i++) {
        pthread_mutex_lock(&y->mu);
        y->running = n_threads;
        y->pass++;
        double t0 = now_s();
        pthread_cond_broadcast(&y->go);
        while (y->running > 0)
            pthread_cond_wait(&y->done, &y->mu);
        secs[i] = now_s() - t0;
        pthread_mutex_unlock(&y->mu);
    }
    qsort(secs, (size_t)passes, sizeof(double), cmp_double);
}

/* The best and the median pass, in GB/s, reading buf with n_threads threads;
 * -1 when the threads could not be started. */
static int measure(membw_read_fn read_fn, const uint8_t *buf, size_t bytes, int n_threads, int passes,
                   uint64_t *sink, double *ret_best, double *ret_median)
{
    double secs[MEMBW_PASSES_MAX];
    membw_sync_t y = { .mu = PTHREAD_MUTEX_INITIALIZER, .go = PTHREAD_COND_INITIALIZER,
                       .done = PTHREAD_COND_INITIALIZER };
    membw_worker_t w[MS_THREADS_MAX];
    pthread_t tid[MS_THREADS_MAX];
    split(w, n_threads, buf, bytes);
    int started = 0;
    for (; started < n_threads; started++) {
        w[started].sync = &y;
        w[started].read_fn = read_fn;
        w[started].sink = 0;
        if (pthread_create(&tid[started], NULL, worker_main, &w[started]) != 0)
            break;
    }
    if (started == n_threads)
        time_passes(&y, n_threads, passes, secs);
    pthread_mutex_lock(&y.mu);
    y.stop = 1;
    pthread_cond_broadcast(&y.go);
    pthread_mutex_unlock(&y.mu);
    for (int t = 0; t < started; t++) {
        pthread_join(tid[t], NULL);
        *sink ^= w[t].sink;
    }
    if (started < n_threads)
        return -1;
    *ret_best = (double)bytes / secs[0] / 1e9;
    *ret_median = (double)bytes / secs[passes / 2] / 1e9;
    return 0;
}

/* ---- command line ---- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: membw [--size-mib N] [--threads N] [--passes N] [--touch-ahead KIB]\n"
            "  --size-mib N       buffer read per pass, MiB (default %d, %d..%d)\n"
            "  --threads N        threads of the parallel measurement (default: online cores, 1..%d)\n"
            "  --passes N         passes per measurement (default %d, 1..%d)\n"
            "  --touch-ahead KIB  touch each 4 KiB page this far ahead of reading it, as the\n"
            "                     decode kernels do (default %d; 0 = a plain read loop)\n"
            "Prints membw_threads=T gbps=X median_gbps=Y for T = 1 and T = N: the best and the\n"
            "median pass (GB = 1e9 bytes).\n",
            MEMBW_SIZE_MIB_DEFAULT, MEMBW_SIZE_MIB_MIN, MEMBW_SIZE_MIB_MAX, MS_THREADS_MAX,
            MEMBW_PASSES_DEFAULT, MEMBW_PASSES_MAX, MS_PAGE_AHEAD / 1024);
}

/* Parses a decimal integer in [lo, hi]; 0 or -EINVAL. */
static int parse_int(const char *s, long lo, long hi, long *ret)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -EINVAL;
    *ret = v;
    return 0;
}

static int parse_opt(const char *name, const char *val, membw_opts_t *o)
{
    long v;
    if (!strcmp(name, "--size-mib") && !parse_int(val, MEMBW_SIZE_MIB_MIN, MEMBW_SIZE_MIB_MAX, &v))
        o->bytes = (size_t)v << 20;
    else if (!strcmp(name, "--threads") && !parse_int(val, 1, MS_THREADS_MAX, &v))
        o->threads = (int)v;
    else if (!strcmp(name, "--passes") && !parse_int(val, 1, MEMBW_PASSES_MAX, &v))
        o->passes = (int)v;
    else if (!strcmp(name, "--touch-ahead") && !parse_int(val, 0, MEMBW_TOUCH_KIB_MAX, &v))
        membw_touch = (size_t)v << 10;
    else
        return -EINVAL;
    return 0;
}

static int parse_args(int argc, char **argv, membw_opts_t *o)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o->threads = cores < 1 ? 1 : cores > MS_THREADS_MAX ? MS_THREADS_MAX : (int)cores;
    o->passes = MEMBW_PASSES_DEFAULT;
    o->bytes = (size_t)MEMBW_SIZE_MIB_DEFAULT << 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc || parse_opt(argv[i], argv[i + 1], o) < 0) {
            fprintf(stderr, "membw: bad option or value: '%s%s%s'\n", argv[i],
                    i + 1 < argc ? " " : "", i + 1 < argc ? argv[i + 1] : "");
            usage(stderr);
            return -EINVAL;
        }
        i++;
    }
    return 0;
}

/* ---- main ---- */

/* Anonymous memory, every page written first so that the passes read RAM,
 * not the shared zero page. Huge pages where the kernel allows, as the
 * weights get them (in a virtual machine the walks per 4 KiB page can remain:
 * membw_touch). */
static uint8_t *alloc_touched(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, bytes, MADV_HUGEPAGE);
    memset(p, 0x5a, bytes);
    return p;
}

static int report(membw_read_fn read_fn, const uint8_t *buf, const membw_opts_t *o,
                  int threads, uint64_t *sink)
{
    double gbps, median;
    if (measure(read_fn, buf, o->bytes, threads, o->passes, sink, &gbps, &median) < 0) {
        fprintf(stderr, "membw: could not start %d reader threads\n", threads);
        return -1;
    }
    printf("membw_threads=%d gbps=%.2f median_gbps=%.2f\n", threads, gbps, median);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    membw_opts_t o;
    if (parse_args(argc, argv, &o) < 0)
        return 2;
    const char *isa;
    membw_read_fn read_fn = pick_read(&isa);
    uint8_t *buf = alloc_touched(o.bytes);
    if (!buf) {
        fprintf(stderr, "membw: cannot map %zu MiB: %s (try --size-mib smaller)\n",
                o.bytes >> 20, strerror(errno));
        return 1;
    }
    printf("membw_isa=%s\nmembw_bytes=%zu\nmembw_passes=%d\nmembw_touch_ahead_kib=%zu\n", isa, o.bytes, o.passes,
           membw_touch >> 10);
    uint64_t sink = 0;
    int ret = report(read_fn, buf, &o, 1, &sink);
    if (ret == 0 && o.threads > 1)
        ret = report(read_fn, buf, &o, o.threads, &sink);
    munmap(buf, o.bytes);
    /* The fill pattern xors to zero over an even number of strides; the
     * check only makes the loads' result observable to the compiler. */
    if (sink != 0)
        fprintf(stderr, "membw: checksum %016llx\n", (unsigned long long)sink);
    return ret == 0 ? 0 : 1;
}
