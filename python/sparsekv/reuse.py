"""IndexCache: reuse plans, and the greedy search driven by a Python loss."""
import ctypes
import math

import numpy as np

from . import _lib as L
from ._lib import array, check, lib, ptr

FREQ_OFFICIAL, FREQ_PLAIN = 0, 1


def _segments(segments):
    if not segments:
        return None, 0
    s = np.ascontiguousarray(np.asarray(segments, dtype=np.int32))  # a small list: copied
    return s, len(s)


class ReusePlan:
    """An immutable reuse plan: from a pattern ("FSSF...") or from freq (and offset, rule)."""

    def __init__(self, ctx, pattern=None, n_layers=None, freq=None, offset=0,
                 rule=FREQ_OFFICIAL, segments=None):
        self.handle = None
        seg, n_seg = _segments(segments)
        h = ctypes.c_void_p()
        if pattern is not None:
            st = lib.skv_reuse_plan_from_string(ctx.handle, pattern.encode(), ptr(seg), n_seg,
                                                ctypes.byref(h))
            check("skv_reuse_plan_from_string", st)
        else:
            st = lib.skv_reuse_plan_from_freq(ctx.handle, n_layers, freq, offset, rule, ptr(seg),
                                              n_seg, ctypes.byref(h))
            check("skv_reuse_plan_from_freq", st)
        self.handle = h
        ctx.children.add(self)

    def close(self):
        if getattr(self, "handle", None):
            lib.skv_reuse_plan_destroy(self.handle)
            self.handle = None

    def __del__(self):
        self.close()

    @property
    def n_layers(self):
        return lib.skv_reuse_plan_n_layers(self.handle)

    @property
    def n_full(self):
        return lib.skv_reuse_plan_n_full(self.handle)

    @property
    def pattern(self):
        buf = ctypes.create_string_buffer(self.n_layers + 1)
        check("skv_reuse_plan_pattern", lib.skv_reuse_plan_pattern(self.handle, buf, len(buf)))
        return buf.value.decode()

    def source(self, layer):
        out = ctypes.c_int32()
        check("skv_reuse_plan_source", lib.skv_reuse_plan_source(self.handle, layer, ctypes.byref(out)))
        return out.value

    def full_slot(self, layer):
        out = ctypes.c_int32()
        check("skv_reuse_plan_full_slot", lib.skv_reuse_plan_full_slot(self.handle, layer, ctypes.byref(out)))
        return out.value


def _params(n_layers, target_full, n_blocks, segments, method="greedy", beam_width=None):
    p = L.SearchParams()
    lib.skv_reuse_search_params_init(ctypes.byref(p))
    seg, n_seg = _segments(segments)
    p.n_layers, p.target_full, p.n_blocks = n_layers, target_full, n_blocks
    if method not in L.SEARCH_METHODS:
        raise ValueError("method: one of " + ", ".join(L.SEARCH_METHODS))
    p.method = L.SEARCH_METHODS[method]
    if beam_width is not None:
        p.beam_width = beam_width
    p.segment_starts, p.n_segments = ptr(seg), n_seg
    return p, seg


def _result(pattern, curve, res):
    n = res.n_rounds
    return pattern.value.decode(), list(curve[:n + 1]), L.struct_dict(res)


def search(ctx, n_layers, target_full, loss, n_blocks=1, segments=None, method="greedy",
           beam_width=None):
    """IndexCache search (method greedy, beam, exhaustive or auto; reuse.h): loss(pattern: str)
    -> float, lower better. Returns (pattern, curve [loss after each round], stats). An
    exception raised by loss ends the search and is re-raised here (the search returns nothing
    then); a NaN loss raises sparsekv.Error (IO)."""
    p, _seg = _params(n_layers, target_full, n_blocks, segments, method, beam_width)
    box = [None]

    @L.callback_guard(box, math.nan)
    def call(pattern, _user):
        return float(loss(pattern.decode()))

    p.loss = L.LOSS_FN(call)
    out = ctypes.create_string_buffer(n_layers + 1)
    curve = np.zeros(n_layers + 1, np.float64)
    res = L.SearchResult()
    st = lib.skv_reuse_search(ctx.handle, ctypes.byref(p), out, ptr(curve), ctypes.byref(res))
    L.reraise(box, "skv_reuse_search", st)
    return _result(out, curve, res)


def search_mass(ctx, mass, target_full, n_blocks=1, segments=None):
    """The search with the built-in attention-mass proxy (mass [N, N] float64 from
    mass_matrix) as its loss, in one call."""
    mass = array(mass, np.float64, "mass", ndim=2)
    n = mass.shape[0]
    if mass.shape != (n, n):
        raise ValueError("mass: shape %s, expected square" % (mass.shape,))
    p, _seg = _params(n, target_full, n_blocks, segments)
    out = ctypes.create_string_buffer(n + 1)
    curve = np.zeros(n + 1, np.float64)
    res = L.SearchResult()
    check("skv_reuse_search_mass", lib.skv_reuse_search_mass(ctx.handle, ctypes.byref(p), ptr(mass),
                                                             out, ptr(curve), ctypes.byref(res)))
    return _result(out, curve, res)


def mass_matrix(ctx, queries, keys, k):
    """The attention-mass matrix [N, N] from one layer's Query and Keys each."""
    from .indexer import Keys, Query
    if len(queries) != len(keys) or not queries:
        raise ValueError("queries and keys: one per layer, at least one")
    if not all(isinstance(q, Query) for q in queries) or not all(isinstance(x, Keys) for x in keys):
        raise TypeError("expected sparsekv.Query and sparsekv.Keys objects")
    n = len(queries)
    qs = (L.IndexerQuery * n)(*[q.s for q in queries])
    ks = (L.KeyBlock * n)(*[x.s for x in keys])
    out = np.empty((n, n), np.float64)
    check("skv_reuse_mass_matrix", lib.skv_reuse_mass_matrix(ctx.handle, qs, ks, n, k, ptr(out), None))
    return out
