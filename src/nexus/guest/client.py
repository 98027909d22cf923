"""Host-side asyncio client of the guest agent (``docs/guest-protocol.md``).

One :class:`GuestClient` owns one connection to the guest channel's unix socket (QEMU's
virtio-serial chardev, or Firecracker's vsock UDS after ``CONNECT <port>``). Every call
opens its own stream, so concurrent calls multiplex on that connection::

    client = await GuestClient.connect("/var/lib/nexus/vms/vm_x/guest.sock", timeout=30)
    facts = await client.hello()
    result = await client.exec(["uname", "-r"])
    shell = await client.open_shell(cols=120, rows=40)
    await shell.write(b"ls\\n")
    print(await shell.read())
    await client.close()

This module is host-only (it uses asyncio and dataclasses); the guest agent never imports
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nexus.guest.protocol import (
    FLAG_EOF,
    HEADER_SIZE,
    PROTOCOL_VERSIONS,
    Frame,
    FrameParser,
    FrameType,
    ProtocolError,
    encode_frame,
    encode_value,
)

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "ChannelLimits",
    "ExecResult",
    "GuestClient",
    "GuestConnectionError",
    "GuestError",
    "GuestProtocolViolation",
    "GuestRemoteError",
    "GuestTimeoutError",
    "ShellSession",
]

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
#: Data frames the client sends are cut into chunks of this size.
CHUNK = 64 * 1024
#: How often ``hello`` re-sends HELLO while the guest is not answering (booting).
HELLO_RETRY_S = 1.0
#: Host-side slack added to an exec's guest-side timeout before the client gives up.
EXEC_GRACE_S = 30.0


class GuestError(Exception):
    """Base class of every guest-channel error."""


class GuestConnectionError(GuestError):
    """The channel could not be opened, or it closed."""


class GuestTimeoutError(GuestError, TimeoutError):
    """The guest did not answer in time."""


class GuestProtocolViolation(GuestConnectionError):
    """The host dropped the connection because the guest flooded it or broke the protocol.

    ``reason`` is a sentence for operators (it ends up in the VM's ``state_reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ChannelLimits:
    """Host-side bounds of one guest connection.

    Every guest is hostile (docs/security.md): nothing it sends may make the host buffer
    without bound. A stream whose reader is slow stops the connection's reader (the guest's
    writes then block in the kernel) instead of queueing; frames nobody asked for (stream-0
    frames after HELLO, PONGs without a PING, frames for streams the host did not open,
    skipped garbage) are allowed a small rate, and a guest above it is disconnected.
    """

    stream_buffer_bytes: int = 1024 * 1024
    """Bytes queued on one stream for its reader before the host stops reading the socket."""
    stall_timeout_s: float = 60.0
    """A reader that does not take frames for this long loses its stream (not the connection)."""
    unsolicited_frames: int = 256
    """Unsolicited frames allowed per ``window_s`` (a leaky bucket: it drains continuously)."""
    unsolicited_bytes: int = 4 * 1024 * 1024
    """Unsolicited bytes (payloads + headers + skipped garbage) allowed per ``window_s``."""
    window_s: float = 10.0
    write_buffer_bytes: int = 1024 * 1024
    """Host-to-guest bytes the guest has not read; a guest above it is disconnected."""
    max_ping_payload: int = 64
    """Guest PINGs with a longer payload are not answered (the spec recommends <= 64)."""
    control_queue: int = 16
    """Stream-0 frames kept for the handshake; the rest are dropped (and counted)."""


class GuestRemoteError(GuestError):
    """The guest answered with an ERROR frame."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})


@dataclass(frozen=True)
class ExecResult:
    """The outcome of :meth:`GuestClient.exec`."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: int
    timed_out: bool
    truncated: bool
    signal: int | None = None

    @property
    def ok(self) -> bool:
        """True when the command exited 0 and did not time out."""
        return self.exit_code == 0 and not self.timed_out


def _cost(frame: Frame) -> int:
    """Bytes a queued frame stands for (a header's worth even when the payload is empty)."""
    return HEADER_SIZE + len(frame.payload)


class _Stream:
    """Client-side state of one stream: a queue of frames from the guest.

    ``queued`` counts the bytes waiting for the reader; the connection's reader pauses while
    it is above the limit, and ``room`` is set again once the reader has caught up."""

    def __init__(self, sid: int, limit: int) -> None:
        self.sid = sid
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.done = False
        self.limit = limit
        self.queued = 0
        self.room = asyncio.Event()
        self.room.set()
        self.error: GuestError | None = None

    def put(self, frame: Frame | None) -> None:
        if frame is not None:
            self.queued += _cost(frame)
            if self.queued > self.limit:
                self.room.clear()
        self.frames.put_nowait(frame)

    def took(self, frame: Frame | None) -> None:
        """The reader took ``frame`` off the queue."""
        if frame is not None:
            self.queued -= _cost(frame)
            if self.queued <= self.limit:
                self.room.set()

    def abandon(self, error: GuestError) -> None:
        """Drop everything queued and fail the reader with ``error``."""
        while not self.frames.empty():
            self.frames.get_nowait()
        self.queued = 0
        self.error = error
        self.done = True
        self.room.set()
        self.frames.put_nowait(None)


def _int(value: Any, default: int) -> int:
    """``value`` if it is a plain int (the guest's numbers are not trusted), else ``default``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _remote_error(frame: Frame) -> GuestRemoteError:
    try:
        value = frame.value()
    except ProtocolError:
        value = {}
    if not isinstance(value, dict):
        value = {}
    return GuestRemoteError(str(value.get("code", "error")), str(value.get("message", "")), value)


class GuestClient:
    """An asyncio connection to one guest agent. Create it with :meth:`connect`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: ChannelLimits | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.limits = limits or ChannelLimits()
        self._parser = FrameParser()
        self._streams: dict[int, _Stream] = {}
        # random start: frames of an earlier connection can never match a new stream id
        self._ids = itertools.count(secrets.randbelow(1 << 30) + 1)
        self._control: asyncio.Queue[Frame] = asyncio.Queue(maxsize=self.limits.control_queue)
        self._hello_lock = asyncio.Lock()
        self._facts: dict[str, Any] | None = None
        self._closed = False
        self._error: GuestError | None = None
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._paused = False
        # the unsolicited-traffic leaky bucket
        self._u_frames = 0.0
        self._u_bytes = 0.0
        self._u_at = time.monotonic()
        self._garbage_seen = 0
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    # -- connection -----------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        path: str,
        timeout: float,
        vsock_port: int | None = None,
        limits: ChannelLimits | None = None,
    ) -> GuestClient:
        """Connect to the guest channel's unix socket at ``path``.

        With ``vsock_port``, speak Firecracker's vsock UDS protocol first: send
        ``CONNECT <port>\\n`` and expect a line starting ``OK``. The handshake (HELLO)
        happens in :meth:`hello`, which every other call runs first if needed.
        """
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
                if vsock_port is not None:
                    writer.write(f"CONNECT {int(vsock_port)}\n".encode())
                    await writer.drain()
                    line = await reader.readline()
                    if not line.startswith(b"OK"):
                        writer.close()
                        raise GuestConnectionError(
                            f"vsock CONNECT {vsock_port} refused: {line[:200]!r}"
                        )
        except TimeoutError:
            raise GuestTimeoutError(f"connecting to {path} timed out") from None
        except OSError as exc:
            raise GuestConnectionError(f"cannot connect to {path}: {exc}") from exc
        return cls(reader, writer, limits)

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self._closed

    @property
    def facts(self) -> dict[str, Any] | None:
        """The guest's HELLO answer, once the handshake is done."""
        return self._facts

    @property
    def violation(self) -> str | None:
        """Why the host dropped this connection, when the guest flooded or broke the
        protocol (None otherwise, also while connected)."""
        if isinstance(self._error, GuestProtocolViolation):
            return self._error.reason
        return None

    @property
    def queued_bytes(self) -> int:
        """Bytes received from the guest and waiting for readers, over all streams."""
        return sum(s.queued for s in self._streams.values())

    @property
    def paused(self) -> bool:
        """True while the reader waits for a slow stream reader (backpressure): the guest's
        frames stay in the socket, and a keepalive ping could not be answered."""
        return self._paused

    async def close(self) -> None:
        """Close the connection; open streams fail with :class:`GuestConnectionError`.
        Also releases the socket of a connection that was lost or dropped (idempotent)."""
        self._fail(GuestConnectionError("connection closed"))
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> GuestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail(self, error: GuestError) -> None:
        if self._closed:
            return
        self._closed = True
        self._error = error
        for stream in list(self._streams.values()):
            stream.put(None)
        self._streams.clear()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(error)
        self._pings.clear()

    async def _read_loop(self) -> None:
        try:
            while not self._closed:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                for frame in self._parser.feed(data):
                    stream = self._dispatch(frame)
                    if self._closed:
                        return
                    if stream is not None and not stream.room.is_set():
                        await self._wait_for_room(stream)
                self._count_garbage()
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._fail(GuestConnectionError(f"guest channel failed: {exc}"))
        finally:
            self._fail(GuestConnectionError("guest channel closed"))

    async def _wait_for_room(self, stream: _Stream) -> None:
        """Backpressure: stop reading the socket until ``stream``'s reader catches up. A
        reader that stalls for ``stall_timeout_s`` loses its stream, not the connection."""
        self._paused = True
        try:
            async with asyncio.timeout(self.limits.stall_timeout_s):
                await stream.room.wait()
        except TimeoutError:
            stream.abandon(
                GuestConnectionError(
                    f"stream dropped: its reader took nothing for {self.limits.stall_timeout_s} s"
                )
            )
            self._forget(stream)
            with contextlib.suppress(GuestError):
                self._send_nowait(FrameType.CLOSE, stream.sid)
        finally:
            self._paused = False

    def _violate(self, reason: str) -> None:
        """Disconnect a guest that floods or breaks the protocol."""
        if self._closed:
            return
        self._fail(GuestProtocolViolation(reason))
        with contextlib.suppress(Exception):
            self._writer.close()

    def _unsolicited(self, nbytes: int, what: str, frames: int = 1) -> None:
        """Count traffic nobody asked for in a leaky bucket; disconnect above the limits."""
        lim = self.limits
        now = time.monotonic()
        drained = max(0.0, now - self._u_at) / lim.window_s
        self._u_at = now
        self._u_frames = max(0.0, self._u_frames - drained * lim.unsolicited_frames) + frames
        self._u_bytes = max(0.0, self._u_bytes - drained * lim.unsolicited_bytes) + nbytes
        if self._u_frames > lim.unsolicited_frames or self._u_bytes > lim.unsolicited_bytes:
            self._violate(
                f"the guest flooded its channel with unsolicited traffic ({what}); more than "
                f"{lim.unsolicited_frames} frames or {lim.unsolicited_bytes} bytes "
                f"in {lim.window_s:g} s"
            )

    def _count_garbage(self) -> None:
        """Bytes the parser skipped after the handshake count as unsolicited traffic (before
        it, leftovers of an earlier connection are normal)."""
        skipped = self._parser.discarded - self._garbage_seen
        self._garbage_seen = self._parser.discarded
        if skipped and self._facts is not None:
            self._unsolicited(skipped, "bytes that are not valid frames", frames=0)

    def _dispatch(self, frame: Frame) -> _Stream | None:
        """Route one frame; returns the stream it was queued on, if any."""
        if frame.stream == 0:
            self._dispatch_control(frame)
            return None
        stream = self._streams.get(frame.stream)
        if stream is None:
            self._unsolicited(_cost(frame), f"{FrameType.name(frame.type)} for an unknown stream")
            return None
        stream.put(frame)
        return stream

    def _dispatch_control(self, frame: Frame) -> None:
        if frame.type == FrameType.PONG:
            fut = self._pings.pop(frame.payload, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            else:  # no more PONGs than PINGs sent
                self._unsolicited(_cost(frame), "PONG without a PING")
            return
        if frame.type == FrameType.PING:
            # answered, but counted: the guest agent never needs to ping the host often
            self._unsolicited(_cost(frame), "PING")
            if self._closed or len(frame.payload) > self.limits.max_ping_payload:
                return
            if self._writer.transport.get_write_buffer_size() > self.limits.write_buffer_bytes:
                self._violate("the guest does not read its channel (host write buffer full)")
                return
            self._send_nowait(FrameType.PONG, 0, frame.payload)
            return
        if self._facts is not None or frame.type not in (FrameType.HELLO, FrameType.ERROR):
            self._unsolicited(_cost(frame), f"stream-0 {FrameType.name(frame.type)}")
            return
        try:
            self._control.put_nowait(frame)
        except asyncio.QueueFull:
            self._unsolicited(_cost(frame), "stream-0 frames during the handshake")

    def _send_nowait(self, ftype: int, sid: int, payload: bytes = b"", flags: int = 0) -> None:
        if self._closed:
            raise self._error or GuestConnectionError("connection closed")
        self._writer.write(encode_frame(ftype, sid, payload, flags))

    async def _send(self, ftype: int, sid: int, payload: bytes = b"", flags: int = 0) -> None:
        self._send_nowait(ftype, sid, payload, flags)
        try:
            await self._writer.drain()
        except OSError as exc:
            self._fail(GuestConnectionError(f"guest channel failed: {exc}"))
            raise self._error or GuestConnectionError(str(exc)) from exc

    async def _send_data(self, ftype: int, sid: int, data: bytes, eof: bool = False) -> None:
        """Send ``data`` as chunked data frames; ``eof`` marks the last one."""
        view = memoryview(data)
        while len(view) > CHUNK:
            await self._send(ftype, sid, bytes(view[:CHUNK]))
            view = view[CHUNK:]
        if view or eof:
            await self._send(ftype, sid, bytes(view), FLAG_EOF if eof else 0)

    # -- handshake ------------------------------------------------------------------
    async def hello(self, timeout: float = 30.0) -> dict[str, Any]:
        """Run the version handshake (once per connection) and return the guest's facts.

        HELLO is re-sent every second until the guest answers, so this also waits for a
        guest that is still booting. Facts: ``version``, ``agent_version``, ``hostname``,
        ``kernel``, ``arch``, ``os``, ``boot_time``, ``uptime_s``, ``time``, ``ops``...
        """
        async with self._hello_lock:
            if self._facts is not None:
                return self._facts
            nonce = secrets.randbelow(1 << 62)
            hello = encode_value(
                {"versions": list(PROTOCOL_VERSIONS), "nonce": nonce, "client": "nexus-host"}
            )
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        await self._send(FrameType.HELLO, 0, hello)
                        answer = await self._await_hello(nonce, HELLO_RETRY_S)
                        if answer is not None:
                            self._facts = answer
                            return answer
            except TimeoutError:
                raise GuestTimeoutError(f"guest did not answer HELLO in {timeout} s") from None

    async def _await_hello(self, nonce: int, wait: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            get = asyncio.ensure_future(self._control.get())
            done, _ = await asyncio.wait(
                {get, self._read_task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if get not in done:
                get.cancel()
                if self._closed:
                    raise self._error or GuestConnectionError("connection closed")
                continue
            frame = get.result()
            if frame.type == FrameType.ERROR:
                raise _remote_error(frame)
            if frame.type != FrameType.HELLO:
                continue
            try:
                value = frame.value()
            except ProtocolError:
                continue
            if isinstance(value, dict) and value.get("nonce") == nonce:
                return value

    async def _ready(self) -> None:
        if self._facts is None:
            await self.hello()

    # -- streams --------------------------------------------------------------------
    def _open(self) -> _Stream:
        if self._closed:
            raise self._error or GuestConnectionError("connection closed")
        sid = next(self._ids) & 0xFFFFFFFF or next(self._ids)
        stream = _Stream(sid, self.limits.stream_buffer_bytes)
        self._streams[sid] = stream
        return stream

    def _forget(self, stream: _Stream) -> None:
        self._streams.pop(stream.sid, None)

    def _decode(self, frame: Frame) -> Any:
        """The value of a control frame; a malformed one breaks the protocol (disconnect)."""
        try:
            return frame.value()
        except ProtocolError as exc:
            self._violate(f"the guest sent a malformed {FrameType.name(frame.type)} frame: {exc}")
            raise self._error or GuestConnectionError(str(exc)) from None

    def _message(self, frame: Frame) -> dict[str, Any]:
        """Like :meth:`_decode`, for frames whose value must be a map."""
        value = self._decode(frame)
        if not isinstance(value, dict):
            self._violate(f"the guest sent a {FrameType.name(frame.type)} frame that is not a map")
            raise self._error or GuestConnectionError("malformed frame")
        return value

    async def _next(self, stream: _Stream, timeout: float | None = None) -> Frame:
        """Next frame of ``stream``; raises on connection loss and on ERROR frames."""
        try:
            if timeout is None:
                frame = await stream.frames.get()
            else:
                async with asyncio.timeout(timeout):
                    frame = await stream.frames.get()
        except TimeoutError:
            raise GuestTimeoutError("guest did not answer in time") from None
        stream.took(frame)
        if frame is None:
            stream.put(None)  # keep later readers failing too
            raise stream.error or self._error or GuestConnectionError("connection closed")
        if frame.type == FrameType.ERROR:
            stream.done = True
            self._forget(stream)
            raise _remote_error(frame)
        return frame

    async def request(
        self, op: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        """Send a one-shot request and return the guest's RESPONSE value."""
        await self._ready()
        stream = self._open()
        try:
            await self._send(
                FrameType.REQUEST, stream.sid, encode_value({**(args or {}), "op": op})
            )
            while True:
                frame = await self._next(stream, timeout)
                if frame.type == FrameType.RESPONSE:
                    return self._decode(frame)
        finally:
            self._forget(stream)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes = b"",
        timeout_s: float | None = 60,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        """Run ``argv`` in the guest and collect its output.

        ``timeout_s`` is enforced by the guest, which kills the command's whole process
        group and reports ``timed_out``. ``max_output`` caps stdout and stderr each;
        anything beyond is discarded and ``truncated`` is set. The cap is applied here too,
        not only in the guest: a guest that ignores it still cannot make the host keep more
        than ``max_output`` bytes per stream. A command that cannot be started raises
        :class:`GuestRemoteError` (code ``spawn_failed``).
        """
        cap = max(0, int(max_output))
        await self._ready()
        stream = self._open()
        args: dict[str, Any] = {
            "op": "exec",
            "argv": list(argv),
            "env": dict(env) if env is not None else None,
            "cwd": cwd,
            "stdin": bool(stdin),
            "timeout_s": timeout_s,
            "max_output": max_output,
        }
        wait = None if not timeout_s else float(timeout_s) + EXEC_GRACE_S
        out: list[bytes] = []
        err: list[bytes] = []
        kept = {FrameType.STDOUT: 0, FrameType.STDERR: 0}
        cut = False
        try:
            await self._send(FrameType.REQUEST, stream.sid, encode_value(args))
            if stdin:
                await self._send_data(FrameType.STDIN, stream.sid, stdin, eof=True)
            deadline = None if wait is None else time.monotonic() + wait
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                frame = await self._next(stream, remaining)
                if frame.type in kept:
                    room = cap - kept[frame.type]
                    if len(frame.payload) > room:
                        cut = True
                    if room > 0 and frame.payload:
                        part = frame.payload[:room]
                        kept[frame.type] += len(part)
                        (out if frame.type == FrameType.STDOUT else err).append(part)
                elif frame.type == FrameType.EXIT:
                    value = self._message(frame)
                    stream.done = True
                    signal = value.get("signal")
                    return ExecResult(
                        exit_code=_int(value.get("exit_code"), -1),
                        stdout=b"".join(out),
                        stderr=b"".join(err),
                        duration_ms=_int(value.get("duration_ms"), 0),
                        timed_out=bool(value.get("timed_out", False)),
                        truncated=cut or bool(value.get("truncated", False)),
                        signal=signal if isinstance(signal, int) else None,
                    )
        except GuestTimeoutError:
            with contextlib.suppress(GuestError):
                await self._send(FrameType.CLOSE, stream.sid)
            raise
        except asyncio.CancelledError:
            if not stream.done and not self._closed:
                with contextlib.suppress(GuestError):
                    self._send_nowait(FrameType.CLOSE, stream.sid)
            raise
        finally:
            self._forget(stream)

    async def open_shell(
        self,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        command: str | Sequence[str] | None = None,
        cwd: str | None = None,
    ) -> ShellSession:
        """Start an interactive command on a PTY in the guest (default: its shell).

        ``command`` is a string (run by ``/bin/sh -c``) or an argv list.
        """
        await self._ready()
        argv: list[str] | None
        if command is None:
            argv = None
        elif isinstance(command, str):
            argv = ["/bin/sh", "-c", command]
        else:
            argv = list(command)
        stream = self._open()
        args = {
            "op": "shell",
            "argv": argv,
            "cols": int(cols),
            "rows": int(rows),
            "env": dict(env) if env is not None else None,
            "cwd": cwd,
        }
        try:
            await self._send(FrameType.REQUEST, stream.sid, encode_value(args))
            while True:
                frame = await self._next(stream, 30.0)
                if frame.type == FrameType.RESPONSE:
                    pid = self._message(frame).get("pid")
                    return ShellSession(self, stream, pid if isinstance(pid, int) else None)
        except BaseException:
            self._forget(stream)
            raise

    async def metrics(self) -> dict[str, Any]:
        """Guest metrics: ``load_avg``, ``mem_total_bytes``, ``mem_available_bytes``,
        ``disk_total_bytes``, ``disk_free_bytes``, ``disk_used_bytes``, ``uptime_s``...
        """
        result = await self.request("metrics")
        return dict(result) if isinstance(result, dict) else {}

    async def reseed(self, epoch: float | None, entropy: bytes = b"") -> dict[str, Any]:
        """After a snapshot restore: set the guest clock to ``epoch`` and mix ``entropy``
        into its kernel random pool. Returns ``clock_set``, ``entropy_credited``...
        """
        result = await self.request("reseed", {"epoch": epoch, "entropy": bytes(entropy)})
        return dict(result) if isinstance(result, dict) else {}

    async def set_identity(
        self,
        *,
        hostname: str | None = None,
        machine_id: str | None = None,
        nics: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """After a memory restore into a NEW VM: take on its hostname, machine id and, per
        NIC ``{dev, mac, addr, netmask, gateway?}``, its MAC and address. Returns what was
        applied (``applied``, ``hostname``, ``machine_id``, ``nics`` with ``ok``/``error``)."""
        args: dict[str, Any] = {"nics": list(nics or [])}
        if hostname is not None:
            args["hostname"] = hostname
        if machine_id is not None:
            args["machine_id"] = machine_id
        result = await self.request("identity", args)
        return dict(result) if isinstance(result, dict) else {}

    async def read_file(self, path: str, max_bytes: int | None = None) -> bytes:
        """Read a small file (at most about 1 MiB) from the guest."""
        args: dict[str, Any] = {"path": path}
        if max_bytes is not None:
            args["max_bytes"] = max_bytes
        result = await self.request("file_read", args)
        return bytes(result.get("data", b""))

    async def write_file(
        self,
        path: str,
        data: bytes,
        *,
        mode: int = 0o644,
        append: bool = False,
        mkdirs: bool = False,
    ) -> int:
        """Write a small file (at most about 1 MiB) in the guest; returns bytes written."""
        result = await self.request(
            "file_write",
            {"path": path, "data": bytes(data), "mode": mode, "append": append, "mkdirs": mkdirs},
        )
        return int(result.get("written", 0))

    async def ping(self, timeout: float = 10.0) -> float:
        """Round trip to the guest agent; returns the time taken in seconds."""
        token = os.urandom(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[token] = fut
        started = time.monotonic()
        try:
            await self._send(FrameType.PING, 0, token)
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise GuestTimeoutError(f"no PONG in {timeout} s") from None
        finally:
            self._pings.pop(token, None)
        return time.monotonic() - started


class ShellSession:
    """An interactive PTY session in the guest (from :meth:`GuestClient.open_shell`).

    Read output with :meth:`read` or ``async for chunk in session``; both end (``b""`` /
    stop) when the command exits, after which :meth:`wait` returns the exit code.
    """

    def __init__(self, client: GuestClient, stream: _Stream, pid: int | None) -> None:
        self._client = client
        self._stream = stream
        self.pid = pid
        self.exit_code: int | None = None
        self._exited = asyncio.Event()
        self._eof = False

    async def read(self) -> bytes:
        """Next chunk of terminal output; ``b""`` once the command has exited."""
        while not self._eof:
            try:
                frame = await self._client._next(self._stream)
            except GuestError:
                self._finish(None)
                raise
            if frame.type == FrameType.STDOUT:
                return frame.payload
            if frame.type == FrameType.EXIT:
                try:
                    value = self._client._message(frame)
                except GuestError:
                    self._finish(None)
                    raise
                code = value.get("exit_code")
                self._finish(code if isinstance(code, int) else None)
        return b""

    def _finish(self, code: int | None) -> None:
        self._eof = True
        self.exit_code = code
        self._stream.done = True
        self._client._forget(self._stream)
        self._exited.set()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.read()
            if not chunk:
                return
            yield chunk

    async def write(self, data: bytes) -> None:
        """Send keystrokes (bytes) to the terminal."""
        if self._eof:
            raise GuestConnectionError("shell has exited")
        await self._client._send_data(FrameType.STDIN, self._stream.sid, bytes(data))

    async def resize(self, cols: int, rows: int) -> None:
        """Change the terminal size (the guest's foreground job gets SIGWINCH)."""
        if self._eof:
            return
        await self._client._send(
            FrameType.RESIZE, self._stream.sid, encode_value({"cols": cols, "rows": rows})
        )

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the command to exit (discarding unread output); return its exit code."""
        try:
            async with asyncio.timeout(timeout):
                while not self._eof:
                    await self.read()
        except TimeoutError:
            raise GuestTimeoutError("shell did not exit in time") from None
        return self.exit_code

    async def close(self, timeout: float = 5.0) -> int | None:
        """Hang up the terminal (SIGHUP, then SIGKILL) and wait for the exit code."""
        if self._eof:
            return self.exit_code
        with contextlib.suppress(GuestError):
            await self._client._send(FrameType.CLOSE, self._stream.sid)
        try:
            return await self.wait(timeout)
        except GuestError:
            self._finish(None)
            return None
