"""storaged's own gzip reader: members, padding, truncation and bounded reads."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest

from services.storaged.compression import GzipStream


def read_all(data: bytes, size: int = 1 << 16) -> bytes:
    stream = GzipStream(io.BytesIO(data))
    out = []
    while chunk := stream.read(size):
        assert len(chunk) <= size
        out.append(chunk)
    return b"".join(out)


def test_single_member_round_trips_in_bounded_reads():
    payload = os.urandom(300_000) + b"\0" * 500_000
    assert read_all(gzip.compress(payload), size=4096) == payload


def test_members_follow_each_other_and_zero_padding_is_allowed():
    a, b = os.urandom(1000), os.urandom(2000)
    data = gzip.compress(a) + b"\0" * 1024 + gzip.compress(b) + b"\0" * 300_000
    assert read_all(data) == a + b


def test_truncated_stream_is_an_error():
    data = gzip.compress(os.urandom(100_000))
    with pytest.raises(EOFError):
        read_all(data[:-100])


def test_corrupt_crc_is_an_error():
    data = bytearray(gzip.compress(b"hello world" * 1000))
    data[-8] ^= 0xFF  # the CRC32 in the member trailer
    with pytest.raises(zlib.error):
        read_all(bytes(data))


def test_garbage_after_the_stream_is_an_error():
    with pytest.raises(zlib.error):
        read_all(gzip.compress(b"x" * 100) + b"not gzip")
