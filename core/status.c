/* status.c: the fixed strings of statuses, ops and dtypes, and the version,
 * all generated from the X-macro lists so no entry can be half-added. */
#include "context.h"

static const char *const status_text[] = {
#define MHA_STATUS_TEXT_(name, text) text,
    MHA_STATUS_LIST(MHA_STATUS_TEXT_)
#undef MHA_STATUS_TEXT_
};
_Static_assert(sizeof status_text / sizeof status_text[0] == MHA_STATUS_COUNT,
               "one string per status");

static const struct {
    const char *name;
    int sources;
} op_table[] = {
#define MHA_OP_ROW_(name, text, nsrc) {text, nsrc},
    MHA_OP_LIST(MHA_OP_ROW_)
#undef MHA_OP_ROW_
};
_Static_assert(sizeof op_table / sizeof op_table[0] == MHA_OP_COUNT,
               "one row per op");

const char *mha_status_str(mha_status status)
{
    if ((unsigned)status >= MHA_STATUS_COUNT)
        return "unknown status";
    return status_text[status];
}

const char *mha_version(void) { return MHA_VERSION_STRING; }

const char *mha_op_name(mha_op op)
{
    return (unsigned)op < MHA_OP_COUNT ? op_table[op].name : "unknown op";
}

int mha_op_source_count(mha_op op)
{
    return (unsigned)op < MHA_OP_COUNT ? op_table[op].sources : 0;
}

size_t mha_dtype_storage_size(mha_dtype dtype)
{
    return dtype == MHA_F16 ? 2 : 4;
}

const char *mha_dtype_name(mha_dtype dtype)
{
    switch (dtype) {
    case MHA_F32: return "f32";
    case MHA_F16: return "f16";
    case MHA_BOOL: return "bool";
    case MHA_I32: return "i32";
    }
    return "unknown dtype";
}
