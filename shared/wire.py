"""The envelope every nng message travels in, and the typed method descriptor.

A daemon's public surface is a set of `Method`s declared in `shared.schema.*`;
client and server both use the same descriptor, so neither side ever builds an
envelope by hand.

Request  = [VERSION, method: str, deadline: float (unix s, 0 = none), traceparent: str, args: map,
            call: bytes (the caller's id for this call, what a cancellation names; may be empty)]
Response = [ok: bool, result map | error [code, type, message]]
Event    = topic bytes + b"\\0" + msgpack [epoch: bytes, seq: int, payload map]

Version skew: a daemon restarted on newer code must keep working with older peers.
Envelopes only ever grow at their end, and a reader ignores trailing elements it does
not know; messages are parsed leniently (`parse`): unknown fields are ignored, missing
ones take their defaults, and only a missing required field is an error.

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
    call: bytes = b""


@dataclass(frozen=True)
class Event:
    topic: str
    epoch: bytes | None  # None: from a publisher that predates epochs and sequence numbers
    seq: int
    payload: Any


def encode_request(method: Method[Any, Any], deadline: float, traceparent: str, args: object,
                   call: bytes = b"") -> bytes:
    return msgpack.packb([VERSION, method.name, deadline, traceparent, to_plain(args), call])


def decode_request(data: bytes) -> Request:
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise InvalidArgument(f"undecodable request: {exc}") from None
    if not (isinstance(raw, list) and len(raw) >= 5 and raw[0] == VERSION):
        raise InvalidArgument("request envelope has the wrong shape or version")
    method, deadline, traceparent, args = raw[1:5]
    call = raw[5] if len(raw) > 5 else b""
    if not (isinstance(method, str) and isinstance(deadline, int | float)
            and isinstance(traceparent, str) and isinstance(args, dict) and isinstance(call, bytes)):
        raise InvalidArgument("request envelope has fields of the wrong type")
    return Request(method, float(deadline), traceparent, args, call)


def encode_response(result: object) -> bytes:
    return msgpack.packb([True, to_plain(result)])


def encode_error(error: CriplexError) -> bytes:
    return msgpack.packb([False, error.to_wire()])


def decode_response(data: bytes, method: Method[Any, Resp]) -> Resp:
    """Return the typed result or raise the peer's error."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise InvalidArgument(f"undecodable response to {method.name}: {exc}") from None
    if not (isinstance(raw, list) and len(raw) >= 2):
        raise InvalidArgument(f"response to {method.name} has the wrong shape")
    ok, payload = raw[0], raw[1]
    if not ok:
        raise from_wire(payload)
    return parse(method.response, payload, method.name)


def parse(tp: type[Req], plain: Any, where: str) -> Req:
    """Convert a peer's plain data into `tp`, tolerating a peer of another version (see above)."""
    try:
        return from_plain(tp, plain, lenient=True)
    except ShapeError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def encode_event(topic: str, epoch: bytes, seq: int, payload: object) -> bytes:
    return topic.encode() + b"\0" + msgpack.packb([epoch, seq, to_plain(payload)])


def decode_event(data: bytes) -> Event:
    topic, _, body = data.partition(b"\0")
    try:
        raw = msgpack.unpackb(body, raw=False)
        name = topic.decode()
    except Exception as exc:
        raise InvalidArgument(f"undecodable event: {exc}") from None
    # Payloads are maps, so a map here is a whole event from a publisher without epochs.
    if isinstance(raw, dict):
        return Event(name, None, 0, raw)
    if not (isinstance(raw, list) and len(raw) >= 3 and isinstance(raw[0], bytes) and type(raw[1]) is int):
        raise InvalidArgument(f"event on {name!r} has the wrong shape")
    return Event(name, raw[0], raw[1], raw[2])
