"""The clustered paged KV store, with its hot tier placed by Python callbacks."""
import ctypes
import weakref

import numpy as np

from . import _lib as L
from ._lib import array, check, lib, ptr


class HostTier:
    """A hot tier for the store in memory this object owns (a numpy buffer): the shape of a
    device tier. Subclass and override alloc/free/copy/fence to place it elsewhere (a GPU).
    copy(direction, hot, slot_bytes, staging, xfers) moves each (slot, offset, bytes) range
    between staging (a uint8 view of the library's staging buffer) and the hot region; an
    exception in any method fails the store call (the store stays as documented for IO
    errors) and is re-raised to the caller."""

    def alloc(self, nbytes):
        self.region = np.zeros(nbytes, np.uint8)
        return self.region

    def free(self, region):
        self.region = None

    def copy(self, direction, region, slot_bytes, staging, xfers):
        for slot, off, n in xfers:
            hot = region[slot * slot_bytes: slot * slot_bytes + n]
            if direction == L.TIER_TO_HOT:
                hot[:] = staging[off:off + n]
            else:
                staging[off:off + n] = hot

    def fence(self):
        pass


class Selection:
    """skv_store_sel: reusable; valid until its (seq, layer) changes."""

    def __init__(self, store):
        h = ctypes.c_void_p()
        check("skv_store_sel_create", lib.skv_store_sel_create(store.handle, ctypes.byref(h)))
        self.store, self.handle = store, h
        store.selections.add(self)

    def close(self):
        if getattr(self, "handle", None):
            lib.skv_store_sel_destroy(self.handle)
            self.handle = None

    def __del__(self):
        self.close()

    def info(self):
        s = L.StoreSelInfo()
        check("skv_store_sel_info_get", lib.skv_store_sel_info_get(self.handle, ctypes.byref(s)))
        return L.struct_dict(s)


class Store:
    """skv_store (params as skv_store_params; dtype 'f32', 'bf16' or 'f16'). tier: a HostTier
    (or subclass) for the hot tier through Python callbacks; None: the library's own arena."""

    def __init__(self, ctx, tier=None, **params):
        p = L.StoreParams()
        lib.skv_store_params_init(ctypes.byref(p))
        for k, v in params.items():
            setattr(p, k, L.elem_type(v) if k == "dtype" else v)
        self.params, self.ctx, self.tier = p, ctx, tier
        self.selections = weakref.WeakSet()  # closed before the store
        self._box = [None]
        if tier is not None:
            self._install(p)
        h = ctypes.c_void_p()
        st = lib.skv_store_create(ctx.handle, ctypes.byref(p), ctypes.byref(h))
        L.reraise(self._box, "skv_store_create", st)
        self.handle = h
        ctx.children.add(self)

    def _install(self, p):
        regions = {}  # address -> the array the tier returned (kept alive here)

        @L.callback_guard(self._box, 0)  # NULL: the store reports NOMEM
        def alloc(_user, nbytes):
            region = array(self.tier.alloc(nbytes), np.uint8, "HostTier.alloc", (nbytes,), True)
            regions[region.ctypes.data] = region
            return region.ctypes.data

        @L.callback_guard(self._box, None)
        def free(_user, hot, _nbytes):
            self.tier.free(regions.pop(hot))

        @L.callback_guard(self._box, 1)  # nonzero: the store reports IO
        def copy(_user, direction, hot, slot_bytes, staging, staging_bytes, x, n):
            st = np.ctypeslib.as_array((ctypes.c_uint8 * staging_bytes).from_address(staging))
            xfers = [(x[i].slot, x[i].offset, x[i].bytes) for i in range(n)]
            self.tier.copy(direction, regions[hot], slot_bytes, st, xfers)
            return 0

        @L.callback_guard(self._box, 1)
        def fence(_user):
            self.tier.fence()
            return 0

        self._cb = (L.TIER_ALLOC(alloc), L.TIER_FREE(free), L.TIER_COPY(copy), L.TIER_FENCE(fence))
        p.tier = L.StoreTier(alloc=self._cb[0], free=self._cb[1], copy=self._cb[2],
                             fence=self._cb[3], user=None)

    def close(self):
        if getattr(self, "handle", None):
            for sel in list(self.selections):
                sel.close()
            lib.skv_store_destroy(self.handle)
            self.handle = None
            self._box[0] = None  # free() cannot fail the destruction

    def __del__(self):
        self.close()

    def _call(self, name, *args):
        L.reraise(self._box, name, getattr(lib, name)(self.handle, *args))

    def layout(self):
        s = L.StoreLayoutInfo()
        self._call("skv_store_layout_get", ctypes.byref(s))
        return L.struct_dict(s)

    def seq_create(self):
        s = ctypes.c_int32()
        self._call("skv_store_seq_create", ctypes.byref(s))
        return s.value

    def seq_free(self, seq):
        self._call("skv_store_seq_free", seq)

    def seq_fork(self, seq):
        s = ctypes.c_int32()
        self._call("skv_store_seq_fork", seq, ctypes.byref(s))
        return s.value

    def seq_remove(self, seq, p0, p1=-1):
        self._call("skv_store_seq_remove", seq, p0, p1)

    def seq_info(self, seq, layer=0):
        s = L.StoreSeqInfo()
        self._call("skv_store_seq_info_get", seq, layer, ctypes.byref(s))
        return L.struct_dict(s)

    def append(self, seq, layer, k, v, positions, dtype=None):
        """k [n, Hkv, k_dim], v [n, Hkv, v_dim] (None when v_dim is 0), positions [n] int32;
        float32, or the store dtype (bf16 bits as uint16 with dtype='bf16')."""
        p = self.params
        t = L.infer_type(k, dtype)
        k = array(k, L.STORAGE[t], "k", (None, p.n_kv_heads, p.k_dim))
        n = k.shape[0]
        v = None if v is None else array(v, L.STORAGE[t], "v", (n, p.n_kv_heads, p.v_dim))
        pos = array(positions, np.int32, "positions", (n,))
        rows = L.StoreRows(n_tokens=n, dtype=t, k=ptr(k), v=ptr(v), positions=ptr(pos))
        self._call("skv_store_append", seq, layer, ctypes.byref(rows))

    def read(self, seq, layer, first, n):
        p = self.params
        st = L.STORAGE[p.dtype]
        k = np.empty((n, p.n_kv_heads, p.k_dim), st)
        v = np.empty((n, p.n_kv_heads, p.v_dim), st) if p.v_dim else None
        pos = np.empty(n, np.int32)
        self._call("skv_store_read", seq, layer, first, n, ptr(k), ptr(v), ptr(pos))
        return k, v, pos

    def select(self, seq, layer, q, budget, sel=None, score=L.SCORE_INDEX, dtype=None, **query):
        """Selects pages for one query token q [Hq, k_dim]; returns the Selection."""
        t = L.infer_type(q, dtype)
        q = array(q, L.STORAGE[t], "q", (None, self.params.k_dim))
        sq = L.StoreQuery()
        lib.skv_store_query_init(ctypes.byref(sq))
        sq.n_q_heads, sq.dtype, sq.q, sq.budget, sq.score = q.shape[0], t, ptr(q), budget, score
        for k, v in query.items():
            setattr(sq, k, v)
        sel = sel or Selection(self)
        self._call("skv_store_select", seq, layer, ctypes.byref(sq), sel.handle)
        return sel

    def select_tokens(self, seq, layer, positions, budget, sel=None):
        pos = array(positions, np.int32, "positions", ndim=1)
        sel = sel or Selection(self)
        self._call("skv_store_select_tokens", seq, layer, ptr(pos), pos.shape[0], budget, sel.handle)
        return sel

    def fetch(self, sel):
        self._call("skv_store_fetch", sel.handle)

    def release(self, sel):
        self._call("skv_store_release", sel.handle)

    def check_hot(self):
        bad = ctypes.c_int64()
        self._call("skv_store_check_hot", ctypes.byref(bad))
        return bad.value

    def gather(self, sel, dtype="f32", order=L.GATHER_PAGES, positions_only=False):
        """(k [R, k_dim], v [R, v_dim] or None, k_pos [R], list_start [Hkv], list_len [Hkv]);
        positions_only: (k_pos, list_start, list_len)."""
        p = self.params
        t = L.elem_type(dtype)
        R = sel.info()["n_tokens"]
        k = None if positions_only else np.empty((R, p.k_dim), L.STORAGE[t])
        v = None if positions_only or not p.v_dim else np.empty((R, p.v_dim), L.STORAGE[t])
        kp = np.empty(R, np.int32)
        ls = np.empty(p.n_kv_heads, np.int64)
        ll = np.empty(p.n_kv_heads, np.int32)
        o = L.GatherOut(dtype=t, order=order, row0=0, max_rows=R, k=ptr(k), v=ptr(v), k_pos=ptr(kp),
                        list_start=ptr(ls), list_len=ptr(ll))
        self._call("skv_store_gather", sel.handle, ctypes.byref(o), None)
        return (kp, ls, ll) if positions_only else (k, v, kp, ls, ll)

    def stats(self):
        s = L.StoreStats()
        self._call("skv_store_get_stats", ctypes.byref(s))
        return L.struct_dict(s)
