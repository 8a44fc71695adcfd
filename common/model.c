/* Reads a MoE model's hyperparameters and binds its tensors, checking every
 * shape and type against what the architecture needs before anything runs. */
#include "model.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "kernels.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "shard.h"
#include "uring_load.h"

static const char *const arch_names[MS_ARCH_COUNT] = { "llama", "qwen2moe", "qwen3moe", "olmoe", "deepseek2" };

/* YaRN's correction range when the file does not state it (DeepSeek's and llama.cpp's defaults). */
#define YARN_BETA_FAST_DEFAULT 32.0f
#define YARN_BETA_SLOW_DEFAULT 1.0f

const char *ms_arch_name(ms_arch_t arch)
{
    return arch < MS_ARCH_COUNT ? arch_names[arch] : "?";
}

typedef struct {
    const ms_gguf_t *g;
    ms_hparams_t *hp;
    ms_model_t *m;    /* NULL while only the hyperparameters are read */
    const char *arch;
    const char *path;
    bool dense;       /* routed experts live elsewhere: not bound, not required */
    ms_err_t *err;
} loader_t;

/* Reads ARCH.<suffix> as an integer in [lo, hi]; def < 0 means required. */
static int get_int(loader_t *ld, const char *suffix, int64_t def, int64_t lo, int64_t hi, int32_t *ret)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", ld->arch, suffix);
    uint64_t v;
    int rc = ms_gguf_get_u64(ld->g, key, &v);
    if (rc == -ENOENT && def >= 0) {
        *ret = (int32_t)def;
        return 0;
    }
    if (rc == -ENOENT) {
        ms_err_set(ld->err, "%s: metadata key '%s' is missing (a %s model needs it)", ld->path, key, ld->arch);
        return -EINVAL;
    }
    if (rc < 0 || (int64_t)v < lo || (int64_t)v > hi || v > (uint64_t)hi) {
        ms_err_set(ld->err, "%s: metadata key '%s' must be an integer in [%" PRId64 ", %" PRId64 "]",
                   ld->path, key, lo, hi);
        return -EINVAL;
    }
    *ret = (int32_t)v;
    return 0;
}

static bool has_key(const loader_t *ld, const char *suffix)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", ld->arch, suffix);
    return ms_gguf_find_kv(ld->g, key) != NULL;
}

static int get_float(loader_t *ld, const char *suffix, float def, bool required, float *ret)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", ld->arch, suffix);
    float v;
    int rc = ms_gguf_get_f32(ld->g, key, &v);
    if (rc == -ENOENT && !required) {
        *ret = def;
        return 0;
    }
    if (rc == -ENOENT) {
        ms_err_set(ld->err, "%s: metadata key '%s' is missing (a %s model needs it)", ld->path, key, ld->arch);
        return -EINVAL;
    }
    if (rc < 0 || !isfinite(v) || v <= 0) {
        ms_err_set(ld->err, "%s: metadata key '%s' must be a positive float", ld->path, key);
        return -EINVAL;
    }
    *ret = v;
    return 0;
}

static int read_arch(loader_t *ld)
{
    ms_str_t s;
    if (ms_gguf_get_str(ld->g, "general.architecture", &s) < 0) {
        ms_err_set(ld->err, "%s: metadata key 'general.architecture' is missing or not a string", ld->path);
        return -EINVAL;
    }
    for (int a = 0; a < MS_ARCH_COUNT; a++) {
        if (ms_str_eq(s, arch_names[a])) {
            ld->hp->arch = (ms_arch_t)a;
            ld->arch = arch_names[a];
            return 0;
        }
    }
    ms_err_set(ld->err, "%s: architecture '%.*s' is not supported (supported: llama (Mixtral), qwen2moe, qwen3moe, olmoe,"
               " deepseek2)",
               ld->path, (int)(s.len > 64 ? 64 : s.len), s.ptr);
    return -EINVAL;
}

/* ARCH.expert_gating_func: absent or 0 (older V2 files) means softmax. */
static int read_gating(loader_t *ld)
{
    int32_t g;
    int rc = get_int(ld, "expert_gating_func", 0, 0, 2, &g);
    if (rc)
        return rc;
    ld->hp->gating = g == 2 ? MS_GATING_SIGMOID : MS_GATING_SOFTMAX;
    return 0;
}

/* Group-limited routing: n_expert_groups equal groups, a token's experts come
 * from its n_group_used best groups. */
static int read_groups(loader_t *ld)
{
    ms_hparams_t *hp = ld->hp;
    int rc = get_int(ld, "expert_group_count", 1, 1, hp->n_expert, &hp->n_expert_groups);
    rc = rc ? rc : get_int(ld, "expert_group_used_count", hp->n_expert_groups, 1, hp->n_expert_groups, &hp->n_group_used);
    if (rc)
        return rc;
    int32_t per_group = hp->n_expert / hp->n_expert_groups;
    if (hp->n_expert % hp->n_expert_groups != 0 || (int64_t)per_group * hp->n_group_used < hp->n_expert_used) {
        ms_err_set(ld->err, "%s: %s.expert_group_count (%d) must divide expert_count (%d), and the %d groups used"
                   " must hold expert_used_count (%d) experts", ld->path, ld->arch, hp->n_expert_groups,
                   hp->n_expert, hp->n_group_used, hp->n_expert_used);
        return -EINVAL;
    }
    return 0;
}

/* rope.scaling.*: none, or YaRN with the attention scale correction
 * mscale = 1 + yarn_log_multiplier * ln(factor) applied squared to the
 * softmax scale (DeepSeek's softmax_scale * mscale^2; the rotation itself
 * keeps unit magnitude, as both DeepSeek and llama.cpp leave it). */
static int read_rope_scaling(loader_t *ld)
{
    ms_hparams_t *hp = ld->hp;
    char key[128];
    snprintf(key, sizeof(key), "%s.rope.scaling.type", ld->arch);
    ms_str_t type;
    int rc = ms_gguf_get_str(ld->g, key, &type);
    if (rc == -ENOENT || (rc == 0 && ms_str_eq(type, "none")))
        return 0;
    if (rc < 0 || !ms_str_eq(type, "yarn")) {
        ms_err_set(ld->err, "%s: metadata key '%s' must be \"yarn\" or \"none\" (other rope scaling is not supported)",
                   ld->path, key);
        return -EINVAL;
    }
    float factor, log_mul = 0.0f;
    rc = get_float(ld, "rope.scaling.factor", 0, true, &factor);
    rc = rc ? rc : get_int(ld, "rope.scaling.original_context_length", -1, 1, MS_CONTEXT_MAX, &hp->n_ctx_orig);
    rc = rc ? rc : get_float(ld, "rope.scaling.yarn_beta_fast", YARN_BETA_FAST_DEFAULT, false, &hp->yarn_beta_fast);
    rc = rc ? rc : get_float(ld, "rope.scaling.yarn_beta_slow", YARN_BETA_SLOW_DEFAULT, false, &hp->yarn_beta_slow);
    snprintf(key, sizeof(key), "%s.rope.scaling.yarn_log_multiplier", ld->arch);
    if (!rc && ms_gguf_find_kv(ld->g, key) && (ms_gguf_get_f32(ld->g, key, &log_mul) < 0 || !isfinite(log_mul) ||
                                               log_mul < 0)) {
        ms_err_set(ld->err, "%s: metadata key '%s' must be a float >= 0", ld->path, key);
        rc = -EINVAL;
    }
    if (rc)
        return rc;
    if (factor < 1.0f) {
        ms_err_set(ld->err, "%s: %s.rope.scaling.factor (%g) must be at least 1", ld->path, ld->arch, factor);
        return -EINVAL;
    }
    hp->rope_yarn = true;
    hp->rope_freq_scale = 1.0f / factor;
    float mscale = 1.0f + log_mul * logf(factor);
    hp->attn_scale = mscale * mscale / sqrtf((float)hp->head_dim);
    return 0;
}

/* Latent attention sizes, dense leading layers, shared experts, gating. */
static int read_deepseek2(loader_t *ld)
{
    ms_hparams_t *hp = ld->hp;
    int rc = get_int(ld, "leading_dense_block_count", -1, 0, hp->n_layer - 1, &hp->n_layer_dense_lead);
    if (!rc && hp->n_layer_dense_lead > 0)
        rc = get_int(ld, "feed_forward_length", -1, 1, MS_FF_MAX, &hp->n_ff);
    rc = rc ? rc : get_int(ld, "attention.q_lora_rank", 0, 0, MS_HIDDEN_MAX, &hp->q_lora_rank);
    rc = rc ? rc : get_int(ld, "attention.kv_lora_rank", -1, 1, MS_HIDDEN_MAX, &hp->kv_lora_rank);
    rc = rc ? rc : get_int(ld, "expert_shared_count", -1, 0, MS_EXPERTS_MAX, &hp->n_expert_shared);
    rc = rc ? rc : get_float(ld, "expert_weights_scale", 0, true, &hp->expert_weights_scale);
    rc = rc ? rc : read_gating(ld);
    rc = rc ? rc : read_groups(ld);
    rc = rc ? rc : read_rope_scaling(ld);
    if (rc)
        return rc;
    if (hp->n_rot < 2 || hp->n_rot >= hp->head_dim) {
        ms_err_set(ld->err, "%s: %s.rope.dimension_count (%d) must be in [2, key length %d): the key has a rotated"
                   " and an unrotated part", ld->path, ld->arch, hp->n_rot, hp->head_dim);
        return -EINVAL;
    }
    hp->shared_expert = hp->n_expert_shared > 0;
    return 0;
}

static int read_hparams(loader_t *ld)
{
    ms_hparams_t *hp = ld->hp;
    int rc = 0;
    rc = rc ? rc : get_int(ld, "embedding_length", -1, 1, MS_HIDDEN_MAX, &hp->n_embd);
    rc = rc ? rc : get_int(ld, "block_count", -1, 1, MS_LAYERS_MAX, &hp->n_layer);
    rc = rc ? rc : get_int(ld, "attention.head_count", -1, 1, MS_HEADS_MAX, &hp->n_head);
    rc = rc ? rc : get_int(ld, "attention.head_count_kv", hp->n_head, 1, MS_HEADS_MAX, &hp->n_head_kv);
    rc = rc ? rc : get_int(ld, "context_length", 4096, 1, MS_CONTEXT_MAX, &hp->n_ctx_train);
    rc = rc ? rc : get_int(ld, "expert_count", -1, 1, MS_EXPERTS_MAX, &hp->n_expert);
    rc = rc ? rc : get_int(ld, "expert_used_count", -1, 1, MS_TOPK_MAX, &hp->n_expert_used);
    if (rc)
        return rc;
    /* deepseek2 states its head sizes (no default from the hidden size); newer
     * files give the per-head sizes in the _mla keys and the latent's in the plain ones */
    bool ds = hp->arch == MS_ARCH_DEEPSEEK2;
    bool mla_keys = ds && has_key(ld, "attention.key_length_mla");
    int32_t hd_default = ds ? -1 : hp->n_embd / hp->n_head;
    rc = rc ? rc : get_int(ld, mla_keys ? "attention.key_length_mla" : "attention.key_length", hd_default, 2,
                           MS_HEAD_DIM_MAX, &hp->head_dim);
    rc = rc ? rc : get_int(ld, mla_keys ? "attention.value_length_mla" : "attention.value_length",
                           ds ? -1 : hp->head_dim, 1, MS_HEAD_DIM_MAX, &hp->head_dim_v);
    rc = rc ? rc : get_int(ld, "rope.dimension_count", ds ? -1 : hp->head_dim, 0, MS_HEAD_DIM_MAX, &hp->n_rot);
    rc = rc ? rc : get_float(ld, "attention.layer_norm_rms_epsilon", 0, true, &hp->eps);
    rc = rc ? rc : get_float(ld, "rope.freq_base", 10000.0f, false, &hp->rope_base);
    if (rc)
        return rc;
    if (hp->n_head % hp->n_head_kv != 0) {
        ms_err_set(ld->err, "%s: %s.attention.head_count (%d) is not a multiple of head_count_kv (%d)",
                   ld->path, ld->arch, hp->n_head, hp->n_head_kv);
        return -EINVAL;
    }
    if (hp->n_expert_used > hp->n_expert) {
        ms_err_set(ld->err, "%s: %s.expert_used_count (%d) exceeds expert_count (%d)",
                   ld->path, ld->arch, hp->n_expert_used, hp->n_expert);
        return -EINVAL;
    }
    if (hp->n_rot % 2 != 0 || hp->n_rot > hp->head_dim || hp->head_dim % 2 != 0) {
        ms_err_set(ld->err, "%s: %s.rope.dimension_count (%d) must be even and at most the head size (%d)",
                   ld->path, ld->arch, hp->n_rot, hp->head_dim);
        return -EINVAL;
    }
    /* deepseek2's rope dims are stored interleaved, as llama.cpp rotates them (adjacent pairs) */
    hp->rope_mode = hp->arch == MS_ARCH_LLAMA || hp->arch == MS_ARCH_DEEPSEEK2 ? MS_ROPE_NORM : MS_ROPE_NEOX;
    hp->norm_topk = hp->arch == MS_ARCH_LLAMA || hp->arch == MS_ARCH_QWEN3MOE;
    char key[128];
    snprintf(key, sizeof(key), "%s.expert_weights_norm", ld->arch);
    bool b;
    if (ms_gguf_get_bool(ld->g, key, &b) == 0)
        hp->norm_topk = b;
    hp->qk_norm = hp->arch == MS_ARCH_QWEN3MOE ? MS_QK_NORM_HEAD
                : hp->arch == MS_ARCH_OLMOE    ? MS_QK_NORM_FULL
                                               : MS_QK_NORM_NONE;
    hp->qkv_bias = hp->arch == MS_ARCH_QWEN2MOE;
    hp->shared_expert = hp->arch == MS_ARCH_QWEN2MOE;
    hp->n_expert_groups = hp->n_group_used = 1;
    hp->gating = MS_GATING_SOFTMAX;
    hp->expert_weights_scale = 1.0f;
    hp->rope_freq_scale = 1.0f;
    hp->yarn_beta_fast = YARN_BETA_FAST_DEFAULT;
    hp->yarn_beta_slow = YARN_BETA_SLOW_DEFAULT;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    return hp->arch == MS_ARCH_DEEPSEEK2 ? read_deepseek2(ld) : 0;
}

static const char *type_name(uint32_t t)
{
    const ms_type_traits_t *tr = ms_type_traits(t);
    return tr ? tr->name : "?";
}

/* Finds name (printf-style with the layer), checks its shape equals ne[0..n_dims). */
static const ms_gguf_tensor_t *find_shaped(loader_t *ld, const char *name, int n_dims, const int64_t *ne, bool optional)
{
    const ms_gguf_tensor_t *t = ms_gguf_find_tensor(ld->g, name);
    if (!t) {
        if (!optional)
            ms_err_set(ld->err, "%s: tensor '%s' is missing (a %s model needs it)", ld->path, name, ld->arch);
        return NULL;
    }
    bool ok = true;
    for (int i = 0; i < MS_GGUF_DIMS_MAX; i++) {
        int64_t want = i < n_dims ? ne[i] : 1;
        if (t->ne[i] != want)
            ok = false;
    }
    if (!ok) {
        char want[96], got[96];
        snprintf(want, sizeof(want), "[%" PRId64 ", %" PRId64 ", %" PRId64 "]", ne[0], n_dims > 1 ? ne[1] : 1, n_dims > 2 ? ne[2] : 1);
        snprintf(got, sizeof(got), "[%" PRId64 ", %" PRId64 ", %" PRId64 "]", t->ne[0], t->ne[1], t->ne[2]);
        ms_err_set(ld->err, "%s: tensor '%s' has shape %s, expected %s from the metadata", ld->path, name, got, want);
        return NULL;
    }
    return t;
}

static int bind_vec(loader_t *ld, const char *name, int64_t n, bool optional, const float **ret)
{
    int64_t ne[1] = { n };
    const ms_gguf_tensor_t *t = find_shaped(ld, name, 1, ne, optional);
    if (!t) {
        *ret = NULL;
        return optional && !ms_gguf_find_tensor(ld->g, name) ? 0 : -EINVAL;
    }
    if (t->type != MS_TYPE_F32) {
        ms_err_set(ld->err, "%s: tensor '%s' has type %s; vectors (norms, biases) must be F32",
                   ld->path, name, type_name(t->type));
        return -EINVAL;
    }
    *ret = t->data;
    ld->m->bytes_dense += t->nbytes;
    return 0;
}

/* Binds a matrix [n_out][n_in] (n_mat > 1: a 3-D stack of n_mat matrices). */
static int bind_mat(loader_t *ld, const char *name, int64_t n_in, int64_t n_out, int64_t n_mat, bool optional, ms_weight_t *w)
{
    int64_t ne[3] = { n_in, n_out, n_mat };
    int n_dims = n_mat > 1 ? 3 : 2;
    memset(w, 0, sizeof(*w));
    const ms_gguf_tensor_t *t = find_shaped(ld, name, n_dims, ne, optional);
    if (!t)
        return optional && !ms_gguf_find_tensor(ld->g, name) ? 0 : -EINVAL;
    const ms_type_traits_t *tr = ms_type_traits(t->type);
    if (!tr || !tr->computable) {
        ms_err_set(ld->err, "%s: tensor '%s' has type %s, which moeshard cannot compute yet "
                            "(supported: F32, F16, BF16, Q8_0, Q4_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                   ld->path, name, type_name(t->type));
        return -EINVAL;
    }
    w->type = t->type;
    w->data = t->data;
    w->n_in = n_in;
    w->n_out = n_out;
    w->n_mat = n_mat;
    w->row_bytes = ms_type_row_bytes(t->type, (uint64_t)n_in);
    w->mat_bytes = w->row_bytes * (uint64_t)n_out;
    w->tensor = t;
    if (n_mat > 1)
        ld->m->bytes_experts += t->nbytes;
    else
        ld->m->bytes_dense += t->nbytes;
    return 0;
}

/* Binds the H per-head matrices of a 3-D tensor ne [n_in, n_out, H]; they are
 * attention weights, so they count as dense bytes, not expert bytes. */
static int bind_heads(loader_t *ld, const char *name, int64_t n_in, int64_t n_out, int64_t n_head, ms_weight_t *w)
{
    int rc = bind_mat(ld, name, n_in, n_out, n_head, false, w);
    if (!rc && n_head > 1) {
        ld->m->bytes_experts -= w->tensor->nbytes;
        ld->m->bytes_dense += w->tensor->nbytes;
    }
    return rc;
}

#define NAME(s) (snprintf(n, sizeof(n), "blk.%d.%s", il, s), n)

/* q, k, v and output projections of the llama-style attention. */
static int bind_attn(loader_t *ld, int il, ms_layer_t *L)
{
    const ms_hparams_t *hp = &ld->m->hp;
    int64_t d = hp->n_embd, q_dim = (int64_t)hp->n_head * hp->head_dim;
    int64_t k_dim = (int64_t)hp->n_head_kv * hp->head_dim, v_dim = (int64_t)hp->n_head_kv * hp->head_dim_v;
    int64_t o_dim = (int64_t)hp->n_head * hp->head_dim_v;
    char n[MS_GGUF_NAME_BYTES_MAX];
    int rc = 0;
    rc = rc ? rc : bind_mat(ld, NAME("attn_q.weight"), d, q_dim, 1, false, &L->wq);
    rc = rc ? rc : bind_mat(ld, NAME("attn_k.weight"), d, k_dim, 1, false, &L->wk);
    rc = rc ? rc : bind_mat(ld, NAME("attn_v.weight"), d, v_dim, 1, false, &L->wv);
    rc = rc ? rc : bind_mat(ld, NAME("attn_output.weight"), o_dim, d, 1, false, &L->wo);
    if (!rc && hp->qkv_bias) {
        rc = rc ? rc : bind_vec(ld, NAME("attn_q.bias"), q_dim, false, &L->bq);
        rc = rc ? rc : bind_vec(ld, NAME("attn_k.bias"), k_dim, false, &L->bk);
        rc = rc ? rc : bind_vec(ld, NAME("attn_v.bias"), v_dim, false, &L->bv);
    }
    if (!rc && hp->qk_norm != MS_QK_NORM_NONE) {
        bool full = hp->qk_norm == MS_QK_NORM_FULL;
        rc = rc ? rc : bind_vec(ld, NAME("attn_q_norm.weight"), full ? q_dim : hp->head_dim, false, &L->q_norm);
        rc = rc ? rc : bind_vec(ld, NAME("attn_k_norm.weight"), full ? k_dim : hp->head_dim, false, &L->k_norm);
    }
    return rc;
}

/* deepseek2's latent attention: q direct or through its low-rank pair; the kv
 * latent plus rope key; the per-head up-projections either merged (attn_kv_b)
 * or split (attn_k_b / attn_v_b, as newer conversions write them). */
static int bind_mla(loader_t *ld, int il, ms_layer_t *L)
{
    const ms_hparams_t *hp = &ld->m->hp;
    int64_t d = hp->n_embd, H = hp->n_head, hd = hp->head_dim, hdv = hp->head_dim_v;
    int64_t nope = hd - hp->n_rot, C = hp->kv_lora_rank, R = hp->q_lora_rank;
    char n[MS_GGUF_NAME_BYTES_MAX];
    int rc = 0;
    if (R > 0) {
        rc = rc ? rc : bind_mat(ld, NAME("attn_q_a.weight"), d, R, 1, false, &L->wq_a);
        rc = rc ? rc : bind_vec(ld, NAME("attn_q_a_norm.weight"), R, false, &L->q_a_norm);
        rc = rc ? rc : bind_mat(ld, NAME("attn_q_b.weight"), R, H * hd, 1, false, &L->wq_b);
    } else {
        rc = rc ? rc : bind_mat(ld, NAME("attn_q.weight"), d, H * hd, 1, false, &L->wq);
    }
    rc = rc ? rc : bind_mat(ld, NAME("attn_kv_a_mqa.weight"), d, C + hp->n_rot, 1, false, &L->wkv_a);
    rc = rc ? rc : bind_vec(ld, NAME("attn_kv_a_norm.weight"), C, false, &L->kv_a_norm);
    if (rc)
        return rc;
    if (ms_gguf_find_tensor(ld->g, NAME("attn_k_b.weight"))) {
        rc = rc ? rc : bind_heads(ld, NAME("attn_k_b.weight"), nope, C, H, &L->wk_b);
        rc = rc ? rc : bind_heads(ld, NAME("attn_v_b.weight"), C, hdv, H, &L->wv_b);
    } else if (ms_gguf_find_tensor(ld->g, NAME("attn_kv_b.weight"))) {
        rc = bind_mat(ld, n, C, H * (nope + hdv), 1, false, &L->wkv_b);
    } else {
        ms_err_set(ld->err, "%s: layer %d has neither 'blk.%d.attn_kv_b.weight' nor 'blk.%d.attn_k_b.weight' with"
                   " 'blk.%d.attn_v_b.weight' (a deepseek2 model needs one layout)", ld->path, il, il, il, il);
        return -EINVAL;
    }
    rc = rc ? rc : bind_mat(ld, NAME("attn_output.weight"), H * hdv, d, 1, false, &L->wo);
    return rc;
}

/* The shared expert: qwen2moe's carries a sigmoid gate, deepseek2's do not. */
static int bind_shexp(loader_t *ld, int il, ms_layer_t *L)
{
    const ms_hparams_t *hp = &ld->m->hp;
    int64_t d = hp->n_embd, fs = hp->n_ff_shexp;
    char n[MS_GGUF_NAME_BYTES_MAX];
    int rc = 0;
    if (hp->arch == MS_ARCH_QWEN2MOE) {
        const ms_gguf_tensor_t *g = ms_gguf_find_tensor(ld->g, NAME("ffn_gate_inp_shexp.weight"));
        /* stored as a vector [d] (one output row); bind it as a 1 x d matrix */
        if (g && g->n_dims == 1 && g->ne[0] == d) {
            ms_weight_t *w = &L->shexp_gate;
            const ms_type_traits_t *tr = ms_type_traits(g->type);
            if (!tr || !tr->computable) {
                ms_err_set(ld->err, "%s: tensor '%s' has type %s, which moeshard cannot compute yet", ld->path, n, type_name(g->type));
                return -EINVAL;
            }
            *w = (ms_weight_t){ .type = g->type, .data = g->data, .n_in = d, .n_out = 1, .n_mat = 1,
                                .row_bytes = g->nbytes, .mat_bytes = g->nbytes, .tensor = g };
            ld->m->bytes_dense += g->nbytes;
        } else {
            rc = rc ? rc : bind_mat(ld, n, d, 1, 1, false, &L->shexp_gate);
        }
    }
    rc = rc ? rc : bind_mat(ld, NAME("ffn_gate_shexp.weight"), d, fs, 1, false, &L->gate_shexp);
    rc = rc ? rc : bind_mat(ld, NAME("ffn_up_shexp.weight"), d, fs, 1, false, &L->up_shexp);
    rc = rc ? rc : bind_mat(ld, NAME("ffn_down_shexp.weight"), fs, d, 1, false, &L->down_shexp);
    return rc;
}

/* A leading dense layer's FFN (deepseek2), computed on the coordinator. */
static int bind_dense_ffn(loader_t *ld, int il, ms_layer_t *L)
{
    const ms_hparams_t *hp = &ld->m->hp;
    int64_t d = hp->n_embd, f = hp->n_ff;
    char n[MS_GGUF_NAME_BYTES_MAX];
    int rc = 0;
    rc = rc ? rc : bind_mat(ld, NAME("ffn_gate.weight"), d, f, 1, false, &L->ffn_gate);
    rc = rc ? rc : bind_mat(ld, NAME("ffn_up.weight"), d, f, 1, false, &L->ffn_up);
    rc = rc ? rc : bind_mat(ld, NAME("ffn_down.weight"), f, d, 1, false, &L->ffn_down);
    return rc;
}

/* Router, its selection bias, routed experts (unless computed elsewhere), shared expert. */
static int bind_moe(loader_t *ld, int il, ms_layer_t *L)
{
    const ms_hparams_t *hp = &ld->m->hp;
    int64_t d = hp->n_embd, E = hp->n_expert;
    char n[MS_GGUF_NAME_BYTES_MAX];
    int rc = 0;
    L->has_experts = true;
    rc = rc ? rc : bind_mat(ld, NAME("ffn_gate_inp.weight"), d, E, 1, false, &L->router);
    if (!rc && hp->arch == MS_ARCH_DEEPSEEK2)
        rc = bind_vec(ld, NAME("exp_probs_b.bias"), E, true, &L->exp_probs_b);
    if (!ld->dense) { /* a dense load leaves them zeroed (n_mat 0), even when the file has them */
        rc = rc ? rc : bind_mat(ld, NAME("ffn_gate_exps.weight"), d, hp->n_ff_exp, E, false, &L->gate_exps);
        rc = rc ? rc : bind_mat(ld, NAME("ffn_up_exps.weight"), d, hp->n_ff_exp, E, false, &L->up_exps);
        rc = rc ? rc : bind_mat(ld, NAME("ffn_down_exps.weight"), hp->n_ff_exp, d, E, false, &L->down_exps);
    }
    if (!rc && hp->shared_expert)
        rc = bind_shexp(ld, il, L);
    return rc;
}

static int bind_layer(loader_t *ld, int il)
{
    const ms_hparams_t *hp = &ld->m->hp;
    ms_layer_t *L = &ld->m->layers[il];
    char n[MS_GGUF_NAME_BYTES_MAX];
    int rc = bind_vec(ld, NAME("attn_norm.weight"), hp->n_embd, false, &L->attn_norm);
    if (!rc)
        rc = hp->kv_lora_rank > 0 ? bind_mla(ld, il, L) : bind_attn(ld, il, L);
    rc = rc ? rc : bind_vec(ld, NAME("ffn_norm.weight"), hp->n_embd, false, &L->ffn_norm);
    if (!rc)
        rc = il < hp->n_layer_dense_lead ? bind_dense_ffn(ld, il, L) : bind_moe(ld, il, L);
    return rc;
}
#undef NAME

/* Widths that only the tensors state reliably: vocab (0 without an
 * embedding), expert FFN (from the first layer holding experts: a host shard
 * may hold none of layer 0's), shared FFN. */
static int read_widths(loader_t *ld)
{
    ms_hparams_t *hp = ld->hp;
    const ms_gguf_tensor_t *emb = ms_gguf_find_tensor(ld->g, "token_embd.weight");
    hp->n_vocab = 0;
    if (emb && (emb->n_dims != 2 || emb->ne[0] != hp->n_embd || emb->ne[1] < 1 || emb->ne[1] > MS_VOCAB_MAX)) {
        ms_err_set(ld->err, "%s: tensor 'token_embd.weight' is not [%d, vocab] with a vocabulary in [1, %d]",
                   ld->path, hp->n_embd, MS_VOCAB_MAX);
        return -EINVAL;
    }
    if (emb)
        hp->n_vocab = (int32_t)emb->ne[1];
    hp->n_ff_exp = 0;
    char name[MS_GGUF_NAME_BYTES_MAX];
    for (int il = 0; il < hp->n_layer && hp->n_ff_exp == 0; il++) {
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_exps.weight", il);
        const ms_gguf_tensor_t *gate = ms_gguf_find_tensor(ld->g, name);
        if (!gate)
            continue;
        if (gate->n_dims != 3 || gate->ne[1] < 1 || gate->ne[1] > MS_FF_MAX) {
            ms_err_set(ld->err, "%s: tensor '%s' is not 3-D (merged experts [d, ff, experts]) with ff in [1, %d]",
                       ld->path, name, MS_FF_MAX);
            return -EINVAL;
        }
        hp->n_ff_exp = (int32_t)gate->ne[1];
    }
    hp->n_ff_shexp = 0;
    for (int il = 0; hp->shared_expert && il < hp->n_layer && hp->n_ff_shexp == 0; il++) {
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_shexp.weight", il);
        const ms_gguf_tensor_t *sh = ms_gguf_find_tensor(ld->g, name);
        if (!sh)
            continue;
        if (sh->n_dims != 2 || sh->ne[1] < 1 || sh->ne[1] > MS_FF_MAX) {
            ms_err_set(ld->err, "%s: tensor '%s' is not 2-D with a width in [1, %d]", ld->path, name, MS_FF_MAX);
            return -EINVAL;
        }
        hp->n_ff_shexp = (int32_t)sh->ne[1];
    }
    return 0;
}

int ms_hparams_read(const ms_gguf_t *g, ms_hparams_t *ret, ms_err_t *err)
{
    ms_hparams_t hp = { 0 };
    loader_t ld = { .g = g, .hp = &hp, .path = ms_gguf_path(g), .err = err };
    int rc = read_arch(&ld);
    rc = rc ? rc : read_hparams(&ld);
    rc = rc ? rc : read_widths(&ld);
    if (!rc)
        *ret = hp;
    return rc;
}

/* What running needs beyond the hyperparameters: an embedding, and layer 0's
 * experts (unless they are computed elsewhere) and shared expert present. */
static int check_runnable(loader_t *ld)
{
    const ms_hparams_t *hp = ld->hp;
    if (hp->n_vocab == 0) {
        ms_err_set(ld->err, "%s: tensor 'token_embd.weight' is missing or not [%d, vocab]", ld->path, hp->n_embd);
        return -EINVAL;
    }
    if (!ld->dense && ms_gguf_find_kv(ld->g, "moeshard.dense.source")) {
        ms_err_set(ld->err, "%s: this is the dense part of a packed model: its routed experts live in the host"
                   " shards, so it runs only with the experts on expert hosts", ld->path);
        return -EINVAL;
    }
    char name[MS_GGUF_NAME_BYTES_MAX];
    snprintf(name, sizeof(name), "blk.%d.ffn_gate_exps.weight", hp->n_layer_dense_lead);
    if (!ld->dense && !ms_gguf_find_tensor(ld->g, name)) {
        ms_err_set(ld->err, "%s: tensor '%s' is missing or not 3-D (merged experts [d, ff, experts]);"
                   " only MoE models with merged expert tensors are supported", ld->path, name);
        return -EINVAL;
    }
    if (hp->shared_expert && hp->n_ff_shexp == 0) {
        ms_err_set(ld->err, "%s: tensor 'blk.%d.ffn_gate_shexp.weight' is missing or not 2-D", ld->path,
                   hp->n_layer_dense_lead);
        return -EINVAL;
    }
    return 0;
}

/* A dense part has no expert tensor to state the expert FFN width: take it
 * from the metadata (ARCH.expert_feed_forward_length, which Qwen MoE files
 * carry, else ARCH.feed_forward_length, the expert width in Mixtral files). */
static int read_dense_ff(loader_t *ld)
{
    if (ld->hp->n_ff_exp > 0)
        return 0;
    char key[128];
    snprintf(key, sizeof(key), "%s.expert_feed_forward_length", ld->arch);
    const char *suffix = ms_gguf_find_kv(ld->g, key) ? "expert_feed_forward_length" : "feed_forward_length";
    return get_int(ld, suffix, -1, 1, MS_FF_MAX, &ld->hp->n_ff_exp);
}

static int bind_globals(loader_t *ld)
{
    ms_model_t *m = ld->m;
    const ms_hparams_t *hp = &m->hp;
    int rc = bind_mat(ld, "token_embd.weight", hp->n_embd, hp->n_vocab, 1, false, &m->tok_embd);
    rc = rc ? rc : bind_vec(ld, "output_norm.weight", hp->n_embd, false, &m->output_norm);
    rc = rc ? rc : bind_mat(ld, "output.weight", hp->n_embd, hp->n_vocab, 1, true, &m->output);
    if (!rc && !m->output.data)
        m->output = m->tok_embd; /* tied embeddings */
    return rc;
}

static void count_bytes_per_token(ms_model_t *m)
{
    const ms_hparams_t *hp = &m->hp;
    uint64_t per_layer_experts = 0;
    const ms_layer_t *L = ms_model_moe_layer0(m);
    per_layer_experts = L->gate_exps.mat_bytes + L->up_exps.mat_bytes + L->down_exps.mat_bytes;
    /* a dense load binds no experts (per_layer_experts is 0): their bytes are
     * read on the expert hosts, which report them (docs/cluster.md) */
    uint64_t tied_extra = m->output.data == m->tok_embd.data ? m->tok_embd.mat_bytes : 0;
    /* everything dense is read once per token, except the embedding (one row) */
    m->bytes_per_token = m->bytes_dense - m->tok_embd.mat_bytes + m->tok_embd.row_bytes + tied_extra
                       + (uint64_t)(hp->n_layer - hp->n_layer_dense_lead) * (uint64_t)hp->n_expert_used * per_layer_experts;
}

static int model_from_gguf(ms_gguf_t **gguf_p, bool dense, ms_model_t **ret_model, ms_err_t *err)
{
    ms_model_t *m = calloc(1, sizeof(*m));
    if (!m) {
        ms_gguf_close(gguf_p);
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    m->gguf = *gguf_p;
    *gguf_p = NULL;
    m->experts_remote = dense;
    loader_t ld = { .g = m->gguf, .hp = &m->hp, .m = m, .path = ms_gguf_path(m->gguf), .dense = dense, .err = err };
    int rc = ms_hparams_read(m->gguf, &m->hp, err);
    if (!rc)
        ld.arch = ms_arch_name(m->hp.arch);
    rc = rc ? rc : check_runnable(&ld);
    if (!rc && dense)
        rc = read_dense_ff(&ld);
    if (!rc) {
        m->layers = calloc((size_t)m->hp.n_layer, sizeof(*m->layers));
        if (!m->layers) {
            ms_err_set(err, "out of memory");
            rc = -ENOMEM;
        }
    }
    rc = rc ? rc : bind_globals(&ld);
    for (int il = 0; !rc && il < m->hp.n_layer; il++)
        rc = bind_layer(&ld, il);
    if (rc) {
        ms_model_destroy(&m);
        return rc;
    }
    count_bytes_per_token(m);
    *ret_model = m;
    return 0;
}

int ms_model_from_gguf(ms_gguf_t **gguf_p, ms_model_t **ret_model, ms_err_t *err)
{
    return model_from_gguf(gguf_p, false, ret_model, err);
}

int ms_model_from_gguf_dense(ms_gguf_t **gguf_p, ms_model_t **ret_model, ms_err_t *err)
{
    return model_from_gguf(gguf_p, true, ret_model, err);
}

static int load(const char *path, bool dense, ms_model_t **ret_model, ms_err_t *err)
{
    ms_gguf_t *g = NULL;
    int rc = ms_gguf_open(path, &g, err);
    if (rc)
        return rc;
    return model_from_gguf(&g, dense, ret_model, err);
}

bool ms_model_tensor_is_expert(const ms_gguf_tensor_t *t)
{
    static const char suffix[] = "_exps.weight";
    size_t n = sizeof(suffix) - 1;
    return t->name.len >= n && memcmp(t->name.ptr + t->name.len - n, suffix, n) == 0;
}

/* The tensors this process computes with: all, or with dense all but the routed experts. */
static bool computes_with(const ms_model_open_params_t *p, const ms_gguf_tensor_t *t)
{
    return !(p->dense && ms_model_tensor_is_expert(t));
}

#define WEIGHT_ALIGN 64 /* each tensor starts a cache line */

static uint64_t weight_span(const ms_gguf_tensor_t *t)
{
    return (t->nbytes + WEIGHT_ALIGN - 1) & ~(uint64_t)(WEIGHT_ALIGN - 1);
}

/* Reads the weights this process computes with into one read-only block of huge-page memory and points
 * the tensors there. Decode streams every weight once per token: from the
 * file's 4 KiB page-cache pages each 4 KiB costs a TLB miss and stops the
 * hardware prefetcher (docs/performance.md). O_DIRECT where the file system
 * allows it, so the model is not also held in the page cache. */
static int read_weights(ms_gguf_t *g, const ms_model_open_params_t *p, void **ret_mem, uint64_t *ret_bytes,
                        ms_err_t *err)
{
    uint64_t n_t = ms_gguf_n_tensors(g), total = 0, bytes = 0;
    size_t n = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        if (computes_with(p, t)) {
            total += weight_span(t);
            bytes += t->nbytes;
            n++;
        }
    }
    if (n == 0)
        return 0;
    uint8_t *mem = ms_mem_alloc((size_t)total);
    ms_load_range_t *ranges = calloc(n, sizeof(*ranges));
    uint32_t *part = calloc(n, sizeof(*part));
    uint64_t *index = calloc(n, sizeof(*index));
    int rc = 0;
    if (!mem || !ranges || !part || !index) {
        ms_err_set(err, "%s: out of memory for %" PRIu64 " MiB of weights (--mmap uses the file's pages instead)",
                   ms_gguf_path(g), total >> 20);
        rc = -ENOMEM;
        goto out;
    }
    uint64_t at = 0;
    n = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        if (!computes_with(p, t))
            continue;
        ranges[n] = (ms_load_range_t){ .file_offset = t->file_offset, .nbytes = t->nbytes, .dst = mem + at };
        part[n] = t->part;
        index[n++] = i;
        at += weight_span(t);
    }
    ms_load_params_t lp = ms_load_defaults();
    ms_load_stats_t st = { 0 };
    if (p->progress)
        p->progress(p->progress_ctx, 0, bytes); /* starts the clock of the progress lines */
    rc = ms_shard_load_ranges(g, ranges, part, n, &lp, p->progress, p->progress_ctx, &st, err);
    for (size_t i = 0; !rc && i < n; i++) {
        if (ranges[i].status) {
            rc = ranges[i].status;
            ms_err_set(err, "%s: cannot read tensor '%.*s': %s", ms_gguf_part_path(g, part[i]),
                       (int)ms_gguf_tensor(g, index[i])->name.len, ms_gguf_tensor(g, index[i])->name.ptr,
                       strerror(-rc));
        }
    }
    if (rc)
        goto out;
    for (size_t i = 0; i < n; i++)
        ms_gguf_set_tensor_data(g, index[i], ranges[i].dst);
    ms_gguf_own_mem(g, mem, total);
    *ret_mem = mem;
    *ret_bytes = total;
    mem = NULL;
    ms_log_debug("%s: %zu tensors, %.1f MiB read into memory in %.2f s (%s)", ms_gguf_path(g), n,
                 (double)st.bytes / 1048576.0, st.seconds, st.used_direct ? "O_DIRECT" : "buffered");
out:
    ms_mem_free(mem, (size_t)total);
    free(ranges);
    free(part);
    free(index);
    return rc;
}

/* Maps in every page of the weights this process reads, so that the first
 * request does not pay the page faults. */
static int prefault(const ms_gguf_t *g, const ms_model_open_params_t *p)
{
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        int rc = computes_with(p, t) ? ms_gguf_prefault_tensor(g, t) : 0;
        if (rc)
            return rc;
    }
    return 0;
}

/* Q8_0 matrices that only the product kernels read go into the layout of
 * 16 rows at a time (kernels.h); not the embedding, whose rows are looked up
 * one by one (nor the output head when it is the embedding), nor
 * deepseek2's attention matrices taken head by head. */
static int pack_weight(ms_weight_t *w)
{
    if (w->type == MS_TYPE_Q8_0 && w->data && w->n_mat > 0 && !w->r16)
        w->r16 = ms_q8_r16_pack((void *)w->data, w->n_mat, w->n_out, w->n_in);
    return w->r16 ? (int)w->n_mat : 0;
}

/* Returns the number of matrices laid out. */
static int pack_weights(ms_model_t *m)
{
    int n = 0;
    for (int32_t l = 0; l < m->hp.n_layer; l++) {
        ms_layer_t *L = &m->layers[l];
        ms_weight_t *ws[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->router, &L->gate_exps, &L->up_exps,
                              &L->down_exps, &L->shexp_gate, &L->gate_shexp, &L->up_shexp, &L->down_shexp,
                              &L->wq_a, &L->wq_b, &L->wkv_a, &L->ffn_gate, &L->ffn_up, &L->ffn_down };
        for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++)
            n += pack_weight(ws[i]);
    }
    if (m->output.data != m->tok_embd.data)
        n += pack_weight(&m->output);
    return n;
}

int ms_model_open(const char *path, const ms_model_open_params_t *p, ms_model_t **ret_model, ms_err_t *err)
{
    ms_gguf_t *g = NULL;
    int rc = ms_gguf_open(path, &g, err);
    if (rc)
        return rc;
    void *mem = NULL;
    uint64_t mem_bytes = 0;
    if (!p->mmap) {
        rc = read_weights(g, p, &mem, &mem_bytes, err);
        if (rc) {
            ms_gguf_close(&g);
            return rc;
        }
    } else {
        rc = prefault(g, p);
        if (rc)
            ms_log_warn("%s: could not map the weights in ahead (%s); the first tokens will be slower", path,
                        strerror(-rc));
    }
    ms_model_t *m = NULL;
    rc = model_from_gguf(&g, p->dense, &m, err);
    if (rc)
        return rc;
    if (mem) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int n = pack_weights(m);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (n)
            ms_log_debug("%s: %d Q8_0 matrices laid out 16 rows at a time in %.2f s", path, n,
                         (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        if (mprotect(mem, (size_t)mem_bytes, PROT_READ) != 0) {
            rc = -errno;
            ms_err_set(err, "%s: cannot make the weights read-only: %s", path, strerror(errno));
            ms_model_destroy(&m);
            return rc;
        }
    }
    *ret_model = m;
    return 0;
}

int ms_model_load(const char *path, ms_model_t **ret_model, ms_err_t *err)
{
    return load(path, false, ret_model, err);
}

int ms_model_load_dense(const char *path, ms_model_t **ret_model, ms_err_t *err)
{
    return load(path, true, ret_model, err);
}

void ms_model_destroy(ms_model_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_model_t *m = *self_p;
    free(m->layers);
    ms_gguf_close(&m->gguf);
    free(m);
    *self_p = NULL;
}
