/* Tokenizer internals shared with its tests: a constructor from plain arrays
 * (what ms_tokenizer_new_from_gguf reads, already decoded) and the
 * byte-level BPE pre-tokenizer split on its own. */
#ifndef MS_TOKENIZER_IMPL_H
#define MS_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "limits.h" /* before gguf.h, which uses MS_GGUF_DIMS_MAX */
#include "gguf.h"
#include "tokenizer.h"

/* tokenizer.ggml.token_type values (llama.cpp's LLAMA_TOKEN_TYPE_*). */
enum {
    MS_TOK_TYPE_UNDEFINED = 0,
    MS_TOK_TYPE_NORMAL = 1,
    MS_TOK_TYPE_UNKNOWN = 2,
    MS_TOK_TYPE_CONTROL = 3,
    MS_TOK_TYPE_USER_DEFINED = 4,
    MS_TOK_TYPE_UNUSED = 5,
    MS_TOK_TYPE_BYTE = 6,
    MS_TOK_TYPE_COUNT
};

/* Optional fields use ptr == NULL (strings), a negative value (ids) or
 * MS_TOK_FLAG_ABSENT (flags); absent fields take llama.cpp's defaults. */
#define MS_TOK_FLAG_ABSENT (-1)

typedef struct {
    ms_str_t model;           /* tokenizer.ggml.model: "gpt2" or "llama" */
    ms_str_t pre;             /* tokenizer.ggml.pre; ptr NULL = absent ("default") */
    uint64_t n_vocab;         /* entries in tokens (and scores/types when given) */
    const ms_str_t *tokens;   /* [n_vocab] token texts, any bytes */
    const float *scores;      /* [n_vocab] or NULL (all 0) */
    const int32_t *types;     /* [n_vocab] MS_TOK_TYPE_* or NULL (all normal) */
    uint64_t n_merges;
    const ms_str_t *merges;   /* [n_merges] "A B", rank = index; gpt2 only */
    int64_t bos_id, eos_id, eot_id, unk_id, pad_id; /* < 0 = absent */
    int add_bos, add_eos, add_space_prefix;         /* 0, 1 or MS_TOK_FLAG_ABSENT */
} ms_tok_spec_t;

/* Validates spec exactly as ms_tokenizer_new_from_gguf does (err names the
 * tokenizer.ggml.* key at fault) and copies everything it keeps. 0, -EINVAL, -ENOMEM. */
int ms_tokenizer_new_from_spec(const ms_tok_spec_t *spec, ms_tokenizer_t **ret_tok, ms_err_t *err);

/* Called once per pre-tokenizer piece, in text order; a non-zero return stops the split. */
typedef int (*ms_tok_piece_fn)(void *ctx, const char *piece, size_t len);

/* Splits text[0..len) with the BPE tokenizer's pre-tokenizer regexes (no
 * special-token handling). Invalid UTF-8 bytes come out as one-byte pieces.
 * Returns 0, the callback's non-zero value, -EINVAL (SPM tokenizer, len too
 * large, or a regex engine error) or -ENOMEM. */
int ms_tokenizer_pre_split(const ms_tokenizer_t *t, const char *text, size_t len, ms_tok_piece_fn fn,
                           void *ctx);

#endif
