/* The network expert backend (coordinator/backend_net.c) against scripted
 * hosts: ROUTER sockets on 127.0.0.1 served by threads of this test, whose
 * "expert" e computes FFN_e(x) = (e + 1) x, so every expected output is a
 * hand formula. Grouping by host, replicas, Error replies, deadlines, stale
 * replies, Hello checks; then dense loading of a packed model (common/model.c). */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "backend.h"
#include "limits.h"
#include "model.h"
#include "pool.h"
#include "wire.h"
#include "wire_zmq.h"

/* the model the backend is told about: only its hyperparameters are read */
enum { NL = 2, D = 8, NE = 6, K = 2, NT = 4 };

typedef enum { FAKE_REPLY, FAKE_ERROR, FAKE_SILENT, FAKE_LATE, FAKE_STALE_FIRST } fake_mode_t;

typedef struct {
    void *ctx, *sock;
    char ep[64];
    int n_layer, hidden, n_expert;
    bool held[NL][NE];
    volatile fake_mode_t mode;
    pthread_t th;
    volatile int stop;
    pthread_mutex_t mu;
    /* the last batch received */
    int batches, last_layer, last_n_tok, last_k;
    int32_t last_ids[MS_BATCH_TOKENS_MAX * K];
    float last_x[MS_BATCH_TOKENS_MAX * D];
    ms_wire_msg_t *msg;
    uint8_t hdr[1 << 16];
    /* this host's working buffers (each fake runs in its own thread) */
    float x[MS_BATCH_TOKENS_MAX * D], out[MS_BATCH_TOKENS_MAX * D];
    uint8_t frame[MS_BATCH_TOKENS_MAX * D * 4], junk[MS_BATCH_TOKENS_MAX * D * 4];
} fake_t;

static void fake_send(fake_t *f, ms_wire_rx_t *rx, size_t len, const void *frame, size_t frame_bytes)
{
    ms_wire_zmq_send(f->sock, ms_wire_rx_data(rx, 0), ms_wire_rx_size(rx, 0), f->hdr, len, frame, frame_bytes);
}

static void fake_hello(fake_t *f, ms_wire_rx_t *rx)
{
    ms_wire_slice_t held[NL * NE];
    uint32_t n = 0;
    for (int l = 0; l < NL; l++)
        for (int e = 0; e < NE; e++)
            if (f->held[l][e])
                held[n++] = (ms_wire_slice_t){ l, e };
    ms_wire_hello_t h = { .host_id = 0, .memory_bytes = 1000 * n, .n_layer = f->n_layer, .hidden = f->hidden,
                          .n_expert = f->n_expert, .n_held = n, .held = held };
    size_t len;
    if (ms_wire_encode_hello(&f->msg->head, &h, f->hdr, sizeof(f->hdr), &len, NULL) == 0)
        fake_send(f, rx, len, NULL, 0);
}

static void fake_stats(fake_t *f, ms_wire_rx_t *rx)
{
    ms_wire_stats_t st = { .batches = (uint64_t)f->batches };
    size_t len;
    if (ms_wire_encode_stats(&f->msg->head, &st, f->hdr, sizeof(f->hdr), &len, NULL) == 0)
        fake_send(f, rx, len, NULL, 0);
}

/* out[r] = sum_j w_j (e_j + 1) x[r] over the non-empty slots. */
static void fake_compute(const ms_wire_batch_t *b, const float *x, float *out)
{
    for (int r = 0; r < b->n_tokens; r++) {
        float s = 0;
        for (int j = 0; j < b->k; j++) {
            int32_t e = b->ids[r * b->k + j];
            if (e >= 0)
                s += b->weights[r * b->k + j] * (float)(e + 1);
        }
        for (int i = 0; i < b->hidden; i++)
            out[r * b->hidden + i] = s * x[r * b->hidden + i];
    }
}

static void fake_batch(fake_t *f, ms_wire_rx_t *rx)
{
    const ms_wire_batch_t *b = &f->msg->batch;
    float *x = f->x, *out = f->out;
    uint8_t *frame = f->frame;
    size_t n = (size_t)b->n_tokens * (size_t)b->hidden;
    fake_mode_t mode = f->mode; /* once: the test may change it while this batch sleeps */
    if (b->hidden != D)
        return;
    ms_wire_to_f32(b->dtype, f->msg->frame, n, x);
    pthread_mutex_lock(&f->mu);
    f->batches++;
    f->last_layer = b->layer;
    f->last_n_tok = b->n_tokens;
    f->last_k = b->k;
    memcpy(f->last_ids, b->ids, (size_t)b->n_tokens * (size_t)b->k * sizeof(int32_t));
    memcpy(f->last_x, x, n * sizeof(float));
    pthread_mutex_unlock(&f->mu);
    size_t len;
    if (mode == FAKE_ERROR) {
        if (ms_wire_encode_error(&f->msg->head, ENOENT, "layer 1 expert 3 is not held here", f->hdr, sizeof(f->hdr),
                                 &len, NULL) == 0)
            fake_send(f, rx, len, NULL, 0);
        return;
    }
    if (mode == FAKE_SILENT)
        return;
    if (mode == FAKE_LATE)
        usleep(400 * 1000);
    fake_compute(b, x, out);
    ms_wire_from_f32(b->dtype, out, n, frame);
    ms_wire_result_t r = { .status = 0, .layer = b->layer, .n_tokens = b->n_tokens, .hidden = b->hidden,
                           .dtype = b->dtype };
    ms_wire_head_t head = f->msg->head;
    if (mode == FAKE_STALE_FIRST) { /* a reply to some other request first: must be dropped */
        ms_wire_head_t stale = { .request_id = head.request_id + 1000, .epoch = head.epoch };
        for (size_t i = 0; i < n; i++)
            out[i] = 1e6f;
        ms_wire_from_f32(b->dtype, out, n, f->junk);
        if (ms_wire_encode_result(&stale, &r, f->hdr, sizeof(f->hdr), &len, NULL) == 0)
            fake_send(f, rx, len, f->junk, n * ms_wire_dtype_bytes(b->dtype));
    }
    if (ms_wire_encode_result(&head, &r, f->hdr, sizeof(f->hdr), &len, NULL) == 0)
        fake_send(f, rx, len, frame, n * ms_wire_dtype_bytes(b->dtype));
}

static void *fake_loop(void *arg)
{
    fake_t *f = arg;
    while (!f->stop) {
        zmq_pollitem_t it = { f->sock, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, 20) != 1)
            continue;
        ms_wire_rx_t rx;
        if (ms_wire_zmq_recv(f->sock, &rx, 0) == 0 && rx.n_parts >= 2) {
            const void *frames[MS_WIRE_PARTS_MAX];
            size_t sizes[MS_WIRE_PARTS_MAX];
            for (int i = 2; i < rx.n_parts; i++) {
                frames[i - 2] = ms_wire_rx_data(&rx, i);
                sizes[i - 2] = ms_wire_rx_size(&rx, i);
            }
            if (ms_wire_decode(f->msg, ms_wire_rx_data(&rx, 1), ms_wire_rx_size(&rx, 1), frames, sizes,
                               (size_t)rx.n_parts - 2, NULL) == 0) {
                if (f->msg->kind == MS_WIRE_HELLO)
                    fake_hello(f, &rx);
                else if (f->msg->kind == MS_WIRE_HEARTBEAT && f->mode != FAKE_SILENT)
                    fake_stats(f, &rx);
                else if (f->msg->kind == MS_WIRE_BATCH)
                    fake_batch(f, &rx);
            }
        }
        ms_wire_rx_close(&rx);
    }
    return NULL;
}

/* A host holding experts [e_lo, e_hi] of every layer. */
static fake_t *fake_start(int e_lo, int e_hi)
{
    fake_t *f = calloc(1, sizeof(*f));
    CU_ASSERT_FATAL(f != NULL);
    f->n_layer = NL;
    f->hidden = D;
    f->n_expert = NE;
    for (int l = 0; l < NL; l++)
        for (int e = e_lo; e <= e_hi; e++)
            f->held[l][e] = true;
    pthread_mutex_init(&f->mu, NULL);
    CU_ASSERT_FATAL(ms_wire_msg_new(&f->msg) == 0);
    f->ctx = zmq_ctx_new();
    f->sock = zmq_socket(f->ctx, ZMQ_ROUTER);
    CU_ASSERT_FATAL(f->sock && ms_wire_zmq_limits(f->sock) == 0);
    CU_ASSERT_FATAL(zmq_bind(f->sock, "tcp://127.0.0.1:*") == 0);
    size_t len = sizeof(f->ep);
    CU_ASSERT_FATAL(zmq_getsockopt(f->sock, ZMQ_LAST_ENDPOINT, f->ep, &len) == 0);
    CU_ASSERT_FATAL(pthread_create(&f->th, NULL, fake_loop, f) == 0);
    return f;
}

static void fake_stop(fake_t **fp)
{
    fake_t *f = *fp;
    if (!f)
        return;
    f->stop = 1;
    pthread_join(f->th, NULL);
    zmq_close(f->sock);
    zmq_ctx_term(f->ctx);
    ms_wire_msg_destroy(&f->msg);
    pthread_mutex_destroy(&f->mu);
    free(f);
    *fp = NULL;
}

static ms_model_t model_of_shape(void)
{
    ms_model_t m = { 0 };
    m.hp.n_layer = NL;
    m.hp.n_embd = D;
    m.hp.n_expert = NE;
    m.hp.n_expert_used = K;
    return m;
}

static ms_backend_net_params_t params(ms_wire_dtype_t wire, int deadline_ms)
{
    ms_backend_net_params_t p = ms_backend_net_defaults();
    p.wire = wire;
    p.deadline_ms = deadline_ms;
    p.max_tokens = 16;
    return p;
}

/* x values and weights exact in bf16, and so are the per-host sums */
static void make_step(float *x, int32_t *ids, float *w)
{
    static const int32_t ids0[NT * K] = { 0, 1, 3, 4, 2, 5, 0, -1 };
    memcpy(ids, ids0, sizeof(ids0));
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < D; i++)
            x[t * D + i] = (float)((t * D + i) % 9 - 4) * 0.25f;
    for (int s = 0; s < NT * K; s++)
        w[s] = s % 2 ? 0.25f : 0.5f;
}

static double expected(const float *x, const int32_t *ids, const float *w, int t, int i)
{
    double s = 0;
    for (int j = 0; j < K; j++)
        if (ids[t * K + j] >= 0)
            s += (double)w[t * K + j] * (ids[t * K + j] + 1);
    return s * x[t * D + i];
}

static void check_out(const float *out, const float *x, const int32_t *ids, const float *w)
{
    double worst = 0;
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < D; i++)
            worst = fmax(worst, fabs(out[t * D + i] - expected(x, ids, w, t, i)));
    CU_ASSERT(worst == 0);
    if (worst != 0)
        fprintf(stderr, "\n  worst %g: out[0..3] %g %g %g %g\n", worst, out[0], out[1], out[2], out[3]);
}

/* Host A holds 0-2, B holds 0 and 3-5: expert 0 goes to A (first in order). */
static void test_grouping(ms_wire_dtype_t wire)
{
    fake_t *a = fake_start(0, 2), *b = fake_start(3, 5);
    b->held[0][0] = b->held[1][0] = true;
    ms_model_t m = model_of_shape();
    const char *eps[2] = { a->ep, b->ep };
    ms_backend_net_params_t p = params(wire, 5000);
    ms_expert_backend_t *be = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_backend_net_new(&m, eps, 2, &p, &be, &err) == 0);
    float x[NT * D], w[NT * K], out[NT * D];
    int32_t ids[NT * K];
    make_step(x, ids, w);
    CU_ASSERT_FATAL(be->submit(be, 1, x, NT, ids, w, K) == 0);
    CU_ASSERT_FATAL(be->wait(be, out, &err) == 0);
    check_out(out, x, ids, w);
    /* A: tokens 0, 2, 3; B: tokens 1, 2; each activation once, foreign slots -1 */
    static const int32_t a_ids[] = { 0, 1, 2, -1, 0, -1 }, b_ids[] = { 3, 4, -1, 5 };
    CU_ASSERT(a->batches == 1 && a->last_layer == 1 && a->last_n_tok == 3 && a->last_k == K);
    CU_ASSERT(b->batches == 1 && b->last_n_tok == 2);
    CU_ASSERT(memcmp(a->last_ids, a_ids, sizeof(a_ids)) == 0);
    CU_ASSERT(memcmp(b->last_ids, b_ids, sizeof(b_ids)) == 0);
    CU_ASSERT(memcmp(a->last_x, x, D * sizeof(float)) == 0 && memcmp(a->last_x + D, x + 2 * D, D * sizeof(float)) == 0 &&
              memcmp(a->last_x + 2 * D, x + 3 * D, D * sizeof(float)) == 0);
    CU_ASSERT(memcmp(b->last_x, x + D, D * sizeof(float)) == 0 && memcmp(b->last_x + D, x + 2 * D, D * sizeof(float)) == 0);
    ms_backend_net_stats_t st;
    CU_ASSERT_FATAL(ms_backend_net_stats(be, &st) == 0);
    size_t frames = 5 * D * ms_wire_dtype_bytes(wire); /* 5 rows out, 5 rows back */
    CU_ASSERT(st.dispatches == 1 && st.messages_sent == 2 && st.stale_dropped == 0);
    CU_ASSERT(st.last_bytes_sent > frames && st.last_bytes_sent < frames + 400);
    CU_ASSERT(st.last_bytes_received > frames && st.last_bytes_received < frames + 200);
    /* slice bytes from Hello: 1000 each, over 2 layers x top-2 */
    CU_ASSERT_EQUAL(st.expert_bytes_per_token, 1000 * NL * K);
    /* a second dispatch reuses every buffer */
    CU_ASSERT_FATAL(be->submit(be, 0, x, NT, ids, w, K) == 0);
    CU_ASSERT_FATAL(be->wait(be, out, &err) == 0);
    check_out(out, x, ids, w);
    CU_ASSERT(a->batches == 2 && a->last_layer == 0);
    ms_backend_destroy(&be);
    CU_ASSERT_PTR_NULL(be);
    fake_stop(&a);
    fake_stop(&b);
}

static void test_grouping_f32(void) { test_grouping(MS_WIRE_F32); }
static void test_grouping_bf16(void) { test_grouping(MS_WIRE_BF16); }

/* A token whose every expert lives on one host sends nothing to the other.
 * The step's pool polls again after the wait as it did before it. */
static void test_untouched_host(void)
{
    fake_t *a = fake_start(0, 2), *b = fake_start(3, 5);
    ms_model_t m = model_of_shape();
    const char *eps[2] = { a->ep, b->ep };
    ms_backend_net_params_t p = params(MS_WIRE_F32, 5000);
    CU_ASSERT_EQUAL_FATAL(ms_pool_new(2, &p.pool), 0);
    ms_pool_set_spin(p.pool, 77);
    ms_expert_backend_t *be = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_backend_net_new(&m, eps, 2, &p, &be, &err) == 0);
    float x[D], out[D], w[K] = { 0.5f, 0.25f };
    int32_t ids[K] = { 1, 2 };
    for (int i = 0; i < D; i++)
        x[i] = (float)i;
    CU_ASSERT_FATAL(be->submit(be, 0, x, 1, ids, w, K) == 0);
    CU_ASSERT_FATAL(be->wait(be, out, &err) == 0);
    for (int i = 0; i < D; i++)
        CU_ASSERT_EQUAL(out[i], (0.5f * 2 + 0.25f * 3) * (float)i);
    CU_ASSERT(a->batches == 1 && b->batches == 0);
    CU_ASSERT_EQUAL(ms_pool_set_spin(p.pool, 0), 77);
    ms_backend_destroy(&be);
    ms_pool_destroy(&p.pool);
    fake_stop(&a);
    fake_stop(&b);
}

static void test_refusals(void)
{
    fake_t *a = fake_start(0, 5);
    ms_model_t m = model_of_shape();
    const char *eps[1] = { a->ep };
    ms_backend_net_params_t p = params(MS_WIRE_F32, 5000);
    ms_expert_backend_t *be = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_backend_net_new(&m, eps, 1, &p, &be, &err) == 0);
    float x[20 * D] = { 0 }, w[20 * K] = { 0 }, out[20 * D];
    int32_t ids[20 * K] = { 0 };
    CU_ASSERT_EQUAL(be->wait(be, out, &err), -EINVAL); /* nothing submitted */
    CU_ASSERT_EQUAL(be->submit(be, NL, x, 1, ids, w, K), -EINVAL);
    CU_ASSERT_EQUAL(be->submit(be, -1, x, 1, ids, w, K), -EINVAL);
    CU_ASSERT_EQUAL(be->submit(be, 0, x, 0, ids, w, K), -EINVAL);
    CU_ASSERT_EQUAL(be->submit(be, 0, x, 17, ids, w, K), -EINVAL); /* over max_tokens */
    CU_ASSERT_EQUAL(be->submit(be, 0, x, 1, ids, w, K + 1), -EINVAL);
    ids[1] = NE;
    CU_ASSERT_EQUAL(be->submit(be, 0, x, 1, ids, w, K), -EINVAL);
    ids[1] = -2;
    CU_ASSERT_EQUAL(be->submit(be, 0, x, 1, ids, w, K), -EINVAL);
    ids[1] = 1;
    w[0] = NAN;
    CU_ASSERT_EQUAL(be->submit(be, 0, x, 1, ids, w, K), -EINVAL);
    CU_ASSERT_EQUAL(a->batches, 0);
    ms_backend_destroy(&be);
    fake_stop(&a);
    ms_expert_backend_t other = { .name = "other" };
    ms_backend_net_stats_t st;
    CU_ASSERT_EQUAL(ms_backend_net_stats(&other, &st), -EINVAL);
}

static void expect_new_fails(const char *const *eps, int n, const ms_backend_net_params_t *p, int want_rc,
                             const char *needle)
{
    ms_model_t m = model_of_shape();
    ms_expert_backend_t *be = NULL;
    ms_err_t err = { { 0 } };
    int rc = ms_backend_net_new(&m, eps, n, p, &be, &err);
    CU_ASSERT_EQUAL(rc, want_rc);
    CU_ASSERT_PTR_NULL(be);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, needle));
    if (!strstr(err.msg, needle))
        fprintf(stderr, "\n  expected '%s' in: %s\n", needle, err.msg);
}

static void test_bad_params(void)
{
    const char *eps[2] = { "tcp://127.0.0.1:1", "" };
    ms_backend_net_params_t p = params(MS_WIRE_F32, 100);
    expect_new_fails(eps, 0, &p, -EINVAL, "0 hosts");
    expect_new_fails(eps, MS_HOSTS_MAX + 1, &p, -EINVAL, "hosts");
    expect_new_fails(eps, 2, &p, -EINVAL, "host 1 has an empty endpoint");
    p.deadline_ms = 0;
    expect_new_fails(eps, 1, &p, -EINVAL, "deadline 0 ms");
    p = params(MS_WIRE_DTYPE_COUNT, 100);
    expect_new_fails(eps, 1, &p, -EINVAL, "wire dtype");
    p = params(MS_WIRE_F32, 100);
    p.max_tokens = MS_BATCH_TOKENS_MAX + 1;
    expect_new_fails(eps, 1, &p, -EINVAL, "tokens per step");
    const char *bogus[1] = { "bogus:endpoint" };
    p = params(MS_WIRE_F32, 100);
    expect_new_fails(bogus, 1, &p, -EINVAL, "host 'bogus:endpoint'");
}

static void test_hello_failures(void)
{
    /* nothing listens on the second endpoint: named, within the deadline */
    fake_t *a = fake_start(0, 5), *b = NULL;
    const char *eps[2] = { a->ep, "tcp://127.0.0.1:1" };
    ms_backend_net_params_t p = params(MS_WIRE_F32, 300);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_new_fails(eps, 2, &p, -ETIMEDOUT, "no Hello reply within 300 ms from tcp://127.0.0.1:1 (");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CU_ASSERT((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9 < 2.0);
    /* another model */
    a->hidden = D * 2;
    expect_new_fails(eps, 1, &p, -EINVAL, "serves another model: 2 layers, hidden 16, 6 experts; this model has 2 layers, hidden 8");
    a->hidden = D;
    a->n_layer = NL + 1;
    expect_new_fails(eps, 1, &p, -EINVAL, "serves another model: 3 layers");
    a->n_layer = NL;
    fake_stop(&a);
    /* slices nobody holds: layer 0 experts 2-4 (a run) and 5... */
    a = fake_start(0, 1);
    b = fake_start(5, 5);
    a->held[1][2] = a->held[1][3] = true;
    const char *two[2] = { a->ep, b->ep };
    char want[256];
    snprintf(want, sizeof(want), "no live host holds layer 0 experts 2-4; layer 1 expert 4 (4 slices; hosts: %s, %s)",
             a->ep, b->ep);
    expect_new_fails(two, 2, &p, -ENOENT, want);
    /* ... and with one of them silent, both the host and what it would have held */
    fake_stop(&b);
    snprintf(want, sizeof(want), "no Hello reply within 300 ms from tcp://127.0.0.1:1 (is expertd running and "
             "listening there?); without it, no live host holds layer 0 experts 2-5; layer 1 experts 4,5");
    const char *dead[2] = { a->ep, "tcp://127.0.0.1:1" };
    expect_new_fails(dead, 2, &p, -ETIMEDOUT, want);
    fake_stop(&a);
}

static void test_reply_failures(void)
{
    fake_t *a = fake_start(0, 5);
    ms_model_t m = model_of_shape();
    const char *eps[1] = { a->ep };
    ms_backend_net_params_t p = params(MS_WIRE_F32, 250);
    ms_expert_backend_t *be = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_backend_net_new(&m, eps, 1, &p, &be, &err) == 0);
    float x[NT * D], w[NT * K], out[NT * D];
    int32_t ids[NT * K];
    make_step(x, ids, w);
    char want[160];
    /* an Error reply fails the step, naming the host, the layer and its message */
    a->mode = FAKE_ERROR;
    CU_ASSERT_FATAL(be->submit(be, 1, x, NT, ids, w, K) == 0);
    CU_ASSERT_EQUAL(be->wait(be, out, &err), -EIO);
    snprintf(want, sizeof(want), "layer 1: host %s refused the batch", a->ep);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "layer 1 expert 3 is not held here"));
    /* a reply later than the deadline: -ETIMEDOUT naming host and layer... */
    a->mode = FAKE_LATE;
    err.msg[0] = '\0';
    CU_ASSERT_FATAL(be->submit(be, 0, x, NT, ids, w, K) == 0);
    CU_ASSERT_EQUAL(be->wait(be, out, &err), -ETIMEDOUT);
    snprintf(want, sizeof(want), "layer 0: no reply within 250 ms from %s", a->ep);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, want));
    /* ... whose late reply is dropped by request id on the next dispatch */
    a->mode = FAKE_STALE_FIRST;
    usleep(300 * 1000);
    CU_ASSERT_FATAL(be->submit(be, 0, x, NT, ids, w, K) == 0);
    CU_ASSERT_EQUAL_FATAL(be->wait(be, out, &err), 0);
    check_out(out, x, ids, w);
    ms_backend_net_stats_t st;
    CU_ASSERT_FATAL(ms_backend_net_stats(be, &st) == 0);
    CU_ASSERT_EQUAL(st.stale_dropped, 2); /* the late one and the scripted one */
    if (st.stale_dropped != 2)
        fprintf(stderr, "\n  stale_dropped %llu\n", (unsigned long long)st.stale_dropped);
    CU_ASSERT_EQUAL(st.dispatches, 1);
    ms_backend_destroy(&be);
    fake_stop(&a);
}

/* Ticks (heartbeats, probes) until host h's state is want; false after 3 s. */
static bool tick_until(ms_expert_backend_t *be, int h, const char *want)
{
    for (int i = 0; i < 150; i++) {
        be->tick(be, true);
        ms_backend_net_host_stats_t hs;
        if (ms_backend_net_host_stats(be, h, &hs) == 0 && strcmp(hs.state, want) == 0)
            return true;
        usleep(20 * 1000);
    }
    return false;
}

/* Every expert on two hosts: A 0-3, B 2-5, C 0,1,4,5 (A computes 0-3, B 4-5).
 * A goes silent: at the deadline it is marked down and its slots are
 * recomputed on B and C one per row, recombined to the same exact sums;
 * the next step goes straight to the replicas; A answering again comes back. */
static void test_failover(void)
{
    fake_t *a = fake_start(0, 3), *b = fake_start(2, 5), *c = fake_start(4, 5);
    for (int l = 0; l < NL; l++)
        c->held[l][0] = c->held[l][1] = true;
    ms_model_t m = model_of_shape();
    const char *eps[3] = { a->ep, b->ep, c->ep };
    ms_backend_net_params_t p = params(MS_WIRE_F32, 250);
    p.heartbeat_ms = 50;
    ms_expert_backend_t *be = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_backend_net_new(&m, eps, 3, &p, &be, &err) == 0);
    float x[NT * D], w[NT * K], out[NT * D];
    int32_t ids[NT * K];
    make_step(x, ids, w);
    CU_ASSERT_FATAL(be->submit(be, 1, x, NT, ids, w, K) == 0);
    CU_ASSERT_FATAL(be->wait(be, out, &err) == 0);
    check_out(out, x, ids, w);
    CU_ASSERT(c->batches == 0); /* a standby copy computes nothing while the others are up */
    a->mode = FAKE_SILENT;
    CU_ASSERT_FATAL(be->submit(be, 0, x, NT, ids, w, K) == 0);
    CU_ASSERT_EQUAL_FATAL(be->wait(be, out, &err), 0);
    check_out(out, x, ids, w);
    CU_ASSERT(c->batches == 1 && c->last_k == 1); /* one slot per row */
    ms_backend_net_stats_t st;
    ms_backend_net_host_stats_t hs;
    CU_ASSERT_FATAL(ms_backend_net_stats(be, &st) == 0 && ms_backend_net_host_stats(be, 0, &hs) == 0);
    CU_ASSERT(st.hosts_down == 1 && st.failover_slots == 5 && strcmp(hs.state, "down") == 0);
    CU_ASSERT(st.epoch == MS_BACKEND_NET_EPOCH + 1);
    int a_batches = a->batches;
    CU_ASSERT_FATAL(be->submit(be, 1, x, NT, ids, w, K) == 0); /* A is known down: no wait for it */
    CU_ASSERT_EQUAL_FATAL(be->wait(be, out, &err), 0);
    check_out(out, x, ids, w);
    CU_ASSERT(a->batches == a_batches);
    a->mode = FAKE_REPLY;
    CU_ASSERT(tick_until(be, 0, "up"));
    CU_ASSERT_FATAL(ms_backend_net_stats(be, &st) == 0);
    CU_ASSERT(st.hosts_down == 0 && st.epoch == MS_BACKEND_NET_EPOCH + 2);
    CU_ASSERT_FATAL(be->submit(be, 1, x, NT, ids, w, K) == 0);
    CU_ASSERT_FATAL(be->wait(be, out, &err) == 0);
    check_out(out, x, ids, w);
    CU_ASSERT(a->batches == a_batches + 1);
    ms_backend_destroy(&be);
    fake_stop(&a);
    fake_stop(&b);
    fake_stop(&c);
}

/* One copy of each slice: a host whose connection drops makes steps fail at
 * once, naming a slice and the host, not time out. */
static void test_no_replica(void)
{
    fake_t *a = fake_start(0, 2), *b = fake_start(3, 5);
    ms_model_t m = model_of_shape();
    const char *eps[2] = { a->ep, b->ep };
    ms_backend_net_params_t p = params(MS_WIRE_F32, 5000);
    ms_expert_backend_t *be = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_backend_net_new(&m, eps, 2, &p, &be, &err) == 0);
    char b_ep[64];
    snprintf(b_ep, sizeof(b_ep), "%s", b->ep);
    fake_stop(&b);
    CU_ASSERT(tick_until(be, 1, "down"));
    float x[NT * D], w[NT * K], out[NT * D];
    int32_t ids[NT * K];
    make_step(x, ids, w);
    CU_ASSERT_FATAL(be->submit(be, 1, x, NT, ids, w, K) == 0);
    CU_ASSERT_EQUAL(be->wait(be, out, &err), -EHOSTDOWN);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "layer 1 expert 3 is unavailable"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, b_ep));
    ms_backend_destroy(&be);
    fake_stop(&a);
}

/* ---- dense loading of a pack (genmodel + moeshard pack, as the user runs them) ---- */

static char tmp_dir[256];

static int run_tool(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Writes ARCH.gguf and its 3-host pack ARCH-p/; returns 0 when both worked. */
static int make_pack(const char *arch)
{
    char bin[700], gen[800], ms[800], model[400], out[400];
    const char *b = getenv("MS_BIN");
    const char *build = getenv("BUILD");
    snprintf(bin, sizeof(bin), "%s", b ? b : "");
    if (!b)
        snprintf(bin, sizeof(bin), "%s/bin", build ? build : "build");
    snprintf(gen, sizeof(gen), "%s/genmodel", bin);
    snprintf(ms, sizeof(ms), "%s/moeshard", bin);
    snprintf(model, sizeof(model), "%s/%s.gguf", tmp_dir, arch);
    snprintf(out, sizeof(out), "%s/%s-p", tmp_dir, arch);
    char *g[] = { gen, "--arch", (char *)arch, "--type", "f32", "--out", model, NULL };
    char *p[] = { ms, "pack", model, "--hosts", "3", "--out", out, NULL };
    return run_tool(g) == 0 && run_tool(p) == 0 ? 0 : -1;
}

static void check_dense(const char *arch, int32_t ff)
{
    char full[400], dense[400];
    snprintf(full, sizeof(full), "%s/%s.gguf", tmp_dir, arch);
    snprintf(dense, sizeof(dense), "%s/%s-p/dense.gguf", tmp_dir, arch);
    CU_ASSERT_FATAL(make_pack(arch) == 0);
    ms_model_t *f = NULL, *d = NULL, *fd = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_model_load(full, &f, &err) == 0);
    /* the plain loader refuses the dense part, saying what it is */
    CU_ASSERT_EQUAL(ms_model_load(dense, &d, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "dense part of a packed model"));
    CU_ASSERT_FATAL(ms_model_load_dense(dense, &d, &err) == 0);
    CU_ASSERT_FATAL(ms_model_load_dense(full, &fd, &err) == 0);
    CU_ASSERT(!f->experts_remote && d->experts_remote && fd->experts_remote);
    CU_ASSERT_EQUAL(d->hp.n_ff_exp, ff); /* genmodel's default expert width */
    CU_ASSERT_EQUAL(fd->hp.n_ff_exp, ff);
    CU_ASSERT(d->hp.n_layer == f->hp.n_layer && d->hp.n_expert == f->hp.n_expert && d->hp.n_embd == f->hp.n_embd &&
              d->hp.n_vocab == f->hp.n_vocab && d->hp.n_ff_shexp == f->hp.n_ff_shexp);
    for (int il = 0; il < d->hp.n_layer; il++)
        CU_ASSERT(d->layers[il].gate_exps.n_mat == 0 && d->layers[il].gate_exps.data == NULL &&
                  d->layers[il].up_exps.n_mat == 0 && d->layers[il].down_exps.n_mat == 0 &&
                  d->layers[il].router.data != NULL);
    /* f32 experts: one slice is 3 matrices of d x ff floats */
    uint64_t slice = 3ull * (uint64_t)f->hp.n_embd * (uint64_t)ff * 4;
    CU_ASSERT_EQUAL(d->bytes_experts, 0);
    CU_ASSERT_EQUAL(d->bytes_dense, f->bytes_dense);
    CU_ASSERT_EQUAL(fd->bytes_dense, f->bytes_dense);
    CU_ASSERT_EQUAL(d->bytes_per_token,
                    f->bytes_per_token - (uint64_t)f->hp.n_layer * (uint64_t)f->hp.n_expert_used * slice);
    ms_model_destroy(&f);
    ms_model_destroy(&d);
    ms_model_destroy(&fd);
    /* a host shard is not a dense part: it lacks the embedding */
    snprintf(dense, sizeof(dense), "%s/%s-p/host-0.gguf", tmp_dir, arch);
    CU_ASSERT_EQUAL(ms_model_load_dense(dense, &d, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "token_embd.weight"));
    CU_ASSERT_PTR_NULL(d);
}

static void test_dense_qwen2moe(void) { check_dense("qwen2moe", 32); } /* expert_feed_forward_length */
static void test_dense_llama(void) { check_dense("llama", 96); }       /* feed_forward_length */

static int dense_init(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/backend-net-XXXXXX", t ? t : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : 1;
}

static int dense_clean(void)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : 1;
}

static int ms_test_register(void)
{
    signal(SIGPIPE, SIG_IGN);
    CU_pSuite s = CU_add_suite("backend_net", NULL, NULL);
    CU_pSuite d = CU_add_suite("model_dense", dense_init, dense_clean);
    if (!s || !d)
        return CU_get_error();
    if (!CU_add_test(s, "tokens grouped by host, f32 wire", test_grouping_f32) ||
        !CU_add_test(s, "tokens grouped by host, bf16 wire", test_grouping_bf16) ||
        !CU_add_test(s, "a host no token uses gets nothing", test_untouched_host) ||
        !CU_add_test(s, "submit refuses bad arguments", test_refusals) ||
        !CU_add_test(s, "bad parameters are refused", test_bad_params) ||
        !CU_add_test(s, "Hello: silent host, other model, missing slices", test_hello_failures) ||
        !CU_add_test(s, "Error reply, deadline, stale replies dropped", test_reply_failures) ||
        !CU_add_test(s, "a silent host's slots recomputed on replicas, exactly", test_failover) ||
        !CU_add_test(s, "no replica: a dropped host fails steps at once", test_no_replica) ||
        !CU_add_test(d, "qwen2moe dense part", test_dense_qwen2moe) ||
        !CU_add_test(d, "llama dense part", test_dense_llama))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
