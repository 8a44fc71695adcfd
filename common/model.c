/* Reads a MoE model's hyperparameters and binds its tensors, checking every
 * shape and type against what the architecture needs before anything runs. */
#include "model.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"

static const char *const arch_names[MS_ARCH_COUNT] = { "llama", "qwen2moe", "qwen3moe", "olmoe" };

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
    ms_err_set(ld->err, "%s: architecture '%.*s' is not supported (supported: llama (Mixtral), qwen2moe, qwen3moe, olmoe)",
               ld->path, (int)(s.len > 64 ? 64 : s.len), s.ptr);
    return -EINVAL;
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
    int32_t hd_default = hp->n_embd / hp->n_head;
    rc = rc ? rc : get_int(ld, "attention.key_length", hd_default, 2, MS_HEAD_DIM_MAX, &hp->head_dim);
    rc = rc ? rc : get_int(ld, "attention.value_length", hp->head_dim, 1, MS_HEAD_DIM_MAX, &hp->head_dim_v);
    rc = rc ? rc : get_int(ld, "rope.dimension_count", hp->head_dim, 0, MS_HEAD_DIM_MAX, &hp->n_rot);
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
    hp->rope_mode = hp->arch == MS_ARCH_LLAMA ? MS_ROPE_NORM : MS_ROPE_NEOX;
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
    return 0;
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
        ms_err_set(ld->err, "%s: tensor '%s' has type %s, which moeshard cannot compute yet (supported: F32, F16, BF16, Q8_0)",
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

static int bind_layer(loader_t *ld, int il)
{
    const ms_hparams_t *hp = &ld->m->hp;
    ms_layer_t *L = &ld->m->layers[il];
    int64_t d = hp->n_embd, q_dim = (int64_t)hp->n_head * hp->head_dim;
    int64_t k_dim = (int64_t)hp->n_head_kv * hp->head_dim, v_dim = (int64_t)hp->n_head_kv * hp->head_dim_v;
    int64_t o_dim = (int64_t)hp->n_head * hp->head_dim_v, E = hp->n_expert;
    char n[MS_GGUF_NAME_BYTES_MAX];
    int rc = 0;
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d.%s", il, s), n)
    rc = rc ? rc : bind_vec(ld, NAME("attn_norm.weight"), d, false, &L->attn_norm);
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
    rc = rc ? rc : bind_vec(ld, NAME("ffn_norm.weight"), d, false, &L->ffn_norm);
    rc = rc ? rc : bind_mat(ld, NAME("ffn_gate_inp.weight"), d, E, 1, false, &L->router);
    if (!ld->dense) { /* a dense load leaves them zeroed (n_mat 0), even when the file has them */
        rc = rc ? rc : bind_mat(ld, NAME("ffn_gate_exps.weight"), d, hp->n_ff_exp, E, false, &L->gate_exps);
        rc = rc ? rc : bind_mat(ld, NAME("ffn_up_exps.weight"), d, hp->n_ff_exp, E, false, &L->up_exps);
        rc = rc ? rc : bind_mat(ld, NAME("ffn_down_exps.weight"), hp->n_ff_exp, d, E, false, &L->down_exps);
    }
    if (!rc && hp->shared_expert) {
        int64_t fs = hp->n_ff_shexp;
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
        rc = rc ? rc : bind_mat(ld, NAME("ffn_gate_shexp.weight"), d, fs, 1, false, &L->gate_shexp);
        rc = rc ? rc : bind_mat(ld, NAME("ffn_up_shexp.weight"), d, fs, 1, false, &L->up_shexp);
        rc = rc ? rc : bind_mat(ld, NAME("ffn_down_shexp.weight"), fs, d, 1, false, &L->down_shexp);
    }
#undef NAME
    return rc;
}

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
    const ms_gguf_tensor_t *sh = hp->shared_expert ? ms_gguf_find_tensor(ld->g, "blk.0.ffn_gate_shexp.weight") : NULL;
    if (sh && (sh->n_dims != 2 || sh->ne[1] < 1 || sh->ne[1] > MS_FF_MAX)) {
        ms_err_set(ld->err, "%s: tensor 'blk.0.ffn_gate_shexp.weight' is not 2-D with a width in [1, %d]",
                   ld->path, MS_FF_MAX);
        return -EINVAL;
    }
    if (sh)
        hp->n_ff_shexp = (int32_t)sh->ne[1];
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
    if (!ld->dense && !ms_gguf_find_tensor(ld->g, "blk.0.ffn_gate_exps.weight")) {
        ms_err_set(ld->err, "%s: tensor 'blk.0.ffn_gate_exps.weight' is missing or not 3-D (merged experts [d, ff, experts]);"
                   " only MoE models with merged expert tensors are supported", ld->path);
        return -EINVAL;
    }
    if (hp->shared_expert && hp->n_ff_shexp == 0) {
        ms_err_set(ld->err, "%s: tensor 'blk.0.ffn_gate_shexp.weight' is missing or not 2-D", ld->path);
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
    const ms_layer_t *L = &m->layers[0];
    per_layer_experts = L->gate_exps.mat_bytes + L->up_exps.mat_bytes + L->down_exps.mat_bytes;
    /* a dense load binds no experts (per_layer_experts is 0): their bytes are
     * read on the expert hosts, which report them (docs/cluster.md) */
    uint64_t tied_extra = m->output.data == m->tok_embd.data ? m->tok_embd.mat_bytes : 0;
    /* everything dense is read once per token, except the embedding (one row) */
    m->bytes_per_token = m->bytes_dense - m->tok_embd.mat_bytes + m->tok_embd.row_bytes + tied_extra
                       + (uint64_t)hp->n_layer * (uint64_t)hp->n_expert_used * per_layer_experts;
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
