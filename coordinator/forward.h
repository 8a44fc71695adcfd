/* The forward pass: embeddings, attention with a KV cache, routing, experts
 * through an expert backend, output head. One step runs a batch of tokens
 * that may belong to different sequences (prefill chunks and decode alike). */
#ifndef MS_FORWARD_H
#define MS_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "err.h"
#include "kernels.h"
#include "model.h"
#include "pool.h"

typedef struct {
    int32_t n_ctx;       /* positions per sequence (KV cache length) */
    int32_t n_seq_max;   /* sequences held at once */
    int32_t n_batch_max; /* tokens per step, <= MS_BATCH_TOKENS_MAX */
    /* What the KV cache holds: MS_TYPE_F32 (also 0, a zeroed struct's value)
     * or MS_TYPE_F16 (half the memory and the bytes attention reads; each
     * cached key and value rounded to the nearest half). */
    ms_type_t kv_type;
} ms_forward_params_t;

/* One token of a step. */
typedef struct {
    int32_t token;
    int32_t seq;   /* [0, n_seq_max) */
    int32_t pos;   /* [0, n_ctx); at most the sequence's current length (no gaps) */
    bool logits;   /* produce this token's next-token logits */
} ms_batch_tok_t;

typedef struct ms_forward ms_forward_t;

/* All buffers (activations, KV cache, scratch) are allocated here; a step
 * allocates nothing. The model, pool, kernels and backend are borrowed and
 * must outlive the forward. -EINVAL (err says which parameter), -ENOMEM. */
int ms_forward_new(const ms_model_t *m, const ms_forward_params_t *p, ms_pool_t *pool, const ms_kernels_t *k,
                   ms_expert_backend_t *backend, ms_forward_t **ret_fwd, ms_err_t *err);
void ms_forward_destroy(ms_forward_t **self_p);

/* Runs batch[0..n) through the model. For each token with .logits set, in
 * batch order, writes one row of n_vocab logits to logits_out. -EINVAL for a
 * bad token id, sequence, position or batch size (err says which); errors
 * from the backend are passed on. */
int ms_forward_step(ms_forward_t *f, const ms_batch_tok_t *batch, int n, float *logits_out, ms_err_t *err);

/* Forgets sequence seq's cache (its length becomes 0). */
void ms_forward_seq_reset(ms_forward_t *f, int32_t seq);
int32_t ms_forward_seq_len(const ms_forward_t *f, int32_t seq);

/* Bytes of the KV cache allocated. */
uint64_t ms_forward_kv_bytes(const ms_forward_t *f);

/* Bytes a cache of n_seq sequences of n_ctx positions of type kv_type
 * (MS_TYPE_F32 or MS_TYPE_F16) takes for model m. */
uint64_t ms_forward_kv_bytes_for(const ms_model_t *m, int32_t n_seq, int32_t n_ctx, ms_type_t kv_type);

/* "f32" or "f16" to the cache type; -EINVAL for anything else. */
int ms_kv_type_parse(const char *s, ms_type_t *ret_type);

#endif
