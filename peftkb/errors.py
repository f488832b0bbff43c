"""Problems found in data or input, and the exit codes the CLI maps them to."""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterable

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3  # an unexpected exception: a bug, reported in one line (traceback with --debug)


@dataclass(frozen=True, order=True)
class Problem:
    """One error, located like a compiler error: `file:line:column: field.path: message`."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "column": self.column,
                "field": self.field, "message": self.message}


class PeftkbError(Exception):
    """Base class of every error the CLI reports without a traceback."""

    exit_code = EXIT_BAD_INPUT


class CatalogError(PeftkbError):
    """The catalog or taxonomy data is invalid; carries every problem found in one pass."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class NotFoundError(PeftkbError):
    """A method, category or preset that does not exist; the message carries suggestions."""

    exit_code = EXIT_NOT_FOUND


class UsageError(PeftkbError):
    """A bad argument value that Click's own parsing cannot catch."""


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ` (did you mean 'x'?)` for the closest candidates, or an empty string."""
    import difflib  # only when something was not found: keeps it out of every command's start-up

    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    # also suggest candidates that contain the word, e.g. 'reparam' -> 'reparameterized'
    if not matches and len(word) >= 3:
        matches = [k for k in lowered if word.lower() in k][:n]
    if not matches:
        return ""
    return " (did you mean " + " or ".join(f"'{lowered[m]}'" for m in matches) + "?)"


@dataclass
class ProblemList:
    """Collects problems while loading, so that all of them are reported at once."""

    items: list[Problem] = field(default_factory=list)

    def add(self, file: str, line: int, column: int, field_path: str, message: str) -> None:
        self.items.append(Problem(file, line, column, field_path, message))

    def __bool__(self) -> bool:
        return bool(self.items)
