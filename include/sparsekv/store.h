/* sparsekv — store (being written). */
#ifndef SPARSEKV_STORE_H
#define SPARSEKV_STORE_H

#include "common.h"

#endif
