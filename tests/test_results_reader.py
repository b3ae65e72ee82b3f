"""One reader of asv results (kernels._asv_results) for `python -m kernels` and the crossover
page: both pick the same results file and name the same winners.

The results directory, written with asv's own API (asv.results.Results, BenchmarkResult and a
benchmarks.json saved by asv.benchmarks.Benchmarks), is laid out so that every wrong rule picks
another file than the right one:

  machine "m" (the one asked for):
    0000...  corrupt (not JSON)                      first by name
    1111...  good, an OLDER commit, started last     first good by name, newest mtime,
                                                     latest benchmark start
    8888...  good, the newest usable commit          <- the right one
    aaaa...  good, the OLDEST commit                 last good by name
    ffff...  failed build (every result null)        newest commit date, last by name
  machine "other": good, newer than all of them      <- another machine's

and each good file has its own winners, so that picking another file shows in the winners too.
"""
from __future__ import annotations

import datetime
import html.parser
import json
import os
import re
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

pytest.importorskip("asv")
from asv.benchmarks import Benchmarks  # noqa: E402
from asv.config import Config  # noqa: E402
from asv.results import Results  # noqa: E402
from asv.runner import BenchmarkResult  # noqa: E402

import kernels  # noqa: E402
from kernels import _asv_results  # noqa: E402
from kernels._decision_table import table_from_results, winners  # noqa: E402
from tools.report import crossover, grid, results  # noqa: E402

MACHINE, OTHER = "m", "other"
ENV = "virtualenv-py3.11-numpy"
FWD = kernels.OPERATIONS["lookup"].benchmark  # bench_lookup.Lookup.time_lookup
BWD = kernels.OPERATIONS["lookup_grad"].benchmark  # bench_grad.LookupGrad.time_lookup_grad
PARAM_NAMES = ["kernel", "vocab_size", "dim"]
KERNELS = list(kernels.KERNELS)
VOCABS = [100, 1_000, 100_000]
DIMS = [8, 64]
CELLS = [(V, D) for V in VOCABS for D in DIMS]
GRID_SLUG = {"lookup": "bench_lookup_Lookup_time_lookup-distribution-uniform-dtype-float32",
             "lookup_grad": "bench_grad_LookupGrad_time_lookup_grad-distribution-uniform-dtype-"
                            "float32"}


def _rotate(offset):
    """{(V, D): winner}: a different registered kernel per cell, shifted by offset."""
    return {vd: KERNELS[(i + offset) % len(KERNELS)] for i, vd in enumerate(CELLS)}


RIGHT = {"lookup": _rotate(0), "lookup_grad": _rotate(2)}
OLDER = {"lookup": _rotate(1), "lookup_grad": _rotate(3)}
OLDEST = {"lookup": _rotate(2), "lookup_grad": _rotate(4)}
OTHERS = {"lookup": _rotate(4), "lookup_grad": _rotate(1)}
MISSING = ("onehot_dense", 100_000, 8)
"""Not measured in the good files (n/a, as asv stores a kernel over budget): never a winner."""


def _times(win):
    """Values in asv's order (kernel, vocab_size, dim): the winner 1 us, the others 2, 3 ... us,
    MISSING None."""
    out = []
    for k in KERNELS:
        for V in VOCABS:
            for D in DIMS:
                if (k, V, D) == MISSING and win[(V, D)] != k:
                    out.append(None)
                elif win[(V, D)] == k:
                    out.append(1e-6)
                else:
                    out.append((2 + (KERNELS.index(k) + V + D) % 7) * 1e-6)
    return out


def _bench(name):
    return {"name": name, "params": [[repr(k) for k in KERNELS], [repr(V) for V in VOCABS],
                                     [repr(D) for D in DIMS]],
            "param_names": PARAM_NAMES, "version": "0" * 64, "type": "time", "unit": "seconds"}


def write_results(results_dir, machine, commit, date, wins, started):
    """One results file written by asv's Results API; wins None: a failed build (all null)."""
    params = {"machine": machine, "python": "3.11", "arch": "x86_64", "cpu": "test", "os": "test"}
    res = Results(params, {"numpy": ""}, commit, date, "3.11", ENV, {})
    n = len(KERNELS) * len(VOCABS) * len(DIMS)
    for name, op in ((FWD, "lookup"), (BWD, "lookup_grad")):
        values = [None] * n if wins is None else _times(wins[op])
        res.add_result(_bench(name),
                       BenchmarkResult(result=values, samples=[None] * n, number=[None] * n,
                                       errcode=0 if wins else 1, stderr="", profile=None),
                       started_at=started, duration=1.0)
    res.save(str(results_dir))
    with open(os.path.join(str(results_dir), machine, "machine.json"), "w") as f:
        json.dump({"machine": machine, "arch": "x86_64", "cpu": "test", "version": 1}, f)
    path = os.path.join(str(results_dir), machine, f"{commit[:8]}-{ENV}.json")
    assert os.path.isfile(path), f"test bug: asv saved elsewhere than {path}"
    return path


def _utc(*args):
    return datetime.datetime(*args, tzinfo=datetime.timezone.utc)


def _ms(*args):
    return int(_utc(*args).timestamp() * 1000)


@pytest.fixture
def project(tmp_path):
    """asv.conf.json + results_dir laid out as in the module docstring."""
    rd = tmp_path / ".asv" / "results"
    rd.mkdir(parents=True)
    config = tmp_path / "asv.conf.json"
    config.write_text("// a comment, as asv allows\n"
                      + json.dumps({"version": 1, "project": "p", "results_dir": ".asv/results",
                                    "html_dir": ".asv/html", "benchmark_dir": "benchmarks"}))
    conf = Config()
    conf.results_dir = str(rd)
    Benchmarks(conf, [_bench(FWD), _bench(BWD)]).save()  # benchmarks.json, as `asv run` does

    right = write_results(rd, MACHINE, "8" * 40, _ms(2026, 3, 1), RIGHT, _utc(2026, 3, 2))
    older = write_results(rd, MACHINE, "1" * 40, _ms(2026, 1, 1), OLDER, _utc(2026, 6, 1))
    oldest = write_results(rd, MACHINE, "a" * 40, _ms(2025, 1, 1), OLDEST, _utc(2025, 1, 2))
    failed = write_results(rd, MACHINE, "f" * 40, _ms(2026, 5, 1), None, _utc(2026, 5, 2))
    corrupt = write_results(rd, MACHINE, "0" * 40, _ms(2026, 5, 5), RIGHT, _utc(2026, 5, 6))
    with open(corrupt, "w") as f:
        f.write('{"commit_hash": "0000", "results": {tru')
    other = write_results(rd, OTHER, "e" * 40, _ms(2026, 9, 1), OTHERS, _utc(2026, 9, 2))
    os.utime(right, (1_000_000, 1_000_000))  # not the right one by being the latest written
    os.utime(older, None)
    return {"config": str(config), "results": str(rd), "html": str(tmp_path / ".asv" / "html"),
            "right": right, "older": older, "oldest": oldest, "failed": failed, "corrupt": corrupt,
            "other": other, "tmp": tmp_path}


def _table(config, machine):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = table_from_results(config, machine)
    return table, [str(w.message) for w in caught]


# --------------------------------------------------------------------------
# (a) the same results file
# --------------------------------------------------------------------------


def test_the_decision_table_and_the_page_read_the_same_results_file(project):
    table, warned = _table(project["config"], MACHINE)
    run = results.load(project["results"], MACHINE)
    assert os.path.samefile(table["source"], project["right"])
    assert os.path.samefile(run.path, project["right"])
    assert run.commit == table["commit"] == "8" * 40
    assert run.machine == table["machine"] == MACHINE
    # both skipped the failed build and the corrupt file, naming each
    for path in (project["failed"], project["corrupt"]):
        assert any(os.path.basename(path) in n for n in run.notes), run.notes
        assert any(os.path.basename(path) in w for w in warned), warned
    # and the page states that file as its source
    summary = crossover.write_crossover(project["html"], project["results"], MACHINE,
                                        log=lambda m: None, warn=lambda m: None)
    assert os.path.samefile(summary["path"], project["right"])
    assert summary["commit"] == "8" * 40 and summary["machine"] == MACHINE
    page = open(summary["page"], encoding="utf-8").read()
    assert os.path.basename(project["right"]) in page and "8" * 40 in page


def test_without_a_machine_both_take_asvs_name_for_this_one(project, monkeypatch):
    home = project["tmp"] / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / ".asv-machine.json").write_text(json.dumps(
        {"some-host": {"machine": MACHINE, "arch": "x86_64"}, "version": 1}))
    assert _asv_results.this_machine_name() == MACHINE
    table, _ = _table(project["config"], None)
    run = results.load(project["results"])
    assert os.path.samefile(table["source"], project["right"])
    assert os.path.samefile(run.path, project["right"])


def test_without_results_for_this_machine_neither_falls_back_to_another(project, monkeypatch):
    home = project["tmp"] / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / ".asv-machine.json").write_text(json.dumps(
        {"some-host": {"machine": "unmeasured", "arch": "x86_64"}, "version": 1}))
    with pytest.raises(_asv_results.NoResults) as from_table, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table_from_results(project["config"], None)
    with pytest.raises(_asv_results.NoResults) as from_page:
        results.load(project["results"])
    for exc in (from_table.value, from_page.value):
        assert "'unmeasured'" in str(exc) and MACHINE in str(exc) and OTHER in str(exc)
    # the page says so, in its "no results" form
    warned = []
    summary = crossover.write_crossover(project["html"], project["results"], None,
                                        log=lambda m: None, warn=warned.append)
    assert summary["grids"] == 0 and "'unmeasured'" in summary["error"]
    page = open(summary["page"], encoding="utf-8").read()
    assert 'id="no-results"' in page and "unmeasured" in page
    assert len(warned) == 1 and "no asv results for machine 'unmeasured'" in warned[0]


def test_the_other_machine_is_read_only_when_named(project):
    table, _ = _table(project["config"], OTHER)
    run = results.load(project["results"], OTHER)
    assert os.path.samefile(table["source"], project["other"])
    assert os.path.samefile(run.path, project["other"])


# --------------------------------------------------------------------------
# (b) the same winners
# --------------------------------------------------------------------------


def parse_cli(text):
    """{op name: {(V, D): fastest}} from `python -m kernels`' table."""
    out, op = {}, None
    for line in text.splitlines():
        m = re.match(r"^(\w+) \(n = ", line)
        if m:
            op = m.group(1)
            assert op not in out, f"two {op} sections"
            out[op] = {}
            continue
        parts = line.split()
        if op and len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            key = (int(parts[0]), int(parts[1]))
            assert key not in out[op], f"two {op} lines for {key}"
            out[op][key] = parts[2]
    return out


class PageGrids(html.parser.HTMLParser):
    """{h2 id: {(V, D): kernel}} from crossover.html's tables (n/a cells left out)."""

    def __init__(self):
        super().__init__()
        self.grids, self.slug, self.dims, self.row = {}, None, [], None
        self.cell, self.text, self.kernel = None, "", None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2":
            self.slug = a.get("id")
            self.grids[self.slug] = {}
            self.dims = []
        elif tag in ("th", "td"):
            self.cell, self.text, self.kernel = tag, "", a.get("data-kernel")
        elif tag == "tr":
            self.row = []

    def handle_data(self, data):
        if self.cell:
            self.text += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self.cell:
            self.row.append((self.cell, self.text.strip(), self.kernel))
            self.cell = None
        elif tag == "tr" and self.row is not None and self.slug:
            cells, self.row = self.row, None
            if all(kind == "th" for kind, _, _ in cells):  # the header: dims
                self.dims = [int(t) for _, t, _ in cells[1:]]
                return
            V = int(cells[0][1].replace(",", ""))
            for D, (_, _, kernel) in zip(self.dims, cells[1:]):
                if kernel:
                    self.grids[self.slug][(V, D)] = kernel


def test_python_m_kernels_and_the_page_name_the_same_winners(project):
    proc = subprocess.run(
        [sys.executable, "-m", "kernels", "--config", project["config"], "--machine", MACHINE],
        capture_output=True, text=True, cwd=project["tmp"], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert project["right"] in proc.stdout, proc.stdout
    cli = parse_cli(proc.stdout)

    summary = crossover.write_crossover(project["html"], project["results"], MACHINE,
                                        log=lambda m: None, warn=lambda m: None)
    grids = {g.key: g for g in summary["grid_objects"]}
    parser = PageGrids()
    parser.feed(open(summary["page"], encoding="utf-8").read())

    table, _ = _table(project["config"], MACHINE)
    for op, key in (("lookup", FWD), ("lookup_grad", BWD)):
        expected = RIGHT[op]  # the right file's winners, known by construction
        assert cli[op] == expected, (op, proc.stdout)
        assert winners(table, op) == expected
        assert grids[key].winners() == expected
        assert parser.grids[GRID_SLUG[op]] == expected, parser.grids
    # the cell where a kernel is n/a still has a winner, and it is not that kernel
    assert grids[FWD].cells[(100_000, 8)].best != MISSING[0]
    assert MISSING[0] not in grids[FWD].cells[(100_000, 8)].times


def test_the_page_grid_over_the_reader_matches_the_decision_table_at_every_cell(project):
    """Not just the winners: every kernel's time in the page's cells is the decision table's."""
    table, _ = _table(project["config"], MACHINE)
    run = results.load(project["results"], MACHINE)
    by_key = {g.key: g for g in grid.compute_grids(run)}
    for op, key in (("lookup", FWD), ("lookup_grad", BWD)):
        rows = {(r["vocab_size"], r["dim"]): r["times"] for r in table["ops"][op]}
        cells = {vd: c.times for vd, c in by_key[key].cells.items()}
        assert cells == rows
