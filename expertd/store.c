/* expertd's slice store: which (layer, expert) slices this host serves and
 * the memory they were read into. Compute reads only these buffers; the
 * model file is mapped for its metadata alone and closed after loading. */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "config.h"
#include "gguf.h"
#include "kernels.h"
#include "limits.h"
#include "log.h"
#include "mem.h"
#include "notify.h"
#include "uring_load.h"


typedef struct {
    int32_t n_held;
    int32_t *global;                /* [n_held] expert id of each slab index */
    const ms_slice_t **slice;       /* [n_held] where it is in the file (valid until load closes the file) */
    bool *ok;                       /* [n_held] loaded and digest matched */
    void *slab[MS_PROJ_COUNT];      /* [n_held][n_out][row_bytes] */
    size_t slab_bytes[MS_PROJ_COUNT];
    ms_weight_t w[MS_PROJ_COUNT];
} store_layer_t;

struct expertd_store {
    char path[EXPERTD_PATH_BYTES_MAX];
    ms_gguf_t *gguf;
    ms_shard_t *shard;
    ms_hparams_t hp;
    int32_t host;
    uint64_t epoch;
    store_layer_t *layers;          /* [n_layer] */
    int32_t *local;                 /* [n_layer][n_expert] slab index of a served slice, or -1 */
    int32_t max_held, widest_layer;
    bool start_empty;               /* --experts none: every slice comes by Load */
    uint64_t capacity;              /* bytes of slices it may hold, told to the coordinator; 0: not stated */
    ms_wire_slice_t *served, *failed;
    uint32_t n_served, n_failed;
    uint64_t bytes;
    uint32_t n_laid_out;            /* Q8_0 matrices laid out 16 rows at a time so far */
    double lay_out_s;               /* and the time it took */
};

static const char *const proj_names[MS_PROJ_COUNT] = { "gate", "up", "down" };

void expertd_store_destroy(expertd_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    expertd_store_t *s = *self_p;
    for (int32_t l = 0; s->layers && l < s->hp.n_layer; l++) {
        store_layer_t *L = &s->layers[l];
        free(L->global);
        free(L->slice);
        free(L->ok);
        for (int p = 0; p < MS_PROJ_COUNT; p++)
            ms_mem_free(L->slab[p], L->slab_bytes[p]);
    }
    free(s->layers);
    free(s->local);
    free(s->served);
    free(s->failed);
    ms_shard_destroy(&s->shard);
    ms_gguf_close(&s->gguf);
    free(s);
    *self_p = NULL;
}

/* The experts a full model's host holds in every layer. */
static int pick_experts(expertd_store_t *s, const char *spec, bool *held, ms_err_t *err)
{
    if (ms_shard_is_packed(s->shard)) {
        if (spec) {
            ms_err_set(err, "%s: --experts applies to a full GGUF only; this shard (host %d) holds its own list",
                       s->path, s->host);
            return -EINVAL;
        }
        memset(held, 1, sizeof(bool) * (size_t)s->hp.n_expert);
        return 0;
    }
    if (spec && strcmp(spec, "none") == 0) { /* slices come later, by Load */
        s->start_empty = true;
        return 0;
    }
    ms_err_t e = { { 0 } };
    if (expertd_experts_parse(spec ? spec : "all", s->hp.n_expert, held, &e)) {
        ms_err_set(err, "--experts '%s': %s", spec ? spec : "all", e.msg);
        return -EINVAL;
    }
    return 0;
}

/* Checks a layer's expert shapes: the same for every layer (one workspace
 * serves them all), computable types, slabs as long as their matrices. */
static int layer_views(expertd_store_t *s, int32_t l, ms_err_t *err)
{
    const ms_slice_shape_t *sh = ms_shard_layer_shape(s->shard, l);
    store_layer_t *L = &s->layers[l];
    if (!sh)
        return 0; /* no routed experts in this layer of the file */
    int64_t d = s->hp.n_embd, ff = s->hp.n_ff_exp;
    const int64_t want_in[MS_PROJ_COUNT] = { d, d, ff }, want_out[MS_PROJ_COUNT] = { ff, ff, d };
    for (int p = 0; p < MS_PROJ_COUNT; p++) {
        const ms_type_traits_t *tr = ms_type_traits(sh->type[p]);
        uint64_t rb = ms_type_row_bytes(sh->type[p], (uint64_t)sh->n_in[p]);
        if (!tr || !tr->computable || sh->n_in[p] != want_in[p] || sh->n_out[p] != want_out[p] || rb == 0) {
            ms_err_set(err, "%s: layer %d ffn_%s_exps: type %s [%lld][%lld] cannot be served (expected [%lld][%lld] of a computable type)",
                       s->path, l, proj_names[p], tr ? tr->name : "?", (long long)sh->n_out[p],
                       (long long)sh->n_in[p], (long long)want_out[p], (long long)want_in[p]);
            return -EINVAL;
        }
        /* Q8_0 matrices are served laid out 16 rows at a time (kernels.h), as
         * moeshard run holds those it reads into memory: the same kernels
         * on both sides, so a host's products are the process's bits. */
        L->w[p] = (ms_weight_t){ .type = sh->type[p], .n_in = sh->n_in[p], .n_out = sh->n_out[p],
                                 .row_bytes = rb, .mat_bytes = rb * (uint64_t)sh->n_out[p],
                                 .r16 = sh->type[p] == MS_TYPE_Q8_0 && ms_q8_r16_fits(sh->n_out[p], sh->n_in[p]) };
        for (int32_t i = 0; i < L->n_held; i++) {
            if (L->slice[i]->nbytes[p] != L->w[p].mat_bytes) {
                ms_err_set(err, "%s: (layer %d, expert %d) %s slab is %llu bytes, its shape needs %llu", s->path, l,
                           L->global[i], proj_names[p], (unsigned long long)L->slice[i]->nbytes[p],
                           (unsigned long long)L->w[p].mat_bytes);
                return -EINVAL;
            }
        }
    }
    return 0;
}

static int alloc_layers(expertd_store_t *s)
{
    size_t nl = (size_t)s->hp.n_layer, ne = (size_t)s->hp.n_expert;
    s->layers = calloc(nl, sizeof(*s->layers));
    s->local = malloc(sizeof(int32_t) * nl * ne);
    if (!s->layers || !s->local)
        return -ENOMEM;
    for (size_t i = 0; i < nl * ne; i++)
        s->local[i] = -1;
    for (size_t l = 0; l < nl; l++) {
        store_layer_t *L = &s->layers[l];
        L->global = calloc(ne, sizeof(int32_t));
        L->slice = calloc(ne, sizeof(*L->slice));
        L->ok = calloc(ne, sizeof(bool));
        if (!L->global || !L->slice || !L->ok)
            return -ENOMEM;
    }
    return 0;
}

/* Groups the file's slices (ordered by layer, expert) by layer. */
static int collect_slices(expertd_store_t *s, const bool *held, ms_err_t *err)
{
    int rc = alloc_layers(s);
    if (rc)
        return rc;
    size_t n = ms_shard_n_slices(s->shard), total = 0;
    for (size_t i = 0; i < n; i++) {
        const ms_slice_t *sl = ms_shard_slice(s->shard, i);
        if (sl->layer < 0 || sl->layer >= s->hp.n_layer || sl->expert < 0 || sl->expert >= s->hp.n_expert)
            return -EINVAL; /* ms_shard_open validated these */
        if (!held[sl->expert])
            continue;
        store_layer_t *L = &s->layers[sl->layer];
        L->global[L->n_held] = sl->expert;
        L->slice[L->n_held++] = sl;
        total++;
    }
    if (total == 0 && !s->start_empty) {
        ms_err_set(err, "%s: no expert slices to serve (the file or --experts selects none)", s->path);
        return -EINVAL;
    }
    s->widest_layer = -1;
    for (int32_t l = 0; l < s->hp.n_layer; l++) {
        if ((rc = layer_views(s, l, err)))
            return rc;
        if (s->widest_layer < 0 && ms_shard_layer_shape(s->shard, l))
            s->widest_layer = l;
    }
    if (s->widest_layer < 0) {
        ms_err_set(err, "%s: the file holds no routed-expert tensors", s->path);
        return -EINVAL;
    }
    return 0;
}

int expertd_store_open(const char *model_path, const char *spec, expertd_store_t **ret_store, ms_err_t *err)
{
    expertd_store_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    snprintf(s->path, sizeof(s->path), "%s", model_path);
    bool *held = NULL;
    int rc = ms_gguf_open_header(model_path, &s->gguf, err);
    if (!rc)
        rc = ms_shard_open(s->gguf, &s->shard, err);
    if (rc)
        goto out_fail;
    s->hp = *ms_shard_hparams(s->shard);
    s->host = ms_shard_host(s->shard);
    s->epoch = ms_shard_epoch(s->shard);
    held = calloc((size_t)s->hp.n_expert + 1, sizeof(bool));
    rc = held ? pick_experts(s, spec, held, err) : -ENOMEM;
    if (!rc)
        rc = collect_slices(s, held, err);
    if (rc)
        goto out_fail;
    free(held);
    *ret_store = s;
    return 0;
out_fail:
    if (rc == -ENOMEM && !err->msg[0])
        ms_err_set(err, "%s: out of memory", model_path);
    free(held);
    expertd_store_destroy(&s);
    return rc;
}

/* ---- loading ---- */

/* Populated up front (common/mem.h): first-touch faults would otherwise cost
 * more than reading the bytes from the disk. */
static void *alloc_slab(uint64_t bytes)
{
    return ms_mem_alloc((size_t)bytes);
}

/* One range per (layer, slab index, projection), in that order, and the
 * file part each is in (a split model is read part by part). */
static int build_ranges(expertd_store_t *s, ms_load_range_t **ret_ranges, uint32_t **ret_part, size_t *ret_n)
{
    size_t n = 0;
    for (int32_t l = 0; l < s->hp.n_layer; l++)
        n += (size_t)s->layers[l].n_held * MS_PROJ_COUNT;
    ms_load_range_t *r = calloc(n, sizeof(*r));
    uint32_t *part = calloc(n ? n : 1, sizeof(*part));
    if (!r || !part) {
        free(r);
        free(part);
        return -ENOMEM;
    }
    size_t i = 0;
    for (int32_t l = 0; l < s->hp.n_layer; l++) {
        store_layer_t *L = &s->layers[l];
        for (int p = 0; L->n_held && p < MS_PROJ_COUNT; p++) {
            L->slab_bytes[p] = (size_t)(L->w[p].mat_bytes * (uint64_t)L->n_held);
            L->slab[p] = alloc_slab(L->slab_bytes[p]);
            if (!L->slab[p]) {
                free(r);
                free(part);
                return -ENOMEM;
            }
            L->w[p].data = L->slab[p];
        }
        for (int32_t h = 0; h < L->n_held; h++) {
            const ms_slice_t *sl = L->slice[h];
            for (int p = 0; p < MS_PROJ_COUNT; p++) {
                part[i] = sl->part[p];
                r[i++] = (ms_load_range_t){ .file_offset = sl->file_offset[p], .nbytes = sl->nbytes[p],
                                            .dst = (char *)L->slab[p] + (uint64_t)h * L->w[p].mat_bytes,
                                            .sha256 = sl->has_sha256 ? sl->sha256[p] : NULL };
            }
        }
    }
    *ret_ranges = r;
    *ret_part = part;
    *ret_n = n;
    return 0;
}

typedef struct {
    struct timespec t0;
    double last_s;
} progress_t;

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* At most one line a second: the loader calls this every ~100 ms. */
static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    progress_t *p = ctx;
    double t = since(&p->t0);
    if (t - p->last_s < 1.0 && done < total)
        return;
    p->last_s = t;
    double pct = total ? 100.0 * (double)done / (double)total : 100.0, gbs = t > 0 ? (double)done / t / 1e9 : 0.0;
    ms_log_info("loading: %.1f / %.1f MiB (%.0f%%), %.2f GB/s", (double)done / 1048576.0,
                (double)total / 1048576.0, pct, gbs);
    ms_notify_status("loading expert slices: %.0f%% of %.1f GiB, %.2f GB/s", pct, (double)total / 1073741824.0, gbs);
}

/* A matrix just read (and its digest checked) into the layout its view
 * says: 16 rows at a time for Q8_0, in place. */
static int lay_out(expertd_store_t *s, const ms_weight_t *w, void *dst, int32_t l, int32_t e, int p)
{
    if (!w->r16)
        return 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool ok = ms_q8_r16_pack(dst, 1, w->n_out, w->n_in);
    s->lay_out_s += since(&t0);
    if (ok) {
        s->n_laid_out++;
        return 0;
    }
    ms_log_error("%s: (layer %d, expert %d) %s: out of memory laying out the matrix", s->path, l, e, proj_names[p]);
    return -ENOMEM;
}

/* Marks what loaded (laid out for the kernels), logs what did not, and
 * builds the lookup tables. */
static int settle(expertd_store_t *s, const ms_load_range_t *r)
{
    size_t i = 0, n_total = (size_t)s->hp.n_layer * (size_t)s->hp.n_expert; /* room for any later Load */
    s->served = calloc(n_total, sizeof(ms_wire_slice_t));
    s->failed = calloc(n_total, sizeof(ms_wire_slice_t));
    if (!s->served || !s->failed)
        return -ENOMEM;
    for (int32_t l = 0; l < s->hp.n_layer; l++) {
        store_layer_t *L = &s->layers[l];
        for (int32_t h = 0; h < L->n_held; h++) {
            L->ok[h] = true;
            for (int p = 0; p < MS_PROJ_COUNT; p++, i++) {
                if (r[i].status == 0) {
                    int rc = lay_out(s, &L->w[p], r[i].dst, l, L->global[h], p);
                    if (rc)
                        return rc;
                    continue;
                }
                L->ok[h] = false;
                ms_log_error("%s: (layer %d, expert %d) %s: %s; this slice is not served", s->path, l,
                             L->global[h], proj_names[p],
                             r[i].status == -EBADMSG ? "SHA-256 mismatch" : "read failed");
            }
            ms_wire_slice_t sl = { l, L->global[h] };
            if (L->ok[h]) {
                s->local[(size_t)l * (size_t)s->hp.n_expert + (size_t)L->global[h]] = h;
                s->served[s->n_served++] = sl;
                for (int p = 0; p < MS_PROJ_COUNT; p++)
                    s->bytes += L->w[p].mat_bytes;
            } else {
                s->failed[s->n_failed++] = sl;
            }
        }
    }
    return 0;
}

/* Every layer's views get n_mat = the model's expert count: ms_expert_ffn
 * wants n_mat == the workspace's, whatever a later Load adds, and ids are
 * mapped to slab indices below each layer's own count before any view is used. */
static void widen_views(expertd_store_t *s)
{
    for (int32_t l = 0; l < s->hp.n_layer; l++)
        for (int p = 0; p < MS_PROJ_COUNT; p++)
            s->layers[l].w[p].n_mat = s->hp.n_expert;
}

/* alloc_s: allocating and populating the slabs; st->seconds: reading them
 * (with digests). Both are reported: on a virtual machine whose host backs
 * memory lazily the first can dominate, and it is not the disk. */
static void log_load(const expertd_store_t *s, const ms_load_stats_t *st, double alloc_s)
{
    if (!st->used_direct)
        ms_log_warn("%s: O_DIRECT refused by the file system; read through the page cache", s->path);
    double total = alloc_s + st->seconds;
    ms_log_info("loaded %u slices (%.1f MiB) from %s: read in %.2f s: %.2f GB/s%s; memory allocated in %.2f s; "
                "%.2f GB/s overall",
                s->n_served + s->n_failed, (double)st->bytes / 1048576.0, s->path, st->seconds,
                st->seconds > 0 ? (double)st->bytes / st->seconds / 1e9 : 0.0,
                st->used_direct ? " (O_DIRECT)" : " (buffered)", alloc_s,
                total > 0 ? (double)st->bytes / total / 1e9 : 0.0);
    if (s->n_laid_out)
        ms_log_info("laid out %u Q8_0 matrices 16 rows at a time for the kernels in %.2f s", s->n_laid_out,
                    s->lay_out_s);
    if (s->n_failed)
        ms_log_error("%u slices failed their SHA-256 check and are not served", s->n_failed);
}

int expertd_store_load(expertd_store_t *s, ms_err_t *err)
{
    ms_load_range_t *r = NULL;
    uint32_t *part = NULL;
    size_t n = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int rc = build_ranges(s, &r, &part, &n);
    if (rc) {
        ms_err_set(err, "%s: cannot allocate the expert slabs", s->path);
        return rc;
    }
    double alloc_s = since(&start);
    progress_t prog = { .last_s = 0 };
    clock_gettime(CLOCK_MONOTONIC, &prog.t0);
    ms_load_params_t params = ms_load_defaults();
    ms_load_stats_t st = { .used_direct = true };
    if (n) /* --experts none: nothing to read until a Load */
        rc = ms_shard_load_ranges(s->gguf, r, part, n, &params, on_progress, &prog, &st, err);
    if (!rc) {
        rc = settle(s, r);
        if (rc)
            ms_err_set(err, "%s: out of memory for the expert slices' tables or their layout", s->path);
    }
    free(r);
    free(part);
    if (rc)
        return rc;
    widen_views(s);
    log_load(s, &st, alloc_s);
    /* the header mapping stays: a later Load finds its slices through it */
    for (int32_t l = 0; l < s->hp.n_layer; l++) {
        free(s->layers[l].slice);
        s->layers[l].slice = NULL;
    }
    return 0;
}

const ms_hparams_t *expertd_store_hparams(const expertd_store_t *s)
{
    return &s->hp;
}

uint64_t expertd_store_epoch(const expertd_store_t *s)
{
    return s->epoch;
}

uint32_t expertd_store_n_served(const expertd_store_t *s)
{
    return s->n_served;
}

uint32_t expertd_store_n_failed(const expertd_store_t *s)
{
    return s->n_failed;
}

uint64_t expertd_store_bytes(const expertd_store_t *s)
{
    return s->bytes;
}

int32_t expertd_store_local(const expertd_store_t *s, int32_t layer, int32_t expert)
{
    if (layer < 0 || layer >= s->hp.n_layer || expert < 0 || expert >= s->hp.n_expert)
        return -1;
    return s->local[(size_t)layer * (size_t)s->hp.n_expert + (size_t)expert];
}

bool expertd_store_held(void *store, int32_t layer, int32_t expert)
{
    return expertd_store_local(store, layer, expert) >= 0;
}

const ms_weight_t *expertd_store_weights(const expertd_store_t *s, int32_t layer)
{
    if (layer < 0 || layer >= s->hp.n_layer || s->layers[layer].n_held == 0)
        return NULL;
    return s->layers[layer].w;
}

const ms_weight_t *expertd_store_any_weights(const expertd_store_t *s)
{
    return s->layers[s->widest_layer].w;
}

void expertd_store_hello(const expertd_store_t *s, ms_wire_hello_t *hello)
{
    *hello = (ms_wire_hello_t){ .host_id = s->host, .memory_bytes = s->bytes, .n_layer = s->hp.n_layer,
                                .hidden = s->hp.n_embd, .n_expert = s->hp.n_expert, .n_held = s->n_served,
                                .n_failed = s->n_failed, .held = s->served, .failed = s->failed,
                                .capacity_bytes = s->capacity };
}

void expertd_store_set_capacity(expertd_store_t *s, uint64_t bytes)
{
    s->capacity = bytes;
}

/* ---- Load and Unload while serving ---- */

/* served/failed lists, bytes and local[] of layer l from its slabs. */
static void refresh_lists(expertd_store_t *s)
{
    size_t ne = (size_t)s->hp.n_expert;
    s->n_served = s->n_failed = 0;
    s->bytes = 0;
    for (int32_t l = 0; l < s->hp.n_layer; l++) {
        const store_layer_t *L = &s->layers[l];
        for (size_t e = 0; e < ne; e++)
            s->local[(size_t)l * ne + e] = -1;
        for (int32_t h = 0; h < L->n_held; h++) {
            ms_wire_slice_t sl = { l, L->global[h] };
            if (!L->ok[h]) {
                s->failed[s->n_failed++] = sl;
                continue;
            }
            s->local[(size_t)l * ne + (size_t)L->global[h]] = h;
            s->served[s->n_served++] = sl;
            for (int p = 0; p < MS_PROJ_COUNT; p++)
                s->bytes += L->w[p].mat_bytes;
        }
    }
}

static void free_layer(store_layer_t *L)
{
    free(L->global);
    free(L->slice);
    free(L->ok);
    for (int p = 0; p < MS_PROJ_COUNT; p++)
        ms_mem_free(L->slab[p], L->slab_bytes[p]);
    memset(L, 0, sizeof(*L));
}

/* A new layer holding want[]: slices already served are copied from memory,
 * the others read from the file. */
static int fill_layer(expertd_store_t *s, int32_t l, const bool *want, store_layer_t *nl, ms_err_t *err)
{
    size_t ne = (size_t)s->hp.n_expert;
    const store_layer_t *old = &s->layers[l];
    nl->global = calloc(ne, sizeof(int32_t));
    nl->ok = calloc(ne, sizeof(bool));
    ms_load_range_t *r = calloc(ne * MS_PROJ_COUNT, sizeof(*r));
    uint32_t *part = calloc(ne * MS_PROJ_COUNT, sizeof(*part)); /* file part of each range */
    if (!nl->global || !nl->ok || !r || !part)
        goto nomem;
    for (size_t e = 0; e < ne; e++)
        if (want[e])
            nl->global[nl->n_held++] = (int32_t)e;
    memcpy(nl->w, old->w, sizeof(nl->w));
    for (int p = 0; p < MS_PROJ_COUNT; p++) {
        nl->slab_bytes[p] = (size_t)(nl->w[p].mat_bytes * (uint64_t)nl->n_held);
        nl->slab[p] = nl->n_held ? alloc_slab(nl->slab_bytes[p]) : NULL;
        if (nl->n_held && !nl->slab[p])
            goto nomem;
        nl->w[p].data = nl->slab[p];
    }
    size_t n_r = 0;
    for (int32_t h = 0; h < nl->n_held; h++) {
        int32_t oh = expertd_store_local(s, l, nl->global[h]);
        const ms_slice_t *sl = ms_shard_find(s->shard, l, nl->global[h]);
        for (int p = 0; p < MS_PROJ_COUNT; p++) {
            char *dst = (char *)nl->slab[p] + (uint64_t)h * nl->w[p].mat_bytes;
            if (oh >= 0)
                memcpy(dst, (const char *)old->slab[p] + (uint64_t)oh * old->w[p].mat_bytes, nl->w[p].mat_bytes);
            else {
                part[n_r] = sl->part[p];
                r[n_r++] = (ms_load_range_t){ .file_offset = sl->file_offset[p], .nbytes = sl->nbytes[p], .dst = dst,
                                              .sha256 = sl->has_sha256 ? sl->sha256[p] : NULL };
            }
        }
        nl->ok[h] = true;
    }
    int rc = 0;
    if (n_r) {
        progress_t prog = { .last_s = 0 };
        clock_gettime(CLOCK_MONOTONIC, &prog.t0);
        ms_load_params_t params = ms_load_defaults();
        ms_load_stats_t st = { 0 };
        rc = ms_shard_load_ranges(s->gguf, r, part, n_r, &params, on_progress, &prog, &st, err);
        size_t i = 0;
        for (int32_t h = 0; !rc && h < nl->n_held; h++) {
            if (expertd_store_local(s, l, nl->global[h]) >= 0)
                continue;
            for (int p = 0; p < MS_PROJ_COUNT; p++, i++) {
                if (r[i].status == 0) {
                    rc = lay_out(s, &nl->w[p], r[i].dst, l, nl->global[h], p);
                    if (rc) {
                        ms_err_set(err, "%s: layer %d: out of memory laying out the expert slices", s->path, l);
                        break;
                    }
                    continue;
                }
                nl->ok[h] = false;
                ms_log_error("%s: (layer %d, expert %d) %s: %s; this slice is not served", s->path, l,
                             nl->global[h], proj_names[p], r[i].status == -EBADMSG ? "SHA-256 mismatch" : "read failed");
            }
        }
    }
    free(r);
    free(part);
    return rc;
nomem:
    free(r);
    free(part);
    ms_err_set(err, "%s: layer %d: out of memory for %d expert slices", s->path, l, nl->n_held);
    return -ENOMEM;
}

/* Checks a Load/Unload request against the file and builds the wanted set. */
static int wanted_set(const expertd_store_t *s, int32_t l, const int32_t *experts, int n, bool load, bool *want,
                      ms_err_t *err)
{
    if (l < 0 || l >= s->hp.n_layer) {
        ms_err_set(err, "layer %d is outside the model's 0..%d", l, s->hp.n_layer - 1);
        return -EINVAL;
    }
    for (int32_t e = 0; e < s->hp.n_expert; e++)
        want[e] = expertd_store_local(s, l, e) >= 0;
    for (int i = 0; i < n; i++) {
        int32_t e = experts[i];
        if (e < 0 || e >= s->hp.n_expert) {
            ms_err_set(err, "expert %d is outside the model's 0..%d", e, s->hp.n_expert - 1);
            return -EINVAL;
        }
        if (load && !ms_shard_find(s->shard, l, e)) {
            ms_err_set(err, "(layer %d, expert %d) is not in this host's file %s", l, e, s->path);
            return -ENOENT;
        }
        want[e] = load;
    }
    return 0;
}

int expertd_store_apply(expertd_store_t *s, int32_t layer, const int32_t *experts, int n, bool load, ms_err_t *err)
{
    bool *want = calloc((size_t)s->hp.n_expert, sizeof(bool));
    if (!want) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    int rc = wanted_set(s, layer, experts, n, load, want, err);
    bool same = true;
    for (int32_t e = 0; !rc && e < s->hp.n_expert; e++)
        same = same && want[e] == (expertd_store_local(s, layer, e) >= 0);
    /* a failed slice listed again is read again */
    for (int i = 0; !rc && load && i < n; i++)
        same = same && expertd_store_local(s, layer, experts[i]) >= 0;
    if (rc || same) {
        free(want);
        return rc;
    }
    store_layer_t nl = { 0 };
    rc = fill_layer(s, layer, want, &nl, err);
    free(want);
    if (rc) {
        free_layer(&nl);
        return rc;
    }
    free_layer(&s->layers[layer]);
    s->layers[layer] = nl;
    for (int p = 0; p < MS_PROJ_COUNT; p++)
        s->layers[layer].w[p].n_mat = s->hp.n_expert;
    refresh_lists(s);
    return 0;
}
