/* Status strings. */
#include "sparsekv/common.h"

const char *skv_status_string(skv_status s)
{
    switch (s) {
    case SKV_OK: return "ok";
    case SKV_ERR_INVALID_ARG: return "invalid argument";
    case SKV_ERR_NOMEM: return "out of memory";
    case SKV_ERR_UNSUPPORTED: return "unsupported";
    case SKV_ERR_CAPACITY: return "capacity exceeded";
    case SKV_ERR_STATE: return "invalid state";
    case SKV_ERR_IO: return "copy callback failed";
    }
    return "unknown status";
}
