/* Argument parsing and file helpers shared by the sub-commands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "limits.h"
#include "progress.h"
#include "tokenizer.h"

void coord_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moeshard %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'moeshard %s --help')\n", cmd);
    va_end(ap);
}

bool coord_parse_i64(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *ret)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        coord_usage_error(cmd, "%s expects a whole number in [%lld, %lld], got '%s'", opt, (long long)lo,
                          (long long)hi, s);
        return false;
    }
    *ret = v;
    return true;
}

bool coord_parse_f32(const char *cmd, const char *opt, const char *s, float lo, float hi, float *ret)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
        coord_usage_error(cmd, "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, s);
        return false;
    }
    *ret = v;
    return true;
}

bool coord_parse_kv_type(const char *cmd, const char *s, ms_type_t *ret)
{
    if (ms_kv_type_parse(s, ret) == 0)
        return true;
    coord_usage_error(cmd, "--kv-type expects f16 or f32, got '%s'", s);
    return false;
}

int coord_read_file(const char *path, uint64_t max_bytes, char **ret_buf, uint64_t *ret_len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return -errno;
    uint64_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    int rc = buf ? 0 : -ENOMEM;
    while (!rc) {
        if (len == cap) {
            if (cap >= max_bytes) {
                rc = -EFBIG;
                break;
            }
            cap = cap * 2 > max_bytes ? max_bytes : cap * 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0) {
            rc = ferror(fp) ? -EIO : 1;
        }
    }
    fclose(fp);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[len] = '\0';
    *ret_buf = buf;
    *ret_len = len;
    return 0;
}

int coord_encode(const ms_tokenizer_t *tok, const char *text, size_t len, bool add_bos, bool parse_special,
                 int32_t **ret_ids, size_t *ret_n)
{
    size_t cap = len + 8 < MS_PROMPT_TOKENS_MAX ? len + 8 : MS_PROMPT_TOKENS_MAX;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *ids = malloc(cap * sizeof(*ids));
        if (!ids)
            return -ENOMEM;
        size_t n = 0;
        int rc = ms_tokenizer_encode(tok, text, len, add_bos, parse_special, ids, cap, &n);
        if (rc == 0) {
            *ret_ids = ids;
            *ret_n = n;
            return 0;
        }
        free(ids);
        if (rc != -ENOSPC || n > MS_PROMPT_TOKENS_MAX)
            return rc;
        cap = n; /* the tokenizer said how many it needs */
    }
    return -ENOSPC;
}

typedef struct {
    ms_progress_t p;
    char label[64];
    uint64_t done;
    bool started;
} open_progress_t;

static void open_progress(void *ctx, uint64_t done, uint64_t total)
{
    open_progress_t *op = ctx;
    if (!op->started) {
        ms_progress_init(&op->p, op->label, total, (uint64_t)256 << 20);
        op->started = true;
    }
    if (done > op->done) {
        ms_progress_add(&op->p, done - op->done);
        op->done = done;
    }
}

int coord_model_open(const char *cmd, const char *path, bool dense, bool mmap, ms_model_t **ret_model, ms_err_t *err)
{
    open_progress_t op = { 0 };
    snprintf(op.label, sizeof(op.label), "moeshard %s: reading the weights", cmd);
    ms_model_open_params_t p = { .dense = dense, .mmap = mmap, .progress = open_progress, .progress_ctx = &op };
    return ms_model_open(path, &p, ret_model, err);
}
