/* libFuzzer target: arbitrary bytes through the tokenizer of a generated
 * model and back. Byte 0 selects the tokenizer (bits 0-1), add_bos (bit 2),
 * parse_special (bit 3) and a small output capacity (bit 4, the -ENOSPC
 * path); the rest is the text. Checks: the count is the same whatever the
 * capacity, every id is in the vocabulary, the pieces of a text read
 * without special tokens give back exactly its bytes (byte-level BPE is
 * lossless), and the UTF-8 stream emits valid UTF-8 only. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_model.h"

#define FUZZ_SMALL_CAP 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_models_load();
    return 0;
}

/* Length of the valid UTF-8 prefix of s[0..n) (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4))
            return i;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] >= 0xa0) || (c == 0xf0 && s[i + 1] < 0x90) ||
            (c == 0xf4 && s[i + 1] >= 0x90))
            return i;
        i += len;
    }
    return i;
}

/* Pieces back to bytes, directly and through the UTF-8 stream. */
static void check_pieces(const ms_tokenizer_t *t, const int32_t *ids, size_t n, const char *text, size_t len,
                         bool lossless)
{
    char *out = malloc(3 * MS_TOKEN_BYTES_MAX + 8);
    size_t at = 0;
    ms_utf8_stream_t us;
    ms_utf8_stream_init(&us);
    for (size_t i = 0; i < n; i++) {
        size_t plen = 0;
        const char *p = ms_tokenizer_piece(t, ids[i], &plen);
        if (!p || plen > MS_TOKEN_BYTES_MAX)
            __builtin_trap();
        if (lossless && (at + plen > len || memcmp(text + at, p, plen)))
            __builtin_trap(); /* a piece that is not the text's next bytes */
        at += plen;
        size_t o = ms_utf8_stream_push(&us, p, plen, out);
        if (utf8_valid_prefix((unsigned char *)out, o) != o)
            __builtin_trap();
    }
    size_t o = ms_utf8_stream_finish(&us, out);
    if (utf8_valid_prefix((unsigned char *)out, o) != o || (lossless && at != len))
        __builtin_trap();
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    const ms_tokenizer_t *t = fuzz_tok[(sel & 3) % fuzz_n_tok];
    bool add_bos = sel & 4, special = sel & 8, small = sel & 16;
    size_t len = size - 1;
    char *text = malloc(len ? len : 1); /* its own allocation, so a read past its end is caught */
    memcpy(text, data + 1, len);
    size_t n = 0, n_small = 0;
    int32_t *ids = NULL;
    int rc = ms_tokenizer_encode(t, text, len, add_bos, special, NULL, 0, &n);
    if (rc && rc != -ENOSPC)
        goto out;
    if (small) {
        int32_t few[FUZZ_SMALL_CAP];
        rc = ms_tokenizer_encode(t, text, len, add_bos, special, few, FUZZ_SMALL_CAP, &n_small);
        if (n_small != n || (rc == -ENOSPC) != (n > FUZZ_SMALL_CAP))
            __builtin_trap();
    }
    ids = malloc((n ? n : 1) * sizeof(*ids));
    rc = ms_tokenizer_encode(t, text, len, add_bos, special, ids, n, &n_small);
    if (rc || n_small != n)
        __builtin_trap();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= ms_tokenizer_n_vocab(t))
            __builtin_trap();
    size_t skip = add_bos && ms_tokenizer_add_bos(t) && n ? 1 : 0;
    check_pieces(t, ids + skip, n - skip, text, len, !special);
out:
    free(ids);
    free(text);
    return 0;
}
