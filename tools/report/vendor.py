"""Make the published asv site self-contained: CDN <script>/<link> tags -> local copies.

asv 0.6.6's ``index.html`` loads jQuery, flot (+ plugins), stupidtable, blueimp-md5 and
bootstrap from public CDNs, each with an SRI ``integrity`` hash.  Here every such tag is
pointed at a copy taken, at publish time, from the npm package of the same library
(installed with ``npm install --prefix <cache>``; nothing is stored in the repository).

* The ``integrity`` (and ``crossorigin``) attribute is kept when the local file hashes to the
  value in the attribute -- checked here, file by file -- and dropped otherwise (a substitute:
  the unminified flot 0.8.3 files, stupid-table-plugin 1.1.3 for stupidtable 1.0.1).
* An external reference (``http://``, ``https://`` or ``//`` in the ``src``/``href`` of a
  ``script``, ``link`` or ``img`` tag) with no entry in :data:`CDN_ASSETS` is an error
  (:class:`UnknownExternalReference`): a newer asv changed its page and this table needs an
  entry, rather than a site that silently reaches out to the internet.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess

VENDOR_DIR = "vendor"
"""Sub-directory of html_dir that receives the local copies."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """Where the local copy of one CDN asset comes from."""

    package: str
    """npm package name."""
    version: str
    """Exact npm version installed."""
    path: str
    """File inside the npm package."""
    note: str = ""
    """Why the file is a substitute (empty when it is meant to be the CDN's file)."""
    extra_dirs: tuple = ()
    """Directories of the package also copied (files the asset itself references)."""

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def local_path(self) -> str:
        """Path relative to html_dir, '/'-separated (used in the rewritten tag too)."""
        return f"{VENDOR_DIR}/{self.spec}/{self.path}"


CDN_ASSETS: dict[str, Asset] = {
    "https://code.jquery.com/jquery-3.3.1.min.js":
        Asset("jquery", "3.3.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js":
        Asset("flot", "0.8.3", "jquery.flot.js", "unminified flot 0.8.3"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js":
        Asset("flot", "0.8.3", "jquery.flot.time.js", "unminified flot 0.8.3"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        Asset("flot", "0.8.3", "jquery.flot.selection.js", "unminified flot 0.8.3"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        Asset("flot", "0.8.3", "jquery.flot.categories.js", "unminified flot 0.8.3"),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        Asset("flot-orderbars", "1.0.0", "js/jquery.flot.orderBars.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        Asset("stupid-table-plugin", "1.1.3", "stupidtable.min.js",
              "stupidtable 1.0.1 is in no npm release; stupid-table-plugin 1.1.3 instead"),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js":
        Asset("blueimp-md5", "2.19.0", "js/md5.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js":
        Asset("bootstrap", "3.1.1", "dist/js/bootstrap.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css":
        Asset("bootstrap", "3.1.1", "dist/css/bootstrap.min.css",
              extra_dirs=("dist/fonts",)),  # the css names ../fonts/glyphicons-halflings-*
}


def npm_specs(assets=None) -> list[str]:
    """The ``name@version`` list to give ``npm install``, in a stable order."""
    assets = CDN_ASSETS.values() if assets is None else assets
    return sorted({a.spec for a in assets})


def npm_install_hint(cache_dir: str) -> str:
    return ("npm install --prefix " + cache_dir + " --no-audit --no-fund --ignore-scripts "
            + " ".join(npm_specs()))


class ReportError(Exception):
    """A failure that is reported as one line, without a traceback."""


class UnknownExternalReference(ReportError):
    """The site names an external URL this module has no local copy for."""

    def __init__(self, refs):
        self.refs = list(refs)
        lines = [f"{os.path.basename(f)}: <{tag} {attr}=\"{url}\">" for f, tag, attr, url in self.refs]
        super().__init__(
            "the asv site loads external resources with no local copy known to "
            "tools/report/vendor.py (add them to CDN_ASSETS): " + "; ".join(lines))


class AssetsUnavailable(ReportError):
    """npm or the npm packages cannot be had: the site stays in its CDN form."""


# --------------------------------------------------------------------------------------------
# SRI
# --------------------------------------------------------------------------------------------

_SRI_ALGS = {"sha256": 1, "sha384": 2, "sha512": 3}


def sri_hash(data: bytes, alg: str = "sha384") -> str:
    """The Subresource Integrity value ``<alg>-<base64 digest>`` of ``data``."""
    if alg not in _SRI_ALGS:
        raise ValueError(f"unsupported SRI algorithm {alg!r}")
    return f"{alg}-" + base64.b64encode(hashlib.new(alg, data).digest()).decode("ascii")


def sri_matches(integrity: str, data: bytes) -> bool:
    """True when ``data`` satisfies ``integrity`` as a browser checks it: among the listed
    hashes of the strongest algorithm present, one equals the hash of ``data``."""
    tokens = []
    for tok in (integrity or "").split():
        alg, sep, value = tok.partition("-")
        if sep and alg in _SRI_ALGS:
            tokens.append((alg, value.split("?", 1)[0]))
    if not tokens:
        return False
    strongest = max(_SRI_ALGS[alg] for alg, _ in tokens)
    for alg, value in tokens:
        if _SRI_ALGS[alg] == strongest and sri_hash(data, alg) == f"{alg}-{value}":
            return True
    return False


# --------------------------------------------------------------------------------------------
# HTML scanning and rewriting
# --------------------------------------------------------------------------------------------

_COMMENT_RE = re.compile(r"<!--.*?-->", re.S)
_TAG_RE = re.compile(r"<(script|link|img)\b((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>", re.I)
_ATTR_RE = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>"']+))?""")
_URL_ATTRS = ("src", "href")


def is_external(url: str) -> bool:
    u = (url or "").strip().lower()
    return u.startswith(("http://", "https://", "//"))


def _attrs(attr_text: str):
    """[(name_lower, value_or_None, match)] for the attributes of one tag."""
    out = []
    for m in _ATTR_RE.finditer(attr_text):
        value = m.group(2)
        if value is not None and value[:1] in "\"'":
            value = value[1:-1]
        out.append((m.group(1).lower(), value, m))
    return out


def _tags(html: str):
    """(match, tag_name_lower, attrs) for every script/link/img tag outside comments."""
    comments = [m.span() for m in _COMMENT_RE.finditer(html)]
    for m in _TAG_RE.finditer(html):
        if any(a <= m.start() < b for a, b in comments):
            continue
        yield m, m.group(1).lower(), _attrs(m.group(2))


def external_refs(html: str):
    """[(tag, attr, url)] of the external URLs in src/href of script/link/img tags."""
    refs = []
    for _, tag, attrs in _tags(html):
        for name, value, _ in attrs:
            if name in _URL_ATTRS and value is not None and is_external(value):
                refs.append((tag, name, value.strip()))
    return refs


def find_unknown(html_files) -> list:
    """[(file, tag, attr, url)] of external references with no entry in CDN_ASSETS."""
    unknown = []
    for path in html_files:
        with open(path, encoding="utf-8") as f:
            html = f.read()
        for tag, attr, url in external_refs(html):
            if url not in CDN_ASSETS:
                unknown.append((path, tag, attr, url))
    return unknown


def rewrite_html(html: str, identical: dict) -> tuple[str, list]:
    """Point every known CDN tag in ``html`` at its local copy.

    ``identical`` maps CDN URL -> bool: whether the local file satisfies the tag's SRI hash
    (then ``integrity`` and ``crossorigin`` are kept, else both are removed).  Returns the new
    HTML and a list of (url, local_path, kept_integrity) for what was changed.  Unknown
    external URLs are left alone (call :func:`find_unknown` first).
    """
    pieces, changes, pos = [], [], 0
    for m, tag, attrs in _tags(html):
        url_attr = next(((n, v, am) for n, v, am in attrs
                         if n in _URL_ATTRS and v is not None and v.strip() in CDN_ASSETS), None)
        if url_attr is None:
            continue
        name, url, am = url_attr
        url = url.strip()
        asset = CDN_ASSETS[url]
        has_integrity = any(n == "integrity" for n, _, _ in attrs)
        keep = bool(identical.get(url)) and has_integrity
        attr_text = m.group(2)
        # edit the attribute text from the end so earlier offsets stay valid
        edits = []
        for n, v, a in attrs:
            if a is am:
                edits.append((a.start(), a.end(), f'{name}="{asset.local_path}"'))
            elif n in ("integrity", "crossorigin") and not keep:
                start = a.start()
                while start > 0 and attr_text[start - 1].isspace():
                    start -= 1
                edits.append((start, a.end(), ""))
        for start, end, text in sorted(edits, reverse=True):
            attr_text = attr_text[:start] + text + attr_text[end:]
        pieces.append(html[pos:m.start()])
        pieces.append(f"<{m.group(1)}{attr_text}>")
        pos = m.end()
        changes.append((url, asset.local_path, keep))
    pieces.append(html[pos:])
    return "".join(pieces), changes


def site_html_files(html_dir: str, skip=("crossover.html",)) -> list[str]:
    """The published .html files of the asv site (not ours, not the vendored copies)."""
    out = []
    for root, dirs, files in os.walk(html_dir):
        dirs[:] = sorted(d for d in dirs
                         if os.path.join(root, d) != os.path.join(html_dir, VENDOR_DIR))
        for fn in sorted(files):
            if fn.endswith((".html", ".htm")) and not (root == html_dir and fn in skip):
                out.append(os.path.join(root, fn))
    return out


# --------------------------------------------------------------------------------------------
# npm
# --------------------------------------------------------------------------------------------

def _installed_version(cache_dir: str, package: str):
    pj = os.path.join(cache_dir, "node_modules", package, "package.json")
    try:
        with open(pj, encoding="utf-8") as f:
            return json.load(f).get("version")
    except (OSError, ValueError):
        return None


def ensure_npm_packages(cache_dir: str, assets, npm: str | None = "npm", log=print) -> None:
    """Install the npm packages of ``assets`` into ``cache_dir`` unless already there.

    Raises :class:`AssetsUnavailable` (with what to install) when npm is missing or fails.
    """
    missing = sorted({a.spec for a in assets
                      if _installed_version(cache_dir, a.package) != a.version})
    if not missing:
        return
    exe = shutil.which(npm) if npm else None
    if exe is None:
        raise AssetsUnavailable(
            f"npm not found ({npm!r}); install Node.js and npm (Debian: apt-get install npm) "
            f"and re-run, or fetch the files once with: {npm_install_hint(cache_dir)}")
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [exe, "install", "--prefix", cache_dir, "--no-audit", "--no-fund",
           "--ignore-scripts", "--no-package-lock", "--loglevel=error", *missing]
    log("report: " + " ".join(["npm"] + cmd[1:]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetsUnavailable(f"npm install failed ({exc}); run: {npm_install_hint(cache_dir)}")
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise AssetsUnavailable(
            f"npm install failed (exit {proc.returncode}: {last[0]}); "
            f"run: {npm_install_hint(cache_dir)}")
    still = sorted({a.spec for a in assets
                    if _installed_version(cache_dir, a.package) != a.version})
    if still:
        raise AssetsUnavailable(f"npm did not install {', '.join(still)}; "
                                f"run: {npm_install_hint(cache_dir)}")


# --------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class VendorResult:
    self_contained: bool
    warning: str = ""
    changes: list = dataclasses.field(default_factory=list)
    """(html file, CDN url, local path, integrity kept, note)."""


def make_self_contained(html_dir: str, cache_dir: str, npm: str | None = "npm",
                        log=print) -> VendorResult:
    """Vendor every CDN asset the site's .html files name and rewrite their tags.

    Raises :class:`UnknownExternalReference` for an external URL with no mapping (nothing is
    rewritten then).  When npm or the packages cannot be had, nothing is rewritten and the
    result carries a warning saying what to install.
    """
    files = site_html_files(html_dir)
    unknown = find_unknown(files)
    if unknown:
        raise UnknownExternalReference(unknown)

    texts = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            texts[path] = f.read()
    used = {url for html in texts.values() for _, _, url in external_refs(html)}
    if not used:
        return VendorResult(True)

    assets = [CDN_ASSETS[u] for u in sorted(used)]
    try:
        ensure_npm_packages(cache_dir, assets, npm=npm, log=log)
        for a in assets:
            src = os.path.join(cache_dir, "node_modules", a.package, *a.path.split("/"))
            if not os.path.isfile(src):
                raise AssetsUnavailable(f"{a.spec} has no file {a.path}; "
                                        f"run: {npm_install_hint(cache_dir)}")
    except AssetsUnavailable as exc:
        return VendorResult(False, warning=str(exc))

    # copy, then compare with the integrity values of the tags that name each URL
    data = {}
    for a in assets:
        pkg_root = os.path.join(cache_dir, "node_modules", a.package)
        dst = os.path.join(html_dir, *a.local_path.split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(pkg_root, *a.path.split("/")), dst)
        for d in a.extra_dirs:
            dst_dir = os.path.join(html_dir, VENDOR_DIR, a.spec, *d.split("/"))
            shutil.copytree(os.path.join(pkg_root, *d.split("/")), dst_dir, dirs_exist_ok=True)
        with open(dst, "rb") as f:
            data[a.local_path] = f.read()

    result = VendorResult(True)
    for path, html in texts.items():
        identical = {}
        for _, tag, attrs in _tags(html):
            d = {n: v for n, v, _ in attrs}
            url = next((d[n].strip() for n in _URL_ATTRS if d.get(n) and d[n].strip() in CDN_ASSETS), None)
            if url is not None:
                identical[url] = sri_matches(d.get("integrity") or "",
                                             data[CDN_ASSETS[url].local_path])
        new_html, changes = rewrite_html(html, identical)
        left = external_refs(new_html)
        if left:  # cannot happen unless the regexes disagree; never write a half-done page
            raise ReportError(f"{path}: external references left after rewriting: {left}")
        if new_html != html:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new_html)
        for url, local, kept in changes:
            result.changes.append((path, url, local, kept, CDN_ASSETS[url].note))
    return result
