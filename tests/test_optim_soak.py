"""Soak: 100,000 steps of a small model (four tables, one per optimizer, lookups and bags) keep
the resident set flat: no per-step leak in the backward, the coalescing or the updates."""
from __future__ import annotations

import os

import numpy as np
import pytest

import kernels.optim as ko

STEPS = 100_000
WARMUP = 5_000
LEAK_BUDGET = 4 * 2**20
"""Growth of the resident set allowed after the warm-up: 4 MiB, i.e. < 42 bytes a step."""


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_100k_steps_keep_rss_flat():
    rng = np.random.default_rng(0)
    V, D, n = 1000, 16, 64
    opts = [make(rng.standard_normal((V, D)).astype(np.float32), lr=0.01)
            for make in (ko.SGD, ko.Adagrad, ko.RowwiseAdagrad, ko.SparseAdam)]
    pool = [(rng.integers(0, V, size=n), rng.standard_normal((n, D)).astype(np.float32))
            for _ in range(64)]
    offsets = np.arange(0, n, 8)
    samples = []
    for i in range(STEPS):
        opt = opts[i % 4]
        ids, G = pool[i % 64]
        if i % 3:
            opt.step(ids, G)
        else:
            opt.step_bag(ids, offsets, G[: offsets.shape[0]], mode="mean")
        if i == WARMUP or (i > WARMUP and i % 10_000 == 0):
            samples.append(rss_bytes())
    samples.append(rss_bytes())
    growth = samples[-1] - samples[0]
    assert growth < LEAK_BUDGET, [s // 1024 for s in samples]
    for opt in opts:
        assert np.isfinite(opt.weights).all()
