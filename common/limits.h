/* Every bound on a user- or file-controllable quantity, in one place.
 * Checked while parsing; sizes derived from them are computed in 64 bits. */
#ifndef MS_LIMITS_H
#define MS_LIMITS_H

#include <stdint.h>

/* GGUF */
#define MS_GGUF_KV_MAX          (1u << 20)   /* metadata pairs in one file */
#define MS_GGUF_TENSORS_MAX     (1u << 20)   /* tensor infos in one file */
#define MS_GGUF_STRING_BYTES_MAX (1u << 26)  /* one string value: 64 MiB */
#define MS_GGUF_ARRAY_MAX       (1u << 26)   /* elements of one array value */
#define MS_GGUF_NAME_BYTES_MAX  256          /* tensor name, as in ggml (GGML_MAX_NAME is 64; be lenient) */
#define MS_GGUF_DIMS_MAX        4
#define MS_GGUF_ALIGNMENT_MAX   (1u << 20)

/* model shapes */
#define MS_LAYERS_MAX           256
#define MS_EXPERTS_MAX          512
#define MS_TOPK_MAX             32
#define MS_HEADS_MAX            256
#define MS_HEAD_DIM_MAX         512
#define MS_HIDDEN_MAX           (1 << 16)
#define MS_FF_MAX               (1 << 18)
#define MS_VOCAB_MAX            (1 << 20)
#define MS_CONTEXT_MAX          (1 << 18)

/* runtime */
#define MS_THREADS_MAX          256
#define MS_BATCH_TOKENS_MAX     512          /* tokens in one forward step */
#define MS_PROMPT_TOKENS_MAX    (1 << 17)
#define MS_TOKEN_BYTES_MAX      1024         /* one token's text */

_Static_assert(MS_TOPK_MAX <= MS_EXPERTS_MAX, "top-k cannot exceed the expert count");
_Static_assert(MS_BATCH_TOKENS_MAX <= MS_CONTEXT_MAX, "a batch fits in the context");
_Static_assert(MS_HEAD_DIM_MAX % 2 == 0, "RoPE pairs need an even head dimension");

#endif
