"""The published asv report in a real headless browser (Debian's chromium, driven by Playwright).

A session fixture makes a real report: a throwaway clone of this repository (at HEAD, plus the
working tree's uncommitted files committed on top, so that what is tested is what is in front
of you; in CI's fresh clone that adds nothing), a small real ``asv run --quick`` (Lookup at
dims 8 and 128 over every kernel and vocab_size, and the Roofline), ``asv publish``, then
``python -m tools.report``. asv runs the suite in this interpreter (``--python=same``, results
saved under the clone's HEAD), on the package it imports (``make venv``'s editable install of
this working tree): building asv's own virtualenv compiled the Cython extensions a second
time, 100-200 s of a 2-core CI run's ~11 minutes. ``make bench`` builds that virtualenv.  The site is served on 127.0.0.1 by ``python -m http.server``
(the page fetches JSON: file:// cannot work) and every request that is not to 127.0.0.1 is
aborted and recorded.

Each page must load with 0 blocked requests, 0 console errors, 0 failed requests, and each
graph must have drawn data.  Screenshots go to .asv/screenshots/ (REPORT_SCREENSHOT_DIR);
`make screenshots` runs this test on the report of the last `make bench` (REPORT_HTML_DIR) and
saves them to docs/screenshots/ for the README.  Per-page load times are printed at the end.

Needs: ``apt-get install chromium`` and ``pip install playwright`` (the Python package ships
its driver; never run ``playwright install``: the browser used is /usr/bin/chromium).  Without
them the tests skip -- unless CI=true, where a missing browser is a failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_DIR = os.environ.get("REPORT_SCREENSHOT_DIR",
                                os.path.join(ROOT, ".asv", "screenshots"))
"""Where the page screenshots go; `make screenshots` points it at docs/screenshots/."""
EXISTING_HTML_DIR = os.environ.get("REPORT_HTML_DIR")
"""A report already published (e.g. by `make bench`) to test instead of making a small one."""
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")

BENCH = [
    # every kernel and vocab_size, dims 8 and 128 only: ~25 s of benchmarks on 2 vCPUs
    r"^bench_lookup\.Lookup\.(time_lookup|peakmem_lookup|track_bandwidth)\('[a-z_]+', [0-9]+, (8|128)\)$",
    r"^bench_lookup\.Roofline\.track_bandwidth",
]

TIMINGS: list = []  # (what, seconds)


def _browser_missing() -> str | None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright (pip install playwright; it ships its "
                       "driver: do NOT run `playwright install`)")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"{CHROMIUM} (apt-get update && apt-get install -y chromium)")
    if missing:
        return "headless browser test needs " + " and ".join(missing)
    return None


@pytest.fixture(scope="session")
def browser_ok():
    why = _browser_missing()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)


def _sh(cmd, cwd, timeout=900, env=None):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=env or dict(os.environ))
    if p.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed (exit {p.returncode}) in {cwd}:\n"
                    f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}", pytrace=False)
    return p, time.perf_counter() - t0


def _clone_with_working_tree(dest):
    _sh(["git", "clone", "-q", ROOT, dest], cwd=ROOT, timeout=300)
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    # files of the cloned HEAD that the working tree no longer has: deleted or moved, whether
    # the deletion is staged (git rm, git mv) or not
    committed = subprocess.run(["git", "ls-files", "-z"], cwd=dest, capture_output=True,
                               text=True, check=True).stdout.split("\0")
    deleted = [rel for rel in filter(None, committed)
               if not os.path.lexists(os.path.join(ROOT, rel))]
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    for rel in deleted:
        if os.path.exists(os.path.join(dest, rel)):
            os.remove(os.path.join(dest, rel))
    _sh(["git", "add", "-A"], cwd=dest)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=dest).returncode != 0:
        _sh(["git", "-c", "user.name=browser-test", "-c", "user.email=browser-test@invalid",
             "commit", "-qm", "working tree (throwaway, for the browser test)"], cwd=dest)


def _first_param_sets(benchmarks_json):
    """asv --bench regexes: the first parameter set of every benchmark BENCH leaves out."""
    with open(benchmarks_json, encoding="utf-8") as f:
        benchmarks = json.load(f)
    out = []
    for name, b in sorted(benchmarks.items()):
        if not isinstance(b, dict) or any(re.search(r.split(r"\(")[0], name) for r in BENCH):
            continue
        params = b.get("params") or []
        if params:
            out.append("^" + re.escape(f"{name}({', '.join(v[0] for v in params)})") + "$")
        else:
            out.append("^" + re.escape(name) + "$")
    return out


@pytest.fixture(scope="session")
def published_site(browser_ok, tmp_path_factory):
    """html_dir of a report made from a real small asv run in a throwaway clone."""
    if EXISTING_HTML_DIR:
        assert os.path.isfile(os.path.join(EXISTING_HTML_DIR, "crossover.html")), (
            f"REPORT_HTML_DIR={EXISTING_HTML_DIR} holds no published report with crossover.html")
        return EXISTING_HTML_DIR
    return _publish(str(tmp_path_factory.mktemp("browser") / "repo"))


def _publish(repo):
    t0 = time.perf_counter()
    _clone_with_working_tree(repo)
    TIMINGS.append(("setup: clone", time.perf_counter() - t0))
    asv = [sys.executable, "-m", "asv"]
    _sh(asv + ["machine", "--yes"], cwd=repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    run = asv + ["run", "--python=same", "--set-commit-hash", head, "--quick", "--show-stderr"]
    bench = [a for b in BENCH for a in ("--bench", b)]
    p, dt = _sh(run + bench, cwd=repo)
    TIMINGS.append(("setup: asv run --quick (Lookup/Roofline subset)", dt))
    # asv's front page asks for a summary graph of every benchmark of the suite (404 for one
    # never run): run the first parameter set of each of the others too
    rest = _first_param_sets(os.path.join(repo, ".asv", "results", "benchmarks.json"))
    if rest:
        _, dt = _sh(run + [a for b in rest for a in ("--bench", b)], cwd=repo)
        TIMINGS.append((f"setup: asv run --quick (first parameter set of {len(rest)} more)", dt))
    _, dt = _sh(asv + ["publish"], cwd=repo)
    TIMINGS.append(("setup: asv publish", dt))
    p, dt = _sh([sys.executable, "-m", "tools.report"], cwd=repo, timeout=600)
    TIMINGS.append(("setup: python -m tools.report", dt))
    assert "self-contained" in p.stdout, (
        f"the report is not self-contained (npm missing?):\n{p.stdout}\n{p.stderr}")
    html_dir = os.path.join(repo, ".asv", "html")
    assert os.path.isfile(os.path.join(html_dir, "crossover.html"))
    return html_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(published_site):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                             "--directory", published_site, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(base + "index.html", timeout=2).read()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("python -m http.server did not come up", pytrace=False)
            time.sleep(0.1)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Recorder:
    """Everything a page did wrong: requests off 127.0.0.1, console errors, failed requests."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.blocked, self.console_errors, self.failed = [], [], []

    def route(self, route):
        u = urlsplit(route.request.url)
        if u.scheme in ("http", "https") and u.hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def console(self, msg):
        if msg.type == "error":
            self.console_errors.append(f"{msg.text} @ {msg.location}")

    def pageerror(self, exc):
        self.console_errors.append(f"uncaught: {exc}")

    def requestfailed(self, req):
        self.failed.append(f"{req.url}: {req.failure}")

    def response(self, resp):
        if resp.status >= 400:
            self.failed.append(f"{resp.url}: HTTP {resp.status}")

    def assert_clean(self, what):
        assert self.blocked == [], f"{what}: requests off 127.0.0.1 (blocked): {self.blocked}"
        assert self.console_errors == [], f"{what}: console errors: {self.console_errors}"
        assert self.failed == [], f"{what}: failed requests: {self.failed}"


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory, request):
    from playwright.sync_api import sync_playwright

    rec = Recorder()
    os.makedirs(SCREENSHOT_DIR, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data dir
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900}, service_workers="block")
        ctx.route("**/*", rec.route)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.on("console", rec.console)
        page.on("pageerror", rec.pageerror)
        page.on("requestfailed", rec.requestfailed)
        page.on("response", rec.response)
        page.set_default_timeout(30_000)
        yield page, rec, server
        ctx.close()
    _print_timings(request)


def _print_timings(request):
    lines = ["", "browser test timings (s):"]
    lines += [f"  {sec:7.2f}  {what}" for what, sec in TIMINGS]
    lines.append(f"  screenshots: {SCREENSHOT_DIR}")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if capman is not None and reporter is not None:
        with capman.global_and_fixture_disabled():
            for line in lines:
                reporter.write_line(line)
    else:
        print("\n".join(lines))


def visit(browser, path, ready_js, name, shot=True):
    """Go to ``path``, wait until ``ready_js`` is true, screenshot; return (page, rec)."""
    page, rec, base = browser
    page.goto("about:blank")  # every page is a cold load of its URL, not a hash change
    rec.reset()
    t0 = time.perf_counter()
    page.goto(base + path, wait_until="load")
    page.wait_for_function(ready_js, timeout=30_000)
    page.wait_for_load_state("networkidle")
    dt = time.perf_counter() - t0
    TIMINGS.append((f"page: {name} ({path})", dt))
    if shot:
        page.screenshot(path=os.path.join(SCREENSHOT_DIR, f"{name}.png"))
    return page, rec


GRAPH_READY = """() => {
    if (!window.jQuery) return false;
    var p = jQuery('#main-graph').data('plot');
    if (!p) return false;
    return p.getData().some(function (s) {
        return s.data.some(function (pt) { return pt && pt[1] !== null && !isNaN(pt[1]); });
    });
}"""

GRAPH_INFO = """() => {
    var p = jQuery('#main-graph').data('plot');
    var series = p.getData().map(function (s) {
        return s.data.filter(function (pt) { return pt && pt[1] !== null && !isNaN(pt[1]); }).length;
    });
    return {series: series, xlabel: p.getOptions().xaxes[0].axisLabel || null,
            title: jQuery('#title').text().trim()};
}"""


def check_graph(browser, bench, name, x_axis="vocab_size", log_y=False):
    path = f"index.html#{bench}?x-axis={x_axis}" + ("&y-axis-scale=log" if log_y else "")
    page, rec = visit(browser, path, GRAPH_READY, name)
    assert page.locator("#main-graph canvas.flot-base").first.is_visible()
    info = page.evaluate(GRAPH_INFO)
    assert sum(1 for n in info["series"] if n > 0) >= 1, info
    assert max(info["series"]) >= 2, f"{bench}: expected points along {x_axis}: {info}"
    assert info["xlabel"] == x_axis, info
    assert bench in info["title"], info
    rec.assert_clean(name)
    return info


def test_front_page(browser):
    page, rec = visit(browser, "index.html",
                      "() => document.querySelectorAll('.benchmark-container').length > 0",
                      "front")
    assert page.title() == "airspeed velocity of an unladen embedding-kernels"
    # the link to the crossover page sits in asv's own navigation bar, visible
    link = page.locator("#nav-li-crossover a")
    assert link.is_visible() and link.get_attribute("href") == "crossover.html"
    # every script and stylesheet is served from here (self-contained site)
    srcs = page.evaluate("""() => Array.from(document.querySelectorAll('script[src], link[href]'))
                               .map(e => e.src || e.href)""")
    assert srcs and all(s.startswith(browser[2]) for s in srcs), srcs
    assert page.evaluate("() => jQuery.fn.jquery") == "3.3.1"
    rec.assert_clean("front page")


def test_benchmark_list_sorts(browser):
    page, rec = visit(browser, "index.html#/summarylist",
                      "() => document.querySelectorAll('#summarylist-body tbody tr').length > 1",
                      "list", shot=False)
    names = "() => Array.from(document.querySelectorAll('#summarylist-body tbody tr'))" \
            ".map(r => r.cells[0].innerText.trim())"
    values = """() => Array.from(document.querySelectorAll('#summarylist-body tbody tr'))
                    .map(r => parseFloat(r.cells[1].getAttribute('data-sort-value')))"""
    before = page.evaluate(names)
    header = page.locator("#summarylist-body thead th", has_text="Value")
    header.click()  # stupidtable: ascending
    page.wait_for_function("() => /[?&]sort=1/.test(window.location.hash) && "
                           "/[?&]dir=asc/.test(window.location.hash)")
    asc = page.evaluate(names)
    assert sorted(asc) == sorted(before), "sorting lost or added rows"
    v = [x for x in page.evaluate(values) if x == x]
    assert v == sorted(v), "not in ascending order of Value"
    header.click()  # descending: the measured benchmarks first, for the screenshot
    page.wait_for_function("() => /[?&]dir=desc/.test(window.location.hash)")
    desc = page.evaluate(names)
    v = [x for x in page.evaluate(values) if x == x]
    assert v == sorted(v, reverse=True), "not in descending order of Value"
    assert asc != before or desc != before, "clicking 'Value' did not reorder the list"
    assert desc != asc
    page.screenshot(path=os.path.join(SCREENSHOT_DIR, "list.png"))
    rec.assert_clean("benchmark list")


def test_time_lookup_graph_vs_vocab_size(browser):
    check_graph(browser, "bench_lookup.Lookup.time_lookup", "graph_time_lookup", log_y=True)


def test_peakmem_graph(browser):
    check_graph(browser, "bench_lookup.Lookup.peakmem_lookup", "graph_peakmem_lookup")


def test_bandwidth_graph(browser):
    check_graph(browser, "bench_lookup.Lookup.track_bandwidth", "graph_track_bandwidth")


def test_crossover_page_via_the_link(browser):
    page, rec, base = browser
    visit(browser, "index.html",
          "() => document.querySelectorAll('.benchmark-container').length > 0", "front",
          shot=False)
    rec.reset()
    t0 = time.perf_counter()
    page.locator("#nav-li-crossover a").click()
    page.wait_for_url(base + "crossover.html")
    page.wait_for_function("""() => Array.from(document.images).length > 0 &&
                              Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)""")
    TIMINGS.append(("page: crossover (via the link)", time.perf_counter() - t0))
    page.screenshot(path=os.path.join(SCREENSHOT_DIR, "crossover.png"), full_page=True)
    assert page.locator("#no-results").count() == 0
    assert page.locator("img.grid").count() >= 1
    assert page.locator("table.grid td[data-kernel]").count() >= 1
    meta = page.locator("#meta").inner_text()
    assert "machine" in meta and "commit" in meta
    rec.assert_clean("crossover page")
