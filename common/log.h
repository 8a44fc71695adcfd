/* Logging for the programs (never for library code): one line per event on
 * stderr, journald-friendly ("<level>moeshard: message" priority prefix when
 * stderr is the journal, plain "level: message" otherwise). */
#ifndef MS_LOG_H
#define MS_LOG_H

typedef enum {
    MS_LOG_ERROR,
    MS_LOG_WARN,
    MS_LOG_INFO,
    MS_LOG_DEBUG,
    MS_LOG_COUNT
} ms_log_level_t;

/* Messages above this level are dropped. Default MS_LOG_INFO. */
void ms_log_set_level(ms_log_level_t level);
ms_log_level_t ms_log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns 0 or -EINVAL. */
int ms_log_parse_level(const char *s, ms_log_level_t *ret_level);

void ms_log(ms_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ms_log_error(...) ms_log(MS_LOG_ERROR, __VA_ARGS__)
#define ms_log_warn(...)  ms_log(MS_LOG_WARN, __VA_ARGS__)
#define ms_log_info(...)  ms_log(MS_LOG_INFO, __VA_ARGS__)
#define ms_log_debug(...) ms_log(MS_LOG_DEBUG, __VA_ARGS__)

#endif
