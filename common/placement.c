/* Greedy byte-balanced placement: each copy of each slice to the least-loaded
 * eligible host. Sizes are compared exactly (128-bit cross products), so the
 * result never depends on floating-point rounding. */
#include "placement.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "limits.h"

struct ms_placement {
    int32_t n_layers, n_experts, n_hosts, replicas;
    int32_t *host;         /* [(layer * n_experts + expert) * replicas + r] */
    uint64_t *host_bytes;  /* [n_hosts] */
    uint32_t *host_slices; /* [n_hosts] */
};

static int check_params(const ms_placement_params_t *p, ms_err_t *err)
{
    if (!p || p->n_layers < 1 || p->n_layers > MS_LAYERS_MAX || p->n_experts < 1 || p->n_experts > MS_EXPERTS_MAX) {
        ms_err_set(err, "placement: layers must be in [1, %d] and experts in [1, %d]", MS_LAYERS_MAX, MS_EXPERTS_MAX);
        return -EINVAL;
    }
    if (p->n_hosts < 1 || p->n_hosts > MS_HOSTS_MAX) {
        ms_err_set(err, "placement: %d hosts is outside [1, %d]", p->n_hosts, MS_HOSTS_MAX);
        return -EINVAL;
    }
    if (p->replicas < 1 || p->replicas > p->n_hosts) {
        ms_err_set(err, "placement: %d replicas need as many distinct hosts, but there are %d", p->replicas,
                   p->n_hosts);
        return -EINVAL;
    }
    for (int32_t l = 0; l < p->n_layers; l++) {
        if (!p->slice_bytes || p->slice_bytes[l] == 0) {
            ms_err_set(err, "placement: layer %d has no slice size (bytes must be > 0)", l);
            return -EINVAL;
        }
    }
    for (int32_t h = 0; p->capacity_bytes && h < p->n_hosts; h++) {
        if (p->capacity_bytes[h] == 0) {
            ms_err_set(err, "placement: host %d has capacity 0", h);
            return -EINVAL;
        }
    }
    return 0;
}

/* load(a) < load(b), load = bytes / capacity (capacity 1 when unbounded). */
static bool lighter(const ms_placement_t *pl, const uint64_t *cap, int32_t a, int32_t b)
{
    if (!cap)
        return pl->host_bytes[a] < pl->host_bytes[b];
    return (unsigned __int128)pl->host_bytes[a] * cap[b] < (unsigned __int128)pl->host_bytes[b] * cap[a];
}

static bool holds_copy(const int32_t *copies, int32_t n, int32_t host)
{
    for (int32_t r = 0; r < n; r++)
        if (copies[r] == host)
            return true;
    return false;
}

/* The least-loaded host that does not hold one of copies[0..n) and has room
 * for bytes; -1 when none. Scanning in id order and replacing only on
 * strictly lighter gives ties to the lowest id. */
static int32_t pick_host(const ms_placement_t *pl, const uint64_t *cap, const int32_t *copies, int32_t n,
                         uint64_t bytes)
{
    int32_t best = -1;
    for (int32_t h = 0; h < pl->n_hosts; h++) {
        if (holds_copy(copies, n, h) || pl->host_bytes[h] > UINT64_MAX - bytes)
            continue;
        if (cap && pl->host_bytes[h] + bytes > cap[h])
            continue;
        if (best < 0 || lighter(pl, cap, h, best))
            best = h;
    }
    return best;
}

static int place_all(ms_placement_t *pl, const ms_placement_params_t *p, ms_err_t *err)
{
    for (int32_t l = 0; l < pl->n_layers; l++) {
        uint64_t bytes = p->slice_bytes[l];
        for (int32_t e = 0; e < pl->n_experts; e++) {
            int32_t *copies = &pl->host[((size_t)l * (size_t)pl->n_experts + (size_t)e) * (size_t)pl->replicas];
            for (int32_t r = 0; r < pl->replicas; r++) {
                int32_t h = pick_host(pl, p->capacity_bytes, copies, r, bytes);
                if (h < 0) {
                    ms_err_set(err, "placement: copy %d of layer %d expert %d (%" PRIu64 " bytes) fits on no host"
                               " not already holding it; add hosts or capacity, or lower the replicas", r + 1, l, e,
                               bytes);
                    return -ENOSPC;
                }
                copies[r] = h;
                pl->host_bytes[h] += bytes;
                pl->host_slices[h]++;
            }
        }
    }
    return 0;
}

int ms_placement_compute(const ms_placement_params_t *params, ms_placement_t **ret_placement, ms_err_t *err)
{
    int rc = check_params(params, err);
    if (rc)
        return rc;
    ms_placement_t *pl = calloc(1, sizeof(*pl));
    size_t n_copies = (size_t)params->n_layers * (size_t)params->n_experts * (size_t)params->replicas;
    if (pl) {
        *pl = (ms_placement_t){ params->n_layers, params->n_experts, params->n_hosts, params->replicas,
                                calloc(n_copies, sizeof(int32_t)), calloc((size_t)params->n_hosts, sizeof(uint64_t)),
                                calloc((size_t)params->n_hosts, sizeof(uint32_t)) };
    }
    if (!pl || !pl->host || !pl->host_bytes || !pl->host_slices) {
        ms_placement_destroy(&pl);
        ms_err_set(err, "placement: out of memory");
        return -ENOMEM;
    }
    rc = place_all(pl, params, err);
    if (rc) {
        ms_placement_destroy(&pl);
        return rc;
    }
    *ret_placement = pl;
    return 0;
}

void ms_placement_destroy(ms_placement_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_placement_t *pl = *self_p;
    free(pl->host);
    free(pl->host_bytes);
    free(pl->host_slices);
    free(pl);
    *self_p = NULL;
}

int32_t ms_placement_n_layers(const ms_placement_t *p) { return p->n_layers; }
int32_t ms_placement_n_experts(const ms_placement_t *p) { return p->n_experts; }
int32_t ms_placement_n_hosts(const ms_placement_t *p) { return p->n_hosts; }
int32_t ms_placement_replicas(const ms_placement_t *p) { return p->replicas; }

int32_t ms_placement_host(const ms_placement_t *p, int32_t layer, int32_t expert, int32_t copy)
{
    if (layer < 0 || layer >= p->n_layers || expert < 0 || expert >= p->n_experts || copy < 0 || copy >= p->replicas)
        return -1;
    return p->host[((size_t)layer * (size_t)p->n_experts + (size_t)expert) * (size_t)p->replicas + (size_t)copy];
}

bool ms_placement_holds(const ms_placement_t *p, int32_t host, int32_t layer, int32_t expert)
{
    for (int32_t r = 0; r < p->replicas; r++)
        if (host >= 0 && ms_placement_host(p, layer, expert, r) == host)
            return true;
    return false;
}

uint64_t ms_placement_host_bytes(const ms_placement_t *p, int32_t host)
{
    return host >= 0 && host < p->n_hosts ? p->host_bytes[host] : 0;
}

uint32_t ms_placement_host_slices(const ms_placement_t *p, int32_t host)
{
    return host >= 0 && host < p->n_hosts ? p->host_slices[host] : 0;
}
