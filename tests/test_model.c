/* Model loading (common/model.c): hyperparameters and tensor binding from a
 * GGUF written here, and every refusal a malformed model must get. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_write.h"
#include "model.h"

/* A minimal Mixtral-shaped model: d 256, 1 layer, 2 heads of 128 (1 kv head),
 * 2 experts (top 1), ff 256, vocab 8. Sizes are multiples of 256 so that a
 * k-quant tensor is well-formed (and refused only for its type). */
enum { D = 256, HD = 128, NH = 2, NKV = 1, NE = 2, NK = 1, FF = 256, NV = 8 };

typedef struct {
    const char *arch;
    const char *skip_tensor; /* leave this tensor out */
    const char *skip_key;    /* leave this metadata key suffix out */
    const char *odd_tensor;  /* give this tensor a wrong last dimension */
    const char *q4k_tensor;  /* store this tensor as Q4_K */
    const char *f16_tensor;  /* store this tensor as F16 */
    uint32_t n_head, n_kv, n_used;
    bool tied;
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
    if (s->q4k_tensor && !strcmp(name, s->q4k_tensor))
        t = MS_TYPE_Q4_K;
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
    static char zeros[1 << 20];
    for (int i = 0; i < n_sizes; i++)
        CU_ASSERT_EQUAL(ms_gguf_writer_write(w, zeros, sizes[i], &err), 0);
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
    expect_error(&(spec_t){ .q4k_tensor = "blk.0.attn_q.weight" }, "Q4_K", "cannot compute");
    expect_error(&(spec_t){ .f16_tensor = "blk.0.ffn_norm.weight" }, "blk.0.ffn_norm.weight", "F32");
    expect_error(&(spec_t){ .skip_key = "embedding_length" }, "llama.embedding_length", "missing");
    expect_error(&(spec_t){ .skip_key = "attention.layer_norm_rms_epsilon" }, "layer_norm_rms_epsilon", NULL);
    expect_error(&(spec_t){ .n_kv = 3 }, "is not a multiple of head_count_kv (3)", NULL);
    expect_error(&(spec_t){ .n_used = 3 }, "expert_used_count", NULL);
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
              CU_add_test(s, "malformed models are refused with a named cause", test_refusals);
    return ok ? 0 : -1;
}

#include "cu_main.h"
