/* moeshard: the coordinator's command line entry point. */
#include <stdio.h>
#include <string.h>

#include "cli.h"


static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    { "run", coord_cmd_run, "generate text from a prompt in this process (experts here or on expertd hosts)" },
    { "tokenize", coord_cmd_tokenize, "print the token ids of a text as generation sees them" },
    { "inspect", coord_cmd_inspect, "describe a GGUF model: architecture, shapes, tensor types, sizes" },
    { "pack", coord_cmd_pack, "split a model into a dense part and one expert shard per host" },
    { "plan", coord_cmd_plan, "from a model's header: hosts and memory a cluster needs, network per token" },
    { "serve", coord_cmd_serve, "run the coordinator: serve clients, experts in-process or on expertd hosts" },
    { "generate", coord_cmd_generate, "send a prompt to a running coordinator and stream the text" },
    { "status", coord_cmd_status, "show a running coordinator's requests, speed and hosts" },
    { "chat", coord_cmd_chat, "talk with a running coordinator's model, using its chat template" },
    { "keygen", coord_cmd_keygen, "make a CURVE key pair for encrypted, authenticated links" },
};

static void usage(FILE *out)
{
    fprintf(out, "usage: moeshard COMMAND [OPTIONS]\n\n"
                 "moeshard serves Mixture-of-Experts language models from GGUF files.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "\n'moeshard COMMAND --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return COORD_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return COORD_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moeshard: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return COORD_EXIT_USAGE;
}
