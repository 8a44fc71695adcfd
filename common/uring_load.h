/* Loading byte ranges of a model file into memory with io_uring: O_DIRECT
 * reads of aligned chunks, many in flight, into registered buffers, each
 * range checked against its SHA-256 while it streams. Buffered reads where
 * the file system refuses O_DIRECT (tmpfs). */
#ifndef MS_URING_LOAD_H
#define MS_URING_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define MS_SHA256_BYTES 32

/* One contiguous range of the file and where its bytes go. */
typedef struct {
    uint64_t file_offset;   /* any alignment */
    uint64_t nbytes;        /* > 0 */
    void *dst;              /* caller's memory, nbytes long, any alignment */
    const uint8_t *sha256;  /* expected digest of the bytes (MS_SHA256_BYTES), or NULL: not checked */
    int status;             /* out: 0 loaded (and matched), -EBADMSG digest mismatch, -EIO read failed */
} ms_load_range_t;

typedef struct {
    uint32_t queue_depth;   /* reads in flight, [1, 256]; default 32 (32 MiB in flight: measured as fast as 64 x 2 MiB) */
    uint32_t chunk_bytes;   /* bytes per read, a multiple of 4096 in [64 KiB, 16 MiB]; default 1 MiB */
    bool direct;            /* try O_DIRECT (default true); falls back to buffered when refused */
} ms_load_params_t;

typedef struct {
    uint64_t bytes;         /* bytes delivered to dst (sum of nbytes of the ranges) */
    uint64_t bytes_read;    /* bytes read from the file (aligned chunks may read a little more) */
    double seconds;
    bool used_direct;       /* false when O_DIRECT was refused and reads were buffered */
    uint32_t mismatches;    /* ranges whose digest did not match */
} ms_load_stats_t;

/* Called from the loading thread at most every ~100 ms and once at the end. */
typedef void (*ms_load_progress_fn)(void *ctx, uint64_t bytes_done, uint64_t bytes_total);

ms_load_params_t ms_load_defaults(void);

/* Loads every range of path. Ranges may be in any order and may not overlap
 * in dst; they are read in file order. Returns 0 when every range was read
 * (a digest mismatch is reported in that range's status and in
 * stats->mismatches, not as a failure of the call); -ENOENT/-EACCES/-EIO/-EINVAL
 * (a range past the end of the file, bad params)/-ENOMEM/-errno from io_uring
 * setup, with err naming the file. */
int ms_uring_load(const char *path, ms_load_range_t *ranges, size_t n_ranges, const ms_load_params_t *params,
                  ms_load_progress_fn progress, void *progress_ctx, ms_load_stats_t *ret_stats, ms_err_t *err);

/* SHA-256 of a buffer (OpenSSL EVP). */
int ms_sha256(const void *data, size_t len, uint8_t out[MS_SHA256_BYTES]);
/* Lower-case hex (64 chars + NUL) <-> bytes; parse returns -EINVAL on bad text. */
void ms_sha256_hex(const uint8_t digest[MS_SHA256_BYTES], char out[2 * MS_SHA256_BYTES + 1]);
int ms_sha256_parse(const char *hex, size_t len, uint8_t out[MS_SHA256_BYTES]);

#endif
