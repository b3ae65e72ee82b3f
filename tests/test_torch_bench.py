"""The PyTorch benchmark (benchmarks/bench_torch.py, asv class Torch) and tools/train_example.py:
n/a without torch, and where torch is importable every method sets up, checks and runs, and the
example trains both sides and prints its table.

No assertion is about how fast anything is.
"""
from __future__ import annotations

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_torch, common  # noqa: E402

METHODS = ["time_forward", "time_forward_backward", "time_embedding_step", "time_train_step"]


def test_the_torch_class_keeps_its_names_and_grid():
    assert bench_torch.Torch.param_names == ["modules", "vocab_size"]
    assert bench_torch.Torch.params == [["torch", "kernels"], [100_000, 1_000_000]]
    for method in METHODS:
        assert callable(getattr(bench_torch.Torch, method))


def test_the_torch_class_is_na_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    for modules in bench_torch.Torch.params[0]:
        with pytest.raises(NotImplementedError, match="torch is not installed"):
            bench_torch.Torch().setup(modules, 100_000)


@pytest.mark.parametrize("modules", ["torch", "kernels"])
def test_every_torch_benchmark_sets_up_checks_and_runs(modules):
    torch = pytest.importorskip("torch")
    common.clear_cache()
    try:
        bench = bench_torch.Torch()
        bench.setup(modules, 100_000)  # runs the check of the pooled output
        before = [bag.weight.detach().clone() for bag in bench.model.bags]
        for method in METHODS:
            getattr(bench, method)(modules, 100_000)
        for bag, b in zip(bench.model.bags, before):
            assert not torch.equal(bag.weight.detach(), b)  # the steps updated the tables
            assert bool(torch.isfinite(bag.weight).all())
    finally:
        common.clear_cache()


def test_train_example_trains_both_sides_and_prints_their_rates():
    pytest.importorskip("torch")
    from tools import train_example

    text, sides = train_example.main(["--seconds", "4", "--vocab", "2000,500", "--batch", "64",
                                      "--chunk", "2", "--threads", "1"])
    rows = {m.group(1).strip(): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| ([^|]+) \|(.*)\|$", text, re.M)}
    for label in ("training step: steps/s", "embedding part: steps/s"):
        torch_rate, ours_rate, ratio = (float(c) for c in rows[label])
        assert torch_rate > 0 and ours_rate > 0 and ratio > 0
    assert len(sides["torch"]["step"]) == len(sides["ours"]["step"]) >= 2
    t, o = ([x.item() for x in sides[k]["losses"]] for k in ("torch", "ours"))
    assert len(t) == len(o)
    assert t == pytest.approx(o, rel=1e-3, abs=1e-4)  # the same model, trained the same way
