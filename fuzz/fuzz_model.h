/* The tokenizers the fuzz targets read text with, built once from the
 * generated models named in MS_FUZZ_MODELS (paths separated by ':'). */
#ifndef FUZZ_MODEL_H
#define FUZZ_MODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

#define FUZZ_MODELS_MAX 4

static ms_tokenizer_t *fuzz_tok[FUZZ_MODELS_MAX];
static int fuzz_n_tok;

/* Exits with a message when no model is given or one cannot be read: a
 * target without its tokenizer would test nothing. */
static void fuzz_models_load(void)
{
    const char *env = getenv("MS_FUZZ_MODELS");
    if (!env || !*env) {
        fprintf(stderr, "fuzz: set MS_FUZZ_MODELS to one or more GGUF models (':'-separated; see fuzz/run.sh)\n");
        exit(2);
    }
    char *list = strdup(env), *save = NULL;
    for (char *path = strtok_r(list, ":", &save); path && fuzz_n_tok < FUZZ_MODELS_MAX;
         path = strtok_r(NULL, ":", &save)) {
        ms_gguf_t *g = NULL;
        ms_err_t err = { { 0 } };
        if (ms_gguf_open(path, &g, &err) || ms_tokenizer_new_from_gguf(g, &fuzz_tok[fuzz_n_tok], &err)) {
            fprintf(stderr, "fuzz: %s: %s\n", path, err.msg);
            exit(2);
        }
        ms_gguf_close(&g);
        fuzz_n_tok++;
    }
    free(list);
}

#endif
