/* Wire codec: round trips of every message kind, wire dtype conversions
 * against hand-computed bit patterns, and every rejection of the decoder
 * (envelopes crafted with the generated protobuf-c code where the encoders
 * would refuse to produce them). */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "moeshard.pb-c.h"
#include "wire.h"
#include "wire_zmq.h"

static uint8_t hdr[1 << 16];
static ms_wire_msg_t *msg;

static int suite_init(void)
{
    return ms_wire_msg_new(&msg);
}

static int suite_clean(void)
{
    ms_wire_msg_destroy(&msg);
    return msg != NULL;
}

static size_t pack_env(Moeshard__Envelope *env, uint32_t major)
{
    env->version_major = major;
    env->version_minor = 7;
    env->request_id = 99;
    env->epoch = 5;
    size_t n = moeshard__envelope__get_packed_size(env);
    CU_ASSERT_FATAL(n <= sizeof(hdr));
    return moeshard__envelope__pack(env, hdr);
}

static int decode(size_t len, const void *frame, size_t frame_bytes, size_t n_frames, ms_err_t *err)
{
    const void *frames[2] = { frame, frame };
    size_t sizes[2] = { frame_bytes, frame_bytes };
    return ms_wire_decode(msg, hdr, len, frames, sizes, n_frames, err);
}

static void test_dtypes(void)
{
    ms_wire_dtype_t dt;
    CU_ASSERT_EQUAL(ms_wire_dtype_bytes(MS_WIRE_F32), 4);
    CU_ASSERT_EQUAL(ms_wire_dtype_bytes(MS_WIRE_BF16), 2);
    CU_ASSERT_EQUAL(ms_wire_dtype_bytes(MS_WIRE_F16), 2);
    CU_ASSERT_EQUAL(ms_wire_dtype_bytes(MS_WIRE_DTYPE_COUNT), 0);
    CU_ASSERT(ms_wire_dtype_parse("bf16", &dt) == 0 && dt == MS_WIRE_BF16);
    CU_ASSERT_EQUAL(ms_wire_dtype_parse("f64", &dt), -EINVAL);
    CU_ASSERT_STRING_EQUAL(ms_wire_dtype_name(MS_WIRE_F16), "f16");
    size_t b = 0;
    CU_ASSERT(ms_wire_frame_bytes(MS_WIRE_F16, 3, 10, &b) == 0 && b == 60);
    CU_ASSERT_EQUAL(ms_wire_frame_bytes(MS_WIRE_F32, 0, 10, &b), -EINVAL);
    CU_ASSERT_EQUAL(ms_wire_frame_bytes(MS_WIRE_F32, MS_WIRE_TOKENS_MAX + 1, 10, &b), -EINVAL);
    CU_ASSERT_EQUAL(ms_wire_frame_bytes(MS_WIRE_F32, 1, MS_HIDDEN_MAX + 1, &b), -EINVAL);
}

/* Bit patterns worked out by hand from the IEEE formats. */
static void test_conversions(void)
{
    const float src[4] = { 1.0f, -2.0f, 1.0f / 3.0f, 65504.0f };
    uint8_t raw[1 + 4 * 4];
    uint16_t h[4];
    ms_wire_from_f32(MS_WIRE_BF16, src, 4, raw + 1); /* unaligned on purpose */
    memcpy(h, raw + 1, sizeof(h));
    CU_ASSERT_EQUAL(h[0], 0x3f80);
    CU_ASSERT_EQUAL(h[1], 0xc000);
    CU_ASSERT_EQUAL(h[2], 0x3eab);          /* 0x3eaaaaab rounds up */
    CU_ASSERT_EQUAL(h[3], 0x4780);          /* 65504 = 0x477fe000 rounds to 65536 */
    float back[4];
    ms_wire_to_f32(MS_WIRE_BF16, raw + 1, 4, back);
    CU_ASSERT_EQUAL(back[2], 0.333984375f); /* 0x3eab0000 */
    ms_wire_from_f32(MS_WIRE_F16, src, 4, raw + 1);
    memcpy(h, raw + 1, sizeof(h));
    CU_ASSERT_EQUAL(h[0], 0x3c00);
    CU_ASSERT_EQUAL(h[1], 0xc000);
    CU_ASSERT_EQUAL(h[2], 0x3555);          /* 1/3 = 1.0101...b x 2^-2: mantissa 0x155 */
    CU_ASSERT_EQUAL(h[3], 0x7bff);          /* the largest f16 */
    ms_wire_to_f32(MS_WIRE_F16, raw + 1, 4, back);
    CU_ASSERT_EQUAL(back[2], 0.333251953125f);
    ms_wire_from_f32(MS_WIRE_F32, src, 4, raw + 1);
    ms_wire_to_f32(MS_WIRE_F32, raw + 1, 4, back);
    CU_ASSERT(memcmp(back, src, sizeof(src)) == 0);
}

static const int32_t ids6[6] = { 3, -1, 0, 7, 2, -1 };
static const float w6[6] = { 0.5f, 0, 0.25f, 0.75f, 1.0f, 0 };

static ms_wire_batch_t batch3x2(void)
{
    return (ms_wire_batch_t){ .layer = 1, .n_tokens = 3, .hidden = 4, .k = 2, .dtype = MS_WIRE_BF16,
                              .ids = ids6, .weights = w6 };
}

static void test_batch_round_trip(void)
{
    ms_wire_head_t h = { .request_id = 1234567890123ull, .epoch = 42 };
    ms_wire_batch_t b = batch3x2();
    size_t len = 0;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_batch(&h, &b, hdr, sizeof(hdr), &len, &err), 0);
    uint8_t frame[3 * 4 * 2];
    CU_ASSERT_EQUAL_FATAL(decode(len, frame, sizeof(frame), 1, &err), 0);
    CU_ASSERT_EQUAL(msg->kind, MS_WIRE_BATCH);
    CU_ASSERT_EQUAL(msg->version_major, MS_WIRE_VERSION_MAJOR);
    CU_ASSERT_EQUAL(msg->head.request_id, 1234567890123ull);
    CU_ASSERT_EQUAL(msg->head.epoch, 42);
    CU_ASSERT_EQUAL(msg->batch.layer, 1);
    CU_ASSERT_EQUAL(msg->batch.n_tokens, 3);
    CU_ASSERT_EQUAL(msg->batch.hidden, 4);
    CU_ASSERT_EQUAL(msg->batch.k, 2);
    CU_ASSERT_EQUAL(msg->batch.dtype, MS_WIRE_BF16);
    CU_ASSERT(memcmp(msg->batch.ids, ids6, sizeof(ids6)) == 0);
    CU_ASSERT(memcmp(msg->batch.weights, w6, sizeof(w6)) == 0);
    CU_ASSERT_PTR_EQUAL(msg->frame, frame);
    CU_ASSERT_EQUAL(msg->frame_bytes, sizeof(frame));
    /* the frame must match the header: one byte short, one too many, none */
    CU_ASSERT_EQUAL(decode(len, frame, sizeof(frame) - 1, 1, &err), -EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "header says 24"));
    CU_ASSERT_EQUAL(decode(len, frame, sizeof(frame) + 1, 1, &err), -EPROTO);
    CU_ASSERT_EQUAL(decode(len, NULL, 0, 0, &err), -EPROTO);
    CU_ASSERT_EQUAL(decode(len, frame, sizeof(frame), 2, &err), -EMSGSIZE);
    /* a truncated header */
    CU_ASSERT_NOT_EQUAL(decode(len - 3, frame, sizeof(frame), 1, &err), 0);
}

static void test_result_round_trip(void)
{
    ms_wire_head_t h = { .request_id = 7, .epoch = 3 };
    ms_wire_result_t r = { .status = 0, .layer = 2, .n_tokens = 5, .hidden = 8, .dtype = MS_WIRE_F32 };
    size_t len;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_result(&h, &r, hdr, sizeof(hdr), &len, &err), 0);
    float frame[40];
    CU_ASSERT_EQUAL_FATAL(decode(len, frame, sizeof(frame), 1, &err), 0);
    CU_ASSERT_EQUAL(msg->kind, MS_WIRE_RESULT);
    CU_ASSERT(msg->result.status == 0 && msg->result.layer == 2 && msg->result.n_tokens == 5 &&
              msg->result.hidden == 8 && msg->result.dtype == MS_WIRE_F32);
    CU_ASSERT_EQUAL(msg->head.request_id, 7);
    CU_ASSERT_EQUAL(decode(len, frame, sizeof(frame) - 4, 1, &err), -EPROTO);
    /* a failed result carries no frame */
    r.status = EIO;
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_result(&h, &r, hdr, sizeof(hdr), &len, &err), 0);
    CU_ASSERT_EQUAL(decode(len, NULL, 0, 0, &err), 0);
    CU_ASSERT_EQUAL(msg->result.status, EIO);
    CU_ASSERT_EQUAL(decode(len, frame, sizeof(frame), 1, &err), -EPROTO);
    r.status = -1;
    CU_ASSERT_EQUAL(ms_wire_encode_result(&h, &r, hdr, sizeof(hdr), &len, &err), -EINVAL);
}

static void test_control_round_trips(void)
{
    ms_wire_head_t h = { .request_id = 11, .epoch = 0 };
    size_t len;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_error(&h, ENOENT, "(layer 1, expert 5) is not held", hdr, sizeof(hdr),
                                               &len, &err), 0);
    CU_ASSERT_EQUAL_FATAL(decode(len, NULL, 0, 0, &err), 0);
    CU_ASSERT_EQUAL(msg->kind, MS_WIRE_ERROR);
    CU_ASSERT_EQUAL(msg->error.code, ENOENT);
    CU_ASSERT_STRING_EQUAL(msg->error.message, "(layer 1, expert 5) is not held");
    CU_ASSERT_EQUAL(ms_wire_encode_error(&h, 0, "x", hdr, sizeof(hdr), &len, &err), -EINVAL);

    ms_wire_slice_t held[3] = { { 0, 1 }, { 0, 4 }, { 3, 2 } }, failed[1] = { { 3, 7 } };
    ms_wire_hello_t hello = { .host_id = 2, .cores = 16, .memory_bytes = 1ull << 33, .n_layer = 4, .hidden = 64,
                              .n_expert = 8, .n_held = 3, .n_failed = 1, .held = held, .failed = failed };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_hello(&h, &hello, hdr, sizeof(hdr), &len, &err), 0);
    CU_ASSERT_EQUAL_FATAL(decode(len, NULL, 0, 0, &err), 0);
    CU_ASSERT_EQUAL(msg->kind, MS_WIRE_HELLO);
    CU_ASSERT(msg->hello.host_id == 2 && msg->hello.cores == 16 && msg->hello.memory_bytes == 1ull << 33);
    CU_ASSERT(msg->hello.n_layer == 4 && msg->hello.hidden == 64 && msg->hello.n_expert == 8);
    CU_ASSERT_EQUAL_FATAL(msg->hello.n_held, 3);
    CU_ASSERT(memcmp(msg->hello.held, held, sizeof(held)) == 0);
    CU_ASSERT(msg->hello.n_failed == 1 && msg->hello.failed[0].layer == 3 && msg->hello.failed[0].expert == 7);

    ms_wire_stats_t st = { .uptime_ms = 1, .batches = 2, .tokens = 3, .errors = 4, .slices_held = 5,
                           .slices_failed = 6, .memory_bytes = 7, .compute_us = 8 };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_stats(&h, &st, hdr, sizeof(hdr), &len, &err), 0);
    CU_ASSERT_EQUAL_FATAL(decode(len, NULL, 0, 0, &err), 0);
    CU_ASSERT(msg->kind == MS_WIRE_STATS && memcmp(&msg->stats, &st, sizeof(st)) == 0);

    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_heartbeat(&h, hdr, sizeof(hdr), &len, &err), 0);
    CU_ASSERT_EQUAL_FATAL(decode(len, NULL, 0, 0, &err), 0);
    CU_ASSERT_EQUAL(msg->kind, MS_WIRE_HEARTBEAT);
    uint8_t junk[4];
    CU_ASSERT_EQUAL(decode(len, junk, sizeof(junk), 1, &err), -EPROTO); /* control messages carry no frame */

    static ms_wire_load_t load = { .layer = 3, .n_experts = 2, .experts = { 5, 9 }, .source = "host-1.gguf" };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_load(&h, &load, hdr, sizeof(hdr), &len, &err), 0);
    CU_ASSERT_EQUAL_FATAL(decode(len, NULL, 0, 0, &err), 0);
    CU_ASSERT(msg->kind == MS_WIRE_LOAD && msg->load.layer == 3 && msg->load.n_experts == 2 &&
              msg->load.experts[1] == 9 && strcmp(msg->load.source, "host-1.gguf") == 0);
    load.source[0] = '\0';
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_load(&h, &load, hdr, sizeof(hdr), &len, &err), 0);
    CU_ASSERT_EQUAL_FATAL(decode(len, NULL, 0, 0, &err), 0);
    CU_ASSERT(msg->kind == MS_WIRE_UNLOAD && msg->load.n_experts == 2);
}

static void test_reject_sizes(void)
{
    ms_err_t err = { { 0 } };
    uint8_t frame[8];
    CU_ASSERT_EQUAL(decode(0, NULL, 0, 0, &err), -EPROTO);
    CU_ASSERT_EQUAL(ms_wire_decode(msg, hdr, (size_t)MS_WIRE_HEADER_BYTES_MAX + 1, NULL, NULL, 0, &err), -EMSGSIZE);
    /* sizes are checked before any byte is read: a lying size never touches memory */
    CU_ASSERT_EQUAL(decode(4, frame, (size_t)MS_WIRE_FRAME_BYTES_MAX + 1, 1, &err), -EMSGSIZE);
    CU_ASSERT_EQUAL(decode(4, frame, 8, MS_WIRE_FRAMES_MAX + 1, &err), -EMSGSIZE);
    memset(hdr, 0xff, 64); /* not protobuf */
    CU_ASSERT_EQUAL(decode(64, NULL, 0, 0, &err), -EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a valid envelope"));
    /* the encoder refuses a header that does not fit its buffer */
    ms_wire_head_t h = { 0 };
    ms_wire_batch_t b = batch3x2();
    size_t len;
    CU_ASSERT_EQUAL(ms_wire_encode_batch(&h, &b, hdr, 8, &len, &err), -EMSGSIZE);
}

static void test_reject_version(void)
{
    Moeshard__Heartbeat hb = MOESHARD__HEARTBEAT__INIT;
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.kind_case = MOESHARD__ENVELOPE__KIND_HEARTBEAT;
    env.heartbeat = &hb;
    ms_err_t err = { { 0 } };
    size_t len = pack_env(&env, MS_WIRE_VERSION_MAJOR + 1);
    CU_ASSERT_EQUAL(decode(len, NULL, 0, 0, &err), -EPROTONOSUPPORT);
    CU_ASSERT_EQUAL(msg->head.request_id, 99); /* so the refusal can name the request */
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "protocol version 2.7"));
    len = pack_env(&env, 0);
    CU_ASSERT_EQUAL(decode(len, NULL, 0, 0, &err), -EPROTONOSUPPORT);
    len = pack_env(&env, MS_WIRE_VERSION_MAJOR); /* another minor is fine */
    CU_ASSERT_EQUAL(decode(len, NULL, 0, 0, &err), 0);
    Moeshard__Envelope empty = MOESHARD__ENVELOPE__INIT;
    len = pack_env(&empty, MS_WIRE_VERSION_MAJOR);
    CU_ASSERT_EQUAL(decode(len, NULL, 0, 0, &err), -EPROTO);
}

/* A valid 2-token, k 2 batch as protobuf, for the tests to break one field at a time. */
static int32_t pb_ids[4] = { 0, 1, 2, -1 };
static float pb_w[4] = { 0.5f, 0.5f, 1.0f, 0.0f };

static Moeshard__ExpertBatch pb_batch(void)
{
    Moeshard__ExpertBatch b = MOESHARD__EXPERT_BATCH__INIT;
    b.layer = 0;
    b.n_tokens = 2;
    b.hidden = 4;
    b.dtype = MOESHARD__DTYPE__DTYPE_F32;
    b.k = 2;
    b.n_expert_ids = b.n_weights = 4;
    b.expert_ids = pb_ids;
    b.weights = pb_w;
    return b;
}

static int decode_pb(Moeshard__ExpertBatch *b, size_t frame_bytes, ms_err_t *err)
{
    static float frame[MS_WIRE_TOKENS_MAX * 4 + 8];
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.kind_case = MOESHARD__ENVELOPE__KIND_BATCH;
    env.batch = b;
    size_t len = pack_env(&env, MS_WIRE_VERSION_MAJOR);
    return decode(len, frame, frame_bytes, 1, err);
}

static void test_reject_batch_fields(void)
{
    ms_err_t err = { { 0 } };
    Moeshard__ExpertBatch b = pb_batch();
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), 0);
    b.n_expert_ids = 3; /* ids count != n_tokens * k */
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "3 expert ids"));
    b = pb_batch();
    b.n_weights = 2;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    b = pb_batch();
    b.n_tokens = 0;
    CU_ASSERT_EQUAL(decode_pb(&b, 0, &err), -EPROTO);
    b.n_tokens = MS_WIRE_TOKENS_MAX + 1; /* oversize */
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EMSGSIZE);
    b = pb_batch();
    b.hidden = MS_HIDDEN_MAX + 1;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EMSGSIZE);
    b = pb_batch();
    b.k = MS_TOPK_MAX + 1;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EMSGSIZE);
    b = pb_batch();
    b.dtype = MOESHARD__DTYPE__DTYPE_INVALID;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    b.dtype = (Moeshard__Dtype)9;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    b = pb_batch();
    b.dtype = MOESHARD__DTYPE__DTYPE_F16;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO); /* f16 needs 16 bytes */
    CU_ASSERT_EQUAL(decode_pb(&b, 16, &err), 0);
    b = pb_batch();
    b.layer = -1;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    b = pb_batch();
    pb_ids[1] = -2;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    pb_ids[1] = MS_EXPERTS_MAX;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    pb_ids[1] = 1;
    pb_w[0] = NAN;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), -EPROTO);
    pb_w[0] = 0.5f;
    CU_ASSERT_EQUAL(decode_pb(&b, 32, &err), 0);
}

static bool held_odd(void *ctx, int32_t layer, int32_t expert)
{
    (void)ctx;
    (void)layer;
    return expert % 2 == 1;
}

/* rx part i holds a copy of data[i]. */
static void rx_fill(ms_wire_rx_t *rx, const void *const *data, const size_t *sizes, int n)
{
    rx->n_parts = n;
    rx->n_dropped = 0;
    for (int i = 0; i < n; i++) {
        CU_ASSERT_EQUAL_FATAL(zmq_msg_init_size(&rx->part[i], sizes[i]), 0);
        memcpy(zmq_msg_data(&rx->part[i]), data[i], sizes[i]);
    }
}

/* A received multipart message: header after a routing id or first, its
 * frame after it; too many parts, no header part. */
static void test_rx_decode(void)
{
    ms_wire_head_t h = { .request_id = 77, .epoch = 3 };
    ms_wire_batch_t b = batch3x2();
    size_t len = 0;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_batch(&h, &b, hdr, sizeof(hdr), &len, &err), 0);
    uint8_t frame[3 * 4 * 2] = { 1, 2, 3 }, route[5] = { 0, 1, 2, 3, 4 };
    ms_wire_rx_t rx;
    const void *parts[3] = { route, hdr, frame };
    size_t sizes[3] = { sizeof(route), len, sizeof(frame) };
    rx_fill(&rx, parts, sizes, 3);
    CU_ASSERT_EQUAL(ms_wire_rx_decode(&rx, 1, msg, &err), 0);
    CU_ASSERT(msg->kind == MS_WIRE_BATCH && msg->head.request_id == 77 && msg->batch.n_tokens == 3);
    CU_ASSERT_PTR_EQUAL(msg->frame, ms_wire_rx_data(&rx, 2));
    CU_ASSERT(msg->frame_bytes == sizeof(frame) && memcmp(msg->frame, frame, sizeof(frame)) == 0);
    /* the same parts read as a DEALER's: the routing id is taken for the header */
    CU_ASSERT_NOT_EQUAL(ms_wire_rx_decode(&rx, 0, msg, &err), 0);
    ms_wire_rx_close(&rx);
    rx_fill(&rx, parts + 1, sizes + 1, 2);
    CU_ASSERT_EQUAL(ms_wire_rx_decode(&rx, 0, msg, &err), 0);
    CU_ASSERT(msg->kind == MS_WIRE_BATCH && msg->head.epoch == 3);
    rx.n_dropped = 1; /* parts past MS_WIRE_PARTS_MAX were discarded */
    CU_ASSERT_EQUAL(ms_wire_rx_decode(&rx, 0, msg, &err), -EMSGSIZE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "more than a header and its tensor frames"));
    CU_ASSERT_EQUAL(msg->head.request_id, 0); /* no head is taken from a refused message */
    ms_wire_rx_close(&rx);
    rx_fill(&rx, parts, sizes, 1); /* a routing id alone */
    CU_ASSERT_EQUAL(ms_wire_rx_decode(&rx, 1, msg, &err), -EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no header frame"));
    ms_wire_rx_close(&rx);
}

static void test_check_batch(void)
{
    int32_t ids[4] = { 1, 3, -1, 5 };
    float w[4] = { 1, 1, 0, 1 };
    ms_wire_batch_t b = { .layer = 2, .n_tokens = 2, .hidden = 64, .k = 2, .dtype = MS_WIRE_F32, .ids = ids,
                          .weights = w };
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL(ms_wire_check_batch(&b, 4, 64, 8, held_odd, NULL, &err), 0);
    CU_ASSERT_EQUAL(ms_wire_check_batch(&b, 2, 64, 8, held_odd, NULL, &err), -EINVAL); /* layer 2 of 2 */
    CU_ASSERT_EQUAL(ms_wire_check_batch(&b, 4, 128, 8, held_odd, NULL, &err), -EINVAL); /* dims mismatch */
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "hidden size 64"));
    ids[3] = 4; /* unknown expert */
    CU_ASSERT_EQUAL(ms_wire_check_batch(&b, 4, 64, 8, held_odd, NULL, &err), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "(layer 2, expert 4)"));
    ids[3] = 9; /* past the model's experts */
    CU_ASSERT_EQUAL(ms_wire_check_batch(&b, 4, 64, 8, held_odd, NULL, &err), -EINVAL);
}

static void test_encode_refusals(void)
{
    ms_wire_head_t h = { 0 };
    ms_err_t err = { { 0 } };
    size_t len;
    ms_wire_batch_t b = batch3x2();
    b.k = 0;
    CU_ASSERT_EQUAL(ms_wire_encode_batch(&h, &b, hdr, sizeof(hdr), &len, &err), -EINVAL);
    b = batch3x2();
    b.n_tokens = MS_WIRE_TOKENS_MAX + 1;
    CU_ASSERT_EQUAL(ms_wire_encode_batch(&h, &b, hdr, sizeof(hdr), &len, &err), -EINVAL);
    b = batch3x2();
    b.dtype = MS_WIRE_DTYPE_COUNT;
    CU_ASSERT_EQUAL(ms_wire_encode_batch(&h, &b, hdr, sizeof(hdr), &len, &err), -EINVAL);
    int32_t bad_ids[6] = { 3, -1, 0, 600, 2, -1 };
    b = batch3x2();
    b.ids = bad_ids;
    CU_ASSERT_EQUAL(ms_wire_encode_batch(&h, &b, hdr, sizeof(hdr), &len, &err), -EINVAL);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("wire", suite_init, suite_clean);
    if (!s || !CU_add_test(s, "dtypes and frame sizes", test_dtypes) ||
        !CU_add_test(s, "f32 <-> bf16/f16 conversions", test_conversions) ||
        !CU_add_test(s, "ExpertBatch round trip and frame checks", test_batch_round_trip) ||
        !CU_add_test(s, "ExpertResult round trip", test_result_round_trip) ||
        !CU_add_test(s, "Error, Hello, Stats, Heartbeat, Load round trips", test_control_round_trips) ||
        !CU_add_test(s, "size bounds and garbage", test_reject_sizes) ||
        !CU_add_test(s, "version mismatch and empty envelope", test_reject_version) ||
        !CU_add_test(s, "batch field rejections", test_reject_batch_fields) ||
        !CU_add_test(s, "batch against the served model", test_check_batch) ||
        !CU_add_test(s, "decoding a received multipart message", test_rx_decode) ||
        !CU_add_test(s, "encoder refusals", test_encode_refusals))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
