"""`peftkb docs build` and `peftkb docs serve`: the browsable site, generated from the catalog."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from peftkb.cli.output import text
from peftkb.errors import UsageError


def _require_checkout(command: str) -> None:
    """The site's templates live in a source checkout only; the installed package data has none."""
    from peftkb.cache import find_root, is_checkout

    root = find_root()
    if not is_checkout(root):
        raise UsageError(f"peftkb docs {command} needs a source checkout (site/templates), and {root} is the "
                         "installed knowledge base: run it inside a clone of the project, or pass --root")

docs_app = typer.Typer(
    name="docs",
    help="Build or preview the documentation site (mkdocs-material), generated from the catalog.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@docs_app.command("build")
def build(
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="DIR",
                                         help="Folder for the built site (default: site/build). It must be new, "
                                              "empty, or a previous peftkb build: nothing else is ever replaced."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print mkdocs' progress messages."),
    site_url: Optional[str] = typer.Option(None, "--site-url", metavar="URL",
                                           help="Where the site will be served (https://...): fills sitemap.xml "
                                                "and canonical links."),
) -> None:
    """Render site/docs from the catalog, build it with mkdocs --strict, and check every link.

    The site is built into a temporary folder beside DIR and moved into place only when the build and its
    link check succeed, so a failed build leaves DIR as it was.
    """
    import dataclasses

    from peftkb.cache import find_root
    from peftkb.site.render import SitePaths, build_site, summarize

    _require_checkout("build")
    if site_url is not None and not re.fullmatch(r"https?://[^\s/$.?#][^\s]*", site_url):
        raise UsageError(f"--site-url must be an http(s) URL, not {site_url!r}")
    default = SitePaths.for_root(find_root().resolve()).build_dir
    target = default if output is None else _output_dir(output, default)
    report = _build_then_move(target, lambda tmp: build_site(build_dir=tmp, verbose=verbose, site_url=site_url))
    text(summarize(dataclasses.replace(report, build_dir=target)))


#: Written into every built site; a folder holding it is a previous build that the next one may replace.
BUILD_MARKER = ".peftkb-build"


def _output_dir(raw: str, default: Path) -> Path:
    """The -o folder, refused unless replacing it can destroy nothing of the user's."""
    from peftkb.cache import find_root

    if not raw.strip():
        raise UsageError("--output is an empty path; name the folder for the built site")
    target = Path(raw).expanduser().resolve()
    if target == default:
        return target
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise UsageError(f"--output {raw}: {target} exists and is not a folder; it is left untouched")
        if any(target.iterdir()) and not (target / BUILD_MARKER).is_file():
            raise UsageError(f"--output {raw}: {target} is not empty and is not a previous peftkb build "
                             f"(no {BUILD_MARKER} in it); choose a new or empty folder")
    if target.parent == target or find_root().resolve().is_relative_to(target):
        raise UsageError(f"--output {raw}: {target} holds the knowledge base; choose a folder for the site alone")
    return target


def _build_then_move(target: Path, build_into):
    """Build into a fresh folder beside `target`, mark it, and only then move it into place."""
    import os
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a site is as readable as any new folder
    old = target.parent / f".{target.name}.replaced-{os.getpid()}"
    try:
        report = build_into(tmp)
        (tmp / BUILD_MARKER).write_text("built by `peftkb docs build`; the next build replaces this folder\n",
                                        encoding="utf-8")
        if target.exists():
            target.rename(old)  # a previous build (or an empty folder): checked by _output_dir
        try:
            tmp.rename(target)
        except OSError:
            if old.exists():
                old.rename(target)  # put the previous build back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed build leaves nothing behind
    return report


@docs_app.command("serve")
def serve(
    dev_addr: str = typer.Option("127.0.0.1:8000", "--dev-addr", "-a", metavar="IP:PORT",
                                 help="Address to serve the preview on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the preview in a browser."),
) -> None:
    """Preview the site with live reload; edits to the catalog or templates re-render the pages."""
    from peftkb.site.render import serve_site

    address = _dev_addr(dev_addr)
    _require_checkout("serve")
    serve_site(dev_addr=address, open_browser=open_browser)


def _dev_addr(raw: str) -> str:
    """`IP:PORT` (IPv6 in brackets), with a port mkdocs can listen on; anything else is bad input."""
    host, colon, port = raw.strip().rpartition(":")
    if not colon or not host or not port:
        raise UsageError(f"--dev-addr '{raw}': expected IP:PORT, e.g. 127.0.0.1:8000")
    if not port.isascii() or not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise UsageError(f"--dev-addr '{raw}': the port must be a number from 1 to 65535")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare or any(c.isspace() for c in bare) or ("[" in bare or "]" in bare):
        raise UsageError(f"--dev-addr '{raw}': '{host}' is not a host name or IP address")
    return f"{host}:{int(port)}"


def register(app: typer.Typer) -> None:
    app.add_typer(docs_app, name="docs")
