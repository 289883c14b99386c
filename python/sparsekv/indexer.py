"""The context, the lightning indexer and top-k, the paged key cache, and the router (MISA,
MISA-dagger, HISA). Arrays are borrowed for the call only, never copied."""
import ctypes
import weakref

import numpy as np

from . import _lib as L
from ._lib import array, check, lib, ptr


class Context:
    """skv_context: one per thread that calls the library (objects made from it follow it).
    log: a callable (level, message) or None; log_level 0 (errors) .. 3 (debug)."""

    def __init__(self, n_threads=0, cpu_mask=L.CPU_ALL, log=None, log_level=1):
        p = L.ContextParams()
        lib.skv_context_params_init(ctypes.byref(p))
        p.n_threads, p.cpu_mask, p.log_level = n_threads, cpu_mask, log_level
        self._log = None
        if log is not None:
            def bridge(_user, level, msg):
                try:
                    log(level, msg.decode())
                except Exception:  # a log must not unwind through C
                    pass
            self._log = L.LOG_FN(bridge)
            p.log = self._log
        h = ctypes.c_void_p()
        check("skv_context_create", lib.skv_context_create(ctypes.byref(p), ctypes.byref(h)))
        self.handle = h
        self.children = weakref.WeakSet()  # objects made from it: closed before it

    def close(self):
        """Closes the objects made from the context, then the context."""
        if getattr(self, "handle", None):
            for child in list(self.children):
                child.close()
            lib.skv_context_destroy(self.handle)
            self.handle = None

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def memory(self):
        return lib.skv_context_memory(self.handle)

    def route_stats(self):
        """{'calls': [routed, dense_gate, dense_dial, empty], 'last_path': ...}"""
        s = L.RouteStats()
        check("skv_route_get_stats", lib.skv_route_get_stats(self.handle, ctypes.byref(s)))
        return L.struct_dict(s)


# ---- queries and keys -----------------------------------------------------------------------------

class Query:
    """Indexer queries: q [T, H, D] (float32, float16, or bf16 bits / fp8 bytes with dtype=),
    weights [T, H] float32, q_scale [T, H] (fp8 only; None: scales of 1), positions [T] int32
    or None. Top-k calls always select the first n_sink and the last n_window visible keys
    (counted within k; 0 = off)."""

    def __init__(self, q, weights, positions=None, q_scale=None, dtype=None, n_sink=0, n_window=0):
        t = L.infer_type(q, dtype)
        self.q = array(q, L.STORAGE[t], "q", ndim=3)
        T, H, D = self.q.shape
        self.weights = array(weights, np.float32, "weights", (T, H))
        self.positions = None if positions is None else array(positions, np.int32, "positions", (T,))
        if t != L.FP8_E4M3 and q_scale is not None:
            raise ValueError("q_scale: for fp8 queries only")
        self.q_scale = None if q_scale is None else array(q_scale, np.float32, "q_scale", (T, H))
        self.s = L.IndexerQuery(n_tokens=T, n_heads=H, head_dim=D, dtype=t, q=ptr(self.q),
                                q_scale=ptr(self.q_scale), weights=ptr(self.weights),
                                positions=ptr(self.positions), n_sink=n_sink, n_window=n_window)
        self.n_tokens = T


class Keys:
    """Indexer keys k [L, D] (float32, float16, or bf16 bits / fp8 bytes with dtype=),
    k_scale [L] for fp8."""

    def __init__(self, k, k_scale=None, dtype=None):
        t = L.infer_type(k, dtype)
        self.k = array(k, L.STORAGE[t], "k", ndim=2)
        n, D = self.k.shape
        if (t == L.FP8_E4M3) != (k_scale is not None):
            raise ValueError("k_scale: required for fp8 keys and only for them")
        self.k_scale = None if k_scale is None else array(k_scale, np.float32, "k_scale", (n,))
        self.s = L.KeyBlock(n_keys=n, head_dim=D, dtype=t, k=ptr(self.k), k_scale=ptr(self.k_scale))
        self.n_keys = n


def _q(q):
    if not isinstance(q, Query):
        raise TypeError("expected a sparsekv.Query")
    return q


def _k(k):
    if not isinstance(k, Keys):
        raise TypeError("expected a sparsekv.Keys")
    return k


def _out(out, shape, dtype, name):
    if out is None:
        return np.empty(shape, dtype)
    return array(out, dtype, name, shape, writable=True)


def quantize_fp8(x, pow2_scale=False):
    """f32 rows [n, d] -> (fp8 bytes [n, d] uint8, scales [n] float32), DeepSeek's quantiser."""
    x = array(x, np.float32, "x", ndim=2)
    out = np.empty(x.shape, np.uint8)
    sc = np.empty(x.shape[0], np.float32)
    check("skv_quantize_fp8", lib.skv_quantize_fp8(ptr(x), x.shape[0], x.shape[1], x.shape[1],
                                                   1 if pow2_scale else 0, ptr(out), ptr(sc)))
    return out, sc


def indexer_scores(ctx, q, keys, out=None):
    """[T, L] float32 scores (-inf where not visible)."""
    q, keys = _q(q), _k(keys)
    out = _out(out, (q.n_tokens, keys.n_keys), np.float32, "out")
    check("skv_indexer_scores", lib.skv_indexer_scores(ctx.handle, ctypes.byref(q.s),
                                                       ctypes.byref(keys.s), ptr(out)))
    return out


def indexer_topk(ctx, q, keys, k, out_idx=None, out_score=None):
    """(idx [T, k] int32, -1 padded; scores [T, k] float32)."""
    q, keys = _q(q), _k(keys)
    idx = _out(out_idx, (q.n_tokens, k), np.int32, "out_idx")
    sc = _out(out_score, (q.n_tokens, k), np.float32, "out_score")
    check("skv_indexer_topk", lib.skv_indexer_topk(ctx.handle, ctypes.byref(q.s),
                                                   ctypes.byref(keys.s), k, ptr(idx), ptr(sc)))
    return idx, sc


def topk_rows(ctx, x, k, lengths=None):
    """Top-k of each row of x [R, C] float32 (row r over lengths[r] entries when given)."""
    x = array(x, np.float32, "x", ndim=2)
    R, C = x.shape
    ln = None if lengths is None else array(lengths, np.int64, "lengths", (R,))
    idx = np.empty((R, k), np.int32)
    val = np.empty((R, k), np.float32)
    check("skv_topk_rows", lib.skv_topk_rows(ctx.handle, ptr(x), R, C, C, ptr(ln), k, ptr(idx),
                                             ptr(val)))
    return idx, val


def selection_quality(ctx, q, keys, idx, strict=False):
    """Per token: (tie-counting recall, mass) or, strict=True, the papers' set recall."""
    q, keys = _q(q), _k(keys)
    idx = array(idx, np.int32, "idx", (q.n_tokens, None))
    rec = np.empty(q.n_tokens, np.float64)
    if strict:
        check("skv_selection_recall_strict", lib.skv_selection_recall_strict(
            ctx.handle, ctypes.byref(q.s), ctypes.byref(keys.s), ptr(idx), idx.shape[1], ptr(rec)))
        return rec
    mass = np.empty(q.n_tokens, np.float64)
    check("skv_selection_quality", lib.skv_selection_quality(
        ctx.handle, ctypes.byref(q.s), ctypes.byref(keys.s), ptr(idx), idx.shape[1], ptr(rec),
        ptr(mass)))
    return rec, mass


# ---- the router ---------------------------------------------------------------------------------------

def pool_keys(keys, chunk):
    """Chunk sums [ceil(L / chunk), D] float32 for MISA/HISA on contiguous keys."""
    keys = _k(keys)
    n = (keys.n_keys + chunk - 1) // chunk
    sums = np.empty((n, keys.s.head_dim), np.float32)
    check("skv_pool_keys", lib.skv_pool_keys(ctypes.byref(keys.s), chunk, ptr(sums)))
    return sums


def misa_params(**kw):
    p = L.MisaParams()
    lib.skv_misa_params_init(ctypes.byref(p))
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def hisa_params(**kw):
    p = L.HisaParams()
    lib.skv_hisa_params_init(ctypes.byref(p))
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def _pooled(sums, chunk, D):
    if sums is None:
        return None, None
    sums = array(sums, np.float32, "pooled", (None, D))
    return L.PooledKeys(chunk=chunk, sums=ptr(sums)), sums


def _routed(name, params, ctx, q, keys, k, pooled, chunk):
    q, keys = _q(q), _k(keys)
    pk, _hold = _pooled(pooled, chunk, keys.s.head_dim)
    idx = np.empty((q.n_tokens, k), np.int32)
    sc = np.empty((q.n_tokens, k), np.float32)
    check(name, getattr(lib, name)(ctx.handle, ctypes.byref(q.s), ctypes.byref(keys.s),
                                   None if pk is None else ctypes.byref(pk), ctypes.byref(params),
                                   k, ptr(idx), ptr(sc)))
    return idx, sc


def misa_topk(ctx, q, keys, k, pooled=None, chunk=0, **params):
    """MISA / MISA-dagger top-k (params: route, heads, block, candidates, min_length); pooled:
    pool_keys(keys, chunk)."""
    return _routed("skv_misa_topk", misa_params(**params), ctx, q, keys, k, pooled, chunk)


def hisa_topk(ctx, q, keys, k, pooled=None, chunk=0, **params):
    """HISA top-k (params: block, blocks, min_length); pooled: pool_keys(keys, chunk)."""
    return _routed("skv_hisa_topk", hisa_params(**params), ctx, q, keys, k, pooled, chunk)


# ---- the paged key cache ----------------------------------------------------------------------------

class KeyCache:
    """skv_kcache: indexer keys of many sequences in pages (params as skv_kcache_params)."""

    def __init__(self, ctx, **params):
        p = L.KCacheParams()
        lib.skv_kcache_params_init(ctypes.byref(p))
        for k, v in params.items():
            if k == "dtype":
                v = L.elem_type(v)
            setattr(p, k, v)
        self.params = p
        h = ctypes.c_void_p()
        check("skv_kcache_create", lib.skv_kcache_create(ctx.handle, ctypes.byref(p), ctypes.byref(h)))
        self.ctx, self.handle = ctx, h  # the context outlives the cache
        ctx.children.add(self)

    def close(self):
        if getattr(self, "handle", None):
            lib.skv_kcache_destroy(self.handle)
            self.handle = None

    def __del__(self):
        self.close()

    def seq_create(self):
        s = ctypes.c_int32()
        check("skv_kcache_seq_create", lib.skv_kcache_seq_create(self.handle, ctypes.byref(s)))
        return s.value

    def seq_free(self, seq):
        check("skv_kcache_seq_free", lib.skv_kcache_seq_free(self.handle, seq))

    def seq_fork(self, seq):
        s = ctypes.c_int32()
        check("skv_kcache_seq_fork", lib.skv_kcache_seq_fork(self.handle, seq, ctypes.byref(s)))
        return s.value

    def seq_remove(self, seq, p0, p1=-1):
        check("skv_kcache_seq_remove", lib.skv_kcache_seq_remove(self.handle, seq, p0, p1))

    def length(self, seq, layer=0):
        n = ctypes.c_int64()
        check("skv_kcache_seq_length", lib.skv_kcache_seq_length(self.handle, seq, layer, ctypes.byref(n)))
        return n.value

    def append(self, seq, layer, keys):
        keys = _k(keys)
        check("skv_kcache_append", lib.skv_kcache_append(self.handle, seq, layer, ctypes.byref(keys.s)))

    def read(self, seq, layer, start, n):
        """(keys [n, D] in the cache's storage dtype, scales [n] or None)."""
        t = self.params.dtype
        k = np.empty((n, self.params.head_dim), L.STORAGE[t])
        sc = np.empty(n, np.float32) if t == L.FP8_E4M3 else None
        check("skv_kcache_read", lib.skv_kcache_read(self.handle, seq, layer, start, n, ptr(k), ptr(sc)))
        return k, sc

    def scores(self, seq, layer, q):
        q = _q(q)
        out = np.empty((q.n_tokens, self.length(seq, layer)), np.float32)
        check("skv_kcache_scores", lib.skv_kcache_scores(self.handle, seq, layer, ctypes.byref(q.s), ptr(out)))
        return out

    def _topk(self, name, fn, seq, layer, q, k, *extra):
        q = _q(q)
        idx = np.empty((q.n_tokens, k), np.int32)
        sc = np.empty((q.n_tokens, k), np.float32)
        check(name, fn(self.handle, seq, layer, ctypes.byref(q.s), *extra, k, ptr(idx), ptr(sc)))
        return idx, sc

    def topk(self, seq, layer, q, k):
        return self._topk("skv_kcache_topk", lib.skv_kcache_topk, seq, layer, q, k)

    def misa_topk(self, seq, layer, q, k, **params):
        return self._topk("skv_kcache_misa_topk", lib.skv_kcache_misa_topk, seq, layer, q, k,
                          ctypes.byref(misa_params(**params)))

    def hisa_topk(self, seq, layer, q, k, **params):
        return self._topk("skv_kcache_hisa_topk", lib.skv_kcache_hisa_topk, seq, layer, q, k,
                          ctypes.byref(hisa_params(**params)))

    def stats(self):
        s = L.KCacheStats()
        check("skv_kcache_get_stats", lib.skv_kcache_get_stats(self.handle, ctypes.byref(s)))
        return L.struct_dict(s)
