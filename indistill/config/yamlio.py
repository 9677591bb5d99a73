"""Strict YAML files: plain YAML only, no duplicate keys, errors in one line naming file, line and key.

:func:`load_yaml_file` reads a user's YAML (a config, a search space) and returns a
:class:`YamlDoc`: the data plus the line of every key, so that a later validation error about a
field (``student.curriculum.losses[1]: unknown loss``) can be reported at the line that set it
(:meth:`YamlDoc.blame`). Refused, each with a :class:`~indistill.common.errors.ConfigError`:

- a file that is missing, a directory, unreadable, binary or not UTF-8;
- an empty document (nothing but comments) where content is required;
- a syntax error, a tag (``!!python/object`` ...), several documents;
- a key given twice in one mapping;
- a top level that is not a mapping.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from indistill.common.io import read_named_file
from indistill.common.errors import ConfigError

Key = tuple  # a path of mapping keys and sequence indices, e.g. ("student", "curriculum", "losses", 1)


@dataclass
class YamlDoc:
    """A parsed YAML file: ``data`` and the 1-based line of every key and list item under it."""

    path: Path
    data: Any
    lines: dict[Key, int] = field(default_factory=dict)

    def line_of(self, dotted: str) -> int | None:
        """The line that sets ``dotted`` (``a.b[2].c``) or, failing that, its nearest enclosing key."""
        key = split_field(dotted)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None

    def locate(self, dotted: str | None) -> str:
        """``<file>:<line>`` of ``dotted`` where the file sets it (or an enclosing key), else ``<file>``."""
        line = self.line_of(dotted) if dotted else None
        return f"{self.path}:{line}" if line else str(self.path)

    @contextlib.contextmanager
    def blame(self, unless: Mapping | None = None) -> Iterator[None]:
        """Prefix a ConfigError raised inside with this file (and the line of the field it names).

        ``unless``: values that came from elsewhere (command-line overrides, nested like the
        file): an error about a field they set is not this file's.
        """
        try:
            yield
        except ConfigError as exc:
            where = exc.where
            if str(exc).startswith(str(self.path)) or (where and unless and _sets(unless, split_field(where))):
                raise
            raise exc.prefixed(self.locate(where)) from None


def _sets(mapping: Mapping, key: Key) -> bool:
    """Whether ``mapping`` (nested) sets ``key`` or one of its enclosing keys to a plain value."""
    node: Any = mapping
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, Mapping):
            return True
    return True


_FIELD = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_field(dotted: str) -> Key:
    """``"student.curriculum.losses[1]"`` -> ``("student", "curriculum", "losses", 1)``."""
    parts: list = []
    for name, index in _FIELD.findall(dotted.strip()):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _mark(exc: yaml.MarkedYAMLError) -> yaml.Mark | None:
    return exc.problem_mark or exc.context_mark


def _syntax_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = _mark(exc)
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "syntax error"
        tag = re.search(r"constructor for the tag '(?:tag:yaml\.org,2002:)?([^']+)'", problem)
        if tag:
            name = tag.group(1)
            shown = f"!!{name}" if not name.startswith("!") else name
            return ConfigError(f"{loc}: not valid YAML: the tag {shown} is not allowed (plain YAML only: "
                               f"mappings, lists, strings, numbers, booleans, null)", where=str(path))
        if exc.context and exc.problem:
            problem = (f"{problem} ({exc.context})" if exc.context.startswith("while")
                       else f"{exc.context}, {problem}")
        return ConfigError(f"{loc}: not valid YAML: {problem}", where=str(path))
    return ConfigError(f"{path}: not valid YAML: {exc}", where=str(path))


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file the user named; one-line errors for anything else."""
    path = Path(path).expanduser()
    raw = read_named_file(path, what, ConfigError)
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"{path}: a binary file, not a {what} (YAML text): byte {nul} is NUL", where=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a {what} (YAML text): byte {exc.start} is not UTF-8", where=str(path)) from None
    return text[1:] if text.startswith("\ufeff") else text


def load_yaml_file(path: str | Path, what: str = "config", *, required: bool = True) -> YamlDoc:
    """Read a user's YAML file strictly; the top level must be a mapping.

    ``required``: an empty document (nothing, or only comments) is an error; otherwise it
    reads as an empty mapping.
    """
    path = Path(path).expanduser()
    return parse_yaml(read_text_file(path, what), path, what, required=required)


def parse_yaml(text: str, path: str | Path, what: str = "config", *, required: bool = True) -> YamlDoc:
    """:func:`load_yaml_file` for text already read (``path`` names where it came from)."""
    path = Path(path) if "://" not in str(path) else path
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            if required:
                raise ConfigError(f"{path}: the {what} file is empty; it needs at least one key", where=str(path))
            return YamlDoc(path, {})
        lines: dict[Key, int] = {}
        _walk(path, node, (), lines)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _syntax_error(path, exc) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string"}.get(type(data), type(data).__name__)
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: expected a mapping of keys at the top level of the "
                          f"{what}, got {kind}", where=str(path))
    if required and not data:
        raise ConfigError(f"{path}: the {what} is an empty mapping; it needs at least one key", where=str(path))
    return YamlDoc(path, data, lines)


def _scalar_key(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    return None


def _walk(path: Path, node: yaml.Node, key: Key, lines: dict[Key, int]) -> None:
    """Record the line of every key and item; refuse a key given twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k_node, v_node in node.value:
            if k_node.tag == "tag:yaml.org,2002:merge":
                continue
            name = _scalar_key(k_node)
            line = k_node.start_mark.line + 1
            if name is not None:
                if name in seen:
                    dotted = _dotted(key + (name,))
                    raise ConfigError(f"{path}:{line}: {dotted}: duplicate key (first given at line {seen[name]}); "
                                      f"give each key once", where=dotted)
                seen[name] = line
                lines[key + (name,)] = line
                _walk(path, v_node, key + (name,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[key + (i,)] = item.start_mark.line + 1
            _walk(path, item, key + (i,), lines)


def _dotted(key: Key) -> str:
    out = ""
    for part in key:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
