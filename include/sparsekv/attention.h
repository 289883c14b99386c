/* sparsekv — attention (being written). */
#ifndef SPARSEKV_ATTENTION_H
#define SPARSEKV_ATTENTION_H

#include "common.h"

#endif
