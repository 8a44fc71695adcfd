/* Progress lines on stderr for long work in the programs (pack, genmodel):
 * a terminal gets one line rewritten each percent, a log a line every 10%. */
#ifndef MS_PROGRESS_H
#define MS_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    const char *label; /* "moeshard pack", "genmodel" */
    uint64_t total, done;
    double t0;
    int last_pct;
    bool on, tty;
} ms_progress_t;

/* Work of total bytes; lines are printed only when total >= min_total. */
void ms_progress_init(ms_progress_t *p, const char *label, uint64_t total, uint64_t min_total);
/* Counts n more bytes done and prints a line when the percentage moved enough:
 * "LABEL: 37% (650 of 1766 MB, 412 MB/s)". */
void ms_progress_add(ms_progress_t *p, uint64_t n);

#endif
