/* libFuzzer target: one received ZeroMQ message as the daemons decode it.
 * Input layout: byte 0 selects the decoder (bit 0: 0 = expert protocol as
 * expertd reads it, 1 = client protocol as `moeshard serve` reads it) and
 * the number of tensor frames (bits 1-2); then the header frame's length
 * (u32 little-endian, cut to what is left), the header, and the frames:
 * each but the last preceded by its u32 length, the last taking the rest. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client_wire.h"
#include "limits.h"
#include "wire.h"

#define FUZZ_LAYERS 4
#define FUZZ_HIDDEN 64
#define FUZZ_EXPERTS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ms_wire_msg_t *fuzz_msg;
static uint8_t *fuzz_buf;        /* re-encoding buffer */
static float *fuzz_x;            /* [MS_WIRE_TOKENS_MAX][MS_HIDDEN_MAX] would be 128 MiB: sized on demand */
static volatile float fuzz_sink;

static uint32_t take_u32(const uint8_t **p, size_t *left)
{
    uint32_t v = 0;
    size_t n = *left < 4 ? *left : 4;
    for (size_t i = 0; i < n; i++)
        v |= (uint32_t)(*p)[i] << (8 * i);
    *p += n;
    *left -= n;
    return v;
}

/* The host serves odd experts of every layer. */
static bool held_odd(void *ctx, int32_t layer, int32_t expert)
{
    (void)ctx;
    (void)layer;
    return expert & 1;
}

/* What expertd does with a decoded batch before computing it. */
static void use_batch(const ms_wire_msg_t *m)
{
    const ms_wire_batch_t *b = &m->batch;
    ms_err_t err = { { 0 } };
    if (ms_wire_check_batch(b, FUZZ_LAYERS, FUZZ_HIDDEN, FUZZ_EXPERTS, held_odd, NULL, &err) != 0)
        return;
    size_t n = (size_t)b->n_tokens * (size_t)b->hidden;
    float *x = realloc(fuzz_x, n * sizeof(float));
    if (!x)
        return;
    fuzz_x = x;
    ms_wire_to_f32(b->dtype, m->frame, n, x);
    for (int64_t s = 0; s < (int64_t)b->n_tokens * b->k; s++)
        fuzz_sink += b->weights[s] + (float)b->ids[s];
    fuzz_sink += x[n - 1];
    /* what the decoder accepts the encoder must accept too (a host echoes it back) */
    size_t len;
    if (ms_wire_encode_batch(&m->head, b, fuzz_buf, MS_WIRE_HEADER_BYTES_MAX, &len, &err) != 0)
        __builtin_trap();
}

static void expert_protocol(const uint8_t *hdr, size_t hdr_len, const void *const *frames, const size_t *sizes,
                            size_t nf)
{
    ms_err_t err = { { 0 } };
    if (ms_wire_decode(fuzz_msg, hdr, hdr_len, frames, sizes, nf, &err) != 0) {
        if (!err.msg[0]) /* every refusal names its reason */
            __builtin_trap();
        return;
    }
    if (fuzz_msg->kind == MS_WIRE_BATCH)
        use_batch(fuzz_msg);
    if (fuzz_msg->kind == MS_WIRE_HELLO)
        for (uint32_t i = 0; i < fuzz_msg->hello.n_held; i++)
            fuzz_sink += (float)fuzz_msg->hello.held[i].expert;
}

static void client_protocol(const uint8_t *hdr, size_t hdr_len)
{
    ms_cw_msg_t m;
    ms_err_t err = { { 0 } };
    if (ms_cw_decode(hdr, hdr_len, &m, &err) == 0 && m.kind == MS_CW_GENERATE && m.gen.prompt_len)
        fuzz_sink += (float)(unsigned char)m.gen.prompt[m.gen.prompt_len - 1];
    ms_cw_msg_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fuzz_msg && (ms_wire_msg_new(&fuzz_msg) != 0 || !(fuzz_buf = malloc(MS_WIRE_HEADER_BYTES_MAX))))
        abort();
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    const uint8_t *p = data + 1;
    size_t left = size - 1;
    size_t hdr_len = take_u32(&p, &left);
    hdr_len = hdr_len < left ? hdr_len : left;
    /* the header in its own allocation, so a read past its end is caught */
    uint8_t *hdr = malloc(hdr_len ? hdr_len : 1);
    memcpy(hdr, p, hdr_len);
    p += hdr_len;
    left -= hdr_len;
    if (sel & 1) {
        client_protocol(hdr, hdr_len);
        free(hdr);
        return 0;
    }
    size_t nf = (sel >> 1) & 3;
    const void *frames[4];
    size_t sizes[4];
    for (size_t i = 0; i < nf; i++) {
        size_t n = i + 1 < nf ? take_u32(&p, &left) : left;
        n = n < left ? n : left;
        frames[i] = p;
        sizes[i] = n;
        p += n;
        left -= n;
    }
    expert_protocol(hdr, hdr_len, frames, sizes, nf);
    free(hdr);
    return 0;
}
