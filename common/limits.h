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

/* cluster */
#define MS_HOSTS_MAX            1024         /* hosts in one placement */

/* runtime */
#define MS_THREADS_MAX          256
#define MS_POOL_SPIN_US_MAX     1000         /* longest poll before a pool thread sleeps */
#define MS_BATCH_TOKENS_MAX     512          /* tokens in one forward step */
#define MS_PROMPT_TOKENS_MAX    (1 << 17)
#define MS_TOKEN_BYTES_MAX      1024         /* one token's text */

/* wire protocol (docs/protocol.md) */
#define MS_WIRE_VERSION_MAJOR   1            /* a peer with another major is refused */
#define MS_WIRE_VERSION_MINOR   0
#define MS_WIRE_TOKENS_MAX      MS_BATCH_TOKENS_MAX  /* tokens in one ExpertBatch */
#define MS_WIRE_SLOTS_MAX       (MS_WIRE_TOKENS_MAX * MS_TOPK_MAX) /* (expert, weight) pairs in one batch */
#define MS_WIRE_HEADER_BYTES_MAX (1u << 22)  /* the protobuf header frame: 4 MiB (a Hello lists every slice held) */
#define MS_WIRE_FRAME_BYTES_MAX ((uint64_t)MS_WIRE_TOKENS_MAX * MS_HIDDEN_MAX * 4) /* one tensor frame, f32 */
#define MS_WIRE_FRAMES_MAX      1            /* tensor frames after the header */
#define MS_WIRE_PARTS_MAX       8            /* ZeroMQ parts read per message (routing ids + header + frames) */
#define MS_WIRE_ID_BYTES_MAX    255          /* a ZeroMQ routing id */
#define MS_WIRE_ERROR_BYTES_MAX 480          /* the text of an Error reply */
#define MS_WIRE_SOURCE_BYTES_MAX 4096        /* a file name in Load */
#define MS_WIRE_ENDPOINT_BYTES_MAX 255       /* a joining host's endpoint in Hello */
#define MS_WIRE_SLICES_MAX      (MS_LAYERS_MAX * MS_EXPERTS_MAX) /* (layer, expert) pairs in a Hello */

_Static_assert(MS_TOPK_MAX <= MS_EXPERTS_MAX, "top-k cannot exceed the expert count");
_Static_assert(MS_BATCH_TOKENS_MAX <= MS_CONTEXT_MAX, "a batch fits in the context");
_Static_assert(MS_HEAD_DIM_MAX % 2 == 0, "RoPE pairs need an even head dimension");

_Static_assert(MS_WIRE_FRAME_BYTES_MAX <= (1ull << 31), "a tensor frame fits ZMQ_MAXMSGSIZE (int64) and size_t on 32-bit");
_Static_assert(MS_WIRE_SLOTS_MAX * 14ull + 4096 <= MS_WIRE_HEADER_BYTES_MAX, "the largest ExpertBatch header (10-byte ids of -1, 4-byte weights) fits the header bound");
_Static_assert(MS_WIRE_SLICES_MAX * 2ull * 10 + 4096 <= MS_WIRE_HEADER_BYTES_MAX, "a Hello listing every slice fits the header bound");
_Static_assert(MS_WIRE_FRAMES_MAX + 2 <= MS_WIRE_PARTS_MAX, "routing id, header and frames fit the part bound");

#endif
