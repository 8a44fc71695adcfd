/* Wire codec: protobuf-c envelope <-> plain structs, with every bound and
 * every cross-field relation checked before a field is handed out. */
#include "wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moeshard.pb-c.h"
#include "types.h"

/* Decoded arrays live here, sized once for the protocol's bounds. */
struct ms_wire_store {
    int32_t ids[MS_WIRE_SLOTS_MAX];
    float weights[MS_WIRE_SLOTS_MAX];
    ms_wire_slice_t held[MS_WIRE_SLICES_MAX];
    ms_wire_slice_t failed[MS_WIRE_SLICES_MAX];
};

static const char *const dtype_names[MS_WIRE_DTYPE_COUNT] = { "f32", "bf16", "f16" };
static const size_t dtype_bytes[MS_WIRE_DTYPE_COUNT] = { 4, 2, 2 };
static const Moeshard__Dtype dtype_pb[MS_WIRE_DTYPE_COUNT] = { MOESHARD__DTYPE__DTYPE_F32,
                                                               MOESHARD__DTYPE__DTYPE_BF16,
                                                               MOESHARD__DTYPE__DTYPE_F16 };
static const char *const kind_names[MS_WIRE_KIND_COUNT] = { "Hello", "Load", "Unload", "ExpertBatch",
                                                            "ExpertResult", "Heartbeat", "Stats", "Error" };

const char *ms_wire_dtype_name(ms_wire_dtype_t dt)
{
    return (unsigned)dt < MS_WIRE_DTYPE_COUNT ? dtype_names[dt] : "?";
}

int ms_wire_dtype_parse(const char *s, ms_wire_dtype_t *ret_dt)
{
    for (int i = 0; i < MS_WIRE_DTYPE_COUNT; i++) {
        if (s && strcmp(s, dtype_names[i]) == 0) {
            *ret_dt = (ms_wire_dtype_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

size_t ms_wire_dtype_bytes(ms_wire_dtype_t dt)
{
    return (unsigned)dt < MS_WIRE_DTYPE_COUNT ? dtype_bytes[dt] : 0;
}

const char *ms_wire_kind_name(ms_wire_kind_t kind)
{
    return (unsigned)kind < MS_WIRE_KIND_COUNT ? kind_names[kind] : "?";
}

int ms_wire_frame_bytes(ms_wire_dtype_t dt, int64_t n_tokens, int64_t hidden, size_t *ret_bytes)
{
    if ((unsigned)dt >= MS_WIRE_DTYPE_COUNT || n_tokens < 1 || n_tokens > MS_WIRE_TOKENS_MAX || hidden < 1 ||
        hidden > MS_HIDDEN_MAX)
        return -EINVAL;
    *ret_bytes = (size_t)n_tokens * (size_t)hidden * dtype_bytes[dt];
    return 0;
}

void ms_wire_from_f32(ms_wire_dtype_t dt, const float *src, size_t n, void *dst)
{
    unsigned char *d = dst;
    if (dt == MS_WIRE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h = dt == MS_WIRE_BF16 ? ms_f32_to_bf16(src[i]) : ms_f32_to_f16(src[i]);
        memcpy(d + 2 * i, &h, 2);
    }
}

void ms_wire_to_f32(ms_wire_dtype_t dt, const void *src, size_t n, float *dst)
{
    const unsigned char *s = src;
    if (dt == MS_WIRE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = dt == MS_WIRE_BF16 ? ms_bf16_to_f32(h) : ms_f16_to_f32(h);
    }
}

int ms_wire_msg_new(ms_wire_msg_t **ret_msg)
{
    ms_wire_msg_t *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->store = calloc(1, sizeof(*m->store));
    if (!m->store) {
        free(m);
        return -ENOMEM;
    }
    *ret_msg = m;
    return 0;
}

void ms_wire_msg_destroy(ms_wire_msg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->store);
    free(*self_p);
    *self_p = NULL;
}

/* ---- decoding ---- */

static int dtype_from_pb(int v, ms_wire_dtype_t *ret)
{
    for (int i = 0; i < MS_WIRE_DTYPE_COUNT; i++) {
        if ((int)dtype_pb[i] == v) {
            *ret = (ms_wire_dtype_t)i;
            return 0;
        }
    }
    return -EPROTO;
}

/* The frames a message of this kind must carry, and their size. */
static int check_frame(size_t n_frames, const size_t *frame_bytes, size_t want_frames, size_t want_bytes,
                       const char *what, ms_err_t *err)
{
    if (n_frames != want_frames) {
        ms_err_set(err, "%s: %zu tensor frames, expected %zu", what, n_frames, want_frames);
        return -EPROTO;
    }
    if (want_frames && frame_bytes[0] != want_bytes) {
        ms_err_set(err, "%s: tensor frame of %zu bytes, header says %zu", what, frame_bytes[0], want_bytes);
        return -EPROTO;
    }
    return 0;
}

static int check_dims(uint32_t n_tokens, uint32_t hidden, int dtype, const char *what, ms_wire_dtype_t *ret_dt,
                      ms_err_t *err)
{
    if (n_tokens < 1 || n_tokens > MS_WIRE_TOKENS_MAX) {
        ms_err_set(err, "%s: n_tokens %u outside [1, %d]", what, n_tokens, MS_WIRE_TOKENS_MAX);
        return n_tokens ? -EMSGSIZE : -EPROTO;
    }
    if (hidden < 1 || hidden > MS_HIDDEN_MAX) {
        ms_err_set(err, "%s: hidden %u outside [1, %d]", what, hidden, MS_HIDDEN_MAX);
        return hidden ? -EMSGSIZE : -EPROTO;
    }
    if (dtype_from_pb(dtype, ret_dt)) {
        ms_err_set(err, "%s: unknown dtype %d", what, dtype);
        return -EPROTO;
    }
    return 0;
}

static int decode_batch(ms_wire_msg_t *msg, const Moeshard__ExpertBatch *b, const size_t *frame_bytes,
                        size_t n_frames, ms_err_t *err)
{
    ms_wire_dtype_t dt;
    int rc = check_dims(b->n_tokens, b->hidden, b->dtype, "ExpertBatch", &dt, err);
    if (rc)
        return rc;
    if (b->layer < 0 || b->layer >= MS_LAYERS_MAX) {
        ms_err_set(err, "ExpertBatch: layer %d outside [0, %d)", b->layer, MS_LAYERS_MAX);
        return -EPROTO;
    }
    if (b->k < 1 || b->k > MS_TOPK_MAX) {
        ms_err_set(err, "ExpertBatch: k %u outside [1, %d]", b->k, MS_TOPK_MAX);
        return b->k ? -EMSGSIZE : -EPROTO;
    }
    size_t slots = (size_t)b->n_tokens * b->k;
    if (b->n_expert_ids != slots || b->n_weights != slots) {
        ms_err_set(err, "ExpertBatch: %zu expert ids and %zu weights, expected n_tokens %u x k %u = %zu",
                   b->n_expert_ids, b->n_weights, b->n_tokens, b->k, slots);
        return -EPROTO;
    }
    for (size_t s = 0; s < slots; s++) {
        if (b->expert_ids[s] < -1 || b->expert_ids[s] >= MS_EXPERTS_MAX || !isfinite(b->weights[s])) {
            ms_err_set(err, "ExpertBatch: slot %zu (token %zu): expert id %d or weight %g invalid", s, s / b->k,
                       b->expert_ids[s], (double)b->weights[s]);
            return -EPROTO;
        }
    }
    size_t want = (size_t)b->n_tokens * b->hidden * dtype_bytes[dt];
    rc = check_frame(n_frames, frame_bytes, 1, want, "ExpertBatch", err);
    if (rc)
        return rc;
    memcpy(msg->store->ids, b->expert_ids, slots * sizeof(int32_t));
    memcpy(msg->store->weights, b->weights, slots * sizeof(float));
    msg->batch = (ms_wire_batch_t){ .layer = b->layer, .n_tokens = (int32_t)b->n_tokens,
                                    .hidden = (int32_t)b->hidden, .k = (int32_t)b->k, .dtype = dt,
                                    .ids = msg->store->ids, .weights = msg->store->weights };
    return 0;
}

static int decode_result(ms_wire_msg_t *msg, const Moeshard__ExpertResult *r, const size_t *frame_bytes,
                         size_t n_frames, ms_err_t *err)
{
    msg->result = (ms_wire_result_t){ .status = r->status, .layer = r->layer };
    if (r->status < 0) {
        ms_err_set(err, "ExpertResult: negative status %d", r->status);
        return -EPROTO;
    }
    if (r->status > 0)
        return check_frame(n_frames, frame_bytes, 0, 0, "ExpertResult (failed)", err);
    ms_wire_dtype_t dt;
    int rc = check_dims(r->n_tokens, r->hidden, r->dtype, "ExpertResult", &dt, err);
    if (rc)
        return rc;
    size_t want = (size_t)r->n_tokens * r->hidden * dtype_bytes[dt];
    rc = check_frame(n_frames, frame_bytes, 1, want, "ExpertResult", err);
    if (rc)
        return rc;
    msg->result.n_tokens = (int32_t)r->n_tokens;
    msg->result.hidden = (int32_t)r->hidden;
    msg->result.dtype = dt;
    return 0;
}

/* Parallel (layer, expert) lists into slices, each in range. */
static int decode_slices(size_t n_l, const int32_t *l, size_t n_e, const int32_t *e, ms_wire_slice_t *out,
                         uint32_t *ret_n, const char *what, ms_err_t *err)
{
    if (n_l != n_e || n_l > MS_WIRE_SLICES_MAX) {
        ms_err_set(err, "Hello: %s lists %zu layers and %zu experts (at most %d pairs)", what, n_l, n_e,
                   MS_WIRE_SLICES_MAX);
        return -EPROTO;
    }
    for (size_t i = 0; i < n_l; i++) {
        if (l[i] < 0 || l[i] >= MS_LAYERS_MAX || e[i] < 0 || e[i] >= MS_EXPERTS_MAX) {
            ms_err_set(err, "Hello: %s slice (%d, %d) out of range", what, l[i], e[i]);
            return -EPROTO;
        }
        out[i] = (ms_wire_slice_t){ l[i], e[i] };
    }
    *ret_n = (uint32_t)n_l;
    return 0;
}

static int decode_hello(ms_wire_msg_t *msg, const Moeshard__Hello *h, ms_err_t *err)
{
    ms_wire_hello_t *o = &msg->hello;
    *o = (ms_wire_hello_t){ .host_id = h->host_id, .cores = h->cores, .memory_bytes = h->memory_bytes,
                            .n_layer = h->n_layer, .hidden = h->hidden, .n_expert = h->n_expert,
                            .held = msg->store->held, .failed = msg->store->failed };
    if (h->host_id < -1 || h->n_layer < 0 || h->n_layer > MS_LAYERS_MAX || h->hidden < 0 ||
        h->hidden > MS_HIDDEN_MAX || h->n_expert < 0 || h->n_expert > MS_EXPERTS_MAX) {
        ms_err_set(err, "Hello: host %d, n_layer %d, hidden %d or n_expert %d out of range", h->host_id,
                   h->n_layer, h->hidden, h->n_expert);
        return -EPROTO;
    }
    size_t elen = h->endpoint ? strlen(h->endpoint) : 0;
    if (elen > MS_WIRE_ENDPOINT_BYTES_MAX) {
        ms_err_set(err, "Hello: endpoint of %zu bytes (at most %d)", elen, MS_WIRE_ENDPOINT_BYTES_MAX);
        return -EPROTO;
    }
    memcpy(o->endpoint, elen ? h->endpoint : "", elen + 1);
    o->capacity_bytes = h->capacity_bytes;
    int rc = decode_slices(h->n_held_layer, h->held_layer, h->n_held_expert, h->held_expert, msg->store->held,
                           &o->n_held, "held", err);
    if (rc)
        return rc;
    return decode_slices(h->n_failed_layer, h->failed_layer, h->n_failed_expert, h->failed_expert,
                         msg->store->failed, &o->n_failed, "failed", err);
}

static int decode_load(ms_wire_msg_t *msg, int32_t layer, size_t n, const int32_t *experts, const char *source,
                       ms_err_t *err)
{
    ms_wire_load_t *o = &msg->load;
    if (layer < 0 || layer >= MS_LAYERS_MAX || n > MS_EXPERTS_MAX) {
        ms_err_set(err, "Load: layer %d or %zu experts out of range", layer, n);
        return -EPROTO;
    }
    size_t slen = source ? strlen(source) : 0;
    if (slen > MS_WIRE_SOURCE_BYTES_MAX) {
        ms_err_set(err, "Load: source name of %zu bytes (at most %d)", slen, MS_WIRE_SOURCE_BYTES_MAX);
        return -EMSGSIZE;
    }
    for (size_t i = 0; i < n; i++) {
        if (experts[i] < 0 || experts[i] >= MS_EXPERTS_MAX) {
            ms_err_set(err, "Load: expert id %d out of range", experts[i]);
            return -EPROTO;
        }
        o->experts[i] = experts[i];
    }
    o->layer = layer;
    o->n_experts = (uint32_t)n;
    memcpy(o->source, source ? source : "", slen + 1);
    return 0;
}

static int decode_error(ms_wire_msg_t *msg, const Moeshard__Error *e, ms_err_t *err)
{
    size_t len = e->message ? strlen(e->message) : 0;
    if (e->code <= 0 || len > MS_WIRE_ERROR_BYTES_MAX) {
        ms_err_set(err, "Error: code %d or message of %zu bytes out of range", e->code, len);
        return -EPROTO;
    }
    msg->error.code = e->code;
    memcpy(msg->error.message, e->message ? e->message : "", len + 1);
    return 0;
}

static void decode_stats(ms_wire_msg_t *msg, const Moeshard__Stats *s)
{
    msg->stats = (ms_wire_stats_t){ .uptime_ms = s->uptime_ms, .batches = s->batches, .tokens = s->tokens,
                                    .errors = s->errors, .slices_held = s->slices_held,
                                    .slices_failed = s->slices_failed, .memory_bytes = s->memory_bytes,
                                    .compute_us = s->compute_us };
}

static const struct {
    Moeshard__Envelope__KindCase pb;
    ms_wire_kind_t kind;
} kind_map[] = {
    { MOESHARD__ENVELOPE__KIND_HELLO, MS_WIRE_HELLO },         { MOESHARD__ENVELOPE__KIND_LOAD, MS_WIRE_LOAD },
    { MOESHARD__ENVELOPE__KIND_UNLOAD, MS_WIRE_UNLOAD },       { MOESHARD__ENVELOPE__KIND_BATCH, MS_WIRE_BATCH },
    { MOESHARD__ENVELOPE__KIND_RESULT, MS_WIRE_RESULT },       { MOESHARD__ENVELOPE__KIND_HEARTBEAT, MS_WIRE_HEARTBEAT },
    { MOESHARD__ENVELOPE__KIND_STATS, MS_WIRE_STATS },         { MOESHARD__ENVELOPE__KIND_ERROR, MS_WIRE_ERROR },
};

static int decode_kind(ms_wire_msg_t *msg, const Moeshard__Envelope *env, const size_t *frame_bytes,
                       size_t n_frames, ms_err_t *err)
{
    int found = 0;
    for (size_t i = 0; i < sizeof(kind_map) / sizeof(kind_map[0]); i++) {
        if (kind_map[i].pb == env->kind_case) {
            msg->kind = kind_map[i].kind;
            found = 1;
        }
    }
    if (!found) {
        ms_err_set(err, "envelope carries no known message kind (%d)", (int)env->kind_case);
        return -EPROTO;
    }
    switch (msg->kind) {
    case MS_WIRE_BATCH:
        return decode_batch(msg, env->batch, frame_bytes, n_frames, err);
    case MS_WIRE_RESULT:
        return decode_result(msg, env->result, frame_bytes, n_frames, err);
    default:
        break;
    }
    int rc = check_frame(n_frames, frame_bytes, 0, 0, kind_names[msg->kind], err);
    if (rc)
        return rc;
    switch (msg->kind) {
    case MS_WIRE_HELLO:
        return decode_hello(msg, env->hello, err);
    case MS_WIRE_LOAD:
        return decode_load(msg, env->load->layer, env->load->n_experts, env->load->experts, env->load->source, err);
    case MS_WIRE_UNLOAD:
        return decode_load(msg, env->unload->layer, env->unload->n_experts, env->unload->experts, "", err);
    case MS_WIRE_ERROR:
        return decode_error(msg, env->error, err);
    case MS_WIRE_STATS:
        decode_stats(msg, env->stats);
        return 0;
    default:
        return 0;
    }
}

static int check_sizes(size_t hdr_len, const size_t *frame_bytes, size_t n_frames, ms_err_t *err)
{
    if (hdr_len == 0) {
        ms_err_set(err, "empty header frame");
        return -EPROTO;
    }
    if (hdr_len > MS_WIRE_HEADER_BYTES_MAX) {
        ms_err_set(err, "header frame of %zu bytes (at most %u)", hdr_len, MS_WIRE_HEADER_BYTES_MAX);
        return -EMSGSIZE;
    }
    if (n_frames > MS_WIRE_FRAMES_MAX) {
        ms_err_set(err, "%zu tensor frames (at most %d)", n_frames, MS_WIRE_FRAMES_MAX);
        return -EMSGSIZE;
    }
    for (size_t i = 0; i < n_frames; i++) {
        if (frame_bytes[i] > MS_WIRE_FRAME_BYTES_MAX) {
            ms_err_set(err, "tensor frame of %zu bytes (at most %llu)", frame_bytes[i],
                       (unsigned long long)MS_WIRE_FRAME_BYTES_MAX);
            return -EMSGSIZE;
        }
    }
    return 0;
}

int ms_wire_decode(ms_wire_msg_t *msg, const void *hdr, size_t hdr_len, const void *const *frames,
                   const size_t *frame_bytes, size_t n_frames, ms_err_t *err)
{
    msg->head = (ms_wire_head_t){ 0 };
    msg->frame = NULL;
    msg->frame_bytes = 0;
    int rc = check_sizes(hdr_len, frame_bytes, n_frames, err);
    if (rc)
        return rc;
    Moeshard__Envelope *env = moeshard__envelope__unpack(NULL, hdr_len, hdr);
    if (!env) {
        ms_err_set(err, "header frame (%zu bytes) is not a valid envelope", hdr_len);
        return -EPROTO;
    }
    msg->head = (ms_wire_head_t){ .request_id = env->request_id, .epoch = env->epoch };
    msg->version_major = env->version_major;
    msg->version_minor = env->version_minor;
    if (env->version_major != MS_WIRE_VERSION_MAJOR) {
        ms_err_set(err, "protocol version %u.%u, this side speaks %d.%d", env->version_major, env->version_minor,
                   MS_WIRE_VERSION_MAJOR, MS_WIRE_VERSION_MINOR);
        rc = -EPROTONOSUPPORT;
    } else {
        rc = decode_kind(msg, env, frame_bytes, n_frames, err);
    }
    moeshard__envelope__free_unpacked(env, NULL);
    if (!rc && n_frames) {
        msg->frame = frames[0];
        msg->frame_bytes = frame_bytes[0];
    }
    return rc;
}

int ms_wire_check_batch(const ms_wire_batch_t *b, int32_t n_layer, int32_t hidden, int32_t n_expert,
                        ms_wire_held_fn held, void *held_ctx, ms_err_t *err)
{
    if (b->layer < 0 || b->layer >= n_layer) {
        ms_err_set(err, "layer %d outside the model's [0, %d)", b->layer, n_layer);
        return -EINVAL;
    }
    if (b->hidden != hidden) {
        ms_err_set(err, "layer %d: hidden size %d, the model's is %d", b->layer, b->hidden, hidden);
        return -EINVAL;
    }
    size_t slots = (size_t)b->n_tokens * (size_t)b->k;
    for (size_t s = 0; s < slots; s++) {
        int32_t e = b->ids[s];
        if (e < 0)
            continue;
        if (e >= n_expert) {
            ms_err_set(err, "(layer %d, expert %d): the model has %d experts", b->layer, e, n_expert);
            return -EINVAL;
        }
        if (!held(held_ctx, b->layer, e)) {
            ms_err_set(err, "(layer %d, expert %d) is not held by this host", b->layer, e);
            return -ENOENT;
        }
    }
    return 0;
}

/* ---- encoding ---- */

static int pack(Moeshard__Envelope *env, const ms_wire_head_t *h, void *buf, size_t cap, size_t *ret_len,
                ms_err_t *err)
{
    env->version_major = MS_WIRE_VERSION_MAJOR;
    env->version_minor = MS_WIRE_VERSION_MINOR;
    env->request_id = h->request_id;
    env->epoch = h->epoch;
    size_t need = moeshard__envelope__get_packed_size(env);
    if (need > cap || need > MS_WIRE_HEADER_BYTES_MAX) {
        ms_err_set(err, "header of %zu bytes does not fit %zu (at most %u)", need, cap, MS_WIRE_HEADER_BYTES_MAX);
        return -EMSGSIZE;
    }
    *ret_len = moeshard__envelope__pack(env, buf);
    return 0;
}

static int check_encode_dims(int32_t n_tokens, int32_t hidden, ms_wire_dtype_t dt, const char *what, ms_err_t *err)
{
    size_t bytes;
    if (ms_wire_frame_bytes(dt, n_tokens, hidden, &bytes)) {
        ms_err_set(err, "%s: n_tokens %d, hidden %d or dtype %d out of range", what, n_tokens, hidden, (int)dt);
        return -EINVAL;
    }
    return 0;
}

int ms_wire_encode_batch(const ms_wire_head_t *h, const ms_wire_batch_t *b, void *buf, size_t cap, size_t *ret_len,
                         ms_err_t *err)
{
    int rc = check_encode_dims(b->n_tokens, b->hidden, b->dtype, "ExpertBatch", err);
    if (rc)
        return rc;
    if (b->layer < 0 || b->layer >= MS_LAYERS_MAX || b->k < 1 || b->k > MS_TOPK_MAX) {
        ms_err_set(err, "ExpertBatch: layer %d or k %d out of range", b->layer, b->k);
        return -EINVAL;
    }
    size_t slots = (size_t)b->n_tokens * (size_t)b->k;
    for (size_t s = 0; s < slots; s++) {
        if (b->ids[s] < -1 || b->ids[s] >= MS_EXPERTS_MAX || !isfinite(b->weights[s])) {
            ms_err_set(err, "ExpertBatch: slot %zu: expert id %d or weight %g invalid", s, b->ids[s],
                       (double)b->weights[s]);
            return -EINVAL;
        }
    }
    Moeshard__ExpertBatch pb = MOESHARD__EXPERT_BATCH__INIT;
    pb.layer = b->layer;
    pb.n_tokens = (uint32_t)b->n_tokens;
    pb.hidden = (uint32_t)b->hidden;
    pb.dtype = dtype_pb[b->dtype];
    pb.k = (uint32_t)b->k;
    pb.n_expert_ids = pb.n_weights = slots;
    pb.expert_ids = (int32_t *)b->ids;  /* packing only reads them */
    pb.weights = (float *)b->weights;
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.kind_case = MOESHARD__ENVELOPE__KIND_BATCH;
    env.batch = &pb;
    return pack(&env, h, buf, cap, ret_len, err);
}

int ms_wire_encode_result(const ms_wire_head_t *h, const ms_wire_result_t *r, void *buf, size_t cap,
                          size_t *ret_len, ms_err_t *err)
{
    Moeshard__ExpertResult pb = MOESHARD__EXPERT_RESULT__INIT;
    if (r->status < 0) {
        ms_err_set(err, "ExpertResult: negative status %d", r->status);
        return -EINVAL;
    }
    if (r->status == 0) {
        int rc = check_encode_dims(r->n_tokens, r->hidden, r->dtype, "ExpertResult", err);
        if (rc)
            return rc;
        pb.n_tokens = (uint32_t)r->n_tokens;
        pb.hidden = (uint32_t)r->hidden;
        pb.dtype = dtype_pb[r->dtype];
    }
    pb.status = r->status;
    pb.layer = r->layer;
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.kind_case = MOESHARD__ENVELOPE__KIND_RESULT;
    env.result = &pb;
    return pack(&env, h, buf, cap, ret_len, err);
}

int ms_wire_encode_error(const ms_wire_head_t *h, int32_t code, const char *message, void *buf, size_t cap,
                         size_t *ret_len, ms_err_t *err)
{
    if (code <= 0) {
        ms_err_set(err, "Error: code %d is not a positive errno", code);
        return -EINVAL;
    }
    char text[MS_WIRE_ERROR_BYTES_MAX + 1];
    /* a long message is cut rather than refused: the reply matters more */
    snprintf(text, sizeof(text), "%s", message ? message : "");
    Moeshard__Error pb = MOESHARD__ERROR__INIT;
    pb.code = code;
    pb.message = text;
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.kind_case = MOESHARD__ENVELOPE__KIND_ERROR;
    env.error = &pb;
    return pack(&env, h, buf, cap, ret_len, err);
}

/* Splits slices into the parallel lists the schema carries. */
static int split_slices(const ms_wire_slice_t *s, uint32_t n, int32_t **ret_l, int32_t **ret_e)
{
    *ret_l = malloc(sizeof(int32_t) * (n ? n : 1));
    *ret_e = malloc(sizeof(int32_t) * (n ? n : 1));
    if (!*ret_l || !*ret_e)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        (*ret_l)[i] = s[i].layer;
        (*ret_e)[i] = s[i].expert;
    }
    return 0;
}

static int check_hello(const ms_wire_hello_t *o, ms_err_t *err)
{
    if (o->n_held > MS_WIRE_SLICES_MAX || o->n_failed > MS_WIRE_SLICES_MAX || o->host_id < -1 ||
        !memchr(o->endpoint, '\0', sizeof(o->endpoint))) {
        ms_err_set(err, "Hello: %u held, %u failed slices or host %d out of range", o->n_held, o->n_failed,
                   o->host_id);
        return -EINVAL;
    }
    return 0;
}

int ms_wire_encode_hello(const ms_wire_head_t *h, const ms_wire_hello_t *o, void *buf, size_t cap,
                         size_t *ret_len, ms_err_t *err)
{
    int rc = check_hello(o, err);
    if (rc)
        return rc;
    Moeshard__Hello pb = MOESHARD__HELLO__INIT;
    pb.host_id = o->host_id;
    pb.cores = o->cores;
    pb.memory_bytes = o->memory_bytes;
    pb.n_layer = o->n_layer;
    pb.hidden = o->hidden;
    pb.n_expert = o->n_expert;
    pb.endpoint = (char *)(o->endpoint[0] ? o->endpoint : "");
    pb.capacity_bytes = o->capacity_bytes;
    pb.n_held_layer = pb.n_held_expert = o->n_held;
    pb.n_failed_layer = pb.n_failed_expert = o->n_failed;
    rc = split_slices(o->held, o->n_held, &pb.held_layer, &pb.held_expert);
    if (!rc)
        rc = split_slices(o->failed, o->n_failed, &pb.failed_layer, &pb.failed_expert);
    if (!rc) {
        Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
        env.kind_case = MOESHARD__ENVELOPE__KIND_HELLO;
        env.hello = &pb;
        rc = pack(&env, h, buf, cap, ret_len, err);
    }
    free(pb.held_layer);
    free(pb.held_expert);
    free(pb.failed_layer);
    free(pb.failed_expert);
    return rc;
}

int ms_wire_encode_heartbeat(const ms_wire_head_t *h, void *buf, size_t cap, size_t *ret_len, ms_err_t *err)
{
    Moeshard__Heartbeat pb = MOESHARD__HEARTBEAT__INIT;
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.kind_case = MOESHARD__ENVELOPE__KIND_HEARTBEAT;
    env.heartbeat = &pb;
    return pack(&env, h, buf, cap, ret_len, err);
}

int ms_wire_encode_stats(const ms_wire_head_t *h, const ms_wire_stats_t *s, void *buf, size_t cap, size_t *ret_len,
                         ms_err_t *err)
{
    Moeshard__Stats pb = MOESHARD__STATS__INIT;
    pb.uptime_ms = s->uptime_ms;
    pb.batches = s->batches;
    pb.tokens = s->tokens;
    pb.errors = s->errors;
    pb.slices_held = s->slices_held;
    pb.slices_failed = s->slices_failed;
    pb.memory_bytes = s->memory_bytes;
    pb.compute_us = s->compute_us;
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.kind_case = MOESHARD__ENVELOPE__KIND_STATS;
    env.stats = &pb;
    return pack(&env, h, buf, cap, ret_len, err);
}

int ms_wire_encode_load(const ms_wire_head_t *h, const ms_wire_load_t *l, void *buf, size_t cap, size_t *ret_len,
                        ms_err_t *err)
{
    size_t slen = strnlen(l->source, sizeof(l->source));
    if (l->layer < 0 || l->layer >= MS_LAYERS_MAX || l->n_experts > MS_EXPERTS_MAX ||
        slen > MS_WIRE_SOURCE_BYTES_MAX) {
        ms_err_set(err, "Load: layer %d, %u experts or source name out of range", l->layer, l->n_experts);
        return -EINVAL;
    }
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    Moeshard__Load load = MOESHARD__LOAD__INIT;
    Moeshard__Unload unload = MOESHARD__UNLOAD__INIT;
    if (slen) {
        load.layer = l->layer;
        load.n_experts = l->n_experts;
        load.experts = (int32_t *)l->experts;
        load.source = (char *)l->source;
        env.kind_case = MOESHARD__ENVELOPE__KIND_LOAD;
        env.load = &load;
    } else {
        unload.layer = l->layer;
        unload.n_experts = l->n_experts;
        unload.experts = (int32_t *)l->experts;
        env.kind_case = MOESHARD__ENVELOPE__KIND_UNLOAD;
        env.unload = &unload;
    }
    return pack(&env, h, buf, cap, ret_len, err);
}
