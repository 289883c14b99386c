#!/usr/bin/python3
"""Recalls of MISA's routers on the real activations, computed with numpy apart from the library.

For each layer of ../shared/data/dev: queries t = 1024..2047, k = 128, blocks of 64 (the last
one partial), ties to the lower index. Router "pooled" (the paper's: the sum over visible blocks
of |w| * relu(q . block mean)) reproduces reference.json's misa_* figures; router "pooled_max"
(the largest block term instead of the sum, SKV_ROUTE_POOLED_MAX) gives the figures that
tests/test_router.c checks the library against.

    /usr/bin/python3 tools/misa_real_reference.py [data_dir]
"""
import json
import sys

import numpy as np

K, B, T0, T = 128, 64, 1024, 2048


def load(d, l):
    k = np.fromfile(f"{d}/L{l}_ik.bin", np.float32).reshape(T, 32)
    q = np.fromfile(f"{d}/L{l}_iq.bin", np.float16).astype(np.float32).reshape(T, 16, 32)
    w = np.fromfile(f"{d}/L{l}_iw.bin", np.float32).reshape(T, 16)
    return k.astype(np.float64), q.astype(np.float64), w.astype(np.float64)


def top(scores, n):
    return np.argsort(-scores, kind="stable")[:n]


def layer(k, q, w):
    out = {}
    for t in range(T0, T):
        vis = t + 1
        per_head = np.maximum(k[:vis] @ q[t].T, 0) * w[t]  # [vis][heads]
        dense = per_head.sum(1)
        want = set(top(dense, K).tolist())
        means = np.array([k[b:min(vis, b + B)].mean(0) for b in range(0, vis, B)])
        terms = np.abs(w[t]) * np.maximum(means @ q[t].T, 0)  # [blocks][heads]
        for router, e in (("pooled", terms.sum(0)), ("pooled_max", terms.max(0))):
            for h in (2, 4, 8):
                routed = per_head[:, top(e, h)].sum(1)
                got = top(routed, K)
                out.setdefault(f"{router}_misa_h{h}_recall", []).append(len(want & set(got.tolist())) / K)
                if h == 8:
                    cand = top(routed, 4 * K)
                    got = cand[top(dense[cand], K)]
                    out.setdefault(f"{router}_misa_dagger_h8_c4k_recall", []).append(len(want & set(got.tolist())) / K)
    return {name: round(float(np.mean(v)), 4) for name, v in out.items()}


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/dev"
    print(json.dumps({f"L{l}": layer(*load(d, l)) for l in range(6)}, indent=1))


if __name__ == "__main__":
    main()
