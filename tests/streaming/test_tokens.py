"""Streaming tokens: single use, short-lived, capped."""

from __future__ import annotations

import pytest

from services.gateway.streaming.tokens import TokenCache
from shared.errors import ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_good_once():
    cache: TokenCache[str] = TokenCache(60, 10)
    token = cache.insert("exec")
    assert len(token) == 8
    assert cache.consume(token) == "exec"
    assert cache.consume(token) is None


def test_a_token_expires_after_its_ttl():
    clock = Clock()
    cache: TokenCache[str] = TokenCache(60, 10, clock)
    token = cache.insert("exec")
    clock.now = 60.5
    assert cache.consume(token) is None
    assert len(cache) == 0


def test_outstanding_tokens_are_capped_until_some_expire():
    clock = Clock()
    cache: TokenCache[int] = TokenCache(60, 3, clock)
    for i in range(3):
        cache.insert(i)
    with pytest.raises(ResourceExhausted):
        cache.insert(4)
    clock.now = 61
    assert cache.insert(5)
