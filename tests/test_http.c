/* Tests for the HTTP API's own rules, over real sockets against the
 * scheduler with a slowed in-process backend: listen errors, the API key,
 * the in-flight bound (429), a full queue (503), a client hanging up, and
 * requests in flight when the server stops. (Response contents are checked
 * end to end by tests/integration/test_http.sh.) */
#include <CUnit/CUnit.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "http.h"
#include "kernels.h"
#include "model.h"
#include "sched.h"
#include "tokenizer.h"

#define T_CTX 256
#define T_RESP_MAX 65536
#define T_TIMEOUT_S 20

#include "tiny_model_fixture.h"

/* ------------------------------------------- a backend slowed like a far host */

typedef struct {
    ms_expert_backend_t base;
    ms_expert_backend_t *inner;
    int delay_us;
} slow_t;

static int slow_submit(ms_expert_backend_t *self, int il, const float *x, int n, const int32_t *ids, const float *w,
                       int k)
{
    return ((slow_t *)self)->inner->submit(((slow_t *)self)->inner, il, x, n, ids, w, k);
}

static int slow_wait(ms_expert_backend_t *self, float *out, ms_err_t *err)
{
    slow_t *s = (slow_t *)self;
    int rc = s->inner->wait(s->inner, out, err);
    usleep((useconds_t)s->delay_us);
    return rc;
}

static void slow_destroy(ms_expert_backend_t *self)
{
    slow_t *s = (slow_t *)self;
    ms_backend_destroy(&s->inner);
    free(s);
}

/* Everything one test serves with. */
typedef struct {
    ms_expert_backend_t *backend;
    ms_sched_t *sched;
    coord_http_t *http;
    uint16_t port;
} server_t;

static int server_start(server_t *sv, int32_t seqs, int32_t queue, const coord_http_params_t *hp, int delay_us)
{
    memset(sv, 0, sizeof(*sv));
    slow_t *s = calloc(1, sizeof(*s));
    if (!s || ms_backend_local_new(model, pool, ms_kernels_best(), 16, &s->inner)) {
        free(s);
        return -1;
    }
    s->base = (ms_expert_backend_t){ .name = "slow", .submit = slow_submit, .wait = slow_wait, .destroy = slow_destroy };
    s->delay_us = delay_us;
    sv->backend = &s->base;
    ms_sched_params_t sp = { .n_seq_max = seqs, .n_ctx = T_CTX, .n_batch_max = 16, .queue_max = queue, .pool = pool };
    ms_err_t err = { { 0 } };
    coord_http_params_t p = hp ? *hp : (coord_http_params_t){ 0 };
    p.n_ctx = T_CTX;
    if (ms_sched_new(model, tok, sv->backend, &sp, &sv->sched, &err) ||
        coord_http_start(sv->sched, model, tok, "tiny", "127.0.0.1:0", &p, &sv->http, &err)) {
        fprintf(stderr, "server: %s\n", err.msg);
        return -1;
    }
    sv->port = coord_http_port(sv->http);
    return sv->port ? 0 : -1;
}

static void server_stop(server_t *sv)
{
    coord_http_stop(&sv->http);
    ms_sched_destroy(&sv->sched);
    ms_backend_destroy(&sv->backend);
}

/* ------------------------------------------------------ a minimal client */

static int client_send(uint16_t port, const char *method, const char *path, const char *headers, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = { .tv_sec = T_TIMEOUT_S };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    char req[4096];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%sContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, path, headers ? headers : "", body ? strlen(body) : 0, body ? body : "");
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) || n < 0 || (size_t)n >= sizeof(req) ||
        send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads the whole response (the server closes: Connection: close); returns its status or -1. */
static int client_read(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    ssize_t n;
    while (len + 1 < cap && (n = recv(fd, buf + len, cap - 1 - len, 0)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(fd);
    int status = -1;
    return sscanf(buf, "HTTP/1.%*d %d", &status) == 1 ? status : -1;
}

static int request(uint16_t port, const char *method, const char *path, const char *headers, const char *body,
                   char *buf)
{
    int fd = client_send(port, method, path, headers, body);
    return fd < 0 ? -1 : client_read(fd, buf, T_RESP_MAX);
}

/* Waits until the scheduler holds `active` running and `queued` waiting requests. */
static bool wait_sched(ms_sched_t *s, uint32_t active, uint32_t queued)
{
    for (int i = 0; i < T_TIMEOUT_S * 100; i++) {
        ms_sched_stats_t st;
        ms_sched_stats(s, &st);
        if (st.active == active && st.queued == queued)
            return true;
        usleep(10000);
    }
    return false;
}

static const char long_stream[] = "{\"prompt\": \"Once upon a time\", \"max_tokens\": 200, \"temperature\": 0, \"stream\": true}";
static const char long_whole[] = "{\"prompt\": \"Once upon a time\", \"max_tokens\": 200, \"temperature\": 0}";
static const char short_whole[] = "{\"prompt\": \"Once upon a time\", \"max_tokens\": 2, \"temperature\": 0}";

/* ----------------------------------------------------------------- tests */

static void test_listen_errors(void)
{
    server_t sv;
    CU_ASSERT_FATAL(server_start(&sv, 1, 1, NULL, 0) == 0);
    static const char *const bad[] = { "nonsense", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:80x", "no.such.host.invalid:80" };
    coord_http_t *h = NULL;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ms_err_t err = { { 0 } };
        CU_ASSERT_EQUAL(coord_http_start(sv.sched, model, tok, "x", bad[i], NULL, &h, &err), -EINVAL);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad[i]));
        CU_ASSERT_PTR_NULL(h);
    }
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", sv.port);
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL(coord_http_start(sv.sched, model, tok, "x", addr, NULL, &h, &err), -EADDRINUSE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, addr));
    coord_http_params_t p = { .requests_max = COORD_HTTP_REQUESTS_MAX + 1 };
    CU_ASSERT_EQUAL(coord_http_start(sv.sched, model, tok, "x", "127.0.0.1:0", &p, &h, &err), -EINVAL);
    p = (coord_http_params_t){ .body_bytes_max = COORD_HTTP_BODY_BYTES_MAX + 1 };
    CU_ASSERT_EQUAL(coord_http_start(sv.sched, model, tok, "x", "127.0.0.1:0", &p, &h, &err), -EINVAL);
    CU_ASSERT_EQUAL(coord_http_start(NULL, model, tok, "x", "127.0.0.1:0", NULL, &h, &err), -EINVAL);
    coord_http_stop(&h); /* NULL is accepted */
    server_stop(&sv);
}

static void test_api_key(void)
{
    server_t sv;
    coord_http_params_t p = { .api_key = "s3cret" };
    CU_ASSERT_FATAL(server_start(&sv, 1, 1, &p, 0) == 0);
    char *buf = malloc(T_RESP_MAX);
    CU_ASSERT_FATAL(buf != NULL);
    CU_ASSERT_EQUAL(request(sv.port, "GET", "/v1/models", NULL, NULL, buf), 401);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"invalid_api_key\""));
    CU_ASSERT_EQUAL(request(sv.port, "GET", "/v1/models", "Authorization: Bearer s3cre\r\n", NULL, buf), 401);
    CU_ASSERT_EQUAL(request(sv.port, "GET", "/v1/models", "Authorization: Bearer s3cret2\r\n", NULL, buf), 401);
    CU_ASSERT_EQUAL(request(sv.port, "POST", "/v1/completions", "Authorization: Basic s3cret\r\n", short_whole, buf), 401);
    CU_ASSERT_EQUAL(request(sv.port, "GET", "/metrics", NULL, NULL, buf), 401);
    CU_ASSERT_EQUAL(request(sv.port, "GET", "/v1/models", "Authorization: Bearer s3cret\r\n", NULL, buf), 200);
    CU_ASSERT_EQUAL(request(sv.port, "POST", "/v1/completions", "Authorization: bearer s3cret\r\n", short_whole, buf), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"text_completion\""));
    CU_ASSERT_EQUAL(request(sv.port, "GET", "/health", NULL, NULL, buf), 200); /* probes need no key */
    free(buf);
    server_stop(&sv);
}

/* Beyond requests_max: 429 with Retry-After; a client hanging up frees its slot. */
static void test_in_flight_bound(void)
{
    server_t sv;
    coord_http_params_t p = { .requests_max = 1 };
    CU_ASSERT_FATAL(server_start(&sv, 2, 2, &p, 20000) == 0);
    char *buf = malloc(T_RESP_MAX);
    CU_ASSERT_FATAL(buf != NULL);
    int fd = client_send(sv.port, "POST", "/v1/completions", NULL, long_stream);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(wait_sched(sv.sched, 1, 0));
    CU_ASSERT_EQUAL(request(sv.port, "POST", "/v1/chat/completions", NULL,
                            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", buf), 429);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "Retry-After: 1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"rate_limit_error\""));
    close(fd); /* hangs up mid-stream: the request is cancelled long before its 200 tokens */
    CU_ASSERT(wait_sched(sv.sched, 0, 0));
    ms_sched_stats_t st;
    ms_sched_stats(sv.sched, &st);
    CU_ASSERT(st.tokens_generated < 100);
    CU_ASSERT_EQUAL(request(sv.port, "POST", "/v1/completions", NULL, short_whole, buf), 200);
    free(buf);
    server_stop(&sv);
}

/* One sequence, one queue place: the third request is refused with 503. */
static void test_queue_full(void)
{
    server_t sv;
    CU_ASSERT_FATAL(server_start(&sv, 1, 1, NULL, 20000) == 0);
    char *buf = malloc(T_RESP_MAX);
    CU_ASSERT_FATAL(buf != NULL);
    int a = client_send(sv.port, "POST", "/v1/completions", NULL, long_whole);
    CU_ASSERT_FATAL(a >= 0);
    CU_ASSERT_FATAL(wait_sched(sv.sched, 1, 0));
    int b = client_send(sv.port, "POST", "/v1/completions", NULL, short_whole);
    CU_ASSERT_FATAL(b >= 0);
    CU_ASSERT_FATAL(wait_sched(sv.sched, 1, 1));
    CU_ASSERT_EQUAL(request(sv.port, "POST", "/v1/completions", NULL, short_whole, buf), 503);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "Retry-After: 1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"server_error\""));
    close(a); /* the running one is cancelled; the queued one then completes */
    CU_ASSERT_EQUAL(client_read(b, buf, T_RESP_MAX), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"finish_reason\":\"length\""));
    free(buf);
    server_stop(&sv);
}

static void *stop_later(void *arg)
{
    server_t *sv = arg;
    coord_http_stop(&sv->http);
    return NULL;
}

/* Stopping answers every request in flight: 503 for a whole reply, an error
 * event for a stream; nothing hangs. */
static void test_stop_in_flight(void)
{
    server_t sv;
    CU_ASSERT_FATAL(server_start(&sv, 2, 2, NULL, 20000) == 0);
    char *buf = malloc(T_RESP_MAX);
    CU_ASSERT_FATAL(buf != NULL);
    int whole = client_send(sv.port, "POST", "/v1/completions", NULL, long_whole);
    int stream = client_send(sv.port, "POST", "/v1/completions", NULL, long_stream);
    CU_ASSERT_FATAL(whole >= 0 && stream >= 0);
    CU_ASSERT_FATAL(wait_sched(sv.sched, 2, 0));
    pthread_t t;
    CU_ASSERT_FATAL(pthread_create(&t, NULL, stop_later, &sv) == 0);
    CU_ASSERT_EQUAL(client_read(whole, buf, T_RESP_MAX), 503);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "shutting down"));
    CU_ASSERT_EQUAL(client_read(stream, buf, T_RESP_MAX), 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "data: {\"error\":"));
    CU_ASSERT_PTR_NULL(strstr(buf, "[DONE]"));
    pthread_join(t, NULL);
    CU_ASSERT_PTR_NULL(sv.http);
    CU_ASSERT(wait_sched(sv.sched, 0, 0)); /* both were cancelled */
    free(buf);
    server_stop(&sv);
}

/* ------------------------------------------------------------------ fixture */

static int suite_init(void)
{
    return fixture_init("http");
}

static int suite_clean(void)
{
    return fixture_clean();
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("http", suite_init, suite_clean);
    if (!s || !CU_add_test(s, "bad listen addresses, a port in use, bad parameters", test_listen_errors) ||
        !CU_add_test(s, "API key: 401 without it, 200 with it, /health open", test_api_key) ||
        !CU_add_test(s, "429 beyond the in-flight bound; hanging up cancels", test_in_flight_bound) ||
        !CU_add_test(s, "503 when the scheduler's queue is full", test_queue_full) ||
        !CU_add_test(s, "stopping answers requests in flight", test_stop_in_flight))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
