"""`peftkb docs build` and `peftkb docs serve`: the browsable site, generated from the catalog."""
from __future__ import annotations

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
    output: Optional[Path] = typer.Option(None, "--output", "-o", file_okay=False,
                                          help="Folder for the built site (default: site/build)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print mkdocs' progress messages."),
) -> None:
    """Render site/docs from the catalog, build it with mkdocs --strict, and check every link."""
    from peftkb.site.render import build_site, summarize

    _require_checkout("build")
    report = build_site(build_dir=output.resolve() if output else None, verbose=verbose)
    text(summarize(report))


@docs_app.command("serve")
def serve(
    dev_addr: str = typer.Option("127.0.0.1:8000", "--dev-addr", "-a", metavar="IP:PORT",
                                 help="Address to serve the preview on."),
    open_browser: bool = typer.Option(False, "--open", help="Open the preview in a browser."),
) -> None:
    """Preview the site with live reload; edits to the catalog or templates re-render the pages."""
    from peftkb.site.render import serve_site

    _require_checkout("serve")
    serve_site(dev_addr=dev_addr, open_browser=open_browser)


def register(app: typer.Typer) -> None:
    app.add_typer(docs_app, name="docs")
