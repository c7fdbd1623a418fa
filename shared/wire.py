"""The envelope every nng message travels in, and the typed method descriptor.

A daemon's public surface is a set of `Method`s declared in `shared.schema.*`;
client and server both use the same descriptor, so neither side ever builds an
envelope by hand.

Request  = [VERSION, method: str, deadline: float (unix s, 0 = none), traceparent: str, args: map]
Response = [ok: bool, result map | error [code, type, message]]
Event    = topic bytes + b"\\0" + msgpack map  (pub/sub; topic prefix filters)

Requests are matched to replies by the nng header's request id (see shared.transport).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack

from shared.errors import CriplexError, InvalidArgument, from_wire
from shared.typed import ShapeError, from_plain, to_plain

VERSION = 1

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Method(Generic[Req, Resp]):
    """One call a daemon serves: its name on the wire and its typed messages."""

    name: str
    request: type[Req]
    response: type[Resp]


@dataclass(frozen=True)
class Request:
    method: str
    deadline: float
    traceparent: str
    args: dict[str, Any]


def encode_request(method: Method[Any, Any], deadline: float, traceparent: str, args: object) -> bytes:
    return msgpack.packb([VERSION, method.name, deadline, traceparent, to_plain(args)])


def decode_request(data: bytes) -> Request:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise InvalidArgument(f"undecodable request: {exc}") from None
    if not (isinstance(raw, list) and len(raw) == 5 and raw[0] == VERSION):
        raise InvalidArgument("request envelope has the wrong shape or version")
    _, method, deadline, traceparent, args = raw
    if not (isinstance(method, str) and isinstance(deadline, int | float)
            and isinstance(traceparent, str) and isinstance(args, dict)):
        raise InvalidArgument("request envelope has fields of the wrong type")
    return Request(method, float(deadline), traceparent, args)


def encode_response(result: object) -> bytes:
    return msgpack.packb([True, to_plain(result)])


def encode_error(error: CriplexError) -> bytes:
    return msgpack.packb([False, error.to_wire()])


def decode_response(data: bytes, method: Method[Any, Resp]) -> Resp:
    """Return the typed result or raise the peer's error."""
    try:
        ok, payload = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise InvalidArgument(f"undecodable response to {method.name}: {exc}") from None
    if not ok:
        raise from_wire(payload)
    return parse(method.response, payload, method.name)


def parse(tp: type[Req], plain: Any, where: str) -> Req:
    try:
        return from_plain(tp, plain)
    except ShapeError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def encode_event(topic: str, payload: object) -> bytes:
    return topic.encode() + b"\0" + msgpack.packb(to_plain(payload))


def decode_event(data: bytes) -> tuple[str, Any]:
    topic, _, body = data.partition(b"\0")
    return topic.decode(), msgpack.unpackb(body, raw=False)
