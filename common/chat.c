/* Chat templates: family recognition from a template's markers, and one
 * renderer per family that writes what the official Jinja template writes
 * for system/user/assistant conversations (tool calls are not supported). */
#include "chat.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"

#define CHAT_EXCERPT_BYTES 48 /* of an unrecognised template, quoted in the error */

static const char *const chat_names[MS_CHAT_COUNT] = {
    [MS_CHAT_CHATML] = "chatml",
    [MS_CHAT_MISTRAL] = "mistral",
    [MS_CHAT_DEEPSEEK] = "deepseek",
    [MS_CHAT_QWEN3] = "qwen3",
};

/* U+FF5C FULLWIDTH VERTICAL LINE and U+2581 LOWER ONE EIGHTH BLOCK, as DeepSeek spells its tokens. */
#define DS_USER "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"
#define DS_ASSISTANT "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"
#define DS_EOS "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"

#define QWEN25_DEFAULT_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
#define MISTRAL_EOS "</s>"

const char *ms_chat_family_name(ms_chat_family_t f)
{
    return (unsigned)f < MS_CHAT_COUNT ? chat_names[f] : "?";
}

int ms_chat_family_parse(const char *name, ms_chat_family_t *ret)
{
    for (int f = 0; name && f < MS_CHAT_COUNT; f++) {
        if (!strcmp(name, chat_names[f])) {
            *ret = (ms_chat_family_t)f;
            return 0;
        }
    }
    return -EINVAL;
}

/* ------------------------------------------------------------ detection */

static bool has(const char *s, size_t len, const char *marker)
{
    return memmem(s, len, marker, strlen(marker)) != NULL;
}

/* The start of the text with anything but printable ASCII shown as '?', so
 * the message stays one readable line whatever the file holds. */
static void excerpt(const char *s, size_t len, char *out, size_t cap)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[n] = '\0';
}

int ms_chat_detect_text(const char *tmpl, size_t len, ms_chat_family_t *ret, ms_err_t *err)
{
    ms_chat_family_t f;
    if (!tmpl) {
        ms_err_set(err, "chat template: no text given");
        return -EINVAL;
    }
    /* DeepSeek-R1's template also mentions <think>: its own markers decide first. */
    if (has(tmpl, len, DS_USER) && has(tmpl, len, DS_ASSISTANT))
        f = MS_CHAT_DEEPSEEK;
    else if (has(tmpl, len, "<|im_start|>"))
        f = has(tmpl, len, "<think>") ? MS_CHAT_QWEN3 : MS_CHAT_CHATML;
    else if (has(tmpl, len, "[INST]"))
        f = MS_CHAT_MISTRAL;
    else {
        char start[CHAT_EXCERPT_BYTES + 1];
        excerpt(tmpl, len, start, sizeof(start));
        ms_err_set(err, "chat template of %zu bytes (starting '%s'%s) is none of the supported families "
                   "(chatml <|im_start|>, mistral [INST], deepseek <\xEF\xBD\x9CUser\xEF\xBD\x9C>, qwen3 <think>)",
                   len, start, len > CHAT_EXCERPT_BYTES ? "..." : "");
        return -EINVAL;
    }
    *ret = f;
    return 0;
}

int ms_chat_detect(const ms_gguf_t *g, ms_chat_family_t *ret, ms_err_t *err)
{
    ms_str_t s;
    int rc = ms_gguf_get_str(g, "tokenizer.chat_template", &s);
    if (rc == -ENOENT) {
        ms_err_set(err, "%s: the model has no tokenizer.chat_template", ms_gguf_path(g));
        return rc;
    }
    if (rc) {
        ms_err_set(err, "%s: tokenizer.chat_template is not a string", ms_gguf_path(g));
        return -EINVAL;
    }
    rc = ms_chat_detect_text(s.ptr, (size_t)s.len, ret, err);
    if (rc && err) {
        ms_err_t inner = *err;
        ms_err_set(err, "%s: tokenizer.chat_template: %s", ms_gguf_path(g), inner.msg);
    }
    return rc;
}

/* ---------------------------------------------------------- output text */

/* A growing string bounded by MS_CHAT_PROMPT_BYTES_MAX; the first failure
 * sticks in rc and later appends do nothing. */
typedef struct {
    char *p;
    size_t len, cap;
    int rc;
} chat_buf_t;

static void put_n(chat_buf_t *b, const char *s, size_t n)
{
    if (b->rc)
        return;
    if (n > MS_CHAT_PROMPT_BYTES_MAX - b->len) {
        b->rc = -E2BIG;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->rc = -ENOMEM;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void put(chat_buf_t *b, const char *s)
{
    put_n(b, s, strlen(s));
}

/* A slice of a message's content. */
typedef struct {
    const char *p;
    size_t n;
} chat_span_t;

static void put_span(chat_buf_t *b, chat_span_t s)
{
    put_n(b, s.p, s.n);
}

static void put_turn(chat_buf_t *b, const char *role, const char *content)
{
    put(b, "<|im_start|>");
    put(b, role);
    put(b, "\n");
    put(b, content);
    put(b, "<|im_end|>\n");
}

/* -------------------------------------------------------------- families */

static bool is_role(const ms_chat_msg_t *m, const char *role)
{
    return strcmp(m->role, role) == 0;
}

/* Qwen2.5: a default system message when the conversation has none first. */
static void render_chatml(chat_buf_t *b, const ms_chat_msg_t *m, size_t n)
{
    size_t i = 0;
    if (is_role(&m[0], "system"))
        put_turn(b, "system", m[i++].content);
    else
        put_turn(b, "system", QWEN25_DEFAULT_SYSTEM);
    for (; i < n; i++)
        put_turn(b, m[i].role, m[i].content);
    put(b, "<|im_start|>assistant\n");
}

/* The first system message joins the first user turn; roles were checked to alternate. */
static void render_mistral(chat_buf_t *b, const ms_chat_msg_t *m, size_t n, const char *bos)
{
    const char *system = is_role(&m[0], "system") ? m[0].content : NULL;
    put(b, bos);
    for (size_t i = system ? 1 : 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            put(b, " [INST] ");
            if (system && i == 1) {
                put(b, system);
                put(b, "\n\n");
            }
            put(b, m[i].content);
            put(b, " [/INST]");
        } else {
            put(b, " ");
            put(b, m[i].content);
            put(b, MISTRAL_EOS);
        }
    }
}

/* Every system message, wherever it stands, goes first, joined by blank lines. */
static void render_deepseek(chat_buf_t *b, const ms_chat_msg_t *m, size_t n, const char *bos)
{
    put(b, bos);
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (!is_role(&m[i], "system"))
            continue;
        if (!first)
            put(b, "\n\n");
        put(b, m[i].content);
        first = false;
    }
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "user")) {
            put(b, DS_USER);
            put(b, m[i].content);
        } else if (is_role(&m[i], "assistant")) {
            put(b, DS_ASSISTANT);
            put(b, m[i].content);
            put(b, DS_EOS);
        }
    }
    put(b, DS_ASSISTANT);
}

static chat_span_t span_lstrip_nl(chat_span_t s)
{
    while (s.n && s.p[0] == '\n') {
        s.p++;
        s.n--;
    }
    return s;
}

static chat_span_t span_rstrip_nl(chat_span_t s)
{
    while (s.n && s.p[s.n - 1] == '\n')
        s.n--;
    return s;
}

/* Last occurrence of needle in s, or NULL. */
static const char *span_rfind(chat_span_t s, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = s.n >= k ? s.n - k + 1 : 0; i-- > 0;)
        if (!memcmp(s.p + i, needle, k))
            return s.p + i;
    return NULL;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !memcmp(s + n - k, suffix, k);
}

/* Qwen3's split of an assistant message at "</think>": reasoning is what
 * stands between the last "<think>" and the first "</think>", the answer
 * what follows the last "</think>" (Python's split()[0] / split()[-1]). */
static void qwen3_split(const char *content, chat_span_t *ret_reasoning, chat_span_t *ret_answer)
{
    chat_span_t all = { content, strlen(content) };
    const char *first_end = strstr(content, "</think>");
    *ret_reasoning = (chat_span_t){ "", 0 };
    *ret_answer = all;
    if (!first_end)
        return;
    chat_span_t before = span_rstrip_nl((chat_span_t){ content, (size_t)(first_end - content) });
    const char *open = span_rfind(before, "<think>");
    if (open)
        before = (chat_span_t){ open + 7, (size_t)(before.p + before.n - (open + 7)) };
    *ret_reasoning = span_lstrip_nl(before);
    const char *last_end = span_rfind(all, "</think>");
    *ret_answer = span_lstrip_nl((chat_span_t){ last_end + 8, (size_t)(all.p + all.n - (last_end + 8)) });
}

/* The last user message that is not a wrapped tool response: assistant
 * turns after it keep their reasoning. */
static size_t qwen3_last_query(const ms_chat_msg_t *m, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        const char *c = m[i].content;
        bool tool = !strncmp(c, "<tool_response>", 15) && ends_with(c, "</tool_response>");
        if (is_role(&m[i], "user") && !tool)
            return i;
    }
    return n - 1;
}

static void render_qwen3_assistant(chat_buf_t *b, const char *content, bool keep_reasoning)
{
    chat_span_t reasoning, answer;
    qwen3_split(content, &reasoning, &answer);
    put(b, "<|im_start|>assistant\n");
    if (keep_reasoning && reasoning.n) {
        /* strip('\n') of an lstripped span: only the right side is left to trim */
        put(b, "<think>\n");
        put_span(b, span_rstrip_nl(reasoning));
        put(b, "\n</think>\n\n");
    }
    put_span(b, answer);
    put(b, "<|im_end|>\n");
}

/* No default system message; earlier answers lose their <think> part. The
 * last message is a user's, so the template's loop.last case never applies. */
static void render_qwen3(chat_buf_t *b, const ms_chat_msg_t *m, size_t n)
{
    size_t last_query = qwen3_last_query(m, n);
    for (size_t i = 0; i < n; i++) {
        if (is_role(&m[i], "assistant"))
            render_qwen3_assistant(b, m[i].content, i > last_query);
        else
            put_turn(b, m[i].role, m[i].content);
    }
    put(b, "<|im_start|>assistant\n");
}

/* ------------------------------------------------------------ validation */

static int check_msg(const ms_chat_msg_t *m, size_t i, ms_err_t *err)
{
    if (!m->role || !m->content) {
        ms_err_set(err, "message %zu has no %s", i, m->role ? "content" : "role");
        return -EINVAL;
    }
    if (!is_role(m, "system") && !is_role(m, "user") && !is_role(m, "assistant")) {
        ms_err_set(err, "message %zu: role '%.32s' is not system, user or assistant", i, m->role);
        return -EINVAL;
    }
    return 0;
}

/* Mistral's template refuses anything but [system] user assistant user ... */
static int check_mistral(const ms_chat_msg_t *m, size_t n, ms_err_t *err)
{
    size_t first = is_role(&m[0], "system") ? 1 : 0;
    for (size_t i = first; i < n; i++) {
        const char *want = (i - first) % 2 == 0 ? "user" : "assistant";
        if (!is_role(&m[i], want)) {
            ms_err_set(err, "message %zu is '%s' but the mistral template wants '%s' there: after an optional "
                       "first system message, user and assistant must alternate", i, m[i].role, want);
            return -EINVAL;
        }
    }
    return 0;
}

static int check_conversation(ms_chat_family_t f, const ms_chat_msg_t *m, size_t n, ms_err_t *err)
{
    if ((unsigned)f >= MS_CHAT_COUNT) {
        ms_err_set(err, "chat template family %d is out of range", (int)f);
        return -EINVAL;
    }
    if (n == 0 || !m) {
        ms_err_set(err, "the conversation is empty: give at least one user message");
        return -EINVAL;
    }
    if (n > MS_CHAT_MESSAGES_MAX) {
        ms_err_set(err, "the conversation has %zu messages (at most %d)", n, MS_CHAT_MESSAGES_MAX);
        return -E2BIG;
    }
    for (size_t i = 0; i < n; i++) {
        int rc = check_msg(&m[i], i, err);
        if (rc)
            return rc;
    }
    if (!is_role(&m[n - 1], "user")) {
        ms_err_set(err, "the last message (%zu) is '%s': a conversation must end with a user message", n - 1,
                   m[n - 1].role);
        return -EINVAL;
    }
    return f == MS_CHAT_MISTRAL ? check_mistral(m, n, err) : 0;
}

int ms_chat_render(ms_chat_family_t f, const ms_chat_msg_t *msgs, size_t n, const char *bos_text, char **ret_prompt,
                   ms_err_t *err)
{
    int rc = check_conversation(f, msgs, n, err);
    if (rc)
        return rc;
    const char *bos = bos_text ? bos_text : "";
    chat_buf_t b = { 0 };
    switch (f) {
    case MS_CHAT_CHATML: render_chatml(&b, msgs, n); break;
    case MS_CHAT_MISTRAL: render_mistral(&b, msgs, n, bos); break;
    case MS_CHAT_DEEPSEEK: render_deepseek(&b, msgs, n, bos); break;
    case MS_CHAT_QWEN3: render_qwen3(&b, msgs, n); break;
    case MS_CHAT_COUNT: break;
    }
    if (!b.rc && !b.p)
        put(&b, ""); /* never hand back NULL on success */
    if (b.rc) {
        free(b.p);
        if (b.rc == -E2BIG)
            ms_err_set(err, "the rendered conversation exceeds %zu bytes", (size_t)MS_CHAT_PROMPT_BYTES_MAX);
        else
            ms_err_set(err, "out of memory rendering the conversation");
        return b.rc;
    }
    *ret_prompt = b.p;
    return 0;
}

/* -------------------------------------------------------- Jinja sources */

/* Written for this project; each renders like the family's official
 * template for system/user/assistant turns (tool branches left out). */
static const char *const chat_jinja[MS_CHAT_COUNT] = {
    [MS_CHAT_CHATML] =
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>system\\n" QWEN25_DEFAULT_SYSTEM "<|im_end|>\\n' }}{%- endif %}\n"
        "{%- for message in messages %}{%- if not (loop.first and message['role'] == 'system') %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}\n"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    [MS_CHAT_MISTRAL] =
        "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
        "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}\n"
        "{{- bos_token }}\n"
        "{%- for message in loop_messages %}\n"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('after an optional system message, user and assistant must alternate') }}{%- endif %}\n"
        "{%- if message['role'] == 'user' %}{%- if loop.first and system_message is defined %}"
        "{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{%- else %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}\n"
        "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}\n"
        "{%- else %}{{- raise_exception('only user and assistant turns after an optional system message') }}"
        "{%- endif %}\n"
        "{%- endfor %}",
    [MS_CHAT_DEEPSEEK] =
        "{%- set ns = namespace(system='', first=true) %}\n"
        "{%- for message in messages %}{%- if message['role'] == 'system' %}"
        "{%- if ns.first %}{%- set ns.system = message['content'] %}{%- set ns.first = false %}"
        "{%- else %}{%- set ns.system = ns.system + '\\n\\n' + message['content'] %}{%- endif %}"
        "{%- endif %}{%- endfor %}\n"
        "{{- bos_token + ns.system }}\n"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}{{- '" DS_USER "' + message['content'] }}"
        "{%- elif message['role'] == 'assistant' %}{{- '" DS_ASSISTANT "' + message['content'] + '" DS_EOS "' }}"
        "{%- endif %}{%- endfor %}\n"
        "{%- if add_generation_prompt %}{{- '" DS_ASSISTANT "' }}{%- endif %}",
    [MS_CHAT_QWEN3] =
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}\n"
        "{%- set ns = namespace(last_query=messages|length - 1, searching=true) %}\n"
        "{%- for message in messages[::-1] %}{%- if ns.searching and message['role'] == 'user' and not "
        "(message['content'].startswith('<tool_response>') and message['content'].endswith('</tool_response>')) %}"
        "{%- set ns.searching = false %}{%- set ns.last_query = messages|length - 1 - loop.index0 %}"
        "{%- endif %}{%- endfor %}\n"
        "{%- for message in messages %}{%- set content = message['content'] %}\n"
        "{%- if message['role'] == 'user' or (message['role'] == 'system' and not loop.first) %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}\n"
        "{%- elif message['role'] == 'assistant' %}{%- set reasoning = '' %}\n"
        "{%- if '</think>' in content %}"
        "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
        "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}\n"
        "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}"
        "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
        "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
        "{{- '<|im_end|>\\n' }}\n"
        "{%- endif %}{%- endfor %}\n"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
        "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
        "{%- endif %}{%- endif %}",
};

const char *ms_chat_jinja(ms_chat_family_t f)
{
    return (unsigned)f < MS_CHAT_COUNT ? chat_jinja[f] : NULL;
}
