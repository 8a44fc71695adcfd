/* genmodel: writes small deterministic Mixture-of-Experts models (GGUF v3) for
 * tests, the demo and benchmarks. Same arguments, byte-identical file. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat.h"
#include "err.h"
#include "limits.h"
#include "gguf_write.h"
#include "ms_assert.h"
#include "progress.h"
#include "quant.h"
#include "types.h"

/* Bounds of this tool only (the model-shape bounds are the runtime's, in limits.h). */
#define GM_FILE_BYTES_MAX     (256ull << 30) /* a generated model is a test artefact, not a real model */
#define GM_TINY_MERGES        64             /* merges in a tiny model's default vocabulary */
#define GM_GEN_TOKEN_BYTES_MAX 24            /* longest token made by combining tokens */
#define GM_CHUNK_ELEMS        (1u << 20)     /* values generated per write: 4 MiB of f32 scratch */
#define GM_LAYER_TENSORS_MAX  20
#define GM_CONTROL_MAX        4
#define GM_PROGRESS_BYTES_MIN (64ull << 20)  /* smaller files are written without progress lines */
#define GM_ALIGNMENT          32
#define GM_DEFAULT_SEED       1
#define GM_CHAT_NONE          (-1)           /* --chat-template none: no tokenizer.chat_template */
#define GM_SPLIT_MAX          99             /* --split N: parts of a split model */
#define GM_SPLIT_SUFFIX_BYTES 20             /* "-00001-of-00003.gguf", llama.cpp's gguf-split names */

_Static_assert(GM_CHUNK_ELEMS >= MS_FF_MAX && GM_CHUNK_ELEMS >= MS_HIDDEN_MAX &&
               GM_CHUNK_ELEMS >= (uint64_t)MS_HEADS_MAX * MS_HEAD_DIM_MAX,
               "one row of any weight matrix fits in a chunk");
_Static_assert(GM_GEN_TOKEN_BYTES_MAX <= MS_TOKEN_BYTES_MAX, "generated tokens stay within the runtime's bound");

typedef enum { GM_ARCH_LLAMA, GM_ARCH_QWEN2MOE, GM_ARCH_QWEN3MOE, GM_ARCH_OLMOE, GM_ARCH_DEEPSEEK2, GM_ARCH_COUNT } gm_arch_t;

/* Every dimension the command line can set; 0 means "not given" while parsing. */
typedef struct {
    uint32_t vocab, layers, hidden, heads, kv_heads, head_dim, experts, top_k, ff, shared_ff, ctx;
} gm_shape_t;

typedef struct {
    const char *name;
    const char *pre;       /* tokenizer.ggml.pre */
    bool qkv_bias;         /* qwen2moe */
    bool qk_norm_per_head; /* qwen3moe: [hd] norms applied per head */
    bool qk_norm_full;     /* olmoe: norms over the whole projected q / k */
    bool shared_expert;    /* qwen2moe */
    bool expert_ff_key;    /* writes expert_feed_forward_length */
    bool mla;              /* deepseek2: latent attention, dense leading layers (gm_ds_t) */
    bool add_bos;
    float rope_base, eps;
    gm_shape_t tiny;       /* vocab 0: bytes + GM_TINY_MERGES merges + control tokens */
    int chat_default;      /* ms_chat_family_t or GM_CHAT_NONE: the template such models ship with */
} gm_arch_info_t;

/* Tiny shapes: {vocab, layers, hidden, heads, kv_heads, head_dim, experts, top_k, ff, shared_ff, ctx}. */
static const gm_arch_info_t gm_archs[GM_ARCH_COUNT] = {
    [GM_ARCH_LLAMA] = {.name = "llama", .pre = "llama-bpe", .add_bos = true, .rope_base = 1e6f, .eps = 1e-5f,
                       .tiny = {0, 2, 64, 4, 2, 16, 4, 2, 96, 0, 512}, .chat_default = MS_CHAT_MISTRAL},
    [GM_ARCH_QWEN2MOE] = {.name = "qwen2moe", .pre = "qwen2", .qkv_bias = true, .shared_expert = true,
                          .expert_ff_key = true, .rope_base = 1e6f, .eps = 1e-6f,
                          .tiny = {0, 2, 64, 4, 2, 16, 8, 2, 32, 64, 512}, .chat_default = MS_CHAT_CHATML},
    /* head_dim 24 != hidden / heads on purpose: key_length must be honoured */
    [GM_ARCH_QWEN3MOE] = {.name = "qwen3moe", .pre = "qwen2", .qk_norm_per_head = true, .expert_ff_key = true,
                          .rope_base = 1e6f, .eps = 1e-6f, .tiny = {0, 2, 64, 4, 2, 24, 8, 2, 32, 0, 512},
                          .chat_default = MS_CHAT_CHATML},
    [GM_ARCH_OLMOE] = {.name = "olmoe", .pre = "default", .qk_norm_full = true, .rope_base = 1e4f, .eps = 1e-5f,
                       .tiny = {0, 2, 64, 4, 4, 16, 8, 2, 32, 0, 512}, .chat_default = GM_CHAT_NONE},
    /* head_dim 48 = 32 unrotated + 16 rotated dims; 3 layers: 1 dense, 2 MoE; shared_ff follows the variant */
    [GM_ARCH_DEEPSEEK2] = {.name = "deepseek2", .pre = "deepseek-v3", .mla = true, .expert_ff_key = true,
                           .rope_base = 1e4f, .eps = 1e-6f, .tiny = {0, 3, 64, 4, 4, 48, 16, 4, 32, 0, 512},
                           .chat_default = MS_CHAT_DEEPSEEK},
};

/* deepseek2's own dimensions and routing (--variant, --shape deepseek-v3). */
typedef enum { GM_DS_V2_LITE, GM_DS_V3, GM_DS_COUNT } gm_ds_variant_t;
typedef struct {
    uint32_t n_rot, v_dim, kv_lora, q_lora; /* q_lora 0: attn_q directly */
    uint32_t dense_lead, dense_ff, n_shared, groups, groups_used;
    bool sigmoid, bias, yarn;
    float scale, yarn_factor, yarn_log_mul;
    uint32_t yarn_orig_ctx;
} gm_ds_t;

static const gm_ds_t gm_ds_tiny[GM_DS_COUNT] = {
    [GM_DS_V2_LITE] = {.n_rot = 16, .v_dim = 32, .kv_lora = 64, .dense_lead = 1, .dense_ff = 96, .n_shared = 2,
                       .groups = 1, .groups_used = 1, .scale = 1.0f},
    /* YaRN over an original context of 64 so that the ramp falls inside the rotated pairs */
    [GM_DS_V3] = {.n_rot = 16, .v_dim = 32, .kv_lora = 64, .q_lora = 64, .dense_lead = 1, .dense_ff = 96,
                  .n_shared = 1, .groups = 4, .groups_used = 2, .sigmoid = true, .bias = true, .yarn = true,
                  .scale = 2.5f, .yarn_factor = 4.0f, .yarn_log_mul = 0.1f, .yarn_orig_ctx = 64},
};

/* DeepSeek-V3's published configuration (header only: --shape deepseek-v3 --header-only). */
static const gm_shape_t gm_dsv3_shape = {129280, 61, 7168, 128, 128, 192, 256, 8, 2048, 2048, 163840};
static const gm_ds_t gm_dsv3 = {.n_rot = 64, .v_dim = 128, .kv_lora = 512, .q_lora = 1536, .dense_lead = 3,
                                .dense_ff = 18432, .n_shared = 1, .groups = 8, .groups_used = 4, .sigmoid = true,
                                .bias = true, .yarn = true, .scale = 2.5f, .yarn_factor = 40.0f,
                                .yarn_log_mul = 0.1f, .yarn_orig_ctx = 4096};

/* The benchmark model: Mixtral-shaped, ~1.8 GB in q8_0. shared_ff is used by qwen2moe only. */
static const gm_shape_t gm_bench_shape = {4096, 16, 1024, 16, 4, 64, 32, 4, 1024, 1024, 4096};

typedef struct {
    gm_arch_t arch;
    ms_type_t type;
    bool type_given;
    bool bench;
    bool tied;
    uint64_t seed;
    const char *out;
    gm_shape_t s;
    int chat;              /* ms_chat_family_t, or GM_CHAT_NONE */
    bool chat_given;
    gm_ds_variant_t variant; /* deepseek2 only */
    bool variant_given;
    bool split_kv_b;       /* deepseek2: attn_k_b + attn_v_b instead of attn_kv_b */
    bool ds_v3_shape;      /* --shape deepseek-v3 */
    bool header_only;      /* metadata and tensor infos only, no tensor data */
    uint32_t split;        /* --split N: parts (0: one file) */
    gm_ds_t ds;            /* deepseek2's dimensions, from the variant or shape */
} gm_cfg_t;

/* ---------------------------------------------------------------- errors */

static void gm_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Every failure, from a typo to a full disk, ends here: one line, exit 2. */
static void gm_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("genmodel: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *gm_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        gm_die("out of memory");
    return p;
}

/* ------------------------------------------------------------- randomness */

/* splitmix64: tiny, fast, and identical on every platform. */
static inline uint64_t gm_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1): 24 random bits, so the value is exact in f32. */
static inline float gm_rng_sym(uint64_t *state)
{
    int32_t u = (int32_t)(gm_rng_next(state) >> 40);
    return (float)(u - (1 << 23)) * 0x1p-23f;
}

/* Each tensor draws from its own stream, keyed by its name: its values do not
 * depend on which tensors come before it or on --type. */
static uint64_t gm_rng_for(uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    uint64_t state = seed ^ h;
    return gm_rng_next(&state);
}

/* ------------------------------------------------------------ vocabulary */

/* Short English text the tiny vocabulary's merges are learned from. */
static const char gm_corpus_text[] =
    "Once upon a time there was a little town by the sea. In the town lived an old man who made "
    "boats, and his granddaughter, who wanted to sail them. Every morning the girl walked down to "
    "the water and watched the ships come in. She asked the sailors where they had been and what "
    "they had seen. Some told her about storms and stars, some about islands where the trees were "
    "taller than houses, and one told her about a city made of glass.\n\n"
    "The old man did not like these stories. He said the sea was cold and the wind was not kind to "
    "small boats. But when the summer came, he took the girl to his workshop and showed her the "
    "boat he had been building all winter. It was small and light, with a white sail and a red "
    "line along its side.\n\n"
    "\"This one is yours,\" he said. \"Learn the wind first, then the water, and then the stars.\"\n\n"
    "So she learned. She learned how the wind turns in the afternoon and how the water changes "
    "color over the rocks. At night she sat with her grandfather and named the stars one by one, "
    "until she knew the way home from any of them.\n\n"
    "When the autumn came, she sailed out past the harbor for the first time. The town grew small "
    "behind her, and the sea grew wide in front of her. She was afraid, and she was happy, and she "
    "kept going. In the evening she turned the boat around and followed the bright star in the "
    "north back to the little town, where the old man was waiting on the beach with a lamp.\n\n"
    "After that day she sailed every week, and every week she went a little farther. She never "
    "found the city of glass, but she found many other things: quiet bays, friendly people, and a "
    "story of her own to tell the children of the town.\n";

/* Letters appended to existing tokens once the text has no pairs left. */
static const char gm_combine_letters[] = "etaoinshrdlucmwfgypbvk";

typedef struct {
    char **text;          /* [n] token strings in the byte-level alphabet, NUL-terminated */
    uint32_t *len;        /* [n] bytes of text[i] */
    int32_t *type;        /* [n] 1 normal, 3 control */
    uint32_t n, cap;
    char **merges;        /* [n_merges] "A B" */
    uint64_t *merge_len;  /* [n_merges] */
    uint32_t n_merges, cap_merges;
    uint32_t *slot;       /* open addressing over text: id + 1, 0 empty */
    uint32_t slot_mask;
    uint32_t bos, eos, eot;
} gm_vocab_t;

static uint32_t gm_hash(const char *s, uint32_t len)
{
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static void gm_vocab_init(gm_vocab_t *v, uint32_t cap)
{
    memset(v, 0, sizeof(*v));
    v->cap = cap;
    v->text = gm_xcalloc(cap, sizeof(*v->text));
    v->len = gm_xcalloc(cap, sizeof(*v->len));
    v->type = gm_xcalloc(cap, sizeof(*v->type));
    uint32_t slots = 16;
    while (slots < 2 * cap)
        slots *= 2;
    v->slot = gm_xcalloc(slots, sizeof(*v->slot));
    v->slot_mask = slots - 1;
}

static void gm_vocab_free(gm_vocab_t *v)
{
    for (uint32_t i = 0; i < v->n; i++)
        free(v->text[i]);
    for (uint32_t i = 0; i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->text);
    free(v->len);
    free(v->type);
    free(v->merges);
    free(v->merge_len);
    free(v->slot);
    memset(v, 0, sizeof(*v));
}

/* Slot holding s, or the empty slot where it belongs. */
static uint32_t *gm_vocab_slot(const gm_vocab_t *v, const char *s, uint32_t len)
{
    uint32_t i = gm_hash(s, len) & v->slot_mask;
    for (;;) {
        uint32_t id1 = v->slot[i];
        if (id1 == 0 || (v->len[id1 - 1] == len && memcmp(v->text[id1 - 1], s, len) == 0))
            return &v->slot[i];
        i = (i + 1) & v->slot_mask;
    }
}

static int64_t gm_vocab_find(const gm_vocab_t *v, const char *s, uint32_t len)
{
    uint32_t id1 = *gm_vocab_slot(v, s, len);
    return id1 ? (int64_t)id1 - 1 : -1;
}

static uint32_t gm_vocab_add(gm_vocab_t *v, const char *s, uint32_t len, int32_t type)
{
    MS_ASSERT(v->n < v->cap && gm_vocab_find(v, s, len) < 0);
    char *copy = gm_xcalloc(len + 1, 1);
    memcpy(copy, s, len);
    v->text[v->n] = copy;
    v->len[v->n] = len;
    v->type[v->n] = type;
    *gm_vocab_slot(v, s, len) = v->n + 1;
    return v->n++;
}

/* Records the merge "A B" and, when new, the token AB; returns AB's id. */
static uint32_t gm_vocab_merge(gm_vocab_t *v, uint32_t a, uint32_t b)
{
    uint32_t la = v->len[a], lb = v->len[b];
    if (v->n_merges == v->cap_merges) {
        v->cap_merges = v->cap_merges ? 2 * v->cap_merges : 256;
        v->merges = realloc(v->merges, v->cap_merges * sizeof(*v->merges));
        v->merge_len = realloc(v->merge_len, v->cap_merges * sizeof(*v->merge_len));
        if (!v->merges || !v->merge_len)
            gm_die("out of memory");
    }
    char *m = gm_xcalloc((size_t)la + lb + 2, 1);
    memcpy(m, v->text[a], la);
    memcpy(m + la, v->text[b], lb);
    int64_t id = gm_vocab_find(v, m, la + lb);
    uint32_t ab = id >= 0 ? (uint32_t)id : gm_vocab_add(v, m, la + lb, 1);
    m[la] = ' '; /* byte-level text has no raw spaces: the separator is unambiguous */
    memcpy(m + la + 1, v->text[b], lb);
    v->merges[v->n_merges] = m;
    v->merge_len[v->n_merges++] = (uint64_t)la + lb + 1;
    return ab;
}

/* GPT-2's byte alphabet: printable bytes stand for themselves, the rest map
 * to U+0100 + k in byte order so that every token is printable text. */
static void gm_vocab_add_bytes(gm_vocab_t *v)
{
    uint32_t k = 0;
    for (uint32_t b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        uint32_t cp = printable ? b : 256 + k++;
        char u[2];
        uint32_t len = 1;
        if (cp < 0x80) {
            u[0] = (char)cp;
        } else {
            u[0] = (char)(0xc0 | (cp >> 6));
            u[1] = (char)(0x80 | (cp & 0x3f));
            len = 2;
        }
        gm_vocab_add(v, u, len, 1);
    }
}

static bool gm_is_letter(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool gm_is_other(char c)
{
    return !gm_is_letter(c) && c != ' ' && c != '\n';
}

/* Length of the pre-tokenizer word starting at s, as the runtime's
 * pre-tokenizers split English: " word", " ,.", "\n\n", spaces. */
static size_t gm_word_len(const char *s, size_t n)
{
    size_t i = 0;
    if (s[0] == '\n') {
        while (i < n && s[i] == '\n')
            i++;
        return i;
    }
    if (s[0] == ' ') {
        if (n == 1 || s[1] == ' ' || s[1] == '\n') {
            while (i < n && s[i] == ' ')
                i++;
            return i;
        }
        i = 1; /* a single space joins the word that follows */
    }
    bool (*same)(char) = gm_is_letter(s[i]) ? gm_is_letter : gm_is_other;
    while (i < n && same(s[i]))
        i++;
    return i;
}

#define GM_SEP UINT32_MAX /* between words in the training corpus */

/* The text as byte-token ids (id = byte), words separated by GM_SEP. */
static uint32_t *gm_corpus_ids(size_t *ret_n)
{
    size_t n_text = sizeof(gm_corpus_text) - 1;
    uint32_t *ids = gm_xcalloc(2 * n_text + 1, sizeof(*ids));
    size_t n = 0;
    for (size_t pos = 0; pos < n_text;) {
        size_t wl = gm_word_len(gm_corpus_text + pos, n_text - pos);
        for (size_t j = 0; j < wl; j++)
            ids[n++] = (unsigned char)gm_corpus_text[pos + j];
        ids[n++] = GM_SEP;
        pos += wl;
    }
    *ret_n = n;
    return ids;
}

static int gm_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int gm_cmp_text(const gm_vocab_t *v, uint32_t a, uint32_t b)
{
    uint32_t n = v->len[a] < v->len[b] ? v->len[a] : v->len[b];
    int c = memcmp(v->text[a], v->text[b], n);
    return c ? c : (v->len[a] > v->len[b]) - (v->len[a] < v->len[b]);
}

/* Is pair p (A << 32 | B) ahead of q: lexicographically smaller A, then B? */
static bool gm_pair_before(const gm_vocab_t *v, uint64_t p, uint64_t q)
{
    int c = gm_cmp_text(v, (uint32_t)(p >> 32), (uint32_t)(q >> 32));
    return c ? c < 0 : gm_cmp_text(v, (uint32_t)p, (uint32_t)q) < 0;
}

/* The most frequent adjacent pair in ids (ties: lexicographic); false when none. */
static bool gm_best_pair(const gm_vocab_t *v, const uint32_t *ids, size_t n, uint64_t *pairs, uint64_t *ret)
{
    size_t np = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (ids[i] != GM_SEP && ids[i + 1] != GM_SEP)
            pairs[np++] = (uint64_t)ids[i] << 32 | ids[i + 1];
    if (np == 0)
        return false;
    qsort(pairs, np, sizeof(*pairs), gm_cmp_u64);
    size_t best_count = 0;
    for (size_t i = 0, j; i < np; i = j) {
        for (j = i; j < np && pairs[j] == pairs[i]; j++)
            ;
        if (j - i > best_count || (j - i == best_count && gm_pair_before(v, pairs[i], *ret))) {
            best_count = j - i;
            *ret = pairs[i];
        }
    }
    return true;
}

/* Replaces every adjacent (a, b) by ab, left to right; returns the new length. */
static size_t gm_apply_merge(uint32_t *ids, size_t n, uint32_t a, uint32_t b, uint32_t ab)
{
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && ids[i] == a && ids[i + 1] == b) {
            ids[j++] = ab;
            i++;
        } else {
            ids[j++] = ids[i];
        }
    }
    return j;
}

/* A few lines of real BPE training on the built-in text, until the
 * vocabulary holds target tokens or every word is a single token. */
static void gm_vocab_learn(gm_vocab_t *v, uint32_t target)
{
    size_t n;
    uint32_t *ids = gm_corpus_ids(&n);
    uint64_t *pairs = gm_xcalloc(n, sizeof(*pairs));
    uint64_t best = 0;
    while (v->n < target && gm_best_pair(v, ids, n, pairs, &best)) {
        uint32_t a = (uint32_t)(best >> 32), b = (uint32_t)best;
        n = gm_apply_merge(ids, n, a, b, gm_vocab_merge(v, a, b));
    }
    free(pairs);
    free(ids);
}

/* Past what the text teaches: token + letter, over the tokens in id order
 * (new ones included), so both halves of every merge exist before it. */
static void gm_vocab_combine(gm_vocab_t *v, uint32_t target)
{
    for (uint32_t a = 256; v->n < target; a++) {
        MS_ASSERT(a < v->n); /* the learned merges seed an endless supply */
        for (const char *c = gm_combine_letters; *c && v->n < target; c++) {
            uint32_t b = (unsigned char)*c;
            if (v->len[a] + v->len[b] > GM_GEN_TOKEN_BYTES_MAX)
                continue;
            char buf[GM_GEN_TOKEN_BYTES_MAX];
            memcpy(buf, v->text[a], v->len[a]);
            memcpy(buf + v->len[a], v->text[b], v->len[b]);
            if (gm_vocab_find(v, buf, v->len[a] + v->len[b]) < 0)
                gm_vocab_merge(v, a, b);
        }
    }
}

static uint32_t gm_n_control(gm_arch_t arch)
{
    return arch == GM_ARCH_LLAMA ? 4 : 3;
}

static void gm_vocab_build(gm_vocab_t *v, const gm_cfg_t *cfg)
{
    uint32_t n_ctrl = gm_n_control(cfg->arch);
    uint32_t target = cfg->s.vocab - n_ctrl;
    gm_vocab_init(v, cfg->s.vocab);
    gm_vocab_add_bytes(v);
    gm_vocab_learn(v, target);
    gm_vocab_combine(v, target);
    static const char *const ctrl[GM_CONTROL_MAX] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                     "<|begin_of_text|>"};
    for (uint32_t i = 0; i < n_ctrl; i++)
        gm_vocab_add(v, ctrl[i], (uint32_t)strlen(ctrl[i]), 3);
    v->eos = target;
    v->eot = target + 2;
    v->bos = cfg->arch == GM_ARCH_LLAMA ? target + 3 : target; /* Qwen-style files use EOS as BOS */
    MS_ASSERT(v->n == cfg->s.vocab);
}

/* ----------------------------------------------------------- tensor plan */

/* Values are center + half * u, u uniform in [-1, 1); rows from quiet_row on
 * are scaled by GM_QUIET_ROW_SCALE. */
typedef struct {
    char name[64];
    uint32_t n_dims;
    int64_t ne[3];
    ms_type_t type;
    float center, half;
    uint64_t quiet_row;
} gm_tensor_t;

typedef struct {
    gm_tensor_t *t;
    uint32_t n, cap;
} gm_plan_t;

static gm_tensor_t *gm_plan_push(gm_plan_t *p, int layer, const char *name)
{
    MS_ASSERT(p->n < p->cap);
    gm_tensor_t *t = &p->t[p->n++];
    memset(t, 0, sizeof(*t));
    int len = layer < 0 ? snprintf(t->name, sizeof(t->name), "%s", name)
                        : snprintf(t->name, sizeof(t->name), "blk.%d.%s", layer, name);
    MS_ASSERT(len > 0 && (size_t)len < sizeof(t->name));
    return t;
}

/* A weight matrix [n_in, n_out(, n_exp)] scaled so that y = W x keeps
 * the size of x (uniform with variance gain^2 / n_in), times gain. */
static void gm_plan_matrix(gm_plan_t *p, const gm_cfg_t *cfg, int layer, const char *name, uint32_t n_in,
                           uint32_t n_out, uint32_t n_exp, float gain)
{
    gm_tensor_t *t = gm_plan_push(p, layer, name);
    t->n_dims = n_exp ? 3 : 2;
    t->ne[0] = n_in;
    t->ne[1] = n_out;
    t->ne[2] = n_exp ? n_exp : 1;
    t->type = cfg->type;
    t->half = gain * (float)sqrt(3.0 / n_in);
    t->quiet_row = UINT64_MAX;
}

/* A 1-D F32 vector: norm weights, biases, the shared-expert gate. */
static void gm_plan_vector(gm_plan_t *p, int layer, const char *name, uint32_t n, float center, float half)
{
    gm_tensor_t *t = gm_plan_push(p, layer, name);
    t->n_dims = 1;
    t->ne[0] = n;
    t->ne[1] = t->ne[2] = 1;
    t->type = MS_TYPE_F32;
    t->center = center;
    t->half = half;
    t->quiet_row = UINT64_MAX;
}

/* Gains: attention and expert outputs below 1 so the residual stream stays
 * O(1) over many layers; router logits with std 2 so tokens pick different
 * experts without one expert taking all the weight; output head std 3 so
 * logits spread over several units. */
#define GM_GAIN_ATTN_OUT 0.5f
#define GM_GAIN_ROUTER   2.0f
#define GM_GAIN_OUTPUT   3.0f
/* The output head's rows for control tokens: their logits stay near 0 while
 * the others spread over +-3, so, as with trained models, text rarely ends or
 * opens a turn by chance and a fixed -n decodes that many tokens. */
#define GM_QUIET_ROW_SCALE 0.1f

static void gm_plan_attention(gm_plan_t *p, const gm_cfg_t *cfg, const gm_arch_info_t *a, int l)
{
    uint32_t d = cfg->s.hidden, q = cfg->s.heads * cfg->s.head_dim, kv = cfg->s.kv_heads * cfg->s.head_dim;
    gm_plan_vector(p, l, "attn_norm.weight", d, 1.0f, 0.1f);
    gm_plan_matrix(p, cfg, l, "attn_q.weight", d, q, 0, 1.0f);
    gm_plan_matrix(p, cfg, l, "attn_k.weight", d, kv, 0, 1.0f);
    gm_plan_matrix(p, cfg, l, "attn_v.weight", d, kv, 0, 1.0f);
    if (a->qkv_bias) {
        gm_plan_vector(p, l, "attn_q.bias", q, 0.0f, 0.1f);
        gm_plan_vector(p, l, "attn_k.bias", kv, 0.0f, 0.1f);
        gm_plan_vector(p, l, "attn_v.bias", kv, 0.0f, 0.1f);
    }
    if (a->qk_norm_per_head || a->qk_norm_full) {
        gm_plan_vector(p, l, "attn_q_norm.weight", a->qk_norm_full ? q : cfg->s.head_dim, 1.0f, 0.1f);
        gm_plan_vector(p, l, "attn_k_norm.weight", a->qk_norm_full ? kv : cfg->s.head_dim, 1.0f, 0.1f);
    }
    gm_plan_matrix(p, cfg, l, "attn_output.weight", q, d, 0, GM_GAIN_ATTN_OUT);
}

static void gm_plan_moe(gm_plan_t *p, const gm_cfg_t *cfg, const gm_arch_info_t *a, int l)
{
    uint32_t d = cfg->s.hidden, f = cfg->s.ff, e = cfg->s.experts, fs = cfg->s.shared_ff;
    gm_plan_vector(p, l, "ffn_norm.weight", d, 1.0f, 0.1f);
    gm_plan_matrix(p, cfg, l, "ffn_gate_inp.weight", d, e, 0, GM_GAIN_ROUTER);
    gm_plan_matrix(p, cfg, l, "ffn_gate_exps.weight", d, f, e, 1.0f);
    gm_plan_matrix(p, cfg, l, "ffn_up_exps.weight", d, f, e, 1.0f);
    gm_plan_matrix(p, cfg, l, "ffn_down_exps.weight", f, d, e, 1.0f);
    if (a->shared_expert) {
        gm_plan_vector(p, l, "ffn_gate_inp_shexp.weight", d, 0.0f, (float)sqrt(3.0 / d));
        gm_plan_matrix(p, cfg, l, "ffn_gate_shexp.weight", d, fs, 0, 1.0f);
        gm_plan_matrix(p, cfg, l, "ffn_up_shexp.weight", d, fs, 0, 1.0f);
        gm_plan_matrix(p, cfg, l, "ffn_down_shexp.weight", fs, d, 0, 1.0f);
    }
}

/* deepseek2's latent attention: q direct (v2-lite) or low-rank (v3), the kv
 * latent plus the shared rope key, its per-head up-projection merged
 * (attn_kv_b) or split (attn_k_b [nope, kv_lora, H], attn_v_b [kv_lora, v, H]). */
static void gm_plan_mla(gm_plan_t *p, const gm_cfg_t *cfg, int l)
{
    const gm_ds_t *ds = &cfg->ds;
    uint32_t d = cfg->s.hidden, H = cfg->s.heads, hd = cfg->s.head_dim, nope = hd - ds->n_rot;
    gm_plan_vector(p, l, "attn_norm.weight", d, 1.0f, 0.1f);
    if (ds->q_lora) {
        gm_plan_matrix(p, cfg, l, "attn_q_a.weight", d, ds->q_lora, 0, 1.0f);
        gm_plan_vector(p, l, "attn_q_a_norm.weight", ds->q_lora, 1.0f, 0.1f);
        gm_plan_matrix(p, cfg, l, "attn_q_b.weight", ds->q_lora, H * hd, 0, 1.0f);
    } else {
        gm_plan_matrix(p, cfg, l, "attn_q.weight", d, H * hd, 0, 1.0f);
    }
    gm_plan_matrix(p, cfg, l, "attn_kv_a_mqa.weight", d, ds->kv_lora + ds->n_rot, 0, 1.0f);
    gm_plan_vector(p, l, "attn_kv_a_norm.weight", ds->kv_lora, 1.0f, 0.1f);
    if (cfg->split_kv_b) {
        gm_plan_matrix(p, cfg, l, "attn_k_b.weight", nope, ds->kv_lora, H, 1.0f);
        gm_plan_matrix(p, cfg, l, "attn_v_b.weight", ds->kv_lora, ds->v_dim, H, 1.0f);
    } else {
        gm_plan_matrix(p, cfg, l, "attn_kv_b.weight", ds->kv_lora, H * (nope + ds->v_dim), 0, 1.0f);
    }
    gm_plan_matrix(p, cfg, l, "attn_output.weight", H * ds->v_dim, d, 0, GM_GAIN_ATTN_OUT);
}

/* A leading dense FFN, or the router (+ selection bias), experts and shared experts. */
static void gm_plan_ds_ffn(gm_plan_t *p, const gm_cfg_t *cfg, int l)
{
    const gm_ds_t *ds = &cfg->ds;
    uint32_t d = cfg->s.hidden, f = cfg->s.ff, e = cfg->s.experts, fs = cfg->s.shared_ff;
    gm_plan_vector(p, l, "ffn_norm.weight", d, 1.0f, 0.1f);
    if ((uint32_t)l < ds->dense_lead) {
        gm_plan_matrix(p, cfg, l, "ffn_gate.weight", d, ds->dense_ff, 0, 1.0f);
        gm_plan_matrix(p, cfg, l, "ffn_up.weight", d, ds->dense_ff, 0, 1.0f);
        gm_plan_matrix(p, cfg, l, "ffn_down.weight", ds->dense_ff, d, 0, GM_GAIN_ATTN_OUT);
        return;
    }
    gm_plan_matrix(p, cfg, l, "ffn_gate_inp.weight", d, e, 0, GM_GAIN_ROUTER);
    if (ds->bias) /* about the spread of sigmoid scores: it changes which experts win */
        gm_plan_vector(p, l, "exp_probs_b.bias", e, 0.0f, 0.2f);
    gm_plan_matrix(p, cfg, l, "ffn_gate_exps.weight", d, f, e, 1.0f);
    gm_plan_matrix(p, cfg, l, "ffn_up_exps.weight", d, f, e, 1.0f);
    gm_plan_matrix(p, cfg, l, "ffn_down_exps.weight", f, d, e, 1.0f);
    if (fs) {
        gm_plan_matrix(p, cfg, l, "ffn_gate_shexp.weight", d, fs, 0, 1.0f);
        gm_plan_matrix(p, cfg, l, "ffn_up_shexp.weight", d, fs, 0, 1.0f);
        gm_plan_matrix(p, cfg, l, "ffn_down_shexp.weight", fs, d, 0, GM_GAIN_ATTN_OUT);
    }
}

static void gm_plan_build(gm_plan_t *p, const gm_cfg_t *cfg)
{
    const gm_arch_info_t *a = &gm_archs[cfg->arch];
    uint32_t d = cfg->s.hidden;
    p->cap = cfg->s.layers * GM_LAYER_TENSORS_MAX + 3;
    p->t = gm_xcalloc(p->cap, sizeof(*p->t));
    p->n = 0;
    /* Untied, embeddings are N(0,1)-sized (gain sqrt(d) undoes the 1/sqrt(n_in)).
     * Tied, token_embd doubles as the output head and takes its scale; the
     * rmsnorms make the smaller input embeddings harmless. */
    float embd_gain = cfg->tied ? GM_GAIN_OUTPUT : (float)sqrt((double)d);
    gm_plan_matrix(p, cfg, -1, "token_embd.weight", d, cfg->s.vocab, 0, embd_gain);
    for (uint32_t l = 0; l < cfg->s.layers; l++) {
        if (a->mla) {
            gm_plan_mla(p, cfg, (int)l);
            gm_plan_ds_ffn(p, cfg, (int)l);
            continue;
        }
        gm_plan_attention(p, cfg, a, (int)l);
        gm_plan_moe(p, cfg, a, (int)l);
    }
    gm_plan_vector(p, -1, "output_norm.weight", d, 1.0f, 0.1f);
    if (!cfg->tied)
        gm_plan_matrix(p, cfg, -1, "output.weight", d, cfg->s.vocab, 0, GM_GAIN_OUTPUT);
    gm_tensor_t *head = cfg->tied ? &p->t[0] : &p->t[p->n - 1]; /* control tokens are the last rows */
    head->quiet_row = cfg->s.vocab - gm_n_control(cfg->arch);
}

static uint64_t gm_tensor_bytes(const gm_tensor_t *t)
{
    return ms_type_row_bytes(t->type, (uint64_t)t->ne[0]) * (uint64_t)t->ne[1] * (uint64_t)t->ne[2];
}

/* -------------------------------------------------------------- metadata */

static void gm_check(int rc, const char *what)
{
    if (rc < 0)
        gm_die("cannot add %s to the GGUF header: %s", what, strerror(-rc));
}

/* ARCH.<key> */
static const char *gm_key(const gm_cfg_t *cfg, const char *key)
{
    static char buf[128];
    snprintf(buf, sizeof(buf), "%s.%s", gm_archs[cfg->arch].name, key);
    return buf;
}

/* The keys llama.cpp's deepseek2 loader reads, as its converter writes them. */
static void gm_meta_deepseek2(ms_gguf_writer_t *w, const gm_cfg_t *cfg)
{
    const gm_ds_t *ds = &cfg->ds;
    const struct { const char *key; uint32_t v; } u32s[] = {
        {"leading_dense_block_count", ds->dense_lead}, {"attention.kv_lora_rank", ds->kv_lora},
        {"expert_shared_count", ds->n_shared},        {"expert_gating_func", ds->sigmoid ? 2 : 1},
        {"expert_group_count", ds->groups},           {"expert_group_used_count", ds->groups_used},
        {"expert_shared_feed_forward_length", cfg->s.shared_ff},
    };
    for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++)
        gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, u32s[i].key), u32s[i].v), u32s[i].key);
    if (ds->q_lora)
        gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, "attention.q_lora_rank"), ds->q_lora), "q_lora_rank");
    if (cfg->split_kv_b) {
        gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, "attention.key_length_mla"), cfg->s.head_dim), "key_length_mla");
        gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, "attention.value_length_mla"), ds->v_dim), "value_length_mla");
    }
    gm_check(ms_gguf_writer_add_f32(w, gm_key(cfg, "expert_weights_scale"), ds->scale), "expert_weights_scale");
    gm_check(ms_gguf_writer_add_bool(w, gm_key(cfg, "expert_weights_norm"), ds->sigmoid), "expert_weights_norm");
    if (!ds->yarn)
        return;
    gm_check(ms_gguf_writer_add_str(w, gm_key(cfg, "rope.scaling.type"), "yarn"), "rope.scaling.type");
    gm_check(ms_gguf_writer_add_f32(w, gm_key(cfg, "rope.scaling.factor"), ds->yarn_factor), "rope.scaling.factor");
    gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, "rope.scaling.original_context_length"), ds->yarn_orig_ctx),
             "original_context_length");
    gm_check(ms_gguf_writer_add_f32(w, gm_key(cfg, "rope.scaling.yarn_log_multiplier"), ds->yarn_log_mul),
             "yarn_log_multiplier");
}

static void gm_meta_arch(ms_gguf_writer_t *w, const gm_cfg_t *cfg)
{
    const gm_arch_info_t *a = &gm_archs[cfg->arch];
    const gm_shape_t *s = &cfg->s;
    /* Qwen MoE files carry a dense FFN width that no MoE layer uses; keeping it
     * different from the expert width catches readers that take the wrong key. */
    uint32_t ff_key = a->expert_ff_key ? 3 * s->hidden : s->ff;
    uint32_t k_len = s->head_dim, v_len = s->head_dim, n_rot = s->head_dim, kv_heads = s->kv_heads;
    if (a->mla) { /* deepseek2: feed_forward_length is the leading dense layers' width */
        ff_key = cfg->ds.dense_ff;
        v_len = cfg->ds.v_dim;
        n_rot = cfg->ds.n_rot;
    }
    if (a->mla && cfg->split_kv_b) { /* as newer conversions: the plain keys describe the latent, one kv head */
        k_len = cfg->ds.kv_lora + cfg->ds.n_rot;
        v_len = cfg->ds.kv_lora;
        kv_heads = 1;
    }
    const struct { const char *key; uint32_t v; } u32s[] = {
        {"context_length", s->ctx},        {"embedding_length", s->hidden},
        {"block_count", s->layers},        {"feed_forward_length", ff_key},
        {"attention.head_count", s->heads}, {"attention.head_count_kv", kv_heads},
        {"attention.key_length", k_len}, {"attention.value_length", v_len},
        {"rope.dimension_count", n_rot}, {"expert_count", s->experts},
        {"expert_used_count", s->top_k},    {"vocab_size", s->vocab},
    };
    char name[64];
    snprintf(name, sizeof(name), "moeshard-%s-%s", cfg->ds_v3_shape ? "deepseek-v3" : cfg->bench ? "bench" : "tiny",
             a->name);
    gm_check(ms_gguf_writer_add_str(w, "general.architecture", a->name), "general.architecture");
    gm_check(ms_gguf_writer_add_str(w, "general.name", name), "general.name");
    for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++)
        gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, u32s[i].key), u32s[i].v), u32s[i].key);
    if (a->expert_ff_key)
        gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, "expert_feed_forward_length"), s->ff), "expert ff");
    if (a->shared_expert)
        gm_check(ms_gguf_writer_add_u32(w, gm_key(cfg, "expert_shared_feed_forward_length"), s->shared_ff),
                 "shared ff");
    gm_check(ms_gguf_writer_add_f32(w, gm_key(cfg, "attention.layer_norm_rms_epsilon"), a->eps), "eps");
    gm_check(ms_gguf_writer_add_f32(w, gm_key(cfg, "rope.freq_base"), a->rope_base), "rope.freq_base");
    if (a->mla)
        gm_meta_deepseek2(w, cfg);
}

static void gm_meta_tokenizer(ms_gguf_writer_t *w, const gm_cfg_t *cfg, const gm_vocab_t *v)
{
    uint64_t *lens = gm_xcalloc(v->n, sizeof(*lens));
    for (uint32_t i = 0; i < v->n; i++)
        lens[i] = v->len[i];
    gm_check(ms_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2"), "tokenizer.ggml.model");
    gm_check(ms_gguf_writer_add_str(w, "tokenizer.ggml.pre", gm_archs[cfg->arch].pre), "tokenizer.ggml.pre");
    gm_check(ms_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->text, lens, v->n),
             "tokenizer.ggml.tokens");
    gm_check(ms_gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", v->type, v->n), "token_type");
    gm_check(ms_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges,
                                        v->merge_len, v->n_merges),
             "tokenizer.ggml.merges");
    gm_check(ms_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", v->bos), "bos_token_id");
    gm_check(ms_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", v->eos), "eos_token_id");
    gm_check(ms_gguf_writer_add_u32(w, "tokenizer.ggml.eot_token_id", v->eot), "eot_token_id");
    gm_check(ms_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", gm_archs[cfg->arch].add_bos),
             "add_bos_token");
    if (cfg->chat != GM_CHAT_NONE)
        gm_check(ms_gguf_writer_add_str(w, "tokenizer.chat_template", ms_chat_jinja((ms_chat_family_t)cfg->chat)),
                 "tokenizer.chat_template");
    free(lens);
}

/* ---------------------------------------------------------- tensor data */

/* roundf (halves away from zero) for |v| < 2^31, inlined: a libm call per
 * weight would dominate writing the bench model. v - trunc(v) is exact. */
static inline int gm_round_half_away(float v)
{
    int i = (int)v;
    float frac = v - (float)i;
    return i + (frac >= 0.5f) - (frac <= -0.5f);
}

/* As llama.cpp's quantize_row_q8_0_ref: d = amax/127, q = roundf(x * (1/d)). */
static void gm_quantize_q8_0(const float *x, ms_block_q8_0_t *y, uint64_t n)
{
    for (uint64_t i = 0; i < n / MS_QK8_0; i++) {
        const float *b = x + i * MS_QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < MS_QK8_0; j++)
            amax = fabsf(b[j]) > amax ? fabsf(b[j]) : amax;
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ms_f32_to_f16(d);
        for (int j = 0; j < MS_QK8_0; j++)
            y[i].qs[j] = (int8_t)gm_round_half_away(b[j] * id);
    }
}

/* Encodes n values of x as type into out; returns the bytes written. */
static uint64_t gm_encode(ms_type_t type, const float *x, uint64_t n, void *out)
{
    uint16_t *h = out;
    switch (type) {
    case MS_TYPE_F32:
        memcpy(out, x, n * sizeof(float));
        return n * sizeof(float);
    case MS_TYPE_F16:
        for (uint64_t i = 0; i < n; i++)
            h[i] = ms_f32_to_f16(x[i]);
        return n * 2;
    case MS_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++)
            h[i] = ms_f32_to_bf16(x[i]);
        return n * 2;
    case MS_TYPE_Q8_0:
        gm_quantize_q8_0(x, out, n);
        return n / MS_QK8_0 * sizeof(ms_block_q8_0_t);
    case MS_TYPE_Q4_0:
    case MS_TYPE_Q2_K:
    case MS_TYPE_Q3_K:
    case MS_TYPE_Q4_K:
    case MS_TYPE_Q5_K:
    case MS_TYPE_Q6_K:
        return ms_quantize_row(type, x, (int64_t)n, out); /* n is whole rows: whole blocks */
    default:
        MS_ASSERT(!"type has no encoder");
        return 0;
    }
}

static void gm_fmt_bytes(char *buf, size_t cap, uint64_t b)
{
    if (b >= 1000000000ull)
        snprintf(buf, cap, "%.1f GB", (double)b / 1e9);
    else if (b >= 1000000ull)
        snprintf(buf, cap, "%.0f MB", (double)b / 1e6);
    else
        snprintf(buf, cap, "%.0f kB", (double)b / 1e3);
}

/* Streams one tensor: values are drawn row block by row block, so memory use
 * is one chunk whatever the tensor's size. */
static int gm_write_tensor(ms_gguf_writer_t *w, const gm_tensor_t *t, uint64_t seed, float *x, void *buf,
                           ms_progress_t *pr, ms_err_t *err)
{
    uint64_t rng = gm_rng_for(seed, t->name);
    uint64_t row = (uint64_t)t->ne[0], rows = (uint64_t)t->ne[1] * (uint64_t)t->ne[2];
    uint64_t rows_per_chunk = GM_CHUNK_ELEMS / row;
    MS_ASSERT(rows_per_chunk > 0);
    for (uint64_t r = 0; r < rows; r += rows_per_chunk) {
        uint64_t n = (rows - r < rows_per_chunk ? rows - r : rows_per_chunk) * row;
        for (uint64_t i = 0; i < n; i++)
            x[i] = t->center + t->half * gm_rng_sym(&rng);
        uint64_t quiet = t->quiet_row > r ? t->quiet_row - r : 0; /* first quiet row of the chunk */
        for (uint64_t i = quiet < n / row ? quiet * row : n; i < n; i++)
            x[i] *= GM_QUIET_ROW_SCALE;
        uint64_t nbytes = gm_encode(t->type, x, n, buf);
        int rc = ms_gguf_writer_write(w, buf, nbytes, err);
        if (rc < 0)
            return rc;
        ms_progress_add(pr, nbytes);
    }
    return 0;
}

static int gm_write_data(ms_gguf_writer_t *w, const gm_plan_t *p, const gm_cfg_t *cfg, uint64_t total, ms_err_t *err)
{
    float *x = gm_xcalloc(GM_CHUNK_ELEMS, sizeof(float));
    void *buf = gm_xcalloc(GM_CHUNK_ELEMS, sizeof(float));
    ms_progress_t pr;
    ms_progress_init(&pr, "genmodel", total, GM_PROGRESS_BYTES_MIN);
    int rc = 0;
    for (uint32_t i = 0; i < p->n && rc == 0; i++)
        rc = gm_write_tensor(w, &p->t[i], cfg->seed, x, buf, &pr, err);
    free(buf);
    free(x);
    return rc;
}

/* ---------------------------------------------------------- command line */

typedef struct {
    const char *name;
    size_t off; /* into gm_shape_t */
    uint32_t max;
} gm_num_opt_t;

static const gm_num_opt_t gm_num_opts[] = {
    {"vocab-size", offsetof(gm_shape_t, vocab), MS_VOCAB_MAX},
    {"layers", offsetof(gm_shape_t, layers), MS_LAYERS_MAX},
    {"hidden", offsetof(gm_shape_t, hidden), MS_HIDDEN_MAX},
    {"heads", offsetof(gm_shape_t, heads), MS_HEADS_MAX},
    {"kv-heads", offsetof(gm_shape_t, kv_heads), MS_HEADS_MAX},
    {"head-dim", offsetof(gm_shape_t, head_dim), MS_HEAD_DIM_MAX},
    {"experts", offsetof(gm_shape_t, experts), MS_EXPERTS_MAX},
    {"top-k", offsetof(gm_shape_t, top_k), MS_TOPK_MAX},
    {"ff", offsetof(gm_shape_t, ff), MS_FF_MAX},
    {"shared-ff", offsetof(gm_shape_t, shared_ff), MS_FF_MAX},
    {"ctx", offsetof(gm_shape_t, ctx), MS_CONTEXT_MAX},
};
#define GM_N_NUM_OPTS (sizeof(gm_num_opts) / sizeof(gm_num_opts[0]))

enum { GM_OPT_ARCH = 256, GM_OPT_OUT, GM_OPT_TYPE, GM_OPT_SEED, GM_OPT_SHAPE, GM_OPT_TIED, GM_OPT_CHAT, GM_OPT_HELP,
       GM_OPT_VARIANT, GM_OPT_SPLIT_KV_B, GM_OPT_HEADER_ONLY, GM_OPT_SPLIT, GM_OPT_NUM };

static const struct option gm_long_opts[] = {
    {"arch", required_argument, NULL, GM_OPT_ARCH},
    {"out", required_argument, NULL, GM_OPT_OUT},
    {"type", required_argument, NULL, GM_OPT_TYPE},
    {"seed", required_argument, NULL, GM_OPT_SEED},
    {"shape", required_argument, NULL, GM_OPT_SHAPE},
    {"tied", no_argument, NULL, GM_OPT_TIED},
    {"chat-template", required_argument, NULL, GM_OPT_CHAT},
    {"help", no_argument, NULL, GM_OPT_HELP},
    {"variant", required_argument, NULL, GM_OPT_VARIANT},
    {"split-kv-b", no_argument, NULL, GM_OPT_SPLIT_KV_B},
    {"header-only", no_argument, NULL, GM_OPT_HEADER_ONLY},
    {"split", required_argument, NULL, GM_OPT_SPLIT},
    {"vocab-size", required_argument, NULL, GM_OPT_NUM + 0},
    {"layers", required_argument, NULL, GM_OPT_NUM + 1},
    {"hidden", required_argument, NULL, GM_OPT_NUM + 2},
    {"heads", required_argument, NULL, GM_OPT_NUM + 3},
    {"kv-heads", required_argument, NULL, GM_OPT_NUM + 4},
    {"head-dim", required_argument, NULL, GM_OPT_NUM + 5},
    {"experts", required_argument, NULL, GM_OPT_NUM + 6},
    {"top-k", required_argument, NULL, GM_OPT_NUM + 7},
    {"ff", required_argument, NULL, GM_OPT_NUM + 8},
    {"shared-ff", required_argument, NULL, GM_OPT_NUM + 9},
    {"ctx", required_argument, NULL, GM_OPT_NUM + 10},
    {NULL, 0, NULL, 0},
};
_Static_assert(sizeof(gm_long_opts) / sizeof(gm_long_opts[0]) == 12 + GM_N_NUM_OPTS + 1,
               "every numeric option has its long option");

static const struct { const char *name; ms_type_t type; } gm_types[] = {
    {"f32", MS_TYPE_F32}, {"f16", MS_TYPE_F16}, {"bf16", MS_TYPE_BF16}, {"q8_0", MS_TYPE_Q8_0},
    {"q4_0", MS_TYPE_Q4_0}, {"q2_k", MS_TYPE_Q2_K}, {"q3_k", MS_TYPE_Q3_K}, {"q4_k", MS_TYPE_Q4_K},
    {"q5_k", MS_TYPE_Q5_K}, {"q6_k", MS_TYPE_Q6_K},
};

static uint32_t *gm_shape_field(gm_shape_t *s, size_t off)
{
    return (uint32_t *)((char *)s + off);
}

static void gm_print_shape_row(const char *label, const gm_shape_t *s, const char *vocab)
{
    char shared[16] = "-";
    if (s->shared_ff)
        snprintf(shared, sizeof(shared), "%u", s->shared_ff);
    printf("  %-9s %5s %6u %6u %5u %8u %8u %7u %5u %5u %9s %5u\n", label, vocab, s->layers, s->hidden,
           s->heads, s->kv_heads, s->head_dim, s->experts, s->top_k, s->ff, shared, s->ctx);
}

static void gm_usage(void)
{
    printf("usage: genmodel --arch llama|qwen2moe|qwen3moe|olmoe|deepseek2 --out FILE [options]\n"
           "Writes a small deterministic Mixture-of-Experts model (GGUF v3) with random weights\n"
           "and a byte-level BPE vocabulary. The same arguments give a byte-identical file.\n\n"
           "  --arch A          architecture: llama (Mixtral-like), qwen2moe, qwen3moe, olmoe\n"
           "  --out FILE        file to write (created or replaced)\n"
           "  --type T          f32|f16|bf16|q8_0|q4_0|q2_k|q3_k|q4_k|q5_k|q6_k: type of the 2-D/3-D\n"
           "                    weight matrices (default f32 for tiny, q8_0 for bench); 1-D norms and\n"
           "                    biases are F32. k-quants need row lengths that are multiples of 256\n"
           "  --seed N          weight seed, 0..2^64-1 (default %d)\n"
           "  --shape S         tiny|bench|deepseek-v3: default dimensions (default tiny)\n"
           "  --tied            omit output.weight: the output head is token_embd\n"
           "  --variant V       deepseek2: v2-lite (direct q, softmax, 2 shared experts; default)\n"
           "                    or v3 (low-rank q, sigmoid + bias, 4 groups / 2 used, scale 2.5, YaRN)\n"
           "  --split-kv-b      deepseek2: attn_k_b + attn_v_b instead of attn_kv_b\n"
           "  --header-only     with --shape deepseek-v3: metadata and tensor infos only;\n"
           "                    the file ends after the header (no tensor data)\n"
           "  --split N         write the model as N files the way llama.cpp's gguf-split does\n"
           "                    (2..%d; tensors divided in order; split.no/count/tensors.count keys;\n"
           "                    the model's metadata in the first part): --out names the first part\n"
           "                    and must end in -00001-of-0000N.gguf (N = --split, 5 digits)\n"
           "  --chat-template F chatml|mistral|deepseek|qwen3|none: tokenizer.chat_template in the\n"
           "                    family's Jinja form (default chatml for qwen2moe and qwen3moe,\n"
           "                    mistral for llama, none for olmoe)\n"
           "  --vocab-size N    tokens, >= 256 bytes + control tokens (default: tiny 64 merges, bench 4096)\n"
           "  --layers N --hidden N --heads N --kv-heads N --head-dim N\n"
           "  --experts N --top-k N --ff N (expert FFN width) --shared-ff N (qwen2moe only)\n"
           "  --ctx N           context length\n"
           "  --help            this text\n\n",
           GM_DEFAULT_SEED, GM_SPLIT_MAX);
    printf("  %-9s %5s %6s %6s %5s %8s %8s %7s %5s %5s %9s %5s\n", "defaults", "vocab", "layers", "hidden",
           "heads", "kv-heads", "head-dim", "experts", "top-k", "ff", "shared-ff", "ctx");
    for (int a = 0; a < GM_ARCH_COUNT; a++) {
        char vocab[16];
        snprintf(vocab, sizeof(vocab), "%u", 256 + GM_TINY_MERGES + gm_n_control((gm_arch_t)a));
        gm_print_shape_row(gm_archs[a].name, &gm_archs[a].tiny, vocab);
    }
    gm_print_shape_row("bench", &gm_bench_shape, "4096");
    printf("  (bench applies to any --arch; shared-ff is used by qwen2moe only)\n\n"
           "fixed per architecture (rope freq_base, rms eps):");
    for (int a = 0; a < GM_ARCH_COUNT; a++)
        printf("%s %s %g, %g", a ? ";" : "", gm_archs[a].name, gm_archs[a].rope_base, gm_archs[a].eps);
    printf("\n");
}

/* Strict decimal: digits only, no sign, no overflow. */
static uint64_t gm_parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno == ERANGE || v < min || v > max)
        gm_die("--%s '%s': expected a whole number in %llu..%llu", opt, s, (unsigned long long)min,
               (unsigned long long)max);
    return v;
}

static gm_arch_t gm_parse_arch(const char *s)
{
    for (int a = 0; a < GM_ARCH_COUNT; a++)
        if (strcmp(s, gm_archs[a].name) == 0)
            return (gm_arch_t)a;
    gm_die("--arch '%s' is not supported (supported: llama, qwen2moe, qwen3moe, olmoe, deepseek2)", s);
}

static ms_type_t gm_parse_type(const char *s)
{
    for (size_t i = 0; i < sizeof(gm_types) / sizeof(gm_types[0]); i++)
        if (strcmp(s, gm_types[i].name) == 0)
            return gm_types[i].type;
    gm_die("--type '%s' is not supported (supported: f32, f16, bf16, q8_0, q4_0, q2_k, q3_k, q4_k, q5_k, q6_k)", s);
}

static int gm_parse_chat(const char *s)
{
    ms_chat_family_t f;
    if (strcmp(s, "none") == 0)
        return GM_CHAT_NONE;
    if (ms_chat_family_parse(s, &f) == 0)
        return (int)f;
    gm_die("--chat-template '%s' is not supported (supported: chatml, mistral, deepseek, qwen3, none)", s);
}

static void gm_parse_opt(gm_cfg_t *cfg, gm_shape_t *given, int opt, const char *arg, bool *arch_given)
{
    switch (opt) {
    case GM_OPT_ARCH: cfg->arch = gm_parse_arch(arg); *arch_given = true; break;
    case GM_OPT_OUT: cfg->out = arg; break;
    case GM_OPT_TYPE: cfg->type = gm_parse_type(arg); cfg->type_given = true; break;
    case GM_OPT_SEED: cfg->seed = gm_parse_u64("seed", arg, 0, UINT64_MAX); break;
    case GM_OPT_TIED: cfg->tied = true; break;
    case GM_OPT_CHAT: cfg->chat = gm_parse_chat(arg); cfg->chat_given = true; break;
    case GM_OPT_SHAPE:
        if (strcmp(arg, "tiny") != 0 && strcmp(arg, "bench") != 0 && strcmp(arg, "deepseek-v3") != 0)
            gm_die("--shape '%s' is not supported (supported: tiny, bench, deepseek-v3)", arg);
        cfg->bench = strcmp(arg, "bench") == 0;
        cfg->ds_v3_shape = strcmp(arg, "deepseek-v3") == 0;
        break;
    case GM_OPT_VARIANT:
        if (strcmp(arg, "v2-lite") != 0 && strcmp(arg, "v3") != 0)
            gm_die("--variant '%s' is not supported (supported: v2-lite, v3)", arg);
        cfg->variant = strcmp(arg, "v3") == 0 ? GM_DS_V3 : GM_DS_V2_LITE;
        cfg->variant_given = true;
        break;
    case GM_OPT_SPLIT_KV_B: cfg->split_kv_b = true; break;
    case GM_OPT_HEADER_ONLY: cfg->header_only = true; break;
    case GM_OPT_SPLIT: cfg->split = (uint32_t)gm_parse_u64("split", arg, 2, GM_SPLIT_MAX); break;
    default: {
        MS_ASSERT(opt >= GM_OPT_NUM && (size_t)(opt - GM_OPT_NUM) < GM_N_NUM_OPTS);
        const gm_num_opt_t *o = &gm_num_opts[opt - GM_OPT_NUM];
        *gm_shape_field(given, o->off) = (uint32_t)gm_parse_u64(o->name, arg, 1, o->max);
    }
    }
}

/* Fills cfg from argv; exits 0 after --help, 2 on any bad argument. */
static void gm_parse_args(int argc, char **argv, gm_cfg_t *cfg, gm_shape_t *given)
{
    bool arch_given = false;
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", gm_long_opts, NULL)) != -1) {
        if (opt == GM_OPT_HELP) {
            gm_usage();
            exit(0);
        }
        if (opt == ':')
            gm_die("option '%s' needs a value (see --help)", argv[optind - 1]);
        if (opt == '?')
            gm_die("unknown option '%s' (see --help)", argv[optind - 1]);
        gm_parse_opt(cfg, given, opt, optarg, &arch_given);
    }
    if (optind < argc)
        gm_die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!arch_given)
        gm_die("--arch is required (llama, qwen2moe, qwen3moe, olmoe or deepseek2; see --help)");
    if (!cfg->out)
        gm_die("--out FILE is required (see --help)");
}

/* deepseek2's options: only with --arch deepseek2; the real shape only as a header. */
static void gm_ds_options(gm_cfg_t *cfg, const gm_shape_t *given)
{
    bool ds = gm_archs[cfg->arch].mla;
    if (!ds && (cfg->variant_given || cfg->split_kv_b || cfg->ds_v3_shape))
        gm_die("--variant, --split-kv-b and --shape deepseek-v3 apply to --arch deepseek2 only");
    if (cfg->ds_v3_shape && !cfg->header_only)
        gm_die("--shape deepseek-v3 needs --header-only (the weights would be hundreds of GB)");
    if (cfg->header_only && !cfg->ds_v3_shape)
        gm_die("--header-only applies to --shape deepseek-v3 only");
    if (ds && cfg->bench)
        gm_die("--shape bench does not apply to deepseek2 (use tiny, or deepseek-v3 with --header-only)");
    if (ds && given->shared_ff)
        gm_die("--shared-ff does not apply to deepseek2: its shared width is the shared expert count x --ff");
    if (ds)
        cfg->ds = cfg->ds_v3_shape ? gm_dsv3 : gm_ds_tiny[cfg->variant];
}

/* Defaults of the chosen shape, overridden by what the command line gave. */
static void gm_apply_defaults(gm_cfg_t *cfg, const gm_shape_t *given)
{
    const gm_arch_info_t *a = &gm_archs[cfg->arch];
    gm_ds_options(cfg, given);
    cfg->s = cfg->bench ? gm_bench_shape : cfg->ds_v3_shape ? gm_dsv3_shape : a->tiny;
    if (!a->shared_expert)
        cfg->s.shared_ff = 0;
    if (!cfg->bench && !cfg->ds_v3_shape)
        cfg->s.vocab = 256 + GM_TINY_MERGES + gm_n_control(cfg->arch);
    if (!cfg->type_given)
        cfg->type = cfg->bench || cfg->ds_v3_shape ? MS_TYPE_Q8_0 : MS_TYPE_F32;
    if (!cfg->chat_given)
        cfg->chat = a->chat_default;
    if (given->shared_ff && !a->shared_expert)
        gm_die("--shared-ff applies to qwen2moe only (%s has no shared expert)", a->name);
    for (size_t i = 0; i < GM_N_NUM_OPTS; i++) {
        uint32_t v = *gm_shape_field((gm_shape_t *)given, gm_num_opts[i].off);
        if (v)
            *gm_shape_field(&cfg->s, gm_num_opts[i].off) = v;
    }
    if (a->mla)
        cfg->s.shared_ff = cfg->ds.n_shared * cfg->s.ff;
}

/* Row lengths (ne[0]) must be whole blocks of the weight type (32 for Q8_0
 * and Q4_0, 256 for the k-quants). */
static void gm_check_q8_row(const gm_cfg_t *cfg, const char *what, uint32_t n)
{
    const ms_type_traits_t *tr = ms_type_traits(cfg->type);
    if (n % tr->block_elems != 0)
        gm_die("%s = %u is not a multiple of %u, the %s block size (use another --type or size)", what, n,
               tr->block_elems, tr->name);
}

static void gm_validate_ds(const gm_cfg_t *cfg)
{
    const gm_shape_t *s = &cfg->s;
    const gm_ds_t *ds = &cfg->ds;
    if (s->head_dim <= ds->n_rot)
        gm_die("--head-dim %u must exceed deepseek2's %u rotated dims (the key has an unrotated part)", s->head_dim,
               ds->n_rot);
    if (s->layers <= ds->dense_lead)
        gm_die("--layers %u leaves no MoE layer after %u dense ones", s->layers, ds->dense_lead);
    if (s->experts % ds->groups != 0 || s->top_k > ds->groups_used * (s->experts / ds->groups))
        gm_die("--experts %u must split into %u groups whose %u used hold --top-k %u experts", s->experts,
               ds->groups, ds->groups_used, s->top_k);
    if (cfg->split_kv_b) /* attn_k_b's rows; attn_kv_b's are kv_lora long */
        gm_check_q8_row(cfg, "head-dim - rotated dims", s->head_dim - ds->n_rot);
    gm_check_q8_row(cfg, "kv_lora_rank", ds->kv_lora);
    if (ds->q_lora)
        gm_check_q8_row(cfg, "q_lora_rank", ds->q_lora);
    gm_check_q8_row(cfg, "the dense layers' ff", ds->dense_ff);
}

static void gm_validate(const gm_cfg_t *cfg)
{
    const gm_shape_t *s = &cfg->s;
    uint32_t min_vocab = 256 + gm_n_control(cfg->arch);
    if (s->heads % s->kv_heads != 0)
        gm_die("--heads %u is not a multiple of --kv-heads %u", s->heads, s->kv_heads);
    if (s->top_k > s->experts)
        gm_die("--top-k %u exceeds --experts %u", s->top_k, s->experts);
    if (s->head_dim % 2 != 0)
        gm_die("--head-dim %u is odd; RoPE rotates pairs of dimensions", s->head_dim);
    if (s->vocab < min_vocab)
        gm_die("--vocab-size %u is below the %u tokens every model needs (256 bytes + %u control tokens)", s->vocab,
               min_vocab, min_vocab - 256);
    gm_check_q8_row(cfg, "hidden size", s->hidden);
    gm_check_q8_row(cfg, "heads * head-dim", s->heads * s->head_dim);
    gm_check_q8_row(cfg, "ff", s->ff);
    if (s->shared_ff)
        gm_check_q8_row(cfg, "shared-ff", s->shared_ff);
    if (gm_archs[cfg->arch].mla)
        gm_validate_ds(cfg);
}

/* ------------------------------------------------------------------ main */

static void gm_declare_tensors(ms_gguf_writer_t *w, const gm_plan_t *p, bool header_only, uint64_t *ret_total)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        const gm_tensor_t *t = &p->t[i];
        int rc = ms_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne);
        if (rc < 0)
            gm_die("cannot declare tensor '%s': %s", t->name, strerror(-rc));
        total += gm_tensor_bytes(t);
    }
    if (total > GM_FILE_BYTES_MAX && !header_only)
        gm_die("these dimensions make %.1f GB of weights, above the %llu GiB this tool writes", (double)total / 1e9,
               (unsigned long long)(GM_FILE_BYTES_MAX >> 30));
    *ret_total = total;
}

/* The writer's messages name the file already; others get it prepended. */
static void gm_die_io(const char *what, const char *path, const ms_err_t *err, int rc)
{
    if (err->msg[0] && strstr(err->msg, path))
        gm_die("%s: %s", what, err->msg);
    gm_die("%s: %s: %s", what, path, err->msg[0] ? err->msg : strerror(-rc));
}

/* Removes a half-written model, but only a plain file: --out may name a
 * device (/dev/null, /dev/full) or a symlink, which must survive. */
static bool gm_remove_partial(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode) && unlink(path) == 0;
}

/* Header, then every tensor; a partial file is removed so that no truncated
 * model is left behind. */
static void gm_write_file(ms_gguf_writer_t *w, const gm_cfg_t *cfg, const gm_plan_t *p, uint64_t total)
{
    ms_err_t err = {{0}};
    int rc = ms_gguf_writer_begin(w, cfg->out, &err);
    if (rc < 0)
        gm_die_io("cannot create the model file", cfg->out, &err, rc);
    rc = gm_write_data(w, p, cfg, total, &err);
    if (rc == 0)
        rc = ms_gguf_writer_finish(w, &err);
    if (rc < 0) {
        bool removed = gm_remove_partial(cfg->out);
        gm_die_io(removed ? "writing the model failed (partial file removed)" : "writing the model failed", cfg->out,
                  &err, rc);
    }
}

/* The writer streams data right after the header and buffers less than
 * GM_HEADER_FLUSH_BYTES: one chunk of the first tensor that large puts the
 * whole header on disk, and the file is cut back to where the data would
 * begin. Readers that check tensor ranges against the file size refuse the
 * result by design: it describes a model, it does not hold one. */
#define GM_HEADER_FLUSH_BYTES (8u << 20)

static void gm_write_header_only(ms_gguf_writer_t *w, const gm_cfg_t *cfg, const gm_plan_t *p)
{
    MS_ASSERT(p->n > 0 && gm_tensor_bytes(&p->t[0]) >= GM_HEADER_FLUSH_BYTES);
    ms_err_t err = {{0}};
    int rc = ms_gguf_writer_begin(w, cfg->out, &err);
    if (rc < 0)
        gm_die_io("cannot create the model file", cfg->out, &err, rc);
    void *zeros = gm_xcalloc(GM_HEADER_FLUSH_BYTES, 1);
    rc = ms_gguf_writer_write(w, zeros, GM_HEADER_FLUSH_BYTES, &err);
    free(zeros);
    if (rc < 0) {
        gm_remove_partial(cfg->out);
        gm_die_io("writing the header failed (partial file removed)", cfg->out, &err, rc);
    }
    struct stat st;
    if (stat(cfg->out, &st) != 0 || (uint64_t)st.st_size < GM_HEADER_FLUSH_BYTES ||
        truncate(cfg->out, st.st_size - (off_t)GM_HEADER_FLUSH_BYTES) != 0) {
        int e = errno;
        gm_remove_partial(cfg->out);
        gm_die("cannot cut %s back to its header: %s", cfg->out, strerror(e));
    }
}

/* --split N: --out must name the first part the way gguf-split would. */
static void gm_check_split(const gm_cfg_t *cfg, uint32_t n_tensors)
{
    char want[32];
    snprintf(want, sizeof(want), "-%05d-of-%05u.gguf", 1, cfg->split);
    size_t len = strlen(cfg->out);
    if (cfg->header_only)
        gm_die("--split does not apply to --header-only");
    if (len <= GM_SPLIT_SUFFIX_BYTES || strcmp(cfg->out + len - GM_SPLIT_SUFFIX_BYTES, want) != 0)
        gm_die("--split %u: --out '%s' must name the first part, ending in '%s'", cfg->split, cfg->out, want);
    if (cfg->split > n_tensors)
        gm_die("--split %u exceeds the model's %u tensors (every part holds at least one)", cfg->split, n_tensors);
}

/* llama.cpp writes the split keys as u16 (split.tensors.count as i32). */
static int gm_add_u16(ms_gguf_writer_t *w, const char *key, uint16_t v)
{
    ms_gguf_kv_t kv = {.key = {key, strlen(key)}, .type = MS_GGUF_UINT16, .v.u64 = v};
    return ms_gguf_writer_copy_kv(w, &kv);
}

/* Part k of --split N: tensors [lo, hi) of the plan, in order; the first part
 * also carries the model's metadata. */
static void gm_write_part(const gm_cfg_t *cfg, const gm_plan_t *p, const gm_vocab_t *vocab, uint32_t k,
                          ms_progress_t *pr, float *x, void *buf)
{
    uint32_t lo = (uint32_t)((uint64_t)p->n * k / cfg->split), hi = (uint32_t)((uint64_t)p->n * (k + 1) / cfg->split);
    size_t len = strlen(cfg->out), prefix = len - GM_SPLIT_SUFFIX_BYTES;
    char *path = gm_xcalloc(len + 1, 1);
    memcpy(path, cfg->out, prefix);
    snprintf(path + prefix, GM_SPLIT_SUFFIX_BYTES + 1, "-%05u-of-%05u.gguf", (k + 1) % 100000u, cfg->split % 100000u);
    ms_gguf_writer_t *w = ms_gguf_writer_new(GM_ALIGNMENT);
    if (!w)
        gm_die("out of memory");
    if (k == 0) {
        gm_meta_arch(w, cfg);
        gm_meta_tokenizer(w, cfg, vocab);
    }
    int rc = gm_add_u16(w, "split.no", (uint16_t)k);
    rc = rc ? rc : gm_add_u16(w, "split.count", (uint16_t)cfg->split);
    rc = rc ? rc : ms_gguf_writer_add_i32(w, "split.tensors.count", (int32_t)p->n);
    for (uint32_t i = lo; i < hi && rc == 0; i++)
        rc = ms_gguf_writer_add_tensor(w, p->t[i].name, p->t[i].type, p->t[i].n_dims, p->t[i].ne);
    if (rc < 0)
        gm_die("%s: cannot declare the split keys and tensors: %s", path, strerror(-rc));
    ms_err_t err = {{0}};
    rc = ms_gguf_writer_begin(w, path, &err);
    for (uint32_t i = lo; i < hi && rc == 0; i++)
        rc = gm_write_tensor(w, &p->t[i], cfg->seed, x, buf, pr, &err);
    rc = rc ? rc : ms_gguf_writer_finish(w, &err);
    if (rc < 0) {
        bool removed = gm_remove_partial(path);
        gm_die_io(removed ? "writing the part failed (partial file removed)" : "writing the part failed", path, &err,
                  rc);
    }
    ms_gguf_writer_destroy(&w);
    free(path);
}

static void gm_write_split(const gm_cfg_t *cfg, const gm_plan_t *p, const gm_vocab_t *vocab, uint64_t total)
{
    float *x = gm_xcalloc(GM_CHUNK_ELEMS, sizeof(float));
    void *buf = gm_xcalloc(GM_CHUNK_ELEMS, sizeof(float));
    ms_progress_t pr;
    ms_progress_init(&pr, "genmodel", total, GM_PROGRESS_BYTES_MIN);
    for (uint32_t k = 0; k < cfg->split; k++)
        gm_write_part(cfg, p, vocab, k, &pr, x, buf);
    free(buf);
    free(x);
}

int main(int argc, char **argv)
{
    gm_cfg_t cfg = {.seed = GM_DEFAULT_SEED};
    gm_shape_t given = {0};
    gm_parse_args(argc, argv, &cfg, &given);
    gm_apply_defaults(&cfg, &given);
    gm_validate(&cfg);

    gm_vocab_t vocab;
    gm_vocab_build(&vocab, &cfg);
    gm_plan_t plan;
    gm_plan_build(&plan, &cfg);

    ms_gguf_writer_t *w = ms_gguf_writer_new(GM_ALIGNMENT);
    if (!w)
        gm_die("out of memory");
    gm_meta_arch(w, &cfg);
    gm_meta_tokenizer(w, &cfg, &vocab);
    uint64_t total;
    gm_declare_tensors(w, &plan, cfg.header_only, &total);
    if (cfg.split) {
        gm_check_split(&cfg, plan.n);
        gm_write_split(&cfg, &plan, &vocab, total);
    } else if (cfg.header_only)
        gm_write_header_only(w, &cfg, &plan);
    else
        gm_write_file(w, &cfg, &plan, total);

    char size[32];
    gm_fmt_bytes(size, sizeof(size), total);
    fprintf(stderr, "genmodel: wrote %s (%s, %u tensors, %u tokens, %s of weights)\n", cfg.out,
            gm_archs[cfg.arch].name, plan.n, vocab.n, size);
    if (cfg.split)
        fprintf(stderr, "genmodel: as %u parts, %s to %.*s-%05u-of-%05u.gguf\n", cfg.split, cfg.out,
                (int)(strlen(cfg.out) - GM_SPLIT_SUFFIX_BYTES), cfg.out, cfg.split, cfg.split);
    ms_gguf_writer_destroy(&w);
    free(plan.t);
    gm_vocab_free(&vocab);
    return 0;
}
