/* Which routed-expert slices a GGUF file holds, and where their bytes are.
 * A full model holds every expert of every layer. A host shard written by
 * `moeshard pack` holds only its host's slices, in merged 3-D tensors whose
 * slowest dimension lists the held experts in the order its metadata gives,
 * with a SHA-256 per tensor and per expert slab.
 *
 * Shard metadata (all under "moeshard."):
 *   moeshard.shard.version        u32   1
 *   moeshard.shard.host           u32   this host's index K
 *   moeshard.shard.hosts          u32   N
 *   moeshard.shard.replicas       u32   R
 *   moeshard.shard.epoch          u64   placement epoch the shard was packed for
 *   moeshard.shard.source         str   file name of the packed model
 *   moeshard.shard.blk.L.experts  i32[] expert ids held for layer L, in slab order (absent: none held)
 *   moeshard.sha256.NAME          str   hex SHA-256 of tensor NAME's bytes (every tensor of a shard or dense file)
 *   moeshard.slab_sha256.NAME     str[] hex SHA-256 of each expert slab of expert tensor NAME, in slab order
 * plus general.architecture and the ARCH.* hyperparameters of the model, so the
 * shard describes its own shapes. */
#ifndef MS_SHARD_H
#define MS_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"
#include "model.h"
#include "uring_load.h"

#define MS_SHARD_VERSION 1

typedef enum { MS_PROJ_GATE, MS_PROJ_UP, MS_PROJ_DOWN, MS_PROJ_COUNT } ms_proj_t;

/* One (layer, expert) slice: its three slabs in the file. */
typedef struct {
    int32_t layer, expert;
    uint64_t file_offset[MS_PROJ_COUNT]; /* absolute offset of the slab in the file of its part */
    uint64_t nbytes[MS_PROJ_COUNT];
    uint32_t part[MS_PROJ_COUNT];        /* the file holding the slab: ms_gguf_part_path (0 unless split) */
    bool has_sha256;                     /* the file carries slab digests */
    uint8_t sha256[MS_PROJ_COUNT][MS_SHA256_BYTES];
} ms_slice_t;

/* Shapes and types of one layer's expert matrices (as in the model). */
typedef struct {
    ms_type_t type[MS_PROJ_COUNT];
    int64_t n_in[MS_PROJ_COUNT], n_out[MS_PROJ_COUNT];
} ms_slice_shape_t;

typedef struct ms_shard ms_shard_t;

/* Reads the slice table of g (borrowed; must outlive the shard): a shard's
 * held experts, or every expert of a full model. Validates the shard
 * metadata (ids in range, no duplicates, tensor ne[2] == ids held, digests
 * well formed). -EINVAL with err naming the key or tensor; -ENOMEM. */
int ms_shard_open(const ms_gguf_t *g, ms_shard_t **ret_shard, ms_err_t *err);
void ms_shard_destroy(ms_shard_t **self_p);

bool ms_shard_is_packed(const ms_shard_t *s);       /* false for a full model */
const ms_hparams_t *ms_shard_hparams(const ms_shard_t *s);
int32_t ms_shard_host(const ms_shard_t *s);          /* -1 for a full model */
uint64_t ms_shard_epoch(const ms_shard_t *s);
size_t ms_shard_n_slices(const ms_shard_t *s);
const ms_slice_t *ms_shard_slice(const ms_shard_t *s, size_t i);  /* ordered by (layer, expert) */
/* NULL when (layer, expert) is not held. */
const ms_slice_t *ms_shard_find(const ms_shard_t *s, int32_t layer, int32_t expert);
const ms_slice_shape_t *ms_shard_layer_shape(const ms_shard_t *s, int32_t layer);

/* ms_uring_load over the file(s) of g, which may be a split model: part[i]
 * is the part holding ranges[i] (ms_slice_t.part), or part == NULL when all
 * are in the first. Each part's ranges are read in one ms_uring_load call on
 * that part's file; progress counts over all of them (bytes done and total of
 * the whole call) and ret_stats sums the calls. Returns as ms_uring_load
 * (the first failing part stops the call; err names its file). */
int ms_shard_load_ranges(const ms_gguf_t *g, ms_load_range_t *ranges, const uint32_t *part, size_t n_ranges,
                         const ms_load_params_t *params, ms_load_progress_fn progress, void *progress_ctx,
                         ms_load_stats_t *ret_stats, ms_err_t *err);

#endif
