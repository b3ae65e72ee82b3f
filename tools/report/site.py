"""Add a visible link to crossover.html at the top of asv's index.html."""
from __future__ import annotations

import re

MARKER = "<!-- tools.report: crossover link -->"

NAV_ITEM = (MARKER + '<li id="nav-li-crossover"><a href="crossover.html" '
            'title="Fastest kernel per (vocab_size, dim), from the latest run">'
            '<strong>Kernel crossover</strong></a></li>')
"""An item of asv's own top navigation bar (bootstrap navbar): same look, no layout change."""

BANNER = (MARKER + '<div id="crossover-banner" style="position: fixed; top: 0; right: 0; '
          'z-index: 2000; padding: 4px 10px; background: #fff3cd; border: 1px solid #e0c36b; '
          'font: 13px sans-serif;"><a href="crossover.html">Kernel crossover</a></div>')
"""Fallback when the navigation bar is not where asv 0.6.6 has it."""

_NAV_RE = re.compile(r'(<li\s+id="nav-li-regressions"[^>]*>.*?</li>)', re.S | re.I)
_BODY_RE = re.compile(r"(<body\b[^>]*>)", re.I)


def inject_link(html: str) -> tuple[str, str]:
    """Return (new html, how) where how is 'navbar', 'banner' or 'already'."""
    if MARKER in html:
        return html, "already"
    new, n = _NAV_RE.subn(lambda m: m.group(1) + "\n\t" + NAV_ITEM, html, count=1)
    if n:
        return new, "navbar"
    new, n = _BODY_RE.subn(lambda m: m.group(1) + "\n    " + BANNER, html, count=1)
    if n:
        return new, "banner"
    return BANNER + "\n" + html, "banner"
