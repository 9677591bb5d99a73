"""Typed dataclasses from plain dicts (YAML), with errors that name the field.

pydantic validates, from the dataclass's own schema (``pydantic.TypeAdapter(cls).core_schema``)
with these rules set on it (:func:`_with_rules`):

- bool, int, float, str and ``Literal`` values are strict: no conversion between them, except an
  int for a float, which becomes a float;
- a tuple takes a list or a tuple (not a string or a set);
- a section (a dataclass) takes a dict only, ``None`` meaning its class's defaults; a ``dict``
  field takes a dict, ``None`` meaning ``{}``;
- an unknown key is an error; a union takes the first member that accepts the value.

The first error (unknown keys by name, then missing keys in field order, then fields in the order
the input gives them, a section's own ``__post_init__`` check last) becomes one
:class:`ConfigError` worded by :data:`_MESSAGES` and naming the dotted field path
(``student.curriculum.epochs[1]: ...``), which :meth:`YamlDoc.blame` turns into the file's line.
A ``ValueError`` or ``TypeError`` of ``__post_init__`` (``"field: problem"``) gets the section's
path in front; a ``ConfigError`` there is kept as it is.
"""
from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

import pydantic
from pydantic_core import PydanticCustomError, SchemaValidator, core_schema

from indistill.common.errors import ConfigError


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    try:
        return _validator(cls).validate_python(data)
    except pydantic.ValidationError as exc:
        errors = [_explain(cls, data, path, e) for e in exc.errors(include_url=False)]
        raise min(errors, key=lambda e: e[0])[1] from None


def to_dict(obj: Any) -> Any:
    """Plain (YAML-safe) structure of a config dataclass.

    Not pydantic's ``dump_python(mode="json")``, which would also turn a ``dict`` field's keys
    into strings and its NaNs into nulls.
    """
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------- the schema


def _section(value: Any, handler: core_schema.ValidatorFunctionWrapHandler) -> Any:
    """A dataclass from a dict (``None``: its defaults)."""
    if value is None:
        value = {}
    elif not isinstance(value, dict):
        raise PydanticCustomError("dataclass_type", "expected a mapping")
    try:
        return handler(value)
    except TypeError as exc:  # from __post_init__ or a default factory: reported as its ValueError would be
        raise PydanticCustomError("value_error", "{error}", {"error": exc}) from None


def _mapping(value: Any) -> Any:
    """``None`` for a ``dict`` field is ``{}``."""
    return {} if value is None else value


def _sequence(value: Any) -> Any:
    """A YAML list for a tuple field (anything else meets pydantic's strict tuple check)."""
    return tuple(value) if isinstance(value, list) else value


#: schema types -> the conversion run before pydantic's own validation of that type
_BEFORE: dict[str, Callable[[Any], Any]] = {"dict": _mapping, "tuple": _sequence}
_STRICT = {"bool", "int", "float", "str", "literal", "dict", "tuple"}
#: keys of a schema node that hold values, not schemas
_DATA = {"default", "expected", "metadata", "config", "cls"}


def _with_rules(schema: Any) -> Any:
    """pydantic's core schema ``schema`` with the module's coercion rules set on every node."""
    if isinstance(schema, list):
        return [_with_rules(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _DATA else _with_rules(v) for k, v in schema.items()}
    kind = out.get("type")
    if kind in _STRICT:
        out["strict"] = True
    elif kind == "dataclass-args":
        out["extra_behavior"] = "forbid"
    elif kind == "union":
        out["mode"] = "left_to_right"
    if kind not in _BEFORE and kind not in ("dataclass", "union"):
        return out
    # a wrapped node's definition reference moves to the wrapper, where pydantic looks it up
    ref = out.pop("ref", None)
    if kind == "dataclass":
        return core_schema.no_info_wrap_validator_function(_section, out, ref=ref)
    if kind == "union":
        return core_schema.custom_error_schema(out, "union_invalid", custom_error_message="invalid value", ref=ref)
    return core_schema.no_info_before_validator_function(_BEFORE[kind], out, ref=ref)


@functools.cache
def _validator(cls: type) -> SchemaValidator:
    return SchemaValidator(_with_rules(pydantic.TypeAdapter(cls).core_schema))


# ----------------------------------------------------------------------------- the errors

#: pydantic's error type -> the message after ``<field>: `` (``{v}``: the value, ``{n}``: its type's name)
_MESSAGES = {
    "bool_type": "expected true or false, got {v!r}",
    "int_type": "expected an integer, got {v!r}",
    "float_type": "expected a number, got {v!r}",
    "string_type": "expected a string, got {v!r}",
    "tuple_type": "expected a list, got {v!r}",
    "dict_type": "expected a mapping, got {v!r}",
    "dataclass_type": "expected a mapping, got {n}",
    "union_invalid": "invalid value {v!r}",
}


def _without_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """The init fields of dataclass ``cls`` and their types, in order."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _item_type(tp: Any, index: int) -> Any:
    args = get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return args[index] if index < len(args) else Any


def _explain(cls: type, data: Any, path: str, error: Any) -> tuple[list, ConfigError]:
    """(sort key, one-line error) of one pydantic error about ``data`` as ``cls``.

    The sort key orders errors as a depth-first check would meet them: at a section, unknown keys
    (by name) before missing keys (in field order) before fields (in the input's order).
    """
    loc, kind, value = error["loc"], error["type"], error["input"]
    if kind == "missing" and loc and isinstance(loc[-1], int):  # an item short of a fixed-length tuple
        loc, kind = loc[:-1], "too_short"
    tp, node, where, key = cls, data, path, []
    inside, section = "", cls
    for part in loc:
        tp = _without_none(tp)
        inside = f" in {where}" if where else " at the top level"
        if dataclasses.is_dataclass(tp):
            section, fields, node = tp, _fields(tp), node if isinstance(node, dict) else {}
            if part not in fields:
                key.append((0, str(part)))
            elif part not in node:
                key.append((1, list(fields).index(part)))
            else:
                key.append((2, list(node).index(part)))
            where = f"{where}.{part}" if where else str(part)
            tp, node = fields.get(part, Any), node.get(part)
        elif isinstance(part, int):  # an item of a tuple
            key.append((2, part))
            where = f"{where}[{part}]"
            node = node[part] if isinstance(node, (list, tuple)) and part < len(node) else None
            tp = _item_type(tp, part)
        else:
            key.append((2, str(part)))
            where, node, tp = f"{where}.{part}", None, Any
    tp, at = _without_none(tp), where or "config"
    if kind in ("unexpected_keyword_argument", "invalid_key"):
        message = f"unknown key {loc[-1]!r}{inside}; allowed keys: {', '.join(_fields(section))}"
        return key, ConfigError(f"{where}: {message}", where=where)
    if kind == "missing":
        return key, ConfigError(f"{where}: required key missing{inside}", where=where)
    if kind in ("too_short", "too_long"):
        return key, ConfigError(f"{at}: expected {len(get_args(tp))} items, got {len(node)}")
    if kind == "literal_error":
        allowed = ", ".join(map(str, get_args(tp)))
        return key, ConfigError(f"{at}: {value!r} is not allowed; choose from: {allowed}")
    if kind == "assertion_error":  # a bug in a dataclass's own check, not the user's
        raise error["ctx"]["error"]
    if kind == "value_error":  # a dataclass's own check, worded "field: problem"
        cause = error["ctx"]["error"]
        if isinstance(cause, ConfigError):
            return key, cause
        return key, ConfigError(f"{where}.{cause}" if where else str(cause))
    if kind in _MESSAGES:
        return key, ConfigError(f"{at}: " + _MESSAGES[kind].format(v=value, n=type(value).__name__))
    return key, ConfigError(f"{at}: {error['msg']}")
