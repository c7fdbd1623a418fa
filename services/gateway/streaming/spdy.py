"""SPDY/3.1 framing, sans I/O: frames to bytes and bytes to frames, nothing else.

Only what the kubelet's streaming clients (client-go over moby/spdystream) use: the framing
layer of draft-mbelshe-httpbis-spdy-00 §2 with its header compression (§2.6.10), and no
flow control (spdystream reads SETTINGS and WINDOW_UPDATE and ignores them, and never sends
WINDOW_UPDATE, so windows would only stall a peer that does not honour them).

Header blocks of both directions each go through ONE zlib stream for the life of the
connection, primed with the SPDY/3 dictionary and sync-flushed after every block (§2.6.10.1).
So a `FrameWriter` and a `FrameReader` belong to exactly one connection and one direction,
and a header block that fails to inflate spoils the whole connection (`SessionError`).
"""

from __future__ import annotations

import enum
import hashlib
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

VERSION = 3
MAX_LENGTH = (1 << 24) - 1  # the 24-bit length field
MAX_STREAM_ID = (1 << 31) - 1
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# §2.6.10.1. It is a fact of the protocol: every SPDY/3 peer primes zlib with these bytes.
# Length-prefixed header names and values, then a run of common response fragments.
_DICTIONARY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
    "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
    "content-base", "content-encoding", "content-language", "content-length", "content-location",
    "content-md5", "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
    "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
    "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via",
    "warning", "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
    "public", "set-cookie", "keep-alive", "origin",
)
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICTIONARY_WORDS) + _DICTIONARY_TAIL.encode()
DICTIONARY_SHA256 = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
assert hashlib.sha256(DICTIONARY).hexdigest() == DICTIONARY_SHA256, "the SPDY/3 dictionary is misspelt"


class FrameType(enum.IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SessionError(Exception):
    """The session cannot go on (§2.4.1): answer GOAWAY with `status`, then close."""

    def __init__(self, message: str, status: GoAwayStatus = GoAwayStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.status = status


class StreamError(Exception):
    """One stream cannot go on (§2.4.2): answer RST_STREAM; the connection lives."""

    def __init__(self, stream_id: int, message: str, status: RstStatus = RstStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


Headers = Mapping[str, str]  # lowercase name -> value (several values are joined with NUL)


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    associated_id: int = 0
    priority: int = 0  # 0 (highest) to 7
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    fin: bool = False


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True)
class Settings:
    entries: tuple[Setting, ...] = ()
    clear: bool = False  # FLAG_SETTINGS_CLEAR_SETTINGS


@dataclass(frozen=True)
class Ping:
    id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    fin: bool = False


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True)
class UnknownControl:
    """A control frame of a type this version does not define: §2.2.1 says ignore it."""

    version: int
    type: int
    flags: int
    payload: bytes


Frame = (DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate
         | UnknownControl)


# --- header blocks (§2.6.10) ----------------------------------------------------------


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed block: a count, then length-prefixed name and value pairs."""
    out = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        raw_name, raw_value = name.lower().encode(), value.encode()
        out += [struct.pack(">I", len(raw_name)), raw_name, struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(out)


def decode_header_block(block: bytes, stream_id: int) -> dict[str, str]:
    """Names must be lowercase and unique, and the block must be exactly consumed (§2.6.10)."""

    def take(pos: int, n: int) -> tuple[bytes, int]:
        if pos + n > len(block):
            raise StreamError(stream_id, "header block truncated")
        return block[pos:pos + n], pos + n

    raw, pos = take(0, 4)
    (count,) = struct.unpack(">I", raw)
    headers: dict[str, str] = {}
    for _ in range(count):
        raw, pos = take(pos, 4)
        name_bytes, pos = take(pos, struct.unpack(">I", raw)[0])
        raw, pos = take(pos, 4)
        value_bytes, pos = take(pos, struct.unpack(">I", raw)[0])
        try:
            name, value = name_bytes.decode(), value_bytes.decode()
        except UnicodeDecodeError:
            raise StreamError(stream_id, "header name or value is not UTF-8") from None
        if not name or name != name.lower():
            raise StreamError(stream_id, f"header name {name!r:.60} is empty or not lowercase")
        if name in headers:
            raise StreamError(stream_id, f"header {name!r:.60} appears twice")
        headers[name] = value
    if pos != len(block):
        raise StreamError(stream_id, "header block has trailing bytes")
    return headers


class HeaderCompressor:
    """One direction's zlib stream for the whole connection."""

    def __init__(self) -> None:
        # Level 9 as spdystream uses; any level interoperates, but matching it keeps byte-exact tests honest.
        self._zlib = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._zlib.compress(encode_header_block(headers)) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """The other direction's zlib stream. Inflation is bounded, so a tiny compressed block
    cannot expand into gigabytes (a zlib bomb); past the bound the connection is spoilt,
    since the shared stream cannot be resynchronised."""

    def __init__(self, max_block: int) -> None:
        self._zlib = zlib.decompressobj(zdict=DICTIONARY)
        self._max_block = max_block

    def decompress(self, compressed: bytes, stream_id: int) -> dict[str, str]:
        try:
            block = self._zlib.decompress(compressed, self._max_block + 1)
        except zlib.error as exc:
            raise SessionError(f"header block does not inflate: {exc}") from None
        if len(block) > self._max_block or self._zlib.unconsumed_tail:
            raise SessionError(f"header block inflates past {self._max_block} bytes")
        return decode_header_block(block, stream_id)


# --- frames ----------------------------------------------------------------------------


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"control frame payload of {len(payload)} bytes exceeds {MAX_LENGTH}")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def _check_id(stream_id: int) -> None:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} out of range")


class FrameWriter:
    """Encodes frames for one direction of one connection (it owns that direction's compressor)."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame(stream_id, data, fin):
                _check_id(stream_id)
                return b"".join(self.data(stream_id, data, fin))
            case SynStream(stream_id, headers, associated_id, priority, fin, unidirectional):
                _check_id(stream_id)
                flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
                payload = struct.pack(">IIBB", stream_id, associated_id, (priority & 7) << 5, 0)
                return _control(FrameType.SYN_STREAM, flags, payload + self._headers.compress(headers))
            case SynReply(stream_id, headers, fin):
                _check_id(stream_id)
                payload = struct.pack(">I", stream_id) + self._headers.compress(headers)
                return _control(FrameType.SYN_REPLY, FLAG_FIN if fin else 0, payload)
            case HeadersFrame(stream_id, headers, fin):
                _check_id(stream_id)
                payload = struct.pack(">I", stream_id) + self._headers.compress(headers)
                return _control(FrameType.HEADERS, FLAG_FIN if fin else 0, payload)
            case RstStream(stream_id, status):
                _check_id(stream_id)
                return _control(FrameType.RST_STREAM, 0, struct.pack(">II", stream_id, status))
            case Settings(entries, clear):
                body = b"".join(struct.pack(">II", (e.flags << 24) | e.id, e.value) for e in entries)
                return _control(FrameType.SETTINGS, 1 if clear else 0, struct.pack(">I", len(entries)) + body)
            case Ping(ping_id):
                return _control(FrameType.PING, 0, struct.pack(">I", ping_id))
            case GoAway(last_good, status):
                return _control(FrameType.GOAWAY, 0, struct.pack(">II", last_good, status))
            case WindowUpdate(stream_id, delta):
                return _control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))
            case UnknownControl(version, frame_type, flags, payload):
                return struct.pack(">HHI", 0x8000 | version, frame_type, (flags << 24) | len(payload)) + payload
        raise TypeError(f"not a SPDY frame: {frame!r:.80}")

    @staticmethod
    def data(stream_id: int, data: bytes, fin: bool = False) -> Iterator[bytes]:
        """DATA frames for `data`, split at the 24-bit length limit; FIN on the last one."""
        view = memoryview(data)
        while True:
            chunk, view = view[:MAX_LENGTH], view[MAX_LENGTH:]
            last = not view
            yield struct.pack(">II", stream_id, ((FLAG_FIN if fin and last else 0) << 24) | len(chunk))
            yield bytes(chunk)
            if last:
                return


class FrameReader:
    """Decodes the frames of one direction of one connection from bytes as they arrive.

    `feed()` the bytes read, then take frames from `frames()` until it stops. A malformed
    control frame raises `SessionError` (the connection is over) or `StreamError` (reset
    that stream, the connection goes on: the frame was consumed whole).
    """

    def __init__(self, max_frame: int = MAX_LENGTH, max_header_block: int = 256 * 1024) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self._headers = HeaderDecompressor(max_header_block)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def frames(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def next_frame(self) -> Frame | None:
        if len(self._buffer) < 8:
            return None
        first, flags_length = struct.unpack_from(">II", self._buffer)
        flags, length = flags_length >> 24, flags_length & MAX_LENGTH
        if length > self._max_frame:
            # Refusing before buffering it all: a peer cannot make us hold 16 MiB per frame.
            raise SessionError(f"frame of {length} bytes exceeds the limit of {self._max_frame}")
        if first & 0x80000000 and (first >> 16) & 0x7FFF != VERSION:
            # Known from the first word: no need to wait for a payload that may never come.
            raise SessionError(f"SPDY version {(first >> 16) & 0x7FFF} is not supported (only {VERSION})")
        if len(self._buffer) < 8 + length:
            return None
        payload = bytes(self._buffer[8:8 + length])
        del self._buffer[:8 + length]
        if not first & 0x80000000:
            stream_id = first & MAX_STREAM_ID
            if stream_id == 0:
                raise SessionError("DATA frame on stream 0")
            return DataFrame(stream_id, payload, bool(flags & FLAG_FIN))
        return self._control(first & 0xFFFF, flags, payload)

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame:
        fin = bool(flags & FLAG_FIN)
        match frame_type:
            case FrameType.SYN_STREAM:
                stream_id, associated, priority = self._unpack(">IIB", payload, 10, frame_type)
                stream_id &= MAX_STREAM_ID
                headers = self._header_block(payload[10:], stream_id)
                return SynStream(stream_id, headers, associated & MAX_STREAM_ID, priority >> 5, fin,
                                 bool(flags & FLAG_UNIDIRECTIONAL))
            case FrameType.SYN_REPLY | FrameType.HEADERS:
                (stream_id,) = self._unpack(">I", payload, 4, frame_type)
                stream_id &= MAX_STREAM_ID
                headers = self._header_block(payload[4:], stream_id)
                if frame_type == FrameType.SYN_REPLY:
                    return SynReply(stream_id, headers, fin)
                return HeadersFrame(stream_id, headers, fin)
            case FrameType.RST_STREAM:
                stream_id, status = self._unpack(">II", payload, 8, frame_type, exact=True)
                return RstStream(stream_id & MAX_STREAM_ID, status)
            case FrameType.SETTINGS:
                (count,) = self._unpack(">I", payload, 4, frame_type)
                if len(payload) != 4 + 8 * count:
                    raise SessionError(f"SETTINGS frame of {len(payload)} bytes cannot hold {count} entries")
                entries = tuple(Setting(fid & 0xFFFFFF, value, fid >> 24)
                                for fid, value in struct.iter_unpack(">II", payload[4:]))
                return Settings(entries, bool(flags & 1))
            case FrameType.PING:
                (ping_id,) = self._unpack(">I", payload, 4, frame_type, exact=True)
                return Ping(ping_id)
            case FrameType.GOAWAY:
                last_good, status = self._unpack(">II", payload, 8, frame_type, exact=True)
                return GoAway(last_good & MAX_STREAM_ID, status)
            case FrameType.WINDOW_UPDATE:
                stream_id, delta = self._unpack(">II", payload, 8, frame_type, exact=True)
                return WindowUpdate(stream_id & MAX_STREAM_ID, delta & 0x7FFFFFFF)
        return UnknownControl(VERSION, frame_type, flags, payload)

    @staticmethod
    def _unpack(fmt: str, payload: bytes, size: int, frame_type: int, exact: bool = False) -> tuple[int, ...]:
        if len(payload) < size or (exact and len(payload) != size):
            raise SessionError(f"control frame type {frame_type} of {len(payload)} bytes is malformed")
        return struct.unpack_from(fmt, payload)

    def _header_block(self, compressed: bytes, stream_id: int) -> dict[str, str]:
        # Inflated even when the stream will be refused: the shared zlib stream must stay in step.
        return self._headers.decompress(compressed, stream_id)
