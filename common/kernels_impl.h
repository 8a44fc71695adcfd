/* Private to the kernel files: the per-ISA tables and the pieces of the
 * scalar reference the SIMD paths reuse for rare cases. */
#ifndef MS_KERNELS_IMPL_H
#define MS_KERNELS_IMPL_H

#include <stdatomic.h>
#include <stdbool.h>

#include "kernels.h"
#include "kquant.h"

extern const ms_kernels_t ms_kernels_scalar;
extern const ms_kernels_t ms_kernels_avx2;
extern const ms_kernels_t ms_kernels_avx512;

/* The kernels cannot return errors (pure functions on the hot path), so a job
 * they cannot compute (type without kernels, a quantised type without xq or
 * with n_in not a whole number of blocks) yields NaN rows: visibly wrong,
 * never a crash. */
bool ms_kern_job_ok(const ms_mm_t *mm);
void ms_kern_fill_nan(const ms_mm_t *mm, int64_t r0, int64_t r1);

/* Q8_0 activation quantisation as llama.cpp's reference does it:
 * d = amax / 127, q = round-half-away(x * (1/d)), clamped to [-127, 127]
 * (NaN inputs give -127; the f16 scale carries the inf/NaN). */
void ms_kern_quantize_q8_0(const float *x, int64_t n, ms_block_q8_0_t *y);

/* One block's scale and inverse scale, shared so every ISA quantises to the
 * same bits. */
static inline float ms_kern_q8_inv_scale(float amax, uint16_t *ret_d)
{
    float d = amax / 127.0f;
    *ret_d = ms_f32_to_f16(d);
    return d != 0.0f ? 1.0f / d : 0.0f;
}

/* Query heads the next pass of a multi-head attention kernel takes when
 * left remain and a pass takes at most max: the passes share them evenly
 * (7 = 4 + 3, 6 = 3 + 3), so no pass runs with one head's few accumulator
 * chains. */
static inline int ms_kern_heads_next(int left, int max)
{
    int passes = (left + max - 1) / max;
    return (left + passes - 1) / passes;
}

/* One-token products stream every weight row once from memory. The hardware
 * prefetchers alone keep too few lines in flight for that: the kernel's many
 * instructions per cache line fill the reorder window long before its loads
 * do (one thread streamed Q8_0 rows at 60-75 % of a bare read loop). So the
 * decode kernels ask for the line MS_KERN_STREAM_AHEAD bytes ahead of each
 * one they are about to read, without keeping it in the outer caches (on the
 * bench model's shapes: one-token products 8-18 % faster on 2 threads, 40 %
 * on one; docs/performance.md). 12 KiB keeps 192 lines in flight; 8-16 KiB
 * measured alike. The stream stops at `end`, the end of the matrix, so that
 * nothing past it is fetched. */
#define MS_KERN_STREAM_AHEAD (12 * 1024)

static inline void ms_kern_stream_lines(const void *from, size_t len, const void *end)
{
    uintptr_t p = (uintptr_t)from + MS_KERN_STREAM_AHEAD, e = p + len;
    if (e > (uintptr_t)end)
        e = (uintptr_t)end;
    for (; p < e; p += 64)
        __builtin_prefetch((const void *)p, 0, 0);
}

/* The lines and the pages MS_PAGE_AHEAD on (kernels.h, ms_touch_pages). */
static inline void ms_kern_stream_ahead(const void *from, size_t len, const void *end)
{
    ms_kern_stream_lines(from, len, end);
    uintptr_t p = (uintptr_t)from + MS_PAGE_AHEAD, e = p + len;
    ms_touch_pages((const void *)p, (const void *)(e < (uintptr_t)end ? e : (uintptr_t)end));
}

/* Which line of a page the one-token streams touch ahead; ms_kernels_for
 * sets it from the CPU before it hands out a table. With false, the first
 * line of each page MS_PAGE_AHEAD on (ms_touch_pages): what paid on the
 * AVX-512 machine measured, for its own kernels and for the AVX2 ones run
 * there (MS_KERNELS=avx2). On the AVX2-only machine measured (a Zen 3 EPYC,
 * virtual) that touch made the one-token products about 10 % slower, most
 * likely because a stream's miss on a page's first line is what starts the
 * hardware prefetcher on that page there; touching each page's middle line
 * MS_KERN_MID_AHEAD on instead, with the lines as before, made them 2-9 %
 * faster and decode steps 4-8 % faster (passes and steps alternating in one
 * process; docs/performance.md, "Pages"). So true (the AVX2 table on a CPU
 * without AVX-512) means the middle lines. */
extern _Atomic bool ms_kern_touch_mid;

#define MS_KERN_MID_AHEAD (32 * 1024)

/* Touches the middle line of each page that starts in [from, to), none at
 * or past end. */
static inline void ms_touch_pages_mid(uintptr_t from, uintptr_t to, uintptr_t end)
{
    uintptr_t last = end - MS_PAGE_BYTES / 2; /* a page starting here or later has its middle past end */
    ms_touch_pages_at((const void *)from, (const void *)(to < last ? to : last), MS_PAGE_BYTES / 2);
}

/* The AVX2 kernels' stream: the lines ahead, and the pages' first lines
 * (ms_kern_stream_ahead) or their middle lines, as ms_kern_touch_mid says. */
static inline void ms_kern_stream_avx2(const void *from, size_t len, const void *end)
{
    if (!atomic_load_explicit(&ms_kern_touch_mid, memory_order_relaxed)) {
        ms_kern_stream_ahead(from, len, end);
        return;
    }
    ms_kern_stream_lines(from, len, end);
    uintptr_t p = (uintptr_t)from + MS_KERN_MID_AHEAD;
    ms_touch_pages_mid(p, p + len, (uintptr_t)end);
}

/* Where a thread's stream through a matrix starts rather than goes on (its
 * first rows of a product, the first rows of the next job, rows it steals),
 * nothing is under way for the first MS_PAGE_AHEAD bytes: the kernels ask
 * only for what lies that far past the row they start. Without this, the
 * rows found their pages one after another (a 70 KB share's first claim took
 * twice the time of the next ones). So the pages of the first MS_PAGE_AHEAD
 * bytes (their middle lines: the first MS_KERN_MID_AHEAD, ms_kern_touch_mid)
 * are touched at once and their first MS_KERN_STREAM_AHEAD bytes of lines
 * asked for, up to the matrix's end. */
static inline void ms_kern_stream_start(const void *from, const void *end)
{
    uintptr_t p = (uintptr_t)from, e = (uintptr_t)end;
    uintptr_t lines = p + MS_KERN_STREAM_AHEAD < e ? p + MS_KERN_STREAM_AHEAD : e;
    __builtin_prefetch(from, 0, 3); /* the line holding from; the pages' touches take those after it */
    if (atomic_load_explicit(&ms_kern_touch_mid, memory_order_relaxed)) {
        /* the middle lines of the pages up to MS_KERN_MID_AHEAD on, the
         * page holding from included */
        ms_touch_pages_mid(p & ~(uintptr_t)(MS_PAGE_BYTES - 1), p + MS_KERN_MID_AHEAD, e);
    } else {
        uintptr_t pages = p + MS_PAGE_AHEAD < e ? p + MS_PAGE_AHEAD : e;
        ms_touch_pages(from, (const void *)pages);
    }
    for (p = (p | 63) + 1; p < lines; p += 64)
        __builtin_prefetch((const void *)p, 0, 0);
}

#endif
