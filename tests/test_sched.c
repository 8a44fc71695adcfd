/* Tests for the scheduler: every request's tokens equal a solo run of the
 * forward pass (run's loop written out here), alone and 8 at once; cancel;
 * the queue bound; prompts too long; a failing expert step. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "forward.h"
#include "kernels.h"
#include "model.h"
#include "sampler.h"
#include "sched.h"
#include "tokenizer.h"

#define T_CTX 128
#define T_TOKENS_MAX 128
#define T_TEXT_MAX 65536

#include "tiny_model_fixture.h"

/* ------------------------------------------------- a backend that can fail */

typedef struct {
    ms_expert_backend_t base;
    ms_expert_backend_t *inner;
    int fail_waits; /* the next N waits fail */
    int delay_us;   /* every wait takes at least this long: a slow host */
} flaky_t;

static int flaky_submit(ms_expert_backend_t *self, int il, const float *x, int n, const int32_t *ids, const float *w,
                        int k)
{
    return ((flaky_t *)self)->inner->submit(((flaky_t *)self)->inner, il, x, n, ids, w, k);
}

static int flaky_wait(ms_expert_backend_t *self, float *out, ms_err_t *err)
{
    flaky_t *f = (flaky_t *)self;
    int rc = f->inner->wait(f->inner, out, err);
    if (f->delay_us)
        usleep((useconds_t)f->delay_us);
    if (!rc && __atomic_load_n(&f->fail_waits, __ATOMIC_SEQ_CST) > 0) {
        __atomic_sub_fetch(&f->fail_waits, 1, __ATOMIC_SEQ_CST);
        ms_err_set(err, "test host timed out");
        return -ETIMEDOUT;
    }
    return rc;
}

static void flaky_destroy(ms_expert_backend_t *self)
{
    flaky_t *f = (flaky_t *)self;
    ms_backend_destroy(&f->inner);
    free(f);
}

static flaky_t *flaky_new(void)
{
    flaky_t *f = calloc(1, sizeof(*f));
    f->base = (ms_expert_backend_t){ .name = "flaky", .submit = flaky_submit, .wait = flaky_wait,
                                     .destroy = flaky_destroy };
    if (ms_backend_local_new(model, pool, ms_kernels_best(), MS_BATCH_TOKENS_MAX, &f->inner)) {
        free(f);
        return NULL;
    }
    return f;
}

/* ------------------------------------------------------------- the solo run */

typedef struct {
    int32_t tokens[T_TOKENS_MAX];
    int n_tokens;
    char text[T_TEXT_MAX];
    size_t len;
    char reason[16];
} outcome_t;

/* run's loop: prefill in chunks of 7, accept the prompt, then sample, accept,
 * stop at EOG or n_predict, feed back. Its own forward, pool and backend. */
static int solo(const char *prompt, const ms_gen_params_t *gp, outcome_t *o)
{
    memset(o, 0, sizeof(*o));
    ms_pool_t *p = NULL;
    ms_expert_backend_t *b = NULL;
    ms_forward_t *f = NULL;
    ms_sampler_t *smp = NULL;
    ms_err_t err = { { 0 } };
    int32_t ids[512];
    size_t n = 0;
    int32_t vocab = model->hp.n_vocab;
    float *logits = malloc((size_t)vocab * 7 * sizeof(float));
    ms_forward_params_t fp = { .n_ctx = T_CTX, .n_seq_max = 1, .n_batch_max = 7 };
    int rc = ms_tokenizer_encode(tok, prompt, strlen(prompt), gp->add_bos && ms_tokenizer_add_bos(tok),
                                 gp->parse_special, ids, 512, &n);
    rc = rc ? rc : ms_pool_new(1, &p);
    rc = rc ? rc : ms_backend_local_new(model, p, ms_kernels_best(), 7, &b);
    rc = rc ? rc : ms_forward_new(model, &fp, p, ms_kernels_best(), b, &f, &err);
    rc = rc ? rc : ms_sampler_new(&gp->sp, vocab, &smp);
    for (size_t done = 0; !rc && done < n;) {
        ms_batch_tok_t bt[7];
        int m = (int)(n - done < 7 ? n - done : 7);
        for (int i = 0; i < m; i++)
            bt[i] = (ms_batch_tok_t){ .token = ids[done + i], .seq = 0, .pos = (int32_t)(done + i),
                                      .logits = done + i == n - 1 };
        rc = ms_forward_step(f, bt, m, logits, &err);
        done += (size_t)m;
    }
    for (size_t i = 0; !rc && i < n; i++)
        ms_sampler_accept(smp, ids[i]);
    strcpy(o->reason, "length");
    ms_utf8_stream_t us;
    ms_utf8_stream_init(&us);
    int32_t pos = (int32_t)n;
    while (!rc && o->n_tokens < gp->n_predict) {
        int32_t t = ms_sampler_sample(smp, logits);
        ms_sampler_accept(smp, t);
        if (ms_tokenizer_is_eog(tok, t)) {
            strcpy(o->reason, "stop");
            break;
        }
        o->tokens[o->n_tokens++] = t;
        size_t len;
        const char *piece = ms_tokenizer_piece(tok, t, &len);
        o->len += ms_utf8_stream_push(&us, piece, len, o->text + o->len); /* as run prints it */
        if (o->n_tokens == gp->n_predict)
            break;
        ms_batch_tok_t bt = { .token = t, .seq = 0, .pos = pos++, .logits = true };
        rc = ms_forward_step(f, &bt, 1, logits, &err);
    }
    o->len += ms_utf8_stream_finish(&us, o->text + o->len);
    ms_sampler_destroy(&smp);
    ms_forward_destroy(&f);
    ms_backend_destroy(&b);
    ms_pool_destroy(&p);
    free(logits);
    return rc;
}

/* ------------------------------------------------------- collecting events */

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    outcome_t o;
    bool done, error, bad_order;
    char message[512];
    ms_gen_stats_t st;
} collector_t;

static void collector_init(collector_t *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
}

static void on_event(void *ctx, const ms_gen_event_t *ev)
{
    collector_t *c = ctx;
    pthread_mutex_lock(&c->lock);
    if (c->done || c->error)
        c->bad_order = true;
    if (ev->kind == MS_GEN_TOKEN) {
        if (ev->token >= 0 && c->o.n_tokens < T_TOKENS_MAX)
            c->o.tokens[c->o.n_tokens++] = ev->token;
        if (c->o.len + ev->len < T_TEXT_MAX) {
            memcpy(c->o.text + c->o.len, ev->text, ev->len);
            c->o.len += ev->len;
        }
    } else if (ev->kind == MS_GEN_DONE) {
        c->done = true;
        snprintf(c->o.reason, sizeof(c->o.reason), "%s", ev->reason);
        c->st = *ev->stats;
    } else {
        c->error = true;
        snprintf(c->message, sizeof(c->message), "%s", ev->message);
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

/* Waits up to 60 s for DONE or ERROR (or, with min_tokens, that many tokens). */
static bool collector_wait(collector_t *c, int min_tokens)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 60;
    pthread_mutex_lock(&c->lock);
    int rc = 0;
    while (!c->done && !c->error && (min_tokens == 0 || c->o.n_tokens < min_tokens) && rc == 0)
        rc = pthread_cond_timedwait(&c->cond, &c->lock, &ts);
    pthread_mutex_unlock(&c->lock);
    return rc == 0;
}

static ms_gen_params_t greedy(int n)
{
    ms_gen_params_t g = { .n_predict = n, .sp = ms_sampler_defaults(), .parse_special = true, .add_bos = true };
    g.sp.temp = 0;
    return g;
}

static ms_sched_params_t sched_params(int seqs, int queue)
{
    return (ms_sched_params_t){ .n_seq_max = seqs, .n_ctx = T_CTX, .n_batch_max = 16, .queue_max = queue,
                                .n_threads = 2 };
}

static void check_same(const collector_t *c, const outcome_t *want)
{
    if (c->error)
        fprintf(stderr, "request failed: %s\n", c->message);
    CU_ASSERT(c->done && !c->error && !c->bad_order);
    CU_ASSERT_EQUAL(c->o.n_tokens, want->n_tokens);
    CU_ASSERT(c->o.n_tokens == want->n_tokens &&
              !memcmp(c->o.tokens, want->tokens, sizeof(int32_t) * (size_t)want->n_tokens));
    CU_ASSERT_STRING_EQUAL(c->o.reason, want->reason);
    CU_ASSERT(c->o.len == want->len && !memcmp(c->o.text, want->text, want->len));
    CU_ASSERT_EQUAL(c->st.n_gen, want->n_tokens);
}

/* ------------------------------------------------------------------- tests */

static ms_sched_t *new_sched(ms_expert_backend_t *b, ms_sched_params_t p)
{
    ms_sched_t *s = NULL;
    ms_err_t err = { { 0 } };
    int rc = ms_sched_new(model, tok, b, &p, &s, &err);
    if (rc)
        fprintf(stderr, "ms_sched_new: %s\n", err.msg);
    return s;
}

static void test_greedy_equals_solo(void)
{
    ms_expert_backend_t *b = NULL;
    CU_ASSERT_FATAL(ms_backend_local_new(model, pool, ms_kernels_best(), 16, &b) == 0);
    ms_sched_t *s = new_sched(b, sched_params(2, 4));
    CU_ASSERT_FATAL(s != NULL);
    const char *prompt = "The quick brown fox jumps over the lazy dog";
    ms_gen_params_t g = greedy(40);
    outcome_t want;
    CU_ASSERT_FATAL(solo(prompt, &g, &want) == 0);
    CU_ASSERT(want.n_tokens > 0);
    collector_t c;
    collector_init(&c);
    uint64_t id = 0;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_sched_submit(s, prompt, strlen(prompt), &g, on_event, &c, &id, &err) == 0);
    CU_ASSERT(id > 0);
    CU_ASSERT(collector_wait(&c, 0));
    check_same(&c, &want);
    CU_ASSERT(c.st.n_prompt > 0 && c.st.prefill_s > 0);
    CU_ASSERT_EQUAL(ms_sched_cancel(s, id), -ENOENT); /* finished */
    ms_sched_stats_t st;
    ms_sched_stats(s, &st);
    CU_ASSERT(st.active == 0 && st.queued == 0 && st.requests_done == 1);
    CU_ASSERT_EQUAL(st.tokens_generated, (uint64_t)want.n_tokens);
    ms_sched_destroy(&s);
    CU_ASSERT_PTR_NULL(s);
    ms_backend_destroy(&b);
}

static void test_concurrent_equal_solo(void)
{
    enum { N = 8 };
    static const char *const prompts[N] = { "hello world", "The quick brown fox", "a b c d e f g", "Once upon a time",
                                            "zzz", "1 2 3 4 5 6 7 8 9 10", "moe experts route tokens", "x" };
    ms_expert_backend_t *b = NULL;
    CU_ASSERT_FATAL(ms_backend_local_new(model, pool, ms_kernels_best(), 16, &b) == 0);
    ms_sched_t *s = new_sched(b, sched_params(3, N)); /* fewer slots than requests: some wait */
    CU_ASSERT_FATAL(s != NULL);
    static collector_t c[N];
    static outcome_t want[N];
    ms_gen_params_t g[N];
    for (int i = 0; i < N; i++) {
        g[i] = greedy(10 + 3 * i);
        g[i].sp.temp = i % 2 ? 0.0f : 0.5f + 0.25f * (float)i;
        g[i].sp.seed = 1000u + (uint64_t)i;
        g[i].sp.repeat_penalty = i == 3 ? 1.3f : 1.0f;
        CU_ASSERT_FATAL(solo(prompts[i], &g[i], &want[i]) == 0);
        collector_init(&c[i]);
    }
    ms_err_t err = { { 0 } };
    for (int i = 0; i < N; i++) {
        uint64_t id;
        CU_ASSERT_EQUAL(ms_sched_submit(s, prompts[i], strlen(prompts[i]), &g[i], on_event, &c[i], &id, &err), 0);
    }
    for (int i = 0; i < N; i++) {
        CU_ASSERT(collector_wait(&c[i], 0));
        check_same(&c[i], &want[i]);
    }
    ms_sched_destroy(&s);
    ms_backend_destroy(&b);
}

static void test_cancel(void)
{
    flaky_t *f = flaky_new();
    CU_ASSERT_FATAL(f != NULL);
    f->delay_us = 1000;
    ms_expert_backend_t *b = &f->base;
    ms_sched_t *s = new_sched(b, sched_params(1, 4));
    CU_ASSERT_FATAL(s != NULL);
    ms_gen_params_t g = greedy(T_CTX - 16);
    g.sp.temp = 1.0f; /* sampled: unlikely to stop at EOG at once */
    collector_t a, q;
    collector_init(&a);
    collector_init(&q);
    uint64_t ida, idq;
    ms_err_t err = { { 0 } };
    CU_ASSERT_FATAL(ms_sched_submit(s, "abc", 3, &g, on_event, &a, &ida, &err) == 0);
    CU_ASSERT_FATAL(ms_sched_submit(s, "def", 3, &g, on_event, &q, &idq, &err) == 0); /* waits: one slot */
    CU_ASSERT(collector_wait(&a, 1));
    CU_ASSERT_EQUAL(ms_sched_cancel(s, idq), 0);
    int rc = ms_sched_cancel(s, ida);
    CU_ASSERT(collector_wait(&a, 0));
    CU_ASSERT(collector_wait(&q, 0));
    /* unless it met end-of-text first (then cancel found nothing) */
    CU_ASSERT_STRING_EQUAL(a.o.reason, rc == 0 ? "cancelled" : "stop");
    CU_ASSERT(rc == 0 || rc == -ENOENT);
    CU_ASSERT(a.o.n_tokens < g.n_predict);
    f->delay_us = 0;
    CU_ASSERT(q.done && !strcmp(q.o.reason, "cancelled") && q.o.n_tokens == 0);
    CU_ASSERT_EQUAL(ms_sched_cancel(s, ida), -ENOENT);
    CU_ASSERT_EQUAL(ms_sched_cancel(s, 999999), -ENOENT);
    /* the scheduler serves the next request */
    collector_t n;
    collector_init(&n);
    ms_gen_params_t g2 = greedy(5);
    outcome_t want;
    CU_ASSERT_FATAL(solo("ghi", &g2, &want) == 0);
    CU_ASSERT_FATAL(ms_sched_submit(s, "ghi", 3, &g2, on_event, &n, &ida, &err) == 0);
    CU_ASSERT(collector_wait(&n, 0));
    check_same(&n, &want);
    ms_sched_destroy(&s);
    ms_backend_destroy(&b);
}

static void test_queue_full_and_shutdown(void)
{
    flaky_t *f = flaky_new();
    CU_ASSERT_FATAL(f != NULL);
    /* the first request's prompt step outlasts the three submits, so it
     * cannot end (a sampled end-of-text) and free its slot in between */
    f->delay_us = 100000;
    ms_expert_backend_t *b = &f->base;
    ms_sched_t *s = new_sched(b, sched_params(1, 1));
    CU_ASSERT_FATAL(s != NULL);
    ms_gen_params_t g = greedy(T_CTX - 16);
    g.sp.temp = 1.0f;
    collector_t c[3];
    int rcs[3];
    uint64_t id;
    ms_err_t err = { { 0 } };
    for (int i = 0; i < 3; i++) {
        collector_init(&c[i]);
        rcs[i] = ms_sched_submit(s, "abc", 3, &g, on_event, &c[i], &id, &err);
    }
    /* one slot and one queue place: the first two are taken, the third
     * refused, whether or not the scheduler thread has started the first */
    CU_ASSERT_EQUAL(rcs[0], 0);
    CU_ASSERT_EQUAL(rcs[1], 0);
    CU_ASSERT_EQUAL(rcs[2], -EBUSY);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "queue is full"));
    ms_sched_destroy(&s); /* in-flight and waiting requests fail with a message */
    for (int i = 0; i < 3; i++) {
        if (rcs[i])
            continue;
        CU_ASSERT(c[i].error || (c[i].done && !strcmp(c[i].o.reason, "stop")));
        if (c[i].error)
            CU_ASSERT_STRING_EQUAL(c[i].message, "server shutting down");
        CU_ASSERT(!c[i].bad_order);
    }
    ms_backend_destroy(&b);
}

static void test_bad_requests(void)
{
    ms_expert_backend_t *b = NULL;
    CU_ASSERT_FATAL(ms_backend_local_new(model, pool, ms_kernels_best(), 16, &b) == 0);
    ms_sched_t *s = new_sched(b, sched_params(1, 2));
    CU_ASSERT_FATAL(s != NULL);
    collector_t c;
    collector_init(&c);
    uint64_t id = 77;
    ms_err_t err = { { 0 } };
    ms_gen_params_t g = greedy(T_CTX);
    CU_ASSERT_EQUAL(ms_sched_submit(s, "abc", 3, &g, on_event, &c, &id, &err), -E2BIG); /* prompt + n_predict */
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "context"));
    char longp[4 * T_CTX + 1];
    for (int i = 0; i < 4 * T_CTX; i++)
        longp[i] = i % 2 ? ' ' : 'a' + i % 26;
    longp[4 * T_CTX] = '\0';
    g = greedy(1);
    CU_ASSERT_EQUAL(ms_sched_submit(s, longp, strlen(longp), &g, on_event, &c, &id, &err), -E2BIG);
    g = greedy(-1);
    CU_ASSERT_EQUAL(ms_sched_submit(s, "abc", 3, &g, on_event, &c, &id, &err), -EINVAL);
    g = greedy(4);
    g.sp.temp = -1;
    CU_ASSERT_EQUAL(ms_sched_submit(s, "abc", 3, &g, on_event, &c, &id, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "sampling"));
    g = greedy(4);
    g.add_bos = false;
    CU_ASSERT_EQUAL(ms_sched_submit(s, "", 0, &g, on_event, &c, &id, &err), -EINVAL);
    CU_ASSERT_EQUAL(ms_sched_submit(s, "abc", 3, &g, NULL, &c, &id, &err), -EINVAL);
    CU_ASSERT_EQUAL(id, 77u); /* untouched on failure */
    CU_ASSERT(!c.done && !c.error);
    ms_sched_destroy(&s);
    /* bad scheduler parameters */
    ms_sched_params_t p = sched_params(0, 1);
    CU_ASSERT_EQUAL(ms_sched_new(model, tok, b, &p, &s, &err), -EINVAL);
    p = sched_params(32, 1); /* more sequences than tokens per step */
    CU_ASSERT_EQUAL(ms_sched_new(model, tok, b, &p, &s, &err), -EINVAL);
    p = sched_params(1, -1);
    CU_ASSERT_EQUAL(ms_sched_new(model, tok, b, &p, &s, &err), -EINVAL);
    CU_ASSERT_PTR_NULL(s);
    ms_backend_destroy(&b);
}

static void test_step_failure(void)
{
    flaky_t *f = flaky_new();
    CU_ASSERT_FATAL(f != NULL);
    ms_sched_t *s = new_sched(&f->base, sched_params(2, 4));
    CU_ASSERT_FATAL(s != NULL);
    __atomic_store_n(&f->fail_waits, 1, __ATOMIC_SEQ_CST);
    collector_t c;
    collector_init(&c);
    uint64_t id;
    ms_err_t err = { { 0 } };
    ms_gen_params_t g = greedy(8);
    CU_ASSERT_FATAL(ms_sched_submit(s, "abc", 3, &g, on_event, &c, &id, &err) == 0);
    CU_ASSERT(collector_wait(&c, 0));
    CU_ASSERT(c.error && !c.done);
    CU_ASSERT_PTR_NOT_NULL(strstr(c.message, "test host timed out"));
    /* and it keeps serving */
    outcome_t want;
    CU_ASSERT_FATAL(solo("abc", &g, &want) == 0);
    collector_t d;
    collector_init(&d);
    CU_ASSERT_FATAL(ms_sched_submit(s, "abc", 3, &g, on_event, &d, &id, &err) == 0);
    CU_ASSERT(collector_wait(&d, 0));
    check_same(&d, &want);
    ms_sched_destroy(&s);
    ms_expert_backend_t *bb = &f->base;
    ms_backend_destroy(&bb);
}

/* ------------------------------------------------------------------ fixture */

static int suite_init(void)
{
    return fixture_init("sched");
}

static int suite_clean(void)
{
    return fixture_clean();
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("sched", suite_init, suite_clean);
    if (!s || !CU_add_test(s, "greedy request equals its solo run", test_greedy_equals_solo) ||
        !CU_add_test(s, "8 concurrent requests equal their solo runs", test_concurrent_equal_solo) ||
        !CU_add_test(s, "cancel active and queued requests", test_cancel) ||
        !CU_add_test(s, "queue full is -EBUSY; shutdown fails pending requests", test_queue_full_and_shutdown) ||
        !CU_add_test(s, "bad requests and parameters", test_bad_requests) ||
        !CU_add_test(s, "a failed step fails its requests, serving goes on", test_step_failure))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
