"""The one reader of asv results (standard library only): the config, the machine rule, the
"newest results" rule and the parameter parser that the decision-table builder
(`python -m kernels --write-local`) and the crossover page both use.

Rules:
- machine: the one named, else the one asv itself uses here (~/.asv-machine.json, else the host
  name); another machine's results are never shown or used in its place.
- newest: of that machine's readable results files holding at least one measured time, the one
  with the newest commit date, then the latest benchmark start; a failed build (no time at all)
  and a corrupt file are skipped, each with a note naming it.
- parameters: asv stores each value as its repr; `parse_param` reads it back with
  ast.literal_eval (a string that is not a literal stays a string).
Only regular files are opened, at most MAX_FILE_BYTES each; a benchmark whose parameter lists
multiply to more than MAX_COMBINATIONS points is skipped.
"""
from __future__ import annotations

import ast
import itertools
import json
import math
import os
import platform
import stat
from dataclasses import dataclass, field

MAX_FILE_BYTES = 64 * 2**20
MAX_COMBINATIONS = 100_000
_SKIP_FILES = ("machine.json", "benchmarks.json")


class ResultsError(ValueError):
    """A config or results file that cannot be used; the message names it and says why."""


class NoResults(ResultsError):
    """No usable results at all (the message says where it looked)."""


def read_json_file(path: str, what: str = "file", max_bytes: int = MAX_FILE_BYTES):
    """The JSON value of a regular file of at most max_bytes; ResultsError otherwise (a FIFO, a
    device, a huge file, bad JSON, nesting too deep to parse)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ResultsError(f"{what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ResultsError(f"{what} {path}: not a regular file")
    if st.st_size > max_bytes:
        raise ResultsError(f"{what} {path}: {st.st_size} bytes, more than the {max_bytes} read")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{what} {path}: unreadable ({e})") from None
    if len(raw) > max_bytes:
        raise ResultsError(f"{what} {path}: more than the {max_bytes} bytes read")
    if path.endswith("asv.conf.json") or what == "asv config":
        text = strip_comments(text)
    try:
        return json.loads(text)
    except RecursionError:
        raise ResultsError(f"{what} {path}: JSON nested too deeply") from None
    except ValueError as e:
        raise ResultsError(f"{what} {path}: Error parsing JSON ({e})") from None


def strip_comments(text: str) -> str:
    """JSON text without // comments (whole-line or trailing; not inside strings), as asv
    accepts them in asv.conf.json."""
    out = []
    for line in text.splitlines():
        in_str = esc = False
        for i, ch in enumerate(line):
            if in_str:
                esc = (ch == "\\") and not esc
                if ch == '"' and not esc:
                    in_str = False
            elif ch == '"':
                in_str = True
            elif line.startswith("//", i):
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def read_config(path: str) -> dict:
    """{"results_dir", "html_dir"} of an asv.conf.json, absolute (relative to the config)."""
    conf = read_json_file(path, "asv config")
    if not isinstance(conf, dict):
        raise ResultsError(f"asv config {path}: a JSON {type(conf).__name__}, not an object")
    base = os.path.dirname(os.path.abspath(path))
    out = {}
    for key, default in (("results_dir", "results"), ("html_dir", "html")):
        value = conf.get(key, default)
        if not isinstance(value, str) or not value:
            raise ResultsError(f"asv config {path}: {key} is {value!r}, not a path")
        out[key] = os.path.normpath(os.path.join(base, value))
    return out


def this_machine_name() -> str:
    """The machine name asv itself uses here (`asv machine` / ~/.asv-machine.json)."""
    node = platform.node()
    try:
        d = read_json_file(os.path.expanduser("~/.asv-machine.json"), "asv machine file", 2**20)
        d = {k: v for k, v in d.items() if k != "version" and isinstance(v, dict)}
        if node in d:
            return str(d[node].get("machine", node))
        if len(d) == 1:
            return str(next(iter(d.values())).get("machine", node))
    except (ResultsError, AttributeError):
        pass
    return node


def parse_param(s):
    """A parameter value as asv stores it (its repr) back as a value: "'numba_gather'" ->
    'numba_gather', "(1000, 64)" -> (1000, 64); a string that is no literal stays as it is."""
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return s


def is_time(value) -> bool:
    """Whether a result value is a measured quantity (a positive finite number; not null, NaN or
    a failure)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


@dataclass
class Run:
    """One asv results file: one commit of one machine in one environment."""

    machine: str
    path: str
    commit: str
    date: float  # commit date, ms since the epoch (asv's JavaScript timestamp)
    started: float  # the latest benchmark start in the file, ms
    env_name: str
    data: dict
    param_names: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def benchmarks(self) -> list[str]:
        return sorted(self.data["results"])

    def records(self, key: str):
        """(param_names, [(params dict, value)]) of one benchmark, or None if it is absent or
        unusable (malformed, or more than MAX_COMBINATIONS points). Values that are not
        measured (failed, n/a) are kept as None."""
        row = self.data["results"].get(key)
        columns = self.data["result_columns"]
        if not isinstance(row, list) or "result" not in columns or "params" not in columns:
            return None
        ri, pi = columns.index("result"), columns.index("params")
        if max(ri, pi) >= len(row):
            return None
        result, params = row[ri], row[pi]
        if params is None:
            params = []
        if not isinstance(params, list) or not all(isinstance(p, list) for p in params):
            return None
        if math.prod(len(p) for p in params) > MAX_COMBINATIONS:
            return None
        if result is None:
            return None
        if not isinstance(result, list):
            result = [result]
        names = self.param_names.get(key)
        if names is None or len(names) != len(params):
            names = [f"param{i}" for i in range(len(params))]
        combos = list(itertools.product(*[[parse_param(v) for v in p] for p in params]))
        if len(combos) != len(result):
            return None
        return list(names), [
            (dict(zip(names, c)), v if is_time(v) else None) for c, v in zip(combos, result)
        ]

    def points(self, key: str) -> dict:
        """{params tuple: value} of the measured points of one benchmark (empty if none)."""
        r = self.records(key)
        if r is None:
            return {}
        names, recs = r
        return {tuple(p[n] for n in names): v for p, v in recs if v is not None}


def _result_files(machine_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(machine_dir))
    except OSError:
        return []
    return [os.path.join(machine_dir, f) for f in names
            if f.endswith(".json") and f not in _SKIP_FILES]


def machines_with_results(results_dir: str) -> list[str]:
    """Names of the machine folders of results_dir that hold at least one results file."""
    try:
        names = sorted(os.listdir(results_dir))
    except OSError:
        return []
    return [n for n in names
            if os.path.isdir(os.path.join(results_dir, n))
            and _result_files(os.path.join(results_dir, n))]


def load_param_names(results_dir: str) -> dict:
    """Benchmark name -> param_names, from the benchmarks.json that `asv run` writes."""
    try:
        d = read_json_file(os.path.join(results_dir, "benchmarks.json"), "benchmarks file")
    except ResultsError:
        return {}
    if not isinstance(d, dict):
        return {}
    return {k: list(b["param_names"]) for k, b in d.items()
            if isinstance(b, dict) and isinstance(b.get("param_names"), list)}


def load_run(path: str, machine: str, param_names: dict | None = None) -> Run:
    """One results file as a Run; ResultsError with a one-line reason if it is not usable."""
    data = read_json_file(path, "results file")
    if not isinstance(data, dict):
        raise ResultsError(f"results file {path}: a JSON {type(data).__name__}, not an object")
    results, columns = data.get("results"), data.get("result_columns")
    if not isinstance(results, dict):
        raise ResultsError(f"results file {path}: no 'results' mapping")
    if not isinstance(columns, list) or "result" not in columns:
        raise ResultsError(f"results file {path}: no 'result_columns' list with 'result'")
    if not isinstance(data.get("params"), dict):
        raise ResultsError(f"results file {path}: 'params' is not a mapping")
    commit = data.get("commit_hash")
    if not isinstance(commit, str) or not commit:
        raise ResultsError(f"results file {path}: no commit_hash")
    date = data.get("date") or 0
    if not is_time(date) and date != 0:
        raise ResultsError(f"results file {path}: 'date' is {date!r}, not a timestamp")
    if any(not isinstance(row, list) for row in results.values()):
        raise ResultsError(f"results file {path}: a benchmark's results are not a list")
    started = 0.0
    if "started_at" in columns:
        si = columns.index("started_at")
        started = max((row[si] for row in results.values()
                       if len(row) > si and is_time(row[si])), default=0.0)
    return Run(machine, path, commit, float(date), float(started),
               str(data.get("env_name", "?")), data, dict(param_names or {}))


def _has_measurement(run: Run) -> bool:
    ri = run.data["result_columns"].index("result")
    for row in run.data["results"].values():
        value = row[ri] if len(row) > ri else None
        values = value if isinstance(value, list) else [value]
        if any(is_time(v) for v in values):
            return True
    return False


def choose_machine(results_dir: str, machine: str | None = None) -> tuple[str, list]:
    """(machine, notes): the machine named, else asv's own name for this one. Results of other
    machines are never used in its place (NoResults names the machines that have some)."""
    if not os.path.isdir(results_dir):
        raise NoResults(f"no asv results: results_dir {results_dir} does not exist "
                        f"(run `asv run` first)")
    wanted = machine or this_machine_name()
    machines = machines_with_results(results_dir)
    if wanted not in machines:
        others = f" (results exist for: {', '.join(machines)})" if machines else ""
        raise NoResults(f"no asv results for machine '{wanted}' in {results_dir}{others}")
    return wanted, []


def latest_run(results_dir: str, machine: str | None = None) -> Run:
    """The newest usable results file of the machine (see the module docstring). Its notes
    name every file skipped and why. NoResults when there is none."""
    machine, notes = choose_machine(results_dir, machine)
    names = load_param_names(results_dir)
    good = []
    for p in _result_files(os.path.join(results_dir, machine)):
        try:
            run = load_run(p, machine, names)
        except ResultsError as e:  # its message starts "results file <path>: "
            notes.append(f"corrupt {e}")
            continue
        if not _has_measurement(run):
            notes.append(f"results file {p}: no measured time (a failed build?); skipped")
            continue
        good.append(run)
    if not good:
        raise NoResults("; ".join(notes) if notes else
                        f"no asv results for machine '{machine}' in {results_dir}")
    run = max(good, key=lambda r: (r.date, r.started, r.path))
    run.notes = notes
    return run
