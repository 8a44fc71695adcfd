/* Expert FFNs over a batch of tokens, combined per token. The one
 * implementation of the expert computation: expertd and the coordinator's
 * in-process backend both call it. */
#ifndef MS_EXPERT_H
#define MS_EXPERT_H

#include <stdint.h>

#include "kernels.h"
#include "model.h"
#include "pool.h"

typedef struct ms_expert_ws ms_expert_ws_t;

/* Workspace for up to max_rows (token, expert) pairs through experts shaped
 * like gate/up [F][d] and down [d][F]. -EINVAL for max_rows outside
 * [1, MS_BATCH_TOKENS_MAX * MS_TOPK_MAX] or mismatched shapes; -ENOMEM. */
int ms_expert_ws_new(const ms_weight_t *gate, const ms_weight_t *up, const ms_weight_t *down,
                     int64_t max_rows, ms_expert_ws_t **ret_ws);
void ms_expert_ws_destroy(ms_expert_ws_t **self_p);

/* out[t] = sum_j w[t*k + j] * down_e(silu(gate_e x_t) * up_e x_t), e = ids[t*k + j],
 * for t in [0, n_tok); slots with e < 0 are skipped; a token with no slot gets 0.
 *   x   [n_tok][d] with row stride ldx;  out [n_tok][d] with row stride ldo (written, not added)
 *   gate/up/down: n_mat experts each (a dense FFN is n_mat 1 with ids all 0).
 * Every expert's rows go through one matrix product per projection, so each
 * expert's weights are read once per call whatever the number of tokens.
 * -EINVAL when an id is >= n_mat or n_tok * k exceeds the workspace. No allocation. */
int ms_expert_ffn(ms_pool_t *pool, const ms_kernels_t *k, const ms_weight_t *gate, const ms_weight_t *up,
                  const ms_weight_t *down, const float *x, int64_t ldx, int n_tok, const int32_t *ids,
                  const float *w, int k_used, float *out, int64_t ldo, ms_expert_ws_t *ws);

#endif
