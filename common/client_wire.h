/* The client <-> coordinator messages (docs/serve.md): Generate, Cancel,
 * GenEvent, StatusQuery, StatusReply and Error, in the same Envelope as the
 * expert-host protocol, one header frame each and no tensor frames. Pure
 * functions over byte buffers; every field is bounded before it is used. */
#ifndef MS_CLIENT_WIRE_H
#define MS_CLIENT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "limits.h"
#include "wire.h"

#define MS_CW_PROMPT_BYTES_MAX (1u << 21)             /* a prompt's text: 2 MiB */
#define MS_CW_TEXT_BYTES_MAX   (3 * MS_TOKEN_BYTES_MAX + 8) /* one event's text (a token as valid UTF-8) */
#define MS_CW_NAME_BYTES_MAX   255                    /* model name, endpoint, kernels name */
#define MS_CW_REASON_BYTES_MAX 31
#define MS_CW_FAMILY_BYTES_MAX 31                     /* a chat template family name */
#define MS_CW_STATE_BYTES_MAX 15

_Static_assert(MS_CW_PROMPT_BYTES_MAX + 4096 <= MS_WIRE_HEADER_BYTES_MAX, "a Generate fits the header bound");
_Static_assert((uint64_t)MS_HOSTS_MAX * (MS_CW_NAME_BYTES_MAX + 96) + 4096 <= MS_WIRE_HEADER_BYTES_MAX,
               "a StatusReply listing every host fits the header bound");

typedef enum {
    MS_CW_GENERATE,
    MS_CW_CANCEL,
    MS_CW_EVENT,
    MS_CW_STATUS_QUERY,
    MS_CW_STATUS,
    MS_CW_ERROR,
    MS_CW_JOIN,        /* an expert host's Hello naming its endpoint: it asks to join */
    MS_CW_KIND_COUNT
} ms_cw_kind_t;

typedef struct {
    const char *prompt;    /* [prompt_len]; decoded: owned by the message */
    size_t prompt_len;
    int32_t n_predict;
    float temp, top_p, min_p, repeat_penalty;
    int32_t top_k, repeat_last_n;
    uint64_t seed;
    bool no_special;
} ms_cw_generate_t;

typedef enum {
    MS_CW_EV_ACCEPTED = 1, /* queued by the coordinator */
    MS_CW_EV_TEXT,         /* text of one token (token -1: bytes held back until the end) */
    MS_CW_EV_DONE,         /* reason and the summary figures set */
    MS_CW_EV_ERROR,        /* message set */
    MS_CW_EV_COUNT
} ms_cw_event_kind_t;

typedef struct {
    ms_cw_event_kind_t kind;
    int32_t token;
    size_t len;
    char text[MS_CW_TEXT_BYTES_MAX];
    char reason[MS_CW_REASON_BYTES_MAX + 1];
    char message[MS_WIRE_ERROR_BYTES_MAX + 1];
    int32_t n_prompt, n_gen, n_decode_steps;
    double prefill_s, decode_s, queued_s;
    uint64_t weights_bytes_per_token, kv_bytes, peak_rss_bytes, seed, net_bytes_decode;
    char kernels[MS_CW_NAME_BYTES_MAX + 1];
    int32_t threads, n_hosts;
    ms_wire_dtype_t wire;
} ms_cw_event_t;

typedef struct {
    char endpoint[MS_CW_NAME_BYTES_MAX + 1];
    uint32_t slices_held;
    uint64_t memory_bytes;
    int64_t last_reply_age_ms; /* -1: none yet */
    double rtt_ms_mean;
    uint64_t bytes_sent, bytes_received, batches;
    char state[MS_CW_STATE_BYTES_MAX + 1]; /* "up", "down", "loading" */
} ms_cw_host_t;

typedef struct {
    char model[MS_CW_NAME_BYTES_MAX + 1];
    char arch[MS_CW_NAME_BYTES_MAX + 1];
    uint64_t uptime_ms;
    uint32_t active, queued, n_seq_max;
    uint64_t requests_done, tokens_generated, prompt_tokens;
    double decode_tok_s, prefill_tok_s;
    ms_wire_dtype_t wire;
    /* the served model's chat template family (ms_chat_family_name), "" when
     * it has none or one not recognised; a newer server may name a family
     * this side does not know, so readers check it */
    char chat_family[MS_CW_FAMILY_BYTES_MAX + 1];
    uint64_t epoch;          /* placement epoch of the expert hosts */
    uint32_t hosts_down;
    uint64_t failover_slots;
    uint32_t n_hosts;
    ms_cw_host_t *hosts;  /* [n_hosts]; decoded: owned by the message */
} ms_cw_status_t;

/* A decoded message: only the member of kind is set. */
typedef struct {
    ms_cw_kind_t kind;
    uint64_t request_id;
    ms_cw_generate_t gen;
    ms_cw_event_t ev;
    ms_cw_status_t status;
    ms_wire_error_t error;
    char join_endpoint[MS_WIRE_ENDPOINT_BYTES_MAX + 1];
    char *prompt_buf;     /* owned storage behind gen.prompt */
} ms_cw_msg_t;

/* Decodes one header frame into *msg (cleared first; release with
 * ms_cw_msg_clear, also after a failure). -EPROTO with err set for bytes
 * that are not an Envelope, another major version, a kind that is not a
 * client message, or a field out of its bound (naming it); -ENOMEM. */
int ms_cw_decode(const void *hdr, size_t len, ms_cw_msg_t *msg, ms_err_t *err);
void ms_cw_msg_clear(ms_cw_msg_t *msg);

/* Encoders: write the message into buf[0..cap) and its length to *ret_len.
 * -EINVAL for a field out of its bound, -EMSGSIZE when cap is too small. */
int ms_cw_encode_generate(uint64_t request_id, const ms_cw_generate_t *g, void *buf, size_t cap, size_t *ret_len);
int ms_cw_encode_cancel(uint64_t request_id, void *buf, size_t cap, size_t *ret_len);
int ms_cw_encode_event(uint64_t request_id, const ms_cw_event_t *ev, void *buf, size_t cap, size_t *ret_len);
int ms_cw_encode_status_query(uint64_t request_id, void *buf, size_t cap, size_t *ret_len);
int ms_cw_encode_status(uint64_t request_id, const ms_cw_status_t *st, void *buf, size_t cap, size_t *ret_len);
int ms_cw_encode_error(uint64_t request_id, int32_t code, const char *message, void *buf, size_t cap,
                       size_t *ret_len);

#endif
