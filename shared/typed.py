"""Strict conversion between plain data (msgpack, TOML) and typed dataclasses.

Both the nng wire (`shared.wire`) and the configuration (`shared.config`) turn
untrusted plain data into dataclasses here, so "wrong type", "unknown key" and
"missing key" are detected and worded the same way everywhere. Converters are
built once per type and cached: this runs on every daemon call.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

Converter = Callable[[Any, str], Any]


class ShapeError(ValueError):
    """Plain data does not have the shape of the type; `path` names the place."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '<root>'}: {problem}")
        self.path = path
        self.problem = problem


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp).replace("typing.", "")


@cache
def converter(tp: Any) -> Converter:
    """Return a function `(plain, path) -> typed` for `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return lambda v, p: v
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        optional = len(members) != len(args)
        if len(members) != 1:
            raise TypeError(f"unsupported union {tp}")
        inner = converter(members[0])

        def conv_optional(v: Any, p: str) -> Any:
            if v is None and optional:
                return None
            return inner(v, p)

        return conv_optional
    if origin is list or origin is tuple:
        item = converter(args[0])
        make = list if origin is list else tuple

        def conv_seq(v: Any, p: str) -> Any:
            if not isinstance(v, list | tuple):
                raise ShapeError(p, f"expected a list, got {type(v).__name__}")
            return make(item(x, f"{p}[{i}]") for i, x in enumerate(v))

        return conv_seq
    if origin is dict:
        val = converter(args[1])

        def conv_map(v: Any, p: str) -> Any:
            if not isinstance(v, dict):
                raise ShapeError(p, f"expected a table, got {type(v).__name__}")
            out = {}
            for k, x in v.items():
                if not isinstance(k, str):
                    raise ShapeError(p, f"keys must be strings, got {k!r}")
                out[k] = val(x, _join(p, k))
            return out

        return conv_map
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members_by_value = {m.value: m for m in tp}
        members_by_name = {m.name: m for m in tp}

        def conv_enum(v: Any, p: str) -> Any:
            if isinstance(v, tp):
                return v
            m = members_by_value.get(v) if isinstance(v, int | str) else None
            if m is None and isinstance(v, str):
                m = members_by_name.get(v)
            if m is None:
                choices = ", ".join(repr(x) for x in members_by_value)
                raise ShapeError(p, f"expected one of {choices}, got {v!r}")
            return m

        return conv_enum
    if tp is float:

        def conv_float(v: Any, p: str) -> Any:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ShapeError(p, f"expected a number, got {type(v).__name__} {v!r}")
            return float(v)

        return conv_float
    if tp in (str, int, bool, bytes):

        def conv_scalar(v: Any, p: str) -> Any:
            # bool is an int in Python; a TOML `true` must not pass as a number.
            if type(v) is not tp and not (tp is bytes and isinstance(v, bytes)):
                raise ShapeError(p, f"expected {_type_name(tp)}, got {type(v).__name__} {v!r:.80}")
            return v

        return conv_scalar
    raise TypeError(f"no converter for {tp!r}")


def _dataclass_converter(cls: type) -> Converter:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    plan = [
        (
            f.name,
            converter(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in fields
    ]
    known = {f.name for f in fields}

    def conv_dataclass(v: Any, p: str) -> Any:
        if isinstance(v, cls):
            return v
        if not isinstance(v, dict):
            raise ShapeError(p, f"expected a table for {cls.__name__}, got {type(v).__name__}")
        unknown = [k for k in v if k not in known]
        if unknown:
            raise ShapeError(_join(p, str(unknown[0])), f"unknown key (known: {', '.join(sorted(known))})")
        kwargs = {}
        for name, conv, required in plan:
            if name in v:
                kwargs[name] = conv(v[name], _join(p, name))
            elif required:
                raise ShapeError(_join(p, name), "missing")
        return cls(**kwargs)

    return conv_dataclass


def from_plain(tp: type[T], data: Any, path: str = "") -> T:
    """Convert untrusted plain data into `tp`, raising `ShapeError` on any mismatch."""
    result: T = converter(tp)(data, path)
    return result


def to_plain(obj: Any) -> Any:
    """Turn dataclasses, enums and tuples into msgpack/TOML-friendly plain data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, list | tuple):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
