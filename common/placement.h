/* Placement of expert slices on hosts: a pure, deterministic function from the
 * model's slice sizes, the host count (and optional capacities) and the
 * replica count to the host of every copy of every (layer, expert) slice. */
#ifndef MS_PLACEMENT_H
#define MS_PLACEMENT_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "limits.h"

typedef struct {
    int32_t n_layers;               /* [1, MS_LAYERS_MAX] */
    int32_t n_experts;              /* [1, MS_EXPERTS_MAX] */
    const uint64_t *slice_bytes;    /* [n_layers]: bytes of one expert slice (gate+up+down) of the layer, > 0 */
    int32_t n_hosts;                /* [1, MS_HOSTS_MAX] */
    int32_t replicas;               /* R copies of each slice, on R distinct hosts: [1, n_hosts] */
    const uint64_t *capacity_bytes; /* [n_hosts] bytes each host may hold (> 0), or NULL: unbounded, equal */
} ms_placement_params_t;

typedef struct ms_placement ms_placement_t;

/* Places every copy of every slice. Slices are taken in (layer, expert) order
 * and each copy goes to the least-loaded host not already holding that slice
 * (load = bytes held, or bytes held / capacity when capacities are given;
 * ties to the lowest host id); a host that would exceed its capacity is not
 * eligible. The same params always give the same placement.
 * -EINVAL for params out of range (replicas > hosts among them), -ENOSPC when
 * a copy fits on no eligible host (err names the slice), -ENOMEM. */
int ms_placement_compute(const ms_placement_params_t *params, ms_placement_t **ret_placement, ms_err_t *err);
/* Accepts NULL and *self_p == NULL; sets *self_p to NULL. */
void ms_placement_destroy(ms_placement_t **self_p);

int32_t ms_placement_n_layers(const ms_placement_t *p);
int32_t ms_placement_n_experts(const ms_placement_t *p);
int32_t ms_placement_n_hosts(const ms_placement_t *p);
int32_t ms_placement_replicas(const ms_placement_t *p);

/* Host of copy r of slice (layer, expert); -1 when an argument is out of range. */
int32_t ms_placement_host(const ms_placement_t *p, int32_t layer, int32_t expert, int32_t copy);
/* Whether host holds a copy of (layer, expert). */
bool ms_placement_holds(const ms_placement_t *p, int32_t host, int32_t layer, int32_t expert);
/* Totals per host (0 for a host out of range). */
uint64_t ms_placement_host_bytes(const ms_placement_t *p, int32_t host);
uint32_t ms_placement_host_slices(const ms_placement_t *p, int32_t host);

#endif
