"""tools.prefetch_ab: a line per table with both distances' times and their ratio, and
kernels._cpu.far_bag_rows as it was afterwards."""
import re

from kernels import _cpu
from tools import prefetch_ab


def test_prefetch_ab_prints_both_distances_and_restores_far_bag_rows(capsys, monkeypatch):
    far = _cpu.far_bag_rows
    monkeypatch.setattr(_cpu, "L2_BYTES", 1000)
    monkeypatch.setattr(_cpu, "L3_BYTES", 10_000)  # the small tables count as beyond it
    prefetch_ab.main(["--vocab", "2000", "--tables", "float32:16,int4:32", "--bag", "4",
                      "--id-sets", "2", "--rounds", "2", "--reps", "1"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "before/far" in ln]
    assert [ln.split()[0] for ln in lines] == ["float32", "int4"]
    for ln in lines:
        m = re.search(r"before +([\d.]+) ms +far +([\d.]+) ms +before/far ([\d.]+)", ln)
        assert m and all(float(x) > 0 for x in m.groups()), ln
    assert _cpu.far_bag_rows is far
    assert prefetch_ab._before(256, 1) == _cpu.bag_prefetch_rows(256)
    assert prefetch_ab._before(72, _cpu.DECODE_PREFETCH_DISTANCE) == \
        _cpu.DECODE_PREFETCH_DISTANCE
