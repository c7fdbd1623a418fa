"""BlobReader following a file another thread is still writing, as imaged writes a download."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from services.storaged.blob_reader import BlobReader, Follow
from shared.errors import Aborted

PARTIAL = "blob.partial"
VERIFIED = "blob-verified"


class Writer:
    """Appends to a partial file in chunks whenever the test allows it, like a download."""

    def __init__(self, directory: Path, data: bytes) -> None:
        self.path = directory / PARTIAL
        self.data = data
        self.path.write_bytes(b"")
        self.written = 0

    def write(self, n: int) -> None:
        with self.path.open("ab") as f:
            f.write(self.data[self.written:self.written + n])
        self.written += n


def follow(tmp_path: Path, size: int) -> Follow:
    return Follow(tmp_path, size, VERIFIED)


def read_all(reader: BlobReader) -> bytes:
    out = bytearray()
    while chunk := reader.read(65536):
        out += chunk
    return bytes(out)


def in_thread(fn):
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_reads_wait_for_bytes_still_being_written_and_stop_at_the_size(tmp_path):
    data = os.urandom(300_000)
    writer = Writer(tmp_path, data + b"extra bytes past the manifest's size")
    reader = BlobReader.open(writer.path, follow(tmp_path, len(data)), threading.Event())
    thread, result = in_thread(lambda: read_all(reader))
    try:
        for _ in range(3):
            writer.write(100_000)
        writer.write(100)
        thread.join(30)
        assert not thread.is_alive()
        assert result["value"] == data
    finally:
        reader.close()


def test_magic_waits_for_the_first_bytes(tmp_path):
    writer = Writer(tmp_path, b"\x1f\x8b\x08\x00rest")
    reader = BlobReader.open(writer.path, follow(tmp_path, 8), threading.Event())
    thread, result = in_thread(lambda: reader.magic(4))
    try:
        writer.write(2)
        writer.write(6)
        thread.join(30)
        assert result["value"] == b"\x1f\x8b\x08\x00"
        assert reader.read() == b"\x1f\x8b\x08\x00rest"  # magic did not move the offset
    finally:
        reader.close()


def test_verified_once_the_same_file_is_linked(tmp_path):
    writer = Writer(tmp_path, b"0123456789")
    writer.write(10)
    reader = BlobReader.open(writer.path, follow(tmp_path, 10), threading.Event())
    thread, result = in_thread(reader.wait_verified)
    try:
        os.link(writer.path, tmp_path / VERIFIED)
        thread.join(30)
        assert not thread.is_alive() and "error" not in result
    finally:
        reader.close()


def test_another_file_under_the_verified_name_is_refused(tmp_path):
    writer = Writer(tmp_path, b"0123456789")
    writer.write(10)
    (tmp_path / VERIFIED).write_bytes(b"0123456789")
    reader = BlobReader.open(writer.path, follow(tmp_path, 10), threading.Event())
    try:
        with pytest.raises(Aborted, match="not the file that was read"):
            reader.wait_verified()
    finally:
        reader.close()


def test_a_download_dropped_instead_of_verified_aborts(tmp_path):
    writer = Writer(tmp_path, b"0123456789")
    writer.write(10)
    reader = BlobReader.open(writer.path, follow(tmp_path, 10), threading.Event())
    thread, result = in_thread(reader.wait_verified)
    try:
        writer.path.unlink()  # what imaged does when the digest does not match
        thread.join(30)
        assert isinstance(result.get("error"), Aborted)
    finally:
        reader.close()


def test_a_download_that_starts_over_aborts_the_read(tmp_path):
    writer = Writer(tmp_path, os.urandom(1000))
    writer.write(500)
    reader = BlobReader.open(writer.path, follow(tmp_path, 1000), threading.Event())
    try:
        assert len(read_all_available(reader, 500)) == 500
        thread, result = in_thread(lambda: reader.read(100))
        os.truncate(writer.path, 0)
        thread.join(30)
        assert isinstance(result.get("error"), Aborted)
        assert "started over" in str(result["error"])
    finally:
        reader.close()


def read_all_available(reader: BlobReader, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += reader.read(n - len(out))
    return bytes(out)


def test_a_stalled_download_aborts_after_the_stall_limit(tmp_path):
    writer = Writer(tmp_path, b"x" * 100)
    writer.write(10)
    fd = os.open(writer.path, os.O_RDONLY)
    reader = BlobReader(fd, follow(tmp_path, 100), threading.Event(), stall_s=0.5)
    try:
        assert reader.read(10) == b"x" * 10
        started = time.monotonic()
        with pytest.raises(Aborted, match="no progress"):
            reader.read(10)
        assert time.monotonic() - started < 10
    finally:
        reader.close()


@pytest.mark.parametrize("how", ["abandon", "cancel"])
def test_abandon_or_stop_wakes_a_waiting_read(tmp_path, how):
    writer = Writer(tmp_path, b"x" * 100)
    cancel = threading.Event()
    reader = BlobReader.open(writer.path, follow(tmp_path, 100), cancel)
    thread, result = in_thread(lambda: reader.read(10))
    try:
        if how == "abandon":
            reader.abandon()
        else:
            cancel.set()
        thread.join(10)
        assert not thread.is_alive()
        assert isinstance(result.get("error"), Aborted)
    finally:
        reader.close()


def test_a_complete_blob_reads_to_its_end_without_waiting(tmp_path):
    path = tmp_path / "complete"
    path.write_bytes(b"abc" * 1000)
    reader = BlobReader.open(path, None, threading.Event())
    try:
        assert not reader.streaming
        assert reader.magic(4) == b"abca"
        assert read_all(reader) == b"abc" * 1000
        reader.wait_verified()  # nothing to wait for
    finally:
        reader.close()
