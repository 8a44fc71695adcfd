/* GGUF v3 writer: metadata and tensor infos are declared first, then tensor
 * data is streamed in declaration order, so files larger than RAM can be written. */
#ifndef MS_GGUF_WRITE_H
#define MS_GGUF_WRITE_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"

typedef struct ms_gguf_writer ms_gguf_writer_t;

/* alignment: power of two (written as general.alignment when != 32). NULL on ENOMEM. */
ms_gguf_writer_t *ms_gguf_writer_new(uint32_t alignment);
/* Accepts NULL; sets *self_p to NULL; removes nothing from disk. */
void ms_gguf_writer_destroy(ms_gguf_writer_t **self_p);

/* Metadata, in the order added. Values (and strings) are copied. Return 0 or -ENOMEM/-EINVAL. */
int ms_gguf_writer_add_u32(ms_gguf_writer_t *w, const char *key, uint32_t v);
int ms_gguf_writer_add_i32(ms_gguf_writer_t *w, const char *key, int32_t v);
int ms_gguf_writer_add_u64(ms_gguf_writer_t *w, const char *key, uint64_t v);
int ms_gguf_writer_add_f32(ms_gguf_writer_t *w, const char *key, float v);
int ms_gguf_writer_add_bool(ms_gguf_writer_t *w, const char *key, bool v);
int ms_gguf_writer_add_str(ms_gguf_writer_t *w, const char *key, const char *v);
/* Strings of given lengths (may hold any bytes). */
int ms_gguf_writer_add_arr_str(ms_gguf_writer_t *w, const char *key, const char *const *v, const uint64_t *lens, uint64_t n);
int ms_gguf_writer_add_arr_f32(ms_gguf_writer_t *w, const char *key, const float *v, uint64_t n);
int ms_gguf_writer_add_arr_i32(ms_gguf_writer_t *w, const char *key, const int32_t *v, uint64_t n);
int ms_gguf_writer_add_arr_u32(ms_gguf_writer_t *w, const char *key, const uint32_t *v, uint64_t n);
/* Copies one key/value from a file being read (any type, arrays included). */
int ms_gguf_writer_copy_kv(ms_gguf_writer_t *w, const ms_gguf_kv_t *kv);

/* Declares a tensor; ne[0] is the row length. Offsets are assigned in
 * declaration order, each aligned. -EINVAL when the shape is not a whole
 * number of blocks of type. */
int ms_gguf_writer_add_tensor(ms_gguf_writer_t *w, const char *name, ms_type_t type, uint32_t n_dims, const int64_t *ne);

/* Writes header, metadata and tensor infos to path (created/truncated). */
int ms_gguf_writer_begin(ms_gguf_writer_t *w, const char *path, ms_err_t *err);
/* Appends the next tensor's bytes; may be called several times per tensor
 * (chunks); the padding to the next tensor is written automatically once a
 * tensor's nbytes have been written. -EINVAL when more bytes than declared. */
int ms_gguf_writer_write(ms_gguf_writer_t *w, const void *data, uint64_t nbytes, ms_err_t *err);
/* Checks every declared byte was written, flushes and closes. -EINVAL if short. */
int ms_gguf_writer_finish(ms_gguf_writer_t *w, ms_err_t *err);

#endif
