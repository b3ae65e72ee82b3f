"""tools.isa_ab: one line per (table, format, op) with both levels' times and their ratio; on a
CPU without AVX-512 it says so and measures nothing."""
import re

from tools import isa_ab


def test_isa_ab_prints_both_levels_per_table_format_and_op(capsys):
    isa_ab.main(["--vocab", "1000", "--dims", "16,32", "--formats", "float32,int4",
                 "--ops", "lookup,bag8", "--rounds", "2", "--reps", "1", "--id-sets", "3"])
    text = capsys.readouterr().out
    if not isa_ab._has_avx512():
        assert "no AVX-512" in text and "level 1" not in text
        return
    lines = [ln for ln in text.splitlines() if ln.startswith("V=")]
    assert len(lines) == 2 * 2 * 2
    for ln in lines:
        m = re.search(r"level 1 +([\d.]+) ms +level 2 +([\d.]+) ms +1/2 ([\d.]+)", ln)
        assert m and all(float(x) > 0 for x in m.groups()), ln
    assert "D=32 int4     bag8" in text
    assert "3 id set(s)" in text
