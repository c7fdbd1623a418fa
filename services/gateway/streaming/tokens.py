"""Single-use tokens naming a prepared streaming session, as the kubelet's streaming server keeps them.

The gateway asks for a session and returns its URL to the kubelet; the URL is the only
credential, so a token is random, good for one connection, short-lived, and their number
is capped so a flood of Exec calls that are never followed up cannot grow memory.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from shared.errors import ResourceExhausted

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    request: T
    expires_at: float


class TokenCache(Generic[T]):
    def __init__(self, ttl: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def insert(self, request: T) -> str:
        self._expire()
        if len(self._entries) >= self._capacity:
            raise ResourceExhausted(f"{self._capacity} streaming sessions are already waiting for their client")
        while (token := _new_token()) in self._entries:
            pass
        self._entries[token] = _Entry(request, self._clock() + self._ttl)
        return token

    def consume(self, token: str) -> T | None:
        """The request for `token`, once: None when unknown, expired or already used."""
        self._expire()
        entry = self._entries.pop(token, None)
        return entry.request if entry is not None else None

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            del self._entries[token]


def _new_token() -> str:
    # 8 URL-safe characters from 6 random bytes, as the kubelet's request cache makes them.
    return base64.urlsafe_b64encode(secrets.token_bytes(6)).decode().rstrip("=")
