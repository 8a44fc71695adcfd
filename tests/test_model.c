/* Model loading (common/model.c): hyperparameters and tensor binding from a
 * GGUF written here, and every refusal a malformed model must get. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "forward.h"
#include "gguf_write.h"
#include "model.h"
#include "pool.h"

/* A minimal Mixtral-shaped model: d 256, 1 layer, 2 heads of 128 (1 kv head),
 * 2 experts (top 1), ff 256, vocab 8. Sizes are multiples of 256 so that a
 * k-quant tensor is well-formed (and refused only for its type). */
enum { D = 256, HD = 128, NH = 2, NKV = 1, NE = 2, NK = 1, FF = 256, NV = 8 };

typedef struct {
    const char *arch;
    const char *skip_tensor; /* leave this tensor out */
    const char *skip_key;    /* leave this metadata key suffix out */
    const char *odd_tensor;  /* give this tensor a wrong last dimension */
    const char *mxfp4_tensor;  /* store this tensor as MXFP4 (no kernels) */
    const char *f16_tensor;  /* store this tensor as F16 */
    uint32_t n_head, n_kv, n_used;
    bool tied;
    bool pattern;            /* tensor bytes that differ from tensor to tensor (else zeros) */
} spec_t;

static char dir[64];
static uint64_t sizes[64];
static int n_sizes;

static void add_tensor(ms_gguf_writer_t *w, const spec_t *s, const char *name, uint32_t n_dims, int64_t a, int64_t b,
                       int64_t c)
{
    if ((s->skip_tensor && !strcmp(name, s->skip_tensor)) || (s->tied && !strcmp(name, "output.weight")))
        return;
    int64_t ne[3] = { a, b, c };
    if (s->odd_tensor && !strcmp(name, s->odd_tensor))
        ne[n_dims - 1] += 1;
    ms_type_t t = MS_TYPE_F32;
    if (s->mxfp4_tensor && !strcmp(name, s->mxfp4_tensor))
        t = MS_TYPE_MXFP4;
    if (s->f16_tensor && !strcmp(name, s->f16_tensor))
        t = MS_TYPE_F16;
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, name, t, n_dims, ne), 0);
    uint64_t rows = (uint64_t)(n_dims > 1 ? ne[1] : 1) * (uint64_t)(n_dims > 2 ? ne[2] : 1);
    sizes[n_sizes++] = ms_type_row_bytes(t, (uint64_t)ne[0]) * rows;
}

static void add_key(ms_gguf_writer_t *w, const spec_t *s, const char *arch, const char *suffix, uint32_t v)
{
    char k[96];
    snprintf(k, sizeof(k), "%s.%s", arch, suffix);
    if (!s->skip_key || strcmp(suffix, s->skip_key))
        CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, k, v), 0);
}

/* Writes the model described by s; returns its path (a static buffer). */
static const char *write_model(const spec_t *s)
{
    static char path[128];
    static int n;
    snprintf(path, sizeof(path), "%s/m%d.gguf", dir, n++);
    ms_gguf_writer_t *w = ms_gguf_writer_new(32);
    const char *arch = s->arch ? s->arch : "llama";
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "general.architecture", arch), 0);
    add_key(w, s, arch, "embedding_length", D);
    add_key(w, s, arch, "block_count", 1);
    add_key(w, s, arch, "attention.head_count", s->n_head ? s->n_head : NH);
    add_key(w, s, arch, "attention.head_count_kv", s->n_kv ? s->n_kv : NKV);
    add_key(w, s, arch, "context_length", 64);
    add_key(w, s, arch, "expert_count", NE);
    add_key(w, s, arch, "expert_used_count", s->n_used ? s->n_used : NK);
    char k[96];
    snprintf(k, sizeof(k), "%s.attention.layer_norm_rms_epsilon", arch);
    if (!s->skip_key || strcmp(s->skip_key, "attention.layer_norm_rms_epsilon"))
        CU_ASSERT_EQUAL(ms_gguf_writer_add_f32(w, k, 1e-5f), 0);
    n_sizes = 0;
    add_tensor(w, s, "token_embd.weight", 2, D, NV, 1);
    add_tensor(w, s, "output_norm.weight", 1, D, 1, 1);
    add_tensor(w, s, "output.weight", 2, D, NV, 1);
    add_tensor(w, s, "blk.0.attn_norm.weight", 1, D, 1, 1);
    add_tensor(w, s, "blk.0.attn_q.weight", 2, D, NH * HD, 1);
    add_tensor(w, s, "blk.0.attn_k.weight", 2, D, NKV * HD, 1);
    add_tensor(w, s, "blk.0.attn_v.weight", 2, D, NKV * HD, 1);
    add_tensor(w, s, "blk.0.attn_output.weight", 2, NH * HD, D, 1);
    add_tensor(w, s, "blk.0.ffn_norm.weight", 1, D, 1, 1);
    add_tensor(w, s, "blk.0.ffn_gate_inp.weight", 2, D, NE, 1);
    add_tensor(w, s, "blk.0.ffn_gate_exps.weight", 3, D, FF, NE);
    add_tensor(w, s, "blk.0.ffn_up_exps.weight", 3, D, FF, NE);
    add_tensor(w, s, "blk.0.ffn_down_exps.weight", 3, FF, D, NE);
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    static char bytes[1 << 20];
    for (int i = 0; i < n_sizes; i++) {
        for (uint64_t k = 0; k < sizes[i]; k++)
            bytes[k] = s->pattern ? (char)(k * 7 + (uint64_t)i * 131 + k / 251) : 0;
        CU_ASSERT_EQUAL(ms_gguf_writer_write(w, bytes, sizes[i], &err), 0);
    }
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
    return path;
}

static void expect_error(const spec_t *s, const char *phrase1, const char *phrase2)
{
    const char *path = write_model(s);
    ms_model_t *m = NULL;
    ms_err_t err = { { 0 } };
    int rc = ms_model_load(path, &m, &err);
    CU_ASSERT_EQUAL(rc, -EINVAL);
    CU_ASSERT_PTR_NULL(m);
    bool ok = strstr(err.msg, phrase1) && (!phrase2 || strstr(err.msg, phrase2));
    CU_ASSERT(ok);
    if (!ok)
        printf("\n  expected '%s'%s%s in: %s\n", phrase1, phrase2 ? " and " : "", phrase2 ? phrase2 : "", err.msg);
    ms_model_destroy(&m);
}

static void test_valid(void)
{
    spec_t s = { 0 };
    ms_model_t *m = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_model_load(write_model(&s), &m, &err), 0);
    const ms_hparams_t *hp = &m->hp;
    CU_ASSERT_EQUAL(hp->arch, MS_ARCH_LLAMA);
    CU_ASSERT_EQUAL(hp->n_embd, D);
    CU_ASSERT_EQUAL(hp->n_head, NH);
    CU_ASSERT_EQUAL(hp->n_head_kv, NKV);
    CU_ASSERT_EQUAL(hp->head_dim, HD); /* d / heads when key_length is absent */
    CU_ASSERT_EQUAL(hp->n_rot, HD);
    CU_ASSERT_EQUAL(hp->n_vocab, NV);
    CU_ASSERT_EQUAL(hp->n_ff_exp, FF);
    CU_ASSERT_EQUAL(hp->rope_mode, MS_ROPE_NORM);
    CU_ASSERT(hp->norm_topk);
    CU_ASSERT_DOUBLE_EQUAL(hp->rope_base, 10000.0, 1e-3); /* the default */
    CU_ASSERT_EQUAL(m->layers[0].gate_exps.n_mat, NE);
    CU_ASSERT_EQUAL(m->layers[0].gate_exps.mat_bytes, (uint64_t)FF * D * 4);
    /* bytes by hand: dense = embd + out + 3 norms + q,k,v,o + router; experts = 3 x E x ff x d */
    uint64_t dense = 4ull * (2 * D * NV + 3 * D + D * NH * HD * 2 + D * NKV * HD * 2 + D * NE);
    CU_ASSERT_EQUAL(m->bytes_dense, dense);
    CU_ASSERT_EQUAL(m->bytes_experts, 4ull * 3 * NE * FF * D);
    /* per token: dense minus the embedding matrix plus one embedding row, plus top-1 expert */
    CU_ASSERT_EQUAL(m->bytes_per_token, dense - 4ull * D * NV + 4ull * D + 4ull * 3 * FF * D);
    CU_ASSERT_PTR_NOT_EQUAL(m->output.data, m->tok_embd.data);
    ms_model_destroy(&m);
    CU_ASSERT_PTR_NULL(m);
    ms_model_destroy(&m);
}

static void test_tied_output(void)
{
    spec_t s = { .tied = true };
    ms_model_t *m = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_model_load(write_model(&s), &m, &err), 0);
    CU_ASSERT_PTR_EQUAL(m->output.data, m->tok_embd.data);
    ms_model_destroy(&m);
}

static void test_refusals(void)
{
    expect_error(&(spec_t){ .arch = "gpt2" }, "architecture 'gpt2' is not supported", NULL);
    expect_error(&(spec_t){ .skip_tensor = "blk.0.ffn_up_exps.weight" }, "blk.0.ffn_up_exps.weight", "missing");
    expect_error(&(spec_t){ .skip_tensor = "blk.0.ffn_gate_exps.weight" }, "blk.0.ffn_gate_exps.weight", NULL);
    expect_error(&(spec_t){ .odd_tensor = "blk.0.attn_k.weight" }, "blk.0.attn_k.weight", "shape");
    expect_error(&(spec_t){ .odd_tensor = "blk.0.ffn_down_exps.weight" }, "blk.0.ffn_down_exps.weight", "shape");
    expect_error(&(spec_t){ .mxfp4_tensor = "blk.0.attn_q.weight" }, "MXFP4", "cannot compute");
    expect_error(&(spec_t){ .f16_tensor = "blk.0.ffn_norm.weight" }, "blk.0.ffn_norm.weight", "F32");
    expect_error(&(spec_t){ .skip_key = "embedding_length" }, "llama.embedding_length", "missing");
    expect_error(&(spec_t){ .skip_key = "attention.layer_norm_rms_epsilon" }, "layer_norm_rms_epsilon", NULL);
    expect_error(&(spec_t){ .n_kv = 3 }, "is not a multiple of head_count_kv (3)", NULL);
    expect_error(&(spec_t){ .n_used = 3 }, "expert_used_count", NULL);
}

/* ---- deepseek2: a 2-layer model (layer 0 dense, layer 1 MoE) written here ----
 * d 32, 2 heads with keys of 8 unrotated + 4 rotated dims, values 8, latent 16,
 * 4 experts in 2 groups (1 used), top 2, expert ff 8, one shared expert, dense ff 16. */
enum { DS_D = 32, DS_H = 2, DS_NOPE = 8, DS_ROT = 4, DS_HV = 8, DS_C = 16, DS_QL = 16, DS_E = 4, DS_FF = 8,
       DS_DFF = 16 };

typedef struct {
    bool split;             /* attn_k_b + attn_v_b (with the _mla keys) instead of attn_kv_b */
    bool q_lora;            /* attn_q_a/attn_q_b instead of attn_q */
    const char *skip_key;   /* a deepseek2.* key suffix left out */
    const char *skip_tensor;
    uint32_t gating, groups;
    const char *scaling;    /* rope.scaling.type, or NULL */
} ds_spec_t;

static void ds_tensor(ms_gguf_writer_t *w, const ds_spec_t *s, const char *name, uint32_t n_dims, int64_t a,
                      int64_t b, int64_t c)
{
    if (s->skip_tensor && !strcmp(name, s->skip_tensor))
        return;
    int64_t ne[3] = { a, b, c };
    CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, name, MS_TYPE_F32, n_dims, ne), 0);
    sizes[n_sizes++] = (uint64_t)a * (uint64_t)b * (uint64_t)c * 4;
}

static void ds_u32(ms_gguf_writer_t *w, const ds_spec_t *s, const char *suffix, uint32_t v)
{
    char k[96];
    snprintf(k, sizeof(k), "deepseek2.%s", suffix);
    if (!s->skip_key || strcmp(suffix, s->skip_key))
        CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, k, v), 0);
}

static void ds_keys(ms_gguf_writer_t *w, const ds_spec_t *s)
{
    const struct { const char *k; uint32_t v; } u[] = {
        { "embedding_length", DS_D }, { "block_count", 2 }, { "attention.head_count", DS_H },
        { "context_length", 64 }, { "expert_count", DS_E }, { "expert_used_count", 2 },
        { "feed_forward_length", DS_DFF }, { "expert_feed_forward_length", DS_FF },
        { "leading_dense_block_count", 1 }, { "attention.kv_lora_rank", DS_C }, { "expert_shared_count", 1 },
        { "rope.dimension_count", DS_ROT }, { "expert_gating_func", s->gating ? s->gating : 2 },
        { "expert_group_count", s->groups ? s->groups : 2 }, { "expert_group_used_count", 1 },
        { s->split ? "attention.key_length_mla" : "attention.key_length", DS_NOPE + DS_ROT },
        { s->split ? "attention.value_length_mla" : "attention.value_length", DS_HV },
    };
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "general.architecture", "deepseek2"), 0);
    for (size_t i = 0; i < sizeof(u) / sizeof(u[0]); i++)
        ds_u32(w, s, u[i].k, u[i].v);
    if (s->split) { /* newer files: the plain keys describe the latent (576 > any head for V3) */
        ds_u32(w, s, "attention.key_length", 1000);
        ds_u32(w, s, "attention.value_length", 1000);
    }
    if (s->q_lora)
        ds_u32(w, s, "attention.q_lora_rank", DS_QL);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_f32(w, "deepseek2.attention.layer_norm_rms_epsilon", 1e-6f), 0);
    if (!s->skip_key || strcmp(s->skip_key, "expert_weights_scale"))
        CU_ASSERT_EQUAL(ms_gguf_writer_add_f32(w, "deepseek2.expert_weights_scale", 2.5f), 0);
    if (s->scaling) {
        CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "deepseek2.rope.scaling.type", s->scaling), 0);
        CU_ASSERT_EQUAL(ms_gguf_writer_add_f32(w, "deepseek2.rope.scaling.factor", 4.0f), 0);
        ds_u32(w, s, "rope.scaling.original_context_length", 16);
        CU_ASSERT_EQUAL(ms_gguf_writer_add_f32(w, "deepseek2.rope.scaling.yarn_log_multiplier", 0.1f), 0);
    }
}

static void ds_attention(ms_gguf_writer_t *w, const ds_spec_t *s, int l)
{
    char n[64];
#define T(name) (snprintf(n, sizeof(n), "blk.%d.%s", l, name), n)
    ds_tensor(w, s, T("attn_norm.weight"), 1, DS_D, 1, 1);
    if (s->q_lora) {
        ds_tensor(w, s, T("attn_q_a.weight"), 2, DS_D, DS_QL, 1);
        ds_tensor(w, s, T("attn_q_a_norm.weight"), 1, DS_QL, 1, 1);
        ds_tensor(w, s, T("attn_q_b.weight"), 2, DS_QL, DS_H * (DS_NOPE + DS_ROT), 1);
    } else {
        ds_tensor(w, s, T("attn_q.weight"), 2, DS_D, DS_H * (DS_NOPE + DS_ROT), 1);
    }
    ds_tensor(w, s, T("attn_kv_a_mqa.weight"), 2, DS_D, DS_C + DS_ROT, 1);
    ds_tensor(w, s, T("attn_kv_a_norm.weight"), 1, DS_C, 1, 1);
    if (s->split) {
        ds_tensor(w, s, T("attn_k_b.weight"), 3, DS_NOPE, DS_C, DS_H);
        ds_tensor(w, s, T("attn_v_b.weight"), 3, DS_C, DS_HV, DS_H);
    } else {
        ds_tensor(w, s, T("attn_kv_b.weight"), 2, DS_C, DS_H * (DS_NOPE + DS_HV), 1);
    }
    ds_tensor(w, s, T("attn_output.weight"), 2, DS_H * DS_HV, DS_D, 1);
    ds_tensor(w, s, T("ffn_norm.weight"), 1, DS_D, 1, 1);
#undef T
}

static const char *ds_write(const ds_spec_t *s)
{
    static char path[128];
    static int n;
    snprintf(path, sizeof(path), "%s/ds%d.gguf", dir, n++);
    ms_gguf_writer_t *w = ms_gguf_writer_new(32);
    ds_keys(w, s);
    n_sizes = 0;
    ds_tensor(w, s, "token_embd.weight", 2, DS_D, NV, 1);
    ds_tensor(w, s, "output_norm.weight", 1, DS_D, 1, 1);
    ds_attention(w, s, 0);
    ds_tensor(w, s, "blk.0.ffn_gate.weight", 2, DS_D, DS_DFF, 1);
    ds_tensor(w, s, "blk.0.ffn_up.weight", 2, DS_D, DS_DFF, 1);
    ds_tensor(w, s, "blk.0.ffn_down.weight", 2, DS_DFF, DS_D, 1);
    ds_attention(w, s, 1);
    ds_tensor(w, s, "blk.1.ffn_gate_inp.weight", 2, DS_D, DS_E, 1);
    ds_tensor(w, s, "blk.1.exp_probs_b.bias", 1, DS_E, 1, 1);
    ds_tensor(w, s, "blk.1.ffn_gate_exps.weight", 3, DS_D, DS_FF, DS_E);
    ds_tensor(w, s, "blk.1.ffn_up_exps.weight", 3, DS_D, DS_FF, DS_E);
    ds_tensor(w, s, "blk.1.ffn_down_exps.weight", 3, DS_FF, DS_D, DS_E);
    ds_tensor(w, s, "blk.1.ffn_gate_shexp.weight", 2, DS_D, DS_FF, 1);
    ds_tensor(w, s, "blk.1.ffn_up_shexp.weight", 2, DS_D, DS_FF, 1);
    ds_tensor(w, s, "blk.1.ffn_down_shexp.weight", 2, DS_FF, DS_D, 1);
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    static char zeros[1 << 16];
    for (int i = 0; i < n_sizes; i++)
        CU_ASSERT_EQUAL(ms_gguf_writer_write(w, zeros, sizes[i], &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
    return path;
}

static void ds_check_common(const ms_model_t *m)
{
    const ms_hparams_t *hp = &m->hp;
    CU_ASSERT_EQUAL(hp->arch, MS_ARCH_DEEPSEEK2);
    CU_ASSERT_EQUAL(hp->head_dim, DS_NOPE + DS_ROT);
    CU_ASSERT_EQUAL(hp->head_dim_v, DS_HV);
    CU_ASSERT_EQUAL(hp->n_rot, DS_ROT);
    CU_ASSERT_EQUAL(hp->rope_mode, MS_ROPE_NORM);
    CU_ASSERT_EQUAL(hp->kv_lora_rank, DS_C);
    CU_ASSERT_EQUAL(hp->n_layer_dense_lead, 1);
    CU_ASSERT_EQUAL(hp->n_ff, DS_DFF);
    CU_ASSERT_EQUAL(hp->n_ff_exp, DS_FF);
    CU_ASSERT_EQUAL(hp->n_ff_shexp, DS_FF);
    CU_ASSERT_EQUAL(hp->n_expert_shared, 1);
    CU_ASSERT_EQUAL(hp->gating, MS_GATING_SIGMOID);
    CU_ASSERT_EQUAL(hp->n_expert_groups, 2);
    CU_ASSERT_EQUAL(hp->n_group_used, 1);
    CU_ASSERT_DOUBLE_EQUAL(hp->expert_weights_scale, 2.5, 1e-7);
    CU_ASSERT_FALSE(m->layers[0].has_experts);
    CU_ASSERT_TRUE(m->layers[1].has_experts);
    CU_ASSERT_PTR_NOT_NULL(m->layers[0].ffn_gate.data);
    CU_ASSERT_PTR_NOT_NULL(m->layers[1].exp_probs_b);
    CU_ASSERT_PTR_NULL(m->layers[1].shexp_gate.data); /* deepseek2's shared experts are ungated */
    /* only layer 1's experts are routed experts: 3 projections x 4 experts x 8 x 32 floats */
    CU_ASSERT_EQUAL(m->bytes_experts, 3ull * DS_E * DS_FF * DS_D * 4);
    CU_ASSERT_PTR_EQUAL(ms_model_moe_layer0(m), &m->layers[1]);
}

static void test_deepseek2_layouts(void)
{
    ms_err_t err = { { 0 } };
    ms_model_t *m = NULL;
    /* merged attn_kv_b, direct q, no scaling: scale 1/sqrt(12) */
    CU_ASSERT_EQUAL_FATAL(ms_model_load(ds_write(&(ds_spec_t){ 0 }), &m, &err), 0);
    ds_check_common(m);
    CU_ASSERT_PTR_NOT_NULL(m->layers[1].wkv_b.data);
    CU_ASSERT_PTR_NOT_NULL(m->layers[1].wq.data);
    CU_ASSERT_FALSE(m->hp.rope_yarn);
    CU_ASSERT_DOUBLE_EQUAL(m->hp.attn_scale, 0.28867513, 1e-6);
    ms_model_destroy(&m);
    /* split k_b/v_b with the _mla keys, low-rank q, YaRN: (1 + 0.1 ln 4)^2 / sqrt(12) */
    CU_ASSERT_EQUAL_FATAL(ms_model_load(ds_write(&(ds_spec_t){ .split = true, .q_lora = true, .scaling = "yarn" }),
                                        &m, &err), 0);
    ds_check_common(m);
    CU_ASSERT_PTR_NULL(m->layers[1].wkv_b.data);
    CU_ASSERT_EQUAL(m->layers[1].wk_b.n_mat, DS_H);
    CU_ASSERT_EQUAL(m->layers[1].wk_b.n_in, DS_NOPE);
    CU_ASSERT_EQUAL(m->layers[1].wk_b.n_out, DS_C);
    CU_ASSERT_EQUAL(m->layers[1].wv_b.n_in, DS_C);
    CU_ASSERT_EQUAL(m->layers[1].wv_b.n_out, DS_HV);
    CU_ASSERT_EQUAL(m->hp.q_lora_rank, DS_QL);
    CU_ASSERT_TRUE(m->hp.rope_yarn);
    CU_ASSERT_DOUBLE_EQUAL(m->hp.rope_freq_scale, 0.25, 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(m->hp.attn_scale, 0.37426067, 1e-6);
    ms_model_destroy(&m);
}

/* The cache holds the latent and the rope key only: (16 + 4) floats per token and layer. */
static void test_deepseek2_kv_bytes(void)
{
    ms_err_t err = { { 0 } };
    ms_model_t *m = NULL;
    ms_pool_t *pool = NULL;
    ms_forward_t *f = NULL;
    CU_ASSERT_EQUAL_FATAL(ms_model_load(ds_write(&(ds_spec_t){ .split = true }), &m, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_pool_new(1, &pool), 0);
    ms_forward_params_t p = { .n_ctx = 32, .n_seq_max = 3, .n_batch_max = 4 };
    CU_ASSERT_EQUAL_FATAL(ms_forward_new(m, &p, pool, ms_kernels_best(), NULL, &f, &err), 0);
    CU_ASSERT_EQUAL(ms_forward_kv_bytes(f), 3ull * 2 * 32 * (DS_C + DS_ROT) * 4);
    ms_forward_destroy(&f);
    ms_pool_destroy(&pool);
    ms_model_destroy(&m);
}

static void ds_expect_error(const ds_spec_t *s, const char *want)
{
    ms_err_t err = { { 0 } };
    ms_model_t *m = NULL;
    CU_ASSERT_EQUAL(ms_model_load(ds_write(s), &m, &err), -EINVAL);
    CU_ASSERT_PTR_NULL(m);
    if (!strstr(err.msg, want))
        fprintf(stderr, "\n  expected '%s' in: %s\n", want, err.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, want));
}

static void test_deepseek2_refusals(void)
{
    ds_expect_error(&(ds_spec_t){ .skip_key = "leading_dense_block_count" }, "deepseek2.leading_dense_block_count");
    ds_expect_error(&(ds_spec_t){ .skip_key = "attention.kv_lora_rank" }, "deepseek2.attention.kv_lora_rank");
    ds_expect_error(&(ds_spec_t){ .skip_key = "expert_weights_scale" }, "deepseek2.expert_weights_scale");
    ds_expect_error(&(ds_spec_t){ .skip_key = "rope.dimension_count" }, "deepseek2.rope.dimension_count");
    ds_expect_error(&(ds_spec_t){ .skip_key = "attention.key_length" }, "deepseek2.attention.key_length");
    ds_expect_error(&(ds_spec_t){ .gating = 3 }, "deepseek2.expert_gating_func");
    ds_expect_error(&(ds_spec_t){ .groups = 3 }, "expert_group_count");
    ds_expect_error(&(ds_spec_t){ .scaling = "linear" }, "deepseek2.rope.scaling.type");
    ds_expect_error(&(ds_spec_t){ .scaling = "yarn", .skip_key = "rope.scaling.original_context_length" },
                    "original_context_length");
    ds_expect_error(&(ds_spec_t){ .skip_tensor = "blk.1.attn_kv_b.weight" }, "attn_kv_b.weight");
    ds_expect_error(&(ds_spec_t){ .split = true, .skip_tensor = "blk.0.attn_v_b.weight" }, "blk.0.attn_v_b.weight");
    ds_expect_error(&(ds_spec_t){ .skip_tensor = "blk.0.ffn_up.weight" }, "blk.0.ffn_up.weight");
    ds_expect_error(&(ds_spec_t){ .skip_tensor = "blk.1.ffn_gate_exps.weight" }, "blk.1.ffn_gate_exps.weight");
    ds_expect_error(&(ds_spec_t){ .q_lora = true, .skip_tensor = "blk.1.attn_q_a_norm.weight" }, "attn_q_a_norm");
}

/* Every tensor's bytes against the file's, read with pread; where they are:
 * in the file's mapping, or (moved) in 64-byte-aligned memory outside it. */
static void check_weights(const char *path, const ms_model_t *m, bool dense, bool mmap)
{
    FILE *f = fopen(path, "rb");
    CU_ASSERT_FATAL(f != NULL);
    const ms_gguf_t *g = m->gguf;
    const char *base = ms_gguf_base(g), *end = base + ms_gguf_file_size(g);
    int moved = 0, kept = 0;
    static char want[1 << 20];
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        const char *d = t->data;
        bool in_map = d >= base && d < end;
        bool expect_moved = !mmap && !(dense && ms_model_tensor_is_expert(t));
        CU_ASSERT_EQUAL(in_map, !expect_moved);
        if (!in_map)
            CU_ASSERT_EQUAL((uintptr_t)d % 64, 0);
        in_map ? kept++ : moved++;
        CU_ASSERT_FATAL(t->nbytes <= sizeof(want));
        CU_ASSERT_EQUAL_FATAL(fseek(f, (long)t->file_offset, SEEK_SET), 0);
        CU_ASSERT_EQUAL_FATAL(fread(want, 1, t->nbytes, f), t->nbytes);
        CU_ASSERT_EQUAL(memcmp(d, want, t->nbytes), 0);
    }
    fclose(f);
    CU_ASSERT_EQUAL(kept, mmap ? 13 : dense ? 3 : 0); /* 13 tensors, 3 of them routed experts */
    CU_ASSERT_EQUAL(moved, 13 - kept);
    /* the model computes from where the tensors now are */
    CU_ASSERT_PTR_EQUAL(m->layers[0].wq.data, ms_gguf_find_tensor(g, "blk.0.attn_q.weight")->data);
    CU_ASSERT_PTR_EQUAL(m->output_norm, ms_gguf_find_tensor(g, "output_norm.weight")->data);
    if (!dense)
        CU_ASSERT_PTR_EQUAL(m->layers[0].down_exps.data, ms_gguf_find_tensor(g, "blk.0.ffn_down_exps.weight")->data);
}

typedef struct {
    int calls;
    uint64_t done, total;
    bool backwards;
} progress_seen_t;

static void progress_seen(void *ctx, uint64_t done, uint64_t total)
{
    progress_seen_t *ps = ctx;
    ps->backwards |= done < ps->done || (ps->calls && total != ps->total);
    ps->calls++;
    ps->done = done;
    ps->total = total;
}

static void test_open_weights(void)
{
    spec_t s = { .pattern = true };
    const char *path = write_model(&s);
    for (int mode = 0; mode < 4; mode++) {
        bool dense = mode & 1, mmap = mode & 2;
        progress_seen_t ps = { 0 };
        ms_model_open_params_t p = { .dense = dense, .mmap = mmap, .progress = progress_seen, .progress_ctx = &ps };
        ms_model_t *m = NULL;
        ms_err_t err = { { 0 } };
        CU_ASSERT_EQUAL_FATAL(ms_model_open(path, &p, &m, &err), 0);
        CU_ASSERT_EQUAL(m->experts_remote, dense);
        check_weights(path, m, dense, mmap);
        /* progress: from 0 to every byte read, never backwards; none when mapped */
        uint64_t read = m->bytes_dense + (dense ? 0 : m->bytes_experts);
        CU_ASSERT_EQUAL(ps.calls >= 2, !mmap);
        CU_ASSERT_FALSE(ps.backwards);
        if (!mmap)
            CU_ASSERT(ps.done == read && ps.total == read);
        ms_model_destroy(&m);
    }
    ms_model_t *m = NULL;
    ms_err_t err = { { 0 } };
    ms_model_open_params_t p = { 0 };
    CU_ASSERT_EQUAL(ms_model_open("/nonexistent/m.gguf", &p, &m, &err), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/nonexistent/m.gguf"));
    CU_ASSERT_PTR_NULL(m);
}

static int suite_init(void)
{
    snprintf(dir, sizeof(dir), "%s/ms-test-model-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int suite_clean(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("model", suite_init, suite_clean);
    if (!s)
        return -1;
    bool ok = CU_add_test(s, "valid model: hyperparameters and byte counts", test_valid) &&
              CU_add_test(s, "tied output head", test_tied_output) &&
              CU_add_test(s, "weights read into memory or mapped, whole or dense", test_open_weights) &&
              CU_add_test(s, "malformed models are refused with a named cause", test_refusals) &&
              CU_add_test(s, "deepseek2: both attention layouts, dense and MoE layers", test_deepseek2_layouts) &&
              CU_add_test(s, "deepseek2: the KV cache holds the latent", test_deepseek2_kv_bytes) &&
              CU_add_test(s, "deepseek2: missing keys and tensors are refused by name", test_deepseek2_refusals);
    return ok ? 0 : -1;
}

#include "cu_main.h"
