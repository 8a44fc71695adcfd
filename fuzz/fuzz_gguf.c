/* libFuzzer target: a GGUF file from hostile bytes, through the reader and
 * everything that reads a model's metadata (hyperparameters, tokenizer,
 * chat template, shard layout, the model's tensors). Nothing may crash or
 * read outside the buffer, whatever the verdict. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "chat.h"
#include "gguf.h"
#include "model.h"
#include "shard.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t fuzz_sink; /* keeps the reads below from being optimised away */

/* Reads every byte the reader says is inside the buffer. */
static void touch_str(ms_str_t s)
{
    for (uint64_t i = 0; i < s.len; i++)
        fuzz_sink += (unsigned char)s.ptr[i];
}

static void walk(const ms_gguf_t *g)
{
    for (uint64_t i = 0; i < ms_gguf_n_kv(g); i++) {
        const ms_gguf_kv_t *kv = ms_gguf_kv(g, i);
        touch_str(kv->key);
        if (kv->type == MS_GGUF_STRING)
            touch_str(kv->v.str);
        if (kv->type == MS_GGUF_ARRAY && kv->arr_type == MS_GGUF_STRING)
            for (uint64_t k = 0; k < kv->arr_n; k++)
                touch_str(kv->arr_strs[k]);
        else if (kv->type == MS_GGUF_ARRAY && kv->arr_n)
            fuzz_sink += ((const unsigned char *)kv->arr_data)[0];
    }
    for (uint64_t i = 0; i < ms_gguf_n_tensors(g); i++) {
        const ms_gguf_tensor_t *t = ms_gguf_tensor(g, i);
        touch_str(t->name);
        if (t->nbytes && t->data) /* first and last byte: the reader vouched for [data, data + nbytes) */
            fuzz_sink += ((const unsigned char *)t->data)[0] + ((const unsigned char *)t->data)[t->nbytes - 1];
    }
}

static void readers(const ms_gguf_t *g)
{
    ms_err_t err = { { 0 } };
    ms_hparams_t hp;
    (void)ms_hparams_read(g, &hp, &err);
    ms_chat_family_t fam;
    (void)ms_chat_detect(g, &fam, &err);
    ms_shard_t *sh = NULL;
    if (ms_shard_open(g, &sh, &err) == 0)
        ms_shard_destroy(&sh);
    ms_tokenizer_t *tok = NULL;
    if (ms_tokenizer_new_from_gguf(g, &tok, &err) == 0) {
        static const char text[] = "Hello <|im_start|> world \xe2\x96\x81 \xff 123";
        int32_t ids[64];
        size_t n = 0;
        (void)ms_tokenizer_encode(tok, text, sizeof(text) - 1, true, true, ids, 64, &n);
        for (size_t i = 0; i < n && i < 64; i++) {
            size_t len = 0;
            const char *p = ms_tokenizer_piece(tok, ids[i], &len);
            for (size_t k = 0; p && k < len; k++)
                fuzz_sink += (unsigned char)p[k];
        }
        ms_tokenizer_destroy(&tok);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ms_gguf_t *g = NULL;
    ms_err_t err = { { 0 } };
    if (ms_gguf_open_mem(data, size, "fuzz.gguf", &g, &err) != 0)
        return 0;
    walk(g);
    readers(g);
    ms_model_t *m = NULL;
    if (ms_model_from_gguf(&g, &m, &err) == 0) /* consumes g */
        ms_model_destroy(&m);
    ms_gguf_close(&g);
    return 0;
}
