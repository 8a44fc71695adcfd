/* The moeshard command line: one function per sub-command, and the small
 * parsing helpers they share. Each returns the process exit status
 * (0 ok, 1 runtime failure, 2 usage error). */
#ifndef COORD_CLI_H
#define COORD_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

#define COORD_EXIT_OK 0
#define COORD_EXIT_FAIL 1
#define COORD_EXIT_USAGE 2

int coord_cmd_run(int argc, char **argv);
int coord_cmd_tokenize(int argc, char **argv);
int coord_cmd_inspect(int argc, char **argv);
int coord_cmd_pack(int argc, char **argv);
int coord_cmd_plan(int argc, char **argv);
int coord_cmd_serve(int argc, char **argv);
int coord_cmd_generate(int argc, char **argv);
int coord_cmd_status(int argc, char **argv);
int coord_cmd_chat(int argc, char **argv);
int coord_cmd_keygen(int argc, char **argv);

/* Parse a whole decimal/float argument within [lo, hi]; on failure print
 * "moeshard CMD: OPTION expects ..." to stderr and return false. */
bool coord_parse_i64(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *ret);
bool coord_parse_f32(const char *cmd, const char *opt, const char *s, float lo, float hi, float *ret);
/* --kv-type: "f16" or "f32" (ms_kv_type_parse); the same message on failure. */
bool coord_parse_kv_type(const char *cmd, const char *s, ms_type_t *ret);
/* The KV cache type unless --kv-type says otherwise: half floats, as
 * llama.cpp keeps them (docs/architecture.md, KV cache). */
#define COORD_KV_TYPE_DEFAULT MS_TYPE_F16

/* Reads a whole file (at most max_bytes) into a NUL-terminated buffer the caller frees. */
int coord_read_file(const char *path, uint64_t max_bytes, char **ret_buf, uint64_t *ret_len);

struct ms_tokenizer;
/* Tokenizes text into a new array (*ret_ids, the caller frees), growing it
 * as needed up to MS_PROMPT_TOKENS_MAX. -ENOSPC past that, -ENOMEM, -EINVAL. */
int coord_encode(const struct ms_tokenizer *tok, const char *text, size_t len, bool add_bos, bool parse_special,
                 int32_t **ret_ids, size_t *ret_n);

/* ms_model_open for run and serve: the whole model, or with dense its dense
 * part; the weights read into memory (progress lines on stderr for a model of
 * 256 MiB or more), or with mmap mapped from the file. Errors as ms_model_open. */
int coord_model_open(const char *cmd, const char *path, bool dense, bool mmap, ms_model_t **ret_model, ms_err_t *err);

/* Prints "moeshard CMD: unknown option ... (see 'moeshard CMD --help')" style
 * messages for getopt's failures. */
void coord_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
