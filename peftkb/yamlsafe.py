"""Safe YAML loading that remembers where every value came from.

The catalog is data written by people, so a loader must (1) never construct arbitrary objects,
(2) refuse inputs built to exhaust memory, and (3) report errors at `file:line:column`. PyYAML's
safe loader (the C one when available) composes a node tree that carries marks; we construct plain
Python values from that tree ourselves and record the position of every mapping key and value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # the C loader is several times faster; fall back to pure Python where libyaml is missing
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_FILE_BYTES = 1_000_000
#: No catalog file nests deeper than a handful of levels; this bounds the recursion of construction.
MAX_DEPTH = 50
Path_ = tuple[str | int, ...]


class YamlProblem(Exception):
    def __init__(self, line: int, column: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.line, self.column, self.message, self.field = line, column, message, field


@dataclass
class Located:
    """A loaded document plus the 1-based (line, column) of every value, keyed by its path."""

    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_) -> tuple[int, int]:
        """Position of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load_located(path: Path) -> Located:
    """Load one YAML file safely, raising YamlProblem with a position on any refusal."""
    if path.exists() and not path.is_file():  # a folder, a FIFO (would block), a device (/dev/zero)
        raise YamlProblem(1, 1, "not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise YamlProblem(1, 1, f"file is {size:,} bytes; the limit is {MAX_FILE_BYTES:,}")
    with path.open("rb") as handle:  # read at most the limit, even if the file grew since stat()
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise YamlProblem(1, 1, f"file is over the limit of {MAX_FILE_BYTES:,} bytes")
    text = decode_utf8(data)
    loader = _Loader(text)
    try:
        if loader.check_node():
            root = loader.get_node()
            if loader.check_node():
                nxt = loader.get_node()
                raise YamlProblem(*_mark(nxt), "only one YAML document is allowed per file")
        else:
            root = None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlProblem(line, col, f"YAML syntax error: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:  # a control character: PyYAML refuses it before parsing
        line, col = _line_col(text, exc.position)
        raise YamlProblem(line, col, f"character {_char_name(exc.character)} is not allowed in YAML "
                                     "(control characters other than tab and newline)") from None
    except yaml.YAMLError as exc:  # any other refusal of the parser, located at the start
        raise YamlProblem(1, 1, f"YAML error: {exc}") from None
    except RecursionError:  # the pure-Python composer recurses once per nesting level
        raise YamlProblem(1, 1, f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()
    located = Located(None)
    if root is not None:
        located.data = _construct(root, (), located.positions, set())
    return located


def decode_utf8(data: bytes) -> str:
    """Bytes as text, or YamlProblem at the line and column of the first byte that is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise YamlProblem(line, column, f"not valid UTF-8 (byte 0x{data[start]:02x}); save the file as UTF-8") from None
    return text.removeprefix("\ufeff")  # a byte-order mark is allowed and ignored


def _line_col(text: str, position: int) -> tuple[int, int]:
    if not isinstance(position, int) or position < 0:
        return 1, 1
    position = min(position, len(text))
    return text.count("\n", 0, position) + 1, position - (text.rfind("\n", 0, position) + 1) + 1


def _char_name(character: object) -> str:
    if isinstance(character, str) and len(character) == 1:
        return f"U+{ord(character):04X}"
    if isinstance(character, int):
        return f"U+{character:04X}"
    return repr(character)


_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")}


def _construct(node: yaml.Node, path: Path_, positions: dict, seen: set[int]) -> Any:
    # An alias makes two places share one node; refusing shared nodes defeats "billion laughs"
    # expansion and costs nothing, since no catalog file needs anchors.
    if id(node) in seen:
        raise YamlProblem(*_mark(node), "YAML anchors and aliases are not allowed (the anchor is here)",
                         _dotted(path))
    seen.add(id(node))
    positions[path] = _mark(node)
    if len(path) > MAX_DEPTH:
        raise YamlProblem(*_mark(node), f"nested more than {MAX_DEPTH} levels deep", _dotted(path[:MAX_DEPTH]))
    if node.tag not in _PLAIN_TAGS:  # e.g. !!python/object: refused even where it would be ignored
        raise YamlProblem(*_mark(node), f"unsupported YAML tag '{node.tag}'", _dotted(path))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(*_mark(key_node), "mapping keys must be plain strings", _dotted(path))
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlProblem(*_mark(key_node), "YAML merge keys (<<) are not allowed", _dotted(path))
            key = str(key_node.value)
            if key in out:
                raise YamlProblem(*_mark(key_node), f"duplicate key '{key}'", _dotted(path + (key,)))
            out[key] = _construct(value_node, path + (key,), positions, seen)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), positions, seen) for i, item in enumerate(node.value)]
    try:
        return _SCALARS.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:  # e.g. a !!python/object tag
        raise YamlProblem(*_mark(node), f"unsupported YAML value: {exc.problem}", _dotted(path)) from None
    except (ValueError, OverflowError) as exc:  # a 5,000-digit integer, a date like 2021-13-45
        reason = str(exc).split(";")[0][:120]
        raise YamlProblem(*_mark(node), f"invalid value {_preview(node.value)}: {reason}", _dotted(path)) from None
    finally:
        _SCALARS.constructed_objects.clear()


class _ScalarConstructor(yaml.SafeLoader):
    """Only used to resolve scalars (ints, floats, bools, nulls, strings) the safe way."""

    def __init__(self) -> None:  # no stream: we only call construct_object on scalar nodes
        yaml.constructor.SafeConstructor.__init__(self)


_SCALARS = _ScalarConstructor()


def _preview(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


dotted = _dotted
