/* Client <-> coordinator codec (common/client_wire.c): round trips of every
 * message kind, and refusals of malformed or out-of-bound input. */
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client_wire.h"
#include "moeshard.pb-c.h"

static uint8_t buf[1 << 16];

static void test_generate_round_trip(void)
{
    ms_cw_generate_t g = { .prompt = "Hello\0world", .prompt_len = 11, .n_predict = 64, .temp = 0.7f,
                           .top_p = 0.9f, .min_p = 0.05f, .repeat_penalty = 1.1f, .top_k = 40,
                           .repeat_last_n = 64, .seed = 12345678901234ull, .no_special = true };
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_generate(77, &g, buf, sizeof(buf), &len), 0);
    ms_cw_msg_t m;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(m.kind, MS_CW_GENERATE);
    CU_ASSERT_EQUAL(m.request_id, 77);
    CU_ASSERT_EQUAL(m.gen.prompt_len, 11);
    CU_ASSERT_EQUAL(memcmp(m.gen.prompt, "Hello\0world", 11), 0);
    CU_ASSERT_EQUAL(m.gen.n_predict, 64);
    CU_ASSERT_EQUAL(m.gen.top_k, 40);
    CU_ASSERT_EQUAL(m.gen.repeat_last_n, 64);
    CU_ASSERT_EQUAL(m.gen.seed, 12345678901234ull);
    CU_ASSERT_DOUBLE_EQUAL(m.gen.temp, 0.7, 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(m.gen.top_p, 0.9, 1e-7);
    CU_ASSERT_TRUE(m.gen.no_special);
    ms_cw_msg_clear(&m);
}

static void test_event_round_trip(void)
{
    ms_cw_event_t ev = { .kind = MS_CW_EV_TEXT, .token = 42, .len = 4 };
    memcpy(ev.text, "\xe4\xb8\xad!", 4);
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_event(5, &ev, buf, sizeof(buf), &len), 0);
    ms_cw_msg_t m;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(m.kind, MS_CW_EVENT);
    CU_ASSERT_EQUAL(m.ev.kind, MS_CW_EV_TEXT);
    CU_ASSERT_EQUAL(m.ev.token, 42);
    CU_ASSERT_EQUAL(m.ev.len, 4);
    CU_ASSERT_EQUAL(memcmp(m.ev.text, "\xe4\xb8\xad!", 4), 0);
    ms_cw_msg_clear(&m);

    ms_cw_event_t done = { .kind = MS_CW_EV_DONE, .n_prompt = 7, .n_gen = 9, .n_decode_steps = 8,
                           .prefill_s = 0.25, .decode_s = 1.5, .seed = 3, .threads = 2 };
    strcpy(done.reason, "length");
    strcpy(done.kernels, "avx512");
    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_event(6, &done, buf, sizeof(buf), &len), 0);
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(m.ev.kind, MS_CW_EV_DONE);
    CU_ASSERT_STRING_EQUAL(m.ev.reason, "length");
    CU_ASSERT_STRING_EQUAL(m.ev.kernels, "avx512");
    CU_ASSERT_EQUAL(m.ev.n_gen, 9);
    CU_ASSERT_EQUAL(m.ev.n_decode_steps, 8);
    CU_ASSERT_DOUBLE_EQUAL(m.ev.decode_s, 1.5, 1e-12);
    ms_cw_msg_clear(&m);
}

static void test_status_cancel_error_round_trip(void)
{
    ms_cw_host_t hosts[2] = { { .slices_held = 10, .memory_bytes = 1000, .last_reply_age_ms = -1, .rtt_ms_mean = 0.5 },
                              { .slices_held = 11, .bytes_sent = 99, .batches = 3 } };
    strcpy(hosts[0].endpoint, "tcp://127.0.0.1:7001");
    strcpy(hosts[1].endpoint, "tcp://127.0.0.1:7002");
    ms_cw_status_t st = { .uptime_ms = 1234, .active = 2, .queued = 1, .n_seq_max = 8, .tokens_generated = 500,
                          .decode_tok_s = 12.5, .n_hosts = 2, .hosts = hosts };
    strcpy(st.model, "tiny");
    strcpy(st.arch, "llama");
    size_t len = 0;
    ms_cw_msg_t m;
    ms_err_t err = { { 0 } };
    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_status(9, &st, buf, sizeof(buf), &len), 0);
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(m.kind, MS_CW_STATUS);
    CU_ASSERT_EQUAL(m.status.n_hosts, 2);
    CU_ASSERT_STRING_EQUAL(m.status.hosts[1].endpoint, "tcp://127.0.0.1:7002");
    CU_ASSERT_EQUAL(m.status.hosts[0].last_reply_age_ms, -1);
    CU_ASSERT_EQUAL(m.status.hosts[1].bytes_sent, 99);
    CU_ASSERT_STRING_EQUAL(m.status.model, "tiny");
    ms_cw_msg_clear(&m);

    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_cancel(11, buf, sizeof(buf), &len), 0);
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(m.kind, MS_CW_CANCEL);
    CU_ASSERT_EQUAL(m.request_id, 11);
    ms_cw_msg_clear(&m);

    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_status_query(12, buf, sizeof(buf), &len), 0);
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(m.kind, MS_CW_STATUS_QUERY);
    ms_cw_msg_clear(&m);

    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_error(13, EBUSY, "queue full", buf, sizeof(buf), &len), 0);
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(m.kind, MS_CW_ERROR);
    ms_cw_msg_clear(&m);
}

static void test_refusals(void)
{
    ms_cw_msg_t m;
    ms_err_t err = { { 0 } };
    size_t len = 0;
    /* garbage, empty and truncated headers */
    memset(buf, 0xff, 64);
    CU_ASSERT_EQUAL(ms_cw_decode(buf, 64, &m, &err), -EPROTO);
    ms_cw_msg_clear(&m);
    CU_ASSERT_EQUAL(ms_cw_decode(buf, 0, &m, &err), -EPROTO);
    ms_cw_msg_clear(&m);
    ms_cw_generate_t g = { .prompt = "abc", .prompt_len = 3, .n_predict = 4, .temp = 1, .top_p = 1 };
    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_generate(1, &g, buf, sizeof(buf), &len), 0);
    for (size_t cut = 1; cut < len; cut++) {
        int rc = ms_cw_decode(buf, cut, &m, &err);
        CU_ASSERT(rc == -EPROTO || rc == 0); /* a prefix may still be a valid (shorter) envelope */
        ms_cw_msg_clear(&m);
    }
    /* a buffer too small for the encoding */
    CU_ASSERT_EQUAL(ms_cw_encode_generate(1, &g, buf, 4, &len), -EMSGSIZE);
    /* a prompt over its bound is refused by the encoder */
    char *big = malloc(MS_CW_PROMPT_BYTES_MAX + 1);
    memset(big, 'a', MS_CW_PROMPT_BYTES_MAX + 1);
    ms_cw_generate_t gb = { .prompt = big, .prompt_len = MS_CW_PROMPT_BYTES_MAX + 1, .n_predict = 1 };
    static uint8_t large[MS_CW_PROMPT_BYTES_MAX + 8192];
    CU_ASSERT_EQUAL(ms_cw_encode_generate(1, &gb, large, sizeof(large), &len), -EINVAL);
    free(big);
    /* an expert-host message is not a client message */
    ms_wire_head_t h = { .request_id = 1 };
    CU_ASSERT_EQUAL_FATAL(ms_wire_encode_heartbeat(&h, buf, sizeof(buf), &len, &err), 0);
    CU_ASSERT_EQUAL(ms_cw_decode(buf, len, &m, &err), -EPROTO);
    ms_cw_msg_clear(&m);
}

/* StatusReply.chat_template_family: each family name, "" (none recognised),
 * the longest name the bound allows, and one past it refused by the decoder
 * (written with protobuf-c directly, as a peer that ignores the bound would). */
static void test_status_chat_family(void)
{
    static const char *names[] = { "chatml", "mistral", "deepseek", "qwen3", "" };
    ms_cw_msg_t m;
    ms_err_t err = { { 0 } };
    size_t len = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        ms_cw_status_t st = { .uptime_ms = 5 };
        strcpy(st.chat_family, names[i]);
        CU_ASSERT_EQUAL_FATAL(ms_cw_encode_status(20 + i, &st, buf, sizeof(buf), &len), 0);
        CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
        CU_ASSERT_EQUAL(m.kind, MS_CW_STATUS);
        CU_ASSERT_EQUAL(m.request_id, 20 + i);
        CU_ASSERT_STRING_EQUAL(m.status.chat_family, names[i]);
        CU_ASSERT_EQUAL(m.status.uptime_ms, 5);
        ms_cw_msg_clear(&m);
    }
    ms_cw_status_t st = { 0 };
    memset(st.chat_family, 'x', MS_CW_FAMILY_BYTES_MAX);
    CU_ASSERT_EQUAL_FATAL(ms_cw_encode_status(30, &st, buf, sizeof(buf), &len), 0);
    CU_ASSERT_EQUAL_FATAL(ms_cw_decode(buf, len, &m, &err), 0);
    CU_ASSERT_EQUAL(strlen(m.status.chat_family), MS_CW_FAMILY_BYTES_MAX);
    ms_cw_msg_clear(&m);
    /* not NUL-terminated inside its array: the encoder refuses it */
    memset(st.chat_family, 'x', sizeof(st.chat_family));
    CU_ASSERT_EQUAL(ms_cw_encode_status(31, &st, buf, sizeof(buf), &len), -EINVAL);

    char longer[MS_CW_FAMILY_BYTES_MAX + 2];
    memset(longer, 'y', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    Moeshard__StatusReply r;
    moeshard__status_reply__init(&r);
    r.chat_template_family = longer;
    Moeshard__Envelope env;
    moeshard__envelope__init(&env);
    env.version_major = MS_WIRE_VERSION_MAJOR;
    env.request_id = 32;
    env.kind_case = MOESHARD__ENVELOPE__KIND_STATUS;
    env.status = &r;
    len = moeshard__envelope__pack(&env, buf);
    err.msg[0] = '\0';
    CU_ASSERT_EQUAL(ms_cw_decode(buf, len, &m, &err), -EPROTO);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "chat_template_family"));
    ms_cw_msg_clear(&m);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("client_wire", NULL, NULL);
    if (!s)
        return -1;
    return (CU_add_test(s, "Generate round trip", test_generate_round_trip) &&
            CU_add_test(s, "GenEvent round trips", test_event_round_trip) &&
            CU_add_test(s, "Status, Cancel, Error round trips", test_status_cancel_error_round_trip) &&
            CU_add_test(s, "StatusReply chat template family", test_status_chat_family) &&
            CU_add_test(s, "malformed and out-of-bound input refused", test_refusals))
               ? 0
               : -1;
}

#include "cu_main.h"
