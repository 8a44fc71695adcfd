/* Tokenizer from a GGUF's tokenizer.ggml.* metadata, matching llama.cpp's
 * llama-vocab.cpp: byte-level BPE with per-model pre-tokenizer regexes
 * (PCRE2), SentencePiece merges with byte fallback, and a UTF-8 stream. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "limits.h" /* before gguf.h, which uses MS_GGUF_DIMS_MAX */
#include "tokenizer.h"
#include "tokenizer_impl.h"

#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ms_assert.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF arrays are read as host-order values");
_Static_assert((uint64_t)MS_VOCAB_MAX * MS_TOKEN_BYTES_MAX < UINT32_MAX, "token text offsets fit 32 bits");
_Static_assert((uint64_t)MS_PROMPT_TOKENS_MAX * 16 * 3 + 3 < UINT32_MAX, "escaped prompt offsets fit 32 bits");

#define TOK_KEY_MODEL "tokenizer.ggml.model"
#define TOK_KEY_PRE "tokenizer.ggml.pre"
#define TOK_KEY_TOKENS "tokenizer.ggml.tokens"
#define TOK_KEY_SCORES "tokenizer.ggml.scores"
#define TOK_KEY_TYPES "tokenizer.ggml.token_type"
#define TOK_KEY_MERGES "tokenizer.ggml.merges"

#define TOK_REGEX_MAX 8
#define TOK_TEXT_BYTES_MAX ((size_t)MS_PROMPT_TOKENS_MAX * 16)
#define TOK_SPACE_ESC "\xE2\x96\x81" /* U+2581, SentencePiece's visible space */
#define TOK_JIT_STACK_MIN (32u * 1024)
#define TOK_JIT_STACK_MAX (4u * 1024 * 1024)

/* ---- pre-tokenizers: the regex lists of llama-vocab.cpp ---------------- */

/* Letters llama.cpp's deepseek-llm list spells out (the cased letters of an
 * older Unicode); written as escapes so no editor can renormalise them. */
#define TOK_DS_LETTERS                                                                           \
    "A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-"       \
    "\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}"         \
    "\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}"        \
    "\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-"          \
    "\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}"       \
    "\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-"      \
    "\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-"        \
    "\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-"      \
    "\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}"      \
    "\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}"         \
    "\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-"      \
    "\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-"       \
    "\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"       \
    "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-"     \
    "\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}"  \
    "\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"       \
    "\\x{1E900}-\\x{1E943}"

#define TOK_RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define TOK_RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

static const char *const tok_re_default[] = {
    "[\\p{P}\\$\\+<=>\\^~\\|]+", TOK_RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]", NULL};
static const char *const tok_re_gpt2[] = {TOK_RE_GPT2, NULL};
static const char *const tok_re_llama3[] = {
    TOK_RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
static const char *const tok_re_qwen2[] = {
    TOK_RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                        "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
static const char *const tok_re_deepseek_llm[] = {
    "[\\r\\n]",
    "\\s?[" TOK_DS_LETTERS "]+",
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
    "\\s+$",
    "[\\x{4E00}-\\x{9FA5}\\x{0800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+",
    "\\p{N}+",
    NULL};
static const char *const tok_re_deepseek_v3[] = {
    "\\p{N}{1,3}",
    "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};

typedef struct {
    const char *name;
    const char *const *regex; /* applied in order, each splitting the previous pieces */
    bool ignore_merges;       /* a piece that is a whole token is taken as is */
    bool add_bos;             /* llama.cpp's default when add_bos_token is absent */
} tok_pre_t;

static const tok_pre_t tok_pres[] = {
    {"default", tok_re_default, false, false},
    {"llama-bpe", tok_re_llama3, true, true},
    {"llama3", tok_re_llama3, true, true},
    {"qwen2", tok_re_qwen2, false, false},
    {"deepseek-llm", tok_re_deepseek_llm, false, false},
    {"deepseek-v3", tok_re_deepseek_v3, false, false},
    {"olmo", tok_re_gpt2, false, false},
};
#define TOK_N_PRES (sizeof(tok_pres) / sizeof(tok_pres[0]))

/* Texts that end a turn when the token is a control token (llama.cpp's list, abridged). */
static const char *const tok_eog_texts[] = {
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", NULL};

/* ---- the tokenizer ------------------------------------------------------- */

typedef struct {
    uint64_t key;  /* left id << 32 | right id */
    int32_t rank;  /* -1: empty slot */
    int32_t id;    /* token of the merged text, -1 when the vocabulary lacks it */
} tok_merge_t;

struct ms_tokenizer {
    ms_tok_kind_t kind;
    const tok_pre_t *pre;      /* BPE only */
    int32_t n_vocab;
    char *text;                /* all token texts back to back */
    uint32_t *text_off;        /* [n_vocab + 1] */
    char *piece;               /* all printed pieces back to back */
    uint32_t *piece_off;       /* [n_vocab + 1] */
    float *score;              /* [n_vocab] */
    uint8_t *type;             /* [n_vocab] MS_TOK_TYPE_* */
    uint8_t *eog;              /* [n_vocab] 1 = ends generation */
    uint32_t *map;             /* text -> id + 1 (0 = empty), open addressing */
    uint64_t map_mask;
    tok_merge_t *merge;        /* (left, right) -> rank */
    uint64_t merge_mask;
    int32_t byte_tok[256];     /* the token one raw byte falls back to, -1 none */
    int32_t *special;          /* control/user-defined/unknown ids, longest text first */
    uint32_t n_special;
    int32_t bos, eos, eot, unk, pad;
    bool add_bos, add_eos, add_space_prefix;
    pcre2_code *re[TOK_REGEX_MAX];
    uint32_t n_re;
};

static const char *tok_text(const ms_tokenizer_t *t, int32_t id, size_t *len)
{
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

/* A token text for an error message: printable ASCII kept, the rest escaped, truncated. */
static const char *tok_show(char *buf, size_t cap, const char *p, size_t n)
{
    size_t o = 0, i = 0;
    MS_ASSERT(cap >= 16);
    for (; i < n && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7F && c != '\\')
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02X", c);
    }
    memcpy(buf + o, i < n ? "..." : "", i < n ? 4 : 1); /* o + 4 < cap here */
    return buf;
}

static uint64_t tok_hash(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static int32_t tok_find(const ms_tokenizer_t *t, const char *p, size_t n)
{
    for (uint64_t i = tok_hash(p, n) & t->map_mask;; i = (i + 1) & t->map_mask) {
        uint32_t v = t->map[i];
        if (v == 0)
            return -1;
        size_t len;
        const char *s = tok_text(t, (int32_t)(v - 1), &len);
        if (len == n && memcmp(s, p, n) == 0)
            return (int32_t)(v - 1);
    }
}

static uint64_t tok_merge_slot(uint64_t key, uint64_t mask)
{
    return ((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;
}

static const tok_merge_t *tok_merge_find(const ms_tokenizer_t *t, int32_t l, int32_t r)
{
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    for (uint64_t i = tok_merge_slot(key, t->merge_mask);; i = (i + 1) & t->merge_mask) {
        const tok_merge_t *m = &t->merge[i];
        if (m->rank < 0)
            return NULL;
        if (m->key == key)
            return m;
    }
}

/* ---- UTF-8 --------------------------------------------------------------- */

/* At s[0..n): > 0 the length of a complete well-formed character; 0 a
 * well-formed but incomplete prefix (all n bytes); -k an ill-formed sequence
 * whose maximal invalid subpart is k bytes (Unicode 3.9, table 3-7). */
static int utf8_check(const unsigned char *s, size_t n)
{
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 2;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 3;
    else
        return -1;
    if (c == 0xE0)
        lo = 0xA0; /* overlong */
    else if (c == 0xED)
        hi = 0x9F; /* surrogates */
    else if (c == 0xF0)
        lo = 0x90; /* overlong */
    else if (c == 0xF4)
        hi = 0x8F; /* beyond U+10FFFF */
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n)
            return 0;
        if (s[k] < lo || s[k] > hi)
            return -k;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

/* The length llama.cpp gives a character from its first byte alone. */
static size_t utf8_lead_len(unsigned char c)
{
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[c >> 4];
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the
 * other 68 take U+0100.. in byte order, so every byte is a visible character. */
static uint32_t gpt2_byte_cp(unsigned b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    if (b <= 0x20)
        return 0x100 + b;
    if (b <= 0xA0)
        return 0x100 + 33 + (b - 0x7F);
    return 0x100 + 33 + 34; /* 0xAD */
}

/* Inverse of gpt2_byte_cp; -1 for a code point outside the alphabet. */
static int gpt2_cp_byte(uint32_t cp)
{
    if (cp < 0x100)
        return gpt2_byte_cp(cp) == cp ? (int)cp : -1;
    if (cp < 0x100 + 33)
        return (int)(cp - 0x100);
    if (cp < 0x100 + 67)
        return (int)(cp - 0x100 - 33 + 0x7F);
    return cp == 0x100 + 67 ? 0xAD : -1;
}

/* ---- construction -------------------------------------------------------- */

static int tok_set_kind(ms_tokenizer_t *t, const ms_tok_spec_t *s, ms_err_t *err)
{
    char buf[96];
    if (!s->model.ptr) {
        ms_err_set(err, "%s is missing", TOK_KEY_MODEL);
        return -EINVAL;
    }
    if (ms_str_eq(s->model, "gpt2")) {
        t->kind = MS_TOK_BPE;
    } else if (ms_str_eq(s->model, "llama")) {
        t->kind = MS_TOK_SPM;
        return 0; /* llama.cpp ignores tokenizer.ggml.pre for SentencePiece */
    } else {
        ms_err_set(err, "%s '%s' is not supported (supported: gpt2, llama)", TOK_KEY_MODEL,
                   tok_show(buf, sizeof(buf), s->model.ptr, s->model.len));
        return -EINVAL;
    }
    if (!s->pre.ptr) {
        t->pre = &tok_pres[0];
        return 0;
    }
    for (size_t i = 0; i < TOK_N_PRES; i++)
        if (ms_str_eq(s->pre, tok_pres[i].name)) {
            t->pre = &tok_pres[i];
            return 0;
        }
    ms_err_set(err,
               "%s '%s' is not supported (supported: default, llama-bpe, llama3, qwen2, deepseek-llm, "
               "deepseek-v3, olmo)",
               TOK_KEY_PRE, tok_show(buf, sizeof(buf), s->pre.ptr, s->pre.len));
    return -EINVAL;
}

static int tok_check_arrays(const ms_tok_spec_t *s, ms_err_t *err)
{
    if (!s->tokens || s->n_vocab == 0) {
        ms_err_set(err, "%s is missing or empty", TOK_KEY_TOKENS);
        return -EINVAL;
    }
    if (s->n_vocab > MS_VOCAB_MAX) {
        ms_err_set(err, "%s has %llu tokens (limit %u)", TOK_KEY_TOKENS, (unsigned long long)s->n_vocab,
                   (unsigned)MS_VOCAB_MAX);
        return -EINVAL;
    }
    for (uint64_t i = 0; i < s->n_vocab; i++) {
        if (s->tokens[i].len > MS_TOKEN_BYTES_MAX) {
            ms_err_set(err, "%s[%llu] is %llu bytes long (limit %u)", TOK_KEY_TOKENS, (unsigned long long)i,
                       (unsigned long long)s->tokens[i].len, (unsigned)MS_TOKEN_BYTES_MAX);
            return -EINVAL;
        }
        if (s->types && (s->types[i] < 0 || s->types[i] >= MS_TOK_TYPE_COUNT)) {
            ms_err_set(err, "%s[%llu] = %d is not a token type (0..6)", TOK_KEY_TYPES, (unsigned long long)i,
                       (int)s->types[i]);
            return -EINVAL;
        }
    }
    return 0;
}

static uint64_t tok_pow2_at_least(uint64_t n)
{
    uint64_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

static int tok_map_insert(ms_tokenizer_t *t, int32_t id, ms_err_t *err)
{
    size_t n;
    const char *p = tok_text(t, id, &n);
    if (n == 0)
        return 0; /* an empty entry can never be looked up */
    int32_t dup = tok_find(t, p, n);
    if (dup >= 0) {
        char buf[96];
        ms_err_set(err, "%s: '%s' appears twice (ids %d and %d)", TOK_KEY_TOKENS, tok_show(buf, sizeof(buf), p, n),
                   (int)dup, (int)id);
        return -EINVAL;
    }
    uint64_t i = tok_hash(p, n) & t->map_mask;
    while (t->map[i] != 0)
        i = (i + 1) & t->map_mask;
    t->map[i] = (uint32_t)id + 1;
    return 0;
}

static int tok_copy_vocab(ms_tokenizer_t *t, const ms_tok_spec_t *s, ms_err_t *err)
{
    uint64_t n = s->n_vocab, bytes = 0;
    for (uint64_t i = 0; i < n; i++)
        bytes += s->tokens[i].len;
    t->n_vocab = (int32_t)n;
    t->text = malloc(bytes + 1);
    t->piece = malloc(bytes + 1);
    t->text_off = malloc((n + 1) * sizeof(*t->text_off));
    t->piece_off = malloc((n + 1) * sizeof(*t->piece_off));
    t->score = calloc(n, sizeof(*t->score));
    t->type = malloc(n);
    t->eog = calloc(n, 1);
    t->map_mask = tok_pow2_at_least(2 * n) - 1;
    t->map = calloc(t->map_mask + 1, sizeof(*t->map));
    if (!t->text || !t->piece || !t->text_off || !t->piece_off || !t->score || !t->type || !t->eog || !t->map)
        return -ENOMEM;
    uint32_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        t->text_off[i] = off;
        if (s->tokens[i].len)
            memcpy(t->text + off, s->tokens[i].ptr, s->tokens[i].len);
        off += (uint32_t)s->tokens[i].len;
        t->type[i] = s->types ? (uint8_t)s->types[i] : MS_TOK_TYPE_NORMAL;
        if (s->scores)
            t->score[i] = s->scores[i];
    }
    t->text_off[n] = off;
    for (uint64_t i = 0; i < n; i++) {
        int rc = tok_map_insert(t, (int32_t)i, err);
        if (rc)
            return rc;
    }
    return 0;
}

static int tok_set_id(const ms_tokenizer_t *t, int64_t given, int32_t dflt, const char *key, int32_t *ret,
                      ms_err_t *err)
{
    if (given < 0) {
        *ret = dflt < t->n_vocab ? dflt : -1;
        return 0;
    }
    if (given >= t->n_vocab) {
        ms_err_set(err, "tokenizer.ggml.%s = %lld is out of range (the vocabulary has %d tokens)", key,
                   (long long)given, (int)t->n_vocab);
        return -EINVAL;
    }
    *ret = (int32_t)given;
    return 0;
}

/* Ids and flags; absent ones default as llama.cpp does, except that a
 * byte-level BPE model gets no BOS/EOS by default (llama.cpp's id 11 is a
 * Falcon leftover that names an ordinary token in other vocabularies). */
static int tok_set_ids(ms_tokenizer_t *t, const ms_tok_spec_t *s, ms_err_t *err)
{
    bool spm = t->kind == MS_TOK_SPM;
    int rc = tok_set_id(t, s->bos_id, spm ? 1 : -1, "bos_token_id", &t->bos, err);
    if (!rc)
        rc = tok_set_id(t, s->eos_id, spm ? 2 : -1, "eos_token_id", &t->eos, err);
    if (!rc)
        rc = tok_set_id(t, s->eot_id, -1, "eot_token_id", &t->eot, err);
    if (!rc)
        rc = tok_set_id(t, s->unk_id, spm ? 0 : -1, "unknown_token_id", &t->unk, err);
    if (!rc)
        rc = tok_set_id(t, s->pad_id, -1, "padding_token_id", &t->pad, err);
    if (rc)
        return rc;
    t->add_bos = s->add_bos == MS_TOK_FLAG_ABSENT ? (spm || t->pre->add_bos) : s->add_bos != 0;
    t->add_eos = s->add_eos == MS_TOK_FLAG_ABSENT ? false : s->add_eos != 0;
    t->add_space_prefix = spm && (s->add_space_prefix == MS_TOK_FLAG_ABSENT || s->add_space_prefix != 0);
    if (t->add_bos && t->bos < 0) {
        ms_err_set(err, "tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is not set");
        return -EINVAL;
    }
    if (t->add_eos && t->eos < 0) {
        ms_err_set(err, "tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is not set");
        return -EINVAL;
    }
    return 0;
}

/* One "A B" merge: both halves must be tokens (split at the first space
 * after the first byte, as llama.cpp does). */
static int tok_add_merge(ms_tokenizer_t *t, uint64_t rank, ms_str_t m, ms_err_t *err)
{
    char buf[96], cat[2 * MS_TOKEN_BYTES_MAX];
    const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', m.len - 1) : NULL;
    if (!sp || m.len - 1 > sizeof(cat)) {
        ms_err_set(err, "%s[%llu] '%s' is not two tokens separated by a space", TOK_KEY_MERGES,
                   (unsigned long long)rank, tok_show(buf, sizeof(buf), m.ptr, m.len));
        return -EINVAL;
    }
    size_t nl = (size_t)(sp - m.ptr), nr = m.len - nl - 1;
    int32_t l = tok_find(t, m.ptr, nl), r = tok_find(t, sp + 1, nr);
    if (l < 0 || r < 0) {
        char side[64];
        ms_err_set(err, "%s[%llu] '%s': its %s '%s' is not in %s", TOK_KEY_MERGES, (unsigned long long)rank,
                   tok_show(buf, sizeof(buf), m.ptr, m.len), l < 0 ? "left side" : "right side",
                   l < 0 ? tok_show(side, sizeof(side), m.ptr, nl) : tok_show(side, sizeof(side), sp + 1, nr),
                   TOK_KEY_TOKENS);
        return -EINVAL;
    }
    memcpy(cat, m.ptr, nl);
    memcpy(cat + nl, sp + 1, nr);
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    uint64_t i = tok_merge_slot(key, t->merge_mask);
    for (; t->merge[i].rank >= 0; i = (i + 1) & t->merge_mask)
        if (t->merge[i].key == key)
            return 0; /* a repeated pair keeps its first (lowest) rank */
    t->merge[i] = (tok_merge_t){key, (int32_t)rank, tok_find(t, cat, nl + nr)};
    return 0;
}

static int tok_load_merges(ms_tokenizer_t *t, const ms_tok_spec_t *s, ms_err_t *err)
{
    uint64_t n = t->kind == MS_TOK_BPE ? s->n_merges : 0;
    if (t->kind == MS_TOK_BPE && !s->merges) {
        ms_err_set(err, "%s is missing (a gpt2 tokenizer needs it)", TOK_KEY_MERGES);
        return -EINVAL;
    }
    if (n > MS_GGUF_ARRAY_MAX) {
        ms_err_set(err, "%s has %llu entries (limit %u)", TOK_KEY_MERGES, (unsigned long long)n,
                   (unsigned)MS_GGUF_ARRAY_MAX);
        return -EINVAL;
    }
    t->merge_mask = tok_pow2_at_least(2 * n) - 1;
    t->merge = malloc((t->merge_mask + 1) * sizeof(*t->merge));
    if (!t->merge)
        return -ENOMEM;
    for (uint64_t i = 0; i <= t->merge_mask; i++)
        t->merge[i].rank = -1;
    for (uint64_t i = 0; i < n; i++) {
        int rc = tok_add_merge(t, i, s->merges[i], err);
        if (rc)
            return rc;
    }
    return 0;
}

/* BPE: the token of the byte's alphabet character. SPM: <0xNN>, else the
 * byte itself as a token, else <unk>, as llama.cpp's byte_to_token. */
static void tok_build_byte_tokens(ms_tokenizer_t *t)
{
    for (unsigned b = 0; b < 256; b++) {
        char s[8];
        if (t->kind == MS_TOK_BPE) {
            t->byte_tok[b] = tok_find(t, s, utf8_put(gpt2_byte_cp(b), s));
            continue;
        }
        snprintf(s, sizeof(s), "<0x%02X>", b);
        int32_t id = tok_find(t, s, 6);
        if (id < 0) {
            s[0] = (char)b;
            id = tok_find(t, s, 1);
        }
        t->byte_tok[b] = id >= 0 ? id : t->unk;
    }
}


typedef struct {
    uint32_t len;
    int32_t id;
} tok_len_id_t;

static int tok_len_id_cmp(const void *a, const void *b)
{
    const tok_len_id_t *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static bool tok_is_special_type(uint8_t type)
{
    return type == MS_TOK_TYPE_CONTROL || type == MS_TOK_TYPE_USER_DEFINED || type == MS_TOK_TYPE_UNKNOWN;
}

/* Longest text first, the order llama.cpp's tokenizer_st_partition carves them out in. */
static int tok_build_specials(ms_tokenizer_t *t)
{
    uint32_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        n += tok_is_special_type(t->type[id]) && t->text_off[id + 1] > t->text_off[id];
    tok_len_id_t *v = malloc((n ? n : 1) * sizeof(*v));
    t->special = malloc((n ? n : 1) * sizeof(*t->special));
    if (!v || !t->special) {
        free(v);
        return -ENOMEM;
    }
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint32_t len = t->text_off[id + 1] - t->text_off[id];
        if (tok_is_special_type(t->type[id]) && len > 0)
            v[n++] = (tok_len_id_t){len, id};
    }
    qsort(v, n, sizeof(*v), tok_len_id_cmp);
    for (uint32_t i = 0; i < n; i++)
        t->special[i] = v[i].id;
    t->n_special = n;
    free(v);
    return 0;
}

static void tok_build_eog(ms_tokenizer_t *t)
{
    if (t->eos >= 0)
        t->eog[t->eos] = 1;
    if (t->eot >= 0)
        t->eog[t->eot] = 1;
    for (size_t i = 0; tok_eog_texts[i]; i++) {
        int32_t id = tok_find(t, tok_eog_texts[i], strlen(tok_eog_texts[i]));
        if (id >= 0 && t->type[id] == MS_TOK_TYPE_CONTROL)
            t->eog[id] = 1;
    }
}

/* A BPE token's text mapped back through the byte alphabet; a character
 * outside the alphabet (or a stray invalid byte) is kept as written. */
static size_t tok_piece_bpe(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)s + i;
        int k = utf8_check(u, n - i);
        int b = -1;
        if (k == 1)
            b = gpt2_cp_byte(u[0]);
        else if (k == 2)
            b = gpt2_cp_byte(((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F));
        size_t step = k > 0 ? (size_t)k : 1;
        if (b >= 0) {
            out[o++] = (char)b;
        } else {
            memcpy(out + o, s + i, step);
            o += step;
        }
        i += step;
    }
    return o;
}

/* "<0xNN>" -> NN; -1 when the text has another form. */
static int tok_hex_byte(const char *s, size_t n)
{
    unsigned v;
    char tail;
    char buf[8];
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    memcpy(buf, s, 6);
    buf[6] = '\0';
    if (sscanf(buf + 3, "%2x%c", &v, &tail) != 2 || tail != '>')
        return -1;
    return (int)v;
}

static size_t tok_piece_spm(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        if (n - i >= 3 && memcmp(s + i, TOK_SPACE_ESC, 3) == 0) {
            out[o++] = ' ';
            i += 3;
        } else {
            out[o++] = s[i++];
        }
    }
    return o;
}

/* What llama.cpp's token_to_piece prints with special = false. Never longer
 * than the token text, so the piece buffer is the size of the text buffer. */
static size_t tok_piece_of(const ms_tokenizer_t *t, int32_t id, char *out)
{
    size_t n;
    const char *s = tok_text(t, id, &n);
    int byte;
    switch (t->type[id]) {
    case MS_TOK_TYPE_USER_DEFINED:
        memcpy(out, s, n);
        return n;
    case MS_TOK_TYPE_NORMAL:
        return t->kind == MS_TOK_BPE ? tok_piece_bpe(s, n, out) : tok_piece_spm(s, n, out);
    case MS_TOK_TYPE_BYTE:
        byte = tok_hex_byte(s, n);
        if (byte >= 0) {
            out[0] = (char)byte;
            return 1;
        }
        return t->kind == MS_TOK_BPE ? tok_piece_bpe(s, n, out) : tok_piece_spm(s, n, out);
    default: /* control, unknown, unused, undefined print nothing */
        return 0;
    }
}

static void tok_build_pieces(ms_tokenizer_t *t)
{
    uint32_t off = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->piece_off[id] = off;
        off += (uint32_t)tok_piece_of(t, id, t->piece + off);
    }
    t->piece_off[t->n_vocab] = off;
}

static int tok_compile_regex(ms_tokenizer_t *t, ms_err_t *err)
{
    for (const char *const *re = t->pre->regex; *re; re++) {
        int code;
        PCRE2_SIZE at;
        MS_ASSERT(t->n_re < TOK_REGEX_MAX);
        pcre2_code *c = pcre2_compile((PCRE2_SPTR)*re, PCRE2_ZERO_TERMINATED,
                                      PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &code, &at, NULL);
        if (!c) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(code, msg, sizeof(msg));
            ms_err_set(err, "%s '%s': regex %u does not compile at offset %zu: %s", TOK_KEY_PRE, t->pre->name,
                       t->n_re, (size_t)at, (const char *)msg);
            return code == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -EINVAL;
        }
        pcre2_jit_compile(c, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
        t->re[t->n_re++] = c;
    }
    return 0;
}

static int tok_build(ms_tokenizer_t *t, const ms_tok_spec_t *s, ms_err_t *err)
{
    int rc = tok_set_kind(t, s, err);
    if (!rc)
        rc = tok_check_arrays(s, err);
    if (!rc)
        rc = tok_copy_vocab(t, s, err);
    if (!rc)
        rc = tok_set_ids(t, s, err);
    if (!rc)
        rc = tok_load_merges(t, s, err);
    if (!rc)
        rc = tok_build_specials(t);
    if (!rc && t->kind == MS_TOK_BPE)
        rc = tok_compile_regex(t, err);
    if (rc == -ENOMEM)
        ms_err_set(err, "out of memory building the tokenizer");
    if (rc)
        return rc;
    tok_build_byte_tokens(t);
    tok_build_eog(t);
    tok_build_pieces(t);
    return 0;
}

int ms_tokenizer_new_from_spec(const ms_tok_spec_t *spec, ms_tokenizer_t **ret_tok, ms_err_t *err)
{
    if (!spec || !ret_tok) {
        ms_err_set(err, "tokenizer: no spec or no result pointer");
        return -EINVAL;
    }
    ms_tokenizer_t *t = calloc(1, sizeof(*t));
    if (!t) {
        ms_err_set(err, "out of memory building the tokenizer");
        return -ENOMEM;
    }
    t->bos = t->eos = t->eot = t->unk = t->pad = -1;
    int rc = tok_build(t, spec, err);
    if (rc) {
        ms_tokenizer_destroy(&t);
        return rc;
    }
    *ret_tok = t;
    return 0;
}

void ms_tokenizer_destroy(ms_tokenizer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_tokenizer_t *t = *self_p;
    for (uint32_t i = 0; i < t->n_re; i++)
        pcre2_code_free(t->re[i]);
    free(t->text);
    free(t->text_off);
    free(t->piece);
    free(t->piece_off);
    free(t->score);
    free(t->type);
    free(t->eog);
    free(t->map);
    free(t->merge);
    free(t->special);
    free(t);
    *self_p = NULL;
}

ms_tok_kind_t ms_tokenizer_kind(const ms_tokenizer_t *t)
{
    return t->kind;
}

int32_t ms_tokenizer_n_vocab(const ms_tokenizer_t *t)
{
    return t->n_vocab;
}

int32_t ms_tokenizer_bos(const ms_tokenizer_t *t)
{
    return t->bos;
}

int32_t ms_tokenizer_eos(const ms_tokenizer_t *t)
{
    return t->eos;
}

bool ms_tokenizer_add_bos(const ms_tokenizer_t *t)
{
    return t->add_bos;
}

bool ms_tokenizer_is_eog(const ms_tokenizer_t *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

bool ms_tokenizer_is_control(const ms_tokenizer_t *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->type[id] == MS_TOK_TYPE_CONTROL;
}

const char *ms_tokenizer_piece(const ms_tokenizer_t *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = t->piece_off[id + 1] - t->piece_off[id];
    return t->piece + t->piece_off[id];
}

const char *ms_tokenizer_token_text(const ms_tokenizer_t *t, int32_t id, size_t *len)
{
    size_t n = 0;
    const char *s = NULL;
    if (id >= 0 && id < t->n_vocab)
        s = tok_text(t, id, &n);
    if (len)
        *len = n;
    return s;
}

/* ---- one encode call: scratch that grows with the input, never per piece -- */

typedef struct {
    int32_t prev, next; /* neighbours in the symbol chain, -1 at the ends */
    uint32_t start, n;  /* bytes of the unit being merged; n == 0 once merged away */
    int32_t id;         /* token for these bytes, -1 when none is known */
} tok_sym_t;

typedef struct {
    double key;         /* larger pops first: SPM score, or -rank for BPE */
    int32_t left, right;
    uint32_t size;      /* left.n + right.n when pushed; a change makes it stale */
    int32_t id;         /* the merged token */
} tok_bigram_t;

typedef struct {
    uint32_t off, len;
    int32_t id; /* >= 0: a special token; -1: text */
} tok_frag_t;

typedef struct {
    const ms_tokenizer_t *t;
    int32_t *out;
    size_t cap, n;
    tok_sym_t *sym;
    size_t sym_cap;
    tok_bigram_t *heap;
    size_t heap_n, heap_cap;
    char *buf;
    size_t buf_cap;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
} tok_run_t;

static int tok_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    if (c > SIZE_MAX / elem)
        return -ENOMEM;
    void *q = realloc(*p, c * elem);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static int tok_run_init(tok_run_t *r, const ms_tokenizer_t *t, int32_t *out, size_t cap)
{
    *r = (tok_run_t){.t = t, .out = out, .cap = cap};
    if (t->kind != MS_TOK_BPE)
        return 0;
    r->md = pcre2_match_data_create(1, NULL);
    r->mctx = pcre2_match_context_create(NULL);
    if (!r->md || !r->mctx)
        return -ENOMEM;
    /* The default 32 KiB JIT stack can run out on long runs of one class. */
    r->jit = pcre2_jit_stack_create(TOK_JIT_STACK_MIN, TOK_JIT_STACK_MAX, NULL);
    if (r->jit)
        pcre2_jit_stack_assign(r->mctx, NULL, r->jit);
    return 0;
}

static void tok_run_free(tok_run_t *r)
{
    free(r->sym);
    free(r->heap);
    free(r->buf);
    pcre2_match_data_free(r->md);
    pcre2_match_context_free(r->mctx);
    pcre2_jit_stack_free(r->jit);
}

static void tok_emit(tok_run_t *r, int32_t id)
{
    if (r->n < r->cap)
        r->out[r->n] = id;
    r->n++;
}

static bool tok_bigram_before(const tok_bigram_t *a, const tok_bigram_t *b)
{
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

static int tok_heap_push(tok_run_t *r, tok_bigram_t b)
{
    if (tok_grow((void **)&r->heap, &r->heap_cap, r->heap_n + 1, sizeof(*r->heap)))
        return -ENOMEM;
    size_t i = r->heap_n++;
    while (i > 0 && tok_bigram_before(&b, &r->heap[(i - 1) / 2])) {
        r->heap[i] = r->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    r->heap[i] = b;
    return 0;
}

static tok_bigram_t tok_heap_pop(tok_run_t *r)
{
    tok_bigram_t top = r->heap[0], last = r->heap[--r->heap_n];
    size_t i = 0, n = r->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && tok_bigram_before(&r->heap[c + 1], &r->heap[c]))
            c++;
        if (!tok_bigram_before(&r->heap[c], &last))
            break;
        r->heap[i] = r->heap[c];
        i = c;
    }
    if (n > 0)
        r->heap[i] = last;
    return top;
}

/* Lays out n one-unit symbols over the given unit lengths (SPM: characters;
 * BPE: bytes) and clears the queue. */
static int tok_syms_init(tok_run_t *r, const char *p, size_t n, bool by_char)
{
    if (tok_grow((void **)&r->sym, &r->sym_cap, n, sizeof(*r->sym)))
        return -ENOMEM;
    size_t k = 0;
    for (size_t off = 0; off < n; k++) {
        size_t len = by_char ? utf8_lead_len((unsigned char)p[off]) : 1;
        if (len > n - off)
            len = n - off;
        r->sym[k] = (tok_sym_t){(int32_t)k - 1, -1, (uint32_t)off, (uint32_t)len, -1};
        off += len;
        if (k > 0)
            r->sym[k - 1].next = (int32_t)k;
    }
    r->heap_n = 0;
    return (int)k; /* n <= 3 * TOK_TEXT_BYTES_MAX + 3 fits an int */
}

/* Applies queued merges best first until none is left (llama.cpp's loop). */
static int tok_merge_loop(tok_run_t *r, int (*add)(tok_run_t *, int32_t, int32_t))
{
    while (r->heap_n > 0) {
        tok_bigram_t b = tok_heap_pop(r);
        tok_sym_t *l = &r->sym[b.left], *rt = &r->sym[b.right];
        if (l->n == 0 || rt->n == 0 || l->n + rt->n != b.size)
            continue; /* one side changed since this pair was queued */
        l->n += rt->n;
        l->id = b.id;
        rt->n = 0;
        l->next = rt->next;
        if (rt->next >= 0)
            r->sym[rt->next].prev = b.left;
        int rc = add(r, l->prev, b.left);
        if (!rc)
            rc = add(r, b.left, l->next);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- byte-level BPE -------------------------------------------------------- */

static int bpe_add(tok_run_t *r, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return 0;
    const tok_sym_t *l = &r->sym[left], *rt = &r->sym[right];
    if (l->id < 0 || rt->id < 0)
        return 0; /* merges only name tokens, so an unknown symbol never merges */
    const tok_merge_t *m = tok_merge_find(r->t, l->id, rt->id);
    if (!m)
        return 0;
    return tok_heap_push(r, (tok_bigram_t){-(double)m->rank, left, right, l->n + rt->n, m->id});
}

/* The whole piece as one token, for pre-types that skip merges when they can. */
static int32_t bpe_whole(tok_run_t *r, const char *p, size_t n)
{
    if (n > MS_TOKEN_BYTES_MAX)
        return -1;
    if (tok_grow((void **)&r->buf, &r->buf_cap, 2 * n, 1))
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += utf8_put(gpt2_byte_cp((unsigned char)p[i]), r->buf + o);
    return tok_find(r->t, r->buf, o);
}

static int bpe_piece(void *ctx, const char *p, size_t n)
{
    tok_run_t *r = ctx;
    const ms_tokenizer_t *t = r->t;
    if (t->pre->ignore_merges) {
        int32_t id = bpe_whole(r, p, n);
        if (id >= 0) {
            tok_emit(r, id);
            return 0;
        }
    }
    int k = tok_syms_init(r, p, n, false);
    if (k < 0)
        return k;
    for (int i = 0; i < k; i++)
        r->sym[i].id = t->byte_tok[(unsigned char)p[i]];
    for (int i = 1; i < k; i++)
        if (bpe_add(r, i - 1, i))
            return -ENOMEM;
    int rc = tok_merge_loop(r, bpe_add);
    if (rc)
        return rc;
    for (int32_t i = 0; i >= 0; i = r->sym[i].next) {
        const tok_sym_t *s = &r->sym[i];
        if (s->id >= 0) {
            tok_emit(r, s->id);
            continue;
        }
        for (uint32_t j = 0; j < s->n; j++) /* a merge whose result is not a token */
            if (t->byte_tok[(unsigned char)p[s->start + j]] >= 0)
                tok_emit(r, t->byte_tok[(unsigned char)p[s->start + j]]);
    }
    return 0;
}

/* One regex of the list over one piece: the matches and the text between
 * them both go on to the next regex (llama.cpp's unicode_regex_split). The
 * subject is the piece alone, so lookaheads and $ stop at its end. */
static int tok_split_level(tok_run_t *r, uint32_t level, const char *p, size_t n, ms_tok_piece_fn fn,
                           void *ctx)
{
    if (level == r->t->n_re)
        return fn(ctx, p, n);
    size_t pos = 0, prev = 0;
    while (pos < n) {
        int rc = pcre2_match(r->t->re[level], (PCRE2_SPTR)p, n, pos, PCRE2_NO_UTF_CHECK, r->md, r->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return rc == PCRE2_ERROR_NOMEMORY ? -ENOMEM : -EINVAL;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: none of the lists has one, but step past it */
            int k = ms < n ? utf8_check((const unsigned char *)p + ms, n - ms) : 1;
            pos = ms + (k > 0 ? (size_t)k : 1);
            continue;
        }
        if (ms > prev && (rc = tok_split_level(r, level + 1, p + prev, ms - prev, fn, ctx)))
            return rc;
        if ((rc = tok_split_level(r, level + 1, p + ms, me - ms, fn, ctx)))
            return rc;
        prev = pos = me;
    }
    return prev < n ? tok_split_level(r, level + 1, p + prev, n - prev, fn, ctx) : 0;
}

/* PCRE2 in UTF mode refuses invalid UTF-8, so the text is cut at every byte
 * that is not part of a well-formed character: each such byte is a piece of
 * its own (it still maps to its byte token, so nothing is lost), and the
 * well-formed runs between go through the regexes with the UTF check off.
 * llama.cpp instead turns such bytes into U+FFFD, which would not round-trip. */
static int tok_pre_split_run(tok_run_t *r, const char *text, size_t len, ms_tok_piece_fn fn, void *ctx)
{
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        int k;
        while (j < len && (k = utf8_check((const unsigned char *)text + j, len - j)) > 0)
            j += (size_t)k;
        int rc = j > i ? tok_split_level(r, 0, text + i, j - i, fn, ctx) : 0;
        if (!rc && j < len)
            rc = fn(ctx, text + j++, 1);
        if (rc)
            return rc;
        i = j;
    }
    return 0;
}

int ms_tokenizer_pre_split(const ms_tokenizer_t *t, const char *text, size_t len, ms_tok_piece_fn fn, void *ctx)
{
    if (!t || !fn || (!text && len) || t->kind != MS_TOK_BPE || len > TOK_TEXT_BYTES_MAX)
        return -EINVAL;
    tok_run_t r;
    int rc = tok_run_init(&r, t, NULL, 0);
    if (!rc)
        rc = tok_pre_split_run(&r, text, len, fn, ctx);
    tok_run_free(&r);
    return rc;
}

/* ---- SentencePiece ----------------------------------------------------------- */

static int spm_add(tok_run_t *r, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return 0;
    const tok_sym_t *l = &r->sym[left], *rt = &r->sym[right];
    int32_t id = tok_find(r->t, r->buf + l->start, l->n + rt->n);
    if (id < 0)
        return 0;
    return tok_heap_push(r, (tok_bigram_t){r->t->score[id], left, right, l->n + rt->n, id});
}

/* Spaces become U+2581, with one in front when asked (llama.cpp's escape). */
static int spm_escape(tok_run_t *r, const char *p, size_t n, bool prefix)
{
    if (tok_grow((void **)&r->buf, &r->buf_cap, 3 * n + 3, 1))
        return -ENOMEM;
    size_t o = 0;
    if (prefix) {
        memcpy(r->buf, TOK_SPACE_ESC, 3);
        o = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ') {
            memcpy(r->buf + o, TOK_SPACE_ESC, 3);
            o += 3;
        } else {
            r->buf[o++] = p[i];
        }
    }
    return (int)o;
}

static void spm_emit_symbol(tok_run_t *r, const tok_sym_t *s)
{
    const ms_tokenizer_t *t = r->t;
    int32_t id = s->id >= 0 ? s->id : tok_find(t, r->buf + s->start, s->n);
    if (id >= 0) {
        tok_emit(r, id);
        return;
    }
    for (uint32_t j = 0; j < s->n; j++) /* byte fallback: <0xNN> per byte */
        if (t->byte_tok[(unsigned char)r->buf[s->start + j]] >= 0)
            tok_emit(r, t->byte_tok[(unsigned char)r->buf[s->start + j]]);
}

static int spm_fragment(tok_run_t *r, const char *p, size_t n, bool prefix)
{
    int m = spm_escape(r, p, n, prefix);
    if (m <= 0)
        return m;
    int k = tok_syms_init(r, r->buf, (size_t)m, true);
    if (k < 0)
        return k;
    for (int i = 1; i < k; i++)
        if (spm_add(r, i - 1, i))
            return -ENOMEM;
    int rc = tok_merge_loop(r, spm_add);
    if (rc)
        return rc;
    for (int32_t i = 0; i >= 0; i = r->sym[i].next)
        spm_emit_symbol(r, &r->sym[i]);
    return 0;
}

/* ---- special tokens and the encode entry point ------------------------------- */

typedef struct {
    tok_frag_t *v;
    size_t n, cap;
} tok_frags_t;

static int tok_frag_push(tok_frags_t *f, uint32_t off, uint32_t len, int32_t id)
{
    if (tok_grow((void **)&f->v, &f->cap, f->n + 1, sizeof(*f->v)))
        return -ENOMEM;
    f->v[f->n++] = (tok_frag_t){off, len, id};
    return 0;
}

/* Splits every text fragment of src at each occurrence of one special token into dst. */
static int tok_carve(const char *text, const tok_frags_t *src, tok_frags_t *dst, int32_t id, const char *s,
                     size_t sn)
{
    dst->n = 0;
    for (size_t i = 0; i < src->n; i++) {
        tok_frag_t f = src->v[i];
        uint32_t at = f.off, end = f.off + f.len;
        const char *hit;
        while (f.id < 0 && at < end && (hit = memmem(text + at, end - at, s, sn))) {
            uint32_t h = (uint32_t)(hit - text);
            if ((h > at && tok_frag_push(dst, at, h - at, -1)) || tok_frag_push(dst, h, (uint32_t)sn, id))
                return -ENOMEM;
            at = h + (uint32_t)sn;
        }
        if (f.id >= 0 ? tok_frag_push(dst, f.off, f.len, f.id) : (at < end && tok_frag_push(dst, at, end - at, -1)))
            return -ENOMEM;
    }
    return 0;
}

/* llama.cpp's tokenizer_st_partition: user-defined tokens are always taken
 * out of the text, control and unknown ones only with parse_special. */
static int tok_partition(const ms_tokenizer_t *t, const char *text, size_t len, bool parse_special,
                         tok_frags_t *a, tok_frags_t *b)
{
    if (len > 0 && tok_frag_push(a, 0, (uint32_t)len, -1))
        return -ENOMEM;
    for (uint32_t i = 0; i < t->n_special; i++) {
        int32_t id = t->special[i];
        if (!parse_special && t->type[id] != MS_TOK_TYPE_USER_DEFINED)
            continue;
        size_t sn;
        const char *s = tok_text(t, id, &sn);
        if (sn > len)
            continue;
        if (tok_carve(text, a, b, id, s, sn))
            return -ENOMEM;
        tok_frags_t tmp = *a;
        *a = *b;
        *b = tmp;
    }
    return 0;
}

static int tok_encode_frags(tok_run_t *r, const char *text, const tok_frags_t *f)
{
    bool prev_special = true; /* SPM puts a space before the first text and after each special */
    for (size_t i = 0; i < f->n; i++) {
        const tok_frag_t *g = &f->v[i];
        int rc = 0;
        if (g->id >= 0) {
            tok_emit(r, g->id);
            prev_special = true;
            continue;
        }
        if (r->t->kind == MS_TOK_BPE)
            rc = tok_pre_split_run(r, text + g->off, g->len, bpe_piece, r);
        else
            rc = spm_fragment(r, text + g->off, g->len, r->t->add_space_prefix && prev_special);
        if (rc)
            return rc;
        prev_special = false;
    }
    return 0;
}

int ms_tokenizer_encode(const ms_tokenizer_t *t, const char *text, size_t len, bool add_bos, bool parse_special,
                        int32_t *out, size_t cap, size_t *ret_n)
{
    if (!t || !ret_n || (!text && len) || (!out && cap) || len > TOK_TEXT_BYTES_MAX)
        return -EINVAL;
    tok_run_t r;
    tok_frags_t a = {0}, b = {0};
    int rc = tok_run_init(&r, t, out, cap);
    if (!rc && add_bos && t->add_bos && t->bos >= 0)
        tok_emit(&r, t->bos);
    if (!rc)
        rc = tok_partition(t, text, len, parse_special, &a, &b);
    if (!rc)
        rc = tok_encode_frags(&r, text, &a);
    if (!rc && add_bos && t->add_eos && t->eos >= 0) /* EOS goes with BOS: both are "add special" */
        tok_emit(&r, t->eos);
    free(a.v);
    free(b.v);
    tok_run_free(&r);
    if (rc)
        return rc;
    *ret_n = r.n;
    return r.n > cap ? -ENOSPC : 0;
}

/* ---- UTF-8 stream ------------------------------------------------------------ */

void ms_utf8_stream_init(ms_utf8_stream_t *s)
{
    memset(s, 0, sizeof(*s));
}

static size_t utf8_put_fffd(char *out)
{
    return utf8_put(0xFFFD, out);
}

/* Consumes one byte; returns the bytes written to out (at most 4 + 3: a
 * U+FFFD for a broken prefix, then the byte itself as U+FFFD). */
static size_t utf8_stream_byte(ms_utf8_stream_t *s, unsigned char c, char *out)
{
    size_t o = 0;
    s->pending[s->n_pending++] = c;
    for (;;) {
        int k = utf8_check(s->pending, (size_t)s->n_pending);
        if (k == 0)
            return o; /* incomplete: wait for more */
        if (k > 0) {
            memcpy(out + o, s->pending, (size_t)k);
            s->n_pending = 0;
            return o + (size_t)k;
        }
        /* -k bytes can never start a character: one U+FFFD, then retry the rest */
        o += utf8_put_fffd(out + o);
        memmove(s->pending, s->pending - k, (size_t)(s->n_pending + k));
        s->n_pending += k;
        if (s->n_pending == 0)
            return o;
    }
}

size_t ms_utf8_stream_push(ms_utf8_stream_t *s, const char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += utf8_stream_byte(s, (unsigned char)in[i], out + o);
    return o;
}

size_t ms_utf8_stream_finish(ms_utf8_stream_t *s, char *out)
{
    size_t o = 0;
    if (s->n_pending > 0)
        o = utf8_put_fffd(out); /* the incomplete tail is one maximal subpart */
    s->n_pending = 0;
    return o;
}

/* ---- reading the spec from a GGUF --------------------------------------------- */

static int gguf_str_opt(const ms_gguf_t *g, const char *key, ms_str_t *ret, ms_err_t *err)
{
    int rc = ms_gguf_get_str(g, key, ret);
    if (rc == -ENOENT)
        return 0;
    if (rc)
        ms_err_set(err, "%s is not a string", key);
    return rc;
}

static int gguf_id_opt(const ms_gguf_t *g, const char *key, int64_t *ret, ms_err_t *err)
{
    uint32_t v;
    int rc = ms_gguf_get_u32(g, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc) {
        ms_err_set(err, "%s is not an unsigned 32-bit integer", key);
        return rc;
    }
    *ret = v;
    return 0;
}

static int gguf_flag_opt(const ms_gguf_t *g, const char *key, int *ret, ms_err_t *err)
{
    bool v;
    int rc = ms_gguf_get_bool(g, key, &v);
    if (rc == -ENOENT)
        return 0;
    if (rc) {
        ms_err_set(err, "%s is not a bool", key);
        return rc;
    }
    *ret = v;
    return 0;
}

/* An optional array; when present it must have the vocabulary's length. */
static int gguf_arr_opt(const ms_gguf_t *g, const char *key, ms_gguf_vtype_t a, ms_gguf_vtype_t b,
                        uint64_t n_vocab, const ms_gguf_kv_t **ret, ms_err_t *err)
{
    const ms_gguf_kv_t *kv = ms_gguf_find_kv(g, key);
    *ret = NULL;
    if (!kv)
        return 0;
    if (kv->type != MS_GGUF_ARRAY || (kv->arr_type != a && kv->arr_type != b)) {
        ms_err_set(err, "%s is not an array of %s", key, ms_gguf_vtype_name(a));
        return -EINVAL;
    }
    if (n_vocab && kv->arr_n != n_vocab) {
        ms_err_set(err, "%s has %llu entries for %llu tokens", key, (unsigned long long)kv->arr_n,
                   (unsigned long long)n_vocab);
        return -EINVAL;
    }
    *ret = kv;
    return 0;
}

static int gguf_read_arrays(const ms_gguf_t *g, ms_tok_spec_t *s, float **scores, int32_t **types, ms_err_t *err)
{
    const ms_gguf_kv_t *kv;
    int rc = gguf_arr_opt(g, TOK_KEY_TOKENS, MS_GGUF_STRING, MS_GGUF_STRING, 0, &kv, err);
    if (rc)
        return rc;
    if (!kv)
        return 0; /* tok_check_arrays names the problem */
    s->tokens = kv->arr_strs;
    s->n_vocab = kv->arr_n;
    if (kv->arr_n == 0 || kv->arr_n > MS_VOCAB_MAX)
        return 0;
    if ((rc = gguf_arr_opt(g, TOK_KEY_SCORES, MS_GGUF_FLOAT32, MS_GGUF_INT32, s->n_vocab, &kv, err)))
        return rc;
    if (kv) {
        if (!(*scores = malloc(s->n_vocab * sizeof(float))))
            return -ENOMEM;
        for (uint64_t i = 0; i < s->n_vocab; i++) { /* GGUF arrays are unaligned */
            int32_t iv;
            memcpy(kv->arr_type == MS_GGUF_FLOAT32 ? (void *)&(*scores)[i] : (void *)&iv,
                   (const char *)kv->arr_data + 4 * i, 4);
            if (kv->arr_type == MS_GGUF_INT32)
                (*scores)[i] = (float)iv;
        }
        s->scores = *scores;
    }
    if ((rc = gguf_arr_opt(g, TOK_KEY_TYPES, MS_GGUF_INT32, MS_GGUF_INT32, s->n_vocab, &kv, err)))
        return rc;
    if (kv) {
        if (!(*types = malloc(s->n_vocab * sizeof(int32_t))))
            return -ENOMEM;
        memcpy(*types, kv->arr_data, s->n_vocab * sizeof(int32_t));
        s->types = *types;
    }
    if ((rc = gguf_arr_opt(g, TOK_KEY_MERGES, MS_GGUF_STRING, MS_GGUF_STRING, 0, &kv, err)))
        return rc;
    if (kv) {
        s->merges = kv->arr_strs;
        s->n_merges = kv->arr_n;
    }
    return 0;
}

static int gguf_read_scalars(const ms_gguf_t *g, ms_tok_spec_t *s, ms_err_t *err)
{
    int rc = gguf_str_opt(g, TOK_KEY_MODEL, &s->model, err);
    if (!rc)
        rc = gguf_str_opt(g, TOK_KEY_PRE, &s->pre, err);
    if (!rc)
        rc = gguf_id_opt(g, "tokenizer.ggml.bos_token_id", &s->bos_id, err);
    if (!rc)
        rc = gguf_id_opt(g, "tokenizer.ggml.eos_token_id", &s->eos_id, err);
    if (!rc)
        rc = gguf_id_opt(g, "tokenizer.ggml.eot_token_id", &s->eot_id, err);
    if (!rc)
        rc = gguf_id_opt(g, "tokenizer.ggml.unknown_token_id", &s->unk_id, err);
    if (!rc)
        rc = gguf_id_opt(g, "tokenizer.ggml.padding_token_id", &s->pad_id, err);
    if (!rc)
        rc = gguf_flag_opt(g, "tokenizer.ggml.add_bos_token", &s->add_bos, err);
    if (!rc)
        rc = gguf_flag_opt(g, "tokenizer.ggml.add_eos_token", &s->add_eos, err);
    if (!rc)
        rc = gguf_flag_opt(g, "tokenizer.ggml.add_space_prefix", &s->add_space_prefix, err);
    return rc;
}

int ms_tokenizer_new_from_gguf(const ms_gguf_t *g, ms_tokenizer_t **ret_tok, ms_err_t *err)
{
    if (!g || !ret_tok) {
        ms_err_set(err, "tokenizer: no GGUF or no result pointer");
        return -EINVAL;
    }
    ms_tok_spec_t s = {.bos_id = -1, .eos_id = -1, .eot_id = -1, .unk_id = -1, .pad_id = -1,
                       .add_bos = MS_TOK_FLAG_ABSENT, .add_eos = MS_TOK_FLAG_ABSENT,
                       .add_space_prefix = MS_TOK_FLAG_ABSENT};
    float *scores = NULL;
    int32_t *types = NULL;
    int rc = gguf_read_scalars(g, &s, err);
    if (!rc)
        rc = gguf_read_arrays(g, &s, &scores, &types, err);
    if (rc == -ENOMEM)
        ms_err_set(err, "out of memory reading the tokenizer");
    if (!rc)
        rc = ms_tokenizer_new_from_spec(&s, ret_tok, err);
    free(scores);
    free(types);
    return rc;
}
