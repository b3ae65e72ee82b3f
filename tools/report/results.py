"""The crossover page's input: the newest usable asv results of a machine, read by
kernels._asv_results (the one reader, which `python -m kernels` uses too: same machine rule,
same "newest results" rule, same parameter parser), and one benchmark's records in the form the
grid wants.

What the page adds to the reader:
- parameter names of the suite's contract benchmarks when results_dir/benchmarks.json (written
  by `asv run`) is missing or unreadable (CONTRACT_PARAM_NAMES);
- a `table` parameter whose values are (vocab_size, dim) pairs (the suite's benchmarks that do
  not sweep the whole grid) is split into `vocab_size` and `dim`.
"""
from __future__ import annotations

from kernels import OPERATIONS
from kernels._decision_table import COPY_BENCHMARK, benchmark_params
from kernels._asv_results import (
    NoResults,
    ResultsError,
    Run,
    is_time,
    latest_run,
    read_config,
    this_machine_name,
)

__all__ = ["NoResults", "ResultsError", "Run", "CONTRACT_PARAM_NAMES", "load", "records",
           "is_time", "read_config", "this_machine_name"]

CONTRACT_PARAM_NAMES = {
    **{op.benchmark.rsplit(".", 1)[0]: benchmark_params(op) for op in OPERATIONS.values()},
    COPY_BENCHMARK.rsplit(".", 1)[0]: ["dim"],
}
"""Used only for benchmarks that results_dir/benchmarks.json does not name."""


def load(results_dir: str, machine: str | None = None) -> Run:
    """The Run of the newest usable results file of `machine` (default: asv's own name for
    this machine; never another machine's). NoResults with a one-line reason when there is
    none; run.notes name every file skipped."""
    run = latest_run(results_dir, machine)
    for key in run.benchmarks():
        names = CONTRACT_PARAM_NAMES.get(key.rsplit(".", 1)[0])
        if key not in run.param_names and names is not None:
            run.param_names[key] = list(names)
    return run


def records(run: Run, key: str):
    """(param_names, [(params dict, value or None)]) of benchmark `key`, or None when it is
    absent, unusable, has no parameters or no known parameter names. None values: not measured
    (failed, n/a, NaN)."""
    r = run.records(key)
    if r is None:
        return None
    names, recs = r
    if not names or run.param_names.get(key) != names:
        return None
    if ("table" in names and "vocab_size" not in names and "dim" not in names
            and all(isinstance(p["table"], tuple) and len(p["table"]) == 2 for p, _ in recs)):
        names = [n for n in names if n != "table"] + ["vocab_size", "dim"]
        for p, _ in recs:
            p["vocab_size"], p["dim"] = p.pop("table")
    return names, recs
