/* expertd options from the command line and the config file: one setter
 * per key, shared by both, so both accept and refuse exactly the same. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curve.h"
#include "limits.h"
#include "pool.h"

void expertd_usage(void)
{
    printf("usage: expertd --listen tcp://ADDR:PORT --model FILE [options]\n"
           "Serves the expert FFNs of a MoE model to a moeshard coordinator: loads its\n"
           "(layer, expert) slices with io_uring, then answers ExpertBatch requests.\n"
           "\n"
           "  --listen EP      ZeroMQ endpoint to bind (ROUTER), e.g. tcp://127.0.0.1:5555\n"
           "  --model FILE     a host shard from 'moeshard pack' or a full GGUF model\n"
           "  --experts SPEC   full GGUF only: expert ids held in every layer,\n"
           "                   'all', '0-15' or '0,3,7-9' (default all), or 'none':\n"
           "                   hold nothing until the coordinator assigns slices (Load)\n"
           "  --threads T      compute threads (default: the online CPUs)\n"
           "  --key FILE       this host's CURVE key pair ('moeshard keygen'): links are\n"
           "                   encrypted and the coordinator checks who it talks to\n"
           "  --allow FILE     public keys admitted (the coordinators'), one per line\n"
           "  --plaintext      no encryption; accepted only on a loopback --listen\n"
           "  --join EP        ask the coordinator at EP (its client endpoint) to add this\n"
           "                   host to its placement; repeated every 2 s, so a restarted\n"
           "                   coordinator finds the host again\n"
           "  --advertise EP   this host's endpoint as the coordinator reaches it\n"
           "                   (default: --listen, unless it binds a wildcard address)\n"
           "  --coordinator-key FILE  the coordinator's public key, for --join with --key\n"
           "  --capacity SIZE  bytes of expert slices this host offers to hold, e.g. 20GiB\n"
           "                   (default: the memory available at start); the coordinator\n"
           "                   gives hosts shares in proportion\n"
           "  --config FILE    'key = value' lines with the keys above (listen, model,\n"
           "                   experts, threads, key, allow, plaintext = true, join,\n"
           "                   advertise, coordinator-key, capacity,\n"
           "                   log-level); options given here win\n"
           "  --log-level L    error|warn|info|debug (default info)\n"
           "  --help           this text\n");
}

void expertd_config_defaults(expertd_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->threads = ms_pool_default_threads();
    if (cfg->threads > MS_THREADS_MAX)
        cfg->threads = MS_THREADS_MAX;
    cfg->log_level = MS_LOG_INFO;
}

static int set_text(char *dst, size_t cap, const char *key, const char *value, ms_err_t *err)
{
    size_t len = strlen(value);
    if (len == 0 || len >= cap) {
        ms_err_set(err, "%s: expects a value of 1 to %zu bytes", key, cap - 1);
        return -EINVAL;
    }
    memcpy(dst, value, len + 1);
    return 0;
}

static int set_threads(expertd_config_t *cfg, const char *value, ms_err_t *err)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end != '\0' || v < 1 || v > MS_THREADS_MAX) {
        ms_err_set(err, "threads: expects a whole number in [1, %d], got '%s'", MS_THREADS_MAX, value);
        return -EINVAL;
    }
    cfg->threads = (int)v;
    return 0;
}

/* "20GiB", "512MiB", "1.5TiB", "64GB" or plain bytes. */
static int set_capacity(expertd_config_t *cfg, const char *value, ms_err_t *err)
{
    static const struct { const char *suffix; double mult; } units[] = {
        { "", 1 }, { "B", 1 }, { "KiB", 1024.0 }, { "MiB", 1048576.0 }, { "GiB", 1073741824.0 },
        { "TiB", 1099511627776.0 }, { "KB", 1e3 }, { "MB", 1e6 }, { "GB", 1e9 }, { "TB", 1e12 },
    };
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    for (size_t i = 0; !errno && end != value && v > 0 && i < sizeof(units) / sizeof(units[0]); i++) {
        double bytes = v * units[i].mult;
        if (strcmp(end, units[i].suffix) == 0 && bytes >= 1048576.0 && bytes < 1.8e19) {
            cfg->capacity = (uint64_t)bytes;
            return 0;
        }
    }
    ms_err_set(err, "capacity: expects a size of at least 1 MiB such as 20GiB, 512MiB or 64GB, got '%s'", value);
    return -EINVAL;
}

static int set_bool(bool *dst, const char *key, const char *value, ms_err_t *err)
{
    if (!strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "1")) {
        *dst = true;
        return 0;
    }
    if (!strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "0")) {
        *dst = false;
        return 0;
    }
    ms_err_set(err, "%s: expects true or false, got '%s'", key, value);
    return -EINVAL;
}

int expertd_config_set(expertd_config_t *cfg, const char *key, const char *value, ms_err_t *err)
{
    if (strcmp(key, "listen") == 0)
        return set_text(cfg->listen, sizeof(cfg->listen), key, value, err);
    if (strcmp(key, "model") == 0)
        return set_text(cfg->model, sizeof(cfg->model), key, value, err);
    if (strcmp(key, "experts") == 0)
        return set_text(cfg->experts, sizeof(cfg->experts), key, value, err);
    if (strcmp(key, "threads") == 0)
        return set_threads(cfg, value, err);
    if (strcmp(key, "key") == 0)
        return set_text(cfg->key, sizeof(cfg->key), key, value, err);
    if (strcmp(key, "allow") == 0)
        return set_text(cfg->allow, sizeof(cfg->allow), key, value, err);
    if (strcmp(key, "plaintext") == 0)
        return set_bool(&cfg->plaintext, key, value, err);
    if (strcmp(key, "join") == 0)
        return set_text(cfg->join, sizeof(cfg->join), key, value, err);
    if (strcmp(key, "advertise") == 0)
        return set_text(cfg->advertise, sizeof(cfg->advertise), key, value, err);
    if (strcmp(key, "coordinator-key") == 0)
        return set_text(cfg->coordinator_key, sizeof(cfg->coordinator_key), key, value, err);
    if (strcmp(key, "capacity") == 0)
        return set_capacity(cfg, value, err);
    if (strcmp(key, "log-level") == 0) {
        if (ms_log_parse_level(value, &cfg->log_level) == 0)
            return 0;
        ms_err_set(err, "log-level: expects error, warn, info or debug, got '%s'", value);
        return -EINVAL;
    }
    ms_err_set(err, "unknown key '%s' (listen, model, experts, threads, key, allow, plaintext, join, advertise, "
                    "coordinator-key, capacity, log-level)", key);
    return -ENOENT;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* One line of the file; blank and comment lines are fine. */
static int config_line(expertd_config_t *cfg, char *line, const char *path, int lineno, ms_err_t *err)
{
    char *s = trim(line);
    if (*s == '\0' || *s == '#')
        return 0;
    char *eq = strchr(s, '=');
    if (!eq) {
        ms_err_set(err, "%s:%d: expected 'key = value'", path, lineno);
        return -EINVAL;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    ms_err_t e = { { 0 } };
    if (expertd_config_set(cfg, key, value, &e)) {
        ms_err_set(err, "%s:%d: %s", path, lineno, e.msg);
        return -EINVAL;
    }
    return 0;
}

int expertd_config_load(expertd_config_t *cfg, const char *path, ms_err_t *err)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        int rc = -errno;
        ms_err_set(err, "%s: %s", path, strerror(-rc));
        return rc;
    }
    char *line = malloc(EXPERTD_CONFIG_LINE_MAX);
    int rc = line ? 0 : -ENOMEM, lineno = 0;
    long total = 0;
    while (!rc && fgets(line, EXPERTD_CONFIG_LINE_MAX, fp)) {
        lineno++;
        size_t n = strlen(line);
        total += (long)n;
        if (total > EXPERTD_CONFIG_BYTES_MAX) {
            ms_err_set(err, "%s: larger than %d bytes", path, EXPERTD_CONFIG_BYTES_MAX);
            rc = -EFBIG;
        } else if (n == EXPERTD_CONFIG_LINE_MAX - 1 && line[n - 1] != '\n' && !feof(fp)) {
            ms_err_set(err, "%s:%d: line longer than %d bytes", path, lineno, EXPERTD_CONFIG_LINE_MAX - 2);
            rc = -EINVAL;
        } else {
            rc = config_line(cfg, line, path, lineno, err);
        }
    }
    if (!rc && ferror(fp)) {
        ms_err_set(err, "%s: read error", path);
        rc = -EIO;
    }
    free(line);
    fclose(fp);
    return rc;
}

static const struct option long_opts[] = {
    { "listen", required_argument, NULL, 'l' },    { "model", required_argument, NULL, 'm' },
    { "experts", required_argument, NULL, 'e' },   { "threads", required_argument, NULL, 't' },
    { "config", required_argument, NULL, 'c' },    { "log-level", required_argument, NULL, 'L' },
    { "key", required_argument, NULL, 'k' },       { "allow", required_argument, NULL, 'a' },
    { "plaintext", no_argument, NULL, 'P' },       { "join", required_argument, NULL, 'j' },
    { "advertise", required_argument, NULL, 'A' }, { "coordinator-key", required_argument, NULL, 'K' },
    { "capacity", required_argument, NULL, 'C' },
    { "help", no_argument, NULL, 'h' },            { NULL, 0, NULL, 0 },
};

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "expertd: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'expertd --help')\n");
    va_end(ap);
}

/* First pass: only --config and --help, so the file is read before the
 * options that override it. */
static int first_pass(expertd_config_t *cfg, int argc, char **argv, ms_err_t *err)
{
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        if (c == 'h') {
            expertd_usage();
            return 1;
        }
        if (c == 'c' && expertd_config_load(cfg, optarg, err))
            return 3;
    }
    return 0;
}

int expertd_config_parse_args(expertd_config_t *cfg, int argc, char **argv, ms_err_t *err)
{
    int rc = first_pass(cfg, argc, argv, err);
    if (rc)
        return rc;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        if (c == '?') {
            usage_error("unknown option or missing value '%s'", argv[optind - 1]);
            return 2;
        }
        if (c == 'c')
            continue;
        const char *key = c == 'l' ? "listen" : c == 'm' ? "model" : c == 'e' ? "experts" : c == 't' ? "threads"
                        : c == 'k' ? "key" : c == 'a' ? "allow" : c == 'P' ? "plaintext" : c == 'j' ? "join"
                        : c == 'A' ? "advertise" : c == 'K' ? "coordinator-key" : c == 'C' ? "capacity" : "log-level";
        ms_err_t e = { { 0 } };
        if (expertd_config_set(cfg, key, c == 'P' ? "true" : optarg, &e)) {
            usage_error("--%s", e.msg);
            return 2;
        }
    }
    if (optind < argc) {
        usage_error("unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (!cfg->listen[0] || !cfg->model[0]) {
        usage_error("%s", !cfg->listen[0] ? "--listen is required" : "--model is required");
        return 2;
    }
    ms_err_t e = { { 0 } };
    if (expertd_config_check_security(cfg, &e)) {
        fprintf(stderr, "expertd: %s\n", e.msg);
        return 2;
    }
    return 0;
}

bool expertd_listen_advertisable(const char *listen)
{
    return !strstr(listen, "://*:") && !strstr(listen, "://0.0.0.0:") && !strstr(listen, "://[::]:") &&
           !strstr(listen, "://[*]:");
}

int expertd_config_check_security(const expertd_config_t *cfg, ms_err_t *err)
{
    bool keys = cfg->key[0] || cfg->allow[0];
    if (keys && cfg->plaintext) {
        ms_err_set(err, "--plaintext and --key/--allow exclude each other");
        return -EINVAL;
    }
    if (keys && (!cfg->key[0] || !cfg->allow[0])) {
        ms_err_set(err, "%s", cfg->key[0] ? "--key needs --allow FILE: the public keys of the coordinators to admit"
                                          : "--allow needs --key FILE: this host's key pair");
        return -EINVAL;
    }
    if (cfg->join[0] && keys && !cfg->coordinator_key[0]) {
        ms_err_set(err, "--join with --key needs --coordinator-key FILE: the coordinator's public key");
        return -EINVAL;
    }
    if (cfg->join[0] && !cfg->advertise[0] && !expertd_listen_advertisable(cfg->listen)) {
        ms_err_set(err, "--join: --listen %s binds a wildcard address; say how the coordinator reaches this host "
                        "with --advertise tcp://HOST:PORT", cfg->listen);
        return -EINVAL;
    }
    if (keys)
        return 0;
    const char *eps[2] = { cfg->listen, cfg->join };
    if (!cfg->plaintext) {
        ms_err_set(err, "no keys: make a key pair with 'moeshard keygen --out NAME' and pass --key NAME.key "
                        "--allow FILE (the coordinators' public keys), or --plaintext on a loopback address "
                        "(docs/security.md)");
        return -EPERM;
    }
    return ms_curve_plaintext_check(eps, cfg->join[0] ? 2 : 1, err);
}

/* One "a" or "a-b" element of a spec. */
static int spec_range(const char *part, int32_t n_expert, bool *held, ms_err_t *err)
{
    char *end;
    errno = 0;
    long a = strtol(part, &end, 10), b = a;
    if (!errno && end != part && *end == '-') {
        const char *s = end + 1;
        b = strtol(s, &end, 10);
        if (end == s)
            end = (char *)s - 1; /* "3-" is malformed */
    }
    if (errno || end == part || *end != '\0' || !isdigit((unsigned char)part[0]) || a > b || b >= n_expert) {
        ms_err_set(err, "expert set: '%s' is not an id or a range a-b with a <= b < %d", part, n_expert);
        return -EINVAL;
    }
    for (long e = a; e <= b; e++)
        held[e] = true;
    return 0;
}

int expertd_experts_parse(const char *spec, int32_t n_expert, bool *held, ms_err_t *err)
{
    memset(held, 0, sizeof(bool) * (size_t)n_expert);
    if (strcmp(spec, "all") == 0) {
        memset(held, 1, sizeof(bool) * (size_t)n_expert);
        return 0;
    }
    size_t len = strlen(spec);
    if (len == 0 || len >= EXPERTD_SPEC_BYTES_MAX) {
        ms_err_set(err, "expert set: empty or longer than %d bytes", EXPERTD_SPEC_BYTES_MAX - 1);
        return -EINVAL;
    }
    char buf[EXPERTD_SPEC_BYTES_MAX];
    memcpy(buf, spec, len + 1);
    char *save = NULL;
    int n_parts = 0;
    for (char *part = strtok_r(buf, ",", &save); part; part = strtok_r(NULL, ",", &save), n_parts++) {
        int rc = spec_range(part, n_expert, held, err);
        if (rc)
            return rc;
    }
    if (n_parts == 0 || spec[0] == ',' || spec[len - 1] == ',' || strstr(spec, ",,")) {
        ms_err_set(err, "expert set: '%s' has an empty element", spec);
        return -EINVAL;
    }
    return 0;
}
