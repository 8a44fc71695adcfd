/* The slice table of a model file: every expert of a full GGUF, or the held
 * experts of a host shard, read from its moeshard.shard.* metadata and
 * checked against the tensors before anyone trusts an offset. */
#include "shard.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"
#include "placement.h"

#define KEY_PREFIX "moeshard.shard."
#define LAYER_PREFIX KEY_PREFIX "blk."
#define KEY_BYTES (MS_GGUF_NAME_BYTES_MAX + 64)

static const char *const proj_names[MS_PROJ_COUNT] = { "gate", "up", "down" };

struct ms_shard {
    ms_hparams_t hp;
    bool packed;
    int32_t host;               /* -1 for a full model */
    uint64_t epoch;
    ms_slice_t *slices;         /* ordered by (layer, expert) */
    size_t n_slices, cap;
    ms_slice_shape_t *shapes;   /* [n_layer] */
    bool *held;                 /* [n_layer]: the file holds experts of the layer */
};

/* What one layer's three expert tensors say, before slices are made. */
typedef struct {
    int32_t ids[MS_EXPERTS_MAX];
    int32_t n;
    const ms_gguf_tensor_t *t[MS_PROJ_COUNT];
    uint64_t mat_bytes[MS_PROJ_COUNT];
    uint8_t (*digests)[MS_PROJ_COUNT][MS_SHA256_BYTES]; /* [n] when packed */
} layer_read_t;

static const char *path_of(const ms_gguf_t *g)
{
    return ms_gguf_path(g);
}

static int need_u64(const ms_gguf_t *g, const char *key, uint64_t lo, uint64_t hi, uint64_t *ret, ms_err_t *err)
{
    uint64_t v;
    int rc = ms_gguf_get_u64(g, key, &v);
    if (rc == -ENOENT) {
        ms_err_set(err, "%s: metadata key '%s' is missing (a host shard needs it)", path_of(g), key);
        return -EINVAL;
    }
    if (rc < 0 || v < lo || v > hi) {
        ms_err_set(err, "%s: metadata key '%s' must be an unsigned integer in [%" PRIu64 ", %" PRIu64 "]",
                   path_of(g), key, lo, hi);
        return -EINVAL;
    }
    *ret = v;
    return 0;
}

/* moeshard.shard.version/host/hosts/replicas/epoch/source of a packed file. */
static int read_header(ms_shard_t *s, const ms_gguf_t *g, ms_err_t *err)
{
    uint64_t version, host, hosts, replicas, epoch;
    int rc = need_u64(g, KEY_PREFIX "version", 0, UINT32_MAX, &version, err);
    if (!rc && version != MS_SHARD_VERSION) {
        ms_err_set(err, "%s: metadata key '" KEY_PREFIX "version' is %" PRIu64 "; this build reads version %d"
                   " (re-pack the model with this moeshard)", path_of(g), version, MS_SHARD_VERSION);
        return -EINVAL;
    }
    rc = rc ? rc : need_u64(g, KEY_PREFIX "hosts", 1, MS_HOSTS_MAX, &hosts, err);
    if (rc)
        return rc;
    rc = need_u64(g, KEY_PREFIX "host", 0, hosts - 1, &host, err);
    rc = rc ? rc : need_u64(g, KEY_PREFIX "replicas", 1, hosts, &replicas, err);
    rc = rc ? rc : need_u64(g, KEY_PREFIX "epoch", 0, UINT64_MAX, &epoch, err);
    if (rc)
        return rc;
    ms_str_t src;
    if (ms_gguf_get_str(g, KEY_PREFIX "source", &src) < 0 || src.len == 0) {
        ms_err_set(err, "%s: metadata key '" KEY_PREFIX "source' is missing or not a non-empty string", path_of(g));
        return -EINVAL;
    }
    s->host = (int32_t)host;
    s->epoch = epoch;
    return 0;
}

/* Every moeshard.shard.blk.L.* key must name a layer of the model and be ".experts". */
static int check_layer_keys(const ms_shard_t *s, const ms_gguf_t *g, ms_err_t *err)
{
    size_t plen = strlen(LAYER_PREFIX);
    for (uint64_t i = 0; i < ms_gguf_n_kv(g); i++) {
        ms_str_t k = ms_gguf_kv(g, i)->key;
        if (k.len < plen || memcmp(k.ptr, LAYER_PREFIX, plen) != 0)
            continue;
        char buf[KEY_BYTES];
        int layer = -1, used = 0;
        snprintf(buf, sizeof(buf), "%.*s", (int)(k.len < KEY_BYTES - 1 ? k.len : KEY_BYTES - 1), k.ptr);
        if (sscanf(buf + plen, "%d%n", &layer, &used) != 1 || layer < 0 || layer >= s->hp.n_layer ||
            strcmp(buf + plen + used, ".experts") != 0) {
            ms_err_set(err, "%s: metadata key '%s' does not name the experts of a layer in [0, %d)", path_of(g), buf,
                       s->hp.n_layer);
            return -EINVAL;
        }
    }
    return 0;
}

/* The ids listed for layer L of a shard: int32, in [0, E), strictly ascending. */
static int read_ids(const ms_shard_t *s, const ms_gguf_t *g, int32_t layer, layer_read_t *lr, ms_err_t *err)
{
    char key[KEY_BYTES];
    snprintf(key, sizeof(key), LAYER_PREFIX "%d.experts", layer);
    const ms_gguf_kv_t *kv = NULL;
    int rc = ms_gguf_get_arr(g, key, MS_GGUF_INT32, &kv);
    lr->n = 0;
    if (rc == -ENOENT)
        return 0;
    if (rc < 0 || kv->arr_n < 1 || kv->arr_n > (uint64_t)s->hp.n_expert) {
        ms_err_set(err, "%s: metadata key '%s' must be an int32 array of 1 to %d expert ids"
                   " (leave it out when the layer holds none)", path_of(g), key, s->hp.n_expert);
        return -EINVAL;
    }
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        int32_t id;
        memcpy(&id, (const char *)kv->arr_data + 4 * i, 4);
        if (id < 0 || id >= s->hp.n_expert) {
            ms_err_set(err, "%s: metadata key '%s': expert id %d is outside [0, %d)", path_of(g), key, id,
                       s->hp.n_expert);
            return -EINVAL;
        }
        if (i > 0 && id <= lr->ids[i - 1]) {
            ms_err_set(err, "%s: metadata key '%s': expert id %d %s", path_of(g), key, id,
                       id == lr->ids[i - 1] ? "is listed twice" : "is out of ascending order");
            return -EINVAL;
        }
        lr->ids[i] = id;
    }
    lr->n = (int32_t)kv->arr_n;
    return 0;
}

/* A 3-D tensor [n_in, n_out, n] of the layer's projection p. */
static int check_tensor(const ms_shard_t *s, const ms_gguf_t *g, const char *name, ms_proj_t p, int32_t n,
                        const ms_gguf_tensor_t **ret, uint64_t *ret_mat_bytes, ms_err_t *err)
{
    const ms_gguf_tensor_t *t = ms_gguf_find_tensor(g, name);
    int64_t d = s->hp.n_embd, ff = s->hp.n_ff_exp;
    int64_t n_in = p == MS_PROJ_DOWN ? ff : d, n_out = p == MS_PROJ_DOWN ? d : ff;
    if (!t) {
        ms_err_set(err, "%s: tensor '%s' is missing (expected %d experts of its layer)", path_of(g), name, n);
        return -EINVAL;
    }
    if (t->n_dims != 3 || t->ne[2] != n) {
        ms_err_set(err, "%s: tensor '%s' holds %" PRId64 " experts (ne[2], %u dims) but the file lists %d",
                   path_of(g), name, t->n_dims == 3 ? t->ne[2] : 0, t->n_dims, n);
        return -EINVAL;
    }
    if (t->ne[0] != n_in || t->ne[1] != n_out) {
        ms_err_set(err, "%s: tensor '%s' has shape [%" PRId64 ", %" PRId64 ", %d], expected [%" PRId64 ", %" PRId64
                   ", %d] from the metadata", path_of(g), name, t->ne[0], t->ne[1], n, n_in, n_out, n);
        return -EINVAL;
    }
    uint64_t mat = ms_type_row_bytes(t->type, (uint64_t)n_in) * (uint64_t)n_out;
    if (mat == 0 || mat * (uint64_t)n != t->nbytes) {
        ms_err_set(err, "%s: tensor '%s' is not %d whole expert matrices", path_of(g), name, n);
        return -EINVAL;
    }
    *ret = t;
    *ret_mat_bytes = mat;
    return 0;
}

static int parse_hex(const ms_gguf_t *g, const char *key, ms_str_t h, uint8_t out[MS_SHA256_BYTES], ms_err_t *err)
{
    if (ms_sha256_parse(h.ptr, (size_t)h.len, out) < 0) {
        ms_err_set(err, "%s: metadata key '%s' holds '%.*s', not a 64-digit hex SHA-256", path_of(g), key,
                   (int)(h.len > 80 ? 80 : h.len), h.ptr);
        return -EINVAL;
    }
    return 0;
}

/* moeshard.sha256.NAME (well formed) and moeshard.slab_sha256.NAME (n of them). */
static int read_digests(const ms_gguf_t *g, const char *name, ms_proj_t p, layer_read_t *lr, ms_err_t *err)
{
    char key[KEY_BYTES];
    uint8_t whole[MS_SHA256_BYTES];
    ms_str_t h;
    snprintf(key, sizeof(key), "moeshard.sha256.%s", name);
    if (ms_gguf_get_str(g, key, &h) < 0) {
        ms_err_set(err, "%s: metadata key '%s' is missing or not a string", path_of(g), key);
        return -EINVAL;
    }
    int rc = parse_hex(g, key, h, whole, err);
    if (rc)
        return rc;
    snprintf(key, sizeof(key), "moeshard.slab_sha256.%s", name);
    const ms_gguf_kv_t *kv = NULL;
    if (ms_gguf_get_arr(g, key, MS_GGUF_STRING, &kv) < 0 || kv->arr_n != (uint64_t)lr->n) {
        ms_err_set(err, "%s: metadata key '%s' must be an array of %d hex strings (one per expert slab)", path_of(g),
                   key, lr->n);
        return -EINVAL;
    }
    for (int32_t i = 0; i < lr->n && !rc; i++)
        rc = parse_hex(g, key, kv->arr_strs[i], lr->digests[i][p], err);
    return rc;
}

static int push_slice(ms_shard_t *s, const ms_slice_t *sl)
{
    if (s->n_slices == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        ms_slice_t *p = realloc(s->slices, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        s->slices = p;
        s->cap = cap;
    }
    s->slices[s->n_slices++] = *sl;
    return 0;
}

static int add_slices(ms_shard_t *s, int32_t layer, const layer_read_t *lr, ms_err_t *err)
{
    ms_slice_shape_t *sh = &s->shapes[layer];
    for (int p = 0; p < MS_PROJ_COUNT; p++) {
        sh->type[p] = lr->t[p]->type;
        sh->n_in[p] = lr->t[p]->ne[0];
        sh->n_out[p] = lr->t[p]->ne[1];
    }
    s->held[layer] = true;
    for (int32_t i = 0; i < lr->n; i++) {
        ms_slice_t sl = { .layer = layer, .expert = lr->ids[i], .has_sha256 = s->packed };
        for (int p = 0; p < MS_PROJ_COUNT; p++) {
            sl.file_offset[p] = lr->t[p]->file_offset + (uint64_t)i * lr->mat_bytes[p];
            sl.nbytes[p] = lr->mat_bytes[p];
            sl.part[p] = lr->t[p]->part;
            if (s->packed)
                memcpy(sl.sha256[p], lr->digests[i][p], MS_SHA256_BYTES);
        }
        if (push_slice(s, &sl) < 0) {
            ms_err_set(err, "out of memory");
            return -ENOMEM;
        }
    }
    return 0;
}

static bool any_tensor(const ms_gguf_t *g, int32_t layer, char *name, size_t cap)
{
    for (int p = 0; p < MS_PROJ_COUNT; p++) {
        snprintf(name, cap, "blk.%d.ffn_%s_exps.weight", layer, proj_names[p]);
        if (ms_gguf_find_tensor(g, name))
            return true;
    }
    return false;
}

static int read_layer(ms_shard_t *s, const ms_gguf_t *g, int32_t layer, layer_read_t *lr, ms_err_t *err)
{
    char name[MS_GGUF_NAME_BYTES_MAX];
    int rc = 0;
    if (s->packed) {
        rc = read_ids(s, g, layer, lr, err);
    } else { /* a full model: every expert of every MoE layer; leading dense layers (deepseek2) hold none */
        lr->n = layer < s->hp.n_layer_dense_lead ? 0 : s->hp.n_expert;
        for (int32_t e = 0; e < lr->n; e++)
            lr->ids[e] = e;
    }
    if (rc || lr->n == 0) {
        if (!rc && any_tensor(g, layer, name, sizeof(name))) {
            ms_err_set(err, "%s: tensor '%s' is present but metadata key '" LAYER_PREFIX "%d.experts' is missing",
                       path_of(g), name, layer);
            rc = -EINVAL;
        }
        return rc;
    }
    for (int p = 0; p < MS_PROJ_COUNT && !rc; p++) {
        snprintf(name, sizeof(name), "blk.%d.ffn_%s_exps.weight", layer, proj_names[p]);
        rc = check_tensor(s, g, name, (ms_proj_t)p, lr->n, &lr->t[p], &lr->mat_bytes[p], err);
        if (!rc && s->packed)
            rc = read_digests(g, name, (ms_proj_t)p, lr, err);
    }
    return rc ? rc : add_slices(s, layer, lr, err);
}

static int read_layers(ms_shard_t *s, const ms_gguf_t *g, ms_err_t *err)
{
    layer_read_t *lr = calloc(1, sizeof(*lr));
    if (lr)
        lr->digests = calloc(MS_EXPERTS_MAX, sizeof(*lr->digests));
    s->shapes = calloc((size_t)s->hp.n_layer, sizeof(*s->shapes));
    s->held = calloc((size_t)s->hp.n_layer, sizeof(*s->held));
    int rc = 0;
    if (!lr || !lr->digests || !s->shapes || !s->held) {
        ms_err_set(err, "out of memory");
        rc = -ENOMEM;
    }
    bool any = s->packed;
    char name[MS_GGUF_NAME_BYTES_MAX];
    for (int32_t l = 0; !any && l < s->hp.n_layer; l++)
        any = any_tensor(g, l, name, sizeof(name));
    for (int32_t l = 0; !rc && any && l < s->hp.n_layer; l++)
        rc = read_layer(s, g, l, lr, err);
    if (!rc && s->n_slices == 0) {
        ms_err_set(err, "%s: the file holds no routed-expert slices (no blk.L.ffn_*_exps.weight tensors)", path_of(g));
        rc = -EINVAL;
    }
    if (lr)
        free(lr->digests);
    free(lr);
    return rc;
}

int ms_shard_open(const ms_gguf_t *g, ms_shard_t **ret_shard, ms_err_t *err)
{
    ms_shard_t *s = calloc(1, sizeof(*s));
    if (!s) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    s->host = -1;
    s->packed = ms_gguf_find_kv(g, KEY_PREFIX "version") != NULL;
    int rc = ms_hparams_read(g, &s->hp, err);
    if (!rc && s->packed)
        rc = read_header(s, g, err);
    if (!rc && s->packed)
        rc = check_layer_keys(s, g, err);
    rc = rc ? rc : read_layers(s, g, err);
    if (rc) {
        ms_shard_destroy(&s);
        return rc;
    }
    *ret_shard = s;
    return 0;
}

void ms_shard_destroy(ms_shard_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_shard_t *s = *self_p;
    free(s->slices);
    free(s->shapes);
    free(s->held);
    free(s);
    *self_p = NULL;
}

bool ms_shard_is_packed(const ms_shard_t *s) { return s->packed; }
const ms_hparams_t *ms_shard_hparams(const ms_shard_t *s) { return &s->hp; }
int32_t ms_shard_host(const ms_shard_t *s) { return s->host; }
uint64_t ms_shard_epoch(const ms_shard_t *s) { return s->epoch; }
size_t ms_shard_n_slices(const ms_shard_t *s) { return s->n_slices; }

const ms_slice_t *ms_shard_slice(const ms_shard_t *s, size_t i)
{
    return i < s->n_slices ? &s->slices[i] : NULL;
}

static int cmp_slice(int32_t layer, int32_t expert, const ms_slice_t *sl)
{
    if (layer != sl->layer)
        return layer < sl->layer ? -1 : 1;
    return expert < sl->expert ? -1 : expert > sl->expert;
}

const ms_slice_t *ms_shard_find(const ms_shard_t *s, int32_t layer, int32_t expert)
{
    size_t lo = 0, hi = s->n_slices;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = cmp_slice(layer, expert, &s->slices[mid]);
        if (c == 0)
            return &s->slices[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* NULL for a layer out of range or one the file holds no experts of. */
const ms_slice_shape_t *ms_shard_layer_shape(const ms_shard_t *s, int32_t layer)
{
    if (layer < 0 || layer >= s->hp.n_layer || !s->held[layer])
        return NULL;
    return &s->shapes[layer];
}

/* ---- loading slices of a possibly split model ---- */

/* Turns one part's progress into the whole call's. */
typedef struct {
    ms_load_progress_fn fn;
    void *ctx;
    uint64_t before; /* bytes of the parts already read */
    uint64_t total;  /* bytes of every range */
} part_progress_t;

static void on_part_progress(void *ctx, uint64_t done, uint64_t total)
{
    const part_progress_t *pp = ctx;
    (void)total;
    if (pp->fn)
        pp->fn(pp->ctx, pp->before + done, pp->total);
}

static void add_stats(ms_load_stats_t *sum, const ms_load_stats_t *st)
{
    sum->bytes += st->bytes;
    sum->bytes_read += st->bytes_read;
    sum->seconds += st->seconds;
    sum->used_direct = sum->used_direct && st->used_direct;
    sum->mismatches += st->mismatches;
}

/* Reads the ranges of one part through a gathered copy, then hands the
 * statuses back. */
static int load_part(const ms_gguf_t *g, uint32_t pi, ms_load_range_t *ranges, const uint32_t *part, size_t n,
                     ms_load_range_t *tmp, const ms_load_params_t *params, part_progress_t *pp,
                     ms_load_stats_t *sum, ms_err_t *err)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (part[i] == pi)
            tmp[m++] = ranges[i];
    if (m == 0)
        return 0;
    ms_load_stats_t st = { .used_direct = true };
    int rc = ms_uring_load(ms_gguf_part_path(g, pi), tmp, m, params, on_part_progress, pp, &st, err);
    m = 0;
    for (size_t i = 0; !rc && i < n; i++)
        if (part[i] == pi)
            ranges[i].status = tmp[m++].status;
    if (!rc) {
        add_stats(sum, &st);
        pp->before += st.bytes;
    }
    return rc;
}

int ms_shard_load_ranges(const ms_gguf_t *g, ms_load_range_t *ranges, const uint32_t *part, size_t n_ranges,
                         const ms_load_params_t *params, ms_load_progress_fn progress, void *progress_ctx,
                         ms_load_stats_t *ret_stats, ms_err_t *err)
{
    uint32_t n_parts = ms_gguf_n_parts(g);
    if (!part || n_parts == 1)
        return ms_uring_load(ms_gguf_part_path(g, 0), ranges, n_ranges, params, progress, progress_ctx, ret_stats, err);
    for (size_t i = 0; i < n_ranges; i++) {
        if (part[i] >= n_parts) {
            ms_err_set(err, "%s: range %zu names part %" PRIu32 " of a model in %" PRIu32 " parts", ms_gguf_path(g), i,
                       part[i], n_parts);
            return -EINVAL;
        }
    }
    part_progress_t pp = { .fn = progress, .ctx = progress_ctx };
    for (size_t i = 0; i < n_ranges; i++)
        pp.total += ranges[i].nbytes;
    ms_load_range_t *tmp = malloc((n_ranges ? n_ranges : 1) * sizeof(*tmp));
    if (!tmp) {
        ms_err_set(err, "%s: out of memory", ms_gguf_path(g));
        return -ENOMEM;
    }
    ms_load_stats_t sum = { .used_direct = true };
    int rc = 0;
    for (uint32_t pi = 0; pi < n_parts && !rc; pi++)
        rc = load_part(g, pi, ranges, part, n_ranges, tmp, params, &pp, &sum, err);
    free(tmp);
    if (!rc && ret_stats)
        *ret_stats = sum;
    return rc;
}
