"""The one output layer: every command hands rows to `emit`, which prints them in the chosen format.

`table` uses rich on a terminal and plain aligned columns otherwise; json/yaml are stable (sorted keys);
csv flattens lists with "; "; ids prints the first column, one per line.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Any


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"
    csv = "csv"
    ids = "ids"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "; ".join(_cell(v) for v in value)
    if isinstance(value, int) and abs(value) >= 10_000:  # counts get separators; years stay 2021
        return f"{value:,}"
    return str(value)


def emit(rows: list[dict[str, Any]], fmt: Format, *, columns: list[str] | None = None, title: str | None = None,
         data: Any = None) -> None:
    """Print rows. `data` (default: rows) is what json/yaml print, for commands with richer structure."""
    payload = rows if data is None else data
    if fmt is Format.json:
        write(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
        return
    if fmt is Format.yaml:
        import yaml

        write(yaml.safe_dump(json.loads(json.dumps(payload, default=str)), sort_keys=True, allow_unicode=True))
        return
    columns = columns or (list(rows[0]) if rows else [])
    if fmt is Format.ids:
        write("".join(f"{row[columns[0]]}\n" for row in rows))
        return
    if fmt is Format.csv:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["; ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v)
                             for v in (row.get(c) for c in columns)])
        write(buffer.getvalue())
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, header_style="bold")
        for c in columns:
            table.add_column(c, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        Console().print(table)
        return
    plain_table(rows, columns, title)


def plain_table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    write("\n".join(lines) + "\n")


def text(message: str) -> None:
    """Free text (for `show`, `tree`, `graph --format text`)."""
    write(message if message.endswith("\n") else message + "\n")


def write(chunk: str) -> None:
    """Write to stdout. A reader that stops early (`peftkb list | head`) is not an error: exit 0 quietly."""
    try:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    except BrokenPipeError:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)  # so that the flush at exit does not fail again
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None
