/* Shared main() for the CUnit suite binaries: each tests/test_<module>.c
 * defines ms_test_register(void), which adds its suites, then includes this. */
#ifndef MS_CU_MAIN_H
#define MS_CU_MAIN_H

#include <CUnit/Basic.h>
#include <stdio.h>

/* Adds the file's suites; returns 0 or a CUnit error code. */
static int ms_test_register(void);

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    if (ms_test_register() != 0) {
        fprintf(stderr, "registering tests failed: %s\n", CU_get_error_msg());
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failures = CU_get_number_of_tests_failed();
    unsigned run = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    return (failures == 0 && run > 0) ? 0 : 1;
}

#endif
