/* Service-manager notifications (sd_notify): readiness, status lines, the
 * watchdog keep-alive and stopping. Every call does nothing and returns 0
 * when NOTIFY_SOCKET is unset, i.e. when the daemon is not run by systemd. */
#ifndef MS_NOTIFY_H
#define MS_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* Longest STATUS= text sent; longer text is cut (systemctl shows one line). */
#define MS_NOTIFY_STATUS_BYTES_MAX 256

/* READY=1, with STATUS=status when status is not NULL. 0 when sent or not
 * under a service manager; -errno when sending failed (-EINVAL for a
 * malformed NOTIFY_SOCKET, -ECONNREFUSED/-ENOENT when nobody listens). */
int ms_notify_ready(const char *status);

/* STATUS=<formatted text>: one line (newlines become spaces, so the text
 * cannot add fields of its own), cut to MS_NOTIFY_STATUS_BYTES_MAX - 1
 * bytes. Returns as ms_notify_ready. */
int ms_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval the service manager expects pings within, in
 * microseconds; 0 when there is no watchdog (WATCHDOG_USEC unset, invalid,
 * meant for another pid, or NOTIFY_SOCKET unset). */
uint64_t ms_notify_watchdog_usec(void);

/* WATCHDOG=1: the keep-alive ping. Returns as ms_notify_ready. */
int ms_notify_watchdog(void);

/* STOPPING=1: the daemon is shutting down. Returns as ms_notify_ready. */
int ms_notify_stopping(void);

/* Paces the pings of one poll loop: due once per half watchdog interval, as
 * sd_watchdog_enabled(3) recommends, so one late wake-up is not fatal. The
 * loop pings only from where it does its work: a hung loop stops pinging
 * and the service manager restarts the daemon. */
typedef struct {
    uint64_t period_us; /* half the watchdog interval; 0: no watchdog */
    uint64_t next_us;   /* CLOCK_MONOTONIC time the next ping is due */
} ms_notify_pacer_t;

/* Reads the interval (ms_notify_watchdog_usec); the first ping is due one
 * period from now. */
void ms_notify_pacer_init(ms_notify_pacer_t *p);

/* The poll timeout for a loop that would otherwise wait wait_ms (-1:
 * forever): at most the time left until the next ping is due (0 when it is
 * due). wait_ms itself when there is no watchdog. */
int ms_notify_pacer_timeout_ms(const ms_notify_pacer_t *p, int wait_ms);

/* True once per period, when the next ping is due; the period then starts
 * again whether or not the caller pings (a caller that skips a ping because
 * its work is stuck checks again one period later, it does not spin).
 * Always false without a watchdog. */
bool ms_notify_pacer_due(ms_notify_pacer_t *p);

#endif
