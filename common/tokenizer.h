/* Tokenizer built from a GGUF's own tokenizer.ggml.* metadata: byte-level
 * BPE ("gpt2") with the common models' pre-tokenizer regexes (PCRE2), and
 * SentencePiece ("llama"). Plus a UTF-8 stream that holds back incomplete
 * characters while tokens are printed one by one. */
#ifndef MS_TOKENIZER_H
#define MS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"

typedef struct ms_tokenizer ms_tokenizer_t;

typedef enum {
    MS_TOK_BPE, /* tokenizer.ggml.model = "gpt2" */
    MS_TOK_SPM, /* tokenizer.ggml.model = "llama" */
    MS_TOK_KIND_COUNT
} ms_tok_kind_t;

/* Reads tokenizer.ggml.{model,pre,tokens,scores,token_type,merges,
 * bos_token_id,eos_token_id,eot_token_id,unknown_token_id,add_bos_token,
 * add_eos_token,add_space_prefix}. -EINVAL with err naming the key for a
 * missing/malformed/unsupported value (e.g. "tokenizer.ggml.pre 'foo' is not
 * supported (supported: default, llama-bpe, qwen2, deepseek-llm, deepseek-v3)");
 * -ENOMEM. Copies what it needs: g may be closed afterwards. */
int ms_tokenizer_new_from_gguf(const ms_gguf_t *g, ms_tokenizer_t **ret_tok, ms_err_t *err);
void ms_tokenizer_destroy(ms_tokenizer_t **self_p);

ms_tok_kind_t ms_tokenizer_kind(const ms_tokenizer_t *t);
int32_t ms_tokenizer_n_vocab(const ms_tokenizer_t *t);
int32_t ms_tokenizer_bos(const ms_tokenizer_t *t);   /* -1 when none */
int32_t ms_tokenizer_eos(const ms_tokenizer_t *t);   /* -1 when none */
bool ms_tokenizer_add_bos(const ms_tokenizer_t *t);
/* True for tokens that end generation (EOS, EOT and similar end-of-turn tokens). */
bool ms_tokenizer_is_eog(const ms_tokenizer_t *t, int32_t id);
/* True for control tokens (type CONTROL): their text is not printed. */
bool ms_tokenizer_is_control(const ms_tokenizer_t *t, int32_t id);

/* Encodes text[0..len) (any bytes). add_bos: prepend BOS when the model adds
 * it (ms_tokenizer_add_bos). parse_special: special/control tokens written in
 * the text (e.g. "<|im_start|>") become their ids. Writes at most cap ids;
 * *ret_n receives the full count. -ENOSPC when cap was too small (*ret_n
 * still set), -EINVAL for len > MS_PROMPT_TOKENS_MAX * 16. */
int ms_tokenizer_encode(const ms_tokenizer_t *t, const char *text, size_t len, bool add_bos,
                        bool parse_special, int32_t *out, size_t cap, size_t *ret_n);

/* The bytes a token stands for when generated text is printed: byte-level
 * BPE tokens mapped back to raw bytes; SPM "▁" as a space and <0xNN> as the
 * byte; control tokens give an empty piece. NULL and *len = 0 for an id out
 * of range. The pointer stays valid until destroy. */
const char *ms_tokenizer_piece(const ms_tokenizer_t *t, int32_t id, size_t *len);
/* The vocabulary entry as stored in the GGUF (for --pieces). */
const char *ms_tokenizer_token_text(const ms_tokenizer_t *t, int32_t id, size_t *len);

/* Generated text is printed as tokens arrive; a character may span tokens.
 * The stream holds back an incomplete UTF-8 tail and replaces bytes that can
 * never form a valid character with U+FFFD, so what it emits is always valid UTF-8. */
typedef struct {
    unsigned char pending[4];
    int n_pending;
} ms_utf8_stream_t;

void ms_utf8_stream_init(ms_utf8_stream_t *s);
/* Appends in[0..n); writes the valid UTF-8 that is now complete to out
 * (capacity must be at least 3 * n + 8: every invalid byte becomes a 3-byte
 * U+FFFD) and returns its length. */
size_t ms_utf8_stream_push(ms_utf8_stream_t *s, const char *in, size_t n, char *out);
/* Flushes what is left at the end of the text (an incomplete tail becomes U+FFFD). */
size_t ms_utf8_stream_finish(ms_utf8_stream_t *s, char *out);

#endif
