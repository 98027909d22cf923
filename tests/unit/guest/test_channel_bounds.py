"""The host side of the guest channel stays bounded against a hostile guest.

A fake guest peer (one end of a socket pair speaking the real framing) floods, ignores its
exec cap, sends PONGs nobody asked for or breaks the protocol; the host-side client must keep
its queues bounded (measured in queued bytes, never RSS or time) and drop the connection with
a reason. The fixture-free helpers here drive :class:`~nexus.guest.client.GuestClient`
directly and :class:`~nexus.agent.guestconn.GuestConnections` over a unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nexus.guest.client import GuestClient, GuestError
from nexus.guest.protocol import Frame, FrameParser, FrameType, encode_frame, encode_value

FRAME = 256 * 1024
FLOOD = 200  # 200 x 256 KiB = 50 MiB
WAIT_S = 60.0  # upper bound for a condition to become true (not a performance threshold)

Handler = Callable[["FakeGuest", Frame], Awaitable[None]]


class FakeGuest:
    """The guest end of the channel: answers HELLO like the real agent, hands every other
    frame to ``handler``; ``send`` writes frames (blocking when the host stops reading)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.parser = FrameParser()
        self.flood_done = asyncio.Event()
        self.frames: list[Frame] = []
        self.task = asyncio.ensure_future(self._serve())

    async def send(self, ftype: int, stream: int, payload: bytes = b"") -> None:
        self.writer.write(encode_frame(ftype, stream, payload))
        await self.writer.drain()

    async def flood(self, ftype: int, stream: int, count: int = FLOOD, size: int = FRAME) -> None:
        """Send ``count`` frames of ``size`` bytes; stops quietly once the host hangs up."""
        try:
            for _ in range(count):
                await self.send(ftype, stream, b"x" * size)
        except (ConnectionError, OSError):
            pass
        finally:
            self.flood_done.set()

    async def _serve(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await self.reader.read(1 << 16)
                if not data:
                    return
                for frame in self.parser.feed(data):
                    self.frames.append(frame)
                    if frame.type == FrameType.HELLO:
                        nonce = frame.value().get("nonce")
                        facts = {"version": 1, "nonce": nonce, "hostname": "fake", "ops": []}
                        await self.send(FrameType.HELLO, 0, encode_value(facts))
                    else:
                        await self.handler(self, frame)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        self.writer.close()


async def _ignore(_guest: FakeGuest, _frame: Frame) -> None:
    return None


async def pair(handler: Handler = _ignore, **limits: Any) -> tuple[GuestClient, FakeGuest]:
    """A connected, hand-shaken client and the fake guest behind it."""
    host_sock, guest_sock = socket.socketpair()
    g_reader, g_writer = await asyncio.open_connection(sock=guest_sock)
    guest = FakeGuest(g_reader, g_writer, handler)
    h_reader, h_writer = await asyncio.open_connection(sock=host_sock)
    if limits:
        from nexus.guest.client import ChannelLimits

        client = GuestClient(h_reader, h_writer, ChannelLimits(**limits))
    else:
        client = GuestClient(h_reader, h_writer)
    await client.hello(timeout=10)
    return client, guest


def queued_bytes(client: GuestClient) -> int:
    """Payload bytes waiting in the client's stream queues (read from the queues themselves)."""
    total = 0
    for stream in list(client._streams.values()):
        pending: list[Frame | None] = list(stream.frames._queue)  # type: ignore[attr-defined]
        total += sum(len(f.payload) for f in pending if f is not None)
    return total


async def until(predicate: Callable[[], bool]) -> bool:
    """Wait (at most WAIT_S) for ``predicate``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_slow_reader_gets_backpressure_not_a_growing_queue() -> None:
    """200 x 256 KiB on an open stream whose reader is slow: the host stops reading the
    socket (the guest's writes block) instead of queueing 50 MiB; nothing is lost."""

    async def on_frame(guest: FakeGuest, frame: Frame) -> None:
        if frame.type == FrameType.REQUEST and frame.value().get("op") == "shell":
            await guest.send(FrameType.RESPONSE, frame.stream, encode_value({"pid": 7}))
            asyncio.ensure_future(guest.flood(FrameType.STDOUT, frame.stream))

    client, guest = await pair(on_frame)
    try:
        shell = await client.open_shell()
        # the guest either finishes writing everything (unbounded host queue) or is held
        # back by the host (backpressure)
        assert await until(lambda: guest.flood_done.is_set() or getattr(client, "paused", False))
        await asyncio.sleep(0.2)  # let any further bytes arrive: the bound must still hold
        assert not guest.flood_done.is_set(), "the host buffered the whole flood"
        limit = client.limits.stream_buffer_bytes
        assert queued_bytes(client) <= limit + FRAME
        # the reader catches up: every byte arrives, and the queue stayed bounded meanwhile
        got = 0
        peak = 0
        while got < FLOOD * FRAME:
            peak = max(peak, queued_bytes(client))
            chunk = await asyncio.wait_for(shell.read(), WAIT_S)
            assert chunk
            got += len(chunk)
        assert got == FLOOD * FRAME
        assert peak <= limit + FRAME
        assert not client.closed
    finally:
        await client.close()
        await guest.close()


@pytest.mark.parametrize("stream", [0, 424242], ids=["stream-0", "unknown-stream"])
async def test_unsolicited_flood_is_disconnected_with_a_reason(stream: int) -> None:
    """Frames nobody asked for (stream 0 after HELLO, a stream the host never opened) are
    not queued; a guest that floods them is disconnected and the reason is kept."""
    client, guest = await pair()
    try:
        flood = asyncio.ensure_future(guest.flood(FrameType.STDOUT, stream))
        assert await until(lambda: client.closed or guest.flood_done.is_set())
        assert await until(lambda: client.closed), "the flooding guest was not disconnected"
        assert client._control.qsize() <= client.limits.control_queue
        assert queued_bytes(client) == 0
        assert client.violation is not None and "unsolicited" in client.violation
        with pytest.raises(GuestError):
            await client.request("metrics", timeout=5)
        await flood
    finally:
        await client.close()
        await guest.close()


async def test_pongs_are_flow_controlled() -> None:
    """A PONG answers one PING: the matching one completes ``ping``; a stream of PONGs
    nobody asked for disconnects the guest."""

    async def on_frame(guest: FakeGuest, frame: Frame) -> None:
        if frame.type == FrameType.PING:
            await guest.send(FrameType.PONG, 0, frame.payload)

    client, guest = await pair(on_frame)
    try:
        await client.ping(timeout=10)
        assert not client.closed
        for i in range(1000):
            if client.closed:
                break
            with contextlib.suppress(ConnectionError, OSError):
                await guest.send(FrameType.PONG, 0, os.urandom(8) + i.to_bytes(4, "big"))
        assert await until(lambda: client.closed)
        assert client.violation is not None and "PONG" in client.violation
    finally:
        await client.close()
        await guest.close()


async def test_ping_flood_from_a_guest_that_never_reads_is_cut_off() -> None:
    """The host answers guest PINGs, but not without bound: a guest that pings in a loop
    (and never reads the answers) is disconnected."""
    client, guest = await pair()
    guest.task.cancel()  # the guest stops reading its side of the channel
    try:
        flood = asyncio.ensure_future(guest.flood(FrameType.PING, 0, count=20000, size=64))
        assert await until(lambda: client.closed or guest.flood_done.is_set())
        assert await until(lambda: client.closed)
        assert client.violation is not None
        assert client._writer.transport.get_write_buffer_size() <= client.limits.write_buffer_bytes
        await flood
    finally:
        await client.close()
        await guest.close()


async def test_exec_output_is_capped_on_the_host_even_if_the_guest_ignores_its_cap() -> None:
    """The guest sends 3 MiB of stdout and 2 MiB of stderr although ``max_output`` is 100 kB
    and says ``truncated: false``: the host keeps 100 kB of each and says truncated."""

    async def on_frame(guest: FakeGuest, frame: Frame) -> None:
        if frame.type == FrameType.REQUEST and frame.value().get("op") == "exec":
            for _ in range(3):
                await guest.send(FrameType.STDOUT, frame.stream, b"o" * (1 << 20))
            for _ in range(2):
                await guest.send(FrameType.STDERR, frame.stream, b"e" * (1 << 20))
            exit_value = {"exit_code": 0, "duration_ms": 5, "timed_out": False, "truncated": False}
            await guest.send(FrameType.EXIT, frame.stream, encode_value(exit_value))

    client, guest = await pair(on_frame)
    try:
        res = await client.exec(["yes"], max_output=100_000, timeout_s=10)
        assert len(res.stdout) == 100_000 and set(res.stdout) == {ord("o")}
        assert len(res.stderr) == 100_000
        assert res.truncated is True
        assert res.exit_code == 0
        # a command within the cap is not marked truncated
        small = await client.exec(["true"], max_output=10 << 20, timeout_s=10)
        assert small.truncated is False and len(small.stdout) == 3 << 20
    finally:
        await client.close()
        await guest.close()


async def test_malformed_exit_breaks_the_protocol() -> None:
    """An EXIT whose payload is not a valid value is a protocol violation: the caller gets a
    guest error (not a decoding crash) and the connection is dropped with the reason."""

    async def on_frame(guest: FakeGuest, frame: Frame) -> None:
        if frame.type == FrameType.REQUEST:
            await guest.send(FrameType.EXIT, frame.stream, b"\xff\xfe not a value")

    client, guest = await pair(on_frame)
    try:
        with pytest.raises(GuestError):
            await client.exec(["true"], timeout_s=10)
        assert client.closed
        assert client.violation is not None and "malformed" in client.violation
    finally:
        await client.close()
        await guest.close()


async def test_guestconnections_records_the_violation(tmp_path: Path) -> None:
    """The agent's maintained connection notices the disconnect and keeps the reason for
    the VM's status (which the manager copies into ``state_reason``)."""
    from nexus.agent.guestconn import GuestConnections

    vm_dir = tmp_path / "vm_flood"
    vm_dir.mkdir()
    guests: list[FakeGuest] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        guest = FakeGuest(reader, writer, _ignore)
        guests.append(guest)
        await asyncio.sleep(0.3)  # let the host finish its handshake
        await guest.flood(FrameType.STDERR, 0)

    server = await asyncio.start_unix_server(on_connect, path=str(vm_dir / "guest.sock"))
    conns = GuestConnections(lambda _vm_id: "running")
    try:
        conns.attach("vm_flood", vm_dir)
        assert await until(lambda: conns.violation("vm_flood") is not None)
        reason = conns.violation("vm_flood")
        assert reason is not None and "unsolicited" in reason
        # a new boot (attach) forgets it
        conns.attach("vm_flood", vm_dir)
        assert conns.violation("vm_flood") is None
    finally:
        await conns.close_all()
        server.close()
        for g in guests:
            await g.close()
