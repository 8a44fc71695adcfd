/* A CUnit suite fixture shared by the tests that need a real model: a temp
 * folder, a tiny qwen2moe model made by build/bin/genmodel (MS_BIN or
 * $BUILD/bin), the model and tokenizer loaded, and a 2-thread pool. Include
 * once per test file; the suite uses fixture_init / fixture_clean. */
#ifndef MS_TINY_MODEL_FIXTURE_H
#define MS_TINY_MODEL_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model.h"
#include "pool.h"
#include "tokenizer.h"

static char tmp_dir[256];
static ms_model_t *model;
static ms_tokenizer_t *tok;
static ms_pool_t *pool;

static int run_genmodel(const char *out)
{
    char gen[700];
    const char *b = getenv("MS_BIN"), *build = getenv("BUILD");
    if (b)
        snprintf(gen, sizeof(gen), "%s/genmodel", b);
    else
        snprintf(gen, sizeof(gen), "%s/bin/genmodel", build ? build : "build");
    pid_t pid = fork();
    if (pid == 0) {
        execl(gen, gen, "--arch", "qwen2moe", "--type", "f32", "--out", out, (char *)NULL);
        _exit(127);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* tag names the temp folder and the failure message. */
static int fixture_init(const char *tag)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/%s-XXXXXX", t ? t : "/tmp", tag);
    if (!mkdtemp(tmp_dir))
        return -1;
    char path[400];
    snprintf(path, sizeof(path), "%s/m.gguf", tmp_dir);
    ms_err_t err = { { 0 } };
    if (run_genmodel(path) || ms_model_load(path, &model, &err) || ms_tokenizer_new_from_gguf(model->gguf, &tok, &err)
        || ms_pool_new(2, &pool)) {
        fprintf(stderr, "%s fixture: %s\n", tag, err.msg);
        return -1;
    }
    return 0;
}

static int fixture_clean(void)
{
    ms_pool_destroy(&pool);
    ms_tokenizer_destroy(&tok);
    ms_model_destroy(&model);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    return system(cmd) == 0 ? 0 : -1;
}

#endif
