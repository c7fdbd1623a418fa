"""The SPDY/3.1 framing core on its own: byte-level round trips, header compression, bad input."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from services.gateway.streaming import spdy


def roundtrip(frame: spdy.Frame) -> spdy.Frame:
    writer, reader = spdy.FrameWriter(), spdy.FrameReader()
    reader.feed(writer.encode(frame))
    frames = list(reader.frames())
    assert len(frames) == 1 and reader.buffered == 0
    return frames[0]


def test_dictionary_is_the_spdy3_one():
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == spdy.DICTIONARY_SHA256


@pytest.mark.parametrize("frame", [
    spdy.DataFrame(1, b"hello"),
    spdy.DataFrame(3, b"", fin=True),
    spdy.SynStream(1, {"streamtype": "error"}),
    spdy.SynStream(5, {"streamtype": "data", "port": "8080", "requestid": "0"}, associated_id=0, priority=7,
                   fin=True, unidirectional=True),
    spdy.SynReply(2, {}),
    spdy.SynReply(7, {"a": "b\0c"}, fin=True),
    spdy.HeadersFrame(9, {"x": "y"}, fin=True),
    spdy.RstStream(3, spdy.RstStatus.CANCEL),
    spdy.Settings((spdy.Setting(4, 100, 1), spdy.Setting(7, 65536))),
    spdy.Ping(1),
    spdy.GoAway(11, spdy.GoAwayStatus.OK),
    spdy.WindowUpdate(1, 65536),
])
def test_every_frame_type_round_trips(frame):
    assert roundtrip(frame) == frame


def test_control_frame_header_bytes_follow_the_spec():
    raw = spdy.FrameWriter().encode(spdy.Ping(0x01020304))
    # 0x8000 | version 3, type 6, flags 0, length 4, the id.
    assert raw == bytes.fromhex("80030006 00000004 01020304".replace(" ", ""))
    raw = spdy.FrameWriter().encode(spdy.RstStream(5, spdy.RstStatus.CANCEL))
    assert raw == bytes.fromhex("80030003 00000008 00000005 00000005".replace(" ", ""))
    raw = spdy.FrameWriter().encode(spdy.GoAway(7, 0))
    assert raw == bytes.fromhex("80030007 00000008 00000007 00000000".replace(" ", ""))


def test_data_frame_bytes_and_fin_flag():
    raw = spdy.FrameWriter().encode(spdy.DataFrame(3, b"hi", fin=True))
    assert raw == bytes.fromhex("00000003 01000002".replace(" ", "")) + b"hi"


def test_header_block_layout_is_count_then_length_prefixed_pairs():
    block = spdy.encode_header_block({"streamtype": "error"})
    assert block == struct.pack(">I", 1) + struct.pack(">I", 10) + b"streamtype" + struct.pack(">I", 5) + b"error"


def test_header_blocks_share_one_zlib_stream_primed_with_the_dictionary():
    writer = spdy.FrameWriter()
    first = writer.encode(spdy.SynStream(1, {"streamtype": "error"}))
    second = writer.encode(spdy.SynStream(3, {"streamtype": "error"}))
    # Block 1 starts a zlib stream with a preset dictionary: CMF 0x78, FLG 0xf9 (FDICT, level 9)
    # followed by the dictionary's Adler-32.
    assert first[18:20] == b"\x78\xf9"
    assert first[20:24] == struct.pack(">I", zlib.adler32(spdy.DICTIONARY))
    # Block 2 continues the stream: no header, and the repeated block costs only a few bytes.
    assert second[18:20] != b"\x78\xf9"
    assert len(second) < len(first)
    # A decompressor that follows the whole stream reads both.
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert inflate.decompress(first[18:]) == spdy.encode_header_block({"streamtype": "error"})
    assert inflate.decompress(second[18:]) == spdy.encode_header_block({"streamtype": "error"})


def test_a_client_side_encoder_drives_the_server_side_decoder_over_many_frames():
    client, server = spdy.FrameWriter(), spdy.FrameReader()
    sent = []
    for i in range(1, 200, 2):
        sent.append(spdy.SynStream(i, {"streamtype": "data", "port": str(8000 + i), "requestid": str(i)}))
        sent.append(spdy.DataFrame(i, bytes([i % 256]) * i))
        sent.append(spdy.Ping(i))
    wire = b"".join(client.encode(f) for f in sent)
    received = []
    for offset in range(0, len(wire), 7):  # bytes arrive in awkward pieces
        server.feed(wire[offset:offset + 7])
        received += list(server.frames())
    assert received == sent


def test_empty_header_block_still_goes_through_the_compressor():
    raw = spdy.FrameWriter().encode(spdy.SynReply(2))
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert inflate.decompress(raw[12:]) == b"\0\0\0\0"


def test_large_data_is_split_at_the_24_bit_length():
    chunks = list(spdy.FrameWriter.data(1, b"x" * (spdy.MAX_LENGTH + 10), fin=True))
    assert len(chunks) == 4
    assert struct.unpack(">I", chunks[0][4:])[0] == spdy.MAX_LENGTH  # no FIN on the first
    assert struct.unpack(">I", chunks[2][4:])[0] == (1 << 24) | 10  # FIN and the rest


def test_unknown_control_frames_are_returned_to_be_ignored():
    reader = spdy.FrameReader()
    reader.feed(struct.pack(">HHI", 0x8003, 0x55, 3) + b"abc")
    assert list(reader.frames()) == [spdy.UnknownControl(3, 0x55, 0, b"abc")]


def test_wrong_version_is_a_session_error():
    reader = spdy.FrameReader()
    reader.feed(struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1")
    with pytest.raises(spdy.SessionError):
        reader.next_frame()


def test_malformed_fixed_size_frames_are_session_errors():
    reader = spdy.FrameReader()
    reader.feed(struct.pack(">HHI", 0x8003, 6, 3) + b"abc")  # a PING of 3 bytes
    with pytest.raises(spdy.SessionError):
        reader.next_frame()


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered():
    reader = spdy.FrameReader(max_frame=1024)
    reader.feed(struct.pack(">II", 1, 2048))
    with pytest.raises(spdy.SessionError):
        reader.next_frame()


def test_a_header_block_bomb_is_refused_without_inflating_it():
    # 1 GiB of zeros compresses to about 1 MiB; its first piece already inflates past any sane block.
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    bomb = deflate.compress(struct.pack(">I", 1) + struct.pack(">I", 1 << 30)) + deflate.compress(b"\0" * (8 << 20))
    bomb += deflate.flush(zlib.Z_SYNC_FLUSH)
    reader = spdy.FrameReader(max_header_block=64 * 1024)
    reader.feed(struct.pack(">HHI", 0x8003, 1, 10 + len(bomb)) + struct.pack(">IIBB", 1, 0, 0, 0) + bomb)
    with pytest.raises(spdy.SessionError, match="inflates past"):
        reader.next_frame()


def test_garbage_in_a_header_block_is_a_session_error():
    reader = spdy.FrameReader()
    reader.feed(struct.pack(">HHI", 0x8003, 1, 14) + struct.pack(">IIBB", 1, 0, 0, 0) + b"\xff\xfe\xfd\xfc")
    with pytest.raises(spdy.SessionError):
        reader.next_frame()


def _syn_with_block(block: bytes) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    compressed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return struct.pack(">HHI", 0x8003, 1, 10 + len(compressed)) + struct.pack(">IIBB", 1, 0, 0, 0) + compressed


@pytest.mark.parametrize("block", [
    struct.pack(">I", 1) + struct.pack(">I", 10) + b"StreamType" + struct.pack(">I", 1) + b"x",  # uppercase
    struct.pack(">I", 2) + (struct.pack(">I", 1) + b"a" + struct.pack(">I", 1) + b"x") * 2,  # duplicate
    struct.pack(">I", 5) + struct.pack(">I", 1) + b"a",  # truncated
    struct.pack(">I", 0) + b"trailing",
])
def test_bad_header_blocks_reset_only_their_stream(block):
    reader = spdy.FrameReader()
    reader.feed(_syn_with_block(block))
    with pytest.raises(spdy.StreamError) as err:
        reader.next_frame()
    assert err.value.stream_id == 1
