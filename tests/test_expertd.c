/* expertd end to end: starts the real daemon on 127.0.0.1 with a tiny
 * generated model, sends batches from a DEALER socket and compares the
 * replies with ms_expert_ffn run in this process over the full model;
 * then malformed requests (each must get an Error reply while the daemon
 * keeps serving), and SIGTERM (exit 0). Every child is killed by pid at the end. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "expert.h"
#include "limits.h"
#include "model.h"
#include "shard.h"
#include "moeshard.pb-c.h"
#include "wire.h"
#include "wire_zmq.h"

#define WAIT_MS 15000

static char bin_dir[1024], tmp_dir[256], model_path[512], log_path[512], endpoint[64];
static pid_t daemon_pid = -1;
static void *zctx, *sock;
static ms_model_t *model;
static ms_wire_msg_t *msg;
static uint64_t next_id = 1;
static const bool held_set[8] = { true, false, true, true, false, false, false, false }; /* --experts 0,2-3 */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Waits up to timeout_s for pid; -1 when it is still running. */
static int wait_exit(pid_t pid, double timeout_s)
{
    double end = now_s() + timeout_s;
    int status;
    while (now_s() < end) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(10000);
    }
    return -1;
}

static pid_t spawn(char *const argv[], const char *err_path)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Runs a short command to completion (killed after 30 s). */
static int run_cmd(char *const argv[], const char *err_path)
{
    pid_t pid = spawn(argv, err_path);
    if (pid < 0)
        return -1;
    int rc = wait_exit(pid, 30);
    if (rc < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    return rc;
}

static bool file_has(const char *path, const char *needle)
{
    char buf[8192] = { 0 };
    FILE *fp = fopen(path, "r");
    if (!fp)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return strstr(buf, needle) != NULL;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || getsockname(fd, (struct sockaddr *)&a, &len)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static void find_bins(void)
{
    const char *b = getenv("MS_BIN");
    if (b) {
        snprintf(bin_dir, sizeof(bin_dir), "%s", b);
        return;
    }
    b = getenv("BUILD");
    snprintf(bin_dir, sizeof(bin_dir), "%s/bin", b ? b : "build");
}

static int suite_init(void)
{
    find_bins();
    const char *t = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/expertd-XXXXXX", t ? t : "/tmp");
    if (!mkdtemp(tmp_dir))
        return 1;
    snprintf(model_path, sizeof(model_path), "%s/m.gguf", tmp_dir);
    snprintf(log_path, sizeof(log_path), "%s/expertd.log", tmp_dir);
    char gen[1100], elog[600];
    snprintf(gen, sizeof(gen), "%s/genmodel", bin_dir);
    snprintf(elog, sizeof(elog), "%s/genmodel.log", tmp_dir);
    char *argv[] = { gen, "--arch", "qwen2moe", "--type", "f32", "--seed", "7", "--out", model_path, NULL };
    if (run_cmd(argv, elog) != 0)
        return 1;
    ms_err_t err = { { 0 } };
    if (ms_model_load(model_path, &model, &err) || ms_wire_msg_new(&msg))
        return 1;
    zctx = zmq_ctx_new();
    return zctx ? 0 : 1;
}

static void stop_daemon(void)
{
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGKILL);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = -1;
    }
}

static int suite_clean(void)
{
    stop_daemon();
    if (sock)
        zmq_close(sock);
    if (zctx)
        zmq_ctx_term(zctx);
    ms_model_destroy(&model);
    ms_wire_msg_destroy(&msg);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : 1;
}

/* ---- talking to the daemon ---- */

static uint8_t hdr[1 << 20];

static int send_parts(const void *h, size_t hl, const void *f, size_t fl, int n_frames)
{
    if (zmq_send(sock, h, hl, n_frames ? ZMQ_SNDMORE : 0) < 0)
        return -1;
    for (int i = 0; i < n_frames; i++)
        if (zmq_send(sock, f, fl, i + 1 < n_frames ? ZMQ_SNDMORE : 0) < 0)
            return -1;
    return 0;
}

/* Receives one reply into msg and (result frames) out. 0 or -1. */
static int recv_reply(float *out, size_t out_n)
{
    zmq_pollitem_t it = { sock, 0, ZMQ_POLLIN, 0 };
    if (zmq_poll(&it, 1, WAIT_MS) != 1)
        return -1;
    ms_wire_rx_t rx;
    int rc = ms_wire_zmq_recv(sock, &rx, 0);
    if (!rc) {
        ms_err_t err = { { 0 } };
        rc = ms_wire_rx_decode(&rx, 0, msg, &err);
        if (!rc && msg->kind == MS_WIRE_RESULT && msg->result.status == 0) {
            size_t n = (size_t)msg->result.n_tokens * (size_t)msg->result.hidden;
            if (n <= out_n)
                ms_wire_to_f32(msg->result.dtype, msg->frame, n, out);
            else
                rc = -1;
        }
    } else {
        rc = -1;
    }
    ms_wire_rx_close(&rx);
    return rc ? -1 : 0;
}

static int hello(void)
{
    ms_wire_head_t h = { .request_id = next_id++ };
    ms_wire_hello_t me = { .host_id = -1 };
    size_t len;
    ms_err_t err = { { 0 } };
    if (ms_wire_encode_hello(&h, &me, hdr, sizeof(hdr), &len, &err) || send_parts(hdr, len, NULL, 0, 0))
        return -1;
    return recv_reply(NULL, 0) == 0 && msg->kind == MS_WIRE_HELLO && msg->head.request_id == h.request_id ? 0 : -1;
}

static void connect_dealer(int port)
{
    if (sock)
        zmq_close(sock);
    sock = zmq_socket(zctx, ZMQ_DEALER);
    ms_wire_zmq_limits(sock);
    snprintf(endpoint, sizeof(endpoint), "tcp://127.0.0.1:%d", port);
    zmq_connect(sock, endpoint);
}

/* Starts expertd from a config file and waits until it answers Hello. */
static int start_daemon(const char *model_file, const char *experts)
{
    int port = free_port();
    if (port < 0)
        return -1;
    char cfg[600], exe[1100];
    snprintf(cfg, sizeof(cfg), "%s/expertd.conf", tmp_dir);
    FILE *fp = fopen(cfg, "w");
    if (!fp)
        return -1;
    fprintf(fp, "# test daemon\nlisten = tcp://127.0.0.1:%d\nmodel = %s\n  threads = 2\nplaintext = true\n", port,
            model_file);
    if (experts)
        fprintf(fp, "experts = %s\n", experts);
    fclose(fp);
    snprintf(exe, sizeof(exe), "%s/expertd", bin_dir);
    char *argv[] = { exe, "--config", cfg, "--log-level", "info", NULL };
    daemon_pid = spawn(argv, log_path);
    if (daemon_pid < 0)
        return -1;
    connect_dealer(port);
    return hello();
}

/* ---- reference ---- */

static uint64_t rng = 0x243f6a8885a308d3ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

#define NT 9
#define KS 3

/* Random slots over the held experts of layer l (held: [n_expert]), some empty. */
static void make_batch(const bool *held, float *x, int32_t *ids, float *w, int d)
{
    int ne = model->hp.n_expert;
    for (int i = 0; i < NT * d; i++)
        x[i] = frand();
    for (int s = 0; s < NT * KS; s++) {
        int32_t e = (int32_t)((frand() + 1.0f) * 0.5f * (float)ne) % ne;
        ids[s] = held[e] && s % 4 != 3 ? e : -1;
        w[s] = ids[s] < 0 ? 0.0f : frand();
    }
}

static void reference(int layer, const float *x, const int32_t *ids, const float *w, float *out)
{
    const ms_layer_t *L = &model->layers[layer];
    ms_expert_ws_t *ws = NULL;
    CU_ASSERT_FATAL(ms_expert_ws_new(&L->gate_exps, &L->up_exps, &L->down_exps, NT * KS, &ws) == 0);
    int d = model->hp.n_embd;
    CU_ASSERT(ms_expert_ffn(NULL, ms_kernels_for(MS_ISA_SCALAR), &L->gate_exps, &L->up_exps, &L->down_exps, x, d, NT,
                            ids, w, KS, out, d, ws) == 0);
    ms_expert_ws_destroy(&ws);
}

/* Sends one batch and compares with the in-process computation. */
static void check_batch(int layer, const bool *held, ms_wire_dtype_t dt, double tol)
{
    int d = model->hp.n_embd;
    float x[NT * 64], ref[NT * 64], got[NT * 64], w[NT * KS];
    int32_t ids[NT * KS];
    CU_ASSERT_FATAL(d <= 64);
    make_batch(held, x, ids, w, d);
    uint8_t frame[NT * 64 * 4];
    ms_wire_from_f32(dt, x, (size_t)NT * d, frame);
    ms_wire_to_f32(dt, frame, (size_t)NT * d, x); /* the reference sees what the wire carried */
    reference(layer, x, ids, w, ref);
    ms_wire_head_t h = { .request_id = next_id++, .epoch = 17 };
    ms_wire_batch_t b = { .layer = layer, .n_tokens = NT, .hidden = d, .k = KS, .dtype = dt, .ids = ids, .weights = w };
    size_t len;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_wire_encode_batch(&h, &b, hdr, sizeof(hdr), &len, &err) == 0);
    CU_ASSERT_FATAL(send_parts(hdr, len, frame, (size_t)NT * d * ms_wire_dtype_bytes(dt), 1) == 0);
    CU_ASSERT_FATAL(recv_reply(got, NT * 64) == 0);
    CU_ASSERT_EQUAL_FATAL(msg->kind, MS_WIRE_RESULT);
    CU_ASSERT_EQUAL(msg->head.request_id, h.request_id);
    CU_ASSERT_EQUAL(msg->head.epoch, 17);
    CU_ASSERT(msg->result.status == 0 && msg->result.n_tokens == NT && msg->result.hidden == d &&
              msg->result.dtype == dt);
    double worst = 0;
    for (int i = 0; i < NT * d; i++) {
        double e = fabs((double)got[i] - (double)ref[i]) / fmax(1.0, fabs((double)ref[i]));
        worst = e > worst ? e : worst;
    }
    CU_ASSERT(worst <= tol);
    if (worst > tol)
        fprintf(stderr, "layer %d %s: worst relative error %g > %g\n", layer, ms_wire_dtype_name(dt), worst, tol);
}

/* ---- tests ---- */

static void test_start(void)
{
    CU_ASSERT_FATAL(start_daemon(model_path, "0,2-3") == 0);
    CU_ASSERT_EQUAL(msg->hello.host_id, -1);
    CU_ASSERT_EQUAL(msg->hello.n_layer, model->hp.n_layer);
    CU_ASSERT_EQUAL(msg->hello.hidden, model->hp.n_embd);
    CU_ASSERT_EQUAL(msg->hello.n_expert, model->hp.n_expert);
    CU_ASSERT_EQUAL(msg->hello.n_held, 3u * (uint32_t)model->hp.n_layer);
    CU_ASSERT_EQUAL(msg->hello.n_failed, 0);
    for (uint32_t i = 0; i < msg->hello.n_held; i++)
        CU_ASSERT(held_set[msg->hello.held[i].expert]);
}

static void test_batches(void)
{
    CU_ASSERT_FATAL(daemon_pid > 0);
    for (int l = 0; l < model->hp.n_layer; l++) {
        check_batch(l, held_set, MS_WIRE_F32, 1e-5);
        /* bf16/f16 results are rounded once on the way back: half an ulp */
        check_batch(l, held_set, MS_WIRE_BF16, 1.0 / 256);
        check_batch(l, held_set, MS_WIRE_F16, 1.0 / 2048);
    }
}

/* Sends raw parts and expects an Error reply with code. */
static void expect_error(const void *h, size_t hl, const void *f, size_t fl, int n_frames, int code, const char *text)
{
    CU_ASSERT_FATAL(send_parts(h, hl, f, fl, n_frames) == 0);
    CU_ASSERT_FATAL(recv_reply(NULL, 0) == 0);
    CU_ASSERT_EQUAL(msg->kind, MS_WIRE_ERROR);
    CU_ASSERT_EQUAL(msg->error.code, code);
    if (text && !strstr(msg->error.message, text))
        fprintf(stderr, "error '%s' does not mention '%s'\n", msg->error.message, text);
    CU_ASSERT(!text || strstr(msg->error.message, text));
}

static size_t batch_hdr(int layer, int n_tok, int hidden, int32_t *ids, float *w, uint8_t *out)
{
    ms_wire_head_t h = { .request_id = next_id++ };
    ms_wire_batch_t b = { .layer = layer, .n_tokens = n_tok, .hidden = hidden, .k = 1, .dtype = MS_WIRE_F32,
                          .ids = ids, .weights = w };
    size_t len = 0;
    ms_err_t err = { { 0 } };
    CU_ASSERT(ms_wire_encode_batch(&h, &b, out, sizeof(hdr), &len, &err) == 0);
    return len;
}

static void test_bad_requests(void)
{
    CU_ASSERT_FATAL(daemon_pid > 0);
    int d = model->hp.n_embd;
    static float frame[4 * 64];
    int32_t ids[4] = { 0, 2, 3, 0 };
    float w[4] = { 1, 1, 1, 1 };
    uint8_t garbage[32];
    memset(garbage, 0xee, sizeof(garbage));
    expect_error(garbage, sizeof(garbage), NULL, 0, 0, EPROTO, "not a valid envelope");

    Moeshard__Heartbeat hb = MOESHARD__HEARTBEAT__INIT;
    Moeshard__Envelope env = MOESHARD__ENVELOPE__INIT;
    env.version_major = MS_WIRE_VERSION_MAJOR + 1;
    env.kind_case = MOESHARD__ENVELOPE__KIND_HEARTBEAT;
    env.heartbeat = &hb;
    size_t len = moeshard__envelope__pack(&env, hdr);
    expect_error(hdr, len, NULL, 0, 0, EPROTONOSUPPORT, "protocol version");

    ids[1] = 1; /* expert 1 is not held */
    len = batch_hdr(1, 4, d, ids, w, hdr);
    expect_error(hdr, len, frame, 4 * (size_t)d * 4, 1, ENOENT, "(layer 1, expert 1)");
    ids[1] = 2;
    len = batch_hdr(0, 4, d / 2, ids, w, hdr); /* hidden != the model's */
    expect_error(hdr, len, frame, 4 * (size_t)d / 2 * 4, 1, EINVAL, "hidden size");
    len = batch_hdr(model->hp.n_layer, 4, d, ids, w, hdr);
    expect_error(hdr, len, frame, 4 * (size_t)d * 4, 1, EINVAL, "layer");
    len = batch_hdr(0, 4, d, ids, w, hdr); /* frame shorter than the header says */
    expect_error(hdr, len, frame, 4 * (size_t)d * 4 - 4, 1, EPROTO, "tensor frame");
    expect_error(hdr, len, frame, 4 * (size_t)d * 4, 3, EMSGSIZE, "tensor frames");
    expect_error(hdr, len, NULL, 0, 0, EPROTO, "frames");

    Moeshard__ExpertBatch big = MOESHARD__EXPERT_BATCH__INIT; /* oversize token count */
    big.n_tokens = MS_WIRE_TOKENS_MAX + 1;
    big.hidden = (uint32_t)d;
    big.k = 1;
    big.dtype = MOESHARD__DTYPE__DTYPE_F32;
    Moeshard__Envelope env2 = MOESHARD__ENVELOPE__INIT;
    env2.version_major = MS_WIRE_VERSION_MAJOR;
    env2.kind_case = MOESHARD__ENVELOPE__KIND_BATCH;
    env2.batch = &big;
    len = moeshard__envelope__pack(&env2, hdr);
    expect_error(hdr, len, frame, 8, 1, EMSGSIZE, "n_tokens");

    static ms_wire_load_t load = { .layer = 0, .n_experts = 1, .experts = { 1 }, .source = "other.gguf" };
    ms_wire_head_t h = { .request_id = next_id++ };
    ms_err_t err = { { 0 } };
    CU_ASSERT(ms_wire_encode_load(&h, &load, hdr, sizeof(hdr), &len, &err) == 0);
    expect_error(hdr, len, NULL, 0, 0, ENOTSUP, "Load");

    /* still serving, and the refusals were counted */
    check_batch(0, held_set, MS_WIRE_F32, 1e-5);
    CU_ASSERT(ms_wire_encode_heartbeat(&h, hdr, sizeof(hdr), &len, &err) == 0);
    CU_ASSERT_FATAL(send_parts(hdr, len, NULL, 0, 0) == 0);
    CU_ASSERT_FATAL(recv_reply(NULL, 0) == 0);
    CU_ASSERT_EQUAL(msg->kind, MS_WIRE_STATS);
    CU_ASSERT_EQUAL(msg->stats.errors, 10);
    CU_ASSERT_EQUAL(msg->stats.batches, 3u * (uint64_t)model->hp.n_layer + 1);
    CU_ASSERT_EQUAL(msg->stats.slices_held, 3u * (uint32_t)model->hp.n_layer);
    CU_ASSERT(file_has(log_path, "(layer 1, expert 1) is not held"));
}

static void test_sigterm(void)
{
    CU_ASSERT_FATAL(daemon_pid > 0);
    CU_ASSERT(kill(daemon_pid, SIGTERM) == 0);
    int rc = wait_exit(daemon_pid, 10);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc >= 0)
        daemon_pid = -1;
    CU_ASSERT(file_has(log_path, "stopping"));
    CU_ASSERT(file_has(log_path, "GB/s"));
}

/* Runs moeshard pack into tmp_dir/pack; 0 when host-0/1.gguf were written. */
static int pack_model(void)
{
    char exe[1100], out[600], dir[600];
    snprintf(exe, sizeof(exe), "%s/moeshard", bin_dir);
    snprintf(out, sizeof(out), "%s/pack.log", tmp_dir);
    snprintf(dir, sizeof(dir), "%s/pack", tmp_dir);
    char *argv[] = { exe, "pack", model_path, "--hosts", "2", "--out", dir, NULL };
    return run_cmd(argv, out);
}

/* Which experts of layer l the last Hello listed (held or failed). */
static void held_of(int l, bool failed, bool *held)
{
    memset(held, 0, sizeof(bool) * (size_t)model->hp.n_expert);
    uint32_t n = failed ? msg->hello.n_failed : msg->hello.n_held;
    const ms_wire_slice_t *sl = failed ? msg->hello.failed : msg->hello.held;
    for (uint32_t i = 0; i < n; i++)
        if (sl[i].layer == l)
            held[sl[i].expert] = true;
}

/* pack -> shard -> expertd serves the same slices as the full model. */
static void test_shard(void)
{
    CU_ASSERT_FATAL(pack_model() == 0);
    char shard[600];
    snprintf(shard, sizeof(shard), "%s/pack/host-1.gguf", tmp_dir);
    CU_ASSERT_FATAL(start_daemon(shard, NULL) == 0);
    CU_ASSERT_EQUAL(msg->hello.host_id, 1);
    CU_ASSERT(msg->hello.n_held > 0);
    CU_ASSERT_EQUAL(msg->hello.n_failed, 0);
    bool held[MS_LAYERS_MAX][MS_EXPERTS_MAX];
    for (int l = 0; l < model->hp.n_layer; l++)
        held_of(l, false, held[l]);
    for (int l = 0; l < model->hp.n_layer; l++)
        check_batch(l, held[l], MS_WIRE_F32, 1e-5);
    CU_ASSERT(kill(daemon_pid, SIGTERM) == 0);
    CU_ASSERT_EQUAL(wait_exit(daemon_pid, 10), 0);
    daemon_pid = -1;
}

/* One flipped byte in a shard's expert slab: that slice is refused, named
 * in the log and in Hello, and the rest is served. */
static void test_flipped_byte(void)
{
    char shard[600];
    snprintf(shard, sizeof(shard), "%s/pack/host-0.gguf", tmp_dir);
    ms_gguf_t *g = NULL;
    ms_shard_t *sh = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_gguf_open(shard, &g, &err) == 0);
    CU_ASSERT_FATAL(ms_shard_open(g, &sh, &err) == 0);
    const ms_slice_t *victim = ms_shard_slice(sh, ms_shard_n_slices(sh) - 1);
    int32_t vl = victim->layer, ve = victim->expert;
    uint64_t off = victim->file_offset[MS_PROJ_UP] + victim->nbytes[MS_PROJ_UP] / 2 + 1; /* not 4 KiB aligned */
    ms_shard_destroy(&sh);
    ms_gguf_close(&g);
    int fd = open(shard, O_RDWR);
    CU_ASSERT_FATAL(fd >= 0);
    uint8_t byte = 0;
    CU_ASSERT(pread(fd, &byte, 1, (off_t)off) == 1);
    byte ^= 0x10;
    CU_ASSERT(pwrite(fd, &byte, 1, (off_t)off) == 1);
    close(fd);

    CU_ASSERT_FATAL(start_daemon(shard, NULL) == 0);
    CU_ASSERT_EQUAL_FATAL(msg->hello.n_failed, 1);
    CU_ASSERT(msg->hello.failed[0].layer == vl && msg->hello.failed[0].expert == ve);
    char named[64];
    snprintf(named, sizeof(named), "(layer %d, expert %d) up: SHA-256 mismatch", vl, ve);
    CU_ASSERT(file_has(log_path, named));
    bool held[MS_EXPERTS_MAX];
    held_of(vl, false, held);
    CU_ASSERT(!held[ve]);
    check_batch(vl, held, MS_WIRE_F32, 1e-5); /* the rest is served */
    int32_t ids[1] = { ve };
    float w[1] = { 1 };
    static float frame[64];
    size_t len = batch_hdr(vl, 1, model->hp.n_embd, ids, w, hdr);
    expect_error(hdr, len, frame, (size_t)model->hp.n_embd * 4, 1, ENOENT, "not held");
    CU_ASSERT(kill(daemon_pid, SIGTERM) == 0);
    CU_ASSERT_EQUAL(wait_exit(daemon_pid, 10), 0);
    daemon_pid = -1;
}

/* Sends Load (load true, source "local") or Unload of experts of layer l; 0 and
 * the reply in msg, or -1. */
static int load_msg(int l, const int32_t *experts, int n, bool load, const char *source)
{
    static ms_wire_load_t ld;
    ld.layer = l;
    ld.n_experts = (uint32_t)n;
    memcpy(ld.experts, experts, (size_t)n * sizeof(int32_t));
    snprintf(ld.source, sizeof(ld.source), "%s", load ? source : "");
    ms_wire_head_t h = { .request_id = next_id++ };
    size_t len;
    ms_err_t err = { { 0 } };
    if (ms_wire_encode_load(&h, &ld, hdr, sizeof(hdr), &len, &err) || send_parts(hdr, len, NULL, 0, 0))
        return -1;
    return recv_reply(NULL, 0) == 0 && msg->head.request_id == h.request_id ? 0 : -1;
}

static bool hello_holds(int l, int e)
{
    for (uint32_t i = 0; i < msg->hello.n_held; i++)
        if (msg->hello.held[i].layer == l && msg->hello.held[i].expert == e)
            return true;
    return false;
}

/* --experts none, then slices come and go by Load and Unload while serving:
 * each reply is the new Hello, batches over loaded slices equal the
 * in-process computation, unloaded ones are refused, bad requests get Errors. */
static void test_load_unload(void)
{
    CU_ASSERT_FATAL(start_daemon(model_path, "none") == 0);
    CU_ASSERT_EQUAL(msg->hello.n_held, 0);
    int32_t two[2] = { 1, 3 };
    CU_ASSERT_FATAL(load_msg(1, two, 2, true, MS_WIRE_SOURCE_LOCAL) == 0);
    CU_ASSERT_EQUAL_FATAL(msg->kind, MS_WIRE_HELLO);
    CU_ASSERT(msg->hello.n_held == 2 && hello_holds(1, 1) && hello_holds(1, 3));
    CU_ASSERT(msg->hello.memory_bytes > 0);
    bool held[64] = { false };
    held[1] = held[3] = true;
    check_batch(1, held, MS_WIRE_F32, 1e-5);
    int32_t one[1] = { 3 };
    CU_ASSERT_FATAL(load_msg(1, one, 1, false, NULL) == 0); /* Unload expert 3: 1 stays, copied */
    CU_ASSERT(msg->kind == MS_WIRE_HELLO && msg->hello.n_held == 1 && hello_holds(1, 1));
    held[3] = false;
    check_batch(1, held, MS_WIRE_F32, 1e-5);
    int32_t ids[KS] = { 3, -1, -1 };
    float w[KS] = { 1, 0, 0 }, frame[64] = { 0 };
    size_t len = batch_hdr(1, 1, model->hp.n_embd, ids, w, hdr);
    expect_error(hdr, len, frame, (size_t)model->hp.n_embd * 4, 1, ENOENT, "not held");
    CU_ASSERT_FATAL(load_msg(1, one, 1, true, "/etc/passwd") == 0);
    CU_ASSERT(msg->kind == MS_WIRE_ERROR && msg->error.code == ENOTSUP);
    CU_ASSERT_FATAL(load_msg(model->hp.n_layer, one, 1, true, MS_WIRE_SOURCE_LOCAL) == 0);
    CU_ASSERT(msg->kind == MS_WIRE_ERROR && msg->error.code == EINVAL && strstr(msg->error.message, "layer"));
    int32_t bad[1] = { model->hp.n_expert };
    CU_ASSERT_FATAL(load_msg(0, bad, 1, true, MS_WIRE_SOURCE_LOCAL) == 0);
    CU_ASSERT(msg->kind == MS_WIRE_ERROR && msg->error.code == EINVAL && strstr(msg->error.message, "expert"));
    CU_ASSERT(hello() == 0 && msg->hello.n_held == 1); /* refusals changed nothing */
    CU_ASSERT(kill(daemon_pid, SIGTERM) == 0);
    CU_ASSERT_EQUAL(wait_exit(daemon_pid, 10), 0);
    daemon_pid = -1;
}

/* Command-line and config refusals: exit 2 with a message naming the problem. */
static void test_usage(void)
{
    char exe[1100], out[600], cfg[600];
    snprintf(exe, sizeof(exe), "%s/expertd", bin_dir);
    snprintf(out, sizeof(out), "%s/usage.log", tmp_dir);
    snprintf(cfg, sizeof(cfg), "%s/bad.conf", tmp_dir);
    char *help[] = { exe, "--help", NULL };
    CU_ASSERT_EQUAL(run_cmd(help, out), 0);
    CU_ASSERT(file_has(out, "usage: expertd"));
    char *bogus[] = { exe, "--bogus", NULL };
    CU_ASSERT_EQUAL(run_cmd(bogus, out), 2);
    CU_ASSERT(file_has(out, "--bogus"));
    char *threads[] = { exe, "--listen", "tcp://127.0.0.1:1", "--model", model_path, "--threads", "0", NULL };
    CU_ASSERT_EQUAL(run_cmd(threads, out), 2);
    CU_ASSERT(file_has(out, "threads"));
    FILE *fp = fopen(cfg, "w");
    CU_ASSERT_FATAL(fp != NULL);
    fprintf(fp, "listen = tcp://127.0.0.1:1\n\ncolour = blue\n");
    fclose(fp);
    char *badcfg[] = { exe, "--config", cfg, NULL };
    CU_ASSERT_EQUAL(run_cmd(badcfg, out), 2);
    CU_ASSERT(file_has(out, "bad.conf:3: unknown key 'colour'"));
    char *badspec[] = { exe, "--listen", "tcp://127.0.0.1:1", "--model", model_path, "--experts", "3-1", "--plaintext",
                        NULL };
    CU_ASSERT_EQUAL(run_cmd(badspec, out), 1);
    CU_ASSERT(file_has(out, "'3-1'"));
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("expertd", suite_init, suite_clean);
    if (!s || !CU_add_test(s, "usage and config refusals", test_usage) ||
        !CU_add_test(s, "Load and Unload while serving", test_load_unload) ||
        !CU_add_test(s, "start from a config file, Hello", test_start) ||
        !CU_add_test(s, "batches equal the in-process computation", test_batches) ||
        !CU_add_test(s, "bad requests get Error replies", test_bad_requests) ||
        !CU_add_test(s, "SIGTERM exits 0", test_sigterm) ||
        !CU_add_test(s, "a packed shard serves the full model's slices", test_shard) ||
        !CU_add_test(s, "a flipped byte in a shard is refused", test_flipped_byte))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
