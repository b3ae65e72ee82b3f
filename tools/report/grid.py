"""The crossover grids: which kernel is fastest where, computed from one asv results file.

For every timing benchmark whose parameters include ``kernel``, ``vocab_size`` and ``dim``
(the operations' benchmarks, ``Lookup.time_lookup``: forward, ``LookupGrad.time_lookup_grad``:
backward; ``Bags.time_bag`` and ``BagGrad.time_bag_grad``: bags, one grid per bag_length;
``Distribution``'s timings: forward by id distribution ...) and that times the reference
kernel, and for every value of its other parameters (distribution, dtype, bag_length ...), each
(vocab_size, dim) cell names

* the fastest kernel (smallest time),
* its speed-up over REFERENCE_KERNEL (time of the reference / time of the fastest),
* its bandwidth (the same class's ``track_bandwidth``, GB/s; for an operation's benchmark
  without one, such as ``LookupGrad``'s since `make bench` had to fit its budget, the
  operation's ``moved_bytes`` at DEFAULT_N_IDS ids over the fastest time) as a % of the plain
  copy (``Roofline.track_bandwidth`` at the same dim: same byte formula),
* where peers were measured on the same data (PEER_BENCHMARKS: torch's and FBGEMM's forms,
  ``make bench-peers``), the fastest peer and the fastest kernel's speed-up over it.
"""
from __future__ import annotations

import dataclasses

from kernels import OPERATIONS
from kernels._decision_table import COPY_BENCHMARK
from kernels.decisions import DEFAULT_N_IDS

from .results import Run, is_time, records

REFERENCE_KERNEL = "numpy_take"
"""The kernel every speed-up is measured against (plain NumPy); a benchmark that does not time
it has no crossover grid."""

AXIS_PARAMS = ("kernel", "vocab_size", "dim")

_UNIFORM_FLOAT32 = {"distribution": "uniform", "dtype": "float32"}
KNOWN_PASSES = {
    # benchmark name -> (title, defaults for facets the benchmark does not vary)
    **{op.benchmark: (op.title, dict(_UNIFORM_FLOAT32)) for op in OPERATIONS.values()},
    "bench_distribution.Distribution.time_lookup": ("Forward: W[ids], by id distribution",
                                                    {"dtype": "float32"}),
}
"""Titles of the operations' benchmarks (the registry's) and of the suite's other contract
benchmarks, in the order the page shows them; others get a title from their name."""

_FACET_ORDER = ["distribution", "dtype"]

PEER_BENCHMARKS = {
    "bench_lookup.Lookup.time_lookup": "bench_peers.Peers.time_lookup",
    "bench_bags.Bags.time_bag": "bench_peers.BagPeers.time_bag",
}
"""Kernel benchmark -> the benchmark timing peers (torch's forms, FBGEMM's; measured by `make
bench-peers`) on the same data, each peer a value of its PEER_PARAM. A cell shows the fastest
peer beside the fastest kernel; a peer is never the cell's winner (kernel="auto" chooses among
this package's kernels)."""
PEER_PARAM = "method"


@dataclasses.dataclass
class Cell:
    vocab_size: object
    dim: object
    best: str | None = None
    time: float | None = None
    speedup: float | None = None  # REFERENCE_KERNEL's time / best time
    bw: float | None = None  # GB/s of the best kernel
    bw_pct: float | None = None  # % of the Roofline copy at the same dim
    times: dict = dataclasses.field(default_factory=dict)
    peers: dict = dataclasses.field(default_factory=dict)  # peer name -> time

    @property
    def best_peer(self) -> str | None:
        return min(self.peers, key=self.peers.get) if self.peers else None

    @property
    def vs_peer(self) -> float | None:
        """The fastest peer's time / the fastest kernel's (> 1: the kernel is faster)."""
        if not self.peers or self.time is None:
            return None
        return self.peers[self.best_peer] / self.time


@dataclasses.dataclass
class Grid:
    key: str
    title: str
    facets: dict  # e.g. {"distribution": "zipf", "dtype": "float32"}
    vocab_sizes: list
    dims: list
    kernels: list
    cells: dict  # (vocab_size, dim) -> Cell
    has_bandwidth: bool
    has_roofline: bool
    peer_key: str | None = None  # the peers' benchmark, when the results hold it
    bandwidth_from_times: bool = False  # bandwidth = moved bytes / the fastest time (no tracks)

    @property
    def label(self) -> str:
        f = ", ".join(f"{k} {v}" for k, v in self.facets.items())
        return f"{self.title}" + (f" ({f})" if f else "")

    @property
    def measured(self) -> bool:
        return any(c.best for c in self.cells.values())

    @property
    def slug(self) -> str:
        s = self.key + "".join(f"-{k}-{v}" for k, v in self.facets.items())
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)

    def winners(self) -> dict:
        """{(vocab_size, dim): fastest kernel} of the measured cells."""
        return {vd: c.best for vd, c in self.cells.items() if c.best}


def _title_for(key: str):
    if key in KNOWN_PASSES:
        return KNOWN_PASSES[key]
    cls_meth = ".".join(key.split(".")[-2:])
    direction = "Backward" if "grad" in key.lower() else "Forward"
    defaults = {"dtype": "float32"} if key.startswith("bench_distribution.") else {}
    return f"{direction}: {cls_meth}", defaults


def _key(p: dict, names) -> tuple:
    return tuple((n, p.get(n)) for n in names)


def _ordered(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out):
        out.sort()
    return out


def _roofline(run: Run):
    """(param_names, {key: GB/s}) of the copy ceiling (Roofline.track_bandwidth), or None."""
    keys = [k for k in run.benchmarks() if k.endswith(".Roofline.track_bandwidth")]
    keys.sort(key=lambda k: (k != COPY_BENCHMARK.rsplit(".", 1)[0] + ".track_bandwidth", k))
    for k in keys:
        r = records(run, k)
        if r is not None:
            pn, recs = r
            return pn, {_key(p, pn): v for p, v in recs}
    return None


def is_crossover_benchmark(key: str, pn, recs) -> bool:
    """A timing over kernels that include the reference kernel, at (vocab_size, dim) points."""
    return (key.split(".")[-1].startswith("time_")
            and set(AXIS_PARAMS) <= set(pn)
            and any(p["kernel"] == REFERENCE_KERNEL for p, _ in recs))


def unmeasured_operations(grids) -> list:
    """The operations (kernels.OPERATIONS) whose benchmark has no measured grid: not in the
    results file at all (a run from before the operation existed) or nothing measured."""
    measured = {g.key for g in grids if g.measured}
    return [op for op in OPERATIONS.values() if op.benchmark not in measured]


def _peer_times(run: Run, key: str):
    """(peers' benchmark, its parameters but the peer's name, {their values as _key pairs:
    {peer: time}}) of kernel benchmark `key`, or (None, [], {}) when it has no peers or the
    results hold none measured."""
    peer_key = PEER_BENCHMARKS.get(key)
    r = records(run, peer_key) if peer_key else None
    if r is None or PEER_PARAM not in r[0]:
        return None, [], {}
    pn, recs = r
    names = [n for n in pn if n != PEER_PARAM]
    by = {}
    for p, v in recs:
        if is_time(v):
            by.setdefault(_key(p, names), {})[p[PEER_PARAM]] = v
    return (peer_key, names, by) if by else (None, [], {})


def _derived_bytes(key):
    """(V, D) -> bytes one call moves, for the benchmark of an operation timed at DEFAULT_N_IDS
    ids (no extra parameter: lookup, lookup_grad), else None."""
    for op in OPERATIONS.values():
        if op.benchmark == key and op.extra_param is None:
            return lambda V, D: op.moved_bytes(DEFAULT_N_IDS, V, D)
    return None


def compute_grids(run: Run) -> list[Grid]:
    """One Grid per (timing benchmark over kernel x vocab_size x dim, facet values)."""
    grids = []
    roof = _roofline(run)
    keys = sorted(run.benchmarks(),
                  key=lambda k: (list(KNOWN_PASSES).index(k) if k in KNOWN_PASSES else 99, k))
    for key in keys:
        r = records(run, key)
        if r is None or not is_crossover_benchmark(key, *r):
            continue
        pn, recs = r
        times = {_key(p, pn): v for p, v in recs}
        bw_r = records(run, key.rsplit(".", 1)[0] + ".track_bandwidth")
        bw = {_key(p, bw_r[0]): v for p, v in bw_r[1]} if bw_r and bw_r[0] == pn else {}
        derive = None if bw else _derived_bytes(key)
        title, defaults = _title_for(key)
        facet_names = [n for n in pn if n not in AXIS_PARAMS]
        kernels = _ordered(p["kernel"] for p, _ in recs)
        vocabs = _ordered(p["vocab_size"] for p, _ in recs)
        dims = _ordered(p["dim"] for p, _ in recs)
        peer_key, peer_names, peer_times = _peer_times(run, key)
        for fv in _ordered(tuple(p[n] for n in facet_names) for p, _ in recs):
            facets = dict(defaults)
            facets.update(zip(facet_names, fv))
            facets = dict(sorted(facets.items(), key=lambda kv: _FACET_ORDER.index(kv[0])
                                 if kv[0] in _FACET_ORDER else 9))
            cells = {}
            for V in vocabs:
                for D in dims:
                    cell = Cell(V, D)
                    base = dict(zip(facet_names, fv), vocab_size=V, dim=D)
                    for k in kernels:
                        v = times.get(_key(dict(base, kernel=k), pn))
                        if is_time(v):
                            cell.times[k] = v
                    if peer_times:
                        cell.peers = dict(peer_times.get(_key(base, peer_names), {}))
                    if cell.times:
                        cell.best = min(cell.times, key=cell.times.get)
                        cell.time = cell.times[cell.best]
                        ref = cell.times.get(REFERENCE_KERNEL)
                        if ref is not None:
                            cell.speedup = ref / cell.time
                        b = bw.get(_key(dict(base, kernel=cell.best), pn))
                        if b is None and derive is not None and cell.time > 0:
                            b = derive(V, D) / cell.time / 1e9
                        if is_time(b):
                            cell.bw = b
                            if roof is not None and set(roof[0]) <= set(base):
                                c = roof[1].get(_key(base, roof[0]))
                                if is_time(c):
                                    cell.bw_pct = 100.0 * b / c
                    cells[(V, D)] = cell
            grids.append(Grid(key, title, facets, vocabs, dims, kernels, cells,
                              has_bandwidth=bool(bw) or derive is not None,
                              has_roofline=roof is not None,
                              peer_key=peer_key, bandwidth_from_times=derive is not None))
    return grids
