/* sparsekv — router (being written). */
#ifndef SPARSEKV_ROUTER_H
#define SPARSEKV_ROUTER_H

#include "common.h"

#endif
