"""The frame format, the value encoding and the incremental parser (with hypothesis fuzzing)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus.guest.protocol import (
    FLAG_EOF,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    Frame,
    FrameParser,
    FrameType,
    ProtocolError,
    choose_version,
    decode_value,
    encode_frame,
    encode_value,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)

frames = st.builds(
    Frame,
    type=st.integers(0, 255),
    stream=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=2000),
    flags=st.integers(0, 255),
)


def raw_header(ftype: int, stream: int, length: int, payload_crc: int = 0) -> bytes:
    """A header with a valid header CRC but arbitrary (possibly lying) fields."""
    head = struct.pack(">2sBBIII", MAGIC, ftype, 0, stream, length, payload_crc)
    return head + struct.pack(">I", zlib.crc32(head))


def test_header_is_20_bytes_and_roundtrips() -> None:
    data = encode_frame(FrameType.STDOUT, 7, b"hello", FLAG_EOF)
    assert len(data) == HEADER_SIZE + 5
    assert data[:2] == b"NX"
    assert FrameParser().feed(data) == [Frame(FrameType.STDOUT, 7, b"hello", FLAG_EOF)]


def test_encode_frame_rejects_bad_fields() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(256, 1)
    with pytest.raises(ProtocolError):
        encode_frame(1, -1)
    with pytest.raises(ProtocolError):
        encode_frame(1, 2**32)
    with pytest.raises(ProtocolError):
        encode_frame(1, 1, b"x" * (MAX_PAYLOAD + 1))
    encode_frame(1, 1, b"x" * MAX_PAYLOAD)  # the limit itself is fine


def test_value_encoding_examples() -> None:
    value = {"op": "exec", "argv": ["echo", "hi"], "env": None, "n": -5, "f": 1.5, "b": b"\0"}
    assert decode_value(encode_value(value)) == value
    assert encode_value(None) == b"N"
    assert Frame(FrameType.REQUEST, 1, b"").value() == {}
    with pytest.raises(ProtocolError):
        encode_value({1: "non-str key"})
    with pytest.raises(ProtocolError):
        encode_value(2**64)
    with pytest.raises(ProtocolError):
        encode_value(object())


def test_decode_rejects_deep_nesting_and_trailing_bytes() -> None:
    deep = b"l\x00\x00\x00\x01" * 100 + b"N"
    with pytest.raises(ProtocolError):
        decode_value(deep)
    with pytest.raises(ProtocolError):
        decode_value(b"NN")
    with pytest.raises(ProtocolError):
        decode_value(b"")
    with pytest.raises(ProtocolError):
        decode_value(b"l\xff\xff\xff\xff")  # a 4-billion-item list in 5 bytes
    with pytest.raises(ProtocolError):
        decode_value(b"s\x00\x00\x00\x02\xff\xfe")  # not UTF-8


@FUZZ
@given(values)
def test_value_roundtrip(value: object) -> None:
    assert decode_value(encode_value(value)) == value


@FUZZ
@given(st.binary(max_size=4000))
def test_decode_value_garbage_raises_only_protocol_error(data: bytes) -> None:
    try:
        decode_value(data)
    except ProtocolError:
        pass


@FUZZ
@given(st.lists(frames, max_size=8), st.data())
def test_frames_survive_any_split(fs: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f.type, f.stream, f.payload, f.flags) for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = FrameParser()
    out: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += parser.feed(stream[prev:cut])
        prev = cut
    assert out == fs
    assert parser.discarded == 0
    assert parser.buffered == 0


@FUZZ
@given(st.binary(max_size=8000), st.integers(1, 4096))
def test_parser_never_raises_on_random_bytes(data: bytes, chunk: int) -> None:
    parser = FrameParser()
    for i in range(0, len(data), chunk):
        for frame in parser.feed(data[i : i + chunk]):
            assert isinstance(frame, Frame)
    assert parser.buffered <= HEADER_SIZE + MAX_PAYLOAD


@FUZZ
@given(st.lists(st.tuples(st.binary(max_size=300), frames), max_size=6), st.binary(max_size=300))
def test_parser_resynchronises_after_garbage(
    chunks: list[tuple[bytes, Frame]], tail: bytes
) -> None:
    """Garbage between frames is skipped and every real frame is still delivered.

    Garbage that itself contains a well-formed frame (vanishingly unlikely, as both CRCs
    must match) is allowed to produce extra frames, so only a subsequence is required.
    """
    data = b"".join(g + encode_frame(f.type, f.stream, f.payload, f.flags) for g, f in chunks)
    parser = FrameParser()
    out = parser.feed(data + tail) + parser.feed(b"")
    it = iter(out)
    for _g, expected in chunks:
        assert any(got == expected for got in it), expected


@FUZZ
@given(frames, st.integers(0, 10_000))
def test_truncated_frame_is_held_then_superseded(frame: Frame, cut_seed: int) -> None:
    data = encode_frame(frame.type, frame.stream, frame.payload, frame.flags)
    cut = cut_seed % len(data)
    parser = FrameParser()
    assert parser.feed(data[:cut]) == []
    # a truncated frame followed by a complete one: the complete one is recovered
    # (the partial frame may swallow some of the following bytes as its payload; its CRC
    # then fails and the parser rescans them, so enough good frames always get through)
    good = encode_frame(FrameType.PING, 0, b"after")
    out = parser.feed(good * (2 + len(data) // len(good)))
    assert Frame(FrameType.PING, 0, b"after") in out


@FUZZ
@given(st.integers(MAX_PAYLOAD + 1, 2**32 - 1), st.binary(max_size=100))
def test_huge_length_is_skipped_not_buffered(length: int, junk: bytes) -> None:
    parser = FrameParser()
    good = encode_frame(FrameType.HELLO, 0, encode_value({"versions": [1]}))
    out = parser.feed(raw_header(FrameType.STDOUT, 1, length) + junk + good)
    assert out[-1:] == [Frame(FrameType.HELLO, 0, encode_value({"versions": [1]}))]
    assert parser.buffered == 0


def test_bad_payload_crc_is_skipped() -> None:
    parser = FrameParser()
    bad = bytearray(encode_frame(FrameType.STDOUT, 1, b"payload"))
    bad[-1] ^= 0xFF
    good = encode_frame(FrameType.STDOUT, 2, b"ok")
    assert parser.feed(bytes(bad) + good) == [Frame(FrameType.STDOUT, 2, b"ok")]
    assert parser.discarded == len(bad)


def test_garbage_without_magic_is_not_kept() -> None:
    parser = FrameParser()
    parser.feed(b"\x00" * 100_000 + b"N")
    assert parser.buffered == 1  # a possible start of the magic
    # ... which completes a frame when the rest arrives
    assert parser.feed(encode_frame(FrameType.PONG, 0)[1:]) == [Frame(FrameType.PONG, 0, b"")]
    assert parser.feed(b"Y" + encode_frame(FrameType.PONG, 0)[2:]) == []
    assert parser.feed(encode_frame(FrameType.PONG, 0)) == [Frame(FrameType.PONG, 0, b"")]


def test_choose_version() -> None:
    assert choose_version([1]) == 1
    assert choose_version([1, 2, 3], (1, 2)) == 2
    assert choose_version([7]) is None
    assert choose_version("1") is None
    assert choose_version([True]) is None
    assert choose_version(None) is None
