/* Error messages for callers: library code fills one of these and returns
 * -errno; the program that called it decides whether and how to log. */
#ifndef MS_ERR_H
#define MS_ERR_H

#define MS_ERR_MSG_BYTES 512

typedef struct {
    char msg[MS_ERR_MSG_BYTES]; /* NUL-terminated; empty when no error was set */
} ms_err_t;

/* printf-style; err may be NULL (the message is dropped). Always returns -EINVAL-free:
 * it returns nothing, the caller returns its own -errno. */
void ms_err_set(ms_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
