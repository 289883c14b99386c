"""The shared library, its structs and prototypes, statuses as exceptions, and array checks.

Internal: the public names are re-exported by the package."""
import ctypes
import os
import sys

import numpy as np

c_int32_p = ctypes.POINTER(ctypes.c_int32)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
c_float_p = ctypes.POINTER(ctypes.c_float)
c_double_p = ctypes.POINTER(ctypes.c_double)
vp = ctypes.c_void_p

# ---- enums (values frozen by the C headers) -----------------------------------------------------

F32, BF16, F16, FP8_E4M3 = 0, 1, 2, 3
CPU_ALL = 0xFFFFFFFF
ROUTE_POOLED, ROUTE_QNORM, ROUTE_OWN_KEY, ROUTE_POOLED_MAX = 0, 1, 2, 3
CANDIDATES_4K = -1
SEARCH_METHODS = {"greedy": 0, "beam": 1, "exhaustive": 2, "auto": 3}
PATH_ROUTED, PATH_DENSE_GATE, PATH_DENSE_DIAL, PATH_EMPTY = 0, 1, 2, 3
STORE_CLUSTERED, STORE_POSITIONAL = 0, 1
SCORE_INDEX, SCORE_MINMAX, SCORE_EXACT = 0, 1, 2
GATHER_PAGES, GATHER_POSITIONS = 0, 1
TIER_TO_HOT, TIER_TO_HOST = 0, 1

# numpy dtype of each element type's storage (BF16 as its bits, FP8 as bytes)
STORAGE = {F32: np.dtype(np.float32), BF16: np.dtype(np.uint16), F16: np.dtype(np.float16),
           FP8_E4M3: np.dtype(np.uint8)}
NAMES = {"f32": F32, "float32": F32, "bf16": BF16, "bfloat16": BF16, "f16": F16,
         "float16": F16, "fp8": FP8_E4M3, "fp8_e4m3": FP8_E4M3}


class Error(Exception):
    """A failed sparsekv call: .status is the skv_status code, the message skv_status_string."""

    def __init__(self, func, status):
        self.status = status
        self.func = func
        super().__init__("%s: %s (status %d)" % (func, status_string(status), status))


# ---- finding the library ------------------------------------------------------------------------

# The ABI these bindings mirror (the structs below): MAJOR.MINOR while MAJOR is 0 (version.h).
ABI = (0, 2)
SONAME = "libsparsekv.so.%d.%d" % ABI

def _candidates():
    env = os.environ.get("SPARSEKV_LIBRARY")
    if env:
        yield env, True
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("libsparsekv.so", SONAME, "libsparsekv.dylib", "sparsekv.dll"):
        path = os.path.join(here, name)
        if os.path.exists(path):
            yield path, True
    yield SONAME, False
    yield "libsparsekv.so", False


def _load():
    errors = []
    for path, must in _candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            if must:  # named explicitly or found beside the package: its failure is the answer
                raise ImportError("sparsekv: cannot load %s: %s" % (path, e)) from e
            errors.append(str(e))
    raise ImportError("sparsekv: the shared library was not found: set SPARSEKV_LIBRARY to its "
                      "path, put libsparsekv.so beside the package, or install it where the "
                      "system loader finds it (%s)" % "; ".join(errors))


lib = _load()
lib.skv_status_string.restype = ctypes.c_char_p
lib.skv_status_string.argtypes = [ctypes.c_int]
_found = lib.skv_version()
if (_found >> 16, (_found >> 8) & 0xFF) != ABI:  # another ABI: the structs would not match
    raise ImportError("sparsekv: the library is version %d.%d.%d, these bindings need ABI %d.%d"
                      % (_found >> 16, (_found >> 8) & 0xFF, _found & 0xFF, ABI[0], ABI[1]))


def status_string(status):
    return lib.skv_status_string(status).decode()


def check(func, status):
    if status != 0:
        raise Error(func, status)


# ---- structs ------------------------------------------------------------------------------------

class Struct(ctypes.Structure):
    def __init__(self, **kw):
        super().__init__()
        if any(f[0] == "struct_size" for f in self._fields_):
            self.struct_size = ctypes.sizeof(self)
        for k, v in kw.items():
            setattr(self, k, v)


LOG_FN = ctypes.CFUNCTYPE(None, vp, ctypes.c_int, ctypes.c_char_p)


class Allocator(Struct):
    _fields_ = [("alloc", vp), ("free", vp), ("user", vp)]


class ContextParams(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_threads", ctypes.c_int32),
                ("cpu_mask", ctypes.c_uint32), ("allocator", Allocator), ("log", LOG_FN),
                ("log_user", vp), ("log_level", ctypes.c_int)]


class IndexerQuery(Struct):
    _fields_ = [("n_tokens", ctypes.c_int32), ("n_heads", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("dtype", ctypes.c_int), ("q", vp),
                ("q_scale", vp), ("weights", vp), ("positions", vp),
                ("n_sink", ctypes.c_int32), ("n_window", ctypes.c_int32), ("weights_bf16", vp)]


class KeyBlock(Struct):
    _fields_ = [("n_keys", ctypes.c_int64), ("head_dim", ctypes.c_int32), ("dtype", ctypes.c_int),
                ("k", vp), ("k_scale", vp), ("k_mx_scale", vp)]


class KCacheParams(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_layers", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("dtype", ctypes.c_int),
                ("page_tokens", ctypes.c_int32), ("max_pages", ctypes.c_int64),
                ("max_seqs", ctypes.c_int32), ("quant_flags", ctypes.c_uint32),
                ("pool_chunk", ctypes.c_int32), ("lane_copy", ctypes.c_int32)]


class KCacheStats(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_seqs", ctypes.c_int32),
                ("pages_in_use", ctypes.c_int64), ("pages_shared", ctypes.c_int64),
                ("page_refs", ctypes.c_int64), ("bytes_per_token", ctypes.c_int64),
                ("bytes_per_page", ctypes.c_int64), ("bytes_in_use", ctypes.c_int64)]


class PooledKeys(Struct):
    _fields_ = [("chunk", ctypes.c_int32), ("sums", vp)]


class MisaParams(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("route", ctypes.c_int),
                ("heads", ctypes.c_int32), ("block", ctypes.c_int32),
                ("candidates", ctypes.c_int32), ("min_length", ctypes.c_int64)]


class HisaParams(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("block", ctypes.c_int32),
                ("blocks", ctypes.c_int32), ("min_length", ctypes.c_int64)]


class RouteStats(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("calls", ctypes.c_int64 * 4),
                ("last_path", ctypes.c_int32)]


LOSS_FN = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_char_p, vp)


class SearchParams(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_layers", ctypes.c_int32),
                ("target_full", ctypes.c_int32), ("n_blocks", ctypes.c_int32),
                ("segment_starts", vp), ("n_segments", ctypes.c_int32), ("loss", LOSS_FN),
                ("user", vp), ("method", ctypes.c_int), ("beam_width", ctypes.c_int32),
                ("max_patterns", ctypes.c_int64)]


class SearchResult(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_rounds", ctypes.c_int32),
                ("n_evals", ctypes.c_int64), ("n_cached", ctypes.c_int64)]


class TierXfer(Struct):
    _fields_ = [("slot", ctypes.c_int64), ("offset", ctypes.c_size_t), ("bytes", ctypes.c_size_t)]


TIER_ALLOC = ctypes.CFUNCTYPE(vp, vp, ctypes.c_size_t)
TIER_FREE = ctypes.CFUNCTYPE(None, vp, vp, ctypes.c_size_t)
TIER_COPY = ctypes.CFUNCTYPE(ctypes.c_int, vp, ctypes.c_int, vp, ctypes.c_size_t, vp,
                             ctypes.c_size_t, ctypes.POINTER(TierXfer), ctypes.c_int64)
TIER_FENCE = ctypes.CFUNCTYPE(ctypes.c_int, vp)


class StoreTier(Struct):
    _fields_ = [("alloc", TIER_ALLOC), ("free", TIER_FREE), ("copy", TIER_COPY),
                ("fence", TIER_FENCE), ("user", vp)]


class StoreParams(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_layers", ctypes.c_int32),
                ("n_kv_heads", ctypes.c_int32), ("k_dim", ctypes.c_int32),
                ("v_dim", ctypes.c_int32), ("dtype", ctypes.c_int),
                ("page_tokens", ctypes.c_int32), ("n_sink", ctypes.c_int32),
                ("n_window", ctypes.c_int32), ("hot_pages", ctypes.c_int64),
                ("layout", ctypes.c_int), ("fanout", ctypes.c_int32),
                ("bulk_min", ctypes.c_int32), ("flags", ctypes.c_uint32),
                ("max_pages", ctypes.c_int64), ("max_seqs", ctypes.c_int32), ("tier", StoreTier)]


class StoreLayoutInfo(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("slot_bytes", ctypes.c_size_t),
                ("rows_offset", ctypes.c_size_t), ("row_bytes", ctypes.c_size_t),
                ("k_bytes", ctypes.c_size_t), ("host_page_bytes", ctypes.c_size_t), ("hot", vp)]


class StoreSeqInfo(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_tokens", ctypes.c_int64),
                ("n_sink", ctypes.c_int64), ("n_window", ctypes.c_int64),
                ("max_pos", ctypes.c_int32), ("height", ctypes.c_int32),
                ("n_pages", ctypes.c_int64), ("n_nodes", ctypes.c_int64)]


class StoreRows(Struct):
    _fields_ = [("n_tokens", ctypes.c_int64), ("dtype", ctypes.c_int), ("k", vp), ("v", vp),
                ("positions", vp)]


class StoreQuery(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_q_heads", ctypes.c_int32),
                ("dtype", ctypes.c_int), ("q", vp), ("budget", ctypes.c_int64),
                ("score", ctypes.c_int), ("candidates", ctypes.c_float),
                ("radius_weight", ctypes.c_float)]


class StoreSelInfo(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("seq", ctypes.c_int32),
                ("layer", ctypes.c_int32), ("n_kv_heads", ctypes.c_int32),
                ("n_tokens", ctypes.c_int64), ("n_pages", ctypes.c_int64),
                ("max_head_tokens", ctypes.c_int64), ("max_head_pages", ctypes.c_int64),
                ("fetched", ctypes.c_int), ("stale", ctypes.c_int)]


class GatherOut(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("dtype", ctypes.c_int),
                ("order", ctypes.c_int32), ("row0", ctypes.c_int64), ("max_rows", ctypes.c_int64),
                ("k", vp), ("v", vp), ("k_pos", vp), ("list_start", vp), ("list_len", vp)]


class StoreStats(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_seqs", ctypes.c_int32)] + [
        (n, ctypes.c_int64) for n in (
            "pages_in_use", "pages_shared", "page_refs", "tokens_stored", "kv_bytes",
            "host_bytes", "index_bytes", "spare_bytes", "hot_capacity", "hot_resident",
            "hot_pinned", "bytes_to_hot", "bytes_to_host", "fetch_pages", "fetch_hits",
            "fetch_stale", "fetch_misses", "evictions", "copy_calls", "io_errors")]


class AttnBatch(Struct):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_tokens", ctypes.c_int32),
                ("n_q_heads", ctypes.c_int32), ("n_kv_heads", ctypes.c_int32),
                ("k_dim", ctypes.c_int32), ("v_dim", ctypes.c_int32), ("dtype", ctypes.c_int),
                ("scale", ctypes.c_float), ("causal", ctypes.c_int), ("q", vp), ("q_pos", vp),
                ("n_rows", ctypes.c_int64), ("k", vp), ("v", vp), ("k_pos", vp),
                ("list_start", vp), ("list_len", vp)]


def struct_dict(s):
    out = {}
    for name, _ in s._fields_:
        if name == "struct_size":
            continue
        v = getattr(s, name)
        out[name] = list(v) if isinstance(v, ctypes.Array) else v
    return out


# ---- prototypes ---------------------------------------------------------------------------------

P = ctypes.POINTER
_protos = {
    "skv_version": (ctypes.c_int, []),
    "skv_context_params_init": (None, [P(ContextParams)]),
    "skv_context_create": (ctypes.c_int, [P(ContextParams), P(vp)]),
    "skv_context_destroy": (None, [vp]),
    "skv_context_memory": (ctypes.c_size_t, [vp]),
    "skv_convert": (ctypes.c_int, [ctypes.c_int, vp, ctypes.c_int, vp, ctypes.c_int64]),
    "skv_quantize_fp8": (ctypes.c_int, [vp, ctypes.c_int64, ctypes.c_int32, ctypes.c_int64,
                                        ctypes.c_uint32, vp, vp]),
    "skv_indexer_scores": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), vp]),
    "skv_indexer_topk": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), ctypes.c_int32, vp, vp]),
    "skv_topk_rows": (ctypes.c_int, [vp, vp, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, vp,
                                     ctypes.c_int32, vp, vp]),
    "skv_kcache_params_init": (None, [P(KCacheParams)]),
    "skv_kcache_create": (ctypes.c_int, [vp, P(KCacheParams), P(vp)]),
    "skv_kcache_destroy": (None, [vp]),
    "skv_kcache_seq_create": (ctypes.c_int, [vp, c_int32_p]),
    "skv_kcache_seq_free": (ctypes.c_int, [vp, ctypes.c_int32]),
    "skv_kcache_seq_fork": (ctypes.c_int, [vp, ctypes.c_int32, c_int32_p]),
    "skv_kcache_seq_remove": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64]),
    "skv_kcache_seq_length": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, c_int64_p]),
    "skv_kcache_append": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(KeyBlock)]),
    "skv_kcache_read": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                                       ctypes.c_int64, vp, vp]),
    "skv_kcache_scores": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(IndexerQuery), vp]),
    "skv_kcache_topk": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(IndexerQuery),
                                       ctypes.c_int32, vp, vp]),
    "skv_kcache_get_stats": (ctypes.c_int, [vp, P(KCacheStats)]),
    "skv_pool_keys": (ctypes.c_int, [P(KeyBlock), ctypes.c_int32, vp]),
    "skv_misa_params_init": (None, [P(MisaParams)]),
    "skv_hisa_params_init": (None, [P(HisaParams)]),
    "skv_route_heads": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), P(PooledKeys),
                                       P(MisaParams), vp, vp]),
    "skv_misa_topk": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), P(PooledKeys),
                                     P(MisaParams), ctypes.c_int32, vp, vp]),
    "skv_kcache_misa_topk": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(IndexerQuery),
                                            P(MisaParams), ctypes.c_int32, vp, vp]),
    "skv_hisa_topk": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), P(PooledKeys),
                                     P(HisaParams), ctypes.c_int32, vp, vp]),
    "skv_kcache_hisa_topk": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(IndexerQuery),
                                            P(HisaParams), ctypes.c_int32, vp, vp]),
    "skv_route_get_stats": (ctypes.c_int, [vp, P(RouteStats)]),
    "skv_route_reset_stats": (ctypes.c_int, [vp]),
    "skv_selection_quality": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), vp, ctypes.c_int32,
                                             vp, vp]),
    "skv_selection_recall_strict": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), vp,
                                                   ctypes.c_int32, vp]),
    "skv_reuse_plan_from_string": (ctypes.c_int, [vp, ctypes.c_char_p, vp, ctypes.c_int32, P(vp)]),
    "skv_reuse_plan_from_freq": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                                ctypes.c_int, vp, ctypes.c_int32, P(vp)]),
    "skv_reuse_plan_destroy": (None, [vp]),
    "skv_reuse_plan_n_layers": (ctypes.c_int32, [vp]),
    "skv_reuse_plan_n_full": (ctypes.c_int32, [vp]),
    "skv_reuse_plan_source": (ctypes.c_int, [vp, ctypes.c_int32, c_int32_p]),
    "skv_reuse_plan_full_slot": (ctypes.c_int, [vp, ctypes.c_int32, c_int32_p]),
    "skv_reuse_plan_pattern": (ctypes.c_int, [vp, ctypes.c_char_p, ctypes.c_size_t]),
    "skv_reuse_search_params_init": (None, [P(SearchParams)]),
    "skv_reuse_search": (ctypes.c_int, [vp, P(SearchParams), ctypes.c_char_p, vp, P(SearchResult)]),
    "skv_reuse_search_mass": (ctypes.c_int, [vp, P(SearchParams), vp, ctypes.c_char_p, vp,
                                             P(SearchResult)]),
    "skv_reuse_mass_matrix": (ctypes.c_int, [vp, P(IndexerQuery), P(KeyBlock), ctypes.c_int32,
                                             ctypes.c_int32, vp, vp]),
    "skv_store_params_init": (None, [P(StoreParams)]),
    "skv_store_create": (ctypes.c_int, [vp, P(StoreParams), P(vp)]),
    "skv_store_destroy": (None, [vp]),
    "skv_store_layout_get": (ctypes.c_int, [vp, P(StoreLayoutInfo)]),
    "skv_store_seq_create": (ctypes.c_int, [vp, c_int32_p]),
    "skv_store_seq_free": (ctypes.c_int, [vp, ctypes.c_int32]),
    "skv_store_seq_fork": (ctypes.c_int, [vp, ctypes.c_int32, c_int32_p]),
    "skv_store_seq_remove": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32]),
    "skv_store_seq_info_get": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(StoreSeqInfo)]),
    "skv_store_append": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(StoreRows)]),
    "skv_store_read": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                                      ctypes.c_int64, vp, vp, vp]),
    "skv_store_query_init": (None, [P(StoreQuery)]),
    "skv_store_select": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, P(StoreQuery), vp]),
    "skv_store_select_tokens": (ctypes.c_int, [vp, ctypes.c_int32, ctypes.c_int32, vp,
                                               ctypes.c_int64, ctypes.c_int64, vp]),
    "skv_store_sel_create": (ctypes.c_int, [vp, P(vp)]),
    "skv_store_sel_destroy": (None, [vp]),
    "skv_store_sel_info_get": (ctypes.c_int, [vp, P(StoreSelInfo)]),
    "skv_store_fetch": (ctypes.c_int, [vp, vp]),
    "skv_store_release": (ctypes.c_int, [vp, vp]),
    "skv_store_check_hot": (ctypes.c_int, [vp, c_int64_p]),
    "skv_store_gather": (ctypes.c_int, [vp, vp, P(GatherOut), c_int64_p]),
    "skv_store_get_stats": (ctypes.c_int, [vp, P(StoreStats)]),
    "skv_sparse_attention": (ctypes.c_int, [vp, P(AttnBatch), vp, vp, vp]),
    "skv_sparse_attention_reference": (ctypes.c_int, [P(AttnBatch), vp, vp, vp]),
}
for _name, (_res, _args) in _protos.items():
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args


# ---- arrays -------------------------------------------------------------------------------------

def array(x, dtype, name, shape=None, writable=False, ndim=None):
    """x as a numpy array without a copy: dtype exact, C-contiguous, the given shape (None
    entries free). Accepts numpy arrays and objects with __array_interface__ or __dlpack__."""
    if isinstance(x, np.ndarray):
        a = x
    elif hasattr(x, "__array_interface__"):
        a = np.asarray(x)
    elif hasattr(x, "__dlpack__"):
        a = np.from_dlpack(x)
    else:
        raise TypeError("%s: expected an array (numpy, __array_interface__ or __dlpack__), got %s"
                        % (name, type(x).__name__))
    dtype = np.dtype(dtype)
    if a.dtype != dtype:
        raise TypeError("%s: dtype %s, expected %s (no implicit conversion)" % (name, a.dtype, dtype))
    if shape is not None:
        if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError("%s: shape %s, expected %s" % (name, a.shape, want))
    elif ndim is not None and a.ndim != ndim:
        raise ValueError("%s: %d dimensions, expected %d" % (name, a.ndim, ndim))
    if not a.flags.c_contiguous:
        raise ValueError("%s: not C-contiguous (strides %s): pass a contiguous array, e.g. "
                         "numpy.ascontiguousarray(x)" % (name, a.strides))
    if writable and not a.flags.writeable:
        raise ValueError("%s: read-only, but it is an output" % name)
    return a


def ptr(a):
    return None if a is None else a.ctypes.data


def elem_type(dtype):
    """A dtype code from a code or a name ("f32", "bf16", "f16", "fp8")."""
    if isinstance(dtype, str):
        if dtype.lower() not in NAMES:
            raise ValueError("unknown dtype %r (one of %s)" % (dtype, ", ".join(sorted(NAMES))))
        return NAMES[dtype.lower()]
    if dtype not in STORAGE:
        raise ValueError("unknown dtype %r" % (dtype,))
    return dtype


def infer_type(a, dtype):
    """The element type of an array: given, or F32/F16 from a float array."""
    if dtype is not None:
        return elem_type(dtype)
    dt = getattr(a, "dtype", None)
    if dt is None and hasattr(a, "__array_interface__"):
        dt = np.asarray(a).dtype
    if dt is None and hasattr(a, "__dlpack__"):
        dt = np.from_dlpack(a).dtype
    if dt is None:
        raise TypeError("expected an array (numpy, __array_interface__ or __dlpack__), got %s"
                        % type(a).__name__)
    if dt == np.float32:
        return F32
    if dt == np.float16:
        return F16
    raise TypeError("dtype %s needs an explicit dtype= ('bf16' for uint16 bits, 'fp8' for "
                    "uint8 with scales)" % dt)


def callback_guard(box, fail):
    """Wraps a Python callback for C: an exception is kept in box[0] (the first only) and C
    gets `fail`; the binding raises it once the C call has returned."""
    def wrap(fn):
        def inner(*args):
            if box[0] is not None:
                return fail
            try:
                return fn(*args)
            except BaseException as e:  # noqa: B902 - re-raised after the C call
                box[0] = e
                return fail
        return inner
    return wrap


def reraise(box, func, status):
    if box[0] is not None:
        e, box[0] = box[0], None
        raise e
    check(func, status)
