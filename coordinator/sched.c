/* The scheduler (sched.h): one thread owns the forward pass and runs every
 * active sequence's next token, plus prompt chunks of new ones, as one step. */
#include "sched.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "forward.h"
#include "kernels.h"
#include "limits.h"
#include "ms_assert.h"

#define SCHED_RATE_WINDOW_S 5.0 /* tokens/s figures look this far back */
#define SCHED_RATE_RING     256 /* steps remembered for them */
#define SCHED_PIECE_BYTES   (3 * MS_TOKEN_BYTES_MAX + 8)

typedef struct sched_req {
    uint64_t id;
    int32_t *prompt;          /* [n_prompt] token ids */
    int32_t n_prompt;
    ms_gen_params_t gp;
    ms_sampler_t *sampler;    /* the prompt already accepted */
    ms_gen_cb_t cb;
    void *ctx;
    double t_submit;
    bool cancel;              /* under the lock */
    struct sched_req *next;   /* queue link */
} sched_req_t;

/* One KV cache slot of the forward pass and the request it holds. */
typedef struct {
    sched_req_t *r;           /* NULL: free (written under the lock) */
    ms_utf8_stream_t us;
    int32_t n_fed;            /* prompt tokens through the model */
    int32_t pos;              /* position of the next token fed */
    int32_t last;             /* the sampled token to feed next (decoding) */
    bool decoding;
    bool in_step;             /* has tokens in the step being run */
    int row;                  /* this step's logits row, -1 for none */
    int32_t gen, steps;
    double t_start, t_decode;
    uint64_t net0;
    ms_gen_stats_t st;
} sched_slot_t;

typedef struct {
    double t;
    uint32_t gen, prompt;
} sched_rate_t;

struct ms_sched {
    const ms_model_t *m;
    const ms_tokenizer_t *tok;
    ms_expert_backend_t *backend;
    bool hold_admission;        /* the backend waits for an idle moment to switch placement */
    uint64_t steps;             /* model steps completed (under lock) */
    ms_sched_params_t p;
    ms_pool_t *pool, *own_pool;
    const ms_kernels_t *k;
    ms_forward_t *fwd;
    sched_slot_t *slots;      /* [n_seq_max] */
    ms_batch_tok_t *batch;    /* [n_batch_max] */
    float *logits;            /* [n_seq_max][n_vocab]: a sequence has at most one row per step */
    char piece[SCHED_PIECE_BYTES];
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* under the lock */
    bool stop;
    sched_req_t *head, *tail;
    uint32_t n_queued, n_active;
    uint64_t next_id;
    uint64_t requests_done, tokens_generated, prompt_tokens;
    sched_rate_t rate[SCHED_RATE_RING];
    uint32_t rate_n, rate_at;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void req_free(sched_req_t *r)
{
    if (!r)
        return;
    ms_sampler_destroy(&r->sampler);
    free(r->prompt);
    free(r);
}

/* ---------------------------------------------------------------- events */

static void emit_text(sched_req_t *r, int32_t token, const char *text, size_t len)
{
    ms_gen_event_t ev = { .kind = MS_GEN_TOKEN, .id = r->id, .text = text, .len = len, .token = token };
    r->cb(r->ctx, &ev);
}

static void emit_error(sched_req_t *r, const char *msg)
{
    ms_gen_event_t ev = { .kind = MS_GEN_ERROR, .id = r->id, .message = msg };
    r->cb(r->ctx, &ev);
}

/* Frees the slot (under the lock, so cancel never finds a request whose
 * last event is on its way) and its KV cache; the caller reports and frees the request. */
static sched_req_t *slot_detach(ms_sched_t *s, int32_t i, bool done)
{
    sched_slot_t *sl = &s->slots[i];
    sched_req_t *r = sl->r;
    pthread_mutex_lock(&s->lock);
    sl->r = NULL;
    s->n_active--;
    if (done) {
        s->requests_done++;
        s->tokens_generated += (uint64_t)sl->gen;
    }
    pthread_mutex_unlock(&s->lock);
    ms_forward_seq_reset(s->fwd, i);
    return r;
}

static uint64_t net_bytes(const ms_sched_t *s)
{
    ms_backend_net_stats_t ns;
    if (ms_backend_net_stats(s->backend, &ns))
        return 0;
    return ns.bytes_sent + ns.bytes_received;
}

/* Flushes the UTF-8 stream, reports DONE with the request's stats, frees the slot. */
static void finish(ms_sched_t *s, int32_t i, const char *reason)
{
    sched_slot_t *sl = &s->slots[i];
    sched_req_t *r = sl->r;
    char tail[16];
    size_t n = ms_utf8_stream_finish(&sl->us, tail);
    if (n)
        emit_text(r, -1, tail, n);
    double t = now_s();
    sl->st.n_prompt = r->n_prompt;
    sl->st.n_gen = sl->gen;
    sl->st.n_decode_steps = sl->steps;
    if (sl->decoding) {
        sl->st.decode_s = t - sl->t_decode;
        sl->st.net_bytes_decode = net_bytes(s) - sl->net0;
    } else {
        sl->st.prefill_s = t - sl->t_start;
    }
    ms_gen_event_t ev = { .kind = MS_GEN_DONE, .id = r->id, .reason = reason, .stats = &sl->st };
    slot_detach(s, i, true);
    r->cb(r->ctx, &ev);
    req_free(r);
}

static void fail(ms_sched_t *s, int32_t i, const char *msg)
{
    sched_req_t *r = slot_detach(s, i, false);
    emit_error(r, msg);
    req_free(r);
}

/* ------------------------------------------------------------ admission */

static void slot_start(ms_sched_t *s, int32_t i, sched_req_t *r, double t)
{
    sched_slot_t *sl = &s->slots[i];
    *sl = (sched_slot_t){ .r = r, .row = -1, .t_start = t };
    ms_utf8_stream_init(&sl->us);
    sl->st.queued_s = t - r->t_submit;
}

/* Under the lock: moves queued requests into free slots. */
static void admit(ms_sched_t *s)
{
    if (s->hold_admission && s->n_active > 0)
        return; /* the backend switches its placement once the requests in flight are done */
    double t = now_s();
    for (int32_t i = 0; i < s->p.n_seq_max && s->head; i++) {
        if (s->slots[i].r)
            continue;
        sched_req_t *r = s->head;
        s->head = r->next;
        if (!s->head)
            s->tail = NULL;
        r->next = NULL;
        s->n_queued--;
        s->n_active++;
        s->prompt_tokens += (uint64_t)r->n_prompt;
        slot_start(s, i, r, t);
    }
}

/* Under the lock: unlinks cancelled requests that wait for a slot. */
static sched_req_t *take_cancelled_queued(ms_sched_t *s)
{
    sched_req_t *out = NULL, **pp = &s->head;
    s->tail = NULL;
    while (*pp) {
        sched_req_t *r = *pp;
        if (r->cancel) {
            *pp = r->next;
            r->next = out;
            out = r;
            s->n_queued--;
        } else {
            s->tail = r;
            pp = &r->next;
        }
    }
    return out;
}

/* Reports requests cancelled before they got a slot. */
static void end_unstarted(sched_req_t *r)
{
    while (r) {
        sched_req_t *next = r->next;
        ms_gen_stats_t st = { .n_prompt = r->n_prompt };
        ms_gen_event_t ev = { .kind = MS_GEN_DONE, .id = r->id, .reason = "cancelled", .stats = &st };
        r->cb(r->ctx, &ev);
        req_free(r);
        r = next;
    }
}

/* Under the lock: which active requests were cancelled (one flag per slot). */
static void take_cancelled(ms_sched_t *s, bool *cancelled)
{
    for (int32_t i = 0; i < s->p.n_seq_max; i++)
        cancelled[i] = s->slots[i].r && s->slots[i].r->cancel;
}

/* ---------------------------------------------------------------- stepping */

/* Decoding sequences first (one token each, logits wanted), then prompt
 * chunks up to n_batch_max tokens. Returns the batch size. */
static int build_batch(ms_sched_t *s)
{
    int n = 0, rows = 0;
    for (int32_t i = 0; i < s->p.n_seq_max; i++) {
        sched_slot_t *sl = &s->slots[i];
        sl->row = -1;
        sl->in_step = sl->r && sl->decoding;
        if (!sl->in_step)
            continue;
        s->batch[n++] = (ms_batch_tok_t){ .token = sl->last, .seq = i, .pos = sl->pos++, .logits = true };
        sl->row = rows++;
    }
    for (int32_t i = 0; i < s->p.n_seq_max && n < s->p.n_batch_max; i++) {
        sched_slot_t *sl = &s->slots[i];
        if (!sl->r || sl->decoding)
            continue;
        if (sl->n_fed == 0)
            sl->t_start = now_s();
        sl->in_step = true;
        while (sl->n_fed < sl->r->n_prompt && n < s->p.n_batch_max) {
            bool last = sl->n_fed == sl->r->n_prompt - 1;
            s->batch[n++] = (ms_batch_tok_t){ .token = sl->r->prompt[sl->n_fed], .seq = i, .pos = sl->n_fed,
                                              .logits = last };
            sl->n_fed++;
            if (last)
                sl->row = rows++;
        }
    }
    return n;
}

/* The run loop's rule for one sampled token: EOG stops without text;
 * otherwise its text goes out and, unless the budget or the context is
 * spent, it is fed back next step. */
static void on_logits(ms_sched_t *s, int32_t i, const float *logits, double t)
{
    sched_slot_t *sl = &s->slots[i];
    sched_req_t *r = sl->r;
    if (!sl->decoding) {
        sl->decoding = true;
        sl->st.prefill_s = t - sl->t_start;
        sl->t_decode = t;
        sl->pos = r->n_prompt;
        sl->net0 = net_bytes(s);
    } else {
        sl->steps++;
    }
    if (sl->gen >= r->gp.n_predict) {
        finish(s, i, "length");
        return;
    }
    int32_t tok = ms_sampler_sample(r->sampler, logits);
    ms_sampler_accept(r->sampler, tok);
    if (ms_tokenizer_is_eog(s->tok, tok)) {
        finish(s, i, "stop");
        return;
    }
    sl->gen++;
    size_t len;
    const char *piece = ms_tokenizer_piece(s->tok, tok, &len);
    size_t n = ms_utf8_stream_push(&sl->us, piece ? piece : "", len > MS_TOKEN_BYTES_MAX ? MS_TOKEN_BYTES_MAX : len,
                                   s->piece);
    emit_text(r, tok, s->piece, n);
    if (sl->gen >= r->gp.n_predict || sl->pos >= s->p.n_ctx) {
        finish(s, i, "length");
        return;
    }
    sl->last = tok;
}

static void rate_add(ms_sched_t *s, double t, uint32_t gen, uint32_t prompt)
{
    pthread_mutex_lock(&s->lock);
    s->rate[s->rate_at] = (sched_rate_t){ .t = t, .gen = gen, .prompt = prompt };
    s->rate_at = (s->rate_at + 1) % SCHED_RATE_RING;
    if (s->rate_n < SCHED_RATE_RING)
        s->rate_n++;
    s->steps++;
    pthread_mutex_unlock(&s->lock);
}

static void step(ms_sched_t *s)
{
    int n = build_batch(s);
    if (n == 0)
        return;
    ms_err_t err = { { 0 } };
    int rc = ms_forward_step(s->fwd, s->batch, n, s->logits, &err);
    double t = now_s();
    if (rc) {
        char msg[MS_ERR_MSG_BYTES + 32];
        snprintf(msg, sizeof(msg), "the model step failed: %s", err.msg[0] ? err.msg : strerror(-rc));
        for (int32_t i = 0; i < s->p.n_seq_max; i++)
            if (s->slots[i].r && s->slots[i].in_step)
                fail(s, i, msg);
        return;
    }
    uint32_t gen = 0, prompt = 0;
    for (int j = 0; j < n; j++)
        prompt += !s->slots[s->batch[j].seq].decoding;
    for (int32_t i = 0; i < s->p.n_seq_max; i++) {
        if (!s->slots[i].r || s->slots[i].row < 0)
            continue;
        gen += s->slots[i].decoding;
        on_logits(s, i, s->logits + (size_t)s->slots[i].row * (size_t)s->m->hp.n_vocab, t);
    }
    rate_add(s, t, gen, prompt);
}

/* Waits for work; false when the scheduler stops. Cancelled requests end here. */
static bool wait_work(ms_sched_t *s, bool *cancelled)
{
    pthread_mutex_lock(&s->lock);
    while (!s->stop && !s->head && s->n_active == 0) {
        ms_pool_set_spin(s->pool, 0); /* idle: no worker polls */
        if (!s->backend->tick) {
            pthread_cond_wait(&s->cond, &s->lock);
            continue;
        }
        /* the backend's housekeeping (heartbeats) runs on this thread, which owns it */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += MS_BACKEND_TICK_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
        pthread_mutex_unlock(&s->lock);
        s->hold_admission = s->backend->tick(s->backend, true) == 1;
        pthread_mutex_lock(&s->lock);
    }
    bool go = !s->stop;
    sched_req_t *dropped = NULL;
    if (go) {
        dropped = take_cancelled_queued(s);
        admit(s);
        take_cancelled(s, cancelled);
    }
    pthread_mutex_unlock(&s->lock);
    end_unstarted(dropped);
    return go;
}

static void drain(ms_sched_t *s)
{
    for (int32_t i = 0; i < s->p.n_seq_max; i++)
        if (s->slots[i].r)
            fail(s, i, "server shutting down");
    pthread_mutex_lock(&s->lock);
    sched_req_t *r = s->head;
    s->head = s->tail = NULL;
    s->n_queued = 0;
    pthread_mutex_unlock(&s->lock);
    while (r) {
        sched_req_t *next = r->next;
        emit_error(r, "server shutting down");
        req_free(r);
        r = next;
    }
}

static void *sched_main(void *arg)
{
    ms_sched_t *s = arg;
    bool *cancelled = calloc((size_t)s->p.n_seq_max, sizeof(bool));
    MS_ASSERT(cancelled);
    while (wait_work(s, cancelled)) {
        for (int32_t i = 0; i < s->p.n_seq_max; i++)
            if (cancelled[i])
                finish(s, i, "cancelled");
        step(s);
        if (s->backend->tick) /* idle once nothing is decoding: a placement switch waits for that */
            s->hold_admission = s->backend->tick(s->backend, s->n_active == 0) == 1;
    }
    drain(s);
    free(cancelled);
    return NULL;
}

/* ---------------------------------------------------------------- creation */

static int check_params(const ms_model_t *m, const ms_tokenizer_t *tok, const ms_expert_backend_t *b,
                        const ms_sched_params_t *p, ms_err_t *err)
{
    if (!m || !tok || !b || !p) {
        ms_err_set(err, "scheduler: model, tokenizer, backend and parameters are required");
        return -EINVAL;
    }
    if (p->n_seq_max < 1 || p->n_seq_max > p->n_batch_max || p->n_batch_max > MS_BATCH_TOKENS_MAX ||
        p->n_ctx < 1 || p->n_ctx > MS_CONTEXT_MAX || p->queue_max < 0 || p->queue_max > MS_SCHED_QUEUE_MAX ||
        (!p->pool && (p->n_threads < 1 || p->n_threads > MS_THREADS_MAX))) {
        ms_err_set(err, "scheduler: %d sequences (1..batch %d, at most %d tokens), context %d (1..%d), queue %d "
                   "(0..%d) or %d threads (1..%d) out of range", p->n_seq_max, p->n_batch_max, MS_BATCH_TOKENS_MAX,
                   p->n_ctx, MS_CONTEXT_MAX, p->queue_max, MS_SCHED_QUEUE_MAX, p->n_threads, MS_THREADS_MAX);
        return -EINVAL;
    }
    if (ms_tokenizer_n_vocab(tok) > m->hp.n_vocab) {
        ms_err_set(err, "scheduler: the tokenizer has %d tokens, the model's output only %d",
                   ms_tokenizer_n_vocab(tok), m->hp.n_vocab);
        return -EINVAL;
    }
    return 0;
}

static int alloc_sched(ms_sched_t *s, ms_err_t *err)
{
    const ms_sched_params_t *p = &s->p;
    int rc = p->pool ? 0 : ms_pool_new(p->n_threads, &s->own_pool);
    if (rc) {
        ms_err_set(err, "scheduler: cannot start %d threads: %s", p->n_threads, strerror(-rc));
        return rc;
    }
    s->pool = p->pool ? p->pool : s->own_pool;
    s->k = ms_kernels_best();
    ms_forward_params_t fp = { .n_ctx = p->n_ctx, .n_seq_max = p->n_seq_max, .n_batch_max = p->n_batch_max,
                               .kv_type = p->kv_type };
    rc = ms_forward_new(s->m, &fp, s->pool, s->k, s->backend, &s->fwd, err);
    if (rc)
        return rc;
    s->slots = calloc((size_t)p->n_seq_max, sizeof(*s->slots));
    s->batch = calloc((size_t)p->n_batch_max, sizeof(*s->batch));
    s->logits = malloc((size_t)p->n_seq_max * (size_t)s->m->hp.n_vocab * sizeof(float));
    if (!s->slots || !s->batch || !s->logits) {
        ms_err_set(err, "scheduler: out of memory");
        return -ENOMEM;
    }
    return 0;
}

static void free_sched(ms_sched_t *s)
{
    ms_forward_destroy(&s->fwd);
    ms_pool_destroy(&s->own_pool);
    free(s->slots);
    free(s->batch);
    free(s->logits);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

int ms_sched_new(const ms_model_t *m, const ms_tokenizer_t *tok, ms_expert_backend_t *backend,
                 const ms_sched_params_t *p, ms_sched_t **ret_sched, ms_err_t *err)
{
    int rc = check_params(m, tok, backend, p, err);
    if (rc)
        return rc;
    ms_sched_t *s = calloc(1, sizeof(*s));
    if (!s) {
        ms_err_set(err, "scheduler: out of memory");
        return -ENOMEM;
    }
    *s = (ms_sched_t){ .m = m, .tok = tok, .backend = backend, .p = *p, .next_id = 1 };
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    rc = alloc_sched(s, err);
    if (!rc) {
        rc = -pthread_create(&s->thread, NULL, sched_main, s);
        if (rc)
            ms_err_set(err, "scheduler: cannot start its thread: %s", strerror(-rc));
    }
    if (rc) {
        free_sched(s);
        return rc;
    }
    *ret_sched = s;
    return 0;
}

void ms_sched_destroy(ms_sched_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_sched_t *s = *self_p;
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    free_sched(s);
    *self_p = NULL;
}

/* ---------------------------------------------------------------- requests */

static int check_gen(const ms_sched_t *s, const ms_gen_params_t *p, const char *prompt, size_t len, ms_err_t *err)
{
    if (!p || (!prompt && len)) {
        ms_err_set(err, "generation parameters are required");
        return -EINVAL;
    }
    if (p->n_predict < 0 || p->n_predict > s->p.n_ctx) {
        ms_err_set(err, "n_predict %d is out of range (0..%d, the context)", p->n_predict, s->p.n_ctx);
        return p->n_predict < 0 ? -EINVAL : -E2BIG;
    }
    return 0;
}

/* Tokenizes the prompt and makes the request's sampler (prompt accepted). */
static int prepare(const ms_sched_t *s, const char *prompt, size_t len, const ms_gen_params_t *p, sched_req_t *r,
                   ms_err_t *err)
{
    size_t n = 0;
    int rc = coord_encode(s->tok, prompt ? prompt : "", len, p->add_bos && ms_tokenizer_add_bos(s->tok),
                          p->parse_special, &r->prompt, &n);
    if (rc == -ENOSPC) {
        ms_err_set(err, "the prompt is longer than %d tokens", MS_PROMPT_TOKENS_MAX);
        return -E2BIG;
    }
    if (rc) {
        ms_err_set(err, "the prompt could not be tokenized: %s", strerror(-rc));
        return rc;
    }
    if (n == 0) {
        ms_err_set(err, "the prompt is empty and the model adds no BOS token");
        return -EINVAL;
    }
    if ((int64_t)n + p->n_predict > s->p.n_ctx) {
        ms_err_set(err, "the prompt (%zu tokens) and n_predict (%d) exceed the context of %d tokens", n,
                   p->n_predict, s->p.n_ctx);
        return -E2BIG;
    }
    r->n_prompt = (int32_t)n;
    rc = ms_sampler_new(&p->sp, s->m->hp.n_vocab, &r->sampler);
    if (rc) {
        ms_err_set(err, "invalid sampling settings (temperature 0..100, top_p in (0,1], min_p in [0,1), "
                        "repeat penalty > 0, repeat_last_n >= 0)");
        return rc;
    }
    for (int32_t i = 0; i < r->n_prompt; i++)
        ms_sampler_accept(r->sampler, r->prompt[i]);
    return 0;
}

/* Queues r and hands its id back under the lock: once it is queued the
 * scheduler thread may finish and free r at any moment. */
static int enqueue(ms_sched_t *s, sched_req_t *r, uint64_t *ret_id, ms_err_t *err)
{
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (s->stop) {
        ms_err_set(err, "the server is shutting down");
        rc = -ESHUTDOWN;
    } else if (s->n_active + s->n_queued >= (uint32_t)s->p.n_seq_max + (uint32_t)s->p.queue_max) {
        /* every sequence taken or promised, and queue_max more waiting: counted
         * together, so a request the scheduler has not moved into its free
         * sequence yet does not hold a queue place */
        ms_err_set(err, "the request queue is full (%d waiting); try again later", s->p.queue_max);
        rc = -EBUSY;
    } else {
        r->id = s->next_id++;
        *ret_id = r->id;
        r->t_submit = now_s();
        if (s->tail)
            s->tail->next = r;
        else
            s->head = r;
        s->tail = r;
        s->n_queued++;
        pthread_cond_signal(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int ms_sched_submit(ms_sched_t *s, const char *prompt, size_t len, const ms_gen_params_t *p, ms_gen_cb_t cb,
                    void *ctx, uint64_t *ret_id, ms_err_t *err)
{
    if (!s || !cb || !ret_id) {
        ms_err_set(err, "scheduler, callback and id are required");
        return -EINVAL;
    }
    int rc = check_gen(s, p, prompt, len, err);
    if (rc)
        return rc;
    sched_req_t *r = calloc(1, sizeof(*r));
    if (!r) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    r->gp = *p;
    r->cb = cb;
    r->ctx = ctx;
    rc = prepare(s, prompt, len, p, r, err);
    uint64_t id = 0;
    if (!rc)
        rc = enqueue(s, r, &id, err);
    if (rc) {
        req_free(r);
        return rc;
    }
    *ret_id = id;
    return 0;
}

int ms_sched_cancel(ms_sched_t *s, uint64_t id)
{
    if (!s)
        return -EINVAL;
    int rc = -ENOENT;
    pthread_mutex_lock(&s->lock);
    for (sched_req_t *r = s->head; r && rc; r = r->next)
        if (r->id == id)
            rc = 0, r->cancel = true;
    for (int32_t i = 0; i < s->p.n_seq_max && rc; i++)
        if (s->slots[i].r && s->slots[i].r->id == id)
            rc = 0, s->slots[i].r->cancel = true;
    if (!rc)
        pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void ms_sched_stats(ms_sched_t *s, ms_sched_stats_t *ret)
{
    double t = now_s();
    pthread_mutex_lock(&s->lock);
    *ret = (ms_sched_stats_t){ .active = s->n_active, .queued = s->n_queued, .requests_done = s->requests_done,
                               .tokens_generated = s->tokens_generated, .prompt_tokens = s->prompt_tokens,
                               .steps = s->steps };
    uint64_t gen = 0, prompt = 0;
    double oldest = t;
    for (uint32_t j = 0; j < s->rate_n; j++) {
        const sched_rate_t *e = &s->rate[(s->rate_at + SCHED_RATE_RING - 1 - j) % SCHED_RATE_RING];
        if (t - e->t > SCHED_RATE_WINDOW_S)
            break;
        gen += e->gen;
        prompt += e->prompt;
        oldest = e->t;
    }
    pthread_mutex_unlock(&s->lock);
    /* the window spans from the oldest step counted to now, at least 1 s so one step is not a burst */
    double span = t - oldest < 1.0 ? 1.0 : t - oldest;
    ret->decode_tok_s = (double)gen / span;
    ret->prefill_tok_s = (double)prompt / span;
}

uint64_t ms_sched_kv_bytes(const ms_sched_t *s)
{
    return ms_forward_kv_bytes(s->fwd);
}

int ms_sched_threads(const ms_sched_t *s)
{
    return ms_pool_size(s->pool);
}

const char *ms_sched_kernels_name(const ms_sched_t *s)
{
    return s->k->name;
}
