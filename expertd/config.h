/* expertd's settings: command-line options and the `key = value` config
 * file that uses the same keys (the command line wins). */
#ifndef EXPERTD_CONFIG_H
#define EXPERTD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "log.h"

#define EXPERTD_ADDR_BYTES_MAX 256
#define EXPERTD_PATH_BYTES_MAX 4096
#define EXPERTD_SPEC_BYTES_MAX 4096
#define EXPERTD_CONFIG_BYTES_MAX (1 << 20)
#define EXPERTD_CONFIG_LINE_MAX 8192

typedef struct {
    char listen[EXPERTD_ADDR_BYTES_MAX];   /* ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:5555 */
    char model[EXPERTD_PATH_BYTES_MAX];    /* a host shard or a full GGUF */
    char experts[EXPERTD_SPEC_BYTES_MAX];  /* expert ids for a full GGUF; empty when not given */
    int threads;                           /* compute threads, [1, MS_THREADS_MAX] */
    char key[EXPERTD_PATH_BYTES_MAX];      /* CURVE key pair file (docs/security.md); empty: none */
    char allow[EXPERTD_PATH_BYTES_MAX];    /* allowlist of coordinator public keys; empty: none */
    bool plaintext;                        /* no encryption: accepted only on a loopback listen address */
    char join[EXPERTD_ADDR_BYTES_MAX];     /* coordinator's client endpoint to ask to join; empty: none */
    char advertise[EXPERTD_ADDR_BYTES_MAX];/* this host's endpoint as the coordinator reaches it; empty: listen */
    char coordinator_key[EXPERTD_PATH_BYTES_MAX]; /* the coordinator's public key file (join with key) */
    uint64_t capacity;                     /* bytes of slices offered; 0: the memory available at start */
    ms_log_level_t log_level;
} expertd_config_t;

/* Defaults: no listen address or model, all cores, level info. */
void expertd_config_defaults(expertd_config_t *cfg);

/* Sets one option by its long name (no dashes) from text. -EINVAL with err
 * naming the key and the accepted values; -ENOENT for an unknown key. */
int expertd_config_set(expertd_config_t *cfg, const char *key, const char *value, ms_err_t *err);

/* Reads a config file: `key = value` lines, '#' comments, blank lines.
 * -EINVAL with err "FILE:LINE: ..." for unknown keys and bad values;
 * -ENOENT/-EACCES/-EFBIG/-EIO naming the file. */
int expertd_config_load(expertd_config_t *cfg, const char *path, ms_err_t *err);

/* Parses argv (--config FILE first, then the other options over it).
 * Returns 0 to run, 1 when --help was printed, 2 for a usage error
 * (printed on stderr), 3 when the config file could not be used (err).
 * The security settings are checked too (expertd_config_check_security). */
int expertd_config_parse_args(expertd_config_t *cfg, int argc, char **argv, ms_err_t *err);

/* Parses an expert set "all", "0-15" or "0,3,7-9" over [0, n_expert) into
 * held[n_expert]. -EINVAL with err naming the bad part. */
int expertd_experts_parse(const char *spec, int32_t n_expert, bool *held, ms_err_t *err);

/* Keys (--key and --allow), or --plaintext on a loopback listen address:
 * -EINVAL (a half or contradictory setting) or -EPERM (plaintext beyond
 * loopback, or no keys), with err saying how to make keys. */
int expertd_config_check_security(const expertd_config_t *cfg, ms_err_t *err);

void expertd_usage(void);

/* Whether a --listen endpoint names an address a coordinator can connect to
 * (not a wildcard), so --join can advertise it as it is. */
bool expertd_listen_advertisable(const char *listen);

#endif
