"""sparsekv for Python: ctypes bindings over the shared library (no compiler needed), numpy
arrays in and out without copies.

The library is found through the environment variable SPARSEKV_LIBRARY (a path), then a
libsparsekv.so beside this package, then the system loader. Arrays (numpy, or objects with
__array_interface__ or __dlpack__ such as CPU torch tensors) must have the exact dtype, be
C-contiguous and have the documented shape: anything else raises TypeError or ValueError
before the library is called. A failed call raises sparsekv.Error, whose .status is the
skv_status and whose message is skv_status_string's. Thread safety is the C library's: a
Context and the objects made from it are used by one thread at a time."""
from ._lib import (BF16, CANDIDATES_4K, CPU_ALL, F16, F32, FP8_E4M3, GATHER_PAGES,
                   GATHER_POSITIONS, PATH_DENSE_DIAL, PATH_DENSE_GATE, PATH_EMPTY, PATH_ROUTED,
                   ROUTE_OWN_KEY, ROUTE_POOLED, ROUTE_POOLED_MAX, ROUTE_QNORM, SCORE_EXACT,
                   SCORE_INDEX, SCORE_MINMAX, STORE_CLUSTERED, STORE_POSITIONAL, TIER_TO_HOST,
                   TIER_TO_HOT, Error, lib, status_string)
from .attention import sparse_attention
from .indexer import (Context, KeyCache, Keys, Query, hisa_topk, indexer_scores, indexer_topk,
                      misa_topk, pool_keys, quantize_fp8, selection_quality, topk_rows)
from .reuse import FREQ_OFFICIAL, FREQ_PLAIN, ReusePlan, mass_matrix, search, search_mass
from .store import HostTier, Selection, Store


def version():
    """The C library's SKV_API_VERSION ((major << 16) | (minor << 8) | patch)."""
    return lib.skv_version()
