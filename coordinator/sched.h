/* The coordinator's scheduler: continuous batching of generation requests
 * over one forward pass. Requests join between steps and leave when done;
 * each step runs every active sequence's next token (and prompt chunks of
 * new ones) as one batch, each sequence with its own sampler. A request's
 * output equals its solo run with the same settings (the kernels' results
 * do not depend on the batch). Runs its own thread; callers on any thread
 * submit and cancel. */
#ifndef MS_SCHED_H
#define MS_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "err.h"
#include "model.h"
#include "pool.h"
#include "sampler.h"
#include "tokenizer.h"

#define MS_SCHED_QUEUE_MAX 4096 /* requests waiting for a slot, at most */

typedef struct {
    int32_t n_seq_max;    /* concurrent sequences (KV cache slots) */
    int32_t n_ctx;        /* positions per sequence */
    int32_t n_batch_max;  /* tokens per step */
    ms_type_t kv_type;    /* what the KV cache holds: MS_TYPE_F32 (0) or MS_TYPE_F16 */
    int32_t queue_max;    /* requests waiting for a slot before submit refuses (-EBUSY) */
    int n_threads;        /* threads of the scheduler's own pool (when pool is NULL) */
    ms_pool_t *pool;      /* borrowed: the pool the backend also uses; NULL: the scheduler starts its own */
} ms_sched_params_t;

typedef struct {
    int32_t n_predict;        /* tokens to generate at most */
    ms_sampler_params_t sp;
    bool parse_special;       /* special-token text in the prompt becomes special tokens */
    bool add_bos;             /* prepend BOS where the model adds one */
} ms_gen_params_t;

typedef struct {
    int32_t n_prompt, n_gen;
    double prefill_s, decode_s;  /* wall time of the request's prefill and decode */
    double queued_s;             /* waiting for a slot */
    int32_t n_decode_steps;      /* forward steps after the prefill (a generated token fed back) */
    uint64_t net_bytes_decode;   /* network backend: bytes sent + received during those steps' dispatches */
} ms_gen_stats_t;

typedef enum {
    MS_GEN_TOKEN,   /* text (valid UTF-8, possibly empty) of the next token; token -1: the
                     * bytes the UTF-8 stream held back, flushed just before DONE */
    MS_GEN_DONE,    /* finished: stats set; reason "stop" (end-of-text), "length" or "cancelled" */
    MS_GEN_ERROR,   /* failed: message set; no more events */
    MS_GEN_EVENT_COUNT
} ms_gen_event_kind_t;

typedef struct {
    ms_gen_event_kind_t kind;
    uint64_t id;
    const char *text;   /* MS_GEN_TOKEN */
    size_t len;
    int32_t token;      /* MS_GEN_TOKEN */
    const char *reason; /* MS_GEN_DONE */
    const ms_gen_stats_t *stats; /* MS_GEN_DONE */
    const char *message;         /* MS_GEN_ERROR */
} ms_gen_event_t;

/* Called on the scheduler thread, in order, for every event of a request;
 * must not block for long and must not call back into the scheduler except
 * ms_sched_cancel. After DONE or ERROR it is never called again for that id. */
typedef void (*ms_gen_cb_t)(void *ctx, const ms_gen_event_t *ev);

typedef struct ms_sched ms_sched_t;

/* Borrows the model, tokenizer and backend (they must outlive the scheduler);
 * starts its thread. -EINVAL/-ENOMEM with err set. */
int ms_sched_new(const ms_model_t *m, const ms_tokenizer_t *tok, ms_expert_backend_t *backend,
                 const ms_sched_params_t *p, ms_sched_t **ret_sched, ms_err_t *err);
/* Finishes: pending requests get MS_GEN_ERROR "server shutting down"; joins the thread. */
void ms_sched_destroy(ms_sched_t **self_p);

/* Queues a request; events arrive through cb. -EINVAL (bad params, empty
 * prompt; err says which), -E2BIG (prompt + n_predict longer than the
 * context), -EBUSY (queue full). *ret_id is set on success. */
int ms_sched_submit(ms_sched_t *s, const char *prompt, size_t len, const ms_gen_params_t *p, ms_gen_cb_t cb,
                    void *ctx, uint64_t *ret_id, ms_err_t *err);
/* Stops request id at the next step boundary (its DONE has reason
 * "cancelled"). -ENOENT when unknown or already finished. */
int ms_sched_cancel(ms_sched_t *s, uint64_t id);

typedef struct {
    uint32_t active, queued;
    uint64_t requests_done, tokens_generated, prompt_tokens;
    double decode_tok_s; /* over the last few seconds */
    double prefill_tok_s;
    uint64_t steps;      /* model steps completed: progress, for the watchdog */
} ms_sched_stats_t;
void ms_sched_stats(ms_sched_t *s, ms_sched_stats_t *ret);

/* The forward's figures for a summary line: KV cache bytes, threads, kernels name. */
uint64_t ms_sched_kv_bytes(const ms_sched_t *s);
int ms_sched_threads(const ms_sched_t *s);
const char *ms_sched_kernels_name(const ms_sched_t *s);

#endif
