/* libFuzzer target: the daemons' config files and option values. Byte 0
 * selects what reads the rest: 0 expertd's config file
 * (expertd_config_load), 1 `moeshard serve --config`'s file parser, 2
 * expertd's expert set (expertd_experts_parse over byte 1 experts), 3 one
 * expertd `key=value` (expertd_config_set). Files are handed over as a
 * memfd, so the parsers read them exactly as they read a file on disk. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../expertd/config.h"

/* The serve command's parser is static to its file: the target compiles
 * that file in, instead of widening the command's interface for a test. */
#include "../coordinator/cli_serve.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile unsigned config_sink;

/* A memfd holding buf[0..len), named by path; -1 when it cannot be made. */
static int config_file(const uint8_t *buf, size_t len, char path[64])
{
    int fd = memfd_create("fuzz-config", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    if (len && write(fd, buf, len) != (ssize_t)len) {
        close(fd);
        return -1;
    }
    snprintf(path, 64, "/proc/self/fd/%d", fd);
    return fd;
}

static void expertd_file(const uint8_t *buf, size_t len)
{
    char path[64];
    int fd = config_file(buf, len, path);
    if (fd < 0)
        return;
    expertd_config_t cfg;
    expertd_config_defaults(&cfg);
    ms_err_t err = { { 0 } };
    if (expertd_config_load(&cfg, path, &err) == 0) {
        /* every accepted value is NUL-terminated inside its field */
        if (!memchr(cfg.listen, 0, sizeof(cfg.listen)) || !memchr(cfg.model, 0, sizeof(cfg.model)) ||
            !memchr(cfg.experts, 0, sizeof(cfg.experts)) || cfg.threads < 1 || cfg.threads > MS_THREADS_MAX)
            __builtin_trap();
    } else if (!err.msg[0]) {
        __builtin_trap();
    }
    close(fd);
}

static void serve_file(const uint8_t *buf, size_t len)
{
    char path[64];
    int fd = config_file(buf, len, path);
    if (fd < 0)
        return;
    serve_opts_t o = { .config = path };
    char *cbuf = NULL;
    if (read_config(path, &o, &cbuf) == 0) {
        const char *texts[] = { o.model_path, o.hosts, o.listen, o.http, o.name };
        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
            config_sink += texts[i] ? (unsigned char)texts[i][strlen(texts[i]) ? strlen(texts[i]) - 1 : 0] : 0;
    }
    free(cbuf);
    close(fd);
}

static void experts_spec(const uint8_t *buf, size_t len)
{
    if (len < 1)
        return;
    int32_t n_expert = buf[0] ? buf[0] : 1;
    char *spec = strndup((const char *)buf + 1, len - 1);
    bool held[256];
    ms_err_t err = { { 0 } };
    if (spec && expertd_experts_parse(spec, n_expert, held, &err) != 0 && !err.msg[0])
        __builtin_trap();
    free(spec);
}

static void one_option(const uint8_t *buf, size_t len)
{
    char *kv = strndup((const char *)buf, len);
    if (!kv)
        return;
    char *eq = strchr(kv, '=');
    expertd_config_t cfg;
    expertd_config_defaults(&cfg);
    ms_err_t err = { { 0 } };
    if (eq) {
        *eq = '\0';
        if (expertd_config_set(&cfg, kv, eq + 1, &err) != 0 && !err.msg[0])
            __builtin_trap();
    }
    free(kv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] & 3) {
    case 0: expertd_file(data + 1, size - 1); break;
    case 1: serve_file(data + 1, size - 1); break;
    case 2: experts_spec(data + 1, size - 1); break;
    default: one_option(data + 1, size - 1); break;
    }
    return 0;
}
