/* common/mem.c: populated anonymous buffers. */
#include <CUnit/CUnit.h>
#include <stdint.h>
#include <string.h>

#include "mem.h"

static void check_buffer(size_t bytes)
{
    unsigned char *p = ms_mem_alloc(bytes);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL((uintptr_t)p % 4096, 0);
    size_t nonzero = 0;
    for (size_t i = 0; i < bytes; i += 512)
        nonzero += p[i] != 0;
    CU_ASSERT_EQUAL(nonzero, 0);
    if (bytes) {
        memset(p, 0xab, bytes);
        CU_ASSERT_EQUAL(p[bytes - 1], 0xab);
    }
    ms_mem_free(p, bytes);
}

static void test_sizes(void)
{
    check_buffer(0);
    check_buffer(1);
    check_buffer(4097);
    check_buffer((size_t)3 << 20);     /* huge-page sized */
    check_buffer(((size_t)5 << 20) + 7);
    ms_mem_free(NULL, 123);
}

static void test_huge_request_fails_cleanly(void)
{
    CU_ASSERT_PTR_NULL(ms_mem_alloc((size_t)1 << 62));
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("mem", NULL, NULL);
    if (!s)
        return -1;
    return (CU_add_test(s, "zeroed, aligned, writable, any size", test_sizes) &&
            CU_add_test(s, "an impossible size gives NULL", test_huge_request_fails_cleanly))
               ? 0
               : -1;
}

#include "cu_main.h"
