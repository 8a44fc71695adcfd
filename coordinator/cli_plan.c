/* moeshard plan: what a cluster for a model needs, from the model's header
 * alone: the coordinator's memory, each host's slices and bytes, where the
 * slices go and the network bytes per token (docs/plan.md). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "placement.h"
#include "shard.h"
#include "wire.h"

#define CMD "plan"
#define PLAN_RESERVE_PCT_DEFAULT 10 /* of each host's memory kept for buffers, the OS and expertd itself */
#define PLAN_RESERVE_PCT_MAX 90
#define PLAN_HOST_GIB_MAX 1048576.0f /* 1 PiB: a typing error, not a host */
#define PLAN_KV_TOKENS 4096          /* the sequence length the KV cache is stated for */
#define PLAN_MSG_BYTES 64            /* estimate per message: protobuf header and ZeroMQ framing */
#define PLAN_PAIR_BYTES 9            /* estimate per (expert id, weight) pair in a request header */
#define PLAN_IDS_TEXT_BYTES (MS_EXPERTS_MAX * 12 + 64) /* one compact id list, MS_LAYERS_MAX >= ids too */
#define GIB (1024.0 * 1024.0 * 1024.0)
#define MIB (1024.0 * 1024.0)

_Static_assert(MS_LAYERS_MAX <= MS_EXPERTS_MAX, "a layer list fits the id list buffer");

typedef struct {
    const char *model;
    int32_t hosts, replicas, reserve_pct;
    float host_gib;
    ms_wire_dtype_t wire;
} plan_opts_t;

typedef struct {
    plan_opts_t o;
    ms_gguf_t *g;
    ms_shard_t *sh;
    const ms_hparams_t *hp;
    int32_t lead, n_moe;                 /* leading dense layers; MoE layers placed */
    uint64_t slice_bytes[MS_LAYERS_MAX]; /* [n_moe]: one slice of MoE layer lead + i */
    uint64_t dense_bytes, expert_bytes;
    uint64_t host_bytes, usable_bytes;   /* per host: --host-memory, and what slices may use */
    uint64_t *caps;                      /* [hosts]: usable_bytes each */
    ms_err_t err;
} plan_t;

static void plan_help(void)
{
    printf("usage: moeshard plan --model M.gguf --hosts N --host-memory GiB [--replicas R]\n"
           "                     [--wire f32|bf16|f16] [--reserve PCT]\n\n"
           "Plans a cluster for a model from its GGUF header alone (no weights are read; a\n"
           "header-only file, as 'genmodel --header-only' writes, is enough; a split model\n"
           "NAME-0000K-of-0000N.gguf is read as one). Prints the model's shape and bytes, the\n"
           "coordinator's memory (dense weights + KV cache per %d-token sequence), each host's\n"
           "slices and bytes and whether they fit, which slices go where (the placement\n"
           "'moeshard pack' writes for the same N and R), and the network bytes per token.\n"
           "When the hosts are too small it also names the smallest host count that fits.\n\n"
           "  -m, --model FILE       GGUF model, or any part of a split one (required)\n"
           "  -n, --hosts N          expert hosts, 1..%d (required)\n"
           "  -M, --host-memory GiB  memory of each host in GiB (2^30 bytes), e.g. 64 or 0.5 (required)\n"
           "  -r, --replicas R       copies of each slice, on distinct hosts, 1..N (default 1)\n"
           "  -w, --wire DTYPE       activations on the wire: f32, bf16 or f16 (default f32)\n"
           "      --reserve PCT      percent of each host's memory kept for buffers, 0..%d\n"
           "                         (default %d); slices may use the rest\n"
           "  -h, --help             this help\n\n"
           "Slice lists: 'a-b' is every id from a to b, 'a-b/s' every s-th id from a to b.\n"
           "Exit status: 0 the hosts fit, 1 they do not (or the model is unreadable), 2 usage error.\n",
           PLAN_KV_TOKENS, MS_HOSTS_MAX, PLAN_RESERVE_PCT_MAX, PLAN_RESERVE_PCT_DEFAULT);
}

static int parse_opt(int c, const char *arg, plan_opts_t *o)
{
    int64_t v;
    switch (c) {
    case 'm': o->model = arg; return -1;
    case 'n':
        if (!coord_parse_i64(CMD, "--hosts", arg, 1, MS_HOSTS_MAX, &v))
            return COORD_EXIT_USAGE;
        o->hosts = (int32_t)v;
        return -1;
    case 'r':
        if (!coord_parse_i64(CMD, "--replicas", arg, 1, MS_HOSTS_MAX, &v))
            return COORD_EXIT_USAGE;
        o->replicas = (int32_t)v;
        return -1;
    case 'R':
        if (!coord_parse_i64(CMD, "--reserve", arg, 0, PLAN_RESERVE_PCT_MAX, &v))
            return COORD_EXIT_USAGE;
        o->reserve_pct = (int32_t)v;
        return -1;
    case 'M':
        return coord_parse_f32(CMD, "--host-memory", arg, 1.0f / 1024.0f, PLAN_HOST_GIB_MAX, &o->host_gib)
                   ? -1 : COORD_EXIT_USAGE;
    case 'w':
        if (ms_wire_dtype_parse(arg, &o->wire) == 0)
            return -1;
        coord_usage_error(CMD, "--wire expects f32, bf16 or f16, not '%s'", arg);
        return COORD_EXIT_USAGE;
    default: return COORD_EXIT_USAGE;
    }
}

/* Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, plan_opts_t *o)
{
    static const struct option longopts[] = {
        { "model", required_argument, 0, 'm' },    { "hosts", required_argument, 0, 'n' },
        { "host-memory", required_argument, 0, 'M' }, { "replicas", required_argument, 0, 'r' },
        { "wire", required_argument, 0, 'w' },     { "reserve", required_argument, 0, 'R' },
        { "help", no_argument, 0, 'h' },           { 0, 0, 0, 0 } };
    *o = (plan_opts_t){ .replicas = 1, .reserve_pct = PLAN_RESERVE_PCT_DEFAULT, .wire = MS_WIRE_F32 };
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":m:n:M:r:w:h", longopts, NULL)) != -1;) {
        int status = -1;
        if (c == 'h') {
            plan_help();
            return COORD_EXIT_OK;
        } else if (c == ':') {
            coord_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
            return COORD_EXIT_USAGE;
        } else if (c == '?') {
            coord_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
            return COORD_EXIT_USAGE;
        }
        if ((status = parse_opt(c, optarg, o)) >= 0)
            return status;
    }
    if (optind != argc) {
        coord_usage_error(CMD, "unexpected argument '%s' (the model goes after --model)", argv[optind]);
        return COORD_EXIT_USAGE;
    }
    if (!o->model || !o->hosts || o->host_gib <= 0.0f) {
        coord_usage_error(CMD, "%s is required", !o->model ? "--model" : !o->hosts ? "--hosts" : "--host-memory");
        return COORD_EXIT_USAGE;
    }
    if (o->replicas > o->hosts) {
        coord_usage_error(CMD, "--replicas %d exceeds --hosts %d: the copies of a slice go to distinct hosts",
                          o->replicas, o->hosts);
        return COORD_EXIT_USAGE;
    }
    return -1;
}

/* ---- the model ---- */

/* "12.34 GiB", "5.67 MiB" or "8.9 KiB": the unit that suits b. */
static const char *human(uint64_t b, char buf[32])
{
    if ((double)b >= GIB)
        snprintf(buf, 32, "%.2f GiB", (double)b / GIB);
    else if ((double)b >= MIB)
        snprintf(buf, 32, "%.2f MiB", (double)b / MIB);
    else
        snprintf(buf, 32, "%.1f KiB", (double)b / 1024.0);
    return buf;
}

static uint64_t slice_of(const ms_slice_t *s)
{
    return s->nbytes[MS_PROJ_GATE] + s->nbytes[MS_PROJ_UP] + s->nbytes[MS_PROJ_DOWN];
}

/* Shapes and bytes from the header(s); the weights themselves are never read. */
static int load_model(plan_t *pl)
{
    int rc = ms_gguf_open_layout(pl->o.model, &pl->g, &pl->err);
    rc = rc ? rc : ms_shard_open(pl->g, &pl->sh, &pl->err);
    if (!rc && ms_shard_is_packed(pl->sh)) {
        ms_err_set(&pl->err, "%s is a host shard written by 'moeshard pack'; plan the full model", pl->o.model);
        rc = -EINVAL;
    }
    if (rc)
        return rc;
    pl->hp = ms_shard_hparams(pl->sh);
    pl->lead = pl->hp->n_layer_dense_lead;
    pl->n_moe = pl->hp->n_layer - pl->lead;
    for (int32_t l = 0; l < pl->n_moe; l++) {
        const ms_slice_t *s = ms_shard_find(pl->sh, pl->lead + l, 0);
        if (!s) {
            ms_err_set(&pl->err, "%s: MoE layer %d has no expert tensors", pl->o.model, pl->lead + l);
            return -EINVAL;
        }
        pl->slice_bytes[l] = slice_of(s);
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < ms_gguf_n_tensors(pl->g); i++)
        total += ms_gguf_tensor(pl->g, i)->nbytes;
    for (size_t i = 0; i < ms_shard_n_slices(pl->sh); i++)
        pl->expert_bytes += slice_of(ms_shard_slice(pl->sh, i));
    pl->dense_bytes = total - pl->expert_bytes;
    return 0;
}

/* Values the forward pass caches per token and layer (coordinator/forward.c):
 * the latent and the rope key under latent attention, full K and V otherwise;
 * stated for the cache type run and serve keep by default (f16, 2 bytes). */
static uint64_t kv_floats(const ms_hparams_t *hp)
{
    if (hp->kv_lora_rank > 0)
        return (uint64_t)hp->kv_lora_rank + (uint64_t)hp->n_rot;
    return (uint64_t)hp->n_head_kv * (uint64_t)(hp->head_dim + hp->head_dim_v);
}

static void print_model(const plan_t *pl)
{
    const ms_hparams_t *hp = pl->hp;
    char h1[32], h2[32], h3[32];
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int32_t l = 0; l < pl->n_moe; l++) {
        lo = pl->slice_bytes[l] < lo ? pl->slice_bytes[l] : lo;
        hi = pl->slice_bytes[l] > hi ? pl->slice_bytes[l] : hi;
    }
    printf("model         %s (%" PRIu32 " file%s; header read, weights not)\n", ms_gguf_path(pl->g),
           ms_gguf_n_parts(pl->g), ms_gguf_n_parts(pl->g) > 1 ? "s" : "");
    printf("shape         %s: %d layers (%d dense + %d MoE), hidden %d, %d experts per MoE layer, top-%d\n",
           ms_arch_name(hp->arch), hp->n_layer, pl->lead, pl->n_moe, hp->n_embd, hp->n_expert, hp->n_expert_used);
    printf("weights       dense %" PRIu64 " bytes (%s), experts %" PRIu64 " bytes (%s)\n", pl->dense_bytes,
           human(pl->dense_bytes, h1), pl->expert_bytes, human(pl->expert_bytes, h2));
    if (lo == hi)
        printf("slice         %" PRIu64 " bytes (%s) per slice (gate+up+down of one expert) in every MoE"
               " layer; %zu slices\n", lo, human(lo, h1), ms_shard_n_slices(pl->sh));
    else
        printf("slice         %" PRIu64 " to %" PRIu64 " bytes per slice (gate+up+down of one expert), by layer;"
               " %zu slices\n", lo, hi, ms_shard_n_slices(pl->sh));
    uint64_t kv = kv_floats(hp) * sizeof(uint16_t) * (uint64_t)hp->n_layer * PLAN_KV_TOKENS;
    printf("coordinator   dense weights %s + KV cache %" PRIu64 " bytes (%s) per %d-token sequence (f16, %" PRIu64
           " values per token and layer; twice that with --kv-type f32) = %s for one sequence\n",
           human(pl->dense_bytes, h1), kv, human(kv, h2), PLAN_KV_TOKENS, kv_floats(hp),
           human(pl->dense_bytes + kv, h3));
}

/* ---- placement ---- */

/* The placement of pack's rule over n hosts; with caps, hosts take no more
 * than their usable bytes (-ENOSPC when that cannot be). */
static int place(plan_t *pl, int32_t n, const uint64_t *caps, ms_placement_t **ret)
{
    ms_placement_params_t p = { pl->n_moe, pl->hp->n_expert, pl->slice_bytes, n, pl->o.replicas, caps };
    return ms_placement_compute(&p, ret, &pl->err);
}

/* The smallest host count whose placement fits, 0 when none up to MS_HOSTS_MAX does. */
static int32_t smallest_fit(plan_t *pl)
{
    uint64_t need = pl->expert_bytes * (uint64_t)pl->o.replicas;
    uint64_t n0 = (need + pl->usable_bytes - 1) / pl->usable_bytes;
    int32_t n = n0 > (uint64_t)pl->o.replicas ? (int32_t)(n0 < MS_HOSTS_MAX ? n0 : MS_HOSTS_MAX) : pl->o.replicas;
    uint64_t *caps = malloc(MS_HOSTS_MAX * sizeof(*caps));
    for (int32_t h = 0; caps && h < MS_HOSTS_MAX; h++)
        caps[h] = pl->usable_bytes;
    int32_t found = 0;
    for (; caps && !found && n <= MS_HOSTS_MAX; n++) {
        ms_placement_t *p = NULL;
        ms_err_t quiet = { { 0 } };
        ms_placement_params_t pp = { pl->n_moe, pl->hp->n_expert, pl->slice_bytes, n, pl->o.replicas, caps };
        int rc = ms_placement_compute(&pp, &p, &quiet);
        ms_placement_destroy(&p);
        if (rc == 0)
            found = n;
        else if (rc != -ENOSPC)
            break;
    }
    free(caps);
    return found;
}

/* ---- compact id lists ---- */

/* Appends ids[0..n) (ascending) as "a-b" runs and "a-b/s" progressions of
 * three or more, single ids otherwise. */
static void fmt_ids(const int32_t *ids, int32_t n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int32_t i = 0; i < n && len < cap;) {
        int32_t j = i + 1;
        int32_t step = i + 1 < n ? ids[i + 1] - ids[i] : 0;
        while (j < n && ids[j] - ids[j - 1] == step)
            j++;
        const char *sep = i ? "," : "";
        int w;
        if (j - i >= 3 && step == 1)
            w = snprintf(buf + len, cap - len, "%s%d-%d", sep, ids[i], ids[j - 1]);
        else if (j - i >= 3)
            w = snprintf(buf + len, cap - len, "%s%d-%d/%d", sep, ids[i], ids[j - 1], step);
        else
            w = snprintf(buf + len, cap - len, "%s%d", sep, ids[i]);
        len += w > 0 ? (size_t)w : 0;
        i = j - i >= 3 ? j : i + 1;
    }
}

/* The experts of MoE layer l that host h holds, ascending, into ids. */
static int32_t held_ids(const plan_t *pl, const ms_placement_t *p, int32_t h, int32_t l, int32_t *ids)
{
    int32_t n = 0;
    for (int32_t e = 0; e < pl->hp->n_expert; e++)
        if (ms_placement_holds(p, h, l, e))
            ids[n++] = e;
    return n;
}

/* One line per distinct expert set of host h: the (model) layers holding
 * exactly that set, then the set. */
static void print_host_slices(const plan_t *pl, const ms_placement_t *p, int32_t h, int32_t *ids, int32_t *other,
                              bool *done, char *a, char *b)
{
    memset(done, 0, (size_t)pl->n_moe * sizeof(*done));
    for (int32_t l = 0; l < pl->n_moe; l++) {
        if (done[l])
            continue;
        int32_t n = held_ids(pl, p, h, l, ids), n_layers = 0;
        int32_t layers[MS_LAYERS_MAX];
        for (int32_t m = l; m < pl->n_moe; m++) {
            if (done[m] || held_ids(pl, p, h, m, other) != n || memcmp(ids, other, (size_t)n * sizeof(*ids)) != 0)
                continue;
            done[m] = true;
            layers[n_layers++] = pl->lead + m;
        }
        if (n == 0)
            continue;
        fmt_ids(layers, n_layers, a, PLAN_IDS_TEXT_BYTES);
        fmt_ids(ids, n, b, PLAN_IDS_TEXT_BYTES);
        printf("    layer%s %s: expert%s %s\n", n_layers > 1 ? "s" : "", a, n > 1 ? "s" : "", b);
    }
}

static int print_slices(const plan_t *pl, const ms_placement_t *p)
{
    int32_t *ids = malloc(2 * MS_EXPERTS_MAX * sizeof(*ids));
    bool *done = malloc(MS_LAYERS_MAX * sizeof(*done));
    char *a = malloc(PLAN_IDS_TEXT_BYTES), *b = malloc(PLAN_IDS_TEXT_BYTES);
    int rc = ids && done && a && b ? 0 : -ENOMEM;
    if (!rc)
        printf("\nslices        which (layer, expert) slices each host holds:\n");
    for (int32_t h = 0; !rc && h < ms_placement_n_hosts(p); h++) {
        printf("  host %d\n", h);
        print_host_slices(pl, p, h, ids, ids + MS_EXPERTS_MAX, done, a, b);
    }
    free(ids);
    free(done);
    free(a);
    free(b);
    return rc;
}

/* ---- report ---- */

static void print_hosts(const plan_t *pl, const ms_placement_t *p)
{
    char h1[32];
    printf("\nhosts         %d x %g GiB, %d%% kept for buffers: %" PRIu64 " bytes (%s) usable for slices each; %d"
           " cop%s of each slice on distinct hosts\n", pl->o.hosts, (double)pl->o.host_gib, pl->o.reserve_pct,
           pl->usable_bytes, human(pl->usable_bytes, h1), pl->o.replicas, pl->o.replicas > 1 ? "ies" : "y");
    for (int32_t h = 0; h < pl->o.hosts; h++) {
        uint64_t b = ms_placement_host_bytes(p, h);
        bool fits = b <= pl->usable_bytes;
        printf("  host %-4d %6u slices, %" PRIu64 " bytes (%s): %s (%.0f%% of usable)\n", h,
               ms_placement_host_slices(p, h), b, human(b, h1), fits ? "fits" : "DOES NOT FIT",
               100.0 * (double)b / (double)pl->usable_bytes);
    }
}

static void print_network(const plan_t *pl)
{
    double n = pl->o.hosts, k = pl->hp->n_expert_used;
    double touched = n * (1.0 - pow(1.0 - 1.0 / n, k));
    size_t wb = ms_wire_dtype_bytes(pl->o.wire);
    double act = touched * 2.0 * (double)pl->hp->n_embd * (double)wb;
    double hdr = touched * 2.0 * PLAN_MSG_BYTES + k * PLAN_PAIR_BYTES;
    printf("\nnetwork       wire %s; a token's top-%d experts touch %.3f of %d hosts on average, N(1-(1-1/N)^k)"
           " (experts picked independently and uniformly over hosts)\n", ms_wire_dtype_name(pl->o.wire),
           pl->hp->n_expert_used, touched, pl->o.hosts);
    printf("  per token per MoE layer: %.0f bytes = activations %.0f (hosts touched x 2 directions x hidden %d x"
           " %zu bytes) + headers ~%.0f (estimate)\n", act + hdr, act, pl->hp->n_embd, wb, hdr);
    char h1[32];
    printf("  per token, %d MoE layers: %.0f bytes (%s)\n", pl->n_moe, (act + hdr) * pl->n_moe,
           human((uint64_t)llround((act + hdr) * pl->n_moe), h1));
}

static int report(plan_t *pl)
{
    ms_placement_t *p = NULL;
    int rc = place(pl, pl->o.hosts, pl->caps, &p);
    bool fits = rc == 0;
    if (rc == -ENOSPC) /* show what each host would need */
        rc = place(pl, pl->o.hosts, NULL, &p);
    if (rc)
        return rc;
    print_model(pl);
    print_hosts(pl, p);
    rc = print_slices(pl, p);
    ms_placement_destroy(&p);
    if (rc)
        return rc;
    print_network(pl);
    int32_t best = smallest_fit(pl);
    char best_text[96] = "none up to the host limit (a slice exceeds a host's usable memory)";
    if (best)
        snprintf(best_text, sizeof(best_text), "%d host%s of %g GiB", best, best > 1 ? "s" : "",
                 (double)pl->o.host_gib);
    printf("\nresult        %s on %d host%s of %g GiB with %d cop%s of each slice; the smallest host count that"
           " fits: %s\n", fits ? "fits" : "DOES NOT FIT", pl->o.hosts, pl->o.hosts > 1 ? "s" : "",
           (double)pl->o.host_gib, pl->o.replicas, pl->o.replicas > 1 ? "ies" : "y", best_text);
    if (!fits)
        fprintf(stderr, "moeshard plan: %s does not fit on %d hosts of %g GiB (%d replicas); smallest host count"
                " that fits: %s\n", pl->o.model, pl->o.hosts, (double)pl->o.host_gib, pl->o.replicas, best_text);
    return fits ? 0 : 1;
}

int coord_cmd_plan(int argc, char **argv)
{
    plan_t pl = { 0 };
    int status = parse_args(argc, argv, &pl.o);
    if (status >= 0)
        return status;
    pl.host_bytes = (uint64_t)((double)pl.o.host_gib * GIB);
    pl.usable_bytes = pl.host_bytes / 100 * (uint64_t)(100 - pl.o.reserve_pct);
    if (pl.usable_bytes == 0) {
        coord_usage_error(CMD, "--host-memory leaves no bytes for slices after the %d%% reserve", pl.o.reserve_pct);
        return COORD_EXIT_USAGE;
    }
    pl.caps = calloc((size_t)pl.o.hosts, sizeof(*pl.caps));
    for (int32_t h = 0; pl.caps && h < pl.o.hosts; h++)
        pl.caps[h] = pl.usable_bytes;
    int rc = pl.caps ? load_model(&pl) : -ENOMEM;
    if (rc == -ENOMEM && !pl.err.msg[0])
        ms_err_set(&pl.err, "out of memory");
    rc = rc ? rc : report(&pl);
    if (rc < 0)
        fprintf(stderr, "moeshard plan: %s\n", pl.err.msg);
    free(pl.caps);
    ms_shard_destroy(&pl.sh);
    ms_gguf_close(&pl.g);
    return rc ? COORD_EXIT_FAIL : COORD_EXIT_OK;
}
