"""A SPDY/3.1 session over an asyncio stream: the server side of what client-go dials.

The framing is `spdy.py`; this adds streams, their half-closes, PING echo, GOAWAY and the
idle timeout. Every stream the client opens is answered at once with an empty SYN_REPLY
(as the kubelet's server does) and handed to the session's handler through `accept()`.

Frames are encoded and written in one synchronous step, so the shared header compressor
sees blocks in wire order even with many tasks writing. There is no flow control (see
spdy.py); backpressure comes from TCP: a writer awaits `drain()`, and the reader stops
reading the socket while one stream's inbound queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from services.gateway.streaming import spdy
from services.gateway.streaming.channel import IdleWatch, InboundChannel

log = logging.getLogger(__name__)

_READ_SIZE = 256 * 1024


class StreamClosed(Exception):
    """Writing to a stream that is half-closed by us, reset, or whose connection is gone."""


class Stream(InboundChannel):
    """A SPDY stream: written as DATA frames, half-closed with FIN, reset with RST_STREAM."""

    def __init__(self, session: SpdySession, stream_id: int, headers: spdy.Headers) -> None:
        super().__init__(stream_id, headers)
        self._session = session

    async def write(self, data: bytes, fin: bool = False) -> None:
        if self.local_closed or self.was_reset or self._session.closed:
            raise StreamClosed(f"stream {self.id} is closed")
        if fin:
            self.local_closed = True
        await self._session.write_data(self.id, data, fin)

    async def close(self) -> None:
        """Half-close our side (an empty DATA frame with FIN); idempotent."""
        if self.local_closed or self.was_reset or self._session.closed:
            self.local_closed = True
            return
        self.local_closed = True
        with contextlib.suppress(ConnectionError):
            await self._session.write_data(self.id, b"", True)

    async def reset(self, status: spdy.RstStatus = spdy.RstStatus.CANCEL) -> None:
        if self.was_reset or self._session.closed:
            return
        self.was_reset = True
        self.local_closed = True
        self._remote_ended()
        with contextlib.suppress(ConnectionError):
            await self._session.send(spdy.RstStream(self.id, status))


class SpdySession:
    """One upgraded connection. `serve()` reads frames until the client leaves, the idle timeout
    passes, or the session is closed; `accept()` yields the streams the client opens."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, idle_timeout: float,
                 accept_stream: Callable[[spdy.Headers], bool] = lambda _headers: True,
                 max_header_block: int = 64 * 1024, max_frame: int = spdy.MAX_LENGTH, initial: bytes = b"") -> None:
        self._reader = reader
        self._writer = writer
        self._frames = spdy.FrameReader(max_frame, max_header_block)
        self._frames.feed(initial)  # what arrived together with the HTTP upgrade request
        self._encoder = spdy.FrameWriter()
        self._accept_stream = accept_stream
        self._idle = IdleWatch(idle_timeout)
        self._streams: dict[int, Stream] = {}
        self._opened: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._last_stream_id = 0
        self.closed = False
        self.end_reason = ""
        self._served = asyncio.Event()
        self._goaway_sent = False

    # --- writing ------------------------------------------------------------------------

    async def send(self, frame: spdy.Frame) -> None:
        if self.closed:
            raise ConnectionError("the SPDY session is closed")
        # PINGs are no activity: client-go pings every 5 s, which would keep a forgotten session open.
        if not isinstance(frame, spdy.Ping):
            self._idle.touch()
        self._writer.write(self._encoder.encode(frame))
        await self._writer.drain()

    async def write_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        if self.closed:
            raise ConnectionError("the SPDY session is closed")
        self._idle.touch()
        self._writer.writelines(spdy.FrameWriter.data(stream_id, data, fin))
        await self._writer.drain()

    # --- streams ------------------------------------------------------------------------

    async def accept(self) -> Stream | None:
        """The next stream the client opened (already replied to); None once the session ended."""
        if self.closed and self._opened.empty():
            return None
        stream = await self._opened.get()
        if stream is None:
            self._opened.put_nowait(None)  # every later accept() sees the end too
        return stream

    # --- the read loop ------------------------------------------------------------------

    async def serve(self) -> None:
        """Reads and dispatches frames; returns when the session is over, never raises for the peer's faults."""
        watchdog = asyncio.create_task(self._idle.run(self._close_idle))
        try:
            await self._dispatch_buffered()
            while not self.closed:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    self.end_reason = self.end_reason or "the client closed the connection"
                    break
                self._frames.feed(data)
                await self._dispatch_buffered()
        except spdy.SessionError as exc:
            log.info("SPDY session error: %s", exc)
            self.end_reason = f"protocol error: {exc}"
            if not self._goaway_sent:
                self._goaway_sent = True
                with contextlib.suppress(ConnectionError):
                    await self.send(spdy.GoAway(self._last_stream_id, exc.status))
        except (ConnectionError, TimeoutError) as exc:
            self.end_reason = self.end_reason or f"connection lost: {exc}"
        finally:
            watchdog.cancel()
            self._end_streams()
            self._served.set()

    async def _dispatch_buffered(self) -> None:
        while True:
            try:
                frame = self._frames.next_frame()
            except spdy.StreamError as exc:
                # The frame was consumed whole and the zlib stream is in step: only its stream fails.
                log.info("SPDY stream %d refused: %s", exc.stream_id, exc)
                self._last_stream_id = max(self._last_stream_id, exc.stream_id)
                await self.send(spdy.RstStream(exc.stream_id, exc.status))
                continue
            if frame is None:
                return
            await self._dispatch(frame)

    async def _dispatch(self, frame: spdy.Frame) -> None:
        if not isinstance(frame, spdy.Ping):
            self._idle.touch()
        match frame:
            case spdy.DataFrame(stream_id, data, fin):
                stream = self._streams.get(stream_id)
                if stream is None:
                    return  # a stream already gone: spdystream ignores these as well
                await stream._deliver(data)
                if fin:
                    stream._remote_ended()
            case spdy.SynStream():
                await self._open(frame)
            case spdy.RstStream(stream_id, _status):
                stream = self._streams.pop(stream_id, None)
                if stream is not None:
                    stream.was_reset = True
                    stream.local_closed = True
                    stream._remote_ended()
            case spdy.Ping(ping_id):
                if ping_id % 2 == 1:  # the client's (odd) pings are echoed; ours would be even
                    await self.send(frame)
            case spdy.GoAway():
                self.end_reason = "the client sent GOAWAY"
                # No new streams will come; the open ones finish on their own.
                self._opened.put_nowait(None)
            case spdy.HeadersFrame(stream_id, _headers, fin):
                stream = self._streams.get(stream_id)
                if stream is not None and fin:
                    stream._remote_ended()
            case _:
                pass  # SETTINGS, WINDOW_UPDATE and unknown control frames: nothing to do (no flow control)

    async def _open(self, frame: spdy.SynStream) -> None:
        if frame.stream_id % 2 == 0 or frame.stream_id <= self._last_stream_id:
            await self.send(spdy.RstStream(frame.stream_id, spdy.RstStatus.PROTOCOL_ERROR))
            return
        self._last_stream_id = frame.stream_id
        if not self._accept_stream(frame.headers):
            await self.send(spdy.RstStream(frame.stream_id, spdy.RstStatus.REFUSED_STREAM))
            return
        stream = Stream(self, frame.stream_id, frame.headers)
        self._streams[frame.stream_id] = stream
        await self.send(spdy.SynReply(frame.stream_id))
        if frame.fin:
            stream._remote_ended()
        self._opened.put_nowait(stream)

    async def _close_idle(self, reason: str) -> None:
        self.end_reason = reason
        await self.close()

    def _end_streams(self) -> None:
        for stream in self._streams.values():
            stream._remote_ended()
        self._opened.put_nowait(None)

    async def finish(self, grace: float = 2.0) -> None:
        """The session's work is done: GOAWAY, give the client `grace` to hang up, then close."""
        if self.closed:
            return
        await self._go_away()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._served.wait(), grace)
        await self.close()

    async def close(self) -> None:
        """Ends the session at once: GOAWAY if still possible, then the TCP connection is closed."""
        if self.closed:
            return
        await self._go_away()
        self.closed = True
        self._end_streams()
        self._writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    async def _go_away(self) -> None:
        if self._goaway_sent:
            return
        self._goaway_sent = True
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self.send(spdy.GoAway(self._last_stream_id, spdy.GoAwayStatus.OK)), 1.0)
