"""Odd results directories and configs: the one reader skips what it cannot use, naming it, and
never raises anything but its own ResultsError, never blocks and never reads without bound."""
from __future__ import annotations

import json
import os
import time

import pytest

from kernels import _asv_results as R

GOOD_ROW = [[1e-6, 2e-6], [["'numpy_take'", "'cython_gather'"], ["100"], ["8"]]]


def _results_file(path, results=None, columns=("result", "params"), **extra):
    data = {"version": 2, "commit_hash": "a" * 40, "env_name": "e", "date": 1_700_000_000_000,
            "params": {"machine": "m"}, "python": "3.11", "requirements": {},
            "result_columns": list(columns),
            "results": results if results is not None
            else {"bench_lookup.Lookup.time_lookup": GOOD_ROW}}
    data.update(extra)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def machine_dir(tmp_path):
    d = tmp_path / "results" / "m"
    d.mkdir(parents=True)
    return d


def _latest(machine_dir):
    t0 = time.monotonic()
    run = R.latest_run(str(machine_dir.parent), "m")
    assert time.monotonic() - t0 < 10
    return run


def test_a_fifo_and_a_link_to_dev_zero_named_json_are_skipped_by_name(machine_dir):
    good = _results_file(machine_dir / "good.json")
    os.mkfifo(machine_dir / "fifo.json")
    (machine_dir / "zero.json").symlink_to("/dev/zero")
    run = _latest(machine_dir)
    assert run.path == str(good)
    notes = " ".join(run.notes)
    assert "fifo.json: not a regular file" in notes and "zero.json: not a regular file" in notes


def test_deeply_nested_json_is_skipped_not_a_recursion_error(machine_dir):
    good = _results_file(machine_dir / "good.json")
    (machine_dir / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    run = _latest(machine_dir)
    assert run.path == str(good) and any("nested too deeply" in n for n in run.notes)


def test_parameter_lists_that_multiply_past_the_cap_are_skipped_quickly(machine_dir):
    values = [repr(i) for i in range(150)]
    path = _results_file(machine_dir / "huge.json", results={
        "bench_lookup.Lookup.time_lookup": [[1e-6], [values, values, values]],
        "bench_lookup.Roofline.time_copy": [[1e-6], [["8"]]]})
    assert path.stat().st_size < 10_000
    run = _latest(machine_dir)
    t0 = time.monotonic()
    assert run.records("bench_lookup.Lookup.time_lookup") is None
    assert time.monotonic() - t0 < 1
    assert run.points("bench_lookup.Roofline.time_copy") == {(8,): 1e-6}


@pytest.mark.parametrize("value", ["null", "7", "[1]", '""'])
def test_a_results_dir_that_is_not_a_path_is_a_results_error_naming_it(tmp_path, value):
    cfg = tmp_path / "asv.conf.json"
    cfg.write_text('{"version": 1, "results_dir": %s}' % value)
    with pytest.raises(R.ResultsError, match="results_dir is .* not a path"):
        R.read_config(str(cfg))


@pytest.mark.parametrize("text", ["[1, 2]", "42", '"x"'])
def test_a_config_that_is_not_an_object_is_a_results_error(tmp_path, text):
    cfg = tmp_path / "asv.conf.json"
    cfg.write_text(text)
    with pytest.raises(R.ResultsError, match="not an object"):
        R.read_config(str(cfg))


def test_a_missing_config_is_a_results_error_naming_it(tmp_path):
    with pytest.raises(R.ResultsError, match="nope.json"):
        R.read_config(str(tmp_path / "nope.json"))


def test_the_cli_names_an_odd_config_and_exits_non_zero(tmp_path, capsys):
    from kernels._decision_table import main

    cfg = tmp_path / "asv.conf.json"
    cfg.write_text('{"results_dir": null}')
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg), "--write-local"])
    assert exc.value.code not in (0, None)
    assert "results_dir is None, not a path" in capsys.readouterr().err


def test_a_too_large_results_file_is_not_read(machine_dir, monkeypatch):
    good = _results_file(machine_dir / "good.json")
    big = machine_dir / "big.json"
    with open(big, "wb") as f:
        f.truncate(R.MAX_FILE_BYTES + 1)
    run = _latest(machine_dir)
    assert run.path == str(good) and any("big.json" in n and "bytes" in n for n in run.notes)
