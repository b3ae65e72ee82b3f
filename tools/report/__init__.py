"""Finish the published asv site: self-contained assets, a crossover page, a link to it.

Run after ``asv publish`` (which wipes html_dir), from the project root::

    python -m tools.report [--config asv.conf.json] [--machine NAME]

1. writes ``html_dir/crossover.html`` and ``html_dir/crossover/*.svg`` from the newest
   commit's asv results for this machine (see :mod:`.crossover`: :mod:`.results` reads them
   with kernels._asv_results, :mod:`.grid` computes the cells, :mod:`.page` renders them);
2. adds a "Kernel crossover" item to the top navigation bar of ``index.html`` (see :mod:`.site`);
3. replaces the CDN <script>/<link> tags of asv's pages with copies taken from npm packages
   installed into ``<html_dir>/../npm`` (see :mod:`.vendor`).

Exit codes: 0 on success, also when npm cannot be had (the site then keeps asv's CDN tags,
with a warning saying what to install) and when there are no usable results (the page says
so); 1 when asv's page names an external resource with no known local copy, or on any other
real error (no asv site in html_dir, unreadable config).  Problems are one line on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import crossover, site, vendor
from .results import ResultsError, read_config

__all__ = ["main"]


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.report",
        description="After `asv publish`: make the asv site self-contained (local copies of its "
                    "CDN assets from npm), add crossover.html and a link to it.")
    p.add_argument("--config", default="asv.conf.json", help="asv config (default: %(default)s)")
    p.add_argument("--machine", default=None,
                   help="asv machine name whose latest results to show (default: asv's name for "
                        "this machine; another machine's results are never shown instead)")
    p.add_argument("--npm", default="npm", help="npm executable (default: %(default)s)")
    p.add_argument("--npm-cache", default=None,
                   help="where npm installs the site's JS/CSS packages "
                        "(default: <html_dir>/../npm, e.g. .asv/npm)")
    return p


def run(args) -> int:
    try:
        conf = read_config(args.config)
    except ResultsError as exc:  # the message names the file and what is wrong with it
        raise vendor.ReportError(f"{exc} (use --config)") from None
    html_dir, results_dir = conf["html_dir"], conf["results_dir"]
    cache = args.npm_cache or os.path.join(os.path.dirname(html_dir), "npm")
    index = os.path.join(html_dir, "index.html")
    have_site = os.path.isfile(index)

    # 1. the crossover page (always written: it says itself when there is nothing to show)
    crossover.write_crossover(html_dir, results_dir, machine=args.machine,
                              log=print, warn=lambda m: _err("report: " + m))
    if not have_site:
        _err(f"report: error: no asv site in {html_dir} (no index.html): run `asv publish` "
             f"first; only crossover.html was written")
        return 1

    # 2. the link at the top of the site
    with open(index, encoding="utf-8") as f:
        text = f.read()
    new, how = site.inject_link(text)
    if new != text:
        with open(index, "w", encoding="utf-8") as f:
            f.write(new)
    print(f"report: crossover link in index.html ({how})")

    # 3. self-contained assets
    try:
        res = vendor.make_self_contained(html_dir, cache, npm=args.npm, log=print)
    except vendor.UnknownExternalReference as exc:
        _err(f"report: error: {exc}")
        return 1
    if not res.self_contained:
        _err(f"report: warning: the site still loads jQuery/flot/bootstrap from public CDNs: "
             f"{res.warning}")
        return 0
    for path, url, local, kept, note in res.changes:
        how = "identical, integrity kept" if kept else (
            f"substitute ({note}), integrity dropped" if note else "hash differs, integrity dropped")
        print(f"report: {os.path.basename(path)}: {url} -> {local} ({how})")
    print(f"report: {html_dir} is self-contained (serve it: python -m http.server "
          f"--bind 127.0.0.1 --directory {html_dir} 8080)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except vendor.ReportError as exc:
        _err(f"report: error: {exc}")
        return 1
    except Exception as exc:  # one line, never a traceback; REPORT_DEBUG=1 shows it
        if os.environ.get("REPORT_DEBUG"):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _err(f"report: error: {type(exc).__name__}: {first} (REPORT_DEBUG=1 for the traceback)")
        return 1
