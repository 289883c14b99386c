"""Sparse attention over gathered rows (attention.h)."""
import ctypes

import numpy as np

from . import _lib as L
from ._lib import array, check, lib, ptr


def sparse_attention(ctx, q, k, v, list_start, list_len, scale, q_pos=None, k_pos=None,
                     causal=False, dtype=None, partial=False, reference=False):
    """out [T, Hq, v_dim] float32 over each (token, KV head)'s rows [start, start + len) of
    k [R, k_dim] and v [R, v_dim]; q [T, Hq, k_dim]; list_start int64 / list_len int32
    [T, Hkv]. partial=True also returns (max, lse) [T, Hq]. reference=True runs the double
    precision reference instead (ctx may then be None)."""
    t = L.infer_type(q, dtype)
    st = L.STORAGE[t]
    q = array(q, st, "q", ndim=3)
    T, Hq, kd = q.shape
    k = array(k, st, "k", (None, kd))
    R = k.shape[0]
    v = array(v, st, "v", (R, None))
    ls = array(list_start, np.int64, "list_start", (T, None))
    Hkv = ls.shape[1]
    ll = array(list_len, np.int32, "list_len", (T, Hkv))
    qp = None if q_pos is None else array(q_pos, np.int32, "q_pos", (T,))
    kp = None if k_pos is None else array(k_pos, np.int32, "k_pos", (R,))
    b = L.AttnBatch(n_tokens=T, n_q_heads=Hq, n_kv_heads=Hkv, k_dim=kd, v_dim=v.shape[1],
                    dtype=t, scale=scale, causal=1 if causal else 0, q=ptr(q), q_pos=ptr(qp),
                    n_rows=R, k=ptr(k), v=ptr(v), k_pos=ptr(kp), list_start=ptr(ls),
                    list_len=ptr(ll))
    out = np.empty((T, Hq, v.shape[1]), np.float32)
    mx = np.empty((T, Hq), np.float32) if partial else None
    lse = np.empty((T, Hq), np.float32) if partial else None
    if reference:
        check("skv_sparse_attention_reference", lib.skv_sparse_attention_reference(
            ctypes.byref(b), ptr(out), ptr(mx), ptr(lse)))
    else:
        check("skv_sparse_attention", lib.skv_sparse_attention(ctx.handle, ctypes.byref(b),
                                                               ptr(out), ptr(mx), ptr(lse)))
    return (out, mx, lse) if partial else out
