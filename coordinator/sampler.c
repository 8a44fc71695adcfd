/* Token sampler: the llama.cpp chain (repetition penalty, top-k, top-p, min-p,
 * temperature, seeded draw) over buffers sized once at creation. */
#include "sampler.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "limits.h"
#include "ms_assert.h"

/* First chunk of the sorted prefix built while looking for the top-p cut;
 * grows fourfold, so a peaked distribution sorts only a few dozen tokens. */
#define SAMPLER_TOP_P_CHUNK 64

typedef struct {
    float logit;
    int32_t id;
} sampler_cand_t;

struct ms_sampler {
    ms_sampler_params_t p;
    int32_t n_vocab;
    sampler_cand_t *cand; /* [n_vocab] working copy of the logits */
    double *prob;         /* [n_vocab] unnormalised weights of the survivors */
    uint8_t *seen;        /* [n_vocab] penalty applied to this id in this step */
    int32_t *hist;        /* [repeat_last_n] ring of accepted tokens */
    int32_t hist_len;
    int32_t hist_pos;
    uint64_t rng[4];      /* xoshiro256** state */
};

ms_sampler_params_t ms_sampler_defaults(void)
{
    return (ms_sampler_params_t){
        .temp = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 0,
    };
}

/* ---- generator: splitmix64 expands the seed, xoshiro256** draws ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* Uniform in [0,1): the top 53 bits, exactly representable in a double, so
 * every machine turns the same state into the same number. */
static double rng_uniform(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

/* ---- construction ---- */

static bool params_valid(const ms_sampler_params_t *p, int32_t n_vocab)
{
    /* Written as positive ranges so that NaN fails every test. */
    if (!(p->temp >= 0.0f && p->temp <= 100.0f))
        return false;
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return false;
    if (!(p->min_p >= 0.0f && p->min_p < 1.0f))
        return false;
    if (!(p->repeat_penalty > 0.0f && isfinite(p->repeat_penalty)))
        return false;
    if (p->repeat_last_n < 0)
        return false;
    return n_vocab >= 1 && n_vocab <= MS_VOCAB_MAX;
}

int ms_sampler_new(const ms_sampler_params_t *p, int32_t n_vocab, ms_sampler_t **ret_sampler)
{
    if (!p || !ret_sampler || !params_valid(p, n_vocab))
        return -EINVAL;
    ms_sampler_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->p = *p;
    /* A window longer than the longest context can never hold more tokens. */
    if (s->p.repeat_last_n > MS_CONTEXT_MAX)
        s->p.repeat_last_n = MS_CONTEXT_MAX;
    if (s->p.top_k > n_vocab)
        s->p.top_k = n_vocab;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof(*s->cand));
    s->prob = malloc((size_t)n_vocab * sizeof(*s->prob));
    s->seen = calloc((size_t)n_vocab, 1);
    s->hist = malloc(((size_t)s->p.repeat_last_n + 1) * sizeof(*s->hist));
    if (!s->cand || !s->prob || !s->seen || !s->hist) {
        ms_sampler_destroy(&s);
        return -ENOMEM;
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    *ret_sampler = s;
    return 0;
}

void ms_sampler_destroy(ms_sampler_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ms_sampler_t *s = *self_p;
    free(s->cand);
    free(s->prob);
    free(s->seen);
    free(s->hist);
    free(s);
    *self_p = NULL;
}

void ms_sampler_accept(ms_sampler_t *s, int32_t token)
{
    MS_ASSERT(s);
    /* An id outside the vocabulary has no logit to penalise. */
    if (token < 0 || token >= s->n_vocab || s->p.repeat_last_n == 0)
        return;
    s->hist[s->hist_pos] = token;
    s->hist_pos = (s->hist_pos + 1) % s->p.repeat_last_n;
    if (s->hist_len < s->p.repeat_last_n)
        s->hist_len++;
}

/* ---- ordering: logit descending, then id ascending (a total order, so
 * selection and sorting give one answer whatever the algorithm) ---- */

static bool cand_before(const sampler_cand_t *a, const sampler_cand_t *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static void cand_swap(sampler_cand_t *a, sampler_cand_t *b)
{
    sampler_cand_t t = *a;
    *a = *b;
    *b = t;
}

/* Heap whose root is the element that sorts last, so that moving roots to
 * the back leaves v in cand_before order. */
static void sift_down(sampler_cand_t *v, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && cand_before(&v[child], &v[child + 1]))
            child++;
        if (!cand_before(&v[root], &v[child]))
            return;
        cand_swap(&v[child], &v[root]);
        root = child;
    }
}

/* In-place heapsort: O(n log n) whatever the input, and no allocation
 * (glibc's qsort may call malloc). */
static void cand_sort(sampler_cand_t *v, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(v, i, n);
    for (size_t end = n; end > 1; end--) {
        cand_swap(&v[0], &v[end - 1]);
        sift_down(v, 0, end - 1);
    }
}

static size_t median3(sampler_cand_t *v, size_t a, size_t b, size_t c)
{
    if (cand_before(&v[a], &v[b]))
        return cand_before(&v[b], &v[c]) ? b : (cand_before(&v[a], &v[c]) ? c : a);
    return cand_before(&v[a], &v[c]) ? a : (cand_before(&v[b], &v[c]) ? c : b);
}

/* Lomuto partition of v[lo, hi) around a median-of-three pivot; returns the
 * pivot's final index. Everything before it sorts before it. */
static size_t partition(sampler_cand_t *v, size_t lo, size_t hi)
{
    size_t piv = median3(v, lo, lo + (hi - lo) / 2, hi - 1);
    cand_swap(&v[piv], &v[hi - 1]);
    size_t store = lo;
    for (size_t i = lo; i < hi - 1; i++) {
        if (cand_before(&v[i], &v[hi - 1]))
            cand_swap(&v[i], &v[store++]);
    }
    cand_swap(&v[store], &v[hi - 1]);
    return store;
}

/* Moves the k first-in-order elements of v[0, n) to v[0, k), unordered.
 * Quickselect, with heapsort once the depth shows a bad pivot run. */
static void cand_select(sampler_cand_t *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n;
    int depth = 0;
    for (size_t m = n; m > 1; m >>= 1)
        depth += 2;
    while (hi - lo > 1 && k > lo && k < hi) {
        if (depth-- == 0) {
            cand_sort(v + lo, hi - lo);
            return;
        }
        size_t p = partition(v, lo, hi);
        if (p < k)
            lo = p + 1;
        else
            hi = p;
    }
}

/* ---- the chain ---- */

/* Copies the logits, mapping NaN to -inf and +inf to FLT_MAX so that every
 * later comparison and exp() is defined. */
static void load_logits(ms_sampler_t *s, const float *logits)
{
    for (int32_t i = 0; i < s->n_vocab; i++) {
        float x = logits[i];
        if (isnan(x))
            x = -INFINITY;
        else if (x == INFINITY)
            x = FLT_MAX;
        s->cand[i] = (sampler_cand_t){ .logit = x, .id = i };
    }
}

/* llama.cpp's rule, once per distinct token in the window. cand is still
 * indexed by id here. */
static void apply_penalty(ms_sampler_t *s)
{
    float pen = s->p.repeat_penalty;
    if (pen == 1.0f || s->hist_len == 0)
        return;
    for (int32_t i = 0; i < s->hist_len; i++) {
        int32_t t = s->hist[i];
        if (s->seen[t])
            continue;
        s->seen[t] = 1;
        float *l = &s->cand[t].logit;
        *l = *l > 0.0f ? *l / pen : *l * pen;
    }
    for (int32_t i = 0; i < s->hist_len; i++)
        s->seen[s->hist[i]] = 0;
}

static int32_t argmax(const sampler_cand_t *c, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++) {
        if (cand_before(&c[i], &c[best]))
            best = i;
    }
    return c[best].id;
}

static float max_logit(const sampler_cand_t *c, size_t n)
{
    float m = c[0].logit;
    for (size_t i = 1; i < n; i++)
        m = c[i].logit > m ? c[i].logit : m;
    return m;
}

/* Keeps tokens with p >= min_p * p_max, i.e. exp(l - max) >= min_p; the
 * survivors move to the front. Returns their count (>= 1: the max stays). */
static size_t filter_min_p(sampler_cand_t *c, size_t n, float mx, float min_p)
{
    size_t keep = 0;
    for (size_t i = 0; i < n; i++) {
        if (exp((double)c[i].logit - mx) >= (double)min_p)
            cand_swap(&c[i], &c[keep++]);
    }
    return keep;
}

/* Sorts the smallest prefix of c[0, n) whose probability (normalised by z
 * over all top-k survivors, as top-p comes before min-p) reaches top_p, in
 * growing chunks. Returns the prefix length (>= 1). */
static size_t cut_top_p(sampler_cand_t *c, size_t n, float mx, double z, float top_p)
{
    double cum = 0.0;
    size_t done = 0, chunk = SAMPLER_TOP_P_CHUNK;
    while (done < n) {
        size_t end = n - done > chunk ? done + chunk : n;
        cand_select(c + done, n - done, end - done);
        cand_sort(c + done, end - done);
        for (size_t i = done; i < end; i++) {
            cum += exp((double)c[i].logit - mx) / z;
            if (cum >= (double)top_p)
                return i + 1;
        }
        done = end;
        chunk *= 4;
    }
    return n;
}

static double sum_exp(const sampler_cand_t *c, size_t n, float mx)
{
    double z = 0.0;
    for (size_t i = 0; i < n; i++)
        z += exp((double)c[i].logit - mx);
    return z;
}

/* Softmax of logits / temp over c[0, n) and one draw. */
static int32_t draw(ms_sampler_t *s, size_t n, float mx)
{
    double inv_t = 1.0 / (double)s->p.temp, total = 0.0;
    for (size_t i = 0; i < n; i++) {
        s->prob[i] = exp(((double)s->cand[i].logit - mx) * inv_t);
        total += s->prob[i];
    }
    double u = rng_uniform(s->rng) * total, cum = 0.0;
    for (size_t i = 0; i < n; i++) {
        cum += s->prob[i];
        if (u < cum)
            return s->cand[i].id;
    }
    /* u rounded up to total: the last token with any weight. */
    for (size_t i = n; i-- > 0;) {
        if (s->prob[i] > 0.0)
            return s->cand[i].id;
    }
    return s->cand[0].id;
}

int32_t ms_sampler_sample(ms_sampler_t *s, const float *logits)
{
    MS_ASSERT(s && logits);
    size_t n = (size_t)s->n_vocab;
    load_logits(s, logits);
    apply_penalty(s);
    if (s->p.temp <= 0.0f)
        return argmax(s->cand, n);
    if (s->p.top_k > 0 && (size_t)s->p.top_k < n) {
        cand_select(s->cand, n, (size_t)s->p.top_k);
        n = (size_t)s->p.top_k;
    }
    float mx = max_logit(s->cand, n);
    if (mx == -INFINITY) /* nothing has any probability: fall back to greedy */
        return argmax(s->cand, n);
    double z = sum_exp(s->cand, n, mx);
    /* min-p first as a cheap pre-filter: the final set is the shorter of the
     * two prefixes, and z above keeps top-p's normalisation unchanged. */
    if (s->p.min_p > 0.0f)
        n = filter_min_p(s->cand, n, mx, s->p.min_p);
    if (s->p.top_p < 1.0f)
        n = cut_top_p(s->cand, n, mx, z, s->p.top_p);
    return draw(s, n, mx);
}
