/* CUnit tests for the ggml type table (common/types.c): block geometry of
 * every id against the published ggml sizes, retired ids, row byte sizes. */
#include "types.h"

#include <CUnit/CUnit.h>
#include <stdio.h>

/* id, name, elements per block, bytes per block: the sizes ggml's block
 * structs static_assert, written out as numbers. */
static const struct {
    uint32_t id;
    const char *name;
    uint32_t elems, bytes;
} known[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},      {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74},
    {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},   {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},
    {22, "IQ2_S", 256, 82},   {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},        {29, "IQ1_M", 256, 56},
    {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
};
#define N_KNOWN (sizeof(known) / sizeof(known[0]))

static void test_table(void)
{
    for (size_t i = 0; i < N_KNOWN; i++) {
        const ms_type_traits_t *t = ms_type_traits(known[i].id);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_STRING_EQUAL(t->name, known[i].name);
        if (t->block_elems != known[i].elems || t->block_bytes != known[i].bytes) {
            fprintf(stderr, "\n  %s: %u/%u, expected %u/%u\n", known[i].name, t->block_elems, t->block_bytes,
                    known[i].elems, known[i].bytes);
            CU_FAIL("block geometry");
        }
    }
}

static void test_unknown_ids(void)
{
    size_t defined = 0;
    for (uint32_t id = 0; id < 64; id++)
        defined += ms_type_traits(id) != NULL;
    CU_ASSERT_EQUAL(defined, N_KNOWN); /* nothing beyond the list above */
    static const uint32_t retired[] = {4, 5, 31, 32, 33, 36, 37, 38, 40, 41, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof(retired) / sizeof(retired[0]); i++)
        CU_ASSERT_PTR_NULL(ms_type_traits(retired[i]));
}

static void test_computable(void)
{
    for (uint32_t id = 0; id < MS_TYPE_COUNT; id++) {
        const ms_type_traits_t *t = ms_type_traits(id);
        if (!t)
            continue;
        /* F32, F16, Q4_0, Q8_0, Q2_K..Q6_K, BF16 */
        bool expect = id == 0 || id == 1 || id == 2 || id == 8 || (id >= 10 && id <= 14) || id == 30;
        CU_ASSERT_EQUAL(t->computable, expect);
    }
}

static void test_row_bytes(void)
{
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_F32, 7), 28);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_BF16, 4096), 8192);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q8_0, 4096), 128 * 34);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q4_K, 7168), 28 * 144);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_MXFP4, 2880), 90 * 17);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q8_0, 33), 0);  /* not whole blocks */
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q6_K, 128), 0);
    CU_ASSERT_EQUAL(ms_type_row_bytes(4, 32), 0);             /* retired id */
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_COUNT, 32), 0);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_F32, 0), 0);
    /* 2^62 F64 elements are 2^65 bytes; 2^64-32 Q8_0 elements are ~2^59 blocks of 34 */
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_F64, (uint64_t)1 << 62), 0);
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_Q8_0, UINT64_MAX - 31), 0);
    /* the largest F32 row that fits: (2^64-1)/4 elements rounded down */
    CU_ASSERT_EQUAL(ms_type_row_bytes(MS_TYPE_F32, UINT64_MAX / 4), UINT64_MAX - 3);
}

static int ms_test_register(void)
{
    CU_pSuite s = CU_add_suite("types", NULL, NULL);
    if (!s)
        return CU_get_error();
    if (!CU_add_test(s, "block geometry of every type", test_table) ||
        !CU_add_test(s, "retired and unknown ids", test_unknown_ids) ||
        !CU_add_test(s, "computable set", test_computable) || !CU_add_test(s, "row bytes", test_row_bytes))
        return CU_get_error();
    return 0;
}

#include "cu_main.h"
