/* io_uring loader: covers the requested file ranges with 4 KiB-aligned chunk
 * reads into registered bounce buffers, copies each chunk's bytes into the
 * ranges it serves, and checks each range's SHA-256 on a second thread. */
#include "uring_load.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ms_assert.h"

#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h> /* a few no-op instructions outside valgrind */
#else
#define VALGRIND_MAKE_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#endif

#define LOAD_ALIGN              4096u              /* O_DIRECT offset, length and buffer alignment */
#define LOAD_QUEUE_DEPTH_MIN    1u
#define LOAD_QUEUE_DEPTH_MAX    256u
#define LOAD_QUEUE_DEPTH_DEFAULT 32u
#define LOAD_CHUNK_BYTES_MIN    (64u << 10)
#define LOAD_CHUNK_BYTES_MAX    (16u << 20)
#define LOAD_CHUNK_BYTES_DEFAULT (1u << 20)
/* Bounce memory pinned at once: 256 reads of 16 MiB would pin 4 GiB, far
 * more than any disk needs in flight to stay busy. */
#define LOAD_INFLIGHT_BYTES_MAX ((uint64_t)1 << 30)
#define LOAD_RETRIES_MAX        8u                 /* -EAGAIN/-EINTR resubmissions of one chunk */
#define LOAD_PROGRESS_NS        100000000ull       /* progress callback period: 100 ms */
#define LOAD_HASH_THREADS_MAX   4u                 /* digest threads, at most one per online CPU */

_Static_assert(LOAD_CHUNK_BYTES_MIN % LOAD_ALIGN == 0, "chunks are whole aligned blocks");
_Static_assert((uint64_t)LOAD_CHUNK_BYTES_MAX <= LOAD_INFLIGHT_BYTES_MAX, "at least one chunk fits in flight");

/* A range's position in file order. */
typedef struct {
    uint64_t off;
    size_t idx; /* into the caller's array */
} load_ord_t;

/* One aligned read [start, start + len) of which [start, start + want) lies
 * inside the file; first is where the scan for the ranges it serves begins. */
typedef struct {
    uint64_t start;
    uint32_t len, want;
    uint32_t got;      /* bytes in the buffer so far, from start */
    uint32_t issued;   /* buffer offset the outstanding read began at */
    uint32_t retries;
    size_t first;      /* index into the file-ordered array */
} load_chunk_t;

/* The chunk planner: walks the file-ordered ranges, emitting chunks that cover
 * their union and skipping stretches nobody asked for. */
typedef struct {
    const ms_load_range_t *ranges;
    const load_ord_t *ord;
    size_t n;
    size_t r;          /* first range (file order) not yet fully covered */
    uint64_t pos;      /* everything below is covered */
    uint32_t chunk_bytes;
} load_plan_t;

/* Digests are checked after a range is complete, from dst, on threads of
 * their own: ranges complete in near file order while later chunks are still
 * in flight, so hashing (about disk speed on one core) overlaps the reads and
 * the copies instead of adding to them, and ranges are hashed in parallel
 * (on 2 cores, two digest threads load 1.3x faster than one).
 * Holding chunks back until their predecessors were hashed would stall
 * buffer reuse on the slowest read and keep hashing on one core. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ms_load_range_t *ranges;
    size_t *queue;     /* completed range indices, each pushed once */
    size_t head, tail;
    bool closing;
    int error;         /* -ENOMEM when a digest could not be computed */
    uint32_t mismatches;
    pthread_t threads[LOAD_HASH_THREADS_MAX];
    uint32_t n_threads; /* started */
} load_hasher_t;

typedef struct {
    int fd;
    uint64_t file_size;
    ms_load_range_t *ranges;
    load_ord_t *ord;
    uint64_t *remaining; /* per caller index: bytes not yet delivered */
    size_t n;
    load_plan_t plan;
    struct io_uring ring;
    bool ring_ready;
    bool fixed;          /* buffers registered: read_fixed */
    bool direct;
    uint8_t *buf;        /* nbuf * chunk_bytes, LOAD_ALIGN aligned */
    uint32_t nbuf, chunk_bytes;
    load_chunk_t *chunks; /* one per buffer */
    uint32_t *free_bufs;
    uint32_t n_free;
    uint32_t inflight;
    uint64_t bytes_done, bytes_total, bytes_read;
    int io_error;        /* first failed read (-errno) */
    uint64_t io_error_off;
    load_hasher_t hasher;
    ms_load_progress_fn progress;
    void *progress_ctx;
    uint64_t last_progress_ns;
} load_t;

ms_load_params_t ms_load_defaults(void)
{
    return (ms_load_params_t){
        .queue_depth = LOAD_QUEUE_DEPTH_DEFAULT,
        .chunk_bytes = LOAD_CHUNK_BYTES_DEFAULT,
        .direct = true,
    };
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t align_down(uint64_t x)
{
    return x & ~(uint64_t)(LOAD_ALIGN - 1);
}

static uint64_t align_up(uint64_t x)
{
    return align_down(x + LOAD_ALIGN - 1);
}

static uint64_t range_end(const ms_load_range_t *r)
{
    return r->file_offset + r->nbytes;
}

/* ---- SHA-256 helpers ---- */

int ms_sha256(const void *data, size_t len, uint8_t out[MS_SHA256_BYTES])
{
    if ((!data && len > 0) || !out)
        return -EINVAL;
    unsigned int md_len = 0;
    static const uint8_t empty[1];
    if (!EVP_Digest(len ? data : empty, len, out, &md_len, EVP_sha256(), NULL) || md_len != MS_SHA256_BYTES)
        return -ENOMEM; /* OpenSSL fails here only when it cannot allocate its context */
    return 0;
}

void ms_sha256_hex(const uint8_t digest[MS_SHA256_BYTES], char out[2 * MS_SHA256_BYTES + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < MS_SHA256_BYTES; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[2 * MS_SHA256_BYTES] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int ms_sha256_parse(const char *hex, size_t len, uint8_t out[MS_SHA256_BYTES])
{
    if (!hex || !out || len != 2 * MS_SHA256_BYTES)
        return -EINVAL;
    uint8_t tmp[MS_SHA256_BYTES];
    for (size_t i = 0; i < MS_SHA256_BYTES; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        tmp[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(out, tmp, sizeof(tmp));
    return 0;
}

/* ---- digest thread ---- */

/* Checks one queued range; called and returns with h->mu held. */
static void hash_one_locked(load_hasher_t *h)
{
    ms_load_range_t *r = &h->ranges[h->queue[h->head++]];
    pthread_mutex_unlock(&h->mu);
    uint8_t md[MS_SHA256_BYTES];
    int ret = ms_sha256(r->dst, (size_t)r->nbytes, md);
    bool bad = ret == 0 && memcmp(md, r->sha256, MS_SHA256_BYTES) != 0;
    pthread_mutex_lock(&h->mu);
    if (ret < 0 && h->error == 0)
        h->error = ret;
    if (bad) {
        r->status = -EBADMSG;
        h->mismatches++;
    }
}

static void *hasher_main(void *arg)
{
    load_hasher_t *h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (h->head == h->tail && !h->closing)
            pthread_cond_wait(&h->cv, &h->mu);
        if (h->head == h->tail)
            break;
        hash_one_locked(h);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}


static uint32_t hash_thread_count(size_t n_digests)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t n = cpus > 0 ? (uint64_t)cpus : 1;
    if (n > LOAD_HASH_THREADS_MAX)
        n = LOAD_HASH_THREADS_MAX;
    if (n > n_digests)
        n = n_digests;
    return (uint32_t)n;
}

/* Starts the digest threads; fewer than planned is fine, none is an error. */
static int hasher_start(load_hasher_t *h, ms_load_range_t *ranges, size_t n, size_t n_digests)
{
    h->ranges = ranges;
    h->queue = calloc(n, sizeof(*h->queue));
    if (!h->queue)
        return -ENOMEM;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    uint32_t want = hash_thread_count(n_digests);
    int ret = 0;
    while (h->n_threads < want && (ret = pthread_create(&h->threads[h->n_threads], NULL, hasher_main, h)) == 0)
        h->n_threads++;
    if (h->n_threads == 0) {
        pthread_cond_destroy(&h->cv);
        pthread_mutex_destroy(&h->mu);
        free(h->queue);
        h->queue = NULL;
        return -ret;
    }
    return 0;
}

static void hasher_push(load_hasher_t *h, size_t idx)
{
    pthread_mutex_lock(&h->mu);
    h->queue[h->tail++] = idx;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Waits for the queued digests; safe to call when no thread started. */
static void hasher_finish(load_hasher_t *h)
{
    if (h->n_threads == 0)
        return;
    pthread_mutex_lock(&h->mu);
    h->closing = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    for (uint32_t i = 0; i < h->n_threads; i++)
        pthread_join(h->threads[i], NULL);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    free(h->queue);
    h->queue = NULL;
    h->n_threads = 0;
}

/* ---- validation and setup ---- */

static int check_params(const ms_load_params_t *p, ms_err_t *err)
{
    if (p->queue_depth < LOAD_QUEUE_DEPTH_MIN || p->queue_depth > LOAD_QUEUE_DEPTH_MAX) {
        ms_err_set(err, "load: queue depth %u is outside [%u, %u]", p->queue_depth, LOAD_QUEUE_DEPTH_MIN,
                   LOAD_QUEUE_DEPTH_MAX);
        return -EINVAL;
    }
    if (p->chunk_bytes < LOAD_CHUNK_BYTES_MIN || p->chunk_bytes > LOAD_CHUNK_BYTES_MAX ||
        p->chunk_bytes % LOAD_ALIGN != 0) {
        ms_err_set(err, "load: chunk size %u is not a multiple of %u in [%u, %u]", p->chunk_bytes, LOAD_ALIGN,
                   LOAD_CHUNK_BYTES_MIN, LOAD_CHUNK_BYTES_MAX);
        return -EINVAL;
    }
    return 0;
}

static int check_ranges(const char *path, const ms_load_range_t *ranges, size_t n, uint64_t file_size,
                        ms_err_t *err)
{
    for (size_t i = 0; i < n; i++) {
        const ms_load_range_t *r = &ranges[i];
        if (r->nbytes == 0 || !r->dst || r->nbytes > SIZE_MAX) {
            ms_err_set(err, "%s: range %zu is empty or has no destination", path, i);
            return -EINVAL;
        }
        if (r->file_offset > file_size || r->nbytes > file_size - r->file_offset) {
            ms_err_set(err, "%s: range %zu [%llu, +%llu) ends past the end of the file (%llu bytes)", path, i,
                       (unsigned long long)r->file_offset, (unsigned long long)r->nbytes,
                       (unsigned long long)file_size);
            return -EINVAL;
        }
    }
    return 0;
}

/* True when an O_DIRECT read of the first block works: some file systems
 * accept O_DIRECT at open and refuse the reads. */
static bool direct_read_works(int fd)
{
    void *probe = NULL;
    if (posix_memalign(&probe, LOAD_ALIGN, LOAD_ALIGN) != 0)
        return false;
    bool ok = pread(fd, probe, LOAD_ALIGN, 0) >= 0;
    free(probe);
    return ok;
}

/* Opens path with O_DIRECT when asked and allowed, else buffered. */
static int open_file(const char *path, bool want_direct, int *ret_fd, bool *ret_direct, ms_err_t *err)
{
    int fd = -1;
    if (want_direct) {
        fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        if (fd < 0 && errno != EINVAL) {
            int ret = -errno;
            ms_err_set(err, "%s: cannot open: %s", path, strerror(-ret));
            return ret;
        }
        if (fd >= 0 && !direct_read_works(fd)) {
            close(fd);
            fd = -1;
        }
        if (fd >= 0) {
            *ret_fd = fd;
            *ret_direct = true;
            return 0;
        }
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int ret = -errno;
        ms_err_set(err, "%s: cannot open: %s", path, strerror(-ret));
        return ret;
    }
    *ret_fd = fd;
    *ret_direct = false;
    return 0;
}

static int cmp_ord(const void *a, const void *b)
{
    const load_ord_t *x = a, *y = b;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* Sorts the ranges into file order and resets their status. */
static int order_ranges(load_t *L)
{
    L->ord = calloc(L->n ? L->n : 1, sizeof(*L->ord));
    L->remaining = calloc(L->n ? L->n : 1, sizeof(*L->remaining));
    if (!L->ord || !L->remaining)
        return -ENOMEM;
    for (size_t i = 0; i < L->n; i++) {
        L->ord[i] = (load_ord_t){ .off = L->ranges[i].file_offset, .idx = i };
        L->remaining[i] = L->ranges[i].nbytes;
        L->ranges[i].status = 0;
        L->bytes_total += L->ranges[i].nbytes;
    }
    qsort(L->ord, L->n, sizeof(*L->ord), cmp_ord);
    return 0;
}

/* Bytes the union of the ranges spans in aligned blocks: no more buffers
 * than chunks are needed. */
static uint64_t covered_bytes(const load_t *L)
{
    uint64_t total = 0, pos = 0;
    for (size_t k = 0; k < L->n; k++) {
        const ms_load_range_t *r = &L->ranges[L->ord[k].idx];
        uint64_t lo = align_down(r->file_offset), hi = align_up(range_end(r));
        if (hi <= pos)
            continue;
        total += hi - (lo > pos ? lo : pos);
        pos = hi;
    }
    return total;
}

static uint32_t buffer_count(const load_t *L, uint32_t queue_depth)
{
    uint64_t nbuf = queue_depth;
    uint64_t cap = LOAD_INFLIGHT_BYTES_MAX / L->chunk_bytes;
    uint64_t need = (covered_bytes(L) + L->chunk_bytes - 1) / L->chunk_bytes;
    if (nbuf > cap)
        nbuf = cap;
    if (nbuf > need)
        nbuf = need;
    return nbuf ? (uint32_t)nbuf : 1;
}

static int setup_buffers(load_t *L)
{
    size_t bytes = (size_t)L->nbuf * L->chunk_bytes;
    void *buf = NULL;
    if (posix_memalign(&buf, LOAD_ALIGN, bytes) != 0)
        return -ENOMEM;
    L->buf = buf;
    L->chunks = calloc(L->nbuf, sizeof(*L->chunks));
    L->free_bufs = calloc(L->nbuf, sizeof(*L->free_bufs));
    if (!L->chunks || !L->free_bufs)
        return -ENOMEM;
    for (uint32_t i = 0; i < L->nbuf; i++)
        L->free_bufs[i] = L->nbuf - 1 - i;
    L->n_free = L->nbuf;
    return 0;
}

/* Registers the bounce buffers so the kernel pins them once, not per read.
 * Where registration is refused (RLIMIT_MEMLOCK for an unprivileged user on
 * older kernels) the same buffers are read without it: a little slower,
 * never wrong. */
static void register_buffers(load_t *L)
{
    struct iovec *iov = calloc(L->nbuf, sizeof(*iov));
    if (!iov)
        return;
    for (uint32_t i = 0; i < L->nbuf; i++)
        iov[i] = (struct iovec){ .iov_base = L->buf + (size_t)i * L->chunk_bytes, .iov_len = L->chunk_bytes };
    L->fixed = io_uring_register_buffers(&L->ring, iov, L->nbuf) == 0;
    free(iov);
}

static int setup_ring(load_t *L, const char *path, ms_err_t *err)
{
    int ret = io_uring_queue_init(L->nbuf, &L->ring, 0);
    if (ret < 0) {
        ms_err_set(err, "%s: io_uring setup failed: %s (is io_uring disabled by kernel.io_uring_disabled "
                   "or a seccomp filter?)", path, strerror(-ret));
        return ret;
    }
    L->ring_ready = true;
    register_buffers(L);
    return 0;
}

/* ---- planning ---- */

/* The next chunk to read, or false when every range is covered. */
static bool plan_next(load_plan_t *p, load_chunk_t *c)
{
    while (p->r < p->n && range_end(&p->ranges[p->ord[p->r].idx]) <= p->pos)
        p->r++;
    if (p->r == p->n)
        return false;
    uint64_t start = align_down(p->ranges[p->ord[p->r].idx].file_offset);
    if (start < p->pos)
        start = p->pos;
    /* Read up to the last byte any range needs within one chunk's reach. */
    uint64_t reach = start + p->chunk_bytes, need_end = 0;
    for (size_t k = p->r; k < p->n && p->ord[k].off < reach; k++) {
        uint64_t e = range_end(&p->ranges[p->ord[k].idx]);
        if (e > need_end)
            need_end = e;
    }
    uint64_t end = align_up(need_end);
    if (end > reach)
        end = reach;
    MS_ASSERT(end > start);
    *c = (load_chunk_t){ .start = start, .len = (uint32_t)(end - start), .first = p->r };
    p->pos = end;
    return true;
}

/* ---- reads ---- */

static int queue_read(load_t *L, uint32_t b)
{
    load_chunk_t *c = &L->chunks[b];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&L->ring);
    if (!sqe) {
        int ret = io_uring_submit(&L->ring);
        if (ret < 0)
            return ret;
        sqe = io_uring_get_sqe(&L->ring);
        if (!sqe)
            return -EBUSY;
    }
    /* O_DIRECT resumes a short read at the block it stopped in. */
    c->issued = L->direct ? (uint32_t)align_down(c->got) : c->got;
    uint8_t *dst = L->buf + (size_t)b * L->chunk_bytes + c->issued;
    unsigned len = c->len - c->issued;
    if (L->fixed)
        io_uring_prep_read_fixed(sqe, L->fd, dst, len, c->start + c->issued, (int)b);
    else
        io_uring_prep_read(sqe, L->fd, dst, len, c->start + c->issued);
    io_uring_sqe_set_data64(sqe, b);
    return 0;
}

/* Fills free buffers with the next chunks of the plan. */
static int queue_chunks(load_t *L)
{
    while (L->n_free > 0) {
        load_chunk_t c;
        if (!plan_next(&L->plan, &c))
            return 0;
        uint32_t b = L->free_bufs[--L->n_free];
        uint64_t in_file = L->file_size - c.start;
        c.want = in_file < c.len ? (uint32_t)in_file : c.len;
        L->chunks[b] = c;
        int ret = queue_read(L, b);
        if (ret < 0)
            return ret;
        L->inflight++;
    }
    return 0;
}

static void range_done(load_t *L, size_t idx)
{
    ms_load_range_t *r = &L->ranges[idx];
    if (r->status == 0 && r->sha256)
        hasher_push(&L->hasher, idx);
}

/* Hands the chunk's bytes to every range it serves; a failed chunk marks
 * those ranges -EIO instead. */
static void deliver(load_t *L, uint32_t b, int status)
{
    const load_chunk_t *c = &L->chunks[b];
    const uint8_t *src = L->buf + (size_t)b * L->chunk_bytes;
    uint64_t c_end = c->start + c->want;
    for (size_t k = c->first; k < L->n && L->ord[k].off < c_end; k++) {
        size_t idx = L->ord[k].idx;
        ms_load_range_t *r = &L->ranges[idx];
        uint64_t lo = r->file_offset > c->start ? r->file_offset : c->start;
        uint64_t hi = range_end(r) < c_end ? range_end(r) : c_end;
        if (lo >= hi)
            continue;
        if (status < 0)
            r->status = -EIO;
        else
            memcpy((uint8_t *)r->dst + (lo - r->file_offset), src + (lo - c->start), (size_t)(hi - lo));
        L->bytes_done += hi - lo;
        L->remaining[idx] -= hi - lo;
        if (L->remaining[idx] == 0)
            range_done(L, idx);
    }
}

static void release(load_t *L, uint32_t b)
{
    L->free_bufs[L->n_free++] = b;
    L->inflight--;
}

static void fail_chunk(load_t *L, uint32_t b, int res)
{
    if (L->io_error == 0) {
        L->io_error = res;
        L->io_error_off = L->chunks[b].start + L->chunks[b].got;
    }
    deliver(L, b, -EIO);
    release(L, b);
}

/* Reads the rest of an outstanding chunk; one that cannot be queued is no
 * longer in flight. */
static int requeue(load_t *L, uint32_t b)
{
    int ret = queue_read(L, b);
    if (ret < 0)
        release(L, b);
    return ret;
}

/* One completion: retry, continue a short read, or deliver the chunk. */
static int complete(load_t *L, uint32_t b, int res)
{
    load_chunk_t *c = &L->chunks[b];
    if (res == -EAGAIN || res == -EINTR) {
        if (++c->retries > LOAD_RETRIES_MAX) {
            fail_chunk(L, b, res);
            return 0;
        }
        return requeue(L, b);
    }
    /* A read that ends where the last one did, before the end of the file
     * as it was at open, means the file shrank: retrying would spin. */
    if (res < 0 || c->issued + (uint32_t)res <= c->got) {
        fail_chunk(L, b, res < 0 ? res : -EIO);
        return 0;
    }
    /* the kernel wrote these bytes; memcheck cannot see io_uring's writes */
    VALGRIND_MAKE_MEM_DEFINED(L->buf + (size_t)b * L->chunk_bytes + c->issued, (size_t)res);
    L->bytes_read += (uint64_t)res;
    c->got = c->issued + (uint32_t)res;
    if (c->got < c->want)
        return requeue(L, b);
    deliver(L, b, 0);
    release(L, b);
    return 0;
}

static void report_progress(load_t *L, bool final)
{
    if (!L->progress)
        return;
    uint64_t t = now_ns();
    if (!final && t - L->last_progress_ns < LOAD_PROGRESS_NS)
        return;
    L->last_progress_ns = t;
    L->progress(L->progress_ctx, L->bytes_done, L->bytes_total);
}

/* Keeps the ring full until every chunk is delivered. */
static int run_reads(load_t *L)
{
    int ret = queue_chunks(L);
    while (ret == 0 && L->inflight > 0) {
        ret = io_uring_submit_and_wait(&L->ring, 1);
        if (ret == -EINTR) {
            ret = 0;
            continue;
        }
        if (ret < 0)
            break;
        ret = 0;
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&L->ring, head, cqe) {
            seen++;
            uint32_t b = (uint32_t)io_uring_cqe_get_data64(cqe);
            if (ret == 0)
                ret = complete(L, b, cqe->res);
            else
                release(L, b); /* failing: only counting what comes back */
        }
        io_uring_cq_advance(&L->ring, seen);
        if (ret == 0)
            ret = queue_chunks(L);
        report_progress(L, false);
    }
    return ret;
}

/* Waits out reads still queued or in the kernel after a failure, so that no
 * read lands in freed memory. */
static void drain(load_t *L)
{
    while (L->inflight > 0) {
        int ret = io_uring_submit_and_wait(&L->ring, 1);
        if (ret == -EINTR)
            continue;
        if (ret < 0)
            break;
        struct io_uring_cqe *cqe;
        while (L->inflight > 0 && io_uring_peek_cqe(&L->ring, &cqe) == 0) {
            io_uring_cqe_seen(&L->ring, cqe);
            L->inflight--;
        }
    }
}

static void load_free(load_t *L)
{
    hasher_finish(&L->hasher);
    if (L->ring_ready) {
        drain(L);
        io_uring_queue_exit(&L->ring);
    }
    if (L->fd >= 0)
        close(L->fd);
    free(L->buf);
    free(L->chunks);
    free(L->free_bufs);
    free(L->ord);
    free(L->remaining);
}

/* ---- the call ---- */

static size_t count_digests(const ms_load_range_t *ranges, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ranges[i].sha256 != NULL;
    return k;
}

/* Opens the file, checks the ranges against its size, sizes the buffers. */
static int load_prepare(load_t *L, const char *path, const ms_load_params_t *params, ms_err_t *err)
{
    int ret = open_file(path, params->direct, &L->fd, &L->direct, err);
    if (ret < 0)
        return ret;
    struct stat st;
    if (fstat(L->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ms_err_set(err, "%s: not a regular file", path);
        return -EINVAL;
    }
    L->file_size = (uint64_t)st.st_size;
    ret = check_ranges(path, L->ranges, L->n, L->file_size, err);
    if (ret < 0 || L->n == 0)
        return ret;
    L->chunk_bytes = params->chunk_bytes;
    if ((ret = order_ranges(L)) < 0 || (L->nbuf = buffer_count(L, params->queue_depth), ret = setup_buffers(L)) < 0) {
        ms_err_set(err, "%s: out of memory for %zu ranges", path, L->n);
        return ret;
    }
    L->plan = (load_plan_t){ .ranges = L->ranges, .ord = L->ord, .n = L->n, .chunk_bytes = L->chunk_bytes };
    return 0;
}

/* Reads every range, then waits for the digests. */
static int load_run(load_t *L, const char *path, ms_err_t *err)
{
    int ret = setup_ring(L, path, err);
    if (ret < 0)
        return ret;
    size_t n_digests = count_digests(L->ranges, L->n);
    if (n_digests > 0 && (ret = hasher_start(&L->hasher, L->ranges, L->n, n_digests)) < 0) {
        ms_err_set(err, "%s: cannot start the digest thread: %s", path, strerror(-ret));
        return ret;
    }
    ret = run_reads(L);
    if (ret < 0) {
        ms_err_set(err, "%s: io_uring: %s", path, strerror(-ret));
        return ret;
    }
    hasher_finish(&L->hasher);
    report_progress(L, true);
    if (L->hasher.error < 0) {
        ms_err_set(err, "%s: computing SHA-256: %s", path, strerror(-L->hasher.error));
        return L->hasher.error;
    }
    if (L->io_error < 0) {
        ms_err_set(err, "%s: read failed near offset %llu: %s", path, (unsigned long long)L->io_error_off,
                   strerror(-L->io_error));
        return -EIO;
    }
    return 0;
}

int ms_uring_load(const char *path, ms_load_range_t *ranges, size_t n_ranges, const ms_load_params_t *params,
                  ms_load_progress_fn progress, void *progress_ctx, ms_load_stats_t *ret_stats, ms_err_t *err)
{
    if (!path || (!ranges && n_ranges > 0) || !params) {
        ms_err_set(err, "load: no file, ranges or parameters given");
        return -EINVAL;
    }
    int ret = check_params(params, err);
    if (ret < 0)
        return ret;
    uint64_t t0 = now_ns();
    load_t L = { .fd = -1, .ranges = ranges, .n = n_ranges, .progress = progress, .progress_ctx = progress_ctx,
                 .last_progress_ns = t0 };
    ret = load_prepare(&L, path, params, err);
    if (ret == 0 && n_ranges > 0)
        ret = load_run(&L, path, err);
    else if (ret == 0)
        report_progress(&L, true);
    if (ret == 0 && ret_stats)
        *ret_stats = (ms_load_stats_t){
            .bytes = L.bytes_total,
            .bytes_read = L.bytes_read,
            .seconds = (double)(now_ns() - t0) * 1e-9,
            .used_direct = L.direct,
            .mismatches = L.hasher.mismatches,
        };
    load_free(&L);
    return ret;
}
