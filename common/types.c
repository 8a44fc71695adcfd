/* The ggml tensor type table, indexed by the on-disk type id, and the row
 * size arithmetic every reader of tensor bytes relies on. */
#include "types.h"

/* Block sizes follow ggml's block structs (ggml-common.h); QK_K is 256. The
 * bytes-per-block column is written as the sum of the struct's fields so a
 * reviewer can check it against the struct layout. */
#define QK_K 256

static const ms_type_traits_t type_table[MS_TYPE_COUNT] = {
    [MS_TYPE_F32] = {"F32", 1, 4, true},
    [MS_TYPE_F16] = {"F16", 1, 2, true},
    [MS_TYPE_Q4_0] = {"Q4_0", 32, 2 + 16, true},
    [MS_TYPE_Q4_1] = {"Q4_1", 32, 2 + 2 + 16, false},
    [MS_TYPE_Q5_0] = {"Q5_0", 32, 2 + 4 + 16, false},
    [MS_TYPE_Q5_1] = {"Q5_1", 32, 2 + 2 + 4 + 16, false},
    [MS_TYPE_Q8_0] = {"Q8_0", 32, 2 + 32, true},
    [MS_TYPE_Q8_1] = {"Q8_1", 32, 2 + 2 + 32, false},
    [MS_TYPE_Q2_K] = {"Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4, true},
    [MS_TYPE_Q3_K] = {"Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, true},
    [MS_TYPE_Q4_K] = {"Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2, true},
    [MS_TYPE_Q5_K] = {"Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2, true},
    [MS_TYPE_Q6_K] = {"Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, true},
    [MS_TYPE_Q8_K] = {"Q8_K", QK_K, 4 + QK_K + (QK_K / 16) * 2, false},
    [MS_TYPE_IQ2_XXS] = {"IQ2_XXS", QK_K, 2 + (QK_K / 8) * 2, false},
    [MS_TYPE_IQ2_XS] = {"IQ2_XS", QK_K, 2 + (QK_K / 8) * 2 + QK_K / 32, false},
    [MS_TYPE_IQ3_XXS] = {"IQ3_XXS", QK_K, 2 + 3 * (QK_K / 8), false},
    [MS_TYPE_IQ1_S] = {"IQ1_S", QK_K, 2 + QK_K / 8 + (QK_K / 32) * 2, false},
    [MS_TYPE_IQ4_NL] = {"IQ4_NL", 32, 2 + 16, false},
    [MS_TYPE_IQ3_S] = {"IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 8 + QK_K / 64, false},
    [MS_TYPE_IQ2_S] = {"IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 32 + QK_K / 32, false},
    [MS_TYPE_IQ4_XS] = {"IQ4_XS", QK_K, 2 + 2 + QK_K / 64 + QK_K / 2, false},
    [MS_TYPE_I8] = {"I8", 1, 1, false},
    [MS_TYPE_I16] = {"I16", 1, 2, false},
    [MS_TYPE_I32] = {"I32", 1, 4, false},
    [MS_TYPE_I64] = {"I64", 1, 8, false},
    [MS_TYPE_F64] = {"F64", 1, 8, false},
    [MS_TYPE_IQ1_M] = {"IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32, false},
    [MS_TYPE_BF16] = {"BF16", 1, 2, true},
    [MS_TYPE_TQ1_0] = {"TQ1_0", QK_K, (QK_K - 4 * QK_K / 64) / 5 + QK_K / 64 + 2, false},
    [MS_TYPE_TQ2_0] = {"TQ2_0", QK_K, QK_K / 4 + 2, false},
    [MS_TYPE_MXFP4] = {"MXFP4", 32, 1 + 16, false},
};

const ms_type_traits_t *ms_type_traits(uint32_t type)
{
    if (type >= MS_TYPE_COUNT || type_table[type].name == NULL)
        return NULL; /* retired ids (4, 5, 31-33, 36-38) have no entry */
    return &type_table[type];
}

uint64_t ms_type_row_bytes(uint32_t type, uint64_t n)
{
    const ms_type_traits_t *t = ms_type_traits(type);
    if (!t || n % t->block_elems != 0)
        return 0;
    uint64_t blocks = n / t->block_elems;
    if (blocks > UINT64_MAX / t->block_bytes)
        return 0; /* a row this long cannot be addressed in 64 bits */
    return blocks * t->block_bytes;
}
