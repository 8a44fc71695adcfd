/* sd_notify wrappers (notify.h): the daemons tell systemd when they serve,
 * what they are doing, and that their loops are alive. */
#include "notify.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

/* "READY=1\nSTATUS=" plus the status text */
#define NOTIFY_MSG_BYTES (MS_NOTIFY_STATUS_BYTES_MAX + 32)

static bool notify_on(void)
{
    const char *s = getenv("NOTIFY_SOCKET");
    return s && *s;
}

/* sd_notify: > 0 sent, 0 nothing to send to, < 0 -errno. */
static int send_msg(const char *msg)
{
    if (!notify_on())
        return 0;
    int rc = sd_notify(0, msg);
    return rc < 0 ? rc : 0;
}

/* Copies text into dst as one line: a newline in a path or endpoint must
 * not start a field (such as READY=1) of its own. */
static void one_line(char *dst, size_t cap, const char *text)
{
    size_t n = strlen(text);
    if (n > cap - 1)
        n = cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = text[i] == '\n' || text[i] == '\r' ? ' ' : text[i];
    dst[n] = '\0';
}

int ms_notify_ready(const char *status)
{
    if (!notify_on())
        return 0;
    if (!status)
        return send_msg("READY=1");
    char line[MS_NOTIFY_STATUS_BYTES_MAX], msg[NOTIFY_MSG_BYTES];
    one_line(line, sizeof(line), status);
    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", line);
    return send_msg(msg);
}

int ms_notify_status(const char *fmt, ...)
{
    if (!notify_on())
        return 0;
    char text[MS_NOTIFY_STATUS_BYTES_MAX], line[MS_NOTIFY_STATUS_BYTES_MAX], msg[NOTIFY_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    one_line(line, sizeof(line), text);
    snprintf(msg, sizeof(msg), "STATUS=%s", line);
    return send_msg(msg);
}

uint64_t ms_notify_watchdog_usec(void)
{
    uint64_t usec = 0;
    if (!notify_on() || sd_watchdog_enabled(0, &usec) <= 0)
        return 0;
    return usec;
}

int ms_notify_watchdog(void)
{
    return send_msg("WATCHDOG=1");
}

int ms_notify_stopping(void)
{
    return send_msg("STOPPING=1");
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void ms_notify_pacer_init(ms_notify_pacer_t *p)
{
    p->period_us = ms_notify_watchdog_usec() / 2;
    p->next_us = now_us() + p->period_us;
}

int ms_notify_pacer_timeout_ms(const ms_notify_pacer_t *p, int wait_ms)
{
    if (p->period_us == 0)
        return wait_ms;
    uint64_t now = now_us();
    uint64_t left_ms = p->next_us > now ? (p->next_us - now + 999) / 1000 : 0;
    if (left_ms > INT_MAX)
        left_ms = INT_MAX;
    if (wait_ms >= 0 && (uint64_t)wait_ms < left_ms)
        return wait_ms;
    return (int)left_ms;
}

bool ms_notify_pacer_due(ms_notify_pacer_t *p)
{
    if (p->period_us == 0)
        return false;
    uint64_t now = now_us();
    if (now < p->next_us)
        return false;
    p->next_us = now + p->period_us;
    return true;
}
