"""tools.formats_roofline's report: times are the best rounds, ratios paired per round."""
from __future__ import annotations

import io

import numpy as np

import kernels
from tools import formats_roofline as fr


def _row(op, fmt, who, rounds_ms, V=10, D=8):
    return {"V": V, "D": D, "op": op, "format": fmt, "who": who, "ms": min(rounds_ms),
            "rounds_ms": rounds_ms}


def _rows():
    rows = []
    k = fr.KERNELS[0]
    for op in ("lookup", "bag8", "bag1"):
        for fmt in fr.FORMATS:
            # float32 is twice the format's time in every round; a slow episode in round 2
            # and one lucky round of the format (0.1 ms) that a ratio of bests would trust
            f32 = [2.0, 20.0, 2.0]
            other = [1.0, 10.0, 0.1] if fmt == "int8" else [1.0, 10.0, 1.0]
            rows.append(_row(op, fmt, k, f32 if fmt == "float32" else other))
            for other_k in fr.KERNELS[1:]:
                rows.append(_row(op, fmt, other_k, [50.0, 50.0, 50.0]))
    for op in ("bag8", "bag1"):
        rows.append(_row(op, "float32", "torch", [4.0, 40.0, 4.0]))
        for fmt in ("int8", "int4"):
            rows.append(_row(op, fmt, "torch", [3.0, 30.0, 3.0]))
    return rows


def _report():
    out = io.StringIO()

    class _Torch:
        __version__ = "test"

    fr.report(_rows(), _Torch(), out)
    return out.getvalue()


def test_format_ratios_are_paired_per_round_and_times_are_best_rounds():
    text = _report()
    lookup = text.split("### Lookup")[1].split("###")[0]
    line = next(l for l in lookup.splitlines() if f"| {fr.KERNELS[0]} |" in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    by_fmt = dict(zip(fr.FORMATS, cells[3:]))
    assert by_fmt["float32"] == "2.000"
    assert by_fmt["float16"] == "1.000 (2.00x)"
    assert by_fmt["int8"] == "0.100 (2.00x)"  # the lucky round: its time is the best, not the ratio


def test_peer_ratios_are_paired_per_round_against_our_fastest_kernel():
    text = _report()
    table = text.split("torch's quantized bag op")[1]
    line = next(l for l in table.splitlines() if l.startswith("| 10 | 8 | 8 |"))
    int8, int4 = [c.strip() for c in line.strip("|").split("|")][3:]
    assert int8 == "3.00"  # 3 / 1, 30 / 10, 3 / 0.1: median 3
    assert int4 == "3.00"


def test_id_sets_are_handed_out_in_turn_one_a_call(monkeypatch):
    """--id-sets K: every timed call takes the next of K sets of N uniform ids (one counter for
    all methods), so calls in a row read different rows; K = 1 is the one set of before."""
    nxt, tnxt = fr._id_turns(1000, 3, None)
    got = [nxt() for _ in range(4)]
    assert tnxt is None
    assert all(g.shape == (fr.N,) and g.min() >= 0 and g.max() < 1000 for g in got)
    assert not np.array_equal(got[0], got[1]) and not np.array_equal(got[1], got[2])
    assert got[3] is got[0]
    one, _ = fr._id_turns(1000, 1, None)
    assert one() is one()
    seen = []
    real = kernels.lookup
    monkeypatch.setattr(kernels, "lookup", lambda T, ids, **kw: (seen.append(ids), real(
        T, ids, **kw))[1])
    m = fr.methods_at(200, 16, None, id_sets=2)
    lookup = next(fn for (op, fmt, who), fn in m.items() if op == "lookup")
    lookup()
    lookup()
    assert len(seen) == 2 and not np.array_equal(seen[0], seen[1])
