"""tools/train_step.py: the training-step report (ours against torch's sparse path and FBGEMM's
TBE, the sparse backward against the dense one), end to end on a tiny grid.

No assertion is about how fast anything is: only that every row is there and holds numbers.
"""
from __future__ import annotations

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import train_step  # noqa: E402

TINY = ["--vocab", "1000", "--dims", "4,8", "--grad-vocab", "100,1000", "--dense-vocab", "1000",
        "-n", "256", "--rounds", "1", "--reps", "1"]


def tables(text):
    """{'Training': [row cells], 'Backward': [row cells]} from the Markdown."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^###\s+(\w+)", line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif current is not None and line.startswith("|") and not set(line) <= set("|-: "):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
    return {k: rows[1:] for k, rows in out.items()}  # without the header


def positive(cell):
    return float(cell.replace(",", "")) > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    md = tmp_path_factory.mktemp("train_step") / "t.md"
    text = train_step.main([*TINY, "--markdown", str(md)])
    return text, md


def test_the_report_has_a_step_row_per_optimizer_and_size_and_a_backward_row_per_size(report):
    text, md = report
    assert md.read_text() == text
    t = tables(text)
    step = {(r[0], r[1], r[2]) for r in t["Training"]}
    names = [*train_step.TORCH_OPTIMIZERS, train_step.ROWWISE]
    assert step == {(name, "1,000", D) for name in names for D in ("4", "8")}
    assert {(r[0], r[1]) for r in t["Backward"]} == {(V, D) for V in ("100", "1,000")
                                                     for D in ("4", "8")}
    for r in t["Training"]:
        assert positive(r[3])
    for r in t["Backward"]:
        assert all(positive(c) for c in r[2:])


def test_the_peers_are_timed_where_they_import(report):
    text, _ = report
    torch = pytest.importorskip("torch")
    assert torch.__version__ in text
    for r in tables(text)["Training"]:
        if r[0] in train_step.TORCH_OPTIMIZERS:
            assert r[4] == "torch" and positive(r[5]) and positive(r[6])
        elif train_step._fbgemm_tbe() is not None:
            assert r[4] == "FBGEMM TBE" and positive(r[5]) and positive(r[6])


def test_without_peers_the_report_says_n_a():
    text = train_step.main([*TINY[:-4], "--rounds", "1", "--reps", "1", "--no-peers",
                            "--dims", "4"])
    rows = tables(text)["Training"]
    assert rows and all(r[4:] == ["n/a", "n/a", "n/a"] for r in rows)
    assert "not installed" in text
