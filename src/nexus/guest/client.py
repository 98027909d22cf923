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
    "ExecResult",
    "GuestClient",
    "GuestConnectionError",
    "GuestError",
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


class _Stream:
    """Client-side state of one stream: a queue of frames from the guest."""

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.done = False

    def put(self, frame: Frame | None) -> None:
        self.frames.put_nowait(frame)


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

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = FrameParser()
        self._streams: dict[int, _Stream] = {}
        # random start: frames of an earlier connection can never match a new stream id
        self._ids = itertools.count(secrets.randbelow(1 << 30) + 1)
        self._control: asyncio.Queue[Frame] = asyncio.Queue()
        self._hello_lock = asyncio.Lock()
        self._facts: dict[str, Any] | None = None
        self._closed = False
        self._error: GuestError | None = None
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._read_task = asyncio.get_running_loop().create_task(self._read_loop())

    # -- connection -----------------------------------------------------------------
    @classmethod
    async def connect(cls, path: str, timeout: float, vsock_port: int | None = None) -> GuestClient:
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
        return cls(reader, writer)

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost."""
        return self._closed

    @property
    def facts(self) -> dict[str, Any] | None:
        """The guest's HELLO answer, once the handshake is done."""
        return self._facts

    async def close(self) -> None:
        """Close the connection; open streams fail with :class:`GuestConnectionError`."""
        if self._closed:
            return
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
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                for frame in self._parser.feed(data):
                    self._dispatch(frame)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._fail(GuestConnectionError(f"guest channel failed: {exc}"))
        finally:
            self._fail(GuestConnectionError("guest channel closed"))

    def _dispatch(self, frame: Frame) -> None:
        if frame.stream == 0:
            if frame.type == FrameType.PONG:
                fut = self._pings.pop(frame.payload, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif frame.type == FrameType.PING:
                self._send_nowait(FrameType.PONG, 0, frame.payload)
            else:
                self._control.put_nowait(frame)
            return
        stream = self._streams.get(frame.stream)
        if stream is not None:
            stream.put(frame)

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
        stream = _Stream(sid)
        self._streams[sid] = stream
        return stream

    def _forget(self, stream: _Stream) -> None:
        self._streams.pop(stream.sid, None)

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
        if frame is None:
            stream.put(None)  # keep later readers failing too
            raise self._error or GuestConnectionError("connection closed")
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
                    return frame.value()
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
        anything beyond is discarded in the guest and ``truncated`` is set. A command that
        cannot be started raises :class:`GuestRemoteError` (code ``spawn_failed``).
        """
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
        try:
            await self._send(FrameType.REQUEST, stream.sid, encode_value(args))
            if stdin:
                await self._send_data(FrameType.STDIN, stream.sid, stdin, eof=True)
            deadline = None if wait is None else time.monotonic() + wait
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                frame = await self._next(stream, remaining)
                if frame.type == FrameType.STDOUT:
                    out.append(frame.payload)
                elif frame.type == FrameType.STDERR:
                    err.append(frame.payload)
                elif frame.type == FrameType.EXIT:
                    value = frame.value()
                    stream.done = True
                    return ExecResult(
                        exit_code=int(value.get("exit_code", -1)),
                        stdout=b"".join(out),
                        stderr=b"".join(err),
                        duration_ms=int(value.get("duration_ms", 0)),
                        timed_out=bool(value.get("timed_out", False)),
                        truncated=bool(value.get("truncated", False)),
                        signal=value.get("signal"),
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
                    pid = frame.value().get("pid")
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
                value = frame.value()
                code = value.get("exit_code") if isinstance(value, dict) else None
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
