"""Write the crossover page: which kernel is fastest where, from the latest asv results.

The results are those of the newest usable commit measured on the machine (the named one, else
the one asv itself names here; never another machine's), read by kernels._asv_results through
:mod:`.results`; :mod:`.grid` computes the cells and :mod:`.page` draws and renders them.
"""
from __future__ import annotations

import os
import shutil

from . import page
from .grid import compute_grids, unmeasured_operations
from .results import ResultsError, load, this_machine_name

PICTURE_DIR = "crossover"
PAGE_NAME = "crossover.html"


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_crossover(html_dir: str, results_dir: str, machine: str | None = None,
                    log=print, warn=print) -> dict:
    """Write ``html_dir/crossover.html`` and its pictures; return a summary dict.

    Problems with the results are reported through ``warn`` (one line each) and on the page.
    """
    os.makedirs(html_dir, exist_ok=True)
    pic_dir = os.path.join(html_dir, PICTURE_DIR)
    shutil.rmtree(pic_dir, ignore_errors=True)
    page_path = os.path.join(html_dir, PAGE_NAME)
    try:
        run = load(results_dir, machine)
    except ResultsError as exc:  # NoResults: none for this machine, or none usable
        warn(f"crossover: {exc}")
        _write(page_path, page.render_page(machine=machine or this_machine_name(),
                                           error=str(exc)))
        return {"page": page_path, "grids": 0, "error": str(exc)}

    for n in run.notes:
        warn(f"crossover: {n}")
    try:
        grids = compute_grids(run)
    except Exception as exc:  # a file the reader accepted but whose numbers make no sense
        msg = (f"corrupt results file {run.path}: cannot read its numbers "
               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        warn(f"crossover: {msg}")
        _write(page_path, page.render_page(machine=run.machine, commit=run.commit, error=msg))
        return {"page": page_path, "grids": 0, "error": msg}
    pictures = {}
    notes = list(run.notes)
    if grids and page.matplotlib is None:
        notes.append("matplotlib is not installed: tables only (pip install matplotlib)")
        warn("crossover: matplotlib is not installed: pictures skipped (pip install matplotlib)")
    elif grids:
        os.makedirs(pic_dir, exist_ok=True)
        for g in grids:
            if not g.measured:
                continue
            rel = f"{PICTURE_DIR}/{g.slug}.svg"
            try:
                page.draw_grid(g, os.path.join(html_dir, *rel.split("/")))
            except Exception as exc:
                line = f"picture of {g.label} failed ({type(exc).__name__}: {exc})"
                notes.append(line.splitlines()[0])
                warn("crossover: " + line.splitlines()[0])
                continue
            pictures[g.slug] = rel
    _write(page_path, page.render_page(
        machine=run.machine, commit=run.commit, commit_date=page.format_date(run.date),
        run_date=page.format_date(run.started) if run.started else None, env=run.env_name,
        source=os.path.relpath(run.path, os.path.dirname(os.path.abspath(results_dir))),
        grids=grids, pictures=pictures, notes=notes,
        unmeasured=unmeasured_operations(grids) if grids else ()))
    if not grids:
        warn(f"crossover: {run.path} holds no timing benchmark over kernel x vocab_size x dim")
    log(f"crossover: {page_path} ({len(grids)} grid(s): "
        f"{', '.join(g.label for g in grids) or 'none'}) from {run.path}")
    return {"page": page_path, "grids": len(grids), "pictures": list(pictures.values()),
            "machine": run.machine, "commit": run.commit, "path": run.path,
            "grid_objects": grids}
