/* moeshard keygen: makes a CURVE key pair for a coordinator, an expert host
 * or a client (docs/security.md): PREFIX.key (secret) and PREFIX.pub. */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "curve.h"

#define CMD "keygen"

static void keygen_help(void)
{
    printf("usage: moeshard keygen --out PREFIX [--force]\n\n"
           "Makes a CURVE key pair for encrypted, authenticated links (docs/security.md):\n"
           "  PREFIX.key  the pair ('public = ...', 'secret = ...'), mode 0600: stays on this machine;\n"
           "              pass it with --key to expertd, 'moeshard serve', 'run', 'generate', 'chat', 'status'\n"
           "  PREFIX.pub  the public key: add it to the --allow list of the daemons this one connects to,\n"
           "              or give it to clients (--server-key) and coordinators (--host-keys)\n\n"
           "  -o, --out PREFIX   where to write (required)\n"
           "  -f, --force        replace existing files\n"
           "  -h, --help         this help\n");
}

int coord_cmd_keygen(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "out", required_argument, 0, 'o' }, { "force", no_argument, 0, 'f' },
        { "help", no_argument, 0, 'h' },      { 0, 0, 0, 0 },
    };
    const char *prefix = NULL;
    bool force = false;
    opterr = 0;
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, ":o:fh", longopts, NULL)) != -1;) {
        if (c == 'h') {
            keygen_help();
            return COORD_EXIT_OK;
        }
        if (c == 'o')
            prefix = optarg;
        else if (c == 'f')
            force = true;
        else {
            coord_usage_error(CMD, c == ':' ? "option '%s' needs a value" : "unknown option '%s'", argv[optind - 1]);
            return COORD_EXIT_USAGE;
        }
    }
    if (!prefix || !*prefix || optind != argc) {
        coord_usage_error(CMD, "expected --out PREFIX and no other arguments");
        return COORD_EXIT_USAGE;
    }
    ms_curve_keypair_t kp;
    ms_err_t err = { { 0 } };
    int rc = ms_curve_keypair_generate(&kp, &err);
    rc = rc ? rc : ms_curve_keypair_write(prefix, &kp, force, &err);
    if (rc) {
        fprintf(stderr, "moeshard keygen: %s\n", err.msg);
        memset(&kp, 0, sizeof(kp));
        return COORD_EXIT_FAIL;
    }
    printf("wrote %s.key (key pair, secret, mode 0600) and %s.pub\npublic key %s\n", prefix, prefix, kp.pub);
    memset(&kp, 0, sizeof(kp));
    return COORD_EXIT_OK;
}
