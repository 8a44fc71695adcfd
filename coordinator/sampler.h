/* Token sampling: greedy, temperature, top-k, top-p, min-p, repetition
 * penalty, with a seeded generator of its own so the same seed gives the
 * same tokens on every machine. Buffers are sized at creation. */
#ifndef MS_SAMPLER_H
#define MS_SAMPLER_H

#include <stdint.h>

typedef struct {
    float temp;           /* <= 0: greedy (argmax, lowest id on ties) */
    int32_t top_k;        /* <= 0: off */
    float top_p;          /* >= 1: off */
    float min_p;          /* <= 0: off */
    float repeat_penalty; /* 1: off; applied to the last repeat_last_n tokens (llama.cpp rule: logit>0 ? /p : *p) */
    int32_t repeat_last_n;
    uint64_t seed;
} ms_sampler_params_t;

/* temp 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0, repeat_last_n 64, seed 0. */
ms_sampler_params_t ms_sampler_defaults(void);

typedef struct ms_sampler ms_sampler_t;

/* -EINVAL for out-of-range params (temp < 0 or > 100, top_p outside (0,1],
 * min_p outside [0,1), repeat_penalty <= 0, repeat_last_n < 0, n_vocab outside
 * [1, MS_VOCAB_MAX]); -ENOMEM. */
int ms_sampler_new(const ms_sampler_params_t *p, int32_t n_vocab, ms_sampler_t **ret_sampler);
void ms_sampler_destroy(ms_sampler_t **self_p);

/* Adds a token (prompt or generated) to the repetition-penalty history. */
void ms_sampler_accept(ms_sampler_t *s, int32_t token);
/* Picks the next token from logits[0..n_vocab) (not modified). No allocation. */
int32_t ms_sampler_sample(ms_sampler_t *s, const float *logits);

#endif
