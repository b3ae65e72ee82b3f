"""Hardening of the compiled kernels and the thread knob: forked children, Numba's workqueue
layer, ids changed by another thread during a call, accuracy of float32 gradients with heavy
duplicates, and the thread count across asyncio tasks and generators.

Tests that could crash or hang the interpreter run their scenario in a subprocess with a timeout,
so that a regression fails the test instead of killing the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import kernels
from conftest import assert_bitwise_equal, grad_reference, shared_weights

try:
    CPUS = len(os.sched_getaffinity(0))
except AttributeError:
    CPUS = os.cpu_count() or 1
COMPILED = ["cython_gather", "numba_gather"]


def _run(code, timeout, env=None):
    """Run code in a fresh interpreter; fail (not hang, not crash) on timeout or a bad exit.

    The interpreter gets its own process group, killed as a whole on timeout: a hung fork pool
    leaves no orphaned workers behind."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        hung = True
    if hung:
        pytest.fail(f"timed out after {timeout} s (hang)\nstdout:\n{out}\nstderr:\n{err}")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers it may have left behind
    except ProcessLookupError:
        pass
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


# --------------------------------------------------------------------------
# 1. forked children
# --------------------------------------------------------------------------

_FORK_SETUP = """
    import multiprocessing as mp, os, sys
    import numpy as np
    import kernels
    from kernels import cython_gather, numba_gather

    V, D, N = 1000, 64, 300_000   # 300k x 64 float32: above the serial threshold, 2 threads
    W = np.random.default_rng(0).standard_normal((V, D)).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, V, N)
    G = np.random.default_rng(2).standard_normal((N, D)).astype(np.float32)
    FWD = W[ids]
    with kernels.num_threads(1):  # serial: starts no OpenMP region; the same bits as 2 threads
        REF = {n: kernels.lookup_grad(G, ids, V, kernel=n) for n in ("cython_gather", "numba_gather")}

    def call(name, backward):
        if backward:
            got = kernels.lookup_grad(G, ids, V, kernel=name)
            return bool(np.array_equal(got.view(np.uint32), REF[name].view(np.uint32)))
        return bool(np.array_equal(kernels.lookup(W, ids, kernel=name), FWD))
"""


@pytest.mark.slow
def test_forked_pool_completes_correct_calls_after_parallel_calls_in_the_parent():
    """The parent runs both compiled kernels on 2 threads, forward and backward; then a fork pool
    of 2 workers makes 4 calls per kernel and direction: all complete and are correct, on one
    thread (inherited counts read as 1); a child that sets 2 threads itself still completes."""
    out = _run(_FORK_SETUP + """
    def task(args):
        name, backward, i = args
        ok = call(name, backward)
        used = getattr(kernels, name).threads_used(W, ids)
        return name, backward, ok, kernels.get_num_threads(), used

    def reenabled(name):
        kernels.set_num_threads(2)
        return call(name, False), call(name, True), getattr(kernels, name).threads_used(W, ids)

    parent = [call(n, b) for n in ("cython_gather", "numba_gather") for b in (False, True)]
    assert all(parent), parent
    used = [m.threads_used(W, ids) for m in (cython_gather, numba_gather)]
    print("parent threads_used", used)
    tasks = [(n, b, i) for n in ("cython_gather", "numba_gather") for b in (False, True)
             for i in range(4)]
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map(task, tasks, chunksize=1)
    bad = [r for r in results if not r[2]]
    assert not bad, bad
    assert all(r[3] == 1 and r[4] == 1 for r in results), results
    with ctx.Pool(1) as pool:
        again = pool.map(reenabled, ["cython_gather", "numba_gather"])
    assert all(a and b for a, b, _ in again), again
    print("re-enabled threads_used", [u for _, _, u in again])
    print("OK", len(results))
    """, timeout=120)
    assert "OK 16" in out


@pytest.mark.slow
@pytest.mark.skipif(CPUS < 2, reason="needs 2 cores")
def test_child_forked_before_any_parallel_call_keeps_its_threads():
    """asv's forkserver and pools created first: nothing was started before the fork, so the
    child keeps the parent's thread count and runs parallel."""
    out = _run(_FORK_SETUP + """
    def task(name):
        return call(name, False), call(name, True), getattr(kernels, name).threads_used(W, ids)

    with mp.get_context("fork").Pool(1) as pool:
        results = pool.map(task, ["cython_gather", "numba_gather"])
    assert all(a and b for a, b, _ in results), results
    assert [u for _, _, u in results] == [2, 2], results
    print("OK")
    """, timeout=120)
    assert "OK" in out


# --------------------------------------------------------------------------
# 2. Numba's workqueue layer: first parallel calls from several threads at once
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_first_parallel_calls_from_four_threads_under_workqueue():
    out = _run("""
    import threading
    import numba, numpy as np
    import kernels

    V, D, N = 1000, 64, 300_000
    W = np.random.default_rng(0).standard_normal((V, D)).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, V, N)
    G = np.random.default_rng(2).standard_normal((N, D)).astype(np.float32)
    with kernels.num_threads(1):  # the serial path starts no threading layer
        ref = kernels.lookup_grad(G, ids, V, kernel="numba_gather")
    barrier = threading.Barrier(4)
    results = []

    def run(i):
        barrier.wait()
        if i % 2:
            ok = np.array_equal(kernels.lookup(W, ids, kernel="numba_gather"), W[ids])
            ok = ok and np.array_equal(kernels.lookup_grad(G, ids, V, kernel="numba_gather"), ref)
        else:
            ok = np.array_equal(kernels.lookup_grad(G, ids, V, kernel="numba_gather"), ref)
            ok = ok and np.array_equal(kernels.lookup(W, ids, kernel="numba_gather"), W[ids])
        results.append(bool(ok))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(numba.threading_layer(), results)
    assert results == [True] * 4
    """, timeout=120, env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert out.startswith("workqueue")


# --------------------------------------------------------------------------
# 3. ids rewritten by another thread during a call
# --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_ids_rewritten_during_calls_never_crash(name):
    """A thread keeps writing out-of-range garbage into the ids buffer (and restoring it) while
    the main thread calls the kernel on it: every call either raises (IndexError from the check,
    RuntimeError from the loops) or returns rows of the table; the process never crashes."""
    out = _run(f"""
    import threading, time
    import numpy as np
    import kernels

    name = {name!r}
    V, D = 1000, 16
    rng = np.random.default_rng(0)
    W = rng.standard_normal((V, D)).astype(np.float32)
    Ws = np.asfortranarray(W)  # rows not contiguous: the element-loop path
    row_of = {{W[j].tobytes(): j for j in range(V)}}
    stop = False
    seen = {{"ok": 0, "IndexError": 0, "RuntimeError": 0}}

    def writer(buf, valid):
        r = np.random.default_rng(1)
        garbage = np.array([-1, V, 2**31 - 1, -2**31, 10**6], buf.dtype)
        while not stop:
            pos = r.integers(0, buf.shape[0], 64)
            buf[pos] = r.choice(garbage, 64)
            buf[pos] = valid[pos]

    for n in (300_000, 20_000):        # parallel and serial paths
        for dtype in (np.int64, np.int32):
            valid = rng.integers(0, V, n).astype(dtype)
            buf = valid.copy()
            G = rng.standard_normal((n, D)).astype(np.float32)
            stop = False
            t = threading.Thread(target=writer, args=(buf, valid))
            t.start()
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                for call in ("fwd", "fwd_strided", "grad", "grad_f64"):
                    try:
                        if call == "fwd":
                            out = kernels.lookup(W, buf, kernel=name)
                        elif call == "fwd_strided":
                            out = kernels.lookup(Ws, buf, kernel=name)
                        elif call == "grad":
                            kernels.lookup_grad(G, buf, V, kernel=name)
                        else:
                            kernels.lookup_grad(G.astype(np.float64), buf, V, kernel=name)
                    except (IndexError, RuntimeError) as e:
                        seen[type(e).__name__] += 1
                        continue
                    seen["ok"] += 1
                    if call.startswith("fwd"):
                        rows = np.ascontiguousarray(out)
                        assert all(rows[i].tobytes() in row_of for i in range(0, n, 997))
            stop = True
            t.join()
    print("OK", seen)
    """, timeout=180)
    assert out.startswith("OK")


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_loops_reject_ids_outside_the_table_and_stay_inside_their_arrays(name):
    """The loops' own check, called directly (the shared check bypassed, as when a racing writer
    changes ids after it): an id outside [0, V) raises RuntimeError, the gather writes only into
    out, the scatter only into dW; good ids are still handled. In a subprocess: a regression
    would read or write out of bounds."""
    out = _run(f"""
    import os
    import numpy as np, pytest
    import kernels

    mod = getattr(kernels, {name!r})
    rng = np.random.default_rng(4)
    V, D, n = 100, 8, 100_000
    W = rng.standard_normal((V, D)).astype(np.float32)
    for dtype in (np.int64, np.int32):
        ids = rng.integers(0, V, n).astype(dtype)
        ids[[5, n - 1]] = [-7, 2**31 - 1]
        good = np.ones(n, bool)
        good[[5, n - 1]] = False
        for threads in (1, min(2, len(os.sched_getaffinity(0)))):
            with kernels.num_threads(threads):
                for table in (W, np.asfortranarray(W)):
                    out = np.zeros((n + 8, D), np.float32)
                    with pytest.raises(RuntimeError, match="another thread changed ids"):
                        mod._gather(table, ids, out[:n])
                    assert np.all(out[n:] == 0)
                    np.testing.assert_array_equal(out[:n][good], W[ids[good]])
                for gdtype in (np.float32, np.float64):
                    dW = np.zeros((V + 1, D), gdtype)
                    G = np.ones((n, D), gdtype)
                    with pytest.raises(RuntimeError, match="another thread changed ids"):
                        mod._scatter_add(G, ids, dW[:V], True)
                    assert np.all(dW[V] == 0)
                    ref = np.zeros((V, D))
                    np.add.at(ref, ids[good], 1.0)
                    np.testing.assert_array_equal(dW[:V], ref)
    print("OK")
    """, timeout=120)
    assert "OK" in out


def test_cython_bags_clamp_the_offsets_they_read_in_place():
    """cython_gather's bags read the caller's offsets in place (bag_offsets_in_place), so
    offsets another thread rewrites after the check reach the loops: called directly with
    such offsets (negative, past n, huge, decreasing), every bag is the bag of its clamped bounds
    (start in [0, n], end in [start, n], n ending the last bag), bit for bit; nothing is read
    or written outside the arrays. In a subprocess: a regression would read out of bounds."""
    out = _run("""
    import numpy as np
    import kernels
    from kernels.cython_gather import KERNEL

    rng = np.random.default_rng(5)
    V, D, n, B = 300, 16, 200_000, 20_000
    W = rng.standard_normal((V, D)).astype(np.float32)
    ids = rng.integers(0, V, n)
    good = np.sort(rng.integers(0, n, B))
    good[0] = 0
    garbage = good.copy()
    pos = rng.choice(np.arange(1, B), 400, replace=False)
    garbage[pos] = rng.choice([-5, -2**62, n + 1, 2**62, 0, n], 400)

    def clamped(off):
        lo = np.clip(off[:B], 0, n)
        hi = np.append(off[1:B], n)
        return lo, np.minimum(np.maximum(hi, lo), n)

    for fmt in ("float32", "int8"):
        T = W if fmt == "float32" else kernels.quantize(W, fmt)
        S = W if fmt == "float32" else T.packed
        fn = KERNEL.function("lookup_bag", fmt)
        for dtype in (np.int64, np.int32):
            flat = ids.astype(dtype)
            lo, hi = clamped(garbage)
            seq = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])
            want = kernels.lookup_bag(T, flat[seq], np.append(0, np.cumsum(hi - lo)[:-1]),
                                      kernel="cython_gather")
            for threads in (1, 2):
                with kernels.num_threads(threads):
                    got = np.full((B + 1, D), 7.0, np.float32)
                    fn(S, flat, garbage, "sum", None, -1, got[:B])
                    assert (got[B] == 7.0).all()
                    assert got[:B].tobytes() == want.tobytes(), (fmt, dtype, threads)
            bags2d = flat[:B * 8].reshape(B, 8)
            with kernels.num_threads(2):
                got = np.empty((B, D), np.float32)
                fn(S, bags2d.reshape(-1), None, "sum", None, -1, got)
            assert got.tobytes() == kernels.lookup_bag(
                T, bags2d.reshape(-1), np.arange(0, B * 8, 8), kernel="numba_gather").tobytes()
    print("OK")
    """, timeout=120)
    assert "OK" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, k in sorted(kernels.KERNELS.items())
                                  if k.implements("lookup_bag", "float32")])
def test_offsets_rewritten_during_bag_calls_never_crash(name):
    """A thread keeps writing garbage into the offsets buffer (and restoring it) while the main
    thread calls lookup_bag on it: every call either raises the check's ValueError or returns;
    the process never crashes."""
    out = _run(f"""
    import threading, time
    import numpy as np
    import kernels

    name = {name!r}
    V, D = 1000, 16
    rng = np.random.default_rng(0)
    W = rng.standard_normal((V, D)).astype(np.float32)
    stop = False
    seen = {{"ok": 0, "ValueError": 0}}

    def writer(buf, valid):
        r = np.random.default_rng(1)
        garbage = np.array([-1, -2**62, 2**62, 10**6, 0], buf.dtype)
        while not stop:
            pos = r.integers(0, buf.shape[0], 64)
            buf[pos] = r.choice(garbage, 64)
            buf[pos] = valid[pos]

    for n in (300_000, 20_000):
        ids = rng.integers(0, V, n)
        valid = np.sort(rng.integers(0, n, n // 8))
        valid[0] = 0
        buf = valid.copy()
        stop = False
        t = threading.Thread(target=writer, args=(buf, valid))
        t.start()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            for mode in ("sum", "max"):
                try:
                    kernels.lookup_bag(W, ids, buf, mode=mode, kernel=name)
                except ValueError:
                    seen["ValueError"] += 1
                    continue
                except NotImplementedError:
                    continue
                seen["ok"] += 1
        stop = True
        t.join()
    print("OK", seen)
    """, timeout=120)
    assert out.startswith("OK")


# --------------------------------------------------------------------------
# 4. accuracy of float32 gradients with heavy duplicates
# --------------------------------------------------------------------------

ROUNDED_ONCE = ["cython_gather", "numba_gather", "onehot_sparse"]
"""Kernels whose float32 gradient row is exactly the float64 sum in id order, rounded once."""

BOUND = {name: 1.0 for name in kernels.KERNELS}
"""|dW - exact| <= BOUND * eps32 * sum|g| for every entry. Promised (float64 accumulation rounded
once: 0.5 * eps32 * |exact| + k * 2**-53 * sum|g| <= eps32 * sum|g| for k <= 2**29
contributions) by every kernel except numpy_take, whose np.add.reduceat is NumPy's pairwise
sum in float32 (its worst case grows like log2(k)); the bound is checked for it on these inputs."""
BOUND["numpy_take"] = 2.0


def _heavy_cases():
    rng = np.random.default_rng(20)
    # the case: 1e6 copies of 0.1 into one row
    yield "1e6 x 0.1", np.full((1_000_000, 1), 0.1, np.float32), np.zeros(1_000_000, np.int64), 1
    # mixed magnitudes and signs, a few very heavy rows, rows hit once, twice, never
    n, D, V = 400_000, 4, 50
    ids = rng.choice(4, n, p=[0.7, 0.2, 0.09, 0.01]).astype(np.int32)
    ids[:20] = np.arange(10, 30)  # rows hit once
    ids[20:40] = np.repeat(np.arange(30, 40), 2)  # rows hit twice
    g = (rng.standard_normal((n, D)) * 10.0 ** rng.integers(-3, 4, (n, 1))).astype(np.float32)
    g[5] = -0.0  # a row hit once with -0.0: comes back +0.0, as from the float64 sum
    yield "mixed", g, ids, V
    # all positive, uniform over a few rows: recursive float32 sums drift most here
    n, D, V = 300_000, 8, 3
    yield "positive", rng.uniform(0.5, 1.5, (n, D)).astype(np.float32), rng.integers(0, V, n), V


HEAVY = list(_heavy_cases())


@pytest.mark.parametrize("case", range(len(HEAVY)), ids=[c[0] for c in HEAVY])
@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_float32_gradient_with_heavy_duplicates_within_eps_times_sum_abs(name, case):
    _, g, ids, V = HEAVY[case]
    got = kernels.KERNELS[name].lookup_grad(g, ids, V)
    ref, _, absref = grad_reference(g, ids, V)
    err = np.abs(got.astype(np.float64) - ref)
    bound = BOUND[name] * float(np.finfo(np.float32).eps) * absref
    worst = float(np.max(err / np.maximum(bound, 1e-300)))
    assert np.all(err <= bound), f"{name}: error up to {worst:.3g} x the bound"


@pytest.mark.parametrize("case", range(len(HEAVY)), ids=[c[0] for c in HEAVY])
@pytest.mark.parametrize("name", ROUNDED_ONCE)
def test_float32_gradient_is_the_float64_sum_in_id_order_rounded_once(name, case):
    _, g, ids, V = HEAVY[case]
    ref = np.zeros((V, g.shape[1]))
    np.add.at(ref, ids, g.astype(np.float64))  # in id order, unbuffered
    expected = ref.astype(np.float32)
    for threads in sorted({1, CPUS}):
        with kernels.num_threads(threads):
            assert_bitwise_equal(kernels.KERNELS[name].lookup_grad(g, ids, V), expected,
                                 f"{name}, {threads} threads")
            out = np.full((V, g.shape[1]), 7.0, np.float32)
            kernels.KERNELS[name].lookup_grad(g, ids, V, out=out)
            assert_bitwise_equal(out, expected, f"{name} into out=, {threads} threads")


@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_float32_gradient_is_bitwise_the_same_for_1_and_2_threads_and_every_call(name):
    _, g, ids, V = HEAVY[1]
    k = kernels.KERNELS[name]
    with kernels.num_threads(1):
        first = k.lookup_grad(g, ids, V)
        assert_bitwise_equal(k.lookup_grad(g, ids, V), first, f"{name}, again")
    with kernels.num_threads(min(2, CPUS)):
        assert_bitwise_equal(k.lookup_grad(g, ids, V), first, f"{name}, 2 threads")
        assert_bitwise_equal(k.lookup_grad(g, ids, V), first, f"{name}, 2 threads again")


@pytest.mark.parametrize("skewed", [False, True], ids=["uniform", "half-on-one-row"])
@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("V, n, D", [
    (7, 150_000, 5), (1000, 150_000, 5),  # dense: a float64 copy of the row slice
    (30_000, 65_536, 40),  # counted: at most n / 2 rows, but a float64 copy would exceed 4 MiB
    (200_000, 150_000, 5), (3_000_000, 150_000, 5),  # counted
    (3_000_000, 20_000, 5),  # word: over 64 rows per id
    (10_000, 65_536, 256), (40_000, 300_000, 64),  # numba: sorted (n >= 4 rows, copy > 4 MiB)
])
def test_compiled_float32_gradient_rounded_once_at_many_sizes(name, V, n, D, skewed):
    """The three ways of the float32 scatter, rows hit 0, 1, 2, 3 and many times; int32 and
    int64 ids; fresh and preallocated output; 1 and 2 threads."""
    rng = np.random.default_rng(V + n)
    g = rng.standard_normal((n, D)).astype(np.float32)
    for dtype in (np.int32, np.int64):
        ids = rng.integers(0, V, n).astype(dtype)
        if skewed:
            ids[rng.random(n) < 0.5] = V // 2
        ref = np.zeros((V, D))
        np.add.at(ref, ids, g.astype(np.float64))
        expected = ref.astype(np.float32)
        for threads in sorted({1, CPUS}):
            with kernels.num_threads(threads):
                got = kernels.KERNELS[name].lookup_grad(g, ids, V)
                assert_bitwise_equal(got, expected, f"{name} {dtype} {threads}")
                out = np.full((V, D), np.nan, np.float32)
                kernels.KERNELS[name].lookup_grad(g, ids, V, out=out)
                assert_bitwise_equal(out, expected, f"{name} {dtype} {threads} out=")


# --------------------------------------------------------------------------
# 5. the thread knob: asyncio tasks, generators, Numba's own setting
# --------------------------------------------------------------------------


def test_num_threads_follows_asyncio_tasks(restore_num_threads):
    kernels.set_num_threads(CPUS)
    seen = {}

    async def one():
        with kernels.num_threads(1):
            await asyncio.sleep(0.01)
            seen["one, after 1st await"] = kernels.get_num_threads()
            await asyncio.sleep(0.02)
            seen["one, after 2nd await"] = kernels.get_num_threads()

    async def default():
        await asyncio.sleep(0.005)
        seen["default, before"] = kernels.get_num_threads()
        await asyncio.sleep(0.02)
        seen["default, after"] = kernels.get_num_threads()

    async def main():
        await asyncio.gather(one(), default())
        seen["main, after both"] = kernels.get_num_threads()

    asyncio.run(main())
    assert seen == {
        "one, after 1st await": 1,
        "one, after 2nd await": 1,
        "default, before": CPUS,
        "default, after": CPUS,
        "main, after both": CPUS,
    }
    assert kernels.get_num_threads() == CPUS


@pytest.mark.skipif(CPUS < 2, reason="needs 2 cores")
def test_asyncio_tasks_run_the_compiled_kernels_with_their_own_count(restore_num_threads):
    kernels.set_num_threads(CPUS)
    W = shared_weights(1000, 16, np.float32, seed=13)
    ids = np.random.default_rng(14).integers(0, 1000, 300_000)
    used = {}

    async def task(label, n):
        with kernels.num_threads(n):
            for _ in range(3):
                await asyncio.sleep(0.005)
                used.setdefault(label, []).append(
                    [kernels.cython_gather.threads_used(W, ids),
                     kernels.numba_gather.threads_used(W, ids)])

    async def main():
        await asyncio.gather(task("one", 1), task("two", 2))

    asyncio.run(main())
    assert used == {"one": [[1, 1]] * 3, "two": [[2, 2]] * 3}


def test_interleaved_generators_leave_the_count_as_it_was(restore_num_threads):
    """A generator shares its caller's context (documented); blocks closing out of order must
    still leave no setting behind once both are closed."""
    kernels.set_num_threads(CPUS)

    def gen(n):
        with kernels.num_threads(n):
            yield kernels.get_num_threads()
            yield kernels.get_num_threads()

    a, b = gen(1), gen(CPUS)
    assert next(a) == 1
    assert next(b) == CPUS
    next(a)
    assert next(a, "closed") == "closed"  # a's block closes while b's is open
    assert kernels.get_num_threads() == CPUS  # b's block, still open
    assert next(b) == CPUS
    assert next(b, "closed") == "closed"
    assert kernels.get_num_threads() == CPUS

    c, d = gen(1), gen(1)
    next(c)
    next(d)
    c.close()
    assert kernels.get_num_threads() == 1  # d's block is open
    d.close()
    assert kernels.get_num_threads() == CPUS


def test_a_generator_block_does_not_outlive_it_in_the_caller(restore_num_threads):
    kernels.set_num_threads(CPUS)

    def gen():
        with kernels.num_threads(1):
            yield kernels.get_num_threads()

    g = gen()
    assert next(g) == 1
    g.close()
    assert kernels.get_num_threads() == CPUS


@pytest.mark.skipif(CPUS < 2, reason="needs 2 cores")
def test_numba_gather_leaves_numbas_own_thread_count_as_it_was():
    W = shared_weights(1000, 16, np.float32, seed=13)
    ids = np.random.default_rng(14).integers(0, 1000, 300_000)
    G = np.ones((ids.size, 16), np.float32)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        with kernels.num_threads(2):
            assert kernels.numba_gather.threads_used(W, ids) == 2
            kernels.lookup_grad(G, ids, 1000, kernel="numba_gather")
            kernels.lookup(W, ids[:16], kernel="numba_gather")  # serial path
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)


@pytest.mark.slow
def test_ids_rewritten_during_the_sorted_numba_backward_never_crash():
    """The counting-sort path of numba_gather's float32 backward (at most n / 4 rows a thread,
    their float64 copy over 4 MiB): ids rewritten during the call give an error or a gradient,
    never an access outside grad or dW."""
    out = _run("""
    import threading, time
    import numpy as np
    import kernels

    V, D, n = 40_000, 64, 400_000
    rng = np.random.default_rng(0)
    valid = rng.integers(0, V, n)
    buf = valid.copy()
    G = rng.standard_normal((n, D)).astype(np.float32)
    stop = False

    def writer():
        r = np.random.default_rng(1)
        garbage = np.array([-1, V, 2**40, -2**40], np.int64)
        while not stop:
            pos = r.integers(0, n, 64)
            buf[pos] = r.choice(garbage, 64)
            buf[pos] = valid[pos]

    t = threading.Thread(target=writer)
    t.start()
    seen = {"ok": 0, "err": 0}
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            kernels.lookup_grad(G, buf, V, kernel="numba_gather")
            seen["ok"] += 1
        except (IndexError, RuntimeError):
            seen["err"] += 1
    stop = True
    t.join()
    print(seen)
    """, timeout=300)
    assert "ok" in out
