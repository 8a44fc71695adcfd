/* Percent-and-throughput progress lines for long-running commands. */
#include "progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ms_progress_init(ms_progress_t *p, const char *label, uint64_t total, uint64_t min_total)
{
    *p = (ms_progress_t){ .label = label, .total = total, .t0 = now_s(), .last_pct = -1,
                          .on = total > 0 && total >= min_total, .tty = isatty(STDERR_FILENO) == 1 };
}

void ms_progress_add(ms_progress_t *p, uint64_t n)
{
    p->done += n;
    if (!p->on)
        return;
    int pct = (int)(p->done * 100 / p->total);
    if (pct == p->last_pct || (!p->tty && pct / 10 == p->last_pct / 10))
        return;
    p->last_pct = pct;
    double dt = now_s() - p->t0;
    fprintf(stderr, "%s%s: %d%% (%.0f of %.0f MB, %.0f MB/s)%s", p->tty ? "\r" : "", p->label, pct,
            (double)p->done / 1e6, (double)p->total / 1e6, dt > 0 ? (double)p->done / 1e6 / dt : 0.0,
            p->tty && pct < 100 ? "" : "\n");
}
