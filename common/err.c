/* ms_err_t: a message buffer filled by library code on failure. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

void ms_err_set(ms_err_t *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
}
