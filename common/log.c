/* Line-per-event logging to stderr, with syslog priority prefixes when
 * stderr is connected to the journal (JOURNAL_STREAM matches stderr). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static ms_log_level_t log_level = MS_LOG_INFO;
static int log_journal = -1; /* -1 = not yet checked */

static const char *const level_names[MS_LOG_COUNT] = { "error", "warn", "info", "debug" };
static const int level_prio[MS_LOG_COUNT] = { 3, 4, 6, 7 };

void ms_log_set_level(ms_log_level_t level)
{
    if (level < MS_LOG_COUNT)
        log_level = level;
}

ms_log_level_t ms_log_get_level(void)
{
    return log_level;
}

int ms_log_parse_level(const char *s, ms_log_level_t *ret_level)
{
    for (int i = 0; i < MS_LOG_COUNT; i++) {
        if (s && strcmp(s, level_names[i]) == 0) {
            *ret_level = (ms_log_level_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* stderr goes to the journal when JOURNAL_STREAM names stderr's device:inode. */
static bool stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    struct stat st;
    unsigned long dev, ino;
    if (!js || sscanf(js, "%lu:%lu", &dev, &ino) != 2 || fstat(2, &st) != 0)
        return false;
    return (unsigned long)st.st_dev == dev && (unsigned long)st.st_ino == ino;
}

void ms_log(ms_log_level_t level, const char *fmt, ...)
{
    if (level >= MS_LOG_COUNT || level > log_level)
        return;
    if (log_journal < 0)
        log_journal = stderr_is_journal();
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (log_journal)
        fprintf(stderr, "<%d>%s\n", level_prio[level], line);
    else
        fprintf(stderr, "%s: %s\n", level_names[level], line);
}
