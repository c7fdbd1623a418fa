"""Conversion between plain data (msgpack, TOML) and typed dataclasses.

Both the nng wire (`shared.wire`) and the configuration (`shared.config`) turn
untrusted plain data into dataclasses here, so "wrong type", "unknown key" and
"missing key" are detected and worded the same way everywhere. Converters are
built once per type and cached: this runs on every daemon call.

Two modes. Strict (the configuration, records on disk): an unknown key is an error,
since it is most likely a typo. Lenient (messages from peers, see `shared.wire`): an
unknown key is a field added by a newer peer and is ignored, logged once per
(type, field) per process. In both, a missing key takes its default, and a missing
required key is an error.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

log = logging.getLogger(__name__)

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
def converter(tp: Any, lenient: bool = False) -> Converter:
    """Return a function `(plain, path) -> typed` for `tp`; `lenient` ignores unknown dataclass keys."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return lambda v, p: v
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        optional = len(members) != len(args)
        if len(members) != 1:
            raise TypeError(f"unsupported union {tp}")
        inner = converter(members[0], lenient)

        def conv_optional(v: Any, p: str) -> Any:
            if v is None and optional:
                return None
            return inner(v, p)

        return conv_optional
    if origin is list or origin is tuple:
        item = converter(args[0], lenient)
        make = list if origin is list else tuple

        def conv_seq(v: Any, p: str) -> Any:
            if not isinstance(v, list | tuple):
                raise ShapeError(p, f"expected a list, got {type(v).__name__}")
            return make(item(x, f"{p}[{i}]") for i, x in enumerate(v))

        return conv_seq
    if origin is dict:
        val = converter(args[1], lenient)

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
        return _dataclass_converter(tp, lenient)
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


# Past this many distinct unknown keys of one type, a peer is sending junk, not a newer schema.
_REPORT_AT_MOST = 32


def _dataclass_converter(cls: type, lenient: bool) -> Converter:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    plan = [
        (
            f.name,
            converter(hints[f.name], lenient),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in fields
    ]
    known = {f.name for f in fields}
    # The unknown keys already logged. It lives as long as this (cached) converter, that is, as
    # long as the process: a newer peer sends its new field on every call, and one line says it.
    reported: set[str] = set()

    def ignore(unknown: list[Any]) -> None:
        for key in map(str, unknown):
            if key not in reported and len(reported) < _REPORT_AT_MOST:
                reported.add(key)
                log.warning("ignoring field %r of %s from a peer: it is not in this version's schema",
                            key, cls.__name__)

    def conv_dataclass(v: Any, p: str) -> Any:
        if isinstance(v, cls):
            return v
        if not isinstance(v, dict):
            raise ShapeError(p, f"expected a table for {cls.__name__}, got {type(v).__name__}")
        unknown = [k for k in v if k not in known]
        if unknown:
            if not lenient:
                raise ShapeError(_join(p, str(unknown[0])), f"unknown key (known: {', '.join(sorted(known))})")
            ignore(unknown)
        kwargs = {}
        for name, conv, required in plan:
            if name in v:
                kwargs[name] = conv(v[name], _join(p, name))
            elif required:
                raise ShapeError(_join(p, name), "missing")
        return cls(**kwargs)

    return conv_dataclass


def from_plain(tp: type[T], data: Any, path: str = "", *, lenient: bool = False) -> T:
    """Convert untrusted plain data into `tp`, raising `ShapeError` on any mismatch.

    `lenient` ignores keys `tp` does not know (data from a peer of another version).
    """
    result: T = converter(tp, lenient)(data, path)
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
