"""tools/roofline.py: the side-by-side bandwidth report (Markdown table + PNG).

One small end-to-end run of main() (module-scoped, a few seconds), plus nbytes() and table()
on hand-made rows with known times. No assertion is about how fast anything is.
"""

from __future__ import annotations

import pathlib
import re
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import kernels  # noqa: E402
from tools import bag_roofline, roofline  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARGV_SIZES = [(100, 4), (100, 8), (1000, 4), (1000, 8)]
ROW_KEYS = ("pass", "V", "D", "n")


def parse_markdown(text):
    """{'forward': (header, [row dict]), 'backward': ...} from table()'s Markdown."""
    out = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^###\s+(\w+)\b", line)
        if m:
            current = m.group(1)
            assert current not in out, f"two {current} tables"
            out[current] = (None, [])
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        header, rows = out[current]
        if header is None:
            out[current] = (cells, rows)
        elif set(line.replace("|", "")) <= set("-: "):
            assert len(cells) == len(header), f"separator has {len(cells)} cells, header {len(header)}"
        else:
            assert len(cells) == len(header), f"row {cells} has {len(cells)} cells, header {len(header)}"
            rows.append(dict(zip(header, cells)))
    return out


def is_positive_number(cell):
    try:
        return float(cell) > 0
    except ValueError:
        return False


# --------------------------------------------------------------------------
# end to end: main() on a tiny grid
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roofline")
    png, md, js = tmp / "r.png", tmp / "r.md", tmp / "r.json"
    argv = ["--vocab", "100,1000", "--dims", "4,8", "-n", "2000", "--rounds", "1", "--reps", "2",
            "--plot", str(png), "--markdown", str(md), "--json", str(js)]
    roofline.main(argv)
    return {"png": png, "md": md, "text": md.read_text(), "json": js, "tmp": tmp}


def test_main_writes_a_forward_and_a_backward_table(run):
    tables = parse_markdown(run["text"])
    assert set(tables) == {"forward", "backward"}, run["text"]


@pytest.mark.parametrize("pass_name", ["forward", "backward"])
def test_each_table_has_exactly_one_row_per_vocab_and_dim(run, pass_name):
    header, rows = parse_markdown(run["text"])[pass_name]
    assert header[:2] == ["V", "D"]
    sizes = [(int(float(r["V"])), int(r["D"])) for r in rows]
    assert sorted(sizes) == sorted(ARGV_SIZES), sizes


@pytest.mark.parametrize("pass_name", ["forward", "backward"])
def test_every_gbps_cell_is_a_positive_number_or_na(run, pass_name):
    header, rows = parse_markdown(run["text"])[pass_name]
    gbps = [h for h in header if h.endswith(" GB/s")]
    assert "copy GB/s" in gbps
    assert {"numba_gather GB/s", "cython_gather GB/s", "numpy_take GB/s"} <= set(gbps)
    bad = [(r["V"], r["D"], h, r[h]) for r in rows for h in gbps
           if not (r[h] == "n/a" or is_positive_number(r[h]))]
    assert not bad, f"GB/s cells that are neither a positive number nor n/a: {bad}"


@pytest.mark.parametrize("pass_name", ["forward", "backward"])
def test_percent_of_copy_and_ratio_cells_are_positive(run, pass_name):
    header, rows = parse_markdown(run["text"])[pass_name]
    for r in rows:
        pct = r["best compiled % copy"]
        assert pct.endswith("%") and is_positive_number(pct[:-1]), pct
        assert is_positive_number(r["x best NumPy"]), r["x best NumPy"]


def test_markdown_records_the_command_line(run):
    first = run["text"].splitlines()[0]
    assert "--vocab 100,1000 --dims 4,8 -n 2000" in first, first


def test_main_writes_a_valid_png(run):
    data = run["png"].read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100, (width, height)


def test_without_backward_only_the_forward_table_is_made():
    rows = roofline.measure([50], [4], 64, rounds=1, reps=1, backward=False)
    assert {r["pass"] for r in rows} == {"forward"}
    assert set(parse_markdown(roofline.table(rows))) == {"forward"}


# --------------------------------------------------------------------------
# nbytes: forward 2*n*D*4, backward (3*n*D + V*D)*4 (float32)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n,V,D", [(1000, 50, 8), (1, 1, 1), (65_536, 1_000_000, 256), (7, 3, 0)])
def test_nbytes_forward_is_rows_read_plus_output_written(n, V, D):
    assert roofline.nbytes({"pass": "forward", "n": n, "V": V, "D": D}) == 2 * n * D * 4


@pytest.mark.parametrize("n,V,D", [(1000, 50, 8), (1, 1, 1), (65_536, 1_000_000, 256), (7, 3, 0)])
def test_nbytes_backward_is_grad_read_dw_rows_read_and_written_and_dw_zeroed(n, V, D):
    assert roofline.nbytes({"pass": "backward", "n": n, "V": V, "D": D}) == (3 * n * D + V * D) * 4


def test_nbytes_known_values():
    assert roofline.nbytes({"pass": "forward", "n": 1000, "V": 100, "D": 8}) == 64_000
    assert roofline.nbytes({"pass": "backward", "n": 1000, "V": 100, "D": 8}) == 99_200


# --------------------------------------------------------------------------
# table() on hand-made rows
# --------------------------------------------------------------------------

US = 1e-6


def fwd_row(V=100, **times):
    # n=1000, D=8: 64,000 bytes, so t us -> 64/t GB/s
    row = {"pass": "forward", "V": V, "D": 8, "n": 1000,
           "copy": 32 * US, "onehot_dense": 640 * US, "onehot_sparse": 320 * US,
           "numpy_take": 80 * US, "numba_gather": 64 * US, "cython_gather": 40 * US,
           "np.take raw": 100 * US, "W[ids]": 80 * US}
    row.update({k: v * US for k, v in times.items()})
    return row


def bwd_row(V=100, **times):
    # n=1000, V=100, D=8: 99,200 bytes
    row = {"pass": "backward", "V": V, "D": 8, "n": 1000,
           "copy": 49.6 * US, "onehot_dense": 992 * US, "onehot_sparse": 496 * US,
           "numpy_take": 155 * US, "numba_gather": 62 * US, "cython_gather": 99.2 * US,
           "np.add.at": 620 * US}
    row.update({k: v * US for k, v in times.items()})
    return row


def only_row(rows, pass_name):
    header, parsed = parse_markdown(roofline.table(rows))[pass_name]
    assert len(parsed) == 1
    return parsed[0]


def test_table_gbps_is_bytes_over_time():
    r = only_row([fwd_row()], "forward")
    assert float(r["copy GB/s"]) == pytest.approx(2.0, abs=0.05)
    assert float(r["cython_gather GB/s"]) == pytest.approx(1.6, abs=0.05)
    assert float(r["numba_gather GB/s"]) == pytest.approx(1.0, abs=0.05)
    assert float(r["onehot_dense GB/s"]) == pytest.approx(0.1, abs=0.05)
    b = only_row([bwd_row()], "backward")
    assert float(b["copy GB/s"]) == pytest.approx(2.0, abs=0.05)
    assert float(b["numba_gather GB/s"]) == pytest.approx(1.6, abs=0.05)


@pytest.mark.parametrize("numba,cython,pct", [(64, 40, 80), (40, 64, 80), (32, 320, 100), (320, 64, 50)])
def test_table_percent_of_copy_is_copy_time_over_best_compiled_time(numba, cython, pct):
    r = only_row([fwd_row(numba_gather=numba, cython_gather=cython)], "forward")
    assert r["best compiled % copy"] == f"{pct}%"


def test_table_backward_percent_of_copy():
    assert only_row([bwd_row()], "backward")["best compiled % copy"] == "80%"


@pytest.mark.parametrize("take_raw,w_ids,ratio", [(100, 80, "2.00"), (60, 80, "1.50"), (40, 40, "1.00")])
def test_table_x_best_numpy_is_fastest_numpy_form_over_best_compiled(take_raw, w_ids, ratio):
    r = only_row([fwd_row(**{"np.take raw": take_raw, "W[ids]": w_ids})], "forward")
    assert r["x best NumPy"] == ratio


def test_table_backward_ratios_against_numpy_take_and_np_add_at():
    r = only_row([bwd_row()], "backward")
    assert r["x best NumPy"] == "2.50"  # numpy_take 155 / best compiled 62
    assert r["x np.add.at"] == "10.0"  # 620 / 62


def test_table_torch_columns_appear_only_when_measured():
    header, _ = parse_markdown(roofline.table([fwd_row()]))["forward"]
    assert not any("torch" in h for h in header)
    rows = [fwd_row(**{"torch embedding": 120, "torch index_select(out=)": 20}),
            bwd_row(**{"torch index_add_": 31})]
    f = only_row(rows, "forward")
    assert f["x torch embedding"] == "3.00" and f["x torch index_select(out=)"] == "0.50"
    assert only_row(rows, "backward")["x torch index_add_"] == "0.50"


def test_table_a_method_not_measured_at_a_size_shows_na():
    small = fwd_row(V=100)
    big = fwd_row(V=10**6)
    del big["onehot_dense"]
    _, rows = parse_markdown(roofline.table([small, big]))["forward"]
    by_v = {int(float(r["V"])): r for r in rows}
    assert by_v[10**6]["onehot_dense GB/s"] == "n/a"
    assert is_positive_number(by_v[100]["onehot_dense GB/s"])


def test_table_a_method_missing_only_at_the_first_size_still_gets_a_column():
    # measure() visits sizes in the order given on the command line (--vocab 1000000,1000)
    big = fwd_row(V=10**6)
    del big["onehot_dense"]
    small = fwd_row(V=1000)
    header, rows = parse_markdown(roofline.table([big, small]))["forward"]
    assert "onehot_dense GB/s" in header, header
    by_v = {int(float(r["V"])): r for r in rows}
    assert by_v[10**6]["onehot_dense GB/s"] == "n/a"
    assert is_positive_number(by_v[1000]["onehot_dense GB/s"])


def test_table_a_slow_method_still_shows_a_positive_bandwidth():
    # 64,000 bytes in 10 ms = 0.0064 GB/s: a measured bandwidth is never shown as 0
    r = only_row([fwd_row(onehot_dense=10_000)], "forward")
    assert is_positive_number(r["onehot_dense GB/s"]), r["onehot_dense GB/s"]


def test_table_rows_follow_the_given_rows_and_sizes_are_printed():
    rows = [fwd_row(V=100), fwd_row(V=1000), fwd_row(V=10**6)]
    _, parsed = parse_markdown(roofline.table(rows))["forward"]
    assert [int(float(r["V"])) for r in parsed] == [100, 1000, 10**6]
    assert all(r["D"] == "8" for r in parsed)


def test_replot_redraws_the_same_table_from_the_saved_rows(run):
    tmp = run["tmp"]
    md2, png2 = tmp / "r2.md", tmp / "r2.png"
    roofline.main(["--replot", "--json", str(run["json"]), "--markdown", str(md2),
                   "--plot", str(png2)])
    assert md2.read_text() == run["text"]
    assert png2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# bags: the row-read floor (tools.bag_roofline) and the --bags section
# --------------------------------------------------------------------------

BAG_ARGV_SIZES = [(V, D, L) for V in (100, 1000) for D in (4, 8) for L in (1, 8)]


@pytest.mark.parametrize("group", bag_roofline.GROUPS)
@pytest.mark.parametrize("prefetch", [0, 3, 12])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_read_rows_checksum_is_the_sum_of_the_rows_it_read(group, prefetch, nthreads, n):
    # small integers: every float32 partial sum is exact, so the checksum must be too
    rng = np.random.default_rng(n + 10 * prefetch + group)
    W = rng.integers(-8, 9, (50, 12)).astype(np.float32)
    ids = rng.integers(0, 50, n)
    expected = W[ids].astype(np.float64).sum()
    assert bag_roofline.read_rows(W, ids, prefetch, group, nthreads) == expected


@pytest.mark.parametrize("group", bag_roofline.GROUPS)
@pytest.mark.parametrize("V,D", [(1000, 16), (300_000, 64)])
def test_read_rows_checksum_of_real_rows_within_float32_rounding(group, V, D):
    # beyond the serial sizes and beyond L2 (the prefetching path reads a table of 77 MB)
    rng = np.random.default_rng(V)
    W = rng.standard_normal((V, D), dtype=np.float32)
    ids = rng.integers(0, V, 65_536)
    rows = W[ids].astype(np.float64)
    bound = ids.shape[0] * np.finfo(np.float32).eps * np.abs(rows).sum()
    for prefetch in (0, 12):
        got = bag_roofline.read_rows(W, ids, prefetch, group)
        assert abs(got - rows.sum()) <= bound, (got, rows.sum(), bound)


def test_read_rows_reads_int32_ids_and_refuses_a_strided_table():
    W = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = np.array([9, 0, 3, 3, 9], np.int32)
    assert bag_roofline.read_rows(W, ids) == W[ids].sum()
    with pytest.raises(ValueError, match="C-contiguous"):
        bag_roofline.read_rows(W[:, ::2], ids)
    with pytest.raises(ValueError, match="group"):
        bag_roofline.read_rows(W, ids, group=3)


@pytest.fixture(scope="module")
def bag_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roofline_bags")
    md, js = tmp / "b.md", tmp / "b.json"
    argv = ["--bags", "--vocab", "100,1000", "--dims", "4,8", "-n", "512", "--bag-lengths", "1,8",
            "--rounds", "1", "--reps", "1", "--markdown", str(md), "--json", str(js)]
    rows = roofline.main(argv)
    return {"rows": rows, "md": md, "text": md.read_text(), "json": js, "tmp": tmp}


def test_bags_section_runs_end_to_end_and_writes_one_bags_table(bag_run):
    tables = parse_markdown(bag_run["text"])
    assert set(tables) == {"bags"}, bag_run["text"]
    header, rows = tables["bags"]
    assert header[:4] == ["V", "D", "bag length", "floor ms (which)"]
    sizes = [(int(float(r["V"])), int(r["D"]), int(r["bag length"])) for r in rows]
    assert sorted(sizes) == sorted(BAG_ARGV_SIZES), sizes


def test_bags_table_has_a_column_per_method_and_the_issue_ratios(bag_run):
    header, _ = parse_markdown(bag_run["text"])["bags"]
    bagged = [name for name, k in kernels.KERNELS.items()
              if k.implements("lookup_bag", "float32") and "sum" in k.bag_modes]
    assert "numpy_take" in bagged
    for name in bagged:
        assert f"{name} ms (% floor)" in header, (name, header)
    for name, k in kernels.KERNELS.items():
        if k.compiled:
            assert f"lookup {name} ms (% floor)" in header, (name, header)
    assert "best compiled bag % floor" in header
    assert "bag / lookup (length 1)" in header
    if bag_roofline._torch() is not None:
        assert "x torch embedding_bag" in header
        assert "torch embedding_bag ms (% floor)" in header
    for name, k in kernels.KERNELS.items():
        if k.family == "onehot":
            assert f"{name} / fastest gather bag" in header


def test_bags_table_cells_are_times_with_percent_of_floor_or_na(bag_run):
    header, rows = parse_markdown(bag_run["text"])["bags"]
    for r in rows:
        floor = re.fullmatch(r"(\S+) \((\d rows(?:, prefetch)?)\)", r["floor ms (which)"])
        assert floor and is_positive_number(floor.group(1)), r["floor ms (which)"]
        for h in header:
            if h.endswith(" ms (% floor)"):
                m = re.fullmatch(r"(\S+) \((\d+)%\)", r[h])
                assert r[h] == "n/a" or (m and is_positive_number(m.group(1))), (h, r[h])
        # the plain lookup is timed at bag length 1 only, and the bag / lookup ratio with it
        lookup_cells = [r[h] for h in header if h.startswith("lookup ")]
        if r["bag length"] == "1":
            assert all(c != "n/a" for c in lookup_cells), r
        else:
            assert all(c == "n/a" for c in lookup_cells) and r["bag / lookup (length 1)"] == "", r


def test_bags_numpy_take_is_timed_everywhere_and_the_gather_ratios_follow(bag_run):
    _, rows = parse_markdown(bag_run["text"])["bags"]
    for r in rows:
        assert r["numpy_take ms (% floor)"] != "n/a"
        assert is_positive_number(r["onehot_sparse / fastest gather bag"])


def test_bags_rows_hold_seconds_for_every_method_and_the_floors(bag_run):
    for row in bag_run["rows"]:
        for name in bag_roofline.FLOOR:
            assert row[name] > 0
        assert row["numpy_take"] > 0
        assert row["n"] == 512
        assert (any(m.startswith("lookup ") for m in row)) == (row["bag_length"] == 1)


def test_bags_replot_prints_the_same_table_from_the_saved_rows(bag_run):
    md2 = bag_run["tmp"] / "b2.md"
    roofline.main(["--bags", "--replot", "--json", str(bag_run["json"]), "--markdown", str(md2)])
    assert md2.read_text() == bag_run["text"]


def test_bags_header_records_the_command_line_blas_and_threads(bag_run):
    first = bag_run["text"].splitlines()[0]
    assert "--bags --vocab 100,1000" in first, first
    assert "BLAS" in first and f"{kernels.get_num_threads()} threads" in first, first


def test_bags_a_kernel_without_bags_is_listed_as_not_timed_with_why(bag_run):
    for name, k in kernels.KERNELS.items():
        header, rows = parse_markdown(bag_run["text"])["bags"]
        if f"{name} ms (% floor)" not in header:
            assert f"- {name} not run where:" in bag_run["text"], name


def test_bags_n_must_be_a_multiple_of_every_bag_length():
    with pytest.raises(ValueError, match="multiple"):
        bag_roofline.measure_bags([100], [4], [1, 3], n=64, rounds=1, reps=1)


def bag_row(L=1, **times):
    # milliseconds in, seconds stored
    # the floors 2, 1, 3, 4 ms: the second (4 rows, prefetched) is the fastest
    row = {"V": 1000, "D": 8, "bag_length": L, "n": 1000,
           **dict(zip(bag_roofline.FLOOR, (2.0, 1.0, 3.0, 4.0))),
           "onehot_dense": 40.0, "onehot_sparse": 8.0, "numpy_take": 4.0,
           "numba_gather": 2.0, "cython_gather": 1.25, "torch embedding_bag": 2.5}
    if L == 1:
        row.update({"lookup numba_gather": 1.0, "lookup cython_gather": 2.0})
    row.update(times)
    return {k: v * 1e-3 if isinstance(v, float) else v for k, v in row.items() if v is not None}


def only_bag_row(rows):
    _, parsed = parse_markdown(bag_roofline.bag_table(rows))["bags"]
    return parsed


def test_bag_table_floor_is_the_fastest_read_loop_and_percent_is_floor_over_time():
    r = only_bag_row([bag_row()])[0]
    fastest = list(bag_roofline.FLOOR)[1]
    assert fastest == "floor (4 rows, prefetch)"
    assert r["floor ms (which)"] == "1.00 (" + fastest[len("floor ("):]
    assert r["numba_gather ms (% floor)"] == "2.00 (50%)"
    assert r["cython_gather ms (% floor)"] == "1.25 (80%)"
    assert r["onehot_dense ms (% floor)"] == "40.00 (2%)"
    assert r["best compiled bag % floor"] == "80%"


def test_bag_table_ratios_torch_lookup_and_onehot_against_fastest_gather():
    r1, r8 = only_bag_row([bag_row(), bag_row(8)])
    assert r1["x torch embedding_bag"] == "2.00"  # 2.5 / 1.25
    assert r1["bag / lookup (length 1)"] == "1.25"  # 1.25 / 1.0
    assert r1["onehot_dense / fastest gather bag"] == "32.0"  # 40 / 1.25
    assert r1["onehot_sparse / fastest gather bag"] == "6.4"
    assert r8["bag / lookup (length 1)"] == ""


def test_bag_table_without_compiled_bags_or_torch_says_na():
    row = bag_row(cython_gather=None, numba_gather=None, onehot_dense=None)
    r = only_bag_row([row])[0]
    assert r["best compiled bag % floor"] == "n/a"
    assert r["bag / lookup (length 1)"] == "n/a"
    assert r["onehot_sparse / fastest gather bag"] == "2.0"  # against numpy_take
    assert r["x torch embedding_bag"] == "n/a"
    assert "onehot_dense / fastest gather bag" not in r  # never measured: no column


def test_bag_table_torch_ratio_appears_only_when_torch_was_measured():
    rows = [bag_row(**{"torch embedding_bag": None})]
    header, _ = parse_markdown(bag_roofline.bag_table(rows))["bags"]
    assert not any("torch" in h for h in header), header


def test_bags_several_passes_give_one_row_per_size_with_the_best_of_each_method():
    rows, _ = bag_roofline.measure_bags([100, 200], [4], [1, 2], n=64, rounds=3, reps=1,
                                        passes=3, log=lambda *a, **k: None)
    assert [(r["V"], r["D"], r["bag_length"]) for r in rows] == [
        (100, 4, 1), (100, 4, 2), (200, 4, 1), (200, 4, 2)]
    for r in rows:
        assert all(r[name] > 0 for name in bag_roofline.FLOOR)
        assert 0 < r["numpy_take"] < float("inf")


def test_bag_table_ratios_are_paired_per_round_when_the_row_holds_rounds():
    """With each method's rounds (as measure_bags stores them), a ratio is the median of the
    per-round ratios, not the ratio of the bests: one lucky round of torch (0.1 ms) does not
    make it 12x faster than it was in every other round."""
    row = bag_row()
    row[bag_roofline.ROUNDS] = {
        "cython_gather": [1.25e-3, 12.5e-3, 1.25e-3],
        "numba_gather": [2e-3, 2e-3, 2e-3],
        "torch embedding_bag": [2.5e-3, 25e-3, 0.1e-3],
        "lookup cython_gather": [2e-3, 2e-3, 2e-3],
        "lookup numba_gather": [1e-3, 10e-3, 1e-3],
    }
    row["torch embedding_bag"] = 0.1e-3
    r = only_bag_row([row])[0]
    assert r["x torch embedding_bag"] == "2.00"  # 2.5 / 1.25, 25 / 12.5, 0.1 / 1.25
    assert r["bag / lookup (length 1)"] == "1.25"  # against lookup numba_gather, the fastest
    assert r["onehot_sparse / fastest gather bag"] == "6.4"  # no rounds: the ratio of bests


def test_bags_rows_hold_the_rounds_of_every_method_over_all_passes():
    rows, _ = bag_roofline.measure_bags([100], [4], [1, 2], n=64, rounds=4, reps=1, passes=2,
                                        log=lambda *a, **k: None)
    for r in rows:
        rounds = r[bag_roofline.ROUNDS]
        assert "numpy_take" in rounds and all(len(t) == 4 for t in rounds.values())
        assert all(r[m] == min(t) for m, t in rounds.items())


def test_bag_methods_take_the_sets_of_ids_in_turn_each_its_own(monkeypatch):
    """--bags --id-sets K: every method (floors, kernels' bags and lookups) reads the next of the
    K sets each call, so calls in a row read different rows; one array is every call's."""
    W = kernels.aligned_empty((50, 8))
    W[...] = np.arange(400, dtype=np.float32).reshape(50, 8)
    sets = [np.arange(16) % 50, (np.arange(16) * 7 + 3) % 50]
    read = []
    real = bag_roofline.read_rows
    monkeypatch.setattr(bag_roofline, "read_rows",
                        lambda W_, ids, *a: (read.append(ids), real(W_, ids, *a))[1])
    methods, _ = bag_roofline.bag_methods(W, sets, [1, 8])
    floor = next(fn for (L, name), fn in methods.items() if L is None)
    for _ in range(3):
        floor()
    assert [id(x) for x in read] == [id(sets[1]), id(sets[0]), id(sets[1])]
    bag8 = methods[8, "cython_gather"]
    for s in (sets[1], sets[0]):
        np.testing.assert_array_equal(bag8(), W[s].reshape(2, 8, 8).sum(axis=1))
    lookup = methods[1, bag_roofline.LOOKUP_PREFIX + "cython_gather"]
    np.testing.assert_array_equal(lookup(), W[sets[1]])
    np.testing.assert_array_equal(lookup(), W[sets[0]])
    one, _ = bag_roofline.bag_methods(W, sets[0], [8])
    for _ in range(2):
        np.testing.assert_array_equal(one[8, "cython_gather"](),
                                      W[sets[0]].reshape(2, 8, 8).sum(axis=1))
    with pytest.raises(ValueError, match="16 ids"):
        bag_roofline.bag_methods(W, [sets[0], sets[0][:8]], [8])


def test_lookup_methods_take_the_sets_of_ids_in_turn_each_its_own():
    """--id-sets K for the lookup roofline: every forward and backward method reads the next of
    the K sets each call (its own turn), one array being every call's."""
    W = np.arange(400, dtype=np.float32).reshape(50, 8)
    sets = [np.arange(16) % 50, (np.arange(16) * 7 + 3) % 50]
    out = np.empty((16, 8), np.float32)
    fwd = roofline.forward_methods(W, sets, out, None)
    for name in ("cython_gather", "numpy_take", "np.take raw"):
        for s in (sets[1], sets[0], sets[1]):
            fwd[name]()
            np.testing.assert_array_equal(out, W[s], err_msg=name)
    np.testing.assert_array_equal(fwd["W[ids]"](), W[sets[1]])
    G = np.ones((16, 8), np.float32)
    dW = np.empty((50, 8), np.float32)
    bwd = roofline.backward_methods(G, sets, dW, None)
    for name in ("cython_gather", "np.add.at"):
        for s in (sets[1], sets[0]):
            bwd[name]()
            want = np.zeros((50, 8), np.float32)
            np.add.at(want, s, G)
            np.testing.assert_array_equal(dW, want, err_msg=name)
    one = roofline.forward_methods(W, sets[0], out, None)
    one["cython_gather"]()
    np.testing.assert_array_equal(out, W[sets[0]])


def test_id_sets_must_be_positive():
    with pytest.raises(SystemExit):
        roofline.main(["--id-sets", "0", "--markdown", "", "--json", "", "--plot", ""])
