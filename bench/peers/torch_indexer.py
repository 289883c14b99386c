#!/usr/bin/python3
"""PyTorch peer for the sparsekv indexer benchmark.

Runs `sparsekv-bench --dump DIR` for the peer cases (f32, H = 64, D = 128, k = 2048: decode at
L = 32768 and 131072, a causal prefill chunk of T = 256 at the end of an L = 8192 context),
loads the inputs it wrote, times the same formula in PyTorch on the CPU with the same thread
count,

    scores = (relu(einsum('thd,ld->thl', q, k)) * w[..., None]).sum(1)
    scores[t, s] = -inf for s > pos[t]
    topk(scores, k)

checks that PyTorch's top-k index sets equal the library's (idx.bin), and prints one JSON record
per case with torch_ns, sparsekv_ns and their ratio.

PyTorch is not needed to build or test sparsekv. This script uses Debian's python3 and its
python3-torch / python3-numpy packages, installing them with apt-get (as root) only when they
are missing.

Usage: bench/peers/torch_indexer.py [--bench PATH] [--threads N] [--min-time S] [--keep DIR]
"""

import argparse
import importlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

DEBIAN_PYTHON = "/usr/bin/python3"
PEER_CASES = [
    "indexer_topk/decode/H64/L32768/f32/",
    "indexer_topk/decode/H64/L131072/f32/",
    "indexer_topk/prefill/H64/T256/L8192/f32/",
]
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def log(msg):
    print("torch_indexer: " + msg, file=sys.stderr, flush=True)


def use_debian_python():
    """Re-run this script under Debian's python3, where Debian's torch is installed."""
    if not os.path.exists(DEBIAN_PYTHON):
        return
    if os.path.realpath(sys.executable) == os.path.realpath(DEBIAN_PYTHON):
        return
    if os.environ.get("SKV_TORCH_PEER_REEXEC"):
        return
    os.environ["SKV_TORCH_PEER_REEXEC"] = "1"
    os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv)


def ensure_packages():
    """apt-get install whichever of python3-torch / python3-numpy is missing."""
    wanted = [("numpy", "python3-numpy"), ("torch", "python3-torch")]
    missing = [pkg for mod, pkg in wanted if importlib.util.find_spec(mod) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit("torch_indexer: missing %s; install them (apt-get install %s) or run as root"
                 % (", ".join(missing), " ".join(missing)))
    log("installing " + " ".join(missing) + " with apt-get (once)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends"] + missing, check=True,
                   env=env, stdout=sys.stderr)
    importlib.invalidate_caches()


def run_bench(bench, threads, dump_dir):
    cmd = [bench, "--dump", dump_dir, "--filter", ",".join(PEER_CASES), "--threads",
           str(threads), "--no-ref"]
    log("running " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def load_case(path, np, torch):
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    T, H, D, L = meta["T"], meta["H"], meta["D"], meta["L"]

    def raw(name, dtype, shape):
        a = np.fromfile(os.path.join(path, name), dtype=dtype)
        if a.size != int(np.prod(shape)):
            raise SystemExit("torch_indexer: %s/%s: %d values, want %s" % (path, name, a.size, shape))
        return torch.from_numpy(a.reshape(shape))

    q = raw("q.bin", "<f4", (T, H, D))
    w = raw("w.bin", "<f4", (T, H))
    k = raw("k.bin", "<f4", (L, D))
    pos = raw("pos.bin", "<i4", (T,))
    idx = raw("idx.bin", "<i4", (T, meta["k"]))
    return meta, q, w, k, pos, idx


def time_call(fn, min_time, min_iters=3):
    """Median and fastest call (ns) and the call count, after one warm-up call."""
    fn()
    times = []
    while len(times) < min_iters or sum(times) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e9, min(times) * 1e9, len(times)


def torch_build_info(torch):
    """The CPU kernel level and BLAS this torch was built with (from its build summary)."""
    info = {"torch_version": torch.__version__}
    for line in torch.__config__.show().splitlines():
        line = line.strip()
        if line.startswith("- CPU capability usage:"):
            info["torch_cpu_capability"] = line.split(":", 1)[1].strip()
        m = re.search(r"BLAS_INFO=([^,\s]+)", line)
        if m:
            info["torch_blas"] = m.group(1)
    return info


def compare(torch, q, w, k, top_lib, top_torch):
    """Exact set equality per token; a mismatching token counts as a near tie when every key
    only one side chose is within the f32 error bound of the keys it displaced (scores
    recomputed in float64)."""
    T, H, D = q.shape
    mismatched = near = common = total = 0
    u = 2.0 ** -24
    gamma = (D + H + 8) * u / (1 - (D + H + 8) * u)
    for t in range(T):
        a = set(top_lib[t].tolist())
        b = set(top_torch[t].tolist())
        common += len(a & b)
        total += len(b)
        if a == b:
            continue
        mismatched += 1
        only_a, only_b = sorted(a - b), sorted(b - a)
        if len(only_a) != len(only_b) or min(only_a + only_b) < 0:
            continue

        def exact(keys):
            prod = q[t].double()[:, None, :] * k[keys].double()[None, :, :]  # [H, n, D]
            dots = prod.sum(-1)
            mag = (w[t].double().abs()[:, None] * prod.abs().sum(-1)).sum(0)
            score = (w[t].double()[:, None] * torch.relu(dots)).sum(0)
            return score, gamma * mag

        sa, ba = exact(only_a)
        sb, bb = exact(only_b)
        if float((sb - bb).max()) <= float((sa + ba).min()):
            near += 1
    return {
        "match": mismatched == 0,
        "mismatched_tokens": mismatched,
        "near_tie_tokens": near,
        "match_ok": mismatched == near,
        "overlap": common / total if total else 1.0,
    }


def main():
    use_debian_python()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "sparsekv-bench"),
                    help="sparsekv-bench executable (default: build/bench/sparsekv-bench)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for both sparsekv and torch (default: all CPUs)")
    ap.add_argument("--min-time", type=float, default=1.0,
                    help="seconds of measured torch calls per case (default 1.0; at least 3 calls)")
    ap.add_argument("--keep", metavar="DIR",
                    help="dump into DIR and keep it (default: a temporary directory, removed)")
    args = ap.parse_args()

    ensure_packages()
    import numpy as np
    import torch

    if not os.access(args.bench, os.X_OK):
        sys.exit("torch_indexer: %s: not built (ninja -C build)" % args.bench)
    dump_dir = args.keep or tempfile.mkdtemp(prefix="skv-peer-")
    failures = 0
    try:
        records = run_bench(args.bench, args.threads, dump_dir)
        machine = next((r for r in records if r.get("name") == "machine"), {})
        torch.set_num_threads(args.threads)
        build = torch_build_info(torch)
        for case in sorted(os.listdir(dump_dir)):
            path = os.path.join(dump_dir, case)
            if not os.path.isfile(os.path.join(path, "meta.json")):
                continue
            meta, q, w, k, pos, idx = load_case(path, np, torch)
            L, topk = meta["L"], meta["k"]
            mask = torch.arange(L)[None, :] > pos[:, None].long()

            def indexer():
                scores = (torch.relu(torch.einsum("thd,ld->thl", q, k)) * w[..., None]).sum(1)
                scores = scores.masked_fill(mask, float("-inf"))
                return torch.topk(scores, topk, dim=-1).indices

            with torch.inference_mode():
                torch_ns, torch_min_ns, iters = time_call(indexer, args.min_time)
                top = indexer()
                check = compare(torch, q, w, k, idx, top)
            failures += not check["match_ok"]
            rec = {
                "name": "torch_peer/" + meta["name"],
                "T": meta["T"], "H": meta["H"], "D": meta["D"], "L": L, "k": topk,
                "dtype": meta["dtype"], "threads": args.threads,
                "torch_threads": torch.get_num_threads(),
                "torch_ns": round(torch_ns, 1), "torch_min_ns": round(torch_min_ns, 1),
                "torch_iterations": iters,
                "sparsekv_ns": meta["sparsekv_ns"],
                "sparsekv_iterations": meta["sparsekv_iterations"],
                "ratio": round(torch_ns / meta["sparsekv_ns"], 3),
                "isa": meta["isa"],
            }
            rec.update(build)
            rec.update(check)
            for key in ("peak_fp32_gflops", "peak_bf16_gflops", "stream_gbps"):
                if key in machine:
                    rec[key] = machine[key]
            print(json.dumps(rec), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(dump_dir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
