/* In-process expert backend: the embedded mode's experts, computed with the
 * same common/expert.c code that expertd runs. */
#include "backend.h"

#include <errno.h>
#include <stdlib.h>

#include "expert.h"

typedef struct {
    ms_expert_backend_t base; /* first: the interface pointer is this struct's address */
    const ms_model_t *m;
    ms_pool_t *pool;
    const ms_kernels_t *k;
    ms_expert_ws_t *ws;
    /* the pending submit */
    int il, n_tok, k_used;
    const float *x;
    const int32_t *ids;
    const float *w;
    int pending;
} local_backend_t;

static int local_submit(ms_expert_backend_t *self, int il, const float *x, int n_tok, const int32_t *ids,
                        const float *w, int k)
{
    local_backend_t *b = (local_backend_t *)self;
    if (il < 0 || il >= b->m->hp.n_layer)
        return -EINVAL;
    b->il = il;
    b->x = x;
    b->n_tok = n_tok;
    b->ids = ids;
    b->w = w;
    b->k_used = k;
    b->pending = 1;
    return 0;
}

static int local_wait(ms_expert_backend_t *self, float *out, ms_err_t *err)
{
    local_backend_t *b = (local_backend_t *)self;
    if (!b->pending) {
        ms_err_set(err, "expert backend: wait without a submitted batch");
        return -EINVAL;
    }
    b->pending = 0;
    const ms_layer_t *L = &b->m->layers[b->il];
    int64_t d = b->m->hp.n_embd;
    int rc = ms_expert_ffn(b->pool, b->k, &L->gate_exps, &L->up_exps, &L->down_exps, b->x, d, b->n_tok,
                           b->ids, b->w, b->k_used, out, d, b->ws);
    if (rc)
        ms_err_set(err, "layer %d: expert computation refused the batch (%d tokens x %d experts)", b->il,
                   b->n_tok, b->k_used);
    return rc;
}

static void local_destroy(ms_expert_backend_t *self)
{
    local_backend_t *b = (local_backend_t *)self;
    ms_expert_ws_destroy(&b->ws);
    free(b);
}

int ms_backend_local_new(const ms_model_t *m, ms_pool_t *pool, const ms_kernels_t *k, int max_tokens,
                         ms_expert_backend_t **ret_backend)
{
    if (m->experts_remote) /* a dense part: its experts live on expert hosts */
        return -EINVAL;
    local_backend_t *b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    const ms_layer_t *L = ms_model_moe_layer0(m); /* deepseek2's first layers are dense */
    int rc = ms_expert_ws_new(&L->gate_exps, &L->up_exps, &L->down_exps,
                              (int64_t)max_tokens * m->hp.n_expert_used, &b->ws);
    if (rc) {
        free(b);
        return rc;
    }
    b->base = (ms_expert_backend_t){ .name = "local", .submit = local_submit, .wait = local_wait,
                                     .destroy = local_destroy };
    b->m = m;
    b->pool = pool;
    b->k = k;
    *ret_backend = &b->base;
    return 0;
}

void ms_backend_destroy(ms_expert_backend_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    (*self_p)->destroy(*self_p);
    *self_p = NULL;
}
