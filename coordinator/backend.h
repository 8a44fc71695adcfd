/* The expert backend: where a layer's routed-expert FFNs are computed. The
 * forward pass has one code path; the backend is in-process (this file's
 * local backend) or the network (expert hosts). submit/wait are split so the
 * coordinator can do local work (shared experts) while remote replies are in flight. */
#ifndef MS_BACKEND_H
#define MS_BACKEND_H

#include <stdint.h>

#include "err.h"
#include "kernels.h"
#include "model.h"
#include "pool.h"

typedef struct ms_expert_backend ms_expert_backend_t;

struct ms_expert_backend {
    const char *name;
    /* Starts out[t] = sum_j w[t*k+j] * FFN_{ids[t*k+j]}(x[t]) for layer il, t < n_tok.
     * x [n_tok][d], ids and w [n_tok][k] stay valid and unchanged until wait returns. */
    int (*submit)(ms_expert_backend_t *self, int il, const float *x, int n_tok, const int32_t *ids,
                  const float *w, int k);
    /* Completes the last submit: writes out [n_tok][d]. -errno with err set on
     * failure. A backend that blocks on anything but the pool sets the pool's
     * spin window to 0 first (ms_pool_set_spin), so no thread polls while it waits. */
    int (*wait)(ms_expert_backend_t *self, float *out, ms_err_t *err);
    void (*destroy)(ms_expert_backend_t *self);
};

/* Computes experts from the model's own tensors with the given pool and
 * kernels, for up to max_tokens tokens per step. -EINVAL, -ENOMEM. */
int ms_backend_local_new(const ms_model_t *m, ms_pool_t *pool, const ms_kernels_t *k, int max_tokens,
                         ms_expert_backend_t **ret_backend);

/* Accepts NULL and *self_p == NULL; NULLs *self_p. */
void ms_backend_destroy(ms_expert_backend_t **self_p);

#endif
