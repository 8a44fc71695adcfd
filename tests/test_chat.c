/* Chat template tests: every family's rendering of a single user turn, a
 * system + user pair and a multi-turn conversation, written out by hand from
 * the official templates' text; refused conversations; family detection from
 * template text and from GGUF metadata. */
#include "limits.h" /* before gguf.h, which uses MS_GGUF_DIMS_MAX */
#include "chat.h"
#include "gguf.h"
#include "gguf_write.h"

#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* DeepSeek's tokens are spelled with U+FF5C (EF BD 9C) and U+2581 (E2 96 81). */
#define BAR "\xEF\xBD\x9C"
#define LOW "\xE2\x96\x81"
#define DS_BOS "<" BAR "begin" LOW "of" LOW "sentence" BAR ">"
#define DS_EOS "<" BAR "end" LOW "of" LOW "sentence" BAR ">"
#define DS_U "<" BAR "User" BAR ">"
#define DS_A "<" BAR "Assistant" BAR ">"

static const ms_chat_msg_t one_user[] = { { "user", "Hello" } };
static const ms_chat_msg_t sys_user[] = { { "system", "You are terse." }, { "user", "Hi" } };
static const ms_chat_msg_t multi[] = {
    { "system", "S" }, { "user", "Q1" }, { "assistant", "A1" }, { "user", "Q2" },
};

/* Renders and compares; prints both strings on a mismatch. */
static void expect_render(ms_chat_family_t f, const ms_chat_msg_t *m, size_t n, const char *bos, const char *want)
{
    ms_err_t err = { { 0 } };
    char *got = NULL;
    int rc = ms_chat_render(f, m, n, bos, &got, &err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(got);
    if (strcmp(got, want) != 0)
        fprintf(stderr, "\n%s: got\n[%s]\nwant\n[%s]\n", ms_chat_family_name(f), got, want);
    CU_ASSERT_STRING_EQUAL(got, want);
    free(got);
}

#define RENDER(f, msgs, bos, want) expect_render(f, msgs, ARRAY_LEN(msgs), bos, want)

/* Qwen2.5: the default system message when none is given first. */
static void test_chatml(void)
{
    RENDER(MS_CHAT_CHATML, one_user, NULL,
           "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
           "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
    RENDER(MS_CHAT_CHATML, sys_user, NULL,
           "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    RENDER(MS_CHAT_CHATML, multi, "<s>",
           "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
           "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
    /* a later system message is an ordinary turn */
    static const ms_chat_msg_t late_sys[] = { { "user", "a" }, { "system", "b" }, { "user", "c" } };
    RENDER(MS_CHAT_CHATML, late_sys, NULL,
           "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
           "<|im_start|>user\na<|im_end|>\n<|im_start|>system\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n"
           "<|im_start|>assistant\n");
}

/* Mistral/Mixtral-Instruct: " [INST] ... [/INST]", the system message joined to the first user turn. */
static void test_mistral(void)
{
    RENDER(MS_CHAT_MISTRAL, one_user, "<s>", "<s> [INST] Hello [/INST]");
    RENDER(MS_CHAT_MISTRAL, one_user, NULL, " [INST] Hello [/INST]");
    RENDER(MS_CHAT_MISTRAL, sys_user, "<s>", "<s> [INST] You are terse.\n\nHi [/INST]");
    RENDER(MS_CHAT_MISTRAL, multi, "<s>", "<s> [INST] S\n\nQ1 [/INST] A1</s> [INST] Q2 [/INST]");
    static const ms_chat_msg_t no_sys[] = { { "user", "Q1" }, { "assistant", "A1" }, { "user", "Q2" } };
    RENDER(MS_CHAT_MISTRAL, no_sys, "", " [INST] Q1 [/INST] A1</s> [INST] Q2 [/INST]");
}

/* DeepSeek-V3: BOS, all system text first, no separators between turns. */
static void test_deepseek(void)
{
    RENDER(MS_CHAT_DEEPSEEK, one_user, DS_BOS, DS_BOS DS_U "Hello" DS_A);
    RENDER(MS_CHAT_DEEPSEEK, sys_user, DS_BOS, DS_BOS "You are terse." DS_U "Hi" DS_A);
    RENDER(MS_CHAT_DEEPSEEK, multi, DS_BOS, DS_BOS "S" DS_U "Q1" DS_A "A1" DS_EOS DS_U "Q2" DS_A);
    RENDER(MS_CHAT_DEEPSEEK, multi, NULL, "S" DS_U "Q1" DS_A "A1" DS_EOS DS_U "Q2" DS_A);
    static const ms_chat_msg_t two_sys[] = { { "system", "S1" }, { "user", "Q" }, { "system", "S2" }, { "user", "R" } };
    RENDER(MS_CHAT_DEEPSEEK, two_sys, "", "S1\n\nS2" DS_U "Q" DS_U "R" DS_A);
}

/* Qwen3: no default system message; earlier answers lose their reasoning. */
static void test_qwen3(void)
{
    RENDER(MS_CHAT_QWEN3, one_user, "<s>", "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
    RENDER(MS_CHAT_QWEN3, sys_user, NULL,
           "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    RENDER(MS_CHAT_QWEN3, multi, NULL,
           "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
           "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
    static const ms_chat_msg_t thought[] = {
        { "user", "Q1" }, { "assistant", "<think>\nfirst\n</think>\n\nA1" }, { "user", "Q2" },
    };
    RENDER(MS_CHAT_QWEN3, thought, NULL,
           "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
           "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
    /* A wrapped tool response is not a query: the answer before it keeps its reasoning. */
    static const ms_chat_msg_t tool[] = {
        { "user", "Q" }, { "assistant", "<think>r\n</think>ans" }, { "user", "<tool_response>x</tool_response>" },
    };
    RENDER(MS_CHAT_QWEN3, tool, NULL,
           "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\nans<|im_end|>\n"
           "<|im_start|>user\n<tool_response>x</tool_response><|im_end|>\n<|im_start|>assistant\n");
}

static void expect_refused(ms_chat_family_t f, const ms_chat_msg_t *m, size_t n, int want_rc, const char *in_msg)
{
    ms_err_t err = { { 0 } };
    char *got = (char *)"untouched";
    int rc = ms_chat_render(f, m, n, "<s>", &got, &err);
    CU_ASSERT_EQUAL(rc, want_rc);
    CU_ASSERT_STRING_EQUAL(got, "untouched");
    if (!strstr(err.msg, in_msg))
        fprintf(stderr, "\nerror '%s' does not mention '%s'\n", err.msg, in_msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, in_msg));
}

static void test_refused(void)
{
    static const ms_chat_msg_t bad_role[] = { { "tool", "x" }, { "user", "y" } };
    static const ms_chat_msg_t ends_assistant[] = { { "user", "x" }, { "assistant", "y" } };
    static const ms_chat_msg_t two_users[] = { { "user", "x" }, { "user", "y" } };
    static const ms_chat_msg_t late_system[] = { { "user", "a" }, { "system", "b" }, { "user", "c" } };
    static const ms_chat_msg_t no_content[] = { { "user", NULL } };
    static const ms_chat_msg_t no_role[] = { { NULL, "x" } };
    for (int f = 0; f < MS_CHAT_COUNT; f++) {
        expect_refused((ms_chat_family_t)f, bad_role, 2, -EINVAL, "'tool'");
        expect_refused((ms_chat_family_t)f, one_user, 0, -EINVAL, "empty");
        expect_refused((ms_chat_family_t)f, NULL, 1, -EINVAL, "empty");
        expect_refused((ms_chat_family_t)f, ends_assistant, 2, -EINVAL, "end with a user message");
        expect_refused((ms_chat_family_t)f, no_content, 1, -EINVAL, "no content");
        expect_refused((ms_chat_family_t)f, no_role, 1, -EINVAL, "no role");
    }
    expect_refused(MS_CHAT_MISTRAL, two_users, 2, -EINVAL, "alternate");
    expect_refused(MS_CHAT_MISTRAL, late_system, 3, -EINVAL, "alternate");
    expect_refused(MS_CHAT_COUNT, one_user, 1, -EINVAL, "out of range");
    expect_refused((ms_chat_family_t)-1, one_user, 1, -EINVAL, "out of range");
    /* other families take these orders */
    char *p = NULL;
    CU_ASSERT_EQUAL(ms_chat_render(MS_CHAT_DEEPSEEK, two_users, 2, NULL, &p, NULL), 0);
    free(p);
}

static void test_limits(void)
{
    size_t n = MS_CHAT_MESSAGES_MAX + 1;
    ms_chat_msg_t *m = calloc(n, sizeof(*m));
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    for (size_t i = 0; i < n; i++)
        m[i] = (ms_chat_msg_t){ "user", "x" };
    expect_refused(MS_CHAT_CHATML, m, n, -E2BIG, "messages");
    char *p = NULL;
    CU_ASSERT_EQUAL(ms_chat_render(MS_CHAT_CHATML, m, n - 1, NULL, &p, NULL), 0);
    free(p);
    /* one message as long as the whole bound: the markers push it over */
    char *big = malloc(MS_CHAT_PROMPT_BYTES_MAX + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'a', MS_CHAT_PROMPT_BYTES_MAX);
    big[MS_CHAT_PROMPT_BYTES_MAX] = '\0';
    m[0].content = big;
    for (int f = 0; f < MS_CHAT_COUNT; f++)
        expect_refused((ms_chat_family_t)f, m, 1, -E2BIG, "exceeds");
    free(big);
    free(m);
}

static void expect_detect(const char *text, int want_rc, ms_chat_family_t want)
{
    ms_err_t err = { { 0 } };
    ms_chat_family_t f = MS_CHAT_COUNT;
    int rc = ms_chat_detect_text(text, strlen(text), &f, &err);
    CU_ASSERT_EQUAL(rc, want_rc);
    CU_ASSERT_EQUAL(f, want_rc ? MS_CHAT_COUNT : want);
}

static void test_detect_text(void)
{
    expect_detect("{% for m in messages %}{{'<|im_start|>' + m['role'] }}{% endfor %}", 0, MS_CHAT_CHATML);
    expect_detect("{{'<|im_start|>'}}{% if '</think>' in c %}{{'<think>\\n'}}{% endif %}", 0, MS_CHAT_QWEN3);
    expect_detect("{{ bos_token }}{{ '[INST] ' + m['content'] + ' [/INST]' }}", 0, MS_CHAT_MISTRAL);
    expect_detect("{{bos_token}}{{'" DS_U "' + c}}{{'" DS_A "'}}", 0, MS_CHAT_DEEPSEEK);
    /* R1 mentions <think> too; its own markers win */
    expect_detect("{{'" DS_U "'}}{{'" DS_A "<think>\\n'}}", 0, MS_CHAT_DEEPSEEK);
    /* one DeepSeek marker alone is not enough */
    expect_detect("{{'" DS_U "'}}", -EINVAL, MS_CHAT_COUNT);
    expect_detect("", -EINVAL, MS_CHAT_COUNT);

    /* an unknown template: the message quotes its start, control bytes hidden */
    const char *tulu = "{% for m in messages %}<|user|>\n{{ m['content'] }}{% endfor %}";
    ms_err_t err = { { 0 } };
    ms_chat_family_t f = MS_CHAT_COUNT;
    CU_ASSERT_EQUAL(ms_chat_detect_text(tulu, strlen(tulu), &f, &err), -EINVAL);
    CU_ASSERT_EQUAL(f, MS_CHAT_COUNT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "{% for m in messages %}<|user|>?{{"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "chatml"));
    CU_ASSERT_EQUAL(ms_chat_detect_text(NULL, 0, &f, &err), -EINVAL);
    /* the length bounds the search: the marker past len is not seen */
    const char *cut = "xxxx<|im_start|>";
    CU_ASSERT_EQUAL(ms_chat_detect_text(cut, 4, &f, &err), -EINVAL);
}

/* The tools' Jinja sources are recognised as their own family. */
static void test_jinja_round_trip(void)
{
    for (int i = 0; i < MS_CHAT_COUNT; i++) {
        const char *j = ms_chat_jinja((ms_chat_family_t)i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        expect_detect(j, 0, (ms_chat_family_t)i);
    }
    CU_ASSERT_PTR_NULL(ms_chat_jinja(MS_CHAT_COUNT));
}

static void test_names(void)
{
    static const char *const names[] = { "chatml", "mistral", "deepseek", "qwen3" };
    for (int i = 0; i < MS_CHAT_COUNT; i++) {
        ms_chat_family_t f = MS_CHAT_COUNT;
        CU_ASSERT_STRING_EQUAL(ms_chat_family_name((ms_chat_family_t)i), names[i]);
        CU_ASSERT_EQUAL(ms_chat_family_parse(names[i], &f), 0);
        CU_ASSERT_EQUAL(f, (ms_chat_family_t)i);
    }
    ms_chat_family_t f = MS_CHAT_COUNT;
    CU_ASSERT_EQUAL(ms_chat_family_parse("llama3", &f), -EINVAL);
    CU_ASSERT_EQUAL(ms_chat_family_parse("ChatML", &f), -EINVAL);
    CU_ASSERT_EQUAL(ms_chat_family_parse(NULL, &f), -EINVAL);
    CU_ASSERT_EQUAL(f, MS_CHAT_COUNT);
    CU_ASSERT_STRING_EQUAL(ms_chat_family_name(MS_CHAT_COUNT), "?");
}

/* ---- detection from GGUF metadata ------------------------------------------- */

static char tmpdir[64];

static int make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/ms-chat-XXXXXX", base && *base && strlen(base) < 40 ? base : "/tmp");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void)
{
    char path[128];
    static const char *const files[] = { "tmpl.gguf", "none.gguf", "num.gguf", "odd.gguf" };
    for (size_t i = 0; i < ARRAY_LEN(files); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, files[i]);
        unlink(path);
    }
    return rmdir(tmpdir);
}

/* Writes a GGUF with no tensors; kind: 0 no template, 1 string tmpl, 2 a number. */
static ms_gguf_t *gguf_with(const char *name, int kind, const char *tmpl)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    ms_gguf_writer_t *w = ms_gguf_writer_new(32);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "general.architecture", "qwen3moe"), 0);
    if (kind == 1)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_str(w, "tokenizer.chat_template", tmpl), 0);
    if (kind == 2)
        CU_ASSERT_EQUAL(ms_gguf_writer_add_u32(w, "tokenizer.chat_template", 7), 0);
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL(ms_gguf_writer_begin(w, path, &err), 0);
    CU_ASSERT_EQUAL(ms_gguf_writer_finish(w, &err), 0);
    ms_gguf_writer_destroy(&w);
    ms_gguf_t *g = NULL;
    CU_ASSERT_EQUAL(ms_gguf_open(path, &g, &err), 0);
    return g;
}

static void test_detect_gguf(void)
{
    ms_err_t err = { { 0 } };
    ms_chat_family_t f = MS_CHAT_COUNT;
    ms_gguf_t *g = gguf_with("tmpl.gguf", 1, ms_chat_jinja(MS_CHAT_QWEN3));
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_EQUAL(ms_chat_detect(g, &f, &err), 0);
    CU_ASSERT_EQUAL(f, MS_CHAT_QWEN3);
    ms_gguf_close(&g);

    f = MS_CHAT_COUNT;
    g = gguf_with("none.gguf", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_EQUAL(ms_chat_detect(g, &f, &err), -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "none.gguf"));
    CU_ASSERT_EQUAL(f, MS_CHAT_COUNT);
    ms_gguf_close(&g);

    g = gguf_with("num.gguf", 2, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_EQUAL(ms_chat_detect(g, &f, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a string"));
    ms_gguf_close(&g);

    g = gguf_with("odd.gguf", 1, "{{ 'Human: ' + m }}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_EQUAL(ms_chat_detect(g, &f, &err), -EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "odd.gguf: tokenizer.chat_template"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "Human: "));
    CU_ASSERT_EQUAL(f, MS_CHAT_COUNT);
    ms_gguf_close(&g);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("chat_render", NULL, NULL);
    if (!s || !CU_add_test(s, "chatml (Qwen2.5)", test_chatml) || !CU_add_test(s, "mistral", test_mistral) ||
        !CU_add_test(s, "deepseek (V3)", test_deepseek) || !CU_add_test(s, "qwen3", test_qwen3) ||
        !CU_add_test(s, "refused conversations", test_refused) || !CU_add_test(s, "limits", test_limits))
        return CU_get_error();
    s = CU_add_suite("chat_detect", make_tmpdir, remove_tmpdir);
    if (!s || !CU_add_test(s, "from template text", test_detect_text) ||
        !CU_add_test(s, "tool Jinja round trip", test_jinja_round_trip) || !CU_add_test(s, "family names", test_names) ||
        !CU_add_test(s, "from GGUF metadata", test_detect_gguf))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
