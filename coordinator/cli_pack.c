/* moeshard pack: splits a model into the coordinator's dense part and one GGUF
 * shard per expert host, following a byte-balanced placement (docs/pack.md). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "gguf.h"
#include "gguf_write.h"
#include "placement.h"
#include "progress.h"
#include "shard.h"

#define CMD "pack"
#define PACK_ALIGNMENT 4096                   /* shard tensor data: O_DIRECT-friendly */
#define PACK_CHUNK_BYTES (4u << 20)           /* bytes hashed and written per step */
#define PACK_PROGRESS_BYTES_MIN (64ull << 20) /* smaller packs print no progress */
#define PACK_EPOCH 1                          /* the first placement of a model */
#define PACK_PATH_BYTES 4096

static const char *const proj_names[MS_PROJ_COUNT] = { "gate", "up", "down" };
static const char placeholder_hex[2 * MS_SHA256_BYTES + 1] =
    "0000000000000000000000000000000000000000000000000000000000000000";

typedef struct {
    const char *model, *out;
    int32_t hosts, replicas;
    bool force;
} pack_opts_t;


/* One tensor of an output file: a whole source tensor, or n_slabs expert
 * slabs of a merged source tensor. */
typedef struct {
    char name[MS_GGUF_NAME_BYTES_MAX];
    const ms_gguf_tensor_t *src;
    int32_t n_slabs;          /* 0: the whole tensor */
    const int32_t *experts;   /* [n_slabs], ascending */
    uint64_t mat_bytes;       /* one slab */
    uint8_t digest[MS_SHA256_BYTES];
    uint8_t (*slab_digests)[MS_SHA256_BYTES]; /* [n_slabs] */
} out_tensor_t;

typedef struct {
    out_tensor_t *t;
    size_t n;
} out_list_t;

typedef struct {
    pack_opts_t o;
    const ms_gguf_t *g;
    const ms_shard_t *sh;
    ms_placement_t *pl;
    const char *arch;
    const char *model_base;
    int32_t *ids;   /* [n_layer][n_expert]: the experts host K holds, per layer */
    int32_t *n_ids; /* [n_layer] */
    ms_progress_t pr;
    ms_err_t err;
} pack_t;

static void pack_help(void)
{
    printf("usage: moeshard pack M.gguf --hosts N [--replicas R] --out DIR [--force]\n\n"
           "Splits a model for a cluster: places every (layer, expert) slice on R of N hosts,\n"
           "bytes balanced, and writes into DIR:\n"
           "  plan.json     the placement: which slices each host holds\n"
           "  dense.gguf    everything but the routed experts (for the coordinator)\n"
           "  host-K.gguf   host K's expert slices, K = 0..N-1 (for expertd --model)\n"
           "M.gguf may be any part of a split model (NAME-0000K-of-0000N.gguf): all parts are read.\n"
           "Every tensor carries a SHA-256 in the metadata, every expert slab its own.\n\n"
           "  -n, --hosts N      expert hosts, 1..%d\n"
           "  -r, --replicas R   copies of each slice, on distinct hosts, 1..N (default 1)\n"
           "  -o, --out DIR      output folder; created if missing, must be empty\n"
           "  -f, --force        write into a non-empty DIR, replacing earlier pack files\n"
           "  -h, --help         this help\n",
           MS_HOSTS_MAX);
}

/* Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, pack_opts_t *o)
{
    static const struct option longopts[] = {
        { "hosts", required_argument, 0, 'n' }, { "replicas", required_argument, 0, 'r' },
        { "out", required_argument, 0, 'o' },   { "force", no_argument, 0, 'f' },
        { "help", no_argument, 0, 'h' },        { 0, 0, 0, 0 } };
    int64_t v;
    *o = (pack_opts_t){ .replicas = 1 };
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":n:r:o:fh", longopts, NULL)) != -1;) {
        switch (c) {
        case 'n':
            if (!coord_parse_i64(CMD, "--hosts", optarg, 1, MS_HOSTS_MAX, &v))
                return COORD_EXIT_USAGE;
            o->hosts = (int32_t)v;
            break;
        case 'r':
            if (!coord_parse_i64(CMD, "--replicas", optarg, 1, MS_HOSTS_MAX, &v))
                return COORD_EXIT_USAGE;
            o->replicas = (int32_t)v;
            break;
        case 'o': o->out = optarg; break;
        case 'f': o->force = true; break;
        case 'h': pack_help(); return COORD_EXIT_OK;
        case ':': coord_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]); return COORD_EXIT_USAGE;
        default: coord_usage_error(CMD, "unknown option '%s'", argv[optind - 1]); return COORD_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        coord_usage_error(CMD, "give exactly one model file");
        return COORD_EXIT_USAGE;
    }
    o->model = argv[optind];
    if (!o->hosts || !o->out) {
        coord_usage_error(CMD, "%s is required", !o->hosts ? "--hosts" : "--out");
        return COORD_EXIT_USAGE;
    }
    if (strlen(o->out) > PACK_PATH_BYTES - 64) {
        coord_usage_error(CMD, "--out path is longer than %d bytes", PACK_PATH_BYTES - 64);
        return COORD_EXIT_USAGE;
    }
    if (o->replicas > o->hosts) {
        coord_usage_error(CMD, "--replicas %d exceeds --hosts %d: the copies of a slice go to distinct hosts",
                          o->replicas, o->hosts);
        return COORD_EXIT_USAGE;
    }
    return -1;
}

/* ---- output folder ---- */

/* Is name one of the files pack writes (plan.json, dense.gguf, host-K.gguf)? *ret_host: K or -1. */
static bool is_pack_file(const char *name, int *ret_host)
{
    int k = -1, used = 0;
    *ret_host = -1;
    if (!strcmp(name, "plan.json") || !strcmp(name, "dense.gguf"))
        return true;
    if (sscanf(name, "host-%d.gguf%n", &k, &used) == 1 && name[used] == '\0' && k >= 0) {
        *ret_host = k;
        return true;
    }
    return false;
}

/* Creates DIR or checks it is empty; with --force, removes the host files of
 * an earlier pack with more hosts so the folder describes one placement. */
static int prepare_dir(const pack_opts_t *o)
{
    if (mkdir(o->out, 0755) == 0)
        return 0;
    if (errno != EEXIST) {
        fprintf(stderr, "moeshard pack: cannot create output folder '%s': %s\n", o->out, strerror(errno));
        return -1;
    }
    DIR *d = opendir(o->out);
    if (!d || access(o->out, W_OK) != 0) {
        fprintf(stderr, "moeshard pack: output '%s' is not a writable folder: %s\n", o->out, strerror(errno));
        if (d)
            closedir(d);
        return -1;
    }
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;) {
        int k;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (!o->force) {
            fprintf(stderr, "moeshard pack: output folder '%s' is not empty (it holds '%s'); give --force to"
                    " write into it anyway\n", o->out, e->d_name);
            rc = -1;
        } else if (is_pack_file(e->d_name, &k) && k >= o->hosts) {
            char p[PACK_PATH_BYTES];
            snprintf(p, sizeof(p), "%s/%s", o->out, e->d_name);
            if (unlink(p) != 0)
                fprintf(stderr, "moeshard pack: cannot remove stale '%s': %s\n", p, strerror(errno));
        }
    }
    closedir(d);
    return rc;
}

/* ---- progress ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- copying with digests ---- */

/* The source pages are not needed again by this pass: let them leave the
 * resident set (they stay in the page cache for the other replicas). */
static void release_pages(const void *p, uint64_t n)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) / page * page, hi = ((uintptr_t)p + n) / page * page;
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static int copy_bytes(pack_t *pk, ms_gguf_writer_t *w, const uint8_t *p, uint64_t n, EVP_MD_CTX *a, EVP_MD_CTX *b)
{
    for (uint64_t off = 0; off < n; off += PACK_CHUNK_BYTES) {
        size_t len = (size_t)(n - off < PACK_CHUNK_BYTES ? n - off : PACK_CHUNK_BYTES);
        if (EVP_DigestUpdate(a, p + off, len) != 1 || (b && EVP_DigestUpdate(b, p + off, len) != 1)) {
            ms_err_set(&pk->err, "SHA-256 failed (out of memory)");
            return -ENOMEM;
        }
        int rc = ms_gguf_writer_write(w, p + off, len, &pk->err);
        if (rc)
            return rc;
        ms_progress_add(&pk->pr, len);
    }
    release_pages(p, n);
    return 0;
}

static int digest_final(EVP_MD_CTX *c, uint8_t out[MS_SHA256_BYTES])
{
    unsigned int len = 0;
    int ok = EVP_DigestFinal_ex(c, out, &len) == 1 && len == MS_SHA256_BYTES;
    return ok && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
}

/* Streams t's bytes from the mapped source, hashing the tensor and each slab. */
static int copy_tensor(pack_t *pk, ms_gguf_writer_t *w, out_tensor_t *t, EVP_MD_CTX *whole, EVP_MD_CTX *slab)
{
    const uint8_t *base = t->src->data;
    int rc = 0;
    if (t->n_slabs == 0)
        rc = copy_bytes(pk, w, base, t->src->nbytes, whole, NULL);
    for (int32_t i = 0; i < t->n_slabs && !rc; i++) {
        rc = copy_bytes(pk, w, base + (uint64_t)t->experts[i] * t->mat_bytes, t->mat_bytes, whole, slab);
        rc = rc ? rc : digest_final(slab, t->slab_digests[i]);
    }
    rc = rc ? rc : digest_final(whole, t->digest);
    if (rc == -ENOMEM)
        ms_err_set(&pk->err, "SHA-256 failed (out of memory)");
    return rc;
}

static int copy_all(pack_t *pk, ms_gguf_writer_t *w, out_list_t *l)
{
    EVP_MD_CTX *whole = EVP_MD_CTX_new(), *slab = EVP_MD_CTX_new();
    int rc = whole && slab && EVP_DigestInit_ex(whole, EVP_sha256(), NULL) == 1 &&
             EVP_DigestInit_ex(slab, EVP_sha256(), NULL) == 1 ? 0 : -ENOMEM;
    if (rc)
        ms_err_set(&pk->err, "SHA-256 setup failed (out of memory)");
    for (size_t i = 0; i < l->n && !rc; i++)
        rc = copy_tensor(pk, w, &l->t[i], whole, slab);
    EVP_MD_CTX_free(whole);
    EVP_MD_CTX_free(slab);
    return rc;
}

/* ---- digests in the metadata ---- */

/* Declares moeshard.sha256.NAME (and slab digests) with placeholder text of
 * the final length; patch_digests overwrites it in place once known. */
static int declare_digests(ms_gguf_writer_t *w, const out_list_t *l)
{
    const char **ph = malloc(MS_EXPERTS_MAX * sizeof(*ph));
    int rc = ph ? 0 : -ENOMEM;
    for (int i = 0; ph && i < MS_EXPERTS_MAX; i++)
        ph[i] = placeholder_hex;
    for (size_t i = 0; i < l->n && !rc; i++) {
        char key[MS_GGUF_NAME_BYTES_MAX + 32];
        snprintf(key, sizeof(key), "moeshard.sha256.%s", l->t[i].name);
        rc = ms_gguf_writer_add_str(w, key, placeholder_hex);
        snprintf(key, sizeof(key), "moeshard.slab_sha256.%s", l->t[i].name);
        if (!rc && l->t[i].n_slabs)
            rc = ms_gguf_writer_add_arr_str(w, key, ph, NULL, (uint64_t)l->t[i].n_slabs);
    }
    free(ph);
    return rc;
}

static int patch_one(int fd, const ms_gguf_t *g, ms_str_t s, const uint8_t digest[MS_SHA256_BYTES])
{
    char hex[2 * MS_SHA256_BYTES + 1];
    ms_sha256_hex(digest, hex);
    off_t off = (off_t)(s.ptr - (const char *)ms_gguf_base(g));
    if (s.len != 2 * MS_SHA256_BYTES)
        return -EINVAL;
    return pwrite(fd, hex, 2 * MS_SHA256_BYTES, off) == 2 * MS_SHA256_BYTES ? 0 : -EIO;
}

/* Writes the digests computed while copying over their placeholders. */
static int patch_digests(pack_t *pk, const char *path, const out_list_t *l)
{
    ms_gguf_t *g = NULL;
    int rc = ms_gguf_open(path, &g, &pk->err);
    int fd = rc ? -1 : open(path, O_WRONLY);
    if (!rc && fd < 0) {
        ms_err_set(&pk->err, "%s: cannot open for writing: %s", path, strerror(errno));
        rc = -EIO;
    }
    for (size_t i = 0; i < l->n && !rc; i++) {
        char key[MS_GGUF_NAME_BYTES_MAX + 32];
        const out_tensor_t *t = &l->t[i];
        ms_str_t s = { 0 };
        const ms_gguf_kv_t *kv = NULL;
        snprintf(key, sizeof(key), "moeshard.sha256.%s", t->name);
        rc = ms_gguf_get_str(g, key, &s);
        rc = rc ? rc : patch_one(fd, g, s, t->digest);
        snprintf(key, sizeof(key), "moeshard.slab_sha256.%s", t->name);
        if (!rc && t->n_slabs)
            rc = ms_gguf_get_arr(g, key, MS_GGUF_STRING, &kv);
        for (int32_t j = 0; !rc && j < t->n_slabs; j++)
            rc = patch_one(fd, g, kv->arr_strs[j], t->slab_digests[j]);
        if (rc)
            ms_err_set(&pk->err, "%s: cannot write the SHA-256 of tensor '%s'", path, t->name);
    }
    if (fd >= 0 && close(fd) != 0 && !rc) {
        ms_err_set(&pk->err, "%s: %s", path, strerror(errno));
        rc = -EIO;
    }
    ms_gguf_close(&g);
    return rc;
}

/* ---- one output file ---- */

static void out_list_free(out_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->t[i].slab_digests);
    free(l->t);
    *l = (out_list_t){ 0 };
}

/* Declares l's tensors, streams them into DIR/file (via a temporary name),
 * fills in the digests and moves the file into place. */
static int write_file(pack_t *pk, ms_gguf_writer_t *w, out_list_t *l, const char *file)
{
    char tmp[PACK_PATH_BYTES + 8], path[PACK_PATH_BYTES];
    snprintf(path, sizeof(path), "%s/%s", pk->o.out, file);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int rc = declare_digests(w, l);
    for (size_t i = 0; i < l->n && !rc; i++) {
        const ms_gguf_tensor_t *s = l->t[i].src;
        int64_t ne[MS_GGUF_DIMS_MAX] = { s->ne[0], s->ne[1], s->ne[2], s->ne[3] };
        if (l->t[i].n_slabs)
            ne[2] = l->t[i].n_slabs;
        rc = ms_gguf_writer_add_tensor(w, l->t[i].name, s->type, s->n_dims, ne);
    }
    if (rc)
        ms_err_set(&pk->err, "%s: cannot declare its metadata and tensors (%s)", path, strerror(-rc));
    rc = rc ? rc : ms_gguf_writer_begin(w, tmp, &pk->err);
    rc = rc ? rc : copy_all(pk, w, l);
    rc = rc ? rc : ms_gguf_writer_finish(w, &pk->err);
    rc = rc ? rc : patch_digests(pk, tmp, l);
    if (!rc && rename(tmp, path) != 0) {
        ms_err_set(&pk->err, "%s: cannot rename into place: %s", path, strerror(errno));
        rc = -EIO;
    }
    if (rc)
        unlink(tmp);
    return rc;
}

/* blk.L.ffn_{gate,up,down}_exps.weight for a layer L of the model. */
static bool is_expert_tensor(const pack_t *pk, ms_str_t name)
{
    char n[MS_GGUF_NAME_BYTES_MAX], proj[8];
    int layer = -1, used = 0;
    snprintf(n, sizeof(n), "%.*s", (int)(name.len < sizeof(n) - 1 ? name.len : sizeof(n) - 1), name.ptr);
    if (sscanf(n, "blk.%d.ffn_%7[a-z]_exps.weight%n", &layer, proj, &used) != 2 || used == 0 || n[used] != '\0')
        return false;
    if (layer < 0 || layer >= ms_shard_hparams(pk->sh)->n_layer)
        return false;
    for (int p = 0; p < MS_PROJ_COUNT; p++)
        if (!strcmp(proj, proj_names[p]))
            return true;
    return false;
}

static bool has_prefix(ms_str_t s, const char *prefix)
{
    size_t n = strlen(prefix);
    return s.len >= n && memcmp(s.ptr, prefix, n) == 0;
}

/* dense.gguf: every metadata key and every tensor but the routed experts.
 * The split.* keys of a split model stay behind: dense.gguf is one file. */
static int write_dense(pack_t *pk, size_t *ret_n, uint64_t *ret_bytes)
{
    const ms_gguf_t *g = pk->g;
    out_list_t l = { calloc(ms_gguf_n_tensors(g) + 1, sizeof(out_tensor_t)), 0 };
    ms_gguf_writer_t *w = ms_gguf_writer_new(ms_gguf_alignment(g));
    int rc = l.t && w ? 0 : -ENOMEM;
    for (uint64_t i = 0; i < ms_gguf_n_kv(g) && !rc; i++) {
        const ms_gguf_kv_t *kv = ms_gguf_kv(g, i);
        if (!ms_str_eq(kv->key, "general.alignment") && !has_prefix(kv->key, "moeshard.") &&
            !has_prefix(kv->key, "split."))
            rc = ms_gguf_writer_copy_kv(w, kv);
    }
    rc = rc ? rc : ms_gguf_writer_add_str(w, "moeshard.dense.source", pk->model_base);
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g) && !rc; i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        if (is_expert_tensor(pk, t->name))
            continue;
        out_tensor_t *o = &l.t[l.n++];
        snprintf(o->name, sizeof(o->name), "%.*s", (int)t->name.len, t->name.ptr);
        o->src = t;
        bytes += t->nbytes;
    }
    if (rc)
        ms_err_set(&pk->err, "dense.gguf: cannot copy the metadata (%s)", strerror(-rc));
    rc = rc ? rc : write_file(pk, w, &l, "dense.gguf");
    *ret_n = l.n;
    *ret_bytes = bytes;
    ms_gguf_writer_destroy(&w);
    out_list_free(&l);
    return rc;
}

/* The experts host k holds per layer, ascending, into pk->ids / pk->n_ids.
 * The placement counts MoE layers only: its layer 0 is the first after the
 * leading dense layers (deepseek2), which no host holds anything of. */
static void collect_ids(pack_t *pk, int32_t k)
{
    const ms_hparams_t *hp = ms_shard_hparams(pk->sh);
    int32_t lead = hp->n_layer_dense_lead;
    for (int32_t l = 0; l < hp->n_layer; l++) {
        pk->n_ids[l] = 0;
        for (int32_t e = 0; l >= lead && e < hp->n_expert; e++)
            if (ms_placement_holds(pk->pl, k, l - lead, e))
                pk->ids[(size_t)l * (size_t)hp->n_expert + (size_t)pk->n_ids[l]++] = e;
    }
}

static int host_metadata(pack_t *pk, ms_gguf_writer_t *w, int32_t k)
{
    const ms_gguf_t *g = pk->g;
    const ms_hparams_t *hp = ms_shard_hparams(pk->sh);
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%s.", pk->arch);
    int rc = ms_gguf_writer_copy_kv(w, ms_gguf_find_kv(g, "general.architecture"));
    for (uint64_t i = 0; i < ms_gguf_n_kv(g) && !rc; i++)
        if (has_prefix(ms_gguf_kv(g, i)->key, prefix))
            rc = ms_gguf_writer_copy_kv(w, ms_gguf_kv(g, i));
    rc = rc ? rc : ms_gguf_writer_add_u32(w, "moeshard.shard.version", MS_SHARD_VERSION);
    rc = rc ? rc : ms_gguf_writer_add_u32(w, "moeshard.shard.host", (uint32_t)k);
    rc = rc ? rc : ms_gguf_writer_add_u32(w, "moeshard.shard.hosts", (uint32_t)pk->o.hosts);
    rc = rc ? rc : ms_gguf_writer_add_u32(w, "moeshard.shard.replicas", (uint32_t)pk->o.replicas);
    rc = rc ? rc : ms_gguf_writer_add_u64(w, "moeshard.shard.epoch", PACK_EPOCH);
    rc = rc ? rc : ms_gguf_writer_add_str(w, "moeshard.shard.source", pk->model_base);
    for (int32_t l = 0; l < hp->n_layer && !rc; l++) {
        char key[64];
        snprintf(key, sizeof(key), "moeshard.shard.blk.%d.experts", l);
        if (pk->n_ids[l])
            rc = ms_gguf_writer_add_arr_i32(w, key, &pk->ids[(size_t)l * (size_t)hp->n_expert],
                                            (uint64_t)pk->n_ids[l]);
    }
    return rc;
}

/* The three merged tensors of every layer where host k holds experts. */
static int host_tensors(pack_t *pk, out_list_t *l)
{
    const ms_hparams_t *hp = ms_shard_hparams(pk->sh);
    for (int32_t il = 0; il < hp->n_layer; il++) {
        for (int p = 0; pk->n_ids[il] && p < MS_PROJ_COUNT; p++) {
            out_tensor_t *o = &l->t[l->n++];
            snprintf(o->name, sizeof(o->name), "blk.%d.ffn_%s_exps.weight", il, proj_names[p]);
            o->src = ms_gguf_find_tensor(pk->g, o->name); /* present: ms_shard_open checked it */
            o->n_slabs = pk->n_ids[il];
            o->experts = &pk->ids[(size_t)il * (size_t)hp->n_expert];
            o->mat_bytes = o->src->nbytes / (uint64_t)o->src->ne[2];
            o->slab_digests = calloc((size_t)o->n_slabs, MS_SHA256_BYTES);
            if (!o->slab_digests)
                return -ENOMEM;
        }
    }
    return 0;
}

static int write_host(pack_t *pk, int32_t k)
{
    char file[64];
    snprintf(file, sizeof(file), "host-%d.gguf", k);
    collect_ids(pk, k);
    out_list_t l = { calloc((size_t)ms_shard_hparams(pk->sh)->n_layer * MS_PROJ_COUNT, sizeof(out_tensor_t)), 0 };
    ms_gguf_writer_t *w = ms_gguf_writer_new(PACK_ALIGNMENT);
    int rc = l.t && w ? 0 : -ENOMEM;
    rc = rc ? rc : host_metadata(pk, w, k);
    rc = rc ? rc : host_tensors(pk, &l);
    if (rc)
        ms_err_set(&pk->err, "%s: cannot declare its metadata (%s)", file, strerror(-rc));
    rc = rc ? rc : write_file(pk, w, &l, file);
    ms_gguf_writer_destroy(&w);
    out_list_free(&l);
    return rc;
}

/* ---- plan.json ---- */

static json_t *host_json(pack_t *pk, int32_t k)
{
    const ms_hparams_t *hp = ms_shard_hparams(pk->sh);
    char file[64];
    snprintf(file, sizeof(file), "host-%d.gguf", k);
    json_t *slices = json_array();
    collect_ids(pk, k);
    for (int32_t l = 0; slices && l < hp->n_layer; l++) {
        if (!pk->n_ids[l])
            continue;
        json_t *ids = json_array();
        for (int32_t i = 0; ids && i < pk->n_ids[l]; i++)
            json_array_append_new(ids, json_integer(pk->ids[(size_t)l * (size_t)hp->n_expert + (size_t)i]));
        json_array_append_new(slices, json_pack("[io]", l, ids));
    }
    return json_pack("{si ss sI so}", "host", k, "file", file, "bytes",
                     (json_int_t)ms_placement_host_bytes(pk->pl, k), "slices", slices);
}

static int write_plan(pack_t *pk, const char *header_hex)
{
    const ms_hparams_t *hp = ms_shard_hparams(pk->sh);
    json_t *hosts = json_array();
    for (int32_t k = 0; hosts && k < pk->o.hosts; k++)
        json_array_append_new(hosts, host_json(pk, k));
    json_t *plan = json_pack("{si ss ss ss si si si si si so ss}", "version", 1, "model", pk->model_base,
                             "model_sha256_of_header", header_hex, "architecture", pk->arch, "layers",
                             hp->n_layer, "experts", hp->n_expert, "hosts", pk->o.hosts, "replicas",
                             pk->o.replicas, "epoch", PACK_EPOCH, "host_files", hosts, "dense_file", "dense.gguf");
    char tmp[PACK_PATH_BYTES + 8], path[PACK_PATH_BYTES];
    snprintf(path, sizeof(path), "%s/plan.json", pk->o.out);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int rc = plan && json_array_size(hosts) == (size_t)pk->o.hosts ? 0 : -ENOMEM;
    if (!rc && (json_dump_file(plan, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0 || rename(tmp, path) != 0))
        rc = -EIO;
    if (rc) {
        ms_err_set(&pk->err, "%s: cannot write the plan (%s)", path, rc == -EIO ? strerror(errno) : "out of memory");
        unlink(tmp);
    }
    json_decref(plan);
    return rc;
}

/* ---- the command ---- */

static int open_source(pack_t *pk, ms_gguf_t **ret_g, ms_shard_t **ret_sh)
{
    int rc = ms_gguf_open(pk->o.model, ret_g, &pk->err);
    rc = rc ? rc : ms_shard_open(*ret_g, ret_sh, &pk->err);
    if (!rc && ms_shard_is_packed(*ret_sh)) {
        ms_err_set(&pk->err, "%s is a host shard already; pack the full model", pk->o.model);
        rc = -EINVAL;
    }
    if (rc)
        return rc;
    pk->g = *ret_g;
    pk->sh = *ret_sh;
    pk->arch = ms_arch_name(ms_shard_hparams(pk->sh)->arch);
    const char *slash = strrchr(pk->o.model, '/');
    pk->model_base = slash ? slash + 1 : pk->o.model;
    return 0;
}

static int compute_placement(pack_t *pk)
{
    const ms_hparams_t *hp = ms_shard_hparams(pk->sh);
    uint64_t bytes[MS_LAYERS_MAX];
    int32_t lead = hp->n_layer_dense_lead; /* placed: the MoE layers only (collect_ids) */
    for (int32_t l = lead; l < hp->n_layer; l++) {
        const ms_slice_t *s = ms_shard_find(pk->sh, l, 0);
        if (!s) {
            ms_err_set(&pk->err, "%s: layer %d has no routed-expert tensors (blk.%d.ffn_*_exps) though it follows "
                                 "the %d dense leading layers", pk->o.model, l, l, lead);
            return -EINVAL;
        }
        bytes[l - lead] = s->nbytes[MS_PROJ_GATE] + s->nbytes[MS_PROJ_UP] + s->nbytes[MS_PROJ_DOWN];
    }
    ms_placement_params_t p = { hp->n_layer - lead, hp->n_expert, bytes, pk->o.hosts, pk->o.replicas, NULL };
    int rc = ms_placement_compute(&p, &pk->pl, &pk->err);
    pk->ids = calloc((size_t)hp->n_layer * (size_t)hp->n_expert, sizeof(int32_t));
    pk->n_ids = calloc((size_t)hp->n_layer, sizeof(int32_t));
    if (!rc && (!pk->ids || !pk->n_ids)) {
        ms_err_set(&pk->err, "out of memory");
        rc = -ENOMEM;
    }
    return rc;
}

static void summary(const pack_t *pk, size_t n_dense, uint64_t dense_bytes, double seconds)
{
    const ms_hparams_t *hp = ms_shard_hparams(pk->sh);
    printf("packed %s (%s, %d layers x %d experts) for %d hosts, %d replicas, epoch %d into %s\n", pk->model_base,
           pk->arch, hp->n_layer, hp->n_expert, pk->o.hosts, pk->o.replicas, PACK_EPOCH, pk->o.out);
    printf("  %-14s %zu tensors, %.2f MB\n", "dense.gguf", n_dense, (double)dense_bytes / 1e6);
    for (int32_t k = 0; k < pk->o.hosts; k++) {
        char file[64];
        snprintf(file, sizeof(file), "host-%d.gguf", k);
        printf("  %-14s %u slices, %.2f MB\n", file, ms_placement_host_slices(pk->pl, k),
               (double)ms_placement_host_bytes(pk->pl, k) / 1e6);
    }
    printf("  wrote %.2f MB in %.2f s (%.0f MB/s)\n", (double)pk->pr.done / 1e6, seconds,
           seconds > 0 ? (double)pk->pr.done / 1e6 / seconds : 0.0);
}

static int pack_run(pack_t *pk)
{
    char header_hex[2 * MS_SHA256_BYTES + 1];
    uint8_t header[MS_SHA256_BYTES];
    int rc = ms_sha256(ms_gguf_base(pk->g), (size_t)ms_gguf_data_offset(pk->g), header);
    if (rc) {
        ms_err_set(&pk->err, "SHA-256 of the model header failed");
        return rc;
    }
    ms_sha256_hex(header, header_hex);
    uint64_t total = 0;
    for (uint64_t i = 0; i < ms_gguf_n_tensors(pk->g); i++)
        if (!is_expert_tensor(pk, ms_gguf_tensor(pk->g, i)->name))
            total += ms_gguf_tensor(pk->g, i)->nbytes;
    for (int32_t k = 0; k < pk->o.hosts; k++)
        total += ms_placement_host_bytes(pk->pl, k);
    ms_progress_init(&pk->pr, "moeshard pack", total, PACK_PROGRESS_BYTES_MIN);
    size_t n_dense = 0;
    uint64_t dense_bytes = 0;
    rc = write_dense(pk, &n_dense, &dense_bytes);
    for (int32_t k = 0; k < pk->o.hosts && !rc; k++)
        rc = write_host(pk, k);
    rc = rc ? rc : write_plan(pk, header_hex);
    if (!rc)
        summary(pk, n_dense, dense_bytes, now_s() - pk->pr.t0);
    return rc;
}

int coord_cmd_pack(int argc, char **argv)
{
    pack_t pk = { 0 };
    int status = parse_args(argc, argv, &pk.o);
    if (status >= 0)
        return status;
    ms_gguf_t *g = NULL;
    ms_shard_t *sh = NULL;
    int rc = open_source(&pk, &g, &sh);
    rc = rc ? rc : compute_placement(&pk);
    if (!rc && prepare_dir(&pk.o) != 0)
        rc = 1; /* prepare_dir printed why */
    else if (!rc)
        rc = pack_run(&pk);
    if (rc < 0)
        fprintf(stderr, "moeshard pack: %s\n", pk.err.msg);
    free(pk.ids);
    free(pk.n_ids);
    ms_placement_destroy(&pk.pl);
    ms_shard_destroy(&sh);
    ms_gguf_close(&g);
    return rc ? COORD_EXIT_FAIL : COORD_EXIT_OK;
}
