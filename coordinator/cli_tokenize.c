/* moeshard tokenize: the token ids of a text exactly as generation sees them. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "limits.h"
#include "tokenizer.h"

#define CMD "tokenize"

static void tokenize_help(void)
{
    printf("usage: moeshard tokenize --model M.gguf [options] TEXT\n\n"
           "Prints the token ids of TEXT on one line, space-separated, as 'moeshard run'\n"
           "would feed them to the model (BOS included when the model adds it).\n\n"
           "  -m, --model FILE   GGUF model whose tokenizer to use (required)\n"
           "      --pieces       print one token per line: id, tab, the token as stored in the model\n"
           "      --no-bos       do not add BOS even when the model does\n"
           "      --no-special   treat special-token text (e.g. <|im_start|>) as plain text\n"
           "  -h, --help         this help\n");
}

static void print_escaped(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
}

int coord_cmd_tokenize(int argc, char **argv)
{
    enum { OPT_PIECES = 1000, OPT_NOBOS, OPT_NOSPECIAL };
    static const struct option longopts[] = {
        { "model", required_argument, 0, 'm' },  { "pieces", no_argument, 0, OPT_PIECES },
        { "no-bos", no_argument, 0, OPT_NOBOS }, { "no-special", no_argument, 0, OPT_NOSPECIAL },
        { "help", no_argument, 0, 'h' },         { 0, 0, 0, 0 },
    };
    const char *model = NULL;
    bool pieces = false, bos = true, special = true;
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":m:h", longopts, NULL)) != -1;) {
        switch (c) {
        case 'm': model = optarg; break;
        case OPT_PIECES: pieces = true; break;
        case OPT_NOBOS: bos = false; break;
        case OPT_NOSPECIAL: special = false; break;
        case 'h': tokenize_help(); return COORD_EXIT_OK;
        case ':': coord_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]); return COORD_EXIT_USAGE;
        default: coord_usage_error(CMD, "unknown option '%s'", argv[optind - 1]); return COORD_EXIT_USAGE;
        }
    }
    if (!model) {
        coord_usage_error(CMD, "--model is required");
        return COORD_EXIT_USAGE;
    }
    if (optind != argc - 1) {
        coord_usage_error(CMD, "give exactly one TEXT argument (quote it)");
        return COORD_EXIT_USAGE;
    }
    const char *text = argv[optind];
    ms_err_t err = { { 0 } };
    ms_gguf_t *g = NULL;
    ms_tokenizer_t *tok = NULL;
    int32_t *ids = NULL;
    int status = COORD_EXIT_FAIL;
    if (ms_gguf_open(model, &g, &err)) {
        fprintf(stderr, "moeshard tokenize: %s\n", err.msg);
        goto out;
    }
    if (ms_tokenizer_new_from_gguf(g, &tok, &err)) {
        fprintf(stderr, "moeshard tokenize: %s: %s\n", model, err.msg);
        goto out;
    }
    size_t n = 0;
    if (coord_encode(tok, text, strlen(text), bos && ms_tokenizer_add_bos(tok), special, &ids, &n)) {
        fprintf(stderr, "moeshard tokenize: the text could not be tokenized (at most %d tokens)\n",
                MS_PROMPT_TOKENS_MAX);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (pieces) {
            size_t pl;
            const char *p = ms_tokenizer_token_text(tok, ids[i], &pl);
            printf("%d\t", ids[i]);
            print_escaped(p, pl);
            putchar('\n');
        } else {
            printf(i ? " %d" : "%d", ids[i]);
        }
    }
    if (!pieces)
        putchar('\n');
    status = COORD_EXIT_OK;
out:
    free(ids);
    ms_tokenizer_destroy(&tok);
    ms_gguf_close(&g);
    return status;
}
