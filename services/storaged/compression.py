"""From a stored blob to the verified, uncompressed tar stream — streaming, never buffered whole."""

from __future__ import annotations

import collections
import contextlib
import enum
import gzip
import hashlib
import re
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from shared.errors import InvalidArgument


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


# image-spec media-types.md and Docker "Image Manifest V2, Schema 2".
LAYER_MEDIA_TYPES: dict[str, Compression] = {
    "application/vnd.oci.image.layer.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
}

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAGIC_BYTES = 4

_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_CHUNK = 1 << 20
# Compressed bytes per zlib call: small enough that the unconsumed tail zlib copies on
# every bounded call stays small, large enough to keep calls few.
_GZIP_READ = 128 << 10
_RECENT_CHUNKS = 8  # tarfile reads ahead at most one 256 KiB read (unpack._TAR_READ): covered many times over
# A hostile zstd frame may declare a huge window; 128 MiB is zstd's own default
# limit, and real layers (levels 1-19) use 8 MiB or less.
_ZSTD_MAX_WINDOW = 1 << 27


def check_digest(value: str, what: str) -> None:
    if not _DIGEST.match(value):
        raise InvalidArgument(f"{what} {value!r:.150} is not a sha256/sha512 digest")


def compression_for(media_type: str, magic: bytes) -> Compression:
    """How to read a layer blob: its first bytes decide, its media type only has to be a layer's.

    Registries and old tools mislabel compression (a "tar.gzip" that is plain tar);
    the diff_id check after decompression is what proves the content, so trusting
    the magic bytes costs nothing and accepts those images.
    """
    if media_type and media_type not in LAYER_MEDIA_TYPES:
        raise InvalidArgument(f"media type {media_type!r} is not a supported layer type")
    if magic.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if magic.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


class VerifyingReader:
    """Reads the uncompressed stream, hashing every byte and naming decompression errors.

    tarfile's stream mode reads through this; `only_padding_after` then hashes what
    follows the end of the archive, since the diff_id covers the whole stream.
    """

    def __init__(self, source: BinaryIO, digest: str) -> None:
        self._source = source
        algorithm, _, self._expected = digest.partition(":")
        self._hash = hashlib.new(algorithm)
        self.size = 0
        # The last chunks handed out: tarfile reads ahead of where it stops, and what it
        # read past the archive's end must be checked too.
        self._recent: collections.deque[bytes] = collections.deque(maxlen=_RECENT_CHUNKS)

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._source.read(size)
        except (gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError) as exc:
            # A truncated gzip stream ends in EOFError; I/O errors of the disk pass through.
            raise InvalidArgument(f"layer does not decompress: {type(exc).__name__}: {exc}") from None
        self._hash.update(data)
        self.size += len(data)
        self._recent.append(data)
        return data

    def only_padding_after(self, offset: int) -> bool:
        """Read to the end; True when everything from `offset` on is zero bytes.

        Entries behind a corrupt header would otherwise be dropped without a word:
        tarfile takes a bad header for the end of the archive.
        """
        recent = b"".join(self._recent)
        start = offset - (self.size - len(recent))
        if start < 0 or recent[start:].strip(b"\0"):
            return False
        only_zeros = True
        while data := self.read(_CHUNK):
            only_zeros = only_zeros and not data.strip(b"\0")
        return only_zeros

    @property
    def matches(self) -> bool:
        return self._hash.hexdigest() == self._expected

    @property
    def digest(self) -> str:
        return f"{self._hash.name}:{self._hash.hexdigest()}"


class GzipStream:
    """A gzip blob's uncompressed bytes, in reads of up to 1 MiB.

    gzip.GzipFile decompresses through an 8 KiB buffer and computes its CRC in a
    separate pass: ~6,000 Python-level calls per 50 MB layer. Here zlib parses the
    gzip framing and checks the CRC itself, one call per read. Output per call is
    bounded (`max_length`), so a decompression bomb never lands in memory at once.
    Members follow each other (RFC 1952 §2.2); zero padding after the last is allowed,
    as gzip(1) and Python's gzip module allow it.
    """

    def __init__(self, blob: BinaryIO) -> None:
        self._blob = blob
        self._inflate = zlib.decompressobj(wbits=31)
        self._pending = b""  # compressed input not yet given to zlib

    def read(self, size: int = -1) -> bytes:
        size = _CHUNK if size is None or size < 0 else size
        while True:
            if self._inflate.eof:
                # Skip zero padding; a new member may follow it.
                rest = (self._inflate.unused_data + self._pending).lstrip(b"\0")
                while not rest:
                    more = self._blob.read(_GZIP_READ)
                    if not more:
                        return b""
                    rest = more.lstrip(b"\0")
                self._inflate = zlib.decompressobj(wbits=31)
                self._pending = rest
            if self._inflate.unconsumed_tail:
                data = self._inflate.decompress(self._inflate.unconsumed_tail, size)
            else:
                chunk = self._pending or self._blob.read(_GZIP_READ)
                self._pending = b""
                if not chunk:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                data = self._inflate.decompress(chunk, size)
            if data:
                return data


@contextlib.contextmanager
def decompressed(blob: BinaryIO, compression: Compression) -> Iterator[BinaryIO]:
    """The uncompressed stream of `blob`; read incrementally, with bounded memory."""
    if compression is Compression.GZIP:
        yield GzipStream(blob)  # type: ignore[misc]
    elif compression is Compression.ZSTD:
        dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        with dctx.stream_reader(blob, read_size=_CHUNK, read_across_frames=True, closefd=False) as stream:
            yield stream
    else:
        yield blob
