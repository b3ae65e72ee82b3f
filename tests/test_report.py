"""Tests of tools/report: the CDN -> local rewriting, the crossover grid, bad input.

The crossover numbers come from a real (small, fast) ``asv run`` of a toy suite with the real
suite's class / parameter names, whose timings are made far apart on purpose so that the
fastest kernel in each cell is known; edge cases use asv's own ``asv.results.Results`` API
(and ``asv.benchmarks.Benchmarks`` for the parameter names asv keeps in benchmarks.json).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

asv = pytest.importorskip("asv")

import kernels  # noqa: E402
from tools.report import crossover, grid, page, results, site, vendor  # noqa: E402

ASV_INDEX_HTML = os.path.join(os.path.dirname(asv.__file__), "www", "index.html")


def run_report(*args, cwd=ROOT, env=None):
    """``python -m tools.report ARGS`` as a user runs it; (returncode, stdout, stderr)."""
    e = dict(os.environ)
    e.update(env or {})
    e.pop("REPORT_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "tools.report", *args], cwd=cwd,
                          capture_output=True, text=True, env=e, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def sri(data: bytes, alg="sha256"):
    return f"{alg}-" + base64.b64encode(hashlib.new(alg, data).digest()).decode()


# =============================================================================================
# rewriting
# =============================================================================================

def fake_npm_cache(root, identical_urls=()):
    """A node_modules tree with a small file for every CDN asset; returns (cache, {url: bytes})."""
    cache = os.path.join(root, "npm")
    data = {}
    for url, a in vendor.CDN_ASSETS.items():
        pkg = os.path.join(cache, "node_modules", a.package)
        os.makedirs(pkg, exist_ok=True)
        with open(os.path.join(pkg, "package.json"), "w") as f:
            json.dump({"name": a.package, "version": a.version}, f)
        body = f"/* local copy of {url} */\n".encode()
        path = os.path.join(pkg, *a.path.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(body)
        for d in a.extra_dirs:
            os.makedirs(os.path.join(pkg, *d.split("/")), exist_ok=True)
            with open(os.path.join(pkg, *d.split("/"), "glyphicons-halflings-regular.woff"), "wb") as f:
                f.write(b"font")
        data[url] = body
    return cache, data


def cdn_index_html(data, identical_urls, extra=""):
    """An index.html in asv 0.6.6's form (10 CDN tags with integrity); the hashes match the
    fake local files for ``identical_urls`` and do not for the others."""
    tags = []
    for url in vendor.CDN_ASSETS:
        h = sri(data[url], "sha512") if url in identical_urls else sri(b"the CDN's file", "sha512")
        if url.endswith(".css"):
            tags.append(f'<link rel="stylesheet" href="{url}" integrity="{h}" crossorigin="anonymous">')
        else:
            tags.append(f'<script src="{url}" integrity="{h}" crossorigin="anonymous" '
                        f'referrerpolicy="no-referrer" onerror="js_load_failure()"></script>')
    return textwrap.dedent("""\
        <!doctype html><html><head>
        {tags}
        <script src="asv.js"></script>
        <link href="asv.css" rel="stylesheet" type="text/css"/>
        <!-- <script src="https://example.invalid/commented-out.js"></script> -->
        {extra}
        </head><body>
        <nav id="nav"><ul class="nav navbar-nav navbar-left">
        <li id="nav-li-regressions"><a href="#/regressions">Regressions</a></li>
        </ul></nav>
        <a href="https://github.com/airspeed-velocity/asv/"><img src="swallow.png"></a>
        </body></html>
        """).format(tags="\n".join(tags), extra=extra)


IDENTICAL = [u for u, a in vendor.CDN_ASSETS.items() if not a.note]
SUBSTITUTES = [u for u, a in vendor.CDN_ASSETS.items() if a.note]


def test_mapping_covers_asv_066_index_html():
    """Every external reference of the installed asv's own index.html has a local source."""
    with open(ASV_INDEX_HTML, encoding="utf-8") as f:
        refs = vendor.external_refs(f.read())
    assert len(refs) == 10
    assert {url for _, _, url in refs} == set(vendor.CDN_ASSETS)


def test_rewrite_cdn_tags_to_local_keeps_integrity_only_where_identical(tmp_path):
    cache, data = fake_npm_cache(str(tmp_path))
    html_dir = tmp_path / "html"
    html_dir.mkdir()
    (html_dir / "index.html").write_text(cdn_index_html(data, IDENTICAL))
    (html_dir / "error.html").write_text("<html><body><img src=\"swallow.png\"></body></html>")

    res = vendor.make_self_contained(str(html_dir), cache, npm=None, log=lambda m: None)
    assert res.self_contained
    out = (html_dir / "index.html").read_text()
    assert vendor.external_refs(out) == []
    assert "https://github.com/airspeed-velocity/asv/" in out  # an <a> link is not a load
    kept = {url: k for _, url, _, k, _ in res.changes}
    assert set(kept) == set(vendor.CDN_ASSETS)
    for url, a in vendor.CDN_ASSETS.items():
        # the local file is there, byte for byte the npm package's
        assert (html_dir / a.local_path).read_bytes() == data[url]
        tag = next(line for line in out.splitlines() if a.local_path in line)
        if url in IDENTICAL:
            assert kept[url] and f'integrity="{sri(data[url], "sha512")}"' in tag
            assert 'crossorigin="anonymous"' in tag
        else:
            assert not kept[url]
            assert "integrity=" not in tag and "crossorigin" not in tag
        if tag.startswith("<script"):
            assert 'onerror="js_load_failure()"' in tag  # the rest of the tag is untouched
    # bootstrap's css names ../fonts/glyphicons-*: the fonts are copied beside it
    assert (html_dir / "vendor/bootstrap@3.1.1/dist/fonts/glyphicons-halflings-regular.woff").exists()
    # a second run changes nothing
    before = out
    res2 = vendor.make_self_contained(str(html_dir), cache, npm=None, log=lambda m: None)
    assert res2.self_contained and res2.changes == []
    assert (html_dir / "index.html").read_text() == before


def test_integrity_follows_the_file_not_the_table(tmp_path):
    """A file the table calls identical but whose hash differs loses its integrity, and a
    'substitute' whose hash happens to match keeps it: the hash decides."""
    cache, data = fake_npm_cache(str(tmp_path))
    flip = [IDENTICAL[0], SUBSTITUTES[0]]
    identical = [u for u in IDENTICAL if u not in flip] + [SUBSTITUTES[0]]
    html_dir = tmp_path / "html"
    html_dir.mkdir()
    (html_dir / "index.html").write_text(cdn_index_html(data, identical))
    res = vendor.make_self_contained(str(html_dir), cache, npm=None, log=lambda m: None)
    kept = {url: k for _, url, _, k, _ in res.changes}
    assert kept[IDENTICAL[0]] is False
    assert kept[SUBSTITUTES[0]] is True


def test_sri_matches_like_a_browser():
    data = b"abc"
    assert vendor.sri_matches(sri(data, "sha256"), data)
    assert vendor.sri_matches(sri(data, "sha384") + "?ct=application/javascript", data)
    assert not vendor.sri_matches(sri(b"other", "sha256"), data)
    # the strongest algorithm listed decides: a matching sha256 beside a wrong sha512 fails
    assert not vendor.sri_matches(sri(data, "sha256") + " " + sri(b"x", "sha512"), data)
    assert vendor.sri_matches(sri(b"x", "sha512") + " " + sri(data, "sha512"), data)
    assert not vendor.sri_matches("", data)
    assert not vendor.sri_matches("md5-xyz", data)


def test_real_asv_page_with_real_npm_packages(tmp_path):
    """asv 0.6.6's own index.html + the real npm packages: the documented outcome (jquery,
    flot-orderbars, blueimp-md5, bootstrap js+css identical; flot and stupidtable not)."""
    if shutil.which("npm") is None:
        pytest.skip("npm not installed (apt-get install npm)")
    html_dir = tmp_path / "html"
    html_dir.mkdir()
    shutil.copy(ASV_INDEX_HTML, html_dir / "index.html")
    cache = str(tmp_path / "npm")
    res = vendor.make_self_contained(str(html_dir), cache, log=lambda m: None)
    if not res.self_contained:
        pytest.skip(f"npm packages cannot be had here: {res.warning}")
    kept = {url: k for _, url, _, k, _ in res.changes}
    assert len(kept) == 10
    assert sorted(u for u, k in kept.items() if k) == sorted(IDENTICAL)
    out = (html_dir / "index.html").read_text()
    assert vendor.external_refs(out) == []
    assert out.count("integrity=") == 5


def test_unknown_external_reference_fails_clearly(tmp_path):
    cache, data = fake_npm_cache(str(tmp_path))
    html_dir = tmp_path / "html"
    html_dir.mkdir()
    bad = "https://cdn.example.org/some-new-lib@2.0/lib.min.js"
    page = cdn_index_html(data, IDENTICAL, extra=f'<script src="{bad}"></script>\n'
                                                 '<img src="//img.example.org/logo.png">')
    (html_dir / "index.html").write_text(page)
    with pytest.raises(vendor.UnknownExternalReference) as exc:
        vendor.make_self_contained(str(html_dir), cache, npm=None, log=lambda m: None)
    assert bad in str(exc.value) and "//img.example.org/logo.png" in str(exc.value)
    assert "CDN_ASSETS" in str(exc.value)
    assert (html_dir / "index.html").read_text() == page  # nothing half-rewritten
    assert not (html_dir / "vendor").exists()


def make_project(tmp_path, results_setup=None):
    """An asv.conf.json + an asv-published-like html_dir (asv's own index.html)."""
    proj = tmp_path / "proj"
    (proj / ".asv" / "html").mkdir(parents=True)
    (proj / ".asv" / "results").mkdir(parents=True)
    (proj / "asv.conf.json").write_text(textwrap.dedent("""\
        // comments are allowed, as in the real one
        {"version": 1, "project": "p", "repo": ".", "branches": ["main"],
         "results_dir": ".asv/results", "html_dir": ".asv/html", "env_dir": ".asv/env"}
        """))
    shutil.copy(ASV_INDEX_HTML, proj / ".asv" / "html" / "index.html")
    return proj


def test_cli_unknown_cdn_exits_nonzero_naming_it(tmp_path):
    proj = make_project(tmp_path)
    index = proj / ".asv" / "html" / "index.html"
    bad = "https://unpkg.com/left-pad@1.3.0/index.js"
    index.write_text(index.read_text().replace(
        "</head>", f'<script src="{bad}" integrity="sha256-x"></script></head>'))
    cache, _ = fake_npm_cache(str(tmp_path))
    rc, out, err = run_report("--config", str(proj / "asv.conf.json"), "--npm-cache", cache,
                              "--machine", "nobody")
    assert rc == 1
    assert bad in err and "error" in err
    assert "https://code.jquery.com/jquery-3.3.1.min.js" in index.read_text()  # untouched


def test_cli_without_npm_keeps_cdn_form_and_says_what_to_install(tmp_path):
    proj = make_project(tmp_path)
    rc, out, err = run_report("--config", str(proj / "asv.conf.json"), "--npm",
                              str(tmp_path / "no-such-npm"), "--machine", "nobody")
    assert rc == 0
    assert "warning" in err and "npm" in err and "apt-get install npm" in err
    assert "npm install --prefix" in err and "jquery@3.3.1" in err
    html = (proj / ".asv" / "html" / "index.html").read_text()
    assert "https://code.jquery.com/jquery-3.3.1.min.js" in html  # still asv's CDN form
    assert 'href="crossover.html"' in html  # the link and the page are there all the same
    assert (proj / ".asv" / "html" / "crossover.html").exists()


def test_link_injection_into_asv_navbar_is_idempotent():
    with open(ASV_INDEX_HTML, encoding="utf-8") as f:
        html = f.read()
    new, how = site.inject_link(html)
    assert how == "navbar"
    assert new.count('href="crossover.html"') == 1
    # it sits in asv's own navigation list, right after "Regressions"
    assert new.index('id="nav-li-regressions"') < new.index('id="nav-li-crossover"') \
        < new.index('id="nav-li-graphdisplay"')
    again, how2 = site.inject_link(new)
    assert how2 == "already" and again == new
    other, how3 = site.inject_link("<html><body><p>x</p></body></html>")
    assert how3 == "banner" and 'href="crossover.html"' in other


# =============================================================================================
# crossover from a real small asv run
# =============================================================================================

TOY_BENCH = '''\
"""A toy suite with the real suite's names: timings are busy loops of known, far-apart cost."""
KERNELS = ["onehot_dense", "numpy_take", "numba_gather", "cython_gather"]
VOCABS = [100, 100000]
DIMS = [8, 512]
UNIT = 3000

# (vocab_size, dim) -> {kernel: cost}; the fastest is known in every cell
FWD = {
    (100, 8): {"numba_gather": 1, "numpy_take": 30, "cython_gather": 300, "onehot_dense": 300},
    (100, 512): {"cython_gather": 1, "numpy_take": 30, "numba_gather": 300, "onehot_dense": 300},
    (100000, 8): {"numpy_take": 1, "numba_gather": 30, "cython_gather": 300},
    (100000, 512): {"numba_gather": 1, "numpy_take": 30, "cython_gather": 300},
}
BW = {"numba_gather": 10.0, "numpy_take": 5.0, "cython_gather": 8.0, "onehot_dense": 1.0}


def _spin(cost):
    x = 0
    for i in range(cost * UNIT):
        x += i
    return x


class Lookup:
    params = (KERNELS, VOCABS, DIMS)
    param_names = ["kernel", "vocab_size", "dim"]

    def setup(self, kernel, vocab_size, dim):
        if kernel not in FWD[(vocab_size, dim)]:
            raise NotImplementedError("n/a at this size")
        self.cost = FWD[(vocab_size, dim)][kernel]

    def time_lookup(self, kernel, vocab_size, dim):
        _spin(self.cost)

    def track_bandwidth(self, kernel, vocab_size, dim):
        return BW[kernel]
    track_bandwidth.unit = "GB/s"


class Roofline:
    params = (DIMS,)
    param_names = ["dim"]

    def track_bandwidth(self, dim):
        return 20.0 if dim == 8 else 40.0
    track_bandwidth.unit = "GB/s"
'''

TOY_GRAD = '''\
from .bench_lookup import DIMS, KERNELS, VOCABS, _spin


class LookupGrad:
    params = (KERNELS, VOCABS, DIMS)
    param_names = ["kernel", "vocab_size", "dim"]

    def setup(self, kernel, vocab_size, dim):
        self.cost = 1 if kernel == "onehot_dense" else 30

    def time_lookup_grad(self, kernel, vocab_size, dim):
        _spin(self.cost)
'''


@pytest.fixture(scope="session")
def toy_asv_project(tmp_path_factory):
    """A git repo with the toy suite, measured by a real ``asv run --quick`` (existing env)."""
    proj = tmp_path_factory.mktemp("toyproj")
    home = tmp_path_factory.mktemp("home")  # asv machine writes ~/.asv-machine.json
    (proj / "benchmarks").mkdir()
    (proj / "benchmarks" / "__init__.py").write_text("")
    (proj / "benchmarks" / "bench_lookup.py").write_text(TOY_BENCH)
    (proj / "benchmarks" / "bench_grad.py").write_text(TOY_GRAD)
    (proj / ".gitignore").write_text(".asv/\n")
    (proj / "asv.conf.json").write_text(json.dumps({
        "version": 1, "project": "toy", "repo": ".", "branches": ["HEAD"],
        "environment_type": "virtualenv", "benchmark_dir": "benchmarks",
        "env_dir": ".asv/env", "results_dir": ".asv/results", "html_dir": ".asv/html",
        "launch_method": "spawn"}))
    env = dict(os.environ, HOME=str(home), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")

    def sh(*cmd):
        p = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{cmd} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p.stdout.strip()

    sh("git", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "toy suite")
    sha = sh("git", "rev-parse", "HEAD")
    asv_cmd = [sys.executable, "-m", "asv"]
    sh(*asv_cmd, "machine", "--yes", "--machine", "toybox")
    sh(*asv_cmd, "run", "--machine", "toybox", "--python=same", "--quick",
       "--set-commit-hash", sha, "--show-stderr")
    sh(*asv_cmd, "publish")
    return {"proj": proj, "sha": sha, "machine": "toybox"}


def _grids(toy):
    run = results.load(str(toy["proj"] / ".asv" / "results"), "toybox")
    return run, grid.compute_grids(run)


def test_crossover_from_a_real_asv_run(toy_asv_project):
    run, grids = _grids(toy_asv_project)
    assert run.commit == toy_asv_project["sha"]
    assert [g.key for g in grids] == ["bench_lookup.Lookup.time_lookup",
                                      "bench_grad.LookupGrad.time_lookup_grad"]
    fwd, bwd = grids
    assert fwd.facets == {"distribution": "uniform", "dtype": "float32"}
    assert fwd.vocab_sizes == [100, 100000] and fwd.dims == [8, 512]
    best = {vd: c.best for vd, c in fwd.cells.items()}
    assert best == {(100, 8): "numba_gather", (100, 512): "cython_gather",
                    (100000, 8): "numpy_take", (100000, 512): "numba_gather"}
    # speed-up over numpy_take: ~30x by construction (busy loops), exactly 1 where it wins
    assert fwd.cells[(100000, 8)].speedup == 1.0
    for vd in [(100, 8), (100, 512), (100000, 512)]:
        assert 5 < fwd.cells[vd].speedup < 200, (vd, fwd.cells[vd].speedup)
    # bandwidth of the fastest as % of the copy at the same dim (tracks: fixed numbers)
    assert fwd.cells[(100, 8)].bw_pct == pytest.approx(100 * 10 / 20)
    assert fwd.cells[(100, 512)].bw_pct == pytest.approx(100 * 8 / 40)
    assert fwd.cells[(100000, 8)].bw_pct == pytest.approx(100 * 5 / 20)
    # onehot_dense was n/a (NotImplementedError in setup): not a candidate, no crash
    assert "onehot_dense" not in fwd.cells[(100000, 8)].times
    # backward: no track_bandwidth in the toy LookupGrad -> derived from the fastest time and
    # LOOKUP_GRAD.moved_bytes at the lookup benchmarks' 16,384 ids
    assert all(c.best == "onehot_dense" for c in bwd.cells.values())
    assert bwd.has_bandwidth and bwd.bandwidth_from_times and not fwd.bandwidth_from_times
    grad = kernels.OPERATIONS["lookup_grad"]
    for (V, D), c in bwd.cells.items():
        assert c.bw == pytest.approx(grad.moved_bytes(16_384, V, D) / c.time / 1e9)
        roof = {8: 20, 512: 40}[D]
        assert c.bw_pct == pytest.approx(100 * c.bw / roof)


def test_cli_on_a_real_asv_run(toy_asv_project, tmp_path):
    proj = toy_asv_project["proj"]
    html_dir = proj / ".asv" / "html"
    cache, _ = fake_npm_cache(str(tmp_path))
    rc, out, err = run_report("--config", str(proj / "asv.conf.json"), "--machine", "toybox",
                              "--npm-cache", cache)
    assert rc == 0, err
    page = (html_dir / "crossover.html").read_text()
    assert "toybox" in page and toy_asv_project["sha"] in page
    assert page.count("<img class=\"grid\"") == 2
    for g in ("bench_lookup_Lookup_time_lookup", "bench_grad_LookupGrad_time_lookup_grad"):
        svg = html_dir / "crossover" / f"{g}-distribution-uniform-dtype-float32.svg"
        assert svg.exists() and svg.read_text().lstrip().startswith("<?xml")
        assert f'src="crossover/{svg.name}"' in page
    assert 'data-kernel="cython_gather"' in page
    assert vendor.external_refs(page) == []
    assert "http://" not in page and "https://" not in page
    index = (html_dir / "index.html").read_text()
    assert 'href="crossover.html"' in index and vendor.external_refs(index) == []


# =============================================================================================
# crossover edge cases, with asv's own Results API
# =============================================================================================

def write_results(results_dir, machine, commit, date, benches, started=1_700_000_000_000):
    """Save results with asv.results.Results (asv's own file format)."""
    from asv.results import Results
    r = Results({"machine": machine, "python": "3.11"}, {}, commit, date, "3.11", "env-a", {})
    for name, (params, values) in benches.items():
        r._results[name] = values
        r._benchmark_params[name] = params
        r._stats[name] = None
        r._started_at[name] = started
        r._duration[name] = 1.0
        r._benchmark_version[name] = "v"
    r.save(str(results_dir))
    with open(os.path.join(str(results_dir), machine, "machine.json"), "w") as f:
        json.dump({"machine": machine, "version": 1}, f)
    return os.path.join(str(results_dir), r._filename)


def write_benchmarks_json(results_dir, benches, param_names):
    """results_dir/benchmarks.json as `asv run` writes it (asv.benchmarks.Benchmarks.save):
    where the reader finds each benchmark's parameter names."""
    from asv.benchmarks import Benchmarks
    from asv.config import Config
    conf = Config()
    conf.results_dir = str(results_dir)
    Benchmarks(conf, [{"name": name, "params": params, "param_names": param_names[name],
                       "version": "v", "type": "time", "unit": "seconds"}
                      for name, (params, _) in benches.items()]).save()


K = ["'numpy_take'", "'numba_gather'"]


def _lookup(values, kernels=K, vocabs=("100",), dims=("8",)):
    return [list(kernels), list(vocabs), list(dims)], values


def test_newest_commit_wins_and_nan_none_are_skipped(tmp_path):
    rd = tmp_path / "results"
    write_results(rd, "m", "a" * 40, 1_000, {
        "bench_lookup.Lookup.time_lookup": _lookup([1.0, 2.0])})
    write_results(rd, "m", "b" * 40, 2_000, {
        "bench_lookup.Lookup.time_lookup": _lookup([2.0, float("nan")]),
        "bench_grad.LookupGrad.time_lookup_grad": _lookup([None, 3.0])})
    run = results.load(str(rd), "m")  # no benchmarks.json: the contract's parameter names
    assert run.commit == "b" * 40
    fwd, bwd = grid.compute_grids(run)
    assert fwd.cells[(100, 8)].best == "numpy_take" and fwd.cells[(100, 8)].speedup == 1.0
    assert bwd.cells[(100, 8)].best == "numba_gather" and bwd.cells[(100, 8)].speedup is None


def test_facets_distribution_give_one_grid_each(tmp_path):
    rd = tmp_path / "results"
    params = [K, ["'uniform'", "'zipf'"], ["100"], ["8"]]
    benches = {"bench_distribution.Distribution.time_lookup": (params, [4.0, 1.0, 1.0, 2.0])}
    write_results(rd, "m", "c" * 40, 1, benches)
    names = {"bench_distribution.Distribution.time_lookup":
             ["kernel", "distribution", "vocab_size", "dim"]}
    write_benchmarks_json(rd, benches, names)
    run = results.load(str(rd), "m")
    grids = grid.compute_grids(run)
    assert [g.facets["distribution"] for g in grids] == ["uniform", "zipf"]
    assert grids[0].facets["dtype"] == "float32"
    assert [g.cells[(100, 8)].best for g in grids] == ["numba_gather", "numpy_take"]
    assert grids[0].cells[(100, 8)].speedup == pytest.approx(4.0)


def test_table_parameter_is_split_and_grids_without_numpy_take_are_left_out(tmp_path):
    """The suite's Distribution has a `table` = (vocab_size, dim) parameter; Threads times only
    the compiled kernels (no numpy_take to compare with): no crossover grid for it."""
    rd = tmp_path / "results"
    tables = ["(10000, 64)", "(1000000, 8)"]
    benches = {
        "bench_distribution.Distribution.time_lookup": (
            [["'uniform'"], K, tables], [1.0, 3.0, 2.0, 1.0]),
        "bench_threads.Threads.time_lookup": (
            [["'numba_gather'", "'cython_gather'"], ["1", "'all'"], tables], [1.0] * 8),
    }
    write_results(rd, "m", "c" * 40, 1, benches)
    names = {"bench_distribution.Distribution.time_lookup": ["distribution", "kernel", "table"],
             "bench_threads.Threads.time_lookup": ["kernel", "threads", "table"]}
    write_benchmarks_json(rd, benches, names)
    run = results.load(str(rd), "m")
    (g,) = grid.compute_grids(run)
    assert g.key == "bench_distribution.Distribution.time_lookup"
    assert g.vocab_sizes == [10000, 1000000] and g.dims == [8, 64]
    assert g.cells[(10000, 64)].best == "numpy_take"
    assert g.cells[(1000000, 8)].best == "numba_gather"
    assert g.cells[(1000000, 8)].speedup == pytest.approx(3.0)
    assert g.cells[(10000, 8)].best is None  # not a measured point: n/a
    html = page.render_page(machine="m", grids=[g])
    assert html.count("n/a") >= 2 and vendor.external_refs(html) == []


def test_no_results_message_and_page(tmp_path):
    proj = make_project(tmp_path)
    rc, out, err = run_report("--config", str(proj / "asv.conf.json"), "--npm",
                              str(tmp_path / "no-npm"))
    assert rc == 0
    lines = [ln for ln in err.splitlines() if "crossover" in ln]
    assert len(lines) == 1 and "no asv results" in lines[0]
    page = (proj / ".asv" / "html" / "crossover.html").read_text()
    assert 'id="no-results"' in page and "No crossover to show" in page
    assert "no asv results" in page


def test_corrupt_results_message_and_page(tmp_path):
    proj = make_project(tmp_path)
    rd = proj / ".asv" / "results"
    path = write_results(rd, "m", "d" * 40, 1, {
        "bench_lookup.Lookup.time_lookup": _lookup([1.0, 2.0])})
    with open(path, "w") as f:
        f.write('{"commit_hash": "dddd", "results": {tru')
    rc, out, err = run_report("--config", str(proj / "asv.conf.json"), "--machine", "m",
                              "--npm", str(tmp_path / "no-npm"))
    assert rc == 0
    msg = [ln for ln in err.splitlines() if "corrupt results file" in ln]
    assert len(msg) == 1 and os.path.basename(path) in msg[0]
    page = (proj / ".asv" / "html" / "crossover.html").read_text()
    assert 'id="no-results"' in page and "corrupt results file" in page


@pytest.mark.parametrize("garbage", [
    "",                                  # empty file
    "\x00\x01 not json",                 # binary junk
    '{"version": 2}',                    # JSON, asv's version, no content
    '{"version": 2, "commit_hash": "x", "env_name": "e", "date": 1, "params": {}, '
    '"python": "3", "requirements": {}, "result_columns": ["result", "params"], '
    '"results": {"bench_lookup.Lookup.time_lookup": [[1.0], "not a list"]}}',
])
def test_corrupt_results_variants_never_traceback(tmp_path, garbage):
    proj = make_project(tmp_path)
    mdir = proj / ".asv" / "results" / "m"
    mdir.mkdir()
    (mdir / "machine.json").write_text('{"machine": "m", "version": 1}')
    (mdir / "0123abcd-env.json").write_text(garbage)
    rc, out, err = run_report("--config", str(proj / "asv.conf.json"), "--machine", "m",
                              "--npm", str(tmp_path / "no-npm"))
    assert rc == 0, err
    line = [ln for ln in err.splitlines() if "report: crossover:" in ln]
    assert len(line) == 1 and "0123abcd-env.json" in line[0], err
    page = (proj / ".asv" / "html" / "crossover.html").read_text()
    assert 'id="no-results"' in page and "0123abcd-env.json" in page


def test_corrupt_file_beside_a_good_one_is_named_on_the_page(tmp_path):
    rd = tmp_path / "results"
    write_results(rd, "m", "e" * 40, 1, {"bench_lookup.Lookup.time_lookup": _lookup([1.0, 2.0])})
    bad = write_results(rd, "m", "f" * 40, 2, {"bench_lookup.Lookup.time_lookup": _lookup([1.0, 2.0])})
    with open(bad, "w") as f:
        f.write("[]")  # valid JSON, not asv's format
    html_dir = tmp_path / "html"
    warnings = []
    summary = crossover.write_crossover(str(html_dir), str(rd), "m", log=lambda m: None,
                                        warn=warnings.append)
    assert summary["grids"] == 1 and summary["commit"] == "e" * 40
    assert len(warnings) == 1 and os.path.basename(bad) in warnings[0]
    page = (html_dir / "crossover.html").read_text()
    assert "corrupt results file" in page and 'class="notice"' in page


def test_missing_site_is_a_real_error(tmp_path):
    proj = make_project(tmp_path)
    os.remove(proj / ".asv" / "html" / "index.html")
    rc, out, err = run_report("--config", str(proj / "asv.conf.json"))
    assert rc == 1 and "asv publish" in err
    assert (proj / ".asv" / "html" / "crossover.html").exists()


def test_benchmark_dir_holds_asv_benchmark_modules_only():
    """asv imports every module under its benchmark_dir while discovering benchmarks: the
    command-line tools and the report live in tools/, outside it; no module left there is a
    command-line script, and there is no sub-package (benchmarks/report moved to tools/)."""
    from kernels._asv_results import read_json_file
    conf = read_json_file(os.path.join(ROOT, "asv.conf.json"), "asv config")
    bench_dir = os.path.join(ROOT, conf.get("benchmark_dir", "benchmarks"))
    tools_dir = os.path.join(ROOT, "tools")
    assert os.path.commonpath([tools_dir, bench_dir]) != bench_dir  # tools/ is not inside it
    entries = sorted(e for e in os.listdir(bench_dir) if e != "__pycache__")
    assert all(e.endswith(".py") for e in entries), entries
    for e in entries:
        with open(os.path.join(bench_dir, e), encoding="utf-8") as f:
            text = f.read()
        assert "__main__" not in text and "argparse" not in text, (
            f"benchmarks/{e} is a command-line script: it belongs in tools/")
    import tools.report
    assert os.path.dirname(tools.report.__file__) == os.path.join(ROOT, "tools", "report")


# =============================================================================================
# bags on the crossover page
# =============================================================================================

BAG_BENCH = "bench_bags.Bags.time_bag"
BAG_GRAD_BENCH = "bench_bags.BagGrad.time_bag_grad"
KB = ["'numpy_take'", "'onehot_sparse'", "'numba_gather'"]


def _bags(values):
    """(kernel x vocab_size 100, 1000 x dim 8 x bag_length 1, 8) in asv's product order."""
    return [list(KB), ["100", "1000"], ["8"], ["1", "8"]], values


# winners: bag length 1 -> numba_gather at V=100, numpy_take at V=1000; bag length 8 ->
# onehot_sparse everywhere (kernel-major order: k, V, b)
BAG_VALUES = [2.0, 3.0, 1.0, 3.0,   # numpy_take:    (100,1) (100,8) (1000,1) (1000,8)
              3.0, 1.0, 2.0, 1.0,   # onehot_sparse
              1.0, 2.0, 3.0, 2.0]   # numba_gather
BAG_WINNERS = {1: {(100, 8): "numba_gather", (1000, 8): "numpy_take"},
               8: {(100, 8): "onehot_sparse", (1000, 8): "onehot_sparse"}}


def _bag_run(rd, with_bags=True, benchmarks_json=False):
    benches = {"bench_lookup.Lookup.time_lookup": _lookup([1.0, 2.0]),
               "bench_grad.LookupGrad.time_lookup_grad": _lookup([2.0, 1.0])}
    if with_bags:
        benches[BAG_BENCH] = _bags(BAG_VALUES)
        benches[BAG_GRAD_BENCH] = _bags(BAG_VALUES[4:] + BAG_VALUES[:4])
    write_results(rd, "m", "b" * 40, 1, benches)
    if benchmarks_json:
        names = {k: ["kernel", "vocab_size", "dim"] + (["bag_length"] if "bags" in k else [])
                 for k in benches}
        write_benchmarks_json(rd, benches, names)
    return benches


@pytest.mark.parametrize("benchmarks_json", [True, False], ids=["benchmarks.json", "contract"])
def test_bag_results_give_one_grid_per_bag_length_with_its_winners(tmp_path, benchmarks_json):
    rd = tmp_path / "results"
    _bag_run(rd, benchmarks_json=benchmarks_json)
    grids = grid.compute_grids(results.load(str(rd), "m"))
    bag = [g for g in grids if g.key == BAG_BENCH]
    assert [g.facets["bag_length"] for g in bag] == [1, 8]
    for g in bag:
        assert g.winners() == BAG_WINNERS[g.facets["bag_length"]]
        assert g.vocab_sizes == [100, 1000] and g.dims == [8]
    assert [g.facets["bag_length"] for g in grids if g.key == BAG_GRAD_BENCH] == [1, 8]
    assert bag[0].cells[(100, 8)].speedup == pytest.approx(2.0)
    assert grid.unmeasured_operations(grids) == []
    # the grids come after the lookups', in the registry's order of operations
    assert [g.key for g in grids][:2] == ["bench_lookup.Lookup.time_lookup",
                                          "bench_grad.LookupGrad.time_lookup_grad"]


def test_the_page_shows_the_bag_grids_and_no_not_measured_notice(tmp_path):
    rd = tmp_path / "results"
    _bag_run(rd)
    html_dir = tmp_path / "html"
    summary = crossover.write_crossover(str(html_dir), str(rd), "m", log=lambda m: None,
                                        warn=lambda m: None)
    assert summary["grids"] == 6
    html = (html_dir / "crossover.html").read_text()
    assert 'id="not-measured"' not in html
    for b in (1, 8):
        slug = f"bench_bags_Bags_time_bag-distribution-uniform-dtype-float32-bag_length-{b}"
        assert f'id="{slug}"' in html and f"bag_length {b}" in html
        if page.matplotlib is not None:
            assert (html_dir / "crossover" / f"{slug}.svg").exists()
    section = html.split('id="bench_bags_Bags_time_bag-distribution-uniform-dtype-float32-'
                         'bag_length-8"', 1)[1].split("<h2", 1)[0]
    assert section.count('data-kernel="onehot_sparse"') == 2
    assert vendor.external_refs(html) == []


def test_peers_stand_beside_the_winner_and_never_win(tmp_path):
    """A peers run (make bench-peers) holds torch's forms beside the kernels: each cell names
    the fastest peer measured on its data and the fastest kernel's speed over it, on the page
    and in the picture; the winner is still the fastest kernel, even where a peer is faster."""
    rd = tmp_path / "results"
    benches = _bag_run(rd)
    # BagPeers: method x vocab_size 100, 1000 x dim 8 x bag_length 1, 8 (method-major)
    benches["bench_peers.BagPeers.time_bag"] = (
        [["'torch_embedding_bag'", "'fbgemm'"], ["100", "1000"], ["8"], ["1", "8"]],
        [0.5, 4.0, 6.0, None,    # torch: faster than every kernel at (100, 1)
         0.8, 8.0, 3.0, None])   # fbgemm; nothing measured at (1000, 8)
    benches["bench_peers.Peers.time_lookup"] = (
        [["'embedding'", "'index_select_out'"], ["(100, 8)"]], [4.0, 3.0])
    write_results(rd, "m", "b" * 40, 1, benches)
    names = {k: ["kernel", "vocab_size", "dim"] + (["bag_length"] if "bags" in k else [])
             for k in benches}
    names["bench_peers.BagPeers.time_bag"] = ["method", "vocab_size", "dim", "bag_length"]
    names["bench_peers.Peers.time_lookup"] = ["method", "table"]
    write_benchmarks_json(rd, benches, names)
    grids = grid.compute_grids(results.load(str(rd), "m"))
    assert not any(g.key.startswith("bench_peers.") for g in grids)
    by = {(g.key, g.facets.get("bag_length")): g for g in grids}
    one, eight = by[(BAG_BENCH, 1)], by[(BAG_BENCH, 8)]
    assert one.peer_key == "bench_peers.BagPeers.time_bag"
    assert one.winners() == BAG_WINNERS[1] and eight.winners() == BAG_WINNERS[8]
    c = one.cells[(100, 8)]
    assert c.best == "numba_gather" and c.peers == {"torch_embedding_bag": 0.5, "fbgemm": 0.8}
    assert c.best_peer == "torch_embedding_bag" and c.vs_peer == pytest.approx(0.5)
    assert one.cells[(1000, 8)].vs_peer == pytest.approx(3.0)  # fbgemm 3.0 / numpy_take 1.0
    assert eight.cells[(100, 8)].vs_peer == pytest.approx(4.0)
    assert eight.cells[(1000, 8)].peers == {} and eight.cells[(1000, 8)].vs_peer is None
    lookup = by[("bench_lookup.Lookup.time_lookup", None)]
    assert lookup.cells[(100, 8)].best_peer == "index_select_out"
    assert lookup.cells[(100, 8)].vs_peer == pytest.approx(3.0)
    assert by[("bench_grad.LookupGrad.time_lookup_grad", None)].peer_key is None

    html_dir = tmp_path / "html"
    crossover.write_crossover(str(html_dir), str(rd), "m", log=lambda m: None,
                              warn=lambda m: None)
    html = (html_dir / "crossover.html").read_text()
    section = html.split(f'id="{one.slug}"', 1)[1].split("<h2", 1)[0]
    assert "peers <code>bench_peers.BagPeers.time_bag</code>" in section
    assert 'data-peer="torch_embedding_bag">0.50x vs peer torch_embedding_bag' in section
    assert 'data-kernel="torch_embedding_bag"' not in html and vendor.external_refs(html) == []
    if page.matplotlib is not None:
        svg = (html_dir / "crossover" / f"{one.slug}.svg").read_text()
        assert "vs peer" in svg and "torch_embedding_bag" in svg


def test_a_run_without_bag_results_says_bags_were_not_measured(tmp_path):
    rd = tmp_path / "results"
    _bag_run(rd, with_bags=False)
    html_dir = tmp_path / "html"
    summary = crossover.write_crossover(str(html_dir), str(rd), "m", log=lambda m: None,
                                        warn=lambda m: None)
    assert summary["grids"] == 2
    html = (html_dir / "crossover.html").read_text()
    notice = html.split('id="not-measured"', 1)[1].split("</div>", 1)[0]
    assert "Bags were not measured" in notice
    for name, bench in (("lookup_bag", BAG_BENCH), ("lookup_bag_grad", BAG_GRAD_BENCH)):
        assert f'data-op="{name}"' in notice and bench in notice
    assert 'data-op="lookup"' not in notice and 'data-op="lookup_grad"' not in notice
    assert html.count("<table class=\"grid\">") == 2  # the lookups' grids are all still there


def test_an_unmeasured_lookup_grad_is_named_too_without_calling_it_bags(tmp_path):
    rd = tmp_path / "results"
    write_results(rd, "m", "b" * 40, 1, {"bench_lookup.Lookup.time_lookup": _lookup([1.0, 2.0])})
    run = results.load(str(rd), "m")
    grids = grid.compute_grids(run)
    assert [op.name for op in grid.unmeasured_operations(grids)] == [
        "lookup_grad", "lookup_bag", "lookup_bag_grad"]
    html = page.render_page(machine="m", grids=grids,
                            unmeasured=grid.unmeasured_operations(grids))
    assert "Not measured in this run" in html and 'data-op="lookup_grad"' in html


@pytest.mark.slow
@pytest.mark.parametrize("with_bags", [True, False], ids=["bags", "old-run"])
def test_the_bag_crossover_page_in_chromium(tmp_path, with_bags):
    """The page as a browser shows it (Debian's chromium via Playwright, as tests/test_browser.py):
    with bag results, a grid per bag length; without, the notice; no request leaves 127.0.0.1."""
    import time

    from test_browser import CHROMIUM, CHROMIUM_ARGS, IN_CI, _browser_missing, _free_port
    why = _browser_missing()
    if why:
        (pytest.fail if IN_CI else pytest.skip)(why)
    from playwright.sync_api import sync_playwright

    rd = tmp_path / "results"
    _bag_run(rd, with_bags=with_bags)
    html_dir = tmp_path / "html"
    crossover.write_crossover(str(html_dir), str(rd), "m", log=lambda m: None, warn=lambda m: None)
    (html_dir / "swallow.ico").write_bytes(b"")  # asv's icon, which the page names
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                               "--directory", str(html_dir), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    off_site, errors = [], []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.route("**/*", lambda r: r.continue_() if "//127.0.0.1:" in r.request.url
                      else (off_site.append(r.request.url), r.abort()))
            tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            for _ in range(100):  # the server needs a moment to listen
                try:
                    tab.goto(f"http://127.0.0.1:{port}/crossover.html", wait_until="load")
                    break
                except Exception:  # playwright's Error: connection refused
                    time.sleep(0.1)
            tab.wait_for_function("() => Array.from(document.images).every("
                                  "i => i.complete && (i.naturalWidth > 0))")
            headings = tab.locator("h2").all_inner_texts()
            notice = tab.locator("#not-measured")
            if with_bags:
                assert notice.count() == 0
                assert sum("bag_length" in h for h in headings) == 4, headings
                assert tab.locator("table.grid td[data-kernel]").count() == 2 + 4 * 2
            else:
                assert notice.is_visible() and "Bags were not measured" in notice.inner_text()
                assert len(headings) == 2, headings
            if page.matplotlib is not None:
                assert tab.locator("img.grid").count() == len(headings)
            tab.screenshot(path=str(tmp_path / "crossover.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert off_site == [] and errors == [], (off_site, errors)
