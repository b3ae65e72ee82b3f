"""kernels.fastest: the kernel measured fastest for a size, from the local decision table that
`python -m kernels --write-local` builds from this machine's latest asv results (asv's own
results format, written here with asv's own API), else the shipped table.

Every test runs against a private asv.conf.json (KERNELS_ASV_CONFIG), a private local table
(KERNELS_DECISION_TABLE) and a private shipped table (the module's SHIPPED_TABLE monkeypatched),
with the decision caches cleared before and after, so nothing depends on the checkout's real
results or tables. `write_results` models an asv run followed by `make bench`'s publishing step
(`python -m kernels --write-local`); `publish()` runs that step alone.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import warnings

import numpy as np
import pytest
from asv.results import Results
from asv.runner import BenchmarkResult

import kernels
from conftest import assert_bitwise_equal, make_weights, outcome

F = importlib.import_module("kernels.decisions")  # the table kernels.fastest decides from
T = importlib.import_module("kernels._decision_table")  # python -m kernels: builds tables
FORWARD = kernels.OPERATIONS["lookup"].benchmark
BACKWARD = kernels.OPERATIONS["lookup_grad"].benchmark
BAGS = kernels.OPERATIONS["lookup_bag"].benchmark
BAG_GRADS = kernels.OPERATIONS["lookup_bag_grad"].benchmark
COPY = T.COPY_BENCHMARK

# The env fixture leaves the local table absent on purpose (those tests decide from the shipped
# table); the warning a user gets for a KERNELS_DECISION_TABLE naming a missing file is tested in
# test_registry.py.
pytestmark = pytest.mark.filterwarnings(
    "ignore:kernels.fastest. KERNELS_DECISION_TABLE names .* which does not exist:UserWarning")

MACHINE = platform.node()
OTHER_MACHINE = MACHINE + "-other"
ALL = sorted(kernels.KERNELS)
GRID_V = [100, 1000]
GRID_D = [8, 32]
GRID = [(V, D) for V in GRID_V for D in GRID_D]

# The measured winners written into the results: a different kernel at every grid point, and
# different again for the backward. onehot_dense never wins in these results, so the shipped
# table (where it wins everywhere) is recognisable.
FWD_WIN = {
    (100, 8): "numba_gather",
    (100, 32): "cython_gather",
    (1000, 8): "onehot_sparse",
    (1000, 32): "numpy_take",
}
BWD_WIN = {
    (100, 8): "numpy_take",
    (100, 32): "onehot_sparse",
    (1000, 8): "cython_gather",
    (1000, 32): "numba_gather",
}
SHIPPED_WIN = "onehot_dense"

COMMIT_A = "a" * 40
DATE_OLD = 1_600_000_000_000  # asv stores the commit date as a JavaScript timestamp (ms)
DATE_NEW = 1_700_000_000_000


# --------------------------------------------------------------------------
# writing asv results with asv's API
# --------------------------------------------------------------------------


def times_for(winners, kernels_=ALL, grid=GRID):
    """{(kernel, V, D): seconds}: the winner 1 us at its point, the others 2, 3, ... us."""
    out = {}
    for V, D in grid:
        w = winners[(V, D)] if isinstance(winners, dict) else winners
        rest = [k for k in kernels_ if k != w]
        out[(w, V, D)] = 1e-6
        for i, k in enumerate(rest):
            out[(k, V, D)] = (2 + i) * 1e-6
    return out


def _bench(name, params, param_names):
    # the fields asv.benchmarks gives a benchmark that Results.add_result reads
    return {
        "name": name,
        "params": params,
        "param_names": param_names,
        "version": "0" * 64,
        "type": "time",
        "unit": "seconds",
    }


def _grid_params(kernels_, grid):
    Vs = sorted({V for V, _ in grid})
    Ds = sorted({D for _, D in grid})
    return [[repr(k) for k in kernels_], [repr(V) for V in Vs], [repr(D) for D in Ds]]


def _grid_result(times, kernels_, grid):
    Vs = sorted({V for V, _ in grid})
    Ds = sorted({D for _, D in grid})
    return [times.get((k, V, D)) for k in kernels_ for V in Vs for D in Ds]


def _add(res, bench, values):
    n = len(values)
    res.add_result(
        bench,
        BenchmarkResult(
            result=values, samples=[None] * n, number=[None] * n, errcode=0, stderr="", profile=None
        ),
    )


def write_results(
    results_dir,
    *,
    forward=None,
    backward=None,
    copy=None,
    commit=COMMIT_A,
    date=DATE_NEW,
    machine=MACHINE,
    env_name="virtualenv-py3.11-numpy",
    kernels_=ALL,
    grid=GRID,
    publish_table=True,
    bags=None,
    bag_grads=None,
    bag_lengths=(1, 8, 64),
):
    """Save one asv results file (version 2) with asv's Results API, then (publish_table) build
    the local decision table from the results as `make bench` does; return the file's path.

    forward/backward: {(kernel, V, D): seconds or None/NaN}; copy: {D: seconds};
    bags/bag_grads: {(kernel, V, D, bag_length): seconds} over grid x bag_lengths."""
    params = {"machine": machine, "python": "3.11", "arch": "x86_64", "cpu": "test", "os": "test"}
    res = Results(params, {"numpy": ""}, commit, date, "3.11", env_name, {})
    p = _grid_params(kernels_, grid)
    names = ["kernel", "vocab_size", "dim"]
    if forward is not None:
        _add(res, _bench(FORWARD, p, names), _grid_result(forward, kernels_, grid))
    if backward is not None:
        _add(res, _bench(BACKWARD, p, names), _grid_result(backward, kernels_, grid))
    bag_params = p + [[repr(b) for b in bag_lengths]]
    for bench, times in ((BAGS, bags), (BAG_GRADS, bag_grads)):
        if times is not None:
            values = [times.get((k, V, D, b)) for k in kernels_ for V in sorted({V for V, _ in grid})
                      for D in sorted({D for _, D in grid}) for b in bag_lengths]
            _add(res, _bench(bench, bag_params, names + ["bag_length"]), values)
    if copy is not None:
        Ds = sorted(copy)
        _add(res, _bench(COPY, [[repr(D) for D in Ds]], ["dim"]), [copy[D] for D in Ds])
    res.save(str(results_dir))
    machine_json = os.path.join(str(results_dir), machine, "machine.json")
    if not os.path.exists(machine_json):
        with open(machine_json, "w") as f:
            json.dump({"machine": machine, "arch": "x86_64", "cpu": "test", "version": 1}, f)
    path = os.path.join(str(results_dir), machine, f"{commit[:8]}-{env_name}.json")
    assert os.path.exists(path), f"test bug: asv saved elsewhere than {path}"
    if publish_table:
        publish()
    return path


def publish():
    """`python -m kernels --write-local` for the config KERNELS_ASV_CONFIG names (a run with no
    usable results leaves the local table as it was, as the command does), then reload."""
    try:
        T.main(["--write-local"])
    except SystemExit:
        pass
    F.reload()


def write_standard(results_dir, **kw):
    kw.setdefault("forward", times_for(FWD_WIN))
    kw.setdefault("backward", times_for(BWD_WIN))
    kw.setdefault("copy", {8: 0.5e-6, 32: 0.6e-6})
    return write_results(results_dir, **kw)


def write_config(path, results_dir="results"):
    path.write_text(
        "// asv configuration written by test_fastest\n"
        "{\n"
        '    "version": 1,\n'
        '    "project": "embedding-kernels",\n'
        "    // where the results go\n"
        f'    "results_dir": {json.dumps(str(results_dir))},\n'
        '    "benchmark_dir": "benchmarks"\n'
        "}\n"
    )
    return path


def shipped_table_dict(tmp_path):
    """A table in the shipped format (what table_from_results returns), onehot_dense winning."""
    d = tmp_path / "make_shipped"
    path = write_results(
        d,
        forward=times_for(SHIPPED_WIN),
        backward=times_for(SHIPPED_WIN),
        copy={8: 0.5e-6, 32: 0.6e-6},
        machine="shipping-machine",
        publish_table=False,
    )
    conf = write_config(tmp_path / "make_shipped.conf.json", str(d))
    return T.table_from_results(str(conf), "shipping-machine")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private asv.conf.json (results_dir tmp/asv/results, empty) and shipped table."""
    shipped = tmp_path / "shipped_decision_table.json"
    shipped.write_text(json.dumps(shipped_table_dict(tmp_path)))
    monkeypatch.setattr(F, "SHIPPED_TABLE", str(shipped))
    conf_dir = tmp_path / "asv"
    conf_dir.mkdir()
    config = write_config(conf_dir / "asv.conf.json", "results")
    monkeypatch.setenv("KERNELS_ASV_CONFIG", str(config))
    monkeypatch.setenv("KERNELS_DECISION_TABLE", str(tmp_path / "local" / "decision_table.json"))
    F.reload()

    class Env:
        pass

    e = Env()
    e.tmp = tmp_path
    e.config = config
    e.results = conf_dir / "results"
    e.shipped = shipped
    yield e
    F.reload()


def the(name):
    return kernels.KERNELS[name]


def kname(k):
    return getattr(k, "name", repr(k))


# --------------------------------------------------------------------------
# decisions from this machine's results
# --------------------------------------------------------------------------


@pytest.mark.parametrize("V,D", GRID)
def test_forward_returns_the_registry_kernel_measured_fastest_at_each_grid_point(env, V, D):
    write_standard(env.results)
    got = kernels.fastest(V, D)
    assert got is the(FWD_WIN[(V, D)]), f"fastest({V}, {D}) = {kname(got)}, measured {FWD_WIN[(V, D)]}"


@pytest.mark.parametrize("V,D", GRID)
def test_backward_returns_the_registry_kernel_measured_fastest_at_each_grid_point(env, V, D):
    write_standard(env.results)
    got = kernels.fastest(V, D, backward=True)
    assert got is the(BWD_WIN[(V, D)]), (
        f"fastest({V}, {D}, backward=True) = {kname(got)}, measured {BWD_WIN[(V, D)]}"
    )


def test_load_table_names_the_results_file_it_read_as_source(env):
    path = write_standard(env.results)
    table = T.table_from_results()
    assert os.path.samefile(table["source"], path), table["source"]
    assert table["machine"] == MACHINE
    assert {(r["vocab_size"], r["dim"]) for r in table["ops"]["lookup"]} == set(GRID)
    assert {(r["vocab_size"], r["dim"]) for r in table["ops"]["lookup_grad"]} == set(GRID)
    in_use = F.load_table()["source"]
    assert in_use.startswith("local table") and path in in_use, in_use


def test_backward_without_backward_results_uses_the_forward_decisions(env):
    write_results(env.results, forward=times_for(FWD_WIN))
    for V, D in GRID:
        assert kernels.fastest(V, D, backward=True) is the(FWD_WIN[(V, D)])


def test_kernels_not_in_the_registry_are_never_returned_even_if_faster(env):
    names = ALL + ["torch_embedding"]
    fwd = times_for(FWD_WIN, kernels_=names)
    for V, D in GRID:
        fwd[("torch_embedding", V, D)] = 1e-9
    write_results(env.results, forward=fwd, kernels_=names)
    for V, D in GRID:
        assert kernels.fastest(V, D) is the(FWD_WIN[(V, D)])


@pytest.mark.parametrize("missing", [None, float("nan")], ids=["failed", "skipped"])
def test_a_kernel_without_a_measurement_is_not_chosen_the_next_fastest_is(env, missing):
    fwd = times_for(FWD_WIN)
    for V, D in GRID:
        fwd[(FWD_WIN[(V, D)], V, D)] = missing
    write_results(env.results, forward=fwd)
    for V, D in GRID:
        measured = {k: fwd[(k, V, D)] for k in ALL if k != FWD_WIN[(V, D)]}
        runner_up = min(measured, key=measured.get)
        assert kernels.fastest(V, D) is the(runner_up)


# --------------------------------------------------------------------------
# between and beyond grid points: nearest in log(V), log(row bytes)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "V,D,nearest",
    [
        (300, 8, (100, 8)),  # |log 3| = 1.10 < |log 10/3| = 1.20
        (400, 8, (1000, 8)),  # |log 4| = 1.39 > |log 2.5| = 0.92
        (300, 32, (100, 32)),
        (100, 15, (100, 8)),  # |log 15/8| = 0.63 < |log 32/15| = 0.76
        (100, 17, (100, 32)),  # |log 17/8| = 0.75 > |log 32/17| = 0.63
        (1, 1, (100, 8)),
        (10**9, 4096, (1000, 32)),
        (10**9, 8, (1000, 8)),
    ],
)
def test_between_grid_points_the_nearest_point_in_log_scale_decides(env, V, D, nearest):
    write_standard(env.results)
    assert kernels.fastest(V, D) is the(FWD_WIN[nearest])
    assert kernels.fastest(V, D, backward=True) is the(BWD_WIN[nearest])


@pytest.mark.parametrize(
    "D,dtype,nearest_D",
    [
        (16, np.float64, 32),  # 128-byte rows = float32 dim 32
        (4, np.float64, 8),  # 32-byte rows = float32 dim 8
        (14, np.float32, 8),  # 56 bytes: nearer 32 than 128
        (14, np.float64, 32),  # 112 bytes: nearer 128 than 32
        (32, np.float32, 32),
    ],
)
def test_float64_rows_count_twice_the_bytes_of_float32_rows(env, D, dtype, nearest_D):
    write_standard(env.results)
    for V in GRID_V:
        assert kernels.fastest(V, D, dtype=dtype) is the(FWD_WIN[(V, nearest_D)]), (V, D, dtype)
        assert kernels.fastest(V, D, dtype=dtype, backward=True) is the(BWD_WIN[(V, nearest_D)])


def test_numpy_integer_sizes_decide_like_python_ints(env):
    write_standard(env.results)
    for V, D in GRID:
        assert kernels.fastest(np.int64(V), np.int32(D), np.int64(1000)) is the(FWD_WIN[(V, D)])


# --------------------------------------------------------------------------
# which results file
# --------------------------------------------------------------------------


@pytest.mark.parametrize("newest_hash", ["0" * 40, "f" * 40], ids=["sorts-first", "sorts-last"])
@pytest.mark.parametrize("write_newest_first", [True, False])
def test_the_newest_commits_results_file_by_date_is_used(env, newest_hash, write_newest_first):
    older_hash = "f" * 40 if newest_hash.startswith("0") else "0" * 40
    new = dict(forward=times_for(FWD_WIN), backward=times_for(BWD_WIN), commit=newest_hash, date=DATE_NEW)
    old = dict(forward=times_for(BWD_WIN), backward=times_for(FWD_WIN), commit=older_hash, date=DATE_OLD)
    order = [new, old] if write_newest_first else [old, new]
    paths = [write_results(env.results, **kw) for kw in order]
    newest_path = paths[0] if write_newest_first else paths[1]
    if not write_newest_first:  # the newest file must not win by being the most recently written
        os.utime(newest_path, (1_000_000, 1_000_000))
    assert os.path.samefile(T.table_from_results()["source"], newest_path)
    for V, D in GRID:
        assert kernels.fastest(V, D) is the(FWD_WIN[(V, D)])
        assert kernels.fastest(V, D, backward=True) is the(BWD_WIN[(V, D)])


def test_other_machines_results_are_ignored(env):
    write_results(
        env.results, forward=times_for(BWD_WIN), machine=OTHER_MACHINE, commit="b" * 40, date=DATE_NEW * 2
    )
    assert F.load_table()["source"].startswith("shipped")
    F.reload()
    mine = write_standard(env.results, date=DATE_OLD)
    assert os.path.samefile(T.table_from_results()["source"], mine)
    for V, D in GRID:
        assert kernels.fastest(V, D) is the(FWD_WIN[(V, D)])


def test_load_table_machine_argument_reads_that_machines_results(env):
    write_standard(env.results)
    other = write_results(env.results, forward=times_for("numpy_take"), machine=OTHER_MACHINE)
    table = T.table_from_results(str(env.config), OTHER_MACHINE)
    assert os.path.samefile(table["source"], other)
    for V, D in GRID:
        assert F.decide(table, V, D).kernel.name == "numpy_take"


def test_a_newer_results_file_whose_lookup_runs_all_failed_does_not_hide_older_measurements(env):
    # asv records every benchmark as failed (result null) when a commit does not build; the
    # docstring promises "the newest commit that holds Lookup results".
    good = write_standard(env.results, commit="1" * 40, date=DATE_OLD)
    failed = {key: None for key in times_for(FWD_WIN)}
    write_results(env.results, forward=failed, backward=failed, commit="2" * 40, date=DATE_NEW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = T.table_from_results()
    assert not table["source"].startswith("shipped"), table["source"]
    assert os.path.samefile(table["source"], good)


def test_decisions_follow_new_results_after_reload(env):
    write_standard(env.results, commit="1" * 40, date=DATE_OLD)
    assert kernels.fastest(100, 8) is the(FWD_WIN[(100, 8)])
    write_results(env.results, forward=times_for("onehot_sparse"), commit="2" * 40, date=DATE_NEW)
    F.reload()
    assert kernels.fastest(100, 8) is the("onehot_sparse")


# --------------------------------------------------------------------------
# where the config comes from
# --------------------------------------------------------------------------


def test_kernels_asv_config_env_var_names_the_config(env, tmp_path, monkeypatch):
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    cfg = write_config(other_dir / "my.conf.json", "res")
    write_results(other_dir / "res", forward=times_for("numpy_take"))
    write_standard(env.results)  # the config the fixture named: must not be read now
    monkeypatch.setenv("KERNELS_ASV_CONFIG", str(cfg))
    publish()
    assert all(kernels.fastest(V, D) is the("numpy_take") for V, D in GRID)


def test_asv_conf_json_in_the_working_directory_is_used_without_the_env_var(env, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    write_config(cwd / "asv.conf.json", ".asv/results")
    write_results(cwd / ".asv" / "results", forward=times_for("cython_gather"))
    monkeypatch.delenv("KERNELS_ASV_CONFIG")
    monkeypatch.chdir(cwd)
    publish()  # the command line reads ./asv.conf.json
    assert all(kernels.fastest(V, D) is the("cython_gather") for V, D in GRID)


def test_at_run_time_the_working_directory_does_not_matter(env, tmp_path, monkeypatch):
    write_standard(env.results)
    elsewhere = tmp_path / "elsewhere-cwd"
    elsewhere.mkdir()
    write_config(elsewhere / "asv.conf.json", ".asv/results")
    write_results(elsewhere / ".asv" / "results", forward=times_for("cython_gather"),
                  publish_table=False)
    monkeypatch.chdir(elsewhere)
    F.reload()
    for V, D in GRID:
        assert kernels.fastest(V, D) is the(FWD_WIN[(V, D)])


def test_an_absolute_results_dir_in_the_config_is_honoured(env, tmp_path, monkeypatch):
    abs_dir = tmp_path / "absolute" / "results"
    cfg = write_config(tmp_path / "abs.conf.json", str(abs_dir))
    write_results(abs_dir, forward=times_for("numba_gather"))
    monkeypatch.setenv("KERNELS_ASV_CONFIG", str(cfg))
    publish()
    assert all(kernels.fastest(V, D) is the("numba_gather") for V, D in GRID)


# --------------------------------------------------------------------------
# falling back to the shipped table
# --------------------------------------------------------------------------


def _no_results_dir(env):
    pass


def _empty_results_dir(env):
    env.results.mkdir()


def _empty_machine_dir(env):
    (env.results / MACHINE).mkdir(parents=True)
    (env.results / MACHINE / "machine.json").write_text(json.dumps({"machine": MACHINE, "version": 1}))


def _results_without_lookup(env):
    write_results(env.results, backward=times_for(BWD_WIN), copy={8: 1e-6, 32: 2e-6})


def _copy_only(env):
    write_results(env.results, copy={8: 1e-6, 32: 2e-6})


def _config_file_missing(env):
    os.remove(env.config)


@pytest.mark.parametrize(
    "setup",
    [_no_results_dir, _empty_results_dir, _empty_machine_dir, _results_without_lookup, _copy_only,
     _config_file_missing],
)
def test_without_usable_results_the_shipped_table_decides(env, setup):
    setup(env)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = F.load_table()
        got = {(V, D, bw): kernels.fastest(V, D, backward=bw) for V, D in GRID for bw in (False, True)}
    assert table["source"].startswith("shipped"), table["source"]
    assert str(env.shipped) in table["source"]
    assert all(k is the(SHIPPED_WIN) for k in got.values()), {k: kname(v) for k, v in got.items()}


def _write_text(text):
    def setup(results):
        d = results / MACHINE
        d.mkdir(parents=True, exist_ok=True)
        path = d / "deadbeef-virtualenv-py3.11.json"
        path.write_text(text)
        return path

    return setup


def _valid_then(mutate):
    def setup(results):
        path = write_standard(results, publish_table=False)
        with open(path) as f:
            data = json.load(f)
        mutate(data)
        with open(path, "w") as f:
            json.dump(data, f)
        return pathlib.Path(path)

    return setup


def _count_mismatch(data):
    row = data["results"][FORWARD]
    row[data["result_columns"].index("result")].pop()


def _params_not_lists(data):
    row = data["results"][FORWARD]
    row[data["result_columns"].index("params")] = 7


def _results_null(data):
    data["results"] = None


def _results_list(data):
    data["results"] = [1, 2, 3]


def _no_result_columns(data):
    del data["result_columns"]


def _row_not_list(data):
    data["results"][FORWARD] = "oops"


def _params_block_not_dict(data):
    data["params"] = "oops"


CORRUPT = {
    "invalid-json": _write_text('{"results": {"bench_lookup.Lookup.time_lookup": [[1, '),
    "empty-file": _write_text(""),
    "json-list": _write_text("[1, 2, 3]"),
    "json-number": _write_text("42"),
    "results-count-mismatch": _valid_then(_count_mismatch),
    "params-not-lists": _valid_then(_params_not_lists),
    "results-null": _valid_then(_results_null),
    "results-a-list": _valid_then(_results_list),
    "no-result-columns": _valid_then(_no_result_columns),
    "benchmark-row-not-a-list": _valid_then(_row_not_list),
    "params-block-not-a-dict": _valid_then(_params_block_not_dict),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPT))
def test_a_corrupt_results_file_warns_naming_it_and_the_shipped_table_decides(env, corruption):
    path = CORRUPT[corruption](env.results)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        publish()
        got = {(V, D, bw): kernels.fastest(V, D, backward=bw) for V, D in GRID for bw in (False, True)}
    messages = [str(w.message) for w in caught]
    assert any(path.name in m for m in messages), (
        f"no warning naming {path.name}; warnings: {messages}"
    )
    assert all(k is the(SHIPPED_WIN) for k in got.values()), {k: kname(v) for k, v in got.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert F.load_table()["source"].startswith("shipped")


def test_a_corrupt_results_file_next_to_a_good_one_never_raises(env):
    good = write_standard(env.results, commit="1" * 40, date=DATE_OLD)
    bad_path = env.results / MACHINE / "2222222-virtualenv.json"
    with open(good) as f:
        data = json.load(f)
    data["date"] = "yesterday"  # a date that does not compare with the good file's
    bad_path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        publish()
        got = kernels.fastest(100, 8)
    assert got in (the(FWD_WIN[(100, 8)]), the(SHIPPED_WIN))


def test_a_corrupt_asv_conf_json_is_named_and_the_shipped_table_decides(env, capsys):
    write_standard(env.results, publish_table=False)
    env.config.write_text('{"results_dir": "results",,}')
    with pytest.raises(SystemExit) as exc:
        T.main(["--write-local"])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "asv config" in err and str(env.config) in err, err
    F.reload()
    got = kernels.fastest(100, 8)
    assert got is the(SHIPPED_WIN)


def test_an_inline_comment_in_asv_conf_json_is_accepted(env):
    # asv itself reads asv.conf.json as JSON5 (comments anywhere)
    write_standard(env.results, publish_table=False)
    env.config.write_text('{\n  "version": 1,\n  "results_dir": "results" // here\n}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        publish()
        assert kernels.fastest(100, 8) is the(FWD_WIN[(100, 8)])


# --------------------------------------------------------------------------
# never raises on unusual sizes
# --------------------------------------------------------------------------

ODD_SIZES = [
    dict(vocab_size=1, dim=8),
    dict(vocab_size=0, dim=8),
    dict(vocab_size=100, dim=1),
    dict(vocab_size=100, dim=0),
    dict(vocab_size=0, dim=0),
    dict(vocab_size=100, dim=8, n_ids=0),
    dict(vocab_size=100, dim=8, n_ids=1),
    dict(vocab_size=10**9, dim=8),
    dict(vocab_size=10**9, dim=10**6, n_ids=10**12),
    dict(vocab_size=100, dim=8, dtype=np.float64),
    dict(vocab_size=1, dim=0, n_ids=0, dtype=np.float64),
]


@pytest.mark.parametrize("source", ["results", "shipped"])
@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: ",".join(f"{k}={v!r}" for k, v in s.items()))
def test_unusual_sizes_never_raise_and_return_a_registry_kernel(env, source, size):
    if source == "results":
        write_standard(env.results)
    for backward in (False, True):
        k = kernels.fastest(**size, backward=backward)
        assert any(k is v for v in kernels.KERNELS.values()), k
        if source == "shipped":
            assert k is the(SHIPPED_WIN)


# --------------------------------------------------------------------------
# kernel="auto"
# --------------------------------------------------------------------------


@pytest.fixture
def spy(monkeypatch):
    """Record every call of each registry kernel's lookup / lookup_grad."""
    calls = []
    for name, k in kernels.KERNELS.items():
        for meth in ("lookup", "lookup_grad"):
            orig = getattr(k, meth)

            def wrapper(*a, _orig=orig, _name=name, _meth=meth, **kw):
                calls.append((_name, _meth))
                return _orig(*a, **kw)

            monkeypatch.setattr(k, meth, wrapper)
    return calls


@pytest.mark.parametrize("winner", ALL)
@pytest.mark.parametrize("wdtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_auto_lookup_is_bitwise_w_ids_and_runs_the_decided_kernel(env, spy, winner, wdtype):
    write_results(env.results, forward=times_for(winner), backward=times_for("numpy_take"))
    W = make_weights(1000, 32, wdtype, seed=3)
    ids = np.random.default_rng(0).integers(0, 1000, size=(7, 50))
    assert kernels.fastest(1000, 32, ids.size, wdtype) is the(winner)
    spy.clear()
    got = kernels.lookup(W, ids, kernel="auto")
    assert_bitwise_equal(got, W[ids], "lookup(kernel='auto')")
    assert spy == [(winner, "lookup")], spy


def test_auto_lookup_writes_into_out(env):
    write_results(env.results, forward=times_for("onehot_sparse"))
    W = make_weights(100, 8, np.float32)
    ids = np.array([3, 0, 99, 3])
    out = np.full((4, 8), np.nan, np.float32)
    got = kernels.lookup(W, ids, kernel="auto", out=out)
    assert got is out
    assert_bitwise_equal(out, W[ids])


@pytest.mark.parametrize("winner", ALL)
def test_auto_lookup_grad_is_the_scatter_add_and_runs_the_decided_kernel(env, spy, winner):
    write_results(env.results, forward=times_for("numpy_take"), backward=times_for(winner))
    V, D = 1000, 32
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, size=(5, 40))
    G = rng.integers(-8, 8, size=ids.shape + (D,)).astype(np.float32)  # exact sums in any order
    ref = np.zeros((V, D), np.float32)
    np.add.at(ref, ids.reshape(-1), G.reshape(-1, D))
    assert kernels.fastest(V, D, ids.size, np.float32, backward=True) is the(winner)
    spy.clear()
    got = kernels.lookup_grad(G, ids, V, kernel="auto")
    assert_bitwise_equal(got, ref, "lookup_grad(kernel='auto')")
    assert spy == [(winner, "lookup_grad")], spy


def test_auto_works_from_the_shipped_table_alone(env):
    W = make_weights(50, 4, np.float64)
    ids = np.array([[0, 49], [7, 7]])
    assert_bitwise_equal(kernels.lookup(W, ids, kernel="auto"), W[ids])
    G = np.ones((2, 2, 4))
    dW = kernels.lookup_grad(G, ids, 50, kernel="auto")
    ref = np.zeros((50, 4))
    np.add.at(ref, ids.reshape(-1), G.reshape(-1, 4))
    assert_bitwise_equal(dW, ref)


W_OK = make_weights(10, 4, np.float32)

FORWARD_ERRORS = {
    "id-too-large": lambda k: kernels.lookup(W_OK, np.array([1, 10]), kernel=k),
    "id-negative": lambda k: kernels.lookup(W_OK, np.array([[0, -1]]), kernel=k),
    "weights-1d": lambda k: kernels.lookup(np.ones(10, np.float32), np.array([1]), kernel=k),
    "weights-3d": lambda k: kernels.lookup(np.ones((2, 3, 4), np.float32), np.array([1]), kernel=k),
    "weights-0d": lambda k: kernels.lookup(np.float32(1), np.array([0]), kernel=k),
    "weights-int": lambda k: kernels.lookup(np.ones((10, 4), np.int32), np.array([1]), kernel=k),
    "ids-float": lambda k: kernels.lookup(W_OK, np.array([1.0]), kernel=k),
    "out-wrong-shape": lambda k: kernels.lookup(W_OK, np.array([1]), kernel=k, out=np.empty((2, 4), np.float32)),
    "out-wrong-dtype": lambda k: kernels.lookup(W_OK, np.array([1]), kernel=k, out=np.empty((1, 4))),
}

G_OK = np.ones((3, 4), np.float32)
IDS_OK = np.array([0, 1, 9])

BACKWARD_ERRORS = {
    "id-too-large": lambda k: kernels.lookup_grad(G_OK, np.array([0, 1, 10]), 10, kernel=k),
    "id-negative": lambda k: kernels.lookup_grad(G_OK, np.array([0, -1, 2]), 10, kernel=k),
    "vocab-negative": lambda k: kernels.lookup_grad(G_OK, IDS_OK, -1, kernel=k),
    "vocab-float": lambda k: kernels.lookup_grad(G_OK, IDS_OK, 10.0, kernel=k),
    "vocab-bool": lambda k: kernels.lookup_grad(G_OK, IDS_OK, True, kernel=k),
    "vocab-str": lambda k: kernels.lookup_grad(G_OK, IDS_OK, "10", kernel=k),
    "vocab-none": lambda k: kernels.lookup_grad(G_OK, IDS_OK, None, kernel=k),
    "grad-wrong-shape": lambda k: kernels.lookup_grad(np.ones((2, 4), np.float32), IDS_OK, 10, kernel=k),
    "grad-0d": lambda k: kernels.lookup_grad(np.float32(1), IDS_OK, 10, kernel=k),
    "grad-int": lambda k: kernels.lookup_grad(np.ones((3, 4), np.int64), IDS_OK, 10, kernel=k),
    "grad-str": lambda k: kernels.lookup_grad(np.full((3, 4), "a"), IDS_OK, 10, kernel=k),
    "grad-bytes": lambda k: kernels.lookup_grad(np.full((3, 4), b"a"), IDS_OK, 10, kernel=k),
    "grad-int-and-vocab-negative": lambda k: kernels.lookup_grad(np.ones((3, 4), np.int64), IDS_OK, -1, kernel=k),
    "ids-float": lambda k: kernels.lookup_grad(G_OK, np.array([0.0, 1.0, 2.0]), 10, kernel=k),
    "out-wrong-shape": lambda k: kernels.lookup_grad(G_OK, IDS_OK, 10, kernel=k, out=np.empty((9, 4), np.float32)),
}


@pytest.mark.parametrize("case", sorted(FORWARD_ERRORS))
def test_auto_lookup_raises_exactly_what_the_named_kernels_raise(env, case):
    write_standard(env.results)
    auto = outcome(lambda: FORWARD_ERRORS[case]("auto"))
    assert auto[0] is not None, "kernel='auto' accepted bad input"
    for name in ALL:
        assert outcome(lambda: FORWARD_ERRORS[case](name)) == auto, name


@pytest.mark.parametrize("case", sorted(BACKWARD_ERRORS))
def test_auto_lookup_grad_raises_exactly_what_the_named_kernels_raise(env, case):
    write_standard(env.results)
    auto = outcome(lambda: BACKWARD_ERRORS[case]("auto"))
    named = {name: outcome(lambda: BACKWARD_ERRORS[case](name)) for name in ALL}
    assert named["numpy_take"][0] is not None, "test bug: the case is not an error"
    for name in ALL:
        assert auto == named[name], f"auto: {auto}, {name}: {named[name]}"


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------


def _parse_cli_table(text):
    """{'forward': {(V, D): winner}, 'backward': {...}} from format_table's text."""
    out, section = {}, None
    for line in text.splitlines():
        if line.startswith("lookup_grad "):
            section = out.setdefault("backward", {})
        elif line.startswith("lookup "):
            section = out.setdefault("forward", {})
        elif line.startswith("lookup_bag"):  # the bag sections: tests/test_decisions_bags.py
            section = None
        elif section is not None:
            parts = line.split()
            if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
                key = (int(parts[0]), int(parts[1]))
                assert key not in section, f"two lines for {key}"
                section[key] = parts[2]
    return out


def test_cli_prints_the_source_file_and_one_winner_line_per_size(env, tmp_path):
    path = write_standard(env.results)
    proc = subprocess.run(
        [sys.executable, "-m", "kernels", "--config", str(env.config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert path in proc.stdout, proc.stdout
    parsed = _parse_cli_table(proc.stdout)
    assert parsed == {"forward": FWD_WIN, "backward": BWD_WIN}, proc.stdout


def test_cli_in_process_without_results_prints_the_shipped_table(env, capsys):
    T.main(["--config", str(env.config)])
    out = capsys.readouterr().out
    assert "shipped" in out and str(env.shipped) in out
    parsed = _parse_cli_table(out)
    assert parsed == {p: {g: SHIPPED_WIN for g in GRID} for p in ("forward", "backward")}


def test_write_table_writes_a_table_that_round_trips_through_load_table(env, tmp_path, monkeypatch, capsys):
    write_standard(env.results, publish_table=False)
    from_results = T.table_from_results()
    target = tmp_path / "written" / "decision_table.json"
    target.parent.mkdir()
    monkeypatch.setattr(F, "SHIPPED_TABLE", str(target))
    T.main(["--config", str(env.config), "--write-table"])
    assert str(target) in capsys.readouterr().out
    json.loads(target.read_text())  # valid JSON
    # now with no local table: the written table is the shipped one
    F.reload()
    loaded = F.load_table()
    assert loaded["source"].startswith("shipped") and str(target) in loaded["source"]
    for key in ("ops", "copy", "machine", "commit", "date"):
        assert loaded[key] == from_results[key], key
    for V, D in GRID:
        assert kernels.fastest(V, D) is the(FWD_WIN[(V, D)])
        assert kernels.fastest(V, D, backward=True) is the(BWD_WIN[(V, D)])


def test_write_table_without_results_is_a_usage_error_and_leaves_the_table_alone(env, capsys):
    before = env.shipped.read_bytes()
    with pytest.raises(SystemExit) as exc:
        T.main(["--config", str(env.config), "--write-table"])
    assert exc.value.code not in (0, None)
    assert "no asv results" in capsys.readouterr().err
    assert env.shipped.read_bytes() == before


def test_write_table_without_results_or_a_shipped_table_is_a_usage_error(env, tmp_path, monkeypatch, capsys):
    # the first `--write-table` in a fresh checkout: nothing to write from, nothing shipped yet
    missing = tmp_path / "not-yet" / "decision_table.json"
    monkeypatch.setattr(F, "SHIPPED_TABLE", str(missing))
    with pytest.raises(SystemExit) as exc:
        T.main(["--config", str(env.config), "--write-table"])
    assert exc.value.code not in (0, None)
    assert "no asv results" in capsys.readouterr().err
    assert not missing.exists()

