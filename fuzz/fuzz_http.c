/* libFuzzer target: an HTTP request body as /v1/completions and
 * /v1/chat/completions read it (coord_http_parse_body). Byte 0 selects the
 * endpoint (bit 0), the chat template family (bits 1-2), the tokenizer
 * (bits 3-4) and the context (bit 5: 64 or 4096 positions); the rest is the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_model.h"
#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static volatile unsigned fuzz_sink;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_models_load();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    bool chat = sel & 1;
    ms_chat_family_t fam = (ms_chat_family_t)(((sel >> 1) & 3) % MS_CHAT_COUNT);
    const ms_tokenizer_t *tok = fuzz_tok[((sel >> 3) & 3) % fuzz_n_tok];
    int32_t n_ctx = sel & 32 ? 4096 : 64;
    /* the body in its own allocation, so a read past its end is caught */
    char *body = malloc(size - 1 ? size - 1 : 1);
    memcpy(body, data + 1, size - 1);
    ms_gen_params_t gp;
    char *prompt = NULL;
    ms_err_t err = { { 0 } };
    int rc = coord_http_parse_body(tok, fam, n_ctx, chat, body, size - 1, &gp, &prompt, &err);
    if (rc == 0) {
        /* what the server hands the scheduler must be inside the bounds it promises */
        if (!prompt || gp.n_predict < 1 || gp.n_predict > n_ctx || !(gp.sp.temp >= 0 && gp.sp.temp <= 2) ||
            !(gp.sp.top_p > 0 && gp.sp.top_p <= 1) || gp.sp.repeat_last_n < 0)
            __builtin_trap();
        fuzz_sink += (unsigned char)prompt[strlen(prompt) ? strlen(prompt) - 1 : 0];
        free(prompt);
    } else if (!err.msg[0]) {
        __builtin_trap(); /* every refusal says why */
    }
    free(body);
    return 0;
}
