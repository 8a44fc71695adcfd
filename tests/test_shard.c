/* Slice tables (common/shard.c) of full models and of the host shards
 * `moeshard pack` writes: every slice of every shard is byte-identical to the
 * same slice of the full model, held by exactly R hosts, its digests match
 * the bytes (computed here with OpenSSL), and corrupt shard metadata is
 * refused naming the key. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gguf_write.h"
#include "shard.h"

/* A tiny Mixtral-shaped model: d 32, ff 16, 3 layers of 6 experts, F32. */
enum { D = 32, FF = 16, NL = 3, NE = 6, NV = 8, SLAB = D * FF * 4 };

static char dir[64];
static char model_path[128];

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Byte i of tensor number t: distinct per tensor and per position. */
static uint8_t pattern(int t, uint64_t i)
{
    return (uint8_t)mix(((uint64_t)t << 40) ^ i);
}

static void sha256(const void *p, size_t n, uint8_t out[MS_SHA256_BYTES])
{
    unsigned int len = 0;
    CU_ASSERT_FATAL(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1 && len == MS_SHA256_BYTES);
}

static void hex(const uint8_t d[MS_SHA256_BYTES], char out[65])
{
    for (int i = 0; i < MS_SHA256_BYTES; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

/* Also called from the suite's setup, where CUnit assertions are not allowed. */
static int add_llama_keys(ms_gguf_writer_t *w, int layers, int experts)
{
    return ms_gguf_writer_add_str(w, "general.architecture", "llama") ||
           ms_gguf_writer_add_u32(w, "llama.embedding_length", D) ||
           ms_gguf_writer_add_u32(w, "llama.block_count", (uint32_t)layers) ||
           ms_gguf_writer_add_u32(w, "llama.attention.head_count", 2) ||
           ms_gguf_writer_add_u32(w, "llama.expert_count", (uint32_t)experts) ||
           ms_gguf_writer_add_u32(w, "llama.expert_used_count", 2) ||
           ms_gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f) ? -1 : 0;
}

typedef struct {
    char name[64];
    uint32_t n_dims;
    int64_t ne[3];
} decl_t;

static void decl(decl_t *d, int layer, const char *suffix, uint32_t n_dims, int64_t a, int64_t b, int64_t c)
{
    *d = (decl_t){ .n_dims = n_dims, .ne = { a, b, c }, .name = { 0 } };
    if (layer < 0)
        snprintf(d->name, sizeof(d->name), "%s", suffix);
    else
        snprintf(d->name, sizeof(d->name), "blk.%d.%s", layer, suffix);
}

/* Two global tensors, then five per layer (the expert tensors at 2, 3, 4). */
static int model_decls(decl_t *d)
{
    int n = 0;
    decl(&d[n++], -1, "token_embd.weight", 2, D, NV, 1);
    decl(&d[n++], -1, "output_norm.weight", 1, D, 1, 1);
    for (int l = 0; l < NL; l++) {
        decl(&d[n++], l, "attn_norm.weight", 1, D, 1, 1);
        decl(&d[n++], l, "ffn_gate_inp.weight", 2, D, NE, 1);
        decl(&d[n++], l, "ffn_gate_exps.weight", 3, D, FF, NE);
        decl(&d[n++], l, "ffn_up_exps.weight", 3, D, FF, NE);
        decl(&d[n++], l, "ffn_down_exps.weight", 3, FF, D, NE);
    }
    return n;
}

/* The full model, written once per suite; tensor t's bytes are pattern(t, i). */
static int write_model(void)
{
    decl_t d[64];
    int n = model_decls(d);
    ms_gguf_writer_t *w = ms_gguf_writer_new(32);
    if (!w || add_llama_keys(w, NL, NE))
        return -1;
    for (int t = 0; t < n; t++)
        if (ms_gguf_writer_add_tensor(w, d[t].name, MS_TYPE_F32, d[t].n_dims, d[t].ne))
            return -1;
    ms_err_t err = { { 0 } };
    snprintf(model_path, sizeof(model_path), "%s/model.gguf", dir);
    if (ms_gguf_writer_begin(w, model_path, &err))
        return -1;
    static uint8_t buf[NE * SLAB];
    for (int t = 0; t < n; t++) {
        uint64_t bytes = 4ull * (uint64_t)(d[t].ne[0] * d[t].ne[1] * d[t].ne[2]);
        for (uint64_t i = 0; i < bytes; i++)
            buf[i] = pattern(t, i);
        if (ms_gguf_writer_write(w, buf, bytes, &err))
            return -1;
    }
    int rc = ms_gguf_writer_finish(w, &err);
    ms_gguf_writer_destroy(&w);
    return rc;
}

static int expert_tensor_index(int layer, int proj)
{
    return 2 + layer * 5 + 2 + proj; /* the declaration order of model_decls */
}

/* ---- full model ---- */

static void test_full_model(void)
{
    ms_gguf_t *g = NULL;
    ms_shard_t *sh = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(model_path, &g, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_shard_open(g, &sh, &err), 0);
    CU_ASSERT_FALSE(ms_shard_is_packed(sh));
    CU_ASSERT_EQUAL(ms_shard_host(sh), -1);
    CU_ASSERT_EQUAL(ms_shard_n_slices(sh), NL * NE);
    CU_ASSERT_EQUAL(ms_shard_hparams(sh)->n_ff_exp, FF);
    const uint8_t *base = ms_gguf_base(g);
    for (int l = 0; l < NL; l++) {
        const ms_slice_shape_t *shape = ms_shard_layer_shape(sh, l);
        CU_ASSERT_FATAL(shape != NULL);
        CU_ASSERT(shape->type[MS_PROJ_UP] == MS_TYPE_F32 && shape->n_in[MS_PROJ_DOWN] == FF &&
                  shape->n_out[MS_PROJ_DOWN] == D && shape->n_in[MS_PROJ_GATE] == D);
        for (int e = 0; e < NE; e++) {
            const ms_slice_t *s = ms_shard_find(sh, l, e);
            CU_ASSERT_FATAL(s != NULL);
            CU_ASSERT_PTR_EQUAL(s, ms_shard_slice(sh, (size_t)(l * NE + e)));
            CU_ASSERT(s->layer == l && s->expert == e && !s->has_sha256);
            for (int p = 0; p < MS_PROJ_COUNT; p++) {
                CU_ASSERT_EQUAL(s->nbytes[p], SLAB);
                bool same = true;
                for (uint64_t i = 0; i < SLAB; i++)
                    same = same && base[s->file_offset[p] + i] == pattern(expert_tensor_index(l, p), (uint64_t)e * SLAB + i);
                CU_ASSERT(same);
            }
        }
    }
    CU_ASSERT_PTR_NULL(ms_shard_find(sh, 0, NE));
    CU_ASSERT_PTR_NULL(ms_shard_find(sh, NL, 0));
    CU_ASSERT_PTR_NULL(ms_shard_find(sh, -1, 0));
    CU_ASSERT_PTR_NULL(ms_shard_layer_shape(sh, NL));
    CU_ASSERT_PTR_NULL(ms_shard_slice(sh, NL * NE));
    ms_shard_destroy(&sh);
    CU_ASSERT_PTR_NULL(sh);
    ms_shard_destroy(&sh);
    ms_gguf_close(&g);
}

/* ---- pack -> shards ---- */

static int run_pack(const char *out, const char *hosts, const char *replicas, bool force)
{
    char *argv[] = { "pack", model_path, "--hosts", (char *)hosts, "--replicas", (char *)replicas,
                     "--out", (char *)out, force ? "--force" : NULL, NULL };
    return coord_cmd_pack(force ? 9 : 8, argv);
}

/* The tensor digest in the metadata is the SHA-256 of the tensor's bytes. */
static void check_tensor_digests(const ms_gguf_t *g)
{
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        char key[128], want[65];
        uint8_t d[MS_SHA256_BYTES];
        ms_str_t s = { 0 };
        snprintf(key, sizeof(key), "moeshard.sha256.%.*s", (int)t->name.len, t->name.ptr);
        CU_ASSERT_EQUAL_FATAL(ms_gguf_get_str(g, key, &s), 0);
        sha256(t->data, t->nbytes, d);
        hex(d, want);
        CU_ASSERT(s.len == 64 && memcmp(s.ptr, want, 64) == 0);
    }
}

/* Every slice of host k's shard equals the model's slice; returns the count. */
static size_t check_host(const char *out, int k, const ms_shard_t *full, const ms_gguf_t *fg, int holders[NL][NE])
{
    char path[160];
    snprintf(path, sizeof(path), "%s/host-%d.gguf", out, k);
    ms_gguf_t *g = NULL;
    ms_shard_t *sh = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path, &g, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_shard_open(g, &sh, &err), 0);
    CU_ASSERT(ms_shard_is_packed(sh) && ms_shard_host(sh) == k && ms_shard_epoch(sh) == 1);
    CU_ASSERT_EQUAL(ms_gguf_alignment(g), 4096);
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++)
        CU_ASSERT_EQUAL(ms_gguf_tensor(g, i)->file_offset % 4096, 0);
    check_tensor_digests(g);
    const uint8_t *base = ms_gguf_base(g), *fbase = ms_gguf_base(fg);
    for (size_t i = 0; i < ms_shard_n_slices(sh); i++) {
        const ms_slice_t *s = ms_shard_slice(sh, i);
        const ms_slice_t *f = ms_shard_find(full, s->layer, s->expert);
        CU_ASSERT_FATAL(f != NULL && s->has_sha256);
        holders[s->layer][s->expert]++;
        for (int p = 0; p < MS_PROJ_COUNT; p++) {
            uint8_t d[MS_SHA256_BYTES];
            CU_ASSERT_EQUAL_FATAL(s->nbytes[p], f->nbytes[p]);
            CU_ASSERT(memcmp(base + s->file_offset[p], fbase + f->file_offset[p], s->nbytes[p]) == 0);
            sha256(base + s->file_offset[p], s->nbytes[p], d);
            CU_ASSERT(memcmp(d, s->sha256[p], MS_SHA256_BYTES) == 0);
        }
    }
    size_t n = ms_shard_n_slices(sh);
    ms_shard_destroy(&sh);
    ms_gguf_close(&g);
    return n;
}

/* dense.gguf: every non-expert tensor, same bytes, no expert tensor. */
static void check_dense(const char *out, const ms_gguf_t *fg)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/dense.gguf", out);
    ms_gguf_t *g = NULL;
    ms_shard_t *sh = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(path, &g, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_n_tensors(g), ms_gguf_n_tensors(fg) - 3 * NL);
    for (uint64_t i = 0; i < ms_gguf_n_tensors(fg); i++) {
        const ms_gguf_tensor_t *f = ms_gguf_tensor(fg, i);
        char name[128];
        snprintf(name, sizeof(name), "%.*s", (int)f->name.len, f->name.ptr);
        const ms_gguf_tensor_t *t = ms_gguf_find_tensor(g, name);
        bool expert = strstr(name, "_exps.") != NULL;
        CU_ASSERT(expert ? t == NULL : (t && t->nbytes == f->nbytes && !memcmp(t->data, f->data, f->nbytes)));
    }
    check_tensor_digests(g);
    CU_ASSERT_PTR_NOT_NULL(ms_gguf_find_kv(g, "llama.expert_count"));
    CU_ASSERT_EQUAL(ms_shard_open(g, &sh, &err), -EINVAL);
    CU_ASSERT(strstr(err.msg, "no routed-expert slices") != NULL);
    ms_gguf_close(&g);
}

/* plan.json agrees with the shards: host k holds layer l's listed experts. */
static void check_plan(const char *out, int hosts, int replicas)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/plan.json", out);
    json_error_t jerr;
    json_t *plan = json_load_file(path, 0, &jerr);
    CU_ASSERT_FATAL(plan != NULL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(plan, "hosts")), hosts);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(plan, "replicas")), replicas);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(plan, "layers")), NL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(plan, "experts")), NE);
    json_t *files = json_object_get(plan, "host_files");
    CU_ASSERT_EQUAL_FATAL(json_array_size(files), (size_t)hosts);
    uint64_t total = 0, count = 0;
    for (int k = 0; k < hosts; k++) {
        json_t *h = json_array_get(files, (size_t)k);
        total += (uint64_t)json_integer_value(json_object_get(h, "bytes"));
        json_t *slices = json_object_get(h, "slices");
        for (size_t i = 0; i < json_array_size(slices); i++)
            count += json_array_size(json_array_get(json_array_get(slices, i), 1));
    }
    CU_ASSERT_EQUAL(count, (uint64_t)NL * NE * (uint64_t)replicas);
    CU_ASSERT_EQUAL(total, (uint64_t)NL * NE * (uint64_t)replicas * 3 * SLAB);
    json_decref(plan);
}

static void pack_and_check(const char *name, int hosts, int replicas)
{
    char out[128], hs[8], rs[8];
    snprintf(out, sizeof(out), "%s/%s", dir, name);
    snprintf(hs, sizeof(hs), "%d", hosts);
    snprintf(rs, sizeof(rs), "%d", replicas);
    CU_ASSERT_EQUAL_FATAL(run_pack(out, hs, rs, false), 0);
    ms_gguf_t *fg = NULL;
    ms_shard_t *full = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open(model_path, &fg, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_shard_open(fg, &full, &err), 0);
    int holders[NL][NE] = { { 0 } };
    size_t total = 0;
    for (int k = 0; k < hosts; k++)
        total += check_host(out, k, full, fg, holders);
    CU_ASSERT_EQUAL(total, (size_t)(NL * NE * replicas));
    for (int l = 0; l < NL; l++)
        for (int e = 0; e < NE; e++)
            CU_ASSERT_EQUAL(holders[l][e], replicas);
    check_dense(out, fg);
    check_plan(out, hosts, replicas);
    ms_shard_destroy(&full);
    ms_gguf_close(&fg);
}

static void test_pack_roundtrip(void)
{
    pack_and_check("p32", 3, 2);
    pack_and_check("p11", 1, 1);
    pack_and_check("p44", 4, 4);
    pack_and_check("p51", 5, 1);
}

static void test_pack_refusals(void)
{
    char out[128], stale[160];
    snprintf(out, sizeof(out), "%s/p32", dir);
    CU_ASSERT_EQUAL(run_pack(out, "3", "2", false), 1);   /* not empty */
    CU_ASSERT_EQUAL(run_pack(out, "2", "3", false), 2);   /* R > N */
    CU_ASSERT_EQUAL(run_pack(out, "0", "1", false), 2);
    CU_ASSERT_EQUAL(run_pack(out, "x", "1", false), 2);
    /* --force into a pack of more hosts removes the extra host files */
    snprintf(out, sizeof(out), "%s/p51", dir);
    CU_ASSERT_EQUAL(run_pack(out, "2", "1", true), 0);
    snprintf(stale, sizeof(stale), "%s/host-4.gguf", out);
    CU_ASSERT_NOT_EQUAL(access(stale, F_OK), 0);
    snprintf(stale, sizeof(stale), "%s/host-1.gguf", out);
    CU_ASSERT_EQUAL(access(stale, F_OK), 0);
    /* a shard is not a model to pack */
    snprintf(stale, sizeof(stale), "%s/p32/host-0.gguf", dir);
    char *argv[] = { "pack", stale, "--hosts", "2", "--out", out, "--force", NULL };
    CU_ASSERT_EQUAL(coord_cmd_pack(7, argv), 1);
}

/* ---- a flipped byte ---- */

static void test_flipped_byte(void)
{
    char path[160];
    snprintf(path, sizeof(path), "%s/p32/host-1.gguf", dir);
    FILE *fp = fopen(path, "rb");
    CU_ASSERT_FATAL(fp != NULL);
    static uint8_t buf[1 << 20];
    size_t len = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    CU_ASSERT_FATAL(len > 0 && len < sizeof(buf));
    ms_gguf_t *g = NULL;
    ms_shard_t *sh = NULL;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_open_mem(buf, len, "host-1.gguf", &g, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ms_shard_open(g, &sh, &err), 0);
    const ms_slice_t *victim = ms_shard_slice(sh, 1);
    buf[victim->file_offset[MS_PROJ_UP] + 77] ^= 0x10; /* the metadata is untouched: it still opens */
    for (size_t i = 0; i < ms_shard_n_slices(sh); i++) {
        const ms_slice_t *s = ms_shard_slice(sh, i);
        for (int p = 0; p < MS_PROJ_COUNT; p++) {
            uint8_t d[MS_SHA256_BYTES];
            sha256(buf + s->file_offset[p], s->nbytes[p], d);
            bool match = memcmp(d, s->sha256[p], MS_SHA256_BYTES) == 0;
            CU_ASSERT_EQUAL(match, !(s == victim && p == MS_PROJ_UP));
        }
    }
    ms_shard_destroy(&sh);
    ms_gguf_close(&g);
}

/* ---- corrupt shard metadata, written by hand ---- */

typedef struct {
    int32_t ids[4];
    int n_ids;            /* ids listed for layer 0 */
    int ne2;              /* ne[2] of the layer-0 tensors */
    uint32_t version, host, hosts;
    bool bad_hex, short_slabs, stray_key, no_epoch, ids_u32;
    bool tensors_l1;      /* layer-1 tensors without a layer-1 key */
} corrupt_t;

static const char *write_shard(const corrupt_t *c)
{
    static char path[160];
    static int n;
    snprintf(path, sizeof(path), "%s/corrupt%d.gguf", dir, n++);
    ms_gguf_writer_t *w = ms_gguf_writer_new(4096);
    CU_ASSERT_EQUAL_FATAL(add_llama_keys(w, 2, 4), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "moeshard.shard.version", c->version ? c->version : 1), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "moeshard.shard.host", c->host), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "moeshard.shard.hosts", c->hosts ? c->hosts : 2), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "moeshard.shard.replicas", 1), 0);
    if (!c->no_epoch)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_u64(w, "moeshard.shard.epoch", 1), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "moeshard.shard.source", "model.gguf"), 0);
    if (c->ids_u32)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_u32(w, "moeshard.shard.blk.0.experts", (const uint32_t *)c->ids,
                                                   (uint64_t)c->n_ids), 0);
    if (!c->ids_u32)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_i32(w, "moeshard.shard.blk.0.experts", c->ids, (uint64_t)c->n_ids), 0);
    if (c->stray_key)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_i32(w, "moeshard.shard.blk.7.experts", c->ids, 1), 0);
    static const char *const names[3] = { "blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight",
                                          "blk.0.ffn_down_exps.weight" };
    const char *ok = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const char *bad = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeefg";
    const char *slabs[4] = { ok, c->bad_hex ? bad : ok, ok, ok };
    for (int p = 0; p < 3; p++) {
        char key[96];
        snprintf(key, sizeof(key), "moeshard.sha256.%s", names[p]);
        CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, key, ok), 0);
        snprintf(key, sizeof(key), "moeshard.slab_sha256.%s", names[p]);
        CU_ASSERT_EQUAL(ms_gguf_writer_add_arr_str(w, key, slabs, NULL, (uint64_t)(c->n_ids - c->short_slabs)), 0);
    }
    int64_t ne_in[3] = { D, FF, c->ne2 }, ne_down[3] = { FF, D, c->ne2 };
    for (int p = 0; p < 3; p++)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, names[p], MS_TYPE_F32, 3, p == 2 ? ne_down : ne_in), 0);
    if (c->tensors_l1)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_tensor(w, "blk.1.ffn_up_exps.weight", MS_TYPE_F32, 3, ne_in), 0);
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_gguf_writer_begin(w, path, &err), 0);
    static uint8_t zeros[4 * SLAB];
    for (int t = 0; t < 3 + c->tensors_l1; t++)
        CU_ASSERT_EQUAL(ms_gguf_writer_write(w, zeros, (uint64_t)c->ne2 * SLAB, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
    return path;
}

static int open_shard(const corrupt_t *c, ms_err_t *err, ms_shard_t **ret)
{
    ms_gguf_t *g = NULL;
    int rc = ms_gguf_open(write_shard(c), &g, err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    *ret = NULL;
    rc = ms_shard_open(g, ret, err);
    if (!rc)
        CU_ASSERT_EQUAL(ms_shard_n_slices(*ret), (size_t)c->n_ids);
    ms_shard_destroy(ret);
    ms_gguf_close(&g);
    return rc;
}

static void expect_refused(corrupt_t c, const char *phrase1, const char *phrase2)
{
    ms_err_t err = { { 0 } };
    ms_shard_t *sh = NULL;
    c.ne2 = c.ne2 ? c.ne2 : c.n_ids;
    CU_ASSERT_EQUAL(open_shard(&c, &err, &sh), -EINVAL);
    bool ok = strstr(err.msg, phrase1) && (!phrase2 || strstr(err.msg, phrase2));
    CU_ASSERT(ok);
    if (!ok)
        printf("\n  expected '%s'%s%s in: %s\n", phrase1, phrase2 ? " and " : "", phrase2 ? phrase2 : "", err.msg);
}

static void test_corrupt_metadata(void)
{
    ms_err_t err = { { 0 } };
    ms_shard_t *sh = NULL;
    corrupt_t good = { .ids = { 1, 3 }, .n_ids = 2, .ne2 = 2 };
    CU_ASSERT_EQUAL(open_shard(&good, &err, &sh), 0); /* the baseline opens */
    expect_refused((corrupt_t){ .ids = { 1, 1 }, .n_ids = 2 }, "moeshard.shard.blk.0.experts", "listed twice");
    expect_refused((corrupt_t){ .ids = { 3, 1 }, .n_ids = 2 }, "moeshard.shard.blk.0.experts", "ascending");
    expect_refused((corrupt_t){ .ids = { 1, 4 }, .n_ids = 2 }, "moeshard.shard.blk.0.experts", "outside [0, 4)");
    expect_refused((corrupt_t){ .ids = { -1, 2 }, .n_ids = 2 }, "moeshard.shard.blk.0.experts", "-1");
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .ids_u32 = true }, "moeshard.shard.blk.0.experts",
                   "int32");
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .ne2 = 3 }, "blk.0.ffn_gate_exps.weight",
                   "holds 3 experts");
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .bad_hex = true },
                   "moeshard.slab_sha256.blk.0.ffn_gate_exps.weight", "hex");
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .short_slabs = true },
                   "moeshard.slab_sha256.blk.0.ffn_gate_exps.weight", "array of 2");
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .version = 2 }, "moeshard.shard.version", "version 1");
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .host = 2 }, "moeshard.shard.host", NULL);
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .no_epoch = true }, "moeshard.shard.epoch", "missing");
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .stray_key = true }, "moeshard.shard.blk.7.experts",
                   NULL);
    expect_refused((corrupt_t){ .ids = { 1, 3 }, .n_ids = 2, .tensors_l1 = true }, "blk.1.ffn_up_exps.weight",
                   "moeshard.shard.blk.1.experts");
}

static int suite_init(void)
{
    snprintf(dir, sizeof(dir), "%s/ms-test-shard-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        return -1;
    return write_model();
}

static int suite_clean(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("shard", suite_init, suite_clean);
    if (!s)
        return -1;
    bool ok = CU_add_test(s, "full model: every slice at its offset", test_full_model) &&
              CU_add_test(s, "pack -> shards hold the model's slices, R copies each", test_pack_roundtrip) &&
              CU_add_test(s, "pack refuses bad arguments and non-empty folders", test_pack_refusals) &&
              CU_add_test(s, "a flipped byte breaks exactly that slab's digest", test_flipped_byte) &&
              CU_add_test(s, "corrupt shard metadata is refused naming the key", test_corrupt_metadata);
    return ok ? 0 : -1;
}

#include "cu_main.h"
