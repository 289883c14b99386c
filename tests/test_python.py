"""The Python package against numpy formulas and the C library's own results: every binding,
bad dtypes/shapes/strides, and callbacks that raise. Run: python3 tests/test_python.py
[path/to/libsparsekv.so] (the path also goes through SPARSEKV_LIBRARY)."""
import ctypes
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

if len(sys.argv) > 1:
    os.environ["SPARSEKV_LIBRARY"] = os.path.abspath(sys.argv.pop(1))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import numpy as np  # noqa: E402

import sparsekv as skv  # noqa: E402
from sparsekv import _lib as L  # noqa: E402
from sparsekv._lib import lib  # noqa: E402


def dense_scores(q, w, k, pos=None):
    """I[t, s] = sum_h w[t, h] max(0, q[t, h] . k[s]) in float64; -inf where not visible."""
    dots = np.einsum("thd,sd->ths", q.astype(np.float64), k.astype(np.float64))
    out = np.einsum("th,ths->ts", w.astype(np.float64), np.maximum(dots, 0))
    if pos is not None:
        out[np.arange(k.shape[0])[None, :] > pos[:, None]] = -np.inf
    return out


def ranked(scores, k):
    """Top-k by descending score, ties to the lower index, -1 padding past the visible."""
    T, L = scores.shape
    idx = np.full((T, k), -1, np.int32)
    for t in range(T):
        vis = np.flatnonzero(np.isfinite(scores[t]))
        order = vis[np.lexsort((vis, -scores[t, vis]))][:k]
        idx[t, :len(order)] = order
    return idx


class OnlyInterface:
    """An object that is not an ndarray but exposes __array_interface__."""

    def __init__(self, a):
        self.a = a
        self.__array_interface__ = a.__array_interface__


class OnlyDlpack:
    """An object with only __dlpack__ (a CPU torch tensor, say)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


class Base(unittest.TestCase):
    def setUp(self):
        self.ctx = skv.Context(n_threads=2)
        self.rng = np.random.default_rng(5)

    def tearDown(self):
        self.ctx.close()

    def rand(self, *shape):
        return self.rng.uniform(-1, 1, shape).astype(np.float32)


class IndexerTest(Base):
    def data(self, T=3, H=4, D=16, L=200):
        q, w, k = self.rand(T, H, D), self.rand(T, H), self.rand(L, D)
        pos = np.array([L - T + t - 5 for t in range(T)], np.int32)
        return q, w, k, pos

    def test_scores_and_topk_match_numpy(self):
        q, w, k, pos = self.data()
        Q, K = skv.Query(q, w, pos), skv.Keys(k)
        got = skv.indexer_scores(self.ctx, Q, K)
        ref = dense_scores(q, w, k, pos)
        fin = np.isfinite(ref)
        self.assertTrue(np.array_equal(fin, np.isfinite(got)))
        self.assertLess(np.abs(got[fin] - ref[fin]).max(), 1e-4)
        idx, sc = skv.indexer_topk(self.ctx, Q, K, 12)
        # ranked on the library's own f32 scores: the order rule exactly
        self.assertTrue(np.array_equal(idx, ranked(got.astype(np.float64), 12)))
        self.assertTrue(np.array_equal(sc, np.take_along_axis(got, idx, 1)))

    def test_f16_bf16_fp8(self):
        q, w, k, pos = self.data()
        q16, k16 = q.astype(np.float16), k.astype(np.float16)
        a = skv.indexer_scores(self.ctx, skv.Query(q16, w, pos), skv.Keys(k16))
        b = skv.indexer_scores(self.ctx, skv.Query(q16.astype(np.float32), w, pos),
                               skv.Keys(k16.astype(np.float32)))
        self.assertTrue(np.array_equal(a, b))  # F16 is widened exactly
        # bf16 bits: the top 16 bits of f32 values that bf16 holds exactly
        kb = (k.view(np.uint32) >> 16).astype(np.uint16)
        kf = (kb.astype(np.uint32) << 16).view(np.float32)
        a = skv.indexer_scores(self.ctx, skv.Query(q, w, pos), skv.Keys(kb, dtype="bf16"))
        fin = np.isfinite(a)
        self.assertLess(np.abs(a[fin] - dense_scores(q, w, kf, pos)[fin]).max(), 1e-4)
        k8, ks = skv.quantize_fp8(k)
        i8, _ = skv.indexer_topk(self.ctx, skv.Query(q, w, pos), skv.Keys(k8, ks, dtype="fp8"), 8)
        self.assertEqual(i8.shape, (3, 8))
        with self.assertRaises(ValueError):
            skv.Keys(k8, dtype="fp8")  # scales missing

    def test_forced_sinks_and_window(self):
        q, w, k, pos = self.data()
        idx, sc = skv.indexer_topk(self.ctx, skv.Query(q, w, pos, n_sink=2, n_window=1),
                                   skv.Keys(k), 12)
        plain, _ = skv.indexer_topk(self.ctx, skv.Query(q, w, pos), skv.Keys(k), 12)
        for t in range(q.shape[0]):
            forced = [0, 1, pos[t]]  # first two and the last visible key, ascending, first
            self.assertEqual(list(idx[t, :3]), forced)
            self.assertTrue(np.all(np.isposinf(sc[t, :3])))
            rest = [i for i in plain[t] if i not in forced][:9]
            self.assertEqual(list(idx[t, 3:]), rest)

    def test_structs_match_the_library(self):
        # each *_params_init writes struct_size = the C struct's size: the ctypes mirror must
        # be exactly as large (a smaller one is overwritten past its end)
        for cls, init in [(L.ContextParams, lib.skv_context_params_init),
                          (L.KCacheParams, lib.skv_kcache_params_init),
                          (L.MisaParams, lib.skv_misa_params_init),
                          (L.HisaParams, lib.skv_hisa_params_init),
                          (L.SearchParams, lib.skv_reuse_search_params_init),
                          (L.StoreParams, lib.skv_store_params_init)]:
            buf = ctypes.create_string_buffer(4096)
            init(ctypes.cast(buf, ctypes.POINTER(cls)))
            self.assertEqual(ctypes.c_size_t.from_buffer(buf).value, ctypes.sizeof(cls), cls.__name__)

    def test_bad_arrays_raise(self):
        q, w, k, pos = self.data()
        with self.assertRaisesRegex(TypeError, "dtype float64"):
            skv.Keys(k.astype(np.float64), dtype="f32")
        with self.assertRaisesRegex(TypeError, "dtype int32, expected float32"):
            skv.Query(q, w.astype(np.int32), pos)
        with self.assertRaisesRegex(ValueError, "shape"):
            skv.Query(q, w[:, :2].copy(), pos)
        with self.assertRaisesRegex(ValueError, "C-contiguous"):
            skv.Keys(np.asfortranarray(k))
        with self.assertRaisesRegex(ValueError, "C-contiguous"):
            skv.Query(q[:, ::2], w[:, ::2], pos)
        with self.assertRaisesRegex(TypeError, "expected an array"):
            skv.Keys([[1.0, 2.0]])
        out = np.zeros((3, 200), np.float32)
        out.flags.writeable = False
        with self.assertRaisesRegex(ValueError, "read-only"):
            skv.indexer_scores(self.ctx, skv.Query(q, w, pos), skv.Keys(k), out=out)
        with self.assertRaises(skv.Error) as e:
            skv.indexer_topk(self.ctx, skv.Query(q, w, pos), skv.Keys(k), 0)
        self.assertEqual(e.exception.status, -1)
        self.assertIn(skv.status_string(-1), str(e.exception))

    def test_array_protocols_without_copies(self):
        q, w, k, pos = self.data()
        want = skv.indexer_scores(self.ctx, skv.Query(q, w, pos), skv.Keys(k))
        for wrap in (OnlyInterface, OnlyDlpack):
            K = skv.Keys(wrap(k))
            self.assertEqual(K.k.ctypes.data, k.ctypes.data)  # the same memory
            self.assertTrue(np.array_equal(skv.indexer_scores(self.ctx, skv.Query(q, w, pos), K), want))
        out = np.empty((3, 200), np.float32)
        self.assertIs(skv.indexer_scores(self.ctx, skv.Query(q, w, pos), skv.Keys(k), out=out), out)

    def test_topk_rows(self):
        x = self.rand(5, 77)
        x[2, 10] = x[2, 11]  # a tie
        lengths = np.array([77, 3, 50, 0, 77], np.int64)
        idx, val = skv.topk_rows(self.ctx, x, 6, lengths)
        for r in range(5):
            n = lengths[r]
            row = np.full(77, -np.inf)
            row[:n] = x[r, :n]
            want = ranked(row[None, :], 6)[0]
            self.assertTrue(np.array_equal(idx[r], want), r)

    def test_quality(self):
        q, w, k, pos = self.data()
        Q, K = skv.Query(q, w, pos), skv.Keys(k)
        idx, _ = skv.indexer_topk(self.ctx, Q, K, 8)
        rec, mass = skv.selection_quality(self.ctx, Q, K, idx)
        self.assertTrue(np.all(rec == 1) and np.all(mass == 1))
        idx[:, -1] = -1
        strict = skv.selection_quality(self.ctx, Q, K, idx, strict=True)
        self.assertTrue(np.allclose(strict, 7 / 8))


class KeyCacheTest(Base):
    def test_paged_equals_contiguous(self):
        q, w, k = self.rand(2, 4, 32), self.rand(2, 4), self.rand(300, 32)
        kc = skv.KeyCache(self.ctx, head_dim=32, dtype="f32", page_tokens=16, pool_chunk=16)
        s = kc.seq_create()
        kc.append(s, 0, skv.Keys(k[:100]))
        kc.append(s, 0, skv.Keys(k[100:]))
        self.assertEqual(kc.length(s), 300)
        back, sc = kc.read(s, 0, 0, 300)
        self.assertTrue(np.array_equal(back, k) and sc is None)
        Q = skv.Query(q, w)
        a = kc.topk(s, 0, Q, 16)
        b = skv.indexer_topk(self.ctx, Q, skv.Keys(k), 16)
        self.assertTrue(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
        self.assertTrue(np.array_equal(kc.scores(s, 0, Q), skv.indexer_scores(self.ctx, Q, skv.Keys(k))))
        # the router on the cache: h = H is the dense result; the path is reported
        m = kc.misa_topk(s, 0, Q, 16, heads=4, block=64)  # 300 keys: below MISA's gate
        self.assertTrue(np.array_equal(m[0], b[0]))
        self.assertEqual(self.ctx.route_stats()["last_path"], skv.PATH_DENSE_GATE)
        m = kc.misa_topk(s, 0, Q, 16, heads=4, block=64, min_length=0)
        self.assertTrue(np.array_equal(m[0], b[0]))
        self.assertEqual(self.ctx.route_stats()["last_path"], skv.PATH_DENSE_DIAL)
        kc.misa_topk(s, 0, Q, 16, heads=2, block=64, min_length=0)
        self.assertEqual(self.ctx.route_stats()["last_path"], skv.PATH_ROUTED)
        h = kc.hisa_topk(s, 0, Q, 16, block=64, blocks=2, min_length=0)
        self.assertEqual(self.ctx.route_stats()["last_path"], skv.PATH_ROUTED)
        self.assertEqual(h[0].shape, (2, 16))
        f = kc.seq_fork(s)
        kc.seq_remove(f, 100)
        self.assertEqual(kc.length(f), 100)
        self.assertEqual(kc.stats()["n_seqs"], 2)
        with self.assertRaises(skv.Error):
            kc.seq_free(12345)
        kc.close()


class RouterTest(Base):
    def test_misa_hisa_contiguous(self):
        q, w, k = self.rand(2, 8, 16), self.rand(2, 8), self.rand(512, 16)
        Q, K = skv.Query(q, w), skv.Keys(k)
        sums = skv.pool_keys(K, 32)
        self.assertTrue(np.allclose(sums, k.reshape(16, 32, 16).sum(1), atol=1e-5))
        dense = skv.indexer_topk(self.ctx, Q, K, 16)[0]
        a = skv.misa_topk(self.ctx, Q, K, 16, sums, 32, heads=8, block=64)[0]
        self.assertTrue(np.array_equal(a, dense))
        # MISA-dagger with 4k candidates, gated by default (512 < 16K): dense, and said so
        a = skv.misa_topk(self.ctx, Q, K, 16, sums, 32, heads=2, block=64,
                          candidates=skv.CANDIDATES_4K)[0]
        self.assertTrue(np.array_equal(a, dense))
        self.assertEqual(self.ctx.route_stats()["last_path"], skv.PATH_DENSE_GATE)
        # HISA with every block kept is dense too
        a = skv.hisa_topk(self.ctx, Q, K, 16, sums, 32, block=64, blocks=8, min_length=0)[0]
        self.assertTrue(np.array_equal(a, dense))
        # a routed MISA: its keys score highest on the routed heads' own formula
        a, sc = skv.misa_topk(self.ctx, Q, K, 4, sums, 32, heads=8, block=64, min_length=0)
        with self.assertRaises(skv.Error):
            skv.misa_topk(self.ctx, Q, K, 16, None, 0, heads=2, block=64, min_length=0)


class ReuseTest(Base):
    def test_plans(self):
        p = skv.ReusePlan(self.ctx, "FFSSFS")
        self.assertEqual((p.pattern, p.n_layers, p.n_full, p.source(3), p.full_slot(5)),
                         ("FFSSFS", 6, 3, 1, 2))
        p = skv.ReusePlan(self.ctx, n_layers=8, freq=4, rule=skv.FREQ_PLAIN)
        self.assertEqual(p.pattern, "FSSSFSSS")
        with self.assertRaises(skv.Error):
            skv.ReusePlan(self.ctx, "SF")

    def test_search_with_python_loss(self):
        n = 8
        mass = self.rng.uniform(0.3, 1, (n, n))

        def loss(pattern):  # the mass proxy, in Python
            src, total = 0, 0.0
            for layer, c in enumerate(pattern):
                if c == "F":
                    src = layer
                else:
                    total += 1 - mass[layer, src]
            return total / n

        pat, curve, stats = skv.search(self.ctx, n, 3, loss)
        pat2, curve2, _ = skv.search_mass(self.ctx, mass, 3)
        best = min(loss("F" + "".join("F" if i in c else "S" for i in range(1, n)))
                   for c in itertools.combinations(range(1, n), 2))
        ex, ex_curve, _ = skv.search(self.ctx, n, 3, loss, method="exhaustive")
        self.assertEqual(loss(ex), best)
        self.assertEqual(ex_curve[-1], best)
        beam, _, _ = skv.search(self.ctx, n, 3, loss, method="beam", beam_width=3)
        self.assertEqual(beam.count("F"), 3)
        self.assertGreaterEqual(loss(beam), best)
        one, _, _ = skv.search(self.ctx, n, 3, loss, method="beam", beam_width=1)
        self.assertEqual(one, pat)  # width 1 is greedy
        with self.assertRaises(ValueError):
            skv.search(self.ctx, n, 3, loss, method="best")
        self.assertEqual(pat, pat2)
        self.assertTrue(np.allclose(curve, curve2, rtol=0, atol=1e-15))
        self.assertEqual(pat.count("F"), 3)
        self.assertEqual(len(curve), stats["n_rounds"] + 1)

        calls = []

        def failing(pattern):
            calls.append(pattern)
            if len(calls) == 4:
                raise KeyError("the host's model failed")
            return 0.0

        with self.assertRaisesRegex(KeyError, "model failed"):
            skv.search(self.ctx, n, 3, failing)
        self.assertEqual(len(calls), 4)  # no call after the one that raised
        pat3, _, _ = skv.search(self.ctx, n, 3, loss)  # the context is fine afterwards
        self.assertEqual(pat3, pat)
        with self.assertRaises(skv.Error) as e:
            skv.search(self.ctx, n, 3, lambda p: float("nan"))
        self.assertEqual(e.exception.status, -6)

    def test_mass_matrix(self):
        qs = [skv.Query(self.rand(2, 4, 16), self.rand(2, 4)) for _ in range(3)]
        ks = [skv.Keys(self.rand(64, 16)) for _ in range(3)]
        m = skv.mass_matrix(self.ctx, qs, ks, 8)
        self.assertEqual(m.shape, (3, 3))
        self.assertTrue(np.all(np.diag(m) >= m.max(1) - 1e-12))


class FlakyTier(skv.HostTier):
    def __init__(self):
        self.fail_copy = False
        self.copies = 0

    def copy(self, direction, region, slot_bytes, staging, xfers):
        if self.fail_copy:
            raise RuntimeError("device copy failed")
        self.copies += 1
        super().copy(direction, region, slot_bytes, staging, xfers)


class StoreTest(Base):
    def make(self, tier=None):
        st = skv.Store(self.ctx, tier=tier, n_kv_heads=2, k_dim=16, v_dim=8, dtype="f32",
                       hot_pages=64, n_sink=4, n_window=16)
        s = st.seq_create()
        n = 300
        k, v = self.rand(n, 2, 16), self.rand(n, 2, 8)
        pos = np.arange(n, dtype=np.int32) * 2
        st.append(s, 0, k, v, pos)
        return st, s, k, v, pos

    def test_append_select_gather(self):
        st, s, k, v, pos = self.make()
        rk, rv, rp = st.read(s, 0, 0, 300)
        self.assertTrue(np.array_equal(rk, k) and np.array_equal(rv, v) and np.array_equal(rp, pos))
        sel = st.select(s, 0, self.rand(4, 16), 64)
        gk, gv, gp, ls, ll = st.gather(sel, order=skv.GATHER_POSITIONS)
        # every gathered row is the stored row at its position, per KV head
        for h in range(2):
            rows = slice(ls[h], ls[h] + ll[h])
            at = gp[rows] // 2
            self.assertTrue(np.array_equal(gk[rows], k[at, h]) and np.array_equal(gv[rows], v[at, h]))
            self.assertTrue(np.all(np.diff(gp[rows]) > 0))
        p2, ls2, ll2 = st.gather(sel, order=skv.GATHER_POSITIONS, positions_only=True)
        self.assertTrue(np.array_equal(p2, gp) and np.array_equal(ll2, ll))
        with self.assertRaisesRegex(skv.Error, "invalid"):
            st.select(s, 0, self.rand(4, 16), 8)  # below sinks + window
        with self.assertRaisesRegex(ValueError, "shape"):
            st.append(s, 0, k[:2, :1].copy(), v[:2], pos[:2] + 1000)

    def test_python_tier_and_raising_callback(self):
        tier = FlakyTier()
        st, s, k, v, pos = self.make(tier)
        sel = st.select(s, 0, self.rand(4, 16), 64)
        st.fetch(sel)
        self.assertGreater(tier.copies, 0)
        self.assertEqual(st.check_hot(), 0)  # the Python region holds the pages exactly
        st.release(sel)
        before = st.gather(sel)
        sel2 = st.select(s, 0, self.rand(4, 16) * -1, 200)
        resident = st.stats()["hot_resident"]
        tier.fail_copy = True
        with self.assertRaisesRegex(RuntimeError, "device copy failed"):
            st.fetch(sel2)
        tier.fail_copy = False
        after = st.stats()
        self.assertEqual(after["io_errors"], 1)
        self.assertLessEqual(after["hot_resident"], resident)  # nothing half-copied is resident
        self.assertEqual(st.check_hot(), 0)  # what stays resident is intact
        for a, b in zip(before, st.gather(sel)):  # host data unchanged
            self.assertTrue(np.array_equal(a, b))
        st.fetch(sel2)  # and the store works on
        self.assertEqual(st.check_hot(), 0)
        st.close()

    def test_raising_alloc(self):
        class NoMemory(skv.HostTier):
            def alloc(self, nbytes):
                raise MemoryError("no device memory")
        with self.assertRaises(MemoryError):
            skv.Store(self.ctx, tier=NoMemory(), n_kv_heads=1, k_dim=8, v_dim=8, dtype="f32",
                      hot_pages=4)


class AttentionTest(Base):
    def test_against_numpy_and_reference(self):
        T, Hq, Hkv, kd, vd, R = 2, 4, 2, 16, 8, 40
        q, k, v = self.rand(T, Hq, kd), self.rand(R, kd), self.rand(R, vd)
        ls = np.array([[0, 10], [5, 20]], np.int64)
        ll = np.array([[10, 15], [12, 20]], np.int32)
        out, mx, lse = skv.sparse_attention(self.ctx, q, k, v, ls, ll, 0.25, partial=True)
        ref = skv.sparse_attention(None, q, k, v, ls, ll, 0.25, reference=True)
        self.assertLess(np.abs(out - ref).max(), 1e-5)
        for t in range(T):
            for h in range(Hq):
                g = h // (Hq // Hkv)
                rows = slice(ls[t, g], ls[t, g] + ll[t, g])
                s = 0.25 * (k[rows].astype(np.float64) @ q[t, h])
                p = np.exp(s - s.max())
                want = (p / p.sum()) @ v[rows]
                self.assertLess(np.abs(out[t, h] - want).max(), 1e-5)
                self.assertAlmostEqual(float(lse[t, h]), s.max() + np.log(p.sum()), places=5)
        with self.assertRaises(skv.Error):
            skv.sparse_attention(self.ctx, q, k, v, ls, ll + 100, 0.25)  # lists past the rows
        with self.assertRaisesRegex(TypeError, "int64"):
            skv.sparse_attention(self.ctx, q, k, v, ls.astype(np.int32), ll, 0.25)


class LookupTest(unittest.TestCase):
    def test_env_variable_first(self):
        code = "import sparsekv"
        env = dict(os.environ, SPARSEKV_LIBRARY="/nonexistent/libsparsekv.so",
                   PYTHONPATH=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("/nonexistent/libsparsekv.so", r.stderr)

    def test_beside_the_package(self):
        here = os.path.dirname(os.path.abspath(__file__))
        with tempfile.TemporaryDirectory() as tmp:
            pkg = os.path.join(tmp, "sparsekv")
            shutil.copytree(os.path.join(here, "..", "python", "sparsekv"), pkg)
            os.symlink(os.environ["SPARSEKV_LIBRARY"], os.path.join(pkg, "libsparsekv.so"))
            env = {k: v for k, v in os.environ.items() if k != "SPARSEKV_LIBRARY"}
            env["PYTHONPATH"] = tmp
            r = subprocess.run([sys.executable, "-c", "import sparsekv; print(sparsekv.lib._name)"],
                               env=env, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.strip(), os.path.join(pkg, "libsparsekv.so"))


if __name__ == "__main__":
    unittest.main(verbosity=1)
