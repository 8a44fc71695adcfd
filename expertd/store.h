/* The slices an expert host serves: chosen from a shard or a full GGUF,
 * read with io_uring into one contiguous buffer per (layer, projection),
 * and looked up by (layer, global expert id) while serving. */
#ifndef EXPERTD_STORE_H
#define EXPERTD_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "model.h"
#include "shard.h"
#include "wire.h"

typedef struct expertd_store expertd_store_t;

/* Opens model_path's metadata and picks the slices to hold: a shard's own
 * list, or spec (NULL = all) over every layer of a full model. A spec with a
 * shard, an unsupported expert type or mismatched layer shapes: -EINVAL with
 * err. Nothing is read from the expert data yet. */
int expertd_store_open(const char *model_path, const char *spec, expertd_store_t **ret_store, ms_err_t *err);
void expertd_store_destroy(expertd_store_t **self_p);

/* Allocates the slabs and reads every held slice with one ms_uring_load,
 * logging progress and throughput. A slab whose SHA-256 does not match:
 * that slice is logged and not served, the rest is. -errno with err when
 * the file cannot be read or memory not allocated. */
int expertd_store_load(expertd_store_t *s, ms_err_t *err);

const ms_hparams_t *expertd_store_hparams(const expertd_store_t *s);
uint64_t expertd_store_epoch(const expertd_store_t *s);
uint32_t expertd_store_n_served(const expertd_store_t *s);
uint32_t expertd_store_n_failed(const expertd_store_t *s);
uint64_t expertd_store_bytes(const expertd_store_t *s);   /* bytes of slices served */

/* ms_wire_held_fn over the store: true when (layer, expert) is served. */
bool expertd_store_held(void *store, int32_t layer, int32_t expert);

/* Slab index of a served (layer, expert), or -1. */
int32_t expertd_store_local(const expertd_store_t *s, int32_t layer, int32_t expert);

/* The layer's gate/up/down views over its slabs (n_mat is the same for
 * every layer so that one workspace serves all; only indices returned by
 * expertd_store_local are valid). NULL when the layer holds nothing. */
const ms_weight_t *expertd_store_weights(const expertd_store_t *s, int32_t layer);

/* Any layer's views with the largest n_mat, for sizing the workspace. */
const ms_weight_t *expertd_store_any_weights(const expertd_store_t *s);

/* Load (load true) or Unload the listed experts of one layer while serving:
 * the layer's slabs are rebuilt holding the new set (slices already held are
 * copied, new ones read from this host's own file, checked against their
 * SHA-256 when the file has them); the old slabs are freed after the swap.
 * A no-op when nothing changes. -EINVAL (layer or expert out of range),
 * -ENOENT (a slice the file does not hold), -ENOMEM or a read error, with err;
 * on failure the layer is unchanged. */
int expertd_store_apply(expertd_store_t *s, int32_t layer, const int32_t *experts, int n, bool load, ms_err_t *err);

/* The bytes of slices this host offers to hold (its Hello's capacity_bytes,
 * which the coordinator's placement weighs); 0: not stated. */
void expertd_store_set_capacity(expertd_store_t *s, uint64_t bytes);

/* Fills hello (host, shape, served and failed slices; the arrays stay the
 * store's). */
void expertd_store_hello(const expertd_store_t *s, ms_wire_hello_t *hello);

#endif
