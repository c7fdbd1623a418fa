"""The one error model of criplex.

Every failure that crosses a process boundary is one of these types. Each type
carries a `Code` whose names are gRPC's status codes, so the gateway maps an
error to the kubelet's status in exactly one place (`services.gateway.instrument`)
and a daemon's error survives the nng hop unchanged (`to_wire` / `from_wire`).
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Code(enum.Enum):
    """Status codes, named and numbered as gRPC's (google.rpc.Code)."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class CriplexError(Exception):
    """Base of every expected failure; `code` says how callers should react."""

    code: ClassVar[Code] = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> list[object]:
        return [self.code.value, type(self).__name__, self.message]


class InvalidArgument(CriplexError):
    code = Code.INVALID_ARGUMENT


class NotFound(CriplexError):
    code = Code.NOT_FOUND


class AlreadyExists(CriplexError):
    code = Code.ALREADY_EXISTS


class FailedPrecondition(CriplexError):
    code = Code.FAILED_PRECONDITION


class PermissionDenied(CriplexError):
    code = Code.PERMISSION_DENIED


class Unauthenticated(CriplexError):
    code = Code.UNAUTHENTICATED


class ResourceExhausted(CriplexError):
    code = Code.RESOURCE_EXHAUSTED


class Unavailable(CriplexError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(CriplexError):
    code = Code.DEADLINE_EXCEEDED


class Unimplemented(CriplexError):
    code = Code.UNIMPLEMENTED


class Aborted(CriplexError):
    code = Code.ABORTED


class DataLoss(CriplexError):
    code = Code.DATA_LOSS


class Internal(CriplexError):
    code = Code.INTERNAL


class ConfigError(CriplexError):
    """A configuration file or value is wrong; services exit non-zero on it."""

    code = Code.INVALID_ARGUMENT


_BY_CODE: dict[int, type[CriplexError]] = {}
for _cls in (
    InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, PermissionDenied, Unauthenticated,
    ResourceExhausted, Unavailable, DeadlineExceeded, Unimplemented, Aborted, DataLoss, Internal,
):
    _BY_CODE[_cls.code.value] = _cls


def from_wire(data: object) -> CriplexError:
    """Rebuild an error a peer sent; an unreadable one is itself an internal error."""
    if isinstance(data, list) and len(data) == 3 and isinstance(data[0], int) and isinstance(data[2], str):
        cls = _BY_CODE.get(data[0], Internal)
        return cls(data[2])
    return Internal(f"malformed error from peer: {data!r:.200}")
