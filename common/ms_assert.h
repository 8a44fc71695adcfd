/* MS_ASSERT: for broken invariants (programmer errors) only, never for bad
 * input. Always compiled in, NDEBUG or not. */
#ifndef MS_ASSERT_H
#define MS_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define MS_ASSERT(cond)                                                              \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "moeshard: internal error: %s:%d: %s: assertion '%s' failed\n", \
                    __FILE__, __LINE__, __func__, #cond);                            \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#endif
