/* sparsekv — sparse attention and KV-cache management for long-context LLM inference.
 * Umbrella header: include this one. */
#ifndef SPARSEKV_H
#define SPARSEKV_H

#include "version.h"
#include "common.h"
#include "indexer.h"
#include "engine.h"
#include "reuse.h"
#include "router.h"
#include "store.h"
#include "store_cold.h"
#include "attention.h"
#include "slice.h"

#endif
