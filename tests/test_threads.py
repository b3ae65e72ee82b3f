"""Thread knob and thread safety."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import kernels
from conftest import COMPILED_KERNEL_NAMES, assert_bitwise_equal, assert_grad_close, shared_weights

try:
    CPUS = len(os.sched_getaffinity(0))  # the cores this process may use
except AttributeError:
    CPUS = os.cpu_count() or 1
COMPILED = COMPILED_KERNEL_NAMES


# --------------------------------------------------------------------------
# the knob
# --------------------------------------------------------------------------


def test_default_number_of_threads_is_all_cores():
    code = "import kernels; print(kernels.get_num_threads())"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert int(res.stdout.strip()) == CPUS


def test_set_num_threads_changes_get_num_threads(restore_num_threads):
    kernels.set_num_threads(1)
    assert kernels.get_num_threads() == 1
    kernels.set_num_threads(CPUS)
    assert kernels.get_num_threads() == CPUS


def test_set_num_threads_accepts_numpy_integers(restore_num_threads):
    kernels.set_num_threads(np.int64(1))
    assert kernels.get_num_threads() == 1


@pytest.mark.parametrize(
    "n, error",
    [(0, ValueError), (-1, ValueError), (-100, ValueError),
     (1.0, TypeError), (1.5, TypeError), ("2", TypeError), (None, TypeError), ([1], TypeError)],
    ids=repr,
)
def test_bad_thread_count_raises_and_changes_nothing(n, error, restore_num_threads):
    """Below one -> ValueError; not an integer -> TypeError; from both the setter and the
    context manager, and the thread count stays as it was."""
    before = kernels.get_num_threads()
    with pytest.raises(error):
        kernels.set_num_threads(n)
    with pytest.raises(error):
        with kernels.num_threads(n):
            pass
    assert kernels.get_num_threads() == before


def test_num_threads_context_manager_sets_and_restores(restore_num_threads):
    before = kernels.get_num_threads()
    with kernels.num_threads(1):
        assert kernels.get_num_threads() == 1
    assert kernels.get_num_threads() == before


def test_num_threads_context_manager_nests(restore_num_threads):
    before = kernels.get_num_threads()
    with kernels.num_threads(1):
        with kernels.num_threads(CPUS):
            assert kernels.get_num_threads() == CPUS
        assert kernels.get_num_threads() == 1
    assert kernels.get_num_threads() == before


def test_num_threads_context_manager_restores_on_exception(restore_num_threads):
    before = kernels.get_num_threads()
    with pytest.raises(RuntimeError):
        with kernels.num_threads(1):
            raise RuntimeError("boom")
    assert kernels.get_num_threads() == before


def test_num_threads_override_does_not_leak_to_other_threads(restore_num_threads):
    kernels.set_num_threads(CPUS)
    entered, checked = threading.Event(), threading.Event()
    seen = {}

    def other():
        assert entered.wait(10)
        seen["other_during"] = kernels.get_num_threads()
        with kernels.num_threads(1):
            seen["other_inside"] = kernels.get_num_threads()
            checked.set()
            # keep the override alive while the main thread looks
            threading.Event().wait(0.05)
        seen["other_after"] = kernels.get_num_threads()

    t = threading.Thread(target=other)
    t.start()
    with kernels.num_threads(1):
        entered.set()
        assert checked.wait(10)
        seen["main_inside"] = kernels.get_num_threads()
    seen["main_after"] = kernels.get_num_threads()
    t.join(10)
    assert seen == {
        "other_during": CPUS,
        "other_inside": 1,
        "main_inside": 1,
        "other_after": CPUS,
        "main_after": CPUS,
    }


def test_other_threads_override_does_not_leak_into_main(restore_num_threads):
    kernels.set_num_threads(CPUS)
    inside, release = threading.Event(), threading.Event()

    def other():
        with kernels.num_threads(1):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    try:
        assert inside.wait(10)
        assert kernels.get_num_threads() == CPUS
    finally:
        release.set()
        t.join(10)


def test_set_num_threads_is_seen_by_new_threads(restore_num_threads):
    kernels.set_num_threads(1)
    with ThreadPoolExecutor(1) as ex:
        assert ex.submit(kernels.get_num_threads).result() == 1


# --------------------------------------------------------------------------
# threads_used: the knob really controls the compiled kernels
# --------------------------------------------------------------------------


def _big():
    W = shared_weights(1000, 16, np.float32, seed=13)
    ids = np.random.default_rng(14).integers(0, 1000, size=300_000)
    return W, ids


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("name", COMPILED)
def test_threads_used_is_n_under_num_threads_n(name, n):
    if n > CPUS:
        pytest.skip(f"needs at least {n} cores, this process may use {CPUS}")
    W, ids = _big()
    with kernels.num_threads(n):
        assert getattr(kernels, name).threads_used(W, ids) == n


@pytest.mark.parametrize("name", COMPILED)
def test_threads_used_is_one_after_set_num_threads_1(name, restore_num_threads):
    W, ids = _big()
    kernels.set_num_threads(1)
    assert getattr(kernels, name).threads_used(W, ids) == 1


@pytest.mark.skipif(CPUS < 2, reason=f"needs at least 2 cores, os.cpu_count() = {CPUS}")
@pytest.mark.parametrize("name", COMPILED)
def test_threads_used_follows_the_default_of_all_cores(name, restore_num_threads):
    W, ids = _big()
    kernels.set_num_threads(CPUS)
    assert getattr(kernels, name).threads_used(W, ids) == CPUS


@pytest.mark.parametrize("name", COMPILED)
def test_threads_used_respects_the_override_of_its_own_python_thread(name, restore_num_threads):
    """Two Python threads with different overrides at the same time."""
    W, ids = _big()
    mod = getattr(kernels, name)
    kernels.set_num_threads(CPUS)
    barrier = threading.Barrier(2)

    def run(n):
        with kernels.num_threads(n):
            barrier.wait(10)
            return [mod.threads_used(W, ids) for _ in range(5)]

    with ThreadPoolExecutor(2) as ex:
        one = ex.submit(run, 1)
        full = ex.submit(run, CPUS)
        assert one.result() == [1] * 5
        assert full.result() == [CPUS] * 5


# --------------------------------------------------------------------------
# concurrency: 4 Python threads hammering every kernel on shared weights
# --------------------------------------------------------------------------


def _case(name, seed):
    V = 50 if name == "onehot_dense" else 1000
    n = 20_000 if name == "onehot_dense" else 100_000
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=n).astype([np.int64, np.int32, np.uint16, np.uint32][seed % 4])
    return V, ids


def test_concurrent_forward_calls_from_four_threads_are_correct():
    W32 = shared_weights(1000, 16, np.float32, seed=15)
    W64 = shared_weights(1000, 16, np.float64, seed=16)

    def worker(seed):
        failures = []
        for it in range(20):
            for name, k in kernels.KERNELS.items():
                V, ids = _case(name, seed * 100 + it)
                W = (W32 if it % 2 else W64)[:V]
                if it % 3 == 0:
                    out = np.empty(ids.shape + (16,), W.dtype)
                    got = k(W, ids, out=out)
                    if got is not out:
                        failures.append((name, it, "out not returned"))
                else:
                    got = k(W, ids)
                exp = W[ids]
                if got.dtype != exp.dtype or not np.array_equal(
                    got.view(np.uint8), exp.view(np.uint8)
                ):
                    failures.append((name, it, "wrong result"))
        return failures

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(worker, range(4)))
    assert results == [[], [], [], []]


def test_concurrent_backward_calls_from_four_threads_are_correct_and_deterministic():
    rng = np.random.default_rng(17)
    cases = {}
    for name in kernels.KERNELS:
        V, ids = _case(name, 1)
        grad = rng.standard_normal(ids.shape + (8,)).astype(np.float32)
        cases[name] = (V, ids, grad, kernels.KERNELS[name].lookup_grad(grad, ids, V))

    def worker(_):
        bad = []
        for it in range(5):
            for name, (V, ids, grad, first) in cases.items():
                got = kernels.KERNELS[name].lookup_grad(grad, ids, V)
                if not np.array_equal(got.view(np.uint32), first.view(np.uint32)):
                    bad.append((name, it))
        return bad

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(worker, range(4))) == [[], [], [], []]
    for name, (V, ids, grad, first) in cases.items():
        assert_grad_close(first, grad, ids, V)


def test_results_do_not_depend_on_the_thread_count():
    W = shared_weights(1000, 16, np.float32, seed=18)
    ids = np.random.default_rng(19).integers(0, 1000, size=300_000)
    for name in COMPILED:
        k = kernels.KERNELS[name]
        with kernels.num_threads(1):
            a = k(W, ids)
        with kernels.num_threads(CPUS):
            b = k(W, ids)
        assert_bitwise_equal(a, W[ids], f"{name} with 1 thread")
        assert_bitwise_equal(b, W[ids], f"{name} with {CPUS} threads")
