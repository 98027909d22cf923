"""The Nexus guest channel protocol: framing, value encoding and the incremental parser.

This module is shared by the guest agent (which runs on Debian's ``python3-minimal``: no
``json``, ``dataclasses``, ``queue``, ``pty`` or ``termios``) and the host-side client, so
it imports only modules that ``libpython3.11-minimal`` ships: ``struct``, ``zlib``,
``typing``. The specification is ``docs/guest-protocol.md``; keep the two in step.

Frame layout (big-endian, 20-byte header, then ``length`` payload bytes)::

    0   2  magic        b"NX"
    2   1  type         FrameType
    3   1  flags        bit 0 = EOF (on STDIN: end of input)
    4   4  stream       u32; 0 = the connection itself, 1.. = streams opened by the host
    8   4  length       u32 payload length, <= MAX_PAYLOAD
    12  4  payload_crc  crc32 of the payload
    16  4  header_crc   crc32 of bytes 0..15

Control payloads (HELLO, REQUEST, RESPONSE, EXIT, RESIZE, ERROR, CLOSE) are one encoded
value (see :func:`encode_value`); data payloads (STDIN, STDOUT, STDERR, PING, PONG) are raw
bytes.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, NamedTuple

__all__ = [
    "FLAG_EOF",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_PAYLOAD",
    "PROTOCOL_VERSIONS",
    "Frame",
    "FrameParser",
    "FrameType",
    "ProtocolError",
    "choose_version",
    "decode_value",
    "encode_frame",
    "encode_value",
]

MAGIC = b"NX"
HEADER = struct.Struct(">2sBBIIII")
HEADER_SIZE = HEADER.size  # 20
MAX_PAYLOAD = 1024 * 1024
MAX_STREAM = 0xFFFFFFFF
MAX_DEPTH = 32
FLAG_EOF = 0x01
#: Protocol (message semantics) versions this implementation speaks, oldest first.
PROTOCOL_VERSIONS: tuple[int, ...] = (1,)


class ProtocolError(Exception):
    """Raised for anything malformed: a bad value encoding, an invalid frame, a bad message."""


class FrameType:
    """Frame type codes (plain ints, so unknown future types still parse)."""

    HELLO = 1
    REQUEST = 2
    RESPONSE = 3
    STDIN = 4
    STDOUT = 5
    STDERR = 6
    EXIT = 7
    RESIZE = 8
    CLOSE = 9
    PING = 10
    PONG = 11
    ERROR = 12

    NAMES: dict[int, str] = {
        1: "HELLO",
        2: "REQUEST",
        3: "RESPONSE",
        4: "STDIN",
        5: "STDOUT",
        6: "STDERR",
        7: "EXIT",
        8: "RESIZE",
        9: "CLOSE",
        10: "PING",
        11: "PONG",
        12: "ERROR",
    }

    @classmethod
    def name(cls, code: int) -> str:
        """Return the symbolic name of ``code`` (``"TYPE_<n>"`` if unknown)."""
        return cls.NAMES.get(code, f"TYPE_{code}")


#: Frame types whose payload is one encoded value.
VALUE_TYPES = frozenset(
    (
        FrameType.HELLO,
        FrameType.REQUEST,
        FrameType.RESPONSE,
        FrameType.EXIT,
        FrameType.RESIZE,
        FrameType.CLOSE,
        FrameType.ERROR,
    )
)


class Frame(NamedTuple):
    """One decoded frame. ``payload`` is raw bytes; use :meth:`value` for control frames."""

    type: int
    stream: int
    payload: bytes = b""
    flags: int = 0

    def value(self) -> Any:
        """Decode the payload as one value; an empty payload decodes to ``{}``."""
        if not self.payload:
            return {}
        return decode_value(self.payload)

    def describe(self) -> str:
        """A short human description for logs."""
        name = FrameType.name(self.type)
        return f"{name} stream={self.stream} len={len(self.payload)} flags={self.flags}"


def encode_frame(ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """Encode one frame; raises :class:`ProtocolError` on an invalid field."""
    if not 0 <= ftype <= 0xFF:
        raise ProtocolError(f"frame type out of range: {ftype!r}")
    if not 0 <= flags <= 0xFF:
        raise ProtocolError(f"flags out of range: {flags!r}")
    if not 0 <= stream <= MAX_STREAM:
        raise ProtocolError(f"stream id out of range: {stream!r}")
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload too large: {len(payload)} > {MAX_PAYLOAD}")
    head = struct.pack(">2sBBIII", MAGIC, ftype, flags, stream, len(payload), zlib.crc32(payload))
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def encode_msg(ftype: int, stream: int, value: Any, flags: int = 0) -> bytes:
    """Encode a control frame whose payload is ``encode_value(value)``."""
    return encode_frame(ftype, stream, encode_value(value), flags)


# ---------------------------------------------------------------------------------------
# Value encoding: a tiny self-describing binary format (JSON's data model plus bytes).
#   N            None            T / F        True / False
#   i <i64>      int             d <f64>      float
#   s <u32 n> n  UTF-8 str       b <u32 n> n  bytes
#   l <u32 n>    list of n values
#   m <u32 n>    map of n (key: <u32 len> UTF-8, value) pairs
# ---------------------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")


def encode_value(value: Any) -> bytes:
    """Encode ``value`` (None, bool, int64, float, str, bytes, list/tuple, dict[str, ...])."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    if value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ProtocolError("integer out of int64 range")
        out.append(b"i" + _I64.pack(value))
    elif isinstance(value, float):
        out.append(b"d" + _F64.pack(value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out.append(b"s" + _U32.pack(len(data)) + data)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(b"b" + _U32.pack(len(data)) + data)
    elif isinstance(value, (list, tuple)):
        out.append(b"l" + _U32.pack(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out.append(b"m" + _U32.pack(len(value)))
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"map keys must be str, got {type(key).__name__}")
            kdata = key.encode("utf-8", "surrogatepass")
            out.append(_U32.pack(len(kdata)) + kdata)
            _encode(item, out, depth + 1)
    else:
        raise ProtocolError(f"cannot encode {type(value).__name__}")


def decode_value(data: bytes) -> Any:
    """Decode one value that must span all of ``data``; raises :class:`ProtocolError`."""
    try:
        value, pos = _decode(data, 0, 0)
    except ProtocolError:
        raise
    except (struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise ProtocolError(f"bad value encoding: {exc}") from None
    if pos != len(data):
        raise ProtocolError("trailing bytes after value")
    return value


def _need(data: bytes, pos: int, n: int) -> None:
    if n < 0 or pos + n > len(data):
        raise ProtocolError("truncated value")


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    _need(data, pos, 1)
    tag = data[pos]
    pos += 1
    if tag == 0x4E:  # N
        return None, pos
    if tag == 0x54:  # T
        return True, pos
    if tag == 0x46:  # F
        return False, pos
    if tag == 0x69:  # i
        _need(data, pos, 8)
        return _I64.unpack_from(data, pos)[0], pos + 8
    if tag == 0x64:  # d
        _need(data, pos, 8)
        return _F64.unpack_from(data, pos)[0], pos + 8
    if tag in (0x73, 0x62):  # s, b
        _need(data, pos, 4)
        n = _U32.unpack_from(data, pos)[0]
        pos += 4
        _need(data, pos, n)
        raw = bytes(data[pos : pos + n])
        if tag == 0x73:
            return raw.decode("utf-8", "surrogatepass"), pos + n
        return raw, pos + n
    if tag == 0x6C:  # l
        _need(data, pos, 4)
        n = _U32.unpack_from(data, pos)[0]
        pos += 4
        # every element needs at least one byte: reject absurd counts before looping
        _need(data, pos, n)
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if tag == 0x6D:  # m
        _need(data, pos, 4)
        n = _U32.unpack_from(data, pos)[0]
        pos += 4
        _need(data, pos, n * 5)
        result: dict[str, Any] = {}
        for _ in range(n):
            _need(data, pos, 4)
            klen = _U32.unpack_from(data, pos)[0]
            pos += 4
            _need(data, pos, klen)
            key = bytes(data[pos : pos + klen]).decode("utf-8", "surrogatepass")
            pos += klen
            result[key], pos = _decode(data, pos, depth + 1)
        return result, pos
    raise ProtocolError(f"unknown value tag 0x{tag:02x}")


# ---------------------------------------------------------------------------------------
# Incremental parser
# ---------------------------------------------------------------------------------------


class FrameParser:
    """Incremental frame parser: ``feed(bytes) -> [Frame]``. Never raises on input.

    Anything that is not a valid frame (no magic, bad header CRC, length over the limit,
    bad payload CRC) is skipped one byte at a time until the next valid header, so the
    parser resynchronises after garbage, truncated frames or bytes left over from an
    earlier connection. ``discarded`` counts skipped bytes; ``resyncs`` counts the number
    of times garbage was skipped.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self.discarded = 0
        self.resyncs = 0

    def reset(self) -> None:
        """Forget buffered bytes (for a new connection)."""
        self._buf.clear()

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def _skip(self, n: int) -> None:
        if n > 0:
            del self._buf[:n]
            self.discarded += n
            self.resyncs += 1

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data`` and return every complete frame now available, in order."""
        if data:
            self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        while True:
            if len(buf) < HEADER_SIZE:
                # keep a possible magic prefix only
                idx = buf.find(MAGIC)
                if idx < 0:
                    keep = 1 if buf[-1:] == MAGIC[:1] else 0
                    self._skip(len(buf) - keep)
                elif idx > 0:
                    self._skip(idx)
                return frames
            idx = buf.find(MAGIC)
            if idx < 0:
                keep = 1 if buf[-1:] == MAGIC[:1] else 0
                self._skip(len(buf) - keep)
                return frames
            if idx > 0:
                self._skip(idx)
                continue
            _m, ftype, flags, stream, length, pcrc, hcrc = HEADER.unpack_from(buf, 0)
            if zlib.crc32(bytes(buf[:16])) != hcrc or length > self.max_payload:
                self._skip(1)
                continue
            total = HEADER_SIZE + length
            if len(buf) < total:
                return frames
            payload = bytes(buf[HEADER_SIZE:total])
            if zlib.crc32(payload) != pcrc:
                self._skip(1)
                continue
            del buf[:total]
            frames.append(Frame(ftype, stream, payload, flags))


def choose_version(offered: Any, supported: tuple[int, ...] = PROTOCOL_VERSIONS) -> int | None:
    """Return the highest version in both ``offered`` and ``supported``, or None."""
    if not isinstance(offered, (list, tuple)):
        return None
    common = [v for v in offered if isinstance(v, int) and not isinstance(v, bool)]
    common = [v for v in common if v in supported]
    return max(common) if common else None
