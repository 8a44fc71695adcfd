/* The wire codec (docs/protocol.md): a protobuf-c envelope in the first
 * frame, raw tensor frames after it. Pure functions over byte buffers, so
 * every bound is checked here, before anything else reads a field. */
#ifndef MS_WIRE_H
#define MS_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "limits.h"

typedef enum {
    MS_WIRE_F32,
    MS_WIRE_BF16,
    MS_WIRE_F16,
    MS_WIRE_DTYPE_COUNT
} ms_wire_dtype_t;

typedef enum {
    MS_WIRE_HELLO,
    MS_WIRE_LOAD,
    MS_WIRE_UNLOAD,
    MS_WIRE_BATCH,
    MS_WIRE_RESULT,
    MS_WIRE_HEARTBEAT,
    MS_WIRE_STATS,
    MS_WIRE_ERROR,
    MS_WIRE_KIND_COUNT
} ms_wire_kind_t;

/* What every message carries besides its kind (the version is the encoder's). */
typedef struct {
    uint64_t request_id;
    uint64_t epoch;        /* placement epoch */
} ms_wire_head_t;

/* ids and weights [n_tokens][k]; id -1 = empty slot. One frame of
 * [n_tokens][hidden] dtype activations follows. */
typedef struct {
    int32_t layer;
    int32_t n_tokens;
    int32_t hidden;
    int32_t k;
    ms_wire_dtype_t dtype;
    const int32_t *ids;
    const float *weights;
} ms_wire_batch_t;

/* status 0: one frame of [n_tokens][hidden] dtype partial sums follows;
 * otherwise (a positive errno) no frame. */
typedef struct {
    int32_t status;
    int32_t layer;
    int32_t n_tokens;
    int32_t hidden;
    ms_wire_dtype_t dtype;
} ms_wire_result_t;

typedef struct {
    int32_t layer, expert;
} ms_wire_slice_t;

typedef struct {
    int32_t host_id;       /* -1: a full model */
    uint32_t cores;
    uint64_t memory_bytes; /* bytes of expert slices held */
    int32_t n_layer, hidden, n_expert;
    uint32_t n_held, n_failed;
    const ms_wire_slice_t *held;   /* [n_held] */
    const ms_wire_slice_t *failed; /* [n_failed]: assigned but refused (digest mismatch) */
    char endpoint[MS_WIRE_ENDPOINT_BYTES_MAX + 1]; /* a joining host's own endpoint; "" otherwise */
    uint64_t capacity_bytes;       /* bytes of slices it may hold; 0: not stated */
} ms_wire_hello_t;

/* The Load source that names the host's own model file (the only one expertd reads). */
#define MS_WIRE_SOURCE_LOCAL "local"

/* Load (source set) or Unload (source empty) of experts of one layer. */
typedef struct {
    int32_t layer;
    uint32_t n_experts;
    int32_t experts[MS_EXPERTS_MAX];
    char source[MS_WIRE_SOURCE_BYTES_MAX + 1];
} ms_wire_load_t;

typedef struct {
    uint64_t uptime_ms, batches, tokens, errors;
    uint32_t slices_held, slices_failed;
    uint64_t memory_bytes, compute_us;
} ms_wire_stats_t;

typedef struct {
    int32_t code;          /* positive errno */
    char message[MS_WIRE_ERROR_BYTES_MAX + 1];
} ms_wire_error_t;

/* A decoded message. The arrays the batch and hello point to are owned by
 * the message (sized for the protocol's bounds at ms_wire_msg_new); frame
 * points into the caller's frame buffer. Only the member of kind is valid. */
typedef struct {
    ms_wire_kind_t kind;
    uint32_t version_major, version_minor;
    ms_wire_head_t head;
    ms_wire_batch_t batch;
    ms_wire_result_t result;
    ms_wire_hello_t hello;
    ms_wire_load_t load;
    ms_wire_stats_t stats;
    ms_wire_error_t error;
    const void *frame;     /* BATCH, RESULT with status 0; else NULL */
    size_t frame_bytes;
    struct ms_wire_store *store;
} ms_wire_msg_t;

const char *ms_wire_dtype_name(ms_wire_dtype_t dt);  /* "f32", "bf16", "f16"; "?" */
/* Parses "f32", "bf16", "f16"; -EINVAL otherwise. */
int ms_wire_dtype_parse(const char *s, ms_wire_dtype_t *ret_dt);
size_t ms_wire_dtype_bytes(ms_wire_dtype_t dt);      /* 0 when out of range */
const char *ms_wire_kind_name(ms_wire_kind_t kind);

/* Bytes of a [n_tokens][hidden] frame; -EINVAL when the dtype is unknown or
 * the counts are outside the protocol's bounds. */
int ms_wire_frame_bytes(ms_wire_dtype_t dt, int64_t n_tokens, int64_t hidden, size_t *ret_bytes);

/* Converts n values to / from the wire dtype (round to nearest even).
 * src/dst wire buffers may be unaligned (ZeroMQ frames are). */
void ms_wire_from_f32(ms_wire_dtype_t dt, const float *src, size_t n, void *dst);
void ms_wire_to_f32(ms_wire_dtype_t dt, const void *src, size_t n, float *dst);

/* Storage for decoding one message at a time. -ENOMEM. */
int ms_wire_msg_new(ms_wire_msg_t **ret_msg);
void ms_wire_msg_destroy(ms_wire_msg_t **self_p);

/* Decodes the header frame hdr and the n_frames tensor frames after it.
 * Checks, in order: header size (0 or > MS_WIRE_HEADER_BYTES_MAX), frame
 * count and sizes against their bounds, the envelope, the major version,
 * then every field of the kind against its bound and against the others
 * (ids == weights == n_tokens * k, frame bytes == n_tokens * hidden * dtype).
 * Returns 0, or -EMSGSIZE (a bound), -EPROTO (malformed, a count or a frame
 * that disagrees with the header), -EPROTONOSUPPORT (major version) with
 * err saying which; msg->head is filled whenever the envelope was readable,
 * so a reply can name the request. */
int ms_wire_decode(ms_wire_msg_t *msg, const void *hdr, size_t hdr_len, const void *const *frames,
                   const size_t *frame_bytes, size_t n_frames, ms_err_t *err);

/* Whether this host serves (layer, expert). */
typedef bool (*ms_wire_held_fn)(void *ctx, int32_t layer, int32_t expert);

/* Checks a decoded batch against the model a host serves: layer in
 * [0, n_layer), hidden == the model's, every non-empty id < n_expert and
 * held. -EINVAL (layer, hidden, id range) or -ENOENT (an expert not held)
 * with err naming the (layer, expert). */
int ms_wire_check_batch(const ms_wire_batch_t *b, int32_t n_layer, int32_t hidden, int32_t n_expert,
                        ms_wire_held_fn held, void *held_ctx, ms_err_t *err);

/* Encoders: write the header frame into buf (cap bytes) and its length to
 * *ret_len. The fields are checked against the same bounds as decoding
 * (-EINVAL naming the field); -EMSGSIZE when the header does not fit cap. */
int ms_wire_encode_batch(const ms_wire_head_t *h, const ms_wire_batch_t *b, void *buf, size_t cap, size_t *ret_len,
                         ms_err_t *err);
int ms_wire_encode_result(const ms_wire_head_t *h, const ms_wire_result_t *r, void *buf, size_t cap,
                          size_t *ret_len, ms_err_t *err);
int ms_wire_encode_error(const ms_wire_head_t *h, int32_t code, const char *message, void *buf, size_t cap,
                         size_t *ret_len, ms_err_t *err);
int ms_wire_encode_hello(const ms_wire_head_t *h, const ms_wire_hello_t *hello, void *buf, size_t cap,
                         size_t *ret_len, ms_err_t *err);
int ms_wire_encode_heartbeat(const ms_wire_head_t *h, void *buf, size_t cap, size_t *ret_len, ms_err_t *err);
int ms_wire_encode_stats(const ms_wire_head_t *h, const ms_wire_stats_t *s, void *buf, size_t cap, size_t *ret_len,
                         ms_err_t *err);
/* Load when l->source is non-empty, else Unload. */
int ms_wire_encode_load(const ms_wire_head_t *h, const ms_wire_load_t *l, void *buf, size_t cap, size_t *ret_len,
                        ms_err_t *err);

#endif
