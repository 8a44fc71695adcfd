/* A MoE model as described by its GGUF file: hyperparameters from the
 * metadata and validated views of every weight tensor inside the mapping.
 * Shared by the coordinator (dense part) and expertd (expert slices). */
#ifndef MS_MODEL_H
#define MS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"
#include "kernels.h"

typedef enum {
    MS_ARCH_LLAMA,    /* Mixtral: llama with experts */
    MS_ARCH_QWEN2MOE,
    MS_ARCH_QWEN3MOE,
    MS_ARCH_OLMOE,
    MS_ARCH_DEEPSEEK2, /* DeepSeek-V2, V2-Lite, V3, R1: latent attention, dense leading layers */
    MS_ARCH_COUNT
} ms_arch_t;

/* How router logits become expert scores (ARCH.expert_gating_func: 1 softmax, 2 sigmoid). */
typedef enum {
    MS_GATING_SOFTMAX,
    MS_GATING_SIGMOID,
    MS_GATING_COUNT
} ms_gating_t;

typedef enum {
    MS_QK_NORM_NONE,
    MS_QK_NORM_HEAD, /* RMSNorm of each head (qwen3moe), weight [head_dim] */
    MS_QK_NORM_FULL, /* RMSNorm of the whole projection (olmoe), weight [heads*head_dim] */
    MS_QK_NORM_COUNT
} ms_qk_norm_t;

typedef struct {
    ms_arch_t arch;
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;      /* d */
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;    /* of q and k (key_length) */
    int32_t head_dim_v;  /* of v (value_length) */
    int32_t n_rot;       /* rotated dims per head */
    int32_t n_expert;
    int32_t n_expert_used;
    int32_t n_ff_exp;    /* expert FFN width */
    int32_t n_ff_shexp;  /* shared expert FFN width; 0 when none */
    float eps;
    float rope_base;
    ms_rope_mode_t rope_mode;
    bool norm_topk;      /* renormalise the top-k gate weights */
    ms_qk_norm_t qk_norm;
    bool qkv_bias;
    bool shared_expert;
    /* deepseek2; the defaults below for every other architecture */
    int32_t n_layer_dense_lead; /* leading layers with a dense FFN, no routed experts (0) */
    int32_t n_ff;               /* their FFN width, feed_forward_length (0 when no dense layer) */
    int32_t q_lora_rank;        /* 0: q projected directly (attn_q) */
    int32_t kv_lora_rank;       /* > 0: multi-head latent attention with this latent width (0) */
    int32_t n_expert_shared;    /* shared experts, merged into one FFN of width n_ff_shexp (0) */
    int32_t n_expert_groups;    /* group-limited routing: experts in this many groups (1) */
    int32_t n_group_used;       /* groups a token may pick experts from (1) */
    ms_gating_t gating;         /* softmax */
    float expert_weights_scale; /* routed weights times this (1) */
    bool rope_yarn;             /* YaRN frequency scaling (false) */
    float rope_freq_scale;      /* 1 / rope.scaling.factor (1) */
    int32_t n_ctx_orig;         /* rope.scaling.original_context_length (0) */
    float yarn_beta_fast, yarn_beta_slow; /* YaRN correction range (32, 1) */
    float attn_scale;           /* softmax scale of attention scores: 1/sqrt(head_dim), times YaRN's mscale^2 */
} ms_hparams_t;

/* A weight matrix [n_out][n_in] (for experts: n_mat of them, back to back). */
typedef struct {
    ms_type_t type;
    const void *data;
    int64_t n_in, n_out;
    int64_t n_mat;        /* 1, or the expert count */
    uint64_t row_bytes;   /* ms_type_row_bytes(type, n_in) */
    uint64_t mat_bytes;   /* row_bytes * n_out: the stride between experts */
    const ms_gguf_tensor_t *tensor; /* where it lives in the file, for messages */
    bool r16;             /* Q8_0 laid out 16 rows at a time in memory (kernels.h) */
} ms_weight_t;

typedef struct {
    const float *attn_norm;               /* [d] */
    ms_weight_t wq, wk, wv, wo;           /* [H*hd][d], [Hkv*hd][d], [Hkv*hdv][d], [d][H*hdv] */
    const float *bq, *bk, *bv;            /* qkv biases or NULL */
    const float *q_norm, *k_norm;         /* see ms_qk_norm_t, or NULL */
    const float *ffn_norm;                /* [d] */
    ms_weight_t router;                   /* [E][d] */
    ms_weight_t gate_exps, up_exps;       /* E x [F][d] */
    ms_weight_t down_exps;                /* E x [d][F] */
    ms_weight_t shexp_gate;               /* [1][d] (qwen2moe) */
    ms_weight_t gate_shexp, up_shexp;     /* [Fs][d] */
    ms_weight_t down_shexp;               /* [d][Fs] */
    /* deepseek2: multi-head latent attention (docs/architecture.md); nope = head_dim - n_rot */
    ms_weight_t wq_a, wq_b;               /* [q_lora][d], [H*hd][q_lora]; wq instead when q_lora_rank is 0 */
    const float *q_a_norm;                /* [q_lora] */
    ms_weight_t wkv_a;                    /* [kv_lora + n_rot][d]: latent, then the shared rope key */
    const float *kv_a_norm;               /* [kv_lora] */
    ms_weight_t wkv_b;                    /* [H*(nope+hdv)][kv_lora], per head k_nope rows then v rows; or */
    ms_weight_t wk_b, wv_b;               /* H x [kv_lora][nope] and H x [hdv][kv_lora] (split files) */
    const float *exp_probs_b;             /* [E] routing selection bias, or NULL */
    ms_weight_t ffn_gate, ffn_up;         /* [n_ff][d] dense FFN of a leading layer */
    ms_weight_t ffn_down;                 /* [d][n_ff] */
    bool has_experts;                     /* routed experts (false: a leading dense layer) */
} ms_layer_t;

typedef struct {
    ms_hparams_t hp;
    ms_gguf_t *gguf;        /* owned */
    ms_weight_t tok_embd;   /* [vocab][d] */
    const float *output_norm;
    ms_weight_t output;     /* [vocab][d]; the embedding when tied */
    ms_layer_t *layers;     /* [n_layer] */
    uint64_t bytes_dense;   /* every tensor that is not a routed expert */
    uint64_t bytes_experts; /* the routed experts */
    uint64_t bytes_per_token; /* weight bytes read for one decoded token (top-k experts, one embedding row);
                               * with experts_remote the dense weights only */
    bool experts_remote;    /* loaded dense: routed-expert weights are not bound (n_mat 0, data NULL) */
} ms_model_t;

const char *ms_arch_name(ms_arch_t arch);

/* Reads the hyperparameters from g's metadata, plus the widths only tensors
 * state: n_ff_exp from the first layer holding blk.L.ffn_gate_exps.weight (0
 * when none does), n_vocab from token_embd.weight (0 when absent), n_ff_shexp
 * from the first layer holding blk.L.ffn_gate_shexp.weight when the architecture
 * has a shared expert (0 when none does). Works on full models, host shards and dense parts alike.
 * -EINVAL with err naming the file and key or tensor; *ret written only on success. */
int ms_hparams_read(const ms_gguf_t *g, ms_hparams_t *ret, ms_err_t *err);

/* Opens path and reads the hyperparameters and every tensor the architecture
 * needs, validating shapes and types. -EINVAL with err naming the file and the
 * key or tensor (unsupported architecture, unsupported tensor type, missing
 * tensor, wrong shape); -ENOENT/-EIO/-ENOMEM. */
int ms_model_load(const char *path, ms_model_t **ret_model, ms_err_t *err);
/* Same, over an already opened file whose ownership passes to the model
 * (also on failure: *gguf_p is consumed either way). */
int ms_model_from_gguf(ms_gguf_t **gguf_p, ms_model_t **ret_model, ms_err_t *err);

/* The dense part only, for a coordinator whose routed experts are computed
 * elsewhere: a pack's dense.gguf (no expert tensors) or a full model (its
 * expert tensors are ignored). Layers' gate/up/down_exps stay zeroed,
 * experts_remote is set, bytes_experts is 0 and bytes_per_token counts the
 * dense weights only. n_ff_exp comes from the expert tensors when present,
 * else from ARCH.expert_feed_forward_length, else ARCH.feed_forward_length
 * (-EINVAL naming the key when neither is there). Other errors as ms_model_load. */
int ms_model_load_dense(const char *path, ms_model_t **ret_model, ms_err_t *err);
int ms_model_from_gguf_dense(ms_gguf_t **gguf_p, ms_model_t **ret_model, ms_err_t *err);

/* How a program that computes with the weights opens a model. */
typedef struct {
    bool dense; /* the dense part only (as ms_model_load_dense): routed experts are on expert hosts */
    bool mmap;  /* weights stay in the file's mapping (the page cache), every page mapped in now;
                 * default (false): read into one read-only block of huge-page memory */
    void (*progress)(void *ctx, uint64_t done, uint64_t total); /* reading the weights; may be NULL */
    void *progress_ctx;
} ms_model_open_params_t;

/* ms_model_load or ms_model_load_dense, then the weights this process reads
 * (all, or with dense every tensor but the routed experts) made resident: read
 * into memory, or with mmap mapped in (a failure to map them in ahead is only
 * logged: the pages then fault in as they are first read). Errors as those,
 * plus the reader's (err names the file). */
int ms_model_open(const char *path, const ms_model_open_params_t *p, ms_model_t **ret_model, ms_err_t *err);

/* True for the routed experts' merged tensors ("blk.N.ffn_*_exps.weight"). */
bool ms_model_tensor_is_expert(const ms_gguf_tensor_t *t);

void ms_model_destroy(ms_model_t **self_p);

/* The first layer with routed experts (its shapes stand for every MoE layer). */
static inline const ms_layer_t *ms_model_moe_layer0(const ms_model_t *m)
{
    return &m->layers[m->hp.n_layer_dense_lead];
}

/* Pointer to expert e's matrix inside a 3-D expert weight. */
static inline const void *ms_weight_mat(const ms_weight_t *w, int64_t e)
{
    return (const char *)w->data + (uint64_t)e * w->mat_bytes;
}

#endif
