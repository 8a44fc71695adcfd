/* wireprobe: sends one kind of malformed message to a live expertd or
 * coordinator over a ZeroMQ DEALER socket, checks what comes back (an Error
 * reply, or nothing when the kind is dropped by design), then checks that
 * the daemon still answers a valid request. Used by
 * tests/integration/test_hostile.sh; `--seeds DIR` writes valid messages
 * as seeds for fuzz/fuzz_wire.c instead. docs/testing.md. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "client_wire.h"
#include "limits.h"
#include "moeshard.pb-c.h"
#include "wire.h"
#include "wire_zmq.h"

#define PROBE_TIMEOUT_MS_DEFAULT 2000
#define PROBE_RANDOM_CHUNK 100        /* random messages sent between two drains of the replies */
#define PROBE_RANDOM_PART_BYTES 300   /* longest random part */
#define PROBE_ANSWER_MS 10000        /* wait for an answer that must come (Hello, the valid request) */
#define PROBE_DRAIN_MS 20             /* quiet time that ends a drain between chunks */
#define PROBE_DUP_PREDICT 400         /* tokens the first of two same-id Generates asks for */
#define PROBE_MSG_BYTES_MAX (1u << 16) /* a crafted header */

typedef enum { DAEMON_EXPERTD, DAEMON_COORD } probe_daemon_t;
typedef enum { OUT_ERROR, OUT_DROP, OUT_REPLY, OUT_ERROR_OR_DROP } probe_expect_t;

typedef struct {
    const char *endpoint;
    probe_daemon_t daemon;
    const char *kind;
    probe_expect_t expect;
    int code;                 /* expected errno of the Error reply; 0: any */
    long count;               /* random: messages */
    uint64_t seed;
    int timeout_ms;
} probe_opts_t;

/* What the served model looks like (expertd's Hello). */
typedef struct {
    int32_t n_layer, hidden, n_expert;
    int32_t layer, expert;    /* one held slice */
} probe_model_t;

/* One reply, classified. */
typedef struct {
    bool got, is_error;
    int code;
    uint64_t request_id, epoch;
    char text[MS_WIRE_ERROR_BYTES_MAX + 64];
} probe_reply_t;

static void *zctx;
static ms_wire_msg_t *rx_msg;
static uint8_t hdr_buf[PROBE_MSG_BYTES_MAX];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "wireprobe: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ------------------------------------------------------------- sockets */

static void *sock_open(const char *endpoint, int timeout_ms)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof(timeout_ms)) || zmq_connect(s, endpoint))
        die("cannot connect to %s: %s", endpoint, zmq_strerror(zmq_errno()));
    return s;
}

/* Sends parts[0..n) as one message. */
static void send_parts(void *s, const void *const *parts, const size_t *lens, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (zmq_send(s, parts[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            die("send failed: %s", zmq_strerror(zmq_errno()));
}

static void send1(void *s, const void *hdr, size_t len)
{
    send_parts(s, &hdr, &len, 1);
}

/* Receives one message and classifies it; got false on timeout. */
static probe_reply_t recv_reply(void *s, probe_daemon_t d, int timeout_ms)
{
    probe_reply_t r = { 0 };
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof(timeout_ms));
    ms_wire_rx_t rx;
    if (ms_wire_zmq_recv(s, &rx, 0) != 0) {
        ms_wire_rx_close(&rx);
        return r;
    }
    r.got = true;
    ms_err_t err = { { 0 } };
    if (d == DAEMON_COORD) {
        ms_cw_msg_t m;
        int rc = ms_cw_decode(ms_wire_rx_data(&rx, 0), ms_wire_rx_size(&rx, 0), &m, &err);
        r.is_error = rc || m.kind == MS_CW_ERROR;
        r.code = rc ? -1 : m.kind == MS_CW_ERROR ? m.error.code : 0; /* -1: the daemon's reply does not decode */
        r.request_id = m.request_id;
        snprintf(r.text, sizeof(r.text), "%s", rc ? err.msg : m.kind == MS_CW_ERROR ? m.error.message : "");
        ms_cw_msg_clear(&m);
    } else {
        int rc = ms_wire_rx_decode(&rx, 0, rx_msg, &err);
        r.is_error = rc || rx_msg->kind == MS_WIRE_ERROR;
        r.code = rc ? -1 : rx_msg->kind == MS_WIRE_ERROR ? rx_msg->error.code : 0;
        r.request_id = rx_msg->head.request_id;
        r.epoch = rx_msg->head.epoch;
        snprintf(r.text, sizeof(r.text), "%s", rc ? err.msg : rx_msg->kind == MS_WIRE_ERROR ? rx_msg->error.message : "");
    }
    ms_wire_rx_close(&rx);
    return r;
}

/* ------------------------------------------------------------- messages */

static void env_init(Moeshard__Envelope *env, uint64_t id)
{
    moeshard__envelope__init(env);
    env->version_major = MS_WIRE_VERSION_MAJOR;
    env->version_minor = MS_WIRE_VERSION_MINOR;
    env->request_id = id;
    env->epoch = 1;
}

static size_t pack(const Moeshard__Envelope *env)
{
    if (moeshard__envelope__get_packed_size(env) > sizeof(hdr_buf))
        die("a crafted header does not fit %zu bytes", sizeof(hdr_buf));
    return moeshard__envelope__pack(env, hdr_buf);
}

/* A batch of n_tokens tokens, k = 1, every token sent to expert. */
typedef struct {
    Moeshard__Envelope env;
    Moeshard__ExpertBatch b;
    int32_t ids[MS_WIRE_TOKENS_MAX];
    float w[MS_WIRE_TOKENS_MAX];
} probe_batch_t;

static void batch_init(probe_batch_t *pb, uint64_t id, int32_t layer, int32_t expert, uint32_t n_tokens,
                       uint32_t hidden)
{
    env_init(&pb->env, id);
    moeshard__expert_batch__init(&pb->b);
    pb->b.layer = layer;
    pb->b.n_tokens = n_tokens;
    pb->b.hidden = hidden;
    pb->b.dtype = MOESHARD__DTYPE__DTYPE_F32;
    pb->b.k = 1;
    for (uint32_t t = 0; t < n_tokens && t < MS_WIRE_TOKENS_MAX; t++) {
        pb->ids[t] = expert;
        pb->w[t] = 1.0f;
    }
    pb->b.n_expert_ids = pb->b.n_weights = n_tokens;
    pb->b.expert_ids = pb->ids;
    pb->b.weights = pb->w;
    pb->env.kind_case = MOESHARD__ENVELOPE__KIND_BATCH;
    pb->env.batch = &pb->b;
}

/* Sends a batch header with a frame of frame_bytes (0.25 per value). */
static void send_batch(void *s, const probe_batch_t *pb, size_t frame_bytes)
{
    size_t len = pack(&pb->env);
    float *frame = calloc(frame_bytes / sizeof(float) + 1, sizeof(float));
    if (!frame)
        die("out of memory");
    for (size_t i = 0; i < frame_bytes / sizeof(float); i++)
        frame[i] = 0.25f;
    const void *parts[2] = { hdr_buf, frame };
    size_t lens[2] = { len, frame_bytes };
    send_parts(s, parts, lens, 2);
    free(frame);
}

static size_t generate_msg(uint64_t id, const char *prompt, int32_t n_predict, uint32_t major)
{
    Moeshard__Envelope env;
    Moeshard__Generate g;
    env_init(&env, id);
    env.version_major = major;
    moeshard__generate__init(&g);
    g.prompt.data = (uint8_t *)prompt;
    g.prompt.len = strlen(prompt);
    g.n_predict = n_predict;
    g.top_p = 1.0f;
    g.repeat_penalty = 1.0f;
    g.repeat_last_n = 64;
    env.kind_case = MOESHARD__ENVELOPE__KIND_GENERATE;
    env.generate = &g;
    return pack(&env);
}

static size_t simple_msg(uint64_t id, Moeshard__Envelope__KindCase kind)
{
    static Moeshard__StatusQuery q = MOESHARD__STATUS_QUERY__INIT;
    static Moeshard__Hello h = MOESHARD__HELLO__INIT;
    static Moeshard__Cancel c = MOESHARD__CANCEL__INIT;
    static Moeshard__Heartbeat hb = MOESHARD__HEARTBEAT__INIT;
    Moeshard__Envelope env;
    env_init(&env, id);
    env.kind_case = kind;
    switch (kind) {
    case MOESHARD__ENVELOPE__KIND_STATUS_QUERY: env.status_query = &q; break;
    case MOESHARD__ENVELOPE__KIND_HELLO: env.hello = &h; break;
    case MOESHARD__ENVELOPE__KIND_CANCEL: env.cancel = &c; break;
    default: env.kind_case = MOESHARD__ENVELOPE__KIND_HEARTBEAT; env.heartbeat = &hb; break;
    }
    return pack(&env);
}

/* ------------------------------------------------------- model and checks */

static probe_model_t expertd_model(const char *endpoint)
{
    void *s = sock_open(endpoint, PROBE_ANSWER_MS);
    send1(s, hdr_buf, simple_msg(1, MOESHARD__ENVELOPE__KIND_HELLO));
    probe_reply_t r = recv_reply(s, DAEMON_EXPERTD, PROBE_ANSWER_MS);
    if (!r.got || r.is_error || rx_msg->kind != MS_WIRE_HELLO || rx_msg->hello.n_held == 0)
        die("expertd at %s did not answer Hello with the slices it holds", endpoint);
    const ms_wire_hello_t *h = &rx_msg->hello;
    probe_model_t m = { .n_layer = h->n_layer, .hidden = h->hidden, .n_expert = h->n_expert,
                        .layer = h->held[0].layer, .expert = h->held[0].expert };
    zmq_close(s);
    return m;
}

/* A valid request on a fresh socket must get a valid answer. */
static bool answers_valid(const probe_opts_t *o, const probe_model_t *m)
{
    void *s = sock_open(o->endpoint, PROBE_ANSWER_MS);
    bool ok;
    if (o->daemon == DAEMON_COORD) {
        send1(s, hdr_buf, simple_msg(9001, MOESHARD__ENVELOPE__KIND_STATUS_QUERY));
        probe_reply_t r = recv_reply(s, o->daemon, PROBE_ANSWER_MS);
        ok = r.got && !r.is_error && r.request_id == 9001;
    } else {
        static probe_batch_t pb;
        batch_init(&pb, 9001, m->layer, m->expert, 2, (uint32_t)m->hidden);
        send_batch(s, &pb, 2 * (size_t)m->hidden * sizeof(float));
        probe_reply_t r = recv_reply(s, o->daemon, PROBE_ANSWER_MS);
        ok = r.got && !r.is_error && rx_msg->kind == MS_WIRE_RESULT && rx_msg->result.status == 0 &&
             rx_msg->frame_bytes == 2 * (size_t)m->hidden * sizeof(float) && r.request_id == 9001;
    }
    zmq_close(s);
    return ok;
}

/* ------------------------------------------------------------ the kinds */

/* Each sends its message on s and returns what came back (or a dropped reply). */
typedef probe_reply_t (*probe_kind_fn)(void *s, const probe_opts_t *o, const probe_model_t *m);

static probe_reply_t k_truncated_header(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    static probe_batch_t pb;
    size_t len;
    if (o->daemon == DAEMON_COORD) {
        len = generate_msg(11, "hello there, a prompt long enough to cut", 4, MS_WIRE_VERSION_MAJOR);
    } else {
        batch_init(&pb, 11, m->layer, m->expert, 4, (uint32_t)m->hidden);
        len = pack(&pb.env);
    }
    send1(s, hdr_buf, len / 2);
    return recv_reply(s, o->daemon, o->timeout_ms);
}

/* A header past MS_WIRE_HEADER_BYTES_MAX: refused by the codec with EMSGSIZE. */
static probe_reply_t k_oversize_header(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    (void)m;
    size_t n = (size_t)MS_WIRE_HEADER_BYTES_MAX + 1;
    uint8_t *big = calloc(n, 1);
    if (!big)
        die("out of memory");
    send1(s, big, n);
    free(big);
    return recv_reply(s, o->daemon, o->timeout_ms);
}

/* A part past MS_WIRE_FRAME_BYTES_MAX: ZeroMQ (ZMQ_MAXMSGSIZE) drops the
 * connection before the daemon sees anything, so there is no reply. */
static probe_reply_t k_oversize_frame(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    static probe_batch_t pb;
    batch_init(&pb, 12, m ? m->layer : 0, m ? m->expert : 0, 1, 64);
    size_t len = pack(&pb.env);
    size_t n = (size_t)MS_WIRE_FRAME_BYTES_MAX + 1;
    uint8_t *big = calloc(n, 1);
    if (!big)
        die("out of memory");
    const void *parts[2] = { hdr_buf, big };
    size_t lens[2] = { len, n };
    send_parts(s, parts, lens, 2);
    free(big);
    return recv_reply(s, o->daemon, o->timeout_ms);
}

static probe_reply_t k_wrong_version(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    static probe_batch_t pb;
    if (o->daemon == DAEMON_COORD) {
        send1(s, hdr_buf, generate_msg(13, "hi", 4, MS_WIRE_VERSION_MAJOR + 1));
    } else {
        batch_init(&pb, 13, m->layer, m->expert, 1, (uint32_t)m->hidden);
        pb.env.version_major = MS_WIRE_VERSION_MAJOR + 1;
        send_batch(s, &pb, (size_t)m->hidden * sizeof(float));
    }
    return recv_reply(s, o->daemon, o->timeout_ms);
}

/* A batch with one field made wrong by edit (the rest valid). */
static probe_reply_t bad_batch(void *s, const probe_opts_t *o, const probe_model_t *m, uint64_t id,
                               void (*edit)(probe_batch_t *, const probe_model_t *, size_t *))
{
    static probe_batch_t pb;
    probe_model_t mm = m ? *m : (probe_model_t){ .n_layer = 1, .hidden = 64, .n_expert = 1 };
    batch_init(&pb, id, mm.layer, mm.expert, 2, (uint32_t)mm.hidden);
    size_t frame = 2 * (size_t)mm.hidden * sizeof(float);
    edit(&pb, &mm, &frame);
    if (o->daemon == DAEMON_COORD) /* a header alone reaches the coordinator's decoder */
        send1(s, hdr_buf, pack(&pb.env));
    else
        send_batch(s, &pb, frame);
    return recv_reply(s, o->daemon, o->timeout_ms);
}

static void e_dtype(probe_batch_t *pb, const probe_model_t *m, size_t *frame)
{
    (void)m;
    (void)frame;
    pb->b.dtype = (Moeshard__Dtype)7; /* not in the enum (0, DTYPE_INVALID, is refused too) */
}

static void e_dims(probe_batch_t *pb, const probe_model_t *m, size_t *frame)
{
    (void)pb;
    (void)m;
    *frame -= sizeof(float); /* one value short of n_tokens * hidden */
}

static void e_expert(probe_batch_t *pb, const probe_model_t *m, size_t *frame)
{
    (void)frame;
    pb->ids[1] = m->n_expert; /* one past the model's experts */
}

static void e_layer(probe_batch_t *pb, const probe_model_t *m, size_t *frame)
{
    (void)frame;
    pb->b.layer = m->n_layer;
}

static probe_reply_t k_wrong_dtype(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    return bad_batch(s, o, m, 14, e_dtype);
}

static probe_reply_t k_dims_mismatch(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    return bad_batch(s, o, m, 15, e_dims);
}

static probe_reply_t k_unknown_expert(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    return bad_batch(s, o, m, 16, e_expert);
}

static probe_reply_t k_layer_out_of_range(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    return bad_batch(s, o, m, 17, e_layer);
}

/* expertd holds no per-request state: both copies are answered and the
 * requester drops the late one by (request id, epoch). The coordinator
 * refuses a second Generate while the first with that id runs (EEXIST). */
static probe_reply_t k_duplicate_id(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    probe_reply_t r = { 0 };
    if (o->daemon == DAEMON_EXPERTD) {
        static probe_batch_t pb;
        batch_init(&pb, 18, m->layer, m->expert, 1, (uint32_t)m->hidden);
        send_batch(s, &pb, (size_t)m->hidden * sizeof(float));
        send_batch(s, &pb, (size_t)m->hidden * sizeof(float));
        probe_reply_t a = recv_reply(s, o->daemon, o->timeout_ms);
        r = recv_reply(s, o->daemon, o->timeout_ms);
        if (!a.got || a.is_error || a.request_id != 18 || r.request_id != 18) {
            r.is_error = true;
            r.code = -1;
        }
        return r;
    }
    size_t len = generate_msg(18, "The same request id twice", PROBE_DUP_PREDICT, MS_WIRE_VERSION_MAJOR);
    send1(s, hdr_buf, len);
    send1(s, hdr_buf, len);
    probe_reply_t e = { 0 };
    for (int i = 0; i < 2 * PROBE_DUP_PREDICT && !e.is_error; i++) { /* events of the first, then the refusal */
        e = recv_reply(s, o->daemon, o->timeout_ms);
        if (!e.got)
            break;
    }
    send1(s, hdr_buf, simple_msg(18, MOESHARD__ENVELOPE__KIND_CANCEL));
    while (recv_reply(s, o->daemon, 200).got) /* the first one's remaining events and DONE */
        ;
    return e;
}

/* An old placement epoch: expertd answers and echoes it, so the coordinator
 * can recognise and drop the late reply. */
static probe_reply_t k_stale_epoch(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    if (o->daemon == DAEMON_COORD) { /* clients have no epochs: a status query with one set is answered */
        Moeshard__Envelope env;
        Moeshard__StatusQuery q = MOESHARD__STATUS_QUERY__INIT;
        env_init(&env, 19);
        env.epoch = 0;
        env.kind_case = MOESHARD__ENVELOPE__KIND_STATUS_QUERY;
        env.status_query = &q;
        send1(s, hdr_buf, pack(&env));
        return recv_reply(s, o->daemon, o->timeout_ms);
    }
    static probe_batch_t pb;
    batch_init(&pb, 19, m->layer, m->expert, 1, (uint32_t)m->hidden);
    pb.env.epoch = 0;
    send_batch(s, &pb, (size_t)m->hidden * sizeof(float));
    probe_reply_t r = recv_reply(s, o->daemon, o->timeout_ms);
    if (r.got && (r.epoch != 0 || r.request_id != 19)) { /* not echoed */
        r.is_error = true;
        r.code = -1;
    }
    return r;
}

static probe_reply_t k_garbage(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    (void)m;
    uint8_t junk[2][64];
    uint64_t st = 0x9e3779b97f4a7c15ull;
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < 64; i++)
            junk[p][i] = (uint8_t)(rng_next(&st) | 0x80); /* continuation bits only: never a whole protobuf */
    const void *parts[2] = { junk[0], junk[1] };
    size_t lens[2] = { 64, 64 };
    send_parts(s, parts, lens, 2);
    return recv_reply(s, o->daemon, o->timeout_ms);
}

static probe_reply_t k_too_many_parts(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    (void)m;
    size_t len = simple_msg(20, MOESHARD__ENVELOPE__KIND_HEARTBEAT);
    const void *parts[MS_WIRE_PARTS_MAX + 4];
    size_t lens[MS_WIRE_PARTS_MAX + 4];
    for (int i = 0; i < MS_WIRE_PARTS_MAX + 4; i++) {
        parts[i] = hdr_buf;
        lens[i] = len;
    }
    send_parts(s, parts, lens, MS_WIRE_PARTS_MAX + 4);
    return recv_reply(s, o->daemon, o->timeout_ms);
}

static probe_reply_t k_empty(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    (void)m;
    send1(s, "", 0);
    return recv_reply(s, o->daemon, o->timeout_ms);
}

/* count random messages of 1 to 3 parts; every reply must be an Error.
 * Returns the last reply, or a failure naming the first reply that was not. */
static probe_reply_t k_random(void *s, const probe_opts_t *o, const probe_model_t *m)
{
    (void)m;
    uint64_t st = o->seed * 0x9e3779b97f4a7c15ull + 1;
    uint8_t parts_buf[3][PROBE_RANDOM_PART_BYTES];
    long replies = 0;
    probe_reply_t last = { 0 }, bad = { 0 };
    for (long i = 0; i < o->count; i++) {
        size_t np = 1 + rng_next(&st) % 3;
        const void *parts[3];
        size_t lens[3];
        for (size_t p = 0; p < np; p++) {
            lens[p] = rng_next(&st) % (PROBE_RANDOM_PART_BYTES + 1);
            for (size_t k = 0; k < lens[p]; k++)
                parts_buf[p][k] = (uint8_t)rng_next(&st);
            if (p == 0 && lens[p] >= 2 && rng_next(&st) % 4 == 0) { /* version_major 1 first: parse deeper */
                parts_buf[p][0] = 0x08;
                parts_buf[p][1] = 0x01;
            }
            parts[p] = parts_buf[p];
        }
        send_parts(s, parts, lens, np);
        if ((i + 1) % PROBE_RANDOM_CHUNK && i + 1 < o->count)
            continue;
        /* replies of this chunk arrive within milliseconds; the last drain waits longer */
        int wait_ms = i + 1 < o->count ? PROBE_DRAIN_MS : o->timeout_ms;
        for (probe_reply_t r; (r = recv_reply(s, o->daemon, wait_ms)).got; replies++) {
            last = r;
            if (!r.is_error && !bad.got)
                bad = r;
        }
    }
    printf("random: %ld messages, %ld replies\n", o->count, replies);
    if (bad.got) {
        bad.is_error = false;
        return bad;
    }
    if (replies > o->count) {
        last.is_error = false;
        snprintf(last.text, sizeof(last.text), "more replies (%ld) than messages", replies);
    }
    return last;
}

static const struct {
    const char *name;
    probe_kind_fn fn;
} probe_kinds[] = {
    { "truncated-header", k_truncated_header }, { "oversize-header", k_oversize_header },
    { "oversize-frame", k_oversize_frame },     { "wrong-version", k_wrong_version },
    { "wrong-dtype", k_wrong_dtype },           { "dims-mismatch", k_dims_mismatch },
    { "unknown-expert", k_unknown_expert },     { "layer-out-of-range", k_layer_out_of_range },
    { "duplicate-request-id", k_duplicate_id }, { "stale-epoch", k_stale_epoch },
    { "garbage-frames", k_garbage },            { "too-many-parts", k_too_many_parts },
    { "empty-message", k_empty },               { "random", k_random },
};
#define PROBE_N_KINDS (sizeof(probe_kinds) / sizeof(probe_kinds[0]))

/* ---------------------------------------------------------- seeds mode */

static void write_seed(const char *dir, const char *name, uint8_t sel, const void *hdr, size_t len, const void *frame,
                       size_t frame_bytes)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    uint8_t l[4] = { (uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16), (uint8_t)(len >> 24) };
    if (!fp || fwrite(&sel, 1, 1, fp) != 1 || fwrite(l, 1, 4, fp) != 4 || fwrite(hdr, 1, len, fp) != len ||
        (frame_bytes && fwrite(frame, 1, frame_bytes, fp) != frame_bytes) || fclose(fp))
        die("cannot write %s", path);
}

/* Valid messages in fuzz/fuzz_wire.c's input layout. */
static void write_seeds(const char *dir)
{
    static probe_batch_t pb;
    float frame[4 * 64];
    for (int i = 0; i < 4 * 64; i++)
        frame[i] = (float)i / 64.0f;
    static const Moeshard__Dtype dts[3] = { MOESHARD__DTYPE__DTYPE_F32, MOESHARD__DTYPE__DTYPE_BF16,
                                            MOESHARD__DTYPE__DTYPE_F16 };
    static const char *names[3] = { "batch-f32", "batch-bf16", "batch-f16" };
    for (int d = 0; d < 3; d++) {
        batch_init(&pb, 5, 1, 3, 4, 64);
        pb.b.dtype = dts[d];
        pb.ids[2] = -1;
        write_seed(dir, names[d], 2, hdr_buf, pack(&pb.env), frame, 4 * 64 * (d ? 2 : 4));
    }
    write_seed(dir, "hello", 0, hdr_buf, simple_msg(6, MOESHARD__ENVELOPE__KIND_HELLO), NULL, 0);
    write_seed(dir, "heartbeat", 0, hdr_buf, simple_msg(7, MOESHARD__ENVELOPE__KIND_HEARTBEAT), NULL, 0);
    ms_wire_head_t h = { .request_id = 8, .epoch = 2 };
    ms_err_t err = { { 0 } };
    size_t len;
    ms_wire_slice_t held[3] = { { 0, 1 }, { 0, 3 }, { 1, 5 } };
    ms_wire_hello_t hello = { .host_id = 1, .cores = 2, .memory_bytes = 4096, .n_layer = 2, .hidden = 64,
                              .n_expert = 8, .n_held = 3, .held = held };
    ms_wire_stats_t st = { .uptime_ms = 5, .batches = 6, .tokens = 7 };
    ms_wire_result_t res = { .status = 0, .layer = 1, .n_tokens = 4, .hidden = 64, .dtype = MS_WIRE_F32 };
    ms_wire_load_t ld = { .layer = 1, .n_experts = 2, .experts = { 1, 3 }, .source = "/m.gguf" };
    if (ms_wire_encode_hello(&h, &hello, hdr_buf, sizeof(hdr_buf), &len, &err) == 0)
        write_seed(dir, "hello-reply", 0, hdr_buf, len, NULL, 0);
    if (ms_wire_encode_stats(&h, &st, hdr_buf, sizeof(hdr_buf), &len, &err) == 0)
        write_seed(dir, "stats", 0, hdr_buf, len, NULL, 0);
    if (ms_wire_encode_result(&h, &res, hdr_buf, sizeof(hdr_buf), &len, &err) == 0)
        write_seed(dir, "result-f32", 2, hdr_buf, len, frame, sizeof(frame));
    if (ms_wire_encode_error(&h, EPROTO, "a bad request", hdr_buf, sizeof(hdr_buf), &len, &err) == 0)
        write_seed(dir, "error", 0, hdr_buf, len, NULL, 0);
    if (ms_wire_encode_load(&h, &ld, hdr_buf, sizeof(hdr_buf), &len, &err) == 0)
        write_seed(dir, "load", 0, hdr_buf, len, NULL, 0);
    write_seed(dir, "client-generate", 1, hdr_buf, generate_msg(9, "Hello <|im_start|>", 16, 1), NULL, 0);
    write_seed(dir, "client-cancel", 1, hdr_buf, simple_msg(9, MOESHARD__ENVELOPE__KIND_CANCEL), NULL, 0);
    write_seed(dir, "client-status", 1, hdr_buf, simple_msg(9, MOESHARD__ENVELOPE__KIND_STATUS_QUERY), NULL, 0);
    printf("seeds written to %s\n", dir);
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *fp)
{
    fprintf(fp, "usage: wireprobe --endpoint EP --daemon expertd|coordinator --kind KIND\n"
                "                 --expect error|drop|reply|error-or-drop [--code ERRNO]\n"
                "                 [--count N] [--seed N] [--timeout-ms MS]\n"
                "       wireprobe --seeds DIR | --list\n"
                "Sends one kind of malformed message, checks the outcome, then checks that the\n"
                "daemon answers a valid request on a new connection. Exit 0 when both hold.\n");
}

static int errno_of(const char *s)
{
    static const struct { const char *n; int v; } t[] = {
        { "EPROTO", EPROTO }, { "EMSGSIZE", EMSGSIZE }, { "EPROTONOSUPPORT", EPROTONOSUPPORT },
        { "EINVAL", EINVAL }, { "ENOENT", ENOENT }, { "EEXIST", EEXIST }, { "ENOTSUP", ENOTSUP },
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (!strcmp(s, t[i].n))
            return t[i].v;
    die("--code: unknown errno name '%s'", s);
}

static void parse_args(int argc, char **argv, probe_opts_t *o)
{
    static const struct option lo[] = {
        { "endpoint", required_argument, 0, 'e' }, { "daemon", required_argument, 0, 'd' },
        { "kind", required_argument, 0, 'k' },     { "expect", required_argument, 0, 'x' },
        { "code", required_argument, 0, 'c' },     { "count", required_argument, 0, 'n' },
        { "seed", required_argument, 0, 's' },     { "timeout-ms", required_argument, 0, 't' },
        { "seeds", required_argument, 0, 'S' },    { "list", no_argument, 0, 'L' },
        { "help", no_argument, 0, 'h' },           { 0, 0, 0, 0 },
    };
    static const char *expects[] = { "error", "drop", "reply", "error-or-drop" };
    for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        switch (c) {
        case 'e': o->endpoint = optarg; break;
        case 'd': o->daemon = !strcmp(optarg, "coordinator") ? DAEMON_COORD : DAEMON_EXPERTD; break;
        case 'k': o->kind = optarg; break;
        case 'x':
            o->expect = (probe_expect_t)-1;
            for (int i = 0; i < 4; i++)
                if (!strcmp(optarg, expects[i]))
                    o->expect = (probe_expect_t)i;
            if ((int)o->expect < 0)
                die("--expect '%s': error, drop, reply or error-or-drop", optarg);
            break;
        case 'c': o->code = errno_of(optarg); break;
        case 'n': o->count = strtol(optarg, NULL, 10); break;
        case 's': o->seed = strtoull(optarg, NULL, 10); break;
        case 't': o->timeout_ms = (int)strtol(optarg, NULL, 10); break;
        case 'S': write_seeds(optarg); exit(0);
        case 'L':
            for (size_t i = 0; i < PROBE_N_KINDS; i++)
                printf("%s\n", probe_kinds[i].name);
            exit(0);
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (!o->endpoint || !o->kind || o->count < 0 || o->timeout_ms < 1) {
        usage(stderr);
        exit(2);
    }
}

/* Whether what came back is what the kind expects. */
static bool outcome_ok(const probe_opts_t *o, const probe_reply_t *r)
{
    if (r->got && r->code < 0)
        return false; /* a reply that does not decode */
    switch (o->expect) {
    case OUT_ERROR: return r->got && r->is_error && (!o->code || r->code == o->code);
    case OUT_DROP: return !r->got;
    case OUT_REPLY: return r->got && !r->is_error;
    default: return !r->got || (r->is_error && (!o->code || r->code == o->code));
    }
}

int main(int argc, char **argv)
{
    probe_opts_t o = { .timeout_ms = PROBE_TIMEOUT_MS_DEFAULT, .count = 10000, .seed = 1 };
    zctx = zmq_ctx_new();
    if (!zctx || ms_wire_msg_new(&rx_msg))
        die("cannot set up ZeroMQ");
    parse_args(argc, argv, &o);
    probe_kind_fn fn = NULL;
    for (size_t i = 0; i < PROBE_N_KINDS; i++)
        if (!strcmp(o.kind, probe_kinds[i].name))
            fn = probe_kinds[i].fn;
    if (!fn)
        die("unknown kind '%s' (see --list)", o.kind);
    probe_model_t m = { 0 };
    if (o.daemon == DAEMON_EXPERTD)
        m = expertd_model(o.endpoint);
    void *s = sock_open(o.endpoint, o.timeout_ms);
    probe_reply_t r = fn(s, &o, o.daemon == DAEMON_EXPERTD ? &m : NULL);
    zmq_close(s);
    bool ok = outcome_ok(&o, &r);
    printf("%s: %s", o.kind, !r.got ? "no reply (dropped)" : r.is_error ? "error" : "reply");
    if (r.got && r.is_error)
        printf(" %s (%d): %s", r.code > 0 ? strerror(r.code) : "undecodable", r.code, r.text);
    printf("%s\n", ok ? "" : "  <- not what this kind expects");
    bool alive = answers_valid(&o, &m);
    printf("%s: a valid request right after: %s\n", o.kind, alive ? "answered" : "NOT ANSWERED");
    ms_wire_msg_destroy(&rx_msg);
    zmq_ctx_term(zctx);
    return ok && alive ? 0 : 1;
}
