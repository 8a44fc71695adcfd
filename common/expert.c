/* Grouped expert FFN: tokens are gathered per expert so that each expert's
 * gate/up/down weights stream once per call, then recombined per token in
 * slot order (so the result does not depend on how experts were grouped). */
#include "expert.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "limits.h"

struct ms_expert_ws {
    int64_t max_rows, d, ff, n_mat;
    float *xg;        /* [max_rows][d] gathered inputs, when a projection reads f32 rows */
    void *xq_tok;     /* [max_rows] each token's row quantised once, before it is gathered */
    void *xq_gate;    /* [max_rows] quantised for gate's type (or NULL) */
    void *xq_up;      /* for up's type when its format differs, else == xq_gate */
    float *g, *u;     /* [max_rows][ff] */
    void *hq;         /* [max_rows] quantised for down's type */
    float *dn;        /* [max_rows][d] */
    int32_t *row_of;  /* [max_rows] slot -> gathered row */
    int32_t *count;   /* [n_mat] */
    int32_t *offset;  /* [n_mat] */
    ms_mm_t *jobs;    /* [2 * n_mat] */
    size_t xq_d_max, xq_ff_max; /* room per row for any weight type's activation format */
};

/* Layers may mix weight types (quantisation mixes do), so the quantised
 * activation rows get room for the largest format any computable type uses. */
static size_t act_row_bytes_max(int64_t n)
{
    size_t best = 0;
    for (uint32_t t = 0; t < MS_TYPE_COUNT; t++) {
        const ms_type_traits_t *tr = ms_type_traits(t);
        if (tr && tr->computable && n % tr->block_elems == 0) {
            size_t b = ms_act_row_bytes((ms_type_t)t, n);
            best = b > best ? b : best;
        }
    }
    return best;
}

void ms_expert_ws_destroy(ms_expert_ws_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_expert_ws_t *ws = *self_p;
    free(ws->xq_up);
    free(ws->xq_gate);
    free(ws->xq_tok);
    free(ws->xg);
    free(ws->g);
    free(ws->u);
    free(ws->hq);
    free(ws->dn);
    free(ws->row_of);
    free(ws->count);
    free(ws->offset);
    free(ws->jobs);
    free(ws);
    *self_p = NULL;
}

static void *alloc_rows(int64_t rows, size_t row_bytes)
{
    return row_bytes ? aligned_alloc(64, ((size_t)rows * row_bytes + 63) & ~(size_t)63) : NULL;
}

int ms_expert_ws_new(const ms_weight_t *gate, const ms_weight_t *up, const ms_weight_t *down,
                     int64_t max_rows, ms_expert_ws_t **ret_ws)
{
    if (max_rows < 1 || max_rows > (int64_t)MS_BATCH_TOKENS_MAX * MS_TOPK_MAX)
        return -EINVAL;
    if (gate->n_in != up->n_in || gate->n_out != up->n_out || down->n_in != gate->n_out ||
        down->n_out != gate->n_in || gate->n_mat != up->n_mat || gate->n_mat != down->n_mat)
        return -EINVAL;
    ms_expert_ws_t *ws = calloc(1, sizeof(*ws));
    if (!ws)
        return -ENOMEM;
    ws->max_rows = max_rows;
    ws->d = gate->n_in;
    ws->ff = gate->n_out;
    ws->n_mat = gate->n_mat;
    ws->xq_d_max = act_row_bytes_max(ws->d);
    ws->xq_ff_max = act_row_bytes_max(ws->ff);
    ws->xg = alloc_rows(max_rows, sizeof(float) * (size_t)ws->d);
    ws->g = alloc_rows(max_rows, sizeof(float) * (size_t)ws->ff);
    ws->u = alloc_rows(max_rows, sizeof(float) * (size_t)ws->ff);
    ws->dn = alloc_rows(max_rows, sizeof(float) * (size_t)ws->d);
    ws->xq_tok = alloc_rows(max_rows, ws->xq_d_max);
    ws->xq_gate = alloc_rows(max_rows, ws->xq_d_max);
    ws->xq_up = alloc_rows(max_rows, ws->xq_d_max);
    ws->hq = alloc_rows(max_rows, ws->xq_ff_max);
    ws->row_of = calloc((size_t)max_rows, sizeof(int32_t));
    ws->count = calloc((size_t)ws->n_mat, sizeof(int32_t));
    ws->offset = calloc((size_t)ws->n_mat, sizeof(int32_t));
    ws->jobs = calloc(2 * (size_t)ws->n_mat, sizeof(ms_mm_t));
    bool ok = ws->xg && ws->g && ws->u && ws->dn && ws->row_of && ws->count && ws->offset && ws->jobs &&
              (!ws->xq_d_max || (ws->xq_tok && ws->xq_gate && ws->xq_up)) && (!ws->xq_ff_max || ws->hq);
    if (!ok) {
        ms_expert_ws_destroy(&ws);
        return -ENOMEM;
    }
    *ret_ws = ws;
    return 0;
}

/* Assigns each (token, slot) a row in the gathered buffer, grouped by expert,
 * and copies the token's f32 row there when f32 is true. */
static int group_rows(ms_expert_ws_t *ws, const float *x, int64_t ldx, int n_tok, const int32_t *ids, int k_used,
                      bool f32, int64_t *ret_rows)
{
    memset(ws->count, 0, sizeof(int32_t) * (size_t)ws->n_mat);
    int64_t n_slots = (int64_t)n_tok * k_used;
    for (int64_t s = 0; s < n_slots; s++) {
        int32_t e = ids[s];
        if (e >= ws->n_mat)
            return -EINVAL;
        if (e >= 0)
            ws->count[e]++;
    }
    int64_t rows = 0;
    for (int64_t e = 0; e < ws->n_mat; e++) {
        ws->offset[e] = (int32_t)rows;
        rows += ws->count[e];
    }
    memset(ws->count, 0, sizeof(int32_t) * (size_t)ws->n_mat);
    for (int64_t s = 0; s < n_slots; s++) {
        int32_t e = ids[s];
        if (e < 0) {
            ws->row_of[s] = -1;
            continue;
        }
        int32_t row = ws->offset[e] + ws->count[e]++;
        ws->row_of[s] = row;
        if (f32)
            memcpy(ws->xg + (int64_t)row * ws->d, x + (s / k_used) * ldx, sizeof(float) * (size_t)ws->d);
    }
    *ret_rows = rows;
    return 0;
}

/* The gathered rows quantised for type (row bytes xq_row) into xq: each
 * token's row is quantised once and copied to the rows of its slots, so a
 * token routed to k experts costs one quantisation, not k (the same bytes). */
static void gather_quantized(ms_pool_t *pool, const ms_kernels_t *k, ms_expert_ws_t *ws, ms_type_t type,
                             const float *x, int64_t ldx, int n_tok, int k_used, size_t xq_row, void *xq)
{
    ms_act_quantize_rows(pool, k, type, x, ldx, n_tok, ws->d, ws->xq_tok);
    for (int64_t s = 0; s < (int64_t)n_tok * k_used; s++)
        if (ws->row_of[s] >= 0)
            memcpy((char *)xq + (size_t)ws->row_of[s] * xq_row, (const char *)ws->xq_tok + (size_t)(s / k_used) * xq_row,
                   xq_row);
}

static int add_jobs(const ms_expert_ws_t *ws, const ms_weight_t *w, const float *x, int64_t n_in, const void *xq,
                    size_t xq_row, float *y, int64_t n_out, ms_mm_t *jobs)
{
    int n = 0;
    for (int64_t e = 0; e < ws->n_mat; e++) {
        if (!ws->count[e])
            continue;
        int64_t r0 = ws->offset[e];
        jobs[n++] = (ms_mm_t){
            .type = w->type, .w = ms_weight_mat(w, e), .n_out = n_out, .n_in = n_in,
            .x = xq ? NULL : x + r0 * n_in, .ldx = n_in,
            .xq = xq ? (const char *)xq + (size_t)r0 * xq_row : NULL,
            .n_tok = ws->count[e], .y = y + r0 * n_out, .ldy = n_out, .w_r16 = w->r16,
        };
    }
    return n;
}

int ms_expert_ffn(ms_pool_t *pool, const ms_kernels_t *k, const ms_weight_t *gate, const ms_weight_t *up,
                  const ms_weight_t *down, const float *x, int64_t ldx, int n_tok, const int32_t *ids,
                  const float *w, int k_used, float *out, int64_t ldo, ms_expert_ws_t *ws)
{
    if (n_tok < 0 || k_used < 1 || (int64_t)n_tok * k_used > ws->max_rows)
        return -EINVAL;
    int64_t rows, d = ws->d, ff = ws->ff;
    if (gate->n_in != d || gate->n_out != ff || up->n_in != d || up->n_out != ff || down->n_in != ff ||
        down->n_out != d || gate->n_mat != ws->n_mat || up->n_mat != gate->n_mat || down->n_mat != gate->n_mat)
        return -EINVAL;
    size_t gq = ms_act_row_bytes(gate->type, d), uq = ms_act_row_bytes(up->type, d);
    size_t hq = ms_act_row_bytes(down->type, ff);
    bool up_shares = up->type == gate->type;
    int rc = group_rows(ws, x, ldx, n_tok, ids, k_used, !gq || !uq, &rows);
    if (rc)
        return rc;
    if (rows > 0) {
        if (gq)
            gather_quantized(pool, k, ws, gate->type, x, ldx, n_tok, k_used, gq, ws->xq_gate);
        if (uq && !up_shares)
            gather_quantized(pool, k, ws, up->type, x, ldx, n_tok, k_used, uq, ws->xq_up);
        void *xq_up = up_shares ? ws->xq_gate : ws->xq_up;
        int nj = add_jobs(ws, gate, ws->xg, d, gq ? ws->xq_gate : NULL, gq, ws->g, ff, ws->jobs);
        nj += add_jobs(ws, up, ws->xg, d, uq ? xq_up : NULL, uq, ws->u, ff, ws->jobs + nj);
        ms_matmul_multi(pool, k, ws->jobs, nj);
        for (int64_t r = 0; r < rows; r++)
            k->swiglu(ws->g + r * ff, ws->g + r * ff, ws->u + r * ff, ff);
        ms_act_quantize_rows(pool, k, down->type, ws->g, ff, rows, ff, ws->hq);
        nj = add_jobs(ws, down, ws->g, ff, hq ? ws->hq : NULL, hq, ws->dn, d, ws->jobs);
        ms_matmul_multi(pool, k, ws->jobs, nj);
    }
    for (int t = 0; t < n_tok; t++) {
        float *o = out + (int64_t)t * ldo;
        memset(o, 0, sizeof(float) * (size_t)d);
        for (int j = 0; j < k_used; j++) {
            int32_t row = ws->row_of[(int64_t)t * k_used + j];
            if (row >= 0)
                k->axpy(o, w[(int64_t)t * k_used + j], ws->dn + (int64_t)row * d, d);
        }
    }
    return 0;
}
