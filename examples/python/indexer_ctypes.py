#!/usr/bin/env python3
"""A Python host calling sparsekv through ctypes: the lightning indexer's top-k for a few query
tokens, checked against the formula computed here in plain Python.

    python3 examples/python/indexer_ctypes.py [path/to/libsparsekv.so]

Python engines would pass their tensors' data pointers instead of ctypes arrays (for example
torch.Tensor.data_ptr() of contiguous CPU tensors)."""
import ctypes
import random
import sys

SKV_F32 = 0


class IndexerQuery(ctypes.Structure):
    _fields_ = [("n_tokens", ctypes.c_int32), ("n_heads", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("dtype", ctypes.c_int),
                ("q", ctypes.c_void_p), ("q_scale", ctypes.POINTER(ctypes.c_float)),
                ("weights", ctypes.POINTER(ctypes.c_float)),
                ("positions", ctypes.POINTER(ctypes.c_int32)),
                ("n_sink", ctypes.c_int32), ("n_window", ctypes.c_int32),
                ("weights_bf16", ctypes.POINTER(ctypes.c_uint16))]


class KeyBlock(ctypes.Structure):
    _fields_ = [("n_keys", ctypes.c_int64), ("head_dim", ctypes.c_int32),
                ("dtype", ctypes.c_int), ("k", ctypes.c_void_p),
                ("k_scale", ctypes.POINTER(ctypes.c_float)),
                ("k_mx_scale", ctypes.POINTER(ctypes.c_uint8))]


def load(path):
    lib = ctypes.CDLL(path)
    lib.skv_context_create.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.skv_context_destroy.argtypes = [ctypes.c_void_p]
    lib.skv_status_string.restype = ctypes.c_char_p
    lib.skv_indexer_topk.argtypes = [ctypes.c_void_p, ctypes.POINTER(IndexerQuery),
                                     ctypes.POINTER(KeyBlock), ctypes.c_int32,
                                     ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_float)]
    return lib


def main():
    lib = load(sys.argv[1] if len(sys.argv) > 1 else "libsparsekv.so")
    T, H, D, L, K = 3, 4, 16, 500, 8
    rnd = random.Random(7)
    q = [rnd.uniform(-1, 1) for _ in range(T * H * D)]
    w = [rnd.uniform(-1, 1) for _ in range(T * H)]
    keys = [rnd.uniform(-1, 1) for _ in range(L * D)]
    pos = [L - T + t for t in range(T)]  # a prefill chunk at the end of the context

    q_c = (ctypes.c_float * len(q))(*q)
    w_c = (ctypes.c_float * len(w))(*w)
    k_c = (ctypes.c_float * len(keys))(*keys)
    pos_c = (ctypes.c_int32 * T)(*pos)
    query = IndexerQuery(T, H, D, SKV_F32, ctypes.cast(q_c, ctypes.c_void_p), None, w_c, pos_c)
    block = KeyBlock(L, D, SKV_F32, ctypes.cast(k_c, ctypes.c_void_p), None)

    ctx = ctypes.c_void_p()
    st = lib.skv_context_create(None, ctypes.byref(ctx))
    if st != 0:
        sys.exit("skv_context_create: %s" % lib.skv_status_string(st).decode())
    idx = (ctypes.c_int32 * (T * K))()
    val = (ctypes.c_float * (T * K))()
    st = lib.skv_indexer_topk(ctx, ctypes.byref(query), ctypes.byref(block), K, idx, val)
    lib.skv_context_destroy(ctx)
    if st != 0:
        sys.exit("skv_indexer_topk: %s" % lib.skv_status_string(st).decode())

    ok = True
    for t in range(T):
        def score(s):
            total = 0.0
            for h in range(H):
                dot = sum(q[(t * H + h) * D + d] * keys[s * D + d] for d in range(D))
                total += w[t * H + h] * max(0.0, dot)
            return total
        ranked = sorted(range(pos[t] + 1), key=lambda s: (-score(s), s))[:K]
        got = list(idx[t * K:(t + 1) * K])
        print("token %d (position %d): top-%d %s" % (t, pos[t], K, got))
        # equal up to near-ties (the library sums in f32, this in double)
        for a, b in zip(got, ranked):
            if a != b and abs(score(a) - score(b)) > 1e-4 * (1 + abs(score(b))):
                ok = False
    print("ok: matches the formula" if ok else "MISMATCH against the formula")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
