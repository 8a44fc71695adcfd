/* Chat templates: recognises a model's template family from the GGUF's
 * tokenizer.chat_template and renders a conversation into the exact prompt
 * text that family's official template produces (no Jinja engine). */
#ifndef MS_CHAT_H
#define MS_CHAT_H

#include <stddef.h>

#include "err.h"
#include "gguf.h"
#include "limits.h"

/* Bounds on what a caller (an HTTP body, a chat session) may hand over.
 * The prompt bound equals the tokenizer's input bound (MS_PROMPT_TOKENS_MAX * 16). */
#ifndef MS_CHAT_MESSAGES_MAX
#define MS_CHAT_MESSAGES_MAX     4096
#endif
#ifndef MS_CHAT_PROMPT_BYTES_MAX
#define MS_CHAT_PROMPT_BYTES_MAX ((size_t)MS_PROMPT_TOKENS_MAX * 16)
#endif

typedef enum {
    MS_CHAT_CHATML,   /* <|im_start|>role ... <|im_end|>, as Qwen2.5's template (default system message) */
    MS_CHAT_MISTRAL,  /* [INST] ... [/INST], as Mistral/Mixtral-Instruct's template with a system message */
    MS_CHAT_DEEPSEEK, /* <｜User｜> ... <｜Assistant｜>, as DeepSeek-V3's template */
    MS_CHAT_QWEN3,    /* chatml with Qwen3's <think> handling, enable_thinking left at its default */
    MS_CHAT_COUNT
} ms_chat_family_t;

/* role: "system", "user" or "assistant"; content: any bytes up to a NUL. Borrowed. */
typedef struct {
    const char *role;
    const char *content;
} ms_chat_msg_t;

/* Recognises the family from the template text: "<｜User｜>" with
 * "<｜Assistant｜>" is deepseek, "<|im_start|>" with "<think>" is qwen3,
 * "<|im_start|>" alone is chatml, "[INST]" is mistral. -EINVAL (err quotes
 * the start of the text) when none matches. */
int ms_chat_detect_text(const char *tmpl, size_t len, ms_chat_family_t *ret, ms_err_t *err);

/* The same over g's tokenizer.chat_template. -ENOENT when the model has no
 * template; -EINVAL when the key is not a string or the text is not recognised. */
int ms_chat_detect(const ms_gguf_t *g, ms_chat_family_t *ret, ms_err_t *err);

/* Renders msgs[0..n) and the assistant turn's opening (add_generation_prompt)
 * into a new NUL-terminated string the caller frees. bos_text is what the
 * template writes for bos_token (mistral and deepseek write it first); pass
 * NULL or "" when the tokenizer adds BOS itself, or BOS would appear twice.
 * Rules: at least one message, each role system/user/assistant with non-NULL
 * content, the last message from the user; mistral also wants an optional
 * leading system message, then user and assistant alternating from user.
 * -EINVAL (err names the message and what is wrong) when one is broken;
 * -E2BIG past MS_CHAT_MESSAGES_MAX messages or MS_CHAT_PROMPT_BYTES_MAX bytes;
 * -ENOMEM. *ret_prompt is written only on success. */
int ms_chat_render(ms_chat_family_t f, const ms_chat_msg_t *msgs, size_t n, const char *bos_text, char **ret_prompt,
                   ms_err_t *err);

/* "chatml", "mistral", "deepseek", "qwen3"; "?" out of range. */
const char *ms_chat_family_name(ms_chat_family_t f);
/* The inverse of ms_chat_family_name; -EINVAL for another name. */
int ms_chat_family_parse(const char *name, ms_chat_family_t *ret);

/* A Jinja template of the family, for model files written by tools: it
 * renders system/user/assistant conversations as ms_chat_render does and
 * carries the markers ms_chat_detect_text looks for. NULL out of range. */
const char *ms_chat_jinja(ms_chat_family_t f);

#endif
