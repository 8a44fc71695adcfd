/* The forward pass, in data-flow order: embed -> per layer (norm, QKV, RoPE,
 * KV cache, attention, output projection, norm, router, experts via the
 * backend, shared expert) -> final norm -> output head. Buffers are sized once
 * in ms_forward_new for n_batch_max tokens. */
#include "forward.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expert.h"
#include "limits.h"
#include "mem.h"
#include "ms_assert.h"

/* The query heads of a KV group share its cached keys and values (with latent
 * attention every head shares the latent rows): an item of attention work
 * takes up to this many of them, so that each cached row is read from memory
 * once for all of them instead of once per head (at a long context one head's
 * keys and values no longer fit in L2). */
#define ATTN_HEADS_MAX 8
_Static_assert(ATTN_HEADS_MAX <= MS_ROWS_HEADS_MAX, "an attention item's heads go to the kernels in one call");
/* Cached rows the item's heads go through together while they sit in L1; a
 * multiple of every dot_rows kernel's row tile, so that each score is the
 * same whatever the blocking. */
#define ATTN_BLOCK_ROWS 64
/* The same for latent attention, whose rows are wider (kv_lora_rank + the
 * rope dims: 576 floats on DeepSeek-V3), so that a block still fits in L1. */
#define MLA_BLOCK_ROWS 16

/* Query heads that share one set of cached rows: a KV group, or for latent
 * attention (deepseek2) every head, since all of them read the same latent
 * rows. */
static int attn_group(const ms_hparams_t *hp)
{
    return hp->kv_lora_rank > 0 ? hp->n_head : hp->n_head / hp->n_head_kv;
}

/* Sets of cached rows an attention step goes through per token. */
static int attn_kv_sets(const ms_hparams_t *hp)
{
    return hp->kv_lora_rank > 0 ? 1 : hp->n_head_kv;
}

/* The most query heads an attention item takes: a group, at most ATTN_HEADS_MAX. */
static int attn_heads_max(const ms_hparams_t *hp)
{
    int group = attn_group(hp);
    return group < ATTN_HEADS_MAX ? group : ATTN_HEADS_MAX;
}

/* Longest poll between two kernels of a step: the gaps are a few microseconds
 * (norms, routing), well under this; a wake-up from sleep costs tens. */
#define FWD_POOL_SPIN_US 200

struct ms_forward {
    const ms_model_t *m;
    ms_forward_params_t p;
    ms_pool_t *pool;
    const ms_kernels_t *k;
    ms_expert_backend_t *backend;

    int64_t q_dim, k_dim, v_dim, o_dim; /* H*hd, Hkv*hd, Hkv*hdv, H*hdv */
    /* activations, [n_batch_max][width] */
    float *x;      /* residual stream [B][d] */
    float *h;      /* normed input of a block [B][d] */
    float *q;      /* [B][q_dim] */
    float *kk;     /* [B][k_dim] */
    float *v;      /* [B][v_dim] */
    float *att;    /* [B][o_dim] */
    float *tmp;    /* [B][d] */
    float *moe;    /* [B][d] */
    float *shx;    /* [B][d] shared expert output */
    float *rl;     /* [B][E] router logits -> probabilities */
    float *shg;    /* [B] shared expert gate logits */
    float *shw;    /* [B] shared expert gate weights */
    int32_t *ids;  /* [B][K] */
    float *gw;     /* [B][K] gate weights */
    int32_t *zero_ids; /* [B] all 0: the shared expert as a 1-expert FFN */
    float *hout;   /* [B][d] final-normed rows that want logits */
    void *xq[3];   /* quantised activations, one per concurrent job */
    size_t xq_row_max;
    float *scores; /* [nth][n_ctx] attention scores per thread */
    /* KV cache (kv_head, kv_row for the layouts), values of p.kv_type */
    void *kc, *vc;         /* from ms_mem_alloc, sizes below */
    size_t kc_bytes, vc_bytes;
    size_t kv_esize;       /* bytes of one cached value: 4 (f32) or 2 (f16) */
    int32_t *seq_len;
    int32_t *len_scratch; /* seq_len as a batch being checked would leave it */
    ms_expert_ws_t *shws; /* shared-expert workspace */
    /* deepseek2 (allocated only for it): latent attention, dense leading layers, grouped routing */
    int64_t c_dim;   /* cached floats per token and layer: kv_lora + n_rot (latent attention), else 0 */
    float *qa;       /* [B][q_lora] */
    float *lat;      /* [B][kv_lora + n_rot] this step's latents and rope keys */
    float *qn;       /* [H][B][nope] q_nope gathered per head */
    float *qabs;     /* [B][H][kv_lora + n_rot]: q_nope taken into latent space, then q_pe */
    float *olat;     /* [H][B][kv_lora] attention output in latent space */
    void *xqh;       /* [H*B] quantised per-head rows (q_nope or olat) */
    float *rowbuf;   /* [nth][kv_lora] a dequantised attn_kv_b row per thread */
    ms_mm_t *jobs;   /* [H] per-head products */
    float *rope_freq; /* [n_rot/2] angle per position of each pair, YaRN applied */
    double *rope_cs;  /* [B][n_rot] cos, sin of each pair at each token's position (deepseek2: interleaved;
                       * otherwise n_rot/2 cos then n_rot/2 sin, ms_rope_angles) */
    float *sel;      /* [B][E] selection scores (biased) */
    ms_expert_ws_t *dws; /* dense leading layers' FFN workspace */
};

static void *zalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (p)
        memset(p, 0, (n + 63) & ~(size_t)63);
    return p;
}

static size_t act_row_max(const ms_model_t *m)
{
    int64_t widths[] = { m->hp.n_embd, (int64_t)m->hp.n_head * m->hp.head_dim_v, m->hp.q_lora_rank };
    size_t best = 0;
    for (uint32_t t = 0; t < MS_TYPE_COUNT; t++) {
        const ms_type_traits_t *tr = ms_type_traits(t);
        for (int i = 0; tr && tr->computable && i < 3; i++) {
            if (widths[i] == 0)
                continue;
            if (widths[i] % tr->block_elems == 0) {
                size_t b = ms_act_row_bytes((ms_type_t)t, widths[i]);
                best = b > best ? b : best;
            }
        }
    }
    return best;
}

/* Floats cached per token and layer: the latent and the rope key under latent
 * attention, full K and V otherwise. */
static uint64_t kv_floats(const ms_model_t *m)
{
    const ms_hparams_t *hp = &m->hp;
    if (hp->kv_lora_rank > 0)
        return (uint64_t)hp->kv_lora_rank + (uint64_t)hp->n_rot;
    return (uint64_t)hp->n_head_kv * (uint64_t)(hp->head_dim + hp->head_dim_v);
}

static size_t kv_esize(ms_type_t t)
{
    return t == MS_TYPE_F16 ? sizeof(uint16_t) : sizeof(float);
}

uint64_t ms_forward_kv_bytes_for(const ms_model_t *m, int32_t n_seq, int32_t n_ctx, ms_type_t kv_type)
{
    return (uint64_t)n_seq * (uint64_t)m->hp.n_layer * (uint64_t)n_ctx * kv_floats(m) * kv_esize(kv_type);
}

int ms_kv_type_parse(const char *s, ms_type_t *ret_type)
{
    if (strcmp(s, "f16") == 0)
        *ret_type = MS_TYPE_F16;
    else if (strcmp(s, "f32") == 0)
        *ret_type = MS_TYPE_F32;
    else
        return -EINVAL;
    return 0;
}

static int check_params(const ms_model_t *m, const ms_forward_params_t *p, ms_err_t *err)
{
    if (p->kv_type != MS_TYPE_F32 && p->kv_type != MS_TYPE_F16) {
        ms_err_set(err, "KV cache type %d is neither f32 nor f16", (int)p->kv_type);
        return -EINVAL;
    }
    if (p->n_ctx < 1 || p->n_ctx > MS_CONTEXT_MAX) {
        ms_err_set(err, "context size %d is outside [1, %d]", p->n_ctx, MS_CONTEXT_MAX);
        return -EINVAL;
    }
    if (p->n_seq_max < 1 || p->n_seq_max > 1024) {
        ms_err_set(err, "sequence count %d is outside [1, 1024]", p->n_seq_max);
        return -EINVAL;
    }
    if (p->n_batch_max < 1 || p->n_batch_max > MS_BATCH_TOKENS_MAX) {
        ms_err_set(err, "batch size %d is outside [1, %d]", p->n_batch_max, MS_BATCH_TOKENS_MAX);
        return -EINVAL;
    }
    uint64_t kv = ms_forward_kv_bytes_for(m, p->n_seq_max, p->n_ctx, p->kv_type);
    if (kv > (64ull << 30)) {
        ms_err_set(err, "the KV cache for %d sequences of %d positions would need %.1f GiB; lower the context size",
                   p->n_seq_max, p->n_ctx, (double)kv / (1 << 30));
        return -EINVAL;
    }
    return 0;
}

/* Largest activation row, quantised for any computable type, of n floats (0 when none quantises). */
static size_t act_bytes_max(int64_t n)
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

/* Angle per position of each rotated pair. With YaRN (as DeepSeek and ggml
 * define it): pairs rotating faster than beta_fast turns over the original
 * context keep their frequency, those slower than beta_slow turns are
 * interpolated (divided by the factor), a linear ramp in between. */
static void rope_freqs(const ms_hparams_t *hp, float *freq)
{
    int half = hp->n_rot / 2;
    double lo = 0, hi = 0;
    if (hp->rope_yarn) {
        double two_log_base = 2.0 * log((double)hp->rope_base);
        lo = floor(hp->n_rot * log(hp->n_ctx_orig / (hp->yarn_beta_fast * 2.0 * M_PI)) / two_log_base);
        hi = ceil(hp->n_rot * log(hp->n_ctx_orig / (hp->yarn_beta_slow * 2.0 * M_PI)) / two_log_base);
        lo = lo > 0 ? lo : 0;
        hi = hi < hp->n_rot - 1 ? hi : hp->n_rot - 1;
    }
    for (int i = 0; i < half; i++) {
        double extrap = pow((double)hp->rope_base, -2.0 * i / hp->n_rot);
        double f = extrap;
        if (hp->rope_yarn) {
            double y = (i - lo) / (hi - lo > 0.001 ? hi - lo : 0.001);
            double keep = 1.0 - (y < 0 ? 0 : y > 1 ? 1 : y); /* 1: original frequency */
            f = extrap * (hp->rope_freq_scale * (1.0 - keep) + keep);
        }
        freq[i] = (float)f;
    }
}

static int alloc_deepseek2(ms_forward_t *f)
{
    const ms_hparams_t *hp = &f->m->hp;
    size_t B = (size_t)f->p.n_batch_max, H = (size_t)hp->n_head, fl = sizeof(float);
    size_t C = (size_t)hp->kv_lora_rank, nope = (size_t)(hp->head_dim - hp->n_rot), E = (size_t)hp->n_expert;
    f->qa = zalloc(B * (size_t)(hp->q_lora_rank ? hp->q_lora_rank : 1) * fl);
    f->lat = zalloc(B * (size_t)f->c_dim * fl);
    f->qn = zalloc(H * B * nope * fl);
    f->qabs = zalloc(B * H * (size_t)f->c_dim * fl);
    f->olat = zalloc(H * B * C * fl);
    size_t qb = act_bytes_max((int64_t)nope) > act_bytes_max((int64_t)C) ? act_bytes_max((int64_t)nope)
                                                                          : act_bytes_max((int64_t)C);
    f->xqh = zalloc(H * B * (qb ? qb : 1));
    f->rowbuf = zalloc((size_t)ms_pool_size(f->pool) * C * fl);
    f->jobs = zalloc(H * sizeof(ms_mm_t));
    f->rope_freq = zalloc((size_t)hp->n_rot / 2 * fl);
    f->rope_cs = zalloc(B * (size_t)hp->n_rot * sizeof(double));
    f->sel = zalloc(B * E * fl);
    if (!f->qa || !f->lat || !f->qn || !f->qabs || !f->olat || !f->xqh || !f->rowbuf || !f->jobs ||
        !f->rope_freq || !f->rope_cs || !f->sel)
        return -ENOMEM;
    rope_freqs(hp, f->rope_freq);
    for (size_t t = 0; t < B; t++) /* the shared experts' weight: deepseek2's have no gate */
        f->shw[t] = 1.0f;
    if (hp->n_layer_dense_lead > 0) {
        const ms_layer_t *L = &f->m->layers[0];
        return ms_expert_ws_new(&L->ffn_gate, &L->ffn_up, &L->ffn_down, (int64_t)B, &f->dws);
    }
    return 0;
}

static int alloc_buffers(ms_forward_t *f)
{
    const ms_hparams_t *hp = &f->m->hp;
    size_t B = (size_t)f->p.n_batch_max, d = (size_t)hp->n_embd, fl = sizeof(float);
    f->x = zalloc(B * d * fl);
    f->h = zalloc(B * d * fl);
    f->q = zalloc(B * (size_t)f->q_dim * fl);
    f->kk = zalloc(B * (size_t)f->k_dim * fl);
    f->v = zalloc(B * (size_t)f->v_dim * fl);
    f->att = zalloc(B * (size_t)f->o_dim * fl);
    f->tmp = zalloc(B * d * fl);
    f->moe = zalloc(B * d * fl);
    f->shx = zalloc(B * d * fl);
    f->hout = zalloc(B * d * fl);
    f->rl = zalloc(B * (size_t)hp->n_expert * fl);
    f->shg = zalloc(B * fl);
    f->shw = zalloc(B * fl);
    f->ids = zalloc(B * (size_t)hp->n_expert_used * sizeof(int32_t));
    f->gw = zalloc(B * (size_t)hp->n_expert_used * fl);
    f->zero_ids = zalloc(B * sizeof(int32_t));
    f->xq_row_max = act_row_max(f->m);
    for (int i = 0; i < 3; i++)
        f->xq[i] = f->xq_row_max ? zalloc(B * f->xq_row_max) : NULL;
    /* attention, plain and latent: [thread][heads per item][n_ctx] */
    f->scores = zalloc((size_t)ms_pool_size(f->pool) * (size_t)attn_heads_max(hp) * (size_t)f->p.n_ctx * fl);
    size_t per_seq = (size_t)hp->n_layer * (size_t)f->p.n_ctx;
    /* populated up front (common/mem.h): the cache can be gigabytes */
    /* latent attention caches one row of c_dim per token and no V */
    f->kv_esize = kv_esize(f->p.kv_type);
    f->kc_bytes = (size_t)f->p.n_seq_max * per_seq * (size_t)(f->c_dim ? f->c_dim : f->k_dim) * f->kv_esize;
    f->vc_bytes = f->c_dim ? 0 : (size_t)f->p.n_seq_max * per_seq * (size_t)f->v_dim * f->kv_esize;
    f->kc = ms_mem_alloc(f->kc_bytes);
    f->vc = ms_mem_alloc(f->vc_bytes);
    f->seq_len = zalloc((size_t)f->p.n_seq_max * sizeof(int32_t));
    f->len_scratch = zalloc((size_t)f->p.n_seq_max * sizeof(int32_t));
    if (hp->arch != MS_ARCH_DEEPSEEK2) /* its own tables: alloc_deepseek2 */
        f->rope_cs = zalloc(B * (size_t)hp->n_rot * sizeof(double));
    bool ok = f->x && f->h && f->q && f->kk && f->v && f->att && f->tmp && f->moe && f->shx && f->hout && f->rl &&
              f->shg && f->shw && f->ids && f->gw && f->zero_ids && f->scores && f->kc && f->vc && f->seq_len &&
              f->len_scratch && (hp->arch == MS_ARCH_DEEPSEEK2 || f->rope_cs);
    for (int i = 0; i < 3; i++)
        ok = ok && (!f->xq_row_max || f->xq[i]);
    if (ok && hp->shared_expert) {
        const ms_layer_t *L = ms_model_moe_layer0(f->m);
        ok = ms_expert_ws_new(&L->gate_shexp, &L->up_shexp, &L->down_shexp, (int64_t)B, &f->shws) == 0;
    }
    if (ok && hp->arch == MS_ARCH_DEEPSEEK2)
        ok = alloc_deepseek2(f) == 0;
    return ok ? 0 : -ENOMEM;
}

int ms_forward_new(const ms_model_t *m, const ms_forward_params_t *p, ms_pool_t *pool, const ms_kernels_t *k,
                   ms_expert_backend_t *backend, ms_forward_t **ret_fwd, ms_err_t *err)
{
    int rc = check_params(m, p, err);
    if (rc)
        return rc;
    ms_forward_t *f = calloc(1, sizeof(*f));
    if (!f) {
        ms_err_set(err, "out of memory");
        return -ENOMEM;
    }
    const ms_hparams_t *hp = &m->hp;
    *f = (ms_forward_t){ .m = m, .p = *p, .pool = pool, .k = k, .backend = backend };
    f->q_dim = (int64_t)hp->n_head * hp->head_dim;
    f->k_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    f->v_dim = (int64_t)hp->n_head_kv * hp->head_dim_v;
    f->o_dim = (int64_t)hp->n_head * hp->head_dim_v;
    f->c_dim = hp->kv_lora_rank > 0 ? (int64_t)hp->kv_lora_rank + hp->n_rot : 0;
    rc = alloc_buffers(f);
    if (rc) {
        ms_forward_destroy(&f);
        ms_err_set(err, "out of memory allocating the forward pass buffers (context %d, batch %d)", p->n_ctx,
                   p->n_batch_max);
        return rc;
    }
    *ret_fwd = f;
    return 0;
}

void ms_forward_destroy(ms_forward_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_forward_t *f = *self_p;
    float *bufs[] = { f->x, f->h, f->q, f->kk, f->v, f->att, f->tmp, f->moe, f->shx, f->hout, f->rl,
                      f->shg, f->shw, f->gw, f->scores, f->qa, f->lat, f->qn, f->qabs, f->olat, f->rowbuf,
                      f->rope_freq, f->sel };
    ms_mem_free(f->kc, f->kc_bytes);
    ms_mem_free(f->vc, f->vc_bytes);
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        free(bufs[i]);
    free(f->ids);
    free(f->zero_ids);
    free(f->seq_len);
    free(f->len_scratch);
    for (int i = 0; i < 3; i++)
        free(f->xq[i]);
    ms_expert_ws_destroy(&f->shws);
    ms_expert_ws_destroy(&f->dws);
    free(f->xqh);
    free(f->jobs);
    free(f->rope_cs);
    free(f);
    *self_p = NULL;
}

void ms_forward_seq_reset(ms_forward_t *f, int32_t seq)
{
    if (seq >= 0 && seq < f->p.n_seq_max)
        f->seq_len[seq] = 0;
}

int32_t ms_forward_seq_len(const ms_forward_t *f, int32_t seq)
{
    return (seq >= 0 && seq < f->p.n_seq_max) ? f->seq_len[seq] : 0;
}

uint64_t ms_forward_kv_bytes(const ms_forward_t *f)
{
    return ms_forward_kv_bytes_for(f->m, f->p.n_seq_max, f->p.n_ctx, f->p.kv_type);
}

/* The latent cache (deepseek2): one row of `width` values per position. */
static void *kv_row(const ms_forward_t *f, void *cache, int64_t width, int32_t seq, int il, int32_t pos)
{
    size_t idx = ((size_t)seq * (size_t)f->m->hp.n_layer + (size_t)il) * (size_t)f->p.n_ctx + (size_t)pos;
    return (char *)cache + idx * (size_t)width * f->kv_esize;
}
/* The K and V caches, head by head: [seq][layer][KV head][position][dim]. An
 * attention item goes through one KV head's rows, so they lie back to back:
 * rows a whole K row apart (n_head_kv x dim floats, 1 KB on the bench model)
 * fall into a quarter of L1's sets, and a block of them did not stay in L1
 * while the item's heads went through it (the dot and weighted-sum kernels
 * ran at half speed on data already in cache). */
static void *kv_head(const ms_forward_t *f, void *cache, int64_t dim, int32_t seq, int il, int head, int32_t pos)
{
    const ms_hparams_t *hp = &f->m->hp;
    size_t idx = (((size_t)seq * (size_t)hp->n_layer + (size_t)il) * (size_t)hp->n_head_kv + (size_t)head) *
                     (size_t)f->p.n_ctx + (size_t)pos;
    return (char *)cache + idx * (size_t)dim * f->kv_esize;
}

/* n values into the cache at dst, as the cache's type holds them. The
 * rounding to f16 is the scalar one on every ISA, so that the cache holds
 * the same bits whatever kernels run. */
static void kv_store(const ms_forward_t *f, void *dst, const float *x, int64_t n)
{
    if (f->p.kv_type == MS_TYPE_F16) {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++)
            h[i] = ms_f32_to_f16(x[i]);
    } else {
        memcpy(dst, x, sizeof(float) * (size_t)n);
    }
}

/* Checks ids, sequences and positions; a position may rewind a sequence but
 * not skip ahead. The sequence lengths change only when the whole batch is valid. */
static int check_batch(ms_forward_t *f, const ms_batch_tok_t *batch, int n, ms_err_t *err)
{
    if (n < 1 || n > f->p.n_batch_max) {
        ms_err_set(err, "batch of %d tokens is outside [1, %d]", n, f->p.n_batch_max);
        return -EINVAL;
    }
    memcpy(f->len_scratch, f->seq_len, sizeof(int32_t) * (size_t)f->p.n_seq_max);
    for (int i = 0; i < n; i++) {
        const ms_batch_tok_t *b = &batch[i];
        if (b->token < 0 || b->token >= f->m->hp.n_vocab) {
            ms_err_set(err, "token id %d is outside the vocabulary [0, %d)", b->token, f->m->hp.n_vocab);
            return -EINVAL;
        }
        if (b->seq < 0 || b->seq >= f->p.n_seq_max) {
            ms_err_set(err, "sequence %d is outside [0, %d)", b->seq, f->p.n_seq_max);
            return -EINVAL;
        }
        if (b->pos < 0 || b->pos >= f->p.n_ctx) {
            ms_err_set(err, "position %d is outside the context [0, %d)", b->pos, f->p.n_ctx);
            return -EINVAL;
        }
        int32_t len = f->len_scratch[b->seq];
        if (b->pos > len) {
            ms_err_set(err, "sequence %d: position %d skips ahead of its length %d", b->seq, b->pos, len);
            return -EINVAL;
        }
        f->len_scratch[b->seq] = b->pos + 1;
    }
    memcpy(f->seq_len, f->len_scratch, sizeof(int32_t) * (size_t)f->p.n_seq_max);
    return 0;
}

/* y = W x for the batch's n rows of x (stride ldx), quantising x as W's type needs. */
static void matmul(ms_forward_t *f, const ms_weight_t *w, const float *x, int64_t ldx, int n, float *y, int64_t ldy,
                   int slot)
{
    size_t qb = ms_act_row_bytes(w->type, w->n_in);
    if (qb)
        ms_act_quantize_rows(f->pool, f->k, w->type, x, ldx, n, w->n_in, f->xq[slot]);
    ms_mm_t job = { .type = w->type, .w = w->data, .n_out = w->n_out, .n_in = w->n_in, .x = x, .ldx = ldx,
                    .xq = qb ? f->xq[slot] : NULL, .n_tok = n, .y = y, .ldy = ldy, .w_r16 = w->r16 };
    ms_matmul_multi(f->pool, f->k, &job, 1);
}

/* Q, K and V from the same input in one pass over the pool. */
static void qkv(ms_forward_t *f, const ms_layer_t *L, int n)
{
    const ms_weight_t *ws[3] = { &L->wq, &L->wk, &L->wv };
    float *ys[3] = { f->q, f->kk, f->v };
    int64_t d = f->m->hp.n_embd;
    ms_mm_t jobs[3];
    for (int i = 0; i < 3; i++) {
        size_t qb = ms_act_row_bytes(ws[i]->type, d);
        int same = -1; /* the first earlier job of this type: its slot holds the quantised rows */
        for (int j = 0; j < i && same < 0; j++)
            if (ws[j]->type == ws[i]->type)
                same = j;
        if (qb && same < 0)
            ms_act_quantize_rows(f->pool, f->k, ws[i]->type, f->h, d, n, d, f->xq[i]);
        jobs[i] = (ms_mm_t){ .type = ws[i]->type, .w = ws[i]->data, .n_out = ws[i]->n_out, .n_in = d, .x = f->h,
                             .ldx = d, .xq = qb ? f->xq[same < 0 ? i : same] : NULL, .n_tok = n, .y = ys[i],
                             .ldy = ws[i]->n_out, .w_r16 = ws[i]->r16 };
    }
    ms_matmul_multi(f->pool, f->k, jobs, 3);
}

static void add_bias(float *y, const float *b, int n, int64_t width)
{
    for (int t = 0; t < n; t++)
        for (int64_t i = 0; i < width; i++)
            y[t * width + i] += b[i];
}

/* Biases, q/k norms and RoPE, then the new K/V rows into the cache. */
static void qk_prepare(ms_forward_t *f, const ms_layer_t *L, int il, const ms_batch_tok_t *batch, int n)
{
    const ms_hparams_t *hp = &f->m->hp;
    const ms_kernels_t *k = f->k;
    if (L->bq) {
        add_bias(f->q, L->bq, n, f->q_dim);
        add_bias(f->kk, L->bk, n, f->k_dim);
        add_bias(f->v, L->bv, n, f->v_dim);
    }
    for (int t = 0; t < n; t++) {
        float *q = f->q + t * f->q_dim, *kr = f->kk + t * f->k_dim;
        if (hp->qk_norm == MS_QK_NORM_FULL) {
            k->rmsnorm(q, q, L->q_norm, f->q_dim, hp->eps);
            k->rmsnorm(kr, kr, L->k_norm, f->k_dim, hp->eps);
        } else if (hp->qk_norm == MS_QK_NORM_HEAD) {
            for (int h = 0; h < hp->n_head; h++)
                k->rmsnorm(q + h * hp->head_dim, q + h * hp->head_dim, L->q_norm, hp->head_dim, hp->eps);
            for (int h = 0; h < hp->n_head_kv; h++)
                k->rmsnorm(kr + h * hp->head_dim, kr + h * hp->head_dim, L->k_norm, hp->head_dim, hp->eps);
        }
        /* the angles of this position, computed once per step for every layer */
        double *cs = f->rope_cs + (size_t)t * (size_t)hp->n_rot, *sn = cs + hp->n_rot / 2;
        if (il == 0)
            ms_rope_angles(hp->n_rot, batch[t].pos, hp->rope_base, cs, sn);
        ms_rope_apply(q, hp->n_head, hp->head_dim, hp->n_rot, cs, sn, hp->rope_mode);
        ms_rope_apply(kr, hp->n_head_kv, hp->head_dim, hp->n_rot, cs, sn, hp->rope_mode);
        for (int h = 0; h < hp->n_head_kv; h++) {
            kv_store(f, kv_head(f, f->kc, hp->head_dim, batch[t].seq, il, h, batch[t].pos), kr + h * hp->head_dim,
                     hp->head_dim);
            kv_store(f, kv_head(f, f->vc, hp->head_dim_v, batch[t].seq, il, h, batch[t].pos),
                     f->v + t * f->v_dim + h * hp->head_dim_v, hp->head_dim_v);
        }
    }
}

/* Before rows [j0, j0 + nb) of a cache run of n_pos rows of row bytes are
 * read: touches the pages MS_PAGE_AHEAD bytes on (all of them up to there
 * for the first block), so that their translations are under way before the
 * rows are (kernels.h, ms_touch_pages). */
static void touch_rows_ahead(const void *base, size_t row, int j0, int nb, int n_pos)
{
    uintptr_t b = (uintptr_t)base, end = b + (size_t)n_pos * row;
    uintptr_t from = b + (size_t)j0 * row + MS_PAGE_AHEAD, to = from + (size_t)nb * row;
    ms_touch_pages((const void *)(j0 ? from : b), (const void *)(to < end ? to : end));
}

typedef struct {
    ms_forward_t *f;
    const ms_batch_tok_t *batch;
    int n, il;
    int per; /* query heads of one KV group per work item (attn_heads_per_item) */
} attn_ctx_t;

/* Heads per item: a whole group (at most ATTN_HEADS_MAX), halved while
 * there would be fewer items than threads. */
static int attn_heads_per_item(const ms_hparams_t *hp, int n, int nth)
{
    int group = attn_group(hp), per = attn_heads_max(hp);
    while (per > 1 && (long long)n * attn_kv_sets(hp) * ((group + per - 1) / per) < nth)
        per = (per + 1) / 2;
    return per;
}

/* Causal attention of (token, KV group, up to `per` of its query heads)
 * items split across the pool's threads. */
static void attn_worker(void *arg, int ith, int nth)
{
    attn_ctx_t *c = arg;
    ms_forward_t *f = c->f;
    const ms_hparams_t *hp = &f->m->hp;
    const ms_kernels_t *k = f->k;
    int group = hp->n_head / hp->n_head_kv, chunks = (group + c->per - 1) / c->per;
    float scale = 1.0f / sqrtf((float)hp->head_dim);
    size_t n_ctx = (size_t)f->p.n_ctx;
    float *scores = f->scores + (size_t)ith * (size_t)attn_heads_max(hp) * n_ctx; /* [per][n_ctx] */
    long long begin, end;
    ms_pool_split((long long)c->n * hp->n_head_kv * chunks, 1, ith, nth, &begin, &end);
    for (long long item = begin; item < end; item++) {
        int t = (int)(item / (hp->n_head_kv * chunks)), r = (int)(item % (hp->n_head_kv * chunks));
        int g = r / chunks, h0 = g * group + (r % chunks) * c->per;
        int nh = g * group + group - h0 < c->per ? g * group + group - h0 : c->per;
        const ms_batch_tok_t *b = &c->batch[t];
        const float *q = f->q + t * f->q_dim + h0 * hp->head_dim;
        const char *kbase = kv_head(f, f->kc, hp->head_dim, b->seq, c->il, g, 0);
        const char *vbase = kv_head(f, f->vc, hp->head_dim_v, b->seq, c->il, g, 0);
        size_t krow = (size_t)hp->head_dim * f->kv_esize, vrow = (size_t)hp->head_dim_v * f->kv_esize;
        float *out = f->att + t * f->o_dim + h0 * hp->head_dim_v;
        int n_pos = b->pos + 1;
        for (int j0 = 0; j0 < n_pos; j0 += ATTN_BLOCK_ROWS) {
            int nb = n_pos - j0 < ATTN_BLOCK_ROWS ? n_pos - j0 : ATTN_BLOCK_ROWS;
            touch_rows_ahead(kbase, krow, j0, nb, n_pos);
            k->dot_rows_heads(f->p.kv_type, q, hp->head_dim, nh, kbase + (size_t)j0 * krow, hp->head_dim, nb,
                              hp->head_dim, scores + j0, (int64_t)n_ctx);
        }
        for (int i = 0; i < nh; i++) {
            float *si = scores + i * n_ctx;
            for (int j = 0; j < n_pos; j++)
                si[j] *= scale;
            k->softmax(si, n_pos);
        }
        memset(out, 0, sizeof(float) * (size_t)(nh * hp->head_dim_v));
        for (int j0 = 0; j0 < n_pos; j0 += ATTN_BLOCK_ROWS) {
            int nb = n_pos - j0 < ATTN_BLOCK_ROWS ? n_pos - j0 : ATTN_BLOCK_ROWS;
            touch_rows_ahead(vbase, vrow, j0, nb, n_pos);
            k->axpy_rows_heads(f->p.kv_type, out, hp->head_dim_v, scores + j0, (int64_t)n_ctx, nh,
                               vbase + (size_t)j0 * vrow, hp->head_dim_v, nb, hp->head_dim_v);
        }
    }
}

/* ---- deepseek2: multi-head latent attention in the absorbed form ----
 * The cache holds per token the normed latent c (kv_lora) and the roped key
 * k_pe (n_rot) shared by all heads. Head h scores position j with
 * q_nope.(W_UK[h] c_j) + q_pe.k_pe_j = (W_UK[h]^T q_nope).c_j + q_pe.k_pe_j,
 * so q_nope is taken into latent space once and no per-head K or V is ever
 * built; the output sum_j p_j c_j goes through W_UV[h] afterwards. */

/* cos, sin of every rotated pair at each token's position. */
static void rope_tables(ms_forward_t *f, const ms_batch_tok_t *batch, int n)
{
    int n_rot = f->m->hp.n_rot;
    for (int t = 0; t < n; t++) {
        double *cs = f->rope_cs + (size_t)t * (size_t)n_rot;
        for (int i = 0; i < n_rot / 2; i++) {
            double theta = (double)batch[t].pos * (double)f->rope_freq[i];
            cs[2 * i] = cos(theta);
            cs[2 * i + 1] = sin(theta);
        }
    }
}

/* Rotates the adjacent pairs (x[2i], x[2i+1]) of one n_rot-wide vector. */
static void rope_apply(float *x, const double *cs, int n_rot)
{
    for (int i = 0; i < n_rot / 2; i++) {
        double x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = (float)(x0 * cs[2 * i] - x1 * cs[2 * i + 1]);
        x[2 * i + 1] = (float)(x0 * cs[2 * i + 1] + x1 * cs[2 * i]);
    }
}

/* q (direct or low-rank), the latent and rope key into the cache; q_pe into
 * qabs's tail, q_nope gathered per head into qn. */
static void mla_project(ms_forward_t *f, const ms_layer_t *L, int il, const ms_batch_tok_t *batch, int n)
{
    const ms_hparams_t *hp = &f->m->hp;
    int64_t d = hp->n_embd, H = hp->n_head, hd = hp->head_dim, C = hp->kv_lora_rank, R = hp->q_lora_rank;
    int64_t nope = hd - hp->n_rot, cd = f->c_dim;
    if (R > 0) {
        matmul(f, &L->wq_a, f->h, d, n, f->qa, R, 0);
        for (int t = 0; t < n; t++)
            f->k->rmsnorm(f->qa + t * R, f->qa + t * R, L->q_a_norm, R, hp->eps);
        matmul(f, &L->wq_b, f->qa, R, n, f->q, f->q_dim, 0);
    } else {
        matmul(f, &L->wq, f->h, d, n, f->q, f->q_dim, 0);
    }
    matmul(f, &L->wkv_a, f->h, d, n, f->lat, cd, 1);
    rope_tables(f, batch, n);
    for (int t = 0; t < n; t++) {
        const double *cs = f->rope_cs + (size_t)t * (size_t)hp->n_rot;
        float *lat = f->lat + t * cd;
        f->k->rmsnorm(lat, lat, L->kv_a_norm, C, hp->eps);
        rope_apply(lat + C, cs, hp->n_rot);
        kv_store(f, kv_row(f, f->kc, cd, batch[t].seq, il, batch[t].pos), lat, cd);
        for (int64_t h = 0; h < H; h++) {
            float *qh = f->q + t * f->q_dim + h * hd;
            rope_apply(qh + nope, cs, hp->n_rot);
            memcpy(f->qabs + (t * H + h) * cd + C, qh + nope, sizeof(float) * (size_t)hp->n_rot);
            memcpy(f->qn + (h * n + t) * nope, qh, sizeof(float) * (size_t)nope);
        }
    }
}

/* One product per head in one pass over the pool: y[t*ldy + h*y_head + r] =
 * sum_c W_h[r][c] x[h][t][c], W_h at base + h * head_bytes with rows of type
 * w->type, n_in wide, n_out of them; x [H][n][n_in] packed. */
static void per_head_matmul(ms_forward_t *f, ms_type_t type, const char *base, uint64_t head_bytes, int64_t n_in,
                            int64_t n_out, const float *x, int n, float *y, int64_t y_head, int64_t ldy)
{
    int64_t H = f->m->hp.n_head;
    size_t qb = ms_act_row_bytes(type, n_in);
    if (qb)
        ms_act_quantize_rows(f->pool, f->k, type, x, n_in, H * n, n_in, f->xqh);
    for (int64_t h = 0; h < H; h++)
        f->jobs[h] = (ms_mm_t){ .type = type, .w = base + (uint64_t)h * head_bytes, .n_out = n_out, .n_in = n_in,
                                .x = x + h * n * n_in, .ldx = n_in,
                                .xq = qb ? (const char *)f->xqh + (size_t)(h * n) * qb : NULL, .n_tok = n,
                                .y = y + h * y_head, .ldy = ldy };
    ms_matmul_multi(f->pool, f->k, f->jobs, (int)H);
}

typedef struct {
    ms_forward_t *f;
    const ms_layer_t *L;
    int n;
} absorb_ctx_t;

/* Merged attn_kv_b: W_UK[h] is stored [nope][kv_lora] (rows per k_nope dim),
 * so W_UK[h]^T q_nope sums its rows weighted by q_nope, row by row; heads
 * split across threads. Each token's sum runs in the same order whatever the batch. */
static void absorb_kvb_worker(void *arg, int ith, int nth)
{
    absorb_ctx_t *c = arg;
    ms_forward_t *f = c->f;
    const ms_hparams_t *hp = &f->m->hp;
    const ms_weight_t *w = &c->L->wkv_b;
    int64_t H = hp->n_head, C = hp->kv_lora_rank, nope = hp->head_dim - hp->n_rot, cd = f->c_dim;
    int64_t per_head = nope + hp->head_dim_v;
    float *row = f->rowbuf + (size_t)ith * (size_t)C;
    long long begin, end;
    ms_pool_split(H, 1, ith, nth, &begin, &end);
    for (long long h = begin; h < end; h++) {
        for (int t = 0; t < c->n; t++)
            memset(f->qabs + (t * H + h) * cd, 0, sizeof(float) * (size_t)C);
        for (int64_t i = 0; i < nope; i++) {
            const char *src = (const char *)w->data + (uint64_t)(h * per_head + i) * w->row_bytes;
            f->k->dequant_row(w->type, src, row, C);
            for (int t = 0; t < c->n; t++)
                f->k->axpy(f->qabs + (t * H + h) * cd, f->qn[(h * c->n + t) * nope + i], row, C);
        }
    }
}

/* qabs[t][h][0..kv_lora) = W_UK[h]^T q_nope[t][h]. */
static void mla_absorb_q(ms_forward_t *f, const ms_layer_t *L, int n)
{
    const ms_hparams_t *hp = &f->m->hp;
    int64_t H = hp->n_head, C = hp->kv_lora_rank, nope = hp->head_dim - hp->n_rot;
    if (L->wk_b.data) {
        per_head_matmul(f, L->wk_b.type, L->wk_b.data, L->wk_b.mat_bytes, nope, C, f->qn, n, f->qabs, f->c_dim,
                        H * f->c_dim);
        return;
    }
    absorb_ctx_t c = { .f = f, .L = L, .n = n };
    ms_pool_run(f->pool, absorb_kvb_worker, &c);
}

/* att[t][h] = W_UV[h] olat[h][t], from attn_v_b or the v rows of attn_kv_b. */
static void mla_expand_v(ms_forward_t *f, const ms_layer_t *L, int n)
{
    const ms_hparams_t *hp = &f->m->hp;
    int64_t C = hp->kv_lora_rank, hdv = hp->head_dim_v, nope = hp->head_dim - hp->n_rot;
    if (L->wv_b.data) {
        per_head_matmul(f, L->wv_b.type, L->wv_b.data, L->wv_b.mat_bytes, C, hdv, f->olat, n, f->att, hdv,
                        f->o_dim);
        return;
    }
    const ms_weight_t *w = &L->wkv_b;
    per_head_matmul(f, w->type, (const char *)w->data + (uint64_t)nope * w->row_bytes,
                    (uint64_t)(nope + hdv) * w->row_bytes, C, hdv, f->olat, n, f->att, hdv, f->o_dim);
}

/* Causal attention of (token, head) pairs over the cached latents. */
static void mla_attn_worker(void *arg, int ith, int nth)
{
    attn_ctx_t *c = arg;
    ms_forward_t *f = c->f;
    const ms_hparams_t *hp = &f->m->hp;
    const ms_kernels_t *k = f->k;
    int64_t H = hp->n_head, C = hp->kv_lora_rank, cd = f->c_dim;
    int chunks = (int)((H + c->per - 1) / c->per);
    size_t n_ctx = (size_t)f->p.n_ctx;
    float *scores = f->scores + (size_t)ith * (size_t)attn_heads_max(hp) * n_ctx; /* [per][n_ctx] */
    long long begin, end;
    ms_pool_split((long long)c->n * chunks, 1, ith, nth, &begin, &end);
    for (long long item = begin; item < end; item++) {
        int t = (int)(item / chunks);
        int64_t h0 = (item % chunks) * c->per;
        int nh = H - h0 < c->per ? (int)(H - h0) : c->per;
        const ms_batch_tok_t *b = &c->batch[t];
        const char *base = kv_row(f, f->kc, cd, b->seq, c->il, 0);
        size_t row = (size_t)cd * f->kv_esize;
        int n_pos = b->pos + 1;
        for (int j0 = 0; j0 < n_pos; j0 += MLA_BLOCK_ROWS) {
            int nb = n_pos - j0 < MLA_BLOCK_ROWS ? n_pos - j0 : MLA_BLOCK_ROWS;
            touch_rows_ahead(base, row, j0, nb, n_pos);
            k->dot_rows_heads(f->p.kv_type, f->qabs + (t * H + h0) * cd, cd, nh, base + (size_t)j0 * row, cd, nb, cd,
                              scores + j0, (int64_t)n_ctx);
        }
        for (int i = 0; i < nh; i++) {
            float *si = scores + i * n_ctx;
            for (int j = 0; j < n_pos; j++)
                si[j] *= hp->attn_scale;
            k->softmax(si, n_pos);
            memset(f->olat + ((h0 + i) * c->n + t) * C, 0, sizeof(float) * (size_t)C);
        }
        for (int j0 = 0; j0 < n_pos; j0 += MLA_BLOCK_ROWS) {
            int nb = n_pos - j0 < MLA_BLOCK_ROWS ? n_pos - j0 : MLA_BLOCK_ROWS;
            k->axpy_rows_heads(f->p.kv_type, f->olat + (h0 * c->n + t) * C, c->n * C, scores + j0, (int64_t)n_ctx, nh,
                               base + (size_t)j0 * row, cd, nb, C);
        }
    }
}

static void mla_block(ms_forward_t *f, int il, const ms_batch_tok_t *batch, int n)
{
    const ms_layer_t *L = &f->m->layers[il];
    mla_project(f, L, il, batch, n);
    mla_absorb_q(f, L, n);
    attn_ctx_t c = { .f = f, .batch = batch, .n = n, .il = il,
                     .per = attn_heads_per_item(&f->m->hp, n, ms_pool_size(f->pool)) };
    ms_pool_run(f->pool, mla_attn_worker, &c);
    mla_expand_v(f, L, n);
}

static void attention_block(ms_forward_t *f, int il, const ms_batch_tok_t *batch, int n)
{
    const ms_layer_t *L = &f->m->layers[il];
    const ms_hparams_t *hp = &f->m->hp;
    int64_t d = hp->n_embd;
    for (int t = 0; t < n; t++)
        f->k->rmsnorm(f->h + t * d, f->x + t * d, L->attn_norm, d, hp->eps);
    if (f->c_dim) {
        mla_block(f, il, batch, n);
        matmul(f, &L->wo, f->att, f->o_dim, n, f->tmp, d, 0);
        for (int t = 0; t < n; t++)
            f->k->axpy(f->x + t * d, 1.0f, f->tmp + t * d, d);
        return;
    }
    qkv(f, L, n);
    qk_prepare(f, L, il, batch, n);
    attn_ctx_t c = { .f = f, .batch = batch, .n = n, .il = il,
                     .per = attn_heads_per_item(hp, n, ms_pool_size(f->pool)) };
    ms_pool_run(f->pool, attn_worker, &c);
    matmul(f, &L->wo, f->att, f->o_dim, n, f->tmp, d, 0);
    for (int t = 0; t < n; t++)
        f->k->axpy(f->x + t * d, 1.0f, f->tmp + t * d, d);
}

/* The K experts with the highest score, best first (ties to the lowest id);
 * w[j] = weight[ids[j]]. Returns the sum of the weights taken. */
static float pick_topk(const float *score, const float *weight, int E, int K, int32_t *ids, float *w)
{
    float sum = 0;
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int i = 0; i < j; i++)
                taken = taken || ids[i] == e;
            if (!taken && (best < 0 || score[e] > score[best]))
                best = e;
        }
        ids[j] = best;
        w[j] = weight[best];
        sum += weight[best];
    }
    return sum;
}

/* Top-k of the softmax over all experts (ties: lower index first), with the
 * architecture's renormalisation. */
static void route(ms_forward_t *f, int n)
{
    const ms_hparams_t *hp = &f->m->hp;
    int E = hp->n_expert, K = hp->n_expert_used;
    for (int t = 0; t < n; t++) {
        float *p = f->rl + (int64_t)t * E;
        f->k->softmax(p, E);
        int32_t *ids = f->ids + t * K;
        float *w = f->gw + t * K;
        float sum = pick_topk(p, p, E, K, ids, w);
        if (hp->norm_topk)
            for (int j = 0; j < K; j++)
                w[j] /= sum;
    }
}

/* Keeps the n_group_used groups whose two best selection scores sum highest
 * (ties: lower group first), as DeepSeek-V3 ranks them; the other groups'
 * scores become -inf so no expert of theirs is chosen. */
static void mask_groups(float *s, int n_groups, int per_group, int n_used)
{
    float score[MS_EXPERTS_MAX];
    bool keep[MS_EXPERTS_MAX];
    for (int g = 0; g < n_groups; g++) {
        float best = -INFINITY, second = -INFINITY;
        for (int e = g * per_group; e < (g + 1) * per_group; e++) {
            if (s[e] > best) {
                second = best;
                best = s[e];
            } else if (s[e] > second) {
                second = s[e];
            }
        }
        score[g] = per_group >= 2 ? best + second : best;
        keep[g] = false;
    }
    for (int j = 0; j < n_used; j++) {
        int pick = -1;
        for (int g = 0; g < n_groups; g++)
            if (!keep[g] && (pick < 0 || score[g] > score[pick]))
                pick = g;
        keep[pick] = true;
    }
    for (int g = 0; g < n_groups; g++)
        for (int e = g * per_group; !keep[g] && e < (g + 1) * per_group; e++)
            s[e] = -INFINITY;
}

/* deepseek2 routing: scores by softmax (V2) or sigmoid (V3); experts chosen
 * by score + selection bias within the allowed groups (ties: lower index);
 * weights are the unbiased scores, renormalised when the file says so, times
 * the routed scaling factor. */
static void route_deepseek2(ms_forward_t *f, const ms_layer_t *L, int n)
{
    const ms_hparams_t *hp = &f->m->hp;
    int E = hp->n_expert, K = hp->n_expert_used;
    for (int t = 0; t < n; t++) {
        float *p = f->rl + (int64_t)t * E, *s = f->sel + (int64_t)t * E;
        if (hp->gating == MS_GATING_SOFTMAX)
            f->k->softmax(p, E);
        else
            for (int e = 0; e < E; e++)
                p[e] = 1.0f / (1.0f + expf(-p[e]));
        for (int e = 0; e < E; e++)
            s[e] = p[e] + (L->exp_probs_b ? L->exp_probs_b[e] : 0.0f);
        if (hp->n_group_used < hp->n_expert_groups)
            mask_groups(s, hp->n_expert_groups, E / hp->n_expert_groups, hp->n_group_used);
        int32_t *ids = f->ids + t * K;
        float *w = f->gw + t * K;
        float sum = pick_topk(s, p, E, K, ids, w);
        for (int j = 0; j < K; j++)
            w[j] = (hp->norm_topk ? w[j] / sum : w[j]) * hp->expert_weights_scale;
    }
}

/* A leading dense layer (deepseek2): its FFN on the coordinator, never dispatched. */
static int dense_ffn_block(ms_forward_t *f, const ms_layer_t *L, int n)
{
    int64_t d = f->m->hp.n_embd;
    /* shw holds 1 for every token (alloc_deepseek2): the dense FFN as a 1-expert FFN of weight 1 */
    int rc = ms_expert_ffn(f->pool, f->k, &L->ffn_gate, &L->ffn_up, &L->ffn_down, f->h, d, n, f->zero_ids, f->shw,
                           1, f->moe, d, f->dws);
    MS_ASSERT(rc == 0);
    for (int t = 0; t < n; t++)
        f->k->axpy(f->x + t * d, 1.0f, f->moe + t * d, d);
    return 0;
}

static int moe_block(ms_forward_t *f, int il, int n, ms_err_t *err)
{
    const ms_layer_t *L = &f->m->layers[il];
    const ms_hparams_t *hp = &f->m->hp;
    int64_t d = hp->n_embd;
    for (int t = 0; t < n; t++)
        f->k->rmsnorm(f->h + t * d, f->x + t * d, L->ffn_norm, d, hp->eps);
    if (!L->has_experts)
        return dense_ffn_block(f, L, n);
    matmul(f, &L->router, f->h, d, n, f->rl, hp->n_expert, 0);
    if (hp->arch == MS_ARCH_DEEPSEEK2)
        route_deepseek2(f, L, n);
    else
        route(f, n);
    int rc = f->backend->submit(f->backend, il, f->h, n, f->ids, f->gw, hp->n_expert_used);
    if (rc) {
        ms_err_set(err, "layer %d: the expert backend refused the batch (%d)", il, rc);
        return rc;
    }
    if (hp->shared_expert) { /* local work while the routed experts are computed */
        if (L->shexp_gate.data) { /* qwen2moe's gate; deepseek2's shared experts have weight 1 */
            matmul(f, &L->shexp_gate, f->h, d, n, f->shg, 1, 1);
            for (int t = 0; t < n; t++)
                f->shw[t] = 1.0f / (1.0f + expf(-f->shg[t]));
        }
        rc = ms_expert_ffn(f->pool, f->k, &L->gate_shexp, &L->up_shexp, &L->down_shexp, f->h, d, n,
                           f->zero_ids, f->shw, 1, f->shx, d, f->shws);
        MS_ASSERT(rc == 0);
    }
    rc = f->backend->wait(f->backend, f->moe, err);
    if (rc)
        return rc;
    for (int t = 0; t < n; t++) {
        f->k->axpy(f->x + t * d, 1.0f, f->moe + t * d, d);
        if (hp->shared_expert)
            f->k->axpy(f->x + t * d, 1.0f, f->shx + t * d, d);
    }
    return 0;
}

static void embed(ms_forward_t *f, const ms_batch_tok_t *batch, int n)
{
    const ms_weight_t *e = &f->m->tok_embd;
    for (int t = 0; t < n; t++)
        f->k->dequant_row(e->type, (const char *)e->data + (uint64_t)batch[t].token * e->row_bytes,
                          f->x + (int64_t)t * e->n_in, e->n_in);
}

static void output_head(ms_forward_t *f, const ms_batch_tok_t *batch, int n, float *logits_out)
{
    const ms_hparams_t *hp = &f->m->hp;
    int64_t d = hp->n_embd;
    int rows = 0;
    for (int t = 0; t < n; t++)
        if (batch[t].logits)
            f->k->rmsnorm(f->hout + (int64_t)rows++ * d, f->x + t * d, f->m->output_norm, d, hp->eps);
    if (rows)
        matmul(f, &f->m->output, f->hout, d, rows, logits_out, hp->n_vocab, 0);
}

int ms_forward_step(ms_forward_t *f, const ms_batch_tok_t *batch, int n, float *logits_out, ms_err_t *err)
{
    int rc = check_batch(f, batch, n, err);
    if (rc)
        return rc;
    /* A step is one stretch of back-to-back kernels: let the pool's threads
     * poll briefly between them instead of sleeping (see pool.h). The window
     * stays set when the step returns: in a generation the next step follows
     * within tens of microseconds (sampling), and a worker asleep by then
     * started that step ~30 us late here. Once the steps stop, the workers
     * poll for at most FWD_POOL_SPIN_US before they sleep; the scheduler
     * closes the window when it goes idle. */
    ms_pool_set_spin(f->pool, FWD_POOL_SPIN_US);
    embed(f, batch, n);
    for (int il = 0; il < f->m->hp.n_layer && !rc; il++) {
        attention_block(f, il, batch, n);
        rc = moe_block(f, il, n, err);
    }
    if (!rc)
        output_head(f, batch, n, logits_out);
    return rc;
}
