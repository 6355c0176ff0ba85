"""Reading YAML that may be hostile: bounded in size, depth and alias expansion, JSON-like values.

``yaml.safe_load`` builds no arbitrary objects, but it still accepts documents that hurt: an alias
bomb (a few lines that expand to billions of nodes), recursive anchors, nesting deep enough to
overflow the stack (a segmentation fault in the C parser), integers too long to convert, ``.inf``
and ``.nan``, impossible dates, duplicated keys (silently the last one wins) and files large
enough to take minutes. :func:`load_file` reads one file under these limits and raises
:class:`YamlProblem` (``where``, ``message``) for each of them, so callers can print one line:

- the file is at most ``max_bytes`` (default :data:`MAX_BYTES`) and UTF-8 text;
- collections nest at most :data:`MAX_DEPTH` deep;
- aliases stand for at most :data:`MAX_ALIAS_NODES` nodes in all (an alias to a list of three
  scalars costs four); an alias inside its own anchor (a recursive structure) is refused;
- mapping keys are unique strings; integers fit in 64 signed bits; floats are finite;
- timestamps are kept as their text (``2026-11-08``), so a date field can validate them with its
  path and an impossible date is an ordinary validation error; ``!!set``, ``!!binary``,
  ``!!omap`` and ``!!pairs`` are refused (the values published from definitions are JSON).

The C parser (libyaml, as in ``yaml.CSafeLoader``) is used when PyYAML has it, the pure-Python
one otherwise.
A first pass over the parser's events (iterative, no nodes built) checks depth and aliases before
anything recursive runs; the garbage collector is paused while the document is built (millions of
small objects make its full collections quadratic).

Usage:
    >>> load_text("a: [1, 2.5, 2026-11-08]")
    {'a': [1, 2.5, '2026-11-08']}
    >>> try:
    ...     load_text("status: stopped\\nstatus: running")
    ... except YamlProblem as exc:
    ...     print(exc.where, "|", exc.message)
    line 2 | duplicate key 'status' (first at line 1)
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode

from strata.errors import StrataError

#: Largest file read, in bytes (1 MiB: about a thousand experiments; split bigger sets into files).
MAX_BYTES = 1 << 20
#: Deepest nesting of mappings and sequences (a rule tree of about 30 levels fits).
MAX_DEPTH = 64
#: Most nodes that all aliases of one document may stand for once expanded.
MAX_ALIAS_NODES = 10_000
_INT64 = (-(1 << 63), (1 << 63) - 1)
_REFUSED_TAGS = ("set", "binary", "omap", "pairs")


class YamlProblem(StrataError):
    """A YAML document refused: ``where`` is ``line N`` (or ``<root>`` for the whole file)."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}" if mark is not None else "<root>"


class _Refused(ConstructorError):
    """A well-formed document this loader refuses (not "invalid YAML")."""


def _refuse(at: Node | NodeEvent, message: str) -> _Refused:
    # libyaml's C Mark has the same fields as yaml.error.Mark; the stubs type them apart
    return _Refused(None, None, message, at.start_mark)  # type: ignore[arg-type]


class _StrictConstructor(SafeConstructor):
    """SafeConstructor for JSON-like data: unique string keys, bounded numbers, dates as text."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges; explicit keys override merged ones (YAML 1.1)
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _refuse(
                    key_node,
                    f"mapping key {key!r} is a {type(key).__name__}, not a string (quote it)",
                )
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise _refuse(key_node, f"duplicate key {key!r} (first at line {first})")
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            value = super().construct_yaml_int(node)
        except ValueError:  # over Python's 4300-digit conversion limit
            value = None
        if value is None or not _INT64[0] <= value <= _INT64[1]:
            raise _refuse(node, f"integer {_short(node.value)} does not fit in 64 bits")
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _refuse(node, f"number {_short(node.value)} is not finite")
        return value

    def construct_yaml_timestamp(self, node: ScalarNode) -> str:  # type: ignore[override]
        return self.construct_scalar(node)

    def construct_refused(self, node: Node) -> Any:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise _refuse(node, f"tag {tag} is not allowed (use lists and mappings)")


for _name in ("int", "float", "timestamp"):
    _StrictConstructor.add_constructor(
        f"tag:yaml.org,2002:{_name}", getattr(_StrictConstructor, f"construct_yaml_{_name}")
    )
# The stubs bind a constructor's first argument to a Loader class; PyYAML calls it with the loader,
# which is a constructor too (the ignores below are that mismatch, nothing else).
for _name in _REFUSED_TAGS:
    _StrictConstructor.add_constructor(  # type: ignore[type-var]
        f"tag:yaml.org,2002:{_name}", _StrictConstructor.construct_refused
    )
# any other tag
_StrictConstructor.add_constructor(None, _StrictConstructor.construct_refused)  # type: ignore[type-var]
_StrictConstructor.add_constructor("tag:yaml.org,2002:value", SafeConstructor.construct_yaml_str)  # type: ignore[type-var]


class PyLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _StrictConstructor,
    yaml.resolver.Resolver,
):
    """The strict loader on PyYAML's pure-Python parser (the parser of ``yaml.SafeLoader``)."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _StrictConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


if yaml.__with_libyaml__:

    class CLoader(yaml.CSafeLoader, _StrictConstructor):
        """The strict loader on libyaml's parser (the parser of ``yaml.CSafeLoader``)."""

    #: The loader :func:`load_text` uses: the C one when PyYAML has libyaml (about 5x faster).
    LOADER: type = CLoader
else:  # pragma: no cover - PyYAML built without libyaml
    LOADER = PyLoader


def _short(text: str, width: int = 24) -> str:
    return text if len(text) <= width else f"{text[:width]}... ({len(text):,} characters)"


def _check_shape(loader: Any, max_depth: int, max_alias_nodes: int) -> None:
    """One pass over the events: nesting depth, recursive aliases, alias expansion budget."""
    nodes = 0  # nodes so far, aliases counted expanded
    alias_nodes = 0
    sizes: dict[str | None, int] = {}  # anchor -> expanded size of its node
    stack: list[tuple[str | None, int]] = []  # open collections: (anchor, nodes at start)
    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, AliasEvent):
            if any(anchor == event.anchor for anchor, _ in stack):
                raise _refuse(event, f"alias *{event.anchor} refers to its own anchor (recursive)")
            size = sizes.get(event.anchor, 1)  # an undefined alias: the composer names it
            nodes += size
            alias_nodes += size
            if alias_nodes > max_alias_nodes:
                raise _refuse(
                    event,
                    f"aliases stand for over {max_alias_nodes:,} nodes (at *{event.anchor})",
                )
        elif isinstance(event, CollectionStartEvent):
            nodes += 1
            stack.append((event.anchor, nodes))
            if len(stack) > max_depth:
                raise _refuse(event, f"nested more than {max_depth} levels deep")
        elif isinstance(event, CollectionEndEvent):
            anchor, start = stack.pop()
            if anchor is not None:
                sizes[anchor] = nodes - start + 1
        elif isinstance(event, NodeEvent):  # a scalar
            nodes += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_text(
    text: str, *, max_depth: int | None = None, max_alias_nodes: int | None = None
) -> Any:
    """The single YAML document in ``text`` (None when it is empty); :class:`YamlProblem` if not.

    Limits left None are the module's (:data:`MAX_DEPTH`, :data:`MAX_ALIAS_NODES`).
    """
    try:
        _check_shape(LOADER(text), max_depth or MAX_DEPTH, max_alias_nodes or MAX_ALIAS_NODES)
        loader = LOADER(text)
        with _gc_paused():
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
    except _Refused as exc:
        raise YamlProblem(_line(exc.problem_mark), str(exc.problem)) from None
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_line(exc.problem_mark), f"not valid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # e.g. a control character; libyaml counts bytes
        if LOADER is not PyLoader:
            line = text.encode("utf-8")[: exc.position].count(b"\n") + 1
        else:
            line = text[: exc.position].count("\n") + 1
        raise YamlProblem(f"line {line}", f"not valid YAML: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem("<root>", f"not valid YAML: {exc}") from None


def read_text(path: Path, *, max_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path``, at most ``max_bytes`` (:data:`MAX_BYTES`) long, or
    :class:`YamlProblem`."""
    max_bytes = max_bytes or MAX_BYTES
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = path.stat().st_size
        raise YamlProblem(
            "<root>",
            f"file is {size:,} bytes, over the {max_bytes:,}-byte limit; split it into files",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlProblem(
            f"line {line}",
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {column} ({exc.reason})",
        ) from None


def load_file(path: Path, *, max_bytes: int | None = None) -> Any:
    """Read and parse one YAML file under the limits above; :class:`YamlProblem` if refused."""
    return load_text(read_text(path, max_bytes=max_bytes))
