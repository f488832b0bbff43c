"""`peftkb docs build` and `serve`: render the pages, run `mkdocs build --strict`, check every link."""
from __future__ import annotations

import html
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jinja2 import TemplateError

from peftkb.errors import PeftkbError
from peftkb.model import Catalog
from peftkb.site.escape import safe_url
from peftkb.site.render import SitePaths, render_docs
from peftkb.site.templating import SiteError


@dataclass
class BuildReport:
    pages: int
    files: int
    seconds: float
    build_dir: Path
    links_checked: int


def mkdocs_config(paths: SitePaths, nav: list[Any], **overrides: Any) -> Any:
    from mkdocs.config import load_config

    return load_config(config_file=str(paths.config_file), docs_dir=str(paths.docs_dir),
                       site_dir=str(paths.build_dir), nav=nav, strict=True, **overrides)


class _StderrHandler(logging.Handler):
    """mkdocs' warnings and errors, printed as `mkdocs: WARNING: ...` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"mkdocs: {record.levelname}: {record.getMessage()}\n")
        except Exception:  # logging must never raise
            pass


def build_site(root: Path | None = None, *, site_dir: Path | None = None, docs_dir: Path | None = None,
               build_dir: Path | None = None, templates_dir: Path | None = None, catalog: Catalog | None = None,
               verbose: bool = False, site_url: str | None = None) -> BuildReport:
    """Render site/docs from the catalog, run `mkdocs build --strict`, then check every link of the result.

    `root` is the knowledge base (catalog, taxonomy, reference_impls); `site_dir` holds mkdocs.yml, the
    templates and assets (default <root>/site); docs_dir and build_dir default to folders inside it.
    `site_url` (the address the site will be served from, e.g. https://example.org/peftkb/) fills
    sitemap.xml; without one (here or in mkdocs.yml) the sitemap would list nothing, so none is written.
    """
    from peftkb.loader import find_root, load_catalog

    started = time.perf_counter()
    root = (root or find_root()).resolve()
    paths = SitePaths.for_root(root, site_dir=site_dir, docs_dir=docs_dir, build_dir=build_dir,
                               templates_dir=templates_dir)
    if not paths.config_file.is_file():
        raise SiteError(f"no mkdocs configuration at {paths.config_file}")
    catalog = catalog or load_catalog(root)
    result = render_docs(catalog, paths)
    if site_url is not None and safe_url(site_url) is None:
        raise SiteError(f"site URL must be an absolute http(s) URL, not {site_url!r}")
    has_url = _run_mkdocs(paths, result.nav, verbose=verbose, site_url=site_url)
    if not has_url:  # mkdocs writes an empty <urlset> without a site URL: leave no such file behind
        for name in ("sitemap.xml", "sitemap.xml.gz"):
            (paths.build_dir / name).unlink(missing_ok=True)
    problems, checked = check_site(paths.build_dir, site_url=site_url if has_url else None)
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise SiteError(f"the built site has {len(problems)} broken or off-site link(s):\n{shown}{more}")
    return BuildReport(pages=len(result.pages), files=result.files, seconds=time.perf_counter() - started,
                       build_dir=paths.build_dir, links_checked=checked)


def _run_mkdocs(paths: SitePaths, nav: list[Any], verbose: bool = False, site_url: str | None = None) -> bool:
    """Run mkdocs; True when the configuration has a site URL (so the sitemap lists the pages)."""
    from mkdocs.commands.build import build
    from mkdocs.exceptions import Abort, ConfigurationError, MkDocsException

    logger = logging.getLogger("mkdocs")
    handler = _StderrHandler(level=logging.INFO if verbose else logging.WARNING)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        try:
            cfg = mkdocs_config(paths, nav, **({"site_url": site_url} if site_url else {}))
        except ConfigurationError as exc:
            raise SiteError(f"{paths.config_file}: invalid mkdocs configuration: {exc}") from None
        cfg.plugins.on_startup(command="build", dirty=False)
        try:
            build(cfg)
        finally:
            cfg.plugins.on_shutdown()
    except Abort as exc:
        raise SiteError(f"mkdocs build --strict failed ({exc}); see the mkdocs warnings above") from None
    except MkDocsException as exc:
        raise SiteError(f"mkdocs failed: {exc}") from None
    except TemplateError as exc:  # an error in site/overrides/*.html
        raise SiteError(f"theme template error: {exc}") from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return bool(cfg.site_url)


# -- link check of the built site -------------------------------------------------------------------
_TAG_RE = re.compile(r"<(a|link|script|img|iframe|source|embed|video|audio|form|use|image)\b([^>]*)>", re.I)
_ATTR_RE = re.compile(r"""([\w:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_ID_RE = re.compile(r"""\s(?:id|name)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_LINK_ATTR = {"a": "href", "link": "href", "script": "src", "img": "src", "iframe": "src", "source": "src",
              "embed": "src", "video": "src", "audio": "src", "form": "action", "use": "href", "image": "href"}


class _PageLinks:
    """The links and anchor ids of one built page (mkdocs output is regular enough for regular expressions)."""

    def __init__(self, text: str) -> None:
        self.links: list[tuple[str, str]] = []
        for match in _TAG_RE.finditer(text):
            tag = match.group(1).lower()
            for name, dq, sq, bare in _ATTR_RE.findall(match.group(2)):
                name = name.lower()
                if name == _LINK_ATTR[tag] or (tag in ("use", "image") and name == "xlink:href"):
                    self.links.append((tag, html.unescape(dq or sq or bare)))
        self.ids = {html.unescape(a or b or c) for a, b, c in _ID_RE.findall(text)}


def check_site(build_dir: Path, site_url: str | None = None) -> tuple[list[str], int]:
    """Every internal link of every page resolves (file and #anchor); nothing is loaded from elsewhere.

    External links are allowed only as plain <a href="http(s)://..."> navigation; scripts, styles, images
    and frames must come from the site itself, so viewing it makes no request beyond its own host.
    """
    import posixpath

    problems: list[str] = []
    files = {p.relative_to(build_dir).as_posix() for p in build_dir.rglob("*") if p.is_file()}
    dirs = {posixpath.dirname(f) for f in files}
    pages = {rel: _PageLinks((build_dir / rel).read_text(encoding="utf-8"))
             for rel in sorted(f for f in files if f.endswith(".html"))}
    checked = 0
    base = urlsplit(site_url).path.rstrip("/") + "/" if site_url else "/"
    for rel, parser in pages.items():
        for tag, url in parser.links:
            checked += 1
            if site_url and url.startswith(site_url):  # the site's own address (canonical links): a page here
                rest = urlsplit(url[len(site_url):])
                path = rest.path if rest.path and not rest.path.endswith("/") else rest.path + "index.html"
                url = posixpath.relpath("/" + path, "/" + posixpath.dirname(rel)) + (
                    "#" + rest.fragment if rest.fragment else "")
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme in ("http", "https") or url.startswith("//"):
                if tag != "a":
                    problems.append(f"{rel}: <{tag}> loads {url} from another host")
                continue
            if scheme == "data" and tag in ("img", "source"):
                continue
            if scheme or parts.netloc:
                problems.append(f"{rel}: <{tag}> uses a non-http(s) URL {url!r}")
                continue
            fragment = unquote(parts.fragment)
            if not parts.path:  # same-page anchor
                if fragment and fragment not in parser.ids:
                    problems.append(f"{rel}: link to missing anchor #{fragment}")
                continue
            path = unquote(parts.path)
            if path.startswith("/"):
                # only mkdocs' 404 page links from the server root (it is served at any depth)
                if rel != "404.html":
                    problems.append(f"{rel}: absolute link {url!r} (breaks when the site is not at the server root)")
                    continue
                if not path.startswith(base):
                    problems.append(f"{rel}: link {url!r} is outside the site's path {base}")
                    continue
                target = posixpath.normpath(path[len(base):] or ".")
            else:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), path))
            if target in dirs or path.endswith("/"):
                target = posixpath.join(target, "index.html")
            if target.startswith("../") or target == "..":
                problems.append(f"{rel}: link {url!r} leaves the site")
            elif target not in files:
                problems.append(f"{rel}: broken link {url!r}")
            elif fragment and target in pages and fragment not in pages[target].ids:
                problems.append(f"{rel}: link {url!r} points to a missing anchor")
    return problems, checked


def watched_inputs(root: Path) -> list[Path]:
    """What `peftkb docs serve` watches: a change here re-renders the pages."""
    site = root / "site"
    return [p for p in (root / "catalog", root / "taxonomy", root / "reference_impls", root / "evidence",
                        root / "benchmarks" / "results", site / "templates", site / "assets") if p.exists()]


def _inputs_stamp(root: Path) -> tuple:
    return tuple(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                        for folder in watched_inputs(root) for p in folder.rglob("*") if p.is_file()))


def serve_site(root: Path | None = None, *, dev_addr: str = "127.0.0.1:8000", open_browser: bool = False,
               poll_seconds: float = 1.0) -> None:
    """Render the pages, then `mkdocs serve` them; edits to the catalog, taxonomy, reference implementations,
    templates or assets re-render the pages (and mkdocs reloads the browser)."""
    import threading

    from mkdocs.commands.serve import serve
    from peftkb.loader import find_root, load_catalog

    root = (root or find_root()).resolve()
    paths = SitePaths.for_root(root)
    nav = render_docs(load_catalog(root), paths).nav  # errors here stop before serving
    stop = threading.Event()

    def rerender() -> None:
        stamp = _inputs_stamp(root)
        while not stop.wait(poll_seconds):
            now = _inputs_stamp(root)
            if now == stamp:
                continue
            stamp = now
            try:
                result = render_docs(load_catalog(root), paths)
            except PeftkbError as exc:  # keep serving the last good pages
                sys.stderr.write(f"peftkb: pages not updated:\n{exc}\n")
                continue
            nav[:] = result.nav  # mkdocs reloads its config (and this nav) on every rebuild
            sys.stderr.write(f"peftkb: re-rendered {len(result.pages)} pages\n")

    logger = logging.getLogger("mkdocs")
    handler = _StderrHandler(level=logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    watcher = threading.Thread(target=rerender, name="peftkb-rerender", daemon=True)
    watcher.start()
    try:
        serve(config_file=str(paths.config_file), livereload=True, open_in_browser=open_browser,
              docs_dir=str(paths.docs_dir), nav=nav, dev_addr=dev_addr, strict=False)
    except Exception as exc:  # mkdocs reports bad addresses, a busy port, config errors this way
        from mkdocs.exceptions import MkDocsException

        if isinstance(exc, (MkDocsException, OSError)):
            raise SiteError(f"mkdocs serve failed: {exc}") from None
        raise
    finally:
        stop.set()
        logger.removeHandler(handler)


def summarize(report: BuildReport) -> str:
    return (f"built {report.pages} pages ({report.files} generated files) into {report.build_dir} "
            f"in {report.seconds:.1f}s; {report.links_checked} links checked, none broken")
