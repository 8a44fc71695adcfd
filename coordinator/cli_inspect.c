/* moeshard inspect: what a GGUF model is, as moeshard sees it: a full model,
 * a host shard or the dense part written by `moeshard pack`. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "model.h"
#include "shard.h"

#define CMD "inspect"

static void inspect_help(void)
{
    printf("usage: moeshard inspect [--tensors] M.gguf\n\n"
           "Describes a GGUF model: architecture, hyperparameters, tokenizer, tensor types\n"
           "and sizes, experts per layer, and the bytes of dense versus expert weights.\n"
           "On the files of 'moeshard pack' it describes a host shard (the slices it holds)\n"
           "or the dense part.\n\n"
           "A split model (NAME-0000K-of-0000N.gguf) is described as one model; give any part.\n\n"
           "      --tensors   also list every tensor (name, type, shape, bytes, file offset;\n"
           "                  for a split model also the part holding it)\n"
           "  -h, --help      this help\n");
}

static void print_str_kv(const ms_gguf_t *g, const char *label, const char *key)
{
    ms_str_t s;
    if (ms_gguf_get_str(g, key, &s) == 0)
        printf("%-13s %.*s\n", label, (int)(s.len > 200 ? 200 : s.len), s.ptr);
}

static void print_types(const ms_gguf_t *g)
{
    uint64_t count[MS_TYPE_COUNT] = { 0 }, bytes[MS_TYPE_COUNT] = { 0 };
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        count[t->type]++;
        bytes[t->type] += t->nbytes;
    }
    printf("tensor types ");
    bool first = true;
    for (int t = 0; t < MS_TYPE_COUNT; t++) {
        if (!count[t])
            continue;
        const ms_type_traits_t *tr = ms_type_traits((uint32_t)t);
        printf("%s%s: %" PRIu64 " tensors, %.2f MB%s", first ? "" : "; ", tr->name, count[t], (double)bytes[t] / 1e6,
               tr->computable ? "" : " (not computable yet)");
        first = false;
    }
    printf("\n");
}

static void print_model(const ms_model_t *m)
{
    const ms_hparams_t *hp = &m->hp;
    static const char *const qkn[] = { "none", "per head", "whole vector" };
    printf("architecture  %s\n", ms_arch_name(hp->arch));
    printf("shape         %d layers, hidden %d, %d heads (%d kv), head dim %d (v %d), vocab %d, context %d\n",
           hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim, hp->head_dim_v, hp->n_vocab,
           hp->n_ctx_train);
    printf("attention     rope %s over %d dims, base %g; rms eps %g; qkv bias %s; q/k norm %s\n",
           hp->rope_mode == MS_ROPE_NORM ? "normal (adjacent pairs)" : "neox (half split)", hp->n_rot,
           (double)hp->rope_base, (double)hp->eps, hp->qkv_bias ? "yes" : "no", qkn[hp->qk_norm]);
    printf("experts       %d per layer, %d per token, expert ffn %d; gate softmax, top-%d%s", hp->n_expert,
           hp->n_expert_used, hp->n_ff_exp, hp->n_expert_used, hp->norm_topk ? ", renormalised" : "");
    if (hp->shared_expert)
        printf("; shared expert ffn %d with sigmoid gate", hp->n_ff_shexp);
    printf("\n");
    const ms_layer_t *L = &m->layers[0];
    uint64_t slice = L->gate_exps.mat_bytes + L->up_exps.mat_bytes + L->down_exps.mat_bytes;
    uint64_t total = m->bytes_dense + m->bytes_experts;
    printf("weights       dense %.2f MB, experts %.2f MB (%.1f%%), one expert slice (gate+up+down of one layer) %.3f MB\n",
           (double)m->bytes_dense / 1e6, (double)m->bytes_experts / 1e6,
           total ? 100.0 * (double)m->bytes_experts / (double)total : 0.0, (double)slice / 1e6);
    printf("per token     %.2f MB of weights read per decoded token\n", (double)m->bytes_per_token / 1e6);
    printf("output head   %s\n", m->output.data == m->tok_embd.data ? "tied to the token embedding" : "own tensor");
}

static void print_tensors(const ms_gguf_t *g)
{
    bool split = ms_gguf_n_parts(g) > 1;
    printf("\n%-40s %-6s %-28s %14s %14s%s\n", "tensor", "type", "shape", "bytes", "offset", split ? "  part" : "");
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        char shape[64] = "[";
        for (uint32_t d = 0; d < t->n_dims; d++) {
            char part[24];
            snprintf(part, sizeof(part), "%s%" PRId64, d ? ", " : "", t->ne[d]);
            strncat(shape, part, sizeof(shape) - strlen(shape) - 2);
        }
        strcat(shape, "]");
        printf("%-40.*s %-6s %-28s %14" PRIu64 " %14" PRIu64, (int)t->name.len, t->name.ptr,
               ms_type_traits(t->type)->name, shape, t->nbytes, t->file_offset);
        if (split)
            printf("  %5" PRIu32, t->part + 1);
        printf("\n");
    }
}

/* A split model: the files, each with its size and the tensors it holds. */
static void print_parts(const ms_gguf_t *g)
{
    uint32_t n = ms_gguf_n_parts(g);
    uint64_t total = 0;
    for (uint32_t p = 0; p < n; p++)
        total += ms_gguf_part_size(g, p);
    printf("file          split model in %" PRIu32 " parts (%.2f MB, GGUF v3, %" PRIu64 " tensors, %" PRIu64
           " metadata keys in the first part, alignment %u)\n", n, (double)total / 1e6, ms_gguf_n_tensors(g),
           ms_gguf_n_kv(g), ms_gguf_alignment(g));
    for (uint32_t p = 0; p < n; p++) {
        uint64_t count = 0, bytes = 0;
        for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
            const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
            count += t->part == p;
            bytes += t->part == p ? t->nbytes : 0;
        }
        printf("  part %-6" PRIu32 " %s: %.2f MB, %" PRIu64 " tensors (%.2f MB of tensor data)\n", p + 1,
               ms_gguf_part_path(g, p), (double)ms_gguf_part_size(g, p) / 1e6, count, (double)bytes / 1e6);
    }
}

/* "0-2,5,7-9": runs of three or more ids as ranges. */
static void print_ids(const ms_shard_t *sh, size_t *i)
{
    int32_t layer = ms_shard_slice(sh, *i)->layer;
    const char *sep = "";
    while (*i < ms_shard_n_slices(sh) && ms_shard_slice(sh, *i)->layer == layer) {
        int32_t first = ms_shard_slice(sh, *i)->expert, last = first;
        size_t j = *i + 1;
        for (; j < ms_shard_n_slices(sh) && ms_shard_slice(sh, j)->layer == layer &&
               ms_shard_slice(sh, j)->expert == last + 1; j++)
            last++;
        if (last - first >= 2) {
            printf("%s%d-%d", sep, first, last);
            *i = j;
        } else {
            printf("%s%d", sep, first);
            *i += 1;
        }
        sep = ",";
    }
}

static void print_hparams(const ms_hparams_t *hp, const ms_gguf_t *g, const char *source_key)
{
    ms_str_t src = { "?", 1 };
    ms_gguf_get_str(g, source_key, &src);
    printf("architecture  %s: %d layers, hidden %d, %d experts per layer (%d per token)", ms_arch_name(hp->arch),
           hp->n_layer, hp->n_embd, hp->n_expert, hp->n_expert_used);
    if (hp->n_ff_exp)
        printf(", expert ffn %d", hp->n_ff_exp);
    printf("; packed from %.*s\n", (int)(src.len > 200 ? 200 : src.len), src.ptr);
}

static int print_shard(const ms_gguf_t *g)
{
    ms_err_t err = { { 0 } };
    ms_shard_t *sh = NULL;
    if (ms_shard_open(g, &sh, &err)) {
        fprintf(stderr, "moeshard inspect: %s\n", err.msg);
        return COORD_EXIT_FAIL;
    }
    uint32_t hosts = 0, replicas = 0;
    ms_gguf_get_u32(g, "moeshard.shard.hosts", &hosts);
    ms_gguf_get_u32(g, "moeshard.shard.replicas", &replicas);
    const ms_hparams_t *hp = ms_shard_hparams(sh);
    uint64_t bytes = 0;
    int32_t layers = 0;
    for (size_t i = 0; i < ms_shard_n_slices(sh); i++) {
        const ms_slice_t *s = ms_shard_slice(sh, i);
        bytes += s->nbytes[MS_PROJ_GATE] + s->nbytes[MS_PROJ_UP] + s->nbytes[MS_PROJ_DOWN];
        layers += i == 0 || ms_shard_slice(sh, i - 1)->layer != s->layer;
    }
    print_hparams(hp, g, "moeshard.shard.source");
    printf("shard         host shard %d of %u (replicas %u, epoch %" PRIu64 "): %d layers, %zu slices, %.2f MB;"
           " SHA-256 per tensor and per expert slab\n", ms_shard_host(sh), hosts, replicas, ms_shard_epoch(sh),
           layers, ms_shard_n_slices(sh), (double)bytes / 1e6);
    for (size_t i = 0; i < ms_shard_n_slices(sh);) {
        printf("  layer %d: experts ", ms_shard_slice(sh, i)->layer);
        print_ids(sh, &i);
        printf("\n");
    }
    ms_shard_destroy(&sh);
    return COORD_EXIT_OK;
}

static int print_dense(const ms_gguf_t *g)
{
    ms_err_t err = { { 0 } };
    ms_hparams_t hp;
    if (ms_hparams_read(g, &hp, &err)) {
        fprintf(stderr, "moeshard inspect: %s\n", err.msg);
        return COORD_EXIT_FAIL;
    }
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++)
        bytes += ms_gguf_tensor(g, i)->nbytes;
    print_hparams(&hp, g, "moeshard.dense.source");
    printf("dense         dense part of a packed model: %" PRIu64 " tensors, %.2f MB; experts live in host shards\n",
           ms_gguf_n_tensors(g), (double)bytes / 1e6);
    return COORD_EXIT_OK;
}

/* Files written by moeshard pack. */
static int print_packed(const ms_gguf_t *g)
{
    return ms_gguf_find_kv(g, "moeshard.shard.version") ? print_shard(g) : print_dense(g);
}

int coord_cmd_inspect(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "tensors", no_argument, 0, 'T' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    bool tensors = false;
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1;) {
        switch (c) {
        case 'T': tensors = true; break;
        case 'h': inspect_help(); return COORD_EXIT_OK;
        default: coord_usage_error(CMD, "unknown option '%s'", argv[optind - 1]); return COORD_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        coord_usage_error(CMD, "give exactly one model file");
        return COORD_EXIT_USAGE;
    }
    const char *path = argv[optind];
    ms_err_t err = { { 0 } };
    ms_gguf_t *g = NULL;
    if (ms_gguf_open(path, &g, &err)) {
        fprintf(stderr, "moeshard inspect: %s\n", err.msg);
        return COORD_EXIT_FAIL;
    }
    if (ms_gguf_n_parts(g) > 1)
        print_parts(g);
    else
        printf("file          %s (%.2f MB, GGUF v3, %" PRIu64 " tensors, %" PRIu64 " metadata keys, alignment %u)\n",
               path, (double)ms_gguf_file_size(g) / 1e6, ms_gguf_n_tensors(g), ms_gguf_n_kv(g), ms_gguf_alignment(g));
    print_str_kv(g, "name", "general.name");
    print_str_kv(g, "tokenizer", "tokenizer.ggml.model");
    print_str_kv(g, "pre-tokenizer", "tokenizer.ggml.pre");
    print_types(g);
    if (tensors)
        print_tensors(g);
    if (ms_gguf_find_kv(g, "moeshard.shard.version") || ms_gguf_find_kv(g, "moeshard.dense.source")) {
        int status = print_packed(g);
        ms_gguf_close(&g);
        return status;
    }
    ms_model_t *m = NULL;
    int rc = ms_model_from_gguf(&g, &m, &err);
    if (rc) {
        printf("runnable      no: %s\n", err.msg);
        return COORD_EXIT_OK;
    }
    print_model(m);
    ms_model_destroy(&m);
    return COORD_EXIT_OK;
}
